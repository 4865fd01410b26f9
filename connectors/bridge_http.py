"""``iotlink bridge http``: the HTTP ingest — ``POST /v1/telemetry/{device_id}`` -> ``iotlink.raw``.

Routes (declared in :mod:`connectors.http_openapi`, which also makes ``GET /openapi.json`` of them):

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

The server is aiohttp's (its C HTTP/1.1 parser, llhttp), on an asyncio loop of its own thread:
requests are coroutines, so one waiting for Kafka holds up no other and no thread.

Message framing is the parser's, and strict (RFC 9112 §6.1/§6.3): a request whose body length is
ambiguous — ``Transfer-Encoding`` with ``Content-Length``, differing or malformed
``Content-Length`` values, a final coding other than chunked, obsolete line folding, whitespace
before a header colon, control characters in a header line — is answered ``400
malformed_request`` and the connection is closed, because a proxy in front of the bridge may have
read the same bytes differently (request smuggling). Chunked bodies are read like any other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import itertools
import logging
import secrets
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from aiohttp import ClientPayloadError, HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage

from connectors.http_openapi import (
    DEFAULT_MAX_BATCH_RECORDS,
    DEFAULT_MAX_BODY_BYTES,
    ROUTES,
    Route,
    openapi_document,
)
from connectors.raw_producer import BridgeCounters, RawProducer
from operators.dead_letter import dead_letter_to_json, make_dead_letter
from operators.device_id import INVALID_DEVICE_ID, device_id_problem
from operators.envelope import FORMATS, RawEnvelope
from operators.hex_text import HexTextError, parse_hex_text
from operators.tenant import TENANT_MISMATCH, publish_refusal, tenant_id_problem

log = logging.getLogger(__name__)

# This machine only unless told otherwise: exposing the bridge is a decision (--host 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"
SERVER_NAME = "iotlink-http-ingest"
MAX_WORKERS = 64
HTTP_LINGER_MS = 1
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
        route: The route, one of :data:`connectors.http_openapi.ROUTES`.
        device_id: The device id of ``/v1/telemetry/{device_id}``.
        query: Query parameters (last value wins).
    """

    route: Route
    device_id: str | None = None
    query: dict[str, str] = field(default_factory=dict)


def match_route(method: str, target: str, routes: tuple[Route, ...] = ROUTES) -> RouteMatch:
    """Finds the route of a request.

    Args:
        method: The HTTP method.
        target: The request target (path and query).
        routes: The routes served.

    Raises:
        HttpError: 404 for an unknown path, 405 (with ``Allow``) for a known path and another method,
            400 for an invalid device id.
    """
    parts = urlsplit(target)
    path = parts.path
    query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    # A path is the route's whole path, or its prefix and one non-empty last segment for its parameter.
    candidates = [r for r in routes if (path == r.path if r.parameter is None else path.startswith(r.prefix) and len(path) > len(r.prefix))]
    if not candidates:
        raise HttpError(404, "not_found", f"no route {path!r}; see GET /openapi.json")
    route = next((r for r in candidates if r.method == method), None)
    if route is None:
        allowed = ", ".join(r.method for r in candidates)
        raise HttpError(405, "method_not_allowed", f"{path} accepts {allowed}, not {method}", headers={"Allow": allowed})
    device_id = None
    if route.parameter is not None:
        device_id = _valid_id(unquote(path[len(route.prefix) :]), route.parameter, "path")
    return RouteMatch(route, device_id, query)


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


