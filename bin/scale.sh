#!/usr/bin/env bash
# Does a big cluster keep its leader? A local 3-node cluster is filled with KEYS keys, then 64
# clients write into it while a follower is restarted and another is wiped and rebuilt from a
# snapshot. Every 200 ms each node's term and leader are recorded; any change is a leader change
# without a fault (neither the restart nor the wipe touches the leader).
#
#   bin/scale.sh [KEYS]          (default 1000000; about 10 minutes on 2 cores)
#
# Prints: leader changes, snapshot sizes and build times (from the node logs), the restart time
# of a follower (until it has applied what the leader had when it came back) and the rebuild time
# of a wiped follower (likewise). Uses bin/cluster.toml's ports; stops the cluster at the end.
set -euo pipefail
source "$(dirname "$0")/common.sh"
KEYS="${1:-1000000}"
build
export KV_RUN_DIR="$(mktemp -d /tmp/kvscale.XXXXXX)"
export KV_NO_BUILD=1
trap '"$BIN_DIR/cluster.sh" stop >/dev/null 2>&1 || true' EXIT
"$BIN_DIR/cluster.sh" start >/dev/null
kvctl() { "$KVCTL" --cluster "$CLUSTER" "$@"; }
status_of() { curl -s --max-time 1 "http://127.0.0.1:808$1/admin/status" || true; }
field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" <<<"$2"; }
leader_id() { field id "$(kvctl leader -o json 2>/dev/null)"; }

# Watch terms and leaders in the background.
( while true; do
    for i in 0 1 2; do
        s=$(status_of "$i")
        t=$(field term "$s"); l=$(sed -n 's/.*"leader":{"id":\([0-9]*\).*/\1/p' <<<"$s")
        [[ -n "$t" ]] && echo "$(date +%s.%N) node$i term=$t leader=${l:-none}"
    done
    sleep 0.2
  done ) > "$KV_RUN_DIR/terms.log" &
WATCHER=$!
trap 'kill $WATCHER 2>/dev/null; "$BIN_DIR/cluster.sh" stop >/dev/null 2>&1 || true' EXIT

echo "filling $KEYS keys..."
t0=$SECONDS
kvctl bench --workload get --keys "$KEYS" --clients 64 --duration 1s --value-size 100 >/dev/null
echo "  filled in $((SECONDS - t0)) s"
LEADER=$(leader_id)
F1=$(( (LEADER + 1) % 3 )); F2=$(( (LEADER + 2) % 3 ))
echo "leader: node $LEADER; follower $F1 will be restarted, follower $F2 wiped"

kvctl bench --workload put --keys "$KEYS" --clients 64 --duration 150s --value-size 100 \
    -o json > "$KV_RUN_DIR/load.json" &
LOAD=$!

caught_up() { # NODE SINCE: seconds until NODE has applied what the leader had committed
    local node=$1 start=$2 target
    target=$(field commit_index "$(status_of "$LEADER")")
    while true; do
        local applied
        applied=$(field last_applied "$(status_of "$node")")
        if [[ -n "$applied" && "$applied" != null && "$applied" -ge "$target" ]]; then break; fi
        sleep 0.1
    done
    echo "$(awk "BEGIN {print $(date +%s.%N) - $start}")"
}

sleep 30
echo "restarting follower $F1 (kill -9, then start)"
kill -9 "$(cat "$KV_RUN_DIR/node$F1.pid")"; rm -f "$KV_RUN_DIR/node$F1.pid"
start=$(date +%s.%N)
"$BIN_DIR/cluster.sh" start >/dev/null
echo "  restart: caught up after $(caught_up "$F1" "$start") s"

sleep 20
echo "wiping follower $F2 and rebuilding it from the others"
kill -9 "$(cat "$KV_RUN_DIR/node$F2.pid")"; rm -f "$KV_RUN_DIR/node$F2.pid"
rm -rf "$KV_RUN_DIR/data/node$F2"
start=$(date +%s.%N)
"$BIN_DIR/cluster.sh" start >/dev/null
echo "  rebuild: caught up after $(caught_up "$F2" "$start") s"

wait "$LOAD"
kill "$WATCHER" 2>/dev/null || true
echo
echo "load: $(grep -m1 '"ok"' "$KV_RUN_DIR/load.json" | tr -d ' ,') acknowledged writes, \
$(grep -m1 '"errors"' "$KV_RUN_DIR/load.json" | tr -d ' ,') $(grep -m1 '"unknown"' "$KV_RUN_DIR/load.json" | tr -d ' ,')"
echo "terms seen: $(awk '{print $3}' "$KV_RUN_DIR/terms.log" | sort -u | tr '\n' ' ')"
echo "leaders seen: $(awk '{print $4}' "$KV_RUN_DIR/terms.log" | grep -v none | sort -u | tr '\n' ' ')"
echo "snapshots:"
grep -h "snapshot written\|snapshot installed" "$KV_RUN_DIR"/node*.log | sed 's/\x1b\[[0-9;]*m//g' \
    | sed -n 's/.*\(snapshot [a-z]*\).*index=\([0-9]*\).*keys=\([0-9]*\)\(.*bytes=\([0-9]*\)\)\{0,1\}.*ms=\([0-9]*\).*/  \1 at \2: \3 keys, \5 bytes, \6 ms/p' | tail -12
echo "details in $KV_RUN_DIR"
