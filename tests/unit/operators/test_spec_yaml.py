"""YAML loading: the client's four spec texts as published, the one indentation repair, strict errors."""

from pathlib import Path

import pytest

from operators.envelope import RawEnvelope
from operators.spec_loading import SpecLoadError, load_spec_file, load_spec_text
from operators.spec_yaml import MAX_YAML_BYTES, YamlDocumentError, load_yaml_file, load_yaml_text

SPEC_DIR = Path(__file__).resolve().parents[3] / "yaml_specs"
EXAMPLES_MARKER = "# --- Examples"


def client_text(product: str) -> str:
    """The client's spec as published: the part of yaml_specs/<product>.yaml before the examples."""
    text = (SPEC_DIR / f"{product}.yaml").read_text(encoding="utf-8")
    lines = text.split("\n")
    cut = next(i for i, line in enumerate(lines) if line.startswith(EXAMPLES_MARKER))
    return "\n".join(lines[:cut])


def notice(line: int, parent: str) -> str:
    return f"line {line}: 'output_schema' is indented like the items of the '{parent}' list above it; read as a sibling of '{parent}'"


CLIENT_SCHEMA = {"tenant": "${device.tenant}", "device_id": "${device.id}", "timestamp": "${ingest_time}"}


@pytest.mark.parametrize(
    ("product", "notices"),
    [
        ("product_a", [notice(17, "conversion")]),
        ("product_b", [notice(17, "conversion")]),
        ("product_c", [notice(28, "sections")]),
        ("product_d", []),
    ],
)
def test_client_texts_load_with_the_expected_repair_notices(product, notices):
    text = client_text(product)
    assert "examples:" not in text
    loaded = load_spec_text(text, f"{product}.yaml")
    assert loaded.notices == notices
    assert loaded.spec.product_type == product
    assert loaded.spec_id == product
    assert loaded.spec.examples == []


@pytest.mark.parametrize(
    ("product", "metrics_token"),
    [("product_a", "${converted_fields}"), ("product_b", "${converted_fields}"), ("product_c", "${all_sections_merged}")],
)
def test_repaired_output_schema_is_a_top_level_option(product, metrics_token):
    doc = load_yaml_text(client_text(product), f"{product}.yaml")
    assert doc.data["output_schema"] == {**CLIENT_SCHEMA, "metrics": metrics_token}
    listed = doc.data["sections"] if product == "product_c" else doc.data["conversion"]
    assert all("output_schema" not in item for item in listed)
    # The repair only re-indents: line numbers stay those of the file as written.
    assert doc.text.count("\n") == client_text(product).count("\n")
    first = 17 if product != "product_c" else 28
    assert doc.line_of(("output_schema",)) == first + 1
    assert doc.line_of(("output_schema", "metrics")) == first + 4


def test_product_d_output_schema_stays_inside_conversion():
    loaded = load_spec_text(client_text("product_d"), "product_d.yaml")
    assert loaded.spec.output_schema is None
    assert loaded.spec.conversion.output_schema == {**CLIENT_SCHEMA, "timestamp": "${timestamp}", "metrics": "${mapped_fields}"}


def _decode(loaded, payload: bytes):
    from operators.decode import DeviceIdentity

    envelope = RawEnvelope(payload=payload, source="file", received_at=1_772_359_300_000)
    identity = DeviceIdentity("dev-1", loaded.decoder.product_id, None, None, None, "acme")
    return loaded.decoder.decode(envelope, identity)


@pytest.mark.parametrize(
    ("product", "payload", "metrics"),
    [
        ("product_a", bytes.fromhex("00FD3C"), {"temperature": 25.3, "humidity": 60}),
        ("product_b", bytes.fromhex("00023C000100FD"), {"humidity": 60, "temperature": 25.3}),
        ("product_c", bytes.fromhex("AA00FD3CAA00018BCD"), {"temperature": 25.3, "humidity": 60, "pressure": 1013.25}),
        ("product_d", b"temp,hum\n25.5,60\n", {"temperature": 25.5, "humidity": 60.0}),
    ],
)
def test_client_texts_decode_as_the_client_described(product, payload, metrics):
    [record] = _decode(load_spec_text(client_text(product), f"{product}.yaml"), payload)
    assert record["metrics"] == metrics
    assert record["tenant"] == "acme"
    assert record["device_id"] == "dev-1"
    assert record["device_ts"] == 1_772_359_300_000


def test_errors_after_a_repair_keep_the_original_line_numbers():
    text = client_text("product_a").replace('type: "uint8"', 'type: "uint9"')
    with pytest.raises(SpecLoadError) as info:
        load_spec_text(text, "product_a.yaml")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("product_a.yaml:15: conversion[1].type: unknown type 'uint9'")


def test_error_inside_the_repaired_output_schema_names_its_line():
    text = client_text("product_c").replace('timestamp: "${ingest_time}"', 'timestamp: "${ingest_tim}"')
    with pytest.raises(SpecLoadError) as info:
        load_spec_text(text, "product_c.yaml")
    assert info.value.problems[0].startswith("product_c.yaml:31: output_schema.timestamp: unknown placeholder ${ingest_tim}")


def test_two_lists_each_followed_by_a_misindented_key_get_two_repairs():
    text = "a:\n  - 1\n  b: 2\nc:\n  d:\n    - x\n    e: y\n"
    doc = load_yaml_text(text, "two.yaml")
    assert doc.data == {"a": [1], "b": 2, "c": {"d": ["x"], "e": "y"}}
    assert doc.notices == [
        "line 3: 'b' is indented like the items of the 'a' list above it; read as a sibling of 'a'",
        "line 7: 'e' is indented like the items of the 'd' list above it; read as a sibling of 'd'",
    ]


