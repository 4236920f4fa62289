-- One row per district: its code (the one key every silo is reconciled to), name, area, latest
-- census population and boundary as WKT.
with districts as (

    select * from {{ ref('city_districts') }}

),

boundaries as (

    -- written by citylake beside the seeds: real polygons are too large for a CSV seed
    select code, geometry_wkt from {{ citylake_read_parquet(var("city_district_boundaries")) }}

),

population as (

    select * from (
        select *, row_number() over (partition by area_id order by census_year desc) as census_rank
        from {{ ref('int_area_population') }}
        where area_id <> 'CITY'
    ) as ranked
    where census_rank = 1

),

final as (

    select
        cast(districts.code as {{ citylake_type('varchar') }}) as district_code,
        districts.name as district_name,
        cast(districts.area_km2 as double) as area_km2,
        cast(population.population as bigint) as population,
        population.census_year as population_year,
        boundaries.geometry_wkt
    from districts
    inner join boundaries on boundaries.code = cast(districts.code as {{ citylake_type('varchar') }})
    left join population on population.area_id = cast(districts.code as {{ citylake_type('varchar') }})

)

select * from final
