#!/usr/bin/env bash
# Run a whole local kvnode cluster in the background.
#
#   bin/cluster.sh start    build kvnode and kvctl (release) if missing or stale, start every node
#                           of the cluster file that is not already running, wait for a leader,
#                           and print how to put kvctl on the PATH. Run it again after a node
#                           died: it starts only the missing ones.
#   bin/cluster.sh start --tls
#                           the same over TLS: the first time, `kvnode certs` writes a
#                           development CA and every node's certificates into bin/run/tls, with
#                           a cluster file (bin/run/tls/cluster.toml) that uses them; the client
#                           ports speak HTTPS and the nodes talk mutual TLS. The mode is kept
#                           until `stop`, so `status` and a later `start` use it too.
#   bin/cluster.sh stop     stop the nodes started here (SIGTERM, then SIGKILL after 10 s)
#   bin/cluster.sh status   each node of the cluster file as it answers, and which ones this
#                           script did not start (e.g. bin/create_server*.sh in a terminal)
#
# The nodes keep their data in bin/run/data/node<ID>, as bin/create_server*.sh do: both ways
# start the same cluster. Logs and pid files are in bin/run. Nodes are stopped by the pids
# recorded at start, never by process name, so other kvnode processes are left alone.
# Environment: see bin/common.sh (KV_CLUSTER, KV_RUN_DIR, KV_BIN_DIR, KV_NO_BUILD), and
# KV_NODE_ARGS: extra kvnode flags for every node (e.g. "--batch-in-flight 2").
set -euo pipefail
source "$(dirname "$0")/common.sh"

[[ -f "$CLUSTER" ]] || die "cluster file $CLUSTER not found"

TLS_DIR="$RUN_DIR/tls"
MODE_FILE="$RUN_DIR/mode"
tls_on() { [[ "$(cat "$MODE_FILE" 2>/dev/null)" == tls ]]; }

