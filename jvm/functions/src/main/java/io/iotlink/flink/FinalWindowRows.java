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
 * The final version of each window of an aggregate's changelog: keeps a window's newest row and
 * emits it once, when the watermark passes the window's end plus the allowed lateness (after that
 * no reading may change it). Retractions are dropped; the output is insert-only.
 *
 * <p>The telemetry job puts it behind the hourly aggregates, so the Iceberg {@code agg_1h}
 * history and the MongoDB product summaries get one row per window instead of every update.
 */
public final class FinalWindowRows extends KeyedProcessFunction<String, Row, Row> {

    private final TypeInformation<Row> rowType;
    private final int windowStartField;
    private final long windowSizeMs;
    private final long allowedLatenessMs;
    private transient ValueState<Row> newest;

    /**
     * @param rowType the changelog's row type (the state holds one row per window)
     * @param windowStartField position of the window start (epoch ms, BIGINT) in the row
     * @param windowSizeMs the window's length
     * @param allowedLatenessMs how long after its end a window may still change
     */
    public FinalWindowRows(TypeInformation<Row> rowType, int windowStartField, long windowSizeMs, long allowedLatenessMs) {
        this.rowType = rowType;
        this.windowStartField = windowStartField;
        this.windowSizeMs = windowSizeMs;
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
        newest.update(row);
        long windowStart = ((Number) row.getField(windowStartField)).longValue();
        ctx.timerService().registerEventTimeTimer(windowStart + windowSizeMs + allowedLatenessMs);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        Row row = newest.value();
        if (row != null) {
            row.setKind(RowKind.INSERT);
            out.collect(row);
            newest.clear();
        }
    }
}
