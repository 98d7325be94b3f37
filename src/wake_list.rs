//! Wakers collected under a lock and woken after it is released, so a waker
//! that calls back into the primitive from `wake` (or its drop) cannot
//! deadlock. The first waker is stored inline: most releases wake one.
//!
//! Waking is panic-safe: every waker is woken even when an earlier one
//! panics, and the first panic propagates afterwards (later ones are
//! contained, and so is a panic from dropping their payloads). So a primitive
//! that grants under its lock and wakes with a `WakeList` after unlocking
//! never leaves a granted waiter asleep because another waiter's waker
//! panicked.
//!
//! Wakers that only need dropping (replaced or cancelled registrations) can
//! be handed over too ([`discard`](WakeList::discard)): they are dropped
//! after the wakes, under the same containment.

use crate::unwind::Panics;
use std::task::Waker;

#[derive(Debug, Default)]
pub(crate) struct WakeList {
    first: Option<Waker>,
    rest: Vec<Waker>,
    discarded: Vec<Waker>,
}

impl WakeList {
    /// Wakes `waker` (if any) when the list is woken.
    pub(crate) fn push(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }

    /// Drops `waker` (if any) after the wakes, outside the caller's lock.
    pub(crate) fn discard(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.discarded.push(waker);
        }
    }

    /// Wakes every pushed waker, then drops the discarded ones. Call it with
    /// no lock held.
    ///
    /// # Panics
    ///
    /// If a waker's `wake` (or a discarded waker's `drop`) panics, the rest
    /// are still woken (dropped), and then the first panic is resumed —
    /// unless this thread is already unwinding, in which case it is dropped
    /// (a second panic would abort).
    #[inline]
    pub(crate) fn wake_all(mut self) {
        let mut panics = Panics::default();
        self.run(&mut panics);
        self.forget_emptied();
        panics.resume();
    }

    /// [`WakeList::wake_all`], keeping the first panic in `panics` for the
    /// caller to propagate or discard (the rate limiter's timer path
    /// discards it: that thread must survive).
    pub(crate) fn wake_all_into(mut self, panics: &mut Panics) {
        self.run(panics);
        self.forget_emptied();
    }

    /// Skips the drop glue of a list [`run`](WakeList::run) emptied: its
    /// vectors were taken (or never pushed to), so none holds an
    /// allocation, and there is nothing left to wake.
    #[inline]
    fn forget_emptied(self) {
        debug_assert!(self.first.is_none());
        debug_assert!(self.rest.capacity() == 0 && self.discarded.capacity() == 0);
        std::mem::forget(self);
    }

    #[inline]
    fn run(&mut self, panics: &mut Panics) {
        // A waker that panics in `wake` is not dropped again: `wake`
        // consumed it.
        if let Some(waker) = self.first.take() {
            panics.catch(move || waker.wake());
        }
        // Most lists hold one waker: the rest is out of line.
        if !self.rest.is_empty() || !self.discarded.is_empty() {
            self.run_rest(panics);
        }
    }

    #[inline(never)]
    fn run_rest(&mut self, panics: &mut Panics) {
        for waker in std::mem::take(&mut self.rest) {
            panics.catch(move || waker.wake());
        }
        for waker in std::mem::take(&mut self.discarded) {
            panics.catch(move || drop(waker));
        }
    }
}

impl Drop for WakeList {
    /// A list that was not woken (the code between the grants and
    /// `wake_all` unwound) still wakes its wakers: they were granted.
    /// Callers declare the list before their lock guard, so this runs after
    /// the guard is released.
    #[inline]
    fn drop(&mut self) {
        if self.first.is_some() || !self.rest.is_empty() || !self.discarded.is_empty() {
            let mut panics = Panics::default();
            self.run(&mut panics);
            panics.resume();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts wakes and drops; panics on wake or drop when told to (with a
    /// payload whose own drop panics when `evil_payload`).
    struct Probe {
        wakes: AtomicUsize,
        drops: Arc<AtomicUsize>,
        panic_on_wake: Option<&'static str>,
        panic_on_drop: bool,
        evil_payload: bool,
    }

    struct EvilPayload;

    impl Drop for EvilPayload {
        fn drop(&mut self) {
            panic!("a payload that panics when dropped");
        }
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            if let Some(msg) = self.panic_on_wake {
                if self.evil_payload {
                    std::panic::panic_any(EvilPayload);
                }
                panic!("{msg}");
            }
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
            if self.panic_on_drop {
                panic!("drop panics");
            }
        }
    }

    fn probe(
        drops: &Arc<AtomicUsize>,
        panic_on_wake: Option<&'static str>,
        evil_payload: bool,
    ) -> Arc<Probe> {
        Arc::new(Probe {
            wakes: AtomicUsize::new(0),
            drops: drops.clone(),
            panic_on_wake,
            panic_on_drop: false,
            evil_payload,
        })
    }

    fn message(payload: &crate::unwind::Payload) -> &str {
        payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("<other>")
    }

    #[test]
    fn every_waker_is_woken_and_the_first_panic_propagates() {
        let drops = Arc::new(AtomicUsize::new(0));
        let probes = [
            probe(&drops, None, false),
            probe(&drops, Some("first"), false),
            probe(&drops, None, false),
            probe(&drops, Some("second"), true), // its payload panics on drop
            probe(&drops, Some("third"), false),
            probe(&drops, None, false),
        ];
        let mut list = WakeList::default();
        for p in &probes {
            list.push(Some(Waker::from(p.clone())));
        }
        let out = catch_unwind(AssertUnwindSafe(|| list.wake_all()));
        assert_eq!(message(&out.unwrap_err()), "first");
        for p in &probes {
            assert_eq!(p.wakes.load(Ordering::SeqCst), 1);
        }
        drop(probes);
        assert_eq!(drops.load(Ordering::SeqCst), 6, "every waker was dropped");
    }

    #[test]
    fn discarded_wakers_are_dropped_after_the_wakes_even_when_one_panics() {
        let drops = Arc::new(AtomicUsize::new(0));
        let woken = probe(&drops, None, false);
        let bad = Arc::new(Probe {
            wakes: AtomicUsize::new(0),
            drops: drops.clone(),
            panic_on_wake: None,
            panic_on_drop: true,
            evil_payload: false,
        });
        let good = probe(&drops, None, false);
        let mut list = WakeList::default();
        list.discard(Some(Waker::from(bad)));
        list.discard(Some(Waker::from(good)));
        list.push(Some(Waker::from(woken.clone())));
        list.discard(None);
        list.push(None);
        let out = catch_unwind(AssertUnwindSafe(|| list.wake_all()));
        assert_eq!(message(&out.unwrap_err()), "drop panics");
        assert_eq!(woken.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "both discarded wakers dropped"
        );
    }

    #[test]
    fn an_unwoken_list_wakes_when_dropped_and_contains_panics_while_unwinding() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (a, b) = (
            probe(&drops, Some("waker"), false),
            probe(&drops, None, false),
        );
        let out = catch_unwind(AssertUnwindSafe(|| {
            let mut list = WakeList::default();
            list.push(Some(Waker::from(a.clone())));
            list.push(Some(Waker::from(b.clone())));
            panic!("the caller unwinds");
        }));
        // The caller's panic wins; the waker's is contained (no abort).
        assert_eq!(message(&out.unwrap_err()), "the caller unwinds");
        assert_eq!(a.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(b.wakes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_empty_list_does_nothing() {
        WakeList::default().wake_all();
        drop(WakeList::default());
    }
}
