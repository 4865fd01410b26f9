"""Iceberg (cold layer): catalog access, the platform's tables, and the exactly-once archive writer.

Tables (namespace ``iotlink``), created by ``iotlink iceberg init``:

- ``raw_payloads``: every record of ``iotlink.raw`` — the original payload bytes, the envelope
  fields, and where it was read (topic, partition, sequence); partitioned by day of receipt.
- ``telemetry``: every standard telemetry record; partitioned by day of device time and product.
- ``alarm_events`` and ``agg_1h``: alarm lifecycle events and hourly aggregates, for history.

Exactly-once. Python operators cannot act on Flink's checkpoint completion, so an append
cannot be tied to a checkpoint the way Iceberg's Java committer does. Instead every archived
item carries a deterministic position: the raw partition it was read from and its sequence
number among that partition's items (counted in checkpointed keyed state, over a stream that
arrives in offset order). Each commit stores, in the snapshot summary, the highest sequence
committed per partition (``iotlink.committed``). Before every append the writer reloads the
table, reads the markers, and drops the items at or below them: after a restore, the items the
crashed run already committed are replayed with the same numbers and skipped. A conflicting
concurrent commit is retried from the reload.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from dataclasses import dataclass

import orjson

NAMESPACE = "iotlink"
MARKER_PROPERTY = "iotlink.committed"
ARCHIVE_TABLES = ("raw_payloads", "telemetry")
# The kind letter that starts each archived item's text.
KIND_RAW, KIND_RAW_BINARY, KIND_TELEMETRY = "r", "b", "t"

log = logging.getLogger(__name__)


def open_catalog(catalog_uri: str, warehouse: str | None = None, name: str = "iotlink", **properties: str):
    """Opens an Iceberg catalog.

    Args:
        catalog_uri: ``sqlite:///path``/``postgresql+psycopg://…`` (SQL catalog) or an http(s)
            REST catalog URL.
        warehouse: Warehouse location (``file:///…`` or ``s3://…``).
        name: Catalog name.
        **properties: Extra catalog properties (e.g. ``s3.endpoint``).

    Returns:
        A pyiceberg Catalog.
    """
    props = dict(properties)
    if warehouse:
        props["warehouse"] = warehouse
    if catalog_uri.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(name, uri=catalog_uri, **props)
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(name, uri=catalog_uri, **props)


def table_definitions() -> dict[str, tuple]:
    """``{table: (schema, partition spec)}`` of every platform table."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform, IdentityTransform
    from pyiceberg.types import (
        BinaryType,
        DoubleType,
        IntegerType,
        LongType,
        MapType,
        NestedField,
        StringType,
        TimestamptzType,
    )

    def fields(*specs):
        return [NestedField(i, name, kind, required=required) for i, (name, kind, required) in enumerate(specs, start=1)]

    raw = Schema(*fields(
        ("received_at", TimestamptzType(), True),
        ("source", StringType(), False),
        ("device_id", StringType(), False),
        ("product_id", StringType(), False),
        ("hub_id", StringType(), False),
        ("format", StringType(), False),
        ("mqtt_topic", StringType(), False),
        ("payload", BinaryType(), True),
        ("envelope", StringType(), False),
        ("envelope_error", StringType(), False),
        ("source_topic", StringType(), True),
        ("source_partition", IntegerType(), True),
        ("source_seq", LongType(), True),
    ))
    metrics_map = MapType(100, StringType(), 101, DoubleType(), value_required=False)
    telemetry = Schema(*fields(
        ("device_id", StringType(), True),
        ("product_id", StringType(), False),
        ("tenant", StringType(), False),
        ("hub_id", StringType(), False),
        ("device_ts", TimestamptzType(), True),
        ("ingest_ts", TimestamptzType(), True),
        ("metrics", metrics_map, False),
        ("metrics_json", StringType(), True),
        ("quality_json", StringType(), False),
        ("spec_id", StringType(), False),
        ("spec_version", StringType(), False),
        ("source_topic", StringType(), True),
        ("source_partition", IntegerType(), True),
        ("source_seq", LongType(), True),
    ))
    alarms = Schema(*fields(
        ("alarm_id", StringType(), True),
        ("event", StringType(), True),
        ("device_id", StringType(), True),
        ("product_id", StringType(), False),
        ("rule_id", StringType(), True),
        ("rule_version", StringType(), False),
        ("severity", StringType(), False),
        ("device_ts", TimestamptzType(), True),
        ("values_json", StringType(), False),
    ))
    agg = Schema(*fields(
        ("scope", StringType(), True),
        ("key", StringType(), True),
        ("metric", StringType(), True),
        ("window_start", TimestamptzType(), True),
        ("product_id", StringType(), False),
        ("count", LongType(), True),
        ("min", DoubleType(), False),
        ("max", DoubleType(), False),
        ("sum", DoubleType(), False),
        ("avg", DoubleType(), False),
        ("stddev", DoubleType(), False),
        ("first", DoubleType(), False),
        ("last", DoubleType(), False),
        ("emitted_at", TimestamptzType(), True),
    ))

    def day(schema, column, *identity):
        source = schema.find_field(column).field_id
        parts = [PartitionField(source_id=source, field_id=1000, transform=DayTransform(), name=f"{column}_day")]
        for offset, name in enumerate(identity, start=1):
            parts.append(PartitionField(schema.find_field(name).field_id, 1000 + offset, IdentityTransform(), name))
        return PartitionSpec(*parts)

    return {
        "raw_payloads": (raw, day(raw, "received_at")),
        "telemetry": (telemetry, day(telemetry, "device_ts", "product_id")),
        "alarm_events": (alarms, day(alarms, "device_ts")),
        "agg_1h": (agg, day(agg, "window_start")),
    }


def init_tables(catalog, namespace: str = NAMESPACE) -> dict[str, str]:
    """Creates the namespace and every platform table that does not exist yet (idempotent).

    Returns:
        ``{table: "created" | "exists"}``.
    """
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError

    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    outcome = {}
    for name, (schema, spec) in table_definitions().items():
        identifier = f"{namespace}.{name}"
        if catalog.table_exists(identifier):
            outcome[name] = "exists"
            continue
        try:
            catalog.create_table(identifier, schema=schema, partition_spec=spec)
            outcome[name] = "created"
        except TableAlreadyExistsError:  # created concurrently
            outcome[name] = "exists"
    return outcome


def committed_markers(table) -> dict[str, int]:
    """The newest commit markers of a table: ``{"topic/partition": highest committed sequence}``.

    Walks back from the current snapshot to the newest one that carries markers, so appends
    by other writers (without markers) in between do not hide them.
    """
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary
        text = summary.get(MARKER_PROPERTY) if summary is not None else None
        if text:
            return {key: int(value) for key, value in orjson.loads(text).items()}
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id is not None else None
    return {}


def marker_key(topic: str, partition: int) -> str:
    """The marker key of one raw partition."""
    return f"{topic}/{partition}"


def archive_item(partition: int, seq: int, text: str) -> str:
    """One numbered item as buffered by the Flink operator: ``partition|seq|<kind><text>``."""
    return f"{partition}|{seq}|{text}"


def raw_item_text(raw_value: bytes) -> str:
    """The archive text of one raw record: the envelope text, or base64 when it is not UTF-8."""
    try:
        return KIND_RAW + raw_value.decode("utf-8")
    except UnicodeDecodeError:
        return KIND_RAW_BINARY + base64.b64encode(raw_value).decode("ascii")


def parse_item(item: str) -> tuple[int, int, str, str]:
    """``partition|seq|<kind><text>`` -> (partition, seq, kind, text)."""
    partition, seq, rest = item.split("|", 2)
    return int(partition), int(seq), rest[:1], rest[1:]


def raw_payload_row(kind: str, text: str, topic: str, partition: int, seq: int) -> dict:
    """A ``raw_payloads`` row from one archived raw record (a valid envelope or not)."""
    from operators.envelope import EnvelopeError, parse_envelope

    raw = text.encode("utf-8") if kind == KIND_RAW else base64.b64decode(text)
    row = {"source_topic": topic, "source_partition": partition, "source_seq": seq}
    try:
        envelope = parse_envelope(raw)
    except EnvelopeError as exc:
        # Not an envelope: the record itself is the payload; received_at is unknown.
        return {**row, "received_at": 0, "payload": raw, "envelope_error": exc.reason}
    doc = orjson.loads(raw)
    doc.pop("payload", None)
    return {
        **row,
        "received_at": envelope.received_at,
        "source": envelope.source,
        "device_id": envelope.device_id,
        "product_id": envelope.product_id,
        "hub_id": envelope.hub_id,
        "format": envelope.format,
        "mqtt_topic": envelope.mqtt_topic,
        "payload": envelope.payload,
        "envelope": orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode(),
    }


def telemetry_row(text: str, topic: str, partition: int, seq: int) -> dict:
    """A ``telemetry`` row from one standard record's JSON."""
    record = orjson.loads(text)
    metrics = record.get("metrics") or {}
    numeric = [
        (name, float(value)) for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    quality = record.get("quality")
    return {
        "device_id": record["device_id"],
        "product_id": record.get("product_id"),
        "tenant": record.get("tenant"),
        "hub_id": record.get("hub_id"),
        "device_ts": record["device_ts"],
        "ingest_ts": record["ingest_ts"],
        "metrics": numeric,
        "metrics_json": orjson.dumps(metrics).decode(),
        "quality_json": orjson.dumps(quality).decode() if quality else None,
        "spec_id": record.get("spec_id"),
        "spec_version": None if record.get("spec_version") is None else str(record["spec_version"]),
        "source_topic": topic,
        "source_partition": partition,
        "source_seq": seq,
    }


_TIMESTAMP_COLUMNS = {"raw_payloads": ("received_at",), "telemetry": ("device_ts", "ingest_ts")}


def rows_to_arrow(schema, rows: list[dict], timestamp_columns=()):
    """Rows (timestamps in epoch ms) -> a pyarrow table with exactly the Iceberg schema's types."""
    import pyarrow as pa
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    arrow_schema = schema_to_pyarrow(schema, include_field_ids=False)
    columns = []
    for field in arrow_schema:
        values = [row.get(field.name) for row in rows]
        if field.name in timestamp_columns:
            values = [None if v is None else v * 1000 for v in values]  # ms -> µs
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=arrow_schema)


@dataclass
class ArchiveStats:
    """What the archive writer did: rows appended, rows skipped as already committed, commits, retries."""

    written: int = 0
    skipped: int = 0
    commits: int = 0
    retries: int = 0


class _TableAppender:
    """What both Iceberg writers share: the catalog, the schemas of their tables, the counters,
    checked appends (:func:`append_checked`) and the rest of the sink contract."""

    def __init__(self, catalog_uri: str, warehouse: str | None, tables, namespace: str, max_attempts: int):
        self._catalog = open_catalog(catalog_uri, warehouse)
        self._namespace = namespace
        self._max_attempts = max_attempts
        self._schemas = {name: table_definitions()[name][0] for name in tables}
        self.stats = ArchiveStats()

    def _append(self, name: str, prepare) -> None:
        append_checked(self._catalog, f"{self._namespace}.{name}", prepare, self.stats, self._max_attempts)

    def flush(self) -> None:
        """Every batch is committed in ``write_batch``: nothing is pending."""

    def close(self) -> None:
        """Nothing to release (the catalog holds no open connection between calls)."""


class IcebergArchiveWriter(_TableAppender):
    """The exactly-once appender of ``raw_payloads`` and ``telemetry`` (sink contract:
    ``write_batch`` / ``flush`` / ``close``); see the module docstring for the markers.

    Args:
        catalog_uri: Catalog URI (see :func:`open_catalog`).
        warehouse: Warehouse location.
        topic: The raw topic the items were read from (part of each marker key).
        namespace: Iceberg namespace of the tables.
        max_attempts: Commit attempts per table and batch (conflicts, catalog outages).
    """

    def __init__(self, catalog_uri: str, warehouse: str | None, topic: str, namespace: str = NAMESPACE, max_attempts: int = 20):
        super().__init__(catalog_uri, warehouse, ARCHIVE_TABLES, namespace, max_attempts)
        self._topic = topic

    def write_batch(self, items: list[str]) -> None:
        """Appends a batch of numbered items (:func:`archive_item`), each table in one commit."""
        per_table: dict[str, list[tuple[int, int, str, str]]] = {name: [] for name in ARCHIVE_TABLES}
        for item in items:
            partition, seq, kind, text = parse_item(item)
            per_table["telemetry" if kind == KIND_TELEMETRY else "raw_payloads"].append((partition, seq, kind, text))
        for name, entries in per_table.items():
            if entries:
                self._commit(name, entries)

    def _commit(self, name: str, entries: list[tuple[int, int, str, str]]) -> None:
        def prepare(table):
            markers = committed_markers(table)
            fresh = [e for e in entries if e[1] > markers.get(marker_key(self._topic, e[0]), 0)]
            if not fresh:
                return None, {}, 0, len(entries)
            updated = dict(markers)
            for partition, seq, _, _ in fresh:
                key = marker_key(self._topic, partition)
                updated[key] = max(updated.get(key, 0), seq)
            if name == "telemetry":
                rows = [telemetry_row(text, self._topic, p, seq) for p, seq, _, text in fresh]
            else:
                rows = [raw_payload_row(kind, text, self._topic, p, seq) for p, seq, kind, text in fresh]
            properties = {MARKER_PROPERTY: orjson.dumps(updated, option=orjson.OPT_SORT_KEYS).decode()}
            return rows_to_arrow(self._schemas[name], rows, _TIMESTAMP_COLUMNS[name]), properties, len(fresh), len(entries) - len(fresh)

        self._append(name, prepare)


def append_checked(catalog, identifier: str, prepare, stats: ArchiveStats, max_attempts: int) -> None:
    """Appends what ``prepare(table)`` decides on a freshly loaded table; on a commit conflict
    (another writer committed first) reloads and asks again, with doubling back-off.

    Args:
        catalog: The Iceberg catalog.
        identifier: ``namespace.table``.
        prepare: ``table -> (arrow data or None, snapshot properties, rows written, rows skipped)``.
        stats: Counters to update.
        max_attempts: Attempts before giving up (raises RuntimeError).
    """
    from pyiceberg.exceptions import CommitFailedException

    delay = 0.05
    for attempt in range(1, max_attempts + 1):
        table = catalog.load_table(identifier)
        data, properties, written, skipped = prepare(table)
        if data is None:
            stats.skipped += skipped
            return
        try:
            table.append(data, snapshot_properties=properties)
        except CommitFailedException as exc:
            stats.retries += 1
            log.info("iceberg %s: commit conflict (attempt %d): %s", identifier, attempt, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        stats.written += written
        stats.skipped += skipped
        stats.commits += 1
        return
    raise RuntimeError(f"iceberg {identifier}: no commit after {max_attempts} attempts")


def source_partition_of(topic: str, subtask: int, parallelism: int) -> int:
    """The raw partition a source subtask reads when there is one subtask per partition.

    Flink's KafkaSource assigns partition ``p`` to reader
    ``(((topic.hashCode() * 31) & 0x7FFFFFFF) % n + p) % n``; with ``n`` = partition count that
    is a bijection, inverted here.
    """
    start = ((java_string_hash(topic) * 31) & 0x7FFFFFFF) % parallelism
    return (subtask - start) % parallelism


def java_string_hash(text: str) -> int:
    """``java.lang.String.hashCode`` (over UTF-16 code units), as an unsigned 32-bit value."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h


def query_tables(catalog, sql: str, namespace: str = NAMESPACE) -> tuple[list[str], list[tuple]]:
    """Runs one DuckDB query over the platform's Iceberg tables.

    Each platform table the query mentions is scanned (pyiceberg) and registered in DuckDB
    under its own name, so ``SELECT … FROM telemetry`` reads ``iotlink.telemetry``.

    Returns:
        (column names, rows).
    """
    import re

    import duckdb

    con = duckdb.connect()
    for name in table_definitions():
        if re.search(rf"\b{name}\b", sql) and catalog.table_exists(f"{namespace}.{name}"):
            con.register(name, catalog.load_table(f"{namespace}.{name}").scan().to_arrow())
    result = con.execute(sql)
    columns = [d[0] for d in result.description]
    return columns, result.fetchall()


HISTORY_TABLES = ("alarm_events", "agg_1h")
_HISTORY_TIMESTAMPS = {"alarm_events": ("device_ts",), "agg_1h": ("window_start", "emitted_at")}


def alarm_event_row(event: dict) -> dict:
    """An ``alarm_events`` row from one alarm-event JSON document."""
    return {
        "alarm_id": event["alarm_id"], "event": event["event"], "device_id": event["device_id"],
        "product_id": event.get("product_id"), "rule_id": event["rule_id"],
        "rule_version": None if event.get("rule_version") is None else str(event["rule_version"]),
        "severity": event.get("severity"), "device_ts": event["device_ts"],
        "values_json": orjson.dumps(event.get("values"), option=orjson.OPT_SORT_KEYS).decode(),
    }


def agg_1h_rows(window: dict, emitted_at: int) -> list[dict]:
    """``agg_1h`` rows (one per metric) from one fired hourly window row: the PostgreSQL
    aggregate rows (:func:`connectors.aggregate_store.aggregate_rows`) with the version time."""
    from connectors.aggregate_store import AGGREGATE_COLUMNS, aggregate_rows

    return [{**dict(zip(AGGREGATE_COLUMNS, values, strict=True)), "emitted_at": emitted_at} for values in aggregate_rows(window)]


def history_identity(table: str, row: dict) -> tuple:
    """What makes a history row the same row again: an alarm event's (id, event, device time);
    an hourly aggregate's key and values (a correction is a new version, a replay is not)."""
    if table == "alarm_events":
        return row["alarm_id"], row["event"], row["device_ts"]
    return row["scope"], row["key"], row["metric"], row["window_start"], row["count"], row["sum"], row["min"], row["max"]


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _epoch_ms(value) -> int:
    from datetime import UTC, datetime, timedelta

    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class IcebergHistoryWriter(_TableAppender):
    """Appends alarm events and hourly aggregates to ``alarm_events`` / ``agg_1h`` (sink
    contract ``write_batch`` / ``flush`` / ``close``).

    These rows have natural identities (:func:`history_identity`), so instead of sequence
    markers the writer reloads the table and skips the rows already there (scanning only the
    days the batch touches) before each append; a commit conflict retries from the reload. A
    corrected hourly window is a new version of its key: readers take the newest
    ``emitted_at`` per (scope, key, metric, window_start).
    """

    def __init__(self, catalog_uri: str, warehouse: str | None, namespace: str = NAMESPACE, max_attempts: int = 20):
        super().__init__(catalog_uri, warehouse, HISTORY_TABLES, namespace, max_attempts)

    def write_batch(self, values: list[str]) -> None:
        """Appends a batch of alarm-event and window-row JSON strings (others are ignored)."""
        emitted_at = int(time.time() * 1000)
        rows: dict[str, dict[tuple, dict]] = {name: {} for name in HISTORY_TABLES}
        hourly: dict[tuple, dict] = {}
        for value in values:
            doc = orjson.loads(value)
            if "alarm_id" in doc and "event" in doc:
                row = alarm_event_row(doc)
                rows["alarm_events"][history_identity("alarm_events", row)] = row
            elif doc.get("size") == "1h" and doc.get("kind") is None and "partial" in doc:
                for row in agg_1h_rows(doc, emitted_at):
                    # Versions of one window in one batch share emitted_at: only the newest is kept.
                    hourly[(row["scope"], row["key"], row["metric"], row["window_start"])] = row
        for row in hourly.values():
            rows["agg_1h"][history_identity("agg_1h", row)] = row
        for name, batch in rows.items():
            if batch:
                self._commit(name, batch)

    def _existing(self, table, name: str, batch: dict[tuple, dict]) -> set[tuple]:
        from pyiceberg.expressions import In

        column = "device_ts" if name == "alarm_events" else "window_start"
        key_column = "alarm_id" if name == "alarm_events" else "key"
        # Timestamp literals as ISO text (pyiceberg converts no integer into a timestamptz).
        times = {_iso(row[column]) for row in batch.values()}
        keys = {row[key_column] for row in batch.values()}
        if table.current_snapshot() is None:
            return set()
        found = table.scan(row_filter=In(column, times)).to_arrow()
        if found.num_rows == 0:
            return set()
        rows = found.to_pylist()
        out = set()
        newest: dict[tuple, dict] = {}
        for row in rows:
            if row[key_column] not in keys:
                continue
            row = dict(row)
            for ts_column in _HISTORY_TIMESTAMPS[name]:
                row[ts_column] = _epoch_ms(row[ts_column])
            if name == "alarm_events":
                out.add(history_identity(name, row))
                continue
            window = (row["scope"], row["key"], row["metric"], row["window_start"])
            if window not in newest or row["emitted_at"] >= newest[window]["emitted_at"]:
                newest[window] = row
        # An hourly version is skipped only when it is the window's newest already: after a
        # restore the window may pass through an older state again and must end on its final one.
        out.update(history_identity(name, row) for row in newest.values())
        return out

    def _commit(self, name: str, batch: dict[tuple, dict]) -> None:
        def prepare(table):
            existing = self._existing(table, name, batch)
            fresh = [row for key, row in batch.items() if key not in existing]
            if not fresh:
                return None, {}, 0, len(batch)
            return rows_to_arrow(self._schemas[name], fresh, _HISTORY_TIMESTAMPS[name]), {}, len(fresh), len(batch) - len(fresh)

        self._append(name, prepare)


FILE_PROPERTY = "iotlink.file-sha256"  # on the snapshot that appended one input file's records


def loaded_files(table) -> dict[str, int]:
    """Input files already appended to a table: ``{sha256: snapshot id}``, from every snapshot's
    summary (the file batch job's idempotency check; expiring snapshots forgets them)."""
    out = {}
    for snapshot in table.snapshots():
        summary = snapshot.summary
        digest = summary.get(FILE_PROPERTY) if summary is not None else None
        if digest:
            out[digest] = snapshot.snapshot_id
    return out


def append_file_telemetry(catalog, digest: str, name: str, records: list[dict], namespace: str = NAMESPACE) -> bool:
    """Appends one input file's standard records to ``telemetry`` in one commit marked with the
    file's digest; does nothing when a snapshot already carries that digest.

    Args:
        catalog: The Iceberg catalog.
        digest: The file's SHA-256 (:func:`operators.file_input.file_digest`).
        name: The file's path relative to the input (``source_topic`` is ``file:<name>``).
        records: The decoded records (at least one), in file order (``source_seq`` numbers them from 1).

    Returns:
        True when appended now, False when the file had been loaded before.
    """
    if not records:
        raise ValueError("append_file_telemetry needs at least one record")
    identifier = f"{namespace}.telemetry"
    stats = ArchiveStats()

    def prepare(table):
        if digest in loaded_files(table):
            return None, {}, 0, len(records)
        rows = [telemetry_row(orjson.dumps(r).decode(), f"file:{name}", 0, seq) for seq, r in enumerate(records, 1)]
        properties = {FILE_PROPERTY: digest, "iotlink.file-name": name}
        return rows_to_arrow(table.schema(), rows, _TIMESTAMP_COLUMNS["telemetry"]), properties, len(rows), 0

    append_checked(catalog, identifier, prepare, stats, max_attempts=20)
    return stats.written > 0


def telemetry_between(catalog, column: str, keys: set[str], since_ms: int, until_ms: int, namespace: str = NAMESPACE) -> list[dict]:
    """``telemetry`` rows whose ``column`` (device_id or product_id) is one of ``keys`` and whose
    device time is in [since, until): device_id, product_id, device_ts (ms), metrics_json."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThan

    table = catalog.load_table(f"{namespace}.telemetry")
    if table.current_snapshot() is None or not keys:
        return []
    data = table.scan(
        row_filter=And(In(column, sorted(keys)), GreaterThanOrEqual("device_ts", _iso(since_ms)), LessThan("device_ts", _iso(until_ms))),
        selected_fields=("device_id", "product_id", "device_ts", "metrics_json"),
    ).to_arrow()
    return [
        {"device_id": d, "product_id": p, "device_ts": ts // 1000, "metrics_json": m}
        for d, p, ts, m in zip(data["device_id"].to_pylist(), data["product_id"].to_pylist(),
                               data["device_ts"].cast("int64").to_pylist(), data["metrics_json"].to_pylist(), strict=True)
    ]
