-- Alerts: what the evaluator (alerts/evaluator.py) decided, the silences people set, and what the rules keep
-- between ticks. Delivery (the outbox, 0310+) reads alerts; the API (alerts/api.py) lists, acknowledges and
-- silences them.

-- One row per rule and subject: the fingerprint is the hash of the labels (alerts/model.py), which always carry
-- alertname, severity and subject. A row is never deleted: a resolved alert that becomes active again is the
-- same row starting a new episode (starts_at moves, the acknowledgement and the notification marks are cleared).
--
--   starts_at      when the condition began (the first out-of-range reading, the moment a device fell silent):
--                  Prometheus' activeAt, which is what Alertmanager receivers get as startsAt;
--   fires_at       when it fired or will fire (starts_at + the rule's delay, or when a budget ran out);
--   ends_at        when the condition ended (resolved alerts only);
--   notified_at    when the current episode was last handed to delivery as firing (null: not yet);
--   inhibited_by   fingerprints of the device-offline alerts that hold this one back;
--   silenced_by    ids of the silences that match it;
--   depends_on     the devices whose being offline holds it back (any of them, or with needs_all all of them);
--   repeat_s       how long after notified_at a still-firing, unacknowledged alert is told again.
-- The evaluator owns every column but the acknowledgement ones, which only the API writes.
create table alerts (
    fingerprint      text        primary key,
    alertname        text        not null,
    subject          text        not null,
    severity         text        not null check (severity in ('critical', 'warning', 'info')),
    labels           jsonb       not null check (jsonb_typeof(labels) = 'object'),
    annotations      jsonb       not null check (jsonb_typeof(annotations) = 'object'),
    group_key        text        not null,
    state            text        not null check (state in ('pending', 'firing', 'resolved')),
    starts_at        timestamptz not null,
    fires_at         timestamptz,
    ends_at          timestamptz,
    inhibited_by     text[]      not null default '{}',
    silenced_by      bigint[]    not null default '{}',
    depends_on       text[]      not null default '{}',
    needs_all        boolean     not null default false,
    repeat_s         real        not null default 14400 check (repeat_s > 0),
    notified_at      timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    ack_comment      text,
    evaluated_at     timestamptz not null,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    check ((state = 'resolved') = (ends_at is not null)),
    check ((acknowledged_at is null) = (acknowledged_by is null))
);
create index alerts_open on alerts (alertname) where state <> 'resolved';
create index alerts_ended on alerts (alertname, ends_at) where state = 'resolved';
create index alerts_listing on alerts (state, severity, starts_at desc);
create index alerts_labels on alerts using gin (labels jsonb_path_ops);

-- Silences, as Alertmanager's: matchers on labels (name, op one of = != =~ !~, value), a time range, who and
-- why. Expiring one (DELETE in the API) sets ends_at to now; it stays listed.
create table silences (
    id          bigint      generated always as identity primary key,
    matchers    jsonb       not null check (jsonb_typeof(matchers) = 'array' and jsonb_array_length(matchers) > 0),
    starts_at   timestamptz not null,
    ends_at     timestamptz not null,
    created_by  text        not null check (created_by <> ''),
    comment     text        not null default '',
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    check (ends_at >= starts_at)
);
create index silences_active on silences (ends_at);

-- When each rule last ran (rules with an interval longer than the tick run only when it is due), how long it
-- took and how many subjects it judged: the evaluation's own health, also shown by `stocktrace bench alerts`.
create table alert_rule_runs (
    rule          text        primary key,
    evaluated_at  timestamptz not null,
    duration_ms   real        not null,
    subjects      integer     not null,
    findings      integer     not null
);

-- Inventory variance is judged only after a complete read cycle of the location (alerts/rules_inventory.py):
-- the last judgement per location, and what it found per GTIN. The alert follows the last judgement until the
-- next complete cycle, so a half-read zone never raises (or clears) a variance.
create table inventory_judgements (
    location_id  text        primary key,
    judged_at    timestamptz not null,
    basis        text        not null check (basis in ('read_cycle', 'cycle_count')),
    count_id     bigint
);

create table inventory_judgement_lines (
    location_id     text    not null references inventory_judgements (location_id) on delete cascade,
    gtin            text    not null,
    observed_units  bigint  not null,
    book_units      bigint  not null,
    book_as_of      timestamptz,
    primary key (location_id, gtin)
);
