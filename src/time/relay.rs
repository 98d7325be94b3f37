//! The waker futures-timer holds in place of the user's: its helper thread
//! wakes and drops the wakers of every sleep in the process, and a user
//! waker's panic there would kill the thread for everyone (SPEC §1.13).
//!
//! A sleep polls its backend with the waker of a [`Relay`], and the relay
//! keeps the waker of the sleep's latest poll. The backend only ever clones,
//! wakes and drops the relay's waker, which cannot panic; the relay wakes
//! and drops the user's waker inside `catch_unwind` and discards a panic
//! there: nobody on the backend's thread could receive it.
//!
//! Clones and drops of the user's waker on the polling side happen with the
//! relay's lock released (SPEC §1.14); only `Waker::will_wake`, which runs
//! no user code, is called under it.
//!
//! Cost: a relay is one small allocation, made at the sleep's first poll and
//! reused by every later poll. When the sleep goes, it takes its waker back
//! from the backend first ([`Relay::release`]), so the allocation is
//! normally released on the polling thread, where the next sleep reuses it
//! (one spare per thread) — no allocator traffic between the two threads.

#![forbid(unsafe_code)]

use crate::unwind;
use futures_util::task::{ArcWake, waker_ref};
use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

/// The waker a sleep registers with its backend, created at the sleep's
/// first poll.
#[derive(Default)]
pub(crate) struct Relay(Option<Arc<Slot>>);

/// What the backend's waker points to: the user's waker of the latest poll,
/// taken out when the backend wakes it.
struct Slot(Mutex<Option<Waker>>);

fn lock(slot: &Slot) -> MutexGuard<'_, Option<Waker>> {
    // No user code runs under the lock: it is never poisoned.
    slot.0.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// A released slot nobody else holds (empty), for this thread's next
    /// relay.
    static SPARE: Cell<Option<Arc<Slot>>> = const { Cell::new(None) };
}

impl Relay {
    /// Runs `poll` (the backend's poll) with a context whose waker is the
    /// relay's, after making `cx`'s waker the one the relay wakes.
    #[inline]
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> T,
    ) -> T {
        let slot = match &self.0 {
            Some(slot) => {
                slot.set(cx.waker());
                slot
            }
            None => self.0.insert(Slot::new(cx.waker())),
        };
        // The same waker (data and vtable) on every poll, so the backend
        // never clones it again: `will_wake` says it has it already.
        let waker = waker_ref(slot);
        poll(&mut Context::from_waker(&waker))
    }

    /// Lets the relay go: `detach` first takes its waker back from the
    /// backend (a poll with a no-op waker), so that this handle is normally
    /// the last and the slot is kept as this thread's spare. Nothing here
    /// unwinds: a panic in `detach` or in the user's waker's `drop` is caught
    /// and discarded.
    pub(crate) fn release(self, detach: impl FnOnce()) {
        let Some(mut slot) = self.0 else { return };
        if Arc::strong_count(&slot) > 1 {
            unwind::contain(detach);
        }
        let Some(held) = Arc::get_mut(&mut slot) else {
            return; // the backend still holds it (waking it right now)
        };
        let waker = held
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            unwind::contain(|| drop(waker));
        }
        // During thread exit the spare may be gone: then the slot is freed.
        let _ = SPARE.try_with(|spare| {
            if let Some(old) = spare.replace(Some(slot)) {
                drop(old); // (empty: no user code)
            }
        });
    }
}

impl Slot {
    /// A slot holding a clone of `waker`: this thread's spare if it has one.
    fn new(waker: &Waker) -> Arc<Slot> {
        let waker = waker.clone();
        match SPARE.try_with(Cell::take) {
            Ok(Some(mut spare)) => {
                if let Some(held) = Arc::get_mut(&mut spare) {
                    *held.0.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(waker);
                    return spare;
                }
                // (Never: a spare is not shared.)
                Arc::new(Slot(Mutex::new(Some(waker))))
            }
            _ => Arc::new(Slot(Mutex::new(Some(waker)))),
        }
    }

