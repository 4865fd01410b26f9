"""Ingest-bridge benchmark: ``python bench/bridges.py [--messages N] [--devices M] [--bridge mqtt|http|all]``.

Starts the embedded Kafka-protocol broker (and a mosquitto for the MQTT run), runs a bridge in this process and
drives it with real clients:

- mqtt: one paho publisher at QoS 1 (up to ``--window`` unacknowledged publishes) -> mosquitto
  -> ``iotlink bridge mqtt`` -> Kafka; done when the bridge has produced every message.
  Latency is publish -> the bridge's send to Kafka (the record's timestamp minus the publish
  time carried in the payload).
- http: ``--clients`` threads posting one reading each per request over keep-alive
  connections. Latency is request -> 202 (again after Kafka confirmed).

Throughput counts from the first send to the last acknowledgement; every message is then read
back from the raw topic and counted. Prints msgs/s and latency p50/p95/p99.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.kafka import ensure_topics, read_topic  # noqa: E402
from iotlink.stack import EmbeddedStack, free_port, wait_for_port  # noqa: E402
from jobs.config import Settings, StackPorts  # noqa: E402


def percentiles(samples_ms: list[float]) -> str:
    """p50 / p95 / p99 of latencies in milliseconds."""
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return f"p50 {cuts[49]:.1f} ms, p95 {cuts[94]:.1f} ms, p99 {cuts[98]:.1f} ms"


def payload(seq: int, ts: int | None = None) -> bytes:
    ts = 1_795_000_000_000 + seq if ts is None else ts
    return b'{"device_timestamp":%d,"data":{"metrics":{"tempC":%d.5,"seq":%d}}}' % (ts, seq % 90, seq)


def bench_mqtt(stack, topic: str, messages: int, devices: int, window: int) -> tuple[float, list[float]]:
    """Publishes ``messages`` at QoS 1 and waits until the bridge has produced all of them.

    The publisher's PUBACK comes from the broker, not from the bridge, so latency is taken from
    the records themselves: each payload carries its publish time (epoch ms) and the record's
    Kafka timestamp is the bridge's send time.
    """
    import paho.mqtt.client as mqtt

    from connectors.bridge_mqtt import BridgeOptions, parse_broker_url, start_bridge

    settings = stack.settings_with_endpoints()
    # A mosquitto of its own with room to queue the whole run for the bridge's session (the
    # default max_queued_messages of 1000 drops QoS 1 messages of a session that falls behind).
    mqtt_port = free_port()
    conf = stack.data_dir / "bench-mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)])
    wait_for_port(mqtt_port, 10, broker, "mosquitto")
    mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
    options = BridgeOptions(bootstrap_servers=settings.bootstrap_servers, raw_topic=topic, dlq_topic=topic + ".dlq",
                            broker=parse_broker_url(mqtt_url), client_id="bench-bridge", max_in_flight=1000)
    running = start_bridge(options)
    slots = threading.Semaphore(window)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.on_publish = lambda *_: slots.release()
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    time.sleep(1.0)  # the bridge's subscription is in place
    started = time.perf_counter()
    for seq in range(messages):
        slots.acquire()
        device = f"bench-{seq % devices:05d}"
        client.publish(f"iotlink/prd/nohub/{device}/periodic/pub/telemetry/json", payload(seq, int(time.time() * 1000)), qos=1)
    deadline = time.monotonic() + 300
    while running.counters["produced"] < messages:
        if time.monotonic() > deadline:
            raise SystemExit(f"mqtt: the bridge produced {running.counters['produced']} of {messages} in 300 s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    running.stop()
    broker.terminate()
    broker.wait(10)
    records = records_with_times(settings.bootstrap_servers, topic)
    latencies = [float(ts - orjson.loads(orjson.loads(value)["payload"])["device_timestamp"]) for ts, value in records]
    return elapsed, latencies


def records_with_times(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """(Kafka timestamp, value) of every record of the topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=50_000)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out, last = [], time.monotonic()
    while time.monotonic() - last < 5:
        for records in consumer.poll(timeout_ms=1000).values():
            out.extend((r.timestamp, r.value) for r in records)
            last = time.monotonic()
    consumer.close()
    return out


def bench_http(stack, topic: str, messages: int, devices: int, clients: int) -> tuple[float, list[float]]:
    from connectors.bridge_http import HttpIngest, HttpOptions

    settings = stack.settings_with_endpoints()
    port = free_port()
    ingest = HttpIngest(HttpOptions(bootstrap_servers=settings.bootstrap_servers, raw_topic=topic, host="127.0.0.1", port=port,
                                    tokens=frozenset({"bench"})))
    ingest.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the producer connects in the background
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        ready = conn.getresponse().status == 200
        conn.close()
        if ready:
            break
        time.sleep(0.5)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    retried: list[int] = []

    def worker(index: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        own = []
        for seq in range(index, messages, clients):
            body = payload(seq)
            at = time.perf_counter()
            for _attempt in range(5):  # 503 means "not stored, retry" (Retry-After)
                conn.request("POST", f"/v1/telemetry/bench-{seq % devices:05d}", body=body,
                             headers={"Content-Type": "application/json", "Authorization": "Bearer bench"})
                response = conn.getresponse()
                response.read()
                if response.status != 503:
                    break
                retried.append(seq)
                time.sleep(0.5)
            if response.status != 202:
                errors.append(f"{response.status}")
            own.append((time.perf_counter() - at) * 1000)
        conn.close()
        with lock:
            latencies.extend(own)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ingest.stop()
    if errors:
        raise SystemExit(f"http: {len(errors)} requests not accepted (e.g. {errors[:3]})")
    if retried:
        print(f"http: {len(retried)} requests answered 503 and retried", flush=True)
    return elapsed, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridge", choices=("mqtt", "http", "all"), default="all", help="which bridge to measure (default all)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per bridge (default 20000)")
    parser.add_argument("--devices", type=int, default=500, help="distinct device ids (default 500)")
    parser.add_argument("--window", type=int, default=500, help="MQTT: unacknowledged publishes in flight (default 500)")
    parser.add_argument("--clients", type=int, default=8, help="HTTP: concurrent keep-alive clients (default 8)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iotlink-bench-bridges-") as data_dir:
        settings = Settings(data_dir=Path(data_dir), ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()))
        stack = EmbeddedStack(settings, ("kafka",))
        stack.start()
        try:
            bootstrap = stack.endpoints["kafka"]
            for name in (("mqtt", "http") if args.bridge == "all" else (args.bridge,)):
                topic = f"bench.{name}.raw"
                ensure_topics(bootstrap, [topic, topic + ".dlq"], partitions={topic: 4})
                if name == "mqtt":
                    elapsed, latencies = bench_mqtt(stack, topic, args.messages, args.devices, args.window)
                    what = f"QoS 1, publisher window {args.window}; latency publish -> bridge send"
                else:
                    elapsed, latencies = bench_http(stack, topic, args.messages, args.devices, args.clients)
                    what = f"{args.clients} keep-alive clients; latency request -> 202 after Kafka"
                stored = len(read_topic(bootstrap, topic))
                print(f"{name}: {args.messages} messages from {args.devices} devices in {elapsed:.1f} s = "
                      f"{args.messages / elapsed:,.0f} msgs/s ({what}); latency {percentiles(latencies)}; "
                      f"in iotlink.raw: {stored}", flush=True)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
