"""The Java operators of jvm/functions that carry records past Python (jobs/java_operators.py,
jobs/archive.py), run in a small bounded Flink job: duplicate suppression, the aggregate rows of
readings and dead letters, the lateness rule, the readings that go to the alarm rules, and the
Iceberg archive's rows."""

import sys

import orjson
import pytest
from pyflink.common import Configuration, Types
from pyflink.datastream import OutputTag, ProcessFunction, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from connectors.jars import pipeline_jars_option
from jobs.archive import RAW_ROW_COLUMNS, TELEMETRY_ROW_COLUMNS, java_rows
from jobs.connector_classpath import make_connector_jars_visible
from jobs.java_operators import deduplicate, device_letters, reading_rows, rejection_rows, ruled_readings, side_output, sink_batches
from jobs.telemetry_functions import TELEMETRY_TUPLE
from jobs.telemetry_job import export_python_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env():
    export_python_path()
    config = Configuration()
    config.set_string("pipeline.jars", pipeline_jars_option())
    config.set_string("rest.port", "0")
    config.set_string("python.execution-mode", "thread")
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    environment = StreamExecutionEnvironment.get_execution_environment(config)
    environment.set_parallelism(1)
    make_connector_jars_visible()
    return environment


def telemetry(device_id: str, device_ts: int, metrics: dict, ingest_ts: int = 1) -> tuple:
    record = {"device_id": device_id, "product_id": "prod-a", "device_ts": device_ts, "ingest_ts": ingest_ts, "metrics": metrics}
    return device_id, device_ts, orjson.dumps(record).decode()


def collect(stream) -> list:
    with stream.execute_and_collect() as results:
        return list(results)


def test_a_redelivered_reading_is_dropped_whatever_its_receive_time_and_key_order(env):
    first = telemetry("dev-1", 1_000, {"a": 1.5, "b": 2, "c": {"y": 1, "x": [1, 2]}})
    items = [
        first,
        telemetry("dev-1", 1_000, {"c": {"x": [1, 2], "y": 1}, "b": 2, "a": 1.5}, ingest_ts=99),  # redelivery
        telemetry("dev-1", 1_001, {"a": 1.5, "b": 2, "c": {"y": 1, "x": [1, 2]}}),  # another time
        telemetry("dev-2", 1_000, {"a": 1.5, "b": 2, "c": {"y": 1, "x": [1, 2]}}),  # another device
        telemetry("dev-1", 1_000, {"a": 1.5, "b": 3, "c": {"y": 1, "x": [1, 2]}}),  # another value
        telemetry("dev-1", 1_000, {"a": 1.5, "b": 2, "c": {"y": 1, "x": [2, 1]}}),  # another order inside a list
        telemetry("dev-1", 1_000, {"A": 1.5, "b": 2, "c": {"y": 1, "x": [1, 2]}}),  # another name
    ]
    kept = collect(deduplicate(env.from_collection(items, TELEMETRY_TUPLE), ttl_ms=60_000))
    assert sorted(tuple(t) for t in kept) == sorted(items[:1] + items[2:])


def test_a_reading_is_one_row_with_its_finite_numeric_metrics(env):
    metrics_json = '{"tempC":21.5,"count":3,"ok":true,"mode":"eco","huge":1e400,"big":1' + "0" * 400 + ',"exact":9007199254740993}'
    text = '{"device_id":"dev-1","product_id":"prod-a","device_ts":1000,"metrics":' + metrics_json + "}"
    items = [("dev-1", 1_000, text), telemetry("dev-2", 5, {"mode": "eco"}) ]
    items[1] = ("dev-2", 5, items[1][2].replace('"product_id":"prod-a",', ""))
    rows = collect(reading_rows(env.from_collection(items, TELEMETRY_TUPLE), 300_000, {"dev-1": 60_000}, OutputTag("late", Types.STRING())))
    got = {row[1]: tuple(row) for row in rows}
    assert got["dev-1"] == ("reading", "dev-1", "prod-a", 1_000, {"tempC": 21.5, "count": 3.0, "exact": float(2**53 + 1)}, 60_000)
    # No numeric metric, no product: still a received reading.
    assert got["dev-2"] == ("reading", "dev-2", None, 5, {}, None)


