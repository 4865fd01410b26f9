"""The alarm engine, through the offline replay and directly: exact event sequences per rule type,
device-time ordering, alarm lifecycle, automatic actions and rule-set changes."""

import hashlib
import json
from pathlib import Path

import pytest

from operators.alarm_engine import ROUTES, AlarmEngine, DeviceState, alarm_id_for, severity_at_least
from operators.rule_loading import ReplayStats, load_rule_file, load_rule_text, replay

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000


def t(seconds: float) -> int:
    """Device time ``seconds`` after the test epoch, in epoch milliseconds."""
    return T0 + round(seconds * 1000)


def rule_set(rules, product="p", version="1", **extra):
    document = {"productId": product, "version": version, "rules": rules, **extra}
    return load_rule_text(json.dumps(document), "test.json")


def threshold(condition="tempC > 80", rule_id="hot", **options):
    return {"ruleId": rule_id, "type": "threshold", "condition": condition, **options}


def rec(seconds, device="d1", product="p", **metrics):
    return {"device_id": device, "product_id": product, "device_ts": t(seconds), "metrics": metrics}


def run(sets, items, **kwargs):
    stats = ReplayStats()
    output = list(replay(items, sets if isinstance(sets, list) else [sets], stats=stats, **kwargs))
    return output, stats


def brief(output, device=False):
    """(event, rule_id, severity, device_ts, values) of each alarm event (commands left out)."""
    rows = []
    for item in output:
        if "event" in item:
            row = (item["event"], item["rule_id"], item["severity"], item["device_ts"], item["values"])
            rows.append((item["device_id"], *row) if device else row)
    return rows


def events(sets, items, **kwargs):
    output, _ = run(sets, items, **kwargs)
    return brief(output)


def commands(output):
    return [item["command"] for item in output if "command" in item]


# --- default semantics ------------------------------------------------------------------------


def test_raise_on_first_true_record_clear_on_first_later_false_record():
    items = [rec(0, tempC=70), rec(10, tempC=85), rec(20, tempC=90), rec(30, tempC=79), rec(40, tempC=81), rec(50, tempC=80)]
    output, stats = run(rule_set([threshold()]), items)
    assert brief(output) == [
        ("RAISED", "hot", "high", t(10), {"tempC": 85}),
        ("CLEARED", "hot", "high", t(30), {"tempC": 79}),
        ("RAISED", "hot", "high", t(40), {"tempC": 81}),
        ("CLEARED", "hot", "high", t(50), {"tempC": 80}),
    ]
    first, second = alarm_id_for("d1", "hot", t(10)), alarm_id_for("d1", "hot", t(40))
    assert [e["alarm_id"] for e in output] == [first, first, second, second]
    assert first != second
    assert output[0] == {
        "event": "RAISED",
        "alarm_id": first,
        "device_id": "d1",
        "product_id": "p",
        "rule_id": "hot",
        "rule_version": "1",
        "severity": "high",
        "route": "notify",
        "device_ts": t(10),
        "started_ts": t(10),
        "values": {"tempC": 85},
    }
    assert output[1]["started_ts"] == t(10)
    assert (stats.records, stats.events, stats.late, stats.commands, stats.errors) == (6, 4, 0, 0, [])


def test_alarm_ids_are_deterministic_and_distinct():
    assert alarm_id_for("d1", "hot", 1) == alarm_id_for("d1", "hot", 1)
    assert len({alarm_id_for("d1", "hot", 1), alarm_id_for("d2", "hot", 1), alarm_id_for("d1", "cold", 1), alarm_id_for("d1", "hot", 2)}) == 4
    assert alarm_id_for("d1", "hot", 1) == hashlib.sha256(b"d1|hot|1").hexdigest()[:24]


def test_routes_by_severity():
    items = [rec(0, x=1)]
    sets = rule_set([threshold("x > 0", rule_id=s, severity=s) for s in ("low", "medium", "high", "critical")])
    output, _ = run(sets, items)
    assert [(e["rule_id"], e["route"]) for e in output if "event" in e] == [
        ("low", "log"), ("medium", "queue"), ("high", "notify"), ("critical", "auto_action"),
    ]
    assert ROUTES == {"critical": "auto_action", "high": "notify", "medium": "queue", "low": "log"}


def test_hysteresis():
    rules = rule_set([threshold("co > 17", rule_id="co", clearCondition="co < 15")])
    items = [rec(0, co=18), rec(10, co=16), rec(20, co=15), rec(30, co=14), rec(40, co=16), rec(50, co=17), rec(60, co=18)]
    assert events(rules, items) == [
        ("RAISED", "co", "high", t(0), {"co": 18}),
        ("CLEARED", "co", "high", t(30), {"co": 14}),
        ("RAISED", "co", "high", t(60), {"co": 18}),
    ]


