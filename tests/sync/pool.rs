//! `Pool` (SPEC §8): reuse, FIFO, the size bound, failures and cancellation
//! at every step (a random matrix), panics while holding, detach, close,
//! resize, lifetimes and wait timeouts on the manual clock, and returns
//! racing waiters across threads.

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::Pool;
use awaitkit::pool::{BuildError, Manager, PoolError, Pooled};
use awaitkit::time::ManualClock;
use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// ---------------------------------------------------------------------------
// A scriptable manager
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behave {
    Ok,
    Err,
    /// Returns `Pending` (waking itself) this many times, then `Ok`.
    Slow(usize),
    /// Returns `Pending` (waking itself) this many times, then fails.
    FailAfter(usize),
    /// Never completes.
    Never,
}

#[derive(Debug, Default)]
struct Counts {
    live: AtomicUsize,
    most_live: AtomicUsize,
    created: AtomicUsize,
    recycled: AtomicUsize,
}

#[derive(Default)]
struct Script {
    create: Mutex<VecDeque<Behave>>,
    recycle: Mutex<VecDeque<Behave>>,
}

struct TestManager {
    counts: Arc<Counts>,
    script: Arc<Script>,
}

#[derive(Debug)]
struct Obj {
    id: usize,
    uses: usize,
    counts: Arc<Counts>,
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Pending `n` times (waking itself), then ready.
struct Yields(usize);

impl Future for Yields {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

async fn behave(b: Behave) -> Result<(), &'static str> {
    match b {
        Behave::Ok => Ok(()),
        Behave::Err => Err("scripted failure"),
        Behave::Slow(n) => {
            Yields(n).await;
            Ok(())
        }
        Behave::FailAfter(n) => {
            Yields(n).await;
            Err("scripted failure")
        }
        Behave::Never => std::future::pending().await,
    }
}

impl Manager for TestManager {
    type Object = Obj;
    type Error = &'static str;

    async fn create(&self) -> Result<Obj, &'static str> {
        let b = self
            .script
            .create
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Behave::Ok);
        behave(b).await?;
        let c = &self.counts;
        let live = c.live.fetch_add(1, Ordering::SeqCst) + 1;
        c.most_live.fetch_max(live, Ordering::SeqCst);
        Ok(Obj {
            id: c.created.fetch_add(1, Ordering::SeqCst),
            uses: 0,
            counts: c.clone(),
        })
    }

    async fn recycle(&self, obj: &mut Obj) -> Result<(), &'static str> {
        let b = self
            .script
            .recycle
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Behave::Ok);
        behave(b).await?;
        obj.uses += 1;
        self.counts.recycled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn manager() -> (TestManager, Arc<Counts>, Arc<Script>) {
    let (counts, script) = (Arc::new(Counts::default()), Arc::new(Script::default()));
    let m = TestManager {
        counts: counts.clone(),
        script: script.clone(),
    };
    (m, counts, script)
}

fn pool(max: usize) -> (Pool<TestManager>, Arc<Counts>, Arc<Script>) {
    let (m, counts, script) = manager();
    (Pool::new(m, max), counts, script)
}

type Got<T> = Result<Pooled<TestManager, T>, PoolError<&'static str>>;

fn ready<T: awaitkit::Timer>(p: Poll<Got<T>>) -> Pooled<TestManager, T> {
    match p {
        Poll::Ready(Ok(obj)) => obj,
        Poll::Ready(Err(e)) => panic!("get failed: {e}"),
        Poll::Pending => panic!("get still pending"),
    }
}

fn status(pool: &Pool<TestManager, impl awaitkit::Timer>) -> (usize, usize, usize, usize) {
    let s = pool.status();
    (s.size, s.idle, s.in_use, s.waiting)
}

// ---------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------

