"""Links to device shadows (AWS IoT Device Shadow protocol): the transport-independent half
(:class:`ShadowLink`: updates out, answers matched by clientToken, device reports routed) and the
plain MQTT transport (any broker, e.g. one served by ``iotlink shadow-service``). AWS IoT Core's
transport is :mod:`connectors.shadow_aws`.
"""

from __future__ import annotations

import json
import threading
import time

from connectors.mqtt_connection import paho_client, refusal
from operators.shadow import desired_update, parse_shadow_topic
from operators.value_repr import masked_url

ANSWER_TOPICS = (
    "$aws/things/+/shadow/update/accepted", "$aws/things/+/shadow/update/rejected", "$aws/things/+/shadow/get/accepted",
)


class ShadowLink:
    """The transport-independent half of talking to device shadows.

    A transport (plain MQTT, AWS IoT Core) subscribes to :data:`ANSWER_TOPICS`, passes every
    message to :meth:`handle_message` and implements :meth:`_publish` and :meth:`close`.
    Answers are matched to requests by clientToken; accepted updates that carry reported state
    go to ``on_reported(thing, reported_patch)``, and so does the whole reported state of a shadow
    asked for with :meth:`request_state`.
    """

    def __init__(self, on_reported=None):
        self.on_reported = on_reported
        self.answers: dict[str, tuple[str, dict]] = {}
        self._abandoned: set[str] = set()
        self.cond = threading.Condition()

    def handle_message(self, topic: str, payload: bytes) -> None:
        """Routes one message from an answer topic."""
        parsed = parse_shadow_topic(topic)
        if parsed is None:
            return
        thing, operation = parsed
        try:
            answer = json.loads(payload)
        except ValueError:
            return
        if not isinstance(answer, dict):
            return
        if operation == "get/accepted":
            state = answer.get("state")
            reported = state.get("reported") if isinstance(state, dict) else None
            if isinstance(reported, dict) and self.on_reported is not None:
                self.on_reported(thing, reported)
            return
        if operation not in ("update/accepted", "update/rejected"):
            return
        accepted = operation == "update/accepted"
        state = answer.get("state") if accepted else None
        reported = state.get("reported") if isinstance(state, dict) else None
        if isinstance(reported, dict) and self.on_reported is not None:
            self.on_reported(thing, reported)
        token = answer.get("clientToken")
        if token is None:
            return
        with self.cond:
            if token in self._abandoned:  # its sender timed out already
                self._abandoned.discard(token)
                return
            self.answers[token] = ("accepted" if accepted else "rejected", answer)
            self.cond.notify_all()

    def send(self, command: dict, timeout_s: float) -> tuple[str, dict | None]:
        """Publishes one command; returns (accepted | rejected | timed_out, answer)."""
        topic, request = desired_update(command)
        token = request["clientToken"]
        self._publish(topic, json.dumps(request).encode(), timeout_s)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while token not in self.answers:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned.add(token)
                    return "timed_out", None
                self.cond.wait(remaining)
            return self.answers.pop(token)

    def request_state(self, thing: str, timeout_s: float) -> None:
        """Asks for a shadow's whole state; its reported part arrives at ``on_reported``."""
        self._publish(f"$aws/things/{thing}/shadow/get", b"", timeout_s)

    def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Disconnects."""
        raise NotImplementedError


class MqttShadowLink(ShadowLink):
    """Shadows on any MQTT broker (``mqtt://`` or ``mqtts://``), e.g. served by ``iotlink shadow-service``."""

    def __init__(self, mqtt_url: str, client_id: str = "iotlink-control-sink", on_reported=None, timeout_s: float = 10.0):
        super().__init__(on_reported)
        self.client, address = paho_client(mqtt_url, client_id)
        self._subscribed = 0
        self.refused: str | None = None
        self.ready = threading.Event()
        # Subscribing before CONNACK is silently refused by some brokers: subscribe on connect.
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, m: self.handle_message(m.topic, m.payload)
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        if not self.ready.wait(timeout_s):
            self.close()
            why = f"the broker refused the connection: {self.refused}" if self.refused else f"no subscription within {timeout_s:g} s"
            raise ConnectionError(f"control sink: cannot subscribe on {masked_url(mqtt_url)}: {why}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.refused = refusal(reason_code)
        if self.refused is None:
            for topic in ANSWER_TOPICS:
                client.subscribe(topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, codes, properties):
        self._subscribed += 1
        if self._subscribed >= len(ANSWER_TOPICS):
            self.ready.set()

    def _publish(self, topic: str, payload: bytes, timeout_s: float) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout_s)

    def close(self) -> None:
        """Disconnects."""
        self.client.loop_stop()
        self.client.disconnect()
