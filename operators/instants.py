"""Instants given by and shown to people: ISO 8601 text or epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def epoch_ms(text: str) -> int:
    """Epoch milliseconds of ``2026-12-07T10:30:00Z``, an ISO 8601 time with an offset, one
    without a zone (taken as UTC), a date (its UTC midnight), or a number of epoch milliseconds.

    Raises:
        ValueError: none of those.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 (2026-12-07T10:30:00Z) nor epoch ms") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC to the second: ``2026-12-07T10:30:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
