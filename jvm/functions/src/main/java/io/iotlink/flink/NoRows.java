package io.iotlink.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Emits nothing: what passes is the input's event-time watermarks. Unioned with an aggregate's
 * changelog it gives {@link FinalWindowRows} device-time watermarks, which a Flink SQL
 * aggregate with processing-time mini-batches does not forward (it emits its batch markers).
 */
public final class NoRows<T> implements FlatMapFunction<T, Row> {

    @Override
    public void flatMap(T value, Collector<Row> out) {
        // no output by design
    }
}
