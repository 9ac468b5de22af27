-- Conditions: which sensors speak for a location, and the temperature and humidity there against its band.
-- An item's experienced conditions are its stays (item_location_intervals) joined to the sensors of those
-- locations; tracking/condition.py computes them per item and per lot.

-- The sensors that speak for each location: its own, or those of its nearest ancestor that has any (a shelf
-- without a probe is as warm as the cold room it stands in; a case inside a vehicle gets the vehicle's).
-- Only devices of kind 'sensor' count: a reader's or tracker's internal temperature is not the room's.
create view location_sensors as
with sensed as (
    select a.location_id, a.ancestor_id, a.depth, d.id as device_id
    from location_ancestry a
    join devices d on d.location_id = a.ancestor_id
    where d.kind = 'sensor' and d.assigned
),
nearest as (
    select location_id, min(depth) as depth from sensed group by location_id
)
select s.location_id, s.ancestor_id as sensor_location_id, s.device_id, s.depth
from sensed s
join nearest n on n.location_id = s.location_id and n.depth = s.depth;

-- Each location's allowed band, its own or inherited from the nearest ancestor that sets one (per quantity).
create view location_ranges as
select
    a.location_id,
    (array_agg(p.temperature_min_c order by a.depth) filter (where p.temperature_min_c is not null))[1]
        as temperature_min_c,
    (array_agg(p.temperature_max_c order by a.depth) filter (where p.temperature_max_c is not null))[1]
        as temperature_max_c,
    (array_agg(p.humidity_min_pct order by a.depth) filter (where p.humidity_min_pct is not null))[1]
        as humidity_min_pct,
    (array_agg(p.humidity_max_pct order by a.depth) filter (where p.humidity_max_pct is not null))[1]
        as humidity_max_pct
from location_ancestry a
join locations p on p.id = a.ancestor_id
group by a.location_id;

-- Every temperature and humidity sample that speaks for a location, with the location's band and where the
-- value falls in it. Dashboards filter on location_id and observed_at (the time filter reaches telemetry's
-- chunks), e.g. select time_bucket('5 minutes', observed_at), avg(value), min(band_min), max(band_max) ...
create view location_conditions as
select
    t.observed_at,
    s.location_id,
    s.sensor_location_id,
    t.device_id,
    t.quantity,
    t.value,
    case t.quantity when 'temperature_c' then r.temperature_min_c else r.humidity_min_pct end as band_min,
    case t.quantity when 'temperature_c' then r.temperature_max_c else r.humidity_max_pct end as band_max,
    case
        when t.value < case t.quantity when 'temperature_c' then r.temperature_min_c else r.humidity_min_pct end
            then 'below'
        when t.value > case t.quantity when 'temperature_c' then r.temperature_max_c else r.humidity_max_pct end
            then 'above'
        else 'within'
    end as band
from telemetry t
join location_sensors s on s.device_id = t.device_id
join location_ranges r on r.location_id = s.location_id
where t.quantity in ('temperature_c', 'humidity_pct') and t.value is not null;

create view location_temperature as
select observed_at, location_id, sensor_location_id, device_id, value as temperature_c,
       band_min as temperature_min_c, band_max as temperature_max_c, band
from location_conditions
where quantity = 'temperature_c';

create view location_humidity as
select observed_at, location_id, sensor_location_id, device_id, value as humidity_pct,
       band_min as humidity_min_pct, band_max as humidity_max_pct, band
from location_conditions
where quantity = 'humidity_pct';
