"""``iotlink bridge mqtt``: device topics on an MQTT broker (or AWS IoT Core) -> ``iotlink.raw``.

Every message received on the topic filters (default ``iotlink/+/+/+/+/pub/+/+``) is wrapped in
the raw envelope (payload byte-exact, topic parts as hints) and produced to the raw topic keyed
by device id. Messages on topics outside the layout, topics whose hub or device level breaks the
device id rule (:mod:`operators.device_id`) and payloads above the size limit go to the
dead-letter topic instead, with the original payload and a precise reason: the bridge cannot
answer the device, so the dead letter is where a rejected message is kept.

Delivery is at least once: the bridge subscribes at QoS 1 with a persistent session and sends the
PUBACK of a message only after Kafka has confirmed its record (``acks=all``). A crash, a lost
connection or a broker restart before the PUBACK makes the broker deliver the message again, so
the raw topic may hold a message twice (the telemetry job drops duplicates); it never misses one
the broker accepted.

Flow control: at most ``max_in_flight`` messages are between the broker and a Kafka
confirmation. The bridge asks the broker for that limit (MQTT 5 Receive Maximum) and enforces it
itself by not reading from the broker while it is reached, so a slow Kafka makes the broker hold
the messages back instead of the bridge buffering them.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from connectors.mqtt_connection import BrokerAddress, BufferedClient, parse_broker_url
from connectors.raw_producer import BridgeCounters, RawProducer
from operators.dead_letter import dead_letter_to_json, make_dead_letter
from operators.envelope import RawEnvelope
from operators.tenant import TENANT_MISMATCH, publish_refusal
from operators.topic import TopicError, parse_device_topic, split_tenant_prefix

log = logging.getLogger(__name__)

DEFAULT_TOPIC_FILTER = "iotlink/+/+/+/+/pub/+/+"
TENANT_TOPIC_FILTER = "tenants/+/iotlink/+/+/+/+/pub/+/+"  # devices of a tenant publish under tenants/<tenant>/
DEFAULT_CLIENT_ID = "iotlink-bridge-mqtt"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
RECONNECT_FIRST_DELAY_S = 1.0
RECONNECT_MAX_DELAY_S = 60.0
DEAD_LETTER_STAGE = "ingest"
# MQTT 5 caps Receive Maximum at 65535.
MAX_RECEIVE_MAXIMUM = 65535


# --- pure logic ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassifiedMessage:
    """What the bridge does with one MQTT message.

    Attributes:
        envelope: The raw envelope (topic parts as hints when the topic follows the layout).
        reason_code: ``None`` to produce it to the raw topic, else why it goes to the dead-letter topic.
        reason: Human-readable, precise reason for the dead letter.
        kind: ``hub``, ``standalone`` or ``child`` when the topic follows the layout.
    """

    envelope: RawEnvelope
    reason_code: str | None = None
    reason: str | None = None
    kind: str | None = None

    @property
    def rejected(self) -> bool:
        """True when the message goes to the dead-letter topic."""
        return self.reason_code is not None


def classify_message(topic: str, payload: bytes, received_at: int, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                     device_tenants: Mapping[str, str | None] | None = None) -> ClassifiedMessage:
    """Maps one MQTT message to its raw envelope, or to the reason it is rejected.

    Args:
        topic: The topic the message was published on.
        payload: The payload bytes, kept byte-exact.
        received_at: Receive time at the bridge, epoch ms UTC.
        max_payload_bytes: Largest payload produced to the raw topic.
        device_tenants: Device -> tenant (the device registry), for topics under
            ``tenants/{tenant}/``: a device of another tenant, of none, or unknown is refused.

    Returns:
        The classification; rejected ones carry ``invalid_topic`` (not the platform layout),
        ``invalid_device_id`` (the hub or device level breaks the device id rule; the envelope
        then names no device, so the dead letter counts against none), ``not_uplink`` (a ``sub``
        topic: commands to devices, not data from them) or ``payload_too_large``.
    """
    try:
        tenant, layout_topic = split_tenant_prefix(topic)
        parts = parse_device_topic(layout_topic)
    except TopicError as exc:
        envelope = RawEnvelope(payload=payload, source="mqtt", received_at=received_at, mqtt_topic=topic)
        return ClassifiedMessage(envelope, exc.code, exc.reason)
    envelope = RawEnvelope(
        payload=payload,
        source="mqtt",
        received_at=received_at,
        mqtt_topic=topic,
        device_id=parts.device_id,
        hub_id=parts.hub_id,
        format=parts.format,
    )
    if parts.direction != "pub":
        reason = f"topic {topic!r} has direction {parts.direction!r}: the bridge ingests device publications ('pub') only"
        return ClassifiedMessage(envelope, "not_uplink", reason, parts.kind)
    if len(payload) > max_payload_bytes:
        reason = f"payload of {len(payload)} bytes is larger than the bridge limit of {max_payload_bytes} bytes"
        return ClassifiedMessage(envelope, "payload_too_large", reason, parts.kind)
    if tenant is not None:
        if device_tenants is None:
            reason = f"topic of tenant {tenant}: the bridge runs without a device registry (--device-registry) to check its devices"
            return ClassifiedMessage(envelope, TENANT_MISMATCH, reason, parts.kind)
        refusal = publish_refusal(tenant, parts.device_id, device_tenants)
        if refusal is not None:
            return ClassifiedMessage(envelope, TENANT_MISMATCH, refusal, parts.kind)
    return ClassifiedMessage(envelope, kind=parts.kind)


def dead_letter_record(message: ClassifiedMessage, failed_at: int) -> tuple[bytes | None, bytes]:
    """The (key, value) of the dead-letter record for a rejected message.

    The key is the device id when the topic named one, so a device's dead letters stay in order.
    """
    letter = make_dead_letter(
        stage=DEAD_LETTER_STAGE, reason_code=message.reason_code, reason=message.reason, failed_at=failed_at, envelope=message.envelope
    )
    device_id = message.envelope.device_id
    return (device_id.encode() if device_id else None), dead_letter_to_json(letter).encode("utf-8")


def reconnect_delay(attempt: int, first_s: float = RECONNECT_FIRST_DELAY_S, max_s: float = RECONNECT_MAX_DELAY_S) -> float:
    """Seconds to wait before connection attempt ``attempt`` (1-based) after a failure or a lost connection.

    1 s, 2 s, 4 s, ... doubling up to ``max_s`` (60 s); the count restarts after a successful connection.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    return min(first_s * 2 ** min(attempt - 1, 32), max_s)


