//! `Pool` under panics in user code (SPEC §1.13, §8): the destructors of the
//! manager's futures and of objects, the timer, and another waiter's waker.
//! Each test is a regression test of a defect the panic-injection harness
//! (`tests/panic_injection.rs`, `pool_*` scenarios) found: nothing leaks
//! (every object dropped or back in the pool, every slot and permit back),
//! a result decided before the panic is returned by the next poll, and a
//! `Get` that cannot know its result refuses to be polled again with a
//! message that says a panic happened.

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::Pool;
use awaitkit::pool::{Manager, PoolError, Pooled};
use awaitkit::time::{ManualClock, ManualSleep, Timer};
use common::*;
use futures::FutureExt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// A manager whose next create, recycle, future destructor or object
// destructor can be told to fail or panic (once)
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Plan {
    /// The next create returns an error.
    fail_create: AtomicBool,
    /// The next recycle returns an error.
    fail_recycle: AtomicBool,
    /// The next create future panics when dropped (after completing).
    create_future_drop: AtomicBool,
    /// The next recycle future panics when dropped (after completing).
    recycle_future_drop: AtomicBool,
    /// The next object dropped panics.
    object_drop: AtomicBool,
    /// Creates return `Pending` once (waking themselves) before completing.
    slow_create: AtomicBool,
    /// Objects alive.
    live: AtomicUsize,
    made: AtomicUsize,
}

fn take(flag: &AtomicBool) -> bool {
    flag.swap(false, Ordering::SeqCst)
}

#[derive(Debug)]
struct Obj {
    id: usize,
    plan: Arc<Plan>,
}

impl Drop for Obj {
    fn drop(&mut self) {
        self.plan.live.fetch_sub(1, Ordering::SeqCst);
        if take(&self.plan.object_drop) {
            panic!("object drop");
        }
    }
}

/// A future that yields `yields` times, then returns its output, and panics
/// when dropped if `panics_on_drop` (user code the pool must survive).
struct Step<T> {
    out: Option<T>,
    yields: usize,
    panics_on_drop: Option<&'static str>,
}

impl<T: Unpin> Future for Step<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if self.yields > 0 {
            self.yields -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.out.take().expect("polled after completion"))
    }
}

impl<T> Drop for Step<T> {
    fn drop(&mut self) {
        if let Some(what) = self.panics_on_drop {
            if !std::thread::panicking() {
                panic!("{what}");
            }
        }
    }
}

struct PlannedManager(Arc<Plan>);

impl Manager for PlannedManager {
    type Object = Obj;
    type Error = &'static str;

    fn create(&self) -> impl Future<Output = Result<Obj, &'static str>> + Send {
        let plan = &self.0;
        let out = if take(&plan.fail_create) {
            Err("create failed")
        } else {
            plan.live.fetch_add(1, Ordering::SeqCst);
            Ok(Obj {
                id: plan.made.fetch_add(1, Ordering::SeqCst) + 1,
                plan: plan.clone(),
            })
        };
        Step {
            out: Some(out),
            yields: usize::from(plan.slow_create.load(Ordering::SeqCst)),
            panics_on_drop: take(&plan.create_future_drop).then_some("create future drop"),
        }
    }

    fn recycle(&self, _: &mut Obj) -> impl Future<Output = Result<(), &'static str>> + Send {
        let plan = &self.0;
        let out = if take(&plan.fail_recycle) {
            Err("recycle failed")
        } else {
            Ok(())
        };
        Step {
            out: Some(out),
            yields: 0,
            panics_on_drop: take(&plan.recycle_future_drop).then_some("recycle future drop"),
        }
    }
}

fn pool(max: usize) -> (Pool<PlannedManager>, Arc<Plan>) {
    let plan = Arc::new(Plan::default());
    (Pool::new(PlannedManager(plan.clone()), max), plan)
}

fn live(plan: &Plan) -> usize {
    plan.live.load(Ordering::SeqCst)
}

