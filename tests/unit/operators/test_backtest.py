"""Rule backtests: replay per device, alarm spans, the report and the comparison of two rule sets."""

import pytest

from operators.backtest import (
    AlarmSpan,
    Incident,
    alarm_spans,
    backtest_report,
    compare_sets,
    hourly_raised,
    parse_incidents,
    replay_device,
)
from operators.rule_loading import load_rule_text

MINUTE = 60_000
HOUR = 3_600_000
LIVE = "ruleSetId: live\nproductId: p\nrules:\n  - {ruleId: hot, type: threshold, condition: 't > 80', severity: high}\n"
CANDIDATE = ("ruleSetId: candidate\nproductId: p\nrules:\n"
             "  - {ruleId: hot, type: threshold, condition: 't > 85', clearCondition: 't < 78', severity: high}\n")


def _sets():
    return {"candidate": {"p": load_rule_text(CANDIDATE).compiled}, "live": {"p": load_rule_text(LIVE).compiled}}


def _readings(values, device="d1", start=0):
    return [{"device_id": device, "product_id": "p", "device_ts": start + i * MINUTE, "metrics": {"t": v}} for i, v in enumerate(values)]


def test_replay_orders_by_device_time_and_runs_each_set():
    values = [70, 81, 79, 81, 79, 86, 80, 77]
    readings = _readings(values)
    events = replay_device(list(reversed(readings)), _sets(), until_ts=len(values) * MINUTE)
    live = [(kind, ts // MINUTE) for label, kind, _rule, ts, _sev in events if label == "live"]
    candidate = [(kind, ts // MINUTE) for label, kind, _rule, ts, _sev in events if label == "candidate"]
    # Without hysteresis the live rule flaps at 80; the candidate raises at 86 and clears below 78.
    assert live == [("RAISED", 1), ("CLEARED", 2), ("RAISED", 3), ("CLEARED", 4), ("RAISED", 5), ("CLEARED", 6)]
    assert candidate == [("RAISED", 5), ("CLEARED", 7)]


def test_a_rule_error_is_reported_not_raised():
    failing = "ruleSetId: x\nproductId: p\nrules:\n  - {ruleId: div, type: threshold, condition: 't / (t - t) > 1', severity: low}\n"
    events = replay_device(_readings([1, 2]), {"candidate": {"p": load_rule_text(failing).compiled}}, until_ts=2 * MINUTE)
    assert events and all(e[1] == "ERROR" and "division by zero" in e[2] for e in events)


def test_spans_pair_raise_with_clear_and_keep_what_is_still_active():
    events = [("live", "RAISED", "hot", 10, "high"), ("live", "CLEARED", "hot", 20, None), ("live", "RAISED", "hot", 30, "high"),
              ("candidate", "RAISED", "hot", 12, "high"), ("candidate", "AUTO_RESOLVED", "hot", 15, None)]
    assert alarm_spans("d1", events) == [
        AlarmSpan("live", "hot", "d1", 10, 20, "high"), AlarmSpan("candidate", "hot", "d1", 12, 15, "high"),
        AlarmSpan("live", "hot", "d1", 30, None, "high"),
    ]


def test_alarms_that_overlap_count_as_the_same_in_the_comparison():
    spans = [AlarmSpan("candidate", "hot", "d1", 10, 20, None), AlarmSpan("live", "hot", "d1", 15, 30, None),
             AlarmSpan("live", "hot", "d1", 40, 50, None), AlarmSpan("candidate", "hot", "d2", 0, None, None),
             AlarmSpan("live", "hot", "d3", 5, 6, None)]
    assert compare_sets(spans, until_ts=100) == {"hot": {"both": 1, "only_candidate": 1, "only_live": 2}}


def test_report_durations_flapping_and_time_to_detect():
    day = 86_400_000
    spans = [AlarmSpan("live", "hot", "d1", i * 2 * MINUTE, i * 2 * MINUTE + MINUTE, "high") for i in range(4)]  # 4 cycles, day 0
    spans += [AlarmSpan("live", "hot", "d2", day + HOUR, None, "high")]  # still active at the end
    incidents = [Incident("d1", 0, 30 * MINUTE, "d1 hot"), Incident("d2", day + HOUR - 5 * MINUTE, day + 2 * HOUR, "d2 hot"),
                 Incident("d3", 0, HOUR, "missed")]
    report = backtest_report(spans, incidents, 0, 2 * day)
    stats = report["rule_sets"]["live"]["hot"]
    assert (stats["raised"], stats["devices"], stats["still_active"]) == (5, 2, 1)
    assert stats["max_active_s"] == (day - HOUR) / 1000 and stats["max_cycles_per_device_day"] == 4
    assert stats["flapping_device_days"] == 1
    assert (stats["incidents_detected"], stats["incidents_missed"], stats["max_detect_s"]) == (2, 1, 300.0)
    assert report["compared"] == {"hot": {"both": 0, "only_candidate": 0, "only_live": 5}}


def test_hourly_counts_per_set():
    spans = [AlarmSpan("live", "hot", "d1", 10, None, None), AlarmSpan("live", "hot", "d2", HOUR + 1, None, None),
             AlarmSpan("candidate", "hot", "d1", HOUR + 2, None, None), AlarmSpan("live", "other", "d1", 0, None, None)]
    assert hourly_raised(spans, "hot", 0, 2 * HOUR) == {"live": [1, 1], "candidate": [0, 1]}


def test_incidents_csv():
    incidents = parse_incidents("device_id,start,end,name\nd1,2026-03-01T10:00:00Z,2026-03-01T11:00:00,pump\nd2,0,60000,\n")
    assert incidents[0] == Incident("d1", 1772359200000, 1772362800000, "pump")
    assert incidents[1].name == "d2@0"


@pytest.mark.parametrize(("text", "message"), [
    ("device,start,end\n", "the header needs device_id,start,end"),
    ("device_id,start,end\nd1,10,5\n", "<incidents>:2: end is not after start"),
    ("device_id,start,end\nd1,yesterday,5\n", "<incidents>:2: 'yesterday' is neither ISO 8601"),
    ("device_id,start,end\n,1,5\n", "device_id is empty"),
])
def test_bad_incident_files_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_incidents(text)
