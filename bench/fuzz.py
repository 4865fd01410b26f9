"""Mutation fuzzing of the per-record code: decoding (every shipped spec's example payloads and
the client JSON shape, mutated; mutated raw envelopes; envelopes whose fields hold hostile JSON)
and the rule evaluator (random expressions). Seeded, so a run can be repeated.

For each kind it reports cases, records, dead letters, exceptions that escaped (must be 0),
``internal_error`` letters (what no rule foresaw; must be 0), inputs that vanished (must be 0),
the slowest and the 99th-percentile time per input, and the process's peak memory.

    python bench/fuzz.py [--cases N] [--seed S]

The unit tests run the same code on a few thousand cases (tests/unit/bench/test_fuzz_decode.py).
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from operators.dead_letter import dead_letter_to_json  # noqa: E402
from operators.decode import DecoderRegistry, decode_raw_record  # noqa: E402
from operators.envelope import RawEnvelope, build_envelope  # noqa: E402
from operators.expressions import (  # noqa: E402
    MAX_INT_BITS,
    MAX_STRING_CHARS,
    EvaluationError,
    ExpressionError,
    MissingValue,
    compile_expression,
)
from operators.spec_loading import build_registry, example_payload, load_specs  # noqa: E402

NOW = 1_772_359_300_000
HOSTILE_VALUES = [
    b"[" * 1100 + b"]" * 1100, b"1e300", b"-1e999", b"123456789012345678901234567890", b'"\\ud800"', b"null", b"true",
    b"[]", b"{}", b'"' + b"x" * 5000 + b'"', b"0x1F", b"-0", b"NaN", b'{"a":' * 300 + b"1" + b"}" * 300,
]
EXPRESSION_PARTS = ["tempC", "rpm", "limit", "1", "0", "-1", "2", "10", "1000", "0.5", "1e308", '"a"', '"ab"', "True", "(", ")",
                    "+", "-", "*", "/", "//", "%", "**", "<", ">", "==", " and ", " or ", "not ", " if ", " else ",
                    "abs(", "min(", "max(", "round(", "sqrt(", "floor(", "ceil(", "clamp(", ",", "10**9", "10**1000"]
FORMATS = {"hex_binary": "bin", "json": "json", "csv": "csv"}


@dataclass
class FuzzReport:
    """What one kind of input did under fuzzing."""

    kind: str
    cases: int = 0
    records: int = 0
    letters: int = 0
    vanished: int = 0
    internal_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No exception escaped, nothing unforeseen, nothing vanished."""
        return not self.exceptions and not self.internal_errors and not self.vanished

    def line(self) -> str:
        """One line of the report."""
        q = statistics.quantiles(self.seconds, n=100)[98] if len(self.seconds) > 1 else max(self.seconds, default=0)
        return (f"{self.kind:<12} {self.cases:>8} cases  {self.records:>8} records  {self.letters:>8} dead letters  "
                f"{len(self.exceptions)} exceptions  {len(self.internal_errors)} internal_error  {self.vanished} vanished  "
                f"p99 {q * 1000:.2f} ms  max {max(self.seconds, default=0) * 1000:.1f} ms")


def decode_seeds(root: Path = ROOT) -> list[tuple[str, bytes, dict]]:
    """(spec format or ``client-json``, payload, envelope hints): every shipped spec's examples
    (the ones written to be rejected too) and the client's JSON shape."""
    out = []
    for loaded in load_specs([root / "yaml_specs"]):
        for example in loaded.spec.examples:
            try:
                payload = example_payload(example, loaded.spec)
            except Exception:  # noqa: BLE001 - an example written to be rejected: its text is still a seed
                payload = (example.hex or example.text or "").encode()
            hints = {"product_id": loaded.decoder.product_id, "format": FORMATS[loaded.spec.format]}
            out.append((loaded.spec.format, payload, hints))
    client = b'{"hub_timestamp":1772359200003,"device_timestamp":1772359200000,"data":{"metrics":{"tempC":26.3,"rpm":1200,"door":true}}}'
    out.append(("client-json", client, {"product_id": "prod-a", "format": "json"}))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four of: flip a bit, insert random bytes, delete, repeat a chunk up to 200 times,
    splice in a hostile JSON value, truncate."""
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
            data[at:at] = data[at:at + rng.randint(1, 64)] * rng.randint(2, 200)
        elif choice == 4:
            data[at:at] = rng.choice(HOSTILE_VALUES)
        else:
            del data[rng.randint(0, len(data)):]
    return bytes(data)


def hostile_field(rng: random.Random, envelope: bytes) -> bytes:
    """The envelope with one field's value replaced by a hostile JSON text (right bytes, wrong types)."""
    doc = orjson.loads(envelope)
    name = rng.choice(sorted(doc))
    members = [orjson.dumps(k) + b":" + (rng.choice(HOSTILE_VALUES) if k == name else orjson.dumps(v)) for k, v in doc.items()]
    return b"{" + b",".join(members) + b"}"


