"""Tumbling 1m/5m/1h windows: exact statistics, exact merges, firing, lateness and cleanup."""

import itertools
import math
import random
import statistics
from datetime import UTC, datetime

import orjson
import pytest

from operators.windows import (
    MINUTE,
    SIZES,
    MetricPartial,
    WindowBook,
    WindowResult,
    merge_partials,
    numeric_metrics,
    partial_from_json,
    partial_to_json,
    window_row,
    window_start,
)

HOUR = 60 * MINUTE
T = 1_772_359_200_000  # 2026-03-01T10:00:00Z, aligned to the hour
LATENESS = 5 * MINUTE


def close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def fold(readings) -> MetricPartial:
    """The partial of ``readings`` [(ts, value), ...] added one by one, in the given order."""
    (ts, value), *rest = readings
    part = MetricPartial.of(ts, value)
    for ts, value in rest:
        part.add(ts, value)
    return part


def assert_matches_readings(part: MetricPartial, readings) -> None:
    """``part`` holds exactly the statistics of ``readings``, computed independently."""
    values = [v for _, v in readings]
    r = part.result()
    assert r["count"] == len(values)
    assert r["min"] == min(values)
    assert r["max"] == max(values)
    assert close(r["sum"], math.fsum(values))
    assert close(r["avg"], statistics.fmean(values))
    assert close(part.mean, statistics.fmean(values))
    if len(values) > 1:
        assert close(r["stddev"], statistics.stdev(values))
    else:
        assert r["stddev"] is None
    first_ts, first = min(readings)  # earliest device time, ties by the smaller value
    last_ts, last = max(readings)  # latest device time, ties by the larger value
    assert (r["first_ts"], r["first"]) == (first_ts, first)
    assert (r["last_ts"], r["last"]) == (last_ts, last)


def assert_same_partial(a: MetricPartial, b: MetricPartial) -> None:
    """Equal statistics: exact where no rounding is involved, to 1e-9 relative elsewhere."""
    assert (a.count, a.low, a.high, a.first_ts, a.first, a.last_ts, a.last) == (
        b.count, b.low, b.high, b.first_ts, b.first, b.last_ts, b.last,
    )
    assert close(a.total, b.total)
    assert close(a.mean, b.mean)
    assert close(a.m2, b.m2)
    if a.count > 1:
        assert close(a.stddev, b.stddev)
    else:
        assert a.stddev is None and b.stddev is None


def assert_same_partials(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for metric in a:
        assert_same_partial(a[metric], b[metric])


def random_readings(rng: random.Random, n: int, span_ms: int = MINUTE, start: int = T) -> list[tuple[int, float]]:
    return [(start + rng.randrange(span_ms), rng.uniform(-40.0, 120.0)) for _ in range(n)]


def snapshot(book: WindowBook) -> dict:
    return {m: {s: {k: list(v) for k, v in p.items()} for s, p in sources.items()} for m, sources in book.minutes.items()}


# --- MetricPartial -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 250])
def test_partial_statistics_equal_statistics_module(seed, n):
    rng = random.Random(seed * 1000 + n)
    readings = random_readings(rng, n)
    assert_matches_readings(fold(readings), readings)


def test_partial_of_integer_readings_keeps_exact_sum_and_extremes():
    values = [3, -7, 12, 0, 12, 5]
    readings = [(T + i * 1000, v) for i, v in enumerate(values)]
    part = fold(readings)
    assert_matches_readings(part, readings)
    r = part.result()
    assert (r["sum"], r["min"], r["max"]) == (25, -7, 12)
    assert close(r["stddev"], statistics.stdev(values))


def test_single_reading_has_no_stddev_and_is_its_own_first_and_last():
    r = MetricPartial.of(T + 5, 21.5).result()
    assert r == {
        "count": 1, "min": 21.5, "max": 21.5, "sum": 21.5, "avg": 21.5, "stddev": None,
        "first": 21.5, "first_ts": T + 5, "last": 21.5, "last_ts": T + 5,
    }


def test_small_exact_example():
    r = fold([(T + 3000, 24.0), (T + 1000, 20.0), (T + 2000, 22.0)]).result()
    assert r == {
        "count": 3, "min": 20.0, "max": 24.0, "sum": 66.0, "avg": 22.0, "stddev": 2.0,
        "first": 20.0, "first_ts": T + 1000, "last": 24.0, "last_ts": T + 3000,
    }


def test_first_and_last_follow_device_time_not_arrival_order():
    readings = [(T + 30_000, 1.0), (T + 10_000, 2.0), (T + 50_000, 3.0), (T + 20_000, 4.0)]
    r = fold(readings).result()
    assert (r["first_ts"], r["first"]) == (T + 10_000, 2.0)
    assert (r["last_ts"], r["last"]) == (T + 50_000, 3.0)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_merge_of_any_split_equals_partial_of_all(seed):
    rng = random.Random(seed)
    readings = random_readings(rng, 200)
    whole = fold(readings)
    assert_matches_readings(whole, readings)
    for _ in range(10):
        shuffled = readings[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(1, 6)))
        chunks = [shuffled[a:b] for a, b in itertools.pairwise([0, *cuts, len(shuffled)])]
        parts = [fold(chunk) for chunk in chunks]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merged(p)
        assert_same_partial(merged, whole)
        assert_matches_readings(merged, readings)
        # merge_partials over metric dicts, in reverse order
        assert_same_partial(merge_partials([{"m": p} for p in reversed(parts)])["m"], whole)


