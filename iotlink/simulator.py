"""Device simulator: a deterministic fleet publishing to Kafka (as envelopes) or MQTT.

Devices are spread over the sample products in three payload forms:

- ``prod-a`` JSON, the client's shape (``tempC``, ``rpm``, ``voltage``, ``vibration``);
- ``product_a`` hex binary, length based (int16 temperature x0.1, uint8 humidity);
- ``product_d`` CSV with a header (``temp,hum``).

Profiles change a device's behaviour: ``normal``; ``overheat`` (temperature climbs past 80 C);
``nodata`` (goes silent after its first third of messages); ``garbage`` (malformed payloads);
``late`` (device timestamps shuffled back by up to 2 minutes). The same seed and start time give
the same messages.

Devices obey their shadows (``--obey-shadow``): a :class:`ShadowFollower` listens on
``$aws/things/+/shadow/update/delta``; the device applies the desired state and reports it back
(``state.reported``), as AWS IoT devices do. Any applied command cools an overheating device
down to its normal temperature within :data:`COOL_DOWN_TICKS` ticks — the fan restarted, the
relay opened. A desired ``firmware`` is installed as a device would (:class:`FirmwareUpdates`):
download, checksum, install time, a configurable failure share per version, a reboot during
which the device is silent, then the new version reported.
"""

from __future__ import annotations

import hashlib
import random
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from connectors.mqtt_connection import paho_client, refusal
from operators.envelope import RawEnvelope, build_envelope
from operators.topic import DeviceTopic
from operators.value_repr import masked_url

PROFILES = ("normal", "overheat", "nodata", "garbage", "late")
COOL_DOWN_TICKS = 5
FORMS = ("json", "hex", "csv")
PRODUCT_BY_FORM = {"json": "prod-a", "hex": "product_a", "csv": "product_d"}
TOPIC_FORMAT = {"json": "json", "hex": "bin", "csv": "csv"}


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device."""

    device_id: str
    hub_id: str
    form: str
    profile: str

    @property
    def product_id(self) -> str:
        """The product the device belongs to."""
        return PRODUCT_BY_FORM[self.form]

    def topic(self, env: str = "dev") -> str:
        """The MQTT topic the device publishes telemetry on."""
        return DeviceTopic(env, self.hub_id, self.device_id, "periodic", "pub", "telemetry", TOPIC_FORMAT[self.form]).render()


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One payload as a device sends it."""

    device: SimDevice
    device_ts: int
    payload: bytes
    valid: bool

    def envelope(self, received_at: int, source: str = "kafka") -> RawEnvelope:
        """The raw envelope a bridge would write for this message."""
        return RawEnvelope(
            payload=self.payload,
            source=source,
            received_at=received_at,
            device_id=self.device.device_id,
            product_id=self.device.product_id,
            hub_id=self.device.hub_id,
            format=TOPIC_FORMAT[self.device.form],
        )


def parse_profile_mix(text: str) -> dict[str, float]:
    """Parses ``normal=80,garbage=10,late=10`` (percent weights) or a single profile name.

    Raises:
        ValueError: for an unknown profile or a bad weight.
    """
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight = item.strip().partition("=")
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"profile weight {weight!r} for {name!r} is not a number") from None
        if mix[name] <= 0:
            raise ValueError(f"profile weight for {name!r} must be positive")
    return mix


def build_fleet(count: int, forms: tuple[str, ...] = FORMS, profiles: dict[str, float] | None = None, seed: int = 0) -> list[SimDevice]:
    """Creates ``count`` devices: forms round-robin; every tenth device a hub with two children.

    Args:
        count: Number of devices.
        forms: Payload forms to use.
        profiles: Profile -> weight (default all normal).
        seed: Random seed for the profile assignment.

    Returns:
        The devices, in a stable order.
    """
    for form in forms:
        if form not in FORMS:
            raise ValueError(f"unknown payload form {form!r}; choose from {', '.join(FORMS)}")
    rng = random.Random(seed)
    profiles = profiles or {"normal": 1.0}
    # Quotas, not dice: every profile with a weight gets its share of devices (at least one).
    total = sum(profiles.values())
    quotas = {name: max(1, round(count * w / total)) for name, w in profiles.items()}
    largest = max(quotas, key=quotas.get)
    quotas[largest] += count - sum(quotas.values())
    assignment = [name for name, n in quotas.items() for _ in range(max(n, 0))][:count]
    rng.shuffle(assignment)
    devices = []
    hub = "nohub"
    for i in range(count):
        device_id = f"dev-{i:05d}"
        if i % 10 == 0 and i + 2 < count:
            hub = device_id  # a hub: the next two devices are its children
        elif i % 10 > 2:
            hub = "nohub"
        devices.append(SimDevice(device_id, hub, forms[i % len(forms)], assignment[i]))
    return devices


