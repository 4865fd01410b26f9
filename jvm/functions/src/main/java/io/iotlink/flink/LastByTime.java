package io.iotlink.flink;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * The value of the latest reading by device time; readings at the same time are ordered by
 * value, so arrival order never changes the result ({@code last_by_time(value, device_ts)}).
 */
public final class LastByTime extends AggregateFunction<Double, TimedValue> {

    @Override
    public TimedValue createAccumulator() {
        return new TimedValue();
    }

    public void accumulate(TimedValue acc, Double value, Long ts) {
        if (value != null && ts != null && acc.isBefore(ts, value)) {
            acc.set(ts, value);
        }
    }

    public void merge(TimedValue acc, Iterable<TimedValue> others) {
        for (TimedValue other : others) {
            if (other.value != null && acc.isBefore(other.ts, other.value)) {
                acc.set(other.ts, other.value);
            }
        }
    }

    @Override
    public Double getValue(TimedValue acc) {
        return acc.value;
    }
}
