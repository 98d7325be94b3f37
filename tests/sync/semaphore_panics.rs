//! `Semaphore` against hostile wakers (SPEC §1.13, §1.14): wakers whose
//! `clone`, `wake` or `drop` panic or call back into the same semaphore.
//! After every attack the permits are all accounted for, the next waiter is
//! served, every granted waiter was woken, and nothing hangs (every test runs
//! under the watchdog).
//!
//! Regressions of issue 14: item 6 (wakers cloned or dropped under the
//! semaphore's lock) and item 7 (a panicking waker left the other granted
//! waiters asleep).

use crate::common;

use awaitkit::{AcquireError, OwnedSemaphorePermit, PollSemaphore, Semaphore};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

// ---------------------------------------------------------------------------
// A waker with hooks on clone, wake and drop
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Clone = 0,
    Wake = 1,
    Drop = 2,
}

type Hook = Box<dyn Fn(Event, usize) + Send + Sync>;

/// The shared state of a [`Hooked`] waker: counts per event, and a hook
/// called (while armed) with the event and its 1-based count.
struct Hooks {
    counts: [AtomicUsize; 3],
    /// Clones made (a clone whose hook panicked is counted as an event but
    /// makes no waker).
    made: AtomicUsize,
    /// Wakers consumed by `wake` (by value).
    consumed: AtomicUsize,
    /// Wakers made by [`Hooked::waker`].
    created: AtomicUsize,
    armed: AtomicBool,
    hook: Hook,
}

impl Hooks {
    fn fire(&self, event: Event) {
        let k = self.counts[event as usize].fetch_add(1, Ordering::SeqCst) + 1;
        if self.armed.load(Ordering::SeqCst) {
            (self.hook)(event, k);
        }
    }
}

static HOOK_VTABLE: RawWakerVTable = RawWakerVTable::new(h_clone, h_wake, h_wake_by_ref, h_drop);

unsafe fn h_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live waker's `Arc<Hooks>` (from `Arc::into_raw`).
    let hooks = unsafe { &*data.cast::<Hooks>() };
    // The hook first: when it panics no clone exists and no count is taken.
    hooks.fire(Event::Clone);
    // SAFETY: as above; the new waker owns this count.
    unsafe { Arc::increment_strong_count(data.cast::<Hooks>()) };
    hooks.made.fetch_add(1, Ordering::SeqCst);
    RawWaker::new(data, &HOOK_VTABLE)
}

unsafe fn h_wake(data: *const ()) {
    // SAFETY: the waker being consumed owns one strong count; it is given
    // back when `hooks` drops (also when the hook panics).
    let hooks = unsafe { Arc::from_raw(data.cast::<Hooks>()) };
    hooks.consumed.fetch_add(1, Ordering::SeqCst);
    hooks.fire(Event::Wake);
}

unsafe fn h_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps its strong count.
    unsafe { &*data.cast::<Hooks>() }.fire(Event::Wake);
}

unsafe fn h_drop(data: *const ()) {
    // SAFETY: the waker owns one strong count, given back here (also when
    // the hook panics).
    let hooks = unsafe { Arc::from_raw(data.cast::<Hooks>()) };
    hooks.fire(Event::Drop);
}

/// Makes wakers that run a hook on every clone, wake and drop.
#[derive(Clone)]
struct Hooked(Arc<Hooks>);

impl Hooked {
    fn new(hook: impl Fn(Event, usize) + Send + Sync + 'static) -> Self {
        quiet_hook_panics();
        Hooked(Arc::new(Hooks {
            counts: Default::default(),
            made: AtomicUsize::new(0),
            consumed: AtomicUsize::new(0),
            created: AtomicUsize::new(0),
            armed: AtomicBool::new(true),
            hook: Box::new(hook),
        }))
    }

    /// A hook that panics with [`HOOK_PANIC`] on the `k`-th `event`.
    fn panic_at(event: Event, k: usize) -> Self {
        Hooked::new(move |e, n| {
            if e == event && n == k {
                panic!("{HOOK_PANIC}");
            }
        })
    }

    fn waker(&self) -> Waker {
        self.0.created.fetch_add(1, Ordering::SeqCst);
        let data = Arc::into_raw(self.0.clone()).cast::<()>();
        // SAFETY: the vtable follows the `RawWaker` contract over one
        // `Arc<Hooks>` strong count per waker.
        unsafe { Waker::from_raw(RawWaker::new(data, &HOOK_VTABLE)) }
    }

    fn disarm(&self) {
        self.0.armed.store(false, Ordering::SeqCst);
    }

    fn count(&self, event: Event) -> usize {
        self.0.counts[event as usize].load(Ordering::SeqCst)
    }

