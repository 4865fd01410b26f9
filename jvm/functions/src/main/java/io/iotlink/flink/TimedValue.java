package io.iotlink.flink;

/** Accumulator of {@link FirstByTime} and {@link LastByTime}: one reading, (time, value). */
public class TimedValue {
    public long ts;
    public Double value;

    /** Whether the held reading comes after (ts, value): (ts, value) would be an earlier first. */
    boolean isAfter(long otherTs, double otherValue) {
        return value == null || otherTs < ts || (otherTs == ts && otherValue < value);
    }

    /** Whether the held reading comes before (ts, value): (ts, value) would be a later last. */
    boolean isBefore(long otherTs, double otherValue) {
        return value == null || otherTs > ts || (otherTs == ts && otherValue > value);
    }

    void set(long newTs, double newValue) {
        ts = newTs;
        value = newValue;
    }
}
