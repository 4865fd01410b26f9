"""``iotlink rules check|replay|push|status``: alarm rules from the command line.

``replay`` runs standard telemetry records (JSON lines) through the same alarm engine the
job uses and prints the alarm events as JSON lines, in order. Exit codes: 0 done, 1 bad input
line, 2 invalid rules.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from jobs.config import Settings
from operators.instants import iso_utc

EXIT_OK, EXIT_BAD_INPUT, EXIT_BAD_RULES = 0, 1, 2


def add_rule_commands(sub, common=None) -> None:
    """Adds ``rules`` to the ``iotlink`` sub-command parsers."""
    rules = sub.add_parser(
        "rules",
        help="validate alarm rule sets and replay telemetry through them",
        description="Validate alarm rule sets (rules/), or replay standard telemetry records through them offline "
        "with the job's alarm engine.",
    )
    actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate rule files", description="Validate rule files (exit 0 valid, 2 invalid).")
    check.add_argument("paths", nargs="*", metavar="PATH", help="rule files or directories (default ./rules of the project)")
    check.add_argument("--specs-dir", metavar="DIR", help="decoder specs whose metric names rules may use (default yaml_specs)")
    replay = actions.add_parser(
        "replay",
        help="replay telemetry records (JSON lines) through rule sets and print the alarm events",
        description="Replay standard telemetry records (one JSON object per line, in arrival order) through the rule "
        "sets and print alarm events as JSON lines: event, alarm_id, device_id, rule_id, severity, device_ts, values, … "
        "A line {\"ack\": {\"device_id\", \"alarm_id\", \"ts\", \"by\"}} acknowledges an alarm; a line "
        "{\"rule_set\": {...}} puts a new rule-set version in force from that point.",
    )
    replay.add_argument("--rules", required=True, metavar="PATH", help="rule file or directory")
    replay.add_argument("--input", required=True, metavar="RECORDS.jsonl", help="telemetry records, one JSON object per line ('-' for stdin)")
    replay.add_argument(
        "--max-out-of-orderness",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="how far a device's records may arrive out of device-time order and still be evaluated in order (default 0)",
    )
    replay.add_argument("--until", metavar="ISO", help="advance event time to this instant at the end (fires no-data and other timers)")
    replay.add_argument("--commands", action="store_true", help="also print the shadow commands of automatic actions ({\"command\": …})")
    replay.add_argument("--specs-dir", metavar="DIR", help="decoder specs whose metric names rules may use (default yaml_specs)")
    push = actions.add_parser(
        "push",
        parents=[common] if common is not None else [],
        help="validate a rule set and publish it to the running job (iotlink.rules)",
        description="Validate a rule-set file and publish it on iotlink.rules, keyed by product; the running job puts it "
        "in force (or rejects it with the reason on iotlink.rules.status and keeps the previous version). With "
        "--postgres-url the version is also stored in table rule_sets.",
    )
    push.add_argument("file", metavar="FILE", help="the rule-set file")
    push.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for the job's accepted/rejected status")
    status = actions.add_parser(
        "status",
        parents=[common] if common is not None else [],
        help="show what the running job reported about its rule sets (iotlink.rules.status)",
        description="Read iotlink.rules.status and show, per product, the newest pushed rule set the job accepted or "
        "rejected (with the reasons) and the rule evaluation errors it reported: which rule failed on which values and "
        "how often (the job sends the first error at once, then at most one summary per product and minute).",
    )
    status.add_argument("--product", metavar="ID", help="only this product")
    status.add_argument("--errors", type=int, default=3, metavar="N", help="error summaries shown per product, newest first (default 3)")
    status.add_argument("--json", action="store_true", help="print the status records as JSON lines instead")
    backtest = actions.add_parser(
        "backtest",
        parents=[common] if common is not None else [],
        help="replay archived telemetry through a candidate rule set and the live one; report and compare per rule",
        description="Replay the Iceberg telemetry archive of a time range, each device in device-time order, through the "
        "candidate rule sets and the live ones with the job's alarm engine (a bounded Flink job, one Python call per device), "
        "and report per rule: alarms raised, mean/max active time, flapping (raise/clear cycles of a device in a UTC day; "
        "3 or more make a flapping device-day), time to detect known incidents, and which alarms only one set raised. "
        "A table on the terminal, --json for the whole report, --charts for a PNG per rule.",
    )
    from iotlink.rule_backtest import add_backtest_arguments

    add_backtest_arguments(backtest)


def _metrics(args: argparse.Namespace, settings: Settings):
    from operators.spec_loading import load_specs, metrics_by_product

    specs_dir = Path(args.specs_dir) if args.specs_dir else settings.specs_dir
    return metrics_by_product(load_specs([specs_dir])) if specs_dir.is_dir() else {}


def add_alarm_commands(sub, common=None) -> None:
    """Adds ``alarms`` (operator actions on alarms) to the ``iotlink`` sub-command parsers."""
    alarms = sub.add_parser("alarms", help="act on alarms (acknowledge)", description="Act on alarms raised by the job.")
    actions = alarms.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")
    ack = actions.add_parser(
        "ack",
        parents=[common] if common is not None else [],
        help="acknowledge an alarm",
        description="Publish an acknowledge command on iotlink.control; the job records ACKNOWLEDGED on the alarm.",
    )
    ack.add_argument("--device", required=True, metavar="ID", help="the alarm's device id")
    ack.add_argument("--alarm", required=True, metavar="ALARM_ID", help="the alarm id (from iotlink.alarms)")
    ack.add_argument("--by", default=None, metavar="NAME", help="who acknowledges (default $USER)")


def run_alarm_command(args: argparse.Namespace, settings: Settings) -> int:
    """``iotlink alarms ack``: publishes the acknowledge command."""
    import getpass
    import time

    from kafka import KafkaProducer

    command = {"type": "ack", "device_id": args.device, "alarm_id": args.alarm, "by": args.by or getpass.getuser(), "ts": int(time.time() * 1000)}
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    try:
        producer.send(settings.topics.control, key=args.device.encode(), value=orjson.dumps(command)).get(30)
    finally:
        producer.close()
    print(f"acknowledge for alarm {args.alarm} of {args.device} published to {settings.topics.control}")
    return EXIT_OK


def run_rule_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatches ``rules check`` and ``rules replay``."""
    from operators.rule_loading import load_rule_sets, sample_evaluation_problems
    from operators.spec_loading import SpecLoadError

    try:
        metrics = _metrics(args, settings)
        if args.rules_command == "status":
            return _status(args, settings)
        if args.rules_command == "push":
            return _push(args, settings, metrics)
        if args.rules_command == "backtest":
            from iotlink.rule_backtest import run_backtest_command

            return run_backtest_command(args, settings, metrics)
        if args.rules_command == "check":
            paths = args.paths or [settings.rules_dir]
            loaded = load_rule_sets(paths, metrics)
            for item in loaded:
                rules = ", ".join(f"{c.rule.rule_id} ({c.rule.type}, {c.rule.severity})" for c in item.compiled.rules)
                print(f"ok      {item.source}  product {item.product_id}  version {item.compiled.version}  rules: {rules}")
                for notice in item.notices:
                    print(f"  note: {notice}")
                for problem in sample_evaluation_problems(item.compiled):
                    print(f"  warning: on sample records, {problem}")
            print(f"{len(loaded)} rule set(s) valid")
            return EXIT_OK
        loaded = load_rule_sets([args.rules], metrics)
    except SpecLoadError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_RULES
    return _replay(args, loaded)


