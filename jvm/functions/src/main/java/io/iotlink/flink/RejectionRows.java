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
        JsonNode letter;
        try {
            letter = JSON.readTree(value);
        } catch (Exception notJson) {
            return; // the decoder writes every letter as JSON; anything else names no device
        }
        JsonNode device = letter.get("device_id");
        if (device == null || !device.isTextual() || device.asText().isEmpty()) {
            return;
        }
        JsonNode received = letter.get("received_at");
        long ts = received != null && received.canConvertToLong() && received.isIntegralNumber()
                ? received.asLong() : System.currentTimeMillis();
        JsonNode product = letter.get("product_id");
        out.collect(Row.of("rejected", device.asText(), product != null && product.isTextual() ? product.asText() : null, ts,
                null, null));
    }
}
