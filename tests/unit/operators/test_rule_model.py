"""Rule-set language: durations, the client's single-rule files, the shipped rule sets, and
validation problems reported as ``file:line: field: reason``."""

import textwrap
from functools import cache
from pathlib import Path

import pytest
import yaml

from operators.rule_loading import load_rule_file, load_rule_sets, load_rule_text
from operators.rule_model import Action, RuleSet, action_for, parse_duration_ms
from operators.spec_loading import SpecLoadError, load_specs, metrics_by_product

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "rules"


@cache
def spec_metrics():
    return metrics_by_product(load_specs([ROOT / "yaml_specs"]))


def problems(text, metrics=None, source="r.yaml"):
    with pytest.raises(SpecLoadError) as info:
        load_rule_text(textwrap.dedent(text), source, metrics)
    return info.value.problems


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "ms"),
    [("500ms", 500), ("30s", 30_000), ("10m", 600_000), ("1h", 3_600_000), ("1d", 86_400_000), ("1.5m", 90_000), (" 2 s ", 2000),
     ("45", 45_000), (30, 30_000), (0.25, 250), (0, 0)],
)
def test_durations(written, ms):
    assert parse_duration_ms(written) == ms


@pytest.mark.parametrize("written", [True, -1, "-5s", "10 minutes", "5w", "", "s", None, [1]])
def test_bad_durations(written):
    with pytest.raises(ValueError, match="for"):
        parse_duration_ms(written, "for")


# --- the client's example and the shipped rule sets -------------------------------------------


def test_client_example_loads_as_written():
    data = yaml.safe_load((RULES / "prod-a.yaml").read_text())
    assert data == {
        "ruleId": "temp-threshold-prod-a",
        "productId": "prod-a",
        "type": "threshold",
        "condition": "metrics.tempC > 80",
        "severity": "high",
        "autoAction": "restart-fan",
    }
    rule_set = RuleSet.model_validate(data)
    assert rule_set.product_id == "prod-a" and rule_set.version is None and len(rule_set.rules) == 1
    rule = rule_set.rules[0]
    assert (rule.rule_id, rule.product_id, rule.type, rule.condition, rule.severity, rule.auto_action) == (
        "temp-threshold-prod-a", "prod-a", "threshold", "metrics.tempC > 80", "high", "restart-fan",
    )
    assert (rule.for_ms, rule.clear_condition, rule.consecutive, rule.enabled) == (None, None, None, True)
    # restart-fan is not defined as an action: it is sent as desired {"action": "restart-fan"}.
    action = action_for(rule_set, "restart-fan")
    assert action.desired == {"action": "restart-fan"} and action.verify_within_ms == 300_000


def test_client_example_file_compiles_with_a_content_version():
    loaded = load_rule_file(RULES / "prod-a.yaml")
    assert loaded.product_id == "prod-a"
    assert loaded.compiled.version.startswith("sha256:") and len(loaded.compiled.version) == len("sha256:") + 12
    assert [c.rule.rule_id for c in loaded.compiled.rules] == ["temp-threshold-prod-a"]
    assert loaded.compiled.rules[0].value_names == ("tempC",)
    assert load_rule_file(RULES / "prod-a.yaml").compiled.version == loaded.compiled.version


def test_single_rule_file_keeps_version_and_set_id():
    loaded = load_rule_text("ruleId: a\nproductId: p\ntype: condition\ncondition: 'x > 1'\nversion: 3\nruleSetId: set-a\n")
    assert loaded.rule_set.version == "3" and loaded.rule_set.rule_set_id == "set-a" and loaded.compiled.version == "3"
    assert loaded.rule_set.rules[0].rule_id == "a"


