"""A PostgreSQL schema of its own per test, on the shared embedded server."""

import psycopg


def schema_with(settings, schema, *statements):
    """A fresh schema holding what ``statements`` create; returns a URL whose search_path is it."""
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        for statement in statements:
            conn.execute(statement.format(schema=schema))
    return settings.postgres_url + ("&" if "?" in settings.postgres_url else "?") + f"options=-csearch_path%3D{schema}"
