"""``iotlink bridge http``: the HTTP ingest — ``POST /v1/telemetry/{device_id}`` -> ``iotlink.raw``.

Routes (described for clients by ``GET /openapi.json``, :mod:`connectors.http_openapi`):

- ``POST /v1/telemetry/{device_id}``: one payload; the ``Content-Type`` is the format hint:
  ``application/json`` -> json (must parse), ``text/csv`` -> csv (UTF-8 text),
  ``application/octet-stream`` -> bin (any bytes), ``text/plain`` -> hex (hex digits, whitespace
  allowed). The body is kept byte-exact. Optional query parameter ``product_id``.
- ``POST /v1/telemetry:batch``: a JSON array of ``{device_id, format, payload, payload_encoding?,
  product_id?}``. Validation is all-or-nothing (one bad record: 400 listing every bad record,
  nothing stored); delivery is reported per record when Kafka fails (503 with ``results``).
- ``GET /health``: whether Kafka answers, and the counters (no token needed).
- ``GET /openapi.json``: the OpenAPI 3 document (no token needed).

``202 Accepted`` is sent only after Kafka confirmed every record of the request (``acks=all``).
When Kafka does not confirm within ``--ack-timeout`` the answer is ``503`` with ``Retry-After``:
the client resends. A record answered 503 may still reach Kafka later (it was handed to the
producer), so a resend can store it twice — at least once, duplicates are dropped downstream.

Every connection runs on its own thread (``ThreadingHTTPServer``), so one waiting for Kafka does
not hold up the others.

Message framing is checked strictly before anything else (RFC 9112 §6.1/§6.3): a request whose body
length is ambiguous — ``Transfer-Encoding`` with ``Content-Length``, differing or malformed
``Content-Length`` values, obsolete line folding, whitespace before a header colon, control
characters in a header line — is answered ``400`` and the connection is closed, because a proxy in
front of the bridge may have read the same bytes differently (request smuggling). Chunked bodies
are not implemented: ``Transfer-Encoding: chunked`` alone is answered ``501``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from connectors.http_openapi import openapi_document
from connectors.raw_producer import BridgeCounters, RawProducer
from operators.device_id import INVALID_DEVICE_ID, device_id_problem
from operators.envelope import FORMATS, RawEnvelope
from operators.hex_text import HexTextError, parse_hex_text

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# This machine only unless told otherwise: exposing the bridge is a decision (--host 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BATCH_RECORDS = 1000
TELEMETRY_PREFIX = "/v1/telemetry/"
BATCH_PATH = "/v1/telemetry:batch"
# (method, path template) of every route the server answers; the OpenAPI document lists the same.
ROUTES = (
    ("POST", "/v1/telemetry/{device_id}"),
    ("POST", BATCH_PATH),
    ("GET", "/health"),
    ("GET", "/openapi.json"),
)
CONTENT_TYPE_FORMATS = {
    "application/json": "json",
    "text/csv": "csv",
    "application/octet-stream": "bin",
    "text/plain": "hex",
}
BATCH_FIELDS = frozenset({"device_id", "format", "payload", "payload_encoding", "product_id"})


class HttpError(Exception):
    """A request answered with an error status and a JSON body ``{"error": code, "message": ..., ...}``.

    Attributes:
        status: HTTP status code.
        code: Machine-readable error code.
        message: Precise, human-readable message.
        extra: More fields of the body (``details``, ``results``).
        headers: Extra response headers.
    """

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON response body."""
        return {"error": self.code, "message": self.message, **self.extra}


