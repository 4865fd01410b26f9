"""Seeded mutation fuzzing of everything per-record: the raw envelope, every shipped spec's
example payloads, the client JSON shape, and the rule evaluator. Whatever the bytes, decoding
returns records and dead letters (never an exception), every input is accounted for, and every
output serializes; an expression either compiles or is refused, and evaluates to a bounded value
or an evaluation error."""

import random
from pathlib import Path

import orjson
import pytest

from operators.dead_letter import dead_letter_to_json
from operators.decode import decode_raw_record
from operators.envelope import RawEnvelope, build_envelope
from operators.expressions import EvaluationError, ExpressionError, MissingValue, compile_expression
from operators.spec_loading import build_registry, example_payload, load_specs

ROOT = Path(__file__).resolve().parents[2]
CASES_PER_SEED = 120  # a few thousand cases in all, a few seconds
NOW = 1_772_359_300_000
HOSTILE_VALUES = [
    b"[" * 1100 + b"]" * 1100, b"1e300", b"-1e999", b"123456789012345678901234567890", b'"\\ud800"', b"null", b"true",
    b"[]", b"{}", b'"' + b"x" * 5000 + b'"', b"0x1F", b"-0", b"NaN", b'{"a":' * 300 + b"1" + b"}" * 300,
]


def seeds() -> list[tuple[str, bytes, dict]]:
    """(name, payload, envelope hints) from every shipped spec's examples, plus the client JSON shape."""
    out = []
    for loaded in load_specs([ROOT / "yaml_specs"]):
        fmt = {"hex_binary": "bin", "json": "json", "csv": "csv"}[loaded.spec.format]
        for example in loaded.spec.examples:
            try:
                payload = example_payload(example, loaded.spec)
            except Exception:  # noqa: BLE001 - an example written to be rejected: its text is still a seed
                payload = (example.hex or example.text or "").encode()
            out.append((f"{loaded.spec_id}:{example.name}", payload, {"product_id": loaded.decoder.product_id, "format": fmt}))
    client = b'{"hub_timestamp":1772359200003,"device_timestamp":1772359200000,"data":{"metrics":{"tempC":26.3,"rpm":1200,"door":true}}}'
    out.append(("client-json", client, {"product_id": "prod-a", "format": "json"}))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four of: flip, insert, delete, duplicate a chunk, splice in a hostile JSON value, truncate."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        at = rng.randint(0, len(data))
        if choice == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 2 and data:
            del data[at:at + rng.randint(1, 16)]
        elif choice == 3 and data:
            chunk = data[at:at + rng.randint(1, 64)]
            data[at:at] = chunk * rng.randint(2, 200)
        elif choice == 4:
            data[at:at] = rng.choice(HOSTILE_VALUES)
        else:
            del data[rng.randint(0, len(data)):]
    return bytes(data)


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_specs([ROOT / "yaml_specs"]))


def check(value: bytes, registry) -> None:
    out = decode_raw_record(value, registry, NOW)  # must not raise
    assert len(out.records) + len(out.dead_letters) >= 1, "an input vanished"
    assert len(out.texts) == len(out.records)
    for text in out.texts:
        orjson.loads(text)
    for letter in out.dead_letters:
        assert letter["reason"] and len(letter["reason"]) <= 1000
        # The safety net catches what no rule foresaw; the fuzzer finding one is a defect to fix.
        assert letter["reason_code"] != "internal_error", letter["reason"]
        orjson.loads(dead_letter_to_json(letter))


@pytest.mark.parametrize("seed", range(3))
def test_mutated_payloads_become_records_or_dead_letters(registry, seed):
    rng = random.Random(seed)
    for _name, payload, hints in seeds():
        for _ in range(CASES_PER_SEED // 4):
            mutated = mutate(rng, payload)
            envelope = RawEnvelope(payload=mutated, source="kafka", received_at=NOW, device_id="fuzz-1", **hints)
            check(build_envelope(envelope), registry)


@pytest.mark.parametrize("seed", range(3))
def test_mutated_envelopes_become_records_or_dead_letters(registry, seed):
    rng = random.Random(100 + seed)
    for _name, payload, hints in seeds():
        envelope = build_envelope(RawEnvelope(payload=payload, source="mqtt", received_at=NOW, device_id="fuzz-2", **hints))
        doc = orjson.loads(envelope)
        for _ in range(CASES_PER_SEED // 4):
            check(mutate(rng, envelope), registry)
            # Right bytes, wrong types: one envelope field's value replaced by a hostile JSON text.
            field = rng.choice(sorted(doc))
            members = [orjson.dumps(k) + b":" + (rng.choice(HOSTILE_VALUES) if k == field else orjson.dumps(v)) for k, v in doc.items()]
            check(b"{" + b",".join(members) + b"}", registry)


EXPRESSION_PARTS = ["tempC", "rpm", "limit", "1", "0", "-1", "2", "10", "1000", "0.5", "1e308", '"a"', '"ab"', "True", "(", ")",
                    "+", "-", "*", "/", "//", "%", "**", "<", ">", "==", " and ", " or ", "not ", " if ", " else ",
                    "abs(", "min(", "max(", "round(", "sqrt(", "floor(", "ceil(", "clamp(", ",", "10**9", "10**1000"]


@pytest.mark.parametrize("seed", range(3))
def test_random_expressions_compile_or_are_refused_and_evaluate_bounded(seed):
    rng = random.Random(200 + seed)
    for _ in range(600):
        text = "".join(rng.choice(EXPRESSION_PARTS) for _ in range(rng.randint(1, 12)))
        try:
            expression = compile_expression(text)
        except ExpressionError:
            continue
        try:
            result = expression.evaluate({"tempC": rng.choice([25.5, -40, 10**18, 0]), "rpm": 1200, "limit": 2}, {"limit": 40})
        except (EvaluationError, MissingValue):
            continue
        assert type(result) in (bool, int, float, str), (text, result)
        assert not isinstance(result, str) or len(result) <= 1000, text
        assert not isinstance(result, int) or result.bit_length() <= 256, text
