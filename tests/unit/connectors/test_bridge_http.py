"""Request logic of the HTTP ingest: routing, content type -> format, payload checks, auth, limits, batch, OpenAPI."""

import argparse
import base64
import hashlib
import re
import socket
import time

import orjson
import pytest

import connectors.bridge_http
from connectors.bridge_http import (
    HttpError,
    HttpIngest,
    HttpOptions,
    TokenCheck,
    add_arguments,
    check_payload,
    check_tokens,
    format_for_content_type,
    load_token_file,
    match_route,
    new_token,
    options_from_args,
    parse_batch,
    token_digest,
)
from connectors.http_openapi import ROUTES, Route, openapi_document
from operators.envelope import FORMATS


def error_of(call, *args, **kwargs) -> HttpError:
    with pytest.raises(HttpError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_routes_with_device_id_and_query():
    match = match_route("POST", "/v1/telemetry/dev-1?product_id=prod-a")
    assert (match.route.path, match.device_id, match.query) == ("/v1/telemetry/{device_id}", "dev-1", {"product_id": "prod-a"})
    assert match.route.handler == "post_telemetry"
    assert match_route("POST", "/v1/telemetry/hub%3A7").device_id == "hub:7"
    assert match_route("POST", "/v1/telemetry:batch").route.handler == "post_batch"
    assert match_route("GET", "/health").route.handler == "get_health"
    assert match_route("GET", "/openapi.json").route.handler == "get_openapi"


def test_every_route_names_a_handler_of_the_ingest():
    for route in ROUTES:
        assert callable(getattr(HttpIngest, route.handler, None)), route.handler


def test_a_route_added_is_matched_and_documented():
    extra = Route("GET", "/v1/devices/{device_id}", "get_device", "getDevice", "One device", public=True,
                  responses={"200": {"description": "The device."}})
    routes = (*ROUTES, extra)
    match = match_route("GET", "/v1/devices/dev-9", routes)
    assert (match.route, match.device_id) == (extra, "dev-9")
    assert error_of(match_route, "GET", "/v1/devices/dev-9").status == 404  # not served unless declared
    doc = openapi_document(routes=routes)
    assert doc["paths"]["/v1/devices/{device_id}"]["get"]["operationId"] == "getDevice"


def test_unknown_paths_wrong_methods_and_bad_ids():
    assert error_of(match_route, "GET", "/v2/telemetry/x").status == 404
    assert error_of(match_route, "POST", "/v1/telemetry/").status == 404
    wrong = error_of(match_route, "GET", "/v1/telemetry/dev-1")
    assert wrong.status == 405 and wrong.headers == {"Allow": "POST"}
    assert error_of(match_route, "POST", "/health").headers == {"Allow": "GET"}
    bad = error_of(match_route, "POST", "/v1/telemetry/a%20b")
    assert (bad.status, bad.code) == (400, "invalid_device_id")
    assert "'a b'" in bad.message
    assert error_of(match_route, "POST", "/v1/telemetry/a/b").status == 400


@pytest.mark.parametrize(
    "content_type, fmt",
    [
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("Text/CSV", "csv"),
        ("application/octet-stream", "bin"),
        ("text/plain; charset=us-ascii", "hex"),
    ],
)
def test_content_type_decides_the_format(content_type, fmt):
    assert format_for_content_type(content_type) == fmt


@pytest.mark.parametrize("content_type", [None, "", "application/xml", "multipart/form-data; boundary=x"])
def test_other_content_types_are_415(content_type):
    error = error_of(format_for_content_type, content_type)
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert "application/octet-stream (bin)" in error.message


def test_payload_checks_name_the_problem():
    check_payload("json", b'{"a": 1}')
    check_payload("csv", b"ts,t\n1,2\n")
    check_payload("hex", b"01 02 ff\n")
    check_payload("bin", b"\x00\n\xff")
    assert error_of(check_payload, "bin", b"").code == "empty_payload"
    error = error_of(check_payload, "json", b'{"a": ')
    assert error.code == "invalid_json" and "not valid JSON" in error.message
    error = error_of(check_payload, "csv", b"a,b\n\xff")
    assert error.code == "invalid_csv" and "byte 4 is 0xff" in error.message
    assert error_of(check_payload, "hex", b"0g").code == "invalid_hex"


def test_bearer_tokens_are_kept_hashed_in_the_token_file(tmp_path):
    token, line = new_token()
    assert line == token_digest(token) and line.startswith("sha256:") and token not in line
    assert len(token) >= 43 and new_token()[0] != token  # 256 random bits each
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# fleet A\n{line}\n\n  {token_digest('beta-456').upper().replace('SHA256:', 'sha256:')}  \n")
    digests = load_token_file(token_file)
    assert len(digests) == 2
    auth = TokenCheck(check_tokens(["gamma"]), digests)
    auth.check(f"Bearer {token}")
    auth.check("bearer beta-456")
    auth.check("Bearer gamma")
    for header, words in ((None, "missing"), ("Basic abc", "not 'Bearer"), ("Bearer ", "not 'Bearer"), ("Bearer beta-45", "unknown"),
                          (f"Bearer {line}", "unknown")):  # the digest itself is not a token
        error = error_of(auth.check, header)
        assert error.status == 401 and words in error.message
        assert error.headers == {"WWW-Authenticate": 'Bearer realm="iotlink"'}
    TokenCheck().check(None)  # no tokens configured: authentication is off
    with pytest.raises(ValueError, match="whitespace"):
        check_tokens(["two words"])
    with pytest.raises(ValueError, match="token file"):
        load_token_file(tmp_path / "missing")


def test_a_token_file_with_a_token_in_plain_text_is_refused_naming_the_line(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# ok\n{token_digest('a')}\nalpha-123\n")
    with pytest.raises(ValueError, match=r"tokens, line 3: not a token digest .*--new-token"):
        load_token_file(token_file)
    token_file.write_text("sha256:1234\n")
    with pytest.raises(ValueError, match="line 1"):
        load_token_file(token_file)


def test_batch_records_decode_text_base64_and_embedded_json():
    body = orjson.dumps([
        {"device_id": "d1", "format": "json", "payload": {"data": {"metrics": {"t": 1}}}},
        {"device_id": "d2", "format": "bin", "payload": base64.b64encode(b"\x00\n\xff").decode()},
        {"device_id": "d3", "format": "hex", "payload": "0102ff", "product_id": "prod-b"},
        {"device_id": "d4", "format": "csv", "payload": "ts,t\n1,2\n"},
        {"device_id": "d5", "format": "json", "payload": '{"x": 1}'},
        {"device_id": "d6", "format": "csv", "payload": base64.b64encode(b"a,b\n").decode(), "payload_encoding": "base64"},
    ])
    records = parse_batch(body)
    assert [(r.device_id, r.format, r.payload, r.product_id) for r in records] == [
        ("d1", "json", b'{"data":{"metrics":{"t":1}}}', None),
        ("d2", "bin", b"\x00\n\xff", None),
        ("d3", "hex", b"0102ff", "prod-b"),
        ("d4", "csv", b"ts,t\n1,2\n", None),
        ("d5", "json", b'{"x": 1}', None),
        ("d6", "csv", b"a,b\n", None),
    ]


def test_batch_validation_is_all_or_nothing_and_lists_every_bad_record():
    body = orjson.dumps([
        {"device_id": "ok", "format": "json", "payload": "{}"},
        {"device_id": "bad id", "format": "json", "payload": "{}"},
        {"device_id": "d", "format": "xml", "payload": "<a/>"},
        {"device_id": "d", "format": "bin", "payload": "not base64!"},
        {"device_id": "d", "format": "json", "payload": "{"},
        {"device_id": "d", "format": "json", "payload": "{}", "colour": "red"},
        {"format": "json", "payload": "{}"},
        "text",
        {"device_id": "d", "format": "bin", "payload": 5},
    ])
    error = error_of(parse_batch, body)
    assert (error.status, error.code) == (400, "invalid_batch")
    assert error.message.startswith("8 of 9 records are invalid; nothing was stored")
    assert [(d["index"], d["field"]) for d in error.extra["details"]] == [
        (1, "device_id"), (2, "format"), (3, "payload"), (4, "payload"), (5, "colour"), (6, "device_id"), (7, None), (8, "payload"),
    ]
    assert "not valid base64" in error.extra["details"][2]["message"]


@pytest.mark.parametrize(
    "body, words",
    [(b"{", "not valid JSON"), (b'{"a":1}', "JSON array"), (b"[]", "empty"), (orjson.dumps([{}] * 3), "limit of 2")],
)
def test_batch_body_shape(body, words):
    error = error_of(parse_batch, body, max_records=2)
    assert error.status == 400 and words in error.message


def test_openapi_document_carries_the_servers_limits_and_every_format():
    doc = openapi_document(max_batch_records=250, max_body_bytes=4096)
    batch = doc["paths"]["/v1/telemetry:batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"]["maxItems"] == 250
    assert "4096 bytes" in batch["responses"]["413"]["description"]
    assert "413" not in doc["paths"]["/health"]["get"]["responses"]  # public routes read no body
    formats = {alt["properties"]["format"]["enum"][0] for alt in doc["components"]["schemas"]["BatchRecord"]["oneOf"]}
    assert formats == FORMATS


def test_openapi_document_describes_exactly_the_served_routes():
    doc = orjson.loads(orjson.dumps(openapi_document()))  # what /openapi.json serves parses as JSON
    assert re.fullmatch(r"3\.\d+\.\d+", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert documented == {(route.method, route.path) for route in ROUTES}
    for method, path in documented:  # each documented operation is the route the server matches
        concrete = path.replace("{device_id}", "dev-1")
        assert match_route(method, concrete).route.operation_id == doc["paths"][path][method.lower()]["operationId"]
    for path, item in doc["paths"].items():
        for operation in item.values():
            assert operation["responses"], path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path
    single = doc["paths"]["/v1/telemetry/{device_id}"]["post"]
    assert set(single["requestBody"]["content"]) == {"application/json", "text/csv", "application/octet-stream", "text/plain"}
    assert {"202", "400", "401", "413", "415", "503"} <= set(single["responses"])
    assert "Retry-After" in single["responses"]["503"]["headers"]
    # every $ref points at a defined schema
    refs = re.findall(r'"\$ref":"#/components/schemas/([A-Za-z]+)"', orjson.dumps(doc).decode())
    assert refs and set(refs) <= set(doc["components"]["schemas"])


@pytest.mark.parametrize("argv, message", [
    (["bridge", "http", "--embedded"], "iotlink bridge http: no bearer tokens"),
    (["bridge", "http", "--no-auth", "--max-body-bytes", "0"], "iotlink bridge http: --max-body-bytes and --max-batch-records must be positive"),
    (["bridge", "tcp", "--embedded", "--idle-timeout", "0"], "iotlink bridge tcp: --idle-timeout must be positive"),
])
def test_a_bad_bridge_option_exits_2_before_anything_starts(argv, message, capsys, monkeypatch):
    import iotlink.stack
    from iotlink.cli import main

    def no_stack(*_args, **_kwargs):
        raise AssertionError("the embedded stack was started for a bad option")

    monkeypatch.setattr(iotlink.stack, "EmbeddedStack", no_stack)
    assert main(argv) == 2
    assert capsys.readouterr().out.startswith(message)


@pytest.mark.parametrize(
    ("path_id", "fragment"),
    [
        ("..", "path device_id '..' is a path segment"),
        ("x" * 10_240, "path device_id of 10240 characters is longer than the limit of 128"),
        ("dev%201", "path device_id 'dev 1' has ' ' (U+0020) at offset 3"),
        ("dev%221", "has '\"' (U+0022) at offset 3"),
        ("..%252F..%5Cetc", "has the path separator '\\\\' at offset 7"),  # %25 decodes to the % of %2F
        ("..%2F..%5Cetc", "has the path separator '/' at offset 2"),
        ("%2e%2e", "path device_id '..' is a path segment"),
    ],
)
def test_device_ids_breaking_the_rule_are_answered_400(path_id, fragment):
    bad = error_of(match_route, "POST", f"/v1/telemetry/{path_id}")
    assert (bad.status, bad.code) == (400, "invalid_device_id")
    assert fragment in bad.message and len(bad.message) < 300


def test_batch_fields_of_the_wrong_json_type_are_400_not_500():
    # An object or array where a string is expected (found by the OpenAPI test): unhashable in a set lookup.
    for field, value in (("format", {"a": 1}), ("format", [1]), ("payload_encoding", {"b": 2})):
        item = {"device_id": "dev-1", "format": "json", "payload": "{}", field: value}
        error = error_of(parse_batch, orjson.dumps([item]))
        assert (error.status, error.code) == (400, "invalid_batch") and error.extra["details"][0]["field"] == field


def test_batch_records_and_product_ids_follow_the_same_rule():
    items = [
        {"device_id": "..", "format": "json", "payload": "{}"},
        {"device_id": "ok-1", "format": "json", "payload": "{}", "product_id": "../p"},
        {"device_id": "ok-2", "format": "json", "payload": "{}", "product_id": "prod-a"},
    ]
    error = error_of(parse_batch, orjson.dumps(items))
    details = {d["index"]: (d["field"], d["message"]) for d in error.extra["details"]}
    assert details[0] == ("device_id", "device_id '..' is a path segment ('.' or '..')")
    assert details[1] == ("product_id", "product_id '../p' has the path separator '/' at offset 2")
    assert 2 not in details


def test_the_bridge_binds_this_machine_only_unless_told_otherwise():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1" == HttpOptions("k:1", "raw").host
    assert parser.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    assert "default 127.0.0.1" in parser.format_help()


# --- message framing, over a socket to a running bridge --------------------------------------------


class FakeProducer:
    """Stands in for :class:`RawProducer`: records what reaches it and confirms at once."""

    def __init__(self, *_args, **_kwargs):
        self.sent = []
        self.in_flight = 0

    def send(self, envelope, on_done=None, timeout_s=None):
        self.sent.append(envelope)
        if on_done is not None:
            on_done(None)
        return True

    def send_record(self, topic, key, value, on_done=None, timeout_s=None):
        self.sent.append((topic, key, value))
        if on_done is not None:
            on_done(None)
        return True

    def close(self, _timeout_s=None):
        pass


@pytest.fixture
def fake_producer(monkeypatch):
    """Bridges started in the test get a :class:`FakeProducer`."""
    monkeypatch.setattr(connectors.bridge_http, "RawProducer", FakeProducer)


@pytest.fixture
def bridge(fake_producer):
    """A running bridge (no auth) whose producer records instead of producing; stopped afterwards."""
    ingest = HttpIngest(HttpOptions("127.0.0.1:1", "raw", port=0, drain_timeout_s=5))
    ingest.start()
    deadline = time.monotonic() + 5
    while ingest.producer is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ingest.producer is not None
    yield ingest
    ingest.stop()


def exchange(port: int, request: bytes, timeout_s: float = 5.0, close_wait_s: float = 2.0) -> tuple[int, dict, dict, bool]:
    """Sends raw bytes; returns (status, headers, JSON body, whether the bridge closed the connection within ``close_wait_s``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside the answer body"
            rest += chunk
        body, extra = rest[:length], rest[length:]
        assert extra == b"", f"more than one answer: {extra!r}"
        sock.settimeout(close_wait_s)
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return int(status_line.split()[1]), headers, orjson.loads(body), closed


def post(headers: str, body: bytes = b"{}", path: str = "/v1/telemetry/dev-1", version: str = "HTTP/1.1") -> bytes:
    return f"POST {path} {version}\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n".encode("latin-1") + body


# Requests whose body length is ambiguous (request smuggling material) or whose head is malformed.
FRAMING_CASES = {
    "te-and-cl": (post("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"{}")),
    "cl-and-te": (post("Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", b"2\r\n{}\r\n0\r\n\r\n")),
    "te-identity-and-cl": (post("Transfer-Encoding: identity\r\nContent-Length: 2\r\n")),
    "two-differing-cl": (post("Content-Length: 2\r\nContent-Length: 3\r\n", b"{} ")),
    "cl-list-differing": (post("Content-Length: 2, 3\r\n", b"{} ")),
    "cl-plus-sign": (post("Content-Length: +2\r\n")),
    "cl-negative": (post("Content-Length: -2\r\n")),
    "cl-trailing-junk": (post("Content-Length: 2x\r\n")),
    "cl-leading-junk": (post("Content-Length: x2\r\n")),
    "cl-hex": (post("Content-Length: 0x2\r\n")),
    "cl-inner-space": (post("Content-Length: 2 2\r\n")),
    "cl-empty": (post("Content-Length: \r\n")),
    "cl-empty-list-element": (post("Content-Length: 2,,2\r\n")),
    "cl-unicode-digit": (post("Content-Length: \xb2\r\n")),
    "te-gzip": (post("Transfer-Encoding: gzip\r\n")),
    "te-chunked-then-gzip": (post("Transfer-Encoding: chunked, gzip\r\n")),
    "te-chunked-twice": (post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")),
    "te-empty-coding": (post("Transfer-Encoding: ,chunked\r\n")),
    "te-in-http-1.0": (post("Transfer-Encoding: chunked\r\n", b"", version="HTTP/1.0")),
    "obs-fold": (post("X-Note: a\r\n folded\r\nContent-Length: 2\r\n")),
    "obs-fold-cl": (post("Content-Length:\r\n\t2\r\n")),
    "space-before-colon-te": post("Transfer-Encoding : chunked\r\nContent-Length: 2\r\n"),
    "tab-before-colon-cl": (post("Content-Length\t: 2\r\n")),
    "no-colon": (post("Content-Length 2\r\n")),
    "bare-cr-in-value": (post("X-Note: a\rTransfer-Encoding: chunked\r\nContent-Length: 2\r\n")),
    "nul-in-value": (post("X-Note: a\x00b\r\nContent-Length: 2\r\n")),
    "bad-name": (post("Content/Length: 2\r\n")),
}


@pytest.mark.parametrize("case", FRAMING_CASES)
def test_ambiguous_framing_is_400_closes_the_connection_and_produces_nothing(bridge, case):
    status, headers, body, closed = exchange(bridge.port, FRAMING_CASES[case])
    assert (status, body["error"]) == (400, "malformed_request"), body
    assert body["message"].startswith("the request is not well-formed HTTP/1.1: ") and len(body["message"]) < 300
    assert set(body) == {"error", "message"} and headers["server"] == "iotlink-http-ingest"
    assert headers["connection"] == "close" and closed
    assert bridge.producer.sent == []
    assert bridge.counters.snapshot()["client_errors"] == 1


def test_a_smuggled_second_request_is_never_answered_nor_produced(bridge):
    hidden = b"POST /v1/telemetry/dev-smuggled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    request = post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + hidden)
    status, _, body, closed = exchange(bridge.port, request)  # exchange() fails on a second answer
    assert (status, body["error"], closed) == (400, "malformed_request", True)
    assert bridge.producer.sent == []


def test_chunked_bodies_are_read(bridge):
    status, _, body, closed = exchange(bridge.port, post("Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"), close_wait_s=0.3)
    assert (status, body["accepted"], closed) == (202, 1, False)
    assert [e.payload for e in bridge.producer.sent] == [b"{}"]


def test_transfer_encoding_in_http_1_0_is_refused(bridge):
    status, _, body, closed = exchange(bridge.port, post("Transfer-Encoding: chunked\r\n", b"", version="HTTP/1.0"))
    assert (status, body["error"], closed) == (400, "malformed_request", True)
    assert "HTTP/1.0" in body["message"] and bridge.producer.sent == []


def test_a_body_without_length_is_411_and_one_above_the_limit_413_unread(bridge):
    status, _, body, _ = exchange(bridge.port, post("", b""))
    assert (status, body["error"]) == (411, "length_required")
    limit = bridge.options.max_body_bytes
    status, _, body, closed = exchange(bridge.port, post(f"Content-Length: {limit + 1}\r\n", b""))
    assert (status, body["error"], closed) == (413, "payload_too_large", True)  # answered before the body was sent
    big = b"[" + b"1," * (limit // 2) + b"1]"
    status, _, body, closed = exchange(bridge.port, post("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)))
    assert (status, body["error"], closed) == (413, "payload_too_large", True)
    assert bridge.producer.sent == []


def test_framing_is_checked_before_100_continue_and_on_every_route(bridge):
    status, _, body, closed = exchange(bridge.port, post("Expect: 100-continue\r\nContent-Length: 2\r\nContent-Length: 3\r\n", b""))
    assert (status, body["error"], closed) == (400, "malformed_request", True)  # exchange() would see the 100 first
    get = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, body, closed = exchange(bridge.port, get)
    assert (status, body["error"], closed) == (400, "malformed_request", True)
    assert bridge.producer.sent == []


def test_100_continue_is_sent_only_to_a_request_that_may_send_its_body(bridge):
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as sock:
        sock.sendall(post("Expect: 100-continue\r\nContent-Length: 2\r\n", b""))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 202")
    big = bridge.options.max_body_bytes + 1
    status, _, body, _ = exchange(bridge.port, post(f"Expect: 100-continue\r\nContent-Length: {big}\r\n", b""))
    assert (status, body["error"]) == (413, "payload_too_large")  # no 100 first: exchange() would have seen it


def test_well_framed_requests_are_still_accepted(bridge):
    status, _, body, closed = exchange(bridge.port, post("Content-Length:  2 \r\n", b"{}"), close_wait_s=0.3)
    assert (status, body["accepted"], closed) == (202, 1, False)  # optional whitespace around the value is fine
    status, _, _, closed = exchange(bridge.port, post("Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"))
    assert (status, closed) == (400, True)  # a repeated length, even an equal one, is refused (RFC 9112 §6.3 allows either)
    assert [e.device_id for e in bridge.producer.sent] == ["dev-1"]


def test_an_unread_get_body_closes_the_connection(bridge):
    # The body of a GET is not read: keeping the connection would parse it as the next request.
    get = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /"
    status, _, _, closed = exchange(bridge.port, get)
    assert (status, closed) == (200, True)


def test_the_listen_backlog_is_the_hosts(bridge):
    # asyncio's default backlog is 100, http.server's 5: a burst of clients beyond it gets resets.
    with open("/proc/net/tcp") as table:
        port_hex = f":{bridge.port:04X} "
        assert any(port_hex in line and " 0A " in line for line in table)  # listening
    assert socket.SOMAXCONN >= 128


def test_200_concurrent_connections_each_get_an_answer(bridge):
    """200 clients connect and send at once; each gets its 202 (a backlog of 5 dropped or reset most)."""
    socks = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", bridge.port), timeout=10)
            sock.sendall(post("Content-Length: 2\r\nConnection: close\r\n", b"{}", path=f"/v1/telemetry/dev-{i}"))
            socks.append(sock)
        statuses = []
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            statuses.append(data[:12])
        assert statuses == [b"HTTP/1.1 202"] * 200
        assert sorted(e.device_id for e in bridge.producer.sent) == sorted(f"dev-{i}" for i in range(200))
    finally:
        for sock in socks:
            sock.close()


def test_a_token_file_binds_tokens_to_tenants(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{token_digest('acme-token')} tenant=acme\n{token_digest('ops-token')}\n")
    digests = load_token_file(token_file)
    assert set(digests.values()) == {"acme", None}
    auth = TokenCheck(frozenset(), digests)
    assert auth.check("Bearer acme-token") == "acme" and auth.check("Bearer ops-token") is None
    for bad in ("tenant=Acme!", "owner=acme"):
        token_file.write_text(f"{token_digest('x')} {bad}\n")
        with pytest.raises(ValueError, match="line 1: (tenant id|write tenant=<id>)"):
            load_token_file(token_file)


def test_a_tenant_token_publishes_for_its_own_devices_and_dead_letters_the_others(fake_producer):
    options = HttpOptions("127.0.0.1:1", "raw", port=0, drain_timeout_s=5, token_digests={hashlib.sha256(b"acme-token").digest(): "acme"},
                          device_tenants={"dev-a": "acme", "dev-g": "globex"}, dlq_topic="dlq")
    ingest = HttpIngest(options)
    ingest.start()
    try:
        deadline = time.monotonic() + 5
        while ingest.producer is None and time.monotonic() < deadline:
            time.sleep(0.01)
        def send(body: bytes, path: str):
            return exchange(ingest.port, post(f"Authorization: Bearer acme-token\r\nContent-Length: {len(body)}\r\n", body, path=path))

        status, _, body, _ = send(b'{"t": 1}', "/v1/telemetry/dev-a")
        assert status == 202 and body["accepted"] == 1
        status, _, body, _ = send(b'{"t": 2}', "/v1/telemetry/dev-g")
        assert status == 403 and body["error"] == "tenant_mismatch"
        assert body["message"] == "a credential of tenant acme may not publish for device dev-g of tenant globex"
        status, _, body, _ = send(b'{"t": 3}', "/v1/telemetry/dev-new")
        assert status == 403 and "dev-new: not in the device registry" in body["message"]
        batch = orjson.dumps([{"device_id": "dev-a", "format": "json", "payload": "{}"}, {"device_id": "dev-g", "format": "json", "payload": "{}"}])
        status, _, body, _ = send(batch, "/v1/telemetry:batch")
        assert status == 403 and [r["status"] for r in body["results"]] == ["not stored", "refused"]
        sent = ingest.producer.sent
        envelopes = [s for s in sent if not isinstance(s, tuple)]
        letters = [orjson.loads(value) for topic, _key, value in (s for s in sent if isinstance(s, tuple)) if topic == "dlq"]
        assert [e.device_id for e in envelopes] == ["dev-a"]  # nothing of a refused request is stored
        assert [(d["device_id"], d["stage"], d["reason_code"]) for d in letters] == [
            ("dev-g", "ingest", "tenant_mismatch"), ("dev-new", "ingest", "tenant_mismatch"), ("dev-g", "ingest", "tenant_mismatch"),
        ]
        assert letters[0]["payload"] == '{"t": 2}' and letters[0]["source"] == "http"
    finally:
        ingest.stop()


def test_tenant_bound_tokens_need_the_device_registry(tmp_path):
    from jobs.config import Settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{token_digest('acme-token')} tenant=acme\n")
    args = parser.parse_args(["--token-file", str(token_file)])
    with pytest.raises(ValueError, match="binds tokens to tenants: give --device-registry"):
        options_from_args(args, Settings())
    registry = tmp_path / "devices.yaml"
    registry.write_text("devices:\n  dev-a: {product: prod-a, tenant: acme}\n  dev-b: {product: prod-a}\n")
    options = options_from_args(args, Settings(device_registry=str(registry)))
    assert options.device_tenants == {"dev-a": "acme", "dev-b": None} and options.dlq_topic == "iotlink.dlq"


def test_max_in_flight_is_an_option():
    from jobs.config import Settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args(["--no-auth", "--max-in-flight", "500"]), Settings()).max_in_flight == 500
    assert options_from_args(parser.parse_args(["--no-auth"]), Settings()).max_in_flight == 10_000
    with pytest.raises(ValueError, match="--max-in-flight must be 1 or more"):
        options_from_args(parser.parse_args(["--no-auth", "--max-in-flight", "0"]), Settings())


def test_workers_share_a_fixed_port():
    from jobs.config import Settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args(["--no-auth"]), Settings()).workers == 1
    assert options_from_args(parser.parse_args(["--no-auth", "--workers", "2", "--port", "8081"]), Settings()).workers == 2
    with pytest.raises(ValueError, match="needs a fixed --port"):
        options_from_args(parser.parse_args(["--no-auth", "--workers", "2", "--port", "0"]), Settings())
    with pytest.raises(ValueError, match="--workers must be between 1 and 64"):
        options_from_args(parser.parse_args(["--no-auth", "--workers", "0"]), Settings())
