"""The closed loop of client flows 3 and 4, end to end on the embedded stack: an overheating
device raises one critical alarm, its automatic action reaches the simulated device through the
shadow, the device cools down and reports, the alarm ends AUTO_RESOLVED, and PostgreSQL holds
each alarm event and the applied command once."""

import threading
import time

import orjson
import psycopg
import pytest
from job_runs import with_own_topics
from kafka import KafkaProducer

from connectors.kafka import read_topic
from iotlink.control_sink import ControlStats, run_control_sink
from iotlink.shadow_service import ShadowService
from iotlink.simulator import FleetSimulator, ShadowFollower, SimDevice, encode_for_kafka
from jobs.telemetry_job import RunOptions, create_job

pytestmark = pytest.mark.integration
RULE_ID = "overheat-loop"
RULES = f"""
ruleSetId: prod-a-loop
productId: prod-a
version: "loop-1"
actions:
  restart-fan:
    desired: {{fan: "restart"}}
    verifyWithin: 2m
rules:
  - ruleId: {RULE_ID}
    type: threshold
    condition: "metrics.tempC > 80"
    clearCondition: "metrics.tempC < 75"
    severity: critical
    autoAction: restart-fan
"""
TICK_S = 0.5
RAMP_STEPS = 24  # an overheating device passes 80 C after about 20 ticks


def test_overheat_critical_command_cool_down_auto_resolved(stack, settings, tmp_path):
    if stack.mqtt_broker != "mosquitto":
        pytest.skip("the amqtt fallback broker does not route $aws/... topics; install mosquitto (scripts/bootstrap.sh does as root)")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "prod-a.yaml").write_text(RULES)
    settings = with_own_topics(settings.model_copy(update={
        "data_dir": tmp_path, "rules_dir": rules_dir,
        "flink": settings.flink.model_copy(update={"out_of_orderness_ms": 1000, "idleness_ms": 2000}),
    }), "it-loop", raw_partitions=2)
    topics = settings.topics
    fleet = [SimDevice("loop-hot-1", "nohub", "json", "overheat"), SimDevice("loop-hot-2", "nohub", "json", "overheat"),
             SimDevice("loop-ok-1", "nohub", "json", "normal")]
    hot = {d.device_id for d in fleet if d.profile == "overheat"}
    sim = FleetSimulator(fleet, seed=11, interval_ms=int(TICK_S * 1000))

    shadows = ShadowService(settings.mqtt_url, tmp_path / "shadows.json", client_id="loop-shadow-service")
    stop, control = threading.Event(), ControlStats()
    # Daemon, and stopped in ``finally`` whatever fails first: a sink left running keeps the shadow
    # topics busy for the tests after this one and pytest from exiting.
    sink = threading.Thread(target=run_control_sink, args=(settings, stop, control), daemon=True)
    follower = client = producer = None
    resolved_at_step = None
    try:
        shadows.start()
        follower = ShadowFollower(settings.mqtt_url, lambda device, desired: sim.apply_desired(device, desired, RAMP_STEPS))
        sink.start()
        env = create_job(settings, RunOptions(job_name="it-loop"))
        client = env.execute_async("it-loop")
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
        start_ts = int(time.time() * 1000)
        for step in range(240):
            for message in sim.tick(start_ts + step * sim.interval_ms, step, RAMP_STEPS):
                key, value = encode_for_kafka(message, int(time.time() * 1000))
                producer.send(topics.raw, key=key, value=value)
            producer.flush()
            if step % 4 == 0 and resolved_at_step is None and resolved(settings, hot, start_ts) == hot:
                resolved_at_step = step
            if resolved_at_step is not None and step >= resolved_at_step + 4:
                break
            time.sleep(max(0.0, start_ts / 1000 + (step + 1) * TICK_S - time.time()))
    finally:
        if producer is not None:
            producer.close()
        if client is not None:
            client.cancel().result()
        stop.set()
        if sink.is_alive():
            sink.join(30)
        if follower is not None:
            follower.close()
        shadows.stop()
    assert resolved_at_step is not None, f"no AUTO_RESOLVED for {sorted(hot)} in PostgreSQL; control sink {control}"

    with psycopg.connect(settings.postgres_url) as conn:
        rows = conn.execute(
            "SELECT alarm_id, event, device_ts, device_id, severity FROM alarm_events WHERE rule_id = %s AND device_ts >= %s "
            "ORDER BY device_id, device_ts", (RULE_ID, start_ts),
        ).fetchall()
        commands = conn.execute(
            "SELECT device_id, action, desired, status FROM control_cmd WHERE rule_id = %s AND issued_ts >= %s ORDER BY device_id",
            (RULE_ID, start_ts),
        ).fetchall()
    # PostgreSQL holds each device's lifecycle once: one critical alarm, auto-resolved.
    assert {d: [r[1] for r in rows if r[3] == d] for d in hot} == {d: ["RAISED", "AUTO_RESOLVED"] for d in hot}, rows
    assert {r[4] for r in rows} == {"critical"} and not [r for r in rows if r[3] not in hot]
    # The alarm topic, read committed, holds the same events, each once.
    events = [e for e in map(orjson.loads, read_topic(settings.bootstrap_servers, topics.alarms)) if e["rule_id"] == RULE_ID]
    assert sorted((e["alarm_id"], e["event"], e["device_ts"], e["device_id"], e["severity"]) for e in events) == sorted(rows), events
    assert commands == [(d, "restart-fan", {"fan": "restart"}, "applied") for d in sorted(hot)]
    assert control.applied == 2 and control.rejected == control.timed_out == 0
    for device in hot:
        shadow = shadows.shadows[device]
        assert shadow.desired == {"fan": "restart"} and shadow.reported == {"fan": "restart"}
        assert sim.applied[device] == {"fan": "restart"}
    assert "loop-ok-1" not in sim.applied


def resolved(settings, devices, since_ts) -> set[str]:
    """The devices whose loop alarm PostgreSQL already records as AUTO_RESOLVED."""
    try:
        with psycopg.connect(settings.postgres_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT device_id FROM alarm_events WHERE rule_id = %s AND event = 'AUTO_RESOLVED' AND device_ts >= %s",
                (RULE_ID, since_ts),
            ).fetchall()
    except psycopg.Error:
        return set()
    return {r[0] for r in rows} & devices
