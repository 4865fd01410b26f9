"""Spec loading: every shipped example, validation errors with file/line/field, load_specs, device registry."""

import hashlib
from functools import cache
from pathlib import Path

import pytest

from operators.decode import DeviceInfo
from operators.spec_loading import (
    SpecLoadError,
    build_registry,
    load_device_registry_file,
    load_spec_file,
    load_spec_text,
    load_specs,
    run_examples,
    spec_files,
)
from operators.spec_yaml import load_yaml_file

ROOT = Path(__file__).resolve().parents[3]
SPEC_DIRS = [ROOT / "yaml_specs", ROOT / "docs" / "spec-examples"]


def _example_params():
    params = []
    for directory in SPEC_DIRS:
        if not directory.is_dir():
            continue
        for path in spec_files([directory]):
            label = path.relative_to(ROOT).as_posix()
            doc = load_yaml_file(path)
            examples = doc.data.get("examples") if isinstance(doc.data, dict) else None
            if not examples:
                params.append(pytest.param(path, None, id=f"{label}::(no examples)"))
                continue
            for index, example in enumerate(examples):
                name = example.get("name") if isinstance(example, dict) else None
                params.append(pytest.param(path, index, id=f"{label}::{name or f'example {index + 1}'}"))
    return params


@cache
def _results(path: Path):
    return run_examples(load_spec_file(path))


@pytest.mark.parametrize(("path", "index"), _example_params())
def test_spec_example(path, index):
    assert index is not None, f"{path} has no examples"
    result = _results(path)[index]
    assert result.ok, f"{result.spec_id} / {result.name}: {result.detail}"


def test_every_shipped_spec_is_found():
    names = {p.name for p in spec_files([ROOT / "yaml_specs"])}
    assert names >= {
        "product_a.yaml",
        "product_b.yaml",
        "product_c.yaml",
        "product_d.yaml",
        "fire_sensor_bin.yaml",
        "fire_sensor_json.yaml",
    }


def test_load_specs_on_the_shipped_directory():
    loaded = load_specs([ROOT / "yaml_specs"])
    by_id = {item.spec_id: item for item in loaded}
    assert set(by_id) >= {"fire_sensor_bin", "fire_sensor_json", "product_a", "product_b", "product_c", "product_d"}
    assert by_id["fire_sensor_bin"].decoder.spec_version == "1"
    assert (by_id["fire_sensor_json"].decoder.product_id, by_id["fire_sensor_json"].decoder.format) == ("fire_sensor", "json")
    # Without a version, the version is a hash of the text as read (after the indentation repair).
    text = load_yaml_file(ROOT / "yaml_specs" / "product_a.yaml").text
    assert by_id["product_a"].decoder.spec_version == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    registry = build_registry(loaded, {"d": DeviceInfo("product_a", "acme")})
    assert [d.format for d in registry.decoders_of("fire_sensor")] == ["hex_binary", "json"]
    assert registry.decoders_of("product_c")[0].spec_id == "product_c"
    assert registry.devices == {"d": DeviceInfo("product_a", "acme")}


# --- run_examples itself must notice wrong expectations -----------------------------------

SPEC_A = """product_type: product_a
format: hex_binary
conversion:
  - {field: temperature, offset: 0, type: int16, scale: 0.1, max: 20}
  - {field: humidity, offset: 2, type: uint8}
output_schema: {device_id: "${device.id}", timestamp: "${ingest_time}", metrics: "${converted_fields}"}
examples:
"""


@pytest.mark.parametrize(
    ("example", "detail"),
    [
        ('{hex: "00FD3C", metrics: {temperature: 25.4, humidity: 60}}', "temperature = 25.3, expected 25.4"),
        ('{hex: "00FD3C", metrics: {temperature: 25.3}}', "unexpected humidity = 60"),
        ('{hex: "00FD3C", metrics: {temperature: 25.3, humidity: 60, extra: 1}}', "extra missing"),
        ('{hex: "00FD3C", error: "anything"}', "expected rejection containing 'anything', got 1 record(s)"),
        (
            '{hex: "00FD", error: "payload has 3 bytes"}',
            "rejected with 'field humidity: needs 1 byte at offset 2, payload has 2 bytes', expected it to contain 'payload has 3 bytes'",
        ),
        ('{hex: "00FD", error: "needs 1 byte", stage: checksum}', "rejected at stage parse, expected checksum"),
        ('{hex: "00FD", metrics: {temperature: 25.3}}', "rejected: field humidity: needs 1 byte at offset 2, payload has 2 bytes"),
        ('{hex: "00FD3C", metrics: {temperature: 25.3, humidity: 60}, quality: []}', "quality issues on ['temperature'], expected []"),
        ('{hex: "00FD3C", received_at: 1772359200000, device_ts: 1, metrics: {temperature: 25.3, humidity: 60}}',
         "device_ts = 1772359200000, expected 1"),
        ('{hex: "00FD3C", metrics: {temperature: 25.3, humidity: true}}', "humidity = 60, expected True"),
    ],
)
def test_run_examples_reports_what_differs(example, detail):
    loaded = load_spec_text(SPEC_A + f"  - {example}\n", "a.yaml")
    [result] = run_examples(loaded)
    assert (result.ok, result.detail, result.name, result.spec_id) == (False, detail, "example 1", "a")