def test_merge_of_single_reading_partials_equals_the_readings():
    rng = random.Random(99)
    readings = random_readings(rng, 40)
    merged = merge_partials([{"v": MetricPartial.of(ts, v)} for ts, v in readings])["v"]
    assert_matches_readings(merged, readings)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_merge_is_order_independent(seed):
    rng = random.Random(seed)
    readings = random_readings(rng, 60)
    parts = [fold(readings[i:i + 15]) for i in range(0, 60, 15)]
    reference = merge_partials([{"m": p} for p in parts])["m"]
    for perm in itertools.permutations(parts):
        assert_same_partial(merge_partials([{"m": p} for p in perm])["m"], reference)
    a, b = parts[0], parts[1]
    assert_same_partial(a.merged(b), b.merged(a))


def test_first_last_ties_at_same_time_are_broken_by_value_in_any_arrival_order():
    readings = [(T + 1000, 5.0), (T + 1000, 3.0), (T + 1000, 4.0), (T + 9000, 7.0), (T + 9000, 9.0), (T + 9000, 8.0)]
    for perm in itertools.permutations(readings):
        r = fold(list(perm)).result()
        assert (r["first_ts"], r["first"], r["last_ts"], r["last"]) == (T + 1000, 3.0, T + 9000, 9.0)
        m = merge_partials([{"x": MetricPartial.of(ts, v)} for ts, v in perm])["x"].result()
        assert (m["first_ts"], m["first"], m["last_ts"], m["last"]) == (T + 1000, 3.0, T + 9000, 9.0)


def test_merge_partials_does_not_alias_or_change_its_inputs():
    a = {"t": fold([(T + 1, 1.0), (T + 2, 2.0)])}
    b = {"t": fold([(T + 3, 3.0)]), "h": MetricPartial.of(T + 3, 40.0)}
    before_a, before_b = partial_to_json(a), partial_to_json(b)
    out = merge_partials([a, b])
    assert out["t"].count == 3 and out["h"].count == 1
    assert out["h"] is not b["h"]
    out["h"].add(T + 4, 41.0)
    assert partial_to_json(a) == before_a and partial_to_json(b) == before_b


def test_merge_partials_of_nothing_is_empty():
    assert merge_partials([]) == {}
    assert merge_partials([{}, {}]) == {}


def test_to_list_from_list_round_trip():
    part = fold([(T + 1, 1.5), (T + 2, -2.25), (T + 3, 9.0)])
    assert MetricPartial.from_list(part.to_list()) == part
    assert len(part.to_list()) == 10


# --- numeric_metrics, window_start ---------------------------------------------------------


