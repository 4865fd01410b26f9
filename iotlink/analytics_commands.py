"""``iotlink analytics``, ``iotlink formulas`` and ``iotlink devices``: customer analytics (docs/analytics.md).

- ``analytics daily`` runs the customer daily job (jobs/customer_daily.py): following the
  telemetry topic until Ctrl-C, or recomputing given days from the Iceberg archive;
- ``formulas push|check|list|evaluate`` registers formulas and evaluates them over the days;
- ``devices move`` records a device's move to another site (also back-dated).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime

import orjson

from jobs.config import Settings
from operators.instants import epoch_ms, iso_utc
from operators.spec_loading import SpecLoadError

DAILY_GROUP_ID = "iotlink-customer-daily"
STATUS_EVERY_S = 5.0


def day_argument(text: str) -> date:
    """A ``YYYY-MM-DD`` option value."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


def time_argument(text: str) -> int:
    """An instant as epoch milliseconds (:func:`operators.instants.epoch_ms`)."""
    try:
        return epoch_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_analytics_commands(sub, common) -> None:
    """Adds ``analytics``, ``formulas`` and ``devices`` to the ``iotlink`` sub-command parsers."""
    analytics = sub.add_parser(
        "analytics", help="customer x product daily aggregates (the design guide's example B)",
        description="Customer analytics: telemetry joined with where each device was (devices -> sites -> customers, at the "
        "reading's time) into customer_product_daily in PostgreSQL, and formulas over those days (iotlink formulas).",
    )
    actions = analytics.add_subparsers(dest="analytics_command", required=True, metavar="ACTION")
    daily = actions.add_parser(
        "daily", parents=[common], help="run the customer daily job: streaming until Ctrl-C, or --from/--to days in batch",
        description="Without --from/--to: follow iotlink.telemetry and keep each customer's, product's and UTC day's row of "
        "customer_product_daily up to date (late readings correct it for the allowed lateness after the day); checkpoints "
        "in <data-dir>/customer-daily/checkpoints, resumed at the next start. With --from/--to: recompute those days from "
        "the Iceberg telemetry archive (after a back-dated device move, or for readings later than the lateness): rows "
        "the recomputation no longer produces are deleted. Formulas are evaluated after a batch and every "
        "--formulas-every seconds while streaming.",
    )
    daily.add_argument("--from", dest="first_day", type=day_argument, metavar="DAY", help="first UTC day to recompute (YYYY-MM-DD)")
    daily.add_argument("--to", dest="last_day", type=day_argument, metavar="DAY", help="last UTC day to recompute (default: --from)")
    daily.add_argument("--lateness", type=float, default=None, metavar="SECONDS",
                       help="streaming: how long after its UTC day a reading still corrects it (default: the job's allowed "
                       "lateness, flink.allowed_lateness_ms)")
    daily.add_argument("--fresh", action="store_true",
                       help="streaming: start from the topic's beginning without the kept checkpoint (default: resume from it)")
    daily.add_argument("--formulas-every", type=float, default=30.0, metavar="SECONDS",
                       help="streaming: evaluate the formulas over changed days this often (0: never; default 30)")
    daily.add_argument("--duration", type=float, metavar="SECONDS", help="streaming: stop after this long (default: until Ctrl-C)")

    formulas = sub.add_parser(
        "formulas", help="formulas over the daily customer x product aggregates: push, check, list, evaluate",
        description="Formulas registered per customer and/or product (YAML, docs/analytics.md), evaluated per day over "
        "customer_product_daily with the rules' safe evaluator into customer_analysis_daily. A changed formula is a new "
        "version; days keep the version that computed them until --since asks to recompute them.",
    )
    formula_actions = formulas.add_subparsers(dest="formulas_command", required=True, metavar="ACTION")
    push = formula_actions.add_parser("push", parents=[common], help="register the formulas of files or directories (new versions if changed)")
    push.add_argument("paths", nargs="+", metavar="FILE|DIR", help="formula files (*.yaml, *.yml) or directories of them")
    push.add_argument("--since", type=day_argument, metavar="DAY",
                      help="then recompute every day from DAY with the live versions (default: only days without a result)")
    check = formula_actions.add_parser("check", help="validate formula files without a database (exit 1 on problems)")
    check.add_argument("paths", nargs="+", metavar="FILE|DIR", help="formula files or directories")
    listing = formula_actions.add_parser("list", parents=[common], help="live formulas, their days and how many are on older versions")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    evaluate = formula_actions.add_parser(
        "evaluate", parents=[common], help="evaluate formulas for new and changed days (and, with --since, recompute)",
        description="Evaluate each live formula for days without a result (live version) and for days whose aggregates "
        "changed since their result (the version that computed it); with --since DAY every day from DAY with the live versions.",
    )
    evaluate.add_argument("--since", type=day_argument, metavar="DAY", help="recompute every day from DAY with the live versions")

    devices = sub.add_parser("devices", help="device master data: move a device to another site")
    device_actions = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    move = device_actions.add_parser(
        "move", parents=[common], help="move a device to a site (also back-dated with --at), keeping its site history",
        description="Set the device's site; the stay it leaves ends and the new one begins at --at (default now). Customer "
        "analytics count each reading for the site the device was at when it was taken.",
    )
    move.add_argument("device_id", metavar="DEVICE", help="a device of the registry (PostgreSQL devices)")
    where = move.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", metavar="SITE", help="the site it moves to")
    where.add_argument("--no-site", action="store_true", help="take it out of every site")
    move.add_argument("--at", type=time_argument, metavar="TIME", help="when it moved: ISO 8601 or epoch ms (default now)")
    move.add_argument("--history", action="store_true", help="print the device's stays afterwards")


