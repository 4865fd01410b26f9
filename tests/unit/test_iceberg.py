"""Iceberg cold layer without Flink: table creation, row shapes, commit markers and the
skipping of already-committed items, on a real pyiceberg SQL catalog in a temporary directory."""

import base64
from collections import Counter

import orjson
import pytest

from connectors.iceberg import (
    IcebergArchiveWriter,
    IcebergHistoryWriter,
    archive_item,
    committed_markers,
    init_tables,
    java_string_hash,
    open_catalog,
    query_tables,
    raw_item_text,
    source_partition_of,
)

T = 1_756_653_767_000


@pytest.fixture
def catalog_args(tmp_path):
    (tmp_path / "wh").mkdir()
    uri, warehouse = f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "wh").as_uri()
    init_tables(open_catalog(uri, warehouse))
    return uri, warehouse


def envelope(device, ts, payload=b'{"a":1}'):
    return orjson.dumps({"v": 1, "source": "kafka", "received_at": ts, "device_id": device, "format": "json",
                         "payload_encoding": "base64", "payload": base64.b64encode(payload).decode()})


def telemetry(device, ts, **metrics):
    return "t" + orjson.dumps({"device_id": device, "product_id": "prod-a", "device_ts": ts, "ingest_ts": ts + 5,
                               "metrics": metrics}).decode()


def test_java_string_hash_matches_java():
    # Values printed by jshell: "iotlink.raw".hashCode() etc. (signed ints).
    for text, java in (("iotlink.raw", 1942253122), ("it-eo-crash.iotlink.raw", -1719169158), ("héllo☃", -1099020811)):
        assert java_string_hash(text) == java & 0xFFFFFFFF


@pytest.mark.parametrize("topic", ["iotlink.raw", "it-eo-crash.iotlink.raw", "x"])
def test_source_partition_inverts_the_kafka_source_split_assignment(topic):
    n = 4
    start = ((java_string_hash(topic) * 31) & 0x7FFFFFFF) % n
    owner = {p: (start + p) % n for p in range(n)}  # KafkaSourceEnumerator.getSplitOwner
    assert {source_partition_of(topic, owner[p], n): p for p in range(n)} == {p: p for p in range(n)}


def test_init_is_idempotent(catalog_args):
    catalog = open_catalog(*catalog_args)
    assert set(init_tables(catalog).values()) == {"exists"}
    assert {t[1] for t in catalog.list_tables("iotlink")} == {"raw_payloads", "telemetry", "alarm_events", "agg_1h"}


def test_archive_skips_what_is_committed_and_keeps_markers_per_partition(catalog_args):
    items = [
        archive_item(0, 1, raw_item_text(envelope("d1", T, b"\x00\xffbinary"))), archive_item(0, 2, telemetry("d1", T, t=1.5)),
        archive_item(1, 1, raw_item_text(b"\xff not an envelope")), archive_item(1, 2, telemetry("d2", T, t=2.0, s="x")),
    ]
    first = IcebergArchiveWriter(*catalog_args, topic="raw")
    first.write_batch(items)
    assert (first.stats.written, first.stats.skipped) == (4, 0)
    # A restored writer gets the same items again (same numbers) plus one new one.
    again = IcebergArchiveWriter(*catalog_args, topic="raw")
    again.write_batch([*items, archive_item(0, 3, telemetry("d1", T + 1000, t=1.6))])
    assert (again.stats.written, again.stats.skipped) == (1, 4)
    # Another topic's items have markers of their own.
    other = IcebergArchiveWriter(*catalog_args, topic="other")
    other.write_batch([archive_item(0, 1, telemetry("d9", T, t=9.0))])
    catalog = open_catalog(*catalog_args)
    table = catalog.load_table("iotlink.telemetry")
    assert committed_markers(table) == {"raw/0": 3, "raw/1": 2, "other/0": 1}
    rows = table.scan().to_arrow().to_pylist()
    assert Counter((r["device_id"], r["source_topic"], r["source_partition"], r["source_seq"]) for r in rows) == Counter(
        {("d1", "raw", 0, 2): 1, ("d2", "raw", 1, 2): 1, ("d1", "raw", 0, 3): 1, ("d9", "other", 0, 1): 1}
    )
    d2 = next(r for r in rows if r["device_id"] == "d2")
    assert d2["metrics"] == [("t", 2.0)] and orjson.loads(d2["metrics_json"]) == {"t": 2.0, "s": "x"}
    raw = {r["source_seq"] if r["source_partition"] == 0 else -1: r for r in catalog.load_table("iotlink.raw_payloads").scan().to_arrow().to_pylist()}
    assert raw[1]["payload"] == b"\x00\xffbinary" and orjson.loads(raw[1]["envelope"])["device_id"] == "d1"
    assert raw[-1]["payload"] == b"\xff not an envelope" and "not a JSON envelope" in raw[-1]["envelope_error"]


def test_history_appends_corrections_and_skips_replays(catalog_args):
    writer = IcebergHistoryWriter(*catalog_args)
    event = {"event": "RAISED", "alarm_id": "a1", "device_id": "d", "product_id": "p", "rule_id": "r", "rule_version": "1",
             "severity": "high", "device_ts": T + 123, "values": {"t": 81}}
    window = {"scope": "device", "key": "d", "product_id": "p", "size": "1h", "start": T - T % 3_600_000, "refire": False,
              "partial": {"t": [2, 3.0, 1.0, 2.0, 1.5, 0.5, T, 1.0, T + 1, 2.0]}}
    comm = {"kind": "comm", "scope": "comm", "key": "d", "size": "1h", "start": window["start"], "received": 2}
    batch = [orjson.dumps(x).decode() for x in (event, window, {**window, "size": "5m"}, comm)]
    writer.write_batch(batch)
    writer.write_batch(batch)  # a replay after a restore
    corrected = {**window, "refire": True, "partial": {"t": [3, 6.0, 1.0, 3.0, 2.0, 1.0, T, 1.0, T + 2, 3.0]}}
    writer.write_batch([orjson.dumps(corrected).decode()])
    assert (writer.stats.written, writer.stats.skipped) == (3, 2)
    catalog = open_catalog(*catalog_args)
    _, rows = query_tables(catalog, "SELECT count, sum FROM agg_1h ORDER BY emitted_at")
    assert rows == [(2, 3.0), (3, 6.0)]
    _, events = query_tables(catalog, "SELECT alarm_id, event, epoch_ms(device_ts) FROM alarm_events")
    assert events == [("a1", "RAISED", T + 123)]
