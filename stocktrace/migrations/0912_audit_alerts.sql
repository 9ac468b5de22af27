-- Acknowledgements are the only part of an alert that people write (POST/DELETE /api/v1/alerts/{fp}/ack);
-- the evaluator rewrites the rest of the row on every tick, which is not worth an entry. Retrying a failed
-- delivery (POST /api/v1/deliveries/{id}/retry) is an operator's decision too.
create trigger audit_ack after update of acknowledged_at, acknowledged_by, ack_comment on alerts
    for each row when (
        old.acknowledged_by is distinct from new.acknowledged_by or old.ack_comment is distinct from new.ack_comment
    )
    execute function audit_record('{fingerprint}', '{}', '{}');
create trigger audit_retry after update of retry_since on deliveries
    for each row when (old.retry_since is distinct from new.retry_since)
    execute function audit_record('{id}', '{payload}', '{}');