def test_run_examples_passes_matching_expectations():
    loaded = load_spec_text(
        SPEC_A + '  - {name: hot, hex: "00FD3C", quality: [temperature], metrics: {temperature: 25.3, humidity: 60}}\n'
        '  - {name: short, hex: "00FD", error: "needs 1 byte", stage: parse}\n',
        "a.yaml",
    )
    assert [(r.name, r.ok, r.detail) for r in run_examples(loaded)] == [("hot", True, ""), ("short", True, "")]


# --- validation errors: file, line, field path --------------------------------------------

BINARY = """product_type: p
format: hex_binary
parsing_type: length_based
conversion:
  - field: t
    offset: 0
    type: int16
"""

BAD_SPECS = [
    ("unknown option", BINARY + "    scael: 0.1\n", 8, "conversion[0].scael", "unknown option"),
    ("unknown top-level option", BINARY + "bogus: 1\n", 8, "bogus", "unknown option"),
    ("wrong type name", BINARY.replace("int16", "int17"), 7, "conversion[0].type", "unknown type 'int17'"),
    ("length disagrees with type", BINARY + "    length: 4\n", 8, "conversion[0].length", "field 't': type int16 is 2 byte(s), length says 4"),
    ("bad metric name", BINARY.replace("field: t", "field: 1t"), 5, "conversion[0].field", "'1t' is not a valid metric name"),
    ("ascii without length", BINARY.replace("int16", "ascii"), 7, "conversion[0].type", "field 't': type ascii needs a length"),
    (
        "key_value field without key",
        'product_type: p\nformat: hex_binary\nparsing_type: key_value\nconversion:\n  - key: "0x01"\n    field: a\n    type: uint8\n'
        "  - field: b\n    type: uint8\n",
        8,
        "conversion[1]",
        "key_value parsing: 'b' needs a key",
    ),
    (
        "key_value duplicate key",
        'product_type: p\nformat: hex_binary\nparsing_type: key_value\nconversion:\n  - {key: "0x01", field: a, type: uint8}\n'
        '  - {key: "0x01", field: b, type: uint8}\n',
        6,
        "conversion[1].key",
        "key 0x0001 is used by both 'a' and 'b'",
    ),
    ("duplicate field names", BINARY + "  - field: t\n    offset: 2\n    type: uint8\n", 8, "conversion[1].field", "field name 't' is used twice"),
    (
        "hybrid without separator",
        "product_type: p\nformat: hex_binary\nparsing_type: hybrid\nsections:\n  - section_id: 1\n    conversion:\n"
        "      - {field: a, offset: 0, type: uint8}\n",
        3,
        "parsing_type",
        "hybrid parsing needs a separator and sections",
    ),
    (
        "duplicate names across hybrid sections",
        'product_type: p\nformat: hex_binary\nparsing_type: hybrid\nseparator: "0xAA"\nsections:\n  - section_id: 1\n    conversion:\n'
        "      - {field: a, offset: 0, type: uint8}\n  - section_id: 2\n    conversion:\n      - {field: a, offset: 0, type: uint8}\n",
        11,
        "sections[1].conversion[0].field",
        "field name 'a' is used twice",
    ),
    ("separator outside hybrid", BINARY + 'separator: "0xAA"\n', 8, "separator", "sections and separator belong to hybrid parsing"),
    ("separator wider than a byte", BINARY.replace("length_based", "hybrid") + 'separator: "0x1AA"\n', 8, "separator", "must be one byte"),
    (
        "bad output_schema placeholder",
        BINARY + 'output_schema:\n  device_id: "${device.name}"\n  metrics: "${converted_fields}"\n',
        9,
        "output_schema.device_id",
        "unknown placeholder ${device.name}",
    ),
    (
        "output_schema metrics not a metrics token",
        BINARY + 'output_schema:\n  device_id: "${device.id}"\n  metrics: "${timestamp}"\n',
        10,
        "output_schema.metrics",
        "output_schema.metrics must be exactly",
    ),
    ("output_schema unknown key", BINARY + 'output_schema:\n  colour: "red"\n', 9, "output_schema.colour", "key 'colour' is not one of"),
    (
        "bad placeholder in conversion.output_schema (CSV)",
        'product_type: p\nformat: csv\nconversion:\n  mapping:\n    - {source: a}\n  output_schema:\n    timestamp: "${row.ts} x"\n'
        '    metrics: "${mapped_fields}"\n',
        7,
        "conversion.output_schema.timestamp",
        "must be a single placeholder",
    ),
    (
        "bad timezone",
        "product_type: p\nformat: csv\nconversion:\n  mapping:\n    - {source: a, type: float}\n  timestamp:\n    column: ts\n"
        "    timezone: Mars/Olympus\n",
        8,
        "conversion.timestamp.timezone",
        "unknown timezone 'Mars/Olympus'",
    ),
    (
        "until_end group not last",
        "product_type: p\nformat: hex_binary\nconversion:\n  - group: g\n    offset: 0\n    until_end: true\n    fields:\n"
        "      - {field: v, offset: 0, type: uint8}\n  - field: t\n    offset: 0\n    type: uint8\n",
        4,
        "conversion[0]",
        "conversion: an until_end group must be the last item",
    ),
    (
        "count_field not defined earlier",
        "product_type: p\nformat: hex_binary\nconversion:\n  - group: g\n    offset: 1\n    count_field: n\n    fields:\n"
        "      - {field: v, offset: 0, type: uint8}\n  - field: n\n    offset: 0\n    type: uint8\n",
        6,
        "conversion[0].count_field",
        "group 'g' count_field 'n' is not a field listed before it",
    ),
    (
        "group field option misspelled",
        "product_type: p\nformat: hex_binary\nconversion:\n  - group: g\n    offset: 0\n    count: 2\n    fields:\n"
        "      - {field: v, offset: 0, type: uint8, sacle: 2}\n",
        8,
        "conversion[0].fields[0].sacle",
        "unknown option",
    ),
    ("unknown format", "product_type: p\nformat: xml\n", 2, "format", "format must be one of hex_binary, json, csv"),
    ("missing product_type", "format: json\n", 1, "product_type", "Field required"),
    ("missing field type", BINARY.replace("    type: int16\n", ""), 5, "conversion[0].type", "Field required"),
    ("missing CSV conversion", "product_type: p\nformat: csv\n", 1, "conversion", "Field required"),
    (
        "CSV mapping type",
        "product_type: p\nformat: csv\nconversion:\n  mapping:\n    - source: a\n      type: decimal\n",
        6,
        "conversion.mapping[0].type",
        "unknown type 'decimal'",
    ),
    (
        "example without payload",
        BINARY + "examples:\n  - name: x\n    metrics: {t: 1}\n",
        9,
        "examples[0]",
        "an example needs exactly one payload",
    ),
]


