"""The docker cluster's files, checked without a docker engine: images pinned, every mounted or
copied file present, ports distinct, Prometheus scraping the Flink reporter, the Grafana
dashboard reading metrics the job exports, and the Java side (jvm/pom.xml) shared with the embedded stack."""

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from connectors.jars import JVM_CLASSPATH_JAR_PREFIXES, jars_dir

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
OPERATIONS = ROOT / "docs" / "operations.md"
JVM = ROOT / "jvm"
POM = "{http://maven.apache.org/POM/4.0.0}"
# Jars the job needs beyond the Flink distribution: the Kafka connector, the JDBC connector and
# the PostgreSQL driver (Flink SQL), Iceberg's Flink runtime with the Hadoop client and its S3
# file IO, SQLite JDBC.
NEEDED_ARTIFACTS = {
    "flink-connector-kafka", "flink-connector-jdbc-core", "flink-connector-jdbc-postgres", "postgresql",
    "iceberg-flink-runtime-2.0", "hadoop-client-api", "hadoop-client-runtime", "iceberg-aws-bundle", "sqlite-jdbc",
}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def documented_metrics() -> set[str]:
    """The Prometheus names docs/operations.md lists (its metric tables)."""
    return set(re.findall(r"`(flink_[a-zA-Z0-9_]+)`", OPERATIONS.read_text()))


def dockerfile_of(service: dict) -> Path:
    build = service["build"]
    return (DOCKER / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def test_every_service_has_a_pinned_image_or_a_dockerfile(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            assert dockerfile_of(service).is_file(), name
            base = re.search(r"^FROM\s+(\S+)", dockerfile_of(service).read_text(), re.M)[1]
            assert re.search(r":\d[\w.-]*$", base), f"{name}: base image {base} is not pinned"
        else:
            image = service["image"]
            tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
            assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: image {image} is not pinned"


def test_every_mounted_and_copied_file_exists(compose):
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: {source}"
                mounts += 1
    assert mounts >= 4
    dockerfile = dockerfile_of(compose["services"]["jobmanager"])
    context = (DOCKER / compose["services"]["jobmanager"]["build"]["context"]).resolve()
    copies = re.findall(r"^COPY\s+(?!--from=)(.+?)\s+\S+$", dockerfile.read_text(), re.M)  # not from a build stage
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (context / source).exists(), f"COPY {source}"
    # The build context is the repository root: its ignore file must let every copied path in.
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    for sources in copies:
        for source in sources.split():
            assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, f"{source} is ignored by the build"


def test_published_ports_do_not_collide(compose):
    published = []
    for service in compose["services"].values():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            published.append(int(parts[-2]))
    assert len(published) == len(set(published)) and len(published) >= 8


def test_prometheus_scrapes_the_flink_reporter_port(compose):
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    properties = yaml.safe_load(compose["services"]["jobmanager"]["environment"]["FLINK_PROPERTIES"])
    assert properties["metrics.reporter.prom.factory.class"] == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    reporter_port = str(properties["metrics.reporter.prom.port"])
    assert sorted(t.split(":")[0] for t in targets) == ["jobmanager", "taskmanager"]
    for target in targets:
        host, port = target.split(":")
        assert host in compose["services"] and port == reporter_port
        assert compose["services"][host]["environment"]["FLINK_PROPERTIES"] == compose["services"]["jobmanager"]["environment"]["FLINK_PROPERTIES"]


def test_documented_metrics_cover_every_counter_of_the_operators():
    trees = [ast.parse((ROOT / path).read_text()) for path in ("jobs/telemetry_functions.py", "jobs/aggregates.py")]
    names, scopes = set(), []
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "counter" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr):
                names.add("".join(part.value if isinstance(part, ast.Constant) else "{scope}" for part in arg.values))
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["scope"] and node.value.value:
            scopes.append(node.value.value)
    # The counters of the project's Java operators (jvm/functions) too.
    for java in (ROOT / "jvm" / "functions" / "src").rglob("*.java"):
        names.update(re.findall(r'\.counter\("([A-Za-z0-9_]+)"\)', java.read_text()))
    expanded = {name.replace("{scope}", scope) for name in names for scope in (scopes if "{scope}" in name else [""])}
    assert {"records_in", "decoded", "duplicates_dropped", "alarms_raised", "write_ms", "windows_too_late", "archive_rows"} <= expanded
    documented = documented_metrics()
    missing = sorted(name for name in expanded if not any(doc.endswith(f"_{name}") for doc in documented))
    assert not missing, f"counters missing from docs/operations.md: {missing}"


def test_dashboard_panels_use_provisioned_datasources_and_exported_metrics():
    datasources = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text())["datasources"]
    uids = {d["uid"]: d["type"] for d in datasources}
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    documented = documented_metrics()
    used, tables = set(), set()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids, panel["title"]
            for target in panel["targets"]:
                source = target.get("datasource", panel["datasource"])
                assert source["uid"] in uids and uids[source["uid"]] == source["type"], panel["title"]
                if source["type"] == "prometheus":
                    names = set(re.findall(r"\bflink_[a-zA-Z0-9_]+", target["expr"]))
                    assert names, f"{panel['title']}: {target['expr']}"
                    assert names <= documented, f"{panel['title']}: not exported {sorted(names - documented)}"
                    used |= names
                else:
                    tables |= set(re.findall(r"\bFROM\s+(\w+)", target["rawSql"]))
    op = "flink_taskmanager_job_task_operator_iotlink_"
    for wanted in (op + "records_in", op + "rejected_reason_count", op + "alarms_raised", op + "sink_write_ms",
                   "flink_taskmanager_job_task_operator_pendingRecords", "flink_jobmanager_job_lastCheckpointDuration"):
        assert wanted in used, wanted
    schema = "\n".join(p.read_text() for p in (ROOT / "sql" / "postgres").glob("*.sql"))
    assert tables and all(re.search(rf"CREATE TABLE IF NOT EXISTS {t}\b", schema) for t in tables), tables


