import argparse
import json
import os
import stat
import threading
import time
import urllib.request

import orjson
import psycopg
import pytest
from kafka.admin import KafkaAdminClient

from connectors import bridge_mqtt
from connectors.iceberg import open_catalog
from connectors.kafka import ensure_topics, read_topic
from connectors.mongo import open_database
from connectors.mqtt_connection import broker_url, paho_client, parse_broker_url, refusal
from connectors.shadow_link import MqttShadowLink
from iotlink.shadow_service import ShadowService
from iotlink.simulator import FleetSimulator, ShadowFollower, build_fleet, mqtt_publisher
from iotlink.stack import STACK_FILE, EmbeddedStack, StackError, free_port, port_is_free
from jobs.config import Settings, StackPorts
from operators.envelope import parse_envelope

pytestmark = pytest.mark.integration


def test_every_endpoint_answers(stack, settings, mongo_url):
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        assert set(settings.topics.all()) <= set(admin.list_topics())
    finally:
        admin.close()
    with psycopg.connect(settings.postgres_url) as conn:
        assert conn.execute("select current_database()").fetchone() == ("iotlink",)
    assert ("iotlink",) in open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse).list_namespaces()
    assert open_database(mongo_url).command("ping")["ok"] == 1
    (stack.firmware_dir / "probe.bin").write_bytes(b"\x00image")
    with urllib.request.urlopen(f"{stack.endpoints['firmware']}/probe.bin", timeout=10) as response:
        assert response.read() == b"\x00image"

    received = threading.Event()
    # The broker refuses anonymous clients: the login comes with the URL the stack fills in.
    sub, address = paho_client(settings.mqtt_url, "it-endpoints-sub")
    sub.on_message = lambda c, u, m: received.set() if m.payload == b"\x01\x02" else None
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("iotlink/+/+/+/+/pub/+/+", qos=1)
    sub.connect(address.host, address.port)
    sub.loop_start()
    pub, _ = paho_client(settings.mqtt_url, "it-endpoints-pub")
    pub.connect(address.host, address.port)
    pub.loop_start()
    try:
        for _ in range(20):
            pub.publish("iotlink/dev/nohub/d1/periodic/pub/telemetry/bin", b"\x01\x02", qos=1).wait_for_publish(5)
            if received.wait(0.5):
                break
        assert received.is_set()
    finally:
        for client in (pub, sub):
            client.loop_stop()
            client.disconnect()


def test_stop_leaves_nothing_running(tmp_path):
    settings = Settings(data_dir=tmp_path, ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()))
    stack = EmbeddedStack(settings)
    stack.start()
    pids = stack.pids()
    assert set(pids) == {"kafka", "postgres", "mqtt", "mongo", "firmware"}
    firmware_port = int(stack.endpoints["firmware"].rsplit(":", 1)[1])
    # A command run alongside (iotlink sql --embedded during a demo) uses the running services
    # and leaves them running; a second owner is refused with the reason.
    # (The Iceberg catalog lives in the stack's PostgreSQL: asking for Iceberg brings it along.)
    shared = EmbeddedStack(settings, ("kafka", "iceberg", "mongo"), share=True)
    wanted = ("kafka", "postgres", "iceberg_catalog", "iceberg_warehouse", "mongo")
    assert shared.start() == {k: v for k, v in stack.endpoints.items() if k in wanted}
    assert shared.shared_from == os.getpid() and shared.pids() == {}
    assert shared.origin == f"using the embedded stack of process {os.getpid()}" and stack.origin == "embedded stack started"
    shared.stop()
    assert stack.pids() == pids and not port_is_free(settings.ports.mongo)
    with pytest.raises(StackError, match=f"an embedded stack already runs on {tmp_path} \\(pid {os.getpid()}"):
        EmbeddedStack(settings, ("kafka",)).start()
    stack.stop()
    assert not (tmp_path / "stack.json").exists()
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                assert stat.read().split()[2] == "Z", f"{name} (pid {pid}) still running"
        except ProcessLookupError:
            pass
    for port in (settings.ports.kafka, settings.ports.postgres, settings.ports.mqtt, settings.ports.mongo, firmware_port):
        assert port_is_free(port)


