-- Sluicegate tracking schema, version 7 (PostgreSQL): lanes. A migration of a Citus table
-- records which kind it is (`citus`: 'distributed', 'reference' or 'local'); a distributed
-- one is split into lanes, one per shard, each walked by its own key range and worked by at
-- most one job at a time. A lane knows its shard, the node its placement was last seen on,
-- where its next job starts, and whether it is held (its node unhealthy or down). Jobs name
-- their lane. `lane_hold`, `lane_release` and `lane_move` rows log what happened to lanes
-- without changing the migration's status.

ALTER TABLE {s}.migrations
    ADD COLUMN citus text,
    ADD CONSTRAINT migrations_citus_check
        CHECK (citus IS NULL OR citus IN ('distributed', 'reference', 'local'));

CREATE TABLE {s}.migration_lanes (
    migration_id   bigint      NOT NULL REFERENCES {s}.migrations (id) ON DELETE CASCADE,
    lane           integer     NOT NULL,
    relation       text        NOT NULL,
    shard_id       bigint      NOT NULL,
    node           text        NOT NULL,
    next_cursor    jsonb,
    next_inclusive boolean     NOT NULL DEFAULT true,
    on_hold_until  timestamptz,
    hold_reason    text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, lane),
    CONSTRAINT migration_lanes_lane_check CHECK (lane >= 0),
    CONSTRAINT migration_lanes_hold_check CHECK ((on_hold_until IS NULL) = (hold_reason IS NULL))
);

ALTER TABLE {s}.jobs ADD COLUMN lane bigint;
-- "running jobs of lane L of M".
CREATE INDEX jobs_migration_lane_idx ON {s}.jobs (migration_id, lane, status) WHERE lane IS NOT NULL;

ALTER TABLE {s}.migration_transition_logs
    DROP CONSTRAINT migration_transition_logs_event_check,
    ADD CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize', 'release', 'throttle', 'set', 'lane_hold',
                         'lane_release', 'lane_move'));
