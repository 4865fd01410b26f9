"""The telemetry job submitted to a local standalone Flink cluster (a JobManager and two
TaskManager processes) with ``flink run -py`` as the README tells: exact output read committed,
stop with a savepoint, resubmit from it with ``flink run -s``: both batches exactly once. Also
``iotlink cluster up`` / ``down`` as processes."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from aggregate_checks import expected_kafka_outputs, kafka_outputs
from job_runs import with_own_topics
from kafka import KafkaProducer
from test_telemetry_job import START, telemetry_gap

from iotlink.cluster import TELEMETRY_SCRIPT, FlinkCluster, running_cluster, telemetry_job_arguments
from iotlink.live import FlinkRest
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from iotlink.stack import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400_000
JOB_NAME = "it-cluster-submission"


def flink(cluster: FlinkCluster, *args: str, timeout_s: float = 120) -> str:
    """Runs ``bin/flink ARGS`` against the cluster from the project root; returns its output."""
    result = subprocess.run(cluster.flink_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"flink {' '.join(args[:3])} … exited with {result.returncode}:\n{output[-3000:]}"
    return output


def produce(settings, devices: int, steps: int, seed: int, start_ts: int) -> list[bytes]:
    """Publishes the simulated envelopes of test_telemetry_job.produce (received at ``start_ts + 200 s``),
    batched rather than one acknowledged send at a time; returns the values sent."""
    fleet = build_fleet(devices, profiles=parse_profile_mix("normal=70,garbage=15,late=15"), seed=seed)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10, acks="all")
    values, sends = [], []
    try:
        for message in FleetSimulator(fleet, seed=seed).messages(start_ts, steps):
            key, value = encode_for_kafka(message, start_ts + 200_000)
            sends.append(producer.send(settings.topics.raw, key=key, value=value))
            values.append(value)
        producer.flush(60)
        for send in sends:
            send.get(0)  # raises if that record was not written
    finally:
        producer.close()
    return values


def wait_until_running(rest: FlinkRest, job_id: str, timeout_s: float = 90) -> None:
    """Waits until the job and every one of its tasks runs (a RUNNING job may still deploy tasks)."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        job = rest.get(f"/jobs/{job_id}")
        state = job["state"], sorted({v["status"] for v in job["vertices"]})
        assert job["state"] not in ("FAILED", "CANCELED", "FINISHED"), f"job {job_id} ended: {job['state']}"
        if job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"]):
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not running within {timeout_s:.0f}s: {state}")


def wait_until_finished(rest: FlinkRest, job_id: str, timeout_s: float = 30) -> None:
    """Waits until a stopped job has reached FINISHED (stop-with-savepoint ends it that way)."""
    deadline = time.monotonic() + timeout_s
    while (state := rest.get(f"/jobs/{job_id}")["state"]) != "FINISHED":
        assert time.monotonic() < deadline and state not in ("FAILED", "CANCELED"), f"job {job_id}: {state} after the stop"
        time.sleep(0.3)


def wait_for_outputs(settings, received_ats, want, timeout_s: float = 90) -> None:
    """Polls the committed telemetry and dead letters until they equal ``want`` (then returns)."""
    deadline = time.monotonic() + timeout_s
    while kafka_outputs(settings, received_ats) != want and time.monotonic() < deadline:
        time.sleep(0.5)


def submitted_job_id(output: str) -> str:
    match = re.search(r"Job has been submitted with JobID ([0-9a-f]{32})", output)
    assert match, f"no job id in the output of flink run:\n{output[-3000:]}"
    return match.group(1)


@pytest.fixture
def cluster_settings(settings, tmp_path):
    """The session stack's Kafka with topics of this test's own, a data directory of its own and
    a config file naming those topics (the job script reads topic names from a config file)."""
    own = with_own_topics(settings.model_copy(update={
        "data_dir": tmp_path / "data", "postgres_url": None, "iceberg_catalog": None, "iceberg_warehouse": None, "mongo_url": None,
        "flink": settings.flink.model_copy(update={"rest_port": free_port(), "checkpoint_interval_ms": 500}),
    }), "it-cluster")
    config = tmp_path / "iotlink.yaml"
    config.write_text(yaml.safe_dump({"topics": own.topics.model_dump()}))
    return own, config