class AckSequencer:
    """Releases acknowledgements in the order the messages were received.

    MQTT requires a client to send PUBACKs in the order the PUBLISH packets arrived, while Kafka
    confirms records of different partitions in any order. Not thread-safe: the bridge guards it.
    """

    def __init__(self):
        self._done: collections.OrderedDict[object, bool] = collections.OrderedDict()

    def add(self, token: object) -> None:
        """Registers a received message, identified by ``token``."""
        self._done[token] = False

    def complete(self, token: object) -> list[object]:
        """Marks ``token`` done; returns the tokens now ready to acknowledge, oldest first."""
        if token not in self._done:
            return []
        self._done[token] = True
        ready = []
        while self._done:
            oldest, done = next(iter(self._done.items()))
            if not done:
                break
            self._done.popitem(last=False)
            ready.append(oldest)
        return ready

    def __len__(self) -> int:
        return len(self._done)


def status_line(now: dict[str, int], before: dict[str, int], interval_s: float, in_flight: int, reconnects: int, connected: bool) -> str:
    """The one-line status the bridge prints every interval.

    Args:
        now: Counter snapshot now (received, produced, rejected, failed).
        before: Counter snapshot one interval ago.
        interval_s: Seconds between the two snapshots.
        in_flight: Messages received and not yet acknowledged to the broker.
        reconnects: Connections re-established after a loss.
        connected: Whether the broker connection is up.
    """
    rate = (now["received"] - before["received"]) / interval_s if interval_s > 0 else 0.0
    return (
        f"mqtt bridge: received {now['received']} ({rate:.0f}/s)  produced {now['produced']}  "
        f"rejected->dlq {now['rejected']}  kafka errors {now['failed']}  in flight {in_flight}  "
        f"reconnects {reconnects}  {'connected' if connected else 'DISCONNECTED'}"
    )


