-- Dead-letter reasons per spec: how many records each decoder spec (or the stage before a spec
-- was chosen: '(no spec)') rejected, by stage and reason code, with the latest rejection time.
SELECT COALESCE(spec_id, '(no spec)') AS spec_id, stage, reason_code,
       COUNT(*) AS dead_letters, MAX(failed_time) AS last_failed
FROM dlq
GROUP BY COALESCE(spec_id, '(no spec)'), stage, reason_code;
