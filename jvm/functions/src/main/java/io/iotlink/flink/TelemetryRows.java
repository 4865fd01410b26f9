package io.iotlink.flink;

import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

/**
 * One Iceberg {@code telemetry} row per standard telemetry record (its JSON as on
 * {@code iotlink.telemetry}): the numeric metrics as a map, all metrics and the quality flags as
 * JSON text, and where the record's raw record was read.
 *
 * <p>The decoder writes every record, so a record that cannot be read here is a defect of ours;
 * it still gives a row (device {@code "?"}, the text in {@code metrics_json}) rather than stopping
 * the job.
 */
public final class TelemetryRows extends ArchiveRows<String> {

    private static final ObjectMapper JSON = new ObjectMapper();
    /** The columns of the rows, in order (the view {@code telemetry_archive} of sql/jobs/archive.sql). */
    static final String[] COLUMNS = {"device_id", "product_id", "tenant", "hub_id", "device_ts", "ingest_ts", "metrics",
        "metrics_json", "quality_json", "spec_id", "spec_version", "source_topic", "source_partition", "source_seq"};

    public TelemetryRows(String topic) {
        super(topic);
    }

    @Override
    int firstPositionColumn() {
        return 11;
    }

    @Override
    Row row(String value) {
        Row row = Row.withPositions(COLUMNS.length);
        JsonNode record;
        try {
            record = JSON.readTree(value);
        } catch (Exception error) {
            record = null;
        }
        if (record == null || !record.isObject() || !record.path("device_ts").canConvertToLong()) {
            row.setField(0, "?");
            row.setField(4, 0L);
            row.setField(5, System.currentTimeMillis());
            row.setField(7, value);
            return row;
        }
        row.setField(0, text(record, "device_id"));
        row.setField(1, text(record, "product_id"));
        row.setField(2, text(record, "tenant"));
        row.setField(3, text(record, "hub_id"));
        row.setField(4, record.get("device_ts").asLong());
        JsonNode ingest = record.get("ingest_ts");
        row.setField(5, ingest != null && ingest.canConvertToLong() ? ingest.asLong() : 0L);
        JsonNode metrics = record.get("metrics");
        Map<String, Double> numeric = new HashMap<>();
        if (metrics != null && metrics.isObject()) {
            Iterator<Map.Entry<String, JsonNode>> fields = metrics.fields();
            while (fields.hasNext()) {
                Map.Entry<String, JsonNode> field = fields.next();
                // Finite numbers only, as the aggregates take them (ReadingRows).
                if (field.getValue().isNumber() && Double.isFinite(field.getValue().asDouble())) {
                    numeric.put(field.getKey(), field.getValue().asDouble());
                }
            }
        }
        row.setField(6, numeric);
        row.setField(7, metrics == null || metrics.isNull() ? "{}" : metrics.toString());
        JsonNode quality = record.get("quality");
        boolean hasQuality = quality != null && !quality.isNull() && !(quality.isContainerNode() && quality.isEmpty());
        row.setField(8, hasQuality ? quality.toString() : null);
        row.setField(9, text(record, "spec_id"));
        JsonNode version = record.get("spec_version");
        row.setField(10, version == null || version.isNull() ? null : version.asText());
        return row;
    }

    private static String text(JsonNode record, String name) {
        JsonNode field = record.get(name);
        return field == null || field.isNull() ? null : field.asText();
    }
}
