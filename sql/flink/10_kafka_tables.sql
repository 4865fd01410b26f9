-- The platform's Kafka topics as Flink SQL tables (JSON values).
--
-- Every table reads committed records only and skips values that are not valid JSON for its
-- schema. Where reading starts (earliest by default) and, for bounded reads, the explicit end
-- offsets come from the scan_<topic> placeholders; hosts and topic names from the platform settings.
-- Each table has:
--   proc_time        processing time, for lookup joins with the PostgreSQL master data
--                    (FOR SYSTEM_TIME AS OF t.proc_time);
--   an event-time column with a watermark (5 s out of orderness), for window TVFs;
--   kafka_partition, kafka_offset, kafka_time: where the record is in Kafka.

-- Raw envelopes as the bridges write them (payload byte-exact: utf8 text or base64).
CREATE TABLE raw_envelopes (
  v INT,
  source STRING,
  received_at BIGINT,
  mqtt_topic STRING,
  device_id STRING,
  product_id STRING,
  hub_id STRING,
  format STRING,
  payload_encoding STRING,
  payload STRING,
  received_time AS TO_TIMESTAMP_LTZ(received_at, 3),
  proc_time AS PROCTIME(),
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  WATERMARK FOR received_time AS received_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_raw}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.isolation.level' = '${isolation_level}',
  ${scan_raw},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- Standard telemetry records. Metric values are numbers, booleans or strings in JSON, so
-- `metrics` is a MAP<STRING, STRING>: numbers arrive as their JSON text ('26.3'), booleans as
-- 'true'/'false'. Read one with CAST(metrics['tempC'] AS DOUBLE), or use the view
-- telemetry_readings (one row per metric, numeric values in metric_value).
-- `quality` is the JSON text of the data-quality flags (JSON_VALUE / JSON_QUERY read it).
CREATE TABLE telemetry (
  device_id STRING,
  product_id STRING,
  device_ts BIGINT,
  ingest_ts BIGINT,
  metrics MAP<STRING, STRING>,
  hub_id STRING,
  child_device_id STRING,
  hub_ts BIGINT,
  tenant STRING,
  units MAP<STRING, STRING>,
  spec_id STRING,
  spec_version STRING,
  quality STRING,
  device_time AS TO_TIMESTAMP_LTZ(device_ts, 3),
  proc_time AS PROCTIME(),
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  WATERMARK FOR device_time AS device_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_telemetry}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.isolation.level' = '${isolation_level}',
  ${scan_telemetry},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- One row per metric of every telemetry record: metric name, its value as text, and as a
-- DOUBLE when it is numeric (NULL for booleans and strings). Keeps device_time (event time)
-- and proc_time, so window TVFs and lookup joins work on it as on telemetry.
CREATE VIEW telemetry_readings AS
SELECT t.device_id, t.product_id, t.device_ts, t.device_time, t.proc_time,
       m.metric, m.value_text, TRY_CAST(m.value_text AS DOUBLE) AS metric_value
FROM telemetry AS t
CROSS JOIN UNNEST(t.metrics) AS m (metric, value_text);

-- Alarm lifecycle events (RAISED, SEVERITY_CHANGED, ACKNOWLEDGED, CLEARED, AUTO_RESOLVED,
-- ESCALATED); `values` holds the metric values that triggered the event, as text.
CREATE TABLE alarms (
  event STRING,
  alarm_id STRING,
  device_id STRING,
  product_id STRING,
  rule_id STRING,
  rule_version STRING,
  severity STRING,
  route STRING,
  device_ts BIGINT,
  started_ts BIGINT,
  `values` MAP<STRING, STRING>,
  device_time AS TO_TIMESTAMP_LTZ(device_ts, 3),
  proc_time AS PROCTIME(),
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  WATERMARK FOR device_time AS device_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_alarms}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.isolation.level' = '${isolation_level}',
  ${scan_alarms},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- Dead letters: every rejected input with the stage and precise reason, payload byte-exact.
CREATE TABLE dlq (
  v INT,
  failed_at BIGINT,
  stage STRING,
  reason_code STRING,
  reason STRING,
  device_id STRING,
  product_id STRING,
  source STRING,
  received_at BIGINT,
  mqtt_topic STRING,
  spec_id STRING,
  spec_version STRING,
  payload_encoding STRING,
  payload STRING,
  `row` INT,
  payload_truncated BOOLEAN,
  payload_size BIGINT,
  payload_sha256 STRING,
  failed_time AS TO_TIMESTAMP_LTZ(failed_at, 3),
  proc_time AS PROCTIME(),
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  WATERMARK FOR failed_time AS failed_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_dlq}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.isolation.level' = '${isolation_level}',
  ${scan_dlq},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- Notifications (high-severity alarms) and field-service tickets (escalations).
CREATE TABLE notifications (
  notification_id STRING,
  kind STRING,
  severity STRING,
  title STRING,
  alarm_id STRING,
  event STRING,
  device_id STRING,
  product_id STRING,
  rule_id STRING,
  device_ts BIGINT,
  `values` MAP<STRING, STRING>,
  device_time AS TO_TIMESTAMP_LTZ(device_ts, 3),
  proc_time AS PROCTIME(),
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  WATERMARK FOR device_time AS device_time - INTERVAL '5' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_notifications}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.isolation.level' = '${isolation_level}',
  ${scan_notifications},
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);
