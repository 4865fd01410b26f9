"""Exactly-once at the sinks, proven under failure: after a crash restored from the last
checkpoint, and after a stop with a savepoint and a resume from it, every PostgreSQL aggregate
equals an independent computation from the input, Iceberg ``telemetry`` holds each decoded
record exactly once, ``raw_payloads`` holds each raw record's original bytes exactly once, and
the MongoDB hot layer holds each device's newest reading, the alarms still
active and the product summaries of the input."""

import dataclasses
from collections import Counter

import psycopg
import pytest
from aggregate_checks import (
    aggregate_differences,
    decoded_records,
    expected_aggregates,
    expected_iceberg_telemetry,
    expected_raw_payloads,
    hot_layer_differences,
    iceberg_hourly,
    iceberg_raw_payloads,
    iceberg_telemetry,
    postgres_aggregates,
)
from job_runs import run_until_caught_up, stop_with_savepoint, with_own_topics
from kafka import KafkaProducer
from pyiceberg.expressions import EqualTo

from connectors.iceberg import open_catalog
from connectors.kafka import end_offsets
from connectors.mongo import init_collections, open_database
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from jobs.telemetry_job import RunOptions, run_telemetry_job

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def produce(settings, fleet, start, steps, seed):
    """Sends the fleet's messages (plus redelivered duplicates); returns the values and end offsets."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    messages = list(FleetSimulator(fleet, seed=seed, interval_ms=2_000).messages(start, steps))
    messages += messages[::23]  # QoS 1 redeliveries
    values, futures, ends = [], [], {}
    for message in messages:
        key, value = encode_for_kafka(message, message.device_ts + 500)
        futures.append(producer.send(settings.topics.raw, key=key, value=value))
        values.append(value)
    for future in futures:
        meta = future.get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    return values, ends


def assert_sinks_hold_exactly(settings, values, fleet, since, until):
    records = decoded_records(values, settings, deduplicate=False)
    unique = decoded_records(values, settings, deduplicate=True)
    assert len(values) > 3000 and len(unique) > 2000
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
    with psycopg.connect(settings.postgres_url) as conn:
        postgres_events = Counter(conn.execute(
            "SELECT alarm_id, event, device_ts FROM alarm_events WHERE device_id = ANY(%s)", (sorted(d.device_id for d in fleet),)
        ).fetchall())
    events = catalog.load_table("iotlink.alarm_events").scan().to_arrow()
    iceberg_events = Counter(
        (a, e, ts // 1000) for a, e, d, ts in zip(events["alarm_id"].to_pylist(), events["event"].to_pylist(),
                                              events["device_id"].to_pylist(), events["device_ts"].cast("int64").to_pylist(), strict=True)
        if d in {f.device_id for f in fleet}
    )
    assert postgres_events and all(n == 1 for n in postgres_events.values())
    assert iceberg_events == postgres_events
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


def with_own_hot_layer(settings, mongo_url, name):
    """The settings with a MongoDB database of their own."""
    url = mongo_url.rsplit("/", 1)[0] + f"/{name}"
    db = open_database(url)
    for collection in db.list_collection_names():
        db.drop_collection(collection)
    init_collections(db)
    return settings.model_copy(update={"mongo_url": url})


def test_crash_after_a_checkpoint_restores_without_loss_or_duplicates(settings, mongo_url, tmp_path):
    # The fault waits for a completed checkpoint (with 3 s between checkpoints a fast run had
    # read all its input first); the crash then falls after data files the next checkpoint would
    # have committed, which the restored job writes again.
    flink = settings.flink.model_copy(update={"checkpoint_interval_ms": 1000})
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path, "flink": flink}), "it-eo-crash")
    settings = with_own_hot_layer(settings, mongo_url, "it_eo_crash")
    start = 1_756_653_767_000 + 40 * 86_400_000
    fleet = build_fleet(30, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=50,overheat=10,late=25,garbage=15"), seed=41)
    values, ends = produce(settings, fleet, start, 120, seed=41)
    partitions = sorted(ends)
    marker = tmp_path / "fault-fired"
    run_telemetry_job(settings, RunOptions(
        start_offsets={p: 0 for p in partitions}, stop_offsets=ends, job_name="it-eo-crash",
        fail_after=len(values) // 10, fail_marker=str(marker),  # readings counted per subtask (2)
    ))
    # The fault fires only once a checkpoint has completed, so the restore replays from it.
    assert marker.exists(), "the injected failure did not fire"
    assert int(marker.read_text()) >= len(values) // 10
    raw = assert_sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR)
    # Iceberg's Flink committer made the commits: it records the checkpoint each one covered.
    committed = [s.summary.get("flink.max-committed-checkpoint-id") for s in raw.snapshots() if s.summary is not None]
    assert any(committed), "no snapshot of raw_payloads was committed by Iceberg's Flink committer"
    # Each raw partition's records are numbered 1..n without a gap or a repeat, across the restore.
    positions = raw.scan(row_filter=EqualTo("source_topic", settings.topics.raw), selected_fields=("source_partition", "source_seq")).to_arrow()
    by_partition = {}
    for partition, seq in zip(positions["source_partition"].to_pylist(), positions["source_seq"].to_pylist(), strict=True):
        by_partition.setdefault(partition, []).append(seq)
    assert sorted(by_partition) == partitions
    assert all(sorted(seqs) == list(range(1, ends[p] + 1)) for p, seqs in by_partition.items())


def test_stop_with_savepoint_and_resume_without_loss_or_duplicates(settings, mongo_url, tmp_path):
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), "it-eo-savepoint")
    settings = with_own_hot_layer(settings, mongo_url, "it_eo_savepoint")
    start = 1_756_653_767_000 + 41 * 86_400_000
    fleet = build_fleet(30, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=60,overheat=10,late=20,garbage=10"), seed=43)
    first, ends = produce(settings, fleet, start, 60, seed=43)
    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    partitions = sorted(set(before) | set(ends))
    savepoint = run_until_caught_up(
        settings, RunOptions(start_offsets={p: 0 for p in partitions}, job_name="it-eo-savepoint"), len(first),
        while_running=lambda rest, job_id: stop_with_savepoint(rest, job_id, tmp_path / "savepoints"),
    )
    second, _ = produce(settings, fleet, start + 120_000, 60, seed=44)
    ticks = produce_ticks(settings, partitions, start + 86_400_000)
    values = first + second + ticks

    def complete():
        try:
            assert_sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR)
            return True
        except AssertionError:
            return False

    # Resumed from the savepoint, the job reads on from its offsets; the ticks (a day later, one
    # per partition) move event time past every window, so all of them fire.
    run_until_caught_up(settings, RunOptions(restore_from=savepoint, job_name="it-eo-savepoint"), len(second) + len(ticks),
                        until=complete)
    assert_sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR)


def produce_ticks(settings, partitions, ts):
    """One valid reading per raw partition at ``ts``, from devices outside the fleet."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    device = build_fleet(1, forms=("json",), seed=1)[0]
    values = []
    for p in partitions:
        tick = dataclasses.replace(device, device_id=f"tick-{p}", hub_id="nohub")
        message = next(iter(FleetSimulator([tick], seed=p).messages(ts, 1)))
        key, value = encode_for_kafka(message, ts + 500)
        producer.send(settings.topics.raw, key=key, value=value, partition=p).get(30)
        values.append(value)
    producer.close()
    return values
