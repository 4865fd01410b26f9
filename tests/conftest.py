import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.jars import MissingJarsError  # noqa: E402
from jobs.connector_classpath import export_jvm_classpath  # noqa: E402

# Tests that run a job in this process need Hadoop's client and the JDBC drivers (Iceberg,
# PostgreSQL) on the classpath of the JVM PyFlink starts here, before any test starts it. (The unit tests run without the jars; the
# integration tests say what is missing.)
with contextlib.suppress(MissingJarsError):
    export_jvm_classpath()
