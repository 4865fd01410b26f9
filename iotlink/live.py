"""Live counters read from the Flink REST API (the same numbers the web UI shows)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

# Flink metric names end with "<group>.<name>"; the job counts in group "iotlink".
COUNTERS = {
    "records_in": "iotlink.records_in",
    "decoded": "iotlink.decoded",
    "dlq": "iotlink.rejected",
    "late": "iotlink.late",
    "duplicates": "iotlink.duplicates_dropped",
    "alarms": "iotlink.alarms_raised",
    "rule_errors": "iotlink.rule_errors",
}


class FlinkRest:
    """A small client for the Flink REST API."""

    def __init__(self, base_url: str, timeout_s: float = 3.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, path: str):
        """GETs a JSON document."""
        with urllib.request.urlopen(self.base_url + path, timeout=self.timeout_s) as resp:
            return json.load(resp)

    def request(self, method: str, path: str, body: dict | None = None):
        """Sends a request with an optional JSON body and returns the JSON answer (or None)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def running_job(self) -> str | None:
        """The id of the first RUNNING job, if any."""
        try:
            jobs = self.get("/jobs/overview")["jobs"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return None
        running = [j for j in jobs if j["state"] == "RUNNING"]
        return running[0]["jid"] if running else None

    def job_counters(self, job_id: str) -> dict[str, int]:
        """Sums the job's iotlink counters over all vertices and subtasks."""
        totals = self.metric_totals(job_id, "iotlink.")
        return {key: totals.get(name, 0) for key, name in COUNTERS.items()}

    def metric_totals(self, job_id: str, contains: str) -> dict[str, int]:
        """Sums every counter whose name contains ``contains`` over vertices and subtasks.

        Keys are the names from the ``iotlink`` group on, e.g. ``iotlink.spec.product_a.decoded``.
        """
        totals: dict[str, int] = {}
        job = self.get(f"/jobs/{job_id}")
        for vertex in job.get("vertices", []):
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            wanted = [m["id"] for m in self.get(base) if contains in m["id"]]
            for start in range(0, len(wanted), 40):
                # Ids carry operator names ("+", "/", spaces): each one URL-encoded, commas between.
                ids = ",".join(urllib.parse.quote(m, safe="") for m in wanted[start : start + 40])
                for metric in self.get(base + "?get=" + ids + "&agg=sum"):
                    name = metric["id"]
                    # The group is the last "iotlink." in the id (operator names may hold topic names).
                    key = name[name.rindex("iotlink.") :] if "iotlink." in name else name
                    totals[key] = totals.get(key, 0) + int(float(metric.get("sum", 0)))
        return totals

    def checkpoints(self, job_id: str) -> dict:
        """Checkpoint statistics of a job."""
        return self.get(f"/jobs/{job_id}/checkpoints")

    def cancel(self, job_id: str) -> None:
        """Cancels a job."""
        self.request("PATCH", f"/jobs/{job_id}?mode=cancel")


@dataclass
class CounterLine:
    """Formats one progress line with per-second rates.

    Flink's REST API refreshes metrics every few seconds, so a counter can read the same twice
    while records flow: the rate is measured between readings that changed, and a reading that
    did not change keeps the last rate until it has stood still for ``idle_after_s``.
    """

    started: float = field(default_factory=time.monotonic)
    idle_after_s: float = 12.0
    _last: tuple[float, int] | None = None
    _rate: float = 0.0

    def render(self, counters: dict[str, int], completed_checkpoints: int | None, sent: int | None = None,
               now: float | None = None) -> str:
        """Returns the line for the current counters (``now``: monotonic seconds, for tests)."""
        now = time.monotonic() if now is None else now
        records_in = counters["records_in"]
        if self._last is None:
            self._last = (now, records_in)
        elif records_in != self._last[1] and now > self._last[0]:
            self._rate = (records_in - self._last[1]) / (now - self._last[0])
            self._last = (now, records_in)
        elif now - self._last[0] >= self.idle_after_s:
            self._rate = 0.0
        rate = self._rate
        parts = [f"[{now - self.started:6.0f}s]"]
        if sent is not None:
            parts.append(f"sent {sent:>8}")
        parts += [
            f"in {counters['records_in']:>8}",
            f"decoded {counters['decoded']:>8}",
            f"dlq {counters['dlq']:>6}",
            f"dup {counters['duplicates']:>5}",
            f"late {counters['late']:>5}",
            f"alarms {counters['alarms']:>4}",
        ]
        if counters.get("rule_errors"):
            parts.append(f"rule errors {counters['rule_errors']} (iotlink rules status)")
        parts.append(f"{rate:8.0f} rec/s")
        if completed_checkpoints is not None:
            parts.append(f"checkpoints {completed_checkpoints}")
        return "  ".join(parts)
