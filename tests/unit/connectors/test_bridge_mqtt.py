"""The MQTT bridge's pure logic: topic -> envelope fields, size limit, dead letters, backoff, ack order."""

import argparse

import orjson
import pytest

from connectors.bridge_mqtt import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_TOPIC_FILTER,
    TENANT_TOPIC_FILTER,
    AckSequencer,
    BrokerAddress,
    add_arguments,
    classify_message,
    dead_letter_record,
    options_from_args,
    parse_broker_url,
    reconnect_delay,
    status_line,
)
from jobs.config import Settings
from operators.envelope import build_envelope, parse_envelope

NOW = 1_795_000_000_000


@pytest.mark.parametrize(
    ("topic", "device", "hub", "fmt", "kind"),
    [
        ("iotlink/prd/hub-01/hub-01/periodic/pub/telemetry/json", "hub-01", "hub-01", "json", "hub"),
        ("iotlink/stg/nohub/dev-7/event/pub/alert_report/bin", "dev-7", "nohub", "bin", "standalone"),
        ("iotlink/dev/hub-01/child-3/periodic/pub/telemetry/csv", "child-3", "hub-01", "csv", "child"),
    ],
)
def test_a_layout_topic_becomes_envelope_hints(topic, device, hub, fmt, kind):
    payload = b"\x00\xffraw\x80"
    message = classify_message(topic, payload, NOW)
    assert not message.rejected and message.reason_code is None
    assert message.kind == kind
    envelope = message.envelope
    assert (envelope.source, envelope.mqtt_topic, envelope.device_id, envelope.hub_id, envelope.format) == ("mqtt", topic, device, hub, fmt)
    assert envelope.received_at == NOW
    # the payload survives the envelope byte-exact (binary goes base64)
    assert parse_envelope(build_envelope(envelope)).payload == payload


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("iotlink/qa/nohub/dev-1/periodic/pub/telemetry/json", "env 'qa'"),
        ("iotlink/prd/nohub/dev-1/weekly/pub/telemetry/json", "type 'weekly'"),
        ("iotlink/prd/nohub/dev-1/periodic/pub/telemetry/xml", "format 'xml'"),
        ("iotlink/prd/nohub/dev-1/periodic/pub/gossip/json", "role 'gossip'"),
        ("legacy/dev-1/data", "has 3 levels, expected 8"),
        ("iotlink/prd/nohub//periodic/pub/telemetry/json", "device_id is empty"),
    ],
)
def test_a_topic_outside_the_layout_is_rejected_with_the_part_that_is_wrong(topic, fragment):
    message = classify_message(topic, b"{}", NOW)
    assert message.rejected and message.reason_code == "invalid_topic"
    assert fragment in message.reason and topic in message.reason
    assert message.envelope.device_id is None and message.envelope.mqtt_topic == topic


def test_a_sub_topic_is_not_taken_as_device_data():
    message = classify_message("iotlink/prd/nohub/dev-1/event/sub/control_request/json", b"{}", NOW)
    assert message.reason_code == "not_uplink"
    assert "'sub'" in message.reason
    assert message.envelope.device_id == "dev-1"


def test_the_size_limit_is_inclusive_and_defaults_to_one_mebibyte():
    topic = "iotlink/prd/nohub/dev-1/periodic/pub/telemetry/bin"
    assert DEFAULT_MAX_PAYLOAD_BYTES == 1024 * 1024
    assert not classify_message(topic, b"x" * DEFAULT_MAX_PAYLOAD_BYTES, NOW).rejected
    over = classify_message(topic, b"x" * (DEFAULT_MAX_PAYLOAD_BYTES + 1), NOW)
    assert over.reason_code == "payload_too_large"
    assert over.reason == "payload of 1048577 bytes is larger than the bridge limit of 1048576 bytes"
    assert over.envelope.device_id == "dev-1"
    small = classify_message(topic, b"12345", NOW, max_payload_bytes=4)
    assert small.reason_code == "payload_too_large" and "5 bytes" in small.reason


def test_a_dead_letter_keeps_the_payload_and_says_why():
    payload = b"\xde\xad\xbe\xef" * 10
    message = classify_message("iotlink/prd/nohub/dev-9/periodic/pub/telemetry/bin", payload, NOW, max_payload_bytes=8)
    key, value = dead_letter_record(message, NOW + 5)
    letter = orjson.loads(value)
    assert key == b"dev-9"
    assert letter["stage"] == "ingest" and letter["reason_code"] == "payload_too_large"
    assert letter["reason"] == message.reason
    assert (letter["source"], letter["device_id"], letter["failed_at"], letter["received_at"]) == ("mqtt", "dev-9", NOW + 5, NOW)
    assert letter["mqtt_topic"] == "iotlink/prd/nohub/dev-9/periodic/pub/telemetry/bin"
    assert letter["payload_encoding"] == "base64"
    import base64

    assert base64.b64decode(letter["payload"]) == payload


