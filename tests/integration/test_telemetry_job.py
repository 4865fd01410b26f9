"""The telemetry job on the Flink MiniCluster against the embedded Apache Kafka: exact output
sets read committed, a restore from a checkpoint path, a crash mid-stream restored from the last
checkpoint, and the broker stopped for a while under the running job."""

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aggregate_checks import expected_kafka_outputs, kafka_dead_letters, kafka_outputs
from job_runs import run_until_caught_up, with_own_topics
from kafka import KafkaProducer

from connectors.kafka import end_offsets, read_topic
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from iotlink.stack import free_port
from jobs.telemetry_job import RunOptions, run_telemetry_job

pytestmark = pytest.mark.integration
START = 1_756_653_767_000
DAY = 86_400_000


def produce(settings, devices, steps, seed, start_ts=START):
    """Publishes simulated envelopes received at ``start_ts + 200 s``; returns the values sent and the end offsets."""
    fleet = build_fleet(devices, profiles=parse_profile_mix("normal=70,garbage=15,late=15"), seed=seed)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10)
    values, ends = [], {}
    for message in FleetSimulator(fleet, seed=seed).messages(start_ts, steps):
        key, value = encode_for_kafka(message, start_ts + 200_000)
        meta = producer.send(settings.topics.raw, key=key, value=value).get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        values.append(value)
    producer.close()
    return values, ends


def assert_dead_letters(settings, want, received_ats):
    """The committed dead letters equal ``want``: each exactly once."""
    got = kafka_dead_letters(settings, received_ats)
    assert got == want, f"dead letters: {sum((want - got).values())} missing, {sum((got - want).values())} extra; missing: {dict(want - got)}"


def outputs_written(settings, received_ats, want) -> bool:
    """Whether a run's outputs (telemetry, dead letters) are all committed."""
    return kafka_outputs(settings, received_ats) == want


def current_ends(settings):
    return end_offsets(settings.bootstrap_servers, settings.topics.raw)


def offsets_arg(ends, partitions):
    return {p: ends.get(p, 0) for p in partitions}


@pytest.fixture
def job_settings(settings, tmp_path, request):
    name = {"test_bounded_run_produces_exactly_the_decoded_set": "it-bounded",
            "test_restore_from_checkpoint_path_continues_where_it_stopped": "it-restore",
            "test_a_crash_mid_stream_restores_from_the_checkpoint_and_kafka_holds_each_record_once": "it-crash"}[request.node.name]
    return with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), name)


def test_bounded_run_produces_exactly_the_decoded_set(job_settings):
    settings = job_settings
    before = current_ends(settings)
    values, ends = produce(settings, devices=30, steps=40, seed=5)
    partitions = sorted(set(before) | set(ends))
    run_telemetry_job(settings, RunOptions(start_offsets=offsets_arg(before, partitions), stop_offsets=offsets_arg(
        {**before, **ends}, partitions), job_name="it-bounded"))
    want_telemetry, want_dead = expected_kafka_outputs(values, settings)
    got_telemetry, _ = kafka_outputs(settings, {START + 200_000})
    assert sum(want_dead.values()) > 50 and sum(want_telemetry.values()) > 300
    assert got_telemetry == want_telemetry, telemetry_gap(settings, want_telemetry, got_telemetry, {START + 200_000})
    assert_dead_letters(settings, want_dead, {START + 200_000})


def latest_checkpoint(checkpoint_dir: Path) -> Path:
    done = [p.parent for p in checkpoint_dir.glob("*/chk-*/_metadata")]
    assert done, f"no completed checkpoint under {checkpoint_dir}"
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def test_restore_from_checkpoint_path_continues_where_it_stopped(job_settings):
    settings = job_settings
    before = current_ends(settings)
    start = START + 2 * DAY
    first, _ = produce(settings, devices=20, steps=30, seed=21, start_ts=start)
    partitions = sorted(before) or [0, 1, 2, 3]
    want_first = expected_kafka_outputs(first, settings)
    run_until_caught_up(settings, RunOptions(start_offsets=offsets_arg(before, partitions), job_name="it-restore"), len(first),
                        until=lambda: outputs_written(settings, {start + 200_000}, want_first))
    checkpoint = latest_checkpoint(settings.checkpoint_dir)

    second, _ = produce(settings, devices=20, steps=30, seed=22, start_ts=start + 60_000)
    want_second = expected_kafka_outputs(second, settings)
    # Restored from the checkpoint, the job must read only the second batch.
    run_until_caught_up(settings, RunOptions(restore_from=str(checkpoint), job_name="it-restore"), len(second),
                        until=lambda: outputs_written(settings, {start + 260_000}, want_second))
    want_telemetry, want_dead = expected_kafka_outputs(first + second, settings)
    received_ats = {start + 200_000, start + 260_000}
    got_telemetry, _ = kafka_outputs(settings, received_ats)
    assert got_telemetry == want_telemetry, telemetry_gap(settings, want_telemetry, got_telemetry, received_ats)
    assert_dead_letters(settings, want_dead, received_ats)