def test_port_in_use_is_a_clear_error(tmp_path, settings):
    busy = Settings(data_dir=tmp_path, ports=StackPorts(kafka=settings.ports.kafka))
    with pytest.raises(StackError, match=f"port {settings.ports.kafka} .* already in use"):
        EmbeddedStack(busy, ("kafka",)).start()


def test_read_committed_sees_the_committed_transaction_only(settings):
    """A transactional producer aborts one transaction and commits another: a read_committed
    reader gets the committed records only, and the topic's readable end is found at once."""
    import uuid

    from kafka import KafkaProducer

    from connectors.kafka import end_offsets, ensure_topics, read_topic

    topic = f"transactions-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.bootstrap_servers, [topic])
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, transactional_id=f"{topic}-producer")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, value=b"aborted-%d" % i)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        for i in range(3):
            producer.send(topic, value=b"committed-%d" % i)
        producer.commit_transaction()
        # An open transaction after them: neither read nor waited for by read_committed readers.
        producer.begin_transaction()
        producer.send(topic, value=b"open").get(10)
        producer.flush()
        assert read_topic(settings.bootstrap_servers, topic, timeout_s=20) == [b"committed-0", b"committed-1", b"committed-2"]
        everything = read_topic(settings.bootstrap_servers, topic, read_committed=False, timeout_s=20)
        assert everything == [*(b"aborted-%d" % i for i in range(5)), b"committed-0", b"committed-1", b"committed-2", b"open"]
        # Log end: 5 aborted + marker + 3 committed + marker + 1 open = 11; stable end before the open one.
        assert end_offsets(settings.bootstrap_servers, topic) == {0: 11}
        assert end_offsets(settings.bootstrap_servers, topic, read_committed=True) == {0: 10}
        producer.abort_transaction()
    finally:
        producer.close()


def test_a_restarted_stack_keeps_its_topics_and_records(tmp_path):
    """The broker's log lives in the data directory: topics, records and committed group offsets
    survive a stop and a start (the same ports, chosen again from the remembered controller port)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from connectors.kafka import read_topic

    settings = Settings(data_dir=tmp_path, ports=StackPorts(kafka=free_port()))
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    try:
        bootstrap = stack.endpoints["kafka"]
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(100):
            producer.send(settings.topics.telemetry, value=b"%d" % i)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="keeps-offsets", enable_auto_commit=False)
        consumer.commit({TopicPartition(settings.topics.telemetry, 0): OffsetAndMetadata(42, "", -1)})
        consumer.close()
        controller = (tmp_path / "kafka" / "controller.port").read_text().strip()
    finally:
        stack.stop()
    assert port_is_free(settings.ports.kafka)
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    try:
        assert (tmp_path / "kafka" / "controller.port").read_text().strip() == controller
        assert read_topic(stack.endpoints["kafka"], settings.topics.telemetry) == [b"%d" % i for i in range(100)]
        consumer = KafkaConsumer(bootstrap_servers=stack.endpoints["kafka"], group_id="keeps-offsets", enable_auto_commit=False)
        assert consumer.committed(TopicPartition(settings.topics.telemetry, 0)) == 42
        consumer.close()
    finally:
        stack.stop()


def test_the_shared_postgres_survives_another_pytest_session(settings):
    """Another pytest run on the machine (unit tests beside the suite) makes pytest's temporary
    root private again; the shared stack's PostgreSQL, an unprivileged user's server, must not
    lose its data directory to that."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    other = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/jobs/test_config.py"],
                           cwd=root, capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stdout[-2000:]
    for _ in range(3):  # a checkpoint makes the server open its control file by its full path
        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")


def connack(url: str, client_id: str) -> str | None:
    """How the broker answers a connection from ``url``'s login: None when accepted, else why it refused."""
    answered, answers = threading.Event(), []
    client, address = paho_client(url, client_id)
    client.on_connect = lambda c, u, f, rc, p: (answers.append(refusal(rc)), answered.set())
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK for {client_id}"
        return answers[0]
    finally:
        client.loop_stop()
        client.disconnect()


