"""Broker URLs with a login: parsed for every paho client of ours, built for the embedded stack, never shown with the password;
the read-ahead paho client of the bridge."""

import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt_connection import BrokerAddress, BufferedClient, broker_url, paho_client, parse_broker_url, refusal
from operators.value_repr import masked_url


def test_a_login_in_the_url_is_parsed_and_percent_decoded():
    assert parse_broker_url("mqtt://iotlink:pa%3Ass%40w0rd@127.0.0.1:11883") == BrokerAddress("127.0.0.1", 11883, False, "iotlink", "pa:ss@w0rd")
    assert parse_broker_url("mqtts://bridge@broker") == BrokerAddress("broker", 8883, True, "bridge", None)
    assert parse_broker_url("mqtt://broker") == BrokerAddress("broker", 1883, False)


def test_built_urls_round_trip_and_mask():
    url = broker_url("127.0.0.1", 11883, "iotlink", "pa:ss@w/rd")
    assert url == "mqtt://iotlink:pa%3Ass%40w%2Frd@127.0.0.1:11883"
    assert parse_broker_url(url) == BrokerAddress("127.0.0.1", 11883, False, "iotlink", "pa:ss@w/rd")
    assert masked_url(url) == "mqtt://iotlink:***@127.0.0.1:11883"
    assert broker_url("h", 1) == "mqtt://h:1" and broker_url("h", 8883, tls=True) == "mqtts://h:8883"


def test_bad_urls_are_refused_without_showing_the_password():
    for url in ("http://iotlink:Pl4nted@h:1", "mqtt://iotlink:Pl4nted@h:notaport", "mqtt://iotlink:Pl4nted@/"):
        with pytest.raises(ValueError) as caught:
            parse_broker_url(url)
        assert "Pl4nted" not in str(caught.value) and "expected mqtt://host" in str(caught.value)


def test_paho_clients_log_in_with_the_urls_login():
    client, address = paho_client("mqtt://iotlink:s3cret@127.0.0.1:11883", "it-1")
    assert (client.username, client.password) == ("iotlink", "s3cret")
    assert (address.host, address.port) == ("127.0.0.1", 11883)
    anonymous, _ = paho_client("mqtt://127.0.0.1:11883", "it-2")
    assert anonymous.username is None


def test_a_refused_connack_says_why():
    assert refusal(ReasonCode(PacketTypes.CONNACK, "Not authorized")) == "Not authorized"
    assert refusal(ReasonCode(PacketTypes.CONNACK, "Success")) is None


# --- BufferedClient: paho's reads served from one large recv per loop pass ---


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 0 (short enough for a one-byte remaining length)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


class CountingSocket:
    """One end of a socket pair that counts the recv calls made on it."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.recvs = 0
        self.sends = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()


def client_on(sock) -> tuple[BufferedClient, list]:
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="buffered-test", protocol=mqtt.MQTTv311, manual_ack=True)
    received = []
    client.on_message = lambda c, userdata, message: received.append((message.topic, message.payload))
    client._sock = sock  # noqa: SLF001 - the connection's socket, as connect() would set it
    return client, received


def test_every_packet_of_one_read_is_handled_in_one_pass_with_one_recv():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    counting = CountingSocket(ours)
    client, received = client_on(counting)
    theirs.sendall(b"".join(publish_packet(f"t/{i}", b"p%d" % i) for i in range(50)))
    assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert received == [(f"t/{i}", b"p%d" % i) for i in range(50)]
    assert counting.recvs == 1  # plain paho: at least 150 (a byte, a byte, the rest, per packet)
    theirs.close()
    ours.close()


def test_a_packet_cut_at_the_end_of_a_read_is_finished_by_the_next_pass():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    counting = CountingSocket(ours)
    client, received = client_on(counting)
    first, second = publish_packet("a/1", b"one"), publish_packet("a/2", b"two-two")
    theirs.sendall(first + second[:4])
    client.loop_read()
    assert received == [("a/1", b"one")] and counting.recvs == 1  # the cut packet waits: no second recv in the pass
    client.loop_read()  # nothing new on the socket: paho keeps the partial packet
    assert received == [("a/1", b"one")]
    theirs.sendall(second[4:] + first)
    client.loop_read()
    assert received == [("a/1", b"one"), ("a/2", b"two-two"), ("a/1", b"one")]
    theirs.close()
    ours.close()


def test_a_closed_connection_is_reported_and_forgets_the_buffer():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client, received = client_on(CountingSocket(ours))
    theirs.sendall(publish_packet("b/1", b"x")[:3])
    client.loop_read()
    theirs.close()
    assert client.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # connection lost
    assert client._read_ahead == b"" and received == []  # noqa: SLF001


def test_queued_pubacks_go_out_in_one_send_in_their_order():
    ours, theirs = socket.socketpair()
    counting = CountingSocket(ours)
    client, _ = client_on(counting)
    client._thread = object()  # noqa: SLF001 - as under loop_start: acks are queued, the loop writes them
    for mid in (7, 3, 300):
        client.ack(mid, 1)
    assert client.loop_write() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert counting.sends == 1
    assert theirs.recv(100) == bytes([0x40, 2, 0, 7, 0x40, 2, 0, 3, 0x40, 2, 1, 44])
    client.ack(9, 1)  # a single one is written as paho writes it
    client.loop_write()
    assert counting.sends == 2 and theirs.recv(100) == bytes([0x40, 2, 0, 9])
    client._thread = None  # noqa: SLF001
    theirs.close()
    ours.close()


def publish_v5(topic: str, payload: bytes, qos: int, mid: int = 0, properties: bytes = b"", flags: int = 0) -> bytes:
    """An MQTT 5 PUBLISH (properties: their encoded bytes, without the length)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + (mid.to_bytes(2, "big") if qos else b"") + bytes([len(properties)]) + properties
    body += payload
    assert len(body) < 128
    return bytes([0x30 | (qos << 1) | flags, len(body)]) + body


def test_mqtt5_publishes_without_properties_are_decoded_like_paho_does():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="buffered-v5", protocol=mqtt.MQTTv5, manual_ack=True)
    client._thread = object()  # noqa: SLF001 - acks queued, as under loop_start
    received = []
    client.on_message = lambda c, userdata, m: received.append((m.topic, m.payload, m.qos, m.mid, m.dup, m.retain, m.properties))
    client._sock = ours  # noqa: SLF001
    content_type = bytes([0x03]) + len("text/csv").to_bytes(2, "big") + b"text/csv"
    theirs.sendall(publish_v5("iotlink/a/b", b"\x00\xff", 1, mid=513, flags=0x08)  # dup
                   + publish_v5("iotlink/c", b"{}", 0, flags=0x01)  # retained, QoS 0
                   + publish_v5("iotlink/d", b"x,y", 1, mid=7, properties=content_type))  # paho decodes this one
    client.loop_read()
    assert received[:2] == [("iotlink/a/b", b"\x00\xff", 1, 513, True, False, None), ("iotlink/c", b"{}", 0, 0, False, True, None)]
    assert received[2][:4] == ("iotlink/d", b"x,y", 1, 7) and received[2][6].ContentType == "text/csv"
    assert len(client._out_packet) == 0  # noqa: SLF001 - manual acks: nothing sent before the bridge acknowledges
    client._thread = None  # noqa: SLF001
    theirs.close()
    ours.close()
