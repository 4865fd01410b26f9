"""The streaming telemetry job: raw envelopes in, standard telemetry and dead letters out.

    KafkaSource(iotlink.raw) -> decode (YAML specs) -> event time (device time, idleness)
        -> late check -> KafkaSink EXACTLY_ONCE (iotlink.telemetry)
    decode --dead letters--> KafkaSink EXACTLY_ONCE (iotlink.dlq)
    event time -> dedup -> alarm rules (Python) and the Flink SQL aggregates (jobs/aggregates.py)

Run locally with ``iotlink run`` or submit to a cluster::

    flink run -py jobs/telemetry_job.py -pyfs operators,connectors,jobs,iotlink \\
        --bootstrap-servers kafka:9092 --checkpoint-dir s3://bucket/checkpoints

:func:`build_telemetry_pipeline` takes a :class:`TelemetryJob` (inputs, outputs, logic), so tests
and other jobs can swap sources and sinks; ``main`` only wires configuration.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Submitted as a file (`flink run -py jobs/telemetry_job.py`): make the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.jars import pipeline_jars_option  # noqa: E402
from jobs.checkpoints import LATEST, newest_checkpoint  # noqa: E402
from jobs.config import Settings  # noqa: E402
from jobs.table_planning import attach_as_datastream  # noqa: E402

JOB_NAME = "iotlink-telemetry"


@dataclass(frozen=True)
class RunOptions:
    """Per-run choices that are not platform configuration.

    Attributes:
        stop_offsets: Partition -> end offset of the raw topic; makes the job bounded.
        start_offsets: Partition -> start offset; default committed offsets, else earliest.
        restore_from: Checkpoint or savepoint path to restore state from; ``latest``: the newest
            completed checkpoint of the checkpoint directory.
        fail_after: Test-only fault: fail once after this many records.
        fail_marker: File that records that the fault has fired.
        job_name: Flink job name.
        input_files: Read raw envelopes (one JSON envelope per line) from these files instead
            of Kafka: the same pipeline, bounded, in file order.
        prometheus_port: Serve the job's metrics for Prometheus on this port (local cluster).
    """

    stop_offsets: Mapping[int, int] | None = None
    start_offsets: Mapping[int, int] | None = None
    restore_from: str | None = None
    fail_after: int | None = None
    fail_marker: str | None = None
    job_name: str = JOB_NAME
    input_files: tuple[str, ...] = ()
    prometheus_port: int | None = None


def flink_configuration(settings: Settings, options: RunOptions, source_parallelism: int | None = None) -> dict[str, str]:
    """The Flink configuration for the job (checkpointing, state backend, web UI, restore).

    Args:
        settings: Platform settings.
        options: Per-run options.
        source_parallelism: Subtasks of the source chain (one per raw partition), if known.

    Returns:
        Flink configuration keys and values.
    """
    checkpoint_dir = settings.checkpoint_dir
    conf = {
        "pipeline.name": options.job_name,
        # Apache's connector jars of jvm/pom.xml; a cluster submission uploads them with the job.
        "pipeline.jars": pipeline_jars_option(s3=(settings.iceberg_warehouse or "").startswith("s3://")),
        "parallelism.default": str(settings.flink.parallelism),
        "execution.checkpointing.interval": f"{settings.flink.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoint_dir.as_uri() if checkpoint_dir.is_absolute() else str(checkpoint_dir),
        "execution.checkpointing.savepoint-dir": (checkpoint_dir.parent / "savepoints").as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "execution.checkpointing.min-pause": f"{min(500, settings.flink.checkpoint_interval_ms // 2)} ms",
        "state.backend.type": "rocksdb",
        # RocksDB's own LOG at warnings only: at INFO every run left a LOG file per stateful
        # subtask in Flink's log directory (PyFlink's, inside the venv), the lines of every flush
        # and compaction, hundreds of MB after a few dozen runs. (A log.dir that cannot exist,
        # which Flink documents as "beside the instance", fails the state backend in Flink 2.0.)
        "state.backend.rocksdb.log.level": "WARN_LEVEL",
        # Timers (the alarm operator's deadlines, the batch sinks' flushes) on the heap: in RocksDB
        # every registration and firing is a read and a write of the timer column family.
        "state.backend.rocksdb.timer-service.factory": "HEAP",
        # Keep in-flight data small under backpressure: checkpoint barriers (and alarms) do not
        # queue behind seconds of buffered records.
        "taskmanager.network.memory.buffer-debloat.enabled": "true",
        # Restarts back off 1 s, 1.5 s, 2.25 s … up to 30 s apart and never run out, so an outage
        # of the broker, a database or the catalog is waited out however long it lasts (a fixed
        # number of attempts counts every failure of the job's life, and five 1 s restarts span
        # seconds); after 10 minutes without a failure the next one restarts after 1 s again.
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.backoff-multiplier": "1.5",
        "restart-strategy.exponential-delay.max-backoff": "30 s",
        "restart-strategy.exponential-delay.jitter-factor": "0.1",
        "restart-strategy.exponential-delay.reset-backoff-threshold": "10 min",
        "python.execution-mode": settings.flink.execution_mode,
        "python.fn-execution.bundle.size": "1000",
        "python.fn-execution.bundle.time": "200",
        "rest.port": str(settings.flink.rest_port),
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        # The web UI and the live counters read metrics through the REST API, which refreshes
        # them every 10 s by default: too coarse for a status line printed every 2 s.
        "metrics.fetcher.update-interval": "2000",
        # A slot per subtask of the widest operator (the source runs one subtask per partition).
        "taskmanager.numberOfTaskSlots": str(max(settings.flink.parallelism, source_parallelism or 1)),
        # RocksDB's write buffers and block cache come from managed memory, shared by every
        # stateful operator of a slot; the local default (128 MiB for all slots) left each a few
        # MiB, so memtables were flushed and compacted all the time.
        "taskmanager.memory.managed.size": "512m",
    }
    if settings.flink.restart_attempts is not None:
        conf["restart-strategy.exponential-delay.attempts-before-reset-backoff"] = str(settings.flink.restart_attempts)
    if submitted_by_flink_cli():
        # The cluster's own config.yaml says where its REST API is and how many slots it has;
        # these keys are for the local MiniCluster only.
        for key in ("rest.port", "rest.address", "rest.bind-address", "metrics.fetcher.update-interval", "taskmanager.numberOfTaskSlots",
                    "taskmanager.memory.managed.size"):
            del conf[key]
    if options.prometheus_port is not None:
        # Locally the reporter jar comes from pyflink/plugins (export_reporter_classpath); a
        # cluster configures its reporter in its own config.yaml instead (docker/).
        conf["metrics.reporter.prom.factory.class"] = PROMETHEUS_REPORTER_FACTORY
        conf["metrics.reporter.prom.port"] = str(options.prometheus_port)
    if options.restore_from:
        restore_from = options.restore_from
        if restore_from == LATEST:
            restore_from = str(newest_checkpoint(checkpoint_dir))
        path = Path(restore_from)
        # A URI (file:/…, s3://…, as Flink reports savepoint locations) is used as given.
        has_scheme = re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", restore_from) is not None
        conf["execution.state-recovery.path"] = restore_from if has_scheme else path.resolve().as_uri()
    return conf


def submitted_by_flink_cli() -> bool:
    """True when this program runs under ``flink run -py`` (the Flink CLI starts the JVM gateway
    and hands its port to Python), False on the local MiniCluster (``iotlink run``)."""
    import os

    return "PYFLINK_GATEWAY_PORT" in os.environ


@dataclass(frozen=True)
class TelemetryInputs:
    """Where the telemetry job reads.

    Attributes:
        raw: A Flink Source of raw envelope bytes (Kafka ``iotlink.raw``), or of envelope text
            lines with ``raw_is_text`` (files).
        raw_is_text: The raw source yields text lines, not Kafka record bytes.
        rules: Source of rule-set versions (``iotlink.rules``), broadcast to the alarm operator
            so rules change while the job runs.
        control: Source of control commands (``iotlink.control``): acknowledgements reach the
            alarm operator keyed by device.
    """

    raw: object
    raw_is_text: bool = False
    rules: object | None = None
    control: object | None = None


@dataclass(frozen=True)
class TelemetryOutputs:
    """Where the telemetry job writes (None: that output is off).

    Attributes:
        telemetry: Sink for telemetry JSON strings.
        dlq: Sink for dead-letter JSON strings.
        late: Sink for readings later than the allowed lateness.
        alarms: Sink for alarm-event JSON strings (the alarm operator runs when it and the
            logic's ``rules_factory`` are given).
        commands: Sink for shadow-command JSON strings of automatic actions.
        rule_status: Sink for accepted/rejected statuses of pushed rule sets and summaries of rule
            evaluation errors.
        notifications: Sink for notification records (high severity, escalations).
        alarm_store: Picklable factory of the idempotent batch sink of alarm events and the
            ticket queue (PostgreSQL).
        aggregates: :class:`jobs.aggregates.AggregateOutputs`: the 1m/5m/1h aggregates and the
            communication quality in Flink SQL, upserted into PostgreSQL by the JDBC connector.
        archive: :class:`jobs.archive.ArchiveOutputs`: the Iceberg tables (``raw_payloads``,
            ``telemetry``, ``alarm_events``, ``agg_1h``), written by Iceberg's Flink sink; needs
            one source subtask per raw partition.
        hot: Picklable factory of the MongoDB hot-layer writer.
    """

    telemetry: object
    dlq: object
    late: object | None = None
    alarms: object | None = None
    commands: object | None = None
    rule_status: object | None = None
    notifications: object | None = None
    alarm_store: Callable | None = None
    aggregates: object | None = None
    archive: object | None = None
    hot: Callable | None = None


@dataclass(frozen=True)
class TelemetryLogic:
    """What the job does between its inputs and outputs.

    Attributes:
        registry_factory: Builds the DecoderRegistry inside the task (default: built-ins).
        rules_factory: Builds the compiled rule sets inside the task.
        rule_products: The products that have a rule set at the start: only their readings (and
            those of products whose rule set is pushed later) cross into the alarm operator.
            None: every reading does.
        out_of_orderness_ms: Bounded out-of-orderness of device time (watermarks).
        alarm_reorder_ms: How long the alarm rules wait for a device's out-of-order readings
            (0: each reading is evaluated at once).
        idleness_ms: After this long without data a partition stops holding back watermarks.
        dedup_ttl_ms: Drop readings whose (device, device time, payload) was seen within this
            long, before aggregates and rules (0: no duplicate suppression).
        source_parallelism: Parallelism of source, decode and watermarking: the raw topic's
            partition count, so each watermark follows one partition (None: the default).
        fault: Test-only MapFunction on the readings (after duplicate suppression), where
            records move at the pace of the keyed operators.
    """

    registry_factory: Callable | None = None
    rules_factory: Callable | None = None
    rule_products: frozenset[str] | None = None
    out_of_orderness_ms: int = 5000
    alarm_reorder_ms: int = 0
    idleness_ms: int = 0
    dedup_ttl_ms: int = 0
    source_parallelism: int | None = None
    fault: object | None = None


@dataclass(frozen=True)
class TelemetryJob:
    """The telemetry job as a function of its inputs and outputs: tests hand in their own."""

    inputs: TelemetryInputs
    outputs: TelemetryOutputs
    logic: TelemetryLogic = TelemetryLogic()


def build_telemetry_pipeline(env, job: TelemetryJob):
    """Wires the telemetry dataflow onto ``env``.

    Args:
        env: A StreamExecutionEnvironment.
        job: The job's inputs, outputs and logic.

    Returns:
        The telemetry JSON stream (after the late check), for callers that extend the job.
    """
    inputs, outputs, logic = job.inputs, job.outputs, job.logic
    raw_source, raw_is_text, rules_source, control_source = inputs.raw, inputs.raw_is_text, inputs.rules, inputs.control
    telemetry_sink, dlq_sink, late_sink = outputs.telemetry, outputs.dlq, outputs.late
    alarm_sink, command_sink, rule_status_sink = outputs.alarms, outputs.commands, outputs.rule_status
    notification_sink, alarm_store_factory, aggregates = outputs.notifications, outputs.alarm_store, outputs.aggregates
    archive, hot_sink_factory = outputs.archive, outputs.hot
    registry_factory, rules_factory, fault = logic.registry_factory, logic.rules_factory, logic.fault
    out_of_orderness_ms, idleness_ms, dedup_ttl_ms = logic.out_of_orderness_ms, logic.idleness_ms, logic.dedup_ttl_ms
    source_parallelism = logic.source_parallelism
    from pyflink.common import Duration, Types, WatermarkStrategy

    from jobs.java_operators import deduplicate, key_for_python, side_output
    from jobs.telemetry_functions import (
        DEAD_LETTERS,
        TELEMETRY_TUPLE,
        TIMESTAMPED_TELEMETRY,
        DecodeRawFunction,
    )
    from operators.decode import DecoderRegistry

    def per_partition(stream):
        # Device-time watermarks are generated after decoding, per source subtask. A subtask
        # reading several partitions takes the newest time of any of them, so a partition
        # read behind the others (catching up) would turn into late data. One subtask per
        # raw partition keeps each watermark to its own partition; downstream takes the min.
        return stream.set_parallelism(source_parallelism) if source_parallelism else stream

    # (A chain of file sources cannot name its own output type: text lines.)
    raw_type = Types.STRING() if raw_is_text else None
    raw = per_partition(env.from_source(raw_source, WatermarkStrategy.no_watermarks(), "Kafka raw source", raw_type).uid("source-raw"))
    raw = raw.name("Kafka: iotlink.raw")
    if raw_is_text:
        raw = per_partition(
            raw.map(lambda line: line.encode("utf-8"), output_type=Types.PRIMITIVE_ARRAY(Types.BYTE())).uid("raw-lines").name("Envelope lines")
        )
    decoded = per_partition(
        raw.process(DecodeRawFunction(registry_factory or DecoderRegistry), output_type=TIMESTAMPED_TELEMETRY)
        .uid("decode-raw")
        .name("Decode payloads")
    )
    dead_letters = side_output(decoded, DEAD_LETTERS)
    dead_letters.sink_to(dlq_sink).uid("sink-dlq").name("Kafka: iotlink.dlq")

    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(out_of_orderness_ms))
    if idleness_ms > 0:
        strategy = strategy.with_idleness(Duration.of_millis(idleness_ms))
    timed = _assign_device_time(decoded, strategy, source_parallelism)
    # Late check and telemetry sink stay at the source's parallelism (forward, chained): a
    # rebalance here would interleave two producers and break each device's order on the topic.
    telemetry = per_partition(_telemetry_json(timed))
    per_partition(telemetry.sink_to(telemetry_sink).uid("sink-telemetry").name("Kafka: iotlink.telemetry"))
    readings = timed
    if dedup_ttl_ms:
        readings = deduplicate(timed, dedup_ttl_ms).uid("dedup").name("Drop duplicate readings")
    if fault is not None:
        readings = readings.map(fault, output_type=TELEMETRY_TUPLE).uid("test-fault").name("Test fault")
    t_env = statements = None  # the SQL side (aggregates, Iceberg, the hot layer's device states): one statement set
    if aggregates is not None or archive is not None or hot_sink_factory is not None:
        from jobs.aggregates import table_environment

        t_env = table_environment(env)
        statements = t_env.create_statement_set()
    alarm_events = None  # for the Iceberg alarm_events table
    hot = []  # streams for the MongoDB hot layer
    if hot_sink_factory is not None:
        from jobs.java_operators import device_letters

        hot.append(device_letters(dead_letters).uid("hot-dead-letters").name("Dead letters of devices"))
    if aggregates is not None:
        from jobs.aggregates import add_aggregates

        product_hours = add_aggregates(t_env, statements, readings, dead_letters, aggregates, late_sink,
                                       product_hours=hot_sink_factory is not None)
        if product_hours is not None:
            hot.append(product_hours)
    if rules_factory is not None and alarm_sink is not None:
        from jobs.telemetry_functions import (
            COMMANDS,
            RULE_SETS,
            RULE_STATUS,
            AckToTuple,
            AlarmBroadcastFunction,
            AlarmFunction,
            NotificationFunction,
            SplitAlarmOutput,
        )

        pushed = None
        if rules_source is not None:
            # Idle after a second without pushes, so the rule stream never holds back event time.
            rule_strategy = WatermarkStrategy.for_monotonous_timestamps().with_idleness(Duration.of_seconds(1))
            pushed = env.from_source(rules_source, rule_strategy, "Kafka rules source").uid("source-rules").name("Kafka: iotlink.rules")
        alarm_input = readings
        if logic.rule_products is not None:
            from jobs.java_operators import ruled_readings

            alarm_input = ruled_readings(readings, logic.rule_products, pushed).uid("ruled-readings").name("Readings with rules")
        if control_source is not None:
            idle = WatermarkStrategy.for_monotonous_timestamps().with_idleness(Duration.of_seconds(1))
            acks = (
                env.from_source(control_source, idle, "Kafka control source").uid("source-control").name("Kafka: iotlink.control")
                .flat_map(AckToTuple(), output_type=TELEMETRY_TUPLE).uid("control-acks").name("Acknowledge commands")
            )
            alarm_input = alarm_input.union(acks)
        keyed = key_for_python(alarm_input, TELEMETRY_TUPLE, "alarm-keys")
        if pushed is not None:
            alarms = (
                keyed.connect(pushed.broadcast(RULE_SETS))
                .process(AlarmBroadcastFunction(rules_factory, logic.alarm_reorder_ms), output_type=Types.STRING())
                .uid("alarm-rules")
                .name("Alarm rules (per device)")
            )
        else:
            alarms = (
                keyed.process(AlarmFunction(rules_factory, logic.alarm_reorder_ms), output_type=Types.STRING())
                .uid("alarm-rules")
                .name("Alarm rules (per device)")
            )
        alarms = alarms.process(SplitAlarmOutput(), output_type=Types.STRING()).uid("alarm-split").name("Events / commands / rule status")
        if rule_status_sink is not None:
            status = side_output(alarms, RULE_STATUS)
            status.sink_to(rule_status_sink).uid("sink-rule-status").name("Kafka: iotlink.rules.status")
        alarms.sink_to(alarm_sink).uid("sink-alarms").name("Kafka: iotlink.alarms")
        alarm_events = alarms
        if hot_sink_factory is not None:
            hot.append(alarms)
        if command_sink is not None:
            side_output(alarms, COMMANDS).sink_to(command_sink).uid("sink-commands").name("Kafka: iotlink.commands")
        if notification_sink is not None:
            notifications = alarms.process(NotificationFunction(), output_type=Types.STRING()).uid("route-notify").name("Severity routing: notify")
            notifications.sink_to(notification_sink).uid("sink-notifications").name("Kafka: iotlink.notifications")
        if alarm_store_factory is not None:
            from jobs.telemetry_functions import BatchedSinkFunction, alarm_store_statements, json_bucket

            (
                alarms.key_by(json_bucket(16, "device_id"), key_type=Types.INT())
                .process(BatchedSinkFunction(alarm_store_factory, alarm_store_statements, "alarm_events"))
                .uid("sink-alarm-store")
                .name("PostgreSQL: alarm_events + alarm_tickets")
            )
    if hot_sink_factory is not None:
        from jobs.hot_layer import add_hot_layer

        add_hot_layer(t_env, hot_sink_factory, readings, hot)
    if archive is not None:
        from jobs.archive import add_archive

        add_archive(t_env, statements, archive, raw=None if raw_is_text else raw, telemetry=telemetry, alarm_events=alarm_events)
    if statements is not None:
        attach_as_datastream(t_env, statements)
    return telemetry


def _telemetry_json(timed):
    """The late check and the telemetry JSON in Java (``io.iotlink.flink.TelemetryJson`` of
    jvm/functions): no Python crossing for a step that holds no logic of ours."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    function = get_gateway().jvm.io.iotlink.flink.TelemetryJson()
    return DataStream(timed._j_data_stream.process(function, Types.STRING().get_java_type_info())).uid("late-check").name("Late check")


def _assign_device_time(decoded, strategy, parallelism: int | None):
    """Event time = device time, watermarks per source subtask, without a Python hop.

    The decode output already carries its event time as field 1, so the Java watermark
    operator reads it directly (what PyFlink's ``assign_timestamps_and_watermarks`` does after
    an extra Python operator of its own, whose parallelism cannot be set), then a Java map
    strips it. Both run with the source's parallelism, keeping one watermark per partition.
    """
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from jobs.telemetry_functions import TELEMETRY_TUPLE

    eventtime = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    marked = decoded._j_data_stream.assignTimestampsAndWatermarks(
        strategy._j_watermark_strategy.withTimestampAssigner(eventtime.CustomTimestampAssigner())
    )
    marked.uid("event-time").name("Device time + watermarks")
    stripped = marked.map(eventtime.RemoveTimestampMapFunction(), TELEMETRY_TUPLE.get_java_type_info())
    stripped.uid("event-time-strip").name("Telemetry")
    if parallelism:
        marked.setParallelism(parallelism)
        stripped.setParallelism(parallelism)
    return DataStream(stripped)


def export_python_path() -> None:
    """Puts this interpreter's packages and the project on PYTHONPATH for Flink's Python workers.

    In thread mode PemJa embeds the base interpreter, which does not see a virtualenv's
    site-packages; the JVM (started after this) passes PYTHONPATH on to it.
    """
    import os
    import site

    root = str(Path(__file__).resolve().parent.parent)
    wanted = [root, *site.getsitepackages()]
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(wanted + current))