    /// Wakers of this hook alive now.
    fn live(&self) -> usize {
        self.0.created.load(Ordering::SeqCst) + self.0.made.load(Ordering::SeqCst)
            - self.count(Event::Drop)
            - self.0.consumed.load(Ordering::SeqCst)
    }
}

const HOOK_PANIC: &str = "hook panic";

/// The panics this file provokes on purpose are not printed (there are
/// thousands); every other panic is, by the default hook.
fn quiet_hook_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if msg != Some(HOOK_PANIC)
                && !payload.is::<PanickyPayload>()
                && !payload.is::<TaskPanic>()
            {
                default(info);
            }
        }));
    });
}

/// A panic payload whose own drop panics.
struct PanickyPayload;

impl Drop for PanickyPayload {
    fn drop(&mut self) {
        panic!("the payload's drop panics");
    }
}

/// Runs `f`, which must either return or panic with [`HOOK_PANIC`] (any
/// other panic is a bug and is re-raised). Returns whether it panicked.
#[track_caller]
fn hook_may_panic(f: impl FnOnce()) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(payload) => {
            let msg = panic_message(&*payload);
            assert_eq!(msg, HOOK_PANIC, "a panic that is not the hook's");
            true
        }
    }
}

fn poll_with<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

/// Every permit is back, nobody waits, nothing is owed, and the fast path
/// works again.
#[track_caller]
fn assert_idle(sem: &Semaphore, capacity: usize) {
    let stats = sem.stats();
    assert_eq!(
        (stats.capacity, stats.available, stats.in_use, stats.waiters),
        (capacity, capacity, 0, 0),
        "permits not accounted for"
    );
    if !sem.is_closed() {
        drop(sem.try_acquire_many(capacity).expect("the fast path works"));
    }
}

// ---------------------------------------------------------------------------
// Issue 14, item 6: no waker clone or drop under the lock
// ---------------------------------------------------------------------------

