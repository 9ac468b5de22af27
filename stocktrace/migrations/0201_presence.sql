-- Presence: what the resolver (tracking/resolver.py) needs besides the sightings and the item state.
-- The defaults of the presence policy live in tracking/policy.py; this table only holds per-location overrides.

-- Per-location overrides of the presence policy; a null column keeps the default of the location's kind.
create table location_presence_policy (
    location_id    text        primary key references locations (id) on delete cascade,
    dwell_s        real        check (dwell_s >= 0),
    age_out_s      real        check (age_out_s > 0),
    hysteresis_db  real        check (hysteresis_db >= 0),
    updated_at     timestamptz not null default now()
);

-- How far the resolver has read each of its inputs; kept here so that a restart, or another process taking over
-- as leader, carries on where the last one stopped.
create table tracking_watermarks (
    name        text        primary key,
    at          timestamptz not null,
    updated_at  timestamptz not null default now()
);

-- Per tag and portal (a location with antennas marked side 'in'/'out'): when each side saw the tag during the
-- current pass. Written by the ingest step with tag_sightings; a pass ends after the same gap that starts a new
-- visit in tag_sightings. The direction is the side seen later: out then in is 'in'.
create table portal_passes (
    epc            text        not null,
    location_id    text        not null,
    in_first_at    timestamptz,
    in_last_at     timestamptz,
    out_first_at   timestamptz,
    out_last_at    timestamptz,
    updated_at     timestamptz not null default now(),
    primary key (epc, location_id)
);

-- The age-out scan: present items whose last sighting at their location is older than that location's deadline.
create index item_state_present_last_seen on item_state (location_id, last_seen_at)
    where status <> 'departed' and container_epc is null;
create index item_state_since on item_state (status, site_id, since) where status = 'departed';

-- What is inside which container (pallet or case, usually an SSCC): one container per item at a time.
-- source: 'api' (POST /api/v1/containers/{sscc}/contents), 'epcis' (an AggregationEvent), 'inferred' (the item
-- travelled with the container through consecutive locations).
create table container_contents (
    item_epc       text        primary key,
    container_epc  text        not null check (container_epc <> item_epc),
    source         text        not null check (source in ('api', 'epcis', 'inferred')),
    associated_at  timestamptz not null,
    updated_at     timestamptz not null default now()
);
create index container_contents_container on container_contents (container_epc);
create index container_contents_updated_at on container_contents (updated_at);

-- Every association and dissociation, append only: the input of EPCIS AggregationEvents (ADD / DELETE).
create table container_changes (
    at             timestamptz not null,
    container_epc  text        not null,
    item_epc       text        not null,
    action         text        not null check (action in ('add', 'delete')),
    source         text        not null check (source in ('api', 'epcis', 'inferred')),
    recorded_at    timestamptz not null default now()
);
create index container_changes_container on container_changes (container_epc, at desc);
create index container_changes_item on container_changes (item_epc, at desc);

-- Each vehicle location (kind 'vehicle') with its latest GPS fix and which site geofence it is in (null: on the
-- road). left_site_id/left_at keep its latest departure from a site, which places what was loaded just before.
create table vehicle_positions (
    vehicle_id     text        primary key references locations (id) on delete cascade,
    device_id      text        not null,
    observed_at    timestamptz not null,
    latitude       double precision not null,
    longitude      double precision not null,
    site_id        text,
    entered_at     timestamptz,
    left_site_id   text,
    left_at        timestamptz,
    updated_at     timestamptz not null default now()
);
