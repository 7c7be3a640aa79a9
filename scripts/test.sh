#!/usr/bin/env bash
# The test command (README): installs and starts what the tests need (InfluxDB on 127.0.0.1,
# nats-server for the JetStream tests,
# see scripts/influxdb.sh), runs the whole suite against it, and stops what it started.
#
#   bash scripts/test.sh            # every test
#   bash scripts/test.sh e2e        # extra arguments go to the test runner as a filter
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v curl >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
fi
# shellcheck source=scripts/influxdb.sh
. scripts/influxdb.sh
influxdb_start
# nats-server (Debian package) for the JetStream tests; they start their own 3-node cluster on
# 127.0.0.1 (tests/src/nats.rs). The package's systemd unit is not used.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "[nats] installing Debian package nats-server" >&2
    sudo=""; if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >&2
fi

if [ ! -d ../shared/fixtures ]; then
    echo "warning: ../shared/fixtures not found: fixture-based tests will skip (and fail under CI=true)" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast -- "$@"
fi
