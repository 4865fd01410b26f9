"""The embedded stack's MQTT broker set-up, without starting it: no anonymous clients, the login
made once per data directory, passed to our clients in ``mqtt_url``, never printed with the endpoints."""

import stat

import pytest

from iotlink import stack as stack_module
from iotlink.mqtt_login import MqttLogin, read_login
from iotlink.stack import EmbeddedStack, _mqtt_command, print_endpoints
from jobs.config import Settings

LOGIN = MqttLogin("iotlink", "s3cret-Pass_word")


def test_mosquitto_refuses_anonymous_clients_and_reads_the_hashed_file(tmp_path):
    if stack_module.mosquitto_executable() is None:
        pytest.skip("mosquitto is not installed")
    command = _mqtt_command(11883, tmp_path / "mqtt", LOGIN)
    conf = (tmp_path / "mqtt" / "mosquitto.conf").read_text().splitlines()
    assert command[1:] == ["-c", str(tmp_path / "mqtt" / "mosquitto.conf")]
    assert "listener 11883 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert f"password_file {tmp_path / 'mqtt' / 'passwd'}" in conf
    passwd = (tmp_path / "mqtt" / "passwd").read_text()
    assert passwd.startswith("iotlink:$7$") and LOGIN.password not in passwd
    assert stat.S_IMODE((tmp_path / "mqtt" / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "mqtt").stat().st_mode) == 0o700


def test_the_amqtt_fallback_takes_the_password_file_as_its_only_authentication(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module, "mosquitto_executable", lambda: None)
    command = _mqtt_command(11883, tmp_path / "mqtt", LOGIN)
    conf = (tmp_path / "mqtt" / "amqtt.yaml").read_text()
    assert command[0].endswith("amqtt") and "bind: 127.0.0.1:11883" in conf
    assert "FileAuthPlugin" in conf and "AnonymousAuthPlugin" not in conf
    assert f'password_file: "{tmp_path / "mqtt" / "passwd"}"' in conf
    assert (tmp_path / "mqtt" / "passwd").read_text().startswith("iotlink:$argon2id$")


def test_our_clients_get_the_login_in_mqtt_url_and_the_endpoints_do_not_show_it(tmp_path, capsys):
    stack = EmbeddedStack(Settings(data_dir=tmp_path), ("mqtt",))
    stack.endpoints = {"mqtt": "mqtt://127.0.0.1:11883"}
    stack.mqtt_login = LOGIN
    assert stack.settings_with_endpoints().mqtt_url == "mqtt://iotlink:s3cret-Pass_word@127.0.0.1:11883"
    assert stack.mqtt_login_file == tmp_path.resolve() / "mqtt" / "login.json"
    print_endpoints({**stack.endpoints, "other": "mqtt://u:s3cret-Pass_word@h:1"})
    assert "s3cret" not in capsys.readouterr().out


def test_the_login_survives_a_new_stack_object_on_the_same_data_directory(tmp_path, monkeypatch):
    # What _start does for the broker, without starting it: the login is made once and reused.
    monkeypatch.setattr(stack_module, "mosquitto_executable", lambda: None)
    first = EmbeddedStack(Settings(data_dir=tmp_path), ("mqtt",))
    login = stack_module.load_or_create_login(first.mqtt_dir)
    _mqtt_command(11883, first.mqtt_dir, login)
    second = EmbeddedStack(Settings(data_dir=tmp_path), ("mqtt",))
    assert read_login(second.mqtt_dir) == login
