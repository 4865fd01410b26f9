"""The customer daily job and formulas against the embedded stack, each result compared with an
independent computation in Python: streaming from Kafka (duplicates, a late reading, a move while
it runs) and batch from the Iceberg archive (a back-dated move, rows that must disappear)."""

import datetime as dt
import json
import random
import time
import uuid
from collections import defaultdict

import psycopg
import pytest

from connectors.iceberg import append_file_telemetry, init_tables, open_catalog
from connectors.kafka import ensure_topics
from connectors.postgres import apply_migrations
from iotlink.cli import main
from iotlink.sql_commands import kafka_scan, open_session
from jobs.config import Topics
from jobs.customer_daily import DAY_MS, CustomerDailyJob, day_start_ms, submit_customer_daily
from tests.integration.postgres_schemas import schema_with

SITES = {"s-a1": "cust-a", "s-a2": "cust-a", "s-b1": "cust-b"}
STATISTICS = ("count", "sum", "min", "max", "avg")


@pytest.fixture(scope="module", autouse=True)
def _public_schema(settings):
    # The tenant functions (005, 006) read public.tenants / public.customers, which must exist
    # when a migration into another schema creates them.
    apply_migrations(settings.postgres_url)


def _master_data(url, devices):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (customer_id, name) VALUES ('cust-a', 'A'), ('cust-b', 'B')")
        for site, customer in SITES.items():
            conn.execute("INSERT INTO sites (site_id, customer_id, name) VALUES (%s, %s, %s)", (site, customer, site))
        for device, (product, site) in devices.items():
            conn.execute("INSERT INTO devices (device_id, product_id, site_id) VALUES (%s, %s, %s)", (device, product, site))


def _move(url, device, site, at_ms):
    args = ["devices", "move", device, "--site", site, "--at", str(at_ms), "--postgres-url", url]
    assert main(args) == 0


def expected_daily(readings, stays):
    """customer_product_daily computed here: ``stays`` device -> [(from ms, to ms, site)]."""
    seen = set()
    groups = defaultdict(list)
    for r in readings:
        for metric, value in r["metrics"].items():
            if not isinstance(value, int | float) or isinstance(value, bool) or (r["device_id"], r["device_ts"], metric) in seen:
                continue
            seen.add((r["device_id"], r["device_ts"], metric))
            site = next((s for lo, hi, s in stays.get(r["device_id"], []) if lo <= r["device_ts"] < hi), None)
            if site is None:
                continue
            day = dt.datetime.fromtimestamp(r["device_ts"] / 1000, dt.UTC).date()
            groups[(SITES[site], r["product_id"], day, metric)].append((float(value), r["device_id"], site))
    return {
        key: (len(v), round(sum(x for x, _, _ in v), 6), min(x for x, _, _ in v), max(x for x, _, _ in v),
              round(sum(x for x, _, _ in v) / len(v), 6), len({d for _, d, _ in v}), len({s for _, _, s in v}))
        for key, v in groups.items()
    }


def stored_daily(url, days=None):
    query = "SELECT customer_id, product_id, day, metric, count, sum, min, max, avg, devices, sites FROM customer_product_daily"
    with psycopg.connect(url) as conn:
        rows = conn.execute(query + (" WHERE day BETWEEN %s AND %s" if days else ""), days or ()).fetchall()
    return {(c, p, d, m): (n, round(s, 6), lo, hi, round(a, 6), dv, st) for c, p, d, m, n, s, lo, hi, a, dv, st in rows}


def readings_for(devices, start_ms, count, step_ms, seed):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        for device, (product, _site) in devices.items():
            metrics = {"power_w": round(rng.uniform(100, 900), 2), "tempC": round(rng.uniform(15, 40), 1), "mode": "eco"}
            out.append({"device_id": device, "product_id": product, "device_ts": start_ms + i * step_ms, "ingest_ts": start_ms + i * step_ms,
                        "metrics": metrics})
    return out


def iceberg_daily(session, days):
    """Iceberg customer_product_daily of the days, read by Flink (it merges the upserts' deletes)."""
    query = ("SELECT customer_id, product_id, `day`, metric, `count`, `sum`, `min`, `max`, `avg`, devices, sites "
             f"FROM iotlink.iotlink.customer_product_daily WHERE `day` BETWEEN DATE '{days[0]}' AND DATE '{days[1]}'")
    with session.table_env.execute_sql(query).collect() as rows:
        return {(c, p, d, m): (n, round(s, 6), lo, hi, round(a, 6), dv, st) for c, p, d, m, n, s, lo, hi, a, dv, st in rows}


