"""A local standalone Flink cluster from the PyFlink distribution: one JobManager and N
TaskManagers as separate processes on 127.0.0.1, so jobs go through the same path as on a real
cluster (``flink run -py``, REST submission, job jars uploaded to the BlobServer, savepoints).

The processes are the distribution's own console scripts (``bin/jobmanager.sh
start-foreground``, ``bin/taskmanager.sh start-foreground``, which ``exec`` the JVM, so each
child is the JVM itself and this process can wait on it and stop it). Everything the cluster
writes lives under ``<data_dir>/cluster``: the generated configuration (``conf/config.yaml`` plus
the distribution's log4j files), the logs, the pid files of the scripts and the state file that
``iotlink cluster down`` reads. Checkpoints and savepoints go to ``<data_dir>/checkpoints`` and
``<data_dir>/savepoints``, where ``iotlink run`` puts them too.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import yaml

from connectors.jars import jvm_classpath_jars
from iotlink.live import FlinkRest
from iotlink.stack import free_port, pid_alive, port_is_free
from jobs.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TELEMETRY_SCRIPT = "jobs/telemetry_job.py"  # relative to PROJECT_ROOT, as the README shows it
STATE_FILE = "cluster.json"  # in <data_dir>/cluster while a cluster runs: owner pid, process pids, REST URL

# Two TaskManagers with two slots each. The telemetry job runs one source subtask per raw
# partition (4 by default) and every operator shares those slots, so it needs 4 slots. Two
# processes rather than one: keyed exchanges then really cross process boundaries as on a
# cluster, and in thread mode each TaskManager embeds one CPython (one GIL), so two of them can
# use both cores of a 2-core machine; more processes would only contend for the same cores.
DEFAULT_TASKMANAGERS = 2
DEFAULT_SLOTS = 2
# 1 GiB for the JobManager (no user code runs there) and 2 GiB per TaskManager (RocksDB state in
# managed memory, the embedded Python interpreters in native memory): 5 GiB in all.
DEFAULT_JOBMANAGER_MEMORY = "1024m"
DEFAULT_TASKMANAGER_MEMORY = "2048m"


class ClusterError(RuntimeError):
    """The cluster could not start, or a cluster already runs on the data directory."""


def pyflink_home() -> Path:
    """The PyFlink distribution (``bin/``, ``lib/``, ``opt/``, ``plugins/``, ``conf/``) of this interpreter.

    Found without importing pyflink, so no JVM is started by looking.

    Raises:
        ClusterError: apache-flink is not installed.
    """
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("apache-flink is not installed in this Python environment")
    return Path(next(iter(spec.submodule_search_locations)))


def java_home() -> Path:
    """The Java installation the cluster runs on: ``$JAVA_HOME``, else the one of ``java`` on PATH.

    Raises:
        ClusterError: no Java found.
    """
    if os.environ.get("JAVA_HOME") and (Path(os.environ["JAVA_HOME"]) / "bin" / "java").exists():
        return Path(os.environ["JAVA_HOME"])
    java = shutil.which("java")
    if java is None:
        raise ClusterError("java is not on PATH: install Java 17 ('apt-get install openjdk-17-jre-headless') or set JAVA_HOME")
    return Path(java).resolve().parent.parent


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell it from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _runs_with(pid: int, conf_dir: Path) -> bool:
    """Whether ``pid`` is still a process of the cluster configured in ``conf_dir`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return str(conf_dir).encode() in cmdline.read()
    except OSError:
        return False


def _terminate(pids: list[int], timeout_s: float) -> None:
    """SIGTERM each process group, wait until all are gone, SIGKILL what is left after ``timeout_s``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class FlinkCluster:
    """A standalone session cluster (1 JobManager, N TaskManagers) on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Jobs are submitted with
    :meth:`flink_command` (``bin/flink`` reading this cluster's configuration) or through
    :attr:`rest_url`.

    Args:
        data_dir: The platform's data directory; the cluster lives in ``<data_dir>/cluster``.
        rest_port: Port of the REST API and web UI.
        taskmanagers: Number of TaskManager processes.
        slots: Task slots per TaskManager.
        jobmanager_memory: ``jobmanager.memory.process.size``.
        taskmanager_memory: ``taskmanager.memory.process.size``.
        python: The interpreter of the job client and of the Python workers (default: this one).
        startup_timeout_s: Longest wait for the REST API and the TaskManagers' registration.
    """

    def __init__(
        self,
        data_dir: Path,
        rest_port: int = 18081,
        taskmanagers: int = DEFAULT_TASKMANAGERS,
        slots: int = DEFAULT_SLOTS,
        jobmanager_memory: str = DEFAULT_JOBMANAGER_MEMORY,
        taskmanager_memory: str = DEFAULT_TASKMANAGER_MEMORY,
        python: str | None = None,
        startup_timeout_s: float = 120.0,
    ):
        if taskmanagers < 1 or slots < 1:
            raise ValueError("a cluster needs at least one TaskManager with at least one slot")
        self.data_dir = Path(data_dir).resolve()
        self.rest_port = rest_port
        self.taskmanagers = taskmanagers
        self.slots = slots
        self.jobmanager_memory = jobmanager_memory
        self.taskmanager_memory = taskmanager_memory
        self.python = python or sys.executable
        self.startup_timeout_s = startup_timeout_s
        self.home = pyflink_home()
        self._procs: dict[str, subprocess.Popen] = {}
        self._owns_state_file = False

    @property
    def base_dir(self) -> Path:
        """``<data_dir>/cluster``: configuration, logs, pid files and the state file."""
        return self.data_dir / "cluster"

    @property
    def conf_dir(self) -> Path:
        """The generated configuration directory (``FLINK_CONF_DIR``)."""
        return self.base_dir / "conf"

    @property
    def log_dir(self) -> Path:
        """The JobManager's and TaskManagers' logs (``*.log``, stdout in ``*.out``, stderr in ``*.err``)."""
        return self.base_dir / "log"

    @property
    def checkpoint_dir(self) -> Path:
        """Default checkpoint directory of jobs on this cluster (the job's ``--data-dir`` choice wins)."""
        return self.data_dir / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        """Default target of ``flink stop`` / ``flink savepoint`` without a path."""
        return self.data_dir / "savepoints"

    @property
    def rest_url(self) -> str:
        """The REST API and web UI address."""
        return f"http://127.0.0.1:{self.rest_port}"

    def python_path(self) -> str:
        """What the Python workers need on their path: the project and this environment's site-packages.

        In thread mode PemJa embeds the base interpreter, which neither sees a virtualenv's
        site-packages nor runs its ``.pth`` files (the editable install of the project is one),
        so both go to ``python.pythonpath``, which Flink adds to the embedded interpreter's path.
        """
        return os.pathsep.join(dict.fromkeys([str(PROJECT_ROOT), *site.getsitepackages()]))

    def configuration(self, rpc_port: int) -> dict[str, object]:
        """The cluster's ``config.yaml`` entries (flat keys).

        Args:
            rpc_port: The JobManager's RPC port.
        """
        distribution = yaml.safe_load((self.home / "conf" / "config.yaml").read_text()) or {}
        # The --add-opens/--add-exports list Java 17 needs for Flink comes with the distribution.
        java_opts = distribution.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
        return {
            # Explicit, because the scripts export JAVA_HOME="" when it is unset, and PyFlink inside
            # a TaskManager then looks for "bin/java" (state TTL configs start a Py4J gateway there).
            "env.java.home": str(java_home()),
            "env.java.opts.all": java_opts,
            "env.log.dir": str(self.log_dir),
            "env.pid.dir": str(self.base_dir / "pids"),
            "env.stdout-err.redirect-to-file": True,
            # Uploaded job jars (the connector jars, ~120 MB a job) and Python working directories
            # stay under the data directory rather than /tmp.
            "blob.storage.directory": str(self.base_dir / "tmp"),
            "io.tmp.dirs": str(self.base_dir / "tmp"),
            "jobmanager.rpc.address": "127.0.0.1",
            "jobmanager.rpc.port": rpc_port,
            "jobmanager.bind-host": "127.0.0.1",
            "jobmanager.memory.process.size": self.jobmanager_memory,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.numberOfTaskSlots": self.slots,
            "taskmanager.memory.process.size": self.taskmanager_memory,
            "rest.address": "127.0.0.1",
            "rest.bind-address": "127.0.0.1",
            "rest.port": self.rest_port,
            "parallelism.default": 2,
            "execution.checkpointing.dir": self.checkpoint_dir.as_uri(),
            "execution.checkpointing.savepoint-dir": self.savepoint_dir.as_uri(),
            "state.backend.type": "rocksdb",
            "python.executable": self.python,
            "python.client.executable": self.python,
            "python.pythonpath": self.python_path(),
        }

    def write_config(self, rpc_port: int) -> Path:
        """Writes ``conf/config.yaml`` and copies the distribution's logging configuration.

        Returns:
            The configuration directory.
        """
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml", "logback-console.xml"):
            source = self.home / "conf" / name
            if source.exists():
                shutil.copyfile(source, self.conf_dir / name)
        text = "# Generated by iotlink.cluster; rewritten on every start.\n" + yaml.safe_dump(
            self.configuration(rpc_port), sort_keys=False, width=100_000
        )
        (self.conf_dir / "config.yaml").write_text(text)
        return self.conf_dir

    @property
    def lib_dir(self) -> Path:
        """The cluster's classpath: links to the distribution's ``lib/`` jars and ``opt/flink-python``."""
        return self.base_dir / "lib"

    def link_lib(self) -> Path:
        """Fills :attr:`lib_dir`: the distribution's ``lib/`` plus the flink-python jar of ``opt/``.

        The Python operators must be on the cluster's own classpath: ``flink run -py`` does not
        ship the flink-python jar with the job (the JobManager then fails to deserialize the job
        graph: ClassNotFoundException ...EmbeddedPythonProcessOperator), and in thread mode
        PemJa's native library can be loaded once per JVM only, which a per-job class loader
        would break on the first restart. Hadoop's client and the JDBC drivers (Iceberg's Flink
        connector and its catalog) go there too: :func:`connectors.jars.jvm_classpath_jars`. The
        installed distribution stays untouched.
        """
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        self.lib_dir.mkdir(parents=True)
        jars = [*sorted((self.home / "lib").glob("*.jar")), *sorted((self.home / "opt").glob("flink-python-*.jar"))]
        if not any(jar.name.startswith("flink-python-") for jar in jars):
            raise ClusterError(f"no flink-python jar in {self.home / 'opt'}")
        jars += [Path(jar) for jar in jvm_classpath_jars()]
        for jar in jars:
            (self.lib_dir / jar.name).symlink_to(jar)
        return self.lib_dir

    def environment(self) -> dict[str, str]:
        """The environment of the JobManager and TaskManager scripts."""
        # FLINK_IDENT_STRING names the log files (the scripts take $USER, often unset for root).
        env = {**os.environ, "FLINK_CONF_DIR": str(self.conf_dir), "FLINK_LIB_DIR": str(self.lib_dir), "FLINK_IDENT_STRING": "iotlink"}
        # Directories of another Flink installation must not leak in.
        for name in ("FLINK_HOME", "FLINK_OPT_DIR", "FLINK_PLUGINS_DIR", "FLINK_LOG_DIR", "FLINK_PID_DIR"):
            env.pop(name, None)
        return env

    def flink_command(self, *args: str) -> list[str]:
        """``bin/flink`` of the distribution with ``FLINK_CONF_DIR`` set to this cluster's configuration,
        and Hadoop's client and the JDBC drivers on the CLI's classpath (``HADOOP_CLASSPATH``): the
        client plans the job, and Iceberg's catalog needs them there as on the TaskManagers.

        The list runs as is (``subprocess.run(cluster.flink_command("list"))``) and reads as a
        shell command line with ``shlex.join``.
        """
        classpath = os.pathsep.join(jvm_classpath_jars())
        return ["env", f"FLINK_CONF_DIR={self.conf_dir}", f"HADOOP_CLASSPATH={classpath}", str(self.home / "bin" / "flink"), *args]

    def _spawn(self, name: str, script: str, *args: str) -> None:
        out = open(self.log_dir / f"{name}.console", "ab")  # noqa: SIM115 - the child writes to it until it exits
        try:
            self._procs[name] = subprocess.Popen(
                [str(self.home / "bin" / script), "start-foreground", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), start_new_session=True, cwd=self.base_dir,
            )
        finally:
            out.close()

    def start(self) -> FlinkCluster:
        """Starts the JobManager and the TaskManagers and waits until all TaskManagers and their slots registered.

        Returns:
            This cluster.

        Raises:
            ClusterError: a cluster already runs on the data directory, the REST port is taken,
                a process exited, or the cluster was not ready within ``startup_timeout_s``
                (with the tail of the log that explains it). Whatever started is stopped again.
        """
        running = running_cluster(self.data_dir)
        if running is not None:
            raise ClusterError(
                f"a Flink cluster already runs on {self.data_dir} (pid {running['pid']}, {running['rest_url']}): "
                "stop it with 'iotlink cluster down', or give this one another --data-dir"
            )
        if not port_is_free(self.rest_port):
            raise ClusterError(f"port {self.rest_port} on 127.0.0.1 is already in use (choose another with --ui-port)")
        self.write_config(free_port())
        self.link_lib()
        (self.base_dir / "tmp").mkdir(exist_ok=True)
        atexit.register(self.stop)  # an interpreter exit must not leave JVMs behind
        try:
            self._spawn("jobmanager", "jobmanager.sh")
            for index in range(1, self.taskmanagers + 1):
                self._spawn(f"taskmanager-{index}", "taskmanager.sh", "-D", f"taskmanager.resource-id=tm-{index}")
            self._write_state()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "pid_start": _start_time(os.getpid()), "rest_url": self.rest_url, "conf_dir": str(self.conf_dir),
                 "processes": {name: proc.pid for name, proc in self._procs.items()}}
        (self.base_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        self._owns_state_file = True

    def _wait_until_ready(self) -> None:
        rest = FlinkRest(self.rest_url, timeout_s=2.0)
        deadline = time.monotonic() + self.startup_timeout_s
        registered = slots = 0
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with code {proc.returncode} during start-up: {self._log_tail(name)}")
            try:
                overview = rest.get("/overview")
                registered, slots = overview["taskmanagers"], overview["slots-total"]
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                registered = slots = 0
            # A TaskManager is listed as soon as it registers; its slots count once its first slot
            # report arrived, and only then can a job that needs them all be scheduled.
            if registered >= self.taskmanagers and slots >= self.taskmanagers * self.slots:
                return
            time.sleep(0.3)
        raise ClusterError(
            f"the cluster was not ready within {self.startup_timeout_s:.0f}s ({registered} of {self.taskmanagers} "
            f"TaskManagers registered, {slots} of {self.taskmanagers * self.slots} slots, at {self.rest_url}); logs in {self.log_dir}"
        )

    def _log_tail(self, name: str, chars: int = 1500) -> str:
        kind = "standalonesession" if name == "jobmanager" else "taskexecutor"
        logs = sorted(self.log_dir.glob(f"flink-*-{kind}-*.log"), key=lambda p: p.stat().st_mtime)
        candidates = [self.log_dir / f"{name}.console", *logs[-1:]]
        text = "".join(p.read_text(errors="replace")[-chars:] for p in candidates if p.exists())
        return text.strip()[-chars:] or f"(no output; logs in {self.log_dir})"

    def pids(self) -> dict[str, int]:
        """Process ids of the running JobManager and TaskManagers, by name."""
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stops every process this cluster started (TaskManagers first); safe to call twice.

        Each process gets SIGTERM (Flink shuts down cleanly) and SIGKILL if it is still there
        after ``timeout_s``.
        """
        names = sorted(self._procs, key=lambda name: name == "jobmanager")  # the JobManager last
        taskmanagers = [self._procs[name].pid for name in names if name != "jobmanager"]
        _terminate(taskmanagers, timeout_s)
        if "jobmanager" in self._procs:
            _terminate([self._procs["jobmanager"].pid], timeout_s)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs = {}
        atexit.unregister(self.stop)
        if self._owns_state_file:
            (self.base_dir / STATE_FILE).unlink(missing_ok=True)
            self._owns_state_file = False

    def __enter__(self) -> FlinkCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def running_cluster(data_dir: Path) -> dict | None:
    """The cluster running on ``data_dir``, from its state file.

    Returns:
        ``{"pid", "pid_start", "rest_url", "conf_dir", "processes"}`` (the owner's pid, the
        JobManager's and TaskManagers' pids still alive by name), or None: no state file, or none
        of its processes runs any more.
    """
    try:
        state = json.loads((Path(data_dir).resolve() / "cluster" / STATE_FILE).read_text())
        processes = {name: int(pid) for name, pid in state["processes"].items()}
        conf_dir = Path(state["conf_dir"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    alive = {name: pid for name, pid in processes.items() if pid_alive(pid) and _runs_with(pid, conf_dir)}
    if not alive:
        return None
    return {**state, "processes": alive}


def stop_running_cluster(data_dir: Path, timeout_s: float = 30.0) -> dict | None:
    """Stops the cluster that ``iotlink cluster up`` (or any :class:`FlinkCluster`) runs on ``data_dir``.

    The owning process is asked to stop (SIGTERM: it stops its cluster and exits); processes
    still running after that, e.g. when the owner was killed, are terminated here.

    Returns:
        The state of the stopped cluster, or None when none ran there.
    """
    running = running_cluster(data_dir)
    if running is None:
        return None
    owner = int(running["pid"])
    # Signalled only while it is the process that wrote the state (its pid may be reused after a kill -9).
    if owner != os.getpid() and pid_alive(owner) and _start_time(owner) == running.get("pid_start"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(owner) and time.monotonic() < deadline:
            time.sleep(0.2)
    conf_dir = Path(running["conf_dir"])
    left = [pid for pid in running["processes"].values() if pid_alive(pid) and _runs_with(pid, conf_dir)]
    if left:
        _terminate(left, timeout_s)
    (Path(data_dir).resolve() / "cluster" / STATE_FILE).unlink(missing_ok=True)
    return running


def telemetry_job_arguments(settings: Settings, config_file: str | None = None, job_name: str | None = None) -> list[str]:
    """The options of ``jobs/telemetry_job.py`` for a cluster run with ``settings``.

    Args:
        settings: The platform settings the job runs with.
        config_file: The YAML config file the settings came from, passed on (topic names, for
            example, come only from there).
        job_name: Job name and transactional id prefix (default the job's own).

    Returns:
        Options for the job script. ``--ui-port`` is among them: the job's configuration names
        the REST endpoint, and the Flink client submits to the endpoint of the job's
        configuration, not to the one of the cluster's config.yaml.
    """
    args = ["--config", str(config_file)] if config_file else []
    args += ["--bootstrap-servers", settings.bootstrap_servers, "--data-dir", str(Path(settings.data_dir).resolve()),
             "--ui-port", str(settings.flink.rest_port), "--parallelism", str(settings.flink.parallelism),
             "--checkpoint-interval", str(settings.flink.checkpoint_interval_ms)]
    if settings.flink.checkpoint_dir:
        args += ["--checkpoint-dir", str(settings.flink.checkpoint_dir)]
    for option, field in (("--specs-dir", "specs_dir"), ("--rules-dir", "rules_dir")):
        value = Path(getattr(settings, field)).resolve()
        if value != Path(Settings.model_fields[field].default).resolve():  # the job's default is the project's own
            args += [option, str(value)]
    for option, value in (("--postgres-url", settings.postgres_url), ("--iceberg-catalog", settings.iceberg_catalog),
                          ("--iceberg-warehouse", settings.iceberg_warehouse), ("--mongo-url", settings.mongo_url),
                          ("--device-registry", settings.device_registry)):
        if value:
            args += [option, value]
    if job_name:
        args += ["--job-name", job_name]
    return args


def shell_line(command: list[str]) -> str:
    """A command as one line to paste into a shell."""
    return shlex.join(command)
