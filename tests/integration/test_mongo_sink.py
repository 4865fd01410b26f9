"""The hot-layer writer against a MongoDB wire-protocol server: collections and indexes,
out-of-order and replayed input, the alarm lifecycle, product summaries, and a server outage."""

import random
import threading
import time

import pytest

from connectors.mongo import (
    MongoHotWriter,
    alarm_ops,
    hot_layer_ops,
    init_collections,
    open_database,
    summary_ops,
    telemetry_ops,
)
from iotlink.stack import EmbeddedStack, free_port
from jobs.config import Settings, StackPorts
from operators.windows import MetricPartial, WindowResult, window_row

pytestmark = pytest.mark.integration
T = 1_772_359_200_000  # 2026-03-01T10:00:00Z
HOUR = 3_600_000
NOW = int(time.time() * 1000) // HOUR * HOUR


def database_url(mongo_url, name):
    return mongo_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def db_url(mongo_url, request):
    url = database_url(mongo_url, "t_" + request.node.name.replace("[", "_").replace("]", "")[:40])
    db = open_database(url)
    for name in db.list_collection_names():
        db.drop_collection(name)
    init_collections(db)
    return url


def dump(db):
    return {name: sorted(db[name].find(), key=lambda d: str(d["_id"])) for name in sorted(db.list_collection_names())}


def test_init_creates_collections_and_indexes_idempotently(mongo_url):
    db = open_database(database_url(mongo_url, "t_init"))
    for name in db.list_collection_names():
        db.drop_collection(name)
    first = init_collections(db)
    assert first == {"device_state": "created", "alarms_active": "created", "product_summary_1h": "created", "product_summary_1d": "created"}
    assert set(init_collections(db).values()) == {"exists"}
    assert len(db.device_state.index_information()) >= 3  # _id, product_id, last_device_ts


def readings(devices=8, per_device=40, seed=5):
    rng = random.Random(seed)
    out = []
    for d in range(devices):
        for i in range(per_device):
            ts = NOW + i * 2000 + rng.randrange(0, 500)
            out.append({"device_id": f"dev-{d}", "product_id": "prod-a", "device_ts": ts, "ingest_ts": ts + 300,
                        "metrics": {"t": round(rng.uniform(10, 90), 2), "ok": True, "mode": "auto"}})
    return out


