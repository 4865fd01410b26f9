-- Customer analytics (docs/analytics.md; the design guide's example B): which site, and so which
-- customer, each device was at over time; the daily customer x product aggregates; formulas
-- registered per customer and/or product, and their daily results.

-- A customer may belong to a tenant: that tenant's login sees the customer's analytics rows.
ALTER TABLE customers ADD COLUMN IF NOT EXISTS tenant_id text;

-- Assignment history: one row per stay of a device at a site, valid_to_ms NULL while it lasts.
-- Kept by the trigger below from every change of devices.site_id, so whoever edits the registry
-- keeps the history; a move recorded late says when it happened with
--   SET LOCAL iotlink.assigned_at_ms = '<epoch ms>'
-- in the same transaction (iotlink devices move --at does that).
CREATE TABLE IF NOT EXISTS device_assignments (
    device_id      text NOT NULL,
    site_id        text REFERENCES sites (site_id),  -- NULL: at no site (taken out of service)
    valid_from_ms  bigint NOT NULL,
    valid_to_ms    bigint,
    PRIMARY KEY (device_id, valid_from_ms),
    CHECK (valid_to_ms IS NULL OR valid_to_ms > valid_from_ms)
);
CREATE UNIQUE INDEX IF NOT EXISTS device_assignments_open ON device_assignments (device_id) WHERE valid_to_ms IS NULL;

-- A device's first site counts since always (readings older than its registration included).
INSERT INTO device_assignments (device_id, site_id, valid_from_ms)
SELECT d.device_id, d.site_id, 0 FROM devices d
WHERE d.site_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM device_assignments a WHERE a.device_id = d.device_id);

CREATE OR REPLACE FUNCTION iotlink_record_assignment() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    at_ms bigint;
    open_from bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.site_id IS NOT DISTINCT FROM OLD.site_id THEN
        RETURN NEW;
    END IF;
    SELECT valid_from_ms INTO open_from FROM device_assignments WHERE device_id = NEW.device_id AND valid_to_ms IS NULL;
    IF open_from IS NULL AND NOT EXISTS (SELECT 1 FROM device_assignments WHERE device_id = NEW.device_id) THEN
        IF NEW.site_id IS NOT NULL THEN
            INSERT INTO device_assignments (device_id, site_id, valid_from_ms) VALUES (NEW.device_id, NEW.site_id, 0);
        END IF;
        RETURN NEW;
    END IF;
    at_ms := COALESCE(NULLIF(current_setting('iotlink.assigned_at_ms', true), '')::bigint,
                      floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    IF open_from IS NOT NULL AND at_ms <= open_from THEN
        RAISE EXCEPTION 'device %: a move at % ms is not after its current assignment, which began at % ms',
            NEW.device_id, at_ms, open_from USING ERRCODE = 'check_violation';
    END IF;
    UPDATE device_assignments SET valid_to_ms = at_ms WHERE device_id = NEW.device_id AND valid_to_ms IS NULL;
    INSERT INTO device_assignments (device_id, site_id, valid_from_ms) VALUES (NEW.device_id, NEW.site_id, at_ms);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS devices_assignment ON devices;
CREATE TRIGGER devices_assignment AFTER INSERT OR UPDATE OF site_id ON devices
    FOR EACH ROW EXECUTE FUNCTION iotlink_record_assignment();

-- What the customer daily job joins: each stay with its site's customer, an open end as the last
-- millisecond of the year 9999, the largest TIMESTAMP (the JDBC connector reads the view like a table).
CREATE OR REPLACE VIEW device_customer_history AS
SELECT a.device_id, a.site_id, s.customer_id, a.valid_from_ms,
       COALESCE(a.valid_to_ms, 253402300799999) AS valid_to_ms
FROM device_assignments a JOIN sites s ON s.site_id = a.site_id;

-- One row per customer, product, UTC day of device time and metric (sql/jobs/customer_daily.sql).
CREATE TABLE IF NOT EXISTS customer_product_daily (
    customer_id  text NOT NULL,
    product_id   text NOT NULL,
    day          date NOT NULL,
    metric       text NOT NULL,
    count        bigint NOT NULL,
    sum          double precision,
    min          double precision,
    max          double precision,
    avg          double precision,
    devices      integer NOT NULL,
    sites        integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, product_id, day, metric)
);
CREATE INDEX IF NOT EXISTS customer_product_daily_updated ON customer_product_daily (updated_at);

-- The JDBC sink's upsert names only the job's columns: updated_at is kept by the database.
CREATE OR REPLACE FUNCTION iotlink_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS customer_product_daily_touch ON customer_product_daily;
CREATE TRIGGER customer_product_daily_touch BEFORE INSERT OR UPDATE ON customer_product_daily
    FOR EACH ROW EXECUTE FUNCTION iotlink_touch_updated_at();

-- Formulas: every pushed version is kept; the highest version of an id is the live one.
CREATE TABLE IF NOT EXISTS formulas (
    formula_id   text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    customer_id  text,   -- NULL: every customer
    product_id   text,   -- NULL: every product
    expression   text NOT NULL,
    params       jsonb NOT NULL DEFAULT '{}',
    unit         text,
    description  text,
    pushed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (formula_id, version)
);

-- One result per customer, product, day and formula: the version that computed it, the inputs it
-- read, the result or the error. A newer formula version replaces a day's row only when a
-- recomputation asks for that day (iotlink formulas evaluate --since).
CREATE TABLE IF NOT EXISTS customer_analysis_daily (
    customer_id      text NOT NULL,
    product_id       text NOT NULL,
    day              date NOT NULL,
    formula_id       text NOT NULL,
    formula_version  integer NOT NULL,
    inputs           jsonb NOT NULL,
    result           double precision,
    error            text,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, product_id, day, formula_id),
    CHECK ((result IS NULL) <> (error IS NULL))
);

-- Tenants (005_tenants.sql) see the analytics of their customers only.
CREATE OR REPLACE FUNCTION iotlink_customer_visible(customer text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
        SELECT CASE
            WHEN NOT EXISTS (SELECT 1 FROM public.tenants WHERE role_name = session_user) THEN true
            ELSE EXISTS (SELECT 1 FROM public.customers c
                         WHERE c.customer_id = customer AND c.tenant_id = (SELECT tenant_id FROM public.tenants WHERE role_name = session_user))
        END
    $$;

DO $$
DECLARE
    scoped text;
BEGIN
    FOREACH scoped IN ARRAY ARRAY['customer_product_daily', 'customer_analysis_daily'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', scoped);
        EXECUTE format('DROP POLICY IF EXISTS tenant_rows ON %I', scoped);
        EXECUTE format('CREATE POLICY tenant_rows ON %I USING (iotlink_customer_visible(customer_id))', scoped);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iotlink_tenants') THEN
            EXECUTE format('GRANT SELECT ON %I TO iotlink_tenants', scoped);
        END IF;
    END LOOP;
END
$$;
