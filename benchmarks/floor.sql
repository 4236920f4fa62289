-- The plain-SQL floor: the reference city's raw agency files -> the 12 indicators, in one DuckDB script.
-- No orchestration, no Delta, no checks: what a careful analyst would hand-write against the raw drops.
--
-- It applies the counting rules of docs/indicators.md and the quarantine rules the pipeline applies
-- (key repeated -> kept once; required value missing or unreadable; value outside its physical range;
-- district given but unknown; closure before request; unknown waste-stream label), so it yields the same
-- values as citylake's `indicators` mart.
--
-- Inputs (benchmarks/floor.py prepares what DuckDB cannot read without extensions, which cannot be
-- installed offline):
--   ${CITY}                     the generated city folder (substituted as a SQL string literal body)
--   src_daily_ridership, src_stops   transport.sqlite's tables, read with Python's sqlite3 into Arrow
--   src_collisions                  safety.sqlite's collisions table, the same way
--   src_waste                       the weekly XLSX sheets, read with openpyxl into Arrow
-- Everything else (CSV, JSON lines, the Open311 JSON array, GeoJSON) is read here with DuckDB's readers.
-- The session time zone is UTC; periods are taken in the city's time zone, America/Chicago.
-- The output is the table `indicators` (indicator_id, area_id, period_grain, period_start, value,
-- numerator, denominator, coverage).

-- ------------------------------------------------------------------------------------------ reference

create or replace temp table districts as
select
    cast(code as varchar) as code,
    cast(name as varchar) as name,
    from_json(st_asgeojson(geometry), '{"type": "VARCHAR", "coordinates": "DOUBLE[][][]"}') as geo
from read_json('${CITY}/districts.geojson');

-- The districts' polygon edges (every ring; the even-odd rule handles holes): point-in-polygon below is
-- a ray cast over them, since the spatial extension is not installable offline.
create or replace temp table district_edges as
with rings as (
    select code, unnest(geo.coordinates) as ring from districts where geo.type = 'Polygon'
),
edges as (
    select code, unnest(list_zip(ring[1:len(ring) - 1], ring[2:len(ring)])) as e from rings
)
select code, e[1][1] as x1, e[1][2] as y1, e[2][1] as x2, e[2][2] as y2 from edges;

create or replace temp table aliases as
select distinct lower(regexp_replace(trim(alias), '\s+', ' ', 'g')) as alias_key, district_code
from (
    select alias, district_code from read_csv('${CITY}/district_crosswalk.csv', all_varchar = true)
    union all
    select name, code from districts
    union all
    select code, code from districts
)
where alias is not null;

-- Population per area and the years each census stands for (the earliest also for the years before it).
create or replace temp table population as
with by_district as (
    select code as area_id, cast(year as integer) as census_year, cast(population as bigint) as population
    from read_csv('${CITY}/population.csv', all_varchar = true)
),
areas as (
    select * from by_district
    union all
    select 'CITY', census_year, sum(population) from by_district group by all
)
select
    area_id,
    population,
    case when census_year = min(census_year) over (partition by area_id) then 0 else census_year end as valid_from,
    coalesce(lead(census_year) over (partition by area_id order by census_year), 10000) as valid_to
from areas;

create or replace temp table categories as
select service_code, cast(target_days as integer) as target_days
from read_csv('${CITY}/service_categories.csv', all_varchar = true);

create or replace temp table streams as
select lower(regexp_replace(trim(source_label), '\s+', ' ', 'g')) as label_key, stream
from read_csv('${CITY}/waste_streams.csv', all_varchar = true);

-- ----------------------------------------------------------------------------------------- air quality

