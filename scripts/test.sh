#!/usr/bin/env bash
# The test suite: unit, property, model, determinism and crash-replay tests of every crate.
# Long benchmarks live behind scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
