"""``iotlink bridge mqtt`` against real brokers: a Kafka-protocol broker of the embedded stack and
mosquitto processes started here (own ports and configs, so they can be restarted, stalled and
killed without touching the shared stack).

Every test publishes at QoS 1 with paho from several devices and counts what reaches the raw
and dead-letter topics: nothing the broker accepted may be missing; duplicates may appear only
after an interruption, at most ``max_in_flight`` per interruption (the documented guarantee).
"""

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from connectors.bridge_mqtt import DEFAULT_TOPIC_FILTER, AwsIotOptions, BridgeOptions, BrokerAddress, start_bridge
from connectors.kafka import ensure_topics
from iotlink.stack import free_port, wait_for_port
from operators.envelope import parse_envelope

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PUB = shutil.which("mosquitto_pub")
OPENSSL = shutil.which("openssl")
IOTLINK = str(Path(sys.executable).parent / "iotlink")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (scripts/bootstrap.sh installs it as root)"),
]

# hub, its child, and standalone devices: the three kinds of the topic layout
DEVICES = [("hub-1", "hub-1"), ("hub-1", "child-1"), ("hub-1", "child-2"), ("nohub", "solo-1"), ("nohub", "solo-2"), ("hub-2", "hub-2")]


def device_topic(hub: str, device: str, fmt: str = "json") -> str:
    return f"iotlink/stg/{hub}/{device}/periodic/pub/telemetry/{fmt}"


def make_messages(n: int, tag: str) -> list[tuple[str, str, bytes]]:
    """(device, topic, payload) with unique payloads; every fifth one binary (not UTF-8)."""
    messages = []
    for seq in range(n):
        hub, device = DEVICES[seq % len(DEVICES)]
        if seq % 5 == 4:
            payload = b"\x00\xff\xfe" + f"{tag}:{seq}".encode() + b"\x80"
            messages.append((device, device_topic(hub, device, "bin"), payload))
        else:
            payload = orjson.dumps({"device_timestamp": 1_795_000_000_000 + seq, "data": {"metrics": {"seq": seq}}, "tag": tag})
            messages.append((device, device_topic(hub, device), payload))
    return messages


# --- brokers -------------------------------------------------------------------------------------


@pytest.fixture
def topics(kafka, request):
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    raw, dlq = f"it-mqtt.{name}.raw", f"it-mqtt.{name}.dlq"
    ensure_topics(kafka.endpoints["kafka"], [raw, dlq], partitions={raw: 4}, large=(raw, dlq))
    return raw, dlq


class Mosquitto:
    """A mosquitto process with persistence on, restartable on the same port."""

    def __init__(self, directory: Path, extra_conf: str = ""):
        self.dir = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            # As root, mosquitto would switch to the mosquitto user, which cannot write the pytest tmp dir.
            "user root\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            # The bridge's offline queue must hold a whole test run (the default keeps 1000).
            "max_queued_messages 100000\n"
            + extra_conf
        )
        self.log = (directory / "mosquitto.log").open("ab")
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 15, self.proc, "mosquitto")

    def stop(self):
        """Graceful stop: mosquitto saves sessions and queued messages to its persistence file."""
        self.proc.terminate()
        self.proc.wait(15)
        self.proc = None

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.close()


# --- clients -------------------------------------------------------------------------------------


class Publisher:
    """A QoS 1 publisher that knows which payloads the broker acknowledged (PUBACK received)."""

    def __init__(self, port: int, client_id: str):
        self._sent: list[tuple[mqtt.MQTTMessageInfo, bytes]] = []
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(50)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._connected.wait(10), "the publisher could not connect"

    @property
    def acked(self) -> set[bytes]:
        # paho keeps unacknowledged QoS 1 messages, also those published while disconnected (rc
        # "not connected", on which is_published() raises), and resends them after a reconnect;
        # the flag is set when the PUBACK arrives.
        return {payload for info, payload in list(self._sent) if info._published}

    def publish(self, topic: str, payload: bytes):
        self._sent.append((self.client.publish(topic, payload, qos=1), payload))

    def publish_all(self, messages, rate_per_s: float | None = None):
        started = time.monotonic()
        for index, (_, topic, payload) in enumerate(messages):
            if rate_per_s:
                pause = started + index / rate_per_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self.publish(topic, payload)

    def wait_acked(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.acked) < count:
            time.sleep(0.1)
        return len(self.acked)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def read_records(bootstrap: str, topic: str, until, timeout_s: float = 60.0, idle_s: float = 1.5) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record of ``topic``: polls until ``until(records)`` holds, then until
    nothing new came for ``idle_s`` (so late duplicates are counted too)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        satisfied_at = None
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for recs in batch.values():
                records.extend((r.key, r.value) for r in recs)
                last_new = time.monotonic()
            if satisfied_at is None and until(records):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - max(satisfied_at, last_new) >= idle_s:
                break
        return records
    finally:
        consumer.close()