# --- options -------------------------------------------------------------------------------------


@dataclass
class AwsIotOptions:
    """AWS IoT Core endpoint and the mutual-TLS credentials of the bridge's thing."""

    endpoint: str
    cert: Path
    key: Path
    ca: Path | None = None
    port: int = 8883


@dataclass
class BridgeOptions:
    """Everything one bridge run needs."""

    bootstrap_servers: str
    raw_topic: str
    dlq_topic: str
    broker: BrokerAddress | None = None
    aws: AwsIotOptions | None = None
    topic_filters: tuple[str, ...] = (DEFAULT_TOPIC_FILTER, TENANT_TOPIC_FILTER)
    client_id: str = DEFAULT_CLIENT_ID
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    drain_timeout_s: float = 30.0
    producer_config: dict = field(default_factory=dict)
    device_tenants: Mapping[str, str | None] | None = None  # the registry's tenants, for tenants/<tenant>/ topics

    def describe(self) -> str:
        """Where the bridge reads from, for the start-up line."""
        if self.aws is not None:
            return f"AWS IoT Core {self.aws.endpoint}:{self.aws.port} (MQTT 5, mutual TLS)"
        scheme = "mqtts" if self.broker.tls else "mqtt"
        return f"{scheme}://{self.broker.host}:{self.broker.port} (MQTT {self.protocol})"


# --- the bridge ----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)  # identity: the ack sequencer keys on the message itself
class _Received:
    topic: str
    payload: bytes
    token: object  # the transport's handle for the acknowledgement
    generation: int  # connection the message arrived on; its PUBACK is only valid there
    received_at: int
    retry_at: float = 0.0


