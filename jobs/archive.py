"""The telemetry job's Iceberg cold layer: rows made in Java, written by Iceberg's own Flink sink.

    raw records (Kafka bytes) --[RawPayloadRows (Java)]--> view raw_archive ------+
    telemetry JSON -----------[TelemetryRows (Java)]---> view telemetry_archive --+
    alarm events (JSON) ------------------------------> view alarm_event_json ----+
    fired hourly aggregates (sql/jobs/aggregates.sql) -> view agg_1h_fired -------+
        --> sql/jobs/archive.sql: INSERT INTO the Iceberg tables (catalog `iotlink`)

Iceberg's committer commits each checkpoint's data files once the checkpoint completes, so the
tables hold every row exactly once without any bookkeeping of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connectors.flink_sql import option_lines, render, split_statements, without_comments
from connectors.iceberg import flink_catalog_options

ARCHIVE_SQL = Path(__file__).resolve().parent.parent / "sql" / "jobs" / "archive.sql"
# Each INSERT of archive.sql and the view it reads.
SOURCE_VIEWS = {
    "iotlink.iotlink.raw_payloads": "raw_archive",
    "iotlink.iotlink.telemetry": "telemetry_archive",
    "iotlink.iotlink.alarm_events": "alarm_event_json",
    "iotlink.iotlink.agg_1h": "agg_1h_fired",
}


@dataclass(frozen=True)
class ArchiveOutputs:
    """Where the Iceberg tables are.

    Attributes:
        catalog_uri: The Iceberg catalog (``sqlite:///…``, ``postgresql://…`` or a REST URL).
        warehouse: The warehouse location (``file:///…`` or ``s3://…``).
        raw_topic: The raw topic's name (``source_topic`` of the archived rows).
    """

    catalog_uri: str
    warehouse: str | None
    raw_topic: str


def archive_statements(outputs: ArchiveOutputs, views: set[str]) -> tuple[list[str], list[str]]:
    """The catalog DDL and the INSERT statements of ``sql/jobs/archive.sql`` whose views exist.

    Args:
        outputs: The catalog.
        views: Names of the views the job made (an INSERT reading another view is left out).

    Returns:
        (statements to execute first, INSERT statements for the job's statement set).
    """
    values = {"iceberg_options": option_lines(flink_catalog_options(outputs.catalog_uri, outputs.warehouse))}
    ddl, inserts = [], []
    for statement in split_statements(render(ARCHIVE_SQL.read_text(), values, str(ARCHIVE_SQL))):
        code = without_comments(statement).split(None, 3)
        if [word.upper() for word in code[:2]] == ["INSERT", "INTO"]:
            if SOURCE_VIEWS[code[2]] in views:
                inserts.append(statement)
        else:
            ddl.append(statement)
    return ddl, inserts


RAW_ROW_COLUMNS = (
    ("received_at", "LONG"), ("source", "STRING"), ("device_id", "STRING"), ("product_id", "STRING"), ("hub_id", "STRING"),
    ("format", "STRING"), ("mqtt_topic", "STRING"), ("payload", "BYTES"), ("envelope", "STRING"), ("envelope_error", "STRING"),
    ("source_topic", "STRING"), ("source_partition", "INT"), ("source_seq", "LONG"),
)
TELEMETRY_ROW_COLUMNS = (
    ("device_id", "STRING"), ("product_id", "STRING"), ("tenant", "STRING"), ("hub_id", "STRING"), ("device_ts", "LONG"),
    ("ingest_ts", "LONG"), ("metrics", "METRICS"), ("metrics_json", "STRING"), ("quality_json", "STRING"), ("spec_id", "STRING"),
    ("spec_version", "STRING"), ("source_topic", "STRING"), ("source_partition", "INT"), ("source_seq", "LONG"),
)


def _row_type(columns):
    from pyflink.common import Types

    kinds = {
        "LONG": Types.LONG(), "STRING": Types.STRING(), "INT": Types.INT(), "BYTES": Types.PRIMITIVE_ARRAY(Types.BYTE()),
        "METRICS": Types.MAP(Types.STRING(), Types.DOUBLE()),
    }
    return Types.ROW_NAMED([name for name, _ in columns], [kinds[kind] for _, kind in columns])


def java_rows(stream, function, columns, uid: str, name: str):
    """``stream`` through one of the Java archive row functions, at the stream's parallelism (chained).

    Args:
        stream: Raw record bytes or telemetry JSON strings.
        function: ``io.iotlink.flink.RawPayloadRows`` or ``TelemetryRows`` (a Java object).
        columns: The rows' columns (:data:`RAW_ROW_COLUMNS`, :data:`TELEMETRY_ROW_COLUMNS`).
        uid: The operator's uid.
        name: The operator's name in the web UI.

    Returns:
        The rows, as a DataStream the table environment takes.
    """
    from pyflink.datastream import DataStream

    j_stream = stream._j_data_stream
    rows = j_stream.process(function, _row_type(columns).get_java_type_info())
    rows.setParallelism(j_stream.getParallelism())
    rows.uid(uid).name(name)
    return DataStream(rows)


def add_archive(t_env, statements, outputs: ArchiveOutputs, raw=None, telemetry=None, alarm_events=None) -> None:
    """Wires the Iceberg tables onto the job's table environment.

    Args:
        t_env: The job's StreamTableEnvironment (the one that holds ``agg_1h_fired``, if any).
        statements: The job's StatementSet; the INSERTs are added to it.
        outputs: The catalog and the raw topic.
        raw: Raw record bytes (Kafka values), one source subtask per raw partition.
        telemetry: Telemetry JSON strings at the source's parallelism (forward from the source).
        alarm_events: Alarm-event JSON strings.
    """
    from pyflink.java_gateway import get_gateway

    functions = get_gateway().jvm.io.iotlink.flink
    # Iceberg's Sink V2 (committables committed by Flink's own sink committer). The older
    # FlinkSink loses data on a bounded run: the files a writer flushes at the end of its input
    # wait in the committer under one key, and a writer finishing later overwrites them there
    # (partitions that ended first lost what followed their last checkpoint).
    t_env.get_config().set("table.exec.iceberg.use-v2-sink", "true")
    views = set()
    if raw is not None:
        rows = java_rows(raw, functions.RawPayloadRows(outputs.raw_topic), RAW_ROW_COLUMNS, "raw-archive-rows", "Raw payload rows")
        t_env.create_temporary_view("raw_archive", t_env.from_data_stream(rows))
        views.add("raw_archive")
    if telemetry is not None:
        rows = java_rows(telemetry, functions.TelemetryRows(outputs.raw_topic), TELEMETRY_ROW_COLUMNS, "telemetry-archive-rows",
                             "Telemetry rows")
        t_env.create_temporary_view("telemetry_archive", t_env.from_data_stream(rows))
        views.add("telemetry_archive")
    if alarm_events is not None:
        t_env.create_temporary_view("alarm_event_json", t_env.from_data_stream(alarm_events).alias("event"))
        views.add("alarm_event_json")
    if "agg_1h_fired" in t_env.list_temporary_views():
        views.add("agg_1h_fired")
    ddl, inserts = archive_statements(outputs, views)
    for statement in ddl:
        t_env.execute_sql(statement)
    for insert in inserts:
        statements.add_insert_sql(insert)