def _wait_for_iceberg(session, expected, days, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = iceberg_daily(session, days)
        if stored == expected:
            return
        time.sleep(2)
    assert stored == expected, "Iceberg customer_product_daily"


def _wait_for(url, expected, timeout_s=90, days=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = stored_daily(url, days)
        if stored == expected:
            return stored
        time.sleep(1)
    missing = {k: v for k, v in expected.items() if stored.get(k) != v}
    extra = {k: v for k, v in stored.items() if k not in expected}
    pytest.fail(f"customer_product_daily differs: expected but not stored {missing}; stored, not expected {extra}")


def test_streaming_days_follow_late_readings_and_moves(settings):
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"cd-{suffix}.{getattr(Topics(), name)}" for name in Topics.model_fields})
    ensure_topics(settings.bootstrap_servers, topics.all(), partitions={topics.telemetry: 2})
    url = schema_with(settings, f"cd_{suffix}")
    apply_migrations(url)
    devices = {f"m1-{suffix}": ("prod-a", "s-a1"), f"m2-{suffix}": ("prod-a", "s-a2"), f"m3-{suffix}": ("prod-b", "s-b1"),
               f"m4-{suffix}": ("prod-a", "s-b1")}
    _master_data(url, devices)
    now = int(time.time() * 1000)
    start = now - 2 * 3_600_000
    m4_moved = start + 3_600_000 + 123  # recorded before the job runs: readings after it count for cust-a
    _move(url, f"m4-{suffix}", "s-a1", m4_moved)
    stays = {d: [(0, 2**62, site)] for d, (_p, site) in devices.items()}
    stays[f"m4-{suffix}"] = [(0, m4_moved, "s-b1"), (m4_moved, 2**62, "s-a1")]
    readings = readings_for(devices, start, 60, 120_000, seed=1)
    unknown = readings_for({f"nobody-{suffix}": ("prod-a", None)}, start, 3, 60_000, seed=2)  # in no registry: left out
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for record in readings + readings[:40] + unknown:  # the first 40 sent twice
        producer.send(topics.telemetry, key=record["device_id"].encode(), value=json.dumps(record).encode())
    producer.flush()

    init_tables(open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse))  # as iotlink analytics daily does
    job_settings = settings.model_copy(update={"postgres_url": url, "topics": topics})
    session = open_session(job_settings, kafka_scan(job_settings, "earliest", f"cd-{suffix}"), parallelism=2,
                           extra={"execution.checkpointing.interval": "1 s"})
    result = submit_customer_daily(session.table_env, CustomerDailyJob(allowed_lateness_ms=2 * DAY_MS, iceberg=True))
    client = result.get_job_client()
    reader = open_session(job_settings, kafka_scan(job_settings, bounded=True))
    today = dt.datetime.now(dt.UTC).date()
    try:
        _wait_for(url, expected_daily(readings, stays))
        # A late reading (before the others), a reading whose day ended too long ago (left to a
        # recomputation), then m2 moves to cust-b and reports on.
        late = readings_for({f"m2-{suffix}": ("prod-a", "s-a2")}, start - 60_000, 1, 1, seed=3)
        too_late = readings_for({f"m2-{suffix}": ("prod-a", "s-a2")}, now - 5 * DAY_MS, 1, 1, seed=4)
        moved_at = int(time.time() * 1000)
        _move(url, f"m2-{suffix}", "s-b1", moved_at)
        stays[f"m2-{suffix}"] = [(0, moved_at, "s-a2"), (moved_at, 2**62, "s-b1")]
        time.sleep(11)  # the job's lookup cache of the assignments (10 s)
        after = readings_for({f"m2-{suffix}": ("prod-a", None)}, moved_at + 1000, 5, 1000, seed=5)
        for record in late + too_late + after:
            producer.send(topics.telemetry, key=record["device_id"].encode(), value=json.dumps(record).encode())
        producer.flush()
        expected = expected_daily(readings + late + after, stays)
        assert any(key[0] == "cust-b" and key[1] == "prod-a" for key in expected)
        _wait_for(url, expected)
        # Iceberg gets the same rows as upserts, committed with the job's checkpoints.
        _wait_for_iceberg(reader, {k: v for k, v in expected.items() if k[0] in SITES.values()},
                          (today - dt.timedelta(days=2), today + dt.timedelta(days=1)))
    finally:
        client.cancel().result()
        producer.close()


