#!/usr/bin/env bash
# The default build's dependency tree (normal and build dependencies, by
# crate name) must stay exactly scripts/deps.default.txt: durable storage
# and every other optional part are cargo features the default build does
# not compile. Exit 1 with the difference if it grew (or shrank: then
# update the file in the same commit, saying why).
#
#   bash scripts/deps.sh            # check
#   bash scripts/deps.sh --update   # rewrite the expected list
set -euo pipefail
cd "$(dirname "$0")/.."
expected=scripts/deps.default.txt
actual=$(cargo tree -p product-update-service -e normal,build --prefix none -f '{p}' \
  | sed 's/ (.*//; s/ v[0-9].*//' | sort -u)
if [ "${1:-}" = "--update" ]; then
  echo "$actual" > "$expected"
  echo "deps: wrote $expected ($(wc -l < "$expected") crates)"
  exit 0
fi
if ! diff -u "$expected" <(echo "$actual"); then
  echo "deps: the default build's dependency tree changed (above: - expected, + now)" >&2
  exit 1
fi
# The optional backends are really optional.
for crate in rusqlite libsqlite3-sys tokio postgres loom; do
  if grep -qx "$crate" <<<"$actual"; then
    echo "deps: $crate is in the default build" >&2
    exit 1
  fi
done
echo "deps: the default build has the expected $(wc -l <<<"$actual") crates, and no storage backend"
