"""The raw envelope: how every payload travels on ``iotlink.raw``.

Bridges (MQTT, TCP, HTTP, file) and the simulator wrap each device payload in one
UTF-8 JSON object, so the original bytes survive byte-exact whatever they are:

```json
{"v": 1, "source": "mqtt", "received_at": 1756653767451,
 "mqtt_topic": "iotlink/prd/nohub/dev-1/periodic/pub/telemetry/json",
 "device_id": "dev-1", "product_id": "prod-a", "hub_id": "nohub", "format": "json",
 "payload_encoding": "utf8", "payload": "{\\"device_timestamp\\": ...}"}
```

``payload_encoding`` is ``utf8`` when the payload is valid UTF-8 text (JSON, CSV, hex text) and
``base64`` otherwise (raw binary). Everything except ``v``, ``source``, ``received_at`` and
``payload`` is optional.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson

from operators.value_repr import bounded_repr

ENVELOPE_VERSION = 1
SOURCES = frozenset({"mqtt", "tcp", "http", "file", "kafka"})
FORMATS = frozenset({"json", "bin", "hex", "csv"})


class EnvelopeError(ValueError):
    """A record on the raw topic is not a valid envelope."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RawEnvelope:
    """One device payload as received by a bridge.

    Attributes:
        payload: The original payload bytes, byte-exact.
        source: Where it entered the platform: mqtt, tcp, http, file or kafka.
        received_at: Receive time at the bridge, epoch milliseconds UTC.
        mqtt_topic: The MQTT topic it was published on, if any.
        device_id: Device id hint from the bridge, if known.
        product_id: Product id hint, if known.
        hub_id: Hub id hint ("nohub" for standalone devices), if known.
        format: Payload format hint: json, bin, hex or csv.
    """

    payload: bytes
    source: str
    received_at: int
    mqtt_topic: str | None = None
    device_id: str | None = None
    product_id: str | None = None
    hub_id: str | None = None
    format: str | None = None


def encode_payload(payload: bytes) -> tuple[str, str]:
    """Returns (encoding, text) for a payload: UTF-8 text as is, anything else base64."""
    try:
        return "utf8", payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(payload).decode("ascii")


def build_envelope(envelope: RawEnvelope) -> bytes:
    """Serializes an envelope to the bytes written to ``iotlink.raw``.

    Args:
        envelope: The envelope to write.

    Returns:
        UTF-8 JSON bytes.

    Raises:
        EnvelopeError: if source or format is not one of the documented values.
    """
    if envelope.source not in SOURCES:
        raise EnvelopeError("invalid_source", f"source {bounded_repr(envelope.source)} is not one of {sorted(SOURCES)}")
    if envelope.format is not None and envelope.format not in FORMATS:
        raise EnvelopeError("invalid_format", f"format {bounded_repr(envelope.format)} is not one of {sorted(FORMATS)}")
    encoding, text = encode_payload(envelope.payload)
    doc: dict[str, object] = {
        "v": ENVELOPE_VERSION,
        "source": envelope.source,
        "received_at": envelope.received_at,
    }
    for name in ("mqtt_topic", "device_id", "product_id", "hub_id", "format"):
        value = getattr(envelope, name)
        if value is not None:
            doc[name] = value
    doc["payload_encoding"] = encoding
    doc["payload"] = text
    return orjson.dumps(doc)


def _optional_str(doc: dict, name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise EnvelopeError("invalid_envelope", f"envelope field {bounded_repr(name)} must be a non-empty string, got {bounded_repr(value)}")
    return value


def parse_envelope(raw: bytes | str) -> RawEnvelope:
    """Parses the bytes of one ``iotlink.raw`` record.

    Args:
        raw: The Kafka record value.

    Returns:
        The envelope with the payload restored to its original bytes.

    Raises:
        EnvelopeError: with a machine-readable code and a precise reason.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError("invalid_envelope", f"raw record is not a JSON envelope: {exc}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("invalid_envelope", f"raw record is a JSON {type(doc).__name__}, not an envelope object")
    version = doc.get("v")
    if version != ENVELOPE_VERSION:
        raise EnvelopeError("unsupported_envelope_version", f"envelope version {bounded_repr(version)} is not {ENVELOPE_VERSION}")
    source = doc.get("source")
    if not isinstance(source, str) or source not in SOURCES:
        raise EnvelopeError("invalid_envelope", f"envelope source {bounded_repr(source)} is not one of {sorted(SOURCES)}")
    received_at = doc.get("received_at")
    if not isinstance(received_at, int) or isinstance(received_at, bool) or received_at <= 0:
        raise EnvelopeError("invalid_envelope", f"envelope received_at {bounded_repr(received_at)} is not epoch milliseconds")
    text = doc.get("payload")
    if not isinstance(text, str):
        raise EnvelopeError("invalid_envelope", "envelope has no payload string")
    encoding = doc.get("payload_encoding", "utf8")
    if encoding == "utf8":
        payload = text.encode("utf-8")
    elif encoding == "base64":
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
            raise EnvelopeError("invalid_envelope", f"envelope payload is not valid base64: {exc}") from None
    else:
        raise EnvelopeError("invalid_envelope", f"payload_encoding {bounded_repr(encoding)} is not utf8 or base64")
    fmt = _optional_str(doc, "format")
    if fmt is not None and fmt not in FORMATS:
        raise EnvelopeError("invalid_envelope", f"envelope format {bounded_repr(fmt)} is not one of {sorted(FORMATS)}")
    return RawEnvelope(
        payload=payload,
        source=source,
        received_at=received_at,
        mqtt_topic=_optional_str(doc, "mqtt_topic"),
        device_id=_optional_str(doc, "device_id"),
        product_id=_optional_str(doc, "product_id"),
        hub_id=_optional_str(doc, "hub_id"),
        format=fmt,
    )
