"""The file batch job (client flow 2-2): device data files -> Iceberg and PostgreSQL.

Separate from the streaming job and run on a schedule: every CSV / JSON / hex file of the
input (see :mod:`operators.file_input`) is decoded with the same YAML specs and the same decode
code as the stream; its standard records are appended to Iceberg ``telemetry`` in one commit
marked with the file's SHA-256, so a file loaded once is never loaded again; rejected rows go
to an error file next to the run report, each with its file line and precise reason. Then the
1m/5m/1h aggregates of every device and product the run touched are recomputed from Iceberg
``telemetry`` (everything archived for those keys and hours, de-duplicated as the stream does)
and upserted into PostgreSQL as absolute values, so re-running, or loading a second file of the
same hours, leaves exact windows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from jobs.config import Settings
from operators.decode import decode_raw_record
from operators.envelope import build_envelope
from operators.file_input import (
    DEFAULT_DEVICE_PATTERN,
    FileInputError,
    file_digest,
    file_payloads,
    identity_from_path,
    list_input_files,
)
from operators.windows import LARGEST, SIZES, MetricPartial, WindowResult, numeric_metrics, window_row, window_start


@dataclass
class FileReport:
    """What the run did with one file."""

    file: str
    status: str  # loaded | already loaded | nothing decoded | failed
    device_id: str | None = None
    sha256: str | None = None
    payloads: int = 0
    records: int = 0
    rejected: int = 0
    error_file: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BatchReport:
    """The run report: per file, totals, and the aggregates recomputed."""

    started_at: str
    files: list[FileReport] = field(default_factory=list)
    windows_recomputed: int = 0
    seconds: float = 0.0

    def totals(self) -> dict[str, int]:
        """Files, rows (records + rejected), records, rejected, and files per status."""
        out = {"files": len(self.files), "records": sum(f.records for f in self.files), "rejected": sum(f.rejected for f in self.files)}
        out["rows"] = out["records"] + out["rejected"]
        for report in self.files:
            out[report.status] = out.get(report.status, 0) + 1
        return out

    def to_json(self) -> bytes:
        """The report as JSON."""
        return orjson.dumps({**asdict(self), "totals": self.totals()}, option=orjson.OPT_INDENT_2)


@dataclass(frozen=True)
class BatchOptions:
    """What one batch run reads and where its outputs go.

    Attributes:
        inputs: Files and directories (searched recursively) to load.
        output_dir: Where the run report (``batch-<time>.json``) and the error files go.
        device_pattern: Regular expression over a file's relative path with the named group
            ``device`` (and optionally ``product``).
    """

    inputs: tuple[str, ...]
    output_dir: Path
    device_pattern: str = DEFAULT_DEVICE_PATTERN


def _csv_header_expected(registry, device_id: str, product_id: str | None) -> bool:
    """Whether the device's CSV spec has a header row (the payload cutter repeats it)."""
    from operators.decode import resolve_identity
    from operators.envelope import RawEnvelope

    try:
        identity = resolve_identity(RawEnvelope(b"", "file", 1, device_id=device_id, product_id=product_id, format="csv"), registry.devices)
        decoder = registry.decoder_for(identity, b"")
    except Exception:  # noqa: BLE001 - no spec yet: decoding reports it per payload
        return True
    conv = getattr(decoder, "conv", None)
    return bool(getattr(conv, "header", True))


def decode_file(data: bytes, digest: str, relative: str, registry, pattern: str, now_ms: int) -> tuple[FileReport, list[dict], list[dict]]:
    """Decodes one file's bytes: its report, its records in file order, and its dead letters
    (each with ``file`` and ``line``)."""
    report = FileReport(file=relative, status="loaded", sha256=digest)
    device_id, product_id = identity_from_path(relative, pattern)
    report.device_id = device_id
    records: list[dict] = []
    letters: list[dict] = []
    header = _csv_header_expected(registry, device_id, product_id) if relative.lower().endswith(".csv") else True
    for payload in file_payloads(data, relative, device_id, product_id, now_ms, csv_header=header):
        report.payloads += 1
        outcome = decode_raw_record(build_envelope(payload.envelope), registry, now_ms)
        records.extend(outcome.records)
        for letter in outcome.dead_letters:
            letters.append({"file": relative, "line": payload.file_line(letter.get("row")), **letter})
    report.records, report.rejected = len(records), len(letters)
    return report, records, letters


def window_rows_from_telemetry(rows: list[dict], scope: str) -> list[dict]:
    """Window rows (as the streaming job emits them) of ``scope`` (device or product) for
    telemetry rows from Iceberg, duplicates (same device, time, metrics) counted once."""
    seen = set()
    books: dict[tuple[str, str, int], dict[str, MetricPartial]] = defaultdict(dict)
    products: dict[str, str | None] = {}
    for row in sorted(rows, key=lambda r: (r["device_id"], r["device_ts"], r["metrics_json"])):
        identity = (row["device_id"], row["device_ts"], row["metrics_json"])
        if identity in seen:
            continue
        seen.add(identity)
        key = row["device_id"] if scope == "device" else row["product_id"]
        if key is None:
            continue
        products[key] = row["product_id"]
        for metric, value in numeric_metrics(orjson.loads(row["metrics_json"])).items():
            for size, size_ms in SIZES.items():
                book = books[(key, size, window_start(row["device_ts"], size_ms))]
                if metric in book:
                    book[metric].add(row["device_ts"], value)
                else:
                    book[metric] = MetricPartial.of(row["device_ts"], value)
    return [window_row(scope, key, products[key], WindowResult(size, start, partial)) for (key, size, start), partial in sorted(books.items())]


