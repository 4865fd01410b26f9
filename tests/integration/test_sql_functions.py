"""The Java aggregate functions of jvm/functions, through Flink SQL, against plain Python."""

import math
import random
import statistics

import pytest
from pyflink.common import RowKind

from connectors.flink_sql import split_statements
from iotlink.sql_commands import create_table_env
from jobs.aggregates import AGGREGATES_SQL

pytestmark = pytest.mark.integration


def readings(seed: int) -> list[tuple]:
    """(group, ts, value) with ties in time, repeated times, near-constant values and a single reading."""
    rng = random.Random(seed)
    out = []
    for group in range(6):
        for _ in range(rng.randint(2, 40)):
            ts = rng.randrange(0, 300_000, 500)  # repeated device times
            value = 1e9 + 0.1 if group == 0 else round(rng.uniform(-50, 50), rng.choice((0, 1, 3)))
            out.append((f"g{group}", ts, value))
    out.append(("single", 42_000, 7.5))
    rng.shuffle(out)  # arrival order must not matter
    return out


def expected(rows) -> dict:
    groups = {}
    for group, ts, value in rows:
        groups.setdefault(group, []).append((ts, value))
    out = {}
    for group, items in groups.items():
        values = [v for _, v in items]
        times = sorted({t for t, _ in items})
        points = [0, *times, 300_000]
        out[group] = (min(items)[1], max(items)[1], statistics.stdev(values) if len(values) > 1 else None,
                      max(b - a for a, b in zip(points, points[1:], strict=False)))
    return out


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "streaming-two-phase"])
def test_first_last_stddev_and_gap_equal_python(batch):
    extra = {} if batch else {"table.exec.mini-batch.enabled": "true", "table.exec.mini-batch.allow-latency": "1 s",
                              "table.exec.mini-batch.size": "100"}
    t_env = create_table_env(parallelism=2, extra=extra, batch=batch)
    for statement in split_statements(AGGREGATES_SQL.read_text()):
        if "CREATE TEMPORARY FUNCTION" in statement:
            t_env.execute_sql(statement)
    rows = readings(seed=5)
    t_env.create_temporary_view("r", t_env.from_elements(rows, ["grp", "ts", "v"]))
    result = t_env.execute_sql(
        "SELECT grp, first_by_time(v, ts), last_by_time(v, ts), sample_stddev(v), longest_gap(ts, CAST(0 AS BIGINT), CAST(300000 AS BIGINT)) "
        "FROM r GROUP BY grp"
    )
    got = {}
    with result.collect() as changes:
        for row in changes:
            if row.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
                continue
            got[row[0]] = tuple(row[1:])  # streaming: the last update of each group wins
    want = expected(rows)
    assert set(got) == set(want)
    for group, (first, last, stddev, gap) in want.items():
        g_first, g_last, g_stddev, g_gap = got[group]
        assert (g_first, g_last, g_gap) == (first, last, gap), group
        assert (g_stddev is None) == (stddev is None) and (stddev is None or math.isclose(g_stddev, stddev, rel_tol=1e-9, abs_tol=1e-9)), group