class MqttBridge:
    """Moves messages from a transport (paho MQTT or AWS IoT Core) to Kafka, acknowledging after Kafka.

    Threads: the transport's network thread calls :meth:`offer`, which produces to Kafka; the
    producer's callback thread runs the completions, which acknowledge through the transport; a
    worker thread produces again what Kafka did not take.

    Args:
        options: The bridge options.
        producer: The Kafka producer (its ``counters`` are the bridge's counters).
    """

    def __init__(self, options: BridgeOptions, producer: RawProducer):
        self.options = options
        self.producer = producer
        self.counters: BridgeCounters = producer.counters
        self.transport: PahoTransport | AwsIotTransport | None = None
        self.peak_in_flight = 0
        # The bound on messages taken and not finished: the broker's Receive Maximum is a request
        # that not every broker honours exactly, so the bridge enforces it itself.
        self._slots = threading.Semaphore(options.max_in_flight)
        self._retries: collections.deque[_Received] = collections.deque()
        self._lock = threading.Lock()
        self._generation = 0
        self._sequencer = AckSequencer()
        self._unacked = 0
        self._accepting = threading.Event()
        self._accepting.set()
        self._worker_stop = threading.Event()
        self._blocked_logged = False
        self._worker = threading.Thread(target=self._work, name="mqtt-bridge-retries", daemon=True)

    @property
    def in_flight(self) -> int:
        """Messages taken from the broker and not yet acknowledged (or abandoned to redelivery)."""
        with self._lock:
            return self._unacked

    # called by the transport -------------------------------------------------------------------

    def connection_changed(self) -> None:
        """A connection went up or down: PUBACKs owed on the old one can no longer be sent.

        The broker redelivers those messages on the new connection, so queued ones are dropped
        (not produced twice) and ones already at Kafka are simply not acknowledged.
        """
        with self._lock:
            self._generation += 1
            self._sequencer = AckSequencer()
            # Ones at Kafka finish unacknowledged when confirmed; ones waiting for a retry are dropped here.
            self._finish(len(self._retries))
            self._retries.clear()

    def _finish(self, n: int = 1) -> None:
        """``n`` taken messages are done (confirmed, or left to the broker's redelivery). Under the lock."""
        self._unacked -= n
        for _ in range(n):
            self._slots.release()

    def offer(self, topic: str, payload: bytes, token: object) -> None:
        """Takes one received QoS 1 message (from the transport's network thread).

        Waits while ``max_in_flight`` messages are unfinished, which stops the network thread from
        reading: the broker's Receive Maximum (MQTT 5) normally keeps it from sending that many,
        otherwise TCP slows it down. The wait ends when Kafka confirms a record, or when
        :meth:`drain` begins: then the message is left unacknowledged for the next run.
        """
        while not self._slots.acquire(timeout=0.5):
            if not self._accepting.is_set():
                return
            if not self._blocked_logged:
                self._blocked_logged = True
                log.warning("mqtt bridge: %d messages wait for Kafka; not reading from the broker until some are confirmed", self.in_flight)
        if not self._accepting.is_set():
            self._slots.release()
            return
        # Registered before it is produced: its confirmation may come before _dispatch returns.
        with self._lock:
            item = _Received(topic, payload, token, self._generation, int(time.time() * 1000))
            self._sequencer.add(item)
            self._unacked += 1
            self.peak_in_flight = max(self.peak_in_flight, self._unacked)
        self.counters.add("received")
        # Produced on the network thread itself: handing each message to another thread cost a
        # queue and a switch of the interpreter per message (the producer never blocks here; the
        # in-flight bound above is what holds the broker back).
        self._dispatch(item)

    # worker ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the retry worker (the transport is started by :func:`start_bridge`)."""
        self._worker.start()

    def _due_retry(self) -> _Received | None:
        with self._lock:
            if self._retries and self._retries[0].retry_at <= time.monotonic():
                return self._retries.popleft()
        return None

    def _work(self) -> None:
        # Messages Kafka did not take are produced again from here, once their pause is over.
        while not self._worker_stop.wait(0.05):
            while (item := self._due_retry()) is not None:
                self._dispatch(item)

    def _dispatch(self, item: _Received) -> None:
        with self._lock:
            if item.generation != self._generation:
                self._finish()  # the broker redelivers it on the new connection
                return
        self._produce(item)

    def _produce(self, item: _Received) -> None:
        message = classify_message(item.topic, item.payload, item.received_at, self.options.max_payload_bytes, self.options.device_tenants)
        on_done = self._completion(item, message)
        if message.rejected:
            key, value = dead_letter_record(message, int(time.time() * 1000))
            self.producer.send_record(self.options.dlq_topic, key, value, on_done)
        else:
            self.producer.send(message.envelope, on_done)

    def _completion(self, item: _Received, message: ClassifiedMessage) -> Callable[[BaseException | None], None]:
        def on_done(exc: BaseException | None) -> None:
            if exc is not None:
                # Not acknowledged, so the broker still owes it to us; produce it again after a pause.
                log.warning("mqtt bridge: Kafka did not take the record of %s: %s; retrying", item.topic, exc)
                item.retry_at = time.monotonic() + 1.0
                with self._lock:
                    if item.generation == self._generation:
                        self._retries.append(item)
                    else:
                        self._finish()
                return
            if message.rejected:
                self.counters.add("rejected")
            with self._lock:
                self._finish()
                if item.generation != self._generation:
                    return  # the connection it came on is gone: the broker redelivers it
                ready = self._sequencer.complete(item)
                # Acknowledge under the lock: a connection change cannot slip in between the
                # generation check and the PUBACK, which would acknowledge a stale packet id.
                for done in ready:
                    self.transport.ack(done.token)

        return on_done

    def drain(self, timeout_s: float) -> bool:
        """Stops taking messages and waits until every taken one is confirmed and acknowledged.

        Returns:
            True when nothing was left in flight within ``timeout_s``.
        """
        self._accepting.clear()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.in_flight <= 0:
                return True
            time.sleep(0.05)
        return self.in_flight <= 0

    def close(self) -> None:
        """Stops the worker (after :meth:`drain`)."""
        self._accepting.clear()
        self._worker_stop.set()
        self._worker.join(5)


# --- transports ----------------------------------------------------------------------------------


