"""Alarm rules in the job: the Flink operator and the offline replay give identical events."""

from collections import Counter

import orjson
import psycopg
import pytest
from job_runs import with_own_topics
from kafka import KafkaProducer

from connectors.kafka import end_offsets, read_topic
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from jobs.telemetry_job import RunOptions, rules_factory_for, run_telemetry_job
from operators.rule_loading import load_rule_sets, replay

pytestmark = pytest.mark.integration
START = 1_756_653_767_000 + 10 * 86_400_000
RECEIVED = START + 200_000


def test_overheating_devices_raise_the_same_alarms_in_flink_and_in_replay(settings, tmp_path):
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), "it-alarms")
    assert rules_factory_for(settings) is not None
    before = end_offsets(settings.bootstrap_servers, settings.topics.raw)
    fleet = build_fleet(24, profiles=parse_profile_mix("normal=50,overheat=25,late=25"), forms=("json",), seed=3)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10)
    ends = dict(before)
    sent: dict[str, list[int]] = {}
    for message in FleetSimulator(fleet, seed=3).messages(START, 60):
        key, value = encode_for_kafka(message, RECEIVED)
        sent.setdefault(message.device.device_id, []).append(message.device_ts)
        meta = producer.send(settings.topics.raw, key=key, value=value).get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    partitions = sorted(set(before) | set(ends))
    run_telemetry_job(
        settings,
        RunOptions(
            start_offsets={p: before.get(p, 0) for p in partitions},
            stop_offsets={p: ends.get(p, 0) for p in partitions},
            job_name="it-alarms",
        ),
    )
    devices = {d.device_id for d in fleet}
    telemetry = [r for r in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.telemetry)) if r["ingest_ts"] == RECEIVED]
    flink_events = [e for e in map(orjson.loads, read_topic(settings.bootstrap_servers, settings.topics.alarms))
                    if e["device_id"] in devices and START <= e["device_ts"] < START + 3_600_000]
    # The telemetry topic keeps each device's order as sent (the replay below relies on it).
    received: dict[str, list[int]] = {}
    for record in telemetry:
        received.setdefault(record["device_id"], []).append(record["device_ts"])
    assert received == sent
    rule_sets = load_rule_sets([settings.rules_dir])
    replayed = [e for e in replay(telemetry, rule_sets, settings.flink.alarm_reorder_ms, until_ts=2**62) if "command" not in e]

    def key(event):
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)

    overheating = {d.device_id for d in fleet if d.profile == "overheat"}
    raised = Counter(e["device_id"] for e in flink_events if e["event"] == "RAISED")
    assert overheating and set(raised) == overheating
    assert all(count == 1 for count in raised.values())
    assert Counter(map(key, flink_events)) == Counter(map(key, replayed))
    # PostgreSQL alarm_events holds exactly these events, each once.
    with psycopg.connect(settings.postgres_url) as conn:
        rows = conn.execute(
            'SELECT alarm_id, event, device_ts, severity, "values" FROM alarm_events '
            "WHERE device_id = ANY(%s) AND device_ts >= %s AND device_ts < %s",
            (sorted(devices), START, START + 3_600_000),
        ).fetchall()
    assert Counter((*row[:4], key(row[4])) for row in rows) == Counter(
        (e["alarm_id"], e["event"], e["device_ts"], e["severity"], key(e["values"])) for e in flink_events
    )
