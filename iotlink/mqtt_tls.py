"""The embedded MQTT broker's TLS listener: a certificate authority and a server certificate made
once per data directory with the ``openssl`` command, kept in ``<data_dir>/mqtt/tls/``.

Devices and tools outside iotlink trust ``ca.crt`` and connect to ``mqtts://127.0.0.1:<port>``
(the server certificate names ``127.0.0.1`` and ``localhost``) with the broker's login. The keys
are owner-only (0600) in an owner-only directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from iotlink.mqtt_login import private_directory

TLS_DIR = "tls"
VALID_DAYS = 825  # the longest server certificate lifetime common clients still accept


class MqttTlsError(RuntimeError):
    """The TLS files cannot be made (no openssl, or openssl failed); the message says what to do."""


@dataclass(frozen=True)
class TlsFiles:
    """The listener's files.

    Attributes:
        ca: The certificate authority clients trust.
        certificate: The server certificate (signed by ``ca``).
        key: The server certificate's private key.
    """

    ca: Path
    certificate: Path
    key: Path


def tls_files(mqtt_dir: Path) -> TlsFiles:
    """Where the TLS files of a broker directory are (made or not)."""
    directory = mqtt_dir / TLS_DIR
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")


def ensure_tls_files(mqtt_dir: Path) -> TlsFiles:
    """The broker's TLS files, made on the first call for this directory, kept afterwards.

    Raises:
        MqttTlsError: no ``openssl`` command, or it failed (its message included).
    """
    files = tls_files(mqtt_dir)
    if files.ca.exists() and files.certificate.exists() and files.key.exists():
        return files
    openssl = shutil.which("openssl")
    if openssl is None:
        raise MqttTlsError("the MQTT TLS listener needs the openssl command to make its certificates: install openssl "
                           "(apt-get install openssl)")
    directory = private_directory(files.ca.parent)
    (directory / "server.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(VALID_DAYS), "-subj", "/CN=iotlink embedded MQTT CA",
         "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", str(VALID_DAYS),
         "-extfile", "server.ext", "-out", "server.crt"],
    ]
    for step in steps:
        done = subprocess.run([openssl, *step], cwd=directory, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise MqttTlsError(f"openssl {step[0]} failed making the MQTT TLS files in {directory}: {done.stderr.strip()[-500:]}")
    for key in (directory / "ca.key", files.key):
        key.chmod(0o600)
    (directory / "server.csr").unlink(missing_ok=True)
    return files
