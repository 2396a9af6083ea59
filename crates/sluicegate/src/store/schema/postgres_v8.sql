-- Sluicegate tracking schema, version 8 (PostgreSQL): a migration keeps the definition it was
-- queued from, in canonical form (every setting spelled out, defaults included, as JSON text
-- with a fixed order of fields), so that `apply` and `queue --if-not-exists` decide whether a
-- definition is already queued by comparing it with what the engine stored, never by reading
-- the user's text again. Migrations queued before v8 have none (NULL).

ALTER TABLE {s}.migrations ADD COLUMN definition text;
