-- Session settings of the analyst catalog.
-- Windows of a day start at midnight UTC (TIMESTAMP_LTZ columns are shown in this zone).
SET 'table.local-time-zone' = 'UTC';
-- A partition that receives nothing for 10 s no longer holds back the watermark, so windows
-- over a live topic still close when some partitions are quiet.
SET 'table.exec.source.idle-timeout' = '10 s';
