"""The hot layer in MongoDB (or DocumentDB): what live dashboards read.

Collections (database from the URL path, default ``iotlink``):

- ``device_state``: one document per device (``_id`` = device id): the newest reading's
  metrics and times, the active alarms (``active_alarms.<alarm_id>``), quality flags. A
  reading only replaces the state when its device time is newer than the stored one, so
  out-of-order and replayed records never move a device back in time. The job hands over
  each device's newest reading as Flink SQL computes it (``sql/jobs/hot_layer.sql``), not
  every reading: every reading is in Kafka ``iotlink.telemetry`` and Iceberg ``telemetry``.
- ``alarms_active``: one document per active alarm (``_id`` = alarm id), inserted on RAISED,
  updated on SEVERITY_CHANGED / ACKNOWLEDGED / ESCALATED, removed on CLEARED / AUTO_RESOLVED.
- ``product_summary_1h`` / ``product_summary_1d``: product statistics per hour (from the
  hourly product windows) and per day (merged from that day's hours).

Every write is keyed by a deterministic ``_id`` and is an upsert, a guarded update or a delete,
so a batch written twice (retry, replay after a restore) leaves the same documents: the
exactly-once behaviour of the other sinks. Only plain CRUD and indexes are used, so the same
code serves MongoDB and DocumentDB (use ``retryWrites=false`` and TLS options in the URL for
DocumentDB; the writer retries whole batches itself).

The op builders are pure functions over the job's JSON records; :class:`MongoHotWriter` is
the sink (``write_batch`` / ``flush`` / ``close``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

import orjson

from connectors.sink_retry import DEFAULT_GIVE_UP_AFTER_S, DEFAULT_MAX_BACKOFF_S, RetryingBatchWriter
from operators.windows import merge_partials, partial_from_json, partial_to_json

DEFAULT_DATABASE = "iotlink"
# A device clock this far from the platform's receive time is flagged in device_state.quality.
CLOCK_SUSPECT_MS = 5 * 60 * 1000
CLOSING_EVENTS = frozenset({"CLEARED", "AUTO_RESOLVED"})


@dataclass(frozen=True, slots=True)
class MongoOp:
    """One write: ``kind`` is ``upsert`` (update_one with upsert), ``update`` (update_one),
    ``delete`` (delete_one) or ``daily`` (recompute one daily summary from its hours)."""

    collection: str
    kind: str
    filter: dict
    update: dict | None = None


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _guarded(doc_id: str, field: str, value: int) -> dict:
    """Matches the document while ``field`` is absent or below ``value``. (``$and`` of the id
    and the ``$or`` rather than both at the top level: same meaning, and the wire-protocol
    stand-in used in tests ignores the id next to a top-level ``$or``.)"""
    return {"$and": [{"_id": doc_id}, {"$or": [{field: {"$lt": value}}, {field: {"$exists": False}}]}]}


def telemetry_ops(records: list[dict]) -> list[MongoOp]:
    """Ops for telemetry records: per device one guarded state update with the batch's newest reading.

    The state update is two ops: an upsert that creates the document if needed (and cannot
    conflict), then an update that matches only while the stored reading is older.
    """
    ops: list[MongoOp] = []
    newest: dict[str, dict] = {}
    for record in records:
        have = newest.get(record["device_id"])
        if have is None or record["device_ts"] > have["device_ts"]:
            newest[record["device_id"]] = record
    for device_id, record in newest.items():
        ops.append(MongoOp("device_state", "upsert", {"_id": device_id}, {"$setOnInsert": {"device_id": device_id}}))
        ops.append(MongoOp("device_state", "update", _guarded(device_id, "last_device_ts", record["device_ts"]), {"$set": _state_fields(record)}))
    return ops


def _state_fields(record: dict) -> dict:
    skew = record["ingest_ts"] - record["device_ts"]
    fields = {
        "product_id": record["product_id"],
        "last_device_ts": record["device_ts"],
        "last_ingest_ts": record["ingest_ts"],
        "last_device_time": _dt(record["device_ts"]),
        "metrics": record["metrics"],
        "quality.clock_skew_ms": skew,
        "quality.clock_suspect": abs(skew) > CLOCK_SUSPECT_MS,
    }
    for name in ("units", "hub_id", "tenant", "spec_id", "spec_version"):
        if record.get(name) is not None:
            fields[name] = record[name]
    return fields


def dead_letter_ops(letters: list[dict]) -> list[MongoOp]:
    """Ops for dead letters of known devices: the newest rejection per device as a quality flag."""
    newest: dict[str, dict] = {}
    for letter in letters:
        device_id = letter.get("device_id")
        if not device_id:
            continue
        have = newest.get(device_id)
        if have is None or letter["failed_at"] > have["failed_at"]:
            newest[device_id] = letter
    ops = []
    for device_id, letter in newest.items():
        rejection = {"at": letter["failed_at"], "reason_code": letter["reason_code"], "reason": letter["reason"], "stage": letter.get("stage")}
        ops.append(MongoOp("device_state", "upsert", {"_id": device_id}, {"$setOnInsert": {"device_id": device_id}}))
        guard = _guarded(device_id, "quality.last_rejection.at", letter["failed_at"])
        ops.append(MongoOp("device_state", "update", guard, {"$set": {"quality.last_rejection": rejection}}))
    return ops


def alarm_ops(events: list[dict]) -> list[MongoOp]:
    """Ops for alarm events, in their order: ``alarms_active`` and ``device_state.active_alarms``."""
    ops: list[MongoOp] = []
    for event in events:
        alarm_id, device_id, kind = event.get("alarm_id"), event["device_id"], event["event"]
        if not alarm_id:
            continue
        if kind == "RAISED":
            # What the alarm was raised with never changes; what later events change is $set.
            raised = {
                "device_id": device_id, "product_id": event.get("product_id"), "rule_id": event["rule_id"],
                "started_ts": event.get("started_ts") or event["device_ts"], "raised_ts": event["device_ts"],
                "raised_time": _dt(event["device_ts"]),
            }
            current = {
                "rule_version": event.get("rule_version"), "severity": event["severity"], "route": event.get("route"),
                "values": event.get("values"), "acknowledged": False, "escalated": False, "last_event": kind,
                "last_event_ts": event["device_ts"],
            }
            ops.append(MongoOp("alarms_active", "upsert", {"_id": alarm_id}, {"$setOnInsert": raised, "$set": current}))
            doc = raised
            summary = {"rule_id": event["rule_id"], "severity": event["severity"], "since_ts": doc["started_ts"]}
            ops.append(MongoOp("device_state", "upsert", {"_id": device_id},
                               {"$set": {f"active_alarms.{alarm_id}": summary}, "$setOnInsert": {"device_id": device_id}}))
        elif kind in CLOSING_EVENTS:
            ops.append(MongoOp("alarms_active", "delete", {"_id": alarm_id}))
            ops.append(MongoOp("device_state", "update", {"_id": device_id}, {"$unset": {f"active_alarms.{alarm_id}": ""}}))
        else:
            change: dict = {"last_event": kind, "last_event_ts": event["device_ts"]}
            if kind == "SEVERITY_CHANGED":
                change["severity"] = event["severity"]
                ops.append(MongoOp("device_state", "update", {"_id": device_id, f"active_alarms.{alarm_id}": {"$exists": True}},
                                   {"$set": {f"active_alarms.{alarm_id}.severity": event["severity"]}}))
            elif kind == "ACKNOWLEDGED":
                change["acknowledged"] = True
                change["acknowledged_by"] = (event.get("values") or {}).get("by")
            elif kind == "ESCALATED":
                change["escalated"] = True
            ops.append(MongoOp("alarms_active", "update", {"_id": alarm_id}, {"$set": change}))
    return ops


def day_of(epoch_ms: int) -> str:
    """The UTC day of an instant, ``YYYY-MM-DD``."""
    return _dt(epoch_ms).strftime("%Y-%m-%d")


def summary_ops(rows: list[dict]) -> list[MongoOp]:
    """Ops for hourly product window rows: the hour's summary, the hour inside its day's
    document (statistics and the mergeable partial), then the day's totals recomputed."""
    ops: list[MongoOp] = []
    days: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.get("scope") != "product" or row.get("size") != "1h" or "partial" not in row:
            continue
        product_id, start = row["key"], row["start"]
        partial = partial_from_json(row["partial"])
        # Per metric (dotted paths): a row may carry one metric of the hour, the others stay.
        metrics = {name: stats.result() for name, stats in sorted(partial.items())}
        hour = {"product_id": product_id, "window_start": _dt(start), "window_start_ts": start,
                **{f"metrics.{name}": stats for name, stats in metrics.items()}}
        ops.append(MongoOp("product_summary_1h", "upsert", {"_id": f"{product_id}|{start}"}, {"$set": hour}))
        day = day_of(start)
        day_id = f"{product_id}|{day}"
        hour_key = _dt(start).strftime("%H")
        in_day = {f"hours.{hour_key}.metrics.{name}": stats for name, stats in metrics.items()}
        in_day.update({f"hours.{hour_key}.partial.{name}": stats for name, stats in row["partial"].items()})
        ops.append(MongoOp("product_summary_1d", "upsert", {"_id": day_id}, {
            "$set": {"product_id": product_id, "day": day, **in_day},
        }))
        days[day_id] = (product_id, day)
    ops.extend(MongoOp("product_summary_1d", "daily", {"_id": day_id}) for day_id in days)
    return ops


