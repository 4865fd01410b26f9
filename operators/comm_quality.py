"""Communication quality per device and window, as pure logic.

For each device and 5-minute / 1-hour window of device time: messages received (valid,
de-duplicated readings), messages expected (window length / the device's expected interval
from master data), missing (expected − received, not below zero), and the longest gap without
a message — inside the window, counting from the window's start to the first message and from
the last message to the window's end. Dead letters attributed to the device (by receive time)
are counted separately (:class:`RejectionBook`), since a rejected payload carries no trusted
device time.

Minutes are summarized as ``[count, first_ts, last_ts, longest_gap]``; summaries of consecutive
minutes merge exactly (the gap between two minutes is the next one's first time minus the
previous one's last time), so the 5-minute and hourly figures come from the same minutes as the
aggregates and fire with them.
"""

from __future__ import annotations

from operators.windows import MINUTE, window_start

COMM_SIZES = {"5m": 5 * MINUTE, "1h": 60 * MINUTE}


def summarize(times: list[int]) -> list:
    """``[count, first_ts, last_ts, longest_gap]`` of one minute's message times."""
    ordered = sorted(times)
    gap = max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0)
    return [len(ordered), ordered[0], ordered[-1], gap]


class CommBook:
    """One device's message times per minute of device time.

    A minute keeps its raw times while a late record may still change it (the largest gap of a
    minute is only exact from all its times); once event time is past the minute's end plus the
    allowed lateness it shrinks to its summary.
    """

    def __init__(self, times: dict | None = None, sums: dict | None = None):
        self.times: dict[int, list[int]] = {int(k): v for k, v in (times or {}).items()}
        self.sums: dict[int, list] = {int(k): v for k, v in (sums or {}).items()}

    def add(self, ts: int) -> None:
        """One valid message at device time ``ts``."""
        self.times.setdefault(window_start(ts, MINUTE), []).append(ts)

    def settle(self, watermark: int, allowed_lateness_ms: int) -> None:
        """Shrinks the minutes no record can change any more; drops hours past their lateness."""
        for minute in [m for m in self.times if m + MINUTE + allowed_lateness_ms <= watermark + 1]:
            self.sums[minute] = summarize(self.times.pop(minute))
        horizon = watermark - allowed_lateness_ms
        largest = max(COMM_SIZES.values())
        for minute in [m for m in self.sums if window_start(m, largest) + largest - 1 <= horizon]:
            del self.sums[minute]

    def quality(self, start: int, size: int, expected_interval_ms: int | None) -> dict:
        """Communication quality of the window ``[start, start + size)``."""
        minutes = {m: summarize(t) for m, t in self.times.items() if start <= m < start + size}
        minutes.update({m: s for m, s in self.sums.items() if start <= m < start + size})
        return window_quality(minutes, start, size, expected_interval_ms)

    def to_state(self) -> dict:
        """Plain form for keyed state."""
        return {"times": self.times, "sums": self.sums}


def window_quality(minutes: dict[int, list], start: int, size: int, expected_interval_ms: int | None) -> dict:
    """Communication quality of the window ``[start, start + size)`` from its minute summaries."""
    received, longest, previous = 0, 0, start
    for minute in sorted(m for m in minutes if start <= m < start + size):
        count, first, last, gap = minutes[minute]
        received += count
        longest = max(longest, gap, first - previous)
        previous = last
    longest = max(longest, start + size - previous)
    expected = size // expected_interval_ms if expected_interval_ms else None
    return {
        "received": received,
        "expected": expected,
        "missing": None if expected is None else max(0, expected - received),
        "longest_gap_ms": longest,
    }


def comm_row(device_id: str, product_id: str | None, size_name: str, start: int, quality: dict) -> dict:
    """The wire/sink form of one device's communication quality in one window."""
    # scope/key spread rows over the sink's buffers like the aggregate rows (one device, one buffer).
    return {"kind": "comm", "scope": "comm", "key": device_id, "device_id": device_id, "product_id": product_id,
            "size": size_name, "start": start, **quality}


class RejectionBook:
    """Dead letters of one device counted per window of receive time (absolute counts, so a
    count written again after a restore is the same number, never added twice)."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: dict[str, int] = dict(counts or {})  # "size|start" -> dead letters

    def add(self, received_at: int) -> list[str]:
        """Counts one dead letter; returns the window slots it changed."""
        slots = []
        for size_name, size in COMM_SIZES.items():
            slot = f"{size_name}|{window_start(received_at, size)}"
            self.counts[slot] = self.counts.get(slot, 0) + 1
            slots.append(slot)
        return slots

    def forget_before(self, ts: int) -> None:
        """Drops windows that ended before ``ts``."""
        for slot in [s for s in self.counts if int(s.split("|")[1]) + COMM_SIZES[s.split("|")[0]] <= ts]:
            del self.counts[slot]

    def rows(self, device_id: str, slots) -> list[dict]:
        """Rejection rows of the given slots."""
        out = []
        for slot in sorted(set(slots)):
            size_name, start = slot.split("|")
            out.append({"kind": "comm_rejected", "scope": "rejected", "key": device_id, "device_id": device_id,
                        "size": size_name, "start": int(start), "rejected": self.counts[slot]})
        return out
