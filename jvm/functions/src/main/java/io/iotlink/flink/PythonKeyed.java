package io.iotlink.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.java.tuple.Tuple;
import org.apache.flink.types.Row;

/**
 * The key of a Python keyed operator, computed in Java: {@code Row(first field, tuple)}, the shape
 * PyFlink's own {@code key_by} produces with a Python map (one more Python crossing per record).
 */
public final class PythonKeyed implements MapFunction<Tuple, Row> {

    @Override
    public Row map(Tuple value) {
        return Row.of(value.getField(0), value);
    }
}
