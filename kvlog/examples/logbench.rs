//! Segment files (kvlog, candidate A) against redb (candidate B) as the log behind openraft 0.10.
//!
//! Both are driven through the same `RaftLogStorage` calls. Each run keeps N appends of one
//! entry (about 100 bytes of JSON payload) in flight, like N clients writing through one
//! leader: when a flush callback fires, the next append goes out. Reported per N: appends per
//! second, and the flush latency (from the `append` call to its callback) at p50 and p99; each
//! figure is the median of 3 runs, whose order alternates between the candidates. A third line,
//! kvlog with segments that are only `fallocate`d, shows what zero-filling them buys. B is the smallest redb store that can be compared fairly:
//! the same in-memory tail and writer thread as A, with one `Durability::Immediate`
//! transaction per group where A does one `pwrite` and one `fdatasync`.
//!
//! Run: `cargo run --release -p kvlog --example logbench [seconds-per-run] [dir]`
//! (defaults: 2 s, the system temp directory; the directory must be on the disk to measure).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kvlog::{LogStore, LogStoreOptions};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::{LogId, RaftTypeConfig};
use serde::{Deserialize, Serialize};

/// A write like kvnode's: a key and a JSON value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Write {
    key: String,
    value: serde_json::Value,
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)
    }
}

openraft::declare_raft_types!(
    BenchConfig:
        D = Write,
        R = (),
);
type C = BenchConfig;
type Entry = <C as RaftTypeConfig>::Entry;

fn entry(index: u64) -> Entry {
    let write = Write {
        key: format!("key-{index}"),
        // 100 bytes of payload.
        value: serde_json::Value::String("v".repeat(100)),
    };
    Entry::new_normal(
        LogId {
            leader_id: <C as RaftTypeConfig>::LeaderId::new_committed(1, 1),
            index,
        },
        write,
    )
}

/// Runs per candidate and concurrency; each figure reported is the median over them.
const RUNS: usize = 3;

struct RunResult {
    appends_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Appends entry `index`; returns a future that resolves, with the time since the call, once
/// the entry's flush callback has fired.
async fn submit<S: RaftLogStorage<C>>(
    store: &mut S,
    index: u64,
) -> io::Result<impl std::future::Future<Output = (Duration, io::Result<()>)>> {
    let (tx, rx) = C::oneshot();
    let sent = Instant::now();
    store.append(vec![entry(index)], IOFlushed::signal(tx)).await?;
    Ok(async move {
        let flushed = rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("callback dropped")));
        (sent.elapsed(), flushed)
    })
}

/// Keeps `inflight` appends outstanding for a warm-up of `duration / 4`, then measures for
/// `duration`. The warm-up keeps the end of opening (a segment of zeros being synced) and the
/// first appends out of the figures.
async fn drive<S: RaftLogStorage<C>>(
    store: &mut S,
    inflight: usize,
    duration: Duration,
) -> io::Result<RunResult> {
    let mut next = 1u64;
    let mut latencies = Vec::new();
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    let warm_up = duration / 4;
    let mut measuring_since = None;
    for _ in 0..inflight {
        pending.push(submit(store, next).await?);
        next += 1;
    }
    while let Some((latency, flushed)) = pending.next().await {
        flushed?;
        let elapsed = start.elapsed();
        if elapsed >= warm_up {
            let since = *measuring_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= duration {
                // Stop submitting; the rest in flight is drained but not counted.
                measuring_since = Some(since);
                break;
            }
            latencies.push(latency);
        }
        pending.push(submit(store, next).await?);
        next += 1;
    }
    let measured = measuring_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
    while let Some((_, flushed)) = pending.next().await {
        flushed?;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Ok(RunResult {
        appends_per_sec: latencies.len() as f64 / measured,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Clone, Copy)]
enum Candidate {
    /// kvlog as shipped: zero-filled segments.
    Segments,
    /// kvlog with segments only `fallocate`d, to show what zero-filling buys.
    SegmentsFallocate,
    Redb,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Candidate::Segments => "A segments",
            Candidate::SegmentsFallocate => "A fallocate",
            Candidate::Redb => "B redb",
        })
    }
}

