//! SIGKILL at random moments. A child process (this test binary, re-run with an environment
//! variable) appends in a pipelined loop, now and then purging, truncating and saving the
//! committed hint, and prints each event on stdout; the parent kills it once it has seen a
//! random number of flushes, reopens the directory and checks:
//!
//! - every entry reported flushed (and not truncated since) is there, with the content written;
//! - indexes are consecutive from the purge point, and leaders never go back;
//! - the vote, the purge point and the committed hint are at least what the reported flushes
//!   prove durable (anything submitted before a flushed append is durable too);
//! - new appends work.
//!
//! Repeated several times on one directory, each child continuing the log of the one before.
//! The seed is printed; set `KVLOG_CRASH_SEED` to replay a run.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{append, log_id, vote, Request, Store, C};
use kvlog::LogStoreOptions;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

const CHILD_DIR_ENV: &str = "KVLOG_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "KVLOG_CRASH_CHILD_SEED";
const CHILD_RUN_ENV: &str = "KVLOG_CRASH_CHILD_RUN";
const RUNS: u64 = 8;

/// splitmix64: small, seedable, good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn options() -> LogStoreOptions {
    LogStoreOptions::default()
        .with_segment_size(64 * 1024)
        .with_cache_bytes(16 * 1024)
}

fn key(epoch: u64, index: u64) -> String {
    format!("e{epoch}-{index}")
}

// ---- the child ----

#[test]
#[ignore = "the child process of sigkill_at_random_moments_loses_nothing_reported_durable"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .expect("seed")
        .parse()
        .expect("seed number");
    let run: u64 = std::env::var(CHILD_RUN_ENV)
        .expect("run")
        .parse()
        .expect("run number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child(Path::new(&dir), seed, run));
}

/// Never returns: appends until killed. Output lines (`s` numbers the appends of this run):
/// `VOTE term`, `FLUSHED s first last epoch`, `PURGE index s_next`, `TRUNCATE index epoch`,
/// `COMMITTED index s_next`, where `s_next` is the number the next append will get.
async fn child(dir: &Path, seed: u64, run: u64) {
    let mut rng = Rng(seed);
    let mut store = Store::open(dir, options()).expect("child: open");
    let term = run + 1;
    store.save_vote(&vote(term, true)).await.expect("child: vote");
    println!("VOTE {term}");
    let mut next = store.last_log_id().map_or(1, |l| l.index + 1);
    let mut purged = store.purged().map_or(0, |p| p.index);
    let mut committed = store.committed_index().unwrap_or(0);
    let mut epoch = run * 1_000_000;
    let mut seq = 0u64;
    let mut last_flushed = next - 1;
    let mut inflight = std::collections::VecDeque::new();
    loop {
        let n = rng.range(1, 16);
        let batch: Vec<_> = (next..next + n)
            .map(|i| {
                let req = Request::Set {
                    key: key(epoch, i),
                    value: serde_json::Value::String("v".repeat(rng.range(10, 3000) as usize)),
                    idempotency_key: None,
                };
                common::Entry::new_normal(log_id(term, i), req)
            })
            .collect();
        let (tx, rx) = C::oneshot();
        store
            .append(batch, IOFlushed::signal(tx))
            .await
            .expect("child: append");
        inflight.push_back((seq, next, next + n - 1, epoch, rx));
        seq += 1;
        next += n;

        // Report flushes in order: wait for the oldest when too many are in flight, and
        // otherwise only take those that are already done.
        loop {
            let too_many = inflight.len() > 8;
            let Some((s, first, last, ep, rx)) = inflight.front_mut() else {
                break;
            };
            let result = if too_many {
                Some(rx.await)
            } else {
                match rx.try_recv() {
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
                    Ok(r) => Some(Ok(r)),
                    Err(_) => panic!("child: callback dropped"),
                }
            };
            let Some(result) = result else { break };
            result.expect("child: callback sent").expect("child: flushed");
            println!("FLUSHED {s} {first} {last} {ep}");
            last_flushed = last_flushed.max(*last);
            inflight.pop_front();
        }

        let roll = rng.range(0, 99);
        if roll < 30 && last_flushed > committed + 10 {
            committed = last_flushed - 10;
            let id = store
                .get_log_reader()
                .await
                .try_get_log_entries(committed..=committed)
                .await
                .expect("child: read")[0]
                .log_id();
            store.save_committed(Some(id)).await.expect("child: committed");
            println!("COMMITTED {committed} {seq}");
        } else if roll < 35 && committed > purged + 40 {
            let p = committed - 20;
            let id = store
                .get_log_reader()
                .await
                .try_get_log_entries(p..=p)
                .await
                .expect("child: read")[0]
                .log_id();
            store.purge(id).await.expect("child: purge");
            purged = p;
            println!("PURGE {p} {seq}");
        } else if roll < 38 && next - 1 > committed + 5 {
            let t = next - 1 - rng.range(0, 5);
            let id = store
                .get_log_reader()
                .await
                .try_get_log_entries(t..=t)
                .await
                .expect("child: read")[0]
                .log_id();
            store.truncate_after(Some(id)).await.expect("child: truncate");
            epoch += 1;
            next = t + 1;
            println!("TRUNCATE {t} {epoch}");
        }
    }
}

// ---- the parent ----

/// What the parent learned from one child's output.
#[derive(Default)]
struct Expect {
    /// Index -> epoch of every entry reported flushed and not truncated since.
    flushed: BTreeMap<u64, u64>,
    vote_term: u64,
    /// The purge point that reported flushes prove durable.
    purged_at_least: u64,
    committed_at_least: u64,
    /// (index, s_next) of purges and commits, waiting for a flush that proves them durable.
    purges: Vec<(u64, u64)>,
    commits: Vec<(u64, u64)>,
    current_epoch: u64,
    flushes_seen: usize,
}

