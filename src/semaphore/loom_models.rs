//! Loom models of the semaphore: the lock-free fast path against the queue's
//! lock, grants, cancellation and close — with two or more parties acting
//! while the owner polls or cancels (grant vs cancel vs close on three
//! threads; two releases vs one re-polling waiter; a single grant whose
//! freed slot a racing waiter reuses).
//!
//! Run with:
//! `RUSTFLAGS="--cfg awaitkit_loom" cargo test --release --lib semaphore::loom_models -- --test-threads=1`
//!
//! The driver parks without spurious wake-ups, so a lost wake-up is a
//! deadlock loom reports.

use crate::Semaphore;
use crate::engine::loom_models::block_on;
use loom::thread;
// The semaphore is shared through std's `Arc` (owned permits need it); the
// threads are joined in every model, so loom need not track it.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Every permit is back and nobody is queued.
fn assert_idle(sem: &Semaphore, capacity: usize) {
    let stats = sem.stats();
    assert_eq!(
        (stats.available, stats.waiters, stats.capacity),
        (capacity, 0, capacity)
    );
    // The fast path works again (the `SLOW` flag was cleared).
    drop(
        sem.try_acquire_many(capacity)
            .expect("fast path after idle"),
    );
}

/// A model where the semaphore's one permit is held, released on another
/// thread while `waiter` runs on this one; every permit must be back after.
fn race_a_release(waiter: impl Fn(&Semaphore) + Sync + Send + 'static) {
    model(move || {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let releaser = thread::spawn(move || drop(held));
        waiter(&sem);
        releaser.join().unwrap();
        assert_idle(&sem, 1);
    });
}

/// Two threads and the main thread contend for one permit.
#[test]
fn basic_acquire_release() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let sem = sem.clone();
                thread::spawn(move || {
                    let permit = block_on(sem.acquire()).unwrap();
                    drop(permit);
                })
            })
            .collect();
        drop(block_on(sem.acquire()).unwrap());
        for t in threads {
            t.join().unwrap();
        }
        assert_idle(&sem, 1);
    });
}

/// A release on another thread races the waiter's enqueue.
#[test]
fn release_during_acquire() {
    race_a_release(|sem| {
        let permit = block_on(sem.acquire()).unwrap();
        assert_eq!(permit.num_permits(), 1);
    });
}

/// `acquire_many(2)` collects its permits from two releasing threads.
#[test]
fn batch_acquire_under_preemption() {
    model(|| {
        let sem = Arc::new(Semaphore::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let held = sem.clone().try_acquire_owned().unwrap();
                thread::spawn(move || drop(held))
            })
            .collect();
        let permit = block_on(sem.acquire_many(2)).unwrap();
        assert_eq!(permit.num_permits(), 2);
        drop(permit);
        for t in threads {
            t.join().unwrap();
        }
        assert_idle(&sem, 2);
    });
}

/// A waiter polled once and dropped while a release comes in: the permit is
/// never lost, whichever got there first.
#[test]
fn cancel_after_one_poll() {
    race_a_release(|sem| {
        let mut acquire = sem.acquire();
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut acquire).poll(&mut cx);
        // Dropped here: granted or queued, the permit goes back.
    });
}

/// `close` on another thread fails a waiting acquire (and wakes it).
#[test]
fn close_wakes_a_waiter() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.try_acquire().unwrap();
        let s = sem.clone();
        let closer = thread::spawn(move || s.close());
        let out = block_on(sem.acquire());
        assert!(out.unwrap_err().is_closed());
        closer.join().unwrap();
        drop(held);
        assert_eq!(sem.available_permits(), 1);
    });
}

/// A closer and a releaser race a waiter: it gets the permit or fails,
/// never hangs, and the permit ends up back.
#[test]
fn concurrent_close() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let mut held = Some(sem.clone().try_acquire_owned().unwrap());
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let s = sem.clone();
                let held = held.take();
                thread::spawn(move || {
                    if i == 0 {
                        s.close();
                    } else {
                        drop(held);
                    }
                })
            })
            .collect();
        if let Ok(permit) = block_on(sem.acquire()) {
            drop(permit);
        }
        for t in threads {
            t.join().unwrap();
        }
        let stats = sem.stats();
        assert_eq!((stats.available, stats.waiters), (1, 0));
    });
}

/// Releases, additions and non-waiting acquires from three threads keep
/// the count exact.
#[test]
fn concurrent_permit_updates() {
    model(|| {
        let sem = Arc::new(Semaphore::new(2));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let s = sem.clone();
                thread::spawn(move || {
                    if i == 0 {
                        if let Ok(p) = s.try_acquire() {
                            drop(p);
                        }
                    } else {
                        s.add_permits(1);
                    }
                })
            })
            .collect();
        let permit = block_on(sem.acquire_many(2)).unwrap();
        drop(permit);
        for t in threads {
            t.join().unwrap();
        }
        assert_idle(&sem, 3);
    });
}

