package io.iotlink.flink;

import java.util.Arrays;
import org.apache.flink.table.functions.AggregateFunction;

/**
 * The longest stretch of a window without a reading, counting from the window's start to the
 * first reading and from the last one to the window's end
 * ({@code longest_gap(device_ts, window_start, window_size)}); NULL without readings.
 *
 * <p>The accumulator keeps the window's distinct reading times, sorted, so a late or
 * out-of-order reading splits the right gap: a device reporting every second keeps 3,600 times
 * for an hour's window, one reporting every minute 60.
 */
public final class LongestGap extends AggregateFunction<Long, LongestGap.Times> {

    /** The window and its distinct reading times, ascending. */
    public static class Times {
        public long windowStart;
        public long windowSize;
        public long[] times = new long[0];
    }

    @Override
    public Times createAccumulator() {
        return new Times();
    }

    public void accumulate(Times acc, Long ts, Long windowStart, Long windowSize) {
        if (ts == null || windowStart == null || windowSize == null) {
            return;
        }
        acc.windowStart = windowStart;
        acc.windowSize = windowSize;
        acc.times = insert(acc.times, ts);
    }

    public void merge(Times acc, Iterable<Times> others) {
        for (Times other : others) {
            if (other.times.length == 0) {
                continue;
            }
            acc.windowStart = other.windowStart;
            acc.windowSize = other.windowSize;
            for (long ts : other.times) {
                acc.times = insert(acc.times, ts);
            }
        }
    }

    @Override
    public Long getValue(Times acc) {
        if (acc.times.length == 0) {
            return null;
        }
        long longest = acc.times[0] - acc.windowStart;
        for (int i = 1; i < acc.times.length; i++) {
            longest = Math.max(longest, acc.times[i] - acc.times[i - 1]);
        }
        return Math.max(longest, acc.windowStart + acc.windowSize - acc.times[acc.times.length - 1]);
    }

    private static long[] insert(long[] times, long ts) {
        int at = Arrays.binarySearch(times, ts);
        if (at >= 0) {
            return times;
        }
        int position = -at - 1;
        long[] grown = new long[times.length + 1];
        System.arraycopy(times, 0, grown, 0, position);
        grown[position] = ts;
        System.arraycopy(times, position, grown, position + 1, times.length - position);
        return grown;
    }
}