def test_out_of_order_and_replayed_readings_leave_the_newest_state(db_url):
    records = readings()
    arrival = records + records[::7]  # redelivered duplicates
    random.Random(9).shuffle(arrival)
    writer = MongoHotWriter(db_url)
    try:
        for i in range(0, len(arrival), 37):
            writer.write_batch(telemetry_ops(arrival[i:i + 37]))
        db = open_database(db_url)
        newest = {}
        for r in records:
            if r["device_id"] not in newest or r["device_ts"] > newest[r["device_id"]]["device_ts"]:
                newest[r["device_id"]] = r
        states = {d["_id"]: d for d in db.device_state.find()}
        assert set(states) == set(newest)
        for device_id, r in newest.items():
            assert states[device_id]["last_device_ts"] == r["device_ts"]
            assert states[device_id]["metrics"] == r["metrics"]
            assert states[device_id]["last_ingest_ts"] == r["ingest_ts"]
        before = dump(db)
        # A restored job replays what it wrote after its last checkpoint: nothing changes.
        for i in range(0, len(arrival) // 2, 50):
            writer.write_batch(telemetry_ops(arrival[i:i + 50]))
        assert dump(db) == before
        assert writer.stats.retries == 0
    finally:
        writer.close()


def alarm_event(kind, alarm_id, device, ts, severity="high"):
    return {"event": kind, "alarm_id": alarm_id, "device_id": device, "product_id": "prod-a", "rule_id": f"r-{alarm_id}",
            "rule_version": "1", "severity": severity, "route": "notify", "device_ts": ts, "started_ts": ts, "values": {"t": 91}}


def test_alarms_active_follows_the_lifecycle_and_survives_a_replay(db_url):
    events = [
        alarm_event("RAISED", "a1", "d1", T), alarm_event("RAISED", "a2", "d1", T + 1), alarm_event("RAISED", "a3", "d2", T + 2),
        alarm_event("SEVERITY_CHANGED", "a2", "d1", T + 3, severity="critical"), alarm_event("CLEARED", "a1", "d1", T + 4),
        alarm_event("ACKNOWLEDGED", "a3", "d2", T + 5), alarm_event("RAISED", "a4", "d3", T + 6),
        alarm_event("AUTO_RESOLVED", "a4", "d3", T + 7),
    ]
    writer = MongoHotWriter(db_url)
    try:
        writer.write_batch(alarm_ops(events[:3]))
        writer.write_batch(alarm_ops(events[3:]))
        db = open_database(db_url)
        active = {d["_id"]: d for d in db.alarms_active.find()}
        assert set(active) == {"a2", "a3"}
        assert active["a2"]["severity"] == "critical" and active["a2"]["last_event"] == "SEVERITY_CHANGED"
        # (bool() because the wire-protocol stand-in returns booleans set by $set as 0/1)
        assert bool(active["a3"]["acknowledged"]) and not bool(active["a2"]["acknowledged"]) and active["a3"]["device_id"] == "d2"
        states = {d["_id"]: d for d in db.device_state.find()}
        assert set(states["d1"]["active_alarms"]) == {"a2"} and states["d1"]["active_alarms"]["a2"]["severity"] == "critical"
        assert set(states["d2"]["active_alarms"]) == {"a3"}
        assert states["d3"].get("active_alarms", {}) == {}
        before = dump(db)
        writer.write_batch(alarm_ops(events[2:]))  # replayed after a restore
        assert dump(db) == before
    finally:
        writer.close()


def hour_row(product, start, values):
    partial = {"t": MetricPartial.of(start, values[0])}
    for i, v in enumerate(values[1:], 1):
        partial["t"].add(start + i, v)
    return window_row("product", product, product, WindowResult("1h", start, partial))


def test_product_summaries_per_hour_and_day_with_a_corrected_hour(db_url):
    hours = {0: [1.0, 2.0, 3.0], 1: [10.0], 2: [4.0, 4.0]}
    rows = [hour_row("prod-a", T + h * HOUR, v) for h, v in hours.items()]
    writer = MongoHotWriter(db_url)
    try:
        writer.write_batch(summary_ops(rows[:2]))
        writer.write_batch(summary_ops(rows[2:]))
        db = open_database(db_url)
        assert db.product_summary_1h.count_documents({}) == 3
        assert db.product_summary_1h.find_one({"_id": f"prod-a|{T + HOUR}"})["metrics"]["t"]["max"] == 10.0
        day = db.product_summary_1d.find_one({"_id": "prod-a|2026-03-01"})
        assert day["hours_reported"] == 3
        assert day["metrics"]["t"]["count"] == 6 and day["metrics"]["t"]["sum"] == 24.0 and day["metrics"]["t"]["max"] == 10.0
        # A late record corrects hour 1: the window fires again and the day follows.
        writer.write_batch(summary_ops([hour_row("prod-a", T + HOUR, [10.0, 30.0])]))
        day = db.product_summary_1d.find_one({"_id": "prod-a|2026-03-01"})
        assert day["metrics"]["t"]["count"] == 7 and day["metrics"]["t"]["sum"] == 54.0 and day["metrics"]["t"]["max"] == 30.0
        assert db.product_summary_1h.count_documents({}) == 3
    finally:
        writer.close()


def test_an_unreachable_server_delays_the_batch_and_loses_nothing(tmp_path):
    port = free_port()
    settings = Settings(data_dir=tmp_path, ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=port))
    server = EmbeddedStack(settings, ("mongo",))
    server.start()
    url = server.endpoints["mongo"]
    init_collections(open_database(url))
    records = readings(devices=3, per_device=10)
    writer = MongoHotWriter(url, max_backoff_s=1.0)
    try:
        writer.write_batch(telemetry_ops(records[:10]))
        server.stop()
        done = threading.Event()
        errors = []

        def write():
            try:
                writer.write_batch(telemetry_ops(records[10:]))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while writer.stats.retries < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert writer.stats.retries >= 2 and not done.is_set(), "the writer neither retried nor waited"
        server.start()  # same port and data directory
        assert done.wait(90), "the batch was not written after the server came back"
        assert not errors
        db = open_database(url)
        newest = {}
        for r in records:
            if r["device_id"] not in newest or r["device_ts"] > newest[r["device_id"]]["device_ts"]:
                newest[r["device_id"]] = r
        assert {d["_id"]: d["last_device_ts"] for d in db.device_state.find()} == {d: r["device_ts"] for d, r in newest.items()}
    finally:
        writer.close()
        server.stop()


def test_a_mixed_batch_from_the_job(db_url):
    import orjson

    records = readings(devices=2, per_device=3)
    values = [orjson.dumps(v).decode() for v in records]
    values.append(orjson.dumps(alarm_event("RAISED", "b1", "dev-0", NOW + 10)).decode())
    values.append(orjson.dumps({"device_id": "dev-1", "failed_at": NOW + 99, "reason_code": "crc_mismatch", "reason": "crc 0x1 != 0x2",
                                "stage": "decode"}).decode())
    values.append(orjson.dumps(hour_row("prod-a", T, [1.0])).decode())
    writer = MongoHotWriter(db_url)
    try:
        writer.write_batch(hot_layer_ops(values))
    finally:
        writer.close()
    db = open_database(db_url)
    states = {d["_id"]: d for d in db.device_state.find()}
    assert set(states["dev-0"]["active_alarms"]) == {"b1"} and states["dev-0"]["device_id"] == "dev-0"
    assert states["dev-1"]["quality"]["last_rejection"]["reason_code"] == "crc_mismatch"
    assert states["dev-1"]["metrics"] == max((r for r in records if r["device_id"] == "dev-1"), key=lambda r: r["device_ts"])["metrics"]
    assert db.device_state.count_documents({}) == 2 and db.product_summary_1d.count_documents({}) == 1
