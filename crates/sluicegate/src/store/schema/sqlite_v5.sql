-- Sluicegate tracking schema, version 5 (SQLite): a migration knows its target. `target_id`
-- is the identity of the database its table lives in, taken at queue from the target itself:
-- `sqlite:<canonical path of the file>` or `postgres:<system identifier>/<database>`;
-- `target_display` is the URL it was reached by, without password or parameters. A worker
-- claims only the migrations of the target it is connected to, and two live migrations are
-- duplicates only when their targets are the same too. Migrations queued before v5 keep
-- `target_id` NULL: their target is unknown, so no worker runs them until an operator adopts
-- one for its target (`sluicegate adopt`, a `set` log row).

ALTER TABLE sluicegate_migrations ADD COLUMN target_id TEXT CHECK (target_id <> '');
ALTER TABLE sluicegate_migrations ADD COLUMN target_display TEXT;
DROP INDEX sluicegate_migrations_configuration_key;
CREATE UNIQUE INDEX sluicegate_migrations_configuration_key ON sluicegate_migrations
    (job_kind, table_name, key_columns, job_arguments, coalesce(scope, ''), coalesce(target_id, ''))
    WHERE status NOT IN ('finished', 'cancelled');

-- Sluicegate tracking schema, version 5 (SQLite): safety by construction. `key_unique` says
-- the key walked was proven unique at queue: the engine then refuses a built-in kind's
-- sub-batch that reports more rows than it has keys (`RangeEscaped`). Migrations queued
-- before it read 0 (not checked).

ALTER TABLE sluicegate_migrations ADD COLUMN key_unique INTEGER NOT NULL DEFAULT 0;
