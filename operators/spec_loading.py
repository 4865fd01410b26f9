"""Loading decoder specs and the device registry; building the decoder registry; running examples.

Every problem in a spec is reported as ``file:line: field: reason`` (one line per problem) by
:class:`SpecLoadError`, so a bad spec stops the job at start-up instead of rejecting data.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import TypeAdapter, ValidationError

from operators.decode import DecodeError, DecoderRegistry, DeviceIdentity, DeviceInfo, check_record
from operators.envelope import RawEnvelope
from operators.spec_decoder import RowRejection, SpecDecoder, compile_spec, decode_hex_text
from operators.spec_model import DecoderSpec
from operators.spec_yaml import YamlDocument, YamlDocumentError, load_yaml_file, load_yaml_text

SPEC_SUFFIXES = (".yaml", ".yml")
_SPEC_ADAPTER = TypeAdapter(DecoderSpec)
_FLOAT_TOLERANCE = 1e-6


class SpecLoadError(ValueError):
    """One or more problems in spec or registry files; each line is ``file:line: field: reason``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class LoadedSpec:
    """A validated, compiled spec and where it came from.

    Attributes:
        spec: The validated spec model.
        decoder: Its compiled decoder.
        source: File it was read from.
        text: The YAML text that was validated (after repairs): what the job ships to its tasks,
            so a file edited after start-up cannot reach the tasks unvalidated.
        notices: Repairs made while reading the YAML (see :mod:`operators.spec_yaml`).
    """

    spec: object
    decoder: SpecDecoder
    source: str
    text: str
    notices: list[str] = field(default_factory=list)

    @property
    def spec_id(self) -> str:
        """The spec id (``spec_id`` in the file, else the file name without extension)."""
        return self.decoder.spec_id


def _clean_location(doc: YamlDocument, loc: tuple) -> tuple[str, tuple]:
    """Drops union tags from a pydantic location; returns (``a.b[1].c``, data path)."""
    node = doc.data
    path: list = []
    for n, part in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(node, dict) and part in node:
            # Union tags ("hex_binary", "<field>") are not keys of the data; a key holding a
            # scalar is only descended into when it ends the location.
            if not last and not isinstance(node[part], dict | list):
                continue
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text, tuple(path)


def _known_options() -> list[str]:
    from operators import spec_model

    names = set()
    for value in vars(spec_model).values():
        if isinstance(value, type) and issubclass(value, spec_model.BaseModel) and value.__module__ == spec_model.__name__:
            names.update(value.model_fields)
    return sorted(n.rstrip("_") for n in names)


