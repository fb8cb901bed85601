#!/usr/bin/env bash
# Compares pgbench -S through the real Countersign gateway (`countersign serve`, release build: policy,
# classification of every statement, session recording) with direct PostgreSQL and pgbouncer.
# Needs PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres) and pgbench/psql on PATH; installs
# pgbouncer with apt-get when absent. Starts only the gateway and a temporary pgbouncer, both stopped on exit.
# Env: SCALE (10), CLIENTS (10), DURATION (10 s), GW_PORT (6543), GW_HTTP_PORT (6580), PGB_PORT (6432),
# COUNTERSIGN_BIN (a countersign binary to measure instead of building the release one),
# WIRE_THREADS and BUSY_POLL_US (the gateway's [wire] threads and busy_poll_us; unset: its defaults),
# UPSTREAM (tcp: the gateway and pgbouncer reach PostgreSQL at 127.0.0.1:5432; unix: both use its Unix socket,
# as a gateway deployed beside its database would; clients always connect over TCP).
set -euo pipefail

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-10}
DURATION=${DURATION:-10}
GW_PORT=${GW_PORT:-6543}
GW_HTTP_PORT=${GW_HTTP_PORT:-6580}
PGB_PORT=${PGB_PORT:-6432}
DB=countersign_bench
TOKEN=bench-token
UPSTREAM=${UPSTREAM:-tcp}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ -n "${COUNTERSIGN_BIN:-}" ]; then
    BIN=$COUNTERSIGN_BIN
else
    echo "== building countersign (release)"
    (cd "$ROOT" && cargo build --release -q -p countersign-gateway --bin countersign)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/countersign"
fi

echo "== initialising $DB (scale $SCALE)"
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB"
pgbench -h 127.0.0.1 -U postgres -i -q -s "$SCALE" "$DB" >/dev/null 2>&1

case "$UPSTREAM" in
    tcp)
        GW_UPSTREAM="postgres://postgres@127.0.0.1:5432/$DB?sslmode=disable"
        PGB_HOST="host=127.0.0.1 port=5432"
        ;;
    unix)
        SOCKET_DIR=$(psql -h 127.0.0.1 -U postgres -d postgres -XAtqc "SHOW unix_socket_directories" | cut -d, -f1)
        GW_UPSTREAM="postgres://postgres@/$DB?host=$SOCKET_DIR"
        PGB_HOST="host=$SOCKET_DIR port=5432"
        ;;
    *) echo "UPSTREAM must be tcp or unix" >&2; exit 2 ;;
esac

# The bench connection allows pgbench's statements by rule; every statement is still classified and recorded.
# No TLS anywhere (direct runs use PGSSLMODE=disable; pgbouncer and the gateway connect upstream in plaintext),
# so the figures compare proxying, not encryption.
cat >"$TMP/countersign.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_HTTP_PORT"

[store]
data_dir = "$TMP/data"

[wire]
listen = "127.0.0.1:$GW_PORT"
allow_cleartext_without_tls = true
${WIRE_THREADS:+threads = $WIRE_THREADS}
${BUSY_POLL_US:+busy_poll_us = $BUSY_POLL_US}

[logging]
level = "warn"

[[identity.static_tokens]]
name = "bench-agent"
sha256 = "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"
kind = "workload"
acts_for = "alice@example.com"

[[identity.static_tokens]]
name = "alice"
sha256 = "$(printf %s "bench-alice-token" | sha256sum | cut -d' ' -f1)"
kind = "human"
email = "alice@example.com"

[[connections]]
name = "bench"
upstream_url = "$GW_UPSTREAM"

[[approver_groups]]
name = "reviewers"
members = ["alice@example.com"]

[policy.defaults]
approver_groups = ["reviewers"]
quorum = 1

[[policy.rules]]
name = "pgbench-on-bench"
connections = ["bench"]
action = "allow"
TOML
"$BIN" check-config --config "$TMP/countersign.toml" >/dev/null
echo "== starting countersign serve (wire 127.0.0.1:$GW_PORT, HTTP 127.0.0.1:$GW_HTTP_PORT)"
"$BIN" serve --config "$TMP/countersign.toml" >"$TMP/countersign.log" 2>&1 &
PIDS+=($!)
GW_PID=$!

