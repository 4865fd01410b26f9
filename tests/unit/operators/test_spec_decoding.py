"""Spec decoders end to end: envelope -> decode_raw_record -> records and dead letters."""

import base64
import hashlib
import struct
from pathlib import Path

import orjson
import pytest

from operators.dead_letter import MAX_FULL_PAYLOAD, TRUNCATED_PAYLOAD
from operators.decode import DecoderRegistry, DeviceInfo, decode_raw_record
from operators.envelope import RawEnvelope, build_envelope
from operators.spec_loading import build_registry, load_spec_text, load_specs

ROOT = Path(__file__).resolve().parents[3]
NOW = 1_772_359_300_000  # 2026-03-01T10:01:40Z
FAILED_AT = NOW + 7
DEVICES = {
    "dev-a": DeviceInfo("product_a", "acme"),
    "dev-fire": DeviceInfo("fire_sensor", "safety-co"),
    "dev-no-tenant": DeviceInfo("product_a"),
}
FIRE_NORMAL = bytes.fromhex("01002A69A40E200000089D088404D2000C0004000069F3016301190023007803B6000005D5")
FIRE_BAD_CRC = bytes.fromhex("01002A69A40E200000089D088404D2000C0004000069F3016301190023007803B60000052A")
FIRE_OUT_OF_RANGE = bytes.fromhex("01002D69A40ED400000C300BB804B0000A0005000003E804B0FF38000A000A038400000BF6")


@pytest.fixture(scope="module")
def shipped():
    return {item.spec_id: item for item in load_specs([ROOT / "yaml_specs"])}


@pytest.fixture(scope="module")
def registry(shipped):
    return build_registry(list(shipped.values()), DEVICES)


def envelope(payload: bytes, *, product_id: str | None = None, device_id: str | None = "dev-1", **hints) -> bytes:
    fields = {"device_id": device_id, "product_id": product_id, **hints}
    return build_envelope(
        RawEnvelope(payload=payload, source="kafka", received_at=NOW, **{k: v for k, v in fields.items() if v is not None})
    )


def decode(registry, payload: bytes, **kw):
    return decode_raw_record(envelope(payload, **kw), registry, FAILED_AT)


def only_letter(out) -> dict:
    assert out.records == []
    assert len(out.dead_letters) == 1
    return out.dead_letters[0]


def spec_registry(text: str, devices=None) -> DecoderRegistry:
    return build_registry([load_spec_text(text, "inline.yaml")], devices)


def letter_payload(letter: dict) -> bytes:
    if letter["payload_encoding"] == "base64":
        return base64.b64decode(letter["payload"])
    return letter["payload"].encode("utf-8")


# --- records -------------------------------------------------------------------------------


def test_product_a_record_is_complete(registry, shipped):
    out = decode(registry, bytes.fromhex("00FD3C"), product_id="product_a", format="bin")
    assert out.dead_letters == []
    assert out.records == [
        {
            "device_id": "dev-1",
            "product_id": "product_a",
            "device_ts": NOW,
            "ingest_ts": NOW,
            "metrics": {"temperature": 25.3, "humidity": 60},
            "units": {"temperature": "celsius", "humidity": "percent"},
            "spec_id": "product_a",
            "spec_version": shipped["product_a"].decoder.spec_version,
        }
    ]
    assert shipped["product_a"].decoder.spec_version.startswith("sha256:")
    assert len(shipped["product_a"].decoder.spec_version) == len("sha256:") + 12


def test_hex_text_payload_is_the_same_reading(registry):
    for text in (b"00FD3C", b"00fd3c", b"0x00FD3C", b"00 FD 3C", b" 00FD3C\n"):
        out = decode(registry, text, product_id="product_a")
        assert out.records[0]["metrics"] == {"temperature": 25.3, "humidity": 60}, text


def test_device_registry_resolves_product_and_tenant(registry):
    out = decode(registry, bytes.fromhex("00FD3C"), device_id="dev-a")
    [record] = out.records
    assert (record["device_id"], record["product_id"], record["tenant"]) == ("dev-a", "product_a", "acme")
    # No tenant in the registry: ${device.tenant} resolves to nothing and the field is left out.
    [plain] = decode(registry, bytes.fromhex("00FD3C"), device_id="dev-no-tenant").records
    assert "tenant" not in plain and plain["product_id"] == "product_a"
    # The envelope's product hint wins over the registry; the tenant still comes from the registry.
    [hinted] = decode(registry, b"timestamp,temp,hum\n2026-03-01 10:00:00,1,2\n", device_id="dev-a", product_id="product_d").records
    assert (hinted["product_id"], hinted["tenant"], hinted["spec_id"]) == ("product_d", "acme", "product_d")


def test_device_from_the_mqtt_topic_is_looked_up_in_the_registry(registry):
    out = decode(registry, bytes.fromhex("00FD3C"), device_id=None, mqtt_topic="iotlink/prd/nohub/dev-a/periodic/pub/telemetry/bin")
    [record] = out.records
    assert (record["device_id"], record["hub_id"], record["tenant"], record["product_id"]) == ("dev-a", "nohub", "acme", "product_a")


