"""``iotlink rules backtest`` over the Iceberg archive: a bounded Flink job replays each device's
readings through a candidate and a live rule set; the report is checked against what the
readings were made to contain."""

import datetime as dt
import json
import uuid

from connectors.iceberg import append_file_telemetry, init_tables, open_catalog
from iotlink.cli import main

MINUTE = 60_000
LIVE = "ruleSetId: live\nproductId: prod-a\nrules:\n  - {ruleId: hot, type: threshold, condition: 'metrics.tempC > 80', severity: high}\n"
CANDIDATE = ("ruleSetId: candidate\nproductId: prod-a\nrules:\n"
             "  - {ruleId: hot, type: threshold, condition: 'metrics.tempC > 85', clearCondition: 'metrics.tempC < 78', severity: high}\n")


def test_backtest_reports_and_compares_two_rule_sets(settings, tmp_path, capsys):
    suffix = uuid.uuid4().hex[:8]
    start = int(dt.datetime(2025, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)
    flapping, spiking, quiet = f"bt-flap-{suffix}", f"bt-spike-{suffix}", f"bt-quiet-{suffix}"
    readings = []
    for minute in range(2 * 1440):  # two days, a reading a minute
        ts = start + minute * MINUTE
        # Around 80 for ten minutes each day, alternating: the live rule (no hysteresis) flaps 5 times a day.
        flap = 82.0 if minute % 1440 in range(600, 610) and minute % 2 == 0 else 70.0
        spike = 90.0 if minute in range(720, 750) else 70.0  # one 30-minute overheat on the first day
        readings += [{"device_id": device, "product_id": "prod-a", "device_ts": ts, "ingest_ts": ts, "metrics": {"tempC": value}}
                     for device, value in ((flapping, flap), (spiking, spike), (quiet, 70.0))]
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    init_tables(catalog)
    assert append_file_telemetry(catalog, f"backtest-{suffix}", f"backtest-{suffix}.jsonl", readings)
    (tmp_path / "candidate.yaml").write_text(CANDIDATE)
    (tmp_path / "live.yaml").write_text(LIVE)
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"device_id,start,end,name\n{spiking},{start + 715 * MINUTE},{start + 760 * MINUTE},overheat\n"
                         f"{quiet},{start},{start + 60 * MINUTE},nothing happened\n")
    report_path = tmp_path / "report.json"
    args = ["rules", "backtest", "--rules", str(tmp_path / "candidate.yaml"), "--live", str(tmp_path / "live.yaml"),
            "--from", "2025-06-01T00:00:00Z", "--to", "2025-06-03T00:00:00Z", "--devices", f"{flapping},{spiking},{quiet}",
            "--incidents", str(incidents), "--json", str(report_path), "--charts", str(tmp_path / "charts"),
            "--postgres-url", settings.postgres_url, "--iceberg-catalog", settings.iceberg_catalog,
            "--iceberg-warehouse", settings.iceberg_warehouse]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert (report["devices"], report["readings"]) == (3, len(readings))
    live, candidate = report["rule_sets"]["live"]["hot"], report["rule_sets"]["candidate"]["hot"]
    assert (live["raised"], live["devices"], live["max_cycles_per_device_day"], live["flapping_device_days"]) == (11, 2, 5, 2)
    assert live["max_active_s"] == 30 * 60 and candidate["max_active_s"] == 30 * 60
    assert (candidate["raised"], candidate["devices"], candidate["flapping_device_days"]) == (1, 1, 0)
    for stats in (live, candidate):  # the overheat is seen at its first reading; the quiet device's "incident" is missed
        assert (stats["incidents_detected"], stats["incidents_missed"], stats["max_detect_s"]) == (1, 1, 5 * 60)
    assert report["compared"] == {"hot": {"both": 1, "only_candidate": 0, "only_live": 10}}
    assert "hot" in out and "only live     10" in out and f"{len(readings):,} readings of 3 devices" in out
    assert (tmp_path / "charts" / "hot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
