"""Decoding raw envelopes into standard telemetry records.

This module is the single place payload decoders plug in: :class:`DecoderRegistry` picks a
:class:`PayloadDecoder` for each envelope by product and format, and :func:`decode_raw_record`
turns one ``iotlink.raw`` value into telemetry records or one dead letter. Errors travel as
data (:class:`DecodeOutcome`), never as exceptions out of the operator.

The built-in decoder understands the client's JSON payload shape::

    {"hub_timestamp": 1756653767451, "device_timestamp": 1756653767451,
     "data": {"metrics": {"tempC": 26.3, "rpm": 1200}},
     "nodes": [{"device_id": "child-01", "role": "EndDevice", "parent": "hub-01"}]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import orjson

from operators.dead_letter import make_dead_letter
from operators.device_id import INVALID_DEVICE_ID, device_id_problem
from operators.envelope import EnvelopeError, RawEnvelope, parse_envelope
from operators.telemetry import make_telemetry_record, telemetry_to_json
from operators.topic import NO_HUB, TopicError, parse_device_topic
from operators.value_repr import MAX_REPR_CHARS, bounded_repr

# What the sinks store as an integer: times as a signed 64-bit (PostgreSQL bigint, Iceberg long);
# a metric up to an unsigned 64-bit counter (JSON carries it; the aggregates take it as a double).
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

# Device clocks before this are unset RTCs, not readings (2000-01-01T00:00:00Z).
MIN_PLAUSIBLE_TS = 946_684_800_000
# Readings stamped further ahead of the platform clock than this are rejected.
MAX_CLOCK_AHEAD_MS = 24 * 3600 * 1000


DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# Pipeline stages a record can be rejected at, as reported on dead letters.
STAGES = ("envelope", "spec_selection", "parse", "checksum", "contract")


class DecodeError(ValueError):
    """A payload that cannot become a telemetry record.

    Attributes:
        code: Machine-readable reason, e.g. ``truncated``.
        reason: Precise human-readable reason.
        stage: Where it failed: envelope, spec_selection, parse, checksum or contract.
    """

    def __init__(self, code: str, reason: str, stage: str = "parse"):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stage = stage


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who sent a payload, resolved from the envelope hints and the MQTT topic."""

    device_id: str
    product_id: str
    hub_id: str | None
    child_device_id: str | None
    format: str | None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Master data for one device: its product, tenant and expected reporting interval (from a
    YAML file or PostgreSQL)."""

    product_id: str
    tenant: str | None = None
    expected_interval_s: float | None = None


class PayloadDecoder(Protocol):
    """Turns one payload into telemetry records (a hub payload may hold several)."""

    def decode(self, envelope: RawEnvelope, identity: DeviceIdentity) -> list[dict]:
        """Returns the records, or raises :class:`DecodeError`."""
        ...


def parse_timestamp(value: object, field_name: str) -> int:
    """Parses a device or hub timestamp: epoch milliseconds or ISO 8601 (UTC when no zone).

    Raises:
        DecodeError: ``invalid_timestamp`` naming the field.
    """
    if isinstance(value, bool):
        raise DecodeError("invalid_timestamp", f"{field_name} is a boolean, expected epoch ms or ISO 8601")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError("invalid_timestamp", f"{field_name} {bounded_repr(value)} is not ISO 8601 or epoch ms") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise DecodeError("invalid_timestamp", f"{field_name} {bounded_repr(value)} is not ISO 8601 or epoch ms")


def check_plausible_time(ts: int, ingest_ts: int, field_name: str) -> None:
    """Rejects device times before 2000 or more than a day ahead of the platform clock."""
    if ts < MIN_PLAUSIBLE_TS:
        raise DecodeError("implausible_timestamp", f"{field_name} {ts} is before 2000-01-01 (device clock unset?)", stage="contract")
    if ts > ingest_ts + MAX_CLOCK_AHEAD_MS:
        raise DecodeError("implausible_timestamp", f"{field_name} {ts} is more than 24 h ahead of the receive time {ingest_ts}", stage="contract")


def _metric_value(name: str, value: object) -> object:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("invalid_metric", f"metric {bounded_repr(name)} is not a finite number")
        return value
    raise DecodeError("invalid_metric", f"metric {bounded_repr(name)} is a {type(value).__name__}, expected number, bool or string")


class ClientJsonDecoder:
    """Decodes the client's JSON shape (``device_timestamp``, ``hub_timestamp``, ``data.metrics``).

    Metrics whose value is ``null`` are left out (a sensor that reported nothing); any other
    non-scalar value rejects the payload, naming the metric.
    """

    def decode(self, envelope: RawEnvelope, identity: DeviceIdentity) -> list[dict]:
        """Returns one telemetry record for the payload."""
        try:
            doc = orjson.loads(envelope.payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", f"payload is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DecodeError("invalid_json", f"payload is a JSON {type(doc).__name__}, expected an object")
        data = doc.get("data")
        if not isinstance(data, dict):
            raise DecodeError("missing_field", "payload has no 'data' object")
        if "bin" in data and "metrics" not in data:
            raise DecodeError(
                "no_decoder_spec",
                f"payload carries binary data.bin; product {bounded_repr(identity.product_id)} needs a YAML decoder spec",
                stage="spec_selection",
            )
        raw_metrics = data.get("metrics")
        if not isinstance(raw_metrics, dict):
            raise DecodeError("missing_field", "payload has no 'data.metrics' object")
        metrics = {name: _metric_value(name, value) for name, value in raw_metrics.items() if value is not None}
        if not metrics:
            raise DecodeError("empty_metrics", "payload 'data.metrics' holds no values", stage="contract")
        ingest_ts = envelope.received_at
        if doc.get("device_timestamp") is not None:
            device_ts = parse_timestamp(doc["device_timestamp"], "device_timestamp")
            check_plausible_time(device_ts, ingest_ts, "device_timestamp")
        else:
            device_ts = ingest_ts
        hub_ts = None
        if doc.get("hub_timestamp") is not None:
            hub_ts = parse_timestamp(doc["hub_timestamp"], "hub_timestamp")
        return [
            make_telemetry_record(
                device_id=identity.device_id,
                product_id=identity.product_id,
                device_ts=device_ts,
                ingest_ts=ingest_ts,
                metrics=metrics,
                hub_id=identity.hub_id,
                child_device_id=identity.child_device_id,
                hub_ts=hub_ts,
                tenant=identity.tenant,
            )
        ]


_FORMAT_OF_HINT = {"json": "json", "bin": "hex_binary", "hex": "hex_binary", "csv": "csv"}


@dataclass
class DecoderRegistry:
    """Chooses the decoder for an envelope and resolves the device's product and tenant.

    The product comes from the envelope (bridge hint), else from the device registry
    (``devices``). A product's YAML specs (``by_product``, one per format) win; when a product
    has several, the envelope/topic format hint picks one, else the payload's first byte
    (``{`` means JSON). Without a spec, JSON in the client's shape is decoded by the built-in
    decoder (``by_format``); anything else is rejected naming the missing spec.
    """

    by_product: dict[str, PayloadDecoder | list[PayloadDecoder]] = field(default_factory=dict)
    by_format: dict[str, PayloadDecoder] = field(default_factory=lambda: {"json": ClientJsonDecoder()})
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    def decoders_of(self, product_id: str) -> list[PayloadDecoder]:
        """The spec decoders registered for a product."""
        found = self.by_product.get(product_id)
        if found is None:
            return []
        return found if isinstance(found, list) else [found]

    def decoder_for(self, identity: DeviceIdentity, payload: bytes = b"") -> PayloadDecoder:
        """Returns the decoder, or raises ``DecodeError('no_decoder_spec')``."""
        decoders = self.decoders_of(identity.product_id)
        if len(decoders) == 1:
            return decoders[0]
        json_like = payload.lstrip()[:1] == b"{"
        if decoders:
            wanted = _FORMAT_OF_HINT.get(identity.format or "") or ("json" if json_like else "hex_binary")
            for decoder in decoders:
                if getattr(decoder, "format", None) == wanted:
                    return decoder
            have = ", ".join(getattr(d, "format", "?") for d in decoders)
            raise DecodeError(
                "no_decoder_spec", f"product {bounded_repr(identity.product_id)} has no {wanted} spec (has: {have})", stage="spec_selection"
            )
        fmt = identity.format or ("json" if json_like else "bin")
        decoder = self.by_format.get(fmt)
        if decoder is None:
            raise DecodeError(
                "no_decoder_spec",
                f"no decoder for product {bounded_repr(identity.product_id)} in format {bounded_repr(fmt)}: add a YAML spec",
                stage="spec_selection",
            )
        return decoder


def resolve_identity(envelope: RawEnvelope, devices: dict[str, DeviceInfo] | None = None) -> DeviceIdentity:
    """Resolves device, hub, product and tenant from the envelope, its MQTT topic and master data.

    Raises:
        DecodeError: ``invalid_device_id`` (stage ``envelope``: the envelope's device or hub id, or
            its topic's, breaks the device id rule), ``invalid_topic``, ``device_mismatch``,
            ``unknown_device`` or ``unknown_product``.
    """
    device_id, hub_id, fmt = envelope.device_id, envelope.hub_id, envelope.format
    # A record that reached iotlink.raw without a bridge (another producer) meets the same rule.
    for name, value in (("device_id", device_id), ("hub_id", hub_id)):
        problem = None if value is None else device_id_problem(value, f"envelope {name}")
        if problem is not None:
            raise DecodeError(INVALID_DEVICE_ID, problem, stage="envelope")
    child_device_id = None
    if envelope.mqtt_topic is not None:
        try:
            topic = parse_device_topic(envelope.mqtt_topic)
        except TopicError as exc:
            stage = "envelope" if exc.code == INVALID_DEVICE_ID else "spec_selection"
            raise DecodeError(exc.code, exc.reason, stage=stage) from None
        if device_id is not None and device_id != topic.device_id:
            raise DecodeError(
                "device_mismatch",
                f"envelope device_id {bounded_repr(device_id)} differs from topic device {bounded_repr(topic.device_id)}",
                stage="spec_selection",
            )
        device_id, hub_id, child_device_id = topic.device_id, topic.hub_id, topic.child_device_id
        fmt = fmt or topic.format
    elif hub_id is not None and hub_id not in (NO_HUB, device_id):
        child_device_id = device_id
    if device_id is None:
        raise DecodeError("unknown_device", "no device id in the envelope or its MQTT topic", stage="spec_selection")
    info = devices.get(device_id) if devices else None
    product_id = envelope.product_id or (info.product_id if info else None)
    if product_id is None:
        raise DecodeError(
            "unknown_product",
            f"no product id for device {bounded_repr(device_id)}: not in the envelope and not in the device registry",
            stage="spec_selection",
        )
    return DeviceIdentity(device_id, product_id, hub_id, child_device_id, fmt, info.tenant if info else None)


def check_record(record: dict) -> None:
    """The data contract every decoded record must meet before it leaves the decoder.

    Raises:
        DecodeError: stage ``contract``, naming the field that breaks it.
    """
    for name in ("device_id", "product_id"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise DecodeError("missing_field", f"record {name} is {bounded_repr(value)}, expected a non-empty string", stage="contract")
    device_ts = record.get("device_ts")
    if type(device_ts) is not int:
        raise DecodeError("invalid_timestamp", f"record device_ts {bounded_repr(device_ts)} is not epoch ms", stage="contract")
    check_plausible_time(device_ts, record["ingest_ts"], "device time")
    for name, value in record.items():
        if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise DecodeError("value_out_of_range", f"record {name} {bounded_repr(value)} is beyond a 64-bit integer", stage="contract")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise DecodeError("empty_metrics", "record has no metrics", stage="contract")
    for name, value in metrics.items():
        kind = type(value)
        if kind is int and not INT64_MIN <= value <= UINT64_MAX:
            raise DecodeError(
                "value_out_of_range", f"metric {bounded_repr(name)} {bounded_repr(value)} is beyond a 64-bit integer", stage="contract"
            )
        if kind is float:
            if not math.isfinite(value):
                raise DecodeError("invalid_metric", f"metric {bounded_repr(name)} is not a finite number", stage="contract")
        elif kind not in (int, bool, str):
            raise DecodeError(
                "invalid_metric", f"metric {bounded_repr(name)} is a {kind.__name__}, expected number, bool or string", stage="contract"
            )


@dataclass(slots=True)
class DecodeOutcome:
    """What one raw record became: telemetry records and dead letters (a CSV payload can have both)."""

    records: list[dict]
    dead_letters: list[dict] = field(default_factory=list)
    # The records as iotlink.telemetry JSON, when :func:`decode_raw_record` made them (one per record).
    texts: list[str] = field(default_factory=list)

    @property
    def dead_letter(self) -> dict | None:
        """The first dead letter, if any."""
        return self.dead_letters[0] if self.dead_letters else None


def decode_raw_record(raw_value: bytes, registry: DecoderRegistry, now_ms: int) -> DecodeOutcome:
    """Decodes one ``iotlink.raw`` value.

    Args:
        raw_value: The Kafka record value (an envelope).
        registry: Decoders to use.
        now_ms: Current time, stamped on dead letters.

    Returns:
        The records with their telemetry JSON, and a dead letter (original payload, stage, spec,
        reason) for each rejection. It never raises: what no rule foresaw becomes a dead letter of
        stage ``internal`` (reason code ``internal_error``) naming the exception, so one record can
        never fail the task that decodes it.
    """
    try:
        return _decode_raw_record(raw_value, registry, now_ms)
    except Exception as exc:  # noqa: BLE001 - per-record code never raises; the letter says what failed
        reason = f"the decoder failed on this record: {type(exc).__name__}: {str(exc)[:MAX_REPR_CHARS]}"
        return DecodeOutcome([], [make_dead_letter(stage="internal", reason_code="internal_error", reason=reason, failed_at=now_ms,
                                                   raw_value=raw_value)])


def _decode_raw_record(raw_value: bytes, registry: DecoderRegistry, now_ms: int) -> DecodeOutcome:
    try:
        envelope = parse_envelope(raw_value)
    except EnvelopeError as exc:
        return DecodeOutcome([], [make_dead_letter(stage="envelope", reason_code=exc.code, reason=exc.reason, failed_at=now_ms, raw_value=raw_value)])
    decoder = None
    try:
        if len(envelope.payload) > registry.max_payload_bytes:
            raise DecodeError(
                "payload_too_large",
                f"payload is {len(envelope.payload)} bytes, the limit is {registry.max_payload_bytes} bytes",
                stage="envelope",
            )
        identity = resolve_identity(envelope, registry.devices)
        decoder = registry.decoder_for(identity, envelope.payload)
        decoded = decoder.decode(envelope, identity)
        records, texts, letters = [], [], []
        for item in decoded:
            if isinstance(item, dict):
                try:
                    check_record(item)
                    text = _telemetry_text(item)
                except DecodeError as exc:
                    if len(decoded) == 1:
                        raise
                    letters.append(_letter(exc, envelope, decoder, now_ms))
                    continue
                records.append(item)
                texts.append(text)
            else:
                letters.append(_letter(item.error, envelope, decoder, now_ms, row=item.row, payload=item.payload))
        return DecodeOutcome(records, letters, texts)
    except DecodeError as exc:
        return DecodeOutcome([], [_letter(exc, envelope, decoder, now_ms)])


def _telemetry_text(record: dict) -> str:
    """The record as telemetry JSON; a value JSON cannot carry (a lone surrogate in a string, say)
    breaks the contract."""
    try:
        return telemetry_to_json(record)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise DecodeError("unserializable", f"the record cannot be written as JSON: {bounded_repr(str(exc))}", stage="contract") from None


def _letter(exc: DecodeError, envelope: RawEnvelope, decoder, now_ms: int, row: int | None = None, payload: bytes | None = None) -> dict:
    if exc.code == INVALID_DEVICE_ID:
        # The letter names no device: the job counts dead letters per device (communication
        # quality, device_state), and an id that breaks the rule must not become one there.
        envelope = replace(envelope, device_id=None)
    return make_dead_letter(
        stage=exc.stage,
        reason_code=exc.code,
        reason=exc.reason,
        failed_at=now_ms,
        envelope=envelope,
        spec_id=getattr(decoder, "spec_id", None),
        spec_version=getattr(decoder, "spec_version", None),
        row=row,
        payload=payload,
    )