    /// Makes `waker` the one to wake, unless the slot holds one that wakes
    /// the same task. The clone and the drop of the replaced waker (user
    /// code) run with the lock released; a panic in either propagates to the
    /// poll, leaving the slot holding a waker of a previous poll (or none,
    /// after a wake: the backend then reports its state to that poll anyway).
    #[inline]
    fn set(&self, waker: &Waker) {
        if lock(self)
            .as_ref()
            .is_some_and(|held| held.will_wake(waker))
        {
            return;
        }
        let new = waker.clone();
        let old = lock(self).replace(new);
        drop(old);
    }
}

impl ArcWake for Slot {
    /// On the backend's thread: wakes the user's waker, which is taken out
    /// (the next poll puts one back). A panic in its `wake` or `drop` is
    /// caught and discarded.
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let waker = lock(arc_self).take();
        if let Some(waker) = waker {
            unwind::contain(|| waker.wake());
        }
    }
}

impl Drop for Slot {
    /// The last handle may go on the backend's thread (when it still held
    /// the relay's waker as the sleep went): a panic in the user's waker's
    /// `drop` is caught and discarded there, as everywhere.
    fn drop(&mut self) {
        let waker = self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            unwind::contain(|| drop(waker));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Relay;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};

    /// Counts wakes; panics in `wake` when `panics` is set.
    #[derive(Default)]
    struct Probe {
        wakes: AtomicUsize,
        panics: bool,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panics, "a waker that panics");
        }
    }

    /// Polls through `relay` with `user`'s waker and returns a clone of the
    /// waker the backend saw.
    fn register(relay: &mut Relay, user: &Waker) -> Waker {
        relay.poll(&mut Context::from_waker(user), |cx| cx.waker().clone())
    }

    #[test]
    fn wakes_the_waker_of_the_latest_poll() {
        let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let mut relay = Relay::default();
        let backend = register(&mut relay, &Waker::from(a.clone()));
        let again = register(&mut relay, &Waker::from(b.clone()));
        assert!(backend.will_wake(&again), "one backend waker per sleep");
        drop(again);
        backend.wake_by_ref();
        assert_eq!(a.wakes.load(Ordering::SeqCst), 0);
        assert_eq!(b.wakes.load(Ordering::SeqCst), 1);
        // Taken out by the wake: a second wake before a poll wakes nobody,
        // and the next poll puts the waker back.
        backend.wake_by_ref();
        assert_eq!(b.wakes.load(Ordering::SeqCst), 1);
        let _ = register(&mut relay, &Waker::from(b.clone()));
        let mut backend = Some(backend);
        relay.release(|| drop(backend.take())); // the backend lets go
        assert!(
            backend.is_none(),
            "detached: the backend held the relay's waker"
        );
        assert_eq!(Arc::strong_count(&b), 1, "the user's waker was dropped");
    }

    #[test]
    fn a_panicking_wake_is_caught_on_the_backend_side() {
        let user = Arc::new(Probe {
            panics: true,
            ..Probe::default()
        });
        let mut relay = Relay::default();
        let backend = register(&mut relay, &Waker::from(user.clone()));
        backend.wake_by_ref(); // does not unwind
        assert_eq!(user.wakes.load(Ordering::SeqCst), 1);
        relay.release(|| {}); // the backend keeps its handle
        drop(backend); // the last handle, with no user waker left
        assert_eq!(Arc::strong_count(&user), 1, "the user's waker was dropped");
    }

    #[test]
    fn a_released_relay_is_reused_by_the_next_one() {
        let user = Waker::from(Arc::new(Probe::default()));
        let mut first = Relay::default();
        let mut held = Some(register(&mut first, &user));
        let slot = held.as_ref().unwrap().data();
        first.release(|| drop(held.take()));
        let mut second = Relay::default();
        let reused = register(&mut second, &user);
        assert_eq!(reused.data(), slot, "the spare was not reused");
        let mut third = Relay::default();
        let fresh = register(&mut third, &user);
        assert_ne!(fresh.data(), slot, "two live relays share a slot");
        drop((reused, fresh));
        second.release(|| {});
        third.release(|| {});
    }
}
