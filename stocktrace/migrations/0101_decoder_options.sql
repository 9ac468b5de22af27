-- Per-device decoder options: what a device's format decoder needs to know about it (a LoRaWAN field map, an
-- ESPHome sensor map, a Tasmota time zone, a Sparkplug metric map). Validated per source format in Python
-- (devices/decoder_options.py), where the decoders live; null means the format's defaults.
alter table devices add column decoder_options jsonb
    check (decoder_options is null or jsonb_typeof(decoder_options) = 'object');

-- Running ingest workers rebuild their decoders when the registry changes. They poll this one row every few
-- seconds rather than the tables: it changes, in the same transaction, with every statement that writes devices
-- or locations (a site's time zone is a Tasmota device's default), and so becomes visible exactly when the
-- change does. The value is the writing transaction's id: unique, so a change is never mistaken for the state
-- before it, even after the row was emptied with the other tables.
create table registry_version (
    one      boolean primary key default true check (one),
    version  bigint  not null
);

create function registry_version_bump() returns trigger language plpgsql as $$
begin
    insert into registry_version (version) values (txid_current())
    on conflict (one) do update set version = excluded.version
    where registry_version.version <> excluded.version;
    return null;
end
$$;
create trigger registry_version after insert or update or delete on devices
    for each statement execute function registry_version_bump();
create trigger registry_version after insert or update or delete on locations
    for each statement execute function registry_version_bump();