impl Expect {
    fn line(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 { f[i].parse().expect("number") };
        match f.first().copied() {
            Some("VOTE") => self.vote_term = num(1),
            Some("FLUSHED") => {
                self.flushes_seen += 1;
                let (s, first, last, epoch) = (num(1), num(2), num(3), num(4));
                if epoch == self.current_epoch {
                    for i in first..=last {
                        self.flushed.insert(i, epoch);
                    }
                }
                // Append s is durable, so is everything submitted before it.
                for &(p, s_next) in &self.purges {
                    if s_next <= s {
                        self.purged_at_least = self.purged_at_least.max(p);
                    }
                }
                for &(c, s_next) in &self.commits {
                    if s_next <= s {
                        self.committed_at_least = self.committed_at_least.max(c);
                    }
                }
            }
            Some("PURGE") => self.purges.push((num(1), num(2))),
            Some("COMMITTED") => self.commits.push((num(1), num(2))),
            Some("TRUNCATE") => {
                let t = num(1);
                self.flushed.retain(|&i, _| i <= t);
                self.current_epoch = num(2);
            }
            _ => {}
        }
    }
}

struct Killed {
    expect: Expect,
    stderr: String,
}

/// Runs one child until it has reported `flushes` flushes (or 20 s pass), then SIGKILLs it.
fn run_child(dir: &Path, seed: u64, run: u64, flushes: usize, extra_delay: Duration) -> Killed {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_RUN_ENV, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut expect = Expect {
        current_epoch: run * 1_000_000,
        ..Expect::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while expect.flushes_seen < flushes && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => expect.line(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    std::thread::sleep(extra_delay);
    let exited_by_itself = child.try_wait().expect("try_wait");
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("stdout reader");
    for line in rx.try_iter() {
        expect.line(&line);
    }
    let stderr = err_reader.join().expect("stderr reader");
    assert!(
        exited_by_itself.is_none(),
        "the child exited by itself ({exited_by_itself:?}) before it was killed:\n{stderr}"
    );
    assert!(expect.flushes_seen > 0, "the child reported no flush:\n{stderr}");
    Killed { expect, stderr }
}

async fn check(dir: &Path, run: u64, killed: &Killed) {
    let e = &killed.expect;
    let mut store =
        Store::open(dir, options()).unwrap_or_else(|err| panic!("run {run}: reopen failed: {err}"));
    let context = format!("run {run}, recovered {:?}", store.recovered());

    let v = store.vote().unwrap_or_else(|| panic!("{context}: no vote"));
    assert!(v.leader_id().term >= e.vote_term, "{context}: vote went back");

    let purged = store.purged().map_or(0, |p| p.index);
    assert!(
        purged >= e.purged_at_least,
        "{context}: purge to {} was lost",
        e.purged_at_least
    );
    let committed = store.committed_index().unwrap_or(0);
    assert!(
        committed >= e.committed_at_least,
        "{context}: committed hint {} was lost",
        e.committed_at_least
    );

    let all = store
        .get_log_reader()
        .await
        .try_get_log_entries(..)
        .await
        .expect("read all");
    if let Some(first) = all.first() {
        assert_eq!(first.index(), purged + 1, "{context}: hole after the purge point");
    }
    for pair in all.windows(2) {
        assert_eq!(
            pair[1].index(),
            pair[0].index() + 1,
            "{context}: indexes not consecutive"
        );
        assert!(
            pair[1].log_id() >= pair[0].log_id(),
            "{context}: leader went back"
        );
    }
    if let Some(last) = store.last_log_id() {
        assert!(
            committed <= last.index,
            "{context}: committed hint ahead of the log"
        );
    }
    let by_index: BTreeMap<u64, String> = all
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(Request::Set { key, .. }) => (entry.index(), key.clone()),
            other => panic!("{context}: unexpected payload {other:?}"),
        })
        .collect();
    for (&index, &epoch) in e.flushed.range(purged + 1..) {
        let got = by_index.get(&index);
        assert_eq!(
            got,
            Some(&key(epoch, index)),
            "{context}: entry {index} was reported flushed but is {got:?}\nchild stderr:\n{}",
            killed.stderr
        );
    }

    // The log goes on.
    let next = store.last_log_id().map_or(1, |l| l.index + 1);
    let term = run + 1;
    store
        .save_vote(&vote(term, true))
        .await
        .expect("vote after reopen");
    append(
        &mut store,
        vec![common::Entry::new_normal(
            log_id(term, next),
            Request::Set {
                key: key(u64::MAX, next),
                value: serde_json::Value::Null,
                idempotency_key: None,
            },
        )],
    )
    .await
    .unwrap_or_else(|err| panic!("{context}: append after reopen: {err}"));
    store.close().expect("close");
}

#[test]
fn sigkill_at_random_moments_loses_nothing_reported_durable() {
    let seed = std::env::var("KVLOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("KVLOG_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for run in 0..RUNS {
        let flushes = rng.range(1, 400) as usize;
        let extra = Duration::from_micros(rng.range(0, 3000));
        let killed = run_child(dir.path(), rng.next(), run, flushes, extra);
        println!(
            "run {run}: killed after {} reported flushes (target {flushes}); {} entries to check",
            killed.expect.flushes_seen,
            killed.expect.flushed.len()
        );
        rt.block_on(check(dir.path(), run, &killed));
    }
}
