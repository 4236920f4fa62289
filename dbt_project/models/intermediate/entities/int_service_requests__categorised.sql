-- Service requests with the city's one category taxonomy; closure before the request is rejected.
with requests as (

    select * from {{ ref('int_service_requests__districted') }}
    where {{ citylake_window() }}

),

categories as (

    select * from {{ ref('dim_service_category') }}

),

final as (

    select
        {{ citylake_star_except(ref('int_service_requests__districted'), ['reject_reason'], 'requests') }},
        coalesce(categories.category, 'uncategorised') as category,
        categories.target_days,
        coalesce(
            requests.reject_reason,
            case when requests.closed_at < requests.requested_at
                then 'closed_at ' || requests.closed_at || ' is before requested_at ' || requests.requested_at end
        ) as reject_reason
    from requests
    left join categories on categories.service_code = requests.service_code

)

select * from final
