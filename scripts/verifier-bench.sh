#!/usr/bin/env bash
# Verifier numbers on this machine (issue 4): builds the release binary, starts a fresh
# `keyraft dev` realm with one verifier and 1 s epochs in a temporary directory, then
#  1. end-to-end: updates that wait for a verifier-ratified proof (`keyraft bench
#     --wait-for-quorum`): latency from Update to a verified proof carrying the ratification;
#  2. loads UPDATES registrations (default 40000);
#  3. catch-up: starts a second, fresh verifier (same key, own data) and times it from start to
#     "caught up" in its log, as updates per second.
# Usage: scripts/verifier-bench.sh [UPDATES]
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATES="${1:-40000}"
# KEYRAFT_BIN=path runs that binary instead of building this checkout's (to compare builds).
if [ -n "${KEYRAFT_BIN:-}" ]; then
  BIN="$KEYRAFT_BIN"
else
  cargo build --release --locked -p keyraft
  BIN="$PWD/target/release/keyraft"
fi
DIR="$(mktemp -d)"
cleanup() {
  [ -n "${FRESH:-}" ] && kill -TERM "$FRESH" 2>/dev/null || true
  kill -TERM "$DEV" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" dev --dir "$DIR/realm" --base-port 0 --verifier-count 1 \
  --min-epoch-interval-ms 1000 --max-epoch-interval-ms 1000 > "$DIR/dev.out" 2>&1 &
DEV=$!
for _ in $(seq 1 600); do grep -q "is up" "$DIR/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q "is up" "$DIR/dev.out" || { cat "$DIR/dev.out"; exit 1; }
REALM="$DIR/realm/realm.json"

echo "== 1. Update -> verifier-ratified proof, 1 s epochs, 128 clients"
"$BIN" bench --realm "$REALM" --clients 128 --updates 1280 --lookups 1280 --wait-for-quorum

echo "== 2. loading $UPDATES registrations"
"$BIN" bench --realm "$REALM" --clients 128 --updates "$UPDATES" --lookups "$UPDATES" --verifiers 0 | grep -E "updates|ratified|holds"

echo "== 3. a fresh verifier catches up"
sed -e 's#data/verifier-1#data/verifier-fresh#' "$DIR/realm/verifier-1.toml" > "$DIR/realm/verifier-fresh.toml"
START="$(date +%s.%N)"
(cd "$DIR/realm" && RUST_LOG=info exec "$BIN" verifier --config verifier-fresh.toml > "$DIR/fresh.log" 2>&1) &
FRESH=$!
for _ in $(seq 1 6000); do grep -q "caught up" "$DIR/fresh.log" 2>/dev/null && break; sleep 0.05; done
END="$(date +%s.%N)"
grep -q "caught up" "$DIR/fresh.log" || { tail -20 "$DIR/fresh.log"; exit 1; }
EPOCH="$(grep -o 'caught up.*' "$DIR/fresh.log" | head -1)"
COUNT=$((UPDATES + 1280))
awk -v s="$START" -v e="$END" -v n="$COUNT" -v what="$EPOCH" \
  'BEGIN { t = e - s; printf "fresh verifier: %d updates (%s) in %.2f s = %.0f updates/s (process start to caught up)\n", n, what, t, n / t }'
