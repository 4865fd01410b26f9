"""``iotlink control-sink``: shadow commands from ``iotlink.commands`` to the device shadows.

Each command (an automatic action of a critical alarm) becomes an AWS IoT Device Shadow update
``$aws/things/{device}/shadow/update`` with ``{"state": {"desired": …}, "clientToken":
command_id}``; the shadow's answer (``accepted`` / ``rejected``, or ``timed_out`` without one)
is awaited on ``/update/accepted|rejected``; after acceptance the sink follows the device's
reports and records ``applied`` once the reported state holds the desired values, or
``timed_out`` (detail: not reported) after ``shadow.apply_timeout_s``. Each outcome is an
idempotent upsert into PostgreSQL ``control_cmd`` keyed by command id. Kafka offsets are committed only after the outcome is known, and
a command re-sent after a crash carries the same clientToken, which the shadow does not apply
twice: at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from operators.shadow import ApplyTracker, desired_update, parse_shadow_topic


@dataclass
class ControlStats:
    """Counters of the sink."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    timed_out: int = 0
    applied: int = 0
    not_applied: int = 0


ANSWER_TOPICS = ("$aws/things/+/shadow/update/accepted", "$aws/things/+/shadow/update/rejected")


class ShadowLink:
    """The transport-independent half of talking to device shadows.

    A transport (plain MQTT, AWS IoT Core) subscribes to :data:`ANSWER_TOPICS`, passes every
    message to :meth:`handle_message` and implements :meth:`_publish` and :meth:`close`.
    Answers are matched to requests by clientToken; accepted updates that carry reported state
    go to ``on_reported(thing, reported_patch)``.
    """

    def __init__(self, on_reported=None):
        self.on_reported = on_reported
        self.answers: dict[str, tuple[str, dict]] = {}
        self._abandoned: set[str] = set()
        self.cond = threading.Condition()

    def handle_message(self, topic: str, payload: bytes) -> None:
        """Routes one message from an answer topic."""
        parsed = parse_shadow_topic(topic)
        if parsed is None:
            return
        thing, operation = parsed
        try:
            answer = json.loads(payload)
        except ValueError:
            return
        if not isinstance(answer, dict):
            return
        if operation not in ("update/accepted", "update/rejected"):
            return
        accepted = operation == "update/accepted"
        state = answer.get("state") if accepted else None
        reported = state.get("reported") if isinstance(state, dict) else None
        if isinstance(reported, dict) and self.on_reported is not None:
            self.on_reported(thing, reported)
        token = answer.get("clientToken")
        if token is None:
            return
        with self.cond:
            if token in self._abandoned:  # its sender timed out already
                self._abandoned.discard(token)
                return
            self.answers[token] = ("accepted" if accepted else "rejected", answer)
            self.cond.notify_all()

    def send(self, command: dict, timeout_s: float) -> tuple[str, dict | None]:
        """Publishes one command; returns (accepted | rejected | timed_out, answer)."""
        topic, request = desired_update(command)
        token = request["clientToken"]
        self._publish(topic, json.dumps(request).encode(), timeout_s)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while token not in self.answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned.add(token)
                    return "timed_out", None
                self.cond.wait(remaining)
            return self.answers.pop(token)

    def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Disconnects."""
        raise NotImplementedError


class MqttShadowLink(ShadowLink):
    """Shadows on any MQTT broker (``mqtt://`` or ``mqtts://``), e.g. served by ``iotlink shadow-service``."""

    def __init__(self, mqtt_url: str, client_id: str = "iotlink-control-sink", on_reported=None, timeout_s: float = 10.0):
        import paho.mqtt.client as mqtt

        super().__init__(on_reported)
        url = urlparse(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if url.scheme == "mqtts":
            self.client.tls_set()
        self._subscribed = 0
        self.ready = threading.Event()
        # Subscribing before CONNACK is silently refused by some brokers: subscribe on connect.
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in ANSWER_TOPICS]
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, m: self.handle_message(m.topic, m.payload)
        self.client.connect(url.hostname or "127.0.0.1", url.port or (8883 if url.scheme == "mqtts" else 1883))
        self.client.loop_start()
        if not self.ready.wait(timeout_s):
            self.close()
            raise ConnectionError(f"control sink: cannot subscribe on {mqtt_url}")

    def _on_subscribe(self, client, userdata, mid, codes, properties):
        self._subscribed += 1
        if self._subscribed >= len(ANSWER_TOPICS):
            self.ready.set()

    def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout_s)

    def close(self) -> None:
        """Disconnects."""
        self.client.loop_stop()
        self.client.disconnect()


