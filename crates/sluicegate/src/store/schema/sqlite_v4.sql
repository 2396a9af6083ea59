-- Sluicegate tracking schema, version 4 (SQLite): any key. A migration walks a key of one or
-- more columns (`key_columns`: [{"name": "id", "type": "bigint"}, ...]); key values are JSON
-- arrays, one element per column (integers as numbers, text as strings): `min_cursor` and
-- `max_cursor` bound the migration and each job, `next_cursor` (with `next_inclusive`) is
-- where the migration's next job starts, a job's `cursor` is the last key whose sub-batch
-- committed. Integer migrations queued before keep running: their integer columns become
-- one-element arrays. SQLite cannot drop columns named in a CHECK, so `migrations` and `jobs`
-- are rebuilt; setup runs this with foreign keys off (a parent's DROP TABLE would otherwise
-- cascade to its children) and checks them after. `scope` (a condition) makes the walk count
-- only the rows that match it (GitLab's scope_to). Names and definitions are unique among live
-- migrations only: a finished or cancelled one's may be queued again (a new id; the old one
-- stays readable by id). `sub_batch_ceiling`: an explicit sub-batch size the tuner never
-- exceeds. The migration log is rebuilt once more for its new event, `set`.

CREATE TABLE sluicegate_migrations_v4 (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    name                 TEXT    NOT NULL,
    job_kind             TEXT    NOT NULL,
    table_name           TEXT    NOT NULL,
    column_name          TEXT    NOT NULL,
    key_columns          TEXT    NOT NULL,
    job_arguments        TEXT    NOT NULL DEFAULT '{}',
    min_cursor           TEXT    NOT NULL,
    max_cursor           TEXT    NOT NULL,
    next_cursor          TEXT,
    next_inclusive       INTEGER NOT NULL DEFAULT 1,
    batch_size           INTEGER NOT NULL,
    sub_batch_size       INTEGER NOT NULL,
    max_batch_size       INTEGER,
    pause_ms             INTEGER NOT NULL DEFAULT 0,
    interval_ms          INTEGER NOT NULL,
    statement_timeout_ms INTEGER NOT NULL,
    lock_timeout_ms      INTEGER NOT NULL,
    status               TEXT    NOT NULL,
    total_tuple_count    INTEGER,
    on_hold_until        TEXT,
    last_job_started_at  TEXT,
    started_at           TEXT,
    finished_at          TEXT,
    created_at           TEXT    NOT NULL,
    updated_at           TEXT    NOT NULL,
    health_settings      TEXT    NOT NULL DEFAULT '{}',
    target_sub_batch_ms  INTEGER NOT NULL DEFAULT 100 CHECK (target_sub_batch_ms >= 0),
    held_since           TEXT,
    throttle_pause_ms    INTEGER NOT NULL DEFAULT 0 CHECK (throttle_pause_ms >= 0),
    throttle_reason      TEXT,
    scope                TEXT,
    sub_batch_ceiling    INTEGER CHECK (sub_batch_ceiling IS NULL OR sub_batch_ceiling > 0),
    CONSTRAINT migrations_status_check
        CHECK (status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled')),
    CONSTRAINT migrations_key_check CHECK (
        json_type(key_columns) = 'array' AND json_array_length(key_columns) > 0
        AND json_type(min_cursor) = 'array'
        AND json_array_length(min_cursor) = json_array_length(key_columns)
        AND json_type(max_cursor) = 'array'
        AND json_array_length(max_cursor) = json_array_length(key_columns)
        AND (next_cursor IS NULL OR (json_type(next_cursor) = 'array'
             AND json_array_length(next_cursor) = json_array_length(key_columns)))),
    CONSTRAINT migrations_batch_size_check
        CHECK (batch_size > 0 AND sub_batch_size > 0 AND sub_batch_size <= batch_size),
    CONSTRAINT migrations_max_batch_size_check
        CHECK (max_batch_size IS NULL OR max_batch_size >= sub_batch_size),
    CONSTRAINT migrations_timing_check
        CHECK (pause_ms >= 0 AND interval_ms >= 0 AND statement_timeout_ms > 0 AND lock_timeout_ms > 0),
    CONSTRAINT migrations_finished_at_check
        CHECK ((status IN ('finished', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
INSERT INTO sluicegate_migrations_v4 (id, name, job_kind, table_name, column_name, key_columns,
    job_arguments, min_cursor, max_cursor, next_cursor, next_inclusive, batch_size, sub_batch_size,
    max_batch_size, pause_ms, interval_ms, statement_timeout_ms, lock_timeout_ms, status,
    total_tuple_count, on_hold_until, last_job_started_at, started_at, finished_at, created_at,
    updated_at, health_settings, target_sub_batch_ms, held_since, throttle_pause_ms, throttle_reason)
SELECT id, name, job_kind, table_name, column_name,
    json_array(json_object('name', column_name, 'type', 'bigint')),
    job_arguments, json_array(min_value), json_array(max_value),
    CASE WHEN next_min_value IS NOT NULL THEN json_array(next_min_value) END, 1,
    batch_size, sub_batch_size, max_batch_size, pause_ms, interval_ms, statement_timeout_ms,
    lock_timeout_ms, status, total_tuple_count, on_hold_until, last_job_started_at, started_at,
    finished_at, created_at, updated_at, health_settings, target_sub_batch_ms, held_since,
    throttle_pause_ms, throttle_reason
FROM sluicegate_migrations;
DROP TABLE sluicegate_migrations;
ALTER TABLE sluicegate_migrations_v4 RENAME TO sluicegate_migrations;
CREATE UNIQUE INDEX sluicegate_migrations_configuration_key ON sluicegate_migrations
    (job_kind, table_name, key_columns, job_arguments, coalesce(scope, ''))
    WHERE status NOT IN ('finished', 'cancelled');
CREATE UNIQUE INDEX sluicegate_migrations_name_key ON sluicegate_migrations (name)
    WHERE status NOT IN ('finished', 'cancelled');
CREATE INDEX sluicegate_migrations_name_idx ON sluicegate_migrations (name, id);

CREATE TABLE sluicegate_jobs_v4 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id     INTEGER NOT NULL REFERENCES sluicegate_migrations (id) ON DELETE CASCADE,
    min_cursor       TEXT    NOT NULL,
    max_cursor       TEXT    NOT NULL,
    batch_size       INTEGER NOT NULL,
    sub_batch_size   INTEGER NOT NULL,
    pause_ms         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    started_at       TEXT,
    finished_at      TEXT,
    rows_affected    INTEGER NOT NULL DEFAULT 0,
    cursor           TEXT,
    metrics          TEXT    NOT NULL DEFAULT '{}',
    worker           TEXT,
    lease_expires_at TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'running', 'failed', 'succeeded')),
    CONSTRAINT jobs_key_check CHECK (
        json_type(min_cursor) = 'array' AND json_type(max_cursor) = 'array'
        AND json_array_length(min_cursor) = json_array_length(max_cursor)
        AND (cursor IS NULL OR (json_type(cursor) = 'array'
             AND json_array_length(cursor) = json_array_length(min_cursor)))),
    CONSTRAINT jobs_batch_size_check CHECK (batch_size > 0 AND sub_batch_size > 0),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND rows_affected >= 0),
    CONSTRAINT jobs_finished_at_check
        CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_lease_check CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);
INSERT INTO sluicegate_jobs_v4 (id, migration_id, min_cursor, max_cursor, batch_size,
    sub_batch_size, pause_ms, status, attempts, started_at, finished_at, rows_affected, cursor,
    metrics, worker, lease_expires_at, created_at, updated_at)
SELECT id, migration_id, json_array(min_value), json_array(max_value), batch_size,
    sub_batch_size, pause_ms, status, attempts, started_at, finished_at, rows_affected,
    CASE WHEN cursor_value IS NOT NULL THEN json_array(cursor_value) END,
    metrics, worker, lease_expires_at, created_at, updated_at
FROM sluicegate_jobs;
DROP TABLE sluicegate_jobs;
ALTER TABLE sluicegate_jobs_v4 RENAME TO sluicegate_jobs;
CREATE INDEX sluicegate_jobs_migration_id_idx ON sluicegate_jobs (migration_id, id);
CREATE INDEX sluicegate_jobs_migration_status_idx ON sluicegate_jobs (migration_id, status, id);

CREATE TABLE sluicegate_migration_transition_logs_v4 (
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
                         'finish', 'resize', 'release', 'throttle', 'set')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
INSERT INTO sluicegate_migration_transition_logs_v4 SELECT * FROM sluicegate_migration_transition_logs;
DROP TABLE sluicegate_migration_transition_logs;
ALTER TABLE sluicegate_migration_transition_logs_v4 RENAME TO sluicegate_migration_transition_logs;
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);
