package io.iotlink.flink;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.List;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Drops a reading whose (device, device time, decoded metrics) was seen within the TTL, so
 * at-least-once bridges (MQTT QoS 1 redelivery) cannot inflate aggregates or raise alarms twice.
 *
 * <p>Keyed by device; input and output are (device_id, device_ts, telemetry JSON). The metrics
 * are compared with their keys sorted, so a redelivery matches whatever its receive time and
 * field order. Metric: {@code iotlink.duplicates_dropped}.
 */
public final class DeduplicateReadings
        extends KeyedProcessFunction<String, Tuple3<String, Long, String>, Tuple3<String, Long, String>> {

    private static final ObjectMapper JSON = new ObjectMapper();

    private final long ttlMs;
    private transient MapState<String, Boolean> seen;
    private transient Counter dropped;
    private transient MessageDigest digest;

    public DeduplicateReadings(long ttlMs) {
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext openContext) throws NoSuchAlgorithmException {
        MapStateDescriptor<String, Boolean> descriptor = new MapStateDescriptor<>("seen-readings", String.class, Boolean.class);
        descriptor.enableTimeToLive(StateTtlConfig.newBuilder(Duration.ofMillis(ttlMs))
                .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build());
        seen = getRuntimeContext().getMapState(descriptor);
        dropped = getRuntimeContext().getMetricGroup().addGroup("iotlink").counter("duplicates_dropped");
        digest = MessageDigest.getInstance("SHA-256");
    }

    @Override
    public void processElement(Tuple3<String, Long, String> value, Context ctx, Collector<Tuple3<String, Long, String>> out)
            throws Exception {
        String fingerprint = fingerprint(value);
        if (seen.contains(fingerprint)) {
            dropped.inc();
            return;
        }
        seen.put(fingerprint, Boolean.TRUE);
        out.collect(value);
    }

    private String fingerprint(Tuple3<String, Long, String> value) throws Exception {
        StringBuilder canonical = new StringBuilder().append(value.f1).append('|');
        appendSorted(JSON.readTree(value.f2).path("metrics"), canonical);
        byte[] hash = digest.digest(canonical.toString().getBytes(StandardCharsets.UTF_8));
        // 12 bytes, as the Python fingerprint of the file batch job: collisions are out of reach.
        return HexFormat.of().formatHex(hash, 0, 12);
    }

    /** The node as JSON text with every object's keys sorted. */
    static void appendSorted(JsonNode node, StringBuilder out) {
        if (node.isObject()) {
            List<String> names = new ArrayList<>();
            node.fieldNames().forEachRemaining(names::add);
            Collections.sort(names);
            out.append('{');
            for (int i = 0; i < names.size(); i++) {
                if (i > 0) {
                    out.append(',');
                }
                out.append(JSON.valueToTree(names.get(i)).toString()).append(':');
                appendSorted(node.get(names.get(i)), out);
            }
            out.append('}');
        } else if (node.isArray()) {
            out.append('[');
            for (int i = 0; i < node.size(); i++) {
                if (i > 0) {
                    out.append(',');
                }
                appendSorted(node.get(i), out);
            }
            out.append(']');
        } else {
            out.append(node.toString());
        }
    }
}
