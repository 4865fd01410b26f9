"""Formulas over the daily customer x product aggregates (docs/analytics.md).

A formula is registered per customer and/or product and evaluated, for each day, over that
day's ``customer_product_daily`` rows with the rules' safe evaluator
(:mod:`operators.expressions`: the same language and the same limits). Its inputs are named
``<metric>_<statistic>`` (``power_w_avg``, ``tempC_max``; statistics ``count sum min max
avg``), ``devices`` and ``sites`` (the most of any metric that day), and the formula's own
``params``; a metric name that is not an identifier is read as ``metrics["name_avg"]``.

A file (``iotlink formulas push|check``)::

    formulas:
      - id: energy_kwh
        product: prod-a          # optional: every product
        customer: cust-a         # optional: every customer
        expression: power_w_avg * 24 / 1000 * tariff_factor
        params: {tariff_factor: 1.0}
        unit: kWh
        description: Energy per day from the mean power

Versions: each push of a changed formula is a new version; a day's result keeps the version that
computed it until a recomputation asks for that day (:func:`plan_evaluations`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.expressions import EvaluationError, Expression, ExpressionError, MissingValue, Scope, compile_expression
from operators.spec_loading import SpecLoadError, validation_problems
from operators.spec_yaml import YamlDocument, YamlDocumentError, load_yaml_file

STATISTICS = ("count", "sum", "min", "max", "avg")
MAX_FORMULAS_PER_FILE = 1000
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")


class FormulaSpec(BaseModel):
    """One formula as written in a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Formula id: a letter, then letters, digits, _ . : - (at most 64)")
    expression: str = Field(min_length=1, max_length=2000)
    customer: str | None = Field(None, min_length=1, max_length=128)
    product: str | None = Field(None, min_length=1, max_length=128)
    params: dict[str, float] = Field(default_factory=dict, max_length=100)
    unit: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=2000)

    @field_validator("id")
    @classmethod
    def _id_pattern(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("a letter, then letters, digits, _ . : - (at most 64 characters)")
        return value

    @field_validator("params")
    @classmethod
    def _finite_params(cls, value: dict[str, float]) -> dict[str, float]:
        for name, number in value.items():
            if not name.isidentifier():
                raise ValueError(f"parameter name {name!r} is not an identifier")
            if not math.isfinite(number):
                raise ValueError(f"parameter {name} is not a finite number")
        return value

    def compiled(self) -> Expression:
        """The compiled expression (parameters known, any metric name allowed)."""
        return compile_expression(self.expression, Scope(params=frozenset(self.params)))

    def same_definition(self, other: FormulaSpec) -> bool:
        """Whether a push of ``other`` changes nothing (same expression, scope, params, unit, text)."""
        return self.model_dump() == other.model_dump()


class FormulaFile(BaseModel):
    """A formula file: ``formulas:`` followed by a list."""

    model_config = ConfigDict(extra="forbid")

    formulas: list[FormulaSpec] = Field(min_length=1, max_length=MAX_FORMULAS_PER_FILE)


@dataclass(frozen=True)
class Formula:
    """A registered formula version."""

    spec: FormulaSpec
    version: int

    @property
    def formula_id(self) -> str:
        """The formula's id."""
        return self.spec.id

    def applies_to(self, customer_id: str, product_id: str) -> bool:
        """Whether the formula is evaluated for this customer and product."""
        return self.spec.customer in (None, customer_id) and self.spec.product in (None, product_id)


def parse_formula_file(doc: YamlDocument) -> list[FormulaSpec]:
    """Validates a formula document and compiles every expression.

    Raises:
        SpecLoadError: ``file:line: field: reason`` for each problem.
    """
    if not isinstance(doc.data, dict):
        raise SpecLoadError([f"{doc.source}:1: (formulas): a formula file is a YAML mapping with 'formulas:', got {type(doc.data).__name__}"])
    try:
        parsed = FormulaFile.model_validate(doc.data)
    except ValidationError as exc:
        options = sorted(set(FormulaSpec.model_fields) | {"formulas"})
        problems = validation_problems(doc, exc, options, "docs/analytics.md")
        raise SpecLoadError([p.replace(": (spec): ", ": (formulas): ", 1) for p in problems]) from None
    problems = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(parsed.formulas):
        line = doc.line_of(("formulas", index, "expression"))
        if spec.id in seen:
            where = f"{doc.source}:{doc.line_of(('formulas', index, 'id'))}: formulas[{index}].id"
            problems.append(f"{where}: {spec.id!r} is also formula {seen[spec.id]}")
        seen.setdefault(spec.id, index)
        try:
            spec.compiled()
        except ExpressionError as exc:
            problems.append(f"{doc.source}:{line}: formulas[{index}].expression: {exc}")
    if problems:
        raise SpecLoadError(problems)
    return parsed.formulas


def load_formula_files(paths: Iterable[str | Path]) -> list[FormulaSpec]:
    """Every formula of the files (``*.yaml`` / ``*.yml`` of directories), ids unique across them.

    Raises:
        SpecLoadError: every problem of every file, each ``file:line: field: reason``.
    """
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path])
    if not files:
        raise SpecLoadError([f"{', '.join(map(str, paths))}: no formula files (*.yaml, *.yml)"])
    problems: list[str] = []
    specs: list[FormulaSpec] = []
    where: dict[str, str] = {}
    for path in files:
        try:
            loaded = parse_formula_file(load_yaml_file(path))
        except YamlDocumentError as exc:
            problems.append(str(exc))
            continue
        except SpecLoadError as exc:
            problems.extend(exc.problems)
            continue
        for spec in loaded:
            if spec.id in where:
                problems.append(f"{path}: formula {spec.id!r} is also in {where[spec.id]}")
            where.setdefault(spec.id, str(path))
            specs.append(spec)
    if problems:
        raise SpecLoadError(problems)
    return specs


