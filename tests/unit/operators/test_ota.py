"""Stage selection, update outcomes and gate arithmetic of firmware rollouts."""

import pytest
from pydantic import ValidationError

from operators.ota import (
    Artifact,
    Release,
    Stage,
    StageCounts,
    alarm_rise,
    command_id,
    count_stage,
    firmware_desired,
    gate,
    parse_stages,
    reported_firmware,
    selected,
    skip_reason,
    stage_members,
    update_outcome,
)

OLD = Artifact(version="1.0.0", url="http://files/fw-1.0.0.bin", sha256="a" * 64)
NEW = Artifact(version="2.0.1", url="http://files/fw-2.0.1.bin", sha256="b" * 64)


def release(**kw) -> Release:
    return Release(release_id=kw.pop("release_id", "r1"), product_id="prod-a", target=NEW, previous=OLD, **kw)


def fleet(n: int, product: str = "prod-a") -> dict[str, str]:
    return {f"dev-{i:04d}": product for i in range(n)}


class TestStageMembers:
    def test_default_stages_take_5_then_20_then_75_percent_of_200(self):
        devices = selected(release(), fleet(200))
        stages = stage_members(release(), devices)
        assert [len(s) for s in stages] == [10, 40, 150]
        assert sorted(d for s in stages for d in s) == devices  # every device once

    def test_the_same_release_picks_the_same_canary_whatever_the_order(self):
        devices = selected(release(), fleet(200))
        assert stage_members(release(), devices)[0] == stage_members(release(), list(reversed(devices)))[0]

    def test_another_release_picks_another_canary(self):
        devices = selected(release(), fleet(200))
        assert stage_members(release(), devices)[0] != stage_members(release(release_id="r2"), devices)[0]

    def test_stage_sizes_round_up_so_a_small_fleet_still_has_a_canary(self):
        assert [len(s) for s in stage_members(release(), selected(release(), fleet(7)))] == [1, 1, 5]

    def test_selection_keeps_the_product_and_the_patterns(self):
        devices = {**fleet(4), "other-1": "prod-b", "lab-1": "prod-a"}
        assert selected(release(devices=("lab-*",)), devices) == ["lab-1"]
        assert "other-1" not in selected(release(), devices)


class TestReleaseValidation:
    def test_stages_must_grow_and_end_at_100(self):
        with pytest.raises(ValidationError, match="must increase"):
            release(stages=(Stage(name="a", percent=25, min_success_rate=0.9), Stage(name="b", percent=5, min_success_rate=0.9)))
        with pytest.raises(ValidationError, match="100 %"):
            release(stages=(Stage(name="a", percent=50, min_success_rate=0.9),))

    def test_same_version_both_ways_is_refused(self):
        with pytest.raises(ValidationError, match="same version"):
            Release(release_id="r", product_id="p", target=OLD, previous=OLD)

    def test_artifact_needs_http_url_and_sha256(self):
        with pytest.raises(ValidationError, match="http"):
            Artifact(version="1", url="file:///etc/passwd", sha256="a" * 64)
        with pytest.raises(ValidationError, match="hex"):
            Artifact(version="1", url="http://x", sha256="xyz")

    def test_parse_stages(self):
        stages = parse_stages("canary:5:95, pilot:25:98 ,full:100:99")
        assert [(s.name, s.percent, s.min_success_rate) for s in stages] == [("canary", 5, 0.95), ("pilot", 25, 0.98), ("full", 100, 0.99)]
        with pytest.raises(ValueError, match="NAME:PERCENT:GATE"):
            parse_stages("canary:5")