def test_disabled_rule_is_never_evaluated():
    rules = rule_set([threshold(enabled=False), threshold("tempC > 90", rule_id="very-hot")])
    assert events(rules, [rec(0, tempC=85), rec(10, tempC=95)]) == [("RAISED", "very-hot", "high", t(10), {"tempC": 95})]


def test_records_of_products_without_rules_are_ignored():
    output, stats = run(rule_set([threshold()]), [rec(0, product="other", tempC=99), rec(10, product="other", tempC=99)], until_ts=t(10_000))
    assert output == [] and stats.records == 2 and stats.errors == []


# --- durations --------------------------------------------------------------------------------


FOR_30S = threshold(**{"for": "30s"})


def test_for_raises_at_pending_since_plus_for_when_a_later_record_passes_it():
    output, _ = run(rule_set([FOR_30S]), [rec(0, tempC=85), rec(10, tempC=86), rec(50, tempC=87)])
    assert brief(output) == [("RAISED", "hot", "high", t(30), {"tempC": 86})]
    assert output[0]["alarm_id"] == alarm_id_for("d1", "hot", t(30)) and output[0]["started_ts"] == t(30)


def test_for_raises_on_a_record_exactly_at_the_deadline():
    assert events(rule_set([FOR_30S]), [rec(0, tempC=85), rec(30, tempC=86)]) == [("RAISED", "hot", "high", t(30), {"tempC": 86})]


def test_for_values_persist_until_the_next_record():
    # The condition held at the last record before the deadline, so the alarm is raised at the
    # deadline; the later false record then clears it.
    assert events(rule_set([FOR_30S]), [rec(0, tempC=85), rec(10, tempC=86), rec(45, tempC=70)]) == [
        ("RAISED", "hot", "high", t(30), {"tempC": 86}),
        ("CLEARED", "hot", "high", t(45), {"tempC": 70}),
    ]


def test_for_restarts_when_the_condition_breaks():
    items = [rec(0, tempC=85), rec(20, tempC=70), rec(30, tempC=85), rec(50, tempC=85), rec(60, tempC=88)]
    assert events(rule_set([FOR_30S]), items) == [("RAISED", "hot", "high", t(60), {"tempC": 88})]


def test_for_deadline_after_the_last_record_needs_until():
    rules, items = rule_set([FOR_30S]), [rec(0, tempC=85), rec(10, tempC=86)]
    assert events(rules, items) == []  # event time ends at the newest record
    assert events(rules, items, until_ts=t(29.999)) == []
    assert events(rules, items, until_ts=t(30)) == [("RAISED", "hot", "high", t(30), {"tempC": 86})]
    assert events(rules, items, until_ts=t(3600)) == [("RAISED", "hot", "high", t(30), {"tempC": 86})]


def test_for_deadline_passed_by_another_devices_records():
    items = [rec(0, tempC=85), rec(0, device="d2", tempC=20), rec(20, device="d2", tempC=20), rec(40, device="d2", tempC=20)]
    output, _ = run(rule_set([FOR_30S]), items)
    assert brief(output, device=True) == [("d1", "RAISED", "hot", "high", t(30), {"tempC": 85})]


def test_clear_for():
    rules = rule_set([threshold(clearFor="20s")])
    items = [rec(0, tempC=85), rec(10, tempC=70), rec(20, tempC=85), rec(30, tempC=70), rec(40, tempC=70), rec(50, tempC=71)]
    assert events(rules, items) == [
        ("RAISED", "hot", "high", t(0), {"tempC": 85}),
        ("CLEARED", "hot", "high", t(50), {"tempC": 71}),
    ]
    # Cleared by the timer when the next record comes later than the clearFor deadline.
    assert events(rules, [rec(0, tempC=85), rec(10, tempC=70), rec(40, tempC=72)]) == [
        ("RAISED", "hot", "high", t(0), {"tempC": 85}),
        ("CLEARED", "hot", "high", t(30), {"tempC": 70}),
    ]
    assert brief(run(rules, [rec(0, tempC=85), rec(10, tempC=70)], until_ts=t(30))[0])[-1] == ("CLEARED", "hot", "high", t(30), {"tempC": 70})


