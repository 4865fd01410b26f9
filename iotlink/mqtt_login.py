"""The embedded MQTT broker's login: made once per data directory, kept there, never shown in messages.

``<data-dir>/mqtt/login.json`` holds ``{"username": "iotlink", "password": …}`` (mode 0600, in a
0700 directory); it is made on the first start and used by every later one, so devices and
scripts configured with it keep working across restarts. Delete it to get a new password.

The broker reads the password in its own hashed form from ``<data-dir>/mqtt/passwd`` (0600):

- mosquitto: made by ``mosquitto_passwd -U`` when that tool is installed, else written here in
  the same format, ``user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`` (what
  mosquitto 2.0 writes and reads; 101 iterations and a 12-byte salt, its defaults);
- amqtt (the fallback broker): ``user:<argon2id hash>``, which its ``FileAuthPlugin`` reads.

Tenants' devices log in as their tenant (``iotlink tenants add``; mosquitto only): the logins
are kept in ``<data-dir>/mqtt/tenants/<tenant>.json`` (0600) and go into the same password
file; the broker's ACL file (``<data-dir>/mqtt/acl``) lets such a login read and write only
under ``tenants/<tenant>/`` and the platform's own login everything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher

LOGIN_FILE = "login.json"
PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
PID_FILE = "mosquitto.pid"
TENANT_LOGINS = "tenants"
EMBEDDED_USERNAME = "iotlink"
# mosquitto_passwd's defaults for its PBKDF2-SHA512 ("$7$") hashes; mosquitto 2.0 reads only 12-byte salts.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12


class MqttLoginError(RuntimeError):
    """The login file cannot be read or written."""


@dataclass(frozen=True)
class MqttLogin:
    """A user name and password for an MQTT broker.

    Attributes:
        username: The user name.
        password: The password (left out of ``repr``, so a logged object does not show it).
    """

    username: str
    password: str = field(repr=False)


def write_private_file(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (0600), replacing it atomically.

    The file is created with mode 0600 before a byte is written (no moment in which another user
    could open it), then renamed over ``path``.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # an older file of that name kept its mode through O_CREAT
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def private_directory(path: Path) -> Path:
    """Creates ``path`` (and its parents) if needed and makes it 0700; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def read_login(directory: Path, name: str = LOGIN_FILE) -> MqttLogin | None:
    """The login kept in ``directory`` (file ``name``), or None when there is none.

    Raises:
        MqttLoginError: the file exists but cannot be read or is not a login.
    """
    path = directory / name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MqttLoginError(f"{path}: cannot read the MQTT login: {exc.strerror}") from None
    except ValueError:
        raise MqttLoginError(f"{path}: the MQTT login is not JSON; delete it to make a new one") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(key), str) and doc.get(key) for key in ("username", "password")):
        raise MqttLoginError(f"{path}: not an MQTT login (username and password strings); delete it to make a new one")
    return MqttLogin(doc["username"], doc["password"])


def load_or_create_login(directory: Path) -> MqttLogin:
    """The login kept in ``directory``; made (random password) and kept there on the first call.

    Args:
        directory: The broker's directory under the data directory (made 0700).

    Returns:
        The login; the same on every later call for the same directory.
    """
    private_directory(directory)
    login = read_login(directory)
    if login is None:
        # URL-safe characters: the password travels inside mqtt://user:password@host URLs unescaped.
        login = MqttLogin(EMBEDDED_USERNAME, secrets.token_urlsafe(24))
        write_private_file(directory / LOGIN_FILE, json.dumps({"username": login.username, "password": login.password}) + "\n")
    else:
        (directory / LOGIN_FILE).chmod(0o600)
    return login


