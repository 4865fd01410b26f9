-- Tenants (docs/tenants.md): a PostgreSQL login role per tenant, member of iotlink_tenants,
-- sees through row-level security only the rows of its own devices (devices.tenant_id) in the
-- tables below; product-wide rows (agg_* scope 'product') belong to no tenant and are hidden
-- from tenant roles. Other roles than tenants see every row; the tables' owner (the platform's
-- own writers) is not subject to the policies.

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id   text PRIMARY KEY,
    role_name   text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iotlink_tenants') THEN
        -- A platform user that may not create roles still gets the rest of the schema; tenants
        -- then wait for an administrator's CREATE ROLE iotlink_tenants NOLOGIN.
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            CREATE ROLE iotlink_tenants NOLOGIN;
        ELSE
            RAISE NOTICE 'iotlink: % may not create roles; tenants need a role iotlink_tenants', current_user;
        END IF;
    END IF;
END
$$;

-- The tenant of the session's login role, or NULL for a role that is no tenant. SECURITY
-- DEFINER: tenant roles cannot read the tenants and devices tables themselves unscoped.
CREATE OR REPLACE FUNCTION iotlink_session_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT tenant_id FROM public.tenants WHERE role_name = session_user $$;

-- Whether the session may see a device's rows: every device for a role that is no tenant, the
-- tenant's own devices for a tenant, nothing (NULL device: product-wide rows) for a tenant.
CREATE OR REPLACE FUNCTION iotlink_device_visible(device text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
        SELECT CASE
            WHEN NOT EXISTS (SELECT 1 FROM public.tenants WHERE role_name = session_user) THEN true
            WHEN device IS NULL THEN false
            ELSE EXISTS (SELECT 1 FROM public.devices d
                         WHERE d.device_id = device AND d.tenant_id = (SELECT tenant_id FROM public.tenants WHERE role_name = session_user))
        END
    $$;

DO $$
DECLARE
    scoped record;
BEGIN
    FOR scoped IN SELECT * FROM (VALUES
        ('devices', 'device_id'),
        ('agg_1m', $e$CASE WHEN scope = 'device' THEN key END$e$),
        ('agg_5m', $e$CASE WHEN scope = 'device' THEN key END$e$),
        ('agg_1h', $e$CASE WHEN scope = 'device' THEN key END$e$),
        ('comm_quality_5m', 'device_id'),
        ('comm_quality_1h', 'device_id'),
        ('alarm_events', 'device_id'),
        ('alarm_tickets', 'device_id'),
        ('control_cmd', 'device_id'),
        ('ota_devices', 'device_id')
    ) AS t(table_name, device_expr)
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', scoped.table_name);
        EXECUTE format('DROP POLICY IF EXISTS tenant_rows ON %I', scoped.table_name);
        EXECUTE format('CREATE POLICY tenant_rows ON %I USING (iotlink_device_visible(%s))', scoped.table_name, scoped.device_expr);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iotlink_tenants') THEN
            EXECUTE format('GRANT SELECT ON %I TO iotlink_tenants', scoped.table_name);
        END IF;
    END LOOP;
END
$$;
