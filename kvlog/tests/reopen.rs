//! What a store remembers across close and reopen: entries (bit for bit, including JSON values
//! and tagged enums), the vote, the purge point, truncations and the committed hint; and what
//! it refuses (a second opener, a missing meta file).

mod common;

use common::{all_ids, append, entries, entry, log_id, open_small, small_options, vote, Store};
use kvlog::{LogStoreOptions, OpenError};
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn entries_vote_purge_truncate_and_committed_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = {
        let mut store = open_small(dir.path());
        store.save_vote(&vote(1, true)).await.expect("save vote");
        let mut written = Vec::new();
        for first in (1..=50).step_by(5) {
            let batch = entries(1, first, 5);
            written.extend(batch.clone());
            append(&mut store, batch).await.expect("append");
        }
        store
            .save_committed(Some(log_id(1, 30)))
            .await
            .expect("save committed");
        store.purge(log_id(1, 10)).await.expect("purge");
        store.truncate_after(Some(log_id(1, 40))).await.expect("truncate");
        store.save_vote(&vote(2, true)).await.expect("save vote 2");
        let replacement = entries(2, 41, 5);
        written.truncate(40);
        written.extend(replacement.clone());
        append(&mut store, replacement)
            .await
            .expect("append after truncate");
        store.close().expect("close");
        written
    };

    let mut store = open_small(dir.path());
    let rec = store.recovered().clone();
    assert_eq!(rec.vote, Some(vote(2, true)));
    assert_eq!(rec.purged, Some(log_id(1, 10)));
    assert_eq!(rec.last_log_id, Some(log_id(2, 45)));
    assert_eq!(rec.committed, Some(log_id(1, 30)));
    assert_eq!(rec.entries, 35);
    assert_eq!(rec.tail_repair, None);
    assert_eq!(store.committed_index(), Some(30));
    assert!(!store.is_pristine());

    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 10)));
    assert_eq!(state.last_log_id, Some(log_id(2, 45)));

    let mut reader = store.get_log_reader().await;
    let got = reader.try_get_log_entries(0..).await.expect("read");
    let want = &written[10..];
    assert_eq!(
        format!("{got:?}"),
        format!("{want:?}"),
        "entries changed across the reopen"
    );
    assert_eq!(reader.read_vote().await.expect("vote"), Some(vote(2, true)));
    assert_eq!(
        store.read_committed().await.expect("committed"),
        Some(log_id(1, 30))
    );
}

#[tokio::test]
async fn a_purge_then_appends_then_a_reopen_leaves_no_hole() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 20)).await.expect("append");
        store.purge(log_id(1, 15)).await.expect("purge");
        append(&mut store, entries(1, 21, 10))
            .await
            .expect("append after purge");
    }
    let mut store = open_small(dir.path());
    let ids = all_ids(&mut store).await;
    let indexes: Vec<u64> = ids.iter().map(|id| id.index).collect();
    assert_eq!(indexes, (16..=30).collect::<Vec<_>>());
    assert_eq!(store.purged(), Some(log_id(1, 15)));
    // And the log goes on where it ended.
    append(&mut store, entries(1, 31, 3))
        .await
        .expect("append after reopen");
    assert_eq!(store.last_log_id(), Some(log_id(1, 33)));
}

#[tokio::test]
async fn a_purge_past_the_end_then_appends_survive_a_reopen() {
    // What installing a snapshot ahead of the log looks like.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 10)).await.expect("append");
        store.purge(log_id(3, 20)).await.expect("purge");
        assert_eq!(store.last_log_id(), Some(log_id(3, 20)));
        append(&mut store, entries(3, 21, 5))
            .await
            .expect("append after purge");
    }
    let mut store = open_small(dir.path());
    let ids = all_ids(&mut store).await;
    assert_eq!(ids, (21..=25).map(|i| log_id(3, i)).collect::<Vec<_>>());
    assert_eq!(store.purged(), Some(log_id(3, 20)));
}

