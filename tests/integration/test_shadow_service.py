"""The shadow service on the embedded MQTT broker: AWS shadow topics, desired -> delta ->
reported, client-token idempotency, rejections, and shadows kept across a restart."""

import json
import queue
import threading

import pytest

from connectors.mqtt_connection import paho_client
from iotlink.shadow_service import ShadowService

pytestmark = pytest.mark.integration


def device_client(mqtt_url, thing, inbox):
    subscribed = threading.Event()
    client, address = paho_client(mqtt_url, f"device-{thing}")  # the embedded broker's login is in the URL
    client.on_message = lambda c, u, m: inbox.put((m.topic, json.loads(m.payload) if m.payload else None))
    # Subscribing before the broker's CONNACK is silently refused by paho: subscribe on connect.
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"$aws/things/{thing}/shadow/#", qos=1)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.connect(address.host, address.port)
    client.loop_start()
    assert subscribed.wait(10), "device could not subscribe"
    return client


def next_on(inbox, suffix, timeout=10):
    while True:
        topic, payload = inbox.get(timeout=timeout)
        if topic.endswith(suffix):
            return payload


def test_desired_state_reaches_the_device_and_its_report_closes_the_loop(stack, settings, tmp_path):
    if stack.mqtt_broker != "mosquitto":
        pytest.skip("the amqtt fallback broker does not route $aws/... topics; install mosquitto (scripts/bootstrap.sh does as root)")
    store = tmp_path / "shadows.json"
    service = ShadowService(settings.mqtt_url, store)
    service.start()
    inbox: queue.Queue = queue.Queue()
    device = device_client(settings.mqtt_url, "fire-0042", inbox)
    try:
        topic = "$aws/things/fire-0042/shadow/update"
        command = {"state": {"desired": {"relay": "open"}}, "clientToken": "cmd-1"}
        device.publish(topic, json.dumps(command), qos=1)
        assert next_on(inbox, "/update/accepted")["clientToken"] == "cmd-1"
        delta = next_on(inbox, "/update/delta")
        assert delta["state"] == {"relay": "open"} and delta["version"] == 1
        device.publish(topic, json.dumps({"state": {"reported": {"relay": "open"}}}), qos=1)
        assert next_on(inbox, "/update/accepted")["version"] == 2
        # The same command again (a restart re-sent it): accepted, nothing applied, no delta.
        device.publish(topic, json.dumps(command), qos=1)
        assert next_on(inbox, "/update/accepted")["version"] == 2
        device.publish(topic, json.dumps({"state": {"desired": {"relay": "closed"}}, "version": 99}), qos=1)
        assert next_on(inbox, "/update/rejected")["code"] == 409
        device.publish("$aws/things/fire-0042/shadow/get", b"", qos=1)
        document = next_on(inbox, "/get/accepted")
        assert document["state"] == {"desired": {"relay": "open"}, "reported": {"relay": "open"}} and document["version"] == 2
    finally:
        device.loop_stop()
        device.disconnect()
        service.stop()
    restarted = ShadowService(settings.mqtt_url, store, client_id="iotlink-shadow-service-2")
    assert restarted.shadows["fire-0042"].version == 2 and "cmd-1" in restarted.shadows["fire-0042"].tokens
