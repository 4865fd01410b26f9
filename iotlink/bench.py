"""The benchmark: throughput of the telemetry job over a preloaded topic, and end-to-end latency.

Throughput: preload N raw envelopes (mixed JSON/hex/CSV, many devices), run the job bounded
from the first to the last preloaded offset, print msgs/s, wall time and peak memory.
Latency: run the job streaming, publish at a fixed rate, and measure receive time (envelope
``received_at``) -> the telemetry record being readable (read_committed) downstream.
Soak: run the job streaming under a fixed rate (above what it sustains) for minutes, and
sample its rate, the backlog on the raw topic, its memory and its checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import orjson

from jobs.config import Settings


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmark options."""
    group = parser.add_argument_group("benchmark")
    group.add_argument(
        "--mode", choices=("throughput", "latency", "soak"), default="throughput",
        help="what to measure (default throughput); soak: publish at --rate for --duration (e.g. twice what the job "
        "sustains, for 600 s) and sample the job's rate, backlog, memory and checkpoints every --sample-every seconds",
    )
    group.add_argument("--messages", type=int, default=500_000, metavar="N", help="messages to preload (throughput; default 500000)")
    group.add_argument("--devices", type=int, default=10_000, metavar="N", help="simulated devices (default 10000)")
    group.add_argument("--forms", default="json,hex,csv", metavar="LIST", help="payload forms mixed in (default json,hex,csv)")
    group.add_argument("--rate", type=float, default=2000.0, metavar="MSG/S", help="publish rate in latency and soak mode (default 2000)")
    group.add_argument("--duration", type=float, default=60.0, metavar="S", help="publishing time in latency and soak mode (default 60)")
    group.add_argument("--sample-every", type=float, default=10.0, metavar="S", help="seconds between the soak's samples (default 10)")
    group.add_argument("--seed", type=int, default=11, help="simulator seed (default 11)")