def test_numeric_metrics_keeps_finite_ints_and_floats_only():
    metrics = {
        "i": 7, "zero": 0, "neg": -3, "f": 2.5, "fz": 0.0, "t": True, "fa": False, "s": "12", "n": None,
        "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "lst": [1], "d": {"a": 1},
    }
    out = numeric_metrics(metrics)
    assert out == {"i": 7, "zero": 0, "neg": -3, "f": 2.5, "fz": 0.0}
    assert type(out["i"]) is int and type(out["f"]) is float


def test_numeric_metrics_of_empty_or_all_non_numeric():
    assert numeric_metrics({}) == {}
    assert numeric_metrics({"on": True, "mode": "eco", "x": float("nan")}) == {}


@pytest.mark.parametrize(
    ("ts", "size", "start"),
    [
        (T, "1m", T),
        (T + 59_999, "1m", T),
        (T + 60_000, "1m", T + 60_000),
        (T + 61_234, "1m", T + 60_000),
        (T + 4 * MINUTE + 59_999, "5m", T),
        (T + 5 * MINUTE, "5m", T + 5 * MINUTE),
        (T + 7 * MINUTE + 5, "5m", T + 5 * MINUTE),
        (T + 59 * MINUTE + 59_999, "5m", T + 55 * MINUTE),
        (T + HOUR - 1, "1h", T),
        (T + HOUR, "1h", T + HOUR),
        (T + 90 * MINUTE, "1h", T + HOUR),
        (0, "1h", 0),
        (59_999, "1m", 0),
    ],
)
def test_window_start_examples(ts, size, start):
    assert window_start(ts, SIZES[size]) == start


@pytest.mark.parametrize("size", ["1m", "5m", "1h"])
def test_window_start_is_utc_epoch_aligned(size):
    rng = random.Random(size)
    size_ms = SIZES[size]
    for _ in range(500):
        ts = rng.randrange(1_600_000_000_000, 1_900_000_000_000)
        start = window_start(ts, size_ms)
        assert start % size_ms == 0
        assert start <= ts < start + size_ms
        dt = datetime.fromtimestamp(start / 1000, UTC)
        assert dt.second == 0 and dt.microsecond == 0
        if size == "5m":
            assert dt.minute % 5 == 0
        if size == "1h":
            assert dt.minute == 0


# --- WindowBook ----------------------------------------------------------------------------


def run_in_order(book: WindowBook, records):
    """Feeds records in order, each after ``advance(ts - 1)``; returns (results, steps) where a
    step is (watermark before, watermark after, what that advance fired)."""
    results, steps = [], []
    for ts, metrics in records:
        previous = book.watermark
        fired = book.advance(ts - 1)
        steps.append((previous, book.watermark, fired))
        results += fired
        assert book.add_record(ts, metrics) is True
        results += book.refire_pending()
    return results, steps


def by_start(results, size):
    return {r.start: r for r in results if r.size == size}


def test_in_order_records_fire_each_window_once_at_its_end_and_roll_up_exactly():
    rng = random.Random(7)
    book = WindowBook(LATENESS)
    records = []
    ts = T + 500
    while ts < T + 2 * HOUR + 7 * MINUTE:
        metrics = {"temp": rng.uniform(10, 30), "hum": rng.randrange(20, 90), "on": rng.random() < 0.5, "mode": "eco"}
        records.append((ts, metrics))
        ts += rng.randrange(1000, 20_000)
    results, steps = run_in_order(book, records)
    previous = book.watermark
    tail = book.advance(T + 3 * HOUR)
    steps.append((previous, book.watermark, tail))
    results += tail

    assert all(not r.refire for r in results)
    # exactly once per window that holds records
    for size, size_ms in SIZES.items():
        starts = [r.start for r in results if r.size == size]
        assert len(starts) == len(set(starts))
        assert set(starts) == {window_start(t, size_ms) for t, _ in records}
    # each fired in the advance that took the watermark to (or past) its end = start + size - 1
    assert sum(len(fired) for _, _, fired in steps) == len(results)
    for previous, new, fired in steps:
        for r in fired:
            assert previous < r.start + SIZES[r.size] - 1 <= new

    minutes = by_start(results, "1m")
    for start, r in minutes.items():
        assert sorted(r.partial) == ["hum", "temp"]  # bools and strings do not aggregate
        for metric in ("temp", "hum"):
            readings = [(t, m[metric]) for t, m in records if start <= t < start + MINUTE]
            assert_matches_readings(r.partial[metric], readings)
    # 5m and 1h equal the merge of the fired 1m results, and the statistics of their readings
    for size in ("5m", "1h"):
        size_ms = SIZES[size]
        for start, r in by_start(results, size).items():
            rolled = merge_partials([p.partial for s, p in sorted(minutes.items()) if start <= s < start + size_ms])
            assert_same_partials(r.partial, rolled)
            for metric in ("temp", "hum"):
                readings = [(t, m[metric]) for t, m in records if start <= t < start + size_ms]
                assert_matches_readings(r.partial[metric], readings)