def test_unknown_device_without_product_is_a_spec_selection_dead_letter(registry):
    letter = only_letter(decode(registry, bytes.fromhex("00FD3C"), device_id="stranger"))
    assert (letter["stage"], letter["reason_code"]) == ("spec_selection", "unknown_product")
    assert letter["reason"] == "no product id for device 'stranger': not in the envelope and not in the device registry"
    assert (letter["spec_id"], letter["spec_version"]) == (None, None)


def test_tenant_template_with_literal_text():
    spec = """
product_type: p
format: hex_binary
conversion: [{field: v, offset: 0, type: uint8}]
output_schema:
  tenant: "tenant-${device.tenant}"
  device_id: "${device.product}/${device.id}"
  metrics: "${converted_fields}"
"""
    reg = spec_registry(spec, {"d1": DeviceInfo("p", "acme"), "d2": DeviceInfo("p")})
    [record] = decode(reg, b"\x05", device_id="d1", format="bin").records
    assert (record["tenant"], record["device_id"], record["metrics"]) == ("tenant-acme", "p/d1", {"v": 5})
    # A template with an unresolved part resolves to nothing, not to "tenant-None".
    [other] = decode(reg, b"\x05", device_id="d2", format="bin").records
    assert "tenant" not in other


def test_quality_out_of_range_is_kept_on_the_record(registry):
    [record] = decode(registry, FIRE_OUT_OF_RANGE, product_id="fire_sensor", format="bin").records
    assert record["metrics"]["voltage"] == 312.0
    assert record["metrics"]["pcb_temperature"] == 120.0
    assert record["metrics"]["sensor_temperature"] == -20.0
    assert record["quality"] == [
        {"metric": "voltage", "issue": "out_of_range", "value": 312.0, "min": 0.0, "max": 300.0},
        {"metric": "pcb_temperature", "issue": "out_of_range", "value": 120.0, "min": -10.0, "max": 100.0},
        {"metric": "sensor_temperature", "issue": "out_of_range", "value": -20.0, "min": -10.0, "max": 100.0},
    ]
    assert record["device_ts"] == 0x69A40ED4 * 1000 == 1_772_359_380_000


def test_in_range_record_has_no_quality(registry):
    [record] = decode(registry, FIRE_NORMAL, product_id="fire_sensor", format="bin").records
    assert "quality" not in record
    assert record["device_ts"] == 1_772_359_200_000
    assert "timestamp" not in record["metrics"]
    assert (record["spec_id"], record["spec_version"]) == ("fire_sensor_bin", "1")


def test_json_spec_maps_paths_and_flags_quality(registry):
    payload = orjson.dumps({"deviceId": "fire-0003", "idx": 44, "status": 4100, "volt": 310, "timestamp": 1772359320000})
    [record] = decode(registry, payload, device_id="dev-fire", format="json").records
    assert record["device_id"] == "fire-0003"  # output_schema device_id: ${payload.deviceId}
    assert record["tenant"] == "safety-co"
    assert record["device_ts"] == 1_772_359_320_000
    assert (record["metrics"]["voltage"], record["metrics"]["communication_error"], record["metrics"]["overcurrent"]) == (310.0, True, True)
    assert record["quality"] == [{"metric": "voltage", "issue": "out_of_range", "value": 310.0, "min": 0.0, "max": 300.0}]
    assert (record["spec_id"], record["spec_version"]) == ("fire_sensor_json", "1")


# --- spec selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "hints", "spec_id"),
    [
        (FIRE_NORMAL, {"format": "bin"}, "fire_sensor_bin"),
        (FIRE_NORMAL.hex().encode(), {"format": "hex"}, "fire_sensor_bin"),
        (FIRE_NORMAL, {}, "fire_sensor_bin"),  # first byte 0x01: binary
        (b'{"deviceId": "f", "status": 0, "volt": 230, "timestamp": 1772359200000}', {"format": "json"}, "fire_sensor_json"),
        (b'  {"deviceId": "f", "status": 0, "volt": 230, "timestamp": 1772359200000}', {}, "fire_sensor_json"),  # first byte "{"
        (FIRE_NORMAL, {"mqtt_topic": "iotlink/prd/nohub/dev-1/periodic/pub/telemetry/bin"}, "fire_sensor_bin"),
        (
            b'{"deviceId": "f", "status": 0, "volt": 230, "timestamp": 1772359200000}',
            {"mqtt_topic": "iotlink/prd/nohub/dev-1/periodic/pub/telemetry/json"},
            "fire_sensor_json",
        ),
    ],
)
def test_spec_selection_among_two_specs_of_one_product(registry, payload, hints, spec_id):
    out = decode(registry, payload, product_id="fire_sensor", **hints)
    assert out.dead_letters == []
    assert [r["spec_id"] for r in out.records] == [spec_id]
    assert out.records[0]["metrics"]["voltage"] in (220.5, 230.0)


