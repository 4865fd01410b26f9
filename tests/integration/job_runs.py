"""Running the telemetry job unbounded in tests: its input, topics and hot layer of a test's
own, waiting until it caught up, stopping it with a savepoint, cancelling it."""

import dataclasses
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.kafka import end_offsets
from connectors.mongo import init_collections, open_database
from iotlink.live import FlinkRest
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka
from jobs.telemetry_job import create_job


def produce(settings, fleet, start, steps, seed):
    """Sends the fleet's messages (plus redelivered duplicates); returns the values and end offsets."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    messages = list(FleetSimulator(fleet, seed=seed, interval_ms=2_000).messages(start, steps))
    messages += messages[::23]  # QoS 1 redeliveries
    values, futures, ends = [], [], {}
    for message in messages:
        key, value = encode_for_kafka(message, message.device_ts + 500)
        futures.append(producer.send(settings.topics.raw, key=key, value=value))
        values.append(value)
    for future in futures:
        meta = future.get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    return values, ends


def produce_ticks(settings, partitions, ts):
    """One valid reading per raw partition at ``ts``, from devices outside the fleet."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    device = build_fleet(1, forms=("json",), seed=1)[0]
    values = []
    for p in partitions:
        tick = dataclasses.replace(device, device_id=f"tick-{p}", hub_id="nohub")
        message = next(iter(FleetSimulator([tick], seed=p).messages(ts, 1)))
        key, value = encode_for_kafka(message, ts + 500)
        producer.send(settings.topics.raw, key=key, value=value, partition=p).get(30)
        values.append(value)
    producer.close()
    return values


def checkpointed_to_the_end(settings) -> bool:
    """Whether the job's checkpoints cover every raw record sent so far: the source commits its
    offsets to the consumer group when a checkpoint completes."""
    # (A consumer of the group that never subscribes only reads the group's committed offsets.)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=settings.flink.group_id, enable_auto_commit=False)
    try:
        ends = end_offsets(settings.bootstrap_servers, settings.topics.raw)
        return all((consumer.committed(TopicPartition(settings.topics.raw, p)) or 0) >= end for p, end in ends.items() if end)
    finally:
        consumer.close()


def with_own_hot_layer(settings, mongo_url, name):
    """The settings with a MongoDB database of their own."""
    url = mongo_url.rsplit("/", 1)[0] + f"/{name}"
    db = open_database(url)
    for collection in db.list_collection_names():
        db.drop_collection(collection)
    init_collections(db)
    return settings.model_copy(update={"mongo_url": url})


def run_until_caught_up(settings, options, expected_in, while_running=None, timeout_s=150, until=None):
    """Runs the job until it has read ``expected_in`` records and two more checkpoints have
    completed (so their Kafka transactions are committed), then cancels it.

    Args:
        settings: Platform settings.
        options: RunOptions of the run.
        expected_in: Raw records the job must have read.
        while_running: Optional ``f(rest, job_id)`` called after catching up, before cancelling;
            its return value is returned.
        until: Optional ``f() -> bool`` polled after the checkpoints until it holds (e.g. the
            expected output is visible to read_committed readers); it is not asserted, the
            caller's own checks say what was missing.
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
        while until is not None and not until() and time.monotonic() < deadline:
            time.sleep(0.5)
        return while_running(rest, job_id) if while_running is not None else None
    finally:
        try:
            running = rest.get(f"/jobs/{job_id}")["state"] not in ("FINISHED", "CANCELED", "FAILED")
        except OSError:  # a local run's cluster is gone once its job has ended
            running = False
        if running:
            client.cancel().result()


def stop_with_savepoint(rest, job_id: str, directory, timeout_s: float = 60) -> str:
    """Stops a running job with a savepoint (as `flink stop` does); returns the savepoint path.

    A local run's cluster shuts down with its job, so the status may become unreachable once
    the savepoint is done: the savepoint is then found in ``directory``.
    """
    directory = Path(directory)
    trigger = rest.request("POST", f"/jobs/{job_id}/stop", {"targetDirectory": directory.as_uri(), "drain": False})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = rest.get(f"/jobs/{job_id}/savepoints/{trigger['request-id']}")
        except OSError:
            break
        if status["status"]["id"] == "COMPLETED":
            operation = status["operation"]
            assert "location" in operation, f"savepoint failed: {operation}"
            return operation["location"]
        time.sleep(0.3)
    done = sorted(directory.glob("savepoint-*/_metadata"))
    assert done, f"no savepoint in {directory}"
    return str(done[-1].parent)


def with_own_topics(settings, name: str, raw_partitions: int = 4):
    """Settings whose topics are this test's own (``<name>.iotlink.raw`` …), created now.

    A job cancelled while a checkpoint is in flight leaves that checkpoint's pre-committed Kafka
    transaction open until ``transaction.timeout.ms`` (Kafka's rule: only a producer with the same
    transactional id fences it sooner), and an open transaction holds back every later record of
    its partition from read_committed readers. Tests that cancel jobs on shared topics could
    delay each other's output; own topics keep each test's result its own.
    """
    from connectors.kafka import ensure_platform_topics
    from jobs.config import Topics

    topics = Topics(**{key: f"{name}.{topic}" for key, topic in settings.topics.model_dump().items()})
    ensure_platform_topics(settings.bootstrap_servers, topics, raw_partitions)
    return settings.model_copy(update={"topics": topics})
