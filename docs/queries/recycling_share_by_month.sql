-- Share of collected waste that was recycled, citywide, by month (ISO 37120 16.3 from the waste mart:
-- recycling tonnes / all tonnes collected x 100), with the tonnes behind it.
select
    month_start as month,
    round(sum(tonnes) filter (where stream = 'recycling'), 1) as recycled_tonnes,
    round(sum(tonnes), 1) as collected_tonnes,
    round(100 * sum(tonnes) filter (where stream = 'recycling') / sum(tonnes), 2) as recycled_pct
from mart_waste
group by month_start
order by month
