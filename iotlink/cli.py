"""The ``iotlink`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from iotlink.job_process import start_job_process, stop_job_process
from iotlink.stack import print_endpoints, with_stack
from jobs.config import ConfigError, Settings, connection_options, settings_from_args
from operators.spec_loading import SpecLoadError
from operators.value_repr import masked_url

EPILOG = """\
Endpoints come from (lowest to highest priority): defaults, the config file (--config or
$IOTLINK_CONFIG), environment variables (IOTLINK_BOOTSTRAP_SERVERS, IOTLINK_POSTGRES_URL,
IOTLINK_ICEBERG_CATALOG, IOTLINK_ICEBERG_WAREHOUSE, IOTLINK_MQTT_URL, IOTLINK_MONGO_URL, IOTLINK_DATA_DIR) and the
options below. With --embedded a command starts the embedded stack itself.
"""


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupted()


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Starts the embedded stack and keeps it up until Ctrl-C."""
    from iotlink.mqtt_tls import tls_files
    from iotlink.stack import EmbeddedStack

    stack = EmbeddedStack(settings)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        endpoints = stack.start()
        print("iotlink embedded stack is up:")
        print_endpoints(endpoints)
        if stack.mqtt_login is not None:
            # The one place the password is shown: devices and tools outside iotlink need it.
            print(f"  mqtt login  user {stack.mqtt_login.username}, password {stack.mqtt_login.password} "
                  f"(kept in {stack.mqtt_login_file}; anonymous clients are refused; --embedded commands log in by themselves)")
        if "mqtt_tls" in endpoints:
            print(f"  mqtt tls    {endpoints['mqtt_tls']}, same login; clients trust {tls_files(stack.mqtt_dir).ca}")
        print(f"  topics    {', '.join(settings.topics.all())}")
        print(f"  data dir  {stack.data_dir}")
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Interrupted):
        print("\nstopping the embedded stack…")
    finally:
        stack.stop()
    print("stopped: no broker, database or MQTT process left running")
    return 0


