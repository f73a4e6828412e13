# Sourced by the scripts in bin/: where things are, and the one build they all run.
#
# Every script builds with the same command, `cargo build --release -p kvnode -p kvctl`, so
# cargo resolves the same features for the same packages and a second script never compiles
# the dependencies again. The build shows cargo's progress: a first build compiles about 180
# crates and takes minutes on a small machine.
#
# Environment (all optional):
#   KV_CLUSTER    cluster file                     (default: bin/cluster.toml)
#   KV_RUN_DIR    logs, pid files and data         (default: bin/run; data in $KV_RUN_DIR/data/node<ID>)
#   KV_BIN_DIR    where kvnode and kvctl are       (default: the release directory of cargo's target dir)
#   KV_NO_BUILD   1: do not build (the caller has)
#   CARGO_TARGET_DIR is honoured as cargo honours it.

BIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BIN_DIR/.." && pwd)"

# Relative paths in the environment are relative to where the script was started.
absolute() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }

CLUSTER="$(absolute "${KV_CLUSTER:-$BIN_DIR/cluster.toml}")"
RUN_DIR="$(absolute "${KV_RUN_DIR:-$BIN_DIR/run}")"
# cargo reads a relative CARGO_TARGET_DIR against the directory it runs in, which is $ROOT.
case "${CARGO_TARGET_DIR:-}" in
    "") TARGET_DIR="$ROOT/target" ;;
    /*) TARGET_DIR="$CARGO_TARGET_DIR" ;;
    *) TARGET_DIR="$ROOT/$CARGO_TARGET_DIR" ;;
esac
KV_BIN_DIR="$(absolute "${KV_BIN_DIR:-$TARGET_DIR/release}")"
KVNODE="$KV_BIN_DIR/kvnode"
KVCTL="$KV_BIN_DIR/kvctl"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# The data directory of node $1: the same whichever script starts the node.
data_dir() { echo "$RUN_DIR/data/node$1"; }

# Build kvnode and kvctl (release), showing cargo's progress on stderr.
build() {
    [[ "${KV_NO_BUILD:-0}" == 1 ]] && return 0
    command -v cargo >/dev/null || die "cargo is not on the PATH; install Rust from https://rustup.rs"
    echo "building kvnode and kvctl (release; a first build takes minutes, later ones seconds)..." >&2
    (cd "$ROOT" && cargo build --release -p kvnode -p kvctl) || die "the build failed"
}
