"""The bridges' producer (librdkafka) against the embedded Apache Kafka broker: confirmations,
order, errors as outcomes, the in-flight bound, a broker that does not answer."""

import threading
import time

import orjson

from connectors.kafka import ensure_topics, read_topic
from connectors.raw_producer import RawProducer
from iotlink.stack import free_port
from operators.envelope import RawEnvelope


def _envelope(device_id: str, seq: int) -> RawEnvelope:
    return RawEnvelope(device_id=device_id, payload=b'{"seq":%d}' % seq, format="json", source="mqtt", received_at=1_795_000_000_000 + seq)


def test_every_envelope_is_confirmed_once_and_each_device_keeps_its_order(settings):
    topic = f"it.raw-producer.order.{time.time_ns()}"
    ensure_topics(settings.bootstrap_servers, [topic], partitions={topic: 4})
    producer = RawProducer(settings.bootstrap_servers, topic, max_in_flight=50)
    confirmed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def completion(device_id: str, seq: int):
        def on_done(error):
            assert error is None
            with lock:
                confirmed.append((device_id, seq))

        return on_done

    for seq in range(2000):
        device_id = f"dev-{seq % 7}"
        assert producer.send(_envelope(device_id, seq), completion(device_id, seq))
    producer.close()
    assert len(confirmed) == 2000 and len(set(confirmed)) == 2000
    assert producer.counters.snapshot()["produced"] == 2000 and producer.in_flight == 0
    per_device: dict[str, list[int]] = {}
    for value in read_topic(settings.bootstrap_servers, topic, timeout_s=60.0):
        record = orjson.loads(value)
        per_device.setdefault(record["device_id"], []).append(orjson.loads(record["payload"])["seq"])
    assert sum(len(seqs) for seqs in per_device.values()) == 2000
    for seqs in per_device.values():
        assert seqs == sorted(seqs)  # keyed by device: one partition each, in send order


def test_a_record_kafka_refuses_is_an_outcome_not_an_exception(settings):
    topic = f"it.raw-producer.large.{time.time_ns()}"
    ensure_topics(settings.bootstrap_servers, [topic])
    producer = RawProducer(settings.bootstrap_servers, topic, max_in_flight=4)
    too_large = b"x" * (9 * 1024 * 1024)  # above the producer's message.max.bytes
    outcomes = []
    assert producer.send_record(topic, b"k", too_large, outcomes.append)
    assert producer.send_and_wait([_envelope("dev-1", 1)]) == [None]
    producer.close()
    assert len(outcomes) == 1 and outcomes[0] is not None
    assert producer.in_flight == 0  # the refused record gave its slot back


def test_an_unanswering_broker_times_out_send_and_wait_and_blocks_new_sends_at_the_bound():
    producer = RawProducer(f"127.0.0.1:{free_port()}", "iotlink.raw", max_in_flight=2)
    started = time.monotonic()
    outcomes = producer.send_and_wait([_envelope("dev-1", 1), _envelope("dev-1", 2)], timeout_s=1.0)
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert time.monotonic() - started < 5.0
    assert producer.in_flight == 2
    assert producer.send(_envelope("dev-1", 3), timeout_s=0.2) is False  # the bound holds: nothing more is taken
    late: list = []
    assert producer.send_record("iotlink.raw", b"k", b"v", late.append, timeout_s=0.0) is False
    started = time.monotonic()
    producer.close(timeout_s=0.5)  # gives up on the unanswered records: they fail, none is left waiting
    assert time.monotonic() - started < 5.0
    assert producer.in_flight == 0 and producer.counters.snapshot()["failed"] == 2