def envelopes(records):
    """(key, envelope) per raw record."""
    return [(key, parse_envelope(value)) for key, value in records]


def payload_counts(records) -> collections.Counter:
    return collections.Counter(parse_envelope(value).payload for _, value in records)


def bridge_options(kafka, topics, port, **changes) -> BridgeOptions:
    raw, dlq = topics
    values = {
        "bootstrap_servers": kafka.endpoints["kafka"], "raw_topic": raw, "dlq_topic": dlq,
        "broker": BrokerAddress("127.0.0.1", port, False), "client_id": f"it-bridge-{raw}", "max_in_flight": 100,
    }
    return BridgeOptions(**{**values, **changes})


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.05)


def assert_nothing_redelivered(kafka, topics, port, client_id, already: int):
    """A bridge started again with the same client id gets only a new marker message: the broker
    redelivers unacknowledged messages first, so any message left without PUBACK would show."""
    options = bridge_options(kafka, topics, port, client_id=client_id)
    running = start_bridge(options)
    publisher = Publisher(port, f"marker-{client_id}")
    try:
        assert running.transport.subscribed.wait(20), "the second bridge did not subscribe"
        publisher.publish(device_topic("nohub", "marker"), b"marker")
        records = read_records(options.bootstrap_servers, options.raw_topic, lambda rs: any(v.endswith(b'"marker"}') for _, v in rs), 30)
    finally:
        publisher.close()
        running.stop()
    assert len(records) == already + 1, f"{len(records) - already - 1} messages were delivered again after a clean stop"
    assert running.counters["received"] == 1


# --- tests ---------------------------------------------------------------------------------------


def test_every_message_reaches_raw_byte_exact_keyed_by_device(kafka, topics, mosquitto):
    messages = make_messages(600, "a")
    options = bridge_options(kafka, topics, mosquitto.port)
    running = start_bridge(options)
    publisher = Publisher(mosquitto.port, "it-pub-a")
    try:
        assert running.transport.subscribed.wait(20), "the bridge did not subscribe"
        publisher.publish_all(messages)
        assert publisher.wait_acked(len(messages), 30) == len(messages)
        records = read_records(options.bootstrap_servers, options.raw_topic, lambda rs: len(rs) >= len(messages))
        wait_for(lambda: running.bridge.in_flight == 0, 20, "every message to be acknowledged")
    finally:
        publisher.close()
        assert running.stop() is True
    assert len(records) == len(messages)
    expected = {payload: (device, topic) for device, topic, payload in messages}
    seen = set()
    for key, envelope in envelopes(records):
        device, topic = expected[envelope.payload]  # byte-exact: the payload itself is the lookup key
        assert key == device.encode() and envelope.device_id == device
        assert envelope.mqtt_topic == topic and envelope.source == "mqtt"
        assert envelope.hub_id == topic.split("/")[2]
        seen.add(envelope.payload)
    assert seen == set(expected)
    counters = running.counters
    assert (counters["received"], counters["produced"], counters["rejected"], counters["failed"]) == (600, 600, 0, 0)
    assert running.bridge.peak_in_flight <= options.max_in_flight
    assert_nothing_redelivered(kafka, topics, mosquitto.port, options.client_id, already=len(messages))


