#!/usr/bin/env bash
# Start node 0 of the local cluster described by bin/cluster.toml, in the foreground (Ctrl-C
# stops it). Run create_server0.sh, create_server1.sh and create_server2.sh in three terminals.
# Its data lives in bin/run/data/node0, where bin/cluster.sh keeps it too: both start the same
# cluster. The environment of bin/common.sh applies (KV_CLUSTER, KV_RUN_DIR, ...).
set -euo pipefail
source "$(dirname "$0")/common.sh"
build
[[ -x "$KVNODE" ]] || die "$KVNODE is missing; run without KV_NO_BUILD=1 to build it"
exec "$KVNODE" --cluster "$CLUSTER" --id 0 --data-dir "$(data_dir 0)" "$@"
