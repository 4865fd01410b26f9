"""Connector classes resolve whichever Py4J thread serves the call (the CI failure of the control-loop test)."""

from py4j_race import REORDER_CONNECTIONS, ROOT, run_race_script

# Another Python thread's call outlasts the main thread's, so the main thread's next call is served
# by a connection (a Java thread) that was created after pipeline.jars was set on the first one.
RACE = """
import sys, threading, time
sys.path.insert(0, {root!r})
from pyflink.common import Configuration
from pyflink.java_gateway import get_gateway
from pyflink.datastream.connectors.kafka import KafkaSource
from connectors.jars import pipeline_jars_option
from jobs.connector_classpath import make_connector_jars_visible

Configuration().set_string("pipeline.jars", pipeline_jars_option())
if {share}:
    make_connector_jars_visible()
jvm = get_gateway().jvm

{reorder}
for _ in range(2):  # the second round meets a connection thread started after the loader was shared
    reorder_connections(1.0)
    try:
        KafkaSource.builder()
        print("resolved")
    except Exception as exc:
        print("missing:", str(exc).splitlines()[0][:80])
"""


def run_race(share: bool) -> list[str]:
    return run_race_script(RACE.format(root=str(ROOT), share=share, reorder=REORDER_CONNECTIONS), ("resolved", "missing"), timeout_s=120)


def test_without_the_shared_loader_the_race_loses_the_connector_classes():
    # Shows the failure is real, so the test below can fail.
    assert any(line.startswith("missing") for line in run_race(share=False))


def test_with_the_shared_loader_every_connection_finds_them():
    assert run_race(share=True) == ["resolved", "resolved"]
