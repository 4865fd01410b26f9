"""The Java aggregate functions of jvm/functions (metric_stats, longest_gap), through Flink SQL, against plain Python."""

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
        stats = (len(values), min(values), max(values), math.fsum(values), math.fsum(values) / len(values),
                 statistics.stdev(values) if len(values) > 1 else None, min(items)[1], min(times), max(items)[1], max(times))
        out[group] = (stats, max(b - a for a, b in zip(points, points[1:], strict=False)))
    return out


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "streaming-two-phase"])
def test_metric_stats_and_gap_equal_python(batch):
    extra = {} if batch else {"table.exec.mini-batch.enabled": "true", "table.exec.mini-batch.allow-latency": "1 s",
                              "table.exec.mini-batch.size": "100"}
    t_env = create_table_env(parallelism=2, extra=extra, batch=batch)
    for statement in split_statements(AGGREGATES_SQL.read_text()):
        if "CREATE TEMPORARY FUNCTION" in statement:
            t_env.execute_sql(statement)
    rows = readings(seed=5)
    t_env.create_temporary_view("r", t_env.from_elements(rows, ["grp", "ts", "v"]))
    # Two metrics per reading (the second one the negated first), as the job's metrics maps hold them.
    result = t_env.execute_sql(
        "SELECT grp, metric, s.`count`, s.`min`, s.`max`, s.`sum`, s.`avg`, s.stddev, s.`first`, s.first_ts, s.`last`, s.last_ts, gap "
        "FROM (SELECT grp, metric_stats(MAP['v', v, 'neg', -v], ts) AS stats, "
        "      longest_gap(ts, CAST(0 AS BIGINT), CAST(300000 AS BIGINT)) AS gap FROM r GROUP BY grp) "
        "CROSS JOIN UNNEST(stats) AS m (metric, s)"
    )
    got = {}
    with result.collect() as changes:
        for row in changes:
            if row.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
                continue
            # streaming: the last update of each group wins
            got.setdefault(row[0], ({}, None))
            got[row[0]] = ({**got[row[0]][0], row[1]: tuple(row[2:12])}, row[12])
    want = expected(rows)
    negated = expected([(group, ts, -value) for group, ts, value in rows])
    assert set(got) == set(want)
    for group, (stats, gap) in want.items():
        got_stats, got_gap = got[group]
        assert got_gap == gap and set(got_stats) == {"v", "neg"}, group
        for metric, wanted in (("v", stats), ("neg", negated[group][0])):
            g = got_stats[metric]
            # Exact: count, min, max, first and last with their times; to rounding: sum, avg, stddev.
            assert g[:3] + g[6:] == wanted[:3] + wanted[6:], (group, metric)
            for position in (3, 4, 5):
                assert (g[position] is None) == (wanted[position] is None), (group, metric, position)
                if wanted[position] is not None:
                    assert math.isclose(g[position], wanted[position], rel_tol=1e-9, abs_tol=1e-6), (group, metric, position)
