"""Planning works on whichever Py4J thread serves the call (the CI failure of the control-loop test:
"NullPointerException: metadataHandlerProvider" in ``toChangelogStream``)."""

from py4j_race import REORDER_CONNECTIONS, ROOT, run_race_script

# Another Python thread's call outlasts the main thread's, so the main thread's next call is served
# by a connection (a Java thread) created after the table environment was.
RACE = """
import sys, threading, time
sys.path.insert(0, {root!r})
from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment
from connectors.jars import pipeline_jars_option
from jobs.connector_classpath import make_connector_jars_visible
from jobs.table_planning import attach_as_datastream, to_data_stream, to_upsert_changelog

config = Configuration()
config.set_string("pipeline.jars", pipeline_jars_option())
env = StreamExecutionEnvironment.get_execution_environment(config)
make_connector_jars_visible()
t_env = StreamTableEnvironment.create(env)
t_env.execute_sql("CREATE TEMPORARY TABLE src (a INT, b STRING) WITH ('connector' = 'datagen', 'number-of-rows' = '10')")
t_env.execute_sql("CREATE TEMPORARY TABLE out_table (b STRING, n BIGINT) WITH ('connector' = 'blackhole')")
t_env.create_temporary_view("counts", t_env.sql_query("SELECT b, COUNT(*) AS n FROM src WHERE a > 3 AND a < 8 GROUP BY b"))
jvm = get_gateway().jvm

{reorder}
def plain():
    t_env._j_tenv.toChangelogStream(t_env.from_path("counts")._j_table)

def changelog():
    to_upsert_changelog(t_env, "counts")

def data_stream():
    to_data_stream(t_env, t_env.sql_query("SELECT a FROM src WHERE a > 3 AND a < 8"))

def statement_set():
    statements = t_env.create_statement_set()
    statements.add_insert_sql("INSERT INTO out_table SELECT * FROM counts")
    attach_as_datastream(t_env, statements)

for name in {calls!r}:
    reorder_connections(1.0)
    try:
        globals()[name]()
        print("planned", name)
    except Exception as exc:
        reason = [line for line in str(exc).splitlines() if "Exception" in line][:1]
        print("failed", name, reason)
"""


def run_race(calls: list[str]) -> list[str]:
    return run_race_script(RACE.format(root=str(ROOT), calls=calls, reorder=REORDER_CONNECTIONS), ("planned", "failed"))


def test_planning_on_another_py4j_thread_fails_without_the_provider():
    # Shows the failure is real, so the test below can fail.
    lines = run_race(["plain"])
    assert len(lines) == 1 and lines[0].startswith("failed plain") and "metadataHandlerProvider" in lines[0]


def test_every_planning_call_works_on_another_py4j_thread():
    assert run_race(["changelog", "data_stream", "statement_set", "changelog"]) == [
        "planned changelog", "planned data_stream", "planned statement_set", "planned changelog",
    ]
