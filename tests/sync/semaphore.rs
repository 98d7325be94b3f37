//! `Semaphore` (SPEC §6): counts, strict FIFO, cancel safety, close, limits,
//! the poll API, timeouts, resizing and stats — through the executor matrix
//! and with hand-driven polls.

use crate::common;

use awaitkit::{PollSemaphore, Semaphore, TryAcquireError};
use common::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::poll_once as poll;

fn pending<F: Future + Unpin>(f: &mut F, waker: &CountingWaker) {
    assert!(poll(f, waker).is_pending(), "expected Pending");
}

fn granted<'a>(
    f: &mut awaitkit::Acquire<'a>,
    waker: &CountingWaker,
) -> awaitkit::SemaphorePermit<'a> {
    match poll(f, waker) {
        Poll::Ready(Ok(permit)) => permit,
        Poll::Ready(Err(e)) => panic!("acquire failed: {e}"),
        Poll::Pending => panic!("acquire still pending"),
    }
}

#[test]
fn acquire_and_release_move_the_counts() {
    let sem = Semaphore::new(3);
    let w = CountingWaker::new();
    let a = granted(&mut sem.acquire(), &w);
    let b = granted(&mut sem.acquire_many(2), &w);
    assert_eq!(sem.available_permits(), 0);
    assert_eq!((a.num_permits(), b.num_permits()), (1, 2));
    drop(b);
    assert_eq!(sem.available_permits(), 2);
    drop(a);
    assert_eq!(sem.available_permits(), 3);
    assert_eq!(sem.stats().in_use, 0);
}

#[test]
fn a_granted_waiter_that_is_never_polled_does_not_hold_back_the_next() {
    // Two permits, two waiters. The first waiter is granted (and woken) but
    // its task never polls it; when the second permit comes back, the second
    // waiter must be woken and granted all the same. (A semaphore that keeps
    // one wake in flight and hands the next on only when the woken waiter
    // runs leaves B asleep here with a permit free.)
    let sem = Semaphore::new(2);
    let w = CountingWaker::new();
    let h1 = granted(&mut sem.acquire(), &w);
    let h2 = granted(&mut sem.acquire(), &w);
    let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
    let mut a = sem.acquire();
    let mut b = sem.acquire();
    pending(&mut a, &wa);
    pending(&mut b, &wb);
    drop(h1);
    assert_eq!((wa.wakes(), wb.wakes()), (1, 0));
    drop(h2);
    assert_eq!(
        wb.wakes(),
        1,
        "B was not woken although a permit came back for it"
    );
    let _b = granted(&mut b, &wb);
    let _a = granted(&mut a, &wa);
}

#[test]
fn zero_permits_are_ready_at_once_even_when_none_are_free() {
    let sem = Semaphore::new(0);
    let w = CountingWaker::new();
    let p = granted(&mut sem.acquire_many(0), &w);
    assert_eq!(p.num_permits(), 0);
    assert_eq!(sem.try_acquire_many(0).unwrap().num_permits(), 0);
}

/// Issue 14, item 8: a closed semaphore fails every acquire, zero permits
/// included (they used to succeed with a 0-permit permit, while
/// `try_acquire_many(0)` failed).
#[test]
fn a_closed_semaphore_fails_zero_permit_acquires_too() {
    let sem = Arc::new(Semaphore::new(1));
    sem.close();
    let w = CountingWaker::new();
    assert!(matches!(poll(&mut sem.acquire_many(0), &w), Poll::Ready(Err(e)) if e.is_closed()));
    assert!(matches!(
        poll(&mut sem.clone().acquire_many_owned(0), &w),
        Poll::Ready(Err(e)) if e.is_closed()
    ));
    assert_eq!(
        sem.try_acquire_many(0).unwrap_err(),
        TryAcquireError::Closed
    );
    assert_eq!(
        sem.clone().try_acquire_many_owned(0).unwrap_err(),
        TryAcquireError::Closed
    );
    let mut handle = PollSemaphore::new(sem.clone());
    assert!(matches!(
        handle.poll_acquire_many(&mut w.context(), 0),
        Poll::Ready(None)
    ));
    assert!(matches!(
        poll(&mut sem.limit(std::future::ready(())), &w),
        Poll::Ready(Err(_))
    ));
    // Closed while waiters are queued: the same.
    let sem = Semaphore::new(1);
    let held = granted(&mut sem.acquire(), &w);
    let mut queued = sem.acquire();
    pending(&mut queued, &w);
    sem.close();
    assert!(matches!(poll(&mut sem.acquire_many(0), &w), Poll::Ready(Err(e)) if e.is_closed()));
    assert!(matches!(poll(&mut queued, &w), Poll::Ready(Err(e)) if e.is_closed()));
    drop(held);
    assert_eq!(w.live_clones(), 0);
}

