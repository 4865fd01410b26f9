"""The YAML decoder spec language, as typed and validated models.

One spec describes how one product's payloads become standard telemetry records. It is read
with :func:`operators.spec_loading.load_spec_file`, which turns validation errors into
``file:line: field: reason`` messages. ``docs/specs.md`` documents every option with examples.

The client's examples load as written: ``product_type``, ``format``, ``parsing_type``,
``conversion`` (a field list for binary, a ``delimiter``/``header``/``mapping`` block for
CSV), ``sections`` with ``separator`` for hybrid, ``key``/``value_length`` for key-value, and
``output_schema`` either at the top level or inside ``conversion``.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

# type name -> (struct code, size); None code = handled without struct.
BINARY_TYPES: dict[str, tuple[str | None, int | None]] = {
    "int8": ("b", 1),
    "uint8": ("B", 1),
    "int16": ("h", 2),
    "uint16": ("H", 2),
    "int32": ("i", 4),
    "uint32": ("I", 4),
    "int64": ("q", 8),
    "uint64": ("Q", 8),
    "float32": ("f", 4),
    "float64": ("d", 8),
    "bool": ("?", 1),
    "ascii": (None, None),
    "bytes": (None, None),
}
TYPE_ALIASES = {
    "float": "float64",
    "double": "float64",
    "int": "int64",
    "integer": "int64",
    "uint": "uint64",
    "boolean": "bool",
    "string": "ascii",
    "str": "ascii",
    "char": "ascii",
    "raw": "bytes",
    "hex": "bytes",
}
INTEGER_TYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
TEXT_TYPES = frozenset({"auto", "float", "int", "bool", "string"})
CHECKSUM_ALGORITHMS = {"sum8": 1, "xor8": 1, "crc8": 1, "crc16_modbus": 2, "crc16_ccitt": 2, "crc32": 4}
OUTPUT_KEYS = ("tenant", "device_id", "product_id", "hub_id", "child_device_id", "timestamp", "hub_timestamp", "metrics")
METRICS_TOKENS = frozenset({"converted_fields", "mapped_fields", "all_sections_merged"})
TEMPLATE_TOKEN = re.compile(r"\$\{([^}]*)\}")
SCALAR_TOKENS = frozenset({"device.id", "device.tenant", "device.product", "device.hub", "ingest_time", "timestamp", "hub_timestamp"})
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class SpecError(ValueError):
    """A validation problem that knows where it is: ``path`` is relative to the model that raised it."""

    def __init__(self, message: str, path: tuple = ()):
        super().__init__(message)
        self.path = path


def parse_int(value: object, what: str) -> int:
    """Reads an integer written as a number or as ``0x..`` / ``0b..`` text."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an integer (decimal, 0x hex or 0b binary)") from None
    raise ValueError(f"{what} must be an integer, got {type(value).__name__}")


def normalize_binary_type(value: object) -> str:
    """Returns the canonical binary type name for a type or alias."""
    if not isinstance(value, str):
        raise ValueError(f"type must be a string, got {value!r}")
    name = TYPE_ALIASES.get(value.strip().lower(), value.strip().lower())
    if name not in BINARY_TYPES:
        raise ValueError(f"unknown type {value!r}; use one of {', '.join(BINARY_TYPES)}")
    return name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _metric_name(value: str) -> str:
    if not METRIC_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid metric name (letters, digits, _ . -; not starting with a digit)")
    return value


