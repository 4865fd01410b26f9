"""The MQTT topic layout: ``iotlink/{env}/{hub_id}/{device_id}/{type}/{direction}/{role}/{format}``.

The hub and device levels follow the device id rule of :mod:`operators.device_id`, so a topic
never gives the platform an id that the HTTP and TCP bridges would refuse.

Devices of a tenant publish the same layout under ``tenants/{tenant}/`` (docs/tenants.md): the
broker lets a tenant's login write only under its own prefix, and the bridge then holds every
device named there to that tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.device_id import INVALID_DEVICE_ID, device_id_problem
from operators.tenant import tenant_id_problem
from operators.value_repr import bounded_repr

TOPIC_ROOT = "iotlink"
ENVS = frozenset({"dev", "stg", "prd"})
MESSAGE_TYPES = frozenset({"periodic", "event", "tcp"})
DIRECTIONS = frozenset({"pub", "sub"})
ROLES = frozenset({"telemetry", "alert_report", "control_request", "control_result", "provisioning_complete"})
# json and bin are the client's formats; csv is this platform's extension for CSV devices.
TOPIC_FORMATS = frozenset({"json", "bin", "csv"})
NO_HUB = "nohub"
TENANT_ROOT = "tenants"


class TopicError(ValueError):
    """An MQTT topic does not follow the platform layout.

    Attributes:
        code: ``invalid_topic`` (not the layout) or ``invalid_device_id`` (the hub or device
            level breaks the device id rule): the dead-letter reason code.
        reason: Precise, human-readable reason.
    """

    def __init__(self, reason: str, code: str = "invalid_topic"):
        super().__init__(reason)
        self.reason = reason
        self.code = code


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
        TopicError: naming the first part that does not fit the layout; code
            ``invalid_device_id`` when the hub or device level breaks the device id rule.
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
    for name, value in (("hub_id", hub_id), ("device_id", device_id)):
        problem = device_id_problem(value, name)
        if problem is not None:
            # The topic may be 64 kB of a hostile id: the reason shows a bounded piece of it.
            raise TopicError(f"topic {bounded_repr(topic)}: {problem}", INVALID_DEVICE_ID)
    return DeviceTopic(env, hub_id, device_id, message_type, direction, role, fmt)


def split_tenant_prefix(topic: str) -> tuple[str | None, str]:
    """(tenant, the layout topic) of ``tenants/{tenant}/iotlink/...``; (None, topic) of any other.

    Raises:
        TopicError: a ``tenants/`` topic whose tenant level is not a tenant id.
    """
    if not topic.startswith(TENANT_ROOT + "/"):
        return None, topic
    _root, tenant, rest = (topic.split("/", 2) + ["", ""])[:3]
    problem = tenant_id_problem(tenant)
    if problem is not None:
        raise TopicError(f"topic {bounded_repr(topic)}: {problem}")
    return tenant, rest
