"""Alarm-state benchmark: what the alarm operator costs per ruled reading with the device's
engine state kept as one pickled value (the job's way) against typed Flink state.

Variants, each a bounded streaming job (RocksDB, checkpoints every 2 s, as the job) in a fresh
subprocess of this script, over the same preloaded raw records:

  readings  the job's path up to the alarm operator: Kafka raw -> the job's DecodeRawFunction ->
            device-time watermarks -> RuledReadings (readings of products with rules) -> a
            Kafka topic. The baseline the other variants add to.
  pickled   readings -> keyed by device in Java -> the job's AlarmFunction (engine state: one
            ValueState of PICKLED_BYTE_ARRAY per device) -> alarm events to a Kafka topic.
  typed     the same operator with the engine state as one typed ValueState per device: a ROW of
            the device's fields and a MAP from rule id to a ROW of the rule's fields (Flink's own
            serializers, no pickle; the rarely filled reorder buffer, a rule's rate window and
            its last values as JSON text).

The alarm events of ``pickled`` and ``typed`` must be the same; each variant's readings count is
checked against the ``readings`` variant. Reported: seconds, msgs/s, CPU of the subprocess's
process tree during the job and CPU per raw message, and each variant's CPU above the baseline
per ruled reading.

Usage::

    .venv/bin/python bench/alarm_state.py --data-dir /tmp/alarm-state --messages 100000 --devices 10000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from connectors.kafka import end_offsets, read_topic
from iotlink.bench import ProcessTreeUsage, preload, run_measured
from iotlink.stack import EmbeddedStack
from jobs.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
FORMS = "json,hex,csv"
VARIANTS = ("readings", "pickled", "typed")
# One device in ten overheats, so rules raise, clear and act (iotlink bench's latency mode does the same).
PROFILES = "normal=84,overheat=10,garbage=3,late=3"


def _device_row_type():
    from pyflink.common import Types

    rule = Types.ROW_NAMED(
        ["alarm_id", "severity", "started_ts", "acknowledged", "escalated", "verify_deadline", "pending_since",
         "pending_severity", "clear_since", "streak", "window", "last_values"],
        [Types.STRING(), Types.STRING(), Types.LONG(), Types.BOOLEAN(), Types.BOOLEAN(), Types.LONG(), Types.LONG(),
         Types.STRING(), Types.LONG(), Types.INT(), Types.STRING(), Types.STRING()],
    )
    return Types.ROW_NAMED(
        ["seq", "max_ts", "released_ts", "last_record_ts", "product_id", "rule_version", "buffer", "rules"],
        [Types.LONG(), Types.LONG(), Types.LONG(), Types.LONG(), Types.STRING(), Types.STRING(), Types.STRING(),
         Types.MAP(Types.STRING(), rule)],
    )


def _json_or_none(value) -> str | None:
    return orjson.dumps(value).decode() if value else None


def device_state_to_row(state):
    """An engine DeviceState as the typed row (the buffer, rate windows and last values as JSON)."""
    from pyflink.common import Row

    rules = {
        rule_id: Row(rs.alarm_id, rs.severity, rs.started_ts, rs.acknowledged, rs.escalated, rs.verify_deadline, rs.pending_since,
                     rs.pending_severity, rs.clear_since, rs.streak, _json_or_none(rs.window), _json_or_none(rs.last_values))
        for rule_id, rs in state.rules.items()
    }
    return Row(state.seq, state.max_ts, state.released_ts, state.last_record_ts, state.product_id, state.rule_version,
               _json_or_none(state.buffer), rules)


def device_state_from_row(row):
    """The typed row back as an engine DeviceState."""
    from operators.alarm_engine import DeviceState, RuleState

    rules = {}
    for rule_id, r in (row[7] or {}).items():
        rules[rule_id] = RuleState(
            alarm_id=r[0], severity=r[1], started_ts=r[2], acknowledged=bool(r[3]), escalated=bool(r[4]), verify_deadline=r[5],
            pending_since=r[6], pending_severity=r[7], clear_since=r[8], streak=r[9] or 0,
            window=[tuple(item) for item in orjson.loads(r[10])] if r[10] else [],
            last_values=orjson.loads(r[11]) if r[11] else {},
        )
    buffer = [tuple(item) for item in orjson.loads(row[6])] if row[6] else []
    return DeviceState(buffer=buffer, seq=row[0], max_ts=row[1], released_ts=row[2], last_record_ts=row[3], product_id=row[4],
                       rule_version=row[5], rules=rules)


class TypedDeviceState:
    """A typed ValueState that hands the alarm operator DeviceState objects, as its pickled one does."""

    def __init__(self, state):
        self._state = state

    def value(self):
        row = self._state.value()
        return None if row is None else device_state_from_row(row)

    def update(self, state) -> None:
        self._state.update(device_state_to_row(state))


def _typed_alarm_function(rules_factory, reorder_ms: int):
    from pyflink.datastream.state import ValueStateDescriptor

    from jobs.telemetry_functions import AlarmFunction

    class TypedAlarmFunction(AlarmFunction):
        def open(self, runtime_context):
            super().open(runtime_context)
            self._state = TypedDeviceState(runtime_context.get_state(ValueStateDescriptor("alarm-engine-row", _device_row_type())))

    return TypedAlarmFunction(rules_factory, reorder_ms)


def _run_variant(name: str, job: dict, settings: Settings) -> dict:
    from jobs.connector_classpath import export_jvm_classpath
    from jobs.telemetry_job import (
        RunOptions,
        decoder_registry_factory,
        export_python_path,
        flink_configuration,
        rules_factory_for,
    )

    registry_factory = decoder_registry_factory(settings)
    rules_factory = rules_factory_for(settings)
    export_python_path()
    export_jvm_classpath()
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    from connectors.kafka import exactly_once_string_sink, raw_kafka_source
    from jobs.connector_classpath import make_connector_jars_visible
    from jobs.java_operators import key_for_python, ruled_readings, side_output
    from jobs.telemetry_functions import DEAD_LETTERS, TELEMETRY_TUPLE, TIMESTAMPED_TELEMETRY, AlarmFunction, DecodeRawFunction
    from jobs.telemetry_job import _assign_device_time, _telemetry_json

    options = RunOptions(job_name=f"iotlink-bench-alarm-state-{name}")
    start = {int(p): int(o) for p, o in job["start"].items()}
    stop = {int(p): int(o) for p, o in job["stop"].items()}
    parallelism = len(start)
    config = Configuration()
    conf = flink_configuration(settings, options, parallelism)
    # The Python workers (PemJa in thread mode) use this interpreter and its packages, as in the job.
    conf.update({"python.executable": sys.executable, "python.client.executable": sys.executable, "restart-strategy.type": "none"})
    for key, value in conf.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    make_connector_jars_visible()
    source = raw_kafka_source(settings.bootstrap_servers, settings.topics.raw, "iotlink-bench-alarm-state", stop_offsets=stop,
                              start_offsets=start)
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "Kafka raw source").set_parallelism(parallelism)
    decoded = raw.process(DecodeRawFunction(registry_factory), output_type=TIMESTAMPED_TELEMETRY).set_parallelism(parallelism)
    # The dead letters are not measured here, but a side output nobody reads fails the Python operator.
    letters = side_output(decoded, DEAD_LETTERS)._j_data_stream
    letters.sinkTo(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink()).name("Dead letters: discarded")
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(settings.flink.out_of_orderness_ms))
    readings = ruled_readings(_assign_device_time(decoded, strategy, parallelism), rules_factory.product_ids)
    sink = exactly_once_string_sink(settings.bootstrap_servers, job["topics"][name], options.job_name)
    if name == "readings":
        output = _telemetry_json(readings)  # Java: the readings' JSON, nothing crosses into Python
    else:
        keyed = key_for_python(readings, TELEMETRY_TUPLE, "alarm-keys")
        function = (AlarmFunction(rules_factory, settings.flink.alarm_reorder_ms) if name == "pickled"
                    else _typed_alarm_function(rules_factory, settings.flink.alarm_reorder_ms))
        output = keyed.process(function, output_type=Types.STRING()).name("Alarm rules (per device)")
    output.sink_to(sink)
    started = time.monotonic()
    with ProcessTreeUsage(os.getpid()) as usage:
        env.execute(options.job_name)
        usage.sample()
    return {"seconds": time.monotonic() - started, "cpu_seconds": usage.cpu_seconds}


def run_variant(name: str, job_file: Path, result_file: Path) -> int:
    """Runs one variant (the subprocess side) and writes its result as JSON."""
    job = json.loads(job_file.read_text())
    result = _run_variant(name, job, Settings.model_validate(job["settings"]))
    result_file.write_text(json.dumps(result))
    return 0


# --- the orchestrating process ---------------------------------------------------------------------

def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _events(values: list[bytes]) -> list[tuple]:
    """The alarm events among an operator's outputs, as comparable tuples (commands and rule
    statuses left out)."""
    events = []
    for value in values:
        item = orjson.loads(value)
        if "command" not in item and "rule_status" not in item:
            events.append(tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in item.items())))
    return sorted(events)


def orchestrate(args: argparse.Namespace) -> int:
    """Starts Kafka, preloads the input, runs the variants, prints the table.

    Returns:
        The exit code: 0 when every variant ran and both state kinds gave the same events.
    """
    data_dir = Path(args.data_dir).resolve()
    settings = load_settings(None, {"data_dir": data_dir})
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"machine: {os.cpu_count()} cores; starting the embedded Kafka broker (data dir {data_dir}) …", flush=True)
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    problems: list[str] = []
    try:
        settings = stack.settings_with_endpoints()
        before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
        print(f"preloading {args.messages} messages from {args.devices} devices ({FORMS}) …", flush=True)
        ends, sent, _, _ = preload(settings, args.messages, args.devices, FORMS, args.seed, PROFILES)
        log_dir, work_dir = data_dir / "logs", data_dir / "alarm-state"
        log_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        stamp = int(time.time())
        topics = {name: f"bench.alarm-state.{name}.{stamp}" for name in VARIANTS}
        job_file = work_dir / "job.json"
        job_file.write_text(json.dumps({"settings": settings.model_dump(mode="json"), "start": {p: before.get(p, 0) for p in ends},
                                        "stop": ends, "topics": topics}))
        results: dict[str, dict] = {}
        outputs: dict[str, list[bytes]] = {}
        for name in VARIANTS:
            print(f"{name}: running …", flush=True)
            result_file = work_dir / f"result-{name}.json"
            result_file.unlink(missing_ok=True)
            flink_log_dir = log_dir / f"flink-alarm-state-{name}"
            flink_log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"alarm-state-{name}.log"
            run = run_measured([sys.executable, str(Path(__file__).resolve()), "--run-variant", name, "--job-file", str(job_file),
                                "--result-file", str(result_file)], log_path, args.timeout, cwd=ROOT,
                               env={**os.environ, "FLINK_LOG_DIR": str(flink_log_dir)})
            if run.error is not None or run.returncode != 0 or not result_file.exists():
                problems.append(f"{name}: {run.error or f'exited with code {run.returncode}'} (see {log_path})")
                break
            results[name] = json.loads(result_file.read_text())
            outputs[name] = read_topic(settings.bootstrap_servers, topics[name], timeout_s=120.0)
            print(f"  {name}: {results[name]['seconds']:.1f} s, {results[name]['cpu_seconds'] / sent * 1e6:.0f} µs job CPU per message, "
                  f"{len(outputs[name])} outputs", flush=True)
        if not problems:
            pickled, typed = _events(outputs["pickled"]), _events(outputs["typed"])
            if pickled != typed:
                problems.append(f"the alarm events differ: {len(pickled)} with pickled state, {len(typed)} with typed state")
            if not pickled:
                problems.append("no alarm events: the input raised no alarm, nothing compared")
        ruled = len(outputs.get("readings", []))
        print()
        print(f"{sent} messages, {ruled} readings of products with rules")
        print(f"{'variant':<10}{'seconds':>8}{'msgs/s':>9}{'job CPU s':>10}{'CPU µs/msg':>11}{'µs per ruled reading above readings':>37}")
        base = results.get("readings")
        for name, result in results.items():
            above = ""
            if base is not None and name != "readings" and ruled:
                above = f"{(result['cpu_seconds'] - base['cpu_seconds']) / ruled * 1e6:.0f}"
            print(f"{name:<10}{result['seconds']:8.1f}{sent / result['seconds']:9.0f}{result['cpu_seconds']:10.1f}"
                  f"{result['cpu_seconds'] / sent * 1e6:11.0f}{above:>37}")
        for problem in problems:
            print(f"error: {problem}")
        return 1 if problems else 0
    finally:
        print("stopping the embedded Kafka broker …", flush=True)
        stack.stop()


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (and of its per-variant subprocesses)."""
    parser = argparse.ArgumentParser(prog="bench/alarm_state.py", description=__doc__.split("\n\n", 1)[0].replace("\n", " "))
    parser.add_argument("--data-dir", metavar="DIR", help="data directory of the embedded Kafka broker (required; a fresh one)")
    parser.add_argument("--messages", type=int, default=100_000, metavar="N", help="raw envelopes to preload (default 100000)")
    parser.add_argument("--devices", type=int, default=10_000, metavar="N", help="simulated devices sending them (default 10000)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed (default 11, as iotlink bench)")
    parser.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="seconds a variant may take (default 3600)")
    internal = parser.add_argument_group("internal (how this script runs one variant in a subprocess)")
    internal.add_argument("--run-variant", choices=VARIANTS, help="run one variant from --job-file and exit")
    internal.add_argument("--job-file", metavar="FILE", help="JSON: settings, offsets and output topics of the run")
    internal.add_argument("--result-file", metavar="FILE", help="JSON written by --run-variant: seconds, CPU seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_variant:
        if not (args.job_file and args.result_file):
            parser.error("--run-variant needs --job-file and --result-file")
        return run_variant(args.run_variant, Path(args.job_file), Path(args.result_file))
    if not args.data_dir:
        parser.error("--data-dir is required")
    try:
        return orchestrate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