class BitField(_Model):
    """A named flag or sub-integer inside an integer value (e.g. one alarm bit of a status word).

    Exactly one of ``bit`` (one bit -> bool), ``mask`` (any masked bit set -> bool) or
    ``start`` + ``width`` (bits start..start+width-1 -> unsigned integer) is given.
    """

    name: str
    bit: int | None = Field(default=None, ge=0, le=63)
    mask: int | None = None
    start: int | None = Field(default=None, ge=0, le=63)
    width: int | None = Field(default=None, ge=1, le=64)
    enum: dict[int, str] | None = None
    unit: str | None = None
    description: str | None = None

    _check_name = field_validator("name")(_metric_name)

    @field_validator("mask", mode="before")
    @classmethod
    def _mask(cls, value):
        return None if value is None else parse_int(value, "mask")

    @field_validator("enum", mode="before")
    @classmethod
    def _enum_keys(cls, value):
        return _enum_keys(value)

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [self.bit is not None, self.mask is not None, self.start is not None or self.width is not None]
        if sum(kinds) != 1:
            raise ValueError(f"bit field {self.name!r} needs exactly one of: bit, mask, or start + width")
        if (self.start is None) != (self.width is None):
            raise ValueError(f"bit field {self.name!r}: start and width go together")
        if self.enum is not None and self.start is None:
            raise ValueError(f"bit field {self.name!r}: enum needs a start + width sub-integer")
        return self