@dataclass
class ProcessTreeUsage:
    """Samples a process tree every half second: the peak of its resident memory (summed over
    its processes) and the CPU time its processes used (user + system, as last sampled; a
    process that ended keeps its last sample)."""

    pid: int
    peak_bytes: int = 0
    _cpu: dict[tuple[int, float], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds used by the tree's processes while sampled."""
        return sum(self._cpu.values())

    def sample(self) -> None:
        """Takes one sample now."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error), proc.oneshot():
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self._cpu[(proc.pid, proc.create_time())] = times.user + times.system
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.5)

    def __enter__(self) -> ProcessTreeUsage:
        self.sample()
        self._baseline = dict(self._cpu)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        # Only what was used while sampled: processes already running at the start (the
        # embedded stack's servers) count from then.
        for key, before in self._baseline.items():
            if key in self._cpu:
                self._cpu[key] -= before


@dataclass
class MeasuredRun:
    """A subprocess run by :func:`run_measured`.

    Attributes:
        returncode: Its exit code (None when it was stopped).
        seconds: Wall time from start to end.
        cpu_seconds: CPU time of its process tree over its whole life.
        peak_bytes: Peak resident memory of its process tree.
        error: Why it did not finish (timed out), if so.
    """

    returncode: int | None
    seconds: float
    cpu_seconds: float
    peak_bytes: int
    error: str | None = None


def _remember_tree(pid: int, seen: dict) -> None:
    """Adds the running descendants of ``pid`` to ``seen`` (its JVM, its Python workers)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen.setdefault((child.pid, child.create_time()), child)


def _end_processes(proc, seen: dict) -> None:
    """Ends a subprocess and every descendant it was seen with (a JVM whose Python parent is
    gone ends by itself once its stdin closes; this makes sure, after a grace period)."""
    import subprocess

    import psutil

    if proc.poll() is None:
        _remember_tree(proc.pid, seen)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(alive, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def run_measured(command: list[str], log_path, timeout_s: float, cwd=None, env: dict | None = None) -> MeasuredRun:
    """Runs a benchmark's subprocess to its end and measures its process tree.

    Args:
        command: The command line.
        log_path: Where its output goes.
        timeout_s: Limit for the whole run; past it the tree is stopped.
        cwd: Its working directory.
        env: Its environment (default: this process's).

    Returns:
        What it used; no process of its tree outlives the call.
    """
    import subprocess

    seen: dict = {}
    started = time.monotonic()
    error = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    try:
        with ProcessTreeUsage(proc.pid) as usage:
            while proc.poll() is None:
                _remember_tree(proc.pid, seen)
                if time.monotonic() - started > timeout_s:
                    error = f"timed out after {timeout_s:.0f} s"
                    break
                time.sleep(0.5)
    finally:
        _end_processes(proc, seen)
    return MeasuredRun(proc.returncode if error is None else None, time.monotonic() - started, usage.cpu_seconds,
                       usage.peak_bytes, error)


# The throughput runs' fleet: a few devices send garbage or late readings, none overheats.
PRELOAD_PROFILES = "normal=94,garbage=3,late=3"


def preload(settings: Settings, messages: int, devices: int, forms: str, seed: int,
            profiles: str = PRELOAD_PROFILES) -> tuple[dict[int, int], int, int, float]:
    """Produces ``messages`` simulated envelopes to the raw topic (devices of the simulator's
    ``profiles`` mix).

    Returns:
        (end offset per partition, messages sent, of which deliberately invalid, seconds taken).
    """
    from confluent_kafka import Producer

    from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix

    fleet = build_fleet(devices, tuple(forms.split(",")), parse_profile_mix(profiles), seed)
    sim = FleetSimulator(fleet, seed=seed, interval_ms=1000)
    steps = math.ceil(messages / len(fleet))
    start_ts = int(time.time() * 1000) - steps * 1000
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": 1, "linger.ms": 50,
                         "message.max.bytes": 8 * 1024 * 1024 + 64 * 1024})
    ends: dict[int, int] = {}
    failed: list[str] = []

    def on_delivery(error, record):
        if error is not None:
            failed.append(str(error))
        elif record.offset() + 1 > ends.get(record.partition(), 0):
            ends[record.partition()] = record.offset() + 1

    started = time.monotonic()
    sent = invalid = 0
    now = int(time.time() * 1000)
    for message in sim.messages(start_ts, steps):
        if sent >= messages:
            break
        key, value = encode_for_kafka(message, now)
        while True:
            try:
                producer.produce(settings.topics.raw, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)
        sent += 1
        invalid += not message.valid
        if sent % 100_000 == 0:
            print(f"  preloaded {sent}/{messages}", flush=True)
    producer.flush()
    if failed:
        raise RuntimeError(f"preload: {len(failed)} records not written, the first: {failed[0]}")
    return ends, sent, invalid, time.monotonic() - started


def count_topic(bootstrap_servers: str, topic: str, since: dict[int, int] | None = None) -> int:
    """Counts the committed records of a topic by reading it to the end (from ``since``: a
    data directory's topics keep every earlier run's records)."""
    from connectors.kafka import read_topic

    return len(read_topic(bootstrap_servers, topic, since=since, timeout_s=300.0))


def _machine() -> str:
    import platform

    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def _start_job(settings: Settings, extra: list[str], log_name: str):
    from iotlink.job_process import start_job_process

    return start_job_process(settings, extra, settings.data_dir.resolve() / "logs" / log_name)


def java_only_ceiling(settings: Settings, start: dict[int, int], stop: dict[int, int], parallelism: int) -> tuple[int, float]:
    """The same raw offsets read by a Java-only Flink job (Kafka source -> COUNT, batch mode, no
    Python operator): how fast this machine moves the input at all, the platform's ceiling.

    Returns:
        (records counted, seconds from submission to the result; the JVM is already up).
    """
    from iotlink.sql_commands import create_table_env

    table_env = create_table_env(parallelism=parallelism, batch=True)
    offsets = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(start.items()))
    ends = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(stop.items()))
    table_env.execute_sql(
        f"""CREATE TEMPORARY TABLE raw_ceiling (payload BYTES) WITH (
          'connector' = 'kafka', 'topic' = '{settings.topics.raw}',
          'properties.bootstrap.servers' = '{settings.bootstrap_servers}', 'properties.group.id' = 'iotlink-bench-ceiling',
          'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = '{offsets}',
          'scan.bounded.mode' = 'specific-offsets', 'scan.bounded.specific-offsets' = '{ends}',
          'format' = 'raw')"""
    )
    started = time.monotonic()
    with table_env.execute_sql("SELECT COUNT(*) FROM raw_ceiling").collect() as rows:
        counted = next(iter(rows))[0]
    return counted, time.monotonic() - started


