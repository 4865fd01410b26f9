"""``iotlink bridge mqtt|tcp|http``: long-running ingest services that write raw envelopes to Kafka.

Each bridge module provides ``add_arguments(parser)`` (its own options) and
``run(args, settings) -> int`` (the service until Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from connectors import bridge_http, bridge_mqtt, bridge_tcp
from iotlink.http_workers import HttpWorkers
from jobs.config import Settings
from operators.value_repr import masked_url

# bridge name -> (module, one-line help, description)
BRIDGES = {
    "mqtt": (
        "connectors.bridge_mqtt",
        "MQTT -> iotlink.raw: subscribe to device topics (QoS 1), ack only after Kafka confirms",
        "Subscribe to device topics on an MQTT broker (or AWS IoT Core), wrap each message in the raw envelope "
        "and produce it to iotlink.raw keyed by device id; a message is acknowledged to the broker only after "
        "Kafka has confirmed it (at-least-once).",
    ),
    "tcp": (
        "connectors.bridge_tcp",
        "TCP gateway -> iotlink.raw: persistent device connections, configurable framing",
        "Accept persistent device connections, cut the byte stream into frames (newline, length-prefixed or "
        "fixed-size), and produce each frame byte-exact to iotlink.raw keyed by device id.",
    ),
    "http": (
        "connectors.bridge_http",
        "HTTP ingest -> iotlink.raw: POST /v1/telemetry/{device_id}, 202 after Kafka acknowledges",
        "Serve POST /v1/telemetry/{device_id} (JSON, CSV or binary bodies) and a batch endpoint; answer 202 only "
        "after Kafka has acknowledged the records.",
    ),
}


def add_bridge_commands(sub, common: argparse.ArgumentParser) -> None:
    """Adds ``bridge mqtt|tcp|http`` to the ``iotlink`` sub-command parsers."""
    bridge = sub.add_parser(
        "bridge",
        help="ingest bridges: MQTT, TCP and HTTP into iotlink.raw",
        description="Run one ingest bridge until Ctrl-C. Every bridge writes the raw envelope (payload byte-exact) "
        "to iotlink.raw keyed by device id and prints per-second counters.",
    )
    kinds = bridge.add_subparsers(dest="bridge_command", required=True, metavar="KIND")
    for name, (module_name, help_text, description) in BRIDGES.items():
        parser = kinds.add_parser(name, parents=[common], help=help_text, description=description)
        importlib.import_module(module_name).add_arguments(parser)


def run_bridge_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the bridge the command line names."""
    return {"mqtt": run_mqtt, "tcp": run_tcp, "http": run_http}[args.bridge_command](args, settings)


@dataclass
class RunningService:
    """What :func:`serve_until_stopped` needs of a started bridge.

    Attributes:
        banner: The line printed once it runs (where it listens, where it writes).
        snapshot: Returns the counters now.
        status: ``(counters before, seconds since) -> status line``.
        stop: Stops taking input, waits for Kafka confirmations; False when the drain timed out.
        final: ``drained -> last line``.
    """

    banner: str
    snapshot: Callable[[], dict[str, int]]
    status: Callable[[dict[str, int], float], str]
    stop: Callable[[], bool]
    final: Callable[[bool], str]


