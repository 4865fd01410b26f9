"""Staged firmware rollout (client process flow 5) as pure functions: the release, which devices
each stage takes, how a device's update ends, and the gates.

A release moves a product's devices from ``previous`` to ``version`` in stages — by default a
canary of 5 % promoted at a success rate of at least 95 %, a pilot up to 25 % promoted at 98 %,
then everyone, also held to 98 %. Stage membership is a rank by a stable hash of (release,
device): the same release always picks the same canary, and a larger stage contains the smaller
one. A device is told through its shadow::

    {"firmware": {"version": "2.0.1", "url": "http://…/fw.bin", "sha256": "…", "until": 1765…}}

and reports ``{"firmware": {"version": "2.0.1", …}}`` once installed, or
``{"firmware": {"version": "1.0.0", "error": "checksum mismatch"}}``. It succeeded when it reports
the new version before its deadline; failed when it reports an error, or still the old version
after the deadline; timed out when it reports nothing by then. A failed gate, or alarms rising
among updated devices by more than ``max_alarm_rise`` over the devices not yet updated, rolls
every updated device back to ``previous``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from operators.device_id import DEVICE_ID_PATTERN

ROLLOUT_STATES = ("created", "running", "paused", "completed", "rolled_back", "aborted")
DEVICE_STATES = ("in_progress", "succeeded", "failed", "timed_out", "cancelled", "skipped", "rolling_back", "rolled_back", "rollback_failed")
FINAL_UPDATE_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,31}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Model):
    """One stage: the share of the fleet it brings the update to, and its gate."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    percent: float = Field(gt=0, le=100, description="cumulative share of the selected devices updated by the end of this stage")
    min_success_rate: float = Field(ge=0, le=1, description="succeeded / targeted needed to promote")


DEFAULT_STAGES = (
    Stage(name="canary", percent=5, min_success_rate=0.95),
    Stage(name="pilot", percent=25, min_success_rate=0.98),
    Stage(name="full", percent=100, min_success_rate=0.98),
)


class Artifact(_Model):
    """A firmware image: version, where devices download it, its SHA-256."""

    version: str
    url: str = Field(min_length=1, max_length=2048)
    sha256: str

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"{value!r} is not a version (letters, digits and . _ + -, at most 32)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value


class Release(_Model):
    """A firmware release and how it rolls out."""

    release_id: str
    product_id: str
    target: Artifact
    previous: Artifact
    devices: tuple[str, ...] = Field(default=("*",), min_length=1, max_length=100, description="device id glob patterns")
    stages: tuple[Stage, ...] = Field(default=DEFAULT_STAGES, min_length=1, max_length=10)
    device_timeout_s: float = Field(default=600.0, gt=0, le=7 * 86400, description="command to reported version, per device")
    max_alarm_rise: float = Field(default=0.10, ge=0, le=1, description="alarm share among updated devices over the rest")
    offline_after_s: float = Field(default=600.0, gt=0, description="no telemetry for this long: offline, skipped")

    @field_validator("release_id", "product_id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} may only contain letters, digits and _ . : - (at most 64)")
        return value

    @field_validator("devices")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not 0 < len(pattern) <= 128 or not re.fullmatch(r"[A-Za-z0-9._:@*?\[\]!-]+", pattern):
                raise ValueError(f"{pattern!r} is not a device id pattern (device id characters and * ? [ ])")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Release:
        if self.target.version == self.previous.version:
            raise ValueError(f"target and previous are the same version {self.target.version!r}")
        percents = [s.percent for s in self.stages]
        if percents != sorted(set(percents)):
            raise ValueError(f"stage percents must increase: {percents}")
        if percents[-1] != 100:
            raise ValueError(f"the last stage must reach 100 %, not {percents[-1]:g} %")
        if len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError("stage names must differ")
        return self


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``"canary:5:95,pilot:25:98,full:100:98"`` (name, cumulative percent, gate percent)."""
    stages = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) != 3:
            raise ValueError(f"stage {part.strip()!r}: write NAME:PERCENT:GATE, e.g. canary:5:95")
        name, percent, gate = fields
        try:
            stages.append(Stage(name=name, percent=float(percent), min_success_rate=float(gate) / 100))
        except ValueError as exc:
            raise ValueError(f"stage {part.strip()!r}: {exc}") from None
    return tuple(stages)


def selected(release: Release, fleet: dict[str, str]) -> list[str]:
    """The release's devices: the product's devices matching one of its patterns, sorted.

    Args:
        release: The release.
        fleet: device id -> product id (the device registry).
    """
    return sorted(
        d for d, product in fleet.items()
        if product == release.product_id and any(fnmatchcase(d, p) for p in release.devices) and re.match(DEVICE_ID_PATTERN, d)
    )


def rank_key(release_id: str, device_id: str) -> bytes:
    """The stable position of a device in a release's order."""
    return hashlib.sha256(f"{release_id}\0{device_id}".encode()).digest()


