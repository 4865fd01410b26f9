package io.iotlink.flink;

import java.util.Map;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * A fired window row of {@link MetricStats} ({@code scope, key, window_start, product_id, stats,
 * …}, its window's length at a given position) -> one row per metric, as the aggregate tables
 * hold them, and the window's length: {@code scope, key, metric, window_start, product_id, count,
 * min, max, sum, avg, stddev, first, first_ts, last, last_ts, window_ms}. The row kind is kept.
 */
public final class MetricStatsRows implements FlatMapFunction<Row, Row> {

    private final int windowSizeField;

    /** @param windowSizeField position of the window's length (ms, BIGINT) in the fired rows */
    public MetricStatsRows(int windowSizeField) {
        this.windowSizeField = windowSizeField;
    }

    /** The per-metric rows' type. */
    public static TypeInformation<Row> rowType() {
        String[] names = {"scope", "key", "metric", "window_start", "product_id", "count", "min", "max", "sum", "avg",
            "stddev", "first", "first_ts", "last", "last_ts", "window_ms"};
        TypeInformation<?>[] types = {Types.STRING, Types.STRING, Types.STRING, Types.LONG, Types.STRING, Types.LONG,
            Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.LONG, Types.DOUBLE,
            Types.LONG, Types.LONG};
        return Types.ROW_NAMED(names, types);
    }

    @Override
    public void flatMap(Row window, Collector<Row> out) {
        @SuppressWarnings("unchecked")
        Map<String, Row> stats = (Map<String, Row>) window.getField(4);
        if (stats == null) {
            return;
        }
        for (Map.Entry<String, Row> metric : stats.entrySet()) {
            Row values = metric.getValue();
            Row row = Row.withPositions(window.getKind(), 16);
            row.setField(0, window.getField(0));
            row.setField(1, window.getField(1));
            row.setField(2, metric.getKey());
            row.setField(3, window.getField(2));
            row.setField(4, window.getField(3));
            for (int i = 0; i < 10; i++) {
                row.setField(5 + i, values.getField(i));
            }
            row.setField(15, window.getField(windowSizeField));
            out.collect(row);
        }
    }
}
