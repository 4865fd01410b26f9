-- Customer x product daily aggregates (docs/analytics.md; the design guide's example B).
--
-- Sensor records carry no customer: each reading is joined with the stay of its device at a
-- site at the reading's device time (device_customer_history: device -> site -> customer, from
-- PostgreSQL), so a device moved to another site mid-day counts for each customer with the
-- readings it took there. Then one row per customer, product, UTC day of device time and metric
-- is upserted into PostgreSQL customer_product_daily and, when the Iceberg catalog is configured,
-- written to Iceberg customer_product_daily by the job (jobs/customer_daily.py: upserts on the
-- same key while streaming; a recomputation overwrites its days' partitions).
--
-- Input: the view `metric_values` the job makes of its source, one row per numeric metric of a
-- telemetry record:
--   device_id STRING, product_id STRING, device_time TIMESTAMP_LTZ(3), metric STRING,
--   metric_value DOUBLE, proc_time (processing time, for the lookup join)
-- streaming: Kafka iotlink.telemetry (read_committed); a reading whose day ended more than the
--   allowed lateness ago is left out (a recomputation of its days picks it up from Iceberg);
--   the day's row is corrected as late readings arrive, its state kept a day plus the lateness;
-- batch: Iceberg telemetry of the days asked for, written as absolute values.
--
-- Master data is read when a reading is joined (cached 10 s): a move recorded before the
-- readings it concerns are processed counts for them; one recorded later (a move back-dated with
-- iotlink devices move --at) needs its days recomputed in batch, which the command says.

-- Each reading with the site and customer where its device was at the reading's device time.
CREATE TEMPORARY VIEW customer_metric_values AS
SELECT v.device_id, COALESCE(v.product_id, '') AS product_id, v.device_time, v.metric, v.metric_value, v.proc_time,
       h.site_id, h.customer_id
FROM metric_values AS v
JOIN device_customer_history FOR SYSTEM_TIME AS OF v.proc_time AS h ON v.device_id = h.device_id
WHERE v.device_time >= TO_TIMESTAMP_LTZ(h.valid_from_ms, 3) AND v.device_time < TO_TIMESTAMP_LTZ(h.valid_to_ms, 3);

-- A metric sent again for the same device and device time (a resent record) counts once: the
-- first copy is kept (the telemetry topic and archive hold every copy the devices sent).
CREATE TEMPORARY VIEW unique_customer_metric_values AS
SELECT device_id, product_id, device_time, metric, metric_value, site_id, customer_id
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY device_id, device_time, metric ORDER BY proc_time) AS copy
  FROM customer_metric_values
)
WHERE copy = 1;

-- One row per customer, product, UTC day of device time and metric.
CREATE TEMPORARY VIEW customer_daily_rows AS
SELECT /*+ STATE_TTL('u' = '${day_state_ttl}') */
  customer_id, product_id, CAST(device_time AS DATE) AS `day`, metric,
  COUNT(*) AS `count`, SUM(metric_value) AS `sum`, MIN(metric_value) AS `min`, MAX(metric_value) AS `max`,
  AVG(metric_value) AS `avg`, CAST(COUNT(DISTINCT device_id) AS INT) AS devices, CAST(COUNT(DISTINCT site_id) AS INT) AS sites
FROM unique_customer_metric_values AS u
GROUP BY customer_id, product_id, CAST(device_time AS DATE), metric;

-- PostgreSQL: upserted on the primary key (the JDBC connector).
INSERT INTO customer_product_daily SELECT * FROM customer_daily_rows;
