#!/usr/bin/env bash
# The whole evaluation in one command: a scaling sweep of kvnode on 3 and 5 nodes, a failover
# experiment, the same sweep against etcd when it is installed, then tables and plots.
#
#   bin/evaluate.sh
#
# Results (every kvctl bench report, the failover operation logs, summary.md, summary.json)
# go to $EVAL_OUT; the plots go to images/ (eval-throughput.svg, eval-latency.svg,
# eval-failover.svg); summary.md, summary.json and machine.txt are copied to docs/eval/.
# docs/EVALUATION.md explains the figures.
#
# etcd: install Debian's package (`apt-get install etcd-server`, etcd 3.4) to compare with it.
# Its clusters run on the same machine, one at a time like ours, and are loaded by the same
# `kvctl bench --system etcd` through etcd's JSON gateway.
#
# Environment (defaults in brackets):
#   EVAL_RUNS           repetitions of every sweep point; the report shows medians  [3]
#   EVAL_DURATION       length of one sweep point                                   [5s]
#   EVAL_CLIENTS        client counts                                               [1 4 16 64 256]
#   EVAL_WORKLOADS      workloads                                                   [put get mixed:90]
#   EVAL_NODES          cluster sizes                                               [3 5]
#   EVAL_SYSTEMS        stores to measure (etcd is skipped when not installed)      [kv etcd]
#   EVAL_TARGET         where clients send: all (spread over every node, followers
#                       forward to the leader) or leader                            [all]
#   EVAL_FAILOVER_REPS  repetitions of the failover experiment (0: skip it)         [5]
#   EVAL_OUT            results directory                                           [target/eval]
#   EVAL_IMAGES         where the plots go                                          [images]
#   EVAL_DOCS           where summary.md, summary.json, machine.txt are copied ("" skips) [docs/eval]
#
# With the defaults it takes about 20 minutes. Each cluster gets fresh data directories
# under $EVAL_OUT and is stopped when its part is done, also when the script is interrupted.
set -euo pipefail

source "$(dirname "$0")/common.sh"
cd "$ROOT"

RUNS="${EVAL_RUNS:-3}"
DURATION="${EVAL_DURATION:-5s}"
CLIENTS="${EVAL_CLIENTS:-1 4 16 64 256}"
WORKLOADS="${EVAL_WORKLOADS:-put get mixed:90}"
NODES="${EVAL_NODES:-3 5}"
SYSTEMS="${EVAL_SYSTEMS:-kv etcd}"
TARGET="${EVAL_TARGET:-all}"
FAILOVER_REPS="${EVAL_FAILOVER_REPS:-5}"
OUT="${EVAL_OUT:-$ROOT/target/eval}"
IMAGES="${EVAL_IMAGES:-$ROOT/images}"
DOCS="${EVAL_DOCS-$ROOT/docs/eval}"

KVEVAL="$TARGET_DIR/release/kveval"
# Ports of the evaluation's clusters: away from bin/cluster.toml's, so a running local
# cluster is left alone.
KV_HTTP_BASE=18080
KV_RAFT_BASE=16000
ETCD_BASE=12379

say() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }

