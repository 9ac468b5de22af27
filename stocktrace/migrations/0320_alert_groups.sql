-- Alert groups, as Alertmanager's aggregation groups (dispatch/dispatch.go), kept in the database so that a
-- restart or a second delivery worker carries on where the last one stopped (alerts/groups.py).
--
-- A group is one receiver and one group key (the route's key and the values of its group_by labels). The
-- evaluator records each change it tells into the groups its routes choose, in its own transaction, and sets
-- when the group is told next (flush_at): group_wait after the group appeared, then no sooner than
-- group_interval after its last message. Whoever finds a group due (the evaluator itself when it is due at
-- once, else a delivery worker) locks it (FOR UPDATE SKIP LOCKED), renders one message with every alert of the
-- group into the outbox (deliveries, 0310) and clears what it told, in one transaction: a message is made
-- once, and a crash before the commit leaves the group due as it was.

create table alert_groups (
    receiver          text             not null,
    group_key         text             not null,       -- Alertmanager's groupKey: route key and group labels
    group_labels      jsonb            not null,
    group_interval_s  double precision not null check (group_interval_s >= 0),
    repeat_interval_s double precision check (repeat_interval_s > 0),   -- null: the rules decide repeats
    created_at        timestamptz      not null,
    flush_at          timestamptz,                     -- when the next message is due; null: nothing to tell
    notified_at       timestamptz,                     -- when the last message was made
    primary key (receiver, group_key)
);
create index alert_groups_due on alert_groups (flush_at) where flush_at is not null;

-- The alerts of a group, as the evaluator last told them. `changed`: told since the group's last message;
-- `told`: the receiver has been sent this alert as firing (so its resolve is worth sending). A resolved alert
-- leaves its group once the message telling so is made; an empty group is deleted.
create table alert_group_alerts (
    receiver     text    not null,
    group_key    text    not null,
    fingerprint  text    not null,
    alert        jsonb   not null,
    firing       boolean not null,
    changed      boolean not null,
    told         boolean not null,
    primary key (receiver, group_key, fingerprint),
    foreign key (receiver, group_key) references alert_groups (receiver, group_key) on delete cascade
);
create index alert_group_alerts_by_fingerprint on alert_group_alerts (fingerprint);

-- Ingest's commits wake the alert evaluator (alerts/wakeup.py), so that a reading that breaches a rule is
-- judged at once rather than at the next tick. A statement trigger fires once per INSERT or COPY (on the
-- hypertable too), and PostgreSQL folds the same notification within one transaction into one: a batch
-- costs one notification, sent when it commits.
create function alerts_wake_evaluator() returns trigger language plpgsql as $$
begin
    perform pg_notify('stocktrace_new_data', '');
    return null;
end
$$;
create trigger telemetry_wakes_alerts after insert on telemetry
    for each statement execute function alerts_wake_evaluator();
create trigger device_events_wakes_alerts after insert on device_events
    for each statement execute function alerts_wake_evaluator();
