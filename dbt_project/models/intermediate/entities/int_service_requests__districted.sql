{{ citylake_assign_district('int_service_requests__unioned') }}