def test_dead_letters_count_by_receive_time_and_only_with_a_device(env):
    letters = [
        {"device_id": "dev-9", "product_id": "prod-a", "received_at": 7_000},
        {"device_id": "dev-8", "received_at": "soon"},
        {"device_id": None, "received_at": 1},
        {"device_id": ["a"], "received_at": 1},
        {"device_id": "", "received_at": 1},
    ]
    texts = [orjson.dumps(letter).decode() for letter in letters] + ["not json"]
    t_env = StreamTableEnvironment.create(env)
    table = t_env.from_data_stream(rejection_rows(env.from_collection(texts, Types.STRING())))
    # (Through SQL: PyFlink's collect cannot hand a null map over to Python.)
    query = f"SELECT kind, device_id, product_id, ts, metrics IS NULL, interval_ms IS NULL FROM {table}"
    with t_env.sql_query(query).execute().collect() as results:
        rows = {row[1]: tuple(row) for row in results}
    assert set(rows) == {"dev-9", "dev-8"}
    assert rows["dev-9"] == ("rejected", "dev-9", "prod-a", 7_000, True, True)
    assert rows["dev-8"][3] > 1_700_000_000_000  # no receive time: counted now


def test_too_late_means_the_minute_ended_more_than_the_lateness_before_the_watermark(env):
    too_late = get_gateway().jvm.io.iotlink.flink.ReadingRows.tooLate
    minute_end = 120_000  # a reading at 61 s belongs to the minute [60 s, 120 s)
    assert not too_late(61_000, minute_end + 300_000 - 2, 300_000)
    assert too_late(61_000, minute_end + 300_000 - 1, 300_000)
    assert not too_late(61_000, -(2**63), 300_000)  # before the first watermark nothing is late
    assert too_late(-61_000, 300_000, 0)  # device times before 1970 floor to their own minute


def test_sink_batches_hand_python_whole_batches_numbered_in_order(env):
    items_tag = OutputTag("items", Types.STRING())

    # (Defined here so that they are pickled by value: the test module is not importable in Flink's
    # interpreter.)
    class TwoItemsEach(ProcessFunction):
        """Like the decoder: side-output items for a sink, as a Python operator hands them to Java."""

        def process_element(self, value, ctx):
            yield items_tag, "r" + value
            yield items_tag, "t" + value

    class ShowBatch(ProcessFunction):
        """Like the batch writers: one call per batch."""

        def process_element(self, value, ctx):
            first_seq, values = value
            yield f"{first_seq}:{','.join(values)}"

    items = env.from_collection([f"x{i}" for i in range(7)], Types.STRING()).process(TwoItemsEach(), output_type=Types.STRING())
    batches = sink_batches(side_output(items, items_tag), Types.STRING(), max_size=4, max_delay_ms=60_000)
    got = collect(batches.process(ShowBatch(), output_type=Types.STRING()))
    # Full batches when 4 are buffered, the rest at the end of input; each item once, in order.
    assert got == ["0:rx0,tx0,rx1,tx1", "4:rx2,tx2,rx3,tx3", "8:rx4,tx4,rx5,tx5", "12:rx6,tx6"]


