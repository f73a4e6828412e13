#!/usr/bin/env bash
# Run a whole local kvnode cluster in the background.
#
#   bin/cluster.sh start    build release binaries if missing or stale, start every node of the
#                           cluster file, wait for a leader, print where everything is
#   bin/cluster.sh stop     stop the nodes started here (SIGTERM, then SIGKILL after 10 s)
#   bin/cluster.sh status   which nodes run, and each node's role as it reports it
#
# Environment:
#   KV_CLUSTER   cluster file            (default: bin/cluster.toml)
#   KV_RUN_DIR   logs, pid files, data   (default: bin/run)
#   KV_NO_BUILD  set to 1 to skip the release build (when the caller has just built)
#
# Nodes are stopped by the pids recorded at start, never by process name, so other kvnode
# processes on the machine are left alone.
set -euo pipefail

BIN_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BIN_DIR/.." && pwd)"
CLUSTER="${KV_CLUSTER:-$BIN_DIR/cluster.toml}"
RUN_DIR="${KV_RUN_DIR:-$BIN_DIR/run}"
KVNODE="$ROOT/target/release/kvnode"

die() { echo "cluster.sh: $*" >&2; exit 1; }

[[ -f "$CLUSTER" ]] || die "cluster file $CLUSTER not found"

# "id http" pairs from the cluster file.
nodes() {
    awk -F'=' '
        /^[[:space:]]*id[[:space:]]*=/   { gsub(/[[:space:]"]/, "", $2); id = $2 }
        /^[[:space:]]*http[[:space:]]*=/ { gsub(/[[:space:]"]/, "", $2); print id, $2 }
    ' "$CLUSTER"
}

pid_of() { cat "$RUN_DIR/node$1.pid" 2>/dev/null || true; }

# True when $1 is a live kvnode process (guards against a recycled pid).
is_kvnode() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q kvnode
}

role_of() {
    # Prints "role term leader" as the node reports it, or "down".
    local out
    if out=$(curl -s --max-time 1 "http://$1/admin/status" 2>/dev/null) && [[ -n "$out" ]]; then
        local role term leader
        role=$(sed -n 's/.*"role":"\([a-z]*\)".*/\1/p' <<<"$out")
        term=$(sed -n 's/.*"term":\([0-9]*\).*/\1/p' <<<"$out")
        leader=$(sed -n 's/.*"leader":{"id":\([0-9]*\).*/\1/p' <<<"$out")
        echo "${role:-unknown} term=${term:-?} leader=${leader:-none}"
    else
        echo "down"
    fi
}

start() {
    command -v curl >/dev/null || die "curl is needed to wait for the leader (apt-get install curl)"
    if [[ "${KV_NO_BUILD:-0}" != 1 ]]; then
        echo "building release binaries (cargo skips this when they are up to date)..."
        (cd "$ROOT" && cargo build --release --quiet -p kvnode -p kvctl) || die "build failed"
    fi
    [[ -x "$KVNODE" ]] || die "$KVNODE is missing; run without KV_NO_BUILD=1 to build it"
    mkdir -p "$RUN_DIR"
    while read -r id http; do
        local pid
        pid=$(pid_of "$id")
        if is_kvnode "$pid"; then
            echo "node $id already running (pid $pid)"
            continue
        fi
        nohup "$KVNODE" --cluster "$CLUSTER" --id "$id" --data-dir "$RUN_DIR/data/node$id" \
            >>"$RUN_DIR/node$id.log" 2>&1 &
        echo $! > "$RUN_DIR/node$id.pid"
    done < <(nodes)

    local deadline=$((SECONDS + 30)) leader=""
    while [[ -z "$leader" ]]; do
        while read -r id http; do
            if [[ "$(role_of "$http")" == leader* ]]; then leader="$id $http"; fi
        done < <(nodes)
        if [[ -z "$leader" ]]; then
            (( SECONDS < deadline )) || { status; die "no leader after 30 s; see the logs in $RUN_DIR"; }
            sleep 0.2
        fi
    done
    echo
    status
    echo
    echo "leader: node ${leader% *} at http://${leader#* }"
    echo "logs and data: $RUN_DIR"
    echo
    echo "try:"
    echo "  curl -X POST localhost:8080/keys/a -d '{\"type\":\"PUT\",\"value\":[\"cat\",\"dog\"]}'"
    echo "  target/release/kvctl --cluster $CLUSTER get a"
    echo "  bin/cluster.sh stop"
}

stop() {
    local any=0
    while read -r id http; do
        local pid
        pid=$(pid_of "$id")
        if is_kvnode "$pid"; then
            any=1
            kill -TERM "$pid"
            local deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "node $id did not stop within 10 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "node $id stopped (pid $pid)"
        fi
        rm -f "$RUN_DIR/node$id.pid"
    done < <(nodes)
    (( any )) || echo "no nodes were running"
}

status() {
    printf '%-4s %-22s %-8s %s\n' ID HTTP PID STATE
    while read -r id http; do
        local pid state
        pid=$(pid_of "$id")
        if is_kvnode "$pid"; then state=$(role_of "$http"); else pid="-"; state="stopped"; fi
        printf '%-4s %-22s %-8s %s\n' "$id" "$http" "$pid" "$state"
    done < <(nodes)
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
