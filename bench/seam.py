"""Seam benchmark: the telemetry job as one job, against two jobs with Kafka between them — the
job without its aggregates (decoding, rules, telemetry, Iceberg, MongoDB) and a Java-only job
that reads ``iotlink.telemetry`` and ``iotlink.dlq`` back and computes the same aggregates.

Phases, each a bounded Flink job in a fresh subprocess of this script, one after the other on
the same embedded stack (Kafka, PostgreSQL, Iceberg, the MongoDB stand-in) and the same
preloaded raw records:

  full        the telemetry job as ``iotlink run`` builds it (``jobs.telemetry_job.prepare_job``).
  decode      the same description with ``outputs.aggregates`` removed: no SQL aggregates.
  aggregate   Java only: the committed telemetry records ``decode`` wrote (read_committed, its
              offsets) -> ``TelemetryTuples`` (device id and time read from the JSON) -> the same
              watermarks and duplicate suppression -> ``jobs.aggregates.add_aggregates`` with the
              dead letters ``decode`` wrote -> the JDBC upserts and Iceberg ``agg_1h``.

Between ``full`` and ``decode`` the aggregate tables of PostgreSQL are summarised (rows, summed
counts and sums per table) and emptied; after ``aggregate`` the same summary must come out, so
the two jobs are shown to do the one job's work. (The MongoDB product summaries, fed by the
hourly product aggregates, are left out of the two-job variant.)

Reported per phase: seconds from submission to the job's end, msgs/s, CPU time of the
subprocess's process tree during the job and over its whole life (JVM start included), and CPU
per raw message; then ``decode`` + ``aggregate`` against ``full``.

Usage::

    .venv/bin/python bench/seam.py --data-dir /tmp/seam --messages 100000 --devices 10000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from connectors.kafka import end_offsets
from iotlink.bench import ProcessTreeUsage, count_topic, preload, run_measured
from iotlink.stack import EmbeddedStack
from jobs.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
FORMS = "json,hex,csv"
PHASES = ("full", "decode", "aggregate")
AGGREGATE_TABLES = {
    "agg_1m": "count(*), coalesce(sum(count), 0), round(coalesce(sum(sum), 0)::numeric, 3)",
    "agg_5m": "count(*), coalesce(sum(count), 0), round(coalesce(sum(sum), 0)::numeric, 3)",
    "agg_1h": "count(*), coalesce(sum(count), 0), round(coalesce(sum(sum), 0)::numeric, 3)",
    "comm_quality_5m": "count(*), coalesce(sum(received), 0), coalesce(sum(rejected), 0)",
    "comm_quality_1h": "count(*), coalesce(sum(received), 0), coalesce(sum(rejected), 0)",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (and of its per-phase subprocesses)."""
    parser = argparse.ArgumentParser(prog="bench/seam.py", description=__doc__.split("\n\n", 1)[0].replace("\n", " "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory of the embedded stack started for the run (required; use a fresh one); each "
                        "phase's output goes to DIR/logs/seam-<phase>.log")
    parser.add_argument("--messages", type=int, default=100_000, metavar="N", help="raw envelopes to preload (default 100000)")
    parser.add_argument("--devices", type=int, default=10_000, metavar="N", help="simulated devices sending them (default 10000)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed (default 11, as iotlink bench)")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds a phase may take before it is stopped and counted as failed (default 3600)")
    internal = parser.add_argument_group("internal (how this script runs one phase in a subprocess)")
    internal.add_argument("--run-phase", choices=PHASES, help="run one phase from --job-file and exit")
    internal.add_argument("--job-file", metavar="FILE", help="JSON: settings and offsets of the run")
    internal.add_argument("--result-file", metavar="FILE", help="JSON written by --run-phase: seconds, CPU seconds")
    return parser


# --- one phase, in its own subprocess -------------------------------------------------------------

def _offsets(mapping: dict) -> dict[int, int]:
    return {int(p): int(o) for p, o in mapping.items()}


def _execute(env, job_name: str) -> dict:
    """Runs the wired job to its end; its seconds and the CPU this process tree used meanwhile."""
    started = time.monotonic()
    with ProcessTreeUsage(os.getpid()) as usage:
        env.execute(job_name)
        usage.sample()
    return {"seconds": time.monotonic() - started, "cpu_seconds": usage.cpu_seconds}


def _run_telemetry_job(job: dict, settings: Settings, with_aggregates: bool) -> dict:
    """Phases ``full`` and ``decode``: the job ``iotlink run`` builds, bounded over the preloaded offsets."""
    from jobs.telemetry_job import RunOptions, build_telemetry_pipeline, prepare_job

    options = RunOptions(start_offsets=_offsets(job["start"]), stop_offsets=_offsets(job["stop"]), job_name=job["job_name"])
    env, description = prepare_job(settings, options)
    if not with_aggregates:
        description = replace(description, outputs=replace(description.outputs, aggregates=None))
    build_telemetry_pipeline(env, description)
    return _execute(env, options.job_name)


def _run_aggregate_job(job: dict, settings: Settings) -> dict:
    """Phase ``aggregate``: Java only, from the topics the ``decode`` phase wrote."""
    from jobs.connector_classpath import export_jvm_classpath
    from jobs.telemetry_job import RunOptions, decoder_registry_factory, export_python_path, flink_configuration

    export_python_path()
    export_jvm_classpath()
    from pyflink.common import Configuration, Duration, WatermarkStrategy
    from pyflink.datastream import DataStream, StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    from connectors.kafka import committed_string_source, exactly_once_string_sink
    from jobs.aggregates import AggregateOutputs, add_aggregates, table_environment
    from jobs.archive import ArchiveOutputs, add_archive
    from jobs.connector_classpath import make_connector_jars_visible
    from jobs.java_operators import deduplicate
    from jobs.table_planning import attach_as_datastream
    from jobs.telemetry_functions import TIMESTAMPED_TELEMETRY
    from jobs.telemetry_job import _assign_device_time

    options = RunOptions(job_name=job["job_name"])
    parallelism = len(job["telemetry_start"])
    config = Configuration()
    conf = flink_configuration(settings, options, parallelism)
    conf["restart-strategy.type"] = "none"  # a failure ends the measurement instead of restarting
    for key, value in conf.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    make_connector_jars_visible()
    bootstrap, topics = settings.bootstrap_servers, settings.topics
    telemetry_source = committed_string_source(bootstrap, topics.telemetry, "iotlink-bench-seam", _offsets(job["telemetry_start"]),
                                               _offsets(job["telemetry_stop"]))
    dlq_source = committed_string_source(bootstrap, topics.dlq, "iotlink-bench-seam", _offsets(job["dlq_start"]), _offsets(job["dlq_stop"]))
    telemetry = env.from_source(telemetry_source, WatermarkStrategy.no_watermarks(), "Kafka telemetry source").set_parallelism(parallelism)
    telemetry = telemetry.uid("source-telemetry").name("Kafka: iotlink.telemetry")
    j_tuples = telemetry._j_data_stream.process(get_gateway().jvm.io.iotlink.flink.TelemetryTuples(),
                                                TIMESTAMPED_TELEMETRY.get_java_type_info())
    j_tuples.setParallelism(parallelism).uid("telemetry-tuples").name("Telemetry tuples")
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(settings.flink.out_of_orderness_ms))
    readings = _assign_device_time(DataStream(j_tuples), strategy, parallelism)
    if settings.flink.dedup_ttl_ms:
        readings = deduplicate(readings, settings.flink.dedup_ttl_ms).uid("dedup").name("Drop duplicate readings")
    dead_letters = env.from_source(dlq_source, WatermarkStrategy.no_watermarks(), "Kafka dlq source").uid("source-dlq").name("Kafka: iotlink.dlq")
    devices = {device_id: int(info.expected_interval_s * 1000)
               for device_id, info in decoder_registry_factory(settings).devices.items() if info.expected_interval_s}
    outputs = AggregateOutputs(settings.postgres_url, allowed_lateness_ms=settings.flink.allowed_lateness_ms, expected_intervals_ms=devices)
    t_env = table_environment(env)
    statements = t_env.create_statement_set()
    late_sink = exactly_once_string_sink(bootstrap, topics.late, f"{options.job_name}-late")
    add_aggregates(t_env, statements, readings, dead_letters, outputs, late_sink)
    add_archive(t_env, statements, ArchiveOutputs(settings.iceberg_catalog, settings.iceberg_warehouse, topics.raw))
    attach_as_datastream(t_env, statements)
    return _execute(env, options.job_name)


