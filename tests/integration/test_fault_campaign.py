"""The fault campaign: the telemetry job under the failures a production deployment meets, each
run followed by the comparison of every sink (Kafka read committed, PostgreSQL, Iceberg, MongoDB)
with what the input makes (``aggregate_checks.assert_sinks_hold_exactly``): nothing lost, nothing
doubled. The services are this module's own, since the faults stop them.

- Outages under one running job: a second writer commits to Iceberg ``telemetry`` while the
  job's own commit is in flight (the job's commit must fail its compare-and-swap and be retried
  by Iceberg, not fail the job); the Kafka broker stopped for 5 s and started again; PostgreSQL
  (aggregates, alarm events and the Iceberg catalog) stopped for 25 s and started again, with
  data arriving meanwhile (the job fails and restarts until it is back); MongoDB unreachable for
  30 s (hung, then down: the hot-layer writers wait and retry).
- A job run as an operator runs it (``iotlink run`` in a process of its own) while devices
  publish over MQTT through the bridge all along: its JVM killed with SIGKILL after a checkpoint
  and a new job restored from the newest retained checkpoint (``--restore latest``), then
  stopped with a savepoint and resumed from it; every message the devices published arrives
  exactly once.
"""

import collections
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
import yaml
from aggregate_checks import (
    HOUR,
    decoded_records,
    expected_iceberg_telemetry,
    iceberg_telemetry,
    wait_until_sinks_hold_exactly,
)
from job_runs import checkpointed_to_the_end, produce, produce_ticks, run_until_caught_up, stop_with_savepoint, with_own_hot_layer, with_own_topics

from connectors.bridge_mqtt import BridgeOptions, start_bridge
from connectors.iceberg import FILE_PROPERTY, append_file_telemetry, open_catalog
from connectors.kafka import read_topic
from connectors.mqtt_connection import paho_client, parse_broker_url
from iotlink.job_process import start_job_process, stop_job_process
from iotlink.live import FlinkRest
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from iotlink.stack import EmbeddedStack, free_port
from jobs.config import Settings, StackPorts
from jobs.telemetry_job import RunOptions
from operators.envelope import parse_envelope

pytestmark = pytest.mark.integration
DAY = 86_400_000
START = 1_756_653_767_000 + 50 * DAY


@pytest.fixture(scope="module")
def own_stack():
    """An embedded stack for this module alone: the outages stop its services, which the shared
    stack must not see."""
    # (Not under pytest's temporary root, which another pytest session makes private again: the
    # PostgreSQL server runs as an unprivileged user when the tests run as root.)
    data_dir = Path(tempfile.mkdtemp(prefix="iotlink-fault-stack-"))
    settings = Settings(
        data_dir=data_dir, ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()),
        flink={"rest_port": free_port(), "checkpoint_interval_ms": 500, "parallelism": 2, "restart_attempts": 10},
    )
    stack = EmbeddedStack(settings)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


ENDED = ("FAILED", "CANCELED", "FINISHED", "gone")


def job_state(rest, job_id) -> str:
    """The job's state, or ``gone`` when its cluster no longer answers (a local run ends with its job)."""
    try:
        return rest.get(f"/jobs/{job_id}")["state"]
    except OSError:
        return "gone"


