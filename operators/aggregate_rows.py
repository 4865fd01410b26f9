"""The rows the Flink SQL aggregates read (``sql/jobs/aggregates.sql``), and the lateness rule.

A decoded reading becomes one ``reading`` row carrying its numeric metrics as a map (SQL unnests
it); a dead letter of a known device one ``rejected`` row. The fields, in order:
``kind, device_id, product_id, ts, metrics, interval_ms``. One typed row per reading is the
cheapest hand-over from Python to Java that was measured: no JSON to parse again, and one row
to convert instead of one per metric (``docs/performance.md``).
"""

from __future__ import annotations

import math

MINUTE_MS = 60_000
READING_FIELDS = ("kind", "device_id", "product_id", "ts", "metrics", "interval_ms")


def numeric_value(value) -> float | None:
    """A metric value as the aggregates take it: finite ints and floats; None for the rest
    (booleans, strings, infinities, and integers beyond a double's range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def reading_row(device_id: str, product_id: str | None, device_ts: int, metrics: dict, interval_ms: int | None) -> tuple:
    """The row of one decoded reading, its numeric metrics as a name -> double map.

    Args:
        device_id: The device.
        product_id: Its product (None when unknown).
        device_ts: Device time, epoch ms.
        metrics: The decoded metrics (name -> number | bool | string).
        interval_ms: The device's expected reporting interval from master data (None: unknown).
    """
    numbers = {}
    for name, value in metrics.items():
        number = numeric_value(value)
        if number is not None and isinstance(name, str):
            numbers[name] = number
    return ("reading", device_id, product_id, device_ts, numbers, interval_ms)


def rejection_row(letter: dict, now_ms: int) -> tuple | None:
    """The ``rejected`` row of a dead letter (by its receive time), None when no device is named."""
    device_id = letter.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        return None
    received_at = letter.get("received_at")
    ts = received_at if isinstance(received_at, int) and not isinstance(received_at, bool) else now_ms
    product_id = letter.get("product_id") if isinstance(letter.get("product_id"), str) else None
    return ("rejected", device_id, product_id, ts, None, None)


def too_late(device_ts: int, watermark: int, allowed_lateness_ms: int) -> bool:
    """Whether a reading can no longer change its 1-minute bucket: the minute ended more than the
    allowed lateness before the watermark (the same rule for every bucket size)."""
    return device_ts - device_ts % MINUTE_MS + MINUTE_MS + allowed_lateness_ms <= watermark + 1


def late_letter(record: dict, watermark: int, allowed_lateness_ms: int) -> dict:
    """What ``iotlink.late`` keeps of a too-late reading: the record and the watermark it missed."""
    return {"watermark": watermark, "allowed_lateness_ms": allowed_lateness_ms, "record": record}


def hourly_window_row(scope: str, key: str, metric: str, window_start: int, product_id: str | None, count: int,
                      low: float, high: float, total: float, mean: float, stddev: float | None,
                      first: float, first_ts: int, last: float, last_ts: int) -> dict:
    """One SQL ``agg_1h`` row (one metric) as the window row the Iceberg history and the MongoDB
    product summaries take: a one-metric mergeable partial (``m2`` from the sample stddev)."""
    m2 = 0.0 if stddev is None or count < 2 else stddev * stddev * (count - 1)
    return {
        "scope": scope, "key": key, "product_id": product_id, "size": "1h", "start": window_start, "refire": False,
        "partial": {metric: [count, total, low, high, mean, m2, first_ts, first, last_ts, last]},
    }