def run_phase(name: str, job_file: Path, result_file: Path) -> int:
    """Runs one phase (the subprocess side) and writes its result as JSON."""
    job = json.loads(job_file.read_text())
    settings = Settings.model_validate(job["settings"])
    job["job_name"] = f"iotlink-bench-seam-{name}"
    result = _run_aggregate_job(job, settings) if name == "aggregate" else _run_telemetry_job(job, settings, name == "full")
    result_file.write_text(json.dumps(result))
    return 0


# --- the orchestrating process ---------------------------------------------------------------------

@dataclass
class PhaseOutcome:
    """What one phase's subprocess gave."""

    name: str
    seconds: float = 0.0
    job_cpu_seconds: float = 0.0
    process_cpu_seconds: float = 0.0
    process_seconds: float = 0.0
    peak_bytes: int = 0
    error: str | None = None


def aggregate_summary(postgres_url: str) -> dict[str, list[str]]:
    """Rows and summed counts (and sums) of each aggregate table of PostgreSQL."""
    with psycopg.connect(postgres_url) as conn:
        return {table: [str(v) for v in conn.execute(f"SELECT {columns} FROM {table}").fetchone()]
                for table, columns in AGGREGATE_TABLES.items()}


def empty_aggregate_tables(postgres_url: str) -> None:
    """Empties the aggregate tables (between the one-job and the two-job run)."""
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f"TRUNCATE {', '.join(AGGREGATE_TABLES)}")


