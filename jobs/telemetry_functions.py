"""The telemetry job's Python functions: thin PyFlink wrappers around the pure logic of ``operators/``.

Each function only moves data between Flink and a pure function and counts what happened
in Flink metrics (group ``iotlink``), so the Flink web UI shows decoded, rejected (in total
and per reason) and late records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
from pyflink.common import Types
from pyflink.datastream import FlatMapFunction, KeyedBroadcastProcessFunction, KeyedProcessFunction, MapFunction, OutputTag, ProcessFunction
from pyflink.datastream.state import MapStateDescriptor

from operators.dead_letter import dead_letter_to_json
from operators.decode import DecoderRegistry, decode_raw_record
from operators.rule_errors import RuleErrorDigest

METRIC_GROUP = "iotlink"
# (device_id, device_ts, telemetry JSON): typed, so Flink moves it without pickling.
TELEMETRY_TUPLE = Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()])
# (telemetry tuple, event time): the decode output, before the watermark operator strips the time.
TIMESTAMPED_TELEMETRY = Types.TUPLE([TELEMETRY_TUPLE, Types.LONG()])
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class DecodeRawFunction(ProcessFunction):
    """Decodes raw envelopes; telemetry goes to the main output, dead letters to a side output.

    The decoder registry (every compiled spec) is built once per task in ``open``. Besides the
    totals, it counts per reason (``rejected_reason.<code>.count``) and per spec
    (``spec.<spec_id>.decoded`` / ``.rejected``; ``builtin`` for the client JSON decoder).
    """

    def __init__(self, registry_factory=DecoderRegistry):
        self._registry_factory = registry_factory
        self._registry = None

    def open(self, runtime_context):
        self._registry = self._registry_factory()
        group = runtime_context.get_metrics_group().add_group(METRIC_GROUP)
        self._group = group
        self._records_in = group.counter("records_in")
        self._decoded = group.counter("decoded")
        self._rejected = group.counter("rejected")
        self._rejected_by_reason = {}
        self._per_spec = {}

    def _count_rejection(self, code: str) -> None:
        self._rejected.inc()
        counter = self._rejected_by_reason.get(code)
        if counter is None:
            counter = self._group.add_group("rejected_reason", code).counter("count")
            self._rejected_by_reason[code] = counter
        counter.inc()

    def _spec_counters(self, spec_id: str | None):
        key = spec_id or "builtin"
        counters = self._per_spec.get(key)
        if counters is None:
            group = self._group.add_group("spec", key)
            counters = (group.counter("decoded"), group.counter("rejected"))
            self._per_spec[key] = counters
        return counters

    def process_element(self, value, ctx):
        self._records_in.inc()
        raw = bytes(value)
        outcome = decode_raw_record(raw, self._registry, int(time.time() * 1000))
        for letter in outcome.dead_letters:
            self._count_rejection(letter["reason_code"])
            if letter.get("spec_id") is not None or letter["stage"] in ("parse", "checksum", "contract"):
                self._spec_counters(letter.get("spec_id"))[1].inc()
            yield DEAD_LETTERS, dead_letter_to_json(letter)
        for record, text in zip(outcome.records, outcome.texts, strict=True):
            self._decoded.inc()
            self._spec_counters(record.get("spec_id"))[0].inc()
            # Paired with its event time, which the (Java) watermark operator takes from field 1.
            yield (record["device_id"], record["device_ts"], text), record["device_ts"]


class FailOnceAfter(MapFunction):
    """Test-only fault: raises once after ``count`` records, remembered in a marker file.

    The marker survives the restart Flink performs from the last checkpoint, so the job fails
    exactly once and then must recover to a correct result.
    """

    def __init__(self, count: int, marker: str, checkpoint_dir: str | None = None):
        self._count = count
        self._marker = marker
        self._checkpoint_dir = checkpoint_dir
        self._seen = 0
        self._looked = 0.0

    def _checkpoint_completed(self) -> bool:
        # With a checkpoint directory, fail only once a checkpoint exists to restore from.
        if self._checkpoint_dir is None:
            return True
        now = time.monotonic()
        if now - self._looked < 0.2:
            return False
        self._looked = now
        return any(Path(self._checkpoint_dir).glob("*/chk-*/_metadata"))

    def map(self, value):
        self._seen += 1
        if self._seen >= self._count and not os.path.exists(self._marker) and self._checkpoint_completed():
            Path(self._marker).write_text(str(self._seen))
            raise RuntimeError(f"injected failure after {self._seen} records (test fault)")
        return value


COMMANDS = OutputTag("shadow-commands", Types.STRING())


RULE_SETS = MapStateDescriptor("rule-sets", Types.STRING(), Types.STRING())
RULE_STATUS = OutputTag("rule-status", Types.STRING())


def _subtask_index(runtime_context) -> int:
    """This subtask's index. Flink 2.0 moved it to TaskInfo, which PyFlink's thread mode does not
    wrap yet, so ask the Java context directly when the wrapper fails."""
    try:
        return runtime_context.get_index_of_this_subtask()
    except Exception:  # noqa: BLE001 - a Java-side error of the wrapper; use the TaskInfo path
        return runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask()


def idle_device_ttl(ttl_ms: int):
    """The alarm state's time-to-live: refreshed by every write, expired values never returned,
    removed by RocksDB's compaction filter.

    Built without the Py4J gateway, which inside a task (thread mode) launches a JVM of its own
    (~100 MiB, seconds of CPU): PyFlink makes its default compaction-filter strategy (a 30-day
    period) through it whenever cleanup "in background" is on, even when a strategy is given. So
    background cleanup is off and the compaction filter named, with a period PyFlink does not
    pass on to Flink in either execution mode; Flink uses a strategy that is named either way.
    """
    from pyflink.common.time import Duration, Time
    from pyflink.datastream.state import StateTtlConfig

    return (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_in_rocksdb_compact_filter(1000, Duration(None))
        .build()
    )


class _AlarmOperator:
    """The alarm engine inside a Flink keyed operator (shared by both operator flavours).

    The device's engine state is one pickled value with a TTL (idle devices are forgotten);
    the engine's next deadline is registered as an event-time timer, so no-data, ``for``
    durations and action verification fire as the watermark passes them. Alarm events go to
    the main output, shadow commands of automatic actions to a side output. Metrics (group
    ``iotlink``): alarms_raised, alarms_cleared, active_alarms (raised minus ended since the task started), alarm_events,
    rule_late, rule_errors, rule_sets_accepted, rule_sets_rejected. Which rules fail and why goes
    out as ``errors`` statuses on the rule-status output (:mod:`operators.rule_errors`).
    """

    def __init__(self, rules_factory, max_out_of_orderness_ms: int, idle_ttl_ms: int = 7 * 24 * 3600 * 1000):
        self._rules_factory = rules_factory
        self._bound = max_out_of_orderness_ms
        self._idle_ttl_ms = idle_ttl_ms

    def open(self, runtime_context):
        from pyflink.datastream.state import ValueStateDescriptor

        from operators.alarm_engine import AlarmEngine

        self._engine = AlarmEngine(self._rules_factory(), self._bound)
        descriptor = ValueStateDescriptor("alarm-engine-state", Types.PICKLED_BYTE_ARRAY())
        descriptor.enable_time_to_live(idle_device_ttl(self._idle_ttl_ms))
        self._state = runtime_context.get_state(descriptor)
        self._timer = runtime_context.get_state(ValueStateDescriptor("alarm-next-timer", Types.LONG()))
        self._subtask = _subtask_index(runtime_context)
        self._error_digest = RuleErrorDigest(self._subtask)
        self._pushed_versions: dict[str, str] = {}
        self._broadcast_synced = False
        group = runtime_context.get_metrics_group().add_group(METRIC_GROUP)
        self._raised = group.counter("alarms_raised")
        self._cleared = group.counter("alarms_cleared")
        self._events = group.counter("alarm_events")
        self._late = group.counter("rule_late")
        self._errors = group.counter("rule_errors")
        self._accepted = group.counter("rule_sets_accepted")
        self._rejected = group.counter("rule_sets_rejected")
        # A counter moved up and down, not a Python gauge: in thread mode Flink's metrics thread
        # would call the gauge into an interpreter that a failover may already have torn down.
        self._active = group.counter("active_alarms")

    def _load(self):
        from operators.alarm_engine import DeviceState

        state = self._state.value()
        return state if state is not None else DeviceState()

    def _record_errors(self, state, messages) -> None:
        self._errors.inc(len(messages))
        rule_set = self._engine.rule_sets.get(state.product_id)
        now = int(time.time() * 1000)
        for message in messages:
            self._error_digest.add(state.product_id, rule_set.version if rule_set is not None else None, message, now)

    def _error_statuses(self):
        # Published on iotlink.rules.status with the pushes' statuses: which rule fails and why.
        if self._error_digest.pending:
            for status in self._error_digest.due(int(time.time() * 1000)):
                yield orjson.dumps({"rule_status": status}).decode()

    def _emit(self, out, state, ctx):
        self._late.inc(out.late)
        if out.errors:
            self._record_errors(state, out.errors)
        yield from self._error_statuses()
        for event in out.events:
            self._events.inc()
            if event["event"] == "RAISED":
                self._raised.inc()
                self._active.inc()
            elif event["event"] in ("CLEARED", "AUTO_RESOLVED"):
                self._cleared.inc()
                self._active.dec()
            yield orjson.dumps(event).decode()
        for command in out.commands:
            # Side outputs from on_timer of a keyed two-input operator crash PyFlink 2.0's embedded
            # mode, so everything leaves on the main output, tagged, and SplitAlarmOutput routes it.
            yield orjson.dumps({"command": command}).decode()
        self._state.update(state)
        deadline = self._engine.next_deadline(state)
        registered = self._timer.value()
        # One pending timer per device, the earliest: a timer that fires before the device's
        # deadline has moved on is harmless (advance does only what is due) and registers the
        # next one; a timer per record would run a state round trip per record again on firing.
        if deadline is not None and (registered is None or deadline < registered):
            ctx.timer_service().register_event_time_timer(deadline)
            self._timer.update(deadline)

    def _sync_broadcast(self, ctx) -> None:
        # After a restore the pushed rule sets are in broadcast state, not in the engine yet.
        from operators.rule_loading import load_rule_text

        for product_id, text in ctx.get_broadcast_state(RULE_SETS).items():
            message = orjson.loads(text)
            if self._pushed_versions.get(product_id) != message["version"]:
                loaded = load_rule_text(orjson.dumps(message["document"]).decode(), f"iotlink.rules {product_id}")
                self._engine.set_rule_set(product_id, loaded.compiled)
                self._pushed_versions[product_id] = message["version"]
        self._broadcast_synced = True

    def process_element(self, value, ctx):
        if not self._broadcast_synced and hasattr(ctx, "get_broadcast_state"):
            self._sync_broadcast(ctx)
        state = self._load()
        try:
            item = orjson.loads(value[2])
            if "ack" in item:
                ack = item["ack"]
                out = self._engine.acknowledge(state, ack["device_id"], ack["alarm_id"], ack["ts"], ack.get("by"))
            else:
                out = self._engine.on_record(state, item)
        except Exception as exc:  # noqa: BLE001 - per-record code never fails the task: counted, the device's state kept as it was
            self._record_errors(state, [f"engine: {type(exc).__name__}"])
            yield from self._error_statuses()
            return
        yield from self._emit(out, state, ctx)

    def on_timer(self, timestamp, ctx):
        state = self._load()
        if self._timer.value() == timestamp:
            self._timer.clear()
        out = self._engine.advance(state, ctx.get_current_key(), timestamp)
        yield from self._emit(out, state, ctx)

    def process_broadcast_element(self, value, ctx):
        """A rule-set version pushed on ``iotlink.rules``: validated, then in force, or rejected."""
        from operators.rule_loading import parse_rule_message
        from operators.spec_loading import SpecLoadError

        try:
            product_id, version, loaded = parse_rule_message(value)
        except SpecLoadError as exc:
            self._rejected.inc()
            if self._subtask == 0:
                status = {"status": "rejected", **_pushed_identity(value), "problems": exc.problems, "message": value[:2000]}
                yield orjson.dumps({"rule_status": status}).decode()
            return
        ctx.get_broadcast_state(RULE_SETS).put(product_id, value)
        self._engine.set_rule_set(product_id, loaded.compiled)
        self._pushed_versions[product_id] = version
        self._accepted.inc()
        if self._subtask == 0:
            yield orjson.dumps({"rule_status": {"status": "accepted", "product_id": product_id, "version": version}}).decode()


def _pushed_identity(value) -> dict:
    """product_id and version of a pushed rule message, as far as they can be read."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(message, dict):
        return {}
    return {k: message[k] for k in ("product_id", "version") if isinstance(message.get(k), str)}