def _enum_keys(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("enum must be a mapping of raw value -> label")
    return {parse_int(key, "enum key"): label for key, label in value.items()}


class ValueRules(_Model):
    """What happens to a raw value: scale/offset, rounding, enum labels, bit fields, unit, range.

    ``value = raw * scale + value_offset``, rounded to ``decimals`` (default: the decimals of
    ``scale`` and ``value_offset``). ``min``/``max`` are the contract range: a value outside it is
    kept and flagged as a quality issue on the record.
    """

    scale: float | None = None
    value_offset: float | None = None
    decimals: int | None = Field(default=None, ge=0, le=15)
    unit: str | None = None
    enum: dict[int, str] | None = None
    bits: list[BitField] | None = None
    keep: bool = True
    min: float | None = None
    max: float | None = None
    required: bool | None = None
    description: str | None = None

    @field_validator("enum", mode="before")
    @classmethod
    def _enum_keys(cls, value):
        return _enum_keys(value)

    @field_validator("scale")
    @classmethod
    def _scale_not_zero(cls, value):
        if value == 0:
            raise ValueError("scale 0 would make every value 0")
        return value

    @model_validator(mode="after")
    def _range_order(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.enum is not None and (self.scale is not None or self.value_offset is not None):
            raise ValueError("enum labels raw values; it cannot be combined with scale or value_offset")
        return self


class BinaryField(ValueRules):
    """One value at a byte offset (length-based / hybrid) or after a key (key-value)."""

    field: str
    offset: int | None = Field(default=None, ge=0)
    length: int | None = Field(default=None, ge=1)
    value_length: int | None = Field(default=None, ge=1)
    key: int | None = None
    key_bytes: int | None = Field(default=None, ge=1, le=2)
    type: str
    byte_order: Literal["big", "little"] | None = None
    encoding: Literal["ascii", "utf8", "latin1"] = "ascii"

    _check_name = field_validator("field")(_metric_name)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value):
        return normalize_binary_type(value)

    @model_validator(mode="before")
    @classmethod
    def _key_width(cls, data):
        # "0x0001" is a 2-byte key even though its value fits in one: the written width counts.
        if isinstance(data, dict) and isinstance(data.get("key"), str) and data.get("key_bytes") is None:
            digits = data["key"].strip().lower().removeprefix("0x")
            if data["key"].strip().lower().startswith("0x") and digits:
                data = dict(data, key_bytes=(len(digits) + 1) // 2)
        return data

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value):
        return None if value is None else parse_int(value, "key")

    @model_validator(mode="after")
    def _size(self):
        if self.length is not None and self.value_length is not None and self.length != self.value_length:
            raise SpecError(f"field {self.field!r}: length {self.length} and value_length {self.value_length} disagree", ("value_length",))
        code, size = BINARY_TYPES[self.type]
        given = self.length or self.value_length
        if size is not None and given is not None and given != size:
            raise SpecError(
                f"field {self.field!r}: type {self.type} is {size} byte(s), length says {given}", ("length" if self.length else "value_length",)
            )
        if size is None and given is None:
            raise SpecError(f"field {self.field!r}: type {self.type} needs a length", ("type",))
        if (self.scale is not None or self.value_offset is not None) and self.type in ("ascii", "bytes", "bool"):
            raise ValueError(f"field {self.field!r}: scale/value_offset need a numeric type, not {self.type}")
        if (self.bits or self.enum) and self.type not in INTEGER_TYPES:
            raise ValueError(f"field {self.field!r}: bits and enum need an integer type, not {self.type}")
        return self

    @property
    def size(self) -> int:
        """The value's size in bytes."""
        return BINARY_TYPES[self.type][1] or self.length or self.value_length or 0


class BinaryGroup(_Model):
    """A repeated group: ``count`` elements of ``size`` bytes, each decoded with ``fields``.

    The count is fixed (``count``), read from an earlier field (``count_field``), or as many
    whole elements as the payload holds (``until_end``). Metric names follow ``naming``.
    """

    group: str
    offset: int = Field(ge=0)
    count: int | None = Field(default=None, ge=0)
    count_field: str | None = None
    until_end: bool = False
    size: int | None = Field(default=None, ge=1)
    naming: str = "{group}_{index}_{field}"
    index_base: int = Field(default=0, ge=0)
    fields: list[BinaryField] = Field(min_length=1)

    _check_name = field_validator("group")(_metric_name)

    @model_validator(mode="after")
    def _count_and_size(self):
        if sum([self.count is not None, self.count_field is not None, self.until_end]) != 1:
            raise ValueError(f"group {self.group!r} needs exactly one of count, count_field, until_end")
        for f in self.fields:
            if f.offset is None:
                raise ValueError(f"group {self.group!r}: field {f.field!r} needs an offset within the element")
        extent = max(f.offset + f.size for f in self.fields)
        if self.size is not None and self.size < extent:
            raise ValueError(f"group {self.group!r}: size {self.size} is smaller than its fields' extent {extent}")
        for token in re.findall(r"\{(\w*)\}", self.naming):
            if token not in ("group", "index", "field"):
                raise ValueError(f"group {self.group!r}: naming placeholder {{{token}}} is not one of {{group}} {{index}} {{field}}")
        if "{index}" not in self.naming or "{field}" not in self.naming:
            raise ValueError(f"group {self.group!r}: naming must contain {{index}} and {{field}}")
        return self

    @property
    def element_size(self) -> int:
        """Bytes per element."""
        return self.size or max(f.offset + f.size for f in self.fields)


def _item_kind(value: Any) -> str:
    # Tags appear in error locations; "<...>" keeps them apart from the items' own field/group keys.
    return "<group>" if isinstance(value, dict) and "group" in value else "<field>"


LayoutItem = Annotated[
    Annotated[BinaryField, Tag("<field>")] | Annotated[BinaryGroup, Tag("<group>")],
    Discriminator(_item_kind),
]


class Section(_Model):
    """One hybrid section: introduced by the separator byte, then fields at offsets within it."""

    section_id: int | str
    conversion: list[LayoutItem] = Field(min_length=1)
    length: int | None = Field(default=None, ge=1)
    required: bool = True


class Checksum(_Model):
    """Checksum/CRC over payload bytes ``start``..``end`` (exclusive), stored at ``at``.

    Negative positions count from the end of the payload. By default the sum covers everything
    before the checksum, and the checksum is the last bytes of the payload.
    """

    algorithm: Literal["sum8", "xor8", "crc8", "crc16_modbus", "crc16_ccitt", "crc32"]
    start: int = 0
    end: int | None = None
    at: int | None = None
    byte_order: Literal["big", "little"] | None = None

    @property
    def width(self) -> int:
        """Checksum size in bytes."""
        return CHECKSUM_ALGORITHMS[self.algorithm]


class TimestampSource(_Model):
    """Where a record's device time comes from and how to read it.

    ``field`` (binary: a decoded field, removed from metrics), ``path`` (JSON) or ``column``
    (CSV). ``unit``: ``ms``/``s``/``us`` epoch numbers, ``iso`` text, or ``auto`` (numbers are ms
    when ≥ 1e11, else seconds; text is ISO 8601 or ``YYYY-MM-DD HH:MM:SS``). ``format`` is a
    ``strptime`` pattern; ``timezone`` applies to text without a zone (default UTC).
    """

    field: str | None = None
    path: str | None = None
    column: str | int | None = None
    unit: Literal["auto", "ms", "s", "us", "iso"] = "auto"
    format: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value):
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as UTC or Asia/Seoul)") from None
        return value