def _run(name: str, job_file: Path, log_dir: Path, timeout_s: float) -> PhaseOutcome:
    result_file = job_file.with_name(f"result-{name}.json")
    result_file.unlink(missing_ok=True)
    flink_log_dir = log_dir / f"flink-seam-{name}"
    flink_log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"seam-{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-phase", name, "--job-file", str(job_file),
               "--result-file", str(result_file)]
    run = run_measured(command, log_path, timeout_s, cwd=ROOT, env={**os.environ, "FLINK_LOG_DIR": str(flink_log_dir)})
    outcome = PhaseOutcome(name, process_cpu_seconds=run.cpu_seconds, process_seconds=run.seconds, peak_bytes=run.peak_bytes,
                           error=run.error)
    if outcome.error is None and run.returncode != 0:
        outcome.error = f"exited with code {run.returncode}"
    if outcome.error is None:
        try:
            result = json.loads(result_file.read_text())
            outcome.seconds, outcome.job_cpu_seconds = result["seconds"], result["cpu_seconds"]
        except (OSError, ValueError, KeyError) as exc:
            outcome.error = f"no result: {exc}"
    if outcome.error is not None:
        outcome.error += f" (see {log_path})"
    return outcome


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def orchestrate(args: argparse.Namespace) -> int:
    """Starts the stack, preloads the input, runs the phases, prints the comparison.

    Returns:
        The exit code: 0 when every phase ran, accounted for every message and the two jobs'
        aggregates equal the one job's.
    """
    data_dir = Path(args.data_dir).resolve()
    settings = load_settings(None, {"data_dir": data_dir})
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"machine: {os.cpu_count()} cores; starting the embedded stack (data dir {data_dir}) …", flush=True)
    stack = EmbeddedStack(settings, ("kafka", "postgres", "iceberg", "mongo"))
    stack.start()
    problems: list[str] = []
    try:
        settings = stack.settings_with_endpoints()
        bootstrap, topics = settings.bootstrap_servers, settings.topics
        before = end_offsets(bootstrap, topics.raw)
        print(f"preloading {args.messages} messages from {args.devices} devices ({FORMS}) …", flush=True)
        ends, sent, invalid, _ = preload(settings, args.messages, args.devices, FORMS, args.seed)
        print(f"preloaded {sent} messages, {invalid} deliberately malformed", flush=True)
        log_dir = data_dir / "logs"
        work_dir = data_dir / "seam"
        log_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        job = {"settings": settings.model_dump(mode="json"), "start": {p: before.get(p, 0) for p in ends}, "stop": ends}
        job_file = work_dir / "job.json"
        outcomes: dict[str, PhaseOutcome] = {}
        summaries = {}
        decode_marks: dict[str, dict[int, int]] = {}  # where the telemetry and dlq topics ended before the decode phase
        for name in PHASES:
            if name == "decode":
                summaries["full"] = aggregate_summary(settings.postgres_url)
                empty_aggregate_tables(settings.postgres_url)
            marks = {topic: end_offsets(bootstrap, topic) for topic in (topics.telemetry, topics.dlq)}
            if name == "aggregate":
                job.update(telemetry_start=decode_marks[topics.telemetry], telemetry_stop=marks[topics.telemetry],
                           dlq_start=decode_marks[topics.dlq], dlq_stop=marks[topics.dlq])
            job_file.write_text(json.dumps(job))
            print(f"{name}: running …", flush=True)
            outcome = outcomes[name] = _run(name, job_file, log_dir, args.timeout)
            if outcome.error is not None:
                problems.append(f"{name}: {outcome.error}")
                print(f"  {name}: failed: {outcome.error}", flush=True)
                break
            print(f"  {name}: {outcome.seconds:.1f} s, {outcome.job_cpu_seconds / sent * 1e6:.0f} µs job CPU per message", flush=True)
            if name in ("full", "decode"):
                records = count_topic(bootstrap, topics.telemetry, since=marks[topics.telemetry])
                letters = count_topic(bootstrap, topics.dlq, since=marks[topics.dlq])
                if records + letters != sent:
                    problems.append(f"{name}: {records} telemetry records + {letters} dead letters for {sent} messages")
                decode_marks = marks
        if not problems:
            summaries["two jobs"] = aggregate_summary(settings.postgres_url)
            if summaries["two jobs"] != summaries["full"]:
                problems.append(f"aggregates differ: one job {summaries['full']}, two jobs {summaries['two jobs']}")
        print()
        print(_format_table(list(outcomes.values()), sent))
        for label, summary in summaries.items():
            print(f"aggregates ({label}): " + "; ".join(f"{table} {' / '.join(values)}" for table, values in summary.items()))
        for problem in problems:
            print(f"error: {problem}")
        return 1 if problems else 0
    finally:
        print("stopping the embedded stack …", flush=True)
        stack.stop()


