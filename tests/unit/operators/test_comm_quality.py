"""Communication quality: received / expected / missing / longest gap per window, rejections."""

import random

from operators.comm_quality import CommBook, RejectionBook, summarize, window_quality

MIN = 60_000
HOUR = 60 * MIN


def brute_force(times, start, size, interval):
    inside = sorted(t for t in times if start <= t < start + size)
    points = [start, *inside, start + size]
    gap = max(b - a for a, b in zip(points, points[1:], strict=False))
    expected = size // interval if interval else None
    return {"received": len(inside), "expected": expected,
            "missing": None if expected is None else max(0, expected - len(inside)), "longest_gap_ms": gap}


def test_summary_of_a_minute():
    assert summarize([30_500, 1_000, 10_000]) == [3, 1_000, 30_500, 20_500]
    assert summarize([5]) == [1, 5, 5, 0]


def test_an_hour_with_a_silent_stretch():
    book = CommBook()
    times = [t for t in range(0, HOUR, 10_000) if not (20 * MIN <= t < 35 * MIN)]
    for t in times:
        book.add(t)
    q = book.quality(0, HOUR, 10_000)
    assert q == {"received": len(times), "expected": 360, "missing": 360 - len(times), "longest_gap_ms": 15 * MIN + 10_000}


def test_edges_count_as_gaps_and_an_unknown_interval_leaves_expected_empty():
    book = CommBook()
    book.add(4 * MIN)
    assert book.quality(0, 5 * MIN, None) == {"received": 1, "expected": None, "missing": None, "longest_gap_ms": 4 * MIN}


def test_out_of_order_arrival_and_settling_give_the_brute_force_answer():
    rng = random.Random(7)
    times = sorted({rng.randrange(0, 2 * HOUR) for _ in range(400)})
    shuffled = times[:]
    rng.shuffle(shuffled)
    book, accepted, watermark = CommBook(), [], -1
    for i, t in enumerate(shuffled):
        if t - t % MIN + MIN + 5 * MIN <= watermark + 1:
            continue  # too late: the window operator archives it and never shows it to the book
        book.add(t)
        accepted.append(t)
        if i % 50 == 0:  # settle part-way: minutes far behind the newest time shrink to summaries
            watermark = max(watermark, max(shuffled[: i + 1]) - 40 * MIN)
            book.settle(watermark, 5 * MIN)
    times = sorted(accepted)
    assert 100 < len(times) < 400
    # The first hour is past its lateness by now (dropped, as the operator does after firing it).
    for start in range(HOUR, 2 * HOUR, 5 * MIN):
        assert book.quality(start, 5 * MIN, 30_000) == brute_force(times, start, 5 * MIN, 30_000)
    assert book.quality(HOUR, HOUR, 30_000) == brute_force(times, HOUR, HOUR, 30_000)
    assert book.sums, "some minutes were settled to summaries"


def test_state_round_trip_and_forgetting_old_hours():
    book = CommBook()
    for t in (1_000, 61_000, HOUR + 1_000):
        book.add(t)
    book.settle(HOUR + 10 * MIN, 5 * MIN)
    again = CommBook(**book.to_state())
    assert again.quality(HOUR, HOUR, None)["received"] == 1
    assert again.quality(0, HOUR, None)["received"] == 0  # the first hour is past its lateness: dropped


def test_window_quality_merges_minutes_in_time_order():
    minutes = {0: [2, 0, 50_000, 50_000], MIN: [1, MIN + 30_000, MIN + 30_000, 0]}
    assert window_quality(minutes, 0, 2 * MIN, 60_000)["longest_gap_ms"] == 50_000


def test_rejections_are_absolute_counts_per_window():
    book = RejectionBook()
    slots = book.add(HOUR + 1) + book.add(HOUR + 2 * MIN)
    rows = book.rows("d", slots)
    assert {(r["size"], r["start"], r["rejected"]) for r in rows} == {("5m", HOUR, 2), ("1h", HOUR, 2)}
    restored = RejectionBook(book.counts)
    restored.forget_before(2 * HOUR)
    assert restored.counts == {}
