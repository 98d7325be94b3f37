//! `RateLimiter` and `KeyedRateLimiter` against hostile user code (SPEC
//! 1.13–1.14, issue 14 items 5 and 6): wakers that panic on `wake`, `clone`
//! or `drop` at the k-th call, wakers that call back into the limiter from
//! any of those, a timer that panics, cancellation after every poll, and
//! waiters on other threads. After each attack the next waiter must be
//! served, `try_acquire` must recover and nothing may hang (every test runs
//! under the watchdog).

#![cfg(feature = "test-util")]

#[macro_use]
mod common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::{ManualClock, ManualSleep, Timer};
use awaitkit::{KeyedRateLimiter, RateLimiter};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn window(max_calls: usize, period: Duration) -> Quota {
    Quota::window(max_calls, period).unwrap()
}

fn gcra(max_calls: usize, period: Duration) -> Quota {
    // Bursts of the whole quota: the same grant times as the window for
    // these tests' patterns.
    Quota::gcra(max_calls, period, max_calls).unwrap()
}

fn manual(quota: Quota) -> (ManualClock, Arc<RateLimiter<ManualClock>>) {
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::with_quota(quota).with_timer(clock.clone()));
    (clock, limiter)
}

/// Runs `f`; its panic message, if it panicked.
fn panic_of(f: impl FnOnce()) -> Option<String> {
    catch_unwind(AssertUnwindSafe(f))
        .err()
        .map(|p| panic_message(&*p))
}

fn poll_with<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

/// Moves `clock` from one armed deadline to the next (at most `steps`
/// times) until `done`.
fn advance_until(clock: &ManualClock, steps: usize, mut done: impl FnMut() -> bool) {
    for _ in 0..steps {
        if done() {
            return;
        }
        match clock.next_deadline() {
            Some(next) => clock.advance_to(next),
            None => clock.advance(SEC),
        }
    }
    assert!(done(), "not done after {steps} steps");
}

// ---------------------------------------------------------------------------
// A hostile waker
// ---------------------------------------------------------------------------

type Hook = Box<dyn Fn() + Send + Sync>;

/// A waker whose `wake`, `clone` and `drop` each panic at their k-th call
/// (counted over all its clones; 0 = never) and may run a hook (calling
/// back into a limiter). Each `wake` first wakes the task's real waker, if
/// one was given, so a task survives its waker panicking.
#[derive(Default)]
struct Evil {
    wake_panics_at: usize,
    clone_panics_at: usize,
    drop_panics_at: usize,
    on_wake: Option<Hook>,
    on_clone: Option<Hook>,
    on_drop: Option<Hook>,
    wakes: AtomicUsize,
    clones: AtomicUsize,
    drops: AtomicUsize,
    forward: Mutex<Option<Waker>>,
}

static EVIL_VTABLE: RawWakerVTable =
    RawWakerVTable::new(evil_clone, evil_wake, evil_wake_by_ref, evil_drop);

unsafe fn evil_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live waker's `Arc<Evil>`.
    let evil = unsafe { &*data.cast::<Evil>() };
    let k = evil.clones.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(hook) = &evil.on_clone {
        hook();
    }
    assert_ne!(k, evil.clone_panics_at, "evil clone #{k}");
    // SAFETY: the waker being cloned holds a strong count.
    unsafe { Arc::increment_strong_count(data.cast::<Evil>()) };
    RawWaker::new(data, &EVIL_VTABLE)
}

unsafe fn evil_wake(data: *const ()) {
    // SAFETY: `wake` consumes the waker's strong count (also on a panic).
    let evil = unsafe { Arc::from_raw(data.cast::<Evil>()) };
    evil.wake();
}

unsafe fn evil_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps its strong count.
    unsafe { &*data.cast::<Evil>() }.wake();
}

unsafe fn evil_drop(data: *const ()) {
    // SAFETY: the waker owns one strong count, released here even when the
    // drop panics.
    let evil = unsafe { Arc::from_raw(data.cast::<Evil>()) };
    let k = evil.drops.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(hook) = &evil.on_drop {
        hook();
    }
    assert_ne!(k, evil.drop_panics_at, "evil drop #{k}");
}

impl Evil {
    fn wake(&self) {
        let k = self.wakes.fetch_add(1, Ordering::SeqCst) + 1;
        let forward = self.forward.lock().unwrap().clone();
        if let Some(waker) = forward {
            waker.wake();
        }
        if let Some(hook) = &self.on_wake {
            hook();
        }
        assert_ne!(k, self.wake_panics_at, "evil wake #{k}");
    }

    fn into_arc(self) -> Arc<Evil> {
        Arc::new(self)
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }
}

/// A waker on `evil` (its creation is not counted as a clone).
fn evil_waker(evil: &Arc<Evil>) -> Waker {
    let data = Arc::into_raw(evil.clone()).cast::<()>();
    // SAFETY: the vtable follows the `RawWaker` contract over an
    // `Arc<Evil>` strong count.
    unsafe { Waker::from_raw(RawWaker::new(data, &EVIL_VTABLE)) }
}

fn panics_on_wake() -> Arc<Evil> {
    Evil {
        wake_panics_at: 1,
        ..Evil::default()
    }
    .into_arc()
}

/// Polls the inner future with a waker on `evil` that forwards wake-ups to
/// the task's own waker: the hostile waker runs on whatever thread wakes.
struct Hostile<F> {
    inner: F,
    evil: Arc<Evil>,
}

impl<F: Future + Unpin> Future for Hostile<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        *self.evil.forward.lock().unwrap() = Some(cx.waker().clone());
        let waker = evil_waker(&self.evil);
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&waker))
    }
}

// ---------------------------------------------------------------------------
// Item 5: a panic never wedges the driver
// ---------------------------------------------------------------------------

guarded! {
    /// The timer's path (here `ManualClock::advance`) grants a waiter whose
    /// waker panics: the panic is contained there, the driver re-arms, and
    /// the next waiter is served at its time.
    fn panicking_waker_on_the_timer_path_does_not_wedge_the_driver() {
        for quota in [window(1, SEC), gcra(1, SEC)] {
            let (clock, limiter) = manual(quota);
            let t0 = clock.now();
            limiter.try_acquire().unwrap();
            let evil = panics_on_wake();
            let mut a = limiter.acquire();
            assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
            let b_waker = CountingWaker::new();
            let mut b = limiter.acquire();
            assert!(poll_once(&mut b, &b_waker).is_pending());

            let advanced = panic_of(|| clock.advance(SEC));
            assert_eq!(advanced, None, "{quota:?}: the timer's path contains the panic");
            assert_eq!(evil.wakes(), 1);
            assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
            assert!(poll_once(&mut b, &b_waker).is_pending());
            assert!(clock.next_deadline().is_some(), "{quota:?}: the driver re-armed for b");

            clock.advance(SEC);
            assert_eq!(b_waker.wakes(), 1, "{quota:?}");
            assert!(poll_once(&mut b, &b_waker).is_ready());
            assert_eq!(clock.now() - t0, SEC * 2);
            assert!(limiter.try_acquire().is_err());
            clock.advance(SEC);
            assert_eq!(limiter.try_acquire(), Ok(()), "{quota:?}: try_acquire recovers");
            assert_eq!(limiter.waiting(), 0);
        }
    }

    /// Three waiters granted in one pass, the first one's waker panics: the
    /// other two are still woken.
    fn every_granted_waiter_is_woken_when_one_waker_panics() {
        for quota in [window(3, SEC), gcra(4, SEC)] {
            let (clock, limiter) = manual(quota);
            limiter.try_acquire_n(quota.max_calls()).unwrap();
            let evil = panics_on_wake();
            let mut a = limiter.acquire();
            assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
            let others: Vec<_> = (0..2).map(|_| CountingWaker::new()).collect();
            let mut rest: Vec<_> = (0..2).map(|_| limiter.acquire()).collect();
            for (f, w) in rest.iter_mut().zip(&others) {
                assert!(poll_once(f, w).is_pending());
            }
            clock.advance(SEC);
            for w in &others {
                assert_eq!(w.wakes(), 1, "{quota:?}: woken despite the panic before it");
            }
            for (f, w) in rest.iter_mut().zip(&others) {
                assert!(poll_once(f, w).is_ready());
            }
            drop(a);
            assert_eq!(limiter.waiting(), 0);
        }
    }

    /// A user call that runs the driver (`set_quota` here) gets the panic of
    /// a waker it woke — after every waiter was woken and the driver
    /// settled — and the limiter keeps serving.
    fn panicking_waker_on_set_quota_propagates_after_the_driver_settles() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let evil = panics_on_wake();
        let mut a = limiter.acquire();
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        let (bw, cw) = (CountingWaker::new(), CountingWaker::new());
        let (mut b, mut c) = (limiter.acquire(), limiter.acquire());
        assert!(poll_once(&mut b, &bw).is_pending());
        assert!(poll_once(&mut c, &cw).is_pending());

        // Room for two more now: a and b are granted, a's waker panics.
        let raised = panic_of(|| limiter.set_quota(window(3, SEC)).unwrap());
        assert_eq!(raised.as_deref(), Some("assertion `left != right` failed: evil wake #1\n  left: 1\n right: 1"));
        assert_eq!(limiter.quota(), window(3, SEC));
        assert_eq!(bw.wakes(), 1, "b was woken too");
        assert!(poll_once(&mut b, &bw).is_ready());
        assert!(poll_once(&mut c, &cw).is_pending());
        clock.advance(SEC);
        assert!(poll_once(&mut c, &cw).is_ready(), "the driver was armed for c");
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
        assert_eq!(limiter.try_acquire(), Ok(()));
    }

    /// Dropping a granted-but-unseen acquire gives its grant to the next
    /// waiter, whose waker panics: the drop propagates it (or, during
    /// another panic, discards it instead of aborting), and everyone after
    /// is served.
    fn panicking_waker_woken_by_a_cancel() {
        for unwinding in [false, true] {
            let (clock, limiter) = manual(window(1, SEC));
            limiter.try_acquire().unwrap();
            let hw = CountingWaker::new();
            let mut head = limiter.acquire();
            assert!(poll_once(&mut head, &hw).is_pending());
            let evil = panics_on_wake();
            let mut a = limiter.acquire();
            assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
            let bw = CountingWaker::new();
            let mut b = limiter.acquire();
            assert!(poll_once(&mut b, &bw).is_pending());
            clock.advance(SEC); // head is granted (not yet seen)
            assert_eq!(hw.wakes(), 1);

            let dropped = if unwinding {
                panic_of(move || {
                    let _head = head;
                    panic!("outer");
                })
            } else {
                panic_of(move || drop(head))
            };
            let expect = if unwinding { "outer" } else { "assertion `left != right` failed: evil wake #1\n  left: 1\n right: 1" };
            assert_eq!(dropped.as_deref(), Some(expect));
            assert_eq!(evil.wakes(), 1, "a was granted the returned call");
            assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
            clock.advance(SEC);
            assert!(poll_once(&mut b, &bw).is_ready());
            clock.advance(SEC);
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
    }
}

/// A timer that panics on `sleep_until` while `broken` is set — as
/// `TokioTimer` does outside a tokio runtime.
#[derive(Clone)]
struct Flaky {
    clock: ManualClock,
    broken: Arc<AtomicBool>,
}

impl Timer for Flaky {
    type Sleep = ManualSleep;
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ManualSleep {
        assert!(!self.broken.load(Ordering::SeqCst), "flaky timer");
        self.clock.sleep_until(deadline)
    }
    fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
        self.clock.reset(sleep, deadline)
    }
}

fn flaky(quota: Quota) -> (ManualClock, Arc<AtomicBool>, RateLimiter<Flaky>) {
    let clock = ManualClock::new();
    let broken = Arc::new(AtomicBool::new(false));
    let timer = Flaky {
        clock: clock.clone(),
        broken: broken.clone(),
    };
    (
        clock,
        broken,
        RateLimiter::with_quota(quota).with_timer(timer),
    )
}

