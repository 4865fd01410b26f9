"""Checksums against their published check values, and checksum verification inside a spec."""

import pytest

from operators.checksums import ALGORITHMS, crc8, crc16_ccitt, crc16_modbus, crc32, sum8, xor8
from operators.decode import DecoderRegistry, decode_raw_record
from operators.envelope import RawEnvelope, build_envelope
from operators.spec_loading import build_registry, load_spec_text
from operators.spec_model import CHECKSUM_ALGORITHMS

CHECK_INPUT = b"123456789"
NOW = 1_772_359_300_000

# The "check" values of the CRC catalogue (CRC-16/MODBUS, CRC-16/IBM-3740 a.k.a. CCITT-FALSE,
# CRC-32/ISO-HDLC, CRC-8/SMBUS); sum8/xor8 worked by hand: 0x31 + ... + 0x39 = 0x1DD, XOR = 0x31.
CHECK_VALUES = {
    "crc16_modbus": 0x4B37,
    "crc16_ccitt": 0x29B1,
    "crc32": 0xCBF43926,
    "crc8": 0xF4,
    "sum8": 0xDD,
    "xor8": 0x31,
}


@pytest.mark.parametrize(("name", "expected"), sorted(CHECK_VALUES.items()))
def test_check_value_of_123456789(name, expected):
    assert ALGORITHMS[name](CHECK_INPUT) == expected


def test_functions_are_the_registered_algorithms():
    expected = {"sum8": sum8, "xor8": xor8, "crc8": crc8, "crc16_modbus": crc16_modbus, "crc16_ccitt": crc16_ccitt, "crc32": crc32}
    assert dict(ALGORITHMS) == expected
    assert set(ALGORITHMS) == set(CHECKSUM_ALGORITHMS)


def test_empty_input_gives_the_initial_values():
    assert (sum8(b""), xor8(b""), crc8(b""), crc16_modbus(b""), crc16_ccitt(b""), crc32(b"")) == (0, 0, 0, 0xFFFF, 0xFFFF, 0)


def test_sum8_wraps_and_xor8_cancels():
    assert sum8(b"\xff\x02") == 0x01
    assert sum8(bytes([0x80] * 4)) == 0x00
    assert xor8(b"\x5a\x5a") == 0x00
    assert xor8(b"\x0f\xf0\x01") == 0xFE


def test_more_known_values():
    # Modbus RTU "read holding registers" request 01 03 00 00 00 0A carries CRC C5 CD (low byte first).
    assert crc16_modbus(bytes.fromhex("01030000000A")) == 0xCDC5
    assert crc8(b"\x00") == 0x00
    assert crc8(b"\x01") == 0x07
    assert crc32(b"a") == 0xE8B7BE43


@pytest.mark.parametrize(("name", "value"), sorted(CHECK_VALUES.items()))
def test_result_fits_the_declared_width(name, value):
    width = CHECKSUM_ALGORITHMS[name]
    assert value < 1 << (8 * width)
    assert ALGORITHMS[name](bytes(range(256)) * 3) < 1 << (8 * width)


# --- checksum verification inside a spec ---------------------------------------------------


def _spec(algorithm: str, byte_order: str) -> str:
    return f"""
product_type: check_{algorithm}
format: hex_binary
input: bytes  # "1234567891" (xor8 appended) is also valid hex text, which input: auto would read as hex
checksum: {{algorithm: {algorithm}, byte_order: {byte_order}}}
conversion:
  - {{field: text, offset: 0, type: ascii, length: 9}}
"""


def _decode(spec_text: str, payload: bytes):
    loaded = load_spec_text(spec_text, "check.yaml")
    registry = build_registry([loaded])
    value = build_envelope(
        RawEnvelope(payload=payload, source="kafka", received_at=NOW, device_id="d", product_id=loaded.decoder.product_id, format="bin")
    )
    return decode_raw_record(value, registry, NOW)


@pytest.mark.parametrize(("name", "expected"), sorted(CHECK_VALUES.items()))
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_spec_accepts_the_check_value_and_rejects_a_flipped_bit(name, expected, byte_order):
    width = CHECKSUM_ALGORITHMS[name]
    frame = CHECK_INPUT + expected.to_bytes(width, byte_order)
    good = _decode(_spec(name, byte_order), frame)
    assert good.dead_letters == []
    assert good.records[0]["metrics"] == {"text": "123456789"}

    corrupted = b"023456789" + frame[9:]
    bad = _decode(_spec(name, byte_order), corrupted)
    assert bad.records == []
    letter = bad.dead_letter
    actual = ALGORITHMS[name](b"023456789")
    digits = 2 * width
    assert (letter["stage"], letter["reason_code"]) == ("checksum", "checksum_mismatch")
    assert letter["reason"] == f"{name} over bytes 0..8 is 0x{actual:0{digits}X}, payload carries 0x{expected:0{digits}X} at offset 9"
    assert letter["spec_id"] == "check"


def test_checksum_in_the_middle_with_explicit_range():
    spec = """
product_type: framed
format: hex_binary
checksum: {algorithm: sum8, start: 1, end: 3, at: 3}
conversion:
  - {field: a, offset: 1, type: uint8}
  - {field: b, offset: 2, type: uint8}
  - {field: tail, offset: 4, type: uint8}
"""
    ok = _decode(spec, bytes([0x7E, 0x10, 0x20, 0x30, 0x7F]))
    assert ok.records[0]["metrics"] == {"a": 0x10, "b": 0x20, "tail": 0x7F}
    bad = _decode(spec, bytes([0x7E, 0x10, 0x20, 0x31, 0x7F]))
    assert bad.dead_letter["reason"] == "sum8 over bytes 1..2 is 0x30, payload carries 0x31 at offset 3"


def test_payload_too_short_for_the_checksum_is_truncated_at_stage_checksum():
    spec = """
product_type: short
format: hex_binary
checksum: {algorithm: crc32, start: 0, end: 2, at: 2}
conversion:
  - {field: a, offset: 0, type: uint8}
"""
    out = _decode(spec, b"\x01\x02\x03")
    assert (out.dead_letter["stage"], out.dead_letter["reason_code"]) == ("checksum", "truncated")
    assert out.dead_letter["reason"] == "crc32: payload of 3 bytes is too short for bytes 0..2 and the checksum at 2"


def test_registry_without_specs_is_untouched_by_checksums():
    # The built-in decoder has no checksum: a binary payload without a spec is a spec_selection error.
    value = build_envelope(RawEnvelope(payload=b"\x01", source="kafka", received_at=NOW, device_id="d", product_id="p", format="bin"))
    assert decode_raw_record(value, DecoderRegistry(), NOW).dead_letter["stage"] == "spec_selection"