#[test]
fn asking_for_more_than_the_capacity_fails_at_once() {
    let sem = Semaphore::new(2);
    let w = CountingWaker::new();
    match poll(&mut sem.acquire_many(3), &w) {
        Poll::Ready(Err(e)) => {
            assert!(e.exceeds_capacity());
            assert!(e.to_string().contains("capacity 2"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sem.try_acquire_many(3).unwrap_err(),
        TryAcquireError::NoPermits
    );
    assert_eq!(sem.stats().waiters, 0);
}

#[test]
fn strict_fifo_a_big_request_blocks_later_small_ones() {
    let sem = Semaphore::new(3);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(2), &w);
    let mut big = sem.acquire_many(3); // needs all three
    pending(&mut big, &w);
    // One permit is free, but the big request is first in line.
    assert_eq!(
        sem.available_permits(),
        0,
        "the free permit went to the head"
    );
    assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
    let mut small = sem.acquire();
    pending(&mut small, &w);
    drop(held);
    let big_permit = granted(&mut big, &w);
    pending(&mut small, &w);
    drop(big_permit);
    let small_permit = granted(&mut small, &w);
    assert_eq!(sem.available_permits(), 2);
    drop(small_permit);
    assert_eq!(sem.available_permits(), 3);
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let mut permit = Some(granted(&mut sem.acquire(), &w));
    let mut queue: Vec<_> = (0..5).map(|_| sem.acquire()).collect();
    for a in &mut queue {
        pending(a, &w);
    }
    for i in 0..5 {
        drop(permit.take());
        for later in &mut queue[i + 1..] {
            pending(later, &w);
        }
        permit = Some(granted(&mut queue[i], &w));
    }
}

#[test]
fn a_dropped_waiter_returns_its_partial_permits_and_wakes_the_next() {
    let sem = Semaphore::new(4);
    let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
    let held = granted(&mut sem.acquire_many(3), &wa);
    let mut big = sem.acquire_many(4);
    pending(&mut big, &wa); // assigned the one free permit
    let mut next = sem.acquire();
    pending(&mut next, &wb);
    assert_eq!(sem.available_permits(), 0);
    drop(big);
    assert_eq!(wb.wakes(), 1, "the next waiter was woken");
    let p = granted(&mut next, &wb);
    drop((p, held));
    assert_eq!(sem.available_permits(), 4);
    assert_eq!(sem.stats().waiters, 0);
}

#[test]
fn forget_permits_takes_only_free_permits_and_shrinks_the_capacity() {
    let sem = Semaphore::new(5);
    assert_eq!(sem.forget_permits(0), 0);
    let held = sem.try_acquire_many(2).unwrap();
    assert_eq!(sem.forget_permits(1), 1);
    assert_eq!((sem.available_permits(), sem.stats().capacity), (2, 4));
    assert_eq!(sem.forget_permits(usize::MAX), 2, "only the free ones");
    assert_eq!((sem.available_permits(), sem.stats().capacity), (0, 2));
    assert_eq!(sem.forget_permits(1), 0, "held permits are never taken");
    drop(held);
    assert_eq!((sem.available_permits(), sem.stats().capacity), (2, 2));
    // Gone for good: adding permits later grows from the new capacity.
    sem.add_permits(1);
    assert_eq!((sem.available_permits(), sem.stats().capacity), (3, 3));
}

#[test]
fn forget_permits_leaves_permits_reserved_for_a_waiter_alone() {
    // The FIFO head collects free permits as they come: they are no longer
    // available, so forgetting takes none of them and the waiter still gets
    // its permits.
    let sem = Semaphore::new(3);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(2), &w);
    let mut big = sem.acquire_many(3);
    pending(&mut big, &w);
    assert_eq!(sem.forget_permits(3), 0);
    drop(held);
    let p = granted(&mut big, &w);
    assert_eq!(p.num_permits(), 3);
    drop(p);
    assert_eq!(sem.available_permits(), 3);
}

#[test]
fn forget_permits_works_on_a_closed_semaphore() {
    let sem = Semaphore::new(2);
    sem.close();
    assert_eq!(sem.forget_permits(5), 2);
    assert_eq!((sem.available_permits(), sem.stats().capacity), (0, 0));
}

#[test]
fn a_granted_but_untaken_acquire_gives_its_permits_back_when_dropped() {
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire(), &w);
    let mut a = sem.acquire();
    pending(&mut a, &w);
    let mut b = sem.acquire();
    pending(&mut b, &w);
    drop(held); // granted to `a`, which is never polled again
    drop(a);
    let p = granted(&mut b, &w);
    drop(p);
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn two_waiters_of_one_task_are_independent_and_the_latest_waker_is_woken() {
    let sem = Semaphore::new(1);
    let (old, new, other) = (
        CountingWaker::new(),
        CountingWaker::new(),
        CountingWaker::new(),
    );
    let held = granted(&mut sem.acquire(), &old);
    let mut a = sem.acquire();
    let mut b = sem.acquire();
    pending(&mut a, &old);
    pending(&mut b, &other);
    pending(&mut a, &new); // re-polled with another waker
    drop(held);
    assert_eq!((old.wakes(), new.wakes(), other.wakes()), (0, 1, 0));
    assert_eq!(old.live_clones(), 0, "the replaced waker was dropped");
    let pa = granted(&mut a, &new);
    drop(pa);
    assert_eq!(other.wakes(), 1);
    let _pb = granted(&mut b, &other);
}

/// A waker that calls back into the semaphore when woken and when dropped.
struct Reentrant {
    sem: Arc<Semaphore>,
    calls: AtomicUsize,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // Every entry point that takes the lock.
        let _ = self.sem.try_acquire();
        let _ = self.sem.stats();
        self.sem.add_permits(0);
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waker_that_calls_back_from_wake_cannot_deadlock() {
    watchdog("reentrant waker", || {
        let sem = Arc::new(Semaphore::new(1));
        let hook = Arc::new(Reentrant {
            sem: sem.clone(),
            calls: AtomicUsize::new(0),
        });
        let waker = Waker::from(hook.clone());
        let mut cx = Context::from_waker(&waker);
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut waiting = sem.clone().acquire_owned();
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        drop(held); // grant: wakes under no lock
        assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
        let mut second = sem.clone().acquire_owned();
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        sem.close(); // close: wakes under no lock
        assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
        assert!(matches!(
            Pin::new(&mut second).poll(&mut cx),
            Poll::Ready(Err(_))
        ));
        assert!(matches!(
            Pin::new(&mut waiting).poll(&mut cx),
            Poll::Ready(Ok(_))
        ));
    });
}

/// A waker whose last clone, when dropped, calls back into the semaphore.
struct DropHook {
    sem: Arc<Semaphore>,
    drops: Arc<AtomicUsize>,
}

impl Wake for DropHook {
    fn wake(self: Arc<Self>) {}
}

impl Drop for DropHook {
    fn drop(&mut self) {
        let _ = self.sem.stats();
        let _ = self.sem.try_acquire();
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waker_that_calls_back_from_drop_cannot_deadlock() {
    watchdog("reentrant drop", || {
        let sem = Arc::new(Semaphore::new(1));
        let drops = Arc::new(AtomicUsize::new(0));
        let hooked = || {
            Waker::from(Arc::new(DropHook {
                sem: sem.clone(),
                drops: drops.clone(),
            }))
        };
        let held = sem.clone().try_acquire_owned().unwrap();
        // Replaced by a newer waker: the old one is dropped by the semaphore.
        let mut a = sem.clone().acquire_owned();
        assert!(
            Pin::new(&mut a)
                .poll(&mut Context::from_waker(&hooked()))
                .is_pending()
        );
        assert!(
            Pin::new(&mut a)
                .poll(&mut Context::from_waker(&hooked()))
                .is_pending()
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Cancelled: its waker is dropped by the semaphore.
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        // Granted: the waker is woken (consumed) and dropped.
        let mut b = sem.clone().acquire_owned();
        assert!(
            Pin::new(&mut b)
                .poll(&mut Context::from_waker(&hooked()))
                .is_pending()
        );
        drop(held);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        assert!(matches!(
            Pin::new(&mut b).poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Ok(_))
        ));
    });
}

#[test]
fn close_fails_every_waiter_and_later_releases_still_count() {
    let sem = Semaphore::new(2);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(2), &w);
    let mut waiters: Vec<_> = (0..3).map(|_| sem.acquire()).collect();
    for a in &mut waiters {
        pending(a, &w);
    }
    sem.close();
    assert!(sem.is_closed());
    assert_eq!(w.wakes(), 3);
    for a in &mut waiters {
        assert!(matches!(poll(a, &w), Poll::Ready(Err(e)) if e.is_closed()));
    }
    assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::Closed);
    assert!(matches!(poll(&mut sem.acquire(), &w), Poll::Ready(Err(e)) if e.is_closed()));
    drop(held);
    assert_eq!(sem.available_permits(), 2);
    assert_eq!(sem.stats().waiters, 0);
}

#[test]
fn close_returns_what_the_head_had_been_assigned() {
    let sem = Semaphore::new(2);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire(), &w);
    let mut big = sem.acquire_many(2);
    pending(&mut big, &w); // holds one assigned permit
    sem.close();
    drop(held);
    assert_eq!(sem.available_permits(), 2);
}

#[test]
#[should_panic(expected = "at most")]
fn too_many_permits_in_new_panic() {
    let _ = Semaphore::new(Semaphore::MAX_PERMITS + 1);
}

#[test]
fn add_permits_past_max_panics_with_the_state_unchanged() {
    let sem = Semaphore::new(Semaphore::MAX_PERMITS - 1);
    let before = sem.stats();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sem.add_permits(2)));
    let msg = *caught.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("exceeds MAX_PERMITS"), "{msg}");
    assert_eq!(sem.stats(), before);
    sem.add_permits(1);
    assert_eq!(sem.available_permits(), Semaphore::MAX_PERMITS);
    let huge = sem.try_acquire_many(Semaphore::MAX_PERMITS).unwrap();
    assert_eq!(sem.available_permits(), 0);
    drop(huge);
    assert_eq!(sem.available_permits(), Semaphore::MAX_PERMITS);
}