guarded! {
    /// Re-polling a queued acquire with another waker clones it: that clone
    /// used to run under the semaphore's lock, so a clone that calls back
    /// into the semaphore deadlocked.
    fn a_waker_whose_clone_calls_back_into_the_semaphore_cannot_deadlock() {
        let sem = Arc::new(Semaphore::new(1));
        let s = sem.clone();
        let hooked = Hooked::new(move |event, _| {
            if event == Event::Clone {
                let _ = s.stats();
                drop(s.try_acquire());
                s.add_permits(0);
                s.set_capacity(1);
            }
        });
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, Waker::noop()).is_pending());
        let w = hooked.waker();
        assert!(poll_with(&mut a, &w).is_pending());
        assert_eq!(hooked.count(Event::Clone), 1);
        assert!(poll_with(&mut a, &w).is_pending());
        assert_eq!(hooked.count(Event::Clone), 1, "the same waker is not cloned again");
        drop(held);
        assert_eq!(hooked.count(Event::Wake), 1);
        let Poll::Ready(Ok(p)) = poll_with(&mut a, &w) else { panic!("not granted") };
        drop(p);
        drop(a);
        hooked.disarm();
        drop(w);
        assert_eq!(hooked.live(), 0);
        assert_idle(&sem, 1);
    }

    /// The clone's callback grants the very acquire being polled, or closes
    /// the semaphore: the poll sees the outcome at once.
    fn a_clone_that_releases_or_closes_is_seen_by_the_same_poll() {
        let sem = Arc::new(Semaphore::new(1));
        let held = Arc::new(std::sync::Mutex::new(Some(sem.clone().try_acquire_owned().unwrap())));
        let h = held.clone();
        let release = Hooked::new(move |event, _| {
            if event == Event::Clone {
                drop(h.lock().unwrap().take());
            }
        });
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, Waker::noop()).is_pending());
        let Poll::Ready(Ok(p)) = poll_with(&mut a, &release.waker()) else {
            panic!("granted during the clone, seen by the same poll")
        };
        assert_eq!(release.live(), 0, "the clone made too late was dropped");
        assert_eq!(sem.stats().waiters, 0);

        let s = sem.clone();
        let close = Hooked::new(move |event, _| {
            if event == Event::Clone {
                s.close();
            }
        });
        let mut b = sem.clone().acquire_owned();
        assert!(poll_with(&mut b, Waker::noop()).is_pending());
        let out = poll_with(&mut b, &close.waker());
        assert!(matches!(out, Poll::Ready(Err(e)) if e.is_closed()), "{out:?}");
        assert_eq!(close.live(), 0);
        drop(p);
        assert_idle(&sem, 1);
    }

    /// A clone that panics leaves the acquire queued with its old waker.
    fn a_panicking_clone_keeps_the_old_registration() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Clone, 1);
        // On the first poll: nothing is queued.
        let mut a = sem.clone().acquire_owned();
        assert!(hook_may_panic(|| drop(poll_with(&mut a, &bad.waker()))));
        assert_eq!(sem.stats().waiters, 0);
        // On a re-poll: still queued, and the old waker is woken.
        let old = CountingWaker::new();
        assert!(poll_with(&mut a, old.waker()).is_pending());
        let bad = Hooked::panic_at(Event::Clone, 1);
        assert!(hook_may_panic(|| drop(poll_with(&mut a, &bad.waker()))));
        assert_eq!(sem.stats().waiters, 1);
        drop(held);
        assert_eq!(old.wakes(), 1);
        assert!(matches!(poll_with(&mut a, old.waker()), Poll::Ready(Ok(_))));
        drop(a);
        assert_eq!((old.live_clones(), bad.live()), (0, 0));
        assert_idle(&sem, 1);
    }

    /// The replaced waker's drop panics: the poll panics, but the new waker
    /// is registered and woken at the grant.
    fn a_panicking_drop_of_a_replaced_waker_keeps_the_new_one() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Drop, 2); // the first drop is ours
        let mut a = sem.clone().acquire_owned();
        let w = bad.waker();
        assert!(poll_with(&mut a, &w).is_pending());
        drop(w);
        let new = CountingWaker::new();
        assert!(hook_may_panic(|| drop(poll_with(&mut a, new.waker()))));
        assert_eq!(bad.live(), 0);
        drop(held);
        assert_eq!(new.wakes(), 1);
        assert!(matches!(poll_with(&mut a, new.waker()), Poll::Ready(Ok(_))));
        drop(a);
        assert_idle(&sem, 1);
    }

    /// Cancelling a waiter whose waker panics when dropped, while that
    /// cancel hands its permits on: the next waiter is still woken (the
    /// waker used to be dropped before the wakes, and its panic skipped
    /// them).
    fn a_cancel_whose_waker_drop_panics_still_wakes_the_next_waiter() {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Drop, 2);
        let mut big = sem.clone().acquire_many_owned(2);
        let w = bad.waker();
        assert!(poll_with(&mut big, &w).is_pending()); // assigned the free permit
        drop(w);
        let next_waker = CountingWaker::new();
        let mut next = sem.clone().acquire_owned();
        assert!(poll_with(&mut next, next_waker.waker()).is_pending());
        assert!(hook_may_panic(|| drop(big)));
        assert_eq!(next_waker.wakes(), 1, "the next waiter was left asleep");
        assert!(matches!(poll_with(&mut next, next_waker.waker()), Poll::Ready(Ok(_))));
        drop((next, held));
        assert_eq!(bad.live(), 0);
        assert_idle(&sem, 2);
    }

    /// `PollSemaphore`: the same rules through the poll API.
    fn poll_semaphore_with_hostile_wakers() {
        let sem = Arc::new(Semaphore::new(1));
        let s = sem.clone();
        let reentrant = Hooked::new(move |event, _| {
            if event == Event::Clone {
                let _ = s.stats();
                drop(s.try_acquire());
            }
        });
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut handle = PollSemaphore::new(sem.clone());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(handle.poll_acquire(&mut cx).is_pending());
        let w = reentrant.waker();
        assert!(handle.poll_acquire(&mut Context::from_waker(&w)).is_pending());
        drop(held);
        assert_eq!(reentrant.count(Event::Wake), 1);
        let Poll::Ready(Some(p)) = handle.poll_acquire(&mut cx) else { panic!() };
        drop((p, w));
        // A panicking waker when cancelled.
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Drop, 2);
        let w = bad.waker();
        assert!(handle.poll_acquire(&mut Context::from_waker(&w)).is_pending());
        drop(w);
        assert!(hook_may_panic(|| handle.cancel()));
        assert_eq!(sem.stats().waiters, 0);
        drop(held);
        drop(handle);
        reentrant.disarm();
        assert_eq!((reentrant.live(), bad.live()), (0, 0));
        assert_idle(&sem, 1);
    }
}

// ---------------------------------------------------------------------------
// Issue 14, item 7: one panicking waker never keeps the others asleep
// ---------------------------------------------------------------------------