-- Vendor A: ppb for NO2/O3, local wall time; vendor B: ug/m3, UTC. A line that is not JSON reads as an
-- all-null row (rejected below: no key). A key repeated is kept once.
create or replace temp table air_raw as
with a as (
    select
        sensor as station_id,
        try_cast(ts as timestamp) as local_ts,
        ts as ts_raw,
        pm25 as pm25_raw, pm10 as pm10_raw, no2_ppb as no2_raw, o3_ppb as o3_raw,
        try_cast(pm25 as double) as pm25,
        try_cast(pm10 as double) as pm10,
        try_cast(no2_ppb as double) * 1.88 as no2,
        try_cast(o3_ppb as double) * 1.96 as o3,
        lat as lat_raw, lon as lon_raw
    from read_json(
        '${CITY}/landing/air/vendor_a/*.jsonl', format = 'newline_delimited', ignore_errors = true,
        columns = {sensor: 'VARCHAR', ts: 'VARCHAR', pm25: 'VARCHAR', pm10: 'VARCHAR', no2_ppb: 'VARCHAR',
                   o3_ppb: 'VARCHAR', lat: 'VARCHAR', lon: 'VARCHAR'}
    )
    qualify row_number() over (partition by sensor, ts) = 1
),
b as (
    select
        station_id,
        -- UTC instants, as the city's local wall time
        timezone('America/Chicago', try_cast(observed_at as timestamptz)) as local_ts,
        observed_at as ts_raw,
        pm25_ugm3, pm10_ugm3, no2_ugm3, o3_ugm3,
        try_cast(pm25_ugm3 as double),
        try_cast(pm10_ugm3 as double),
        try_cast(no2_ugm3 as double),
        try_cast(o3_ugm3 as double),
        latitude, longitude
    from read_json(
        '${CITY}/landing/air/vendor_b/*.jsonl', format = 'newline_delimited', ignore_errors = true,
        columns = {station_id: 'VARCHAR', observed_at: 'VARCHAR', pm25_ugm3: 'VARCHAR', pm10_ugm3: 'VARCHAR',
                   no2_ugm3: 'VARCHAR', o3_ugm3: 'VARCHAR', latitude: 'VARCHAR', longitude: 'VARCHAR'}
    )
    qualify row_number() over (partition by station_id, observed_at) = 1
)
select * from a
union all
select * from b;

-- ------------------------------------------------------------------------------------------ ridership

create or replace temp table ridership_raw as
select
    r.stop_id,
    r.service_date,
    try_cast(r.service_date as date) as local_date,
    cast(r.boardings as varchar) as boardings_raw,
    try_cast(r.boardings as bigint) as boardings,
    nullif(trim(s.zone_code), '') as zone_code,
    s.lat,
    s.lon
from src_daily_ridership as r
left join src_stops as s on s.stop_id = r.stop_id
qualify row_number() over (partition by r.stop_id, r.service_date) = 1;

-- ------------------------------------------------------------------------------------------ collisions

create or replace temp table collisions_raw as
select
    collision_id,
    crash_local_time,
    try_cast(crash_local_time as timestamp) as local_ts,
    try_cast(killed as integer) as killed,
    try_cast(injured as integer) as injured,
    killed as killed_raw,
    injured as injured_raw,
    latitude,
    longitude
from src_collisions
qualify row_number() over (partition by collision_id) = 1;

-- --------------------------------------------------------------------------------------- point in polygon

-- Every distinct coordinate pair a source gives -> the district whose polygon holds it (lowest code first).
create or replace temp table point_districts as
with points as (
    select distinct try_cast(lat_raw as double) as lat, try_cast(lon_raw as double) as lon from air_raw
    union
    select distinct latitude, longitude from collisions_raw
),
hits as (
    select p.lat, p.lon, e.code
    from points as p
    inner join district_edges as e
        on (e.y1 > p.lat) <> (e.y2 > p.lat)
        and p.lon < (e.x2 - e.x1) * (p.lat - e.y1) / (e.y2 - e.y1) + e.x1
    group by all
    having count(*) % 2 = 1
)
select lat, lon, min(code) as district_code from hits group by all;

-- ---------------------------------------------------------------------------------------- conformed facts

create or replace temp table air as
with typed as (
    select
        r.*,
        try_cast(lat_raw as double) as lat,
        try_cast(lon_raw as double) as lon
    from air_raw as r
)
select
    station_id,
    p.district_code,
    cast(local_ts as date) as local_date,
    pm25, pm10, no2, o3
