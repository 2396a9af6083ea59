-- Sluicegate tracking schema, version 1 (PostgreSQL). {s} is the quoted tracking schema.

CREATE TABLE {s}.migrations (
    id                   bigserial PRIMARY KEY,
    name                 text        NOT NULL,
    job_kind             text        NOT NULL,
    table_name           text        NOT NULL,
    column_name          text        NOT NULL,
    job_arguments        jsonb       NOT NULL DEFAULT '{}',
    min_value            bigint      NOT NULL,
    max_value            bigint      NOT NULL,
    next_min_value       bigint,
    batch_size           bigint      NOT NULL,
    sub_batch_size       bigint      NOT NULL,
    max_batch_size       bigint,
    pause_ms             bigint      NOT NULL DEFAULT 0,
    interval_ms          bigint      NOT NULL,
    statement_timeout_ms bigint      NOT NULL,
    lock_timeout_ms      bigint      NOT NULL,
    status               text        NOT NULL,
    total_tuple_count    bigint,
    on_hold_until        timestamptz,
    last_job_started_at  timestamptz,
    started_at           timestamptz,
    finished_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
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

CREATE TABLE {s}.jobs (
    id               bigserial PRIMARY KEY,
    migration_id     bigint      NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    min_value        bigint      NOT NULL,
    max_value        bigint      NOT NULL,
    batch_size       bigint      NOT NULL,
    sub_batch_size   bigint      NOT NULL,
    pause_ms         bigint      NOT NULL DEFAULT 0,
    status           text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    rows_affected    bigint      NOT NULL DEFAULT 0,
    cursor_value     bigint,
    metrics          jsonb       NOT NULL DEFAULT '{}',
    worker           text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'running', 'failed', 'succeeded')),
    CONSTRAINT jobs_range_check CHECK (min_value <= max_value),
    CONSTRAINT jobs_cursor_check CHECK (cursor_value IS NULL OR cursor_value BETWEEN min_value AND max_value),
    CONSTRAINT jobs_batch_size_check CHECK (batch_size > 0 AND sub_batch_size > 0),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND rows_affected >= 0),
    CONSTRAINT jobs_finished_at_check
        CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_lease_check CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);
-- "last job of M" and "jobs of M"; "retriable jobs of M" and "jobs of M by status".
CREATE INDEX jobs_migration_id_idx ON {s}.jobs (migration_id, id);
CREATE INDEX jobs_migration_status_idx ON {s}.jobs (migration_id, status, id);

CREATE TABLE {s}.job_transition_logs (
    id                bigserial,
    job_id            bigint        NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
    migration_id      bigint        NOT NULL,
    previous_status   text          NOT NULL,
    next_status       text          NOT NULL,
    exception_class   varchar(100),
    exception_message varchar(1000),
    worker            text,
    created_at        timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    CONSTRAINT job_transition_logs_status_check
        CHECK (previous_status IN ('pending', 'running', 'failed', 'succeeded')
           AND next_status IN ('pending', 'running', 'failed', 'succeeded'))
) PARTITION BY RANGE (created_at);
CREATE INDEX job_transition_logs_job_idx ON {s}.job_transition_logs (job_id, created_at);
CREATE INDEX job_transition_logs_migration_idx ON {s}.job_transition_logs (migration_id, created_at);

CREATE TABLE {s}.migration_transition_logs (
    id                bigserial PRIMARY KEY,
    migration_id      bigint      NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    previous_status   text,
    next_status       text        NOT NULL,
    event             text        NOT NULL,
    reason            text,
    actor             text,
    exception_class   varchar(100),
    exception_message varchar(1000),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT migration_transition_logs_status_check
        CHECK ((previous_status IS NULL OR previous_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled'))
           AND next_status IN ('paused', 'active', 'finalizing', 'finished', 'failed', 'cancelled')),
    CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel', 'finish')),
    CONSTRAINT migration_transition_logs_queue_check
        CHECK ((event = 'queue') = (previous_status IS NULL))
);
CREATE INDEX migration_transition_logs_migration_idx
    ON {s}.migration_transition_logs (migration_id, created_at);

-- One row per table being migrated: the migration whose workers hold it, until the lease
-- runs out. Keeps two migrations of one table from ever running at once.
CREATE TABLE {s}.table_leases (
    table_name   text        PRIMARY KEY,
    migration_id bigint      NOT NULL,
    worker       text        NOT NULL,
    expires_at   timestamptz NOT NULL
);