def test_consecutive():
    rules = rule_set([threshold("voc > 400", rule_id="voc", consecutive=3, severity="medium")])
    items = [rec(0, voc=401), rec(10, voc=402), rec(20, voc=300), rec(30, voc=401), rec(40, voc=402), rec(50, voc=403), rec(60, voc=300)]
    assert events(rules, items) == [
        ("RAISED", "voc", "medium", t(50), {"voc": 403}),
        ("CLEARED", "voc", "medium", t(60), {"voc": 300}),
    ]


def test_consecutive_and_for_together_need_both():
    rules = rule_set([threshold(**{"for": "30s", "consecutive": 3})])
    assert events(rules, [rec(0, tempC=85), rec(10, tempC=86)], until_ts=t(100)) == []
    three = [rec(0, tempC=85), rec(10, tempC=86), rec(20, tempC=87)]
    assert events(rules, three, until_ts=t(100)) == [("RAISED", "hot", "high", t(30), {"tempC": 87})]
    assert events(rules, [rec(0, tempC=85), rec(10, tempC=86), rec(40, tempC=87)]) == [("RAISED", "hot", "high", t(40), {"tempC": 87})]
    assert events(rules, [rec(0, tempC=85), rec(1, tempC=86), rec(2, tempC=87), rec(20, tempC=88)]) == []


# --- rate of change ---------------------------------------------------------------------------


def roc(direction, rule_id=None, window="5m", limit=5):
    rule = {"ruleId": rule_id or direction, "type": "rate_of_change", "metric": "x", "window": window, "limit": limit}
    return {**rule, "per": "1m", "direction": direction}


def test_rate_of_change_rise():
    items = [rec(0, x=20), rec(60, x=22), rec(120, x=35), rec(180, x=36), rec(240, x=36)]
    assert events(rule_set([roc("rise"), roc("fall")]), items) == [
        ("RAISED", "rise", "high", t(120), {"x": 35, "rate": 7.5}),
        ("CLEARED", "rise", "high", t(240), {"x": 36, "rate": 4.0}),
    ]


def test_rate_of_change_fall():
    items = [rec(0, x=50), rec(60, x=40), rec(120, x=38), rec(180, x=38)]
    assert events(rule_set([roc("rise"), roc("fall")]), items) == [
        ("RAISED", "fall", "high", t(60), {"x": 40, "rate": -10.0}),
        ("CLEARED", "fall", "high", t(180), {"x": 38, "rate": -4.0}),
    ]


def test_rate_of_change_any_direction():
    items = [rec(0, x=50), rec(60, x=40), rec(600, x=40), rec(660, x=50)]
    assert events(rule_set([roc("any")]), items) == [
        ("RAISED", "any", "high", t(60), {"x": 40, "rate": -10.0}),
        ("CLEARED", "any", "high", t(600), {"x": 40}),  # one point in the window: no rate, not holding
        ("RAISED", "any", "high", t(660), {"x": 50, "rate": 10.0}),
    ]


def test_rate_of_change_window_drops_old_points():
    # With a 2-minute window the rate at 180 s is taken from the point at 60 s: (20-1)/2 = 9.5/min.
    items = [rec(0, x=0), rec(60, x=1), rec(120, x=2), rec(180, x=20)]
    assert events(rule_set([roc("rise", window="2m", limit=8)]), items) == [("RAISED", "rise", "high", t(180), {"x": 20, "rate": 9.5})]


def test_rate_of_change_needs_two_points():
    assert events(rule_set([roc("any", limit=0)]), [rec(0, x=100)]) == []


# --- no data ----------------------------------------------------------------------------------


NO_DATA = {"ruleId": "quiet", "type": "no_data", "expectedPeriod": "60s", "grace": "30s", "periods": 2, "severity": "medium"}


def test_no_data_raised_at_the_deadline_and_cleared_when_data_returns():
    # deadline = last record + periods * expectedPeriod + grace = 60 s + 120 s + 30 s
    output, _ = run(rule_set([NO_DATA]), [rec(0), rec(60), rec(300), rec(310)])
    assert brief(output) == [
        ("RAISED", "quiet", "medium", t(210), {"last_seen_ts": t(60), "silent_ms": 150_000}),
        ("CLEARED", "quiet", "medium", t(300), {"silent_ms": 240_000}),
    ]
    assert output[0]["alarm_id"] == output[1]["alarm_id"] == alarm_id_for("d1", "quiet", t(210))


def test_no_data_gap_detected_only_by_until():
    rules, items = rule_set([NO_DATA]), [rec(0), rec(60)]
    assert events(rules, items) == []
    assert events(rules, items, until_ts=t(209.999)) == []
    assert events(rules, items, until_ts=t(210)) == [("RAISED", "quiet", "medium", t(210), {"last_seen_ts": t(60), "silent_ms": 150_000})]
    assert events(rules, items, until_ts=t(10_000)) == [("RAISED", "quiet", "medium", t(210), {"last_seen_ts": t(60), "silent_ms": 150_000})]