# --- pure request logic --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a request hits.

    Attributes:
        route: The path template, as in :data:`ROUTES`.
        device_id: The device id of ``/v1/telemetry/{device_id}``.
        query: Query parameters (last value wins).
    """

    route: str
    device_id: str | None = None
    query: dict[str, str] = field(default_factory=dict)


def match_route(method: str, target: str) -> RouteMatch:
    """Finds the route of a request.

    Args:
        method: The HTTP method.
        target: The request target (path and query).

    Raises:
        HttpError: 404 for an unknown path, 405 (with ``Allow``) for a known path and another method,
            400 for an invalid device id.
    """
    parts = urlsplit(target)
    path = parts.path
    query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    if path.startswith(TELEMETRY_PREFIX) and len(path) > len(TELEMETRY_PREFIX):
        template, device_text = "/v1/telemetry/{device_id}", unquote(path[len(TELEMETRY_PREFIX) :])
    else:
        template, device_text = path, None
    allowed = [m for m, t in ROUTES if t == template]
    if not allowed:
        raise HttpError(404, "not_found", f"no route {path!r}; see GET /openapi.json")
    if method not in allowed:
        raise HttpError(405, "method_not_allowed", f"{path} accepts {', '.join(allowed)}, not {method}", headers={"Allow": ", ".join(allowed)})
    device_id = None
    if device_text is not None:
        device_id = _valid_id(device_text, "device_id", "path")
    return RouteMatch(template, device_id, query)


def _valid_id(text: str, name: str, where: str) -> str:
    """``text`` when it follows the device id rule (product ids too), else a 400 ``invalid_<name>``."""
    problem = device_id_problem(text, f"{where} {name}")
    if problem is not None:
        raise HttpError(400, INVALID_DEVICE_ID if name == "device_id" else f"invalid_{name}", problem)
    return text


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, lower case, without parameters (``charset``)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def format_for_content_type(content_type: str | None) -> str:
    """The envelope format hint for a ``Content-Type`` header.

    Raises:
        HttpError: 415 for a missing or unsupported media type.
    """
    kind = media_type(content_type)
    fmt = CONTENT_TYPE_FORMATS.get(kind)
    if fmt is None:
        supported = ", ".join(f"{t} ({f})" for t, f in CONTENT_TYPE_FORMATS.items())
        shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise HttpError(415, "unsupported_media_type", f"{shown}: send one of {supported}")
    return fmt


def check_payload(fmt: str, payload: bytes, where: str = "body") -> None:
    """Checks that a payload is what its format says.

    Raises:
        HttpError: 400 ``empty_payload``, ``invalid_json``, ``invalid_csv`` or ``invalid_hex``.
    """
    if not payload:
        raise HttpError(400, "empty_payload", f"{where} is empty")
    if fmt == "json":
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "invalid_json", f"{where} is not valid JSON: {exc}") from None
    elif fmt in ("csv", "hex"):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(400, f"invalid_{fmt}", f"{where} is not UTF-8 text: byte {exc.start} is 0x{payload[exc.start]:02x}") from None
        if fmt == "hex":
            try:
                parse_hex_text(text)
            except HexTextError as exc:
                raise HttpError(400, "invalid_hex", f"{where}: {exc}") from None


# RFC 9110 §5.6.2 token characters: a header name is one token, nothing else (no whitespace).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB are not allowed in a field value (RFC 9110 §5.5). A bare CR
# matters most: the header parser behind http.server splits lines on it, so "X: 1\rTransfer-Encoding:
# chunked" would become two header fields there while it is one here.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²" and other Unicode digits
# More significant digits than this cannot be a body any limit admits; compared as text so int()
# never meets the 4300-digit conversion limit (a ValueError that would be answered 500).
_MAX_LENGTH_DIGITS = 18


def parse_content_length(values: list[str]) -> int:
    """The body length from every ``Content-Length`` field value of a request.

    Each value is ``1*DIGIT`` or a comma-separated list of them; all the numbers must be the same
    (RFC 9112 §6.3 rule 5 lets a recipient accept ``5, 5`` as 5, nothing else).

    Args:
        values: The field values, in order, optional whitespace around them allowed.

    Raises:
        HttpError: 400 ``invalid_content_length`` for anything not a decimal number (sign, junk,
            empty list element), 400 ``conflicting_content_length`` for differing numbers, 413
            ``payload_too_large`` for a number too long to be a plausible size.
    """
    numbers = set()
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if not _DIGITS.fullmatch(item):
                raise HttpError(400, "invalid_content_length", f"Content-Length {value!r} is not a non-negative decimal integer")
            numbers.add(item.lstrip("0") or "0")
    if len(numbers) > 1:
        shown = ", ".join(repr(v) for v in values)
        raise HttpError(400, "conflicting_content_length", f"Content-Length values {shown} differ: the body length is ambiguous")
    (number,) = numbers
    if len(number) > _MAX_LENGTH_DIGITS:
        raise HttpError(413, "payload_too_large", f"Content-Length of {len(number)} digits is larger than any accepted body")
    return int(number)


def check_framing(header_lines: list[bytes], request_version: str = "HTTP/1.1") -> int | None:
    """Validates the raw header section of a request and decides its body length (RFC 9112 §6).

    Works on the bytes as received, not on parsed headers: the parser behind ``http.server``
    (``email``) unfolds continuation lines, splits on a bare CR, and stops at a line without a
    colon, quietly treating the rest as body — each a way for a front proxy and the bridge to see
    different headers. Such requests are refused instead.

    Args:
        header_lines: The header lines with their line endings, up to and including the blank line.
        request_version: The request's HTTP version (``HTTP/1.0`` may not use ``Transfer-Encoding``).

    Returns:
        The ``Content-Length`` (validated, see :func:`parse_content_length`), or None without one.

    Raises:
        HttpError: 400 ``invalid_header`` (obsolete line folding, a line without a colon, a name
            that is not a token — whitespace before the colon included —, a control character in a
            value), 400 ``conflicting_framing`` (``Transfer-Encoding`` with ``Content-Length``), 400
            ``invalid_transfer_encoding`` (final coding not ``chunked``, ``chunked`` twice, an HTTP/1.0
            request with ``Transfer-Encoding``), 501 ``chunked_not_implemented`` (a valid chunked
            body: not implemented), and what :func:`parse_content_length` raises.
    """
    lengths, encodings = [], []
    for number, raw in enumerate(header_lines, 1):
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if not line:
            break  # the blank line that ends the header section
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "invalid_header",
                            f"header line {number} starts with whitespace: obsolete line folding is not accepted (RFC 9112 §5.2)")
        name, colon, value = line.partition(b":")
        shown = name[:64].decode("latin-1")
        if not colon:
            raise HttpError(400, "invalid_header", f"header line {number} {line[:64].decode('latin-1')!r} has no colon")
        if not _TOKEN.fullmatch(name):
            if name and _TOKEN.fullmatch(name.rstrip(b" \t")):
                raise HttpError(400, "invalid_header", f"header {shown.rstrip()!r} has whitespace before the colon (RFC 9112 §5.1)")
            raise HttpError(400, "invalid_header", f"header name {shown!r} on line {number} is not a token")
        bad = _BAD_VALUE_BYTE.search(value)
        if bad:
            raise HttpError(400, "invalid_header", f"header {shown!r} has the control character 0x{bad.group()[0]:02x} in its value")
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value.decode("latin-1").strip(" \t"))
        elif lowered == b"transfer-encoding":
            encodings.append(value.decode("latin-1").strip(" \t"))
    if encodings:
        # Checked before Content-Length: with both, the length is ambiguous whatever the values.
        if lengths:
            raise HttpError(400, "conflicting_framing", "Transfer-Encoding and Content-Length together: the body length is ambiguous (RFC 9112 §6.3)")
        if request_version in ("HTTP/0.9", "HTTP/1.0"):
            raise HttpError(400, "invalid_transfer_encoding", f"Transfer-Encoding in an {request_version} request (RFC 9112 §6.1)")
        codings = [item.split(";", 1)[0].strip(" \t").lower() for item in ",".join(encodings).split(",")]
        if "" in codings:
            raise HttpError(400, "invalid_transfer_encoding", f"Transfer-Encoding {', '.join(encodings)!r} has an empty coding")
        if codings[-1] != "chunked" or codings.count("chunked") > 1:
            raise HttpError(400, "invalid_transfer_encoding",
                            f"Transfer-Encoding {', '.join(encodings)!r}: the final coding must be chunked, applied once (RFC 9112 §6.3)")
        raise HttpError(501, "chunked_not_implemented", "chunked request bodies are not implemented: send the body with a Content-Length header")
    return parse_content_length(lengths) if lengths else None


def body_length(headers, limit: int) -> int:
    """The request body size from ``Content-Length``.

    Args:
        headers: The request headers (``get_all`` is used when there, so every value is checked).
        limit: The largest accepted body, in bytes.

    Raises:
        HttpError: 411 without ``Content-Length`` (chunked bodies are not accepted), 400 for a
            malformed or ambiguous one, 413 above ``limit``.
    """
    values = headers.get_all("Content-Length") if hasattr(headers, "get_all") else None
    if values is None:
        value = headers.get("Content-Length")
        values = [] if value is None else [value]
    if not values:
        raise HttpError(411, "length_required", "send the body with a Content-Length header (chunked transfer encoding is not accepted)")
    length = parse_content_length(values)
    if length > limit:
        raise HttpError(413, "payload_too_large", f"body of {length} bytes is larger than the limit of {limit} bytes")
    return length


TOKEN_DIGEST_PREFIX = "sha256:"


def token_digest(token: str) -> str:
    """The line a token file keeps for ``token``: ``sha256:`` and the hex SHA-256 of the token.

    A plain hash suffices because tokens are random (:func:`new_token`: 256 bits), not chosen
    passwords: there is nothing to guess from the digest.
    """
    return TOKEN_DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A new random bearer token and its token-file line (the token itself is stored nowhere)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def load_token_file(token_file: Path) -> frozenset[bytes]:
    """The token digests of a token file: one ``sha256:<64 hex digits>`` per line (blank lines and
    ``#`` comments skipped). Tokens are kept hashed at rest: a line holding a token itself is refused.

    Raises:
        ValueError: naming the file, the line and what is wrong with it.
    """
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
    digests = set()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        hex_digest = text[len(TOKEN_DIGEST_PREFIX):] if text.startswith(TOKEN_DIGEST_PREFIX) else ""
        if len(hex_digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_digest):
            raise ValueError(
                f"token file {token_file}, line {number}: not a token digest ('sha256:' and 64 hex digits); the file keeps "
                "tokens hashed: make one with 'iotlink bridge http --new-token' and put its line in the file"
            )
        digests.add(bytes.fromhex(hex_digest))
    return frozenset(digests)


def check_tokens(tokens: list[str] | None) -> frozenset[str]:
    """Tokens given on the command line, checked.

    Raises:
        ValueError: for an empty token or one with whitespace.
    """
    for token in tokens or []:
        if not token or any(c.isspace() for c in token):
            raise ValueError("a bearer token must be non-empty and contain no whitespace")
    return frozenset(tokens or [])


class TokenCheck:
    """Bearer token authentication with a constant-time comparison.

    Args:
        tokens: Accepted tokens (in memory only: ``--token``, tests).
        digests: SHA-256 digests of accepted tokens (the token file).
        Both empty: authentication is off.
    """

    def __init__(self, tokens: frozenset[str] = frozenset(), digests: frozenset[bytes] = frozenset()):
        # Compared as digests so neither the token count nor their lengths leak through timing.
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens] + sorted(digests)

    @property
    def enabled(self) -> bool:
        """True when requests need a token."""
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Accepts an ``Authorization`` header value.

        Raises:
            HttpError: 401 (with ``WWW-Authenticate``) when the token is missing, malformed or unknown.
        """
        if not self._digests:
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="iotlink"'}
        if not authorization:
            raise HttpError(401, "unauthorized", "missing Authorization header: send 'Authorization: Bearer <token>'", headers=challenge)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "unauthorized", "Authorization header is not 'Bearer <token>'", headers=challenge)
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise HttpError(401, "unauthorized", "unknown bearer token", headers=challenge)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One record of a batch request, payload decoded to its bytes."""

    device_id: str
    format: str
    payload: bytes
    product_id: str | None = None


def parse_batch(body: bytes, max_records: int = DEFAULT_MAX_BATCH_RECORDS) -> list[BatchRecord]:
    """Parses and validates a batch body: a JSON array of ``{device_id, format, payload, payload_encoding?, product_id?}``.

    ``payload`` is text (``payload_encoding`` ``utf8``, the default except for ``bin``) or base64
    (``base64``, the default for ``bin``); a ``json`` record may also carry the JSON value itself,
    stored in compact form.

    Raises:
        HttpError: 400 ``invalid_json`` / ``invalid_batch`` naming every bad record (``details``:
            index, field, message); nothing of the batch is stored then.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise HttpError(400, "invalid_batch", f"body is a JSON {type(doc).__name__}: a batch is a JSON array of records")
    if not doc:
        raise HttpError(400, "invalid_batch", "the batch is empty")
    if len(doc) > max_records:
        raise HttpError(400, "invalid_batch", f"the batch has {len(doc)} records, more than the limit of {max_records}")
    records, details = [], []
    for index, item in enumerate(doc):
        try:
            records.append(_batch_record(item, index))
        except HttpError as exc:
            details.append({"index": index, "field": exc.extra.get("field"), "message": exc.message})
    if details:
        first = details[0]
        message = f"{len(details)} of {len(doc)} records are invalid; nothing was stored (first: record {first['index']}: {first['message']})"
        raise HttpError(400, "invalid_batch", message, extra={"details": details})
    return records


