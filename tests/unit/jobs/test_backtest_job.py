"""The backtest job's query and settings (no JVM)."""

import pytest

from jobs.backtest import BacktestJob, backtest_query, python_configuration

RULES = "ruleSetId: r\nproductId: prod-a\nrules:\n  - {ruleId: hot, type: threshold, condition: 't > 1', severity: low}\n"


def test_the_query_reads_the_range_products_and_devices_and_groups_by_device():
    job = BacktestJob(1000, 2000, {"candidate": (("c.yaml", RULES),), "live": ()}, devices=("d'1", "d2"))
    query = backtest_query(job)
    assert "TO_TIMESTAMP_LTZ(1000, 3)" in query and "TO_TIMESTAMP_LTZ(2000, 3)" in query
    assert "product_id IN ('prod-a')" in query and "device_id IN ('d''1', 'd2')" in query
    assert query.rstrip().endswith("GROUP BY device_id")
    assert python_configuration()["python.execution-mode"] == "process"


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="not after its start"):
        BacktestJob(2000, 2000, {})
