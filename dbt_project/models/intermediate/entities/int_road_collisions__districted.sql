{{ citylake_assign_district('int_road_collisions__unioned') }}
