import os
import threading

import paho.mqtt.client as mqtt
import psycopg
import pytest
from kafka.admin import KafkaAdminClient

from connectors.iceberg import open_catalog
from connectors.mongo import open_database
from iotlink.config import Settings, StackPorts
from iotlink.stack import EmbeddedStack, StackError, free_port, port_is_free

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

    received = threading.Event()
    port = settings.ports.mqtt
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: received.set() if m.payload == b"\x01\x02" else None
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("iotlink/+/+/+/+/pub/+/+", qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
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
    assert set(pids) == {"kafka", "postgres", "mqtt", "mongo"}
    # A command run alongside (iotlink sql --embedded during a demo) uses the running services
    # and leaves them running; a second owner is refused with the reason.
    shared = EmbeddedStack(settings, ("kafka", "iceberg", "mongo"), share=True)
    assert shared.start() == {k: v for k, v in stack.endpoints.items() if k in ("kafka", "iceberg_catalog", "iceberg_warehouse", "mongo")}
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
    for port in (settings.ports.kafka, settings.ports.postgres, settings.ports.mqtt, settings.ports.mongo):
        assert port_is_free(port)


def test_port_in_use_is_a_clear_error(tmp_path, settings):
    busy = Settings(data_dir=tmp_path, ports=StackPorts(kafka=settings.ports.kafka))
    with pytest.raises(StackError, match=f"port {settings.ports.kafka} .* already in use"):
        EmbeddedStack(busy, ("kafka",)).start()


def test_end_offsets_of_a_topic_still_being_written_are_found_before_the_deadline(settings):
    """A bounded SQL query beside a running job: the topic grows while its end is looked for."""
    import time
    import uuid

    from kafka import KafkaProducer

    from connectors.flink_sql import readable_end_offsets
    from connectors.kafka import ensure_topics

    topic = f"growing-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.bootstrap_servers, [topic])
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    for i in range(500):
        producer.send(topic, value=b"%d" % i)
    producer.flush()
    stop = threading.Event()

    def keep_writing():
        while not stop.is_set():
            producer.send(topic, value=b"more")
            time.sleep(0.002)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        deadline_s = 40.0
        started = time.monotonic()
        ends = readable_end_offsets(settings.bootstrap_servers, [topic], read_committed=False, timeout_s=deadline_s)
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
        producer.close()
    assert ends[topic][0] >= 500
    # It stops at the end it found at the start instead of chasing the writer until the deadline.
    assert took < deadline_s / 2, took
