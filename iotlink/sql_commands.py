"""``iotlink sql``: Flink SQL over the platform's Kafka topics and PostgreSQL tables.

The session is a PyFlink ``TableEnvironment`` in this process (local MiniCluster) with the
catalog of ``sql/flink/`` rendered from the platform settings (:mod:`connectors.flink_sql`).
Flink's own SQL client cannot run embedded here: PyFlink does not ship the SQL gateway jar
its embedded mode needs; ``--print-catalog`` writes the catalog for a full Flink
distribution's ``sql-client.sh -i`` instead.

- ``iotlink sql``: an interactive prompt (statements end with ``;``).
- ``iotlink sql -f FILE…`` / ``-e "QUERY"``: run the statements and print the results.

With ``--bounded`` every Kafka table ends at the offsets its topic has when the command starts
(explicit offsets, see DESIGN.md), so queries finish and print their final result as a table;
without it, queries stream rows with their change kind until Ctrl-C or ``--max-rows``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from connectors.flink_sql import (
    DEFAULT_GROUP_ID,
    ISOLATION_LEVELS,
    KafkaScan,
    render_catalog,
    split_statements,
    without_comments,
)
from connectors.jars import pipeline_jars_option
from jobs.config import Settings
from jobs.connector_classpath import export_jvm_classpath, make_connector_jars_visible

_SET = re.compile(r"^SET\s+'([^']+)'\s*=\s*'((?:[^']|'')*)'\s*$", re.I | re.S)
_QUIT = re.compile(r"^(quit|exit)\s*;?\s*$", re.I)
PROMPT = "Flink SQL> "
CONTINUATION = "         > "


@dataclass
class StatementResult:
    """What one statement gave.

    Attributes:
        statement: The statement as run.
        columns: Result column names (empty for statements without rows).
        rows: The rows: for a finished query its final content (changes applied), else the
            rows printed so far.
        message: For statements without rows, what happened (``OK``, ``set k = v``).
        complete: False when the rows were cut by ``max_rows``.
    """

    statement: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    message: str = ""
    complete: bool = True


def _python_value(value):
    """A Java field value from Py4J as a Python value (numbers, strings, booleans arrive as such)."""
    from py4j.java_gateway import JavaObject

    if not isinstance(value, JavaObject):
        return value
    name = value.getClass().getName()
    text = value.toString()
    if name == "java.time.Instant":
        return dt.datetime.fromtimestamp(value.toEpochMilli() / 1000, dt.UTC).replace(microsecond=value.getNano() // 1000)
    if name == "java.time.LocalDateTime":
        return dt.datetime.fromisoformat(text)
    if name == "java.time.LocalDate":
        return dt.date.fromisoformat(text)
    if name == "java.math.BigDecimal":
        return decimal.Decimal(text)
    return text


class SqlSession:
    """A Flink SQL session: one TableEnvironment with the platform catalog."""

    def __init__(self, table_env):
        self.table_env = table_env

    def execute_script(self, text: str, max_rows: int | None = None, materialize: bool = True,
                       on_row: Callable[[list[str], str, tuple], None] | None = None) -> Iterator[StatementResult]:
        """Runs every statement of a script in order, yielding each result as it finishes."""
        for statement in split_statements(text):
            yield self.execute(statement, max_rows=max_rows, materialize=materialize, on_row=on_row)

    def execute(self, statement: str, max_rows: int | None = None, materialize: bool = True,
                on_row: Callable[[list[str], str, tuple], None] | None = None) -> StatementResult:
        """Runs one statement.

        Args:
            statement: One SQL statement without its ``;``.
            max_rows: Stop a query after this many rows (its job is cancelled).
            materialize: Apply a query's changes (``-U``/``-D`` retract earlier rows), so a
                finished query yields its final table; False keeps every change as a row.
            on_row: Called with (columns, change kind, values) for every row as it arrives.

        Returns:
            The statement's result.
        """
        statement = without_comments(statement.strip().rstrip(";"))
        match = _SET.match(statement)
        if match:
            # TableEnvironment.execute_sql does not take SET (a SQL client command): apply it here.
            key, value = match.group(1), match.group(2).replace("''", "'")
            self.table_env.get_config().set(key, value)
            return StatementResult(statement, message=f"set {key} = {value}")
        result = self.table_env.execute_sql(statement)
        j_result = result._j_table_result
        if str(j_result.getResultKind().name()) == "SUCCESS":
            return StatementResult(statement, message="OK")
        columns = [str(c) for c in j_result.getResolvedSchema().getColumnNames()]
        if re.match(r"^(INSERT|EXECUTE)\b", statement, re.I):
            result.wait()
            return StatementResult(statement, message=f"job {j_result.getJobClient().get().getJobID().toString()} finished")
        return self._collect(statement, j_result, columns, max_rows, materialize, on_row)

    @staticmethod
    def _collect(statement, j_result, columns, max_rows, materialize, on_row) -> StatementResult:
        outcome = StatementResult(statement, columns=columns)
        iterator = j_result.collect()
        seen = 0
        try:
            while iterator.hasNext():
                j_row = iterator.next()
                kind = str(j_row.getKind().shortString())
                values = tuple(_python_value(j_row.getField(i)) for i in range(j_row.getArity()))
                if on_row is not None:
                    on_row(columns, kind, values)
                if not materialize:
                    outcome.rows.append((kind, *values))
                elif kind in ("+I", "+U"):
                    outcome.rows.append(values)
                else:
                    outcome.rows.remove(values)  # -U / -D retract a row emitted before
                seen += 1
                if max_rows is not None and seen >= max_rows:
                    outcome.complete = not iterator.hasNext()
                    break
        finally:
            iterator.close()  # cancels the query's job when it is still running
        return outcome


def create_table_env(parallelism: int = 1, ui_port: int | None = None, extra: dict[str, str] | None = None,
                     batch: bool = False, s3: bool = False):
    """A TableEnvironment on the local MiniCluster: streaming, or batch for bounded reads.

    With ``s3``, Iceberg's S3 file IO is among the jars (a warehouse on S3).
    """
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from jobs.telemetry_job import export_python_path

    # This may start the process's JVM; a job run later in the same process (thread mode)
    # embeds Python in that JVM and only finds pyflink through the PYTHONPATH it started with,
    # and Iceberg's Flink connector only finds Hadoop through the classpath it started with.
    export_python_path()
    export_jvm_classpath()
    table_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode() if batch else EnvironmentSettings.in_streaming_mode())
    config = table_env.get_config()
    conf = {
        "parallelism.default": str(parallelism),
        # An ephemeral web UI port unless one is asked for: jobs may hold the default one.
        "rest.port": str(ui_port or 0),
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "pipeline.name": "iotlink-sql",
        "pipeline.jars": pipeline_jars_option(s3),  # the Kafka, JDBC and Iceberg connectors of jvm/pom.xml
        **(extra or {}),
    }
    for key, value in conf.items():
        config.set(key, value)
    make_connector_jars_visible()
    _quiet_hadoop_logs()
    return table_env


def _quiet_hadoop_logs() -> None:
    """Hadoop's INFO lines (a "brand-new decompressor" per Iceberg file read) off the terminal:
    PyFlink's client log configuration sends the org.apache.hadoop logger to the console."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel("org.apache.hadoop", jvm.org.apache.logging.log4j.Level.WARN)


