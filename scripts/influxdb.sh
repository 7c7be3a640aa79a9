#!/usr/bin/env bash
# Installs (Debian's `influxdb` package, 1.6.x) and starts a throwaway InfluxDB bound to
# 127.0.0.1 with its data in a temp dir. Source it, then call `influxdb_start`; it exports
# INFLUXDB_URL and registers `influxdb_stop` to run on exit.
#
#   . scripts/influxdb.sh && influxdb_start
#
# Or run it directly to keep one in the foreground for manual testing:
#   bash scripts/influxdb.sh

influxdb_install() {
    if command -v influxd >/dev/null 2>&1; then
        return 0
    fi
    echo "[influxdb] installing Debian package influxdb" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq influxdb >&2
}

# A TCP port on 127.0.0.1 that nothing listens on (two consecutive ports: HTTP and RPC).
influxdb_free_port() {
    local p
    for p in $(seq 18086 2 18300); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

influxdb_start() {
    influxdb_install || { echo "[influxdb] install failed" >&2; return 1; }
    INFLUXDB_DIR=$(mktemp -d -t ds-influxdb.XXXXXX)
    local port
    port=$(influxdb_free_port) || { echo "[influxdb] no free port" >&2; return 1; }
    cat >"$INFLUXDB_DIR/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$((port + 1))"
[meta]
  dir = "$INFLUXDB_DIR/meta"
[data]
  dir = "$INFLUXDB_DIR/data"
  wal-dir = "$INFLUXDB_DIR/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:$port"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
CONF
    influxd -config "$INFLUXDB_DIR/influxdb.conf" >"$INFLUXDB_DIR/influxd.log" 2>&1 &
    INFLUXDB_PID=$!
    export INFLUXDB_URL="http://127.0.0.1:$port"
    trap influxdb_stop EXIT
    local i
    for i in $(seq 1 100); do
        if curl -fsS -o /dev/null "$INFLUXDB_URL/ping" 2>/dev/null; then
            echo "[influxdb] $(influxd version 2>/dev/null | head -1) ready at $INFLUXDB_URL (pid $INFLUXDB_PID, data $INFLUXDB_DIR)" >&2
            return 0
        fi
        if ! kill -0 "$INFLUXDB_PID" 2>/dev/null; then
            echo "[influxdb] influxd exited; its log:" >&2
            cat "$INFLUXDB_DIR/influxd.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "[influxdb] not ready after 10 s; its log:" >&2
    tail -50 "$INFLUXDB_DIR/influxd.log" >&2
    return 1
}

influxdb_stop() {
    if [ -n "${INFLUXDB_PID:-}" ] && kill -0 "$INFLUXDB_PID" 2>/dev/null; then
        kill "$INFLUXDB_PID" 2>/dev/null
        wait "$INFLUXDB_PID" 2>/dev/null
        echo "[influxdb] stopped" >&2
    fi
    if [ -n "${INFLUXDB_DIR:-}" ]; then rm -rf "$INFLUXDB_DIR"; fi
    INFLUXDB_PID=""
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    influxdb_start
    echo "INFLUXDB_URL=$INFLUXDB_URL  (Ctrl-C to stop)"
    wait "$INFLUXDB_PID"
fi