def _batch_record(item, index: int) -> BatchRecord:
    def bad(name: str, message: str) -> HttpError:
        return HttpError(400, "invalid_batch", message, extra={"field": name})

    if not isinstance(item, dict):
        raise bad(None, f"record {index} is a JSON {type(item).__name__}, not an object")
    unknown = sorted(set(item) - BATCH_FIELDS)
    if unknown:
        raise bad(unknown[0], f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(BATCH_FIELDS))}")
    device_id = item.get("device_id")
    if not isinstance(device_id, str):
        raise bad("device_id", "device_id is missing or not a string")
    problem = device_id_problem(device_id, "device_id")
    if problem is not None:
        raise bad("device_id", problem)
    fmt = item.get("format")
    if fmt not in FORMATS:
        raise bad("format", f"format {fmt!r} is not one of {', '.join(sorted(FORMATS))}")
    product_id = item.get("product_id")
    if product_id is not None:
        if not isinstance(product_id, str):
            raise bad("product_id", "product_id is not a string")
        # Product ids are held to the device id rule: they travel the same ways (keys, paths).
        problem = device_id_problem(product_id, "product_id")
        if problem is not None:
            raise bad("product_id", problem)
    if "payload" not in item:
        raise bad("payload", "payload is missing")
    value = item["payload"]
    encoding = item.get("payload_encoding", "base64" if fmt == "bin" else "utf8")
    if encoding not in ("utf8", "base64"):
        raise bad("payload_encoding", f"payload_encoding {encoding!r} is not utf8 or base64")
    if fmt == "json" and isinstance(value, dict | list):
        payload = orjson.dumps(value)
    elif not isinstance(value, str):
        raise bad("payload", f"payload is a JSON {type(value).__name__}: send text (or base64), or a JSON object/array for format json")
    elif encoding == "base64":
        try:
            payload = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise bad("payload", f"payload is not valid base64: {exc}") from None
    else:
        payload = value.encode("utf-8")
    try:
        check_payload(fmt, payload, "payload")
    except HttpError as exc:
        raise bad("payload", exc.message) from None
    return BatchRecord(device_id, fmt, payload, product_id)


