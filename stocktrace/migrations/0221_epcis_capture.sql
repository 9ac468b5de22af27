-- EPCIS 2.0 capture (tracking/epcis_capture.py): documents another system sends, through POST
-- /api/v1/epcis/capture or `stocktrace epcis import`. An AggregationEvent changes containment through the same
-- functions the API uses (tracking/containers.py), so each change lands in container_changes and, by its
-- trigger (0220), in the hash-chained event log. This migration adds what capture itself needs: its jobs, and
-- every event it has taken, so that a document sent again changes nothing.

-- One capture: a POST or an import. success is null while it runs; errors lists the events refused (with
-- GS1-Capture-Error-Behaviour: proceed, the others were applied), each {"index", "pointer", "detail"}.
create table epcis_captures (
    id              uuid        primary key,
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    source          text        not null check (source in ('api', 'cli')),
    name            text,                   -- the file an import read
    actor           text        default nullif(current_setting('stocktrace.actor', true), ''),
    error_behaviour text        not null check (error_behaviour in ('rollback', 'proceed')),
    success         boolean,
    events          integer     not null default 0 check (events >= 0),
    applied         integer     not null default 0 check (applied >= 0),
    duplicates      integer     not null default 0 check (duplicates >= 0),
    superseded      integer     not null default 0 check (superseded >= 0),
    not_applied     integer     not null default 0 check (not_applied >= 0),
    errors          jsonb       not null default '[]' check (jsonb_typeof(errors) = 'array')
);
create index epcis_captures_created_at on epcis_captures (created_at desc);

-- Every event captured, once: event_key is its eventID or, for an event without one, 'sha256:' and the hash
-- of its JSON (keys sorted, recordTime left out). outcome: applied (containment changed or confirmed),
-- superseded (each child it names changed later than its eventTime, so it changed nothing), not_applied (a
-- kind stocktrace keeps but does not act on yet, e.g. an ObjectEvent). The event is kept as received, so a
-- later version that acts on more kinds can replay it. read_point/biz_location: the registry location the
-- event's URI names, when it names one.
create table epcis_events (
    event_key            text        primary key,
    capture_id           uuid        not null references epcis_captures (id),
    type                 text        not null,
    action               text,
    event_time           timestamptz not null,
    event_time_zone      text        not null,
    parent_epc           text,
    read_point           text,
    biz_location         text,
    outcome              text        not null check (outcome in ('applied', 'superseded', 'not_applied')),
    event                jsonb       not null check (jsonb_typeof(event) = 'object'),
    captured_at          timestamptz not null default now()
);
create index epcis_events_capture on epcis_events (capture_id);
create index epcis_events_parent on epcis_events (parent_epc, event_time desc) where parent_epc is not null;

-- A document names items by URI: by the pure identity its tag decodes to, or (GS1 Digital Link) by SSCC or by
-- GTIN and serial. Capture looks each one up (tracking/epcis_identifiers.py), as the API does by URI and SSCC.
create index items_uri on items (uri) where uri is not null;
create index items_sscc on items (sscc) where sscc is not null;
create index items_gtin_serial on items (gtin, serial) where serial is not null;
