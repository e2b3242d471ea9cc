#!/usr/bin/env bash
# Simulation of a whole realm in one process under seeded faults (docs/reliability.md,
# "Simulation"): 3 or 5 replicas, a verifier and clients on a simulated network; crashes that
# lose unflushed writes, partitions, lossy links, clock jumps, the verifier stopped and cut
# off; heads, chain and signatures checked continuously, every acknowledged update read back
# verified at the end, the client-observed history checked against the model.
#
#   scripts/simulate.sh [--seeds N] [--seed FIRST] [--minutes M] [--jobs J] [--real-time] [--release]
#
# --seed S alone replays seed S. --minutes M runs as many seeds as start within M minutes.
# --jobs J runs J simulations at once (seeds FIRST+j, FIRST+j+J, ...; a simulation waits more
# than it computes), each logging to target/simulate-<j>.log; the default is one, printing.
# Each seed runs on one thread in paused time, where it replays exactly (its report prints a
# fingerprint); --real-time runs it on two workers in real time instead (KEYRAFT_SIM_PAUSED=0:
# threads race as in production, a seed replays its faults but not its interleaving).
# --release builds optimised, for the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=""
first=""
minutes=""
jobs=1
profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --seed) first="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --real-time) export KEYRAFT_SIM_PAUSED=0; shift ;;
    --release) profile=(--release); shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$first" ] && [ -z "$seeds" ] && [ -z "$minutes" ]; then
  seeds=1
fi
first="${first:-1}"
# Replicas fsync real snapshot files under TMPDIR, and in paused time a blocking fsync stalls a
# whole simulated realm: on a tmpfs a busy disk does not slow every seed.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
export KEYRAFT_SIM_SEEDS="${seeds:-100}"
if [ -n "$minutes" ]; then
  export KEYRAFT_SIM_BUDGET_S=$((minutes * 60))
fi
if [ -n "$minutes" ]; then
  echo "simulation: seeds from $first for $minutes minutes, $jobs at once"
else
  echo "simulation: $KEYRAFT_SIM_SEEDS seeds from $first, $jobs at once"
fi
run() {
  KEYRAFT_SIM_SEED="$1" KEYRAFT_SIM_STEP="$jobs" \
    cargo test -p keyraft-tests --locked "${profile[@]}" --test simulation -- --ignored --exact simulation_seeds --nocapture
}
if [ "$jobs" -le 1 ]; then
  run "$first"
  exit
fi
# Each job runs its share of the seeds.
KEYRAFT_SIM_SEEDS=$(( (KEYRAFT_SIM_SEEDS + jobs - 1) / jobs ))
export KEYRAFT_SIM_SEEDS
cargo test -p keyraft-tests --locked "${profile[@]}" --test simulation --no-run
pids=()
for j in $(seq 0 $((jobs - 1))); do
  run $((first + j)) > "target/simulate-$j.log" 2>&1 &
  pids+=($!)
done
status=0
for j in "${!pids[@]}"; do
  if ! wait "${pids[$j]}"; then
    status=1
    # The failed seeds' reports (schedule, problems, the command that replays them).
    echo "job $j failed; the end of target/simulate-$j.log:"
    grep -v "^20[0-9][0-9]-" "target/simulate-$j.log" | tail -n 120
  fi
  grep -E "^simulation:" "target/simulate-$j.log" || echo "job $j: no summary (see target/simulate-$j.log)"
done
exit $status
