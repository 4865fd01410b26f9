"""The device registry read from a PostgreSQL ``devices`` table on the embedded server."""

import pytest
from postgres_schemas import schema_with

from connectors.postgres import load_device_registry
from operators.decode import DeviceInfo
from operators.spec_loading import SpecLoadError

pytestmark = pytest.mark.integration


def test_devices_table_gives_product_and_tenant(settings):
    url = schema_with(
        settings,
        "registry_it",
        "CREATE TABLE {schema}.devices (device_id text PRIMARY KEY, product_id text NOT NULL, tenant_id text)",
        "INSERT INTO {schema}.devices VALUES ('fire-0001', 'fire_sensor', 'acme'), ('a-1', 'product_a', NULL)",
    )
    assert load_device_registry(url) == {
        "fire-0001": DeviceInfo("fire_sensor", "acme"),
        "a-1": DeviceInfo("product_a", None),
    }


def test_devices_table_without_product_column_is_a_startup_error(settings):
    url = schema_with(settings, "registry_bad_it", "CREATE TABLE {schema}.devices (device_id text PRIMARY KEY, model text)")
    with pytest.raises(SpecLoadError) as info:
        load_device_registry(url)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].endswith(": devices: table needs columns device_id and product_id (has: device_id, model)")


def test_unreachable_registry_database_names_the_url_without_password():
    with pytest.raises(SpecLoadError) as info:
        load_device_registry("postgresql://iot:secret@127.0.0.1:1/iotlink")
    problem = info.value.problems[0]
    assert problem.startswith("postgresql://iot:***@127.0.0.1:1/iotlink: devices: cannot read the device registry:")
    assert "secret" not in problem
