-- The traceability record: every movement, aggregation, condition and inventory event, appended to one log in
-- which each entry carries the SHA-256 of the one before it. Editing or deleting an entry breaks the chain, and
-- `stocktrace verify` (tracking/eventlog.py) finds where.
--
-- How an entry gets in: writers never insert into event_log. They call
--     select event_log_append(kind, subject, event_time, payload);
-- (location_events does it through its trigger below), which queues the event in event_log_queue. A deferred
-- constraint trigger seals the queue when the transaction commits: it locks the one row of event_log_head, gives
-- each queued event the next seq, hashes it onto the chain and moves the head. The lock is held until commit, so
-- appending transactions commit one after another and the chain is in commit order: gapless (a transaction
-- that rolls back rolls its seqs and the head back with it) and never forked.
--
-- Why at commit and not at the call: a transaction that took the head lock early and then waited for a row
-- another transaction holds could deadlock with that transaction waiting for the head. Taken at commit, after
-- the transaction's own work, the head lock is the last lock an appending transaction takes, and while holding
-- it the transaction only writes event_log rows, which nobody else locks. (A deferred trigger of another table
-- that fires after this one and waits for a row lock would break that rule: keep such triggers off the tables
-- that append.) Under REPEATABLE READ or SERIALIZABLE the second of two concurrent appenders fails with a
-- serialization error at commit and retries, as those levels require anyway.
--
-- The price: appending transactions commit one at a time, so their rate is bounded by one commit's latency
-- (fsync of the WAL); group commit cannot batch them. Append many events per transaction (a batch of movements
-- in one) and the bound is per transaction, not per event. `stocktrace bench eventlog` measures both against
-- plain inserts into a table of the same shape; on the 2-core development host, 4 clients: 1 event per
-- transaction ~1,400 appends/s against ~6,500 inserts/s, 500 per transaction ~20,000 against ~65,000.
--
-- Canonical form of an entry, which is what gets hashed (event_log_canonical below; `stocktrace verify`
-- rebuilds it independently in Python):
--     hash = sha256(prev_hash || utf8(seq \n recorded_at \n event_time \n kind \n subject \n payload))
-- with the times in UTC as YYYY-MM-DDTHH:MM:SS.ffffffZ and payload as jsonb's text output, which is canonical:
-- keys in jsonb's own order, one space after ':' and ',', strings escaped the same way every time. The fields
-- cannot contain a newline (kind is [a-z_], subject has no control characters, jsonb text escapes them), so
-- the form is unambiguous. The first entry's prev_hash is 32 zero bytes. The database must be UTF8-encoded.
--
-- Kinds and their payloads (tracking/epcis.py maps them to EPCIS 2.0 events):
--   movement     subject: the item's EPC (hex); payload {"event": "arrived"|"departed"|"moved",
--                "from_location", "to_location", "direction": "in"|"out", "from_site", "to_site"}; absent keys
--                were null. Written by the trigger on location_events.
--   aggregation  subject: the container's EPC or SSCC; payload {"action": "ADD"|"DELETE",
--                "children": [EPC, ...], "location": location id, "source": "api"|"epcis"|"inferred"}.
--                Written by the trigger on container_changes.
--   condition    subject: the item's EPC, or a location id when "epcs" is []; payload {"location": location id,
--                "epcs": [EPC, ...] (default [subject]), "readings": [{"at": ISO time, "temperature_c": n,
--                "humidity_pct": n, "device_id": id}, ...]}.
--   inventory    subject: a location id or cycle count id; payload {"location": location id,
--                "epcs": [EPC, ...] and/or "quantities": [{"gtin": GTIN-14, "quantity": n}]}.
-- Other kinds ([a-z_]+) are kept and chained like these; the EPCIS export leaves them out.
--
-- Who may change it: nobody, through SQL. UPDATE and DELETE are refused by a trigger for every role, TRUNCATE
-- for every role but superusers (emptying a whole database, as tests between cases and a demo reset do, also
-- empties the head, and the next append starts a new chain). The owner's own UPDATE, DELETE and TRUNCATE
-- privileges are revoked too. A separate application role needs only:
--     grant select on event_log, event_log_head to <role>;
--     grant execute on function event_log_append(text, text, timestamptz, jsonb) to <role>;
-- A superuser can still disable the triggers and edit rows: the chain shows it, unless the whole tail after the
-- edit was re-hashed too. Against that, keep the head hash that `stocktrace verify` prints somewhere else and
-- pass it back with --expect-head: a chain rewritten before that point no longer contains it.