def test_no_data_gap_detected_by_other_devices():
    items = [rec(0), rec(0, device="d2"), rec(100, device="d2"), rec(200, device="d2"), rec(300)]
    output, _ = run(rule_set([NO_DATA]), items)
    assert brief(output, device=True) == [
        ("d1", "RAISED", "quiet", "medium", t(150), {"last_seen_ts": t(0), "silent_ms": 150_000}),
        ("d1", "CLEARED", "quiet", "medium", t(300), {"silent_ms": 300_000}),
    ]


def test_no_data_silence_measured_from_time_zero():
    items = [{"device_id": "d1", "product_id": "p", "device_ts": ts, "metrics": {}} for ts in (0, 500_000)]
    assert events(rule_set([NO_DATA]), items) == [
        ("RAISED", "quiet", "medium", 150_000, {"last_seen_ts": 0, "silent_ms": 150_000}),
        ("CLEARED", "quiet", "medium", 500_000, {"silent_ms": 500_000}),
    ]


def test_disabled_no_data_rule_never_fires():
    rules = rule_set([{**NO_DATA, "enabled": False}, threshold()])
    assert events(rules, [rec(0, tempC=20), rec(1000, tempC=20)], until_ts=t(100_000)) == []


def test_no_data_needs_a_first_record():
    assert events(rule_set([NO_DATA]), [rec(0, device="d2")], until_ts=t(10_000), ) == [
        ("RAISED", "quiet", "medium", t(150), {"last_seen_ts": t(0), "silent_ms": 150_000})
    ]
    output, _ = run(rule_set([NO_DATA]), [rec(0, device="d2")], until_ts=t(10_000))
    assert {e["device_id"] for e in output} == {"d2"}


# --- status bits ------------------------------------------------------------------------------


def test_status_bits():
    rules = rule_set([
        {"ruleId": "overcurrent", "type": "status_bit", "flag": "oc"},
        {"ruleId": "arc", "type": "status_bit", "metric": "status", "bit": 11, "severity": "critical"},
    ])
    items = [
        rec(0, oc=False, status=0),
        rec(10, oc=True, status=2048),
        rec(20, oc=0, status=2048 | 4096),
        rec(30, status=1),
        rec(40, status="zz", oc=1),
        rec(50, status=2048.0),
    ]
    output, stats = run(rules, items)
    assert brief(output) == [
        ("RAISED", "overcurrent", "high", t(10), {"oc": True}),
        ("RAISED", "arc", "critical", t(10), {"status": 2048}),
        ("CLEARED", "overcurrent", "high", t(20), {"oc": 0}),
        ("CLEARED", "arc", "critical", t(30), {"status": 1}),
        ("RAISED", "overcurrent", "high", t(40), {"oc": 1}),
        ("RAISED", "arc", "critical", t(50), {"status": 2048.0}),
    ]
    assert commands(output) == []  # critical, but no autoAction
    # A status that is not a number is an evaluation error, not a crash of the replay.
    assert len(stats.errors) == 1 and stats.errors[0].startswith("rule arc: ")


# --- formulas ---------------------------------------------------------------------------------


def test_the_client_clamp_formula():
    rules = rule_set(
        [threshold("health < 50", rule_id="low-health", severity="medium")],
        formulas={"health": "clamp(100 - (tempC - 60) * 2, 0, 100)"},
    )
    items = [rec(0, tempC=70), rec(10, tempC=90), rec(20, tempC=200), rec(30), rec(40, tempC=70)]
    assert events(rules, items) == [
        ("RAISED", "low-health", "medium", t(10), {"health": 40}),
        ("CLEARED", "low-health", "medium", t(40), {"health": 80}),
    ]


def test_formulas_use_earlier_formulas_and_errors_are_counted():
    rules = rule_set(
        [threshold("score > 10", rule_id="score"), threshold("ratio > 2", rule_id="ratio")],
        formulas={"double": "a * 2", "score": "double + 1", "ratio": "a / b"},
    )
    output, stats = run(rules, [rec(0, a=5, b=0), rec(10, a=5, b=1), rec(20, a=1, b=0)])
    assert brief(output) == [
        ("RAISED", "score", "high", t(0), {"score": 11}),
        ("RAISED", "ratio", "high", t(10), {"ratio": 5.0}),
        ("CLEARED", "score", "high", t(20), {"score": 3}),
    ]
    # ratio could not be computed at 0 s and 20 s: counted, and the ratio alarm stays as it was.
    assert stats.errors == ["formula ratio: 'a / b': division by zero"] * 2


