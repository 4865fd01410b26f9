"""Crossing benchmark: what it costs per record to hand the decoder its input from Java and its
output back, in different representations, over the same preloaded Kafka input.

Every variant decodes every raw record with the platform's real decoder (the YAML specs of the
platform settings, ``$IOTLINK_CONFIG`` / ``$IOTLINK_SPECS_DIR`` or the project's ``yaml_specs``; a
``DecoderRegistry`` built once per task in ``open``; and
``decode_raw_record`` as the telemetry job's ``DecodeRawFunction`` calls it); only the way the
records cross between Java and Python differs. Each variant's outputs (telemetry records plus
dead letters) are counted by Flink in Java, never in Python:

  a      DataStream API, thread mode: Kafka source of raw bytes -> the job's DecodeRawFunction yielding a
         typed tuple (device_id STRING, device_ts LONG, telemetry JSON STRING) with its event time per record and
         each dead letter's JSON on a side output (as the job's decode operator does) ->
         both streams as tables -> SELECT COUNT(*) over their UNION ALL.
  b      Table API, general Python scalar UDF, thread mode: Kafka SQL table ('format' = 'raw',
         payload BYTES) -> decode_payload(payload) ARRAY<STRING> (telemetry JSON and dead-letter
         JSON) -> SELECT COUNT(*) FROM t CROSS JOIN UNNEST(decode_payload(payload)).
  c      Table API, vectorized (pandas) UDF, process mode (the only mode PyFlink runs them in):
         a pandas Series of payloads per Arrow batch -> a Series of ARRAY<STRING> -> the same
         UNNEST count; Arrow batches of 10,000 (python.fn-execution.arrow.batch.size).
  c1000  c with Arrow batches of 1,000.
  d      b in process mode: the execution mode without changing the representation.

Also run each time: the Java-only ceiling (``iotlink.bench.java_only_ceiling``: the same offsets,
Kafka source -> COUNT, no Python). All jobs run bounded in batch runtime mode, each in a fresh
subprocess of this script (``--run-variant``), so every one starts its JVM cold in the same way
and no JVM outlives its variant. Reported per variant: seconds from submission to the counted
result, msgs/s and wall µs per message, the rate as a share of the ceiling's, and CPU time of
the subprocess's process tree (this script's Python, its JVM, process-mode Python workers):
during the job (submission -> result) and over the whole subprocess (JVM start included). CPU
per message is the robust number on a busy machine; wall-clock rates move with other load.

Usage::

    .venv/bin/python bench/crossing.py --data-dir /tmp/crossing --messages 100000 --devices 10000 \\
        [--variants a,b,c,c1000,d] [--parallelism 2]

The exit code is 0 only when every variant ran and counted exactly the outputs the decoder
gives for the preloaded input (decoded once more in this process), and the ceiling counted every
message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from connectors.jars import pipeline_jars_option
from connectors.kafka import end_offsets, read_topic
from iotlink.bench import ProcessTreeUsage, java_only_ceiling, preload, run_measured
from iotlink.stack import EmbeddedStack, free_port
from jobs.config import Settings, load_settings
from jobs.telemetry_job import decoder_registry_factory, export_python_path
from operators.dead_letter import dead_letter_to_json
from operators.decode import decode_raw_record

ROOT = Path(__file__).resolve().parent.parent
FORMS = "json,hex,csv"  # the payload forms the simulator mixes in, as iotlink bench does by default
GROUP_ID = "iotlink-bench-crossing"


@dataclass(frozen=True)
class Variant:
    """One way of running the decoder (or the Java-only ceiling).

    Attributes:
        name: The name given to ``--variants``.
        api: ``datastream``, ``table`` (general scalar UDF), ``pandas`` (vectorized UDF) or ``ceiling``.
        mode: ``python.execution-mode`` (None for the ceiling: no Python).
        arrow_batch: ``python.fn-execution.arrow.batch.size`` (pandas UDFs only).
        label: What crosses, for the table.
    """

    name: str
    api: str
    mode: str | None
    label: str
    arrow_batch: int | None = None


CEILING = Variant("ceiling", "ceiling", None, "Kafka -> COUNT, no Python (Java-only ceiling)")
VARIANTS = {
    "a": Variant("a", "datastream", "thread", "DataStream ProcessFunction: typed tuple + side output"),
    "b": Variant("b", "table", "thread", "Table scalar UDF -> ARRAY<STRING> + UNNEST"),
    "c": Variant("c", "pandas", "process", "pandas UDF (Arrow 10000) -> ARRAY<STRING> + UNNEST", arrow_batch=10_000),
    "c1000": Variant("c1000", "pandas", "process", "pandas UDF (Arrow 1000) -> ARRAY<STRING> + UNNEST", arrow_batch=1_000),
    "d": Variant("d", "table", "process", "Table scalar UDF -> ARRAY<STRING> + UNNEST"),
}
DEFAULT_VARIANTS = "a,b,c,c1000,d"


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (and of its per-variant subprocesses).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="bench/crossing.py",
        description=__doc__.split("\n\n", 1)[0].replace("\n", " "),
        epilog="variants:\n" + "\n".join(f"  {v.name:<6} {v.mode:<8} {v.label}" for v in VARIANTS.values())
        + "\n  (the Java-only ceiling runs every time)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory of the embedded Kafka broker started for the run (required; a fresh one gives a clean topic; "
                        "the output of each variant's subprocess goes to DIR/logs/crossing-<variant>.log, its Flink log to "
                        "DIR/logs/flink-<variant>/)")
    parser.add_argument("--messages", type=int, default=100_000, metavar="N", help="raw envelopes to preload (default 100000)")
    parser.add_argument("--devices", type=int, default=10_000, metavar="N", help="simulated devices sending them (default 10000)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed (default 11, as iotlink bench)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, metavar="LIST",
                        help=f"comma-separated variants to run, in this order (default {DEFAULT_VARIANTS}; see below)")
    parser.add_argument("--parallelism", type=int, default=2, metavar="N",
                        help="parallelism of every job, source included (default 2; the raw topic's 4 partitions are shared "
                        "among the source subtasks); the ceiling runs with the same")
    parser.add_argument("--bundle-size", type=int, default=1000, metavar="N",
                        help="python.fn-execution.bundle.size (default 1000, as the telemetry job); a pandas variant raises it "
                        "to its Arrow batch size, which Flink otherwise caps at the bundle size")
    parser.add_argument("--bundle-time", type=int, default=200, metavar="MS",
                        help="python.fn-execution.bundle.time in ms (default 200, as the telemetry job)")
    parser.add_argument("--kafka-port", type=int, default=0, metavar="PORT",
                        help="port of the embedded Kafka broker on 127.0.0.1 (default: a free one)")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="seconds a variant's subprocess may take before it is stopped and counted as failed (default 3600)")
    internal = parser.add_argument_group("internal (how this script runs one variant in a subprocess)")
    internal.add_argument("--run-variant", metavar="NAME", help="run one variant (or 'ceiling') from --job-file and exit")
    internal.add_argument("--job-file", metavar="FILE", help="JSON: settings, offsets and options of the run")
    internal.add_argument("--result-file", metavar="FILE", help="JSON written by --run-variant: count, seconds, CPU seconds")
    return parser


# --- one variant, in its own subprocess -----------------------------------------------------------


def _python_config(variant: Variant, job: dict) -> dict[str, str]:
    """The Flink options of a Python variant: its execution mode, this interpreter, the bundle."""
    conf = {
        "python.execution-mode": variant.mode,
        # The Python workers (and PemJa in thread mode) use this interpreter and its packages.
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(max(job["bundle_size"], variant.arrow_batch or 0)),
        "python.fn-execution.bundle.time": str(job["bundle_time_ms"]),
    }
    if variant.arrow_batch:
        conf["python.fn-execution.arrow.batch.size"] = str(variant.arrow_batch)
    return conf


def _raw_table_ddl(topic: str, bootstrap_servers: str, start: dict[int, int], stop: dict[int, int]) -> str:
    """The bounded raw-bytes Kafka table ``raw_in``, with the options ``java_only_ceiling`` uses."""
    offsets = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(start.items()))
    ends = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(stop.items()))
    return f"""CREATE TEMPORARY TABLE raw_in (payload BYTES) WITH (
      'connector' = 'kafka', 'topic' = '{topic}',
      'properties.bootstrap.servers' = '{bootstrap_servers}', 'properties.group.id' = '{GROUP_ID}',
      'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = '{offsets}',
      'scan.bounded.mode' = 'specific-offsets', 'scan.bounded.specific-offsets' = '{ends}',
      'format' = 'raw')"""


def _outputs(raw: bytes, registry) -> list[str]:
    """Decodes one raw record: its telemetry JSON texts, then its dead letters' JSON."""
    outcome = decode_raw_record(bytes(raw), registry, int(time.time() * 1000))
    return [*outcome.texts, *(dead_letter_to_json(letter) for letter in outcome.dead_letters)]


