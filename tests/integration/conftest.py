"""One embedded stack (broker, PostgreSQL, Iceberg catalog, MQTT, MongoDB wire protocol) shared by the integration tests."""

import shutil
import tempfile
from pathlib import Path

import pytest

from iotlink.stack import EmbeddedStack, free_port
from jobs.config import Settings, StackPorts


@pytest.fixture(scope="session")
def stack():
    # Not under pytest's own temporary root: every pytest session that starts (another run on the
    # same machine) makes /tmp/pytest-of-<user> private again, and the PostgreSQL server, which
    # runs as an unprivileged user when the tests run as root, then loses its data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="iotlink-stack-"))
    settings = Settings(
        data_dir=data_dir,
        ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()),
        # (A job that keeps failing fails the test after ten restarts instead of restarting on.)
        flink={"rest_port": free_port(), "checkpoint_interval_ms": 500, "parallelism": 2, "restart_attempts": 10},
    )
    embedded = EmbeddedStack(settings)
    try:
        embedded.start()
        yield embedded
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(stack):
    # Jobs write the MongoDB hot layer only in the tests that ask for it (``mongo_url``).
    return stack.settings_with_endpoints().model_copy(update={"mongo_url": None})


@pytest.fixture(scope="session")
def mongo_url(stack):
    """The hot layer's server URL (database ``iotlink``; tests pick their own database)."""
    return stack.endpoints["mongo"]


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    """A Kafka-protocol broker of the embedded stack for one test module alone (the bridge
    tests stall it with SIGSTOP, which the shared stack must not see)."""
    data_dir = tmp_path_factory.mktemp("module-kafka")
    settings = Settings(data_dir=data_dir, ports=StackPorts(kafka=free_port(), postgres=free_port(), mqtt=free_port(), mongo=free_port()))
    stack = EmbeddedStack(settings, ("kafka",))
    stack.start()
    yield stack
    stack.stop()
