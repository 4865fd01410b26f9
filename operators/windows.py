"""Event-time tumbling windows of 1 minute, 5 minutes and 1 hour, as pure logic.

Every numeric metric gets count, min, max, sum, avg, sample stddev, and first / last by device
time. Only the 1-minute partials are computed from records; 5-minute and hourly results are
rolled up from them (partials merge exactly: Chan et al.'s parallel variance), so the three
sizes always agree with each other.

A :class:`WindowBook` holds one key's minute partials (a device's, or a product's — then each
minute keeps one partial per device, replaced when a corrected device partial arrives). A
window fires when the watermark reaches its end; a record that arrives later but within the
allowed lateness updates its minute, and every window containing that minute that already
fired fires again with the corrected values (an upsert downstream). Records later than that
are the caller's to count and archive. Deterministic: ties of first/last at the same device
time are broken by value, so arrival order never changes a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MINUTE = 60_000
SIZES = {"1m": MINUTE, "5m": 5 * MINUTE, "1h": 60 * MINUTE}
LARGEST = max(SIZES.values())


def window_start(ts: int, size_ms: int) -> int:
    """Start of the tumbling window of ``size_ms`` that holds ``ts`` (epoch ms, UTC aligned)."""
    return ts - ts % size_ms


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The metrics that aggregate: finite ints and floats (bools and strings do not)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[name] = value
    return out


@dataclass(slots=True)
class MetricPartial:
    """Running statistics of one metric in one window."""

    count: int
    total: float
    low: float
    high: float
    mean: float
    m2: float
    first_ts: int
    first: float
    last_ts: int
    last: float

    @classmethod
    def of(cls, ts: int, value: float) -> MetricPartial:
        """The partial of a single reading."""
        return cls(*reading_stats(ts, value))

    def add(self, ts: int, value: float) -> None:
        """Adds one reading (Welford's update)."""
        stats = self.to_list()
        add_reading(stats, ts, value)
        (self.count, self.total, self.low, self.high, self.mean, self.m2, self.first_ts, self.first, self.last_ts, self.last) = stats

    def merged(self, other: MetricPartial) -> MetricPartial:
        """The partial of both windows' readings together."""
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        first = min((self.first_ts, self.first), (other.first_ts, other.first))
        last = max((self.last_ts, self.last), (other.last_ts, other.last))
        return MetricPartial(
            count, self.total + other.total, min(self.low, other.low), max(self.high, other.high), mean, m2, *first, *last
        )

    @property
    def stddev(self) -> float | None:
        """Sample standard deviation; None below two readings."""
        return math.sqrt(max(self.m2, 0.0) / (self.count - 1)) if self.count > 1 else None

    def result(self) -> dict:
        """The published statistics."""
        return {
            "count": self.count, "min": self.low, "max": self.high, "sum": self.total, "avg": self.total / self.count,
            "stddev": self.stddev, "first": self.first, "first_ts": self.first_ts, "last": self.last, "last_ts": self.last_ts,
        }

    def to_list(self) -> list:
        """Compact form for state and for the wire between operators."""
        return [self.count, self.total, self.low, self.high, self.mean, self.m2, self.first_ts, self.first, self.last_ts, self.last]

    @classmethod
    def from_list(cls, values: list) -> MetricPartial:
        """Inverse of :meth:`to_list`."""
        return cls(*values)


Partial = dict[str, MetricPartial]  # metric -> statistics, one window


def reading_stats(ts: int, value: float) -> list:
    """The list form (:meth:`MetricPartial.to_list`) of a single reading."""
    return [1, value, value, value, float(value), 0.0, ts, value, ts, value]


def add_reading(stats: list, ts: int, value: float) -> None:
    """Adds one reading to statistics in list form, in place (Welford's update).

    The window state keeps plain lists: they pickle several times faster than objects, and
    the state is read and written for every record.
    """
    count = stats[0] + 1
    stats[0] = count
    stats[1] += value
    if value < stats[2]:
        stats[2] = value
    if value > stats[3]:
        stats[3] = value
    delta = value - stats[4]
    stats[4] += delta / count
    stats[5] += delta * (value - stats[4])
    if (ts, value) < (stats[6], stats[7]):
        stats[6], stats[7] = ts, value
    if (ts, value) > (stats[8], stats[9]):
        stats[8], stats[9] = ts, value


def merge_partials(parts) -> Partial:
    """Merges window partials metric by metric."""
    out: Partial = {}
    for part in parts:
        for metric, stats in part.items():
            # Copies (and list forms made objects), so results handed out never change when
            # the book adds to its partials.
            stats = MetricPartial(*stats) if isinstance(stats, list) else MetricPartial(*stats.to_list())
            have = out.get(metric)
            out[metric] = stats if have is None else have.merged(stats)
    return out


def merged_lists(parts) -> dict[str, list]:
    """Merges partials (object or list form) into list form."""
    return {metric: stats.to_list() for metric, stats in merge_partials(parts).items()}


def partial_to_json(part: Partial) -> dict:
    """Wire form of a partial."""
    return {metric: stats.to_list() for metric, stats in part.items()}


def partial_from_json(doc: dict) -> Partial:
    """Inverse of :func:`partial_to_json`."""
    return {metric: MetricPartial.from_list(values) for metric, values in doc.items()}


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One fired window of one key: ``size`` is ``1m``, ``5m`` or ``1h``."""

    size: str
    start: int
    partial: Partial
    refire: bool = False  # a correction of a window that fired before


@dataclass
class WindowBook:
    """One key's minute partials and what has fired; see the module docstring.

    Args:
        allowed_lateness_ms: How long after a window's end a record may still change it.
    """

    allowed_lateness_ms: int = 5 * MINUTE
    minutes: dict[int, dict[str, dict[str, list]]] = field(default_factory=dict)  # minute -> source -> metric -> stats list
    watermark: int = -(2**62)
    dirty: set = field(default_factory=set)  # minutes changed after their 1m window fired

    def accepts(self, ts: int) -> bool:
        """Whether a record at device time ``ts`` may still change its 1-minute window."""
        return window_start(ts, MINUTE) + MINUTE + self.allowed_lateness_ms > self.watermark + 1

    def add_record(self, ts: int, metrics: dict) -> bool:
        """Adds one record's numeric metrics; False (nothing changed) when it is too late."""
        if not self.accepts(ts):
            return False
        values = numeric_metrics(metrics)
        minute = window_start(ts, MINUTE)
        # The minute exists even without numeric metrics: its windows still fire (for the
        # communication quality of the device), with no metric rows.
        part = self.minutes.setdefault(minute, {}).setdefault("", {})
        for metric, value in values.items():
            stats = part.get(metric)
            if stats is None:
                part[metric] = reading_stats(ts, value)
            else:
                add_reading(stats, ts, value)
        self._touched(minute)
        return True

    def put_partial(self, source: str, minute: int, partial: Partial | dict[str, list]) -> bool:
        """Sets ``source``'s partial of ``minute`` (a newer version replaces the older one);
        ``partial`` in object or wire (list) form."""
        if not self.accepts(minute):
            return False
        self.minutes.setdefault(minute, {})[source] = {
            metric: stats.to_list() if isinstance(stats, MetricPartial) else list(stats) for metric, stats in partial.items()
        }
        self._touched(minute)
        return True

    def _touched(self, minute: int) -> None:
        if minute + MINUTE - 1 <= self.watermark:
            self.dirty.add(minute)

    def next_deadline(self) -> int | None:
        """The event time at which :meth:`advance` has work: the next window end, or cleanup."""
        if not self.minutes:
            return None
        ends = []
        for size in SIZES.values():
            for minute in self.minutes:
                end = window_start(minute, size) + size - 1
                if end > self.watermark:
                    ends.append(end)
        oldest = min(self.minutes)
        ends.append(window_start(oldest, LARGEST) + LARGEST - 1 + self.allowed_lateness_ms)
        later = [e for e in ends if e > self.watermark]
        return min(later) if later else None

    def refire_pending(self) -> list[WindowResult]:
        """Re-fires the fired windows that late records changed since (call after adding)."""
        out = []
        for size_name, size in SIZES.items():
            starts = sorted({window_start(m, size) for m in self.dirty})
            for start in starts:
                if start + size - 1 <= self.watermark:
                    out.append(WindowResult(size_name, start, self._window(start, size), refire=True))
        self.dirty.clear()
        return out

    def advance(self, watermark: int) -> list[WindowResult]:
        """Moves event time to ``watermark``: fires windows that ended, forgets what is beyond lateness."""
        if watermark <= self.watermark:
            return []
        out = self.refire_pending()
        previous, self.watermark = self.watermark, watermark
        for size_name, size in SIZES.items():
            starts = sorted({window_start(m, size) for m in self.minutes})
            for start in starts:
                end = start + size - 1
                if previous < end <= watermark:
                    out.append(WindowResult(size_name, start, self._window(start, size)))
        # A minute is needed until the hour holding it is past its lateness.
        horizon = watermark - self.allowed_lateness_ms
        for minute in [m for m in self.minutes if window_start(m, LARGEST) + LARGEST - 1 <= horizon]:
            del self.minutes[minute]
        return out

    def _window(self, start: int, size: int) -> Partial:
        parts = [p for m, sources in self.minutes.items() if start <= m < start + size for p in sources.values()]
        return merge_partials(parts)


def window_row(scope: str, key: str, product_id: str | None, result: WindowResult) -> dict:
    """The wire/sink form of one fired window."""
    return {
        "scope": scope, "key": key, "product_id": product_id, "size": result.size, "start": result.start,
        "refire": result.refire, "partial": partial_to_json(result.partial),
    }