def failures_since(rest, job_id, since_ms: int) -> list[str]:
    """The job's failures (each one a restart from the last checkpoint) since ``since_ms``, as
    ``exception name: first line``, from the exception history the web UI shows."""
    entries = rest.get(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    return [f"{e.get('exceptionName')}: {(e.get('stacktrace') or '').splitlines()[0][:300]}" for e in entries if e["timestamp"] >= since_ms]


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.3):
    """Polls ``condition`` until it returns a truthy value, which it returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(interval_s)


# --- a second Iceberg writer ---------------------------------------------------------------------

SECOND_WRITER = "iotlink-second-writer"  # the application name of the second writer's catalog sessions
HOLD_LOCK = 0x1CE_BE26  # the advisory lock key the held commits wait for (one nothing else uses)


@contextlib.contextmanager
def catalog_commits_held(catalog_url: str):
    """While inside, every commit to the Iceberg catalog except the second writer's waits before
    its compare-and-swap of the table's metadata location (a statement trigger on the JDBC
    catalog's ``iceberg_tables`` waits for an advisory lock held here). A commit of the job's
    that waits there is overtaken by whatever the second writer commits meanwhile, so it must
    fail its swap and retry on top of the new metadata."""
    url = catalog_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (HOLD_LOCK,))
        holder.execute(f"""
            CREATE OR REPLACE FUNCTION hold_catalog_commits() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF current_setting('application_name') <> '{SECOND_WRITER}' THEN
                PERFORM pg_advisory_xact_lock_shared({HOLD_LOCK});
              END IF;
              RETURN NULL;
            END $$""")
        holder.execute("CREATE TRIGGER hold_catalog_commits BEFORE UPDATE ON iceberg_tables "
                        "FOR EACH STATEMENT EXECUTE FUNCTION hold_catalog_commits()")
        try:
            yield holder
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD_LOCK,))
            holder.execute("DROP TRIGGER hold_catalog_commits ON iceberg_tables")


def waiting_commits(holder) -> int:
    """Catalog updates waiting in :func:`catalog_commits_held`."""
    return holder.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE 'UPDATE iceberg_tables%%'"
    ).fetchone()[0]


def pending_metadata(holder, table: str) -> bool:
    """Whether a commit to ``table`` has written its new metadata file and not swapped it in yet."""
    location = holder.execute(
        "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = 'iotlink' AND table_name = %s", (table,)
    ).fetchone()[0]
    current = Path(location.removeprefix("file:").removeprefix("//"))
    version = int(current.name.split("-", 1)[0])
    return any(current.parent.glob(f"{version + 1:05d}-*.metadata.json"))


def telemetry_commit_caught(holder, since: dict) -> bool:
    """Whether the job's commit to ``telemetry`` waits in the hold; commits to the job's other
    tables that have waited there 2 s without it are let through. (The hold catches every table's
    commit: a committer waiting with a checkpoint that has no telemetry yet would hold back the
    next checkpoint, the one with the telemetry, for good. The 2 s leave the telemetry commit of
    the same checkpoint, which runs in another task, time to arrive and be caught too.)

    Args:
        holder: The connection holding the lock.
        since: Keeps when other commits were first seen waiting alone (between calls).
    """
    if pending_metadata(holder, "telemetry"):
        return True
    if not waiting_commits(holder):
        since.clear()
        return False
    first = since.setdefault("waiting", time.monotonic())
    if time.monotonic() - first >= 2.0 and not pending_metadata(holder, "telemetry"):
        holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD_LOCK,))
        time.sleep(0.3)
        holder.execute("SELECT pg_advisory_lock(%s)", (HOLD_LOCK,))  # once the let-through commits are done
        since.clear()
    return pending_metadata(holder, "telemetry")


def file_records(settings, fleet, start, steps, seed):
    """Decoded records of a day's file of the fleet (what the file batch job appends to Iceberg)."""
    messages = FleetSimulator(fleet, seed=seed, interval_ms=2_000).messages(start, steps)
    return decoded_records([encode_for_kafka(m, m.device_ts + 500)[1] for m in messages], settings, deduplicate=True)


