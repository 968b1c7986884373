#!/usr/bin/env bash
# Builds and runs tests/dependent-crate, a crate that uses the service as a
# dev-dependency the way users' test suites do: once by path (as committed),
# once by git (a file:// URL to this repository, so the committed HEAD).
# Both must build with no [patch] in the dependent: the tiny_http fork is a
# path dependency inside this repository. Its test file, tests/readme.rs,
# is the README's Rust block under "Using it from your tests", copied
# verbatim at each run: the README shows a whole test file, and this is
# where it runs as one. Fails on the first failure, and if the file's
# tests did not run.
# Env: CARGO_TARGET_DIR (default target/dependent).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/dependent}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The README's Rust block under "## Using it from your tests": a whole test
# file (marked `rust,test_harness`, so that rustdoc runs its #[test] too).
example=$(awk '
  /^## / { in_section = ($0 == "## Using it from your tests") }
  in_section && /^```rust/ { in_block = 1; next }
  in_block && /^```$/ { exit }
  in_block { print }
' "$repo/README.md")
[ -n "$example" ] || { echo "dependent.sh: README.md has no Rust block under '## Using it from your tests'" >&2; exit 1; }
tests=$(grep -c '^#\[test\]' <<<"$example")
add_readme_test() {
  mkdir -p "$1/tests"
  {
    echo '//! Copied by scripts/dependent.sh from README.md, "Using it from your tests".'
    echo
    echo "$example"
  } > "$1/tests/readme.rs"
}

# Runs the dependent crate's tests; fails unless all of the README's ran.
run_tests() {
  local out
  out=$(cargo test --quiet --manifest-path "$1/Cargo.toml" --test readme 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out"
  grep -q "^test result: ok\. $tests passed" <<<"$out" ||
    { echo "dependent.sh: expected the README's $tests test(s) to run and pass" >&2; return 1; }
}

echo "dependent.sh: by path ($repo)"
cp -r "$repo/tests/dependent-crate" "$work/by-path"
add_readme_test "$work/by-path"
sed -i "s|path = \"../..\"|path = \"$repo\"|" "$work/by-path/Cargo.toml"
run_tests "$work/by-path"

if git -C "$repo" rev-parse --verify -q HEAD >/dev/null; then
  echo "dependent.sh: by git (file://$repo, commit $(git -C "$repo" rev-parse --short HEAD))"
  cp -r "$repo/tests/dependent-crate" "$work/by-git"
  add_readme_test "$work/by-git"
  sed -i "s|path = \"../..\"|git = \"file://$repo\"|" "$work/by-git/Cargo.toml"
  run_tests "$work/by-git"
fi
echo "dependent.sh: ok"
