"""The alarm engine: per-device rule evaluation in device-time order, alarm lifecycle, actions.

Pure Python and deterministic, shared by the Flink operator and ``iotlink rules replay``.
State lives in plain objects (:class:`DeviceState`) that the caller keeps per device (Flink
keyed state, or a dict in the replay).

Ordering. Records of one device are buffered and evaluated in device-time order once the
device's own newest time is ``max_out_of_orderness`` past them; a record more than that bound
older than the device's newest record (or older than anything already evaluated, including a
fired timer) is *late*: counted, never changing alarm state. Timers (``for`` durations,
no-data deadlines, action verification) fire in device-time order too: when a later record is
evaluated, or when the caller advances event time past them (:meth:`AlarmEngine.advance`).
Values are taken to persist between records (a condition that held at the last record still
holds until the next one).

Lifecycle per (device, rule): at most one active alarm, ``alarm_id`` derived from device, rule
and start time. Events: RAISED, SEVERITY_CHANGED, ACKNOWLEDGED, CLEARED, AUTO_RESOLVED,
ESCALATED. A critical alarm whose rule names an ``autoAction`` emits a command (desired shadow
state) and is verified: cleared within ``verifyWithin`` -> AUTO_RESOLVED, else ESCALATED.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

from operators.expressions import RECORD_FIELDS, EvaluationError, Expression, MissingValue, Scope, compile_expression
from operators.rule_model import SEVERITY_RANK, Rule, RuleSet, action_for

ROUTES = {"critical": "auto_action", "high": "notify", "medium": "queue", "low": "log"}
# What evaluation reads of a record (expressions see the metrics and these fields): a buffered
# record keeps only them, since the device's state is stored again at every record.
BUFFERED_FIELDS = RECORD_FIELDS | {"metrics"}


class RuleSetError(ValueError):
    """A rule set that cannot be compiled (bad expression, unknown metric)."""


def alarm_id_for(device_id: str, rule_id: str, start_ts: int) -> str:
    """Deterministic alarm id from device, rule and start time."""
    return hashlib.sha256(f"{device_id}|{rule_id}|{start_ts}".encode()).hexdigest()[:24]


@dataclass
class CompiledRule:
    """A rule with its expressions compiled."""

    rule: Rule
    condition: Expression | None
    clear: Expression | None
    levels: list[tuple[Expression, str]]
    value_names: tuple[str, ...]


@dataclass
class CompiledRuleSet:
    """A product's rule set, compiled: formulas in order, rules, actions, overrides."""

    source: RuleSet
    version: str
    formulas: list[tuple[str, Expression]]
    rules: list[CompiledRule]


def compile_rule_set(rule_set: RuleSet, version: str, metrics: frozenset[str] | None = None) -> CompiledRuleSet:
    """Compiles every formula and condition of a rule set.

    Args:
        rule_set: The validated rule set.
        version: Version reported on events (the set's ``version`` or a content hash).
        metrics: Metric names the product's spec produces, to reject unknown names; None allows any.

    Raises:
        RuleSetError: naming the rule or formula, the expression and the problem.
    """
    formulas: list[tuple[str, Expression]] = []
    known = set()
    for name, text in rule_set.formulas.items():
        scope = Scope(formulas=frozenset(known), metrics=metrics)
        formulas.append((name, _compile(text, scope, f"formulas.{name}")))
        known.add(name)
    formula_names = frozenset(known)
    rules = []
    for rule in rule_set.rules:
        scope = Scope(params=frozenset(rule.params), formulas=formula_names, metrics=metrics)
        where = f"rule {rule.rule_id}"
        condition = _compile(rule.condition, scope, f"{where} condition") if rule.condition is not None else None
        clear = _compile(rule.clear_condition, scope, f"{where} clearCondition") if rule.clear_condition is not None else None
        levels = [(_compile(level.condition, scope, f"{where} levels[{i}]"), level.severity) for i, level in enumerate(rule.levels or [])]
        names: set[str] = set()
        for expression in [condition, clear, *(e for e, _ in levels)]:
            if expression is not None:
                names |= expression.metric_names
        for metric in (rule.metric, rule.flag):
            if metric is not None:
                if metrics is not None and metric not in metrics and metric not in formula_names:
                    raise RuleSetError(f"{where}: unknown metric {metric!r}")
                names.add(metric)
        rules.append(CompiledRule(rule, condition, clear, levels, tuple(sorted(names))))
    return CompiledRuleSet(rule_set, version, formulas, rules)