PROMETHEUS_REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def export_reporter_classpath() -> None:
    """Puts Flink's Prometheus reporter jar on the classpath of the local cluster's JVM.

    The MiniCluster creates its metric reporters without a plugin manager, so the jar in
    ``pyflink/plugins/metrics-prometheus`` (or ``$FLINK_PLUGINS_DIR``) is not found there
    ("Available factories: []"). PyFlink's local gateway appends ``HADOOP_CLASSPATH`` to the
    JVM's classpath, so the jar goes there, before the JVM starts.

    Raises:
        FileNotFoundError: the PyFlink installation has no Prometheus reporter jar.
        RuntimeError: this process's JVM already runs without the reporter on its classpath.
    """
    import glob
    import os

    from pyflink.find_flink_home import _find_flink_home

    from jobs.connector_classpath import add_to_local_classpath

    plugins = os.environ.get("FLINK_PLUGINS_DIR") or os.path.join(_find_flink_home(), "plugins")
    jars = sorted(glob.glob(os.path.join(plugins, "metrics-prometheus", "flink-metrics-prometheus-*.jar")))
    if not jars:
        raise FileNotFoundError(f"no flink-metrics-prometheus jar under {plugins}/metrics-prometheus")
    add_to_local_classpath(jars, PROMETHEUS_REPORTER_FACTORY, "the Prometheus reporter")


