-- The indicator catalogue: what each indicator means, its unit, formula, the standard it follows, which
-- way is better, and, for an indicator with no value at all, why (`note`): a city need not feed every entity.
with definitions as (

    select * from {{ ref('indicator_definitions') }}

),

published as (

    select indicator_id, count(*) as n_rows from {{ ref('indicators') }} group by 1

),

entities_published as (

    -- entities with at least one indicator published
    select distinct definitions.entity
    from {{ ref('indicator_definitions') }} as definitions
    inner join published on published.indicator_id = definitions.indicator_id

),

final as (

    select
        definitions.indicator_id,
        definitions.indicator_name,
        definitions.unit,
        definitions.formula,
        definitions.definition,
        definitions.standard,
        definitions.domain,
        definitions.entity,
        cast(definitions.better as {{ citylake_type('varchar') }}) as better,
        case
            when coalesce(published.n_rows, 0) > 0 then null
            when definitions.indicator_id = 'svc_311_closed_within_target'
                and (select count(*) from published where indicator_id = 'svc_311_median_days_to_close') > 0
                then 'no value: no closed request has a category with a target; give '
                    || 'reference_data.service_categories (service_code, service_name, category, target_days) in city.yaml'
            when entities_published.entity is not null
                then 'no value: the sources of ' || definitions.entity || ' deliver nothing for '
                    || definitions.indicator_name || ' (map its column in their columns: in city.yaml)'
            else 'no value: no published records of ' || definitions.entity
                || ' (no source in city.yaml feeds it, or none passed its gates)'
        end as note
    from definitions
    left join published on published.indicator_id = definitions.indicator_id
    left join entities_published on entities_published.entity = definitions.entity

)

select * from final