from typed as t
left join point_districts as p using (lat, lon)
where coalesce(trim(station_id), '') <> ''
    and coalesce(trim(ts_raw), '') <> '' and local_ts is not null
    and not (pm25_raw is not null and trim(pm25_raw) <> '' and pm25 is null)
    and not (pm10_raw is not null and trim(pm10_raw) <> '' and pm10 is null)
    and not (no2_raw is not null and trim(no2_raw) <> '' and no2 is null)
    and not (o3_raw is not null and trim(o3_raw) <> '' and o3 is null)
    and not (lat_raw is not null and trim(lat_raw) <> '' and lat is null)
    and not (lon_raw is not null and trim(lon_raw) <> '' and lon is null)
    and coalesce(pm25 between 0 and 1000, true)
    and coalesce(pm10 between 0 and 2000, true)
    and coalesce(no2 between 0 and 2000, true)
    and coalesce(o3 between 0 and 2000, true)
    and coalesce(lat between -90 and 90, true)
    and coalesce(lon between -180 and 180, true)
    and not (lat is not null and lon is not null and p.district_code is null);

create or replace temp table energy as
with raw as (
    select meter_id, "month" || '-01' as period_raw, kwh as kwh_raw, sector, nullif(trim(district_code), '') as dv
    from read_csv('${CITY}/landing/energy/*.csv', all_varchar = true, header = true)
    qualify row_number() over (partition by meter_id, "month") = 1
),
typed as (
    select raw.*, try_cast(period_raw as date) as period_start, try_cast(kwh_raw as double) as kwh,
        d.code as district_code
    from raw
    left join districts as d on upper(d.code) = upper(raw.dv)
)
select meter_id, cast(date_trunc('month', period_start) as date) as local_date, kwh,
    lower(trim(sector)) as sector, district_code
from typed
where coalesce(trim(meter_id), '') <> ''
    and coalesce(trim(period_raw), '') <> '' and period_start is not null
    and coalesce(trim(kwh_raw), '') <> '' and kwh is not null and kwh >= 0
    and not (dv is not null and district_code is null);

create or replace temp table waste as
with raw as (
    select route_id, stream as label, cast(week_start as varchar) as week_raw, cast(tonnes as varchar) as tonnes_raw,
        nullif(trim(cast(district_code as varchar)), '') as dv
    from src_waste
    qualify row_number() over (partition by route_id, stream, week_start) = 1
),
typed as (
    select raw.*, try_cast(week_raw as date) as collected_on, try_cast(tonnes_raw as double) as tonnes,
        d.code as district_code, streams.stream
    from raw
    left join districts as d on upper(d.code) = upper(raw.dv)
    left join streams on streams.label_key = lower(regexp_replace(trim(raw.label), '\s+', ' ', 'g'))
)
select collected_on as local_date, stream, tonnes, route_id, district_code
from typed
where coalesce(trim(week_raw), '') <> '' and collected_on is not null
    and coalesce(trim(label), '') <> ''
    and coalesce(trim(tonnes_raw), '') <> '' and tonnes is not null and tonnes >= 0
    and not (dv is not null and district_code is null)
    and stream is not null;

create or replace temp table ridership as
select r.local_date, r.stop_id, r.boardings, a.district_code
from ridership_raw as r
left join aliases as a on a.alias_key = lower(regexp_replace(trim(r.zone_code), '\s+', ' ', 'g'))
where coalesce(trim(r.service_date), '') <> '' and r.local_date is not null
    and coalesce(trim(r.boardings_raw), '') <> '' and r.boardings is not null and r.boardings >= 0
    and coalesce(r.lat between -90 and 90, true)
    and coalesce(r.lon between -180 and 180, true)
    and not (r.zone_code is not null and a.district_code is null);

create or replace temp table collisions as
select cast(c.local_ts as date) as local_date, coalesce(c.killed, 0) as killed, p.district_code
from collisions_raw as c
left join point_districts as p on p.lat = c.latitude and p.lon = c.longitude
where coalesce(trim(c.collision_id), '') <> ''
    and coalesce(trim(c.crash_local_time), '') <> '' and c.local_ts is not null
    and not (c.killed_raw is not null and c.killed is null)
    and not (c.injured_raw is not null and c.injured is null)
    and coalesce(c.killed between 0 and 1000, true)
    and coalesce(c.injured between 0 and 10000, true)
    and coalesce(c.latitude between -90 and 90, true)
    and coalesce(c.longitude between -180 and 180, true)
    and not (c.latitude is not null and c.longitude is not null and p.district_code is null);

