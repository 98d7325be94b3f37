//! `RetryPolicy` / `Retry` / `Backoff` (SPEC §10, retry): attempt counts and
//! delays exact under the manual clock, time limits, predicates, hooks,
//! cancellation, and a few real-clock runs through the executor matrix.

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::time::{ManualClock, Timer};
use awaitkit::{AttemptError, Backoff, GaveUp, RetryConfigError, RetryPolicy};
use common::*;
use futures::future::BoxFuture;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

/// Records the clock's elapsed time at the start of each attempt.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<Vec<Duration>>>);

impl Starts {
    fn record(&self, clock: &ManualClock) {
        self.0.lock().unwrap().push(clock.elapsed());
    }
    fn get(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

/// An operation whose attempts never finish, each holding a token of
/// `tracker` (so tests can count live attempts).
fn hanging(tracker: &Tracker) -> impl FnMut() -> BoxFuture<'static, Result<(), ()>> + use<> {
    let tracker = tracker.clone();
    move || {
        let token = tracker.token();
        Box::pin(async move {
            let _token = token;
            pending::<Result<(), ()>>().await
        })
    }
}

use common::poll_once as poll;

#[test]
fn attempts_and_delays_are_exact_under_the_manual_clock() {
    let clock = ManualClock::new();
    let starts = Starts::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let policy =
        RetryPolicy::new(4).backoff(Backoff::exponential(100 * MS, 250 * MS).without_jitter());
    let (c, s, e) = (clock.clone(), starts.clone(), events.clone());
    let mut retry = policy
        .retry(move || {
            s.record(&c);
            async { Err::<(), _>("down") }
        })
        .on_retry(move |ev| {
            e.lock()
                .unwrap()
                .push((ev.attempt, ev.delay, ev.error.clone()))
        })
        .with_timer(clock.clone());
    let waker = CountingWaker::new();

    assert!(poll(&mut retry, &waker).is_pending());
    for (step, attempts_before) in [(100, 1), (200, 2), (250, 3)] {
        assert_eq!(retry.attempts(), attempts_before);
        assert_eq!(clock.sleepers(), 1, "sleeping the backoff");
        clock.advance((step - 1) * MS);
        assert!(poll(&mut retry, &waker).is_pending(), "never early");
        assert_eq!(retry.attempts(), attempts_before);
        let wakes = waker.wakes();
        clock.advance(MS);
        assert_eq!(waker.wakes(), wakes + 1, "the backoff's end wakes the task");
        if attempts_before < 3 {
            assert!(poll(&mut retry, &waker).is_pending());
        }
    }
    let err = match poll(&mut retry, &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("expected the retry to give up, got {other:?}"),
    };
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.reason(), GaveUp::AttemptsExhausted);
    assert_eq!(err.last(), &AttemptError::Failed("down"));
    assert_eq!(starts.get(), [0, 100, 300, 550].map(|ms| ms * MS));
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            (1, 100 * MS, AttemptError::Failed("down")),
            (2, 200 * MS, AttemptError::Failed("down")),
            (3, 250 * MS, AttemptError::Failed("down")),
        ]
    );
    assert_eq!(clock.sleepers(), 0);
}

#[test]
fn success_on_a_later_attempt_returns_the_value() {
    let clock = ManualClock::new();
    let calls = Counter::new();
    let c = calls.clone();
    let mut retry = RetryPolicy::new(5)
        .backoff(Backoff::constant(10 * MS))
        .retry(move || {
            c.inc();
            let n = c.get();
            async move { if n < 3 { Err(n) } else { Ok(n * 10) } }
        })
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(10 * MS);
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(10 * MS);
    assert_eq!(poll(&mut retry, &waker), Poll::Ready(Ok(30)));
    assert_eq!(calls.get(), 3);
    assert_eq!(clock.sleepers(), 0);
}

#[test]
fn a_non_retryable_error_stops_at_once() {
    let clock = ManualClock::new();
    let hook_calls = Counter::new();
    let h = hook_calls.clone();
    let mut retry = RetryPolicy::new(5)
        .retry(|| async { Err::<(), _>(404) })
        .retry_if(|status| *status >= 500)
        .on_retry(move |_| h.inc())
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    let err = match poll(&mut retry, &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("{other:?}"),
    };
    assert_eq!((err.attempts(), err.reason()), (1, GaveUp::NotRetryable));
    assert_eq!(err.last_error(), Some(&404));
    assert_eq!(hook_calls.get(), 0, "no retry, no hook");
    assert_eq!(clock.sleepers(), 0);
}

