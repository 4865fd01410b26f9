"""The telemetry job decoding every shipped spec on the MiniCluster and the embedded Apache Kafka.

Payloads of all client formats (length-based, key-value, hybrid with separator bytes inside
data, CSV with bad rows, the fire sensor's binary frame with CRC and its JSON form) plus
malformed ones (truncated, wrong checksum, non-hex, empty, 2 MB) go through the job; what
reaches ``iotlink.telemetry`` and ``iotlink.dlq`` must equal what the pure decoder makes of
the same inputs, and the per-spec counters in Flink's metrics must match.
"""

import random
import struct
from collections import Counter

import orjson
import pytest
from job_runs import run_until_caught_up, with_own_topics
from kafka import KafkaProducer

from connectors.kafka import end_offsets, read_topic
from jobs.telemetry_job import RunOptions, decoder_registry_factory
from operators.checksums import crc16_modbus
from operators.decode import decode_raw_record
from operators.envelope import RawEnvelope, build_envelope

pytestmark = pytest.mark.integration
RECEIVED = 1_772_359_300_000
BIG = 2 * 1024 * 1024


def _fire_frame(rng, idx, corrupt=False):
    body = struct.pack(
        ">BHIHHHHHHIhhHHHH", 1, idx, 1772359200 + idx, rng.choice((0, 0, 5, 2053, 4096)), rng.randint(2100, 3200), 2180,
        rng.randint(0, 20000), 12, 4, rng.randint(0, 99999), rng.randint(100, 1100), rng.randint(-150, 700), 35, 120, 950, rng.randint(0, 3),
    )
    crc = crc16_modbus(body)
    return body + (crc ^ (0xFFFF if corrupt else 0)).to_bytes(2, "little")


