-- Sluicegate tracking schema, version 5 (PostgreSQL): safety by construction. `key_unique`
-- says the key walked was proven unique at queue (a primary key or a unique index on exactly
-- its columns): the engine then refuses a built-in kind's sub-batch that reports more rows
-- than it has keys (`RangeEscaped`). Migrations queued before it read false (not checked).

ALTER TABLE {s}.migrations
    ADD COLUMN key_unique boolean NOT NULL DEFAULT false;
