#!/usr/bin/env bash
# Load test of a three-replica realm on this machine: builds the release binary, starts a
# fresh `keyraft dev` realm (OS-chosen ports) in a temporary directory, runs `keyraft bench`
# against it with the given arguments (default: 64 clients, 10k registrations, 50k lookups),
# prints each replica's epoch apply times from its log, and stops the realm.
set -euo pipefail
cd "$(dirname "$0")/.."
# KEYRAFT_BIN=path runs that binary instead of building this checkout's (to compare builds).
# KEYRAFT_DEV_ARGS="--rate-limits" passes arguments to `keyraft dev`: with --rate-limits the
# replicas keep the public's rate limits for loopback too (dev exempts loopback by default).
if [ -n "${KEYRAFT_BIN:-}" ]; then
  BIN="$KEYRAFT_BIN"
else
  cargo build --release --locked -p keyraft
  BIN="$PWD/target/release/keyraft"
fi
DIR="$(mktemp -d)"
trap 'kill -TERM "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; rm -rf "$DIR"' EXIT
# shellcheck disable=SC2086 # KEYRAFT_DEV_ARGS is split into arguments on purpose
"$BIN" dev --dir "$DIR/realm" --base-port 0 ${KEYRAFT_DEV_ARGS:-} > "$DIR/dev.out" 2>&1 &
DEV=$!
for _ in $(seq 1 600); do grep -q "is up" "$DIR/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q "is up" "$DIR/dev.out" || { cat "$DIR/dev.out"; exit 1; }
if [ "$#" -eq 0 ]; then set -- --clients 64 --updates 10000 --lookups 50000; fi
"$BIN" bench --realm "$DIR/realm/realm.json" "$@"
echo "largest epoch applies (updates, ms) per replica:"
for log in "$DIR"/realm/logs/node-*.log; do
  echo "  $(basename "$log"): $(grep -o 'epoch applied.*' "$log"| sort -t= -k3 -n | tail -1)"
done
# Disk: allocated blocks (holes punched in sled's value log count as freed), per replica part.
echo "data directories (MiB allocated: state, Raft log, snapshots):"
for node in "$DIR"/realm/data/*/; do
  parts=""
  for part in state log snapshots; do
    [ -d "$node$part" ] && parts="$parts $part $(du -s --block-size=1M "$node$part" | cut -f1)"
  done
  echo "  $(basename "$node"):$parts"
done
