package io.iotlink.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.util.Collector;

/**
 * The late check of the telemetry job, in Java: counts records behind the watermark
 * ({@code iotlink.late}) and emits each telemetry tuple's JSON ({@code iotlink.telemetry_out}).
 *
 * <p>Input: (device_id, device_ts, telemetry JSON) with the device time as record timestamp.
 * Late records stay in the telemetry stream: it is the complete record of what devices sent.
 */
public final class TelemetryJson extends ProcessFunction<Tuple3<String, Long, String>, String> {

    private transient Counter late;
    private transient Counter emitted;

    @Override
    public void open(OpenContext openContext) {
        MetricGroup group = getRuntimeContext().getMetricGroup().addGroup("iotlink");
        late = group.counter("late");
        emitted = group.counter("telemetry_out");
    }

    @Override
    public void processElement(Tuple3<String, Long, String> value, Context ctx, Collector<String> out) {
        Long timestamp = ctx.timestamp();
        if (timestamp != null && timestamp < ctx.timerService().currentWatermark()) {
            late.inc();
        }
        emitted.inc();
        out.collect(value.f2);
    }
}
