"""The hot layer's op builders: deterministic ids, guarded state updates, alarm lifecycle, summaries."""

import math
import statistics

import orjson
import pytest

from connectors.mongo import (
    alarm_ops,
    check_mongo_url,
    daily_totals,
    database_name,
    day_of,
    dead_letter_ops,
    hot_layer_ops,
    summary_ops,
    telemetry_ops,
)
from jobs.config import ConfigError, load_settings
from operators.windows import MetricPartial, WindowResult, window_row

HOUR = 3_600_000
T = 1_772_359_200_000  # 2026-03-01T10:00:00Z


def record(device, ts, **metrics):
    return {"device_id": device, "product_id": "prod-a", "device_ts": ts, "ingest_ts": ts + 400, "metrics": metrics or {"t": 1.0}}


def test_telemetry_ops_write_only_the_newest_state_per_device():
    records = [record("d1", T + 2000, t=3.0), record("d1", T, t=1.0), record("d2", T + 5, t=7.0), record("d1", T + 1000, t=2.0)]
    ops = telemetry_ops(records)
    assert {op.collection for op in ops} == {"device_state"}  # every reading is in Kafka and Iceberg, not here
    state = ops
    # per device: an upsert that cannot conflict, then an update guarded by the stored device time
    assert [(op.kind, op.filter.get("_id") or op.filter["$and"][0]["_id"]) for op in state] == [
        ("upsert", "d1"), ("update", "d1"), ("upsert", "d2"), ("update", "d2")]
    guarded = state[1]
    assert guarded.filter == {"$and": [{"_id": "d1"}, {"$or": [{"last_device_ts": {"$lt": T + 2000}}, {"last_device_ts": {"$exists": False}}]}]}
    fields = guarded.update["$set"]
    assert fields["metrics"] == {"t": 3.0} and fields["last_device_ts"] == T + 2000 and fields["last_ingest_ts"] == T + 2400
    assert fields["quality.clock_skew_ms"] == 400 and fields["quality.clock_suspect"] is False


def test_a_device_clock_far_from_receive_time_is_flagged():
    skewed = dict(record("d1", T), ingest_ts=T + 6 * 60_000)
    fields = telemetry_ops([skewed])[-1].update["$set"]
    assert fields["quality.clock_suspect"] is True and fields["quality.clock_skew_ms"] == 360_000


def test_dead_letters_flag_the_newest_rejection_of_known_devices():
    letters = [
        {"device_id": "d1", "failed_at": T, "reason_code": "invalid_json", "reason": "bad", "stage": "decode"},
        {"device_id": "d1", "failed_at": T + 5, "reason_code": "checksum", "reason": "crc", "stage": "decode"},
        {"device_id": None, "failed_at": T, "reason_code": "invalid_envelope", "reason": "x", "stage": "envelope"},
    ]
    ops = dead_letter_ops(letters)
    assert [op.kind for op in ops] == ["upsert", "update"] and ops[0].filter == {"_id": "d1"}
    assert ops[1].update["$set"]["quality.last_rejection"]["reason_code"] == "checksum"
    assert ops[1].filter["$and"][0] == {"_id": "d1"}
    assert {"quality.last_rejection.at": {"$lt": T + 5}} in ops[1].filter["$and"][1]["$or"]


def event(kind, alarm_id="a1", severity="high", ts=T, **extra):
    return {"event": kind, "alarm_id": alarm_id, "device_id": "d1", "product_id": "prod-a", "rule_id": "hot", "rule_version": "1",
            "severity": severity, "route": "notify", "device_ts": ts, "started_ts": T, "values": {"t": 90}, **extra}


def test_alarm_lifecycle_inserts_updates_and_removes_the_active_alarm():
    ops = alarm_ops([event("RAISED"), event("SEVERITY_CHANGED", severity="critical", ts=T + 1),
                     event("ACKNOWLEDGED", ts=T + 2, values={"by": "ops"}), event("CLEARED", ts=T + 3)])
    kinds = [(op.collection, op.kind) for op in ops]
    assert kinds == [
        ("alarms_active", "upsert"), ("device_state", "upsert"),
        ("device_state", "update"), ("alarms_active", "update"),
        ("alarms_active", "update"),
        ("alarms_active", "delete"), ("device_state", "update"),
    ]
    raised, current = ops[0].update["$setOnInsert"], ops[0].update["$set"]
    assert raised["rule_id"] == "hot" and raised["raised_ts"] == T and not set(raised) & set(current)
    assert current["severity"] == "high" and current["acknowledged"] is False and current["last_event"] == "RAISED"
    assert ops[1].update["$set"] == {"active_alarms.a1": {"rule_id": "hot", "severity": "high", "since_ts": T}}
    assert ops[2].update == {"$set": {"active_alarms.a1.severity": "critical"}}
    assert ops[3].update["$set"]["severity"] == "critical"
    assert ops[4].update["$set"]["acknowledged"] is True and ops[4].update["$set"]["acknowledged_by"] == "ops"
    assert ops[5].filter == {"_id": "a1"}
    assert ops[6].update == {"$unset": {"active_alarms.a1": ""}}
    assert [op.kind for op in alarm_ops([event("AUTO_RESOLVED")])] == ["delete", "update"]


