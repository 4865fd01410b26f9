"""The Flink SQL catalog: placeholder rendering, connection options, statement splitting (no JVM)."""

import argparse
import re

import pytest

from connectors.flink_sql import (
    CATALOG_DIR,
    EXAMPLES_DIR,
    PLACEHOLDERS,
    CatalogError,
    KafkaScan,
    catalog_files,
    jdbc_options,
    kafka_scan_options,
    placeholders_in,
    render,
    render_catalog,
    split_statements,
    without_comments,
)
from iotlink.sql_commands import add_sql_command, format_table
from jobs.config import Settings, Topics

PG = "postgresql://analyst:s3cr'et@db.example:5433/iotlink?sslmode=require"


def test_every_ddl_file_uses_only_known_placeholders():
    files = catalog_files()
    assert {p.name for p in files} >= {"00_session.sql", "10_kafka_tables.sql", "20_postgres_tables.sql"}
    for path in files:
        used = placeholders_in(path.read_text())
        assert used <= PLACEHOLDERS, f"{path.name}: {used - PLACEHOLDERS}"
    assert all(p.parent == CATALOG_DIR for p in files)


def test_catalog_renders_settings_and_leaves_no_placeholder():
    settings = Settings(bootstrap_servers="k1:9092,k2:9092", postgres_url=PG, topics=Topics(telemetry="prod.telemetry"),
                        iceberg_catalog="postgresql+psycopg://ice:pw@db.example/iceberg_catalog", iceberg_warehouse="file:///wh")
    catalog = render_catalog(settings)
    assert catalog.skipped == []
    text = catalog.text()
    assert "${" not in text
    assert "'properties.bootstrap.servers' = 'k1:9092,k2:9092'" in text
    assert "'topic' = 'prod.telemetry'" in text
    assert "'topic' = 'iotlink.alarms'" in text
    assert "'url' = 'jdbc:postgresql://db.example:5433/iotlink?sslmode=require'" in text
    assert "'password' = 's3cr''et'" in text  # the quote is doubled inside the literal
    assert text.count("'scan.startup.mode' = 'earliest-offset'") == 5
    assert "scan.bounded" not in text
    for table in ("raw_envelopes", "telemetry", "alarms", "dlq", "notifications", "customers", "sites", "devices",
                  "agg_1m", "agg_5m", "agg_1h", "comm_quality_5m", "comm_quality_1h", "alarm_events", "alarm_tickets", "control_cmd"):
        assert re.search(rf"CREATE TABLE {table} (\(|WITH)", text), table
    # The Iceberg tables the job writes, as the catalog `iotlink` (Iceberg's Flink connector).
    assert re.search(r"CREATE CATALOG iotlink WITH \(\s*'type' = 'iceberg'", text)
    assert "'uri' = 'jdbc:postgresql://db.example/iceberg_catalog'" in text and "'jdbc.password' = 'pw'" in text


def test_postgres_tables_are_left_out_without_a_database():
    catalog = render_catalog(Settings(postgres_url=None))
    assert [p.name for p, _ in catalog.skipped] == ["20_postgres_tables.sql", "30_iceberg_catalog.sql"]
    assert "jdbc_options" in catalog.skipped[0][1] and "--postgres-url" in catalog.skipped[0][1]
    assert "iceberg_options" in catalog.skipped[1][1] and "--iceberg-catalog" in catalog.skipped[1][1]
    assert "CREATE TABLE telemetry" in catalog.text() and "CREATE TABLE devices" not in catalog.text()


def test_a_tenant_gets_the_postgresql_tables_only():
    settings = Settings(postgres_url=PG, iceberg_catalog="postgresql+psycopg://ice:pw@db.example/iceberg_catalog", iceberg_warehouse="file:///wh")
    catalog = render_catalog(settings, tenant="acme")
    assert [p.name for p, _ in catalog.skipped] == ["10_kafka_tables.sql", "30_iceberg_catalog.sql"]
    assert all(reason == "not scoped to tenant acme: these tables hold every tenant's records" for _, reason in catalog.skipped)
    assert "CREATE TABLE alarm_events" in catalog.text() and "CREATE TABLE telemetry" not in catalog.text()


def test_unknown_placeholder_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "10_x.sql").write_text("CREATE TABLE t (a INT) WITH ('topic' = '${topic_nope}');")
    with pytest.raises(CatalogError, match=r"10_x.sql: unknown placeholder\(s\) \$\{topic_nope\}"):
        render_catalog(Settings(), directory=tmp_path)
    with pytest.raises(CatalogError, match=r"<text>: placeholder \$\{jdbc_options\} has no value"):
        render("${jdbc_options}", {"jdbc_options": None})


def test_topic_names_are_escaped_inside_literals():
    assert render("'${topic_raw}'", {"topic_raw": "a'b"}) == "'a''b'"


