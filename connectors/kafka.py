"""Kafka sources and sinks for the Flink jobs, plus topic administration.

The Flink builders need a running JVM gateway, so PyFlink is imported inside the functions;
the admin helpers only need kafka-python.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_PARTITIONS = {"iotlink.raw": 4}
# Raw payloads may be up to the 1 MiB decode limit plus envelope overhead (base64 for binary), and
# a dead letter repeats the payload: both topics accept records of up to 8 MiB.
LARGE_RECORD_TOPICS = frozenset({"iotlink.raw", "iotlink.dlq"})
LARGE_RECORD_BYTES = 8 * 1024 * 1024
# Records carry the device's time (the jobs' sinks stamp the event time); retention must count from
# when the broker appended them, or a replay of last month's readings is deleted as it is written.
TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}


def ensure_platform_topics(bootstrap_servers: str, topics, raw_partitions: int = 4) -> list[str]:
    """Creates the platform's topics (an :class:`jobs.config.Topics`, whatever their names):
    the raw topic with ``raw_partitions`` partitions, raw and DLQ accepting large records.

    Returns:
        The topics that were created.
    """
    return ensure_topics(
        bootstrap_servers, topics.all(), partitions={topics.raw: raw_partitions}, large=(topics.raw, topics.dlq)
    )


def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], partitions: Mapping[str, int] | None = None, large: Iterable[str] = LARGE_RECORD_TOPICS
) -> list[str]:
    """Creates the topics that do not exist yet.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topics: Topic names.
        partitions: Partition count per topic (default 1, ``iotlink.raw`` 4).
        large: Topics that accept records of up to :data:`LARGE_RECORD_BYTES`.

    Returns:
        The topics that were created.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    counts = {**DEFAULT_PARTITIONS, **(partitions or {})}
    large_topics = set(large)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="iotlink-admin", request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in topics if t not in existing]
        created = []
        for name in wanted:
            try:
                configs = dict(TOPIC_CONFIGS)
                if name in large_topics:
                    configs["max.message.bytes"] = str(LARGE_RECORD_BYTES)
                admin.create_topics([NewTopic(name, num_partitions=counts.get(name, 1), replication_factor=1, topic_configs=configs)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def wait_for_kafka(bootstrap_servers: str, timeout_s: float = 30.0) -> None:
    """Blocks until the broker answers a metadata request.

    Raises:
        TimeoutError: naming the address when it does not answer in time.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
            try:
                consumer.topics()
                return
            finally:
                consumer.close()
        except KafkaError as exc:
            last_error = exc
            time.sleep(0.3)
    raise TimeoutError(f"Kafka at {bootstrap_servers} did not answer within {timeout_s:.0f}s: {last_error}")


def partition_counts(bootstrap_servers: str, topic: str) -> int:
    """Returns the number of partitions of a topic."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist on {bootstrap_servers}")
        return len(parts)
    finally:
        consumer.close()


def reading_consumer(bootstrap_servers: str, read_committed: bool):
    """An unassigned consumer for reading topics through (no group, no auto-commit; records up
    to the 8 MiB topic limit)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,  # records up to the 8 MiB topic limit (big dead letters)
        max_poll_records=50000,
    )


def _consumer_at_beginning(bootstrap_servers: str, topic: str, read_committed: bool):
    """A consumer assigned every partition of ``topic`` and positioned at its beginning."""
    from kafka import TopicPartition

    consumer = reading_consumer(bootstrap_servers, read_committed)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
    except BaseException:
        consumer.close()
        raise
    return consumer, parts


def end_offsets(bootstrap_servers: str, topic: str, read_committed: bool = False) -> dict[int, int]:
    """Each partition's end offset now (ListOffsets latest).

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The topic.
        read_committed: The last stable offset instead of the high watermark: where a
            read_committed reader stops (before the first open transaction).

    Returns:
        Partition -> offset (an empty topic's partitions map to 0).
    """
    consumer, parts = _consumer_at_beginning(bootstrap_servers, topic, read_committed)
    try:
        return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def _offsets_initializer(topic: str, offsets: Mapping[int, int]):
    """Builds ``OffsetsInitializer.offsets(map)`` with the unshaded Kafka classes (see DESIGN.md)."""
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import get_java_class

    jvm = get_gateway().jvm
    wrapper = jvm.org.apache.flink.python.util.HashMapWrapper(None, get_java_class(jvm.Long))
    for partition, offset in offsets.items():
        wrapper.put(jvm.org.apache.kafka.common.TopicPartition(topic, int(partition)), int(offset))
    j_init = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer.offsets(wrapper.asMap())
    return KafkaOffsetsInitializer(j_init)


def _committed_or_earliest():
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    reset = jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
    j_init = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer.committedOffsets(reset)
    return KafkaOffsetsInitializer(j_init)


def raw_bytes_schema():
    """A DeserializationSchema that hands Python the Kafka value as ``bytes``, untouched."""
    from pyflink.common.serialization import DeserializationSchema
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    return DeserializationSchema(j_deserialization_schema=jvm.org.apache.flink.api.common.serialization.ByteArraySchema())


def partition_count(bootstrap_servers: str, topic: str) -> int | None:
    """Number of partitions of ``topic`` (None when the topic does not exist)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, request_timeout_ms=15000)
    try:
        partitions = consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else None
    finally:
        consumer.close()


def raw_file_source(paths):
    """A bounded source over files of raw envelopes, one JSON envelope per line (text), read
    one file after the other in the order given."""
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"--input: no such file: {', '.join(missing)}")
    # One FileSource per file, chained: a single FileSource hands its files out in no
    # guaranteed order, and reading a later file first would make the earlier one late data.
    from pyflink.datastream.connectors.hybrid_source import HybridSource

    sources = [FileSource.for_record_stream_format(StreamFormat.text_line_format(), str(Path(p).resolve())).build() for p in paths]
    if len(sources) == 1:
        return sources[0]
    builder = HybridSource.builder(sources[0])
    for source in sources[1:]:
        builder = builder.add_source(source)
    return builder.build()


