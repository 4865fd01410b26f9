package io.iotlink.flink;

import java.io.IOException;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFilterFunction;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;

/**
 * Keeps the readings of products that have a rule set, so the others never cross into the
 * Python alarm operator (which would only note that no rule applies). Readings of other
 * products are counted as {@code iotlink.readings_without_rules}. For rule sets pushed while the
 * job runs see {@link RuledReadingsWithPushes}.
 */
public final class RuledReadings extends RichFilterFunction<Tuple3<String, Long, String>> {

    private static final JsonFactory JSON = new JsonFactory();

    private final Set<String> products;
    private transient Counter withoutRules;

    /** @param products the products with a rule set */
    public RuledReadings(String[] products) {
        this.products = new HashSet<>(Arrays.asList(products));
    }

    @Override
    public void open(OpenContext openContext) {
        withoutRules = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("readings_without_rules");
    }

    @Override
    public boolean filter(Tuple3<String, Long, String> reading) {
        boolean ruled = products.contains(productOf(reading.f2));
        if (!ruled) {
            withoutRules.inc();
        }
        return ruled;
    }

    /**
     * The top-level {@code product_id} text of a JSON object, read without building the object
     * (the fields before it are skipped, not parsed into values); null when there is none.
     */
    static String productOf(String json) {
        if (json == null) {
            return null;
        }
        try (JsonParser parser = JSON.createParser(json)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken value = parser.nextToken();
                if ("product_id".equals(name)) {
                    return value == JsonToken.VALUE_STRING ? parser.getText() : null;
                }
                parser.skipChildren();
            }
        } catch (IOException notJson) {
            return null;
        }
        return null;
    }
}
