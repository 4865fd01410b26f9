"""Windowed aggregates and communication quality in PostgreSQL equal what plain Python
computes from the same input: 1m/5m/1h per device and per product, with late records inside the
allowed lateness and redelivered duplicates in the input; messages received / expected /
missing, longest gap and dead letters per device and 5m/1h window."""

from collections import Counter

import psycopg
import pytest
from aggregate_checks import aggregate_differences, decoded_records, expected_aggregates, postgres_aggregates
from job_runs import with_own_topics
from kafka import KafkaProducer

from connectors.kafka import end_offsets, read_topic
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from jobs.telemetry_job import RunOptions, decoder_registry_factory, run_telemetry_job
from operators.comm_quality import COMM_SIZES
from operators.decode import decode_raw_record

pytestmark = pytest.mark.integration
START = 1_756_653_767_000 + 30 * 86_400_000
INTERVAL_MS = 2_000


def expected_comm_quality(records, dead_letters, intervals):
    """{(table, device, window_start): (received, expected, missing, longest_gap_ms, rejected)}."""
    times = {}
    for r in records:
        for size_name, size in COMM_SIZES.items():
            times.setdefault((size_name, r["device_id"], r["device_ts"] - r["device_ts"] % size), []).append(r["device_ts"])
    rejected = Counter()
    for letter in dead_letters:
        for size_name, size in COMM_SIZES.items():
            rejected[(size_name, letter["device_id"], letter["received_at"] - letter["received_at"] % size)] += 1
    out = {}
    for key in set(times) | set(rejected):
        size_name, device, start = key
        size = COMM_SIZES[size_name]
        inside = sorted(times.get(key, []))
        if inside:
            points = [start, *inside, start + size]
            gap = max(b - a for a, b in zip(points, points[1:], strict=False))
            expected = size // intervals[device] if device in intervals else None
            row = (len(inside), expected, None if expected is None else max(0, expected - len(inside)), gap)
        else:
            row = (0, None, None, None)
        out[(f"comm_quality_{size_name}", device, start)] = (*row, rejected[key])
    return out


def test_postgres_aggregates_equal_an_independent_computation(settings, tmp_path):
    fleet = build_fleet(12, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=60,late=25,garbage=15"), seed=31)
    # Master data: every device but one reports every 2 s (that one has no expected interval).
    intervals = {d.device_id: INTERVAL_MS for d in fleet[1:]}
    registry = tmp_path / "devices.yaml"
    registry.write_text("devices:\n" + "".join(
        f"  {d.device_id}: {{product: {d.product_id}" + (", expected_interval_s: 2}\n" if d.device_id in intervals else "}\n")
        for d in fleet
    ))
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path, "device_registry": str(registry)}), "it-windows")
    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10)
    values, futures = [], []
    messages = list(FleetSimulator(fleet, seed=31, interval_ms=INTERVAL_MS).messages(START, 200))  # 400 s of device time
    messages = [m for i, m in enumerate(messages) if not (fleet[2].device_id == m.device.device_id and 40 <= i // 12 < 100)]
    messages += messages[::17]  # redelivered duplicates, as a QoS 1 bridge may produce
    for message in messages:
        # Received half a second after the device time: hex and CSV devices send no time of
        # their own, so their device time is this receive time.
        key, value = encode_for_kafka(message, message.device_ts + 500)
        futures.append(producer.send(settings.topics.raw, key=key, value=value))
        values.append(value)
    ends = dict(before)
    for future in futures:
        meta = future.get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    partitions = sorted(set(before) | set(ends))
    run_telemetry_job(settings, RunOptions(
        start_offsets={p: before.get(p, 0) for p in partitions}, stop_offsets={p: ends.get(p, 0) for p in partitions},
        job_name="it-windows",
    ))
    records = decoded_records(values, settings, deduplicate=True)
    want = expected_aggregates(records)
    devices = {d.device_id for d in fleet}
    got = postgres_aggregates(settings, devices, {r["product_id"] for r in records}, START - 3_600_000, START + 3_600_000)
    assert len(want) > 200
    late = read_topic(settings.bootstrap_servers, settings.topics.late)
    problem = aggregate_differences(got, want)
    assert problem is None, f"{problem}; {len(late)} records archived as too late: {late[:2]}"

    # Communication quality: one device silent for two minutes, one without an expected
    # interval, garbage devices with dead letters.
    registry_of = decoder_registry_factory(settings)()
    letters = [letter for value in values for letter in decode_raw_record(value, registry_of, 0).dead_letters if letter["device_id"]]
    want_comm = expected_comm_quality(records, letters, intervals)
    got_comm = {}
    with psycopg.connect(settings.postgres_url) as conn:
        for table in ("comm_quality_5m", "comm_quality_1h"):
            for device, start, *row in conn.execute(
                f"SELECT device_id, window_start, received, expected, missing, longest_gap_ms, rejected FROM {table} "
                "WHERE device_id = ANY(%s) AND window_start >= %s AND window_start < %s",
                (sorted(devices), START - 3_600_000, START + 3_600_000),
            ).fetchall():
                got_comm[(table, device, start)] = tuple(row)
    assert len(letters) > 50 and any(v[4] for v in want_comm.values())
    assert max(v[3] or 0 for k, v in want_comm.items() if k[1] == fleet[2].device_id) >= 120_000  # the silent stretch
    assert got_comm == want_comm
