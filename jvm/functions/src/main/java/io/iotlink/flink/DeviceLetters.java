package io.iotlink.flink;

import org.apache.flink.api.common.functions.FilterFunction;

/**
 * Keeps the dead letters that name a device (the ones {@link RejectionRows} counts for the
 * device's communication quality), for the hot layer's per-device quality documents.
 */
public final class DeviceLetters implements FilterFunction<String> {

    @Override
    public boolean filter(String letter) {
        return RejectionRows.namesDevice(RejectionRows.parse(letter));
    }
}