/// A waker that is woken while its owner re-polls with a new waker: the
/// owner is never left without a wake-up (the most recent waker wins).
#[test]
fn grant_while_re_polling() {
    race_a_release(|sem| {
        let mut acquire = sem.acquire();
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(p) = Pin::new(&mut acquire).poll(&mut cx) {
            drop(p.unwrap());
        } else {
            // Re-poll through the real driver, whose waker replaces the no-op.
            drop(block_on(acquire).unwrap());
        }
    });
}

/// A waker that records that it was woken (a loom atomic, so a wake that
/// is not ordered before the check is a failure loom finds).
struct Flag(loom::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, loom::sync::atomic::Ordering::Release);
    }
}

fn flag() -> (Arc<Flag>, Waker) {
    let flag = Arc::new(Flag(loom::sync::atomic::AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    (flag, waker)
}

fn woken(flag: &Flag) -> bool {
    flag.0.load(loom::sync::atomic::Ordering::Acquire)
}

/// Three parties at once: a release (a grant) on one thread, a close on
/// another, and the owner cancelling a queued acquire that holds part of its
/// permits. A second waiter queued behind it must end granted or failed and
/// woken either way, and every permit must come back.
#[test]
fn grant_cancel_and_close_on_three_threads() {
    model(|| {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut big = sem.clone().acquire_many_owned(2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut big).poll(&mut cx).is_pending()); // assigned 1
        let (next_flag, next_waker) = flag();
        let mut next = sem.clone().acquire_owned();
        assert!(
            Pin::new(&mut next)
                .poll(&mut Context::from_waker(&next_waker))
                .is_pending()
        );
        let releaser = thread::spawn(move || drop(held));
        let s = sem.clone();
        let closer = thread::spawn(move || s.close());
        drop(big); // the cancel, racing both
        releaser.join().unwrap();
        closer.join().unwrap();
        // `next` was granted (before the close) or failed (by it): it was
        // woken either way, and it completes now.
        assert!(woken(&next_flag), "the next waiter was never woken");
        match Pin::new(&mut next).poll(&mut Context::from_waker(&next_waker)) {
            Poll::Ready(Ok(permit)) => drop(permit),
            Poll::Ready(Err(e)) => assert!(e.is_closed()),
            Poll::Pending => panic!("woken but still pending"),
        }
        drop(next);
        let stats = sem.stats();
        assert_eq!((stats.available, stats.in_use, stats.waiters), (2, 0, 0));
    });
}

/// Two releases on two threads race one waiter that re-polls with a new
/// waker meanwhile (the clone is made outside the lock, and the waiter looks
/// again after it): whichever waker is registered last is woken, and the
/// second released permit is free afterwards.
#[test]
fn two_releases_race_one_re_polling_waiter() {
    model(|| {
        let sem = Arc::new(Semaphore::new(2));
        let first = sem.clone().try_acquire_owned().unwrap();
        let second = sem.clone().try_acquire_owned().unwrap();
        let (old_flag, old_waker) = flag();
        let mut acquire = sem.clone().acquire_owned();
        let pending = Pin::new(&mut acquire)
            .poll(&mut Context::from_waker(&old_waker))
            .is_pending();
        assert!(pending);
        let releasers: Vec<_> = [first, second]
            .into_iter()
            .map(|p| thread::spawn(move || drop(p)))
            .collect();
        let (new_flag, new_waker) = flag();
        let repoll = Pin::new(&mut acquire).poll(&mut Context::from_waker(&new_waker));
        for t in releasers {
            t.join().unwrap();
        }
        let permit = match repoll {
            Poll::Ready(out) => out.unwrap(),
            Poll::Pending => {
                // Granted after the re-poll registered its waker: that one
                // is woken (the old one may be too, if the grant came first).
                assert!(woken(&new_flag), "the registered waker was never woken");
                let Poll::Ready(out) =
                    Pin::new(&mut acquire).poll(&mut Context::from_waker(&new_waker))
                else {
                    panic!("woken but still pending")
                };
                out.unwrap()
            }
        };
        let _ = woken(&old_flag);
        assert_eq!(sem.available_permits(), 1);
        drop(permit);
        drop(acquire);
        assert_idle(&sem, 2);
    });
}

/// The same three parties on three threads of their own while the owner
/// waits for a permit through the parking driver (a lost wake is a
/// deadlock): it gets the permit or fails with `Closed`, never hangs.
#[test]
fn owner_waits_while_grant_cancel_and_close_race() {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2); // four threads: keep it quick
    }
    builder.check(|| {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut big = sem.clone().acquire_many_owned(2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut big).poll(&mut cx).is_pending()); // assigned 1
        let releaser = thread::spawn(move || drop(held));
        let canceller = thread::spawn(move || drop(big));
        let s = sem.clone();
        let closer = thread::spawn(move || s.close());
        match block_on(sem.clone().acquire_owned()) {
            Ok(permit) => drop(permit),
            Err(e) => assert!(e.is_closed()),
        }
        for t in [releaser, canceller, closer] {
            t.join().unwrap();
        }
        let stats = sem.stats();
        assert_eq!((stats.available, stats.in_use, stats.waiters), (2, 0, 0));
    });
}