def bench_throughput(args: argparse.Namespace, settings: Settings) -> int:
    """Preloads the raw topic and times the bounded job over it."""
    from connectors.kafka import end_offsets

    print(f"machine: {_machine()}")
    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    telemetry_before = end_offsets(settings.bootstrap_servers, settings.topics.telemetry)
    dlq_before = end_offsets(settings.bootstrap_servers, settings.topics.dlq)
    print(f"preloading {args.messages} messages from {args.devices} devices ({args.forms}) …", flush=True)
    ends, sent, invalid, preload_s = preload(settings, args.messages, args.devices, args.forms, args.seed)
    print(f"preloaded {sent} messages in {preload_s:.1f}s ({sent / preload_s:.0f} msg/s), {invalid} deliberately malformed")
    start = ",".join(f"{p}={before.get(p, 0)}" for p in sorted(ends))
    stop = ",".join(f"{p}={o}" for p, o in sorted(ends.items()))
    job_name = f"iotlink-bench-{int(time.time())}"
    print(f"running the telemetry job bounded over the preloaded offsets (job {job_name}) …", flush=True)
    t0 = time.monotonic()
    proc = _start_job(settings, ["--start-offsets", start, "--stop-offsets", stop, "--job-name", job_name], "bench-job.log")
    from iotlink.live import FlinkRest

    rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
    running_at = None
    # The job's process tree, and everything this benchmark started (the embedded stack's
    # servers too): the whole platform on this machine.
    with ProcessTreeUsage(proc.pid) as memory, ProcessTreeUsage(os.getpid()) as platform:
        while proc.poll() is None:
            if running_at is None and rest.running_job() is not None:
                running_at = time.monotonic()
            time.sleep(0.2)
        code = proc.returncode
    ended = time.monotonic()
    wall = ended - t0
    job_s = ended - running_at if running_at else wall
    if code != 0:
        print(f"error: the job exited with code {code}; see {settings.data_dir.resolve() / 'logs' / 'bench-job.log'}")
        return 1
    telemetry = count_topic(settings.bootstrap_servers, settings.topics.telemetry, since=telemetry_before)
    dlq = count_topic(settings.bootstrap_servers, settings.topics.dlq, since=dlq_before)
    print("running the Java-only pass-through (Kafka source -> COUNT) over the same offsets …", flush=True)
    counted, ceiling_s = java_only_ceiling(
        settings, {p: before.get(p, 0) for p in ends}, ends, max(settings.flink.parallelism, len(ends))
    )
    print()
    print(f"messages           {sent}")
    print(f"telemetry records  {telemetry}")
    print(f"dead letters       {dlq}")
    print(f"accounted for      {telemetry + dlq} of {sent}")
    print(f"wall time          {wall:.1f} s (JVM start, job, shutdown)")
    print(f"job running time   {job_s:.1f} s (RUNNING -> finished)")
    print(f"throughput         {sent / job_s:.0f} msgs/s while running, {sent / wall:.0f} msgs/s over the whole run")
    print(f"peak memory        {memory.peak_bytes / 2**20:.0f} MiB (job process tree RSS); "
          f"{platform.peak_bytes / 2**20:.0f} MiB with the broker and databases")
    print(f"cores used         {memory.cpu_seconds / wall:.2f} by the job, {platform.cpu_seconds / wall:.2f} by everything "
          f"(of {os.cpu_count()}); {memory.cpu_seconds / sent * 1e6:.0f} µs of job CPU per message")
    print(f"Java-only ceiling  {counted / ceiling_s:.0f} msgs/s ({counted} records counted in {ceiling_s:.1f} s); "
          f"the job runs at {sent / job_s / (counted / ceiling_s):.1%} of it")
    return 0 if telemetry + dlq == sent and counted == sent else 1


