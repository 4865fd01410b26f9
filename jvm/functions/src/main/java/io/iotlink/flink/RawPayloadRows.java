package io.iotlink.flink;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.types.Row;

/**
 * One {@code raw_payloads} row per record of the raw topic: the original payload bytes, the
 * envelope's fields, the envelope itself without its payload (keys sorted), and where the record
 * was read. The envelope rules are those of {@code operators/envelope.parse_envelope}: a record
 * that is not a valid envelope is archived whole as its payload, with {@code received_at} 0 and
 * the reason in {@code envelope_error} (the decoder also sends it to the dead-letter topic).
 */
public final class RawPayloadRows extends ArchiveRows<byte[]> {

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Set<String> SOURCES = Set.of("mqtt", "tcp", "http", "file", "kafka");
    private static final Set<String> FORMATS = Set.of("json", "bin", "hex", "csv");

    public RawPayloadRows(String topic) {
        super(topic);
    }

    /** The columns of the rows, in order (the view {@code raw_archive} of sql/jobs/archive.sql). */
    static final String[] COLUMNS = {"received_at", "source", "device_id", "product_id", "hub_id", "format", "mqtt_topic",
        "payload", "envelope", "envelope_error", "source_topic", "source_partition", "source_seq"};
    private static final int RECEIVED_AT = 0;
    private static final int SOURCE = 1;
    private static final int FORMAT = 5;
    private static final int PAYLOAD = 7;
    private static final int ENVELOPE = 8;
    private static final int ENVELOPE_ERROR = 9;
    // The optional text fields of an envelope and their columns.
    private static final String[] TEXT_FIELDS = {"device_id", "product_id", "hub_id", "format", "mqtt_topic"};
    private static final int[] TEXT_COLUMNS = {2, 3, 4, 5, 6};

    @Override
    int firstPositionColumn() {
        return 10;
    }

    /** An envelope that breaks a rule. */
    private static final class NotAnEnvelope extends Exception {
        NotAnEnvelope(String reason) {
            super(reason, null, false, false);
        }
    }

    @Override
    Row row(byte[] value) {
        Row row = Row.withPositions(COLUMNS.length);
        try {
            parse(value, row);
        } catch (NotAnEnvelope error) {
            row = Row.withPositions(COLUMNS.length);
            row.setField(RECEIVED_AT, 0L);
            row.setField(PAYLOAD, value);
            row.setField(ENVELOPE_ERROR, error.getMessage());
        }
        return row;
    }

    private static void parse(byte[] value, Row row) throws NotAnEnvelope {
        JsonNode doc;
        try {
            doc = JSON.readTree(value);
        } catch (Exception error) {
            throw new NotAnEnvelope("raw record is not a JSON envelope: " + firstLine(error.getMessage()));
        }
        if (doc == null || !doc.isObject()) {
            throw new NotAnEnvelope("raw record is a JSON " + (doc == null ? "nothing" : doc.getNodeType().name().toLowerCase())
                    + ", not an envelope object");
        }
        JsonNode version = doc.get("v");
        if (version == null || !version.isIntegralNumber() || version.asLong() != 1) {
            throw new NotAnEnvelope("envelope version " + version + " is not 1");
        }
        JsonNode source = doc.get("source");
        if (source == null || !source.isTextual() || !SOURCES.contains(source.asText())) {
            throw new NotAnEnvelope("envelope source " + source + " is not one of " + new TreeSet<>(SOURCES));
        }
        JsonNode received = doc.get("received_at");
        if (received == null || !received.isIntegralNumber() || !received.canConvertToLong() || received.asLong() <= 0) {
            throw new NotAnEnvelope("envelope received_at " + received + " is not epoch milliseconds");
        }
        JsonNode text = doc.get("payload");
        if (text == null || !text.isTextual()) {
            throw new NotAnEnvelope("envelope has no payload string");
        }
        JsonNode encoding = doc.get("payload_encoding");
        String encodingName = encoding == null || encoding.isNull() ? "utf8" : encoding.isTextual() ? encoding.asText() : encoding.toString();
        byte[] payload;
        if (encodingName.equals("utf8")) {
            payload = text.asText().getBytes(StandardCharsets.UTF_8);
        } else if (encodingName.equals("base64")) {
            try {
                payload = Base64.getDecoder().decode(text.asText());
            } catch (IllegalArgumentException error) {
                throw new NotAnEnvelope("envelope payload is not valid base64: " + error.getMessage());
            }
        } else {
            throw new NotAnEnvelope("payload_encoding " + encoding + " is not utf8 or base64");
        }
        for (int i = 0; i < TEXT_FIELDS.length; i++) {
            JsonNode field = doc.get(TEXT_FIELDS[i]);
            if (field != null && !field.isNull()) {
                if (!field.isTextual() || field.asText().isEmpty()) {
                    throw new NotAnEnvelope("envelope field '" + TEXT_FIELDS[i] + "' must be a non-empty string, got " + field);
                }
                row.setField(TEXT_COLUMNS[i], field.asText());
            }
        }
        Object format = row.getField(FORMAT);
        if (format != null && !FORMATS.contains(format)) {
            throw new NotAnEnvelope("envelope format '" + format + "' is not one of " + new TreeSet<>(FORMATS));
        }
        row.setField(RECEIVED_AT, received.asLong());
        row.setField(SOURCE, source.asText());
        row.setField(PAYLOAD, payload);
        row.setField(ENVELOPE, sortedWithoutPayload((ObjectNode) doc));
    }

    private static String sortedWithoutPayload(ObjectNode doc) {
        List<String> names = new ArrayList<>();
        doc.fieldNames().forEachRemaining(names::add);
        Collections.sort(names);
        ObjectNode sorted = JSON.createObjectNode();
        for (String name : names) {
            if (!name.equals("payload")) {
                sorted.set(name, doc.get(name));
            }
        }
        return sorted.toString();
    }

    private static String firstLine(String message) {
        if (message == null) {
            return "unreadable";
        }
        int end = message.indexOf('\n');
        return end < 0 ? message : message.substring(0, end);
    }
}
