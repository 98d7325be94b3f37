//! Review (review-sem): adversarial tests of the semaphore's leaner contended
//! path — the single-grant release, the packed slot/done word, the free list
//! threaded through freed slots (ABA on reused slots), cancellation racing a
//! grant from other threads, and wakers that re-enter the semaphore.
//! Every scenario ends by checking the exact permit accounting.

#[macro_use]
mod common;

use awaitkit::Semaphore;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

fn poll_w<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

fn idle(sem: &Semaphore, cap: usize) {
    let s = sem.stats();
    assert_eq!(
        (s.capacity, s.available, s.in_use, s.waiters),
        (cap, cap, 0, 0),
        "permits not accounted for"
    );
    drop(sem.try_acquire_many(cap).expect("fast path works again"));
}

#[derive(Default)]
struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
fn counting() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count::default());
    (c.clone(), Waker::from(c))
}

guarded! {
    /// Passes: a granted-but-never-polled acquire whose slot is reused by a
    /// newer waiter (free list, LIFO reuse); the stale owner's poll sees its
    /// grant and the stale owner's drop does not touch the newcomer's node.
    fn stale_owner_after_its_slot_is_reused() {
        let sem = Semaphore::new(1);
        let (_c, w) = counting();
        let held = sem.try_acquire().unwrap();
        let mut a = sem.acquire();
        assert!(poll_w(&mut a, &w).is_pending());
        drop(held); // single grant: a's slot freed at once
        let (cb, wb) = counting();
        let mut b = sem.acquire();
        assert!(poll_w(&mut b, &wb).is_pending()); // reuses a's slot
        assert_eq!(sem.stats().waiters, 1);
        // a polled: granted (ticket below granted_below).
        let pa = match poll_w(&mut a, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(a);
        assert_eq!(sem.stats().waiters, 1, "the stale drop must not unlink b");
        drop(pa);
        assert_eq!(cb.0.load(Ordering::SeqCst), 1);
        let pb = match poll_w(&mut b, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pb);
        drop(b);
        idle(&sem, 1);
    }

    /// Passes: the same with the stale owner dropped without polling (the
    /// grant comes back and goes to the newcomer in the reused slot), and with
    /// a close in between (failed_live forces the locked check).
    fn stale_owner_dropped_unpolled_after_reuse_and_close() {
        for close in [false, true] {
            let sem = Semaphore::new(1);
            let (_c, w) = counting();
            let held = sem.try_acquire().unwrap();
            let mut a = sem.acquire();
            assert!(poll_w(&mut a, &w).is_pending());
            drop(held);
            let (cb, wb) = counting();
            let mut b = sem.acquire();
            assert!(poll_w(&mut b, &wb).is_pending());
            let mut c = sem.acquire();
            if close {
                sem.close();
                // a granted before the close: still Ok through the locked path.
                let pa = match poll_w(&mut a, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
                drop(pa);
                assert!(matches!(poll_w(&mut b, &wb), Poll::Ready(Err(e)) if e.is_closed()));
                assert!(matches!(poll_w(&mut c, &wb), Poll::Ready(Err(e)) if e.is_closed()));
                drop((a, b, c));
                let s = sem.stats();
                assert_eq!((s.available, s.in_use, s.waiters), (1, 0, 0));
            } else {
                drop(a); // granted, never taken: goes to b
                assert_eq!(cb.0.load(Ordering::SeqCst), 1);
                assert!(poll_w(&mut c, &wb).is_pending());
                let pb = match poll_w(&mut b, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
                drop(pb);
                let pc = match poll_w(&mut c, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
                drop(pc);
                drop((b, c));
                idle(&sem, 1);
            }
        }
    }

    /// Passes: a forgotten (mem::forget) queued acquire leaks only its own
    /// permit; its slot is never reused while it sits in line, later waiters
    /// stay FIFO behind it and are served by add_permits.
    fn forgotten_queued_acquire() {
        let sem = Semaphore::new(1);
        let (_c, w) = counting();
        let held = sem.try_acquire().unwrap();
        let mut a = sem.acquire();
        assert!(poll_w(&mut a, &w).is_pending());
        std::mem::forget(a);
        let mut b = sem.acquire();
        assert!(poll_w(&mut b, &w).is_pending());
        drop(held); // goes to the forgotten a
        assert!(poll_w(&mut b, &w).is_pending());
        sem.add_permits(1);
        let pb = match poll_w(&mut b, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pb);
        drop(b);
        let s = sem.stats();
        assert_eq!((s.capacity, s.available, s.in_use, s.waiters), (2, 1, 1, 0));
    }

    /// Passes: FIFO across the single-grant path's three cases (n < missing,
    /// n == missing, n > missing) with acquire_many heads, a shrink debt,
    /// forget_permits and a cancel of a partially assigned head.
    fn fifo_with_many_partial_debt_and_cancel() {
        let sem = Semaphore::new(4);
        let (_c, w) = counting();
        let mut held: Vec<_> = (0..4).map(|_| sem.try_acquire().unwrap()).collect();
        let mut big = sem.acquire_many(3);
        let mut one = sem.acquire();
        let mut two = sem.acquire_many(2);
        assert!(poll_w(&mut big, &w).is_pending());
        assert!(poll_w(&mut one, &w).is_pending());
        assert!(poll_w(&mut two, &w).is_pending());
        drop(held.pop()); // n < missing: big has 1
        assert!(sem.try_acquire().is_err());
        assert!(poll_w(&mut one, &w).is_pending(), "no barging past big");
        drop(held.pop()); // big has 2
        drop(big); // cancel: its 2 go on: one granted, two gets 1
        let p1 = match poll_w(&mut one, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        assert!(poll_w(&mut two, &w).is_pending());
        sem.set_capacity(3); // debt 1
        drop(held.pop()); // pays the debt, two still at 1
        assert!(poll_w(&mut two, &w).is_pending());
        assert_eq!(sem.forget_permits(5), 0, "nothing free while someone waits");
        drop(held.pop()); // n == missing: two granted
        let p2 = match poll_w(&mut two, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        assert!(held.is_empty());
        drop(p1);
        drop(p2);
        drop((one, two));
        idle(&sem, 3);
    }
}

/// A waker that, from `wake`, re-enters the semaphore: takes a permit with
/// try_acquire and drops it (a release from inside wake), and queues a new
/// acquire that it drops (a slot pushed and freed from inside the wake).
struct Reenter {
    sem: Arc<Semaphore>,
    woken: AtomicUsize,
}
impl Wake for Reenter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        let _ = self.sem.try_acquire();
        let mut a = self.sem.clone().acquire_owned();
        let _ = poll_w(&mut a, Waker::noop());
        drop(a);
    }
}

guarded! {
    /// Passes: wakers that call back into the semaphore from `wake` during
    /// the single-grant release (no lock held, no deadlock, no lost permit).
    fn reentrant_waker_on_single_grant() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let r = Arc::new(Reenter { sem: sem.clone(), woken: AtomicUsize::new(0) });
        let w = Waker::from(r.clone());
        let mut a = sem.clone().acquire_owned();
        assert!(poll_w(&mut a, &w).is_pending());
        let (cb, wb) = counting();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_w(&mut b, &wb).is_pending());
        drop(held);
        assert_eq!(r.woken.load(Ordering::SeqCst), 1);
        let pa = match poll_w(&mut a, &w) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pa);
        assert_eq!(cb.0.load(Ordering::SeqCst), 1);
        let pb = match poll_w(&mut b, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pb);
        drop((a, b));
        idle(&sem, 1);
    }
}

/// A waker whose `wake` panics.
struct Boom(AtomicBool);
impl Wake for Boom {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
        panic!("review: waker panics in wake");
    }
}