guarded! {
    /// One release grants A (whose waker panics) and B: B is woken all the
    /// same, the panic comes out of the release, and both hold their
    /// permits.
    fn a_panicking_waker_does_not_keep_the_next_granted_waiter_asleep() {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_many_owned(2).unwrap();
        let bad = Hooked::panic_at(Event::Wake, 1);
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &bad.waker()).is_pending());
        let wb = CountingWaker::new();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_with(&mut b, wb.waker()).is_pending());
        assert!(hook_may_panic(|| drop(held)), "the waker's panic propagates");
        assert_eq!(wb.wakes(), 1, "B was granted but never woken");
        let Poll::Ready(Ok(pa)) = poll_with(&mut a, Waker::noop()) else { panic!() };
        let Poll::Ready(Ok(pb)) = poll_with(&mut b, wb.waker()) else { panic!() };
        drop((pa, pb, a, b));
        assert_eq!(bad.live(), 0);
        assert_idle(&sem, 2);
    }

    /// Several panicking wakers in one release (one of them with a payload
    /// whose drop panics too): all woken, the first panic propagates, no
    /// abort.
    fn many_panicking_wakers_in_one_release() {
        let sem = Arc::new(Semaphore::new(4));
        let held = sem.clone().try_acquire_many_owned(4).unwrap();
        let first = Hooked::panic_at(Event::Wake, 1);
        let evil = Hooked::new(|event, _| {
            if event == Event::Wake {
                std::panic::panic_any(PanickyPayload);
            }
        });
        let good = CountingWaker::new();
        let mut acquires: Vec<_> = (0..4).map(|_| sem.clone().acquire_owned()).collect();
        assert!(poll_with(&mut acquires[0], &first.waker()).is_pending());
        assert!(poll_with(&mut acquires[1], &evil.waker()).is_pending());
        assert!(poll_with(&mut acquires[2], good.waker()).is_pending());
        assert!(poll_with(&mut acquires[3], &evil.waker()).is_pending());
        assert!(hook_may_panic(|| drop(held)));
        assert_eq!((first.count(Event::Wake), evil.count(Event::Wake), good.wakes()), (1, 2, 1));
        for a in &mut acquires {
            assert!(matches!(poll_with(a, Waker::noop()), Poll::Ready(Ok(_))));
        }
        drop(acquires);
        assert_idle(&sem, 4);
    }

    /// `close`, `add_permits`, `set_capacity` and `forget` wake with the
    /// same guarantee.
    fn every_waking_call_wakes_everyone_and_propagates_the_first_panic() {
        // close
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Wake, 1);
        let good = CountingWaker::new();
        let mut a = sem.clone().acquire_owned();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &bad.waker()).is_pending());
        assert!(poll_with(&mut b, good.waker()).is_pending());
        assert!(hook_may_panic(|| sem.close()));
        assert!(sem.is_closed());
        assert_eq!(good.wakes(), 1);
        assert!(matches!(poll_with(&mut a, Waker::noop()), Poll::Ready(Err(e)) if e.is_closed()));
        assert!(matches!(poll_with(&mut b, good.waker()), Poll::Ready(Err(e)) if e.is_closed()));
        drop(held);
        assert_idle(&sem, 1);

        // add_permits
        let sem = Arc::new(Semaphore::new(0));
        let bad = Hooked::panic_at(Event::Wake, 1);
        let good = CountingWaker::new();
        let mut a = sem.clone().acquire_owned();
        let mut b = sem.clone().acquire_owned();
        sem.add_permits(1);
        let held = sem.clone().try_acquire_owned().unwrap();
        assert!(poll_with(&mut a, &bad.waker()).is_pending());
        assert!(poll_with(&mut b, good.waker()).is_pending());
        assert!(hook_may_panic(|| sem.add_permits(1)));
        assert_eq!(sem.stats().capacity, 2, "the permits were added");
        drop(held); // grants b
        assert_eq!(good.wakes(), 1);
        drop(a);
        drop(b);
        assert_idle(&sem, 2);

        // set_capacity (a waiter that no longer fits fails) and forget
        let sem = Arc::new(Semaphore::new(3));
        let held = sem.clone().try_acquire_many_owned(3).unwrap();
        let bad = Hooked::panic_at(Event::Wake, 1);
        let good = CountingWaker::new();
        let mut big = sem.clone().acquire_many_owned(3);
        let mut small = sem.clone().acquire_owned();
        assert!(poll_with(&mut big, &bad.waker()).is_pending());
        assert!(poll_with(&mut small, good.waker()).is_pending());
        assert!(hook_may_panic(|| sem.set_capacity(2)));
        assert!(matches!(poll_with(&mut big, Waker::noop()), Poll::Ready(Err(e)) if e.exceeds_capacity()));
        let mut held = held;
        let one = held.split(1).unwrap();
        drop(held); // pays the shrink's debt, then grants `small`
        assert_eq!(good.wakes(), 1);
        let Poll::Ready(Ok(p)) = poll_with(&mut small, good.waker()) else { panic!() };
        let bad = Hooked::panic_at(Event::Wake, 1);
        let mut big = sem.clone().acquire_many_owned(2);
        assert!(poll_with(&mut big, &bad.waker()).is_pending());
        assert!(hook_may_panic(|| one.forget()));
        assert!(matches!(poll_with(&mut big, Waker::noop()), Poll::Ready(Err(e)) if e.exceeds_capacity()));
        drop(p);
        assert_idle(&sem, 1);
    }

    /// A waker that closes the semaphore from `wake`, during a release that
    /// granted it and the next waiter: the granted keep their permits, the
    /// rest fail, nothing is lost.
    fn close_from_inside_a_grant() {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_many_owned(2).unwrap();
        let s = sem.clone();
        let closer = Hooked::new(move |event, _| {
            if event == Event::Wake {
                s.close();
            }
        });
        let good = CountingWaker::new();
        let mut a = sem.clone().acquire_owned();
        let mut b = sem.clone().acquire_owned();
        let mut c = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &closer.waker()).is_pending());
        assert!(poll_with(&mut b, good.waker()).is_pending());
        assert!(poll_with(&mut c, good.waker()).is_pending());
        drop(held);
        assert!(matches!(poll_with(&mut a, Waker::noop()), Poll::Ready(Ok(_))));
        assert!(matches!(poll_with(&mut b, good.waker()), Poll::Ready(Ok(_))));
        assert!(matches!(poll_with(&mut c, good.waker()), Poll::Ready(Err(e)) if e.is_closed()));
        assert_eq!(good.wakes(), 2);
        drop((a, b, c));
        assert_idle(&sem, 2);
    }
}