def payloads():
    """(device_id, product_id or None, format hint, payload) for every case."""
    rng = random.Random(11)
    out = []
    for i in range(150):
        out.append((f"a-{i % 15}", "product_a", "bin", struct.pack(">hB", rng.randint(-400, 1200), rng.randint(0, 100))))
        parts = [struct.pack(">Hh", 1, rng.randint(-400, 1200)), struct.pack(">HB", 2, rng.randint(0, 100))]
        rng.shuffle(parts)
        out.append((f"b-{i % 15}", "product_b", "bin", b"".join(parts)))
        # Separator byte 0xAA placed inside section data at every position in turn.
        section1 = bytearray(struct.pack(">hB", rng.randint(0, 900), rng.randint(0, 100)))
        section2 = bytearray(struct.pack(">i", rng.randint(90000, 110000)))
        position = i % 7
        (section1 if position < 3 else section2)[position % 3 if position < 3 else position - 3] = 0xAA
        out.append((f"c-{i % 15}", "product_c", "bin", b"\xaa" + bytes(section1) + b"\xaa" + bytes(section2)))
        out.append((f"fire-bin-{i % 10}", None, "bin", _fire_frame(rng, i, corrupt=i % 25 == 0)))
        doc = {"deviceId": f"fire-json-{i % 10}", "idx": i, "status": rng.choice((0, 1, 4096)), "volt": rng.uniform(200, 320),
               "pcbTemp": rng.uniform(-20, 110), "timestamp": RECEIVED - 1000 * i}
        if i % 30 == 0:
            del doc["volt"]  # required: contract rejection
        out.append((f"fire-json-{i % 10}", None, "json", orjson.dumps(doc)))
    for i in range(60):
        rows = [f"{rng.uniform(10, 30):.1f},{rng.randint(20, 90)}" for _ in range(3)]
        if i % 6 == 0:
            rows[1] = "hot,wet"  # one bad row among good ones
        out.append((f"d-{i % 6}", None, "csv", ("temp,hum\n" + "\n".join(rows) + "\n").encode()))
    out += [
        ("a-bad", "product_a", "bin", b"\x00"),  # truncated
        ("a-bad", "product_a", "hex", b"00ZZ3C"),  # not hex
        ("a-bad", "product_a", "hex", b"00FD3"),  # odd number of hex digits
        ("a-bad", "product_a", "bin", b""),  # empty
        ("a-big", "product_a", "bin", bytes(range(256)) * (BIG // 256)),  # 2 MB
        ("b-bad", "product_b", "bin", b"\x00\x07\x3c"),  # unknown key
        ("b-bad", "product_b", "bin", b"\x00\x01\x00\xfd\x00\x01\x00\xfd"),  # duplicate key
        ("c-bad", "product_c", "bin", b"\xaa\x00\xfd\x3c"),  # second section missing
        ("nobody", None, "bin", b"\x01\x02"),  # no product anywhere
    ]
    return out


@pytest.fixture
def spec_settings(settings, tmp_path):
    registry = tmp_path / "devices.yaml"
    lines = ["devices:"]
    lines += [f"  fire-bin-{i}: {{product: fire_sensor, tenant: acme}}" for i in range(10)]
    lines += [f"  fire-json-{i}: {{product: fire_sensor, tenant: acme}}" for i in range(10)]
    lines += [f"  d-{i}: {{product: product_d, tenant: globex}}" for i in range(6)]
    registry.write_text("\n".join(lines) + "\n")
    return with_own_topics(settings.model_copy(update={"data_dir": tmp_path, "device_registry": str(registry)}), "it-specs")


def _telemetry_key(record):
    return (record["device_id"], record["device_ts"], orjson.dumps(record["metrics"]), record.get("spec_id"), record.get("tenant"),
            orjson.dumps(record.get("quality")))


def _dead_key(letter):
    return (letter["stage"], letter["reason_code"], letter["reason"], letter.get("spec_id"), letter.get("row"), letter["payload"])


def test_job_decodes_every_shipped_spec_and_dead_letters_the_rest(spec_settings):
    settings = spec_settings
    topics = settings.topics
    before = end_offsets(settings.bootstrap_servers, topics.raw)

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10, max_request_size=8 * 1024 * 1024)
    values = []
    for n, (device_id, product_id, hint, payload) in enumerate(payloads()):
        envelope = RawEnvelope(payload=payload, source="mqtt", received_at=RECEIVED + n, device_id=device_id, product_id=product_id, format=hint)
        value = build_envelope(envelope)
        producer.send(topics.raw, key=device_id.encode(), value=value).get(30)
        values.append(value)
    producer.close()

    registry = decoder_registry_factory(settings)()
    want_telemetry, want_dead = Counter(), Counter()
    want_spec = Counter()
    for value in values:
        out = decode_raw_record(value, registry, 0)
        for record in out.records:
            want_telemetry[_telemetry_key(record)] += 1
            want_spec[f"iotlink.spec.{record.get('spec_id') or 'builtin'}.decoded"] += 1
        for letter in out.dead_letters:
            want_dead[_dead_key(letter)] += 1
            if letter["spec_id"] is not None:
                want_spec[f"iotlink.spec.{letter['spec_id']}.rejected"] += 1
    specs_seen = {key.split(".")[2] for key in want_spec}
    assert specs_seen >= {"product_a", "product_b", "product_c", "product_d", "fire_sensor_bin", "fire_sensor_json"}
    reasons = Counter(key[1] for key in want_dead.elements())
    for code in ("truncated", "invalid_hex", "empty_payload", "payload_too_large", "unknown_key", "duplicate_key",
                 "checksum_mismatch", "missing_field", "invalid_metric", "unknown_product"):
        assert reasons[code] >= 1, f"no {code} case in the input"

    def spec_counters_settled(rest, job_id):
        import time

        deadline = time.monotonic() + 60
        while True:
            got = rest.metric_totals(job_id, ".spec.")
            got = {k: v for k, v in got.items() if v}
            if got == dict(want_spec) or time.monotonic() > deadline:
                return got

    ours = range(RECEIVED, RECEIVED + len(values))

    def outputs():
        records = [orjson.loads(v) for v in read_topic(settings.bootstrap_servers, topics.telemetry)]
        dead_values = [v for v in read_topic(settings.bootstrap_servers, topics.dlq) if orjson.loads(v)["received_at"] in ours]
        return Counter(_telemetry_key(r) for r in records if r["ingest_ts"] in ours), dead_values

    def committed():
        telemetry, dead_values = outputs()
        return telemetry == want_telemetry and Counter(_dead_key(orjson.loads(v)) for v in dead_values) == want_dead

    partitions = sorted(before) or [0, 1, 2, 3]
    options = RunOptions(start_offsets={p: before.get(p, 0) for p in partitions}, job_name="it-specs")
    # Cancel once all output is committed (the DLQ sink commits its own transactions, a moment
    # after the telemetry sink).
    metric_counts = run_until_caught_up(settings, options, len(values), while_running=spec_counters_settled, until=committed)

    got_telemetry, dead_values = outputs()
    got_dead = Counter(_dead_key(orjson.loads(v)) for v in dead_values)
    assert got_telemetry == want_telemetry
    assert got_dead == want_dead
    assert metric_counts == dict(want_spec)

    big = [orjson.loads(v) for v in dead_values if b"payload_too_large" in v[:400]]
    assert len(big) == 1 and big[0]["stage"] == "envelope"
    import base64

    assert base64.b64decode(big[0]["payload"]) == bytes(range(256)) * (BIG // 256)