create table event_log (
    seq          bigint      primary key check (seq > 0),
    recorded_at  timestamptz not null,
    event_time   timestamptz not null check (isfinite(event_time)),
    kind         text        not null check (kind ~ '^[a-z][a-z_]*$'),
    subject      text        not null check (subject <> '' and subject !~ '[[:cntrl:]]'),
    payload      jsonb       not null check (jsonb_typeof(payload) = 'object'),
    prev_hash    bytea       not null check (length(prev_hash) = 32),
    hash         bytea       not null check (length(hash) = 32)
);
-- The EPCIS export's filters: by item (subject) and by time.
create index event_log_subject on event_log (subject, seq);
create index event_log_event_time on event_log (event_time);

-- The end of the chain: the last seq and its hash. One row, locked by each appending transaction until it
-- commits. A cache of the last entry that also records how long the chain was: `verify` reports entries missing
-- from the tail when the log ends before the head. If the row is missing (after a TRUNCATE of both tables), the
-- next append rebuilds it from the log.
create table event_log_head (
    id    boolean primary key default true check (id),
    seq   bigint  not null,
    hash  bytea   not null check (length(hash) = 32)
);
insert into event_log_head (seq, hash) values (0, decode(repeat('00', 32), 'hex'));

-- Events waiting for their transaction to commit. Rows live only inside the transaction that queued them: the
-- seal moves them into event_log before commit. The same checks as event_log, so a bad event fails the
-- statement that queued it rather than the commit.
create table event_log_queue (
    id          bigint      generated always as identity primary key,
    event_time  timestamptz not null check (isfinite(event_time)),
    kind        text        not null check (kind ~ '^[a-z][a-z_]*$'),
    subject     text        not null check (subject <> '' and subject !~ '[[:cntrl:]]'),
    payload     jsonb       not null check (jsonb_typeof(payload) = 'object')
) with (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

create function event_log_canonical(
    seq bigint, recorded_at timestamptz, event_time timestamptz, kind text, subject text, payload jsonb
) returns text
language sql stable strict parallel safe as $$
    select concat_ws(E'\n',
        seq::text,
        to_char(recorded_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        to_char(event_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        kind,
        subject,
        payload::text)
$$;

-- The one way in: queue an event; it is chained when the calling transaction commits (its seq is not known
-- before). Security definer, so that roles without rights on the tables can append and do nothing else.
create function event_log_append(kind text, subject text, event_time timestamptz, payload jsonb) returns void
language sql security definer set search_path = public, pg_temp as $$
    insert into event_log_queue (kind, subject, event_time, payload) values ($1, $2, $3, $4)
$$;

-- Chains everything queued in this transaction. It fires once per queued row; the first firing seals them all
-- and notes the last id sealed, so the others return at once (a scan per firing would make a 10,000-event
-- batch quadratic). Rows queued later in the commit (by another deferred trigger) carry larger ids and seal again.
create function event_log_seal() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    sealed_to  bigint := nullif(current_setting('stocktrace.event_log_sealed_to', true), '')::bigint;
    pending    event_log_queue[];
    item       event_log_queue;
    head_seq   bigint;
    head_hash  bytea;
    seqs       bigint[] := '{}';
    times      timestamptz[] := '{}';
    prevs      bytea[] := '{}';
    hashes     bytea[] := '{}';
    stamp      timestamptz;
begin
    if new.id <= sealed_to then
        return null;
    end if;
    select h.seq, h.hash into head_seq, head_hash from event_log_head h for update;
    if not found then
        insert into event_log_head (seq, hash)
        select coalesce(max(l.seq), 0),
               coalesce((select l2.hash from event_log l2 order by l2.seq desc limit 1), decode(repeat('00', 32), 'hex'))
        from event_log l
        on conflict (id) do nothing;
        select h.seq, h.hash into head_seq, head_hash from event_log_head h for update;
    end if;
    with drained as (delete from event_log_queue q returning q)
    select array_agg(d.q order by (d.q).id) into pending from drained d;
    if pending is null then
        return null;
    end if;
    foreach item in array pending loop
        head_seq := head_seq + 1;
        stamp := clock_timestamp();
        seqs := seqs || head_seq;
        times := times || stamp;
        prevs := prevs || head_hash;
        head_hash := sha256(head_hash || convert_to(
            event_log_canonical(head_seq, stamp, item.event_time, item.kind, item.subject, item.payload), 'UTF8'));
        hashes := hashes || head_hash;
    end loop;
    insert into event_log (seq, recorded_at, event_time, kind, subject, payload, prev_hash, hash)
    select u.seq, u.recorded_at, u.event_time, u.kind, u.subject, u.payload, u.prev_hash, u.hash
    from unnest(seqs, times, pending, prevs, hashes)
        as u(seq, recorded_at, id, event_time, kind, subject, payload, prev_hash, hash);
    update event_log_head set seq = head_seq, hash = head_hash;
    perform set_config('stocktrace.event_log_sealed_to', (pending[array_upper(pending, 1)]).id::text, true);
    return null;
end
$$;
create constraint trigger event_log_seal after insert on event_log_queue
    deferrable initially deferred
    for each row execute function event_log_seal();

-- Every movement the resolver records is a movement in the log, in the same transaction.
create function event_log_movement() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    insert into event_log_queue (kind, subject, event_time, payload)
    values ('movement', new.epc, new.at, jsonb_strip_nulls(jsonb_build_object(
        'event', new.kind,
        'from_location', new.from_location,
        'to_location', new.to_location,
        'direction', new.direction,
        'from_site', (select site_id from locations where id = new.from_location),
        'to_site', (select site_id from locations where id = new.to_location))));
    return null;
end
$$;
create trigger event_log_movement after insert on location_events
    for each row execute function event_log_movement();

-- Every container association and dissociation (0201's container_changes) is an aggregation in the log: one
-- entry per container, time and action, with all the items of that statement, and where the container is.
create function event_log_aggregation() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    insert into event_log_queue (kind, subject, event_time, payload)
    select 'aggregation', c.container_epc, c.at, jsonb_strip_nulls(jsonb_build_object(
        'action', upper(c.action),
        'children', jsonb_agg(c.item_epc order by c.item_epc),
        'source', c.source,
        'location', (select s.location_id from item_state s where s.epc = c.container_epc)))
    from changed c
    group by c.at, c.container_epc, c.action, c.source
    order by c.at, c.container_epc, c.action;
    return null;
end
$$;
create trigger event_log_aggregation after insert on container_changes
    referencing new table as changed
    for each statement execute function event_log_aggregation();

create function event_log_refuse_change() returns trigger language plpgsql as $$
begin
    if tg_op = 'TRUNCATE' and (select rolsuper from pg_roles where rolname = current_user) then
        return null;
    end if;
    raise exception 'event_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege',
              hint = 'Entries are added with event_log_append(); nothing changes or removes them.';
end
$$;
create trigger event_log_refuse_change before update or delete or truncate on event_log
    for each statement execute function event_log_refuse_change();

revoke all on event_log, event_log_head, event_log_queue from public;
revoke update, delete, truncate on event_log from current_user;
revoke all on function event_log_append(text, text, timestamptz, jsonb) from public;
