import orjson
import pytest

from operators.dead_letter import dead_letter_to_json
from operators.decode import DecoderRegistry, decode_raw_record
from operators.envelope import RawEnvelope, build_envelope
from operators.telemetry import telemetry_to_json

NOW = 1_756_653_800_000
TS = 1_756_653_767_451


def raw(payload, **hints):
    fields = {"source": "kafka", "received_at": NOW, "device_id": "dev-1", "product_id": "prod-a", "format": "json"}
    fields.update(hints)
    if isinstance(payload, dict):
        payload = orjson.dumps(payload)
    return build_envelope(RawEnvelope(payload=payload, **{k: v for k, v in fields.items() if v is not None}))


def decode(value):
    return decode_raw_record(value, DecoderRegistry(), NOW)


def test_client_json_shape_becomes_a_standard_record():
    payload = {
        "hub_timestamp": TS + 3,
        "device_timestamp": TS,
        "data": {"metrics": {"tempC": 26.3, "rpm": 1200, "door": True, "mode": "eco", "spare": None}},
        "nodes": [{"device_id": "child-01", "role": "EndDevice", "parent": "hub-01"}],
    }
    out = decode(raw(payload, device_id=None, mqtt_topic="iotlink/stg/hub-01/child-01/periodic/pub/telemetry/json"))
    assert out.dead_letter is None
    assert out.records == [
        {
            "device_id": "child-01",
            "product_id": "prod-a",
            "device_ts": TS,
            "ingest_ts": NOW,
            "metrics": {"tempC": 26.3, "rpm": 1200, "door": True, "mode": "eco"},
            "hub_id": "hub-01",
            "child_device_id": "child-01",
            "hub_ts": TS + 3,
        }
    ]


def test_missing_device_timestamp_uses_ingest_time_and_iso_is_accepted():
    assert decode(raw({"data": {"metrics": {"t": 1}}})).records[0]["device_ts"] == NOW
    iso = decode(raw({"device_timestamp": "2025-08-31T15:22:47.451Z", "data": {"metrics": {"t": 1}}}))
    assert iso.records[0]["device_ts"] == TS


def test_standalone_device_has_no_child_id():
    out = decode(raw({"data": {"metrics": {"t": 1}}}, device_id=None, mqtt_topic="iotlink/prd/nohub/d9/periodic/pub/telemetry/json"))
    record = out.records[0]
    assert record["device_id"] == "d9" and record["hub_id"] == "nohub" and "child_device_id" not in record


@pytest.mark.parametrize(
    ("value", "stage", "code", "fragment"),
    [
        (b"\xff\xfe garbage", "envelope", "invalid_envelope", "not a JSON envelope"),
        (raw(b"{not json"), "parse", "invalid_json", "not valid JSON"),
        (raw(b"[1, 2]"), "parse", "invalid_json", "JSON list"),
        (raw({"device_timestamp": TS}), "parse", "missing_field", "'data'"),
        (raw({"data": {"metrics": "oops"}}), "parse", "missing_field", "data.metrics"),
        (raw({"data": {"metrics": {}}}), "contract", "empty_metrics", "no values"),
        (raw({"data": {"metrics": {"t": [1]}}}), "parse", "invalid_metric", "'t' is a list"),
        (raw({"device_timestamp": 5, "data": {"metrics": {"t": 1}}}), "contract", "implausible_timestamp", "before 2000"),
        (raw({"device_timestamp": NOW + 2 * 86400000, "data": {"metrics": {"t": 1}}}), "contract", "implausible_timestamp", "ahead"),
        (raw({"device_timestamp": "yesterday", "data": {"metrics": {"t": 1}}}), "parse", "invalid_timestamp", "yesterday"),
        (raw({"data": {"bin": "0102"}}), "spec_selection", "no_decoder_spec", "data.bin"),
        (raw(b"\x01\x02", format="bin"), "spec_selection", "no_decoder_spec", "'bin'"),
        (raw({"data": {"metrics": {"t": 1}}}, product_id=None), "spec_selection", "unknown_product", "dev-1"),
        (raw({"data": {"metrics": {"t": 1}}}, device_id=None), "spec_selection", "unknown_device", "no device id"),
        (raw({"data": {"metrics": {"t": 1}}}, mqtt_topic="iotlink/x"), "spec_selection", "invalid_topic", "levels"),
        (
            raw({"data": {"metrics": {"t": 1}}}, mqtt_topic="iotlink/dev/nohub/other/periodic/pub/telemetry/json"),
            "spec_selection", "device_mismatch", "'other'",
        ),
    ],
)
def test_rejections_keep_the_payload_and_say_why(value, stage, code, fragment):
    out = decode(value)
    assert out.records == []
    letter = out.dead_letter
    assert (letter["stage"], letter["reason_code"]) == (stage, code)
    assert fragment in letter["reason"]
    assert letter["failed_at"] == NOW
    if stage == "envelope":
        assert letter["payload_encoding"] == "base64"
    else:
        original = orjson.loads(value)
        assert (letter["payload"], letter["payload_encoding"]) == (original["payload"], original["payload_encoding"])
        assert letter["received_at"] == NOW