def _compile(text: str, scope: Scope, where: str) -> Expression:
    from operators.expressions import ExpressionError

    try:
        return compile_expression(text, scope)
    except ExpressionError as exc:
        raise RuleSetError(f"{where} {text!r}: {exc}") from None


@dataclass
class RuleState:
    """Per (device, rule) state."""

    alarm_id: str | None = None
    severity: str | None = None
    started_ts: int | None = None
    acknowledged: bool = False
    escalated: bool = False
    verify_deadline: int | None = None
    pending_since: int | None = None
    pending_severity: str | None = None
    clear_since: int | None = None
    streak: int = 0
    window: list = field(default_factory=list)
    last_values: dict = field(default_factory=dict)


@dataclass
class DeviceState:
    """Everything the engine keeps for one device."""

    buffer: list = field(default_factory=list)
    seq: int = 0
    max_ts: int | None = None
    released_ts: int | None = None
    last_record_ts: int | None = None
    product_id: str | None = None
    rule_version: str | None = None
    rules: dict[str, RuleState] = field(default_factory=dict)


@dataclass
class EngineOutput:
    """What one call produced: alarm events, shadow commands, and whether the record was late."""

    events: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    late: int = 0
    errors: list[str] = field(default_factory=list)


class AlarmEngine:
    """Evaluates rule sets for devices; see the module docstring for the semantics."""

    def __init__(self, rule_sets: dict[str, CompiledRuleSet], max_out_of_orderness_ms: int = 0):
        self.rule_sets = dict(rule_sets)
        self.bound = max_out_of_orderness_ms

    # --- inputs ----------------------------------------------------------------------------

    def on_record(self, state: DeviceState, record: dict) -> EngineOutput:
        """Takes one telemetry record of the device; returns what became due."""
        out = EngineOutput()
        ts = record["device_ts"]
        if state.released_ts is not None and ts < state.released_ts:
            out.late = 1
            return out
        state.seq += 1
        kept = {name: value for name, value in record.items() if name in BUFFERED_FIELDS}
        heapq.heappush(state.buffer, (ts, state.seq, kept))
        state.max_ts = ts if state.max_ts is None else max(state.max_ts, ts)
        horizon = state.max_ts - self.bound
        self._release(state, horizon, out)
        # Anything older than the bound behind the newest record is late from now on.
        state.released_ts = horizon if state.released_ts is None else max(state.released_ts, horizon)
        return out

    def advance(self, state: DeviceState, device_id: str, now_ts: int) -> EngineOutput:
        """Event time reached ``now_ts`` (across devices): fire this device's timers due by then.

        Timers only fire here when no buffered record of the device could precede them.
        """
        out = EngineOutput()
        if state.max_ts is None or now_ts <= state.max_ts:
            return out  # the device's own records drive everything up to its newest time
        self._release(state, state.max_ts, out)
        self._fire_timers(state, device_id, now_ts, out)
        return out

    def next_deadline(self, state: DeviceState) -> int | None:
        """The earliest event time at which :meth:`advance` would do something for this device."""
        candidates = []
        if state.buffer and state.max_ts is not None:
            candidates.append(state.max_ts + 1)
        rule_set = self.rule_sets.get(state.product_id)
        if rule_set is not None:
            for compiled in rule_set.rules:
                candidates.extend(d for d in self._deadlines(compiled, state.rules.get(compiled.rule.rule_id), state) if d is not None)
        floor = (state.max_ts + 1) if state.max_ts is not None else None
        due = [c if floor is None else max(c, floor) for c in candidates]
        return min(due) if due else None

    def flush(self, state: DeviceState) -> EngineOutput:
        """End of input: evaluate every buffered record."""
        out = EngineOutput()
        if state.max_ts is not None:
            self._release(state, state.max_ts, out)
        return out

    def acknowledge(self, state: DeviceState, device_id: str, alarm_id: str, ts: int, by: str | None = None) -> EngineOutput:
        """An operator acknowledged an alarm (command on the control topic)."""
        out = EngineOutput()
        for rule_id, rs in state.rules.items():
            if rs.alarm_id == alarm_id and not rs.acknowledged:
                rs.acknowledged = True
                compiled = self._rule(state, rule_id)
                version = self.rule_sets[state.product_id].version if compiled else None
                out.events.append(self._event("ACKNOWLEDGED", device_id, state.product_id, rule_id, version, rs, ts, {"by": by}))
        return out

    def set_rule_set(self, product_id: str, compiled: CompiledRuleSet) -> None:
        """Puts a rule-set version in force. Each device moves to it at its next evaluated record,
        where alarms of rules the new version no longer has (or disables) are cleared."""
        self.rule_sets[product_id] = compiled

    # --- evaluation ------------------------------------------------------------------------

    def _rule(self, state: DeviceState, rule_id: str) -> CompiledRule | None:
        rule_set = self.rule_sets.get(state.product_id)
        if rule_set is None:
            return None
        return next((c for c in rule_set.rules if c.rule.rule_id == rule_id), None)

    def _release(self, state: DeviceState, until_ts: int, out: EngineOutput) -> None:
        while state.buffer and state.buffer[0][0] <= until_ts:
            ts, _, record = heapq.heappop(state.buffer)
            state.released_ts = ts if state.released_ts is None else max(state.released_ts, ts)
            self._evaluate(state, record, out)

    def _fire_timers(self, state: DeviceState, device_id: str, now_ts: int, out: EngineOutput) -> None:
        rule_set = self.rule_sets.get(state.product_id)
        if rule_set is None:
            return
        while True:
            due = []
            for compiled in rule_set.rules:
                rs = state.rules.get(compiled.rule.rule_id)
                for deadline in self._deadlines(compiled, rs, state):
                    if deadline is not None and deadline <= now_ts:
                        due.append((deadline, compiled.rule.rule_id))
            if not due:
                return
            deadline, rule_id = min(due)
            self._fire(state, device_id, self._rule(state, rule_id), deadline, rule_set.version, out)
            # The device's time has been evaluated up to the timer: older records are late now.
            state.released_ts = deadline if state.released_ts is None else max(state.released_ts, deadline)

    @staticmethod
    def _deadlines(compiled: CompiledRule, rs: RuleState | None, state: DeviceState) -> list[int | None]:
        rule = compiled.rule
        deadlines: list[int | None] = []
        if not rule.enabled:
            return deadlines
        if rule.type == "no_data":
            if state.last_record_ts is not None and (rs is None or rs.alarm_id is None):
                deadlines.append(state.last_record_ts + rule.periods * rule.expected_period_ms + rule.grace_ms)
            return deadlines
        if rs is None:
            return deadlines
        if rs.alarm_id is None and rs.pending_since is not None and rule.for_ms and rs.streak >= (rule.consecutive or 0):
            deadlines.append(rs.pending_since + rule.for_ms)
        if rs.alarm_id is not None and rs.clear_since is not None and rule.clear_for_ms:
            deadlines.append(rs.clear_since + rule.clear_for_ms)
        if rs.alarm_id is not None and rs.verify_deadline is not None and not rs.escalated:
            deadlines.append(rs.verify_deadline)
        return deadlines

    def _fire(self, state, device_id, compiled, at_ts, version, out) -> None:
        rule = compiled.rule
        rs = state.rules.setdefault(rule.rule_id, RuleState())
        if rule.type == "no_data":
            gap = at_ts - state.last_record_ts
            self._raise(state, device_id, compiled, rs, at_ts, rule.severity, {"last_seen_ts": state.last_record_ts, "silent_ms": gap}, version, out)
            return
        if rs.alarm_id is None and rs.pending_since is not None and rule.for_ms and at_ts == rs.pending_since + rule.for_ms:
            self._raise(state, device_id, compiled, rs, at_ts, rs.pending_severity or rule.severity, rs.last_values, version, out)
            return
        if rs.alarm_id is not None and rs.clear_since is not None and rule.clear_for_ms and at_ts == rs.clear_since + rule.clear_for_ms:
            self._clear(state, device_id, compiled, rs, at_ts, rs.last_values, version, out)
            return
        if rs.alarm_id is not None and rs.verify_deadline == at_ts:
            rs.escalated = True
            out.events.append(self._event("ESCALATED", device_id, state.product_id, rule.rule_id, version, rs, at_ts, rs.last_values))

    def _evaluate(self, state: DeviceState, record: dict, out: EngineOutput) -> None:
        device_id, ts = record["device_id"], record["device_ts"]
        product_id = record.get("product_id")
        state.product_id = product_id
        rule_set = self.rule_sets.get(product_id)
        if rule_set is None:
            state.last_record_ts = ts
            return
        if state.rule_version != rule_set.version:
            self._adopt(state, device_id, rule_set, ts, out)
        # Timers due before this record happen first (device-time order).
        self._fire_timers(state, device_id, ts - 1, out)
        metrics = dict(record.get("metrics") or {})
        for name, formula in rule_set.formulas:
            try:
                metrics[name] = formula.evaluate(metrics, None, record)
            except MissingValue:
                continue
            except EvaluationError as exc:
                out.errors.append(f"formula {name}: {exc}")
        overrides = rule_set.source.overrides.get(device_id, {})
        for compiled in rule_set.rules:
            rule = compiled.rule
            if not rule.enabled:
                continue
            rs = state.rules.setdefault(rule.rule_id, RuleState())
            if rule.type == "no_data":
                if rs.alarm_id is not None:
                    silent = ts - state.last_record_ts if state.last_record_ts is not None else 0
                    self._clear(state, device_id, compiled, rs, ts, {"silent_ms": silent}, rule_set.version, out)
                continue
            params = {**rule.params, **overrides.get(rule.rule_id, {})} if rule.params else {}
            try:
                holds, severity, values = self._condition(compiled, rs, metrics, params, record, ts)
                clear_now = None
                if rs.alarm_id is not None:
                    if compiled.clear is not None:
                        clear_now = bool(compiled.clear.evaluate(metrics, params, record))
                    elif holds is not None:
                        clear_now = not holds
            except MissingValue:
                continue
            except (EvaluationError, TypeError, ValueError) as exc:  # status_bit/rate_of_change on a non-number
                out.errors.append(f"rule {rule.rule_id}: {exc}")
                continue
            self._step(state, device_id, compiled, rs, ts, holds, severity, values, clear_now, rule_set.version, out)
        state.last_record_ts = ts

    def _adopt(self, state: DeviceState, device_id: str, rule_set: CompiledRuleSet, ts: int, out: EngineOutput) -> None:
        wanted = {c.rule.rule_id for c in rule_set.rules if c.rule.enabled}
        for rule_id in sorted(state.rules):
            if rule_id not in wanted:
                rs = state.rules.pop(rule_id)
                if rs.alarm_id is not None:
                    out.events.append(
                        self._event("CLEARED", device_id, state.product_id, rule_id, rule_set.version, rs, ts, {"reason": "rule removed"})
                    )
        state.rule_version = rule_set.version

    def _condition(self, compiled: CompiledRule, rs: RuleState, metrics, params, record, ts):
        rule = compiled.rule
        values = {name: metrics[name] for name in compiled.value_names if name in metrics}
        if rule.type in ("threshold", "condition"):
            if compiled.levels:
                for expression, severity in compiled.levels:
                    if expression.evaluate(metrics, params, record):
                        return True, severity, values
                return False, None, values
            return bool(compiled.condition.evaluate(metrics, params, record)), rule.severity, values
        if rule.type == "status_bit":
            if rule.flag is not None:
                value = metrics.get(rule.flag)
                if value is None:
                    raise MissingValue(rule.flag)
                if isinstance(value, str):
                    # A flag sent as text: "true"/"1"/"on" are set, anything else is not.
                    return value.strip().lower() in ("true", "1", "on", "yes"), rule.severity, values
                return bool(value), rule.severity, values
            value = metrics.get(rule.metric)
            if value is None:
                raise MissingValue(rule.metric)
            return bool((int(value) >> rule.bit) & 1), rule.severity, values
        # rate_of_change
        value = metrics.get(rule.metric)
        if value is None:
            raise MissingValue(rule.metric)
        rs.window.append((ts, value))
        while rs.window and rs.window[0][0] < ts - rule.window_ms:
            rs.window.pop(0)
        first_ts, first_value = rs.window[0]
        if ts == first_ts:
            return False, rule.severity, values
        rate = (value - first_value) / (ts - first_ts) * rule.per_ms
        values["rate"] = round(rate, 6)
        if rule.direction == "rise":
            holds = rate > rule.limit
        elif rule.direction == "fall":
            holds = rate < -rule.limit
        else:
            holds = abs(rate) > rule.limit
        return holds, rule.severity, values

    def _step(self, state, device_id, compiled, rs, ts, holds, severity, values, clear_now, version, out) -> None:
        rule = compiled.rule
        if rs.alarm_id is None:
            if holds is None:
                return
            if not holds:
                rs.streak, rs.pending_since, rs.pending_severity = 0, None, None
                return
            rs.streak += 1
            if rs.pending_since is None:
                rs.pending_since = ts
            rs.pending_severity = severity
            rs.last_values = values
            if rule.consecutive is not None and rs.streak < rule.consecutive:
                return
            if rule.for_ms and ts - rs.pending_since < rule.for_ms:
                return
            self._raise(state, device_id, compiled, rs, ts, severity, values, version, out)
            return
        rs.last_values = values
        if clear_now:
            if rs.clear_since is None:
                rs.clear_since = ts
            if not rule.clear_for_ms or ts - rs.clear_since >= rule.clear_for_ms:
                self._clear(state, device_id, compiled, rs, ts, values, version, out)
            return
        rs.clear_since = None
        if holds and severity is not None and severity != rs.severity:
            previous = rs.severity
            rs.severity = severity
            out.events.append(
                self._event("SEVERITY_CHANGED", device_id, state.product_id, rule.rule_id, version, rs, ts, values, previous_severity=previous)
            )
            if severity == "critical":
                self._action(state, device_id, compiled, rs, ts, out)

    def _raise(self, state, device_id, compiled, rs, ts, severity, values, version, out) -> None:
        rule = compiled.rule
        rs.alarm_id = alarm_id_for(device_id, rule.rule_id, ts)
        rs.severity, rs.started_ts = severity, ts
        rs.acknowledged = rs.escalated = False
        rs.pending_since = rs.pending_severity = rs.clear_since = rs.verify_deadline = None
        rs.streak = 0
        rs.last_values = values
        out.events.append(self._event("RAISED", device_id, state.product_id, rule.rule_id, version, rs, ts, values))
        if severity == "critical":
            self._action(state, device_id, compiled, rs, ts, out)

    def _action(self, state, device_id, compiled, rs, ts, out) -> None:
        rule = compiled.rule
        if rule.auto_action is None or rs.verify_deadline is not None:
            return
        rule_set = self.rule_sets[state.product_id].source
        action = action_for(rule_set, rule.auto_action)
        rs.verify_deadline = ts + action.verify_within_ms
        command_id = hashlib.sha256(f"{rs.alarm_id}|{rule.auto_action}".encode()).hexdigest()[:24]
        out.commands.append(
            {
                "command_id": command_id,
                "device_id": device_id,
                "alarm_id": rs.alarm_id,
                "rule_id": rule.rule_id,
                "action": rule.auto_action,
                "desired": action.desired,
                "issued_ts": ts,
                "verify_by_ts": rs.verify_deadline,
            }
        )

    def _clear(self, state, device_id, compiled, rs, ts, values, version, out) -> None:
        rule = compiled.rule
        resolved = rs.verify_deadline is not None and not rs.escalated and ts <= rs.verify_deadline
        out.events.append(self._event("AUTO_RESOLVED" if resolved else "CLEARED", device_id, state.product_id, rule.rule_id, version, rs, ts, values))
        state.rules[rule.rule_id] = RuleState(window=rs.window)

    @staticmethod
    def _event(kind, device_id, product_id, rule_id, version, rs: RuleState, ts, values, **extra) -> dict:
        event = {
            "event": kind,
            "alarm_id": rs.alarm_id,
            "device_id": device_id,
            "product_id": product_id,
            "rule_id": rule_id,
            "rule_version": version,
            "severity": rs.severity,
            "route": ROUTES.get(rs.severity or "", "log"),
            "device_ts": ts,
            "started_ts": rs.started_ts,
            "values": values,
        }
        event.update(extra)
        return event


def severity_at_least(severity: str, minimum: str) -> bool:
    """Whether ``severity`` is ``minimum`` or worse."""
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[minimum]
