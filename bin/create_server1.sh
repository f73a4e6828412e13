#!/usr/bin/env bash
# Start node 1 of the local cluster described by bin/cluster.toml, in the foreground.
# Run create_server0.sh, create_server1.sh and create_server2.sh in three terminals.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet -p kvnode
exec ../target/release/kvnode --cluster cluster.toml --id 1 --data-dir data/node1 "$@"
