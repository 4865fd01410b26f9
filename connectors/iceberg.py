"""Iceberg (cold layer): catalog access, the platform's tables, queries, and the file batch's appends.

Tables (namespace ``iotlink``), created by ``iotlink iceberg init`` or at the job's start:

- ``raw_payloads``: every record of ``iotlink.raw`` — the original payload bytes, the envelope
  fields, and where it was read (topic, partition, sequence); partitioned by day of receipt.
- ``telemetry``: every standard telemetry record; partitioned by day of device time and product.
- ``alarm_events`` and ``agg_1h``: alarm lifecycle events and hourly aggregates, for history.

The streaming job writes them with Iceberg's own Flink sink (``sql/jobs/archive.sql``), whose
committer commits each checkpoint's files exactly once; :func:`flink_catalog_options` opens the
same catalog there. Python reads them (pyiceberg: ``iotlink iceberg query``, the file batch) and
appends whole input files (:func:`append_file_telemetry`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import orjson

from operators.value_repr import masked_url

NAMESPACE = "iotlink"

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


FLINK_CATALOG_NAME = "iotlink"  # a JDBC catalog's rows carry its name: the same as pyiceberg's
# SQLSTATEs of a connection the PostgreSQL server closed, besides the connection-failure states
# Iceberg's JDBC catalog retries anyway: 57P01 terminated by an administrator or a shutdown, 57P05
# closed after ``idle_session_timeout``.
POSTGRES_RECONNECT_STATES = "57P01,57P05"
CATALOG_IDLE_SESSION_TIMEOUT_MS = 60_000


def flink_catalog_options(catalog_uri: str, warehouse: str | None = None) -> dict[str, str]:
    """The options of a Flink ``CREATE CATALOG`` for Iceberg's Flink connector that opens the
    catalog :func:`open_catalog` opens (the tables are the same, whichever side writes).

    Args:
        catalog_uri: ``sqlite:///path`` or ``postgresql[+driver]://user:password@host[:port]/db``
            (a JDBC catalog, the tables pyiceberg's SQL catalog keeps) or an http(s) REST URL.
        warehouse: Warehouse location (``file:///…`` or ``s3://…``).

    Returns:
        Catalog options (``type``, ``catalog-impl`` or ``catalog-type``, ``uri``, …).

    Raises:
        ValueError: a catalog URI of another kind.
    """
    options = {"type": "iceberg"}
    if catalog_uri.startswith(("http://", "https://")):
        options.update({"catalog-type": "rest", "uri": catalog_uri})
    elif catalog_uri.startswith("sqlite:///"):
        path = catalog_uri[len("sqlite:///"):]  # as SQLAlchemy reads it: sqlite:////abs, sqlite:///relative
        options.update({
            "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog", "uri": "jdbc:sqlite:" + path,
            # One committer per table commits at each checkpoint, and pyiceberg reads meanwhile:
            # with a write-ahead log readers do not block the writer; a transaction takes the write
            # lock when it begins (a read turned write fails at once when another wrote meanwhile)
            # and waits its turn for it.
            "jdbc.journal_mode": "WAL", "jdbc.transaction_mode": "IMMEDIATE", "jdbc.busy_timeout": "60000",
        })
    elif catalog_uri.startswith(("postgresql://", "postgresql+")):
        parts = urlsplit(catalog_uri)
        netloc = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        options.update({
            "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog", "uri": f"jdbc:postgresql://{netloc}{parts.path}",
            # Iceberg 1.10's Flink sink opens a catalog per table at each job start and restart
            # (IcebergWriteAggregator) and never closes it: the server closes those connections
            # once idle, so that neither restarts nor many jobs of one JVM exhaust PostgreSQL's
            # max_connections; a connection the server closed (that timeout, an administrator's
            # terminate, a restart) is opened anew and the call retried, not failed.
            "jdbc.options": f"-c idle_session_timeout={CATALOG_IDLE_SESSION_TIMEOUT_MS}",
            "retryable_status_codes": POSTGRES_RECONNECT_STATES,
        })
        if parts.username:
            options["jdbc.user"] = unquote(parts.username)
        if parts.password is not None:
            options["jdbc.password"] = unquote(parts.password)
    else:
        raise ValueError(f"Iceberg catalog {masked_url(catalog_uri)!r}: expected sqlite:///…, postgresql://… or http(s)://…")
    if warehouse:
        options["warehouse"] = warehouse
        if warehouse.startswith("s3://"):
            # What pyarrow reads from AWS_ENDPOINT_URL_S3 (the docker stack's MinIO), Iceberg's S3FileIO takes as options.
            options["io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options["s3.endpoint"] = endpoint
                options["s3.path-style-access"] = "true"
    return options


def table_definitions() -> dict[str, tuple]:
    """``{table: (schema, partition spec)}`` of every platform table."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform, IdentityTransform
    from pyiceberg.types import (
        BinaryType,
        DateType,
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

    # Customer analytics (docs/analytics.md): one row per customer, product, UTC day and metric,
    # upserted on that key by the streaming customer daily job, days overwritten by a recomputation.
    daily_fields = fields(
        ("customer_id", StringType(), True),
        ("product_id", StringType(), True),
        ("day", DateType(), True),
        ("metric", StringType(), True),
        ("count", LongType(), True),
        ("sum", DoubleType(), False),
        ("min", DoubleType(), False),
        ("max", DoubleType(), False),
        ("avg", DoubleType(), False),
        ("devices", IntegerType(), True),
        ("sites", IntegerType(), True),
    )
    customer_daily = Schema(*daily_fields, identifier_field_ids=[1, 2, 3, 4])

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
        "customer_product_daily": (customer_daily, PartitionSpec(
            PartitionField(source_id=3, field_id=1000, transform=IdentityTransform(), name="day"))),
    }


# Iceberg's Java writers (the job's Flink sink) take gzip for Parquet when a table does not name
# a codec; Java catalogs set zstd on new tables since Iceberg 1.4, pyiceberg's create does not.
TABLE_PROPERTIES = {"write.parquet.compression-codec": "zstd"}


def init_tables(catalog, namespace: str = NAMESPACE) -> dict[str, str]:
    """Creates the namespace and every platform table that does not exist yet (idempotent);
    an existing table gets :data:`TABLE_PROPERTIES` it does not set yet.

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
            table = catalog.load_table(identifier)
            missing = {key: value for key, value in TABLE_PROPERTIES.items() if key not in table.properties}
            if missing:
                with table.transaction() as transaction:
                    transaction.set_properties(missing)
            outcome[name] = "exists"
            continue
        try:
            catalog.create_table(identifier, schema=schema, partition_spec=spec, properties=TABLE_PROPERTIES)
            outcome[name] = "created"
        except TableAlreadyExistsError:  # created concurrently
            outcome[name] = "exists"
    return outcome


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


_TIMESTAMP_COLUMNS = {"telemetry": ("device_ts", "ingest_ts")}


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


@dataclass
class AppendStats:
    """What a checked append did: rows appended, rows skipped as loaded before, commits, retries."""

    written: int = 0
    skipped: int = 0
    commits: int = 0
    retries: int = 0


def append_checked(catalog, identifier: str, prepare, stats: AppendStats, max_attempts: int) -> None:
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
    stats = AppendStats()

    def prepare(table):
        if digest in loaded_files(table):
            return None, {}, 0, len(records)
        rows = [telemetry_row(orjson.dumps(r).decode(), f"file:{name}", 0, seq) for seq, r in enumerate(records, 1)]
        properties = {FILE_PROPERTY: digest, "iotlink.file-name": name}
        return rows_to_arrow(table.schema(), rows, _TIMESTAMP_COLUMNS["telemetry"]), properties, len(rows), 0

    append_checked(catalog, identifier, prepare, stats, max_attempts=20)
    return stats.written > 0


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


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
