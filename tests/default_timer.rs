//! The default timer picks the runtime's timer (SPEC §5; issue 15 §1): with
//! the `tokio` feature, every plain API that waits for time — `timeout`,
//! `timeout_at`, `.timeout(d)`, semaphore acquire timeouts, `RateLimiter`,
//! `KeyedRateLimiter`, `RetryPolicy` backoff and attempt timeouts, pool wait
//! timeouts, batch pauses, the deadlines of `wait` and `as_completed` — runs
//! on tokio's paused time inside `#[tokio::test(start_paused = true)]`: an
//! hour passes in well under a second of wall time. The very same body runs
//! on smol, `futures::executor`, a multi-thread tokio runtime and a tokio
//! runtime without time, on the real clock, with a unit of 30 ms.

#![cfg(feature = "tokio")]
// The tests hand futures out of `block_on` on purpose (to poll them elsewhere).
#![allow(clippy::async_yields_async)]

mod common;

use awaitkit::pool::{Manager, Pool, PoolError};
use awaitkit::time::{DefaultTimer, Timer};
use awaitkit::{
    Backoff, Elapsed, KeyedRateLimiter, RateLimiter, RetryPolicy, ReturnWhen, Semaphore,
    TimeoutExt, as_completed, process_batch, timeout, timeout_at, wait,
};
use futures::StreamExt;
use std::future::{Future, pending, ready};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
const REAL: Duration = Duration::from_millis(30);

/// Wall time a paused-time body may take: generous (CI, sanitizers), and
/// still far below the hours of clock time the body waits for.
const PAUSED_WALL_LIMIT: Duration = Duration::from_secs(20);

struct Conns;

impl Manager for Conns {
    type Object = u32;
    type Error = std::convert::Infallible;
    async fn create(&self) -> Result<u32, Self::Error> {
        Ok(7)
    }
}

/// Asserts that at least `at_least` passed on the default timer's clock
/// since `start`.
#[track_caller]
fn passed(start: Instant, at_least: Duration) {
    let now = DefaultTimer.now();
    assert!(
        now.saturating_duration_since(start) >= at_least,
        "only {:?} passed, expected {at_least:?}",
        now.saturating_duration_since(start)
    );
}

/// Every type that waits for time, through its plain API, each wait `unit`
/// long on the default timer's clock.
async fn every_timed_type(unit: Duration) {
    let clock = DefaultTimer;

    // timeout, timeout_at, TimeoutExt.
    let start = clock.now();
    assert_eq!(timeout(unit, pending::<()>()).await, Err(Elapsed::new()));
    passed(start, unit);
    let start = clock.now();
    assert!(pending::<()>().timeout(unit).await.is_err());
    passed(start, unit);
    let at = clock.now() + unit;
    assert!(timeout_at(at, pending::<()>()).await.is_err());
    passed(at - unit, unit);
    // A future that is ready first still wins, whatever the timer.
    assert_eq!(ready(3).timeout(unit).await, Ok(3));

    // Semaphore::acquire_timeout.
    let sem = Semaphore::new(1);
    let held = sem.acquire().await.unwrap();
    let start = clock.now();
    assert!(sem.acquire_timeout(unit).await.is_err());
    passed(start, unit);
    drop(held);

    // RateLimiter::new: the second call waits for the window.
    let limiter = RateLimiter::new(1, unit);
    let start = clock.now();
    limiter.acquire().await;
    limiter.acquire().await;
    passed(start, unit);

    // KeyedRateLimiter::new.
    let keyed = KeyedRateLimiter::new(1, unit);
    let start = clock.now();
    keyed.acquire("k").await.unwrap();
    keyed.acquire("k").await.unwrap();
    passed(start, unit);

    // RetryPolicy: backoff between attempts, and the attempt timeout.
    let start = clock.now();
    let failed = RetryPolicy::new(3)
        .backoff(Backoff::constant(unit).without_jitter())
        .retry(|| ready(Err::<(), _>("down")))
        .await;
    assert_eq!(failed.unwrap_err().attempts(), 3);
    passed(start, unit * 2);
    let start = clock.now();
    let hung = RetryPolicy::new(2)
        .backoff(Backoff::none())
        .attempt_timeout(unit)
        .retry(pending::<Result<(), ()>>)
        .await;
    assert_eq!(hung.unwrap_err().attempts(), 2);
    passed(start, unit * 2);

    // Pool wait timeouts.
    let pool = Pool::builder(Conns)
        .max_size(1)
        .wait_timeout(unit)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let start = clock.now();
    assert!(matches!(pool.get().await, Err(PoolError::Timeout)));
    passed(start, unit);
    let start = clock.now();
    assert!(matches!(
        pool.get_timeout(unit).await,
        Err(PoolError::Timeout)
    ));
    passed(start, unit);
    drop(conn);

    // Batch pauses: two batches of two, one pause between them.
    let start = clock.now();
    let out = process_batch(0..4u32, 2, ready)
        .fixed_batches()
        .pause_between(unit)
        .await;
    assert_eq!(out, [0, 1, 2, 3]);
    passed(start, unit);

    // The deadlines of wait and as_completed.
    let start = clock.now();
    let outcome = wait([pending::<u8>(), pending()], ReturnWhen::AllCompleted)
        .with_timeout(unit)
        .await;
    assert!(outcome.timed_out);
    assert_eq!(outcome.pending.len(), 2);
    passed(start, unit);
    let start = clock.now();
    let mut stream = as_completed([pending::<u8>()]).with_timeout(unit);
    assert!(matches!(stream.next().await, Some(Err(_))));
    assert!(stream.next().await.is_none());
    passed(start, unit);
}