def load_decoder_specs(settings: Settings):
    """Reads and validates every spec in the specs directory.

    Raises:
        operators.spec_loading.SpecLoadError: file, line, field and reason for each problem.
    """
    from operators.spec_loading import SpecLoadError, load_specs

    if not settings.specs_dir.is_dir():
        raise SpecLoadError([f"{settings.specs_dir}: specs_dir is not a directory"])
    return load_specs([settings.specs_dir])


def decoder_registry_factory(settings: Settings, specs=None):
    """Reads and validates every spec (unless given) and the device registry now, so a bad one
    stops the start.

    Returns:
        A picklable factory that builds the DecoderRegistry inside each task.

    Raises:
        operators.spec_loading.SpecLoadError: file, line, field and reason for each problem.
    """
    from connectors.postgres import load_device_registry
    from operators.spec_loading import RegistryFactory

    specs = specs if specs is not None else load_decoder_specs(settings)
    return RegistryFactory(specs, load_device_registry(settings.device_registry))


def rules_factory_for(settings: Settings, specs=None):
    """Reads and validates every rule set now (a bad one stops the start); None without rules.

    Raises:
        operators.spec_loading.SpecLoadError: file, line, field and reason for each problem.
    """
    from operators.rule_loading import RulesFactory, load_rule_sets
    from operators.spec_loading import metrics_by_product

    if not settings.rules_dir.is_dir():
        return None
    specs = specs if specs is not None else (load_decoder_specs(settings) if settings.specs_dir.is_dir() else [])
    loaded = load_rule_sets([settings.rules_dir], metrics_by_product(specs))
    return RulesFactory(loaded) if loaded else None


