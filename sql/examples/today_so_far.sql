-- Today so far: per product and numeric metric, the day's readings, average and maximum from
-- midnight (UTC) up to the end of each hour (CUMULATE window TVF: 1-hour steps, 1-day windows).
-- The row with the latest window_end of a day is its running total; add
-- WHERE window_start = CAST(CURRENT_DATE AS TIMESTAMP(3)) to see only today.
SELECT product_id, metric, window_start, window_end,
       COUNT(metric_value) AS readings, AVG(metric_value) AS avg_value, MAX(metric_value) AS max_value
FROM TABLE(CUMULATE(TABLE telemetry_readings, DESCRIPTOR(device_time), INTERVAL '1' HOUR, INTERVAL '1' DAY))
WHERE metric_value IS NOT NULL
GROUP BY product_id, metric, window_start, window_end;
