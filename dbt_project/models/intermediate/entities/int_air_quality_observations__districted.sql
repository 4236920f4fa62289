{{ citylake_assign_district('int_air_quality_observations__unioned') }}
