"""The fuzzer of bench/fuzz.py on a few thousand inputs: whatever the bytes, decoding returns
records and dead letters (never an exception, never an internal_error, nothing vanishes) and every
output serializes; an expression compiles or is refused and evaluates to a bounded value or an
evaluation error. (``python bench/fuzz.py`` runs it on 100,000 inputs per kind.)"""

import pytest

from bench.fuzz import fuzz_decoding, fuzz_expressions


@pytest.mark.parametrize("seed", range(3))
def test_mutated_payloads_and_envelopes_become_records_or_dead_letters(seed):
    reports = fuzz_decoding(400, seed)
    assert {r.kind for r in reports} == {"hex_binary", "json", "csv", "client-json", "envelope"}
    for report in reports:
        assert report.cases >= 300, report.kind
        assert report.clean, (report.kind, report.exceptions[:3], report.internal_errors[:3], report.vanished)
        assert report.letters > 0  # the mutations do reach the rejection paths


@pytest.mark.parametrize("seed", range(3))
def test_random_expressions_compile_or_are_refused_and_evaluate_bounded(seed):
    report = fuzz_expressions(600, 200 + seed)
    assert report.clean, (report.exceptions[:3], report.internal_errors[:3])
    assert report.records > 0 and report.letters > 0
