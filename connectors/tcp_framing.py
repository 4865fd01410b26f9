"""Framing and device identification of the TCP gateway, free of sockets.

A device keeps one TCP connection open and writes a byte stream; :class:`FrameDecoder` cuts it
into frames:

- ``line``: frames end with a newline (``\\n``); the newline is removed, every other byte
  (a ``\\r`` too) stays in the payload.
- ``length``: every frame starts with an unsigned 1-, 2- or 4-byte length, big or little endian,
  that counts the payload bytes only (not the prefix itself); a zero length is an empty frame.
- ``fixed``: every frame has the same size.

A frame larger than the limit cannot be skipped reliably (the stream has no resynchronisation
point), so the decoder stops with :class:`FrameTooLarge` and the gateway closes the connection.

:class:`DeviceIdRule` says where the device id comes from: the first frame of the connection
(``hello``), an ASCII prefix of every frame (``prefix:N``, removed from the payload), a binary
header field rendered as hex (``header:OFFSET:LENGTH``, payload unchanged) or a field of a JSON
frame (``json:FIELD``, payload unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from operators.device_id import INVALID_DEVICE_ID, device_id_problem

FRAMINGS = ("line", "length", "fixed")
PREFIX_SIZES = (1, 2, 4)
BYTE_ORDERS = ("big", "little")
DEFAULT_MAX_FRAME_BYTES = 64 * 1024


class FrameTooLarge(Exception):
    """A frame is larger than the limit; the stream cannot be resynchronised.

    Attributes:
        size: The frame size when known (declared length), else the bytes seen without a frame end.
        limit: The limit in bytes.
        buffered: The bytes of the offending frame received so far (at most the limit plus one read).
        reason: Precise, human-readable reason.
    """

    def __init__(self, size: int, limit: int, buffered: bytes, reason: str):
        super().__init__(reason)
        self.size = size
        self.limit = limit
        self.buffered = buffered
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Framing:
    """How the byte stream of a connection is cut into frames.

    Attributes:
        kind: ``line``, ``length`` or ``fixed``.
        prefix_bytes: Size of the length prefix (``length``): 1, 2 or 4.
        byte_order: Byte order of the length prefix: ``big`` or ``little``.
        frame_bytes: Size of every frame (``fixed``).
        max_frame_bytes: Largest payload accepted (``line``, ``length``).
    """

    kind: str = "line"
    prefix_bytes: int = 2
    byte_order: str = "big"
    frame_bytes: int = 0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    def __post_init__(self):
        if self.kind not in FRAMINGS:
            raise ValueError(f"framing {self.kind!r} is not one of {', '.join(FRAMINGS)}")
        if self.max_frame_bytes < 1:
            raise ValueError(f"max frame size must be positive, got {self.max_frame_bytes}")
        if self.kind == "length":
            if self.prefix_bytes not in PREFIX_SIZES:
                raise ValueError(f"length prefix must be 1, 2 or 4 bytes, got {self.prefix_bytes}")
            if self.byte_order not in BYTE_ORDERS:
                raise ValueError(f"byte order {self.byte_order!r} is not big or little")
        if self.kind == "fixed" and not 1 <= self.frame_bytes <= self.max_frame_bytes:
            raise ValueError(f"fixed frame size must be between 1 and the max frame size {self.max_frame_bytes}, got {self.frame_bytes}")

    def encode(self, payload: bytes) -> bytes:
        """The bytes a device writes for one payload (what the decoder turns back into ``payload``).

        Raises:
            ValueError: when the payload cannot be framed (a newline in a ``line`` frame, too long
                for the prefix, wrong size for ``fixed``).
        """
        if self.kind == "line":
            if b"\n" in payload:
                raise ValueError("a line frame cannot contain a newline: use length-prefixed framing for binary payloads")
            return payload + b"\n"
        if self.kind == "length":
            if len(payload) >= 1 << (8 * self.prefix_bytes):
                raise ValueError(f"{len(payload)} bytes do not fit a {self.prefix_bytes}-byte length prefix")
            return len(payload).to_bytes(self.prefix_bytes, self.byte_order) + payload
        if len(payload) != self.frame_bytes:
            raise ValueError(f"fixed frames are {self.frame_bytes} bytes, got {len(payload)}")
        return payload

    def describe(self) -> str:
        """One line for the start-up message."""
        if self.kind == "line":
            return f"newline-delimited (max {self.max_frame_bytes} bytes)"
        if self.kind == "length":
            return f"{self.prefix_bytes}-byte {self.byte_order}-endian length prefix (payload bytes; max {self.max_frame_bytes})"
        return f"fixed {self.frame_bytes}-byte frames"


class FrameDecoder:
    """Cuts one connection's byte stream into frames.

    Feed it what the socket delivers, in any chunks; it returns the frames completed so far.
    After :class:`FrameTooLarge` the decoder is unusable (the connection must be closed).
    """

    def __init__(self, framing: Framing):
        self.framing = framing
        self._buffer = bytearray()
        self._scanned = 0  # line framing: buffer prefix already known to hold no newline
        self.failed = False

    @property
    def pending(self) -> int:
        """Bytes received that do not complete a frame yet (an unfinished frame at EOF is truncated)."""
        return len(self._buffer)

    def pending_bytes(self) -> bytes:
        """The bytes of the unfinished frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Adds received bytes and returns the frames they complete, in order.

        Raises:
            FrameTooLarge: when the next frame exceeds the limit. Frames completed before it in
                the same chunk are in the exception's ``frames`` attribute so none is lost.
        """
        if self.failed:
            raise RuntimeError("the decoder stopped at an oversized frame; close the connection")
        self._buffer += data
        frames: list[bytes] = []
        try:
            if self.framing.kind == "line":
                self._lines(frames)
            elif self.framing.kind == "length":
                self._length_prefixed(frames)
            else:
                self._fixed(frames)
        except FrameTooLarge as exc:
            self.failed = True
            exc.frames = frames
            raise
        return frames

    def _lines(self, frames: list[bytes]) -> None:
        limit = self.framing.max_frame_bytes
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            if end - start > limit:
                self._too_long_line(start)
            frames.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if len(self._buffer) > limit:
            self._too_long_line(0)

    def _too_long_line(self, start: int) -> None:
        limit = self.framing.max_frame_bytes
        buffered = bytes(self._buffer[start : start + limit + 1])
        reason = f"no newline within {limit} bytes: frame larger than the limit of {limit} bytes"
        raise FrameTooLarge(len(self._buffer) - start, limit, buffered, reason)

    def _length_prefixed(self, frames: list[bytes]) -> None:
        size_bytes, order, limit = self.framing.prefix_bytes, self.framing.byte_order, self.framing.max_frame_bytes
        start = 0
        while len(self._buffer) - start >= size_bytes:
            length = int.from_bytes(self._buffer[start : start + size_bytes], order)
            if length > limit:
                buffered = bytes(self._buffer[start : start + size_bytes + limit])
                raise FrameTooLarge(length, limit, buffered, f"length prefix announces {length} bytes, more than the limit of {limit} bytes")
            end = start + size_bytes + length
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[start + size_bytes : end]))
            start = end
        del self._buffer[:start]

    def _fixed(self, frames: list[bytes]) -> None:
        size = self.framing.frame_bytes
        complete = len(self._buffer) // size * size
        frames.extend(bytes(self._buffer[i : i + size]) for i in range(0, complete, size))
        del self._buffer[:complete]


class DeviceIdError(ValueError):
    """The device id cannot be taken from a frame.

    Attributes:
        code: Machine-readable reason (dead-letter ``reason_code``).
        reason: Precise, human-readable reason.
    """

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_device_id(device_id: str, where: str) -> str:
    """Returns ``device_id`` when it follows the device id rule (:mod:`operators.device_id`).

    Args:
        device_id: The id read from the frame.
        where: Where it was read, for the reason (``hello frame``, ``JSON field 'id'``).

    Raises:
        DeviceIdError: ``invalid_device_id`` with the rule's reason.
    """
    problem = device_id_problem(device_id)
    if problem is not None:
        raise DeviceIdError(INVALID_DEVICE_ID, f"{where}: {problem}")
    return device_id


@dataclass(frozen=True, slots=True)
class DeviceIdRule:
    """Where a connection's frames take their device id from.

    Attributes:
        mode: ``hello``, ``prefix``, ``header`` or ``json``.
        length: Bytes of the id (``prefix``, ``header``).
        offset: First byte of the id (``header``).
        field: JSON field name, dotted for nested objects (``json``).
    """

    mode: str
    length: int = 0
    offset: int = 0
    field: str = ""

    @classmethod
    def parse(cls, text: str) -> DeviceIdRule:
        """Parses ``hello``, ``prefix:N``, ``header:OFFSET:LENGTH`` or ``json:FIELD``.

        Raises:
            ValueError: naming what is wrong.
        """
        mode, _, rest = text.partition(":")
        try:
            if mode == "hello" and not rest:
                return cls("hello")
            if mode == "prefix":
                length = int(rest)
                if not 1 <= length <= 128:
                    raise ValueError
                return cls("prefix", length=length)
            if mode == "header":
                offset, length = (int(part) for part in rest.split(":"))
                if offset < 0 or not 1 <= length <= 64:
                    raise ValueError
                return cls("header", length=length, offset=offset)
            if mode == "json" and rest:
                return cls("json", field=rest)
        except ValueError:
            pass
        raise ValueError(
            f"device id rule {text!r}: expected hello, prefix:N (N 1-128), header:OFFSET:LENGTH (LENGTH 1-64) or json:FIELD"
        )

    def from_hello(self, frame: bytes) -> str:
        """The device id announced by the first frame of a connection (ASCII; surrounding spaces, ``\\r`` and NULs ignored).

        Raises:
            DeviceIdError: ``invalid_hello`` or ``invalid_device_id``.
        """
        try:
            text = frame.decode("ascii").strip(" \r\t\x00")
        except UnicodeDecodeError:
            raise DeviceIdError("invalid_hello", "hello frame is not ASCII text: the first frame of a connection must be the device id") from None
        return check_device_id(text, "hello frame")

    def split(self, frame: bytes) -> tuple[str, bytes]:
        """The device id of a frame and the payload to keep (``prefix`` removes the id; the others keep the frame).

        Raises:
            DeviceIdError: ``frame_too_short``, ``invalid_device_id`` or ``device_id_missing``.
        """
        if self.mode == "prefix":
            if len(frame) < self.length:
                raise DeviceIdError("frame_too_short", f"frame of {len(frame)} bytes is shorter than the {self.length}-byte device id prefix")
            try:
                text = frame[: self.length].decode("ascii").rstrip(" \x00")
            except UnicodeDecodeError:
                raise DeviceIdError(INVALID_DEVICE_ID, f"the {self.length}-byte device id prefix is not ASCII") from None
            return check_device_id(text, f"{self.length}-byte id prefix"), frame[self.length :]
        if self.mode == "header":
            end = self.offset + self.length
            if len(frame) < end:
                reason = f"frame of {len(frame)} bytes ends before the device id field at bytes {self.offset}..{end - 1}"
                raise DeviceIdError("frame_too_short", reason)
            return check_device_id(frame[self.offset : end].hex(), f"bytes {self.offset}..{end - 1}"), frame
        if self.mode == "json":
            return self._json_id(frame), frame
        raise ValueError(f"device id rule {self.mode!r} takes the id from the hello frame, not from each frame")

    def _json_id(self, frame: bytes) -> str:
        try:
            value = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise DeviceIdError("invalid_json", f"frame is not valid JSON: {exc}") from None
        for part in self.field.split("."):
            if not isinstance(value, dict) or part not in value:
                raise DeviceIdError("device_id_missing", f"JSON frame has no field {self.field!r}")
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DeviceIdError(INVALID_DEVICE_ID, f"JSON field {self.field!r} is {type(value).__name__}, not a string or integer")
        return check_device_id(str(value), f"JSON field {self.field!r}")

    def describe(self) -> str:
        """One line for the start-up message."""
        return {
            "hello": "device id from the first frame of each connection",
            "prefix": f"device id = first {self.length} bytes of each frame (ASCII, removed from the payload)",
            "header": f"device id = hex of frame bytes {self.offset}..{self.offset + self.length - 1}",
            "json": f"device id = JSON field {self.field!r} of each frame",
        }[self.mode]
