-- Tracking's ingest step appends; the resolver folds. Each ingest batch adds its reads, aggregated per tag and
-- location, to sighting_deltas in the batch's own transaction: no upsert and no row lock, so ingest workers never
-- wait for each other on tags they both read. The resolver (one process at a time) folds the deltas into
-- tag_sightings and portal_passes in its tick, in the order of their transactions, and deletes what it folded
-- (tracking/sightings.py). tag_sightings and portal_passes are written by the resolver only from here on: ingest
-- workers of the previous version, which upsert them, must be stopped before this version's resolver runs.
create table sighting_deltas (
    -- The ingest transaction that added the row: orders the deltas of one tag, and tells the resolver which
    -- transactions it has folded completely (every one below the xmin of the snapshot it folded with).
    xid            xid8        not null default pg_current_xact_id(),
    epc            text        not null,
    location_id    text        not null,
    first_at       timestamptz not null,
    last_at        timestamptz not null,
    reads          integer     not null,
    rssi_dbm       real,                   -- mean of the batch's reads that carried one
    device_id      text        not null,   -- of the batch's newest read
    antenna        smallint    not null,
    side           text,                   -- 'in' / 'out' at a portal
    in_first_at    timestamptz,
    in_last_at     timestamptz,
    out_first_at   timestamptz,
    out_last_at    timestamptz
) with (
    -- A queue: rows live for about one resolver tick. Vacuum it often so its pages are reused.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000
);
-- The resolver folds from the lowest transaction it has not folded completely; the index lets it skip the
-- deleted rows before that, which vacuum has not removed yet.
create index sighting_deltas_xid on sighting_deltas (xid);

-- Where the resolver's last fold ended: every transaction below this one is folded. Only a shortcut for the
-- scan; without the row the resolver scans from the start.
create table sighting_fold_marks (
    name          text        primary key,
    folded_below  xid8        not null,
    updated_at    timestamptz not null default now()
);

-- Items whose sightings a backlog fold changed (the resolver folds a backlog over several ticks and resolves the
-- items once it has folded it all); and, once, those the previous version's ingest changed after the resolver's
-- watermark, which is no longer kept.
create table sightings_to_resolve (
    epc  text primary key
);
insert into sightings_to_resolve (epc)
select distinct epc from tag_sightings
where updated_at > coalesce((select at from tracking_watermarks where name = 'sightings'), '-infinity');
delete from tracking_watermarks where name = 'sightings';

-- The resolver knows which sightings it folded, so nothing asks tag_sightings by updated_at any more; without the
-- index, and with room left in each page, updating a sighting rewrites no index (a HOT update).
drop index tag_sightings_updated_at;
alter table tag_sightings set (fillfactor = 80);

comment on table sighting_deltas is
    'Reads aggregated per tag, location and ingest batch, waiting for the resolver to fold them (tracking/sightings.py).';
comment on table tag_sightings is
    'Per tag and location: the current visit. Folded from sighting_deltas by the resolver (tracking/sightings.py).';