#[test]
fn add_permits_wakes_the_waiters_it_satisfies() {
    let sem = Semaphore::new(2);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(2), &w);
    let mut a = sem.acquire_many(2);
    let mut b = sem.acquire();
    pending(&mut a, &w);
    pending(&mut b, &w);
    sem.add_permits(2);
    let _pa = granted(&mut a, &w);
    pending(&mut b, &w);
    sem.add_permits(1);
    let _pb = granted(&mut b, &w);
    assert_eq!(sem.stats().capacity, 5);
    drop(held);
    assert_eq!(sem.available_permits(), 2);
}

#[test]
fn a_zero_capacity_semaphore_rejects_acquires_until_permits_are_added() {
    // More than the total capacity is an immediate error (SPEC §6), so a
    // semaphore of capacity 0 is not a gate to wait on.
    let sem = Semaphore::new(0);
    let w = CountingWaker::new();
    assert!(matches!(poll(&mut sem.acquire(), &w), Poll::Ready(Err(e)) if e.exceeds_capacity()));
    sem.add_permits(1);
    let _p = granted(&mut sem.acquire(), &w);
}

#[test]
fn forget_shrinks_the_capacity_and_fails_waiters_that_no_longer_fit() {
    let sem = Semaphore::new(3);
    let w = CountingWaker::new();
    let p = granted(&mut sem.acquire_many(2), &w);
    let mut all = sem.acquire_many(3);
    pending(&mut all, &w);
    p.forget();
    assert_eq!(sem.stats().capacity, 1);
    assert!(matches!(poll(&mut all, &w), Poll::Ready(Err(e)) if e.exceeds_capacity()));
    assert_eq!(sem.available_permits(), 1, "its assigned permit came back");
}

