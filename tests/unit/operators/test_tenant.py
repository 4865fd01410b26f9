"""Tenant ids and which tenant's credential may publish for which device."""

from operators.tenant import publish_refusal, tenant_id_problem

REGISTRY = {"dev-a": "acme", "dev-g": "globex", "dev-x": None}


def test_tenant_ids():
    assert tenant_id_problem("acme") is None and tenant_id_problem("it-globex_2") is None
    for bad in ("", "Acme", "-acme", "a" * 41, "ac me", None, 7):
        assert tenant_id_problem(bad) is not None


def test_an_unbound_credential_publishes_for_any_device():
    assert publish_refusal(None, "dev-g", REGISTRY) is None
    assert publish_refusal(None, "dev-unknown", REGISTRY) is None


def test_a_bound_credential_publishes_for_its_tenants_devices_only():
    assert publish_refusal("acme", "dev-a", REGISTRY) is None
    assert publish_refusal("acme", "dev-g", REGISTRY) == "a credential of tenant acme may not publish for device dev-g of tenant globex"
    assert publish_refusal("acme", "dev-x", REGISTRY) == "a credential of tenant acme may not publish for device dev-x of no tenant"
    assert publish_refusal("acme", "dev-new", REGISTRY).endswith("dev-new: not in the device registry")
