"""The command line never shows a password: a planted one is absent from every message and log
of commands that fail on the URLs that carry it (unreachable servers, malformed URLs, a bad
configuration file)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotlink import cli, stack
from iotlink.mqtt_login import MqttLogin
from jobs.config import Settings

PLANTED = "Pl4nted-S3cret"
UNREACHABLE = f"iot:{PLANTED}@127.0.0.1:1"


def failing_commands(tmp_path: Path) -> list[list[str]]:
    config = tmp_path / "iotlink.yaml"
    config.write_text(f"postgres_url: postgresql://{UNREACHABLE}/iotlink\nflink:\n  parallelism: 0\n")
    return [
        ["db", "init", "--postgres-url", f"postgresql://{UNREACHABLE}/iotlink"],
        ["db", "init", "--postgres-url", f"postgresql://iot:{PLANTED}@/"],
        ["db", "init", "--postgres-url", f"postgresql://iot@127.0.0.1:1/iotlink?password={PLANTED}"],
        ["iceberg", "init", "--iceberg-catalog", f"postgresql+psycopg://{UNREACHABLE}/iotlink"],
        ["iceberg", "query", "--iceberg-catalog", f"postgresql+psycopg://{UNREACHABLE}/iotlink", "SELECT 1"],
        ["run", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        ["run", "--postgres-url", f"postgresql://iot:{PLANTED}@127.0.0.1:badport/iotlink", "--data-dir", str(tmp_path / "data")],
    ]


@pytest.mark.parametrize("index", range(7))
def test_a_failing_command_shows_no_password(tmp_path, index):
    command = failing_commands(tmp_path)[index]
    done = subprocess.run([sys.executable, "-m", "iotlink.cli", *command], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, f"{command} was expected to fail"
    assert done.stderr.strip(), f"{command} failed without saying why"
    assert PLANTED not in done.stdout + done.stderr, done.stdout + done.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "iotlink.yaml":
            assert PLANTED not in path.read_text(errors="replace"), f"{path} shows the password"


def test_up_prints_the_mqtt_login_once_and_where_it_is_kept(monkeypatch, capsys, tmp_path):
    """``iotlink up`` is the one place the embedded broker's password is shown (devices and tools need it)."""
    class StartedStack:
        def __init__(self, settings):
            self.data_dir = tmp_path
            self.mqtt_login = MqttLogin("iotlink", PLANTED)
            self.mqtt_login_file = tmp_path / "mqtt" / "login.json"

        def start(self):
            return {"kafka": "127.0.0.1:19092", "mqtt": "mqtt://127.0.0.1:11883"}

        def stop(self):
            pass

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(stack, "EmbeddedStack", StartedStack)
    monkeypatch.setattr(time, "sleep", interrupt)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.cmd_up(None, Settings(data_dir=tmp_path)) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert f"mqtt login  user iotlink, password {PLANTED} (kept in {tmp_path / 'mqtt' / 'login.json'}" in out
    assert out.count(PLANTED) == 1 and "mqtt://127.0.0.1:11883" in out
