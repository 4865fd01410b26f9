import pytest

from connectors.sink_retry import RetryingBatchWriter


def writer(failures: int, **kwargs):
    slept = []
    attempts = []

    class Sink(RetryingBatchWriter):
        def _transient(self, exc):
            return isinstance(exc, ConnectionError)

        def write(self):
            def attempt():
                attempts.append(1)
                if len(attempts) <= failures:
                    raise ConnectionError("connection refused")
            self._write_retrying(attempt, 3)

    return Sink("db://test", sleep=slept.append, **kwargs), slept, attempts


def test_a_lost_connection_is_retried_with_doubling_capped_back_off():
    sink, slept, attempts = writer(6, max_backoff_s=5.0)
    sink.write()
    assert len(attempts) == 7 and sink.stats.retries == 6 and sink.stats.batches == 1 and sink.stats.statements == 3
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_an_outage_longer_than_the_limit_fails_the_write():
    # (In the job the task then fails and Flink restarts it from its last checkpoint: a task
    # retrying in place cannot be cancelled.)
    sink, _, attempts = writer(1_000, give_up_after_s=0.0)
    with pytest.raises(ConnectionError):
        sink.write()
    assert len(attempts) == 1 and sink.stats.batches == 0

