"""Loading rule sets from ``rules/`` and replaying telemetry through the alarm engine offline.

Problems are reported like spec problems, one ``file:line: field: reason`` line each. When the
product has a decoder spec, rule expressions may only name metrics that spec produces (plus
the rule set's formulas).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from operators.alarm_engine import AlarmEngine, CompiledRuleSet, DeviceState, EngineOutput, RuleSetError, compile_rule_set
from operators.expressions import EvaluationError, MissingValue
from operators.rule_model import Action, Level, Rule, RuleSet
from operators.spec_loading import SpecLoadError, spec_files, validation_problems
from operators.spec_yaml import YamlDocument, YamlDocumentError, load_yaml_file, load_yaml_text


@dataclass
class LoadedRuleSet:
    """A validated, compiled rule set and where it came from."""

    rule_set: RuleSet
    compiled: CompiledRuleSet
    source: str
    text: str
    notices: list[str] = field(default_factory=list)

    @property
    def product_id(self) -> str:
        """The product the rules are for."""
        return self.rule_set.product_id


# The values every metric takes in the sample records ``rules check`` evaluates rules with.
SAMPLE_VALUES = (0, 1, -1, 0.5, 1e9, -1e9)


def sample_evaluation_problems(compiled: CompiledRuleSet) -> list[str]:
    """What fails at run time when the rules meet sample records: every metric the expressions
    read set to each of ``SAMPLE_VALUES`` in turn (a missing metric is not a failure: the rule
    waits for it). One line per failing expression, with the first sample it failed on.

    Args:
        compiled: A compiled rule set.

    Returns:
        Problems such as ``rule ratio condition 'a / b > 2': division by zero (with a=0, b=0)``.
    """
    expressions = [(f"formula {name}", expression) for name, expression in compiled.formulas]
    for item in compiled.rules:
        rule = item.rule
        expressions += [(f"rule {rule.rule_id} condition", item.condition), (f"rule {rule.rule_id} clearCondition", item.clear)]
        expressions += [(f"rule {rule.rule_id} level {severity}", expression) for expression, severity in item.levels]
    names = sorted({name for _, e in expressions if e is not None for name in e.metric_names})
    formula_names = [name for name, _ in compiled.formulas]
    params = {item.rule.rule_id: item.rule.params or {} for item in compiled.rules}
    problems: dict[str, str] = {}
    for value in SAMPLE_VALUES:
        metrics = dict.fromkeys(names, value)
        for name, expression in compiled.formulas:
            try:
                metrics[name] = expression.evaluate(metrics)
            except (MissingValue, EvaluationError):
                metrics.pop(name, None)
        for where, expression in expressions:
            if expression is None or where in problems:
                continue
            rule_id = where.split()[1] if where.startswith("rule ") else None
            try:
                expression.evaluate(metrics, params.get(rule_id))
            except MissingValue:
                continue
            except EvaluationError as exc:
                shown = ", ".join(f"{n}={value}" for n in sorted(expression.metric_names - set(formula_names))) or "no metrics"
                problems[where] = f"{where} {expression.text!r}: {str(exc).removeprefix(repr(expression.text) + ': ')} (with {shown})"
    return list(problems.values())


def _rule_options() -> list[str]:
    names = set()
    for model in (Rule, RuleSet, Action, Level):
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
    return sorted(names)


def parse_rule_set(doc: YamlDocument, metrics_by_product: dict[str, frozenset[str]] | None = None) -> LoadedRuleSet:
    """Validates and compiles one rule-set document.

    Raises:
        SpecLoadError: ``file:line: field: reason`` for each problem.
    """
    if not isinstance(doc.data, dict):
        raise SpecLoadError([f"{doc.source}:1: (rules): a rule file is a YAML mapping, got {type(doc.data).__name__}"])
    try:
        rule_set = RuleSet.model_validate(doc.data)
    except ValidationError as exc:
        problems = validation_problems(doc, exc, _rule_options(), "docs/rules.md")
        raise SpecLoadError([p.replace(": (spec): ", ": (rules): ", 1) for p in problems]) from None
    version = rule_set.version or "sha256:" + hashlib.sha256(doc.text.encode("utf-8")).hexdigest()[:12]
    metrics = (metrics_by_product or {}).get(rule_set.product_id)
    try:
        compiled = compile_rule_set(rule_set, version, metrics)
    except RuleSetError as exc:
        raise SpecLoadError([f"{doc.source}:{_line_of_rule(doc, str(exc))}: {exc}"]) from None
    return LoadedRuleSet(rule_set, compiled, doc.source, doc.text, list(doc.notices))


def _line_of_rule(doc: YamlDocument, message: str) -> int | None:
    data = doc.data
    if message.startswith("rule ") and isinstance(data, dict) and isinstance(data.get("rules"), list):
        rule_id = message.split()[1].rstrip(":")
        for index, rule in enumerate(data["rules"]):
            if isinstance(rule, dict) and rule.get("ruleId") == rule_id:
                return doc.line_of(("rules", index))
    if message.startswith("formulas."):
        return doc.line_of(("formulas", message.split()[0].split(".", 1)[1]))
    return doc.line_of(())


def load_rule_file(path: str | Path, metrics_by_product: dict[str, frozenset[str]] | None = None) -> LoadedRuleSet:
    """Reads, validates and compiles one rule file."""
    try:
        doc = load_yaml_file(path)
    except YamlDocumentError as exc:
        raise SpecLoadError([str(exc)]) from None
    return parse_rule_set(doc, metrics_by_product)


def load_rule_text(text: str, source: str = "<text>", metrics_by_product: dict[str, frozenset[str]] | None = None) -> LoadedRuleSet:
    """Reads, validates and compiles a rule set given as text."""
    try:
        doc = load_yaml_text(text, source)
    except YamlDocumentError as exc:
        raise SpecLoadError([str(exc)]) from None
    return parse_rule_set(doc, metrics_by_product)


def load_rule_sets(paths: list[str | Path], metrics_by_product: dict[str, frozenset[str]] | None = None) -> list[LoadedRuleSet]:
    """Loads every rule file under ``paths`` (files or directories); one set per product.

    Raises:
        SpecLoadError: every problem of every file, and two files for one product.
    """
    loaded, problems = [], []
    for path in spec_files(paths):
        try:
            loaded.append(load_rule_file(path, metrics_by_product))
        except SpecLoadError as exc:
            problems.extend(exc.problems)
    seen: dict[str, str] = {}
    for item in loaded:
        if item.product_id in seen:
            problems.append(f"{item.source}:1: productId: product {item.product_id!r} already has rules in {seen[item.product_id]}")
        seen[item.product_id] = item.source
    if problems:
        raise SpecLoadError(problems)
    return loaded


def rule_message(loaded: LoadedRuleSet, document: dict, pushed_at: int) -> bytes:
    """The ``iotlink.rules`` record for a rule-set version (keyed by product id)."""
    import orjson

    return orjson.dumps(
        {"product_id": loaded.product_id, "version": loaded.compiled.version, "pushed_at": pushed_at, "document": document}
    )


def parse_rule_message(value: str | bytes) -> tuple[str, str, LoadedRuleSet]:
    """Validates an ``iotlink.rules`` record; returns (product id, version, compiled rule set).

    Raises:
        SpecLoadError: not a rule message, or an invalid rule set (with the reasons).
    """
    import orjson

    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise SpecLoadError([f"iotlink.rules: not JSON: {exc}"]) from None
    if not isinstance(message, dict) or not isinstance(message.get("document"), dict):
        raise SpecLoadError(["iotlink.rules: expected {product_id, version, document: {rule set}}"])
    loaded = load_rule_text(orjson.dumps(message["document"]).decode(), f"iotlink.rules {message.get('product_id')}")
    if message.get("product_id") not in (None, loaded.product_id):
        raise SpecLoadError([f"iotlink.rules: message for {message.get('product_id')!r} holds rules for {loaded.product_id!r}"])
    version = str(message.get("version") or loaded.compiled.version)
    if version != loaded.compiled.version:
        loaded.compiled.version = version
    return loaded.product_id, version, loaded


class RulesFactory:
    """Builds the compiled rule sets inside each Flink task from the texts read at job start."""

    def __init__(self, rule_sets: list[LoadedRuleSet]):
        self.sources = [(item.source, item.text) for item in rule_sets]
        self.product_ids = frozenset(item.product_id for item in rule_sets)

    def __call__(self) -> dict[str, CompiledRuleSet]:
        compiled = {}
        for source, text in self.sources:
            loaded = load_rule_text(text, source)
            compiled[loaded.product_id] = loaded.compiled
        return compiled


# --- offline replay ---------------------------------------------------------------------------


@dataclass
class ReplayStats:
    """Counters of a replay."""

    records: int = 0
    late: int = 0
    events: int = 0
    commands: int = 0
    errors: list[str] = field(default_factory=list)


def replay(
    items: Iterable[dict],
    rule_sets: list[LoadedRuleSet],
    max_out_of_orderness_ms: int = 0,
    until_ts: int | None = None,
    stats: ReplayStats | None = None,
) -> Iterator[dict]:
    """Runs telemetry records through the alarm engine; yields alarm events (and commands) in order.

    Event time is the newest device time seen minus the out-of-orderness bound; devices' timers
    (no-data, durations, verification) fire as it passes them. At the end every buffered record
    is evaluated and event time advances to ``until_ts`` (default: the newest device time).

    Items are standard telemetry records; an item ``{"ack": {"device_id", "alarm_id", "ts", "by"}}``
    acknowledges an alarm and ``{"rule_set": {...}}`` puts a new rule-set version in force.
    """
    stats = stats if stats is not None else ReplayStats()
    engine = AlarmEngine({item.product_id: item.compiled for item in rule_sets}, max_out_of_orderness_ms)
    states: dict[str, DeviceState] = {}
    newest: int | None = None

    def emit(out: EngineOutput) -> Iterator[dict]:
        stats.late += out.late
        stats.errors.extend(out.errors)
        for event in out.events:
            stats.events += 1
            yield event
        for command in out.commands:
            stats.commands += 1
            yield {"command": command}

    def advance(now: int) -> Iterator[dict]:
        for device_id in sorted(states):
            yield from emit(engine.advance(states[device_id], device_id, now))

    for item in items:
        if "rule_set" in item:
            loaded = load_rule_text(_as_yaml(item["rule_set"]), "<replay rule_set>")
            engine.set_rule_set(loaded.product_id, loaded.compiled)
            continue
        if "ack" in item:
            ack = item["ack"]
            state = states.setdefault(ack["device_id"], DeviceState())
            yield from emit(engine.acknowledge(state, ack["device_id"], ack["alarm_id"], ack["ts"], ack.get("by")))
            continue
        stats.records += 1
        device_id = item["device_id"]
        state = states.setdefault(device_id, DeviceState())
        yield from emit(engine.on_record(state, item))
        ts = item["device_ts"]
        if newest is None or ts > newest:
            newest = ts
            yield from advance(newest - max_out_of_orderness_ms)
    for device_id in sorted(states):
        yield from emit(engine.flush(states[device_id]))
    final = until_ts if until_ts is not None else newest
    if final is not None:
        yield from advance(final)


def _as_yaml(document: dict) -> str:
    import orjson

    # JSON is YAML: the rule-set document goes through the same loader and validation.
    return orjson.dumps(document).decode()