def startup_factories(settings: Settings):
    """The decoder-registry and rule-set factories, reading the specs once for both.

    Returns:
        (registry factory, rules factory or None when there are no rule sets).
    """
    specs = load_decoder_specs(settings)
    return decoder_registry_factory(settings, specs), rules_factory_for(settings, specs)


def create_job(settings: Settings, options: RunOptions):
    """Creates the execution environment with the Kafka source and sinks wired in.

    Returns:
        The StreamExecutionEnvironment, ready to execute.
    """
    env, job = prepare_job(settings, options)
    build_telemetry_pipeline(env, job)
    return env


def prepare_job(settings: Settings, options: RunOptions):
    """The execution environment and the description of the job the settings make, not yet
    wired: callers that run a variant of it (bench/seam.py) change the description first.

    Returns:
        (the StreamExecutionEnvironment, the :class:`TelemetryJob`).
    """
    registry_factory, rules_factory = startup_factories(settings)
    export_python_path()
    if options.prometheus_port is not None:
        export_reporter_classpath()
    if (settings.iceberg_catalog and not options.input_files) or settings.postgres_url:
        from jobs.connector_classpath import export_jvm_classpath

        export_jvm_classpath()
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    from connectors.kafka import (
        LARGE_RECORD_BYTES,
        exactly_once_string_sink,
        partition_count,
        raw_file_source,
        raw_kafka_source,
        string_source_from_start,
    )
    from jobs.connector_classpath import make_connector_jars_visible
    from jobs.telemetry_functions import FailOnceAfter

    config = Configuration()
    bootstrap, topics = settings.bootstrap_servers, settings.topics
    # Over files one reader takes them in the order given, so device time moves forward as written.
    source_parallelism = 1 if options.input_files else settings.flink.source_parallelism or partition_count(bootstrap, topics.raw)
    conf = flink_configuration(settings, options, source_parallelism)
    # The Python workers (and PemJa in thread mode) must use this interpreter and its packages.
    conf.setdefault("python.executable", sys.executable)
    conf.setdefault("python.client.executable", sys.executable)
    for key, value in conf.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    make_connector_jars_visible()
    if options.input_files:
        source = raw_file_source(options.input_files)
    else:
        source = raw_kafka_source(
            bootstrap, topics.raw, settings.flink.group_id, stop_offsets=options.stop_offsets, start_offsets=options.start_offsets
        )
    # Transactional ids must be unique per sink; the job name keeps parallel jobs apart.
    telemetry_sink = exactly_once_string_sink(bootstrap, topics.telemetry, f"{options.job_name}-telemetry")
    dlq_sink = exactly_once_string_sink(bootstrap, topics.dlq, f"{options.job_name}-dlq", max_record_bytes=LARGE_RECORD_BYTES)
    alarm_sink = exactly_once_string_sink(bootstrap, topics.alarms, f"{options.job_name}-alarms") if rules_factory else None
    command_sink = exactly_once_string_sink(bootstrap, topics.commands, f"{options.job_name}-commands") if rules_factory else None
    rules_source = status_sink = control_source = notification_sink = None
    if rules_factory:
        # A bounded run reads the rule pushes that exist now; an unbounded one keeps listening.
        bounded = options.stop_offsets is not None or bool(options.input_files)
        rules_source = string_source_from_start(bootstrap, topics.rules, f"{settings.flink.group_id}-rules", bounded=bounded)
        status_sink = exactly_once_string_sink(bootstrap, topics.rules_status, f"{options.job_name}-rule-status")
        control_source = string_source_from_start(bootstrap, topics.control, f"{settings.flink.group_id}-control", bounded=bounded)
        notification_sink = exactly_once_string_sink(bootstrap, topics.notifications, f"{options.job_name}-notifications")
    alarm_store_factory = aggregates = None
    if settings.postgres_url:
        from connectors.postgres import apply_migrations
        from jobs.aggregates import AggregateOutputs
        from jobs.telemetry_functions import PostgresWriterFactory

        apply_migrations(settings.postgres_url)  # a bad URL or schema stops the start, not a task
        aggregates = AggregateOutputs(
            settings.postgres_url,
            allowed_lateness_ms=settings.flink.allowed_lateness_ms,
            expected_intervals_ms={
                device_id: int(info.expected_interval_s * 1000)
                for device_id, info in registry_factory.devices.items() if info.expected_interval_s
            },
        )
        if rules_factory:
            alarm_store_factory = PostgresWriterFactory(settings.postgres_url)
    late_sink = exactly_once_string_sink(bootstrap, topics.late, f"{options.job_name}-late")
    archive = None
    if settings.iceberg_catalog and not options.input_files:
        # (Over files the raw-partition numbering of the archive does not apply: the file batch
        # job archives files.)
        from connectors.iceberg import init_tables, open_catalog
        from jobs.archive import ArchiveOutputs

        partitions = partition_count(bootstrap, topics.raw)
        if source_parallelism != partitions:
            raise ValueError(
                f"flink.source_parallelism: the Iceberg archive needs one source subtask per raw partition "
                f"({partitions}), got {source_parallelism}"
            )
        init_tables(open_catalog(settings.iceberg_catalog, settings.iceberg_warehouse))  # a bad catalog stops the start
        archive = ArchiveOutputs(settings.iceberg_catalog, settings.iceberg_warehouse, topics.raw)
    hot_sink_factory = None
    if settings.mongo_url:
        from connectors.mongo import init_collections, open_database
        from jobs.telemetry_functions import MongoWriterFactory

        init_collections(open_database(settings.mongo_url))  # an unreachable server stops the start
        hot_sink_factory = MongoWriterFactory(settings.mongo_url)
    fault = None
    if options.fail_after is not None:
        if not options.fail_marker:
            raise ValueError("fail_after needs fail_marker")
        fault = FailOnceAfter(options.fail_after, options.fail_marker, str(settings.checkpoint_dir))
    job = TelemetryJob(
        TelemetryInputs(source, raw_is_text=bool(options.input_files), rules=rules_source, control=control_source),
        TelemetryOutputs(
            telemetry_sink, dlq_sink, late=late_sink, alarms=alarm_sink, commands=command_sink, rule_status=status_sink,
            notifications=notification_sink, alarm_store=alarm_store_factory, aggregates=aggregates,
            archive=archive, hot=hot_sink_factory,
        ),
        TelemetryLogic(
            registry_factory=registry_factory, rules_factory=rules_factory,
            rule_products=getattr(rules_factory, "product_ids", None), out_of_orderness_ms=settings.flink.out_of_orderness_ms,
            alarm_reorder_ms=settings.flink.alarm_reorder_ms, idleness_ms=settings.flink.idleness_ms,
            dedup_ttl_ms=settings.flink.dedup_ttl_ms, source_parallelism=source_parallelism,
            fault=fault,
        ),
    )
    return env, job


