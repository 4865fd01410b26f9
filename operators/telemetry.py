"""The standard telemetry record (the platform's data contract).

Required: ``device_id``, ``product_id``, ``device_ts`` (epoch ms UTC; ingest time when the
device sends none), ``ingest_ts``, ``metrics`` (name -> number | bool | string).
Optional: ``hub_id``, ``child_device_id``, ``hub_ts``, ``tenant``, ``units``, ``spec_id``,
``spec_version``, ``quality`` (data-quality issues such as a value outside its spec range:
``{"metric": "volt", "issue": "out_of_range", "value": 312.0, "min": 0, "max": 300}``).
Records are plain dicts so they serialize straight to JSON.
"""

from __future__ import annotations

import orjson

from operators.value_repr import bounded_repr

REQUIRED_FIELDS = ("device_id", "product_id", "device_ts", "ingest_ts", "metrics")
OPTIONAL_FIELDS = ("hub_id", "child_device_id", "hub_ts", "tenant", "units", "spec_id", "spec_version", "quality")
MetricValue = float | int | bool | str


def make_telemetry_record(
    *,
    device_id: str,
    product_id: str,
    device_ts: int,
    ingest_ts: int,
    metrics: dict[str, MetricValue],
    **optional: object,
) -> dict:
    """Builds a telemetry record, leaving out optional fields that are None.

    Args:
        device_id: The device the reading belongs to.
        product_id: The device's product.
        device_ts: Device time, epoch ms UTC.
        ingest_ts: Platform receive time, epoch ms UTC.
        metrics: Metric name to value.
        **optional: Any of the optional contract fields.

    Returns:
        The record as a dict.

    Raises:
        ValueError: for a field outside the contract.
    """
    record: dict = {
        "device_id": device_id,
        "product_id": product_id,
        "device_ts": device_ts,
        "ingest_ts": ingest_ts,
        "metrics": metrics,
    }
    for name, value in optional.items():
        if name not in OPTIONAL_FIELDS:
            raise ValueError(f"{bounded_repr(name)} is not a telemetry record field")
        if value is not None:
            record[name] = value
    return record


def telemetry_to_json(record: dict) -> str:
    """Serializes a record for ``iotlink.telemetry``."""
    return orjson.dumps(record).decode("utf-8")