class TextMapping(ValueRules):
    """One JSON path or CSV column -> one metric, with type coercion and optional default."""

    source: str | int
    target: str | None = None
    type: str = "auto"
    default: Any = None
    offset: float | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value):
        if not isinstance(value, str):
            raise ValueError(f"type must be a string, got {value!r}")
        name = value.strip().lower()
        name = {"double": "float", "integer": "int", "boolean": "bool", "str": "string", "ascii": "string"}.get(name, name)
        if name.startswith(("float", "int", "uint")) and name not in TEXT_TYPES:
            name = "float" if name.startswith("float") else "int"
        if name not in TEXT_TYPES:
            raise ValueError(f"unknown type {value!r}; use one of {', '.join(sorted(TEXT_TYPES))}")
        return name

    @model_validator(mode="after")
    def _offset_alias(self):
        if self.offset is not None and self.value_offset is not None:
            raise ValueError("give offset or value_offset, not both")
        if (self.scale is not None or self.value_offset is not None or self.offset is not None) and self.type in ("bool", "string"):
            raise ValueError(f"scale/offset need a numeric type, not {self.type}")
        if (self.bits or self.enum) and self.type not in ("int", "auto"):
            raise ValueError(f"bits and enum need an integer value, not {self.type}")
        _metric_name(self.metric)
        return self

    @property
    def metric(self) -> str:
        """The metric name the value is stored under."""
        return self.target or str(self.source)

    @property
    def additive(self) -> float | None:
        """The additive offset (``offset`` is accepted as a name for it in text formats)."""
        return self.value_offset if self.value_offset is not None else self.offset


