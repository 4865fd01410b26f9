"""The embedded broker's login: made once per data directory, owner-only files, hashes the brokers accept."""

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from iotlink import mqtt_login
from iotlink.mqtt_login import (
    LOGIN_FILE,
    MqttLogin,
    MqttLoginError,
    load_or_create_login,
    mosquitto_passwd_tool,
    mosquitto_password_line,
    read_login,
    write_amqtt_password_file,
    write_mosquitto_password_file,
    write_private_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify_mosquitto_line(line: str, login: MqttLogin) -> None:
    """Checks a ``user:$7$iterations$salt$hash`` line against the password, as mosquitto 2.0 does."""
    user, _, hashed = line.strip().partition(":")
    kind, iterations, salt, digest = hashed.split("$")[1:]
    assert (user, kind) == (login.username, "7")
    salt_bytes = base64.b64decode(salt)
    assert len(salt_bytes) == 12  # mosquitto 2.0 reads only 12-byte salts
    expected = hashlib.pbkdf2_hmac("sha512", login.password.encode(), salt_bytes, int(iterations))
    assert base64.b64decode(digest) == expected


def test_the_login_is_made_once_per_directory_and_kept_owner_only(tmp_path):
    directory = tmp_path / "data" / "mqtt"
    first = load_or_create_login(directory)
    assert first.username == "iotlink" and len(first.password) >= 32
    assert first.password not in repr(first)
    assert mode(directory) == 0o700 and mode(directory / LOGIN_FILE) == 0o600
    assert json.loads((directory / LOGIN_FILE).read_text()) == {"username": "iotlink", "password": first.password}
    assert load_or_create_login(directory) == first  # the same on every start
    assert read_login(directory) == first
    other = load_or_create_login(tmp_path / "other" / "mqtt")
    assert other.password != first.password  # per data directory


def test_a_login_file_that_is_not_one_is_reported_not_replaced(tmp_path):
    assert read_login(tmp_path) is None
    (tmp_path / LOGIN_FILE).write_text('{"username": "iotlink"}')
    with pytest.raises(MqttLoginError, match="not an MQTT login"):
        load_or_create_login(tmp_path)


def test_private_files_are_0600_even_over_a_readable_one(tmp_path):
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_the_python_hash_is_mosquittos_pbkdf2_format():
    login = MqttLogin("iotlink", "s3cret-Pass_word")
    line = mosquitto_password_line(login, salt=bytes(range(12)))
    assert line.startswith("iotlink:$7$101$AAECAwQFBgcICQoL$")
    verify_mosquitto_line(line, login)


def test_without_mosquitto_passwd_the_file_is_hashed_here(tmp_path, monkeypatch):
    monkeypatch.setattr(mqtt_login, "mosquitto_passwd_tool", lambda: None)
    login = MqttLogin("iotlink", "s3cret")
    assert write_mosquitto_password_file(tmp_path / "passwd", login) == "python"
    assert mode(tmp_path / "passwd") == 0o600
    verify_mosquitto_line((tmp_path / "passwd").read_text(), login)


@pytest.mark.skipif(mosquitto_passwd_tool() is None, reason="mosquitto_passwd is not installed")
def test_mosquitto_passwd_hashes_the_file_when_installed(tmp_path):
    login = MqttLogin("iotlink", "s3cret-Pass_word")
    assert write_mosquitto_password_file(tmp_path / "passwd", login) == "mosquitto_passwd"
    text = (tmp_path / "passwd").read_text()
    assert login.password not in text and mode(tmp_path / "passwd") == 0o600
    verify_mosquitto_line(text, login)  # the format the fallback writes is the tool's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]  # the tool's plain backup is gone


def test_the_amqtt_file_holds_an_argon2_hash(tmp_path):
    login = MqttLogin("iotlink", "s3cret")
    write_amqtt_password_file(tmp_path / "passwd", login)
    user, _, hashed = (tmp_path / "passwd").read_text().strip().partition(":")
    assert user == "iotlink" and hashed.startswith("$argon2id$") and mode(tmp_path / "passwd") == 0o600
    assert PasswordHasher().verify(hashed, "s3cret")
