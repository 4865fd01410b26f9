package io.iotlink.flink;

import java.math.BigInteger;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Telemetry tuples -> one row per reading for the SQL aggregates ({@code sql/jobs/aggregates.sql}):
 * {@code kind, device_id, product_id, ts, metrics, interval_ms}, the numeric metrics as a map.
 * A reading whose minute ended more than the allowed lateness before the watermark goes to the
 * late side output instead ({@code {"watermark":…,"allowed_lateness_ms":…,"record":…}}, counted
 * as {@code iotlink.windows_too_late}). The rules are those of {@code operators/aggregate_rows.py}.
 */
public final class ReadingRows extends ProcessFunction<Tuple3<String, Long, String>, Row> {

    private static final long MINUTE_MS = 60_000L;
    private static final ObjectMapper JSON = new ObjectMapper();

    private final long allowedLatenessMs;
    private final HashMap<String, Long> intervalsMs;
    private final OutputTag<String> late;
    private transient Counter tooLate;

    /**
     * @param allowedLatenessMs how long after its minute a reading still corrects the aggregates
     * @param intervalsJson device id -> expected reporting interval in ms (master data), as one
     *     JSON object: one call from Python however large the fleet, not one per device
     * @param late where too-late readings go
     * @throws IllegalArgumentException when the text is not such an object
     */
    public ReadingRows(long allowedLatenessMs, String intervalsJson, OutputTag<String> late) {
        this.allowedLatenessMs = allowedLatenessMs;
        this.intervalsMs = new HashMap<>();
        JsonNode intervals;
        try {
            intervals = JSON.readTree(intervalsJson);
        } catch (Exception error) {
            throw new IllegalArgumentException("device intervals are not JSON: " + error.getMessage(), error);
        }
        if (intervals == null || !intervals.isObject()) {
            throw new IllegalArgumentException("device intervals must be a JSON object of device id -> milliseconds");
        }
        intervals.fields().forEachRemaining(field -> this.intervalsMs.put(field.getKey(), field.getValue().asLong()));
        this.late = late;
    }

    @Override
    public void open(OpenContext openContext) {
        tooLate = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("windows_too_late");
    }

    @Override
    public void processElement(Tuple3<String, Long, String> value, Context ctx, Collector<Row> out) throws Exception {
        long deviceTs = value.f1;
        long watermark = ctx.timerService().currentWatermark();
        if (tooLate(deviceTs, watermark, allowedLatenessMs)) {
            tooLate.inc();
            ctx.output(late, "{\"watermark\":" + watermark + ",\"allowed_lateness_ms\":" + allowedLatenessMs
                    + ",\"record\":" + value.f2 + "}");
            return;
        }
        JsonNode record = JSON.readTree(value.f2);
        JsonNode product = record.get("product_id");
        out.collect(Row.of("reading", value.f0, product != null && product.isTextual() ? product.asText() : null, deviceTs,
                numericMetrics(record.get("metrics")), intervalsMs.get(value.f0)));
    }

    public static boolean tooLate(long deviceTs, long watermark, long allowedLatenessMs) {
        return deviceTs - Math.floorMod(deviceTs, MINUTE_MS) + MINUTE_MS + allowedLatenessMs <= watermark + 1;
    }

    /** Finite numbers only: booleans, strings, nested values and integers beyond a double's range are left out. */
    public static Map<String, Double> numericMetrics(JsonNode metrics) {
        Map<String, Double> numbers = new HashMap<>();
        if (metrics == null || !metrics.isObject()) {
            return numbers;
        }
        Iterator<Map.Entry<String, JsonNode>> fields = metrics.fields();
        while (fields.hasNext()) {
            Map.Entry<String, JsonNode> field = fields.next();
            JsonNode node = field.getValue();
            if (!node.isNumber()) {
                continue;
            }
            double number = node.isBigInteger() ? new BigInteger(node.asText()).doubleValue() : node.doubleValue();
            if (Double.isFinite(number)) {
                numbers.put(field.getKey(), number);
            }
        }
        return numbers;
    }
}
