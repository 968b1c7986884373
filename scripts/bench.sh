#!/usr/bin/env bash
# HTTP benchmark of the service against the anchors of bench/ (see
# bench/README.md), all on loopback, in one run:
#
#   1. builds the release binary; installs wrk and nginx-light if missing;
#   2. starts the anchors (nginx, tiny_bare, tiny_parse, std_inline) and the service on a
#      free loopback port (BIND_ADDR=127.0.0.1, RUST_LOG=warn but the
#      startup and shutdown lines);
#   3. runs matrix.sh: tiny_parse and the service interleaved for ROUNDS
#      rounds (what the targets compare), and nginx, tiny_bare and
#      std_inline (the ceiling of thread-per-connection) for
#      CONTEXT_ROUNDS rounds (context only: one round keeps a default run
#      under 15 minutes; CONTEXT_ROUNDS=$ROUNDS interleaves all four);
#   4. prints summarize.sh's table and, per scenario, service / tiny_parse
#      for throughput, p99 and server CPU per request (medians over the
#      rounds), PASS/FAIL against its targets:
#        - throughput: keep-alive POST and GET at 32 and 256 connections
#          >= 1.4x; a new connection per request at 32 >= 1.1x; every
#          1-connection row >= 1.0x;
#        - p99 <= 1.2x everywhere, and <= 1.0 ms at 32 keep-alive
#          connections;
#        - server CPU per request, POST at 32 connections: <= 0.6x.
#      A verdict marked "(unstable)" rests on rounds that disagree (one
#      below 2/3 of the best): read the raw rounds before trusting it.
#
# `bench.sh --durable` measures the durable modes instead: the
# release binary built with `--features sqlite`, four instances (memory
# mode, DURABILITY=commit, fsync and async, each with its own DATA_DIR
# in the run directory) interleaved for ROUNDS rounds of POST keep-alive
# at 1, 32 and 256 connections; the table gives each mode's req/s and p99
# against memory mode's, PASS/FAIL against the targets: commit >= 0.6x
# and async >= 0.9x memory mode's req/s at 32 and 256 connections (fsync:
# measured, no target; it is bound by the disk's flush time). The data
# directories are in the run directory, or under DURABLE_DIR if set (to
# measure another disk, or tmpfs to take the disk out).
#
# `bench.sh --postgres` measures PostgreSQL mode: the release
# binary built with `--features postgres`, a throwaway PostgreSQL 15
# server in the run directory (its defaults: fsync and synchronous_commit
# on; pg_stat_statements loaded), one instance on database `one` and two on
# database `two`, and a memory-mode instance. memory and one instance are
# interleaved by matrix.sh; the two instances are then loaded at once, each
# with the scenario's connections, and their req/s summed. The table gives
# req/s against memory mode's, PASS/FAIL against the targets (one instance
# >= 0.4x memory's POST req/s at 32 connections, >= 0.5x its GET), and what
# an event costs in the database during one instance's POST runs: WAL
# bytes (pg_stat_wal), statements (round trips) and rows written per event
# (pg_stat_statements).
#
# Everything started here is stopped on exit. Raw results, wrk output and
# logs are kept in the run directory it prints; `bench.sh --report
# RUN_DIR/results.txt` prints the tables for them again.
#
# Env: ROUNDS (3), DURATION (10s), CONTEXT_ROUNDS (1, 0 = skip nginx,
#      tiny_bare and std_inline), SCENARIOS (the nine below), BENCH_DIR (bench/),
#      STRICT (1 = exit 1 when a target fails), plus matrix.sh's PAUSE and
#      load.sh's WRK_THREADS, WRK_TIMEOUT.
# Exit: 0 measured, 1 measured and a target failed with STRICT=1,
#       2 could not measure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bench=$(cd "${BENCH_DIR:-$(dirname "$0")/../bench}" && pwd)
cd "$repo"
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s}
context_rounds=${CONTEXT_ROUNDS:-1}
# --report reads the scenarios from the results file unless they are given.
given_scenarios=${SCENARIOS:-}
export SCENARIOS=${SCENARIOS:-post-c1 post-c32 post-c256 post-close-c1 post-close-c32 get-c1 get-c32 get-c256 get-close-c32}

die() { echo "bench.sh: $*" >&2; exit 2; }

