-- Sluicegate tracking schema, version 8 (SQLite): a migration keeps the definition it was
-- queued from, in canonical form (every setting spelled out, defaults included, as JSON text
-- with a fixed order of fields), so that `apply` and `queue --if-not-exists` decide whether a
-- definition is already queued by comparing it with what the engine stored, never by reading
-- the user's text again. Migrations queued before v8 have none (NULL).
-- It also keeps the migrations it runs after (`--after`): their ids, a JSON array, resolved
-- from their names when it was queued (each queued before it, so they never form a cycle). A
-- claim passes over a migration while any of them is not finished.

ALTER TABLE sluicegate_migrations ADD COLUMN definition TEXT;
ALTER TABLE sluicegate_migrations ADD COLUMN after_ids TEXT NOT NULL DEFAULT '[]'
    CHECK (json_type(after_ids) = 'array');

-- `--verify COND`: the condition every row of its range must meet after its last job; the
-- check is logged as a `verify` row (rows checked, violations, sample keys). SQLite cannot
-- alter a CHECK constraint, so the migration log is rebuilt (inside the setup transaction).
ALTER TABLE sluicegate_migrations ADD COLUMN verify TEXT;
CREATE TABLE sluicegate_migration_transition_logs_v8 (
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
    indicator         TEXT
        CHECK (indicator IS NULL OR (event = 'hold' AND indicator IN ('autovacuum',
            'wal_archive_backlog', 'wal_rate', 'replica_lag', 'long_transactions', 'lock_waits',
            'probe', 'sub_batch_latency'))),
    CONSTRAINT migration_transition_logs_status_check
        CHECK ((previous_status IS NULL OR previous_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled'))
           AND next_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled')),
    CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize', 'release', 'throttle', 'set', 'lane_hold',
                         'lane_release', 'lane_move', 'verify')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
INSERT INTO sluicegate_migration_transition_logs_v8 (id, migration_id, previous_status,
    next_status, event, reason, actor, exception_class, exception_message, created_at, indicator)
SELECT id, migration_id, previous_status, next_status, event, reason, actor, exception_class,
    exception_message, created_at, indicator FROM sluicegate_migration_transition_logs;
DROP TABLE sluicegate_migration_transition_logs;
ALTER TABLE sluicegate_migration_transition_logs_v8 RENAME TO sluicegate_migration_transition_logs;
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);