/// (size, idle, in use) of a pool.
fn counts<T: Timer>(pool: &Pool<PlannedManager, T>) -> (usize, usize, usize) {
    let s = pool.status();
    (s.size, s.idle, s.in_use)
}

/// Polls `fut` once (with a waker that does nothing), catching a panic.
fn poll_caught<F: Future + Unpin>(fut: &mut F) -> Result<Poll<F::Output>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        Pin::new(&mut *fut).poll(&mut Context::from_waker(Waker::noop()))
    }))
    .map_err(|payload| panic_message(&*payload))
}

/// The next poll of `fut` refuses, saying a panic happened.
fn assert_refused_after_a_panic<F: Future + Unpin>(fut: &mut F) {
    match poll_caught(fut) {
        Err(msg) => assert!(msg.contains("polled after a panic"), "unclear: {msg}"),
        Ok(p) => panic!("polled after a panic, it returned {:?}", p.map(|_| ())),
    }
}

// ---------------------------------------------------------------------------
// The destructors of the manager's futures
// ---------------------------------------------------------------------------

matrix! {
    /// Harness `pool_hand_off` k=6 (and `pool_create_fails` k=13,
    /// `pool_recycle_fails` k=6/17, `pool_wait_timeout` k=9): the create
    /// future's destructor panicked right after it produced the object,
    /// which was leaked (never dropped, never handed out).
    async fn a_create_future_that_panics_on_drop_keeps_its_object() {
        let (pool, plan) = pool(1);
        plan.create_future_drop.store(true, Ordering::SeqCst);
        let mut get = pool.get();
        let payload = AssertUnwindSafe(&mut get).catch_unwind().await.unwrap_err();
        assert_eq!(panic_message(&*payload), "create future drop");
        // The object was kept: the next poll hands it out.
        let obj = get.await.expect("the object created");
        assert_eq!(obj.id, 1);
        assert_eq!((live(&plan), counts(&pool)), (1, (1, 0, 1)));
        drop(obj);
        assert_eq!(counts(&pool), (1, 1, 0));
        drop(pool);
        assert_eq!(live(&plan), 0, "an object leaked");
    }

    /// The same for a recycle future: the object it checked was dropped
    /// with it, although the check had passed.
    async fn a_recycle_future_that_panics_on_drop_keeps_its_object() {
        let (pool, plan) = pool(1);
        drop(pool.get().await.unwrap());
        plan.recycle_future_drop.store(true, Ordering::SeqCst);
        let mut get = pool.get();
        let payload = AssertUnwindSafe(&mut get).catch_unwind().await.unwrap_err();
        assert_eq!(panic_message(&*payload), "recycle future drop");
        let obj = get.await.expect("the object recycled");
        assert_eq!(obj.id, 1, "the same object");
        assert_eq!((live(&plan), counts(&pool)), (1, (1, 0, 1)));
        drop(obj);
        drop(pool);
        assert_eq!(live(&plan), 0, "an object leaked");
    }

    /// A get dropped after such a panic instead of polled again puts the
    /// object back.
    async fn a_get_dropped_after_its_create_future_panicked_puts_the_object_back() {
        let (pool, plan) = pool(1);
        plan.create_future_drop.store(true, Ordering::SeqCst);
        let mut get = pool.get();
        assert!(AssertUnwindSafe(&mut get).catch_unwind().await.is_err());
        drop(get);
        assert_eq!((live(&plan), counts(&pool)), (1, (1, 1, 0)));
        let obj = pool.get().await.unwrap();
        assert_eq!(obj.id, 1);
    }

    /// Harness `pool_recycle_fails` k=12: the object that failed its check
    /// panicked when dropped; the next poll said "polled after completion"
    /// although the get never completed.
    async fn a_failed_recycle_whose_object_panics_on_drop_refuses_clearly() {
        let (pool, plan) = pool(1);
        drop(pool.get().await.unwrap());
        plan.fail_recycle.store(true, Ordering::SeqCst);
        plan.object_drop.store(true, Ordering::SeqCst);
        let mut get = pool.get();
        let payload = AssertUnwindSafe(&mut get).catch_unwind().await.unwrap_err();
        assert_eq!(panic_message(&*payload), "object drop");
        assert_refused_after_a_panic(&mut get);
        drop(get);
        // The slot and the permit are back: a fresh get creates an object.
        assert_eq!((live(&plan), counts(&pool)), (0, (0, 0, 0)));
        let obj = pool.get().await.unwrap();
        assert_eq!(obj.id, 2);
    }
}

