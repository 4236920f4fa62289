-- Electricity consumption by billing month, district and sector, kWh.
select
    period_start as month_start,
    coalesce(district_code, 'UNASSIGNED') as district_code,
    coalesce(sector, 'unspecified') as sector,
    sum(kwh) as kwh,
    count(distinct meter_id) as meters
from {{ ref('fct_energy_consumption') }}
group by 1, 2, 3
order by month_start, district_code, sector
