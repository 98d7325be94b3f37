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
    let limiter = Arc::new(RateLimiter::with_timer(quota, clock.clone()));
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
    (clock, broken, RateLimiter::with_timer(quota, timer))
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
        let limiter = Arc::new(RateLimiter::with_timer(window(1, MS * 20), TokioTimer));
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
        let keyed = Arc::new(KeyedRateLimiter::with_timer(window(1, SEC), clock.clone()));
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
        let keyed = Arc::new(KeyedRateLimiter::with_timer(window(1, SEC), clock.clone()));
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
        let keyed = KeyedRateLimiter::with_timer(window(1, SEC), clock.clone());
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
                            futures::executor::block_on(keyed.acquire(key));
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
            futures::executor::block_on(keyed.acquire(key));
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
            let keyed = Arc::new(KeyedRateLimiter::with_timer(window(1, SEC), clock));
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
    let limiter = RateLimiter::with_timer(window(1, MS * 10), timer.clone());
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
    let elapsed = awaitkit::timeout_with(timer, MS * 2, futures::future::pending::<()>()).await;
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
                let limiter = RateLimiter::with_timer(quota, timer.clone());
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
