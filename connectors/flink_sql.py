"""The Flink SQL catalog of the platform: DDL files in ``sql/flink/`` rendered with the settings.

The DDL files hold placeholders such as ``${bootstrap_servers}`` or ``${scan_telemetry}``;
:func:`render_catalog` fills them from the same :class:`jobs.config.Settings` the jobs use,
so no host, topic or password is ever written into a DDL file by hand. Rendering is pure (no
network).

Placeholders (every one a DDL file may use is in :data:`PLACEHOLDERS`):

- ``${bootstrap_servers}``: Kafka bootstrap servers.
- ``${topic_<name>}``: the topic names of :class:`jobs.config.Topics` (raw, telemetry, alarms, dlq, notifications).
- ``${scan_<name>}``: the Kafka table options that say where a read starts and, for bounded
  reads, where it ends (``scan.startup.mode``, ``scan.bounded.mode = latest-offset``, ...).
- ``${jdbc_options}``: ``'url' = 'jdbc:postgresql://…'`` plus the credentials of ``postgres_url``.
- ``${iceberg_options}``: the Iceberg catalog of ``iceberg_catalog`` / ``iceberg_warehouse`` for
  Iceberg's Flink connector (:func:`connectors.iceberg.flink_catalog_options`).

Placeholders named ``*_options`` or ``scan_*`` are lists of options and go in as they are; every
other value is inserted as SQL string contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from connectors.iceberg import flink_catalog_options
from operators.value_repr import masked_url

CATALOG_DIR = Path(__file__).resolve().parent.parent / "sql" / "flink"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "sql" / "examples"
KAFKA_TABLE_TOPICS = ("raw", "telemetry", "alarms", "dlq", "notifications")
PLACEHOLDERS = frozenset(
    {"bootstrap_servers", "isolation_level", "jdbc_options", "iceberg_options"}
    | {f"topic_{t}" for t in KAFKA_TABLE_TOPICS} | {f"scan_{t}" for t in KAFKA_TABLE_TOPICS}
)
STARTUP_MODES = {"earliest": "earliest-offset", "latest": "latest-offset", "group": "group-offsets"}
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
DEFAULT_GROUP_ID = "iotlink-sql"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class CatalogError(ValueError):
    """A DDL file cannot be rendered (unknown placeholder); the message names the file."""


@dataclass(frozen=True)
class KafkaScan:
    """Where the Kafka tables start and stop reading.

    Attributes:
        startup: ``earliest`` (whole topic), ``latest`` (only new records) or ``group``
            (the consumer group's committed offsets, else earliest).
        group_id: Consumer group of the reads.
        bounded: Every table stops at each partition's end when the query starts
            (``scan.bounded.mode = latest-offset``: the last stable offset under read_committed),
            so queries finish.
        isolation: ``read_committed`` (only committed transactions: the jobs write their
            topics exactly-once) or ``read_uncommitted`` (also what open transactions hold).
    """

    startup: str = "earliest"
    group_id: str = DEFAULT_GROUP_ID
    bounded: bool = False
    isolation: str = "read_committed"

    def __post_init__(self) -> None:
        if self.startup not in STARTUP_MODES:
            raise ValueError(f"startup mode must be one of {', '.join(STARTUP_MODES)}, got {self.startup!r}")
        if self.isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_LEVELS)}, got {self.isolation!r}")


def sql_string(value: str) -> str:
    """A SQL string literal: single quotes, embedded quotes doubled."""
    return "'" + str(value).replace("'", "''") + "'"


def option_lines(options: Mapping[str, str]) -> str:
    return ",\n  ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in options.items())


def jdbc_options(postgres_url: str) -> dict[str, str]:
    """The JDBC connector options for a ``postgresql://user[:password]@host[:port]/db[?params]`` URL.

    Query parameters are kept (the PostgreSQL JDBC driver understands ``options``, ``sslmode``,
    ``currentSchema`` …). The user goes into the JDBC URL when there is no password, because the
    connector wants ``username`` and ``password`` either both or neither.

    Returns:
        ``url`` and, when the URL has a password, ``username`` and ``password``.
    """
    parts = urlsplit(postgres_url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ValueError(f"expected postgresql://user[:password]@host[:port]/database, got {masked_url(postgres_url)!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else host
    params = parse_qsl(parts.query, keep_blank_values=True)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    options: dict[str, str] = {}
    if user and password is None:
        params = [("user", user), *params]
    query = f"?{urlencode(params)}" if params else ""
    options["url"] = f"jdbc:postgresql://{netloc}{parts.path or '/'}{query}"
    if user and password is not None:
        options["username"] = user
        options["password"] = password
    return options


def kafka_scan_options(scan: KafkaScan) -> dict[str, str]:
    """The Kafka table options for where a read starts and ends."""
    options = {
        "scan.startup.mode": STARTUP_MODES[scan.startup],
        "properties.group.id": scan.group_id,
    }
    if scan.startup == "group":
        options["properties.auto.offset.reset"] = "earliest"
    if scan.bounded:
        options["scan.bounded.mode"] = "latest-offset"
    return options


def catalog_values(settings, scan: KafkaScan | None = None) -> dict[str, str | None]:
    """The value of every placeholder for these settings (None: not configured).

    Args:
        settings: Platform settings (:class:`jobs.config.Settings`).
        scan: Where Kafka reads start and stop (default: earliest, unbounded).

    Returns:
        Placeholder name -> rendered text; ``jdbc_options`` is None without ``postgres_url``,
        ``iceberg_options`` without ``iceberg_catalog``.
    """
    scan = scan or KafkaScan()
    topics = settings.topics
    values: dict[str, str | None] = {"bootstrap_servers": settings.bootstrap_servers, "isolation_level": scan.isolation}
    for name in KAFKA_TABLE_TOPICS:
        topic = getattr(topics, name)
        values[f"topic_{name}"] = topic
        values[f"scan_{name}"] = option_lines(kafka_scan_options(scan))
    values["jdbc_options"] = option_lines(jdbc_options(settings.postgres_url)) if settings.postgres_url else None
    values["iceberg_options"] = (
        option_lines(flink_catalog_options(settings.iceberg_catalog, settings.iceberg_warehouse)) if settings.iceberg_catalog else None
    )
    return values


def placeholders_in(text: str) -> set[str]:
    """The placeholder names a DDL text uses (comments included: they are rendered too)."""
    return set(_PLACEHOLDER.findall(text))


def render(text: str, values: Mapping[str, str | None], source: str = "<text>") -> str:
    """Replaces every ``${name}`` in ``text``.

    Option lists (``*_options``, ``scan_*``) go in as they are (rendered by :func:`option_lines`);
    every other value is inserted as SQL string contents: quotes doubled, so a topic or server
    name cannot end the literal.

    Raises:
        CatalogError: for a placeholder that has no value, naming ``source`` and the placeholder.
    """

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            raise CatalogError(f"{source}: placeholder ${{{name}}} has no value (known: {', '.join(sorted(PLACEHOLDERS))})")
        if name.endswith("_options") or name.startswith("scan_"):
            return value
        return value.replace("'", "''")

    return _PLACEHOLDER.sub(substitute, text)


@dataclass(frozen=True)
class RenderedCatalog:
    """The rendered DDL files, and the files left out because their settings are missing."""

    files: list[tuple[Path, str]]
    skipped: list[tuple[Path, str]]

    def text(self) -> str:
        """The whole catalog as one SQL script (the SQL client's init file)."""
        return "\n".join(f"-- {path.name}\n{sql}" for path, sql in self.files)


# The command-line option that configures what a placeholder needs.
_SETTING_OPTIONS = {"jdbc_options": "--postgres-url", "iceberg_options": "--iceberg-catalog"}


def catalog_files(directory: Path = CATALOG_DIR) -> list[Path]:
    """The DDL files of the catalog, in the order they must run."""
    return sorted(directory.glob("*.sql"))


def render_catalog(settings, scan: KafkaScan | None = None, directory: Path = CATALOG_DIR, tenant: str | None = None) -> RenderedCatalog:
    """Renders every DDL file of ``directory`` with ``settings``.

    A file that needs a setting which is not configured (the PostgreSQL tables without
    ``postgres_url``, the Iceberg catalog without ``iceberg_catalog``) is skipped with the
    reason; an unknown placeholder is an error. For a ``tenant`` only the PostgreSQL tables are
    rendered (row-level security scopes them): Kafka topics and Iceberg tables hold every
    tenant's records.

    Raises:
        CatalogError: a file uses a placeholder that is not in :data:`PLACEHOLDERS`.
    """
    values = catalog_values(settings, scan)
    rendered, skipped = [], []
    for path in catalog_files(directory):
        text = path.read_text(encoding="utf-8")
        used = placeholders_in(text)
        unknown = used - PLACEHOLDERS
        if unknown:
            raise CatalogError(f"{path}: unknown placeholder(s) {', '.join('${' + u + '}' for u in sorted(unknown))}")
        if tenant is not None and used - {"jdbc_options"}:
            skipped.append((path, f"not scoped to tenant {tenant}: these tables hold every tenant's records"))
            continue
        missing = sorted(name for name in used if values.get(name) is None)
        if missing:
            options = sorted({_SETTING_OPTIONS.get(name, "--embedded") for name in missing})
            skipped.append((path, f"not configured: {', '.join(missing)} (give {' / '.join(options)} or --embedded)"))
            continue
        rendered.append((path, render(text, values, str(path))))
    return RenderedCatalog(rendered, skipped)


def split_statements(text: str) -> list[str]:
    """Splits a SQL script at the semicolons that end statements.

    Semicolons inside string literals, quoted identifiers and comments do not split; comments
    are kept with the statement they precede, and statements that are only comments are dropped.
    """
    statements, current, i, n = [], [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'`\"":
            end = i + 1
            while end < n:
                if text[end] == ch:
                    if end + 1 < n and text[end + 1] == ch:  # a doubled quote is part of the literal
                        end += 2
                        continue
                    break
                end += 1
            current.append(text[i : end + 1])
            i = end + 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            current.append(text[i:end])
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            current.append(text[i:end])
            i = end
        elif ch == ";":
            statements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    return bool(without_comments(statement))


def without_comments(statement: str) -> str:
    """A statement of :func:`split_statements` without its leading and trailing comment lines."""
    lines = statement.strip().splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    text = "\n".join(lines).strip()
    while text.startswith("/*") and "*/" in text:
        text = text[text.index("*/") + 2 :].strip()
    return text

