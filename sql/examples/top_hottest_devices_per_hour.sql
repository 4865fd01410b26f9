-- Top-N hottest devices per hour: the 3 devices with the highest tempC reading in each hour of
-- device time, ranked (TUMBLE window TVF, then window Top-N with ROW_NUMBER).
SELECT window_start, window_end, device_id, max_temp, hottest_rank
FROM (
  SELECT window_start, window_end, device_id, max_temp,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY max_temp DESC) AS hottest_rank
  FROM (
    SELECT window_start, window_end, device_id, MAX(metric_value) AS max_temp
    FROM TABLE(TUMBLE(TABLE telemetry_readings, DESCRIPTOR(device_time), INTERVAL '1' HOUR))
    WHERE metric = 'tempC' AND metric_value IS NOT NULL
    GROUP BY window_start, window_end, device_id
  )
)
WHERE hottest_rank <= 3;