def test_a_crash_mid_stream_restores_from_the_checkpoint_and_kafka_holds_each_record_once(job_settings, tmp_path):
    """The job fails once mid-stream (after a checkpoint exists); Flink restores from the last
    checkpoint and replays from its offsets. A read_committed reader of iotlink.telemetry and
    iotlink.dlq sees every expected record exactly once: the records of the transactions open
    at the crash were aborted, the ones pre-committed for the checkpoint are committed."""
    settings = job_settings
    before = current_ends(settings)
    start = START + 4 * DAY
    values, _ = produce(settings, devices=40, steps=60, seed=41, start_ts=start)
    want = expected_kafka_outputs(values, settings)
    marker = tmp_path / "fault-fired"
    received_ats = {start + 200_000}
    options = RunOptions(start_offsets=offsets_arg(before, sorted(before)), job_name="it-crash",
                         fail_after=len(values) // 3, fail_marker=str(marker))
    # records_in starts again at the restart, from the restored offsets: how far it gets depends
    # on where that checkpoint was, so the wait is on the output itself (after the fault fired).
    run_until_caught_up(settings, options, 1, until=lambda: marker.exists() and outputs_written(settings, received_ats, want),
                        timeout_s=180)
    assert marker.exists(), "the injected failure never fired"
    got_telemetry, got_dead = kafka_outputs(settings, received_ats)
    assert got_telemetry == want[0], telemetry_gap(settings, want[0], got_telemetry, received_ats)
    assert_dead_letters(settings, want[1], received_ats)
    assert sum(want[0].values()) > 1000


def test_the_job_rides_out_a_broker_outage_with_exact_output(kafka, tmp_path):
    """The broker stops for 10 s under the running job and starts again: the job recovers (the
    clients reconnect, or Flink restarts from the checkpoint) and the output is still exact."""

    settings = kafka.settings_with_endpoints().model_copy(update={
        "data_dir": tmp_path, "postgres_url": None, "iceberg_catalog": None, "mongo_url": None,
        "flink": kafka.settings.flink.model_copy(update={"rest_port": free_port(), "checkpoint_interval_ms": 500, "parallelism": 2}),
    })
    start = START + 6 * DAY
    first, _ = produce(settings, devices=20, steps=30, seed=61, start_ts=start)
    want_first = expected_kafka_outputs(first, settings)
    received_ats = {start + 200_000, start + 260_000}
    outage = {}

    def break_the_broker(rest, job_id):
        assert outputs_written(settings, {start + 200_000}, want_first), "first batch not committed before the outage"
        kafka.stop_kafka()
        stopped = time.monotonic()
        time.sleep(10)
        kafka.start_kafka()
        outage["down_s"] = time.monotonic() - stopped
        second, _ = produce(settings, devices=20, steps=30, seed=62, start_ts=start + 60_000)
        want = expected_kafka_outputs(first + second, settings)
        deadline = time.monotonic() + 150
        while not outputs_written(settings, received_ats, want) and time.monotonic() < deadline:
            time.sleep(1)
        outage["want"] = want
        outage["job_state"] = rest.get(f"/jobs/{job_id}")["state"]

    run_until_caught_up(settings, RunOptions(job_name="it-outage"), len(first),
                        until=lambda: outputs_written(settings, {start + 200_000}, want_first), while_running=break_the_broker,
                        timeout_s=300)
    want_telemetry, want_dead = outage["want"]
    got_telemetry, _ = kafka_outputs(settings, received_ats)
    assert outage["down_s"] >= 10 and outage["job_state"] == "RUNNING", outage
    assert got_telemetry == want_telemetry, telemetry_gap(settings, want_telemetry, got_telemetry, received_ats)
    assert_dead_letters(settings, want_dead, received_ats)


def telemetry_gap(settings, want, got, received_ats) -> str:
    """Explains a telemetry mismatch: how many missing records sit in the log uncommitted
    (written inside a transaction that never committed) and how many are absent altogether."""
    in_log = Counter()
    for value in read_topic(settings.bootstrap_servers, settings.topics.telemetry, read_committed=False):
        record = orjson.loads(value)
        if record["ingest_ts"] in received_ats:
            in_log[(record["device_id"], record["device_ts"], orjson.dumps(record["metrics"]))] += 1
    missing = want - got
    return (
        f"missing {sum(missing.values())} of {sum(want.values())}, of which in the log uncommitted "
        f"{sum((missing & in_log).values())}; extra {sum((got - want).values())}; log total {sum(in_log.values())}"
    )