def test_format_hint_wins_over_the_first_byte(registry):
    # The hint says binary: the JSON text goes to the binary spec, which looks for the client's wrapper.
    letter = only_letter(decode(registry, b'{"deviceId": "f"}', product_id="fire_sensor", format="bin"))
    assert (letter["stage"], letter["reason_code"], letter["spec_id"]) == ("parse", "missing_field", "fire_sensor_bin")
    assert letter["reason"] == "JSON payload has no data.bin string with the binary data"
    # The hint says JSON: a binary frame goes to the JSON spec.
    letter = only_letter(decode(registry, FIRE_NORMAL, product_id="fire_sensor", format="json"))
    assert (letter["reason_code"], letter["spec_id"]) == ("invalid_json", "fire_sensor_json")


def test_no_spec_for_the_hinted_format(registry):
    letter = only_letter(decode(registry, b"a,b\n1,2\n", product_id="fire_sensor", format="csv"))
    assert (letter["stage"], letter["reason_code"]) == ("spec_selection", "no_decoder_spec")
    assert letter["reason"] == "product 'fire_sensor' has no csv spec (has: hex_binary, json)"
    assert (letter["spec_id"], letter["spec_version"]) == (None, None)


def test_product_without_spec_gets_no_decoder_spec(registry):
    letter = only_letter(decode(registry, b"\x01\x02", product_id="product_z", format="bin"))
    assert (letter["stage"], letter["reason_code"]) == ("spec_selection", "no_decoder_spec")
    assert letter["reason"] == "no decoder for product 'product_z' in format 'bin': add a YAML spec"


# --- malformed binary payloads -------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"00FD", bytes.fromhex("00FD")], ids=["hex text", "raw bytes"])
def test_truncated_payload(registry, shipped, payload):
    letter = only_letter(decode(registry, payload, product_id="product_a"))
    assert (letter["stage"], letter["reason_code"]) == ("parse", "truncated")
    assert letter["reason"] == "field humidity: needs 1 byte at offset 2, payload has 2 bytes"
    assert (letter["spec_id"], letter["spec_version"]) == ("product_a", shipped["product_a"].decoder.spec_version)
    assert letter_payload(letter) == payload
    assert letter["payload_encoding"] == ("utf8" if payload == b"00FD" else "base64")
    assert (letter["failed_at"], letter["received_at"], letter["device_id"], letter["product_id"]) == (FAILED_AT, NOW, "dev-1", "product_a")


def test_wrong_checksum(registry):
    letter = only_letter(decode(registry, FIRE_BAD_CRC, product_id="fire_sensor", format="bin"))
    assert (letter["stage"], letter["reason_code"]) == ("checksum", "checksum_mismatch")
    assert letter["reason"] == "crc16_modbus over bytes 0..34 is 0xD505, payload carries 0x2A05 at offset 35"
    assert (letter["spec_id"], letter["spec_version"]) == ("fire_sensor_bin", "1")
    assert letter_payload(letter) == FIRE_BAD_CRC


def test_short_frame_is_truncated_not_a_checksum_error(registry):
    letter = only_letter(decode(registry, FIRE_NORMAL[:8], product_id="fire_sensor", format="bin"))
    assert (letter["stage"], letter["reason_code"]) == ("parse", "truncated")
    assert letter["reason"] == "field status: needs 2 bytes at offset 7, payload has 8 bytes"


def test_trailing_bytes_are_rejected_when_the_spec_says_so(registry):
    # fire_sensor_bin: trailing_bytes reject; an extra byte also moves the CRC (at: -2), which is checked first.
    letter = only_letter(decode(registry, FIRE_NORMAL + b"\x01", product_id="fire_sensor", format="bin"))
    assert (letter["stage"], letter["reason_code"]) == ("checksum", "checksum_mismatch")
    assert letter["reason"] == "crc16_modbus over bytes 0..35 is 0x00D5, payload carries 0x01D5 at offset 36"
    spec = """
product_type: p
format: hex_binary
trailing_bytes: reject
conversion: [{field: v, offset: 0, type: uint16}]
"""
    letter = only_letter(decode(spec_registry(spec), b"\x00\x01\x02", product_id="p", format="bin"))
    assert (letter["reason_code"], letter["reason"]) == ("trailing_bytes", "1 byte after the last field (offset 2), payload has 3 bytes")
    [record] = decode(spec_registry(spec.replace("reject", "ignore")), b"\x00\x01\x02", product_id="p", format="bin").records
    assert record["metrics"] == {"v": 1}


@pytest.mark.parametrize("padding", [b"\x00", b"\x00\x00", b"\x00" * 5])
def test_zero_padded_frame_is_trailing_bytes_although_its_crc_still_matches(registry, padding):
    # CRC-16/MODBUS over a frame plus its own CRC is 0 (and stays 0 over more zeros), so a zero-padded
    # frame passes the CRC stored at -2; the unread bytes before that CRC are what gives it away.
    letter = only_letter(decode(registry, FIRE_NORMAL + padding, product_id="fire_sensor", format="bin"))
    n = len(padding)
    assert (letter["stage"], letter["reason_code"]) == ("parse", "trailing_bytes")
    unread = f"{n} byte" if n == 1 else f"{n} bytes"
    assert letter["reason"] == f"{unread} after the last field (offset 35), before the checksum at offset {35 + n}"


