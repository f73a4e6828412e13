//! How much memory the state machine gains per idempotent write: applies writes that carry
//! fresh UUIDv7 keys to a fixed set of keys (so the data does not grow) and prints the growth of
//! the process's resident set per write.
//!
//!     cargo run --release -p kvnode --example sm_memory [WRITES]

use kvnode::state::KvState;
use kvnode::types::{Batch, Command, IdemKey, Op};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let writes: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = 1_700_000_000_000u64;
    let mut state = KvState::default();
    let value = serde_json::Value::String("x".repeat(100));
    // Warm up: the 1000 keys exist before measuring.
    let warm: Vec<Op> = (0..1000)
        .map(|k| Op {
            key: format!("key{k}"),
            cmd: Command::Put(value.clone()),
            idem: None,
            cond: None,
        })
        .collect();
    state.apply_batch(1, &Batch { ts_ms: t0, ops: warm });
    let before = rss_bytes();
    let per_batch = 32;
    for b in 0..writes / per_batch {
        let ts = t0 + b; // 1 ms of log time per batch: nothing expires within the run
        let ops = (0..per_batch)
            .map(|i| {
                let n = b * per_batch + i;
                Op {
                    key: format!("key{}", n % 1000),
                    cmd: Command::Put(value.clone()),
                    idem: Some(IdemKey((u128::from(ts) << 80) | (7u128 << 76) | u128::from(n))),
                    cond: None,
                }
            })
            .collect();
        state.apply_batch(2 + b, &Batch { ts_ms: ts, ops });
    }
    let after = rss_bytes();
    println!(
        "{} writes, {} records: RSS +{} bytes = {:.1} bytes per write",
        writes,
        state.records(),
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / writes as f64
    );
}
