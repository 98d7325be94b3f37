//! The driver's busy flag: at most one pass of the driver at a time, and no
//! request to drive is ever lost.
//!
//! Whoever wants the waiters re-checked (a new head, a cancelled head, a
//! quota change, the timer firing) calls [`Flag::run`]. If nobody drives,
//! the caller becomes the driver and runs passes until no request arrived
//! during the last one; if somebody drives, the caller leaves a note
//! (`NOTIFIED`) and returns at once, and the driver makes one more pass.
//!
//! A pass that fails (the timer panicked) leaves the flag `STALLED`: idle,
//! with the notes of the failed pass dropped. The limiter then wakes every
//! waiter, and a waiter that finds the flag stalled drives again from its
//! own task, so a panic never wedges the driver.
//!
//! The flag is settled — idle or stalled — before [`Flag::run`] returns, so
//! the caller runs user code (wakes the granted waiters) with no busy state
//! held. The loom models in `driver_loom.rs` check this protocol with a
//! driver and two notifiers.

use crate::sync::atomic::{AtomicUsize, Ordering};

const IDLE: usize = 0;
const RUNNING: usize = 1;
const NOTIFIED: usize = 2;
const STALLED: usize = 3;

/// What one pass of the driver asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Done: settle unless a request arrived meanwhile.
    Done,
    /// Run another pass at once (the timer was already due).
    Again,
    /// The pass failed: stall.
    Failed,
}

/// How [`Flag::run`] ended for its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ran {
    /// Another thread drives and will pass again for this request.
    Deferred,
    /// This caller drove; the flag is idle.
    Settled,
    /// This caller drove and a pass failed; the flag is stalled.
    Stalled,
}

#[derive(Debug)]
pub(super) struct Flag(AtomicUsize);

impl Flag {
    pub(super) fn new() -> Flag {
        Flag(AtomicUsize::new(IDLE))
    }

    /// Drives with `pass` if nobody does, or asks the driver for another
    /// pass. `pass` never runs on two threads at once.
    pub(super) fn run(&self, mut pass: impl FnMut() -> Pass) -> Ran {
        // Every change of the flag is a read-modify-write (a note too, even
        // on a flag already `NOTIFIED`), so each one acquires all the notes
        // before it and the driver's next exchange acquires it: the request
        // a note stands for is visible to the pass it asks for.
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let next = match current {
                IDLE | STALLED => RUNNING,
                _ => NOTIFIED,
            };
            match self
                .0
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next == RUNNING => break,
                Ok(_) => return Ran::Deferred, // the driver passes again
                Err(actual) => current = actual,
            }
        }
        loop {
            // Notes left from here on ask for another pass. An exchange,
            // not a store: it acquires the notes it clears.
            self.0.swap(RUNNING, Ordering::AcqRel);
            match pass() {
                Pass::Again => continue,
                Pass::Failed => {
                    // Likewise: the notes it drops are acquired and handed
                    // on to the next driver, whose exchange from `STALLED`
                    // acquires this.
                    self.0.swap(STALLED, Ordering::AcqRel);
                    return Ran::Stalled;
                }
                Pass::Done => {}
            }
            if self
                .0
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ran::Settled;
            }
        }
    }

    /// A pass failed and nobody has driven since: the caller should drive.
    #[inline]
    pub(super) fn is_stalled(&self) -> bool {
        self.0.load(Ordering::Acquire) == STALLED
    }

    /// Nobody drives (idle or stalled): `Err` with the flag otherwise.
    #[cfg(all(test, awaitkit_loom))]
    pub(super) fn at_rest(&self) -> Result<(), usize> {
        match self.0.load(Ordering::Acquire) {
            IDLE | STALLED => Ok(()),
            busy => Err(busy),
        }
    }
}
