//! Damaged files: a torn write at the end of the log is cut off and the log goes on; damage
//! anywhere else makes `open` refuse, naming the file, and leaves the files untouched.
//!
//! The tests edit segment files directly, following the layout documented in the crate's
//! `format` module: a 40-byte segment header, then records of a 32-byte header (payload length
//! at 0..4, group at 8..16, group start at 16..24, kind at 24) and a payload padded to 8 bytes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{all_ids, append, entries, log_id, open_small, small_options, Store, C};
use kvlog::OpenError;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;

#[derive(Debug, Clone, Copy)]
struct Rec {
    offset: u64,
    len: u64,
    group_start: u64,
    kind: u8,
}

impl Rec {
    fn payload_at(&self) -> u64 {
        self.offset + 32
    }
    fn end(&self) -> u64 {
        self.offset + 32 + self.len.div_ceil(8) * 8
    }
}

/// The intact records of a segment file, in order.
fn records(path: &Path) -> Vec<Rec> {
    let data = std::fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut pos = 40usize;
    while pos + 32 <= data.len() && data[pos..pos + 32].iter().any(|b| *b != 0) {
        let h = &data[pos..pos + 32];
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as u64;
        let rec = Rec {
            offset: pos as u64,
            len,
            group_start: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            kind: h[24],
        };
        out.push(rec);
        pos = rec.end() as usize;
    }
    out
}

/// Entry records (kind 1) only.
fn entry_records(path: &Path) -> Vec<Rec> {
    records(path).into_iter().filter(|r| r.kind == 1).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().expect("a segment")
}

fn flip_byte(path: &Path, at: u64) {
    let mut data = std::fs::read(path).expect("read");
    data[at as usize] ^= 0x5a;
    std::fs::write(path, data).expect("write");
}

fn zero_bytes(path: &Path, from: u64, to: u64) {
    let mut data = std::fs::read(path).expect("read");
    data[from as usize..to as usize].fill(0);
    std::fs::write(path, data).expect("write");
}

/// The content of every file in `dir`, to show a refused open changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| {
            let p = e.expect("dir entry").path();
            let data = std::fs::read(&p).expect("read");
            (p, data)
        })
        .collect();
    files.sort();
    files
}

/// Writes entries 1..=n, one append (so one write group) each, and closes the store.
async fn one_group_per_entry(dir: &Path, n: u64) {
    let mut store = open_small(dir);
    for i in 1..=n {
        append(&mut store, entries(1, i, 1)).await.expect("append");
    }
    store.close().expect("close");
}

fn refused(dir: &Path) -> OpenError {
    match Store::open(dir, small_options()) {
        Err(e) => e,
        Ok(store) => panic!(
            "open accepted damaged data; last log id {:?}",
            store.last_log_id()
        ),
    }
}

async fn indexes(store: &mut Store) -> Vec<u64> {
    all_ids(store).await.iter().map(|id| id.index).collect()
}

#[tokio::test]
async fn a_last_record_cut_in_the_middle_is_dropped_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    one_group_per_entry(dir.path(), 20).await;
    let seg = last_segment(dir.path());
    let last = *entry_records(&seg).last().expect("records");
    let file = std::fs::OpenOptions::new().write(true).open(&seg).expect("open");
    file.set_len(last.payload_at() + last.len / 2)
        .expect("cut the file");
    drop(file);

    {
        let mut store = open_small(dir.path());
        let repair = store.recovered().tail_repair.clone().expect("a repair");
        assert_eq!(repair.offset, last.offset);
        assert_eq!(indexes(&mut store).await, (1..=19).collect::<Vec<_>>());
        append(&mut store, entries(2, 20, 2))
            .await
            .expect("append after repair");
    }
    let mut store = open_small(dir.path());
    assert_eq!(store.recovered().tail_repair, None);
    assert_eq!(indexes(&mut store).await, (1..=21).collect::<Vec<_>>());
    assert_eq!(store.last_log_id(), Some(log_id(2, 21)));
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_drops_exactly_that_record() {
    for (what, at) in [("payload", 40u64), ("header", 5u64)] {
        let dir = tempfile::tempdir().expect("tempdir");
        one_group_per_entry(dir.path(), 20).await;
        let seg = last_segment(dir.path());
        let last = *entry_records(&seg).last().expect("records");
        flip_byte(&seg, last.offset + at.min(last.len + 31));

        let mut store = open_small(dir.path());
        assert!(
            store.recovered().tail_repair.is_some(),
            "{what}: no repair reported"
        );
        assert_eq!(indexes(&mut store).await, (1..=19).collect::<Vec<_>>(), "{what}");
        append(&mut store, entries(1, 20, 1))
            .await
            .expect("append after repair");
        drop(store);
        let mut store = open_small(dir.path());
        assert_eq!(indexes(&mut store).await, (1..=20).collect::<Vec<_>>(), "{what}");
    }
}