def test_one_record_fires_1m_5m_1h_at_ends_with_next_deadline_then_cleanup():
    book = WindowBook(LATENESS)
    assert book.next_deadline() is None
    assert book.add_record(T + 61 * MINUTE + 1000, {"x": 2.0})  # minute 1 of the hour T + 1h
    start = T + HOUR + MINUTE
    assert book.next_deadline() == start + MINUTE - 1

    assert book.advance(start + MINUTE - 2) == []
    fired = book.advance(start + MINUTE - 1)
    assert [(r.size, r.start, r.refire) for r in fired] == [("1m", start, False)]
    assert fired[0].partial["x"].result()["sum"] == 2.0

    assert book.next_deadline() == T + HOUR + 5 * MINUTE - 1
    assert book.advance(T + HOUR + 5 * MINUTE - 2) == []
    assert [(r.size, r.start) for r in book.advance(T + HOUR + 5 * MINUTE - 1)] == [("5m", T + HOUR)]

    assert book.next_deadline() == T + 2 * HOUR - 1
    assert book.advance(T + 2 * HOUR - 2) == []
    assert [(r.size, r.start) for r in book.advance(T + 2 * HOUR - 1)] == [("1h", T + HOUR)]

    cleanup = T + 2 * HOUR - 1 + LATENESS
    assert book.next_deadline() == cleanup
    assert book.advance(cleanup - 1) == []
    assert list(book.minutes) == [start]
    assert book.advance(cleanup + 1) == []
    assert book.minutes == {}
    assert book.next_deadline() is None


def test_advance_to_the_cleanup_deadline_drops_the_minutes():
    book = WindowBook(LATENESS)
    book.add_record(T + 1000, {"x": 1.0})
    while (deadline := book.next_deadline()) is not None:
        book.advance(deadline)
    assert book.minutes == {}


