-- The agencies and sources declared in city.yaml that feed a conformed entity.
with records as (

    select distinct agency, source_name, 'air_quality_observations' as entity
    from {{ ref('int_air_quality_observations__districted') }}
    union all
    select distinct agency, source_name, 'service_requests' from {{ ref('int_service_requests__districted') }}
    union all
    select distinct agency, source_name, 'road_collisions' from {{ ref('int_road_collisions__districted') }}
    union all
    select distinct agency, source_name, 'transit_ridership' from {{ ref('int_transit_ridership__districted') }}
    union all
    select distinct agency, source_name, 'energy_consumption'
    from {{ ref('int_energy_consumption__districted') }}
    union all
    select distinct agency, source_name, 'waste_collection' from {{ ref('int_waste_collection__districted') }}

)

select agency, source_name, entity from records
