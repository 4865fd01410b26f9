"""``iotlink bridge tcp``: the TCP gateway — persistent device connections -> ``iotlink.raw``.

Devices keep a TCP connection open and write frames (newline-delimited, length-prefixed or
fixed-size; see :mod:`connectors.tcp_framing`). Every frame becomes one raw envelope (source
``tcp``, payload byte-exact, the configured format hint) produced to the raw topic keyed by the
device id. Frames whose device id cannot be read, an oversized frame and the unfinished frame of
a connection that ends mid-frame go to the dead-letter topic with the bytes and the reason; after
an oversized frame the connection is closed, since the stream cannot be resynchronised.

With ``--ack byte`` or ``--ack line`` the gateway answers every frame, in order, once Kafka has
confirmed its record (raw or dead letter): ``0x06`` / ``ACK <n>\\n`` on success, ``0x15`` /
``NAK <n>\\n`` when Kafka failed (``n``: the frame's 1-based number on the connection, the hello
frame included). A device resends what was not acknowledged, so delivery is at least once.

Threads: one asyncio event loop serves every connection; producing happens on one worker
thread (the Kafka client may block on metadata or a full in-flight window, which must never
stall the loop), and Kafka's sender thread resolves the frames' futures. Each connection has at
most ``window`` frames waiting for Kafka; beyond that the gateway stops reading it, so a slow
Kafka pushes back on the devices through TCP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

from connectors.raw_producer import BridgeCounters, RawProducer
from connectors.tcp_framing import DEFAULT_MAX_FRAME_BYTES, DeviceIdError, DeviceIdRule, FrameDecoder, FrameTooLarge, Framing
from operators.dead_letter import dead_letter_to_json, make_dead_letter
from operators.envelope import FORMATS, RawEnvelope

log = logging.getLogger(__name__)

ACK_MODES = ("none", "byte", "line")
ACK_BYTE = b"\x06"
NAK_BYTE = b"\x15"
DEAD_LETTER_STAGE = "ingest"
READ_CHUNK = 65536
# This machine only unless told otherwise: exposing the gateway is a decision (--host 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"


@dataclass
class TcpCounters(BridgeCounters):
    """The bridge counters plus the gateway's connection counters (``received`` counts frames)."""

    connections: int = 0  # open now
    accepted: int = 0  # connections accepted since start
    refused: int = 0  # connections refused at the connection limit
    idle_closed: int = 0  # connections closed by the idle timeout
    oversized: int = 0  # connections closed after an oversized frame


@dataclass
class TcpOptions:
    """Everything one gateway run needs."""

    bootstrap_servers: str
    raw_topic: str
    dlq_topic: str
    host: str = DEFAULT_HOST
    port: int = 7070
    framing: Framing = field(default_factory=Framing)
    device_id: DeviceIdRule = field(default_factory=lambda: DeviceIdRule("hello"))
    format: str = "bin"
    product_id: str | None = None
    ack: str = "none"
    idle_timeout_s: float = 300.0
    max_connections: int = 1000
    window: int = 256
    max_in_flight: int = 10_000
    drain_timeout_s: float = 30.0
    producer_config: dict = field(default_factory=dict)


def status_line(now: dict[str, int], before: dict[str, int], interval_s: float, in_flight: int) -> str:
    """The one-line status the gateway prints every interval."""
    rate = (now["received"] - before["received"]) / interval_s if interval_s > 0 else 0.0
    return (
        f"tcp gateway: connections {now['connections']} open ({now['accepted']} accepted, {now['refused']} refused, "
        f"{now['idle_closed']} idle-closed)  frames {now['received']} ({rate:.0f}/s)  produced {now['produced']}  "
        f"rejected->dlq {now['rejected']}  kafka errors {now['failed']}  in flight {in_flight}"
    )


