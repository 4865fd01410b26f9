"""Severity routing: which alarm events become notifications, and acknowledge commands."""

import orjson
import pytest

from operators.notifications import ack_command, notification_for


def event(kind, severity, **extra):
    return {"event": kind, "alarm_id": "a1", "device_id": "d1", "product_id": "p", "rule_id": "hot",
            "severity": severity, "device_ts": 1000, "values": {"tempC": 91}, **extra}


@pytest.mark.parametrize(
    ("kind", "severity", "expected"),
    [
        ("RAISED", "high", ("notification", "hot raised on d1")),
        ("SEVERITY_CHANGED", "high", ("notification", "hot on d1 is now high")),
        ("ESCALATED", "critical", ("ticket", "hot on d1 not resolved by its automatic action: field service needed")),
        ("ESCALATED", "medium", ("ticket", "hot on d1 not resolved by its automatic action: field service needed")),
        ("RAISED", "critical", None),
        ("RAISED", "medium", None),
        ("RAISED", "low", None),
        ("CLEARED", "high", None),
        ("ACKNOWLEDGED", "high", None),
    ],
)
def test_routing(kind, severity, expected):
    record = notification_for(event(kind, severity))
    if expected is None:
        assert record is None
    else:
        assert (record["kind"], record["title"]) == expected
        assert record["notification_id"] == f"a1:{kind}:1000"
        assert record["values"] == {"tempC": 91}


def test_ack_command_parsing():
    good = {"type": "ack", "device_id": "d1", "alarm_id": "a1", "by": "ops", "ts": 5}
    assert ack_command(orjson.dumps(good)) == {"device_id": "d1", "alarm_id": "a1", "ts": 5, "by": "ops"}
    for bad in (b"{not json", b"[1]", orjson.dumps({**good, "type": "reboot"}), orjson.dumps({**good, "ts": "now"}),
                orjson.dumps({**good, "alarm_id": ""})):
        assert ack_command(bad) is None