def stage_members(release: Release, devices: list[str]) -> list[list[str]]:
    """Each stage's own devices (not the earlier stages'), by rank: stage k takes the ranks from
    ``ceil(p[k-1] * n)`` to ``ceil(p[k] * n)``, so a 5 % canary of 200 devices is 10 devices and the
    same release picks the same ones after any restart.

    Args:
        release: The release.
        devices: The selected devices (:func:`selected`).
    """
    ordered = sorted(devices, key=lambda d: rank_key(release.release_id, d))
    n, out, start = len(ordered), [], 0
    for stage in release.stages:
        end = n if stage.percent >= 100 else min(n, math.ceil(stage.percent / 100 * n - 1e-9))
        out.append(ordered[start:end])
        start = max(start, end)
    return out


def skip_reason(device_id: str, critical_alarms: set[str], last_seen_ms: dict[str, int], now_ms: int, offline_after_s: float) -> str | None:
    """Why a device is left out of its stage now, or None to update it.

    Args:
        device_id: The device.
        critical_alarms: Devices with an active critical alarm.
        last_seen_ms: Device -> newest telemetry time known, epoch ms.
        now_ms: Now, epoch ms.
        offline_after_s: No telemetry for longer than this counts as offline.
    """
    if device_id in critical_alarms:
        return "active critical alarm"
    seen = last_seen_ms.get(device_id)
    if seen is None:
        return "offline: no telemetry seen"
    if now_ms - seen > offline_after_s * 1000:
        return f"offline: last telemetry {(now_ms - seen) / 1000:.0f} s ago"
    return None


def firmware_desired(artifact: Artifact, until_ms: int) -> dict:
    """The shadow's desired state for installing ``artifact`` by ``until_ms``."""
    return {"firmware": {"version": artifact.version, "url": artifact.url, "sha256": artifact.sha256, "until": until_ms}}


def command_id(release_id: str, device_id: str, purpose: Literal["update", "rollback"]) -> str:
    """The deterministic id of a rollout command (the shadow's clientToken): one per device and
    purpose, so a command re-sent after a restart is the same command."""
    return f"ota:{release_id}:{device_id}:{purpose}"


def reported_firmware(reported: object) -> tuple[str | None, str | None]:
    """(version, error) from a device's reported state (or a reported patch); Nones when absent."""
    firmware = reported.get("firmware") if isinstance(reported, dict) else None
    if not isinstance(firmware, dict):
        return None, None
    version, error = firmware.get("version"), firmware.get("error")
    return (version if isinstance(version, str) else None), (str(error)[:200] if error else None)