def test_a_dead_letter_without_a_device_is_unkeyed():
    key, value = dead_letter_record(classify_message("legacy/x", b"hello", NOW), NOW)
    assert key is None
    assert orjson.loads(value)["payload"] == "hello"


def test_the_reconnect_delay_doubles_from_one_second_to_sixty():
    assert [reconnect_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert reconnect_delay(10_000) == 60
    assert reconnect_delay(3, first_s=0.5, max_s=10) == 2.0
    with pytest.raises(ValueError):
        reconnect_delay(0)


def test_broker_urls():
    assert parse_broker_url("mqtt://127.0.0.1:11883") == BrokerAddress("127.0.0.1", 11883, False)
    assert parse_broker_url("mqtt://broker") == BrokerAddress("broker", 1883, False)
    assert parse_broker_url("mqtts://broker.example.com") == BrokerAddress("broker.example.com", 8883, True)
    with pytest.raises(ValueError, match="expected mqtt://host"):
        parse_broker_url("http://broker:80")


def test_acks_are_released_in_receive_order():
    sequencer = AckSequencer()
    for token in "abcd":
        sequencer.add(token)
    assert sequencer.complete("c") == []  # b is still at Kafka
    assert sequencer.complete("b") == []  # a is still at Kafka
    assert sequencer.complete("a") == ["a", "b", "c"]
    assert len(sequencer) == 1
    assert sequencer.complete("zz") == []  # unknown (an older connection's message)
    assert sequencer.complete("d") == ["d"]
    assert len(sequencer) == 0


def test_the_status_line_has_every_counter():
    now = {"received": 250, "produced": 240, "rejected": 3, "failed": 1}
    before = {"received": 50, "produced": 40, "rejected": 0, "failed": 0}
    line = status_line(now, before, 2.0, in_flight=7, reconnects=2, connected=True)
    assert line == (
        "mqtt bridge: received 250 (100/s)  produced 240  rejected->dlq 3  kafka errors 1  in flight 7  reconnects 2  connected"
    )
    assert status_line(now, now, 1.0, 0, 0, False).endswith("DISCONNECTED")


def parsed(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedded", action="store_true")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_default_to_the_layout_filter_and_the_settings_topics():
    settings = Settings(mqtt_url="mqtt://127.0.0.1:11883", bootstrap_servers="127.0.0.1:1")
    options = options_from_args(parsed(), settings)
    assert options.topic_filters == (DEFAULT_TOPIC_FILTER, TENANT_TOPIC_FILTER) == ("iotlink/+/+/+/+/pub/+/+", "tenants/+/iotlink/+/+/+/+/pub/+/+")
    assert options.device_tenants is None  # no registry: every tenant topic is refused
    assert (options.raw_topic, options.dlq_topic) == ("iotlink.raw", "iotlink.dlq")
    assert options.broker == BrokerAddress("127.0.0.1", 11883, False) and options.aws is None
    assert options.max_payload_bytes == 1024 * 1024
    two = options_from_args(parsed("--topic-filter", "a/#", "--topic-filter", "b/+"), settings)
    assert two.topic_filters == ("a/#", "b/+")


def test_options_select_aws_iot_and_check_what_is_missing(tmp_path):
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match="no broker"):
        options_from_args(parsed(), settings)
    with pytest.raises(ValueError, match="--aws-endpoint needs --key"):
        options_from_args(parsed("--aws-endpoint", "x-ats.iot.eu-west-1.amazonaws.com", "--cert", "c.pem"), settings)
    options = options_from_args(parsed("--aws-endpoint", "x-ats.iot.eu-west-1.amazonaws.com", "--cert", "c.pem", "--key", "k.pem"), settings)
    assert options.aws.endpoint == "x-ats.iot.eu-west-1.amazonaws.com" and options.aws.port == 8883 and options.broker is None
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        options_from_args(parsed("--tls-cert", "c.pem"), Settings(mqtt_url="mqtt://h"))
    with pytest.raises(ValueError, match="--max-in-flight"):
        options_from_args(parsed("--max-in-flight", "0"), Settings(mqtt_url="mqtt://h"))


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ("..", "device_id '..' is a path segment"),
        ("x" * 10_240, "device_id of 10240 characters is longer than the limit of 128"),
        ("dev 1", "device_id 'dev 1' has ' ' (U+0020) at offset 3"),
        ("dev'1", "device_id \"dev'1\" has \"'\" (U+0027) at offset 3"),
        ("..%2F..\\etc", "has the path separator '\\\\' at offset 7"),
    ],
)
def test_a_device_id_breaking_the_rule_goes_to_the_dead_letter_topic_naming_no_device(device, fragment):
    topic = f"iotlink/prd/nohub/{device}/periodic/pub/telemetry/json"
    payload = b'{"device_timestamp":1756653767451,"data":{"metrics":{"t":1}}}'
    message = classify_message(topic, payload, NOW)
    assert message.rejected and message.reason_code == "invalid_device_id"
    assert fragment in message.reason
    assert message.envelope.device_id is None and message.envelope.hub_id is None
    key, value = dead_letter_record(message, NOW + 5)
    letter = orjson.loads(value)
    assert key is None  # no partition, quality row or device document for an id that breaks the rule
    assert (letter["stage"], letter["reason_code"], letter["source"], letter["device_id"]) == ("ingest", "invalid_device_id", "mqtt", None)
    assert letter["payload"].encode() == payload and letter["mqtt_topic"] == topic
    assert fragment in letter["reason"]


