-- Sliding hourly maximum: the highest value of every numeric metric per device over the last
-- hour, recomputed every 15 minutes (HOP window TVF: 1-hour windows sliding by 15 minutes).
SELECT device_id, metric, window_start, window_end, MAX(metric_value) AS max_value
FROM TABLE(HOP(TABLE telemetry_readings, DESCRIPTOR(device_time), INTERVAL '15' MINUTES, INTERVAL '1' HOUR))
WHERE metric_value IS NOT NULL
GROUP BY device_id, metric, window_start, window_end;