def archive_rows(env, function, columns, values):
    """``values`` (bytes, as from Kafka, or strings) through an archive row function; each row as
    {column: value} (through SQL: PyFlink's collect cannot hand a null map or bytes over to
    Python as they are)."""
    import base64

    t_env = StreamTableEnvironment.create(env)
    if isinstance(values[0], bytes):
        # (A collection of bytes cannot be handed to Java directly; a Python map can.)
        texts = env.from_collection([base64.b64encode(v).decode() for v in values], Types.STRING())
        stream = texts.map(lambda text: base64.b64decode(text), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    else:
        stream = env.from_collection(values, Types.STRING())
    rows = java_rows(stream, function, columns, "test-rows", "Test rows")
    table = t_env.from_data_stream(rows)
    names = [name for name, _ in columns]
    select = ", ".join(f"TO_BASE64(`{n}`)" if n == "payload" else f"`{n}`" for n in names)
    with t_env.sql_query(f"SELECT {select} FROM {table}").execute().collect() as results:
        return [dict(zip(names, row, strict=True)) for row in results]


def test_every_raw_record_is_one_row_with_its_original_bytes_and_envelope_fields(env):
    import base64

    valid = {"v": 1, "source": "mqtt", "received_at": 1_756_653_767_451, "mqtt_topic": "t/dev-1", "device_id": "dev-1",
             "product_id": "prod-a", "format": "bin", "payload_encoding": "base64", "payload": base64.b64encode(b"\x00\xff").decode()}
    values = [
        orjson.dumps(valid),
        orjson.dumps({"v": 1, "source": "http", "received_at": 5, "payload": "temp,hum\n21,40\n"}),  # utf8 by default
        b"\xff not an envelope",
        orjson.dumps({"v": 2, "source": "mqtt", "received_at": 5, "payload": "x"}),
        orjson.dumps({**valid, "device_id": ""}),
        orjson.dumps({**valid, "payload": "%%%"}),
        orjson.dumps({**valid, "format": "xml"}),
    ]
    function = get_gateway().jvm.io.iotlink.flink.RawPayloadRows("iotlink.raw")
    rows = archive_rows(env, function, RAW_ROW_COLUMNS, values)
    assert [r["source_seq"] for r in rows] == list(range(1, len(values) + 1))
    assert {(r["source_topic"], r["source_partition"]) for r in rows} == {("iotlink.raw", 0)}
    assert [base64.b64decode(r["payload"]) for r in rows[2:]] == values[2:]  # not envelopes: archived whole
    first = rows[0]
    assert base64.b64decode(first["payload"]) == b"\x00\xff" and first["envelope_error"] is None
    assert (first["received_at"], first["source"], first["device_id"], first["product_id"], first["format"], first["mqtt_topic"]) == (
        1_756_653_767_451, "mqtt", "dev-1", "prod-a", "bin", "t/dev-1")
    envelope = orjson.loads(first["envelope"])
    assert "payload" not in envelope and list(envelope) == sorted(envelope) and envelope["device_id"] == "dev-1"
    assert base64.b64decode(rows[1]["payload"]) == b"temp,hum\n21,40\n" and rows[1]["device_id"] is None
    reasons = [r["envelope_error"] for r in rows[2:]]
    assert all(r["received_at"] == 0 for r in rows[2:])
    assert "not a JSON envelope" in reasons[0]
    assert "version 2 is not 1" in reasons[1]
    assert "'device_id' must be a non-empty string" in reasons[2]
    assert "not valid base64" in reasons[3]
    assert "format 'xml'" in reasons[4]


def test_every_telemetry_record_is_one_row_with_its_finite_numeric_metrics(env):
    record = {"device_id": "dev-1", "product_id": "prod-a", "tenant": "t1", "hub_id": "nohub", "device_ts": 1_000, "ingest_ts": 1_500,
              "metrics": {"tempC": 21.5, "count": 3, "ok": True, "mode": "eco"}, "quality": {"tempC": "clamped"},
              "spec_id": "product_a", "spec_version": 3}
    texts = [orjson.dumps(record).decode(), orjson.dumps({**record, "quality": {}, "spec_version": None}).decode()]
    texts.append(texts[0].replace('"count":3', '"huge":1e400'))
    function = get_gateway().jvm.io.iotlink.flink.TelemetryRows("iotlink.raw")
    rows = archive_rows(env, function, TELEMETRY_ROW_COLUMNS, texts)
    first, second, third = rows
    assert (first["device_id"], first["product_id"], first["tenant"], first["hub_id"], first["device_ts"], first["ingest_ts"]) == (
        "dev-1", "prod-a", "t1", "nohub", 1_000, 1_500)
    assert first["metrics"] == {"tempC": 21.5, "count": 3.0}
    assert orjson.loads(first["metrics_json"]) == record["metrics"] and orjson.loads(first["quality_json"]) == {"tempC": "clamped"}
    assert (first["spec_id"], first["spec_version"], first["source_seq"]) == ("product_a", "3", 1)
    assert (second["quality_json"], second["spec_version"], second["source_seq"]) == (None, None, 2)
    assert third["metrics"] == {"tempC": 21.5}


def reading_of(product, device_id="d"):
    """A telemetry tuple whose JSON has ``product_id`` after a nested field (skipped, not parsed)."""
    text = orjson.dumps({"device_id": device_id, "metrics": {"product_id": "decoy", "x": [1, {"y": 2}]}, "product_id": product}).decode()
    return device_id, 1, text


def test_only_readings_of_products_with_rules_reach_the_rules(env):
    items = [reading_of("prod-a"), reading_of("product_d"), reading_of(None), ("d", 1, "not json"), ("d", 1, "[1]"),
             reading_of("prod-b", "d2")]
    kept = collect(ruled_readings(env.from_collection(items, TELEMETRY_TUPLE), frozenset({"prod-a", "prod-b"})))
    assert sorted(kept) == sorted([items[0], items[5]])


def test_only_dead_letters_that_name_a_device_go_to_its_quality(env):
    letters = ['{"device_id":"d1","reason":"x"}', '{"device_id":null,"reason":"x"}', '{"device_id":"","reason":"x"}',
               '{"reason":"x"}', "not json", '{"device_id":7}']
    assert collect(device_letters(env.from_collection(letters, Types.STRING()))) == ['{"device_id":"d1","reason":"x"}']
