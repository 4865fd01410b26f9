"""The telemetry job in a process of its own (``iotlink run`` in a new process group): for the
demo, the benchmark and tests that run beside it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from jobs.config import Settings


def job_command(settings: Settings, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "iotlink.cli", "run",
        "--bootstrap-servers", settings.bootstrap_servers,
        "--data-dir", str(settings.data_dir),
        "--ui-port", str(settings.flink.rest_port),
        "--parallelism", str(settings.flink.parallelism),
        "--checkpoint-interval", str(settings.flink.checkpoint_interval_ms),
        "--specs-dir", str(settings.specs_dir),
        "--rules-dir", str(settings.rules_dir),
        *(["--device-registry", settings.device_registry] if settings.device_registry else []),
        *extra,
    ]


def start_job_process(settings: Settings, extra: list[str], log_path: Path) -> subprocess.Popen:
    """Starts ``iotlink run`` in its own process group, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child writes to it until it exits
    return subprocess.Popen(
        job_command(settings, extra), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=job_environment(settings, os.environ),
    )


def job_environment(settings: Settings, base: dict) -> dict:
    """The environment of a job process: the project on PYTHONPATH, and the database, catalog
    and broker URLs (passed this way rather than as arguments, which any local user can read
    with ps)."""
    root = Path(__file__).resolve().parent.parent
    env = {**base, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), base.get("PYTHONPATH")]))}
    for name, value in (("IOTLINK_POSTGRES_URL", settings.postgres_url), ("IOTLINK_ICEBERG_CATALOG", settings.iceberg_catalog),
                        ("IOTLINK_ICEBERG_WAREHOUSE", settings.iceberg_warehouse), ("IOTLINK_MQTT_URL", settings.mqtt_url),
                        ("IOTLINK_MONGO_URL", settings.mongo_url)):
        if value:
            env[name] = value
    return env


def stop_job_process(proc: subprocess.Popen, rest, timeout_s: float = 20.0) -> None:
    """Cancels the running job through REST, then ends the job process group (JVM included)."""
    job_id = rest.running_job()
    if job_id:
        with contextlib.suppress(OSError):
            rest.cancel(job_id)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the group left behind (the Flink JVM)
