"""``iotlink rules backtest``: what a rule set would have done over the archived telemetry."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

from jobs.config import Settings
from operators.instants import iso_utc
from operators.spec_loading import SpecLoadError


def add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rules backtest``."""
    from iotlink.analytics_commands import time_argument

    parser.add_argument("--rules", required=True, metavar="PATH", help="the candidate rule sets: a rule file or a directory of them")
    parser.add_argument("--from", dest="from_ms", required=True, type=time_argument, metavar="TIME",
                        help="start of the replayed device time: ISO 8601 (UTC without a zone) or epoch ms")
    parser.add_argument("--to", dest="to_ms", required=True, type=time_argument, metavar="TIME", help="end (excluded), as --from")
    parser.add_argument("--devices", metavar="ID,ID,...", help="only these devices (default: every device of a product with rules)")
    parser.add_argument("--live", metavar="PATH",
                        help="the rule sets to compare with (default: the rules directory of the job, --rules-dir, with the newest "
                        "version pushed per product from PostgreSQL rule_sets in its place)")
    parser.add_argument("--incidents", metavar="FILE.csv",
                        help="known incidents, CSV with a header device_id,start,end[,name]: time to detect per rule")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the whole report as JSON ('-' for stdout)")
    parser.add_argument("--charts", metavar="DIR", help="write a PNG per rule: alarms raised per hour, candidate against live")


def _texts(loaded) -> tuple[tuple[str, str], ...]:
    return tuple((item.source, item.text) for item in loaded)


