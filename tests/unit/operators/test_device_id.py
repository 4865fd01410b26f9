"""The device id rule: every id the project ships is valid; every hostile id is refused with a precise reason."""

import re
from pathlib import Path

import pytest

from iotlink.simulator import build_fleet
from operators.device_id import DEVICE_ID_PATTERN, MAX_DEVICE_ID_CHARS, InvalidDeviceId, check_device_id, device_id_problem
from operators.topic import parse_device_topic

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("..", "is a path segment ('.' or '..')"),
        (".", "is a path segment"),
        ("x" * 10_240, "of 10240 characters is longer than the limit of 128"),
        ("dev 1", "has ' ' (U+0020) at offset 3: allowed are letters, digits and . _ : @ -"),
        ('dev"1', "has '\"' (U+0022) at offset 3"),
        ("dev'1", "has \"'\" (U+0027) at offset 3"),
        ("..%2F..\\etc", "has the path separator '\\\\' at offset 7"),
        ("..%2F..", "has the percent-encoding '%2F' (an encoded '/') at offset 2"),
        ("%2e%2e", "has the percent-encoding '%2e' (an encoded '.') at offset 0"),
        ("../etc/passwd", "has the path separator '/' at offset 2"),
        ("a\\b", "has the path separator '\\\\' at offset 1"),
        ("dev\x001", "has the control character U+0000 at offset 3"),
        ("dev\n1", "has the control character U+000A at offset 3"),
        ("dev\x7f", "has the control character U+007F at offset 3"),
        ("dev\u00e9", "has 'é' (U+00E9) at offset 3"),
        ("+", "has '+' (U+002B) at offset 0"),
        ("#", "has '#' (U+0023) at offset 0"),
        ("-dev", "starts with '-': it must start with a letter or a digit"),
        (".hidden", "starts with '.'"),
        ("", "is empty"),
    ],
)
def test_hostile_ids_are_refused_with_what_and_where(value, fragment):
    problem = device_id_problem(value)
    assert problem is not None and fragment in problem
    assert problem.startswith("device id")
    assert len(problem) < 300  # a dead letter's reason stays a line, however long the id
    with pytest.raises(InvalidDeviceId) as caught:
        check_device_id(value)
    assert caught.value.code == "invalid_device_id" and caught.value.reason == problem


def test_the_limit_is_128_characters_and_the_name_is_the_callers():
    assert MAX_DEVICE_ID_CHARS == 128
    assert device_id_problem("d" * 128) is None
    assert device_id_problem("d" * 129, "hub_id").startswith("hub_id of 129 characters is longer than the limit of 128")
    assert device_id_problem(42, "envelope device_id") == "envelope device_id is int 42, not a string"


SHIPPED_IDS = [
    "dev-00000", "dev-00042", "nohub", "hub-01", "hub-1", "child-01", "device-01", "solo-1", "fire-0001", "bms-export",
    "sensor_7", "hub:7", "dev-j1", "deadbeef", "d1", "marker", "dev-1", "dev@site-3", "SN-12", "1234", "a.b",
    # product ids (the HTTP bridge holds them to the same rule)
    "prod-a", "product_a", "product_d", "fire_sensor_bin", "fire_sensor_json",
]


@pytest.mark.parametrize("value", SHIPPED_IDS)
def test_ids_of_the_specs_simulator_docs_and_tests_are_valid(value):
    assert device_id_problem(value) is None
    assert check_device_id(value) == value


def test_every_simulated_device_and_hub_and_topic_is_valid():
    fleet = build_fleet(300, forms=("json", "hex", "csv"), profiles={"normal": 1, "garbage": 1}, seed=3)
    for device in fleet:
        assert device_id_problem(device.device_id) is None
        assert device_id_problem(device.hub_id) is None
        parse_device_topic(device.topic())  # raises for an id the topic layout refuses


def test_every_device_and_product_of_the_shipped_specs_and_examples_is_valid():
    product_type = re.compile(r"(?m)^product_type:\s*\"?([^\"\s]+)")
    product_ids = [m.group(1) for path in (ROOT / "yaml_specs").glob("*.yaml") for m in product_type.finditer(path.read_text())]
    assert len(product_ids) >= 6 and [product for product in product_ids if device_id_problem(product) is not None] == []
    # Literal ids of the spec examples (some example files are deliberately broken YAML: read as text).
    literal = re.compile(r"\bdevice_id:\s*([A-Za-z0-9][^\s,}]*)")
    found = {m.group(1) for path in (ROOT / "docs" / "spec-examples").glob("*.yaml") for m in literal.finditer(path.read_text())}
    found |= {m.group(1) for path in (ROOT / "yaml_specs").glob("*.yaml") for m in re.finditer(r"deviceId:\s*([\w-]+)", path.read_text())}
    assert {"hub-01", "child-01", "bms-export", "fire-0001"} <= found
    assert [device for device in sorted(found) if device_id_problem(device) is not None] == []


@pytest.mark.parametrize("value", [*SHIPPED_IDS, "..", ".", "x" * 129, "d" * 128, "dev 1", "..%2F..\\etc", "dev\n", "-dev", "é"])
def test_the_schema_pattern_is_the_same_rule(value):
    """The OpenAPI document's pattern accepts exactly what device_id_problem accepts (Python's $ also
    matches before a final newline, ECMA-262's, which OpenAPI uses, does not)."""
    assert (re.search(DEVICE_ID_PATTERN, value) is not None and not value.endswith("\n")) == (device_id_problem(value) is None)