def _collect_count(submit) -> tuple[int, float, float]:
    """Submits a one-row count query and waits for its result, timing it and the CPU it took.

    Args:
        submit: Called with no arguments; submits the job and returns its ``TableResult``.

    Returns:
        (the count, seconds from submission to the result, CPU seconds of this process's tree meanwhile).
    """
    with ProcessTreeUsage(os.getpid()) as usage:
        started = time.monotonic()
        with submit().collect() as rows:
            counted = next(iter(rows))[0]
        seconds = time.monotonic() - started
        usage.sample()  # the last half second too
    return int(counted or 0), seconds, usage.cpu_seconds


def _scalar_udf(registry_factory, vectorized: bool):
    """The decoding UDF ``ARRAY<STRING>``: one value per payload, or a pandas Series per Arrow batch."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class DecodePayload(ScalarFunction):
        """decode_payload(payload BYTES) -> ARRAY<STRING>: telemetry texts and dead-letter JSON."""

        def __init__(self, factory):
            self._factory = factory
            self._registry = None

        def open(self, function_context):
            self._registry = self._factory()

        def eval(self, payload):
            return _outputs(payload, self._registry)

    class DecodePayloads(DecodePayload):
        """The vectorized form: a pandas Series of payloads -> a Series of string lists."""

        def eval(self, payloads):
            registry = self._registry
            return pd.Series([_outputs(raw, registry) for raw in payloads])

    function = DecodePayloads(registry_factory) if vectorized else DecodePayload(registry_factory)
    return udf(function, result_type=DataTypes.ARRAY(DataTypes.STRING()), func_type="pandas" if vectorized else "general")


def _run_table(variant: Variant, job: dict, settings: Settings) -> dict:
    """Variants b, c, c1000, d: the raw Kafka table -> decoding UDF -> UNNEST -> COUNT(*)."""
    from iotlink.sql_commands import create_table_env

    registry_factory = decoder_registry_factory(settings)
    table_env = create_table_env(parallelism=job["parallelism"], extra=_python_config(variant, job), batch=True)
    table_env.execute_sql(_raw_table_ddl(settings.topics.raw, settings.bootstrap_servers, job["start"], job["stop"]))
    table_env.create_temporary_function("decode_payload", _scalar_udf(registry_factory, vectorized=variant.api == "pandas"))
    query = "SELECT COUNT(*) FROM raw_in CROSS JOIN UNNEST(decode_payload(payload)) AS decoded(item)"
    counted, seconds, cpu = _collect_count(lambda: table_env.execute_sql(query))
    return {"counted": counted, "seconds": seconds, "cpu_seconds": cpu, "detail": query}


def _run_datastream(variant: Variant, job: dict, settings: Settings) -> dict:
    """Variant a: KafkaSource (raw bytes) -> ProcessFunction -> tables -> COUNT(*) of records and letters."""
    from jobs.connector_classpath import export_jvm_classpath

    registry_factory = decoder_registry_factory(settings)
    export_python_path()  # before the JVM starts: PemJa finds pyflink and the project through it
    export_jvm_classpath()  # as create_table_env does for the Table variants: the same JVM classpath
    from pyflink.common import Configuration, WatermarkStrategy
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    from connectors.kafka import raw_kafka_source
    from jobs.connector_classpath import make_connector_jars_visible
    from jobs.telemetry_functions import DEAD_LETTERS, TIMESTAMPED_TELEMETRY, DecodeRawFunction

    conf = {
        "parallelism.default": str(job["parallelism"]),
        "rest.port": "0", "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1",
        "pipeline.name": "iotlink-bench-crossing-a",
        "pipeline.jars": pipeline_jars_option(),
        **_python_config(variant, job),
    }
    config = Configuration()
    for key, value in conf.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_runtime_mode(RuntimeExecutionMode.BATCH)
    make_connector_jars_visible()
    source = raw_kafka_source(settings.bootstrap_servers, settings.topics.raw, GROUP_ID, stop_offsets=job["stop"], start_offsets=job["start"])
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "Kafka raw source")
    # The job's own decode operator (its counters included): what the job hands over.
    decoded = raw.process(DecodeRawFunction(registry_factory), output_type=TIMESTAMPED_TELEMETRY).name("Decode payloads")
    letters = decoded.get_side_output(DEAD_LETTERS)
    table_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_batch_mode())
    table_env.create_temporary_view("records", table_env.from_data_stream(decoded))
    table_env.create_temporary_view("letters", table_env.from_data_stream(letters))
    query = "SELECT COUNT(*) FROM (SELECT 1 AS k FROM records UNION ALL SELECT 1 AS k FROM letters)"
    counted, seconds, cpu = _collect_count(lambda: table_env.execute_sql(query))
    return {"counted": counted, "seconds": seconds, "cpu_seconds": cpu, "detail": query}


def _run_ceiling(job: dict, settings: Settings) -> dict:
    """The Java-only ceiling over the same offsets, its JVM started before the measurement."""
    from iotlink.sql_commands import create_table_env

    create_table_env(parallelism=job["parallelism"], batch=True)  # starts this process's JVM, as the variants do before timing
    with ProcessTreeUsage(os.getpid()) as usage:
        counted, seconds = java_only_ceiling(settings, job["start"], job["stop"], job["parallelism"])
        usage.sample()
    return {"counted": counted, "seconds": seconds, "cpu_seconds": usage.cpu_seconds, "detail": "java_only_ceiling"}


def run_variant(name: str, job_file: Path, result_file: Path) -> int:
    """Runs one variant (the subprocess side) and writes its result as JSON.

    Args:
        name: A variant name, or ``ceiling``.
        job_file: The run's settings and offsets, written by :func:`orchestrate`.
        result_file: Where the result goes (``counted``, ``seconds``, ``cpu_seconds``, ``detail``).

    Returns:
        The exit code: 0 when the job finished.
    """
    job = json.loads(job_file.read_text())
    job["start"] = {int(p): int(o) for p, o in job["start"].items()}
    job["stop"] = {int(p): int(o) for p, o in job["stop"].items()}
    settings = Settings.model_validate(job["settings"])
    if name == CEILING.name:
        result = _run_ceiling(job, settings)
    else:
        variant = VARIANTS[name]
        runner = _run_datastream if variant.api == "datastream" else _run_table
        result = runner(variant, job, settings)
    result_file.write_text(json.dumps(result))
    return 0


# --- the orchestrating process ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one variant's subprocess gave.

    Attributes:
        variant: The variant.
        counted: Outputs Flink counted (None when it failed).
        seconds: Submission -> counted result.
        job_cpu_seconds: CPU of the subprocess's tree between submission and result.
        process_cpu_seconds: CPU of the subprocess's tree over its whole life (JVM start included).
        process_seconds: Wall time of the whole subprocess.
        error: Why it failed, if it did.
        checks: Failed checks of its count (wrong count, differs from the other variants).
    """

    variant: Variant
    counted: int | None = None
    seconds: float = 0.0
    job_cpu_seconds: float = 0.0
    process_cpu_seconds: float = 0.0
    process_seconds: float = 0.0
    error: str | None = None
    checks: list[str] = field(default_factory=list)


