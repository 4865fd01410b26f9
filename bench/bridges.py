"""Ingest-bridge benchmark: each bridge as operators run it (``iotlink bridge <kind>``, its own
process) against the embedded Apache Kafka broker, driven by real clients outside its
interpreter; every message counted on the raw topic afterwards.

- mqtt: ``--publishers`` ``mosquitto_pub -q 1 -l`` processes (C) publish ``--messages`` lines to a
  mosquitto of the benchmark's own; the bridge takes them off at QoS 1 and sends each PUBACK after
  Kafka confirmed. Throughput runs from the first publish until the raw topic holds every
  message. The ceiling, in the same run: ``mosquitto_sub`` (C) taking the same load off the same
  kind of broker. Then latency at a fixed rate (``--rate`` for ``--duration``, one paho
  publisher): publish -> the record readable on the raw topic (a librdkafka consumer tailing it),
  which includes the bridge's wait for Kafka's confirmation.
- tcp: ``--connections`` asyncio connections, a ``hello`` frame each, then newline frames with
  ``--ack line`` (an ``ACK n`` per frame after Kafka), at most ``--window`` unanswered per
  connection; frames/s until the last ACK.
- http: ``--clients`` keep-alive asyncio connections posting one reading per request
  (``POST /v1/telemetry/{device_id}``; ``202`` after Kafka), requests/s and request -> ``202``
  percentiles; then the batch endpoint (``--batch-size`` readings per request), readings/s.

Reported per bridge: the rate, latency percentiles where measured, the bridge process's CPU per
message and peak memory, and what reached the raw topic. Exit code 0 only when every message
is on the topic and every client got its answers.

Usage::

    .venv/bin/python bench/bridges.py [--bridge mqtt|tcp|http|all] [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from mqtt_clients import publish_lines, run_mosquitto_sub, start_broker

from connectors.kafka import end_offsets, ensure_topics
from iotlink.bench import ProcessTreeUsage
from iotlink.stack import EmbeddedStack, free_port, wait_for_port
from jobs.config import Settings, StackPorts

ROOT = Path(__file__).resolve().parent.parent
IOTLINK = [sys.executable, "-m", "iotlink.cli"]


@dataclass
class Result:
    """What one measurement gave."""

    name: str
    count: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    bridge_cpu_s: float | None = None
    bridge_peak_bytes: int | None = None
    on_topic: int | None = None
    problems: list[str] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        """One line for the table."""
        parts = [f"{self.name:<34}{self.count / self.seconds:>10,.0f}/s"]
        if self.note:
            parts.append(f"({self.note})")
        if self.latencies_ms:
            cuts = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
            parts.append(f"p50 {cuts[49]:.1f} / p95 {cuts[94]:.1f} / p99 {cuts[98]:.1f} ms")
        if self.bridge_cpu_s is not None:
            parts.append(f"bridge {self.bridge_cpu_s / self.count * 1e6:.0f} µs CPU/msg, peak {self.bridge_peak_bytes / 2**20:.0f} MiB")
        if self.on_topic is not None:
            parts.append(f"on the raw topic {self.on_topic} of {self.count}")
        parts.extend(f"PROBLEM: {p}" for p in self.problems)
        return "  ".join(parts)


RAW, DLQ = "iotlink.raw", "iotlink.dlq"  # the bridges write the platform's topics (a fresh broker per run)


def _topic_total(bootstrap: str, topic: str = RAW) -> int:
    return sum(end_offsets(bootstrap, topic).values())


def _wait_topic(bootstrap: str, topic: str, target: int, timeout_s: float) -> float:
    """Polls the topic's end offsets until they reach ``target``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _topic_total(bootstrap, topic) >= target:
            return time.monotonic()
        time.sleep(0.1)
    return time.monotonic()


