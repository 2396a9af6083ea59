-- Sluicegate tracking schema, version 3 (SQLite): short, re-checked holds. `held_since` marks
-- a hold in progress (re-checks extend `on_hold_until` without a log row); its end is logged
-- as a `release` event. A throttle (longer pauses as a limit nears) is a reading kept on the
-- migration, logged as a `throttle` event only when it changes. SQLite cannot alter a CHECK
-- constraint, so the migration log is rebuilt again (inside the setup transaction).

ALTER TABLE sluicegate_migrations ADD COLUMN held_since TEXT;
ALTER TABLE sluicegate_migrations ADD COLUMN throttle_pause_ms INTEGER NOT NULL DEFAULT 0
    CHECK (throttle_pause_ms >= 0);
ALTER TABLE sluicegate_migrations ADD COLUMN throttle_reason TEXT;

CREATE TABLE sluicegate_migration_transition_logs_v3 (
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
                         'finish', 'resize', 'release', 'throttle')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
INSERT INTO sluicegate_migration_transition_logs_v3 SELECT * FROM sluicegate_migration_transition_logs;
DROP TABLE sluicegate_migration_transition_logs;
ALTER TABLE sluicegate_migration_transition_logs_v3 RENAME TO sluicegate_migration_transition_logs;
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);