#[tokio::test]
async fn truncated_entries_never_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 10)).await.expect("append");
        store.truncate_after(Some(log_id(1, 5))).await.expect("truncate");
        append(&mut store, entries(2, 6, 3)).await.expect("append");
    }
    {
        let mut store = open_small(dir.path());
        let ids = all_ids(&mut store).await;
        let want: Vec<_> = (1..=5)
            .map(|i| log_id(1, i))
            .chain((6..=8).map(|i| log_id(2, i)))
            .collect();
        assert_eq!(ids, want);
        store.truncate_after(None).await.expect("truncate all");
    }
    let mut store = open_small(dir.path());
    assert_eq!(all_ids(&mut store).await, vec![]);
    assert_eq!(store.last_log_id(), None);
    append(&mut store, entries(3, 1, 2))
        .await
        .expect("append to an emptied log");
}

#[tokio::test]
async fn payloads_round_trip_through_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = small_options();
    options.cache_bytes = 0;
    let written: Vec<_> = (1..=30).map(|i| entry(1, i, (i as usize * 37) % 500)).collect();
    {
        let mut store = Store::open(dir.path(), options.clone()).expect("open");
        append(&mut store, written.clone()).await.expect("append");
        // With no cache, these reads already come from disk.
        let mut reader = store.get_log_reader().await;
        let got = reader.try_get_log_entries(1..=30).await.expect("read");
        assert_eq!(format!("{got:?}"), format!("{written:?}"));
    }
    let store = Store::open(dir.path(), options).expect("reopen");
    let mut reader = store.reader();
    let got = reader.try_get_log_entries(5..9).await.expect("read");
    assert_eq!(format!("{got:?}"), format!("{:?}", &written[4..8]));
    let got = reader.try_get_log_entries(29..100).await.expect("read");
    assert_eq!(format!("{got:?}"), format!("{:?}", &written[28..]));
}

#[tokio::test]
async fn an_entry_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = entry(1, 2, 40_000);
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 1)).await.expect("append");
        append(&mut store, vec![big.clone()]).await.expect("append big");
        append(&mut store, entries(1, 3, 1))
            .await
            .expect("append after big");
    }
    let store = open_small(dir.path());
    let mut reader = store.reader();
    let got = reader.try_get_log_entries(2..3).await.expect("read");
    assert_eq!(format!("{got:?}"), format!("{:?}", [big]));
    assert_eq!(store.last_log_id(), Some(log_id(1, 3)));
}

#[tokio::test]
async fn purged_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    for first in (1..=400).step_by(10) {
        append(&mut store, entries(1, first, 10)).await.expect("append");
    }
    let before = segment_files(dir.path());
    assert!(before.len() >= 4, "expected several segments, got {before:?}");
    store.purge(log_id(1, 390)).await.expect("purge");
    // Deleting happens on the writer thread after the meta file is replaced; an append
    // queued behind the purge is flushed only after that.
    append(&mut store, entries(1, 401, 1)).await.expect("append");
    let after = segment_files(dir.path());
    assert!(
        after.len() <= 2,
        "purged segments should be gone, still have {after:?}"
    );
    assert_eq!(after.last(), before.last());
    drop(store);
    let mut store = open_small(dir.path());
    let indexes: Vec<u64> = all_ids(&mut store).await.iter().map(|id| id.index).collect();
    assert_eq!(indexes, (391..=401).collect::<Vec<_>>());
}

#[tokio::test]
async fn pristine_means_nothing_was_ever_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_small(dir.path());
        assert!(store.is_pristine());
    }
    {
        let mut store = open_small(dir.path());
        assert!(store.is_pristine(), "opening alone stores nothing");
        store.save_vote(&vote(1, false)).await.expect("vote");
        assert!(!store.is_pristine());
    }
    assert!(!open_small(dir.path()).is_pristine(), "a vote was stored");

    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 1)).await.expect("append");
        store.truncate_after(None).await.expect("truncate");
    }
    assert!(
        !open_small(dir.path()).is_pristine(),
        "an entry was stored, even though none is left"
    );
}