def kafka_scan(settings: Settings, startup: str = "earliest", group_id: str = DEFAULT_GROUP_ID, bounded: bool = False,
               isolation: str = "read_committed") -> KafkaScan:
    """Where and how the Kafka tables read: with ``bounded``, up to each partition's end when the query starts."""
    if bounded and startup == "latest":
        raise ValueError("--bounded reads up to the current end, so it needs --startup earliest or group")
    return KafkaScan(startup=startup, group_id=group_id, bounded=bounded, isolation=isolation)


def open_session(settings: Settings, scan: KafkaScan, parallelism: int = 1, ui_port: int | None = None,
                 report: Callable[[str], None] | None = None, tenant: str | None = None,
                 extra: dict[str, str] | None = None) -> SqlSession:
    """A session with the platform catalog created (Kafka tables, and PostgreSQL tables when configured).

    Args:
        settings: Platform settings (Kafka, PostgreSQL, topic names).
        scan: Where the Kafka tables start and stop.
        parallelism: Default parallelism of the queries.
        ui_port: Web UI port of the local cluster (default: any free port).
        report: Receives one line per catalog file skipped (missing settings).
        tenant: Only the PostgreSQL tables (``settings.postgres_url`` is the tenant's login).
        extra: Flink settings of the session's cluster (over the defaults here).
    """
    conf = {}
    if scan.startup == "group":
        # Group offsets are committed on checkpoints only.
        checkpoints = (settings.data_dir / "sql-checkpoints").resolve()
        conf = {"execution.checkpointing.interval": "10 s", "execution.checkpointing.dir": checkpoints.as_uri()}
    conf |= extra or {}
    # Bounded reads run in batch mode: final tables only (no changelog), and ORDER BY holds.
    s3 = (settings.iceberg_warehouse or "").startswith("s3://")
    session = SqlSession(create_table_env(parallelism, ui_port, conf, batch=scan.bounded, s3=s3))
    catalog = render_catalog(settings, scan, tenant=tenant)
    for path, reason in catalog.skipped:
        if report is not None:
            report(f"{path.name} left out: {reason}")
    for _path, text in catalog.files:
        for _result in session.execute_script(text):
            pass
    return session


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """A result as an aligned text table with a header line."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


class _StreamPrinter:
    """Prints query rows as they arrive: change kind, then the values."""

    def __init__(self, out):
        self.out = out
        self.header_for: list[str] | None = None

    def __call__(self, columns: list[str], kind: str, values: tuple) -> None:
        if self.header_for is not columns:
            self.header_for = columns
            print(" | ".join(["op", *columns]), file=self.out)
        print(" | ".join([kind, *(_cell(v) for v in values)]), file=self.out, flush=True)


def run_statements(session: SqlSession, text: str, bounded: bool, max_rows: int | None, out=None) -> int:
    """Runs a script and prints each result (to ``out``, default stdout); returns the number of statements run."""
    out = out or sys.stdout
    printer = None if bounded else _StreamPrinter(out)
    count = 0
    for result in session.execute_script(text, max_rows=max_rows, materialize=bounded, on_row=printer):
        count += 1
        if result.columns and bounded:
            print(format_table(result.columns, result.rows), file=out)
            suffix = "" if result.complete else f", stopped at --max-rows {max_rows}"
            print(f"({len(result.rows)} rows{suffix})\n", file=out, flush=True)
        elif result.columns:
            print(f"({len(result.rows)} changes{'' if result.complete else ', stopped at --max-rows'})\n", file=out, flush=True)
        else:
            print(result.message, file=out, flush=True)
    return count


def interactive(session: SqlSession, bounded: bool, max_rows: int | None, stdin=None, out=None) -> None:
    """Reads statements (ending with ``;``) from ``stdin`` and runs each; ``quit;`` or end of input stops.

    Ctrl-C stops a running query (its job is cancelled) and returns to the prompt.
    """
    stdin, out = stdin or sys.stdin, out or sys.stdout
    tty = stdin.isatty()
    if tty:
        import readline  # noqa: F401 - line editing and history for input()
    buffer: list[str] = []
    while True:
        prompt = (CONTINUATION if buffer else PROMPT) if tty else ""
        try:
            line = input(prompt) if tty else stdin.readline()
            if not tty and line == "":
                raise EOFError
        except EOFError:
            break
        except KeyboardInterrupt:
            buffer = []
            print(file=out)
            continue
        if not buffer and _QUIT.match(line.strip()):
            break
        buffer.append(line.rstrip("\n"))
        text = "\n".join(buffer)
        statements = split_statements(text)
        if not statements or not text.rstrip().endswith(";"):
            if not statements and text.strip().endswith(";"):
                buffer = []
            continue
        buffer = []
        try:
            run_statements(session, text, bounded, max_rows, out)
        except KeyboardInterrupt:
            print("\nquery cancelled", file=out, flush=True)
        except Exception as exc:  # noqa: BLE001 - a bad statement reports and the session goes on
            print(f"[ERROR] {_error_line(exc)}", file=out, flush=True)


def _error_line(exc: Exception) -> str:
    """The innermost useful line of a Flink error (Java exceptions carry long traces)."""
    text = str(exc)
    causes = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")]
    for line in causes:
        if "ValidationException" in line or "SqlParserException" in line or "ParseException" in line:
            return line.lstrip(": ")
    return causes[0].lstrip(": ") if causes else type(exc).__name__


def add_sql_command(sub, common: argparse.ArgumentParser) -> None:
    """Adds ``iotlink sql`` to the ``iotlink`` sub-command parsers."""
    parser = sub.add_parser(
        "sql", parents=[common], help="Flink SQL over the Kafka topics and PostgreSQL tables (interactive, -f FILE, -e QUERY)",
        description="A Flink SQL session with the platform catalog (sql/flink/) rendered from the settings: Kafka tables raw_envelopes, "
        "telemetry (+ view telemetry_readings), alarms, dlq, notifications; PostgreSQL tables customers, sites, devices, agg_1m/5m/1h "
        "(+ _device/_product views), comm_quality_5m/1h, alarm_events, alarm_tickets, control_cmd, device_customer_history, "
        "customer_product_daily, customer_analysis_daily. Without -f/-e an interactive prompt. "
        "Examples: sql/examples/*.sql, e.g. iotlink sql --embedded --bounded -f sql/examples/device_5min_avg.sql",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("-f", "--file", nargs="+", metavar="FILE", help="run the statements of these SQL files in order")
    what.add_argument("-e", "--execute", metavar="SQL", help="run these statements (separated by ';')")
    what.add_argument("--print-catalog", action="store_true",
                      help="print the rendered catalog DDL (an init file for a Flink distribution's sql-client.sh -i) and exit")
    parser.add_argument("--bounded", action="store_true",
                        help="read every Kafka topic up to its end when the query starts (the last committed record under "
                        "read_committed): queries finish and print a table")
    parser.add_argument("--startup", choices=("earliest", "latest", "group"), default="earliest",
                        help="where Kafka reads start: the topic's beginning (default), new records only, or the consumer group's offsets")
    parser.add_argument("--group-id", default=DEFAULT_GROUP_ID, help=f"Kafka consumer group of the reads (default {DEFAULT_GROUP_ID})")
    parser.add_argument("--isolation", choices=ISOLATION_LEVELS, default="read_committed",
                        help="Kafka isolation level of the tables: read_committed (default: what the jobs' transactions "
                        "committed) or read_uncommitted (also records of open and aborted transactions)")
    parser.add_argument("--max-rows", type=int, metavar="N", help="stop each query after N rows (streaming queries run until Ctrl-C otherwise)")
    parser.add_argument("--tenant", metavar="TENANT",
                        help="query as this tenant (its login from iotlink tenants add, kept in <data-dir>/tenants/): the PostgreSQL "
                        "tables only, each showing the tenant's own devices' rows")


def run_sql_command(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``iotlink sql``."""
    from iotlink.stack import with_stack

    stack, settings = with_stack(args, settings, ("kafka", "postgres")) if not args.print_catalog else (None, settings)
    try:
        if stack is not None and settings.postgres_url:
            from connectors.postgres import apply_migrations

            apply_migrations(settings.postgres_url)  # the embedded database starts empty
        scan = kafka_scan(settings, args.startup, args.group_id, args.bounded, args.isolation)
        if args.tenant:
            from connectors.tenant_store import load_login, tenant_url

            if not settings.postgres_url:
                print("iotlink sql: --tenant needs PostgreSQL: give --postgres-url (or --embedded)", file=sys.stderr)
                return 2
            role, password = load_login(settings.data_dir / "tenants", args.tenant)
            settings = settings.model_copy(update={"postgres_url": tenant_url(settings.postgres_url, role, password)})
        if args.print_catalog:
            catalog = render_catalog(settings, scan, tenant=args.tenant)
            for path, reason in catalog.skipped:
                print(f"-- {path.name} left out: {reason}")
            print(catalog.text())
            return 0
        session = open_session(settings, scan, args.parallelism or 1, args.ui_port, report=lambda line: print(line, file=sys.stderr),
                               tenant=args.tenant)
        if args.file or args.execute:
            scripts = [Path(f).read_text(encoding="utf-8") for f in args.file] if args.file else [args.execute]
            try:
                for script in scripts:
                    run_statements(session, script, args.bounded, args.max_rows)
            except KeyboardInterrupt:
                print("\nquery cancelled")
            except Exception as exc:  # noqa: BLE001 - Flink's errors are Java traces: print their cause in one line
                print(f"iotlink sql: [ERROR] {_error_line(exc)}", file=sys.stderr)
                return 1
            return 0
        if sys.stdin.isatty():
            mode = "bounded: Kafka tables end at their current end" if args.bounded else "streaming: Ctrl-C stops a query"
            print(f"Flink SQL session ({mode}); SHOW TABLES; lists the tables, quit; leaves.")
        interactive(session, args.bounded, args.max_rows)
        return 0
    finally:
        if stack is not None:
            stack.stop()