#[tokio::test]
async fn damage_inside_a_torn_group_keeps_its_prefix_and_the_rest_is_wiped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 5)).await.expect("append");
        // Entries 6..=15 go to disk as one write group.
        append(&mut store, entries(1, 6, 10)).await.expect("append group");
    }
    let seg = last_segment(dir.path());
    let recs = entry_records(&seg);
    let tenth = recs[9];
    assert_eq!(
        tenth.group_start, recs[5].offset,
        "entries 6..=15 should form one group"
    );
    flip_byte(&seg, tenth.payload_at() + 3);

    {
        let mut store = open_small(dir.path());
        assert_eq!(indexes(&mut store).await, (1..=9).collect::<Vec<_>>());
        // Shorter entries than before: if the old, intact records 11..=15 had been left behind
        // the new ones, the next open would find them.
        append(&mut store, entries(2, 10, 2))
            .await
            .expect("append after repair");
    }
    let mut store = open_small(dir.path());
    assert_eq!(store.recovered().tail_repair, None);
    assert_eq!(indexes(&mut store).await, (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_lost_page_inside_the_last_group_is_a_torn_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        append(&mut store, entries(1, 1, 3)).await.expect("append");
        append(&mut store, entries(1, 4, 10)).await.expect("append group");
    }
    let seg = last_segment(dir.path());
    let recs = entry_records(&seg);
    // Entry 8's record never reached the disk, but entries after it in the same write did.
    zero_bytes(&seg, recs[7].offset, recs[7].end());
    let mut store = open_small(dir.path());
    assert_eq!(indexes(&mut store).await, (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn damage_followed_by_later_writes_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    one_group_per_entry(dir.path(), 20).await;
    let seg = last_segment(dir.path());
    let tenth = entry_records(&seg)[9];
    flip_byte(&seg, tenth.payload_at() + 1);
    let before = snapshot(dir.path());

    let err = refused(dir.path());
    let msg = err.to_string();
    assert!(
        matches!(err, OpenError::Corrupt { offset, .. } if offset == tenth.offset),
        "{msg}"
    );
    assert!(
        msg.contains(&seg.file_name().expect("name").to_string_lossy().to_string()),
        "{msg}"
    );
    assert!(msg.contains("not a torn write"), "{msg}");
    assert_eq!(snapshot(dir.path()), before, "a refused open changed files");

    // The same when the damage is a hole of zeros rather than flipped bits.
    let dir = tempfile::tempdir().expect("tempdir");
    one_group_per_entry(dir.path(), 20).await;
    let seg = last_segment(dir.path());
    let tenth = entry_records(&seg)[9];
    zero_bytes(&seg, tenth.offset, tenth.end());
    assert!(matches!(refused(dir.path()), OpenError::Corrupt { .. }));
}

#[tokio::test]
async fn corruption_in_an_earlier_segment_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for first in (1..=300).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "expected several segments: {segs:?}");
    let first = &segs[0];
    let second_record = entry_records(first)[1];
    flip_byte(first, second_record.payload_at() + 2);
    let before = snapshot(dir.path());

    let err = refused(dir.path());
    let msg = err.to_string();
    assert!(msg.contains("00000000000000000001.seg"), "{msg}");
    assert!(msg.contains(&format!("offset {}", second_record.offset)), "{msg}");
    assert_eq!(snapshot(dir.path()), before);

    // A segment whose seal is gone is refused as well: later segments prove it was complete.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for first in (1..=300).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
    }
    let first = &segments(dir.path())[0];
    let seal = *records(first).last().expect("records");
    assert_eq!(seal.kind, 4, "the last record of a full segment is its seal");
    zero_bytes(first, seal.offset, seal.end());
    let msg = refused(dir.path()).to_string();
    assert!(
        msg.contains("00000000000000000001.seg") && msg.contains("seal"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        for first in (1..=300).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
    }
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).expect("remove");
    let msg = refused(dir.path()).to_string();
    assert!(msg.contains("missing"), "{msg}");
}

