"""``iotlink tenants``: tenant-scoped PostgreSQL access (row-level security, a role per tenant)."""

from __future__ import annotations

import argparse
import sys

import orjson

from iotlink.mqtt_login import ACL_FILE, TENANT_LOGINS, MqttLoginError, add_tenant_login
from jobs.config import Settings
from operators.value_repr import masked_url


def add_tenant_commands(sub, common) -> None:
    """Adds ``tenants`` to the ``iotlink`` sub-command parsers."""
    tenants = sub.add_parser(
        "tenants", help="tenants: a PostgreSQL login per tenant that sees only its own devices' rows",
        description="Tenant-scoped access: each tenant gets a PostgreSQL login role whose queries row-level security "
        "limits to the rows of the tenant's devices (devices.tenant_id) in devices, agg_1m/5m/1h, comm_quality_5m/1h, "
        "alarm_events, alarm_tickets, control_cmd and ota_devices. iotlink sql --tenant T queries as that tenant.",
    )
    actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[common], help="create a tenant's role (again: a new password)",
        description="Create the tenant's login role (iotlink_tenant_<id>) with a random password, kept in "
        "<data-dir>/tenants/<id>.json (0600); run again to give it a new password.",
    )
    add.add_argument("tenant_id", metavar="TENANT", help="the tenant id devices carry in the device registry")
    listing = actions.add_parser("list", parents=[common], help="every tenant, its role and device count")
    listing.add_argument("--json", action="store_true", help="print JSON lines")


def run_tenant_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatches ``iotlink tenants``."""
    from connectors.postgres import migrated_connection
    from connectors.tenant_store import TenantError, add_tenant, list_tenants, save_login, tenant_url
    from iotlink.stack import with_stack

    stack, settings = with_stack(args, settings, ("postgres",))
    try:
        if not settings.postgres_url:
            print("iotlink tenants: no PostgreSQL: give --postgres-url (or --embedded)", file=sys.stderr)
            return 2
        with migrated_connection(settings.postgres_url) as conn:
            if args.tenants_command == "add":
                role, password = add_tenant(conn, args.tenant_id)
                kept = save_login(settings.data_dir / "tenants", args.tenant_id, role, password)
                url = tenant_url(settings.postgres_url, role, password)
                print(f"tenant {args.tenant_id}: role {role}, login kept in {kept}")
                print(f"  {masked_url(url)}  (iotlink sql --tenant {args.tenant_id} logs in with it)")
                mqtt_dir = settings.data_dir / "mqtt"
                if (mqtt_dir / ACL_FILE).exists():  # the embedded mosquitto of this data directory
                    login = add_tenant_login(mqtt_dir, args.tenant_id)
                    print(f"MQTT login of the embedded broker: user {login.username}, kept in "
                          f"{mqtt_dir / TENANT_LOGINS / (args.tenant_id + '.json')}; its devices publish under "
                          f"tenants/{args.tenant_id}/iotlink/... only (the bridge checks each device's tenant)")
            else:
                for tenant in list_tenants(conn):
                    print(orjson.dumps(tenant).decode() if args.json else
                          f"{tenant['tenant_id']:<24} {tenant['role']:<40} {tenant['devices']:>7} devices")
        return 0
    except (TenantError, MqttLoginError) as exc:
        print(f"iotlink tenants: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack is not None:
            stack.stop()
