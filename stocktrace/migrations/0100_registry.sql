-- The device registry: sites and the locations inside them, the devices that report from them, and where each
-- RFID antenna points. Written by `stocktrace apply -f site.yaml` and the /api/v1 registry endpoints
-- (devices/registry.py); geofences are validated there before they reach the jsonb column.

-- How long a device of each kind may stay silent before it counts as offline; devices.inactivity_timeout_s
-- overrides it per device. A function rather than a table of rows, so that emptying the data tables (as the
-- tests do between cases) cannot lose the defaults; change one with CREATE OR REPLACE FUNCTION.
create function default_inactivity_timeout_s(kind text) returns integer
language sql immutable parallel safe as $$
    select case kind
        when 'rfid_reader' then 60     -- readers send reads or heartbeats continuously while they are up
        when 'sensor'      then 900    -- LoRaWAN and Wi-Fi sensors report every few minutes
        when 'gps_tracker' then 600
        when 'gateway'     then 300
        else 900                       -- a device of unknown kind: the longest, not to call it offline early
    end
$$;

-- One table for the whole hierarchy: a site is the root location (kind 'site', no parent); everything else has a
-- parent. site_id is carried on every row so that "which site is this antenna in" needs no recursive query; the
-- composite foreign key keeps it equal to the parent's, and ON UPDATE CASCADE carries a move to another site down
-- to the children.
create table locations (
    id               text        primary key,
    site_id          text        not null,
    parent_id        text,
    kind             text        not null check (kind in (
                         'site', 'building', 'zone', 'yard', 'dock_door', 'aisle', 'shelf', 'bin',
                         'cold_room', 'freezer', 'vehicle', 'container')),
    name             text,
    timezone         text,                     -- IANA name; devices reporting local time use their site's
    geofence         jsonb check (geofence is null or jsonb_typeof(geofence) = 'object'),
    temperature_min_c  double precision,
    temperature_max_c  double precision,
    humidity_min_pct   double precision,
    humidity_max_pct   double precision,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    unique (id, site_id),
    foreign key (parent_id, site_id) references locations (id, site_id) on update cascade,
    check ((kind = 'site') = (parent_id is null)),
    check (kind <> 'site' or site_id = id),
    check (timezone is null or kind = 'site'),
    check (temperature_min_c <= temperature_max_c),
    check (humidity_min_pct <= humidity_max_pct)
);
create index locations_parent on locations (parent_id);
create index locations_site on locations (site_id);

-- The foreign keys cannot see a loop (a inside b inside a); refuse one whichever path wrote it.
create function locations_refuse_loop() returns trigger language plpgsql as $$
begin
    if new.parent_id is not null and exists (
        with recursive ancestors (id, parent_id) as (
            select id, parent_id from locations where id = new.parent_id
            union
            select l.id, l.parent_id from locations l join ancestors a on l.id = a.parent_id
        )
        select 1 from ancestors where id = new.id
    ) then
        raise exception 'location % cannot be inside itself (through parent %)', new.id, new.parent_id
            using errcode = 'check_violation';
    end if;
    return new;
end
$$;
create trigger locations_refuse_loop before insert or update of parent_id on locations
    for each row execute function locations_refuse_loop();

-- id is the device_id the decoders produce, so readings join to the registry without a lookup table.
-- source names a decoder in devices.decoders.DECODERS (checked in Python, where that table lives).
-- mqtt_username is null for a device that does not connect itself (a LoRaWAN sensor behind its network server);
-- topic_prefix null means the source format's default (devices/mosquitto.py).
-- assigned = false parks a known device: its data is kept, but it is listed with the unassigned ones.
create table devices (
    id                   text        primary key,
    kind                 text        not null check (kind in ('rfid_reader', 'sensor', 'gps_tracker', 'gateway')),
    source               text        not null,
    name                 text,
    location_id          text        references locations (id),
    mqtt_username        text        unique,
    topic_prefix         text,
    inactivity_timeout_s integer     check (inactivity_timeout_s > 0),
    assigned             boolean     not null default true,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);