guarded! {
    /// The timer panics once while arming for the first waiter (which is
    /// kept): the poll propagates it, and once the timer works again the
    /// next waiter's poll drives, so both are served in order.
    fn timer_that_panics_once_does_not_wedge_the_limiter() {
        for quota in [window(1, SEC), gcra(1, SEC)] {
            let (clock, broken, limiter) = flaky(quota);
            limiter.try_acquire().unwrap();
            let aw = CountingWaker::new();
            let mut a = limiter.acquire();
            broken.store(true, Ordering::SeqCst);
            let polled = panic_of(|| {
                let _ = poll_once(&mut a, &aw);
            });
            assert_eq!(polled.as_deref(), Some("flaky timer"), "{quota:?}");
            assert_eq!(aw.wakes(), 1, "{quota:?}: a stalled driver wakes its waiters");
            broken.store(false, Ordering::SeqCst);

            let bw = CountingWaker::new();
            let mut b = limiter.acquire();
            assert!(poll_once(&mut b, &bw).is_pending());
            assert!(clock.next_deadline().is_some(), "{quota:?}: b's poll re-armed the driver");
            clock.advance(SEC);
            assert!(poll_once(&mut a, &aw).is_ready(), "{quota:?}");
            assert!(poll_once(&mut b, &bw).is_pending());
            clock.advance(SEC);
            assert!(poll_once(&mut b, &bw).is_ready(), "{quota:?}");
            clock.advance(SEC);
            assert_eq!(limiter.try_acquire(), Ok(()), "{quota:?}");
        }
    }

    /// The same, but the waiter that saw the panic is dropped while it
    /// unwinds, and the one that was stalled re-polls on its own wake-up.
    fn timer_panic_with_the_waiter_dropped_on_unwind() {
        let (clock, broken, limiter) = flaky(window(1, SEC));
        limiter.try_acquire().unwrap();
        let polled = panic_of(|| {
            broken.store(true, Ordering::SeqCst);
            let mut a = limiter.acquire();
            let _ = poll_once(&mut a, &CountingWaker::new());
        });
        assert_eq!(polled.as_deref(), Some("flaky timer"));
        broken.store(false, Ordering::SeqCst);
        assert_eq!(limiter.waiting(), 0);
        let bw = CountingWaker::new();
        let mut b = limiter.acquire();
        assert!(poll_once(&mut b, &bw).is_pending());
        clock.advance(SEC);
        assert_eq!(bw.wakes(), 1);
        assert!(poll_once(&mut b, &bw).is_ready());

        // A waiter already queued when the timer fails re-polls when woken
        // and drives again from its own task.
        let cw = CountingWaker::new();
        let mut c = limiter.acquire();
        assert!(poll_once(&mut c, &cw).is_pending());
        broken.store(true, Ordering::SeqCst);
        // Raising the quota makes the driver re-arm: the timer panics.
        let raised = panic_of(|| limiter.set_quota(window(1, SEC * 2)).unwrap());
        assert!(raised.is_none() || raised.as_deref() == Some("flaky timer"));
        broken.store(false, Ordering::SeqCst);
        if raised.is_some() {
            assert_eq!(cw.wakes(), 1, "the stalled driver woke c");
        }
        assert!(poll_once(&mut c, &cw).is_pending());
        advance_until(&clock, 10, || cw.wakes() >= 1 && limiter.waiting() == 0);
        assert!(poll_once(&mut c, &cw).is_ready());
    }

    /// `TokioTimer` used once outside a runtime (its documented panic), then
    /// inside one: the waiters inside are served.
    #[cfg(feature = "tokio")]
    fn tokio_timer_used_outside_a_runtime_then_inside() {
        use awaitkit::time::TokioTimer;
        let limiter = Arc::new(RateLimiter::with_quota(window(1, MS * 20)).with_timer(TokioTimer));
        limiter.try_acquire().unwrap();
        let outside = panic_of(|| {
            let mut a = limiter.acquire();
            let _ = poll_once(&mut a, &CountingWaker::new());
        });
        assert!(outside.is_some(), "TokioTimer panics outside a runtime");
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                tokio::time::timeout(SEC * 5, limiter.acquire())
                    .await
                    .expect("served inside the runtime");
            }
        });
        assert_eq!(limiter.waiting(), 0);
    }

    /// futures-timer's one helper thread runs the limiter's timer. A
    /// waiter's waker that panics there must not kill it: the next waiter
    /// is served, and every default-timer timeout in the process still
    /// works.
    fn default_timer_thread_survives_a_panicking_waker() {
        let limiter = RateLimiter::new(1, MS * 20);
        limiter.try_acquire().unwrap();
        let evil = panics_on_wake();
        let mut a = limiter.acquire();
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        let bw = CountingWaker::new();
        let mut b = limiter.acquire();
        assert!(poll_once(&mut b, &bw).is_pending());
        let start = Instant::now();
        while bw.wakes() == 0 {
            assert!(start.elapsed() < SEC * 10, "b never woken (evil woken {})", evil.wakes());
            std::thread::sleep(MS);
        }
        assert_eq!(evil.wakes(), 1);
        assert!(poll_once(&mut b, &bw).is_ready());
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
        let elapsed = futures::executor::block_on(awaitkit::timeout(
            MS * 5,
            futures::future::pending::<()>(),
        ));
        assert!(elapsed.is_err(), "the default timer still fires");
        futures::executor::block_on(limiter.acquire());
    }
}

matrix! {
    /// The same attack from inside every executor: a hostile waiter whose
    /// waker panics on its first wake (on the timer's thread), then ordinary
    /// waiters, then a default-timer timeout.
    async fn default_timer_panicking_waker_on_every_executor() {
        let limiter = RateLimiter::new(1, MS * 10);
        limiter.try_acquire().unwrap();
        let evil = panics_on_wake();
        let mut hostile = Hostile { inner: limiter.acquire(), evil: evil.clone() };
        assert!(futures::poll!(&mut hostile).is_pending());
        limiter.acquire().await; // served after the hostile one
        assert_eq!(evil.wakes(), 1);
        hostile.await; // its task was woken before the waker panicked
        limiter.acquire().await;
        let elapsed = awaitkit::timeout(MS * 2, futures::future::pending::<()>()).await;
        assert!(elapsed.is_err(), "the default timer still fires");
        assert_eq!(limiter.waiting(), 0);
    }

    /// Waiters whose wakers panic on every wake, polled from several tasks
    /// at once on a GCRA limiter: the others are all served.
    async fn hostile_and_ordinary_waiters_together() {
        let limiter = RateLimiter::gcra(500, SEC, 1);
        let served = AtomicUsize::new(0);
        awaitkit::gather((0..12).map(|i| {
            let (limiter, served) = (&limiter, &served);
            async move {
                if i % 3 == 0 {
                    // Its first wake panics after forwarding the wake-up.
                    let hostile = Hostile { inner: limiter.acquire(), evil: panics_on_wake() };
                    hostile.await;
                } else {
                    limiter.acquire().await;
                }
                served.fetch_add(1, Ordering::SeqCst);
            }
        }))
        .await;
        assert_eq!(served.load(Ordering::SeqCst), 12);
        assert_eq!(limiter.waiting(), 0);
    }
}

// ---------------------------------------------------------------------------
// Item 6: no user code under the limiter's locks
// ---------------------------------------------------------------------------

guarded! {
    /// A waker whose drop calls back into the limiter: dropped on cancel,
    /// and on a re-poll with another waker.
    fn waker_drop_that_reenters_the_limiter() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let reenter = {
            let limiter = limiter.clone();
            move || {
                let _ = limiter.try_acquire();
                let _ = limiter.waiting();
                let _ = format!("{limiter:?}");
            }
        };
        let evil = Evil { on_drop: Some(Box::new(reenter.clone())), ..Evil::default() }.into_arc();
        // Cancel.
        let mut a = limiter.acquire();
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        let drops = evil.drops();
        drop(a);
        assert!(evil.drops() > drops, "the queued waker was dropped");
        // Re-poll with a new waker: the old one is dropped.
        let mut b = limiter.acquire();
        assert!(poll_with(&mut b, &evil_waker(&evil)).is_pending());
        let bw = CountingWaker::new();
        let drops = evil.drops();
        assert!(poll_once(&mut b, &bw).is_pending());
        assert!(evil.drops() > drops, "the replaced waker was dropped");
        clock.advance(SEC);
        assert!(poll_once(&mut b, &bw).is_ready());
        // set_quota from a drop.
        let setter = {
            let limiter = limiter.clone();
            move || limiter.set_quota(window(2, SEC)).unwrap()
        };
        let evil = Evil { on_drop: Some(Box::new(setter)), ..Evil::default() }.into_arc();
        let mut c = limiter.acquire();
        assert!(poll_with(&mut c, &evil_waker(&evil)).is_pending());
        drop(c);
        assert_eq!(limiter.quota(), window(2, SEC));
    }

    /// A waker whose clone calls back into the limiter (the limiter clones
    /// the waker of a queued waiter's re-poll).
    fn waker_clone_that_reenters_the_limiter() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let reenter = {
            let limiter = limiter.clone();
            move || {
                let _ = limiter.try_acquire();
                let _ = limiter.waiting();
            }
        };
        let evil = Evil { on_clone: Some(Box::new(reenter)), ..Evil::default() }.into_arc();
        let aw = CountingWaker::new();
        let mut a = limiter.acquire();
        assert!(poll_once(&mut a, &aw).is_pending());
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        assert!(evil.clones.load(Ordering::SeqCst) >= 1);
        clock.advance(SEC);
        assert_eq!(evil.wakes(), 1);
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
    }

    /// A waker whose wake calls back into the limiter: acquires, polls a new
    /// acquire, changes the quota.
    fn waker_wake_that_reenters_the_limiter() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let reenter = {
            let limiter = limiter.clone();
            move || {
                let _ = limiter.try_acquire();
                let mut other = limiter.acquire();
                let _ = poll_once(&mut other, &CountingWaker::new());
                limiter.set_quota(window(1, SEC)).unwrap();
            }
        };
        let evil = Evil { on_wake: Some(Box::new(reenter)), ..Evil::default() }.into_arc();
        let mut a = limiter.acquire();
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        clock.advance(SEC);
        assert_eq!(evil.wakes(), 1);
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
        clock.advance(SEC);
        assert_eq!(limiter.try_acquire(), Ok(()));
    }

    /// A `Debug` writer that calls back into the limiter.
    fn debug_writes_with_no_lock_held() {
        struct Writer<'a>(&'a dyn Fn(), String);
        impl std::fmt::Write for Writer<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                (self.0)();
                self.1.push_str(s);
                Ok(())
            }
        }
        let limiter = RateLimiter::new(1, SEC);
        let keyed = KeyedRateLimiter::new(1, SEC);
        keyed.try_acquire("k").unwrap();
        let reenter = || {
            let _ = limiter.waiting();
            let _ = keyed.len();
        };
        let mut w = Writer(&reenter, String::new());
        std::fmt::write(&mut w, format_args!("{limiter:?} {keyed:?}")).unwrap();
        assert!(w.1.contains("RateLimiter") && w.1.contains("KeyedRateLimiter"), "{}", w.1);
    }

    /// `KeyedRateLimiter::set_quota` wakes the waiters it lets through with
    /// the key map's lock released: their wakers may use the keyed limiter.
    fn keyed_set_quota_wakes_with_no_lock_held() {
        let clock = ManualClock::new();
        let keyed = Arc::new(KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock.clone()));
        keyed.try_acquire("a").unwrap();
        let reenter = {
            let keyed = keyed.clone();
            move || {
                let _ = keyed.try_acquire("b");
                let _ = keyed.len();
                let _ = keyed.evict_idle();
            }
        };
        let evil = Evil { on_wake: Some(Box::new(reenter)), ..Evil::default() }.into_arc();
        let mut a = keyed.acquire("a");
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        keyed.set_quota(window(2, SEC)).unwrap();
        assert_eq!(evil.wakes(), 1);
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
        // The waker took one of b's two calls.
        assert_eq!(keyed.try_acquire("b"), Ok(()));
        assert_eq!(keyed.try_acquire("b"), Err(RateLimitError::RateLimited { wait: SEC }));
    }

    /// A keyed waiter's waker whose drop calls back into the same key.
    fn keyed_waker_drop_that_reenters() {
        let clock = ManualClock::new();
        let keyed = Arc::new(KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock.clone()));
        keyed.try_acquire("a").unwrap();
        let reenter = {
            let keyed = keyed.clone();
            move || {
                let _ = keyed.try_acquire("a");
                let _ = keyed.set_quota(window(1, SEC));
            }
        };
        let evil = Evil { on_drop: Some(Box::new(reenter)), ..Evil::default() }.into_arc();
        let mut a = keyed.acquire("a");
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        let drops = evil.drops();
        drop(a);
        assert!(evil.drops() > drops);
        let bw = CountingWaker::new();
        let mut b = keyed.acquire("a");
        assert!(poll_once(&mut b, &bw).is_pending());
        clock.advance(SEC);
        assert!(poll_once(&mut b, &bw).is_ready());
    }

    /// A keyed waiter's waker that panics on the timer path: the key keeps
    /// serving, and so do the other keys.
    fn keyed_panicking_waker_does_not_wedge_its_key() {
        let clock = ManualClock::new();
        let keyed = KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock.clone());
        keyed.try_acquire("a").unwrap();
        keyed.try_acquire("b").unwrap();
        let evil = panics_on_wake();
        let mut a = keyed.acquire("a");
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_pending());
        let (aw, bw) = (CountingWaker::new(), CountingWaker::new());
        let mut a2 = keyed.acquire("a");
        let mut b = keyed.acquire("b");
        assert!(poll_once(&mut a2, &aw).is_pending());
        assert!(poll_once(&mut b, &bw).is_pending());
        assert_eq!(panic_of(|| clock.advance(SEC)), None);
        assert!(poll_once(&mut b, &bw).is_ready());
        assert!(poll_with(&mut a, &evil_waker(&evil)).is_ready());
        clock.advance(SEC);
        assert!(poll_once(&mut a2, &aw).is_ready());
        // A quota change whose wake panics still reaches every key.
        let evil = panics_on_wake();
        let mut a3 = keyed.acquire("a");
        assert!(poll_with(&mut a3, &evil_waker(&evil)).is_pending());
        let raised = panic_of(|| keyed.set_quota(window(3, SEC)).unwrap());
        assert!(raised.is_some());
        assert_eq!(keyed.quota(), window(3, SEC));
        assert_eq!(keyed.try_acquire_n("b", 2), Ok(()), "b has the new quota too");
        assert!(poll_with(&mut a3, &evil_waker(&evil)).is_ready());
    }
}

// ---------------------------------------------------------------------------
// The k-th call, cancellation after every poll
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Wake,
    Clone,
    Drop,
}