# --- levels and overrides ---------------------------------------------------------------------


LEVELS = {
    "ruleId": "temperature",
    "type": "threshold",
    "levels": [
        {"condition": "t > 60", "severity": "critical"},
        {"condition": "t > 50", "severity": "high"},
        {"condition": "t > limit", "severity": "medium"},
    ],
    "clearCondition": "t < limit - 2",
    "params": {"limit": 40},
}


def test_levels_and_severity_changes():
    output, _ = run(rule_set([LEVELS]), [rec(0, t=45), rec(10, t=55), rec(20, t=52), rec(30, t=45), rec(40, t=39), rec(50, t=37)])
    assert brief(output) == [
        ("RAISED", "temperature", "medium", t(0), {"t": 45}),
        ("SEVERITY_CHANGED", "temperature", "high", t(10), {"t": 55}),
        ("SEVERITY_CHANGED", "temperature", "medium", t(30), {"t": 45}),
        ("CLEARED", "temperature", "medium", t(50), {"t": 37}),
    ]
    assert [e.get("previous_severity") for e in output] == [None, "medium", "high", None]
    assert [e["route"] for e in output] == ["queue", "notify", "queue", "queue"]
    assert len({e["alarm_id"] for e in output}) == 1


def test_first_matching_level_raises_directly_at_its_severity():
    assert events(rule_set([LEVELS]), [rec(0, t=30), rec(10, t=65)]) == [("RAISED", "temperature", "critical", t(10), {"t": 65})]


def test_override_for_one_device():
    rules = rule_set([LEVELS], overrides={"d2": {"temperature": {"limit": 45}}})
    d2 = [rec(0, device="d2", t=43), rec(10, device="d2", t=46), rec(20, device="d2", t=44), rec(30, device="d2", t=42)]
    items = [rec(0, t=43), *d2, rec(40, t=39)]
    output, _ = run(rules, items)
    assert brief(output, device=True) == [
        ("d1", "RAISED", "temperature", "medium", t(0), {"t": 43}),
        ("d2", "RAISED", "temperature", "medium", t(10), {"t": 46}),
        ("d2", "CLEARED", "temperature", "medium", t(30), {"t": 42}),
    ]


# --- ordering ---------------------------------------------------------------------------------


def test_out_of_order_within_the_bound_is_evaluated_in_device_time_order():
    items = [rec(0, tempC=70), rec(3, tempC=70), rec(1, tempC=85), rec(2, tempC=70), rec(10, tempC=70)]
    output, stats = run(rule_set([threshold()]), items, max_out_of_orderness_ms=5000)
    assert brief(output) == [("RAISED", "hot", "high", t(1), {"tempC": 85}), ("CLEARED", "hot", "high", t(2), {"tempC": 70})]
    assert stats.late == 0
    # Without the bound the two older records are late and change nothing.
    output, stats = run(rule_set([threshold()]), items)
    assert output == [] and stats.late == 2 and stats.records == 5


def test_beyond_the_bound_is_late_and_changes_nothing():
    items = [rec(0, tempC=70), rec(4, tempC=70), rec(10, tempC=70), rec(1, tempC=85), rec(12, tempC=70)]
    output, stats = run(rule_set([threshold()]), items, max_out_of_orderness_ms=5000)
    assert output == [] and stats.late == 1
    # A late record does not clear an active alarm either.
    items = [rec(0, tempC=85), rec(4, tempC=86), rec(10, tempC=87), rec(1, tempC=20), rec(20, tempC=88)]
    output, stats = run(rule_set([threshold()]), items, max_out_of_orderness_ms=5000)
    assert brief(output) == [("RAISED", "hot", "high", t(0), {"tempC": 85})] and stats.late == 1


def test_engine_reports_late_records_and_buffers_within_the_bound():
    engine = AlarmEngine({"p": rule_set([threshold()]).compiled}, max_out_of_orderness_ms=5000)
    state = DeviceState()
    assert engine.on_record(state, rec(0, tempC=85)).events == []  # buffered: the device may still send older records
    out = engine.on_record(state, rec(5, tempC=70))
    assert [e["event"] for e in out.events] == ["RAISED"] and out.late == 0
    assert engine.on_record(state, rec(-1, tempC=99)).late == 1
    assert engine.advance(state, "d1", t(5)).events == []  # not past the device's own newest time
    assert [e["event"] for e in engine.flush(state).events] == ["CLEARED"]
    assert state.buffer == []