def _read_items(path: str):
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            if "ack" not in item and "rule_set" not in item:
                missing = [k for k in ("device_id", "product_id", "device_ts") if k not in item]
                if missing or not isinstance(item.get("device_ts"), int):
                    raise ValueError(f"{path}:{number}: not a telemetry record (needs device_id, product_id, device_ts as epoch ms)")
            yield item
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _replay(args: argparse.Namespace, loaded) -> int:
    from operators.rule_loading import ReplayStats, replay
    from operators.spec_loading import SpecLoadError

    until = None
    if args.until:
        parsed = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
        until = int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)
    stats = ReplayStats()
    out = sys.stdout.buffer
    try:
        for item in replay(_read_items(args.input), loaded, int(args.max_out_of_orderness * 1000), until, stats):
            if "command" in item and not args.commands:
                continue
            out.write(orjson.dumps(item) + b"\n")
    except (ValueError, OSError) as exc:
        out.flush()
        print(f"iotlink rules replay: {exc}", file=sys.stderr)
        return EXIT_BAD_RULES if isinstance(exc, SpecLoadError) else EXIT_BAD_INPUT
    out.flush()
    print(
        f"replayed {stats.records} records: {stats.events} alarm events, {stats.commands} commands, "
        f"{stats.late} late records ignored, {len(stats.errors)} evaluation errors",
        file=sys.stderr,
    )
    for error in stats.errors[:10]:
        print(f"  evaluation error: {error}", file=sys.stderr)
    return EXIT_OK