/// Five waiters on a limiter of two per second, each polled with a fresh
/// waker on one hostile `Evil` (so every re-poll clones the new waker and
/// drops the old); `op` panics at its `k`-th call. With `cancel`, every
/// other waiter is dropped right after its first poll. Every poll, drop and
/// advance may panic; afterwards an ordinary waiter must be served and
/// `try_acquire` recover.
fn kth_call_attack(quota: Quota, op: Op, k: usize, cancel: bool) {
    let (clock, limiter) = manual(quota);
    limiter.try_acquire_n(2).unwrap();
    let mut evil = Evil::default();
    match op {
        Op::Wake => evil.wake_panics_at = k,
        Op::Clone => evil.clone_panics_at = k,
        Op::Drop => evil.drop_panics_at = k,
    }
    let evil = evil.into_arc();
    // Distinct wakers on the same `Evil` would compare equal; alternate
    // with a second one so each re-poll really swaps wakers.
    let twin = Evil {
        wake_panics_at: 0,
        ..Evil::default()
    }
    .into_arc();
    let mut waiters: Vec<Option<_>> = (0..5).map(|_| Some(limiter.acquire())).collect();
    let mut ready = [false; 5];
    for round in 0..12 {
        for (i, slot) in waiters.iter_mut().enumerate() {
            let Some(w) = slot.as_mut() else { continue };
            if ready[i] {
                continue;
            }
            let waker = if (round + i) % 2 == 0 {
                evil_waker(&evil)
            } else {
                evil_waker(&twin)
            };
            let mut polled = None;
            let panicked = panic_of(|| polled = Some(poll_with(w, &waker)));
            let _ = panic_of(move || drop(waker));
            if polled.is_some_and(|p| p.is_ready()) {
                ready[i] = true;
            }
            let _ = panicked;
            if cancel && round == 0 && i % 2 == 1 {
                let w = slot.take();
                let _ = panic_of(move || drop(w));
            }
        }
        let _ = panic_of(|| match clock.next_deadline() {
            Some(next) => clock.advance_to(next),
            None => clock.advance(SEC),
        });
    }
    let what = format!("{quota:?} {op:?} k={k} cancel={cancel}");
    // Every surviving hostile waiter was served in 12 rounds (6 periods).
    for (i, slot) in waiters.iter().enumerate() {
        if slot.is_some() {
            assert!(ready[i], "{what}: waiter {i} never served");
        }
    }
    let _ = panic_of(move || drop(waiters));
    // An ordinary waiter is served, and try_acquire recovers.
    let w = CountingWaker::new();
    let mut last = limiter.acquire();
    if poll_once(&mut last, &w).is_pending() {
        advance_until(&clock, 10, || w.wakes() > 0);
        assert!(poll_once(&mut last, &w).is_ready(), "{what}");
    }
    clock.advance(SEC * 2);
    assert_eq!(limiter.try_acquire(), Ok(()), "{what}");
    assert_eq!(limiter.waiting(), 0, "{what}");
}

