"""PostgreSQL migrations and the batch-upsert alarm sink on the embedded server: replays change
nothing, tickets follow the alarm lifecycle, and a lost connection is retried until it returns."""

import contextlib
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from postgres_schemas import schema_with

from connectors.alarm_store import alarm_statements
from connectors.postgres import MIGRATIONS_DIR, MigrationError, PostgresBatchWriter, apply_migrations, read_migrations

pytestmark = pytest.mark.integration

TS = 1_772_359_200_000


@pytest.fixture
def schema_url(settings, request):
    """A URL on a schema of this test's own, dropped afterwards."""
    schema = "sink_" + request.node.name.removeprefix("test_")[:40].lower()
    url = schema_with(settings, schema)
    yield schema, url
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def migrated(schema_url):
    schema, url = schema_url
    apply_migrations(url)
    return schema, url


def rows(url, sql, params=()):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def alarm_event(kind, alarm_id, ts, severity="medium", values=None, **extra):
    device_id = alarm_id.split(":")[0]
    routes = {"critical": "auto_action", "high": "notify", "medium": "queue", "low": "log"}
    event = {
        "event": kind,
        "alarm_id": alarm_id,
        "device_id": device_id,
        "product_id": "fire_sensor",
        "rule_id": "smoke_high",
        "rule_version": "v1",
        "severity": severity,
        "route": routes[severity],
        "device_ts": ts,
        "started_ts": int(alarm_id.rsplit(":", 1)[1]),
        "values": {"smoke": 0.4} if values is None else values,
    }
    event.update(extra)
    return event


# --- migrations -------------------------------------------------------------------------------


