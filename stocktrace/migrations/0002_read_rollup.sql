-- RFID reads counted per reader antenna and minute, five minutes and half hour, with their ingest lag: rate and
-- lag panels read a row per antenna and bucket instead of every read of their range.
--
-- Ingest keeps them, in the transaction of the batch that stores the reads (ingest/read_counts.py), as it keeps
-- antenna_activity. The Timescale edition could derive them with continuous aggregates instead; we keep them in
-- ingest on both editions because they are then exact at commit (a continuous aggregate is as fresh as its last
-- refresh, and its real-time part scans the raw reads the rollup exists to avoid), a read arriving late for an
-- old minute is counted (a refresh policy's window would leave it out), there is one schema and one code path to
-- test on either edition, and the cost is one small upsert per batch (`stocktrace bench ingest`).
--
-- A read counts once: a redelivered batch adds only the reads its insert actually stored. The lag is
-- received_at - read_at in seconds (negative when a device's clock runs ahead); sum and maximum are kept so that
-- the mean and maximum over any range are exact.
--
-- Three grains because a month is 43,200 minutes per antenna: a panel reads the coarsest table whose grain divides
-- its bucket ($__interval; dashboards/rollups.py), so a month's panel reads a row per antenna and half hour, and
-- no panel reads more than a few days of minutes or a few weeks of five minutes.
create table read_counts (
    minute    timestamptz      not null,   -- read_at, to the minute (time_bucket)
    device_id text             not null,
    antenna   smallint         not null,
    reads     bigint           not null,
    lag_sum_s double precision not null,
    lag_max_s double precision not null,
    primary key (device_id, antenna, minute)
);
create table read_counts_5m (like read_counts including constraints including indexes);
create table read_counts_30m (like read_counts including constraints including indexes);
comment on column read_counts_5m.minute is 'read_at, to five minutes (time_bucket)';
comment on column read_counts_30m.minute is 'read_at, to the half hour (time_bucket)';

-- Chunks of a day and a week: a day is a row per antenna and minute. The service drops expired chunks as it does
-- the raw tables' (stocktrace/retention.py). The primary key is the only index: panels scan their range's chunks.
select create_hypertable('read_counts', by_range('minute', interval '1 day'), create_default_indexes => false);
select create_hypertable('read_counts_5m', by_range('minute', interval '7 days'), create_default_indexes => false);
select create_hypertable('read_counts_30m', by_range('minute', interval '7 days'), create_default_indexes => false);

-- A database upgraded from a version without the rollup starts with the counts of the reads it already holds.
insert into read_counts (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
select time_bucket('1 minute', read_at), device_id, antenna, count(*),
       sum(date_part('epoch', received_at - read_at)), max(date_part('epoch', received_at - read_at))
from rfid_reads
group by 1, 2, 3;
insert into read_counts_5m (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
select time_bucket('5 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
from read_counts
group by 1, 2, 3;
insert into read_counts_30m (minute, device_id, antenna, reads, lag_sum_s, lag_max_s)
select time_bucket('30 minutes', minute), device_id, antenna, sum(reads), sum(lag_sum_s), max(lag_max_s)
from read_counts_5m
group by 1, 2, 3;
