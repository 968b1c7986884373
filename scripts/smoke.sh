#!/usr/bin/env bash
# Smoke test: start the release binary on a free loopback port, run the
# README's curl tour against it, check every answer, stop it with SIGTERM and
# check the shutdown summary. Exits non-zero on the first mismatch.
# Usage: bash scripts/smoke.sh   (env: BIN to use a prebuilt binary)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${BIN:-}" ]; then
  export SERVICE_BIN=$BIN
else
  cargo build --release --quiet
fi
log=$(mktemp)
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
cleanup() {
  if [ -n "$svc_pid" ]; then kill -KILL "$svc_pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; echo "--- service log:" >&2; cat "$log" >&2; exit 1; }

start_service "$log" RUST_LOG=info || fail "the service did not start"
BASE=$svc_url
echo "smoke: service at $BASE"

# expect NAME EXPECTED ACTUAL
expect() { [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"; echo "smoke: ok: $1"; }

# get_until PATH EXPECTED: the 202 means queued; wait (bounded) until applied.
get_until() {
  local got=
  for _ in $(seq 1 100); do
    got=$(curl -s "$BASE$1")
    [ "$got" = "$2" ] && break
    sleep 0.05
  done
  expect "GET $1" "$2" "$got"
}

post() { curl -s -X POST "$BASE/events" -H 'Content-Type: application/json' -d "$1"; }

expect "POST full event" '{"status":"accepted","seq":1,"product_id":"abc123"}' \
  "$(post '{"product_id":"abc123","price":49.99,"stock":100}')"
get_until /products/abc123 '{"product_id":"abc123","price":49.99,"stock":100}'

expect "POST partial event" '{"status":"accepted","seq":2,"product_id":"abc123"}' \
  "$(post '{"product_id":"abc123","stock":97}')"
get_until /products/abc123 '{"product_id":"abc123","price":49.99,"stock":97}'

expect "POST price only" '{"status":"accepted","seq":3,"product_id":"new-1"}' \
  "$(post '{"product_id":"new-1","price":5}')"
get_until /products/new-1 '{"product_id":"new-1","price":5,"stock":null}'

bad=$(post '{"product_id":"abc123","stok":5}')
expect "typo is refused" 'unknown_field' "$(sed -n 's/.*"code":"\([a-z_]*\)".*/\1/p' <<<"$bad")"
expect "typo is named" 'stok' "$(sed -n 's/.*"field":"\([a-z_]*\)".*/\1/p' <<<"$bad")"

expect "curl -d without a JSON content type" 415 \
  "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/events" -d '{"product_id":"x","stock":1}')"
expect "unknown product" 404 "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/products/nope")"
expect "problem content type" 'application/problem+json' \
  "$(curl -s -o /dev/null -w '%{content_type}' "$BASE/products/nope")"
expect "wrong method" 405 "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$BASE/events")"
expect "refused event was not applied" '{"product_id":"abc123","price":49.99,"stock":97}' \
  "$(curl -s "$BASE/products/abc123")"

code=0
stop_service || code=$?
expect "exit code after SIGTERM" 0 "$code"
summary=$(grep -o 'shutdown complete: .*' "$log" || true)
case "$summary" in
  *"accepted=3 applied=3 panicked=0 not_applied=0 drained=true"*) echo "smoke: ok: $summary" ;;
  *) fail "shutdown summary: '$summary'" ;;
esac
echo "smoke: all checks passed"
