"""The embedded MQTT broker's TLS listener (``--mqtt-tls-port``): verified TLS with the broker's
login, nothing else."""

import os
import shutil
import socket
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt_connection import parse_broker_url
from iotlink.mqtt_tls import ensure_tls_files, tls_files
from iotlink.stack import EmbeddedStack, free_port, mosquitto_executable
from jobs.config import Settings, StackPorts

pytestmark = pytest.mark.skipif(mosquitto_executable() is None or shutil.which("openssl") is None,
                                reason="the TLS listener needs mosquitto and openssl")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mqtt-tls")
    ports = StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mqtt_tls=free_port(), mongo=free_port())
    embedded = EmbeddedStack(Settings(data_dir=data_dir, ports=ports), ("mqtt",))
    embedded.start()
    yield embedded
    embedded.stop()


def _client(name: str, tls_port: int, ca=None, login=None) -> tuple[mqtt.Client, threading.Event, list]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    if login is not None:
        client.username_pw_set(login.username, login.password)
    answered, codes = threading.Event(), []
    client.on_connect = lambda c, u, flags, code, props: (codes.append(code), answered.set())
    return client, answered, codes


def test_a_device_with_the_ca_and_the_login_publishes_over_tls(stack):
    tls_port = parse_broker_url(stack.endpoints["mqtt_tls"]).port
    ca = tls_files(stack.mqtt_dir).ca
    received = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="it-tls-listener", protocol=mqtt.MQTTv5)
    address = parse_broker_url(stack.mqtt_url_with_login())
    listener.username_pw_set(address.username, address.password)
    subscribed = threading.Event()
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.on_message = lambda c, u, message: received.append(message.payload)
    listener.connect("127.0.0.1", address.port)
    listener.subscribe("iotlink/tls/#", qos=1)
    listener.loop_start()
    device, answered, codes = _client("it-tls-device", tls_port, ca=ca, login=stack.mqtt_login)
    try:
        assert subscribed.wait(10)
        device.connect("127.0.0.1", tls_port)
        device.loop_start()
        assert answered.wait(10) and not codes[0].is_failure, codes
        device.publish("iotlink/tls/dev-1", b'{"tempC":21.5}', qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [b'{"tempC":21.5}']
    finally:
        device.loop_stop()
        device.disconnect()
        listener.loop_stop()
        listener.disconnect()


def test_no_login_no_trusted_ca_or_plain_mqtt_gets_nothing_through(stack):
    tls_port = parse_broker_url(stack.endpoints["mqtt_tls"]).port
    anonymous, answered, codes = _client("it-tls-anonymous", tls_port, ca=tls_files(stack.mqtt_dir).ca)
    anonymous.connect("127.0.0.1", tls_port)
    anonymous.loop_start()
    try:
        assert answered.wait(10) and codes[0].is_failure, codes  # TLS is fine, the login is missing
    finally:
        anonymous.loop_stop()
        anonymous.disconnect()
    untrusting, _, _ = _client("it-tls-untrusting", tls_port, ca=None, login=stack.mqtt_login)
    untrusting.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system's CAs only: the broker's is not among them
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.connect("127.0.0.1", tls_port)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as sock:  # a plain MQTT CONNECT on the TLS port
        sock.sendall(bytes([0x10, 0x10, 0x00, 0x04]) + b"MQTT" + bytes([0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x04]) + b"it-p")
        sock.settimeout(5)
        try:
            answer = sock.recv(16)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"\x20")  # never a CONNACK


def test_the_keys_are_owner_only_and_made_once_per_data_directory(stack):
    files = tls_files(stack.mqtt_dir)
    for key in (files.key, files.ca.with_name("ca.key")):
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(files.ca.parent).st_mode & 0o777) == "0o700"
    made = files.certificate.stat().st_mtime_ns
    assert ensure_tls_files(stack.mqtt_dir) == files and files.certificate.stat().st_mtime_ns == made
