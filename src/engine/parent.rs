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
//! ever dropped — but for the owner's last `take`, when it goes away: the
//! requests counted during that hold were for its children, gone with it,
//! and no user code runs there (the caller drops the waker after releasing
//! its references). The owner also takes a stale waker out
//! ([`ParentWaker::take_stale`]) only while no child's waker lives outside
//! its poll, when no wake can be under way. Only the owner writes the slot,
//! so the owner may read it without taking it.
//!
//! The holder of `WAKING` services requests by *swapping* the state back to
//! `WAKING` (taking every request counted so far at once) and waking again;
//! it lets go only with a compare-exchange from exactly `WAKING` to zero, so
//! a request counted at any moment of the hold is either taken by a swap
//! (and serviced) or makes that compare-exchange fail.
//!
//! # User code
//!
//! The parent's waker is user code (`clone`, `wake_by_ref`, `drop`), and any
//! of it may panic or call back into the set. The owner clones the new waker
//! before it takes `REGISTERING` and drops the old one after letting go. The
//! one call made while a bit is held is the parent's `wake_by_ref` under
//! `WAKING` (waking by reference needs the slot held); nothing ever waits for
//! that bit (a registration that finds it set wakes its new waker instead),
//! and if the wake unwinds, a guard services the requests counted during the
//! hold (waking again, each wake's panic contained: a second panic while
//! unwinding would abort the process) and then lets go. So a child woken
//! while the parent's wake was panicking still reaches the parent.

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;
use crate::unwind::Panics;
use std::fmt;
use std::sync::Arc;
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
    #[inline]
    pub(crate) unsafe fn register(&self, new: &Waker) {
        let same = self.waker.with(|slot| {
            // SAFETY: only the owner writes the slot, and the owner is here,
            // so this read cannot race with a write.
            unsafe { &*slot }.as_ref().is_some_and(|w| w.will_wake(new))
        });
        if !same {
            // SAFETY: forwarded caller contract.
            unsafe { self.register_new(new) }
        }
    }

    /// [`ParentWaker::register`] of a waker that would not wake the
    /// registered one's task: out of line, so the usual re-registration of
    /// the same waker stays a small inlined check.
    ///
    /// # Safety
    ///
    /// As [`ParentWaker::register`].
    #[inline(never)]
    unsafe fn register_new(&self, new: &Waker) {
        // User code (the clone, and below the old waker's drop and the new
        // one's wake) runs with no bit held.
        let clone = new.clone();
        match self
            .state
            .compare_exchange(0, REGISTERING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {
                let old = self.waker.with_mut(|slot| {
                    // SAFETY: `REGISTERING` keeps wakers out of the slot.
                    unsafe { &mut *slot }.replace(clone)
                });
                let prev = self.state.swap(0, Ordering::AcqRel);
                // Both run even if the other panics.
                let mut panics = Panics::default();
                let woken = prev != REGISTERING;
                if woken {
                    // Wakes were asked for while we held the slot.
                    panics.catch(|| new.wake_by_ref());
                }
                panics.catch(|| drop(old));
                if panics.caught() && !woken {
                    // The old waker's drop panicked: the panic leaves the
                    // owner's poll before it reads what was woken (for the
                    // old waker), so a caller that catches it must poll
                    // again.
                    panics.catch(|| new.wake_by_ref());
                }
                panics.resume();
            }
            Err(_) => {
                // A waker holds the slot (it wakes the old waker). The new one
                // could not be installed: wake it, so the task polls again
                // and registers then, once the holder is done (even if
                // dropping the clone panics).
                let mut panics = Panics::default();
                panics.catch(|| drop(clone));
                crate::sync::spin_loop();
                panics.catch(|| new.wake_by_ref());
                panics.resume();
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
        // We hold `WAKING`. If the parent's wake panics, the guard services
        // the requests counted meanwhile (their wakes contained: a second
        // panic while unwinding would abort) and lets go, so the set is
        // neither wedged nor deaf to those wakes.
        struct LetGo<'a>(&'a ParentWaker);
        impl Drop for LetGo<'_> {
            fn drop(&mut self) {
                self.0.let_go_after_panic();
            }
        }
        let guard = LetGo(self);
        self.serve(Waker::wake_by_ref);
        std::mem::forget(guard);
    }

    /// The end of a hold whose wake unwound (out of line: never on the
    /// usual path).
    #[cold]
    #[inline(never)]
    fn let_go_after_panic(&self) {
        if self
            .state
            .compare_exchange(WAKING, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Requests came in during the wake that panicked.
            self.state.swap(WAKING, Ordering::AcqRel);
            self.serve(|waker| crate::unwind::contain(|| waker.wake_by_ref()));
        }
    }

    /// Wakes the registered waker with `wake`, then again for every request
    /// counted meanwhile, and lets go of `WAKING` (held by the caller).
    fn serve(&self, wake: impl Fn(&Waker)) {
        loop {
            self.waker.with(|slot| {
                // SAFETY: `WAKING` keeps the owner from writing the slot.
                if let Some(waker) = unsafe { &*slot } {
                    wake(waker);
                }
            });
            if self
                .state
                .compare_exchange(WAKING, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
            // Requests came in while we were waking. Only requests can have
            // changed the state while we hold `WAKING` (nobody else clears a
            // busy bit, and the owner only takes the slot from zero): take
            // them all at once and wake again. Requests counted after this
            // swap make the next compare-exchange fail.
            self.state.swap(WAKING, Ordering::AcqRel);
        }
    }

    /// Takes the registered waker out if it would not wake `current`'s task
    /// and the slot is free: for an owner that knows no waker can reach the
    /// slot now (no child's waker lives outside its poll), so that a task
    /// the owner moved away from is not kept alive by it (the owner
    /// registers again when a waker escapes). No user code runs here but
    /// `will_wake`; the caller drops what it gets.
    ///
    /// # Safety
    ///
    /// As for [`ParentWaker::register`].
    #[inline]
    pub(crate) unsafe fn take_stale(&self, current: &Waker) -> Option<Waker> {
        let stale = self.waker.with(|slot| {
            // SAFETY: only the owner writes the slot, and the owner is here,
            // so this read cannot race with a write.
            unsafe { &*slot }
                .as_ref()
                .is_some_and(|w| !w.will_wake(current))
        });
        if stale {
            // SAFETY: forwarded caller contract.
            unsafe { self.take() }
        } else {
            None
        }
    }

    /// Takes the registered waker out, with exclusive access (the chunk
    /// holding it is being freed: no waker or owner can reach it).
    pub(crate) fn take_exclusive(&mut self) -> Option<Waker> {
        self.waker.with_mut(|slot| {
            // SAFETY: `&mut self`: nobody else can access the slot.
            unsafe { &mut *slot }.take()
        })
    }

    /// Takes the registered waker out if the slot is free, for an owner
    /// that is going away: wake requests that come in meanwhile are dropped
    /// (they were for the owner's children, which are gone with it), so no
    /// user code runs here and the caller can release its references first
    /// and drop the waker last.
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
        self.state.store(0, Ordering::Release);
        old
    }
}

