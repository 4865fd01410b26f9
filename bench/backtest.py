"""Rule backtest benchmark: a simulated history in the Iceberg archive, replayed by ``iotlink rules backtest``.

Loads ``--days`` of readings of ``--devices`` ``prod-a`` devices, one a minute, into Iceberg
``telemetry`` of an embedded stack (in chunks, each one commit; skipped with ``--skip-load`` on a
data directory loaded before), then runs the backtest of a candidate rule set (the project's
``rules/prod-a.yaml`` with the threshold raised from 80 to 85 °C and a clear condition below 78)
against the project's rules, and reports the wall time, readings per second and the peak RSS of
the command's process tree.

The history: each device's temperature follows a random walk around 70 °C; one device in ten
overheats for an hour a day (to 85-95 °C); one in twenty hovers around 80 °C for two hours a day
(where a threshold without hysteresis flaps). Deterministic for a seed. The incidents file
(``<data-dir>/backtest/incidents.csv``) lists the overheating hours.

Usage::

    .venv/bin/python bench/backtest.py --data-dir /tmp/backtest --devices 1000 --days 7
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.iceberg import append_file_telemetry, init_tables, open_catalog  # noqa: E402
from iotlink.stack import EmbeddedStack  # noqa: E402
from jobs.config import Settings  # noqa: E402

MINUTE_MS = 60_000
DAY_MS = 86_400_000
CANDIDATE = """ruleSetId: prod-a-candidate
productId: prod-a
rules:
  - ruleId: temp-threshold-prod-a
    type: threshold
    condition: "metrics.tempC > 85"
    clearCondition: "metrics.tempC < 78"
    severity: high
"""


def device_history(index: int, start_ms: int, days: int, seed: int):
    """One device's readings (standard telemetry records), and its overheating hours."""
    rng = random.Random(seed * 1_000_003 + index)
    device_id = f"bt-{index:05d}"
    temp = 70.0
    overheats = index % 10 == 0
    hovers = index % 20 == 5
    incidents = []
    records = []
    for day in range(days):
        hot_from = rng.randrange(0, 23 * 60) if overheats else None
        hover_from = rng.randrange(0, 22 * 60) if hovers else None
        if hot_from is not None:
            begin = start_ms + day * DAY_MS + hot_from * MINUTE_MS
            incidents.append((device_id, begin, begin + 60 * MINUTE_MS))
        for minute in range(24 * 60):
            temp += rng.gauss(0, 0.4) + (70.0 - temp) * 0.05
            value = temp
            if hot_from is not None and hot_from <= minute < hot_from + 60:
                value = 85.0 + rng.uniform(0, 10)
            elif hover_from is not None and hover_from <= minute < hover_from + 120:
                value = 80.0 + rng.gauss(0, 1.0)
            ts = start_ms + day * DAY_MS + minute * MINUTE_MS
            records.append({"device_id": device_id, "product_id": "prod-a", "device_ts": ts, "ingest_ts": ts,
                            "metrics": {"tempC": round(value, 2), "rpm": 1200}})
    return records, incidents


def load_history(settings: Settings, devices: int, days: int, start_ms: int, seed: int, incidents_path: Path) -> tuple[int, float]:
    """Appends the history to Iceberg ``telemetry`` (a commit per 100 devices); writes the incidents."""
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    init_tables(catalog)
    started = time.monotonic()
    total = 0
    chunk: list[dict] = []
    incidents: list[tuple] = []
    for index in range(devices):
        records, device_incidents = device_history(index, start_ms, days, seed)
        chunk.extend(records)
        incidents.extend(device_incidents)
        if len(chunk) >= 100 * days * 1440 or index == devices - 1:
            append_file_telemetry(catalog, f"backtest-{seed}-{start_ms}-{index}", f"backtest/{index}", chunk)
            total += len(chunk)
            print(f"  loaded {total:,} readings ({index + 1} devices, {time.monotonic() - started:.0f} s)", flush=True)
            chunk = []
    incidents_path.parent.mkdir(parents=True, exist_ok=True)
    with incidents_path.open("w", encoding="utf-8") as out:
        out.write("device_id,start,end,name\n")
        for device_id, begin, end in incidents:
            out.write(f"{device_id},{begin},{end},{device_id} overheating\n")
    return total, time.monotonic() - started


def _peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            root = psutil.Process(pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak[0] = max(peak[0], rss)
        except psutil.Error:
            pass
        stop.wait(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="the embedded stack's data directory (kept between runs)")
    parser.add_argument("--devices", type=int, default=1000, help="simulated prod-a devices (default 1000)")
    parser.add_argument("--days", type=int, default=7, help="days of history, one reading a minute (default 7)")
    parser.add_argument("--start", default="2026-02-01", help="first UTC day of the history (default 2026-02-01)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--skip-load", action="store_true", help="the history is already in this data directory's archive")
    parser.add_argument("--parallelism", type=int, default=2, help="the backtest job's parallelism (default 2)")
    args = parser.parse_args(argv)

    start_ms = int(datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp() * 1000)
    settings = Settings(data_dir=args.data_dir)
    stack = EmbeddedStack(settings, ("postgres", "iceberg"), share=True)
    stack.start()
    work = args.data_dir / "backtest"
    incidents = work / "incidents.csv"
    try:
        settings = stack.settings_with_endpoints()
        if not args.skip_load:
            print(f"loading {args.devices:,} devices x {args.days} days x 1,440 readings into Iceberg telemetry ...", flush=True)
            total, seconds = load_history(settings, args.devices, args.days, start_ms, args.seed, incidents)
            print(f"loaded {total:,} readings in {seconds:.0f} s")
        (work / "candidate").mkdir(parents=True, exist_ok=True)
        (work / "candidate" / "prod-a.yaml").write_text(CANDIDATE, encoding="utf-8")
        command = [
            str(ROOT / ".venv" / "bin" / "iotlink"), "rules", "backtest", "--embedded", "--data-dir", str(args.data_dir),
            "--rules", str(work / "candidate"), "--live", str(ROOT / "rules" / "prod-a.yaml"),
            "--from", str(start_ms), "--to", str(start_ms + args.days * DAY_MS), "--incidents", str(incidents),
            "--json", str(work / "report.json"), "--charts", str(work / "charts"), "--parallelism", str(args.parallelism),
        ]
        started = time.monotonic()
        process = subprocess.Popen(command)
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=_peak_rss, args=(process.pid, stop, peak), daemon=True)
        watcher.start()
        code = process.wait()
        stop.set()
        watcher.join()
        print(f"backtest command: exit {code}, {time.monotonic() - started:.1f} s wall (JVM start included), "
              f"peak RSS of its process tree {peak[0] / 2**20:,.0f} MiB")
        return code
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
