-- Waste collected by month (of the collection date), district and conformed stream, tonnes.
select
    cast(date_trunc('month', collected_on) as date) as month_start,
    coalesce(district_code, 'UNASSIGNED') as district_code,
    stream,
    sum(tonnes) as tonnes
from {{ ref('fct_waste_collection') }}
group by 1, 2, 3
order by month_start, district_code, stream
