"""Compiled YAML decoder specs: payload bytes -> standard telemetry records.

A spec is compiled once (:func:`compile_spec`) into plain objects that hold prebuilt
``struct.Struct`` readers, value converters and output templates, so decoding a record
allocates no parsers. :class:`SpecDecoder` is a :class:`operators.decode.PayloadDecoder`.

Errors are :class:`operators.decode.DecodeError` with a stage (``parse``, ``checksum``,
``contract``) and a reason that names the field, offset and sizes involved, e.g.
``field humidity: needs 1 byte at offset 2, payload has 2 bytes``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import math
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson

from operators.checksums import ALGORITHMS as CHECKSUM_FUNCTIONS
from operators.decode import DecodeError, DeviceIdentity, check_record
from operators.envelope import RawEnvelope
from operators.hex_text import HexTextError, looks_like_hex_text, parse_hex_text
from operators.spec_model import (
    BINARY_TYPES,
    METRICS_TOKENS,
    TEMPLATE_TOKEN,
    BinaryField,
    BinaryGroup,
    BitField,
    CsvSpec,
    HexBinarySpec,
    JsonSpec,
    TextMapping,
    TimestampSource,
    ValueRules,
    parse_int,
)
from operators.value_repr import bounded_repr

_HEX_TEXT = re.compile(rb"^[0-9A-Fa-fxX\s:,\-]*$")  # a cheap first look; looks_like_hex_text decides
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_MAX_GROUP_CACHE = 4096


def _plural(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def _decimals_of(value: float | None) -> int:
    if value is None:
        return 0
    exponent = Decimal(repr(float(value))).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _clean_float32(value: float) -> float:
    """The shortest decimal that is the same float32 (27.299999237 -> 27.3)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack(">f", value)
    for digits in (6, 7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


# --- values ---------------------------------------------------------------------------------


def _compile_bits(bits: list[BitField], units: dict[str, str]) -> list[tuple]:
    compiled = []
    for b in bits:
        if b.bit is not None:
            compiled.append((b.name, "flag", 1 << b.bit, 0, None))
        elif b.mask is not None:
            compiled.append((b.name, "flag", b.mask, 0, None))
        else:
            compiled.append((b.name, "int", (1 << b.width) - 1, b.start, b.enum))
        if b.unit:
            units[b.name] = b.unit
    return compiled


class ValueConverter:
    """Turns one raw value into metrics: scale/offset, rounding, enum label, bit fields.

    ``emit(raw, metrics, issues)`` writes the metric(s) and appends quality issues (unknown enum
    value, non-finite number) instead of failing the record.
    """

    __slots__ = ("name", "scale", "add", "decimals", "int_only", "enum", "bits", "keep", "clean_float32", "plain")

    def __init__(self, name: str, rules: ValueRules, *, additive: float | None, float32: bool, integer_raw: bool, units: dict[str, str]):
        self.name = name
        self.scale = rules.scale
        self.add = additive
        # Decimals taken from scale/offset round integer raws only: a float raw (JSON/CSV "auto") keeps its digits.
        self.int_only = rules.decimals is None
        if rules.decimals is not None:
            self.decimals = rules.decimals
        elif (self.scale is not None or self.add is not None) and integer_raw:
            self.decimals = max(_decimals_of(self.scale), _decimals_of(self.add))
        else:
            self.decimals = None
        self.enum = rules.enum
        self.bits = _compile_bits(rules.bits, units) if rules.bits else None
        self.keep = rules.keep
        self.clean_float32 = float32 and self.scale is None and self.add is None
        self.plain = not (self.scale is not None or self.add is not None or self.enum or self.bits or self.clean_float32 or not self.keep)
        if rules.unit and self.keep:
            units[name] = rules.unit

    def emit(self, raw, metrics: dict, issues: list) -> None:
        """Writes the converted value (and any bit fields) into ``metrics``."""
        if self.plain and type(raw) is int:
            metrics[self.name] = raw
            return
        if type(raw) is float and not math.isfinite(raw):
            issues.append({"metric": self.name, "issue": "not_finite", "value": str(raw)})
            return
        if self.bits is not None and type(raw) is int:
            for name, kind, mask, shift, labels in self.bits:
                if kind == "flag":
                    metrics[name] = (raw & mask) != 0
                else:
                    sub = (raw >> shift) & mask
                    metrics[name] = labels.get(sub, sub) if labels else sub
                    if labels and sub not in labels:
                        issues.append({"metric": name, "issue": "unknown_enum", "value": sub})
        if not self.keep:
            return
        if self.enum is not None:
            label = self.enum.get(raw)
            if label is None:
                issues.append({"metric": self.name, "issue": "unknown_enum", "value": raw})
                metrics[self.name] = raw
            else:
                metrics[self.name] = label
            return
        value = raw
        if self.scale is not None:
            value = value * self.scale
        if self.add is not None:
            value = value + self.add
        if self.decimals is not None and (type(raw) is int or not self.int_only):
            value = round(value, self.decimals)
            if self.decimals == 0 and self.scale is None:
                value = int(value)
        elif self.clean_float32:
            value = _clean_float32(value)
        metrics[self.name] = value


def _binary_converter(f: BinaryField, units: dict[str, str], name: str | None = None) -> ValueConverter:
    return ValueConverter(
        name or f.field,
        f,
        additive=f.value_offset,
        float32=f.type == "float32",
        integer_raw=f.type in BINARY_TYPES and f.type.startswith(("int", "uint")),
        units=units,
    )


# --- binary layouts -------------------------------------------------------------------------


class _Reader:
    """Reads one binary field's raw value at an absolute offset."""

    __slots__ = ("name", "offset", "size", "kind", "unpack", "encoding", "converter")

    def __init__(self, f: BinaryField, byte_order: str, converter: ValueConverter, name: str | None = None):
        self.name = name or f.field
        self.offset = f.offset or 0
        self.size = f.size
        code = BINARY_TYPES[f.type][0]
        order = ">" if (f.byte_order or byte_order) == "big" else "<"
        self.kind = f.type if code is None else "struct"
        self.unpack = struct.Struct(order + code).unpack_from if code else None
        self.encoding = f.encoding
        self.converter = converter

    def read(self, buf: bytes, at: int):
        if self.kind == "struct":
            return self.unpack(buf, at)[0]
        chunk = buf[at : at + self.size]
        if self.kind == "bytes":
            return chunk.hex().upper()
        try:
            return chunk.decode(self.encoding).rstrip("\x00 ")
        except UnicodeDecodeError:
            raise DecodeError("invalid_text", f"field {self.name}: bytes at offset {at} are not {self.encoding} text") from None


def _needs(name: str, size: int, at: int, total: int, where: str = "") -> DecodeError:
    return DecodeError("truncated", f"{where}field {name}: needs {_plural(size)} at offset {at}, payload has {_plural(total)}")


class FixedLayout:
    """Fields at fixed offsets (length-based parsing, one hybrid section, one group element).

    When every field is a struct-readable number with one byte order and no overlap, a single
    precompiled ``struct`` reads them all at once.
    """

    def __init__(self, items: list, byte_order: str, units: dict[str, str], ranges: dict, where: str = "", naming=None):
        self.where = where
        self.readers: list[_Reader] = []
        self.groups: list[GroupLayout] = []
        for item in items:
            if isinstance(item, BinaryGroup):
                self.groups.append(GroupLayout(item, byte_order, units, ranges, where))
                continue
            name = naming(item.field) if naming else item.field
            converter = _binary_converter(item, units, name)
            _add_range(ranges, name, item)
            self.readers.append(_Reader(item, byte_order, converter, name))
        self.readers.sort(key=lambda r: r.offset)
        self.extent = max((r.offset + r.size for r in self.readers), default=0)
        self._struct = self._single_struct(items, byte_order)
        self._converters = [r.converter for r in self.readers]

    def _single_struct(self, items: list, byte_order: str) -> struct.Struct | None:
        fields = [i for i in items if isinstance(i, BinaryField)]
        if not fields or any(BINARY_TYPES[f.type][0] is None for f in fields):
            return None
        orders = {f.byte_order or byte_order for f in fields}
        if len(orders) != 1:
            return None
        fmt, position = ">" if orders.pop() == "big" else "<", 0
        for reader, f in zip(self.readers, sorted(fields, key=lambda f: f.offset), strict=True):
            if reader.offset < position:
                return None
            fmt += "x" * (reader.offset - position) + BINARY_TYPES[f.type][0]
            position = reader.offset + reader.size
        return struct.Struct(fmt)

    def read(self, buf: bytes, base: int, metrics: dict, issues: list) -> int:
        """Decodes the fields at ``base``; returns the offset just after the layout."""
        total = len(buf)
        if base + self.extent > total:
            for reader in self.readers:
                if base + reader.offset + reader.size > total:
                    raise _needs(reader.name, reader.size, base + reader.offset, total, self.where)
        if self._struct is not None:
            for converter, raw in zip(self._converters, self._struct.unpack_from(buf, base), strict=True):
                converter.emit(raw, metrics, issues)
        else:
            for reader in self.readers:
                reader.converter.emit(reader.read(buf, base + reader.offset), metrics, issues)
        end = base + self.extent
        for group in self.groups:
            end = max(end, group.read(buf, base, metrics, issues))
        return end


def _add_range(ranges: dict, name: str, rules: ValueRules) -> None:
    if rules.min is not None or rules.max is not None:
        ranges[name] = (rules.min, rules.max)


class GroupLayout:
    """A repeated group; element layouts are built once per index and cached."""

    def __init__(self, group: BinaryGroup, byte_order: str, units: dict[str, str], ranges: dict, where: str):
        self.group = group
        self.byte_order = byte_order
        self.units = units
        self.ranges = ranges
        self.where = where
        self.size = group.element_size
        self._elements: dict[int, FixedLayout] = {}

    def _element(self, index: int) -> FixedLayout:
        layout = self._elements.get(index)
        if layout is None:
            label = index + self.group.index_base
            naming = lambda field, label=label: self.group.naming.format(group=self.group.group, index=label, field=field)  # noqa: E731
            layout = FixedLayout(self.group.fields, self.byte_order, self.units, self.ranges, self.where, naming)
            if len(self._elements) < _MAX_GROUP_CACHE:
                self._elements[index] = layout
        return layout

    def read(self, buf: bytes, base: int, metrics: dict, issues: list) -> int:
        g = self.group
        start = base + g.offset
        total = len(buf)
        if g.count is not None:
            count = g.count
        elif g.count_field is not None:
            count = metrics.get(g.count_field)
            if type(count) is not int or count < 0:
                raise DecodeError("invalid_count", f"{self.where}group {g.group}: count field {g.count_field} is {bounded_repr(count)}, not a count")
        else:
            available = max(0, total - start)
            count, rest = divmod(available, self.size)
            if rest:
                raise DecodeError(
                    "truncated",
                    f"{self.where}group {g.group}: {_plural(rest)} at offset {start + count * self.size} "
                    f"{'does' if rest == 1 else 'do'} not fill a {self.size}-byte element",
                )
        needed = start + count * self.size
        if needed > total:
            raise DecodeError(
                "truncated",
                f"{self.where}group {g.group}: {count} elements of {_plural(self.size)} need {_plural(needed - start)} "
                f"at offset {start}, payload has {_plural(total)}",
            )
        for index in range(count):
            self._element(index).read(buf, start + index * self.size, metrics, issues)
        return needed


class KeyValueLayout:
    """Key-value parsing: ``key [length] value`` repeated, in any order."""

    def __init__(self, spec: HexBinarySpec, units: dict[str, str], ranges: dict):
        items = spec.conversion or []
        self.key_length = spec.key_length or max(f.key_bytes or (2 if f.key > 0xFF else 1) for f in items)
        order = ">" if spec.byte_order == "big" else "<"
        self.key_unpack = struct.Struct(order + ("B" if self.key_length == 1 else "H")).unpack_from
        self.prefix = spec.length_prefix
        self.prefix_unpack = struct.Struct(order + ("B" if self.prefix == 1 else "H")).unpack_from if self.prefix else None
        self.report_unknown = spec.unknown_keys == "report"
        self.entries: dict[int, _Reader] = {}
        self.required = [f for f in items if f.required]
        for f in items:
            _add_range(ranges, f.field, f)
            self.entries[f.key] = _Reader(f, spec.byte_order, _binary_converter(f, units))
        self.width = 2 * self.key_length

    def _key(self, key: int) -> str:
        return f"0x{key:0{self.width}X}"

    def read(self, buf: bytes, base: int, metrics: dict, issues: list) -> int:
        total = len(buf)
        pos = base
        seen: dict[int, int] = {}
        while pos < total:
            if pos + self.key_length > total:
                raise DecodeError("truncated", f"key at offset {pos}: needs {_plural(self.key_length)}, payload has {_plural(total)}")
            key = self.key_unpack(buf, pos)[0]
            value_at = pos + self.key_length
            length = None
            if self.prefix:
                if value_at + self.prefix > total:
                    raise DecodeError(
                        "truncated", f"key {self._key(key)} at offset {pos}: length needs {_plural(self.prefix)}, payload has {_plural(total)}"
                    )
                length = self.prefix_unpack(buf, value_at)[0]
                value_at += self.prefix
            reader = self.entries.get(key)
            if reader is None:
                known = ", ".join(self._key(k) for k in self.entries)
                if not self.report_unknown:
                    raise DecodeError("unknown_key", f"unknown key {self._key(key)} at offset {pos} (known keys: {known})")
                if value_at + length > total:
                    raise DecodeError(
                        "truncated", f"key {self._key(key)}: needs {_plural(length)} at offset {value_at}, payload has {_plural(total)}"
                    )
                issues.append(
                    {"issue": "unknown_key", "key": self._key(key), "offset": pos, "value_hex": buf[value_at : value_at + length].hex().upper()}
                )
                pos = value_at + length
                continue
            if key in seen:
                raise DecodeError("duplicate_key", f"key {self._key(key)} ({reader.name}) appears twice, at offsets {seen[key]} and {pos}")
            seen[key] = pos
            if length is not None and length != reader.size:
                raise DecodeError(
                    "invalid_length", f"key {self._key(key)} ({reader.name}): length {length} at offset {pos}, its type needs {reader.size}"
                )
            if value_at + reader.size > total:
                raise DecodeError(
                    "truncated",
                    f"field {reader.name} (key {self._key(key)}): needs {_plural(reader.size)} at offset {value_at}, payload has {_plural(total)}",
                )
            reader.converter.emit(reader.read(buf, value_at), metrics, issues)
            pos = value_at + reader.size
        for f in self.required:
            if f.key not in seen:
                raise DecodeError("missing_field", f"required field {f.field} (key {self._key(f.key)}) is not in the payload", stage="contract")
        return pos


class HybridLayout:
    """Hybrid parsing: each section starts with the separator byte, then fixed-length fields.

    Section lengths come from the spec, so a separator value inside a section's data is data,
    never a split point. ``sequential`` sections appear in spec order; ``tagged`` sections carry
    their id in the byte after the separator and may come in any order.
    """

    def __init__(self, spec: HexBinarySpec, units: dict[str, str], ranges: dict):
        self.separator = spec.separator
        self.tagged = spec.section_order == "tagged"
        self.sections = []
        for s in spec.sections or []:
            layout = FixedLayout(s.conversion, spec.byte_order, units, ranges, where=f"section {s.section_id}: ")
            self.sections.append((s.section_id, layout, s.length, s.required))
        self.by_tag = {}
        for section in self.sections:
            if self.tagged:
                self.by_tag[parse_int(section[0], "section_id")] = section

    def _section(self, buf, pos, section, metrics, issues) -> int:
        section_id, layout, length, _ = section
        start = pos + (2 if self.tagged else 1)
        end = layout.read(buf, start, metrics, issues)
        if length is not None:
            if start + length > len(buf):
                raise DecodeError("truncated", f"section {section_id}: needs {_plural(length)} at offset {start}, payload has {_plural(len(buf))}")
            end = start + length
        return end

    def _expect_separator(self, buf: bytes, pos: int, section_id) -> None:
        if pos >= len(buf):
            raise DecodeError(
                "truncated",
                f"section {section_id}: expected separator 0x{self.separator:02X} at offset {pos}, payload ends after {_plural(len(buf))}",
            )
        if buf[pos] != self.separator:
            raise DecodeError(
                "missing_separator", f"section {section_id}: expected separator 0x{self.separator:02X} at offset {pos}, found 0x{buf[pos]:02X}"
            )

    def read(self, buf: bytes, base: int, metrics: dict, issues: list) -> int:
        pos = base
        if not self.tagged:
            for section in self.sections:
                if pos >= len(buf) and not section[3]:
                    continue
                self._expect_separator(buf, pos, section[0])
                pos = self._section(buf, pos, section, metrics, issues)
            return pos
        seen = set()
        while pos < len(buf):
            self._expect_separator(buf, pos, "?")
            if pos + 1 >= len(buf):
                raise DecodeError("truncated", f"separator at offset {pos} has no section id after it")
            tag = buf[pos + 1]
            section = self.by_tag.get(tag)
            if section is None:
                raise DecodeError("unknown_section", f"unknown section id {tag} at offset {pos + 1} (known: {', '.join(map(str, self.by_tag))})")
            if tag in seen:
                raise DecodeError("duplicate_section", f"section {tag} appears twice (second at offset {pos})")
            seen.add(tag)
            pos = self._section(buf, pos, section, metrics, issues)
        for tag, section in self.by_tag.items():
            if section[3] and tag not in seen:
                raise DecodeError("missing_section", f"required section {tag} is not in the payload")
        return pos


# --- paths, times, text values -------------------------------------------------------------


def compile_path(path: str) -> tuple:
    """``nodes[0].device_id`` -> ('nodes', 0, 'device_id')."""
    parts = []
    for name, index in _PATH_PART.findall(path):
        parts.append(int(index) if index else name)
    if not parts:
        raise ValueError(f"empty path {bounded_repr(path)}")
    return tuple(parts)


_MISSING = object()


def get_path(doc, parts: tuple):
    """Follows a compiled path; returns ``_MISSING`` when any step is absent."""
    node = doc
    for part in parts:
        if type(part) is int:
            if not isinstance(node, list) or part >= len(node):
                return _MISSING
        elif not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


class TimeReader:
    """Reads a device time (epoch number or text) into epoch milliseconds UTC."""

    def __init__(self, source: TimestampSource | None, what: str):
        self.what = what
        self.unit = source.unit if source else "auto"
        self.format = source.format if source else None
        self.zone = ZoneInfo(source.timezone) if source else ZoneInfo("UTC")

    def read(self, value) -> int:
        """Returns epoch ms, or raises ``DecodeError('invalid_timestamp')``."""
        if isinstance(value, bool):
            raise DecodeError("invalid_timestamp", f"{self.what} is a boolean, expected a time")
        if isinstance(value, str):
            text = value.strip()
            try:
                number = float(text)
            except ValueError:
                return self._text(text)
            if self.format is not None or self.unit == "iso":
                return self._text(text)
            value = number
        if isinstance(value, int | float) and math.isfinite(value):
            unit = self.unit
            if unit in ("auto", "iso"):
                unit = "ms" if abs(value) >= 1e11 else "s"
            factor = {"ms": 1, "s": 1000, "us": 0.001}[unit]
            return int(round(value * factor))
        raise DecodeError("invalid_timestamp", f"{self.what} {bounded_repr(value)} is not a time")

    def _text(self, text: str) -> int:
        try:
            if self.format is not None:
                parsed = datetime.strptime(text, self.format)
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            expected = f"format {bounded_repr(self.format)}" if self.format else "ISO 8601 or YYYY-MM-DD HH:MM:SS"
            raise DecodeError("invalid_timestamp", f"{self.what} {bounded_repr(text)} does not match {expected}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.zone)
        return int(parsed.timestamp() * 1000)


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def coerce_text_value(value, kind: str, what: str):
    """Coerces a JSON value or CSV cell to ``kind`` (auto, float, int, bool, string)."""
    if kind == "auto":
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                low = text.lower()
                if low in ("true", "false"):
                    return low == "true"
                return value
            return number
        if isinstance(value, bool | int | float):
            return value
        raise DecodeError("invalid_metric", f"{what} is a {type(value).__name__}, expected number, bool or string")
    if kind == "string":
        if isinstance(value, dict | list):
            raise DecodeError("invalid_metric", f"{what} is a {type(value).__name__}, expected text")
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise DecodeError("invalid_metric", f"{what} {bounded_repr(value)} is not a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DecodeError("invalid_metric", f"{what} {bounded_repr(value)} is not a number")
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if kind == "int" else float(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise DecodeError("invalid_metric", f"{what} {bounded_repr(value)} is not a number") from None
    if kind == "float":
        number = float(number)
        if not math.isfinite(number):
            raise DecodeError("invalid_metric", f"{what} {bounded_repr(value)} is not a finite number")
    elif isinstance(number, float):
        if not number.is_integer():
            raise DecodeError("invalid_metric", f"{what} {bounded_repr(value)} is not an integer")
        number = int(number)
    return number


class TextField:
    """One JSON path / CSV column -> metric: lookup, default, coercion, then value rules."""

    __slots__ = ("mapping", "path", "metric", "kind", "default", "required", "converter")

    def __init__(self, mapping: TextMapping, units: dict[str, str], ranges: dict, path: tuple | None):
        self.mapping = mapping
        self.path = path
        self.metric = mapping.metric
        self.kind = mapping.type
        self.default = mapping.default
        self.required = bool(mapping.required)
        self.converter = ValueConverter(
            self.metric, mapping, additive=mapping.additive, float32=False, integer_raw=mapping.type in ("int", "auto"), units=units
        )
        _add_range(ranges, self.metric, mapping)

    def emit(self, value, metrics: dict, issues: list, where: str) -> None:
        if value is _MISSING or value is None or value == "":
            if self.default is None:
                if self.required:
                    raise DecodeError("missing_field", f"required {where} {self.mapping.source} is missing", stage="contract")
                return
            value = self.default
        self.converter.emit(coerce_text_value(value, self.kind, f"{where} {self.mapping.source}"), metrics, issues)


# --- output ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    identity: DeviceIdentity
    ingest_ts: int
    timestamp: int | None = None
    hub_ts: int | None = None
    doc: object = None
    row: dict | None = None


def _token_getter(token: str):
    if token == "device.id":
        return lambda c: c.identity.device_id
    if token == "device.tenant":
        return lambda c: c.identity.tenant
    if token == "device.product":
        return lambda c: c.identity.product_id
    if token == "device.hub":
        return lambda c: c.identity.hub_id
    if token == "ingest_time":
        return lambda c: c.ingest_ts
    if token == "timestamp":
        return lambda c: c.timestamp if c.timestamp is not None else c.ingest_ts
    if token == "hub_timestamp":
        return lambda c: c.hub_ts
    if token.startswith("payload."):
        parts = compile_path(token[len("payload.") :])

        def from_payload(c):
            value = get_path(c.doc, parts) if c.doc is not None else _MISSING
            return None if value is _MISSING else value

        return from_payload
    column = token[len("row.") :]
    return lambda c: c.row.get(column) if c.row is not None else None


def _compile_template(template: str):
    tokens = TEMPLATE_TOKEN.findall(template)
    if not tokens:
        return lambda c: template
    if template.strip() == f"${{{tokens[0]}}}" and len(tokens) == 1:
        return _token_getter(tokens[0])
    pieces = []
    for i, literal in enumerate(TEMPLATE_TOKEN.split(template)):
        pieces.append(_token_getter(literal) if i % 2 else (lambda c, text=literal: text))

    def joined(c):
        values = [p(c) for p in pieces]
        return None if any(v is None for v in values) else "".join(str(v) for v in values)

    return joined


class OutputBuilder:
    """Fills the standard record from ``output_schema`` templates.

    Keys left at their default (``${device.id}``, ``${device.tenant}``, ``${timestamp}``, …) are
    read straight from the identity and context; only custom templates run a compiled getter.
    """

    _DEFAULTS = {
        "device_id": "${device.id}",
        "product_id": "${device.product}",
        "timestamp": "${timestamp}",
        "hub_timestamp": "${hub_timestamp}",
        "tenant": "${device.tenant}",
        "hub_id": "${device.hub}",
    }

    def __init__(self, schema: dict[str, str], spec_id: str, spec_version: str, units: dict[str, str], ranges: dict):
        self.custom = {
            key: _compile_template(t) for key, t in schema.items() if key != "metrics" and t.strip() != self._DEFAULTS.get(key)
        }
        self.templates = schema
        self.spec_id = spec_id
        self.spec_version = spec_version
        self.units = units
        self.ranges = ranges

    def _time_value(self, value, key: str) -> int | None:
        if value is None or type(value) is int:
            return value
        return TimeReader(None, f"output_schema.{key} {self.templates.get(key, '')}").read(value)

    def build(self, ctx: _Context, metrics: dict, issues: list) -> dict:
        """Returns the record, or raises a ``contract`` DecodeError."""
        if not metrics:
            raise DecodeError("empty_metrics", "the payload decoded to no metrics", stage="contract")
        identity = ctx.identity
        device_id, product_id, tenant = identity.device_id, identity.product_id, identity.tenant
        hub_id, child, hub_ts, device_ts = identity.hub_id, identity.child_device_id, ctx.hub_ts, ctx.timestamp
        if self.custom:
            custom = self.custom
            if "device_id" in custom:
                device_id = custom["device_id"](ctx)
                if not isinstance(device_id, str) or not device_id:
                    raise DecodeError(
                        "missing_field",
                        f"output_schema.device_id {self.templates['device_id']} resolved to {bounded_repr(device_id)}",
                        stage="contract",
                    )
            if "product_id" in custom:
                product_id = custom["product_id"](ctx)
            if "timestamp" in custom:
                device_ts = self._time_value(custom["timestamp"](ctx), "timestamp")
            if "hub_timestamp" in custom:
                hub_ts = self._time_value(custom["hub_timestamp"](ctx), "hub_timestamp")
            if "tenant" in custom:
                tenant = custom["tenant"](ctx)
            if "hub_id" in custom:
                hub_id = custom["hub_id"](ctx)
            if "child_device_id" in custom:
                child = custom["child_device_id"](ctx)
        if device_ts is None:
            device_ts = ctx.ingest_ts
        record = {"device_id": device_id, "product_id": product_id, "device_ts": device_ts, "ingest_ts": ctx.ingest_ts, "metrics": metrics}
        if hub_id is not None:
            record["hub_id"] = hub_id
        if child is not None:
            record["child_device_id"] = child
        if hub_ts is not None:
            record["hub_ts"] = hub_ts
        if tenant is not None:
            record["tenant"] = str(tenant)
        units = self.units
        if units:
            if units.keys() <= metrics.keys():
                record["units"] = units.copy()
            else:
                present = {m: u for m, u in units.items() if m in metrics}
                if present:
                    record["units"] = present
        record["spec_id"] = self.spec_id
        record["spec_version"] = self.spec_version
        ranges = self.ranges
        if ranges:
            for name, (low, high) in ranges.items():
                value = metrics.get(name)
                if type(value) in (int, float) and (low is not None and value < low or high is not None and value > high):
                    issues.append({"metric": name, "issue": "out_of_range", "value": value, "min": low, "max": high})
        if issues:
            record["quality"] = issues
        return record


# --- decoders -------------------------------------------------------------------------------


class SpecDecoder:
    """Base for compiled specs; subclasses decode one format."""

    format = ""

    def __init__(self, spec, spec_id: str, spec_version: str, source: str = ""):
        self.spec = spec
        self.spec_id = spec_id
        self.spec_version = spec_version
        self.source = source
        self.product_id = spec.product_type
        self.max_payload = spec.max_payload_bytes
        self.units: dict[str, str] = {}
        self.ranges: dict = {}

    def _output(self):
        return OutputBuilder(self.spec.effective_output_schema, self.spec_id, self.spec_version, self.units, self.ranges)

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self.max_payload:
            raise DecodeError("payload_too_large", f"payload is {_plural(len(payload))}, the limit is {_plural(self.max_payload)}", stage="envelope")
        if not payload or payload.isspace():
            raise DecodeError("empty_payload", "payload is empty")


class HexBinaryDecoder(SpecDecoder):
    """``format: hex_binary`` with length-based, key-value or hybrid parsing."""

    format = "hex_binary"

    def __init__(self, spec: HexBinarySpec, spec_id: str, spec_version: str, source: str = ""):
        super().__init__(spec, spec_id, spec_version, source)
        if spec.parsing_type == "length_based":
            self.layout = FixedLayout(spec.conversion, spec.byte_order, self.units, self.ranges)
        elif spec.parsing_type == "key_value":
            self.layout = KeyValueLayout(spec, self.units, self.ranges)
        else:
            self.layout = HybridLayout(spec, self.units, self.ranges)
        self.output = self._output()
        self.reject_trailing = spec.trailing_bytes == "reject" and spec.parsing_type != "key_value"
        self.checksums = [(c, CHECKSUM_FUNCTIONS[c.algorithm], ">" if (c.byte_order or spec.byte_order) == "big" else "<") for c in spec.checksum]
        has_groups = isinstance(self.layout, FixedLayout) and self.layout.groups
        self.fixed_extent = self.layout.extent if isinstance(self.layout, FixedLayout) and not has_groups else 0
        # Key-value, hybrid and until_end layouts read to the end: they must stop before trailing checksums.
        self.reads_to_end = not isinstance(self.layout, FixedLayout) or any(g.group.until_end for g in self.layout.groups)
        self.input = spec.input
        self.bin_path = compile_path(spec.bin_path)
        self.timestamp_field = spec.timestamp.field if spec.timestamp else None
        self.timestamp_reader = TimeReader(spec.timestamp, f"timestamp field {self.timestamp_field}") if spec.timestamp else None
        self.wrapper_ts = TimeReader(None, "device_timestamp")
        self.wrapper_hub_ts = TimeReader(None, "hub_timestamp")

    def payload_bytes(self, payload: bytes, hint: str | None = None) -> tuple[bytes, object]:
        """Returns (binary data, JSON wrapper document or None) for the configured input mode.

        ``input: auto`` uses the envelope/topic format hint: ``hex`` means hex text (text that is
        not hex is rejected, never read as raw bytes); ``bin`` means raw bytes unless the payload
        is a JSON object (the client's ``data.bin`` wrapper); ``json`` means the wrapper. Without
        a hint, a JSON object is the wrapper, even-length hex text (optional ``0x``, spaces) is
        hex, anything else raw bytes. ``input: bytes|hex|json`` in the spec skips the guessing.
        """
        mode = self.input
        if mode == "auto":
            if hint == "hex":
                mode = "hex"
            elif hint == "json":
                mode = "json"
            elif payload.lstrip()[:1] == b"{" and _json_object(payload) is not None:
                return self._from_wrapper(_json_object(payload))
            elif hint is None and _HEX_TEXT.match(payload) and looks_like_hex_text(payload):
                mode = "hex"
            else:
                mode = "bytes"
        if mode == "bytes":
            return payload, None
        if mode == "hex":
            return decode_hex_text(payload), None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", f"payload is not valid JSON: {exc}") from None
        return self._from_wrapper(doc)

    def _from_wrapper(self, doc) -> tuple[bytes, object]:
        text = get_path(doc, self.bin_path)
        dotted = ".".join(str(p) for p in self.bin_path)
        if text is _MISSING or not isinstance(text, str):
            raise DecodeError("missing_field", f"JSON payload has no {dotted} string with the binary data")
        return decode_hex_or_base64(text, dotted), doc

    def verify_checksums(self, data: bytes) -> int:
        """Checks every checksum; returns the offset just after the last checksum value."""
        total = len(data)
        last = 0
        for check, function, order in self.checksums:
            width = check.width
            at = check.at if check.at is not None else -width
            at = at + total if at < 0 else at
            end = check.end if check.end is not None else at
            end = end + total if end < 0 else end
            start = check.start + total if check.start < 0 else check.start
            if at < 0:
                raise DecodeError(
                    "truncated", f"{check.algorithm}: payload of {_plural(total)} is too short for its {width}-byte checksum", stage="checksum"
                )
            if at + width > total or start < 0 or end > total or start > end:
                raise DecodeError(
                    "truncated",
                    f"{check.algorithm}: payload of {_plural(total)} is too short for bytes {start}..{end} and the checksum at {at}",
                    stage="checksum",
                )
            expected = function(data[start:end])
            carried = int.from_bytes(data[at : at + width], "big" if order == ">" else "little")
            if expected != carried:
                digits = 2 * width
                raise DecodeError(
                    "checksum_mismatch",
                    f"{check.algorithm} over bytes {start}..{end - 1} is 0x{expected:0{digits}X}, "
                    f"payload carries 0x{carried:0{digits}X} at offset {at}",
                    stage="checksum",
                )
            last = max(last, at + width)
        return last

    def fields_end(self, total: int) -> int:
        """Where the fields of a payload of ``total`` bytes end: before the checksums stored at its end."""
        starts = {}
        for check, _, _ in self.checksums:
            at = check.at if check.at is not None else -check.width
            at = at + total if at < 0 else at
            starts[at + check.width] = at
        end = total
        while end in starts and starts[end] < end:
            end = starts[end]
        return end

    def decode(self, envelope: RawEnvelope, identity: DeviceIdentity) -> list:
        """Decodes one payload into one record."""
        self._check_size(envelope.payload)
        data, doc = self.payload_bytes(envelope.payload, identity.format)
        if not data:
            raise DecodeError("empty_payload", "payload holds no bytes")
        metrics: dict = {}
        issues: list = []
        if len(data) < self.fixed_extent:
            # A short frame is reported as truncated (naming the field), not as a checksum mismatch.
            self.layout.read(data, 0, metrics, issues)
        checked_end = self.verify_checksums(data) if self.checksums else 0
        body = data[: self.fields_end(len(data))] if self.checksums and self.reads_to_end else data
        read_end = self.layout.read(body, 0, metrics, issues)
        end = max(read_end, checked_end)
        if self.reject_trailing and end < len(data):
            raise DecodeError("trailing_bytes", f"{_plural(len(data) - end)} after the last field (offset {end}), payload has {_plural(len(data))}")
        if self.reject_trailing and self.checksums:
            # Unread bytes before checksums stored at the end are trailing bytes too: a frame padded
            # with zeros still passes a CRC/xor8 whose position counts from the end.
            tail = self.fields_end(len(data))
            if read_end < tail < len(data):
                raise DecodeError(
                    "trailing_bytes",
                    f"{_plural(tail - read_end)} after the last field (offset {read_end}), before the checksum at offset {tail}",
                )
        ctx = _Context(identity, envelope.received_at, doc=doc)
        if self.timestamp_field is not None:
            raw = metrics.pop(self.timestamp_field, None)
            ctx.timestamp = self.timestamp_reader.read(raw) if raw is not None else None
        elif doc is not None and isinstance(doc, dict):
            if doc.get("device_timestamp") is not None:
                ctx.timestamp = self.wrapper_ts.read(doc["device_timestamp"])
            if doc.get("hub_timestamp") is not None:
                ctx.hub_ts = self.wrapper_hub_ts.read(doc["hub_timestamp"])
        return [self.output.build(ctx, metrics, issues)]


def _json_object(payload: bytes) -> dict | None:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def decode_hex_text(payload: bytes | str) -> bytes:
    """Hex text in any notation of :mod:`operators.hex_text` -> bytes, with a precise error."""
    text = payload.decode("ascii", errors="replace") if isinstance(payload, bytes) else payload
    try:
        return parse_hex_text(text)
    except HexTextError as exc:
        raise DecodeError("invalid_hex", str(exc)) from None


def decode_hex_or_base64(text: str, where: str) -> bytes:
    """Decodes binary carried in JSON: hex when it reads as hex text (:mod:`operators.hex_text`), else base64."""
    body = text.strip()
    try:
        return parse_hex_text(body)
    except HexTextError:
        pass
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("invalid_binary", f"{where} is neither hex nor base64") from None


class JsonDecoder(SpecDecoder):
    """``format: json``: metrics by path, renames, type coercion, defaults."""

    format = "json"

    def __init__(self, spec: JsonSpec, spec_id: str, spec_version: str, source: str = ""):
        super().__init__(spec, spec_id, spec_version, source)
        conv = spec.conversion
        self.metrics_path = compile_path(conv.metrics_path) if conv.metrics_path else None
        self.metrics_path_text = conv.metrics_path
        self.include_unmapped = conv.include_unmapped
        self.fields = [TextField(m, self.units, self.ranges, compile_path(str(m.source))) for m in conv.mapping]
        prefix = self.metrics_path or ()
        self.consumed = {f.path[len(prefix)] for f in self.fields if len(f.path) == len(prefix) + 1 and f.path[: len(prefix)] == prefix}
        ts = conv.timestamp or spec.timestamp
        self.ts_path = compile_path(ts.path) if ts and ts.path else ("device_timestamp",)
        self.ts_reader = TimeReader(ts, ".".join(map(str, self.ts_path)))
        hub = conv.hub_timestamp
        self.hub_path = compile_path(hub.path) if hub else ("hub_timestamp",)
        self.hub_reader = TimeReader(hub, ".".join(map(str, self.hub_path)))
        self.output = self._output()

    def decode(self, envelope: RawEnvelope, identity: DeviceIdentity) -> list:
        """Decodes one JSON document into one record."""
        self._check_size(envelope.payload)
        try:
            doc = orjson.loads(envelope.payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid_json", f"payload is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DecodeError("invalid_json", f"payload is a JSON {type(doc).__name__}, expected an object")
        metrics: dict = {}
        issues: list = []
        if self.metrics_path is not None and self.include_unmapped:
            block = get_path(doc, self.metrics_path)
            if block is _MISSING or not isinstance(block, dict):
                if not self.fields:
                    raise DecodeError("missing_field", f"payload has no {self.metrics_path_text} object")
            else:
                for name, value in block.items():
                    if value is None or name in self.consumed:
                        continue
                    if type(value) in (int, float, bool, str):
                        if type(value) is float and not math.isfinite(value):
                            issues.append({"metric": name, "issue": "not_finite", "value": str(value)})
                            continue
                        metrics[name] = value
                    else:
                        raise DecodeError(
                            "invalid_metric", f"metric {bounded_repr(name)} is a {type(value).__name__}, expected number, bool or string"
                        )
        for f in self.fields:
            f.emit(get_path(doc, f.path), metrics, issues, "path")
        ctx = _Context(identity, envelope.received_at, doc=doc)
        ts = get_path(doc, self.ts_path)
        if ts is not _MISSING and ts is not None:
            ctx.timestamp = self.ts_reader.read(ts)
        hub = get_path(doc, self.hub_path)
        if hub is not _MISSING and hub is not None:
            ctx.hub_ts = self.hub_reader.read(hub)
        return [self.output.build(ctx, metrics, issues)]


# A CSV header longer than this rejects the whole payload (each row's dead letter repeats it).
MAX_CSV_HEADER_CHARS = 16_384


class _RejectedRows:
    """Rejected CSV rows beyond the ones that get a letter each: one summary letter holds them."""

    def __init__(self):
        self.rows: list[int] = []
        self.codes: dict[str, int] = {}
        self.lines: list[str] = []

    def add(self, row: int, code: str, raw_lines: str) -> None:
        self.rows.append(row)
        self.codes[code] = self.codes.get(code, 0) + 1
        self.lines.append(raw_lines)

    def rejection(self, limit: int, header_text: str) -> RowRejection:
        reasons = ", ".join(f"{code} ×{count}" for code, count in sorted(self.codes.items()))
        error = DecodeError("too_many_rejected_rows", f"{len(self.rows)} more rows rejected after the first {limit} "
                            f"(rows {self.rows[0]}–{self.rows[-1]}: {reasons}); this letter holds them")
        return RowRejection(error, self.rows[0], (header_text + "".join(self.lines)).encode("utf-8"))


class CsvDecoder(SpecDecoder):
    """``format: csv``: one record per row; a bad row is rejected on its own.

    ``decode`` returns records and, for rows that fail, :class:`RowRejection` items carrying
    the header plus the row as their payload, so each can be replayed by itself.
    """

    format = "csv"

    def __init__(self, spec: CsvSpec, spec_id: str, spec_version: str, source: str = ""):
        super().__init__(spec, spec_id, spec_version, source)
        conv = spec.conversion
        self.conv = conv
        self.fields = [TextField(m, self.units, self.ranges, None) for m in conv.mapping]
        ts = conv.timestamp or spec.timestamp
        self.ts_column = ts.column if ts else None
        self.ts_reader = TimeReader(ts, "timestamp column")
        self.output = self._output()

    def _columns(self, header: list[str] | None) -> tuple[list[int], int | None, list[str] | None]:
        names = header if header is not None else self.conv.columns
        indexes = []
        for f in self.fields:
            source = f.mapping.source
            if isinstance(source, int):
                indexes.append(source)
            elif names is None:
                raise DecodeError("missing_column", f"column {bounded_repr(source)} needs a header or columns list")
            elif source in names:
                indexes.append(names.index(source))
            else:
                raise DecodeError("missing_column", f"column {bounded_repr(source)} is not in the header (columns: {', '.join(names)})")
        ts_index = None
        if isinstance(self.ts_column, int):
            ts_index = self.ts_column
        elif self.ts_column is not None:
            if names is None or self.ts_column not in names:
                raise DecodeError("missing_column", f"timestamp column {bounded_repr(self.ts_column)} is not in the header")
            ts_index = names.index(self.ts_column)
        elif names is not None and "timestamp" in names:
            ts_index = names.index("timestamp")
        return indexes, ts_index, names

    def decode(self, envelope: RawEnvelope, identity: DeviceIdentity) -> list:
        """Decodes every data row; returns records and row rejections."""
        self._check_size(envelope.payload)
        try:
            text = envelope.payload.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_text", f"CSV payload is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        lines = text.splitlines(keepends=True)
        reader = csv.reader(lines, delimiter=self.conv.delimiter, quotechar=self.conv.quotechar)
        header_text = ""
        header = None
        try:
            if self.conv.header:
                for row in reader:
                    if row:
                        self._check_width(len(row), "the header")
                        header = [c.strip() for c in row]
                        header_text = "".join(lines[: reader.line_num])
                        break
                if header is None:
                    raise DecodeError("empty_payload", "CSV payload has no header row")
                if len(header_text) > MAX_CSV_HEADER_CHARS:
                    # Each rejected row's letter repeats the header: a long one would multiply.
                    raise DecodeError(
                        "header_too_large", f"the CSV header has {len(header_text)} characters, at most {MAX_CSV_HEADER_CHARS} are read"
                    )
            indexes, ts_index, names = self._columns(header)
            needed = max(indexes + ([ts_index] if ts_index is not None else []))
            out: list = []
            row_number = 0
            rejected = 0
            overflow = _RejectedRows()  # rejected rows past max_rejected_rows, for one summary letter
            start = reader.line_num
            for row in reader:
                end = reader.line_num
                raw_lines = "".join(lines[start:end])
                if not row or not any(cell.strip() for cell in row):
                    start = end
                    continue
                row_number += 1
                if row_number > self.conv.max_rows:
                    rest = "".join(lines[start:])
                    error = DecodeError("too_many_rows", f"more than {self.conv.max_rows} data rows: rows {row_number} onward "
                                        f"({len(rest)} characters) are not decoded; this letter holds them")
                    out.append(RowRejection(error, row_number, (header_text + rest).encode("utf-8")))
                    break
                start = end
                try:
                    self._check_width(len(row), f"row {row_number}")
                    out.append(self._row(row, row_number, indexes, ts_index, needed, names, envelope, identity))
                except DecodeError as exc:
                    rejected += 1
                    if rejected <= self.conv.max_rejected_rows:
                        out.append(RowRejection(exc, row_number, (header_text + raw_lines).encode("utf-8")))
                    else:
                        overflow.add(row_number, exc.code, raw_lines)
        except csv.Error as exc:
            raise DecodeError("invalid_csv", f"CSV line {reader.line_num}: {exc}") from None
        if row_number == 0:
            raise DecodeError("empty_payload", "CSV payload has no data rows")
        if overflow.rows:
            out.append(overflow.rejection(self.conv.max_rejected_rows, header_text))
        return out

    def _check_width(self, columns: int, what: str) -> None:
        if columns > self.conv.max_columns:
            raise DecodeError("too_many_columns", f"{what} has {columns} columns, the spec reads at most {self.conv.max_columns} (max_columns)")

    def _row(self, row, number, indexes, ts_index, needed, names, envelope, identity) -> dict:
        if len(row) <= needed:
            raise DecodeError("missing_column", f"row {number}: has {len(row)} columns, column {needed + 1} is needed")
        metrics: dict = {}
        issues: list = []
        for f, index in zip(self.fields, indexes, strict=True):
            try:
                f.emit(row[index], metrics, issues, "column")
            except DecodeError as exc:
                raise DecodeError(exc.code, f"row {number}: {exc.reason}", stage=exc.stage) from None
        ctx = _Context(identity, envelope.received_at)
        if names is not None:
            ctx.row = dict(zip(names, row, strict=False))
        if ts_index is not None and row[ts_index].strip():
            try:
                ctx.timestamp = self.ts_reader.read(row[ts_index])
            except DecodeError as exc:
                raise DecodeError(exc.code, f"row {number}: {exc.reason}") from None
        try:
            record = self.output.build(ctx, metrics, issues)
            check_record(record)
            return record
        except DecodeError as exc:
            raise DecodeError(exc.code, f"row {number}: {exc.reason}", stage=exc.stage) from None


@dataclass(slots=True)
class RowRejection:
    """One rejected row of a multi-row payload: the error, the row number, and the row's bytes."""

    error: DecodeError
    row: int
    payload: bytes


def compile_spec(spec, spec_id: str, spec_version: str, source: str = "") -> SpecDecoder:
    """Compiles a validated spec into its decoder.

    Args:
        spec: A :class:`HexBinarySpec`, :class:`JsonSpec` or :class:`CsvSpec`.
        spec_id: Spec id reported on records and dead letters.
        spec_version: Spec version reported on records and dead letters.
        source: File the spec came from.

    Returns:
        The decoder.
    """
    if isinstance(spec, HexBinarySpec):
        return HexBinaryDecoder(spec, spec_id, spec_version, source)
    if isinstance(spec, JsonSpec):
        return JsonDecoder(spec, spec_id, spec_version, source)
    return CsvDecoder(spec, spec_id, spec_version, source)


__all__ = [
    "METRICS_TOKENS",
    "CsvDecoder",
    "HexBinaryDecoder",
    "JsonDecoder",
    "RowRejection",
    "SpecDecoder",
    "compile_spec",
    "decode_hex_text",
]
