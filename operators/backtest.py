"""Rule backtests: what a rule set would have done over recorded telemetry (docs/rules.md).

Each device's readings run through the same :class:`operators.alarm_engine.AlarmEngine` as the
job, in device-time order, once with the candidate rule sets and once with the live ones
(:func:`replay_device`); :func:`backtest_report` then summarises, per rule set and rule: alarms
raised, how long they stayed active, flapping (raise/clear cycles of a device in a UTC day),
time to detect known incidents, and which alarms only one of the two sets raised.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from operators.alarm_engine import AlarmEngine, CompiledRuleSet, DeviceState
from operators.instants import epoch_ms

CANDIDATE = "candidate"
LIVE = "live"
ENDING = frozenset({"CLEARED", "AUTO_RESOLVED"})
FLAPPING_CYCLES = 3  # raise/clear cycles of one device in one day from which a device-day counts as flapping
DAY_MS = 86_400_000
MAX_INCIDENTS = 100_000


@dataclass(frozen=True)
class AlarmSpan:
    """One alarm of a backtest: raised at ``start``, ended at ``end`` (None: still active)."""

    rule_set: str
    rule_id: str
    device_id: str
    start: int
    end: int | None
    severity: str | None


def replay_device(readings: Iterable[Mapping], rule_sets: Mapping[str, Mapping[str, CompiledRuleSet]], until_ts: int) -> list[tuple]:
    """Replays one device's readings through each rule set, in device-time order.

    Args:
        readings: The device's telemetry records (``device_id``, ``product_id``, ``device_ts``,
            ``metrics``), in any order.
        rule_sets: Rule-set label (``candidate``, ``live``) -> product id -> compiled rule set.
        until_ts: End of the backtest (epoch ms): no-data and duration timers fire up to it.

    Returns:
        Compact events ``(label, event, rule_id, device_ts, severity)`` in order per label, plus
        ``(label, "ERROR", message, 0, None)`` for each rule error (at most 20 per label).
    """
    ordered = sorted(readings, key=lambda r: r["device_ts"])
    out: list[tuple] = []
    for label, compiled in rule_sets.items():
        engine = AlarmEngine(dict(compiled))
        state = DeviceState()
        errors = 0
        outputs = []
        for record in ordered:
            outputs.append(engine.on_record(state, record))
        if ordered:
            outputs.append(engine.flush(state))
            outputs.append(engine.advance(state, ordered[0]["device_id"], until_ts))
        for output in outputs:
            for event in output.events:
                out.append((label, event["event"], event["rule_id"], event["device_ts"], event.get("severity")))
            for error in output.errors:
                if errors < 20:
                    out.append((label, "ERROR", str(error)[:300], 0, None))
                errors += 1
    return out


def alarm_spans(device_id: str, events: Iterable[tuple]) -> list[AlarmSpan]:
    """The alarms of one device's compact events: each RAISED paired with the next ending event."""
    open_spans: dict[tuple[str, str], tuple[int, str | None]] = {}
    spans = []
    for label, kind, rule_id, ts, severity in events:
        key = (label, rule_id)
        if kind == "RAISED":
            open_spans[key] = (ts, severity)
        elif kind in ENDING and key in open_spans:
            start, raised_severity = open_spans.pop(key)
            spans.append(AlarmSpan(label, rule_id, device_id, start, ts, raised_severity))
    spans.extend(AlarmSpan(label, rule_id, device_id, start, None, severity) for (label, rule_id), (start, severity) in open_spans.items())
    return spans


@dataclass(frozen=True)
class Incident:
    """A known incident: a device misbehaving from ``start`` to ``end`` (epoch ms)."""

    device_id: str
    start: int
    end: int
    name: str


