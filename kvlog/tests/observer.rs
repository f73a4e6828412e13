//! The write observer sees every durable group with its entry count and times, every meta file
//! written, and a failed write.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{append, entries, small_options, vote, Store};
use kvlog::{GroupWritten, WriteObserver};
use openraft::storage::RaftLogStorage;

#[derive(Debug, Default)]
struct Seen {
    groups: Mutex<Vec<GroupWritten>>,
    metas: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
}

impl WriteObserver for Seen {
    fn group_written(&self, group: &GroupWritten) {
        self.groups.lock().expect("lock").push(*group);
    }
    fn meta_written(&self, elapsed: Duration) {
        self.metas.lock().expect("lock").push(elapsed);
    }
    fn failed(&self, why: &str) {
        self.failures.lock().expect("lock").push(why.to_string());
    }
}

#[tokio::test]
async fn the_observer_sees_groups_meta_writes_and_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = Arc::new(Seen::default());
    let mut store = Store::open(dir.path(), small_options().with_observer(seen.clone())).expect("open");

    store.save_vote(&vote(1, false)).await.expect("vote");
    append(&mut store, entries(1, 1, 3)).await.expect("append");
    append(&mut store, entries(1, 4, 2)).await.expect("append");
    {
        let groups = seen.groups.lock().expect("lock");
        let entry_counts: Vec<usize> = groups.iter().map(|g| g.entries).collect();
        assert_eq!(
            entry_counts,
            vec![3, 2],
            "one group per awaited append: {groups:?}"
        );
        assert!(groups.iter().all(|g| g.records >= g.entries && g.bytes > 0));
    }
    assert_eq!(seen.metas.lock().expect("lock").len(), 1, "the vote's meta file");

    store.fail_next_write();
    assert!(append(&mut store, entries(1, 6, 1)).await.is_err());
    let failures = seen.failures.lock().expect("lock").clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("injected"), "{failures:?}");
    assert_eq!(
        seen.groups.lock().expect("lock").len(),
        2,
        "a failed group is not reported as written"
    );
}
