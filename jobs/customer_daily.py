"""The customer daily job: telemetry x device assignments -> ``customer_product_daily`` (Flink SQL).

    streaming: Kafka iotlink.telemetry --+
    batch: Iceberg telemetry (days) -----+--> sql/jobs/customer_daily.sql
        (lookup join with device_customer_history at the reading's device time, copies dropped,
         GROUP BY customer, product, UTC day, metric) --> JDBC upsert into PostgreSQL
                                                      --> Iceberg customer_product_daily (optional)

All of it is Flink SQL over the platform catalog (``sql/flink``), which the caller registers in
the table environment first; this module only adds the source view for the mode and submits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

from connectors.flink_sql import render, split_statements, without_comments

CUSTOMER_DAILY_SQL = Path(__file__).resolve().parent.parent / "sql" / "jobs" / "customer_daily.sql"
DAY_MS = 86_400_000
_STATE_MARGIN_MS = 3_600_000


@dataclass(frozen=True)
class CustomerDailyJob:
    """What one run of the customer daily job reads.

    Attributes:
        days: (first, last) UTC days, both included, to recompute from the Iceberg archive in
            batch; None to follow the telemetry topic (streaming).
        allowed_lateness_ms: Streaming: how long after its day ended a reading still corrects it.
        dedup_ttl_ms: Streaming: how long copies of a reading are recognised as copies.
        iceberg: Also write Iceberg ``customer_product_daily`` (the platform catalog ``iotlink``).
    """

    days: tuple[date, date] | None = None
    allowed_lateness_ms: int = 300_000
    dedup_ttl_ms: int = 3_600_000
    iceberg: bool = False

    def __post_init__(self) -> None:
        if self.days is not None and self.days[0] > self.days[1]:
            raise ValueError(f"the first day {self.days[0]} is after the last {self.days[1]}")

    @property
    def streaming(self) -> bool:
        """Whether the job follows the telemetry topic (else: a bounded recomputation)."""
        return self.days is None


def day_start_ms(day: date) -> int:
    """Epoch milliseconds of a UTC day's start."""
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp() * 1000)


def source_view(job: CustomerDailyJob) -> str:
    """The ``metric_values`` view of the mode: one row per numeric metric of a telemetry record."""
    if job.streaming:
        # A reading whose day ended more than the lateness ago would find the day's state gone
        # and overwrite the whole day with itself: left to a batch recomputation instead.
        return (
            "CREATE TEMPORARY VIEW metric_values AS\n"
            "SELECT device_id, product_id, CAST(device_time AS TIMESTAMP_LTZ(3)) AS device_time, metric, metric_value, proc_time\n"
            "FROM telemetry_readings\n"
            "WHERE metric_value IS NOT NULL\n"
            f"  AND CAST(device_time AS DATE) >= CAST(TO_TIMESTAMP_LTZ(UNIX_TIMESTAMP() * 1000 - {int(job.allowed_lateness_ms)}, 3) AS DATE)"
        )
    first, last = job.days
    return (
        "CREATE TEMPORARY VIEW metric_values AS\n"
        "SELECT t.device_id, t.product_id, t.device_ts AS device_time, m.metric, m.metric_value, PROCTIME() AS proc_time\n"
        "FROM iotlink.iotlink.telemetry AS t CROSS JOIN UNNEST(t.metrics) AS m (metric, metric_value)\n"
        f"WHERE t.device_ts >= TO_TIMESTAMP_LTZ({day_start_ms(first)}, 3) AND t.device_ts < TO_TIMESTAMP_LTZ({day_start_ms(last) + DAY_MS}, 3)\n"
        "  AND m.metric_value IS NOT NULL"
    )


def iceberg_insert(job: CustomerDailyJob) -> str:
    """The Iceberg INSERT: upserts on the table's key while streaming; in batch the recomputed
    days' partitions (``day``) are replaced, so a row no longer produced disappears there too."""
    if job.streaming:
        return "INSERT INTO iotlink.iotlink.customer_product_daily /*+ OPTIONS('upsert-enabled'='true') */ SELECT * FROM customer_daily_rows"
    return "INSERT OVERWRITE iotlink.iotlink.customer_product_daily SELECT * FROM customer_daily_rows"


def customer_daily_statements(job: CustomerDailyJob) -> tuple[list[str], list[str]]:
    """The job's statements: (the source view and the views of ``customer_daily.sql``, the INSERTs)."""
    state_ttl = DAY_MS + job.allowed_lateness_ms + _STATE_MARGIN_MS
    text = render(CUSTOMER_DAILY_SQL.read_text(encoding="utf-8"), {"day_state_ttl": f"{state_ttl} ms"}, str(CUSTOMER_DAILY_SQL))
    statements = [source_view(job), *(s for s in split_statements(text) if without_comments(s).strip())]
    views = [s for s in statements if not without_comments(s).lstrip().upper().startswith("INSERT")]
    inserts = [s for s in statements if without_comments(s).lstrip().upper().startswith("INSERT")]
    return views, inserts + ([iceberg_insert(job)] if job.iceberg else [])


def table_configuration(job: CustomerDailyJob) -> dict[str, str]:
    """Table settings of the job: UTC days, copies remembered for the dedup TTL, mini-batches."""
    conf = {"table.local-time-zone": "UTC", "pipeline.name": "iotlink-customer-daily"}
    if job.iceberg:
        conf["table.exec.iceberg.use-v2-sink"] = "true"  # as the telemetry job (jobs/archive.py: the older sink loses bounded rows)
        # Two sinks of one aggregate: planned block by block, the UNNEST of telemetry_readings
        # fails ("unexpected correlate variable"); planned once by digest, the aggregate is shared.
        conf["table.optimizer.reuse-optimize-block-with-digest-enabled"] = "true"
    if job.streaming:
        conf |= {
            "table.exec.state.ttl": f"{job.dedup_ttl_ms} ms",  # the copies; the day's aggregate has its own hint
            "table.exec.mini-batch.enabled": "true",
            "table.exec.mini-batch.allow-latency": "1 s",
            "table.exec.mini-batch.size": "5000",
        }
    return conf


def submit_customer_daily(t_env, job: CustomerDailyJob):
    """Submits the job to the table environment's cluster.

    Args:
        t_env: A TableEnvironment (streaming for a streaming job, batch for days) with the
            platform catalog registered (Kafka or Iceberg tables, PostgreSQL tables).
        job: What to read.

    Returns:
        The INSERTs' TableResult (its job client cancels or waits for the job).
    """
    config = t_env.get_config()
    for key, value in table_configuration(job).items():
        config.set(key, value)
    views, inserts = customer_daily_statements(job)
    for view in views:
        t_env.execute_sql(view)
    statements = t_env.create_statement_set()
    for insert in inserts:
        statements.add_insert_sql(insert)
    return statements.execute()
