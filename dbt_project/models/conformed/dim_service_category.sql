-- The one service-category taxonomy (seed service_categories): code, name, category, target days.
select
    cast(service_code as {{ citylake_type('varchar') }}) as service_code,
    service_name,
    category,
    cast(target_days as double) as target_days
from {{ ref('service_categories') }}
