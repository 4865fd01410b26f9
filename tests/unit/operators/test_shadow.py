"""Device shadow semantics (AWS IoT Device Shadow): desired/reported/delta/version, tokens."""

import pytest

from operators.shadow import Shadow, ShadowRejected, delta, desired_update, parse_shadow_topic, update_topic

TS = 1_772_359_200_000


def test_desired_then_reported_closes_the_delta():
    shadow = Shadow()
    accepted, d = shadow.update({"state": {"desired": {"fan": "restart", "mode": "auto"}}, "clientToken": "c1"}, TS)
    assert accepted == {"state": {"desired": {"fan": "restart", "mode": "auto"}}, "version": 1, "timestamp": TS // 1000, "clientToken": "c1"}
    assert d == {"state": {"fan": "restart", "mode": "auto"}, "version": 1, "timestamp": TS // 1000, "clientToken": "c1"}
    accepted, d = shadow.update({"state": {"reported": {"fan": "restart"}}}, TS + 1000)
    assert accepted["version"] == 2 and d is None  # deltas follow desired updates only, as in AWS IoT
    accepted, d = shadow.update({"state": {"reported": {"mode": "auto"}}}, TS + 2000)
    assert d is None
    doc = shadow.document(TS + 3000)
    assert doc["state"] == {"desired": {"fan": "restart", "mode": "auto"}, "reported": {"fan": "restart", "mode": "auto"}}
    assert doc["version"] == 3


def test_a_repeated_client_token_is_not_applied_twice():
    shadow = Shadow()
    request = {"state": {"desired": {"relay": "open"}}, "clientToken": "cmd-1"}
    shadow.update(request, TS)
    shadow.update({"state": {"reported": {"relay": "open"}}}, TS + 1)
    accepted, d = shadow.update(request, TS + 2)
    assert shadow.version == 2 and d is None
    assert accepted["clientToken"] == "cmd-1"


def test_version_conflict_and_bad_requests_are_rejected():
    shadow = Shadow()
    shadow.update({"state": {"desired": {"a": 1}}}, TS)
    with pytest.raises(ShadowRejected) as conflict:
        shadow.update({"state": {"desired": {"a": 2}}, "version": 7}, TS)
    assert conflict.value.code == 409
    for bad in ({}, {"state": 1}, {"state": {"wanted": {}}}, {"state": {"desired": [1]}}):
        with pytest.raises(ShadowRejected) as info:
            shadow.update(bad, TS)
        assert info.value.code == 400
    assert shadow.version == 1


def test_null_deletes_and_nested_delta():
    shadow = Shadow()
    shadow.update({"state": {"desired": {"ota": {"version": "2.1", "url": "https://x/fw.bin"}, "fan": "on"}}}, TS)
    shadow.update({"state": {"reported": {"ota": {"version": "2.0", "url": "https://x/fw.bin"}, "fan": "on"}}}, TS)
    assert delta(shadow.desired, shadow.reported) == {"ota": {"version": "2.1"}}
    shadow.update({"state": {"desired": {"fan": None}}}, TS)
    assert "fan" not in shadow.desired


def test_topics_and_commands():
    assert update_topic("fire-0001") == "$aws/things/fire-0001/shadow/update"
    assert parse_shadow_topic("$aws/things/fire-0001/shadow/update/accepted") == ("fire-0001", "update/accepted")
    assert parse_shadow_topic("iotlink/x") is None
    topic, request = desired_update({"device_id": "d1", "command_id": "c9", "desired": {"relay": "open"}})
    assert (topic, request) == ("$aws/things/d1/shadow/update", {"state": {"desired": {"relay": "open"}}, "clientToken": "c9"})
