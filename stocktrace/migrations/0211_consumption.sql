-- Consumption (stock leaving to shipping or production) per GTIN, storage location and day, and the inventory
-- KPIs built on it: days of inventory, turnover, aging, dead stock. The reorder-point rules of the alerts stage
-- read consumption_daily.
--
-- The rule. An item is consumed when a location event takes it out of the site's stock:
--   shipped      it arrives (arrived/moved) at a dock door crossing it outwards (direction 'out'), or departs a
--                dock door outwards and is not seen elsewhere;
--   consumed     it arrives at a consumption point (a production line, kept in consumption_points) or inside one;
--   loaded       it arrives at a vehicle;
--   transferred  it moves straight to a location of another site.
-- The consumption is booked at the item's storage location: the last location of that site it arrived at
-- before leaving that is not a dock door, yard, vehicle or consumption point (the shelf it was picked from,
-- not the staging lane or the door); an item never stored there is booked at the site itself. An item leaves
-- once per stay: a second exit event without an arrival at a storage location in between (dock door, then the
-- truck) does not count again. The day is the site's local day (the site's timezone, UTC when it has none).

create table consumption_points (
    location_id  text        primary key references locations (id) on delete cascade,
    note         text,
    created_at   timestamptz not null default now()
);

-- The consumption points and every location inside them. Walked down from the (few) points rather than
-- taken from location_ancestry, because the consumption queries consult it once per event; not inlined, so
-- that it is planned with its ROWS estimate (see location_ancestry_rows).
create function consumption_location_rows() returns table (location_id text)
language sql stable rows 10 set jit = off as $$
    with recursive down (location_id) as (
        select location_id from consumption_points
        union
        select l.id from down join locations l on l.parent_id = down.location_id
    )
    select location_id from down
$$;

create view consumption_locations as select location_id from consumption_location_rows();

-- Every event that takes an item out of stock, before deduplication.
create view location_exits as
select
    e.at,
    e.epc,
    e.to_location                       as exit_location_id,
    coalesce(f.site_id, t.site_id)      as site_id,
    case
        when c.location_id is not null           then 'consumed'
        when t.kind = 'dock_door'                 then 'shipped'
        when t.kind = 'vehicle'                   then 'loaded'
        else 'transferred'
    end                                 as reason
from location_events e
join locations t on t.id = e.to_location
left join locations f on f.id = e.from_location
left join consumption_locations c on c.location_id = e.to_location
where e.kind in ('arrived', 'moved')
  and ((t.kind = 'dock_door' and e.direction = 'out')
       or c.location_id is not null
       or t.kind = 'vehicle'
       or f.site_id <> t.site_id)
union all
select e.at, e.epc, e.from_location, f.site_id, 'shipped'
from location_events e
join locations f on f.id = e.from_location
where e.kind = 'departed' and e.direction = 'out' and f.kind = 'dock_door';

-- Consumption events in [since, until), deduplicated per stay. A function so that the time range reaches the
-- location_events hypertable's chunks (a view with the same body would be computed over all history).
create function consumption_events_between(since timestamptz, until timestamptz)
returns table (
    at timestamptz, epc text, gtin text, location_id text, site_id text, day date, reason text,
    exit_location_id text
)
language sql stable set jit = off as $$
    select x.at, x.epc, i.gtin, coalesce(s.location_id, x.site_id), x.site_id,
           (x.at at time zone coalesce(site.timezone, 'UTC'))::date, x.reason, x.exit_location_id
    from location_exits x
    join items i on i.epc = x.epc
    join locations site on site.id = x.site_id
    left join lateral (
        select e.to_location as location_id, e.at as since
        from location_events e
        join locations l on l.id = e.to_location
        where e.epc = x.epc and e.at < x.at and e.kind in ('arrived', 'moved')
          and l.site_id = x.site_id
          and l.kind not in ('dock_door', 'yard', 'vehicle')
          and not exists (select 1 from consumption_locations c where c.location_id = l.id)
        order by e.at desc
        limit 1
    ) s on true
    -- Evaluated per exit (a lateral count), so the earlier exits are looked up through the epc index
    -- instead of all history being hashed.
    cross join lateral (
        select count(*) as exits
        from location_exits y
        where y.epc = x.epc and y.site_id = x.site_id and y.at < x.at
          and y.at > coalesce(s.since, '-infinity'::timestamptz)
    ) earlier
    where x.at >= since and x.at < until and earlier.exits = 0
