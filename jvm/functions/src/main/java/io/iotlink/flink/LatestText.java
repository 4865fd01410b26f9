package io.iotlink.flink;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * The text of the latest reading by device time; readings at the same time are ordered by their
 * text, so arrival order never changes the result ({@code latest_text(telemetry, device_ts)}:
 * each device's newest record for the MongoDB hot layer).
 */
public final class LatestText extends AggregateFunction<String, LatestText.TimedText> {

    /** Accumulator: one reading, (time, text). */
    public static class TimedText {
        public long ts;
        public String text;

        boolean isBefore(long otherTs, String otherText) {
            return text == null || otherTs > ts || (otherTs == ts && otherText.compareTo(text) > 0);
        }
    }

    @Override
    public TimedText createAccumulator() {
        return new TimedText();
    }

    public void accumulate(TimedText acc, String text, Long ts) {
        if (text != null && ts != null && acc.isBefore(ts, text)) {
            acc.ts = ts;
            acc.text = text;
        }
    }

    public void merge(TimedText acc, Iterable<TimedText> others) {
        for (TimedText other : others) {
            if (other.text != null && acc.isBefore(other.ts, other.text)) {
                acc.ts = other.ts;
                acc.text = other.text;
            }
        }
    }

    @Override
    public String getValue(TimedText acc) {
        return acc.text;
    }
}