def test_jumping_watermark_fires_all_ended_windows_in_size_order():
    book = WindowBook(LATENESS)
    for minute in (0, 1, 6, 59):
        assert book.add_record(T + minute * MINUTE + 10, {"x": float(minute)})
    fired = book.advance(T + HOUR - 1)
    assert [(r.size, (r.start - T) // MINUTE) for r in fired] == [
        ("1m", 0), ("1m", 1), ("1m", 6), ("1m", 59), ("5m", 0), ("5m", 5), ("5m", 55), ("1h", 0),
    ]
    assert book.advance(T + HOUR - 1) == []
    assert book.advance(T + HOUR + 10) == []
    hour = fired[-1].partial["x"].result()
    assert (hour["count"], hour["sum"], hour["first"], hour["last"]) == (4, 66.0, 0.0, 59.0)


def test_late_record_within_lateness_refires_1m_5m_1h_that_already_fired():
    book = WindowBook(LATENESS)
    readings = [(T + 57 * MINUTE + 1000, 10.0), (T + 59 * MINUTE + 1000, 20.0), (T + 59 * MINUTE + 2000, 30.0)]
    for ts, v in readings:
        book.add_record(ts, {"v": v})
    fired = book.advance(T + HOUR + MINUTE)  # past the ends of minute 59, of 55..59 and of the hour
    assert [(r.size, r.start) for r in fired] == [
        ("1m", T + 57 * MINUTE), ("1m", T + 59 * MINUTE), ("5m", T + 55 * MINUTE), ("1h", T),
    ]
    before = [r.partial["v"].to_list() for r in fired]

    late = (T + 59 * MINUTE + 500, 5.0)
    assert book.accepts(late[0])
    assert book.add_record(late[0], {"v": late[1], "flag": True})
    refired = book.refire_pending()
    assert [(r.size, r.start, r.refire) for r in refired] == [
        ("1m", T + 59 * MINUTE, True), ("5m", T + 55 * MINUTE, True), ("1h", T, True),
    ]
    got = {r.size: r.partial for r in refired}
    assert sorted(got["1m"]) == ["v"]
    assert_matches_readings(got["1m"]["v"], [readings[1], readings[2], late])
    assert_matches_readings(got["5m"]["v"], [*readings, late])
    assert_matches_readings(got["1h"]["v"], [*readings, late])
    assert got["1m"]["v"].result()["first"] == 5.0  # the late reading is the minute's first
    # results handed out earlier are unchanged
    assert [r.partial["v"].to_list() for r in fired] == before
    # corrections go out once
    assert book.refire_pending() == []
    assert book.advance(T + HOUR + MINUTE + 1) == []


def test_late_record_refires_only_windows_that_already_fired():
    book = WindowBook(LATENESS)
    book.add_record(T + 1000, {"v": 1.0})
    book.add_record(T + 2 * MINUTE + 1000, {"v": 2.0})
    fired = book.advance(T + 2 * MINUTE)  # minutes 0 and 1 ended; 5m and 1h open
    assert [(r.size, r.start) for r in fired] == [("1m", T)]
    assert book.add_record(T + 30_000, {"v": 3.0})
    refired = book.refire_pending()
    assert [(r.size, r.start, r.refire) for r in refired] == [("1m", T, True)]
    assert refired[0].partial["v"].count == 2
    # a record in a minute that has not ended changes nothing that fired
    assert book.add_record(T + 2 * MINUTE + 5000, {"v": 4.0})
    assert book.refire_pending() == []
    five = [r for r in book.advance(T + 5 * MINUTE - 1) if r.size == "5m"]
    assert [(r.start, r.refire, r.partial["v"].count) for r in five] == [(T, False, 4)]


def test_late_record_into_an_ended_minute_without_data_fires_it():
    book = WindowBook(LATENESS)
    book.add_record(T + 3 * MINUTE + 1, {"v": 1.0})
    book.advance(T + 4 * MINUTE - 1)
    assert book.add_record(T + MINUTE + 7, {"v": 9.0})
    refired = book.refire_pending()
    assert [(r.size, r.start, r.refire) for r in refired] == [("1m", T + MINUTE, True)]
    assert refired[0].partial["v"].to_list() == MetricPartial.of(T + MINUTE + 7, 9.0).to_list()


def test_record_beyond_lateness_is_rejected_and_changes_nothing():
    book = WindowBook(LATENESS)
    book.add_record(T + 10 * MINUTE + 1, {"v": 1.0})
    book.add_record(T + 20 * MINUTE + 1, {"v": 2.0})
    book.advance(T + 20 * MINUTE)
    # minute 10 ends at T + 11m - 1 and takes records only while the watermark < end + lateness
    assert book.watermark >= T + 11 * MINUTE - 1 + LATENESS
    before, watermark = snapshot(book), book.watermark

    assert not book.accepts(T + 10 * MINUTE + 30_000)
    assert book.add_record(T + 10 * MINUTE + 30_000, {"v": 100.0}) is False
    assert book.add_record(T + 2 * MINUTE, {"v": 100.0}) is False  # a minute without data too
    assert book.refire_pending() == []
    assert snapshot(book) == before
    assert book.watermark == watermark and book.dirty == set()


def test_lateness_boundary_is_exact():
    end = T + MINUTE - 1
    book = WindowBook(LATENESS)
    book.advance(end + LATENESS - 1)
    assert book.accepts(T + 5)
    assert book.add_record(T + 5, {"v": 1.0}) is True
    book = WindowBook(LATENESS)
    book.advance(end + LATENESS)
    assert not book.accepts(T + 5)
    assert book.add_record(T + 5, {"v": 1.0}) is False
    assert book.minutes == {}


def test_record_without_numeric_metrics_opens_its_minute_without_statistics():
    # The minute's windows still fire (communication quality counts the message), empty.
    book = WindowBook(LATENESS)
    assert book.add_record(T + 1, {"on": True, "mode": "eco", "bad": float("nan")}) is True
    minute = T + 1 - (T + 1) % 60_000
    assert book.minutes == {minute: {"": {}}}
    fired = book.advance(minute + 60_000)
    assert [(r.size, r.start, r.partial) for r in fired] == [("1m", minute, {})]


def test_advance_never_moves_back_and_repeats_nothing():
    book = WindowBook(LATENESS)
    book.add_record(T + 1, {"v": 1.0})
    assert [r.size for r in book.advance(T + MINUTE - 1)] == ["1m"]
    assert book.advance(T + 10) == []
    assert book.watermark == T + MINUTE - 1
    assert book.advance(T + MINUTE - 1) == []


def test_next_deadline_is_the_earliest_pending_end_over_all_minutes():
    book = WindowBook(LATENESS)
    book.add_record(T + 7 * MINUTE + 1, {"v": 1.0})
    book.add_record(T + 3 * MINUTE + 1, {"v": 1.0})
    assert book.next_deadline() == T + 4 * MINUTE - 1
    book.advance(T + 4 * MINUTE - 1)
    assert book.next_deadline() == T + 5 * MINUTE - 1  # the 5m holding minute 3
    book.advance(T + 5 * MINUTE - 1)
    assert book.next_deadline() == T + 8 * MINUTE - 1  # minute 7
    book.advance(T + 8 * MINUTE - 1)
    assert book.next_deadline() == T + 10 * MINUTE - 1
    book.advance(T + 10 * MINUTE - 1)
    assert book.next_deadline() == T + HOUR - 1
    book.advance(T + HOUR - 1)
    assert book.next_deadline() == T + HOUR - 1 + LATENESS


def test_cleanup_drops_only_minutes_of_hours_past_lateness():
    book = WindowBook(LATENESS)
    book.add_record(T + 30 * MINUTE, {"v": 1.0})
    book.add_record(T + HOUR + 2 * MINUTE, {"v": 2.0})
    deadline = T + HOUR - 1 + LATENESS  # the first hour's end + lateness
    fired = book.advance(deadline - 1)
    assert [(r.size, r.start) for r in fired] == [
        ("1m", T + 30 * MINUTE), ("1m", T + HOUR + 2 * MINUTE), ("5m", T + 30 * MINUTE), ("1h", T),
    ]
    assert sorted(book.minutes) == [T + 30 * MINUTE, T + HOUR + 2 * MINUTE]
    assert [(r.size, r.start) for r in book.advance(deadline + 1)] == [("5m", T + HOUR)]
    assert list(book.minutes) == [T + HOUR + 2 * MINUTE]
    assert book.next_deadline() == T + 2 * HOUR - 1
    book.advance(T + 2 * HOUR + LATENESS + 1)
    assert book.minutes == {}
    assert book.next_deadline() is None


# --- product windows: one partial per source and minute ------------------------------------


def test_put_partial_replaces_a_sources_minute_without_double_counting():
    book = WindowBook(LATENESS)
    d1 = {"t": fold([(T + 1000, 10.0), (T + 2000, 12.0)])}
    d2 = {"t": fold([(T + 1500, 30.0)])}
    assert book.put_partial("d1", T, d1)
    assert book.put_partial("d2", T, d2)
    # a newer version from d1 before the window fires replaces the first
    d1b = {"t": fold([(T + 1000, 10.0), (T + 2000, 12.0), (T + 3000, 14.0)])}
    assert book.put_partial("d1", T, d1b)
    assert set(book.minutes[T]) == {"d1", "d2"}

    fired = book.advance(T + MINUTE - 1)
    assert [(r.size, r.start) for r in fired] == [("1m", T)]
    assert_matches_readings(fired[0].partial["t"], [(T + 1000, 10.0), (T + 2000, 12.0), (T + 3000, 14.0), (T + 1500, 30.0)])

    # a corrected d1 minute after the fire: the product minute fires again with d1's new values
    d1c = {"t": fold([(T + 500, 2.0), (T + 1000, 10.0), (T + 2000, 12.0), (T + 3000, 14.0)])}
    assert book.put_partial("d1", T, d1c)
    refired = book.refire_pending()
    assert [(r.size, r.start, r.refire) for r in refired] == [("1m", T, True)]
    expected = [(T + 500, 2.0), (T + 1000, 10.0), (T + 2000, 12.0), (T + 3000, 14.0), (T + 1500, 30.0)]
    assert_matches_readings(refired[0].partial["t"], expected)
    assert refired[0].partial["t"].count == 5

    # 5m and 1h roll up the latest versions only
    later = book.advance(T + HOUR - 1)
    assert [r.size for r in later] == ["5m", "1h"]
    for r in later:
        assert_matches_readings(r.partial["t"], expected)


def test_put_partial_correction_after_hour_fired_refires_all_three():
    book = WindowBook(LATENESS)
    minute = T + 59 * MINUTE
    book.put_partial("d1", minute, {"t": MetricPartial.of(minute + 1, 1.0)})
    book.put_partial("d2", minute, {"t": MetricPartial.of(minute + 2, 3.0), "h": MetricPartial.of(minute + 2, 50)})
    book.put_partial("d2", T, {"t": MetricPartial.of(T + 2, 7.0)})
    assert [(r.size, r.start) for r in book.advance(T + HOUR)] == [
        ("1m", T), ("1m", minute), ("5m", T), ("5m", T + 55 * MINUTE), ("1h", T),
    ]
    assert book.put_partial("d1", minute, {"t": fold([(minute + 1, 1.0), (minute + 9, 5.0)])})
    refired = book.refire_pending()
    assert [(r.size, r.start, r.refire) for r in refired] == [
        ("1m", minute, True), ("5m", T + 55 * MINUTE, True), ("1h", T, True),
    ]
    got = {r.size: r.partial for r in refired}
    assert_matches_readings(got["1m"]["t"], [(minute + 1, 1.0), (minute + 9, 5.0), (minute + 2, 3.0)])
    assert_matches_readings(got["1h"]["t"], [(minute + 1, 1.0), (minute + 9, 5.0), (minute + 2, 3.0), (T + 2, 7.0)])
    assert got["1h"]["h"].to_list() == MetricPartial.of(minute + 2, 50).to_list()


def test_put_partial_beyond_lateness_is_rejected():
    book = WindowBook(LATENESS)
    book.advance(T + MINUTE - 1 + LATENESS)
    assert book.put_partial("d1", T, {"t": MetricPartial.of(T, 1.0)}) is False
    assert book.minutes == {} and book.refire_pending() == []
    assert book.put_partial("d1", T + MINUTE, {"t": MetricPartial.of(T + MINUTE, 1.0)}) is True


# --- fingerprints, rows, JSON ----------------------------------------------------------------


def test_window_row_and_partial_json_round_trip():
    partial = {
        "temp": fold([(T + 1000, 20.25), (T + 2000, 22.5), (T + 3000, 21.125)]),
        "hum": MetricPartial.of(T + 4000, 55),
    }
    row = window_row("device", "dev-1", "thermo", WindowResult("5m", T, partial, refire=True))
    assert row == {
        "scope": "device", "key": "dev-1", "product_id": "thermo", "size": "5m", "start": T, "refire": True,
        "partial": partial_to_json(partial),
    }
    wire = orjson.loads(orjson.dumps(row))
    assert wire == row
    back = partial_from_json(wire["partial"])
    assert back == partial
    assert {m: p.result() for m, p in back.items()} == {m: p.result() for m, p in partial.items()}
    assert partial_to_json(back) == partial_to_json(partial)
    empty = window_row("product", "thermo", None, WindowResult("1m", T, {}))
    assert (empty["product_id"], empty["refire"], empty["partial"]) == (None, False, {})