@pytest.mark.parametrize(
    ("payload", "hints", "reason"),
    [
        (b"00FDZZ", {"format": "hex"}, "payload is not hex: 'Z' at hex digit 4"),
        (b"hello!", {"format": "hex"}, "payload is not hex: 'h' at hex digit 0"),
        (b"0x00FG3C", {"format": "hex"}, "payload is not hex: 'G' at hex digit 3"),
        (b"00FD3", {"format": "hex"}, "hex text has an odd number of digits (5)"),
        (b"0x00 FD 3", {"format": "hex"}, "hex text has an odd number of digits (5)"),
        (b"0 0FD3C", {}, "hex digits must come in pairs; separators may only stand between whole bytes"),
    ],
)
def test_bad_hex_text(registry, payload, hints, reason):
    letter = only_letter(decode(registry, payload, product_id="product_a", **hints))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("parse", "invalid_hex", reason)
    assert letter_payload(letter) == payload
    assert letter["spec_id"] == "product_a"


def test_non_hex_text_with_input_hex_spec():
    spec = """
product_type: p
format: hex_binary
input: hex
conversion: [{field: v, offset: 0, type: uint8}]
"""
    reg = spec_registry(spec)
    letter = only_letter(decode(reg, b"temp=21", product_id="p"))
    assert (letter["reason_code"], letter["reason"]) == ("invalid_hex", "payload is not hex: 't' at hex digit 0")
    letter = only_letter(decode(reg, b"2A3", product_id="p"))
    assert (letter["reason_code"], letter["reason"]) == ("invalid_hex", "hex text has an odd number of digits (3)")
    assert decode(reg, b"2A", product_id="p").records[0]["metrics"] == {"v": 42}


@pytest.mark.parametrize("payload", [b"", b"   ", b"\r\n"])
def test_empty_payload(registry, shipped, payload):
    letter = only_letter(decode(registry, payload, product_id="product_a"))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("parse", "empty_payload", "payload is empty")
    assert (letter["spec_id"], letter["spec_version"]) == ("product_a", shipped["product_a"].decoder.spec_version)
    assert letter_payload(letter) == payload


def test_hex_text_of_zero_bytes():
    spec = "product_type: p\nformat: hex_binary\nconversion: [{field: v, offset: 0, type: uint8}]\n"
    letter = only_letter(decode(spec_registry(spec), b"0x", product_id="p", format="hex"))
    assert (letter["reason_code"], letter["reason"]) == ("empty_payload", "payload holds no bytes")


def test_two_megabyte_payload_is_rejected_at_the_envelope_stage_and_kept_byte_exact(registry):
    payload = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    assert len(payload) == 2 * 1024 * 1024
    letter = only_letter(decode(registry, payload, product_id="product_a", format="bin"))
    assert (letter["stage"], letter["reason_code"]) == ("envelope", "payload_too_large")
    assert letter["reason"] == "payload is 2097152 bytes, the limit is 1048576 bytes"
    assert (letter["spec_id"], letter["spec_version"]) == (None, None)
    assert letter["payload_encoding"] == "base64"
    assert letter_payload(letter) == payload
    assert "payload_truncated" not in letter


def test_payload_above_four_mebibytes_keeps_its_head_and_says_so(registry):
    payload = b"0123456789ABCDEF" * (MAX_FULL_PAYLOAD // 16 + 1)
    assert len(payload) > MAX_FULL_PAYLOAD
    letter = only_letter(decode(registry, payload, product_id="product_a", format="hex"))
    assert (letter["stage"], letter["reason_code"]) == ("envelope", "payload_too_large")
    assert letter["payload_truncated"] is True
    assert letter["payload_size"] == len(payload)
    assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert letter["payload_encoding"] == "utf8"
    assert letter_payload(letter) == payload[:TRUNCATED_PAYLOAD]


def test_spec_payload_limit_below_the_registry_limit():
    spec = "product_type: p\nformat: hex_binary\nmax_payload_bytes: 4\nconversion: [{field: v, offset: 0, type: uint8}]\n"
    letter = only_letter(decode(spec_registry(spec), b"\x01\x02\x03\x04\x05", product_id="p", format="bin"))
    assert (letter["stage"], letter["reason_code"], letter["spec_id"]) == ("envelope", "payload_too_large", "inline")
    assert letter["reason"] == "payload is 5 bytes, the limit is 4 bytes"


# --- key-value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_payload", "metrics"),
    [
        ("000100FD00023C", {"temperature": 25.3, "humidity": 60}),
        ("00023C000100FD", {"humidity": 60, "temperature": 25.3}),
        ("00023C", {"humidity": 60}),
        ("0001FF9C", {"temperature": -10.0}),
    ],
)
def test_key_value_in_any_order(registry, hex_payload, metrics):
    [record] = decode(registry, bytes.fromhex(hex_payload), product_id="product_b").records
    assert record["metrics"] == metrics
    assert list(record["metrics"]) == list(metrics)


