"""The telemetry job's aggregates: one typed row per reading, made in Java, and Flink SQL for the rest.

    readings (decoded, de-duplicated) --[ReadingRows (Java): lateness check, typed row]--+
    dead letters of known devices ------[RejectionRows (Java)]---------------------------+
        --> view `readings` --> sql/jobs/aggregates.sql (GROUP BY time buckets, Java)
        --> the views' changelog fired per window on device time (WindowFirings, Java)
        --> JDBC upserts: agg_1m / agg_5m / agg_1h (device, product; a row per metric), and
            comm_quality_5m / _1h (from the same device windows)
    too-late readings --> iotlink.late

The SQL runs in the same Flink job (one ``StatementSet.attach_as_datastream`` with the Iceberg
archive's INSERTs, jobs/archive.py), so one checkpoint covers the decoder, the aggregates and
their sinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pyflink.common import RowKind, Types
from pyflink.datastream import FlatMapFunction, OutputTag

from connectors.flink_sql import CATALOG_DIR, jdbc_options, option_lines, render, split_statements, without_comments
from jobs.table_planning import to_data_stream, to_upsert_changelog
from operators.aggregate_rows import hourly_window_row

AGGREGATES_SQL = Path(__file__).resolve().parent.parent / "sql" / "jobs" / "aggregates.sql"
POSTGRES_TABLES_SQL = CATALOG_DIR / "20_postgres_tables.sql"
LATE_RECORDS = OutputTag("late-records", Types.STRING())
BUCKETS_MS = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
METRIC_GROUP = "iotlink"


@dataclass(frozen=True)
class AggregateOutputs:
    """Where and how the aggregates go.

    Attributes:
        postgres_url: The PostgreSQL database of the ``agg_*`` and ``comm_quality_*`` tables.
        allowed_lateness_ms: How long after its minute a reading still corrects the aggregates.
        expected_intervals_ms: Device id -> expected reporting interval (master data).
        flush_rows: JDBC rows buffered per sink before a write (also flushed every second and at
            each checkpoint).
    """

    postgres_url: str
    allowed_lateness_ms: int = 300_000
    expected_intervals_ms: dict[str, int] = field(default_factory=dict)
    flush_rows: int = 5000


class HourlyWindowRows(FlatMapFunction):
    """Fired hourly aggregate rows -> window-row JSON (retractions, if any, skipped)."""

    def flat_map(self, value):
        if value.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
            return
        yield orjson.dumps(hourly_window_row(*value)).decode()


# The window lengths of sql/jobs/aggregates.sql's view agg_updates. Its rows: scope, key,
# window_start, product_id, stats, the communication columns, window_ms (the window's key is
# scope, key, window_start and window_ms).
WINDOW_SIZES = {"agg_1m": BUCKETS_MS["1m"], "agg_5m": BUCKETS_MS["5m"], "agg_1h": BUCKETS_MS["1h"]}
WINDOW_KEY_FIELDS = (0, 1, 2, 10)
WINDOW_START_FIELD = 2
WINDOW_SIZE_FIELD = 10
# The metric statistics: a correction that changed only a device's communication counts carries
# them as NULL, so the tables and the Iceberg history get no second, identical version.
STATS_FIELD = 4
# The aggregates' processing-time mini-batches, and how long after the watermark passed a
# window's end it fires: the watermark does not wait in the mini-batches, the rows do (a local and
# a global one), so firing at once would often emit a first version without the last second's
# readings and a correction right after.
MINI_BATCH_LATENCY_MS = 1000
FIRING_DELAY_MS = 3 * MINI_BATCH_LATENCY_MS
METRIC_ROW_COLUMNS = ("scope", "key", "metric", "window_start", "product_id", "count", "min", "max", "sum", "avg", "stddev",
                      "first", "first_ts", "last", "last_ts")


def aggregate_statements(outputs: AggregateOutputs) -> tuple[list[str], list[str]]:
    """The DDL (tables, functions, views) and the INSERT statements of the aggregates, rendered.

    Returns:
        (statements to execute first, INSERT statements for one statement set).
    """
    jdbc = dict(jdbc_options(outputs.postgres_url))
    values = {"jdbc_options": option_lines(jdbc)}
    for name, size in BUCKETS_MS.items():
        values[f"state_ttl_{name}"] = f"{size + outputs.allowed_lateness_ms} ms"
    tables = split_statements(render(POSTGRES_TABLES_SQL.read_text(), values, str(POSTGRES_TABLES_SQL)))
    ddl = [s for s in tables if without_comments(s).upper().startswith("CREATE TABLE")]
    inserts = []
    for statement in split_statements(render(AGGREGATES_SQL.read_text(), values, str(AGGREGATES_SQL))):
        (inserts if without_comments(statement).upper().startswith("INSERT") else ddl).append(statement)
    # Batched JDBC writes: the connector's default (100 rows) makes a round trip per few readings.
    # Retries wait 1 s, 2 s, … between attempts: ten ride out about a minute of database outage.
    options = (f"/*+ OPTIONS('sink.buffer-flush.max-rows' = '{outputs.flush_rows}', 'sink.buffer-flush.interval' = '1 s', "
               "'sink.max-retries' = '10') */")
    inserts = [_with_sink_options(s, options) for s in inserts]
    return ddl, inserts


def _with_sink_options(insert: str, options: str) -> str:
    parts = without_comments(insert).split(None, 3)  # INSERT INTO <table> <query>
    table, rest = parts[2], parts[3]
    return f"INSERT INTO {table} {options}\n{rest}"


def _fire_windows(t_env, readings, allowed_lateness_ms: int) -> None:
    """The views ``agg_<size>_windows`` and ``agg_<size>_fired``: the changelog of
    ``agg_updates`` keyed by window in Java (``io.iotlink.flink.WindowFirings``), each window's
    newest row released when the watermark passes its end and again for each correction; then
    its metrics as one row per metric (``MetricStatsRows``); each split by window length.

    The SQL aggregates' processing-time mini-batches replace device-time watermarks with their
    batch markers, so the readings' watermarks join in through an empty Java stream
    (``NoRows``): a union's watermark is the smaller of its inputs'.
    """
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import to_jarray

    jvm = get_gateway().jvm
    functions = jvm.io.iotlink.flink
    # Upserts only: the aggregates leave out the retraction before each update (WindowFirings
    # keeps a window's newest row and would drop it), half the rows between them.
    changes = to_upsert_changelog(t_env, "agg_updates")
    row_type = changes.getType()
    device_time = readings._j_data_stream.flatMap(functions.NoRows(), row_type)
    device_time.uid("agg-watermarks").name("Device-time watermarks for the aggregates")
    changes = changes.union(to_jarray(jvm.org.apache.flink.streaming.api.datastream.DataStream, [device_time]))
    window_key = functions.RowKey(to_jarray(jvm.int, list(WINDOW_KEY_FIELDS)))
    firings = functions.WindowFirings(row_type, WINDOW_START_FIELD, WINDOW_SIZE_FIELD, STATS_FIELD, allowed_lateness_ms, FIRING_DELAY_MS)
    windows = changes.keyBy(window_key).process(firings, row_type)
    windows.uid("agg-firings").name("Fire aggregate windows")
    fired = windows.flatMap(functions.MetricStatsRows(WINDOW_SIZE_FIELD), functions.MetricStatsRows.rowType())
    fired.uid("agg-metric-rows").name("Aggregate windows: a row per metric")
    t_env.create_temporary_view("agg_windows", t_env.from_data_stream(DataStream(windows)))
    t_env.create_temporary_view("agg_fired", t_env.from_data_stream(DataStream(fired)))
    columns = ", ".join(f"`{column}`" for column in METRIC_ROW_COLUMNS)
    for view, size_ms in WINDOW_SIZES.items():
        t_env.create_temporary_view(f"{view}_windows", t_env.sql_query(f"SELECT * FROM agg_windows WHERE window_ms = {size_ms}"))
        t_env.create_temporary_view(f"{view}_fired", t_env.sql_query(f"SELECT {columns} FROM agg_fired WHERE window_ms = {size_ms}"))


def table_environment(env):
    """The job's StreamTableEnvironment: UTC, and the mini-batches the aggregates run with."""
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(env)
    config = t_env.get_config()
    config.set("table.local-time-zone", "UTC")
    # Mini-batches turn each key's updates within a second into one, and let the aggregates run
    # in two phases (local pre-aggregation before the shuffle).
    config.set("table.exec.mini-batch.enabled", "true")
    config.set("table.exec.mini-batch.allow-latency", f"{MINI_BATCH_LATENCY_MS} ms")
    config.set("table.exec.mini-batch.size", "5000")
    return t_env


