"""Tenants in PostgreSQL: a login role per tenant whose rows row-level security scopes
(``sql/postgres/005_tenants.sql``), and the tenants' logins kept in the data directory."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg import sql

from operators.tenant import tenant_id_problem


class TenantError(ValueError):
    """A tenant id that cannot be one, or a tenant that is not there."""


def role_name(tenant_id: str) -> str:
    """The PostgreSQL role of a tenant: ``iotlink_tenant_<id>`` (``-`` as ``_``).

    Raises:
        TenantError: the id is not lower-case letters, digits, ``_`` and ``-`` (at most 40).
    """
    problem = tenant_id_problem(tenant_id)
    if problem is not None:
        raise TenantError(problem)
    return "iotlink_tenant_" + tenant_id.replace("-", "_")


def add_tenant(conn, tenant_id: str, password: str | None = None) -> tuple[str, str]:
    """Creates the tenant's role (or gives it a new password) and records the tenant.

    Returns:
        (role name, password).
    """
    role = role_name(tenant_id)
    password = password or secrets.token_urlsafe(24)
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
        statement = "ALTER ROLE {} LOGIN PASSWORD {}" if exists else "CREATE ROLE {} LOGIN PASSWORD {} IN ROLE iotlink_tenants"
        conn.execute(sql.SQL(statement).format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(
            "INSERT INTO tenants (tenant_id, role_name) VALUES (%s, %s) ON CONFLICT (tenant_id) DO NOTHING", (tenant_id, role)
        )
    return role, password


def list_tenants(conn) -> list[dict]:
    """Every tenant with its role and how many devices it has."""
    rows = conn.execute(
        "SELECT t.tenant_id, t.role_name, count(d.device_id), t.created_at FROM tenants t "
        "LEFT JOIN devices d ON d.tenant_id = t.tenant_id GROUP BY 1, 2, 4 ORDER BY 1"
    ).fetchall()
    return [{"tenant_id": t, "role": r, "devices": n, "created_at": c.isoformat()} for t, r, n, c in rows]


def tenant_url(postgres_url: str, role: str, password: str) -> str:
    """The platform's PostgreSQL URL with the tenant's login in place of the platform's."""
    parts = urlsplit(postgres_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))


def save_login(directory: Path, tenant_id: str, role: str, password: str) -> Path:
    """Keeps a tenant's login in ``directory/<tenant>.json`` (mode 0600, directory 0700)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / f"{tenant_id}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"tenant_id": tenant_id, "role": role, "password": password}, out)
    return path


def load_login(directory: Path, tenant_id: str) -> tuple[str, str]:
    """(role, password) of a tenant kept by :func:`save_login`.

    Raises:
        TenantError: no login kept for the tenant.
    """
    role_name(tenant_id)  # the id names a file: it must be a tenant id
    path = directory / f"{tenant_id}.json"
    if not path.exists():
        raise TenantError(f"no login kept for tenant {tenant_id!r} in {directory} (iotlink tenants add {tenant_id})")
    login = json.loads(path.read_text())
    return login["role"], login["password"]
