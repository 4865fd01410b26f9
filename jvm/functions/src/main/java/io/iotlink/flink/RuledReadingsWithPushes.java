package io.iotlink.flink;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.co.BroadcastProcessFunction;
import org.apache.flink.util.Collector;

/**
 * {@link RuledReadings} for a job that takes rule sets pushed on {@code iotlink.rules}: a product
 * whose rule set is pushed while the job runs is let through from the moment this operator
 * receives the push (kept in broadcast state, so also after a restore).
 */
public final class RuledReadingsWithPushes
        extends BroadcastProcessFunction<Tuple3<String, Long, String>, String, Tuple3<String, Long, String>> {

    /** The broadcast state: product ids with a pushed rule set. */
    public static final MapStateDescriptor<String, Boolean> PUSHED =
            new MapStateDescriptor<>("products-with-pushed-rules", Types.STRING, Types.BOOLEAN);

    private final Set<String> products;
    private transient Counter withoutRules;

    /** @param products the products with a rule set at the job's start */
    public RuledReadingsWithPushes(String[] products) {
        this.products = new HashSet<>(Arrays.asList(products));
    }

    @Override
    public void open(OpenContext openContext) {
        withoutRules = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("readings_without_rules");
    }

    @Override
    public void processElement(Tuple3<String, Long, String> reading, ReadOnlyContext ctx, Collector<Tuple3<String, Long, String>> out)
            throws Exception {
        String product = RuledReadings.productOf(reading.f2);
        if (product != null && (products.contains(product) || ctx.getBroadcastState(PUSHED).contains(product))) {
            out.collect(reading);
        } else {
            withoutRules.inc();
        }
    }

    @Override
    public void processBroadcastElement(String message, Context ctx, Collector<Tuple3<String, Long, String>> out) throws Exception {
        // A rejected push lets the product's readings through too: the alarm operator then finds
        // no rule set for them, as before the filter.
        String product = RuledReadings.productOf(message);
        if (product != null) {
            ctx.getBroadcastState(PUSHED).put(product, Boolean.TRUE);
        }
    }
}
