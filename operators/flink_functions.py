"""Thin PyFlink wrappers around the pure operator logic in this package.

Each function only moves data between Flink and a pure function and counts what happened
in Flink metrics (group ``iotlink``), so the Flink web UI shows decoded, rejected (in total
and per reason) and late records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import MapFunction, OutputTag, ProcessFunction

from operators.dead_letter import dead_letter_to_json
from operators.decode import DecoderRegistry, decode_raw_record
from operators.telemetry import telemetry_to_json

METRIC_GROUP = "iotlink"
# (device_id, device_ts, telemetry JSON): typed, so Flink moves it without pickling.
TELEMETRY_TUPLE = Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()])
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
        outcome = decode_raw_record(bytes(value), self._registry, int(time.time() * 1000))
        for letter in outcome.dead_letters:
            self._count_rejection(letter["reason_code"])
            if letter.get("spec_id") is not None or letter["stage"] in ("parse", "checksum", "contract"):
                self._spec_counters(letter.get("spec_id"))[1].inc()
            yield DEAD_LETTERS, dead_letter_to_json(letter)
        for record in outcome.records:
            self._decoded.inc()
            self._spec_counters(record.get("spec_id"))[0].inc()
            yield record["device_id"], record["device_ts"], telemetry_to_json(record)


class DeviceTimeAssigner(TimestampAssigner):
    """Event time is the device time carried in the telemetry tuple."""

    def extract_timestamp(self, value, record_timestamp):
        return value[1]


class EmitTelemetryFunction(ProcessFunction):
    """Counts records that arrive behind the watermark (late) and emits the telemetry JSON.

    Late records stay in the telemetry stream: it is the complete record of what devices sent;
    windowed consumers decide what lateness they accept.
    """

    def open(self, runtime_context):
        group = runtime_context.get_metrics_group().add_group(METRIC_GROUP)
        self._late = group.counter("late")
        self._emitted = group.counter("telemetry_out")

    def process_element(self, value, ctx):
        if ctx.timestamp() < ctx.timer_service().current_watermark():
            self._late.inc()
        self._emitted.inc()
        yield value[2]


class FailOnceAfter(MapFunction):
    """Test-only fault: raises once after ``count`` records, remembered in a marker file.

    The marker survives the restart Flink performs from the last checkpoint, so the job fails
    exactly once and then must recover to a correct result.
    """

    def __init__(self, count: int, marker: str):
        self._count = count
        self._marker = marker
        self._seen = 0

    def map(self, value):
        self._seen += 1
        if self._seen >= self._count and not os.path.exists(self._marker):
            Path(self._marker).write_text(str(self._seen))
            raise RuntimeError(f"injected failure after {self._seen} records (test fault)")
        return value