def load_token_file(token_file: Path) -> dict[bytes, str | None]:
    """The token digests of a token file and the tenant each is bound to: one ``sha256:<64 hex
    digits>`` per line, optionally followed by ``tenant=<id>`` (blank lines and ``#`` comments
    skipped). Tokens are kept hashed at rest: a line holding a token itself is refused. A token
    bound to a tenant publishes only for that tenant's devices.

    Raises:
        ValueError: naming the file, the line and what is wrong with it.
    """
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
    digests: dict[bytes, str | None] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text, _, binding = text.partition(" ")
        tenant = None
        if binding.strip():
            name, _, tenant = binding.strip().partition("=")
            problem = tenant_id_problem(tenant) if name == "tenant" else "write tenant=<id> after the digest"
            if problem is not None:
                raise ValueError(f"token file {token_file}, line {number}: {problem}")
        hex_digest = text[len(TOKEN_DIGEST_PREFIX):] if text.startswith(TOKEN_DIGEST_PREFIX) else ""
        if len(hex_digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_digest):
            raise ValueError(
                f"token file {token_file}, line {number}: not a token digest ('sha256:' and 64 hex digits); the file keeps "
                "tokens hashed: make one with 'iotlink bridge http --new-token' and put its line in the file"
            )
        digests[bytes.fromhex(hex_digest)] = tenant
    return digests


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
        tokens: Accepted tokens (in memory only: ``--token``, tests), bound to no tenant.
        digests: SHA-256 digests of accepted tokens (the token file) and their tenants.
        Both empty: authentication is off.
    """

    def __init__(self, tokens: frozenset[str] = frozenset(), digests: Mapping[bytes, str | None] | None = None):
        # Compared as digests so neither the token count nor their lengths leak through timing.
        digests = digests or {}
        self._digests = [(hashlib.sha256(t.encode()).digest(), None) for t in tokens] + sorted(digests.items(), key=lambda d: d[0])

    @property
    def enabled(self) -> bool:
        """True when requests need a token."""
        return bool(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """Accepts an ``Authorization`` header value.

        Returns:
            The tenant the token is bound to, or None.

        Raises:
            HttpError: 401 (with ``WWW-Authenticate``) when the token is missing, malformed or unknown.
        """
        if not self._digests:
            return None
        challenge = {"WWW-Authenticate": 'Bearer realm="iotlink"'}
        if not authorization:
            raise HttpError(401, "unauthorized", "missing Authorization header: send 'Authorization: Bearer <token>'", headers=challenge)
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "unauthorized", "Authorization header is not 'Bearer <token>'", headers=challenge)
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched, tenant = False, None
        for known, bound in self._digests:
            if hmac.compare_digest(digest, known):
                matched, tenant = True, bound
        if not matched:
            raise HttpError(401, "unauthorized", "unknown bearer token", headers=challenge)
        return tenant


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
    if not isinstance(fmt, str) or fmt not in FORMATS:
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
    if not isinstance(encoding, str) or encoding not in ("utf8", "base64"):
        raise bad("payload_encoding", f"payload_encoding {encoding!r} is not utf8 or base64")
    if fmt == "json" and isinstance(value, dict | list):
        # JSON already, and orjson wrote it: not parsed again by check_payload.
        return BatchRecord(device_id, fmt, orjson.dumps(value), product_id)
    if not isinstance(value, str):
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
    token_digests: Mapping[bytes, str | None] = field(default_factory=dict)
    # Device -> tenant (the device registry), for tokens bound to a tenant.
    device_tenants: Mapping[str, str | None] = field(default_factory=dict)
    dlq_topic: str = "iotlink.dlq"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS
    ack_timeout_s: float = 10.0
    retry_after_s: int = 5
    max_in_flight: int = 10_000
    drain_timeout_s: float = 30.0
    producer_config: dict = field(default_factory=dict)
    workers: int = 1  # processes serving the port (SO_REUSEPORT when more than one)
    worker: int = 0  # which of them this is


class BusyError(Exception):
    """``max_in_flight`` records waited for Kafka for the whole ack timeout: no slot for this one."""


class _IngestConnection(web.RequestHandler):
    """aiohttp's connection protocol, answering what its HTTP parser refuses in the bridge's own way.

    The parser (llhttp) refuses ambiguous framing before any of our code runs: ``Transfer-Encoding``
    with ``Content-Length``, differing or malformed lengths, a final coding other than chunked,
    obsolete line folding, whitespace before a colon, control characters. aiohttp would answer
    those with a text page and log a traceback per request (a hostile client could fill the log):
    here they are a JSON ``400 malformed_request``, counted, logged at debug, and the connection is
    closed (where the request ends is unknown, so nothing after it can be trusted).
    """

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None, message: str | None = None):
        ingest: HttpIngest = self._manager.ingest  # noqa: SLF001 - the server that made this connection
        if not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        reason = (exc.message or "malformed request").strip().splitlines()[0].rstrip(":")
        log.debug("http ingest: refused a malformed request from %s: %s", request.remote, reason)
        ingest.counters.add("requests")
        ingest.counters.add("client_errors")
        ingest.counters.add("rejected")
        response = _json_response(400, {"error": "malformed_request", "message": f"the request is not well-formed HTTP/1.1: {reason}"},
                                  {"Connection": "close"})
        response.force_close()
        return response


class _IngestServer(web.Server):
    """aiohttp's low-level server, making :class:`_IngestConnection` protocols."""

    def __init__(self, ingest: HttpIngest, **kwargs):
        super().__init__(ingest.handle, **kwargs)
        self.ingest = ingest

    def __call__(self) -> web.RequestHandler:
        return _IngestConnection(self, loop=self._loop, **self._kwargs)


