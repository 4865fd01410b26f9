package io.iotlink.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.Collector;

/**
 * Event-time firing for an updating aggregate's changelog, keyed by window (windows of several
 * lengths in one changelog: each row names its window's start and length): keeps each window's
 * newest row and emits it when the watermark passes the window's end; a row that changes the
 * window after that (a late reading within the allowed lateness) is emitted at once, as a
 * correction; the window is forgotten once the allowed lateness has passed too.
 *
 * <p>So a window is written once, plus once per correction, instead of at every update the
 * aggregate makes (every mini-batch in which one of its readings arrives). Retractions are
 * dropped; the output is insert-only (upserts downstream, on the window's key).
 */
public final class WindowFirings extends KeyedProcessFunction<String, Row, Row> {

    private final TypeInformation<Row> rowType;
    private final int windowStartField;
    private final int windowSizeField;
    private final long allowedLatenessMs;
    private transient ValueState<Row> newest;

    /**
     * @param rowType the changelog's row type (the state holds one row per open window)
     * @param windowStartField position of the window start (epoch ms, BIGINT) in the row
     * @param windowSizeField position of the window's length (ms, BIGINT) in the row
     * @param allowedLatenessMs how long after its end a window may still change
     */
    public WindowFirings(TypeInformation<Row> rowType, int windowStartField, int windowSizeField, long allowedLatenessMs) {
        this.rowType = rowType;
        this.windowStartField = windowStartField;
        this.windowSizeField = windowSizeField;
        this.allowedLatenessMs = allowedLatenessMs;
    }

    @Override
    public void open(OpenContext openContext) {
        newest = getRuntimeContext().getState(new ValueStateDescriptor<>("newest-version", rowType));
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        if (row.getKind() == RowKind.UPDATE_BEFORE || row.getKind() == RowKind.DELETE) {
            return;
        }
        row.setKind(RowKind.INSERT);
        long end = ((Number) row.getField(windowStartField)).longValue() + ((Number) row.getField(windowSizeField)).longValue();
        if (ctx.timerService().currentWatermark() >= end) {
            out.collect(row); // a correction of a window that has fired
            newest.clear();
        } else {
            newest.update(row);
            ctx.timerService().registerEventTimeTimer(end);
        }
        ctx.timerService().registerEventTimeTimer(end + allowedLatenessMs); // forget the window
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        Row row = newest.value();
        if (row != null) {
            out.collect(row);
            newest.clear();
        }
    }
}
