"""The producer every ingest bridge writes ``iotlink.raw`` through.

A bridge may acknowledge a message to its device (MQTT PUBACK, HTTP 202, …) only after Kafka
has confirmed it, so :meth:`RawProducer.send` takes a completion callback that runs with
``None`` on success or the exception once Kafka has answered (``acks=all``). The number of
records waiting for Kafka is bounded: :meth:`RawProducer.send` blocks while the bound is
reached, which is how a slow broker pushes back on the bridge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from operators.envelope import RawEnvelope, build_envelope

Completion = Callable[[BaseException | None], None]


@dataclass
class BridgeCounters:
    """Running totals of one bridge, safe to update from several threads."""

    received: int = 0  # messages taken from devices
    produced: int = 0  # confirmed by Kafka
    failed: int = 0  # Kafka answered with an error
    rejected: int = 0  # refused before Kafka (malformed topic, too large, bad request, ...)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        """Adds ``n`` to the counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class DeliveryError(Exception):
    """Kafka did not take a record (its error, as librdkafka reported it)."""


class RawProducer:
    """Writes raw envelopes to the raw topic, keyed by device id, with confirmations.

    The client is librdkafka (``confluent-kafka``): per record it costs a fraction of
    kafka-python's CPU (``bench/kafka_clients.py``, docs/performance.md). The producer is
    idempotent, so a retried batch lands once and each partition keeps the order of the sends.
    Confirmations run on one thread of the producer's own (``raw-producer-callbacks``).

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The raw topic.
        max_in_flight: Records that may wait for Kafka at once; :meth:`send` blocks beyond.
        counters: Counters to update (a new set when omitted).
        producer_config: Extra librdkafka settings (dotted names given with underscores, e.g.
            ``linger_ms=20`` for ``linger.ms``).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        max_in_flight: int = 1000,
        counters: BridgeCounters | None = None,
        **producer_config,
    ):
        from confluent_kafka import Producer

        config = {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "delivery.timeout.ms": 120_000,  # retried until then; a record not delivered by then fails
            "request.timeout.ms": 30_000,
            "message.max.bytes": 8 * 1024 * 1024 + 64 * 1024,
            "reconnect.backoff.max.ms": 10_000,
            # librdkafka's own log lines (connection refused, …) through logging, not on stderr.
            "logger": logging.getLogger("connectors.raw_producer.librdkafka"),
            **{name.replace("_", "."): value for name, value in producer_config.items()},
        }
        self.topic = topic
        self.counters = counters or BridgeCounters()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._producer = Producer(config)
        self._closed = threading.Event()
        self._callbacks = threading.Thread(target=self._serve_callbacks, name="raw-producer-callbacks", daemon=True)
        self._callbacks.start()

    def _serve_callbacks(self) -> None:
        # librdkafka calls delivery callbacks only inside poll(); it returns as soon as one ran.
        while not self._closed.is_set():
            self._producer.poll(0.1)

    @property
    def in_flight(self) -> int:
        """Records sent and not yet confirmed or failed."""
        return self._max_in_flight - self._slots._value  # noqa: SLF001 - read-only peek for the status line

    def send(self, envelope: RawEnvelope, on_done: Completion | None = None, timeout_s: float | None = None) -> bool:
        """Produces one envelope keyed by its device id (or unkeyed when the bridge does not know it).

        Args:
            envelope: The envelope to write.
            on_done: Called once with ``None`` after Kafka confirmed, or with the exception.
            timeout_s: How long to wait for a free in-flight slot (``None``: as long as it takes).

        Returns:
            False when no slot became free within ``timeout_s`` (nothing was sent).
        """
        key = envelope.device_id.encode() if envelope.device_id else None
        try:
            value = build_envelope(envelope)
        except Exception as exc:  # noqa: BLE001 - an unwritable envelope is the caller's outcome, reported via on_done
            self.counters.add("failed")
            if on_done is not None:
                on_done(exc)
            return True
        return self._send(self.topic, key, value, on_done, timeout_s, counted=True)

    def send_record(
        self, topic: str, key: bytes | None, value: bytes, on_done: Completion | None = None, timeout_s: float | None = None
    ) -> bool:
        """Produces one ready-made record (e.g. a dead letter) to any topic, sharing the in-flight bound.

        Unlike :meth:`send`, it updates no counter: the caller knows what the record stands for.

        Args:
            topic: The topic to write to.
            key: The record key (``None``: unkeyed).
            value: The record value.
            on_done: Called once with ``None`` after Kafka confirmed, or with the exception.
            timeout_s: How long to wait for a free in-flight slot (``None``: as long as it takes).

        Returns:
            False when no slot became free within ``timeout_s`` (nothing was sent).
        """
        return self._send(topic, key, value, on_done, timeout_s, counted=False)

    def _send(self, topic: str, key: bytes | None, value: bytes, on_done: Completion | None, timeout_s: float | None, counted: bool) -> bool:
        if not self._slots.acquire(timeout=timeout_s):
            return False

        def delivered(error, _message) -> None:
            self._slots.release()
            outcome = None if error is None else DeliveryError(str(error))
            if counted:
                self.counters.add("produced" if outcome is None else "failed")
            if on_done is not None:
                on_done(outcome)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
        except Exception as exc:  # noqa: BLE001 - too large, unknown topic, full queue: the caller's outcome, via on_done
            self._slots.release()
            if counted:
                self.counters.add("failed")
            if on_done is not None:
                on_done(exc)
        return True

    def send_and_wait(self, envelopes: list[RawEnvelope], timeout_s: float = 60.0) -> list[BaseException | None]:
        """Produces envelopes and waits until Kafka has answered for each of them.

        Returns:
            One entry per envelope, in order: ``None`` when confirmed, else the error (a
            ``TimeoutError`` when Kafka did not answer within ``timeout_s``).
        """
        outcomes: list[BaseException | None] = [TimeoutError("no answer from Kafka")] * len(envelopes)
        done = threading.Semaphore(0)

        def completion(index: int) -> Completion:
            def on_done(exc: BaseException | None) -> None:
                outcomes[index] = exc
                done.release()

            return on_done

        deadline = time.monotonic() + timeout_s
        sent = 0
        for index, envelope in enumerate(envelopes):
            if not self.send(envelope, completion(index), timeout_s=max(0.0, deadline - time.monotonic())):
                break
            sent += 1
        # Kafka not answering in time is an outcome, not an error: unanswered envelopes keep their TimeoutError.
        for _ in range(sent):
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        return list(outcomes)

    def flush(self, timeout_s: float | None = None) -> None:
        """Waits until every record sent so far has been answered (or ``timeout_s`` passed)."""
        self._producer.flush(-1 if timeout_s is None else timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Waits up to ``timeout_s`` for the records sent so far; those still unanswered then get
        their ``on_done`` with an error (purged, never confirmed); then the client is closed."""
        self._producer.flush(timeout_s)
        self._producer.purge()
        self._producer.flush(1.0)  # serves the purged records' callbacks
        self._closed.set()
        self._callbacks.join()
        self._producer.close()