guarded! {
    fn kth_wake_clone_or_drop_panics_never_wedge() {
        for quota in [window(2, SEC), gcra(2, SEC)] {
            for op in [Op::Wake, Op::Clone, Op::Drop] {
                for k in 1..=6 {
                    for cancel in [false, true] {
                        kth_call_attack(quota, op, k, cancel);
                    }
                }
            }
        }
    }

    /// Hostile and ordinary waiters on four threads, with wakers panicking
    /// at random calls and acquires dropped after a random number of polls,
    /// on the real default timer: every ordinary waiter is served, and the
    /// limiter and the timer thread work afterwards.
    fn hostile_waiters_on_threads() {
        use rand::{Rng, SeedableRng};
        let limiter = Arc::new(RateLimiter::new(8, MS * 4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                    for _ in 0..40 {
                        if rng.gen_bool(0.5) {
                            futures::executor::block_on(limiter.acquire());
                            continue;
                        }
                        let mut evil = Evil::default();
                        match rng.gen_range(0..3) {
                            0 => evil.wake_panics_at = rng.gen_range(1..3),
                            1 => evil.clone_panics_at = rng.gen_range(1..3),
                            _ => evil.drop_panics_at = rng.gen_range(1..3),
                        }
                        // Alternating with a benign twin, so re-polls swap
                        // wakers (clone the new, drop the old).
                        let pair = [evil.into_arc(), Evil::default().into_arc()];
                        let polls = rng.gen_range(0..4);
                        let mut a = limiter.acquire();
                        for p in 0..polls {
                            let waker = evil_waker(&pair[p % 2]);
                            let _ = panic_of(|| {
                                let _ = poll_with(&mut a, &waker);
                            });
                            let _ = panic_of(move || drop(waker));
                            std::thread::sleep(Duration::from_micros(300));
                        }
                        let _ = panic_of(move || drop(a));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(limiter.waiting(), 0);
        futures::executor::block_on(async {
            for _ in 0..10 {
                limiter.acquire().await;
            }
            let elapsed = awaitkit::timeout(MS, futures::future::pending::<()>()).await;
            assert!(elapsed.is_err());
        });
    }
}

guarded! {
    /// Hostile and ordinary waiters on four threads sharing two keys of a
    /// `KeyedRateLimiter`, with a fifth thread changing the quota: every
    /// ordinary waiter is served, and both keys work afterwards.
    fn keyed_hostile_waiters_on_threads() {
        use rand::{Rng, SeedableRng};
        let keyed = Arc::new(KeyedRateLimiter::new(8, MS * 4));
        let stop = Arc::new(AtomicBool::new(false));
        let setter = {
            let (keyed, stop) = (keyed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 8;
                while !stop.load(Ordering::SeqCst) {
                    calls = if calls == 8 { 6 } else { 8 };
                    let _ = panic_of(|| keyed.set_quota(window(calls, MS * 4)).unwrap());
                    std::thread::sleep(MS);
                }
            })
        };
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let keyed = keyed.clone();
                std::thread::spawn(move || {
                    let key = t % 2;
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(t + 100);
                    for _ in 0..30 {
                        if rng.gen_bool(0.5) {
                            futures::executor::block_on(keyed.acquire(key)).unwrap();
                            continue;
                        }
                        let mut evil = Evil::default();
                        match rng.gen_range(0..3) {
                            0 => evil.wake_panics_at = rng.gen_range(1..3),
                            1 => evil.clone_panics_at = rng.gen_range(1..3),
                            _ => evil.drop_panics_at = rng.gen_range(1..3),
                        }
                        let pair = [evil.into_arc(), Evil::default().into_arc()];
                        let mut a = keyed.acquire(key);
                        for p in 0..rng.gen_range(0..4) {
                            let waker = evil_waker(&pair[p % 2]);
                            let _ = panic_of(|| {
                                let _ = poll_with(&mut a, &waker);
                            });
                            let _ = panic_of(move || drop(waker));
                            std::thread::sleep(Duration::from_micros(300));
                        }
                        let _ = panic_of(move || drop(a));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        setter.join().unwrap();
        let max = keyed.quota().max_calls();
        for key in 0..2 {
            futures::executor::block_on(keyed.acquire(key)).unwrap();
            assert_eq!(
                keyed.try_acquire_n(key, 100),
                Err(RateLimitError::ExceedsQuota { requested: 100, max }),
                "key {key} has the last quota"
            );
        }
    }

    /// Quota changes from two threads race the creation of new keys: every
    /// key ends with the keyed limiter's last quota (changes are applied
    /// with the map's lock released, numbered so none is undone by an older
    /// one).
    fn keyed_concurrent_quota_changes_end_with_the_last_everywhere() {
        for round in 0..20 {
            let clock = ManualClock::new();
            let keyed = Arc::new(KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock));
            let go = Arc::new(AtomicBool::new(false));
            let setters: Vec<_> = (0..2usize)
                .map(|s| {
                    let (keyed, go) = (keyed.clone(), go.clone());
                    std::thread::spawn(move || {
                        while !go.load(Ordering::SeqCst) {
                            std::hint::spin_loop();
                        }
                        for i in 0..50 {
                            keyed.set_quota(window(2 + (s * 50 + i) % 7, SEC)).unwrap();
                        }
                    })
                })
                .collect();
            let creator = {
                let (keyed, go) = (keyed.clone(), go.clone());
                std::thread::spawn(move || {
                    go.store(true, Ordering::SeqCst);
                    for key in 0..100 {
                        let _ = keyed.try_acquire(key);
                    }
                })
            };
            creator.join().unwrap();
            for s in setters {
                s.join().unwrap();
            }
            let max = keyed.quota().max_calls();
            for key in 0..100 {
                assert_eq!(
                    keyed.try_acquire_n(key, 100),
                    Err(RateLimitError::ExceedsQuota { requested: 100, max }),
                    "round {round}, key {key}"
                );
            }
        }
    }
}

/// The hostile-waiter attack on `timer`'s own thread: a waiter whose waker
/// panics on its first wake (after forwarding it), then ordinary waiters,
/// then a timeout on the same timer.
async fn hostile_waiter_on<T>(timer: T)
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    let limiter = RateLimiter::with_quota(window(1, MS * 10)).with_timer(timer.clone());
    limiter.try_acquire().unwrap();
    let evil = panics_on_wake();
    let mut hostile = Hostile {
        inner: limiter.acquire(),
        evil: evil.clone(),
    };
    assert!(futures::poll!(&mut hostile).is_pending());
    limiter.acquire().await;
    assert_eq!(evil.wakes(), 1);
    hostile.await;
    limiter.acquire().await;
    let elapsed = awaitkit::timeout(MS * 2, futures::future::pending::<()>())
        .with_timer(timer)
        .await;
    assert!(elapsed.is_err(), "the timer still fires");
}

#[cfg(feature = "tokio")]
guarded! {
    /// tokio's time driver runs the limiter's timer: a panicking waker must
    /// not take the runtime down.
    fn tokio_timer_driver_survives_a_panicking_waker() {
        use awaitkit::time::TokioTimer;
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(hostile_waiter_on(TokioTimer));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { tokio::spawn(hostile_waiter_on(TokioTimer)).await.unwrap() });
    }
}

#[cfg(feature = "async-io")]
guarded! {
    /// async-io's reactor thread runs the limiter's timer: a panicking waker
    /// must not kill it.
    fn async_io_reactor_survives_a_panicking_waker() {
        use awaitkit::time::AsyncIoTimer;
        smol::block_on(hostile_waiter_on(AsyncIoTimer));
        smol::block_on(hostile_waiter_on(AsyncIoTimer));
    }
}

guarded! {
    /// The timer panics while arming for a waiter that is then
    /// `mem::forget`-ten: nobody will poll it again, so `try_acquire` must
    /// recover the stalled driver itself (the forgotten grant is wasted, as
    /// for any forgotten acquire).
    fn try_acquire_recovers_a_stalled_driver_with_a_forgotten_waiter() {
        for quota in [window(1, SEC), gcra(1, SEC)] {
            let (clock, broken, limiter) = flaky(quota);
            limiter.try_acquire().unwrap();
            let mut a = limiter.acquire();
            broken.store(true, Ordering::SeqCst);
            let polled = panic_of(|| {
                let _ = poll_once(&mut a, &CountingWaker::new());
            });
            assert_eq!(polled.as_deref(), Some("flaky timer"));
            std::mem::forget(a);
            broken.store(false, Ordering::SeqCst);
            assert!(limiter.try_acquire().is_err(), "{quota:?}: the forgotten waiter is first");
            assert!(clock.next_deadline().is_some(), "{quota:?}: try_acquire re-armed the driver");
            clock.advance(SEC); // the forgotten waiter's turn (wasted)
            assert_eq!(limiter.waiting(), 0, "{quota:?}");
            clock.advance(SEC);
            assert_eq!(limiter.try_acquire(), Ok(()), "{quota:?}");
        }
    }
}

/// Where [`Fragile`] panics (once armed with [`Fragile::arm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SleepUntil = 1,
    Reset,
    Poll,
    Drop,
}

/// A timer on a `ManualClock` that panics once at the chosen place.
#[derive(Clone)]
struct Fragile {
    clock: ManualClock,
    fault: Arc<AtomicUsize>,
}

impl Fragile {
    fn arm(&self, fault: Fault) {
        self.fault.store(fault as usize, Ordering::SeqCst);
    }
    fn trip(&self, at: Fault) {
        let armed = self
            .fault
            .compare_exchange(at as usize, 0, Ordering::SeqCst, Ordering::SeqCst);
        assert!(armed.is_err(), "fragile timer: {at:?}");
    }
}

struct FragileSleep {
    inner: ManualSleep,
    timer: Fragile,
}

impl Future for FragileSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.trip(Fault::Poll);
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl Drop for FragileSleep {
    fn drop(&mut self) {
        self.timer.trip(Fault::Drop);
    }
}

impl Timer for Fragile {
    type Sleep = FragileSleep;
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> FragileSleep {
        self.trip(Fault::SleepUntil);
        FragileSleep {
            inner: self.clock.sleep_until(deadline),
            timer: self.clone(),
        }
    }
    fn reset(&self, mut sleep: Pin<&mut FragileSleep>, deadline: Instant) {
        self.trip(Fault::Reset);
        self.clock.reset(Pin::new(&mut sleep.inner), deadline)
    }
}

guarded! {
    /// The timer panics once — creating, moving, polling or dropping the
    /// driver's sleep — while a quota change re-arms it for a waiting head
    /// (and, for the drop, while the last waiter leaves): the panic
    /// propagates from that call, the waiters are woken, and all are served
    /// in order afterwards.
    fn timer_panicking_anywhere_never_wedges_the_limiter() {
        for fault in [Fault::SleepUntil, Fault::Reset, Fault::Poll, Fault::Drop] {
            for quota in [window(1, SEC), gcra(1, SEC)] {
                let clock = ManualClock::new();
                let timer = Fragile { clock: clock.clone(), fault: Arc::new(AtomicUsize::new(0)) };
                let limiter = RateLimiter::with_quota(quota).with_timer(timer.clone());
                let what = format!("{fault:?} {quota:?}");
                limiter.try_acquire().unwrap();
                let (aw, bw) = (CountingWaker::new(), CountingWaker::new());
                let (mut a, mut b) = (limiter.acquire(), limiter.acquire());
                if fault == Fault::SleepUntil {
                    // The only sleep is created when a's poll first arms.
                    timer.arm(fault);
                    let polled = panic_of(|| assert!(poll_once(&mut a, &aw).is_pending()));
                    assert_eq!(polled.as_deref(), Some("fragile timer: SleepUntil"));
                } else {
                    assert!(poll_once(&mut a, &aw).is_pending());
                }
                assert!(poll_once(&mut b, &bw).is_pending());
                // A slower quota moves a's time: the driver re-arms. The
                // fault trips once, wherever the timer is next used that way
                // (here, or on the timer's path, or in a poll).
                timer.arm(fault);
                if fault == Fault::SleepUntil {
                    timer.fault.store(0, Ordering::SeqCst);
                }
                let changed = panic_of(|| {
                    let slower = match quota.burst() {
                        None => window(1, SEC * 2),
                        Some(_) => gcra(1, SEC * 2),
                    };
                    limiter.set_quota(slower).unwrap();
                });
                if changed.is_some() {
                    assert!(aw.wakes() >= 1 && bw.wakes() >= 1, "{what}: the stalled driver woke the waiters");
                }
                // Both are served, in order, whoever drives next (here the
                // waiters, re-polled as their wake-ups ask).
                let (mut a_done, mut b_done) = (false, false);
                advance_until(&clock, 20, || {
                    let _ = panic_of(|| b_done = b_done || poll_once(&mut b, &bw).is_ready());
                    let _ = panic_of(|| a_done = a_done || poll_once(&mut a, &aw).is_ready());
                    assert!(a_done || !b_done, "{what}: FIFO");
                    a_done && b_done
                });
                assert_eq!(limiter.waiting(), 0, "{what}");
                assert_eq!(timer.fault.load(Ordering::SeqCst), 0, "{what}: the fault tripped");
                advance_until(&clock, 10, || limiter.try_acquire().is_ok());
            }
        }
    }
}

guarded! {
    /// The waiter is granted while the limiter clones its new waker (the
    /// clone raises the quota), then the now unneeded clone's drop panics:
    /// the poll propagates that panic, and the next poll returns the grant
    /// (not "polled after it completed"); dropping instead gives it back.
    /// Both on a first poll (behind another waiter) and on a re-poll.
    fn granted_waiter_whose_waker_drop_panics_still_completes() {
        for (repoll, then_drop) in [(false, false), (false, true), (true, false), (true, true)] {
            let what = format!("repoll={repoll} then_drop={then_drop}");
            let (_clock, limiter) = manual(window(1, SEC));
            limiter.try_acquire().unwrap();
            let head_w = CountingWaker::new();
            let mut head = limiter.acquire();
            assert!(poll_once(&mut head, &head_w).is_pending());
            let raise = {
                let limiter = limiter.clone();
                move || limiter.set_quota(window(3, SEC)).unwrap()
            };
            let evil = Evil {
                on_clone: Some(Box::new(raise)),
                drop_panics_at: 1,
                ..Evil::default()
            }
            .into_arc();
            let mut a = limiter.acquire();
            if repoll {
                assert!(poll_once(&mut a, &CountingWaker::new()).is_pending());
            }
            let waker = evil_waker(&evil);
            let polled = panic_of(|| {
                let _ = poll_with(&mut a, &waker);
            });
            assert_eq!(polled.as_deref(), Some("assertion `left != right` failed: evil drop #1\n  left: 1\n right: 1"), "{what}");
            assert_eq!(head_w.wakes(), 1, "{what}");
            assert!(poll_once(&mut head, &head_w).is_ready(), "{what}");
            if then_drop {
                drop(a);
                // a's grant came back: 3 calls in this window, 2 taken.
                assert_eq!(limiter.try_acquire(), Ok(()), "{what}");
            } else {
                assert_eq!(poll_with(&mut a, &waker), Poll::Ready(()), "{what}");
            }
            assert!(limiter.try_acquire().is_err(), "{what}");
            assert_eq!(limiter.waiting(), 0, "{what}");
        }
    }
}

// ---------------------------------------------------------------------------
// Regressions from an adversarial review (each failed before its fix)
// ---------------------------------------------------------------------------

/// Minimal reproductions, each under a short watchdog of its own, so a
/// hang is a failure, not a stuck run.
mod review_regressions {
    use awaitkit::rate_limiter::{Quota, RateLimitError};
    use awaitkit::time::{ManualClock, ManualSleep, Timer};
    use awaitkit::{KeyedRateLimiter, RateLimiter};
    use std::future::Future;
    use std::hash::{Hash, Hasher};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock, mpsc};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    const SEC: Duration = Duration::from_secs(1);

    /// Runs `f` on its own thread; fails if it takes longer than `secs`.
    fn within<R: Send + 'static>(
        secs: u64,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = f();
                let _ = tx.send(());
                r
            })
            .unwrap();
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("watchdog: `{name}` hung for {secs} s (deadlock or endless loop)")
            }
        }
    }

    fn noop_waker() -> Waker {
        Waker::noop().clone()
    }

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(&noop_waker()))
    }

    // ---------------------------------------------------------------------------
    // A panicking `Hash` of one key lost *other* keys' limiters
    // ---------------------------------------------------------------------------

    /// A key whose `Hash` panics once each time it is `armed`.
    #[derive(Clone, Debug)]
    struct HKey {
        id: u32,
        hostile: Option<Arc<AtomicBool>>,
    }

    impl HKey {
        fn good(id: u32) -> HKey {
            HKey { id, hostile: None }
        }
    }

    impl Hash for HKey {
        fn hash<H: Hasher>(&self, h: &mut H) {
            if let Some(armed) = &self.hostile {
                // Once per arming: the next rehash hashes it and panics.
                assert!(!armed.swap(false, Ordering::SeqCst), "hostile hash");
            }
            self.id.hash(h);
        }
    }

    impl PartialEq for HKey {
        fn eq(&self, other: &HKey) -> bool {
            self.id == other.id
        }
    }
    impl Eq for HKey {}

    /// Silences the panic hook for the expected panics of `f`.
    fn quietly<R>(f: impl FnOnce() -> R) -> R {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let msg = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
                let smsg = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .unwrap_or("");
                if !(msg.contains("hostile") || smsg.contains("hostile")) {
                    // Not one of ours: report it.
                    default(info);
                }
            }));
        });
        f()
    }

    /// A keyed limiter (one call per 10 s) whose keys churn like a per-client
    /// limiter's: each round moves the clock 10 s, grants 20 long-lived keys
    /// once each, then 100 new keys (idle, hence swept, a round later). One
    /// more key, held by an acquire so it is never evicted, has a `Hash` that
    /// panics once per round. hashbrown hashes every key when it rehashes:
    /// growing the table is panic-safe, but the *in-place* rehash that clears
    /// the tombstones the sweeps leave drops every entry it has not rehashed
    /// yet when the hasher panics. The innocent keys' limiters are gone, and
    /// the next call for such a key — in the same instant as its grant — gets a
    /// fresh limiter and a second grant.
    ///
    /// hashbrown's table layout follows `RandomState`, so the test runs 60
    /// fresh limiters (before the fix, about one in three hit an in-place rehash
    /// within 60 rounds). Fixed by hashing each key once, before locking, and
    /// keying the map by that hash.
    #[test]
    fn a_panicking_key_hash_never_loses_other_keys_limiters() {
        within(120, "keyed_panicking_hash", || {
            quietly(|| {
                const P: Duration = Duration::from_secs(10);
                let mut rehash_panics = 0;
                for map in 0..60 {
                    let clock = ManualClock::new();
                    let keyed = KeyedRateLimiter::with_quota(Quota::window(1, P).unwrap())
                        .with_timer(clock.clone());
                    let armed = Arc::new(AtomicBool::new(false));
                    let hostile = HKey {
                        id: u32::MAX,
                        hostile: Some(armed.clone()),
                    };
                    let _hold = keyed.acquire(hostile); // held: never evicted
                    let mut next = 1000u32;
                    for round in 0..60 {
                        clock.advance(P);
                        armed.store(true, Ordering::SeqCst);
                        let mut granted = Vec::new();
                        for id in 0..20 {
                            match catch_unwind(AssertUnwindSafe(|| {
                                keyed.try_acquire(HKey::good(id))
                            })) {
                                Ok(r) => {
                                    assert_eq!(r, Ok(()), "map {map} round {round}: key {id} idle");
                                    granted.push(id);
                                }
                                Err(_) => rehash_panics += 1,
                            }
                        }
                        for _ in 0..100 {
                            let id = next;
                            next += 1;
                            if catch_unwind(AssertUnwindSafe(|| keyed.try_acquire(HKey::good(id))))
                                .is_err()
                            {
                                rehash_panics += 1;
                            }
                        }
                        armed.store(false, Ordering::SeqCst);
                        let twice: Vec<u32> = granted
                            .iter()
                            .copied()
                            .filter(|&id| keyed.try_acquire(HKey::good(id)).is_ok())
                            .collect();
                        assert!(
                            twice.is_empty(),
                            "map {map} round {round}: keys {twice:?} granted twice in the same instant \
                         on a quota of 1 per {P:?} — their limiters were dropped when another key's \
                         Hash panicked during an in-place rehash ({} keys left in the map)",
                            keyed.len()
                        );
                    }
                }
                // The hostile key was hashed once, when it was first used: the map
                // keeps hashes, and never calls a key's `Hash` again.
                assert_eq!(rehash_panics, 0, "the map hashed a key again");
            })
        });
    }

    // ---------------------------------------------------------------------------
    // GCRA give-back was ABA-prone after a quota change
    // ---------------------------------------------------------------------------

    /// GCRA, burst 1: never two grants at the same instant. W1 is granted at
    /// t = 2 s but not yet polled; the rate is raised (its owed time is
    /// rescaled down); W2 is granted at t = 3 s and observed; then W1 is
    /// dropped. Its give-back finds the arrival time equal to the value its own
    /// grant wrote (W2's grant happens to end at the same value) and restores
    /// the value before W1 — erasing W2's grant too. `try_acquire` at
    /// t = 3 s was then granted: two grants at one instant with a burst of 1.
    /// Fixed: a grant records the limiter's quota-change count, and is not
    /// given back once the quota has changed.
    #[test]
    fn gcra_give_back_after_a_rate_raise_never_erases_a_later_grant() {
        within(10, "gcra_aba", || {
            let clock = ManualClock::new();
            let limiter = RateLimiter::with_quota(Quota::gcra(1, SEC * 2, 1).unwrap())
                .with_timer(clock.clone());
            limiter.try_acquire().unwrap(); // t = 0
            let mut w1 = limiter.acquire();
            assert!(poll(&mut w1).is_pending());
            clock.advance(SEC * 2); // W1 granted at t = 2 s, unseen
            assert_eq!(limiter.waiting(), 0);
            limiter.set_quota(Quota::gcra(1, SEC, 1).unwrap()).unwrap();
            let mut w2 = limiter.acquire();
            assert!(poll(&mut w2).is_pending());
            clock.advance(SEC); // t = 3 s
            assert!(poll(&mut w2).is_ready(), "W2 granted at t = 3 s");
            drop(w1); // gives W1's grant back
            let again = limiter.try_acquire();
            assert!(
                matches!(again, Err(RateLimitError::RateLimited { .. })),
                "a second grant at t = 3 s with burst 1: W1's give-back erased W2's grant ({again:?})"
            );
        });
    }

    // ---------------------------------------------------------------------------
    // The timer's `now` ran under the limiter's state lock
    // ---------------------------------------------------------------------------

    type Hook = Box<dyn Fn() + Send + Sync>;

    /// A `ManualClock` whose `now` runs a hook once armed (a timer that logs,
    /// or reads something that reads the limiter).
    #[derive(Clone)]
    struct Hooked {
        clock: ManualClock,
        hook: Arc<OnceLock<Hook>>,
        armed: Arc<AtomicBool>,
    }

    impl Timer for Hooked {
        type Sleep = ManualSleep;
        fn now(&self) -> Instant {
            if self.armed.swap(false, Ordering::SeqCst) {
                if let Some(hook) = self.hook.get() {
                    hook();
                }
            }
            self.clock.now()
        }
        fn sleep_until(&self, deadline: Instant) -> ManualSleep {
            self.clock.sleep_until(deadline)
        }
        fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
            self.clock.reset(sleep, deadline)
        }
    }

    /// The type docs say the limiter runs none of its user code — "the wakers
    /// of its waiters … and its timer" — while holding its own lock. But
    /// `poll_acquire`, the driver's pass, `is_idle` and `set_quota` read
    /// `Timer::now` under the state lock: a timer whose `now` looked at the
    /// limiter (here `waiting()`, or its `Debug`) deadlocked the first poll.
    /// Fixed: the clock is read before locking.
    #[test]
    fn a_timer_whose_now_calls_back_into_the_limiter_never_deadlocks() {
        within(5, "timer_now_under_lock", || {
            let timer = Hooked {
                clock: ManualClock::new(),
                hook: Arc::new(OnceLock::new()),
                armed: Arc::new(AtomicBool::new(false)),
            };
            let limiter: &'static RateLimiter<Hooked> = crate::keep_alive(Box::new(
                RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(timer.clone()),
            ));
            let _ = timer.hook.set(Box::new(move || {
                let _ = limiter.waiting();
            }));
            limiter.try_acquire().unwrap(); // read before the lock: fine
            timer.armed.store(true, Ordering::SeqCst);
            assert!(limiter.try_acquire().is_err()); // also fine
            timer.armed.store(true, Ordering::SeqCst);
            let mut a = limiter.acquire();
            let _ = poll(&mut a); // now_locked: now() under the state lock
        });
    }

    /// Every site that reads the clock, with a `now` that calls back into
    /// the limiter each time: polls, the driver's passes (on the timer's
    /// path), cancellation, `set_quota` (GCRA rescales at the current
    /// time), and a keyed limiter's sweeps and `evict_idle`.
    #[test]
    fn a_timer_whose_now_always_calls_back_never_deadlocks() {
        within(10, "timer_now_always_calls_back", || {
            for quota in [
                Quota::window(1, SEC).unwrap(),
                Quota::gcra(1, SEC, 1).unwrap(),
            ] {
                let timer = Hooked {
                    clock: ManualClock::new(),
                    hook: Arc::new(OnceLock::new()),
                    armed: Arc::new(AtomicBool::new(false)),
                };
                let limiter: &'static RateLimiter<Hooked> = crate::keep_alive(Box::new(
                    RateLimiter::with_quota(quota).with_timer(timer.clone()),
                ));
                let armed = timer.armed.clone();
                let _ = timer.hook.set(Box::new(move || {
                    armed.store(true, Ordering::SeqCst); // every call
                    let _ = limiter.waiting();
                    let _ = format!("{limiter:?}");
                }));
                timer.armed.store(true, Ordering::SeqCst);
                limiter.try_acquire().unwrap();
                let mut a = limiter.acquire();
                let mut b = limiter.acquire();
                assert!(poll(&mut a).is_pending());
                assert!(poll(&mut b).is_pending());
                timer.clock.advance(SEC); // the driver's pass
                assert!(poll(&mut a).is_ready());
                drop(b);
                let faster = match quota.burst() {
                    Some(_) => Quota::gcra(2, SEC, 1).unwrap(),
                    None => Quota::window(2, SEC).unwrap(),
                };
                limiter.set_quota(faster).unwrap();
                let mut c = limiter.acquire();
                if poll(&mut c).is_pending() {
                    timer.clock.advance(SEC);
                    assert!(poll(&mut c).is_ready());
                }
            }
            let timer = Hooked {
                clock: ManualClock::new(),
                hook: Arc::new(OnceLock::new()),
                armed: Arc::new(AtomicBool::new(false)),
            };
            let keyed: &'static KeyedRateLimiter<u32, Hooked> = crate::keep_alive(Box::new(
                KeyedRateLimiter::with_quota(Quota::window(1, SEC).unwrap())
                    .with_timer(timer.clone()),
            ));
            let armed = timer.armed.clone();
            let _ = timer.hook.set(Box::new(move || {
                armed.store(true, Ordering::SeqCst);
                let _ = keyed.len();
                let _ = format!("{keyed:?}");
            }));
            timer.armed.store(true, Ordering::SeqCst);
            for id in 0..70 {
                keyed.try_acquire(id).unwrap(); // the 65th sweeps
            }
            timer.clock.advance(SEC);
            for id in 100..170 {
                keyed.try_acquire(id).unwrap();
            }
            assert!(keyed.len() < 140, "the sweep evicted the idle keys");
            timer.clock.advance(SEC);
            assert!(keyed.evict_idle() > 0);
            keyed.set_quota(Quota::window(2, SEC).unwrap()).unwrap();
        });
    }

    // ---------------------------------------------------------------------------
    // A timer that fires early made the driver spin synchronously
    // ---------------------------------------------------------------------------

    /// A timer on a `ManualClock` whose sleeps complete up to one tick early
    /// (a coarse backend that rounds deadlines down to its tick). The `Timer`
    /// contract tolerates early completion: awaitkit "re-checks now() when a
    /// sleep completes and sleeps again if it fired early". `fixed` turns the
    /// rounding off (to end the spin once measured); `sleeps` counts the
    /// sleeps created.
    #[derive(Clone)]
    struct Coarse {
        clock: ManualClock,
        fixed: Arc<AtomicBool>,
        sleeps: Arc<std::sync::atomic::AtomicUsize>,
    }

    const TICK: Duration = Duration::from_millis(1);

    impl Coarse {
        fn early(&self, deadline: Instant) -> Instant {
            if self.fixed.load(Ordering::SeqCst) {
                deadline
            } else {
                deadline - TICK
            }
        }
    }

    impl Timer for Coarse {
        type Sleep = ManualSleep;
        fn now(&self) -> Instant {
            self.clock.now()
        }
        fn sleep_until(&self, deadline: Instant) -> ManualSleep {
            self.sleeps.fetch_add(1, Ordering::SeqCst);
            self.clock.sleep_until(self.early(deadline))
        }
        fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
            self.clock.reset(sleep, self.early(deadline))
        }
    }

    /// Runs `scenario` on its own thread for up to a second, then counts the
    /// sleeps the limiter created meanwhile (a handful when it behaves).
    fn spin_probe(
        name: &str,
        scenario: impl FnOnce(RateLimiter<Coarse>, ManualClock) + Send + 'static,
    ) {
        let clock = ManualClock::new();
        let timer = Coarse {
            clock: clock.clone(),
            fixed: Arc::new(AtomicBool::new(false)),
            sleeps: Arc::default(),
        };
        let limiter =
            RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(timer.clone());
        let (tx, rx) = mpsc::channel();
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                scenario(limiter, clock);
                let _ = tx.send(());
            })
            .unwrap();
        let finished = rx.recv_timeout(SEC).is_ok();
        let sleeps = timer.sleeps.load(Ordering::SeqCst);
        timer.fixed.store(true, Ordering::SeqCst); // ends the spin
        t.join().unwrap();
        assert!(
            finished && sleeps < 100,
            "{name}: the driver was still looping after 1 s and had created {sleeps} sleeps \
             (poll_deadline's 'yield' wakes the driver's own waker, a note on its running \
             flag, so Flag::run passes again at once: a synchronous busy loop until the \
             deadline)"
        );
    }

    /// The head is due at t = 1 s; the coarse sleep fires at 999 ms, on the
    /// timer's path (`advance`). `poll_deadline` re-arms twice (each new sleep
    /// is already due), then "yields" by waking its waker — the driver itself:
    /// `advance` never returned (with a real clock: a busy loop on the timer's
    /// thread until the deadline). Fixed: the driver arms its own sleeps, a
    /// little later after each early completion, and never wakes itself.
    #[test]
    fn an_early_firing_timer_never_spins_the_driver_on_the_timer_path() {
        spin_probe("early_timer_timer_path", |limiter, clock| {
            limiter.try_acquire().unwrap();
            let mut a = limiter.acquire();
            assert!(poll(&mut a).is_pending());
            clock.advance(SEC - TICK); // the sleep fires one tick early
        });
    }

    /// The same loop inside a user's poll: the first waiter's poll arms the
    /// driver less than a tick before its time.
    #[test]
    fn an_early_firing_timer_never_spins_inside_the_first_poll() {
        spin_probe("early_timer_first_poll", |limiter, clock| {
            limiter.try_acquire().unwrap();
            clock.advance(SEC - TICK / 2);
            let mut a = limiter.acquire();
            assert!(poll(&mut a).is_pending());
        });
    }

    // ---------------------------------------------------------------------------
    // A key whose Drop panicked leaked its limiter (never evicted)
    // ---------------------------------------------------------------------------

    /// A key whose `Drop` panics while `armed`.
    #[derive(Debug)]
    struct DKey {
        id: u32,
        armed: Arc<AtomicBool>,
    }

    impl Hash for DKey {
        fn hash<H: Hasher>(&self, h: &mut H) {
            self.id.hash(h);
        }
    }
    impl PartialEq for DKey {
        fn eq(&self, o: &DKey) -> bool {
            self.id == o.id
        }
    }
    impl Eq for DKey {}
    impl Drop for DKey {
        fn drop(&mut self) {
            if self.armed.load(Ordering::SeqCst) && !std::thread::panicking() {
                panic!("hostile key drop");
            }
        }
    }

    /// `limiter()` finds the key and `return`s a clone of its `Arc` from
    /// inside the block; the `key` argument is dropped after the return value
    /// is built, and when that `Drop` panics, rustc leaks the return value
    /// (rust-lang/rust#47949, still open). The key's limiter then has a strong
    /// count that never comes back to 1: it is never evicted, however idle —
    /// memory that leaks once per panic (SPEC 1.5, "nothing leaks"). Fixed:
    /// the key is dropped explicitly, before the limiter is returned.
    #[test]
    fn a_panicking_key_drop_never_leaks_the_keys_limiter() {
        within(10, "keyed_key_drop_leak", || {
            quietly(|| {
                let clock = ManualClock::new();
                let keyed = KeyedRateLimiter::with_quota(Quota::window(1, SEC).unwrap())
                    .with_timer(clock.clone());
                let armed = Arc::new(AtomicBool::new(false));
                let key = |id| DKey {
                    id,
                    armed: armed.clone(),
                };
                keyed.try_acquire(key(1)).unwrap(); // this key moves into the map
                armed.store(true, Ordering::SeqCst);
                let r = catch_unwind(AssertUnwindSafe(|| keyed.try_acquire(key(1))));
                assert!(r.is_err(), "the argument's drop panicked");
                armed.store(false, Ordering::SeqCst);
                clock.advance(SEC * 10); // long idle
                let evicted = keyed.evict_idle();
                assert_eq!(
                    (evicted, keyed.len()),
                    (1, 0),
                    "the idle key was not evicted: its limiter's Arc leaked when the key's Drop panicked"
                );
            })
        });
    }

    // ---------------------------------------------------------------------------
    // A key's Drop panic inside a sweep hit an unrelated caller
    // ---------------------------------------------------------------------------

    /// The automatic sweep (run by the call that adds the 65th key) drops the
    /// evicted keys inside `HashMap::retain`, under the map lock. A key whose
    /// `Drop` panics there aborts the sweep and the insert, and the panic comes
    /// out of `try_acquire` for an unrelated, well-behaved key (which is not
    /// created). The `# Panics` docs of `KeyedRateLimiter` only mention wakers.
    /// (During that unwind the evicted limiters are dropped before the map's
    /// guard — under the lock — contrary to the `limiter()` comment.) Fixed:
    /// evicted keys are moved out and dropped after unlocking, their panics
    /// contained.
    #[test]
    fn a_panicking_key_drop_in_a_sweep_never_reaches_an_unrelated_caller() {
        within(10, "keyed_drop_in_sweep", || {
            quietly(|| {
                let clock = ManualClock::new();
                let keyed = KeyedRateLimiter::with_quota(Quota::window(1, SEC).unwrap())
                    .with_timer(clock.clone());
                let armed = Arc::new(AtomicBool::new(false));
                let bad = Arc::new(AtomicBool::new(false));
                keyed
                    .try_acquire(DKey {
                        id: 0,
                        armed: bad.clone(),
                    })
                    .unwrap();
                for id in 1..64 {
                    keyed
                        .try_acquire(DKey {
                            id,
                            armed: armed.clone(),
                        })
                        .unwrap();
                }
                clock.advance(SEC); // all idle
                bad.store(true, Ordering::SeqCst);
                let r = catch_unwind(AssertUnwindSafe(|| {
                    keyed.try_acquire(DKey {
                        id: 1000,
                        armed: armed.clone(),
                    })
                }));
                bad.store(false, Ordering::SeqCst);
                assert!(
                    r.is_ok(),
                    "try_acquire for the well-behaved key 1000 panicked with key 0's Drop"
                );
            })
        });
    }

    /// A key whose `Hash` panics from some point on (its state went bad) makes
    /// every *new* key panic: the table cannot grow without rehashing it, and
    /// the sweep that could drop it runs only once the map has doubled, which
    /// it now never does. The well-behaved keys' callers were wedged out until
    /// someone called `evict_idle` by hand. Fixed with the cached hashes.
    #[test]
    fn a_key_whose_hash_keeps_panicking_never_blocks_new_keys() {
        within(10, "keyed_hash_blocks_new_keys", || {
            quietly(|| {
                let clock = ManualClock::new();
                let keyed = KeyedRateLimiter::with_quota(Quota::window(1, SEC).unwrap())
                    .with_timer(clock.clone());
                let armed = Arc::new(AtomicBool::new(false));
                #[derive(Debug)]
                struct PKey(u32, Option<Arc<AtomicBool>>);
                impl Hash for PKey {
                    fn hash<H: Hasher>(&self, h: &mut H) {
                        if let Some(a) = &self.1 {
                            assert!(!a.load(Ordering::SeqCst), "hostile hash");
                        }
                        self.0.hash(h);
                    }
                }
                impl PartialEq for PKey {
                    fn eq(&self, o: &PKey) -> bool {
                        self.0 == o.0
                    }
                }
                impl Eq for PKey {}
                keyed.try_acquire(PKey(0, Some(armed.clone()))).unwrap();
                keyed.try_acquire(PKey(1, None)).unwrap();
                keyed.try_acquire(PKey(2, None)).unwrap();
                armed.store(true, Ordering::SeqCst);
                clock.advance(SEC * 60); // key 0 is long idle
                let failed = (100..200)
                    .filter(|&id| {
                        catch_unwind(AssertUnwindSafe(|| keyed.try_acquire(PKey(id, None))))
                            .is_err()
                    })
                    .count();
                assert_eq!(
                    failed, 0,
                    "{failed} of 100 new well-behaved keys panicked (map can never grow)"
                );
            })
        });
    }
}