def test_jdbc_options_without_password_put_the_user_in_the_url():
    assert jdbc_options("postgresql://postgres@127.0.0.1:15432/iotlink") == {"url": "jdbc:postgresql://127.0.0.1:15432/iotlink?user=postgres"}
    url = "postgresql://postgres@h:1/db?options=-csearch_path%3Dschema_a"
    assert jdbc_options(url) == {"url": "jdbc:postgresql://h:1/db?user=postgres&options=-csearch_path%3Dschema_a"}
    assert jdbc_options("postgres://u:p%40ss@h/db") == {"url": "jdbc:postgresql://h/db", "username": "u", "password": "p@ss"}
    with pytest.raises(ValueError, match="expected postgresql://"):
        jdbc_options("mysql://h/db")


def test_scan_options_for_each_startup_mode_and_bounded_reads():
    assert kafka_scan_options(KafkaScan()) == {"scan.startup.mode": "earliest-offset", "properties.group.id": "iotlink-sql"}
    assert kafka_scan_options(KafkaScan(startup="latest"))["scan.startup.mode"] == "latest-offset"
    group = kafka_scan_options(KafkaScan(startup="group", group_id="g1"))
    assert group == {"scan.startup.mode": "group-offsets", "properties.group.id": "g1", "properties.auto.offset.reset": "earliest"}
    bounded = kafka_scan_options(KafkaScan(bounded=True))
    assert bounded["scan.bounded.mode"] == "latest-offset"
    assert "scan.bounded.mode" not in kafka_scan_options(KafkaScan())
    with pytest.raises(ValueError, match="startup mode"):
        KafkaScan(startup="timestamp")


def test_bounded_catalog_bounds_every_kafka_table_at_its_latest_offset():
    settings = Settings(postgres_url=None)
    text = render_catalog(settings, KafkaScan(bounded=True)).text()
    dlq = text[text.index("CREATE TABLE dlq"):]
    dlq = dlq[: dlq.index(");")]
    assert "'scan.bounded.mode' = 'latest-offset'" in dlq
    assert text.count("'scan.bounded.mode' = 'latest-offset'") == 5
    assert "scan.bounded" not in render_catalog(settings, KafkaScan()).text()


def test_every_kafka_table_reads_at_the_scan_isolation_level():
    settings = Settings(postgres_url=None)
    committed = render_catalog(settings, KafkaScan()).text()
    uncommitted = render_catalog(settings, KafkaScan(isolation="read_uncommitted")).text()
    assert committed.count("'properties.isolation.level' = 'read_committed'") == 5
    assert uncommitted.count("'properties.isolation.level' = 'read_uncommitted'") == 5
    assert "read_committed" not in uncommitted.replace("read_uncommitted", "")
    with pytest.raises(ValueError, match="isolation"):
        KafkaScan(isolation="serializable")


def test_split_statements_respects_strings_comments_and_quoted_names():
    script = """-- header; with a semicolon
SET 'a' = 'x;y';
SELECT 'it''s; fine', `we;ird` FROM t /* a; comment */;
-- only a comment;
  ;
SELECT 1"""
    parts = split_statements(script)
    assert len(parts) == 3
    assert without_comments(parts[0]) == "SET 'a' = 'x;y'"
    assert parts[1] == "SELECT 'it''s; fine', `we;ird` FROM t /* a; comment */"
    assert parts[2] == "SELECT 1"


def test_every_example_says_what_it_answers_and_parses_into_statements():
    examples = sorted(EXAMPLES_DIR.glob("*.sql"))
    assert len(examples) >= 7
    for path in examples:
        text = path.read_text()
        assert text.startswith("-- "), f"{path.name} has no header comment"
        statements = split_statements(text)
        assert statements and re.match(r"^SELECT\b", without_comments(statements[-1]), re.I), path.name
        assert not placeholders_in(text), path.name


def test_sql_command_options():
    parser = argparse.ArgumentParser()
    add_sql_command(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["sql", "--bounded", "-f", "a.sql", "b.sql", "--max-rows", "5", "--startup", "group"])
    assert (args.file, args.bounded, args.max_rows, args.startup, args.execute) == (["a.sql", "b.sql"], True, 5, "group", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["sql", "-f", "a.sql", "-e", "SELECT 1"])


def test_format_table_aligns_columns_and_prints_null():
    assert format_table(["a", "bb"], [(1, None), ("xyz", 2.5)]).splitlines() == [
        "a   | bb", "----+-----", "1   | NULL", "xyz | 2.5"]


def test_the_sql_session_starts_its_jvm_with_the_python_path_a_later_job_needs(monkeypatch):
    # A thread-mode job run later in the same process embeds Python in this JVM and finds
    # pyflink only through the PYTHONPATH the JVM started with.
    import site

    from pyflink.table import TableEnvironment

    from iotlink.sql_commands import create_table_env

    seen = {}

    class Started(Exception):
        pass

    def create(_settings):
        import os

        seen["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
        raise Started

    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr(TableEnvironment, "create", staticmethod(create))
    with pytest.raises(Started):
        create_table_env()
    assert set(site.getsitepackages()) <= set(seen["PYTHONPATH"].split(":"))