def test_apply_migrations_is_idempotent_and_refuses_an_edited_applied_file(schema_url, tmp_path):
    schema, url = schema_url
    shipped = [m.name for m in read_migrations()]
    assert shipped[0] == "001_alarms_control.sql"

    assert apply_migrations(url) == shipped
    assert apply_migrations(url) == []

    tables = {r[0] for r in rows(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
    assert {"schema_migrations", "rule_sets", "alarm_events", "alarm_tickets", "control_cmd"} <= tables
    recorded = rows(url, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded == [(m.version, m.name) for m in read_migrations()]

    # A new file is applied alone; the recorded ones are skipped.
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    (copy / "999_extra_table.sql").write_text("CREATE TABLE extra_table (id int PRIMARY KEY);")
    assert apply_migrations(url, copy) == ["999_extra_table.sql"]
    assert apply_migrations(url, copy) == []
    assert rows(url, "SELECT count(*) FROM extra_table") == [(0,)]

    # Editing an applied migration is refused, and nothing else is applied.
    first = copy / "001_alarms_control.sql"
    first.write_text(first.read_text() + "\n-- edited afterwards\n")
    (copy / "998_never.sql").write_text("CREATE TABLE never_table (id int);")
    with pytest.raises(MigrationError, match="already applied") as info:
        apply_migrations(url, copy)
    assert str(first) in str(info.value)
    assert rows(url, "SELECT to_regclass('never_table') IS NULL") == [(True,)]

    # The advisory lock was released: another run can take it at once.
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (0x10711C,)).fetchone() == (True,)
        conn.execute("SELECT pg_advisory_unlock(%s)", (0x10711C,))


# --- alarm lifecycle replay ------------------------------------------------------------------

MEDIUM = f"fire-0001:smoke_high:{TS}"
CRITICAL = f"fire-0002:smoke_high:{TS + 100}"
STILL_OPEN = f"fire-0003:smoke_high:{TS + 200}"


def lifecycle():
    return [
        alarm_event("RAISED", MEDIUM, TS),
        alarm_event("RAISED", CRITICAL, TS + 100, severity="critical"),
        alarm_event("ACKNOWLEDGED", MEDIUM, TS + 1_000, values={"by": "alice"}),
        alarm_event("RAISED", STILL_OPEN, TS + 200, severity="high"),
        alarm_event("SEVERITY_CHANGED", STILL_OPEN, TS + 2_000, values={"smoke": 0.2}, previous_severity="high"),
        alarm_event("ESCALATED", CRITICAL, TS + 60_100, severity="critical"),
        alarm_event("CLEARED", MEDIUM, TS + 5_000, values={"smoke": 0.01}),
        alarm_event("AUTO_RESOLVED", CRITICAL, TS + 70_000, severity="critical", values={"smoke": 0.0}),
    ]


def tickets(url):
    return rows(
        url,
        'SELECT ticket_id, kind, alarm_id, severity, status, opened_ts, acknowledged_by, closed_ts, closed_by, "values" '
        "FROM alarm_tickets ORDER BY ticket_id",
    )


EXPECTED_TICKETS = [
    (f"{MEDIUM}:queue", "queue", MEDIUM, "medium", "closed", TS, "alice", TS + 5_000, "cleared", {"smoke": 0.4}),
    (f"{CRITICAL}:field_service", "field_service", CRITICAL, "critical", "closed", TS + 60_100, None, TS + 70_000,
     "auto_resolved", {"smoke": 0.4}),
    (f"{STILL_OPEN}:queue", "queue", STILL_OPEN, "medium", "open", TS + 2_000, None, None, None, {"smoke": 0.2}),
]


def test_replayed_alarm_lifecycle_leaves_one_row_per_event_and_the_right_tickets(migrated):
    _, url = migrated
    events = lifecycle()
    writer = PostgresBatchWriter(url)
    try:
        writer.write_batch(alarm_statements(events))
        writer.write_batch(alarm_statements(events))
        for start, stop in ((0, 3), (3, 4), (4, 8), (1, 7), (6, 8)):
            writer.write_batch(alarm_statements(events[start:stop]))
        # A RAISED replayed after the alarm's end must not reopen its ticket (nor the ack).
        writer.write_batch(alarm_statements([events[0], events[2], events[1], events[5]]))
        writer.write_batch(alarm_statements([]))
    finally:
        writer.close()
    assert writer.stats.batches == 8 and writer.stats.retries == 0

    keys = rows(url, "SELECT alarm_id, event, device_ts, count(*) FROM alarm_events GROUP BY 1, 2, 3 ORDER BY 1, 3")
    assert sorted(keys) == sorted((e["alarm_id"], e["event"], e["device_ts"], 1) for e in events)
    assert rows(url, "SELECT count(*) FROM alarm_events") == [(len(events),)]

    changed = rows(
        url,
        'SELECT device_id, product_id, rule_version, severity, route, started_ts, "values", detail, device_time = to_timestamp(%s) '
        "FROM alarm_events WHERE event = 'SEVERITY_CHANGED'",
        ((TS + 2_000) / 1000,),
    )
    assert changed == [("fire-0003", "fire_sensor", "v1", "medium", "queue", TS + 200, {"smoke": 0.2}, {"previous_severity": "high"}, True)]
    ack = rows(url, "SELECT \"values\", detail FROM alarm_events WHERE event = 'ACKNOWLEDGED'")
    assert ack == [({"by": "alice"}, None)]

    assert tickets(url) == EXPECTED_TICKETS


def test_one_batch_opens_acknowledges_and_closes_in_order(migrated):
    _, url = migrated
    events = [e for e in lifecycle() if e["alarm_id"] == MEDIUM]
    writer = PostgresBatchWriter(url)
    try:
        writer.write_batch(alarm_statements(events))
        writer.write_batch(alarm_statements(events[:1]))
    finally:
        writer.close()
    assert tickets(url) == EXPECTED_TICKETS[:1]


# --- reconnect -------------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port; ``cut`` drops every connection and refuses
    new ones until ``restore``."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.refused = 0
        self._down = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, name="pg-proxy-accept", daemon=True)
        self._accept_thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._down.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, sock):
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self):
        self._down.set()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._close(sock)

    def restore(self):
        self._down.clear()

    def close(self):
        self._stop.set()
        self.cut()
        self._accept_thread.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_writer_reconnects_after_the_connection_is_lost(migrated, settings):
    _, url = migrated
    proxy = TcpProxy(urlsplit(settings.postgres_url).port)
    writer = PostgresBatchWriter(through(url, proxy.port), max_backoff_s=1.0, give_up_after_s=10)
    first = [alarm_event("RAISED", MEDIUM, TS), alarm_event("ACKNOWLEDGED", MEDIUM, TS + 1_000, values={"by": "alice"})]
    second = [alarm_event("RAISED", STILL_OPEN, TS + 200), alarm_event("CLEARED", MEDIUM, TS + 5_000, values={"smoke": 0.01})]
    try:
        started = time.monotonic()
        writer.write_batch(alarm_statements(first))
        assert writer.stats.batches == 1 and writer.stats.retries == 0 and proxy.accepted == 1

        proxy.cut()
        cut_at = time.monotonic()

        def write_second() -> float:
            writer.write_batch(alarm_statements(second))
            return time.monotonic()

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(write_second)
            time.sleep(2.0)
            assert not pending.done(), "the write must block while the database is unreachable"
            assert writer.stats.retries >= 1 and proxy.refused >= 1
            proxy.restore()
            restored_at = time.monotonic()
            done_at = pending.result(timeout=10)
        assert restored_at <= done_at < cut_at + 6.0
        assert writer.stats.batches == 2
        assert writer.stats.statements == len(alarm_statements(first)) + len(alarm_statements(second))
        assert proxy.accepted == 2
    finally:
        writer.close()
        proxy.close()
    assert time.monotonic() - started < 15

    keys = rows(url, "SELECT alarm_id, event, device_ts, count(*) FROM alarm_events GROUP BY 1, 2, 3")
    assert sorted(keys) == sorted((e["alarm_id"], e["event"], e["device_ts"], 1) for e in first + second)
    assert rows(url, "SELECT ticket_id, status, acknowledged_by, closed_by FROM alarm_tickets ORDER BY ticket_id") == [
        (f"{MEDIUM}:queue", "closed", "alice", "cleared"),
        (f"{STILL_OPEN}:queue", "open", None, None),
    ]