create or replace temp table requests as
with raw as (
    select service_request_id, requested_datetime, closed_datetime, service_code, lat, long,
        nullif(trim(district), '') as dv
    from read_json(
        '${CITY}/open311/requests.json', format = 'array',
        columns = {service_request_id: 'VARCHAR', requested_datetime: 'VARCHAR', closed_datetime: 'VARCHAR',
                   service_code: 'VARCHAR', district: 'VARCHAR', lat: 'VARCHAR', long: 'VARCHAR'}
    )
    qualify row_number() over (partition by service_request_id) = 1
),
typed as (
    select raw.*,
        try_cast(requested_datetime as timestamptz) as requested_at,
        try_cast(closed_datetime as timestamptz) as closed_at,
        try_cast(lat as double) as latitude,
        try_cast(long as double) as longitude,
        a.district_code,
        c.target_days
    from raw
    left join aliases as a on a.alias_key = lower(regexp_replace(trim(raw.dv), '\s+', ' ', 'g'))
    left join categories as c on c.service_code = raw.service_code
)
select
    cast(timezone('America/Chicago', requested_at) as date) as local_date,
    closed_at is not null as is_closed,
    date_diff('second', requested_at, closed_at) / 86400.0 as days_to_close,
    date_diff('second', requested_at, closed_at) / 86400.0 <= target_days as is_on_time,
    district_code
from typed
where coalesce(trim(service_request_id), '') <> ''
    and coalesce(trim(requested_datetime), '') <> '' and requested_at is not null
    and not (coalesce(trim(closed_datetime), '') <> '' and closed_at is null)
    and not (coalesce(trim(lat), '') <> '' and latitude is null)
    and not (coalesce(trim(long), '') <> '' and longitude is null)
    and coalesce(latitude between -90 and 90, true)
    and coalesce(longitude between -180 and 180, true)
    and not (dv is not null and district_code is null)
    and not coalesce(closed_at < requested_at, false);

-- --------------------------------------------------------------------------------------------- periods

-- Each record once for its district (when known) and once for CITY, once per grain.
create or replace macro with_periods(rel) as table
    select *, cast(date_trunc(period_grain, local_date) as date) as period_start
    from (
        select *, unnest(if(district_code is null, ['CITY'], [district_code, 'CITY'])) as area_id
        from query_table(rel)
    )
    cross join (values ('month'), ('year')) as g(period_grain);

-- Days, ISO Mondays and months of each period that lie within a delivered span.
create or replace macro slots(first_day, last_day) as table
    select
        g.period_grain,
        cast(date_trunc(g.period_grain, d) as date) as period_start,
        count(*) as days,
        count_if(isodow(d) = 1) as mondays,
        count(distinct date_trunc('month', d)) as months
    from (select unnest(range(first_day::timestamp, last_day::timestamp + interval 1 day, interval 1 day)) as d)
    cross join (values ('month'), ('year')) as g(period_grain)
    group by all;

-- ------------------------------------------------------------------------------------------ indicators

create or replace temp table indicators (
    indicator_id varchar, area_id varchar, period_grain varchar, period_start date,
    value double, numerator double, denominator double, coverage double
);

-- Concentrations: station daily means -> station period means -> equal-weight mean over the area's stations.
set variable air_first = (select min(local_date) from air);
set variable air_last = (select max(local_date) from air);

create or replace temp table air_daily as
unpivot (
    select station_id, district_code, local_date, avg(pm25) as pm25, avg(pm10) as pm10, avg(no2) as no2,
        avg(o3) as o3
    from air group by all
) on pm25, pm10, no2, o3 into name pollutant value daily_mean;

insert into indicators
with station_periods as (
    select pollutant, area_id, period_grain, period_start, station_id,
        avg(daily_mean) as station_mean, count(*) as station_days
    from with_periods('air_daily')
    group by all
),
areas as (
    select pollutant, area_id, period_grain, period_start,
        sum(station_mean) as num, count(*) as stations, sum(station_days) as station_days
    from station_periods group by all
)
select
    case pollutant when 'pm25' then 'iso37120_8_1' when 'pm10' then 'iso37120_8_2'
        when 'no2' then 'iso37120_8_4' else 'iso37120_8_6' end,
    area_id, period_grain, period_start,
    num / stations, num, stations, station_days / (stations * s.days)
from areas
inner join slots(getvariable('air_first'), getvariable('air_last')) as s using (period_grain, period_start);