def test_bridges_sharing_a_subscription_split_the_messages_and_lose_none(kafka, topics, mosquitto):
    # Two bridge instances on one MQTT 5 shared subscription: the broker hands each message to one
    # of them, so together they carry every message once and each carries a share.
    messages = make_messages(600, "shared")
    shared = ("$share/iotlink/iotlink/+/+/+/+/pub/+/+",)
    first = start_bridge(bridge_options(kafka, topics, mosquitto.port, topic_filters=shared, client_id=f"it-share-1-{topics[0]}"))
    second = start_bridge(bridge_options(kafka, topics, mosquitto.port, topic_filters=shared, client_id=f"it-share-2-{topics[0]}"))
    publisher = Publisher(mosquitto.port, "it-pub-shared")
    try:
        for running in (first, second):
            assert running.transport.subscribed.wait(20), "a bridge did not subscribe"
        publisher.publish_all(messages)
        assert publisher.wait_acked(len(messages), 30) == len(messages)
        records = read_records(kafka.endpoints["kafka"], topics[0], lambda rs: len(rs) >= len(messages))
    finally:
        publisher.close()
        assert first.stop() is True and second.stop() is True
    assert sorted(envelope.payload for _, envelope in envelopes(records)) == sorted(payload for _, _, payload in messages)
    shares = [first.counters["produced"], second.counters["produced"]]
    assert sum(shares) == len(messages) and min(shares) > 0, shares


def test_a_broker_restart_while_publishing_loses_nothing_it_acknowledged(kafka, topics, mosquitto):
    messages = make_messages(800, "b")
    options = bridge_options(kafka, topics, mosquitto.port, max_in_flight=50)
    running = start_bridge(options)
    publisher = Publisher(mosquitto.port, "it-pub-b")
    try:
        assert running.transport.subscribed.wait(20), "the bridge did not subscribe"
        sender = threading.Thread(target=publisher.publish_all, args=(messages, 250.0))
        sender.start()
        wait_for(lambda: running.counters["produced"] >= 150, 30, "the first messages to reach Kafka")
        mosquitto.stop()
        time.sleep(0.5)  # publishing continues into the outage (paho queues); not an assertion
        mosquitto.start()
        sender.join(30)
        acked = publisher.wait_acked(len(messages), 60)
        wait_for(lambda: running.transport.reconnects >= 1, 30, "the bridge to reconnect")
        records = read_records(
            options.bootstrap_servers, options.raw_topic, lambda rs: publisher.acked <= set(payload_counts(rs)), 90, idle_s=3.0
        )
    finally:
        publisher.close()
        running.stop()
    counts = payload_counts(records)
    missing = publisher.acked - set(counts)
    assert not missing, f"{len(missing)} of {acked} acknowledged messages never reached Kafka"
    assert acked >= 700, f"only {acked} of 800 publications were acknowledged by the broker"
    duplicates = sum(n - 1 for n in counts.values())
    reconnects = running.transport.reconnects
    assert 1 <= reconnects <= 3
    assert duplicates <= reconnects * options.max_in_flight, f"{duplicates} duplicates after {reconnects} reconnects"
    assert set(counts) <= {payload for _, _, payload in messages}
    print(f"broker restart: {acked} acknowledged, {len(counts)} distinct on raw, {duplicates} duplicates, {reconnects} reconnects")


def test_malformed_topics_and_oversized_payloads_go_to_the_dead_letter_topic(kafka, topics, mosquitto):
    big = 1024 * 1024
    bad = [
        ("iotlink/qa/nohub/dev-x/periodic/pub/telemetry/json", b'{"env":"qa"}', "invalid_topic", "env 'qa'", None),
        ("iotlink/prd/nohub/dev-x/weekly/pub/telemetry/json", b'{"type":"weekly"}', "invalid_topic", "type 'weekly'", None),
        ("iotlink/prd/nohub/dev-x/periodic/pub/telemetry/xml", b"<xml/>", "invalid_topic", "format 'xml'", None),
        ("legacy/dev-x/data", b"\x01\x02legacy\xff", "invalid_topic", "has 3 levels, expected 8", None),
        (device_topic("nohub", "dev-big", "bin"), b"\xab" * (big + 1), "payload_too_large", f"{big + 1} bytes", b"dev-big"),
    ]
    good = [("dev-ok", device_topic("nohub", "dev-ok", "bin"), b"\xcd" * big), ("dev-ok", device_topic("nohub", "dev-ok"), b'{"ok":1}')]
    options = bridge_options(kafka, topics, mosquitto.port, topic_filters=(DEFAULT_TOPIC_FILTER, "legacy/#"))
    running = start_bridge(options)
    publisher = Publisher(mosquitto.port, "it-pub-c")
    try:
        assert running.transport.subscribed.wait(20), "the bridge did not subscribe"
        for topic, payload, *_ in bad[1:]:
            publisher.publish(topic, payload)
        if MOSQUITTO_PUB:  # the README's command line; else paho publishes it
            subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1", "-t", bad[0][0], "-m", bad[0][1].decode()],
                           check=True, timeout=30)
        else:
            publisher.publish(bad[0][0], bad[0][1])
        for _, topic, payload in good:
            publisher.publish(topic, payload)
        dead = read_records(options.bootstrap_servers, options.dlq_topic, lambda rs: len(rs) >= len(bad), 60)
        raw = read_records(options.bootstrap_servers, options.raw_topic, lambda rs: len(rs) >= len(good), 60)
        wait_for(lambda: running.bridge.in_flight == 0, 20, "every message to be acknowledged")
    finally:
        publisher.close()
        running.stop()
    assert len(dead) == len(bad)
    letters = {orjson.loads(value)["mqtt_topic"]: (key, orjson.loads(value)) for key, value in dead}
    for topic, payload, code, fragment, key in bad:
        got_key, letter = letters[topic]
        assert (letter["stage"], letter["reason_code"], letter["source"]) == ("ingest", code, "mqtt")
        assert fragment in letter["reason"]
        assert got_key == key
        text = letter["payload"]
        original = text.encode() if letter["payload_encoding"] == "utf8" else __import__("base64").b64decode(text)
        assert original == payload
    assert sorted((key, env.payload) for key, env in envelopes(raw)) == sorted((d.encode(), p) for d, _, p in good)
    counters = running.counters
    assert (counters["received"], counters["produced"], counters["rejected"]) == (7, 2, 5)