def second_writer_commits_while_the_job_commits(settings, catalog_url, rest, job_id, records, name, arrive) -> dict:
    """Holds the catalog's commits, lets input ``arrive()`` (so the job has telemetry to commit),
    waits until the job's commit to ``telemetry`` waits, appends ``records`` as the file batch job
    does (one commit), releases the job's commit, and waits until the job's first commit after
    the file's has landed.

    Returns:
        ``{"file_snapshot", "job_snapshot", "waiting", "failures", "values"}`` (``values``: what
        ``arrive`` returned).
    """
    second = open_catalog(f"{catalog_url}?application_name={SECOND_WRITER}", settings.iceberg_warehouse)
    held_at = int(time.time() * 1000)
    with catalog_commits_held(catalog_url) as holder:
        values = arrive()
        alone: dict = {}
        wait_for(lambda: telemetry_commit_caught(holder, alone), 60, "the job's commit to telemetry")
        waiting = wait_for(lambda: waiting_commits(holder), 10, "the job's commit to wait for the catalog")
        assert append_file_telemetry(second, f"fault-campaign-{name}", name, records)
    table = second.load_table("iotlink.telemetry")
    file_snapshot = next(s for s in table.snapshots() if (s.summary or {}).get(FILE_PROPERTY) == f"fault-campaign-{name}")

    def job_commit_after_the_file():
        later = sorted((s for s in second.load_table("iotlink.telemetry").snapshots() if s.sequence_number > file_snapshot.sequence_number),
                       key=lambda s: s.sequence_number)
        return next((s for s in later if (s.summary or {}).get("flink.max-committed-checkpoint-id")), None)

    job_snapshot = wait_for(job_commit_after_the_file, 30, "the job's commit after the file's")
    return {"file_snapshot": file_snapshot, "job_snapshot": job_snapshot, "waiting": waiting,
            "failures": failures_since(rest, job_id, held_at), "values": values}


# --- outages under one running job ---------------------------------------------------------------


def commit_attempt(snapshot) -> int:
    """Which attempt of its commit a snapshot is: Iceberg names each attempt's manifest list
    ``snap-<snapshot id>-<attempt>-<commit uuid>.avro``, from 1 (pyiceberg writes 0)."""
    return int(Path(snapshot.manifest_list).name.split("-")[2])


