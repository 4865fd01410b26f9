"""The AWS IoT Core transport of the control sink against a real broker with mutual TLS.

AWS IoT Core itself is not reachable from the tests, so mosquitto plays it: a TLS listener
that requires a client certificate signed by a test CA (as AWS IoT does) carries the
``awsiotsdk`` connection, and ``iotlink shadow-service`` answers the shadow topics from the
plain listener of the same broker. Certificates are made with the ``openssl`` command.
"""

import json
import queue
import shutil
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from connectors.shadow_aws import AwsIotShadowLink
from iotlink.shadow_service import ShadowService
from iotlink.stack import free_port, wait_for_port
from jobs.config import ShadowSettings

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
OPENSSL = shutil.which("openssl")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (scripts/bootstrap.sh installs it as root)"),
    pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed; it makes the test certificates"),
]


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory):
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, all signed by the CA."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=iotlink test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=directory,
    )
    for name, subject, extensions in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=iotlink-control-sink", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(extensions)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory,
        )


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """mosquitto with a plain listener and a TLS listener that requires a client certificate."""
    directory = tmp_path_factory.mktemp("aws-iot-tls")
    make_certificates(directory)
    plain, tls = free_port(), free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        # As root, mosquitto would switch to the mosquitto user, which cannot read the pytest tmp dir.
        "user root\n"
        "persistence false\n"
        "allow_anonymous true\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\n"
        f"cafile {directory / 'ca.crt'}\n"
        f"certfile {directory / 'server.crt'}\n"
        f"keyfile {directory / 'server.key'}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
    )
    log = (directory / "mosquitto.log").open("ab")
    running = {}

    def start():
        running["proc"] = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(plain, 10, running["proc"], "mosquitto")
        wait_for_port(tls, 10, running["proc"], "mosquitto")

    def stop():
        proc = running.pop("proc")
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart():
        stop()
        start()

    start()
    try:
        yield {"dir": directory, "plain": plain, "tls": tls, "restart": restart}
    finally:
        if running:
            stop()
        log.close()


@pytest.fixture(scope="module")
def shadow_service(broker):
    service = ShadowService(f"mqtt://127.0.0.1:{broker['plain']}", broker["dir"] / "shadows.json", client_id="it-aws-shadow-service")
    service.start()
    yield service
    service.stop()


def link_settings(broker, **changes):
    directory = broker["dir"]
    values = {
        "backend": "aws-iot", "endpoint": "localhost", "port": broker["tls"], "cert": directory / "client.crt",
        "key": directory / "client.key", "ca": directory / "ca.crt", "client_id": "it-aws-link", "answer_timeout_s": 5.0,
    }
    return ShadowSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def reports(broker, shadow_service):
    """The link, and what its ``on_reported`` received."""
    received: queue.Queue = queue.Queue()
    link = AwsIotShadowLink(link_settings(broker), on_reported=lambda thing, patch: received.put((thing, patch)))
    yield link, received
    link.close()


def test_a_command_is_accepted_by_the_shadow_over_mutual_tls(reports, shadow_service):
    link, _ = reports
    command = {"command_id": "cmd-aws-1", "device_id": "thing-1", "desired": {"fan": "restart"}, "action": "restart-fan"}
    status, answer = link.send(command, timeout_s=5)
    assert status == "accepted"
    assert answer["clientToken"] == "cmd-aws-1"
    assert answer["state"]["desired"] == {"fan": "restart"}
    with shadow_service.lock:
        assert shadow_service.shadows["thing-1"].desired == {"fan": "restart"}


def test_a_device_report_reaches_on_reported(broker, reports):
    _, received = reports
    connected = threading.Event()
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="it-aws-thing-1")
    device.on_connect = lambda c, u, f, rc, p: connected.set()
    device.connect("127.0.0.1", broker["plain"])
    device.loop_start()
    try:
        assert connected.wait(5), "the device could not connect to the plain listener"
        report = json.dumps({"state": {"reported": {"fan": "restart"}}})
        device.publish("$aws/things/thing-1/shadow/update", report, qos=1).wait_for_publish(5)
        assert received.get(timeout=5) == ("thing-1", {"fan": "restart"})
    finally:
        device.loop_stop()
        device.disconnect()


def test_a_client_without_a_certificate_cannot_connect(broker):
    from awscrt import io
    from awscrt import mqtt as crt_mqtt

    options = io.TlsContextOptions()  # trusts the test CA but presents no client certificate
    options.override_default_trust_store_from_path(None, str(broker["dir"] / "ca.crt"))
    client = crt_mqtt.Client(io.ClientBootstrap.get_or_create_static_default(), io.ClientTlsContext(options))
    connection = crt_mqtt.Connection(client, host_name="localhost", port=broker["tls"], client_id="it-aws-no-cert", clean_session=True)
    started = time.monotonic()
    with pytest.raises(Exception) as failure:  # noqa: B017 - any connect failure the CRT reports (AwsCrtError or a return code)
        connection.connect().result(10)
    assert not isinstance(failure.value, TimeoutError), "the broker neither accepted nor refused the connection"
    assert time.monotonic() - started < 10


def test_a_certificate_of_another_ca_is_refused_with_a_connection_error(broker, tmp_path):
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
        "-keyout", "stranger.key", "-out", "stranger.crt", cwd=tmp_path,
    )
    settings = link_settings(broker, cert=tmp_path / "stranger.crt", key=tmp_path / "stranger.key", client_id="it-aws-stranger")
    with pytest.raises(ConnectionError, match=f"localhost:{broker['tls']}"):
        AwsIotShadowLink(settings)


def test_after_a_broker_restart_the_link_subscribes_again(broker, reports):
    # persistence false: the restarted broker has forgotten the session and its subscriptions,
    # so answers reach the link only if it re-subscribed when the connection resumed.
    link, _ = reports
    broker["restart"]()
    deadline = time.monotonic() + 20
    attempt = 0
    while True:
        attempt += 1
        command = {"command_id": f"cmd-aws-resume-{attempt}", "device_id": "thing-2", "desired": {"fan": "on"}, "action": "fan-on"}
        status, answer = link.send(command, timeout_s=2)
        if status == "accepted":
            assert answer["clientToken"] == command["command_id"]
            break
        assert time.monotonic() < deadline, "no answer reached the link after the broker restart"
