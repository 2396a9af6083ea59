-- Sluicegate tracking schema, version 3 (PostgreSQL): short, re-checked holds. `held_since`
-- marks a hold in progress (re-checks extend `on_hold_until` without a log row); its end is
-- logged as a `release` event. A throttle (longer pauses as a limit nears) is a reading kept
-- on the migration, logged as a `throttle` event only when it changes.

ALTER TABLE {s}.migrations
    ADD COLUMN held_since timestamptz,
    ADD COLUMN throttle_pause_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN throttle_reason text,
    ADD CONSTRAINT migrations_throttle_check CHECK (throttle_pause_ms >= 0);

ALTER TABLE {s}.migration_transition_logs
    DROP CONSTRAINT migration_transition_logs_event_check,
    ADD CONSTRAINT migration_transition_logs_event_check
        CHECK (event IN ('queue', 'pause', 'resume', 'hold', 'retry', 'finalize', 'fail', 'cancel',
                         'finish', 'resize', 'release', 'throttle'));
