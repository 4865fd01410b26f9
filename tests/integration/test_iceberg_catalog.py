"""Iceberg's Flink connector on a PostgreSQL catalog: a job that touches nothing but Iceberg finds
the JDBC driver, a catalog connection the server closed is opened anew, and the connections the
connector leaves open are closed by the server once idle."""

import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from connectors.flink_sql import option_lines
from connectors.iceberg import flink_catalog_options
from iotlink.sql_commands import create_table_env

pytestmark = pytest.mark.integration
DATABASE = "iceberg_idle_sessions"


def catalog_connections(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (DATABASE,)
        ).fetchone()[0]


def test_an_iceberg_only_job_survives_closed_connections_and_leaves_none_open(settings, tmp_path):
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    url = urlunsplit(urlsplit(settings.postgres_url)._replace(path=f"/{DATABASE}"))
    (tmp_path / "wh").mkdir()
    options = flink_catalog_options(url, (tmp_path / "wh").as_uri())
    assert "idle_session_timeout=60000" in options["jdbc.options"]
    options["jdbc.options"] = "-c idle_session_timeout=1000"  # the catalog's 60 s, shortened for the test

    t_env = create_table_env(batch=True)
    t_env.execute_sql(f"CREATE CATALOG idle WITH ({option_lines(options)})")
    t_env.execute_sql("CREATE DATABASE IF NOT EXISTS idle.db")
    t_env.execute_sql("CREATE TABLE IF NOT EXISTS idle.db.readings (device_id STRING, v DOUBLE)")
    time.sleep(2.5)  # the server closes the planner's catalog connection: planning the INSERT reconnects
    # Nothing but Iceberg in this job: no other connector has loaded the PostgreSQL driver for it.
    t_env.execute_sql("INSERT INTO idle.db.readings VALUES ('d1', 1.5), ('d2', 2.5)").wait(120_000)
    assert [tuple(row) for row in t_env.execute_sql("SELECT count(*), sum(v) FROM idle.db.readings").collect()] == [(2, 4.0)]

    # The sink's committer aggregator never closes its catalog: the server does, once idle.
    deadline = time.monotonic() + 15
    while catalog_connections(settings.postgres_url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert catalog_connections(settings.postgres_url) == 0
