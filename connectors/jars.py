"""Where the platform's Java jars are: the ones ``jvm/pom.xml`` names, copied by the bootstrap
(``mvn ... package``) into ``jvm/lib/<module>/``.

- ``broker``: Apache Kafka for the embedded stack (a classpath for ``java -cp``);
- ``flink``: the connector jars every job runs with (``pipeline.jars``).
"""

from __future__ import annotations

import os
from pathlib import Path

JVM_DIR = Path(__file__).resolve().parent.parent / "jvm"
JARS_ENV_VAR = "IOTLINK_JARS_DIR"  # another jvm/lib (a cluster image puts its copy elsewhere)
SETUP_HINT = "run 'make setup' (scripts/bootstrap.sh resolves jvm/pom.xml with Maven)"


class MissingJarsError(RuntimeError):
    """The jars of a module were never copied (or were removed)."""


def jars_dir(module: str) -> Path:
    """The directory holding one module's jars.

    Args:
        module: ``broker`` or ``flink`` (a module of ``jvm/pom.xml``).
    """
    base = Path(os.environ[JARS_ENV_VAR]) if os.environ.get(JARS_ENV_VAR) else JVM_DIR / "lib"
    return base / module


def module_jars(module: str) -> list[Path]:
    """Every jar of one module, sorted by name.

    Raises:
        MissingJarsError: none is there, with the command that fetches them.
    """
    jars = sorted(jars_dir(module).glob("*.jar"))
    if not jars:
        raise MissingJarsError(f"no {module} jars in {jars_dir(module)}: {SETUP_HINT}")
    return jars


def kafka_broker_classpath() -> str:
    """The ``java -cp`` value that runs Apache Kafka (``kafka.Kafka``, ``kafka.tools.StorageTool``)."""
    return os.pathsep.join(str(jar) for jar in module_jars("broker"))


# Jars that belong on the JVM's own classpath (HADOOP_CLASSPATH), not among a job's jars:
# - Hadoop's client: Flink loads ``org.apache.hadoop`` classes parent-first;
# - the JDBC drivers: Iceberg's JDBC catalog connects through ``DriverManager``, which hands a
#   driver only to code of the class loader that registered it; from a job's own jars the driver
#   is registered only once something else of that job has loaded it (an Iceberg-only job fails
#   with "No suitable driver"), and SQLite's native library loads once per JVM.
JVM_CLASSPATH_JAR_PREFIXES = ("hadoop-client-", "postgresql-", "sqlite-jdbc-")
# Iceberg's S3 file IO and the AWS SDK (65 MB): only a job whose warehouse is on S3 takes it.
S3_JAR_PREFIX = "iceberg-aws-bundle-"


def flink_connector_jars(s3: bool = False) -> list[str]:
    """The connector jars as ``file://`` URIs, for ``pipeline.jars``: Kafka, JDBC, Iceberg, the
    project's functions; Iceberg's S3 support with ``s3``. (Not the :func:`jvm_classpath_jars`.)"""
    return [
        jar.as_uri() for jar in module_jars("flink")
        if not jar.name.startswith(JVM_CLASSPATH_JAR_PREFIXES) and (s3 or not jar.name.startswith(S3_JAR_PREFIX))
    ]


def pipeline_jars_option(s3: bool = False) -> str:
    """The ``pipeline.jars`` value: the connector jars, ``;``-separated as Flink lists them."""
    return ";".join(flink_connector_jars(s3))


def jvm_classpath_jars() -> list[str]:
    """The jars (paths) every Flink JVM and the job's client need on their own classpath:
    Hadoop's client and the PostgreSQL and SQLite JDBC drivers (``JVM_CLASSPATH_JAR_PREFIXES``)."""
    return [str(jar) for jar in module_jars("flink") if jar.name.startswith(JVM_CLASSPATH_JAR_PREFIXES)]
