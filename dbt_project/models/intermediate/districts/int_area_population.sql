-- Population per area (district or CITY) and census year, with the years each census stands for:
-- from its own year until the next census; the earliest census also stands for the years before it.
with by_district as (

    select district_code as area_id, census_year, population
    from {{ ref('dim_district_population') }}

),

citywide as (

    select 'CITY' as area_id, census_year, sum(population) as population
    from by_district
    group by census_year

),

areas as (

    select * from by_district
    union all
    select * from citywide

),

final as (

    select
        area_id,
        census_year,
        population,
        case when census_year = min(census_year) over (partition by area_id) then 0 else census_year end
            as valid_from_year,
        coalesce(lead(census_year) over (partition by area_id order by census_year), 10000) as valid_to_year
    from areas

)

select * from final