// ---------------------------------------------------------------------------
// Another waiter's waker, the timer
// ---------------------------------------------------------------------------

struct PanicOnWake;

impl Wake for PanicOnWake {
    fn wake(self: Arc<Self>) {
        panic!("waker panicked");
    }
}

/// A `ManualClock` whose next `now` or next sleep drop can be told to panic.
#[derive(Clone, Default)]
struct PlannedTimer {
    clock: ManualClock,
    now_panics: Arc<AtomicBool>,
    sleep_drop_panics: Arc<AtomicBool>,
}

struct PlannedSleep {
    inner: ManualSleep,
    drop_panics: Arc<AtomicBool>,
}

impl Future for PlannedSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl Drop for PlannedSleep {
    fn drop(&mut self) {
        if take(&self.drop_panics) {
            panic!("sleep drop");
        }
    }
}

impl Timer for PlannedTimer {
    type Sleep = PlannedSleep;

    fn now(&self) -> Instant {
        if take(&self.now_panics) {
            panic!("timer now");
        }
        self.clock.now()
    }

    fn sleep_until(&self, deadline: Instant) -> PlannedSleep {
        PlannedSleep {
            inner: self.clock.sleep_until(deadline),
            drop_panics: self.sleep_drop_panics.clone(),
        }
    }

    fn reset(&self, sleep: Pin<&mut PlannedSleep>, deadline: Instant) {
        self.clock
            .reset(Pin::new(&mut sleep.get_mut().inner), deadline);
    }
}

type Got<T> = Result<Pooled<PlannedManager, T>, PoolError<&'static str>>;

fn ready<T: Timer>(p: Poll<Got<T>>) -> Pooled<PlannedManager, T> {
    match p {
        Poll::Ready(Ok(obj)) => obj,
        Poll::Ready(Err(e)) => panic!("get failed: {e:?}"),
        Poll::Pending => panic!("get pending"),
    }
}

