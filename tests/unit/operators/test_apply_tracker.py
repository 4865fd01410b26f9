"""ApplyTracker: accepted shadow commands followed until the device reports their desired state."""

from operators.shadow import ApplyTracker, reported_covers


def command(command_id: str, desired: dict, device_id: str = "fire-0001") -> dict:
    return {"command_id": command_id, "device_id": device_id, "desired": desired, "action": "set"}


def test_report_covering_desired_applies_once():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("c1", {"fan": "restart", "mode": "auto"})
    tracker.expect(cmd, now=100.0)
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"fan": "restart", "mode": "auto", "temp": 21}) == [cmd]
    assert len(tracker) == 0
    assert tracker.reported("fire-0001", {"fan": "restart", "mode": "auto"}) == []
    assert tracker.expired(now=1_000.0) == []


def test_expect_twice_follows_the_command_once():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("c1", {"fan": "on"})
    tracker.expect(cmd, now=0.0)
    tracker.expect(cmd, now=5.0)
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"fan": "on"}) == [cmd]
    assert len(tracker) == 0


def test_report_split_over_two_patches_covers():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("c1", {"fan": "restart", "mode": "auto"})
    tracker.expect(cmd, now=0.0)
    assert tracker.reported("fire-0001", {"fan": "restart"}) == []
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"mode": "auto"}) == [cmd]
    assert len(tracker) == 0


def test_a_later_patch_overrides_an_earlier_value():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("c1", {"fan": "restart", "mode": "auto"})
    tracker.expect(cmd, now=0.0)
    assert tracker.reported("fire-0001", {"fan": "restart"}) == []
    assert tracker.reported("fire-0001", {"fan": "off"}) == []
    assert tracker.reported("fire-0001", {"mode": "auto"}) == []
    assert tracker.reported("fire-0001", {"fan": "restart"}) == [cmd]


def test_a_report_before_expect_is_ignored():
    tracker = ApplyTracker(apply_timeout_s=30)
    assert tracker.reported("fire-0001", {"fan": "restart"}) == []
    cmd = command("c1", {"fan": "restart", "mode": "auto"})
    tracker.expect(cmd, now=0.0)
    # The earlier fan report was not kept: mode alone does not cover the command.
    assert tracker.reported("fire-0001", {"mode": "auto"}) == []
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"fan": "restart"}) == [cmd]


def test_reports_of_another_device_do_not_apply():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("c1", {"fan": "on"})
    tracker.expect(cmd, now=0.0)
    assert tracker.reported("other-0002", {"fan": "on"}) == []
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"fan": "on"}) == [cmd]


def test_nested_desired_objects():
    tracker = ApplyTracker(apply_timeout_s=30)
    cmd = command("ota", {"ota": {"version": "2.1", "url": "https://x/fw.bin"}})
    tracker.expect(cmd, now=0.0)
    assert tracker.reported("fire-0001", {"ota": {"version": "2.0", "url": "https://x/fw.bin"}}) == []
    # A nested patch merges key by key: url stays, version is replaced.
    assert tracker.reported("fire-0001", {"ota": {"version": "2.1", "progress": 100}}) == [cmd]
    assert len(tracker) == 0


def test_forget_stops_following():
    tracker = ApplyTracker(apply_timeout_s=30)
    kept, dropped = command("c1", {"fan": "on"}), command("c2", {"relay": "open"})
    tracker.expect(kept, now=0.0)
    tracker.expect(dropped, now=0.0)
    tracker.forget(dropped)
    assert len(tracker) == 1
    assert tracker.reported("fire-0001", {"relay": "open"}) == []
    assert tracker.reported("fire-0001", {"fan": "on"}) == [kept]
    tracker.forget(kept)  # no longer followed: a no-op
    tracker.forget(command("never", {"x": 1}, device_id="unknown"))
    assert len(tracker) == 0
    assert tracker.expired(now=1_000.0) == []


def test_expired_returns_only_overdue_commands_and_stops_following_them():
    tracker = ApplyTracker(apply_timeout_s=10)
    early, late = command("c1", {"fan": "on"}), command("c2", {"relay": "open"}, device_id="pump-0002")
    tracker.expect(early, now=100.0)
    tracker.expect(late, now=105.0)
    assert tracker.expired(now=109.9) == []
    assert tracker.expired(now=110.0) == [early]  # the deadline itself is overdue
    assert len(tracker) == 1
    assert tracker.expired(now=112.0) == []
    assert tracker.reported("fire-0001", {"fan": "on"}) == []  # expired: no longer applied
    assert tracker.expired(now=115.0) == [late]
    assert len(tracker) == 0
    assert tracker.reported("pump-0002", {"relay": "open"}) == []


def test_several_commands_per_device():
    tracker = ApplyTracker(apply_timeout_s=10)
    fan, relay, both = command("c1", {"fan": "on"}), command("c2", {"relay": "open"}), command("c3", {"fan": "on", "relay": "open"})
    tracker.expect(fan, now=0.0)
    tracker.expect(relay, now=5.0)
    tracker.expect(both, now=6.0)
    assert len(tracker) == 3
    assert tracker.reported("fire-0001", {"fan": "on"}) == [fan]
    assert len(tracker) == 2
    assert tracker.reported("fire-0001", {"relay": "open"}) == [relay, both]
    assert len(tracker) == 0


def test_several_commands_expire_independently():
    tracker = ApplyTracker(apply_timeout_s=10)
    fan, relay = command("c1", {"fan": "on"}), command("c2", {"relay": "open"})
    tracker.expect(fan, now=0.0)
    tracker.expect(relay, now=5.0)
    assert tracker.expired(now=12.0) == [fan]
    assert tracker.reported("fire-0001", {"fan": "on", "relay": "open"}) == [relay]
    assert len(tracker) == 0


def test_reported_covers():
    assert reported_covers({}, {})
    assert reported_covers({"fan": "on"}, {"fan": "on", "mode": "auto"})
    assert not reported_covers({"fan": "on"}, {"fan": "off"})
    assert not reported_covers({"fan": "on"}, {})
    assert reported_covers({"ota": {"version": "2.1"}}, {"ota": {"version": "2.1", "url": "u"}})
    assert not reported_covers({"ota": {"version": "2.1", "url": "u"}}, {"ota": {"version": "2.1"}})
    assert not reported_covers({"ota": {"version": "2.1"}}, {"ota": "2.1"})
    assert not reported_covers({"level": 1}, {"level": "1"})
    assert reported_covers({"limits": {"hi": 50, "lo": {"warn": 5}}}, {"limits": {"hi": 50, "lo": {"warn": 5, "crit": 1}}})