@pytest.mark.parametrize(
    ("hex_payload", "code", "reason"),
    [
        ("000100FD000100FE", "duplicate_key", "key 0x0001 (temperature) appears twice, at offsets 0 and 4"),
        ("00023C000100FD00023D", "duplicate_key", "key 0x0002 (humidity) appears twice, at offsets 0 and 7"),
        ("000100FD00093C", "unknown_key", "unknown key 0x0009 at offset 4 (known keys: 0x0001, 0x0002)"),
        ("FFFF00", "unknown_key", "unknown key 0xFFFF at offset 0 (known keys: 0x0001, 0x0002)"),
        ("000100FD00", "truncated", "key at offset 4: needs 2 bytes, payload has 5 bytes"),
        ("000100", "truncated", "field temperature (key 0x0001): needs 2 bytes at offset 2, payload has 3 bytes"),
    ],
)
def test_key_value_rejections(registry, hex_payload, code, reason):
    letter = only_letter(decode(registry, bytes.fromhex(hex_payload), product_id="product_b"))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("parse", code, reason)
    assert letter["spec_id"] == "product_b"


KV_REPORT = """
product_type: kv
format: hex_binary
parsing_type: key_value
length_prefix: 1
unknown_keys: report
byte_order: little
conversion:
  - {key: 0x10, field: volts, type: uint16, scale: 0.1}
  - {key: 0x11, field: ok, type: bool, required: true}
"""


def test_key_value_with_length_prefix_reports_unknown_keys():
    reg = spec_registry(KV_REPORT)
    [record] = decode(reg, bytes.fromhex("11010142030A0B0C1002FA08"), product_id="kv", format="bin").records
    assert record["metrics"] == {"ok": True, "volts": 229.8}  # 0x08FA little-endian = 2298
    assert record["quality"] == [{"issue": "unknown_key", "key": "0x42", "offset": 3, "value_hex": "0A0B0C"}]


@pytest.mark.parametrize(
    ("hex_payload", "stage", "code", "reason"),
    [
        ("1002FA08", "contract", "missing_field", "required field ok (key 0x11) is not in the payload"),
        ("110201001002FA08", "parse", "invalid_length", "key 0x11 (ok): length 2 at offset 0, its type needs 1"),
        ("4205AABB", "parse", "truncated", "key 0x42: needs 5 bytes at offset 2, payload has 4 bytes"),
        ("11", "parse", "truncated", "key 0x11 at offset 0: length needs 1 byte, payload has 1 byte"),
    ],
)
def test_key_value_with_length_prefix_rejections(hex_payload, stage, code, reason):
    letter = only_letter(decode(spec_registry(KV_REPORT), bytes.fromhex(hex_payload), product_id="kv", format="bin"))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == (stage, code, reason)


# --- hybrid --------------------------------------------------------------------------------

HYBRID_BASE = bytes.fromhex("AA00FD3CAA00018BCD")
DATA_POSITIONS = [1, 2, 3, 5, 6, 7, 8]


def _hybrid_metrics(frame: bytes) -> dict:
    temperature, humidity = struct.unpack(">hB", frame[1:4])
    (pressure,) = struct.unpack(">i", frame[5:9])
    return {"temperature": round(temperature * 0.1, 1), "humidity": humidity, "pressure": round(pressure * 0.01, 2)}


@pytest.mark.parametrize("position", DATA_POSITIONS)
def test_separator_byte_inside_section_data_is_data(registry, position):
    frame = bytearray(HYBRID_BASE)
    frame[position] = 0xAA
    [record] = decode(registry, bytes(frame), product_id="product_c").records
    assert record["metrics"] == _hybrid_metrics(bytes(frame))


def test_separator_byte_in_every_data_position_at_once(registry):
    frame = bytes([0xAA] * 9)
    [record] = decode(registry, frame, product_id="product_c").records
    assert record["metrics"] == {"temperature": -2184.6, "humidity": 170, "pressure": -14316557.66}
    assert record["metrics"] == _hybrid_metrics(frame)


def test_hybrid_base_frame_and_rejections(registry):
    assert _hybrid_metrics(HYBRID_BASE) == {"temperature": 25.3, "humidity": 60, "pressure": 1013.25}
    [record] = decode(registry, HYBRID_BASE, product_id="product_c").records
    assert record["metrics"] == {"temperature": 25.3, "humidity": 60, "pressure": 1013.25}
    cases = [
        ("AA00FD3C", "truncated", "section 2: expected separator 0xAA at offset 4, payload ends after 4 bytes"),
        ("AA00FD3CAB00018BCD", "missing_separator", "section 2: expected separator 0xAA at offset 4, found 0xAB"),
        ("BB00FD3CAA00018BCD", "missing_separator", "section 1: expected separator 0xAA at offset 0, found 0xBB"),
        ("AA00FD3CAA00018B", "truncated", "section 2: field pressure: needs 4 bytes at offset 5, payload has 8 bytes"),
    ]
    for hex_payload, code, reason in cases:
        letter = only_letter(decode(registry, bytes.fromhex(hex_payload), product_id="product_c"))
        assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("parse", code, reason), hex_payload


TAGGED = """
product_type: tagged
format: hex_binary
parsing_type: hybrid
separator: 0x7E
section_order: tagged
sections:
  - section_id: 1
    conversion: [{field: a, offset: 0, type: uint16}]
  - section_id: 2
    required: false
    conversion: [{field: b, offset: 0, type: uint8}]
"""