guarded! {
    fn objects_are_reused_and_counted() {
        let (pool, counts, _) = pool(2);
        let w = CountingWaker::new();
        let mut a = ready(poll_once(&mut pool.get(), &w));
        a.uses += 10;
        let id = a.id;
        assert_eq!(status(&pool), (1, 0, 1, 0));
        drop(a);
        assert_eq!(status(&pool), (1, 1, 0, 0));
        let b = ready(poll_once(&mut pool.get(), &w));
        assert_eq!((b.id, b.uses), (id, 11), "the same object, recycled once");
        assert_eq!(counts.created.load(Ordering::SeqCst), 1);
        assert!(format!("{b:?}").contains("Pooled"));
        assert!(format!("{pool:?}").contains("Pool"));
        assert_eq!(Pooled::pool(&b).status().in_use, 1);
    }

    fn zero_and_huge_sizes_are_rejected() {
        let (m, _, _) = manager();
        assert_eq!(Pool::builder(m).max_size(0).build().unwrap_err(), BuildError::ZeroMaxSize);
        let (m, _, _) = manager();
        assert_eq!(Pool::builder(m).max_size(usize::MAX).build().unwrap_err(), BuildError::TooLarge);
        assert!(!BuildError::ZeroMaxSize.to_string().is_empty());
    }

    #[should_panic(expected = "Pool::new: a pool's max_size must be at least 1")]
    fn new_panics_on_zero() {
        let (m, _, _) = manager();
        let _ = Pool::new(m, 0);
    }

    fn waiters_are_served_in_fifo_order() {
        let (pool, _, _) = pool(1);
        let w = CountingWaker::new();
        let held = ready(poll_once(&mut pool.get(), &w));
        let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
        let mut a = pool.get();
        let mut b = pool.get();
        assert!(poll_once(&mut a, &wa).is_pending());
        assert!(poll_once(&mut b, &wb).is_pending());
        assert_eq!(status(&pool).3, 2);
        drop(held);
        assert_eq!((wa.wakes(), wb.wakes()), (1, 0));
        assert!(poll_once(&mut b, &wb).is_pending(), "B must not overtake A");
        let a = ready(poll_once(&mut a, &wa));
        drop(a);
        let _b = ready(poll_once(&mut b, &wb));
    }

    fn a_failed_create_frees_its_slot_and_wakes_the_next() {
        let (pool, counts, script) = pool(1);
        script.create.lock().unwrap().push_back(Behave::FailAfter(1));
        let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
        let mut a = pool.get();
        let mut b = pool.get();
        assert!(poll_once(&mut a, &wa).is_pending()); // creating (slow, then Err)
        assert!(poll_once(&mut b, &wb).is_pending()); // waiting
        assert_eq!(status(&pool), (1, 0, 1, 1));
        let failed = poll_once(&mut a, &wa).map(|r| r.map(drop));
        assert_eq!(failed, Poll::Ready(Err(PoolError::Create("scripted failure"))));
        assert_eq!(wb.wakes(), 1, "the next waiter is woken");
        let b = ready(poll_once(&mut b, &wb));
        assert_eq!(status(&pool), (1, 0, 1, 0));
        assert_eq!(counts.live.load(Ordering::SeqCst), 1);
        drop(b);
        let err = PoolError::Create("x");
        assert_eq!(err.to_string(), "the manager failed to create an object");
    }

    fn a_cancelled_create_frees_its_slot() {
        let (pool, counts, script) = pool(1);
        script.create.lock().unwrap().push_back(Behave::Never);
        let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
        let mut a = pool.get();
        let mut b = pool.get();
        assert!(poll_once(&mut a, &wa).is_pending());
        assert!(poll_once(&mut b, &wb).is_pending());
        drop(a);
        assert_eq!(wb.wakes(), 1);
        assert_eq!(status(&pool).0, 0, "the cancelled create freed its slot");
        let _b = ready(poll_once(&mut b, &wb));
        assert_eq!(counts.created.load(Ordering::SeqCst), 1);
    }

    fn a_failed_recycle_discards_the_object_and_creates_another() {
        let (pool, counts, script) = pool(2);
        let w = CountingWaker::new();
        let a = ready(poll_once(&mut pool.get(), &w));
        let first = a.id;
        drop(a);
        script.recycle.lock().unwrap().push_back(Behave::Err);
        let b = ready(poll_once(&mut pool.get(), &w));
        assert_ne!(b.id, first);
        assert_eq!(counts.live.load(Ordering::SeqCst), 1, "the failed one was dropped");
        assert_eq!(status(&pool), (1, 0, 1, 0));
    }

    fn a_cancelled_recycle_discards_the_object() {
        let (pool, counts, script) = pool(1);
        let w = CountingWaker::new();
        drop(ready(poll_once(&mut pool.get(), &w)));
        script.recycle.lock().unwrap().push_back(Behave::Never);
        let mut get = pool.get();
        assert!(poll_once(&mut get, &w).is_pending());
        drop(get);
        assert_eq!(status(&pool), (0, 0, 0, 0));
        assert_eq!(counts.live.load(Ordering::SeqCst), 0);
    }

    fn an_object_held_while_panicking_is_discarded() {
        let (pool, counts, _) = pool(1);
        let w = CountingWaker::new();
        let obj = ready(poll_once(&mut pool.get(), &w));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = obj;
            panic!("while holding a pooled object");
        }));
        assert!(caught.is_err());
        assert_eq!(status(&pool), (0, 0, 0, 0));
        assert_eq!(counts.live.load(Ordering::SeqCst), 0);
        let again = ready(poll_once(&mut pool.get(), &w));
        assert_eq!(again.id, 1, "a new object");
    }

    fn detach_takes_the_object_out_and_frees_the_slot() {
        let (pool, counts, _) = pool(1);
        let w = CountingWaker::new();
        let obj = Pooled::detach(ready(poll_once(&mut pool.get(), &w)));
        assert_eq!(status(&pool), (0, 0, 0, 0));
        let other = ready(poll_once(&mut pool.get(), &w));
        assert_ne!(other.id, obj.id);
        assert_eq!(counts.live.load(Ordering::SeqCst), 2);
    }

    fn close_fails_waiters_drops_idle_and_returned_objects() {
        let (pool, counts, _) = pool(2);
        let w = CountingWaker::new();
        let a = ready(poll_once(&mut pool.get(), &w));
        let b = ready(poll_once(&mut pool.get(), &w));
        drop(b);
        let mut waiting = pool.get();
        let mut extra = pool.get();
        let taken = ready(poll_once(&mut waiting, &w)); // the idle one
        assert!(poll_once(&mut extra, &w).is_pending());
        pool.close();
        assert!(pool.is_closed());
        assert_eq!(poll_once(&mut extra, &w).map(|r| r.map(drop)), Poll::Ready(Err(PoolError::Closed)));
        drop((taken, waiting));
        drop(a);
        assert_eq!(status(&pool), (0, 0, 0, 0));
        assert_eq!(counts.live.load(Ordering::SeqCst), 0);
        assert_eq!(poll_once(&mut pool.get(), &w).map(|r| r.map(drop)), Poll::Ready(Err(PoolError::Closed)));
        assert_eq!(PoolError::<&str>::Closed.to_string(), "the pool is closed");
    }

    fn resize_grows_at_once_and_shrinks_as_objects_come_back() {
        let (pool, counts, _) = pool(1);
        let w = CountingWaker::new();
        let a = ready(poll_once(&mut pool.get(), &w));
        let mut b = pool.get();
        assert!(poll_once(&mut b, &w).is_pending());
        pool.resize(2);
        let b = ready(poll_once(&mut b, &w));
        assert_eq!(status(&pool), (2, 0, 2, 0));
        pool.resize(1);
        drop(a); // over the new size: dropped
        assert_eq!(status(&pool), (1, 0, 1, 0));
        drop(b);
        assert_eq!(status(&pool), (1, 1, 0, 0));
        assert_eq!(counts.live.load(Ordering::SeqCst), 1);
        assert_eq!(pool.status().max_size, 1);
    }

    #[should_panic(expected = "Pool::resize: max_size must be between 1")]
    fn resize_to_zero_panics() {
        let (pool, _, _) = pool(1);
        pool.resize(0);
    }
}