#[tokio::test]
async fn a_directory_opens_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open_small(dir.path());
    match Store::open(dir.path(), LogStoreOptions::default()) {
        Err(OpenError::Locked { .. }) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second store opened a locked directory"),
    }
    drop(first);
    open_small(dir.path());
}

#[tokio::test]
async fn segments_without_a_meta_file_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        store.save_vote(&vote(4, true)).await.expect("vote");
        append(&mut store, entries(4, 1, 3)).await.expect("append");
    }
    std::fs::remove_file(dir.path().join("meta")).expect("remove meta");
    match Store::open(dir.path(), small_options()) {
        Err(e @ OpenError::MissingMeta { .. }) => assert!(e.to_string().contains("meta"), "{e}"),
        Err(other) => panic!("expected MissingMeta, got {other}"),
        Ok(_) => panic!("opened without the vote"),
    }
}

#[tokio::test]
async fn appends_that_would_leave_a_hole_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    append(&mut store, entries(2, 1, 3)).await.expect("append");
    assert!(
        append(&mut store, entries(2, 5, 1)).await.is_err(),
        "gap accepted"
    );
    assert!(
        append(&mut store, entries(1, 4, 1)).await.is_err(),
        "older leader accepted"
    );
    append(&mut store, entries(2, 4, 1))
        .await
        .expect("the right next entry");
}

#[tokio::test]
async fn segments_are_deleted_only_for_a_purge_that_is_on_disk() {
    // Two purges queued together. The first meta file write succeeds, the second fails, as if
    // the process had died between them. Segments may be deleted for the first purge only:
    // the in-memory state already reflects the second, and deleting on its behalf would leave
    // the log with a hole between the purge point on disk and the first entry left.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for first in (1..=400).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
        let hold = store.hold_writes();
        store.purge(log_id(1, 5)).await.expect("purge 5");
        store.purge(log_id(1, 380)).await.expect("purge 380");
        store.fail_write_after(1);
        assert!(hold.wait_until_blocked(std::time::Duration::from_secs(10)));
        drop(hold);
        assert!(store.close().is_err(), "the second meta write was made to fail");
    }
    let mut store = open_small(dir.path());
    assert_eq!(store.purged(), Some(log_id(1, 5)));
    let indexes: Vec<u64> = all_ids(&mut store).await.iter().map(|id| id.index).collect();
    assert_eq!(indexes, (6..=400).collect::<Vec<_>>());
}

#[tokio::test]
async fn two_purges_past_the_end_with_appends_between_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 10)).await.expect("append");
        store.purge(log_id(2, 20)).await.expect("purge past the end");
        append(&mut store, entries(2, 21, 10)).await.expect("append");
        store.purge(log_id(2, 25)).await.expect("purge");
    }
    let mut store = open_small(dir.path());
    assert_eq!(
        all_ids(&mut store).await,
        (26..=30).map(|i| log_id(2, i)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_log_truncated_to_nothing_across_segments_reopens_again_and_again() {
    // Nothing is purged, so no segment may be deleted, even though none holds a live entry.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for first in (1..=300).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
        store.truncate_after(None).await.expect("truncate all");
        append(&mut store, entries(2, 1, 5)).await.expect("append");
    }
    for _ in 0..3 {
        let mut store = open_small(dir.path());
        assert_eq!(
            all_ids(&mut store).await,
            (1..=5).map(|i| log_id(2, i)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn closing_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    // Enough to fill several segments, each prepared ahead on a helper thread.
    for first in (1..=300).step_by(10) {
        append(&mut store, entries(1, first, 10)).await.expect("append");
    }
    store.save_vote(&vote(1, true)).await.expect("vote");
    store.close().expect("close");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
    assert!(segment_files(dir.path()).len() >= 3);
}