def run_in_subprocess(variant: Variant, job_file: Path, log_path: Path, timeout_s: float) -> Outcome:
    """Runs one variant in a fresh Python subprocess of this script and measures its process tree.

    Args:
        variant: The variant (or the ceiling).
        job_file: The run's settings and offsets.
        log_path: Where the subprocess's output goes (Flink's log: ``flink-<variant>/`` beside it).
        timeout_s: Limit for the whole subprocess.

    Returns:
        Its outcome; ``error`` says what went wrong when it did not finish.
    """
    result_file = job_file.with_name(f"result-{variant.name}.json")
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--run-variant", variant.name,
               "--job-file", str(job_file), "--result-file", str(result_file)]
    outcome = Outcome(variant)
    # Flink's own log of the subprocess's JVM next to its output (PyFlink's default is inside the venv).
    flink_log_dir = log_path.with_name(f"flink-{variant.name}")
    flink_log_dir.mkdir(parents=True, exist_ok=True)
    run = run_measured(command, log_path, timeout_s, cwd=ROOT, env={**os.environ, "FLINK_LOG_DIR": str(flink_log_dir)})
    outcome.process_seconds = run.seconds
    outcome.process_cpu_seconds = run.cpu_seconds
    outcome.error = run.error
    if outcome.error is None and run.returncode != 0:
        outcome.error = f"exited with code {run.returncode}"
    if outcome.error is None:
        try:
            result = json.loads(result_file.read_text())
            outcome.counted, outcome.seconds, outcome.job_cpu_seconds = result["counted"], result["seconds"], result["cpu_seconds"]
        except (OSError, ValueError, KeyError) as exc:
            outcome.error = f"no result: {exc}"
    if outcome.error is not None:
        outcome.error += f" (see {log_path})"
    return outcome


