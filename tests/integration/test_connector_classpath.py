"""Connector classes resolve whichever Py4J thread serves the call (the CI failure of the control-loop test)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

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

def reorder_connections(delay_s):
    other = threading.Thread(target=lambda: (time.sleep(0.2), jvm.java.lang.Thread.sleep(int(delay_s * 1000))))
    other.start()
    jvm.java.lang.Thread.sleep(int(delay_s * 500))
    other.join()

for _ in range(2):  # the second round meets a connection thread started after the loader was shared
    reorder_connections(1.0)
    try:
        KafkaSource.builder()
        print("resolved")
    except Exception as exc:
        print("missing:", str(exc).splitlines()[0][:80])
"""


def run_race(share: bool) -> list[str]:
    script = RACE.format(root=str(ROOT), share=share)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return [line for line in done.stdout.splitlines() if line.startswith(("resolved", "missing"))]


def test_without_the_shared_loader_the_race_loses_the_connector_classes():
    # Shows the failure is real, so the test below can fail.
    assert any(line.startswith("missing") for line in run_race(share=False))


def test_with_the_shared_loader_every_connection_finds_them():
    assert run_race(share=True) == ["resolved", "resolved"]