def add_aggregates(t_env, statements, readings, dead_letters, outputs: AggregateOutputs, late_sink=None, product_hours: bool = False):
    """Wires the SQL aggregates onto the job's table environment.

    Args:
        t_env: The job's StreamTableEnvironment (:func:`table_environment`).
        statements: The job's StatementSet; the INSERTs are added to it.
        readings: Decoded, de-duplicated telemetry tuples ``(device_id, device_ts, json)`` with
            event time.
        dead_letters: Dead-letter JSON strings.
        outputs: The PostgreSQL database and the aggregation settings.
        late_sink: Sink for readings later than the allowed lateness (None: dropped, counted).
        product_hours: Also return the fired hourly product aggregates as window-row JSON (at
            the hour's end and per correction), for the MongoDB product summaries. (The view
            ``agg_1h_fired`` holds every fired hourly row for SQL either way.)

    Returns:
        The product hours' window-row stream with ``product_hours``, else None.
    """
    from jobs.java_operators import reading_rows, rejection_rows, side_output, union_all

    rows = reading_rows(readings, outputs.allowed_lateness_ms, outputs.expected_intervals_ms, LATE_RECORDS)
    rows = rows.uid("aggregate-rows").name("Lateness check + reading rows")
    if late_sink is not None:
        side_output(rows, LATE_RECORDS).sink_to(late_sink).uid("sink-late").name("Kafka: iotlink.late")
    rejected = rejection_rows(dead_letters).uid("rejection-rows").name("Dead letters of devices")
    t_env.create_temporary_view("readings", t_env.from_data_stream(union_all(rows, rejected)))
    ddl, inserts = aggregate_statements(outputs)
    for statement in ddl:
        t_env.execute_sql(statement)
    _fire_windows(t_env, readings, outputs.allowed_lateness_ms)
    for insert in inserts:
        statements.add_insert_sql(insert)
    if not product_hours:
        return None
    # Only the products' rows cross into Python (a few per product and hour, not one per device and metric).
    products = to_data_stream(t_env, t_env.sql_query("SELECT * FROM agg_1h_fired WHERE `scope` = 'product'"))
    return products.flat_map(HourlyWindowRows(), output_type=Types.STRING()).uid("hourly-rows").name("Product hours as window rows")