def recompute_aggregates(catalog, postgres_url: str, spans: dict[str, dict[str, tuple[int, int]]]) -> int:
    """Recomputes the windows of the touched devices and products from Iceberg and upserts them.

    Args:
        catalog: The Iceberg catalog.
        postgres_url: The database of ``agg_1m`` / ``agg_5m`` / ``agg_1h``.
        spans: ``{"device": {id: (min_ts, max_ts)}, "product": {...}}`` of the loaded records.

    Returns:
        The number of window rows written.
    """
    from connectors.aggregate_store import aggregate_statements
    from connectors.iceberg import telemetry_between
    from connectors.postgres import PostgresBatchWriter

    written = 0
    writer = PostgresBatchWriter(postgres_url, give_up_after_s=120)
    try:
        for scope, column in (("device", "device_id"), ("product", "product_id")):
            keyed = spans.get(scope) or {}
            if not keyed:
                continue
            # Whole hours around what was loaded, so every touched 1m/5m/1h window is complete.
            since = window_start(min(lo for lo, _ in keyed.values()), LARGEST)
            until = window_start(max(hi for _, hi in keyed.values()), LARGEST) + LARGEST
            rows = telemetry_between(catalog, column, set(keyed), since, until)
            windows = window_rows_from_telemetry(rows, scope)
            for at in range(0, len(windows), 500):
                writer.write_batch(aggregate_statements(windows[at:at + 500]))
            written += len(windows)
    finally:
        writer.close()
    return written


def run_batch(settings: Settings, options: BatchOptions, now_ms: int | None = None, progress=print) -> BatchReport:
    """Loads every input file once and refreshes the aggregates they touch.

    Args:
        settings: Platform settings (Iceberg catalog and PostgreSQL are required).
        options: Inputs, output directory, device pattern.
        now_ms: Receive time stamped on the envelopes (default now).
        progress: Called with one line per file.

    Returns:
        The run report (also written to ``<output_dir>/batch-<time>.json``).

    Raises:
        ValueError: when the catalog or the database is not configured.
    """
    from connectors.iceberg import append_file_telemetry, init_tables, loaded_files, open_catalog
    from connectors.postgres import apply_migrations
    from jobs.telemetry_job import decoder_registry_factory

    if not settings.iceberg_catalog or not settings.postgres_url:
        raise ValueError("the file batch job needs an Iceberg catalog and a PostgreSQL database (give the endpoints or --embedded)")
    started = time.monotonic()
    now_ms = now_ms or int(time.time() * 1000)
    report = BatchReport(started_at=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat())
    registry = decoder_registry_factory(settings)()
    catalog = open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse)
    init_tables(catalog)
    apply_migrations(settings.postgres_url)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    errors_dir = options.output_dir / "errors"
    done = loaded_files(catalog.load_table("iotlink.telemetry"))
    spans: dict[str, dict[str, tuple[int, int]]] = {"device": {}, "product": {}}
    for path, relative in list_input_files(list(options.inputs)):
        file_started = time.monotonic()
        try:
            data = path.read_bytes()
            digest = file_digest(data)
            if digest in done:
                file_report = FileReport(file=relative, status="already loaded", sha256=digest)
            else:
                file_report, records, letters = decode_file(data, digest, relative, registry, options.device_pattern, now_ms)
                error_file = errors_dir / f"{relative}.errors.jsonl"
                if letters:
                    error_file.parent.mkdir(parents=True, exist_ok=True)
                    error_file.write_bytes(b"".join(orjson.dumps(letter) + b"\n" for letter in letters))
                    file_report.error_file = str(error_file)
                if not records:
                    file_report.status = "nothing decoded"
                elif append_file_telemetry(catalog, digest, relative, records):
                    done[digest] = 0
                    for record in records:
                        for scope, key in (("device", record["device_id"]), ("product", record["product_id"])):
                            lo, hi = spans[scope].get(key, (record["device_ts"], record["device_ts"]))
                            spans[scope][key] = (min(lo, record["device_ts"]), max(hi, record["device_ts"]))
                else:
                    file_report.status = "already loaded"  # another run committed it meanwhile
        except (OSError, FileInputError) as exc:
            file_report = FileReport(file=relative, status="failed", error=str(exc))
        file_report.seconds = round(time.monotonic() - file_started, 3)
        report.files.append(file_report)
        progress(_file_line(file_report))
    if spans["device"]:
        report.windows_recomputed = recompute_aggregates(catalog, settings.postgres_url, spans)
    report.seconds = round(time.monotonic() - started, 3)
    stamp = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y%m%dT%H%M%S")
    (options.output_dir / f"batch-{stamp}.json").write_bytes(report.to_json())
    return report


def _file_line(report: FileReport) -> str:
    detail = report.error or f"{report.records} records, {report.rejected} rejected" + (
        f" -> {report.error_file}" if report.error_file else "")
    return f"  {report.status:<15} {report.file}  ({detail if report.status != 'already loaded' else 'skipped'})"


def next_run(schedule: str, after: datetime) -> datetime:
    """The next time a cron expression (5 fields, UTC) fires after ``after``.

    Raises:
        ValueError: for an invalid expression.
    """
    from croniter import croniter

    if not croniter.is_valid(schedule):
        raise ValueError(f"--schedule: {schedule!r} is not a valid cron expression (5 fields: minute hour day month weekday)")
    return croniter(schedule, after).get_next(datetime)
