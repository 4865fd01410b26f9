"""Rule evaluation errors summarised for ``iotlink.rules.status``.

A rule that fails at run time (a division by zero on a device's values, a number too large for
the evaluator's limits) is counted in the alarm operator's ``rule_errors`` metric; the metric
says how many, not which rule or why. :class:`RuleErrorDigest` collects the messages per
product and makes the status records the job publishes next to the accepted / rejected
statuses of pushed rule sets: the first error at once, then at most one summary per product
and interval, with a bounded number of distinct messages, so a rule failing on every reading
costs one record a minute, not one per reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DIGEST_INTERVAL_MS = 60_000
MAX_MESSAGES = 20  # distinct messages kept per product and interval; the rest are counted as "other"


@dataclass
class _ProductErrors:
    version: str | None
    since: int
    until: int
    messages: dict[str, int] = field(default_factory=dict)
    other: int = 0

    def count(self) -> int:
        return sum(self.messages.values()) + self.other


class RuleErrorDigest:
    """Evaluation errors of one alarm subtask, per product, released as status records.

    Args:
        subtask: The alarm subtask's index (each subtask publishes its own digests).
        interval_ms: At most one status per product per this long (processing time).
        max_messages: Distinct messages kept per product and interval.
    """

    def __init__(self, subtask: int = 0, interval_ms: int = DIGEST_INTERVAL_MS, max_messages: int = MAX_MESSAGES):
        self._subtask = subtask
        self._interval_ms = interval_ms
        self._max_messages = max_messages
        self._pending: dict[str, _ProductErrors] = {}
        self._released_at: dict[str, int] = {}

    def add(self, product_id: str | None, version: str | None, message: str, now_ms: int) -> None:
        """Records one evaluation error.

        Args:
            product_id: The device's product (None: unknown).
            version: The rule-set version in force for it.
            message: What failed (``rule <id>: <reason>``), already bounded by the evaluator.
            now_ms: Processing time, epoch ms.
        """
        key = product_id or ""
        errors = self._pending.get(key)
        if errors is None:
            errors = self._pending[key] = _ProductErrors(version, now_ms, now_ms)
        errors.version = version
        errors.until = now_ms
        if message in errors.messages or len(errors.messages) < self._max_messages:
            errors.messages[message] = errors.messages.get(message, 0) + 1
        else:
            errors.other += 1

    @property
    def pending(self) -> bool:
        """Whether errors wait to be reported."""
        return bool(self._pending)

    def due(self, now_ms: int) -> list[dict]:
        """The status records to publish now; what they report is forgotten.

        A product's errors are due when none of its digests went out within the interval.

        Returns:
            ``{"status": "errors", "product_id", "version", "subtask", "since", "until",
            "count", "errors": [{"message", "count"}, …] (most frequent first), "other"}``.
        """
        statuses = []
        for key in list(self._pending):
            released = self._released_at.get(key)
            if released is not None and now_ms - released < self._interval_ms:
                continue
            errors = self._pending.pop(key)
            self._released_at[key] = now_ms
            ranked = sorted(errors.messages.items(), key=lambda item: (-item[1], item[0]))
            statuses.append({
                "status": "errors", "product_id": key or None, "version": errors.version, "subtask": self._subtask,
                "since": errors.since, "until": errors.until, "count": errors.count(),
                "errors": [{"message": message, "count": count} for message, count in ranked], "other": errors.other,
            })
        return statuses
