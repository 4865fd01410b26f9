"""Device data files -> raw envelopes, for the file batch job.

A file holds one device's data (client flow 2-2: files dropped by FTP/S3 collection):

- ``.csv``: a header row and data rows, decoded by the product's CSV spec. The file is cut
  into payloads of the header plus up to :data:`CSV_ROWS_PER_PAYLOAD` rows (a payload has a
  1 MiB limit); each payload remembers its first row's line so rejections name the file line.
- ``.jsonl`` / ``.json``: one device JSON payload per line, or a JSON array of payloads.
- ``.hex`` / ``.txt``: one hex payload per line (binary devices).

The device id (and optionally the product) comes from the file's path relative to the input
directory, through a regular expression with the named groups ``device`` and ``product``
(default: the file name up to its first ``_`` or ``.``, e.g. ``dev-0001_2026-11-22.csv``).
Blank lines are skipped; ``#`` lines in hex files are comments.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from operators.envelope import RawEnvelope

CSV_ROWS_PER_PAYLOAD = 500
DEFAULT_DEVICE_PATTERN = r"(?:^|/)(?P<device>[^/_.]+)[^/]*$"
FORMATS_BY_SUFFIX = {".csv": "csv", ".jsonl": "json", ".json": "json", ".hex": "hex", ".txt": "hex"}


class FileInputError(ValueError):
    """A file the batch job cannot take at all (unknown suffix, no device id in its path)."""


@dataclass(frozen=True, slots=True)
class FilePayload:
    """One payload cut from a file: the envelope and the file line it starts on."""

    envelope: RawEnvelope
    line: int  # 1-based file line of the payload (its first data row for CSV)
    row_lines: tuple[int, ...] = ()  # CSV: the file line of each data row, in order

    def file_line(self, row: int | None) -> int:
        """The file line of a rejection: of data row ``row`` (from 1) for CSV, else the payload's."""
        if row and self.row_lines and row <= len(self.row_lines):
            return self.row_lines[row - 1]
        return self.line


def file_digest(data: bytes) -> str:
    """The file's identity for idempotent loading: the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def list_input_files(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """Expands directories (recursively) into the files of known suffixes, sorted.

    Returns:
        (file, path relative to the directory it was found in; the name for a file given directly).
    """
    out: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS_BY_SUFFIX):
                out.append((path, path.relative_to(given).as_posix()))
        elif given.is_file():
            out.append((given, given.name))
        else:
            raise FileInputError(f"{given}: no such file or directory")
    return out


def identity_from_path(relative: str, pattern: str = DEFAULT_DEVICE_PATTERN) -> tuple[str, str | None]:
    """(device id, product id or None) from a file's relative path.

    Raises:
        FileInputError: when the pattern does not match or has no ``device`` group.
    """
    match = re.search(pattern, relative)
    if match is None or not match.groupdict().get("device"):
        raise FileInputError(f"{relative}: no device id in the path (pattern {pattern!r})")
    return match.group("device"), match.groupdict().get("product") or None


def file_payloads(
    data: bytes, relative: str, device_id: str, product_id: str | None, received_at: int, csv_header: bool = True
) -> Iterator[FilePayload]:
    """Cuts one file into envelopes (source ``file``), in file order.

    Args:
        data: The file's bytes.
        relative: Its path relative to the input directory (the suffix decides the format).
        device_id: The device the file belongs to.
        product_id: Its product, when the path names it (else the device registry decides).
        received_at: Receive time stamped on every envelope (epoch ms).
        csv_header: Whether the product's CSV spec expects a header row (repeated in each payload).

    Raises:
        FileInputError: for a suffix the job does not read, or a ``.json`` file that is
            neither JSON lines nor a JSON array.
    """
    suffix = Path(relative).suffix.lower()
    fmt = FORMATS_BY_SUFFIX.get(suffix)
    if fmt is None:
        raise FileInputError(f"{relative}: unknown file type {suffix!r} (one of {', '.join(sorted(FORMATS_BY_SUFFIX))})")

    def envelope(payload: bytes) -> RawEnvelope:
        return RawEnvelope(payload=payload, source="file", received_at=received_at, device_id=device_id, product_id=product_id, format=fmt)

    lines = data.splitlines()
    if fmt == "csv":
        yield from _csv_payloads(lines, envelope, csv_header)
        return
    if fmt == "json" and suffix == ".json" and data.lstrip()[:1] == b"[":
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FileInputError(f"{relative}: not a JSON array of payloads: {exc}") from None
        for index, item in enumerate(items, 1):
            yield FilePayload(envelope(orjson.dumps(item)), index)
        return
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or (fmt == "hex" and text.startswith(b"#")):
            continue
        yield FilePayload(envelope(text), number)


def _csv_payloads(lines: list[bytes], envelope, csv_header: bool) -> Iterator[FilePayload]:
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    header: list[bytes] = []
    if csv_header and numbered:
        header = [numbered[0][1]]
        numbered = numbered[1:]
    for at in range(0, len(numbered), CSV_ROWS_PER_PAYLOAD):
        chunk = numbered[at:at + CSV_ROWS_PER_PAYLOAD]
        payload = b"\n".join([*header, *(line for _, line in chunk)]) + b"\n"
        yield FilePayload(envelope(payload), chunk[0][0], tuple(number for number, _ in chunk))
