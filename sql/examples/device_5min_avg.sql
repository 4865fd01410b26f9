-- Per-device 5-minute averages: for every device, numeric metric and 5-minute window of device
-- time, how many readings there were and their average (TUMBLE window TVF).
SELECT device_id, metric, window_start, window_end,
       COUNT(metric_value) AS readings, AVG(metric_value) AS avg_value
FROM TABLE(TUMBLE(TABLE telemetry_readings, DESCRIPTOR(device_time), INTERVAL '5' MINUTES))
WHERE metric_value IS NOT NULL
GROUP BY device_id, metric, window_start, window_end;