#[tokio::test]
async fn a_damaged_meta_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = open_small(dir.path());
        store.save_vote(&common::vote(3, true)).await.expect("vote");
    }
    let meta = dir.path().join("meta");
    let len = std::fs::metadata(&meta).expect("meta").len();
    flip_byte(&meta, len - 1);
    let msg = refused(dir.path()).to_string();
    assert!(msg.contains("meta"), "{msg}");
}

#[tokio::test]
async fn a_crash_inside_a_truncate_and_reappend_leaves_a_consistent_log() {
    // The last write group holds [truncate after 5, entry 6', 7', 8'] (term 2).
    async fn write(dir: &Path) {
        let mut store = open_small(dir);
        append(&mut store, entries(1, 1, 10)).await.expect("append");
        let hold = store.hold_writes();
        store.truncate_after(Some(log_id(1, 5))).await.expect("truncate");
        let (tx, rx) = C::oneshot();
        store
            .append(entries(2, 6, 3), IOFlushed::signal(tx))
            .await
            .expect("append");
        assert!(
            hold.wait_until_blocked(Duration::from_secs(10)),
            "writer did not pick up the work"
        );
        drop(hold);
        rx.await.expect("callback").expect("flushed");
        store.close().expect("close");
    }

    // Torn at the truncation marker: the whole group is gone, the old log stands.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path()).await;
    let seg = last_segment(dir.path());
    let marker = *records(&seg)
        .iter()
        .find(|r| r.kind == 2)
        .expect("a truncate record");
    flip_byte(&seg, marker.payload_at());
    let mut store = open_small(dir.path());
    assert_eq!(
        all_ids(&mut store).await,
        (1..=10).map(|i| log_id(1, i)).collect::<Vec<_>>()
    );
    drop(store);

    // Torn at entry 7': the truncation and 6' stand, the rest is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path()).await;
    let seg = last_segment(dir.path());
    let recs = records(&seg);
    let marker_pos = recs.iter().position(|r| r.kind == 2).expect("a truncate record");
    assert_eq!(
        recs[marker_pos + 1].group_start,
        recs[marker_pos].offset,
        "one group"
    );
    flip_byte(&seg, recs[marker_pos + 2].payload_at());
    let mut store = open_small(dir.path());
    let want: Vec<_> = (1..=5).map(|i| log_id(1, i)).chain([log_id(2, 6)]).collect();
    assert_eq!(all_ids(&mut store).await, want);
    append(&mut store, entries(2, 7, 1))
        .await
        .expect("append after repair");
}

#[tokio::test]
async fn a_shortened_last_segment_is_extended_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    one_group_per_entry(dir.path(), 5).await;
    let seg = last_segment(dir.path());
    let end = entry_records(&seg).last().expect("records").end();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(end)
        .expect("cut");
    let mut store = open_small(dir.path());
    assert_eq!(store.recovered().tail_repair, None);
    assert_eq!(
        std::fs::metadata(&seg).expect("meta").len(),
        small_options().segment_size
    );
    append(&mut store, entries(1, 6, 1)).await.expect("append");
}

#[tokio::test]
async fn a_missing_first_segment_is_refused() {
    async fn write(dir: &Path, purge: Option<u64>) {
        let mut store = open_small(dir);
        for first in (1..=300).step_by(10) {
            append(&mut store, entries(1, first, 10)).await.expect("append");
        }
        if let Some(p) = purge {
            store.purge(log_id(1, p)).await.expect("purge");
        }
        store.close().expect("close");
    }

    // Nothing purged: segment 1 must be there.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), None).await;
    std::fs::remove_file(&segments(dir.path())[0]).expect("remove");
    let msg = refused(dir.path()).to_string();
    assert!(
        msg.contains("00000000000000000001.seg") && msg.contains("missing"),
        "{msg}"
    );

    // Purged up to 5, but the segment holding 6.. is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), Some(5)).await;
    let segs = segments(dir.path());
    assert!(
        segs[0].ends_with("00000000000000000001.seg"),
        "segment 1 still holds live entries"
    );
    std::fs::remove_file(&segs[0]).expect("remove");
    // A torn tail as well: it must not be repaired by an open that then refuses.
    let last = last_segment(dir.path());
    let tail = *entry_records(&last).last().expect("records");
    flip_byte(&last, tail.payload_at());
    let before = snapshot(dir.path());
    let msg = refused(dir.path()).to_string();
    assert!(msg.contains("entries 6 to"), "{msg}");
    assert_eq!(snapshot(dir.path()), before, "a refused open changed files");
}