// ---------------------------------------------------------------------------
// Time: lifetimes and wait timeouts on the manual clock
// ---------------------------------------------------------------------------

guarded! {
    fn max_lifetime_and_idle_timeout_are_checked_when_handing_out() {
        let clock = ManualClock::new();
        let (m, counts, _) = manager();
        let pool = Pool::builder(m)
            .max_size(2)
            .max_lifetime(Duration::from_secs(100))
            .idle_timeout(Duration::from_secs(10))
            .with_timer(clock.clone())
            .build()
            .unwrap();
        let w = CountingWaker::new();
        let a = ready(poll_once(&mut pool.get(), &w));
        let first = a.id;
        drop(a);
        clock.advance(Duration::from_secs(9));
        let a = ready(poll_once(&mut pool.get(), &w));
        assert_eq!(a.id, first, "idle 9 s < 10 s: reused");
        drop(a);
        clock.advance(Duration::from_secs(10));
        let a = ready(poll_once(&mut pool.get(), &w));
        assert_ne!(a.id, first, "idle 10 s: dropped, a new one made");
        assert_eq!(counts.live.load(Ordering::SeqCst), 1);
        let second = a.id;
        drop(a);
        // Keep it busy (never idle long) past its lifetime.
        // (created at 19 s; 12 rounds of 9 s make it 127 s old)
        for _ in 0..12 {
            drop(a_then(&pool, &w, second));
            clock.advance(Duration::from_secs(9));
        }
        let a = ready(poll_once(&mut pool.get(), &w));
        assert_ne!(a.id, second, "older than 100 s: replaced");
    }

    fn the_coldest_idle_object_is_dropped_once_timed_out() {
        let clock = ManualClock::new();
        let (m, counts, _) = manager();
        let pool = Pool::builder(m).max_size(3).idle_timeout(Duration::from_secs(10)).with_timer(clock.clone()).build().unwrap();
        let w = CountingWaker::new();
        let (a, b) = (ready(poll_once(&mut pool.get(), &w)), ready(poll_once(&mut pool.get(), &w)));
        drop(a);
        clock.advance(Duration::from_secs(20));
        drop(b); // fresh; `a` has been idle 20 s
        let _hot = ready(poll_once(&mut pool.get(), &w));
        assert_eq!(counts.live.load(Ordering::SeqCst), 1, "the cold one went");
        assert_eq!(pool.status().idle, 0);
    }

    fn a_wait_timeout_gives_up_and_leaves_the_queue() {
        let clock = ManualClock::new();
        let (m, _, _) = manager();
        let pool = Pool::builder(m).max_size(1).wait_timeout(Duration::from_secs(5)).with_timer(clock.clone()).build().unwrap();
        let w = CountingWaker::new();
        let held = ready(poll_once(&mut pool.get(), &w));
        let mut waiting = pool.get();
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(Duration::from_secs(4));
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(Duration::from_secs(1));
        assert_eq!(poll_once(&mut waiting, &w).map(|r| r.map(drop)), Poll::Ready(Err(PoolError::Timeout)));
        assert_eq!(status(&pool), (1, 0, 1, 0));
        let mut per_call = pool.get_timeout(Duration::MAX);
        assert!(poll_once(&mut per_call, &w).is_pending());
        drop(held);
        let _ = ready(poll_once(&mut per_call, &w));
        assert_eq!(clock.sleepers(), 0);
    }
}

