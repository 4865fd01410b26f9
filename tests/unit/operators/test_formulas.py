"""Formulas over the daily aggregates: files, inputs, evaluation and what gets recomputed."""

import datetime as dt

import pytest

from operators.formulas import (
    DayGroup,
    Formula,
    FormulaSpec,
    StoredResult,
    daily_inputs,
    evaluate_formula,
    load_formula_files,
    plan_evaluations,
)
from operators.spec_loading import SpecLoadError

ROWS = [
    {"metric": "power_w", "count": 10, "sum": 5000.0, "min": 100.0, "max": 900.0, "avg": 500.0, "devices": 3, "sites": 2},
    {"metric": "temp-c", "count": 8, "sum": 200.0, "min": 20.0, "max": 30.0, "avg": 25.0, "devices": 2, "sites": 1},
]


def _write(tmp_path, text, name="f.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_file_loads_with_scope_params_and_unit(tmp_path):
    path = _write(tmp_path, "formulas:\n  - id: energy_kwh\n    product: prod-a\n    expression: power_w_avg * 24 / 1000 * f\n"
                            "    params: {f: 2}\n    unit: kWh\n")
    (spec,) = load_formula_files([path])
    assert (spec.id, spec.product, spec.customer, spec.params, spec.unit) == ("energy_kwh", "prod-a", None, {"f": 2.0}, "kWh")


@pytest.mark.parametrize(("text", "expected"), [
    ("formulas:\n  - id: x\n    expression: a +\n", "f.yaml:3: formulas[0].expression: column"),
    ("formulas:\n  - id: x\n    expresion: a\n", "unknown option (did you mean 'expression'?)"),
    ("formulas:\n  - id: 9x\n    expression: a\n", "f.yaml:2: formulas[0].id: a letter, then letters"),
    ("formulas:\n  - id: x\n    expression: a\n  - id: x\n    expression: b\n", "f.yaml:4: formulas[1].id: 'x' is also formula 0"),
    ("formulas:\n  - id: x\n    expression: __import__('os')\n", "formulas[0].expression: column 1: unknown function '__import__'"),
    ("formulas:\n  - id: x\n    expression: a\n    params: {p: .nan}\n", "parameter p is not a finite number"),
    ("- id: x\n", "f.yaml:1: (formulas): a formula file is a YAML mapping"),
])
def test_problems_name_file_line_field_and_reason(tmp_path, text, expected):
    with pytest.raises(SpecLoadError) as error:
        load_formula_files([_write(tmp_path, text)])
    assert expected in str(error.value)


def test_ids_are_unique_across_files_and_a_directory_reads_every_yaml(tmp_path):
    _write(tmp_path, "formulas:\n  - id: x\n    expression: a\n", "one.yaml")
    _write(tmp_path, "formulas:\n  - id: x\n    expression: b\n", "two.yml")
    with pytest.raises(SpecLoadError, match="formula 'x' is also in"):
        load_formula_files([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecLoadError, match="no formula files"):
        load_formula_files([tmp_path / "empty"])


def test_daily_inputs_name_each_statistic_and_take_the_most_devices_and_sites():
    inputs = daily_inputs(ROWS)
    assert inputs["power_w_avg"] == 500.0 and inputs["temp-c_max"] == 30.0 and inputs["power_w_count"] == 10
    assert (inputs["devices"], inputs["sites"]) == (3, 2)


@pytest.mark.parametrize(("expression", "result", "error"), [
    ("power_w_avg * 24 / 1000", 12.0, None),
    ('metrics["temp-c_max"] - metrics["temp-c_min"]', 10.0, None),
    ("power_w_sum / devices", 5000 / 3, None),
    ("rpm_avg * 2", None, "no input 'rpm_avg' that day"),
    ("power_w_avg / (devices - 3)", None, "division by zero"),
    ("power_w_avg > 1", None, "result 'True' is not a finite number"),
    ("10 ** 400 * 1.0", None, "10"),
])
def test_evaluation_gives_a_result_or_an_error_never_raises(expression, result, error):
    outcome = evaluate_formula(FormulaSpec(id="f", expression=expression), daily_inputs(ROWS))
    if error is None:
        assert outcome.result == pytest.approx(result) and outcome.error is None
    else:
        assert outcome.result is None and error in outcome.error


def test_inputs_recorded_are_the_ones_the_formula_read():
    outcome = evaluate_formula(FormulaSpec(id="f", expression="power_w_avg * k", params={"k": 2}), daily_inputs(ROWS))
    assert outcome.inputs == {"power_w_avg": 500.0} and outcome.result == 1000.0


def _formula(version, expression="a", customer=None, product=None):
    return Formula(FormulaSpec(id="f", expression=expression, customer=customer, product=product), version)


def test_plan_new_days_use_the_live_version_changed_days_keep_theirs_since_recomputes():
    day1, day2, day3 = (dt.date(2026, 3, d) for d in (1, 2, 3))
    groups = [DayGroup("c", "p", day1, 10), DayGroup("c", "p", day2, 10), DayGroup("c", "p", day3, 10)]
    v1, v2 = _formula(1), _formula(2, "b")
    stored = {("c", "p", day1, "f"): StoredResult(1, 20), ("c", "p", day2, "f"): StoredResult(1, 5)}
    plan = plan_evaluations(groups, {"f": v2}, {("f", 1): v1, ("f", 2): v2}, stored)
    assert [(e.group.day, e.formula.version, e.reason) for e in plan] == [(day2, 1, "data changed"), (day3, 2, "new")]
    plan = plan_evaluations(groups, {"f": v2}, {("f", 1): v1, ("f", 2): v2}, stored, since=day2)
    assert [(e.group.day, e.formula.version, e.reason) for e in plan] == [(day2, 2, "asked"), (day3, 2, "asked")]


def test_plan_respects_customer_and_product_scope():
    groups = [DayGroup("c1", "p1", dt.date(2026, 3, 1), 1), DayGroup("c2", "p1", dt.date(2026, 3, 1), 1),
              DayGroup("c1", "p2", dt.date(2026, 3, 1), 1)]
    plan = plan_evaluations(groups, {"f": _formula(1, customer="c1", product="p1")}, {}, {})
    assert [(e.group.customer_id, e.group.product_id) for e in plan] == [("c1", "p1")]