class PahoTransport:
    """An MQTT 5 or 3.1.1 connection with paho: persistent session, QoS 1, manual PUBACKs.

    A supervisor thread connects with exponential backoff (:func:`reconnect_delay`), logging
    each attempt; paho's network thread runs while a connection is up.
    """

    def __init__(self, options: BridgeOptions, bridge: MqttBridge):
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.options = options
        self.bridge = bridge
        self.address = options.broker
        self.reconnects = 0
        self.connected = False
        self.subscribed = threading.Event()  # set once the broker has confirmed the subscriptions (or kept them)
        self._v5 = options.protocol == "5"
        kwargs = {"clean_session": False} if not self._v5 else {}
        self.client = BufferedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,  # the supervisor reconnects, with its own schedule and log lines
            manual_ack=True,
            **kwargs,
        )
        # --username/--password win over a login in the broker URL (the embedded stack's is there).
        username = options.username if options.username is not None else self.address.username
        password = options.password if options.password is not None else self.address.password
        if username is not None:
            self.client.username_pw_set(username, password)
        if self.address.tls or options.tls_ca or options.tls_cert:
            self.client.tls_set(
                ca_certs=str(options.tls_ca) if options.tls_ca else None,
                certfile=str(options.tls_cert) if options.tls_cert else None,
                keyfile=str(options.tls_key) if options.tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if options.tls_insecure:
                self.client.tls_insecure_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._session_ended = threading.Event()
        self._accepted = False  # the current connection got a successful CONNACK
        self._ever_connected = False
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="mqtt-bridge-connect", daemon=True)

    def start(self) -> None:
        """Starts connecting in the background."""
        self._supervisor.start()

    def _connect_once(self) -> None:
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.options.session_expiry_s
            properties.ReceiveMaximum = min(self.options.max_in_flight, MAX_RECEIVE_MAXIMUM)
            self.client.connect(self.address.host, self.address.port, self.options.keepalive_s, clean_start=False, properties=properties)
        else:
            self.client.connect(self.address.host, self.address.port, self.options.keepalive_s)

    def _supervise(self) -> None:
        endpoint = f"{self.address.host}:{self.address.port}"
        attempt = 0
        while not self._stopping.is_set():
            self._session_ended.clear()
            self._accepted = False
            try:
                self._connect_once()
            except (OSError, ssl.SSLError, ValueError) as exc:
                attempt += 1
                delay = reconnect_delay(attempt)
                log.warning("mqtt bridge: connection attempt %d to %s failed: %s; next attempt in %g s", attempt, endpoint, exc, delay)
                self._stopping.wait(delay)
                continue
            self.client.loop_start()
            while not self._session_ended.wait(0.5):
                if self._stopping.is_set():
                    break
            if self._stopping.is_set():
                return  # close() disconnects and stops the loop
            self.client.loop_stop()
            if self._accepted:
                attempt = 0
            attempt += 1
            delay = reconnect_delay(attempt)
            log.warning("mqtt bridge: connection to %s ended; attempt %d in %g s", endpoint, attempt, delay)
            self._stopping.wait(delay)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("mqtt bridge: %s:%s refused the connection: %s", self.address.host, self.address.port, reason_code)
            self._session_ended.set()
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._accepted = True
        self.connected = True
        self.bridge.connection_changed()
        # A present session keeps the subscriptions (and queued messages): subscribing again would
        # make the broker resend retained messages.
        if not flags.session_present:
            client.subscribe([(topic_filter, 1) for topic_filter in self.options.topic_filters])
        else:
            self.subscribed.set()
        log.info("mqtt bridge: connected to %s:%s (%s)", self.address.host, self.address.port,
                 "session resumed" if flags.session_present else "new session")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = 0
        for topic_filter, code in zip(self.options.topic_filters, reason_codes, strict=False):
            if code.is_failure or code.value < 1:
                refused += 1
                log.error("mqtt bridge: the broker refused the QoS 1 subscription to %s: %s", topic_filter, code)
        if not refused:
            log.info("mqtt bridge: subscribed to %s at QoS 1", ", ".join(self.options.topic_filters))
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        self.bridge.connection_changed()
        if not self._stopping.is_set():
            log.warning("mqtt bridge: disconnected from %s:%s: %s", self.address.host, self.address.port, reason_code)
        self._session_ended.set()

    def _on_message(self, client, userdata, message) -> None:
        if message.qos == 0:
            # QoS 0 has no PUBACK (a publisher's QoS 0 is downgraded by the broker): take it as is.
            self.bridge.offer(message.topic, message.payload, None)
            return
        self.bridge.offer(message.topic, message.payload, message.mid)

    def ack(self, token: object) -> None:
        """Sends the PUBACK for a message (``None``: a QoS 0 message, nothing to send)."""
        if token is not None:
            self.client.ack(token, 1)

    def close(self, timeout_s: float = 10.0) -> None:
        """Disconnects cleanly: PUBACKs queued before go out first; the session stays on the broker."""
        self._stopping.set()
        if self.connected:
            self.client.disconnect()
            self._session_ended.wait(timeout_s)
        self.client.loop_stop()
        self._supervisor.join(timeout_s)