# "id http" pairs from the cluster file (without a scheme).
nodes() {
    awk -F'=' '
        /^[[:space:]]*id[[:space:]]*=/   { gsub(/[[:space:]"]/, "", $2); id = $2 }
        /^[[:space:]]*http[[:space:]]*=/ { gsub(/[[:space:]"]/, "", $2); sub(/^https?:\/\//, "", $2); print id, $2 }
    ' "$CLUSTER"
}

# The cluster file the nodes run with: the TLS one in TLS mode.
node_cluster() { if tls_on; then echo "$TLS_DIR/cluster.toml"; else echo "$CLUSTER"; fi; }

# GET $1 (host:port) $2 (path) with curl, over TLS in TLS mode.
fetch() {
    if tls_on; then
        curl -s --max-time 1 --cacert "$TLS_DIR/ca.pem" "https://$1$2"
    else
        curl -s --max-time 1 "http://$1$2"
    fi
}

pid_of() { cat "$RUN_DIR/node$1.pid" 2>/dev/null || true; }

# True when $1 is a live kvnode process (guards against a recycled pid).
is_kvnode() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q kvnode
}

role_of() {
    # Prints "role term=T leader=L" as the node at $1 reports it, or "down". A node that checks
    # tokens (--auth-file) shows /admin/status only with one, but its /ready is open and names
    # the leader: the role is then "leader" or "member", the term unknown.
    local out
    if out=$(fetch "$1" /admin/status 2>/dev/null) && [[ -n "$out" ]]; then
        if [[ "$out" == *'"code":"unauthenticated"'* ]]; then
            local ready node leader
            ready=$(fetch "$1" /ready 2>/dev/null)
            node=$(sed -n 's/.*"node":\([0-9]*\).*/\1/p' <<<"$ready")
            leader=$(sed -n 's/.*"leader":\([0-9]*\).*/\1/p' <<<"$ready")
            if [[ -n "$node" && "$node" == "$leader" ]]; then
                echo "leader term=? leader=$leader"
            else
                echo "member term=? leader=${leader:-none}"
            fi
            return
        fi
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
    build
    [[ -x "$KVNODE" ]] || die "$KVNODE is missing; run without KV_NO_BUILD=1 to build it"
    mkdir -p "$RUN_DIR"
    if [[ "${1:-}" == --tls ]]; then
        if ! tls_on && [[ -n "$(running_nodes)" ]]; then
            die "nodes are running without TLS; bin/cluster.sh stop them first"
        fi
        if [[ ! -f "$TLS_DIR/ca.pem" ]]; then
            "$KVNODE" certs --cluster "$CLUSTER" --out "$TLS_DIR" >/dev/null \
                || die "kvnode certs could not write the certificates"
            echo "certificates written to $TLS_DIR (a development CA: keep it off production)"
        fi
        echo tls > "$MODE_FILE"
    elif [[ -n "${1:-}" ]]; then
        die "unknown option $1 (start takes --tls)"
    fi
    local cluster_file
    cluster_file=$(node_cluster)
    while read -r id http; do
        local pid
        pid=$(pid_of "$id")
        if is_kvnode "$pid"; then
            echo "node $id already running (pid $pid)"
            continue
        fi
        case "$(role_of "$http")" in
            down) ;;
            unknown*) die "something that is not kvnode answers at $http; stop it, or use another cluster file (KV_CLUSTER)" ;;
            *)
                echo "node $id already answers at $http (not started by cluster.sh; left alone)"
                continue
                ;;
        esac
        # shellcheck disable=SC2086 # KV_NODE_ARGS is a list of flags, split on purpose
        nohup "$KVNODE" --cluster "$cluster_file" --id "$id" --data-dir "$(data_dir "$id")" ${KV_NODE_ARGS:-} \
            >>"$RUN_DIR/node$id.log" 2>&1 &
        echo $! > "$RUN_DIR/node$id.pid"
        echo "node $id starting at $http (pid $!, log $RUN_DIR/node$id.log)"
    done < <(nodes)

    local deadline=$((SECONDS + 30)) leader=""
    while [[ -z "$leader" ]]; do
        while read -r id http; do
            if [[ "$(role_of "$http")" == leader* ]]; then leader="$id $http"; fi
            # A node that exits at once (its port taken, its data directory refused) says why
            # in its log; show that now rather than after 30 s.
            local pid
            pid=$(pid_of "$id")
            if [[ -n "$pid" ]] && ! is_kvnode "$pid"; then
                echo "node $id exited; the end of $RUN_DIR/node$id.log:" >&2
                tail -n 5 "$RUN_DIR/node$id.log" >&2
                rm -f "$RUN_DIR/node$id.pid"
                die "node $id did not start; the nodes that did keep running (bin/cluster.sh stop stops them)"
            fi
        done < <(nodes)
        if [[ -z "$leader" ]]; then
            (( SECONDS < deadline )) || { status; die "no leader after 30 s; see the logs in $RUN_DIR"; }
            sleep 0.2
        fi
    done
    echo
    status
    echo
    local scheme=http
    tls_on && scheme=https
    echo "leader: node ${leader% *} at $scheme://${leader#* }"
    echo "logs and data: $RUN_DIR"
    echo
    echo "kvctl and kvnode are in $KV_BIN_DIR; to use them from this shell, paste:"
    echo
    echo "  export PATH=\"$KV_BIN_DIR:\$PATH\""
    if tls_on; then
        echo "  export KVCTL_CLUSTER=\"$TLS_DIR/cluster.toml\""
    elif [[ "$CLUSTER" != "$BIN_DIR/cluster.toml" ]]; then
        echo "  export KVCTL_CLUSTER=\"$CLUSTER\""
    fi
    echo
    echo "then try:  kvctl status    (and bin/cluster.sh stop to stop the nodes)"
    if tls_on; then
        local first
        first=$(nodes | head -n 1)
        echo "     curl: curl --cacert $TLS_DIR/ca.pem https://localhost:${first##*:}/keys/a"
    fi
}

# Ids of the nodes started here that still run.
running_nodes() {
    while read -r id http; do
        if is_kvnode "$(pid_of "$id")"; then echo "$id"; fi
    done < <(nodes)
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
        elif [[ "$(role_of "$http")" != down ]]; then
            echo "node $id at $http was not started by cluster.sh; stop it where it runs (Ctrl-C in its terminal)"
        fi
        rm -f "$RUN_DIR/node$id.pid"
    done < <(nodes)
    (( any )) || echo "no nodes started by cluster.sh were running"
    # The next start is plain unless it says --tls again; the certificates stay for it.
    if [[ -z "$(running_nodes)" ]]; then rm -f "$MODE_FILE"; fi
}

status() {
    printf '%-4s %-22s %-8s %s\n' ID HTTP PID STATE
    while read -r id http; do
        local pid state
        pid=$(pid_of "$id")
        state=$(role_of "$http")
        if is_kvnode "$pid"; then
            [[ "$state" != down ]] || state="running, not answering yet"
        else
            pid="-"
            [[ "$state" == down ]] || state="$state (not started by cluster.sh)"
        fi
        printf '%-4s %-22s %-8s %s\n' "$id" "$http" "$pid" "$state"
    done < <(nodes)
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start [--tls]|stop|status" >&2; exit 2 ;;
esac
