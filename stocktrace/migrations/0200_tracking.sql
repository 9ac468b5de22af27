-- Tracking: what the readers saw, folded per tag and location, and what that means for each item.
-- The ingest workers update tag_sightings in the same transaction as the raw reads (one upsert per tag and
-- location per batch, not per read); the resolver, one process at a time, turns sightings into item state and
-- location events. Downstream stages (alerts, dashboards) read item_state, location_events and the views.

-- Per tag and location: when it was first and last seen there, how often, and how strongly. last_seen_at only
-- moves forward, so a late read never makes an old sighting look new.
create table tag_sightings (
    epc                text        not null,
    location_id        text        not null,
    first_seen_at      timestamptz not null,
    last_seen_at       timestamptz not null,
    reads              bigint      not null,
    rssi_smoothed_dbm  real,
    last_device_id     text,
    last_antenna       smallint,
    side               text,               -- 'in' / 'out' when the antenna is one side of a portal
    updated_at         timestamptz not null default now(),
    primary key (epc, location_id)
);
create index tag_sightings_updated_at on tag_sightings (updated_at);
create index tag_sightings_location on tag_sightings (location_id, last_seen_at desc);

-- Every item (tagged object) known, with its GS1 identity decoded once.
create table items (
    epc            text        primary key,
    scheme         text        not null,          -- sgtin-96, sscc-96, ..., unknown
    gtin           text,
    serial         text,
    sscc           text,
    uri            text,
    lot            text,
    first_seen_at  timestamptz not null,
    created_at     timestamptz not null default now()
);
create index items_gtin on items (gtin);

-- Where each item is now. location_id is null when it has departed (and not arrived anywhere yet).
-- status: present (in a location), departed (left, not seen elsewhere), in_transit (aboard a vehicle off site).
create table item_state (
    epc            text        primary key references items (epc),
    location_id    text,
    site_id        text,
    status         text        not null check (status in ('present', 'departed', 'in_transit')),
    since          timestamptz not null,
    last_seen_at   timestamptz not null,
    container_epc  text,
    latitude       double precision,
    longitude      double precision,
    updated_at     timestamptz not null default now()
);
create index item_state_location on item_state (location_id) include (epc);
create index item_state_container on item_state (container_epc) where container_epc is not null;

-- Movement history: arrived, departed, moved (from -> to), with the portal direction when one was crossed.
create table location_events (
    at             timestamptz not null,
    epc            text        not null,
    kind           text        not null check (kind in ('arrived', 'departed', 'moved')),
    from_location  text,
    to_location    text,
    direction      text        check (direction in ('in', 'out')),
    recorded_at    timestamptz not null default now()
);
select create_hypertable('location_events', by_range('at', interval '7 days'));
create index location_events_epc on location_events (epc, at desc);
create index location_events_to on location_events (to_location, at desc);

-- The simulator's check and the dashboards ask "where is each item" through this view.
create view item_locations as
select epc, location_id, since from item_state where location_id is not null;
