"""Independent computations the sink tests compare the job's PostgreSQL, Iceberg and MongoDB
contents with, and the check that every sink holds exactly what the input makes."""

import math
import statistics
import time
from collections import Counter, defaultdict

import orjson
import psycopg

from connectors.iceberg import open_catalog
from connectors.kafka import read_topic
from connectors.mongo import open_database
from jobs.telemetry_job import decoder_registry_factory
from operators.decode import decode_raw_record
from operators.envelope import parse_envelope
from operators.windows import SIZES, numeric_metrics

HOUR = 3_600_000


def decoded_records(values, settings, deduplicate: bool):
    """The telemetry records the pure decoder makes of raw values (optionally without the
    redelivered duplicates the job's duplicate suppression drops before windows)."""
    registry = decoder_registry_factory(settings)()
    records, seen = [], set()
    for value in values:
        for record in decode_raw_record(value, registry, 0).records:
            identity = (record["device_id"], record["device_ts"], repr(sorted(record["metrics"].items())))
            if deduplicate and identity in seen:
                continue
            seen.add(identity)
            records.append(record)
    return records


def expected_kafka_outputs(values, settings):
    """What the pure decoder (same specs as the job) makes of raw values, as the job's Kafka
    outputs hold it: telemetry (device, device time, metrics JSON) and dead letters (reason,
    payload), each a multiset."""
    registry = decoder_registry_factory(settings)()
    telemetry, dead = Counter(), Counter()
    for value in values:
        out = decode_raw_record(value, registry, 0)
        for record in out.records:
            telemetry[(record["device_id"], record["device_ts"], orjson.dumps(record["metrics"]))] += 1
        for letter in out.dead_letters:
            dead[(letter["reason_code"], letter["payload"])] += 1
    return telemetry, dead


def kafka_outputs(settings, received_ats=None, read_committed=True):
    """The job's telemetry and dead letters on Kafka, as :func:`expected_kafka_outputs` counts
    them: all of the topics, or (on topics other runs write too) those whose envelopes were
    received at one of ``received_ats`` (each run stamps its own)."""
    telemetry = Counter()
    for value in read_topic(settings.bootstrap_servers, settings.topics.telemetry, read_committed=read_committed):
        record = orjson.loads(value)
        if received_ats is None or record["ingest_ts"] in received_ats:
            telemetry[(record["device_id"], record["device_ts"], orjson.dumps(record["metrics"]))] += 1
    return telemetry, kafka_dead_letters(settings, received_ats, read_committed)


def kafka_dead_letters(settings, received_ats=None, read_committed=True):
    """The dead letters on Kafka (reason, payload), selected as :func:`kafka_outputs` does."""
    dead = Counter()
    for letter in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.dlq, read_committed=read_committed)):
        if received_ats is None or letter["received_at"] in received_ats:
            dead[(letter["reason_code"], letter["payload"])] += 1
    return dead


def expected_aggregates(records):
    """{(table, scope, key, metric, window_start): (count, min, max, sum, avg, stddev, first, last)}."""
    groups = defaultdict(list)
    for r in records:
        for metric, value in numeric_metrics(r["metrics"]).items():
            for size_name, size in SIZES.items():
                start = r["device_ts"] - r["device_ts"] % size
                for scope, key in (("device", r["device_id"]), ("product", r["product_id"])):
                    groups[(f"agg_{size_name}", scope, key, metric, start)].append((r["device_ts"], value))
    out = {}
    for key, readings in groups.items():
        values = [v for _, v in readings]
        out[key] = (
            len(values), min(values), max(values), math.fsum(values), math.fsum(values) / len(values),
            statistics.stdev(values) if len(values) > 1 else None, min(readings)[1], max(readings)[1],
        )
    return out


def close(a, b):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def postgres_aggregates(settings, devices, products, since, until):
    """The agg_* rows of these devices and products with window starts in [since, until)."""
    got = {}
    with psycopg.connect(settings.postgres_url) as conn:
        for table in ("agg_1m", "agg_5m", "agg_1h"):
            rows = conn.execute(
                f"SELECT scope, key, metric, window_start, count, min, max, sum, avg, stddev, first, last FROM {table} "
                "WHERE ((scope = 'device' AND key = ANY(%s)) OR (scope = 'product' AND key = ANY(%s))) "
                "AND window_start >= %s AND window_start < %s",
                (sorted(devices), sorted(products), since, until),
            ).fetchall()
            for scope, key, metric, start, *stats in rows:
                got[(table, scope, key, metric, start)] = tuple(stats)
    return got


