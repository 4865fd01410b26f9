"""Device shadow documents with AWS IoT Device Shadow semantics, as pure functions.

A shadow holds ``state.desired`` (what the platform wants), ``state.reported`` (what the device
says), a ``version`` that increases by one with every accepted update, and per-key
``metadata`` timestamps. ``delta`` is every desired key whose value differs from reported.

Update requests are the AWS ones, published on ``$aws/things/{thing}/shadow/update``::

    {"state": {"desired": {"fan": "restart"}}, "clientToken": "cmd-7f3a…", "version": 12}

A ``null`` value deletes a key. With ``version`` the update applies only if it matches the
current version (else rejected 409). ``clientToken`` is echoed; the platform uses the
deterministic command id, and an update whose token was already applied is accepted again
without changing the shadow, so a command re-sent after a restart is not applied twice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

MAX_TOKENS = 1000
TOPIC_PREFIX = "$aws/things/"


class ShadowRejected(ValueError):
    """An update the shadow rejects: ``code`` follows AWS (400 bad request, 409 version conflict)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def update_topic(thing: str) -> str:
    """``$aws/things/{thing}/shadow/update``."""
    return f"{TOPIC_PREFIX}{thing}/shadow/update"


def parse_shadow_topic(topic: str) -> tuple[str, str] | None:
    """(thing, operation) for ``$aws/things/{thing}/shadow/{operation...}``, else None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) < 3 or parts[1] != "shadow" or not parts[0]:
        return None
    return parts[0], "/".join(parts[2:])


def _merge(target: dict, patch: dict, meta: dict, ts: int) -> bool:
    changed = False
    for key, value in patch.items():
        if value is None:
            if key in target:
                del target[key]
                meta.pop(key, None)
                changed = True
        elif isinstance(value, dict):
            child = target.get(key)
            if not isinstance(child, dict):
                child = {}
                target[key] = child
                changed = True
            child_meta = meta.setdefault(key, {}) if isinstance(meta.get(key), dict) or key not in meta else {}
            meta[key] = child_meta
            changed |= _merge(child, value, child_meta, ts)
        else:
            if target.get(key) != value:
                changed = True
            target[key] = value
            meta[key] = {"timestamp": ts // 1000}
    return changed


def delta(desired: dict, reported: dict) -> dict:
    """Desired keys whose value differs from reported (nested objects compared key by key)."""
    out = {}
    for key, value in desired.items():
        have = reported.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            nested = delta(value, have)
            if nested:
                out[key] = nested
        elif have != value:
            out[key] = value
    return out


@dataclass
class Shadow:
    """One thing's shadow."""

    desired: dict = field(default_factory=dict)
    reported: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=lambda: {"desired": {}, "reported": {}})
    version: int = 0
    tokens: list = field(default_factory=list)

    def document(self, ts: int) -> dict:
        """The full shadow document (``/get/accepted``)."""
        state: dict = {}
        if self.desired:
            state["desired"] = copy.deepcopy(self.desired)
        if self.reported:
            state["reported"] = copy.deepcopy(self.reported)
        d = delta(self.desired, self.reported)
        if d:
            state["delta"] = d
        return {"state": state, "metadata": copy.deepcopy(self.metadata), "version": self.version, "timestamp": ts // 1000}

    def update(self, request: dict, ts: int) -> tuple[dict, dict | None]:
        """Applies an update request.

        Args:
            request: The parsed request (``state.desired`` and/or ``state.reported``, optional
                ``version`` and ``clientToken``).
            ts: Now, epoch ms.

        Returns:
            (accepted response, delta message or None when nothing is left to do).

        Raises:
            ShadowRejected: a malformed request (400) or a version conflict (409).
        """
        if not isinstance(request, dict) or not isinstance(request.get("state"), dict):
            raise ShadowRejected(400, "Missing required node: state")
        state = request["state"]
        unknown = set(state) - {"desired", "reported"}
        if unknown:
            raise ShadowRejected(400, f"State contains an invalid node: {sorted(unknown)[0]}")
        for part in ("desired", "reported"):
            if part in state and state[part] is not None and not isinstance(state[part], dict):
                raise ShadowRejected(400, f"Invalid JSON: state.{part} must be an object")
        token = request.get("clientToken")
        if token is not None and token in self.tokens:
            # Already applied: acknowledge again, change nothing.
            return self._accepted(state, token, ts), None
        expected = request.get("version")
        if expected is not None and expected != self.version:
            raise ShadowRejected(409, "Version conflict")
        for part in ("desired", "reported"):
            if part in state:
                if state[part] is None:
                    setattr(self, part, {})
                    self.metadata[part] = {}
                else:
                    _merge(getattr(self, part), state[part], self.metadata.setdefault(part, {}), ts)
        self.version += 1
        if token is not None:
            self.tokens.append(token)
            del self.tokens[:-MAX_TOKENS]
        d = delta(self.desired, self.reported)
        # As AWS IoT: a delta is published when an update touches desired and a difference remains.
        delta_message = {"state": d, "version": self.version, "timestamp": ts // 1000} if d and "desired" in state else None
        if delta_message is not None and token is not None:
            delta_message["clientToken"] = token
        return self._accepted(state, token, ts), delta_message

    def _accepted(self, state: dict, token: str | None, ts: int) -> dict:
        response = {"state": copy.deepcopy(state), "version": self.version, "timestamp": ts // 1000}
        if token is not None:
            response["clientToken"] = token
        return response


def desired_update(command: dict) -> tuple[str, dict]:
    """The shadow update (topic, request) for a platform command from ``iotlink.commands``."""
    return update_topic(command["device_id"]), {"state": {"desired": command["desired"]}, "clientToken": command["command_id"]}


def reported_covers(desired: dict, reported: dict) -> bool:
    """Whether ``reported`` holds every desired value (nested objects compared key by key)."""
    return not delta(desired, reported)


@dataclass
class PendingApply:
    """A command the shadow accepted, waiting for the device to report the desired state."""

    command: dict
    deadline: float


class ApplyTracker:
    """Follows accepted commands until the device reports their desired state or time runs out.

    AWS's shadow closes the loop when the device reports what was desired (the delta empties);
    the control sink records that as ``applied``, or ``timed_out`` when no such report arrives
    within the apply timeout. Pure bookkeeping: the caller feeds reports and the clock.
    """

    def __init__(self, apply_timeout_s: float):
        self.apply_timeout_s = apply_timeout_s
        self._pending: dict[str, list[PendingApply]] = {}
        self._reported: dict[str, dict] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def expect(self, command: dict, now: float) -> None:
        """Starts following ``command`` at ``now``, before its update is published, so a device
        report that overtakes the shadow's answer is not missed."""
        waiting = self._pending.setdefault(command["device_id"], [])
        if all(p.command["command_id"] != command["command_id"] for p in waiting):
            waiting.append(PendingApply(command, now + self.apply_timeout_s))

    def forget(self, command: dict) -> None:
        """Stops following ``command`` (its update was rejected or never answered)."""
        thing = command["device_id"]
        self._keep(thing, [p for p in self._pending.get(thing, []) if p.command["command_id"] != command["command_id"]])

    def reported(self, thing: str, patch: dict) -> list[dict]:
        """The commands of ``thing`` fulfilled once the reported ``patch`` (what one accepted
        report set; devices may report desired keys in separate updates) is merged in."""
        waiting = self._pending.get(thing)
        if not waiting:
            return []
        seen = self._reported.setdefault(thing, {})
        _merge(seen, patch, {}, 0)
        done = [p.command for p in waiting if reported_covers(p.command["desired"], seen)]
        if done:
            self._keep(thing, [p for p in waiting if p.command not in done])
        return done

    def _keep(self, thing: str, left: list[PendingApply]) -> None:
        if left:
            self._pending[thing] = left
        else:
            self._pending.pop(thing, None)
            self._reported.pop(thing, None)

    def expired(self, now: float) -> list[dict]:
        """The commands whose apply deadline passed; they are no longer followed."""
        out = []
        for thing in list(self._pending):
            waiting = self._pending[thing]
            out.extend(p.command for p in waiting if p.deadline <= now)
            self._keep(thing, [p for p in waiting if p.deadline > now])
        return out
