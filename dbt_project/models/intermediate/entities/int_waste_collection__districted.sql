{{ citylake_assign_district('int_waste_collection__unioned') }}