@pytest.mark.parametrize(
    ("hex_payload", "metrics"),
    [
        ("7E01007E", {"a": 126}),
        ("7E027E7E017E7E", {"b": 126, "a": 32382}),
        ("7E017E01", {"a": 32257}),
    ],
)
def test_tagged_sections_in_any_order_with_separator_values_as_data(hex_payload, metrics):
    [record] = decode(spec_registry(TAGGED), bytes.fromhex(hex_payload), product_id="tagged", format="bin").records
    assert record["metrics"] == metrics


@pytest.mark.parametrize(
    ("hex_payload", "code", "reason"),
    [
        ("7E027E", "missing_section", "required section 1 is not in the payload"),
        ("7E0300", "unknown_section", "unknown section id 3 at offset 1 (known: 1, 2)"),
        ("7E0100017E010002", "duplicate_section", "section 1 appears twice (second at offset 4)"),
        ("7E01000101", "missing_separator", "section ?: expected separator 0x7E at offset 4, found 0x01"),
        ("7E0100017E", "truncated", "separator at offset 4 has no section id after it"),
    ],
)
def test_tagged_section_rejections(hex_payload, code, reason):
    letter = only_letter(decode(spec_registry(TAGGED), bytes.fromhex(hex_payload), product_id="tagged", format="bin"))
    assert (letter["reason_code"], letter["reason"]) == (code, reason)


# --- CSV -----------------------------------------------------------------------------------


def test_csv_bad_row_among_good_rows(registry, shipped):
    payload = b"temp,hum\n25.5,60\nabc,61\n26.0,62\n27.0\n\n28.5,64\n"
    out = decode(registry, payload, product_id="product_d", format="csv")
    assert [r["metrics"] for r in out.records] == [
        {"temperature": 25.5, "humidity": 60.0},
        {"temperature": 26.0, "humidity": 62.0},
        {"temperature": 28.5, "humidity": 64.0},
    ]
    assert all(r["spec_id"] == "product_d" for r in out.records)
    version = shipped["product_d"].decoder.spec_version
    assert [(d["row"], d["stage"], d["reason_code"], d["reason"], d["payload"], d["spec_id"], d["spec_version"]) for d in out.dead_letters] == [
        (2, "parse", "invalid_metric", "row 2: column temp 'abc' is not a number", "temp,hum\nabc,61\n", "product_d", version),
        (4, "parse", "missing_column", "row 4: has 1 columns, column 2 is needed", "temp,hum\n27.0\n", "product_d", version),
    ]


def test_csv_rejected_row_can_be_replayed_on_its_own(registry):
    out = decode(registry, b"temp,hum\r\n25.5,60\r\n\"x\",61\r\n", product_id="product_d", format="csv")
    [letter] = out.dead_letters
    assert letter["payload"] == 'temp,hum\r\n"x",61\r\n'
    replay = decode(registry, letter["payload"].encode(), product_id="product_d", format="csv")
    assert replay.records == []
    assert [(d["row"], d["reason"]) for d in replay.dead_letters] == [(1, "row 1: column temp 'x' is not a number")]


LIMITED_CSV = """
product_type: limited
format: csv
conversion:
  max_rows: 6
  max_columns: 4
  max_rejected_rows: 2
  mapping:
    - {source: temp, target: temperature, type: float}
"""


