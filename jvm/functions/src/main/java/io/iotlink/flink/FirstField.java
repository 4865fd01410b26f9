package io.iotlink.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple;

/** Keys a tuple stream by its first field (the device id of a telemetry tuple), in Java. */
public final class FirstField<K> implements KeySelector<Tuple, K> {

    @Override
    @SuppressWarnings("unchecked")
    public K getKey(Tuple value) {
        return (K) value.getField(0);
    }
}
