"""The file batch job over sample CSV / JSON-lines / hex files, run twice and then with one
more file: Iceberg holds each file's records once, rejected rows are in the error files with
their lines and reasons, and PostgreSQL holds exactly the aggregates of everything loaded."""

import math
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import psycopg
import pytest
from postgres_schemas import schema_with
from pyiceberg.expressions import And, StartsWith

from connectors.iceberg import open_catalog
from jobs.file_batch import BatchOptions, run_batch

pytestmark = pytest.mark.integration
HOUR = 3_600_000
START = (1_756_653_767_000 + 90 * 86_400_000) // HOUR * HOUR  # an hour no other test loads
PATTERN = r"(?P<product>[^/]+)/(?P<device>[^/_.]+)[^/]*$"


def iso(ts):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def write_samples(root):
    """Three devices' files; returns the readings each should become: (device, product, ts, metrics)."""
    readings = []
    csv_rows = ["timestamp,temp,hum"]
    for i in range(30):
        ts = START + i * 50_000
        temp, hum = round(20 + i * 0.37, 2), round(40 + (i % 9), 1)
        csv_rows.append(f"{iso(ts)},{temp},{hum}")
        readings.append(("fb-csv-1", "product_d", ts, {"temperature": temp, "humidity": hum}))
    csv_rows.insert(8, f"{iso(START)},warm,50")  # rejected: line 9 of the file (index 8)
    (root / "product_d").mkdir()
    (root / "product_d" / "fb-csv-1_day1.csv").write_text("\n".join(csv_rows) + "\n")
    lines = []
    for i in range(20):
        ts = START + 7_000 + i * 90_000
        lines.append(orjson.dumps({"device_timestamp": ts, "data": {"metrics": {"tempC": 30 + i, "door": i % 2 == 0}}}).decode())
        readings.append(("fb-json-1", "fb-json", ts, {"tempC": 30 + i, "door": i % 2 == 0}))
    lines.insert(4, "{not json")  # rejected: line 5
    (root / "fb-json").mkdir()
    (root / "fb-json" / "fb-json-1.jsonl").write_text("\n".join(lines) + "\n")
    (root / "product_a").mkdir()
    (root / "product_a" / "fb-hex-1.hex").write_text("# product_a readings\n00FD3C\nFF9C32\n00FD\n")  # line 4 truncated
    readings.append(("fb-hex-1", "product_a", None, {"temperature": 25.3, "humidity": 60}))
    readings.append(("fb-hex-1", "product_a", None, {"temperature": -10.0, "humidity": 50}))
    return readings


def expected_windows(readings, now_ms):
    """{(scope, key, metric, size, start): (count, min, max, sum, stddev)} computed from the readings."""
    sizes = {"agg_1m": 60_000, "agg_5m": 300_000, "agg_1h": HOUR}
    groups = defaultdict(list)
    for device, product, ts, metrics in readings:
        ts = now_ms if ts is None else ts
        for metric, value in metrics.items():
            if isinstance(value, bool):
                continue
            for table, size in sizes.items():
                for scope, key in (("device", device), ("product", product)):
                    groups[(table, scope, key, metric, ts - ts % size)].append(float(value))
    return {k: (len(v), min(v), max(v), math.fsum(v), statistics.stdev(v) if len(v) > 1 else None) for k, v in groups.items()}


def postgres_windows(url):
    out = {}
    with psycopg.connect(url) as conn:
        for table in ("agg_1m", "agg_5m", "agg_1h"):
            for scope, key, metric, start, count, low, high, total, stddev in conn.execute(
                f"SELECT scope, key, metric, window_start, count, min, max, sum, stddev FROM {table}"
            ).fetchall():
                out[(table, scope, key, metric, start)] = (count, low, high, total, stddev)
    return out


def assert_windows(got, want):
    assert set(got) == set(want), f"missing {sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]}"
    for key, values in want.items():
        for a, b in zip(got[key], values, strict=True):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (key, got[key], values)


def file_rows(settings):
    table = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse).load_table("iotlink.telemetry")
    data = table.scan(row_filter=And(StartsWith("device_id", "fb-"), StartsWith("source_topic", "file:"))).to_arrow()
    return sorted(zip(data["source_topic"].to_pylist(), data["source_seq"].to_pylist(), strict=True))


def file_load_report(settings, loaded) -> str:
    """What a failed row count needs to be explained: the rows of each file, and each snapshot of
    ``telemetry`` that carries a file's digest (its operation and what it added)."""
    table = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse).load_table("iotlink.telemetry")
    per_file = Counter(topic for topic, _ in loaded)
    snapshots = [
        (s.snapshot_id, s.parent_snapshot_id, s.summary.operation.value, s.summary.get("iotlink.file-name"), s.summary.get("added-records"))
        for s in table.snapshots() if s.summary is not None and s.summary.get("iotlink.file-name", "").find("fb-") >= 0
    ]
    return f"rows per file {dict(per_file)}; file snapshots (id, parent, operation, file, added) {snapshots}"