matrix! {
    /// Issue 14, item 6 inside a task: a queued acquire whose waker calls
    /// back into the semaphore from `clone` (on a re-poll) and from `wake`
    /// (at its grant), next to an awaited acquire queued behind it. It used
    /// to deadlock the executor's thread on the semaphore's lock.
    async fn a_reentrant_waker_inside_a_task_cannot_deadlock() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let s = sem.clone();
        let hooked = Hooked::new(move |event, _| {
            let _ = s.stats();
            drop(s.try_acquire());
            if event == Event::Wake {
                s.add_permits(0);
            }
        });
        let mut hostile = sem.clone().acquire_owned();
        assert!(poll_with(&mut hostile, Waker::noop()).is_pending());
        assert!(poll_with(&mut hostile, &hooked.waker()).is_pending()); // a clone
        assert_eq!(hooked.count(Event::Clone), 1);
        let awaited = sem.clone().acquire_owned();
        let h = hooked.clone();
        let driver = async move {
            yield_now().await; // `awaited` is queued behind `hostile`
            drop(held); // grants `hostile`: its wake calls back
            assert_eq!(h.count(Event::Wake), 1);
            yield_now().await;
            let Poll::Ready(Ok(p)) = poll_with(&mut hostile, &h.waker()) else {
                panic!("granted")
            };
            drop(p); // grants `awaited`
        };
        let (awaited, ()) = awaitkit::gather!(awaited, driver).await;
        drop(awaited.expect("granted"));
        hooked.disarm();
        assert_eq!(hooked.live(), 0);
        assert_idle(&sem, 1);
    }

    /// The same through an executor: B is an awaited acquire that only
    /// `gather!` polls, and only when its waker fires; A, queued first with
    /// a panicking waker, is granted in the same release.
    async fn a_panicking_waker_does_not_strand_an_awaiting_task() {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_many_owned(2).unwrap();
        let bad = Hooked::panic_at(Event::Wake, 1);
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &bad.waker()).is_pending());
        let b = sem.clone().acquire_owned();
        let release = async move {
            yield_now().await; // B is queued first
            assert!(hook_may_panic(move || drop(held)));
        };
        let (b, ()) = awaitkit::gather!(b, release).await;
        let pb = b.expect("B granted");
        let Poll::Ready(Ok(pa)) = poll_with(&mut a, Waker::noop()) else { panic!() };
        drop((pa, pb, a));
        assert_idle(&sem, 2);
    }
}

// ---------------------------------------------------------------------------
// Issue 17: the single-grant release (one waker, woken without a wake list)
// ---------------------------------------------------------------------------