def _announce_specs(settings: Settings) -> None:
    """Validates specs, device registry and rule sets (a bad one stops here) and says what was found."""
    from jobs.telemetry_job import startup_factories

    factory, rules = startup_factories(settings)
    spec_ids = sorted(spec_id for _, spec_id in factory.spec_ids)
    print(f"decoder specs: {len(spec_ids)} from {settings.specs_dir} ({', '.join(spec_ids)}); devices in registry: {len(factory.devices)}")
    count = len(rules.sources) if rules else 0
    print(f"alarm rule sets: {count} from {settings.rules_dir}" + ("" if count else " (alarm operator off)"))


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the telemetry job on the local MiniCluster."""
    from jobs.checkpoints import LATEST, newest_checkpoint
    from jobs.telemetry_job import options_from_args, run_telemetry_job

    options = options_from_args(args)
    _announce_specs(settings)  # a bad spec or rule stops here, before anything starts
    stack, settings = with_stack(args, settings, ("kafka",))
    try:
        print(f"telemetry job '{options.job_name}': {settings.topics.raw} -> {settings.topics.telemetry} (+ {settings.topics.dlq})")
        print(f"Flink web UI: http://127.0.0.1:{settings.flink.rest_port}   checkpoints: {settings.checkpoint_dir}", flush=True)
        if options.restore_from == LATEST:
            print(f"restoring from {newest_checkpoint(settings.checkpoint_dir)}", flush=True)
        run_telemetry_job(settings, options)
        print("job finished")
    except KeyboardInterrupt:
        print("\njob cancelled")
    finally:
        if stack is not None:
            stack.stop()
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """Publishes simulated device traffic."""
    from iotlink.simulator import run_simulation

    if args.target == "file":
        from iotlink.simulator import write_simulation_file

        if not args.output:
            print("iotlink simulate: --target file needs --output FILE", file=sys.stderr)
            return 2
        stats = write_simulation_file(args, args.output)
        print(f"wrote {stats.sent} envelopes ({stats.invalid} deliberately malformed, {stats.repeated} repeated) to {args.output}")
        return 0
    # Devices that obey their shadows listen on the broker even when they publish to Kafka.
    stack, settings = with_stack(args, settings, ("kafka", "mqtt") if args.target == "mqtt" or args.obey_shadow else ("kafka",))
    try:
        stats = run_simulation(settings, args, progress=True)
        print(f"sent {stats.sent} messages ({stats.invalid} deliberately malformed, {stats.repeated} repeated), {stats.errors} send errors")
        return 0 if stats.errors == 0 else 1
    except KeyboardInterrupt:
        print("\nsimulation stopped")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def write_fleet_registry(args: argparse.Namespace, path: Path) -> Path:
    """Writes the simulated fleet's device registry (product, expected interval) as YAML."""
    from iotlink.simulator import fleet_from_args

    fleet = fleet_from_args(args)
    interval_s = round(len(fleet) / args.rate, 3)
    lines = ["devices:"] + [f"  {d.device_id}: {{product: {d.product_id}, expected_interval_s: {interval_s}}}" for d in fleet]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The demo's prod-a rules: the client's example is `high` (it notifies; only critical alarms run
# actions), so the demo adds a critical level whose action closes the loop through the shadow.
DEMO_PROD_A_RULES = """\
# Written by iotlink demo: the project's rules/prod-a.yaml with a critical level, so an
# overheating device gets its fan restarted through its shadow and the alarm auto-resolves.
ruleSetId: prod-a-demo
productId: prod-a
version: demo-1
actions:
  restart-fan:
    desired: {fan: restart}
    verifyWithin: 2m
rules:
  - ruleId: temp-threshold-prod-a
    type: threshold
    condition: "metrics.tempC > 80"
    clearCondition: "metrics.tempC < 75"
    severity: critical
    autoAction: restart-fan
"""


def demo_rules_dir(settings: Settings, data_dir: Path) -> Path:
    """The demo's rules: the project's rule files with prod-a's replaced by :data:`DEMO_PROD_A_RULES`."""
    target = data_dir / "demo-rules"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(settings.rules_dir.glob("*.yaml")):
        if path.name != "prod-a.yaml":
            (target / path.name).write_bytes(path.read_bytes())
    (target / "prod-a.yaml").write_text(DEMO_PROD_A_RULES, encoding="utf-8")
    return target


def _start_control_loop(settings: Settings, stack, stop: threading.Event, threads: list, closers: list):
    """The demo's closed loop: shadow service, control sink and rollout controller.

    Returns:
        (control sink counters, rollout controller).
    """
    from iotlink.control_sink import ControlStats, run_control_sink
    from iotlink.ota_commands import fleet_products, open_controller
    from iotlink.shadow_service import ShadowService

    # The simulated devices start from their factory state every run: so do their shadows.
    store = stack.data_dir / "demo-shadows.json"
    store.unlink(missing_ok=True)
    shadows = ShadowService(settings.mqtt_url, store)
    shadows.start()
    closers.append(shadows.stop)
    control = ControlStats()
    sink = threading.Thread(target=run_control_sink, args=(settings, stop, control), name="control-sink", daemon=True)
    sink.start()
    threads.append(sink)
    controller, close_controller = open_controller(settings, fleet_products(settings))
    closers.append(close_controller)
    worker = threading.Thread(target=controller.run, args=(stop,), name="ota-controller", daemon=True)
    worker.start()
    threads.append(worker)
    return control, controller


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Embedded stack + telemetry job + simulator, with live counters."""
    from iotlink.live import CounterLine, FlinkRest
    from iotlink.simulator import run_simulation
    from iotlink.stack import EmbeddedStack
    _announce_specs(settings)  # fail on a bad spec or rule before starting anything
    stack = EmbeddedStack(settings)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = None
    from iotlink.simulator import PublishStats

    stop = threading.Event()
    sim_stats = PublishStats()
    threads: list[threading.Thread] = []
    closers: list = []
    args.obey_shadow = True  # the demo's devices follow their shadows: the control loop is part of it
    demo_started_ms = int(time.time() * 1000)
    if args.ota_failure is None:
        args.ota_failure = ""
    try:
        stack.start()
        settings = stack.settings_with_endpoints()
        if args.rules_dir is None:
            settings = settings.model_copy(update={"rules_dir": demo_rules_dir(settings, stack.data_dir)})
            print(f"rules: the project's, with prod-a critical above 80 C (action restart-fan): {settings.rules_dir} "
                  "(--rules-dir to use others)")
        print("embedded stack:")
        print_endpoints(stack.endpoints, settings.flink.rest_port)
        if stack.mqtt_login is not None:
            print(f"  mqtt login  user {stack.mqtt_login.username}, password in {stack.mqtt_login_file}")
        if settings.device_registry is None:
            # The simulated fleet as master data: products and the reporting interval that
            # communication quality counts missing messages against.
            settings = settings.model_copy(update={"device_registry": str(write_fleet_registry(args, stack.data_dir / "demo-devices.yaml"))})
        control, _ = _start_control_loop(settings, stack, stop, threads, closers)
        print("control loop: shadow service, control sink (iotlink.commands -> shadows) and rollout controller running")
        log_path = stack.data_dir / "logs" / "telemetry-job.log"
        metrics = ["--prometheus-port", str(args.prometheus_port)] if args.prometheus_port else []
        proc = start_job_process(settings, metrics, log_path)
        rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
        print(f"starting the telemetry job (log: {log_path}) …", flush=True)
        deadline = time.monotonic() + 180
        job_id = None
        while job_id is None:
            if proc.poll() is not None:
                print(f"error: the telemetry job exited with code {proc.returncode}; see {log_path}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"error: the telemetry job did not start within 180 s; see {log_path}", file=sys.stderr)
                return 1
            job_id = rest.running_job()
            time.sleep(0.5)
        print(f"job {job_id} running — Flink web UI: http://127.0.0.1:{settings.flink.rest_port}/#/job/running/{job_id}/overview")
        if args.prometheus_port:
            print(f"Prometheus metrics: http://127.0.0.1:{args.prometheus_port}/metrics")

        def simulate():
            run_simulation(settings, args, progress=False, stop=stop, stats=sim_stats)

        sim_thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        sim_thread.start()
        ota_state: dict = {}
        if args.ota:
            from iotlink.ota_commands import fleet_products, run_demo_rollout

            rollout = threading.Thread(target=run_demo_rollout, args=(settings, stack, fleet_products(settings), stop, ota_state),
                                       name="demo-rollout", daemon=True)
            rollout.start()
            threads.append(rollout)
        line = CounterLine()
        end = time.monotonic() + args.duration if args.duration else None
        import psycopg

        from iotlink.ota_commands import demo_ota_line, loop_counts

        with psycopg.connect(settings.postgres_url, autocommit=True) as db:
            while end is None or time.monotonic() < end:
                time.sleep(2)
                if proc.poll() is not None:
                    print(f"error: the telemetry job exited with code {proc.returncode}; see {log_path}", file=sys.stderr)
                    return 1
                try:
                    counters = rest.job_counters(job_id)
                    completed = rest.checkpoints(job_id)["counts"]["completed"]
                except (OSError, KeyError, ValueError):
                    continue
                print(line.render(counters, completed, sent=sim_stats.sent), flush=True)
                loop = loop_counts(db, demo_started_ms)
                print(f"          loop: alarms raised {loop.get('raised', 0)}  commands sent {control.sent}  applied {control.applied}  "
                      f"auto-resolved {loop.get('auto_resolved', 0)}  escalated {loop.get('escalated', 0)}", flush=True)
                ota_line = demo_ota_line(db, ota_state)
                if ota_line:
                    print(f"          {ota_line}", flush=True)
        print("duration reached")
    except (KeyboardInterrupt, _Interrupted):
        print("\nstopping…")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for close in closers:
            close()
        if proc is not None:
            from iotlink.live import FlinkRest

            stop_job_process(proc, FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}"))
        stack.stop()
        print("stopped: job, broker, database and MQTT broker are down")
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the benchmark."""
    from iotlink.bench import run_bench

    return run_bench(args, settings)


def _add_simulation_options(parser: argparse.ArgumentParser, default_duration: float | None) -> None:
    sim = parser.add_argument_group("simulator")
    sim.add_argument("--devices", type=int, default=100, metavar="N", help="number of devices (default 100)")
    sim.add_argument("--rate", type=float, default=200.0, metavar="MSG/S", help="messages per second, all devices (default 200)")
    sim.add_argument(
        "--duration", type=float, default=default_duration, metavar="S",
        help=f"stop after S seconds (default {'until Ctrl-C' if default_duration is None else default_duration})",
    )
    sim.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    sim.add_argument(
        "--profile", default="normal=85,overheat=5,garbage=4,late=4,nodata=2", metavar="MIX",
        help="device behaviours with percent weights: normal, overheat, nodata, garbage, late "
        "(default normal=85,overheat=5,garbage=4,late=4,nodata=2)",
    )
    sim.add_argument(
        "--repeat", type=float, default=0.0, metavar="PCT",
        help="percent of messages sent a second time, as a device or bridge retrying an unacknowledged send "
        "(the job drops them as duplicates; default 0)",
    )
    sim.add_argument(
        "--forms", default="json", metavar="LIST",
        help="payload forms, comma-separated: json,hex,csv (default json; hex and csv devices need their YAML decoder specs)",
    )
    sim.add_argument("--seed", type=int, default=7, help="random seed; same seed, same messages (default 7)")
    sim.add_argument(
        "--target", choices=("kafka", "mqtt", "file"), default="kafka",
        help="publish envelopes to Kafka, raw payloads to MQTT, or write envelopes to --output as fast as they are made "
        "(input for 'iotlink run --input')",
    )
    sim.add_argument("--output", metavar="FILE", help="with --target file: the file to write (one JSON envelope per line)")
    sim.add_argument("--mqtt-env", default="dev", choices=("dev", "stg", "prd"), help="env level of the MQTT topics (default dev)")
    sim.add_argument(
        "--obey-shadow", action="store_true",
        help="devices follow their shadows on the MQTT broker: apply each desired-state delta "
        "($aws/things/<id>/shadow/update/delta) and report it back; a command cools an overheating device, "
        "a desired firmware is downloaded, checked (SHA-256), installed and reported",
    )
    ota = parser.add_argument_group("simulated firmware updates (with --obey-shadow)")
    ota.add_argument("--firmware", default="1.0.0", metavar="VERSION", help="the devices' factory firmware version (default 1.0.0)")
    ota.add_argument("--ota-time", type=float, default=2.0, metavar="S", help="seconds a device takes to install an image (default 2)")
    ota.add_argument("--ota-reboot", type=float, default=1.0, metavar="S",
                     help="seconds a device is silent rebooting into the new firmware (default 1)")
    ota.add_argument(
        "--ota-failure", default=None, metavar="PCT|VERSION=PCT,...",
        help="percent of devices whose install fails: one number for every version but the factory one, or per version "
        "(e.g. 2.0.1=20); the same devices fail every run (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    from jobs.telemetry_job import add_job_arguments

    common = connection_options()
    parser = argparse.ArgumentParser(
        prog="iotlink",
        description="iotlink: IoT telemetry on Apache Flink — decode, alarms, aggregates, exactly-once sinks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "up", parents=[common], help="start the embedded stack (Kafka-protocol broker, PostgreSQL, Iceberg, MQTT, MongoDB) until Ctrl-C",
        description="Start the embedded stack on 127.0.0.1, create the topics, print every endpoint and the MQTT broker's "
        "login (made once per --data-dir, kept in <data-dir>/mqtt/login.json; the broker refuses anonymous clients); "
        "Ctrl-C stops it all.",
    )
    run = sub.add_parser(
        "run", parents=[common], help="run the telemetry job (raw -> decode -> telemetry + DLQ) on a local Flink cluster",
        description="Run the streaming telemetry job on the local Flink MiniCluster with its web UI. "
        "Ctrl-C cancels it (the last checkpoint is retained for --restore).",
    )
    add_job_arguments(run)
    simulate = sub.add_parser(
        "simulate", parents=[common], help="publish simulated device traffic to Kafka or MQTT",
        description="Publish a deterministic simulated fleet (JSON, hex, CSV devices) to Kafka or MQTT.",
    )
    _add_simulation_options(simulate, None)
    demo = sub.add_parser(
        "demo", parents=[common], help="embedded stack + telemetry job + simulator with live counters",
        description="Start the embedded stack, the telemetry job and the simulator; print live counters from Flink. "
        "Stops cleanly on Ctrl-C or after --duration.",
    )
    _add_simulation_options(demo, None)
    from jobs.telemetry_job import add_prometheus_argument

    add_prometheus_argument(demo)
    demo.add_argument(
        "--ota", action="store_true",
        help="also roll firmware 2.0.1 out to the prod-a devices (canary 5 %%, pilot 25 %%, all) once their telemetry is in; "
        "with --ota-failure 20 the canary fails and every updated device is rolled back",
    )
    bench = sub.add_parser(
        "bench", parents=[common], help="measure throughput (msgs/s, peak memory) or end-to-end latency percentiles",
        description="Throughput mode preloads raw messages and runs the job bounded from earliest to the end; "
        "latency mode streams at a fixed rate and reports receive -> telemetry-visible latency p50/p95/p99.",
    )
    from iotlink.bench import add_bench_arguments

    add_bench_arguments(bench)
    from iotlink.rule_commands import add_alarm_commands, add_rule_commands
    from iotlink.spec_commands import add_spec_commands

    sub.add_parser(
        "shadow-service",
        parents=[common],
        help="serve AWS-style device shadows ($aws/things/+/shadow/...) on an MQTT broker",
        description="Serve device shadows with AWS IoT Device Shadow topics and semantics (desired, reported, delta, "
        "version, clientToken) on any MQTT broker, for the embedded stack and tests; AWS IoT Core provides this itself.",
    )
    sub.add_parser(
        "control-sink",
        parents=[common],
        help="send shadow commands (iotlink.commands) to device shadows over MQTT, record outcomes in PostgreSQL",
        description="Consume iotlink.commands, publish each as a desired-state update on $aws/things/<device>/shadow/update "
        "with clientToken = command id, wait for accepted/rejected, and upsert the outcome into PostgreSQL control_cmd.",
    )
    db = sub.add_parser(
        "db", help="PostgreSQL schema: apply the migrations in sql/postgres",
        description="Manage the PostgreSQL schema (alarm events, tickets, control commands, rule sets, ...).",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "init", parents=[common], help="apply every migration not applied yet (idempotent)",
        description="Apply the numbered migrations of sql/postgres not yet recorded in schema_migrations, in order. "
        "Safe to run any number of times; an applied file that was edited since is reported as an error.",
    )
    iceberg = sub.add_parser(
        "iceberg", help="Iceberg cold layer: create the tables, query them",
        description="Manage and read the Iceberg tables (raw_payloads, telemetry, alarm_events, agg_1h) "
        "in the catalog given by --iceberg-catalog / --iceberg-warehouse (or --embedded).",
    )
    iceberg_sub = iceberg.add_subparsers(dest="iceberg_command", required=True, metavar="ACTION")
    iceberg_sub.add_parser(
        "init", parents=[common], help="create the namespace and every table that does not exist yet (idempotent)",
        description="Create namespace iotlink and the tables raw_payloads (by day of receipt), telemetry (by day and "
        "product), alarm_events (by day), agg_1h (by day) and customer_product_daily (by day). Existing tables are left as they are.",
    )
    query = iceberg_sub.add_parser(
        "query", parents=[common], help="run one SQL query (DuckDB) over the Iceberg tables and print the result",
        description="Scan the tables the query names into DuckDB (views raw_payloads, telemetry, alarm_events, agg_1h) "
        "and print the result as a table. Example: iotlink iceberg query \"SELECT device_id, count(*) FROM telemetry "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 10\"",
    )
    query.add_argument("sql", help="the query; table names are the Iceberg table names")
    batch = sub.add_parser(
        "batch", parents=[common], help="file batch job: CSV/JSON/hex device files -> Iceberg telemetry + PostgreSQL aggregates",
        description="Load device data files with the product specs: records to Iceberg telemetry (each file once, by its "
        "SHA-256), rejected rows to <output-dir>/errors/<file>.errors.jsonl with line and reason, then recompute the "
        "1m/5m/1h aggregates of the touched devices and products in PostgreSQL; writes a run report. With --schedule it "
        "runs on a cron schedule until Ctrl-C, each run loading the files that are new.",
    )
    batch.add_argument("--input", nargs="+", required=True, metavar="DIR|FILE",
                       help="files or directories (recursive) of .csv, .jsonl/.json, .hex/.txt device files")
    batch.add_argument("--output-dir", metavar="DIR", help="run reports and error files (default <data-dir>/batch)")
    batch.add_argument("--device-pattern", metavar="REGEX",
                       help="regex over a file's path relative to its input directory, with the group 'device' (and optionally "
                       "'product'); default: the file name up to its first '_' or '.', e.g. dev-0001_2026-11-22.csv")
    batch.add_argument("--schedule", metavar="CRON", help="run on this cron schedule (5 fields, UTC), e.g. '*/15 * * * *'")
    mongo = sub.add_parser(
        "mongo", help="MongoDB hot layer: create collections and indexes, read documents",
        description="Manage and read the hot layer (device_state: each device's newest reading, alarms_active, "
        "product_summary_1h, product_summary_1d) in the database of --mongo-url (or --embedded). Every reading is in Kafka "
        "iotlink.telemetry and Iceberg telemetry.",
    )
    mongo_sub = mongo.add_subparsers(dest="mongo_command", required=True, metavar="ACTION")
    mongo_sub.add_parser(
        "init", parents=[common], help="create the collections and their indexes (idempotent)",
        description="Create the hot-layer collections and indexes: device and product lookups and time-ordered reads.",
    )
    find = mongo_sub.add_parser(
        "find", parents=[common], help="print documents of one collection (filter, sort, limit)",
        description="Print documents of a hot-layer collection as JSON lines. Example: iotlink mongo find alarms_active "
        "--filter '{\"severity\": \"critical\"}' --sort raised_ts:-1 --limit 20",
    )
    find.add_argument("collection", help="device_state, alarms_active, product_summary_1h or product_summary_1d")
    find.add_argument("--filter", default="{}", metavar="JSON", help="a MongoDB query document (default {})")
    find.add_argument("--sort", metavar="FIELD:1|-1", help="sort by one field, ascending (1) or descending (-1)")
    find.add_argument("--limit", type=int, default=20, help="documents to print at most (default 20)")
    find.add_argument("--tenant", metavar="TENANT",
                      help="only this tenant's documents: device_state of its devices (their readings' tenant), alarms_active "
                      "of those devices; the product summaries mix tenants and are refused")
    query.add_argument("--max-rows", type=int, default=100, help="rows to print at most (default 100)")
    add_spec_commands(sub)
    add_rule_commands(sub, common)
    add_alarm_commands(sub, common)
    from iotlink.bridge_commands import add_bridge_commands

    add_bridge_commands(sub, common)
    from iotlink.sql_commands import add_sql_command

    add_sql_command(sub, common)
    add_cluster_commands(sub, common)
    from iotlink.analytics_commands import add_analytics_commands
    from iotlink.ota_commands import add_ota_commands
    from iotlink.tenant_commands import add_tenant_commands

    add_ota_commands(sub, common)
    add_tenant_commands(sub, common)
    add_analytics_commands(sub, common)
    return parser


def _rule_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.rule_commands import run_rule_command

    return run_rule_command(args, settings)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    """Applies the PostgreSQL migrations."""
    from connectors.postgres import MigrationError, apply_migrations, read_migrations

    stack, settings = with_stack(args, settings, ("postgres",))
    try:
        if not settings.postgres_url:
            print("iotlink db init: no database: give --postgres-url (or --embedded)", file=sys.stderr)
            return 2
        try:
            applied = apply_migrations(settings.postgres_url)
        except MigrationError as exc:
            print(f"iotlink db init: {exc}", file=sys.stderr)
            return 2
        total = len(read_migrations())
        if applied:
            print(f"applied {len(applied)} of {total} migrations: {', '.join(applied)}")
        else:
            print(f"schema is current ({total} migrations applied before)")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def cmd_iceberg(args: argparse.Namespace, settings: Settings) -> int:
    """Creates the Iceberg tables, or runs a DuckDB query over them."""
    from connectors.iceberg import NAMESPACE, init_tables, open_catalog, query_tables

    stack, settings = with_stack(args, settings, ("iceberg",))
    try:
        if not settings.iceberg_catalog:
            print(f"iotlink iceberg {args.iceberg_command}: no catalog: give --iceberg-catalog (or --embedded)", file=sys.stderr)
            return 2
        catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
        if args.iceberg_command == "init":
            for table, outcome in init_tables(catalog).items():
                print(f"{NAMESPACE}.{table}: {outcome}")
            return 0
        columns, rows = query_tables(catalog, args.sql)
        _print_table(columns, rows[: args.max_rows])
        if len(rows) > args.max_rows:
            print(f"({len(rows)} rows, {args.max_rows} shown)")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def cmd_shadow_service(args: argparse.Namespace, settings: Settings) -> int:
    """Serves device shadows on the MQTT broker until Ctrl-C."""
    from iotlink.shadow_service import ShadowService

    stack, settings = with_stack(args, settings, ("mqtt",))
    if not settings.mqtt_url:
        print("iotlink shadow-service: no MQTT broker: give --mqtt-url (or --embedded)", file=sys.stderr)
        return 2
    store = settings.data_dir / "shadows.json"
    store.parent.mkdir(parents=True, exist_ok=True)
    service = ShadowService(settings.mqtt_url, store)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        service.start()
        print(f"shadow service on {masked_url(settings.mqtt_url)}: $aws/things/+/shadow/update|get; shadows kept in {store}; Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(5)
            print(f"  {len(service.shadows)} shadows, {service.updates} updates applied", flush=True)
    except (KeyboardInterrupt, _Interrupted):
        print("\nshadow service stopped")
    finally:
        service.stop()
        if stack is not None:
            stack.stop()
    return 0


def cmd_control_sink(args: argparse.Namespace, settings: Settings) -> int:
    """Sends shadow commands from iotlink.commands to the device shadows until Ctrl-C."""
    from iotlink.control_sink import ControlStats, run_control_sink

    stack, settings = with_stack(args, settings, ("kafka", "postgres", "mqtt"))
    if settings.shadow.backend == "mqtt" and not settings.mqtt_url:
        print("iotlink control-sink: no MQTT broker: give --mqtt-url (or --embedded), or set shadow.backend: aws-iot", file=sys.stderr)
        return 2
    stop, stats, failure = threading.Event(), ControlStats(), []

    def work() -> None:
        try:
            run_control_sink(settings, stop, stats)
        except Exception as exc:  # noqa: BLE001 - reported as one line by the main thread
            failure.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    target = settings.shadow.endpoint if settings.shadow.backend == "aws-iot" else masked_url(settings.mqtt_url)
    try:
        worker.start()
        print(f"control sink: {settings.topics.commands} -> $aws/things/<device>/shadow/update on {target} ({settings.shadow.backend})"
              + (" ; outcomes -> PostgreSQL control_cmd" if settings.postgres_url else ""), flush=True)
        last = time.monotonic()
        while worker.is_alive():
            worker.join(0.2)
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                print(f"  sent {stats.sent}  accepted {stats.accepted}  rejected {stats.rejected}  timed out {stats.timed_out}  "
                      f"applied {stats.applied}  not applied {stats.not_applied}", flush=True)
    except (KeyboardInterrupt, _Interrupted):
        print("\ncontrol sink stopped")
    finally:
        stop.set()
        worker.join(15)
        if stack is not None:
            stack.stop()
    if failure:
        print(f"iotlink control-sink: error: {type(failure[0]).__name__}: {masked_url(str(failure[0]))}", file=sys.stderr)
        return 1
    return 0


def _alarm_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.rule_commands import run_alarm_command

    return run_alarm_command(args, settings)


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the file batch job once, or on a cron schedule."""
    from datetime import UTC, datetime

    from jobs.file_batch import BatchOptions, next_run, run_batch
    from operators.file_input import DEFAULT_DEVICE_PATTERN

    if args.schedule:
        next_run(args.schedule, datetime.now(UTC))  # a bad expression stops here
    stack, settings = with_stack(args, settings, ("postgres", "iceberg"))
    options = BatchOptions(
        inputs=tuple(args.input),
        output_dir=Path(args.output_dir) if args.output_dir else settings.data_dir / "batch",
        device_pattern=args.device_pattern or DEFAULT_DEVICE_PATTERN,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            print(f"batch run over {', '.join(options.inputs)}:", flush=True)
            report = run_batch(settings, options, progress=lambda line: print(line, flush=True))
            totals = report.totals()
            print(f"files {totals['files']} (loaded {totals.get('loaded', 0)}, already loaded {totals.get('already loaded', 0)}, "
                  f"failed {totals.get('failed', 0)}), rows {totals['rows']}, records {totals['records']}, rejected {totals['rejected']}, "
                  f"windows recomputed {report.windows_recomputed}, {report.seconds:.1f} s; report in {options.output_dir}", flush=True)
            if not args.schedule:
                return 1 if totals.get("failed") else 0
            wake = next_run(args.schedule, datetime.now(UTC))
            print(f"next run at {wake.isoformat()}", flush=True)
            time.sleep(max(0.0, (wake - datetime.now(UTC)).total_seconds()))
    except (KeyboardInterrupt, _Interrupted):
        print("\nstopped")
        return 0
    finally:
        if stack is not None:
            stack.stop()


def cmd_mongo(args: argparse.Namespace, settings: Settings) -> int:
    """Creates the hot-layer collections, or prints documents of one."""
    import orjson

    from connectors.mongo import INDEXES, init_collections, open_database

    stack, settings = with_stack(args, settings, ("mongo",))
    try:
        if not settings.mongo_url:
            print(f"iotlink mongo {args.mongo_command}: no server: give --mongo-url (or --embedded)", file=sys.stderr)
            return 2
        db = open_database(settings.mongo_url)
        if args.mongo_command == "init":
            for name, outcome in init_collections(db).items():
                print(f"{db.name}.{name}: {outcome}")
            return 0
        if args.collection not in INDEXES:
            print(f"iotlink mongo find: unknown collection {args.collection!r} (one of {', '.join(INDEXES)})", file=sys.stderr)
            return 2
        try:
            query = orjson.loads(args.filter)
        except orjson.JSONDecodeError as exc:
            print(f"iotlink mongo find: --filter is not JSON: {exc}", file=sys.stderr)
            return 2
        if args.tenant:
            from connectors.mongo import tenant_filter

            devices = [doc["_id"] for doc in db["device_state"].find({"tenant": args.tenant}, {"_id": 1})]
            try:
                query = tenant_filter(args.collection, query, args.tenant, devices)
            except ValueError as exc:
                print(f"iotlink mongo find: --tenant {args.tenant}: {exc}", file=sys.stderr)
                return 2
        cursor = db[args.collection].find(query).limit(args.limit)
        if args.sort:
            field, _, direction = args.sort.partition(":")
            cursor = cursor.sort(field, -1 if direction.strip() == "-1" else 1)
        for doc in cursor:
            print(orjson.dumps(doc, default=str).decode())
        return 0
    finally:
        if stack is not None:
            stack.stop()


def _bridge_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.bridge_commands import run_bridge_command

    return run_bridge_command(args, settings)


def _sql_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.sql_commands import run_sql_command

    return run_sql_command(args, settings)


def _spec_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.spec_commands import run_spec_command

    return run_spec_command(args, settings)


def _ota_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.ota_commands import run_ota_command

    return run_ota_command(args, settings)


def _tenant_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.tenant_commands import run_tenant_command

    return run_tenant_command(args, settings)


def _analytics_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.analytics_commands import run_analytics_command, run_devices_command, run_formulas_command

    run = {"analytics": run_analytics_command, "formulas": run_formulas_command, "devices": run_devices_command}[args.command]
    return run(args, settings)


def _ticket_command(args: argparse.Namespace, settings: Settings) -> int:
    from iotlink.ota_commands import run_ticket_command

    return run_ticket_command(args, settings)


COMMANDS = {
    "up": cmd_up,
    "run": cmd_run,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "decode": _spec_command,
    "specs": _spec_command,
    "rules": _rule_command,
    "alarms": _alarm_command,
    "shadow-service": cmd_shadow_service,
    "control-sink": cmd_control_sink,
    "db": cmd_db,
    "iceberg": cmd_iceberg,
    "mongo": cmd_mongo,
    "batch": cmd_batch,
    "bridge": _bridge_command,
    "sql": _sql_command,
    "ota": _ota_command,
    "tickets": _ticket_command,
    "tenants": _tenant_command,
    "analytics": _analytics_command,
    "formulas": _analytics_command,
    "devices": _analytics_command,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``iotlink`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"iotlink: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args, settings)
    # Messages of drivers and libraries may quote the connection URL: its password is masked.
    except ConfigError as exc:
        print(f"iotlink: configuration error: {masked_url(str(exc))}", file=sys.stderr)
        return 2
    except SpecLoadError as exc:
        for problem in exc.problems:
            print(f"iotlink: {problem}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"iotlink: {masked_url(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line for operators; the traceback only with IOTLINK_DEBUG
        if os.environ.get("IOTLINK_DEBUG"):
            raise
        print(f"iotlink {args.command}: error: {type(exc).__name__}: {masked_url(str(exc))}", file=sys.stderr)
        return 1


def add_cluster_commands(sub, common: argparse.ArgumentParser) -> None:
    """Adds ``iotlink cluster up`` and ``iotlink cluster down`` (a local standalone Flink cluster)."""
    from iotlink.cluster import DEFAULT_JOBMANAGER_MEMORY, DEFAULT_SLOTS, DEFAULT_TASKMANAGER_MEMORY, DEFAULT_TASKMANAGERS

    cluster = sub.add_parser(
        "cluster", help="a local standalone Flink cluster (JobManager + TaskManagers) for 'flink run -py' submissions",
        description="Run a standalone Flink session cluster from the PyFlink distribution on 127.0.0.1 (one JobManager "
        "and separate TaskManager processes), to submit the telemetry job with 'flink run -py' as on a real cluster.",
    )
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = cluster_sub.add_parser(
        "up", parents=[common], help="start the cluster, print the web UI and the flink run command; Ctrl-C stops it",
        description="Start the JobManager and the TaskManagers with a configuration generated under "
        "<data-dir>/cluster (conf/config.yaml, logs in log/), wait until every TaskManager registered, then print "
        "the web UI address and the exact 'flink run -py' command lines that submit, stop (with a savepoint) and "
        "resubmit the telemetry job against the current settings. Runs until Ctrl-C or 'iotlink cluster down'. "
        "The REST API and web UI listen on --ui-port; checkpoints go to <data-dir>/checkpoints, savepoints to "
        "<data-dir>/savepoints. With --embedded the job's Kafka is the embedded broker (the one 'iotlink up' runs "
        "on --data-dir, else one started for as long as the cluster runs).",
    )
    up.add_argument("--taskmanagers", type=int, default=DEFAULT_TASKMANAGERS, metavar="N",
                    help=f"TaskManager processes (default {DEFAULT_TASKMANAGERS})")
    up.add_argument("--slots", type=int, default=DEFAULT_SLOTS, metavar="N",
                    help=f"task slots per TaskManager (default {DEFAULT_SLOTS}; the telemetry job needs one slot per raw "
                    "partition, 4 by default, in all)")
    up.add_argument("--taskmanager-memory", default=DEFAULT_TASKMANAGER_MEMORY, metavar="SIZE",
                    help=f"process memory of each TaskManager, e.g. 2048m or 3g (default {DEFAULT_TASKMANAGER_MEMORY})")
    up.add_argument("--jobmanager-memory", default=DEFAULT_JOBMANAGER_MEMORY, metavar="SIZE",
                    help=f"process memory of the JobManager (default {DEFAULT_JOBMANAGER_MEMORY})")
    up.add_argument("--startup-timeout", type=float, default=120.0, metavar="S",
                    help="give up when the cluster is not ready after S seconds (default 120)")
    down = cluster_sub.add_parser(
        "down", help="stop the cluster that 'iotlink cluster up' runs on --data-dir",
        description="Stop the cluster started by 'iotlink cluster up' on the same data directory: its process is asked "
        "to stop (SIGTERM), and any JobManager or TaskManager of it still running afterwards is terminated. "
        "Running jobs end with it (stop them with a savepoint first to resume them later).",
    )
    down.add_argument("--data-dir", metavar="DIR", help="the data directory of the running cluster (default $IOTLINK_DATA_DIR or ./.iotlink)")
    down.add_argument("--config", metavar="FILE", help="YAML config file whose data_dir to use (default $IOTLINK_CONFIG)")
    down.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for each step of the shutdown before killing what is left (default 30)")


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """Starts a local standalone Flink cluster until Ctrl-C (``up``), or stops the one running (``down``)."""
    from iotlink.cluster import ClusterError, FlinkCluster, shell_line, stop_running_cluster, telemetry_job_arguments
    from jobs.telemetry_job import JOB_NAME

    if args.cluster_command == "down":
        data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir
        stopped = stop_running_cluster(data_dir, timeout_s=args.timeout)
        if stopped is None:
            print(f"no Flink cluster runs on {data_dir.resolve()}")
            return 1
        print(f"stopped the Flink cluster of process {stopped['pid']} ({stopped['rest_url']}): "
              f"{', '.join(f'{name} {pid}' for name, pid in stopped['processes'].items())}")
        return 0
    stack, settings = with_stack(args, settings, ("kafka",))
    cluster = FlinkCluster(
        settings.data_dir, rest_port=settings.flink.rest_port, taskmanagers=args.taskmanagers, slots=args.slots,
        jobmanager_memory=args.jobmanager_memory, taskmanager_memory=args.taskmanager_memory, startup_timeout_s=args.startup_timeout,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            cluster.start()
        except ClusterError as exc:
            print(f"iotlink cluster up: {exc}", file=sys.stderr)
            return 1
        job_args = telemetry_job_arguments(settings, config_file=args.config, job_name=JOB_NAME)
        script = str(Path(__file__).resolve().parent.parent / "jobs" / "telemetry_job.py")
        print(f"Flink cluster is up: 1 JobManager, {args.taskmanagers} TaskManagers x {args.slots} slots "
              f"(pids {', '.join(map(str, cluster.pids().values()))})")
        print(f"  web UI      {cluster.rest_url}")
        print(f"  config      {cluster.conf_dir / 'config.yaml'}")
        print(f"  logs        {cluster.log_dir}")
        print(f"  savepoints  {cluster.savepoint_dir}")
        print("Submit the telemetry job:")
        print(f"  {shell_line(cluster.flink_command('run', '-d', '-py', script, *job_args))}")
        print("Stop it with a savepoint (prints the savepoint path):")
        print(f"  {shell_line(cluster.flink_command('stop', '--savepointPath', cluster.savepoint_dir.as_uri()))} <job-id>")
        print("Resubmit from that savepoint:")
        print(f"  {shell_line(cluster.flink_command('run', '-d', '-s', '<savepoint-path>', '-py', script, *job_args))}")
        print(f"Press Ctrl-C to stop the cluster (or: iotlink cluster down --data-dir {cluster.data_dir}).", flush=True)
        expected = len(cluster.pids())
        while len(cluster.pids()) == expected:
            time.sleep(1)
        print(f"iotlink cluster up: a cluster process exited; logs in {cluster.log_dir}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Interrupted):
        print("\nstopping the Flink cluster…")
    finally:
        cluster.stop()
        if stack is not None:
            stack.stop()
    print("stopped: no JobManager or TaskManager left running")
    return 0


COMMANDS["cluster"] = cmd_cluster


if __name__ == "__main__":
    sys.exit(main())
