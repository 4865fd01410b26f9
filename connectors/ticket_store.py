"""Field-service tickets in PostgreSQL ``alarm_tickets`` and their history ``ticket_history``.

Alarm tickets are opened by the telemetry job (:mod:`connectors.alarm_store`); a failed firmware
update opens one here. People list, assign and close them (``iotlink tickets``); every change is
kept in ``ticket_history`` — the client's field-service (AS) dispatch and processing history.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

TICKET_COLUMNS = (
    "ticket_id", "kind", "status", "device_id", "product_id", "rule_id", "release_id", "severity", "opened_ts",
    "assigned_to", "closed_by", "alarm_id",
)


class TicketError(ValueError):
    """An unknown ticket, or a change its state does not allow."""


def open_firmware_ticket(conn, release_id: str, device_id: str, product_id: str, opened_ts: int, detail: dict) -> bool:
    """Opens the field-service ticket of a failed firmware update, once; True if opened now."""
    ticket_id = f"ota:{release_id}:{device_id}"
    done = conn.execute(
        'INSERT INTO alarm_tickets (ticket_id, kind, device_id, product_id, release_id, severity, status, opened_ts, "values") '
        "VALUES (%s, 'firmware', %s, %s, %s, 'high', 'open', %s, %s) ON CONFLICT (ticket_id) DO NOTHING",
        (ticket_id, device_id, product_id, release_id, opened_ts, orjson.dumps(detail).decode()),
    )
    if done.rowcount:
        add_history(conn, ticket_id, "opened", "ota-controller", detail.get("reason"))
    return bool(done.rowcount)


def add_history(conn, ticket_id: str, action: str, actor: str | None, detail: str | None) -> None:
    """Appends one entry to a ticket's history."""
    conn.execute("INSERT INTO ticket_history (ticket_id, action, actor, detail) VALUES (%s, %s, %s, %s)", (ticket_id, action, actor, detail))


def list_tickets(conn, status: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict]:
    """Tickets, newest first, optionally of one status and kind."""
    rows = conn.execute(
        f"SELECT {', '.join(TICKET_COLUMNS)} FROM alarm_tickets WHERE (%s::text IS NULL OR status = %s) "
        "AND (%s::text IS NULL OR kind = %s) ORDER BY opened_ts DESC, ticket_id LIMIT %s",
        (status, status, kind, kind, limit),
    ).fetchall()
    return [dict(zip(TICKET_COLUMNS, r, strict=True)) for r in rows]


def history(conn, ticket_id: str) -> list[dict]:
    """A ticket's history, oldest first.

    Raises:
        TicketError: no such ticket.
    """
    ticket = conn.execute("SELECT opened_ts, kind, status, closed_ts, closed_by FROM alarm_tickets WHERE ticket_id = %s",
                          (ticket_id,)).fetchone()
    if ticket is None:
        raise TicketError(f"no ticket {ticket_id!r}")
    rows = conn.execute("SELECT action, actor, detail, at FROM ticket_history WHERE ticket_id = %s ORDER BY seq", (ticket_id,)).fetchall()
    entries = [{"action": a, "actor": b, "detail": c, "at": d.isoformat()} for a, b, c, d in rows]
    if not any(e["action"] == "opened" for e in entries):
        # Opened by the telemetry job, which writes the ticket row only.
        opened = datetime.fromtimestamp(ticket[0] / 1000, tz=UTC).isoformat()
        entries.insert(0, {"action": "opened", "actor": "telemetry job", "detail": f"{ticket[1]} ticket", "at": opened})
    if ticket[2] == "closed" and ticket[3] is not None and not any(e["action"] == "closed" for e in entries):
        # Closed by the job when the alarm ended (closed_by: cleared / auto_resolved).
        closed = datetime.fromtimestamp(ticket[3] / 1000, tz=UTC).isoformat()
        entries.append({"action": "closed", "actor": "telemetry job", "detail": f"alarm {ticket[4]}", "at": closed})
    return entries


def assign(conn, ticket_id: str, to: str, by: str | None, note: str | None = None) -> None:
    """Assigns an open (or acknowledged, or assigned) ticket to a person or team.

    Raises:
        TicketError: no such ticket, or it is closed.
    """
    with conn.transaction():
        _current(conn, ticket_id)
        conn.execute(
            "UPDATE alarm_tickets SET status = 'assigned', assigned_to = %s, updated_at = now() WHERE ticket_id = %s", (to, ticket_id)
        )
        add_history(conn, ticket_id, "assigned", by, f"to {to}" + (f": {note}" if note else ""))


def close(conn, ticket_id: str, by: str | None, closed_ts: int, note: str | None = None) -> None:
    """Closes a ticket with an optional resolution note.

    Raises:
        TicketError: no such ticket, or it is closed already.
    """
    with conn.transaction():
        _current(conn, ticket_id)
        conn.execute(
            "UPDATE alarm_tickets SET status = 'closed', closed_ts = %s, closed_by = %s, updated_at = now() WHERE ticket_id = %s",
            (closed_ts, by, ticket_id),
        )
        add_history(conn, ticket_id, "closed", by, note)


def _current(conn, ticket_id: str) -> str:
    row = conn.execute("SELECT status FROM alarm_tickets WHERE ticket_id = %s FOR UPDATE", (ticket_id,)).fetchone()
    if row is None:
        raise TicketError(f"no ticket {ticket_id!r} (iotlink tickets list shows them)")
    if row[0] == "closed":
        raise TicketError(f"ticket {ticket_id!r} is closed")
    return row[0]