$$;

create view consumption_events as
select * from consumption_events_between('-infinity', 'infinity');

-- Units consumed per storage location, GTIN and local day; rebuilt for a range of days by
-- refresh_consumption(from_day, to_day), which the alert evaluator calls for the recent days (late location
-- events change the past, so it refreshes a few days back, not only today).
create table consumption_daily (
    day          date   not null,
    location_id  text   not null,
    gtin         text   not null,
    site_id      text   not null,
    units        integer not null check (units > 0),
    refreshed_at timestamptz not null default now(),
    primary key (location_id, gtin, day)
);
create index consumption_daily_day on consumption_daily (day);

create function refresh_consumption(from_day date, to_day date) returns bigint
language plpgsql as $$
declare
    written bigint;
begin
    delete from consumption_daily where day between from_day and to_day;
    -- Local days span UTC offsets of -12..+14 hours: read a day more on each side, then keep the local days.
    insert into consumption_daily (day, location_id, gtin, site_id, units)
    select c.day, c.location_id, c.gtin, c.site_id, count(*)
    from consumption_events_between((from_day - 1)::timestamp at time zone 'UTC',
                                    (to_day + 2)::timestamp at time zone 'UTC') c
    where c.day between from_day and to_day and c.gtin is not null
    group by c.day, c.location_id, c.gtin, c.site_id;
    get diagnostics written = row_count;
    return written;
end
$$;

-- Consumption counted at every location that contains the storage location (a zone's is its shelves' sum).
create view consumption_daily_rollup as
select c.day, a.ancestor_id as location_id, l.site_id, c.gtin, sum(c.units)::bigint as units
from consumption_daily c
join location_ancestry a on a.location_id = c.location_id
join locations l on l.id = a.ancestor_id
group by c.day, a.ancestor_id, l.site_id, c.gtin;

-- ----------------------------------------------------------------------------------------------------
-- Each item's stays: from an arrival (arrived, or moved to) until its next event. until_at is null while it
-- is still there. A filter on epc reaches location_events' (epc, at) index through the window function.
create view item_location_intervals as
select epc, location_id, from_at, until_at
from (
    select
        e.epc,
        case when e.kind = 'departed' then null else e.to_location end   as location_id,
        e.at                                                             as from_at,
        lead(e.at) over (partition by e.epc order by e.at, e.recorded_at) as until_at
    from location_events e
) stays
where location_id is not null;

-- KPI windows are whole UTC days ending yesterday (today is not over). 28 days by default: four whole weeks,
-- so a weekly rhythm of demand weighs the same in every window.

-- Days of inventory = on hand now / average daily consumption over the window; null without consumption.
create function days_of_inventory(window_days integer default 28)
returns table (
    location_id text, site_id text, gtin text, on_hand_units bigint, consumed_units bigint,
    average_daily_units double precision, days_of_inventory double precision
)
language sql stable set jit = off as $$
    with today as (select (now() at time zone 'UTC')::date as day),
    consumed as (
        select r.location_id, r.gtin, sum(r.units)::bigint as units
        from consumption_daily_rollup r, today
        where r.day >= today.day - window_days and r.day < today.day
        group by r.location_id, r.gtin
    )
    select coalesce(o.location_id, c.location_id), l.site_id, coalesce(o.gtin, c.gtin),
           coalesce(o.observed_units, 0), coalesce(c.units, 0),
           coalesce(c.units, 0)::double precision / window_days,
           case when c.units > 0 then coalesce(o.observed_units, 0)::double precision * window_days / c.units end
    from inventory_on_hand o
    full join consumed c on c.location_id = o.location_id and c.gtin = o.gtin
    join locations l on l.id = coalesce(o.location_id, c.location_id)
$$;

create view inventory_days_of_inventory as select * from days_of_inventory(28);

