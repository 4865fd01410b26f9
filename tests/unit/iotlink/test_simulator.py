import orjson
import pytest

from iotlink.simulator import FleetSimulator, build_fleet, encode_for_kafka, parse_profile_mix, with_repeats
from operators.decode import DecoderRegistry, decode_raw_record
from operators.topic import parse_device_topic

START = 1_756_653_767_000


def messages(seed, profiles="normal", devices=30, steps=10):
    fleet = build_fleet(devices, profiles=parse_profile_mix(profiles), seed=seed)
    return list(FleetSimulator(fleet, seed=seed).messages(START, steps))


def test_same_seed_same_messages_different_seed_differs():
    a = [(m.device.device_id, m.device_ts, m.payload) for m in messages(3, "normal=50,garbage=25,late=25")]
    b = [(m.device.device_id, m.device_ts, m.payload) for m in messages(3, "normal=50,garbage=25,late=25")]
    c = [(m.device.device_id, m.device_ts, m.payload) for m in messages(4, "normal=50,garbage=25,late=25")]
    assert a == b and a != c


def test_fleet_has_hubs_children_and_standalone_devices_with_valid_topics():
    fleet = build_fleet(30)
    kinds = {parse_device_topic(d.topic()).kind for d in fleet}
    assert kinds == {"hub", "child", "standalone"}
    assert {d.form for d in fleet} == {"json", "hex", "csv"}


def test_valid_json_messages_decode_and_garbage_is_rejected():
    registry = DecoderRegistry()
    fleet = build_fleet(40, forms=("json",), profiles={"normal": 1, "garbage": 1}, seed=1)
    ok = bad = 0
    for message in FleetSimulator(fleet, seed=1).messages(START, 8):
        _, value = encode_for_kafka(message, START + 60_000)
        out = decode_raw_record(value, registry, START)
        assert (out.dead_letter is None) == message.valid
        ok += message.valid
        bad += not message.valid
    assert ok > 0 and bad > 0


def test_profiles_shape_the_traffic():
    over = [m for m in messages(1, "overheat", devices=3, steps=20) if m.device.form == "json"]
    temps = [orjson.loads(m.payload)["data"]["metrics"]["tempC"] for m in over]
    assert max(temps) > 80 and temps[0] < 70
    silent = messages(1, "nodata", devices=3, steps=30)
    assert len(silent) == 3 * 10  # silent after the first third
    late = messages(1, "late", devices=3, steps=5)
    assert any(m.device_ts < START + (i // 3) * 1000 for i, m in enumerate(late))


def test_unknown_profile_or_form_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        parse_profile_mix("normal,angry")
    with pytest.raises(ValueError, match="unknown payload form"):
        build_fleet(3, forms=("xml",))


def test_repeats_follow_their_original_at_about_the_asked_share():
    sent = messages(5, devices=50, steps=40)
    out = list(with_repeats(sent, 10, seed=1))
    originals = [m for m, repeated in out if not repeated]
    assert originals == sent
    for i, (message, repeated) in enumerate(out):
        if repeated:
            assert out[i - 1] == (message, False)
    share = sum(repeated for _, repeated in out) / len(sent)
    assert 0.07 < share < 0.13, share
    assert list(with_repeats(sent, 10, seed=1)) == out
    assert not any(repeated for _, repeated in with_repeats(sent, 0, seed=1))


def test_live_device_times_follow_the_wall_clock(monkeypatch):
    import argparse

    import iotlink.simulator as simulator
    from jobs.config import Settings

    sent = []
    monkeypatch.setattr(simulator, "kafka_publisher", lambda *_: (lambda message, received_at: sent.append((message, received_at)), lambda: None))
    args = argparse.Namespace(devices=10, rate=50.0, duration=1.0, count=None, profile="normal", forms="json", seed=1,
                              target="kafka", mqtt_env="dev", repeat=0.0)
    stats = simulator.run_simulation(Settings(), args)
    assert stats.sent == len(sent) == 50
    # each reading carries the time it was sent at (a tick's messages go out within a few ms)
    assert max(abs(message.device_ts - received_at) for message, received_at in sent) < 150