def expected_outputs(settings: Settings, start: dict[int, int]) -> tuple[int, int, int]:
    """Decodes the preloaded records once in this process, as every variant must.

    Args:
        settings: The run's settings (broker, raw topic, decoder specs).
        start: Partition -> the first preloaded offset.

    Returns:
        (raw records read, telemetry records, dead letters).
    """
    values = read_topic(settings.bootstrap_servers, settings.topics.raw, read_committed=False, timeout_s=600.0, since=start)
    registry = decoder_registry_factory(settings)()
    records = letters = 0
    for value in values:
        outcome = decode_raw_record(value, registry, int(time.time() * 1000))
        records += len(outcome.records)
        letters += len(outcome.dead_letters)
    return len(values), records, letters


def check_counts(outcomes: list[Outcome], messages: int, expected: int) -> list[Outcome]:
    """Checks every count: the ceiling counts every message, each variant the expected outputs,
    and the variants all the same; marks each failed check on its outcome.

    Args:
        outcomes: The ceiling's and the variants' outcomes.
        messages: Raw records preloaded.
        expected: Outputs (telemetry records + dead letters) the decoder gives for them.

    Returns:
        The outcomes that failed to run or failed a check.
    """
    for outcome in outcomes:
        want = messages if outcome.variant is CEILING else expected
        if outcome.error is None and outcome.counted != want:
            outcome.checks.append(f"MISMATCH: expected {want}")
    ran = [o for o in outcomes if o.variant is not CEILING and o.error is None]
    if len({o.counted for o in ran}) > 1:
        for outcome in ran:
            outcome.checks.append("differs across variants")
    return [o for o in outcomes if o.error is not None or o.checks]


