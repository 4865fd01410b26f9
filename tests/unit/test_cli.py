"""The command line never shows a password: a planted one is absent from every message and log
of commands that fail on the URLs that carry it (unreachable servers, malformed URLs, a bad
configuration file)."""

import subprocess
import sys
from pathlib import Path

import pytest

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
