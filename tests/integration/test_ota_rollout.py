"""Firmware rollouts end to end on the embedded stack: 200 simulated devices download their image
from the stack's file server, check it, install, reboot and report through their shadows; the
controller's commands reach them through the control sink. A rollout goes to 100 %, a failing
canary rolls every updated device back, and a controller killed mid-rollout changes nothing."""

import dataclasses
import threading
import time
from collections import Counter

import orjson
import psycopg
import pytest
from job_runs import with_own_topics

from connectors import ota_store
from connectors.kafka import read_topic
from connectors.postgres import apply_migrations
from iotlink.control_sink import ControlStats, run_control_sink
from iotlink.ota_commands import open_controller, publish_artifact
from iotlink.shadow_service import ShadowService
from iotlink.simulator import FirmwareUpdates, FleetSimulator, ShadowFollower, SimDevice
from operators.ota import Artifact, Release, selected, stage_members

pytestmark = pytest.mark.integration
DEVICES = 200


@pytest.fixture(scope="module")
def loop(stack, settings, tmp_path_factory):
    """Shadow service, control sink and four fleets of 200 shadow-obeying devices (one per test)."""
    if stack.mqtt_broker != "mosquitto":
        pytest.skip("the amqtt fallback broker does not route $aws/... topics; install mosquitto (scripts/bootstrap.sh does as root)")
    work = tmp_path_factory.mktemp("ota")
    settings = with_own_topics(settings.model_copy(update={"data_dir": work}), "it-ota")
    settings = settings.model_copy(update={"shadow": settings.shadow.model_copy(update={"apply_timeout_s": 60.0})})
    images = {}
    for version in ("1.0.0", "2.0.1", "2.0.2", "2.0.3"):
        image = work / f"fw-{version}.bin"
        image.write_bytes(f"firmware {version}\n".encode() * 1000)
        url, digest = publish_artifact(image, stack.firmware_dir, stack.endpoints["firmware"])
        images[version] = Artifact(version=version, url=url, sha256=digest)
    fleets = {name: [f"ota-{name}-{i:03d}" for i in range(DEVICES)] for name in ("full", "rollback", "restart", "alarms")}
    sim = FleetSimulator([SimDevice(d, "nohub", "json", "normal") for ids in fleets.values() for d in ids])
    shadows = ShadowService(settings.mqtt_url, work / "shadows.json", client_id="it-ota-shadows")
    shadows.start()
    firmware = FirmwareUpdates(install_s=0.2, reboot_s=0.1, failure={"2.0.2": 50})  # 2.0.2 fails on half the devices
    follower = ShadowFollower(settings.mqtt_url, lambda device, desired: True, client_id="it-ota-devices", firmware=firmware, sim=sim)
    apply_migrations(settings.postgres_url)
    stop, control = threading.Event(), ControlStats()
    sink = threading.Thread(target=run_control_sink, args=(settings, stop, control), daemon=True)
    sink.start()
    conn = psycopg.connect(settings.postgres_url, autocommit=True)
    try:
        yield settings, conn, shadows, fleets, images
    finally:
        stop.set()
        sink.join(30)
        follower.close()
        shadows.stop()
        conn.close()


def seed_fleet(conn, ids: list[str], offline: str, critical: str) -> None:
    """Telemetry seen a moment ago for every device but ``offline``; an active critical alarm on ``critical``."""
    now = int(time.time() * 1000)
    conn.execute(
        "INSERT INTO agg_1m (scope, key, metric, window_start, product_id, count, last_ts) "
        "SELECT 'device', d, 'tempC', %s, 'ota', 1, %s FROM unnest(%s::text[]) AS d ON CONFLICT DO NOTHING",
        (now - now % 60_000, now, [d for d in ids if d != offline]),
    )
    conn.execute(
        "INSERT INTO alarm_events (alarm_id, event, device_ts, device_id, rule_id, severity) VALUES (%s, 'RAISED', %s, %s, 'overheat', 'critical')",
        (f"{critical}:overheat:{now}", now, critical),
    )