def test_a_hub_id_breaking_the_rule_is_rejected_too():
    message = classify_message("iotlink/prd/hub 1/dev-1/periodic/pub/telemetry/json", b"{}", NOW)
    assert (message.reason_code, message.envelope.device_id) == ("invalid_device_id", None)
    assert "hub_id 'hub 1' has ' '" in message.reason


def test_the_broker_url_carries_the_login_and_the_options_use_it():
    address = parse_broker_url("mqtt://iotlink:s3cr%40t@127.0.0.1:11883")
    assert (address.host, address.port, address.tls, address.username, address.password) == ("127.0.0.1", 11883, False, "iotlink", "s3cr@t")
    assert "s3cr" not in repr(address)
    options = options_from_args(parsed(), Settings(mqtt_url="mqtt://iotlink:s3cret@127.0.0.1:11883", bootstrap_servers="127.0.0.1:1"))
    assert (options.broker.username, options.broker.password) == ("iotlink", "s3cret")
    assert "s3cret" not in options.describe()
    with pytest.raises(ValueError) as caught:
        parse_broker_url("http://iotlink:s3cret@127.0.0.1:11883")
    assert "s3cret" not in str(caught.value) and "iotlink:***@" in str(caught.value)


TENANTS = {"dev-a1": "acme", "dev-b1": "globex", "dev-none": None}


@pytest.mark.parametrize(("topic", "code", "reason"), [
    ("tenants/acme/iotlink/prd/nohub/dev-a1/periodic/pub/telemetry/json", None, None),
    ("tenants/acme/iotlink/prd/nohub/dev-b1/periodic/pub/telemetry/json", "tenant_mismatch",
     "a credential of tenant acme may not publish for device dev-b1 of tenant globex"),
    ("tenants/acme/iotlink/prd/nohub/dev-none/periodic/pub/telemetry/json", "tenant_mismatch", "of no tenant"),
    ("tenants/acme/iotlink/prd/nohub/dev-x/periodic/pub/telemetry/json", "tenant_mismatch", "not in the device registry"),
    ("tenants/ACME/iotlink/prd/nohub/dev-a1/periodic/pub/telemetry/json", "invalid_topic", "tenant id 'ACME'"),
    ("tenants/acme/iotlink/prd/nohub/dev-a1", "invalid_topic", "expected 8"),
    ("iotlink/prd/nohub/dev-b1/periodic/pub/telemetry/json", None, None),  # the platform's own layout: no tenant claimed
])
def test_a_tenant_topic_holds_its_device_to_the_tenant(topic, code, reason):
    message = classify_message(topic, b"{}", 1, device_tenants=TENANTS)
    assert message.reason_code == code
    if reason:
        assert reason in message.reason
    if code == "tenant_mismatch":
        assert message.envelope.mqtt_topic == topic and message.envelope.device_id  # the dead letter names topic and device


def test_a_tenant_topic_without_a_registry_is_refused():
    message = classify_message("tenants/acme/iotlink/prd/nohub/dev-a1/periodic/pub/telemetry/json", b"{}", 1)
    assert message.reason_code == "tenant_mismatch" and "--device-registry" in message.reason