create index devices_location on devices (location_id);

-- Where each antenna of a reader points. side marks the two antennas of a portal (dock door): a tag read by 'out'
-- then 'in' went in. A read from an antenna without a row here belongs to the reader's own location.
create table antennas (
    device_id   text     not null references devices (id) on delete cascade,
    antenna     smallint not null check (antenna between 0 and 32767),
    location_id text     not null references locations (id),
    side        text     check (side in ('in', 'out')),
    primary key (device_id, antenna)
);
create index antennas_location on antennas (location_id);

-- Every device known to the registry or seen on the broker, with its state now:
--   never_seen  registered, nothing received yet;
--   offline     its latest device-wide event says so (last will, Sparkplug death certificate, vendor status)
--               and nothing arrived after it, or it has been silent longer than its inactivity timeout;
--   online      otherwise.
-- A device that publishes without being registered appears here with registered = false: its data is kept.
create view device_health as
with ids as (
    select id as device_id from devices
    union
    select device_id from device_activity
)
select
    i.device_id,
    d.id is not null                           as registered,
    coalesce(d.assigned, false)                as assigned,
    d.kind,
    d.source,
    d.location_id,
    a.first_seen_at,
    greatest(a.last_seen_at, e.received_at)    as last_seen_at,
    a.last_topic,
    coalesce(a.messages, 0)                    as messages,
    e.observed_at                              as last_event_at,
    e.online                                   as last_event_online,
    e.reason                                   as last_event_reason,
    coalesce(d.inactivity_timeout_s, default_inactivity_timeout_s(d.kind)) as inactivity_timeout_s,
    case
        when a.last_seen_at is null and e.received_at is null then 'never_seen'
        when not e.online and (a.last_seen_at is null or a.last_seen_at <= e.received_at) then 'offline'
        when now() - greatest(a.last_seen_at, e.received_at)
             > make_interval(secs => coalesce(d.inactivity_timeout_s, default_inactivity_timeout_s(d.kind)))
             then 'offline'
        else 'online'
    end                                        as status,
    case
        when a.last_seen_at is null and e.received_at is null then null
        when not e.online and (a.last_seen_at is null or a.last_seen_at <= e.received_at) then e.reason
        when now() - greatest(a.last_seen_at, e.received_at)
             > make_interval(secs => coalesce(d.inactivity_timeout_s, default_inactivity_timeout_s(d.kind)))
             then 'inactive'
    end                                        as reason
from ids i
left join devices d on d.id = i.device_id
left join device_activity a on a.device_id = i.device_id
left join lateral (
    select ev.observed_at, ev.received_at, ev.online, ev.reason
    from device_events ev
    where ev.device_id = i.device_id and ev.antenna = -1
    order by ev.observed_at desc
    limit 1
) e on true;

-- Devices whose data cannot be placed: seen but not registered, or registered and parked (assigned = false).
create view unassigned_devices as
select * from device_health where not assigned;

-- Every antenna that is mapped, has read or has reported an event, with its latest read (antenna_activity, kept
-- by ingest per batch) and its latest event; filter by device_id: the event part scans device_events otherwise.
create view antenna_health as
with ports as (
    select device_id, antenna from antennas
    union
    select device_id, antenna from antenna_activity
    union
    select device_id, antenna from device_events where antenna >= 0
)
select
    p.device_id,
    p.antenna,
    m.location_id,
    m.side,
    r.last_read_at,
    e.online       as connected,
    e.reason       as last_event_reason,
    e.observed_at  as last_event_at
from ports p
left join antennas m on m.device_id = p.device_id and m.antenna = p.antenna
left join antenna_activity r on r.device_id = p.device_id and r.antenna = p.antenna
left join lateral (
    select ev.online, ev.reason, ev.observed_at from device_events ev
    where ev.device_id = p.device_id and ev.antenna = p.antenna
    order by ev.observed_at desc
    limit 1
) e on true;
