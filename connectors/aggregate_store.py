"""Window results to PostgreSQL ``agg_1m`` / ``agg_5m`` / ``agg_1h`` as idempotent upserts.

The key is (scope, key, metric, window_start): a window fired again with corrected values
(a late record within the allowed lateness) overwrites its row, and a row replayed after a
restore writes the same values again, so nothing is ever counted twice.
"""

from __future__ import annotations

from operators.windows import partial_from_json

TABLES = {"1m": "agg_1m", "5m": "agg_5m", "1h": "agg_1h"}
_COLUMNS = "scope, key, metric, window_start, product_id, count, min, max, sum, avg, stddev, first, first_ts, last, last_ts"
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


def aggregate_statements(rows: list[dict]) -> list[tuple[str, tuple]]:
    """Statements for a batch of window rows, grouped by table (each row is independent)."""
    statements = []
    for size in TABLES:
        sql = upsert_sql(size)
        for row in rows:
            if row["size"] == size:
                statements.extend((sql, params) for params in aggregate_rows(row))
    return statements
