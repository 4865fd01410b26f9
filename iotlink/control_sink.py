"""``iotlink control-sink``: shadow commands from ``iotlink.commands`` to the device shadows.

Each command (an automatic action of a critical alarm) becomes an AWS IoT Device Shadow update
``$aws/things/{device}/shadow/update`` with ``{"state": {"desired": …}, "clientToken":
command_id}``; the outcome (``accepted`` / ``rejected`` / ``timed_out``) is awaited on
``/update/accepted|rejected`` and recorded in PostgreSQL ``control_cmd`` (an idempotent
upsert keyed by command id). Kafka offsets are committed only after the outcome is known, and
a command re-sent after a crash carries the same clientToken, which the shadow does not apply
twice: at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from operators.shadow import desired_update

CONTROL_CMD_DDL = """
CREATE TABLE IF NOT EXISTS control_cmd (
    command_id  text PRIMARY KEY,
    device_id   text NOT NULL,
    alarm_id    text,
    rule_id     text,
    action      text NOT NULL,
    desired     jsonb NOT NULL,
    issued_ts   bigint NOT NULL,
    status      text NOT NULL,
    detail      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
)"""


@dataclass
class ControlStats:
    """Counters of the sink."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    timed_out: int = 0


class ShadowPublisher:
    """Publishes desired-state updates over MQTT and waits for the shadow's answer per clientToken."""

    def __init__(self, mqtt_url: str, client_id: str = "iotlink-control-sink"):
        import paho.mqtt.client as mqtt

        url = urlparse(mqtt_url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.answers: dict[str, tuple[str, dict]] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe("$aws/things/+/shadow/update/accepted", qos=1),
            c.subscribe("$aws/things/+/shadow/update/rejected", qos=1),
        )
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._subscribed = 0
        self.client.connect(url.hostname or "127.0.0.1", url.port or 1883)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise ConnectionError(f"control sink: cannot subscribe on {mqtt_url}")

    def _on_subscribe(self, client, userdata, mid, codes, properties):
        self._subscribed += 1
        if self._subscribed >= 2:
            self.ready.set()

    def _on_message(self, client, userdata, message):
        try:
            answer = json.loads(message.payload)
        except ValueError:
            return
        token = answer.get("clientToken")
        if token is None:
            return
        with self.cond:
            self.answers[token] = ("accepted" if message.topic.endswith("/accepted") else "rejected", answer)
            self.cond.notify_all()

    def send(self, command: dict, timeout_s: float) -> tuple[str, dict | None]:
        """Publishes one command; returns (accepted | rejected | timed_out, answer)."""
        topic, request = desired_update(command)
        token = request["clientToken"]
        self.client.publish(topic, json.dumps(request), qos=1).wait_for_publish(timeout_s)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while token not in self.answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timed_out", None
                self.cond.wait(remaining)
            return self.answers.pop(token)

    def close(self) -> None:
        """Disconnects."""
        self.client.loop_stop()
        self.client.disconnect()


def record_outcome(conn, command: dict, status: str, detail: str | None) -> None:
    """Upserts the command and its outcome into ``control_cmd`` (replays overwrite, never duplicate)."""
    conn.execute(
        "INSERT INTO control_cmd (command_id, device_id, alarm_id, rule_id, action, desired, issued_ts, status, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (command_id) DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail, updated_at = now()",
        (
            command["command_id"], command["device_id"], command.get("alarm_id"), command.get("rule_id"), command["action"],
            json.dumps(command["desired"]), command["issued_ts"], status, detail,
        ),
    )


def run_control_sink(settings, stop: threading.Event, timeout_s: float = 10.0, stats: ControlStats | None = None) -> ControlStats:
    """Consumes ``iotlink.commands`` until ``stop`` is set; see the module docstring."""
    from kafka import KafkaConsumer

    stats = stats if stats is not None else ControlStats()
    publisher = ShadowPublisher(settings.mqtt_url)
    conn = None
    if settings.postgres_url:
        import psycopg

        conn = psycopg.connect(settings.postgres_url, autocommit=True)
        conn.execute(CONTROL_CMD_DDL)
    consumer = KafkaConsumer(
        settings.topics.commands,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.flink.group_id}-control-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    command = json.loads(record.value)
                    stats.sent += 1
                    status, answer = publisher.send(command, timeout_s)
                    setattr(stats, status, getattr(stats, status) + 1)
                    if conn is not None:
                        detail = None if answer is None or status == "accepted" else json.dumps(answer)
                        record_outcome(conn, command, status, detail)
            if batch:
                consumer.commit()
    finally:
        consumer.close()
        publisher.close()
        if conn is not None:
            conn.close()
    return stats
