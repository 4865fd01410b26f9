-- Alarm events, the ticket queue, control commands and pushed rule-set versions.
-- Every table is written with idempotent upserts keyed by deterministic ids, so a job
-- restored from a checkpoint (which replays some output) never duplicates a row.

CREATE TABLE IF NOT EXISTS rule_sets (
    product_id  text NOT NULL,
    version     text NOT NULL,
    message     jsonb NOT NULL,
    pushed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, version)
);

-- One row per lifecycle event of an alarm (RAISED, SEVERITY_CHANGED, ACKNOWLEDGED, CLEARED,
-- AUTO_RESOLVED, ESCALATED). alarm_id is derived from (device, rule, start time).
CREATE TABLE IF NOT EXISTS alarm_events (
    alarm_id      text NOT NULL,
    event         text NOT NULL,
    device_ts     bigint NOT NULL,
    device_time   timestamptz GENERATED ALWAYS AS (to_timestamp(device_ts / 1000.0)) STORED,
    device_id     text NOT NULL,
    product_id    text,
    rule_id       text NOT NULL,
    rule_version  text,
    severity      text,
    route         text,
    started_ts    bigint,
    "values"      jsonb,
    detail        jsonb,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alarm_id, event, device_ts)
);
CREATE INDEX IF NOT EXISTS alarm_events_device_time ON alarm_events (device_id, device_ts);
CREATE INDEX IF NOT EXISTS alarm_events_rule ON alarm_events (rule_id, device_ts);

-- Work for people: medium alarms queue here (kind 'queue'); critical alarms whose automatic
-- action did not resolve them in time become field-service tickets (kind 'field_service').
CREATE TABLE IF NOT EXISTS alarm_tickets (
    ticket_id     text PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('queue', 'field_service')),
    alarm_id      text NOT NULL,
    device_id     text NOT NULL,
    product_id    text,
    rule_id       text NOT NULL,
    severity      text,
    status        text NOT NULL CHECK (status IN ('open', 'acknowledged', 'closed')),
    opened_ts     bigint NOT NULL,
    acknowledged_by text,
    closed_ts     bigint,
    closed_by     text,
    "values"      jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alarm_tickets_open ON alarm_tickets (status, kind, opened_ts);

-- Shadow commands of automatic actions and their outcome: accepted / rejected / timed_out
-- (shadow answer), applied (the device reported the desired state).
CREATE TABLE IF NOT EXISTS control_cmd (
    command_id  text PRIMARY KEY,
    device_id   text NOT NULL,
    alarm_id    text,
    rule_id     text,
    action      text NOT NULL,
    desired     jsonb NOT NULL,
    issued_ts   bigint NOT NULL,
    status      text NOT NULL,
    detail      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
