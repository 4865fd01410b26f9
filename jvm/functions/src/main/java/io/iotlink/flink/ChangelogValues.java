package io.iotlink.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.Collector;

/**
 * The new values of an updating SQL result: one text field of each inserted or updated row
 * (the retraction halves of an update, and deletes, give nothing). The upsert sinks fed this
 * way write absolute values, so only the newest one matters.
 */
public final class ChangelogValues implements FlatMapFunction<Row, String> {

    private final int field;

    public ChangelogValues(int field) {
        this.field = field;
    }

    @Override
    public void flatMap(Row row, Collector<String> out) {
        if (row.getKind() == RowKind.INSERT || row.getKind() == RowKind.UPDATE_AFTER) {
            Object value = row.getField(field);
            if (value != null) {
                out.collect(value.toString());
            }
        }
    }
}