def _epoch_ms(text: str, where: str) -> int:
    try:
        return epoch_ms(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_incidents(text: str, source: str = "<incidents>") -> list[Incident]:
    """Known incidents from CSV with a header ``device_id,start,end[,name]`` (times ISO 8601, UTC
    without a zone, or epoch ms).

    Raises:
        ValueError: ``file:line: reason`` for the first bad row.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"device_id", "start", "end"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{source}:1: the header needs device_id,start,end (missing {', '.join(sorted(missing))})")
    incidents = []
    for row in reader:
        where = f"{source}:{reader.line_num}"
        if len(incidents) >= MAX_INCIDENTS:
            raise ValueError(f"{where}: more than {MAX_INCIDENTS} incidents")
        device = (row.get("device_id") or "").strip()
        if not device:
            raise ValueError(f"{where}: device_id is empty")
        start, end = _epoch_ms(row.get("start") or "", where), _epoch_ms(row.get("end") or "", where)
        if end <= start:
            raise ValueError(f"{where}: end is not after start")
        incidents.append(Incident(device, start, end, (row.get("name") or "").strip() or f"{device}@{row['start'].strip()}"))
    return incidents


def load_incidents(path: str | Path) -> list[Incident]:
    """:func:`parse_incidents` of a file."""
    return parse_incidents(Path(path).read_text(encoding="utf-8"), str(path))


def _overlaps(a: AlarmSpan, b: AlarmSpan, until_ts: int) -> bool:
    return a.start < (b.end if b.end is not None else until_ts + 1) and b.start < (a.end if a.end is not None else until_ts + 1)


def compare_sets(spans: list[AlarmSpan], until_ts: int) -> dict[str, dict[str, int]]:
    """Per rule: alarms of the candidate set that overlap a live alarm of the same device and rule
    (``both``), and those only one set raised (``only_candidate``, ``only_live``)."""
    by_key: dict[tuple[str, str], dict[str, list[AlarmSpan]]] = defaultdict(lambda: {CANDIDATE: [], LIVE: []})
    for span in spans:
        if span.rule_set in (CANDIDATE, LIVE):
            by_key[(span.rule_id, span.device_id)][span.rule_set].append(span)
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"both": 0, "only_candidate": 0, "only_live": 0})
    for (rule_id, _device), sets in by_key.items():
        for span in sets[CANDIDATE]:
            matched = any(_overlaps(span, other, until_ts) for other in sets[LIVE])
            out[rule_id]["both" if matched else "only_candidate"] += 1
        out[rule_id]["only_live"] += sum(1 for span in sets[LIVE] if not any(_overlaps(span, c, until_ts) for c in sets[CANDIDATE]))
    return dict(out)


def backtest_report(spans: list[AlarmSpan], incidents: list[Incident], from_ts: int, until_ts: int,
                    errors: Mapping[str, list[str]] | None = None) -> dict:
    """The backtest's summary, per rule set and rule.

    Args:
        spans: Every alarm of both sets (:func:`alarm_spans`).
        incidents: Known incidents (time to detect: the first RAISED of the rule for the device
            from the incident's start to its end).
        from_ts / until_ts: The backtest's range (epoch ms); an alarm still active at the end
            counts as active until then.
        errors: Rule set label -> rule error messages.

    Returns:
        ``{"from", "until", "rule_sets": {label: {rule_id: {...}}}, "compared": {rule_id: {...}}}``.
    """
    by_rule: dict[str, dict[str, list[AlarmSpan]]] = defaultdict(lambda: defaultdict(list))
    for span in spans:
        by_rule[span.rule_set][span.rule_id].append(span)
    rule_sets: dict[str, dict[str, dict]] = {}
    for label, rules in sorted(by_rule.items()):
        rule_sets[label] = {}
        for rule_id, rule_spans in sorted(rules.items()):
            durations = [((s.end if s.end is not None else until_ts) - s.start) / 1000 for s in rule_spans]
            cycles: dict[tuple[str, int], int] = defaultdict(int)
            for s in rule_spans:
                cycles[(s.device_id, s.start // DAY_MS)] += 1
            detections = []
            for incident in incidents:
                raised = [s.start for s in rule_spans if s.device_id == incident.device_id and incident.start <= s.start <= incident.end]
                detections.append({"incident": incident.name, "device_id": incident.device_id,
                                   "detect_s": (min(raised) - incident.start) / 1000 if raised else None})
            detected = [d["detect_s"] for d in detections if d["detect_s"] is not None]
            rule_sets[label][rule_id] = {
                "raised": len(rule_spans),
                "devices": len({s.device_id for s in rule_spans}),
                "still_active": sum(1 for s in rule_spans if s.end is None),
                "mean_active_s": round(sum(durations) / len(durations), 1) if durations else None,
                "max_active_s": round(max(durations), 1) if durations else None,
                "max_cycles_per_device_day": max(cycles.values(), default=0),
                "flapping_device_days": sum(1 for n in cycles.values() if n >= FLAPPING_CYCLES),
                "incidents_detected": len(detected),
                "incidents_missed": len(detections) - len(detected),
                "mean_detect_s": round(sum(detected) / len(detected), 1) if detected else None,
                "max_detect_s": round(max(detected), 1) if detected else None,
                "detections": detections,
            }
    return {
        "from": from_ts,
        "until": until_ts,
        "rule_sets": rule_sets,
        "compared": compare_sets(spans, until_ts),
        "errors": {label: list(messages)[:20] for label, messages in (errors or {}).items() if messages},
    }


def hourly_raised(spans: Iterable[AlarmSpan], rule_id: str, from_ts: int, until_ts: int) -> dict[str, list[int]]:
    """Alarms raised per hour of the range, per rule set, for one rule (the chart's data)."""
    hours = max(1, -(-(until_ts - from_ts) // 3_600_000))
    counts: dict[str, list[int]] = {}
    for span in spans:
        if span.rule_id != rule_id or not from_ts <= span.start < until_ts:
            continue
        counts.setdefault(span.rule_set, [0] * hours)[(span.start - from_ts) // 3_600_000] += 1
    return counts
