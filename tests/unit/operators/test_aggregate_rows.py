"""An hourly SQL aggregate row as the window row of the Iceberg history and MongoDB summaries."""

import math

from operators.aggregate_rows import hourly_window_row


def test_an_hourly_row_is_a_one_metric_partial_whose_m2_gives_the_stddev_back():
    row = hourly_window_row("device", "dev-1", "tempC", 3_600_000, "prod-a", 4, 1.0, 4.0, 10.0, 2.5, math.sqrt(5 / 3),
                            1.0, 3_600_100, 4.0, 3_600_900)
    assert row["scope"] == "device" and row["key"] == "dev-1" and row["size"] == "1h" and row["start"] == 3_600_000
    count, total, low, high, mean, m2, first_ts, first, last_ts, last = row["partial"]["tempC"]
    assert (count, total, low, high, mean, first_ts, first, last_ts, last) == (4, 10.0, 1.0, 4.0, 2.5, 3_600_100, 1.0, 3_600_900, 4.0)
    assert math.isclose(m2, 5.0)  # sum of squared deviations of 1, 2, 3, 4


def test_a_single_reading_or_no_stddev_has_no_spread():
    row = hourly_window_row("product", "prod-a", "rpm", 0, "prod-a", 1, 7.0, 7.0, 7.0, 7.0, None, 7.0, 5, 7.0, 5)
    assert row["partial"]["rpm"][5] == 0.0
