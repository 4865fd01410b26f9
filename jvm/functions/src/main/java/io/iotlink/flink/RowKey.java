package io.iotlink.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/** A Java key selector over some fields of a row (joined with U+001F), so keying needs no Python. */
public final class RowKey implements KeySelector<Row, String> {

    private final int[] fields;

    public RowKey(int[] fields) {
        this.fields = fields.clone();
    }

    @Override
    public String getKey(Row row) {
        StringBuilder key = new StringBuilder();
        for (int i = 0; i < fields.length; i++) {
            if (i > 0) {
                key.append('\u001f');
            }
            key.append(row.getField(fields[i]));
        }
        return key.toString();
    }
}