class CsvConversion(_Model):
    """CSV: delimiter, header, column mapping with types, timestamp column; one record per row."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quotechar: str = Field(default='"', min_length=1, max_length=1)
    header: bool = True
    columns: list[str] | None = None
    mapping: list[TextMapping] = Field(min_length=1)
    timestamp: TimestampSource | None = None
    output_schema: dict[str, str] | None = None
    # Bounded work per payload: rows decoded, columns per row, rows rejected one by one (the
    # rest of each kind goes into one summary dead letter with those rows as its payload).
    max_rows: int = Field(default=10_000, ge=1)
    max_columns: int = Field(default=1_000, ge=1)
    max_rejected_rows: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _columns(self):
        if not self.header and self.columns is None:
            for m in self.mapping:
                if not isinstance(m.source, int):
                    raise ValueError(f"header: false without columns: source {m.source!r} must be a column index (0-based)")
        if self.timestamp is not None and self.timestamp.column is None:
            raise ValueError("timestamp needs a column")
        return self


class JsonConversion(_Model):
    """JSON: every metric under ``metrics_path`` plus ``mapping`` entries (paths, renames, types)."""

    metrics_path: str | None = "data.metrics"
    include_unmapped: bool = True
    mapping: list[TextMapping] = Field(default_factory=list)
    timestamp: TimestampSource | None = None
    hub_timestamp: TimestampSource | None = None
    output_schema: dict[str, str] | None = None

    @model_validator(mode="after")
    def _paths(self):
        for m in self.mapping:
            if not isinstance(m.source, str):
                raise ValueError(f"JSON mapping source {m.source!r} must be a path such as data.metrics.tempC")
        for ts in (self.timestamp, self.hub_timestamp):
            if ts is not None and ts.path is None:
                raise ValueError("a JSON timestamp needs a path")
        if self.metrics_path is None and not self.mapping:
            raise ValueError("nothing to decode: give a metrics_path or a mapping")
        return self


class SpecExample(_Model):
    """A payload and what it must decode to (or the reason it must be rejected with)."""

    name: str | None = None
    hex: str | None = None
    base64: str | None = None
    text: str | None = None
    csv: str | None = None
    json_: Any = Field(default=None, alias="json")
    device_id: str = "example-device"
    product_id: str | None = None
    tenant: str | None = None
    received_at: int | None = None
    metrics: dict[str, Any] | None = None
    records: list[dict[str, Any]] | None = None
    device_ts: int | None = None
    quality: list[str] | None = None
    error: str | None = None
    stage: str | None = None

    @model_validator(mode="after")
    def _one_payload(self):
        given = [n for n in ("hex", "base64", "text", "csv", "json_") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("an example needs exactly one payload: hex, base64, text, csv or json")
        outcomes = [n for n in ("metrics", "records", "error") if getattr(self, n) is not None]
        if len(outcomes) != 1:
            raise ValueError("an example needs exactly one expectation: metrics, records or error")
        return self


class _SpecBase(_Model):
    product_type: str = Field(min_length=1)
    spec_id: str | None = None
    version: str | None = None
    description: str | None = None
    output_schema: dict[str, str] | None = None
    timestamp: TimestampSource | None = None
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD, ge=1, le=64 * 1024 * 1024)
    examples: list[SpecExample] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _product_alias(cls, data):
        if isinstance(data, dict) and "product_id" in data:
            data = dict(data)
            if "product_type" in data:
                raise ValueError("give product_type or product_id, not both")
            data["product_type"] = data.pop("product_id")
        if isinstance(data, dict) and isinstance(data.get("version"), int | float):
            data = dict(data, version=str(data["version"]))
        return data

    @model_validator(mode="after")
    def _output_schema(self):
        schema = self.effective_output_schema
        at = ("output_schema",) if self.output_schema is not None else ("conversion", "output_schema")
        for key, template in schema.items():
            if key not in OUTPUT_KEYS:
                raise SpecError(f"output_schema key {key!r} is not one of {', '.join(OUTPUT_KEYS)}", (*at, key))
            if not isinstance(template, str):
                raise SpecError(f"output_schema.{key} must be a string template", (*at, key))
            tokens = TEMPLATE_TOKEN.findall(template)
            for token in tokens:
                if not (token in SCALAR_TOKENS or token in METRICS_TOKENS or token.startswith(("payload.", "row."))):
                    raise SpecError(
                        f"output_schema.{key}: unknown placeholder ${{{token}}}; use device.id, device.tenant, device.product, "
                        "device.hub, ingest_time, timestamp, hub_timestamp, payload.<path>, row.<column> or converted_fields",
                        (*at, key),
                    )
                fmt = getattr(self, "format", None)
                if token.startswith("row.") and fmt != "csv" or token.startswith("payload.") and fmt == "csv":
                    source = "CSV row" if token.startswith("row.") else "JSON payload"
                    raise SpecError(f"output_schema.{key}: ${{{token}}} reads the {source}, which a {fmt} spec does not have", (*at, key))
            metric_tokens = [t for t in tokens if t in METRICS_TOKENS]
            if key == "metrics":
                if template.strip() not in {f"${{{t}}}" for t in METRICS_TOKENS}:
                    raise SpecError(
                        "output_schema.metrics must be exactly ${converted_fields}, ${mapped_fields} or ${all_sections_merged}", (*at, key)
                    )
            elif metric_tokens:
                raise SpecError(f"output_schema.{key}: ${{{metric_tokens[0]}}} can only fill metrics", (*at, key))
            if (
                key in ("timestamp", "hub_timestamp")
                and len(tokens) != 1
                or key in ("timestamp", "hub_timestamp")
                and template.strip() != f"${{{tokens[0]}}}"
            ):
                raise SpecError(f"output_schema.{key} must be a single placeholder such as ${{timestamp}} or ${{ingest_time}}", (*at, key))
        return self

    @property
    def effective_output_schema(self) -> dict[str, str]:
        """The output schema: top level, else inside ``conversion``, else the default."""
        conversion = getattr(self, "conversion", None)
        nested = getattr(conversion, "output_schema", None)
        if self.output_schema is not None and nested is not None:
            raise ValueError("output_schema is given both at the top level and inside conversion")
        return (
            self.output_schema
            or nested
            or {
                "tenant": "${device.tenant}",
                "device_id": "${device.id}",
                "timestamp": "${timestamp}",
                "metrics": "${converted_fields}",
            }
        )


class HexBinarySpec(_SpecBase):
    """Binary payloads: raw bytes, hex text, or hex/base64 inside the client's JSON wrapper."""

    format: Literal["hex_binary"]
    parsing_type: Literal["length_based", "key_value", "hybrid"] = "length_based"
    byte_order: Literal["big", "little"] = "big"
    input: Literal["auto", "bytes", "hex", "json"] = "auto"
    bin_path: str = "data.bin"
    trailing_bytes: Literal["ignore", "reject"] = "ignore"
    conversion: list[LayoutItem] | None = None
    sections: list[Section] | None = None
    separator: int | None = None
    section_order: Literal["sequential", "tagged"] = "sequential"
    key_length: int | None = Field(default=None, ge=1, le=2)
    length_prefix: int = Field(default=0, ge=0, le=2)
    unknown_keys: Literal["reject", "report"] = "reject"
    checksum: list[Checksum] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unknown_keys(self):
        if self.unknown_keys == "report" and self.length_prefix == 0:
            raise SpecError("unknown_keys: report needs length_prefix 1 or 2 (without a length the next key cannot be found)", ("unknown_keys",))
        return self

    @field_validator("separator", mode="before")
    @classmethod
    def _separator(cls, value):
        if value is None:
            return None
        number = parse_int(value, "separator")
        if not 0 <= number <= 255:
            raise ValueError(f"separator {value!r} must be one byte (0x00..0xFF)")
        return number

    @field_validator("checksum", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _layout(self):
        kind = self.parsing_type
        if kind == "hybrid":
            if not self.sections or self.separator is None:
                raise SpecError("hybrid parsing needs a separator and sections", ("parsing_type",))
            if self.conversion:
                raise SpecError("hybrid parsing takes its fields from sections, not conversion", ("conversion",))
            ids = [s.section_id for s in self.sections]
            if len(set(ids)) != len(ids):
                raise SpecError(f"section ids must be unique, got {ids}", ("sections",))
            if self.section_order == "tagged":
                tags = [_section_tag(s.section_id) for s in self.sections]
                for n, tag in enumerate(tags):
                    if tag is None:
                        raise SpecError(
                            f"tagged sections are found by the id byte after the separator: section_id {ids[n]!r} must be 0..255",
                            ("sections", n, "section_id"),
                        )
                if len(set(tags)) != len(tags):
                    raise SpecError(f"section ids must be unique, got {tags}", ("sections",))
            for n, section in enumerate(self.sections):
                _check_layout(section.conversion, f"section {section.section_id}", ("sections", n, "conversion"))
            _unique_names(
                [item for s in self.sections for item in s.conversion],
                [("sections", n, "conversion", i) for n, s in enumerate(self.sections) for i in range(len(s.conversion))],
            )
            _check_timestamp_field(self)
            return self
        if self.sections or self.separator is not None:
            raise SpecError(f"sections and separator belong to hybrid parsing, not {kind}", ("sections" if self.sections else "separator",))
        if not self.conversion:
            raise SpecError(f"{kind} parsing needs a conversion list of fields", ("conversion",))
        if kind == "length_based":
            _check_layout(self.conversion, "conversion", ("conversion",))
        else:
            _check_key_value(self)
        _unique_names(self.conversion, [("conversion", i) for i in range(len(self.conversion))])
        _check_timestamp_field(self)
        return self


def _section_tag(section_id: int | str) -> int | None:
    """The id byte of a tagged section (0..255), or None when the id is not one."""
    try:
        tag = parse_int(section_id, "section_id")
    except ValueError:
        return None
    return tag if 0 <= tag <= 255 else None


def _check_timestamp_field(spec: HexBinarySpec) -> None:
    if spec.timestamp is None:
        return
    name = spec.timestamp.field
    if name is None:
        raise SpecError("a binary timestamp names a decoded field: timestamp.field", ("timestamp",))
    items = spec.conversion or [item for s in spec.sections or [] for item in s.conversion]
    fields = {item.field: item for item in items if isinstance(item, BinaryField)}
    if name not in fields:
        raise SpecError(f"timestamp.field: {name!r} is not a field of the layout (fields: {', '.join(fields)})", ("timestamp", "field"))
    if not fields[name].keep:
        raise SpecError(f"timestamp.field: {name!r} has keep: false; the time is read from that field's value", ("timestamp", "field"))


def _check_layout(items: list, where: str, path: tuple = ()) -> None:
    known: dict[str, BinaryField] = {}
    for n, item in enumerate(items):
        if isinstance(item, BinaryGroup):
            if item.count_field is not None and item.count_field not in known:
                raise SpecError(
                    f"{where}: group {item.group!r} count_field {item.count_field!r} is not a field listed before it", (*path, n, "count_field")
                )
            counter = known.get(item.count_field) if item.count_field is not None else None
            if counter is not None and (
                counter.type not in INTEGER_TYPES or not counter.keep or counter.enum or counter.scale is not None or counter.value_offset is not None
            ):
                raise SpecError(
                    f"{where}: group {item.group!r} count_field {item.count_field!r} must be a kept integer field "
                    "without scale, value_offset or enum",
                    (*path, n, "count_field"),
                )
            continue
        if item.offset is None:
            raise SpecError(f"{where}: field {item.field!r} needs an offset", (*path, n))
        if item.key is not None:
            raise SpecError(f"{where}: field {item.field!r} has a key; keys belong to key_value parsing", (*path, n, "key"))
        known[item.field] = item
    ends = [i for i, item in enumerate(items) if isinstance(item, BinaryGroup) and item.until_end]
    if ends and ends[-1] != len(items) - 1 or len(ends) > 1:
        raise SpecError(f"{where}: an until_end group must be the last item", (*path, ends[0]))


def _check_key_value(spec: HexBinarySpec) -> None:
    lengths = set()
    keys: dict[int, str] = {}
    where: dict[int, int] = {}
    for n, item in enumerate(spec.conversion or []):
        if isinstance(item, BinaryGroup) or item.key is None:
            name = item.group if isinstance(item, BinaryGroup) else item.field
            raise SpecError(f'key_value parsing: {name!r} needs a key (e.g. key: "0x0001")', ("conversion", n))
        if item.key in keys:
            raise SpecError(f"key 0x{item.key:04X} is used by both {keys[item.key]!r} and {item.field!r}", ("conversion", n, "key"))
        keys[item.key] = item.field
        where[item.key] = n
        lengths.add(item.key_bytes or (2 if item.key > 0xFF else 1))
    key_length = spec.key_length or max(lengths)
    for key, name in keys.items():
        if key >= 1 << (8 * key_length):
            raise SpecError(f"key 0x{key:X} of {name!r} does not fit in key_length {key_length}", ("conversion", where[key], "key"))


def _unique_names(items: list, paths: list[tuple]) -> None:
    seen: set[str] = set()
    for item, path in zip(items, paths, strict=True):
        name = item.group if isinstance(item, BinaryGroup) else item.field
        if name in seen:
            raise SpecError(f"field name {name!r} is used twice", (*path, "group" if isinstance(item, BinaryGroup) else "field"))
        seen.add(name)


class JsonSpec(_SpecBase):
    """JSON payloads mapped by path."""

    format: Literal["json"]
    conversion: JsonConversion = Field(default_factory=JsonConversion)


class CsvSpec(_SpecBase):
    """CSV payloads, one record per row."""

    format: Literal["csv"]
    conversion: CsvConversion


DecoderSpec = Annotated[HexBinarySpec | JsonSpec | CsvSpec, Field(discriminator="format")]