guarded! {
    /// The usual release, one permit completing the queue's head, wakes
    /// that one waker on a path of its own: its panic comes out of the
    /// permit's drop, the waiter holds the permit, and the next release
    /// (the same path) serves the next waiter.
    fn a_single_grant_whose_waker_panics() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let bad = Hooked::panic_at(Event::Wake, 1);
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &bad.waker()).is_pending());
        let good = CountingWaker::new();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_with(&mut b, good.waker()).is_pending());
        assert!(hook_may_panic(|| drop(held)), "the waker's panic propagates");
        assert_eq!(bad.count(Event::Wake), 1);
        assert_eq!(good.wakes(), 0, "one permit, one grant");
        let Poll::Ready(Ok(pa)) = poll_with(&mut a, Waker::noop()) else { panic!() };
        assert_eq!(sem.stats().waiters, 1);
        drop(pa); // grants B
        assert_eq!(good.wakes(), 1);
        let Poll::Ready(Ok(pb)) = poll_with(&mut b, good.waker()) else { panic!() };
        drop((pb, a, b));
        assert_eq!(bad.live(), 0);
        assert_idle(&sem, 1);
    }

    /// A single grant's waker that calls back into the semaphore from
    /// `wake` (releasing another permit, which grants the next waiter on
    /// the same path, then trying to acquire): no lock is held, nothing
    /// deadlocks, both waiters are served in order.
    fn a_single_grant_whose_waker_reenters() {
        let sem = Arc::new(Semaphore::new(2));
        let mut held = sem.clone().try_acquire_many_owned(2).unwrap();
        let other = std::sync::Mutex::new(Some(held.split(1).unwrap()));
        let s = sem.clone();
        let tried = Arc::new(AtomicBool::new(false));
        let t = tried.clone();
        let reenter = Hooked::new(move |event, _| {
            if event == Event::Wake {
                drop(other.lock().unwrap().take());
                t.store(s.try_acquire().is_err(), Ordering::SeqCst);
            }
        });
        let mut a = sem.clone().acquire_owned();
        assert!(poll_with(&mut a, &reenter.waker()).is_pending());
        let good = CountingWaker::new();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_with(&mut b, good.waker()).is_pending());
        drop(held);
        assert!(tried.load(Ordering::SeqCst), "both permits were granted: none free");
        assert_eq!(good.wakes(), 1, "B granted from inside A's wake");
        let Poll::Ready(Ok(pa)) = poll_with(&mut a, Waker::noop()) else { panic!() };
        let Poll::Ready(Ok(pb)) = poll_with(&mut b, good.waker()) else { panic!() };
        drop((pa, pb, a, b));
        reenter.disarm();
        assert_idle(&sem, 2);
    }

    /// A permit dropped while its task unwinds grants the head; that
    /// waker's panic (also one whose payload panics when dropped) is
    /// discarded instead of aborting the process, the task's own panic goes
    /// on, and the waiter holds its permit.
    fn a_single_grant_during_an_unwind_discards_the_wakers_panic() {
        for evil_payload in [false, true] {
            let sem = Arc::new(Semaphore::new(1));
            let held = sem.clone().try_acquire_owned().unwrap();
            let bad = Hooked::new(move |event, _| {
                if event == Event::Wake {
                    if evil_payload {
                        std::panic::panic_any(PanickyPayload);
                    }
                    panic!("{HOOK_PANIC}");
                }
            });
            let mut a = sem.clone().acquire_owned();
            assert!(poll_with(&mut a, &bad.waker()).is_pending());
            let out = catch_unwind(AssertUnwindSafe(move || {
                let _held = held;
                std::panic::panic_any(TaskPanic);
            }));
            assert!(out.unwrap_err().is::<TaskPanic>(), "the task's panic goes on");
            assert_eq!(bad.count(Event::Wake), 1);
            let Poll::Ready(Ok(pa)) = poll_with(&mut a, Waker::noop()) else { panic!() };
            drop((pa, a));
            assert_eq!(bad.live(), 0);
            assert_idle(&sem, 1);
        }
    }
}

/// The panic payload of a task that unwinds holding a permit.
struct TaskPanic;

// ---------------------------------------------------------------------------
// Attacks: random scripts with a waker that panics at its k-th event or calls
// back into the semaphore, cancellation after every poll, close and resize
// in the middle, and acquires from other threads
// ---------------------------------------------------------------------------

/// An acquire of the script, with its own counting waker when it is a
/// well-behaved one.
struct Entry {
    acquire: awaitkit::AcquireOwned,
    good: Option<CountingWaker>,
    /// The good waker's wakes when it last returned `Pending`.
    pending_since: Option<usize>,
}

/// What the hostile wakers do when their hook fires.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Panic at the k-th event of this kind (of any kind for `None`),
    /// counted over both hostile wakers.
    PanicAt(Option<Event>, usize),
    /// Call back into the semaphore (stats, try_acquire, a release) on every
    /// event, and close it at the k-th.
    Reenter(usize),
}

