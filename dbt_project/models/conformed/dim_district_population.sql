-- Census population by district and year, as delivered (districts.population in city.yaml).
select
    cast(code as {{ citylake_type('varchar') }}) as district_code,
    cast(year as integer) as census_year,
    cast(population as bigint) as population
from {{ ref('city_population') }}
