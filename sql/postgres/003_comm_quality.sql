-- Communication quality per device and 5-minute / 1-hour window of device time: messages
-- received (valid, de-duplicated), expected (window / devices.expected_interval_s), missing,
-- the longest stretch without a message, and dead letters of the device (by receive time).
-- Rows are upserts: a late record re-fires its window and overwrites the row.
CREATE TABLE IF NOT EXISTS comm_quality_5m (
    device_id       text NOT NULL,
    window_start    bigint NOT NULL,
    window_time     timestamptz GENERATED ALWAYS AS (to_timestamp(window_start / 1000.0)) STORED,
    product_id      text,
    received        integer NOT NULL DEFAULT 0,
    expected        integer,
    missing         integer,
    longest_gap_ms  bigint,
    rejected        integer NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, window_start)
);
CREATE TABLE IF NOT EXISTS comm_quality_1h (LIKE comm_quality_5m INCLUDING ALL);
CREATE INDEX IF NOT EXISTS comm_quality_5m_time ON comm_quality_5m (window_start);
CREATE INDEX IF NOT EXISTS comm_quality_1h_time ON comm_quality_1h (window_start);
