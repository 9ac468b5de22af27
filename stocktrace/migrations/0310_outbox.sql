-- The delivery outbox: every notification stocktrace owes a receiver, written in the same transaction as the
-- alert change that caused it (alerts/outbox.py enqueue), and worked off by the delivery worker
-- (alerts/delivery.py). Nothing is sent from inside the evaluator's transaction, and nothing it committed can
-- be lost: until a delivery is 'sent' or 'failed' it stays 'pending' here, across restarts.
--
-- Order: each receiver has a lane whose counter numbers its deliveries 1, 2, 3 ... (seq). enqueue bumps the
-- counter with the row lock held until the enqueuing transaction commits, so seq order is commit order. The
-- worker only ever takes the head of a lane (its lowest pending seq), locked FOR UPDATE SKIP LOCKED and held
-- while sending: a second worker skips a head that is being sent and, since the next delivery is not a head
-- until this one is sent or failed, cannot overtake it. Lanes are independent: a receiver that is down holds
-- back only its own deliveries.

create table delivery_lanes (
    receiver text primary key,
    last_seq bigint not null default 0
);

create table deliveries (
    id bigint generated always as identity primary key,
    receiver text not null,
    seq bigint not null,
    kind text not null,                 -- webhook | slack | teams | pagerduty | grafana
    group_key text not null,            -- Alertmanager's groupKey: route key and group labels
    status text not null check (status in ('firing', 'resolved')),
    fingerprints text[] not null,       -- the alerts in it (alerts/model.py fingerprint)
    payload json not null,              -- the rendered body; json keeps the text as written, so every attempt
                                        -- sends the same bytes
    idempotency_key uuid not null default gen_random_uuid(),
    state text not null default 'pending' check (state in ('pending', 'sent', 'failed')),
    created_at timestamptz not null default now(),
    due_at timestamptz not null default now(),
    retry_since timestamptz not null default now(),    -- start of the current retry budget (max_age)
    budget_attempts integer not null default 0,        -- attempts since retry_since (backoff, max_attempts)
    attempts integer not null default 0,               -- every attempt, ever
    last_status_code integer,
    last_error text,
    sent_at timestamptz,
    failed_at timestamptz,
    unique (receiver, seq)
);

-- The heads: a lane's lowest pending seq is one index probe.
create index deliveries_pending on deliveries (receiver, seq) where state = 'pending';
create index deliveries_by_state on deliveries (state, id);
create index deliveries_by_fingerprint on deliveries using gin (fingerprints);

create table delivery_attempts (
    delivery_id bigint not null references deliveries (id) on delete cascade,
    attempt integer not null,
    started_at timestamptz not null,
    duration_ms double precision not null,
    status_code integer,                -- null when no response came (timeout, refused connection)
    outcome text not null check (outcome in ('sent', 'retry', 'failed')),
    error text,
    retry_at timestamptz,               -- when the next attempt is due, for outcome 'retry'
    primary key (delivery_id, attempt)
);

-- What a receiver calls an alert, kept from one delivery for the next (a Grafana annotation's id, updated
-- when the alert resolves).
create table delivery_references (
    receiver text not null,
    fingerprint text not null,
    reference jsonb not null,
    updated_at timestamptz not null default now(),
    primary key (receiver, fingerprint)
);
