package io.iotlink.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Telemetry JSON as read back from {@code iotlink.telemetry} -> the decode operator's output,
 * ((device_id, device_ts, JSON), device_ts): what a job reading the topic instead of decoding hands
 * to the same downstream operators (the Kafka-seam measurement of bench/seam.py).
 *
 * <p>The decoder wrote every record, so one without a device or a numeric device time is a defect
 * upstream: it is counted ({@code iotlink.unreadable_telemetry}) and left out, never fails the job.
 */
public final class TelemetryTuples extends ProcessFunction<String, Tuple2<Tuple3<String, Long, String>, Long>> {

    private static final ObjectMapper JSON = new ObjectMapper();
    private transient Counter unreadable;

    @Override
    public void open(OpenContext openContext) {
        unreadable = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("unreadable_telemetry");
    }

    @Override
    public void processElement(String value, Context ctx, Collector<Tuple2<Tuple3<String, Long, String>, Long>> out) {
        JsonNode record;
        try {
            record = JSON.readTree(value);
        } catch (Exception error) {
            record = null;
        }
        if (record == null || !record.isObject() || !record.path("device_id").isTextual()
                || !record.path("device_ts").canConvertToLong()) {
            unreadable.inc();
            return;
        }
        long deviceTs = record.get("device_ts").asLong();
        out.collect(Tuple2.of(Tuple3.of(record.get("device_id").asText(), deviceTs, value), deviceTs));
    }
}
