"""Framing and device-id rules of the TCP gateway, without sockets."""

import random

import pytest

from connectors.tcp_framing import DeviceIdError, DeviceIdRule, FrameDecoder, FrameTooLarge, Framing

BINARY = [b"\x00\x01\n\xff", b"", b"\n\n\x00", bytes(range(255)), b"plain text"]


def feed_in_chunks(decoder: FrameDecoder, stream: bytes, seed: int) -> list[bytes]:
    """Feeds the stream in random chunk sizes (1 byte up to 40), as TCP may deliver it."""
    rng = random.Random(seed)
    frames, pos = [], 0
    while pos < len(stream):
        size = rng.randint(1, 40)
        frames += decoder.feed(stream[pos : pos + size])
        pos += size
    return frames


@pytest.mark.parametrize("prefix_bytes", [1, 2, 4])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_length_prefixed_frames_survive_any_chunking_byte_exact(prefix_bytes, byte_order):
    framing = Framing("length", prefix_bytes=prefix_bytes, byte_order=byte_order, max_frame_bytes=300)
    stream = b"".join(framing.encode(p) for p in BINARY)
    for seed in range(20):
        decoder = FrameDecoder(framing)
        assert feed_in_chunks(decoder, stream, seed) == BINARY
        assert decoder.pending == 0


def test_length_prefix_counts_the_payload_only_and_honours_byte_order():
    assert Framing("length", prefix_bytes=2, byte_order="big").encode(b"abc") == b"\x00\x03abc"
    assert Framing("length", prefix_bytes=2, byte_order="little").encode(b"abc") == b"\x03\x00abc"
    assert Framing("length", prefix_bytes=4, byte_order="big").encode(b"") == b"\x00\x00\x00\x00"
    decoder = FrameDecoder(Framing("length", prefix_bytes=2, byte_order="little"))
    assert decoder.feed(b"\x02\x00hi\x01\x00") == [b"hi"]
    assert decoder.pending == 2
    assert decoder.feed(b"!") == [b"!"]


def test_one_byte_prefix_cannot_frame_256_bytes():
    with pytest.raises(ValueError, match="do not fit"):
        Framing("length", prefix_bytes=1).encode(bytes(256))


def test_line_frames_keep_zero_bytes_and_carriage_returns():
    decoder = FrameDecoder(Framing("line"))
    assert decoder.feed(b"a\x00b\r\nsecond") == [b"a\x00b\r"]
    assert decoder.feed(b" part\n\n") == [b"second part", b""]
    assert decoder.pending == 0
    with pytest.raises(ValueError, match="newline"):
        Framing("line").encode(b"a\nb")


def test_fixed_frames_across_chunks():
    framing = Framing("fixed", frame_bytes=5)
    payloads = [bytes([i]) * 5 for i in range(7)]
    stream = b"".join(payloads) + b"\x01\x02"
    decoder = FrameDecoder(framing)
    assert feed_in_chunks(decoder, stream, 3) == payloads
    assert decoder.pending_bytes() == b"\x01\x02"


def test_oversized_length_prefix_stops_at_once_keeping_earlier_frames():
    framing = Framing("length", prefix_bytes=4, max_frame_bytes=10)
    decoder = FrameDecoder(framing)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(framing.encode(b"ok") + (11).to_bytes(4, "big") + b"x")
    assert caught.value.frames == [b"ok"]
    assert caught.value.size == 11 and caught.value.limit == 10
    assert "announces 11 bytes" in caught.value.reason
    assert caught.value.buffered == b"\x00\x00\x00\x0bx"
    with pytest.raises(RuntimeError):
        decoder.feed(b"more")


def test_line_longer_than_the_limit_is_detected_before_its_newline():
    decoder = FrameDecoder(Framing("line", max_frame_bytes=8))
    assert decoder.feed(b"12345678\n1234") == [b"12345678"]  # exactly the limit is fine
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"56789")
    assert caught.value.buffered == b"123456789"
    assert "no newline within 8 bytes" in caught.value.reason


def test_line_longer_than_the_limit_with_its_newline_in_the_same_chunk():
    decoder = FrameDecoder(Framing("line", max_frame_bytes=4))
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"ok\ntoo long\nnext\n")
    assert caught.value.frames == [b"ok"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "ring"}, "framing"),
        ({"kind": "length", "prefix_bytes": 3}, "1, 2 or 4"),
        ({"kind": "length", "byte_order": "middle"}, "big or little"),
        ({"kind": "fixed", "frame_bytes": 0}, "fixed frame size"),
        ({"kind": "fixed", "frame_bytes": 100, "max_frame_bytes": 10}, "fixed frame size"),
    ],
)
def test_bad_framings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Framing(**kwargs)


