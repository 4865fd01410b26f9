package io.iotlink.flink;

import java.util.List;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.TaskInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * What the Iceberg archive rows share: where each record was read. The function runs chained to
 * the Kafka source with one subtask per raw partition, so the subtask names the partition, and
 * a record's sequence number counts that partition's records since the job's first one (restored
 * with each checkpoint: a record replayed after a failure gets its number again).
 *
 * <p>Subclasses turn one record into one row ({@link #row}); a record they cannot read still
 * gives a row (its fields say why), never an exception.
 */
abstract class ArchiveRows<IN> extends ProcessFunction<IN, Row> implements CheckpointedFunction {

    private final String topic;
    private transient int partition;
    private transient long nextSeq;
    private transient ListState<Long> nextSeqState;
    private transient Counter rows;

    ArchiveRows(String topic) {
        this.topic = topic;
    }

    @Override
    public void initializeState(FunctionInitializationContext context) throws Exception {
        nextSeqState = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("archive-next-seq", Long.class));
        nextSeq = 1L;
        for (Long restored : nextSeqState.get()) {
            nextSeq = Math.max(nextSeq, restored);
        }
    }

    @Override
    public void snapshotState(FunctionSnapshotContext context) throws Exception {
        nextSeqState.update(List.of(nextSeq));
    }

    @Override
    public void open(OpenContext openContext) {
        TaskInfo info = getRuntimeContext().getTaskInfo();
        partition = sourcePartition(topic, info.getIndexOfThisSubtask(), info.getNumberOfParallelSubtasks());
        rows = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("archive_rows");
    }

    /**
     * The raw partition a Kafka source subtask reads when there is one subtask per partition:
     * Flink's KafkaSource gives partition {@code p} to reader
     * {@code (((topic.hashCode() * 31) & 0x7FFFFFFF) % n + p) % n}, a bijection for n partitions.
     */
    static int sourcePartition(String topic, int subtask, int parallelism) {
        int start = ((topic.hashCode() * 31) & 0x7FFFFFFF) % parallelism;
        return Math.floorMod(subtask - start, parallelism);
    }

    @Override
    public void processElement(IN value, Context ctx, Collector<Row> out) {
        Row row = row(value);
        int first = firstPositionColumn();
        row.setField(first, topic);
        row.setField(first + 1, partition);
        row.setField(first + 2, nextSeq++);
        rows.inc();
        out.collect(row);
    }

    /** The record's own fields as a row whose last three columns (topic, partition, sequence) are set afterwards. */
    abstract Row row(IN value);

    /** The column of {@code source_topic}; {@code source_partition} and {@code source_seq} follow it. */
    abstract int firstPositionColumn();
}
