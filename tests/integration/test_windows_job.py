"""Windowed aggregates in PostgreSQL equal what plain Python computes from the same input:
1m/5m/1h per device and per product, with late records inside the allowed lateness and
redelivered duplicates in the input."""

import math
import statistics
from collections import defaultdict

import psycopg
import pytest
from job_runs import with_own_topics
from kafka import KafkaProducer

from connectors.kafka import read_topic, scan_end_offsets
from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix
from jobs.telemetry_job import RunOptions, decoder_registry_factory, run_telemetry_job
from operators.decode import decode_raw_record
from operators.windows import SIZES, numeric_metrics

pytestmark = pytest.mark.integration
START = 1_756_653_767_000 + 30 * 86_400_000


def expected_aggregates(records):
    """{(table, scope, key, metric, window_start): (count, min, max, sum, avg, stddev, first, last)}."""
    groups = defaultdict(list)
    for r in records:
        for metric, value in numeric_metrics(r["metrics"]).items():
            for size_name, size in SIZES.items():
                start = r["device_ts"] - r["device_ts"] % size
                for scope, key in (("device", r["device_id"]), ("product", r["product_id"])):
                    groups[(f"agg_{size_name}", scope, key, metric, start)].append((r["device_ts"], value))
    out = {}
    for key, readings in groups.items():
        values = [v for _, v in readings]
        out[key] = (
            len(values), min(values), max(values), math.fsum(values), math.fsum(values) / len(values),
            statistics.stdev(values) if len(values) > 1 else None, min(readings)[1], max(readings)[1],
        )
    return out


def close(a, b):
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_postgres_aggregates_equal_an_independent_computation(settings, tmp_path):
    settings = with_own_topics(settings.model_copy(update={"data_dir": tmp_path}), "it-windows")
    before = scan_end_offsets(settings.bootstrap_servers, settings.topics.raw)
    fleet = build_fleet(12, forms=("json", "hex", "csv"), profiles=parse_profile_mix("normal=60,late=25,garbage=15"), seed=31)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10)
    values, ends = [], dict(before)
    messages = list(FleetSimulator(fleet, seed=31, interval_ms=2_000).messages(START, 200))  # 400 s of device time
    messages += messages[::17]  # redelivered duplicates, as a QoS 1 bridge may produce
    for message in messages:
        # Received half a second after the device time: hex and CSV devices send no time of
        # their own, so their device time is this receive time.
        key, value = encode_for_kafka(message, message.device_ts + 500)
        meta = producer.send(settings.topics.raw, key=key, value=value).get(30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        values.append(value)
    producer.close()
    partitions = sorted(set(before) | set(ends))
    run_telemetry_job(settings, RunOptions(
        start_offsets={p: before.get(p, 0) for p in partitions}, stop_offsets={p: ends.get(p, 0) for p in partitions},
        job_name="it-windows",
    ))
    registry = decoder_registry_factory(settings)()
    records, seen = [], set()
    for value in values:
        for record in decode_raw_record(value, registry, 0).records:
            identity = (record["device_id"], record["device_ts"], repr(sorted(record["metrics"].items())))
            if identity not in seen:  # the duplicate suppression the job does
                seen.add(identity)
                records.append(record)
    want = expected_aggregates(records)
    devices = sorted({d.device_id for d in fleet})
    products = sorted({r["product_id"] for r in records})
    got = {}
    with psycopg.connect(settings.postgres_url) as conn:
        for table in ("agg_1m", "agg_5m", "agg_1h"):
            rows = conn.execute(
                f"SELECT scope, key, metric, window_start, count, min, max, sum, avg, stddev, first, last FROM {table} "
                "WHERE ((scope = 'device' AND key = ANY(%s)) OR (scope = 'product' AND key = ANY(%s))) "
                "AND window_start >= %s AND window_start < %s",
                (devices, products, START - 3_600_000, START + 3_600_000),
            ).fetchall()
            for scope, key, metric, start, *stats in rows:
                got[(table, scope, key, metric, start)] = tuple(stats)
    assert len(want) > 200
    missing = set(want) - set(got)
    late = read_topic(settings.bootstrap_servers, settings.topics.late)
    assert set(got) == set(want), (
        f"{len(missing)} windows missing, {len(set(got) - set(want))} extra; {len(late)} records archived as too late: {late[:2]}"
    )
    wrong = {k: (got[k], want[k]) for k in want if not all(close(a, b) for a, b in zip(got[k], want[k], strict=True))}
    assert not wrong, list(wrong.items())[:5]
