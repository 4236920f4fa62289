-- Districts where 311 service requests take longest to close: the median days from request to
-- closure over each year, worst first, with the share closed within the category's target.
with median_days as (
    select area_id, period_start, value as median_days_to_close
    from indicators
    where indicator_id = 'svc_311_median_days_to_close' and period_grain = 'year' and area_id <> 'CITY'
),
on_time as (
    select area_id, period_start, value as pct_closed_within_target
    from indicators
    where indicator_id = 'svc_311_closed_within_target' and period_grain = 'year' and area_id <> 'CITY'
)
select
    year(m.period_start) as year,
    rank() over (partition by m.period_start order by m.median_days_to_close desc) as rank,
    m.area_id as district_code,
    d.district_name,
    round(m.median_days_to_close, 2) as median_days_to_close,
    round(o.pct_closed_within_target, 1) as pct_closed_within_target
from median_days as m
join on_time as o using (area_id, period_start)
join dim_district as d on d.district_code = m.area_id
order by year, rank, district_code