def test_repair_moves_the_whole_misindented_block_and_keeps_what_follows():
    text = "top:\n  conversion:\n    - field: a\n    output_schema:\n      m: 1\n      # note\n      n: 2\n  other: 2\nlast: 3\n"
    doc = load_yaml_text(text, "f.yaml")
    assert doc.data == {"top": {"conversion": [{"field": "a"}], "output_schema": {"m": 1, "n": 2}, "other": 2}, "last": 3}
    assert doc.notices == ["line 4: 'output_schema' is indented like the items of the 'conversion' list above it; read as a sibling of 'conversion'"]


def test_valid_yaml_has_no_notices():
    doc = load_yaml_text("a:\n  - 1\nb: 2\n", "ok.yaml")
    assert (doc.data, doc.notices, doc.source) == ({"a": [1], "b": 2}, [], "ok.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: 2\n  c: 3\n", "bad.yaml:3:4: mapping values are not allowed here"),
        ("a:\n\t- 1\n", "bad.yaml:2:1: found character '\\t' that cannot start any token (while scanning for the next token)"),
        (
            "conversion:\n  - field: a\n    type: x\n output_schema:\n   m: 1\n",
            "bad.yaml:4:2: expected <block end>, but found '<block mapping start>' (while parsing a block mapping)",
        ),
        ("conversion:\n  - field: a\n      extra: 1\n", "bad.yaml:3:12: mapping values are not allowed here"),
        ("a: [1, 2\nb: 3\n", "bad.yaml:2:2: expected ',' or ']', but got ':' (while parsing a flow sequence)"),
        ("- a\n- b\nc: 1\n", "bad.yaml:3:1: expected <block end>, but found '?' (while parsing a block collection)"),
        ("a: 1\n---\nb: 2\n", "bad.yaml:2:1: but found another document (expected a single document in the stream)"),
        (
            "a: !!python/object:os.system x\n",
            "bad.yaml:1:4: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'",
        ),
    ],
)
def test_strict_yaml_errors_name_file_and_line(text, message):
    with pytest.raises(YamlDocumentError) as info:
        load_yaml_text(text, "bad.yaml")
    assert str(info.value) == message


def test_spec_with_broken_yaml_is_a_spec_load_error_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text('product_type: "p"\nformat: hex_binary\n  parsing_type: hybrid\n', encoding="utf-8")
    with pytest.raises(SpecLoadError) as info:
        load_spec_file(path)
    assert info.value.problems == [f"{path}:3:15: mapping values are not allowed here"]


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(YamlDocumentError) as missing:
        load_yaml_file(tmp_path / "nope.yaml")
    assert str(missing.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: \xe9\n")
    with pytest.raises(YamlDocumentError) as undecodable:
        load_yaml_file(latin)
    assert str(undecodable.value).startswith(f"{latin}: not UTF-8 text: ")


def test_line_of_follows_paths_and_falls_back_to_the_nearest_parent():
    doc = load_yaml_text("a:\n  b:\n    - x: 1\n    - x: 2\n      y: 3\nc: 4\n", "f.yaml")
    assert doc.line_of(()) == 1
    assert doc.line_of(("a",)) == 2
    assert doc.line_of(("a", "b", 1)) == 4
    assert doc.line_of(("a", "b", 1, "y")) == 5
    assert doc.line_of(("a", "b", 7, "y")) == 3  # no item 7: the list's line
    assert doc.line_of(("a", "missing")) == 2
    assert doc.line_of(("c",)) == 6


def test_load_yaml_file_reads_the_client_file_with_examples():
    doc = load_yaml_file(SPEC_DIR / "product_a.yaml")
    assert doc.source == str(SPEC_DIR / "product_a.yaml")
    assert doc.notices == [notice(17, "conversion")]
    assert [e["name"] for e in doc.data["examples"]][0] == "nominal reading"


def test_a_key_given_twice_is_an_error_not_a_silent_override():
    text = "product_type: x\nformat: hex_binary\nconversion:\n  - field: a\n    offset: 0\n    type: int16\n    scale: 0.1\n    scale: 0.2\n"
    with pytest.raises(YamlDocumentError) as info:
        load_yaml_text(text, "dup.yaml")
    assert str(info.value) == "dup.yaml:8: key 'scale' is given twice (first on line 7)"


def billion_laughs(levels: int = 9) -> str:
    """Nine aliases of nine aliases of ...: a few hundred bytes that expand to 9**levels values."""
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for level in range(1, levels):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]\n"
    return text


def test_anchors_and_aliases_are_refused_before_anything_expands_them():
    with pytest.raises(YamlDocumentError, match=r"laughs.yaml:1: YAML anchor &l0 is not accepted"):
        load_yaml_text(billion_laughs(), "laughs.yaml")
    with pytest.raises(YamlDocumentError, match=r"x.yaml:1: YAML anchor &a is not accepted"):
        load_yaml_text("a: &a 1\nb: *a\n", "x.yaml")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("description: |\n  " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(YamlDocumentError, match=rf"huge.yaml: \d+ bytes, larger than the {MAX_YAML_BYTES} bytes"):
        load_yaml_file(path)
    with pytest.raises(YamlDocumentError, match="larger than"):
        load_yaml_text(path.read_text(), "huge.yaml")