def _json_response(status: int, body: dict | bytes, headers: dict) -> web.Response:
    # Our own Server header: aiohttp's names its and Python's versions.
    return web.Response(status=status, body=body if isinstance(body, bytes) else orjson.dumps(body), content_type="application/json",
                        headers={"Server": SERVER_NAME, **headers})


class HttpIngest:
    """The HTTP server (aiohttp's, on an asyncio loop of its own thread) and its Kafka producer.

    Requests run as coroutines: one waiting for Kafka holds no thread, and Kafka's confirmations of
    all requests come back through the producer's one callback thread.

    Args:
        options: The ingest options.
    """

    def __init__(self, options: HttpOptions):
        self.options = options
        self.counters = HttpCounters()
        self.auth = TokenCheck(options.tokens, options.token_digests)
        self.producer: RawProducer | None = None
        self.started_at = time.monotonic()
        self._openapi = orjson.dumps(openapi_document(options.max_batch_records, options.max_body_bytes))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: _IngestServer | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._port: int | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._closing = threading.Event()
        self._active = 0
        self._health_cache: tuple[float, bool] = (0.0, False)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._port

    def start(self) -> None:
        """Makes the Kafka producer, binds the port and serves on a background thread.

        librdkafka connects in the background: an unreachable Kafka is not an error here (requests
        are answered 503 until it answers), a producer configuration it refuses is.

        Raises:
            OSError: the address cannot be bound.
            confluent_kafka.KafkaException: the producer configuration is refused.
        """
        options = self.options
        # A request waits for its records' confirmation, so a keep-alive client sends its next one only
        # then: Kafka's batching wait (librdkafka's linger, 5 ms for the other bridges) would be
        # most of every request's time. 1 ms: 32 clients 4,100 -> 5,500-12,000 requests/s (docs/performance.md).
        self.producer = RawProducer(options.bootstrap_servers, options.raw_topic, options.max_in_flight, self.counters,
                                    **{"linger_ms": HTTP_LINGER_MS, **options.producer_config})
        self._thread = threading.Thread(target=self._serve, name="http-ingest", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            self.producer.close(0)
            raise self._start_error

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _listen(self) -> None:
        # keepalive_timeout: an idle keep-alive connection is closed after 30 s (docs/bridges.md).
        # lingering_time: a request answered before its body was read (refused, too large) has its
        # connection closed after reading on for at most 1 s, so the client can still read the answer.
        self._server = _IngestServer(self, keepalive_timeout=30.0, lingering_time=1.0, access_log=None)
        # The listen backlog: as many as the host allows (asyncio's default is 100).
        # Several worker processes bind the same port; the kernel spreads the connections among them.
        self._listener = await self._loop.create_server(self._server, self.options.host, self.options.port, backlog=socket.SOMAXCONN,
                                                        reuse_port=self.options.workers > 1 or None)
        self._port = self._listener.sockets[0].getsockname()[1]
        self._confirmations = _Confirmations(self._loop)

    async def kafka_reachable(self) -> bool:
        """Whether Kafka answers (probed at most once a second, off the event loop)."""
        checked_at, answer = self._health_cache
        if time.monotonic() - checked_at >= 1.0:
            answer = await asyncio.to_thread(kafka_answers, self.options.bootstrap_servers, 1.0)
            self._health_cache = (time.monotonic(), answer)
        return answer

    async def produce(self, envelopes: list[RawEnvelope]) -> list[BaseException | None]:
        """Produces the records of one request and waits up to the ack timeout for Kafka.

        Returns:
            One outcome per envelope: None when Kafka confirmed it, else why not.
        """
        return await self._confirmed(envelopes, lambda producer, envelope, on_done: producer.send(envelope, on_done, timeout_s=0))

    async def produce_records(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[BaseException | None]:
        """Produces ready-made ``(key, value)`` records (dead letters) to ``topic``, as :meth:`produce`."""
        return await self._confirmed(
            records, lambda producer, record, on_done: producer.send_record(topic, record[0], record[1], on_done, timeout_s=0)
        )

    async def _confirmed(self, items: list, send) -> list[BaseException | None]:
        """Sends each item with ``send(producer, item, on_done)`` (False: no in-flight slot free)
        and waits up to the ack timeout for Kafka's answers; one outcome per item.

        The request waits on one future, set when Kafka has answered for its last record (not one
        future per record), and its timeout is one timer of the event loop."""
        producer = self.producer
        if not items:
            return []
        if producer is None:
            return [ConnectionError(f"no connection to Kafka at {self.options.bootstrap_servers} yet")] * len(items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ack_timeout_s
        answers = _RequestAnswers(len(items), loop.create_future(), self._confirmations)
        for index, item in enumerate(items):
            # Never block the event loop on the in-flight bound: wait for a slot in short sleeps,
            # until the ack timeout, like the wait for Kafka's answer itself.
            while not send(producer, item, functools.partial(answers.answer, index)):
                if loop.time() >= deadline:
                    answers.answer(index, BusyError(f"{self.options.max_in_flight} records wait for Kafka"))
                    break
                await asyncio.sleep(0.005)
        if not answers.all_answered.done():
            timer = loop.call_at(deadline, _give_up, answers.all_answered)
            await answers.all_answered
            timer.cancel()
        return answers.outcomes()

    def stop(self) -> bool:
        """Stops accepting, lets running requests finish (they wait for Kafka), closes the producer.

        Returns:
            True when every running request finished within the drain timeout.
        """
        self._closing.set()
        drained = True
        if self._loop is not None and self._listener is not None and self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            try:
                drained = closing.result(self.options.drain_timeout_s + 15)
            except Exception:  # noqa: BLE001 - a server that does not close in time is left to the process exit
                log.warning("http ingest: the server did not close within the drain timeout")
                drained = False
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self.producer is not None:
            self.producer.close(10)
        return drained

    async def _close(self) -> bool:
        self._listener.close()  # no new connections
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = self._active == 0
        await self._server.shutdown(1.0)  # closes the idle keep-alive connections
        # Whatever still runs (a request past the drain timeout) ends here, not with the loop.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return drained

    # --- requests ----------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answers one request (aiohttp calls this once its head is parsed; the body is read here)."""
        self._active += 1
        self.counters.add("requests")
        close = False
        try:
            status, body, headers = await self._answer(request)
        except HttpError as exc:
            status, body, headers = exc.status, exc.body(), exc.headers
            if 400 <= exc.status < 500:
                self.counters.add("client_errors")
                self.counters.add("rejected")
                if exc.status == 401:
                    self.counters.add("unauthorized")
                elif exc.status == 413:
                    self.counters.add("too_large")
            elif exc.status == 503:
                self.counters.add("unavailable")
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, not drop the connection silently
            log.exception("http ingest: %s %s failed", request.method, request.raw_path)
            status, body, headers = 500, {"error": "internal_error", "message": str(exc)}, {}
        finally:
            self._active -= 1
        if not request.content.at_eof() or status == 413:
            # A body was announced and not read (a GET with a body, an early error): its bytes would be
            # taken for the next request on this connection. A client sending too much is let go.
            close = True
        if close:
            headers = {**headers, "Connection": "close"}
        response = _json_response(status, body, headers)
        if close:
            response.force_close()
        return response

    async def _answer(self, request: web.BaseRequest) -> tuple[int, dict | bytes, dict]:
        if request.version < HttpVersion11 and "Transfer-Encoding" in request.headers:
            raise HttpError(400, "malformed_request",
                            "the request is not well-formed HTTP/1.1: Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
        match = match_route(request.method, request.raw_path)
        tenant = None if match.route.public else self.auth.check(request.headers.get("Authorization"))
        return await getattr(self, match.route.handler)(request, match, tenant)

    # --- the routes' handlers (connectors.http_openapi.ROUTES names them) -----------------------

    async def get_health(self, request: web.BaseRequest, match: RouteMatch, tenant: str | None) -> tuple[int, dict, dict]:
        """``GET /health``: whether Kafka answers, and the counters."""
        reachable = await self.kafka_reachable()
        body = {
            "status": "ok" if reachable else "kafka_unreachable",
            "kafka": {"bootstrap_servers": self.options.bootstrap_servers, "reachable": reachable, "topic": self.options.raw_topic},
            "in_flight": self.producer.in_flight if self.producer else 0,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "counters": self.counters.snapshot(),
            "worker": self.options.worker,
        }
        return (200 if reachable else 503), body, {}

    async def get_openapi(self, request: web.BaseRequest, match: RouteMatch, tenant: str | None) -> tuple[int, bytes, dict]:
        """``GET /openapi.json``: the document of the routes, with this server's limits."""
        return 200, self._openapi, {}

    async def post_telemetry(self, request: web.BaseRequest, match: RouteMatch, tenant: str | None) -> tuple[int, dict, dict]:
        """``POST /v1/telemetry/{device_id}``: one payload, its format from the ``Content-Type``."""
        fmt = format_for_content_type(request.headers.get("Content-Type"))
        body = await self._body(request)
        check_payload(fmt, body)
        product_id = match.query.get("product_id")
        if product_id is not None:
            product_id = _valid_id(product_id, "product_id", "query")
        return await self._store([BatchRecord(match.device_id, fmt, body, product_id)], tenant, batch=False, device_id=match.device_id)

    async def post_batch(self, request: web.BaseRequest, match: RouteMatch, tenant: str | None) -> tuple[int, dict, dict]:
        """``POST /v1/telemetry:batch``: a JSON array of records, validated all or nothing."""
        if media_type(request.headers.get("Content-Type")) != "application/json":
            raise HttpError(415, "unsupported_media_type", "a batch is a JSON array: send Content-Type application/json")
        records = parse_batch(await self._body(request), self.options.max_batch_records)
        return await self._store(records, tenant, batch=True)

    async def _store(self, records: list[BatchRecord], tenant: str | None, batch: bool, device_id: str | None = None) -> tuple[int, dict, dict]:
        """Produces the records of one request; ``202`` once Kafka confirmed every one of them."""
        self.counters.add("received", len(records))
        received_at = int(time.time() * 1000)
        envelopes = [
            RawEnvelope(payload=r.payload, source="http", received_at=received_at, device_id=r.device_id, product_id=r.product_id, format=r.format)
            for r in records
        ]
        if tenant is not None:
            await self._refuse_other_tenants(tenant, envelopes, batch)
        outcomes = await self.produce(envelopes)
        failed = [i for i, exc in enumerate(outcomes) if exc is not None]
        if failed:
            first = outcomes[failed[0]]
            message = f"Kafka did not confirm {len(failed)} of {len(records)} records ({type(first).__name__}: {first}); resend them"
            extra = {}
            if batch:
                extra["results"] = [{"index": i, "status": "failed" if exc is not None else "stored"} for i, exc in enumerate(outcomes)]
            raise HttpError(503, "kafka_unavailable", message, extra=extra, headers={"Retry-After": str(self.options.retry_after_s)})
        self.counters.add("accepted")
        answer = {"accepted": len(records), "received_at": received_at}
        if device_id is not None:
            answer["device_id"] = device_id
        return 202, answer, {}

    async def _refuse_other_tenants(self, tenant: str, envelopes: list[RawEnvelope], batch: bool) -> None:
        """Dead-letters the records a tenant's token may not publish (devices of other tenants) and
        refuses the request with 403; nothing of a refused request goes to the raw topic.

        Raises:
            HttpError: 403 ``tenant_mismatch`` (503 when the dead letters could not be written).
        """
        refusals = [publish_refusal(tenant, e.device_id, self.options.device_tenants) for e in envelopes]
        refused = [i for i, why in enumerate(refusals) if why is not None]
        if not refused:
            return
        failed_at = int(time.time() * 1000)
        letters = []
        for i in refused:
            letter = make_dead_letter(stage="ingest", reason_code=TENANT_MISMATCH, reason=refusals[i], failed_at=failed_at,
                                      envelope=envelopes[i])
            letters.append((envelopes[i].device_id.encode(), dead_letter_to_json(letter).encode("utf-8")))
        outcomes = await self.produce_records(self.options.dlq_topic, letters)
        if any(exc is not None for exc in outcomes):
            raise HttpError(503, "kafka_unavailable", "Kafka did not confirm the dead letters of the refused records; resend them",
                            headers={"Retry-After": str(self.options.retry_after_s)})
        extra = {}
        if batch:
            extra["results"] = [{"index": i, "status": "refused" if refusals[i] else "not stored", **({"reason": refusals[i]} if refusals[i] else {})}
                                for i in range(len(envelopes))]
        raise HttpError(403, TENANT_MISMATCH, refusals[refused[0]] + (f" (and {len(refused) - 1} more records)" if len(refused) > 1 else ""),
                        extra=extra)

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body, at most ``max_body_bytes`` (Content-Length or chunked)."""
        limit = self.options.max_body_bytes
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if request.content_length is None and not chunked:
            raise HttpError(411, "length_required", "send the body with a Content-Length header or chunked")
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, "payload_too_large", f"body of {request.content_length} bytes is larger than the limit of {limit} bytes")
        if request.headers.get("Expect", "").lower() == "100-continue":
            # Asked only now: a request refused above (unknown token, too large) is never asked for its body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        parts, size = [], 0
        try:
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "payload_too_large", f"body larger than the limit of {limit} bytes")
                parts.append(chunk)
        except (ClientPayloadError, ConnectionError) as exc:
            raise HttpError(400, "incomplete_body", f"the body ended early: {exc}") from None
        return b"".join(parts)


class _Confirmations:
    """Kafka's answers, from the producer's callback thread to the requests on the event loop, in batches.

    Waking the loop costs a write to its self-pipe and a pass of the loop; once per confirmed
    request that was a tenth of the bridge's time. A request finishing while a hand-over is
    pending joins it, so a burst of confirmations wakes the loop once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[asyncio.Future] = []
        self._scheduled = False

    def add(self, answered: asyncio.Future) -> None:
        """Kafka answered for every record of a request (any thread)."""
        with self._lock:
            self._pending.append(answered)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the request ended long ago
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for answered in pending:
            if not answered.done():
                answered.set_result(None)


class _RequestAnswers:
    """Kafka's answers for the records of one request: their outcomes, and a future set once
    every record was answered."""

    __slots__ = ("_errors", "_answered", "_count", "all_answered", "_confirmations")

    def __init__(self, records: int, all_answered: asyncio.Future, confirmations: _Confirmations):
        self._errors: list[BaseException | None] = [None] * records
        self._answered = [False] * records
        # itertools.count's next() is atomic: answers come from the producer's thread and, for
        # records Kafka never took, from the event loop's.
        self._count = itertools.count(1)
        self.all_answered = all_answered
        self._confirmations = confirmations

    def answer(self, index: int, error: BaseException | None) -> None:
        """Record ``index`` was confirmed (``None``) or failed."""
        self._errors[index] = error
        self._answered[index] = True
        if next(self._count) == len(self._errors):
            self._confirmations.add(self.all_answered)

    def outcomes(self) -> list[BaseException | None]:
        """One outcome per record: None when confirmed, else why not (no answer in time: TimeoutError)."""
        return [error if answered else TimeoutError("no answer from Kafka") for error, answered in zip(self._errors, self._answered, strict=True)]


def _give_up(all_answered: asyncio.Future) -> None:
    """The ack timeout passed: the request answers with what Kafka confirmed so far."""
    if not all_answered.done():
        all_answered.set_result(None)


def status_line(now: dict[str, int], before: dict[str, int], interval_s: float, in_flight: int) -> str:
    """The one-line status the ingest prints every interval."""
    rate = (now["requests"] - before["requests"]) / interval_s if interval_s > 0 else 0.0
    return (
        f"http ingest: requests {now['requests']} ({rate:.0f}/s)  202 {now['accepted']}  4xx {now['client_errors']} "
        f"(401 {now['unauthorized']}, 413 {now['too_large']})  503 {now['unavailable']}  records produced {now['produced']}  "
        f"kafka errors {now['failed']}  in flight {in_flight}"
    )


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
    group.add_argument("--max-in-flight", type=int, default=10_000, metavar="N",
                       help="records of all requests that may wait for Kafka at once; a request finding no slot within its "
                       "ack timeout is answered 503 (default 10000)")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on Ctrl-C/SIGTERM, how long to let running requests finish (default 30)")
    group.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS", help="status line period (default 1; 0: none)")
    group.add_argument("--workers", type=int, default=1, metavar="N",
                       help="processes serving the port, each with its own interpreter, event loop and Kafka producer (SO_REUSEPORT: "
                       "the kernel spreads connections among them; default 1). Raises what the batch endpoint takes (CPU-bound in one "
                       "interpreter); single-reading requests, paced by Kafka's round trip, do as well or better with one. "
                       "Counters and the status line add them up; GET /health answers for the worker the connection reached")


def _device_tenants(settings) -> dict[str, str | None]:
    from connectors.postgres import device_tenants

    tenants = device_tenants(settings.device_registry)
    if not tenants:
        raise ValueError("the token file binds tokens to tenants: give --device-registry FILE|URL (the devices' tenants)")
    return tenants


def options_from_args(args, settings) -> HttpOptions:
    """Builds the ingest options from the command line and the settings.

    Raises:
        ValueError: naming the option that is missing or wrong.
    """
    tokens = check_tokens(args.token)
    digests = load_token_file(args.token_file) if args.token_file is not None else {}
    if not tokens and not digests and not args.no_auth:
        raise ValueError("no bearer tokens: give --token-file FILE or --token TOKEN (or --no-auth for tests)")
    if args.max_body_bytes < 1 or args.max_batch_records < 1:
        raise ValueError("--max-body-bytes and --max-batch-records must be positive")
    if args.ack_timeout <= 0:
        raise ValueError(f"--ack-timeout must be positive, got {args.ack_timeout}")
    if args.max_in_flight < 1:
        raise ValueError(f"--max-in-flight must be 1 or more, got {args.max_in_flight}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}, got {args.workers}")
    if args.workers > 1 and args.port == 0:
        raise ValueError("--workers above 1 needs a fixed --port: the workers share it")
    return HttpOptions(
        bootstrap_servers=settings.bootstrap_servers,
        raw_topic=settings.topics.raw,
        host=args.host,
        port=args.port,
        tokens=frozenset() if args.no_auth else tokens,
        token_digests={} if args.no_auth else digests,
        device_tenants=_device_tenants(settings) if any(digests.values()) and not args.no_auth else {},
        dlq_topic=settings.topics.dlq,
        max_body_bytes=args.max_body_bytes,
        max_batch_records=args.max_batch_records,
        ack_timeout_s=args.ack_timeout,
        retry_after_s=args.retry_after,
        max_in_flight=args.max_in_flight,
        drain_timeout_s=args.drain_timeout,
        workers=args.workers,
    )
