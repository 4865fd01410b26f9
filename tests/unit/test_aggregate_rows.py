"""The flat rows of the SQL aggregates and the lateness rule."""

from operators.aggregate_rows import late_letter, numeric_value, reading_row, rejection_row, too_late


def test_a_reading_is_one_row_with_its_numeric_metrics():
    row = reading_row("dev-1", "prod-a", 1_000, {"tempC": 21.5, "count": 3, "ok": True, "mode": "eco", "nan": float("nan")}, 60_000)
    assert row == ("reading", "dev-1", "prod-a", 1_000, {"tempC": 21.5, "count": 3.0}, 60_000)


def test_a_reading_without_numeric_metrics_still_counts_as_received():
    assert reading_row("dev-1", None, 5, {"mode": "eco"}, None) == ("reading", "dev-1", None, 5, {}, None)


def test_numbers_a_double_cannot_hold_are_not_aggregated():
    assert numeric_value(10**400) is None
    assert numeric_value(float("inf")) is None
    assert numeric_value(False) is None
    assert numeric_value(2**53 + 1) == float(2**53 + 1)


def test_dead_letters_count_by_receive_time_and_only_with_a_device():
    assert rejection_row({"device_id": "dev-9", "product_id": "prod-a", "received_at": 7_000}, 99) == (
        "rejected", "dev-9", "prod-a", 7_000, None, None)
    assert rejection_row({"device_id": "dev-9", "received_at": "soon"}, 99)[3] == 99
    assert rejection_row({"device_id": None}, 99) is None
    assert rejection_row({"device_id": ["a"]}, 99) is None


def test_too_late_means_the_minute_ended_more_than_the_lateness_before_the_watermark():
    minute_end = 120_000  # a reading at 61 s belongs to the minute [60 s, 120 s)
    assert not too_late(61_000, minute_end + 300_000 - 2, 300_000)
    assert too_late(61_000, minute_end + 300_000 - 1, 300_000)
    assert not too_late(61_000, -(2**63), 300_000)  # before the first watermark nothing is late


def test_a_late_letter_keeps_the_record_and_the_watermark_it_missed():
    assert late_letter({"device_id": "d"}, 5, 10) == {"watermark": 5, "allowed_lateness_ms": 10, "record": {"device_id": "d"}}
