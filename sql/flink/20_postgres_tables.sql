-- The PostgreSQL tables (sql/postgres migrations) through the JDBC connector.
--
-- Read them with plain queries (a bounded scan) or, for master data, with lookup joins from a
-- Kafka table: JOIN devices FOR SYSTEM_TIME AS OF t.proc_time AS d ON t.device_id = d.device_id
-- (rows are cached for 10 minutes). The connection comes from the platform's postgres_url.
--
-- Left out: jsonb columns (alarm_events.values/detail, alarm_tickets.values, control_cmd.desired)
-- and timestamptz columns (updated_at, recorded_at, the generated *_time columns), which the
-- connector's PostgreSQL dialect cannot read; epoch-ms columns carry every time, and the
-- *_time columns here are computed from them (TIMESTAMP_LTZ).

-- Master data: customers, their sites, and the devices at each site.
CREATE TABLE customers (
  customer_id STRING,
  name STRING,
  PRIMARY KEY (customer_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'lookup.cache' = 'PARTIAL',
  'lookup.partial-cache.max-rows' = '100000',
  'lookup.partial-cache.expire-after-write' = '10 min',
  'lookup.partial-cache.cache-missing-key' = 'false',
  'table-name' = 'customers'
);

CREATE TABLE sites (
  site_id STRING,
  customer_id STRING,
  name STRING,
  timezone STRING,
  PRIMARY KEY (site_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'lookup.cache' = 'PARTIAL',
  'lookup.partial-cache.max-rows' = '100000',
  'lookup.partial-cache.expire-after-write' = '10 min',
  'lookup.partial-cache.cache-missing-key' = 'false',
  'table-name' = 'sites'
);

CREATE TABLE devices (
  device_id STRING,
  product_id STRING,
  tenant_id STRING,
  site_id STRING,
  expected_interval_s INT,
  PRIMARY KEY (device_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'lookup.cache' = 'PARTIAL',
  'lookup.partial-cache.max-rows' = '100000',
  'lookup.partial-cache.expire-after-write' = '10 min',
  'lookup.partial-cache.cache-missing-key' = 'false',
  'table-name' = 'devices'
);

-- Windowed aggregates, one row per (scope, key, metric, window): scope 'device' (key = device id)
-- or 'product' (key = product id). The agg_*_device / agg_*_product views split them. agg_5m and
-- agg_1h have agg_1m's columns (LIKE copies them; only the table name differs).
CREATE TABLE agg_1m (
  `scope` STRING,
  `key` STRING,
  metric STRING,
  window_start BIGINT,
  product_id STRING,
  `count` BIGINT,
  `min` DOUBLE,
  `max` DOUBLE,
  `sum` DOUBLE,
  `avg` DOUBLE,
  stddev DOUBLE,
  `first` DOUBLE,
  first_ts BIGINT,
  `last` DOUBLE,
  last_ts BIGINT,
  window_time AS TO_TIMESTAMP_LTZ(window_start, 3),
  PRIMARY KEY (`scope`, `key`, metric, window_start) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'agg_1m'
);

CREATE TABLE agg_5m WITH ('table-name' = 'agg_5m') LIKE agg_1m;

CREATE TABLE agg_1h WITH ('table-name' = 'agg_1h') LIKE agg_1m;

-- Communication quality per device and 5-minute / 1-hour window of device time.
CREATE TABLE comm_quality_5m (
  device_id STRING,
  window_start BIGINT,
  product_id STRING,
  received INT,
  expected INT,
  missing INT,
  longest_gap_ms BIGINT,
  rejected INT,
  window_time AS TO_TIMESTAMP_LTZ(window_start, 3),
  PRIMARY KEY (device_id, window_start) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'comm_quality_5m'
);

CREATE TABLE comm_quality_1h WITH ('table-name' = 'comm_quality_1h') LIKE comm_quality_5m;

-- Alarm lifecycle events as stored by the job (the same events as the alarms topic).
CREATE TABLE alarm_events (
  alarm_id STRING,
  event STRING,
  device_ts BIGINT,
  device_id STRING,
  product_id STRING,
  rule_id STRING,
  rule_version STRING,
  severity STRING,
  route STRING,
  started_ts BIGINT,
  device_time AS TO_TIMESTAMP_LTZ(device_ts, 3),
  PRIMARY KEY (alarm_id, event, device_ts) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'alarm_events'
);

-- Work for people: the medium-severity queue and field-service tickets.
CREATE TABLE alarm_tickets (
  ticket_id STRING,
  kind STRING,
  alarm_id STRING,
  device_id STRING,
  product_id STRING,
  rule_id STRING,
  severity STRING,
  status STRING,
  opened_ts BIGINT,
  acknowledged_by STRING,
  closed_ts BIGINT,
  closed_by STRING,
  opened_time AS TO_TIMESTAMP_LTZ(opened_ts, 3),
  PRIMARY KEY (ticket_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'alarm_tickets'
);

-- Shadow commands of automatic actions and their outcome (accepted, rejected, timed_out, applied).
CREATE TABLE control_cmd (
  command_id STRING,
  device_id STRING,
  alarm_id STRING,
  rule_id STRING,
  action STRING,
  issued_ts BIGINT,
  status STRING,
  detail STRING,
  issued_time AS TO_TIMESTAMP_LTZ(issued_ts, 3),
  PRIMARY KEY (command_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'control_cmd'
);

-- Customer analytics (docs/analytics.md): each device's stays at sites with the site's customer
-- (valid_to_ms: the last millisecond of 9999 while the stay lasts; looked up by device, cached 10 s),
-- the daily customer x product aggregates (sql/jobs/customer_daily.sql writes them) and the
-- formulas' daily results (without their jsonb inputs).
CREATE TABLE device_customer_history (
  device_id STRING,
  site_id STRING,
  customer_id STRING,
  valid_from_ms BIGINT,
  valid_to_ms BIGINT
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'lookup.cache' = 'PARTIAL',
  'lookup.partial-cache.max-rows' = '100000',
  'lookup.partial-cache.expire-after-write' = '10 s',
  'lookup.partial-cache.cache-missing-key' = 'false',
  'table-name' = 'device_customer_history'
);

CREATE TABLE customer_product_daily (
  customer_id STRING,
  product_id STRING,
  `day` DATE,
  metric STRING,
  `count` BIGINT,
  `sum` DOUBLE,
  `min` DOUBLE,
  `max` DOUBLE,
  `avg` DOUBLE,
  devices INT,
  sites INT,
  PRIMARY KEY (customer_id, product_id, `day`, metric) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'sink.buffer-flush.max-rows' = '5000',
  'sink.buffer-flush.interval' = '1 s',
  'table-name' = 'customer_product_daily'
);

CREATE TABLE customer_analysis_daily (
  customer_id STRING,
  product_id STRING,
  `day` DATE,
  formula_id STRING,
  formula_version INT,
  `result` DOUBLE,
  error STRING,
  PRIMARY KEY (customer_id, product_id, `day`, formula_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  ${jdbc_options},
  'table-name' = 'customer_analysis_daily'
);

CREATE VIEW agg_1m_device AS
SELECT `key` AS device_id, product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_1m WHERE `scope` = 'device';

CREATE VIEW agg_1m_product AS
SELECT `key` AS product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_1m WHERE `scope` = 'product';

CREATE VIEW agg_5m_device AS
SELECT `key` AS device_id, product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_5m WHERE `scope` = 'device';

CREATE VIEW agg_5m_product AS
SELECT `key` AS product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_5m WHERE `scope` = 'product';

CREATE VIEW agg_1h_device AS
SELECT `key` AS device_id, product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_1h WHERE `scope` = 'device';

CREATE VIEW agg_1h_product AS
SELECT `key` AS product_id, metric, window_start, window_time, `count`, `min`, `max`, `sum`, `avg`, stddev,
       `first`, first_ts, `last`, last_ts
FROM agg_1h WHERE `scope` = 'product';
