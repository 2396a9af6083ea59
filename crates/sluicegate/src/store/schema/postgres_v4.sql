-- Sluicegate tracking schema, version 4 (PostgreSQL): any key. A migration walks a key of one
-- or more columns (`key_columns`: [{"name": "id", "type": "bigint"}, ...]); key values are
-- typed JSON arrays, one element per column (integers as numbers, other types as their text):
-- `min_cursor`/`max_cursor` bound the migration and each job, `next_cursor` (with
-- `next_inclusive`) is where the migration's next job starts, a job's `cursor` is the last key
-- whose sub-batch committed. Integer migrations queued before keep running: their bigint
-- columns become one-element arrays. The bigint CHECKs (min <= max) cannot be written over
-- JSON in the key's own order; the walk keeps them true (every bound is a key it read).
-- `scope` (a condition) makes the walk count only the rows that match it (GitLab's scope_to).
-- Names and definitions are unique among live migrations only: a finished or cancelled one's
-- may be queued again (a new id; the old one stays readable by id). `sub_batch_ceiling`: an
-- explicit sub-batch size the tuner never exceeds. `set`: an operator's change of settings.

ALTER TABLE {s}.migrations
    ADD COLUMN key_columns jsonb,
    ADD COLUMN min_cursor jsonb,
    ADD COLUMN max_cursor jsonb,
    ADD COLUMN next_cursor jsonb,
    ADD COLUMN next_inclusive boolean NOT NULL DEFAULT true,
    ADD COLUMN scope text,
    ADD COLUMN sub_batch_ceiling bigint CHECK (sub_batch_ceiling IS NULL OR sub_batch_ceiling > 0);
UPDATE {s}.migrations SET
    key_columns = jsonb_build_array(jsonb_build_object('name', column_name, 'type', 'bigint')),
    min_cursor = jsonb_build_array(min_value),
    max_cursor = jsonb_build_array(max_value),
    next_cursor = CASE WHEN next_min_value IS NOT NULL THEN jsonb_build_array(next_min_value) END;
ALTER TABLE {s}.migrations
    DROP CONSTRAINT migrations_configuration_key,
    DROP CONSTRAINT migrations_name_key,
    DROP COLUMN min_value,
    DROP COLUMN max_value,
    DROP COLUMN next_min_value,
    ALTER COLUMN key_columns SET NOT NULL,
    ALTER COLUMN min_cursor SET NOT NULL,
    ALTER COLUMN max_cursor SET NOT NULL,
    ADD CONSTRAINT migrations_key_check CHECK (
        jsonb_typeof(key_columns) = 'array' AND jsonb_array_length(key_columns) > 0
        AND jsonb_typeof(min_cursor) = 'array'
        AND jsonb_array_length(min_cursor) = jsonb_array_length(key_columns)
        AND jsonb_typeof(max_cursor) = 'array'
        AND jsonb_array_length(max_cursor) = jsonb_array_length(key_columns)
        AND (next_cursor IS NULL OR (jsonb_typeof(next_cursor) = 'array'
             AND jsonb_array_length(next_cursor) = jsonb_array_length(key_columns))));
-- column_name stays, for display and for psql: the key's columns joined by ", ".
CREATE UNIQUE INDEX migrations_configuration_key ON {s}.migrations
    (job_kind, table_name, key_columns, job_arguments, coalesce(scope, ''))
    WHERE status NOT IN ('finished', 'cancelled');
CREATE UNIQUE INDEX migrations_name_key ON {s}.migrations (name)
    WHERE status NOT IN ('finished', 'cancelled');
CREATE INDEX migrations_name_idx ON {s}.migrations (name, id);

ALTER TABLE {s}.migration_transition_logs
    DROP CONSTRAINT migration_transition_logs_event_check,
    ADD CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize', 'release', 'throttle', 'set'));

ALTER TABLE {s}.jobs
    ADD COLUMN min_cursor jsonb,
    ADD COLUMN max_cursor jsonb,
    ADD COLUMN cursor jsonb;
UPDATE {s}.jobs SET
    min_cursor = jsonb_build_array(min_value),
    max_cursor = jsonb_build_array(max_value),
    cursor = CASE WHEN cursor_value IS NOT NULL THEN jsonb_build_array(cursor_value) END;
ALTER TABLE {s}.jobs
    DROP COLUMN min_value,
    DROP COLUMN max_value,
    DROP COLUMN cursor_value,
    ALTER COLUMN min_cursor SET NOT NULL,
    ALTER COLUMN max_cursor SET NOT NULL,
    ADD CONSTRAINT jobs_key_check CHECK (
        jsonb_typeof(min_cursor) = 'array' AND jsonb_typeof(max_cursor) = 'array'
        AND jsonb_array_length(min_cursor) = jsonb_array_length(max_cursor)
        AND (cursor IS NULL OR (jsonb_typeof(cursor) = 'array'
             AND jsonb_array_length(cursor) = jsonb_array_length(min_cursor))));