def _read_committed_from_end(settings: Settings, topic: str):
    """A read_committed consumer of ``topic`` positioned at its current end."""
    from kafka import KafkaConsumer, TopicPartition

    from connectors.kafka import end_offsets

    ends = end_offsets(settings.bootstrap_servers, topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(ends)]
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, ends[tp.partition])
    return consumer


def _percentiles(values: list[int]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return f"p50 {q[49]:.0f}  p95 {q[94]:.0f}  p99 {q[98]:.0f}  max {max(values)}"


def postgres_alarm_latencies(postgres_url: str, since_ms: int) -> list[int]:
    """Reading -> RAISED alarm row in PostgreSQL ``alarm_events`` (its ``recorded_at``, set by the
    server when the row was written) for the alarms raised at or after ``since_ms``, in ms."""
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT (extract(epoch FROM recorded_at) * 1000)::bigint - device_ts FROM alarm_events "
            "WHERE event = 'RAISED' AND device_ts >= %s",
            (since_ms,),
        ).fetchall()
    return [latency for (latency,) in rows]


def _start_streaming_job(settings: Settings, kind: str):
    """Starts the job unbounded from the raw topic's current end and waits until it runs.

    Returns:
        (process, REST client, job id), or None when it did not start within 180 s (said so).
    """
    from connectors.kafka import end_offsets
    from iotlink.job_process import stop_job_process
    from iotlink.live import FlinkRest

    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    start = ",".join(f"{p}={o}" for p, o in sorted(before.items()))
    job_name = f"iotlink-{kind}-{int(time.time())}"
    proc = _start_job(settings, ["--start-offsets", start, "--job-name", job_name], f"bench-{kind}-job.log")
    rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
    deadline = time.monotonic() + 180
    while (job_id := rest.running_job()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            print("error: the job did not start; see the job log")
            stop_job_process(proc, rest)
            return None
        time.sleep(0.5)
    return proc, rest, job_id


def bench_latency(args: argparse.Namespace, settings: Settings) -> int:
    """Streams at a fixed rate and reports receive -> telemetry-visible and reading -> alarm-visible
    (on the alarm topic and in PostgreSQL) latency percentiles."""

    from iotlink.job_process import stop_job_process
    from iotlink.simulator import PublishStats, run_simulation

    print(f"machine: {_machine()}")
    started = _start_streaming_job(settings, "latency")
    if started is None:
        return 1
    proc, rest, _ = started
    latencies: list[int] = []
    alarm_latencies: list[int] = []
    stop = threading.Event()
    # Start reading where the topics end now, so every record published from here on is measured.
    telemetry = _read_committed_from_end(settings, settings.topics.telemetry)
    alarms = _read_committed_from_end(settings, settings.topics.alarms)

    def consume():
        while not stop.is_set():
            for records in telemetry.poll(timeout_ms=250).values():
                now = int(time.time() * 1000)
                latencies.extend(now - orjson.loads(r.value)["ingest_ts"] for r in records)
            for records in alarms.poll(timeout_ms=250).values():
                now = int(time.time() * 1000)
                # The simulated devices' clocks are true: the raising reading's device time is
                # when it was sent.
                alarm_latencies.extend(now - event["device_ts"] for event in map(orjson.loads, (r.value for r in records))
                                       if event.get("event") == "RAISED")

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    # One device in ten overheats, so alarms are raised while the rest report normally.
    sim_args = argparse.Namespace(
        devices=min(args.devices, int(args.rate)), rate=args.rate, duration=args.duration, count=None,
        profile="normal=90,overheat=10", forms="json", seed=args.seed, target="kafka", mqtt_env="dev", repeat=0.0,
    )
    stats = PublishStats()
    published_from_ms = int(time.time() * 1000)
    print(f"publishing {args.rate:.0f} msg/s for {args.duration:.0f}s (checkpoint interval {settings.flink.checkpoint_interval_ms} ms) …")
    run_simulation(settings, sim_args, progress=True, stats=stats)
    time.sleep(settings.flink.checkpoint_interval_ms / 1000 * 3 + 3)
    stop.set()
    reader.join()
    telemetry.close()
    alarms.close()
    stop_job_process(proc, rest)
    if not latencies:
        print("error: no telemetry became visible")
        return 1
    print()
    print(f"sent {stats.sent}, telemetry seen {len(latencies)}, alarms raised {len(alarm_latencies)}")
    print(f"latency receive -> telemetry visible (ms): {_percentiles(latencies)}")
    if alarm_latencies:
        print(f"latency reading -> RAISED alarm visible on {settings.topics.alarms} (ms): {_percentiles(alarm_latencies)}")
        stored = postgres_alarm_latencies(settings.postgres_url, published_from_ms) if settings.postgres_url else []
        if stored:
            print(f"latency reading -> RAISED alarm row in PostgreSQL alarm_events (ms): {_percentiles(stored)}")
    else:
        print("no alarm was raised during the run (the overheating devices need a few minutes to pass 80 C)")
    print("(exactly-once output becomes visible when the checkpoint that covers it completes; the alarm rules")
    reorder = settings.flink.alarm_reorder_ms
    print(f" evaluate a device's readings once its device time is {reorder} ms past them)" if reorder else " evaluate each reading at once)")
    return 0


@dataclass(frozen=True)
class SoakSample:
    """One sample of a soak run."""

    elapsed_s: float
    sent: int
    consumed: int  # raw records the job has read (task counters: a restart sets them back)
    rss_bytes: int  # the job's process tree
    checkpoints_completed: int
    checkpoints_failed: int
    last_checkpoint_ms: int  # duration of the newest completed checkpoint
    restarts: int


def soak_summary(samples: list[SoakSample]) -> dict[str, float]:
    """What a soak run shows, from its samples (at least two; the first minute is warm-up).

    Returns:
        ``offered`` and ``processed`` msgs/s after the warm-up, ``backlog_growth`` msgs/s (the
        difference, as the raw topic's lag grew), ``backlog_end`` records, ``rss_first`` /
        ``rss_last`` MiB (mean of the first and last quarter after the warm-up) and
        ``rss_slope`` MiB per minute (least squares over the second half of the run: memory
        that fills caches early and then stays is flat there, a leak is not),
        ``checkpoint_max_ms``, ``checkpoints_failed`` (after the warm-up), ``restarts``.
    """
    warm = [s for s in samples if s.elapsed_s >= 60] or samples
    if len(warm) < 2:
        warm = samples[-2:]
    first, last = warm[0], warm[-1]
    span = max(last.elapsed_s - first.elapsed_s, 1e-9)
    quarter = max(len(warm) // 4, 1)
    mib = [s.rss_bytes / 2**20 for s in warm]
    late = warm[len(warm) // 2:] if len(warm) >= 4 else warm
    late_mib = [s.rss_bytes / 2**20 for s in late]
    minutes = [s.elapsed_s / 60 for s in late]
    mean_t, mean_m = statistics.fmean(minutes), statistics.fmean(late_mib)
    spread = sum((t - mean_t) ** 2 for t in minutes)
    slope = sum((t - mean_t) * (m - mean_m) for t, m in zip(minutes, late_mib, strict=True)) / spread if spread else 0.0
    return {
        "offered": (last.sent - first.sent) / span,
        "processed": (last.consumed - first.consumed) / span,
        "backlog_growth": ((last.sent - last.consumed) - (first.sent - first.consumed)) / span,
        "backlog_end": last.sent - last.consumed,
        "rss_first": statistics.fmean(mib[:quarter]),
        "rss_last": statistics.fmean(mib[-quarter:]),
        "rss_slope": slope,
        "checkpoint_max_ms": max(s.last_checkpoint_ms for s in warm),
        # Checkpoints triggered while the job's tasks were still starting fail; those are warm-up.
        "checkpoints_failed": last.checkpoints_failed - first.checkpoints_failed,
        "restarts": last.restarts,
    }


def _tree_rss(pid: int) -> int:
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total


def bench_soak(args: argparse.Namespace, settings: Settings) -> int:
    """Publishes at ``--rate`` for ``--duration`` seconds while the job runs, sampling it."""
    from iotlink.job_process import stop_job_process
    from iotlink.simulator import PublishStats, run_simulation

    print(f"machine: {_machine()}")
    started = _start_streaming_job(settings, "soak")
    if started is None:
        return 1
    proc, rest, job_id = started
    sim_args = argparse.Namespace(
        devices=args.devices, rate=args.rate, duration=args.duration, count=None, profile="normal=90,overheat=10",
        forms=args.forms, seed=args.seed, target="kafka", mqtt_env="dev", repeat=0.0,
    )
    stats = PublishStats()
    publisher = threading.Thread(target=run_simulation, args=(settings, sim_args), kwargs={"stats": stats}, daemon=True)
    print(f"publishing {args.rate:.0f} msg/s from {args.devices} devices for {args.duration:.0f} s; a sample every "
          f"{args.sample_every:.0f} s (checkpoint interval {settings.flink.checkpoint_interval_ms} ms)")
    print(f"{'time':>6} {'sent':>9} {'read':>9} {'backlog':>8} {'msgs/s':>7} {'RSS MiB':>8} {'ckpts':>6} {'last ckpt':>10} {'failed':>6}")
    samples: list[SoakSample] = []
    started = time.monotonic()
    publisher.start()
    previous = None
    while publisher.is_alive() and proc.poll() is None:
        time.sleep(args.sample_every)
        try:
            consumed = rest.job_counters(job_id)["records_in"]
            checkpoints = rest.checkpoints(job_id)
            restarts = int(float(next(iter(rest.get(f"/jobs/{job_id}/metrics?get=numRestarts")), {}).get("value", 0)))
        except (OSError, KeyError, ValueError):
            continue
        latest = (checkpoints.get("latest") or {}).get("completed") or {}
        sample = SoakSample(
            time.monotonic() - started, stats.sent, consumed, _tree_rss(proc.pid), checkpoints["counts"]["completed"],
            checkpoints["counts"]["failed"], int(latest.get("end_to_end_duration", 0)), restarts,
        )
        rate = (sample.consumed - previous.consumed) / (sample.elapsed_s - previous.elapsed_s) if previous else 0.0
        print(f"{sample.elapsed_s:6.0f} {sample.sent:9d} {sample.consumed:9d} {sample.sent - sample.consumed:8d} {rate:7.0f} "
              f"{sample.rss_bytes / 2**20:8.0f} {sample.checkpoints_completed:6d} {sample.last_checkpoint_ms:8d}ms "
              f"{sample.checkpoints_failed:6d}", flush=True)
        samples.append(sample)
        previous = sample
    alive = proc.poll() is None
    stop_job_process(proc, rest)
    if not alive:
        print("error: the job ended during the soak; see the job log")
        return 1
    if len(samples) < 2:
        print("error: fewer than two samples (is --duration longer than --sample-every?)")
        return 1
    summary = soak_summary(samples)
    print()
    print(f"offered            {summary['offered']:.0f} msgs/s (after the first minute)")
    print(f"processed          {summary['processed']:.0f} msgs/s")
    print(f"backlog            grew {summary['backlog_growth']:.0f} msgs/s, {summary['backlog_end']:.0f} records at the end "
          "(in Kafka; the job reads at its own pace)")
    print(f"memory             {summary['rss_first']:.0f} -> {summary['rss_last']:.0f} MiB (job process tree RSS), "
          f"slope {summary['rss_slope']:+.1f} MiB/min over the second half")
    print(f"checkpoints        longest {summary['checkpoint_max_ms']:.0f} ms, {summary['checkpoints_failed']:.0f} failed; "
          f"{summary['restarts']:.0f} restarts")
    return 0


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the chosen benchmark, on the embedded stack when ``--embedded`` is given."""
    from iotlink.stack import EmbeddedStack

    stack = None
    if args.embedded:
        # Every sink on: PostgreSQL (aggregates, alarm events), Iceberg (archive, history) and
        # the MongoDB hot layer, as the job runs in production.
        stack = EmbeddedStack(settings, ("kafka", "postgres", "iceberg", "mongo"))
        stack.start()
        settings = stack.settings_with_endpoints()
    try:
        if args.mode == "latency":
            return bench_latency(args, settings)
        if args.mode == "soak":
            return bench_soak(args, settings)
        return bench_throughput(args, settings)
    finally:
        if stack is not None:
            stack.stop()
