//! File-system steps that must happen in a crash-safe order: creating a segment, replacing the
//! meta file, making a directory change durable.
//!
//! Both creations go through a temporary file that is fsynced and then renamed into place, with
//! the directory fsynced after the rename. A crash therefore leaves either no file or a complete
//! one under the real name; a leftover `*.tmp` means nothing and is deleted on the next open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::format::encode_segment_header;

/// Name of the meta file inside a log directory.
pub(crate) const META_FILE: &str = "meta";
/// Name of the lock file that keeps two processes out of one directory.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Suffix of files that are being written and are not yet part of the log.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
const SEGMENT_SUFFIX: &str = ".seg";

/// File name of segment `id`: zero-padded so that names sort like ids.
pub(crate) fn segment_file_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

/// The path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// The id in a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates segment `id` of `size` bytes durably, and returns it open for reading and writing.
pub(crate) fn create_segment(
    dir: &Path,
    id: u64,
    first_group: u64,
    size: u64,
    zero_fill: bool,
) -> io::Result<File> {
    let (tmp, file) = prepare_segment(dir, id, size, zero_fill, &AtomicBool::new(false))?;
    install_segment(dir, &tmp, file, id, first_group)
}

/// The first half of creating segment `id`: a temporary file of `size` bytes, its space
/// allocated (and written with zeros when `zero_fill`), synced. It can be made long before it
/// is needed, on another thread; [`install_segment`] finishes the job. Setting `cancel` stops it
/// early and removes the file.
///
/// Writing zeros costs `size` bytes of I/O once, but later `fdatasync` calls are then pure data
/// writes. Space that was only `fallocate`d is marked unwritten, and converting it on first
/// write is a metadata change each `fdatasync` has to commit: measured on this machine (ext4),
/// 12 KB writes synced in a median 135 µs on a zero-filled file against 192 µs on a
/// fallocated one and 209 µs when appending; for 200-byte writes the first two are equal.
pub(crate) fn prepare_segment(
    dir: &Path,
    id: u64,
    size: u64,
    zero_fill: bool,
    cancel: &AtomicBool,
) -> io::Result<(PathBuf, File)> {
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_file_name(id)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    if zero_fill {
        let zeros = vec![0u8; 1024 * 1024];
        let mut at = 0u64;
        while at < size {
            if cancel.load(Ordering::Relaxed) {
                // Shutting down: nobody will use this file. Stop writing megabytes of zeros.
                drop(file);
                let _ = fs::remove_file(&tmp);
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "segment preparation cancelled",
                ));
            }
            let n = (size - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    } else {
        preallocate(&file, size)?;
    }
    file.sync_all()?;
    Ok((tmp, file))
}

/// The second half of creating a segment: writes the header into the prepared file and moves
/// it to its real name, durably.
pub(crate) fn install_segment(
    dir: &Path,
    tmp: &Path,
    file: File,
    id: u64,
    first_group: u64,
) -> io::Result<File> {
    file.write_all_at(&encode_segment_header(id, first_group), 0)?;
    file.sync_data()?;
    fs::rename(tmp, segment_path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes sure the blocks of `file` up to `len` bytes are allocated, so that later writes do not
/// change the file's size or block map.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len_off =
        libc::off_t::try_from(len).map_err(|_| io::Error::other("segment size does not fit off_t"))?;
    // SAFETY: `file` owns a valid open descriptor for the duration of the call, and
    // posix_fallocate reads no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
    match rc {
        0 => Ok(()),
        // A file system without fallocate still works, only without the speed-up.
        libc::EOPNOTSUPP | libc::EINVAL => {
            if file.metadata()?.len() < len {
                file.set_len(len)?;
            }
            Ok(())
        }
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// fsyncs a directory, making renames, creations and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the meta file with `bytes` atomically and durably.
pub(crate) fn write_meta_file(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}{TMP_SUFFIX}"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_like_ids() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("meta"), None);
        assert_eq!(parse_segment_file_name("00000000000000000001.seg.tmp"), None);
        assert_eq!(parse_segment_file_name("1.seg"), None);
    }
}