def pom_properties() -> dict[str, str]:
    root = ET.parse(JVM / "pom.xml").getroot()
    return {child.tag.removeprefix(POM): child.text for child in root.find(f"{POM}properties")}


def pom_dependencies(module: str) -> dict[str, str]:
    """artifactId -> resolved version of one module's direct dependencies."""
    properties = pom_properties()
    root = ET.parse(JVM / module / "pom.xml").getroot()
    versions = {}
    for dependency in root.iter(f"{POM}dependency"):
        version = dependency.find(f"{POM}version").text
        versions[dependency.find(f"{POM}artifactId").text] = re.sub(r"\$\{([^}]+)\}", lambda m: properties[m[1]], version)
    return versions


def test_the_pom_pins_every_connector_and_the_bootstrap_copied_exactly_those_jars():
    wanted = pom_dependencies("flink")
    assert set(wanted) == NEEDED_ARTIFACTS
    assert all(re.fullmatch(r"[\w.-]+", version) and "SNAPSHOT" not in version for version in wanted.values()), wanted
    copied = {jar.name for jar in jars_dir("flink").glob("*.jar")}
    for artifact, version in wanted.items():
        assert f"{artifact}-{version}.jar" in copied, f"{artifact} {version} not in {jars_dir('flink')}"
    # Flink's own classes stay Flink's: no second flink-dist, connector base or Flink core in the job's jars.
    assert not [name for name in copied if re.match(r"flink-(dist|core|streaming|table|connector-base|runtime)", name)]
    assert pom_properties()["flink.version"] == "2.0.0" and "apache-flink==2.0.0" in (ROOT / "requirements.lock").read_text()


