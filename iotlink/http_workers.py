"""``iotlink bridge http --workers N``: the HTTP ingest served by N processes on one port.

The process ``iotlink`` runs is worker 0; it starts workers 1 … N-1 (``multiprocessing`` spawn:
fresh interpreters), each a whole :class:`connectors.bridge_http.HttpIngest` with its own event
loop and Kafka producer, bound to the same port with ``SO_REUSEPORT`` so the kernel spreads the
connections among them. One interpreter per process is the point: a single ingest is held to
one core by its interpreter (docs/performance.md).

Worker 0 prints its banner once every worker listens. Each worker reports its counters to
worker 0 every half second, which adds them up for the status line and the last line. Stopping sets one event: every worker stops accepting, lets its
running requests finish within the drain timeout, reports its last counters and exits. A worker
whose parent is gone stops by itself.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import replace

from connectors.bridge_http import HttpIngest, HttpOptions

REPORT_EVERY_S = 0.5


def serve_worker(options: HttpOptions, reports, stop, parent_pid: int) -> None:
    """One worker process: serves until ``stop`` is set or its parent is gone, then drains.

    Args:
        options: The ingest's options, ``worker`` set to this worker's number.
        reports: Queue of ``(worker, counters, in flight, drained or None)`` to worker 0
            (``(worker, None, 0, why)`` when it could not start).
        stop: Event set by worker 0 when the ingest stops.
        parent_pid: Worker 0's process id.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; worker 0 decides
    ingest = HttpIngest(options)
    try:
        ingest.start()
    except Exception as exc:  # noqa: BLE001 - reported to worker 0, which fails with it
        reports.put((options.worker, None, 0, f"{type(exc).__name__}: {exc}"))
        return
    reports.put((options.worker, ingest.counters.snapshot(), 0, None))  # listening
    while not stop.wait(REPORT_EVERY_S) and os.getppid() == parent_pid:
        reports.put((options.worker, ingest.counters.snapshot(), ingest.producer.in_flight if ingest.producer else 0, None))
    drained = ingest.stop()
    reports.put((options.worker, ingest.counters.snapshot(), 0, drained))


class HttpWorkers:
    """Workers 1 … N-1 of an ingest whose worker 0 runs in this process.

    Args:
        options: Worker 0's options (its bound port: the workers share it).
        workers: N, the number of processes in all.
        start_timeout_s: How long the workers may take to listen.

    Raises:
        RuntimeError: a worker could not start (why), or did not listen in time.
    """

    def __init__(self, options: HttpOptions, workers: int, start_timeout_s: float = 60.0):
        context = multiprocessing.get_context("spawn")
        self._reports = context.Queue()
        self._stop = context.Event()
        self._latest: dict[int, tuple[dict[str, int], int]] = {}
        self._drained: dict[int, bool] = {}
        self._processes = [
            context.Process(target=serve_worker, args=(replace(options, worker=n), self._reports, self._stop, os.getpid()),
                            name=f"iotlink-http-worker-{n}", daemon=True)
            for n in range(1, workers)
        ]
        self._lock = threading.Lock()
        self._collector = threading.Thread(target=self._collect, name="http-worker-reports", daemon=True)
        self._listening = threading.Event()
        self._failure: str | None = None
        for process in self._processes:
            process.start()
        self._collector.start()
        # Back only when every worker listens: the banner that follows promises the port is served.
        if not self._listening.wait(start_timeout_s) or self._failure is not None:
            self.stop(5)
            raise RuntimeError(f"http ingest: a worker process did not start: {self._failure or f'not listening after {start_timeout_s:g} s'}")

    def _collect(self) -> None:
        # Read all the time, so that a worker never waits on a full pipe to report (nor to exit).
        while True:
            try:
                worker, counters, in_flight, drained = self._reports.get(timeout=REPORT_EVERY_S)
            except queue.Empty:
                if self._stop.is_set() and not any(p.is_alive() for p in self._processes):
                    return  # every worker has exited and everything they sent is read
                continue
            if counters is None:  # it could not start
                self._failure = f"worker {worker}: {drained}"
                self._listening.set()
                continue
            with self._lock:
                self._latest[worker] = (counters, in_flight)
                if drained is not None:
                    self._drained[worker] = drained
                if len(self._latest) == len(self._processes):
                    self._listening.set()

    def totals(self, own: dict[str, int]) -> dict[str, int]:
        """``own`` counters (worker 0's) plus the last ones each other worker reported."""
        totals = dict(own)
        with self._lock:
            for counters, _ in self._latest.values():
                for name, value in counters.items():
                    totals[name] = totals.get(name, 0) + value
        return totals

    def in_flight(self) -> int:
        """Records the other workers last reported waiting for Kafka."""
        with self._lock:
            return sum(in_flight for _, in_flight in self._latest.values())

    def begin_stop(self) -> None:
        """Tells every worker to stop accepting and drain (without waiting for them)."""
        self._stop.set()

    def stop(self, timeout_s: float) -> bool:
        """Stops every worker and waits for it to drain and exit.

        Returns:
            True when each of them drained within its timeout.
        """
        self._stop.set()
        for process in self._processes:
            process.join(timeout_s + 5)
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        self._collector.join(5)
        with self._lock:
            return all(self._drained.get(n, False) for n in range(1, len(self._processes) + 1))