# --- Kafka reachability --------------------------------------------------------------------------


def kafka_answers(bootstrap_servers: str, timeout_s: float = 1.0) -> bool:
    """True when a bootstrap server answers a Kafka ApiVersions request within ``timeout_s``.

    A TCP connect is not enough: a stalled broker still accepts connections.
    """
    request = struct.pack(">hhih", 18, 0, 1, 14) + b"iotlink-health"  # ApiVersions v0, correlation id 1
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s) as sock:
                sock.settimeout(timeout_s)
                sock.sendall(struct.pack(">i", len(request)) + request)
                header = _recv_exact(sock, 8)
                if header is not None and struct.unpack(">ii", header)[1] == 1:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --- the server ----------------------------------------------------------------------------------


@dataclass
class HttpCounters(BridgeCounters):
    """The bridge counters (``received``: records in valid requests) plus per-answer counts."""

    requests: int = 0
    accepted: int = 0  # requests answered 202
    client_errors: int = 0  # requests answered 4xx
    unauthorized: int = 0  # of which 401
    too_large: int = 0  # of which 413
    unavailable: int = 0  # requests answered 503 (Kafka did not confirm)


@dataclass
class HttpOptions:
    """Everything one HTTP ingest run needs."""

    bootstrap_servers: str
    raw_topic: str
    host: str = DEFAULT_HOST
    port: int = 8080
    tokens: frozenset[str] = frozenset()
    token_digests: frozenset[bytes] = frozenset()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS
    ack_timeout_s: float = 10.0
    retry_after_s: int = 5
    max_in_flight: int = 10_000
    drain_timeout_s: float = 30.0
    producer_config: dict = field(default_factory=dict)