def test_fire_sensor_rule_set():
    metrics = spec_metrics()
    loaded = load_rule_file(RULES / "fire_sensor.yaml", metrics)
    rule_set = loaded.rule_set
    assert (rule_set.rule_set_id, rule_set.product_id, rule_set.version) == ("fire-sensor-default", "fire_sensor", "1")
    assert {r.rule_id: r.type for r in rule_set.rules} == {
        "temperature": "threshold",
        "co-gas": "threshold",
        "voc": "threshold",
        "overcurrent": "status_bit",
        "arc": "status_bit",
        "communication": "threshold",
        "temperature-rise": "rate_of_change",
        "no-data": "no_data",
    }
    by_id = {r.rule_id: r for r in rule_set.rules}
    assert [(lv.condition, lv.severity) for lv in by_id["temperature"].levels] == [
        ("max_temperature > 60", "critical"), ("max_temperature > 50", "high"), ("max_temperature > limit", "medium"),
    ]
    assert by_id["co-gas"].for_ms == 30_000 and by_id["voc"].consecutive == 3
    assert (by_id["arc"].metric, by_id["arc"].bit) == ("status", 11)
    rise = by_id["temperature-rise"]
    assert (rise.window_ms, rise.limit, rise.per_ms, rise.direction) == (300_000, 5, 60_000, "rise")
    nd = by_id["no-data"]
    assert (nd.expected_period_ms, nd.grace_ms, nd.periods) == (60_000, 600_000, 2)
    cut = rule_set.actions["cut-power"]
    assert cut == Action(desired={"relay": "open"}, verifyWithin="5m", description=cut.description)
    assert rule_set.actions["cut-power"].verify_within_ms == 300_000
    assert rule_set.overrides == {"fire-0007": {"temperature": {"limit": 45.0}}}
    assert [name for name, _ in loaded.compiled.formulas] == ["max_temperature"]


def test_load_rule_sets_reads_the_rules_directory():
    loaded = load_rule_sets([RULES], spec_metrics())
    assert {item.product_id for item in loaded} >= {"fire_sensor", "prod-a"}
    assert len(loaded) == len(list(RULES.glob("*.y*ml")))


def test_two_files_for_one_product(tmp_path):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("ruleId: r\nproductId: p\ntype: condition\ncondition: 'x > 1'\n")
    with pytest.raises(SpecLoadError) as info:
        load_rule_sets([tmp_path])
    assert info.value.problems == [f"{tmp_path / 'b.yaml'}:1: productId: product 'p' already has rules in {tmp_path / 'a.yaml'}"]


def test_every_problem_of_every_file_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("ruleId: r\nproductId: p\ntype: threshold\n")
    (tmp_path / "b.yaml").write_text("ruleId: r\nproductId: q\ntype: no_data\n")
    with pytest.raises(SpecLoadError) as info:
        load_rule_sets([tmp_path])
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [f"{tmp_path / 'a.yaml'}:1", f"{tmp_path / 'b.yaml'}:1"]