#[test]
fn the_attempt_timeout_cancels_each_attempt_and_is_retried() {
    let clock = ManualClock::new();
    let tracker = Tracker::new();
    let starts = Starts::default();
    let (t, c, s) = (tracker.clone(), clock.clone(), starts.clone());
    let mut retry = RetryPolicy::new(3)
        .backoff(Backoff::constant(500 * MS))
        .attempt_timeout(Duration::from_secs(1))
        .retry(move || {
            s.record(&c);
            let token = t.token();
            async move {
                let _token = token;
                pending::<Result<(), &str>>().await
            }
        })
        .retry_if(|_| false) // timeouts are retried whatever the predicate says
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    for _ in 0..2 {
        assert_eq!(tracker.live(), 1);
        clock.advance(999 * MS);
        assert!(poll(&mut retry, &waker).is_pending());
        clock.advance(MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(tracker.live(), 0, "the timed-out attempt was dropped");
        clock.advance(500 * MS);
        assert!(poll(&mut retry, &waker).is_pending());
    }
    clock.advance(Duration::from_secs(1));
    let err = match poll(&mut retry, &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (err.attempts(), err.reason()),
        (3, GaveUp::AttemptsExhausted)
    );
    assert!(matches!(err.last(), AttemptError::TimedOut(_)));
    assert_eq!(err.last_error(), None);
    assert_eq!((tracker.created(), tracker.live()), (3, 0));
    assert_eq!(starts.get(), [0, 1500, 3000].map(|ms| ms * MS));
}

#[test]
fn the_total_timeout_skips_a_retry_that_would_start_too_late() {
    let clock = ManualClock::new();
    let starts = Starts::default();
    let (c, s) = (clock.clone(), starts.clone());
    let mut retry = RetryPolicy::new(10)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .total_timeout(2500 * MS)
        .retry(move || {
            s.record(&c);
            async { Err::<(), _>("no") }
        })
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(Duration::from_secs(1));
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(Duration::from_secs(1));
    // Attempt 3 fails at 2 s; a 4th would start at 3 s, past the 2.5 s limit.
    let err = match poll(&mut retry, &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("{other:?}"),
    };
    assert_eq!((err.attempts(), err.reason()), (3, GaveUp::DeadlineReached));
    assert_eq!(starts.get(), [0, 1000, 2000].map(|ms| ms * MS));
    assert_eq!(clock.sleepers(), 0);
}

#[test]
fn the_total_timeout_cuts_a_running_attempt() {
    let clock = ManualClock::new();
    let tracker = Tracker::new();
    let mut retry = RetryPolicy::new(3)
        .attempt_timeout(Duration::from_secs(10))
        .total_timeout(Duration::from_secs(1))
        .retry(hanging(&tracker))
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(999 * MS);
    assert!(poll(&mut retry, &waker).is_pending());
    clock.advance(MS);
    let err = match poll(&mut retry, &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("{other:?}"),
    };
    assert_eq!((err.attempts(), err.reason()), (1, GaveUp::DeadlineReached));
    assert!(matches!(err.last(), AttemptError::TimedOut(_)));
    assert_eq!(tracker.live(), 0);
}

#[test]
fn seeded_jitter_is_reproducible_and_within_the_nominal_delay() {
    let run = |seed: u64| {
        let clock = ManualClock::new();
        let delays = Arc::new(Mutex::new(Vec::new()));
        let d = delays.clone();
        let mut retry = RetryPolicy::new(6)
            .backoff(Backoff::exponential(100 * MS, Duration::from_secs(1)))
            .retry(|| async { Err::<(), _>(()) })
            .on_retry(move |ev| d.lock().unwrap().push(ev.delay))
            .jitter_seed(seed)
            .with_timer(clock.clone());
        let waker = CountingWaker::new();
        while poll(&mut retry, &waker).is_pending() {
            // Jump to the next wake-up: the backoff sleep's deadline.
            let next = clock.next_deadline().expect("a sleeping backoff");
            clock.advance_to(next);
        }
        delays.lock().unwrap().clone()
    };
    let a = run(1);
    assert_eq!(a, run(1), "same seed, same delays");
    assert_ne!(a, run(2), "another seed, other delays");
    let nominal = [100, 200, 400, 800, 1000].map(|ms| ms * MS);
    assert_eq!(a.len(), 5);
    for (delay, cap) in a.iter().zip(nominal) {
        assert!(*delay <= cap, "{delay:?} > {cap:?}");
    }
}

#[test]
fn a_zero_backoff_yields_between_attempts() {
    let calls = Counter::new();
    let c = calls.clone();
    let mut retry = RetryPolicy::new(3).backoff(Backoff::none()).retry(move || {
        c.inc();
        async { Err::<(), _>(()) }
    });
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    assert_eq!(
        (calls.get(), waker.wakes()),
        (1, 1),
        "one attempt, then a self-wake"
    );
    assert!(poll(&mut retry, &waker).is_pending());
    assert_eq!((calls.get(), waker.wakes()), (2, 2));
    assert!(matches!(poll(&mut retry, &waker), Poll::Ready(Err(_))));
    assert_eq!(calls.get(), 3);
}

#[test]
fn dropping_the_retry_cancels_the_attempt_or_the_backoff() {
    let clock = ManualClock::new();
    let tracker = Tracker::new();
    let mut retry = RetryPolicy::new(3)
        .retry(hanging(&tracker))
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    assert!(poll(&mut retry, &waker).is_pending());
    assert_eq!(tracker.live(), 1);
    drop(retry);
    assert_eq!(tracker.live(), 0);

    let mut retry = RetryPolicy::new(3)
        .backoff(Backoff::constant(Duration::from_secs(5)))
        .retry(|| async { Err::<(), ()>(()) })
        .with_timer(clock.clone());
    assert!(poll(&mut retry, &waker).is_pending());
    assert_eq!(clock.sleepers(), 1);
    drop(retry);
    assert_eq!(clock.sleepers(), 0, "the backoff sleep is unregistered");
}

#[test]
#[should_panic(expected = "`Retry` polled after completion")]
fn polling_after_completion_panics() {
    let mut retry = RetryPolicy::new(1).retry(|| async { Ok::<_, ()>(1) });
    let waker = CountingWaker::new();
    assert_eq!(poll(&mut retry, &waker), Poll::Ready(Ok(1)));
    let _ = poll(&mut retry, &waker);
}

#[test]
fn bad_configuration_is_rejected_at_construction() {
    assert_eq!(RetryPolicy::try_new(0), Err(RetryConfigError::ZeroAttempts));
    assert_eq!(
        Backoff::try_exponential(Duration::from_secs(2), Duration::from_secs(1)),
        Err(RetryConfigError::InvertedBounds {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(1)
        })
    );
    assert!(Backoff::try_exponential(Duration::ZERO, Duration::ZERO).is_ok());
    let e = RetryPolicy::try_new(0).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

#[test]
fn huge_limits_do_not_overflow() {
    let clock = ManualClock::new();
    let mut retry = RetryPolicy::new(u32::MAX)
        .backoff(Backoff::exponential(Duration::from_secs(1), Duration::MAX).without_jitter())
        .attempt_timeout(Duration::MAX)
        .total_timeout(Duration::MAX)
        .retry(|| async { Err::<(), _>(()) })
        .with_timer(clock.clone());
    let waker = CountingWaker::new();
    for n in 0..40u32 {
        assert!(poll(&mut retry, &waker).is_pending());
        let next = clock.next_deadline().expect("sleeping");
        // Backends sleep at most 30 years at a time (re-armed after that).
        let thirty_years = Duration::from_secs(30 * 365 * 86_400);
        let expected = Duration::from_secs(1 << n).min(thirty_years);
        assert_eq!(next - clock.now(), expected, "doubling, no overflow");
        if n < 30 {
            clock.advance_to(next);
        } else {
            break;
        }
    }
}

matrix! {
    async fn retries_on_the_real_clock_on_every_executor() {
        let calls = Counter::new();
        let c = calls.clone();
        let started = std::time::Instant::now();
        let out = RetryPolicy::new(4)
            .backoff(Backoff::exponential(2 * MS, 8 * MS).without_jitter())
            .retry(move || {
                c.inc();
                let n = c.get();
                async move { if n < 3 { Err(n) } else { Ok(n) } }
            })
            .await;
        assert_eq!(out, Ok(3));
        assert_eq!(calls.get(), 3);
        assert!(started.elapsed() >= 6 * MS, "slept 2 ms + 4 ms at least");
    }

    async fn a_manual_clock_drives_a_retry_in_another_task() {
        let clock = ManualClock::new();
        let calls = Counter::new();
        let c = calls.clone();
        let retry = RetryPolicy::new(3)
            .backoff(Backoff::constant(Duration::from_secs(60)))
            .retry(move || {
                c.inc();
                let n = c.get();
                async move { if n < 3 { Err(()) } else { Ok(n) } }
            })
            .with_timer(clock.clone());
        let driver = async {
            for _ in 0..2 {
                while clock.sleepers() == 0 {
                    yield_now().await;
                }
                clock.advance(Duration::from_secs(60));
            }
        };
        let (out, ()) = futures::join!(retry, driver);
        assert_eq!(out, Ok(3));
        assert_eq!(clock.elapsed(), Duration::from_secs(120));
    }
}

// ---------------------------------------------------------------------------
// Panics in the operation, an attempt's destructor, the predicate, the hook
// (regressions of the panic-injection harness, `retry_after_an_error` and
// `retry_after_an_attempt_timeout`: re-polling after such a panic returned
// `Pending` or `Ready`, or panicked with "attempt running")
// ---------------------------------------------------------------------------

/// An attempt that returns `out` at once and panics when dropped.
struct PanicsOnDrop(Option<Result<u32, u32>>);

impl Future for PanicsOnDrop {
    type Output = Result<u32, u32>;
    fn poll(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(self.0.take().expect("polled after completion"))
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("attempt drop");
        }
    }
}

/// Awaits `retry`, which must panic with `expected`; then polling it again
/// must panic, saying a panic happened.
async fn panics_then_refuses<F: Future + Unpin>(retry: &mut F, expected: &str) {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    let Err(payload) = AssertUnwindSafe(&mut *retry).catch_unwind().await else {
        panic!("the retry completed; expected the panic {expected:?}");
    };
    assert_eq!(panic_message(&*payload), expected);
    let again = AssertUnwindSafe(async { futures::poll!(&mut *retry).map(|_| ()) })
        .catch_unwind()
        .await;
    match again {
        Err(payload) => {
            let msg = panic_message(&*payload);
            assert!(
                msg.contains("`Retry` polled after a panic"),
                "unclear: {msg}"
            );
        }
        Ok(poll) => panic!("polled after a panic, the retry returned {poll:?}"),
    }
}

matrix! {
    async fn an_operation_that_panicked_starts_no_attempt_and_poisons_the_retry() {
        let calls = Counter::new();
        let c = calls.clone();
        let mut retry = RetryPolicy::new(3).backoff(Backoff::none()).retry(move || {
            c.inc();
            assert!(c.get() > 1, "operation panicked");
            async { Ok::<u32, ()>(1) }
        });
        panics_then_refuses(&mut retry, "operation panicked").await;
        assert_eq!(calls.get(), 1, "never called again");
        assert_eq!(retry.attempts(), 0, "a call that panicked starts no attempt");
    }

    async fn an_attempt_that_panics_on_drop_poisons_the_retry() {
        // After a success (whose output is dropped) and after a failure.
        for out in [Ok(1), Err(2)] {
            let mut retry = RetryPolicy::new(3)
                .backoff(Backoff::none())
                .retry(move || PanicsOnDrop(Some(out)));
            panics_then_refuses(&mut retry, "attempt drop").await;
            assert_eq!(retry.attempts(), 1);
        }
    }

    async fn a_predicate_or_hook_that_panics_poisons_the_retry() {
        let mut retry = RetryPolicy::new(3)
            .backoff(Backoff::none())
            .retry(|| async { Err::<(), u32>(1) })
            .retry_if(|_| panic!("predicate"));
        panics_then_refuses(&mut retry, "predicate").await;
        let mut retry = RetryPolicy::new(3)
            .backoff(Backoff::none())
            .retry(|| async { Err::<(), u32>(1) })
            .on_retry(|_| panic!("hook"));
        panics_then_refuses(&mut retry, "hook").await;
        assert_eq!(retry.attempts(), 1);
    }
}

// ---------------------------------------------------------------------------
// Rate-limited attempts (`Retry::rate_limit`)
// ---------------------------------------------------------------------------

mod rate_limited_attempts {
    use super::*;
    use awaitkit::RateLimiter;
    use awaitkit::rate_limiter::Quota;

    const SEC: Duration = Duration::from_secs(1);

    /// Polls `f` to completion, moving `clock` to its next deadline
    /// whenever it is pending.
    fn run_on_clock<F: Future + Unpin>(f: &mut F, clock: &ManualClock) -> F::Output {
        let waker = CountingWaker::new();
        loop {
            if let Poll::Ready(out) = poll(f, &waker) {
                return out;
            }
            if let Some(at) = clock.next_deadline() {
                clock.advance_to(at);
            }
        }
    }

    /// Five items in a batch, each needing two attempts, one limiter of 1
    /// per second and an attempt timeout of 500 ms: with
    /// `Retry::rate_limit`, every item succeeds (queueing for a grant never
    /// times an attempt out) and attempts start at least 1 s apart. The
    /// same setup with the grant waited for inside the attempt
    /// (`RateLimiter::limit`) loses attempts to the timeout: the bug this
    /// fixes.
    #[test]
    fn queueing_for_a_grant_never_times_an_attempt_out() {
        for gated in [true, false] {
            let clock = ManualClock::new();
            let limiter =
                RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(clock.clone());
            let policy = RetryPolicy::new(2)
                .backoff(Backoff::none())
                .attempt_timeout(500 * MS);
            let starts = Starts::default();
            let timed_out = Counter::new();
            let (limiter, c, s, t) = (&limiter, &clock, &starts, &timed_out);
            let mut batch = awaitkit::process_batch(0..5u32, 5, move |item| {
                let mut tries = 0;
                let retry = policy
                    .retry(move || {
                        tries += 1;
                        let ok = tries == 2;
                        let attempt = async move {
                            s.record(c);
                            if ok { Ok(item) } else { Err("busy") }
                        };
                        if gated {
                            futures::future::Either::Left(attempt)
                        } else {
                            futures::future::Either::Right(limiter.limit(attempt))
                        }
                    })
                    .on_retry(move |ev| {
                        if matches!(ev.error, AttemptError::TimedOut(_)) {
                            t.inc();
                        }
                    })
                    .with_timer(c.clone());
                if gated {
                    futures::future::Either::Left(retry.rate_limit(limiter))
                } else {
                    futures::future::Either::Right(retry)
                }
            });
            let out = run_on_clock(&mut batch, &clock);
            if !gated {
                assert!(
                    timed_out.get() > 0 && out.iter().any(Result::is_err),
                    "without the gate, queueing times attempts out"
                );
                continue;
            }
            assert_eq!(out, (0..5).map(Ok).collect::<Vec<_>>());
            assert_eq!(timed_out.get(), 0, "no attempt timed out");
            let starts = starts.get();
            assert_eq!(starts.len(), 10, "two attempts per item");
            assert!(
                starts.windows(2).all(|w| w[1] - w[0] >= SEC),
                "attempts at least 1 s apart: {starts:?}"
            );
            assert_eq!(starts, (0..10).map(|s| s * SEC).collect::<Vec<_>>());
            assert_eq!(limiter.waiting(), 0);
        }
    }

    /// The attempt timeout still applies to the attempt's own time: an
    /// attempt that hangs is cut off 500 ms after its grant came, not 500
    /// ms after it began to wait for it.
    #[test]
    fn a_hanging_attempt_still_times_out_after_its_own_time() {
        let clock = ManualClock::new();
        let limiter =
            RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(clock.clone());
        limiter.try_acquire().unwrap(); // the next grant comes at 1 s
        let tracker = Tracker::new();
        let starts = Starts::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let (t, c, s, e, c2) = (
            tracker.clone(),
            clock.clone(),
            starts.clone(),
            events.clone(),
            clock.clone(),
        );
        let mut tries = 0;
        let mut retry = RetryPolicy::new(3)
            .backoff(Backoff::none())
            .attempt_timeout(500 * MS)
            .retry(move || {
                tries += 1;
                s.record(&c);
                let (token, hang) = (t.token(), tries == 1);
                async move {
                    let _token = token;
                    if hang {
                        pending::<()>().await;
                    }
                    Ok::<_, ()>(tries)
                }
            })
            .on_retry(move |ev| {
                let timed_out = matches!(ev.error, AttemptError::TimedOut(_));
                e.lock().unwrap().push((c2.elapsed(), timed_out));
            })
            .rate_limit(&limiter)
            .with_timer(clock.clone());
        let waker = CountingWaker::new();
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(
            (retry.attempts(), limiter.waiting()),
            (0, 1),
            "waiting for the grant"
        );
        clock.advance(999 * MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(retry.attempts(), 0);
        clock.advance(MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(
            (retry.attempts(), tracker.live()),
            (1, 1),
            "the attempt started at 1 s"
        );
        clock.advance(499 * MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(tracker.live(), 1, "not timed out before its own 500 ms");
        clock.advance(MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(tracker.live(), 0, "timed out at 1.5 s and dropped");
        assert_eq!(*events.lock().unwrap(), [(1500 * MS, true)]);
        // The retry waits for the next grant, at 2 s.
        clock.advance(499 * MS);
        assert!(poll(&mut retry, &waker).is_pending());
        assert_eq!(retry.attempts(), 1);
        clock.advance(MS);
        assert_eq!(poll(&mut retry, &waker), Poll::Ready(Ok(2)));
        assert_eq!(starts.get(), [1000 * MS, 2000 * MS]);
    }

    /// The total timeout counts the wait for a grant: out of time while
    /// waiting, the retry gives up with the last failure and gives its
    /// place in the limiter's queue back.
    #[test]
    fn the_total_timeout_counts_the_grant_wait() {
        let clock = ManualClock::new();
        let limiter =
            RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(clock.clone());
        let mut retry = RetryPolicy::new(5)
            .backoff(Backoff::none())
            .total_timeout(1500 * MS)
            .retry(|| async { Err::<(), _>("down") })
            .rate_limit(&limiter)
            .with_timer(clock.clone());
        let waker = CountingWaker::new();
        // Attempt 1 at 0 s fails; attempt 2 at 1 s fails; attempt 3 would
        // get its grant at 2 s, past the 1.5 s limit.
        let err = match run_on_clock(&mut retry, &clock) {
            Err(err) => err,
            other => panic!("{other:?}"),
        };
        assert_eq!((err.attempts(), err.reason()), (2, GaveUp::DeadlineReached));
        assert_eq!(
            err.last_error(),
            Some(&"down"),
            "the last attempt's failure"
        );
        assert_eq!(clock.elapsed(), 1500 * MS);
        assert_eq!(
            limiter.waiting(),
            0,
            "the place in the queue was given back"
        );
        drop(waker);

        // Out of time before any attempt: a timeout, zero attempts.
        let clock = ManualClock::new();
        let limiter =
            RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(clock.clone());
        limiter.try_acquire().unwrap();
        let mut retry = RetryPolicy::new(5)
            .total_timeout(300 * MS)
            .retry(|| async { Ok::<_, ()>(()) })
            .rate_limit(&limiter)
            .with_timer(clock.clone());
        let err = run_on_clock(&mut retry, &clock).unwrap_err();
        assert_eq!((err.attempts(), err.reason()), (0, GaveUp::DeadlineReached));
        assert!(matches!(err.last(), AttemptError::TimedOut(_)));
        assert_eq!(limiter.waiting(), 0);
    }

    /// Dropping a retry that waits for its grant hands the place on.
    #[test]
    fn dropping_a_waiting_retry_gives_the_place_back() {
        let clock = ManualClock::new();
        let limiter =
            RateLimiter::with_quota(Quota::window(1, SEC).unwrap()).with_timer(clock.clone());
        limiter.try_acquire().unwrap();
        let mut retry = RetryPolicy::new(2)
            .retry(|| async { Ok::<_, ()>(()) })
            .rate_limit(&limiter)
            .with_timer(clock.clone());
        assert!(poll(&mut retry, &CountingWaker::new()).is_pending());
        assert_eq!(limiter.waiting(), 1);
        drop(retry);
        assert_eq!(limiter.waiting(), 0);
    }

    #[test]
    #[should_panic(expected = "`Retry::rate_limit` after the retry started")]
    fn rate_limit_after_the_first_poll_panics() {
        let limiter = RateLimiter::new(1, SEC);
        let mut retry = RetryPolicy::new(2).retry(pending::<Result<(), ()>>);
        let _ = poll(&mut retry, &CountingWaker::new());
        drop(retry.rate_limit(&limiter));
    }
}
