package io.iotlink.flink;

import java.util.HashMap;
import java.util.Map;
import java.util.TreeMap;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * Every metric of a reading's metrics map aggregated in one accumulator: per metric the count,
 * min, max, sum, mean, sample standard deviation and the first and last value by device time
 * ({@code metric_stats(metrics, device_ts)}). One accumulator per device (or product) and window
 * instead of one per metric: an aggregate's state is read and written once per reading, not once
 * per metric, and its changelog carries one row per window.
 *
 * <p>Each metric's numbers are those of {@code COUNT}, {@code MIN}, {@code MAX}, {@code SUM},
 * {@code AVG}, a sample standard deviation (Welford's running mean, Chan et al.'s merge: stable where the
 * built-in STDDEV_SAMP's sum of squares cancels) and the first and last value by device time (ties by
 * value, so arrival order never changes a result) over that metric alone.
 */
@FunctionHint(output = @DataTypeHint(MetricStats.OUTPUT_TYPE))
public final class MetricStats extends AggregateFunction<Map<String, Row>, MetricStats.Accumulator> {

    /** The result's type: metric -> its statistics, in {@link #FIELDS} order. */
    public static final String OUTPUT_TYPE = "MAP<STRING, ROW<`count` BIGINT, `min` DOUBLE, `max` DOUBLE, `sum` DOUBLE, "
            + "`avg` DOUBLE, stddev DOUBLE, `first` DOUBLE, first_ts BIGINT, `last` DOUBLE, last_ts BIGINT>>";
    /** The statistics of one metric, as the result's rows hold them. */
    public static final String[] FIELDS = {"count", "min", "max", "sum", "avg", "stddev", "first", "first_ts", "last", "last_ts"};

    /** One metric's running statistics. */
    public static class Moments {
        public long count;
        public double min;
        public double max;
        public double sum;
        public double mean;
        public double m2;
        public long firstTs;
        public double first;
        public long lastTs;
        public double last;

        void add(double value, long ts) {
            if (count == 0) {
                min = value;
                max = value;
                firstTs = ts;
                first = value;
                lastTs = ts;
                last = value;
            } else {
                min = Math.min(min, value);
                max = Math.max(max, value);
                if (ts < firstTs || (ts == firstTs && value < first)) {
                    firstTs = ts;
                    first = value;
                }
                if (ts > lastTs || (ts == lastTs && value > last)) {
                    lastTs = ts;
                    last = value;
                }
            }
            sum += value;
            count += 1;
            double delta = value - mean;
            mean += delta / count;
            m2 += delta * (value - mean);
        }

        void merge(Moments other) {
            if (other.count == 0) {
                return;
            }
            if (count == 0) {
                min = other.min;
                max = other.max;
                firstTs = other.firstTs;
                first = other.first;
                lastTs = other.lastTs;
                last = other.last;
            } else {
                min = Math.min(min, other.min);
                max = Math.max(max, other.max);
                if (other.firstTs < firstTs || (other.firstTs == firstTs && other.first < first)) {
                    firstTs = other.firstTs;
                    first = other.first;
                }
                if (other.lastTs > lastTs || (other.lastTs == lastTs && other.last > last)) {
                    lastTs = other.lastTs;
                    last = other.last;
                }
            }
            sum += other.sum;
            long total = count + other.count;
            double delta = other.mean - mean;
            m2 += other.m2 + delta * delta * count * other.count / total;
            mean += delta * other.count / total;
            count = total;
        }

        Row toRow() {
            Double stddev = count < 2 ? null : Math.sqrt(Math.max(0.0, m2) / (count - 1));
            return Row.of(count, min, max, sum, sum / count, stddev, first, firstTs, last, lastTs);
        }
    }

    /** Metric name -> its statistics. */
    public static class Accumulator {
        public Map<String, Moments> metrics = new HashMap<>();
    }

    @Override
    public Accumulator createAccumulator() {
        return new Accumulator();
    }

    public void accumulate(Accumulator acc, Map<String, Double> metrics, Long ts) {
        if (metrics == null || ts == null) {
            return;
        }
        for (Map.Entry<String, Double> metric : metrics.entrySet()) {
            Double value = metric.getValue();
            if (metric.getKey() != null && value != null) {
                acc.metrics.computeIfAbsent(metric.getKey(), name -> new Moments()).add(value, ts);
            }
        }
    }

    public void merge(Accumulator acc, Iterable<Accumulator> others) {
        for (Accumulator other : others) {
            for (Map.Entry<String, Moments> metric : other.metrics.entrySet()) {
                acc.metrics.computeIfAbsent(metric.getKey(), name -> new Moments()).merge(metric.getValue());
            }
        }
    }

    @Override
    public Map<String, Row> getValue(Accumulator acc) {
        Map<String, Row> result = new TreeMap<>();
        for (Map.Entry<String, Moments> metric : acc.metrics.entrySet()) {
            result.put(metric.getKey(), metric.getValue().toRow());
        }
        return result;
    }
}