// ---------------------------------------------------------------------------
// Randomized attacks from an adversarial review
// ---------------------------------------------------------------------------

/// Hostile wakers (panicking at their k-th wake/clone/drop, or calling back
/// into the limiter: try_acquire, set_quota, a new acquire, dropping another
/// acquire), cancellation and `mem::forget` at random polls, set_quota
/// racing the driver, spurious timer wake-ups on other threads; on a
/// `ManualClock`, every grant time is recorded exactly and the window
/// property (and FIFO among cleanly queued waiters) is checked after the
/// attack. Every probe runs under a watchdog.
mod review_stress {
    use awaitkit::rate_limiter::{Quota, RateLimitError};
    use awaitkit::time::{ManualClock, ManualSleep, Timer};
    use awaitkit::{KeyedRateLimiter, RateAcquireN, RateLimiter};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::future::Future;
    use std::hash::{Hash, Hasher};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex, mpsc};
    use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
    use std::time::{Duration, Instant};

    const MS: Duration = Duration::from_millis(1);

    fn within<R: Send + 'static>(
        secs: u64,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .stack_size(16 << 20)
            .spawn(move || {
                let r = f();
                let _ = tx.send(());
                r
            })
            .unwrap();
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "watchdog: `{name}` hung for {secs} s (deadlock, lost wake-up or endless loop)"
                )
            }
        }
    }

    /// Silences the panic hook for the injected panics (messages with "evil").
    fn quiet() {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let p = info.payload();
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("");
                if !msg.contains("evil") {
                    default(info);
                }
            }));
        });
    }

    fn caught<R>(f: impl FnOnce() -> R) -> Option<R> {
        catch_unwind(AssertUnwindSafe(f)).ok()
    }

    // ---------------------------------------------------------------------------
    // A hostile waker
    // ---------------------------------------------------------------------------

    type Hook = Box<dyn Fn() + Send + Sync>;

    #[derive(Default)]
    struct Evil {
        wake_at: usize,
        clone_at: usize,
        drop_at: usize,
        on_wake: Option<Hook>,
        on_clone: Option<Hook>,
        on_drop: Option<Hook>,
        wakes: AtomicUsize,
        clones: AtomicUsize,
        drops: AtomicUsize,
        /// Where a wake records the clock's time (the time of a grant: the
        /// limiter wakes a queued waiter only when it settles it).
        stamp: Option<(ManualClock, Arc<Mutex<Vec<Instant>>>)>,
    }

    static VTABLE: RawWakerVTable = RawWakerVTable::new(v_clone, v_wake, v_wake_by_ref, v_drop);

    unsafe fn v_clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Evil>` (see
        // `waker_of`) and this waker still owns its count.
        let evil = unsafe { &*data.cast::<Evil>() };
        let k = evil.clones.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(h) = &evil.on_clone {
            h();
        }
        assert!(k != evil.clone_at, "evil clone #{k}");
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Evil>` (see
        // `waker_of`) and the clone takes a count of its own.
        unsafe { Arc::increment_strong_count(data.cast::<Evil>()) };
        RawWaker::new(data, &VTABLE)
    }
    unsafe fn v_wake(data: *const ()) {
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Evil>` (see
        // `waker_of`) and `wake` consumes this waker's count.
        let evil = unsafe { Arc::from_raw(data.cast::<Evil>()) };
        evil.wake();
    }
    unsafe fn v_wake_by_ref(data: *const ()) {
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Evil>` (see
        // `waker_of`) and this waker still owns its count.
        unsafe { &*data.cast::<Evil>() }.wake();
    }
    unsafe fn v_drop(data: *const ()) {
        // SAFETY: `data` comes from `Arc::into_raw` of an `Arc<Evil>` (see
        // `waker_of`) and `drop` consumes this waker's count.
        let evil = unsafe { Arc::from_raw(data.cast::<Evil>()) };
        let k = evil.drops.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(h) = &evil.on_drop {
            h();
        }
        assert!(k != evil.drop_at, "evil drop #{k}");
    }

    impl Evil {
        fn wake(&self) {
            if let Some((clock, slot)) = &self.stamp {
                slot.lock().unwrap().push(clock.now());
            }
            let k = self.wakes.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(h) = &self.on_wake {
                h();
            }
            assert!(k != self.wake_at, "evil wake #{k}");
        }
    }

    fn waker_of(evil: &Arc<Evil>) -> Waker {
        let data = Arc::into_raw(evil.clone()).cast::<()>();
        // SAFETY: `data` owns one count of an `Arc<Evil>`, which is what
        // every function of `VTABLE` expects.
        unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
    }

    fn poll_with<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(w))
    }

    // ---------------------------------------------------------------------------
    // The property checks
    // ---------------------------------------------------------------------------

    /// No window `[t, t + period)` holds more than `max` grants.
    fn check_window(grants: &[(Instant, u64)], period: Duration, max: u64, what: &str) {
        let mut g = grants.to_vec();
        g.sort_by_key(|&(t, _)| t);
        for (i, &(t, _)) in g.iter().enumerate() {
            let n: u64 = g[i..]
                .iter()
                .take_while(|&&(u, _)| u < t + period)
                .map(|&(_, n)| n)
                .sum();
            assert!(
                n <= max,
                "{what}: {n} grants in the window starting at grant #{i} ({max} allowed): {:?}",
                g[i..]
                    .iter()
                    .take_while(|&&(u, _)| u < t + period)
                    .map(|&(u, n)| (u - g[0].0, n))
                    .collect::<Vec<_>>()
            );
        }
    }

    // ---------------------------------------------------------------------------
    // A timer that also wakes the driver spuriously, from another thread
    // ---------------------------------------------------------------------------

    /// A `ManualClock` whose sleeps remember their latest waker, so a chaos
    /// thread can wake the driver at any moment (a spurious timer wake-up, on
    /// the timer's "thread"), racing everything else at a constant time.
    ///
    /// With `flaky` set to `k > 0`, about one timer call in `k` (creating,
    /// moving, polling or dropping a sleep) panics, like `TokioTimer` outside a
    /// runtime.
    #[derive(Clone)]
    struct Chaos {
        clock: ManualClock,
        wakers: Arc<Mutex<Vec<Waker>>>,
        flaky: Arc<AtomicUsize>,
        dice: Arc<AtomicUsize>,
    }

    static TIMER_PANICS: AtomicUsize = AtomicUsize::new(0);

    impl Chaos {
        fn new(clock: &ManualClock) -> Chaos {
            Chaos {
                clock: clock.clone(),
                wakers: Arc::default(),
                flaky: Arc::default(),
                dice: Arc::default(),
            }
        }

        fn maybe_panic(&self, what: &str) {
            let k = self.flaky.load(Ordering::SeqCst);
            if k > 0 && !std::thread::panicking() {
                let roll = self
                    .dice
                    .fetch_add(1, Ordering::SeqCst)
                    .wrapping_mul(2654435761)
                    >> 7;
                if roll % k == 0 {
                    TIMER_PANICS.fetch_add(1, Ordering::SeqCst);
                    panic!("evil timer: {what}");
                }
            }
        }
    }

    struct ChaosSleep {
        inner: ManualSleep,
        wakers: Arc<Mutex<Vec<Waker>>>,
        timer: Chaos,
    }

    impl Drop for ChaosSleep {
        fn drop(&mut self) {
            self.timer.maybe_panic("drop");
        }
    }

    impl Future for ChaosSleep {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.timer.maybe_panic("poll");
            {
                let mut w = self.wakers.lock().unwrap();
                if w.len() > 8 {
                    w.remove(0);
                }
                w.push(cx.waker().clone());
            }
            Pin::new(&mut self.inner).poll(cx)
        }
    }

    impl Timer for Chaos {
        type Sleep = ChaosSleep;
        fn now(&self) -> Instant {
            self.clock.now()
        }
        fn sleep_until(&self, deadline: Instant) -> ChaosSleep {
            self.maybe_panic("sleep_until");
            ChaosSleep {
                inner: self.clock.sleep_until(deadline),
                wakers: self.wakers.clone(),
                timer: self.clone(),
            }
        }
        fn reset(&self, mut sleep: Pin<&mut ChaosSleep>, deadline: Instant) {
            self.maybe_panic("reset");
            self.clock.reset(Pin::new(&mut sleep.inner), deadline)
        }
    }

    impl Chaos {
        fn poke(&self) {
            let wakers: Vec<Waker> = self.wakers.lock().unwrap().clone();
            for w in wakers {
                w.wake_by_ref();
            }
        }
    }

    // ---------------------------------------------------------------------------
    // Observing grants at their exact time
    // ---------------------------------------------------------------------------

    /// The wakes of one acquire's wakers, with the clock's time of each. The
    /// limiter wakes a queued waiter only when it settles it (no timer panics
    /// here, so no stall wake-ups), so the first wake after the start of the
    /// last poll that returned `Pending` is the grant's — even when the grant
    /// happened after that poll, in the same instant, and is seen only after
    /// the clock moved.
    #[derive(Default)]
    struct Obs {
        wakes: Arc<Mutex<Vec<Instant>>>,
        floor: usize,
    }

    impl Obs {
        fn evil(&self, clock: &ManualClock, mut e: Evil) -> Arc<Evil> {
            e.stamp = Some((clock.clone(), self.wakes.clone()));
            Arc::new(e)
        }

        /// One poll; `None` if it panicked. A ready outcome comes with the time
        /// of its grant.
        fn poll<F: Future + Unpin>(
            &mut self,
            f: &mut F,
            w: &Waker,
            clock: &ManualClock,
        ) -> Option<Poll<(F::Output, Instant)>> {
            let k = self.wakes.lock().unwrap().len();
            let r = caught(|| poll_with(f, w))?;
            Some(match r {
                Poll::Pending => {
                    self.floor = k;
                    Poll::Pending
                }
                Poll::Ready(out) => {
                    let at = self.wakes.lock().unwrap().get(self.floor).copied();
                    Poll::Ready((out, at.unwrap_or_else(|| clock.now())))
                }
            })
        }
    }

    type Acq = RateAcquireN<'static, Chaos>;
    type Log = Arc<Mutex<Vec<(Instant, u64)>>>;

    /// A hostile `Evil`: panics at a random k-th wake, clone or drop, and may
    /// call back into the limiter from each of them.
    fn hostile(
        rng: &mut SmallRng,
        limiter: &'static RateLimiter<Chaos>,
        pool: &Arc<Mutex<Vec<Acq>>>,
        log: &Log,
        quotas: [Quota; 2],
    ) -> Evil {
        let mut e = Evil::default();
        match rng.gen_range(0..4) {
            0 => e.wake_at = rng.gen_range(1..4),
            1 => e.clone_at = rng.gen_range(1..4),
            2 => e.drop_at = rng.gen_range(1..4),
            _ => {}
        }
        let mk = |rng: &mut SmallRng| -> Option<Hook> {
            let (pool, log) = (pool.clone(), log.clone());
            match rng.gen_range(0..6) {
                0 => Some(Box::new(move || {
                    if limiter.try_acquire().is_ok() {
                        log.lock().unwrap().push((limiter.timer().now(), 1));
                    }
                })),
                1 => {
                    let q = quotas[rng.gen_range(0..2)];
                    Some(Box::new(move || {
                        let _ = limiter.set_quota(q);
                    }))
                }
                2 => Some(Box::new(move || {
                    // A new acquire, polled once, parked in the pool.
                    let mut a = limiter.acquire_n(1);
                    match poll_with(&mut a, &Waker::noop().clone()) {
                        Poll::Ready(Ok(())) => log.lock().unwrap().push((limiter.timer().now(), 1)),
                        Poll::Ready(Err(_)) => {}
                        Poll::Pending => {
                            let rejected = match pool.try_lock() {
                                Ok(mut p) => {
                                    p.push(a);
                                    None
                                }
                                Err(_) => Some(a),
                            };
                            drop(rejected);
                        }
                    }
                })),
                3 => Some(Box::new(move || {
                    // Drop another acquire (our own lock released first).
                    let taken = pool.try_lock().ok().and_then(|mut p| p.pop());
                    drop(taken);
                })),
                _ => None,
            }
        };
        e.on_wake = mk(rng);
        e.on_clone = mk(rng);
        e.on_drop = mk(rng);
        e
    }

    // ---------------------------------------------------------------------------
    // Single-threaded random attack with re-entrant hooks
    // ---------------------------------------------------------------------------

    struct Tracked {
        id: usize,
        n: u64,
        fut: Option<Acq>,
        wakers: [Arc<Evil>; 3], // two hostile, one calm (for re-polls)
        obs: Obs,
        /// Its place is known: its first poll returned Pending with no panic.
        queued_cleanly: bool,
        done: bool,
    }

    impl Tracked {
        /// Polls with a hostile waker; after a panic, re-polls with the calm
        /// one until an outcome is known. Records a grant in `log`.
        fn observe(&mut self, rng: &mut SmallRng, clock: &ManualClock, log: &Log) -> bool {
            let Some(fut) = self.fut.as_mut() else {
                return false;
            };
            let w = waker_of(&self.wakers[rng.gen_range(0..2)]);
            let mut r = self.obs.poll(fut, &w, clock);
            let _ = caught(move || drop(w));
            let calm = waker_of(&self.wakers[2]);
            for _ in 0..8 {
                if r.is_some() {
                    break;
                }
                r = self.obs.poll(fut, &calm, clock);
            }
            match r.expect("re-polls keep panicking") {
                Poll::Ready((res, at)) => {
                    self.done = true;
                    if res.is_ok() {
                        log.lock().unwrap().push((at, self.n));
                    }
                    true
                }
                Poll::Pending => false,
            }
        }
    }

    /// Calm re-polls until a whole sweep sees no wake-up: a stalled driver
    /// wakes every waiter without settling it, and such a wake must not be
    /// taken for a grant's.
    fn settle(live: &mut [Tracked], clock: &ManualClock, log: &Log) {
        for _ in 0..40 {
            let wakes = |live: &[Tracked]| -> usize {
                live.iter().map(|t| t.obs.wakes.lock().unwrap().len()).sum()
            };
            let before = wakes(live);
            for t in live.iter_mut().filter(|t| !t.done) {
                let calm = waker_of(&t.wakers[2]);
                let fut = t.fut.as_mut().unwrap();
                if let Some(Poll::Ready((res, at))) = t.obs.poll(fut, &calm, clock) {
                    t.done = true;
                    if res.is_ok() {
                        log.lock().unwrap().push((at, t.n));
                    }
                }
            }
            if wakes(live) == before {
                return;
            }
        }
    }

    fn single_threaded_attack(seed: u64, gcra: bool) {
        single_threaded_attack_with(seed, gcra, 0)
    }

    fn single_threaded_attack_with(seed: u64, gcra: bool, flaky: usize) {
        quiet();
        let mut rng = SmallRng::seed_from_u64(seed);
        let period = MS * 100;
        let quotas = if gcra {
            let q = Quota::gcra(3, period, 2).unwrap();
            [q, q]
        } else {
            [
                Quota::window(2, period).unwrap(),
                Quota::window(3, period).unwrap(),
            ]
        };
        let bound = if gcra { 2 + 3 - 1 } else { 3 };
        let clock = ManualClock::new();
        let timer = Chaos::new(&clock);
        timer.flaky.store(flaky, Ordering::SeqCst);
        let limiter: &'static RateLimiter<Chaos> = crate::keep_alive(Box::new(
            RateLimiter::with_quota(quotas[1]).with_timer(timer.clone()),
        ));
        let pool: Arc<Mutex<Vec<Acq>>> = Arc::default();
        let log: Log = Arc::default();
        let mut live: Vec<Tracked> = Vec::new();
        let mut next_id = 0;
        let mut order: Vec<usize> = Vec::new(); // ids queued cleanly, in order
        let mut gone: std::collections::HashSet<usize> = Default::default();
        let what = format!("seed {seed} gcra {gcra}");

        for _step in 0..400 {
            match rng.gen_range(0..10) {
                0..=2 => {
                    let n = rng.gen_range(1..=3);
                    let obs = Obs::default();
                    let wakers = [
                        obs.evil(&clock, hostile(&mut rng, limiter, &pool, &log, quotas)),
                        obs.evil(&clock, hostile(&mut rng, limiter, &pool, &log, quotas)),
                        obs.evil(&clock, Evil::default()),
                    ];
                    let mut t = Tracked {
                        id: next_id,
                        n,
                        fut: Some(limiter.acquire_n(n as usize)),
                        wakers,
                        obs,
                        queued_cleanly: false,
                        done: false,
                    };
                    next_id += 1;
                    let fut = t.fut.as_mut().unwrap();
                    let w = waker_of(&t.wakers[0]);
                    let r = t.obs.poll(fut, &w, &clock);
                    let _ = caught(move || drop(w));
                    match r {
                        Some(Poll::Pending) => {
                            t.queued_cleanly = true;
                            order.push(t.id);
                        }
                        Some(Poll::Ready((res, at))) => {
                            t.done = true;
                            if res.is_ok() {
                                log.lock().unwrap().push((at, n));
                            }
                        }
                        None => {
                            let _ = t.observe(&mut rng, &clock, &log);
                        }
                    }
                    live.push(t);
                }
                3 => {
                    if !live.is_empty() {
                        let t = live.swap_remove(rng.gen_range(0..live.len()));
                        gone.insert(t.id);
                        let _ = caught(move || drop(t.fut));
                    }
                }
                4 => {
                    if !live.is_empty() {
                        let mut t = live.swap_remove(rng.gen_range(0..live.len()));
                        gone.insert(t.id);
                        std::mem::forget(t.fut.take()); // granted (wasted) at its turn
                    }
                }
                5 => {
                    if caught(|| limiter.try_acquire_n(1)) == Some(Ok(())) {
                        log.lock().unwrap().push((clock.now(), 1));
                    }
                }
                6 => {
                    let q = quotas[rng.gen_range(0..2)];
                    let _ = caught(|| limiter.set_quota(q));
                }
                7 => {
                    let _ = caught(|| timer.poke());
                }
                _ => {
                    let _ = caught(|| match clock.next_deadline() {
                        Some(d) if rng.gen_bool(0.7) => clock.advance_to(d),
                        _ => clock.advance(MS * rng.gen_range(1..60)),
                    });
                }
            }
            for t in live.iter_mut() {
                if !t.done {
                    t.observe(&mut rng, &clock, &log);
                }
            }
            if flaky > 0 {
                settle(&mut live, &clock, &log);
            }
            // FIFO: a cleanly queued waiter is never settled while one queued
            // cleanly before it still waits. A waiter polled early in the sweep
            // may have been settled by user code run later in it: on a
            // suspected violation, re-poll everyone with calm wakers until
            // nothing changes (a calm waker replaces the hostile ones once,
            // then no user code runs), and check again.
            let fifo = |live: &Vec<Tracked>| -> Option<String> {
                let mut first_waiting = None;
                for &id in &order {
                    let Some(t) = live.iter().find(|t| t.id == id) else {
                        continue;
                    };
                    if !t.done {
                        first_waiting.get_or_insert(id);
                    } else if let Some(w) = first_waiting {
                        let tw = live.iter().find(|t| t.id == w).unwrap();
                        return Some(format!(
                            "{what}: FIFO: #{id} (n={}) settled while #{w} (n={}), queued before it, still waits",
                            t.n, tw.n
                        ));
                    }
                }
                None
            };
            if fifo(&live).is_some() {
                for _ in 0..4 {
                    for t in live.iter_mut().filter(|t| !t.done) {
                        let calm = waker_of(&t.wakers[2]);
                        let fut = t.fut.as_mut().unwrap();
                        if let Some(Poll::Ready((res, at))) = t.obs.poll(fut, &calm, &clock) {
                            t.done = true;
                            if res.is_ok() {
                                log.lock().unwrap().push((at, t.n));
                            }
                        }
                    }
                }
                if let Some(violation) = fifo(&live) {
                    panic!("{violation}");
                }
            }
            live.retain(|t| {
                if t.done {
                    gone.insert(t.id);
                }
                !t.done
            });
            order.retain(|id| !gone.contains(id));
        }
        // Wind down: drop the parked acquires, then everyone is served.
        timer.flaky.store(0, Ordering::SeqCst);
        let parked = std::mem::take(&mut *pool.lock().unwrap());
        let _ = caught(move || drop(parked));
        for _ in 0..600 {
            for t in live.iter_mut() {
                if !t.done {
                    t.observe(&mut rng, &clock, &log);
                }
            }
            live.retain(|t| !t.done);
            if live.is_empty() && limiter.waiting() == 0 {
                break;
            }
            let _ = caught(|| match clock.next_deadline() {
                Some(d) => clock.advance_to(d),
                None => clock.advance(period),
            });
        }
        assert!(
            live.is_empty(),
            "{what}: {} waiters never served",
            live.len()
        );
        if limiter.waiting() > 0 {
            // Only forgotten waiters are left, and nothing is armed (a timer
            // panic stalled the driver and nobody has called since): the next
            // caller must get the line moving again.
            let stuck = limiter.waiting();
            let armed = clock.next_deadline().is_some();
            let obs = Obs::default();
            let calm = obs.evil(&clock, Evil::default());
            let mut t = Tracked {
                id: usize::MAX,
                n: 1,
                fut: Some(limiter.acquire_n(1)),
                wakers: [calm.clone(), calm.clone(), calm],
                obs,
                queued_cleanly: true,
                done: false,
            };
            for _ in 0..200 {
                if t.observe(&mut rng, &clock, &log) {
                    break;
                }
                match clock.next_deadline() {
                    Some(d) => clock.advance_to(d),
                    None => clock.advance(period),
                }
            }
            assert!(
                t.done,
                "{what}: {stuck} forgotten waiters left (timer armed: {armed}); a new acquire \
                 behind them is never served: the limiter is wedged"
            );
        }
        assert_eq!(limiter.waiting(), 0, "{what}");
        clock.advance(period * 2);
        assert_eq!(
            limiter.try_acquire(),
            Ok(()),
            "{what}: try_acquire recovers"
        );
        log.lock().unwrap().push((clock.now(), 1));
        let grants = log.lock().unwrap().clone();
        check_window(&grants, period, bound, &what);
    }

    fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
        if let Ok(v) = std::env::var("RL_SEEDS") {
            let (a, b) = v.split_once("..").unwrap();
            return (a.parse().unwrap()..b.parse().unwrap()).collect();
        }
        match std::env::var("RL_SEED") {
            Ok(v) => vec![v.parse().unwrap()],
            Err(_) => default.collect(),
        }
    }

    #[test]
    fn random_hostile_attack_window() {
        within(240, "random_hostile_attack_window", || {
            for seed in seeds(0..60) {
                single_threaded_attack(seed, false);
            }
        });
    }

    /// The same with a timer that panics in about one call in 5 (sleep
    /// creation, reset, poll, drop): stalls and recoveries from every caller.
    #[test]
    fn random_hostile_attack_with_a_flaky_timer() {
        within(240, "random_hostile_attack_flaky", || {
            for seed in seeds(200..240) {
                single_threaded_attack_with(seed, seed % 2 == 0, 5);
            }
            assert!(
                TIMER_PANICS.load(Ordering::SeqCst) > 100,
                "the timer hardly panicked"
            );
        });
    }

    #[test]
    fn random_hostile_attack_gcra() {
        within(240, "random_hostile_attack_gcra", || {
            for seed in seeds(100..160) {
                single_threaded_attack(seed, true);
            }
        });
    }

    // ---------------------------------------------------------------------------
    // Threads, in phases (the clock moves only while the workers and the chaos
    // thread are parked), with spurious driver wake-ups from a chaos thread
    // ---------------------------------------------------------------------------

    fn threaded_attack(seed: u64, gcra: bool) {
        threaded_attack_with(seed, gcra, 0)
    }

    /// With a flaky timer only liveness is checked (a stalled driver's wake-ups
    /// cannot be told from grants' across threads).
    fn threaded_attack_with(seed: u64, gcra: bool, flaky: usize) {
        quiet();
        let period = MS * 100;
        let quotas = if gcra {
            let q = Quota::gcra(4, period, 2).unwrap();
            [q, q]
        } else {
            [
                Quota::window(3, period).unwrap(),
                Quota::window(4, period).unwrap(),
            ]
        };
        let bound = if gcra { 2 + 4 - 1 } else { 4 };
        let clock = ManualClock::new();
        let timer = Chaos::new(&clock);
        timer.flaky.store(flaky, Ordering::SeqCst);
        let limiter: &'static RateLimiter<Chaos> = crate::keep_alive(Box::new(
            RateLimiter::with_quota(quotas[1]).with_timer(timer.clone()),
        ));
        let log: Log = Arc::default();
        const WORKERS: usize = 3;
        const ROUNDS: usize = 80;
        let barrier = Arc::new(Barrier::new(WORKERS + 1));
        let stop = Arc::new(AtomicBool::new(false));
        // Held by the chaos thread while it pokes, by the main thread while it
        // moves the clock: a spurious drive never straddles a clock change.
        let gate = Arc::new(Mutex::new(()));
        let chaos = {
            let (timer, stop, gate) = (timer.clone(), stop.clone(), gate.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    {
                        let _g = gate.lock().unwrap();
                        let _ = caught(|| timer.poke());
                    }
                    std::thread::yield_now();
                }
            })
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (barrier, log, clock) = (barrier.clone(), log.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed * 31 + w as u64);
                    let pool: Arc<Mutex<Vec<Acq>>> = Arc::default();
                    let mut mine: Vec<Tracked> = Vec::new();
                    let observe = |mine: &mut Vec<Tracked>, rng: &mut SmallRng| {
                        for t in mine.iter_mut() {
                            t.observe(rng, &clock, &log);
                        }
                        mine.retain(|t| !t.done);
                    };
                    for _ in 0..ROUNDS {
                        barrier.wait(); // phase A: act
                        for _ in 0..rng.gen_range(1..5) {
                            match rng.gen_range(0..8) {
                                0..=2 => {
                                    let n = rng.gen_range(1..=2);
                                    let obs = Obs::default();
                                    let wakers = [
                                        obs.evil(
                                            &clock,
                                            hostile(&mut rng, limiter, &pool, &log, quotas),
                                        ),
                                        obs.evil(
                                            &clock,
                                            hostile(&mut rng, limiter, &pool, &log, quotas),
                                        ),
                                        obs.evil(&clock, Evil::default()),
                                    ];
                                    mine.push(Tracked {
                                        id: 0,
                                        n,
                                        fut: Some(limiter.acquire_n(n as usize)),
                                        wakers,
                                        obs,
                                        queued_cleanly: false,
                                        done: false,
                                    });
                                }
                                3 if !mine.is_empty() => {
                                    let t = mine.swap_remove(rng.gen_range(0..mine.len()));
                                    let _ = caught(move || drop(t.fut));
                                }
                                4 if !mine.is_empty() && rng.gen_bool(0.3) => {
                                    let mut t = mine.swap_remove(rng.gen_range(0..mine.len()));
                                    std::mem::forget(t.fut.take());
                                }
                                5 if caught(|| limiter.try_acquire()) == Some(Ok(())) => {
                                    log.lock().unwrap().push((clock.now(), 1));
                                }
                                6 => {
                                    let q = quotas[rng.gen_range(0..2)];
                                    let _ = caught(|| limiter.set_quota(q));
                                }
                                _ => {}
                            }
                            observe(&mut mine, &mut rng);
                        }
                        barrier.wait(); // phase B: the clock moves
                        barrier.wait(); // phase C: observe
                        observe(&mut mine, &mut rng);
                    }
                    let parked = std::mem::take(&mut *pool.lock().unwrap());
                    let _ = caught(move || drop(parked));
                    for _ in 0..300 {
                        barrier.wait();
                        observe(&mut mine, &mut rng);
                        barrier.wait();
                    }
                    assert!(
                        mine.is_empty(),
                        "worker {w}: {} acquires never served",
                        mine.len()
                    );
                })
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let advance = |f: &dyn Fn()| {
            let _g = gate.lock().unwrap();
            let _ = caught(f);
        };
        for _ in 0..ROUNDS {
            barrier.wait();
            barrier.wait();
            let jump = rng.gen_bool(0.6);
            let by = MS * rng.gen_range(1..40);
            advance(&|| match clock.next_deadline() {
                Some(d) if jump => clock.advance_to(d),
                _ => clock.advance(by),
            });
            barrier.wait();
        }
        timer.flaky.store(0, Ordering::SeqCst);
        for _ in 0..300 {
            barrier.wait();
            barrier.wait();
            advance(&|| match clock.next_deadline() {
                Some(d) => clock.advance_to(d),
                None => clock.advance(period),
            });
        }
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        chaos.join().unwrap();
        let what = format!("threads seed {seed} gcra {gcra} flaky {flaky}");
        for _ in 0..50 {
            if limiter.waiting() == 0 {
                break;
            }
            let _ = limiter.try_acquire_n(0); // no-op
            if clock.next_deadline().is_none() {
                // Only forgotten waiters, and a stalled driver: any caller
                // gets the line moving (a try_acquire that finds waiters).
                assert!(limiter.try_acquire().is_err(), "{what}");
            }
            match clock.next_deadline() {
                Some(d) => clock.advance_to(d),
                None => clock.advance(period),
            }
        }
        assert_eq!(
            limiter.waiting(),
            0,
            "{what}: forgotten waiters never granted"
        );
        clock.advance(period * 2);
        assert_eq!(limiter.try_acquire(), Ok(()), "{what}");
        log.lock().unwrap().push((clock.now(), 1));
        if flaky == 0 {
            let grants = log.lock().unwrap().clone();
            check_window(&grants, period, bound, &what);
        }
    }

    #[test]
    fn threaded_hostile_attack_with_a_flaky_timer() {
        within(300, "threaded_hostile_attack_flaky", || {
            for seed in seeds(20..26) {
                threaded_attack_with(seed, seed % 2 == 0, 6);
            }
        });
    }

    #[test]
    fn threaded_hostile_attack_window() {
        within(300, "threaded_hostile_attack_window", || {
            for seed in seeds(0..6) {
                threaded_attack(seed, false);
            }
        });
    }

    #[test]
    fn threaded_hostile_attack_gcra() {
        within(300, "threaded_hostile_attack_gcra", || {
            for seed in seeds(10..16) {
                threaded_attack(seed, true);
            }
        });
    }

    // ---------------------------------------------------------------------------
    // Exact times after attacks: a benign tail served exactly on the window
    // ---------------------------------------------------------------------------

    /// After a cancelled head, a dropped-unseen grant, a forgotten waiter and a
    /// panicking waker on the timer path, the remaining waiters are granted at
    /// exactly the times the strict window allows.
    #[test]
    fn exact_grant_times_after_attacks() {
        within(20, "exact_grant_times_after_attacks", || {
            quiet();
            let p = MS * 100;
            let clock = ManualClock::new();
            let limiter =
                RateLimiter::with_quota(Quota::window(2, p).unwrap()).with_timer(clock.clone());
            let t0 = clock.now();
            limiter.try_acquire_n(2).unwrap(); // 2 at 0
            let noop = Waker::noop().clone();
            let mut a = limiter.acquire(); // due 100
            let mut b = limiter.acquire(); // due 100
            let mut c = limiter.acquire(); // due 200
            let mut d = limiter.acquire(); // due 200
            let mut e = limiter.acquire(); // due 300
            let evil = Arc::new(Evil {
                wake_at: 1,
                ..Evil::default()
            });
            assert!(poll_with(&mut a, &noop).is_pending());
            assert!(poll_with(&mut b, &waker_of(&evil)).is_pending());
            assert!(poll_with(&mut c, &noop).is_pending());
            assert!(poll_with(&mut d, &noop).is_pending());
            assert!(poll_with(&mut e, &noop).is_pending());
            drop(a); // the head leaves: b moves up
            clock.advance(p); // b granted at 100 (its wake panics on this path)
            assert_eq!(evil.wakes.load(Ordering::SeqCst), 1);
            // c too: the window holds 2 at 0 (expired at 100), b at 100: c fits.
            assert!(poll_with(&mut c, &noop).is_ready(), "c at 100");
            assert!(poll_with(&mut b, &noop).is_ready(), "b at 100");
            std::mem::forget(d); // granted at 200, wasted
            clock.advance(p - MS);
            assert!(poll_with(&mut e, &noop).is_pending(), "e not before 200");
            clock.advance(MS); // 200: d (forgotten) granted; e needs one more slot
            assert!(
                poll_with(&mut e, &noop).is_ready(),
                "e at 200 (b, c leave at 200)"
            );
            let mut f = limiter.acquire();
            assert!(poll_with(&mut f, &noop).is_pending());
            clock.advance(p - MS);
            assert!(poll_with(&mut f, &noop).is_pending(), "f not before 300");
            clock.advance(MS);
            assert!(poll_with(&mut f, &noop).is_ready(), "f at 300");
            assert_eq!(clock.now() - t0, p * 3);
            assert_eq!(
                limiter.try_acquire(),
                Ok(()),
                "d and e (200) left at 300: f and this"
            );
            assert!(limiter.try_acquire().is_err());
        });
    }

    /// A window grant taken by the driver and dropped unseen is given back, and
    /// the next waiter (armed for a later time) is granted at once.
    #[test]
    fn unseen_window_grant_is_given_back_to_the_next_waiter() {
        within(20, "unseen_given_back", || {
            let p = MS * 100;
            let clock = ManualClock::new();
            let limiter =
                RateLimiter::with_quota(Quota::window(1, p).unwrap()).with_timer(clock.clone());
            limiter.try_acquire().unwrap();
            let noop = Waker::noop().clone();
            let mut a = limiter.acquire();
            let mut b = limiter.acquire();
            assert!(poll_with(&mut a, &noop).is_pending());
            assert!(poll_with(&mut b, &noop).is_pending());
            clock.advance(p); // a granted at 100, unseen
            assert!(poll_with(&mut b, &noop).is_pending());
            drop(a);
            assert!(
                poll_with(&mut b, &noop).is_ready(),
                "b takes a's returned grant at 100"
            );
            assert!(limiter.try_acquire().is_err());
        });
    }

    // ---------------------------------------------------------------------------
    // KeyedRateLimiter: many keys, eviction, hostile key types
    // ---------------------------------------------------------------------------

    /// A key whose `Drop` (and optionally `Eq`) panics while `armed`.
    #[derive(Debug)]
    struct BadKey {
        id: u32,
        armed: Arc<AtomicBool>,
        bad: bool,
    }

    impl Clone for BadKey {
        fn clone(&self) -> BadKey {
            BadKey {
                id: self.id,
                armed: self.armed.clone(),
                bad: self.bad,
            }
        }
    }

    impl Hash for BadKey {
        fn hash<H: Hasher>(&self, h: &mut H) {
            self.id.hash(h);
        }
    }

    impl PartialEq for BadKey {
        fn eq(&self, o: &BadKey) -> bool {
            if (self.bad || o.bad) && self.armed.load(Ordering::SeqCst) && self.id % 3 == 0 {
                panic!("evil eq");
            }
            self.id == o.id
        }
    }
    impl Eq for BadKey {}

    impl Drop for BadKey {
        fn drop(&mut self) {
            if self.bad && self.armed.load(Ordering::SeqCst) && !std::thread::panicking() {
                panic!("evil key drop");
            }
        }
    }

    /// 300 keys (a third hostile: Drop panics, some Eq panics) churn through
    /// a keyed limiter with automatic and explicit sweeps; afterwards every
    /// good key still keeps its window exactly (per-key grant log), nothing is
    /// wedged, and the map does not leak keys.
    #[test]
    fn keyed_hostile_keys_and_eviction() {
        within(60, "keyed_hostile_keys_and_eviction", || {
            quiet();
            let p = MS * 100;
            let clock = ManualClock::new();
            let keyed = KeyedRateLimiter::with_quota(Quota::window(2, p).unwrap())
                .with_timer(clock.clone());
            let armed = Arc::new(AtomicBool::new(false));
            let key = |id: u32| BadKey {
                id,
                armed: armed.clone(),
                bad: id % 3 == 1,
            };
            let mut grants: HashMap<u32, Vec<(Instant, u64)>> = HashMap::new();
            let mut rng = SmallRng::seed_from_u64(7);
            let mut panics = 0;
            let noop = Waker::noop().clone();
            let mut held = Vec::new();
            for round in 0..300 {
                armed.store(round % 2 == 1, Ordering::SeqCst);
                for _ in 0..20 {
                    let id = rng.gen_range(0..300);
                    match rng.gen_range(0..3) {
                        0 | 1 => match caught(|| keyed.try_acquire(key(id))) {
                            Some(Ok(())) => grants.entry(id).or_default().push((clock.now(), 1)),
                            Some(Err(_)) => {}
                            None => panics += 1,
                        },
                        _ => {
                            if let Some(mut a) = caught(|| keyed.acquire(key(id))) {
                                match caught(|| poll_with(&mut a, &noop)) {
                                    Some(Poll::Ready(Ok(()))) => {
                                        grants.entry(id).or_default().push((clock.now(), 1))
                                    }
                                    Some(Poll::Pending) => held.push((id, a)),
                                    Some(Poll::Ready(Err(e))) => {
                                        panic!("an unbounded keyed acquire failed: {e}")
                                    }
                                    None => panics += 1,
                                }
                            } else {
                                panics += 1;
                            }
                        }
                    }
                }
                if round % 7 == 0 && caught(|| keyed.evict_idle()).is_none() {
                    panics += 1;
                }
                clock.advance(MS * rng.gen_range(5..40));
                held.retain_mut(|(id, a)| match caught(|| poll_with(a, &noop)) {
                    Some(Poll::Ready(Ok(()))) => {
                        grants.entry(*id).or_default().push((clock.now(), 1));
                        false
                    }
                    _ => true,
                });
            }
            armed.store(false, Ordering::SeqCst);
            for _ in 0..50 {
                if held.is_empty() {
                    break;
                }
                clock.advance(p);
                held.retain_mut(|(id, a)| match poll_with(a, &noop) {
                    Poll::Ready(Ok(())) => {
                        grants.entry(*id).or_default().push((clock.now(), 1));
                        false
                    }
                    Poll::Ready(Err(e)) => panic!("an unbounded keyed acquire failed: {e}"),
                    Poll::Pending => true,
                });
            }
            assert!(held.is_empty(), "{} keyed waiters never served", held.len());
            for (id, g) in &grants {
                check_window(g, p, 2, &format!("key {id}"));
            }
            clock.advance(p * 2);
            // (Eviction after a key's Drop panicked is defect 5 in
            // review_rl_defects.rs: such a key's limiter leaks. Not checked here.)
            keyed.evict_idle();
            assert!(panics > 0, "the hostile keys never fired");
            for id in 0..300 {
                assert_eq!(keyed.try_acquire(key(id)), Ok(()), "key {id} usable");
            }
        });
    }

    // ---------------------------------------------------------------------------
    // A forgotten acquire on every path
    // ---------------------------------------------------------------------------

    /// `mem::forget` at every stage (before its first poll, queued as head,
    /// queued behind, granted-unseen), on both algorithms: nothing wedges, the
    /// forgotten grants are wasted in order, and the limiter serves on.
    #[test]
    fn forget_at_every_stage() {
        within(20, "forget_at_every_stage", || {
            for q in [
                Quota::window(1, MS * 10).unwrap(),
                Quota::gcra(1, MS * 10, 1).unwrap(),
            ] {
                let clock = ManualClock::new();
                let limiter = RateLimiter::with_quota(q).with_timer(clock.clone());
                let noop = Waker::noop().clone();
                limiter.try_acquire().unwrap();
                std::mem::forget(limiter.acquire()); // never polled: nothing
                let mut head = limiter.acquire();
                assert!(poll_with(&mut head, &noop).is_pending());
                let mut behind = limiter.acquire();
                assert!(poll_with(&mut behind, &noop).is_pending());
                std::mem::forget(head);
                std::mem::forget(behind);
                let mut last = limiter.acquire();
                assert!(poll_with(&mut last, &noop).is_pending());
                clock.advance(MS * 10); // head's (wasted)
                assert!(poll_with(&mut last, &noop).is_pending(), "{q:?}");
                clock.advance(MS * 10); // behind's (wasted)
                assert!(poll_with(&mut last, &noop).is_pending(), "{q:?}");
                clock.advance(MS * 10);
                assert!(poll_with(&mut last, &noop).is_ready(), "{q:?}");
                let mut g = limiter.acquire();
                assert!(poll_with(&mut g, &noop).is_pending());
                clock.advance(MS * 10);
                std::mem::forget(g); // granted, unseen, forgotten: wasted
                assert!(limiter.try_acquire().is_err());
                clock.advance(MS * 10);
                assert_eq!(limiter.try_acquire(), Ok(()), "{q:?}");
                assert_eq!(limiter.waiting(), 0);
            }
        });
    }

    /// `try_acquire` never succeeds while a waiter (even a forgotten one) is
    /// queued, and reports a wait that counts the waiters ahead.
    #[test]
    fn try_acquire_never_barges() {
        within(20, "try_acquire_never_barges", || {
            let clock = ManualClock::new();
            let limiter = RateLimiter::with_quota(Quota::window(2, MS * 100).unwrap())
                .with_timer(clock.clone());
            let noop = Waker::noop().clone();
            limiter.try_acquire_n(2).unwrap();
            let mut a = limiter.acquire_n(2);
            assert!(poll_with(&mut a, &noop).is_pending());
            std::mem::forget(a);
            clock.advance(MS * 99);
            match limiter.try_acquire() {
                Err(RateLimitError::RateLimited { wait }) => assert_eq!(wait, MS * 101),
                other => panic!("{other:?}"),
            }
            clock.advance(MS);
            assert!(
                limiter.try_acquire().is_err(),
                "the forgotten pair took the window"
            );
            clock.advance(MS * 100);
            assert_eq!(limiter.try_acquire(), Ok(()));
        });
    }
}
