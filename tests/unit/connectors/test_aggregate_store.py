"""Window rows to idempotent agg_1m / agg_5m / agg_1h upserts."""

import re

import orjson
import pytest

from connectors.aggregate_store import TABLES, aggregate_rows, aggregate_statements, upsert_sql
from operators.windows import MetricPartial, WindowResult, window_row

T = 1_772_359_200_000
COLUMNS = [
    "scope", "key", "metric", "window_start", "product_id", "count", "min", "max", "sum", "avg", "stddev",
    "first", "first_ts", "last", "last_ts",
]


def partial(readings) -> MetricPartial:
    (ts, value), *rest = readings
    part = MetricPartial.of(ts, value)
    for ts, value in rest:
        part.add(ts, value)
    return part


def row(size: str, start: int, key: str = "dev-1", refire: bool = False, product_id="thermo", **metrics) -> dict:
    """A window row as it arrives from the window operators (through JSON)."""
    result = WindowResult(size, start, {m: partial(r) for m, r in metrics.items()}, refire=refire)
    return orjson.loads(orjson.dumps(window_row("device", key, product_id, result)))


def sql_columns(sql: str) -> list[str]:
    return [c.strip() for c in re.search(r"INSERT INTO \w+ \(([^)]*)\)", sql).group(1).split(",")]


@pytest.mark.parametrize(("size", "table"), [("1m", "agg_1m"), ("5m", "agg_5m"), ("1h", "agg_1h")])
def test_upsert_sql_targets_the_table_of_its_size(size, table):
    sql = upsert_sql(size)
    assert sql.startswith(f"INSERT INTO {table} (")
    assert sql_columns(sql) == COLUMNS
    assert sql.count("%s") == len(COLUMNS)
    assert "VALUES (" + ", ".join(["%s"] * 15) + ")" in sql
    assert " ON CONFLICT (scope, key, metric, window_start) DO UPDATE SET " in sql
    updates = sql.split(" DO UPDATE SET ", 1)[1]
    assert updates == ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[4:]) + ", updated_at = now()"
    for other in set(TABLES.values()) - {table}:
        assert other not in sql


def test_upsert_sql_exact_text():
    assert upsert_sql("1m") == (
        "INSERT INTO agg_1m (scope, key, metric, window_start, product_id, count, min, max, sum, avg, stddev, first, "
        "first_ts, last, last_ts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (scope, key, metric, window_start) DO UPDATE SET product_id = EXCLUDED.product_id, "
        "count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum, avg = EXCLUDED.avg, "
        "stddev = EXCLUDED.stddev, first = EXCLUDED.first, first_ts = EXCLUDED.first_ts, last = EXCLUDED.last, "
        "last_ts = EXCLUDED.last_ts, updated_at = now()"
    )


def test_upsert_sql_unknown_size_raises():
    with pytest.raises(KeyError):
        upsert_sql("2m")


def test_aggregate_rows_one_tuple_per_metric_sorted_with_exact_values():
    r = row(
        "5m", T,
        temp=[(T + 3000, 24.0), (T + 1000, 20.0), (T + 2000, 22.0)],
        hum=[(T + 4000, 55)],
        co2=[(T + 1000, 400), (T + 1000, 410), (T + 9000, 420), (T + 9000, 390)],
    )
    rows = aggregate_rows(r)
    assert [p[2] for p in rows] == ["co2", "hum", "temp"]
    assert all(len(p) == len(COLUMNS) for p in rows)
    assert rows[0] == (
        "device", "dev-1", "co2", T, "thermo", 4, 390, 420, 1620, 405.0, pytest.approx(12.909944487358056, rel=1e-12),
        400, T + 1000, 420, T + 9000,
    )
    assert rows[1] == ("device", "dev-1", "hum", T, "thermo", 1, 55, 55, 55, 55.0, None, 55, T + 4000, 55, T + 4000)
    assert rows[2] == ("device", "dev-1", "temp", T, "thermo", 3, 20.0, 24.0, 66.0, 22.0, 2.0, 20.0, T + 1000, 24.0, T + 3000)
    # the tuple order is the column order of the statement
    named = dict(zip(sql_columns(upsert_sql("5m")), rows[2], strict=True))
    assert named == {
        "scope": "device", "key": "dev-1", "metric": "temp", "window_start": T, "product_id": "thermo", "count": 3,
        "min": 20.0, "max": 24.0, "sum": 66.0, "avg": 22.0, "stddev": 2.0, "first": 20.0, "first_ts": T + 1000,
        "last": 24.0, "last_ts": T + 3000,
    }


