"""Iceberg catalog access (pyiceberg): SQL catalog for the embedded stack, REST for clusters."""

from __future__ import annotations


def open_catalog(catalog_uri: str, warehouse: str | None = None, name: str = "iotlink", **properties: str):
    """Opens an Iceberg catalog.

    Args:
        catalog_uri: ``sqlite:///path``/``postgresql+psycopg://…`` (SQL catalog) or an http(s)
            REST catalog URL.
        warehouse: Warehouse location (``file:///…`` or ``s3://…``).
        name: Catalog name.
        **properties: Extra catalog properties (e.g. ``s3.endpoint``).

    Returns:
        A pyiceberg Catalog.
    """
    props = dict(properties)
    if warehouse:
        props["warehouse"] = warehouse
    if catalog_uri.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(name, uri=catalog_uri, **props)
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(name, uri=catalog_uri, **props)
