"""The rollout controller outlives a failing dependency and keeps the reports it had not applied."""

import threading

from iotlink.ota_controller import ControllerIO, RolloutController


class DatabaseAway:
    """A connection whose every statement fails, as after a PostgreSQL restart."""

    closed = True

    def __init__(self):
        self.statements = 0

    def execute(self, *_args, **_kwargs):
        self.statements += 1
        raise ConnectionError("server closed the connection unexpectedly")

    def close(self):
        pass


def test_a_failing_pass_is_retried_with_a_new_connection_and_loses_no_report():
    first, second = DatabaseAway(), DatabaseAway()
    stop = threading.Event()
    connections = iter([second])

    def reconnect():
        stop.set()  # one retry is enough to see
        return next(connections)

    io = ControllerIO(conn=first, fleet={}, send_records=lambda records: None, request_state=lambda thing: None,
                      commands_topic="c", notifications_topic="n", clock_ms=lambda: 1000, reconnect=reconnect)
    controller = RolloutController(io)
    controller.on_reported("dev-1", {"firmware": {"version": "2.0.1"}})
    controller.on_reported("dev-2", {"fan": "on"})  # not about firmware: not kept
    stats = controller.run(stop, interval_s=0.01)
    assert stats.errors == 1 and stats.passes == 0
    assert stats.last_error == "ConnectionError: server closed the connection unexpectedly"
    assert controller.io.conn is second and first.statements == 1
    assert list(controller._reports) == [("dev-1", "2.0.1", None, 1000)]
