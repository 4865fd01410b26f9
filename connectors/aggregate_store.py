"""Window results to PostgreSQL ``agg_1m`` / ``agg_5m`` / ``agg_1h`` as idempotent upserts.

The key is (scope, key, metric, window_start): a window fired again with corrected values
(a late record within the allowed lateness) overwrites its row, and a row replayed after a
restore writes the same values again, so nothing is ever counted twice.
"""

from __future__ import annotations

from operators.windows import partial_from_json

TABLES = {"1m": "agg_1m", "5m": "agg_5m", "1h": "agg_1h"}
COMM_TABLES = {"5m": "comm_quality_5m", "1h": "comm_quality_1h"}
# The order of the values :func:`aggregate_rows` returns.
AGGREGATE_COLUMNS = ("scope", "key", "metric", "window_start", "product_id", "count", "min", "max", "sum", "avg", "stddev",
                     "first", "first_ts", "last", "last_ts")
_COLUMNS = ", ".join(AGGREGATE_COLUMNS)
_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", ")[4:])


def upsert_sql(size: str) -> str:
    """The upsert statement of one window size."""
    return (
        f"INSERT INTO {TABLES[size]} ({_COLUMNS}) VALUES ({', '.join(['%s'] * 15)}) "
        f"ON CONFLICT (scope, key, metric, window_start) DO UPDATE SET {_UPDATE}, updated_at = now()"
    )


def aggregate_rows(row: dict) -> list[tuple]:
    """One fired window (see :func:`operators.windows.window_row`) -> one row per metric."""
    out = []
    for metric, stats in sorted(partial_from_json(row["partial"]).items()):
        r = stats.result()
        out.append((
            row["scope"], row["key"], metric, row["start"], row.get("product_id"), r["count"], r["min"], r["max"], r["sum"],
            r["avg"], r["stddev"], r["first"], r["first_ts"], r["last"], r["last_ts"],
        ))
    return out


def comm_quality_sql(size: str) -> str:
    """Upsert of one device window's message counts and gap (the rejected count is kept)."""
    return (
        f"INSERT INTO {COMM_TABLES[size]} (device_id, window_start, product_id, received, expected, missing, longest_gap_ms) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device_id, window_start) DO UPDATE SET "
        "product_id = EXCLUDED.product_id, received = EXCLUDED.received, expected = EXCLUDED.expected, "
        "missing = EXCLUDED.missing, longest_gap_ms = EXCLUDED.longest_gap_ms, updated_at = now()"
    )


def rejected_sql(size: str) -> str:
    """Upsert of one device window's dead-letter count (the message counts are kept)."""
    return (
        f"INSERT INTO {COMM_TABLES[size]} (device_id, window_start, rejected) VALUES (%s, %s, %s) "
        "ON CONFLICT (device_id, window_start) DO UPDATE SET rejected = EXCLUDED.rejected, updated_at = now()"
    )


def aggregate_statements(rows: list[dict]) -> list[tuple[str, tuple]]:
    """Statements for a batch of window rows (aggregates, communication quality, dead-letter
    counts), grouped by table; each row is an independent upsert of absolute values."""
    statements = []
    for size in TABLES:
        sql = upsert_sql(size)
        for row in rows:
            if row["size"] == size and row.get("kind") is None:
                statements.extend((sql, params) for params in aggregate_rows(row))
    for size in COMM_TABLES:
        comm, rejected = comm_quality_sql(size), rejected_sql(size)
        for row in rows:
            if row["size"] != size:
                continue
            if row.get("kind") == "comm":
                params = (row["device_id"], row["start"], row["product_id"], row["received"], row["expected"], row["missing"], row["longest_gap_ms"])
                statements.append((comm, params))
            elif row.get("kind") == "comm_rejected":
                statements.append((rejected, (row["device_id"], row["start"], row["rejected"])))
    return statements
