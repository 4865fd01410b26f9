#!/usr/bin/env bash
# Prepares a machine for iotlink: Java 17, Maven, the mosquitto MQTT broker, the Java jars of
# jvm/pom.xml (Apache Kafka, Flink's Kafka/JDBC connectors, Iceberg's Flink runtime) and a Python
# 3.11 virtualenv with the pinned dependencies.
# Idempotent: does nothing when the jars match jvm/ and the venv matches setup.py and requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Java 17 (openjdk-17-jre-headless)…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "bootstrap: Java 17 is required: run 'sudo apt-get install openjdk-17-jre-headless' (or install any JDK 17 and put java on PATH)" >&2
    exit 1
  fi
fi

# Maven resolves the jars of jvm/pom.xml from Maven Central.
if ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Maven…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends maven >/dev/null
  else
    echo "bootstrap: Maven 3 is required to fetch the Java jars: run 'sudo apt-get install maven' (or put mvn on PATH)" >&2
    exit 1
  fi
fi

# The jars, into jvm/lib/<module>/ (Maven's cache in jvm/.m2: offline once fetched). A changed
# pom replaces the whole copy, so no jar of an older version is left beside the new one.
jar_stamp="jvm/lib/.iotlink-jars"
# The poms and the Java sources of jvm/functions: a changed function is compiled again.
jar_want=$(cat jvm/pom.xml jvm/*/pom.xml $(find jvm/*/src -type f -name '*.java' | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)
if [ ! -f "$jar_stamp" ] || [ "$(cat "$jar_stamp")" != "$jar_want" ]; then
  echo "bootstrap: fetching the Java jars of jvm/pom.xml with Maven (first run downloads ~240 MB)…"
  rm -rf jvm/lib
  if ! mvn -q -B -Dstyle.color=never -f jvm/pom.xml -Dmaven.repo.local="$PWD/jvm/.m2" package; then
    echo "bootstrap: 'mvn -f jvm/pom.xml package' failed: Maven Central must be reachable (see the output above)" >&2
    exit 1
  fi
  echo "$jar_want" > "$jar_stamp"
fi

# Mosquitto is the embedded stack's MQTT broker; without it the stack falls back to amqtt,
# which does not route AWS shadow topics ($aws/things/...), so the shadow tests are skipped.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing the mosquitto MQTT broker…"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null) \
      || echo "bootstrap: could not install mosquitto; the embedded stack will use amqtt" >&2
  else
    echo "bootstrap: note: 'sudo apt-get install mosquitto' gives the embedded stack a full MQTT broker (else amqtt is used)" >&2
  fi
fi

# mosquitto_pub / mosquitto_sub: the README's copy-paste MQTT example and one bridge test use them.
if ! command -v mosquitto_pub >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing the MQTT command-line clients (mosquitto-clients)…"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto-clients >/dev/null) \
    || echo "bootstrap: could not install mosquitto-clients; the bridge test publishes with paho instead" >&2
fi

# nc: the README's copy-paste TCP gateway example.
if ! command -v nc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing netcat (netcat-openbsd) for the TCP example…"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends netcat-openbsd >/dev/null) \
    || echo "bootstrap: could not install netcat-openbsd; 'sudo apt-get install netcat-openbsd' for the README's nc example" >&2
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "bootstrap: Python 3.11 is required (Flink 2.0 supports Python <= 3.11): install python3.11 and python3.11-venv" >&2
  exit 1
fi

stamp="$VENV/.iotlink-installed"
want=$(cat setup.py requirements.lock | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
echo "bootstrap: installing pinned dependencies (first run takes a few minutes)…"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel
"$VENV/bin/python" -m pip install -q -c requirements.lock -e '.[test,bench]'
"$VENV/bin/python" -m pip check
echo "$want" > "$stamp"
echo "bootstrap: ready"