guarded! {
    /// Passes: a permit dropped by a panicking task (unwinding) completes a
    /// head whose waker panics: the second panic is contained (no abort), the
    /// waiter holds the permit and the next one is served.
    fn single_grant_during_unwind_with_panicking_waker() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let boom = Arc::new(Boom(AtomicBool::new(false)));
        let wa = Waker::from(boom.clone());
        let mut a = sem.clone().acquire_owned();
        assert!(poll_w(&mut a, &wa).is_pending());
        let (cb, wb) = counting();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_w(&mut b, &wb).is_pending());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = held;
            panic!("review: task panics holding a permit");
        }));
        assert!(r.is_err());
        assert!(boom.0.load(Ordering::SeqCst), "the head was woken");
        let pa = match poll_w(&mut a, &wa) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pa);
        assert_eq!(cb.0.load(Ordering::SeqCst), 1);
        drop(b);
        drop(a);
        idle(&sem, 1);
    }
}

/// Threads: owners that cancel at random while other threads release (the
/// single-grant path on another thread) and newcomers reuse freed slots.
/// At most `cap` holders at once, and exact accounting at the end.
#[test]
fn threads_cancel_vs_grant_vs_reuse() {
    common::watchdog("threads_cancel_vs_grant_vs_reuse", || {
        for cap in [1usize, 2, 3] {
            let sem = Arc::new(Semaphore::new(cap));
            let holders = Arc::new(AtomicUsize::new(0));
            let max = Arc::new(AtomicUsize::new(0));
            let queued_grants = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let sem = sem.clone();
                    let holders = holders.clone();
                    let max = max.clone();
                    let queued_grants = queued_grants.clone();
                    std::thread::spawn(move || {
                        let mut rng = 0x9E3779B97F4A7C15u64 ^ (t as u64 * 7919 + cap as u64);
                        let mut next = || {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            rng
                        };
                        for _ in 0..5_000 {
                            let n = 1 + (next() % cap as u64) as usize;
                            let mut a = sem.acquire_many(n);
                            let r = next();
                            let got = match poll_w(&mut a, Waker::noop()) {
                                Poll::Ready(p) => Some(p.unwrap()),
                                Poll::Pending if r % 3 == 0 => None, // cancel at once
                                Poll::Pending => {
                                    // spin-poll a while (noop waker), then cancel
                                    // (spinning, not yielding: on a machine busy
                                    // with other processes every yield costs a
                                    // time slice, minutes in all)
                                    let mut got = None;
                                    for _ in 0..(r % 400) {
                                        if let Poll::Ready(p) = poll_w(&mut a, Waker::noop()) {
                                            queued_grants.fetch_add(1, Ordering::Relaxed);
                                            got = Some(p.unwrap());
                                            break;
                                        }
                                        std::hint::spin_loop();
                                    }
                                    got
                                }
                            };
                            drop(a);
                            if let Some(p) = got {
                                let h = holders.fetch_add(n, Ordering::SeqCst) + n;
                                max.fetch_max(h, Ordering::SeqCst);
                                assert!(h <= cap, "over-granted: {h} > {cap}");
                                for _ in 0..(r % 4) * 16 {
                                    std::hint::spin_loop();
                                }
                                holders.fetch_sub(n, Ordering::SeqCst);
                                drop(p);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            idle(&sem, cap);
            assert!(
                queued_grants.load(Ordering::Relaxed) > 0,
                "the contended path was exercised"
            );
            eprintln!(
                "cap {cap}: {} grants after queueing",
                queued_grants.load(Ordering::Relaxed)
            );
        }
    })
}

/// Threads: releases racing waiters that block (parking waker); every
/// acquire must complete (no lost wake-up on the single-grant path) and
/// the grants must be FIFO per arrival as observed under a ticket lock.
#[test]
fn threads_blocking_waiters_all_complete() {
    common::watchdog("threads_blocking_waiters_all_complete", || {
        let sem = Arc::new(Semaphore::new(1));
        let done = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sem = sem.clone();
                let done = done.clone();
                let order = order.clone();
                std::thread::spawn(move || {
                    for k in 0..5_000 {
                        let p = futures::executor::block_on(sem.acquire()).unwrap();
                        if k % 1000 == 0 {
                            order.lock().unwrap().push(t);
                        }
                        drop(p);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 20_000);
        idle(&sem, 1);
    })
}

guarded! {
    /// Passes: a large line (200k waiters) with every third cancelled, the
    /// freed slots reused (LIFO free list) by 60k newcomers at the tail:
    /// permits added in chunks go to exactly the oldest survivors, in order.
    fn large_line_with_holes_and_reused_slots_stays_fifo() {
        const N: usize = 200_000;
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let w = Waker::noop();
        let mut line: Vec<Option<awaitkit::AcquireOwned>> = (0..N)
            .map(|_| {
                let mut a = sem.clone().acquire_owned();
                assert!(poll_w(&mut a, w).is_pending());
                Some(a)
            })
            .collect();
        for k in (0..N).step_by(3) {
            line[k] = None; // cancel: slot freed
        }
        let mut survivors: Vec<awaitkit::AcquireOwned> = line.into_iter().flatten().collect();
        for _ in 0..60_000 {
            let mut a = sem.clone().acquire_owned();
            assert!(poll_w(&mut a, w).is_pending());
            survivors.push(a); // reuses freed slots, but joins at the tail
        }
        assert_eq!(sem.stats().waiters, survivors.len());
        let total = survivors.len();
        let mut granted = 0;
        let mut permits = Vec::new();
        for chunk in [1usize, 7, 65_536, 100_000, total - 1 - 7 - 65_536 - 100_000] {
            sem.add_permits(chunk);
            granted += chunk;
            for (k, a) in survivors.iter_mut().enumerate().skip(granted - chunk) {
                if k < granted {
                    match poll_w(a, w) {
                        Poll::Ready(Ok(p)) => permits.push(p),
                        o => panic!("waiter {k} of {total} not granted after {granted} permits: {o:?}"),
                    }
                } else {
                    // Only look at a few beyond the boundary (polling all is slow).
                    if k > granted + 3 { break; }
                    assert!(poll_w(a, w).is_pending(), "waiter {k} granted before earlier ones");
                }
            }
        }
        assert_eq!(granted, total);
        assert_eq!(sem.stats().waiters, 0);
        drop(permits);
        drop(survivors);
        drop(held);
        idle(&sem, total + 1);
    }

    /// Passes: a waker that, from `wake` on the single-grant release, drops
    /// the very acquire it belongs to (granted, never taken): the permit is
    /// handed on from inside the wake to the next waiter (a nested single
    /// grant), which is woken; nothing lost, no deadlock.
    fn waker_drops_its_own_granted_acquire_from_wake() {
        struct DropOnWake(Mutex<Option<awaitkit::AcquireOwned>>, AtomicUsize);
        impl Wake for DropOnWake {
            fn wake(self: Arc<Self>) {
                self.1.fetch_add(1, Ordering::SeqCst);
                let a = self.0.lock().unwrap().take();
                drop(a);
            }
        }
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let d = Arc::new(DropOnWake(Mutex::new(None), AtomicUsize::new(0)));
        let wd = Waker::from(d.clone());
        let mut a = sem.clone().acquire_owned();
        assert!(poll_w(&mut a, &wd).is_pending());
        *d.0.lock().unwrap() = Some(a);
        let (cb, wb) = counting();
        let mut b = sem.clone().acquire_owned();
        assert!(poll_w(&mut b, &wb).is_pending());
        drop(held);
        assert_eq!(d.1.load(Ordering::SeqCst), 1);
        assert_eq!(cb.0.load(Ordering::SeqCst), 1, "b woken by the nested grant");
        let pb = match poll_w(&mut b, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
        drop(pb);
        drop(b);
        idle(&sem, 1);
    }
}

/// A waker whose `wake` re-enters the semaphore (takes and drops a permit,
/// queues and cancels an acquire) and then panics.
struct ReenterThenBoom(Arc<Semaphore>, AtomicUsize);
impl Wake for ReenterThenBoom {
    fn wake(self: Arc<Self>) {
        self.1.fetch_add(1, Ordering::SeqCst);
        drop(self.0.try_acquire());
        let mut a = self.0.clone().acquire_owned();
        let _ = poll_w(&mut a, Waker::noop());
        drop(a);
        panic!("review: re-entrant waker panics");
    }
}

guarded! {
    /// Passes: the single-grant wake of a re-entrant, panicking waker, both
    /// from a plain drop (the panic propagates) and from a drop during an
    /// unwind (contained, no abort); the next waiter is served each time.
    fn reentrant_panicking_waker_plain_and_during_unwind() {
        for unwinding in [false, true] {
            let sem = Arc::new(Semaphore::new(1));
            let held = sem.clone().try_acquire_owned().unwrap();
            let r = Arc::new(ReenterThenBoom(sem.clone(), AtomicUsize::new(0)));
            let wr = Waker::from(r.clone());
            let mut a = sem.clone().acquire_owned();
            assert!(poll_w(&mut a, &wr).is_pending());
            let (cb, wb) = counting();
            let mut b = sem.clone().acquire_owned();
            assert!(poll_w(&mut b, &wb).is_pending());
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                if unwinding {
                    let _held = held;
                    panic!("review: task panics holding a permit");
                } else {
                    drop(held);
                }
            }));
            let msg = common::panic_message(&*out.unwrap_err());
            if unwinding {
                assert!(msg.contains("task panics"), "{msg}");
            } else {
                assert!(msg.contains("re-entrant waker panics"), "{msg}");
            }
            assert_eq!(r.1.load(Ordering::SeqCst), 1);
            let pa = match poll_w(&mut a, &wr) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
            assert_eq!(cb.0.load(Ordering::SeqCst), 0);
            drop(pa);
            assert_eq!(cb.0.load(Ordering::SeqCst), 1);
            let pb = match poll_w(&mut b, &wb) { Poll::Ready(Ok(p)) => p, o => panic!("{o:?}") };
            drop(pb);
            drop((a, b));
            idle(&sem, 1);
        }
    }
}
