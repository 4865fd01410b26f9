"""The job's metrics through the Prometheus reporter (``--prometheus-port``) and the Flink REST
API the web UI reads: the project's counters are exported under their documented names and
count what the input makes them count."""

import re
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import pytest
import yaml
from aggregate_checks import decoded_records
from job_runs import with_own_topics
from kafka import KafkaProducer

from iotlink.job_process import start_job_process, stop_job_process
from iotlink.live import FlinkRest
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from iotlink.stack import free_port
from jobs.telemetry_job import decoder_registry_factory
from operators.decode import decode_raw_record

pytestmark = pytest.mark.integration
START = 1_756_653_767_000 + 60 * 86_400_000
# The Prometheus reporter names an operator's user metric after its scope and groups; a
# key-value group (``add_group("sink", name)``) becomes a label.
OPERATOR = "flink_taskmanager_job_task_operator_iotlink_"
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def as_label(value: str) -> str:
    """A label value as the reporter writes it: characters outside [a-zA-Z0-9:_] become ``_``."""
    return re.sub(r"[^a-zA-Z0-9:_]", "_", value)


def scrape(port: int, keep=None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> [(labels, value)] of one scrape of the reporter's text exposition
    (the text is also written to ``keep``, for the report of a failing run)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    if keep is not None:
        keep.write_text(text)
    samples = defaultdict(list)
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples[match["name"]].append((dict(LABEL.findall(match["labels"] or "")), float(match["value"])))
    return samples


def total(samples, name: str, job_name: str, **labels: str) -> float | None:
    """Sum of ``name`` over the job's subtasks (None when the reporter does not export it)."""
    found = [value for got, value in samples.get(name, [])
             if got.get("job_name") == as_label(job_name) and all(got.get(k) == as_label(v) for k, v in labels.items())]
    return sum(found) if found else None


def label_totals(samples, name: str, label: str, job_name: str) -> Counter:
    """``label`` value -> sum of ``name`` over the job's subtasks."""
    sums = Counter()
    for got, value in samples.get(name, []):
        if got.get("job_name") == as_label(job_name):
            sums[got[label]] += int(value)
    return sums


def produce(settings, fleet, steps):
    """Sends the fleet's messages and every 17th again (a redelivery); returns the values sent."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    messages = list(FleetSimulator(fleet, seed=51, interval_ms=2_000).messages(START, steps))
    messages += messages[::17]
    values = []
    for message in messages:
        key, value = encode_for_kafka(message, message.device_ts + 500)
        producer.send(settings.topics.raw, key=key, value=value)
        values.append(value)
    producer.flush(30)
    producer.close()
    return values


def expected_counts(settings, values):
    """What the pure decoder (same specs as the job) makes of the input."""
    registry = decoder_registry_factory(settings)()
    decoded, reasons = 0, Counter()
    for value in values:
        outcome = decode_raw_record(value, registry, 0)
        decoded += len(outcome.records)
        reasons.update(letter["reason_code"] for letter in outcome.dead_letters)
    duplicates = decoded - len(decoded_records(values, settings, deduplicate=True))
    return decoded, reasons, duplicates


def wait_for(condition, timeout_s: float, proc, log_path, what: str):
    """Polls ``condition`` until it returns a truthy value; fails early when the job process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"the job process exited with {proc.returncode}: {log_path.read_text()[-3000:]}"
        try:
            result = condition()
        except (OSError, KeyError, ValueError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.5)


def test_prometheus_endpoint_and_rest_api_export_the_job_counters(settings, tmp_path):
    job = "it-prometheus"
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), job)
    settings = settings.model_copy(update={"flink": settings.flink.model_copy(update={"rest_port": free_port()})})
    fleet = build_fleet(20, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=55,overheat=20,late=10,garbage=15"), seed=51)
    values = produce(settings, fleet, steps=75)  # 150 s of device time: 1-minute windows fire
    decoded, reasons, duplicates = expected_counts(settings, values)
    overheating = sum(1 for device in fleet if device.profile == "overheat")
    assert decoded > 1000 and sum(reasons.values()) > 50 and duplicates > 50 and overheating > 0
    port = free_port()
    config = tmp_path / "topics.yaml"  # the topic names reach the job process through its config file
    config.write_text(yaml.safe_dump({"topics": settings.topics.model_dump()}))
    log_path, keep = tmp_path / "job.log", tmp_path / "metrics.txt"
    # `iotlink run --prometheus-port` in a process of its own: the reporter joins the classpath
    # of a JVM that starts after the option is read (this test process's JVM may already run).
    proc = start_job_process(settings, ["--config", str(config), "--start-offsets", "0=0,1=0,2=0,3=0", "--job-name", job,
                                        "--prometheus-port", str(port)], log_path)
    rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
    try:
        job_id = wait_for(rest.running_job, 90, proc, log_path, "the job did not start")
        wait_for(lambda: rest.job_counters(job_id)["records_in"] >= len(values), 60, proc, log_path, "the job did not read its input")

        def settled():
            # Alarms and window writes follow the watermark, a little after the last record is read.
            samples = scrape(port, keep)
            done = (
                total(samples, OPERATOR + "decoded", job) == decoded
                and (total(samples, OPERATOR + "alarms_raised", job) or 0) > 0
                and aggregated_rows(settings) > 0
                # One Iceberg row per raw record and one per telemetry record.
                and total(samples, OPERATOR + "archive_rows", job) == len(values) + decoded
                and total(samples, OPERATOR + "sink_written", job, sink="alarm_events") == total(samples, OPERATOR + "alarm_events", job)
                and (total(samples, "flink_jobmanager_job_numberOfCompletedCheckpoints", job) or 0) >= 1
            )
            return samples if done else None

        try:
            samples = wait_for(settled, 30, proc, log_path, "the counters did not settle")
        except AssertionError:
            samples = scrape(port, keep)  # the assertions below say which counter is off
        # The web UI's numbers (REST). The JobManager's metric fetcher caches values for up to
        # 10 s (metrics.fetcher.update-interval), so wait until they caught up with the scrape.
        def rest_caught_up():
            totals = rest.metric_totals(job_id, "iotlink.")
            # (Each vertex's metrics are fetched on their own: the sink's may lag the decoder's.)
            wanted = {"iotlink.records_in": len(values), "iotlink.decoded": decoded, "iotlink.duplicates_dropped": duplicates,
                      "iotlink.alarms_raised": total(samples, OPERATOR + "alarms_raised", job),
                      "iotlink.sink.alarm_events.batches": total(samples, OPERATOR + "sink_batches", job, sink="alarm_events")}
            return totals if all(totals.get(name) == n for name, n in wanted.items()) else None

        try:
            rest_totals = wait_for(rest_caught_up, 30, proc, log_path, "REST metrics did not catch up")
        except AssertionError:
            rest_totals = rest.metric_totals(job_id, "iotlink.")  # the assertions below say which one is off
        checkpoints = rest.checkpoints(job_id)["counts"]["completed"]
    finally:
        stop_job_process(proc, rest)

    assert total(samples, OPERATOR + "records_in", job) == len(values)
    assert total(samples, OPERATOR + "decoded", job) == decoded
    assert total(samples, OPERATOR + "telemetry_out", job) == decoded
    assert total(samples, OPERATOR + "rejected", job) == sum(reasons.values())
    assert label_totals(samples, OPERATOR + "rejected_reason_count", "rejected_reason", job) == Counter({as_label(k): n for k, n in reasons.items()})
    assert total(samples, OPERATOR + "duplicates_dropped", job) == duplicates
    late = total(samples, OPERATOR + "late", job)
    assert late is not None and 0 <= late <= decoded
    # Every alarm event the operator counted reached PostgreSQL, and the RAISED ones there are
    # exactly the raised alarms counted (this test's device times are its own).
    raised = total(samples, OPERATOR + "alarms_raised", job)
    assert raised > 0 and total(samples, OPERATOR + "alarm_events", job) >= raised
    assert total(samples, OPERATOR + "sink_written", job, sink="alarm_events") == total(samples, OPERATOR + "alarm_events", job)
    with psycopg.connect(settings.postgres_url) as conn:
        stored = conn.execute("SELECT count(*) FROM alarm_events WHERE event = 'RAISED' AND device_ts >= %s AND device_ts < %s",
                              (START, START + 3_600_000)).fetchone()[0]
    assert stored == raised
    # The aggregates are Flink SQL written by the JDBC connector: its rows are the evidence.
    assert aggregated_rows(settings) > 0 and total(samples, OPERATOR + "windows_too_late", job) is not None
    assert total(samples, OPERATOR + "sink_batches", job, sink="alarm_events") > 0
    assert total(samples, OPERATOR + "sink_write_ms", job, sink="alarm_events") >= 0
    assert total(samples, OPERATOR + "sink_retries", job, sink="alarm_events") == 0  # no database outage here
    # Iceberg: a row per raw record and per telemetry record, written by Iceberg's Flink sink.
    assert total(samples, OPERATOR + "archive_rows", job) == len(values) + decoded
    per_spec = label_totals(samples, OPERATOR + "spec_decoded", "spec", job)
    assert sum(per_spec.values()) == decoded and len(per_spec) >= 3
    # Every metric docs/operations.md lists (the dashboard and the alerts use them) is exported, but
    # those of operators only a benchmark's jobs run (their rows name the bench/ script).
    lines = (Path(__file__).parents[2] / "docs" / "operations.md").read_text().splitlines()
    documented = {name for line in lines if "bench/" not in line for name in re.findall(r"`(flink_[a-zA-Z0-9_]+)`", line)}
    assert len(documented) > 30 and documented <= set(samples), sorted(documented - set(samples))
    # Flink's own job metrics, which the dashboard and the alerts read.
    assert total(samples, "flink_jobmanager_job_numberOfCompletedCheckpoints", job) >= 1
    assert total(samples, "flink_jobmanager_job_lastCheckpointDuration", job) is not None
    assert total(samples, "flink_jobmanager_job_numberOfFailedCheckpoints", job) is not None
    assert total(samples, "flink_taskmanager_job_task_backPressuredTimeMsPerSecond", job) is not None

    # The Flink REST API (what the web UI shows under the vertices' Metrics) has the same counts.
    assert rest_totals["iotlink.records_in"] == len(values)
    assert rest_totals["iotlink.decoded"] == decoded
    assert rest_totals.get("iotlink.duplicates_dropped") == duplicates, sorted(rest_totals)
    assert rest_totals["iotlink.alarms_raised"] == raised
    assert {name.split(".")[2]: n for name, n in rest_totals.items() if name.startswith("iotlink.rejected_reason.")} == reasons
    assert rest_totals["iotlink.sink.alarm_events.batches"] > 0 and "iotlink.sink.alarm_events.write_ms" in rest_totals
    assert checkpoints >= 1


def aggregated_rows(settings) -> int:
    """The agg_1m rows of this test's device times in PostgreSQL."""
    with psycopg.connect(settings.postgres_url) as conn:
        return conn.execute("SELECT count(*) FROM agg_1m WHERE window_start >= %s AND window_start < %s",
                            (START, START + 3_600_000)).fetchone()[0]
