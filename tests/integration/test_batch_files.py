"""Batch mode: the same pipeline run bounded over a file of raw envelopes writes the aggregates
the streaming run writes (both equal the independent computation from the same input)."""

import pytest
from aggregate_checks import aggregate_differences, decoded_records, expected_aggregates, postgres_aggregates
from job_runs import with_own_topics
from postgres_schemas import schema_with

from connectors.kafka import read_topic
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from jobs.telemetry_job import RunOptions, run_telemetry_job

pytestmark = pytest.mark.integration
START = 1_756_653_767_000 + 50 * 86_400_000


def test_a_file_of_envelopes_gives_the_same_aggregates_as_the_stream(settings, tmp_path):
    # Its own PostgreSQL schema: the aggregate keys (device, window) must not meet another run's.
    url = schema_with(settings, "it_batch_files")
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path, "postgres_url": url}), "it-batch-files")
    fleet = build_fleet(10, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=70,late=20,garbage=10"), seed=51)
    messages = list(FleetSimulator(fleet, seed=51, interval_ms=2_000).messages(START, 150))
    messages += messages[::19]
    values = [encode_for_kafka(m, m.device_ts + 500)[1] for m in messages]
    first, second = tmp_path / "part-1.jsonl", tmp_path / "part-2.jsonl"
    half = len(values) // 2
    first.write_bytes(b"\n".join(values[:half]) + b"\n")
    second.write_bytes(b"\n".join(values[half:]) + b"\n")

    run_telemetry_job(settings, RunOptions(input_files=(str(first), str(second)), job_name="it-batch-files"))

    records = decoded_records(values, settings, deduplicate=True)
    want = expected_aggregates(records)
    got = postgres_aggregates(settings, {d.device_id for d in fleet}, {r["product_id"] for r in records}, START - 3_600_000, START + 3_600_000)
    assert len(want) > 150
    problem = aggregate_differences(got, want)
    late = read_topic(settings.bootstrap_servers, settings.topics.late)
    assert problem is None, f"{problem}; {len(late)} records archived as too late: {late[:2]}"
