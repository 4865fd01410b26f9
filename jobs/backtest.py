"""The rule backtest job: Iceberg telemetry of a time range -> the alarm engine per device (bounded).

    Iceberg telemetry (range, products with rules, devices) --[Java: scan, filter, GROUP BY device]-->
        pandas aggregate function per device (Python, one call with the device's whole range as
        Arrow columns): the readings sorted by device time, replayed through the candidate and the
        live rule sets with the job's alarm engine --> compact alarm events per device --> client

One crossing into Python per device, not per reading; the report is computed in the client
(:mod:`operators.backtest`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import orjson

from connectors.flink_sql import sql_string


@dataclass(frozen=True)
class BacktestJob:
    """What one backtest replays.

    Attributes:
        from_ms / until_ms: The range of device time (epoch ms, end excluded).
        rule_sets: Label (``candidate``, ``live``) -> the rule-set files' (source, text).
        devices: Only these devices (None: every device of a product with rules).
    """

    from_ms: int
    until_ms: int
    rule_sets: dict[str, tuple[tuple[str, str], ...]]
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.until_ms <= self.from_ms:
            raise ValueError("the backtest's end is not after its start")

    @property
    def products(self) -> list[str]:
        """Products any of the rule sets has rules for."""
        from operators.rule_loading import load_rule_text

        return sorted({load_rule_text(text, source).product_id for texts in self.rule_sets.values() for source, text in texts})


def replay_function(job: BacktestJob):
    """The pandas aggregate function ``replay_device(device_id, product_id, tenant, hub_id,
    device_time, metrics_json) -> BYTES``: JSON ``{"readings": n, "events": [compact events]}``."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import udaf

    compiled: dict = {}  # filled once per Python worker

    def replay(device_id, product_id, tenant, hub_id, device_time, metrics_json):
        import pandas as pd

        from operators.backtest import replay_device
        from operators.rule_loading import load_rule_text

        if not compiled:
            for label, texts in job.rule_sets.items():
                loaded = [load_rule_text(text, source) for source, text in texts]
                compiled[label] = {item.product_id: item.compiled for item in loaded}
        times = (pd.to_datetime(device_time) - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1)
        readings = []
        for device, product, tenant_id, hub, ts, metrics in zip(device_id, product_id, tenant, hub_id, times, metrics_json, strict=True):
            try:
                values = orjson.loads(metrics) if metrics else {}
            except orjson.JSONDecodeError:
                values = {}
            readings.append({"device_id": device, "product_id": product, "tenant": tenant_id, "hub_id": hub,
                             "device_ts": int(ts), "metrics": values if isinstance(values, dict) else {}})
        return orjson.dumps({"readings": len(readings), "events": replay_device(readings, compiled, job.until_ms)})

    # BYTES, not STRING: PyFlink cannot hand a str back from a pandas function under pandas 3,
    # whose strings are Arrow-backed (pyarrow refuses the mask PyFlink passes with them).
    return udaf(replay, result_type=DataTypes.BYTES(), func_type="pandas")


def backtest_query(job: BacktestJob) -> str:
    """The query: one row per device with its events' JSON."""
    products = ", ".join(sql_string(p) for p in job.products) or "''"
    devices = f" AND device_id IN ({', '.join(sql_string(d) for d in job.devices)})" if job.devices else ""
    return (
        "SELECT device_id, replay_device(device_id, product_id, tenant, hub_id, device_time, metrics_json) AS events FROM (\n"
        "  SELECT device_id, product_id, tenant, hub_id, CAST(device_ts AS TIMESTAMP(3)) AS device_time, metrics_json\n"
        "  FROM iotlink.iotlink.telemetry\n"
        f"  WHERE device_ts >= TO_TIMESTAMP_LTZ({int(job.from_ms)}, 3) AND device_ts < TO_TIMESTAMP_LTZ({int(job.until_ms)}, 3)\n"
        f"    AND product_id IN ({products}){devices}\n"
        ") GROUP BY device_id"
    )


def python_configuration() -> dict[str, str]:
    """Flink settings of the job: pandas functions run in process mode, with this interpreter."""
    return {
        "python.execution-mode": "process",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "table.local-time-zone": "UTC",
        "pipeline.name": "iotlink-rules-backtest",
    }


def run_backtest(t_env, job: BacktestJob, progress=None) -> tuple[dict[str, list[tuple]], int]:
    """Runs the backtest and collects every device's events.

    Args:
        t_env: A batch TableEnvironment with the platform's Iceberg catalog and
            :func:`python_configuration` applied.
        job: What to replay.
        progress: Called with the number of devices collected so far, every 100 devices.

    Returns:
        (device id -> its compact events (:func:`operators.backtest.replay_device`), the number
        of readings replayed).
    """
    t_env.create_temporary_function("replay_device", replay_function(job))
    out: dict[str, list[tuple]] = {}
    readings = 0
    with t_env.execute_sql(backtest_query(job)).collect() as rows:
        for row in rows:
            result = orjson.loads(bytes(row[1]))
            out[row[0]] = [tuple(event) for event in result["events"]]
            readings += result["readings"]
            if progress is not None and len(out) % 100 == 0:
                progress(len(out))
    return out, readings
