-- Sluicegate tracking schema, version 5 (SQLite): safety by construction. `key_unique` says
-- the key walked was proven unique at queue: the engine then refuses a built-in kind's
-- sub-batch that reports more rows than it has keys (`RangeEscaped`). Migrations queued
-- before it read 0 (not checked).

ALTER TABLE sluicegate_migrations ADD COLUMN key_unique INTEGER NOT NULL DEFAULT 0;
