"""Alarm events to idempotent alarm_events / alarm_tickets statements; migration file reading."""

import hashlib

import orjson
import pytest

from connectors.alarm_store import ACK_TICKETS, CLOSE_TICKETS, OPEN_TICKET, UPSERT_EVENT, alarm_statements, event_row, ticket_statements
from connectors.postgres import MigrationError, group_statements, read_migrations

TS = 1_772_359_200_000
ALARM = "fire-0001:smoke_high:1772359200000"


def event(kind: str, severity: str = "medium", ts: int = TS, values=None, alarm_id: str = ALARM, **extra) -> dict:
    routes = {"critical": "auto_action", "high": "notify", "medium": "queue", "low": "log"}
    e = {
        "event": kind,
        "alarm_id": alarm_id,
        "device_id": "fire-0001",
        "product_id": "fire_sensor",
        "rule_id": "smoke_high",
        "rule_version": "v3",
        "severity": severity,
        "route": routes[severity],
        "device_ts": ts,
        "started_ts": TS,
        "values": {"smoke": 0.42} if values is None else values,
    }
    e.update(extra)
    return e


def open_params(kind: str, severity: str, ts: int = TS, values='{"smoke":0.42}', alarm_id: str = ALARM) -> tuple:
    return (f"{alarm_id}:{kind}", kind, alarm_id, "fire-0001", "fire_sensor", "smoke_high", severity, ts, values)


def test_event_row_core_fields_and_no_detail():
    assert event_row(event("RAISED")) == (
        ALARM, "RAISED", TS, "fire-0001", "fire_sensor", "smoke_high", "v3", "medium", "queue", TS, '{"smoke":0.42}', None,
    )


def test_event_row_extras_go_to_detail_json():
    row = event_row(event("SEVERITY_CHANGED", severity="high", ts=TS + 5_000, previous_severity="medium", note="x"))
    assert row[:10] == (ALARM, "SEVERITY_CHANGED", TS + 5_000, "fire-0001", "fire_sensor", "smoke_high", "v3", "high", "notify", TS)
    assert orjson.loads(row[10]) == {"smoke": 0.42}
    assert orjson.loads(row[11]) == {"previous_severity": "medium", "note": "x"}


def test_event_row_optional_fields_missing_and_values_none():
    minimal = {"event": "CLEARED", "alarm_id": ALARM, "device_id": "fire-0001", "rule_id": "smoke_high", "device_ts": TS, "values": None}
    assert event_row(minimal) == (ALARM, "CLEARED", TS, "fire-0001", None, "smoke_high", None, None, None, None, None, None)


def test_medium_raised_opens_a_queue_ticket():
    assert ticket_statements(event("RAISED")) == [(OPEN_TICKET, open_params("queue", "medium"))]


def test_severity_changed_to_medium_opens_a_queue_ticket():
    e = event("SEVERITY_CHANGED", ts=TS + 3_000, values={"smoke": 0.2}, previous_severity="high")
    assert ticket_statements(e) == [(OPEN_TICKET, open_params("queue", "medium", ts=TS + 3_000, values='{"smoke":0.2}'))]


@pytest.mark.parametrize("severity", ["low", "high", "critical"])
def test_raised_or_changed_other_than_medium_opens_nothing(severity):
    assert ticket_statements(event("RAISED", severity=severity)) == []
    assert ticket_statements(event("SEVERITY_CHANGED", severity=severity, previous_severity="medium")) == []


def test_escalated_opens_a_field_service_ticket():
    e = event("ESCALATED", severity="critical", ts=TS + 60_000)
    assert ticket_statements(e) == [(OPEN_TICKET, open_params("field_service", "critical", ts=TS + 60_000))]


def test_acknowledged_marks_tickets_with_who():
    assert ticket_statements(event("ACKNOWLEDGED", values={"by": "alice"})) == [(ACK_TICKETS, ("alice", ALARM))]
    assert ticket_statements(event("ACKNOWLEDGED", values={})) == [(ACK_TICKETS, (None, ALARM))]


def test_cleared_and_auto_resolved_close_tickets():
    assert ticket_statements(event("CLEARED", ts=TS + 9_000)) == [(CLOSE_TICKETS, (TS + 9_000, "cleared", ALARM))]
    assert ticket_statements(event("AUTO_RESOLVED", severity="critical", ts=TS + 7_000)) == [
        (CLOSE_TICKETS, (TS + 7_000, "auto_resolved", ALARM))
    ]