class SplitAlarmOutput(ProcessFunction):
    """Routes the alarm operator's tagged output: events stay, commands and rule statuses go to
    their side outputs (untagged)."""

    def process_element(self, value, ctx):
        if value.startswith('{"command":'):
            yield COMMANDS, orjson.dumps(orjson.loads(value)["command"]).decode()
        elif value.startswith('{"rule_status":'):
            yield RULE_STATUS, orjson.dumps(orjson.loads(value)["rule_status"]).decode()
        else:
            yield value


class AlarmFunction(_AlarmOperator, KeyedProcessFunction):
    """The alarm operator with the rule sets read at job start only."""


class AlarmBroadcastFunction(_AlarmOperator, KeyedBroadcastProcessFunction):
    """The alarm operator that also takes rule-set versions pushed on ``iotlink.rules``."""


class AckToTuple(FlatMapFunction):
    """Turns acknowledge commands from ``iotlink.control`` into the alarm operator's input tuples
    (keyed by device like telemetry); other control messages are skipped."""

    def flat_map(self, value):
        from operators.notifications import ack_command

        ack = ack_command(value)
        if ack is not None:
            yield ack["device_id"], ack["ts"], orjson.dumps({"ack": ack}).decode()


class NotificationFunction(ProcessFunction):
    """Alarm events -> notification records (severity routing, see operators/notifications.py)."""

    def process_element(self, value, ctx):
        from operators.notifications import notification_for

        notification = notification_for(orjson.loads(value))
        if notification is not None:
            yield orjson.dumps(notification).decode()