# Prints summarize.sh's table and the service / tiny_parse table for a
# results file. Returns 0 all PASS, 1 some FAIL, 2 some scenario unmeasured.
report() {
  bash "$bench/summarize.sh" "$1"
  echo
  awk -v scenarios="$SCENARIOS" -v max_p99=1.2 '
function median(list,   a, n, i, j, t) {
  n = split(list, a, " ")
  if (n == 0) return ""
  for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j+1] = a[j]; a[j+1] = t }
  lo = a[1]; hi = a[n]
  return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
function sum(list,   a, n, i, s) { n = split(list, a, " "); s = 0; for (i = 1; i <= n; i++) s += a[i]; return s }
# The throughput target of a scenario.
function min_rps(sc) {
  if (sc ~ /^(post|get)-c(32|256)$/) return 1.4
  if (sc ~ /-close-c32$/) return 1.1
  if (sc ~ /-c1$/) return 1.0
  return 1.0
}
{
  off = ($1 ~ /^round=/) ? 1 : 0
  name = $(1+off); sc = $(2+off)
  for (i = 3 + off; i <= NF; i++) { split($i, kv, "="); v[name, sc, kv[1]] = v[name, sc, kv[1]] " " kv[2] }
}
END {
  print "| scenario | service req/s | tiny_parse req/s | throughput ratio (target) | service p99 ms | tiny_parse p99 ms | p99 ratio (<= " max_p99 ") | service CPU us/req | tiny_parse CPU us/req | service errors | verdict |"
  print "|---|---|---|---|---|---|---|---|---|---|---|"
  n = split(scenarios, sc_list, " ")
  for (k = 1; k <= n; k++) {
    sc = sc_list[k]
    # A round below 2/3 of the best round of the same target: the medians
    # are shaky (see the notes that bench.sh prints under the table).
    sr = median(v["service", sc, "rps"]); shaky = (hi > 0 && lo < hi * 2 / 3)
    tr = median(v["tiny_parse", sc, "rps"]); shaky = shaky || (hi > 0 && lo < hi * 2 / 3)
    sp = median(v["service", sc, "p99_us"]); tp = median(v["tiny_parse", sc, "p99_us"])
    sc_cpu = median(v["service", sc, "cpu_us_per_req"]); tc_cpu = median(v["tiny_parse", sc, "cpu_us_per_req"])
    errs = sum(v["service", sc, "non2xx"]) + sum(v["service", sc, "err_connect"]) + sum(v["service", sc, "err_read"]) + sum(v["service", sc, "err_write"]) + sum(v["service", sc, "err_timeout"])
    if (sr == "" || tr == "" || sr + 0 == 0 || tr + 0 == 0 || tp + 0 == 0 || v["service", sc, "error"] != "" || v["tiny_parse", sc, "error"] != "") {
      printf "| %s | %s | %s | - | - | - | - | - | - | %d | NO DATA |\n", sc, sr, tr, errs
      nodata++; continue
    }
    rr = sr / tr; pr = sp / tp; target = min_rps(sc)
    why = ""
    if (rr < target) why = why sprintf(" throughput %.2fx < %.1fx;", rr, target)
    if (pr > max_p99) why = why sprintf(" p99 %.2fx > %.1fx;", pr, max_p99)
    if (sc ~ /^(post|get)-c32$/ && sp > 1000) why = why sprintf(" p99 %.2f ms > 1.0 ms;", sp / 1000)
    cpu = "-"
    if (sc_cpu != "" && tc_cpu != "" && tc_cpu + 0 > 0) {
      cr = sc_cpu / tc_cpu; cpu = sprintf("%.2fx", cr)
      if (sc == "post-c32" && cr > 0.6) why = why sprintf(" CPU %.2fx > 0.6x;", cr)
    }
    ok = (why == "")
    verdict = (ok ? "PASS" : "FAIL") (shaky ? " (unstable)" : "")
    if (!ok) failed++
    if (shaky) unstable++
    printf "| %s | %.0f | %.0f | %.2fx (%.1fx) | %.2f | %.2f | %.2fx | %s | %s | %d | %s |\n", sc, sr, tr, rr, target, sp / 1000, tp / 1000, pr, sc_cpu, tc_cpu, errs, verdict
    lines[k] = sprintf("%s %s: throughput %.2fx tiny_parse (target %.1fx), p99 %.2fx, CPU/req %s%s", verdict, sc, rr, target, pr, cpu, why == "" ? "" : " --" why)
  }
  print ""
  for (k = 1; k <= n; k++) if (k in lines) print lines[k]
  printf "overall: %d of %d scenarios PASS%s\n", n - failed - nodata, n, nodata ? sprintf(", %d NO DATA", nodata) : ""
  if (unstable) print "unstable: a round of service or tiny_parse ran at < 2/3 of its best round; with tiny_http this is usually connections parked in its task pool (a keep-alive run at c32 that runs like c1). Compare the rounds in the raw results before trusting that ratio."
  exit nodata ? 2 : (failed ? 1 : 0)
}' "$1"
}