def test_flink_run_py_on_a_standalone_cluster_then_savepoint_and_resubmit_are_exact(cluster_settings, tmp_path):
    settings, config = cluster_settings
    cluster = FlinkCluster(settings.data_dir, rest_port=settings.flink.rest_port)
    rest = FlinkRest(cluster.rest_url)
    start = START + 10 * DAY
    first_at, second_at = start + 200_000, start + 260_000
    # As the README tells it: <pyflink>/bin/flink run -d -py jobs/telemetry_job.py --bootstrap-servers … --job-name …
    run = ("run", "-d", "-py", TELEMETRY_SCRIPT)
    job_args = telemetry_job_arguments(settings, config_file=str(config), job_name=JOB_NAME)
    try:
        cluster.start()
        overview = rest.get("/overview")
        assert (overview["taskmanagers"], overview["slots-total"]) == (2, 4)
        assert len(set(cluster.pids().values())) == 3

        job_id = submitted_job_id(flink(cluster, *run, *job_args))
        wait_until_running(rest, job_id)
        first = produce(settings, devices=20, steps=30, seed=101, start_ts=start)
        want_first = expected_kafka_outputs(first, settings)
        wait_for_outputs(settings, {first_at}, want_first)
        got = kafka_outputs(settings, {first_at})
        assert got == want_first, telemetry_gap(settings, want_first[0], got[0], {first_at})
        assert sum(want_first[0].values()) > 200 and sum(want_first[1].values()) > 20

        output = flink(cluster, "stop", "--savepointPath", (tmp_path / "savepoints").as_uri(), job_id)
        savepoint = re.search(r"Savepoint completed\. Path: (\S+)", output)
        assert savepoint, output[-2000:]
        wait_until_finished(rest, job_id)

        second = produce(settings, devices=20, steps=30, seed=102, start_ts=start + 60_000)
        resumed_id = submitted_job_id(flink(cluster, "run", "-d", "-s", savepoint.group(1), *run[2:], *job_args))
        wait_until_running(rest, resumed_id)
        restored = rest.get(f"/jobs/{resumed_id}/checkpoints")["latest"]["restored"]
        assert restored is not None and restored["is_savepoint"], restored
        want_both = expected_kafka_outputs(first + second, settings)
        wait_for_outputs(settings, {first_at, second_at}, want_both)
        # Stopping commits the last transactions: whatever the second run wrote is visible now.
        flink(cluster, "stop", "--savepointPath", (tmp_path / "savepoints").as_uri(), resumed_id)
        wait_until_finished(rest, resumed_id)
        got = kafka_outputs(settings, {first_at, second_at})
        assert got[0] == want_both[0], telemetry_gap(settings, want_both[0], got[0], {first_at, second_at})
        assert got[1] == want_both[1], f"dead letters: {sum((want_both[1] - got[1]).values())} missing, {sum((got[1] - want_both[1]).values())} extra"
    finally:
        cluster.stop()
    assert not running_cluster(settings.data_dir)
    left = subprocess.run(["pgrep", "-f", str(cluster.conf_dir)], capture_output=True, text=True, check=False)
    assert left.returncode == 1, f"processes of the cluster left running: {left.stdout}"


def test_cluster_up_prints_the_commands_and_cluster_down_stops_it(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    up = subprocess.Popen(
        [sys.executable, "-m", "iotlink.cli", "cluster", "up", "--data-dir", str(data_dir), "--ui-port", str(port),
         "--bootstrap-servers", "127.0.0.1:9", "--taskmanagers", "1", "--slots", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT, start_new_session=True,
    )
    lines = []
    try:
        for line in up.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(lines)
        assert f"web UI      http://127.0.0.1:{port}" in text, text
        assert "flink run -d -py " in text and "--bootstrap-servers 127.0.0.1:9" in text and f"--ui-port {port}" in text, text
        assert "flink stop --savepointPath" in text and " -s '<savepoint-path>' " in text, text
        assert len(FlinkRest(f"http://127.0.0.1:{port}").get("/taskmanagers")["taskmanagers"]) == 1
        conf_dir = data_dir.resolve() / "cluster" / "conf"
        assert running_cluster(data_dir)["pid"] == up.pid

        down = subprocess.run([sys.executable, "-m", "iotlink.cli", "cluster", "down", "--data-dir", str(data_dir)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=90, check=False)
        assert down.returncode == 0 and f"stopped the Flink cluster of process {up.pid}" in down.stdout, down.stdout + down.stderr
        assert up.wait(30) == 0
        assert "stopped: no JobManager or TaskManager left running" in up.stdout.read()
        left = subprocess.run(["pgrep", "-f", str(conf_dir)], capture_output=True, text=True, check=False)
        assert left.returncode == 1, f"processes of the cluster left running: {left.stdout}"
        again = subprocess.run([sys.executable, "-m", "iotlink.cli", "cluster", "down", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
        assert again.returncode == 1 and "no Flink cluster runs on" in again.stdout
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(60)
