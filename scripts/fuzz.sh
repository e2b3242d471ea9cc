#!/usr/bin/env bash
# Runs keyraft's fuzz targets (cargo-fuzz, libFuzzer, the nightly toolchain) OUTSIDE CI:
#
#   scripts/fuzz.sh [--seconds N] [--runs N] [target...]
#
# Default: every target for 60 s each. Each target starts from fuzz/corpus/<target> and
# fuzz/regressions/<target>; new inputs go to a scratch directory ($FUZZ_WORK, default
# /tmp/keyraft-fuzz/<target>), not into the committed corpus. A crash leaves its input in
# fuzz/artifacts/<target>/: minimise it (cargo +nightly fuzz tmin <target> <file>), fix the
# bug, and add the input to fuzz/regressions/<target>/ so that the replay test
# (crates/fuzz-targets/tests/corpus.rs, run by CI) keeps it. Needs
# `cargo +nightly install cargo-fuzz --locked`. FUZZ_SANITIZER (default none: the code under
# test forbids unsafe code; `address` for ASan) and CARGO_TARGET_DIR (default fuzz/target)
# pass on to cargo-fuzz. See docs/reliability.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
runs=""
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
work="${FUZZ_WORK:-/tmp/keyraft-fuzz}"
limit=(-max_total_time="$seconds")
if [ -n "$runs" ]; then
    limit=(-runs="$runs")
fi
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/regressions/$t"
    echo "== $t"
    rc=0
    cargo +nightly fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" ${CARGO_TARGET_DIR:+--target-dir "$CARGO_TARGET_DIR"} \
        "$t" "$work/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
        "${limit[@]}" -print_final_stats=1 >"$work/$t.log" 2>&1 || rc=$?
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' "$work/$t.log" || true
    if [ $rc -ne 0 ]; then
        echo "!! $t failed (status $rc): see $work/$t.log and fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
