#!/usr/bin/env bash
# Builds and runs tests/dependent-crate, a crate that uses the service as a
# dev-dependency the way users' test suites do: once by path (as committed),
# once by git (a file:// URL to this repository, so the committed HEAD).
# Both must build with no [patch] in the dependent: the tiny_http fork is a
# path dependency inside this repository. Its test is the README's example
# ("Using it from your tests"), taken from the README at each run, so the
# README shows exactly what a dependent crate runs. Fails on the first
# failure.
# Env: CARGO_TARGET_DIR (default target/dependent).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/dependent}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The README's Rust block under "## Using it from your tests", as a test
# function: its hidden doc-test line (`# Ok::<..>(())`) is the function's
# result.
example=$(awk '
  /^## / { in_section = ($0 == "## Using it from your tests") }
  in_section && /^```rust$/ { in_block = 1; next }
  in_block && /^```$/ { exit }
  in_block { sub(/^# /, ""); print "    " $0 }
' "$repo/README.md")
[ -n "$example" ] || { echo "dependent.sh: README.md has no Rust example under '## Using it from your tests'" >&2; exit 1; }
add_readme_test() {
  mkdir -p "$1/tests"
  {
    echo '//! Made by scripts/dependent.sh from README.md, "Using it from your tests".'
    echo
    echo '#[test]'
    echo 'fn the_readme_example() -> Result<(), Box<dyn std::error::Error>> {'
    echo "$example"
    echo '}'
  } > "$1/tests/readme.rs"
}

echo "dependent.sh: by path ($repo)"
cp -r "$repo/tests/dependent-crate" "$work/by-path"
add_readme_test "$work/by-path"
sed -i "s|path = \"../..\"|path = \"$repo\"|" "$work/by-path/Cargo.toml"
cargo test --quiet --manifest-path "$work/by-path/Cargo.toml"

if git -C "$repo" rev-parse --verify -q HEAD >/dev/null; then
  echo "dependent.sh: by git (file://$repo, commit $(git -C "$repo" rev-parse --short HEAD))"
  cp -r "$repo/tests/dependent-crate" "$work/by-git"
  add_readme_test "$work/by-git"
  sed -i "s|path = \"../..\"|git = \"file://$repo\"|" "$work/by-git/Cargo.toml"
  cargo test --quiet --manifest-path "$work/by-git/Cargo.toml"
fi
echo "dependent.sh: ok"
