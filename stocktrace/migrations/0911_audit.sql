-- The audit log: every change to configuration and master data, who made it, when, and the row before and after.
--
-- Kept by triggers, so that no code path can forget it: the API, `stocktrace apply`, a stage's own job and psql
-- are all recorded. The API names the actor on each connection it hands out (stocktrace/audit.py sets
-- stocktrace.actor, .actor_key, .request and .request_id with set_config for the length of the request); any
-- other session is recorded as 'db:<its database user>'.
create table audit_log (
    id          bigint      generated always as identity primary key,
    at          timestamptz not null default now(),
    actor       text        not null,   -- the API key's name, or db:<user> outside the API
    actor_key   text,                   -- the API key's id
    request     text,                   -- "PUT /api/v1/devices/reader-1"
    request_id  text,                   -- as in the response's X-Request-ID and the service's logs
    table_name  text        not null,
    operation   text        not null check (operation in ('insert', 'update', 'delete')),
    object_key  text,                   -- the row's primary key, its columns joined by '/'
    before      jsonb,                  -- null for an insert
    after       jsonb                   -- null for a delete
);
create index audit_log_object on audit_log (table_name, object_key, id desc);
create index audit_log_actor on audit_log (actor, id desc);

-- Append only: an entry cannot be edited or deleted (TRUNCATE, which needs the table owner, still can).
create function audit_log_refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'the audit log is append only' using errcode = 'insufficient_privilege';
end
$$;
create trigger audit_log_append_only before update or delete on audit_log
    for each row execute function audit_log_refuse_change();

-- The row trigger. Arguments: the key columns, columns never to record (secrets), and columns whose change
-- alone is not worth an entry (bookkeeping such as updated_at), each as a text[] literal.
create function audit_record() returns trigger language plpgsql as $$
declare
    key_columns text[] := tg_argv[0]::text[];
    hidden      text[] := tg_argv[1]::text[];
    ignored     text[] := tg_argv[2]::text[];
    old_row     jsonb;
    new_row     jsonb;
begin
    if tg_op <> 'INSERT' then
        old_row := to_jsonb(old) - hidden;
    end if;
    if tg_op <> 'DELETE' then
        new_row := to_jsonb(new) - hidden;
    end if;
    if tg_op = 'UPDATE' and (old_row - ignored) = (new_row - ignored) then
        return null;
    end if;
    insert into audit_log (actor, actor_key, request, request_id, table_name, operation, object_key, before, after)
    values (
        coalesce(nullif(current_setting('stocktrace.actor', true), ''), 'db:' || session_user),
        nullif(current_setting('stocktrace.actor_key', true), ''),
        nullif(current_setting('stocktrace.request', true), ''),
        nullif(current_setting('stocktrace.request_id', true), ''),
        tg_table_name,
        lower(tg_op),
        (select string_agg(coalesce(new_row, old_row) ->> k.name, '/' order by k.position)
         from unnest(key_columns) with ordinality as k (name, position)),
        old_row,
        new_row
    );
    return null;
end
$$;

-- Record every insert, update and delete of a table from now on; safe to call again. A migration that adds a
-- table worth auditing calls it: select audit_attach('silences');
create function audit_attach(
    tbl regclass, hidden text[] default '{}', ignored text[] default '{updated_at}'
) returns void language plpgsql as $$
declare
    key_columns text[];
begin
    select array_agg(a.attname::text order by k.position) into key_columns
    from pg_index i
    cross join unnest(i.indkey::int2[]) with ordinality as k (attnum, position)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = tbl and i.indisprimary;
    execute format('drop trigger if exists audit on %s', tbl);
    execute format(
        'create trigger audit after insert or update or delete on %s'
        ' for each row execute function audit_record(%L, %L, %L)',
        tbl, coalesce(key_columns, '{}'), hidden, ignored
    );
end
$$;

-- Configuration and master data of every stage that exists now; later stages attach their own tables.
do $$
declare
    name text;
begin
    foreach name in array array[
        'locations', 'devices', 'antennas', 'location_presence_policy', 'skus', 'lots', 'book_imports',
        'consumption_points', 'cycle_counts', 'silences'
    ] loop
        if to_regclass(name) is not null then
            perform audit_attach(name::regclass);
        end if;
    end loop;
end
$$;
select audit_attach('api_keys', hidden => '{secret_sha256}', ignored => '{last_used_at}');

-- Items are written by the resolver as readers see them; only the lot, which people assign, is audited.
create trigger audit_lot after update of lot on items
    for each row when (old.lot is distinct from new.lot)
    execute function audit_record('{epc}', '{}', '{}');

-- Packing and unpacking through the API (source 'api'); inferred associations are the resolver's, not a change
-- anyone made. container_changes is itself an append-only log; the audit adds who asked for the change.
create trigger audit_contents after insert on container_changes
    for each row when (new.source = 'api')
    execute function audit_record('{container_epc,item_epc}', '{}', '{}');