async fn one_run(
    candidate: Candidate,
    base: &Path,
    inflight: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir_in(base)?;
    let result = match candidate {
        Candidate::Segments | Candidate::SegmentsFallocate => {
            let zero_fill = matches!(candidate, Candidate::Segments);
            let options = LogStoreOptions::default().with_zero_fill_segments(zero_fill);
            let mut store = LogStore::<C>::open(dir.path(), options)?;
            let r = drive(&mut store, inflight, duration).await?;
            store.close()?;
            r
        }
        Candidate::Redb => {
            let mut store = redb_store::RedbLog::open(&dir.path().join("log.redb"))?;
            drive(&mut store, inflight, duration).await?
        }
    };
    Ok(result)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let base: PathBuf = args.next().map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let duration = Duration::from_secs_f64(secs);
    println!(
        "logbench: 1-entry appends (~100 B payload), {secs} s per run after a warm-up, median of {RUNS} runs, in {}",
        base.display()
    );
    println!(
        "{:<11} {:>8} {:>12} {:>10} {:>10}",
        "store", "inflight", "appends/s", "p50 µs", "p99 µs"
    );
    let candidates = [Candidate::Segments, Candidate::SegmentsFallocate, Candidate::Redb];
    for inflight in [1usize, 8, 64] {
        // Runs of the candidates alternate, so that load from elsewhere on the machine falls
        // on all of them alike.
        let mut results: Vec<Vec<RunResult>> = candidates.iter().map(|_| Vec::new()).collect();
        for _ in 0..RUNS {
            for (n, candidate) in candidates.iter().enumerate() {
                results[n].push(one_run(*candidate, &base, inflight, duration).await?);
            }
        }
        for (candidate, runs) in candidates.iter().zip(results) {
            println!(
                "{:<11} {:>8} {:>12.0} {:>10.0} {:>10.0}",
                candidate.to_string(),
                inflight,
                median(runs.iter().map(|r| r.appends_per_sec).collect()),
                median(runs.iter().map(|r| r.p50_us).collect()),
                median(runs.iter().map(|r| r.p99_us).collect())
            );
        }
    }
    Ok(())
}

/// Candidate B: redb behind the same pipelining as kvlog. Only what the benchmark and a fair
/// comparison need: appends, vote, truncation and purge go through one writer thread in order,
/// a group is one durable transaction, and readers see unflushed entries from memory.
mod redb_store {
    use super::*;
    use openraft::storage::LogState;
    use openraft::{OptionalSend, RaftLogReader};
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    use std::fmt::Debug;
    use std::ops::RangeBounds;

    const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

    enum Op {
        Append(Vec<(u64, Vec<u8>)>, IOFlushed<C>),
        Vote(Vec<u8>, tokio::sync::oneshot::Sender<io::Result<()>>),
        Truncate(Option<u64>),
        Purge(u64),
    }

    struct State {
        pending: BTreeMap<u64, Entry>,
        last: Option<LogIdOf<C>>,
        purged: Option<LogIdOf<C>>,
        vote: Option<VoteOf<C>>,
    }

    pub struct RedbLog {
        db: Arc<Database>,
        state: Arc<Mutex<State>>,
        tx: Option<mpsc::Sender<Op>>,
        writer: Option<std::thread::JoinHandle<()>>,
    }

    impl RedbLog {
        pub fn open(path: &Path) -> anyhow::Result<RedbLog> {
            let db = Arc::new(Database::create(path)?);
            let txn = db.begin_write()?;
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
            txn.commit()?;
            let state = Arc::new(Mutex::new(State {
                pending: BTreeMap::new(),
                last: None,
                purged: None,
                vote: None,
            }));
            let (tx, rx) = mpsc::channel();
            let (wdb, wstate) = (db.clone(), state.clone());
            let writer = std::thread::spawn(move || write_loop(&wdb, &wstate, rx));
            Ok(RedbLog {
                db,
                state,
                tx: Some(tx),
                writer: Some(writer),
            })
        }

        fn send(&self, op: Op) -> io::Result<()> {
            self.tx
                .as_ref()
                .ok_or_else(|| io::Error::other("closed"))?
                .send(op)
                .map_err(|_| io::Error::other("writer gone"))
        }
    }

