-- Sluicegate tracking schema, version 9 (PostgreSQL): how a migration walks its key, beyond
-- its columns. `skip_null_keys` (`--skip-null-keys`): a key column that may be NULL is walked,
-- and the rows where it is NULL are never visited: every walk, every sub-batch and every bound
-- carries `key IS NOT NULL`, placed by the engine. `distinct_keys` (`--distinct`, a non-unique
-- key only): a batch and a sub-batch count distinct key values, not rows (GitLab's
-- `distinct_each_batch`). Migrations queued before v9 walk as they did (both false).

ALTER TABLE {s}.migrations
    ADD COLUMN skip_null_keys boolean NOT NULL DEFAULT false,
    ADD COLUMN distinct_keys boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT migrations_distinct_keys_check CHECK (NOT distinct_keys OR NOT key_unique);
