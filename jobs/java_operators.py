"""The project's Java operators (``jvm/functions``, package ``io.iotlink.flink``) on PyFlink streams.

PyFlink's own plumbing runs Python where no logic of ours does: ``key_by`` adds a Python map
that computes the key, and ``get_side_output`` an identity map, so each costs one more crossing
into the interpreter per record (~100 µs inside Flink, all Python operators of a TaskManager
sharing one interpreter). These helpers do the same in Java, so a record crosses into Python only
where the decoder or the alarm rules run (``docs/performance.md``).
"""

from __future__ import annotations

import orjson
from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import to_jarray

from jobs.telemetry_functions import TELEMETRY_TUPLE

# The row the SQL aggregates read (sql/jobs/aggregates.sql, view `readings`).
READING_ROW = Types.ROW_NAMED(
    ["kind", "device_id", "product_id", "ts", "metrics", "interval_ms"],
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(), Types.MAP(Types.STRING(), Types.DOUBLE()), Types.LONG()],
)


def _functions():
    return get_gateway().jvm.io.iotlink.flink


def side_output(stream: DataStream, tag) -> DataStream:
    """A Python operator's side output as a typed Java stream (thread mode hands side outputs
    over already converted to the tag's type), without PyFlink's identity map."""
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def key_for_python(stream: DataStream, value_type, uid: str) -> KeyedStream:
    """Keys a tuple stream by its first field for a Python keyed operator, the key taken in Java.

    Args:
        stream: A stream of tuples whose first field is the key (a device id).
        value_type: The tuples' type, as the Python operator receives them.
        uid: The key operator's uid (and name, "Key for <uid>").

    Returns:
        A KeyedStream that PyFlink's ``process`` and ``connect`` take as from ``key_by``.
    """
    jvm = get_gateway().jvm
    key_type = Types.STRING()
    with_key = stream._j_data_stream.map(_functions().PythonKeyed(), Types.ROW([key_type, value_type]).get_java_type_info())
    with_key.setParallelism(stream._j_data_stream.getParallelism())
    with_key.uid(uid).name(f"Key for {uid}")
    keyed = with_key.keyBy(jvm.org.apache.flink.streaming.api.functions.python.KeyByKeySelector(),
                           Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(keyed, value_type, DataStream(with_key))


def deduplicate(readings: DataStream, ttl_ms: int) -> DataStream:
    """Drops readings whose (device, device time, metrics) was seen within ``ttl_ms``, keyed by
    device in Java (``DeduplicateReadings``)."""
    functions = _functions()
    keyed = readings._j_data_stream.keyBy(functions.FirstField(), Types.STRING().get_java_type_info())
    return DataStream(keyed.process(functions.DeduplicateReadings(ttl_ms), TELEMETRY_TUPLE.get_java_type_info()))


def reading_rows(readings: DataStream, allowed_lateness_ms: int, expected_intervals_ms: dict[str, int], late_tag) -> DataStream:
    """One aggregate row per reading (``ReadingRows``); too-late readings go to ``late_tag``."""
    # One JSON text: a Py4J call per device would take seconds to start a job for a large fleet.
    intervals = orjson.dumps({device_id: int(interval) for device_id, interval in expected_intervals_ms.items()}).decode()
    rows = readings._j_data_stream.process(
        _functions().ReadingRows(allowed_lateness_ms, intervals, late_tag.get_java_output_tag()), READING_ROW.get_java_type_info()
    )
    return DataStream(rows)


def rejection_rows(dead_letters: DataStream) -> DataStream:
    """One ``rejected`` aggregate row per dead letter naming a device (``RejectionRows``)."""
    return DataStream(dead_letters._j_data_stream.flatMap(_functions().RejectionRows(), READING_ROW.get_java_type_info()))


def device_letters(dead_letters: DataStream) -> DataStream:
    """The dead letters that name a device (``DeviceLetters``: the rule ``RejectionRows`` counts by)."""
    return DataStream(dead_letters._j_data_stream.filter(_functions().DeviceLetters()))


def ruled_readings(readings: DataStream, products: frozenset[str], pushed: DataStream | None = None) -> DataStream:
    """The readings of ``products`` (``RuledReadings``) and, with ``pushed`` (the raw rule-set
    messages of ``iotlink.rules``), of every product whose rule set is pushed while the job runs
    (``RuledReadingsWithPushes``)."""
    jvm = get_gateway().jvm
    names = to_jarray(jvm.String, sorted(products))
    j_readings = readings._j_data_stream
    if pushed is None:
        return DataStream(j_readings.filter(_functions().RuledReadings(names)))
    broadcast = pushed._j_data_stream.broadcast(to_jarray(
        jvm.org.apache.flink.api.common.state.MapStateDescriptor, [_functions().RuledReadingsWithPushes.PUSHED]
    ))
    return DataStream(j_readings.connect(broadcast).process(_functions().RuledReadingsWithPushes(names), TELEMETRY_TUPLE.get_java_type_info()))


def union_all(first: DataStream, *others: DataStream) -> DataStream:
    """The union of Java streams of one type."""
    if not others:
        return first
    jvm = get_gateway().jvm
    return DataStream(first._j_data_stream.union(
        to_jarray(jvm.org.apache.flink.streaming.api.datastream.DataStream, [o._j_data_stream for o in others])
    ))


def sink_batches(stream: DataStream, value_type, max_size: int, max_delay_ms: int) -> DataStream:
    """Batches of ``stream`` for a Python sink (``SinkBatches``), at the stream's parallelism so
    each subtask batches what one upstream subtask produced, in its order.

    Returns:
        A stream of ``(sequence number of the first value, values)`` tuples.
    """
    batch_type = Types.TUPLE([Types.LONG(), Types.LIST(value_type)])
    j_stream = stream._j_data_stream
    batches = j_stream.transform(
        "Sink batches", batch_type.get_java_type_info(),
        _functions().SinkBatches(value_type.get_java_type_info(), max_size, max_delay_ms),
    )
    batches.setParallelism(j_stream.getParallelism())
    return DataStream(batches)