def test_batch_loads_each_file_once_and_keeps_exact_aggregates(settings, tmp_path):
    url = schema_with(settings, "it_file_batch")
    settings = settings.model_copy(update={"postgres_url": url, "data_dir": tmp_path})
    root = tmp_path / "inbox"
    root.mkdir()
    readings = write_samples(root)
    now_ms = START + 1_234_567
    options = BatchOptions(inputs=(str(root),), output_dir=tmp_path / "out", device_pattern=PATTERN)

    first = run_batch(settings, options, now_ms=now_ms, progress=lambda line: None)
    by_file = {f.file: f for f in first.files}
    assert {name: (f.status, f.records, f.rejected) for name, f in by_file.items()} == {
        "fb-json/fb-json-1.jsonl": ("loaded", 20, 1),
        "product_a/fb-hex-1.hex": ("loaded", 2, 1),
        "product_d/fb-csv-1_day1.csv": ("loaded", 30, 1),
    }
    errors = {name: [orjson.loads(line) for line in Path(f.error_file).read_bytes().splitlines()] for name, f in by_file.items()}
    assert [(e["line"], e["reason_code"]) for e in errors["product_d/fb-csv-1_day1.csv"]] == [(9, "invalid_metric")]
    assert "warm" in errors["product_d/fb-csv-1_day1.csv"][0]["reason"] and errors["product_d/fb-csv-1_day1.csv"][0]["payload"].endswith("warm,50\n")
    assert [(e["line"], e["reason_code"], e["payload"]) for e in errors["fb-json/fb-json-1.jsonl"]] == [(5, "invalid_json", "{not json")]
    assert [(e["line"], e["payload"]) for e in errors["product_a/fb-hex-1.hex"]] == [(4, "00FD")]
    assert "needs 1 byte at offset 2" in errors["product_a/fb-hex-1.hex"][0]["reason"]
    loaded = file_rows(settings)
    assert len(loaded) == 52 and len(set(loaded)) == 52, file_load_report(settings, loaded)
    want = expected_windows(readings, now_ms)
    assert_windows(postgres_windows(url), want)
    assert first.windows_recomputed > 0 and first.totals()["rows"] == 55
    report = orjson.loads(next((tmp_path / "out").glob("batch-*.json")).read_bytes())
    assert report["totals"]["records"] == 52 and report["totals"]["rejected"] == 3

    # The same files again: nothing loaded twice, nothing changed.
    second = run_batch(settings, options, now_ms=now_ms + 60_000, progress=lambda line: None)
    assert {f.status for f in second.files} == {"already loaded"} and second.windows_recomputed == 0
    assert file_rows(settings) == loaded
    assert_windows(postgres_windows(url), want)

    # A second file of the same device and hours: the windows now hold both files exactly.
    more = ["timestamp,temp,hum"] + [f"{iso(START + 25_000 + i * 60_000)},{50 + i},{10 + i}" for i in range(10)]
    (root / "product_d" / "fb-csv-1_day1-late.csv").write_text("\n".join(more) + "\n")
    readings += [("fb-csv-1", "product_d", START + 25_000 + i * 60_000, {"temperature": 50 + i, "humidity": 10 + i}) for i in range(10)]
    third = run_batch(settings, options, now_ms=now_ms + 120_000, progress=lambda line: None)
    assert sorted((f.file, f.status) for f in third.files if f.status == "loaded") == [("product_d/fb-csv-1_day1-late.csv", "loaded")]
    assert len(file_rows(settings)) == 62
    assert_windows(postgres_windows(url), expected_windows(readings, now_ms))


def test_the_batch_command_reports_and_refuses_a_bad_schedule(settings, tmp_path):
    url = schema_with(settings, "it_file_batch_cli")
    root = tmp_path / "inbox"
    (root / "product_d").mkdir(parents=True)
    (root / "product_d" / "fb-cli-1.csv").write_text(f"timestamp,temp,hum\n{iso(START + HOUR)},21.5,40\n")
    endpoints = ["--postgres-url", url, "--iceberg-catalog", settings.iceberg_catalog, "--iceberg-warehouse", settings.iceberg_warehouse]
    command = [sys.executable, "-m", "iotlink.cli", "batch", "--input", str(root), "--output-dir", str(tmp_path / "out"),
               "--device-pattern", PATTERN, *endpoints]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "loaded          product_d/fb-cli-1.csv  (1 records, 0 rejected)" in run.stdout
    assert "files 1 (loaded 1, already loaded 0, failed 0), rows 1, records 1, rejected 0" in run.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert "already loaded  product_d/fb-cli-1.csv  (skipped)" in again.stdout
    bad = subprocess.run([*command, "--schedule", "every hour"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a valid cron expression" in bad.stderr