END_OF_TIME = 2**63 - 1  # Flink's final watermark (Long.MAX_VALUE)


class _SinkWriting:
    """Writes batches to an idempotent sink (``write_batch``/``flush``/``close``) and counts them
    (metric group ``iotlink.sink.<name>``: written, batches, write_ms, and the sink's own
    ``stats.retries``)."""

    def __init__(self, sink_factory, name: str):
        self._sink_factory = sink_factory
        self._name = name

    def _open_sink(self, runtime_context) -> None:
        self._sink = self._sink_factory()
        group = runtime_context.get_metrics_group().add_group(METRIC_GROUP).add_group("sink", self._name)
        self._written = group.counter("written")
        self._batches = group.counter("batches")
        self._retries = group.counter("retries")
        self._retries_seen = 0  # the sink's own count at the last batch
        # Total write time (with ``batches``: the mean write latency); a counter, since Python
        # gauges are unsafe in thread mode (see AlarmFunction).
        self._write_ms = group.counter("write_ms")

    def _write_values(self, count: int, batch) -> None:
        started = time.perf_counter()
        self._sink.write_batch(batch)
        self._write_ms.inc(int((time.perf_counter() - started) * 1000))
        self._written.inc(count)
        self._batches.inc()
        retries = getattr(getattr(self._sink, "stats", None), "retries", 0)
        self._retries.inc(retries - self._retries_seen)
        self._retries_seen = retries

    def close(self):
        if getattr(self, "_sink", None) is not None:
            self._sink.close()