/// Runs the body under tokio's paused time, under the watchdog (on the real
/// clock it would take hours), and checks the wall clock.
fn paused<Fut: std::future::Future<Output = ()>>(body: impl FnOnce() -> Fut + Send + 'static) {
    common::watchdog("paused", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let wall = Instant::now();
        rt.block_on(body());
        assert!(
            wall.elapsed() < PAUSED_WALL_LIMIT,
            "took {:?} of wall time",
            wall.elapsed()
        );
    });
}

#[test]
fn every_timed_type_runs_on_tokio_paused_time() {
    paused(|| every_timed_type(HOUR));
}

#[tokio::test(start_paused = true)]
async fn a_one_hour_timeout_elapses_at_once_under_tokio_test_start_paused() {
    let wall = Instant::now();
    let out = tokio::time::sleep(Duration::from_secs(7200))
        .timeout(HOUR)
        .await;
    assert_eq!(out, Err(Elapsed::new()));
    assert!(wall.elapsed() < PAUSED_WALL_LIMIT);
}

#[test]
fn advance_moves_a_timeout() {
    paused(|| async {
        let mut call = std::pin::pin!(pending::<()>().timeout(HOUR));
        assert!(futures::poll!(call.as_mut()).is_pending());
        tokio::time::advance(HOUR - Duration::from_secs(1)).await;
        assert!(futures::poll!(call.as_mut()).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(call.await, Err(Elapsed::new()));
    });
}

#[test]
fn every_timed_type_runs_on_smol() {
    smol::block_on(every_timed_type(REAL));
}

#[test]
fn every_timed_type_runs_on_futures_executor() {
    futures::executor::block_on(every_timed_type(REAL));
}

#[test]
fn every_timed_type_runs_on_a_multi_thread_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async { tokio::spawn(every_timed_type(REAL)).await.unwrap() });
}

#[test]
fn a_tokio_runtime_without_time_falls_back_to_futures_timer() {
    // tokio's timer would panic here ("timers are disabled"): the default
    // timer finds out once per runtime and uses futures-timer instead.
    for _ in 0..2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(every_timed_type(REAL));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async { tokio::spawn(every_timed_type(REAL)).await.unwrap() });
    }
}

/// A limiter built before any runtime exists (or in a `static`) honours the
/// paused time of the runtime that uses it: the timer is chosen when a sleep
/// is armed, not when the limiter is made.
#[test]
fn a_limiter_made_outside_a_runtime_honours_paused_time_inside_one() {
    let limiter = RateLimiter::new(1, HOUR);
    let keyed = KeyedRateLimiter::new(1, HOUR);
    let pool = Pool::builder(Conns)
        .max_size(1)
        .wait_timeout(HOUR)
        .build()
        .unwrap();
    let policy = RetryPolicy::new(2).backoff(Backoff::constant(HOUR).without_jitter());
    paused(move || async move {
        let start = DefaultTimer.now();
        limiter.acquire().await;
        limiter.acquire().await;
        keyed.acquire(1).await.unwrap();
        keyed.acquire(1).await.unwrap();
        let held = pool.get().await.unwrap();
        assert!(matches!(pool.get().await, Err(PoolError::Timeout)));
        drop(held);
        assert!(policy.retry(|| ready(Err::<(), _>(()))).await.is_err());
        passed(start, HOUR * 4);
    });
}