class IngestServer(ThreadingHTTPServer):
    """The listening socket and the thread per connection.

    ``socketserver.TCPServer`` listens with a backlog of 5: a burst of more clients than that,
    arriving faster than the accept loop takes them, overflows the kernel's accept queue and gets
    dropped SYNs or resets. ``listen()`` takes any int and the kernel caps it at
    ``net.core.somaxconn``, so asking for ``SOMAXCONN`` means "as many as the host allows".
    """

    request_queue_size = socket.SOMAXCONN
    # A connection thread must not keep the process alive at exit; stop() drains requests itself.
    daemon_threads = True


class HttpIngest:
    """The threaded HTTP server and its Kafka producer.

    The producer is created on a background thread, so the server answers (503 until then) even
    while Kafka is unreachable at start.

    Args:
        options: The ingest options.
    """

    def __init__(self, options: HttpOptions):
        self.options = options
        self.counters = HttpCounters()
        self.auth = TokenCheck(options.tokens, options.token_digests)
        self.producer: RawProducer | None = None
        self.started_at = time.monotonic()
        self._server: IngestServer | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._active = 0
        self._active_lock = threading.Condition()
        self._health_cache: tuple[float, bool] = (0.0, False)
        self._connector = threading.Thread(target=self._connect_producer, name="http-ingest-kafka", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._server.server_address[1]

    def start(self) -> None:
        """Binds the port and serves on background threads."""
        ingest = self

        class Handler(IngestHandler):
            server_ingest = ingest

        self._server = IngestServer((self.options.host, self.options.port), Handler)
        self._connector.start()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-ingest", daemon=True)
        self._thread.start()

    def _connect_producer(self) -> None:
        config = self.options.producer_config
        delay = 1.0
        while not self._closing.is_set():
            try:
                options = self.options
                self.producer = RawProducer(options.bootstrap_servers, options.raw_topic, options.max_in_flight, self.counters, **config)
                return
            except Exception as exc:  # noqa: BLE001 - a producer that cannot be made is retried, the server keeps answering 503
                log.warning("http ingest: cannot reach Kafka at %s: %s; retrying in %g s", self.options.bootstrap_servers, exc, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, 30.0)

    def kafka_reachable(self) -> bool:
        """Whether Kafka answers (probed at most once a second)."""
        checked_at, answer = self._health_cache
        if time.monotonic() - checked_at >= 1.0:
            answer = kafka_answers(self.options.bootstrap_servers, 1.0)
            self._health_cache = (time.monotonic(), answer)
        return answer

    def produce(self, envelopes: list[RawEnvelope]) -> list[BaseException | None]:
        """Produces the records of one request and waits up to the ack timeout for Kafka."""
        if self.producer is None:
            return [ConnectionError(f"no connection to Kafka at {self.options.bootstrap_servers} yet")] * len(envelopes)
        return self.producer.send_and_wait(envelopes, self.options.ack_timeout_s)

    def request_started(self) -> None:
        """Counts a request in progress (shutdown waits for them)."""
        with self._active_lock:
            self._active += 1

    def request_finished(self) -> None:
        """Counts a request done."""
        with self._active_lock:
            self._active -= 1
            self._active_lock.notify_all()

    def stop(self) -> bool:
        """Stops accepting, lets running requests finish (they wait for Kafka), closes the producer.

        Returns:
            True when every running request finished within the drain timeout.
        """
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._active_lock:
            drained = self._active_lock.wait_for(lambda: self._active == 0, self.options.drain_timeout_s)
        self._connector.join(35)
        if self.producer is not None:
            self.producer.close(10)
        return drained

    def status(self, before: dict[str, int], interval_s: float) -> str:
        """The one-line status against an earlier counter snapshot."""
        return status_line(self.counters.snapshot(), before, interval_s, self.producer.in_flight if self.producer else 0)


def status_line(now: dict[str, int], before: dict[str, int], interval_s: float, in_flight: int) -> str:
    """The one-line status the ingest prints every interval."""
    rate = (now["requests"] - before["requests"]) / interval_s if interval_s > 0 else 0.0
    return (
        f"http ingest: requests {now['requests']} ({rate:.0f}/s)  202 {now['accepted']}  4xx {now['client_errors']} "
        f"(401 {now['unauthorized']}, 413 {now['too_large']})  503 {now['unavailable']}  records produced {now['produced']}  "
        f"kafka errors {now['failed']}  in flight {in_flight}"
    )


class IngestHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests (HTTP/1.1 keep-alive); bound to an :class:`HttpIngest` by subclassing."""

    server_ingest: HttpIngest
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops sending mid-request frees its thread
    server_version = "iotlink-http-ingest"
    # The head and the body of an answer are two writes: with Nagle's algorithm the body waited
    # for the client's delayed ACK of the head, ~40 ms per request on a keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("http ingest: %s " + format, self.address_string(), *args)

    def parse_request(self) -> bool:
        """Parses the request line and headers, then refuses ambiguous framing (see :func:`check_framing`).

        Returns:
            False when the request was answered here (an error) and must not be dispatched.
        """
        self._header_lines: list[bytes] = []
        self._framing_checked = False
        self._declared_length: int | None = None
        self._consumed = False
        real = self.rfile
        # http.client reads the header lines with readline() only: record them as received.
        self.rfile = _LineRecorder(real, self._header_lines)
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = real
        return parsed and self._check_framing()

    def handle_expect_100(self) -> bool:
        """Checks the framing before ``100 Continue`` is sent, so a refused client is not asked for its body."""
        return self._check_framing() and super().handle_expect_100()

    def _check_framing(self) -> bool:
        if self._framing_checked:
            return True
        self._framing_checked = True
        try:
            self._declared_length = check_framing(self._header_lines, self.request_version)
        except HttpError as exc:
            ingest = self.server_ingest
            ingest.counters.add("requests")
            if 400 <= exc.status < 500:
                ingest.counters.add("client_errors")
                ingest.counters.add("rejected")
                if exc.status == 413:
                    ingest.counters.add("too_large")
            # Where this request ends is unknown, so nothing after it on the connection can be trusted.
            self.close_connection = True
            self._send(exc.status, exc.body(), exc.headers)
            return False
        return True

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802 - http.server's naming
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802 - http.server's naming
        self._dispatch("PUT")

    def do_DELETE(self):  # noqa: N802 - http.server's naming
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        ingest = self.server_ingest
        ingest.request_started()
        ingest.counters.add("requests")
        try:
            status, body, headers = self._handle(method)
        except HttpError as exc:
            status, body, headers = exc.status, exc.body(), exc.headers
            if 400 <= exc.status < 500:
                ingest.counters.add("client_errors")
                ingest.counters.add("rejected")
                if exc.status == 401:
                    ingest.counters.add("unauthorized")
                elif exc.status == 413:
                    ingest.counters.add("too_large")
            elif exc.status == 503:
                ingest.counters.add("unavailable")
            if method != "GET" and not self._consumed:
                # The body was not read: the connection cannot carry another request.
                self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, not drop the connection silently
            log.exception("http ingest: %s %s failed", method, self.path)
            status, body, headers = 500, {"error": "internal_error", "message": str(exc)}, {}
        finally:
            ingest.request_finished()
        if self._declared_length and not self._consumed:
            # A body was announced but not read (a GET, or an early error): its bytes would be
            # taken for the next request on this connection.
            self.close_connection = True
        self._send(status, body, headers)

    def _handle(self, method: str) -> tuple[int, dict, dict]:
        ingest = self.server_ingest
        route = match_route(method, self.path)
        if route.route == "/health":
            return self._health()
        if route.route == "/openapi.json":
            return 200, openapi_document(), {}
        ingest.auth.check(self.headers.get("Authorization"))
        length = body_length(self.headers, ingest.options.max_body_bytes)
        if route.route == BATCH_PATH:
            if media_type(self.headers.get("Content-Type")) != "application/json":
                raise HttpError(415, "unsupported_media_type", "a batch is a JSON array: send Content-Type application/json")
            records = parse_batch(self._body(length), ingest.options.max_batch_records)
        else:
            fmt = format_for_content_type(self.headers.get("Content-Type"))
            body = self._body(length)
            check_payload(fmt, body)
            product_id = route.query.get("product_id")
            if product_id is not None:
                product_id = _valid_id(product_id, "product_id", "query")
            records = [BatchRecord(route.device_id, fmt, body, product_id)]
        ingest.counters.add("received", len(records))
        received_at = int(time.time() * 1000)
        envelopes = [
            RawEnvelope(payload=r.payload, source="http", received_at=received_at, device_id=r.device_id, product_id=r.product_id, format=r.format)
            for r in records
        ]
        outcomes = ingest.produce(envelopes)
        failed = [i for i, exc in enumerate(outcomes) if exc is not None]
        if failed:
            first = outcomes[failed[0]]
            message = f"Kafka did not confirm {len(failed)} of {len(records)} records ({type(first).__name__}: {first}); resend them"
            extra = {}
            if route.route == BATCH_PATH:
                extra["results"] = [{"index": i, "status": "failed" if exc is not None else "stored"} for i, exc in enumerate(outcomes)]
            raise HttpError(503, "kafka_unavailable", message, extra=extra, headers={"Retry-After": str(ingest.options.retry_after_s)})
        ingest.counters.add("accepted")
        body = {"accepted": len(records), "received_at": received_at}
        if route.device_id is not None:
            body["device_id"] = route.device_id
        return 202, body, {}

    def _body(self, length: int) -> bytes:
        body = self.rfile.read(length)
        self._consumed = len(body) == length
        if len(body) != length:
            raise HttpError(400, "incomplete_body", f"the connection ended after {len(body)} of {length} body bytes")
        return body

    def _health(self) -> tuple[int, dict, dict]:
        ingest = self.server_ingest
        reachable = ingest.kafka_reachable()
        body = {
            "status": "ok" if reachable else "kafka_unreachable",
            "kafka": {"bootstrap_servers": ingest.options.bootstrap_servers, "reachable": reachable, "topic": ingest.options.raw_topic},
            "in_flight": ingest.producer.in_flight if ingest.producer else 0,
            "uptime_s": round(time.monotonic() - ingest.started_at, 1),
            "counters": ingest.counters.snapshot(),
        }
        return (200 if reachable else 503), body, {}

    def _send(self, status: int, body: dict, headers: dict) -> None:
        data = orjson.dumps(body)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client left; nothing to tell it


class _LineRecorder:
    """A read-only file wrapper that keeps a copy of every line read through ``readline``."""

    def __init__(self, raw, lines: list[bytes]):
        self._raw = raw
        self._lines = lines

    def readline(self, size: int = -1) -> bytes:
        line = self._raw.readline(size)
        self._lines.append(line)
        return line

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Adds the ``iotlink bridge http`` options."""
    group = parser.add_argument_group("HTTP ingest")
    group.add_argument("--host", default=DEFAULT_HOST, metavar="ADDRESS",
                       help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for every interface)")
    group.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0: any free port)")
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help="accepted bearer tokens, hashed: one 'sha256:<hex>' line per token (# comments); --new-token makes one")
    group.add_argument("--token", action="append", metavar="TOKEN",
                       help="an accepted bearer token (repeatable; shows in ps: prefer --token-file)")
    group.add_argument("--new-token", action="store_true",
                       help="print a new random token and its token-file line, then exit (the token is not stored anywhere)")
    group.add_argument("--no-auth", action="store_true", help="accept requests without a token (testing only)")
    group.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="BYTES",
                       help="larger bodies are answered 413 (default 1048576 = 1 MiB)")
    group.add_argument("--max-batch-records", type=int, default=DEFAULT_MAX_BATCH_RECORDS, metavar="N",
                       help=f"records per batch request at most (default {DEFAULT_MAX_BATCH_RECORDS})")
    group.add_argument("--ack-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="how long a request waits for Kafka before it is answered 503 (default 10)")
    group.add_argument("--retry-after", type=int, default=5, metavar="SECONDS", help="Retry-After of 503 answers (default 5)")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on Ctrl-C/SIGTERM, how long to let running requests finish (default 30)")
    group.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS", help="status line period (default 1; 0: none)")


def options_from_args(args, settings) -> HttpOptions:
    """Builds the ingest options from the command line and the settings.

    Raises:
        ValueError: naming the option that is missing or wrong.
    """
    tokens = check_tokens(args.token)
    digests = load_token_file(args.token_file) if args.token_file is not None else frozenset()
    if not tokens and not digests and not args.no_auth:
        raise ValueError("no bearer tokens: give --token-file FILE or --token TOKEN (or --no-auth for tests)")
    if args.max_body_bytes < 1 or args.max_batch_records < 1:
        raise ValueError("--max-body-bytes and --max-batch-records must be positive")
    if args.ack_timeout <= 0:
        raise ValueError(f"--ack-timeout must be positive, got {args.ack_timeout}")
    return HttpOptions(
        bootstrap_servers=settings.bootstrap_servers,
        raw_topic=settings.topics.raw,
        host=args.host,
        port=args.port,
        tokens=frozenset() if args.no_auth else tokens,
        token_digests=frozenset() if args.no_auth else digests,
        max_body_bytes=args.max_body_bytes,
        max_batch_records=args.max_batch_records,
        ack_timeout_s=args.ack_timeout,
        retry_after_s=args.retry_after,
        drain_timeout_s=args.drain_timeout,
    )