def live_rule_sets(settings: Settings, explicit: str | None, metrics) -> tuple[tuple[tuple[str, str], ...], str]:
    """The live rule sets' (source, text) and a line saying where they came from."""
    from operators.rule_loading import load_rule_sets, parse_rule_message

    if explicit:
        return _texts(load_rule_sets([explicit], metrics)), f"live rule sets: {explicit}"
    by_product = {}
    where = []
    if Path(settings.rules_dir).is_dir():
        for item in load_rule_sets([settings.rules_dir], metrics):
            by_product[item.product_id] = (item.source, item.text)
        where.append(f"{settings.rules_dir}")
    if settings.postgres_url:
        import psycopg

        try:
            with psycopg.connect(settings.postgres_url, connect_timeout=10) as conn:
                rows = conn.execute(
                    "SELECT DISTINCT ON (product_id) product_id, version, message FROM rule_sets ORDER BY product_id, pushed_at DESC"
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
        for product_id, version, message in rows:
            _product, _version, loaded = parse_rule_message(orjson.dumps(message))
            by_product[product_id] = (f"rule_sets {product_id} {version}", loaded.text)
            where.append(f"pushed {product_id} {version}")
    return tuple(by_product.values()), "live rule sets: " + (", ".join(where) or "none")


def _seconds(value) -> str:
    if value is None:
        return "-"
    return f"{value / 3600:.1f} h" if value >= 3600 else f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"


def report_lines(report: dict) -> list[str]:
    """The report as a terminal table, one row per rule and rule set, then the comparison."""
    header = (f"{'rule':<24} {'set':<10} {'raised':>7} {'devices':>7} {'mean active':>12} {'max active':>11} "
              f"{'flapping':>9} {'max/day':>7} {'incidents':>10} {'detect mean':>12}")
    lines = [header, "-" * len(header)]
    rules = sorted({rule for rules in report["rule_sets"].values() for rule in rules})
    for rule_id in rules:
        for label in ("candidate", "live"):
            stats = report["rule_sets"].get(label, {}).get(rule_id)
            if stats is None:
                continue
            incidents = f"{stats['incidents_detected']}/{stats['incidents_detected'] + stats['incidents_missed']}" \
                if stats["detections"] else "-"
            lines.append(
                f"{rule_id:<24} {label:<10} {stats['raised']:>7} {stats['devices']:>7} {_seconds(stats['mean_active_s']):>12} "
                f"{_seconds(stats['max_active_s']):>11} {stats['flapping_device_days']:>9} {stats['max_cycles_per_device_day']:>7} "
                f"{incidents:>10} {_seconds(stats['mean_detect_s']):>12}"
            )
    if report["compared"]:
        lines.append("")
        lines.append("candidate against live (alarms of a device and rule that overlap in time count as the same):")
        for rule_id, counts in sorted(report["compared"].items()):
            lines.append(f"  {rule_id:<24} both {counts['both']:>6}   only candidate {counts['only_candidate']:>6}   "
                         f"only live {counts['only_live']:>6}")
    for label, messages in report.get("errors", {}).items():
        lines.append(f"rule errors ({label}): " + "; ".join(messages[:5]))
    return lines


def run_backtest_command(args: argparse.Namespace, settings: Settings, metrics) -> int:
    """Runs ``iotlink rules backtest``."""
    from iotlink.stack import with_stack
    from operators.backtest import CANDIDATE, LIVE, alarm_spans, backtest_report, hourly_raised, load_incidents
    from operators.rule_loading import load_rule_sets

    try:
        candidate = _texts(load_rule_sets([args.rules], metrics))
        incidents = load_incidents(args.incidents) if args.incidents else []
    except SpecLoadError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"iotlink rules backtest: {exc}", file=sys.stderr)
        return 2
    # With --json - the document alone goes to stdout, what the command says to stderr.
    human = sys.stderr if args.json_path == "-" else sys.stdout
    stack, settings = with_stack(args, settings, ("postgres", "iceberg"))
    try:
        if not settings.iceberg_catalog:
            print("iotlink rules backtest: the telemetry archive is in Iceberg: give --iceberg-catalog (or --embedded)", file=sys.stderr)
            return 2
        try:
            live, live_from = live_rule_sets(settings, args.live, metrics)
        except SpecLoadError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 2
        from iotlink.sql_commands import kafka_scan, open_session
        from jobs.backtest import BacktestJob, python_configuration, run_backtest

        devices = tuple(d.strip() for d in args.devices.split(",") if d.strip()) if args.devices else None
        try:
            job = BacktestJob(args.from_ms, args.to_ms, {CANDIDATE: candidate, LIVE: live}, devices)
        except ValueError as exc:
            print(f"iotlink rules backtest: {exc}", file=sys.stderr)
            return 2
        print(live_from, file=human)
        print(f"replaying {iso_utc(job.from_ms)} .. {iso_utc(job.until_ms)}, products {', '.join(job.products)}"
              f"{f', {len(devices)} devices' if devices else ''} from Iceberg telemetry ...", file=human, flush=True)
        started = time.monotonic()
        # PyFlink runs the Python workers of a local job inside this process ("loopback"), where
        # every parallel instance shares one interpreter; as processes of their own they use the
        # cores (PyFlink's switch for it is this environment variable, read at session start).
        os.environ.setdefault("_python_worker_execution_mode", "process")
        session = open_session(settings, kafka_scan(settings, bounded=True), args.parallelism or 2, args.ui_port,
                               report=lambda line: None, extra=python_configuration())
        by_device, readings = run_backtest(session.table_env, job,
                                           progress=lambda n: print(f"  {n} devices replayed", file=human, flush=True))
        seconds = time.monotonic() - started
        spans, errors = [], {CANDIDATE: [], LIVE: []}
        for device_id, events in by_device.items():
            errors_here = [e for e in events if e[1] == "ERROR"]
            for label, _kind, message, _ts, _severity in errors_here:
                errors[label].append(f"{device_id}: {message}")
            spans.extend(alarm_spans(device_id, [e for e in events if e[1] != "ERROR"]))
        report = backtest_report(spans, incidents, job.from_ms, job.until_ms, errors)
        report |= {"devices": len(by_device), "readings": readings, "seconds": round(seconds, 1)}
        for line in report_lines(report):
            print(line, file=human)
        print(f"{readings:,} readings of {len(by_device):,} devices replayed through both rule sets in {seconds:.1f} s "
              f"({readings / max(seconds, 1e-9):,.0f} readings/s)", file=human)
        if args.json_path:
            text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
            if args.json_path == "-":
                print(text)
            else:
                Path(args.json_path).write_text(text + "\n", encoding="utf-8")
                print(f"report: {args.json_path}", file=human)
        if args.charts:
            from iotlink.backtest_charts import rule_chart

            rules = sorted({rule for rules in report["rule_sets"].values() for rule in rules})
            for rule_id in rules:
                summary = {label: stats[rule_id] for label, stats in report["rule_sets"].items() if rule_id in stats}
                path = rule_chart(Path(args.charts) / f"{_file_name(rule_id)}.png", rule_id,
                                  hourly_raised(spans, rule_id, job.from_ms, job.until_ms), job.from_ms, summary)
                print(f"chart: {path}", file=human)
        return 0
    finally:
        if stack is not None:
            stack.stop()


def _file_name(rule_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in rule_id)[:100] or "rule"
