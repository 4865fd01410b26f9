"""The hourly aggregate rows of Flink SQL as the window rows the Iceberg history and the MongoDB
product summaries take.

(The rows the SQL aggregates read, one per reading and one per dead letter of a known device, and
the lateness rule are made in Java: ``jvm/functions`` ``ReadingRows`` / ``RejectionRows``.)
"""

from __future__ import annotations


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