def test_batch_days_from_iceberg_with_a_back_dated_move_and_formulas(settings, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    url = schema_with(settings, f"cdb_{suffix}")
    apply_migrations(url)
    devices = {f"b1-{suffix}": ("prod-a", "s-a1"), f"b2-{suffix}": ("prod-a", "s-b1"), f"b3-{suffix}": ("prod-c", "s-a2")}
    _master_data(url, devices)
    first = dt.date(2026, 3, 10)
    day1, day2 = day_start_ms(first), day_start_ms(first) + DAY_MS
    readings = readings_for(devices, day1 + 3_600_000, 40, 3_600_000, seed=7)  # 01:00 of the first day to 16:00 of the second
    readings += readings[:10]  # copies, as the archive keeps every record sent
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    init_tables(catalog)
    assert append_file_telemetry(catalog, f"test-{suffix}", f"cd-{suffix}.jsonl", readings)
    db = ["--postgres-url", url, "--iceberg-catalog", settings.iceberg_catalog, "--iceberg-warehouse", settings.iceberg_warehouse]
    days = (first, first + dt.timedelta(days=1))
    stays = {d: [(0, 2**62, site)] for d, (_p, site) in devices.items()}

    assert main(["analytics", "daily", "--from", str(first), "--to", str(days[1]), *db]) == 0
    assert stored_daily(url, days) == expected_daily(readings, stays)
    reader = open_session(settings, kafka_scan(settings, bounded=True))
    assert iceberg_daily(reader, days) == expected_daily(readings, stays)

    # Found out later: b3 (prod-c) had been at cust-b's site since the second day began, and b1
    # since mid-morning: cust-a's prod-c row of that day must go, and b1's readings move.
    _move(url, f"b3-{suffix}", "s-b1", day2)
    _move(url, f"b1-{suffix}", "s-b1", day2 + 10 * 3_600_000 + 1)
    stays[f"b3-{suffix}"] = [(0, day2, "s-a2"), (day2, 2**62, "s-b1")]
    stays[f"b1-{suffix}"] = [(0, day2 + 10 * 3_600_000 + 1, "s-a1"), (day2 + 10 * 3_600_000 + 1, 2**62, "s-b1")]
    before = stored_daily(url, days)
    assert main(["analytics", "daily", "--from", str(days[1]), *db]) == 0
    after = stored_daily(url, days)
    assert after == expected_daily(readings, stays)
    assert ("cust-a", "prod-c", days[1], "power_w") in before and ("cust-a", "prod-c", days[1], "power_w") not in after
    assert after[("cust-b", "prod-c", days[1], "power_w")][0] == 17  # the whole day's readings of b3
    assert iceberg_daily(reader, days) == after  # the second day's partition replaced, the first kept

    # Formulas over those days, evaluated and checked against Python.
    formulas = tmp_path / "formulas.yaml"
    formulas.write_text(
        "formulas:\n"
        "  - id: energy_kwh\n    product: prod-a\n    expression: power_w_avg * 24 / 1000 * factor\n    params: {factor: 1.5}\n    unit: kWh\n"
        "  - id: hot_share\n    customer: cust-b\n    expression: (tempC_max - 30) / (tempC_max - tempC_min)\n"
        "  - id: needs_rpm\n    product: prod-c\n    expression: rpm_avg * 2\n"
    )
    assert main(["formulas", "check", str(formulas)]) == 0
    assert main(["formulas", "push", str(formulas), "--postgres-url", url]) == 0
    results = _results(url)
    daily = stored_daily(url, days)
    for (customer, product, day, metric), stats in daily.items():
        if product == "prod-a" and metric == "power_w":
            assert results[(customer, product, day, "energy_kwh")][:2] == (1, pytest.approx(stats[4] * 24 / 1000 * 1.5, rel=1e-9))
        if customer == "cust-b" and metric == "tempC":
            assert results[(customer, product, day, "hot_share")][1] == pytest.approx((stats[3] - 30) / (stats[3] - stats[2]), rel=1e-9)
    assert results[("cust-b", "prod-c", days[1], "needs_rpm")][1:] == (None, "no input 'rpm_avg' that day")
    assert not any(key[3] == "hot_share" for key in results if key[0] == "cust-a")

    # A changed formula: days keep version 1 until asked; --since recomputes from that day on.
    formulas.write_text(formulas.read_text().replace("factor: 1.5", "factor: 2.0"))
    assert main(["formulas", "push", str(formulas), "--postgres-url", url]) == 0
    assert {v[0] for k, v in _results(url).items() if k[3] == "energy_kwh"} == {1}
    assert main(["formulas", "evaluate", "--since", str(days[1]), "--postgres-url", url]) == 0
    energy = {k[2]: v for k, v in _results(url).items() if k[3] == "energy_kwh"}
    assert energy[days[0]][0] == 1 and energy[days[1]][0] == 2
    # Data of a day on version 1 changes: it is recomputed with version 1, not silently moved to 2.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE customer_product_daily SET avg = avg + 1 WHERE day = %s AND product_id = 'prod-a' AND metric = 'power_w'", (days[0],))
    assert main(["formulas", "evaluate", "--postgres-url", url]) == 0
    recomputed = {k: v for k, v in _results(url).items() if k[3] == "energy_kwh" and k[2] == days[0]}
    for (customer, product, day, _f), (version, value, _error) in recomputed.items():
        assert version == 1
        assert value == pytest.approx(stored_daily(url, days)[(customer, product, day, "power_w")][4] * 24 / 1000 * 1.5, rel=1e-9)


def _results(url):
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT customer_id, product_id, day, formula_id, formula_version, result, error FROM customer_analysis_daily").fetchall()
    return {(c, p, d, f): (v, r, e) for c, p, d, f, v, r, e in rows}
