package io.iotlink.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Dead-letter JSON -> one {@code rejected} row for the communication-quality aggregates when the
 * letter names a device (by its receive time, else now); letters without a device give nothing.
 * The rules are those of {@code operators/aggregate_rows.rejection_row}.
 */
public final class RejectionRows implements FlatMapFunction<String, Row> {

    private static final ObjectMapper JSON = new ObjectMapper();

    @Override
    public void flatMap(String value, Collector<Row> out) {
        JsonNode letter = parse(value);
        if (!namesDevice(letter)) {
            return;
        }
        JsonNode device = letter.get("device_id");
        JsonNode received = letter.get("received_at");
        long ts = received != null && received.canConvertToLong() && received.isIntegralNumber()
                ? received.asLong() : System.currentTimeMillis();
        JsonNode product = letter.get("product_id");
        out.collect(Row.of("rejected", device.asText(), product != null && product.isTextual() ? product.asText() : null, ts,
                null, null));
    }

    /** The letter's JSON, or null when it is not JSON (the decoder writes every letter as JSON). */
    static JsonNode parse(String value) {
        try {
            return JSON.readTree(value);
        } catch (Exception notJson) {
            return null;
        }
    }

    /** Whether a parsed letter names a device (a non-empty text {@code device_id}). */
    static boolean namesDevice(JsonNode letter) {
        JsonNode device = letter == null ? null : letter.get("device_id");
        return device != null && device.isTextual() && !device.asText().isEmpty();
    }
}
