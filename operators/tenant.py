"""Tenant ids and which tenant may publish for which device, as pure functions."""

from __future__ import annotations

import re
from collections.abc import Mapping

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
TENANT_MISMATCH = "tenant_mismatch"


def tenant_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a tenant id, or None."""
    if not isinstance(value, str) or not TENANT_ID.match(value):
        return f"tenant id {value!r}: lower-case letters, digits, _ and - only, at most 40, starting with a letter or digit"
    return None


def publish_refusal(credential_tenant: str | None, device_id: str, device_tenants: Mapping[str, str | None]) -> str | None:
    """Why a credential bound to ``credential_tenant`` may not publish for ``device_id``, or None.

    A credential bound to no tenant publishes for any device. One bound to a tenant publishes
    only for devices the device registry gives that tenant: a device of another tenant, of no
    tenant, or not in the registry is refused.
    """
    if credential_tenant is None:
        return None
    if device_id not in device_tenants:
        return f"a credential of tenant {credential_tenant} may not publish for device {device_id}: not in the device registry"
    owner = device_tenants[device_id]
    if owner != credential_tenant:
        whose = f"tenant {owner}" if owner else "no tenant"
        return f"a credential of tenant {credential_tenant} may not publish for device {device_id} of {whose}"
    return None