def test_aggregate_rows_without_product_or_metrics():
    r = row("1m", T, key="thermo", product_id=None, v=[(T + 1, 1.5)])
    del r["product_id"]
    assert aggregate_rows(r) == [("device", "thermo", "v", T, None, 1, 1.5, 1.5, 1.5, 1.5, None, 1.5, T + 1, 1.5, T + 1)]
    assert aggregate_rows(row("1m", T)) == []


def test_aggregate_statements_group_by_size_in_order_and_keep_row_order():
    five = row("5m", T, v=[(T + 1, 1.0)])
    first = row("1m", T, v=[(T + 1, 1.0)], b=[(T + 2, 2.0)])
    hour = row("1h", T, v=[(T + 1, 1.0)])
    other_key = row("1m", T, key="dev-2", v=[(T + 5, 5.0)])
    refire = row("1m", T, refire=True, v=[(T + 1, 1.0), (T + 7, 3.0)])
    five_later = row("5m", T + 300_000, v=[(T + 300_001, 9.0)])
    statements = aggregate_statements([five, first, hour, other_key, refire, five_later])

    assert [sql for sql, _ in statements] == [upsert_sql("1m")] * 4 + [upsert_sql("5m")] * 2 + [upsert_sql("1h")]
    expected = [
        *aggregate_rows(first), *aggregate_rows(other_key), *aggregate_rows(refire),
        *aggregate_rows(five), *aggregate_rows(five_later),
        *aggregate_rows(hour),
    ]
    assert [params for _, params in statements] == expected
    # the refire of dev-1's minute comes after its first fire, with the corrected values
    v_rows = [params for sql, params in statements if params[1] == "dev-1" and params[2] == "v" and "agg_1m" in sql]
    assert [(p[5], p[8], p[13]) for p in v_rows] == [(1, 1.0, 1.0), (2, 4.0, 3.0)]


def test_aggregate_statements_of_nothing():
    assert aggregate_statements([]) == []
    assert aggregate_statements([row("1m", T)]) == []


def test_communication_quality_and_dead_letter_rows_upsert_their_own_columns():
    from connectors.aggregate_store import aggregate_statements
    from operators.comm_quality import RejectionBook, comm_row

    quality = {"received": 28, "expected": 30, "missing": 2, "longest_gap_ms": 7_000}
    book = RejectionBook()
    rows = [comm_row("d-1", "prod-a", "5m", 300_000, quality), *book.rows("d-1", book.add(301_000))]
    statements = aggregate_statements(rows)
    assert [(sql.split()[2], params) for sql, params in statements if "received" in sql] == [
        ("comm_quality_5m", ("d-1", 300_000, "prod-a", 28, 30, 2, 7_000)),
    ]
    rejected = [(sql.split()[2], params) for sql, params in statements if "rejected" in sql.split("(")[1]]
    assert sorted(rejected) == [("comm_quality_1h", ("d-1", 0, 1)), ("comm_quality_5m", ("d-1", 300_000, 1))]
    # Each kind leaves the other's columns alone on conflict.
    assert all("rejected" not in sql.split("DO UPDATE")[1] for sql, _ in statements if "received" in sql)
    assert all("received" not in sql for sql, _ in statements if "(device_id, window_start, rejected)" in sql)