def _format_table(outcomes: list[Outcome], messages: int) -> str:
    """The results as a text table, the ceiling first."""
    ceiling = next((o for o in outcomes if o.variant is CEILING and o.error is None), None)
    ceiling_rate = messages / ceiling.seconds if ceiling and ceiling.seconds else None
    ceiling_cpu_us = ceiling.job_cpu_seconds / messages * 1e6 if ceiling else None
    header = (f"{'variant':<8}{'mode':<9}{'seconds':>8}{'msgs/s':>9}{'wall µs/msg':>12}{'of ceiling':>11}"
              f"{'job CPU s':>10}{'CPU µs/msg':>11}{'Δ ceiling':>10}{'proc CPU s':>11}{'proc s':>8}{'outputs':>9}  result")
    lines = [header, "-" * len(header)]
    for o in outcomes:
        mode = o.variant.mode or "-"
        if o.error is not None:
            lines.append(f"{o.variant.name:<8}{mode:<9}failed: {o.error}")
            continue
        rate = messages / o.seconds if o.seconds else 0.0
        share = f"{rate / ceiling_rate:.1%}" if ceiling_rate else "-"
        cpu_us = o.job_cpu_seconds / messages * 1e6
        delta = f"{cpu_us - ceiling_cpu_us:+.0f}" if ceiling_cpu_us is not None and o.variant is not CEILING else "-"
        lines.append(
            f"{o.variant.name:<8}{mode:<9}{o.seconds:8.1f}{rate:9.0f}{o.seconds / messages * 1e6:12.0f}{share:>11}"
            f"{o.job_cpu_seconds:10.1f}{cpu_us:11.0f}{delta:>10}{o.process_cpu_seconds:11.1f}{o.process_seconds:8.1f}"
            f"{o.counted:9d}  {'; '.join(o.checks) or 'ok'}"
        )
    return "\n".join(lines)