# The median of a space-separated list, for the durable and PostgreSQL
# tables' awk programs.
awk_median='
function median(list,   a, n, i, j, t) {
  n = split(list, a, " ")
  if (n == 0) return ""
  for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j+1] = a[j]; a[j+1] = t }
  return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
'

# The durable modes' table: each mode against memory mode, per scenario.
# Returns 0 all PASS, 1 some FAIL, 2 some scenario unmeasured.
report_durable() {
  awk -v scenarios="$SCENARIOS" "$awk_median"'
function sum(list,   a, n, i, s) { n = split(list, a, " "); s = 0; for (i = 1; i <= n; i++) s += a[i]; return s }
# The throughput target of a mode in a scenario; 0: none.
function target(mode, sc) {
  if (sc !~ /^post-c(32|256)$/) return 0
  if (mode == "commit") return 0.6
  if (mode == "async") return 0.9
  return 0
}
{
  off = ($1 ~ /^round=/) ? 1 : 0
  name = $(1+off); sc = $(2+off)
  for (i = 3 + off; i <= NF; i++) { split($i, kv, "="); v[name, sc, kv[1]] = v[name, sc, kv[1]] " " kv[2] }
}
END {
  print "| scenario | mode | req/s | vs memory (target) | p99 ms | CPU us/req | errors | verdict |"
  print "|---|---|---|---|---|---|---|---|"
  n = split(scenarios, sc_list, " "); m = split("memory commit fsync async", modes, " ")
  for (k = 1; k <= n; k++) {
    sc = sc_list[k]; base = median(v["memory", sc, "rps"])
    for (j = 1; j <= m; j++) {
      mode = modes[j]; r = median(v[mode, sc, "rps"]); p = median(v[mode, sc, "p99_us"])
      cpu = median(v[mode, sc, "cpu_us_per_req"])
      errs = sum(v[mode, sc, "non2xx"]) + sum(v[mode, sc, "err_connect"]) + sum(v[mode, sc, "err_read"]) + sum(v[mode, sc, "err_write"]) + sum(v[mode, sc, "err_timeout"])
      if (r == "" || base == "" || base + 0 == 0 || v[mode, sc, "error"] != "") {
        printf "| %s | %s | %s | - | - | - | %d | NO DATA |\n", sc, mode, r, errs; nodata++; continue
      }
      t = target(mode, sc); ratio = r / base
      verdict = "-"
      if (t > 0) { verdict = (ratio >= t && errs == 0) ? "PASS" : "FAIL"; if (verdict == "FAIL") failed++; checked++ }
      shown = (t > 0) ? sprintf(" (%.1fx)", t) : ""
      printf "| %s | %s | %.0f | %.2fx%s | %.2f | %s | %d | %s |\n", sc, mode, r, ratio, shown, p / 1000, cpu, errs, verdict
    }
  }
  printf "\noverall: %d of %d durable targets PASS%s\n", checked - failed, checked, nodata ? sprintf(", %d NO DATA", nodata) : ""
  exit nodata ? 2 : (failed ? 1 : 0)
}' "$1"
}