impl Drop for ParentWaker {
    #[inline]
    fn drop(&mut self) {
        // The waker is user code: its drop's panic propagates, or is
        // discarded while another panic unwinds (a second panic then would
        // abort the process).
        if let Some(waker) = self.take_exclusive() {
            crate::unwind::drop_user(waker);
        }
    }
}

/// The registering side of a [`ParentWaker`] shared through an `Arc` (the
/// task group's): one per waker, not `Clone`, registering through
/// `&mut self`, so registrations never run concurrently and nothing ever
/// calls [`ParentWaker::take`] on it.
#[derive(Debug)]
pub(crate) struct ParentOwner(Arc<ParentWaker>);

impl ParentOwner {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ParentWaker::new()))
    }

    /// The waking side, for any number of wakers.
    pub(crate) fn shared(&self) -> Arc<ParentWaker> {
        self.0.clone()
    }

    /// Makes `waker` the waker to wake.
    pub(crate) fn register(&mut self, waker: &Waker) {
        // SAFETY: `&mut self` on the only owner makes this the only
        // registration in progress, and owners never take.
        unsafe { self.0.register(waker) }
    }
}

#[cfg(all(test, not(awaitkit_loom)))]
mod tests {
    use super::ParentWaker;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::task::{Wake, Waker};
    use std::time::{Duration, Instant};

    /// Records, at each wake, which flags were raised.
    struct Snapshot {
        flags: Arc<AtomicUsize>,
        seen: AtomicUsize,
    }

    impl Wake for Snapshot {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let flags = self.flags.load(Ordering::Acquire);
            self.seen.fetch_or(flags, Ordering::AcqRel);
            // Hold the slot a little, so requests pile up during holds and
            // the holder services them in several turns.
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }

    /// Real threads: in each round three threads each raise flags and wake,
    /// eight times, all at once; the last wake must have seen every flag (a
    /// lost request leaves one unseen). Bounded by `AWAITKIT_STRESS_SECS`
    /// (default 2 s).
    #[test]
    fn stress_concurrent_wakes_are_never_lost() {
        const THREADS: usize = 3;
        const WAKES: usize = 8;
        let secs: f64 = std::env::var("AWAITKIT_STRESS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        let parent = Arc::new(ParentWaker::new());
        let flags = Arc::new(AtomicUsize::new(0));
        let snapshot = Arc::new(Snapshot {
            flags: flags.clone(),
            seen: AtomicUsize::new(0),
        });
        // SAFETY: only this thread registers or takes.
        unsafe { parent.register(&Waker::from(snapshot.clone())) };
        let start = Arc::new(Barrier::new(THREADS + 1));
        let end = Arc::new(Barrier::new(THREADS + 1));
        let stop = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let (parent, flags) = (parent.clone(), flags.clone());
                let (start, end, stop) = (start.clone(), end.clone(), stop.clone());
                std::thread::spawn(move || {
                    loop {
                        start.wait();
                        if stop.load(Ordering::Acquire) != 0 {
                            return;
                        }
                        for k in 0..WAKES {
                            flags.fetch_or(1 << (i * WAKES + k), Ordering::Release);
                            parent.wake();
                        }
                        end.wait();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs_f64(secs / 2.0);
        let (mut rounds, mut lost) = (0u64, 0u64);
        while Instant::now() < deadline {
            flags.store(0, Ordering::Release);
            snapshot.seen.store(0, Ordering::Release);
            start.wait();
            end.wait();
            if snapshot.seen.load(Ordering::Acquire) != (1 << (THREADS * WAKES)) - 1 {
                lost += 1;
            }
            rounds += 1;
        }
        stop.store(1, Ordering::Release);
        start.wait();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lost, 0, "{lost} lost wake requests in {rounds} rounds");
        // SAFETY: only this thread registers or takes.
        drop(unsafe { parent.take() });
    }
}
