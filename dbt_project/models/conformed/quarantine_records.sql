-- Every record held back from the conformed layer, with the rule it broke. Nothing is dropped
-- silently: a record is either in a fct_ table or here. (Rows bronze could not read at all are in
-- the lake's quarantine/ tables; the published `quarantine` table shows both.) A record another
-- source also delivered (`deduplicate:` in city.yaml) is here too, naming the record that was kept.
{%- set entities = [
    ('air_quality_observations', 'int_air_quality_observations__districted'),
    ('service_requests', 'int_service_requests__categorised'),
    ('road_collisions', 'int_road_collisions__districted'),
    ('transit_ridership', 'int_transit_ridership__districted'),
    ('energy_consumption', 'int_energy_consumption__districted'),
    ('waste_collection', 'int_waste_collection__classified'),
] %}
with rejected as (
{% for entity, model in entities %}
    select
        '{{ entity }}' as entity,
        agency,
        source_name,
        record_key,
        coalesce(
            reject_reason,
            'duplicate of ' || duplicate_of || ' (deduplicate.{{ entity }} in city.yaml)'
        ) as reject_reason,
        ingested_at
    from {{ ref(model) }}
    where reject_reason is not null or duplicate_of is not null
    {% if not loop.last %}union all{% endif %}
{% endfor %}
)

select * from rejected
