"""``iotlink rules check`` and ``iotlink rules replay`` through ``iotlink.cli.main``."""

import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iotlink.cli import main
from operators.alarm_engine import alarm_id_for
from operators.spec_loading import spec_files

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000


def t(seconds: float) -> int:
    return T0 + round(seconds * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ("IOTLINK_CONFIG", "IOTLINK_SPECS_DIR", "IOTLINK_RULES_DIR"):
        monkeypatch.delenv(name, raising=False)


RULES = """\
productId: p
version: "7"
actions:
  cut: {desired: {relay: open}, verifyWithin: 60s}
rules:
  - ruleId: hot
    type: threshold
    condition: "tempC > 80"
    severity: critical
    autoAction: cut
  - ruleId: quiet
    type: no_data
    expectedPeriod: 60s
    grace: 30s
    severity: medium
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def records(tmp_path, items, name="in.jsonl"):
    return write(tmp_path, name, "".join(json.dumps(item) + "\n" for item in items))


def rec(seconds, device="d1", **metrics):
    return {"device_id": device, "product_id": "p", "device_ts": t(seconds), "metrics": metrics}


def no_specs(tmp_path):
    """A specs directory without specs: product "p" has none, and reading the real ones takes time."""
    path = tmp_path / "no-specs"
    path.mkdir(exist_ok=True)
    return ["--specs-dir", str(path)]


def replay(capsys, tmp_path, items, *options, rules=RULES):
    rules_path = write(tmp_path, "rules.yaml", rules)
    code = main(["rules", "replay", "--rules", str(rules_path), "--input", str(records(tmp_path, items)), *no_specs(tmp_path), *options])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return code, lines, captured.err


def brief(lines):
    return [(e["event"], e["rule_id"], e["severity"], e["device_ts"], e["values"]) for e in lines if "event" in e]


# --- check ------------------------------------------------------------------------------------


def test_check_the_project_rules(capsys):
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(spec_files([ROOT / 'rules']))} rule set(s) valid"
    assert any(line.startswith("ok ") and line.split()[1].endswith("rules/prod-a.yaml") and "product prod-a" in line for line in out)
    fire = next(line for line in out if "fire_sensor.yaml" in line)
    assert "product fire_sensor  version 1" in fire and "arc (status_bit, critical)" in fire and "no-data (no_data, high)" in fire


def test_check_the_rules_directory_explicitly(capsys):
    assert main(["rules", "check", str(ROOT / "rules"), "--specs-dir", str(ROOT / "yaml_specs")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{len(spec_files([ROOT / 'rules']))} rule set(s) valid"


def test_check_reports_file_line_field_reason(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", "productId: p\nrules:\n  - ruleId: a\n    type: threshold\n    condtion: 't > 1'\n")
    good = write(tmp_path, "good.yaml", "ruleId: b\nproductId: q\ntype: condition\ncondition: 'x > 1'\n")
    assert main(["rules", "check", str(bad), str(good), *no_specs(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{bad}:5: rules[0].condtion: unknown option (did you mean 'condition'?); see docs/rules.md"]
    assert captured.out == ""


def test_check_validates_metric_names_against_the_specs(tmp_path, capsys):
    rule = write(tmp_path, "fire.yaml", "ruleId: t\nproductId: fire_sensor\ntype: threshold\ncondition: 'sensor_temprature > 60'\n")
    assert main(["rules", "check", str(rule)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{rule}:1: rule t condition 'sensor_temprature > 60': column 1: unknown metric 'sensor_temprature'")
    # With a specs directory that does not describe the product, any metric name is accepted.
    assert main(["rules", "check", str(rule), *no_specs(tmp_path)]) == 0


# --- replay -----------------------------------------------------------------------------------


def test_replay_prints_events_and_a_summary(tmp_path, capsys):
    code, lines, err = replay(capsys, tmp_path, [rec(0, tempC=70), rec(10, tempC=85), rec(30, tempC=70)])
    assert code == 0
    assert brief(lines) == [
        ("RAISED", "hot", "critical", t(10), {"tempC": 85}),
        ("AUTO_RESOLVED", "hot", "critical", t(30), {"tempC": 70}),
    ]
    assert all("command" not in line for line in lines)
    assert lines[0]["alarm_id"] == alarm_id_for("d1", "hot", t(10)) and lines[0]["rule_version"] == "7"
    assert err.splitlines() == ["replayed 3 records: 2 alarm events, 1 commands, 0 late records ignored, 0 evaluation errors"]


def test_replay_commands(tmp_path, capsys):
    code, lines, _ = replay(capsys, tmp_path, [rec(0, tempC=85), rec(90, tempC=70)], "--commands")
    assert code == 0
    assert [next(iter(line)) for line in lines] == ["event", "command", "event", "event"]
    assert lines[1]["command"]["desired"] == {"relay": "open"} and lines[1]["command"]["verify_by_ts"] == t(60)
    assert brief(lines) == [
        ("RAISED", "hot", "critical", t(0), {"tempC": 85}),
        ("ESCALATED", "hot", "critical", t(60), {"tempC": 85}),
        ("CLEARED", "hot", "critical", t(90), {"tempC": 70}),
    ]


def test_replay_until_detects_a_gap(tmp_path, capsys):
    items = [rec(0, tempC=20), rec(60, tempC=20)]
    code, lines, _ = replay(capsys, tmp_path, items)
    assert code == 0 and lines == []
    code, lines, _ = replay(capsys, tmp_path, items, "--until", iso(t(209)))
    assert code == 0 and lines == []
    code, lines, err = replay(capsys, tmp_path, items, "--until", iso(t(210)))
    assert code == 0
    assert brief(lines) == [("RAISED", "quiet", "medium", t(210), {"last_seen_ts": t(60), "silent_ms": 150_000})]
    assert "1 alarm events" in err
    # An ISO time without a zone is UTC.
    code, lines, _ = replay(capsys, tmp_path, items, "--until", iso(t(210)).removesuffix("Z"))
    assert brief(lines) == [("RAISED", "quiet", "medium", t(210), {"last_seen_ts": t(60), "silent_ms": 150_000})]


def test_replay_max_out_of_orderness(tmp_path, capsys):
    items = [rec(0, tempC=70), rec(3, tempC=70), rec(1, tempC=85), rec(2, tempC=70)]
    code, lines, err = replay(capsys, tmp_path, items)
    assert code == 0 and lines == [] and "2 late records ignored" in err
    code, lines, err = replay(capsys, tmp_path, items, "--max-out-of-orderness", "5")
    assert code == 0 and "0 late records ignored" in err
    assert brief(lines) == [
        ("RAISED", "hot", "critical", t(1), {"tempC": 85}),
        ("AUTO_RESOLVED", "hot", "critical", t(2), {"tempC": 70}),
    ]


def test_replay_ack_and_rule_set_lines(tmp_path, capsys):
    alarm_id = alarm_id_for("d1", "hot", t(0))
    v2 = {"productId": "p", "version": "8", "rules": [{"ruleId": "cold", "type": "threshold", "condition": "tempC < 0"}]}
    items = [
        rec(0, tempC=85),
        {"ack": {"device_id": "d1", "alarm_id": alarm_id, "ts": t(1), "by": "ops"}},
        {"rule_set": v2},
        rec(10, tempC=-5),
    ]
    code, lines, err = replay(capsys, tmp_path, items)
    assert code == 0
    assert [(e["event"], e["rule_id"], e["device_ts"], e["values"], e["rule_version"]) for e in lines] == [
        ("RAISED", "hot", t(0), {"tempC": 85}, "7"),
        ("ACKNOWLEDGED", "hot", t(1), {"by": "ops"}, "7"),
        ("CLEARED", "hot", t(10), {"reason": "rule removed"}, "8"),
        ("RAISED", "cold", t(10), {"tempC": -5}, "8"),
    ]
    assert err.startswith("replayed 2 records: 4 alarm events")


def test_replay_is_deterministic(tmp_path, capsys):
    items = [rec(n * 20, device=f"d{n % 3}", tempC=70 + (n * 17) % 25) for n in range(30)]
    outputs = []
    for _ in range(2):
        rules_path = write(tmp_path, "rules.yaml", RULES)
        options = ["--commands", "--until", iso(t(2000)), *no_specs(tmp_path)]
        assert main(["rules", "replay", "--rules", str(rules_path), "--input", str(records(tmp_path, items)), *options]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") >= 8


def test_replay_reports_evaluation_errors(tmp_path, capsys):
    rules = "productId: p\nrules:\n  - ruleId: ratio\n    type: threshold\n    condition: 'a / b > 2'\n"
    code, lines, err = replay(capsys, tmp_path, [rec(0, a=1, b=0), rec(10, a=5, b=1)], rules=rules)
    assert code == 0 and brief(lines) == [("RAISED", "ratio", "high", t(10), {"a": 5, "b": 1})]
    assert err.splitlines() == [
        "replayed 2 records: 1 alarm events, 0 commands, 0 late records ignored, 1 evaluation errors",
        "  evaluation error: rule ratio: 'a / b > 2': division by zero",
    ]


def test_replay_from_stdin(tmp_path, capsys, monkeypatch):
    rules_path = write(tmp_path, "rules.yaml", RULES)
    data = "".join(json.dumps(item) + "\n" for item in [rec(0, tempC=85)]).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["rules", "replay", "--rules", str(rules_path), "--input", "-", *no_specs(tmp_path)]) == 0
    assert brief([json.loads(line) for line in capsys.readouterr().out.splitlines()]) == [("RAISED", "hot", "critical", t(0), {"tempC": 85})]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "in.jsonl:2: not JSON"),
        ("[1, 2]", "in.jsonl:2: expected a JSON object"),
        ('{"device_id": "d1", "product_id": "p"}', "in.jsonl:2: not a telemetry record"),
        ('{"device_id": "d1", "product_id": "p", "device_ts": "2024-01-01T00:00:00Z"}', "in.jsonl:2: not a telemetry record"),
    ],
)
def test_replay_bad_input_line(tmp_path, capsys, line, reason):
    rules_path = write(tmp_path, "rules.yaml", RULES)
    path = write(tmp_path, "in.jsonl", json.dumps(rec(0, tempC=85)) + "\n" + line + "\n" + json.dumps(rec(10, tempC=85)) + "\n")
    assert main(["rules", "replay", "--rules", str(rules_path), "--input", str(path), *no_specs(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert reason in captured.err and captured.err.startswith("iotlink rules replay: ")
    # What was evaluated before the bad line is printed.
    assert [json.loads(x)["event"] for x in captured.out.splitlines()] == ["RAISED"]


def test_replay_missing_input_file(tmp_path, capsys):
    rules_path = write(tmp_path, "rules.yaml", RULES)
    assert main(["rules", "replay", "--rules", str(rules_path), "--input", str(tmp_path / "missing.jsonl"), *no_specs(tmp_path)]) == 1
    assert "iotlink rules replay: " in capsys.readouterr().err


def test_replay_with_invalid_rules(tmp_path, capsys):
    code, lines, err = replay(capsys, tmp_path, [rec(0, tempC=85)], rules="productId: p\nrules:\n  - ruleId: a\n    type: no_data\n")
    assert code == 2 and lines == []
    assert err.splitlines() == [f"{tmp_path / 'rules.yaml'}:3: rules[0]: rule a: no_data needs expectedPeriod (the device's reporting period)"]


def test_replay_with_an_invalid_rule_set_line(tmp_path, capsys):
    items = [rec(0, tempC=85), {"rule_set": {"productId": "p", "rules": [{"ruleId": "x", "type": "threshold"}]}}, rec(10, tempC=85)]
    code, lines, err = replay(capsys, tmp_path, items)
    assert code == 2
    assert brief(lines) == [("RAISED", "hot", "critical", t(0), {"tempC": 85})]
    assert "rule x: a threshold rule needs condition or levels" in err


def test_check_warns_about_expressions_that_fail_on_sample_records(tmp_path, capsys):
    rules = (
        "productId: p\nformulas:\n  root: 'sqrt(volt)'\nrules:\n"
        "  - {ruleId: ratio, type: threshold, condition: 'a / b > 2'}\n"
        "  - {ruleId: power, type: threshold, condition: 'volt ** 0.5 > 1', clearCondition: 'volt < 1'}\n"
        "  - {ruleId: fine, type: threshold, condition: 'a > limit', params: {limit: 3}}\n"
    )
    path = write(tmp_path, "rules.yaml", rules)
    assert main(["rules", "check", str(path), *no_specs(tmp_path)]) == 0  # a warning, not an invalid file
    warnings = [line.strip() for line in capsys.readouterr().out.splitlines() if "warning:" in line]
    assert warnings == [
        "warning: on sample records, rule ratio condition 'a / b > 2': division by zero (with a=0, b=0)",
        "warning: on sample records, formula root 'sqrt(volt)': math domain error (with volt=-1)",
        "warning: on sample records, rule power condition 'volt ** 0.5 > 1': result (6.123233995736766e-17+1j) is a complex, "
        "not a real number, boolean or string (with volt=-1)",
    ]


def test_status_lines_show_the_version_in_force_later_rejections_and_newest_errors():
    from iotlink.rule_commands import status_lines

    t = 1_796_000_000_000
    statuses = [
        {"status": "accepted", "product_id": "p", "version": "1"},
        {"status": "rejected", "product_id": "p", "version": "0", "problems": ["old"]},
        {"status": "accepted", "product_id": "p", "version": "2"},
        {"status": "errors", "product_id": "p", "version": "2", "subtask": 0, "since": t, "until": t, "count": 1,
         "errors": [{"message": "rule a: first", "count": 1}], "other": 0},
        {"status": "rejected", "product_id": "p", "version": "3", "problems": ["rule x: needs condition or levels"]},
        {"status": "errors", "product_id": "p", "version": "2", "subtask": 1, "since": t + 60_000, "until": t + 90_000, "count": 9,
         "errors": [{"message": "rule a: division by zero", "count": 7}], "other": 2},
        "not a status",
    ]
    assert status_lines(statuses, errors_per_product=1) == [
        "p  accepted  version 2",
        "p  rejected  version 3",
        "    rule x: needs condition or levels",
        "p  errors  version 2  9 from 2026-11-30T00:54:20Z to 2026-11-30T00:54:50Z (subtask 1)",
        "         7 × rule a: division by zero",
        "         2 × (other messages)",
    ]
    assert status_lines([]) == []