#[test]
fn split_and_merge_keep_the_count() {
    let sem = Semaphore::new(5);
    let mut p = sem.try_acquire_many(5).unwrap();
    let q = p.split(2).unwrap();
    assert!(p.split(4).is_none());
    drop(q);
    assert_eq!(sem.available_permits(), 2);
    p.merge(sem.try_acquire_many(2).unwrap());
    assert_eq!(p.num_permits(), 5);
    drop(p);
    assert_eq!(sem.available_permits(), 5);
}

#[test]
#[should_panic(expected = "different semaphores")]
fn merging_permits_of_two_semaphores_panics() {
    let (a, b) = (Semaphore::new(1), Semaphore::new(1));
    let mut p = a.try_acquire().unwrap();
    p.merge(b.try_acquire().unwrap());
}

#[test]
fn shrinking_waits_for_held_permits_and_never_revokes_them() {
    let sem = Semaphore::new(4);
    let w = CountingWaker::new();
    let three = granted(&mut sem.acquire_many(3), &w);
    sem.set_capacity(2);
    let stats = sem.stats();
    assert_eq!((stats.capacity, stats.available, stats.in_use), (2, 0, 3));
    assert_eq!(three.num_permits(), 3, "held permits stay held");
    let mut waiting = sem.acquire();
    pending(&mut waiting, &w);
    drop(three); // one pays the debt, one goes to the waiter, one is free
    let p = granted(&mut waiting, &w);
    assert_eq!(sem.available_permits(), 1);
    drop(p);
    assert_eq!(sem.stats().capacity, 2);
    assert_eq!(sem.available_permits(), 2);
    sem.set_capacity(5);
    assert_eq!(sem.available_permits(), 5);
}