CURRENT_STOP=""
cleanup() { if [[ -n "$CURRENT_STOP" ]]; then $CURRENT_STOP >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
say "building release binaries"
# kvnode and kvctl with the build every script runs; kveval on its own, since building the
# three together could resolve other features for shared dependencies and make the next
# bin/cluster.sh compile them again.
build
cargo build --release -p kveval || die "building kveval failed"
# The binaries are built; the cluster script need not build them each time.
export KV_NO_BUILD=1

rm -rf "$OUT"
mkdir -p "$OUT/sweep" "$OUT/failover"

# ---- the machine -------------------------------------------------------------------------
{
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "cpu:     $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    dev=$(df --output=source "$OUT" | tail -1)
    echo "disk:    $dev, $(df --output=fstype "$OUT" | tail -1 | tr -d ' '), $(lsblk -dno ROTA "$dev" 2>/dev/null | sed 's/1/rotational/;s/0/non-rotational/' || echo 'type unknown')"
    echo "kernel:  $(uname -sr)"
    echo "kvnode:  $("$KVNODE" --version 2>/dev/null || echo kvnode)"
    if command -v etcd >/dev/null; then echo "etcd:    $(etcd --version | head -1)"; fi
    echo "load:    kvctl bench on the same machine; $RUNS runs of $DURATION per point, 100-byte values, 1000 keys, --target $TARGET"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# ---- kvnode clusters ---------------------------------------------------------------------
kv_cluster_file() { # N DIR
    local n=$1 dir=$2
    mkdir -p "$dir"
    for ((i = 0; i < n; i++)); do
        printf '[[node]]\nid = %d\nhttp = "127.0.0.1:%d"\nraft = "127.0.0.1:%d"\n\n' \
            "$i" $((KV_HTTP_BASE + i)) $((KV_RAFT_BASE + i))
    done > "$dir/cluster.toml"
}

kv_start() { # N DIR
    kv_cluster_file "$1" "$2"
    KV_CLUSTER="$2/cluster.toml" KV_RUN_DIR="$2" "$BIN_DIR/cluster.sh" start >/dev/null
    CURRENT_STOP="kv_stop $2"
}

kv_stop() { # DIR
    KV_CLUSTER="$1/cluster.toml" KV_RUN_DIR="$1" "$BIN_DIR/cluster.sh" stop >/dev/null
    CURRENT_STOP=""
}

# ---- etcd clusters -----------------------------------------------------------------------
etcd_endpoints() { # N
    local n=$1 list=""
    for ((i = 0; i < n; i++)); do list+="${list:+,}127.0.0.1:$((ETCD_BASE + 100 * i))"; done
    echo "$list"
}

etcd_start() { # N DIR
    local n=$1 dir=$2 initial=""
    mkdir -p "$dir"
    for ((i = 0; i < n; i++)); do
        initial+="${initial:+,}e$i=http://127.0.0.1:$((ETCD_BASE + 100 * i + 1))"
    done
    for ((i = 0; i < n; i++)); do
        local client=$((ETCD_BASE + 100 * i)) peer=$((ETCD_BASE + 100 * i + 1))
        nohup etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$initial" --initial-cluster-token "eval-$n" --initial-cluster-state new \
            > "$dir/e$i.log" 2>&1 &
        echo $! > "$dir/e$i.pid"
    done
    CURRENT_STOP="etcd_stop $dir"
    local deadline=$((SECONDS + 30))
    until curl -sf -X POST "http://127.0.0.1:$ETCD_BASE/v3/kv/put" -d '{"key":"cmVhZHk=","value":"MQ=="}' >/dev/null; do
        (( SECONDS < deadline )) || die "etcd did not accept a write within 30 s; see $dir/e*.log"
        sleep 0.2
    done
}

etcd_stop() { # DIR
    local pid
    for f in "$1"/e*.pid; do
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    CURRENT_STOP=""
}

# ---- the sweep ---------------------------------------------------------------------------
# Repetitions are the outer loop, so that a slow minute of the machine spreads over every
# point instead of spoiling one.
sweep() { # SYSTEM N KVCTL-ARGS...
    local system=$1 n=$2
    shift 2
    for ((r = 1; r <= RUNS; r++)); do
        for w in $WORKLOADS; do
            for c in $CLIENTS; do
                local name="${system}_${n}n_${w/:/}_c${c}_r${r}"
                printf '  %-28s' "$name"
                "$KVCTL" "$@" bench -o json --system "$system" --workload "$w" --clients "$c" \
                    --target "$TARGET" --duration "$DURATION" --value-size 100 --keys 1000 --seed "$r" \
                    > "$OUT/sweep/$name.json" 2> "$OUT/sweep/$name.err" \
                    || die "kvctl bench failed for $name: $(cat "$OUT/sweep/$name.err")"
                sed -n 's/^  "throughput": \([0-9.]*\).*/\1/p' "$OUT/sweep/$name.json" \
                    | awk '{printf "%10.0f ops/s\n", $1}'
            done
        done
    done
}

for system in $SYSTEMS; do
    if [[ "$system" == etcd ]] && ! command -v etcd >/dev/null; then
        say "etcd is not installed: skipping the comparison (apt-get install etcd-server to include it)"
        continue
    fi
    for n in $NODES; do
        say "sweep: $system on $n nodes"
        dir="$OUT/run-$system-${n}n"
        if [[ "$system" == kv ]]; then
            kv_start "$n" "$dir"
            sweep kv "$n" --cluster "$dir/cluster.toml"
            kv_stop "$dir"
        else
            etcd_start "$n" "$dir"
            sweep etcd "$n" --endpoints "$(etcd_endpoints "$n")"
            etcd_stop "$dir"
        fi
    done
done

# ---- failover ----------------------------------------------------------------------------
# Steady writes from 8 clients for 12 s; kill -9 of the leader 3 s in; its restart 4 s later.
# Every operation's start, end and outcome is logged, so the report can measure the longest
# stretch without a successful write around the kill.
if (( FAILOVER_REPS > 0 )); then
    say "failover: $FAILOVER_REPS repetitions on 3 nodes"
    for ((rep = 1; rep <= FAILOVER_REPS; rep++)); do
        dir="$OUT/run-failover-$rep"
        kv_start 3 "$dir"
        cluster="$dir/cluster.toml"
        events="$OUT/failover/rep$rep.events"
        echo "start $(now_ms) 0" > "$events"
        "$KVCTL" --cluster "$cluster" bench -o json --workload put --clients 8 --duration 12s \
            --seed "$rep" --ops-log "$OUT/failover/rep$rep.ops.csv" \
            > "$OUT/failover/rep$rep.json" 2> "$OUT/failover/rep$rep.err" &
        bench_pid=$!
        sleep 3
        leader=$("$KVCTL" --cluster "$cluster" -o plain leader | awk '{print $1}')
        [[ "$leader" =~ ^[0-9]+$ ]] || die "no leader to kill (kvctl leader said: $leader)"
        victim=$(cat "$dir/node$leader.pid")
        kill -KILL "$victim"
        # The kill time is when the process is gone: until then it may still answer.
        gone() { ! kill -0 "$victim" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$victim/status" 2>/dev/null; }
        until gone; do sleep 0.001; done
        echo "kill $(now_ms) $leader" >> "$events"
        sleep 4
        KV_CLUSTER="$cluster" KV_RUN_DIR="$dir" "$BIN_DIR/cluster.sh" start >/dev/null
        echo "restart $(now_ms) $leader" >> "$events"
        wait "$bench_pid" || die "the failover load failed: $(cat "$OUT/failover/rep$rep.err")"
        echo "stop $(now_ms) 0" >> "$events"
        kv_stop "$dir"
        printf '  repetition %d: killed node %s\n' "$rep" "$leader"
    done
fi

# ---- report ------------------------------------------------------------------------------
say "report"
mkdir -p "$IMAGES"
"$KVEVAL" report "$OUT" --images "$IMAGES"
if [[ -n "$DOCS" ]]; then
    mkdir -p "$DOCS"
    cp "$OUT/summary.md" "$OUT/summary.json" "$OUT/machine.txt" "$DOCS/"
    echo "copied the summary to $DOCS"
fi
