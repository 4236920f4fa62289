-- Road collisions by month (local), district: collisions, injured, deaths within 30 days.
select
    cast(date_trunc('month', {{ citylake_local_date('accident_at') }}) as date) as month_start,
    coalesce(district_code, 'UNASSIGNED') as district_code,
    count(*) as collisions,
    sum(injured) as injured,
    sum(dead_within_30_days) as deaths
from {{ ref('fct_road_collisions') }}
group by 1, 2
order by month_start, district_code
