"""The benchmark's pure parts: the soak run's summary of its samples."""

import pytest

from iotlink.bench import SoakSample, soak_summary

MIB = 2**20


def sample(t, sent, consumed, rss_mib, checkpoint_ms=300, failed=0):
    return SoakSample(t, sent, consumed, rss_mib * MIB, int(t // 2), failed, checkpoint_ms, 0)


def test_rates_backlog_and_a_flat_memory_after_the_warm_up():
    samples = [sample(t, 2000 * t, 1000 * t, 2000 if t < 60 else 2500, checkpoint_ms=9000 if t < 60 else 400) for t in range(10, 610, 10)]
    summary = soak_summary(samples)
    assert summary["offered"] == pytest.approx(2000) and summary["processed"] == pytest.approx(1000)
    assert summary["backlog_growth"] == pytest.approx(1000) and summary["backlog_end"] == 600_000
    assert summary["rss_first"] == summary["rss_last"] == 2500 and summary["rss_slope"] == pytest.approx(0)
    assert summary["checkpoint_max_ms"] == 400  # the first minute's slow checkpoints are warm-up


def test_growing_memory_shows_as_a_slope_per_minute():
    samples = [sample(t, 100 * t, 100 * t, 1000 + t) for t in range(0, 600, 10)]
    summary = soak_summary(samples)
    assert summary["rss_slope"] == pytest.approx(60)
    assert summary["rss_last"] > summary["rss_first"] and summary["backlog_growth"] == pytest.approx(0)


def test_a_short_run_uses_its_last_two_samples():
    summary = soak_summary([sample(10, 100, 50, 900, failed=1), sample(20, 300, 100, 950, failed=2)])
    assert summary["offered"] == pytest.approx(20) and summary["checkpoints_failed"] == 2