def test_device_id_rules_parse():
    assert DeviceIdRule.parse("hello") == DeviceIdRule("hello")
    assert DeviceIdRule.parse("prefix:8") == DeviceIdRule("prefix", length=8)
    assert DeviceIdRule.parse("header:2:6") == DeviceIdRule("header", length=6, offset=2)
    assert DeviceIdRule.parse("json:meta.id") == DeviceIdRule("json", field="meta.id")
    for bad in ("hello:x", "prefix:0", "prefix:x", "header:1", "header:-1:4", "json:", "serial"):
        with pytest.raises(ValueError, match="expected hello"):
            DeviceIdRule.parse(bad)


def test_hello_frame_gives_the_id():
    rule = DeviceIdRule("hello")
    assert rule.from_hello(b"dev-1\r") == "dev-1"
    assert rule.from_hello(b"  sensor_7\x00\x00") == "sensor_7"
    with pytest.raises(DeviceIdError) as caught:
        rule.from_hello(b"\xff\xfe")
    assert caught.value.code == "invalid_hello"
    with pytest.raises(DeviceIdError) as caught:
        rule.from_hello(b"dev 1")
    assert caught.value.code == "invalid_device_id"
    with pytest.raises(DeviceIdError):
        rule.from_hello(b"")


def test_prefix_rule_strips_the_padded_id_and_keeps_the_binary_rest():
    rule = DeviceIdRule("prefix", length=8)
    assert rule.split(b"dev-1\x00\x00\x00\x00\n\xff") == ("dev-1", b"\x00\n\xff")
    assert rule.split(b"dev-2   ") == ("dev-2", b"")
    with pytest.raises(DeviceIdError) as caught:
        rule.split(b"short")
    assert caught.value.code == "frame_too_short"
    with pytest.raises(DeviceIdError) as caught:
        rule.split(b"\xff" * 8 + b"x")
    assert caught.value.code == "invalid_device_id"


def test_header_rule_takes_hex_of_the_field_and_keeps_the_frame():
    rule = DeviceIdRule("header", length=4, offset=1)
    frame = b"\x01\xde\xad\xbe\xef\x00\n"
    assert rule.split(frame) == ("deadbeef", frame)
    with pytest.raises(DeviceIdError) as caught:
        rule.split(b"\x01\x02")
    assert caught.value.code == "frame_too_short"


def test_json_rule_reads_nested_string_or_integer_fields():
    assert DeviceIdRule("json", field="device_id").split(b'{"device_id":"d-1","v":1}') == ("d-1", b'{"device_id":"d-1","v":1}')
    assert DeviceIdRule("json", field="meta.serial").split(b'{"meta":{"serial":1234}}')[0] == "1234"
    codes = {}
    for frame in (b"{not json", b'{"other":1}', b'{"device_id":true}', b'{"device_id":"a b"}', b"[1]"):
        with pytest.raises(DeviceIdError) as caught:
            DeviceIdRule("json", field="device_id").split(frame)
        codes[frame] = caught.value.code
    assert codes == {
        b"{not json": "invalid_json",
        b'{"other":1}': "device_id_missing",
        b'{"device_id":true}': "invalid_device_id",
        b'{"device_id":"a b"}': "invalid_device_id",
        b"[1]": "device_id_missing",
    }


@pytest.mark.parametrize(
    ("hello", "fragment"),
    [
        (b"..", "hello frame: device id '..' is a path segment"),
        (b"x" * 10_240, "hello frame: device id of 10240 characters is longer than the limit of 128"),
        (b"dev 1", "hello frame: device id 'dev 1' has ' ' (U+0020) at offset 3"),
        (b'"dev-1"', "hello frame: device id '\"dev-1\"' has '\"' (U+0022) at offset 0"),
        (b"..%2F..\\etc", "has the path separator '\\\\' at offset 7"),
        (b"dev%2F1", "has the percent-encoding '%2F' (an encoded '/') at offset 3"),
    ],
)
def test_hostile_hello_ids_break_the_device_id_rule(hello, fragment):
    with pytest.raises(DeviceIdError) as caught:
        DeviceIdRule("hello").from_hello(hello)
    assert caught.value.code == "invalid_device_id"
    assert fragment in caught.value.reason


def test_per_frame_ids_follow_the_same_rule():
    with pytest.raises(DeviceIdError) as caught:
        DeviceIdRule("json", field="id").split(b'{"id": "../etc"}')
    assert (caught.value.code, caught.value.reason) == (
        "invalid_device_id", "JSON field 'id': device id '../etc' has the path separator '/' at offset 2"
    )
    with pytest.raises(DeviceIdError) as caught:
        DeviceIdRule("prefix", length=4).split(b"..  rest")
    assert caught.value.code == "invalid_device_id" and "is a path segment" in caught.value.reason
    # hex of up to 64 bytes is always a valid id
    assert DeviceIdRule("header", length=64).split(bytes(range(64)))[0] == bytes(range(64)).hex()
