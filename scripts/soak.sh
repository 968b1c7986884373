#!/usr/bin/env bash
# Soak: run the release binary under mixed load (POST /events and
# GET /products/{id} over keep-alive connections, plus new-connection POSTs)
# for DURATION seconds, sampling its threads and RSS every 5 s. Then checks:
#   - no HTTP errors beyond 503s (queue full / busy): /metrics 4xx = 0,
#     5xx = events_rejected_total{queue_full};
#   - every 202'd event applied (accepted = applied once the queue drains);
#   - thread count and RSS flat after warm-up (the first third):
#     threads within +16, RSS within +20% of the warm-up maximum;
#   - SIGTERM exits 0 with a clean shutdown summary.
# Prints one summary line; exits 0 on PASS, 1 on FAIL, 2 if it could not run.
# Env: DURATION (seconds, default 180), CONNECTIONS (per load, default 16),
#      BENCH_DIR (the wrk scripts and populate.sh; default bench/).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

duration=${DURATION:-180}
conns=${CONNECTIONS:-16}
bench=${BENCH_DIR:-bench}
log=$(mktemp /tmp/soak-service.XXXXXX.log)
die() { echo "soak: $*" >&2; exit 2; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_service >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v wrk >/dev/null || {
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
} || die "wrk is needed (apt-get install wrk)"
cargo build --release --quiet --bin product-update-service
start_service "$log" RUST_LOG=info,access=off || die "the service did not start: $(cat "$log")"
bash "$bench/populate.sh" "$svc_url" 10000 >&2 || die "populate failed"

sample() { awk '/^Threads:/ {t=$2} /^VmRSS:/ {r=$2} END {print t, r}' "/proc/$svc_pid/status"; }

ID_COUNT=10000 wrk -t1 -c"$conns" -d"${duration}s" -s "$bench/post.lua" "$svc_url" >/tmp/soak-post.txt 2>&1 &
pids+=($!)
ID_COUNT=10000 wrk -t1 -c"$conns" -d"${duration}s" -s "$bench/get.lua" "$svc_url" >/tmp/soak-get.txt 2>&1 &
pids+=($!)
ID_COUNT=10000 wrk -t1 -c2 -d"${duration}s" -H "Connection: close" -s "$bench/post.lua" "$svc_url" >/tmp/soak-close.txt 2>&1 &
pids+=($!)

samples=()
end=$((SECONDS + duration))
while [ "$SECONDS" -lt "$end" ]; do
  sleep 5
  samples+=("$(sample)")
done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

# Let the queue drain (bounded), then read the counters.
metric() { curl -s "$svc_url/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
for _ in $(seq 1 100); do
  [ "$(metric events_accepted_total)" = "$(metric events_applied_total)" ] && break
  sleep 0.1
done
accepted=$(metric events_accepted_total)
applied=$(metric events_applied_total)
queue_full=$(metric 'events_rejected_total{reason="queue_full"}')
m=$(curl -s "$svc_url/metrics")
c4xx=$(awk '/^http_requests_total.*status="4xx"/ {s += $2} END {print s + 0}' <<<"$m")
c5xx=$(awk '/^http_requests_total.*status="5xx"/ {s += $2} END {print s + 0}' <<<"$m")
requests=$(awk '/^http_requests_total/ {s += $2} END {print s + 0}' <<<"$m")

code=0
stop_service || code=$?
summary=$(grep -o 'shutdown complete: .*' "$log" || true)

verdict=PASS
reasons=()
[ "$c4xx" -eq 0 ] || { verdict=FAIL; reasons+=("4xx=$c4xx"); }
[ "$c5xx" -eq "${queue_full:-0}" ] || { verdict=FAIL; reasons+=("5xx=$c5xx != queue_full=$queue_full"); }
[ "$accepted" = "$applied" ] || { verdict=FAIL; reasons+=("accepted=$accepted applied=$applied"); }
[ "$code" -eq 0 ] || { verdict=FAIL; reasons+=("exit=$code"); }
case "$summary" in *"not_applied=0 drained=true"*) ;; *) verdict=FAIL; reasons+=("summary: $summary") ;; esac

# Flat after warm-up: compare the rest against the warm-up (first third).
n=${#samples[@]}
warm=$(( n / 3 > 0 ? n / 3 : 1 ))
read -r t_warm r_warm t_max r_max t_min r_min < <(printf '%s\n' "${samples[@]}" | awk -v w="$warm" '
  NR <= w { if ($1 > tw) tw = $1; if ($2 > rw) rw = $2 }
  NR > w  { if ($1 > tm) tm = $1; if ($2 > rm) rm = $2; if (!tn || $1 < tn) tn = $1; if (!rn || $2 < rn) rn = $2 }
  END { if (!tm) { tm = tw; rm = rw; tn = tw; rn = rw } print tw, rw, tm, rm, tn, rn }')
[ "$t_max" -le $((t_warm + 16)) ] || { verdict=FAIL; reasons+=("threads grew $t_warm -> $t_max"); }
[ "$r_max" -le $((r_warm * 12 / 10)) ] || { verdict=FAIL; reasons+=("RSS grew $r_warm -> $r_max KiB"); }

echo "soak: ${duration}s, $requests requests, accepted=$accepted applied=$applied 503(queue_full)=${queue_full:-0} 4xx=$c4xx, threads ${t_min}..${t_max} (warm-up max $t_warm), RSS $((r_min / 1024))..$((r_max / 1024)) MiB (warm-up max $((r_warm / 1024))), exit $code: $verdict${reasons:+ (${reasons[*]})}"
rm -f "$log"
[ "$verdict" = PASS ]
