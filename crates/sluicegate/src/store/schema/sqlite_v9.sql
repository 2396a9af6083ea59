-- Sluicegate tracking schema, version 9 (SQLite): how a migration walks its key, beyond its
-- columns. `skip_null_keys` (`--skip-null-keys`): a key column that may be NULL is walked, and
-- the rows where it is NULL are never visited: every walk, every sub-batch and every bound
-- carries `key IS NOT NULL`, placed by the engine. `distinct_keys` (`--distinct`, a non-unique
-- key only): a batch and a sub-batch count distinct key values, not rows (GitLab's
-- `distinct_each_batch`). Migrations queued before v9 walk as they did (both 0).

ALTER TABLE sluicegate_migrations ADD COLUMN skip_null_keys INTEGER NOT NULL DEFAULT 0
    CHECK (skip_null_keys IN (0, 1));
ALTER TABLE sluicegate_migrations ADD COLUMN distinct_keys INTEGER NOT NULL DEFAULT 0
    CHECK (distinct_keys IN (0, 1) AND (distinct_keys = 0 OR key_unique = 0));
