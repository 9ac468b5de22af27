-- Raw readings as devices reported them, in hypertables, plus the dead letters of what could not be read.
create extension if not exists timescaledb;

-- RFID reads arrive at up to hundreds of thousands a second; one-hour chunks keep the chunk being written, and
-- its indexes, small enough to stay in memory. The natural key makes redelivered messages (QoS 1 is at least
-- once) leave no duplicate, and it leads with the EPC because "latest read of this EPC" is the question asked.
create table rfid_reads (
    read_at     timestamptz not null,
    device_id   text        not null,
    antenna     smallint    not null default 0,
    epc         text        not null,
    rssi_dbm    real,
    received_at timestamptz not null,
    extra       jsonb
);
select create_hypertable('rfid_reads', by_range('read_at', interval '1 hour'));
create unique index rfid_reads_natural_key on rfid_reads (epc, read_at, device_id, antenna);
-- Besides it, only TimescaleDB's default time index (read_at desc), which the device clock's "newest read" and
-- ad-hoc time-range queries use; it costs COPY about a fifth of its server time. One on (device, antenna, time)
-- would halve COPY throughput (200k against 314k rows/s measured here): "latest read per antenna" is kept in
-- antenna_activity instead, and per-reader rates in the read counts (0002_read_rollup).

-- Sensor values and GPS fixes: far fewer rows, so one-day chunks.
create table telemetry (
    observed_at timestamptz      not null,
    device_id   text             not null,
    quantity    text             not null,   -- temperature_c, humidity_pct, battery_pct, ..., position
    value       double precision,
    latitude    double precision,
    longitude   double precision,
    altitude_m  real,
    accuracy_m  real,
    speed_mps   real,
    received_at timestamptz      not null,
    extra       jsonb
);
select create_hypertable('telemetry', by_range('observed_at', interval '1 day'));
create unique index telemetry_natural_key on telemetry (device_id, quantity, observed_at);

-- Online/offline and health events: last wills, heartbeats, antenna faults.
create table device_events (
    observed_at timestamptz not null,
    device_id   text        not null,
    antenna     smallint    not null default -1,   -- -1: the device as a whole
    online      boolean     not null,
    reason      text        not null,
    received_at timestamptz not null,
    extra       jsonb,
    primary key (device_id, antenna, observed_at, reason)
);

-- Every device that has published, known to the registry or not; kept current once per batch.
create table device_activity (
    device_id     text        primary key,
    first_seen_at timestamptz not null,
    last_seen_at  timestamptz not null,
    last_topic    text        not null,
    messages      bigint      not null default 0   -- deliveries: a redelivered message counts again
);

-- Per reader antenna: its newest read and how many reads it has delivered; kept current once per batch.
create table antenna_activity (
    device_id     text        not null,
    antenna       smallint    not null,
    last_read_at  timestamptz not null,
    reads         bigint      not null default 0,   -- deliveries, as device_activity.messages
    primary key (device_id, antenna)
);

-- What could not be decoded, with the reason; nothing a device sends is silently lost.
create table dead_letters (
    id          bigint generated always as identity primary key,
    received_at timestamptz not null,
    topic       text        not null,
    payload     bytea       not null,
    error       text        not null
);
create index dead_letters_received_at on dead_letters (received_at desc);