fn a_then(
    pool: &Pool<TestManager, ManualClock>,
    w: &CountingWaker,
    id: usize,
) -> Pooled<TestManager, ManualClock> {
    let a = match poll_once(&mut pool.get(), w) {
        Poll::Ready(Ok(a)) => a,
        other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
    };
    assert_eq!(a.id, id);
    a
}

// ---------------------------------------------------------------------------
// The cancellation matrix
// ---------------------------------------------------------------------------

guarded! {
    fn random_failures_and_cancellations_never_leak_a_slot() {
        let behaviours = [Behave::Ok, Behave::Err, Behave::Slow(1), Behave::Slow(3), Behave::FailAfter(2), Behave::Never];
        for seed in 0..400u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let max = rng.gen_range(1..=4);
            let (pool, counts, script) = pool(max);
            let w = CountingWaker::new();
            let mut gets: Vec<(awaitkit::pool::Get<TestManager>, usize)> = Vec::new();
            let mut held = Vec::new();
            for _ in 0..60 {
                match rng.gen_range(0..6) {
                    0 => {
                        script.create.lock().unwrap().push_back(behaviours[rng.gen_range(0..behaviours.len())]);
                        script.recycle.lock().unwrap().push_back(behaviours[rng.gen_range(0..behaviours.len())]);
                    }
                    1 | 2 => gets.push((pool.get(), rng.gen_range(0..4))),
                    3 if !gets.is_empty() => {
                        // Poll a get; cancel it once its poll budget is spent.
                        let i = rng.gen_range(0..gets.len());
                        match poll_once(&mut gets[i].0, &w) {
                            Poll::Ready(Ok(obj)) => {
                                drop(gets.swap_remove(i));
                                held.push(obj);
                            }
                            Poll::Ready(Err(_)) => drop(gets.swap_remove(i)),
                            Poll::Pending if gets[i].1 == 0 => drop(gets.swap_remove(i)),
                            Poll::Pending => gets[i].1 -= 1,
                        }
                    }
                    4 if !held.is_empty() => {
                        let obj = held.swap_remove(rng.gen_range(0..held.len()));
                        if rng.gen_bool(0.2) {
                            drop(Pooled::detach(obj));
                        } else {
                            drop(obj);
                        }
                    }
                    _ => {}
                }
                let s = pool.status();
                assert!(s.size <= max, "seed {seed}: size {} > {max}", s.size);
                assert!(s.in_use <= max && s.idle <= max, "seed {seed}: {s:?}");
                assert!(held.len() <= max, "seed {seed}");
                assert!(counts.live.load(Ordering::SeqCst) <= max, "seed {seed}");
            }
            // At rest: every slot accounted for.
            drop(gets);
            drop(held);
            let s = pool.status();
            assert_eq!((s.in_use, s.waiting), (0, 0), "seed {seed}: {s:?}");
            assert_eq!(s.size, s.idle, "seed {seed}: {s:?}");
            assert_eq!(counts.live.load(Ordering::SeqCst), s.idle, "seed {seed}");
            assert!(counts.most_live.load(Ordering::SeqCst) <= max, "seed {seed}");
            // And the pool still works.
            script.create.lock().unwrap().clear();
            script.recycle.lock().unwrap().clear();
            let _ = ready(poll_once(&mut pool.get(), &w));
        }
    }

    fn returns_racing_waiters_across_threads_lose_no_wakeup() {
        let (pool, counts, _) = pool(2);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let mut obj = futures::executor::block_on(pool.get()).unwrap();
                        obj.uses += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = pool.status();
        assert_eq!((s.size, s.idle, s.in_use, s.waiting), (s.idle, s.idle, 0, 0));
        assert!(counts.most_live.load(Ordering::SeqCst) <= 2);
    }
}