/// Two hostile wakers (distinct, so re-polling with the other one replaces
/// the stored waker: a clone and a drop) sharing one event count.
fn hostile(sem: &Arc<Semaphore>, attack: Attack) -> [Hooked; 2] {
    let events = Arc::new(AtomicUsize::new(0));
    let make = || {
        let (s, events) = (sem.clone(), events.clone());
        Hooked::new(move |event, _| match attack {
            Attack::PanicAt(kind, k) => {
                if kind.is_none_or(|kind| kind == event)
                    && events.fetch_add(1, Ordering::SeqCst) + 1 == k
                {
                    panic!("{HOOK_PANIC}");
                }
            }
            Attack::Reenter(k) => {
                let n = events.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = s.stats();
                drop(s.try_acquire());
                if event == Event::Wake {
                    s.add_permits(0);
                }
                if n == k {
                    s.close();
                }
            }
        })
    };
    [make(), make()]
}

/// Polls a good entry and checks that a grant was preceded by a wake.
#[track_caller]
fn poll_good(e: &mut Entry, seed: u64) -> Option<Result<OwnedSemaphorePermit, AcquireError>> {
    let w = e.good.as_ref().expect("a good entry");
    match poll_with(&mut e.acquire, w.waker()) {
        Poll::Pending => {
            e.pending_since = Some(w.wakes());
            None
        }
        Poll::Ready(out) => {
            if let Some(since) = e.pending_since {
                assert!(
                    w.wakes() > since,
                    "seed {seed}: a waiter completed without being woken"
                );
            }
            Some(out)
        }
    }
}

/// What a script did (to check that the attacks really happened).
#[derive(Debug, Default)]
struct ScriptStats {
    /// Hook panics caught.
    panics: usize,
    /// Acquires by a good waker that completed after waiting.
    woken_grants: usize,
    /// Times a hostile waker's hook ran.
    hook_events: usize,
}

impl std::ops::AddAssign for ScriptStats {
    fn add_assign(&mut self, other: ScriptStats) {
        self.panics += other.panics;
        self.woken_grants += other.woken_grants;
        self.hook_events += other.hook_events;
    }
}

