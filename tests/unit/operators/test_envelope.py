import base64

import orjson
import pytest

from operators.envelope import EnvelopeError, RawEnvelope, build_envelope, parse_envelope


def test_text_payload_round_trips_byte_exact():
    env = RawEnvelope(payload='{"a": "ü"}'.encode(), source="mqtt", received_at=1756653767451,
                      mqtt_topic="iotlink/dev/nohub/d1/periodic/pub/telemetry/json", device_id="d1", product_id="prod-a")
    raw = build_envelope(env)
    doc = orjson.loads(raw)
    assert doc["payload_encoding"] == "utf8"
    assert parse_envelope(raw) == env


def test_binary_payload_is_base64_and_round_trips():
    payload = bytes(range(256))
    raw = build_envelope(RawEnvelope(payload=payload, source="tcp", received_at=1, format="bin"))
    doc = orjson.loads(raw)
    assert doc["payload_encoding"] == "base64"
    assert base64.b64decode(doc["payload"]) == payload
    assert parse_envelope(raw).payload == payload


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not a JSON envelope"),
        (b"[1]", "JSON list"),
        (b'{"v": 2, "source": "mqtt", "received_at": 1, "payload": ""}', "version 2"),
        (b'{"v": 1, "source": "smtp", "received_at": 1, "payload": ""}', "source 'smtp'"),
        (b'{"v": 1, "source": "mqtt", "received_at": "now", "payload": ""}', "received_at"),
        (b'{"v": 1, "source": "mqtt", "received_at": 1}', "no payload"),
        (b'{"v": 1, "source": "mqtt", "received_at": 1, "payload": "!!", "payload_encoding": "base64"}', "base64"),
        (b'{"v": 1, "source": "mqtt", "received_at": 1, "payload": "", "device_id": 5}', "device_id"),
    ],
)
def test_invalid_envelopes_name_the_problem(raw, fragment):
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(raw)
    assert fragment in info.value.reason


def test_build_rejects_unknown_source():
    with pytest.raises(EnvelopeError):
        build_envelope(RawEnvelope(payload=b"", source="ftp", received_at=1))


def test_a_base64_payload_with_characters_outside_ascii_is_an_invalid_envelope():
    raw = orjson.dumps({"v": 1, "source": "mqtt", "received_at": 1756653767451, "payload": "AAé=", "payload_encoding": "base64"})
    with pytest.raises(EnvelopeError, match="envelope payload is not valid base64"):
        parse_envelope(raw)