def serve_until_stopped(label: str, args: argparse.Namespace, settings: Settings, components: tuple[str, ...],
                        open_service: Callable[[Settings], RunningService],
                        check_options: Callable[[Settings], object] | None = None) -> int:
    """Runs one bridge until Ctrl-C or SIGTERM: the embedded stack if asked, the per-second
    status line, then a drain and the last line. Exit code 0, or 2 for a bad option.

    Args:
        label: The bridge's name in the lines it prints (``tcp gateway``, ...).
        args: The parsed command line (``bridge_command``, ``embedded``, ``status_interval``).
        settings: Platform settings (endpoints of the embedded stack replace them).
        components: The embedded-stack components the bridge needs.
        open_service: Starts the bridge for the final settings.
        check_options: Builds the bridge's options from ``settings``, raising ValueError for a
            bad one; called before anything starts, so a bad option costs no start-up.
    """
    if check_options is not None:
        try:
            check_options(settings)
        except ValueError as exc:
            print(f"iotlink bridge {args.bridge_command}: {exc}", flush=True)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its connection chatter would drown the status lines
    stack = None
    if args.embedded:
        from iotlink.stack import EmbeddedStack

        stack = EmbeddedStack(settings, components, share=True)
        stack.start()
        settings = stack.settings_with_endpoints()
        print(f"{stack.origin}: " + ", ".join(f"{name} {masked_url(address)}" for name, address in stack.endpoints.items()), flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        service = open_service(settings)
        print(service.banner, flush=True)
        before, last = service.snapshot(), time.monotonic()
        interval = args.status_interval if args.status_interval > 0 else 3600.0
        while not stop.wait(interval):
            now = time.monotonic()
            if args.status_interval > 0:
                print(service.status(before, now - last), flush=True)
            before, last = service.snapshot(), now
        print(f"{label}: stopping: waiting for Kafka confirmations", flush=True)
        print(service.final(service.stop()), flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stack is not None:
            stack.stop()


def run_mqtt(args: argparse.Namespace, settings: Settings) -> int:
    """``iotlink bridge mqtt``: runs until Ctrl-C or SIGTERM, then drains and exits 0."""
    def open_service(settings) -> RunningService:
        options = bridge_mqtt.options_from_args(args, settings)
        running = bridge_mqtt.start_bridge(options)

        def final(drained: bool) -> str:
            c = running.counters
            return (f"mqtt bridge: stopped: received {c['received']}, produced {c['produced']}, rejected->dlq {c['rejected']}"
                    + ("" if drained else f"; {running.bridge.in_flight} unconfirmed messages left to the broker's redelivery"))

        return RunningService(
            banner=f"mqtt bridge: {options.describe()} {', '.join(options.topic_filters)} -> {options.raw_topic} "
            f"(dead letters {options.dlq_topic}) via {options.bootstrap_servers}, client id {options.client_id}",
            snapshot=lambda: running.counters,
            status=running.status,
            stop=running.stop,
            final=final,
        )

    return serve_until_stopped("mqtt bridge", args, settings, ("kafka", "mqtt"), open_service)


def run_tcp(args: argparse.Namespace, settings: Settings) -> int:
    """``iotlink bridge tcp``: serves until Ctrl-C or SIGTERM, then drains and exits 0."""
    def open_service(settings) -> RunningService:
        options = bridge_tcp.options_from_args(args, settings)
        gateway = bridge_tcp.TcpGateway(options)
        gateway.start()

        def final(drained: bool) -> str:
            c = gateway.counters.snapshot()
            return (f"tcp gateway: stopped: frames {c['received']}, produced {c['produced']}, rejected->dlq {c['rejected']}, "
                    f"kafka errors {c['failed']}" + ("" if drained else "; the drain timeout ended before every frame was confirmed"))

        return RunningService(
            banner=f"tcp gateway: listening on {options.host}:{gateway.port}, {options.framing.describe()}, {options.device_id.describe()}, "
            f"acks {options.ack} -> {options.raw_topic} (dead letters {options.dlq_topic}) via {options.bootstrap_servers}",
            snapshot=gateway.counters.snapshot,
            status=lambda before, seconds: bridge_tcp.status_line(gateway.counters.snapshot(), before, seconds, gateway.in_flight),
            stop=gateway.stop,
            final=final,
        )

    return serve_until_stopped("tcp gateway", args, settings, ("kafka",), open_service, lambda s: bridge_tcp.options_from_args(args, s))


def run_http(args: argparse.Namespace, settings: Settings) -> int:
    """``iotlink bridge http``: serves until Ctrl-C or SIGTERM, then lets running requests finish and exits 0
    (``--new-token``: prints a new token and its token-file line instead)."""
    if args.new_token:
        token, line = bridge_http.new_token()
        print(f"token (give it to the client; it is stored nowhere): {token}")
        print(f"token file line (append it to the --token-file): {line}")
        return 0

    def open_service(settings) -> RunningService:
        options = bridge_http.options_from_args(args, settings)
        ingest = bridge_http.HttpIngest(options)
        ingest.start()
        others = None
        if options.workers > 1:
            try:
                others = HttpWorkers(options, options.workers)
            except RuntimeError as exc:
                ingest.stop()
                raise SystemExit(str(exc)) from None
        accepted = len(options.tokens) + len(options.token_digests)
        auth = f"{accepted} bearer token(s)" if accepted else "NO authentication"

        def snapshot() -> dict[str, int]:
            own = ingest.counters.snapshot()
            return own if others is None else others.totals(own)

        def status(before: dict[str, int], seconds: float) -> str:
            in_flight = (ingest.producer.in_flight if ingest.producer else 0) + (others.in_flight() if others else 0)
            return bridge_http.status_line(snapshot(), before, seconds, in_flight)

        def stop() -> bool:
            if others is not None:
                others.begin_stop()  # the other workers drain side by side with this one
            drained = ingest.stop()
            return (others.stop(options.drain_timeout_s) if others is not None else True) and drained

        def final(drained: bool) -> str:
            c = snapshot()
            return (f"http ingest: stopped: requests {c['requests']}, 202 {c['accepted']}, 503 {c['unavailable']}, "
                    f"records produced {c['produced']}" + ("" if drained else "; some requests were still running at the drain timeout"))

        workers = f", {options.workers} worker processes" if options.workers > 1 else ""
        return RunningService(
            banner=f"http ingest: listening on http://{options.host}:{ingest.port} ({auth}; OpenAPI at /openapi.json{workers}) "
            f"-> {options.raw_topic} via {options.bootstrap_servers}",
            snapshot=snapshot,
            status=status,
            stop=stop,
            final=final,
        )

    return serve_until_stopped("http ingest", args, settings, ("kafka",), open_service, lambda s: bridge_http.options_from_args(args, s))
