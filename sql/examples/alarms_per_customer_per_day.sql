-- Alarms per customer per day: alarms raised (RAISED events on the alarms topic) per customer
-- and UTC day of device time, with how many devices and how many critical ones. The customer
-- comes from the PostgreSQL master data (devices -> sites -> customers) through lookup joins;
-- devices without a site count under '(unassigned)'.
CREATE TEMPORARY VIEW IF NOT EXISTS alarms_with_customer AS
SELECT a.alarm_id, a.device_id, a.severity, a.device_time,
       COALESCE(c.customer_id, '(unassigned)') AS customer_id, c.name AS customer_name
FROM alarms AS a
LEFT JOIN devices FOR SYSTEM_TIME AS OF a.proc_time AS d ON a.device_id = d.device_id
LEFT JOIN sites FOR SYSTEM_TIME AS OF a.proc_time AS s ON d.site_id = s.site_id
LEFT JOIN customers FOR SYSTEM_TIME AS OF a.proc_time AS c ON s.customer_id = c.customer_id
WHERE a.event = 'RAISED';

SELECT customer_id, customer_name, window_start AS day_start,
       COUNT(*) AS alarms_raised, COUNT(DISTINCT device_id) AS devices,
       COUNT(*) FILTER (WHERE severity = 'critical') AS critical
FROM TABLE(TUMBLE(TABLE alarms_with_customer, DESCRIPTOR(device_time), INTERVAL '1' DAY))
GROUP BY customer_id, customer_name, window_start, window_end;