class FleetSimulator:
    """Generates the fleet's messages tick by tick; deterministic for a seed and start time."""

    def __init__(self, devices: list[SimDevice], seed: int = 0, interval_ms: int = 1000):
        self.devices = devices
        self.interval_ms = interval_ms
        self._rng = random.Random(seed)
        self._temps = {d.device_id: 20.0 + (i % 15) for i, d in enumerate(devices)}
        self._step = 0
        # device id -> (tick the command was applied, overheat offset then)
        self._cooling: dict[str, tuple[int, float]] = {}
        self.applied: dict[str, dict] = {}
        self._silent_until: dict[str, float] = {}  # device -> time.monotonic() its reboot ends

    def reboot(self, device_id: str, seconds: float) -> None:
        """The device goes silent for ``seconds`` (it restarts into new firmware)."""
        self._silent_until[device_id] = time.monotonic() + seconds

    def apply_desired(self, device_id: str, desired: dict, total_steps: int) -> bool:
        """The device applies a desired state from its shadow; returns False for unknown devices.

        Any command stops an overheating device's ramp: its temperature falls back to normal
        over :data:`COOL_DOWN_TICKS` ticks and stays there.
        """
        device = next((d for d in self.devices if d.device_id == device_id), None)
        if device is None:
            return False
        self.applied[device_id] = {**self.applied.get(device_id, {}), **desired}
        if device.profile == "overheat" and device_id not in self._cooling:
            self._cooling[device_id] = (self._step, self._ramp(self._step, total_steps))
        return True

    def _ramp(self, step: int, total_steps: int) -> float:
        return 70.0 * step / max(total_steps - 1, 1)

    def _overheat(self, device: SimDevice, step: int, total_steps: int) -> float:
        if device.profile != "overheat":
            return 0.0
        cooling = self._cooling.get(device.device_id)
        if cooling is None:
            return self._ramp(step, total_steps)
        since, offset = cooling
        elapsed = step - since if step >= since else COOL_DOWN_TICKS  # the tick counter wrapped: long cooled
        return offset * max(0.0, 1.0 - elapsed / COOL_DOWN_TICKS)

    def _garbage(self, device: SimDevice, n: int) -> bytes:
        kind = n % 4
        if device.form == "json":
            return [b"{not json", b'{"data": {"metrics": "oops"}}', b"[1, 2, 3]", b'{"device_timestamp": 5, "data": {"metrics": {"tempC": 1}}}'][kind]
        if device.form == "hex":
            return [b"\x01", b"\xff", b"", b"\x00"][kind]
        return [b"temp,hum\nhot,wet\n", b"", b"temp;hum\n1;2\n", b"x\n"][kind]

    def _reading(self, device: SimDevice, step: int, total_steps: int) -> tuple[float, int]:
        # A bounded random walk; overheating devices add a ramp that ends 70 C higher.
        base = min(max(self._temps[device.device_id] + self._rng.uniform(-0.5, 0.5), 0.0), 60.0)
        self._temps[device.device_id] = base
        temp = base + self._overheat(device, step, total_steps)
        return round(temp, 1), self._rng.randint(30, 70)

    def _payload(self, device: SimDevice, ts: int, temp: float, hum: int) -> bytes:
        if device.form == "json":
            doc = {
                "device_timestamp": ts,
                "data": {
                    "metrics": {
                        "tempC": temp,
                        "rpm": self._rng.randint(900, 1500),
                        "voltage": round(self._rng.uniform(215.0, 225.0), 1),
                        "vibration": round(self._rng.uniform(0.0, 2.0), 2),
                    }
                },
            }
            if device.hub_id not in ("nohub", device.device_id):
                doc["hub_timestamp"] = ts + 5
                doc["nodes"] = [{"device_id": device.device_id, "role": "EndDevice", "parent": device.hub_id}]
            return orjson.dumps(doc)
        if device.form == "hex":
            return struct.pack(">hB", int(round(temp * 10)), hum)
        return f"temp,hum\n{temp},{hum}\n".encode()

    def messages(self, start_ts: int, steps: int) -> Iterator[SimMessage]:
        """Yields every device's message for ``steps`` ticks of ``interval_ms`` from ``start_ts``.

        Args:
            start_ts: Device time of the first tick, epoch ms.
            steps: Number of ticks.
        """
        for step in range(steps):
            yield from self.tick(start_ts + step * self.interval_ms, step, steps)

    def tick(self, tick_ts: int, step: int, total_steps: int) -> Iterator[SimMessage]:
        """Yields the messages of one tick (silent devices yield nothing).

        Args:
            tick_ts: Device time of this tick, epoch ms (``late`` devices send earlier times).
            step: The tick's number, which moves the profiles along (overheat ramp, nodata).
            total_steps: Ticks the profiles play out over.
        """
        self._step = step
        rebooting = {d for d, until in self._silent_until.items() if until > time.monotonic()} if self._silent_until else ()
        for device in self.devices:
            if device.profile == "nodata" and step >= max(total_steps // 3, 1):
                continue
            if device.device_id in rebooting:
                continue
            ts = tick_ts
            if device.profile == "late":
                ts -= self._rng.randint(0, 120_000)
            temp, hum = self._reading(device, step, total_steps)
            if device.profile == "garbage" and step % 2 == 1:
                yield SimMessage(device, ts, self._garbage(device, step // 2), False)
            else:
                yield SimMessage(device, ts, self._payload(device, ts, temp, hum), True)


def parse_failure_shares(text: str) -> dict[str | None, float]:
    """``"20"`` (every version but the factory one) or ``"2.0.1=20,2.0.2=5"`` -> version -> percent."""
    shares: dict[str | None, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        version, _, pct = part.rpartition("=")
        try:
            value = float(pct)
        except ValueError:
            raise ValueError(f"--ota-failure {part!r}: write PCT or VERSION=PCT") from None
        if not 0 <= value <= 100:
            raise ValueError(f"--ota-failure {part!r}: the percent must be within 0..100")
        shares[version or None] = value
    return shares


@dataclass
class FirmwareUpdates:
    """How the simulated devices install firmware from their shadow.

    Attributes:
        factory_version: The version every device starts with (never fails to install: a rollback
            to it works unless a share is given for it by name).
        install_s: Time from download to reboot.
        reboot_s: Time the device is silent after installing.
        failure: Version (None: any but the factory one) -> percent of devices whose install fails.
            Which devices fail is fixed by a hash of (device, version): the same ones every run.
    """

    factory_version: str = "1.0.0"
    install_s: float = 2.0
    reboot_s: float = 1.0
    failure: dict = field(default_factory=dict)
    max_image_bytes: int = 64 * 1024 * 1024

    def fails(self, device_id: str, version: str) -> bool:
        """Whether this device's install of ``version`` fails."""
        pct = self.failure.get(version, None if version == self.factory_version else self.failure.get(None))
        if not pct:
            return False
        position = int.from_bytes(hashlib.sha256(f"{device_id}\0{version}".encode()).digest()[:8], "big") / 2**64
        return position < pct / 100

    def install(self, device_id: str, firmware: dict, sim: FleetSimulator | None) -> dict:
        """Downloads, verifies and installs; returns the ``firmware`` report (new version, or the
        version kept and an error)."""
        current = (sim.applied.get(device_id, {}).get("firmware") or {}).get("version") if sim else None
        current = current or self.factory_version
        version, url, digest = firmware.get("version"), firmware.get("url"), firmware.get("sha256")
        if not isinstance(version, str) or not isinstance(url, str) or not isinstance(digest, str):
            return {"version": current, "error": "desired firmware lacks version, url or sha256"}
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the release's own http(s) URL
                image = response.read(self.max_image_bytes + 1)
        except OSError as exc:
            return {"version": current, "error": f"download failed: {exc}"[:200]}
        if len(image) > self.max_image_bytes:
            return {"version": current, "error": f"image larger than {self.max_image_bytes} bytes"}
        if hashlib.sha256(image).hexdigest() != digest:
            return {"version": current, "error": "checksum mismatch"}
        time.sleep(self.install_s)
        if self.fails(device_id, version):
            return {"version": current, "error": "install failed (simulated)"}
        if sim is not None:
            sim.reboot(device_id, self.reboot_s)
        time.sleep(self.reboot_s)
        return {**firmware, "error": None}


class ShadowFollower:
    """The fleet's side of the device shadow: applies deltas and reports the new state.

    Subscribes to ``$aws/things/+/shadow/update/delta``; for a device of the fleet it calls
    ``apply(device_id, desired)`` and, when that accepts, publishes ``{"state": {"reported":
    desired}}`` on the device's ``/shadow/update`` — which empties the delta and tells the
    control sink the command was applied.
    """

    def __init__(self, mqtt_url: str, apply, client_id: str | None = None, timeout_s: float = 10.0,
                 firmware: FirmwareUpdates | None = None, sim: FleetSimulator | None = None):
        self.apply = apply
        self.applied = 0
        self.firmware = firmware or FirmwareUpdates()
        self.sim = sim
        self.installs: dict[str, int] = {"succeeded": 0, "failed": 0}
        # Installs take seconds each (download, install, reboot): many devices at once, and one
        # device's updates in order (a rollback waits for the install it follows).
        self._installers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sim-firmware")
        self._device_locks: dict[str, threading.Lock] = {}
        self._count_lock = threading.Lock()
        self._reported_firmware: dict[str, dict] = {}
        self.ready = threading.Event()
        self.refused: str | None = None
        self.client, address = paho_client(mqtt_url, client_id or f"iotlink-sim-shadow-{random.randrange(1 << 30)}")
        # Subscribing before CONNACK is silently refused by some brokers: subscribe on connect.
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.ready.set()
        self.client.on_message = self._on_delta
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        if not self.ready.wait(timeout_s):
            self.close()
            why = f"the broker refused the connection: {self.refused}" if self.refused else f"no subscription within {timeout_s:g} s"
            raise ConnectionError(f"simulator: cannot subscribe to shadow deltas on {masked_url(mqtt_url)}: {why}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.refused = refusal(reason_code)
        if self.refused is None:
            client.subscribe("$aws/things/+/shadow/update/delta", qos=1)

    def _on_delta(self, client, userdata, message):
        from operators.shadow import parse_shadow_topic, update_topic

        parsed = parse_shadow_topic(message.topic)
        try:
            delta = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return
        desired = delta.get("state") if isinstance(delta, dict) else None
        if parsed is None or not isinstance(desired, dict):
            return
        firmware = desired.pop("firmware", None)
        if isinstance(firmware, dict) and (self.sim is None or any(d.device_id == parsed[0] for d in self.sim.devices)):
            # A delta holds only what differs from the reported state (a rollback to the version
            # the device still runs after a failed install has no version in it): desired is
            # reported + delta.
            with self._count_lock:
                firmware = {k: v for k, v in {**self._reported_firmware.get(parsed[0], {}), **firmware}.items() if k != "error"}
            self._installers.submit(self._install, parsed[0], firmware, delta.get("version"))
        if not desired or not self.apply(parsed[0], desired):
            return
        self.applied += 1
        report = {"state": {"reported": desired}, "clientToken": f"{parsed[0]}-reported-{delta.get('version')}"}
        client.publish(update_topic(parsed[0]), orjson.dumps(report), qos=1)

    def _install(self, device_id: str, firmware: dict, shadow_version) -> None:
        from operators.shadow import update_topic

        with self._device_locks.setdefault(device_id, threading.Lock()):
            result = self.firmware.install(device_id, firmware, self.sim)
            ok = result.get("error") is None
            with self._count_lock:
                self.installs["succeeded" if ok else "failed"] += 1
                self._reported_firmware[device_id] = {k: v for k, v in {**self._reported_firmware.get(device_id, {}), **result}.items()
                                                      if v is not None}
            if ok and self.sim is not None:
                self.sim.applied[device_id] = {**self.sim.applied.get(device_id, {}), "firmware": result}
            report = {"state": {"reported": {"firmware": result}}, "clientToken": f"{device_id}-firmware-{shadow_version}"}
            self.client.publish(update_topic(device_id), orjson.dumps(report), qos=1)

    def close(self) -> None:
        """Stops installing and disconnects."""
        self._installers.shutdown(wait=False, cancel_futures=True)
        self.client.loop_stop()
        self.client.disconnect()


def encode_for_kafka(message: SimMessage, received_at: int) -> tuple[bytes, bytes]:
    """(key, value) for ``iotlink.raw``: keyed by device id, value the raw envelope."""
    return message.device.device_id.encode(), build_envelope(message.envelope(received_at))


@dataclass
class PublishStats:
    """Counters of a simulation run."""

    sent: int = 0
    invalid: int = 0
    repeated: int = 0  # messages sent a second time (included in sent)
    errors: int = 0
    applied: int = 0  # shadow commands the devices applied


def with_repeats(messages, percent: float, seed: int) -> Iterator[tuple[SimMessage, bool]]:
    """Yields ``(message, repeated)``: every message, and right after it, for about ``percent``
    of them, the same message again, as a device or a bridge does when it retries a send whose
    acknowledgement it did not see. The job drops the second one as a duplicate.

    Args:
        messages: The messages in sending order.
        percent: Share of messages sent twice, 0 to 100.
        seed: Random seed; same seed, same repeats.
    """
    rng = random.Random(seed)
    for message in messages:
        yield message, False
        if percent and rng.random() * 100 < percent:
            yield message, True


def kafka_publisher(bootstrap_servers: str, topic: str):
    """Returns (send(message, received_at), close()) writing envelopes to Kafka keyed by device
    (librdkafka: the simulator reaches rates kafka-python's producer cannot)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap_servers, "acks": 1, "linger.ms": 20,
                         "message.max.bytes": 8 * 1024 * 1024 + 64 * 1024})

    def send(message: SimMessage, received_at: int):
        key, value = encode_for_kafka(message, received_at)
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)

    def close():
        producer.flush()

    return send, close


def mqtt_publisher(mqtt_url: str, env: str = "dev", timeout_s: float = 10.0):
    """Returns (send(message, received_at), close()) publishing raw payloads on the device topics (QoS 1).

    Args:
        mqtt_url: The broker, with its login when it needs one (``mqtt://user:password@host:port``).
        env: The env level of the topics.
        timeout_s: How long to wait for the broker to accept the connection.

    Raises:
        ConnectionError: the broker refused the connection (a wrong login) or did not answer.
    """
    client, address = paho_client(mqtt_url, f"iotlink-sim-{random.randrange(1 << 30)}")
    answered = threading.Event()
    refused: list[str] = []

    def on_connect(c, userdata, flags, reason_code, properties):
        why = refusal(reason_code)
        if why is not None:
            refused.append(why)
        answered.set()

    client.on_connect = on_connect
    client.max_queued_messages_set(10000)
    client.connect(address.host, address.port)
    client.loop_start()
    # Publications before a refused CONNACK would be queued and silently never sent: fail instead.
    if not answered.wait(timeout_s) or refused:
        client.loop_stop()
        client.disconnect()
        why = f"the broker refused the connection: {refused[0]}" if refused else f"no answer within {timeout_s:g} s"
        raise ConnectionError(f"simulator: cannot publish on {masked_url(mqtt_url)}: {why}")

    def send(message: SimMessage, received_at: int):
        return client.publish(message.device.topic(env), message.payload, qos=1)

    def close():
        client.loop_stop()
        client.disconnect()

    return send, close


def firmware_updates_from_args(args) -> FirmwareUpdates:
    """The devices' firmware behaviour from the simulator options (FirmwareUpdates' defaults for
    the options a caller's namespace lacks)."""
    given = {"factory_version": getattr(args, "firmware", None) or None, "install_s": getattr(args, "ota_time", None),
             "reboot_s": getattr(args, "ota_reboot", None)}
    return FirmwareUpdates(**{k: v for k, v in given.items() if v is not None},
                           failure=parse_failure_shares(getattr(args, "ota_failure", None) or ""))


def fleet_from_args(args) -> list[SimDevice]:
    """The fleet that the simulator options (devices, forms, profile, seed) describe."""
    return build_fleet(args.devices, tuple(args.forms.split(",")), parse_profile_mix(args.profile), args.seed)


def write_simulation_file(args, path: str, start_ts: int | None = None) -> PublishStats:
    """Writes the simulated fleet's envelopes to a file, one JSON envelope per line, without
    pacing: device times advance by the tick (``devices / rate``) from ``start_ts`` (default
    now), each received half a second after its device time. Input for ``iotlink run --input``.
    """
    import math
    import time

    fleet = fleet_from_args(args)
    tick_ms = max(int(len(fleet) / args.rate * 1000), 1)
    steps = math.ceil(args.count / len(fleet)) if args.count else max(int((args.duration or 60) * 1000 / tick_ms), 1)
    start = int(time.time() * 1000) if start_ts is None else start_ts
    stats = PublishStats()
    with open(path, "wb") as out:
        messages = FleetSimulator(fleet, seed=args.seed, interval_ms=tick_ms).messages(start, steps)
        for message, repeated in with_repeats(messages, args.repeat, args.seed):
            if args.count and stats.sent >= args.count:
                break
            out.write(build_envelope(message.envelope(message.device_ts + 500)) + b"\n")
            stats.sent += 1
            stats.invalid += not message.valid
            stats.repeated += repeated
    return stats


def run_simulation(settings, args, progress: bool = False, stop=None, stats: PublishStats | None = None) -> PublishStats:
    """Publishes the simulated fleet live, paced to ``args.rate`` messages per second.

    Device times are the wall clock at each tick (minus the shuffle of ``late`` devices).

    Args:
        settings: Platform settings (bootstrap servers, MQTT URL, raw topic).
        args: Parsed simulator options (devices, rate, duration, count, profile, forms, seed,
            target, mqtt_env, obey_shadow).
        progress: Print a line every 5 seconds.
        stop: A threading.Event that ends the run early.
        stats: Counters to update in place (so a caller can watch them live).

    Returns:
        The final counters.
    """
    import math
    import time

    stats = stats or PublishStats()
    fleet = fleet_from_args(args)
    tick_s = len(fleet) / args.rate
    sim = FleetSimulator(fleet, seed=args.seed, interval_ms=max(int(tick_s * 1000), 1))
    if args.count:
        total_steps = math.ceil(args.count / len(fleet))
    elif args.duration:
        total_steps = max(int(args.duration / tick_s), 1)
    else:
        total_steps = None
    horizon = total_steps or 600  # profiles (overheat ramp, nodata) play out over this many ticks
    if args.target == "mqtt":
        if not settings.mqtt_url:
            raise ValueError("--target mqtt needs --mqtt-url (or --embedded)")
        send, close = mqtt_publisher(settings.mqtt_url, args.mqtt_env)
    else:
        send, close = kafka_publisher(settings.bootstrap_servers, settings.topics.raw)
    follower = None
    if getattr(args, "obey_shadow", False):
        if not settings.mqtt_url:
            close()
            raise ValueError("--obey-shadow needs an MQTT broker: --mqtt-url (or --embedded)")
        follower = ShadowFollower(settings.mqtt_url, lambda device_id, desired: sim.apply_desired(device_id, desired, horizon),
                                  firmware=firmware_updates_from_args(args), sim=sim)
    started = time.monotonic()
    last_report = started
    step = 0
    try:
        while total_steps is None or step < total_steps:
            if stop is not None and stop.is_set():
                break
            now_ms = int(time.time() * 1000)
            for message, repeated in with_repeats(sim.tick(now_ms, step % horizon, horizon), args.repeat, args.seed + step):
                if args.count and stats.sent >= args.count:
                    break
                try:
                    send(message, int(time.time() * 1000))
                except Exception:  # noqa: BLE001 - counted and reported; one bad send must not end the run
                    stats.errors += 1
                    continue
                stats.sent += 1
                stats.invalid += not message.valid
                stats.repeated += repeated
            step += 1
            next_tick = started + step * tick_s
            now = time.monotonic()
            if progress and now - last_report >= 5:
                print(f"simulator: sent {stats.sent} ({stats.sent / (now - started):.0f} msg/s)", flush=True)
                last_report = now
            if next_tick > now:
                time.sleep(next_tick - now)
    finally:
        close()
        if follower is not None:
            follower.close()
            stats.applied = follower.applied
    return stats
