"""The telemetry job's MongoDB hot layer: fed by what the job already computes, not by every reading.

    readings (de-duplicated) --> view hot_readings --> sql/jobs/hot_layer.sql: device_latest
        (each device's newest reading, one change per device and mini-batch)
        --[ChangelogValues (Java): the new values]--[SinkBatches (Java)]--> MongoDB device_state
    dead letters of devices, alarm events, fired hourly product aggregates
        --> MongoDB device quality, alarms_active, product_summary_1h / _1d

The writers are Python (pymongo: no MongoDB connector exists for Flink 2.0), one call per batch.
"""

from __future__ import annotations

from pathlib import Path

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.java_gateway import get_gateway

from connectors.flink_sql import render, split_statements
from jobs.java_operators import sink_batches
from jobs.table_planning import to_upsert_changelog
from jobs.telemetry_functions import BatchedSinkFunction, BatchWriter, hot_layer_batch, hot_layer_statements, json_bucket

HOT_LAYER_SQL = Path(__file__).resolve().parent.parent / "sql" / "jobs" / "hot_layer.sql"


def device_latest(t_env, readings) -> DataStream:
    """Each device's newest reading (telemetry JSON) as it changes, from ``sql/jobs/hot_layer.sql``.

    Args:
        t_env: The job's StreamTableEnvironment (mini-batches on).
        readings: Decoded, de-duplicated telemetry tuples ``(device_id, device_ts, json)``.
    """
    t_env.create_temporary_view("hot_readings", t_env.from_data_stream(readings).alias("device_id", "device_ts", "telemetry"))
    for statement in split_statements(render(HOT_LAYER_SQL.read_text(), {}, str(HOT_LAYER_SQL))):
        t_env.execute_sql(statement)
    # Upserts only: no retraction row before each change (ChangelogValues would drop it).
    changes = to_upsert_changelog(t_env, "device_latest")
    values = changes.flatMap(get_gateway().jvm.io.iotlink.flink.ChangelogValues(1), Types.STRING().get_java_type_info())
    values.uid("device-latest-values").name("Newest reading per device")
    return DataStream(values)


def add_hot_layer(t_env, sink_factory, readings, events: list) -> None:
    """Wires the MongoDB writers.

    Args:
        t_env: The job's StreamTableEnvironment.
        sink_factory: Picklable factory of the hot-layer writer (:class:`connectors.mongo.MongoHotWriter`).
        readings: Decoded, de-duplicated telemetry tuples with event time.
        events: Streams of JSON records for the other collections (dead letters of devices,
            alarm events, hourly product window rows).
    """
    latest = device_latest(t_env, readings)
    (
        sink_batches(latest, Types.STRING(), max_size=2000, max_delay_ms=500)
        .uid("mongo-state-batches").name("Batches for MongoDB")
        .process(BatchWriter(sink_factory, hot_layer_batch, "mongo_state"))
        .uid("sink-mongo-state")
        .name("MongoDB: device_state")
    )
    if events:
        (
            # One device's dead letters and alarm events share a buffer (in order); product hours go by product.
            events[0].union(*events[1:])
            .key_by(json_bucket(16, "device_id", "key"), key_type=Types.INT())
            .process(BatchedSinkFunction(sink_factory, hot_layer_statements, "mongo_events", batch_size=500, flush_ms=500))
            .uid("sink-mongo-events")
            .name("MongoDB: alarms_active, device quality, product summaries")
        )
