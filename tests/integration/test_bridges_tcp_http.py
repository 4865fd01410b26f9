"""``iotlink bridge tcp`` and ``iotlink bridge http`` against a Kafka-protocol broker of the embedded stack.

The broker is this module's own (it is stalled with SIGSTOP in the slow-Kafka test). Devices are
raw sockets, ``curl`` and ``urllib``; every test reads back what landed on its topics and
compares it byte for byte, with the record keys, against what was sent.
"""

import base64
import collections
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from connectors.bridge_http import HttpIngest, HttpOptions
from connectors.bridge_tcp import ACK_BYTE, TcpGateway, TcpOptions
from connectors.kafka import ensure_topics
from connectors.tcp_framing import DeviceIdRule, Framing
from iotlink.stack import free_port, wait_for_port
from operators.envelope import parse_envelope

CURL = shutil.which("curl")
IOTLINK = str(Path(sys.executable).parent / "iotlink")
TOKEN = "t0ken-fleet-a"

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka, request):
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    raw, dlq = f"it-tcphttp.{name}.raw", f"it-tcphttp.{name}.dlq"
    ensure_topics(kafka.endpoints["kafka"], [raw, dlq], partitions={raw: 4}, large=(raw, dlq))
    return kafka.endpoints["kafka"], raw, dlq


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, quiet_s: float = 1.5) -> list:
    """Every record of a topic: waits until ``expected`` arrived, then for ``quiet_s`` more (to catch extras)."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None, consumer_timeout_ms=500
    )
    records = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            before = len(records)
            records.extend(consumer)
            if len(records) >= expected:
                if len(records) != before or quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= quiet_s:
                    break
    finally:
        consumer.close()
    return records


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True when the peer closes the connection within ``timeout_s`` (EOF or reset)."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- TCP -----------------------------------------------------------------------------------------

# (framing, device id rule, ack mode, format)
TCP_CASES = {
    "line-hello": (Framing("line", max_frame_bytes=4096), "hello", "line", "bin"),
    "len1-big-prefix": (Framing("length", prefix_bytes=1, byte_order="big"), "prefix:8", "byte", "bin"),
    "len2-little-hello": (Framing("length", prefix_bytes=2, byte_order="little"), "hello", "byte", "bin"),
    "len4-big-header": (Framing("length", prefix_bytes=4, byte_order="big"), "header:0:4", "line", "bin"),
    "len4-little-json": (Framing("length", prefix_bytes=4, byte_order="little"), "json:device_id", "none", "json"),
    "fixed-prefix": (Framing("fixed", frame_bytes=24), "prefix:8", "byte", "bin"),
}
DEVICES = ["dev-a", "dev-b", "dev-c"]
HEADER_IDS = {"dev-a": b"\xa0\x00\n\x01", "dev-b": b"\xb0\x00\n\x02", "dev-c": b"\xc0\x00\n\x03"}


def device_payloads(case: str, device: str, n: int) -> list[tuple[bytes, bytes]]:
    """(frame content as written, payload expected on Kafka) for one device; binary with newlines and zero bytes."""
    framing, rule, _, _ = TCP_CASES[case]
    out = []
    for seq in range(n):
        body = b"\x00" + f"{device}#{seq}".encode() + b"\r\xff\x00"
        if framing.kind != "line":
            body += b"\n\n\x00"
        if rule.startswith("prefix"):
            padded = device.encode().ljust(8, b"\x00")
            if framing.kind == "fixed":
                body = body[: framing.frame_bytes - 8].ljust(framing.frame_bytes - 8, b"\x00")
            out.append((padded + body, body))
        elif rule.startswith("header"):
            frame = HEADER_IDS[device] + body
            out.append((frame, frame))
        elif rule.startswith("json"):
            frame = orjson.dumps({"device_id": device, "seq": seq, "text": "line1\nline2"})
            out.append((frame, frame))
        else:
            out.append((body, body))
    return out


def expected_id(case: str, device: str) -> str:
    return HEADER_IDS[device].hex() if TCP_CASES[case][1].startswith("header") else device


def start_gateway(bootstrap: str, raw: str, dlq: str, **overrides) -> TcpGateway:
    options = TcpOptions(bootstrap_servers=bootstrap, raw_topic=raw, dlq_topic=dlq, host="127.0.0.1", port=0, **overrides)
    gateway = TcpGateway(options)
    gateway.start()
    return gateway


@pytest.mark.parametrize("case", list(TCP_CASES))
def test_tcp_framings_land_byte_exact_keyed_by_device(topics, case):
    bootstrap, raw, dlq = topics
    framing, rule, ack, fmt = TCP_CASES[case]
    per_device = 40
    gateway = start_gateway(bootstrap, raw, dlq, framing=framing, device_id=DeviceIdRule.parse(rule), ack=ack, format=fmt)
    acks: dict[str, bytes] = {}

    def device(name: str) -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            frames = [framing.encode(frame) for frame, _ in device_payloads(case, name, per_device)]
            if rule == "hello":
                frames.insert(0, framing.encode(name.encode()))
            # Written in odd-sized pieces so frames straddle TCP segments.
            stream = b"".join(frames)
            for pos in range(0, len(stream), 37):
                sock.sendall(stream[pos : pos + 37])
            if ack == "byte":
                acks[name] = recv_exact(sock, len(frames))
            elif ack == "line":
                acks[name] = b"".join(recv_exact(sock, len(f"ACK {i}\n")) for i in range(1, len(frames) + 1))

    try:
        threads = [threading.Thread(target=device, args=(name,)) for name in DEVICES]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wait_for(lambda: gateway.counters.snapshot()["produced"] == per_device * len(DEVICES), 30, "every frame to be confirmed")
    finally:
        assert gateway.stop()
    hello = 1 if rule == "hello" else 0
    if ack == "byte":
        assert all(acks[name] == ACK_BYTE * (per_device + hello) for name in DEVICES)
    elif ack == "line":
        assert all(acks[name] == b"".join(f"ACK {i}\n".encode() for i in range(1, per_device + hello + 1)) for name in DEVICES)
    records = consume(bootstrap, raw, per_device * len(DEVICES))
    assert len(records) == per_device * len(DEVICES)  # nothing lost, nothing twice
    by_device = collections.defaultdict(list)
    for record in records:
        envelope = parse_envelope(record.value)
        assert record.key.decode() == envelope.device_id
        assert (envelope.source, envelope.format) == ("tcp", fmt)
        by_device[envelope.device_id].append(envelope.payload)
    for name in DEVICES:
        # one key -> one partition: a device's frames stay in order
        assert by_device[expected_id(case, name)] == [payload for _, payload in device_payloads(case, name, per_device)]
    counters = gateway.counters.snapshot()
    assert counters["received"] == (per_device + hello) * len(DEVICES)
    assert (counters["rejected"], counters["failed"], counters["connections"]) == (0, 0, 0)
    assert counters["accepted"] == len(DEVICES)


def test_tcp_limits_idle_timeout_oversized_and_bad_frames(topics):
    bootstrap, raw, dlq = topics
    framing = Framing("length", prefix_bytes=2, byte_order="big", max_frame_bytes=100)
    gateway = start_gateway(bootstrap, raw, dlq, framing=framing, ack="byte", max_connections=2, idle_timeout_s=1.5)
    try:
        first = socket.create_connection(("127.0.0.1", gateway.port))
        second = socket.create_connection(("127.0.0.1", gateway.port))
        for sock, name in ((first, b"idle-1"), (second, b"idle-2")):
            sock.sendall(framing.encode(name))
            assert recv_exact(sock, 1) == ACK_BYTE  # the hello is answered: the connection is established
        third = socket.create_connection(("127.0.0.1", gateway.port))
        assert closed_by_peer(third, 5)  # beyond the connection limit
        third.close()
        assert gateway.counters.snapshot()["refused"] == 1
        # Both stay silent: the idle timeout closes them (not before it).
        started = time.monotonic()
        assert closed_by_peer(first, 10) and closed_by_peer(second, 10)
        assert time.monotonic() - started >= 1.0
        first.close()
        second.close()
        wait_for(lambda: gateway.counters.snapshot()["connections"] == 0, 5, "the idle connections to be counted closed")
        assert gateway.counters.snapshot()["idle_closed"] == 2

        # Oversized: the good frame before it is stored and acknowledged, the connection is closed.
        with socket.create_connection(("127.0.0.1", gateway.port)) as big:
            big.sendall(framing.encode(b"big-1") + framing.encode(b"\x00ok\n") + (101).to_bytes(2, "big") + b"\x00\n" * 10)
            assert recv_exact(big, 2) == ACK_BYTE * 2
            assert closed_by_peer(big, 5)
        # A bad hello: dead letter, closed.
        with socket.create_connection(("127.0.0.1", gateway.port)) as bad:
            bad.sendall(framing.encode(b"not an id"))
            assert closed_by_peer(bad, 5)
        # A connection ending inside a frame: the partial frame is a dead letter.
        with socket.create_connection(("127.0.0.1", gateway.port)) as partial:
            partial.sendall(framing.encode(b"cut-1") + (10).to_bytes(2, "big") + b"\x00\x01\x02")
            assert recv_exact(partial, 1) == ACK_BYTE
        wait_for(lambda: gateway.counters.snapshot()["rejected"] == 3 and gateway.in_flight == 0, 10, "three dead letters")
    finally:
        assert gateway.stop()
    counters = gateway.counters.snapshot()
    assert (counters["oversized"], counters["refused"], counters["idle_closed"], counters["produced"]) == (1, 1, 2, 1)
    raw_records = consume(bootstrap, raw, 1)
    assert [(r.key, parse_envelope(r.value).payload) for r in raw_records] == [(b"big-1", b"\x00ok\n")]
    letters = sorted((orjson.loads(r.value) for r in consume(bootstrap, dlq, 3)), key=lambda letter: letter["reason_code"])
    assert [(letter["reason_code"], letter["device_id"], letter["source"]) for letter in letters] == [
        ("frame_too_large", "big-1", "tcp"), ("invalid_device_id", None, "tcp"), ("truncated_frame", "cut-1", "tcp"),
    ]
    assert "announces 101 bytes, more than the limit of 100" in letters[0]["reason"]
    assert letter_payload(letters[0]).startswith(b"\x00\x65\x00\n")
    assert letter_payload(letters[1]) == b"not an id"
    assert letter_payload(letters[2]) == b"\x00\x0a\x00\x01\x02"


def letter_payload(letter: dict) -> bytes:
    """The original bytes of a dead letter."""
    text = letter["payload"]
    return base64.b64decode(text) if letter["payload_encoding"] == "base64" else text.encode()


def test_tcp_shutdown_drains_what_was_read(topics):
    """Stopping mid-stream: every frame the gateway read is confirmed and acknowledged before it closes; the rest is not acknowledged."""
    bootstrap, raw, dlq = topics
    framing = Framing("length", prefix_bytes=2)
    gateway = start_gateway(bootstrap, raw, dlq, framing=framing, ack="line", device_id=DeviceIdRule.parse("prefix:6"))
    frames = [b"dev-s1" + b"\x00\n" + str(i).encode() for i in range(5000)]
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    writer = threading.Thread(target=lambda: _send_quietly(sock, b"".join(framing.encode(f) for f in frames)))
    writer.start()
    wait_for(lambda: gateway.counters.snapshot()["received"] >= 500, 30, "the first frames")
    assert gateway.stop()
    answers = b""
    sock.settimeout(10)
    while chunk := _recv_quietly(sock):
        answers += chunk
    sock.close()
    writer.join(10)
    acked = answers.decode().splitlines()
    assert acked == [f"ACK {i}" for i in range(1, len(acked) + 1)]
    assert 500 <= len(acked) == gateway.counters.snapshot()["produced"]
    records = consume(bootstrap, raw, len(acked))
    assert [parse_envelope(r.value).payload for r in records] == [f[6:] for f in frames[: len(acked)]]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the gateway stopped reading and closed: expected
        sock.sendall(data)


def _recv_quietly(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


# --- HTTP ----------------------------------------------------------------------------------------


def start_ingest(bootstrap: str, raw: str, **overrides) -> HttpIngest:
    options = HttpOptions(bootstrap_servers=bootstrap, raw_topic=raw, host="127.0.0.1", port=0, tokens=frozenset({TOKEN}), **overrides)
    ingest = HttpIngest(options)
    ingest.start()
    wait_for(lambda: ingest.producer is not None, 60, "the ingest's Kafka producer")
    return ingest


def curl(url: str, *args: str) -> tuple[int, dict]:
    """Runs curl; returns (status, JSON body)."""
    out = subprocess.run([CURL, "-sS", "-o", "-", "-w", "\n%{http_code}", *args, url], capture_output=True, timeout=60, check=True)
    body, _, status = out.stdout.rpartition(b"\n")
    return int(status), (orjson.loads(body) if body else {})


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """urllib request; returns (status, headers, JSON body) for any status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read())


AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUTH_JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_http_ingest_formats_batch_auth_limits_health_openapi(topics, tmp_path):
    bootstrap, raw, _ = topics
    ingest = start_ingest(bootstrap, raw)
    base = f"http://127.0.0.1:{ingest.port}"
    binary = b"\x00\x01\n\xff\x00\r\n" * 20
    (tmp_path / "frame.bin").write_bytes(binary)
    csv = b"ts,tempC\n1756653767451,21.5\n1756653768451,21.7\n"
    (tmp_path / "rows.csv").write_bytes(csv)
    bearer = ["-H", f"Authorization: Bearer {TOKEN}"]
    expected = []  # (device id, format, payload, product id)
    try:
        status, body = curl(f"{base}/v1/telemetry/dev-j?product_id=prod-a", *bearer, "-H", "Content-Type: application/json",
                            "--data-binary", '{"device_timestamp": 1, "data": {"metrics": {"t": 1}}}')
        assert (status, body["accepted"], body["device_id"]) == (202, 1, "dev-j")
        expected.append(("dev-j", "json", b'{"device_timestamp": 1, "data": {"metrics": {"t": 1}}}', "prod-a"))
        status, _ = curl(f"{base}/v1/telemetry/dev-c", *bearer, "-H", "Content-Type: text/csv", "--data-binary", f"@{tmp_path / 'rows.csv'}")
        assert status == 202
        expected.append(("dev-c", "csv", csv, None))
        status, _ = curl(f"{base}/v1/telemetry/dev-b", *bearer, "-H", "Content-Type: application/octet-stream",
                         "--data-binary", f"@{tmp_path / 'frame.bin'}")
        assert status == 202
        expected.append(("dev-b", "bin", binary, None))
        status, _, _ = http("POST", f"{base}/v1/telemetry/dev-h", b"0102ff\n", {**AUTH, "Content-Type": "text/plain"})
        assert status == 202
        expected.append(("dev-h", "hex", b"0102ff\n", None))
        batch = [
            {"device_id": "dev-1", "format": "json", "payload": {"data": {"metrics": {"t": 2}}}},
            {"device_id": "dev-2", "format": "bin", "payload": base64.b64encode(b"\x00\n\x00").decode()},
            {"device_id": "dev-3", "format": "hex", "payload": "a1b2", "product_id": "prod-b"},
        ]
        status, _, body = http("POST", f"{base}/v1/telemetry:batch", orjson.dumps(batch), AUTH_JSON)
        assert (status, body["accepted"]) == (202, 3)
        expected += [
            ("dev-1", "json", b'{"data":{"metrics":{"t":2}}}', None), ("dev-2", "bin", b"\x00\n\x00", None), ("dev-3", "hex", b"a1b2", "prod-b"),
        ]

        # refused requests store nothing
        status, body = curl(f"{base}/v1/telemetry/dev-x", "-H", "Content-Type: application/json", "--data-binary", "{}")
        assert (status, body["error"]) == (401, "unauthorized")
        status, headers, _ = http("POST", f"{base}/v1/telemetry/dev-x", b"{}", {"Authorization": "Bearer wrong", "Content-Type": "application/json"})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        (tmp_path / "big.bin").write_bytes(b"\x00" * (1024 * 1024 + 1))
        status, body = curl(f"{base}/v1/telemetry/dev-x", *bearer, "-H", "Content-Type: application/octet-stream",
                            "--data-binary", f"@{tmp_path / 'big.bin'}")
        assert (status, body["error"]) == (413, "payload_too_large")
        status, body = curl(f"{base}/v1/telemetry/dev-x", *bearer, "-H", "Content-Type: application/json", "--data-binary", '{"t": ')
        assert (status, body["error"]) == (400, "invalid_json") and "not valid JSON" in body["message"]
        status, _, body = http("POST", f"{base}/v1/telemetry:batch", orjson.dumps([batch[0], {"device_id": "x y"}]),
                               AUTH_JSON)
        assert (status, body["error"], [d["index"] for d in body["details"]]) == (400, "invalid_batch", [1])
        status, body = curl(f"{base}/v1/telemetry/dev-x", *bearer, "-H", "Content-Type: application/xml", "--data-binary", "<a/>")
        assert status == 415

        status, _, health = http("GET", f"{base}/health")
        assert (status, health["status"], health["kafka"]["reachable"]) == (200, "ok", True)
        assert health["counters"]["accepted"] == 5 and health["counters"]["unauthorized"] == 2

        status, _, doc = http("GET", f"{base}/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
        # every documented route is served (no 404/405)
        for path, item in doc["paths"].items():
            for method in item:
                url = base + path.replace("{device_id}", "dev-probe")
                status, _, _ = http(method.upper(), url, b"" if method == "post" else None, {"Content-Type": "application/json"})
                assert status not in (404, 405), (method, path, status)
        status, _, _ = http("GET", f"{base}/v1/nothing")
        assert status == 404
    finally:
        assert ingest.stop()
    records = consume(bootstrap, raw, len(expected))
    got = sorted(
        (r.key.decode(), e.device_id, e.format, e.payload, e.product_id, e.source)
        for r in records
        for e in [parse_envelope(r.value)]
    )
    assert got == sorted((d, d, f, p, prod, "http") for d, f, p, prod in expected)


def test_http_token_of_a_tenant_publishes_for_its_devices_and_dead_letters_the_others(topics):
    bootstrap, raw, dlq = topics
    ingest = start_ingest(bootstrap, raw, token_digests={hashlib.sha256(b"acme-token").digest(): "acme"},
                          device_tenants={"acme-1": "acme", "globex-1": "globex"}, dlq_topic=dlq)
    try:
        headers = {"Authorization": "Bearer acme-token", "Content-Type": "application/json"}
        base = f"http://127.0.0.1:{ingest.port}/v1/telemetry"
        assert http("POST", f"{base}/acme-1", b'{"t": 1}', headers)[0] == 202
        status, _, body = http("POST", f"{base}/globex-1", b'{"t": 2}', headers)
        assert (status, body["error"]) == (403, "tenant_mismatch")
        assert http("POST", f"{base}/globex-1", b'{"t": 3}', AUTH_JSON)[0] == 202  # a token of no tenant publishes for any device
    finally:
        ingest.stop()
    stored = sorted((r.key, parse_envelope(r.value).payload) for r in consume(bootstrap, raw, 2))
    assert stored == [(b"acme-1", b'{"t": 1}'), (b"globex-1", b'{"t": 3}')]
    letters = [orjson.loads(r.value) for r in consume(bootstrap, dlq, 1)]
    assert [(d["device_id"], d["stage"], d["reason_code"], d["payload"]) for d in letters] == [
        ("globex-1", "ingest", "tenant_mismatch", '{"t": 2}')
    ]
    assert letters[0]["reason"] == "a credential of tenant acme may not publish for device globex-1 of tenant globex"


def test_http_slow_request_does_not_block_others(topics):
    bootstrap, raw, _ = topics
    ingest = start_ingest(bootstrap, raw)
    try:
        slow = socket.create_connection(("127.0.0.1", ingest.port))
        slow.sendall(
            f"POST /v1/telemetry/dev-slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":".encode()
        )
        started = time.monotonic()
        status, _, _ = http("POST", f"http://127.0.0.1:{ingest.port}/v1/telemetry/dev-fast", b'{"b": 1}', AUTH_JSON)
        assert status == 202 and time.monotonic() - started < 10
        slow.close()
    finally:
        ingest.stop()


def test_http_answers_503_while_kafka_is_stalled_and_never_202_what_is_not_stored(topics, kafka):
    bootstrap, raw, _ = topics
    ingest = start_ingest(bootstrap, raw, ack_timeout_s=2.0, retry_after_s=3)
    kafka_pid = kafka._procs["kafka"].pid  # noqa: SLF001 - the test stalls this module's broker
    url = f"http://127.0.0.1:{ingest.port}/v1/telemetry/dev-s"
    outcomes: dict[int, int] = {}

    def post(seq: int) -> None:
        status, headers, body = http("POST", url, orjson.dumps({"seq": seq}), AUTH_JSON)
        outcomes[seq] = status
        if status == 503:
            assert headers["Retry-After"] == "3" and body["error"] == "kafka_unavailable"

    stalled = False
    try:
        for seq in range(10):
            post(seq)
        os.kill(kafka_pid, signal.SIGSTOP)
        stalled = True
        started = time.monotonic()
        threads = [threading.Thread(target=post, args=(seq,)) for seq in range(10, 16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - started < 15  # the requests waited concurrently, each about the ack timeout
        status, _, health = http("GET", f"http://127.0.0.1:{ingest.port}/health")
        assert (status, health["kafka"]["reachable"]) == (503, False)
        os.kill(kafka_pid, signal.SIGCONT)
        stalled = False
        # Clients retry until accepted, as told by the 503.
        for seq in range(16, 26):
            deadline = time.monotonic() + 60
            post(seq)
            while outcomes[seq] != 202:
                assert time.monotonic() < deadline, f"record {seq} never accepted after the broker resumed"
                time.sleep(0.5)
                post(seq)
    finally:
        if stalled:
            os.kill(kafka_pid, signal.SIGCONT)
        ingest.stop()
    assert [outcomes[s] for s in range(10)] == [202] * 10
    assert [outcomes[s] for s in range(10, 16)] == [503] * 6
    assert [outcomes[s] for s in range(16, 26)] == [202] * 10
    records = consume(bootstrap, raw, 20)
    seqs = collections.Counter(orjson.loads(parse_envelope(r.value).payload)["seq"] for r in records)
    accepted = {s for s, status in outcomes.items() if status == 202}
    assert accepted <= set(seqs)  # everything answered 202 is in Kafka
    assert all(n == 1 for n in seqs.values())  # nothing twice
    assert set(seqs) - accepted <= set(range(10, 16))  # extras only among the 503s (handed to the producer, stored later)
    assert all(r.key == b"dev-s" for r in records)


def test_http_kafka_unreachable_from_the_start(topics):
    _, raw, _ = topics
    closed = f"127.0.0.1:{free_port()}"
    options = HttpOptions(bootstrap_servers=closed, raw_topic=raw, host="127.0.0.1", port=0, tokens=frozenset({TOKEN}), ack_timeout_s=1.0)
    ingest = HttpIngest(options)
    ingest.start()
    try:
        started = time.monotonic()
        status, headers, body = http("POST", f"http://127.0.0.1:{ingest.port}/v1/telemetry/dev-u", b"{}", AUTH_JSON)
        assert (status, body["error"], headers["Retry-After"]) == (503, "kafka_unavailable", "5")
        assert time.monotonic() - started < 10
        status, _, health = http("GET", f"http://127.0.0.1:{ingest.port}/health")
        assert (status, health["status"]) == (503, "kafka_unreachable")
        assert health["counters"]["unavailable"] == 1 and health["counters"]["accepted"] == 0
    finally:
        ingest.stop()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("workers", [1, 2])
def test_http_ingest_as_a_subprocess(kafka, tmp_path, workers):
    """``iotlink bridge http`` as devices meet it: its own process (or two worker processes on one
    port), a token file, curl; the counters add the workers up; SIGTERM stops it cleanly."""
    bootstrap = kafka.endpoints["kafka"]
    # The token file keeps the token hashed: the line iotlink bridge http --new-token prints.
    made = subprocess.run([IOTLINK, "bridge", "http", "--new-token"], capture_output=True, text=True, check=True, timeout=60).stdout
    token = made.split("stored nowhere): ", 1)[1].split()[0]
    line = made.split("--token-file): ", 1)[1].split()[0]
    assert token not in line
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"# devices of fleet A\n{line}\n")
    port = free_port()
    log_path = tmp_path / "bridge-http.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [IOTLINK, "bridge", "http", "--bootstrap-servers", bootstrap, "--host", "127.0.0.1", "--port", str(port),
             "--token-file", str(tokens), "--status-interval", "0.5", "--workers", str(workers)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, 60, proc, "bridge http")
            tag = f"sub-{time.time_ns()}"
            deadline = time.monotonic() + 60
            while True:  # 503 until the producer has connected
                status, _ = curl(f"http://127.0.0.1:{port}/v1/telemetry/dev-p", "-H", f"Authorization: Bearer {token}",
                                 "-H", "Content-Type: application/json", "--data-binary", json.dumps({"tag": tag, "seq": 0}))
                if status == 202 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert status == 202
            for seq in range(1, 5):
                status, _ = curl(f"http://127.0.0.1:{port}/v1/telemetry/dev-p", "-H", f"Authorization: Bearer {token}",
                                 "-H", "Content-Type: application/json", "--data-binary", json.dumps({"tag": tag, "seq": seq}))
                assert status == 202
            status, _ = curl(f"http://127.0.0.1:{port}/v1/telemetry/dev-p", "-H", "Content-Type: application/json", "--data-binary", "{}")
            assert status == 401
            # Each curl is a new connection: the kernel spreads them over the workers (two missing one
            # of them in 40 connections: 2 in 2**40).
            answered_by = set()
            for _ in range(40):
                status, health = curl(f"http://127.0.0.1:{port}/health")
                answered_by.add(health["worker"])
                if len(answered_by) == workers:
                    break
            assert answered_by == set(range(workers))
            time.sleep(1.2)  # at least one status line, with every worker's last report in it
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    output = log_path.read_text()
    assert "http ingest: listening on http://127.0.0.1:" in output and "1 bearer token(s)" in output
    assert "http ingest: requests" in output  # the status line
    assert "http ingest: stopped:" in output and ", 202 5," in output  # whichever worker took them
    assert (f"{workers} worker processes" in output) == (workers > 1)
    records = [r for r in consume(bootstrap, "iotlink.raw", 5, quiet_s=1.0) if tag.encode() in r.value]
    assert sorted(orjson.loads(parse_envelope(r.value).payload)["seq"] for r in records) == [0, 1, 2, 3, 4]
