"""PostgreSQL: schema migrations and the batch-upsert sink contract.

The sink contract is the one every iotlink sink follows: ``write_batch`` (idempotent, so a
batch replayed after a restore changes nothing), ``flush`` and ``close``. Statements are
grouped per SQL text and sent with ``executemany`` in one transaction per batch: one round
trip per statement kind, not per row. A lost connection is re-opened with exponential
backoff and the whole batch is retried; nothing is dropped meanwhile (the caller blocks,
which Flink turns into backpressure).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from connectors.sink_retry import DEFAULT_GIVE_UP_AFTER_S, DEFAULT_MAX_BACKOFF_S, RetryingBatchWriter
from operators.spec_loading import DeviceInfo, SpecLoadError, load_device_registry_file
from operators.value_repr import masked_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql" / "postgres"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# One lock id for every iotlink process, so concurrent starts apply migrations once.
_MIGRATION_LOCK = 0x10711C


class MigrationError(RuntimeError):
    """A migration file is malformed, or an applied one was changed afterwards."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file of ``sql/postgres``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file text: an applied migration must never change."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def read_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory`` in version order.

    Raises:
        MigrationError: a file name outside ``NNN_name.sql`` or a version used twice.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNN_lower_case_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version:03d} is also {found[version].name}")
        found[version] = Migration(version, path.name, path.read_text())
    return [found[v] for v in sorted(found)]


def migrated_connection(url: str):
    """An autocommit connection to the platform database, its migrations applied first.

    Raises:
        MigrationError: see :func:`apply_migrations`.
    """
    import psycopg

    apply_migrations(url)
    return psycopg.connect(url, autocommit=True)


def apply_migrations(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies the migrations not yet recorded in ``schema_migrations``; idempotent.

    Args:
        url: ``postgresql://`` connection string.
        directory: Where the ``NNN_name.sql`` files are.

    Returns:
        The names of the migrations applied now (empty when the schema was current).

    Raises:
        MigrationError: an applied migration's file changed since, or a bad file name.
    """
    import psycopg

    migrations = read_migrations(directory)
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL, "
                "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {v: (n, c) for v, n, c in conn.execute("SELECT version, name, checksum FROM schema_migrations")}
            for migration in migrations:
                if migration.version in done:
                    name, checksum = done[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"{directory / migration.name}: already applied as {name} with different contents; "
                            "never edit an applied migration, add a new one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


class PostgresBatchWriter(RetryingBatchWriter):
    """Writes batches of ``(sql, params)`` statements in one transaction each.

    Every statement must be idempotent (an upsert keyed by deterministic ids, or a guarded
    update): a batch is retried whole after a connection failure (see
    :class:`connectors.sink_retry.RetryingBatchWriter` for the back-off), and a restored job
    replays what it wrote after its last checkpoint.

    Args:
        url: ``postgresql://`` connection string.
        max_backoff_s: Upper bound of the doubling reconnect delay (starts at 0.5 s).
        give_up_after_s: Raise when a batch has been failing this long (None: keep trying).
        sleep: Injected for tests.
    """

    label = "postgres"

    def __init__(self, url: str, max_backoff_s: float = DEFAULT_MAX_BACKOFF_S, give_up_after_s: float | None = DEFAULT_GIVE_UP_AFTER_S,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(url, max_backoff_s, give_up_after_s, sleep)
        self._conn = None

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=False, connect_timeout=10)
        return self._conn

    def write_batch(self, statements: Iterable[tuple[str, tuple]]) -> None:
        """Executes the statements in order, in one transaction, retrying on connection loss."""
        groups = group_statements(statements)
        if not groups:
            return

        def attempt():
            conn = self._connection()
            with conn.cursor() as cur:
                for sql, rows in groups:
                    cur.executemany(sql, rows)
            conn.commit()

        self._write_retrying(attempt, sum(len(rows) for _, rows in groups))

    def _transient(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)

    def _failed(self, exc: Exception) -> None:
        # Not a connection problem (a constraint, bad data): leave the connection usable.
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(Exception):
                self._conn.rollback()

    def flush(self) -> None:
        """Nothing is buffered here: every ``write_batch`` commits before it returns."""

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the connection is being discarded anyway
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Closes the connection."""
        self._drop()


def group_statements(statements: Iterable[tuple[str, tuple]]) -> list[tuple[str, list[tuple]]]:
    """Groups consecutive statements with the same SQL, keeping their order.

    Only consecutive runs are merged: an update that depends on an earlier insert of the
    same batch (a ticket closed right after it opened) must run after it.
    """
    groups: list[tuple[str, list[tuple]]] = []
    for sql, params in statements:
        if groups and groups[-1][0] == sql:
            groups[-1][1].append(params)
        else:
            groups.append((sql, [params]))
    return groups


def load_device_registry(location: str | Path | None) -> dict[str, DeviceInfo]:
    """Loads device -> product/tenant master data from a YAML file or a PostgreSQL table.

    YAML: see ``operators.spec_loading.load_device_registry_file``. PostgreSQL
    (``postgresql://...``): table ``devices`` with columns ``device_id``, ``product_id`` and,
    when present, ``tenant_id`` and ``expected_interval_s`` (the reporting period that
    communication quality counts missing messages against).

    Raises:
        SpecLoadError: with the file or URL (password hidden), field and reason.
    """
    if location is not None and str(location).startswith(("postgresql://", "postgres://")):
        return _devices_from_postgres(str(location))
    return load_device_registry_file(location)


def device_tenants(location: str | Path | None) -> dict[str, str | None]:
    """Device id -> tenant of the device registry (:func:`load_device_registry`)."""
    return {device: info.tenant for device, info in load_device_registry(location).items()}


def _devices_from_postgres(url: str) -> dict[str, DeviceInfo]:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'devices' AND table_schema = current_schema()"
                )
            }
            if not {"device_id", "product_id"} <= columns:
                raise SpecLoadError(
                    [f"{masked_url(url)}: devices: table needs columns device_id and product_id (has: {', '.join(sorted(columns)) or 'no table'})"]
                )
            tenant = "tenant_id" if "tenant_id" in columns else "NULL"
            interval = "expected_interval_s" if "expected_interval_s" in columns else "NULL"
            rows = conn.execute(f"SELECT device_id, product_id, {tenant}, {interval} FROM devices").fetchall()
    except psycopg.Error as exc:
        raise SpecLoadError([f"{masked_url(url)}: devices: cannot read the device registry: {str(exc).strip().splitlines()[0]}"]) from None
    return {
        str(d): DeviceInfo(str(p), None if t is None else str(t), None if i is None or i <= 0 else float(i)) for d, p, t, i in rows
    }
