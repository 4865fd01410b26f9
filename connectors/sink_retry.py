"""The retry loop the database sinks share: a batch is written in one attempt and retried whole
with doubling back-off while the server is unreachable (every statement is idempotent, so a
batch written twice is harmless; meanwhile the job backs up, nothing is dropped), for a bounded
time: then the write raises, the task fails and Flink's restart strategy takes over.

Why bounded: in the job's thread execution mode a writer runs in its task's own thread, which
Flink's cancellation cannot interrupt while Python waits, so a task retrying in place holds up
every failover of the job (another sink failing on the same outage, a checkpoint timing out)
until its retry ends, and past Flink's ``task.cancellation.timeout`` (180 s) the TaskManager is
killed as stuck."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_MAX_BACKOFF_S = 10.0  # retries at least this often, so a server that is back is used soon
DEFAULT_GIVE_UP_AFTER_S = 60.0  # rides out a minute of outage in place; longer, the job restarts


@dataclass
class SinkStats:
    """What a sink did, for metrics and progress lines."""

    batches: int = 0
    statements: int = 0
    retries: int = 0


class RetryingBatchWriter:
    """Base of a sink whose ``write_batch`` retries on connection loss.

    Args:
        url: Server URL.
        max_backoff_s: Upper bound of the doubling retry delay (starts at 0.5 s).
        give_up_after_s: Raise when a batch has been failing this long (None: keep trying, for
            callers outside a Flink task).
        sleep: Injected for tests.
    """

    label = "sink"  # names the sink in log lines

    def __init__(self, url: str, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S, give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = url
        self.max_backoff_s = max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.sleep = sleep
        self.stats = SinkStats()

    def _transient(self, exc: Exception) -> bool:
        """Whether an error is a lost or refused connection, worth retrying the batch for."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Discards the connection after a transient error (reconnect on the next attempt)."""

    def _failed(self, exc: Exception) -> None:
        """Called before a non-transient error is raised (e.g. to roll back)."""

    def _write_retrying(self, attempt: Callable[[], None], statements: int) -> None:
        delay, started = 0.5, time.monotonic()
        while True:
            try:
                attempt()
            except Exception as exc:
                if not self._transient(exc):
                    self._failed(exc)
                    raise
                self._drop()
                if self.give_up_after_s is not None and time.monotonic() - started > self.give_up_after_s:
                    raise
                self.stats.retries += 1
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                log.warning("%s write failed (%s); retrying in %.1f s", self.label, reason, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            self.stats.batches += 1
            self.stats.statements += statements
            return