-- Electricity per capita (residential 7.1, all 7.5).
set variable energy_first = (select min(local_date) from energy);
set variable energy_last = (select cast(max(local_date) + interval 1 month - interval 1 day as date) from energy);

insert into indicators
with measures as (
    select indicator_id, area_id, period_grain, period_start,
        sum(kwh) as kwh, count(*) as meter_months, count(distinct meter_id) as meters
    from (
        select *, 'iso37120_7_5' as indicator_id from with_periods('energy')
        union all
        select *, 'iso37120_7_1' from with_periods('energy') where sector = 'residential'
    )
    group by all
)
select m.indicator_id, m.area_id, m.period_grain, m.period_start,
    m.kwh / p.population, m.kwh, p.population, m.meter_months / (m.meters * s.months)
from measures as m
inner join slots(getvariable('energy_first'), getvariable('energy_last')) as s using (period_grain, period_start)
left join population as p
    on p.area_id = m.area_id and year(m.period_start) >= p.valid_from and year(m.period_start) < p.valid_to;

-- Waste per capita (16.2) and share recycled (16.3).
set variable waste_first = (select min(local_date) from waste);
set variable waste_last = (select max(local_date) from waste);

insert into indicators
with measures as (
    select area_id, period_grain, period_start,
        sum(tonnes) as tonnes,
        coalesce(sum(tonnes) filter (where stream = 'recycling'), 0) as recycled,
        count(*) as records,
        count(distinct (route_id, stream)) as route_streams
    from with_periods('waste')
    group by all
),
joined as (
    select m.*, s.mondays, p.population
    from measures as m
    inner join slots(getvariable('waste_first'), getvariable('waste_last')) as s using (period_grain, period_start)
    left join population as p
        on p.area_id = m.area_id and year(m.period_start) >= p.valid_from and year(m.period_start) < p.valid_to
)
select 'iso37120_16_2', area_id, period_grain, period_start,
    tonnes / population, tonnes, population, records / (route_streams * mondays)
from joined
union all
select 'iso37120_16_3', area_id, period_grain, period_start,
    100.0 * recycled / tonnes, recycled, tonnes, records / (route_streams * mondays)
from joined
where tonnes > 0;

-- Transit trips per capita (18.3).
set variable rides_first = (select min(local_date) from ridership);
set variable rides_last = (select max(local_date) from ridership);

insert into indicators
with measures as (
    select area_id, period_grain, period_start,
        sum(boardings) as boardings,
        count(distinct (stop_id, local_date)) as stop_days,
        count(distinct stop_id) as stops
    from with_periods('ridership')
    group by all
)
select 'iso37120_18_3', m.area_id, m.period_grain, m.period_start,
    m.boardings / p.population, m.boardings, p.population, m.stop_days / (m.stops * s.days)
from measures as m
inner join slots(getvariable('rides_first'), getvariable('rides_last')) as s using (period_grain, period_start)
left join population as p
    on p.area_id = m.area_id and year(m.period_start) >= p.valid_from and year(m.period_start) < p.valid_to;

-- Transportation fatalities per 100 000 (18.8).
insert into indicators
with measures as (
    select area_id, period_grain, period_start,
        sum(killed) as deaths, count(*) as collisions, count(district_code) as placed
    from with_periods('collisions')
    group by all
)
select 'iso37120_18_8', m.area_id, m.period_grain, m.period_start,
    m.deaths / (p.population / 100000.0), m.deaths, p.population / 100000.0, m.placed / m.collisions
from measures as m
left join population as p
    on p.area_id = m.area_id and year(m.period_start) >= p.valid_from and year(m.period_start) < p.valid_to;

-- 311: median days to close and share closed within target, over requests made in the period.
insert into indicators
with measures as (
    select area_id, period_grain, period_start,
        median(days_to_close) filter (where is_closed) as median_days,
        count(*) filter (where is_closed) as closed,
        count(*) filter (where is_closed and is_on_time) as on_time,
        count(*) as requests,
        count(district_code) as placed
    from with_periods('requests')
    group by all
)
select 'svc_311_median_days_to_close', area_id, period_grain, period_start,
    median_days, null, closed, placed / requests
from measures where closed > 0
union all
select 'svc_311_closed_within_target', area_id, period_grain, period_start,
    100.0 * on_time / closed, on_time, closed, placed / requests
from measures where closed > 0;

delete from indicators where value is null;