def test_a_stalled_kafka_holds_the_bridge_at_max_in_flight_and_loses_nothing(kafka, topics, mosquitto):
    messages = make_messages(400, "d")
    options = bridge_options(kafka, topics, mosquitto.port, max_in_flight=20)
    running = start_bridge(options)
    publisher = Publisher(mosquitto.port, "it-pub-d")
    kafka_pid = kafka.pids()["kafka"]
    stalled = False
    try:
        assert running.transport.subscribed.wait(20), "the bridge did not subscribe"
        sender = threading.Thread(target=publisher.publish_all, args=(messages, 200.0))
        sender.start()
        wait_for(lambda: running.counters["produced"] >= 60, 30, "the first messages to reach Kafka")
        os.kill(kafka_pid, signal.SIGSTOP)  # Kafka stops answering: produce requests hang
        stalled = True
        wait_for(lambda: running.bridge.in_flight >= options.max_in_flight, 20, "the bridge to fill its in-flight window")
        produced_at_full = running.counters["produced"]
        # While Kafka is stalled the broker keeps the rest: sampled for a while, the bridge never holds more.
        samples = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            samples.append(running.bridge.in_flight)
            time.sleep(0.02)
        produced_while_stalled = running.counters["produced"] - produced_at_full
        os.kill(kafka_pid, signal.SIGCONT)
        stalled = False
        sender.join(30)
        assert publisher.wait_acked(len(messages), 60) == len(messages)
        records = read_records(options.bootstrap_servers, options.raw_topic, lambda rs: len(set(payload_counts(rs))) >= len(messages), 90)
        wait_for(lambda: running.bridge.in_flight == 0, 30, "every message to be acknowledged")
    finally:
        if stalled:
            os.kill(kafka_pid, signal.SIGCONT)
        publisher.close()
        running.stop()
    assert max(samples) == options.max_in_flight
    assert running.bridge.peak_in_flight == options.max_in_flight
    assert produced_while_stalled == 0
    counts = payload_counts(records)
    assert set(counts) == {payload for _, _, payload in messages}
    assert sum(n - 1 for n in counts.values()) == 0  # no connection was lost: no duplicates
    assert running.counters["received"] == len(messages)


def bridge_process(kafka, topics, port, client_id, log_path: Path, *extra) -> subprocess.Popen:
    raw, dlq = topics
    config = log_path.with_suffix(".yaml")
    config.write_text(f"topics:\n  raw: {raw}\n  dlq: {dlq}\n")
    command = [
        IOTLINK, "bridge", "mqtt", "--config", str(config), "--mqtt-url", f"mqtt://127.0.0.1:{port}",
        "--bootstrap-servers", kafka.endpoints["kafka"], "--client-id", client_id, "--max-in-flight", "50", *extra,
    ]
    return subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"the bridge exited with {proc.returncode}:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the bridge output:\n{path.read_text()[-3000:]}"
        time.sleep(0.05)


