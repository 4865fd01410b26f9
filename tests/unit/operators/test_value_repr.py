import pytest

from connectors.bridge_mqtt import parse_broker_url
from connectors.flink_sql import jdbc_options
from connectors.iceberg import flink_catalog_options
from connectors.postgres import load_device_registry
from operators.spec_loading import SpecLoadError
from operators.value_repr import MAX_REPR_CHARS, bounded_repr, masked_url

PLANTED = "pl4nted-S3cret"


def test_a_deeply_nested_or_huge_value_has_a_short_repr():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert bounded_repr(deep) == "[[[[...]]]]"
    assert len(bounded_repr("x" * 10_000_000)) <= MAX_REPR_CHARS
    assert bounded_repr(10**5000) == "<16610-bit integer>"
    assert bounded_repr({"a": 1.5}) == repr({"a": 1.5})  # small values read as repr has them


def test_a_value_whose_repr_fails_still_has_one():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert bounded_repr(Hostile()).startswith("<Hostile")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://ice:{PLANTED}@db:5432/x", "postgresql://ice:***@db:5432/x"),
        (f"postgresql://ice:p@ss{PLANTED}@db/x", "postgresql://ice:***@db/x"),  # an @ in the password itself
        (f"mysql://u@h/db?sslmode=require&password={PLANTED}", "mysql://u@h/db?sslmode=require&password=***"),
        (f"http://rest:8181/?token={PLANTED}&a=1", "http://rest:8181/?token=***&a=1"),
        ("mqtt://broker:1883", "mqtt://broker:1883"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_urls_are_shown_without_their_secrets(url, shown):
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    "fails",
    [
        lambda: jdbc_options(f"mysql://u:{PLANTED}@h/db"),
        lambda: flink_catalog_options(f"mysql://u:{PLANTED}@h/catalog"),
        lambda: parse_broker_url(f"http://u:{PLANTED}@broker:1883"),
        lambda: load_device_registry(f"postgresql://u:{PLANTED}@127.0.0.1:1/registry"),  # nothing listens there
    ],
    ids=["jdbc", "iceberg-catalog", "mqtt", "device-registry"],
)
def test_configuration_errors_never_echo_a_password(fails):
    with pytest.raises((ValueError, SpecLoadError)) as error:
        fails()
    assert PLANTED not in str(error.value)
    assert "***" in str(error.value) or "u@" not in str(error.value)
