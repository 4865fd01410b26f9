-- The telemetry job's stateful aggregation, in Flink SQL (the Java side of the job).
--
-- Input: the view `readings`, which the job makes of its decoded, de-duplicated stream (records
-- later than the allowed lateness are already on iotlink.late). One row per reading (kind
-- 'reading', its numeric metrics in a map) and one per dead letter of a known device (kind
-- 'rejected', ts = its receive time):
--   kind STRING, device_id STRING, product_id STRING, ts BIGINT (device time, epoch ms),
--   metrics MAP<STRING, DOUBLE>, interval_ms BIGINT (the device's expected reporting interval)
--
-- Output: upserts into the PostgreSQL tables of sql/flink/20_postgres_tables.sql (JDBC
-- connector, primary keys). Each aggregate is a GROUP BY on a floored time bucket: an updating
-- aggregate, so a late reading corrects its row under the same key (see the end of the file for
-- when rows are written). State per bucket lives for
-- the bucket's length plus the allowed lateness (the STATE_TTL hints; processing time).
--
-- Functions of jvm/functions (io.iotlink.flink): metric_stats (every metric of the readings'
-- metrics maps at once: count, min, max, sum, avg, sample stddev by Welford, first/last value by
-- device time with ties by value), longest_gap.
--
-- One accumulator per device (or product) and window holds all its metrics: each reading reads
-- and writes an aggregate's state once, not once per metric, and the changelog carries one row
-- per window. The job turns each fired window into one row per metric (MetricStatsRows, Java)
-- before the tables get it.

CREATE TEMPORARY FUNCTION metric_stats AS 'io.iotlink.flink.MetricStats' LANGUAGE JAVA;
CREATE TEMPORARY FUNCTION longest_gap AS 'io.iotlink.flink.LongestGap' LANGUAGE JAVA;

CREATE TEMPORARY VIEW metric_readings AS
SELECT device_id, COALESCE(product_id, '') AS product_id, ts AS device_ts, metrics
FROM readings
WHERE kind = 'reading';

-- Each view: one row per device and window, then one per product and window (the same columns;
-- a product's communication columns are NULL). A device's window holds its metrics and, for 5
-- minutes and 1 hour, its communication quality in one aggregate: readings by device time, dead
-- letters by receive time, so a reading reads and writes one state per window length.
--   scope, key, window_start, product_id, stats (metric_stats),
--   comm_product_id, received, interval_ms, longest_gap_ms, rejected

-- 1 minute.
CREATE TEMPORARY VIEW agg_1m_updates AS
SELECT /*+ STATE_TTL('metric_readings' = '${state_ttl_1m}') */
  'device' AS `scope`, device_id AS `key`, device_ts - MOD(device_ts, 60000) AS window_start, MAX(product_id) AS product_id,
  metric_stats(metrics, device_ts) AS stats, CAST(NULL AS STRING) AS comm_product_id, CAST(NULL AS INT) AS received,
  CAST(NULL AS BIGINT) AS interval_ms, CAST(NULL AS BIGINT) AS longest_gap_ms, CAST(NULL AS INT) AS rejected
FROM metric_readings GROUP BY device_id, device_ts - MOD(device_ts, 60000)
UNION ALL
SELECT /*+ STATE_TTL('metric_readings' = '${state_ttl_1m}') */
  'product', product_id, device_ts - MOD(device_ts, 60000), product_id, metric_stats(metrics, device_ts),
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS INT)
FROM metric_readings GROUP BY product_id, device_ts - MOD(device_ts, 60000);

-- 5 minutes, with the device's communication quality.
CREATE TEMPORARY VIEW agg_5m_updates AS
SELECT /*+ STATE_TTL('readings' = '${state_ttl_5m}') */
  'device' AS `scope`, device_id AS `key`, ts - MOD(ts, 300000) AS window_start,
  COALESCE(MAX(product_id) FILTER (WHERE kind = 'reading'), '') AS product_id,
  metric_stats(metrics, ts) FILTER (WHERE kind = 'reading') AS stats,
  MAX(product_id) AS comm_product_id,
  CAST(COUNT(*) FILTER (WHERE kind = 'reading') AS INT) AS received,
  MAX(interval_ms) FILTER (WHERE kind = 'reading') AS interval_ms,
  longest_gap(ts, ts - MOD(ts, 300000), CAST(300000 AS BIGINT)) FILTER (WHERE kind = 'reading') AS longest_gap_ms,
  CAST(COUNT(*) FILTER (WHERE kind = 'rejected') AS INT) AS rejected
FROM readings WHERE kind IN ('reading', 'rejected')
GROUP BY device_id, ts - MOD(ts, 300000)
UNION ALL
SELECT /*+ STATE_TTL('metric_readings' = '${state_ttl_5m}') */
  'product', product_id, device_ts - MOD(device_ts, 300000), product_id, metric_stats(metrics, device_ts),
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS INT)
FROM metric_readings GROUP BY product_id, device_ts - MOD(device_ts, 300000);

