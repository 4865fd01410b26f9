"""``iotlink ota`` (firmware releases and rollouts) and ``iotlink tickets`` (field service)."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

from jobs.config import Settings
from operators.ota import DEFAULT_STAGES, Artifact, Release, parse_stages
from operators.rule_model import parse_duration_ms
from operators.value_repr import masked_url

STATUS_COLUMNS = ("stage", "targeted", "in_progress", "succeeded", "failed", "timed_out", "cancelled", "skipped", "success_rate")


def add_ota_commands(sub, common) -> None:
    """Adds ``ota`` and ``tickets`` to the ``iotlink`` sub-command parsers."""
    ota = sub.add_parser(
        "ota", help="firmware releases and staged rollouts (canary -> pilot -> all, automatic rollback)",
        description="Create firmware releases and roll them out over the device shadows in stages; the controller "
        "(iotlink ota controller, started by iotlink demo) promotes each stage whose success rate passes its gate and "
        "rolls every updated device back otherwise. docs/ota.md has the whole flow.",
    )
    actions = ota.add_subparsers(dest="ota_command", required=True, metavar="ACTION")
    release = actions.add_parser(
        "release", parents=[common], help="create a release (stored in PostgreSQL, rollout not started)",
        description="Create a firmware release. With --artifact the image is copied into the embedded stack's firmware "
        "file server (<data-dir>/firmware) and its URL and SHA-256 are filled in; else give --url and --sha256.",
    )
    release.add_argument("--id", required=True, dest="release_id", metavar="ID", help="release id, e.g. prod-a-2.0.1")
    release.add_argument("--product", required=True, metavar="ID", help="the product whose devices it updates")
    release.add_argument("--version", required=True, metavar="V", help="the new firmware version")
    release.add_argument("--artifact", metavar="FILE", help="the new image (served by the embedded stack)")
    release.add_argument("--url", metavar="URL", help="where devices download the new image (instead of --artifact)")
    release.add_argument("--sha256", metavar="HEX", help="the new image's SHA-256 (with --url)")
    release.add_argument("--previous-version", required=True, metavar="V", help="the version a rollback returns to")
    release.add_argument("--previous-artifact", metavar="FILE", help="the previous image (served by the embedded stack)")
    release.add_argument("--previous-url", metavar="URL", help="where devices download the previous image")
    release.add_argument("--previous-sha256", metavar="HEX", help="the previous image's SHA-256 (with --previous-url)")
    release.add_argument("--devices", default="*", metavar="GLOBS", help="device id patterns, comma-separated (default *: all of the product)")
    release.add_argument(
        "--stages", metavar="NAME:PCT:GATE,...",
        help="stages as name, cumulative percent of the devices, success-rate gate in percent "
        f"(default {','.join(f'{s.name}:{s.percent:g}:{s.min_success_rate * 100:g}' for s in DEFAULT_STAGES)})",
    )
    release.add_argument("--device-timeout", default="10m", metavar="DURATION",
                         help="time a device has from its command to reporting the new version (default 10m)")
    release.add_argument("--max-alarm-rise", type=float, default=10.0, metavar="PCT",
                         help="roll back when the share of updated devices raising an alarm exceeds the others' by more "
                         "than this many points (default 10)")
    release.add_argument("--offline-after", default="10m", metavar="DURATION",
                         help="devices without telemetry for this long are offline and skipped (default 10m)")
    for name, text in (("start", "start the rollout"), ("pause", "pause it: no new stage and no new commands"),
                       ("resume", "resume a paused rollout"), ("abort", "stop it for good (updated devices keep the new version)")):
        action = actions.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("release_id", metavar="RELEASE")
        action.add_argument("--by", metavar="NAME", help="who does it (default $USER)")
    status = actions.add_parser(
        "status", parents=[common], help="a rollout's progress per stage (live with --watch, JSON with --json)",
        description="Show a rollout's state and, per stage, targeted, in progress, succeeded, failed, timed out, "
        "cancelled (still installing when the rollout was rolled back), skipped devices and the success rate; with a "
        "rollback, how many devices are back.",
    )
    status.add_argument("release_id", metavar="RELEASE")
    status.add_argument("--json", action="store_true", help="print the progress as one JSON document")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="S", help="redraw every S seconds (default 2) until Ctrl-C")
    listing = actions.add_parser("list", parents=[common], help="every release and its rollout state")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    actions.add_parser(
        "controller", parents=[common], help="run the rollout controller until Ctrl-C",
        description="Drive every running rollout: start stages, send commands to iotlink.commands (the control sink "
        "applies them to the shadows), read the devices' reported firmware, judge deadlines and gates, promote or roll back.",
    )

    tickets = sub.add_parser(
        "tickets", help="field-service tickets: list, assign, close, history",
        description="Field-service tickets: escalated alarms and failed firmware updates open them; people assign and "
        "close them, and every change is kept.",
    )
    ticket_actions = tickets.add_subparsers(dest="tickets_command", required=True, metavar="ACTION")
    tlist = ticket_actions.add_parser("list", parents=[common], help="list tickets, newest first")
    tlist.add_argument("--status", choices=("open", "acknowledged", "assigned", "closed"), help="only this status")
    tlist.add_argument("--kind", choices=("queue", "field_service", "firmware"), help="only this kind")
    tlist.add_argument("--limit", type=int, default=50, metavar="N", help="tickets at most (default 50)")
    tlist.add_argument("--json", action="store_true", help="print JSON lines")
    assign = ticket_actions.add_parser("assign", parents=[common], help="assign a ticket to a person or team")
    assign.add_argument("ticket_id", metavar="TICKET")
    assign.add_argument("--to", required=True, metavar="NAME", help="assignee")
    assign.add_argument("--by", metavar="NAME", help="who assigns (default $USER)")
    assign.add_argument("--note", metavar="TEXT", help="a note kept in the history")
    close = ticket_actions.add_parser("close", parents=[common], help="close a ticket")
    close.add_argument("ticket_id", metavar="TICKET")
    close.add_argument("--by", metavar="NAME", help="who closes (default $USER)")
    close.add_argument("--note", metavar="TEXT", help="the resolution, kept in the history")
    hist = ticket_actions.add_parser("history", parents=[common], help="a ticket's history")
    hist.add_argument("ticket_id", metavar="TICKET")


def _connect(settings: Settings):
    from connectors.postgres import migrated_connection

    if not settings.postgres_url:
        raise ValueError("no PostgreSQL: give --postgres-url (or --embedded)")
    return migrated_connection(settings.postgres_url)


def publish_artifact(image: Path, firmware_dir: Path, base_url: str) -> tuple[str, str]:
    """Copies an image into the firmware file server's directory under its SHA-256.

    Returns:
        (url, sha256).
    """
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    target = firmware_dir / digest[:2] / f"{digest}-{image.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(image, target)
    return f"{base_url.rstrip('/')}/{target.relative_to(firmware_dir).as_posix()}", digest


def release_from_args(args: argparse.Namespace, firmware_dir: Path | None, base_url: str | None) -> Release:
    """The release the ``ota release`` options describe (images published when given)."""
    def artifact(version: str, path: str | None, url: str | None, digest: str | None, what: str) -> Artifact:
        if path:
            if firmware_dir is None or base_url is None:
                raise ValueError(f"--{what}artifact needs the embedded stack's firmware file server (--embedded); else give --{what}url")
            url, digest = publish_artifact(Path(path), firmware_dir, base_url)
        elif not url or not digest:
            raise ValueError(f"give --{what}artifact FILE, or --{what}url with --{what}sha256")
        return Artifact(version=version, url=url, sha256=digest.lower())

    return Release(
        release_id=args.release_id, product_id=args.product,
        target=artifact(args.version, args.artifact, args.url, args.sha256, ""),
        previous=artifact(args.previous_version, args.previous_artifact, args.previous_url, args.previous_sha256, "previous-"),
        devices=tuple(p.strip() for p in args.devices.split(",") if p.strip()),
        stages=parse_stages(args.stages) if args.stages else DEFAULT_STAGES,
        device_timeout_s=parse_duration_ms(args.device_timeout, "--device-timeout") / 1000,
        max_alarm_rise=args.max_alarm_rise / 100,
        offline_after_s=parse_duration_ms(args.offline_after, "--offline-after") / 1000,
    )


def status_table(progress: dict) -> list[str]:
    """The progress as terminal lines: a header and one row per stage."""
    lines = [
        f"release {progress['release_id']} ({progress['product_id']}: {progress['from']} -> {progress['to']}): "
        f"{progress['status']}, stage {progress['stage']}" + (f" — {progress['reason']}" if progress.get("reason") else ""),
        "  " + "".join(f"{c.replace('_', ' '):>13}" for c in STATUS_COLUMNS[:-1]) + f"{'success rate':>17}",
    ]
    for stage in progress["stages"]:
        cells = [f"{stage['stage']} {stage['percent']:g}%"] + [str(stage[c]) for c in STATUS_COLUMNS[1:-1]]
        rate = stage["success_rate"]
        cells.append("-" if rate is None else f"{rate:.1%} / {stage['gate']:.0%}")
        lines.append("  " + "".join(f"{c:>13}" for c in cells[:-1]) + f"{cells[-1]:>17}")
    back = progress["rollback"]
    if any(back.values()):
        lines.append(f"  rollback: {back['rolled_back']} back on {progress['from']}, {back['rolling_back']} rolling back, "
                     f"{back['rollback_failed']} failed")
    return lines


def open_controller(settings: Settings, fleet: dict[str, str]):
    """A rollout controller wired to the platform (PostgreSQL, Kafka, the device shadows).

    Returns:
        (controller, close).
    """
    import psycopg

    from connectors.postgres import migrated_connection
    from iotlink.control_sink import open_shadow_link
    from iotlink.ota_controller import ControllerIO, RolloutController, kafka_sender

    conn = migrated_connection(settings.postgres_url)
    send_records, close_producer = kafka_sender(settings.bootstrap_servers)
    holder: dict = {}
    controller = RolloutController(ControllerIO(
        conn=conn, fleet=fleet, send_records=send_records,
        request_state=lambda thing: holder["link"].request_state(thing, settings.shadow.answer_timeout_s),
        commands_topic=settings.topics.commands, notifications_topic=settings.topics.notifications,
        reconnect=lambda: psycopg.connect(settings.postgres_url, autocommit=True),
    ))
    link = open_shadow_link(settings.model_copy(update={"shadow": settings.shadow.model_copy(update={"client_id": "iotlink-ota-controller"})}),
                            on_reported=controller.on_reported)
    holder["link"] = link

    def close() -> None:
        link.close()
        close_producer()
        controller.io.conn.close()  # (a new one after a reconnect)

    return controller, close


def fleet_products(settings: Settings) -> dict[str, str]:
    """Device -> product from the device registry (YAML file or PostgreSQL)."""
    from connectors.postgres import load_device_registry

    return {device: info.product_id for device, info in load_device_registry(settings.device_registry).items()}


def run_ota_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatches ``iotlink ota``."""
    from connectors import ota_store
    from iotlink.stack import with_stack

    components = ("kafka", "postgres", "mqtt") if args.ota_command == "controller" else ("postgres", "firmware")
    stack, settings = with_stack(args, settings, components)
    try:
        if args.ota_command == "controller":
            return _run_controller(settings)
        conn = _connect(settings)
        with conn:
            now = int(time.time() * 1000)
            if args.ota_command == "release":
                firmware_dir = stack.firmware_dir if stack is not None else None
                base_url = stack.endpoints.get("firmware") if stack is not None else None
                release = release_from_args(args, firmware_dir, base_url)
                created = ota_store.create_release(conn, release, now)
                print(f"release {release.release_id}: {release.product_id} {release.previous.version} -> {release.target.version}, "
                      f"stages {', '.join(f'{s.name} {s.percent:g}% (gate {s.min_success_rate:.0%})' for s in release.stages)}"
                      + ("" if created else " (exists already, unchanged)"))
                print(f"  image {release.target.url} sha256 {release.target.sha256}")
                print(f"  start it with: iotlink ota start {release.release_id}")
                return 0
            if args.ota_command in ota_store.TRANSITIONS:
                state = ota_store.change_status(conn, args.release_id, args.ota_command, now, args.by or getpass.getuser())
                print(f"release {args.release_id}: {state}")
                return 0
            if args.ota_command == "list":
                for row in ota_store.list_rollouts(conn):
                    print(orjson.dumps(row).decode() if args.json else
                          f"{row['release_id']:<28} {row['product_id']:<12} {row['from']} -> {row['to']:<10} {row['status']:<12} "
                          f"{row['reason'] or ''}")
                return 0
            if args.ota_command == "status":
                return _status(conn, args)
        return 2
    except ota_store.RolloutError as exc:
        print(f"iotlink ota {args.ota_command}: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack is not None:
            stack.stop()


def _status(conn, args: argparse.Namespace) -> int:
    from connectors import ota_store

    while True:
        progress = ota_store.progress(conn, args.release_id)
        if args.json:
            print(orjson.dumps(progress).decode(), flush=True)
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print("\n".join(status_table(progress)), flush=True)
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _run_controller(settings: Settings) -> int:
    stop = threading.Event()
    fleet = fleet_products(settings)
    if not fleet:
        print("iotlink ota controller: the device registry is empty: give --device-registry FILE|URL (rollouts pick devices from it)",
              file=sys.stderr)
        return 2
    controller, close = open_controller(settings, fleet)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ota controller: commands -> {settings.topics.commands}, reports from {masked_url(settings.mqtt_url or settings.shadow.endpoint)}; "
          "Ctrl-C stops", flush=True)
    worker = threading.Thread(target=controller.run, args=(stop,), name="ota-controller", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(5)
            stats = controller.stats
            print(f"  passes {stats.passes}  commands {stats.commands}  rollbacks {stats.rollbacks}  "
                  + "  ".join(f"{k} {v}" for k, v in sorted(stats.outcomes.items()))
                  + (f"  failed passes {stats.errors} (last: {masked_url(stats.last_error)})" if stats.errors else ""), flush=True)
    except KeyboardInterrupt:
        print("\nota controller stopped")
    finally:
        stop.set()
        worker.join(10)
        close()
    return 0


def run_ticket_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatches ``iotlink tickets``."""
    from connectors import ticket_store
    from iotlink.stack import with_stack

    stack, settings = with_stack(args, settings, ("postgres",))
    try:
        with _connect(settings) as conn:
            by = getattr(args, "by", None) or getpass.getuser()
            if args.tickets_command == "list":
                for t in ticket_store.list_tickets(conn, args.status, args.kind, args.limit):
                    print(orjson.dumps(t).decode() if args.json else
                          f"{t['ticket_id']:<48} {t['kind']:<13} {t['status']:<12} {t['device_id']:<20} "
                          f"{t['rule_id'] or t['release_id'] or '':<24} {t['assigned_to'] or ''}")
            elif args.tickets_command == "assign":
                ticket_store.assign(conn, args.ticket_id, args.to, by, args.note)
                print(f"ticket {args.ticket_id}: assigned to {args.to}")
            elif args.tickets_command == "close":
                ticket_store.close(conn, args.ticket_id, by, int(time.time() * 1000), args.note)
                print(f"ticket {args.ticket_id}: closed")
            elif args.tickets_command == "history":
                for entry in ticket_store.history(conn, args.ticket_id):
                    print(f"{entry['at']}  {entry['action']:<12} {entry['actor'] or '':<16} {entry['detail'] or ''}")
        return 0
    except ticket_store.TicketError as exc:
        print(f"iotlink tickets {args.tickets_command}: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack is not None:
            stack.stop()


DEMO_RELEASE_PREFIX = "demo-prod-a-2.0.1"


def demo_images(directory: Path) -> dict[str, Path]:
    """Two stand-in firmware images (factory 1.0.0 and 2.0.1) for the demo."""
    directory.mkdir(parents=True, exist_ok=True)
    images = {}
    for version in ("1.0.0", "2.0.1"):
        path = directory / f"prod-a-{version}.bin"
        if not path.exists():
            path.write_bytes(hashlib.sha256(version.encode()).digest() * 4096)
        images[version] = path
    return images


def run_demo_rollout(settings: Settings, stack, fleet: dict[str, str], stop: threading.Event, state: dict,
                     device_timeout_s: float = 120.0) -> None:
    """Creates and starts the demo's rollout (prod-a 1.0.0 -> 2.0.1) once the fleet's telemetry is in
    the aggregates (the controller skips devices it has not heard from); ``state`` gets the release
    id and what it is waiting for, for the status line."""
    import psycopg

    from connectors import ota_store

    images = {v: publish_artifact(p, stack.firmware_dir, stack.endpoints["firmware"]) for v, p in demo_images(stack.data_dir / "images").items()}
    devices = sorted(d for d, product in fleet.items() if product == "prod-a")
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        state["waiting"] = "the fleet's first 1-minute aggregates"
        while not stop.is_set() and len(ota_store.last_seen(conn, devices)) < 0.8 * len(devices):
            stop.wait(2)
        if stop.is_set():
            return
        taken = {r["release_id"] for r in ota_store.list_rollouts(conn)}
        release_id = next(f"{DEMO_RELEASE_PREFIX}-{n}" for n in range(1, 10_000) if f"{DEMO_RELEASE_PREFIX}-{n}" not in taken)
        release = Release(
            release_id=release_id, product_id="prod-a",
            target=Artifact(version="2.0.1", url=images["2.0.1"][0], sha256=images["2.0.1"][1]),
            previous=Artifact(version="1.0.0", url=images["1.0.0"][0], sha256=images["1.0.0"][1]),
            device_timeout_s=device_timeout_s, offline_after_s=180,
        )
        now = int(time.time() * 1000)
        ota_store.create_release(conn, release, now)
        ota_store.change_status(conn, release_id, "start", now, "iotlink demo")
        state.pop("waiting", None)
        state["release_id"] = release_id


def demo_ota_line(conn, state: dict) -> str | None:
    """One status line of the demo's rollout, or None before it exists."""
    from connectors import ota_store

    if "waiting" in state:
        return f"ota: waiting for {state['waiting']} before starting the rollout"
    if "release_id" not in state:
        return None
    p = ota_store.progress(conn, state["release_id"])
    def stage_text(s: dict) -> str:
        text = f"{s['stage']} {s['succeeded']}/{s['targeted']}"
        if s["failed"] or s["timed_out"]:
            text += f" ({s['failed']} failed, {s['timed_out']} timed out)"
        if s["cancelled"]:
            text += f" {s['cancelled']} cancelled"
        return text + (f" {s['skipped']} skipped" if s["skipped"] else "")

    stages = "  ".join(stage_text(s) for s in p["stages"] if s["targeted"] or s["skipped"])
    back = p["rollback"]
    rollback = f"  rollback: {back['rolled_back']} back, {back['rolling_back']} going" if any(back.values()) else ""
    return f"ota {p['release_id']}: {p['status']} at {p['stage']}  {stages}{rollback}" + (f"  — {p['reason']}" if p.get("reason") else "")


def loop_counts(conn, since_ms: int) -> dict[str, int]:
    """Alarm lifecycle events of the control loop since ``since_ms`` (PostgreSQL alarm_events)."""
    rows = conn.execute(
        "SELECT event, count(*) FROM alarm_events WHERE event IN ('RAISED', 'AUTO_RESOLVED', 'ESCALATED') "
        "AND recorded_at >= to_timestamp(%s / 1000.0) GROUP BY event",
        (since_ms,),
    ).fetchall()
    return {event.lower(): n for event, n in rows}