def mosquitto_password_line(login: MqttLogin, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """One line of a mosquitto password file, hashed as ``mosquitto_passwd`` does (``$7$``: PBKDF2-HMAC-SHA512).

    Args:
        login: The user and password.
        salt: 12 random bytes when not given.
        iterations: PBKDF2 iterations (mosquitto's default 101).

    Returns:
        ``user:$7$<iterations>$<base64 salt>$<base64 hash>``, without a newline.
    """
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", login.password.encode("utf-8"), salt, iterations)
    return f"{login.username}:$7${iterations}${base64.b64encode(salt).decode('ascii')}${base64.b64encode(digest).decode('ascii')}"


def mosquitto_passwd_tool() -> str | None:
    """The ``mosquitto_passwd`` executable, or None when it is not installed."""
    return shutil.which("mosquitto_passwd") or ("/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None)


def write_mosquitto_password_file(path: Path, login: MqttLogin, others: tuple[MqttLogin, ...] = ()) -> str:
    """Writes mosquitto's password file for ``login`` and ``others`` (0600).

    With ``mosquitto_passwd`` installed, the file is made by ``mosquitto_passwd -U`` from plain
    ``user:password`` lines (no password ever appears on a command line, where ``ps`` would show
    it); otherwise, or when the tool fails, the hashes are computed here.

    Returns:
        ``mosquitto_passwd`` or ``python``: what hashed the passwords.
    """
    logins = (login, *others)
    tool = mosquitto_passwd_tool()
    if tool is not None:
        write_private_file(path, "".join(f"{each.username}:{each.password}\n" for each in logins))
        # The tool writes a backup copy of the plain file next to it: umask 077 keeps that private too.
        done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                              umask=0o077, check=False)
        hashed = path.read_text(encoding="utf-8").splitlines() if done.returncode == 0 else []
        if len(hashed) == len(logins) and all(line.startswith(f"{each.username}:$") and each.password not in line
                                               for line, each in zip(hashed, logins, strict=True)):
            path.chmod(0o600)
            return "mosquitto_passwd"
    write_private_file(path, "".join(mosquitto_password_line(each) + "\n" for each in logins))
    return "python"


def mosquitto_acl(platform_user: str) -> str:
    """The broker's ACL: the platform's login reads and writes every topic; any other login (a
    tenant's) only ``tenants/<its user name>/#``."""
    return (
        "# Tenants' logins: their own prefix only (the bridge holds each device named there to the tenant).\n"
        "pattern readwrite tenants/%u/#\n"
        f"# The platform's login (bridges, simulator, shadow service, control sink); '#' does not match\n"
        f"# topics that start with '$', so the device shadows' $aws/things/... are named too.\n"
        f"user {platform_user}\ntopic readwrite #\ntopic readwrite $aws/#\n"
    )


def tenant_logins(directory: Path) -> tuple[MqttLogin, ...]:
    """Every tenant login kept under the broker's ``directory`` (``tenants/<tenant>.json``)."""
    logins = []
    for path in sorted((directory / TENANT_LOGINS).glob("*.json")):
        login = read_login(path.parent, path.name)
        if login is not None:
            logins.append(login)
    return tuple(logins)


def add_tenant_login(directory: Path, tenant_id: str) -> MqttLogin:
    """A tenant's MQTT login (user name = tenant id), made with a random password on the first call.

    Rewrites the password file and asks a running mosquitto of ``directory`` to reload it (SIGHUP);
    a broker started later reads it at start.
    """
    if tenant_id == EMBEDDED_USERNAME:
        raise MqttLoginError(f"tenant {tenant_id!r} has the platform login's name: no MQTT login can be made for it")
    tenants = private_directory(directory / TENANT_LOGINS)
    login = read_login(tenants, f"{tenant_id}.json")
    if login is None:
        login = MqttLogin(tenant_id, secrets.token_urlsafe(24))
        write_private_file(tenants / f"{tenant_id}.json", json.dumps({"username": login.username, "password": login.password}) + "\n")
    platform = read_login(directory)
    if platform is not None and (directory / ACL_FILE).exists():  # a mosquitto of this directory (amqtt has no ACL)
        write_mosquitto_password_file(directory / PASSWORD_FILE, platform, tenant_logins(directory))
        reload_broker(directory)
    return login


def reload_broker(directory: Path) -> bool:
    """Sends SIGHUP to the mosquitto of ``directory`` (its pid file), which rereads its password
    and ACL files; False when none runs."""
    import signal

    try:
        pid = int((directory / PID_FILE).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return False
    return True


def write_amqtt_password_file(path: Path, login: MqttLogin) -> None:
    """Writes the password file of amqtt's ``FileAuthPlugin`` for ``login``: ``user:<argon2id hash>`` (0600)."""
    write_private_file(path, f"{login.username}:{PasswordHasher().hash(login.password)}\n")
