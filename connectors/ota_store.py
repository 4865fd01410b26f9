"""Firmware releases and rollouts in PostgreSQL (``sql/postgres/004_firmware_rollout.sql``).

Every write is idempotent: events are keyed by deterministic ids (``ON CONFLICT DO NOTHING``),
device rows by (release, device), status changes are guarded by the state they leave. The
controller (``iotlink/ota_controller.py``) may stop between any two statements and pick up
where it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from operators.ota import ROLLOUT_STATES, Release, StageCounts, count_stage

# Which operator actions a rollout state allows, and the state each leads to.
TRANSITIONS = {
    "start": ({"created"}, "running"),
    "pause": ({"running"}, "paused"),
    "resume": ({"paused"}, "running"),
    "abort": ({"created", "running", "paused"}, "aborted"),
}
ACTIVE_STATES = ("running", "paused", "rolled_back")


class RolloutError(ValueError):
    """An operator request the rollout's state does not allow, or an unknown release."""


@dataclass
class DeviceRow:
    """One device of a rollout (a row of ``ota_devices``)."""

    device_id: str
    stage: int
    status: str
    rollback: str | None = None
    sent_ts: int | None = None
    deadline_ts: int | None = None
    rollback_deadline_ts: int | None = None
    reported_version: str | None = None
    error: str | None = None
    command_sent: bool = False
    rollback_sent: bool = False
    detail: str | None = None


@dataclass
class Rollout:
    """A release with its rollout's state."""

    release: Release
    status: str
    stage: int
    stage_started_ts: int | None
    reason: str | None


def _json(value) -> str:
    return orjson.dumps(value).decode()


def create_release(conn, release: Release, now_ms: int) -> bool:
    """Stores a release and its rollout (``created``); False when the same release exists already.

    Raises:
        RolloutError: a different release with the same id exists.
    """
    spec = release.model_dump(mode="json")
    with conn.transaction():
        row = conn.execute("SELECT spec FROM firmware_releases WHERE release_id = %s", (release.release_id,)).fetchone()
        if row is not None:
            if row[0] != spec:
                raise RolloutError(f"release {release.release_id!r} exists with other contents; give the new one another id")
            return False
        conn.execute(
            "INSERT INTO firmware_releases (release_id, product_id, version, previous_version, spec) VALUES (%s, %s, %s, %s, %s)",
            (release.release_id, release.product_id, release.target.version, release.previous.version, _json(spec)),
        )
        conn.execute("INSERT INTO ota_rollouts (release_id, status) VALUES (%s, 'created')", (release.release_id,))
        record_event(conn, release.release_id, "created", now_ms, detail={"version": release.target.version})
    return True


def change_status(conn, release_id: str, action: str, now_ms: int, by: str | None = None) -> str:
    """Applies an operator action (start, pause, resume, abort); returns the new state.

    Raises:
        RolloutError: unknown release, or an action its state does not allow.
    """
    allowed, target = TRANSITIONS[action]
    with conn.transaction():
        row = conn.execute("SELECT status FROM ota_rollouts WHERE release_id = %s FOR UPDATE", (release_id,)).fetchone()
        if row is None:
            raise RolloutError(f"no release {release_id!r} (iotlink ota list shows them)")
        if row[0] not in allowed:
            raise RolloutError(f"cannot {action} release {release_id!r}: it is {row[0]}")
        conn.execute(
            "UPDATE ota_rollouts SET status = %s, stage_started_ts = CASE WHEN %s = 'start' THEN NULL ELSE stage_started_ts END, "
            "updated_at = now() WHERE release_id = %s",
            (target, action, release_id),
        )
        # Actions may repeat (pause, resume, pause): their ids carry the time.
        record_event(conn, release_id, action, now_ms, event_id=f"{release_id}:{action}:{now_ms}", detail={"by": by} if by else None)
    return target


def load_rollout(conn, release_id: str) -> Rollout | None:
    """The release and its rollout's state, or None."""
    row = conn.execute(
        "SELECT f.spec, r.status, r.stage, r.stage_started_ts, r.reason FROM firmware_releases f "
        "JOIN ota_rollouts r USING (release_id) WHERE release_id = %s",
        (release_id,),
    ).fetchone()
    if row is None:
        return None
    return Rollout(Release.model_validate(row[0]), row[1], row[2], row[3], row[4])


def active_rollouts(conn) -> list[str]:
    """Releases whose rollout the controller follows: running, paused, or rolling back."""
    rows = conn.execute(
        "SELECT r.release_id FROM ota_rollouts r WHERE r.status IN ('running', 'paused') OR (r.status = 'rolled_back' AND EXISTS "
        "(SELECT 1 FROM ota_devices d WHERE d.release_id = r.release_id AND (d.rollback = 'rolling_back' OR d.status = 'in_progress'))) "
        "ORDER BY r.release_id"
    ).fetchall()
    return [r[0] for r in rows]


def list_rollouts(conn) -> list[dict]:
    """Every release with its rollout state, newest first."""
    rows = conn.execute(
        "SELECT f.release_id, f.product_id, f.previous_version, f.version, r.status, r.stage, r.reason, f.created_at "
        "FROM firmware_releases f JOIN ota_rollouts r USING (release_id) ORDER BY f.created_at DESC"
    ).fetchall()
    return [
        {"release_id": r[0], "product_id": r[1], "from": r[2], "to": r[3], "status": r[4], "stage": r[5], "reason": r[6],
         "created_at": r[7].isoformat()}
        for r in rows
    ]


