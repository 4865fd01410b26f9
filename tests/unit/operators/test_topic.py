import pytest

from operators.topic import TopicError, parse_device_topic


@pytest.mark.parametrize(
    ("topic", "kind", "hub", "child"),
    [
        ("iotlink/stg/hub-01/hub-01/periodic/pub/telemetry/json", "hub", "hub-01", None),
        ("iotlink/stg/nohub/device-01/periodic/pub/telemetry/json", "standalone", "nohub", None),
        ("iotlink/stg/hub-01/device-01/periodic/pub/telemetry/json", "child", "hub-01", "device-01"),
    ],
)
def test_client_topic_examples(topic, kind, hub, child):
    parsed = parse_device_topic(topic)
    assert parsed.kind == kind
    assert parsed.hub_id == hub
    assert parsed.child_device_id == child
    assert parsed.render() == topic


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("iotlink/stg/hub/dev/periodic/pub/telemetry", "7 levels"),
        ("other/stg/hub/dev/periodic/pub/telemetry/json", "root"),
        ("iotlink/qa/hub/dev/periodic/pub/telemetry/json", "env 'qa'"),
        ("iotlink/stg/hub/dev/weekly/pub/telemetry/json", "type 'weekly'"),
        ("iotlink/stg/hub/dev/periodic/pub/telemetry/xml", "format 'xml'"),
        ("iotlink/stg/hub/+/periodic/pub/telemetry/json", "device_id"),
    ],
)
def test_malformed_topics(topic, fragment):
    with pytest.raises(TopicError, match=fragment.replace("'", ".")):
        parse_device_topic(topic)


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("iotlink/stg/nohub/../periodic/pub/telemetry/json", "device_id '..' is a path segment"),
        ("iotlink/stg/nohub/dev 1/periodic/pub/telemetry/json", "device_id 'dev 1' has ' ' (U+0020) at offset 3"),
        ("iotlink/stg/nohub/dev\"1/periodic/pub/telemetry/json", "device_id 'dev\"1' has '\"'"),
        ("iotlink/stg/nohub/..%2F..\\etc/periodic/pub/telemetry/json", "has the path separator '\\\\' at offset 7"),
        (f"iotlink/stg/nohub/{'d' * 10_240}/periodic/pub/telemetry/json", "device_id of 10240 characters is longer than the limit of 128"),
        ("iotlink/stg/hub%2F1/dev-1/periodic/pub/telemetry/json", "hub_id 'hub%2F1' has the percent-encoding '%2F'"),
    ],
)
def test_hub_and_device_levels_follow_the_device_id_rule(topic, fragment):
    with pytest.raises(TopicError) as caught:
        parse_device_topic(topic)
    assert caught.value.code == "invalid_device_id"
    assert fragment in caught.value.reason
    assert len(caught.value.reason) < 400  # the reason shows a bounded piece of a long topic


def test_layout_errors_keep_their_code():
    with pytest.raises(TopicError) as caught:
        parse_device_topic("iotlink/qa/nohub/dev-1/periodic/pub/telemetry/json")
    assert caught.value.code == "invalid_topic"
