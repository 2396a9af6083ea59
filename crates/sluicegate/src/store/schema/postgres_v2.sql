-- Sluicegate tracking schema, version 2 (PostgreSQL): health thresholds and the sub-batch
-- tuner's target per migration; batch-size changes logged as `resize` events.

ALTER TABLE {s}.migrations
    ADD COLUMN health_settings jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN target_sub_batch_ms bigint NOT NULL DEFAULT 100,
    ADD CONSTRAINT migrations_target_sub_batch_check CHECK (target_sub_batch_ms >= 0);

ALTER TABLE {s}.migration_transition_logs
    DROP CONSTRAINT migration_transition_logs_event_check,
    ADD CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize'));
