-- Trend of fine particulate matter (PM2.5, ISO 37120 8.1) by district, month by month.
-- coverage is the share of expected station-days that were reported: read low coverage with care.
select
    i.area_id as district_code,
    d.district_name,
    i.period_start as month,
    round(i.value, 2) as pm25_ugm3,
    round(i.value - lag(i.value) over (partition by i.area_id order by i.period_start), 2) as change_vs_previous_month,
    round(i.coverage, 3) as coverage
from indicators as i
join dim_district as d on d.district_code = i.area_id
where i.indicator_id = 'iso37120_8_1'
  and i.period_grain = 'month'
order by district_code, month
