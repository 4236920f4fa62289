-- Transit boardings by service date, district and mode.
select
    service_date,
    coalesce(district_code, 'UNASSIGNED') as district_code,
    coalesce(mode, 'unspecified') as mode,
    sum(boardings) as boardings,
    count(distinct stop_id) as stops
from {{ ref('fct_transit_ridership') }}
group by 1, 2, 3
order by service_date, district_code, mode
