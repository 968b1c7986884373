#!/usr/bin/env bash
# Smoke test: start the release binary on a free loopback port, run the
# README's curl tour against it exactly as written (every "#>" line is the
# exact answer), a few more checks, stop it with SIGTERM and check the
# shutdown summary. Exits non-zero on the first mismatch.
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

# The README's curl tour, run as written: the fenced block after the
# "smoke.sh runs the next block" marker. Each command (its lines up to one
# that does not end in a backslash) runs with BASE set to this service; the
# "#> " lines after it are its exact output. Comments and the BASE= line are
# skipped. A command without "#>" lines is an error: the tour shows every
# answer.
tour=$(awk '/<!-- smoke.sh runs the next block/ { marked = 1; next }
  marked && /^```sh$/ { inside = 1; next }
  inside && /^```$/ { exit }
  inside { print }' README.md)
[ -n "$tour" ] || fail "no tour block found in README.md"
cmd='' want='' ran=0
check_tour_command() {
  [ -n "$cmd" ] || return 0
  [ -n "$want" ] || fail "tour command has no '#>' output line: $cmd"
  local got
  got=$(BASE=$BASE bash -c "$cmd") || fail "tour command failed: $cmd"
  [ "$got" = "$want" ] || fail "tour: $cmd
  README says: $want
  service says: $got"
  ran=$((ran + 1))
  cmd='' want=''
}
while IFS= read -r line; do
  case "$line" in
    '#> '*) want=${want:+$want$'\n'}${line#'#> '} ;;
    '#'* | '' | BASE=*) ;;
    *)
      # A new command begins unless the previous line continued this one.
      if [ -n "$cmd" ] && [ "${cmd: -1}" != "\\" ]; then check_tour_command; fi
      cmd=${cmd:+$cmd$'\n'}$line
      ;;
  esac
done <<<"$tour"
check_tour_command
echo "smoke: ok: the README's tour ($ran commands) answers exactly as written"

# Beyond the tour: what trips people up, and that a refusal changed nothing.
expect "curl -d without a JSON content type" 415 \
  "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/events" -d '{"product_id":"x","stock":1}')"
expect "problem content type" 'application/problem+json' \
  "$(curl -s -o /dev/null -w '%{content_type}' "$BASE/products/nope")"
expect "wrong method" 405 "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$BASE/events")"
expect "refused events were not applied" '{"product_id":"abc123","price":49.99,"stock":97}' \
  "$(curl -s "$BASE/products/abc123")"

code=0
stop_service || code=$?
expect "exit code after SIGTERM" 0 "$code"
summary=$(grep -o 'shutdown complete: .*' "$log" || true)
case "$summary" in
  *"accepted=6 applied=6 panicked=0 not_applied=0 drained=true"*) echo "smoke: ok: $summary" ;;
  *) fail "shutdown summary: '$summary'" ;;
esac
echo "smoke: all checks passed"
