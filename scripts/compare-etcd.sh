#!/usr/bin/env bash
# keyraft and etcd side by side on this machine (docs/benchmarks.md, "Against etcd"): a
# three-replica keyraft realm (`keyraft dev`: sled, fsync, a verifier) and then a 3-member
# etcd cluster, each on loopback and alone on the machine, driven by the same load generator
# at the same concurrency levels. keyraft: registrations of fresh identities (`keyraft
# bench`, an update counted once its replica answers it applied). etcd: puts of fresh keys
# whose values are as large as a keyraft update (`keyraft bench-etcd`, a put counted once etcd
# answers it). Prints throughput, p50 and p99 of both and the ratio keyraft / etcd.
#
#   scripts/compare-etcd.sh [--clients "1 16 64 256"] [--updates N] [--tls]
#
# --updates N per level (default 10000; a tenth of it with one client). --tls runs keyraft
# with its default TLS (etcd stays plaintext); without it both are plaintext. Installs nothing:
# etcd comes from Debian (apt-get install etcd-server etcd-client). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

levels="1 16 64 256"
updates=10000
tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) levels="$2"; shift 2 ;;
    --updates) updates="$2"; shift 2 ;;
    --tls) tls=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! command -v etcd > /dev/null; then
  echo "etcd is not installed: apt-get install etcd-server etcd-client (Debian's etcd 3.4)" >&2
  exit 2
fi

cargo build --release --locked -p keyraft
BIN="$PWD/target/release/keyraft"
DIR="$(mktemp -d)"
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$DIR"' EXIT

per_level() { if [ "$1" -eq 1 ]; then echo $(( (updates + 9) / 10 )); else echo "$updates"; fi; }
# "what: N in T s = X/s (E errors); latency p50 A ms, p99 B ms, ..." -> "X A B E"
numbers() { sed -E 's/.*= ([0-9]+)\/s \(([0-9]+) errors\); latency p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/\1 \3 \4 \2/'; }

echo "== keyraft: three replicas and a verifier ($([ -n "$tls" ] && echo "TLS" || echo "plaintext"))"
plain=()
[ -n "$tls" ] || plain=(--plaintext)
"$BIN" dev --dir "$DIR/realm" --base-port 0 "${plain[@]}" > "$DIR/dev.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do grep -q "is up" "$DIR/dev.out" 2>/dev/null && break; sleep 0.1; done
grep -q "is up" "$DIR/dev.out" || { cat "$DIR/dev.out"; exit 1; }
declare -A KR
bytes=0
for c in $levels; do
  n=$(per_level "$c")
  out=$("$BIN" bench --realm "$DIR/realm/realm.json" --clients "$c" --updates "$n" --lookups "$n" --verify-every 1000)
  echo "$out" | sed 's/^/  /'
  KR[$c]=$(echo "$out" | grep '^updates (applied)' | numbers)
  bytes=$(echo "$out" | sed -nE 's/^updates: registrations of ([0-9]+) bytes each/\1/p')
done
stop_all

echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): three members, values of $bytes bytes"
ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
cluster="e1=http://127.0.0.1:${ports[3]},e2=http://127.0.0.1:${ports[4]},e3=http://127.0.0.1:${ports[5]}"
endpoints=()
for i in 0 1 2; do
  etcd --name "e$((i + 1))" --data-dir "$DIR/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${ports[$i]}" --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" --initial-advertise-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token keyraft-compare \
    > "$DIR/etcd-$i.log" 2>&1 &
  PIDS+=($!)
  endpoints+=(--endpoint "127.0.0.1:${ports[$i]}")
done
healthy=""
for _ in $(seq 1 300); do
  if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}" endpoint health > /dev/null 2>&1; then
    healthy=1; break
  fi
  sleep 0.1
done
[ -n "$healthy" ] || { tail -20 "$DIR"/etcd-*.log; exit 1; }
declare -A ET
for c in $levels; do
  n=$(per_level "$c")
  out=$("$BIN" bench-etcd "${endpoints[@]}" --clients "$c" --puts "$n" --value-bytes "$bytes")
  echo "$out" | sed 's/^/  /'
  ET[$c]=$(echo "$out" | grep '^puts (committed)' | numbers)
done
stop_all

echo
echo "| clients | keyraft updates/s | p50 / p99 ms | etcd puts/s | p50 / p99 ms | keyraft / etcd |"
echo "|---|---|---|---|---|---|"
for c in $levels; do
  read -r kr kp50 kp99 _ <<< "${KR[$c]}"
  read -r et ep50 ep99 _ <<< "${ET[$c]}"
  ratio=$(python3 -c "print(f'{$kr / $et:.2f}x' if $et else 'n/a')")
  echo "| $c | $kr | $kp50 / $kp99 | $et | $ep50 / $ep99 | $ratio |"
done
echo "(keyraft $([ -n "$tls" ] && echo "with TLS" || echo "plaintext"), etcd plaintext; fsync on both; $(nproc) cores; $(date -u +%F))"
