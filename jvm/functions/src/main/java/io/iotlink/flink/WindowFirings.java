package io.iotlink.flink;

import java.util.Objects;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.TimerService;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.Collector;

/**
 * Event-time firing for an updating aggregate's changelog, keyed by window (windows of several
 * lengths in one changelog: each row names its window's start and length): keeps each window's
 * newest row and emits it once the watermark has passed the window's end; a row that changes the
 * window after that (a late reading within the allowed lateness) is emitted at once, as a
 * correction; the window is forgotten once the allowed lateness has passed too.
 *
 * <p>So a window is written once, plus once per correction, instead of at every update the
 * aggregate makes (every mini-batch in which one of its readings arrives). Retractions are
 * dropped; the output is insert-only (upserts downstream, on the window's key).
 *
 * <p>The watermark reaches this operator by a shorter path than the aggregate's rows, which wait
 * for the aggregate's processing-time mini-batch: a window fires {@code firingDelayMs} of
 * processing time after the watermark passed its end (at once at the end of the input), so the
 * readings that were in flight are in it, instead of a first version with part of them followed
 * by a correction.
 *
 * <p>A correction equal to what the window last emitted is not emitted; one that leaves the
 * field {@code unchangedField} as it was (the metric statistics, when only a device's
 * communication counts changed) is emitted with that field null, so downstream does not write a
 * second, identical version of the statistics (the Iceberg history appends every version).
 */
public final class WindowFirings extends KeyedProcessFunction<String, Row, Row> {

    /** An event-time timer that fires only with the end of the input's watermark. */
    private static final long END_OF_INPUT = Long.MAX_VALUE - 1;

    private final TypeInformation<Row> rowType;
    private final int windowStartField;
    private final int windowSizeField;
    private final int unchangedField;
    private final long allowedLatenessMs;
    private final long firingDelayMs;
    /** The window's newest row until it is emitted. */
    private transient ValueState<Row> pending;
    /** The row the window last emitted, until the window is forgotten. */
    private transient ValueState<Row> emitted;

    /**
     * @param rowType the changelog's row type (the state holds one row per open window)
     * @param windowStartField position of the window start (epoch ms, BIGINT) in the row
     * @param windowSizeField position of the window's length (ms, BIGINT) in the row
     * @param unchangedField position of the field a correction leaves null when it did not change
     *     it (-1: none)
     * @param allowedLatenessMs how long after its end a window may still change
     * @param firingDelayMs processing time between the watermark passing a window's end and its
     *     firing (at least the aggregate's mini-batch latency)
     */
    public WindowFirings(TypeInformation<Row> rowType, int windowStartField, int windowSizeField, int unchangedField,
            long allowedLatenessMs, long firingDelayMs) {
        this.rowType = rowType;
        this.windowStartField = windowStartField;
        this.windowSizeField = windowSizeField;
        this.unchangedField = unchangedField;
        this.allowedLatenessMs = allowedLatenessMs;
        this.firingDelayMs = firingDelayMs;
    }

    @Override
    public void open(OpenContext openContext) {
        // ("newest-version" is the name the state had when it held both; kept for restores.)
        pending = getRuntimeContext().getState(new ValueStateDescriptor<>("newest-version", rowType));
        emitted = getRuntimeContext().getState(new ValueStateDescriptor<>("emitted-version", rowType));
    }

    private long end(Row row) {
        return ((Number) row.getField(windowStartField)).longValue() + ((Number) row.getField(windowSizeField)).longValue();
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        if (row.getKind() == RowKind.UPDATE_BEFORE || row.getKind() == RowKind.DELETE) {
            return;
        }
        row.setKind(RowKind.INSERT);
        long end = end(row);
        long watermark = ctx.timerService().currentWatermark();
        Row last = emitted.value();
        if (last != null) {
            correct(row, last, out);
        } else {
            pending.update(row);
            if (watermark < end) {
                ctx.timerService().registerEventTimeTimer(end);
            } else {
                fireLater(ctx.timerService().currentProcessingTime(), watermark, ctx.timerService(), out);
            }
        }
        ctx.timerService().registerEventTimeTimer(end + allowedLatenessMs); // forget the window
    }

    /** A correction of a window that has fired: emitted at once unless it changes nothing. */
    private void correct(Row row, Row last, Collector<Row> out) throws Exception {
        if (row.equals(last)) {
            return;
        }
        emitted.update(row);
        if (unchangedField >= 0 && Objects.equals(row.getField(unchangedField), last.getField(unchangedField))) {
            Row changed = Row.copy(row);
            changed.setField(unchangedField, null);
            out.collect(changed);
        } else {
            out.collect(row);
        }
    }

    private void fireLater(long now, long watermark, TimerService timers, Collector<Row> out) throws Exception {
        if (watermark == Long.MAX_VALUE) {
            // The end of the input: every input's last rows are in (a union's watermark is its
            // inputs' smallest), and processing-time timers would not fire any more.
            emitPending(watermark, timers, out);
        } else {
            timers.registerProcessingTimeTimer(now + firingDelayMs);
            timers.registerEventTimeTimer(END_OF_INPUT); // in case the input ends first
        }
    }

    private void emitPending(long watermark, TimerService timers, Collector<Row> out) throws Exception {
        Row row = pending.value();
        if (row == null) {
            return;
        }
        out.collect(row);
        pending.clear();
        timers.deleteEventTimeTimer(END_OF_INPUT);
        if (watermark >= end(row) + allowedLatenessMs) {
            emitted.clear();
        } else {
            emitted.update(row);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        long watermark = ctx.timerService().currentWatermark();
        if (ctx.timeDomain() == TimeDomain.PROCESSING_TIME) {
            emitPending(watermark, ctx.timerService(), out);
            return;
        }
        Row row = pending.value();
        if (row != null) {
            // (The end of the input fires a window whose delayed firing is still to come: its
            // processing-time timer would not fire. Past the lateness otherwise, the delayed
            // firing forgets the window after emitting it.)
            if (timestamp == end(row) || watermark == Long.MAX_VALUE) {
                fireLater(ctx.timerService().currentProcessingTime(), watermark, ctx.timerService(), out);
            }
        } else if (emitted.value() != null && timestamp >= end(emitted.value()) + allowedLatenessMs) {
            emitted.clear();
        }
    }
}
