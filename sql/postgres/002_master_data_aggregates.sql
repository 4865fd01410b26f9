-- Master data and the windowed aggregates (warm layer).

CREATE TABLE IF NOT EXISTS customers (
    customer_id  text PRIMARY KEY,
    name         text NOT NULL
);

CREATE TABLE IF NOT EXISTS sites (
    site_id      text PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers (customer_id),
    name         text NOT NULL,
    timezone     text NOT NULL DEFAULT 'UTC'
);

-- The device registry the job reads (device -> product, tenant), plus what the communication
-- quality needs: how often the device is expected to send.
CREATE TABLE IF NOT EXISTS devices (
    device_id            text PRIMARY KEY,
    product_id           text NOT NULL,
    tenant_id            text,
    site_id              text REFERENCES sites (site_id),
    expected_interval_s  integer CHECK (expected_interval_s > 0)
);
ALTER TABLE devices ADD COLUMN IF NOT EXISTS tenant_id text;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS site_id text;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS expected_interval_s integer;

-- One row per (scope, key, metric, window): scope 'device' (key = device id) or 'product'
-- (key = product id). Corrections from late records overwrite the row (upsert).
CREATE TABLE IF NOT EXISTS agg_1m (
    scope         text NOT NULL CHECK (scope IN ('device', 'product')),
    key           text NOT NULL,
    metric        text NOT NULL,
    window_start  bigint NOT NULL,
    window_time   timestamptz GENERATED ALWAYS AS (to_timestamp(window_start / 1000.0)) STORED,
    product_id    text,
    count         bigint NOT NULL,
    min           double precision,
    max           double precision,
    sum           double precision,
    avg           double precision,
    stddev        double precision,
    first         double precision,
    first_ts      bigint,
    last          double precision,
    last_ts       bigint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key, metric, window_start)
);
CREATE TABLE IF NOT EXISTS agg_5m (LIKE agg_1m INCLUDING ALL);
CREATE TABLE IF NOT EXISTS agg_1h (LIKE agg_1m INCLUDING ALL);
CREATE INDEX IF NOT EXISTS agg_1m_time ON agg_1m (window_start);
CREATE INDEX IF NOT EXISTS agg_5m_time ON agg_5m (window_start);
CREATE INDEX IF NOT EXISTS agg_1h_time ON agg_1h (window_start);