class BridgeProcess:
    """``iotlink bridge <kind> …`` as a subprocess, its process tree measured while it runs."""

    def __init__(self, kind: str, args: list[str], log_path: Path, ready_port: int | None = None, ready_text: str | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*IOTLINK, "bridge", kind, *args, "--status-interval", "0"], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        if ready_port is not None:
            wait_for_port(ready_port, 60, self.proc, f"iotlink bridge {kind}")
        if ready_text is not None:
            deadline = time.monotonic() + 60
            while ready_text not in log_path.read_text(errors="replace"):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"iotlink bridge {kind} did not log {ready_text!r}; see {log_path}")
                time.sleep(0.1)
        self.usage = ProcessTreeUsage(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM (the bridge drains and exits), then waits."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# --- MQTT --------------------------------------------------------------------------------------------

def bench_mqtt(bootstrap: str, work: Path, args) -> list[Result]:
    """The mosquitto ceiling, the bridge's throughput, then its latency at ``args.rate``."""
    results = []
    broker, port = start_broker(work)
    try:
        seconds = run_mosquitto_sub(port, args.messages, args.publishers)
        results.append(Result(f"mqtt ceiling: mosquitto_sub, {args.publishers} pubs", args.messages, seconds))
    finally:
        broker.terminate()
        broker.wait(10)
    topic = RAW
    before = _topic_total(bootstrap)
    broker, port = start_broker(work)
    bridge = BridgeProcess("mqtt", ["--bootstrap-servers", bootstrap, "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--client-id", "bench-bridge",
                                    "--mqtt-protocol", args.mqtt_protocol],
                           work / "bridge-mqtt.log", ready_text="subscribed to")
    try:
        with bridge.usage:
            started = time.monotonic()
            publishers = publish_lines(port, args.messages, args.publishers)
            ended = _wait_topic(bootstrap, topic, before + args.messages, 600)
            bridge.usage.sample()
        for publisher in publishers:
            publisher.wait(60)
        on_topic = _topic_total(bootstrap, topic) - before
        results.append(Result(f"mqtt bridge: {args.publishers} mosquitto_pub", args.messages, ended - started, bridge_cpu_s=bridge.usage.cpu_seconds,
                              bridge_peak_bytes=bridge.usage.peak_bytes, on_topic=on_topic,
                              problems=[] if on_topic == args.messages else ["not every message reached the raw topic"]))
        results.append(_mqtt_latency(bootstrap, topic, port, args))
    finally:
        bridge.stop()
        broker.terminate()
        broker.wait(10)
    broker, port = start_broker(work)
    try:
        results.append(_mqtt_restart(bootstrap, port, work, args))
    finally:
        broker.terminate()
        broker.wait(10)
    return results


def _mqtt_restart(bootstrap: str, port: int, work: Path, args) -> Result:
    """The bridge SIGKILLed once half the messages are on the topic, then started again (same client
    id: its persistent session): every published message must be on the topic."""
    from connectors.kafka import read_topic

    before = end_offsets(bootstrap, RAW)
    command = ["--bootstrap-servers", bootstrap, "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--client-id", "bench-restart",
               "--mqtt-protocol", args.mqtt_protocol]
    bridge = BridgeProcess("mqtt", command, work / "bridge-mqtt-restart-1.log", ready_text="subscribed to")
    started = time.monotonic()
    publishers = publish_lines(port, args.messages, args.publishers)
    _wait_topic(bootstrap, RAW, sum(before.values()) + args.messages // 2, 600)
    bridge.proc.kill()  # a crash: no drain, PUBACKs of produced records never sent
    bridge.stop()
    killed_at = time.monotonic()
    bridge = BridgeProcess("mqtt", command, work / "bridge-mqtt-restart-2.log", ready_text="connected to")
    down_s = time.monotonic() - killed_at
    try:
        seqs: list[int] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            values = read_topic(bootstrap, RAW, since=before, timeout_s=60.0)
            seqs = [orjson.loads(orjson.loads(value)["payload"])["data"]["metrics"]["seq"] for value in values]
            if len(set(seqs)) >= args.messages:
                break
            time.sleep(1.0)
        seconds = time.monotonic() - started
    finally:
        bridge.stop()
        for publisher in publishers:
            publisher.wait(60)
    distinct = len(set(seqs))
    return Result(f"mqtt bridge killed at {args.messages // 2:,} and restarted", args.messages, seconds, on_topic=distinct,
                  problems=[] if distinct == args.messages else [f"{args.messages - distinct} messages lost"],
                  note=f"{down_s:.1f} s down; {len(seqs) - distinct} records twice: redelivered QoS 1")


def _mqtt_latency(bootstrap: str, topic: str, port: int, args) -> Result:
    """One paho publisher at ``args.rate`` for ``args.duration``; latency publish -> record readable on the topic."""
    import paho.mqtt.client as mqtt
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bridges", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in end_offsets(bootstrap, topic).items()])
    count = int(args.rate * args.duration)
    published: dict[int, float] = {}
    arrived: dict[int, float] = {}
    stop = threading.Event()

    def tail():
        while not stop.is_set() and len(arrived) < count + 1:  # (+ the warm-up message)
            record = consumer.poll(0.1)  # returns with the first record (consume(n) would wait for n of them)
            if record is not None and record.error() is None:
                now = time.time()
                arrived.setdefault(orjson.loads(orjson.loads(record.value())["payload"])["seq"], now)

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-rate", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()

    def publish(seq: int) -> None:
        published[seq] = time.time()
        body = b'{"device_timestamp":%d,"data":{"metrics":{"tempC":21.5,"seq":%d}},"seq":%d}' % (int(published[seq] * 1000), seq, seq)
        client.publish(f"iotlink/prd/nohub/rate-{seq % 100:05d}/periodic/pub/telemetry/json", body, qos=1)

    # A warm-up message first, timed by nobody: the consumer's first fetch (connections, offsets)
    # took up to 0.65 s and made the first messages of some runs late by that much.
    warm_until = time.monotonic() + 30
    while -1 not in arrived and time.monotonic() < warm_until:
        publish(-1)
        time.sleep(0.5)
    started = time.monotonic()
    for seq in range(count):
        due = started + seq / args.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        publish(seq)
    reader.join(60)
    stop.set()
    client.loop_stop()
    client.disconnect()
    consumer.close()
    latencies = [(arrived[seq] - at) * 1000 for seq, at in published.items() if seq >= 0 and seq in arrived]
    problems = [] if len(latencies) == count else [f"{count - len(latencies)} of {count} not seen on the topic"]
    return Result(f"mqtt bridge at {args.rate:,.0f} msg/s, {args.duration:.0f} s", count, args.duration, latencies, problems=problems)


# --- TCP ---------------------------------------------------------------------------------------------

async def _tcp_client(port: int, index: int, frames: int, window: int, problems: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"bench-%05d\n" % index)  # the hello frame: the device id
    if not (await reader.readline()).startswith(b"ACK"):
        problems.append(f"connection {index}: hello not acknowledged")
        writer.close()
        return
    sent = acked = 0
    while acked < frames:
        while sent < frames and sent - acked < window:
            sent += 1
            writer.write(b'{"device_timestamp":%d,"data":{"metrics":{"tempC":%d.5,"seq":%d}}}\n' % (1_795_000_000_000 + sent, sent % 90, sent))
        await writer.drain()
        line = await reader.readline()
        if not line.startswith(b"ACK"):
            problems.append(f"connection {index}: {line!r}")
            break
        acked += 1
    writer.close()


def bench_tcp(bootstrap: str, work: Path, args) -> list[Result]:
    """``--connections`` connections, ``--ack line``, at most ``--window`` frames unanswered each."""
    port = free_port()
    before = _topic_total(bootstrap)
    bridge = BridgeProcess("tcp", ["--bootstrap-servers", bootstrap, "--port", str(port), "--framing", "line", "--ack", "line",
                                   "--format", "json"], work / "bridge-tcp.log", ready_port=port)
    per_connection = args.messages // args.connections
    problems: list[str] = []

    async def run() -> None:
        await asyncio.gather(*(_tcp_client(port, i, per_connection, args.window, problems) for i in range(args.connections)))

    try:
        with bridge.usage:
            started = time.monotonic()
            asyncio.run(run())
            seconds = time.monotonic() - started
            bridge.usage.sample()
    finally:
        bridge.stop()
    count = per_connection * args.connections
    on_topic = _topic_total(bootstrap) - before
    if on_topic < count:
        problems.append("not every frame reached the raw topic")
    return [Result(f"tcp bridge: {args.connections} connections, window {args.window}", count, seconds, bridge_cpu_s=bridge.usage.cpu_seconds,
                   bridge_peak_bytes=bridge.usage.peak_bytes, on_topic=on_topic, problems=problems[:3])]


# --- HTTP --------------------------------------------------------------------------------------------

async def _http_client(port: int, requests: list[bytes], latencies: list[float], problems: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request in requests:
        at = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        latencies.append((time.perf_counter() - at) * 1000)
        if not head.startswith(b"HTTP/1.1 202"):
            problems.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    writer.close()


def _http_request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def bench_http(bootstrap: str, work: Path, args) -> list[Result]:
    """Single readings from ``--clients`` keep-alive connections, then the batch endpoint."""
    topic, port = RAW, free_port()
    bridge = BridgeProcess("http", ["--bootstrap-servers", bootstrap, "--port", str(port), "--token", "bench", "--workers", str(args.http_workers)],
                           work / "bridge-http.log", ready_port=port)
    results = []
    workers = f" ({args.http_workers} workers)" if args.http_workers > 1 else ""
    try:
        singles = [[_http_request(f"/v1/telemetry/bench-{seq % 1000:05d}",
                                  b'{"device_timestamp":%d,"data":{"metrics":{"tempC":%d.5,"seq":%d}}}' % (1_795_000_000_000 + seq, seq % 90, seq))
                    for seq in range(client, args.messages, args.clients)] for client in range(args.clients)]
        for name, per_client, readings_per_request in (
            (f"http bridge{workers}: {args.clients} clients, one reading", singles, 1),
            (f"http batch{workers}: {args.clients} clients, {args.batch_size} readings", _batches(args), args.batch_size),
        ):
            latencies: list[float] = []
            problems: list[str] = []
            before = _topic_total(bootstrap, topic)

            async def run(requests=per_client, latencies=latencies, problems=problems) -> None:
                await asyncio.gather(*(_http_client(port, share, latencies, problems) for share in requests))

            with ProcessTreeUsage(bridge.proc.pid) as usage:
                started = time.monotonic()
                asyncio.run(run())
                seconds = time.monotonic() - started
                usage.sample()
            count = sum(len(share) for share in per_client) * readings_per_request
            on_topic = _topic_total(bootstrap, topic) - before
            if on_topic < count:
                problems.append("not every reading reached the raw topic")
            results.append(Result(name, count, seconds, latencies if readings_per_request == 1 else [], usage.cpu_seconds, usage.peak_bytes,
                                  on_topic, sorted(set(problems))[:3]))
    finally:
        bridge.stop()
    return results


def _batches(args) -> list[list[bytes]]:
    batches = []
    for start in range(0, args.messages, args.batch_size):
        records = [{"device_id": f"bench-{seq % 1000:05d}", "format": "json",
                    "payload": {"device_timestamp": 1_795_000_000_000 + seq, "data": {"metrics": {"tempC": seq % 90 + 0.5, "seq": seq}}}}
                   for seq in range(start, min(start + args.batch_size, args.messages))]
        if len(records) == args.batch_size:
            batches.append(_http_request("/v1/telemetry:batch", orjson.dumps(records)))
    return [batches[i::args.clients] for i in range(args.clients)]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="bench/bridges.py", description=__doc__.split("\n\n", 1)[0].replace("\n", " "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridge", choices=("mqtt", "tcp", "http", "all"), default="all", help="which bridge to measure (default all)")
    parser.add_argument("--messages", type=int, default=100_000, metavar="N", help="messages per measurement (default 100000)")
    parser.add_argument("--publishers", type=int, default=100, metavar="N", help="MQTT: mosquitto_pub processes (default 100)")
    parser.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5", help="MQTT: the bridge's protocol version (default 5)")
    parser.add_argument("--rate", type=float, default=1000.0, metavar="MSG/S", help="MQTT latency: publish rate (default 1000)")
    parser.add_argument("--duration", type=float, default=20.0, metavar="S", help="MQTT latency: seconds of publishing (default 20)")
    parser.add_argument("--connections", type=int, default=100, metavar="N", help="TCP: connections (default 100)")
    parser.add_argument("--window", type=int, default=100, metavar="N", help="TCP: unanswered frames per connection (default 100)")
    parser.add_argument("--clients", type=int, default=32, metavar="N", help="HTTP: keep-alive connections (default 32)")
    parser.add_argument("--batch-size", type=int, default=500, metavar="N", help="HTTP batch: readings per request (default 500)")
    parser.add_argument("--http-workers", type=int, default=1, metavar="N", help="HTTP: the bridge's --workers (default 1)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="measure everything N times, one round after the other, and print the median and range of each "
                        "(default 1; the rates of a shared 2-core machine vary by a third from run to run)")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores; {args.messages} messages per measurement", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="iotlink-bench-bridges-") as data_dir:
        work = Path(data_dir)
        settings = Settings(data_dir=work, ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()))
        stack = EmbeddedStack(settings, ("kafka",))
        stack.start()
        try:
            bootstrap = stack.endpoints["kafka"]
            ensure_topics(bootstrap, [RAW, DLQ], partitions={RAW: 4})
            runs = {"mqtt": bench_mqtt, "tcp": bench_tcp, "http": bench_http}
            for round_ in range(1, args.rounds + 1):
                for name in (("mqtt", "tcp", "http") if args.bridge == "all" else (args.bridge,)):
                    print(f"{name}: running{f' (round {round_} of {args.rounds})' if args.rounds > 1 else ''} …", flush=True)
                    for result in runs[name](bootstrap, work, args):
                        results.append(result)
                        print(f"  {result.line()}", flush=True)
        finally:
            stack.stop()
    print()
    for result in results:
        print(result.line())
    if args.rounds > 1:
        print(f"\nover {args.rounds} rounds (median, and the range):")
        for line in round_summary(results):
            print(line)
    return 1 if any(result.problems for result in results) else 0


def round_summary(results: list[Result]) -> list[str]:
    """One line per measurement repeated over rounds: the median rate and bridge CPU, and their ranges."""
    by_name: dict[str, list[Result]] = {}
    for result in results:
        by_name.setdefault(result.name, []).append(result)
    lines = []
    for name, runs in by_name.items():
        rates = [r.count / r.seconds for r in runs]
        line = f"{name:<34}{statistics.median(rates):>10,.0f}/s  ({min(rates):,.0f}–{max(rates):,.0f})"
        cpus = [r.bridge_cpu_s / r.count * 1e6 for r in runs if r.bridge_cpu_s is not None]
        if cpus:
            line += f"  bridge {statistics.median(cpus):.0f} µs CPU/msg ({min(cpus):.0f}–{max(cpus):.0f})"
        lines.append(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