def raw_kafka_source(
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    stop_offsets: Mapping[int, int] | None = None,
    start_offsets: Mapping[int, int] | None = None,
):
    """A KafkaSource over the raw topic, yielding raw values as bytes.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The raw topic.
        group_id: Consumer group; offsets are committed on checkpoints for lag tooling.
        stop_offsets: Partition -> end offset to make the source bounded (benchmark, tests).
        start_offsets: Partition -> start offset; default committed offsets, else earliest.

    Returns:
        The KafkaSource.
    """
    from pyflink.datastream.connectors.kafka import KafkaSource

    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_value_only_deserializer(raw_bytes_schema())
        .set_property("partition.discovery.interval.ms", "30000")
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("fetch.max.bytes", str(32 * 1024 * 1024))
        .set_property("max.partition.fetch.bytes", str(8 * 1024 * 1024))
    )
    builder.set_starting_offsets(_offsets_initializer(topic, start_offsets) if start_offsets else _committed_or_earliest())
    if stop_offsets is not None:
        builder.set_bounded(_offsets_initializer(topic, stop_offsets))
    return builder.build()


def committed_string_source(
    bootstrap_servers: str, topic: str, group_id: str, start_offsets: Mapping[int, int], stop_offsets: Mapping[int, int]
):
    """A bounded KafkaSource of the committed strings of ``topic`` between two offsets per
    partition (a job's transactional output, read again by another job).

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: The topic.
        group_id: Consumer group.
        start_offsets: Partition -> first offset.
        stop_offsets: Partition -> end offset.

    Returns:
        The KafkaSource.
    """
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaSource

    return (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("isolation.level", "read_committed")
        .set_property("fetch.max.bytes", str(32 * 1024 * 1024))
        .set_property("max.partition.fetch.bytes", str(8 * 1024 * 1024))
        .set_starting_offsets(_offsets_initializer(topic, start_offsets))
        .set_bounded(_offsets_initializer(topic, stop_offsets))
        .build()
    )


def string_source_from_start(bootstrap_servers: str, topic: str, group_id: str, bounded: bool = False):
    """A KafkaSource of strings from the topic's beginning: rule-set versions, control commands.

    A (re)started job reads every pushed version in order; a restored one continues from its
    checkpoint. Only committed records are read. ``bounded`` stops at the topic's current end
    (bounded job runs read what exists when they start).
    """
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("isolation.level", "read_committed")
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
    )
    if bounded:
        # The last stable offset of each partition when the job starts.
        builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


def exactly_once_string_sink(bootstrap_servers: str, topic: str, transactional_id_prefix: str, max_record_bytes: int = 1024 * 1024):
    """A KafkaSink writing strings to ``topic`` in Kafka transactions committed on checkpoints.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: Target topic.
        transactional_id_prefix: Unique per sink and job, so restores fence old producers.
        max_record_bytes: Largest record the producer may send (``max.request.size``).

    Returns:
        The KafkaSink.
    """
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

    serializer = (
        KafkaRecordSerializationSchema.builder().set_topic(topic).set_value_serialization_schema(SimpleStringSchema()).build()
    )
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_record_serializer(serializer)
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(transactional_id_prefix)
        .set_property("transaction.timeout.ms", "600000")
        .set_property("linger.ms", "20")
        .set_property("batch.size", str(256 * 1024))
        .set_property("max.request.size", str(max_record_bytes + 64 * 1024))
        .build()
    )


def read_topic(bootstrap_servers: str, topic: str, read_committed: bool = True, timeout_s: float = 60.0,
               since: dict[int, int] | None = None) -> list[bytes]:
    """Reads every record value of a topic, from the beginning (or ``since``) to its end as of now.

    Offsets cannot be counted instead: transaction markers occupy offsets too. With
    ``read_committed`` the end is the last stable offset, so records of open or aborted
    transactions are neither returned nor waited for.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: Topic to read.
        read_committed: Committed records only (the jobs write their topics exactly-once).
        timeout_s: Hard limit for reading up to the end.
        since: Partition -> offset to start at (default: the beginning of each partition).

    Returns:
        The record values in partition order.

    Raises:
        TimeoutError: the end was not reached in time.
    """
    consumer, parts = _consumer_at_beginning(bootstrap_servers, topic, read_committed)
    try:
        for tp in parts:
            if since and since.get(tp.partition):
                consumer.seek(tp, since[tp.partition])
        ends = {tp: offset for tp, offset in consumer.end_offsets(parts).items() if offset}
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < offset for tp, offset in ends.items()):
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end {ends} within {timeout_s:.0f}s")
        return values
    finally:
        consumer.close()