def _format_table(outcomes: list[PhaseOutcome], messages: int) -> str:
    """The phases as a text table, and decode + aggregate against full."""
    header = f"{'phase':<11}{'seconds':>8}{'msgs/s':>9}{'job CPU s':>10}{'CPU µs/msg':>11}{'proc CPU s':>11}{'proc s':>8}{'peak MiB':>9}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        if o.error is not None:
            lines.append(f"{o.name:<11}failed: {o.error}")
            continue
        lines.append(f"{o.name:<11}{o.seconds:8.1f}{messages / o.seconds:9.0f}{o.job_cpu_seconds:10.1f}"
                     f"{o.job_cpu_seconds / messages * 1e6:11.0f}{o.process_cpu_seconds:11.1f}{o.process_seconds:8.1f}"
                     f"{o.peak_bytes / 2**20:9.0f}")
    done = {o.name: o for o in outcomes if o.error is None}
    if all(name in done for name in PHASES):
        two = done["decode"].job_cpu_seconds + done["aggregate"].job_cpu_seconds
        seconds = done["decode"].seconds + done["aggregate"].seconds
        lines.append(f"{'two jobs':<11}{seconds:8.1f}{messages / seconds:9.0f}{two:10.1f}{two / messages * 1e6:11.0f}"
                     f"  (decode then aggregate; against full: {two / done['full'].job_cpu_seconds:.2f}× the CPU)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_phase:
        if not (args.job_file and args.result_file):
            parser.error("--run-phase needs --job-file and --result-file")
        return run_phase(args.run_phase, Path(args.job_file), Path(args.result_file))
    if not args.data_dir:
        parser.error("--data-dir is required")
    try:
        return orchestrate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
