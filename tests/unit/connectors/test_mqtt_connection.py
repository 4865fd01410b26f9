"""Broker URLs with a login: parsed for every paho client of ours, built for the embedded stack, never shown with the password."""

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt_connection import BrokerAddress, broker_url, paho_client, parse_broker_url, refusal
from operators.value_repr import masked_url


def test_a_login_in_the_url_is_parsed_and_percent_decoded():
    assert parse_broker_url("mqtt://iotlink:pa%3Ass%40w0rd@127.0.0.1:11883") == BrokerAddress("127.0.0.1", 11883, False, "iotlink", "pa:ss@w0rd")
    assert parse_broker_url("mqtts://bridge@broker") == BrokerAddress("broker", 8883, True, "bridge", None)
    assert parse_broker_url("mqtt://broker") == BrokerAddress("broker", 1883, False)


def test_built_urls_round_trip_and_mask():
    url = broker_url("127.0.0.1", 11883, "iotlink", "pa:ss@w/rd")
    assert url == "mqtt://iotlink:pa%3Ass%40w%2Frd@127.0.0.1:11883"
    assert parse_broker_url(url) == BrokerAddress("127.0.0.1", 11883, False, "iotlink", "pa:ss@w/rd")
    assert masked_url(url) == "mqtt://iotlink:***@127.0.0.1:11883"
    assert broker_url("h", 1) == "mqtt://h:1" and broker_url("h", 8883, tls=True) == "mqtts://h:8883"


def test_bad_urls_are_refused_without_showing_the_password():
    for url in ("http://iotlink:Pl4nted@h:1", "mqtt://iotlink:Pl4nted@h:notaport", "mqtt://iotlink:Pl4nted@/"):
        with pytest.raises(ValueError) as caught:
            parse_broker_url(url)
        assert "Pl4nted" not in str(caught.value) and "expected mqtt://host" in str(caught.value)


def test_paho_clients_log_in_with_the_urls_login():
    client, address = paho_client("mqtt://iotlink:s3cret@127.0.0.1:11883", "it-1")
    assert (client.username, client.password) == ("iotlink", "s3cret")
    assert (address.host, address.port) == ("127.0.0.1", 11883)
    anonymous, _ = paho_client("mqtt://127.0.0.1:11883", "it-2")
    assert anonymous.username is None


def test_a_refused_connack_says_why():
    assert refusal(ReasonCode(PacketTypes.CONNACK, "Not authorized")) == "Not authorized"
    assert refusal(ReasonCode(PacketTypes.CONNACK, "Success")) is None
