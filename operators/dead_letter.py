"""Dead-letter records: what ``iotlink.dlq`` holds for every rejected input.

A dead letter keeps the original payload byte-exact (same ``payload_encoding`` rule as the
raw envelope) and says precisely why it was rejected:

```json
{"v": 1, "failed_at": 1756653767999, "stage": "decode", "reason_code": "invalid_json",
 "reason": "payload is not valid JSON: unexpected character: line 1 column 1 (char 0)",
 "device_id": "dev-7", "product_id": "prod-a", "source": "kafka", "received_at": 1756653767451,
 "mqtt_topic": null, "payload_encoding": "utf8", "payload": "{not json"}
```

When the raw record is not even an envelope, ``payload`` is the whole raw record value.
Records rejected after a spec was chosen also carry ``spec_id`` and ``spec_version``; a
rejected CSV row carries ``row`` (1-based data row) and, as payload, the header plus that row.
Payloads above 4 MiB keep their first 1 MiB, flagged ``payload_truncated`` with the full size
and SHA-256, so one dead letter always fits a Kafka record.
"""

from __future__ import annotations

import hashlib

import orjson

from operators.envelope import RawEnvelope, encode_payload

DEAD_LETTER_VERSION = 1
MAX_FULL_PAYLOAD = 4 * 1024 * 1024
TRUNCATED_PAYLOAD = 1024 * 1024
MAX_REASON_CHARS = 1000


def make_dead_letter(
    *,
    stage: str,
    reason_code: str,
    reason: str,
    failed_at: int,
    envelope: RawEnvelope | None = None,
    raw_value: bytes | None = None,
    spec_id: str | None = None,
    spec_version: str | None = None,
    row: int | None = None,
    payload: bytes | None = None,
) -> dict:
    """Builds a dead-letter record.

    Args:
        stage: Pipeline stage that rejected it: ``envelope``, ``spec_selection``, ``parse``, ``checksum``, ``contract``
            or ``internal`` in the job, ``ingest`` in a bridge.
        reason_code: Short machine-readable reason, e.g. ``invalid_json``.
        reason: Human-readable, precise reason.
        failed_at: Rejection time, epoch ms UTC.
        envelope: The parsed envelope, when the raw record was one.
        raw_value: The raw Kafka value, when it could not be parsed as an envelope.
        spec_id: The decoder spec that rejected it, if one was chosen.
        spec_version: That spec's version.
        row: The rejected row of a multi-row (CSV) payload.
        payload: The bytes to keep instead of the envelope payload (a rejected row).

    Returns:
        The dead letter as a dict.
    """
    if envelope is None and raw_value is None:
        raise ValueError("a dead letter needs the envelope or the raw value")
    if payload is None:
        payload = envelope.payload if envelope is not None else raw_value
    extra: dict = {}
    if len(payload) > MAX_FULL_PAYLOAD:
        extra = {"payload_truncated": True, "payload_size": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
        payload = payload[:TRUNCATED_PAYLOAD]
    encoding, text = encode_payload(payload)
    letter = {
        "v": DEAD_LETTER_VERSION,
        "failed_at": failed_at,
        "stage": stage,
        "reason_code": reason_code,
        # However a reason was made, a letter's reason stays a line, not a copy of the payload.
        "reason": reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…",
        "device_id": envelope.device_id if envelope else None,
        "product_id": envelope.product_id if envelope else None,
        "source": envelope.source if envelope else None,
        "received_at": envelope.received_at if envelope else None,
        "mqtt_topic": envelope.mqtt_topic if envelope else None,
        "spec_id": spec_id,
        "spec_version": spec_version,
        "payload_encoding": encoding,
        "payload": text,
    }
    if row is not None:
        letter["row"] = row
    letter.update(extra)
    return letter


def dead_letter_to_json(record: dict) -> str:
    """Serializes a dead letter for ``iotlink.dlq``."""
    return orjson.dumps(record).decode("utf-8")
