"""The customer daily job's statements and settings (no JVM)."""

import datetime as dt

import pytest

from jobs.customer_daily import DAY_MS, CustomerDailyJob, customer_daily_statements, day_start_ms, table_configuration


def test_streaming_reads_the_topic_and_leaves_days_past_the_lateness_out():
    views, inserts = customer_daily_statements(CustomerDailyJob(allowed_lateness_ms=600_000))
    source = views[0]
    assert "FROM telemetry_readings" in source and "UNIX_TIMESTAMP() * 1000 - 600000" in source
    assert [i.split("SELECT")[0].split()[-1] for i in inserts] == ["customer_product_daily"]
    # The day's state outlives the day, the lateness and a margin.
    assert f"STATE_TTL('u' = '{DAY_MS + 600_000 + 3_600_000} ms')" in views[-1]
    assert not any("${" in s for s in views + inserts)


def test_iceberg_gets_upserts_while_streaming_and_whole_days_in_batch():
    _views, inserts = customer_daily_statements(CustomerDailyJob(iceberg=True))
    assert "INSERT INTO iotlink.iotlink.customer_product_daily /*+ OPTIONS('upsert-enabled'='true') */" in inserts[1]
    _views, inserts = customer_daily_statements(CustomerDailyJob(days=(dt.date(2026, 3, 1), dt.date(2026, 3, 1)), iceberg=True))
    assert inserts[1].startswith("INSERT OVERWRITE iotlink.iotlink.customer_product_daily")


def test_batch_reads_the_archive_of_the_days_asked_for():
    job = CustomerDailyJob(days=(dt.date(2026, 3, 10), dt.date(2026, 3, 11)))
    source = customer_daily_statements(job)[0][0]
    assert "FROM iotlink.iotlink.telemetry" in source
    assert f"TO_TIMESTAMP_LTZ({day_start_ms(dt.date(2026, 3, 10))}, 3)" in source
    assert f"TO_TIMESTAMP_LTZ({day_start_ms(dt.date(2026, 3, 12))}, 3)" in source  # the last day included
    assert "table.exec.state.ttl" not in table_configuration(job)
    assert table_configuration(job)["table.local-time-zone"] == "UTC"


def test_days_in_order_and_utc():
    assert day_start_ms(dt.date(1970, 1, 2)) == DAY_MS
    with pytest.raises(ValueError, match="after the last"):
        CustomerDailyJob(days=(dt.date(2026, 3, 2), dt.date(2026, 3, 1)))


def test_streaming_remembers_copies_for_the_dedup_ttl():
    assert table_configuration(CustomerDailyJob(dedup_ttl_ms=7_000))["table.exec.state.ttl"] == "7000 ms"
