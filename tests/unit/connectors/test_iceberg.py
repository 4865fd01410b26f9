"""Iceberg cold layer without Flink: table creation and queries on a real pyiceberg SQL catalog in
a temporary directory, and the options that open the same catalog in Iceberg's Flink connector."""

import pytest

from connectors.iceberg import flink_catalog_options, init_tables, open_catalog, query_tables


@pytest.fixture
def catalog_args(tmp_path):
    (tmp_path / "wh").mkdir()
    uri, warehouse = f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "wh").as_uri()
    init_tables(open_catalog(uri, warehouse))
    return uri, warehouse


def test_init_is_idempotent(catalog_args):
    catalog = open_catalog(*catalog_args)
    assert set(init_tables(catalog).values()) == {"exists"}
    assert {t[1] for t in catalog.list_tables("iotlink")} == {"raw_payloads", "telemetry", "alarm_events", "agg_1h", "customer_product_daily"}
    daily = catalog.load_table("iotlink.customer_product_daily")
    assert [daily.schema().find_column_name(i) for i in daily.schema().identifier_field_ids] == ["customer_id", "product_id", "day", "metric"]


def test_tables_name_zstd_for_the_java_writers_also_when_created_before(catalog_args):
    catalog = open_catalog(*catalog_args)
    for name in ("raw_payloads", "telemetry", "alarm_events", "agg_1h", "customer_product_daily"):
        assert catalog.load_table(f"iotlink.{name}").properties["write.parquet.compression-codec"] == "zstd"
    table = catalog.load_table("iotlink.telemetry")
    with table.transaction() as transaction:
        transaction.remove_properties("write.parquet.compression-codec")
    assert "write.parquet.compression-codec" not in catalog.load_table("iotlink.telemetry").properties
    init_tables(catalog)
    assert catalog.load_table("iotlink.telemetry").properties["write.parquet.compression-codec"] == "zstd"


def test_a_table_written_elsewhere_is_queried_with_duckdb(catalog_args):
    import pyarrow as pa

    catalog = open_catalog(*catalog_args)
    table = catalog.load_table("iotlink.alarm_events")
    schema = table.schema().as_arrow()
    rows = {"alarm_id": ["a1", "a1"], "event": ["RAISED", "CLEARED"], "device_id": ["d", "d"], "product_id": ["p", "p"],
            "rule_id": ["r", "r"], "rule_version": ["1", "1"], "severity": ["high", "high"],
            "device_ts": [1_756_653_767_000_000, 1_756_653_768_000_000], "values_json": ["{}", "{}"]}
    table.append(pa.Table.from_pydict(rows, schema=schema))
    _, events = query_tables(catalog, "SELECT event, epoch_ms(device_ts) FROM alarm_events ORDER BY device_ts")
    assert events == [("RAISED", 1_756_653_767_000), ("CLEARED", 1_756_653_768_000)]


def test_flink_opens_the_sql_catalog_through_jdbc_with_its_credentials():
    sqlite = flink_catalog_options("sqlite:////data/catalog.db", "file:///data/wh")
    assert sqlite["catalog-impl"] == "org.apache.iceberg.jdbc.JdbcCatalog"
    assert (sqlite["uri"], sqlite["warehouse"]) == ("jdbc:sqlite:/data/catalog.db", "file:///data/wh")
    pg = flink_catalog_options("postgresql+psycopg://ice%40lab:p%3Ass@db.example:5433/iceberg_catalog", "file:///wh")
    assert pg["uri"] == "jdbc:postgresql://db.example:5433/iceberg_catalog"
    assert (pg["jdbc.user"], pg["jdbc.password"]) == ("ice@lab", "p:ss")
    assert "p:ss" not in pg["uri"] and "io-impl" not in pg
    # Connections the server closes (idle ones after a minute) are opened anew, not failures.
    assert pg["jdbc.options"] == "-c idle_session_timeout=60000"
    assert {"57P01", "57P05"} <= set(pg["retryable_status_codes"].split(","))


def test_a_rest_catalog_on_s3_gets_s3_file_io_and_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio:9000")
    rest = flink_catalog_options("http://iceberg-rest:8181", "s3://warehouse/")
    assert (rest["catalog-type"], rest["uri"], rest["warehouse"]) == ("rest", "http://iceberg-rest:8181", "s3://warehouse/")
    assert rest["io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert (rest["s3.endpoint"], rest["s3.path-style-access"]) == ("http://minio:9000", "true")


def test_an_unknown_catalog_uri_is_refused():
    with pytest.raises(ValueError, match="expected sqlite"):
        flink_catalog_options("mysql://db/catalog")