class TcpGateway:
    """The asyncio TCP server and its Kafka producer.

    Use :meth:`start` (runs the event loop on a background thread; ``port`` 0 picks a free port,
    read it back from :attr:`port`) and :meth:`stop`.

    Args:
        options: The gateway options.
    """

    def __init__(self, options: TcpOptions):
        self.options = options
        self.counters = TcpCounters()
        self.port: int | None = None
        self._producer: RawProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping: asyncio.Future | None = None
        self._handlers: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # One thread, so records are handed to the producer in the order frames arrived.
        self._send_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tcp-gateway-kafka")

    @property
    def in_flight(self) -> int:
        """Records produced and not yet confirmed by Kafka."""
        return self._producer.in_flight if self._producer else 0

    def start(self, timeout_s: float = 60.0) -> None:
        """Creates the producer, binds the port and serves on a background thread.

        Raises:
            OSError: when the port cannot be bound.
        """
        self._producer = RawProducer(
            self.options.bootstrap_servers, self.options.raw_topic, self.options.max_in_flight, self.counters, **self.options.producer_config
        )
        self._thread = threading.Thread(target=self._serve, name="tcp-gateway", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError("tcp gateway did not start")
        if self._start_error is not None:
            self._producer.close(5)
            raise self._start_error

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # noqa: BLE001 - handed to start() in the caller's thread
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _open(self) -> None:
        self._stopping = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._accept, self.options.host, self.options.port, limit=READ_CHUNK, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    # connections -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping.done() or self.counters.connections >= self.options.max_connections:
            self.counters.add("refused")
            writer.transport.abort()  # no lingering: a refused device sees the connection end at once
            return
        self.counters.add("connections")
        self.counters.add("accepted")
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await Connection(self, reader, writer).serve()
        except Exception:  # noqa: BLE001 - one broken connection must not end the others
            log.exception("tcp gateway: connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._handlers.discard(task)
            self.counters.add("connections", -1)
            writer.close()

    def submit(self, envelope: RawEnvelope | None, dead_letter: tuple[bytes | None, bytes] | None) -> asyncio.Future:
        """Hands one record to the producer thread; the future resolves with ``None`` or the Kafka error."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_done(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_resolve, done, exc)

        def produce() -> None:
            if envelope is not None:
                self._producer.send(envelope, on_done)
            else:
                self._producer.send_record(self.options.dlq_topic, dead_letter[0], dead_letter[1], on_done)

        self._send_pool.submit(produce)
        return done

    # stopping ----------------------------------------------------------------------------------

    async def _shutdown(self) -> bool:
        self._server.close()
        if not self._stopping.done():
            self._stopping.set_result(None)  # every connection stops reading and drains
        handlers = list(self._handlers)
        if not handlers:
            return True
        _, pending = await asyncio.wait(handlers, timeout=self.options.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
        return not pending

    def stop(self) -> bool:
        """Stops accepting and reading, waits for Kafka to confirm what was read (acknowledging it), closes.

        Returns:
            True when every frame read was confirmed within the drain timeout.
        """
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return True
        try:
            drained = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(self.options.drain_timeout_s + 10)
        except concurrent.futures.TimeoutError:
            drained = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._send_pool.shutdown(wait=True)
        self._producer.close(10)
        return drained


def _resolve(future: asyncio.Future, exc: BaseException | None) -> None:
    if not future.done():
        future.set_result(exc)


class Connection:
    """One device connection: reads frames, produces them, writes the acknowledgements in order."""

    def __init__(self, gateway: TcpGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.gateway = gateway
        self.options = gateway.options
        self.counters = gateway.counters
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.decoder = FrameDecoder(self.options.framing)
        self.device_id: str | None = None
        self.frame_number = 0
        # (frame number, Kafka future, whether the device gets an answer) in arrival order
        self.waiting: asyncio.Queue = asyncio.Queue(maxsize=self.options.window)

    async def serve(self) -> None:
        """Reads until EOF, idle timeout, an oversized frame or gateway shutdown; then drains."""
        answering = asyncio.create_task(self._answer())
        try:
            await self._read()
        finally:
            await self.waiting.put(None)
            await answering

    async def _read(self) -> None:
        stopping = self.gateway._stopping  # noqa: SLF001 - the gateway's shutdown signal
        while True:
            read = asyncio.ensure_future(self.reader.read(READ_CHUNK))
            done, _ = await asyncio.wait({read, stopping}, timeout=self.options.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()
                if not stopping.done():
                    self.counters.add("idle_closed")
                    log.info("tcp gateway: %s (%s) idle for %g s: closing", self.peer, self.device_id or "no id yet", self.options.idle_timeout_s)
                return
            try:
                data = read.result()
            except ConnectionError:
                return
            if not data:
                if self.decoder.pending:
                    pending = self.decoder.pending_bytes()
                    reason = f"connection ended inside a frame: {len(pending)} bytes without the rest of the frame"
                    await self._dead_letter("truncated_frame", reason, pending, answer=False)
                return
            try:
                frames = self.decoder.feed(data)
            except FrameTooLarge as exc:
                for frame in exc.frames:
                    await self._frame(frame)
                self.counters.add("oversized")
                log.warning("tcp gateway: %s (%s): %s; closing the connection", self.peer, self.device_id or "no id yet", exc.reason)
                await self._dead_letter("frame_too_large", exc.reason, exc.buffered, answer=False)
                return
            for frame in frames:
                if not await self._frame(frame):
                    return

    async def _frame(self, frame: bytes) -> bool:
        """Produces one frame; False when the connection must end (a bad hello frame)."""
        self.frame_number += 1
        self.counters.add("received")
        rule = self.options.device_id
        if rule.mode == "hello" and self.device_id is None:
            try:
                self.device_id = rule.from_hello(frame)
            except DeviceIdError as exc:
                await self._dead_letter(exc.code, exc.reason, frame, answer=False)
                return False
            await self._queue(self._resolved(), answer=True)  # the hello is answered at once: nothing to store
            return True
        payload = frame
        device_id = self.device_id
        if rule.mode != "hello":
            try:
                device_id, payload = rule.split(frame)
            except DeviceIdError as exc:
                await self._dead_letter(exc.code, exc.reason, frame, answer=True)
                return True
        envelope = RawEnvelope(
            payload=payload,
            source="tcp",
            received_at=int(time.time() * 1000),
            device_id=device_id,
            product_id=self.options.product_id,
            format=self.options.format,
        )
        await self._queue(self.gateway.submit(envelope, None), answer=True)
        return True

    def _resolved(self) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def _dead_letter(self, code: str, reason: str, payload: bytes, answer: bool) -> None:
        envelope = RawEnvelope(
            payload=payload, source="tcp", received_at=int(time.time() * 1000), device_id=self.device_id,
            product_id=self.options.product_id, format=self.options.format,
        )
        letter = make_dead_letter(stage=DEAD_LETTER_STAGE, reason_code=code, reason=reason, failed_at=envelope.received_at, envelope=envelope)
        key = self.device_id.encode() if self.device_id else None
        future = self.gateway.submit(None, (key, dead_letter_to_json(letter).encode("utf-8")))
        self.counters.add("rejected")
        await self._queue(future, answer)

    async def _queue(self, future: asyncio.Future, answer: bool) -> None:
        # Blocks while ``window`` frames wait for Kafka: the connection is not read meanwhile.
        await self.waiting.put((self.frame_number, future, answer))

    async def _answer(self) -> None:
        mode = self.options.ack
        broken = False
        while (item := await self.waiting.get()) is not None:
            number, future, answer = item
            exc = await future
            if exc is not None:
                log.warning("tcp gateway: Kafka did not take frame %d of %s: %s", number, self.device_id or self.peer, exc)
            if mode == "none" or not answer or broken:
                continue
            if mode == "byte":
                self.writer.write(ACK_BYTE if exc is None else NAK_BYTE)
            else:
                self.writer.write(f"{'ACK' if exc is None else 'NAK'} {number}\n".encode())
            try:
                await self.writer.drain()
            except ConnectionError:
                broken = True  # the device is gone; keep waiting for Kafka so the counts stay right


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """Adds the ``iotlink bridge tcp`` options."""
    group = parser.add_argument_group("TCP gateway")
    group.add_argument("--host", default=DEFAULT_HOST, metavar="ADDRESS",
                       help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for every interface)")
    group.add_argument("--port", type=int, default=7070, help="TCP port (default 7070; 0: any free port)")
    group.add_argument("--framing", choices=("line", "length", "fixed"), default="line",
                       help="line: newline-delimited; length: length prefix counting the payload bytes; fixed: --frame-size bytes (default line)")
    group.add_argument("--length-bytes", type=int, choices=(1, 2, 4), default=2, help="size of the length prefix (default 2)")
    group.add_argument("--byte-order", choices=("big", "little"), default="big", help="byte order of the length prefix (default big)")
    group.add_argument("--frame-size", type=int, default=0, metavar="BYTES", help="frame size of --framing fixed")
    group.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES, metavar="BYTES",
                       help="larger frames go to the dead-letter topic and close the connection (default 65536)")
    group.add_argument("--device-id", default="hello", metavar="RULE",
                       help="hello (first frame of the connection), prefix:N (ASCII id in the first N bytes, removed from the payload), "
                            "header:OFFSET:LENGTH (hex of those bytes), json:FIELD (default hello)")
    group.add_argument("--format", choices=sorted(FORMATS), help="format hint of the envelopes (default json with --device-id json:..., else bin)")
    group.add_argument("--product-id", help="product id hint of the envelopes (default: from the device registry)")
    group.add_argument("--ack", choices=ACK_MODES, default="none",
                       help="answer each frame after Kafka confirmed it: byte (0x06, 0x15 on failure) or line (ACK n / NAK n); default none")
    group.add_argument("--idle-timeout", type=float, default=300.0, metavar="SECONDS", help="close connections silent this long (default 300)")
    group.add_argument("--max-connections", type=int, default=1000, metavar="N", help="connections beyond are refused and counted (default 1000)")
    group.add_argument("--window", type=int, default=256, metavar="N",
                       help="frames per connection awaiting Kafka; reading pauses beyond (default 256)")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on Ctrl-C/SIGTERM, how long to wait for Kafka confirmations (default 30)")
    group.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS", help="status line period (default 1; 0: none)")


def options_from_args(args, settings) -> TcpOptions:
    """Builds the gateway options from the command line and the settings.

    Raises:
        ValueError: naming the option that is wrong.
    """
    framing = Framing(args.framing, args.length_bytes, args.byte_order, args.frame_size, args.max_frame_bytes)
    rule = DeviceIdRule.parse(args.device_id)
    for name, value in (("--max-connections", args.max_connections), ("--window", args.window)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if args.idle_timeout <= 0:
        raise ValueError(f"--idle-timeout must be positive, got {args.idle_timeout}")
    return TcpOptions(
        bootstrap_servers=settings.bootstrap_servers,
        raw_topic=settings.topics.raw,
        dlq_topic=settings.topics.dlq,
        host=args.host,
        port=args.port,
        framing=framing,
        device_id=rule,
        format=args.format or ("json" if rule.mode == "json" else "bin"),
        product_id=args.product_id,
        ack=args.ack,
        idle_timeout_s=args.idle_timeout,
        max_connections=args.max_connections,
        window=args.window,
        drain_timeout_s=args.drain_timeout,
    )