def test_the_embedded_broker_refuses_anonymous_clients_and_wrong_passwords(stack, settings):
    login = parse_broker_url(settings.mqtt_url)
    assert login.username == "iotlink" and len(login.password) >= 32
    port = settings.ports.mqtt
    assert connack(f"mqtt://127.0.0.1:{port}", "it-anonymous") is not None
    assert connack(broker_url("127.0.0.1", port, "iotlink", "not-the-password"), "it-wrong-password") is not None
    assert connack(broker_url("127.0.0.1", port, "someone", login.password), "it-wrong-user") is not None
    assert connack(settings.mqtt_url, "it-the-login") is None
    # Kept owner-only in the data directory, and nowhere else in clear: not in stack.json, not in the broker's config.
    assert stat.S_IMODE(stack.mqtt_login_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.mqtt_dir.stat().st_mode) == 0o700
    assert json.loads(stack.mqtt_login_file.read_text())["password"] == login.password
    for path in (stack.data_dir / STACK_FILE, *stack.mqtt_dir.glob("*.conf"), *stack.mqtt_dir.glob("*.yaml"), stack.mqtt_dir / "passwd"):
        assert login.password not in path.read_text(), path


def bridge_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bridge_mqtt.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_bridge_and_the_simulator_log_in_with_the_generated_login(stack, settings):
    """Neither is given a user or password: both take the login from the settings the stack filled in."""
    raw, dlq = "it-login.raw", "it-login.dlq"
    ensure_topics(settings.bootstrap_servers, [raw, dlq])
    bridge_settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"raw": raw, "dlq": dlq})})
    options = bridge_mqtt.options_from_args(
        bridge_args("--topic-filter", "iotlink/stg/+/+/+/pub/+/+", "--client-id", "it-login-bridge", "--session-expiry", "0"), bridge_settings
    )
    assert options.username is None and options.broker.username == "iotlink"
    running = bridge_mqtt.start_bridge(options)
    fleet = build_fleet(6)
    messages = list(FleetSimulator(fleet, seed=5).messages(1_795_000_000_000, 3))
    try:
        assert running.transport.subscribed.wait(20), "the bridge did not log in and subscribe"
        send, close = mqtt_publisher(settings.mqtt_url, env="stg")
        try:
            for message in messages:
                send(message, 0).wait_for_publish(10)
            # A device id that breaks the rule: a dead letter with the payload, not a raw record.
            hostile_device, _ = paho_client(settings.mqtt_url, "it-login-hostile")
            hostile_device.connect(options.broker.host, options.broker.port)
            hostile_device.loop_start()
            hostile_device.publish("iotlink/stg/nohub/..%2F..\\etc/periodic/pub/telemetry/json", b'{"hostile":1}', qos=1).wait_for_publish(10)
            hostile_device.loop_stop()
            hostile_device.disconnect()
        finally:
            close()
        deadline = time.monotonic() + 60
        while running.counters["produced"] + running.counters["rejected"] < len(messages) + 1:
            assert time.monotonic() < deadline, f"the bridge took {running.counters} of {len(messages) + 1}"
            time.sleep(0.1)
    finally:
        running.stop()
    envelopes = [parse_envelope(value) for value in read_topic(settings.bootstrap_servers, raw, timeout_s=30)]
    assert sorted((e.device_id, e.payload) for e in envelopes) == sorted((m.device.device_id, m.payload) for m in messages)
    [letter] = [orjson.loads(value) for value in read_topic(settings.bootstrap_servers, dlq, timeout_s=30)]
    assert (letter["reason_code"], letter["device_id"], letter["payload"]) == ("invalid_device_id", None, '{"hostile":1}')
    assert "has the path separator '\\\\' at offset 7" in letter["reason"]


def test_our_clients_log_in_and_say_why_a_wrong_login_is_refused_without_showing_it(stack, settings):
    follower = ShadowFollower(settings.mqtt_url, lambda device, desired: True, client_id="it-login-follower")
    follower.close()
    wrong = broker_url("127.0.0.1", settings.ports.mqtt, "iotlink", "Pl4nted-wrong")
    attempts = (
        lambda: mqtt_publisher(wrong),
        lambda: ShadowFollower(wrong, lambda device, desired: True, client_id="it-wrong-follower", timeout_s=3),
        lambda: MqttShadowLink(wrong, "it-wrong-control-sink", timeout_s=3),
        lambda: ShadowService(wrong, client_id="it-wrong-shadow-service").start(timeout_s=3),
    )
    for attempt in attempts:
        with pytest.raises(ConnectionError) as caught:
            attempt()
        message = str(caught.value)
        assert "refused the connection: Not authorized" in message and "Pl4nted" not in message, message
