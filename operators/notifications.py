"""Severity routing of alarm events (client flow 3) as pure functions.

critical -> automatic action (shadow command, from the engine) and verification;
high -> a notification record on ``iotlink.notifications``; medium -> the ticket queue;
low -> logged only. Escalations always notify, whatever the severity.
"""

from __future__ import annotations

NOTIFY_EVENTS = frozenset({"RAISED", "SEVERITY_CHANGED", "ESCALATED"})


def notification_for(event: dict) -> dict | None:
    """The notification record for an alarm event, or None when the event is not notified.

    High-severity alarms notify when raised or when their severity changes to high; an
    escalated alarm (its automatic action did not resolve it in time) notifies at any severity.
    The id is derived from the alarm and the event, so a replayed event yields the same record.
    """
    kind = event.get("event")
    if kind not in NOTIFY_EVENTS:
        return None
    if kind != "ESCALATED" and event.get("severity") != "high":
        return None
    title = {
        "RAISED": f"{event['rule_id']} raised on {event['device_id']}",
        "SEVERITY_CHANGED": f"{event['rule_id']} on {event['device_id']} is now {event.get('severity')}",
        "ESCALATED": f"{event['rule_id']} on {event['device_id']} not resolved by its automatic action: field service needed",
    }[kind]
    return {
        "notification_id": f"{event['alarm_id']}:{kind}:{event['device_ts']}",
        "kind": "ticket" if kind == "ESCALATED" else "notification",
        "severity": event.get("severity"),
        "title": title,
        "alarm_id": event["alarm_id"],
        "event": kind,
        "device_id": event["device_id"],
        "product_id": event.get("product_id"),
        "rule_id": event["rule_id"],
        "device_ts": event["device_ts"],
        "values": event.get("values"),
    }


def ack_command(value: bytes | str) -> dict | None:
    """Parses an ``iotlink.control`` acknowledge command, or None for anything else.

    ``{"type": "ack", "device_id": "dev-1", "alarm_id": "…", "by": "operator", "ts": 1756653767451}``
    """
    import orjson

    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("type") != "ack":
        return None
    if not all(isinstance(doc.get(k), str) and doc.get(k) for k in ("device_id", "alarm_id")) or type(doc.get("ts")) is not int:
        return None
    return {"device_id": doc["device_id"], "alarm_id": doc["alarm_id"], "ts": doc["ts"], "by": doc.get("by")}
