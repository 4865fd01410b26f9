"""Where an MQTT broker is and how to log in to it, from one URL, for every paho client of ours.

``mqtt://[user[:password]@]host[:port]`` (default port 1883) or ``mqtts://…`` (TLS, default
8883). The login travels inside the URL (``IOTLINK_MQTT_URL``, ``--mqtt-url``, the settings the
embedded stack fills in), so the bridge, the simulator, the shadow service and the control sink
all reach a broker that refuses anonymous clients without options of their own. User and
password are percent-decoded (``%40`` for ``@``). Messages show the URL through
:func:`operators.value_repr.masked_url` only, never with the password.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import paho.mqtt.client as mqtt

from operators.value_repr import masked_url

SCHEMES = ("mqtt", "mqtts")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the MQTT broker listens, and the login the URL carried.

    Attributes:
        host: Host name or address.
        port: TCP port.
        tls: Whether the connection uses TLS (``mqtts``).
        username: User name, or None for an anonymous connection.
        password: Password (not shown by ``repr``), or None.
    """

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_broker_url(url: str) -> BrokerAddress:
    """Parses ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…``.

    Args:
        url: The broker URL.

    Returns:
        The address, with the percent-decoded login when the URL has one.

    Raises:
        ValueError: for another scheme or a missing host (the message masks the password).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number
        parts, port = None, None
    if parts is None or parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"MQTT broker URL {masked_url(url)!r}: expected mqtt://host[:port] or mqtts://host[:port] (login: mqtt://user:password@host)")
    tls = parts.scheme == "mqtts"
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls, username, password)


def broker_url(host: str, port: int, username: str | None = None, password: str | None = None, tls: bool = False) -> str:
    """The URL of a broker with its login, user and password percent-encoded.

    Args:
        host: Host name or address.
        port: TCP port.
        username: User name, or None for no login.
        password: Password, or None.
        tls: ``mqtts`` instead of ``mqtt``.

    Returns:
        E.g. ``mqtt://iotlink:s3cret@127.0.0.1:11883``; show it only through ``masked_url``.
    """
    login = ""
    if username is not None:
        login = quote(username, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"
    return f"{'mqtts' if tls else 'mqtt'}://{login}{host}:{port}"


def paho_client(url: str, client_id: str, **client_options) -> tuple[mqtt.Client, BrokerAddress]:
    """A paho client (callback API 2) set up for the broker of ``url``: its login and TLS.

    The caller sets its callbacks and connects to ``address.host``, ``address.port``.

    Args:
        url: The broker URL, login included when the broker needs one.
        client_id: The MQTT client id.
        **client_options: Further ``paho.mqtt.client.Client`` arguments (``protocol``, ...).

    Returns:
        (the client, the parsed address).

    Raises:
        ValueError: for a URL that is not an MQTT broker URL.
    """
    address = parse_broker_url(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **client_options)
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set()
    return client, address


def refusal(reason_code) -> str | None:
    """Why the broker refused a connection (a failed CONNACK, e.g. ``Not authorized``), or None when it accepted it."""
    return str(reason_code) if getattr(reason_code, "is_failure", False) else None


# How much one read from the broker's socket may take: a few hundred small PUBLISH packets.
READ_AHEAD_BYTES = 64 * 1024
# PUBACKs queued together and written with one send (4 bytes each in MQTT 3.1.1, 4-6 in MQTT 5).
COMBINED_ACKS = 1024
_PUBACK = 0x40


class BufferedClient(mqtt.Client):
    """A paho client that reads the broker's socket in large chunks and writes queued PUBACKs together.

    paho 2.2 reads every packet with at least three ``recv`` calls (its first byte, each byte of
    the remaining length, the rest) and goes back to ``select`` after each packet; at thousands
    of small PUBLISH packets a second those system calls are a large part of the receive path.
    Here each pass of paho's loop makes one ``recv`` of up to :data:`READ_AHEAD_BYTES`, paho's
    reads are served from that buffer, and every packet it holds is handled in the same pass
    (``select`` would not report data already taken off the socket). A packet cut off at the end
    of the buffer waits for the next pass, so the loop still gets to write PUBACKs between reads.

    PUBACKs queued by the time paho writes (Kafka confirms records in batches, so acknowledgements
    come in bursts) go out in one ``send`` instead of one each; they are sent in the order they
    were queued, which is the bridge's order of arrival.

    An MQTT 5 PUBLISH at QoS 0 or 1 without properties (what devices send) is decoded here: paho
    builds a ``Properties`` object for every one (tables of every property name, then a pass over
    all of them to clear it), which cost the bridge ~40 µs a message — MQTT 3.1.1 ran at 62 µs a
    message, MQTT 5 at 105 (docs/performance.md). Its ``message.properties`` is then ``None``; any
    other PUBLISH (properties, QoS 2, anything malformed) is paho's to decode.

    Overrides paho's private ``_sock_recv`` / ``_sock_close`` / ``_packet_write`` /
    ``_handle_publish`` of the pinned version (requirements.lock); the bridge's tests run through it.
    """

    def __init__(self, *args, **kwargs):
        self._read_ahead = b""
        self._read_at = 0
        self._may_read = False
        super().__init__(*args, **kwargs)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read_ahead):
            if not self._may_read:
                raise BlockingIOError  # paho keeps the partial packet and asks select again
            self._may_read = False
            data = super()._sock_recv(max(bufsize, READ_AHEAD_BYTES))
            if len(data) <= bufsize:
                return data
            self._read_ahead, self._read_at = data, 0
        start = self._read_at
        self._read_at = min(start + bufsize, len(self._read_ahead))
        if self._read_at >= len(self._read_ahead):
            chunk, self._read_ahead, self._read_at = self._read_ahead[start:], b"", 0
            return chunk
        return self._read_ahead[start : self._read_at]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        self._may_read = True
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._read_ahead:
            rc = super().loop_read(max_packets)
        self._may_read = False
        return rc

    def _sock_close(self) -> None:
        self._read_ahead, self._read_at = b"", 0
        super()._sock_close()

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        packet, header = self._in_packet["packet"], self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        topic_end = at = 2 + ((packet[0] << 8) | packet[1])
        mid = 0
        if qos == 1:
            if len(packet) < at + 2:
                return super()._handle_publish()
            mid = (packet[at] << 8) | packet[at + 1]
            at += 2
        if len(packet) <= at or packet[at] != 0:  # properties (or a malformed packet): paho's
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:topic_end]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[at + 1 :])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        # Only this thread takes from the left of the queue; other threads append on the right.
        out = self._out_packet
        if len(out) > 1 and _unsent_puback(out[0]) and _unsent_puback(out[1]):
            acks = []
            while out and len(acks) < COMBINED_ACKS and _unsent_puback(out[0]):
                acks.append(out.popleft()["packet"])
            out.appendleft({"command": _PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": sum(map(len, acks)),
                            "packet": b"".join(acks), "info": None})
        return super()._packet_write()


def _unsent_puback(packet: dict) -> bool:
    return (packet["command"] & 0xF0) == _PUBACK and packet["pos"] == 0