#[test]
fn shrinking_below_a_waiters_request_fails_it() {
    let sem = Semaphore::new(4);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(2), &w);
    let mut four = sem.acquire_many(4);
    pending(&mut four, &w);
    sem.set_capacity(3);
    assert!(matches!(poll(&mut four, &w), Poll::Ready(Err(e)) if e.exceeds_capacity()));
    drop(held);
    assert_eq!(sem.available_permits(), 3);
}

#[test]
fn stats_count_waiters() {
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let _held = granted(&mut sem.acquire(), &w);
    let mut a = sem.acquire();
    let mut b = sem.acquire_many(1);
    pending(&mut a, &w);
    pending(&mut b, &w);
    assert_eq!(sem.stats().waiters, 2);
    drop(a);
    assert_eq!(sem.stats().waiters, 1);
}

#[test]
#[should_panic(expected = "polled after completion")]
fn polling_an_acquire_after_completion_panics() {
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let mut a = sem.acquire();
    let _p = granted(&mut a, &w);
    let _ = poll(&mut a, &w);
}

/// A queued acquire: not terminated while it waits, terminated once it
/// returned its permit (granted after waiting, or failed), and polling it
/// then panics; dropping it afterwards gives nothing back twice.
#[test]
fn a_queued_acquire_is_terminated_once_it_returned_its_output() {
    use futures::future::FusedFuture;
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let held = sem.try_acquire().unwrap();
    let mut a = sem.acquire();
    let mut b = sem.acquire();
    assert!(!a.is_terminated(), "never polled");
    pending(&mut a, &w);
    pending(&mut b, &w);
    assert!(!a.is_terminated(), "queued");
    drop(held);
    let p = granted(&mut a, &w);
    assert!(a.is_terminated() && !b.is_terminated());
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(&mut a, &w)));
    assert!(again.is_err(), "polled after completion");
    drop(a);
    assert_eq!(sem.stats().waiters, 1);
    sem.close();
    assert!(matches!(poll(&mut b, &w), Poll::Ready(Err(e)) if e.is_closed()));
    assert!(b.is_terminated());
    drop(b);
    drop(p);
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn poll_semaphore_follows_its_wake_contract() {
    let sem = Arc::new(Semaphore::new(1));
    let (w1, w2) = (CountingWaker::new(), CountingWaker::new());
    let mut a = PollSemaphore::new(sem.clone());
    let mut b = PollSemaphore::new(sem.clone());
    let Poll::Ready(Some(permit)) = a.poll_acquire(&mut w1.context()) else {
        panic!()
    };
    assert!(b.poll_acquire(&mut w1.context()).is_pending());
    assert!(b.poll_acquire(&mut w2.context()).is_pending());
    assert_eq!(sem.stats().waiters, 1, "one place in line per handle");
    drop(permit);
    assert_eq!(
        (w1.wakes(), w2.wakes()),
        (0, 1),
        "the latest waker is woken"
    );
    assert!(matches!(
        b.poll_acquire(&mut w2.context()),
        Poll::Ready(Some(_))
    ));
    // Dropping a handle gives its place up.
    let held = sem.clone().try_acquire_owned().unwrap();
    assert!(a.poll_acquire(&mut w1.context()).is_pending());
    drop(a);
    assert_eq!(sem.stats().waiters, 0);
    sem.close();
    drop(held);
    assert!(matches!(
        b.poll_acquire(&mut w2.context()),
        Poll::Ready(None)
    ));
}

