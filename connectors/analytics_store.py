"""Customer analytics in PostgreSQL (``sql/postgres/006_customer_analytics.sql``): device moves,
the daily aggregates' bookkeeping, formula versions and their daily results."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime

from psycopg.types.json import Jsonb

from operators.formulas import DayGroup, Evaluation, Formula, FormulaSpec, StoredResult, daily_inputs, evaluate_formula


class AnalyticsError(ValueError):
    """A request the database refuses (unknown device or site, a move before the current stay)."""


def move_device(conn, device_id: str, site_id: str | None, at_ms: int | None = None) -> tuple[str | None, int]:
    """Moves a device to a site (``None``: to no site) at a time, recording the stay in
    ``device_assignments`` (the table's trigger does the bookkeeping).

    Args:
        conn: An autocommit connection.
        device_id: A registered device.
        site_id: A known site, or None.
        at_ms: When the move happened (epoch ms); None: now. Must be after the current stay began.

    Returns:
        (the site it was at, the move's time in epoch ms).

    Raises:
        AnalyticsError: unknown device or site, or a time not after the current stay's start.
    """
    import psycopg

    with conn.transaction():
        row = conn.execute("SELECT site_id FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)).fetchone()
        if row is None:
            raise AnalyticsError(f"device {device_id!r} is not in the registry (devices)")
        if site_id is not None and conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (site_id,)).fetchone() is None:
            raise AnalyticsError(f"site {site_id!r} does not exist (sites)")
        if at_ms is not None:
            conn.execute("SELECT set_config('iotlink.assigned_at_ms', %s, true)", (str(int(at_ms)),))
        try:
            conn.execute("UPDATE devices SET site_id = %s WHERE device_id = %s", (site_id, device_id))
        except psycopg.errors.CheckViolation as exc:
            raise AnalyticsError(exc.diag.message_primary or str(exc)) from None
        moved = conn.execute(
            "SELECT valid_from_ms FROM device_assignments WHERE device_id = %s AND valid_to_ms IS NULL", (device_id,)
        ).fetchone()
    return row[0], moved[0] if moved else int(at_ms or 0)


def assignment_history(conn, device_id: str) -> list[tuple[str | None, str | None, int, int | None]]:
    """A device's stays, oldest first: (site, its customer, from ms, to ms or None)."""
    return conn.execute(
        "SELECT a.site_id, s.customer_id, a.valid_from_ms, a.valid_to_ms FROM device_assignments a "
        "LEFT JOIN sites s ON s.site_id = a.site_id WHERE a.device_id = %s ORDER BY a.valid_from_ms",
        (device_id,),
    ).fetchall()


def database_now(conn) -> datetime:
    """The database's clock (what ``updated_at`` and ``computed_at`` are compared with)."""
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def delete_untouched_days(conn, first: date, last: date, before: datetime) -> int:
    """Deletes daily aggregate rows of ``first``..``last`` not written since ``before``: what a
    recomputation of those days no longer produces (e.g. a customer's day after its device was
    found to have been elsewhere). Returns the number of rows deleted."""
    return conn.execute(
        "DELETE FROM customer_product_daily WHERE day BETWEEN %s AND %s AND updated_at < %s", (first, last, before)
    ).rowcount


def push_formulas(conn, specs: list[FormulaSpec]) -> list[tuple[str, int, str]]:
    """Registers each formula as a new version when it differs from its live one.

    Returns:
        (formula id, version, ``new`` | ``changed`` | ``unchanged``) per formula.
    """
    outcome = []
    with conn.transaction():
        conn.execute("LOCK TABLE formulas IN SHARE ROW EXCLUSIVE MODE")  # versions are numbered one at a time
        live = live_formulas(conn)
        for spec in specs:
            current = live.get(spec.id)
            if current is not None and current.spec.same_definition(spec):
                outcome.append((spec.id, current.version, "unchanged"))
                continue
            version = 1 if current is None else current.version + 1
            conn.execute(
                "INSERT INTO formulas (formula_id, version, customer_id, product_id, expression, params, unit, description) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (spec.id, version, spec.customer, spec.product, spec.expression, Jsonb(spec.params), spec.unit, spec.description),
            )
            outcome.append((spec.id, version, "new" if current is None else "changed"))
    return outcome


def _formula(row) -> Formula:
    formula_id, version, customer, product, expression, params, unit, description = row
    spec = FormulaSpec(id=formula_id, expression=expression, customer=customer, product=product, params=params or {},
                       unit=unit, description=description)
    return Formula(spec, version)


_FORMULA_COLUMNS = "formula_id, version, customer_id, product_id, expression, params, unit, description"


def formula_versions(conn) -> dict[tuple[str, int], Formula]:
    """Every registered version: (formula id, version) -> formula."""
    rows = conn.execute(f"SELECT {_FORMULA_COLUMNS} FROM formulas").fetchall()
    return {(f.formula_id, f.version): f for f in map(_formula, rows)}


def live_formulas(conn) -> dict[str, Formula]:
    """Each formula's highest version: formula id -> formula."""
    rows = conn.execute(
        f"SELECT DISTINCT ON (formula_id) {_FORMULA_COLUMNS} FROM formulas ORDER BY formula_id, version DESC"
    ).fetchall()
    return {f.formula_id: f for f in map(_formula, rows)}


def formula_listing(conn) -> list[dict]:
    """Each live formula with its scope, the days computed and how many of them are on an
    older version (recomputed only when asked: ``iotlink formulas evaluate --since``)."""
    rows = conn.execute(
        "SELECT f.formula_id, f.version, f.customer_id, f.product_id, f.expression, f.unit, f.pushed_at, "
        "count(r.day), count(r.day) FILTER (WHERE r.formula_version < f.version), count(r.day) FILTER (WHERE r.error IS NOT NULL) "
        "FROM (SELECT DISTINCT ON (formula_id) * FROM formulas ORDER BY formula_id, version DESC) f "
        "LEFT JOIN customer_analysis_daily r ON r.formula_id = f.formula_id GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1"
    ).fetchall()
    keys = ("formula_id", "version", "customer_id", "product_id", "expression", "unit", "pushed_at", "days", "older_version_days", "error_days")
    return [dict(zip(keys, row, strict=True)) | {"pushed_at": row[6].isoformat()} for row in rows]


def day_groups(conn) -> list[DayGroup]:
    """Every customer, product and day with daily aggregates, with when it last changed."""
    rows = conn.execute(
        "SELECT customer_id, product_id, day, max(updated_at) FROM customer_product_daily GROUP BY 1, 2, 3 ORDER BY 3, 1, 2"
    ).fetchall()
    return [DayGroup(*row) for row in rows]


def stored_results(conn) -> dict[tuple[str, str, date, str], StoredResult]:
    """What ``customer_analysis_daily`` holds: (customer, product, day, formula id) -> result."""
    rows = conn.execute("SELECT customer_id, product_id, day, formula_id, formula_version, computed_at FROM customer_analysis_daily")
    return {(c, p, d, f): StoredResult(v, t) for c, p, d, f, v, t in rows.fetchall()}


def evaluate_days(conn, plan: list[Evaluation]) -> dict[str, int]:
    """Evaluates the planned formulas over their days' aggregates and upserts the results.

    Each day's aggregates are read once, in the transaction that writes its results; a result's
    ``computed_at`` is the time just before the read, so a row changed after it is seen as newer.

    Returns:
        Counts: ``evaluated``, ``errors``, and per reason (``new``, ``data changed``, ``asked``).
    """
    by_day: dict[DayGroup, list[Evaluation]] = defaultdict(list)
    for evaluation in plan:
        by_day[evaluation.group].append(evaluation)
    counts: dict[str, int] = defaultdict(int)
    columns = ("metric", "count", "sum", "min", "max", "avg", "devices", "sites")
    for group, evaluations in by_day.items():
        with conn.transaction():
            read_at = database_now(conn)
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM customer_product_daily WHERE customer_id = %s AND product_id = %s AND day = %s",
                (group.customer_id, group.product_id, group.day),
            ).fetchall()
            inputs = daily_inputs(dict(zip(columns, row, strict=True)) for row in rows)
            for evaluation in evaluations:
                outcome = evaluate_formula(evaluation.formula.spec, inputs)
                conn.execute(
                    "INSERT INTO customer_analysis_daily "
                    "(customer_id, product_id, day, formula_id, formula_version, inputs, result, error, computed_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (customer_id, product_id, day, formula_id) DO UPDATE SET formula_version = EXCLUDED.formula_version, "
                    "inputs = EXCLUDED.inputs, result = EXCLUDED.result, error = EXCLUDED.error, computed_at = EXCLUDED.computed_at",
                    (group.customer_id, group.product_id, group.day, evaluation.formula.formula_id, evaluation.formula.version,
                     Jsonb(outcome.inputs), outcome.result, outcome.error, read_at),
                )
                counts["evaluated"] += 1
                counts["errors"] += outcome.error is not None
                counts[evaluation.reason] += 1
    return dict(counts)
