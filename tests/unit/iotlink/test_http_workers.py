"""The HTTP ingest's worker processes: a worker that cannot serve the port fails the start with its reason."""

import socket

import pytest

from connectors.bridge_http import HttpOptions
from iotlink.http_workers import HttpWorkers


def test_a_worker_that_cannot_bind_fails_the_start_with_why():
    # A socket on the port without SO_REUSEPORT: a worker cannot join it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    options = HttpOptions("127.0.0.1:1", "raw", port=port, tokens=frozenset({"t"}), workers=2, drain_timeout_s=1)
    try:
        with pytest.raises(RuntimeError, match=r"worker 1: OSError: .*address already in use"):
            HttpWorkers(options, 2, start_timeout_s=60)
    finally:
        holder.close()