def decode_once(value: bytes, registry: DecoderRegistry, report: FuzzReport) -> None:
    """Decodes one raw value and records in ``report`` what it became."""
    report.cases += 1
    started = time.perf_counter()
    try:
        out = decode_raw_record(value, registry, NOW)
        for text in out.texts:
            orjson.loads(text)
        letters = [orjson.loads(dead_letter_to_json(letter)) for letter in out.dead_letters]
    except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
        report.exceptions.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {value[:120]!r}")
        return
    finally:
        report.seconds.append(time.perf_counter() - started)
    report.records += len(out.records)
    report.letters += len(letters)
    if not out.records and not letters or len(out.texts) != len(out.records):
        report.vanished += 1
    report.internal_errors += [letter["reason"] for letter in letters if letter["reason_code"] == "internal_error"]


def fuzz_decoding(cases: int, seed: int, registry: DecoderRegistry | None = None) -> list[FuzzReport]:
    """About ``cases`` mutated payloads per spec format and as many mutated envelopes."""
    registry = registry or build_registry(load_specs([ROOT / "yaml_specs"]))
    rng = random.Random(seed)
    seeds = decode_seeds()
    reports = {kind: FuzzReport(kind) for kind in dict.fromkeys(kind for kind, _, _ in seeds)}
    reports["envelope"] = FuzzReport("envelope")
    per_seed = {kind: max(1, cases // sum(1 for k, _, _ in seeds if k == kind)) for kind in reports if kind != "envelope"}
    for kind, payload, hints in seeds:
        envelope = build_envelope(RawEnvelope(payload=payload, source="mqtt", received_at=NOW, device_id="fuzz-1", **hints))
        for _ in range(per_seed[kind]):
            mutated = RawEnvelope(payload=mutate(rng, payload), source="kafka", received_at=NOW, device_id="fuzz-1", **hints)
            decode_once(build_envelope(mutated), registry, reports[kind])
        for _ in range(max(1, cases // len(seeds) // 2)):
            decode_once(mutate(rng, envelope), registry, reports["envelope"])
            decode_once(hostile_field(rng, envelope), registry, reports["envelope"])
    return list(reports.values())


def fuzz_expressions(cases: int, seed: int) -> FuzzReport:
    """Random expressions: each compiles or is refused, and evaluates to a bounded value or an error."""
    rng = random.Random(seed)
    report = FuzzReport("expressions")
    for _ in range(cases):
        text = "".join(rng.choice(EXPRESSION_PARTS) for _ in range(rng.randint(1, 12)))
        report.cases += 1
        started = time.perf_counter()
        try:
            result = compile_expression(text).evaluate({"tempC": rng.choice([25.5, -40, 10**18, 0]), "rpm": 1200}, {"limit": 40})
        except (ExpressionError, EvaluationError, MissingValue):
            report.letters += 1  # refused or an evaluation error: what the rules count
            continue
        except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
            report.exceptions.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {text!r}")
            continue
        finally:
            report.seconds.append(time.perf_counter() - started)
        report.records += 1
        bounded = type(result) in (bool, int, float, str) and (type(result) is not str or len(result) <= MAX_STRING_CHARS)
        if not bounded or (type(result) is int and result.bit_length() > MAX_INT_BITS):
            report.internal_errors.append(f"unbounded result {str(result)[:80]} <- {text!r}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Runs the fuzzer and prints one line per kind of input; exit 1 when any is not clean."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000,
                        help="mutated inputs per spec format, and as many envelopes and expressions (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1): the same seed repeats the same inputs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    reports = [*fuzz_decoding(args.cases, args.seed), fuzz_expressions(args.cases, args.seed)]
    for report in reports:
        print(report.line())
        for problem in (report.exceptions + report.internal_errors)[:5]:
            print(f"  {problem}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{sum(r.cases for r in reports)} inputs in {time.monotonic() - started:.1f} s, peak memory {peak:.0f} MiB")
    return 0 if all(r.clean for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