def test_product_decoder_overrides_format_default():
    class Fixed:
        def decode(self, envelope, identity):
            return [{"device_id": identity.device_id, "product_id": identity.product_id, "device_ts": TS, "ingest_ts": NOW,
                     "metrics": {"len": len(envelope.payload)}}]

    registry = DecoderRegistry(by_product={"product_a": Fixed()})
    out = decode_raw_record(raw(b"\x00\x01\x02", product_id="product_a", format="bin"), registry, NOW)
    assert out.records[0]["metrics"] == {"len": 3}


def client_payload(device_timestamp=b"1756653767451", hub_timestamp=b"1756653767454") -> bytes:
    return b'{"hub_timestamp":' + hub_timestamp + b',"device_timestamp":' + device_timestamp + b',"data":{"metrics":{"tempC":1}}}'


@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        # A thousand levels of nesting: the reason shows a few of them (repr would recurse and raise).
        (raw(client_payload(device_timestamp=b"[" * 1000 + b"]" * 1000)), "invalid_timestamp", "device_timestamp [[[[...]]]] is not"),
        # A number JSON holds but no sink stores as an integer.
        (raw(client_payload(hub_timestamp=b"1e300")), "value_out_of_range", "hub_ts <997-bit integer> is beyond a 64-bit integer"),
        # An envelope whose fields are not the strings they should be.
        (b'{"v":1,"payload":"{}","source":["a"],"received_at":1}', "invalid_envelope", "envelope source ['a'] is not one of"),
    ],
)
def test_hostile_values_become_dead_letters_with_a_short_reason(value, code, fragment):
    out = decode(value)
    assert out.records == [] and len(out.dead_letters) == 1
    letter = out.dead_letter
    assert (letter["reason_code"], fragment in letter["reason"]) == (code, True), letter["reason"]
    assert len(letter["reason"]) < 300


def test_a_decoder_failing_unforeseen_is_a_dead_letter_not_an_exception():
    class Broken:
        def decode(self, envelope, identity):
            return [{}.fromkeys(range(3))[7]]  # a KeyError no rule of ours anticipates

    value = raw(b"\x00\x01", product_id="product_a", format="bin")
    out = decode_raw_record(value, DecoderRegistry(by_product={"product_a": Broken()}), NOW)
    assert out.records == []
    assert (out.dead_letter["stage"], out.dead_letter["reason_code"]) == ("internal", "internal_error")
    assert "KeyError: 7" in out.dead_letter["reason"]
    letter = orjson.loads(dead_letter_to_json(out.dead_letter))
    assert letter["payload"] == value.decode()  # the raw record, kept whole



def test_the_telemetry_text_of_each_record_is_made_once_by_the_decoder():
    out = decode(raw(client_payload()))
    assert out.texts == [telemetry_to_json(r) for r in out.records] and len(out.texts) == 1


PAYLOAD = {"device_timestamp": TS, "data": {"metrics": {"t": 1}}}


@pytest.mark.parametrize(
    ("hints", "fragment"),
    [
        ({"device_id": ".."}, "envelope device_id '..' is a path segment"),
        ({"device_id": "x" * 10_240}, "envelope device_id of 10240 characters is longer than the limit of 128"),
        ({"device_id": "dev 1"}, "envelope device_id 'dev 1' has ' ' (U+0020) at offset 3"),
        ({"device_id": 'dev"1'}, "has '\"' (U+0022) at offset 3"),
        ({"device_id": "..%2F..\\etc"}, "has the path separator '\\\\' at offset 7"),
        ({"device_id": "dev-1", "hub_id": "hub/1"}, "envelope hub_id 'hub/1' has the path separator '/' at offset 3"),
        ({"device_id": None, "mqtt_topic": "iotlink/prd/nohub/dev%2F1/periodic/pub/telemetry/json"}, "device_id 'dev%2F1' has the percent-encoding"),
    ],
)
def test_an_envelope_whose_device_id_breaks_the_rule_is_a_dead_letter_naming_no_device(hints, fragment):
    """A record that reached iotlink.raw without a bridge meets the bridges' rule in the decoder."""
    out = decode(raw(PAYLOAD, **hints))
    assert out.records == []
    letter = out.dead_letter
    assert (letter["stage"], letter["reason_code"]) == ("envelope", "invalid_device_id")
    assert fragment in letter["reason"] and len(letter["reason"]) < 400
    # No device: the job counts dead letters per device (communication quality, device state).
    assert letter["device_id"] is None
    assert orjson.loads(letter["payload"]) == PAYLOAD  # the original payload, not the envelope
    assert letter["product_id"] == "prod-a"
    dead_letter_to_json(letter)


def test_valid_ids_from_envelope_and_topic_still_decode():
    out = decode(raw(PAYLOAD, device_id="dev@site:3_x.y", hub_id="nohub"))
    assert out.dead_letter is None and out.records[0]["device_id"] == "dev@site:3_x.y"
