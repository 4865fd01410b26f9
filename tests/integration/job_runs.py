"""Running the telemetry job unbounded in tests: wait until it caught up, then cancel."""

import time

from iotlink.live import FlinkRest
from jobs.telemetry_job import create_job


def run_until_caught_up(settings, options, expected_in, while_running=None, timeout_s=150):
    """Runs the job until it has read ``expected_in`` records and two more checkpoints have
    completed (so their Kafka transactions are committed), then cancels it.

    Args:
        settings: Platform settings.
        options: RunOptions of the run.
        expected_in: Raw records the job must have read.
        while_running: Optional ``f(rest, job_id)`` called after catching up, before cancelling;
            its return value is returned.
        timeout_s: Overall limit.
    """
    env = create_job(settings, options)
    client = env.execute_async(options.job_name)
    rest = FlinkRest(f"http://127.0.0.1:{settings.flink.rest_port}")
    job_id = str(client.get_job_id())
    deadline = time.monotonic() + timeout_s
    completed = None
    try:
        while completed is None:
            assert time.monotonic() < deadline, f"job read fewer than {expected_in} records in time"
            try:
                if rest.job_counters(job_id)["records_in"] >= expected_in:
                    completed = rest.checkpoints(job_id)["counts"]["completed"]
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        while rest.checkpoints(job_id)["counts"]["completed"] < completed + 2:
            assert time.monotonic() < deadline, "no checkpoint completed after catching up"
            time.sleep(0.3)
        return while_running(rest, job_id) if while_running is not None else None
    finally:
        client.cancel().result()
