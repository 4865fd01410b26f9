"""``iotlink shadow-service``: device shadows over any MQTT broker, with AWS IoT's topics.

For the embedded stack and tests, where AWS IoT Core is not available: it answers
``$aws/things/{thing}/shadow/update`` with ``/update/accepted`` or ``/update/rejected`` and
publishes ``/update/delta`` to the device, and answers ``/get`` with ``/get/accepted``.
Semantics (desired/reported/delta/version, clientToken idempotency) are in
:mod:`operators.shadow`. Shadows are kept in a JSON file so a restart keeps them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from connectors.mqtt_connection import paho_client, refusal
from operators.shadow import Shadow, ShadowRejected, parse_shadow_topic

SUBSCRIPTIONS = ("$aws/things/+/shadow/update", "$aws/things/+/shadow/get")


class ShadowService:
    """Serves shadows on an MQTT broker until :meth:`stop`."""

    def __init__(self, mqtt_url: str, store: Path | None = None, client_id: str = "iotlink-shadow-service"):
        self.client, address = paho_client(mqtt_url, client_id)
        self.host, self.port = address.host, address.port
        self.store = store
        self.shadows: dict[str, Shadow] = self._load()
        self.lock = threading.Lock()
        self.updates = 0
        self.ready = threading.Event()
        self.refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _load(self) -> dict[str, Shadow]:
        if self.store is None or not self.store.exists():
            return {}
        data = json.loads(self.store.read_text())
        return {thing: Shadow(**doc) for thing, doc in data.items()}

    def _save(self) -> None:
        if self.store is None:
            return
        data = {
            thing: {"desired": s.desired, "reported": s.reported, "metadata": s.metadata, "version": s.version, "tokens": s.tokens}
            for thing, s in self.shadows.items()
        }
        tmp = self.store.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.store)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.refused = refusal(reason_code)
        if self.refused is not None:
            return
        for topic in SUBSCRIPTIONS:
            client.subscribe(topic, qos=1)
        self.ready.set()

    def _on_message(self, client, userdata, message):
        parsed = parse_shadow_topic(message.topic)
        if parsed is None:
            return
        thing, operation = parsed
        base = f"$aws/things/{thing}/shadow/{operation}"
        now = int(time.time() * 1000)
        try:
            request = json.loads(message.payload) if message.payload else {}
        except ValueError:
            client.publish(base + "/rejected", json.dumps({"code": 400, "message": "Payload contains invalid json", "timestamp": now // 1000}), qos=1)
            return
        with self.lock:
            shadow = self.shadows.setdefault(thing, Shadow())
            if operation == "get":
                client.publish(base + "/accepted", json.dumps(shadow.document(now)), qos=1)
                return
            try:
                accepted, delta = shadow.update(request, now)
            except ShadowRejected as exc:
                rejected = {"code": exc.code, "message": exc.message, "timestamp": now // 1000}
                if isinstance(request, dict) and request.get("clientToken") is not None:
                    rejected["clientToken"] = request["clientToken"]
                client.publish(base + "/rejected", json.dumps(rejected), qos=1)
                return
            self.updates += 1
            self._save()
        client.publish(base + "/accepted", json.dumps(accepted), qos=1)
        if delta is not None:
            client.publish(base + "/delta", json.dumps(delta), qos=1)

    def start(self, timeout_s: float = 10.0) -> None:
        """Connects and starts serving in a background thread."""
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        if not self.ready.wait(timeout_s):
            self.stop()
            why = f"the broker refused the connection: {self.refused}" if self.refused else f"no connection within {timeout_s:.0f} s"
            raise ConnectionError(f"shadow service: MQTT broker {self.host}:{self.port}: {why}")

    def stop(self) -> None:
        """Disconnects."""
        self.client.loop_stop()
        self.client.disconnect()
