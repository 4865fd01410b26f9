"""The connector jars, visible to every thread that serves this process's PyFlink gateway.

PyFlink builds sources and sinks through Py4J, which resolves Java classes with the context class
loader of the Java thread serving each call, and adds ``pipeline.jars`` to that one thread only.
Py4J keeps a pool of connections, each served by its own Java thread: when another Python thread
(a bridge, a sink, a garbage-collected Java reference) uses the gateway at the same moment, the
next call may be served by a thread that never saw the jars, and ``KafkaSource.builder()`` fails
with "Could not found the Java class". One class loader for all of them removes the race.
"""

from __future__ import annotations

import os
import threading

from connectors.jars import flink_connector_jars, jvm_classpath_jars

_lock = threading.Lock()
_loader = None  # the process's one connector class loader (a Py4J reference)


def make_connector_jars_visible() -> None:
    """Gives every Py4J thread of the gateway (and the ones it starts later) the connector jars.

    Call it after the gateway is up and before any connector class is used; it is cheap to call
    again, and a connection thread started afterwards inherits the loader from the gateway's
    accepting thread. Under ``flink run -py`` it does nothing: the Flink CLI owns the gateway and
    gives its threads the job's class loader (flink-python, ``pipeline.jars``) itself.
    """
    if "PYFLINK_GATEWAY_PORT" in os.environ:
        return
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import to_jarray

    global _loader
    jvm = get_gateway().jvm
    with _lock:
        if _loader is None:
            # On top of this thread's loader (which may already hold more than the system one).
            parent = jvm.java.lang.Thread.currentThread().getContextClassLoader()
            urls = to_jarray(jvm.java.net.URL, [jvm.java.net.URL(uri) for uri in flink_connector_jars()])
            _loader = jvm.java.net.URLClassLoader(urls, parent)
        for thread in jvm.java.lang.Thread.getAllStackTraces().keySet():
            if _runs_py4j(thread):
                thread.setContextClassLoader(_loader)


def add_to_local_classpath(jars: list[str], probe_class: str, what: str) -> None:
    """Puts jars on the classpath of the JVM this process starts for PyFlink (the local cluster).

    PyFlink's local gateway appends ``HADOOP_CLASSPATH`` to the JVM's classpath, so the jars go
    there, before the JVM starts. Under ``flink run -py`` the cluster's own classpath applies and
    nothing is done.

    Args:
        jars: Jar paths.
        probe_class: A class of the jars, to check a JVM that is already running.
        what: What the jars are, for the error message.

    Raises:
        RuntimeError: this process's JVM already runs without the jars.
    """
    if "PYFLINK_GATEWAY_PORT" in os.environ:
        return
    from pyflink import java_gateway

    if java_gateway._gateway is not None:
        # Too late for the classpath; say so rather than fail later inside the job.
        try:
            java_gateway.get_gateway().jvm.java.lang.Class.forName(probe_class)
        except Exception as exc:  # noqa: BLE001 - a Py4J error wrapping ClassNotFoundException
            raise RuntimeError(f"the Flink JVM of this process started without {what}; run the job in a new process") from exc
        return
    current = [p for p in os.environ.get("HADOOP_CLASSPATH", "").split(os.pathsep) if p]
    os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(dict.fromkeys(current + jars))


def export_jvm_classpath() -> None:
    """Puts Hadoop's client and the JDBC drivers on the local JVM's classpath, for Iceberg's Flink
    connector and its JDBC catalog (:func:`connectors.jars.jvm_classpath_jars` says why)."""
    add_to_local_classpath(jvm_classpath_jars(), "org.postgresql.Driver", "Hadoop's client and the JDBC drivers (Iceberg)")


def _runs_py4j(thread) -> bool:
    """Whether a Java thread is one of Py4J's: its outermost frames are Py4J's ``run``."""
    frames = thread.getStackTrace()
    outermost = [frames[i].getClassName() for i in range(max(0, len(frames) - 3), len(frames))]
    # The gateway is shaded into flink-python (org.apache.flink.api.python.shaded.py4j).
    return any("py4j." in name for name in outermost)
