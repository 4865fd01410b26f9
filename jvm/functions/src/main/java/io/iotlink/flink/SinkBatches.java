package io.iotlink.flink;

import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Gathers records into batches for a sink written in Python, so a record crosses into the
 * interpreter as one element of a batch instead of one call each.
 *
 * <p>Emits {@code (sequence number of the batch's first record, records)} when {@code maxSize}
 * records are buffered, {@code maxDelayMs} after the first one, and at the end of input. The
 * buffer is part of each checkpoint (operator state): whatever a checkpoint captured unwritten is
 * restored and written after a failure, and whatever the source replays after the checkpoint is
 * written again, which the idempotent sinks absorb. The sequence numbers count this subtask's
 * records since the job's first one and are restored with the checkpoint, so a replayed record
 * gets its number again (the Iceberg archive skips numbers it has committed).
 */
public final class SinkBatches<T> extends AbstractStreamOperator<Tuple2<Long, List<T>>>
        implements OneInputStreamOperator<T, Tuple2<Long, List<T>>>, ProcessingTimeCallback {

    private final TypeInformation<T> recordType;
    private final int maxSize;
    private final long maxDelayMs;
    private transient TypeSerializer<T> serializer;
    private transient List<T> buffer;
    private transient long nextSeq;
    private transient boolean flushScheduled;
    private transient ListState<T> bufferState;
    private transient ListState<Long> nextSeqState;

    public SinkBatches(TypeInformation<T> recordType, int maxSize, long maxDelayMs) {
        this.recordType = recordType;
        this.maxSize = maxSize;
        this.maxDelayMs = maxDelayMs;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        serializer = recordType.createSerializer(getExecutionConfig().getSerializerConfig());
        bufferState = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("buffer", recordType));
        nextSeqState = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("next-seq", Long.class));
        buffer = new ArrayList<>();
        for (T restored : bufferState.get()) {
            buffer.add(restored);
        }
        nextSeq = 0L;
        for (Long restored : nextSeqState.get()) {
            nextSeq = Math.max(nextSeq, restored);
        }
    }

    @Override
    public void open() throws Exception {
        super.open();
        if (!buffer.isEmpty()) {
            scheduleFlush();
        }
    }

    @Override
    public void processElement(StreamRecord<T> element) {
        // A copy: an upstream operator may hand over the same (mutable) object for every record.
        buffer.add(serializer.copy(element.getValue()));
        nextSeq++;
        if (buffer.size() >= maxSize) {
            emit();
        } else if (buffer.size() == 1) {
            scheduleFlush();
        }
    }

    private void scheduleFlush() {
        if (!flushScheduled) {
            flushScheduled = true;
            getProcessingTimeService().registerTimer(getProcessingTimeService().getCurrentProcessingTime() + maxDelayMs, this);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        flushScheduled = false;
        emit();
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        bufferState.update(buffer);
        nextSeqState.update(List.of(nextSeq));
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    private void emit() {
        if (buffer.isEmpty()) {
            return;
        }
        output.collect(new StreamRecord<>(Tuple2.of(nextSeq - buffer.size(), buffer)));
        buffer = new ArrayList<>();
    }
}