def _postgres(settings: Settings, command: str) -> bool:
    if settings.postgres_url:
        return True
    print(f"iotlink {command}: no PostgreSQL: give --postgres-url (or --embedded)", file=sys.stderr)
    return False


def run_devices_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``iotlink devices move``."""
    from connectors.analytics_store import AnalyticsError, assignment_history, move_device
    from connectors.postgres import migrated_connection
    from iotlink.stack import with_stack

    stack, settings = with_stack(args, settings, ("postgres",))
    try:
        if not _postgres(settings, "devices"):
            return 2
        with migrated_connection(settings.postgres_url) as conn:
            site = None if args.no_site else args.site
            try:
                before, at_ms = move_device(conn, args.device_id, site, args.at)
            except AnalyticsError as exc:
                print(f"iotlink devices move: {exc}", file=sys.stderr)
                return 2
            if before == site:
                print(f"{args.device_id}: already at {site or '(no site)'}; nothing changed")
            else:
                print(f"{args.device_id}: {before or '(no site)'} -> {site or '(no site)'} at {iso_utc(at_ms)}")
            now_ms = int(time.time() * 1000)
            if before != site and args.at is not None and args.at < now_ms - 60_000:
                first = datetime.fromtimestamp(args.at / 1000, UTC).date()
                print(f"  readings since then may already count for the site it left: recompute the days before the stream's "
                      f"lateness with iotlink analytics daily --from {first} --to {datetime.now(UTC).date()} (batch), and restart "
                      f"a running iotlink analytics daily with --fresh (its open days are recounted from the topic)")
            if args.history:
                for site_id, customer, start, end in assignment_history(conn, args.device_id):
                    print(f"  {iso_utc(start) if start else 'always':<22} .. {iso_utc(end) if end else 'now':<22} "
                          f"{site_id or '(no site)'} ({customer or 'no customer'})")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def _evaluate(conn, since: date | None = None) -> dict[str, int]:
    from connectors.analytics_store import day_groups, evaluate_days, formula_versions, live_formulas, stored_results
    from operators.formulas import plan_evaluations

    plan = plan_evaluations(day_groups(conn), live_formulas(conn), formula_versions(conn), stored_results(conn), since)
    return evaluate_days(conn, plan)


def _counts_line(counts: dict[str, int]) -> str:
    if not counts:
        return "nothing to evaluate"
    reasons = ", ".join(f"{counts[k]} {k}" for k in ("new", "data changed", "asked") if counts.get(k))
    return f"{counts.get('evaluated', 0)} evaluated ({reasons}), {counts.get('errors', 0)} with errors"


def run_formulas_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``iotlink formulas``."""
    from operators.formulas import load_formula_files

    specs = None
    if args.formulas_command in ("check", "push"):
        try:
            specs = load_formula_files(args.paths)
        except SpecLoadError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 1 if args.formulas_command == "check" else 2
    if args.formulas_command == "check":
        print(f"{len(specs)} formula{'' if len(specs) == 1 else 's'} OK")
        return 0
    from connectors.analytics_store import formula_listing, push_formulas
    from connectors.postgres import migrated_connection
    from iotlink.stack import with_stack

    stack, settings = with_stack(args, settings, ("postgres",))
    try:
        if not _postgres(settings, "formulas"):
            return 2
        with migrated_connection(settings.postgres_url) as conn:
            if args.formulas_command == "push":
                for formula_id, version, status in push_formulas(conn, specs):
                    print(f"{formula_id}: version {version} ({status})")
                print(f"evaluated: {_counts_line(_evaluate(conn, args.since))}")
            elif args.formulas_command == "evaluate":
                print(_counts_line(_evaluate(conn, args.since)))
            else:
                for row in formula_listing(conn):
                    if args.json:
                        print(orjson.dumps(row).decode())
                        continue
                    scope = f"customer {row['customer_id'] or '*'}, product {row['product_id'] or '*'}"
                    older = f", {row['older_version_days']} on older versions" if row["older_version_days"] else ""
                    errors = f", {row['error_days']} with errors" if row["error_days"] else ""
                    print(f"{row['formula_id']:<24} v{row['version']:<3} {scope:<40} {row['days']} days{older}{errors}")
                    unit = f"  [{row['unit']}]" if row["unit"] else ""
                    print(f"    {row['expression']}{unit}")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def run_analytics_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``iotlink analytics daily``."""
    from iotlink.stack import with_stack

    batch = args.first_day is not None or args.last_day is not None
    if batch and args.first_day is None:
        print("iotlink analytics daily: --to needs --from", file=sys.stderr)
        return 2
    components = ("postgres", "iceberg") if batch else ("kafka", "postgres", "iceberg")
    stack, settings = with_stack(args, settings, components)
    try:
        if not _postgres(settings, "analytics daily"):
            return 2
        if batch and not settings.iceberg_catalog:
            print("iotlink analytics daily: --from/--to read the Iceberg archive: give --iceberg-catalog (or --embedded)", file=sys.stderr)
            return 2
        from connectors.postgres import apply_migrations

        apply_migrations(settings.postgres_url)
        if settings.iceberg_catalog:
            from connectors.iceberg import init_tables, open_catalog

            init_tables(open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse))
        if batch:
            return _daily_batch(args, settings)
        return _daily_streaming(args, settings)
    finally:
        if stack is not None:
            stack.stop()


def _daily_batch(args, settings: Settings) -> int:
    import psycopg

    from connectors.analytics_store import database_now, delete_untouched_days
    from iotlink.sql_commands import kafka_scan, open_session
    from jobs.customer_daily import CustomerDailyJob, submit_customer_daily

    first, last = args.first_day, args.last_day or args.first_day
    try:
        job = CustomerDailyJob(days=(first, last), iceberg=True)
    except ValueError as exc:
        print(f"iotlink analytics daily: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        begun = database_now(conn)
    session = open_session(settings, kafka_scan(settings, bounded=True), args.parallelism or 1, args.ui_port,
                           report=lambda line: print(line, file=sys.stderr))
    print(f"recomputing {first} .. {last} from Iceberg telemetry ...", flush=True)
    submit_customer_daily(session.table_env, job).wait()
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        deleted = delete_untouched_days(conn, first, last, begun)
        rows = conn.execute("SELECT count(*), count(DISTINCT customer_id) FROM customer_product_daily WHERE day BETWEEN %s AND %s",
                            (first, last)).fetchone()
        evaluated = _evaluate(conn)
    print(f"customer_product_daily {first} .. {last}: {rows[0]} rows for {rows[1]} customers, {deleted} no longer produced "
          f"and deleted ({time.monotonic() - started:.1f} s)")
    print(f"formulas: {_counts_line(evaluated)}")
    return 0


def _daily_streaming(args, settings: Settings) -> int:
    import psycopg

    from iotlink.sql_commands import kafka_scan, open_session
    from jobs.checkpoints import newest_checkpoint
    from jobs.customer_daily import CustomerDailyJob, submit_customer_daily

    lateness_ms = int(args.lateness * 1000) if args.lateness is not None else settings.flink.allowed_lateness_ms
    job = CustomerDailyJob(allowed_lateness_ms=lateness_ms, dedup_ttl_ms=settings.flink.dedup_ttl_ms or 3_600_000,
                           iceberg=bool(settings.iceberg_catalog))
    checkpoints = (settings.data_dir / "customer-daily" / "checkpoints").resolve()
    checkpoints.mkdir(parents=True, exist_ok=True)
    conf = {
        "execution.checkpointing.interval": "10 s",
        "execution.checkpointing.dir": checkpoints.as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "state.backend.type": "rocksdb",
    }
    resumed = None
    if not args.fresh:
        try:
            resumed = newest_checkpoint(checkpoints)
            conf["execution.state-recovery.path"] = resumed.as_uri()
        except ValueError:
            pass  # first start: the topic from its beginning
    # Earliest: a fresh start recomputes the days still open from the whole topic; a resumed one
    # continues at the offsets of its checkpoint.
    session = open_session(settings, kafka_scan(settings, "earliest", DAILY_GROUP_ID), args.parallelism or 1, args.ui_port,
                           report=lambda line: print(line, file=sys.stderr), extra=conf)
    result = submit_customer_daily(session.table_env, job)
    client = result.get_job_client()
    print(f"customer daily job {client.get_job_id()} {'resumed from ' + str(resumed) if resumed else 'started from the topic beginning'}; "
          f"lateness {lateness_ms / 1000:g} s; to PostgreSQL{' and Iceberg' if job.iceberg else ''}; Ctrl-C stops it", flush=True)
    deadline = time.monotonic() + args.duration if args.duration else None
    next_formulas = time.monotonic() + args.formulas_every if args.formulas_every > 0 else None
    try:
        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(STATUS_EVERY_S)
                status = client.get_job_status().result().name
                rows, changed = conn.execute("SELECT count(*), max(updated_at) FROM customer_product_daily").fetchone()
                line = f"{status:<9} customer_product_daily: {rows} rows, last change {changed:%H:%M:%S}" if changed else f"{status:<9} no rows yet"
                if next_formulas is not None and time.monotonic() >= next_formulas:
                    line += f"; formulas: {_counts_line(_evaluate(conn))}"
                    next_formulas = time.monotonic() + args.formulas_every
                print(line, flush=True)
                if status in ("FAILED", "CANCELED", "FINISHED"):
                    return 1
    except KeyboardInterrupt:
        pass
    client.cancel().result()
    print(f"stopped; checkpoints kept in {checkpoints} (the next start resumes from the newest)")
    return 0
