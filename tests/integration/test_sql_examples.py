"""Every analyst example of sql/examples/ against a known dataset, compared with answers computed here.

Telemetry, alarm events and dead letters go straight to topics of this test; master data goes
into a PostgreSQL schema of its own. One SQL session (one MiniCluster) runs every example with
the Kafka tables bounded at explicit end offsets.
"""

import datetime as dt
import io
import json
import time
import uuid
from collections import defaultdict

import psycopg
import pytest
import yaml

from connectors.flink_sql import EXAMPLES_DIR
from connectors.kafka import ensure_topics
from connectors.postgres import apply_migrations
from iotlink.sql_commands import interactive, kafka_scan, open_session
from jobs.config import Topics
from tests.integration.postgres_schemas import schema_with

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
# device -> (product, site, tempC offset); dev-e is registered but never reports, dev-f reports but is not registered.
FLEET = {"dev-a": ("prod-a", "s1", 0.11), "dev-b": ("prod-a", "s2", 0.23), "dev-c": ("prod-b", "s1", 0.37),
         "dev-d": ("prod-b", "s2", 0.41), "dev-f": ("prod-a", None, 0.53)}
REGISTERED = {"dev-a": "s1", "dev-b": "s2", "dev-c": "s1", "dev-d": "s2", "dev-e": "s1"}
CUSTOMERS = {"c1": "Acme", "c2": "Globex"}
SITES = {"s1": "c1", "s2": "c2"}


def _naive_utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(tzinfo=None)


def _aware_utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def make_dataset(now_ms: int) -> dict:
    """Telemetry over the last ~3 hours (dev-d stops 30 minutes ago), alarms over two days, dead letters."""
    start = (now_ms - 3 * HOUR) // (5 * MIN) * (5 * MIN)
    telemetry = []
    for index, (device, (product, _site, offset)) in enumerate(FLEET.items()):
        last = now_ms - 30 * MIN if device == "dev-d" else now_ms
        ts, k = start + index * 1000, 0
        while ts <= last:
            metrics = {"tempC": round(20 + offset + (k * 7 % 23), 2), "humidity": 40 + k % 9 + index, "fanOn": k % 2 == 0, "mode": "eco"}
            telemetry.append({"device_id": device, "product_id": product, "device_ts": ts, "ingest_ts": ts + 50, "metrics": metrics})
            ts += 4 * MIN + 10_000 * (index + 1)
            k += 1
        if device != "dev-d":  # the newest reading at the moment of writing: not silent
            telemetry.append({"device_id": device, "product_id": product, "device_ts": now_ms, "ingest_ts": now_ms,
                              "metrics": {"tempC": 21.0 + offset, "humidity": 50}})
    telemetry.sort(key=lambda r: r["device_ts"])
    yesterday = now_ms - DAY
    alarms = []
    for ts, event, device, severity in [
        (yesterday, "RAISED", "dev-a", "critical"), (yesterday + MIN, "CLEARED", "dev-a", "critical"),
        (yesterday + 2 * MIN, "RAISED", "dev-b", "high"), (now_ms - 2 * HOUR, "RAISED", "dev-a", "high"),
        (now_ms - 2 * HOUR + MIN, "RAISED", "dev-c", "critical"), (now_ms - HOUR, "RAISED", "dev-a", "critical"),
        (now_ms - HOUR + MIN, "ACKNOWLEDGED", "dev-a", "critical"), (now_ms - 30 * MIN, "RAISED", "dev-f", "medium"),
        (now_ms - 20 * MIN, "RAISED", "dev-b", "low"),
    ]:
        alarms.append({"event": event, "alarm_id": f"{device}:r1:{ts}", "device_id": device, "product_id": FLEET[device][0],
                       "rule_id": "r1", "rule_version": "1", "severity": severity, "route": "notify", "device_ts": ts,
                       "started_ts": ts, "values": {"tempC": 90.5}})
    alarms.sort(key=lambda a: a["device_ts"])
    dead_letters = []
    for i, (spec, stage, code) in enumerate([("spec-x", "parse", "short_payload")] * 3 + [(None, "spec_selection", "no_spec")] * 2
                                            + [("spec-y", "checksum", "crc_mismatch")]):
        dead_letters.append({"v": 1, "failed_at": now_ms - (10 - i) * MIN, "stage": stage, "reason_code": code, "reason": f"{code} #{i}",
                             "device_id": "dev-a", "product_id": "prod-a", "source": "kafka", "received_at": now_ms - (10 - i) * MIN,
                             "mqtt_topic": None, "spec_id": spec, "spec_version": "1" if spec else None, "payload_encoding": "utf8",
                             "payload": "{not json; really"})
    return {"telemetry": telemetry, "alarms": alarms, "dlq": dead_letters}