def test_a_buffered_record_keeps_only_what_evaluation_reads():
    engine = AlarmEngine({"p": rule_set([threshold("tempC > 80 and hub_id == 'h1'")]).compiled}, max_out_of_orderness_ms=5000)
    state = DeviceState()
    record = {**rec(0, tempC=85), "hub_id": "h1", "ingest_ts": 5, "units": {"tempC": "C"}, "spec_id": "s", "spec_version": "1"}
    engine.on_record(state, record)
    assert set(state.buffer[0][2]) == {"device_id", "product_id", "device_ts", "hub_id", "metrics"}
    out = engine.flush(state)
    assert [e["event"] for e in out.events] == ["RAISED"]  # the kept hub_id still decides


# --- acknowledge ------------------------------------------------------------------------------


def test_acknowledge():
    first = alarm_id_for("d1", "hot", t(0))
    items = [
        rec(0, tempC=85),
        {"ack": {"device_id": "d1", "alarm_id": first, "ts": t(5), "by": "alice"}},
        {"ack": {"device_id": "d1", "alarm_id": first, "ts": t(6), "by": "bob"}},  # already acknowledged
        {"ack": {"device_id": "d1", "alarm_id": "no-such-alarm", "ts": t(7)}},
        {"ack": {"device_id": "d9", "alarm_id": first, "ts": t(8)}},
        rec(10, tempC=70),
        {"ack": {"device_id": "d1", "alarm_id": first, "ts": t(11)}},  # no longer active
        rec(20, tempC=90),
    ]
    output, stats = run(rule_set([threshold()]), items)
    assert brief(output) == [
        ("RAISED", "hot", "high", t(0), {"tempC": 85}),
        ("ACKNOWLEDGED", "hot", "high", t(5), {"by": "alice"}),
        ("CLEARED", "hot", "high", t(10), {"tempC": 70}),
        ("RAISED", "hot", "high", t(20), {"tempC": 90}),
    ]
    assert [e["alarm_id"] for e in output] == [first, first, first, alarm_id_for("d1", "hot", t(20))]
    assert output[1]["rule_version"] == "1" and output[1]["started_ts"] == t(0)
    assert stats.records == 3


# --- automatic actions ------------------------------------------------------------------------


def critical_set(**action):
    return rule_set(
        [threshold(severity="critical", autoAction="cut-power")],
        actions={"cut-power": {"desired": {"relay": "open"}, "verifyWithin": "60s", **action}},
    )


def test_critical_alarm_sends_a_command_and_auto_resolves_within_verify_window():
    output, stats = run(critical_set(), [rec(0, tempC=85), rec(30, tempC=70)])
    alarm_id = alarm_id_for("d1", "hot", t(0))
    command_id = hashlib.sha256(f"{alarm_id}|cut-power".encode()).hexdigest()[:24]
    assert output[1] == {
        "command": {
            "command_id": command_id,
            "device_id": "d1",
            "alarm_id": alarm_id,
            "rule_id": "hot",
            "action": "cut-power",
            "desired": {"relay": "open"},
            "issued_ts": t(0),
            "verify_by_ts": t(60),
        }
    }
    assert brief(output) == [
        ("RAISED", "hot", "critical", t(0), {"tempC": 85}),
        ("AUTO_RESOLVED", "hot", "critical", t(30), {"tempC": 70}),
    ]
    assert output[2]["alarm_id"] == alarm_id and output[0]["route"] == "auto_action"
    assert (stats.events, stats.commands) == (2, 1)


def test_cleared_exactly_at_the_verify_deadline_is_auto_resolved():
    assert events(critical_set(), [rec(0, tempC=85), rec(60, tempC=70)])[-1] == ("AUTO_RESOLVED", "hot", "critical", t(60), {"tempC": 70})


def test_not_cleared_in_time_escalates_then_clears():
    output, _ = run(critical_set(), [rec(0, tempC=85), rec(30, tempC=86), rec(90, tempC=70)])
    assert brief(output) == [
        ("RAISED", "hot", "critical", t(0), {"tempC": 85}),
        ("ESCALATED", "hot", "critical", t(60), {"tempC": 86}),
        ("CLEARED", "hot", "critical", t(90), {"tempC": 70}),
    ]
    assert len(commands(output)) == 1
    assert len({e["alarm_id"] for e in output if "event" in e}) == 1


