-- Sluicegate tracking schema, version 6 (PostgreSQL): a hold row names the indicator that
-- stopped the migration in a column of its own, so that what ends the hold, the dashboard and
-- `/metrics` read it as a value instead of parsing the reason's text. Only `hold` rows carry
-- one. Hold rows written before v6 get theirs from the reason they were written with
-- (`<indicator>: <reading> (<threshold>)`), where it names a known indicator.

ALTER TABLE {s}.migration_transition_logs
    ADD COLUMN indicator text,
    ADD CONSTRAINT migration_transition_logs_indicator_check
        CHECK (indicator IS NULL OR (event = 'hold' AND indicator IN ('autovacuum',
            'wal_archive_backlog', 'wal_rate', 'replica_lag', 'long_transactions', 'lock_waits',
            'probe', 'sub_batch_latency')));
UPDATE {s}.migration_transition_logs SET indicator = split_part(reason, ':', 1)
WHERE event = 'hold' AND split_part(reason, ':', 1) IN ('autovacuum', 'wal_archive_backlog',
    'wal_rate', 'replica_lag', 'long_transactions', 'lock_waits', 'probe', 'sub_batch_latency');
