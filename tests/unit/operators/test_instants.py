"""Instants given by people."""

import pytest

from operators.instants import epoch_ms, iso_utc


@pytest.mark.parametrize(("text", "ms"), [
    ("1970-01-01T00:00:01Z", 1000), ("1970-01-01T00:00:01", 1000), ("1970-01-01T01:00:00+01:00", 0),
    ("1970-01-02", 86_400_000), (" 1234 ", 1234),
])
def test_iso_8601_utc_by_default_or_epoch_ms(text, ms):
    assert epoch_ms(text) == ms


def test_anything_else_is_refused():
    with pytest.raises(ValueError, match="neither ISO 8601"):
        epoch_ms("yesterday")


def test_shown_as_iso_8601_utc_to_the_second():
    assert iso_utc(1772359200123) == "2026-03-01T10:00:00Z"
    assert epoch_ms(iso_utc(1772359200000)) == 1772359200000