class BatchWriter(_SinkWriting, ProcessFunction):
    """Writes the batches that ``io.iotlink.flink.SinkBatches`` gathers in Java: one crossing into
    Python per batch instead of one per record, and no Python state (the batches are flushed
    before every checkpoint barrier, so a completed checkpoint has all its records written).

    Args:
        sink_factory: Picklable; builds the sink (``write_batch``/``flush``/``close``) in ``open``.
        batch_for: Picklable; ``(sequence number of the first value, values)`` -> the sink's batch.
        name: Metric name part (``sink.<name>.written`` / ``.batches`` / ``.retries``).
    """

    def __init__(self, sink_factory, batch_for, name: str):
        super().__init__(sink_factory, name)
        self._batch_for = batch_for

    def open(self, runtime_context):
        self._open_sink(runtime_context)

    def process_element(self, value, ctx):
        first_seq, values = value
        self._write_values(len(values), self._batch_for(first_seq, values))


class BatchedSinkFunction(_SinkWriting, KeyedProcessFunction):
    """Hands values to an idempotent sink in batches, buffered in keyed state (for the streams of
    a few records per second: alarm events, window rows, dead letters; per-record streams use
    :class:`BatchWriter`).

    Python functions cannot act on checkpoint completion, so the buffer lives in ListState:
    whatever a checkpoint captured unwritten is restored and written after a failure, and
    whatever is replayed from the source after the checkpoint is written again, which the
    sink's idempotent statements absorb. A batch is written when ``batch_size`` values are
    buffered, ``flush_ms`` after the first one (a processing-time timer), or when the watermark
    next advances (an event-time timer; the only kind that fires at the end of bounded input). A write blocks
    while the sink retries, so a database outage shows as backpressure, never as loss.

    Args:
        sink_factory: Picklable; builds the sink (``write_batch``/``flush``/``close``) in ``open``.
        statements_for: Picklable; turns a list of buffered values into the sink's batch.
        name: Metric name part (``sink.<name>.written`` / ``.batches`` / ``.retries``).
    """

    def __init__(self, sink_factory, statements_for, name: str, batch_size: int = 500, flush_ms: int = 500):
        super().__init__(sink_factory, name)
        self._statements_for = statements_for
        self._batch_size = batch_size
        self._flush_ms = flush_ms

    def open(self, runtime_context):
        from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

        self._open_sink(runtime_context)
        self._buffer = runtime_context.get_list_state(ListStateDescriptor("buffer", Types.STRING()))
        self._count = runtime_context.get_state(ValueStateDescriptor("buffered", Types.INT()))

    def process_element(self, value, ctx):
        self._buffer.add(value)
        count = (self._count.value() or 0) + 1
        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        # At the end of bounded input (final watermark) no timer fires any more: write now.
        if count >= self._batch_size or watermark >= END_OF_TIME:
            self._write()
            return
        if count == 1:
            timers.register_processing_time_timer(timers.current_processing_time() + self._flush_ms)
            # Processing-time timers are dropped at the end of bounded input; the final watermark
            # fires event-time timers, so this one writes the last batch of a bounded run.
            timers.register_event_time_timer(max(watermark, -(2**62)) + 1)
        self._count.update(count)

    def on_timer(self, timestamp, ctx):
        if self._count.value():
            self._write()

    def _write(self):
        values = list(self._buffer.get() or [])
        if values:
            self._write_values(len(values), self._statements_for(values))
        self._buffer.clear()
        self._count.clear()


