"""Alarm events to PostgreSQL ``alarm_events`` and the ticket queue ``alarm_tickets``, as
idempotent statements derived only from the events themselves.

``alarm_events`` is keyed by (alarm_id, event, device_ts): the same event replayed after a
restore hits the same row. Tickets (client flow 3): a medium alarm queues a ticket when it is
raised or its severity becomes medium; an escalated alarm (its automatic action did not
resolve it in time) opens a field-service ticket; acknowledging marks open tickets, and the
alarm's end closes them. Ticket ids are ``{alarm_id}:{kind}``; opening never reopens a closed
ticket and every update is guarded, so replays leave the table as it was.
"""

from __future__ import annotations

import orjson

_CORE = {"event", "alarm_id", "device_id", "product_id", "rule_id", "rule_version", "severity", "route", "device_ts", "started_ts", "values"}

UPSERT_EVENT = (
    'INSERT INTO alarm_events (alarm_id, event, device_ts, device_id, product_id, rule_id, rule_version, severity, route, '
    'started_ts, "values", detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) '
    "ON CONFLICT (alarm_id, event, device_ts) DO UPDATE SET severity = EXCLUDED.severity, route = EXCLUDED.route, "
    '"values" = EXCLUDED."values", detail = EXCLUDED.detail'
)
OPEN_TICKET = (
    'INSERT INTO alarm_tickets (ticket_id, kind, alarm_id, device_id, product_id, rule_id, severity, status, opened_ts, "values") '
    "VALUES (%s, %s, %s, %s, %s, %s, %s, 'open', %s, %s) ON CONFLICT (ticket_id) DO NOTHING"
)
ACK_TICKETS = (
    "UPDATE alarm_tickets SET status = 'acknowledged', acknowledged_by = %s, updated_at = now() "
    "WHERE alarm_id = %s AND status = 'open'"
)
CLOSE_TICKETS = (
    "UPDATE alarm_tickets SET status = 'closed', closed_ts = %s, closed_by = %s, updated_at = now() "
    "WHERE alarm_id = %s AND status <> 'closed'"
)
_END_EVENTS = {"CLEARED", "AUTO_RESOLVED"}


def _json(value) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def event_row(event: dict) -> tuple:
    """The ``alarm_events`` parameters of one event (fields beyond the core go to ``detail``)."""
    detail = {k: v for k, v in event.items() if k not in _CORE}
    return (
        event["alarm_id"], event["event"], event["device_ts"], event["device_id"], event.get("product_id"), event["rule_id"],
        event.get("rule_version"), event.get("severity"), event.get("route"), event.get("started_ts"),
        _json(event.get("values")), _json(detail or None),
    )


def ticket_statements(event: dict) -> list[tuple[str, tuple]]:
    """The ticket-queue statements one alarm event implies (often none)."""
    kind, alarm_id = event["event"], event["alarm_id"]
    opens = None
    if kind in ("RAISED", "SEVERITY_CHANGED") and event.get("severity") == "medium":
        opens = "queue"
    elif kind == "ESCALATED":
        opens = "field_service"
    if opens is not None:
        return [(OPEN_TICKET, (
            f"{alarm_id}:{opens}", opens, alarm_id, event["device_id"], event.get("product_id"), event["rule_id"],
            event.get("severity"), event["device_ts"], _json(event.get("values")),
        ))]
    if kind == "ACKNOWLEDGED":
        return [(ACK_TICKETS, ((event.get("values") or {}).get("by"), alarm_id))]
    if kind in _END_EVENTS:
        return [(CLOSE_TICKETS, (event["device_ts"], kind.lower(), alarm_id))]
    return []


def alarm_statements(events: list[dict]) -> list[tuple[str, tuple]]:
    """Statements for a batch of events: every event upsert first (they are independent),
    then the ticket statements in event order (a close must follow its open)."""
    statements = [(UPSERT_EVENT, event_row(e)) for e in events]
    for event in events:
        statements.extend(ticket_statements(event))
    return statements