def run_telemetry_job(settings: Settings, options: RunOptions, on_started: Callable | None = None) -> None:
    """Runs the job until it finishes (bounded) or is interrupted (Ctrl-C cancels it).

    Args:
        settings: Platform settings.
        options: Per-run options.
        on_started: Called with the JobClient once the job is submitted.
    """
    env = create_job(settings, options)
    client = env.execute_async(options.job_name)
    if on_started is not None:
        on_started(client)
    try:
        client.get_job_execution_result().result()
    except KeyboardInterrupt:
        client.cancel().result()
        raise


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the per-run options of the telemetry job to a parser."""
    parser.add_argument(
        "--restore", metavar="PATH",
        help="restore state from this checkpoint (…/chk-N) or savepoint directory; 'latest': the newest completed "
        "checkpoint of the (local) checkpoint directory",
    )
    parser.add_argument(
        "--stop-offsets",
        metavar="P=O,...",
        help="run bounded: stop each raw partition at this offset (e.g. 0=1000,1=998); default unbounded",
    )
    parser.add_argument(
        "--start-offsets",
        metavar="P=O,...",
        help="start each raw partition at this offset; default the group's committed offsets, else earliest",
    )
    parser.add_argument(
        "--input", nargs="+", metavar="FILE",
        help="batch mode: read raw envelopes (one JSON envelope per line, e.g. from 'iotlink simulate --target file') "
        "from these files instead of Kafka, in the order given; the job ends at their end",
    )
    parser.add_argument("--job-name", default=JOB_NAME, help=f"Flink job name and transactional id prefix (default {JOB_NAME})")
    parser.add_argument("--fail-after", type=int, metavar="N", help="testing only: fail once after N records")
    parser.add_argument("--fail-marker", metavar="FILE", help="testing only: file recording that the fault fired")
    add_prometheus_argument(parser)


def add_prometheus_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--prometheus-port`` (shared by ``iotlink run`` and ``iotlink demo``)."""
    parser.add_argument(
        "--prometheus-port", type=int, metavar="PORT",
        help="serve the job's metrics for Prometheus at http://HOST:PORT/metrics (local cluster; default off)",
    )