def _parse_variants(text: str) -> list[Variant]:
    """The variants named in ``--variants``, in order, each once (exits on an unknown name)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"error: unknown variants {unknown or text!r}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[name] for name in dict.fromkeys(names)]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def orchestrate(args: argparse.Namespace) -> int:
    """Starts Kafka, preloads the input, runs the ceiling and every variant, prints the table.

    Args:
        args: The parsed command line.

    Returns:
        The exit code: 0 when every variant counted the expected outputs.
    """
    variants = _parse_variants(args.variants)
    data_dir = Path(args.data_dir)
    settings = load_settings(None, {"data_dir": data_dir, "ports": {"kafka": args.kafka_port or free_port()}})
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill stops the stack and the subprocesses too
    print(f"machine: {os.cpu_count()} cores; parallelism {args.parallelism}; runtime mode: batch (every variant and the ceiling); "
          f"python bundle {args.bundle_size} records / {args.bundle_time} ms", flush=True)
    print(f"starting the embedded Kafka broker on 127.0.0.1:{settings.ports.kafka} (data dir {data_dir}) …", flush=True)
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    try:
        settings = stack.settings_with_endpoints()
        topic = settings.topics.raw
        before = end_offsets(settings.bootstrap_servers, topic)
        print(f"preloading {args.messages} messages from {args.devices} devices ({FORMS}) …", flush=True)
        ends, sent, invalid, preload_s = preload(settings, args.messages, args.devices, FORMS, args.seed)
        print(f"preloaded {sent} messages in {preload_s:.1f} s, {invalid} deliberately malformed", flush=True)
        start = dict(before)
        stop = {p: ends.get(p, offset) for p, offset in before.items()}
        print("decoding them once in this process for the expected count …", flush=True)
        read, records, letters = expected_outputs(settings, start)
        expected = records + letters
        print(f"expected outputs: {expected} ({records} telemetry records + {letters} dead letters from {read} raw records)", flush=True)
        work_dir = data_dir.resolve() / "crossing"
        log_dir = data_dir.resolve() / "logs"
        work_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        job_file = work_dir / "job.json"
        job_file.write_text(json.dumps({
            "settings": settings.model_dump(mode="json"), "start": start, "stop": stop, "parallelism": args.parallelism,
            "bundle_size": args.bundle_size, "bundle_time_ms": args.bundle_time,
        }))
        outcomes: list[Outcome] = []
        for variant in [CEILING, *variants]:
            what = "the Java-only ceiling" if variant is CEILING else f"variant {variant.name} ({variant.mode} mode: {variant.label})"
            print(f"{what}: running …", flush=True)
            outcome = run_in_subprocess(variant, job_file, log_dir / f"crossing-{variant.name}.log", args.timeout)
            outcomes.append(outcome)
            if outcome.error is not None:
                print(f"  {variant.name}: failed: {outcome.error}", flush=True)
            else:
                print(f"  {variant.name}: {outcome.counted} counted in {outcome.seconds:.1f} s, "
                      f"{outcome.job_cpu_seconds / sent * 1e6:.0f} µs CPU per message", flush=True)
        failed = check_counts(outcomes, sent, expected)
        print()
        print(f"{sent} messages, {expected} expected outputs ({records} records + {letters} dead letters); seconds = submission -> "
              "counted result; CPU = the subprocess's process tree (job: during those seconds; proc: its whole life, JVM start "
              "included); Δ ceiling = job CPU µs/msg minus the ceiling's")
        print(_format_table(outcomes, sent))
        print()
        for variant in variants:
            print(f"  {variant.name:<6} {variant.label}")
        if failed:
            print(f"error: {', '.join(o.variant.name for o in failed)} failed or counted wrong")
            return 1
        return 0
    finally:
        print("stopping the embedded Kafka broker …", flush=True)
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: The command line without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_variant:
        if args.run_variant != CEILING.name and args.run_variant not in VARIANTS:
            parser.error(f"--run-variant: unknown variant {args.run_variant!r}")
        if not (args.job_file and args.result_file):
            parser.error("--run-variant needs --job-file and --result-file")
        return run_variant(args.run_variant, Path(args.job_file), Path(args.result_file))
    if not args.data_dir:
        parser.error("--data-dir is required")
    if args.messages < 1 or args.devices < 1 or args.parallelism < 1:
        parser.error("--messages, --devices and --parallelism must be positive")
    try:
        return orchestrate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
