"""PNG charts of a rule backtest: per rule, the alarms raised per hour by each rule set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

SET_COLOURS = {"candidate": "#d62728", "live": "#1f77b4"}


def rule_chart(path: Path, rule_id: str, hourly: dict[str, list[int]], from_ms: int, summary: dict[str, dict]) -> Path:
    """Draws one rule's chart.

    Args:
        path: The PNG to write.
        rule_id: The rule.
        hourly: Rule set label -> alarms raised in each hour from ``from_ms``
            (:func:`operators.backtest.hourly_raised`).
        from_ms: Start of the backtest (epoch ms).
        summary: Rule set label -> that set's report for the rule (raised, flapping, ...).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    start = datetime.fromtimestamp(from_ms / 1000, UTC)
    figure, axes = plt.subplots(figsize=(10, 3.6), dpi=100)
    try:
        for label, counts in sorted(hourly.items()):
            hours = [start + timedelta(hours=i) for i in range(len(counts))]
            stats = summary.get(label) or {}
            legend = f"{label}: {stats.get('raised', 0)} raised, {stats.get('flapping_device_days', 0)} flapping device-days"
            axes.step(hours, counts, where="post", color=SET_COLOURS.get(label), label=legend, linewidth=1.4)
        axes.set_title(f"rule {rule_id}: alarms raised per hour (UTC)")
        axes.set_ylabel("alarms raised")
        axes.grid(alpha=0.3)
        if hourly:
            axes.legend(loc="upper right", fontsize=8)
        figure.autofmt_xdate()
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path
