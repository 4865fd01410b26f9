"""The MQTT topic layout: ``iotlink/{env}/{hub_id}/{device_id}/{type}/{direction}/{role}/{format}``."""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_ROOT = "iotlink"
ENVS = frozenset({"dev", "stg", "prd"})
MESSAGE_TYPES = frozenset({"periodic", "event", "tcp"})
DIRECTIONS = frozenset({"pub", "sub"})
ROLES = frozenset({"telemetry", "alert_report", "control_request", "control_result", "provisioning_complete"})
# json and bin are the client's formats; csv is this platform's extension for CSV devices.
TOPIC_FORMATS = frozenset({"json", "bin", "csv"})
NO_HUB = "nohub"


class TopicError(ValueError):
    """An MQTT topic does not follow the platform layout."""


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """The parts of a platform MQTT topic."""

    env: str
    hub_id: str
    device_id: str
    message_type: str
    direction: str
    role: str
    format: str

    @property
    def kind(self) -> str:
        """``hub`` (hub_id == device_id), ``standalone`` (hub_id == nohub) or ``child``."""
        if self.hub_id == NO_HUB:
            return "standalone"
        if self.hub_id == self.device_id:
            return "hub"
        return "child"

    @property
    def child_device_id(self) -> str | None:
        """The device id when the device is a hub's child, else None."""
        return self.device_id if self.kind == "child" else None

    def render(self) -> str:
        """Returns the topic string."""
        return "/".join(
            (TOPIC_ROOT, self.env, self.hub_id, self.device_id, self.message_type, self.direction, self.role, self.format)
        )


def parse_device_topic(topic: str) -> DeviceTopic:
    """Parses a topic of the platform layout.

    Args:
        topic: e.g. ``iotlink/stg/hub-01/device-01/periodic/pub/telemetry/json``.

    Returns:
        The parsed parts.

    Raises:
        TopicError: naming the first part that does not fit the layout.
    """
    parts = topic.split("/")
    if len(parts) != 8:
        raise TopicError(f"topic {topic!r} has {len(parts)} levels, expected 8 (iotlink/env/hub/device/type/dir/role/format)")
    root, env, hub_id, device_id, message_type, direction, role, fmt = parts
    checks = (
        ("root", root, {TOPIC_ROOT}),
        ("env", env, ENVS),
        ("type", message_type, MESSAGE_TYPES),
        ("direction", direction, DIRECTIONS),
        ("role", role, ROLES),
        ("format", fmt, TOPIC_FORMATS),
    )
    for name, value, allowed in checks:
        if value not in allowed:
            raise TopicError(f"topic {topic!r}: {name} {value!r} is not one of {sorted(allowed)}")
    for name, value in (("hub_id", hub_id), ("device_id", device_id)):
        if not value or value in ("+", "#"):
            raise TopicError(f"topic {topic!r}: {name} is empty or a wildcard")
    return DeviceTopic(env, hub_id, device_id, message_type, direction, role, fmt)
