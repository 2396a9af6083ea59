-- Sluicegate tracking schema, version 1 (SQLite). Times are UTC text
-- 'YYYY-MM-DDTHH:MM:SS.ffffffZ' written by Sluicegate, so they compare as text.

CREATE TABLE sluicegate_migrations (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    name                 TEXT    NOT NULL,
    job_kind             TEXT    NOT NULL,
    table_name           TEXT    NOT NULL,
    column_name          TEXT    NOT NULL,
    job_arguments        TEXT    NOT NULL DEFAULT '{}',
    min_value            INTEGER NOT NULL,
    max_value            INTEGER NOT NULL,
    next_min_value       INTEGER,
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
    CONSTRAINT migrations_name_key UNIQUE (name),
    CONSTRAINT migrations_configuration_key UNIQUE (job_kind, table_name, column_name, job_arguments),
    CONSTRAINT migrations_status_check
        CHECK (status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled')),
    CONSTRAINT migrations_range_check CHECK (min_value <= max_value),
    CONSTRAINT migrations_next_min_check
        CHECK (next_min_value IS NULL OR next_min_value BETWEEN min_value AND max_value),
    CONSTRAINT migrations_batch_size_check
        CHECK (batch_size > 0 AND sub_batch_size > 0 AND sub_batch_size <= batch_size),
    CONSTRAINT migrations_max_batch_size_check
        CHECK (max_batch_size IS NULL OR max_batch_size >= sub_batch_size),
    CONSTRAINT migrations_timing_check
        CHECK (pause_ms >= 0 AND interval_ms >= 0 AND statement_timeout_ms > 0 AND lock_timeout_ms > 0),
    CONSTRAINT migrations_finished_at_check
        CHECK ((status IN ('finished', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

CREATE TABLE sluicegate_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id     INTEGER NOT NULL REFERENCES sluicegate_migrations (id) ON DELETE CASCADE,
    min_value        INTEGER NOT NULL,
    max_value        INTEGER NOT NULL,
    batch_size       INTEGER NOT NULL,
    sub_batch_size   INTEGER NOT NULL,
    pause_ms         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    started_at       TEXT,
    finished_at      TEXT,
    rows_affected    INTEGER NOT NULL DEFAULT 0,
    cursor_value     INTEGER,
    metrics          TEXT    NOT NULL DEFAULT '{}',
    worker           TEXT,
    lease_expires_at TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'running', 'failed', 'succeeded')),
    CONSTRAINT jobs_range_check CHECK (min_value <= max_value),
    CONSTRAINT jobs_cursor_check CHECK (cursor_value IS NULL OR cursor_value BETWEEN min_value AND max_value),
    CONSTRAINT jobs_batch_size_check CHECK (batch_size > 0 AND sub_batch_size > 0),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND rows_affected >= 0),
    CONSTRAINT jobs_finished_at_check
        CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_lease_check CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);
CREATE INDEX sluicegate_jobs_migration_id_idx ON sluicegate_jobs (migration_id, id);
CREATE INDEX sluicegate_jobs_migration_status_idx ON sluicegate_jobs (migration_id, status, id);

CREATE TABLE sluicegate_job_transition_logs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id            INTEGER NOT NULL REFERENCES sluicegate_jobs (id) ON DELETE CASCADE,
    migration_id      INTEGER NOT NULL,
    previous_status   TEXT    NOT NULL,
    next_status       TEXT    NOT NULL,
    exception_class   TEXT CHECK (length(exception_class) <= 100),
    exception_message TEXT CHECK (length(exception_message) <= 1000),
    worker            TEXT,
    created_at        TEXT    NOT NULL,
    CONSTRAINT job_transition_logs_status_check
        CHECK (previous_status IN ('pending', 'running', 'failed', 'succeeded')
           AND next_status IN ('pending', 'running', 'failed', 'succeeded'))
);
CREATE INDEX sluicegate_job_transition_logs_job_idx ON sluicegate_job_transition_logs (job_id, created_at);
CREATE INDEX sluicegate_job_transition_logs_migration_idx
    ON sluicegate_job_transition_logs (migration_id, created_at);

CREATE TABLE sluicegate_migration_transition_logs (
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
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel', 'finish')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
CREATE INDEX sluicegate_migration_transition_logs_migration_idx
    ON sluicegate_migration_transition_logs (migration_id, created_at);

CREATE TABLE sluicegate_table_leases (
    table_name   TEXT    PRIMARY KEY,
    migration_id INTEGER NOT NULL,
    worker       TEXT    NOT NULL,
    expires_at   TEXT    NOT NULL
);