def make_release(conn, release_id: str, product: str, images: dict, version: str) -> Release:
    release = Release(release_id=release_id, product_id=product, target=images[version], previous=images["1.0.0"],
                      device_timeout_s=60, offline_after_s=600)
    assert ota_store.create_release(conn, release, int(time.time() * 1000))
    ota_store.change_status(conn, release_id, "start", int(time.time() * 1000), "test")
    return release


def drive(settings, fleet: dict[str, str], until, timeout_s: float = 120.0, fail_after_sends: int | None = None) -> None:
    """Runs a controller until ``until()`` holds; with ``fail_after_sends`` it dies right after that
    many confirmed Kafka sends, before recording them (a crash between Kafka and PostgreSQL)."""
    controller, close = open_controller(settings, fleet)
    if fail_after_sends is not None:
        send, sends = controller.io.send_records, []

        def dying_send(records):
            send(records)
            sends.append(len(records))
            if len(sends) >= fail_after_sends:
                raise KeyboardInterrupt("killed")

        controller.io = dataclasses.replace(controller.io, send_records=dying_send)
    deadline = time.monotonic() + timeout_s
    try:
        while not until():
            assert time.monotonic() < deadline, "the rollout did not get there in time"
            controller.run_pass()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        close()


def rollout_status(conn, release_id: str) -> str:
    return conn.execute("SELECT status FROM ota_rollouts WHERE release_id = %s", (release_id,)).fetchone()[0]


