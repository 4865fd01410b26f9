"""``iotlink ota`` helpers and the simulated devices' firmware installs (no stack: a local HTTP
server serves the images)."""

import argparse
import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotlink.cli import build_parser
from iotlink.ota_commands import publish_artifact, release_from_args, status_table
from iotlink.simulator import FirmwareUpdates, parse_failure_shares


@pytest.fixture()
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_publish_artifact_names_the_image_by_its_sha256(file_server, tmp_path):
    root, base = file_server
    image = tmp_path / "fw.bin"
    image.write_bytes(b"image")
    url, digest = publish_artifact(image, root, base)
    assert digest == hashlib.sha256(b"image").hexdigest()
    assert url == f"{base}/{digest[:2]}/{digest}-fw.bin" and (root / digest[:2] / f"{digest}-fw.bin").read_bytes() == b"image"


def test_release_options_need_an_image_or_a_url(tmp_path):
    args = build_parser().parse_args(["ota", "release", "--id", "r1", "--product", "prod-a", "--version", "2.0.1",
                                      "--previous-version", "1.0.0", "--url", "http://x/a", "--sha256", "A" * 64,
                                      "--previous-url", "http://x/b", "--previous-sha256", "b" * 64,
                                      "--stages", "canary:10:90,full:100:95", "--device-timeout", "90s"])
    release = release_from_args(args, None, None)
    assert release.target.sha256 == "a" * 64 and release.device_timeout_s == 90
    assert [(s.name, s.percent) for s in release.stages] == [("canary", 10), ("full", 100)]
    args.artifact, args.url = str(tmp_path / "fw.bin"), None
    with pytest.raises(ValueError, match="--artifact needs the embedded stack"):
        release_from_args(args, None, None)
    args.artifact = None
    with pytest.raises(ValueError, match="give --artifact FILE, or --url with --sha256"):
        release_from_args(args, None, None)


def test_status_table_shows_every_stage_and_the_rollback():
    progress = {
        "release_id": "r1", "product_id": "prod-a", "from": "1.0.0", "to": "2.0.1", "status": "rolled_back", "stage": "canary",
        "reason": "stage canary: success rate 80.0% below its gate 95%",
        "stages": [{"stage": "canary", "percent": 5, "gate": 0.95, "targeted": 10, "in_progress": 0, "succeeded": 8, "failed": 2,
                    "timed_out": 0, "cancelled": 0, "skipped": 1, "success_rate": 0.8}],
        "rollback": {"rolling_back": 1, "rolled_back": 9, "rollback_failed": 0},
    }
    lines = status_table(progress)
    assert lines[0].startswith("release r1 (prod-a: 1.0.0 -> 2.0.1): rolled_back, stage canary — stage canary")
    assert lines[2].split() == ["canary", "5%", "10", "0", "8", "2", "0", "0", "1", "80.0%", "/", "95%"]
    assert lines[3] == "  rollback: 9 back on 1.0.0, 1 rolling back, 0 failed"


class TestFirmwareUpdates:
    def image(self, root, version: str) -> dict:
        data = f"firmware {version}".encode()
        (root / f"{version}.bin").write_bytes(data)
        return {"version": version, "sha256": hashlib.sha256(data).hexdigest(), "until": 1}

    def test_install_reports_the_new_version(self, file_server):
        root, base = file_server
        firmware = {**self.image(root, "2.0.1"), "url": f"{base}/2.0.1.bin"}
        assert FirmwareUpdates(install_s=0, reboot_s=0).install("dev-1", firmware, None) == {**firmware, "error": None}

    def test_checksum_mismatch_and_download_failure_keep_the_old_version(self, file_server):
        root, base = file_server
        firmware = {**self.image(root, "2.0.1"), "url": f"{base}/2.0.1.bin", "sha256": "0" * 64}
        updates = FirmwareUpdates(install_s=0, reboot_s=0)
        assert updates.install("dev-1", firmware, None) == {"version": "1.0.0", "error": "checksum mismatch"}
        missing = updates.install("dev-1", {**firmware, "url": f"{base}/nope.bin"}, None)
        assert missing["version"] == "1.0.0" and missing["error"].startswith("download failed: HTTP Error 404")
        assert updates.install("dev-1", {"url": "x"}, None)["error"] == "desired firmware lacks version, url or sha256"

    def test_failure_share_is_per_version_and_spares_the_factory_version(self):
        updates = FirmwareUpdates(failure={None: 30, "2.0.2": 100})
        devices = [f"dev-{i}" for i in range(1000)]
        share = sum(updates.fails(d, "2.0.1") for d in devices) / len(devices)
        assert 0.25 < share < 0.35
        assert all(updates.fails(d, "2.0.2") for d in devices)
        assert not any(updates.fails(d, "1.0.0") for d in devices)
        assert [updates.fails(d, "2.0.1") for d in devices] == [updates.fails(d, "2.0.1") for d in devices]

    def test_parse_failure_shares(self):
        assert parse_failure_shares("20") == {None: 20.0}
        assert parse_failure_shares("2.0.1=20, 2.0.2=5") == {"2.0.1": 20.0, "2.0.2": 5.0}
        assert parse_failure_shares("") == {}
        with pytest.raises(ValueError, match="PCT or VERSION=PCT"):
            parse_failure_shares("2.0.1=lots")
        with pytest.raises(ValueError, match="0..100"):
            parse_failure_shares("120")


def test_demo_and_simulator_take_the_ota_options():
    args = build_parser().parse_args(["demo", "--ota", "--ota-failure", "20", "--ota-time", "0.5"])
    assert isinstance(args, argparse.Namespace) and args.ota and args.ota_failure == "20" and args.ota_time == 0.5
    assert build_parser().parse_args(["simulate"]).ota_failure is None