/// The single-grant release (one permit completing the queue's head) frees
/// the head's slot at once; a second party queueing on another thread may
/// reuse that slot (with a newer ticket) before the granted owner looks
/// again. The owner still sees its grant, the newcomer waits behind it and
/// is granted by the owner's release, and nothing is lost — whatever the
/// order of the release, the newcomer's enqueue and the owner's re-poll
/// (which registers a new waker).
#[test]
fn a_single_grant_frees_a_slot_a_racing_waiter_reuses() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut owner = sem.clone().acquire_owned();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut owner).poll(&mut cx).is_pending()); // queued first
        let releaser = thread::spawn(move || drop(held));
        let s = sem.clone();
        let newcomer = thread::spawn(move || drop(block_on(s.acquire()).unwrap()));
        let permit = block_on(owner).unwrap();
        drop(permit); // grants the newcomer if it queued meanwhile
        releaser.join().unwrap();
        newcomer.join().unwrap();
        assert_idle(&sem, 1);
    });
}

// --- Review models (review-sem): cancel vs single-grant vs slot reuse ---

/// Review: the owner of the queue's head is dropped (cancel) on this thread
/// while a release on another thread completes it through the single-grant
/// path (freeing its slot), and a third party on a third thread queues up
/// and may reuse that very slot before the owner's cancel looks at it. The
/// cancel must see "granted, never taken" (ticket mismatch or vacant slot)
/// and hand the permit to the newcomer, which must complete; nothing lost.
#[test]
fn review_cancel_vs_single_grant_vs_slot_reuse() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut owner = sem.clone().acquire_owned();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut owner).poll(&mut cx).is_pending()); // queued first
        let releaser = thread::spawn(move || drop(held));
        let s = sem.clone();
        let newcomer = thread::spawn(move || drop(block_on(s.acquire()).unwrap()));
        drop(owner); // cancel, racing the grant and the newcomer's enqueue
        releaser.join().unwrap();
        newcomer.join().unwrap();
        assert_idle(&sem, 1);
    });
}

/// Review: an `acquire_many(2)` head holding one assigned permit; a release
/// of one permit on one thread completes it (single-grant path, n ==
/// missing) while its owner cancels on this thread and a third party waits
/// for both permits through the parking driver.
#[test]
fn review_partial_head_cancel_vs_single_grant_vs_big_waiter() {
    model(|| {
        let sem = Arc::new(Semaphore::new(2));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut big = sem.clone().acquire_many_owned(2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut big).poll(&mut cx).is_pending()); // assigned 1
        let releaser = thread::spawn(move || drop(held));
        let s = sem.clone();
        let other = thread::spawn(move || drop(block_on(s.acquire_many(2)).unwrap()));
        drop(big);
        releaser.join().unwrap();
        other.join().unwrap();
        assert_idle(&sem, 2);
    });
}

/// Review: the owner's lock-free grant check (now inlined in `poll`) racing
/// a single-grant release on one thread and a close on another, with a
/// second waiter queued behind it (so `failed_live` may be raised while the
/// owner reads `granted_below`). The owner gets the permit or fails closed;
/// the second waiter fails closed or is granted; every permit comes back.
#[test]
fn review_inlined_grant_check_vs_single_grant_vs_close() {
    model(|| {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut a = sem.clone().acquire_owned();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        let mut b = sem.clone().acquire_owned();
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        let releaser = thread::spawn(move || drop(held));
        let s = sem.clone();
        let closer = thread::spawn(move || s.close());
        let first = Pin::new(&mut a).poll(&mut cx);
        releaser.join().unwrap();
        closer.join().unwrap();
        let out_a = match first {
            Poll::Ready(out) => out,
            Poll::Pending => match Pin::new(&mut a).poll(&mut cx) {
                Poll::Ready(out) => out,
                Poll::Pending => panic!("a still pending after the release and the close"),
            },
        };
        let a_ok = out_a.is_ok();
        drop(out_a);
        drop(a);
        match Pin::new(&mut b).poll(&mut cx) {
            Poll::Ready(Ok(p)) => {
                assert!(!a_ok, "both a and b granted from one permit");
                drop(p)
            }
            Poll::Ready(Err(e)) => assert!(e.is_closed()),
            Poll::Pending => panic!("b still pending after the close"),
        }
        drop(b);
        let stats = sem.stats();
        assert_eq!((stats.available, stats.in_use, stats.waiters), (1, 0, 0));
    });
}
