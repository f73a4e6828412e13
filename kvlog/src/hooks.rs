//! Test hooks inside the writer thread.
//!
//! With the `test-hooks` feature, tests can hold the writer back before it takes its next batch
//! (to see that `append` returns before anything is on disk, and to put several operations into
//! one write group), see the order in which append callbacks fire and make its next write fail (to see an
//! I/O error reach the callback and stop the store). Without the feature these are empty
//! functions the compiler removes.

use std::io;

#[cfg(feature = "test-hooks")]
use std::sync::{Condvar, Mutex};

/// Hook state shared between a store and its writer thread.
#[derive(Default)]
pub(crate) struct Hooks {
    #[cfg(feature = "test-hooks")]
    held: Mutex<HoldState>,
    #[cfg(feature = "test-hooks")]
    changed: Condvar,
    /// Writes to let through before one fails; `None` when no failure is asked for.
    #[cfg(feature = "test-hooks")]
    fail_after: Mutex<Option<usize>>,
    #[cfg(feature = "test-hooks")]
    fired: Mutex<Vec<u64>>,
}

#[cfg(feature = "test-hooks")]
#[derive(Default)]
struct HoldState {
    holds: usize,
    writer_waiting: bool,
}

impl Hooks {
    /// Called by the writer when it has received work, before it gathers the rest of the
    /// queue into a batch: while a test holds the writer, it waits here.
    pub(crate) fn pause_point(&self) {
        #[cfg(feature = "test-hooks")]
        {
            let mut state = self.held.lock().unwrap_or_else(|p| p.into_inner());
            while state.holds > 0 {
                state.writer_waiting = true;
                self.changed.notify_all();
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.writer_waiting = false;
        }
    }

    /// Called by the writer as it fires the callback of append number `batch`.
    pub(crate) fn fired(&self, batch: u64) {
        #[cfg(feature = "test-hooks")]
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).push(batch);
        #[cfg(not(feature = "test-hooks"))]
        let _ = batch;
    }

    /// Called by the writer right before each write; fails it when a test asked for that.
    pub(crate) fn before_write(&self) -> io::Result<()> {
        #[cfg(feature = "test-hooks")]
        {
            let mut fail_after = self.fail_after.lock().unwrap_or_else(|p| p.into_inner());
            match *fail_after {
                Some(0) => {
                    *fail_after = None;
                    return Err(io::Error::other("injected write failure (test hook)"));
                }
                Some(n) => *fail_after = Some(n - 1),
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(feature = "test-hooks")]
impl Hooks {
    pub(crate) fn hold(&self) {
        let mut state = self.held.lock().unwrap_or_else(|p| p.into_inner());
        state.holds += 1;
    }

    pub(crate) fn release(&self) {
        let mut state = self.held.lock().unwrap_or_else(|p| p.into_inner());
        state.holds = state.holds.saturating_sub(1);
        self.changed.notify_all();
    }

    pub(crate) fn wait_until_writer_waits(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while !state.writer_waiting {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    pub(crate) fn fired_batches(&self) -> Vec<u64> {
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn fail_write_after(&self, writes: usize) {
        *self.fail_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(writes);
    }
}
