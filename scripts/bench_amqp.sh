#!/usr/bin/env bash
# RabbitMQ figures (docs/PERFORMANCE.md, "RabbitMQ"), against a throwaway
# broker started here (Debian's rabbitmq-server, its own ports and epmd,
# stopped on exit):
#
#   1. events per second the service takes from the shard queues (memory
#      mode, AMQP_SHARDS=4) at prefetch 1 and 10, against a consumer that
#      only acknowledges, on the same topology and the same pre-filled
#      queues (examples/amqp_bench.rs); the goal is at least 0.8 of it;
#   2. whether the outbox relay keeps up with the HTTP intake, in SQLite
#      commit mode and then in PostgreSQL mode (a throwaway PostgreSQL 15):
#      wrk POSTing at 32 connections for DURATION; the relay's lag
#      (amqp_outbox_lag_events) each second, and what it had published
#      against what was committed at the end.
#
#   bash scripts/bench_amqp.sh               # EVENTS=20000 DURATION=10s
#   EVENTS=50000 DURATION=20s bash scripts/bench_amqp.sh
#
# Run it on a quiet machine: the figures are ratios of two runs each, but a
# build or another load beside them still moves them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
events=${EVENTS:-20000}
duration=${DURATION:-10s}
bin_dir=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
[ -x "$bin_dir/rabbitmq-server" ] || { echo "bench_amqp.sh: needs rabbitmq-server (apt-get install rabbitmq-server)" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

cargo build --release --quiet --features amqp,sqlite,postgres --bin product-update-service --example amqp_bench

dir=$(mktemp -d /tmp/bench-amqp.XXXXXX)
port=$(( 20000 + RANDOM % 10000 ))
export HOME=$dir RABBITMQ_NODENAME=bench-$port@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$((port + 1)) ERL_EPMD_PORT=$((port + 2)) \
  ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
  RABBITMQ_LOGS=$dir/rabbit.log RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
  RABBITMQ_CONFIG_FILE=$dir/rabbitmq RABBITMQ_PID_FILE=$dir/pid \
  RABBITMQ_PLUGINS_EXPAND_DIR=$dir/plugins RABBITMQ_FEATURE_FLAGS_FILE=$dir/feature_flags \
  RABBITMQ_QUORUM_DIR=$dir/quorum
echo '[rabbitmq_consistent_hash_exchange].' >"$dir/enabled_plugins"
: >"$dir/rabbitmq.conf"
"$bin_dir/rabbitmq-server" >"$dir/server.log" 2>&1 &
broker=$!
cleanup() {
  stop_service || true
  "$bin_dir/rabbitmqctl" stop >/dev/null 2>&1 || kill "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  epmd -kill >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$bin_dir/rabbitmqctl" wait --timeout 120 "$dir/pid" >/dev/null
url="amqp://guest:guest@127.0.0.1:$port/%2f"

echo "== events taken from RabbitMQ ($events events, 4 shards, memory mode)"
target/release/examples/amqp_bench "$url" target/release/product-update-service "$events" 1 10

# The relay's lag each second while wrk POSTs at 32 connections, and what
# it had published against what was committed at the end.
relay_under_load() {
  local label=$1 data
  shift
  echo "== the outbox relay under HTTP load ($label, 32 connections, $duration)"
  start_service "$dir/service-$label.log" AMQP_URL="$url" AMQP_EXCHANGE="bench-in-$label" \
    AMQP_OUTBOX_EXCHANGE="bench-out-$label" MAX_CONNECTIONS_PER_CLIENT=1000 "$@"
  metric() { curl -s "$svc_url/metrics" | sed -n "s/^$1 //p"; }
  wrk -t2 -c32 -d"$duration" -s bench/post.lua "$svc_url" >"$dir/wrk.log" 2>&1 &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    echo "lag $(metric amqp_outbox_lag_events) events, published $(metric amqp_outbox_published_total)"
    sleep 1
  done
  wait "$load" || true
  local committed
  committed=$(metric events_accepted_total)
  sleep 2
  echo "after the load: committed ${committed:-?}, published $(metric amqp_outbox_published_total), lag $(metric amqp_outbox_lag_events)"
  grep -E "Requests/sec" "$dir/wrk.log" || true
  stop_service || true
}

data=$(mktemp -d /tmp/bench-amqp-data.XXXXXX)
relay_under_load sqlite DATA_DIR="$data"
rm -rf "$data"

# PostgreSQL 15, throwaway, as bench.sh --postgres starts it.
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$pg_bin/initdb" ] || { echo "bench_amqp.sh: needs PostgreSQL 15 in $pg_bin (apt-get install postgresql-15, or set PG_BIN)" >&2; exit 1; }
pg_data=$dir/pg
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid nobody --regid nogroup --clear-groups --); chown nobody: "$dir"; pg_user=nobody; else pg_user=$(id -un); fi
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pg_bin/initdb" --auth=trust --encoding=UTF8 --locale=C -U "$pg_user" -D "$pg_data" >"$dir/initdb.log" 2>&1
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/postgres.log" -w -o \
  "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$dir" start >/dev/null
stop_pg() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'stop_pg; cleanup' EXIT
relay_under_load postgres DATABASE_URL="postgres://$pg_user@127.0.0.1:$pg_port/postgres"