def daily_totals(day_doc: dict) -> dict:
    """A day's statistics per metric, merged from the partials of its hours."""
    hours = day_doc.get("hours") or {}
    merged = merge_partials(partial_from_json(hours[h]["partial"]) for h in sorted(hours))
    return {
        "metrics": {name: stats.result() for name, stats in sorted(merged.items())},
        "hours_reported": len(hours),
        "partial": partial_to_json(merged),
    }


def hot_layer_ops(values: list[str]) -> list[MongoOp]:
    """The ops for a batch of the job's JSON records, whatever their kind (telemetry records,
    dead letters, alarm events, window rows), keeping each kind's order."""
    telemetry, letters, events, rows = [], [], [], []
    for value in values:
        doc = orjson.loads(value)
        if "event" in doc and "alarm_id" in doc:
            events.append(doc)
        elif "reason_code" in doc:
            letters.append(doc)
        elif "scope" in doc and "partial" in doc:
            rows.append(doc)
        elif "metrics" in doc and "device_ts" in doc:
            telemetry.append(doc)
    # Telemetry first: a device's state document exists before its alarms are attached.
    return telemetry_ops(telemetry) + dead_letter_ops(letters) + alarm_ops(events) + summary_ops(rows)


# collection -> list of (keys, options) for create_index
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    "device_state": [([("product_id", 1)], {}), ([("last_device_ts", -1)], {})],
    "alarms_active": [([("device_id", 1)], {}), ([("severity", 1), ("raised_ts", -1)], {}), ([("product_id", 1)], {})],
    "product_summary_1h": [([("product_id", 1), ("window_start", -1)], {})],
    "product_summary_1d": [([("product_id", 1), ("day", -1)], {})],
}


