"""Device shadows on AWS IoT Core, for ``iotlink control-sink`` with ``shadow.backend: aws-iot``.

The connection uses mutual TLS through ``awsiotsdk`` (the client certificate registered with
AWS IoT identifies the sink); the shadow protocol itself (updates, answers matched by
clientToken, device reports) is :class:`connectors.shadow_link.ShadowLink`'s.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable

from connectors.shadow_link import ANSWER_TOPICS, ShadowLink

log = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    """A short, single-line description of a connection, subscribe or publish failure."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    name, message = getattr(exc, "name", None), getattr(exc, "message", None)
    text = f"{name}: {message}" if name and message else (str(exc) or type(exc).__name__)
    return " ".join(text.split())


class AwsIotShadowLink(ShadowLink):
    """Shadow updates and answers over an MQTT connection to AWS IoT Core.

    Connects with the client certificate and key of ``shadow`` and subscribes to the shadow
    answer topics (:data:`connectors.shadow_link.ANSWER_TOPICS`) before returning, so no answer
    to a later update is missed.

    Args:
        shadow: The ``shadow`` settings; ``endpoint``, ``cert`` and ``key`` must be set
            (:class:`~jobs.config.ShadowSettings` checks that for ``backend: aws-iot``).
        on_reported: Called as ``on_reported(thing, reported_patch)`` for every accepted update
            that carries reported state, from the connection's event-loop thread.

    Raises:
        ConnectionError: The certificate or key cannot be used, or the connection or a
            subscription failed or was not confirmed within ``shadow.answer_timeout_s``; the
            message names the endpoint.
    """

    def __init__(self, shadow, on_reported: Callable[[str, dict], None] | None = None):
        from awscrt import mqtt
        from awsiot import mqtt_connection_builder

        super().__init__(on_reported)
        self._qos = mqtt.QoS.AT_LEAST_ONCE
        self._timeout_s = shadow.answer_timeout_s
        self.endpoint = f"{shadow.endpoint}:{shadow.port}"
        options = {
            "endpoint": shadow.endpoint,
            "port": shadow.port,
            "cert_filepath": str(shadow.cert),
            "pri_key_filepath": str(shadow.key),
            "client_id": shadow.client_id,
            # A persistent session: AWS IoT keeps the subscriptions and queues QoS 1 answers
            # while the connection is briefly interrupted.
            "clean_session": False,
            "keep_alive_secs": 30,
            "on_connection_resumed": self._on_connection_resumed,
        }
        if shadow.ca is not None:
            # Without a CA file the system trust store verifies the endpoint (Amazon's roots).
            options["ca_filepath"] = str(shadow.ca)
        try:
            self.connection = mqtt_connection_builder.mtls_from_path(**options)
        except Exception as exc:  # the CRT reports unreadable or mismatched PEM files as RuntimeError
            raise ConnectionError(
                f"control sink: cannot use the certificate {shadow.cert} and key {shadow.key} for AWS IoT at {self.endpoint}: {_one_line(exc)}"
            ) from exc
        deadline = time.monotonic() + self._timeout_s
        try:
            self.connection.connect().result(self._timeout_s)
            # Subscribing registers the message callback locally even when the broker kept the
            # subscriptions of an earlier session.
            futures = [self.connection.subscribe(topic, self._qos, callback=self._on_message)[0] for topic in ANSWER_TOPICS]
            for future in futures:
                future.result(max(deadline - time.monotonic(), 0.0))
        except Exception as exc:  # awscrt fails connects with plain Exception(ConnectReturnCode) too
            self._disconnect(1.0)
            raise ConnectionError(f"control sink: cannot connect and subscribe to AWS IoT at {self.endpoint}: {_one_line(exc)}") from exc

    def _on_message(self, topic: str, payload: bytes, dup: bool, qos, retain: bool, **kwargs) -> None:
        self.handle_message(topic, payload)

    def _on_connection_resumed(self, connection, return_code, session_present: bool, **kwargs) -> None:
        # A new session (the broker forgot it, e.g. after expiry) has no subscriptions: without
        # them every later answer would be lost and each command would time out.
        if return_code == 0 and not session_present:
            future, _ = connection.resubscribe_existing_topics()
            # Never block here: this runs on the event-loop thread that delivers the SUBACK.
            future.add_done_callback(self._on_resubscribed)

    def _on_resubscribed(self, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is not None:
            log.warning("control sink: resubscribing at %s failed: %s", self.endpoint, _one_line(error))
            return
        refused = [topic for topic, qos in future.result()["topics"] if qos is None]
        if refused:
            log.warning("control sink: %s refused the subscriptions %s", self.endpoint, ", ".join(refused))

    def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        """Publishes at QoS 1 and waits up to ``timeout_s`` for the PUBACK.

        Without a PUBACK in time the update stays queued for redelivery and :meth:`send` reports
        ``timed_out`` unless the answer still arrives, as with the plain MQTT transport.

        Raises:
            ConnectionError: The publish failed (not merely slow).
        """
        future, _ = self.connection.publish(topic, payload, self._qos)
        try:
            future.result(timeout_s)
        except TimeoutError:
            log.warning("control sink: no PUBACK from %s within %g s for %s", self.endpoint, timeout_s, topic)
        except Exception as exc:  # the CRT reports failures as AwsCrtError
            raise ConnectionError(f"control sink: publish to {topic} at {self.endpoint} failed: {_one_line(exc)}") from exc

    def close(self) -> None:
        """Disconnects and waits (up to the answer timeout) until the connection is closed."""
        self._disconnect(self._timeout_s)

    def _disconnect(self, timeout_s: float) -> None:
        try:
            self.connection.disconnect().result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - an already closed or never opened connection is fine
            log.debug("control sink: disconnect from %s: %s", self.endpoint, _one_line(exc))
