#!/usr/bin/env bash
# Component benchmarks (criterion). Not part of the test suite: building the million-entry
# states takes a few minutes on 2 cores. Pass a filter to run a subset, e.g. `vrf`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p keyraft-core --bench vrf -- "$@"
cargo bench -p keyraft-state --bench tree -- "$@"
cargo bench -p keyraft-state --bench epoch -- "$@"