def test_unknown_event_kind_has_no_ticket_statement():
    assert ticket_statements(event("SOMETHING_ELSE")) == []


def test_alarm_statements_puts_event_upserts_first_and_keeps_ticket_order():
    other = "pump-0002:pressure:1772359201000"
    events = [
        event("RAISED"),
        event("RAISED", severity="critical", alarm_id=other),
        event("ACKNOWLEDGED", ts=TS + 1_000, values={"by": "bob"}),
        event("ESCALATED", severity="critical", ts=TS + 2_000, alarm_id=other),
        event("CLEARED", ts=TS + 3_000),
        event("AUTO_RESOLVED", severity="critical", ts=TS + 4_000, alarm_id=other),
    ]
    statements = alarm_statements(events)
    assert [sql for sql, _ in statements[:6]] == [UPSERT_EVENT] * 6
    assert [params for _, params in statements[:6]] == [event_row(e) for e in events]
    assert statements[6:] == [
        (OPEN_TICKET, open_params("queue", "medium")),
        (ACK_TICKETS, ("bob", ALARM)),
        (OPEN_TICKET, open_params("field_service", "critical", ts=TS + 2_000, alarm_id=other)),
        (CLOSE_TICKETS, (TS + 3_000, "cleared", ALARM)),
        (CLOSE_TICKETS, (TS + 4_000, "auto_resolved", other)),
    ]
    assert alarm_statements([]) == []


def test_alarm_statements_groups_into_one_upsert_run():
    events = [event("RAISED"), event("ACKNOWLEDGED", ts=TS + 1, values={"by": "a"}), event("CLEARED", ts=TS + 2)]
    groups = group_statements(alarm_statements(events))
    assert [(sql, len(rows)) for sql, rows in groups] == [(UPSERT_EVENT, 3), (OPEN_TICKET, 1), (ACK_TICKETS, 1), (CLOSE_TICKETS, 1)]


def test_group_statements_merges_only_consecutive_equal_sql():
    statements = [("A", (1,)), ("A", (2,)), ("B", (3,)), ("A", (4,)), ("B", (5,)), ("B", (6,))]
    assert group_statements(statements) == [("A", [(1,), (2,)]), ("B", [(3,)]), ("A", [(4,)]), ("B", [(5,), (6,)])]
    assert group_statements([]) == []
    assert group_statements(iter([("C", ())])) == [("C", [()])]


def test_read_migrations_orders_by_version(tmp_path):
    (tmp_path / "010_later.sql").write_text("SELECT 10;")
    (tmp_path / "002_second.sql").write_text("SELECT 2;")
    (tmp_path / "001_first.sql").write_text("SELECT 1;")
    (tmp_path / "notes.txt").write_text("ignored")
    migrations = read_migrations(tmp_path)
    assert [(m.version, m.name, m.sql) for m in migrations] == [
        (1, "001_first.sql", "SELECT 1;"), (2, "002_second.sql", "SELECT 2;"), (10, "010_later.sql", "SELECT 10;"),
    ]
    assert migrations[0].checksum == hashlib.sha256(b"SELECT 1;").hexdigest()


def test_read_migrations_empty_dir(tmp_path):
    assert read_migrations(tmp_path) == []


@pytest.mark.parametrize("name", ["1_short.sql", "001-dash.sql", "001_Upper.sql", "abc_x.sql", "001_.sql"])
def test_read_migrations_rejects_a_bad_file_name(tmp_path, name):
    (tmp_path / "001_ok.sql").write_text("SELECT 1;")
    (tmp_path / name).write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="NNN_lower_case_name.sql"):
        read_migrations(tmp_path)


def test_read_migrations_rejects_a_duplicate_version(tmp_path):
    (tmp_path / "003_alpha.sql").write_text("SELECT 1;")
    (tmp_path / "003_beta.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError) as info:
        read_migrations(tmp_path)
    assert str(info.value) == f"{tmp_path / '003_beta.sql'}: version 003 is also 003_alpha.sql"


def test_shipped_migrations_are_well_formed():
    migrations = read_migrations()
    assert migrations[0].name == "001_alarms_control.sql"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
