"""Windowed aggregates and communication quality in PostgreSQL equal what plain Python
computes from the same input: 1m/5m/1h per device and per product, with late records inside the
allowed lateness and redelivered duplicates in the input; messages received / expected /
missing, longest gap and dead letters per device and 5m/1h window; a window corrected after it
fired by a dead letter alone gets its communication counts updated and no second version of its
metric statistics."""

import dataclasses
import time
from collections import Counter

import psycopg
import pytest
from aggregate_checks import aggregate_differences, decoded_records, expected_aggregates, postgres_aggregates
from job_runs import produce_ticks, run_until_caught_up, with_own_topics
from kafka import KafkaProducer
from pyiceberg.expressions import EqualTo

from connectors.iceberg import open_catalog
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


def test_a_dead_letter_after_the_window_fired_updates_the_counts_not_the_statistics(settings, tmp_path):
    start = 1_756_653_767_000 + 35 * 86_400_000
    start -= start % 3_600_000
    flink = settings.flink.model_copy(update={"allowed_lateness_ms": 3 * 3_600_000})
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path, "flink": flink}), "it-comm-correction")
    device = dataclasses.replace(build_fleet(1, forms=("json",), seed=5)[0], device_id="it-comm-correction-1", hub_id="nohub")
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    readings = list(FleetSimulator([device], seed=5, interval_ms=INTERVAL_MS).messages(start + 60_000, 10))
    for message in readings:
        key, value = encode_for_kafka(message, message.device_ts + 500)
        producer.send(settings.topics.raw, key=key, value=value).get(30)
    partitions = sorted(end_offsets(settings.bootstrap_servers, settings.topics.raw))
    ticks = produce_ticks(settings, partitions, start + 2 * 3_600_000)  # past the hour: its windows fire
    garbage = dataclasses.replace(device, profile="garbage")
    letter = next(m for m in FleetSimulator([garbage], seed=5, interval_ms=INTERVAL_MS).messages(start + 90_000, 2) if not m.valid)

    def hour_rows(conn, table, columns):
        return conn.execute(f"SELECT {columns} FROM {table} WHERE {'key' if table == 'agg_1h' else 'device_id'} = %s AND window_start = %s",
                            (device.device_id, start)).fetchall()

    def wait_for(condition, what):
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)

    history = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)

    def versions():
        """The device hour's rows in Iceberg agg_1h (one per metric and version)."""
        rows = history.load_table("iotlink.agg_1h").scan(row_filter=EqualTo("key", device.device_id)).to_arrow().to_pylist()
        return sorted((r["metric"], r["count"], r["emitted_at"]) for r in rows)

    def correct_after_firing(rest, job_id):
        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            # The hour fired with all ten readings and Iceberg committed it.
            wait_for(lambda: (rows := versions()) and all(max(c for m, c, _ in rows if m == metric) == 10 for metric, _, _ in rows),
                     "the hour's aggregates in Iceberg")
            assert hour_rows(conn, "comm_quality_1h", "received, rejected") == [(10, 0)]
            fired = versions()
            key, value = encode_for_kafka(letter, letter.device_ts + 500)
            producer.send(settings.topics.raw, key=key, value=value).get(30)
            wait_for(lambda: hour_rows(conn, "comm_quality_1h", "received, rejected") == [(10, 1)], "the corrected counts")
        completed = rest.checkpoints(job_id)["counts"]["completed"]
        wait_for(lambda: rest.checkpoints(job_id)["counts"]["completed"] >= completed + 2, "two more checkpoints")
        return fired

    fired = run_until_caught_up(settings, RunOptions(start_offsets={p: 0 for p in partitions}, job_name="it-comm-correction"),
                                len(readings) + len(ticks), while_running=correct_after_firing)
    producer.close()
    # The dead letter changed the hour's counts, not its statistics: no second version of them.
    assert versions() == fired