if ! command -v pgbouncer >/dev/null; then
    apt-get install -y pgbouncer >/dev/null
fi
cat >"$TMP/pgbouncer.ini" <<INI
[databases]
$DB = $PGB_HOST dbname=$DB user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = session
server_tls_sslmode = disable
max_client_conn = 200
default_pool_size = 50
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
INI
echo '"postgres" ""' >"$TMP/userlist.txt"
chmod 644 "$TMP"/*
PGB_USER_ARGS=()
if [ "$(id -u)" = 0 ]; then PGB_USER_ARGS=(-u postgres); chown -R postgres "$TMP"; fi
echo "== starting pgbouncer on 127.0.0.1:$PGB_PORT (session mode)"
pgbouncer "${PGB_USER_ARGS[@]}" "$TMP/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
PGB_PID=$!

for port in "$GW_PORT" "$PGB_PORT"; do
    for _ in $(seq 50); do
        (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.2
    done
done
if ! PGPASSWORD=$TOKEN PGSSLMODE=disable psql -h 127.0.0.1 -p "$GW_PORT" -U agent -d bench -XAtqc "SELECT 1" >/dev/null; then
    echo "the gateway is not answering on 127.0.0.1:$GW_PORT; its log:" >&2
    cat "$TMP/countersign.log" >&2
    exit 1
fi

# target name → "port user password database"
declare -A TARGET=(
    [direct]="5432 postgres x $DB"
    [gateway]="$GW_PORT agent $TOKEN bench"
    [pgbouncer]="$PGB_PORT postgres x $DB"
)

# The proxy process's CPU time (user + system, clock ticks) so far; 0 for direct runs.
cpu_ticks() {
    case "$1" in
        gateway) awk '{ print $14 + $15 }' "/proc/$GW_PID/stat" ;;
        pgbouncer) awk '{ print $14 + $15 }' "/proc/$PGB_PID/stat" ;;
        *) echo 0 ;;
    esac
}

run() { # target mode clients duration → prints "tps latency_ms proxy_cpu_us_per_transaction"
    read -r port user password database <<<"${TARGET[$1]}"
    local out before after
    before=$(cpu_ticks "$1")
    out=$(PGPASSWORD=$password PGSSLMODE=disable pgbench -h 127.0.0.1 -p "$port" -U "$user" -S -M "$2" \
        -c "$3" -j "$(( $3 < 2 ? 1 : 2 ))" -T "$4" "$database" 2>&1) || { echo "pgbench failed: $out" >&2; exit 1; }
    after=$(cpu_ticks "$1")
    local tps lat count
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
    count=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
    echo "$tps $lat $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$count" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')"
}

declare -A TPS LAT CPU
for mode in simple prepared; do
    for t in direct gateway pgbouncer; do
        read -r tps _ cpu < <(run "$t" "$mode" "$CLIENTS" "$DURATION")
        TPS[$t/$mode]=$tps
        CPU[$t/$mode]=$cpu
    done
done
for t in direct gateway pgbouncer; do
    read -r _ lat _ < <(run "$t" simple 1 5)
    LAT[$t]=$lat
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n%-10s %14s %14s %16s %22s\n' target "simple TPS" "prepared TPS" "1-client lat ms" "proxy CPU us/txn s/p"
for t in direct gateway pgbouncer; do
    printf '%-10s %14s %14s %16s %22s\n' "$t" "${TPS[$t/simple]}" "${TPS[$t/prepared]}" "${LAT[$t]}" \
        "${CPU[$t/simple]} / ${CPU[$t/prepared]}"
done
echo
echo "gateway/direct:    simple $(ratio "${TPS[gateway/simple]}" "${TPS[direct/simple]}")  prepared $(ratio "${TPS[gateway/prepared]}" "${TPS[direct/prepared]}")"
echo "gateway/pgbouncer: simple $(ratio "${TPS[gateway/simple]}" "${TPS[pgbouncer/simple]}")  prepared $(ratio "${TPS[gateway/prepared]}" "${TPS[pgbouncer/prepared]}")"
awk -v g="${LAT[gateway]}" -v d="${LAT[direct]}" 'BEGIN { printf "1-client latency overhead: %+.1f us\n", (g - d) * 1000 }'
echo "upstream transport (gateway and pgbouncer): $UPSTREAM"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (other work on a shared machine skews these figures)"
