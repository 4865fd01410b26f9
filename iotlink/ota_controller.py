"""``iotlink ota controller``: drives firmware rollouts (``docs/ota.md``).

A service of ours, not a Flink job: a rollout is a few decisions a second over rows that
people change too (start, pause, abort) and that must be read back exactly as written; its
clock is the wall clock (device deadlines), and its output is a few commands per device. It
keeps no state of its own: each pass reads the rollout from PostgreSQL, applies the devices'
reports and the deadlines, starts stages, sends commands, evaluates the gates, and writes what
changed. Commands go to ``iotlink.commands`` with deterministic ids, so the control sink applies
each to the device shadow once (``control_cmd`` is keyed by them and the shadow ignores a
clientToken it already applied); a device's outcome, its ticket and its events are written in
one transaction. Kill it anywhere: the next pass picks up where it was.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import orjson

from connectors import ota_store
from connectors.ota_store import DeviceRow, Rollout
from connectors.ticket_store import open_firmware_ticket
from operators.ota import (
    alarm_rise,
    command_id,
    count_stage,
    firmware_desired,
    gate,
    reported_firmware,
    rollback_reason_for_gate,
    selected,
    skip_reason,
    stage_members,
    update_outcome,
)

log = logging.getLogger(__name__)
MIN_ALARM_SAMPLE = 5  # updated devices needed before an alarm rise can roll back
STALE_SEND_MS = 10_000  # an update command held back longer than this gets a new deadline
REQUEST_STATE_TIMEOUT_S = 5.0


@dataclass
class ControllerStats:
    """What the controller did, for status lines."""

    passes: int = 0
    commands: int = 0
    rollbacks: int = 0
    outcomes: dict = field(default_factory=dict)
    errors: int = 0  # passes that failed (and were tried again)
    last_error: str | None = None


@dataclass(frozen=True)
class ControllerIO:
    """What the controller talks to (tests hand in their own).

    Attributes:
        conn: An autocommit psycopg connection to the platform database.
        fleet: Device id -> product id (the device registry).
        send_records: Writes ``(topic, key, value)`` records and returns once Kafka confirmed
            them all (raises otherwise).
        request_state: Asks a device shadow for its whole state (the answer comes as a report).
        commands_topic: Where shadow commands go (the control sink reads them).
        notifications_topic: Where ticket notifications go.
        clock_ms: Now, epoch ms.
        reconnect: Opens a new database connection when the one in use closed (a restart).
    """

    conn: object
    fleet: dict[str, str]
    send_records: Callable[[list[tuple[str, bytes, bytes]]], None]
    request_state: Callable[[str], None]
    commands_topic: str
    notifications_topic: str
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    reconnect: Callable[[], object] | None = None


class RolloutController:
    """Drives every active rollout one pass at a time (:meth:`run_pass`)."""

    def __init__(self, io: ControllerIO):
        self.io = io
        self.stats = ControllerStats()
        self._reports: deque[tuple[str, str | None, str | None, int]] = deque()
        self._caught_up: set[str] = set()

    def on_reported(self, thing: str, reported: dict) -> None:
        """A device's reported state (patch or whole); thread-safe, applied on the next pass."""
        version, error = reported_firmware(reported)
        if version is not None or error is not None:
            self._reports.append((thing, version, error, self.io.clock_ms()))

    def run(self, stop: threading.Event, interval_s: float = 0.5, max_backoff_s: float = 30.0) -> ControllerStats:
        """Runs passes until ``stop`` is set. A failing pass (PostgreSQL or Kafka away) is logged and
        tried again after a growing pause; nothing it did halfway is lost (see the module docstring)."""
        pause = interval_s
        while not stop.is_set():
            try:
                self.run_pass()
                pause = interval_s
            except Exception as exc:  # noqa: BLE001 - a service outlives its dependencies' outages
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                log.warning("ota controller: pass failed, trying again in %.0f s: %s", pause, self.stats.last_error)
                if self.io.reconnect is not None and getattr(self.io.conn, "closed", False):
                    with contextlib.suppress(Exception):
                        self.io = replace(self.io, conn=self.io.reconnect())
                pause = min(max(pause * 2, 1.0), max_backoff_s)
            stop.wait(pause)
        return self.stats

    def run_pass(self) -> None:
        """One pass over every active rollout."""
        popped = []
        while self._reports:
            popped.append(self._reports.popleft())
        reports: dict[str, list[tuple[str | None, str | None, int]]] = {}
        for thing, version, error, at in popped:
            reports.setdefault(thing, []).append((version, error, at))
        try:
            for release_id in ota_store.active_rollouts(self.io.conn):
                rollout = ota_store.load_rollout(self.io.conn, release_id)
                if rollout is not None:
                    self._advance(rollout, reports)
        except BaseException:
            # Judging a report again is harmless; losing one is not.
            self._reports.extendleft(reversed(popped))
            raise
        self.stats.passes += 1

    # -- one rollout ---------------------------------------------------------------------------

    def _advance(self, rollout: Rollout, reports: dict) -> None:
        release_id = rollout.release.release_id
        rows = ota_store.device_rows(self.io.conn, release_id)
        if release_id not in self._caught_up:
            # Reports that came while no controller listened: ask the shadows of open devices.
            for row in rows.values():
                if row.status == "in_progress" or row.rollback == "rolling_back":
                    self.io.request_state(row.device_id)
            self._caught_up.add(release_id)
        self._apply_reports_and_deadlines(rollout, rows, reports)
        if rollout.status == "running":
            self._run_stage(rollout, rows)
        rollout = ota_store.load_rollout(self.io.conn, release_id)
        if rollout.status == "rolled_back":
            self._send(rollout, ota_store.device_rows(self.io.conn, release_id), rollback=True)

    def _apply_reports_and_deadlines(self, rollout: Rollout, rows: dict[str, DeviceRow], reports: dict) -> None:
        release, now = rollout.release, self.io.clock_ms()
        for device_id, row in rows.items():
            changed = row
            for version, error, at in reports.get(device_id, ()):
                changed = self._judge(release, replace(changed, reported_version=version or changed.reported_version, error=error), at)
            changed = self._judge(release, changed, now)
            if changed != row:
                self._record_change(rollout, row, changed, now)
                rows[device_id] = changed

    def _judge(self, release, row: DeviceRow, at: int) -> DeviceRow:
        if row.status == "in_progress" and row.command_sent:
            if row.rollback is None:
                status = update_outcome("in_progress", release.target.version, row.reported_version, row.error, row.deadline_ts, at)
            else:
                # Told to go back while installing: the install's own report ends the update; a
                # rollback that completes first cancels it.
                status = update_outcome("in_progress", release.target.version, row.reported_version, row.error, row.deadline_ts, at)
                if status != "failed" or not row.error:
                    status = {"failed": "in_progress", "timed_out": "cancelled"}.get(status, status)
            row = replace(row, status=status)
        if row.rollback == "rolling_back" and row.rollback_sent:
            state = update_outcome("rolling_back", release.previous.version, row.reported_version, row.error, row.rollback_deadline_ts, at)
            row = replace(row, rollback=state)
            if state != "rolling_back" and row.status == "in_progress":
                row = replace(row, status="cancelled")
        return row

    def _record_change(self, rollout: Rollout, before: DeviceRow, after: DeviceRow, now: int) -> None:
        release = rollout.release
        records = []
        update_failed = after.status in ("failed", "timed_out") and before.status != after.status
        rollback_failed = after.rollback == "rollback_failed" and before.rollback != after.rollback
        failed = update_failed or rollback_failed
        if failed:
            reason = after.error or (
                f"still on {after.reported_version} after the deadline" if after.reported_version else "no report before the deadline"
            )
            if rollback_failed:
                reason = f"rollback to {release.previous.version} failed: {reason}"
            ticket_id = f"ota:{release.release_id}:{after.device_id}"
            records.append((self.io.notifications_topic, after.device_id.encode(), orjson.dumps({
                "notification_id": ticket_id, "kind": "ticket", "event": "FIRMWARE_FAILED", "severity": "high",
                "title": f"firmware {release.target.version} on {after.device_id}: {reason}",
                "device_id": after.device_id, "product_id": release.product_id, "release_id": release.release_id,
                "device_ts": now, "values": {"status": after.status, "reported_version": after.reported_version, "error": after.error},
            })))
        if records:
            # Before the transaction: a crash in between sends it again (same id), never loses it.
            self.io.send_records(records)
        with self.io.conn.transaction():
            ota_store.upsert_device(self.io.conn, release.release_id, after)
            if before.status != after.status:
                ota_store.record_event(self.io.conn, release.release_id, after.status, now, after.stage, after.device_id,
                                       {"reported_version": after.reported_version, "error": after.error})
                self.stats.outcomes[after.status] = self.stats.outcomes.get(after.status, 0) + 1
            if before.rollback != after.rollback and after.rollback in ("rolled_back", "rollback_failed"):
                ota_store.record_event(self.io.conn, release.release_id, after.rollback, now, after.stage, after.device_id,
                                       {"reported_version": after.reported_version, "error": after.error})
            if failed:
                open_firmware_ticket(self.io.conn, release.release_id, after.device_id, release.product_id, now, {
                    "reason": reason, "status": after.rollback if rollback_failed else after.status, "version": release.target.version,
                })

    def _run_stage(self, rollout: Rollout, rows: dict[str, DeviceRow]) -> None:
        release, index = rollout.release, rollout.stage
        stage = release.stages[index]
        if rollout.stage_started_ts is None:
            rows = self._start_stage(rollout, rows)
        self._send(rollout, rows, rollback=False)
        counts = count_stage([r.status for r in rows.values() if r.stage == index])
        decision = gate(counts, stage.min_success_rate)
        reason = rollback_reason_for_gate(stage, counts) if decision == "rollback" else self._alarm_rise_reason(rollout, rows)
        now = self.io.clock_ms()
        if reason is not None:
            self._roll_back(rollout, rows, reason, now)
        elif decision == "promote":
            last = index + 1 >= len(release.stages)
            with self.io.conn.transaction():
                moved = ota_store.set_rollout(self.io.conn, release.release_id, "completed" if last else "running",
                                              index if last else index + 1, rollout.stage_started_ts if last else None, None,
                                              only_from=("running",))
                if moved:
                    ota_store.record_event(self.io.conn, release.release_id, "completed" if last else "promoted", now, index,
                                           detail=counts.as_dict())

    def _start_stage(self, rollout: Rollout, rows: dict[str, DeviceRow]) -> dict[str, DeviceRow]:
        release, index, now = rollout.release, rollout.stage, self.io.clock_ms()
        fleet = selected(release, self.io.fleet)
        if not fleet and not rows:
            # Nothing to update is a mistake (product id, patterns, registry), not a success.
            reason = f"no device of product {release.product_id} matches {', '.join(release.devices)} in the device registry"
            with self.io.conn.transaction():
                if ota_store.set_rollout(self.io.conn, release.release_id, "aborted", index, None, reason, only_from=("running",)):
                    ota_store.record_event(self.io.conn, release.release_id, "aborted", now, index, detail={"reason": reason})
            return rows
        members = stage_members(release, fleet)[index]
        # Devices skipped by an earlier stage get another chance in this one.
        retry = [d for d, r in rows.items() if r.status == "skipped" and r.stage < index]
        candidates = sorted(set(members) - set(rows) | set(retry))
        critical = ota_store.critical_alarm_devices(self.io.conn, candidates)
        seen = ota_store.last_seen(self.io.conn, candidates)
        deadline = now + int(release.device_timeout_s * 1000)
        with self.io.conn.transaction():
            if not ota_store.set_rollout(self.io.conn, release.release_id, "running", index, now, None, only_from=("running",)):
                return rows  # paused or aborted meanwhile: this stage starts later, or never
            for device_id in candidates:
                why = skip_reason(device_id, critical, seen, now, release.offline_after_s)
                if why is not None:
                    row = DeviceRow(device_id, index, "skipped", detail=why)
                    ota_store.record_event(self.io.conn, release.release_id, "skipped", now, index, device_id, {"reason": why})
                else:
                    row = DeviceRow(device_id, index, "in_progress", sent_ts=now, deadline_ts=deadline)
                ota_store.upsert_device(self.io.conn, release.release_id, row)
                rows[device_id] = row
            ota_store.record_event(self.io.conn, release.release_id, "stage_started", now, index, detail={
                "stage": release.stages[index].name, "devices": len(candidates),
                "skipped": sum(1 for d in candidates if rows[d].status == "skipped"),
            })
        return rows

    def _alarm_rise_reason(self, rollout: Rollout, rows: dict[str, DeviceRow]) -> str | None:
        release = rollout.release
        updated = {d: r.sent_ts for d, r in rows.items() if r.status == "succeeded"}
        if len(updated) < MIN_ALARM_SAMPLE:
            return None
        since = min(updated.values())
        others = [d for d in selected(release, self.io.fleet) if d not in rows]
        alarmed = ota_store.alarmed_since(self.io.conn, {**updated, **dict.fromkeys(others, since)})
        rise = alarm_rise(len(alarmed & set(updated)), len(updated), len(alarmed & set(others)), len(others))
        if rise is None or rise <= release.max_alarm_rise:
            return None
        return (f"alarms rose among updated devices: {len(alarmed & set(updated))} of {len(updated)} updated against "
                f"{len(alarmed & set(others))} of {len(others)} others ({rise:+.1%} > {release.max_alarm_rise:.0%})")

    def _roll_back(self, rollout: Rollout, rows: dict[str, DeviceRow], reason: str, now: int) -> None:
        release = rollout.release
        deadline = now + int(release.device_timeout_s * 1000)
        self.io.send_records([(self.io.notifications_topic, release.release_id.encode(), orjson.dumps({
            "notification_id": f"ota:{release.release_id}:rollback", "kind": "notification", "event": "FIRMWARE_ROLLBACK",
            "severity": "high", "title": f"firmware {release.target.version} rolled back: {reason}", "product_id": release.product_id,
            "release_id": release.release_id, "device_ts": now, "values": {"reason": reason},
        }))])
        with self.io.conn.transaction():
            if not ota_store.set_rollout(self.io.conn, release.release_id, "rolled_back", rollout.stage, rollout.stage_started_ts, reason,
                                         only_from=("running",)):
                return
            for row in rows.values():
                if row.command_sent:  # every device told to update, whatever it answered, is told to go back
                    ota_store.upsert_device(self.io.conn, release.release_id, replace(row, rollback="rolling_back",
                                                                                       rollback_deadline_ts=deadline))
            ota_store.record_event(self.io.conn, release.release_id, "rollback_started", now, rollout.stage, detail={"reason": reason})
        self.stats.rollbacks += 1

    def _send(self, rollout: Rollout, rows: dict[str, DeviceRow], rollback: bool) -> None:
        release = rollout.release
        if rollback:
            todo = [r for r in rows.values() if r.rollback == "rolling_back" and not r.rollback_sent]
        else:
            todo = [r for r in rows.values() if r.status == "in_progress" and not r.command_sent]
        if not todo:
            return
        now = self.io.clock_ms()
        timeout_ms = int(release.device_timeout_s * 1000)
        if not rollback and any(now - r.sent_ts > STALE_SEND_MS for r in todo):
            # Held back (a pause, a controller down): each device's time starts when it is told.
            with self.io.conn.transaction():
                for i, row in enumerate(todo):
                    if now - row.sent_ts > STALE_SEND_MS:
                        todo[i] = replace(row, sent_ts=now, deadline_ts=now + timeout_ms)
                        ota_store.upsert_device(self.io.conn, release.release_id, todo[i])
        records = []
        for row in todo:
            artifact, issued, until = (release.previous, row.rollback_deadline_ts - int(release.device_timeout_s * 1000),
                                       row.rollback_deadline_ts) if rollback else (release.target, row.sent_ts, row.deadline_ts)
            command = {
                "command_id": command_id(release.release_id, row.device_id, "rollback" if rollback else "update"),
                "device_id": row.device_id, "alarm_id": None, "rule_id": None,
                "action": "firmware_rollback" if rollback else "firmware_update",
                "desired": firmware_desired(artifact, until), "issued_ts": issued, "release_id": release.release_id,
            }
            records.append((self.io.commands_topic, row.device_id.encode(), orjson.dumps(command)))
        self.io.send_records(records)
        with self.io.conn.transaction():
            for row in todo:
                sent = replace(row, rollback_sent=True) if rollback else replace(row, command_sent=True)
                ota_store.upsert_device(self.io.conn, release.release_id, sent)
                ota_store.record_event(self.io.conn, release.release_id, "rollback_sent" if rollback else "command_sent", now,
                                       row.stage, row.device_id)
                rows[row.device_id] = sent
        self.stats.commands += len(todo)


def kafka_sender(bootstrap_servers: str, timeout_s: float = 30.0):
    """A ``send_records`` for :class:`ControllerIO` over an idempotent librdkafka producer, and its
    ``close``."""
    from connectors.raw_producer import DeliveryError, RawProducer

    producer = RawProducer(bootstrap_servers, topic="", max_in_flight=10_000, linger_ms=1)

    def send_records(records: list[tuple[str, bytes, bytes]]) -> None:
        done, errors = threading.Semaphore(0), []

        def on_done(exc):
            if exc is not None:
                errors.append(exc)
            done.release()

        for topic, key, value in records:
            producer.send_record(topic, key, value, on_done)
        deadline = time.monotonic() + timeout_s
        for _ in records:
            if not done.acquire(timeout=max(deadline - time.monotonic(), 0)):
                raise DeliveryError(f"Kafka did not confirm {len(records)} records within {timeout_s:g} s")
        if errors:
            raise DeliveryError(f"Kafka refused {len(errors)} of {len(records)} records: {errors[0]}")

    return send_records, producer.close
