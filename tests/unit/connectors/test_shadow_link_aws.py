"""Shadow settings for AWS IoT Core, and how a shadow link routes the shadow's answers (no network)."""

import json

import pytest
from pydantic import ValidationError

from connectors.shadow_aws import AwsIotShadowLink
from connectors.shadow_link import ShadowLink
from jobs.config import ShadowSettings


@pytest.fixture
def pem_files(tmp_path):
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for path in (cert, key, ca):
        path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return {"cert": cert, "key": key, "ca": ca}


def aws_settings(pem_files, **changes):
    values = {"backend": "aws-iot", "endpoint": "abc123-ats.iot.eu-west-1.amazonaws.com", **pem_files, **changes}
    return ShadowSettings(**{k: v for k, v in values.items() if v is not None})


def test_complete_aws_iot_settings_are_valid(pem_files):
    settings = aws_settings(pem_files)
    assert settings.port == 8883 and settings.client_id == "iotlink-control-sink"


def test_the_ca_is_optional(pem_files):
    assert aws_settings(pem_files, ca=None).ca is None


@pytest.mark.parametrize("field", ["endpoint", "cert", "key"])
def test_aws_iot_needs_endpoint_cert_and_key(pem_files, field):
    with pytest.raises(ValidationError, match=f"{field} is required with backend aws-iot"):
        aws_settings(pem_files, **{field: None})


@pytest.mark.parametrize("field", ["cert", "key", "ca"])
def test_a_missing_file_is_an_error(pem_files, tmp_path, field):
    missing = tmp_path / "nowhere" / f"{field}.pem"
    with pytest.raises(ValidationError, match=f"{field}: no such file: .*{field}.pem"):
        aws_settings(pem_files, **{field: missing})


def test_the_mqtt_backend_needs_none_of_them():
    assert ShadowSettings().backend == "mqtt"


def test_an_out_of_range_port_is_an_error(pem_files):
    with pytest.raises(ValidationError, match="port"):
        aws_settings(pem_files, port=70000)


class RecordingLink(ShadowLink):
    """A shadow link whose transport only records what would be published."""

    def __init__(self, on_reported=None, answer=None):
        super().__init__(on_reported)
        self.published: list[tuple[str, dict, float]] = []
        self.answer = answer  # (topic, payload) the "shadow" answers each publish with, or None
        self.closed = False

    def _publish(self, topic, payload, timeout_s):
        self.published.append((topic, json.loads(payload), timeout_s))
        if self.answer is not None:
            self.handle_message(*self.answer)

    def close(self):
        self.closed = True


ACCEPTED = "$aws/things/thing-1/shadow/update/accepted"
REJECTED = "$aws/things/thing-1/shadow/update/rejected"


def test_an_accepted_answer_is_stored_under_its_client_token():
    link = RecordingLink()
    link.handle_message(ACCEPTED, json.dumps({"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-1", "version": 3}).encode())
    assert link.answers == {"cmd-1": ("accepted", {"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-1", "version": 3})}


def test_a_rejected_answer_is_stored_as_rejected():
    link = RecordingLink()
    link.handle_message(REJECTED, json.dumps({"code": 409, "message": "Version conflict", "clientToken": "cmd-2"}).encode())
    assert link.answers["cmd-2"] == ("rejected", {"code": 409, "message": "Version conflict", "clientToken": "cmd-2"})


def test_an_accepted_report_goes_to_on_reported():
    seen = []
    link = RecordingLink(on_reported=lambda thing, patch: seen.append((thing, patch)))
    link.handle_message(ACCEPTED, json.dumps({"state": {"reported": {"fan": "restart"}}, "version": 4}).encode())
    assert seen == [("thing-1", {"fan": "restart"})]
    assert link.answers == {}  # no clientToken: nobody waits for it


def test_a_rejected_report_does_not_go_to_on_reported():
    seen = []
    link = RecordingLink(on_reported=lambda thing, patch: seen.append((thing, patch)))
    link.handle_message(REJECTED, json.dumps({"state": {"reported": {"fan": "restart"}}, "code": 400}).encode())
    assert seen == []


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[1, 2]", b'"accepted"'])
def test_a_payload_that_is_not_a_json_object_is_ignored(payload):
    link = RecordingLink(on_reported=lambda thing, patch: pytest.fail("called"))
    link.handle_message(ACCEPTED, payload)
    assert link.answers == {}


@pytest.mark.parametrize("topic", ["devices/thing-1/telemetry", "$aws/things/thing-1", "$aws/things//shadow/update/accepted"])
def test_a_message_on_another_topic_is_ignored(topic):
    link = RecordingLink(on_reported=lambda thing, patch: pytest.fail("called"))
    link.handle_message(topic, json.dumps({"state": {"reported": {"fan": "on"}}, "clientToken": "cmd-3"}).encode())
    assert link.answers == {}


COMMAND = {"command_id": "cmd-aws-1", "device_id": "thing-1", "desired": {"fan": "restart"}, "action": "restart-fan"}


def test_send_publishes_the_desired_update_and_returns_the_answer():
    answer = {"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-aws-1", "version": 1}
    link = RecordingLink(answer=(ACCEPTED, json.dumps(answer).encode()))
    assert link.send(COMMAND, timeout_s=1) == ("accepted", answer)
    assert link.published == [("$aws/things/thing-1/shadow/update", {"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-aws-1"}, 1)]
    assert link.answers == {}  # taken by the sender


def test_send_without_an_answer_times_out():
    link = RecordingLink()
    assert link.send(COMMAND, timeout_s=0.05) == ("timed_out", None)


def test_an_answer_to_another_command_does_not_end_the_wait():
    other = {"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-other"}
    link = RecordingLink(answer=(ACCEPTED, json.dumps(other).encode()))
    assert link.send(COMMAND, timeout_s=0.05) == ("timed_out", None)
    assert "cmd-other" in link.answers


def test_the_aws_message_callback_routes_to_handle_message():
    # awscrt calls subscription callbacks with keywords: topic, payload, dup, qos, retain.
    seen = []
    link = AwsIotShadowLink.__new__(AwsIotShadowLink)
    ShadowLink.__init__(link, on_reported=lambda thing, patch: seen.append((thing, patch)))
    payload = json.dumps({"state": {"reported": {"fan": "restart"}}, "clientToken": "cmd-4"}).encode()
    link._on_message(topic=ACCEPTED, payload=payload, dup=False, qos=1, retain=False)
    assert seen == [("thing-1", {"fan": "restart"})]
    assert link.answers["cmd-4"][0] == "accepted"


def test_unusable_certificate_files_are_a_connection_error_naming_the_endpoint(pem_files):
    # The files exist (settings accept them) but hold no certificate or key: the TLS context
    # fails before any connection is attempted.
    with pytest.raises(ConnectionError, match=r"abc123-ats\.iot\.eu-west-1\.amazonaws\.com:8883"):
        AwsIotShadowLink(aws_settings(pem_files))
