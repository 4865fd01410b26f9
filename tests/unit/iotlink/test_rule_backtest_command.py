"""iotlink rules backtest: where the live rule sets come from, and the terminal table."""

from pathlib import Path

from iotlink.rule_backtest import live_rule_sets, report_lines
from jobs.config import Settings
from operators.backtest import AlarmSpan, Incident, backtest_report

ROOT = Path(__file__).resolve().parents[3]


def test_live_rule_sets_are_the_rules_directory_without_a_database(tmp_path):
    settings = Settings(data_dir=tmp_path, rules_dir=ROOT / "rules")
    texts, where = live_rule_sets(settings, None, {})
    assert {source.rsplit("/", 1)[-1] for source, _ in texts} == {"prod-a.yaml", "fire_sensor.yaml"}
    assert where == f"live rule sets: {ROOT / 'rules'}"
    texts, where = live_rule_sets(settings, str(ROOT / "rules" / "prod-a.yaml"), {})
    assert len(texts) == 1 and where.endswith("prod-a.yaml")


def test_the_table_shows_each_set_and_the_comparison():
    spans = [AlarmSpan("live", "hot", "d1", 0, 60_000, "high"), AlarmSpan("live", "hot", "d1", 120_000, 180_000, "high"),
             AlarmSpan("candidate", "hot", "d1", 100_000, 7_300_000, "high")]
    report = backtest_report(spans, [Incident("d1", 90_000, 200_000, "x")], 0, 86_400_000)
    lines = report_lines(report)
    candidate = next(line for line in lines if " candidate " in line and line.startswith("hot"))
    live = next(line for line in lines if " live " in line and line.startswith("hot"))
    assert candidate.split()[2:4] == ["1", "1"] and "2.0 h" in candidate and "1/1" in candidate
    assert live.split()[2:4] == ["2", "1"] and "1.0 min" in live
    assert any("both      1   only candidate      0   only live      1" in line for line in lines)