def input_name(metric: str, statistic: str) -> str:
    """The input name of a metric's daily statistic (``power_w`` + ``avg`` -> ``power_w_avg``)."""
    return f"{metric}_{statistic}"


def daily_inputs(rows: Iterable[Mapping]) -> dict[str, float]:
    """A day's inputs from its ``customer_product_daily`` rows (one per metric).

    Args:
        rows: Mappings with ``metric``, the statistics, ``devices`` and ``sites``.

    Returns:
        ``<metric>_<statistic>`` -> value for each non-NULL statistic, plus ``devices`` and
        ``sites`` (the largest count of any metric).
    """
    inputs: dict[str, float] = {}
    devices = sites = 0
    for row in rows:
        for statistic in STATISTICS:
            value = row.get(statistic)
            if value is not None:
                inputs[input_name(row["metric"], statistic)] = value
        devices = max(devices, int(row.get("devices") or 0))
        sites = max(sites, int(row.get("sites") or 0))
    inputs["devices"] = devices
    inputs["sites"] = sites
    return inputs


@dataclass(frozen=True)
class FormulaResult:
    """A formula evaluated for one day: exactly one of ``result`` and ``error`` is set."""

    result: float | None
    error: str | None
    inputs: dict[str, float]


def evaluate_formula(spec: FormulaSpec, inputs: Mapping[str, float]) -> FormulaResult:
    """Evaluates a formula over a day's inputs; never raises for bad data.

    Returns:
        The numeric result with the inputs it read, or the error (a missing input, division by
        zero, a non-numeric result, an expression that no longer compiles).
    """
    try:
        expression = spec.compiled()
    except ExpressionError as exc:
        return FormulaResult(None, f"expression does not compile: {exc}", {})
    used = {name: inputs[name] for name in sorted(expression.metric_names) if name in inputs}
    try:
        value = expression.evaluate(inputs, spec.params)
    except MissingValue as exc:
        return FormulaResult(None, f"no input {exc.name!r} that day", used)
    except EvaluationError as exc:
        return FormulaResult(None, str(exc)[:500], used)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return FormulaResult(None, f"result {str(value)[:100]!r} is not a finite number", used)
    return FormulaResult(float(value), None, used)


@dataclass(frozen=True)
class DayGroup:
    """A customer, product and day that has daily aggregates.

    Attributes:
        updated_at: When any of the day's aggregate rows last changed (comparable values).
    """

    customer_id: str
    product_id: str
    day: date
    updated_at: object


@dataclass(frozen=True)
class StoredResult:
    """What ``customer_analysis_daily`` holds for a day and formula."""

    formula_version: int
    computed_at: object


@dataclass(frozen=True)
class Evaluation:
    """One formula to (re)compute for one day, with the version to use and why."""

    group: DayGroup
    formula: Formula
    reason: str  # new | data changed | asked (--since)


def plan_evaluations(
    groups: Iterable[DayGroup],
    live: Mapping[str, Formula],
    versions: Mapping[tuple[str, int], Formula],
    stored: Mapping[tuple[str, str, date, str], StoredResult],
    since: date | None = None,
) -> list[Evaluation]:
    """What to evaluate: never a silent change of version.

    - a day without a result for a formula: the live version (``new``);
    - a day whose aggregates changed after its result: the version the result has
      (``data changed``), so a formula pushed today does not rewrite old days unasked;
    - a day on or after ``since``: the live version (``asked``), whether or not it changed.

    Args:
        groups: The days that have aggregates.
        live: Formula id -> its highest version.
        versions: (formula id, version) -> that version (for results on older versions).
        stored: (customer, product, day, formula id) -> the stored result.
        since: Recompute every day from this one with the live versions.
    """
    plan = []
    for group in groups:
        for formula_id, formula in live.items():
            if not formula.applies_to(group.customer_id, group.product_id):
                continue
            result = stored.get((group.customer_id, group.product_id, group.day, formula_id))
            if since is not None and group.day >= since:
                plan.append(Evaluation(group, formula, "asked"))
            elif result is None:
                plan.append(Evaluation(group, formula, "new"))
            elif result.computed_at < group.updated_at:
                pinned = versions.get((formula_id, result.formula_version), formula)
                plan.append(Evaluation(group, pinned, "data changed"))
    return plan