def validation_problems(doc: YamlDocument, exc: ValidationError, options: list[str] | None = None, docs_ref: str = "docs/specs.md") -> list[str]:
    """``file:line: field: reason`` lines for a validation error (also used for rule sets)."""
    problems = []
    for error in exc.errors(include_url=False):
        # A SpecError raised by a model validator carries the path of the option it is about.
        located = getattr((error.get("ctx") or {}).get("error"), "path", ())
        where, path = _clean_location(doc, tuple(error["loc"]) + tuple(located))
        message = error["msg"].removeprefix("Value error, ")
        if where:
            message = message.removeprefix(f"{where}: ")
        if error["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(str(error["loc"][-1]), options if options is not None else _known_options(), n=1)
            message = f"unknown option{f' (did you mean {guess[0]!r}?)' if guess else ''}; see {docs_ref}"
        elif error["type"] == "union_tag_invalid" or error["type"] == "union_tag_not_found":
            message = "format must be one of hex_binary, json, csv"
            if not where:
                where, path = "format", ("format",)
        elif error["type"] == "missing":
            # The missing option is not in the file: name it, at the line of the mapping that lacks it.
            missing = str(error["loc"][-1])
            where = f"{where}.{missing}" if where else missing
        line = doc.line_of(path)
        problems.append(f"{doc.source}:{line}: {where or '(spec)'}: {message}")
    return problems


def parse_spec(doc: YamlDocument, spec_id: str | None = None) -> LoadedSpec:
    """Validates and compiles one loaded YAML document.

    Args:
        doc: The YAML document.
        spec_id: Id to use when the spec has none (default: file name without extension).

    Returns:
        The loaded spec.

    Raises:
        SpecLoadError: with file, line, field and reason for each problem.
    """
    if not isinstance(doc.data, dict):
        raise SpecLoadError([f"{doc.source}:1: (spec): a spec is a YAML mapping, got {type(doc.data).__name__}"])
    try:
        spec = _SPEC_ADAPTER.validate_python(doc.data)
    except ValidationError as exc:
        raise SpecLoadError(validation_problems(doc, exc)) from None
    sid = spec.spec_id or spec_id or Path(doc.source).stem
    version = spec.version or "sha256:" + hashlib.sha256(doc.text.encode("utf-8")).hexdigest()[:12]
    try:
        decoder = compile_spec(spec, sid, version, doc.source)
    except (ValueError, KeyError) as exc:
        raise SpecLoadError([f"{doc.source}:1: (spec): {exc}"]) from None
    return LoadedSpec(spec, decoder, doc.source, doc.text, list(doc.notices))


def load_spec_file(path: str | Path) -> LoadedSpec:
    """Reads, validates and compiles one spec file (see :func:`parse_spec`)."""
    try:
        doc = load_yaml_file(path)
    except YamlDocumentError as exc:
        raise SpecLoadError([str(exc)]) from None
    return parse_spec(doc)


def load_spec_text(text: str, source: str = "<text>") -> LoadedSpec:
    """Reads, validates and compiles a spec given as text."""
    try:
        doc = load_yaml_text(text, source)
    except YamlDocumentError as exc:
        raise SpecLoadError([str(exc)]) from None
    return parse_spec(doc)


def spec_files(paths: list[str | Path]) -> list[Path]:
    """Expands directories to the spec files in them (``*.yaml``/``*.yml``, sorted)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix in SPEC_SUFFIXES and f.is_file()))
        else:
            found.append(p)
    return found


def load_specs(paths: list[str | Path]) -> list[LoadedSpec]:
    """Loads every spec under ``paths``; all problems of all files are reported together.

    Raises:
        SpecLoadError: any invalid spec, a duplicate spec id, or two specs for one product and format.
    """
    loaded: list[LoadedSpec] = []
    problems: list[str] = []
    for path in spec_files(paths):
        try:
            loaded.append(load_spec_file(path))
        except SpecLoadError as exc:
            problems.extend(exc.problems)
    problems.extend(duplicate_problems(loaded))
    if problems:
        raise SpecLoadError(problems)
    return loaded


def duplicate_problems(loaded: list[LoadedSpec]) -> list[str]:
    """Problems between specs: a spec id used twice, or two specs for one product and format."""
    problems = []
    ids: dict[str, str] = {}
    formats: dict[tuple[str, str], str] = {}
    for item in loaded:
        if item.spec_id in ids:
            problems.append(f"{item.source}:1: spec_id: {item.spec_id!r} is also the id of {ids[item.spec_id]}")
        ids[item.spec_id] = item.source
        key = (item.decoder.product_id, item.decoder.format)
        if key in formats:
            problems.append(f"{item.source}:1: product_type: product {key[0]!r} already has a {key[1]} spec in {formats[key]}")
        formats[key] = item.source
    return problems


def load_device_registry_file(location: str | Path | None) -> dict[str, DeviceInfo]:
    """Loads device -> product/tenant master data from a YAML file
    (``devices: {dev-1: {product: product_a, tenant: acme, expected_interval_s: 60}, ...}``); the
    PostgreSQL table is read by ``connectors.postgres.load_device_registry``.

    Raises:
        SpecLoadError: with the file, line, field and reason.
    """
    if location is None:
        return {}
    text = str(location)
    try:
        doc = load_yaml_file(text)
    except YamlDocumentError as exc:
        raise SpecLoadError([str(exc)]) from None
    data = doc.data or {}
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise SpecLoadError([f"{text}:1: devices: expected a mapping of device id -> {{product, tenant}}"])
    devices: dict[str, DeviceInfo] = {}
    problems = []
    for device_id, entry in entries.items():
        line = doc.line_of(("devices", device_id))
        if isinstance(entry, str):
            entry = {"product": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("product"), str):
            problems.append(f"{text}:{line}: devices.{device_id}: needs product (a product id string)")
            continue
        unknown = set(entry) - {"product", "tenant", "site", "expected_interval_s", "name"}
        if unknown:
            problems.append(f"{text}:{line}: devices.{device_id}: unknown option(s) {', '.join(sorted(unknown))}")
            continue
        tenant, interval = entry.get("tenant"), entry.get("expected_interval_s")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0):
            problems.append(f"{text}:{line}: devices.{device_id}.expected_interval_s: expected a positive number of seconds, got {interval!r}")
            continue
        devices[str(device_id)] = DeviceInfo(entry["product"], None if tenant is None else str(tenant), interval)
    if problems:
        raise SpecLoadError(problems)
    return devices


def build_registry(specs: list[LoadedSpec], devices: dict[str, DeviceInfo] | None = None) -> DecoderRegistry:
    """A :class:`DecoderRegistry` holding the specs' decoders per product and the device registry."""
    by_product: dict[str, list] = {}
    for item in specs:
        by_product.setdefault(item.decoder.product_id, []).append(item.decoder)
    registry = DecoderRegistry(by_product=by_product, devices=dict(devices or {}))
    # A spec may allow larger payloads than the default; each decoder still enforces its own limit.
    registry.max_payload_bytes = max([registry.max_payload_bytes, *(item.decoder.max_payload for item in specs)])
    return registry


class RegistryFactory:
    """Builds the decoder registry inside each Flink task from spec texts read at job start.

    The job's client reads and validates every spec (failing fast on a bad one) and ships the
    texts with the operator, so task managers need no access to the spec directory.
    """

    def __init__(self, specs: list[LoadedSpec], devices: dict[str, DeviceInfo] | None = None, max_payload_bytes: int | None = None):
        self.sources = [(item.source, item.text) for item in specs]
        self.spec_ids = [(item.decoder.product_id, item.spec_id) for item in specs]
        self.devices = dict(devices or {})
        self.max_payload_bytes = max_payload_bytes

    def __call__(self) -> DecoderRegistry:
        loaded = [load_spec_text(text, source) for source, text in self.sources]
        registry = build_registry(loaded, self.devices)
        if self.max_payload_bytes is not None:
            registry.max_payload_bytes = self.max_payload_bytes
        return registry


# --- examples -------------------------------------------------------------------------------


@dataclass
class ExampleResult:
    """The outcome of one spec example: ``ok`` and, when not, what differed."""

    spec_id: str
    name: str
    ok: bool
    detail: str = ""


def example_payload(example, spec) -> bytes:
    """The payload bytes an example describes (hex -> bytes unless the spec reads hex text)."""
    if example.hex is not None:
        if getattr(spec, "input", None) == "hex":
            return example.hex.encode("ascii")
        return decode_hex_text(example.hex)
    if example.base64 is not None:
        return base64.b64decode(example.base64)
    if example.json_ is not None:
        return example.json_.encode("utf-8") if isinstance(example.json_, str) else orjson.dumps(example.json_)
    return (example.csv if example.csv is not None else example.text).encode("utf-8")


def _same(expected, actual) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=_FLOAT_TOLERANCE, abs_tol=_FLOAT_TOLERANCE)
    return expected == actual