#[test]
fn limit_holds_a_permit_while_the_future_runs() {
    let sem = Semaphore::new(1);
    let w = CountingWaker::new();
    let (tracker, polls) = (Tracker::new(), Counter::new());
    let (handle, child) = gated::<u8>(&tracker, &polls);
    let mut first = sem.limit(child);
    pending(&mut first, &w);
    assert_eq!(sem.available_permits(), 0);
    let mut second = sem.limit(std::future::ready(2));
    pending(&mut second, &w);
    handle.send(1).unwrap();
    assert!(matches!(poll(&mut first, &w), Poll::Ready(Ok(Some(1)))));
    assert_eq!(poll(&mut second, &w), Poll::Ready(Ok(2)));
    assert_eq!(sem.available_permits(), 1);
    sem.close();
    assert!(matches!(
        poll(&mut sem.limit(std::future::ready(3)), &w),
        Poll::Ready(Err(_))
    ));
}

matrix! {
    /// Forgetting permits while calls run: the limit shrinks for good, and
    /// nobody is stranded (every call still runs).
    async fn forget_permits_shrinks_the_limit_of_running_calls() {
        let sem = Semaphore::new(4);
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let (running, peak, sem) = (&running, &peak, &sem);
        assert_eq!(sem.forget_permits(2), 2); // at most 2 at a time now
        let calls = (0..8).map(|i| sem.limit(async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            i
        }));
        let out = awaitkit::gather(calls).await;
        assert_eq!(out, (0..8).map(Ok).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!((sem.available_permits(), sem.stats().capacity), (2, 2));
    }

    async fn ten_calls_at_most_three_at_a_time() {
        let sem = Semaphore::new(3);
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let (running, peak) = (&running, &peak);
        let calls = (0..10).map(|i| sem.limit(async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            yield_now().await;
            yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            i
        }));
        let out = awaitkit::gather(calls).await;
        assert_eq!(out, (0..10).map(Ok).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3, "the limit was reached, never passed");
        assert_eq!(sem.available_permits(), 3);
    }

    /// Issue 14, item 8, awaited on every executor.
    async fn a_closed_semaphore_fails_awaited_zero_permit_acquires() {
        let sem = Arc::new(Semaphore::new(0));
        assert_eq!(sem.acquire_many(0).await.unwrap().num_permits(), 0);
        sem.close();
        assert!(sem.acquire_many(0).await.unwrap_err().is_closed());
        assert!(sem.clone().acquire_many_owned(0).await.unwrap_err().is_closed());
        let mut handle = PollSemaphore::new(sem.clone());
        let out = futures::future::poll_fn(|cx| handle.poll_acquire_many(cx, 0)).await;
        assert!(out.is_none(), "Ready(None) once closed");
        assert!(sem.acquire_timeout(Duration::from_secs(5)).await.unwrap().is_err());
    }

    async fn acquire_timeout_leaves_the_queue() {
        let sem = Semaphore::new(1);
        let held = sem.acquire().await.unwrap();
        let late = sem.acquire_timeout(Duration::from_millis(5)).await;
        assert!(late.is_err());
        assert_eq!(sem.stats().waiters, 0);
        drop(held);
        assert!(sem.acquire_timeout(Duration::from_secs(5)).await.unwrap().is_ok());
    }

    async fn permits_released_from_another_thread_wake_the_waiter() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(held);
        });
        let p = sem.clone().acquire_owned().await.unwrap();
        assert_eq!(p.num_permits(), 1);
        t.join().unwrap();
    }

    async fn stress_sixteen_threads_with_random_cancellation_returns_every_permit() {
        let sem = Arc::new(Semaphore::new(4));
        let held = Arc::new(AtomicUsize::new(0));
        let violations = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let (sem, held, violations) = (sem.clone(), held.clone(), violations.clone());
                std::thread::spawn(move || {
                    let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    futures::executor::block_on(async {
                        for _ in 0..300 {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let n = (rng % 3 + 1) as usize;
                            // Random cancellation: a tiny timeout.
                            let limit = Duration::from_micros(rng % 200);
                            if let Ok(Ok(permit)) = sem.acquire_timeout(limit).await {
                                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                                if now > 4 {
                                    violations.fetch_add(1, Ordering::SeqCst);
                                }
                                std::hint::spin_loop();
                                held.fetch_sub(1, Ordering::SeqCst);
                                drop(permit);
                            }
                            if let Ok(Ok(permit)) =
                                awaitkit::timeout(limit, sem.acquire_many(n)).await
                            {
                                let now = held.fetch_add(n, Ordering::SeqCst) + n;
                                if now > 4 {
                                    violations.fetch_add(1, Ordering::SeqCst);
                                }
                                held.fetch_sub(n, Ordering::SeqCst);
                                drop(permit);
                            }
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::SeqCst), 0, "more than capacity held at once");
        let stats = sem.stats();
        assert_eq!((stats.available, stats.waiters, stats.capacity), (4, 0, 4));
    }
}

#[test]
fn waiters_woken_from_many_threads_all_get_through() {
    watchdog("many threads", || {
        let sem = Arc::new(Semaphore::new(2));
        let total = Arc::new(Mutex::new(0usize));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (sem, total) = (sem.clone(), total.clone());
                std::thread::spawn(move || {
                    futures::executor::block_on(async {
                        for _ in 0..200 {
                            let _p = sem.acquire().await.unwrap();
                            *total.lock().unwrap() += 1;
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*total.lock().unwrap(), 3200);
        assert_eq!(sem.available_permits(), 2);
    });
}

/// Granted waiters learn of their grant without the lock (from the grant
/// position); a waiter that failed before the position moved past it must
/// still see its failure.
#[test]
fn a_failed_waiter_is_never_mistaken_for_a_granted_one() {
    let sem = Semaphore::new(4);
    let w = CountingWaker::new();
    let held = granted(&mut sem.acquire_many(4), &w);
    let mut first = sem.acquire();
    let mut too_big = sem.acquire_many(4);
    let mut last = sem.acquire();
    pending(&mut first, &w);
    pending(&mut too_big, &w);
    pending(&mut last, &w);
    sem.set_capacity(3); // `too_big` can never be granted now
    drop(held); // grants `first` and `last`, past `too_big`
    let _a = granted(&mut first, &w);
    let _b = granted(&mut last, &w);
    assert!(matches!(poll(&mut too_big, &w), Poll::Ready(Err(e)) if e.exceeds_capacity()));
    // Afterwards grants are seen without the lock again.
    drop((_a, _b));
    let held = granted(&mut sem.acquire_many(3), &w);
    let mut next = sem.acquire();
    pending(&mut next, &w);
    drop(held);
    let _c = granted(&mut next, &w);
}