@pytest.mark.parametrize(("text", "line", "where", "reason"), [pytest.param(*case[1:], id=case[0]) for case in BAD_SPECS])
def test_spec_error_names_file_line_and_field(tmp_path, text, line, where, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_spec_file(path)
    [problem] = info.value.problems
    prefix = f"{path}:{line}: {where}: "
    assert problem.startswith(prefix), problem
    assert reason in problem[len(prefix) :], problem
    assert str(info.value) == problem


def test_several_problems_in_one_spec_are_all_reported():
    text = BINARY.replace("int16", "int17") + "    scael: 1\n  - {field: u, offset: 2, type: uint8, unit: 5}\n"
    with pytest.raises(SpecLoadError) as info:
        load_spec_text(text, "many.yaml")
    assert [p.split(": ")[0] + ": " + p.split(": ")[1] for p in info.value.problems] == [
        "many.yaml:7: conversion[0].type",
        "many.yaml:8: conversion[0].scael",
        "many.yaml:9: conversion[1].unit",
    ]


def test_spec_that_is_not_a_mapping():
    with pytest.raises(SpecLoadError) as info:
        load_spec_text("- a\n- b\n", "list.yaml")
    assert info.value.problems == ["list.yaml:1: (spec): a spec is a YAML mapping, got list"]


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecLoadError) as info:
        load_spec_file(tmp_path / "gone.yaml")
    assert info.value.problems == [f"{tmp_path / 'gone.yaml'}: cannot read: No such file or directory"]


