"""Tenant-scoped PostgreSQL: a tenant's login sees its own devices' rows and none of another
tenant's, in every scoped table, through SQL and through ``iotlink sql --tenant``."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from connectors.postgres import apply_migrations
from connectors.tenant_store import add_tenant, tenant_url

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEVICES = {"it-ten-a1": "it-acme", "it-ten-a2": "it-acme", "it-ten-b1": "it-globex"}
CUSTOMERS = {"it-ten-cust-a": "it-acme", "it-ten-cust-b": "it-globex", "it-ten-cust-none": None}
ANALYTICS = ("customer_product_daily", "customer_analysis_daily")
SCOPED = ("devices", "agg_1m", "agg_5m", "agg_1h", "comm_quality_5m", "comm_quality_1h", "alarm_events", "alarm_tickets",
          "control_cmd", "ota_devices")


def device_column(table: str) -> str:
    return "key" if table.startswith("agg_") else "device_id"


@pytest.fixture(scope="module")
def tenants(settings):
    apply_migrations(settings.postgres_url)
    now = int(time.time() * 1000)
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO firmware_releases (release_id, product_id, version, previous_version, spec) "
                     "VALUES ('it-ten', 'prod-a', '2', '1', '{}') ON CONFLICT DO NOTHING")
        for device, tenant in DEVICES.items():
            conn.execute("INSERT INTO devices (device_id, product_id, tenant_id) VALUES (%s, 'prod-a', %s) "
                         "ON CONFLICT (device_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id", (device, tenant))
            for table in ("agg_1m", "agg_5m", "agg_1h"):
                conn.execute(f"INSERT INTO {table} (scope, key, metric, window_start, product_id, count) "
                             "VALUES ('device', %s, 'tempC', %s, 'prod-a', 1) ON CONFLICT DO NOTHING", (device, now))
            for table in ("comm_quality_5m", "comm_quality_1h"):
                conn.execute(f"INSERT INTO {table} (device_id, window_start, received) VALUES (%s, %s, 1) ON CONFLICT DO NOTHING",
                             (device, now))
            conn.execute("INSERT INTO alarm_events (alarm_id, event, device_ts, device_id, rule_id, severity) "
                         "VALUES (%s, 'RAISED', %s, %s, 'hot', 'high') ON CONFLICT DO NOTHING", (f"{device}:hot", now, device))
            conn.execute("INSERT INTO alarm_tickets (ticket_id, kind, alarm_id, device_id, rule_id, status, opened_ts) "
                         "VALUES (%s, 'queue', %s, %s, 'hot', 'open', %s) ON CONFLICT DO NOTHING", (f"{device}:queue", f"{device}:hot", device, now))
            conn.execute("INSERT INTO control_cmd (command_id, device_id, action, desired, issued_ts, status) "
                         "VALUES (%s, %s, 'restart-fan', '{}', %s, 'applied') ON CONFLICT DO NOTHING", (f"cmd-{device}", device, now))
            conn.execute("INSERT INTO ota_devices (release_id, device_id, stage, status) VALUES ('it-ten', %s, 0, 'succeeded') "
                         "ON CONFLICT DO NOTHING", (device,))
        # A product-wide row belongs to no tenant.
        conn.execute("INSERT INTO agg_1m (scope, key, metric, window_start, product_id, count) "
                     "VALUES ('product', 'prod-a', 'tempC', %s, 'prod-a', 3) ON CONFLICT DO NOTHING", (now,))
        for customer, tenant in CUSTOMERS.items():
            conn.execute("INSERT INTO customers (customer_id, name, tenant_id) VALUES (%s, %s, %s) "
                         "ON CONFLICT (customer_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id", (customer, customer, tenant))
            conn.execute("INSERT INTO customer_product_daily (customer_id, product_id, day, metric, count, devices, sites) "
                         "VALUES (%s, 'prod-a', '2026-03-10', 'tempC', 1, 1, 1) ON CONFLICT DO NOTHING", (customer,))
            conn.execute("INSERT INTO customer_analysis_daily (customer_id, product_id, day, formula_id, formula_version, inputs, result) "
                         "VALUES (%s, 'prod-a', '2026-03-10', 'f', 1, '{}', 1.0) ON CONFLICT DO NOTHING", (customer,))
        logins = {tenant: add_tenant(conn, tenant) for tenant in set(DEVICES.values())}
    return {tenant: tenant_url(settings.postgres_url, role, password) for tenant, (role, password) in logins.items()}


@pytest.mark.parametrize("tenant", ["it-acme", "it-globex"])
def test_a_tenant_sees_its_own_devices_rows_and_no_other_tenants(settings, tenants, tenant):
    own = {d for d, t in DEVICES.items() if t == tenant}
    with psycopg.connect(tenants[tenant]) as conn:
        for table in SCOPED:
            column = device_column(table)
            seen = {r[0] for r in conn.execute(f"SELECT {column} FROM {table}")}
            assert seen == own, f"{table}: {tenant} sees {sorted(seen)}"
        assert conn.execute("SELECT count(*) FROM agg_1m WHERE scope = 'product'").fetchone() == (0,)
        # Customer analytics: the tenant's customers' rows only (a customer of no tenant is nobody's).
        for table in ANALYTICS:
            seen = {r[0] for r in conn.execute(f"SELECT customer_id FROM {table}")}
            assert seen == {c for c, t in CUSTOMERS.items() if t == tenant}, f"{table}: {tenant} sees {sorted(seen)}"


def test_the_platform_sees_every_row_and_tenants_cannot_write_or_read_the_tenant_list(settings, tenants):
    with psycopg.connect(settings.postgres_url) as conn:
        for table in SCOPED:
            column = device_column(table)
            seen = {r[0] for r in conn.execute(f"SELECT {column} FROM {table} WHERE {column} LIKE 'it-ten-%%'")}
            assert seen == set(DEVICES), table
    with psycopg.connect(tenants["it-globex"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO alarm_events (alarm_id, event, device_ts, device_id, rule_id) VALUES ('x', 'RAISED', 1, 'it-ten-a1', 'r')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM tenants")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE devices SET tenant_id = 'it-globex' WHERE device_id = 'it-ten-a1'")


def test_iotlink_sql_as_a_tenant_reads_its_own_rows_only(settings, tenants, tmp_path):
    base = [sys.executable, "-m", "iotlink.cli"]
    endpoints = ["--postgres-url", settings.postgres_url, "--bootstrap-servers", settings.bootstrap_servers, "--data-dir", str(tmp_path)]
    added = subprocess.run([*base, "tenants", "add", "it-globex", *endpoints], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert added.returncode == 0, added.stderr
    assert "role iotlink_tenant_it_globex" in added.stdout and (tmp_path / "tenants" / "it-globex.json").stat().st_mode & 0o777 == 0o600
    query = "SELECT device_id, rule_id FROM alarm_events WHERE device_id LIKE 'it-ten-%'"
    done = subprocess.run([*base, "sql", *endpoints, "--tenant", "it-globex", "-e", query],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "it-ten-b1" in done.stdout and "it-ten-a1" not in done.stdout and "it-ten-a2" not in done.stdout
    assert "10_kafka_tables.sql left out: not scoped to tenant it-globex" in done.stderr
    listed = subprocess.run([*base, "tenants", "list", *endpoints], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert any(line.split()[:1] == ["it-globex"] and line.split()[-2:] == ["1", "devices"] for line in listed.stdout.splitlines())


def test_the_hot_layer_as_a_tenant_shows_its_own_devices_only(mongo_url, capsys):
    from connectors.mongo import MongoHotWriter, alarm_ops, telemetry_ops
    from iotlink.cli import main

    url = mongo_url.rsplit("/", 1)[0] + "/t_tenant_scope"
    now = int(time.time() * 1000)
    records = [{"device_id": device, "product_id": "prod-a", "tenant": tenant, "device_ts": now, "ingest_ts": now, "metrics": {"tempC": 1}}
               for device, tenant in DEVICES.items()]
    raised = [{"event": "RAISED", "alarm_id": f"{device}:hot", "device_id": device, "product_id": "prod-a", "rule_id": "hot",
               "severity": "high", "device_ts": now} for device in DEVICES]
    writer = MongoHotWriter(url)
    writer.write_batch(telemetry_ops(records) + alarm_ops(raised))
    writer.close()
    own = {d for d, t in DEVICES.items() if t == "it-acme"}
    for collection in ("device_state", "alarms_active"):
        assert main(["mongo", "find", collection, "--tenant", "it-acme", "--mongo-url", url, "--limit", "50"]) == 0
        seen = {json.loads(line)["device_id"] for line in capsys.readouterr().out.splitlines()}
        assert seen == own, collection
    assert main(["mongo", "find", "product_summary_1h", "--tenant", "it-acme", "--mongo-url", url]) == 2
    assert "sums the devices of every tenant" in capsys.readouterr().err


def _read_all(bootstrap, topic, timeout_s=8.0):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=int(timeout_s * 1000),
                             isolation_level="read_committed")
    try:
        return [record.value for record in consumer]
    finally:
        consumer.close()


def test_mqtt_a_tenant_login_publishes_under_its_prefix_and_for_its_own_devices_only(stack, settings):
    import paho.mqtt.client as mqtt

    from connectors.bridge_mqtt import BridgeOptions, BrokerAddress, start_bridge
    from connectors.kafka import ensure_topics
    from iotlink.mqtt_login import ACL_FILE, add_tenant_login

    mqtt_dir = stack.mqtt_dir
    assert (mqtt_dir / ACL_FILE).exists(), "the embedded broker is mosquitto with its ACL file"
    login = add_tenant_login(mqtt_dir, "it-acme")
    suffix = uuid.uuid4().hex[:8]
    raw, dlq = f"ten-{suffix}.raw", f"ten-{suffix}.dlq"
    ensure_topics(settings.bootstrap_servers, [raw, dlq])
    port = int(settings.mqtt_url.rsplit(":", 1)[1])
    platform = stack.mqtt_login
    options = BridgeOptions(bootstrap_servers=settings.bootstrap_servers, raw_topic=raw, dlq_topic=dlq,
                            broker=BrokerAddress("127.0.0.1", port, False), client_id=f"ten-bridge-{suffix}",
                            username=platform.username, password=platform.password, device_tenants=DEVICES)
    running = start_bridge(options)
    results = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ten-dev-{suffix}", protocol=mqtt.MQTTv5)
    client.username_pw_set(login.username, login.password)
    client.on_publish = lambda c, u, mid, reason_code, properties: results.__setitem__(mid, reason_code)
    try:
        assert running.transport.subscribed.wait(20)
        client.connect("127.0.0.1", port)
        client.loop_start()
        topics = {
            "own device": "tenants/it-acme/iotlink/prd/nohub/it-ten-a1/periodic/pub/telemetry/json",
            "another tenant's device": "tenants/it-acme/iotlink/prd/nohub/it-ten-b1/periodic/pub/telemetry/json",
            "another tenant's prefix": "tenants/it-globex/iotlink/prd/nohub/it-ten-b1/periodic/pub/telemetry/json",
            "no prefix": "iotlink/prd/nohub/it-ten-a1/periodic/pub/telemetry/json",
        }
        mids = {name: client.publish(topic, f'{{"case": "{name}"}}'.encode(), qos=1).mid for name, topic in topics.items()}
        deadline = time.monotonic() + 15
        while len(results) < len(mids) and time.monotonic() < deadline:
            time.sleep(0.1)
        codes = {name: results.get(mid) for name, mid in mids.items()}
        # The broker refuses a tenant's login outside its own prefix (MQTT 5: 135, not authorized).
        assert [codes[name].value for name in ("another tenant's prefix", "no prefix")] == [135, 135], codes
        assert not codes["own device"].is_failure and not codes["another tenant's device"].is_failure
        wait_until = time.monotonic() + 20
        while running.counters["received"] < 2 and time.monotonic() < wait_until:
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
        running.stop()
    raw_records = [json.loads(value) for value in _read_all(settings.bootstrap_servers, raw)]
    letters = [json.loads(value) for value in _read_all(settings.bootstrap_servers, dlq)]
    assert [(r["device_id"], r["mqtt_topic"]) for r in raw_records] == [("it-ten-a1", topics["own device"])]
    assert [(letter["reason_code"], letter["device_id"]) for letter in letters] == [("tenant_mismatch", "it-ten-b1")]
    assert "a credential of tenant it-acme may not publish for device it-ten-b1 of tenant it-globex" in letters[0]["reason"]
    assert "another tenant's device" in json.dumps(letters[0])  # the payload as sent
