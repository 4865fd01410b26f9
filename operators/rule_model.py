"""The rule-set language: per-product alarm rules, formulas, automatic actions, device overrides.

A file in ``rules/`` is either one rule written as the client does::

    ruleId: temp-threshold-prod-a
    productId: prod-a
    type: threshold
    condition: "metrics.tempC > 80"
    severity: high
    autoAction: restart-fan

or a rule set (``ruleSetId``, ``productId``, ``version``, ``formulas``, ``actions``, ``rules``,
``overrides``). Conditions and formulas use :mod:`operators.expressions`. Durations are
written ``500ms``, ``30s``, ``10m``, ``1h``, ``1d`` or as seconds. ``docs/rules.md`` has the
reference.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from operators.spec_model import SpecError

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
RULE_TYPES = ("threshold", "condition", "rate_of_change", "no_data", "status_bit")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}
_ID = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def parse_duration_ms(value: object, what: str = "duration") -> int:
    """``"30s"`` -> 30000; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration such as 30s or 10m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return int(round(value * 1000))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(round(float(match.group(1)) * _UNIT_MS[match.group(2)]))
    raise ValueError(f"{what} {value!r} is not a duration (use e.g. 500ms, 30s, 10m, 1h, 1d)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"{value!r} may only contain letters, digits and _ . : -")
    return value


class Action(_Model):
    """A named automatic action: desired state sent to the device shadow, then verified."""

    desired: dict = Field(min_length=1)
    verify_within_ms: int = Field(default=300_000, alias="verifyWithin")
    description: str | None = None

    @field_validator("verify_within_ms", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration_ms(value, "verifyWithin")


class Level(_Model):
    """One severity level of a multi-level rule: the first level whose condition holds wins."""

    condition: str
    severity: Literal["low", "medium", "high", "critical"]


class Rule(_Model):
    """One alarm rule. Which options apply depends on ``type`` (see docs/rules.md)."""

    rule_id: str = Field(alias="ruleId")
    product_id: str | None = Field(default=None, alias="productId")
    type: Literal["threshold", "condition", "rate_of_change", "no_data", "status_bit"]
    description: str | None = None
    enabled: bool = True
    severity: Literal["low", "medium", "high", "critical"] = "high"
    condition: str | None = None
    clear_condition: str | None = Field(default=None, alias="clearCondition")
    levels: list[Level] | None = Field(default=None, min_length=1)
    for_ms: int | None = Field(default=None, alias="for")
    clear_for_ms: int | None = Field(default=None, alias="clearFor")
    consecutive: int | None = Field(default=None, ge=1)
    params: dict[str, float] = Field(default_factory=dict)
    auto_action: str | None = Field(default=None, alias="autoAction")
    # rate_of_change
    metric: str | None = None
    window_ms: int | None = Field(default=None, alias="window")
    limit: float | None = None
    per_ms: int = Field(default=60_000, alias="per")
    direction: Literal["rise", "fall", "any"] = "any"
    # no_data
    expected_period_ms: int | None = Field(default=None, alias="expectedPeriod")
    grace_ms: int = Field(default=600_000, alias="grace")
    periods: int = Field(default=2, ge=1)
    # status_bit
    flag: str | None = None
    bit: int | None = Field(default=None, ge=0, le=63)

    _check_rule_id = field_validator("rule_id")(_check_id)

    @field_validator("for_ms", "clear_for_ms", "window_ms", "per_ms", "expected_period_ms", "grace_ms", mode="before")
    @classmethod
    def _durations(cls, value, info):
        if value is None:
            return None
        return parse_duration_ms(value, info.field_name.removesuffix("_ms"))

    @model_validator(mode="after")
    def _by_type(self):
        kind = self.type
        if kind in ("threshold", "condition"):
            if (self.condition is None) == (self.levels is None):
                raise ValueError(f"rule {self.rule_id}: a {kind} rule needs condition or levels (one of them)")
        elif self.condition is not None or self.levels is not None:
            raise ValueError(f"rule {self.rule_id}: condition/levels belong to threshold and condition rules, not {kind}")
        if kind == "rate_of_change" and (self.metric is None or self.window_ms is None or self.limit is None):
            raise ValueError(f"rule {self.rule_id}: rate_of_change needs metric, window and limit")
        if kind == "no_data" and self.expected_period_ms is None:
            raise ValueError(f"rule {self.rule_id}: no_data needs expectedPeriod (the device's reporting period)")
        if kind == "status_bit":
            if self.metric is None and self.flag is None:
                raise ValueError(f"rule {self.rule_id}: status_bit needs flag (a boolean metric) or metric + bit")
            if self.metric is not None and self.bit is None:
                raise ValueError(f"rule {self.rule_id}: status_bit with metric needs bit")
        if kind == "no_data" and (self.consecutive or self.for_ms or self.clear_condition):
            raise ValueError(f"rule {self.rule_id}: no_data takes expectedPeriod, grace and periods only")
        if self.window_ms is not None and self.window_ms <= 0 or self.per_ms <= 0:
            raise ValueError(f"rule {self.rule_id}: window and per must be positive")
        return self


class RuleSet(_Model):
    """The rules of one product, versioned as a whole."""

    rule_set_id: str | None = Field(default=None, alias="ruleSetId")
    product_id: str = Field(alias="productId")
    version: str | None = None
    description: str | None = None
    formulas: dict[str, str] = Field(default_factory=dict)
    actions: dict[str, Action] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)
    overrides: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _single_rule(cls, data):
        # The client's files hold one rule at the top level.
        if isinstance(data, dict) and "ruleId" in data and "rules" not in data:
            rule = {k: v for k, v in data.items() if k not in ("version", "ruleSetId")}
            data = {"productId": data.get("productId"), "rules": [rule], **{k: data[k] for k in ("version", "ruleSetId") if k in data}}
        if isinstance(data, dict) and isinstance(data.get("version"), int | float):
            data = dict(data, version=str(data["version"]))
        return data

    @model_validator(mode="after")
    def _consistent(self):
        ids = [r.rule_id for r in self.rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            # Located at the second rule using the id (SpecError paths give problems their line).
            again = next(n for n, i in enumerate(ids) if i in ids[:n])
            raise SpecError(f"rule ids used twice: {', '.join(duplicates)}", ("rules", again, "ruleId"))
        for n, rule in enumerate(self.rules):
            if rule.product_id is not None and rule.product_id != self.product_id:
                raise SpecError(f"rule {rule.rule_id} is for product {rule.product_id}, the set for {self.product_id}", ("rules", n, "productId"))
            if rule.auto_action is not None and not _ID.match(rule.auto_action):
                raise SpecError(f"rule {rule.rule_id}: autoAction {rule.auto_action!r} is not an action name", ("rules", n, "autoAction"))
        for device, by_rule in self.overrides.items():
            for rule_id, params in by_rule.items():
                rule = next((r for r in self.rules if r.rule_id == rule_id), None)
                if rule is None:
                    raise SpecError(f"overrides.{device}.{rule_id}: no rule {rule_id!r} in this set", ("overrides", device, rule_id))
                unknown = set(params) - set(rule.params)
                if unknown:
                    names = ", ".join(sorted(unknown))
                    raise SpecError(f"overrides.{device}.{rule_id}: {names} not among the rule's params", ("overrides", device, rule_id))
        return self


def action_for(rule_set: RuleSet, name: str) -> Action:
    """The action named by a rule; an undefined name (as in the client's example, which names
    ``restart-fan`` without defining it) sends desired ``{"action": name}``."""
    return rule_set.actions.get(name) or Action(desired={"action": name})