class TestOutcome:
    def test_new_version_before_the_deadline_succeeds(self):
        assert update_outcome("in_progress", "2.0.1", "2.0.1", None, deadline_ms=1000, now_ms=999) == "succeeded"

    def test_an_error_fails_at_once(self):
        assert update_outcome("in_progress", "2.0.1", "1.0.0", "checksum mismatch", deadline_ms=1000, now_ms=10) == "failed"

    def test_old_version_is_waited_for_until_the_deadline_then_fails(self):
        assert update_outcome("in_progress", "2.0.1", "1.0.0", None, deadline_ms=1000, now_ms=500) == "in_progress"
        assert update_outcome("in_progress", "2.0.1", "1.0.0", None, deadline_ms=1000, now_ms=1001) == "failed"

    def test_no_report_times_out_and_a_late_new_version_too(self):
        assert update_outcome("in_progress", "2.0.1", None, None, deadline_ms=1000, now_ms=1001) == "timed_out"
        assert update_outcome("in_progress", "2.0.1", "2.0.1", None, deadline_ms=1000, now_ms=1001) == "timed_out"

    def test_final_states_stay(self):
        for state in ("succeeded", "failed", "timed_out", "skipped"):
            assert update_outcome(state, "2.0.1", "9", "x", deadline_ms=0, now_ms=5) == state

    def test_rollback_outcomes(self):
        assert update_outcome("rolling_back", "1.0.0", "1.0.0", None, deadline_ms=1000, now_ms=10) == "rolled_back"
        assert update_outcome("rolling_back", "1.0.0", "2.0.1", None, deadline_ms=1000, now_ms=10) == "rolling_back"
        assert update_outcome("rolling_back", "1.0.0", "2.0.1", None, deadline_ms=1000, now_ms=1001) == "rollback_failed"
        assert update_outcome("rolling_back", "1.0.0", "1.0.0", None, deadline_ms=1000, now_ms=2000) == "rolled_back"

    def test_reported_firmware_reads_version_and_error(self):
        assert reported_firmware({"firmware": {"version": "2.0.1", "url": "u"}}) == ("2.0.1", None)
        assert reported_firmware({"firmware": {"version": "1.0.0", "error": "boom"}}) == ("1.0.0", "boom")
        assert reported_firmware({"fan": "on"}) == (None, None)
        assert reported_firmware({"firmware": "2.0"}) == (None, None)


class TestGate:
    def test_waits_while_the_gate_is_still_reachable(self):
        assert gate(StageCounts(targeted=10, in_progress=3, succeeded=7), 0.95) == "wait"

    def test_rolls_back_as_soon_as_the_gate_is_out_of_reach(self):
        # 10 targeted, gate 95 %: one failure already makes 90 % the best case.
        assert gate(StageCounts(targeted=10, in_progress=8, succeeded=1, failed=1), 0.95) == "rollback"

    def test_promotes_at_exactly_the_gate(self):
        assert gate(StageCounts(targeted=50, succeeded=49, failed=1), 0.98) == "promote"
        assert gate(StageCounts(targeted=50, succeeded=48, timed_out=2), 0.98) == "rollback"

    def test_a_stage_with_nothing_targeted_promotes(self):
        assert gate(StageCounts(skipped=3), 0.95) == "promote"

    def test_counts_leave_skipped_devices_out_of_the_rate(self):
        counts = count_stage(["succeeded"] * 9 + ["failed", "skipped", "skipped"])
        assert (counts.targeted, counts.skipped, counts.success_rate) == (10, 2, 0.9)
        assert counts.as_dict()["success_rate"] == 0.9


class TestSkipsAndAlarms:
    def test_critical_alarm_and_offline_devices_are_skipped_with_the_reason(self):
        seen = {"a": 1_000_000, "b": 1_000_000, "c": 100}
        assert skip_reason("a", {"a"}, seen, 1_000_500, 600) == "active critical alarm"
        assert skip_reason("b", set(), seen, 1_000_500, 600) is None
        assert skip_reason("c", set(), seen, 1_000_500, 600).startswith("offline: last telemetry")
        assert skip_reason("d", set(), seen, 1_000_500, 600) == "offline: no telemetry seen"

    def test_alarm_rise_is_the_difference_of_the_shares(self):
        assert alarm_rise(3, 10, 5, 100) == pytest.approx(0.25)
        assert alarm_rise(0, 0, 5, 100) is None

    def test_commands_are_deterministic_and_carry_the_artifact(self):
        assert command_id("r1", "dev-1", "update") == "ota:r1:dev-1:update"
        assert firmware_desired(NEW, 5) == {"firmware": {"version": "2.0.1", "url": NEW.url, "sha256": NEW.sha256, "until": 5}}
