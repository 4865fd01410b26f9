"""The benchmark's pure parts: the soak run's summary of its samples."""

import pytest

from iotlink.bench import SoakSample, soak_summary

MIB = 2**20


def sample(t, sent, consumed, rss_mib, checkpoint_ms=300, failed=0):
    return SoakSample(t, sent, consumed, rss_mib * MIB, int(t // 2), failed, checkpoint_ms, 0)


def test_rates_backlog_and_a_flat_memory_after_the_warm_up():
    samples = [sample(t, 2000 * t, 1000 * t, 2000 if t < 60 else 2500, checkpoint_ms=9000 if t < 60 else 400, failed=5 if t < 60 else 6)
               for t in range(10, 610, 10)]
    summary = soak_summary(samples)
    assert summary["offered"] == pytest.approx(2000) and summary["processed"] == pytest.approx(1000)
    assert summary["backlog_growth"] == pytest.approx(1000) and summary["backlog_end"] == 600_000
    assert summary["rss_first"] == summary["rss_last"] == 2500 and summary["rss_slope"] == pytest.approx(0)
    assert summary["checkpoint_max_ms"] == 400  # the first minute's slow checkpoints are warm-up
    assert summary["checkpoints_failed"] == 0


def test_growing_memory_shows_as_a_slope_per_minute():
    samples = [sample(t, 100 * t, 100 * t, 1000 + t) for t in range(0, 600, 10)]
    summary = soak_summary(samples)
    assert summary["rss_slope"] == pytest.approx(60)
    assert summary["rss_last"] > summary["rss_first"] and summary["backlog_growth"] == pytest.approx(0)


def test_a_short_run_uses_its_last_two_samples():
    summary = soak_summary([sample(10, 100, 50, 900, failed=1), sample(20, 300, 100, 950, failed=3)])
    assert summary["offered"] == pytest.approx(20) and summary["checkpoints_failed"] == 2


def test_process_tree_usage_counts_the_cpu_of_children_that_ended_and_not_before_it_started():
    import subprocess
    import sys
    import time

    from iotlink.bench import ProcessTreeUsage

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(0.6)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"])
    with ProcessTreeUsage(parent.pid) as usage:
        parent.wait(30)
        time.sleep(0.1)
    assert 0.3 <= usage.cpu_seconds < 5
    assert usage.peak_bytes > 1_000_000


def test_memory_that_fills_early_and_stays_is_flat_in_the_second_half():
    samples = [sample(t, 100 * t, 100 * t, min(2000 + 5 * t, 3000)) for t in range(0, 610, 10)]
    summary = soak_summary(samples)
    assert summary["rss_slope"] == pytest.approx(0) and summary["rss_last"] == 3000
