-- The telemetry job's Iceberg cold layer, written by Iceberg's own Flink sink (the Java side of
-- the job). Each sink writes data files as rows arrive and commits them when a checkpoint
-- completes: a table holds what a completed checkpoint covered, each row once, also across a
-- failure and restore. Tables are created by `iotlink iceberg init` or at the job's start
-- (connectors/iceberg.py); the catalog is the one pyiceberg, `iotlink iceberg query` and
-- `iotlink batch` open.
--
-- Input: views the job makes (jobs/archive.py), each only when its output is on:
--   raw_archive        one row per record of iotlink.raw (io.iotlink.flink.RawPayloadRows):
--                      received_at BIGINT (epoch ms; 0 when the record is not an envelope),
--                      the envelope's fields, payload BYTES (the original bytes), envelope
--                      (its JSON without the payload), envelope_error, source_topic,
--                      source_partition, source_seq (the record's number in its partition)
--   telemetry_archive  one row per standard telemetry record (io.iotlink.flink.TelemetryRows):
--                      device_ts / ingest_ts BIGINT (epoch ms), metrics MAP<STRING, DOUBLE>
--                      (the numeric ones), metrics_json, quality_json, …
--   alarm_event_json   alarm lifecycle events as JSON (as on iotlink.alarms), `event` STRING
--   agg_1h_fired       hourly aggregates each time a window fires and per correction
--                      (sql/jobs/aggregates.sql)

CREATE CATALOG iotlink WITH (
  ${iceberg_options}
);

INSERT INTO iotlink.iotlink.raw_payloads
SELECT TO_TIMESTAMP_LTZ(received_at, 3), source, device_id, product_id, hub_id, `format`, mqtt_topic, payload,
  envelope, envelope_error, source_topic, source_partition, source_seq
FROM raw_archive;

INSERT INTO iotlink.iotlink.telemetry
SELECT device_id, product_id, tenant, hub_id, TO_TIMESTAMP_LTZ(device_ts, 3), TO_TIMESTAMP_LTZ(ingest_ts, 3), metrics,
  metrics_json, quality_json, spec_id, spec_version, source_topic, source_partition, source_seq
FROM telemetry_archive;

INSERT INTO iotlink.iotlink.alarm_events
SELECT JSON_VALUE(`event`, '$.alarm_id'), JSON_VALUE(`event`, '$.event'), JSON_VALUE(`event`, '$.device_id'),
  JSON_VALUE(`event`, '$.product_id'), JSON_VALUE(`event`, '$.rule_id'), JSON_VALUE(`event`, '$.rule_version'),
  JSON_VALUE(`event`, '$.severity'), TO_TIMESTAMP_LTZ(CAST(JSON_VALUE(`event`, '$.device_ts') AS BIGINT), 3),
  JSON_QUERY(`event`, '$.values')
FROM alarm_event_json
-- (The alarm engine sets every column the table requires; the filter only keeps anything else out.)
WHERE JSON_VALUE(`event`, '$.alarm_id') IS NOT NULL AND JSON_VALUE(`event`, '$.event') IS NOT NULL
  AND JSON_VALUE(`event`, '$.device_id') IS NOT NULL AND JSON_VALUE(`event`, '$.rule_id') IS NOT NULL
  AND CAST(JSON_VALUE(`event`, '$.device_ts') AS BIGINT) IS NOT NULL;

-- A corrected window is a new version of its row (the table is append-only history): readers
-- take the newest emitted_at per (scope, key, metric, window_start).
INSERT INTO iotlink.iotlink.agg_1h
SELECT `scope`, `key`, metric, TO_TIMESTAMP_LTZ(window_start, 3), product_id, `count`, `min`, `max`, `sum`, `avg`,
  stddev, `first`, `last`, CURRENT_TIMESTAMP
FROM agg_1h_fired;
