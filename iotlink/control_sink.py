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

from connectors.shadow_aws import AwsIotShadowLink
from connectors.shadow_link import MqttShadowLink, ShadowLink
from operators.shadow import ApplyTracker


@dataclass
class ControlStats:
    """Counters of the sink."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    timed_out: int = 0
    applied: int = 0
    not_applied: int = 0


def open_shadow_link(settings, on_reported=None) -> ShadowLink:
    """The shadow transport the settings choose (``shadow.backend``)."""
    shadow = settings.shadow
    if shadow.backend == "aws-iot":
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
        from connectors.postgres import migrated_connection

        conn = migrated_connection(settings.postgres_url)
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
