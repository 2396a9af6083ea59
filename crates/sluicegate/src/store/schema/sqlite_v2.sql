-- Sluicegate tracking schema, version 2 (SQLite): health thresholds and the sub-batch tuner's
-- target per migration; batch-size changes logged as `resize` events. SQLite cannot alter a
-- CHECK constraint, so the migration log is rebuilt (inside the setup transaction).

ALTER TABLE sluicegate_migrations ADD COLUMN health_settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sluicegate_migrations ADD COLUMN target_sub_batch_ms INTEGER NOT NULL DEFAULT 100
    CHECK (target_sub_batch_ms >= 0);

CREATE TABLE sluicegate_migration_transition_logs_v2 (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id      INTEGER NOT NULL REFERENCES sluicegate_migrations (id) ON DELETE CASCADE,
    previous_status   TEXT,
    next_status       TEXT    NOT NULL,
    event             TEXT    NOT NULL,
    reason            TEXT,
    actor             TEXT,
    exception_class   TEXT CHECK (length(exception_class) <= 100),
    exception_message TEXT CHECK (length(exception_message) <= 1000),
    created_at        TEXT    NOT NULL,
    CONSTRAINT migration_transition_logs_status_check
        CHECK ((previous_status IS NULL OR previous_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled'))
           AND next_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled')),
    CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
INSERT INTO sluicegate_migration_transition_logs_v2 SELECT * FROM sluicegate_migration_transition_logs;
DROP TABLE sluicegate_migration_transition_logs;
ALTER TABLE sluicegate_migration_transition_logs_v2 RENAME TO sluicegate_migration_transition_logs;
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);
