-- Sluicegate tracking schema, version 7 (SQLite): lanes (see the PostgreSQL script of this
-- version). SQLite has no Citus tables, so it never creates lanes; the tables are the same on
-- both engines so that one store contract holds for both. The log's event CHECK changes,
-- which SQLite does by rebuilding the table.

ALTER TABLE sluicegate_migrations ADD COLUMN citus TEXT
    CHECK (citus IS NULL OR citus IN ('distributed', 'reference', 'local'));

CREATE TABLE sluicegate_migration_lanes (
    migration_id   INTEGER NOT NULL REFERENCES sluicegate_migrations (id) ON DELETE CASCADE,
    lane           INTEGER NOT NULL CHECK (lane >= 0),
    relation       TEXT    NOT NULL,
    shard_id       INTEGER NOT NULL,
    node           TEXT    NOT NULL,
    next_cursor    TEXT,
    next_inclusive INTEGER NOT NULL DEFAULT 1,
    on_hold_until  TEXT,
    hold_reason    TEXT,
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (migration_id, lane),
    CHECK ((on_hold_until IS NULL) = (hold_reason IS NULL))
);

ALTER TABLE sluicegate_jobs ADD COLUMN lane INTEGER;
CREATE INDEX sluicegate_jobs_migration_lane_idx ON sluicegate_jobs (migration_id, lane, status)
    WHERE lane IS NOT NULL;

CREATE TABLE sluicegate_migration_transition_logs_v7 (
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
                         'lane_release', 'lane_move')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
INSERT INTO sluicegate_migration_transition_logs_v7 SELECT * FROM sluicegate_migration_transition_logs;
DROP TABLE sluicegate_migration_transition_logs;
ALTER TABLE sluicegate_migration_transition_logs_v7 RENAME TO sluicegate_migration_transition_logs;
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);