# --- validation problems ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condtion: "t > 1"
            """,
            "r.yaml:5: rules[0].condtion: unknown option (did you mean 'condition'?); see docs/rules.md",
        ),
        (
            """\
            ruleId: a
            productId: p
            type: threshold
            condition: "t > 1"
            severety: high
            """,
            "r.yaml:5: severety: unknown option (did you mean 'severity'?); see docs/rules.md",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                severity: high
            """,
            "r.yaml:3: rules[0]: rule a: a threshold rule needs condition or levels (one of them)",
        ),
        (
            """\
            ruleId: a
            productId: p
            type: threshold
            """,
            "r.yaml:1: (rules): rule a: a threshold rule needs condition or levels (one of them)",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: condition
                condition: "t > 1"
                levels: [{condition: "t > 2", severity: low}]
            """,
            "r.yaml:3: rules[0]: rule a: a condition rule needs condition or levels (one of them)",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: ok
                type: threshold
                condition: "t > 1"
              - ruleId: quiet
                type: no_data
                grace: 10m
            """,
            "r.yaml:6: rules[1]: rule quiet: no_data needs expectedPeriod (the device's reporting period)",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: quiet
                type: no_data
                expectedPeriod: 1m
                for: 10s
            """,
            "r.yaml:3: rules[0]: rule quiet: no_data takes expectedPeriod, grace and periods only",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: quiet
                type: no_data
                expectedPeriod: 1m
                condition: "x > 1"
            """,
            "r.yaml:3: rules[0]: rule quiet: condition/levels belong to threshold and condition rules, not no_data",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
              - ruleId: b
                type: threshold
                condition: "t > 2"
              - ruleId: a
                type: threshold
                condition: "t > 3"
            """,
            "r.yaml:9: rules[2].ruleId: rule ids used twice: a",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > limit"
                params: {limit: 3}
            overrides:
              dev-1:
                a: {limit: 4}
              dev-2:
                a: {limt: 4}
            """,
            "r.yaml:11: overrides.dev-2.a: limt not among the rule's params",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
            overrides:
              dev-1:
                b: {limit: 4}
            """,
            "r.yaml:8: overrides.dev-1.b: no rule 'b' in this set",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                productId: q
                type: threshold
                condition: "t > 1"
            """,
            "r.yaml:4: rules[0].productId: rule a is for product q, the set for p",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
                autoAction: "restart fan"
            """,
            "r.yaml:6: rules[0].autoAction: rule a: autoAction 'restart fan' is not an action name",
        ),
        (
            """\
            ruleId: a
            productId: p
            type: threshold
            condition: "t > 1"
            autoAction: "restart fan"
            """,
            "r.yaml:5: autoAction: rule a: autoAction 'restart fan' is not an action name",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: rate_of_change
                metric: t
                window: 5m
            """,
            "r.yaml:3: rules[0]: rule a: rate_of_change needs metric, window and limit",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: rate_of_change
                metric: t
                window: 0
                limit: 1
            """,
            "r.yaml:3: rules[0]: rule a: window and per must be positive",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: status_bit
                metric: status
            """,
            "r.yaml:3: rules[0]: rule a: status_bit with metric needs bit",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: status_bit
            """,
            "r.yaml:3: rules[0]: rule a: status_bit needs flag (a boolean metric) or metric + bit",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: status_bit
                metric: status
                bit: 64
            """,
            "r.yaml:6: rules[0].bit: Input should be less than or equal to 63",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
                consecutive: 0
            """,
            "r.yaml:6: rules[0].consecutive: Input should be greater than or equal to 1",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
                severity: huge
            """,
            "r.yaml:6: rules[0].severity: Input should be 'low', 'medium', 'high' or 'critical'",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
                for: 10 minutes
            """,
            "r.yaml:6: rules[0].for: for '10 minutes' is not a duration (use e.g. 500ms, 30s, 10m, 1h, 1d)",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: alarm
                condition: "t > 1"
            """,
            "r.yaml:4: rules[0].type: Input should be 'threshold', 'condition', 'rate_of_change', 'no_data' or 'status_bit'",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: "a b"
                type: threshold
                condition: "t > 1"
            """,
            "r.yaml:3: rules[0].ruleId: 'a b' may only contain letters, digits and _ . : -",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                levels: []
            """,
            "r.yaml:5: rules[0].levels: List should have at least 1 item after validation, not 0",
        ),
        (
            """\
            productId: p
            rules: []
            """,
            "r.yaml:2: rules: List should have at least 1 item after validation, not 0",
        ),
        (
            """\
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
            """,
            "r.yaml:1: productId: Field required",
        ),
        (
            """\
            productId: p
            actions:
              cut: {desired: {}}
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
            """,
            "r.yaml:3: actions.cut.desired: Dictionary should have at least 1 item after validation, not 0",
        ),
    ],
)
def test_validation_problem(text, expected):
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: ""
            """,
            "r.yaml:3: rule a condition '': expression is empty",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
                clearCondition: ""
            """,
            "r.yaml:3: rule a clearCondition '': expression is empty",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > 1"
              - ruleId: b
                type: threshold
                condition: "t.__class__ > 1"
            """,
            "r.yaml:6: rule b condition 't.__class__ > 1': column 1: only metrics.<name> may use a dot",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                levels:
                  - {condition: "t > 2", severity: high}
                  - {condition: "t > exec(1)", severity: low}
            """,
            "r.yaml:3: rule a levels[1] 't > exec(1)': column 5: unknown function 'exec' (allowed: abs, min, max, clamp, round, sqrt, floor, ceil)",
        ),
        (
            """\
            productId: p
            formulas:
              ok: "t * 2"
              x: "t +"
            rules:
              - ruleId: a
                type: threshold
                condition: "x > 1"
            """,
            "r.yaml:4: formulas.x 't +': column 0: invalid syntax",
        ),
        (
            """\
            productId: p
            rules:
              - ruleId: a
                type: threshold
                condition: "t > limit"
            """,
            None,  # limit is a metric unless it is a parameter: fine without a spec
        ),
    ],
)
def test_expression_problems(text, expected):
    if expected is None:
        load_rule_text(textwrap.dedent(text))
    else:
        assert problems(text) == [expected]


