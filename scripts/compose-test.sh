#!/usr/bin/env bash
# scripts/compose-test.sh: the container image and the compose cluster, end to end.
#
# Builds the static keyraft binary (glibc, crt-static) and the FROM-scratch image
# (docker/Dockerfile; nothing is pulled), writes a realm with `keyraft cluster-config`, starts
# docker/compose.yaml (three replicas, one verifier) and, while updates keep coming:
#   - registers and looks up through gRPC (the keyraft CLI) and the HTTP/JSON gateway (curl),
#   - `docker kill`s the leader, then a follower, restarting each,
#   - disconnects the leader from the network (`docker network disconnect`), reconnects it,
# then checks that every acknowledged update is visible at a version >= the acknowledged one,
# that the replicas report identical heads for the same epochs, and that `down` and `up`
# again keep the data. Prints a summary with timings. Not part of scripts/test.sh.
#
# Needs docker and docker-compose (1.29 or later), curl, python3, cargo. Environment:
#   KEYRAFT_STATIC_TARGET_DIR  cargo target dir of the static build (default target/static)
#   KEYRAFT_COMPOSE_NET        the network's first three octets (default 10.77.0)
#   KEYRAFT_COMPOSE_PORTS      the published ports' prefix (default 17: 17001-17003, 17101-17103)
#   KEYRAFT_COMPOSE_KEEP=1     leave the cluster, volumes, image and work directory in place
#   KEYRAFT_COMPOSE_NO_GATEWAY=1  report the gateway steps as skipped instead of failing when
#                              the public port has no HTTP/JSON gateway
#   KEYRAFT_COMPOSE_LOAD_S     seconds of load around each failure (default 8)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
T0=$(date +%s%3N)
now_ms() { date +%s%3N; }
secs() { python3 -c "import sys; print(f'{int(sys.argv[1])/1000:.1f}')" "$1"; }
say() { printf '[%6s s] %s\n' "$(secs $(( $(now_ms) - T0 )))" "$*"; }
die() { say "FAILED: $*"; exit 1; }

NET=${KEYRAFT_COMPOSE_NET:-10.77.0}
PORTS=${KEYRAFT_COMPOSE_PORTS:-17}
LOAD_S=${KEYRAFT_COMPOSE_LOAD_S:-8}
PROJECT=keyrafttest$$
IMAGE=keyraft:compose-test-$$
WORK=$(mktemp -d /tmp/keyraft-compose.XXXXXX)
CONFIG=$WORK/cluster
STATIC_TARGET=${KEYRAFT_STATIC_TARGET_DIR:-$ROOT/target/static}
TRIPLE=x86_64-unknown-linux-gnu
K=$STATIC_TARGET/$TRIPLE/release/keyraft
export KEYRAFT_CONFIG=$CONFIG KEYRAFT_IMAGE=$IMAGE KEYRAFT_NET=$NET KEYRAFT_PORT_PREFIX=$PORTS
dc() { docker-compose -p "$PROJECT" -f "$ROOT/docker/compose.yaml" "$@"; }