/// A random script of acquires (half with hostile wakers), polls with
/// changing wakers, cancellations, releases, additions, resizes, forgets
/// and closes, each of which may panic with the hook's panic (and nothing
/// else). Then everything is given back and the good waiters are served
/// strictly by their wakes: a waiter granted but never woken fails the
/// script; so do permits not accounted for and a leaked waker.
fn run_script(seed: u64, attack: Attack, with_thread: bool) -> ScriptStats {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let capacity = 1 + rng.below(4);
    let sem = Arc::new(Semaphore::new(capacity));
    let bad = hostile(&sem, attack);
    let mut stats = ScriptStats::default();
    let stop = Arc::new(AtomicBool::new(false));
    let other = with_thread.then(|| {
        let (sem, stop) = (sem.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match futures::executor::block_on(sem.acquire()) {
                    Ok(p) => drop(p),
                    Err(_) => break, // closed, or the capacity went to 0
                }
                drop(sem.try_acquire());
                std::thread::yield_now();
            }
        })
    });
    let mut entries: Vec<Entry> = Vec::new();
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut panics = 0;
    let mut note = |panicked: bool| panics += panicked as usize;
    for _ in 0..80 {
        let poll_index = match rng.below(12) {
            0..=2 => {
                let n = rng.below(capacity + 1);
                let good = (rng.below(2) == 0).then(CountingWaker::new);
                entries.push(Entry {
                    acquire: sem.clone().acquire_many_owned(n),
                    good,
                    pending_since: None,
                });
                // Usually polled at once (queued), sometimes left unpolled.
                (rng.below(4) != 0).then(|| entries.len() - 1)
            }
            3..=5 if !entries.is_empty() => Some(rng.below(entries.len())),
            6 if !entries.is_empty() => {
                // Cancel one, polled or not, granted or not.
                let e = entries.swap_remove(rng.below(entries.len()));
                note(hook_may_panic(move || drop(e)));
                None
            }
            7 | 8 if !held.is_empty() => {
                let p = held.swap_remove(rng.below(held.len()));
                note(hook_may_panic(move || drop(p)));
                None
            }
            9 => {
                let n = 1 + rng.below(2);
                note(hook_may_panic(|| sem.add_permits(n)));
                None
            }
            10 => {
                let c = rng.below(5);
                note(hook_may_panic(|| sem.set_capacity(c)));
                None
            }
            11 if rng.below(20) == 0 => {
                note(hook_may_panic(|| sem.close()));
                None
            }
            11 if !held.is_empty() => {
                let p = held.swap_remove(rng.below(held.len()));
                note(hook_may_panic(move || p.forget()));
                None
            }
            _ => None,
        };
        let Some(i) = poll_index else { continue };
        // Poll one (a hostile entry with one of the hostile wakers).
        let e = &mut entries[i];
        let out = if e.good.is_some() {
            let was_waiting = e.pending_since.is_some();
            let out = poll_good(e, seed);
            if out.is_some() && was_waiting {
                stats.woken_grants += 1;
            }
            out
        } else {
            let w = bad[rng.below(2)].waker();
            let mut out = None;
            note(hook_may_panic(|| {
                if let Poll::Ready(r) = poll_with(&mut e.acquire, &w) {
                    out = Some(r);
                }
            }));
            note(hook_may_panic(move || drop(w)));
            out
        };
        if let Some(out) = out {
            let e = entries.swap_remove(i);
            note(hook_may_panic(move || drop(e)));
            if let Ok(p) = out {
                held.push(p);
            }
        }
    }
    // Wind down: no more attacks; give everything held back, drop the
    // hostile entries, then serve the good ones, each only once woken.
    bad.iter().for_each(Hooked::disarm);
    stats.panics = panics;
    stats.hook_events = bad
        .iter()
        .map(|h| h.count(Event::Clone) + h.count(Event::Wake) + h.count(Event::Drop))
        .sum();
    drop(held);
    entries.retain(|e| e.good.is_some());
    if !sem.is_closed() && sem.stats().capacity == 0 {
        sem.add_permits(capacity); // let the rest through
    }
    let mut idle_rounds = 0;
    while !entries.is_empty() {
        let mut progress = false;
        let mut i = 0;
        while i < entries.len() {
            let e = &mut entries[i];
            let woken = match e.pending_since {
                None => true,
                Some(since) => e.good.as_ref().unwrap().wakes() > since,
            };
            if woken {
                progress = true;
                let was_waiting = e.pending_since.is_some();
                if let Some(out) = poll_good(e, seed) {
                    stats.woken_grants += was_waiting as usize;
                    drop(out);
                    entries.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        if !progress {
            // Only the other thread can still hold permits: give it time.
            assert!(
                with_thread && idle_rounds < 5_000,
                "seed {seed}, {attack:?}: a waiter was granted (or failed) but never woken"
            );
            idle_rounds += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = other {
        t.join().unwrap();
    }
    assert_eq!(
        bad.iter().map(Hooked::live).sum::<usize>(),
        0,
        "seed {seed}: a hostile waker leaked"
    );
    let counts = sem.stats();
    assert_eq!(
        (counts.available, counts.in_use, counts.waiters),
        (counts.capacity, 0, 0),
        "seed {seed}, {attack:?}: permits not accounted for"
    );
    if !sem.is_closed() && counts.capacity > 0 {
        drop(
            sem.try_acquire_many(counts.capacity)
                .expect("the fast path works"),
        );
    }
    stats
}

guarded! {
    fn scripts_with_wakers_that_panic_at_their_kth_event() {
        let mut total = ScriptStats::default();
        for kind in [None, Some(Event::Clone), Some(Event::Wake), Some(Event::Drop)] {
            let mut per_kind = ScriptStats::default();
            // Hostile wakes are rarer than clones and drops.
            let ks = if kind == Some(Event::Wake) { 1..=3 } else { 1..=8 };
            for k in ks {
                for seed in 0..if kind == Some(Event::Wake) { 120 } else { 40u64 } {
                    per_kind += run_script(seed * 7919 + k as u64, Attack::PanicAt(kind, k), false);
                }
            }
            eprintln!("{kind:?}: {per_kind:?}");
            total += per_kind;
        }
        // The attacks happened: many panics, and many waiters served by
        // their wakes around them.
        assert!(total.panics > 300 && total.woken_grants > 300, "{total:?}");
    }

    fn scripts_with_wakers_that_reenter_and_close() {
        let mut total = ScriptStats::default();
        for k in [1, 2, 3, 5, 8, 13, usize::MAX] {
            for seed in 0..40u64 {
                total += run_script(seed * 104_729 + k as u64 % 1000, Attack::Reenter(k), false);
            }
        }
        assert!(total.hook_events > 1000 && total.woken_grants > 40, "{total:?}");
    }

    fn scripts_with_acquires_from_another_thread() {
        for seed in 0..40u64 {
            let attack = match seed % 3 {
                0 => Attack::PanicAt(Some(Event::Wake), 1 + (seed as usize % 4)),
                1 => Attack::PanicAt(None, 1 + (seed as usize % 9)),
                _ => Attack::Reenter(usize::MAX),
            };
            run_script(seed * 31 + 5, attack, true);
        }
    }
}
