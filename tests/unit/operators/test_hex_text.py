import pytest

from operators.hex_text import HexTextError, looks_like_hex_text, parse_hex_text

FRAME = bytes([0x00, 0xFD, 0x3C])


@pytest.mark.parametrize(
    "text",
    ["00FD3C", "00fd3c", "0x00FD3C", "0X00fd3C", "00 FD 3C", "0x00 0xFD 0x3C", "00:FD:3C", "00-FD-3C", "0x00, 0xFD, 0x3C",
     "  00 fd\t3c\r\n", "00FD 3C", "0x00:fd-3C"],
)
def test_every_common_notation_reads_the_same_bytes(text):
    assert parse_hex_text(text) == FRAME
    assert looks_like_hex_text(text.encode())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("00FG3C", "payload is not hex: 'G' at hex digit 3"),
        ("0x00 0xFD 0x3Z", "payload is not hex: 'Z' at hex digit 5"),
        ("00.FD.3C", "payload is not hex: '.' at hex digit 2"),
        ("00FD3", "hex text has an odd number of digits (5)"),
        ("0 0FD 3C", "hex digits must come in pairs; separators may only stand between whole bytes"),
    ],
)
def test_anything_else_is_refused_with_the_character_and_its_position(text, message):
    with pytest.raises(HexTextError) as error:
        parse_hex_text(text)
    assert str(error.value) == message


def test_empty_text_is_no_bytes_and_does_not_read_as_a_hex_payload():
    assert parse_hex_text("   ") == b""
    assert not looks_like_hex_text(b"  ") and not looks_like_hex_text("00ü".encode())


def test_a_payload_reads_as_hex_when_it_holds_only_digits_separators_and_prefixes_in_even_number():
    assert looks_like_hex_text(b"0 0FD 3C")  # pairs across a separator: hex, refused with the reason above
    assert not looks_like_hex_text(b"00FD3") and not looks_like_hex_text(b"00FG3C") and not looks_like_hex_text(b"\x00\xfd")
