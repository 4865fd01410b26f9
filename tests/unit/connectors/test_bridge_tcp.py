"""The TCP gateway's handling of device ids: an id that breaks the rule is a dead letter naming no
device (a hello closes the connection; a frame is still acknowledged), and the bind default."""

import argparse
import asyncio

import orjson

from connectors.bridge_tcp import DEFAULT_HOST, Connection, TcpGateway, TcpOptions, add_arguments
from connectors.tcp_framing import DeviceIdRule


class RecordingGateway(TcpGateway):
    """A gateway whose records go to a list instead of Kafka (every one confirmed at once)."""

    def __init__(self, options: TcpOptions):
        super().__init__(options)
        self.sent: list[tuple[object, object]] = []

    def submit(self, envelope, dead_letter):
        self.sent.append((envelope, dead_letter))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class Writer:
    """What a connection needs of a stream writer."""

    def get_extra_info(self, name):
        return ("127.0.0.1", 40000)


def run_frames(rule: DeviceIdRule, frames: list[bytes]) -> tuple[RecordingGateway, list[bool], list[tuple]]:
    gateway = RecordingGateway(TcpOptions("127.0.0.1:1", "raw", "dlq", device_id=rule, format="json"))

    async def feed():
        connection = Connection(gateway, None, Writer())
        results = []
        for frame in frames:  # as the connection's reader does: a False ends the connection
            results.append(await connection._frame(frame))  # noqa: SLF001 - the unit under test
            if not results[-1]:
                break
        queued = []
        while not connection.waiting.empty():
            number, _, answer = connection.waiting.get_nowait()
            queued.append((number, answer))
        return results, queued

    results, queued = asyncio.run(feed())
    return gateway, results, queued


def test_a_hello_breaking_the_rule_is_a_dead_letter_and_ends_the_connection():
    gateway, results, queued = run_frames(DeviceIdRule("hello"), [b"..%2F..\\etc", b'{"t": 1}'])
    assert results == [False]  # the connection ends: nothing after it is read
    assert queued == [(1, False)]  # no answer to a hello that named no device
    [(envelope, (key, value))] = gateway.sent
    letter = orjson.loads(value)
    assert envelope is None and key is None
    assert (letter["stage"], letter["reason_code"], letter["device_id"], letter["source"]) == ("ingest", "invalid_device_id", None, "tcp")
    assert "has the path separator '\\\\' at offset 7" in letter["reason"]
    assert letter["payload"] == "..%2F..\\etc"
    assert gateway.counters.snapshot()["rejected"] == 1


def test_a_frame_whose_id_breaks_the_rule_is_a_dead_letter_acknowledged_and_the_next_one_goes_through():
    hostile = orjson.dumps({"device_id": "x" * 10_240, "t": 1})
    gateway, results, queued = run_frames(DeviceIdRule("json", field="device_id"), [hostile, b'{"device_id": "dev-1", "t": 2}'])
    assert results == [True, True]
    assert queued == [(1, True), (2, True)]  # the dead letter is answered ACK once stored, as before
    (none, (key, value)), (envelope, nothing) = gateway.sent
    letter = orjson.loads(value)
    assert none is None and key is None and letter["device_id"] is None
    assert letter["reason_code"] == "invalid_device_id"
    assert "device id of 10240 characters is longer than the limit of 128" in letter["reason"]
    assert letter["payload"].encode() == hostile
    assert nothing is None and envelope.device_id == "dev-1"


def test_the_gateway_binds_this_machine_only_unless_told_otherwise():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).host == DEFAULT_HOST == "127.0.0.1" == TcpOptions("k:1", "raw", "dlq").host
    assert parser.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    assert "default 127.0.0.1" in parser.format_help()
