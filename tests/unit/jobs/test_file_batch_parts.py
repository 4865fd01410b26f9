"""The file batch job's pure parts: files -> envelopes, device ids from paths, window recomputation, schedules."""

import math
from datetime import UTC, datetime

import orjson
import pytest

from jobs.file_batch import BatchReport, FileReport, next_run, window_rows_from_telemetry
from operators.envelope import parse_envelope
from operators.file_input import (
    CSV_ROWS_PER_PAYLOAD,
    FileInputError,
    file_digest,
    file_payloads,
    identity_from_path,
    list_input_files,
)
from operators.windows import partial_from_json

T = 1_772_359_200_000


@pytest.mark.parametrize("relative, device, product", [
    ("dev-0001_2026-11-22.csv", "dev-0001", None),
    ("site-a/dev-0002.jsonl", "dev-0002", None),
    ("dev-3.hex", "dev-3", None),
])
def test_device_ids_come_from_the_file_name_by_default(relative, device, product):
    assert identity_from_path(relative) == (device, product)


def test_a_pattern_can_name_the_product_too():
    pattern = r"(?P<product>[^/]+)/(?P<device>[^/_.]+)[^/]*$"
    assert identity_from_path("uploads/product_d/dev-9_day1.csv", pattern) == ("dev-9", "product_d")
    with pytest.raises(FileInputError, match="no device id"):
        identity_from_path("loose.csv", r"(?P<product>[^/]+)/(?P<device>[^/]+)$")


def test_csv_files_are_cut_into_payloads_that_repeat_the_header_and_keep_line_numbers():
    rows = [f"{i},{i % 7}" for i in range(CSV_ROWS_PER_PAYLOAD + 3)]
    data = ("temp,hum\n" + rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n").encode()
    payloads = list(file_payloads(data, "dev-1.csv", "dev-1", "product_d", T))
    assert len(payloads) == 2
    first, second = payloads
    assert first.envelope.payload.startswith(b"temp,hum\n0,0\n1,1\n") and second.envelope.payload.startswith(b"temp,hum\n")
    assert len(first.envelope.payload.splitlines()) == CSV_ROWS_PER_PAYLOAD + 1 and len(second.envelope.payload.splitlines()) == 4
    # line 1 header, line 2 row 0, line 3 blank, line 4 row 1, ...
    assert first.row_lines[:3] == (2, 4, 5) and first.file_line(2) == 4
    assert second.file_line(1) == CSV_ROWS_PER_PAYLOAD + 3
    envelope = parse_envelope(orjson.dumps({"v": 1, "source": "file", "received_at": T, "payload": "x"}))
    assert envelope.source == "file"
    assert {p.envelope.format for p in payloads} == {"csv"} and {p.envelope.device_id for p in payloads} == {"dev-1"}


def test_headerless_csv_is_cut_without_a_header():
    payloads = list(file_payloads(b"1;2\n3;4\n", "dev-1.csv", "dev-1", None, T, csv_header=False))
    assert [p.envelope.payload for p in payloads] == [b"1;2\n3;4\n"] and payloads[0].row_lines == (1, 2)


def test_json_lines_arrays_and_hex_lines():
    jsonl = list(file_payloads(b'{"a":1}\n\n{"a":2}\n', "d.jsonl", "d", None, T))
    assert [(p.envelope.payload, p.line) for p in jsonl] == [(b'{"a":1}', 1), (b'{"a":2}', 3)]
    array = list(file_payloads(b' [{"a":1}, {"a":2}]', "d.json", "d", None, T))
    assert [orjson.loads(p.envelope.payload) for p in array] == [{"a": 1}, {"a": 2}]
    hexes = list(file_payloads(b"# readings\n00FD3C\n\nFF9C32\n", "d.hex", "d", None, T))
    assert [(p.envelope.payload, p.line, p.envelope.format) for p in hexes] == [(b"00FD3C", 2, "hex"), (b"FF9C32", 4, "hex")]
    with pytest.raises(FileInputError, match="unknown file type"):
        list(file_payloads(b"x", "d.xlsx", "d", None, T))
    with pytest.raises(FileInputError, match="not a JSON array"):
        list(file_payloads(b"[1,", "d.json", "d", None, T))


def test_input_directories_are_listed_recursively_with_known_suffixes(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/dev-1.csv", "dev-2.hex", "notes.md", "a/dev-3.jsonl"):
        (tmp_path / name).write_text("x")
    assert [rel for _, rel in list_input_files([tmp_path])] == ["a/dev-1.csv", "a/dev-3.jsonl", "dev-2.hex"]
    with pytest.raises(FileInputError, match="no such file"):
        list_input_files([tmp_path / "missing"])
    assert file_digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def row(device, ts, product="p", **metrics):
    return {"device_id": device, "product_id": product, "device_ts": ts, "metrics_json": orjson.dumps(metrics).decode()}


def test_windows_recomputed_from_telemetry_count_duplicates_once_and_skip_non_numbers():
    rows = [row("d1", T + 1000, t=1.0, on=True), row("d1", T + 1000, t=1.0, on=True), row("d1", T + 70_000, t=3.0, mode="x"),
            row("d2", T + 5, t=10.0)]
    device = {(r["key"], r["size"], r["start"]): partial_from_json(r["partial"]) for r in window_rows_from_telemetry(rows, "device")}
    assert set(device) == {("d1", "1m", T), ("d1", "1m", T + 60_000), ("d1", "5m", T), ("d1", "1h", T),
                           ("d2", "1m", T), ("d2", "5m", T), ("d2", "1h", T)}
    hour = device[("d1", "1h", T)]
    assert set(hour) == {"t"} and hour["t"].result()["count"] == 2 and hour["t"].result()["avg"] == 2.0
    product = {(r["key"], r["size"], r["start"]): partial_from_json(r["partial"]) for r in window_rows_from_telemetry(rows, "product")}
    got = product[("p", "1h", T)]["t"].result()
    assert got["count"] == 3 and math.isclose(got["sum"], 14.0) and got["min"] == 1.0 and got["max"] == 10.0


def test_schedules_are_cron_expressions():
    after = datetime(2026, 11, 22, 10, 7, tzinfo=UTC)
    assert next_run("*/15 * * * *", after) == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    assert next_run("0 2 * * *", after) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a valid cron expression"):
        next_run("every hour", after)


def test_report_totals():
    report = BatchReport(started_at="x", files=[FileReport("a.csv", "loaded", records=3, rejected=1), FileReport("b.csv", "already loaded"),
                                                FileReport("c.csv", "failed", error="boom")])
    assert report.totals() == {"files": 3, "records": 3, "rejected": 1, "rows": 4, "loaded": 1, "already loaded": 1, "failed": 1}
    assert orjson.loads(report.to_json())["totals"]["rows"] == 4
