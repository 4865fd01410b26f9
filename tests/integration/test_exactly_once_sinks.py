"""Exactly-once at the sinks, proven under failure: after a crash restored from the last
checkpoint, and after a stop with a savepoint and a resume from it, every PostgreSQL aggregate
equals an independent computation from the input, Iceberg ``telemetry`` holds each decoded
record exactly once, ``raw_payloads`` holds each raw record's original bytes exactly once, and
the MongoDB hot layer holds each device's newest reading, the alarms still
active and the product summaries of the input; the Kafka outputs read committed hold each
record once."""

import pytest
from aggregate_checks import HOUR, assert_sinks_hold_exactly, sinks_hold_exactly
from job_runs import produce, produce_ticks, run_until_caught_up, stop_with_savepoint, with_own_hot_layer, with_own_topics
from pyiceberg.expressions import EqualTo

from connectors.kafka import end_offsets
from iotlink.simulator import build_fleet, parse_profile_mix
from jobs.telemetry_job import RunOptions, run_telemetry_job

pytestmark = pytest.mark.integration


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
    # Resumed from the savepoint, the job reads on from its offsets; the ticks (a day later, one
    # per partition) move event time past every window, so all of them fire.
    # (Asserted while the job runs: a cancelled job leaves its open Kafka transactions holding back
    # what read_committed readers see until they time out.)
    run_until_caught_up(settings, RunOptions(restore_from=savepoint, job_name="it-eo-savepoint"), len(second) + len(ticks),
                        until=lambda: sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR),
                        while_running=lambda rest, job_id: assert_sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR))