static SHARED: LazyLock<RateLimiter> = LazyLock::new(|| RateLimiter::new(1, HOUR));

/// One limiter used by runtime after runtime (a `static` shared by tests):
/// its armed sleep belonged to a runtime that has shut down, and is armed
/// again in the next one instead of panicking there.
#[test]
fn a_static_limiter_moves_from_runtime_to_runtime() {
    for _ in 0..3 {
        paused(|| async {
            // A waiter arms the limiter's timer in this runtime, and is
            // dropped before it fires: the runtime ends with the sleep armed.
            let mut waiter = Box::pin(SHARED.acquire());
            let _ = futures::poll!(waiter.as_mut());
            SHARED.acquire().await;
            drop(waiter);
        });
    }
    // And outside any runtime, on futures-timer.
    assert!(SHARED.try_acquire().is_err());
}

/// A rate-limit waiter whose limiter armed tokio's timer in a runtime that
/// then shut down finishes in another runtime, or outside any: the
/// limiter's sleep is armed again where it is polled, instead of panicking
/// on the dead runtime's timer.
#[test]
fn a_limiter_waiter_outlives_the_runtime_that_armed_its_timer() {
    for elsewhere in ["another runtime", "no runtime"] {
        let limiter = RateLimiter::new(1, REAL);
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut waiter = first.block_on(async {
            limiter.acquire().await;
            let mut waiter = Box::pin(limiter.acquire());
            assert!(
                futures::poll!(waiter.as_mut()).is_pending(),
                "armed in the first runtime"
            );
            waiter
        });
        drop(first);
        let start = Instant::now();
        if elsewhere == "no runtime" {
            futures::executor::block_on(waiter.as_mut());
        } else {
            let second = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            second.block_on(waiter.as_mut());
        }
        assert!(start.elapsed() < PAUSED_WALL_LIMIT, "{elsewhere}");
    }
}

/// A default sleep polled in the context of a runtime that has shut down
/// (a wake-up delivered while the runtime drops runs there) is armed again
/// on futures-timer: tokio's sleep of that runtime would panic.
#[test]
fn a_sleep_polled_in_a_runtime_that_shut_down_moves_to_futures_timer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let mut sleep = rt.block_on(async {
        let mut sleep = DefaultTimer.sleep_until(DefaultTimer.now() + REAL);
        assert!(futures::poll!(&mut sleep).is_pending());
        assert!(format!("{sleep:?}").contains("tokio"), "{sleep:?}");
        sleep
    });
    drop(rt);
    let _inside = handle.enter();
    let waker = futures::task::noop_waker();
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::pin::Pin::new(&mut sleep).poll(&mut std::task::Context::from_waker(&waker))
    }));
    assert!(matches!(polled, Ok(std::task::Poll::Pending)), "{polled:?}");
    assert!(format!("{sleep:?}").contains("futures-timer"), "{sleep:?}");
    // And it still fires, at its deadline.
    futures::executor::block_on(sleep);
}

/// A timeout started in one runtime and finished outside any (or in
/// another) is armed again where it is polled.
#[test]
fn a_timeout_polled_after_its_runtime_shut_down_is_armed_again() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut call = Box::pin(pending::<()>().timeout(REAL));
    rt.block_on(async {
        assert!(futures::poll!(call.as_mut()).is_pending());
    });
    drop(rt);
    assert_eq!(futures::executor::block_on(call), Err(Elapsed::new()));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut call = Box::pin(pending::<()>().timeout(REAL));
    rt.block_on(async {
        assert!(futures::poll!(call.as_mut()).is_pending());
    });
    drop(rt);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    assert_eq!(other.block_on(call), Err(Elapsed::new()));
}

/// An explicit timer always wins: on futures-timer, paused tokio time does
/// not move the timeout.
#[test]
fn an_explicit_timer_wins_over_tokio_paused_time() {
    paused(|| async {
        let wall = Instant::now();
        let out = pending::<()>()
            .timeout(REAL)
            .with_timer(awaitkit::time::FuturesTimer)
            .await;
        assert!(out.is_err());
        assert!(wall.elapsed() >= REAL, "the real clock decided");
    });
}