    impl Drop for RedbLog {
        fn drop(&mut self) {
            self.tx = None;
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
        }
    }

    fn write_loop(db: &Database, state: &Mutex<State>, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            ops.extend(rx.try_iter());
            let result = (|| -> Result<(), redb::Error> {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut logs = txn.open_table(LOGS)?;
                    let mut meta = txn.open_table(META)?;
                    for op in &ops {
                        match op {
                            Op::Append(entries, _) => {
                                for (index, bytes) in entries {
                                    logs.insert(*index, bytes.as_slice())?;
                                }
                            }
                            Op::Vote(bytes, _) => {
                                meta.insert("vote", bytes.as_slice())?;
                            }
                            Op::Truncate(Some(after)) => {
                                logs.retain_in(after + 1.., |_, _| false)?;
                            }
                            Op::Truncate(None) => {
                                logs.retain(|_, _| false)?;
                            }
                            Op::Purge(upto) => {
                                logs.retain_in(..=*upto, |_, _| false)?;
                            }
                        }
                    }
                }
                txn.commit()?;
                Ok(())
            })()
            .map_err(|e| e.to_string());
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            for op in ops {
                match op {
                    Op::Append(entries, callback) => {
                        if result.is_ok() {
                            for (index, _) in &entries {
                                st.pending.remove(index);
                            }
                        }
                        callback.io_completed(result.clone().map_err(io::Error::other));
                    }
                    Op::Vote(_, done) => {
                        let _ = done.send(result.clone().map_err(io::Error::other));
                    }
                    Op::Truncate(_) | Op::Purge(_) => {}
                }
            }
        }
    }

    #[derive(Clone)]
    pub struct Reader {
        db: Arc<Database>,
        state: Arc<Mutex<State>>,
    }

    impl RaftLogReader<C> for Reader {
        async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
            &mut self,
            range: RB,
        ) -> Result<Vec<Entry>, io::Error> {
            let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
            let txn = self.db.begin_read().map_err(io::Error::other)?;
            let table = txn.open_table(LOGS).map_err(io::Error::other)?;
            for item in table.range(range.clone()).map_err(io::Error::other)? {
                let (k, v) = item.map_err(io::Error::other)?;
                out.insert(
                    k.value(),
                    rmp_serde::from_slice(v.value()).map_err(io::Error::other)?,
                );
            }
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (k, e) in st.pending.range(range) {
                out.insert(*k, e.clone());
            }
            Ok(out.into_values().collect())
        }

        async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
            Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).vote)
        }
    }

    impl RaftLogStorage<C> for RedbLog {
        type LogReader = Reader;

        async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            Ok(LogState {
                last_purged_log_id: st.purged,
                last_log_id: st.last.or(st.purged),
            })
        }

        async fn get_log_reader(&mut self) -> Self::LogReader {
            Reader {
                db: self.db.clone(),
                state: self.state.clone(),
            }
        }

        async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
            let bytes = rmp_serde::to_vec_named(vote).map_err(io::Error::other)?;
            let (done, wait) = tokio::sync::oneshot::channel();
            self.state.lock().unwrap_or_else(|p| p.into_inner()).vote = Some(*vote);
            self.send(Op::Vote(bytes, done))?;
            wait.await.map_err(io::Error::other)?
        }

        async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
        where
            I: IntoIterator<Item = Entry> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut encoded = Vec::new();
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                encoded.push((e.index(), rmp_serde::to_vec_named(&e).map_err(io::Error::other)?));
                st.last = Some(e.log_id());
                st.pending.insert(e.index(), e);
            }
            drop(st);
            self.send(Op::Append(encoded, callback))
        }

        async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
            let after = last_log_id.map(|l| l.index);
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.pending.retain(|k, _| after.is_some_and(|a| *k <= a));
            st.last = last_log_id;
            drop(st);
            self.send(Op::Truncate(after))
        }

        async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.pending.retain(|k, _| *k > log_id.index);
            st.purged = Some(log_id);
            drop(st);
            self.send(Op::Purge(log_id.index))
        }
    }
}