-- 1 hour, with the device's communication quality (its fired rows also go to the Iceberg agg_1h
-- history and the MongoDB product summaries).
CREATE TEMPORARY VIEW agg_1h_updates AS
SELECT /*+ STATE_TTL('readings' = '${state_ttl_1h}') */
  'device' AS `scope`, device_id AS `key`, ts - MOD(ts, 3600000) AS window_start,
  COALESCE(MAX(product_id) FILTER (WHERE kind = 'reading'), '') AS product_id,
  metric_stats(metrics, ts) FILTER (WHERE kind = 'reading') AS stats,
  MAX(product_id) AS comm_product_id,
  CAST(COUNT(*) FILTER (WHERE kind = 'reading') AS INT) AS received,
  MAX(interval_ms) FILTER (WHERE kind = 'reading') AS interval_ms,
  longest_gap(ts, ts - MOD(ts, 3600000), CAST(3600000 AS BIGINT)) FILTER (WHERE kind = 'reading') AS longest_gap_ms,
  CAST(COUNT(*) FILTER (WHERE kind = 'rejected') AS INT) AS rejected
FROM readings WHERE kind IN ('reading', 'rejected')
GROUP BY device_id, ts - MOD(ts, 3600000)
UNION ALL
SELECT /*+ STATE_TTL('metric_readings' = '${state_ttl_1h}') */
  'product', product_id, device_ts - MOD(device_ts, 3600000), product_id, metric_stats(metrics, device_ts),
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS INT)
FROM metric_readings GROUP BY product_id, device_ts - MOD(device_ts, 3600000);

-- The three sizes in one changelog, so the job reads the readings once for all of them.
CREATE TEMPORARY VIEW agg_updates AS
SELECT *, CAST(60000 AS BIGINT) AS window_ms FROM agg_1m_updates
UNION ALL
SELECT *, CAST(300000 AS BIGINT) AS window_ms FROM agg_5m_updates
UNION ALL
SELECT *, CAST(3600000 AS BIGINT) AS window_ms FROM agg_1h_updates;

-- The job keys the agg_updates changelog by window and releases a window's newest row when the
-- watermark passes the window's end, and again for each correction within the allowed lateness
-- (io.iotlink.flink.WindowFirings, Java): the views agg_1m_windows, agg_5m_windows,
-- agg_1h_windows. Their metrics become one row per metric (MetricStatsRows, Java): the views
-- agg_1m_fired, agg_5m_fired, agg_1h_fired. Only those reach PostgreSQL, so a window is written
-- once plus once per correction, not at every update of the aggregate.
INSERT INTO agg_1m SELECT * FROM agg_1m_fired;
INSERT INTO agg_5m SELECT * FROM agg_5m_fired;
INSERT INTO agg_1h SELECT * FROM agg_1h_fired;

-- Communication quality per device and 5 minutes / 1 hour: expected = window length / expected
-- interval (none without an interval or without readings), missing = expected - received, not
-- below zero. (A window with dead letters but no reading has a row here and none in agg_*.)
INSERT INTO comm_quality_5m
SELECT `key`, window_start, comm_product_id, received,
  CASE WHEN received > 0 THEN CAST(300000 / interval_ms AS INT) END,
  CASE WHEN received > 0 THEN GREATEST(0, CAST(300000 / interval_ms AS INT) - received) END,
  longest_gap_ms, rejected
FROM agg_5m_windows WHERE `scope` = 'device';

INSERT INTO comm_quality_1h
SELECT `key`, window_start, comm_product_id, received,
  CASE WHEN received > 0 THEN CAST(3600000 / interval_ms AS INT) END,
  CASE WHEN received > 0 THEN GREATEST(0, CAST(3600000 / interval_ms AS INT) - received) END,
  longest_gap_ms, rejected
FROM agg_1h_windows WHERE `scope` = 'device';