def _diff(expected: dict, actual: dict) -> str:
    problems = []
    for name, value in expected.items():
        if name not in actual:
            problems.append(f"{name} missing")
        elif not _same(value, actual[name]):
            problems.append(f"{name} = {actual[name]!r}, expected {value!r}")
    problems.extend(f"unexpected {name} = {actual[name]!r}" for name in actual if name not in expected)
    return "; ".join(problems)


def decode_example(loaded: LoadedSpec, example) -> tuple[list[dict], list[DecodeError]]:
    """Decodes one example payload as the job would; returns (records, rejections)."""
    received_at = example.received_at if example.received_at is not None else int(time.time() * 1000)
    envelope = RawEnvelope(payload=example_payload(example, loaded.spec), source="file", received_at=received_at)
    identity = DeviceIdentity(example.device_id, example.product_id or loaded.decoder.product_id, None, None, None, example.tenant)
    try:
        items = loaded.decoder.decode(envelope, identity)
    except DecodeError as exc:
        return [], [exc]
    records, errors = [], []
    for item in items:
        if isinstance(item, RowRejection):
            errors.append(item.error)
            continue
        try:
            check_record(item)
        except DecodeError as exc:
            errors.append(exc)
            continue
        records.append(item)
    return records, errors


def run_examples(loaded: LoadedSpec) -> list[ExampleResult]:
    """Runs every example of a spec and compares the outcome with the expectation."""
    results = []
    for index, example in enumerate(loaded.spec.examples):
        name = example.name or f"example {index + 1}"
        records, errors = decode_example(loaded, example)
        detail = ""
        if example.error is not None:
            if not errors:
                detail = f"expected rejection containing {example.error!r}, got {len(records)} record(s)"
            elif example.error not in errors[0].reason:
                detail = f"rejected with {errors[0].reason!r}, expected it to contain {example.error!r}"
            elif example.stage is not None and errors[0].stage != example.stage:
                detail = f"rejected at stage {errors[0].stage}, expected {example.stage}"
        else:
            expected = example.records if example.records is not None else [example.metrics]
            if errors:
                detail = f"rejected: {errors[0].reason}"
            elif len(records) != len(expected):
                detail = f"{len(records)} record(s), expected {len(expected)}"
            else:
                for n, (want, record) in enumerate(zip(expected, records, strict=True)):
                    diff = _diff(want, record["metrics"])
                    if diff:
                        detail = (f"record {n + 1}: " if len(expected) > 1 else "") + diff
                        break
            if not detail and example.device_ts is not None and records[0]["device_ts"] != example.device_ts:
                detail = f"device_ts = {records[0]['device_ts']}, expected {example.device_ts}"
            if not detail and example.quality is not None:
                flagged = sorted({q.get("metric") or q.get("key") for r in records for q in r.get("quality", [])})
                if flagged != sorted(example.quality):
                    detail = f"quality issues on {flagged}, expected {sorted(example.quality)}"
        results.append(ExampleResult(loaded.spec_id, name, not detail, detail))
    return results


