//! The point of the crate: `append` returns while the writer is still busy (entries readable at
//! once, callback later), callbacks fire in submission order, `save_vote` waits for the disk,
//! an I/O error reaches the callback and stops the store, and shutdown finishes queued work.

mod common;

use std::time::Duration;

use common::{all_ids, append, entries, log_id, open_small, vote, Store, C};
use futures_util::FutureExt;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use tokio::sync::oneshot::error::TryRecvError;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn append_returns_before_the_flush_and_the_entries_are_readable_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    let mut reader = store.get_log_reader().await;
    let hold = store.hold_writes();

    let (tx_a, mut rx_a) = C::oneshot();
    tokio::time::timeout(PATIENCE, store.append(entries(1, 1, 3), IOFlushed::signal(tx_a)))
        .await
        .expect("append must not wait for the disk")
        .expect("append");
    let got: Vec<u64> = reader
        .try_get_log_entries(1..=3)
        .await
        .expect("read")
        .iter()
        .map(|e| e.index())
        .collect();
    assert_eq!(
        got,
        vec![1, 2, 3],
        "appended entries must be readable when append returns"
    );

    assert!(
        hold.wait_until_blocked(PATIENCE),
        "the writer never picked up the append"
    );
    assert!(
        matches!(rx_a.try_recv(), Err(TryRecvError::Empty)),
        "callback fired before the write"
    );

    let (tx_b, rx_b) = C::oneshot();
    store
        .append(entries(1, 4, 3), IOFlushed::signal(tx_b))
        .await
        .expect("append while held");
    assert_eq!(store.last_log_id(), Some(log_id(1, 6)));
    assert_eq!(reader.try_get_log_entries(4..).await.expect("read").len(), 3);

    drop(hold);
    tokio::time::timeout(PATIENCE, rx_b)
        .await
        .expect("callback b")
        .expect("sent")
        .expect("flushed");
    assert!(
        matches!(rx_a.try_recv(), Ok(Ok(()))),
        "callback a must have fired too"
    );
    assert_eq!(
        store.fired_appends(),
        vec![1, 2],
        "callbacks must fire in submission order"
    );
}

#[tokio::test]
async fn callbacks_fire_in_submission_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    let hold = store.hold_writes();
    let mut receivers = Vec::new();
    for i in 1..=60 {
        let (tx, rx) = C::oneshot();
        store
            .append(entries(1, i, 1), IOFlushed::signal(tx))
            .await
            .expect("append");
        receivers.push(rx);
    }
    assert!(hold.wait_until_blocked(PATIENCE));
    drop(hold);

    // Completed callbacks must always form a prefix. Scanning from the newest down, a done
    // callback seen first means every older one must be done by the time it is looked at.
    let mut done = vec![false; receivers.len()];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while done.iter().any(|d| !d) {
        let mut newer_done = false;
        for i in (0..receivers.len()).rev() {
            if !done[i] {
                match receivers[i].try_recv() {
                    Ok(result) => {
                        result.expect("flushed");
                        done[i] = true;
                    }
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Closed) => panic!("callback {i} dropped"),
                }
            }
            assert!(
                done[i] || !newer_done,
                "callback {i} had not fired although a newer one had"
            );
            newer_done |= done[i];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callbacks did not all fire"
        );
        tokio::task::yield_now().await;
    }
    // The scan above only catches a wrong order if it looks at the right moment; the writer's
    // own record of the firing order does not depend on timing.
    assert_eq!(store.fired_appends(), (1..=60).collect::<Vec<u64>>());
}

#[tokio::test]
async fn save_vote_returns_only_once_the_vote_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        let hold = store.hold_writes();
        let v = vote(7, false);
        let save = store.save_vote(&v);
        futures_util::pin_mut!(save);
        assert!(
            (&mut save).now_or_never().is_none(),
            "save_vote returned before the writer ran"
        );
        assert!(hold.wait_until_blocked(PATIENCE));
        assert!(
            (&mut save).now_or_never().is_none(),
            "save_vote returned while the writer was held"
        );
        drop(hold);
        tokio::time::timeout(PATIENCE, save)
            .await
            .expect("save_vote")
            .expect("saved");
    }
    assert_eq!(open_small(dir.path()).recovered().vote, Some(vote(7, false)));
}

#[tokio::test]
async fn a_write_error_reaches_the_callback_and_stops_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 3)).await.expect("append");
        store.fail_next_write();
        let err = append(&mut store, entries(1, 4, 1))
            .await
            .expect_err("the failed write must be reported");
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(
            append(&mut store, entries(1, 5, 1)).await.is_err(),
            "append after a failure"
        );
        assert!(
            store.save_vote(&vote(2, false)).await.is_err(),
            "save_vote after a failure"
        );
        assert!(
            store.truncate_after(None).await.is_err(),
            "truncate after a failure"
        );
        assert!(store.close().is_err(), "close must report the failure");
    }
    let mut store = open_small(dir.path());
    let indexes: Vec<u64> = all_ids(&mut store).await.iter().map(|id| id.index).collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    append(&mut store, entries(1, 4, 1))
        .await
        .expect("append after reopening");
}

#[tokio::test]
async fn a_failed_vote_write_is_reported_to_save_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    store.fail_next_write();
    assert!(store.save_vote(&vote(1, false)).await.is_err());
    assert!(append(&mut store, entries(1, 1, 1)).await.is_err());
}

#[tokio::test]
async fn dropping_the_store_finishes_queued_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for i in 1..=200 {
            store
                .append(entries(1, i, 1), IOFlushed::noop())
                .await
                .expect("append");
        }
        store
            .save_committed(Some(log_id(1, 150)))
            .await
            .expect("committed");
    }
    let store: Store = open_small(dir.path());
    assert_eq!(store.last_log_id(), Some(log_id(1, 200)));
    assert_eq!(store.committed_index(), Some(150));
}

#[tokio::test]
async fn after_a_write_error_even_an_empty_append_is_not_reported_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open_small(dir.path());
    append(&mut store, entries(1, 1, 3)).await.expect("append");
    let hold = store.hold_writes();
    store.fail_next_write();
    let (tx_a, rx_a) = C::oneshot();
    store
        .append(entries(1, 4, 1), IOFlushed::signal(tx_a))
        .await
        .expect("queue a");
    // A purge between them puts the empty append into a group of its own, after the failure.
    store.purge(log_id(1, 1)).await.expect("queue purge");
    let (tx_b, rx_b) = C::oneshot();
    store
        .append(Vec::new(), IOFlushed::signal(tx_b))
        .await
        .expect("queue b");
    assert!(hold.wait_until_blocked(PATIENCE));
    drop(hold);
    assert!(rx_a.await.expect("callback a").is_err());
    assert!(
        rx_b.await.expect("callback b").is_err(),
        "nothing after a failed write is durable"
    );
}
