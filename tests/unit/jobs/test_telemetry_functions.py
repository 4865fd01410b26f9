"""The Python functions of the telemetry job, where they can run without a JVM."""

import pyflink.java_gateway

from jobs.telemetry_functions import idle_device_ttl


def test_the_alarm_state_ttl_is_built_without_the_gateway(monkeypatch):
    def no_gateway():
        raise AssertionError("a task must not start a Py4J gateway (it launches a JVM)")

    monkeypatch.setattr(pyflink.java_gateway, "get_gateway", no_gateway)
    monkeypatch.setattr("pyflink.common.time.get_gateway", no_gateway)
    ttl = idle_device_ttl(7 * 24 * 3600 * 1000)
    strategies = ttl.get_cleanup_strategies()
    # What PyFlink's conversion to Java reads (fn_execution/embedded/java_utils.py).
    assert not strategies.is_cleanup_in_background() and not strategies.in_full_snapshot()
    assert strategies.get_rocksdb_compact_filter_cleanup_strategy().get_query_time_after_num_entries() == 1000
    assert strategies.get_incremental_cleanup_strategy() is None  # a heap-state strategy
    assert ttl.get_ttl().to_milliseconds() == 7 * 24 * 3600 * 1000
