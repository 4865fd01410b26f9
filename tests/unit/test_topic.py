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
