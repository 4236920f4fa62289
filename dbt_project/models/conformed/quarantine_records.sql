-- Every record held back from the conformed layer, with the rule it broke. Nothing is dropped
-- silently: a record is either in a fct_ table or here. (Rows bronze could not read at all are in
-- the lake's quarantine/ tables; the published `quarantine` table shows both.)
with rejected as (

    select 'air_quality_observations' as entity, agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_air_quality_observations__districted') }} where reject_reason is not null
    union all
    select 'service_requests', agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_service_requests__categorised') }} where reject_reason is not null
    union all
    select 'road_collisions', agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_road_collisions__districted') }} where reject_reason is not null
    union all
    select 'transit_ridership', agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_transit_ridership__districted') }} where reject_reason is not null
    union all
    select 'energy_consumption', agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_energy_consumption__districted') }} where reject_reason is not null
    union all
    select 'waste_collection', agency, source_name, record_key, reject_reason, ingested_at
    from {{ ref('int_waste_collection__classified') }} where reject_reason is not null

)

select * from rejected