def _readings(telemetry):
    for record in telemetry:
        for metric, value in record["metrics"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield record["device_id"], record["product_id"], metric, record["device_ts"], float(value)


def expected_tumble_5m(telemetry):
    groups = defaultdict(list)
    for device, _product, metric, ts, value in _readings(telemetry):
        groups[(device, metric, ts // (5 * MIN) * (5 * MIN))].append(value)
    return {(d, m, _naive_utc(w), _naive_utc(w + 5 * MIN), len(v), round(sum(v) / len(v), 6)) for (d, m, w), v in groups.items()}


def expected_hop_hourly_max(telemetry):
    groups = defaultdict(list)
    slide = 15 * MIN
    for device, _product, metric, ts, value in _readings(telemetry):
        last_start = ts // slide * slide
        for j in range(4):
            groups[(device, metric, last_start - j * slide)].append(value)
    return {(d, m, _naive_utc(w), _naive_utc(w + HOUR), max(v)) for (d, m, w), v in groups.items()}


def expected_cumulate(telemetry):
    days = defaultdict(list)
    for _device, product, metric, ts, value in _readings(telemetry):
        days[(product, metric, ts // DAY * DAY)].append((ts, value))
    rows = set()
    for (product, metric, day), points in days.items():
        for step in range(1, 25):
            end = day + step * HOUR
            values = [v for ts, v in points if ts < end]
            if values:
                rows.add((product, metric, _naive_utc(day), _naive_utc(end), len(values), round(sum(values) / len(values), 6), max(values)))
    return rows


def expected_top3_hottest(telemetry):
    hourly = defaultdict(dict)
    for device, _product, metric, ts, value in _readings(telemetry):
        if metric == "tempC":
            hour = ts // HOUR * HOUR
            hourly[hour][device] = max(value, hourly[hour].get(device, value))
    rows = set()
    for hour, per_device in hourly.items():
        ranked = sorted(per_device.items(), key=lambda kv: -kv[1])[:3]
        rows |= {(_naive_utc(hour), _naive_utc(hour + HOUR), device, value, rank) for rank, (device, value) in enumerate(ranked, 1)}
    return rows


def expected_alarms_per_customer(alarms):
    groups = defaultdict(list)
    for alarm in alarms:
        if alarm["event"] != "RAISED":
            continue
        site = REGISTERED.get(alarm["device_id"])
        customer = SITES[site] if site else None
        groups[(customer or "(unassigned)", CUSTOMERS.get(customer), alarm["device_ts"] // DAY * DAY)].append(alarm)
    return {(c, name, _naive_utc(day), len(a), len({x["device_id"] for x in a}), sum(x["severity"] == "critical" for x in a))
            for (c, name, day), a in groups.items()}


def expected_silent(telemetry, query_started_ms):
    last, count = {}, defaultdict(int)
    for record in telemetry:
        last[record["device_id"]] = max(record["device_ts"], last.get(record["device_id"], 0))
        count[record["device_id"]] += 1
    rows = set()
    for device, site in REGISTERED.items():
        if device not in last:
            rows.add((device, "prod-x" if device == "dev-e" else FLEET[device][0], site, None, None))
        elif last[device] < query_started_ms - 10 * MIN:
            rows.add((device, FLEET[device][0], site, _aware_utc(last[device]), count[device]))
    return rows


def expected_dlq(dead_letters):
    groups = defaultdict(list)
    for letter in dead_letters:
        groups[(letter["spec_id"] or "(no spec)", letter["stage"], letter["reason_code"])].append(letter["failed_at"])
    return {(s, st, code, len(v), _aware_utc(max(v))) for (s, st, code), v in groups.items()}


def _rounded(rows, float_digits=6):
    return {tuple(round(v, float_digits) if isinstance(v, float) else v for v in row) for row in rows}


@pytest.fixture(scope="module")
def sql_setup(settings):
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"sqlex-{suffix}.{getattr(Topics(), name)}" for name in Topics.model_fields})
    # Two telemetry partitions: the watermark is the minimum over both.
    ensure_topics(settings.bootstrap_servers, topics.all(), partitions={topics.raw: 2, topics.telemetry: 2}, large=(topics.raw, topics.dlq))
    url = schema_with(settings, f"sqlex_{suffix}")
    apply_migrations(url)
    now_ms = int(time.time() * 1000)
    data = make_dataset(now_ms)
    with psycopg.connect(url, autocommit=True) as conn:
        for customer, name in CUSTOMERS.items():
            conn.execute("INSERT INTO customers VALUES (%s, %s)", (customer, name))
        for site, customer in SITES.items():
            conn.execute("INSERT INTO sites (site_id, customer_id, name) VALUES (%s, %s, %s)", (site, customer, f"site {site}"))
        for device, site in REGISTERED.items():
            product = "prod-x" if device == "dev-e" else FLEET[device][0]
            conn.execute("INSERT INTO devices (device_id, product_id, site_id, expected_interval_s) VALUES (%s, %s, %s, 300)",
                         (device, product, site))
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    for topic, records in ((topics.telemetry, data["telemetry"]), (topics.alarms, data["alarms"]), (topics.dlq, data["dlq"])):
        for record in records:
            producer.send(topic, key=record["device_id"].encode(), value=json.dumps(record).encode())
    producer.send(topics.dlq, value=b"not a dead letter")  # skipped by the table (json.ignore-parse-errors)
    producer.flush()
    producer.close()
    sql_settings = settings.model_copy(update={"postgres_url": url, "topics": topics})
    started = time.monotonic()
    session = open_session(sql_settings, kafka_scan(sql_settings, bounded=True))
    print(f"session ready in {time.monotonic() - started:.1f} s")
    return sql_settings, session, data


def _run_example(session, name):
    text = (EXAMPLES_DIR / name).read_text()
    results = list(session.execute_script(text))
    assert results[-1].complete and results[-1].columns
    return results[-1]


def test_tumble_5_minute_averages(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "device_5min_avg.sql")
    assert result.columns == ["device_id", "metric", "window_start", "window_end", "readings", "avg_value"]
    expected = expected_tumble_5m(data["telemetry"])
    assert len(result.rows) == len(expected) > 100
    assert _rounded(result.rows) == expected


def test_hop_sliding_hourly_max(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "hourly_max_sliding.sql")
    assert _rounded(result.rows) == expected_hop_hourly_max(data["telemetry"])


def test_cumulate_today_so_far(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "today_so_far.sql")
    assert _rounded(result.rows) == expected_cumulate(data["telemetry"])


def test_top_3_hottest_devices_per_hour(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "top_hottest_devices_per_hour.sql")
    expected = expected_top3_hottest(data["telemetry"])
    assert len(result.rows) == len(expected) >= 9
    assert _rounded(result.rows) == expected


def test_alarms_per_customer_per_day_with_lookup_joins(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "alarms_per_customer_per_day.sql")
    expected = expected_alarms_per_customer(data["alarms"])
    assert any(row[0] == "(unassigned)" for row in expected) and len({row[2] for row in expected}) >= 1
    assert set(result.rows) == expected


def test_silent_devices(sql_setup):
    _settings, session, data = sql_setup
    started = int(time.time() * 1000)
    result = _run_example(session, "silent_devices.sql")
    assert {row[0] for row in result.rows} == {"dev-d", "dev-e"}
    assert set(result.rows) == expected_silent(data["telemetry"], started)


def test_dlq_reasons_per_spec(sql_setup):
    _settings, session, data = sql_setup
    result = _run_example(session, "dlq_reasons_per_spec.sql")
    assert set(result.rows) == expected_dlq(data["dlq"])


def test_every_example_is_checked():
    checked = {"device_5min_avg.sql", "hourly_max_sliding.sql", "today_so_far.sql", "top_hottest_devices_per_hour.sql",
               "alarms_per_customer_per_day.sql", "silent_devices.sql", "dlq_reasons_per_spec.sql"}
    assert {p.name for p in EXAMPLES_DIR.glob("*.sql")} == checked


def test_interactive_prompt_runs_statements_until_quit(sql_setup):
    _settings, session, data = sql_setup
    out = io.StringIO()
    script = "SHOW TABLES;\nSELECT stage, COUNT(*) AS n\n  FROM dlq GROUP BY stage;\nSELECT nope FROM dlq;\nquit;\nSELECT 1;\n"
    interactive(session, bounded=True, max_rows=None, stdin=io.StringIO(script), out=out)
    text = out.getvalue()
    assert "telemetry_readings" in text and "control_cmd" in text
    counts = defaultdict(int)
    for letter in data["dlq"]:
        counts[letter["stage"]] += 1
    for stage, n in counts.items():
        assert any(line.split(" | ") == [stage.ljust(len("spec_selection")), str(n)] for line in text.splitlines()), (stage, text)
    assert "[ERROR]" in text and "nope" in text
    assert text.count("rows)") == 2  # SHOW TABLES and the count; nothing after quit


def test_cli_prints_a_bounded_query_as_a_table(sql_setup, tmp_path, capsys):
    from iotlink.sql_commands import add_sql_command, run_sql_command

    sql_settings, _session, data = sql_setup
    config = tmp_path / "iotlink.yaml"
    config.write_text(yaml.safe_dump({"bootstrap_servers": sql_settings.bootstrap_servers, "postgres_url": sql_settings.postgres_url,
                                      "topics": sql_settings.topics.model_dump()}))
    import argparse

    from jobs.config import connection_options, settings_from_args

    parser = argparse.ArgumentParser()
    add_sql_command(parser.add_subparsers(dest="command"), connection_options())
    args = parser.parse_args(["sql", "--config", str(config), "--bounded", "-e",
                              "SELECT device_id, COUNT(*) AS readings FROM telemetry WHERE device_id = 'dev-d' GROUP BY device_id"])
    assert run_sql_command(args, settings_from_args(args)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    readings = sum(r["device_id"] == "dev-d" for r in data["telemetry"])
    assert lines[-4:] == ["device_id | readings", "----------+---------", f"dev-d     | {readings}", "(1 rows)"]



@pytest.mark.parametrize("direction", ["ASC", "DESC"])
def test_a_bounded_query_keeps_its_order_by(sql_setup, direction):
    _settings, session, data = sql_setup
    result = session.execute(
        "SELECT device_id, COUNT(*) AS readings, MAX(CAST(metrics['tempC'] AS DOUBLE)) AS max_temp "
        f"FROM telemetry GROUP BY device_id ORDER BY max_temp {direction}, device_id"
    )
    hottest = {}
    for record in data["telemetry"]:
        temp = record["metrics"].get("tempC")
        if temp is not None:
            hottest[record["device_id"]] = max(hottest.get(record["device_id"], float("-inf")), float(temp))
    counts = {d: sum(r["device_id"] == d for r in data["telemetry"]) for d in hottest}
    want = sorted(hottest, key=lambda d: (hottest[d] if direction == "ASC" else -hottest[d], d))
    assert result.rows == [(d, counts[d], hottest[d]) for d in want]


def test_each_aggregate_table_reads_its_own_postgresql_table(sql_setup):
    sql_settings, session, _data = sql_setup
    aggregates, quality = ("agg_1m", "agg_5m", "agg_1h"), ("comm_quality_5m", "comm_quality_1h")
    with psycopg.connect(sql_settings.postgres_url, autocommit=True) as conn:
        for n, table in enumerate(aggregates):
            conn.execute(f"INSERT INTO {table} (scope, key, metric, window_start, product_id, count, min, max, sum, avg) "
                         "VALUES ('device', 'like-dev', 'tempC', %s, 'prod-l', %s, 1, 2, 3, 1.5)", (n * 60_000, n + 1))
        for n, table in enumerate(quality):
            conn.execute(f"INSERT INTO {table} (device_id, window_start, product_id, received, expected, missing, longest_gap_ms) "
                         "VALUES ('like-dev', %s, 'prod-l', %s, 10, 1, 5)", (n * 60_000, n + 1))
    for n, table in enumerate(aggregates):
        assert session.execute(f"SELECT window_start, `count` FROM {table} WHERE `key` = 'like-dev'").rows == [(n * 60_000, n + 1)]
    for n, table in enumerate(quality):
        assert session.execute(f"SELECT window_start, received FROM {table} WHERE device_id = 'like-dev'").rows == [(n * 60_000, n + 1)]