def spec_metric_names(spec) -> frozenset[str] | None:
    """The metric names a spec can produce, or None when they are open-ended (repeated groups,
    JSON metrics copied as they come)."""
    from operators.spec_model import BinaryGroup, HexBinarySpec, JsonSpec

    names: set[str] = set()

    def add(name: str, rules) -> None:
        if rules.keep:
            names.add(name)
        names.update(b.name for b in rules.bits or [])

    if isinstance(spec, HexBinarySpec):
        items = list(spec.conversion or []) + [i for s in spec.sections or [] for i in s.conversion]
        for item in items:
            if isinstance(item, BinaryGroup):
                return None
            add(item.field, item)
        if spec.timestamp is not None and spec.timestamp.field:
            names.discard(spec.timestamp.field)
        return frozenset(names)
    if isinstance(spec, JsonSpec) and spec.conversion.metrics_path and spec.conversion.include_unmapped:
        return None
    for mapping in spec.conversion.mapping:
        add(mapping.metric, mapping)
    return frozenset(names)


def metrics_by_product(specs: list[LoadedSpec]) -> dict[str, frozenset[str]]:
    """Per product, the metric names its specs produce (products with open-ended specs are left out)."""
    found: dict[str, frozenset[str] | None] = {}
    for item in specs:
        names = spec_metric_names(item.spec)
        product = item.decoder.product_id
        if product in found and (found[product] is None or names is None):
            found[product] = None
        else:
            found[product] = (found.get(product) or frozenset()) | names if names is not None else None
    return {product: names for product, names in found.items() if names is not None}