def hour_row(product, start, readings, scope="product", size="1h"):
    partial = {}
    for ts, value in readings:
        if "t" in partial:
            partial["t"].add(ts, value)
        else:
            partial["t"] = MetricPartial.of(ts, value)
    return window_row(scope, product, product, WindowResult(size, start, partial))


def test_summaries_come_from_product_hours_only_and_recompute_each_day_once():
    rows = [hour_row("prod-a", T, [(T, 1.0), (T + 5, 3.0)]), hour_row("prod-a", T + HOUR, [(T + HOUR, 5.0)]),
            hour_row("d1", T, [(T, 1.0)], scope="device"), hour_row("prod-a", T, [(T, 1.0)], size="5m")]
    ops = summary_ops(rows)
    hours = [op for op in ops if op.collection == "product_summary_1h"]
    assert [op.filter["_id"] for op in hours] == [f"prod-a|{T}", f"prod-a|{T + HOUR}"]
    # Per-metric paths: a row with one metric of the hour leaves the hour's other metrics alone.
    assert hours[0].update["$set"]["metrics.t"]["avg"] == 2.0 and hours[0].update["$set"]["metrics.t"]["count"] == 2
    days = [op for op in ops if op.collection == "product_summary_1d"]
    assert [(op.kind, op.filter["_id"]) for op in days] == [("upsert", "prod-a|2026-03-01"), ("upsert", "prod-a|2026-03-01"),
                                                            ("daily", "prod-a|2026-03-01")]
    assert set(days[0].update["$set"]) == {"product_id", "day", "hours.10.metrics.t", "hours.10.partial.t"}
    assert set(days[1].update["$set"]) == {"product_id", "day", "hours.11.metrics.t", "hours.11.partial.t"}


def test_daily_totals_equal_the_statistics_of_all_the_days_readings():
    readings = {10: [(T, 1.0), (T + 7, 4.5), (T + 9, -2.0)], 11: [(T + HOUR, 8.0)], 13: [(T + 3 * HOUR, 0.5), (T + 3 * HOUR + 1, 2.5)]}
    doc = {"hours": {}}
    for hour, values in readings.items():
        row = hour_row("prod-a", T + (hour - 10) * HOUR, values)
        doc["hours"][f"{hour:02d}"] = {"partial": row["partial"]}
    totals = daily_totals(doc)
    values = [v for part in readings.values() for _, v in part]
    got = totals["metrics"]["t"]
    assert got["count"] == len(values) and got["min"] == min(values) and got["max"] == max(values)
    assert math.isclose(got["sum"], math.fsum(values)) and math.isclose(got["stddev"], statistics.stdev(values))
    assert got["first"] == 1.0 and got["last"] == 2.5 and totals["hours_reported"] == 3


def test_a_mixed_batch_is_sorted_by_kind():
    values = [orjson.dumps(v).decode() for v in (
        record("d1", T), event("RAISED"),
        {"device_id": "d1", "failed_at": T, "reason_code": "x", "reason": "y", "stage": "decode"},
        hour_row("prod-a", T, [(T, 1.0)]),
    )]
    collections = [op.collection for op in hot_layer_ops(values)]
    assert collections == ["device_state", "device_state", "device_state", "device_state",
                           "alarms_active", "device_state", "product_summary_1h", "product_summary_1d", "product_summary_1d"]


def test_day_of_is_utc():
    assert day_of(T) == "2026-03-01"
    assert day_of(T - 10 * HOUR - 1) == "2026-02-28"


@pytest.mark.parametrize("url, database", [
    ("mongodb://127.0.0.1:27017", "iotlink"), ("mongodb://h:1/hot", "hot"),
    ("mongodb://u:p@docdb.example:27017/iot?tls=true&retryWrites=false", "iot"),
])
def test_urls_name_their_database(url, database):
    assert database_name(check_mongo_url(url)) == database


@pytest.mark.parametrize("url", ["http://h:27017", "mongodb://", "h:27017"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        check_mongo_url(url)


def test_a_bad_mongo_url_fails_at_start_naming_the_field():
    with pytest.raises(ConfigError, match="mongo_url"):
        load_settings(None, {"mongo_url": "postgres://x"}, environ={})
    assert load_settings(None, {}, environ={"IOTLINK_MONGO_URL": "mongodb://m:27017/iotlink"}).mongo_url == "mongodb://m:27017/iotlink"