class AwsIotTransport:
    """An MQTT 5 connection to AWS IoT Core with ``awsiotsdk``: mutual TLS, persistent session,
    manual PUBACKs, reconnects by the CRT with 1 s doubling to 60 s (no jitter)."""

    def __init__(self, options: BridgeOptions, bridge: MqttBridge):
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self._mqtt5 = mqtt5
        self.options = options
        self.bridge = bridge
        aws = options.aws
        self.endpoint = f"{aws.endpoint}:{aws.port}"
        self.reconnects = 0
        self.connected = False
        self._attempt = 0
        self._ever_connected = False
        self.subscribed = threading.Event()  # set once the broker has confirmed the subscriptions (or kept them)
        self._stopped = threading.Event()
        extra = {"ca_filepath": str(aws.ca)} if aws.ca else {}
        try:
            self.client = mqtt5_client_builder.mtls_from_path(
                endpoint=aws.endpoint,
                port=aws.port,
                cert_filepath=str(aws.cert),
                pri_key_filepath=str(aws.key),
                client_id=options.client_id,
                session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
                session_expiry_interval_sec=options.session_expiry_s,
                receive_maximum=min(options.max_in_flight, MAX_RECEIVE_MAXIMUM),
                keep_alive_interval_sec=options.keepalive_s,
                retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
                min_reconnect_delay_ms=int(RECONNECT_FIRST_DELAY_S * 1000),
                max_reconnect_delay_ms=int(RECONNECT_MAX_DELAY_S * 1000),
                on_publish_received=self._on_publish,
                on_lifecycle_connection_success=self._on_success,
                on_lifecycle_connection_failure=self._on_failure,
                on_lifecycle_disconnection=self._on_disconnection,
                on_lifecycle_stopped=lambda data: self._stopped.set(),
                **extra,
            )
        except Exception as exc:  # the CRT reports unreadable or mismatched PEM files as RuntimeError
            raise ConnectionError(f"mqtt bridge: cannot use the certificate {aws.cert} and key {aws.key} for {self.endpoint}: {exc}") from exc

    def start(self) -> None:
        """Starts connecting in the background."""
        self.client.start()

    def _on_success(self, data) -> None:
        session_present = bool(data.connack_packet and data.connack_packet.session_present)
        self.connected = True
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._attempt = 0
        self.bridge.connection_changed()
        if not session_present:
            subscribe = self._mqtt5.SubscribePacket(
                subscriptions=[self._mqtt5.Subscription(f, self._mqtt5.QoS.AT_LEAST_ONCE) for f in self.options.topic_filters]
            )
            # Never block here: this runs on the CRT event loop that delivers the SUBACK.
            self.client.subscribe(subscribe).add_done_callback(self._on_subscribed)
        else:
            self.subscribed.set()
        log.info("mqtt bridge: connected to %s (%s)", self.endpoint, "session resumed" if session_present else "new session")

    def _on_subscribed(self, future) -> None:
        error = future.exception()
        if error is not None:
            log.error("mqtt bridge: subscribing at %s failed: %s", self.endpoint, error)
            return
        refused = 0
        for topic_filter, code in zip(self.options.topic_filters, future.result().reason_codes, strict=False):
            if code.value >= 0x80 or code.value < 1:
                # AWS IoT answers a subscription its policy does not allow with a failure code.
                refused += 1
                log.error("mqtt bridge: %s refused the QoS 1 subscription to %s: %s (check the IoT policy)", self.endpoint, topic_filter, code.name)
        if not refused:
            log.info("mqtt bridge: subscribed to %s at QoS 1", ", ".join(self.options.topic_filters))
            self.subscribed.set()

    def _on_failure(self, data) -> None:
        self._attempt += 1
        log.warning(
            "mqtt bridge: connection attempt %d to %s failed: %s; next attempt in %g s",
            self._attempt, self.endpoint, data.exception, reconnect_delay(self._attempt),
        )

    def _on_disconnection(self, data) -> None:
        self.connected = False
        self.bridge.connection_changed()
        log.warning("mqtt bridge: disconnected from %s: %s", self.endpoint, data.exception)

    def _on_publish(self, data) -> None:
        packet = data.publish_packet
        token = None
        if packet.qos == self._mqtt5.QoS.AT_LEAST_ONCE:
            token = data.acquire_publish_acknowledgement_control()
        self.bridge.offer(packet.topic, bytes(packet.payload or b""), token)

    def ack(self, token: object) -> None:
        """Sends the PUBACK for a message (``None``: a QoS 0 message, nothing to send)."""
        if token is not None:
            self.client.invoke_publish_acknowledgement(token)

    def close(self, timeout_s: float = 10.0) -> None:
        """Disconnects cleanly; the session stays on the broker."""
        self.client.stop()
        self._stopped.wait(timeout_s)