def _push(args: argparse.Namespace, settings: Settings, metrics) -> int:
    import time

    from kafka import KafkaProducer

    from connectors.kafka import read_topic
    from operators.rule_loading import load_rule_file, rule_message
    from operators.spec_yaml import load_yaml_file

    loaded = load_rule_file(args.file, metrics)
    # The document as written (durations stay "30s"), with the version it is known by.
    document = dict(load_yaml_file(args.file).data)
    document["version"] = loaded.compiled.version
    pushed_at = int(time.time() * 1000)
    value = rule_message(loaded, document, pushed_at)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    try:
        producer.send(settings.topics.rules, key=loaded.product_id.encode(), value=value).get(30)
    finally:
        producer.close()
    print(f"published rule set for product {loaded.product_id}, version {loaded.compiled.version}, to {settings.topics.rules}")
    if settings.postgres_url:
        _store_version(settings.postgres_url, loaded.product_id, loaded.compiled.version, value)
        print("stored in PostgreSQL table rule_sets")
    if args.wait > 0:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            for status in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.rules_status)):
                if (status.get("status") in ("accepted", "rejected") and status.get("product_id") == loaded.product_id
                        and status.get("version") == loaded.compiled.version):
                    print(f"job: {status['status']}")
                    return EXIT_OK if status["status"] == "accepted" else EXIT_BAD_RULES
            time.sleep(1)
        print(f"no status from the job within {args.wait:.0f} s (is it running?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def status_lines(statuses: list[dict], errors_per_product: int = 3) -> list[str]:
    """The status records of ``iotlink.rules.status`` (oldest first) as lines for people: per
    product the newest accepted push (the version in force), the rejected pushes after it (with
    their problems), then the newest error summaries.

    Args:
        statuses: Status records as the job wrote them.
        errors_per_product: Error summaries shown per product.
    """
    by_product: dict[str, dict] = {}
    for status in statuses:
        if not isinstance(status, dict):
            continue
        entry = by_product.setdefault(str(status.get("product_id") or "(unknown product)"), {"pushes": [], "errors": []})
        if status.get("status") == "errors":
            entry["errors"].append(status)
        elif status.get("status") == "accepted":
            entry["pushes"] = [status]
        elif status.get("status") == "rejected":
            entry["pushes"].append(status)
    lines = []
    for product_id in sorted(by_product):
        pushes, errors = by_product[product_id]["pushes"], by_product[product_id]["errors"]
        for push in pushes:
            lines.append(f"{product_id}  {push['status']}  version {push.get('version', '?')}")
            lines += [f"    {problem}" for problem in push.get("problems") or []]
        for summary in reversed(errors[-errors_per_product:] if errors_per_product > 0 else []):
            since, until = _iso(summary.get("since")), _iso(summary.get("until"))
            lines.append(f"{product_id}  errors  version {summary.get('version', '?')}  {summary.get('count', 0)} "
                         f"from {since} to {until} (subtask {summary.get('subtask', '?')})")
            for error in summary.get("errors") or []:
                lines.append(f"    {error.get('count', 0):>6} × {error.get('message')}")
            if summary.get("other"):
                lines.append(f"    {summary['other']:>6} × (other messages)")
    return lines


def _iso(epoch_ms) -> str:
    return iso_utc(epoch_ms) if isinstance(epoch_ms, int) else "?"


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.kafka import read_topic

    try:
        values = read_topic(settings.bootstrap_servers, settings.topics.rules_status, timeout_s=30)
    except (OSError, TimeoutError) as exc:
        print(f"iotlink rules status: cannot read {settings.topics.rules_status}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    statuses = []
    for value in values:
        try:
            status = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(status, dict) and (args.product is None or status.get("product_id") == args.product):
            statuses.append(status)
    if args.json:
        for status in statuses:
            print(orjson.dumps(status).decode())
        return EXIT_OK
    lines = status_lines(statuses, args.errors)
    print("\n".join(lines) if lines else f"no status on {settings.topics.rules_status} yet")
    return EXIT_OK


def _store_version(url: str, product_id: str, version: str, message: bytes) -> None:
    import psycopg

    from connectors.postgres import apply_migrations

    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rule_sets (product_id, version, message) VALUES (%s, %s, %s) "
            "ON CONFLICT (product_id, version) DO UPDATE SET message = EXCLUDED.message, pushed_at = now()",
            (product_id, version, message.decode()),
        )