def parse_offsets(text: str | None) -> dict[int, int] | None:
    """Parses ``0=100,1=250`` into {0: 100, 1: 250}.

    Raises:
        ValueError: naming the malformed item.
    """
    if not text:
        return None
    offsets = {}
    for item in text.split(","):
        partition, sep, offset = item.partition("=")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ValueError(f"offset item {item!r} is not PARTITION=OFFSET")
        offsets[int(partition)] = int(offset)
    return offsets


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """Builds RunOptions from parsed arguments."""
    return RunOptions(
        stop_offsets=parse_offsets(args.stop_offsets),
        start_offsets=parse_offsets(args.start_offsets),
        restore_from=args.restore,
        fail_after=args.fail_after,
        fail_marker=args.fail_marker,
        job_name=args.job_name,
        input_files=tuple(args.input or ()),
        prometheus_port=args.prometheus_port,
    )


def build_job_parser() -> argparse.ArgumentParser:
    """The options of ``flink run -py jobs/telemetry_job.py``: the platform settings and the per-run options."""
    from jobs.config import connection_options

    parser = argparse.ArgumentParser(
        prog="telemetry_job.py", parents=[connection_options(embedded=False)],
        description="The iotlink telemetry job, as submitted to a Flink cluster (locally: iotlink run).",
    )
    add_job_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``flink run -py jobs/telemetry_job.py [options]``.

    Attached (``flink run``) the client waits for the job; detached (``flink run -d``) it returns
    once the job is submitted. Bad configuration, specs or rules stop the start with one line
    each (exit 2).
    """
    from jobs.config import ConfigError, settings_from_args
    from operators.spec_loading import SpecLoadError

    parsed = build_job_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings, options = settings_from_args(parsed), options_from_args(parsed)
        detached = False
        if submitted_by_flink_cli():
            from pyflink.datastream import StreamExecutionEnvironment

            cli_conf = StreamExecutionEnvironment.get_execution_environment()._j_stream_execution_environment.getConfiguration()
            # Waiting for the job's end would keep the CLI process (and a Ctrl-C there would
            # cancel the job that was meant to run detached).
            detached = cli_conf.toMap().get("execution.attached") == "false"
        if detached:
            client = create_job(settings, options).execute_async(options.job_name)
            print(f"telemetry job '{options.job_name}' submitted (detached): {client.get_job_id()}", flush=True)
            return 0
        print(f"telemetry job '{options.job_name}': {settings.topics.raw} -> {settings.topics.telemetry} (+ {settings.topics.dlq})", flush=True)
        run_telemetry_job(settings, options)
        print("job finished")
        return 0
    except ConfigError as exc:
        print(f"telemetry_job.py: configuration error: {exc}", file=sys.stderr)
    except SpecLoadError as exc:
        for problem in exc.problems:
            print(f"telemetry_job.py: {problem}", file=sys.stderr)
    except ValueError as exc:
        print(f"telemetry_job.py: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\njob cancelled")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