def update_outcome(status: str, expected: str, reported_version: str | None, error: str | None, deadline_ms: int, now_ms: int) -> str:
    """The state of one device's update (or rollback) after a report or a clock tick.

    Args:
        status: The state so far (``in_progress`` / ``rolling_back`` move; the others are final).
        expected: The version the device was told to install.
        reported_version: The version in the device's newest report, None without one.
        error: The error in that report, if any.
        deadline_ms: The device's deadline, epoch ms.
        now_ms: Now (the report's arrival), epoch ms.

    Returns:
        For an update: ``succeeded`` (the new version before the deadline), ``failed`` (an error,
        or another version after the deadline), ``timed_out`` (no report by the deadline), else
        ``in_progress``. For a rollback: ``rolled_back`` / ``rollback_failed`` / ``rolling_back``.
    """
    if status not in ("in_progress", "rolling_back"):
        return status
    done, failed = ("succeeded", "failed") if status == "in_progress" else ("rolled_back", "rollback_failed")
    if reported_version == expected and not error and now_ms <= deadline_ms:
        return done
    if error and reported_version != expected:
        return failed
    if now_ms > deadline_ms:
        if status == "rolling_back":
            return done if reported_version == expected and not error else failed  # a late rollback still counts
        if reported_version is None or reported_version == expected:
            return "timed_out"  # nothing reported, or the new version only after the deadline
        return "failed"
    return status


@dataclass(frozen=True)
class StageCounts:
    """Where a stage stands."""

    targeted: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    skipped: int = 0
    cancelled: int = 0  # still installing when the rollout was rolled back

    @property
    def success_rate(self) -> float | None:
        """succeeded / targeted (None before any device was targeted)."""
        return self.succeeded / self.targeted if self.targeted else None

    def as_dict(self) -> dict:
        """The counts and the rate, for JSON."""
        rate = self.success_rate
        return {
            "targeted": self.targeted, "in_progress": self.in_progress, "succeeded": self.succeeded, "failed": self.failed,
            "timed_out": self.timed_out, "skipped": self.skipped, "cancelled": self.cancelled,
            "success_rate": None if rate is None else round(rate, 4),
        }


def count_stage(statuses: list[str]) -> StageCounts:
    """Counts a stage's device states (rolled-back devices count by their update's outcome: callers
    pass the update outcome, not the rollback state)."""
    def n(state: str) -> int:
        return sum(1 for s in statuses if s == state)

    skipped = n("skipped")
    return StageCounts(
        targeted=len(statuses) - skipped, in_progress=n("in_progress"), succeeded=n("succeeded"), failed=n("failed"),
        timed_out=n("timed_out"), skipped=skipped, cancelled=n("cancelled"),
    )


def gate(counts: StageCounts, min_success_rate: float) -> Literal["wait", "promote", "rollback"]:
    """The gate of a stage: promote once every targeted device finished and the success rate is at
    least the stage's minimum; roll back as soon as the minimum is out of reach (even if every
    device still in progress succeeded); else wait. A stage with nothing targeted promotes."""
    if counts.targeted == 0:
        return "promote"
    best_case = (counts.succeeded + counts.in_progress) / counts.targeted
    if best_case + 1e-12 < min_success_rate:
        return "rollback"
    if counts.in_progress:
        return "wait"
    return "promote" if counts.succeeded / counts.targeted + 1e-12 >= min_success_rate else "rollback"


def alarm_rise(updated_alarmed: int, updated: int, others_alarmed: int, others: int) -> float | None:
    """The share of updated devices with an alarm raised since their update, minus the share of
    the devices not updated with one over the same time; None while either group is empty."""
    if updated == 0 or others == 0:
        return None
    return updated_alarmed / updated - others_alarmed / others


def rollback_reason_for_gate(stage: Stage, counts: StageCounts) -> str:
    """The recorded reason of a failed gate: the final rate, or the best rate still possible when
    devices were in progress."""
    tally = f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.timed_out} timed out"
    if counts.in_progress:
        best = (counts.succeeded + counts.in_progress) / counts.targeted
        return (f"stage {stage.name}: at most {best:.1%} can succeed, below its gate {stage.min_success_rate:.0%} "
                f"({tally}, {counts.in_progress} in progress of {counts.targeted})")
    rate = counts.succeeded / counts.targeted if counts.targeted else 0.0
    return f"stage {stage.name}: success rate {rate:.1%} below its gate {stage.min_success_rate:.0%} ({tally} of {counts.targeted})"