-- Turnover = units consumed in the window / average units on hand in the window, scaled to a year. The
-- average on hand is exact, not sampled: the item-seconds of every stay inside the location that overlaps the
-- window, divided by the window's length.
create function inventory_turnover(window_days integer default 28)
returns table (
    location_id text, site_id text, gtin text, consumed_units bigint,
    average_on_hand_units double precision, turnover_per_year double precision
)
language sql stable set jit = off as $$
    with bounds as (
        select ((now() at time zone 'UTC')::date - window_days)::timestamp at time zone 'UTC' as since,
               ((now() at time zone 'UTC')::date)::timestamp at time zone 'UTC'                as until
    ),
    stays as (
        select s.location_id, i.gtin,
               sum(extract(epoch from least(coalesce(s.until_at, b.until), b.until) - greatest(s.from_at, b.since)))
                   as item_seconds
        from item_location_intervals s
        join items i on i.epc = s.epc, bounds b
        where s.from_at < b.until and coalesce(s.until_at, 'infinity') > b.since and i.gtin is not null
        group by s.location_id, i.gtin
    ),
    average as (
        select a.ancestor_id as location_id, s.gtin,
               sum(s.item_seconds)::double precision / (window_days * 86400.0) as units
        from stays s join location_ancestry a on a.location_id = s.location_id
        group by a.ancestor_id, s.gtin
    ),
    consumed as (
        select r.location_id, r.gtin, sum(r.units)::bigint as units
        from consumption_daily_rollup r, bounds b
        where r.day >= (b.since at time zone 'UTC')::date and r.day < (b.until at time zone 'UTC')::date
        group by r.location_id, r.gtin
    )
    select coalesce(a.location_id, c.location_id), l.site_id, coalesce(a.gtin, c.gtin),
           coalesce(c.units, 0), coalesce(a.units, 0),
           case when a.units > 0 then coalesce(c.units, 0) / a.units * 365.0 / window_days end
    from average a
    full join consumed c on c.location_id = a.location_id and c.gtin = a.gtin
    join locations l on l.id = coalesce(a.location_id, c.location_id)
$$;

-- How long each item present has been where it is, and on the site: on_site_since is its first event after
-- it last left stock (location_exits), or when it was first seen if it never left.
create view inventory_aging as
select
    s.epc, i.gtin, i.lot, s.location_id, s.site_id,
    s.since                                       as in_location_since,
    coalesce(back.at, i.first_seen_at)            as on_site_since,
    now() - s.since                               as age_in_location,
    now() - coalesce(back.at, i.first_seen_at)    as age_on_site
from item_state s
join items i on i.epc = s.epc
left join lateral (select max(x.at) as at from location_exits x where x.epc = s.epc) left_at on true
left join lateral (
    select min(e.at) as at from location_events e
    where e.epc = s.epc and left_at.at is not null and e.at > left_at.at
) back on true
where s.status = 'present';

-- Dead stock: GTINs at a location that nothing has arrived at or been consumed from for `idle`.
create function dead_stock(idle interval default interval '90 days')
returns table (
    location_id text, site_id text, gtin text, units bigint, last_arrival_at timestamptz,
    last_consumed_on date, idle_days double precision
)
language sql stable set jit = off as $$
    with here as (
        select s.location_id, i.gtin, count(*)::bigint as units, max(s.since) as last_arrival_at
        from item_state s join items i on i.epc = s.epc
        where s.status = 'present' and s.location_id is not null and i.gtin is not null
        group by s.location_id, i.gtin
    ),
    moved as (
        select h.*, o.day as last_consumed_on,
               greatest(h.last_arrival_at, (o.day + 1)::timestamp at time zone 'UTC') as last_movement_at
        from here h
        left join lateral (
            select max(c.day) as day from consumption_daily c
            where c.location_id = h.location_id and c.gtin = h.gtin
        ) o on true
    )
    select m.location_id, l.site_id, m.gtin, m.units, m.last_arrival_at, m.last_consumed_on,
           extract(epoch from now() - m.last_movement_at)::double precision / 86400.0
    from moved m join locations l on l.id = m.location_id
    where m.last_movement_at < now() - idle
$$;