def test_csv_rows_past_max_rows_go_whole_into_one_letter():
    registry = spec_registry(LIMITED_CSV)
    payload = "temp\n" + "".join(f"{20 + i}\n" for i in range(10))
    out = decode(registry, payload.encode(), product_id="limited", format="csv")
    assert [r["metrics"]["temperature"] for r in out.records] == [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    [letter] = out.dead_letters
    assert (letter["row"], letter["reason_code"]) == (7, "too_many_rows")
    assert letter["payload"] == "temp\n26\n27\n28\n29\n"  # nothing lost: the rest, replayable on its own


def test_csv_rejected_rows_past_max_rejected_rows_are_summarised_in_one_letter():
    registry = spec_registry(LIMITED_CSV)
    out = decode(registry, b"temp\nx1\n20\nx2\nx3\nx4\n,\n", product_id="limited", format="csv")
    assert [r["metrics"]["temperature"] for r in out.records] == [20.0]
    assert [(d["row"], d["reason_code"]) for d in out.dead_letters] == [
        (1, "invalid_metric"), (3, "invalid_metric"), (4, "too_many_rejected_rows")
    ]
    summary = out.dead_letters[-1]
    assert summary["reason"] == "2 more rows rejected after the first 2 (rows 4–5: invalid_metric ×2); this letter holds them"
    assert summary["payload"] == "temp\nx3\nx4\n"


def test_csv_wider_than_max_columns_is_refused_per_row_and_for_the_header():
    registry = spec_registry(LIMITED_CSV)
    out = decode(registry, b"temp\n1,2,3,4,5\n21\n", product_id="limited", format="csv")
    assert [d["reason"] for d in out.dead_letters] == ["row 1 has 5 columns, the spec reads at most 4 (max_columns)"]
    assert len(out.records) == 1
    wide = ",".join(f"c{i}" for i in range(10_000)) + ",temp\n" + ",".join(["1"] * 10_001) + "\n"
    letter = only_letter(decode(registry, wide.encode(), product_id="limited", format="csv"))
    assert (letter["reason_code"], letter["reason"]) == ("too_many_columns", "the header has 10001 columns, the spec reads at most 4 (max_columns)")


def test_a_csv_header_too_long_to_repeat_in_each_letter_rejects_the_payload():
    header = "temp," + ",".join("x" * 40 for _ in range(3))
    registry = spec_registry(LIMITED_CSV.replace("max_columns: 4", "max_columns: 1000"))
    long_header = "temp," + "y" * 20_000
    letter = only_letter(decode(registry, f"{long_header}\n20,1\n".encode(), product_id="limited", format="csv"))
    assert letter["reason_code"] == "header_too_large"
    assert decode(registry, f"{header}\n20,1,2,3\n".encode(), product_id="limited", format="csv").records


@pytest.mark.parametrize(
    ("stamp", "device_ts"),
    [
        ("2026-03-01 10:00:00", 1_772_359_200_000),  # no zone: UTC
        ("2026-03-01T10:00:00Z", 1_772_359_200_000),
        ("2026-03-01T19:00:00+09:00", 1_772_359_200_000),
        ("2026-03-01T05:00:00-05:00", 1_772_359_200_000),
        ("2026-03-01T10:00:00.250+00:00", 1_772_359_200_250),
        ("1772359200", 1_772_359_200_000),
        ("1772359200000", 1_772_359_200_000),
    ],
)
def test_csv_timestamp_column_with_timezone(registry, stamp, device_ts):
    out = decode(registry, f"timestamp,temp,hum\n{stamp},25.5,60\n".encode(), product_id="product_d", format="csv")
    assert out.dead_letters == []
    assert out.records[0]["device_ts"] == device_ts


def test_csv_spec_timezone_applies_to_text_without_a_zone():
    spec = """
product_type: seoul
format: csv
conversion:
  delimiter: ";"
  mapping: [{source: t, target: temperature, type: float}]
  timestamp: {column: when, format: "%d/%m/%Y %H:%M", timezone: Asia/Seoul}
"""
    reg = spec_registry(spec)
    out = decode(reg, b"when;t\n01/03/2026 19:00;1.5\nyesterday;2\n", product_id="seoul", format="csv")
    assert [(r["device_ts"], r["metrics"]) for r in out.records] == [(1_772_359_200_000, {"temperature": 1.5})]
    assert [(d["row"], d["reason_code"], d["reason"]) for d in out.dead_letters] == [
        (2, "invalid_timestamp", "row 2: timestamp column 'yesterday' does not match format '%d/%m/%Y %H:%M'")
    ]


def test_csv_implausible_row_time_is_a_contract_rejection_of_that_row(registry):
    out = decode(registry, b"timestamp,temp,hum\n1999-12-31 00:00:00,1,2\n2026-03-01 10:00:00,3,4\n", product_id="product_d", format="csv")
    assert [r["metrics"] for r in out.records] == [{"temperature": 3.0, "humidity": 4.0}]
    [letter] = out.dead_letters
    assert (letter["row"], letter["stage"], letter["reason_code"]) == (1, "contract", "implausible_timestamp")
    assert letter["reason"] == "row 1: device time 946598400000 is before 2000-01-01 (device clock unset?)"


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"temperature,humidity\n25.5,60\n", "missing_column", "column 'temp' is not in the header (columns: temperature, humidity)"),
        (b"temp,hum\n", "empty_payload", "CSV payload has no data rows"),
        (b"\n\n", "empty_payload", "payload is empty"),
        (b"temp,hum\n\xff\xfe,1\n", "invalid_text", "CSV payload is not UTF-8 text: invalid start byte at byte 9"),
    ],
)
def test_csv_whole_payload_rejections(registry, payload, code, reason):
    letter = only_letter(decode(registry, payload, product_id="product_d", format="csv"))
    assert (letter["reason_code"], letter["reason"]) == (code, reason)
    assert "row" not in letter
    assert letter_payload(letter) == payload


# --- JSON wrapper around binary ------------------------------------------------------------

WRAPPED = """
product_type: wrapped
format: hex_binary
conversion:
  - {field: temperature, offset: 0, type: int16, scale: 0.1}
  - {field: humidity, offset: 2, type: uint8}
output_schema:
  device_id: "${device.id}"
  hub_id: "${payload.hub}"
  timestamp: "${timestamp}"
  hub_timestamp: "${hub_timestamp}"
  metrics: "${converted_fields}"
"""


@pytest.mark.parametrize("data_bin", ["00FD3C", "0x00fd3c", base64.b64encode(bytes.fromhex("00FD3C")).decode()], ids=["hex", "0x-hex", "base64"])
def test_json_wrapper_with_hex_or_base64_data_bin(data_bin):
    payload = orjson.dumps({"hub": "hub-9", "device_timestamp": 1772359200000, "hub_timestamp": "2026-03-01T10:00:05Z", "data": {"bin": data_bin}})
    [record] = decode(spec_registry(WRAPPED), payload, product_id="wrapped", format="json").records
    assert record["metrics"] == {"temperature": 25.3, "humidity": 60}
    assert (record["device_ts"], record["hub_ts"], record["hub_id"]) == (1_772_359_200_000, 1_772_359_205_000, "hub-9")


