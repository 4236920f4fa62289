{{ citylake_assign_district('int_energy_consumption__unioned') }}
