#!/usr/bin/env bash
# Chaos with real processes (docs/reliability.md, "Chaos"): a three-replica realm and its
# verifier under concurrent update load; for N cycles a seeded schedule SIGKILLs the leader, a
# follower, two replicas at once (quorum lost), the verifier in the middle of a catch-up, and
# (as root) fills one replica's disk or turns it read-only; then checks that no acknowledged
# update was lost, heads are identical on every replica, signatures are where they must be,
# logs hold no panic or alarm, the client-observed history fits the model, and no client ever
# said the server misbehaved. The same seed replays the same schedule of faults.
#
#   scripts/chaos.sh [--cycles N] [--seed S] [--writers W] [--no-disk]
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=30
seed=""
writers=6
disk=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cycles) cycles="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --writers) writers="$2"; shift 2 ;;
    --no-disk) disk=0; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$seed" ]; then
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
fi
echo "chaos: $cycles cycles, seed $seed, $writers writers, disk faults: $disk"

# The harness runs the keyraft binary next to the test; build it first so it is current.
cargo build -p keyraft --bin keyraft --locked
KEYRAFT_CHAOS_CYCLES="$cycles" KEYRAFT_CHAOS_SEED="$seed" KEYRAFT_CHAOS_WRITERS="$writers" \
  KEYRAFT_CHAOS_DISK="$disk" \
  cargo test -p keyraft-tests --locked --test chaos -- --ignored --exact chaos_run --nocapture
