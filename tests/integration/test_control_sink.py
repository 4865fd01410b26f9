"""Shadow commands from iotlink.commands reach the device shadow once, and control_cmd records
each command's outcome once, even when the same command is delivered twice."""

import json
import threading
import time

import psycopg
import pytest
from kafka import KafkaProducer

from iotlink.control_sink import ControlStats, run_control_sink
from iotlink.shadow_service import ShadowService

pytestmark = pytest.mark.integration


def test_commands_become_desired_state_once_and_are_recorded(stack, settings, tmp_path):
    if stack.mqtt_broker != "mosquitto":
        pytest.skip("the amqtt fallback broker does not route $aws/... topics; install mosquitto (scripts/bootstrap.sh does as root)")
    service = ShadowService(settings.mqtt_url, tmp_path / "shadows.json", client_id="shadow-for-control-sink")
    service.start()
    command = {"command_id": "cmd-it-1", "device_id": "fire-0100", "alarm_id": "a-1", "rule_id": "arc", "action": "cut-power",
               "desired": {"relay": "open"}, "issued_ts": 1_772_359_200_000, "verify_by_ts": 1_772_359_500_000}
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for _ in range(2):  # delivered twice, as after a crash before the offset commit
        producer.send(settings.topics.commands, key=b"fire-0100", value=json.dumps(command).encode()).get(30)
    producer.close()
    stop, stats = threading.Event(), ControlStats()
    worker = threading.Thread(target=run_control_sink, args=(settings, stop, stats), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while stats.accepted < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(30)
        service.stop()
    assert (stats.sent, stats.accepted, stats.rejected, stats.timed_out) == (2, 2, 0, 0)
    shadow = service.shadows["fire-0100"]
    assert shadow.desired == {"relay": "open"} and shadow.version == 1  # applied once
    with psycopg.connect(settings.postgres_url) as conn:
        rows = conn.execute("SELECT command_id, device_id, action, desired, status FROM control_cmd WHERE command_id = 'cmd-it-1'").fetchall()
    assert rows == [("cmd-it-1", "fire-0100", "cut-power", {"relay": "open"}, "accepted")]
