#!/usr/bin/env bash
# Simulation of a whole realm in one process under seeded faults (docs/reliability.md,
# "Simulation"): 3 or 5 replicas, a verifier and clients on a simulated network; crashes that
# lose unflushed writes, partitions, lossy links, clock jumps, the verifier stopped and cut
# off; heads, chain and signatures checked continuously, every acknowledged update read back
# verified at the end, the client-observed history checked against the model.
#
#   scripts/simulate.sh [--seeds N] [--seed FIRST] [--minutes M]
#
# --seed S alone replays seed S. --minutes M runs as many seeds as start within M minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=""
first=""
minutes=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --seed) first="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$first" ] && [ -z "$seeds" ] && [ -z "$minutes" ]; then
  seeds=1
fi
export KEYRAFT_SIM_SEED="${first:-1}"
export KEYRAFT_SIM_SEEDS="${seeds:-100}"
if [ -n "$minutes" ]; then
  export KEYRAFT_SIM_BUDGET_S=$((minutes * 60))
fi
echo "simulation: from seed $KEYRAFT_SIM_SEED, ${minutes:+$minutes minutes}${minutes:-$KEYRAFT_SIM_SEEDS seeds}"
cargo test -p keyraft-tests --locked --test simulation -- --ignored --exact simulation_seeds --nocapture
