{{ citylake_assign_district('int_transit_ridership__unioned') }}