def test_json_wrapper_on_a_shipped_client_spec(registry):
    for data_bin in ("00FD3C", "AP08"):
        [record] = decode(registry, orjson.dumps({"data": {"bin": data_bin}}), product_id="product_a").records
        assert record["metrics"] == {"temperature": 25.3, "humidity": 60}
        assert record["device_ts"] == NOW  # product_a stamps ${ingest_time}


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b'{"data": {"bin": "not binary!"}}', "invalid_binary", "data.bin is neither hex nor base64"),
        (b'{"data": {"bin": 17}}', "missing_field", "JSON payload has no data.bin string with the binary data"),
        (b'{"data": {}}', "missing_field", "JSON payload has no data.bin string with the binary data"),
        (b'{"data": {"bin": "00FD"}}', "truncated", "field humidity: needs 1 byte at offset 2, payload has 2 bytes"),
    ],
)
def test_json_wrapper_rejections(registry, payload, code, reason):
    letter = only_letter(decode(registry, payload, product_id="product_a"))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("parse", code, reason)
    assert letter_payload(letter) == payload


def test_broken_json_wrapper_with_a_json_hint(registry):
    letter = only_letter(decode(registry, b'{"data": ', product_id="product_a", format="json"))
    assert (letter["stage"], letter["reason_code"]) == ("parse", "invalid_json")
    assert letter["reason"].startswith("payload is not valid JSON: ")


# --- floats --------------------------------------------------------------------------------

FLOATS = """
product_type: floats
format: hex_binary
conversion:
  - {field: level, offset: 0, type: float32}
  - {field: count, offset: 4, type: uint8}
"""


@pytest.mark.parametrize(("raw", "text"), [("7FC00000", "nan"), ("7F800000", "inf"), ("FF800000", "-inf")])
def test_non_finite_float32_becomes_a_quality_issue(raw, text):
    [record] = decode(spec_registry(FLOATS), bytes.fromhex(raw + "07"), product_id="floats", format="bin").records
    assert record["metrics"] == {"count": 7}
    assert record["quality"] == [{"metric": "level", "issue": "not_finite", "value": text}]


def test_float32_is_cleaned_to_its_shortest_decimal():
    [record] = decode(spec_registry(FLOATS), struct.pack(">fB", 27.3, 1), product_id="floats", format="bin").records
    assert record["metrics"] == {"level": 27.3, "count": 1}


def test_only_a_nan_is_an_empty_record():
    spec = "product_type: nan\nformat: hex_binary\nconversion: [{field: level, offset: 0, type: float32}]\n"
    letter = only_letter(decode(spec_registry(spec), bytes.fromhex("7FC00000"), product_id="nan", format="bin"))
    assert (letter["stage"], letter["reason_code"], letter["reason"]) == ("contract", "empty_metrics", "the payload decoded to no metrics")
    assert letter["spec_id"] == "inline"


# --- groups, bits, enums -------------------------------------------------------------------


def test_groups_with_count_field_and_until_end():
    spec = """
product_type: groups
format: hex_binary
conversion:
  - {field: n, offset: 0, type: uint8}
  - group: probe
    offset: 1
    count_field: n
    index_base: 1
    fields:
      - {field: t, offset: 0, type: int8}
  - group: rest
    offset: 3
    until_end: true
    naming: "{field}{index}"
    fields:
      - {field: r, offset: 0, type: uint16}
"""
    reg = spec_registry(spec)
    [record] = decode(reg, bytes.fromhex("02FF0500010002"), product_id="groups", format="bin").records
    assert record["metrics"] == {"n": 2, "probe_1_t": -1, "probe_2_t": 5, "r0": 1, "r1": 2}
    letter = only_letter(decode(reg, bytes.fromhex("02FF05000100"), product_id="groups", format="bin"))
    assert letter["reason"] == "group rest: 1 byte at offset 5 does not fill a 2-byte element"
    letter = only_letter(decode(reg, bytes.fromhex("05FF05"), product_id="groups", format="bin"))
    assert letter["reason"] == "group probe: 5 elements of 1 byte need 5 bytes at offset 1, payload has 3 bytes"


def test_bits_and_enums():
    spec = """
product_type: bits
format: hex_binary
conversion:
  - field: status
    offset: 0
    type: uint8
    keep: false
    bits:
      - {name: alarm, bit: 0}
      - {name: any_fault, mask: 0xF0}
      - {name: mode, start: 1, width: 2, enum: {0: idle, 1: eco, 2: boost}}
  - {field: state, offset: 1, type: uint8, enum: {0: idle, 1: running}}
"""
    reg = spec_registry(spec)
    [record] = decode(reg, bytes.fromhex("1301"), product_id="bits", format="bin").records
    assert record["metrics"] == {"alarm": True, "any_fault": True, "mode": "eco", "state": "running"}
    assert "quality" not in record
    [odd] = decode(reg, bytes.fromhex("0607"), product_id="bits", format="bin").records
    assert odd["metrics"] == {"alarm": False, "any_fault": False, "mode": 3, "state": 7}
    assert odd["quality"] == [
        {"metric": "mode", "issue": "unknown_enum", "value": 3},
        {"metric": "state", "issue": "unknown_enum", "value": 7},
    ]