def test_escalation_by_until():
    rules = critical_set()
    assert events(rules, [rec(0, tempC=85)], until_ts=t(59)) == [("RAISED", "hot", "critical", t(0), {"tempC": 85})]
    assert events(rules, [rec(0, tempC=85)], until_ts=t(60)) == [
        ("RAISED", "hot", "critical", t(0), {"tempC": 85}),
        ("ESCALATED", "hot", "critical", t(60), {"tempC": 85}),
    ]


def test_critical_reached_through_a_level_sends_the_command_then():
    rules = rule_set([{**LEVELS, "autoAction": "cut-power"}], actions={"cut-power": {"desired": {"relay": "open"}, "verifyWithin": "5m"}})
    output, _ = run(rules, [rec(0, t=45), rec(10, t=65), rec(20, t=70), rec(100, t=37)])
    assert brief(output) == [
        ("RAISED", "temperature", "medium", t(0), {"t": 45}),
        ("SEVERITY_CHANGED", "temperature", "critical", t(10), {"t": 65}),
        ("AUTO_RESOLVED", "temperature", "critical", t(100), {"t": 37}),
    ]
    assert [(c["issued_ts"], c["verify_by_ts"]) for c in commands(output)] == [(t(10), t(310))]


def test_undefined_action_name_and_non_critical_alarms():
    rules = rule_set([threshold(severity="critical", autoAction="restart-fan"), threshold("tempC > 70", rule_id="warm", autoAction="restart-fan")])
    output, _ = run(rules, [rec(0, tempC=85), rec(10, tempC=60)])
    assert [(c["rule_id"], c["desired"], c["verify_by_ts"]) for c in commands(output)] == [("hot", {"action": "restart-fan"}, t(300))]
    assert brief(output) == [
        ("RAISED", "hot", "critical", t(0), {"tempC": 85}),
        ("RAISED", "warm", "high", t(0), {"tempC": 85}),
        ("AUTO_RESOLVED", "hot", "critical", t(10), {"tempC": 60}),
        ("CLEARED", "warm", "high", t(10), {"tempC": 60}),
    ]


def test_client_example_raises_a_high_alarm_without_a_command():
    loaded = load_rule_file(ROOT / "rules" / "prod-a.yaml")
    output, _ = run(loaded, [rec(0, product="prod-a", tempC=80), rec(10, product="prod-a", tempC=80.5), rec(20, product="prod-a", tempC=80)])
    assert brief(output) == [
        ("RAISED", "temp-threshold-prod-a", "high", t(10), {"tempC": 80.5}),
        ("CLEARED", "temp-threshold-prod-a", "high", t(20), {"tempC": 80}),
    ]
    assert output[0]["rule_version"] == loaded.compiled.version


# --- rule-set changes -------------------------------------------------------------------------


def test_rule_set_change_is_adopted_per_device_at_its_next_record():
    v1 = rule_set([threshold("t > 80"), threshold("h > 90", rule_id="humid")])
    v2 = {"productId": "p", "version": "2", "rules": [threshold("t > 90"), threshold("t < 0", rule_id="cold")]}
    items = [
        rec(0, t=85, h=95),
        rec(0, device="d2", t=85, h=95),
        {"rule_set": v2},
        rec(10, t=85, h=95),
        rec(20, t=-1, h=95),
    ]
    output, _ = run(v1, items)
    assert [(e["device_id"], e["event"], e["rule_id"], e["device_ts"], e["values"], e["rule_version"]) for e in output] == [
        ("d1", "RAISED", "hot", t(0), {"t": 85}, "1"),
        ("d1", "RAISED", "humid", t(0), {"h": 95}, "1"),
        ("d2", "RAISED", "hot", t(0), {"t": 85}, "1"),
        ("d2", "RAISED", "humid", t(0), {"h": 95}, "1"),
        ("d1", "CLEARED", "humid", t(10), {"reason": "rule removed"}, "2"),
        ("d1", "CLEARED", "hot", t(10), {"t": 85}, "2"),
        ("d1", "RAISED", "cold", t(20), {"t": -1}, "2"),
    ]
    assert output[4]["alarm_id"] == alarm_id_for("d1", "humid", t(0))


def test_disabling_a_rule_clears_its_alarm():
    v2 = {"productId": "p", "version": "2", "rules": [threshold(enabled=False)]}
    output, _ = run(rule_set([threshold()]), [rec(0, tempC=85), {"rule_set": v2}, rec(10, tempC=85)])
    assert brief(output) == [("RAISED", "hot", "high", t(0), {"tempC": 85}), ("CLEARED", "hot", "high", t(10), {"reason": "rule removed"})]


# --- determinism, missing values, errors ------------------------------------------------------