def hot_layer_batch(first_seq: int, values: list[str]) -> list:
    """A batch of telemetry JSON -> hot-layer operations (the sequence numbers are not needed:
    the operations are upserts by deterministic ids)."""
    return hot_layer_statements(values)


class PostgresWriterFactory:
    """Picklable factory of :class:`connectors.postgres.PostgresBatchWriter` for one URL."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self):
        from connectors.postgres import PostgresBatchWriter

        return PostgresBatchWriter(self.url)


class MongoWriterFactory:
    """Picklable factory of :class:`connectors.mongo.MongoHotWriter` for one URL."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self):
        from connectors.mongo import MongoHotWriter

        return MongoHotWriter(self.url)


def hot_layer_statements(values: list[str]) -> list:
    """Buffered JSON records (telemetry, dead letters, alarm events, window rows) -> hot-layer ops."""
    from connectors.mongo import hot_layer_ops

    return hot_layer_ops(values)


def alarm_store_statements(values: list[str]) -> list:
    """Buffered alarm-event JSON strings -> alarm_events / alarm_tickets statements."""
    from connectors.alarm_store import alarm_statements

    return alarm_statements([orjson.loads(v) for v in values])


def json_bucket(buckets: int, *fields: str):
    """A key selector spreading JSON values over ``buckets`` keys by the given fields, so all
    values with the same fields (one device's alarm events, one key's window rows) stay in
    order in one buffer while writes are still batched. Fields a value lacks are left out, so
    one selector serves a mixed stream (alarm events by ``device_id``, window rows by ``key``)."""
    import zlib

    def bucket(value: str) -> int:
        doc = orjson.loads(value)
        return zlib.crc32("|".join(str(doc[f]) for f in fields if f in doc).encode()) % buckets

    return bucket