def test_the_docker_image_gets_the_jars_from_the_same_pom_and_kafka_runs_the_same_version(compose):
    dockerfile = (DOCKER / "flink" / "Dockerfile").read_text()
    assert re.search(r"^FROM maven:[\w.-]+ AS jars$", dockerfile, re.M)
    assert "mvn -q -B -f /build/jvm/pom.xml -pl flink -am package" in dockerfile
    assert "COPY --from=jars /build/jvm/lib/flink/ /opt/iotlink/jvm/lib/flink/" in dockerfile
    for pom in ("jvm/pom.xml", "jvm/broker/pom.xml", "jvm/flink/pom.xml"):
        assert f"COPY {pom} /build/{pom}" in dockerfile
    assert "https://" not in dockerfile and not re.search(r"\b(?:curl|wget)\s+-", dockerfile)
    assert re.search(r"^FROM flink:2\.0\.0-", dockerfile, re.M)
    broker = pom_dependencies("broker")
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{broker['kafka_2.13']}"
    # Hadoop's client and the JDBC drivers on the cluster's classpath, in the pom's versions.
    classpath = re.search(r"^ENV HADOOP_CLASSPATH=(\S+)$", dockerfile, re.M)[1].split(":")
    flink = pom_dependencies("flink")
    artifacts = ("hadoop-client-api", "hadoop-client-runtime", "postgresql", "sqlite-jdbc")
    assert classpath == [f"/opt/iotlink/jvm/lib/flink/{a}-{flink[a]}.jar" for a in artifacts]
    # ... which are the ones a local job puts there.
    covered = {prefix for prefix in JVM_CLASSPATH_JAR_PREFIXES for jar in classpath if Path(jar).name.startswith(prefix)}
    assert covered == set(JVM_CLASSPATH_JAR_PREFIXES)


def test_job_submission_command_references_existing_files(compose):
    readme = (DOCKER / "README.md").read_text()
    commands = re.findall(r"docker compose exec jobmanager flink run (?:-d )?-py (\S+)(.*)", readme)
    assert commands
    for script, arguments in commands:
        assert script.startswith("/opt/iotlink/")
        assert (ROOT / script.removeprefix("/opt/iotlink/")).is_file(), script
        config = re.search(r"--config (\S+)", arguments)
        if config:
            mounted = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["jobmanager"]["volumes"] if v.startswith(".")}
            assert (DOCKER / mounted[config[1]]).is_file()
    environment = compose["services"]["jobmanager"]["environment"]
    assert (DOCKER / "iotlink.yaml").is_file() and environment["IOTLINK_CONFIG"] == "/etc/iotlink/iotlink.yaml"
    assert environment["IOTLINK_BOOTSTRAP_SERVERS"].split(":")[0] in compose["services"]
    for key in ("IOTLINK_POSTGRES_URL", "IOTLINK_ICEBERG_CATALOG", "IOTLINK_MQTT_URL", "IOTLINK_MONGO_URL"):
        host = re.search(r"//(?:[^@/]*@)?([\w-]+)", environment[key])[1]
        assert host in compose["services"], key


def test_mosquitto_refuses_anonymous_clients_and_the_job_logs_in(compose):
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf and "password_file /mosquitto/auth/passwd" in conf
    services = compose["services"]
    broker, passwd = services["mosquitto"], services["mosquitto-passwd"]
    # The one-shot writes the password file into the volume the broker reads, before the broker starts.
    assert broker["depends_on"]["mosquitto-passwd"]["condition"] == "service_completed_successfully"
    assert "mosquitto-auth:/mosquitto/auth:ro" in broker["volumes"] and "mosquitto-auth:/mosquitto/auth" in passwd["volumes"]
    assert passwd["image"] == broker["image"] and "mosquitto_passwd -U /mosquitto/auth/passwd" in passwd["entrypoint"][-1]
    # Tenants' logins only under their prefix; the platform's user everything, the shadows' $aws topics too.
    assert "acl_file /mosquitto/auth/acl" in conf
    assert "pattern readwrite tenants/%%u/#" in passwd["entrypoint"][-1] and "topic readwrite $$aws/#" in passwd["entrypoint"][-1]
    assert "mosquitto-auth" in compose["volumes"]
    url = services["jobmanager"]["environment"]["IOTLINK_MQTT_URL"]
    assert url == "mqtt://${MQTT_USER:-iotlink}:${MQTT_PASSWORD:-change-me-mqtt}@mosquitto:1883"
    example = (DOCKER / ".env.example").read_text()
    assert "MQTT_USER=" in example and "MQTT_PASSWORD=" in example
