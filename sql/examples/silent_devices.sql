-- Devices silent for more than 10 minutes: every registered device (PostgreSQL devices) whose
-- newest telemetry reading is older than 10 minutes of wall-clock time, or that never sent one
-- (last_seen NULL). Change INTERVAL '10' MINUTE for another threshold.
SELECT d.device_id, d.product_id, d.site_id, r.last_seen, r.readings
FROM devices AS d
LEFT JOIN (
  SELECT device_id, MAX(device_ts) AS last_ts, TO_TIMESTAMP_LTZ(MAX(device_ts), 3) AS last_seen, COUNT(*) AS readings
  FROM telemetry
  GROUP BY device_id
) AS r ON d.device_id = r.device_id
WHERE r.last_ts IS NULL OR r.last_ts < UNIX_TIMESTAMP() * 1000 - 10 * 60 * 1000;
