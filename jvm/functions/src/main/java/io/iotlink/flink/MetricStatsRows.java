package io.iotlink.flink;

import java.util.Map;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * A fired window row of {@link MetricStats} ({@code scope, key, window_start, product_id, stats})
 * -> one row per metric, as the aggregate tables hold them: {@code scope, key, metric,
 * window_start, product_id, count, min, max, sum, avg, stddev, first, first_ts, last, last_ts}.
 * The row kind is kept.
 */
public final class MetricStatsRows implements FlatMapFunction<Row, Row> {

    /** The per-metric rows' type. */
    public static TypeInformation<Row> rowType() {
        String[] names = {"scope", "key", "metric", "window_start", "product_id", "count", "min", "max", "sum", "avg",
            "stddev", "first", "first_ts", "last", "last_ts"};
        TypeInformation<?>[] types = {Types.STRING, Types.STRING, Types.STRING, Types.LONG, Types.STRING, Types.LONG,
            Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.DOUBLE, Types.LONG, Types.DOUBLE,
            Types.LONG};
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
            Row row = Row.withPositions(window.getKind(), 15);
            row.setField(0, window.getField(0));
            row.setField(1, window.getField(1));
            row.setField(2, metric.getKey());
            row.setField(3, window.getField(2));
            row.setField(4, window.getField(3));
            for (int i = 0; i < 10; i++) {
                row.setField(5 + i, values.getField(i));
            }
            out.collect(row);
        }
    }
}