# --- running -------------------------------------------------------------------------------------


class RunningBridge:
    """A started bridge: its transport, its Kafka producer and counters."""

    def __init__(self, bridge: MqttBridge, transport: PahoTransport | AwsIotTransport):
        self.bridge = bridge
        self.transport = transport

    @property
    def counters(self) -> dict[str, int]:
        """Counter snapshot (received, produced, rejected, failed)."""
        return self.bridge.counters.snapshot()

    def status(self, before: dict[str, int], interval_s: float) -> str:
        """The status line against an earlier counter snapshot."""
        return status_line(self.counters, before, interval_s, self.bridge.in_flight, self.transport.reconnects, self.transport.connected)

    def stop(self) -> bool:
        """Stops taking messages, waits for Kafka, acknowledges, disconnects.

        Returns:
            True when every taken message was confirmed and acknowledged before disconnecting.
        """
        drained = self.bridge.drain(self.bridge.options.drain_timeout_s)
        self.bridge.producer.flush(10)
        # PUBACKs were queued before the DISCONNECT, so they reach the broker first.
        self.transport.close()
        self.bridge.close()
        self.bridge.producer.close(10)
        return drained


def start_bridge(options: BridgeOptions) -> RunningBridge:
    """Creates the producer, the bridge and its transport, and starts them."""
    producer = RawProducer(options.bootstrap_servers, options.raw_topic, options.max_in_flight, **options.producer_config)
    bridge = MqttBridge(options, producer)
    transport = AwsIotTransport(options, bridge) if options.aws is not None else PahoTransport(options, bridge)
    bridge.transport = transport
    bridge.start()
    transport.start()
    return RunningBridge(bridge, transport)


