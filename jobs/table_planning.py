"""Table API calls that optimize a plan, safe on whichever Py4J thread serves them.

Calcite keeps the planner's metadata provider in a Java thread-local that Flink sets only on the
thread that created the table environment, and Py4J may serve this Python thread's next call from
another Java thread of its pool (after any other Python thread used the gateway at the same moment:
a sink, a bridge, a garbage-collected Java reference). Planning there fails with
"NullPointerException: metadataHandlerProvider". ``io.iotlink.flink.PlannerCalls`` sets the provider
and plans in one Java call, so nothing can come in between.
"""

from __future__ import annotations


def _planner_calls():
    from pyflink.java_gateway import get_gateway

    return get_gateway().jvm.io.iotlink.flink.PlannerCalls


def to_upsert_changelog(t_env, table_path: str):
    """The upsert changelog of a registered table, as a Java ``DataStream<Row>``.

    Upserts only: no retraction row before each change.

    Args:
        t_env: The job's StreamTableEnvironment.
        table_path: The registered table or view.

    Returns:
        The Java DataStream (a Py4J reference), for Java operators to take.
    """
    from pyflink.java_gateway import get_gateway

    api = get_gateway().jvm.org.apache.flink.table
    return _planner_calls().toChangelogStream(
        t_env._j_tenv, t_env.from_path(table_path)._j_table, api.api.Schema.derived(), api.connector.ChangelogMode.upsert(),
    )


def to_data_stream(t_env, table):
    """``t_env.to_data_stream(table)``, planned on the thread that serves the call.

    Args:
        t_env: The job's StreamTableEnvironment.
        table: An insert-only Table.

    Returns:
        The pyflink DataStream of its rows.
    """
    from pyflink.datastream import DataStream

    return DataStream(_planner_calls().toDataStream(t_env._j_tenv, table._j_table))


def attach_as_datastream(t_env, statements) -> None:
    """``statements.attach_as_datastream()``, planned on the thread that serves the call.

    Args:
        t_env: The StreamTableEnvironment the statement set belongs to.
        statements: A StreamStatementSet.
    """
    _planner_calls().attachAsDataStream(t_env._j_tenv, statements._j_statement_set)
