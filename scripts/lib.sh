# shellcheck shell=bash
# shellcheck disable=SC2034 # svc_pid and svc_url are for the scripts that source this file
# Shared by the scripts that run the release binary (smoke, bench, memory).
# Source it; it defines:
#   start_service LOG [VAR=value ...]
#       starts $SERVICE_BIN (default: the release binary under
#       CARGO_TARGET_DIR or target/) on 127.0.0.1 with
#       PORT=0 (the OS picks a free port) and the given environment, logging
#       to LOG; waits (at most 10 s) for its startup line, which names the
#       port; sets svc_pid and svc_url. Returns 1 if it did not start.
#   stop_service
#       SIGTERM, up to 20 s to exit, then SIGKILL; returns the exit status.

svc_pid=
svc_url=

start_service() {
  local log=$1 addr=
  shift
  env PORT=0 BIND_ADDR=127.0.0.1 "$@" \
    "${SERVICE_BIN:-${CARGO_TARGET_DIR:-target}/release/product-update-service}" \
    2>"$log" >/dev/null &
  svc_pid=$!
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)
    if [ -n "$addr" ]; then
      svc_url="http://$addr"
      return 0
    fi
    kill -0 "$svc_pid" 2>/dev/null || break
    sleep 0.1
  done
  stop_service || true
  return 1
}

stop_service() {
  [ -n "$svc_pid" ] || return 0
  local pid=$svc_pid rc=0 deadline=$((SECONDS + 20))
  svc_pid=
  kill -TERM "$pid" 2>/dev/null || true
  # bash reaps a finished child at once, so kill -0 fails when it is gone.
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  return "$rc"
}
