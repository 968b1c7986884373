#!/usr/bin/env bash
# Memory per stored product (target: <= 256 bytes per product), in memory
# mode and in durable mode, and the durable startup time.
#
# Starts the release binary on a free loopback port, reads its VmRSS empty,
# posts one event (price and stock) for each of COUNT distinct ids
# (p0000000 ..) with examples/fill.rs over keep-alive connections, waits
# until the last id is readable (fill posts it after every other event was
# answered), reads VmRSS again and prints
#   (rss_full - rss_empty) / COUNT  bytes per product  PASS/FAIL.
# Then stops the service with SIGTERM and checks that it exits 0.
#
# Then the same in durable mode (the release binary built with --features
# sqlite, DATA_DIR in a temporary directory), and a restart on that
# database: the startup line's time to load COUNT products, and VmRSS.
#
# Env: COUNT (1000000), FILL_THREADS (8), LIMIT (256 bytes per product),
#      DURABLE (1; 0 = memory mode only).
# Exit: 0 measured and PASS, 1 measured and FAIL, 2 could not measure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
count=${COUNT:-1000000}
threads=${FILL_THREADS:-8}
limit=${LIMIT:-256}
target=${CARGO_TARGET_DIR:-target}
log=$(mktemp /tmp/memory-service.XXXXXX.log)
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

die() { echo "memory.sh: $*" >&2; exit 2; }

trap 'stop_service || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



vm_rss_bytes() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$svc_pid/status"; }

cargo build --release --quiet --bin product-update-service --example fill
durable_bin=$repo/target/durable/release/product-update-service
if [ "${DURABLE:-1}" = 1 ]; then
  CARGO_TARGET_DIR=$repo/target/durable cargo build --release --quiet --features sqlite --bin product-update-service
fi

# measure LABEL [VAR=value ...]: fills a fresh service, prints its line.
measure() {
  local label=$1 rss_empty rss_full last deadline status
  shift
  start_service "$log" RUST_LOG=info "$@" || die "the service did not start; its log: $(cat "$log")"
  local base=$svc_url
  rss_empty=$(vm_rss_bytes)
  echo "memory.sh: $label: service pid $svc_pid on $base, VmRSS empty $((rss_empty / 1024)) KiB" >&2
  "$target/release/examples/fill" "$base" "$count" "$threads" >&2 || die "fill failed"
  last=$(printf 'p%07d' $((count - 1)))
  deadline=$((SECONDS + 60))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/products/$last")" = 200 ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "GET /products/$last never returned 200"
    sleep 0.05
  done
  rss_full=$(vm_rss_bytes)
  status=0
  stop_service || status=$?
  grep -E 'shutdown complete|not applied|panicked|events committed' "$log" >&2 || true
  [ "$status" -eq 0 ] || die "the service exited with status $status on SIGTERM (log: $log)"
  awk -v label="$label" -v e="$rss_empty" -v f="$rss_full" -v n="$count" -v lim="$limit" 'BEGIN {
    per = (f - e) / n
    printf "memory (%s): %d products, VmRSS empty %.1f MiB, full %.1f MiB: %.1f bytes/product (target <= %d): %s\n",
      label, n, e / 1048576, f / 1048576, per, lim, (per <= lim ? "PASS" : "FAIL")
    exit (per <= lim ? 0 : 1)
  }'
}

result=0
measure "in memory" || result=1
if [ "${DURABLE:-1}" = 1 ]; then
  # Durable mode: the same fill into a fresh DATA_DIR (async, so the fill
  # is not bound by commits; the memory store is the same in every mode).
  data=$(mktemp -d /tmp/memory-data.XXXXXX)
  SERVICE_BIN=$durable_bin measure "DATA_DIR, durable" "DATA_DIR=$data" DURABILITY=async || result=1
  # Then start it again on that file: the startup line gives the time to
  # load COUNT products, and VmRSS once it is ready.
  SERVICE_BIN=$durable_bin start_service "$log" RUST_LOG=info "DATA_DIR=$data" ||
    die "the durable restart did not start; its log: $(cat "$log")"
  startup=$(grep -m1 'storage: sqlite' "$log" | sed 's/.*storage: //')
  rss_loaded=$(vm_rss_bytes)
  stop_service || die "the restarted service did not exit 0"
  echo "memory.sh: startup with $count products: $startup; VmRSS after loading $((rss_loaded / 1048576)) MiB; database $(du -sh "$data" | cut -f1)"
  rm -rf "$data"
fi
rm -f "$log"
exit "$result"