def test_outages_of_broker_database_and_hot_layer_and_a_concurrent_iceberg_writer(own_stack, tmp_path):
    stack = own_stack
    base = stack.settings_with_endpoints()
    settings = with_own_topics(base.model_copy(update={"data_dir": tmp_path}), "it-fault-outages")
    settings = with_own_hot_layer(settings, base.mongo_url, "it_fault_outages")
    catalog_url = base.iceberg_catalog
    fleet = build_fleet(30, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=55,overheat=10,late=20,garbage=15"), seed=71)
    calm = [d for d in fleet if d.profile != "overheat"]  # devices that raise no alarm
    starts = iter(range(START, START + 10 * DAY, 40_000))  # 20 readings 2 s apart per device and batch

    def batch(devices=fleet, steps=20):
        start = next(starts)
        for _ in range(steps // 20 - 1):
            next(starts)
        return produce(settings, devices, start, steps, seed=71 + (start - START) // 40_000)[0]

    first = batch(steps=40)
    file_rows = file_records(settings, fleet, START + 3 * DAY, 10, seed=70)
    seen = {}

    def faults(rest, job_id):
        values = list(first)
        # 1. A second writer commits to Iceberg telemetry while the job's commit is in flight.
        seen["iceberg"] = second_writer_commits_while_the_job_commits(settings, catalog_url, rest, job_id, file_rows, "outages", batch)
        values += seen["iceberg"]["values"]
        # 2. The broker stops for 5 s; data produced once it is back.
        since = int(time.time() * 1000)
        stack.stop_kafka()
        try:
            time.sleep(5)
        finally:
            stack.start_kafka()
        values += batch()
        wait_for(lambda: checkpointed_to_the_end(settings), 90, "a checkpoint covering the input after the broker came back")
        seen["kafka"] = {"failures": failures_since(rest, job_id, since), "state": job_state(rest, job_id)}
        # 3. PostgreSQL (aggregates, alarm events, the Iceberg catalog) stops for 25 s while data
        # keeps coming (from devices that raise no alarm, so that no sink waits in place for the
        # database: the job fails and restarts for as long as it is down).
        since = int(time.time() * 1000)
        stack.stop_postgres()
        try:
            values += batch(calm)
            time.sleep(25)
            state = job_state(rest, job_id)
            assert state not in ENDED, f"the job ended ({state}) while PostgreSQL was down"
            failures = failures_since(rest, job_id, since)
        finally:
            stack.start_postgres()
        wait_for(lambda: job_state(rest, job_id) in ENDED or (job_state(rest, job_id) == "RUNNING" and checkpointed_to_the_end(settings)), 120,
                 "a checkpoint covering the input after PostgreSQL came back")
        seen["postgres"] = {"failures": failures, "state": job_state(rest, job_id)}
        # 4. MongoDB unreachable for 30 s: hung for 15 s (requests unanswered), then down for 15 s.
        since = int(time.time() * 1000)
        mongo = stack.pids()["mongo"]
        try:
            os.kill(mongo, signal.SIGSTOP)
            values += batch()
            time.sleep(15)
            os.killpg(mongo, signal.SIGKILL)
            time.sleep(15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(mongo, signal.SIGKILL)  # (stopped, it would keep its port)
            stack.start_mongo()
        # Readings a day later, one per partition: event time passes every window, all of them fire.
        values += produce_ticks(settings, range(4), START + DAY)
        seen["values"] = values
        # (Checked while the job runs: a cancelled job leaves its open Kafka transactions holding
        # back what read_committed readers see until they time out.)
        wait_until_sinks_hold_exactly(settings, values, fleet, START - HOUR, START + 2 * HOUR)

        def mongo_retries():
            # (Polled: the REST API answers from a metric cache that the request itself refreshes.)
            return sum(n for name, n in rest.metric_totals(job_id, "iotlink.sink.mongo").items() if name.endswith(".retries"))

        seen["mongo"] = {"failures": failures_since(rest, job_id, since), "state": job_state(rest, job_id),
                         "retries": wait_for(mongo_retries, 20, "the hot-layer writers' retries in the metrics", interval_s=1)}

    run_until_caught_up(settings, RunOptions(job_name="it-fault-outages"), len(first), while_running=faults, timeout_s=120)
    # The job's commit to telemetry waited in the catalog while the file's landed, failed its
    # compare-and-swap, and Iceberg retried it on top of the file's commit: no job failure.
    iceberg = seen["iceberg"]
    assert iceberg["waiting"] >= 1 and iceberg["failures"] == [], iceberg
    assert iceberg["job_snapshot"].parent_snapshot_id == iceberg["file_snapshot"].snapshot_id, iceberg
    assert commit_attempt(iceberg["job_snapshot"]) >= 2, iceberg
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    assert iceberg_telemetry(catalog.load_table("iotlink.telemetry"), "file:outages") == expected_iceberg_telemetry(file_rows)
    assert seen["kafka"]["state"] == "RUNNING", seen["kafka"]
    # PostgreSQL's outage failed the job (the catalog, the JDBC sink), which restarted until it was back.
    assert seen["postgres"]["failures"] and seen["postgres"]["state"] == "RUNNING", seen["postgres"]
    # MongoDB's outage: the hot-layer writers retried in place, the job did not fail.
    assert seen["mongo"]["retries"] > 0 and seen["mongo"]["failures"] == [] and seen["mongo"]["state"] == "RUNNING", seen["mongo"]


# --- a killed job, a savepoint, while devices keep publishing ------------------------------------


class DevicePublisher:
    """Devices publishing their readings over MQTT (QoS 1) at a steady rate in a thread of its own,
    until stopped; knows what the broker acknowledged."""

    def __init__(self, mqtt_url: str, messages, rate_per_s: float, repeat_every: int = 23):
        self._messages = messages
        self._rate = rate_per_s
        self._repeat_every = repeat_every  # a device that did not see its PUBACK sends again
        self._sent: list[tuple[object, str, bytes]] = []
        self._stop = threading.Event()
        # The embedded broker's login is in the URL.
        self.client, address = paho_client(mqtt_url, f"it-fault-devices-{os.getpid()}", clean_session=False, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._publish, name="devices", daemon=True)

    @property
    def published(self) -> int:
        """Messages sent so far."""
        return len(self._sent)

    def start(self) -> None:
        """Starts publishing."""
        self._thread.start()

    def _publish(self) -> None:
        started = time.monotonic()
        for index, message in enumerate(self._messages):
            if self._stop.is_set():
                return
            pause = started + index / self._rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            copies = 2 if index % self._repeat_every == self._repeat_every - 1 else 1
            for _ in range(copies):
                info = self.client.publish(message.device.topic(), message.payload, qos=1)
                self._sent.append((info, message.device.device_id, message.payload))

    def stop(self, timeout_s: float = 30) -> collections.Counter:
        """Stops publishing, waits for every PUBACK and disconnects.

        Returns:
            (device id, payload) of every message the broker acknowledged, with multiplicity.
        """
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(timeout_s)
            wait_for(lambda: all(info.is_published() for info, _, _ in self._sent), timeout_s, "the broker to acknowledge every message")
            self.client.loop_stop()
            self.client.disconnect()
        return collections.Counter((device, payload) for _, device, payload in self._sent)


class JobProcess:
    """``iotlink run`` in a process of its own (the local MiniCluster: JobManager and TaskManager
    in one JVM, the process's child), as an operator runs it."""

    def __init__(self, settings, config: Path, job_name: str, log_path: Path):
        self.settings, self.config, self.job_name, self.log_path = settings, config, job_name, log_path
        self.rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
        self.proc = None

    def start(self, *extra: str) -> str:
        """Starts the job; returns its id once it runs."""
        self.proc = start_job_process(self.settings, ["--config", str(self.config), "--job-name", self.job_name, *extra], self.log_path)

        def running():
            assert self.proc.poll() is None, f"the job process exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}"
            return self.rest.running_job()

        return wait_for(running, 120, "the job to run", interval_s=0.5)

    def wait_for_progress(self, job_id: str, records: int, checkpoints: int = 1, timeout_s: float = 120) -> dict:
        """Waits until the job has read ``records`` raw records and completed ``checkpoints``
        checkpoints after that; returns the newest completed checkpoint's statistics."""

        def read():
            assert self.proc.poll() is None, f"the job process exited: {self.log_path.read_text()[-3000:]}"
            try:
                return self.rest.job_counters(job_id)["records_in"] >= records and self.rest.checkpoints(job_id)["counts"]["completed"]
            except (OSError, KeyError, ValueError):
                return None

        base = wait_for(read, timeout_s, f"the job to read {records} records")
        wait_for(lambda: self.rest.checkpoints(job_id)["counts"]["completed"] >= base + checkpoints, timeout_s, "checkpoints after that")
        return self.rest.checkpoints(job_id)["latest"]["completed"]

    def kill_taskmanager(self) -> int:
        """SIGKILLs the JVM that runs the job (JobManager and TaskManager), then its Python
        driver if that outlived it; returns the JVM's pid."""
        # (The JVM is the process's own child; a child of the JVM named java is a fork about to
        # run another program.)
        java = [child for child in psutil.Process(self.proc.pid).children() if child.name() == "java"]
        assert len(java) == 1, f"expected one JVM under the job process, found {[j.cmdline()[-1] for j in java]}"
        os.kill(java[0].pid, signal.SIGKILL)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return java[0].pid

    def wait_ended(self, timeout_s: float = 60) -> int:
        """Waits for the process to end (its job stopped); returns its exit code."""
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """Cancels the job and ends the process group, if it still runs."""
        if self.proc is not None:
            stop_job_process(self.proc, self.rest)


def test_a_killed_job_restores_and_a_savepoint_resumes_while_devices_keep_publishing(own_stack, tmp_path):
    job_name = "it-fault-bridge"
    # Devices whose payloads carry their own time (JSON): readings without one take the bridge's
    # receive time, whose windows close only as the clock passes them (the SQL aggregates' event
    # time does not run ahead of the clock), not when the closing readings arrive.
    start, rate = START + 5 * DAY, 50
    base = own_stack.settings_with_endpoints()
    flink = base.flink.model_copy(update={"rest_port": free_port(), "checkpoint_interval_ms": 500})
    settings = with_own_topics(base.model_copy(update={"data_dir": tmp_path, "flink": flink}), job_name)
    settings = with_own_hot_layer(settings, base.mongo_url, "it_fault_bridge")
    fleet = build_fleet(30, forms=("json",), profiles=parse_profile_mix("normal=55,overheat=10,late=20,garbage=15"), seed=81)
    # The bridge's envelopes name no product: the job finds each device's in the registry (which
    # knows the devices of the closing readings too, or it would refuse them).
    registry = tmp_path / "devices.yaml"
    devices = {d.device_id: {"product": d.product_id} for d in fleet} | {f"tick-{p}": {"product": "prod-a"} for p in range(4)}
    registry.write_text(yaml.safe_dump({"devices": devices}))
    settings = settings.model_copy(update={"device_registry": str(registry)})
    config = tmp_path / "job.yaml"  # the topic names reach the job process through its config file
    config.write_text(yaml.safe_dump({"topics": settings.topics.model_dump(), "flink": {"restart_attempts": settings.flink.restart_attempts}}))
    bridge = start_bridge(BridgeOptions(settings.bootstrap_servers, settings.topics.raw, settings.topics.dlq,
                                        broker=parse_broker_url(settings.mqtt_url), client_id=f"{job_name}-bridge"))
    # Rounds of 120 readings per device (4 minutes of device time), each with its overheating
    # ramp, for as long as the devices publish.
    simulator = FleetSimulator(fleet, seed=81, interval_ms=2_000)
    readings = itertools.chain.from_iterable(simulator.messages(start + n * 240_000, 120) for n in itertools.count())
    devices = DevicePublisher(settings.mqtt_url, readings, rate_per_s=rate)
    job = JobProcess(settings, config, job_name, tmp_path / "job.log")
    published = {}
    try:
        assert bridge.transport.subscribed.wait(20), "the bridge did not subscribe"
        job_id = job.start()
        devices.start()
        # 1. The TaskManager's process is killed mid-stream, after a checkpoint; a new job restores
        #    from the newest retained checkpoint (`iotlink run --restore latest`).
        completed = job.wait_for_progress(job_id, records=100)
        published["killed"] = devices.published
        job.kill_taskmanager()
        job_id = job.start("--restore", "latest")
        published["restored"] = devices.published
        restored = job.rest.checkpoints(job_id)["latest"]["restored"]
        job.wait_for_progress(job_id, records=0)  # (a savepoint needs every task running)
        # 2. Stopped with a savepoint, resumed from it.
        published["stopping"] = devices.published
        savepoint = stop_with_savepoint(job.rest, job_id, tmp_path / "savepoints")
        assert job.wait_ended() == 0, job.log_path.read_text()[-3000:]
        job_id = job.start("--restore", savepoint)
        published["resumed"] = devices.published
        resumed = job.rest.checkpoints(job_id)["latest"]["restored"]
        wait_for(lambda: devices.published >= 3300, 120, "3300 messages published")
        acknowledged = devices.stop()
        assert bridge.stop() is True, "the bridge did not confirm every message it took"
        # Readings a day later, one per partition: event time passes every window, all of them fire.
        ticks = produce_ticks(settings, range(4), start + DAY)
        # The bridge confirmed each message's record before acknowledging it: all are in Kafka now.
        values = read_topic(settings.bootstrap_servers, settings.topics.raw, read_committed=False)
        wait_until_sinks_hold_exactly(settings, values, fleet, start - HOUR, start + 2 * HOUR)  # (while the job runs)
    finally:
        devices.stop()
        if bridge.transport.connected:
            bridge.stop()
        job.stop()
    # Every message a device published reached the raw topic once, and nothing else did.
    envelopes = [parse_envelope(v) for v in values]
    assert collections.Counter((e.device_id, e.payload) for e in envelopes if not e.device_id.startswith("tick-")) == acknowledged
    assert sorted(v for v, e in zip(values, envelopes, strict=True) if e.device_id.startswith("tick-")) == sorted(ticks)
    # Devices published while the job was down, both times.
    assert published["killed"] < published["restored"] and published["stopping"] < published["resumed"], published
    # The new job restored the last checkpoint the killed one completed (or a later one it
    # completed before the kill), and the resumed one the savepoint. (Flink reports any restore
    # from a path as a savepoint restore.)
    assert restored is not None and f"/chk-{restored['id']}" in restored["external_path"] and restored["id"] >= completed["id"], (
        restored, completed)
    assert resumed is not None and resumed["external_path"].rstrip("/").endswith(Path(savepoint).name), resumed
