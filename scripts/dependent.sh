#!/usr/bin/env bash
# Builds and runs tests/dependent-crate, a crate that uses the service as a
# dev-dependency the way users' test suites do: once by path (as committed),
# once by git (a file:// URL to this repository, so the committed HEAD).
# Both must build with no [patch] in the dependent: the tiny_http fork is a
# path dependency inside this repository. Fails on the first failure.
# Env: CARGO_TARGET_DIR (default target/dependent).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/dependent}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "dependent.sh: by path ($repo)"
cp -r "$repo/tests/dependent-crate" "$work/by-path"
sed -i "s|path = \"../..\"|path = \"$repo\"|" "$work/by-path/Cargo.toml"
cargo test --quiet --manifest-path "$work/by-path/Cargo.toml"

if git -C "$repo" rev-parse --verify -q HEAD >/dev/null; then
  echo "dependent.sh: by git (file://$repo, commit $(git -C "$repo" rev-parse --short HEAD))"
  cp -r "$repo/tests/dependent-crate" "$work/by-git"
  sed -i "s|path = \"../..\"|git = \"file://$repo\"|" "$work/by-git/Cargo.toml"
  cargo test --quiet --manifest-path "$work/by-git/Cargo.toml"
fi
echo "dependent.sh: ok"
