"""Kafka client benchmark: kafka-python against confluent-kafka (librdkafka) for what the ingest
bridges and the benchmark preload do — produce keyed records of a few hundred bytes with
``acks=all`` and act on each record's confirmation.

For each client, on the embedded Apache Kafka broker, into a fresh topic of 4 partitions:

  confirmed  every record sent with a completion callback, at most ``--in-flight`` records
             waiting for Kafka at once (the bridges' RawProducer bound), done when the last one is
             confirmed.

Reported: msgs/s from the first send to the last confirmation, and this process's CPU per
record (the client's own work: serialising, batching, the callbacks; the broker's CPU is not
counted). Every record is then counted on its topic.

Usage::

    .venv/bin/python bench/kafka_clients.py --data-dir /tmp/kafka-clients [--messages 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from connectors.kafka import end_offsets, ensure_topics
from iotlink.stack import EmbeddedStack
from jobs.config import load_settings

CLIENTS = ("kafka-python", "confluent-kafka")


def _records(messages: int, devices: int) -> list[tuple[bytes, bytes]]:
    """Keyed envelopes of the size the bridges write (~300 bytes)."""
    records = []
    for seq in range(messages):
        device = f"dev-{seq % devices:05d}".encode()
        value = (b'{"v":1,"device_id":"%s","received_at":%d,"source":"mqtt","format":"json","payload":'
                 b'"{\\"device_timestamp\\":%d,\\"data\\":{\\"metrics\\":{\\"tempC\\":%d.5,\\"humidity\\":%d,\\"seq\\":%d}}}"}'
                 % (device, 1_795_000_000_000 + seq, 1_795_000_000_000 + seq, seq % 90, seq % 100, seq))
        records.append((device, value))
    return records


def _produce_kafka_python(bootstrap: str, topic: str, records, in_flight: int) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
    slots = threading.BoundedSemaphore(in_flight)
    confirmed = [0]
    lock = threading.Lock()

    def done(_metadata):
        with lock:
            confirmed[0] += 1
        slots.release()

    def failed(_exc):
        slots.release()

    for key, value in records:
        slots.acquire()
        producer.send(topic, key=key, value=value).add_callback(done).add_errback(failed)
    producer.flush()
    producer.close()
    return confirmed[0]


def _produce_confluent(bootstrap: str, topic: str, records, in_flight: int) -> int:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": False})
    confirmed = [0]
    waiting = [0]

    def on_delivery(error, _message):
        waiting[0] -= 1
        if error is None:
            confirmed[0] += 1

    for key, value in records:
        while waiting[0] >= in_flight:
            producer.poll(0.01)  # delivery callbacks run inside poll, on this thread
        waiting[0] += 1
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    return confirmed[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs both clients one after the other and prints the table."""
    parser = argparse.ArgumentParser(prog="bench/kafka_clients.py", description=__doc__.split("\n\n", 1)[0].replace("\n", " "))
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="data directory of the embedded Kafka broker (a fresh one)")
    parser.add_argument("--messages", type=int, default=200_000, metavar="N", help="records per client (default 200000)")
    parser.add_argument("--devices", type=int, default=1000, metavar="N", help="distinct keys (default 1000)")
    parser.add_argument("--in-flight", type=int, default=1000, metavar="N", help="records waiting for Kafka at once (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, metavar="N", help="runs per client, alternating (default 2)")
    args = parser.parse_args(argv)
    settings = load_settings(None, {"data_dir": Path(args.data_dir).resolve()})
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    try:
        bootstrap = stack.settings_with_endpoints().bootstrap_servers
        records = _records(args.messages, args.devices)
        size = sum(len(v) for _, v in records) / len(records)
        print(f"machine: {os.cpu_count()} cores; {args.messages} records of {size:.0f} bytes, {args.devices} keys, acks=all, "
              f"at most {args.in_flight} waiting", flush=True)
        runners = {"kafka-python": _produce_kafka_python, "confluent-kafka": _produce_confluent}
        rows = []
        for round_ in range(args.rounds):
            for client in CLIENTS:
                topic = f"bench.kafka-clients.{client}.{round_}.{int(time.time())}"
                ensure_topics(bootstrap, [topic], partitions={topic: 4})
                cpu0, t0 = time.process_time(), time.monotonic()
                confirmed = runners[client](bootstrap, topic, records, args.in_flight)
                seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
                on_topic = sum(end_offsets(bootstrap, topic).values())
                rows.append((client, round_ + 1, seconds, cpu, confirmed, on_topic))
                print(f"  {client} round {round_ + 1}: {args.messages / seconds:,.0f} msgs/s, "
                      f"{cpu / args.messages * 1e6:.1f} µs CPU per record", flush=True)
        print()
        print(f"{'client':<17}{'round':>6}{'seconds':>9}{'msgs/s':>10}{'CPU µs/record':>15}{'confirmed':>11}{'on topic':>10}")
        for client, round_, seconds, cpu, confirmed, on_topic in rows:
            print(f"{client:<17}{round_:>6}{seconds:9.2f}{args.messages / seconds:10,.0f}{cpu / args.messages * 1e6:15.1f}"
                  f"{confirmed:11d}{on_topic:10d}")
        bad = [row for row in rows if row[4] != args.messages or row[5] != args.messages]
        if bad:
            print(f"error: not every record confirmed and on its topic in {len(bad)} runs")
        return 1 if bad else 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