def device_rows(conn, release_id: str) -> dict[str, DeviceRow]:
    """The rollout's device rows by device id."""
    rows = conn.execute(
        "SELECT device_id, stage, status, rollback, sent_ts, deadline_ts, rollback_deadline_ts, reported_version, error, "
        "command_sent, rollback_sent, detail FROM ota_devices WHERE release_id = %s",
        (release_id,),
    ).fetchall()
    return {r[0]: DeviceRow(*r) for r in rows}


def record_event(conn, release_id: str, event: str, ts: int, stage: int | None = None, device_id: str | None = None,
                 detail: dict | None = None, event_id: str | None = None) -> None:
    """Records an event once: its id defaults to (release, event, stage, device)."""
    event_id = event_id or ":".join(str(p) for p in (release_id, event, "" if stage is None else stage, device_id or ""))
    conn.execute(
        "INSERT INTO ota_events (event_id, release_id, ts, event, stage, device_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (event_id) DO NOTHING",
        (event_id, release_id, ts, event, stage, device_id, None if detail is None else _json(detail)),
    )


def upsert_device(conn, release_id: str, row: DeviceRow) -> None:
    """Writes one device row as it now is."""
    conn.execute(
        "INSERT INTO ota_devices (release_id, device_id, stage, status, rollback, sent_ts, deadline_ts, rollback_deadline_ts, "
        "reported_version, error, command_sent, rollback_sent, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (release_id, device_id) DO UPDATE SET stage = EXCLUDED.stage, status = EXCLUDED.status, "
        "rollback = EXCLUDED.rollback, sent_ts = EXCLUDED.sent_ts, deadline_ts = EXCLUDED.deadline_ts, "
        "rollback_deadline_ts = EXCLUDED.rollback_deadline_ts, reported_version = EXCLUDED.reported_version, "
        "error = EXCLUDED.error, command_sent = EXCLUDED.command_sent, rollback_sent = EXCLUDED.rollback_sent, "
        "detail = EXCLUDED.detail, updated_at = now()",
        (release_id, row.device_id, row.stage, row.status, row.rollback, row.sent_ts, row.deadline_ts, row.rollback_deadline_ts,
         row.reported_version, row.error, row.command_sent, row.rollback_sent, row.detail),
    )


def set_rollout(conn, release_id: str, status: str, stage: int, stage_started_ts: int | None, reason: str | None,
                only_from: tuple[str, ...] = ACTIVE_STATES) -> bool:
    """Moves the rollout on, unless an operator changed its state meanwhile; True if it moved."""
    assert status in ROLLOUT_STATES
    done = conn.execute(
        "UPDATE ota_rollouts SET status = %s, stage = %s, stage_started_ts = %s, reason = COALESCE(%s, reason), updated_at = now() "
        "WHERE release_id = %s AND status = ANY(%s)",
        (status, stage, stage_started_ts, reason, release_id, list(only_from)),
    )
    return done.rowcount == 1


def critical_alarm_devices(conn, device_ids: list[str]) -> set[str]:
    """Devices among ``device_ids`` with a critical alarm raised and not yet ended."""
    rows = conn.execute(
        "SELECT DISTINCT e.device_id FROM alarm_events e WHERE e.device_id = ANY(%s) AND e.severity = 'critical' "
        "AND e.event IN ('RAISED', 'SEVERITY_CHANGED', 'ESCALATED') AND NOT EXISTS (SELECT 1 FROM alarm_events c "
        "WHERE c.alarm_id = e.alarm_id AND c.event IN ('CLEARED', 'AUTO_RESOLVED'))",
        (device_ids,),
    ).fetchall()
    return {r[0] for r in rows}


def last_seen(conn, device_ids: list[str]) -> dict[str, int]:
    """Device -> newest reading time in the 1-minute aggregates, epoch ms."""
    rows = conn.execute(
        "SELECT key, max(last_ts) FROM agg_1m WHERE scope = 'device' AND key = ANY(%s) GROUP BY key", (device_ids,)
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows if r[1] is not None}


def alarmed_since(conn, since_ms: dict[str, int]) -> set[str]:
    """The devices with an alarm raised at or after their own time in ``since_ms``."""
    if not since_ms:
        return set()
    devices, times = list(since_ms), [since_ms[d] for d in since_ms]
    rows = conn.execute(
        "SELECT DISTINCT e.device_id FROM alarm_events e JOIN unnest(%s::text[], %s::bigint[]) AS s(device_id, since) "
        "ON e.device_id = s.device_id WHERE e.event = 'RAISED' AND e.device_ts >= s.since",
        (devices, times),
    ).fetchall()
    return {r[0] for r in rows}


def progress(conn, release_id: str) -> dict:
    """The rollout's progress: state, reason, and per stage targeted / in progress / succeeded /
    failed / timed out / skipped / success rate, plus rollback counts.

    Raises:
        RolloutError: unknown release.
    """
    rollout = load_rollout(conn, release_id)
    if rollout is None:
        raise RolloutError(f"no release {release_id!r} (iotlink ota list shows them)")
    rows = device_rows(conn, release_id)
    stages = []
    for index, stage in enumerate(rollout.release.stages):
        counts: StageCounts = count_stage([r.status for r in rows.values() if r.stage == index])
        stages.append({"stage": stage.name, "percent": stage.percent, "gate": stage.min_success_rate, **counts.as_dict()})
    rollback = [r.rollback for r in rows.values() if r.rollback]
    release = rollout.release
    return {
        "release_id": release_id, "product_id": release.product_id, "from": release.previous.version, "to": release.target.version,
        "status": rollout.status, "stage": release.stages[min(rollout.stage, len(release.stages) - 1)].name, "reason": rollout.reason,
        "stages": stages,
        "rollback": {state: rollback.count(state) for state in ("rolling_back", "rolled_back", "rollback_failed")},
    }