# PostgreSQL mode's table: one and two instances against memory mode.
# Returns 0 all PASS, 1 some FAIL, 2 some scenario unmeasured.
report_postgres() {
  awk -v scenarios="$SCENARIOS" "$awk_median"'
function target(sc) { return sc == "post-c32" ? 0.4 : (sc == "get-c32" ? 0.5 : 0) }
/^dbcost / { for (i = 2; i <= NF; i++) { split($i, kv, "="); cost[kv[1]] = kv[2] }; next }
$1 ~ /^round=/ {
  split($1, rr, "="); name = $2; sc = $3
  for (i = 4; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  errs = f["non2xx"] + f["err_connect"] + f["err_read"] + f["err_write"] + f["err_timeout"]
  if (name ~ /^postgres-2/) {
    pair_rps[sc, rr[2]] += f["rps"]; if (f["p99_us"] > pair_p99[sc, rr[2]]) pair_p99[sc, rr[2]] = f["p99_us"]
    pair_errs[sc] += errs; rounds[sc] = rounds[sc] " " rr[2]
  } else {
    rps[name, sc] = rps[name, sc] " " f["rps"]; p99[name, sc] = p99[name, sc] " " f["p99_us"]; errors[name, sc] += errs
  }
}
END {
  print "| scenario | instances | req/s | vs memory (target) | p99 ms | errors | verdict |"
  print "|---|---|---|---|---|---|---|"
  n = split(scenarios, sc_list, " ")
  for (k = 1; k <= n; k++) {
    sc = sc_list[k]; base = median(rps["memory", sc])
    if (base == "" || base + 0 == 0) { printf "| %s | memory | - | - | - | - | NO DATA |\n", sc; nodata++; continue }
    printf "| %s | memory mode | %.0f | 1.00x | %.2f | %d | - |\n", sc, base, median(p99["memory", sc]) / 1000, errors["memory", sc]
    r = median(rps["postgres-1", sc])
    if (r == "") { printf "| %s | 1 | - | - | - | - | NO DATA |\n", sc; nodata++ }
    else {
      t = target(sc); ratio = r / base; verdict = "-"
      if (t > 0) { verdict = (ratio >= t && errors["postgres-1", sc] == 0) ? "PASS" : "FAIL"; if (verdict == "FAIL") failed++; checked++ }
      printf "| %s | 1 | %.0f | %.2fx%s | %.2f | %d | %s |\n", sc, r, ratio, (t > 0 ? sprintf(" (%.1fx)", t) : ""), median(p99["postgres-1", sc]) / 1000, errors["postgres-1", sc], verdict
    }
    m = split(rounds[sc], rl, " "); sums = ""; p99s = ""; seen = ""
    for (i = 1; i <= m; i++) { if (index(seen, " " rl[i] " ")) continue; seen = seen " " rl[i] " "; sums = sums " " pair_rps[sc, rl[i]]; p99s = p99s " " pair_p99[sc, rl[i]] }
    if (sums == "") { printf "| %s | 2 | - | - | - | - | NO DATA |\n", sc; nodata++ }
    else printf "| %s | 2 (summed) | %.0f | %.2fx | %.2f | %d | - |\n", sc, median(sums), median(sums) / base, median(p99s) / 1000, pair_errs[sc]
  }
  if (cost["events"] > 0) {
    e = cost["events"]
    printf "\ndatabase cost of one instance'"'"'s POST runs: %d events, %.0f WAL bytes/event, %.3f statements/event (round trips), %.2f rows written/event\n", e, cost["wal_bytes"] / e, cost["statements"] / e, cost["rows"] / e
  }
  printf "\noverall: %d of %d PostgreSQL targets PASS%s\n", checked - failed, checked, nodata ? sprintf(", %d NO DATA", nodata) : ""
  exit nodata ? 2 : (failed ? 1 : 0)
}' "$1"
}

# Prints a run's table with REPORT_FN and exits: 2 if a scenario could not
# be measured, 1 if a target failed and STRICT=1, else 0.
finish() {
  local status=0
  echo
  "$1" "$results" || status=$?
  [ "$status" -eq 2 ] && die "some scenarios could not be measured (see $run/wrk.log)"
  [ "$status" -eq 1 ] && [ "${STRICT:-0}" = 1 ] && exit 1
  exit 0
}

# `bench.sh --report RESULTS_FILE`: only print the tables for an earlier run.
if [ "${1:-}" = --report ]; then
  status=0
  [ -r "${2:?usage: bench.sh --report RESULTS_FILE}" ] || die "cannot read $2"
  # The scenarios measured, in the order of the file.
  measured=$(awk '$1 ~ /^round=/ { print $3 }' "$2" | awk '!seen[$0]++' | xargs)
  if grep -q '^round=[0-9]* postgres-1 ' "$2"; then
    SCENARIOS=${SCENARIOS_POSTGRES:-$measured} report_postgres "$2" || status=$?
  elif grep -q '^round=[0-9]* memory ' "$2"; then
    SCENARIOS=${SCENARIOS_DURABLE:-$measured} report_durable "$2" || status=$?
  else
    SCENARIOS=${given_scenarios:-$measured} report "$2" || status=$?
  fi
  [ "$status" -ne 2 ] || exit 2
  exit 0
fi

run=$(mktemp -d /tmp/bench-sh.XXXXXX)
results=$run/results.txt
export WRK_LOG=$run/wrk.log
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"


# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_service || echo "bench.sh: the service exited with status $? on SIGTERM" >&2
  local pidfiles=("$run"/*.pids)
  [ -e "${pidfiles[0]}" ] && bash "$bench/stop_pids.sh" "${pidfiles[@]}" >&2
  echo "bench.sh: raw results and logs in $run" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



# `bench.sh --durable`: the four storage modes against each other.
if [ "${1:-}" = --durable ]; then
  command -v wrk >/dev/null || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2; }
  # Its own target dir: the default build in target/ stays the default one.
  export CARGO_TARGET_DIR=$repo/target/durable
  cargo build --release --quiet --features sqlite --bin product-update-service
  export SCENARIOS=${SCENARIOS_DURABLE:-post-c1 post-c32 post-c256}
  targets=() pids=()
  data_root=${DURABLE_DIR:-$run}
  mkdir -p "$data_root"
  # shellcheck disable=SC2317  # called by the EXIT trap
  cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "bench.sh: raw results and logs in $run" >&2
  }
  for mode in memory commit fsync async; do
    env=("RUST_LOG=warn,product_update_service=info")
    [ "$mode" = memory ] || env+=("DATA_DIR=$data_root/data-$mode" "DURABILITY=$mode")
    start_service "$run/$mode.log" "${env[@]}" ||
      die "the $mode instance did not start; its log: $(cat "$run/$mode.log")"
    targets+=("$mode=$svc_url=$svc_pid") pids+=("$svc_pid")
    svc_pid=
  done
  {
    echo "bench.sh --durable: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, data in $data_root ($(df -hT "$data_root" | awk 'NR==2 {print $2 " on " $1}'))"
    echo "bench.sh: commit $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + local changes')"
    echo "bench.sh: ROUNDS=$ROUNDS DURATION=$DURATION"
  }
  OUT=$results bash "$bench/matrix.sh" "${targets[@]}" >&2
  for k in "${!pids[@]}"; do
    kill -0 "${pids[$k]}" 2>/dev/null || die "${targets[$k]%%=*} died during the run; see $run"
  done
  finish report_durable
fi

# `bench.sh --postgres`: PostgreSQL mode, one and two instances.
if [ "${1:-}" = --postgres ]; then
  command -v wrk >/dev/null || { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2; }
  pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
  [ -x "$pg_bin/initdb" ] || die "no PostgreSQL 15 in $pg_bin: apt-get install postgresql-15 (or set PG_BIN)"
  export CARGO_TARGET_DIR=$repo/target/postgres
  cargo build --release --quiet --features postgres --bin product-update-service
  export SCENARIOS=${SCENARIOS_POSTGRES:-post-c32 post-c256 get-c32 get-c256}
  pids=()
  pg_data=$run/pg
  # PostgreSQL refuses to run as root: as root, as nobody.
  as_pg=()
  if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid nobody --regid nogroup --clear-groups --); chown nobody: "$run"; fi
  pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ "$(id -u)" = 0 ]; then pg_user=nobody; else pg_user=$(id -un); fi
  # shellcheck disable=SC2317  # called by the EXIT trap
  cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [ -d "$pg_data" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
    echo "bench.sh: raw results and logs in $run" >&2
  }
  "${as_pg[@]}" "$pg_bin/initdb" --auth=trust --encoding=UTF8 --locale=C -U "$pg_user" -D "$pg_data" >"$run/initdb.log" 2>&1 ||
    die "initdb failed: $(cat "$run/initdb.log")"
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$run/postgres.log" -w -o \
    "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$run -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null || die "PostgreSQL did not start: $(cat "$run/postgres.log")"
  psql_in() { "${as_pg[@]}" "$pg_bin/psql" -X -A -t -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d "$1" -c "$2"; }
  for db in one two; do psql_in postgres "CREATE DATABASE $db" >/dev/null; done
  psql_in one "CREATE EXTENSION pg_stat_statements" >/dev/null
  targets=()
  for name in memory postgres-1 postgres-2a postgres-2b; do
    env=("RUST_LOG=warn,product_update_service=info" ${DB_POOL_SIZE:+"DB_POOL_SIZE=$DB_POOL_SIZE"})
    case $name in
      postgres-1) env+=("DATABASE_URL=postgres://$pg_user@127.0.0.1:$pg_port/one") ;;
      postgres-2*) env+=("DATABASE_URL=postgres://$pg_user@127.0.0.1:$pg_port/two") ;;
    esac
    start_service "$run/$name.log" "${env[@]}" ||
      die "the $name instance did not start; its log: $(cat "$run/$name.log")"
    targets+=("$name=$svc_url=$svc_pid") pids+=("$svc_pid")
    svc_pid=
  done
  {
    echo "bench.sh --postgres: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') (fsync and synchronous_commit on) in $run/pg"
    echo "bench.sh: commit $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + local changes')"
    echo "bench.sh: ROUNDS=$ROUNDS DURATION=$DURATION"
  }
  # What the database counts for `one`: WAL bytes (whole cluster), seqs
  # given out, statements run (pg_stat_statements, BEGIN and COMMIT
  # included), rows inserted or updated.
  db_counters() {
    psql_in one "SELECT (SELECT wal_bytes FROM pg_stat_wal), (SELECT last_seq FROM seq_counter),
      (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'one'),
      (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables)" | tr '|' ' '
  }
  for t in "${targets[0]}" "${targets[1]}" "${targets[2]}"; do
    IFS='=' read -r name url _ <<<"$t"
    echo "[$name] $("$bench/populate.sh" "$url" "${POPULATE:-10000}" | tr '\n' ' ')" >&2
  done
  # 1. memory mode and one instance, interleaved.
  read -r wal0 seq0 calls0 rows0 < <(db_counters)
  OUT=$results POPULATE=0 bash "$bench/matrix.sh" "${targets[0]}" "${targets[1]}" >&2
  sleep 1 # the statistics collector's flush interval
  read -r wal1 seq1 calls1 rows1 < <(db_counters)
  echo "dbcost events=$((seq1 - seq0)) wal_bytes=$((wal1 - wal0)) statements=$((calls1 - calls0)) rows=$((rows1 - rows0))" >>"$results"
  # 2. two instances on one database, loaded at once.
  IFS='=' read -r _ url_a pid_a <<<"${targets[2]}"
  IFS='=' read -r _ url_b pid_b <<<"${targets[3]}"
  read -r -a scen <<<"$SCENARIOS"
  for r in $(seq 1 "$ROUNDS"); do
    for sc in "${scen[@]}"; do
      LABEL=postgres-2a PIDS=$pid_a "$bench/load.sh" "$url_a" "$sc" >"$run/pair-a.txt" &
      LABEL=postgres-2b PIDS=$pid_b "$bench/load.sh" "$url_b" "$sc" >"$run/pair-b.txt"
      wait $!
      for f in "$run/pair-a.txt" "$run/pair-b.txt"; do echo "round=$r $(cat "$f")" | tee -a "$results" >&2; done
      sleep "${PAUSE:-1}"
    done
  done
  for k in "${!pids[@]}"; do
    kill -0 "${pids[$k]}" 2>/dev/null || die "${targets[$k]%%=*} died during the run; see $run"
  done
  finish report_postgres
fi

# 1. Tools and binary.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: installing ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
export PATH=$PATH:/usr/sbin
cargo build --release --quiet --bin product-update-service

# 2. Anchors and service.
RUN_DIR=$run bash "$bench/start_anchors.sh" >"$run/targets.txt"
# warn, but for the startup line start_service waits for (no access lines).
start_service "$run/service.log" RUST_LOG=warn,product_update_service=info ||
  die "the service did not start; its log: $(cat "$run/service.log")"
service_url=$svc_url
svc="service=$service_url=$svc_pid"
tiny_parse=$(grep '^tiny_parse=' "$run/targets.txt") || die "tiny_parse did not start"
mapfile -t context < <(grep -E '^(nginx|tiny_bare|std_inline)=' "$run/targets.txt")

{
  echo "bench.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
  echo "bench.sh: commit $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + local changes')"
  echo "bench.sh: ROUNDS=$ROUNDS DURATION=$DURATION CONTEXT_ROUNDS=$context_rounds, service pid $svc_pid on $service_url"
}

# 3. Load. Progress lines go to stderr; results accumulate in $results.
matrix() { OUT=$results bash "$bench/matrix.sh" "$@" >&2; }
if [ "$context_rounds" = "$ROUNDS" ]; then
  matrix "${context[@]}" "$tiny_parse" "$svc"
else
  [ "$context_rounds" -gt 0 ] && ROUNDS=$context_rounds matrix "${context[@]}"
  matrix "$tiny_parse" "$svc"
fi
kill -0 "$svc_pid" 2>/dev/null || die "the service died during the run; see $run/service.log"

# 4. Tables.
finish report
