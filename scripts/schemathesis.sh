#!/usr/bin/env bash
# Contract test: schemathesis generates requests from GET /openapi.json
# itself (valid ones, invalid ones, and stateful sequences that follow the
# document's links) and checks every answer against the document. Runs
# against the release binary on a free loopback port; fails on any failure.
#
# Every check is on (`--checks all`), in every phase (examples, coverage,
# fuzzing, stateful), and none is excluded or loosened: where schemathesis
# and the service disagreed, the document or the service was fixed. If a
# check ever has to be excluded because it does not fit this API, say why
# right here, next to the option, and nowhere else.
#
# Usage: bash scripts/schemathesis.sh
# Env: ST_TIME (seconds, default 60), ST_SEED (default 1), BIN (a prebuilt
#      binary instead of `cargo build --release`), ST_REPORT_DIR (keeps the
#      JUnit report and a replayable cassette there).
# Installs the pinned schemathesis with pip when it is missing or another
# version.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: a new schemathesis can add checks or change generation; move the
# pin on purpose, and run this script for at least ST_TIME=600 when you do.
version=4.32.5
if [ "$(schemathesis --version 2>/dev/null | awk '{print $NF}')" != "$version" ]; then
  echo "schemathesis.sh: installing schemathesis==$version" >&2
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version" >&2
fi

if [ -n "${BIN:-}" ]; then
  export SERVICE_BIN=$BIN
else
  cargo build --release --quiet --bin product-update-service
fi
log=$(mktemp)
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_service >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
start_service "$log" RUST_LOG=warn,product_update_service=info ||
  { echo "schemathesis.sh: the service did not start:" >&2; cat "$log" >&2; exit 2; }

report=()
if [ -n "${ST_REPORT_DIR:-}" ]; then
  report=("--report=junit,vcr" --report-dir "$ST_REPORT_DIR")
fi
status=0
# The serializer of application/x-ndjson (batch requests): a string, sent
# as it is.
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" \
schemathesis run "$svc_url/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-time "${ST_TIME:-60}" \
  --seed "${ST_SEED:-1}" \
  --request-timeout 10 \
  "${report[@]}" || status=$?

# The service must have survived every generated request and still shut
# down cleanly, with every accepted event applied.
code=0
stop_service || code=$?
summary=$(grep -o 'shutdown complete: .*' "$log" || true)
if [ "$code" -ne 0 ] || [ -z "$summary" ]; then
  echo "schemathesis.sh: the service did not shut down cleanly (exit $code):" >&2
  cat "$log" >&2
  exit 1
fi
echo "schemathesis.sh: service $summary"
exit "$status"