def fire_sensor_items():
    items = []
    for n in range(40):
        for device in ("fire-0001", "fire-0007"):
            temp = 30 + (n * 7) % 45
            metrics = {"pcb_temperature": temp, "sensor_temperature": temp - 1, "co_gas": 10 + (n % 12), "voc": 350 + (n * 13) % 120,
                       "overcurrent": n % 9 == 0, "status": 2048 if n % 11 == 0 else (4096 if n == 25 else 0)}
            if device == "fire-0007" and 20 <= n < 30:
                continue  # a gap: no-data
            items.append({"device_id": device, "product_id": "fire_sensor", "device_ts": t(n * 60), "metrics": metrics})
    return items


def test_same_input_gives_identical_output():
    loaded = load_rule_file(ROOT / "rules" / "fire_sensor.yaml")
    first, stats = run(loaded, fire_sensor_items(), until_ts=t(4000))
    second, _ = run(load_rule_file(ROOT / "rules" / "fire_sensor.yaml"), fire_sensor_items(), until_ts=t(4000))
    assert json.dumps(first) == json.dumps(second)
    kinds = {e["event"] for e in first if "event" in e}
    assert {"RAISED", "CLEARED", "SEVERITY_CHANGED"} <= kinds
    assert {e["rule_id"] for e in first if "event" in e} >= {"temperature", "voc", "overcurrent", "arc", "no-data"}
    assert commands(first) and stats.errors == []
    ids = [e["alarm_id"] for e in first if e.get("event") == "RAISED"]
    assert len(ids) == len(set(ids))


def test_missing_metric_leaves_the_state_unchanged():
    rules = rule_set([threshold()])
    # An active alarm is neither cleared nor changed by records without the metric.
    assert events(rules, [rec(0, tempC=85), rec(10), rec(20, rpm=3), rec(30, tempC=70)]) == [
        ("RAISED", "hot", "high", t(0), {"tempC": 85}),
        ("CLEARED", "hot", "high", t(30), {"tempC": 70}),
    ]
    # A pending duration keeps running.
    assert events(rule_set([FOR_30S]), [rec(0, tempC=85), rec(10), rec(40, tempC=86)]) == [("RAISED", "hot", "high", t(30), {"tempC": 85})]
    # A consecutive streak is not broken.
    voc = rule_set([threshold("voc > 400", rule_id="voc", consecutive=3)])
    assert events(voc, [rec(0, voc=401), rec(10), rec(20, voc=402), rec(30, voc=403)]) == [("RAISED", "voc", "high", t(30), {"voc": 403})]
    # A missing metric of the clear condition does not clear.
    co = rule_set([threshold("co > 17", rule_id="co", clearCondition="co2 < 15")])
    assert events(co, [rec(0, co=18), rec(10, co=10), rec(20, co=10, co2=10)]) == [
        ("RAISED", "co", "high", t(0), {"co": 18}),
        ("CLEARED", "co", "high", t(20), {"co": 10, "co2": 10}),
    ]


def test_division_by_zero_is_an_evaluation_error_and_changes_nothing():
    rules = rule_set([threshold("a / b > 2", rule_id="ratio")])
    output, stats = run(rules, [rec(0, a=1, b=0), rec(10, a=5, b=1), rec(20, a=1, b=0), rec(30, a=1, b=1)])
    assert brief(output) == [
        ("RAISED", "ratio", "high", t(10), {"a": 5, "b": 1}),
        ("CLEARED", "ratio", "high", t(30), {"a": 1, "b": 1}),
    ]
    assert stats.errors == ["rule ratio: 'a / b > 2': division by zero"] * 2


@pytest.mark.parametrize(
    ("severity", "minimum", "expected"),
    [("critical", "high", True), ("high", "high", True), ("medium", "high", False), ("low", "low", True), ("low", "medium", False)],
)
def test_severity_at_least(severity, minimum, expected):
    assert severity_at_least(severity, minimum) is expected


def test_a_record_beyond_the_bound_behind_the_newest_is_late_even_if_newer_than_what_was_evaluated():
    # Bound 5 s. After 10 s and 20 s, the horizon is 15 s: 14 s is late (counted, no alarm),
    # 16 s is within the bound and is evaluated in order before 20 s.
    items = [rec(10, tempC=20), rec(20, tempC=20), rec(14, tempC=99), rec(16, tempC=99)]
    output, stats = run(rule_set([threshold()]), items, max_out_of_orderness_ms=5000)
    assert stats.late == 1
    assert brief(output) == [
        ("RAISED", "hot", "high", t(16), {"tempC": 99}),
        ("CLEARED", "hot", "high", t(20), {"tempC": 20}),
    ]
