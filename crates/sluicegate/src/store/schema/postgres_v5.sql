-- Sluicegate tracking schema, version 5 (PostgreSQL): a migration knows its target. `target_id`
-- is the identity of the database its table lives in, taken at queue from the target itself:
-- `postgres:<system identifier>/<database>` (pg_control_system() and current_database()) or
-- `sqlite:<canonical path>`; `target_display` is the URL it was reached by, without password
-- or parameters. A worker claims only the migrations of the target it is connected to, and two
-- live migrations are duplicates only when their targets are the same too. Migrations queued
-- before v5 keep `target_id` NULL: their target is unknown (nothing recorded whether a separate
-- target was used), so no worker runs them until an operator adopts one for its target
-- (`sluicegate adopt`, a `set` log row), which is safe whatever they were queued for.

ALTER TABLE {s}.migrations
    ADD COLUMN target_id text,
    ADD COLUMN target_display text,
    ADD CONSTRAINT migrations_target_check
        CHECK ((target_id IS NULL) = (target_display IS NULL) AND target_id <> '');
DROP INDEX {s}.migrations_configuration_key;
CREATE UNIQUE INDEX migrations_configuration_key ON {s}.migrations
    (job_kind, table_name, key_columns, job_arguments, coalesce(scope, ''), coalesce(target_id, ''))
    WHERE status NOT IN ('finished', 'cancelled');

-- Sluicegate tracking schema, version 5 (PostgreSQL): safety by construction. `key_unique`
-- says the key walked was proven unique at queue (a primary key or a unique index on exactly
-- its columns): the engine then refuses a built-in kind's sub-batch that reports more rows
-- than it has keys (`RangeEscaped`). Migrations queued before it read false (not checked).

ALTER TABLE {s}.migrations
    ADD COLUMN key_unique boolean NOT NULL DEFAULT false;
