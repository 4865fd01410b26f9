import pytest

from jobs.config import ConfigError, load_settings


def test_precedence_file_env_cli(tmp_path):
    cfg = tmp_path / "iotlink.yaml"
    cfg.write_text("bootstrap_servers: file:1\nmqtt_url: mqtt://file:1883\nflink:\n  parallelism: 3\n")
    s = load_settings(cfg, environ={})
    assert (s.bootstrap_servers, s.mqtt_url, s.flink.parallelism) == ("file:1", "mqtt://file:1883", 3)
    s = load_settings(cfg, environ={"IOTLINK_BOOTSTRAP_SERVERS": "env:2"})
    assert s.bootstrap_servers == "env:2" and s.flink.parallelism == 3
    s = load_settings(cfg, {"bootstrap_servers": "cli:3", "flink": {"rest_port": 9999}}, environ={"IOTLINK_BOOTSTRAP_SERVERS": "env:2"})
    assert s.bootstrap_servers == "cli:3" and s.flink.rest_port == 9999 and s.flink.parallelism == 3


def test_config_file_from_environment(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("postgres_url: postgresql://u@db:5432/iot\n")
    assert load_settings(None, environ={"IOTLINK_CONFIG": str(cfg)}).postgres_url == "postgresql://u@db:5432/iot"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bootstrap_servers: localhost\n", "bootstrap_servers: expected host:port"),
        ("postgres_url: mysql://x\n", "postgres_url: expected postgresql://"),
        ("postgres_url: postgresql://u:pw@db:badport/iot\n", "the port a number from 1 to 65535"),
        ("postgres_url: postgresql://db1:5432,db2:70000/iot\n", "the port a number from 1 to 65535"),
        ("mqtt_url: http://broker\n", "mqtt_url: expected mqtt://"),
        ("flink:\n  parallelism: 0\n", "flink.parallelism"),
        ("kafka: 1\n", "kafka: Extra inputs"),
        ("a: [1\n", "line 2 invalid YAML"),
        ("- 1\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_file_field_and_reason(tmp_path, text, fragment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    message = str(info.value)
    assert message.startswith(str(cfg)) and fragment in message and "\n" not in message


def test_bad_environment_value_names_the_source():
    with pytest.raises(ConfigError, match="^environment: mqtt_url"):
        load_settings(None, environ={"IOTLINK_MQTT_URL": "tcp://x"})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings("/nonexistent/iotlink.yaml", environ={})


def test_an_mqtt_url_may_carry_a_login_and_a_bad_one_is_not_echoed():
    settings = load_settings(None, environ={"IOTLINK_MQTT_URL": "mqtt://iotlink:s3cr%40t@127.0.0.1:11883"})
    assert settings.mqtt_url == "mqtt://iotlink:s3cr%40t@127.0.0.1:11883"
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"IOTLINK_MQTT_URL": "mqtt://iotlink:Pl4nted@broker:port"})
    assert "Pl4nted" not in str(info.value) and "mqtt://[user:password@]host[:port]" in str(info.value)


@pytest.mark.parametrize("url", [
    "postgresql://u:pw@db:5432/iot", "postgresql://u@[::1]:5432/iot", "postgresql://db1:5432,db2:5433/iot",
    "postgresql://u@/iot", "postgresql:///iot?host=/var/run/postgresql", "postgres://db/iot",
])
def test_postgres_urls_libpq_takes_are_accepted(url):
    assert load_settings(None, environ={"IOTLINK_POSTGRES_URL": url}).postgres_url == url
