#!/usr/bin/env bash
# Bulk intake figures (docs/PERFORMANCE.md, "Bulk intake"), in one run:
#
#   1. the limit: the same NDJSON lines parsed and checked by the service's
#      rules (serde_json underneath) in a tight loop on one core
#      (examples/ndjson_parse.rs);
#   2. events per second taken by single-event POSTs (bench/post.lua)
#      against batch requests of BATCH events (bench/bulk.lua), 32
#      connections, DURATION each, in memory mode, SQLite commit mode and
#      PostgreSQL mode (a throwaway PostgreSQL 15), counted by the
#      service's events_accepted_total (so a 503 counts nothing);
#   3. the resident memory of the backfill tool and of the service (memory
#      mode) while the tool sends a file of SEND_MB megabytes.
#
#   bash scripts/bench_bulk.sh               # DURATION=10s BATCH=1000 SEND_MB=1024
#   MODES="memory sqlite" SEND_MB=0 bash scripts/bench_bulk.sh   # no tool run
#
# Run it on a quiet machine: the figures are rates on shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
duration=${DURATION:-10s}
seconds=${duration%s}
batch=${BATCH:-1000}
send_mb=${SEND_MB:-1024}
modes=${MODES:-memory sqlite postgres}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --features sqlite,postgres --bin product-update-service --example ndjson_parse

dir=$(mktemp -d /tmp/bench-bulk.XXXXXX)
pg_data=
as_pg=()
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
cleanup() {
  stop_service || true
  [ -n "$pg_data" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
metric() { curl -s "$svc_url/metrics" | sed -n "s/^$1 //p"; }

echo "== the limit: NDJSON parsed and checked on one core"
target/release/examples/ndjson_parse 5 "$batch"

# Events/s a wrk script gets taken, over DURATION at 32 connections.
rate() {
  local before after
  before=$(metric events_accepted_total)
  wrk -t2 -c32 -d"$duration" -s "$1" "$svc_url" >"$dir/wrk.log" 2>&1 || true
  after=$(metric events_accepted_total)
  echo $(((after - before) / seconds))
}

for mode in $modes; do
  env=(RUST_LOG=warn,product_update_service=info,access=off MAX_CONNECTIONS_PER_CLIENT=1000)
  case $mode in
    memory) ;;
    sqlite) mkdir -p "$dir/data"; env+=(DATA_DIR="$dir/data") ;;
    postgres)
      [ -x "$pg_bin/initdb" ] || { echo "bench_bulk.sh: needs PostgreSQL 15 in $pg_bin (apt-get install postgresql-15, or set PG_BIN)" >&2; exit 1; }
      pg_data=$dir/pg
      if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid nobody --regid nogroup --clear-groups --); chown nobody: "$dir"; pg_user=nobody; else pg_user=$(id -un); fi
      pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      "${as_pg[@]}" "$pg_bin/initdb" --auth=trust --encoding=UTF8 --locale=C -U "$pg_user" -D "$pg_data" >"$dir/initdb.log" 2>&1
      "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/postgres.log" -w -o \
        "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$dir" start >/dev/null
      env+=(DATABASE_URL="postgres://$pg_user@127.0.0.1:$pg_port/postgres")
      ;;
  esac
  start_service "$dir/$mode.log" "${env[@]}" || { echo "the $mode instance did not start:" >&2; cat "$dir/$mode.log" >&2; exit 1; }
  single=$(rate bench/post.lua)
  bulk=$(BATCH=$batch rate bench/bulk.lua)
  echo "== $mode: single POSTs $single events/s, batches of $batch $bulk events/s: $(python3 -c "print(f'{$bulk / max($single, 1):.1f}x')")"
  stop_service || true
done

[ "$send_mb" -gt 0 ] || exit 0
echo "== the backfill tool sending ${send_mb} MB (memory mode)"
python3 - "$dir/events.ndjson" "$send_mb" <<'EOF'
import sys
path, mb = sys.argv[1], int(sys.argv[2])
line = '{"product_id":"p%05d","price":%d.%02d,"stock":%d,"event_id":"e-%d"}\n'
with open(path, "w") as f:
    n, size, chunk = 0, 0, []
    while size < mb * 1_000_000:
        text = line % (n % 10000, n % 1000, n % 100, n, n)
        chunk.append(text)
        size += len(text)
        n += 1
        if len(chunk) == 10000:
            f.write("".join(chunk))
            chunk = []
    f.write("".join(chunk))
print(f"{n} events, {size / 1e6:.0f} MB", file=sys.stderr)
EOF
start_service "$dir/send.log" RUST_LOG=warn,product_update_service=info,access=off
target/release/product-update-service send "$dir/events.ndjson" --url "$svc_url" --batch "$batch" >"$dir/send.out" 2>"$dir/send.err" &
tool=$!
peak_tool=0 peak_service=0
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
while kill -0 "$tool" 2>/dev/null; do
  t=$(rss "$tool") s=$(rss "$svc_pid")
  [ "${t:-0}" -gt "$peak_tool" ] && peak_tool=$t
  [ "${s:-0}" -gt "$peak_service" ] && peak_service=$s
  sleep 0.5
done
wait "$tool" || { echo "the tool failed:" >&2; cat "$dir/send.err" >&2; exit 1; }
cat "$dir/send.out"
echo "peak resident memory: the tool $((peak_tool / 1024)) MB, the service $((peak_service / 1024)) MB"
stop_service || true
