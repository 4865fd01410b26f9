"""MQTT client benchmark: how fast a subscriber takes QoS 1 messages off a mosquitto broker —
mosquitto's own ``mosquitto_sub`` (C, the ceiling), paho-mqtt (a network thread, PUBACKs sent
by hand), paho with the bridge's read-ahead (``connectors.mqtt_connection.BufferedClient``: one
``recv`` per pass of its loop instead of three per packet — the bridge's client) and aiomqtt
(asyncio over paho).

For each subscriber: a mosquitto of its own (no persistence, unbounded queues), the subscriber
connected with a persistent session at QoS 1, then ``--publishers`` ``mosquitto_pub -l -q 1``
processes (C) publish ``--messages`` lines between them, each on its own device topic; measured
from the first publish to the subscriber's last message. The publishers are C processes, so
the Python subscriber has the interpreter to itself.

What the bridge needs besides speed: the PUBACK of a message only after Kafka confirmed it.
paho does that (``manual_ack=True``, ``Client.ack``); aiomqtt 2.5 has no such option and
acknowledges each message when it reaches the client, so it could lose a message the bridge
had not produced yet. Its rate is measured anyway, with its automatic acknowledgements.

Usage::

    .venv/bin/python bench/mqtt_clients.py [--messages 200000] [--publishers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from iotlink.stack import free_port, wait_for_port

SUBSCRIBERS = ("mosquitto_sub", "paho", "paho-read-ahead", "aiomqtt")
TOPIC_FILTER = "iotlink/+/+/+/+/pub/+/+"


def start_broker(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                    "max_inflight_messages 0\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 10, broker, "mosquitto")
    return broker, port


def publish_lines(port: int, messages: int, publishers: int) -> list[subprocess.Popen]:
    """Starts the publishers, each fed its share of the lines on stdin."""
    procs = []
    for index in range(publishers):
        share = range(index, messages, publishers)
        lines = b"".join(b'{"device_timestamp":%d,"data":{"metrics":{"tempC":%d.5,"seq":%d}}}\n' % (1_795_000_000_000 + s, s % 90, s)
                         for s in share)
        topic = f"iotlink/prd/nohub/bench-{index:05d}/periodic/pub/telemetry/json"
        proc = subprocess.Popen(["mosquitto_pub", "-p", str(port), "-q", "1", "-l", "-t", topic, "-i", f"pub-{index}"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((proc, lines))
    started = []
    for proc, lines in procs:
        threading.Thread(target=_feed, args=(proc, lines), daemon=True).start()
        started.append(proc)
    return started


def _feed(proc: subprocess.Popen, lines: bytes) -> None:
    proc.stdin.write(lines)
    proc.stdin.close()


def run_mosquitto_sub(port: int, messages: int, publishers: int) -> float:
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", "bench-sub", "-t", TOPIC_FILTER, "-C", str(messages)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # subscribed
    started = time.perf_counter()
    pubs = publish_lines(port, messages, publishers)
    sub.wait(600)
    elapsed = time.perf_counter() - started
    for pub in pubs:
        pub.wait(60)
    return elapsed


def _run_paho(port: int, messages: int, publishers: int, read_ahead: bool = False) -> float:
    import paho.mqtt.client as mqtt

    from connectors.mqtt_connection import BufferedClient

    done = threading.Event()
    received = [0]
    client_class = BufferedClient if read_ahead else mqtt.Client
    client = client_class(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=mqtt.MQTTv311, clean_session=False,
                          manual_ack=True)

    def on_message(c, userdata, message):
        c.ack(message.mid, message.qos)
        received[0] += 1
        if received[0] >= messages:
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(TOPIC_FILTER, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(1.0)
    started = time.perf_counter()
    pubs = publish_lines(port, messages, publishers)
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    for pub in pubs:
        pub.wait(60)
    return elapsed


def _run_aiomqtt(port: int, messages: int, publishers: int) -> float:
    import aiomqtt

    async def main() -> float:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-aiomqtt", clean_session=False) as client:
            await client.subscribe(TOPIC_FILTER, qos=1)
            await asyncio.sleep(1.0)
            started = time.perf_counter()
            pubs = publish_lines(port, messages, publishers)
            received = 0
            async for _message in client.messages:
                received += 1
                if received >= messages:
                    break
            elapsed = time.perf_counter() - started
        for pub in pubs:
            pub.wait(60)
        return elapsed

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """Entry point: each subscriber against a fresh broker, one after the other, ``--rounds`` times."""
    parser = argparse.ArgumentParser(prog="bench/mqtt_clients.py", description=__doc__.split("\n\n", 1)[0].replace("\n", " "))
    parser.add_argument("--messages", type=int, default=200_000, metavar="N", help="messages per run (default 200000)")
    parser.add_argument("--publishers", type=int, default=100, metavar="N", help="mosquitto_pub processes (default 100)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N", help="runs per subscriber, alternating (default 2)")
    parser.add_argument("--subscribers", default=",".join(SUBSCRIBERS), metavar="LIST",
                        help=f"which subscribers, in order (default {','.join(SUBSCRIBERS)})")
    args = parser.parse_args(argv)
    runners = {"mosquitto_sub": run_mosquitto_sub, "paho": _run_paho, "paho-read-ahead": functools.partial(_run_paho, read_ahead=True),
               "aiomqtt": _run_aiomqtt}
    names = [name for name in args.subscribers.split(",") if name]
    unknown = [name for name in names if name not in runners]
    if unknown:
        parser.error(f"unknown subscribers {unknown}; choose from {', '.join(SUBSCRIBERS)}")
    print(f"machine: {os.cpu_count()} cores; {args.messages} QoS 1 messages from {args.publishers} mosquitto_pub processes", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotlink-bench-mqtt-") as work:
        for round_ in range(args.rounds):
            for name in names:
                broker, port = start_broker(Path(work))
                try:
                    cpu0 = time.process_time()
                    elapsed = runners[name](port, args.messages, args.publishers)
                    cpu = time.process_time() - cpu0
                finally:
                    broker.terminate()
                    broker.wait(10)
                rows.append((name, round_ + 1, elapsed, cpu))
                own = "" if name == "mosquitto_sub" else f", {cpu / args.messages * 1e6:.1f} µs CPU per message in this process"
                print(f"  {name} round {round_ + 1}: {args.messages / elapsed:,.0f} msgs/s{own}", flush=True)
    print()
    print(f"{'subscriber':<15}{'round':>6}{'seconds':>9}{'msgs/s':>10}")
    for name, round_, elapsed, _ in rows:
        print(f"{name:<15}{round_:>6}{elapsed:9.2f}{args.messages / elapsed:10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
