-- Firmware releases and their staged rollouts (docs/ota.md). The controller writes every row
-- with idempotent statements keyed by deterministic ids, so a controller restarted at any point
-- sends and records each command once.

CREATE TABLE IF NOT EXISTS firmware_releases (
    release_id   text PRIMARY KEY,
    product_id   text NOT NULL,
    version      text NOT NULL,
    previous_version text NOT NULL,
    spec         jsonb NOT NULL,            -- the whole release (operators.ota.Release)
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One rollout per release. stage is the index of the stage being rolled out.
CREATE TABLE IF NOT EXISTS ota_rollouts (
    release_id   text PRIMARY KEY REFERENCES firmware_releases (release_id),
    status       text NOT NULL CHECK (status IN ('created', 'running', 'paused', 'completed', 'rolled_back', 'aborted')),
    stage        integer NOT NULL DEFAULT 0,
    stage_started_ts bigint,
    reason       text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per device the rollout touched: its stage, its update's outcome and, after a
-- rollback, the rollback's. version/error are the device's newest report.
CREATE TABLE IF NOT EXISTS ota_devices (
    release_id   text NOT NULL REFERENCES firmware_releases (release_id),
    device_id    text NOT NULL,
    stage        integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('in_progress', 'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped')),
    rollback     text CHECK (rollback IN ('rolling_back', 'rolled_back', 'rollback_failed')),
    sent_ts      bigint,
    deadline_ts  bigint,
    rollback_deadline_ts bigint,
    reported_version text,
    error        text,
    command_sent boolean NOT NULL DEFAULT false,   -- the update command is on iotlink.commands
    rollback_sent boolean NOT NULL DEFAULT false,
    detail       text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release_id, device_id)
);
CREATE INDEX IF NOT EXISTS ota_devices_stage ON ota_devices (release_id, stage, status);

-- What happened, in order: rollout started / paused / resumed / aborted, stage started /
-- promoted, device skipped / commanded / succeeded / failed / timed out, rollback started /
-- device rolled back. event_id is deterministic: a replay after a restart is a no-op.
CREATE TABLE IF NOT EXISTS ota_events (
    event_id     text PRIMARY KEY,
    release_id   text NOT NULL REFERENCES firmware_releases (release_id),
    ts           bigint NOT NULL,
    event        text NOT NULL,
    stage        integer,
    device_id    text,
    detail       jsonb,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ota_events_release ON ota_events (release_id, ts);

-- Field service: failed firmware updates open tickets too; people assign and close them, and
-- every change of a ticket is kept.
ALTER TABLE alarm_tickets DROP CONSTRAINT IF EXISTS alarm_tickets_kind_check;
ALTER TABLE alarm_tickets ADD CONSTRAINT alarm_tickets_kind_check CHECK (kind IN ('queue', 'field_service', 'firmware'));
ALTER TABLE alarm_tickets DROP CONSTRAINT IF EXISTS alarm_tickets_status_check;
ALTER TABLE alarm_tickets ADD CONSTRAINT alarm_tickets_status_check CHECK (status IN ('open', 'acknowledged', 'assigned', 'closed'));
ALTER TABLE alarm_tickets ADD COLUMN IF NOT EXISTS assigned_to text;
ALTER TABLE alarm_tickets ADD COLUMN IF NOT EXISTS release_id text;
-- A firmware ticket has no alarm or rule.
ALTER TABLE alarm_tickets ALTER COLUMN alarm_id DROP NOT NULL;
ALTER TABLE alarm_tickets ALTER COLUMN rule_id DROP NOT NULL;

CREATE TABLE IF NOT EXISTS ticket_history (
    ticket_id    text NOT NULL,
    seq          bigserial,
    action       text NOT NULL CHECK (action IN ('opened', 'acknowledged', 'assigned', 'closed', 'note')),
    actor        text,
    detail       text,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, seq)
);
