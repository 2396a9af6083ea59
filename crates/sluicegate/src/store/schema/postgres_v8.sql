-- Sluicegate tracking schema, version 8 (PostgreSQL): a migration keeps the definition it was
-- queued from, in canonical form (every setting spelled out, defaults included, as JSON text
-- with a fixed order of fields), so that `apply` and `queue --if-not-exists` decide whether a
-- definition is already queued by comparing it with what the engine stored, never by reading
-- the user's text again. Migrations queued before v8 have none (NULL).
-- It also keeps the migrations it runs after (`--after`): their ids, a JSON array, resolved
-- from their names when it was queued (each queued before it, so they never form a cycle). A
-- claim passes over a migration while any of them is not finished.

ALTER TABLE {s}.migrations
    ADD COLUMN definition text,
    ADD COLUMN after_ids jsonb NOT NULL DEFAULT '[]'
        CHECK (jsonb_typeof(after_ids) = 'array');

-- `--verify COND`: the condition every row of its range must meet after its last job; the
-- check is logged as a `verify` row (rows checked, violations, sample keys).
ALTER TABLE {s}.migrations ADD COLUMN verify text;
ALTER TABLE {s}.migration_transition_logs
    DROP CONSTRAINT migration_transition_logs_event_check,
    ADD CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize', 'release', 'throttle', 'set', 'lane_hold',
                         'lane_release', 'lane_move', 'verify'));
