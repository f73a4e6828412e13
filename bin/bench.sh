#!/usr/bin/env bash
# Run `kvctl bench` several times against a fresh local cluster and print the medians.
#
#   bin/bench.sh [-n RUNS] [BENCH ARGS...]
#   bin/bench.sh -n 3 --clients 64 --workload put --duration 10s
#
# The cluster is bin/cluster.toml (or $KV_CLUSTER), started in a temporary run directory with
# empty data and stopped afterwards. Each run's JSON report is kept in that directory.
set -euo pipefail
source "$(dirname "$0")/common.sh"
RUNS=3
if [[ "${1:-}" == "-n" ]]; then RUNS="$2"; shift 2; fi
export KV_RUN_DIR="${KV_RUN_DIR:-$(mktemp -d /tmp/kvbench.XXXXXX)}"
export KV_CLUSTER="$CLUSTER"
trap '"$BIN_DIR/cluster.sh" stop >/dev/null 2>&1 || true' EXIT
"$BIN_DIR/cluster.sh" start >/dev/null

field() { grep -m1 "\"$1\":" "$2" | sed 's/.*: *\([0-9.eE+-]*\).*/\1/'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for i in $(seq "$RUNS"); do
    "$KVCTL" --cluster "$CLUSTER" bench -o json "$@" > "$KV_RUN_DIR/run$i.json"
done
printf 'runs %s: %s\n' "$RUNS" "$*"
for f in throughput p50 p90 p99 p999 max errors unknown; do
    values=$(for i in $(seq "$RUNS"); do field "$f" "$KV_RUN_DIR/run$i.json"; done)
    printf '  %-10s median %-10s (runs: %s)\n' "$f" "$(median <<<"$values")" "$(tr '\n' ' ' <<<"$values")"
done
echo "  reports in $KV_RUN_DIR"
