-- What the telemetry job computes for the MongoDB hot layer (the Java side of the job).
--
-- Input: the view `hot_readings`, the decoded, de-duplicated readings:
--   device_id STRING, device_ts BIGINT (device time, epoch ms), telemetry STRING (its JSON)
--
-- Output: `device_latest`, each device's newest reading by device time (ties by content, so
-- arrival order never matters): an updating aggregate, so with the job's mini-batches a device
-- changes at most once per batch (1 s) whatever its rate. Its changelog feeds MongoDB
-- device_state; the alarm events and the fired hourly product aggregates feed the rest of the
-- hot layer. One row per device is kept, for as long as the device exists.

CREATE TEMPORARY FUNCTION latest_text AS 'io.iotlink.flink.LatestText' LANGUAGE JAVA;

CREATE TEMPORARY VIEW device_latest AS
SELECT device_id, latest_text(telemetry, device_ts) AS telemetry
FROM hot_readings
GROUP BY device_id;