def test_a_killed_bridge_process_loses_nothing_after_restart(kafka, topics, mosquitto, tmp_path):
    messages = make_messages(1000, "e")
    client_id = "it-bridge-crash"
    first_log, second_log = tmp_path / "bridge-1.log", tmp_path / "bridge-2.log"
    bridge = bridge_process(kafka, topics, mosquitto.port, client_id, first_log)
    publisher = Publisher(mosquitto.port, "it-pub-e")
    second = None
    try:
        wait_for_log(first_log, "subscribed to iotlink/", bridge, 60)
        sender = threading.Thread(target=publisher.publish_all, args=(messages, 250.0))
        sender.start()
        wait_for(lambda: len(publisher.acked) >= 300, 30, "300 messages to be published")
        bridge.send_signal(signal.SIGKILL)  # no chance to flush, ack or disconnect
        assert bridge.wait(10) == -signal.SIGKILL
        acked_at_kill = len(publisher.acked)
        second = bridge_process(kafka, topics, mosquitto.port, client_id, second_log)
        wait_for_log(second_log, "session resumed", second, 60)
        sender.join(30)
        assert publisher.wait_acked(len(messages), 60) == len(messages)
        records = read_records(kafka.endpoints["kafka"], topics[0], lambda rs: len(set(payload_counts(rs))) >= len(messages), 90, idle_s=2.5)
        second.send_signal(signal.SIGTERM)  # clean stop: drain, ack, exit 0
        assert second.wait(60) == 0
    finally:
        publisher.close()
        for proc in (bridge, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert acked_at_kill < len(messages), "the bridge was killed after the stream ended"
    counts = payload_counts(records)
    assert set(counts) == {payload for _, _, payload in messages}
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 50, f"{duplicates} duplicates after one crash with --max-in-flight 50"
    output = second_log.read_text()
    assert "mqtt bridge: received" in output and "mqtt bridge: stopped: received" in output
    print(f"bridge crash: {len(counts)} distinct on raw, {duplicates} duplicates")
    assert_nothing_redelivered(kafka, topics, mosquitto.port, client_id, already=len(records))


# --- TLS and AWS IoT Core -----------------------------------------------------------------------


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_mosquitto(tmp_path):
    """mosquitto with a plain listener (devices) and a listener that requires a client certificate,
    as AWS IoT Core does."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed; it makes the test certificates")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=iotlink test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path)
    for name, subject, extensions in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=iotlink-bridge", "extendedKeyUsage=clientAuth\n"),
    ):
        (tmp_path / f"{name}.ext").write_text(extensions)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp_path)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=tmp_path)
    tls_port = free_port()
    broker = Mosquitto(tmp_path, (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    ))
    broker.start()
    wait_for_port(tls_port, 15, broker.proc, "mosquitto TLS")
    broker.tls_port = tls_port
    yield broker
    broker.close()


@pytest.mark.parametrize("backend", ["aws-iot", "paho-tls"])
def test_mutual_tls_backends_deliver_everything(kafka, topics, tls_mosquitto, backend):
    directory = tls_mosquitto.dir
    if backend == "aws-iot":
        changes = {"broker": None, "aws": AwsIotOptions("localhost", directory / "client.crt", directory / "client.key", directory / "ca.crt",
                                                         tls_mosquitto.tls_port)}
    else:
        changes = {"broker": BrokerAddress("localhost", tls_mosquitto.tls_port, True), "tls_ca": directory / "ca.crt",
                   "tls_cert": directory / "client.crt", "tls_key": directory / "client.key"}
    options = bridge_options(kafka, topics, tls_mosquitto.port, client_id=f"it-bridge-{backend}", max_in_flight=30, **changes)
    messages = make_messages(300, backend)
    running = start_bridge(options)
    publisher = Publisher(tls_mosquitto.port, f"it-pub-{backend}")
    try:
        assert running.transport.subscribed.wait(30), f"the {backend} bridge did not subscribe over mutual TLS"
        publisher.publish_all(messages)
        assert publisher.wait_acked(len(messages), 30) == len(messages)
        records = read_records(options.bootstrap_servers, options.raw_topic, lambda rs: len(rs) >= len(messages))
        wait_for(lambda: running.bridge.in_flight == 0, 20, "every message to be acknowledged")
    finally:
        publisher.close()
        running.stop()
    assert sorted((key, env.payload) for key, env in envelopes(records)) == sorted((d.encode(), p) for d, _, p in messages)
    assert running.bridge.peak_in_flight <= options.max_in_flight