def aggregate_differences(got, want) -> str | None:
    """None when every window is there with the right values, else what differs."""
    missing, extra = set(want) - set(got), set(got) - set(want)
    if missing or extra:
        return f"{len(missing)} windows missing (e.g. {sorted(missing)[:2]}), {len(extra)} extra (e.g. {sorted(extra)[:2]})"
    wrong = {k: (got[k], want[k]) for k in want if not all(close(a, b) for a, b in zip(got[k], want[k], strict=True))}
    return f"{len(wrong)} windows with wrong values, e.g. {list(wrong.items())[:3]}" if wrong else None


def telemetry_identity(device_id, device_ts_ms, metrics) -> tuple:
    return device_id, device_ts_ms, orjson.dumps(metrics, option=orjson.OPT_SORT_KEYS)


def expected_iceberg_telemetry(records) -> Counter:
    return Counter(telemetry_identity(r["device_id"], r["device_ts"], r["metrics"]) for r in records)


def iceberg_telemetry(table, topic) -> Counter:
    """Multiset of (device, device time ms, metrics) archived from one raw topic."""
    from pyiceberg.expressions import EqualTo

    data = table.scan(row_filter=EqualTo("source_topic", topic)).to_arrow()
    out = Counter()
    for device_id, ts, metrics in zip(
        data["device_id"].to_pylist(), data["device_ts"].cast("int64").to_pylist(), data["metrics_json"].to_pylist(), strict=True
    ):
        out[telemetry_identity(device_id, ts // 1000, orjson.loads(metrics))] += 1
    return out


def expected_raw_payloads(values) -> Counter:
    """Multiset of (received_at ms, device id, original payload bytes) of the raw values sent."""
    out = Counter()
    for value in values:
        envelope = parse_envelope(value)
        out[(envelope.received_at, envelope.device_id, envelope.payload)] += 1
    return out


def iceberg_raw_payloads(table, topic) -> Counter:
    from pyiceberg.expressions import EqualTo

    data = table.scan(row_filter=EqualTo("source_topic", topic)).to_arrow()
    return Counter(zip(
        [ts // 1000 for ts in data["received_at"].cast("int64").to_pylist()],
        data["device_id"].to_pylist(), data["payload"].to_pylist(), strict=True,
    ))


def iceberg_hourly(table, since, until):
    """The newest version of each hourly aggregate in Iceberg ``agg_1h`` with window start in
    [since, until), as {(agg_1h, scope, key, metric, start ms): stats}; and how many rows repeat
    the version just before them (a replay appended twice)."""
    data = sorted(table.scan().to_arrow().to_pylist(), key=lambda row: row["emitted_at"])
    newest, repeats = {}, 0
    for row in data:
        start = int(row["window_start"].timestamp() * 1000)
        if not since <= start < until:
            continue
        key = ("agg_1h", row["scope"], row["key"], row["metric"], start)
        stats = tuple(row[c] for c in ("count", "min", "max", "sum", "avg", "stddev", "first", "last"))
        if key in newest and newest[key] == stats:
            repeats += 1  # the same version twice in a row: a replay appended again
        newest[key] = stats
    return newest, repeats


def hot_layer_differences(db, records, unique, devices, alarm_events, want, since, until) -> str | None:
    """Compares the MongoDB hot layer with the input: each device's state is its newest reading,
    ``alarms_active`` (and each device's
    ``active_alarms``) the alarms raised and not closed according to ``alarm_events`` (from
    PostgreSQL: (alarm_id, event, device_id) rows), and the product summaries equal the
    statistics of the expected aggregates (``want``, as :func:`expected_aggregates`)."""
    from connectors.mongo import day_of

    devices = set(devices)
    newest = {}
    for r in records:
        if r["device_id"] in devices and (r["device_id"] not in newest or r["device_ts"] > newest[r["device_id"]]["device_ts"]):
            newest[r["device_id"]] = r
    states = {d["_id"]: d for d in db.device_state.find({"_id": {"$in": sorted(devices)}})}
    for device_id, r in newest.items():
        state = states.get(device_id)
        if state is None or state.get("last_device_ts") != r["device_ts"] or state.get("metrics") != r["metrics"]:
            got = state and (state.get("last_device_ts"), state.get("metrics"))
            return f"device_state of {device_id}: {got}, want {(r['device_ts'], r['metrics'])}"
    closed = {a for a, e, _ in alarm_events if e in ("CLEARED", "AUTO_RESOLVED")}
    want_active = {a: d for a, e, d in alarm_events if e == "RAISED" and a not in closed}
    active = {d["_id"]: d["device_id"] for d in db.alarms_active.find({"device_id": {"$in": sorted(devices)}})}
    if active != want_active:
        missing = sorted(set(want_active) - set(active))
        events = [(a, e) for a, e, _ in alarm_events if a in missing]
        return f"alarms_active: {sorted(active)} != {sorted(want_active)} (events of the missing: {events})"
    attached = {a: device_id for device_id, state in states.items() for a in (state.get("active_alarms") or {})}
    if attached != want_active:
        return f"device_state.active_alarms: {sorted(attached)} != {sorted(want_active)}"
    hours = {(d["product_id"], d["window_start_ts"]): d["metrics"] for d in db.product_summary_1h.find()}
    checked = 0
    for (table, scope, key, metric, start), (count, low, high, total, *_rest) in want.items():
        if table != "agg_1h" or scope != "product" or not since <= start < until:
            continue
        got = (hours.get((key, start)) or {}).get(metric)
        if got is None or (got["count"], got["min"], got["max"]) != (count, low, high) or not close(got["sum"], total):
            return f"product_summary_1h {key} {start} {metric}: {got} != {(count, low, high, total)}"
        checked += 1
    if not checked:
        return "no product hour was compared"
    daily = defaultdict(list)  # (the devices' days hold no other devices' readings)
    for r in unique:
        if r["device_id"] in devices:
            for metric, value in numeric_metrics(r["metrics"]).items():
                daily[(r["product_id"], day_of(r["device_ts"]), metric)].append(value)
    days = {(d["product_id"], d["day"]): d.get("metrics") or {} for d in db.product_summary_1d.find()}
    for (product, day, metric), values in daily.items():
        got = days.get((product, day), {}).get(metric)
        want_day = (len(values), min(values), max(values))
        if got is None or (got["count"], got["min"], got["max"]) != want_day or not close(got["sum"], math.fsum(values)):
            return f"product_summary_1d {product} {day} {metric}: {got} != {want_day} sum {math.fsum(values)}"
    return None


def assert_sinks_hold_exactly(settings, values, fleet, since, until):
    """Asserts that every sink holds exactly what the raw ``values`` make, nothing lost or doubled:
    Kafka ``telemetry`` and ``dlq`` read committed hold each decoded record and each dead letter
    once, the PostgreSQL aggregates of the fleet's windows in [since, until) equal the independent
    computation, Iceberg ``raw_payloads`` and ``telemetry`` hold each raw record and each decoded
    record of the raw topic once, Iceberg ``agg_1h`` holds the same hours with no repeated
    version, PostgreSQL ``alarm_events``, Kafka ``alarms`` read committed and Iceberg
    ``alarm_events`` hold the same events once each, and the MongoDB hot layer
    (``settings.mongo_url``) matches the input. The topics must be the run's own.

    Returns:
        The Iceberg ``raw_payloads`` table, for further checks.
    """
    records = decoded_records(values, settings, deduplicate=False)
    unique = decoded_records(values, settings, deduplicate=True)
    assert len(values) > 3000 and len(unique) > 2000
    (want_kafka, want_dead), (got_kafka, got_dead) = expected_kafka_outputs(values, settings), kafka_outputs(settings)
    assert got_kafka == want_kafka, (
        f"Kafka telemetry (read committed): {sum((want_kafka - got_kafka).values())} missing, e.g. {list(want_kafka - got_kafka)[:2]}; "
        f"{sum((got_kafka - want_kafka).values())} extra, e.g. {list(got_kafka - want_kafka)[:2]}"
    )
    assert got_dead == want_dead, f"Kafka dead letters: {sum((want_dead - got_dead).values())} missing, {sum((got_dead - want_dead).values())} extra"
    want = {k: v for k, v in expected_aggregates(unique).items() if since <= k[4] < until}
    got = postgres_aggregates(settings, {d.device_id for d in fleet}, {r["product_id"] for r in unique}, since, until)
    assert len(want) > 500
    problem = aggregate_differences(got, want)
    assert problem is None, problem
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    raw = catalog.load_table("iotlink.raw_payloads")
    got_raw, want_raw = iceberg_raw_payloads(raw, settings.topics.raw), expected_raw_payloads(values)
    assert got_raw == want_raw, (
        f"raw_payloads: {sum((got_raw - want_raw).values())} extra, e.g. {list(got_raw - want_raw)[:2]}; "
        f"{sum((want_raw - got_raw).values())} missing, e.g. {list(want_raw - got_raw)[:2]}"
    )
    telemetry = catalog.load_table("iotlink.telemetry")
    got_telemetry, want_telemetry = iceberg_telemetry(telemetry, settings.topics.raw), expected_iceberg_telemetry(records)
    assert got_telemetry == want_telemetry, (
        f"telemetry: extra {list((got_telemetry - want_telemetry).items())[:3]}, missing {list((want_telemetry - got_telemetry).items())[:3]}"
    )
    hourly, repeats = iceberg_hourly(catalog.load_table("iotlink.agg_1h"), since, until)
    want_hourly = {k: v for k, v in want.items() if k[0] == "agg_1h"}
    assert repeats == 0
    problem = aggregate_differences(hourly, want_hourly)
    assert problem is None, f"iceberg agg_1h: {problem}"
    # (The stores may hold other runs' events of the same device ids, on other days.)
    fleet_ids = {d.device_id for d in fleet}
    with psycopg.connect(settings.postgres_url) as conn:
        postgres_events = Counter(conn.execute(
            "SELECT alarm_id, event, device_ts FROM alarm_events WHERE device_id = ANY(%s) AND device_ts >= %s AND device_ts < %s",
            (sorted(fleet_ids), since, until),
        ).fetchall())
    events = catalog.load_table("iotlink.alarm_events").scan().to_arrow()
    iceberg_events = Counter(
        (a, e, ts // 1000) for a, e, d, ts in zip(events["alarm_id"].to_pylist(), events["event"].to_pylist(),
                                              events["device_id"].to_pylist(), events["device_ts"].cast("int64").to_pylist(), strict=True)
        if d in fleet_ids and since <= ts // 1000 < until
    )
    assert postgres_events, "no alarm events in PostgreSQL"
    kafka_events = Counter((e["alarm_id"], e["event"], e["device_ts"]) for e in map(orjson.loads, read_topic(
        settings.bootstrap_servers, settings.topics.alarms)) if e.get("alarm_id") and e.get("device_id") in fleet_ids
        and since <= e["device_ts"] < until)
    assert kafka_events == postgres_events, (
        f"Kafka alarms (read committed): extra {list((kafka_events - postgres_events).items())[:3]}, "
        f"missing {list((postgres_events - kafka_events).items())[:3]}"
    )
    assert all(n == 1 for n in postgres_events.values()), f"alarm events twice in PostgreSQL: {[e for e, n in postgres_events.items() if n > 1][:3]}"
    assert iceberg_events == postgres_events, (
        f"Iceberg alarm_events: extra {list((iceberg_events - postgres_events).items())[:3]}, "
        f"missing {list((postgres_events - iceberg_events).items())[:3]}"
    )
    with psycopg.connect(settings.postgres_url) as conn:
        # (The database is shared: other tests' fleets have the same device ids, on other days.)
        alarm_events = conn.execute(
            "SELECT alarm_id, event, device_id FROM alarm_events WHERE device_id = ANY(%s) AND device_ts >= %s AND device_ts < %s",
            (sorted(d.device_id for d in fleet), since, until),
        ).fetchall()
    problem = hot_layer_differences(open_database(settings.mongo_url), records, unique, [d.device_id for d in fleet], alarm_events,
                                    want, since, until)
    assert problem is None, f"mongo: {problem}"
    return raw


def sinks_hold_exactly(settings, values, fleet, since, until) -> bool:
    """:func:`assert_sinks_hold_exactly` as a condition to poll (the caller asserts afterwards,
    which says what is missing)."""
    try:
        assert_sinks_hold_exactly(settings, values, fleet, since, until)
    except AssertionError:
        return False
    return True


def wait_until_sinks_hold_exactly(settings, values, fleet, since, until, timeout_s: float = 120) -> None:
    """Polls :func:`sinks_hold_exactly` until it holds, for at most ``timeout_s``; then asserts
    (so a failure says what is missing or doubled)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not sinks_hold_exactly(settings, values, fleet, since, until):
        time.sleep(2)
    assert_sinks_hold_exactly(settings, values, fleet, since, until)
