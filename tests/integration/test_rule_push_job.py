"""Rule sets change while the job runs: a pushed version is put in force, an invalid one is
rejected on the status topic and the previous version stays; a rule failing at run time is
reported there with its reason."""

import time

import orjson
import pytest
from job_runs import run_until_caught_up, with_own_topics
from kafka import KafkaProducer

from connectors.kafka import end_offsets, read_topic
from iotlink.cli import main
from jobs.telemetry_job import RunOptions
from operators.envelope import RawEnvelope, build_envelope

pytestmark = pytest.mark.integration
T0 = 1_756_653_767_000 + 20 * 86_400_000


def send_readings(settings, device_id, readings, product_id="prod-a"):
    """Sends (seconds after T0, tempC) readings; returns how many."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    for seconds, temp in readings:
        ts = T0 + seconds * 1000
        payload = orjson.dumps({"device_timestamp": ts, "data": {"metrics": {"tempC": temp}}})
        envelope = RawEnvelope(payload=payload, source="mqtt", received_at=ts + 50, device_id=device_id, product_id=product_id, format="json")
        producer.send(settings.topics.raw, key=device_id.encode(), value=build_envelope(envelope)).get(30)
    producer.close()
    return len(readings)


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_pushed_rule_set_takes_over_and_an_invalid_one_is_rejected(settings, tmp_path, capsys):
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), "it-push")
    # The commands under test take the topic names from a config file, as an operator's would.
    config = tmp_path / "iotlink.yaml"
    config.write_text(orjson.dumps({"topics": settings.topics.model_dump()}).decode())
    device = "push-dev-1"
    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    # Each reading is evaluated on arrival (flink.alarm_reorder_ms 0).
    first = send_readings(settings, device, [(0, 70.0), (1, 70.0), (2, 70.0), (3, 70.0), (20, 20.0)])
    # A product without a rule set at the start: its readings do not reach the alarm operator
    # until a rule set for it is pushed.
    newcomer = "push-dev-new"
    first += send_readings(settings, newcomer, [(0, 90.0), (1, 90.0)], product_id="prod-new")
    rules_new = tmp_path / "prod-new.yaml"
    rules_new.write_text(
        "ruleSetId: prod-new-push\nproductId: prod-new\nversion: new-1\nrules:\n"
        "  - {ruleId: temp-threshold-prod-new, type: threshold, condition: 'metrics.tempC > 60', severity: high}\n"
    )
    rules_v2 = tmp_path / "prod-a-v2.yaml"
    rules_v2.write_text(
        "ruleSetId: prod-a-push\nproductId: prod-a\nversion: push-2\nrules:\n"
        "  - {ruleId: temp-threshold-prod-a, type: threshold, condition: 'metrics.tempC > 60', severity: high}\n"
        # Valid, but it fails on every reading: reported as errors on the status topic, not a crash.
        "  - {ruleId: broken-ratio, type: threshold, condition: 'metrics.tempC / (metrics.tempC - metrics.tempC) > 1', severity: low}\n"
    )
    endpoint = ["--bootstrap-servers", settings.bootstrap_servers, "--config", str(config)]

    def ours(device_id=device):
        return [e for e in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.alarms)) if e["device_id"] == device_id]

    def while_running(rest, job_id):
        # Under the file's rule (tempC > 80) the first readings raise nothing.
        assert main(["rules", "push", str(rules_v2), *endpoint, "--wait", "90"]) == 0
        assert "job: accepted" in capsys.readouterr().out
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        bad = {"product_id": "prod-a", "version": "bad-3", "document": {"productId": "prod-a", "rules": [{"ruleId": "x", "type": "threshold"}]}}
        producer.send(settings.topics.rules, key=b"prod-a", value=orjson.dumps(bad)).get(30)
        producer.close()
        rejected = wait_for(
            lambda: [s for s in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.rules_status))
                     if s["status"] == "rejected" and b"bad-3" in s["message"].encode()],
            90, "the rejected status",
        )
        assert "needs condition or levels" in " ".join(rejected[0]["problems"])
        # Hot readings only: the alarm stays active until the operator has acknowledged it.
        send_readings(settings, device, [(60, 70.0), (61, 71.0)])
        raised = wait_for(lambda: [e for e in ours() if e["event"] == "RAISED"], 120, "the alarm under the pushed rules")
        errors = wait_for(
            lambda: [s for s in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.rules_status))
                     if s["status"] == "errors"],
            90, "the rule errors status",
        )
        assert errors[0]["product_id"] == "prod-a" and errors[0]["version"] == "push-2"
        assert errors[0]["errors"][0]["message"].startswith("rule broken-ratio:") and "division by zero" in errors[0]["errors"][0]["message"]
        capsys.readouterr()
        assert main(["rules", "status", *endpoint]) == 0
        shown = capsys.readouterr().out
        assert "prod-a  accepted  version push-2" in shown and "rule broken-ratio:" in shown, shown
        # An operator acknowledges it through the control topic, then the device cools down.
        assert main(["alarms", "ack", "--device", device, "--alarm", raised[0]["alarm_id"], "--by", "it-operator", *endpoint]) == 0
        wait_for(lambda: [e for e in ours() if e["event"] == "ACKNOWLEDGED"], 120, "the acknowledgement")
        send_readings(settings, device, [(80, 50.0), (90, 20.0)])
        cleared = wait_for(lambda: [e for e in ours() if e["event"] == "CLEARED"], 120, "the clear")
        assert ours(newcomer) == []  # hot, but no rule set for prod-new yet
        assert main(["rules", "push", str(rules_new), *endpoint, "--wait", "90"]) == 0
        send_readings(settings, newcomer, [(60, 91.0), (61, 92.0)], product_id="prod-new")
        new_alarms = wait_for(lambda: [e for e in ours(newcomer) if e["event"] == "RAISED"], 120, "the alarm of the pushed product")
        assert [(e["rule_id"], e["rule_version"], e["device_ts"]) for e in new_alarms] == [("temp-threshold-prod-new", "new-1", T0 + 60_000)]
        return cleared

    partitions = sorted(before) or [0, 1, 2, 3]
    run_until_caught_up(settings, RunOptions(start_offsets={p: before.get(p, 0) for p in partitions}, job_name="it-rule-push"),
                        first, while_running=while_running, timeout_s=400)
    events = ours()
    acknowledged = [e for e in events if e["event"] == "ACKNOWLEDGED"]
    assert [(e["event"], e["rule_version"], e["device_ts"]) for e in events if e["event"] != "ACKNOWLEDGED"] == [
        ("RAISED", "push-2", T0 + 60_000),
        ("CLEARED", "push-2", T0 + 80_000),
    ]
    assert len(acknowledged) == 1 and acknowledged[0]["values"] == {"by": "it-operator"}
    assert acknowledged[0]["alarm_id"] == events[0]["alarm_id"]
    notified = [n for n in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.notifications)) if n["device_id"] == device]
    assert [(n["event"], n["alarm_id"]) for n in notified] == [("RAISED", events[0]["alarm_id"])]
