package io.iotlink.flink;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * Sample standard deviation by Welford's running mean and Chan et al.'s merge: stable where the
 * built-in STDDEV_SAMP's sum-of-squares form cancels (readings that barely vary), and NULL below
 * two readings ({@code sample_stddev(value)}).
 */
public final class SampleStddev extends AggregateFunction<Double, SampleStddev.Moments> {

    /** Count, mean and sum of squared deviations. */
    public static class Moments {
        public long count;
        public double mean;
        public double m2;
    }

    @Override
    public Moments createAccumulator() {
        return new Moments();
    }

    public void accumulate(Moments acc, Double value) {
        if (value == null) {
            return;
        }
        acc.count += 1;
        double delta = value - acc.mean;
        acc.mean += delta / acc.count;
        acc.m2 += delta * (value - acc.mean);
    }

    public void merge(Moments acc, Iterable<Moments> others) {
        for (Moments other : others) {
            if (other.count == 0) {
                continue;
            }
            long count = acc.count + other.count;
            double delta = other.mean - acc.mean;
            acc.m2 += other.m2 + delta * delta * acc.count * other.count / count;
            acc.mean += delta * other.count / count;
            acc.count = count;
        }
    }

    @Override
    public Double getValue(Moments acc) {
        return acc.count < 2 ? null : Math.sqrt(Math.max(0.0, acc.m2) / (acc.count - 1));
    }
}