def add_arguments(parser) -> None:
    """Adds the ``iotlink bridge mqtt`` options."""
    group = parser.add_argument_group("MQTT bridge")
    group.add_argument(
        "--topic-filter", action="append", metavar="FILTER",
        help=f"topic filter to subscribe to at QoS 1 (repeatable; default {DEFAULT_TOPIC_FILTER} and {TENANT_TOPIC_FILTER}, the "
        f"topics of tenants' devices, held to the tenant in the device registry, --device-registry); several bridges share "
        f"the load through a shared subscription, each started with its own --client-id and "
        f"--topic-filter '$share/<group>/{DEFAULT_TOPIC_FILTER}' (the broker hands each message to one of them)",
    )
    group.add_argument(
        "--client-id", default=DEFAULT_CLIENT_ID, help=f"MQTT client id of the persistent session (default {DEFAULT_CLIENT_ID}); unique per bridge"
    )
    group.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version (default 5)")
    group.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, metavar="N",
                       help=f"messages received and not yet acknowledged at most (MQTT 5 Receive Maximum; default {DEFAULT_MAX_IN_FLIGHT})")
    group.add_argument("--max-payload-bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES, metavar="BYTES",
                       help="larger payloads go to the dead-letter topic (default 1048576 = 1 MiB)")
    group.add_argument("--session-expiry", type=int, default=DEFAULT_SESSION_EXPIRY_S, metavar="SECONDS",
                       help="how long the broker keeps the session and queues messages while the bridge is away (MQTT 5; default 7 days)")
    group.add_argument("--keepalive", type=int, default=30, metavar="SECONDS", help="MQTT keep-alive (default 30)")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on Ctrl-C/SIGTERM, how long to wait for Kafka confirmations before disconnecting (default 30)")
    group.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS", help="status line period (default 1; 0: none)")
    auth = parser.add_argument_group("MQTT broker authentication and TLS (with --mqtt-url)")
    auth.add_argument("--username", help="MQTT user name (default: the user of --mqtt-url mqtt://user:password@host:port, "
                      "which --embedded fills in with the embedded broker's login)")
    auth.add_argument("--password", help="MQTT password (default $IOTLINK_MQTT_PASSWORD, else the password of --mqtt-url)")
    auth.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificate(s) that sign the broker certificate (default: system trust store)")
    auth.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate for mutual TLS")
    auth.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of the client certificate")
    auth.add_argument("--tls-insecure", action="store_true", help="do not check that the broker certificate names the host (testing only)")
    aws = parser.add_argument_group("AWS IoT Core (instead of --mqtt-url)")
    aws.add_argument("--aws-endpoint", metavar="HOST", help="account endpoint, e.g. abc123-ats.iot.eu-west-1.amazonaws.com")
    aws.add_argument("--aws-port", type=int, default=8883, metavar="PORT", help="endpoint port (default 8883)")
    aws.add_argument("--cert", type=Path, metavar="FILE", help="the bridge thing's certificate (PEM)")
    aws.add_argument("--key", type=Path, metavar="FILE", help="its private key (PEM)")
    aws.add_argument("--ca", type=Path, metavar="FILE", help="Amazon root CA (default: system trust store)")


def options_from_args(args, settings) -> BridgeOptions:
    """Builds the bridge options from the command line and the settings.

    Raises:
        ValueError: naming the option that is missing or wrong.
    """
    import os

    from connectors.postgres import device_tenants

    aws = None
    broker = None
    if args.aws_endpoint:
        missing = [name for name, value in (("--cert", args.cert), ("--key", args.key)) if value is None]
        if missing:
            raise ValueError(f"bridge mqtt: --aws-endpoint needs {' and '.join(missing)}")
        aws = AwsIotOptions(args.aws_endpoint, args.cert, args.key, args.ca, args.aws_port)
    elif settings.mqtt_url:
        broker = parse_broker_url(settings.mqtt_url)
    else:
        raise ValueError("bridge mqtt: no broker: give --mqtt-url (or --embedded, or --aws-endpoint with --cert and --key)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("bridge mqtt: --tls-cert and --tls-key go together")
    if not 1 <= args.max_in_flight <= MAX_RECEIVE_MAXIMUM:
        raise ValueError(f"bridge mqtt: --max-in-flight must be between 1 and {MAX_RECEIVE_MAXIMUM}, got {args.max_in_flight}")
    if args.max_payload_bytes < 1:
        raise ValueError(f"bridge mqtt: --max-payload-bytes must be positive, got {args.max_payload_bytes}")
    if aws is not None and args.mqtt_protocol != "5":
        raise ValueError("bridge mqtt: the AWS IoT Core connection uses MQTT 5 (manual PUBACKs); drop --mqtt-protocol")
    return BridgeOptions(
        bootstrap_servers=settings.bootstrap_servers,
        raw_topic=settings.topics.raw,
        dlq_topic=settings.topics.dlq,
        broker=broker,
        aws=aws,
        topic_filters=tuple(args.topic_filter or (DEFAULT_TOPIC_FILTER, TENANT_TOPIC_FILTER)),
        client_id=args.client_id,
        protocol=args.mqtt_protocol,
        username=args.username,
        password=args.password if args.password is not None else os.environ.get("IOTLINK_MQTT_PASSWORD"),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_insecure=args.tls_insecure,
        keepalive_s=args.keepalive,
        session_expiry_s=args.session_expiry,
        max_in_flight=args.max_in_flight,
        max_payload_bytes=args.max_payload_bytes,
        drain_timeout_s=args.drain_timeout,
        device_tenants=device_tenants(settings.device_registry) if settings.device_registry else None,
    )