LOAD_PIDS=()
MAIN_PID=$BASHPID
CLEANED=0
cleanup() {
    local rc=$?
    # Only the script itself tears down, once.
    if [ "$BASHPID" != "$MAIN_PID" ] || [ "$CLEANED" = 1 ]; then exit "$rc"; fi
    CLEANED=1
    touch "$WORK/stop-load" 2>/dev/null || true
    for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" != 0 ]; then
        dc logs --no-color --tail 60 > "$WORK/compose-logs.txt" 2>&1 || true
        say "logs of the last lines of each container: $WORK/compose-logs.txt"
    fi
    if [ "${KEYRAFT_COMPOSE_KEEP:-0}" = 1 ]; then
        say "kept: project $PROJECT, image $IMAGE, work directory $WORK"
    else
        dc down -v --remove-orphans > /dev/null 2>&1 || true
        docker rmi "$IMAGE" > /dev/null 2>&1 || true
        [ "$rc" = 0 ] && rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
say "1. static binary (cargo build --release, crt-static) into $STATIC_TARGET"
t=$(now_ms)
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$STATIC_TARGET \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    nice -n 10 cargo build --release --locked --target "$TRIPLE" -p keyraft
BUILD_MS=$(( $(now_ms) - t ))
file -b "$K" | grep -Eq 'static(-pie)? linked|statically linked' || die "$K is not statically linked: $(file -b "$K")"
ldd "$K" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' || die "ldd lists libraries of $K: $(ldd "$K" 2>&1)"
say "   built in $(secs $BUILD_MS) s: $(file -b "$K" | cut -d, -f1-5); $(du -h "$K" | cut -f1)"

say "2. image $IMAGE (FROM scratch)"
t=$(now_ms)
mkdir -p "$WORK/image/data"
cp "$K" "$WORK/image/keyraft"
docker build -q -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$WORK/image" > /dev/null
IMAGE_MS=$(( $(now_ms) - t ))
say "   built in $(secs $IMAGE_MS) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"

say "3. configuration (keyraft cluster-config) in $CONFIG"
OWNER=10001:10001
"$K" cluster-config --out "$CONFIG" --realm-name compose.test \
    --replica 1="$NET.11" --replica 2="$NET.12" --replica 3="$NET.13" --verifiers 1 \
    --published 1="127.0.0.1:${PORTS}001" --published 2="127.0.0.1:${PORTS}002" --published 3="127.0.0.1:${PORTS}003" \
    --min-epoch-interval-ms 300 --max-epoch-interval-ms 3000 \
    --rate-exempt "$NET.1" --rate-exempt 127.0.0.1 --owner "$OWNER" | sed 's/^/   /'
REALM=$CONFIG/realm-published.json
CA=$CONFIG/operator/tls/ca.crt
admin() { "$K" admin --peer "127.0.0.1:${PORTS}10$1" --tls-dir "$CONFIG/operator/tls" --token-file "$CONFIG/operator/admin.token" "${@:2}"; }
status_field() { # NODE FIELD: a field of `admin status --json` on NODE, or "" when unreachable
    admin "$1" status --json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || true
}
container() { dc ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(container "$1")" 2>/dev/null || echo gone; }
wait_healthy() { # SERVICE... ; waits up to 120 s for each
    local deadline=$(( $(now_ms) + 120000 ))
    for s in "$@"; do
        until [ "$(health "$s")" = healthy ]; do
            [ "$(now_ms)" -lt "$deadline" ] || die "$s is not healthy after 120 s ($(health "$s"))"
            sleep 0.5
        done
    done
}
wait_caught_up() { # NODE EPOCH: waits up to 120 s until NODE reports EPOCH ratified (it caught up)
    local deadline=$(( $(now_ms) + 120000 )) e
    while :; do
        e=$(status_field "$1" ratified_epoch)
        if [ -n "$e" ] && [ "$e" -ge "$2" ]; then return; fi
        [ "$(now_ms)" -lt "$deadline" ] || die "node$1 did not catch up to epoch $2 in 120 s (at ${e:-?})"
        sleep 0.3
    done
}
newest_epoch() { # the highest ratified epoch any replica reports
    local n e best=0
    for n in 1 2 3; do
        e=$(status_field "$n" ratified_epoch)
        if [ -n "$e" ] && [ "$e" -gt "$best" ]; then best=$e; fi
    done
    echo "$best"
}
leader() { # the leader's node id as one of the replicas reports it
    local n l
    for n in 1 2 3; do
        l=$(status_field "$n" leader_id)
        if [ -n "$l" ] && [ "$l" != 0 ]; then echo "$l"; return; fi
    done
    echo 0
}

# ---------------------------------------------------------------------------------------------
say "4. docker-compose up (project $PROJECT)"
t=$(now_ms)
dc up -d 2>&1 | sed 's/^/   /'
wait_healthy node1 node2 node3 verifier1
HEALTHY_MS=$(( $(now_ms) - t ))
say "   all four containers healthy after $(secs $HEALTHY_MS) s; leader: node $(leader)"

# ---------------------------------------------------------------------------------------------
say "5. gRPC: register and look up with the keyraft CLI (realm-published.json)"
C="--realm $REALM --state $WORK/state-main.json"
"$K" keygen --out "$WORK/alice.key" > /dev/null
"$K" keygen --out "$WORK/bob.key" > /dev/null
"$K" keygen --out "$WORK/load.key" > /dev/null
# shellcheck disable=SC2086
"$K" register $C --user alice@compose.test --key "$WORK/alice.key" --set pgp=alice-1 --wait | sed 's/^/   /'
# shellcheck disable=SC2086
"$K" lookup $C alice@compose.test | sed 's/^/   /'

# ---------------------------------------------------------------------------------------------
say "6. HTTP/JSON gateway (curl on the public port, same TLS)"
GW=https://127.0.0.1:${PORTS}001
GATEWAY=missing
code=$(curl -sS --cacert "$CA" -o "$WORK/gw-probe.json" -w '%{http_code}' "$GW/v1/lookup/alice%40compose.test?verifier_threshold=1" 2>"$WORK/gw-probe.err" || true)
if [ "$code" = 200 ] && python3 -c "import json,sys; json.load(open(sys.argv[1]))['proof']" "$WORK/gw-probe.json" 2>/dev/null; then
    GATEWAY=present
fi
b64file() { python3 -c "import base64,json,sys; open(sys.argv[2],'wb').write(base64.b64decode(json.load(open(sys.argv[1]))[sys.argv[3]]))" "$@"; }
if [ "$GATEWAY" = present ]; then
    # Its answer for alice (registered over gRPC) verifies offline. (Lookups ask for the
    # verifier ratification the realm file requires: verifier_threshold=1.)
    b64file "$WORK/gw-probe.json" "$WORK/alice-gw.proof" proof
    # shellcheck disable=SC2086
    "$K" verify-proof $C "$WORK/alice-gw.proof" | sed 's/^/   gateway lookup alice: /' | head -3
    # bob registers over HTTP: the update's canonical bytes from `register --prepare`.
    # shellcheck disable=SC2086
    "$K" register $C --user bob@compose.test --key "$WORK/bob.key" --set pgp=bob-1 --prepare "$WORK/bob.json" > /dev/null
    python3 - "$WORK/bob.json" "$WORK/bob-body.json" <<'EOF'
import base64, json, sys
prepared = json.load(open(sys.argv[1]))
body = {"user_id": prepared["user_id"], "update": base64.b64encode(bytes.fromhex(prepared["update"])).decode(), "wait_ms": 5000}
json.dump(body, open(sys.argv[2], "w"))
EOF
    code=$(curl -sS --cacert "$CA" -o "$WORK/bob-answer.json" -w '%{http_code}' -H 'content-type: application/json' \
        --data @"$WORK/bob-body.json" "$GW/v1/updates")
    [ "$code" = 200 ] || die "POST /v1/updates answered $code: $(cat "$WORK/bob-answer.json")"
    say "   POST /v1/updates bob: $(cat "$WORK/bob-answer.json")"
    # The same bytes again: a duplicate, not a second update.
    code=$(curl -sS --cacert "$CA" -o "$WORK/bob-again.json" -w '%{http_code}' -H 'content-type: application/json' \
        --data @"$WORK/bob-body.json" "$GW/v1/updates")
    say "   the same update again: $code $(cat "$WORK/bob-again.json")"
    # An error is JSON with a code.
    code=$(curl -sS --cacert "$CA" -o "$WORK/gw-error.json" -w '%{http_code}' -H 'content-type: application/json' \
        --data '{"user_id":"bob@compose.test","update":"AAAA","wait_ms":0}' "$GW/v1/updates")
    python3 -c "import json,sys; a=json.load(open(sys.argv[1])); assert a['code'] and a['message'], a" "$WORK/gw-error.json" \
        || die "a malformed update's answer is not a JSON error: $code $(cat "$WORK/gw-error.json")"
    say "   a malformed update: $code $(cut -c1-120 "$WORK/gw-error.json")"
    # bob by the gateway (once his epoch has the verifier's ratification: until then the
    # answer is a 503 "not ratified yet"), then by gRPC.
    : > "$WORK/bob-gw.txt"
    for _ in $(seq 50); do
        # shellcheck disable=SC2086
        if curl -sS --cacert "$CA" -o "$WORK/bob-gw.json" "$GW/v1/lookup/bob%40compose.test?verifier_threshold=1" \
            && b64file "$WORK/bob-gw.json" "$WORK/bob-gw.proof" proof 2> /dev/null \
            && "$K" verify-proof $C "$WORK/bob-gw.proof" > "$WORK/bob-gw.txt" 2>&1 \
            && grep -q 'version 0' "$WORK/bob-gw.txt"; then
            break
        fi
        sleep 0.2
    done
    grep -q 'version 0' "$WORK/bob-gw.txt" \
        || die "no verified gateway lookup of bob: $(head -c 300 "$WORK/bob-gw.json") $(cat "$WORK/bob-gw.txt")"
    head -1 "$WORK/bob-gw.txt" | sed 's/^/   gateway lookup bob: /'
    # shellcheck disable=SC2086
    "$K" lookup $C bob@compose.test | head -2 | sed 's/^/   gRPC lookup bob: /'
else
    say "   NO GATEWAY on $GW: GET /v1/lookup/alice%40compose.test answered HTTP ${code:-nothing} without a JSON proof $(head -c 200 "$WORK/gw-probe.json" 2>/dev/null) $(head -c 200 "$WORK/gw-probe.err")"
    [ "${KEYRAFT_COMPOSE_NO_GATEWAY:-0}" = 1 ] || die "the HTTP/JSON gateway is not there (KEYRAFT_COMPOSE_NO_GATEWAY=1 skips its steps)"
    say "   gateway steps SKIPPED (KEYRAFT_COMPOSE_NO_GATEWAY=1)"
fi

# ---------------------------------------------------------------------------------------------
# Load: two clients registering new identities and one updating a counter identity, each
# recording what was acknowledged (exit 0: ratified, 3: accepted but not yet ratified) with
# the time it was sent and acknowledged.
# shellcheck disable=SC2086
"$K" register $C --user counter@compose.test --key "$WORK/load.key" --set n=0 --wait > /dev/null
load() { # NAME KIND
    local name=$1 kind=$2 i=0 user out rc start end epoch
    while [ ! -e "$WORK/stop-load" ]; do
        i=$((i + 1))
        start=$(now_ms)
        rc=0
        if [ "$kind" = register ]; then
            user="load-$name-$i@compose.test"
            out=$("$K" register --realm "$REALM" --state "$WORK/state-$name.json" --user "$user" --key "$WORK/load.key" \
                --set n="$i" --wait --wait-ms 20000 2>&1) || rc=$?
        else
            user=counter@compose.test
            out=$("$K" update --realm "$REALM" --state "$WORK/state-$name.json" --user "$user" --key "$WORK/load.key" \
                --set n="$i" --wait --wait-ms 20000 2>&1) || rc=$?
        fi
        end=$(now_ms)
        epoch=$(sed -n 's/.*in epoch \([0-9][0-9]*\).*/\1/p' <<< "$out" | head -1)
        if [ "$rc" = 0 ] || [ "$rc" = 3 ]; then
            echo "$user $i ${epoch:-?} $start $end $rc" >> "$WORK/acked.txt"
        else
            echo "$user $i $start $end $rc $(tr '\n' ' ' <<< "$out" | cut -c1-240)" >> "$WORK/failed.txt"
        fi
    done
}
touch "$WORK/acked.txt" "$WORK/failed.txt"
load a register & LOAD_PIDS+=($!)
load b register & LOAD_PIDS+=($!)
load c update & LOAD_PIDS+=($!)
acked() { wc -l < "$WORK/acked.txt"; }
# The first acknowledgement of an update sent at or after $1 (ms), minus $1; waits up to 60 s.
recovered_after() {
    local since=$1 first deadline=$(( $(now_ms) + 60000 ))
    while :; do
        first=$(awk -v s="$since" '$4 >= s { if (min == "" || $5 < min) min = $5 } END { print min }' "$WORK/acked.txt")
        if [ -n "$first" ]; then echo $(( first - since )); return; fi
        [ "$(now_ms)" -lt "$deadline" ] || { echo -1; return; }
        sleep 0.2
    done
}
sleep "$LOAD_S"
say "7. load running: $(acked) updates acknowledged so far"

# ---------------------------------------------------------------------------------------------
iso_ms() { # an RFC 3339 time with nanoseconds (docker inspect) in ms since the Unix epoch
    python3 -c "
import datetime, re, sys
t = re.sub(r'(\.\d{6})\d*', r'\1', sys.argv[1]).replace('Z', '+00:00')
print(int(datetime.datetime.fromisoformat(t).timestamp() * 1000))" "$1"
}
elected_after() { # GONE SINCE: ms from SINCE until a replica other than GONE reports a leader other than GONE
    local gone=$1 since=$2 n l deadline=$(( $(now_ms) + 60000 ))
    while [ "$(now_ms)" -lt "$deadline" ]; do
        for n in 1 2 3; do
            [ "$n" = "$gone" ] && continue
            l=$(status_field "$n" leader_id)
            if [ -n "$l" ] && [ "$l" != 0 ] && [ "$l" != "$gone" ]; then echo $(( $(now_ms) - since )); return; fi
        done
    done
    echo -1
}
kill_and_restart() { # ROLE NODE
    local role=$1 n=$2 cid t_kill rec elected="" t_start target back
    cid=$(container "node$n")
    docker kill "$cid" > /dev/null
    # When the process died, as docker recorded it (the docker CLI itself takes a while).
    t_kill=$(iso_ms "$(docker inspect -f '{{.State.FinishedAt}}' "$cid")")
    say "   docker kill node$n (the $role) at $(acked) acknowledged"
    if [ "$role" = leader ]; then
        elected=$(elected_after "$n" "$t_kill")
        [ "$elected" -ge 0 ] || die "no new leader within 60 s of killing node$n"
        say "   a new leader (node $(leader)) reported $(secs "$elected") s after the kill"
    fi
    rec=$(recovered_after "$t_kill")
    [ "$rec" -ge 0 ] || die "no update acknowledged within 60 s of killing node$n"
    say "   the first update sent after the kill acknowledged $(secs "$rec") s after it"
    sleep "$LOAD_S"
    t_start=$(now_ms)
    target=$(newest_epoch)
    dc start "node$n" > /dev/null 2>&1
    wait_healthy "node$n"
    wait_caught_up "$n" "$target"
    back=$(( $(now_ms) - t_start ))
    say "   node$n restarted: healthy and caught up (epoch $target) $(secs "$back") s after docker-compose start"
    RECOVERY+=("kill $role node$n: ${elected:+new leader after $(secs "$elected") s, }first update sent after the kill acknowledged after $(secs "$rec") s; restarted, caught up after $(secs "$back") s")
}
RECOVERY=()
L=$(leader)
[ "$L" != 0 ] || die "no leader"
say "8. kill the leader (node$L) while updates continue"
kill_and_restart leader "$L"
KILLED=$L
L=$(leader)
F=1
while [ "$F" = "$L" ] || [ "$F" = "$KILLED" ]; do F=$((F + 1)); done
say "9. kill a follower (node$F) while updates continue"
kill_and_restart follower "$F"

# ---------------------------------------------------------------------------------------------
L=$(leader)
NETWORK=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(container "node$L")")
say "10. disconnect the leader (node$L) from $NETWORK while updates continue"
docker network disconnect "$NETWORK" "$(container "node$L")"
t_cut=$(now_ms) # (the command has returned: the node is cut off)
elected=$(elected_after "$L" "$t_cut")
[ "$elected" -ge 0 ] || die "no new leader within 60 s of disconnecting node$L"
say "   a new leader (node $(leader)) reported $(secs "$elected") s after the disconnection"
rec=$(recovered_after "$t_cut")
[ "$rec" -ge 0 ] || die "no update acknowledged within 60 s of disconnecting node$L"
say "   the first update sent after the disconnection acknowledged $(secs "$rec") s after it"
sleep "$LOAD_S"
t_join=$(now_ms)
target=$(newest_epoch)
docker network connect --ip "$NET.1$L" "$NETWORK" "$(container "node$L")"
wait_healthy "node$L"
wait_caught_up "$L" "$target"
back=$(( $(now_ms) - t_join ))
say "   reconnected: node$L healthy and caught up (epoch $target) $(secs "$back") s after docker network connect; leader node $(leader)"
RECOVERY+=("disconnect leader node$L: new leader after $(secs "$elected") s, first update sent after the cut acknowledged after $(secs "$rec") s; reconnected, caught up after $(secs "$back") s")
sleep "$LOAD_S"

# ---------------------------------------------------------------------------------------------
say "11. stop the load; check every acknowledged update"
touch "$WORK/stop-load"
for pid in "${LOAD_PIDS[@]}"; do wait "$pid" || true; done
LOAD_PIDS=()
ACKED=$(acked)
FAILED=$(wc -l < "$WORK/failed.txt")
# The newest acknowledged value of each identity (the counter's highest n).
awk '{ if (!($1 in n) || $2 > n[$1]) n[$1] = $2 } END { for (u in n) print u, n[u] }' "$WORK/acked.txt" | sort > "$WORK/expected.txt"
check_visible() { # prints each identity whose acknowledged update is not visible
    rm -rf "$WORK/lookups" && mkdir "$WORK/lookups"
    # Four lookups at a time (each verifies its proof); no state file, which they would share.
    awk '{ print $1 }' "$WORK/expected.txt" | xargs -P 4 -I{} sh -c \
        '"$0" lookup --realm "$1" --no-state "{}" --json > "$2/{}.json" 2> "$2/{}.err" || true' \
        "$K" "$REALM" "$WORK/lookups"
    python3 - "$WORK/expected.txt" "$WORK/lookups" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    user, n = line.split()
    try:
        a = json.load(open(f"{sys.argv[2]}/{user}.json"))
        value = ((a.get("entry") or {}).get("profile") or {}).get("n", {}).get("value")
        ok = a["registered"] and value is not None and int(value) >= int(n)
        why = f"registered {a['registered']}, n = {value}"
    except Exception as e:
        ok, why = False, open(f"{sys.argv[2]}/{user}.err").read()[:200] or repr(e)
    if not ok:
        print(f"{user} (acknowledged n={n}): {why}")
EOF
}
LOST_LIST=$(check_visible)
LOST=$( [ -z "$LOST_LIST" ] && echo 0 || wc -l <<< "$LOST_LIST")
say "   acknowledged $ACKED updates ($(wc -l < "$WORK/expected.txt") identities), $FAILED attempts not acknowledged, lost $LOST"
[ "$LOST" = 0 ] || die "acknowledged updates not visible: $LOST_LIST"

say "12. identical heads on every replica"
# Wait until the three report the same newest epoch (ratified) and compare every epoch's head.
for _ in $(seq 100); do
    e1=$(status_field 1 ratified_epoch); e2=$(status_field 2 ratified_epoch); e3=$(status_field 3 ratified_epoch)
    [ -n "$e1" ] && [ "$e1" = "$e2" ] && [ "$e2" = "$e3" ] && break
    sleep 0.3
done
E=$(printf '%s\n' "$e1" "$e2" "$e3" | sort -n | head -1)
[ -n "$E" ] && [ "$E" -gt 0 ] || die "no ratified epoch reported ($e1 $e2 $e3)"
STEP=$(( (E - 1) / 300 + 1 ))
rm -rf "$WORK/heads" && mkdir "$WORK/heads"
for n in 1 2 3; do for e in $(seq 1 "$STEP" "$E"); do echo "$n $e"; done; done | xargs -P 4 -n 2 sh -c \
    '"$0" lookup --realm "$1" --no-state --endpoint "127.0.0.1:${2}00$4" --epoch "$5" alice@compose.test --json \
        > "$3/$4-$5.json" 2>&1 || true' "$K" "$REALM" "$PORTS" "$WORK/heads"
python3 - "$WORK/heads" "$E" "$STEP" <<'EOF' || die "the replicas' heads differ or could not be read (in $WORK/heads)"
import json, sys
d, last, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bad = 0
for e in range(1, last + 1, step):
    heads = []
    for n in (1, 2, 3):
        try:
            a = json.load(open(f"{d}/{n}-{e}.json"))
            assert a["verification"]["epoch"] == e
            heads.append(json.dumps(a["head"], sort_keys=True))
        except Exception as x:
            print(f"epoch {e} on node {n}: {open(f'{d}/{n}-{e}.json').read()[:200]!r} ({x!r})")
            bad += 1
    if len(set(heads)) > 1:
        print(f"epoch {e}: the heads differ: {heads}")
        bad += 1
sys.exit(1 if bad else 0)
EOF
HEADS_CHECKED=$(( (E - 1) / STEP + 1 ))
say "   gRPC (lookup --epoch on each replica): epochs 1..$E every $STEP: $HEADS_CHECKED heads, identical on the three"
if [ "$GATEWAY" = present ]; then
    for n in 1 2 3; do
        python3 - "$CA" "https://127.0.0.1:${PORTS}00$n" "$E" > "$WORK/heads-gw-$n.txt" <<'EOF'
import json, ssl, sys, urllib.request
ca, base, last = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.create_default_context(cafile=ca)
start, token = 1, None
while start <= last:
    url = f"{base}/v1/epochs?start_epoch={start}&page_size=100"
    page = json.load(urllib.request.urlopen(url, context=context, timeout=10))
    epochs = page["epochs"]
    if not epochs:
        break
    for i, e in enumerate(epochs):
        if start + i <= last:
            print(start + i, e["head"])
    start += len(epochs)
EOF
    done
    cmp -s "$WORK/heads-gw-1.txt" "$WORK/heads-gw-2.txt" && cmp -s "$WORK/heads-gw-1.txt" "$WORK/heads-gw-3.txt" \
        || die "the replicas' heads differ over the gateway: diff $WORK/heads-gw-{1,2,3}.txt"
    say "   gateway (GET /v1/epochs on each replica): $(wc -l < "$WORK/heads-gw-1.txt") heads, identical on the three"
fi

# ---------------------------------------------------------------------------------------------
say "13. docker-compose down (volumes kept) and up again"
t=$(now_ms)
dc down 2>&1 | sed 's/^/   /'
dc up -d 2>&1 | sed 's/^/   /'
wait_healthy node1 node2 node3 verifier1
RESTART_MS=$(( $(now_ms) - t ))
E_AFTER=$(status_field 1 ratified_epoch)
[ "${E_AFTER:-0}" -ge "$E" ] || die "after down/up the realm is at epoch ${E_AFTER:-?}, before $E: the data is gone"
LOST_LIST=$(check_visible)
[ -z "$LOST_LIST" ] || die "after down/up, acknowledged updates are not visible: $LOST_LIST"
# shellcheck disable=SC2086
"$K" update $C --user alice@compose.test --key "$WORK/alice.key" --set pgp=alice-2 --wait | head -1 | sed 's/^/   /'
say "   healthy again after $(secs $RESTART_MS) s; epoch $E_AFTER >= $E; all $(wc -l < "$WORK/expected.txt") identities still there; a new update acknowledged"

# ---------------------------------------------------------------------------------------------
echo
echo "SUMMARY (scripts/compose-test.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores)"
echo "  static binary build:         $(secs $BUILD_MS) s ($(du -h "$K" | cut -f1))"
echo "  image build (FROM scratch):  $(secs $IMAGE_MS) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}'))"
echo "  up to all healthy:           $(secs $HEALTHY_MS) s"
for r in "${RECOVERY[@]}"; do echo "  $r"; done
echo "  down + up to all healthy:    $(secs $RESTART_MS) s (data kept: epoch $E_AFTER >= $E)"
echo "  updates acknowledged:        $ACKED ($(wc -l < "$WORK/expected.txt") identities); not acknowledged attempts: $FAILED; lost: $LOST"
echo "  heads compared:              $HEADS_CHECKED epochs over gRPC$( [ "$GATEWAY" = present ] && echo ", $(wc -l < "$WORK/heads-gw-1.txt") over the gateway"), identical on 3 replicas"
echo "  gateway:                     $GATEWAY"
echo "  total:                       $(secs $(( $(now_ms) - T0 ))) s"
if [ "$FAILED" -gt 0 ]; then
    echo "  not acknowledged (first 5):"
    head -5 "$WORK/failed.txt" | cut -c1-200 | sed 's/^/    /'
fi