def device_states(conn, release_id: str) -> dict[str, tuple]:
    rows = conn.execute("SELECT device_id, stage, status, rollback FROM ota_devices WHERE release_id = %s", (release_id,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def reported_version(shadows: ShadowService, device: str) -> str | None:
    shadow = shadows.shadows.get(device)
    return ((shadow.reported.get("firmware") or {}).get("version")) if shadow else None


def commands_on_topic(settings, release_id: str) -> Counter:
    records = read_topic(settings.bootstrap_servers, settings.topics.commands, read_committed=False, timeout_s=10)
    return Counter(c["command_id"] for c in (orjson.loads(r) for r in records) if c.get("release_id") == release_id)


def control_rows(conn, release_id: str) -> dict[str, str]:
    rows = conn.execute("SELECT command_id, status FROM control_cmd WHERE command_id LIKE %s", (f"ota:{release_id}:%",)).fetchall()
    return dict(rows)


def test_rollout_reaches_every_device_through_all_stages(loop):
    settings, conn, shadows, fleets, images = loop
    ids = fleets["full"]
    seed_fleet(conn, ids, offline=ids[3], critical=ids[7])
    fleet = dict.fromkeys(ids, "ota-full")
    release = make_release(conn, "it-full", "ota-full", images, "2.0.1")
    drive(settings, fleet, lambda: rollout_status(conn, "it-full") == "completed")

    states = device_states(conn, "it-full")
    assert set(states) == set(ids)
    skipped = {d: s for d, s in states.items() if s[1] == "skipped"}
    assert set(skipped) == {ids[3], ids[7]}  # offline, and in a critical alarm: skipped at every stage, reported
    reasons = dict(conn.execute("SELECT device_id, detail FROM ota_devices WHERE release_id = 'it-full' AND status = 'skipped'").fetchall())
    assert reasons[ids[7]] == "active critical alarm" and reasons[ids[3]].startswith("offline")
    updated = [d for d in ids if d not in skipped]
    assert all(states[d][1] == "succeeded" for d in updated)
    assert all(reported_version(shadows, d) == "2.0.1" for d in updated)
    assert all(reported_version(shadows, d) is None for d in skipped)
    # The stages took the devices the release's order gives them.
    members = stage_members(release, selected(release, fleet))
    assert all(states[d][0] == index for index, stage in enumerate(members) for d in stage if d not in skipped)
    # Each command once: on the topic, in control_cmd (applied: the device reported the desired firmware).
    assert commands_on_topic(settings, "it-full") == Counter({f"ota:it-full:{d}:update": 1 for d in updated})
    wait_for(lambda: set(control_rows(conn, "it-full").values()) == {"applied"}, "control_cmd shows every command applied")
    assert len(control_rows(conn, "it-full")) == len(updated)
    events = Counter(e for (e,) in conn.execute("SELECT event FROM ota_events WHERE release_id = 'it-full'"))
    assert events["promoted"] == 2 and events["completed"] == 1 and events["succeeded"] == len(updated)


def test_failing_canary_rolls_every_updated_device_back(loop):
    settings, conn, shadows, fleets, images = loop
    ids = fleets["rollback"]
    seed_fleet(conn, ids, offline="-", critical="-")
    fleet = dict.fromkeys(ids, "ota-rollback")
    release = make_release(conn, "it-rollback", "ota-rollback", images, "2.0.2")

    def all_back() -> bool:
        states = device_states(conn, "it-rollback")
        return rollout_status(conn, "it-rollback") == "rolled_back" and all(
            s[2] in ("rolled_back", "rollback_failed") and s[1] != "in_progress" for s in states.values()
        )

    drive(settings, fleet, all_back)
    states = device_states(conn, "it-rollback")
    canary = stage_members(release, selected(release, fleet))[0]
    assert set(states) == set(canary)  # nothing beyond the canary was touched
    assert all(s[2] == "rolled_back" for s in states.values())
    # Each update ended: installed, failed, or cancelled by the rollback while installing.
    assert {s[1] for s in states.values()} <= {"succeeded", "failed", "cancelled"}
    assert all(reported_version(shadows, d) == "1.0.0" for d in canary)
    reason = conn.execute("SELECT reason FROM ota_rollouts WHERE release_id = 'it-rollback'").fetchone()[0]
    assert reason.startswith("stage canary: ") and "below its gate 95%" in reason
    failed = [d for d, s in states.items() if s[1] == "failed"]
    assert failed, "the canary should have failures"
    tickets = dict(conn.execute("SELECT device_id, kind FROM alarm_tickets WHERE release_id = 'it-rollback'").fetchall())
    assert tickets == dict.fromkeys(failed, "firmware")
    notified = [orjson.loads(r) for r in read_topic(settings.bootstrap_servers, settings.topics.notifications, read_committed=False, timeout_s=10)]
    assert {n["device_id"] for n in notified if n.get("event") == "FIRMWARE_FAILED" and n["release_id"] == "it-rollback"} == set(failed)
    assert any(n.get("event") == "FIRMWARE_ROLLBACK" and n["release_id"] == "it-rollback" for n in notified)
    assert commands_on_topic(settings, "it-rollback") == Counter(
        {f"ota:it-rollback:{d}:{purpose}": 1 for d in canary for purpose in ("update", "rollback")}
    )


def test_controller_killed_mid_rollout_changes_nothing_in_the_outcome(loop):
    settings, conn, shadows, fleets, images = loop
    ids = fleets["restart"]
    seed_fleet(conn, ids, offline="-", critical="-")
    fleet = dict.fromkeys(ids, "ota-restart")
    release = make_release(conn, "it-restart", "ota-restart", images, "2.0.3")
    # Killed right after the pilot's commands were on Kafka, before PostgreSQL recorded them sent.
    drive(settings, fleet, lambda: False, fail_after_sends=2)
    assert rollout_status(conn, "it-restart") == "running"
    unrecorded = conn.execute(
        "SELECT count(*) FROM ota_devices WHERE release_id = 'it-restart' AND stage = 1 AND NOT command_sent"
    ).fetchone()[0]
    assert unrecorded == 40
    drive(settings, fleet, lambda: rollout_status(conn, "it-restart") == "completed")

    states = device_states(conn, "it-restart")
    assert all(s[1] == "succeeded" for s in states.values()) and set(states) == set(ids)
    members = stage_members(release, selected(release, fleet))
    assert all(states[d][0] == index for index, stage in enumerate(members) for d in stage)
    assert all(reported_version(shadows, d) == "2.0.3" for d in ids)
    # The pilot's commands went to Kafka twice (same ids); the shadow and control_cmd have each once.
    sent = commands_on_topic(settings, "it-restart")
    assert set(sent) == {f"ota:it-restart:{d}:update" for d in ids}
    assert {d for d in members[1] if sent[f"ota:it-restart:{d}:update"] == 2} == set(members[1])
    wait_for(lambda: set(control_rows(conn, "it-restart").values()) == {"applied"}, "control_cmd shows every command applied")
    assert len(control_rows(conn, "it-restart")) == DEVICES
    applied_twice = [d for d in ids if (shadows.shadows[d].tokens or []).count(f"ota:it-restart:{d}:update") != 1]
    assert applied_twice == []


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.3)


def test_alarms_rising_among_updated_devices_roll_back(loop):
    settings, conn, shadows, fleets, images = loop
    ids = fleets["alarms"]
    seed_fleet(conn, ids, offline="-", critical="-")
    fleet = dict.fromkeys(ids, "ota-alarms")
    make_release(conn, "it-alarms", "ota-alarms", images, "2.0.1")
    raised: set[str] = set()

    def alarms_follow_the_update() -> bool:
        # As the telemetry job would record it: every updated device raises a (high) alarm after its update.
        updated = {d for (d,) in conn.execute("SELECT device_id FROM ota_devices WHERE release_id = 'it-alarms' AND status = 'succeeded'")}
        for device in sorted(updated - raised):
            now = int(time.time() * 1000)
            conn.execute("INSERT INTO alarm_events (alarm_id, event, device_ts, device_id, rule_id, severity) "
                         "VALUES (%s, 'RAISED', %s, %s, 'vibration', 'high')", (f"{device}:vibration:{now}", now, device))
            raised.add(device)
        return rollout_status(conn, "it-alarms") == "rolled_back"

    drive(settings, fleet, alarms_follow_the_update)
    reason = conn.execute("SELECT reason FROM ota_rollouts WHERE release_id = 'it-alarms'").fetchone()[0]
    assert reason.startswith("alarms rose among updated devices: ") and "> 10%" in reason
    states = device_states(conn, "it-alarms")
    # Stopped in the canary, or at the latest as the pilot started (when the canary's ten all
    # reported in one pass, before their alarms were in): never at the full stage.
    assert {s[0] for s in states.values()} <= {0, 1}
    assert all(s[2] in ("rolling_back", "rolled_back") for s in states.values())


def test_ota_and_ticket_commands(loop, capsys):
    settings, conn, shadows, fleets, images = loop
    from connectors.ticket_store import open_firmware_ticket
    from iotlink.cli import main

    db = ["--postgres-url", settings.postgres_url]
    assert main(["ota", "status", "it-full", "--json", *db]) == 0
    progress = orjson.loads(capsys.readouterr().out)
    assert progress["status"] == "completed" and [s["stage"] for s in progress["stages"]] == ["canary", "pilot", "full"]
    assert sum(s["succeeded"] for s in progress["stages"]) == DEVICES - 2
    assert main(["ota", "start", "it-full", *db]) == 2
    assert "cannot start release 'it-full': it is completed" in capsys.readouterr().err

    open_firmware_ticket(conn, "it-tickets", "dev-t1", "prod-a", int(time.time() * 1000), {"reason": "checksum mismatch"})
    assert main(["tickets", "assign", "ota:it-tickets:dev-t1", "--to", "field-team-3", "--by", "dispatcher", *db]) == 0
    assert main(["tickets", "close", "ota:it-tickets:dev-t1", "--by", "tech-7", "--note", "board replaced", *db]) == 0
    assert main(["tickets", "close", "ota:it-tickets:dev-t1", *db]) == 2
    capsys.readouterr()
    assert main(["tickets", "history", "ota:it-tickets:dev-t1", *db]) == 0
    lines = [line.split(None, 3)[1:] for line in capsys.readouterr().out.splitlines()]
    assert lines == [["opened", "ota-controller", "checksum mismatch"], ["assigned", "dispatcher", "to field-team-3"],
                     ["closed", "tech-7", "board replaced"]]
    assert main(["tickets", "list", "--kind", "firmware", "--status", "closed", "--json", *db]) == 0
    listed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(t["ticket_id"], t["assigned_to"], t["closed_by"]) for t in listed if t["release_id"] == "it-tickets"] == [
        ("ota:it-tickets:dev-t1", "field-team-3", "tech-7")
    ]
