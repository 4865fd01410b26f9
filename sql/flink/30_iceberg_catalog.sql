-- The Iceberg cold layer (Iceberg's Flink connector): the tables the telemetry job writes,
-- as catalog `iotlink`, database `iotlink`:
--   SELECT device_id, COUNT(*) FROM iotlink.iotlink.telemetry GROUP BY device_id;
-- raw_payloads (every raw record, its original bytes), telemetry (every standard record),
-- alarm_events, agg_1h (hourly aggregates; a corrected window is a newer emitted_at).
CREATE CATALOG iotlink WITH (
  ${iceberg_options}
);