def open_shadow_link(settings, on_reported=None) -> ShadowLink:
    """The shadow transport the settings choose (``shadow.backend``)."""
    shadow = settings.shadow
    if shadow.backend == "aws-iot":
        from iotlink.shadow_aws import AwsIotShadowLink

        return AwsIotShadowLink(shadow, on_reported=on_reported)
    if not settings.mqtt_url:
        raise ValueError("control sink: no MQTT broker: give --mqtt-url (or --embedded), or set shadow.backend: aws-iot")
    return MqttShadowLink(settings.mqtt_url, shadow.client_id, on_reported=on_reported, timeout_s=shadow.answer_timeout_s)


def record_outcome(conn, command: dict, status: str, detail: str | None) -> None:
    """Upserts the command and its outcome into ``control_cmd``: replays overwrite, never
    duplicate, and nothing overwrites ``applied`` (a re-sent command is accepted again)."""
    conn.execute(
        "INSERT INTO control_cmd (command_id, device_id, alarm_id, rule_id, action, desired, issued_ts, status, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (command_id) DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail, updated_at = now() "
        "WHERE control_cmd.status <> 'applied'",
        (
            command["command_id"], command["device_id"], command.get("alarm_id"), command.get("rule_id"), command["action"],
            json.dumps(command["desired"]), command["issued_ts"], status, detail,
        ),
    )


def run_control_sink(settings, stop: threading.Event, stats: ControlStats | None = None) -> ControlStats:
    """Consumes ``iotlink.commands`` until ``stop`` is set; see the module docstring."""
    from kafka import KafkaConsumer

    stats = stats if stats is not None else ControlStats()
    shadow = settings.shadow
    tracker, lock = ApplyTracker(shadow.apply_timeout_s), threading.Lock()
    outcomes: list[tuple[dict, str, str | None]] = []  # from the MQTT thread, recorded by the loop

    def on_reported(thing: str, patch: dict) -> None:
        with lock:
            for command in tracker.reported(thing, patch):
                outcomes.append((command, "applied", None))

    link = open_shadow_link(settings, on_reported=on_reported)
    conn = None
    if settings.postgres_url:
        import psycopg

        from connectors.postgres import apply_migrations

        apply_migrations(settings.postgres_url)
        conn = psycopg.connect(settings.postgres_url, autocommit=True)
    consumer = KafkaConsumer(
        settings.topics.commands,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.flink.group_id}-control-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )

    def record(command: dict, status: str, detail: str | None) -> None:
        setattr(stats, status, getattr(stats, status) + 1)
        if conn is not None:
            record_outcome(conn, command, "timed_out" if status == "not_applied" else status, detail)

    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for message in records:
                    command = json.loads(message.value)
                    stats.sent += 1
                    with lock:
                        tracker.expect(command, time.monotonic())
                    status, answer = link.send(command, shadow.answer_timeout_s)
                    if status != "accepted":
                        with lock:
                            tracker.forget(command)
                    record(command, status, None if answer is None or status == "accepted" else json.dumps(answer))
            if batch:
                consumer.commit()
            with lock:
                done, outcomes[:] = list(outcomes), []
                late = tracker.expired(time.monotonic())
            for command, status, detail in done:
                record(command, status, detail)
            for command in late:
                record(command, "not_applied", f"device did not report the desired state within {shadow.apply_timeout_s:g} s")
    finally:
        consumer.close()
        link.close()
        if conn is not None:
            conn.close()
    return stats