def tenant_filter(collection: str, query: dict, tenant: str, tenant_devices: Iterable[str]) -> dict:
    """A find filter that keeps a query to one tenant's documents (``iotlink mongo find --tenant``).

    ``device_state`` documents carry the reading's ``tenant``; ``alarms_active`` ones are kept to
    the tenant's devices (``tenant_devices``: the ids of its ``device_state`` documents).

    Raises:
        ValueError: the product summaries, which sum every tenant's devices.
    """
    if collection == "device_state":
        scope: dict = {"tenant": tenant}
    elif collection == "alarms_active":
        scope = {"device_id": {"$in": sorted(tenant_devices)}}
    else:
        raise ValueError(f"{collection} sums the devices of every tenant: a tenant cannot read it")
    return {"$and": [query, scope]} if query else scope


def database_name(url: str) -> str:
    """The database a ``mongodb://`` URL names in its path (default ``iotlink``)."""
    path = urlparse(url).path.strip("/")
    return path or DEFAULT_DATABASE


def check_mongo_url(url: str) -> str:
    """Validates a MongoDB URL's shape (scheme, host) without connecting.

    Raises:
        ValueError: naming what is wrong.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("mongodb", "mongodb+srv"):
        raise ValueError("expected mongodb://[user:password@]host[:port][/database][?options] or mongodb+srv://…")
    if not parsed.netloc or not parsed.hostname:
        raise ValueError("the MongoDB URL names no host")
    return url


def open_database(url: str, timeout_ms: int = 10_000):
    """A pymongo database handle for the URL (its path names the database)."""
    import pymongo

    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, tz_aware=True)
    return client[database_name(url)]


def init_collections(db) -> dict[str, str]:
    """Creates the hot-layer collections and their indexes (idempotent).

    Returns:
        Collection -> ``created`` or ``exists``.
    """
    existing = set(db.list_collection_names())
    outcome = {}
    for name, indexes in INDEXES.items():
        if name not in existing:
            db.create_collection(name)
        outcome[name] = "exists" if name in existing else "created"
        for keys, options in indexes:
            db[name].create_index(keys, **options)
    return outcome


class MongoHotWriter(RetryingBatchWriter):
    """Writes batches of :class:`MongoOp` to the hot layer, retrying whole batches while the
    server is unreachable (every op is idempotent, so a batch written twice is harmless).

    Args:
        url: ``mongodb://`` URL; its path names the database.
        max_backoff_s: Upper bound of the doubling retry delay (starts at 0.5 s).
        give_up_after_s: Raise when a batch has been failing this long (the job backs up
            meanwhile and loses nothing; then it restarts from its last checkpoint).
        sleep: Injected for tests.
    """

    label = "mongo"

    def __init__(self, url: str, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S, give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(url, max_backoff_s, give_up_after_s, sleep)
        self._db = None

    def _database(self):
        if self._db is None:
            self._db = open_database(self.url)
        return self._db

    def write_batch(self, ops: Iterable[MongoOp]) -> None:
        """Writes the ops, grouped into one ordered bulk write per run of the same collection."""
        ops = list(ops)
        if ops:
            self._write_retrying(lambda: self._write(ops), len(ops))

    def _transient(self, exc: Exception) -> bool:
        from pymongo.errors import ConnectionFailure, OperationFailure

        if isinstance(exc, ConnectionFailure):
            return True
        # A server that is not primary, shutting down, ...: worth retrying too.
        labels = getattr(exc, "_error_labels", None) or set()
        return isinstance(exc, OperationFailure) and (
            "RetryableWriteError" in labels or getattr(exc, "code", None) in {91, 189, 10107, 11600, 11602, 13435, 13436})

    def _write(self, ops: list[MongoOp]) -> None:
        from pymongo import DeleteOne, UpdateOne

        db = self._database()
        run: list = []
        run_collection = None
        for op in ops:
            if op.kind == "daily" or op.collection != run_collection:
                if run:
                    db[run_collection].bulk_write(run, ordered=True)
                run, run_collection = [], op.collection
            if op.kind == "daily":
                doc = db[op.collection].find_one(op.filter)
                if doc is not None:
                    db[op.collection].update_one(op.filter, {"$set": daily_totals(doc)})
                run_collection = None
            elif op.kind == "delete":
                run.append(DeleteOne(op.filter))
            else:
                run.append(UpdateOne(op.filter, op.update, upsert=op.kind == "upsert"))
        if run:
            db[run_collection].bulk_write(run, ordered=True)

    def flush(self) -> None:
        """Nothing is buffered here: every ``write_batch`` is written before it returns."""

    def _drop(self) -> None:
        if self._db is not None:
            self._db.client.close()
        self._db = None

    def close(self) -> None:
        """Closes the client."""
        self._drop()