SPEC_METRICS = {"product_a": frozenset({"temperature", "humidity"})}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "type: threshold\n    condition: \"tempC > 80\"",
            "rule a condition 'tempC > 80': column 1: unknown metric 'tempC' (known: humidity, temperature)",
        ),
        (
            "type: threshold\n    condition: \"metrics.temprature > 80\"",
            "rule a condition 'metrics.temprature > 80': column 1: unknown metric 'temprature'",
        ),
        ("type: status_bit\n    metric: flags\n    bit: 1", "rule a: unknown metric 'flags'"),
        ("type: status_bit\n    flag: alarm", "rule a: unknown metric 'alarm'"),
        ("type: rate_of_change\n    metric: pressure\n    window: 5m\n    limit: 1", "rule a: unknown metric 'pressure'"),
    ],
)
def test_unknown_metric_against_the_spec(rule, expected):
    text = f"productId: product_a\nrules:\n  - ruleId: ok\n    type: threshold\n    condition: \"temperature > 1\"\n  - ruleId: a\n    {rule}\n"
    found = problems(text, SPEC_METRICS)
    assert len(found) == 1 and found[0].startswith(f"r.yaml:6: {expected}"), found
    # Without the spec's metric names any name is accepted.
    load_rule_text(text)


def test_formulas_and_params_count_as_known_names():
    text = """\
    productId: product_a
    formulas:
      dew: "temperature - (100 - humidity) / 5"
      margin: "temperature - dew"
    rules:
      - ruleId: a
        type: threshold
        condition: "margin < limit"
        params: {limit: 2}
      - ruleId: b
        type: rate_of_change
        metric: dew
        window: 5m
        limit: 1
    """
    loaded = load_rule_text(textwrap.dedent(text), "r.yaml", SPEC_METRICS)
    assert loaded.compiled.rules[0].value_names == ("margin",)


def test_unknown_metric_in_a_real_spec():
    metrics = spec_metrics()
    text = "ruleId: t\nproductId: fire_sensor\ntype: threshold\ncondition: 'sensor_temprature > 60'\n"
    found = problems(text, metrics)
    assert found[0].startswith("r.yaml:1: rule t condition 'sensor_temprature > 60': column 1: unknown metric 'sensor_temprature' (known: ")
    assert "sensor_temperature" in found[0]


def test_not_a_mapping_and_bad_yaml():
    assert problems("- 1\n- 2\n") == ["r.yaml:1: (rules): a rule file is a YAML mapping, got list"]
    found = problems("productId: p\nrules: [\n")
    assert len(found) == 1 and found[0].startswith("r.yaml:")