def test_load_specs_reports_every_file_and_duplicates(tmp_path):
    good = "product_type: p\nformat: json\n"
    (tmp_path / "a.yaml").write_text(good, encoding="utf-8")
    (tmp_path / "b.yml").write_text(good, encoding="utf-8")
    (tmp_path / "c.yaml").write_text("product_type: q\nformat: json\nspec_id: a\n", encoding="utf-8")
    (tmp_path / "d.yaml").write_text("product_type: r\nformat: xml\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a spec", encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_specs([tmp_path])
    assert info.value.problems == [
        f"{tmp_path / 'd.yaml'}:2: format: format must be one of hex_binary, json, csv",
        f"{tmp_path / 'b.yml'}:1: product_type: product 'p' already has a json spec in {tmp_path / 'a.yaml'}",
        f"{tmp_path / 'c.yaml'}:1: spec_id: 'a' is also the id of {tmp_path / 'a.yaml'}",
    ]


def test_spec_id_defaults_to_the_file_name_and_versions_follow_the_text(tmp_path):
    path = tmp_path / "my_product.yaml"
    path.write_text("product_type: p\nformat: json\n", encoding="utf-8")
    first = load_spec_file(path)
    assert first.spec_id == "my_product"
    assert first.decoder.spec_version == "sha256:" + hashlib.sha256(b"product_type: p\nformat: json\n").hexdigest()[:12]
    path.write_text("product_type: p\nformat: json\nversion: 3\n", encoding="utf-8")
    assert load_spec_file(path).decoder.spec_version == "3"
    assert load_spec_text("product_type: p\nformat: json\nspec_id: named\n", "x.yaml").spec_id == "named"


# --- device registry -----------------------------------------------------------------------


def test_device_registry_from_yaml(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n"
        "  dev-1: {product: product_a, tenant: acme}\n"
        "  dev-2: product_b\n"
        "  7: {product: product_d, tenant: 42}\n"
        "  dev-3:\n"
        "    product: fire_sensor\n"
        "    site: plant-1\n"
        "    expected_interval_s: 60\n"
        "    name: Line 3 panel\n",
        encoding="utf-8",
    )
    assert load_device_registry_file(path) == {
        "dev-1": DeviceInfo("product_a", "acme"),
        "dev-2": DeviceInfo("product_b", None),
        "7": DeviceInfo("product_d", "42"),
        "dev-3": DeviceInfo("fire_sensor", None, 60),
    }
    assert load_device_registry_file(str(path)) == load_device_registry_file(path)


def test_device_registry_rejects_a_bad_expected_interval(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  dev-1: {product: product_a, expected_interval_s: -5}\n", encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_device_registry_file(path)
    assert info.value.problems == [f"{path}:2: devices.dev-1.expected_interval_s: expected a positive number of seconds, got -5"]
    assert load_device_registry_file(None) == {}


def test_device_registry_bad_entries_name_their_lines(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n"
        "  dev-1: {product: product_a, tenant: acme}\n"
        "  dev-2: {product: product_b, colour: red, size: 3}\n"
        "  dev-3: {tenant: acme}\n"
        "  dev-4: [product_a]\n"
        "  dev-5: {product: [product_a]}\n"
        "  dev-6: 12\n",
        encoding="utf-8",
    )
    with pytest.raises(SpecLoadError) as info:
        load_device_registry_file(path)
    assert info.value.problems == [
        f"{path}:3: devices.dev-2: unknown option(s) colour, size",
        f"{path}:4: devices.dev-3: needs product (a product id string)",
        f"{path}:5: devices.dev-4: needs product (a product id string)",
        f"{path}:6: devices.dev-5: needs product (a product id string)",
        f"{path}:7: devices.dev-6: needs product (a product id string)",
    ]


@pytest.mark.parametrize("text", ["", "devices: [a, b]\n", "machines: {a: {product: p}}\n", "- devices\n"])
def test_device_registry_without_a_devices_mapping(tmp_path, text):
    path = tmp_path / "devices.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_device_registry_file(path)
    assert info.value.problems == [f"{path}:1: devices: expected a mapping of device id -> {{product, tenant}}"]


def test_device_registry_yaml_errors_and_missing_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  a: {product: p}\n bad\n", encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_device_registry_file(path)
    assert info.value.problems == [f"{path}:3:2: expected <block end>, but found '<scalar>' (while parsing a block mapping)"]
    with pytest.raises(SpecLoadError) as missing:
        load_device_registry_file(tmp_path / "none.yaml")
    assert missing.value.problems == [f"{tmp_path / 'none.yaml'}: cannot read: No such file or directory"]