// ---------------------------------------------------------------------------
// Every executor
// ---------------------------------------------------------------------------

matrix! {
    async fn many_tasks_share_a_small_pool() {
        let (pool, counts, _) = pool(3);
        let busy = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        awaitkit::gather((0..40).map(|_| {
            let (pool, busy, most) = (pool.clone(), busy.clone(), most.clone());
            async move {
                let mut obj = pool.get().await.unwrap();
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                yield_now().await;
                obj.uses += 1;
                busy.fetch_sub(1, Ordering::SeqCst);
            }
        }))
        .await;
        assert_eq!(most.load(Ordering::SeqCst), 3, "the limit is reached, never exceeded");
        assert!(counts.most_live.load(Ordering::SeqCst) <= 3);
        assert_eq!(pool.status().idle, pool.status().size);
    }

    async fn a_real_wait_timeout() {
        let (m, _, _) = manager();
        let pool = Pool::builder(m).max_size(1).wait_timeout(Duration::from_millis(20)).build().unwrap();
        let held = pool.get().await.unwrap();
        assert_eq!(pool.get().await.map(drop), Err(PoolError::Timeout));
        drop(held);
        assert!(pool.get().await.is_ok());
    }
}

/// `Manager::RECYCLE = false`: idle objects are handed out directly.
struct NoRecycle(Arc<AtomicUsize>);

impl Manager for NoRecycle {
    type Object = usize;
    type Error = ();
    const RECYCLE: bool = false;

    async fn create(&self) -> Result<usize, ()> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst))
    }

    async fn recycle(&self, _: &mut usize) -> Result<(), ()> {
        panic!("RECYCLE is false: recycle must not be called");
    }
}

guarded! {
    fn a_manager_without_recycling_gets_idle_objects_directly() {
        let created = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(NoRecycle(created.clone()), 2);
        let w = CountingWaker::new();
        for _ in 0..5 {
            let obj = match poll_once(&mut pool.get(), &w) {
                Poll::Ready(Ok(obj)) => obj,
                _ => panic!("ready at once"),
            };
            assert_eq!(*obj, 0);
        }
        assert_eq!(created.load(Ordering::SeqCst), 1);
        assert_eq!(pool.status().idle, 1);
    }
}
