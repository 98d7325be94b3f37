//! The parent task's waker, shared by every child waker of a ready set.
//!
//! Unlike `futures::task::AtomicWaker`, a wake does not *take* the waker: it
//! wakes it by reference and leaves it registered. The owner re-registers on
//! every poll, and when the waker did not change that is a `will_wake`
//! comparison with no atomic operation at all; a wake is two uncontended
//! compare-and-swaps. This matters when children are woken one at a time.
//!
//! # Protocol
//!
//! `state` holds two "busy" bits and a request counter:
//!
//! * `WAKING`: one waker holds the slot for reading and wakes the parent;
//! * `REGISTERING`: the owner holds the slot to replace the waker;
//! * `REQUEST` × k: wakes asked for while the slot was busy.
//!
//! A wake that finds the slot busy adds a request; whoever holds the slot
//! services every request before it lets go (the waker wakes again, the
//! owner wakes the new waker). A wake that finds requests but no holder
//! becomes the holder. So no wake asked for after a child's bits were set is
//! ever dropped. Only the owner writes the slot, so the owner may read it
//! without taking it.

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;
use std::fmt;
use std::task::Waker;

const WAKING: usize = 0b01;
const REGISTERING: usize = 0b10;
const BUSY: usize = WAKING | REGISTERING;
const REQUEST: usize = 0b100;

pub(crate) struct ParentWaker {
    state: AtomicUsize,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the slot is written only by the owner while holding `REGISTERING`
// and read by wakers only while holding `WAKING` (or by the owner, who is the
// only writer: `register` and `take` are `unsafe` with that contract);
// `Waker` is `Send + Sync`.
unsafe impl Send for ParentWaker {}
// SAFETY: as above.
unsafe impl Sync for ParentWaker {}

impl fmt::Debug for ParentWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentWaker").finish_non_exhaustive()
    }
}

impl ParentWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(0),
            waker: UnsafeCell::new(None),
        }
    }

    /// Makes `new` the waker to wake.
    ///
    /// # Safety
    ///
    /// Owner only: never called concurrently with itself or
    /// [`ParentWaker::take`] (it reads the slot without synchronisation).
    pub(crate) unsafe fn register(&self, new: &Waker) {
        let same = self.waker.with(|slot| {
            // SAFETY: only the owner writes the slot, and the owner is here,
            // so this read cannot race with a write.
            unsafe { &*slot }.as_ref().is_some_and(|w| w.will_wake(new))
        });
        if same {
            return;
        }
        match self
            .state
            .compare_exchange(0, REGISTERING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                let old = self.waker.with_mut(|slot| {
                    // SAFETY: `REGISTERING` keeps wakers out of the slot.
                    unsafe { &mut *slot }.replace(new.clone())
                });
                let prev = self.state.swap(0, Ordering::AcqRel);
                if prev != REGISTERING {
                    // Wakes were asked for while we held the slot.
                    new.wake_by_ref();
                }
                drop(old);
            }
            Err(_) => {
                // A waker holds the slot (it wakes the old waker). The new one
                // could not be installed: wake it, so the task polls again
                // and registers then, once the holder is done.
                crate::sync::spin_loop();
                new.wake_by_ref();
            }
        }
    }

    /// Wakes the registered waker (by reference; it stays registered).
    pub(crate) fn wake(&self) {
        if self
            .state
            .compare_exchange(0, WAKING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            let prev = self.state.fetch_add(REQUEST, Ordering::AcqRel);
            if prev & BUSY != 0 {
                // The holder services our request before letting go.
                return;
            }
            // Nobody holds the slot: take it, with every pending request.
            let mut cur = prev + REQUEST;
            loop {
                match self
                    .state
                    .compare_exchange(cur, WAKING, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break,
                    // Someone took the slot after our request was counted: it
                    // services it.
                    Err(actual) if actual & BUSY != 0 => return,
                    Err(actual) => cur = actual,
                }
            }
        }
        loop {
            self.waker.with(|slot| {
                // SAFETY: `WAKING` keeps the owner from writing the slot.
                if let Some(waker) = unsafe { &*slot } {
                    waker.wake_by_ref();
                }
            });
            let mut cur = WAKING;
            loop {
                match self
                    .state
                    .compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return,
                    Err(actual) => {
                        // Requests came in while we were waking: take them and
                        // wake once more.
                        match self.state.compare_exchange(
                            actual,
                            WAKING,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break,
                            Err(again) => cur = again,
                        }
                    }
                }
            }
        }
    }

    /// Takes the registered waker out if the slot is free.
    ///
    /// # Safety
    ///
    /// As for [`ParentWaker::register`].
    pub(crate) unsafe fn take(&self) -> Option<Waker> {
        if self
            .state
            .compare_exchange(0, REGISTERING, Ordering::Acquire, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let old = self.waker.with_mut(|slot| {
            // SAFETY: `REGISTERING` keeps wakers out of the slot.
            unsafe { &mut *slot }.take()
        });
        if self.state.swap(0, Ordering::AcqRel) != REGISTERING {
            // Requests came in; there is nobody left to wake but the old
            // waker.
            if let Some(w) = &old {
                w.wake_by_ref();
            }
        }
        old
    }
}
