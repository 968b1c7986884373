#!/usr/bin/env bash
# The loom models: every interleaving (up to LOOM_MAX_PREEMPTIONS preemptions
# per execution) of the service's hand-made concurrency protocols
# (tests/loom.rs: the doorbell, the intake's close, the watermark) and of the
# fork's stop handshake (vendor/tiny_http/src/inline/gate.rs).
#
#   bash scripts/loom.sh                          # about 1 min to build, seconds to run
#   LOOM_MAX_PREEMPTIONS=4 bash scripts/loom.sh   # deeper, slower
#
# A separate target dir: --cfg loom changes every crate's build, and sharing
# target/ would rebuild everything for the normal tests afterwards.
# scripts/loom_mutants.py shows that each model catches a broken variant.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom"
export CARGO_TARGET_DIR=target/loom
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
started=$(date +%s)
cargo test --release --test loom
cargo test --release -p product-update-tiny-http --lib gate
echo "loom: all models pass (LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS, $(( $(date +%s) - started )) s with the build)"
