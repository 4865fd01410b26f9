"""Typed platform configuration: defaults < config file < environment < command line.

The config file is YAML (``--config FILE`` or ``IOTLINK_CONFIG``), loaded with ``safe_load``::

    bootstrap_servers: kafka-1:9092,kafka-2:9092
    postgres_url: postgresql://iotlink:secret@db:5432/iotlink
    iceberg_catalog: http://rest-catalog:8181
    mqtt_url: mqtt://iotlink:change-me-mqtt@mosquitto:1883   # login in the URL (percent-encode @ : / in it)
    mongo_url: mongodb://mongo:27017/iotlink   # hot layer (DocumentDB: add ?tls=true&retryWrites=false)
    shadow:                      # how the control sink reaches device shadows
      backend: aws-iot           # or mqtt (any broker + iotlink shadow-service)
      endpoint: abc123-ats.iot.eu-west-1.amazonaws.com
      cert: /etc/iotlink/control.cert.pem
      key: /etc/iotlink/control.private.key
      ca: /etc/iotlink/AmazonRootCA1.pem
    flink:
      checkpoint_interval_ms: 5000

Environment variables: ``IOTLINK_BOOTSTRAP_SERVERS``, ``IOTLINK_POSTGRES_URL``,
``IOTLINK_ICEBERG_CATALOG``, ``IOTLINK_ICEBERG_WAREHOUSE``, ``IOTLINK_MQTT_URL``,
``IOTLINK_MONGO_URL``, ``IOTLINK_DATA_DIR``. A bad value fails at start-up with the source, field and reason.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_VARS = {
    "bootstrap_servers": "IOTLINK_BOOTSTRAP_SERVERS",
    "postgres_url": "IOTLINK_POSTGRES_URL",
    "iceberg_catalog": "IOTLINK_ICEBERG_CATALOG",
    "iceberg_warehouse": "IOTLINK_ICEBERG_WAREHOUSE",
    "mqtt_url": "IOTLINK_MQTT_URL",
    "mongo_url": "IOTLINK_MONGO_URL",
    "data_dir": "IOTLINK_DATA_DIR",
    "specs_dir": "IOTLINK_SPECS_DIR",
    "device_registry": "IOTLINK_DEVICE_REGISTRY",
    "rules_dir": "IOTLINK_RULES_DIR",
}
CONFIG_ENV_VAR = "IOTLINK_CONFIG"
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")


class ConfigError(ValueError):
    """Invalid configuration; the message is one line naming source, field and reason."""


_LIBPQ_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]*)(:([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d\d|655[0-2]\d|6553[0-5]))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topics(_Strict):
    """Kafka topic names."""

    raw: str = "iotlink.raw"
    telemetry: str = "iotlink.telemetry"
    dlq: str = "iotlink.dlq"
    alarms: str = "iotlink.alarms"
    rules: str = "iotlink.rules"
    rules_status: str = "iotlink.rules.status"
    notifications: str = "iotlink.notifications"
    control: str = "iotlink.control"
    commands: str = "iotlink.commands"
    late: str = "iotlink.late"

    def all(self) -> list[str]:
        """Every topic the platform uses."""
        return list(self.model_dump().values())


class StackPorts(_Strict):
    """Ports of the embedded stack on 127.0.0.1."""

    kafka: int = Field(19092, ge=1, le=65535)
    # KRaft controller listener; None: a free port chosen on the first start, then kept.
    kafka_controller: int | None = Field(None, ge=1, le=65535)
    postgres: int = Field(15432, ge=1, le=65535)
    mqtt: int = Field(11883, ge=1, le=65535)
    # A TLS listener of the MQTT broker as well (certificates made per data directory); None: none.
    mqtt_tls: int | None = Field(None, ge=1, le=65535)
    mongo: int = Field(27117, ge=1, le=65535)
    # The HTTP file server of firmware images (<data-dir>/firmware); None: a free port at start.
    firmware: int | None = Field(None, ge=1, le=65535)


class FlinkSettings(_Strict):
    """How the telemetry job runs."""

    parallelism: int = Field(2, ge=1)
    checkpoint_interval_ms: int = Field(2000, ge=100)
    checkpoint_dir: str | None = None
    rest_port: int = Field(18081, ge=0, le=65535)
    execution_mode: str = Field("thread", pattern="^(thread|process)$")
    out_of_orderness_ms: int = Field(5000, ge=0)
    # How long the alarm rules hold a device's readings for out-of-order ones before evaluating
    # (device time). 0: each reading at once, for alarms within a checkpoint of the reading; a
    # reading older than the device's newest evaluated one is then late for the rules only.
    alarm_reorder_ms: int = Field(0, ge=0)
    idleness_ms: int = Field(10000, ge=0)
    allowed_lateness_ms: int = Field(300_000, ge=0)
    source_parallelism: int | None = Field(None, ge=1)  # None: one source subtask per raw partition
    dedup_ttl_ms: int = Field(3_600_000, ge=0)
    group_id: str = "iotlink-telemetry"
    # Restarts in a row (without 10 minutes of running between them) after which the job fails
    # for good; None: no limit, an outage is waited out however long it lasts.
    restart_attempts: int | None = Field(None, ge=1)


class ShadowSettings(_Strict):
    """How the control sink reaches device shadows.

    ``mqtt`` talks to any MQTT broker (``mqtt_url``; with ``iotlink shadow-service`` serving the
    shadows); ``aws-iot`` talks to AWS IoT Core through ``awsiotsdk`` with mutual TLS.
    """

    backend: Literal["mqtt", "aws-iot"] = "mqtt"
    endpoint: str | None = Field(None, description="AWS IoT data endpoint, e.g. abc123-ats.iot.eu-west-1.amazonaws.com")
    port: int = Field(8883, ge=1, le=65535)
    cert: Path | None = Field(None, description="device/client certificate (PEM) registered with AWS IoT")
    key: Path | None = Field(None, description="its private key (PEM)")
    ca: Path | None = Field(None, description="CA bundle, e.g. AmazonRootCA1.pem (system trust store if omitted)")
    client_id: str = "iotlink-control-sink"
    answer_timeout_s: float = Field(10.0, gt=0)
    apply_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _check_aws(self) -> ShadowSettings:
        if self.backend == "aws-iot":
            for name in ("endpoint", "cert", "key"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required with backend aws-iot")
            for name in ("cert", "key", "ca"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{name}: no such file: {path}")
        return self


class Settings(_Strict):
    """Everything a command needs to reach the platform's services."""

    bootstrap_servers: str = "127.0.0.1:19092"
    postgres_url: str | None = None
    iceberg_catalog: str | None = None
    iceberg_warehouse: str | None = None
    mqtt_url: str | None = None
    mongo_url: str | None = None
    data_dir: Path = Path(".iotlink")
    specs_dir: Path = Path(__file__).resolve().parent.parent / "yaml_specs"
    device_registry: str | None = None
    rules_dir: Path = Path(__file__).resolve().parent.parent / "rules"
    topics: Topics = Topics()
    ports: StackPorts = StackPorts()
    kafka_heap_mb: int = Field(512, ge=128, description="heap of the embedded Kafka broker's JVM")
    flink: FlinkSettings = FlinkSettings()
    shadow: ShadowSettings = ShadowSettings()

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        bad = [s for s in servers if not _HOST_PORT.match(s)]
        if bad:
            raise ValueError(f"expected host:port[,host:port...], got {', '.join(repr(b) for b in bad)}")
        return ",".join(servers)

    @field_validator("postgres_url")
    @classmethod
    def _check_postgres(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected postgresql://user[:password]@host[:port]/database")
        # libpq takes host[:port] lists; a port that is no number would only fail at the first connection.
        hosts = value.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        for host in filter(None, hosts.split(",")):
            if not _LIBPQ_HOST.match(host):
                raise ValueError("expected postgresql://user[:password]@host[:port]/database, the port a number from 1 to 65535")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt(cls, value: str | None) -> str | None:
        # The login may ride in the URL (the embedded stack's does); the message never repeats the value.
        if value is not None and not re.match(r"^mqtts?://([^/@\s]*@)?[^/:@\s]+(:\d{1,5})?/?$", value):
            raise ValueError("expected mqtt://[user:password@]host[:port] or mqtts://[user:password@]host[:port]")
        return value

    @field_validator("mongo_url")
    @classmethod
    def _check_mongo(cls, value: str | None) -> str | None:
        if value is not None:
            from connectors.mongo import check_mongo_url

            check_mongo_url(value)
        return value

    @field_validator("iceberg_catalog")
    @classmethod
    def _check_iceberg(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:///", "postgresql", "http://", "https://")):
            raise ValueError("expected a SQL catalog URI (sqlite:///path, postgresql+psycopg://...) or a REST catalog URL")
        return value

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints go: the configured dir, else ``<data_dir>/checkpoints``."""
        if self.flink.checkpoint_dir:
            return Path(self.flink.checkpoint_dir)
        return self.data_dir.resolve() / "checkpoints"


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Loads settings from the config file, environment and command-line overrides.

    Args:
        config_file: YAML file; falls back to ``$IOTLINK_CONFIG``.
        overrides: Values from the command line (None values are ignored).
        environ: Environment to read (defaults to ``os.environ``).

    Returns:
        Validated settings.

    Raises:
        ConfigError: one line naming the source, the field and the reason.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(CONFIG_ENV_VAR)
    layers: list[tuple[str, dict]] = []
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        layers.append((str(path), loaded))
    env_values = {field: environ[var] for field, var in ENV_VARS.items() if environ.get(var)}
    if env_values:
        layers.append(("environment", env_values))
    cli_values = {k: v for k, v in (overrides or {}).items() if v is not None}
    if cli_values:
        layers.append(("command line", cli_values))
    merged: dict = {}
    for source, layer in layers:
        merged = _deep_merge(merged, layer)
        try:
            Settings.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from None
    return Settings.model_validate(merged)


def connection_options(embedded: bool = True) -> argparse.ArgumentParser:
    """The options every command and the submitted job take for their settings (a parent parser).

    Args:
        embedded: Also offer ``--embedded`` (commands that can start the embedded stack).
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("platform endpoints")
    group.add_argument("--config", metavar="FILE", help="YAML config file (default $IOTLINK_CONFIG)")
    if embedded:
        group.add_argument("--embedded", action="store_true",
                           help="use the embedded stack: the one iotlink up or demo runs on --data-dir, "
                           "else start one for this command and stop it after")
    group.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers (default 127.0.0.1:19092)")
    group.add_argument("--postgres-url", metavar="URL", help="PostgreSQL URL, postgresql://user@host:port/db")
    group.add_argument("--iceberg-catalog", metavar="URI",
                       help="Iceberg catalog: postgresql+psycopg://user@host:port/db (SQL catalog; the job's committers "
                       "need PostgreSQL, sqlite:///path serves reading only) or an http(s):// REST catalog")
    group.add_argument("--iceberg-warehouse", metavar="URI", help="Iceberg warehouse location (file:///… or s3://…)")
    group.add_argument("--mqtt-url", metavar="URL",
                       help="MQTT broker, mqtt://[user:password@]host:port or mqtts://…; a password is better given as "
                       "$IOTLINK_MQTT_URL (options show in ps); --embedded fills in the embedded broker's login")
    group.add_argument("--mongo-url", metavar="URL", help="MongoDB/DocumentDB hot layer, mongodb://host:port/database[?options]")
    group.add_argument("--data-dir", metavar="DIR", help="embedded stack data, checkpoints and logs (default ./.iotlink)")
    ports = parent.add_argument_group("embedded stack ports (127.0.0.1)")
    ports.add_argument("--kafka-port", type=int, metavar="PORT", help="Apache Kafka broker port (default 19092)")
    ports.add_argument(
        "--kafka-controller-port", type=int, metavar="PORT",
        help="Kafka's KRaft controller port (default: a free port chosen on the first start, then kept in the data dir)",
    )
    ports.add_argument("--kafka-heap", type=int, metavar="MB", help="heap of the embedded Kafka broker in MiB (default 512)")
    ports.add_argument("--postgres-port", type=int, metavar="PORT", help="PostgreSQL port (default 15432)")
    ports.add_argument("--mqtt-port", type=int, metavar="PORT", help="MQTT broker port (default 11883)")
    ports.add_argument("--mqtt-tls-port", type=int, metavar="PORT",
                       help="also a TLS listener of the MQTT broker on this port (mosquitto; its CA and server certificate "
                       "are made once per --data-dir with openssl, in <data-dir>/mqtt/tls/; default: none)")
    ports.add_argument("--mongo-port", type=int, metavar="PORT", help="MongoDB wire-protocol server port (default 27117)")
    ports.add_argument("--firmware-port", type=int, metavar="PORT",
                       help="HTTP file server of firmware images in <data-dir>/firmware (default: a free port)")
    decoding = parent.add_argument_group("decoding")
    decoding.add_argument("--specs-dir", metavar="DIR", help="directory of product decoder specs (default ./yaml_specs of the project)")
    decoding.add_argument(
        "--device-registry", metavar="FILE|URL", help="device -> product/tenant master data: a YAML file or postgresql:// URL (table devices)"
    )
    decoding.add_argument("--rules-dir", metavar="DIR", help="directory of alarm rule sets (default ./rules of the project)")
    flink = parent.add_argument_group("Flink")
    flink.add_argument("--ui-port", type=int, metavar="PORT", help="Flink web UI / REST port of the local cluster (default 18081)")
    flink.add_argument("--parallelism", type=int, metavar="N", help="job parallelism (default 2)")
    flink.add_argument("--checkpoint-interval", type=int, metavar="MS", help="checkpoint interval in ms (default 2000)")
    flink.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint directory (default <data-dir>/checkpoints)")
    return parent


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Builds settings from the config file, environment and the parsed options."""
    if not hasattr(args, "bootstrap_servers"):
        return load_settings(getattr(args, "config", None), {})
    overrides: dict = {
        "bootstrap_servers": args.bootstrap_servers,
        "postgres_url": args.postgres_url,
        "iceberg_catalog": args.iceberg_catalog,
        "iceberg_warehouse": args.iceberg_warehouse,
        "mqtt_url": args.mqtt_url,
        "mongo_url": args.mongo_url,
        "data_dir": args.data_dir,
        "specs_dir": args.specs_dir,
        "device_registry": args.device_registry,
        "rules_dir": args.rules_dir,
        "kafka_heap_mb": args.kafka_heap,
    }
    ports = {
        k: v
        for k, v in {
            "kafka": args.kafka_port, "kafka_controller": args.kafka_controller_port,
            "postgres": args.postgres_port, "mqtt": args.mqtt_port, "mqtt_tls": getattr(args, "mqtt_tls_port", None),
            "mongo": args.mongo_port, "firmware": getattr(args, "firmware_port", None),
        }.items()
        if v
    }
    if ports:
        overrides["ports"] = ports
    flink = {
        k: v
        for k, v in {
            "rest_port": args.ui_port,
            "parallelism": args.parallelism,
            "checkpoint_interval_ms": args.checkpoint_interval,
            "checkpoint_dir": args.checkpoint_dir,
        }.items()
        if v is not None
    }
    if flink:
        overrides["flink"] = flink
    return load_settings(args.config, overrides)
