#!/usr/bin/env bash
# The test command: services up (installing them if missing), then every test.
# The tests' Kafka is a cluster of their own (Apache Kafka: brokers on 127.0.0.1:9192 and
# :9194, the KRaft controller on :9193; with KAFKA_IMPL=tansu, tansu on :9192), on new
# storage each run (data/test-services): it exports
# IDEMPIPE_TEST_BROKERS=127.0.0.1:9192, IDEMPIPE_TEST_S3 (the S3 server) and
# IDEMPIPE_TEST_REGISTRY (the schema registry's Confluent-compatible API) for the tests,
# replacing any value they had. (A bare `cargo test` reads them too: default
# 127.0.0.1:9092, http://127.0.0.1:9300 and http://127.0.0.1:9180/apis/ccompat/v7, the
# services' own.)
# Usage: scripts/test.sh [extra cargo test arguments]
# Environment:
#   SERVICES_DIR    where ClickHouse's and the S3 server's data, logs and pid files live
#                   (default data/services; the tests' broker is always in data/test-services)
#   S3_PORT         the S3 server's port (default 9300)
#   IDEMPIPE_VENV   the Python virtual environment (default data/venv; scripts/pyenv.sh)
# The tests themselves read IDEMPIPE_TEST_KEEP and the TORTURE_* settings (TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# A cold debug build fills about 8 GB of target/, the services' data about 3 GB more: a
# disk that fills up mid-link fails as a linker crash ("Bus error"), so say so up front.
free_gb=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1048576 ))
if (( free_gb < 12 )); then
  echo "test: warning: ${free_gb} GB free on the disk of $PWD; a cold build and the tests need about 12 GB" >&2
fi

# ClickHouse as usual; Kafka: a cluster of the tests' own on :9192, on new storage each
# run, so that every run starts alike; the cluster on :9092 is untouched. Tests that need
# a cluster of their own (TLS, SASL, stopping it, killing a broker) start one with
# scripts/kafka.sh on free ports, from the jars installed here.
SERVICES_DIR=${SERVICES_DIR:-data/services} scripts/services.sh build-deps
SERVICES_DIR=${SERVICES_DIR:-data/services} scripts/services.sh clickhouse-up
scripts/services.sh kafka-install
SERVICES_DIR=data/test-services KAFKA_PORT=9192 scripts/services.sh kafka-fresh
export IDEMPIPE_TEST_BROKERS=127.0.0.1:9192
# S3 (moto): the tables of tests/object_storage.rs.
SERVICES_DIR=${SERVICES_DIR:-data/services} scripts/services.sh s3-up
export IDEMPIPE_TEST_S3=http://127.0.0.1:${S3_PORT:-9300}

# The schema registry (Apicurio, Confluent's API) of tests/registry.rs; tests that stop
# one start their own (scripts/registry.sh with REGISTRY_PORT and SERVICES_DIR).
SERVICES_DIR=${SERVICES_DIR:-data/services} scripts/registry.sh up
IDEMPIPE_TEST_REGISTRY=$(scripts/registry.sh url)
export IDEMPIPE_TEST_REGISTRY

# Independent readers and writers the tests use, in the project's own virtual
# environment: the Python `deltalake` (the Delta table), `chdb` (current ClickHouse in
# process: our DDL and queries, the Kafka-engine route), boto3 (lists the tests' S3
# bucket), and Apache Spark with Delta Lake (tests/spark.rs; Spark fetches the Delta jars
# from Maven Central on its first start, into ~/.ivy2.5.2).
source scripts/pyenv.sh
pyenv_ready 'deltalake=deltalake>=1.0' 'pyarrow=pyarrow>=15' 'chdb=chdb>=3' 'boto3=boto3' \
  'pyspark=pyspark==4.2.0' 'delta=delta-spark==4.4.0'

# Headless Chromium renders the `analyze --html` page in tests/operations.rs.
if ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium (renders the analyze page in a test)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
fi

cargo test --locked --no-fail-fast "$@"