guarded! {
    /// Polling a get after it completed says so, every time (the refusal
    /// itself is not taken for a panic of the get's).
    fn a_completed_get_refuses_polls_as_completed() {
        let (pool, _plan) = pool(1);
        let mut get = pool.get();
        let _obj = ready(poll_caught(&mut get).unwrap());
        for _ in 0..2 {
            let msg = poll_caught(&mut get).map(|_| ()).unwrap_err();
            assert_eq!(msg, "`Get` polled after completion");
        }
    }

    /// Harness `pool_create_fails` k=7: a get whose create failed hands its
    /// permit on as it completes, waking the next waiter, whose waker
    /// panics. The panic comes out of the failed get's poll (the semaphore
    /// propagates it from the call that woke); its error was lost and the
    /// next poll said "polled after completion".
    fn a_failed_get_keeps_its_error_when_the_next_waiters_waker_panics() {
        let (pool, plan) = pool(1);
        plan.fail_create.store(true, Ordering::SeqCst);
        plan.slow_create.store(true, Ordering::SeqCst);
        let (mut get1, mut get2) = (pool.get(), pool.get());
        assert!(poll_caught(&mut get1).unwrap().is_pending(), "creating");
        let bad = Waker::from(Arc::new(PanicOnWake));
        let mut cx = Context::from_waker(&bad);
        assert!(Pin::new(&mut get2).poll(&mut cx).is_pending(), "queued");
        assert_eq!(poll_caught(&mut get1).unwrap_err(), "waker panicked");
        // The error is kept for the next poll.
        match poll_caught(&mut get1) {
            Ok(Poll::Ready(Err(e))) => assert_eq!(e, PoolError::Create("create failed")),
            other => panic!("expected the create error, got {:?}", other.map(|p| p.map(|_| ()))),
        }
        // The permit went to get 2 exactly once: it completes when polled.
        plan.slow_create.store(false, Ordering::SeqCst);
        let obj = ready(poll_caught(&mut get2).unwrap());
        assert_eq!((obj.id, live(&plan), counts(&pool)), (1, 1, (1, 0, 1)));
        drop(obj);
        assert_eq!(counts(&pool), (1, 1, 0));
    }

    /// Harness `pool_wait_timeout` k=10/11: the wait timeout's sleep
    /// panicked when dropped as the get completed: the object was dropped,
    /// and the next poll said "polled after completion".
    fn a_get_whose_sleep_panics_on_drop_keeps_its_object() {
        let timer = PlannedTimer::default();
        let plan = Arc::new(Plan::default());
        let pool = Pool::builder(PlannedManager(plan.clone()))
            .max_size(1)
            .wait_timeout(1000 * MS)
            .with_timer(timer.clone())
            .build()
            .unwrap();
        let held = ready(poll_caught(&mut pool.get()).unwrap());
        let mut get = pool.get();
        assert!(poll_caught(&mut get).unwrap().is_pending(), "waiting");
        assert_eq!(timer.clock.sleepers(), 1, "the wait timeout sleeps");
        drop(held);
        timer.sleep_drop_panics.store(true, Ordering::SeqCst);
        assert_eq!(poll_caught(&mut get).unwrap_err(), "sleep drop");
        let obj = ready(poll_caught(&mut get).unwrap());
        assert_eq!((obj.id, live(&plan), counts(&pool)), (1, 1, (1, 0, 1)));
    }

    /// An idle object that timed out panicked when dropped as a get looked
    /// for one to hand out: the object found behind it was dropped too, its
    /// slot still counted.
    fn an_expired_objects_panicking_drop_does_not_lose_the_object_found() {
        let clock = ManualClock::new();
        let plan = Arc::new(Plan::default());
        let pool = Pool::builder(PlannedManager(plan.clone()))
            .max_size(2)
            .idle_timeout(10 * MS)
            .with_timer(clock.clone())
            .build()
            .unwrap();
        let a = ready(poll_caught(&mut pool.get()).unwrap());
        let b = ready(poll_caught(&mut pool.get()).unwrap());
        drop(a);
        clock.advance(10 * MS);
        drop(b);
        // `a` timed out; `b` did not.
        plan.object_drop.store(true, Ordering::SeqCst);
        let mut get = pool.get();
        assert_eq!(poll_caught(&mut get).unwrap_err(), "object drop");
        assert_eq!((live(&plan), counts(&pool)), (1, (1, 1, 0)), "b is idle");
        assert_refused_after_a_panic(&mut get);
        drop(get);
        let obj = ready(poll_caught(&mut pool.get()).unwrap());
        assert_eq!(obj.id, 2);
    }

    /// The timer panicked as a guard stamped its returning object: the
    /// object was dropped, its slot still counted.
    fn a_returned_object_whose_timestamp_panics_frees_its_slot() {
        let timer = PlannedTimer::default();
        let plan = Arc::new(Plan::default());
        let pool = Pool::builder(PlannedManager(plan.clone()))
            .max_size(1)
            .idle_timeout(10 * MS)
            .with_timer(timer.clone())
            .build()
            .unwrap();
        let obj = ready(poll_caught(&mut pool.get()).unwrap());
        timer.now_panics.store(true, Ordering::SeqCst);
        let payload = catch_unwind(AssertUnwindSafe(|| drop(obj))).unwrap_err();
        assert_eq!(panic_message(&*payload), "timer now");
        assert_eq!((live(&plan), counts(&pool)), (0, (0, 0, 0)));
        let obj = ready(poll_caught(&mut pool.get()).unwrap());
        assert_eq!(obj.id, 2);
    }
}
