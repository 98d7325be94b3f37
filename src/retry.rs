//! Retry with exponential backoff, full jitter, per-attempt and total time
//! limits — every wait on the [`Timer`] seam.

#![forbid(unsafe_code)]

use crate::rate_limiter::{RateAcquire, RateLimiter};
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::timeout::Elapsed;
use crate::unwind::Panics;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long to wait between attempts.
///
/// * [`exponential`](Backoff::exponential)`(initial, max)`: `initial`,
///   `2 × initial`, `4 × initial`, … capped at `max`, with **full jitter** by
///   default (each delay drawn uniformly from zero to that value, which
///   spreads out clients that failed together).
/// * [`constant`](Backoff::constant)`(delay)`: the same delay every time
///   (no jitter unless asked for).
/// * [`none`](Backoff::none): retry at once.
///
/// # Examples
///
/// ```
/// use awaitkit::Backoff;
/// use std::time::Duration;
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)).without_jitter();
/// assert_eq!(backoff.max_delay_before(1), Duration::from_millis(100));
/// assert_eq!(backoff.max_delay_before(3), Duration::from_millis(400));
/// assert_eq!(backoff.max_delay_before(20), Duration::from_secs(5)); // capped
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    exponential: bool,
    jitter: bool,
}

impl Backoff {
    /// Exponential backoff from `initial`, doubling after each failure,
    /// capped at `max`, with full jitter.
    ///
    /// # Panics
    ///
    /// If `initial > max` (use [`try_exponential`](Backoff::try_exponential)
    /// to get an error instead).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2));
    /// assert!(b.max_delay_before(2) <= Duration::from_millis(100));
    /// ```
    #[track_caller]
    pub fn exponential(initial: Duration, max: Duration) -> Backoff {
        match Backoff::try_exponential(initial, max) {
            Ok(backoff) => backoff,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`exponential`](Backoff::exponential), returning an error for
    /// `initial > max`.
    ///
    /// # Errors
    ///
    /// [`RetryConfigError::InvertedBounds`] when `initial > max`.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{Backoff, RetryConfigError};
    /// use std::time::Duration;
    /// let bad = Backoff::try_exponential(Duration::from_secs(10), Duration::from_secs(1));
    /// assert!(matches!(bad, Err(RetryConfigError::InvertedBounds { .. })));
    /// ```
    pub fn try_exponential(initial: Duration, max: Duration) -> Result<Backoff, RetryConfigError> {
        if initial > max {
            return Err(RetryConfigError::InvertedBounds { initial, max });
        }
        Ok(Backoff {
            initial,
            max,
            exponential: true,
            jitter: true,
        })
    }

    /// The same `delay` before every retry, without jitter.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::constant(Duration::from_millis(20));
    /// assert_eq!(b.max_delay_before(7), Duration::from_millis(20));
    /// ```
    pub const fn constant(delay: Duration) -> Backoff {
        Backoff {
            initial: delay,
            max: delay,
            exponential: false,
            jitter: false,
        }
    }

    /// No delay: retry at once (the retry still yields to the executor
    /// between attempts).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(awaitkit::Backoff::none().max_delay_before(3), std::time::Duration::ZERO);
    /// ```
    pub const fn none() -> Backoff {
        Backoff::constant(Duration::ZERO)
    }

    /// Full jitter: each delay is drawn uniformly from zero to the nominal
    /// delay (the default for [`exponential`](Backoff::exponential)).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::constant(Duration::from_secs(1)).with_jitter();
    /// assert!(b.has_jitter());
    /// ```
    pub const fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// No jitter: every delay is exactly the nominal one.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::exponential(Duration::from_millis(1), Duration::from_millis(8)).without_jitter();
    /// assert!(!b.has_jitter());
    /// ```
    pub const fn without_jitter(mut self) -> Backoff {
        self.jitter = false;
        self
    }

    /// Whether delays are jittered.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// assert!(!Backoff::none().has_jitter());
    /// ```
    pub const fn has_jitter(&self) -> bool {
        self.jitter
    }

    /// The nominal delay before retry number `retry` (1 = the delay after the
    /// first failed attempt): the upper bound of the jittered delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
    /// assert_eq!(b.max_delay_before(1), Duration::from_secs(1));
    /// assert_eq!(b.max_delay_before(2), Duration::from_secs(2));
    /// assert_eq!(b.max_delay_before(u32::MAX), Duration::from_secs(60)); // no overflow
    /// ```
    pub fn max_delay_before(&self, retry: u32) -> Duration {
        if !self.exponential {
            return self.initial;
        }
        let mut delay = self.initial;
        for _ in 1..retry {
            if delay >= self.max || delay.is_zero() {
                break;
            }
            delay = delay.checked_mul(2).unwrap_or(self.max);
        }
        delay.min(self.max)
    }

    /// The delay actually slept before retry number `retry`, given a random
    /// `u64` for the jitter.
    fn delay_before(&self, retry: u32, random: u64) -> Duration {
        let nominal = self.max_delay_before(retry);
        if !self.jitter || nominal.is_zero() {
            return nominal;
        }
        // Uniform in [0, nominal], at nanosecond resolution.
        let nanos = nominal.as_nanos().min(u64::MAX as u128) as u64;
        let picked = ((random as u128 * (nanos as u128 + 1)) >> 64) as u64;
        Duration::from_nanos(picked)
    }
}

impl Default for Backoff {
    /// Exponential from 100 ms to 10 s with full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Bad retry configuration, rejected at construction.
///
/// # Examples
///
/// ```
/// use awaitkit::{RetryConfigError, RetryPolicy};
/// assert_eq!(RetryPolicy::try_new(0).unwrap_err(), RetryConfigError::ZeroAttempts);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryConfigError {
    /// `max_attempts` was zero: the operation would never run.
    ZeroAttempts,
    /// The first backoff delay is longer than the cap.
    InvertedBounds {
        /// The first delay asked for.
        initial: Duration,
        /// The cap asked for.
        max: Duration,
    },
}

impl fmt::Display for RetryConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryConfigError::ZeroAttempts => {
                f.write_str("retry: `max_attempts` must be at least 1")
            }
            RetryConfigError::InvertedBounds { initial, max } => write!(
                f,
                "retry: the initial backoff ({initial:?}) is longer than the maximum ({max:?})"
            ),
        }
    }
}

impl std::error::Error for RetryConfigError {}

/// A reusable retry configuration: how many attempts, the [`Backoff`]
/// between them, and optional time limits per attempt and overall. Apply it
/// to an operation with [`retry`](RetryPolicy::retry).
///
/// # Examples
///
/// ```
/// use awaitkit::{Backoff, RetryPolicy};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let policy = RetryPolicy::new(5)
///     .backoff(Backoff::exponential(Duration::from_millis(1), Duration::from_millis(10)))
///     .attempt_timeout(Duration::from_secs(2))
///     .total_timeout(Duration::from_secs(10));
///
/// let calls = AtomicU32::new(0);
/// let flaky = || async {
///     let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
///     if n < 3 { Err(format!("try {n} failed")) } else { Ok(n) }
/// };
/// assert_eq!(policy.retry(flaky).await, Ok(3));
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    attempt_timeout: Option<Duration>,
    total_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// At most `max_attempts` attempts (the first one included), with the
    /// default [`Backoff`] (exponential, 100 ms to 10 s, full jitter) and no
    /// time limits.
    ///
    /// # Panics
    ///
    /// If `max_attempts` is zero (use [`try_new`](RetryPolicy::try_new) to
    /// get an error instead).
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = awaitkit::RetryPolicy::new(3);
    /// assert_eq!(policy.max_attempts(), 3);
    /// ```
    #[track_caller]
    pub fn new(max_attempts: u32) -> RetryPolicy {
        match RetryPolicy::try_new(max_attempts) {
            Ok(policy) => policy,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`new`](RetryPolicy::new), returning an error for zero attempts.
    ///
    /// # Errors
    ///
    /// [`RetryConfigError::ZeroAttempts`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(awaitkit::RetryPolicy::try_new(1).is_ok());
    /// assert!(awaitkit::RetryPolicy::try_new(0).is_err());
    /// ```
    pub fn try_new(max_attempts: u32) -> Result<RetryPolicy, RetryConfigError> {
        if max_attempts == 0 {
            return Err(RetryConfigError::ZeroAttempts);
        }
        Ok(RetryPolicy {
            max_attempts,
            backoff: Backoff::default(),
            attempt_timeout: None,
            total_timeout: None,
        })
    }

    /// The delays between attempts.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{Backoff, RetryPolicy};
    /// let policy = RetryPolicy::new(3).backoff(Backoff::none());
    /// assert_eq!(policy.get_backoff(), Backoff::none());
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> RetryPolicy {
        self.backoff = backoff;
        self
    }

    /// Gives each attempt at most `limit`; an attempt that runs out is
    /// dropped (cancelled) and counts as a failure
    /// ([`AttemptError::TimedOut`]), which is always retryable.
    ///
    /// The limit runs from the attempt's start: with
    /// [`Retry::rate_limit`], from the moment its rate-limit grant came, so
    /// queueing for the limiter never times an attempt out. A grant waited
    /// for *inside* the operation's future (say
    /// [`RateLimiter::limit`](crate::RateLimiter::limit)) is part of the
    /// attempt and counts.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = awaitkit::RetryPolicy::new(3).attempt_timeout(Duration::from_secs(1));
    /// # drop(policy);
    /// ```
    pub fn attempt_timeout(mut self, limit: Duration) -> RetryPolicy {
        self.attempt_timeout = Some(limit);
        self
    }

    /// Gives the whole retry at most `limit`, counted from its first poll:
    /// a running attempt is cut off at the deadline, and no retry is started
    /// (nor slept for) if it would begin after it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = awaitkit::RetryPolicy::new(10).total_timeout(Duration::from_secs(30));
    /// # drop(policy);
    /// ```
    pub fn total_timeout(mut self, limit: Duration) -> RetryPolicy {
        self.total_timeout = Some(limit);
        self
    }

    /// The most attempts this policy makes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(awaitkit::RetryPolicy::new(4).max_attempts(), 4);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff this policy uses.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(awaitkit::RetryPolicy::new(4).get_backoff().has_jitter());
    /// ```
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// Runs `operation()` until it returns `Ok`, an error the predicate
    /// says is final ([`Retry::retry_if`]), the attempts run out, or the
    /// total time limit passes. Each attempt is a fresh future from
    /// `operation`.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::RetryPolicy::new(2).retry(|| async { Ok::<_, ()>(1) }).await;
    /// assert_eq!(out, Ok(1));
    /// # });
    /// ```
    pub fn retry<Op, Fut, T, E>(&self, operation: Op) -> Retry<Op, Fut>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Retry {
            operation: Some(operation),
            policy: *self,
            retry_if: Some(always_retry::<E> as fn(&E) -> bool),
            on_retry: Some(ignore_event::<E> as for<'a> fn(&RetryEvent<'a, E>)),
            deadline: BoxedDeadline::new(DefaultTimer, None),
            attempt: None,
            attempts: 0,
            total_deadline: None,
            state: State::Start,
            gate: (),
            grant: None,
            last: None,
            poisoned: false,
            rng: Rng::from_entropy(),
        }
    }
}

fn always_retry<E>(_: &E) -> bool {
    true
}

fn ignore_event<E>(_: &RetryEvent<'_, E>) {}

/// Why an attempt failed.
///
/// As an error it is transparent for the operation's own error:
/// [`Failed`](AttemptError::Failed) displays as that error and hands on its
/// [`source`](std::error::Error::source), so nothing is printed twice in an
/// error chain. [`TimedOut`](AttemptError::TimedOut) displays "the attempt
/// timed out", with the [`Elapsed`] as its source.
///
/// It is an [`Error`](std::error::Error) (and `Send + Sync + 'static`)
/// whenever the operation's error is.
///
/// # Examples
///
/// ```
/// use awaitkit::{AttemptError, Elapsed};
/// use std::error::Error;
/// let e: AttemptError<std::io::Error> = AttemptError::Failed(std::io::Error::other("refused"));
/// assert_eq!(e.to_string(), "refused");
/// let t: AttemptError<std::io::Error> = AttemptError::TimedOut(Elapsed::new());
/// assert_eq!(t.to_string(), "the attempt timed out");
/// assert_eq!(t.source().unwrap().to_string(), "deadline has elapsed");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptError<E> {
    /// The operation returned this error.
    Failed(E),
    /// The attempt ran out of time (the per-attempt or the total limit) and
    /// was dropped.
    TimedOut(Elapsed),
}

impl<E: fmt::Display> fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Failed(e) => e.fmt(f),
            AttemptError::TimedOut(_) => f.write_str("the attempt timed out"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for AttemptError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: `Display` already shows `e` itself.
            AttemptError::Failed(e) => e.source(),
            AttemptError::TimedOut(elapsed) => Some(elapsed),
        }
    }
}

/// Why a [`Retry`] gave up.
///
/// # Examples
///
/// ```
/// assert_eq!(awaitkit::GaveUp::AttemptsExhausted.to_string(), "attempts exhausted");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GaveUp {
    /// The predicate of [`Retry::retry_if`] said the error is final.
    NotRetryable,
    /// `max_attempts` attempts all failed.
    AttemptsExhausted,
    /// The total time limit passed (or the next retry would have started
    /// after it).
    DeadlineReached,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GaveUp::NotRetryable => "error is not retryable",
            GaveUp::AttemptsExhausted => "attempts exhausted",
            GaveUp::DeadlineReached => "total deadline reached",
        })
    }
}

/// The error of a [`Retry`] that gave up: the last attempt's error, how many
/// attempts ran, and why it stopped.
///
/// It wraps the last attempt's error: its `Display` says only what the retry
/// did ("all 3 attempts failed"), and [`source`](std::error::Error::source)
/// returns the operation's error itself (or the [`Elapsed`] of an attempt
/// that timed out), so an error chain — `anyhow`'s `{:#}`, `eyre`'s report —
/// prints each message once. Read the inner error with
/// [`last_error`](RetryError::last_error) or [`last`](RetryError::last).
///
/// It is an [`Error`](std::error::Error) (and `Send + Sync + 'static`)
/// whenever the operation's error is.
///
/// # Examples
///
/// ```
/// use awaitkit::{Backoff, GaveUp, RetryPolicy};
/// use std::error::Error;
/// # futures::executor::block_on(async {
/// let err = RetryPolicy::new(2)
///     .backoff(Backoff::none())
///     .retry(|| async { Err::<(), _>(std::io::Error::other("down")) })
///     .await
///     .unwrap_err();
/// assert_eq!(err.attempts(), 2);
/// assert_eq!(err.reason(), GaveUp::AttemptsExhausted);
/// assert_eq!(err.last_error().unwrap().to_string(), "down");
/// assert_eq!(err.to_string(), "all 2 attempts failed");
/// assert_eq!(err.source().unwrap().to_string(), "down");
/// # });
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryError<E> {
    attempts: u32,
    last: AttemptError<E>,
    reason: GaveUp,
}

impl<E> RetryError<E> {
    /// How many attempts ran (the last one included).
    ///
    /// # Examples
    ///
    /// See [`RetryError`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the retry stopped.
    ///
    /// # Examples
    ///
    /// See [`RetryError`].
    pub fn reason(&self) -> GaveUp {
        self.reason
    }

    /// How the last attempt failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{AttemptError, RetryPolicy};
    /// # futures::executor::block_on(async {
    /// let err = RetryPolicy::new(1).retry(|| async { Err::<(), _>(7) }).await.unwrap_err();
    /// assert_eq!(err.last(), &AttemptError::Failed(7));
    /// # });
    /// ```
    pub fn last(&self) -> &AttemptError<E> {
        &self.last
    }

    /// The last attempt's error, unless it timed out.
    ///
    /// # Examples
    ///
    /// See [`RetryError`].
    pub fn last_error(&self) -> Option<&E> {
        match &self.last {
            AttemptError::Failed(e) => Some(e),
            AttemptError::TimedOut(_) => None,
        }
    }

    /// Consumes the error, giving back how the last attempt failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{AttemptError, RetryPolicy};
    /// # futures::executor::block_on(async {
    /// let err = RetryPolicy::new(1).retry(|| async { Err::<(), _>("no") }).await.unwrap_err();
    /// assert_eq!(err.into_last(), AttemptError::Failed("no"));
    /// # });
    /// ```
    pub fn into_last(self) -> AttemptError<E> {
        self.last
    }
}

impl<E> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // This layer only: the last error is the `source`.
        let n = self.attempts;
        match self.reason {
            GaveUp::AttemptsExhausted if n == 1 => f.write_str("the only attempt failed")?,
            GaveUp::AttemptsExhausted => write!(f, "all {n} attempts failed")?,
            GaveUp::NotRetryable => write!(f, "attempt {n} failed with a non-retryable error")?,
            GaveUp::DeadlineReached if n == 1 => {
                f.write_str("the total time limit passed after 1 attempt")?
            }
            GaveUp::DeadlineReached => write!(f, "the total time limit passed after {n} attempts")?,
        }
        if matches!(self.last, AttemptError::TimedOut(_)) {
            f.write_str(" (the last one timed out)")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The operation's own error (not the `AttemptError` around it, so
        // that `downcast_ref::<E>` on the chain finds it).
        match &self.last {
            AttemptError::Failed(e) => Some(e),
            AttemptError::TimedOut(e) => Some(e),
        }
    }
}

/// What the [`on_retry`](Retry::on_retry) hook sees: the attempt that just
/// failed, how, and how long the retry will wait before the next one.
///
/// # Examples
///
/// ```
/// use awaitkit::{Backoff, RetryPolicy};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let mut log = Vec::new();
/// let _ = RetryPolicy::new(3)
///     .backoff(Backoff::constant(Duration::from_millis(1)))
///     .retry(|| async { Err::<(), _>("busy") })
///     .on_retry(|event| log.push((event.attempt, event.delay)))
///     .await;
/// assert_eq!(log, [(1, Duration::from_millis(1)), (2, Duration::from_millis(1))]);
/// # });
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a, E> {
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// How it failed.
    pub error: &'a AttemptError<E>,
    /// How long the retry waits before the next attempt.
    pub delay: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first attempt (the total deadline is fixed here).
    Start,
    /// Start the next attempt (after the rate-limit grant, if any).
    Next,
    /// Waiting for the rate-limit grant of the next attempt.
    Gate,
    /// Start the next attempt now.
    Launch,
    /// An attempt is running.
    Attempt,
    /// Waiting out the backoff.
    Backoff,
    /// The output was returned.
    Done,
}

/// Future for [`RetryPolicy::retry`]: `Result<T, RetryError<E>>`.
///
/// Configure it further before the first poll: [`retry_if`](Retry::retry_if)
/// (which errors are worth retrying), [`on_retry`](Retry::on_retry) (a hook
/// called before each wait), [`with_timer`](Retry::with_timer) (the clock
/// and sleeps; a `ManualClock` makes retries testable without sleeping) and
/// [`jitter_seed`](Retry::jitter_seed).
///
/// `Unpin` (the running attempt is kept on the heap, one allocation reused
/// for every attempt); `Send` when the operation, its future, the hooks and
/// the timer are.
///
/// # Cancel safety
///
/// Dropping the `Retry` drops the running attempt (or the backoff sleep).
///
/// # Panics
///
/// Polling after completion panics. A panic in the operation, an attempt
/// (its `poll` or its destructor), a hook or the timer propagates, and
/// polling again after that panics with a message saying so (the retry's
/// state may be incomplete: it never makes up a result, even when the
/// panicking destructor was that of an attempt that had succeeded — its
/// output is dropped). The running attempt and the timer's sleep are
/// dropped with the `Retry`. An operation that panics starts no attempt:
/// [`attempts`](Retry::attempts) counts only the futures it returned.
///
/// # Examples
///
/// ```
/// use awaitkit::{Backoff, GaveUp, RetryPolicy};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// #[derive(Debug, PartialEq)]
/// enum ApiError { Unavailable, NotFound }
///
/// let err = RetryPolicy::new(5)
///     .backoff(Backoff::constant(Duration::from_millis(1)))
///     .retry(|| async { Err::<(), _>(ApiError::NotFound) })
///     .retry_if(|e| *e == ApiError::Unavailable)
///     .await
///     .unwrap_err();
/// assert_eq!((err.attempts(), err.reason()), (1, GaveUp::NotRetryable));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Retry<
    Op,
    Fut: Future,
    P = fn(&<Fut as RetryOutput>::Error) -> bool,
    H = for<'a> fn(&RetryEvent<'a, <Fut as RetryOutput>::Error>),
    T: Timer = DefaultTimer,
    G: AttemptGate = (),
> where
    Fut: RetryOutput,
{
    // The parts holding user values are `Option`s only so that the drop
    // can drop each on its own (see its `Drop`): `None` once dropped or
    // moved into a rebuilt `Retry`.
    operation: Option<Op>,
    policy: RetryPolicy,
    retry_if: Option<P>,
    on_retry: Option<H>,
    deadline: BoxedDeadline<T>,
    /// The running attempt (boxed on the first launch, reused after).
    attempt: Option<Pin<Box<Option<Fut>>>>,
    attempts: u32,
    total_deadline: Option<When>,
    state: State,
    /// What each attempt waits for first: nothing (`()`), or a rate-limit
    /// grant ([`Retry::rate_limit`]).
    gate: G,
    /// The grant being waited for.
    grant: Option<G::Wait>,
    /// With a gate: the last failure, reported if the total time limit
    /// passes while the next attempt waits for its grant.
    last: Option<G::Kept<Fut::Error>>,
    /// Set while a poll runs: a panic that unwinds out of it leaves it set,
    /// and the next poll refuses (see `# Panics`).
    poisoned: bool,
    rng: Rng,
}

/// The `Result` output of an operation [`Retry`] runs: names its `Ok` and
/// `Err` types. Implemented for every future with a `Result` output.
pub trait RetryOutput: Future<Output = Result<Self::Ok, Self::Error>> {
    /// The success type.
    type Ok;
    /// The error type.
    type Error;
}

impl<F, T, E> RetryOutput for F
where
    F: Future<Output = Result<T, E>>,
{
    type Ok = T;
    type Error = E;
}

/// What a [`Retry`] waits for before each attempt: nothing (`()`, the
/// default), or one grant of a [`RateLimiter`] (`&RateLimiter`, set by
/// [`Retry::rate_limit`]). Sealed.
///
/// # Examples
///
/// ```
/// use awaitkit::{AttemptGate, RateLimiter};
/// fn gated<G: AttemptGate>(_: &G) {}
/// gated(&());
/// gated(&&RateLimiter::new(5, std::time::Duration::from_secs(1)));
/// ```
pub trait AttemptGate: gate::Sealed + Copy {
    /// The wait for one grant.
    #[doc(hidden)]
    type Wait: Future<Output = ()> + Unpin;

    /// How the last failure is kept while the next attempt waits for its
    /// grant (nothing without a gate, so the retry's auto traits do not
    /// depend on the error type then).
    #[doc(hidden)]
    type Kept<E>;

    /// Keeps `failure` (or not, without a gate).
    #[doc(hidden)]
    fn keep<E>(failure: AttemptError<E>) -> Option<Self::Kept<E>>;

    /// The failure kept by [`keep`](AttemptGate::keep).
    #[doc(hidden)]
    fn kept<E>(kept: Self::Kept<E>) -> AttemptError<E>;

    /// A wait for the next attempt's grant; `None` when there is nothing
    /// to wait for.
    #[doc(hidden)]
    fn wait(&self) -> Option<Self::Wait>;
}

mod gate {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<M: crate::Timer> Sealed for &crate::RateLimiter<M> {}
}

impl AttemptGate for () {
    type Wait = std::future::Ready<()>;
    type Kept<E> = std::convert::Infallible;

    fn keep<E>(_: AttemptError<E>) -> Option<Self::Kept<E>> {
        None
    }

    fn kept<E>(kept: Self::Kept<E>) -> AttemptError<E> {
        match kept {}
    }

    fn wait(&self) -> Option<Self::Wait> {
        None
    }
}

impl<'a, M: Timer> AttemptGate for &'a RateLimiter<M> {
    type Wait = RateAcquire<'a, M>;
    type Kept<E> = AttemptError<E>;

    fn keep<E>(failure: AttemptError<E>) -> Option<AttemptError<E>> {
        Some(failure)
    }

    fn kept<E>(kept: AttemptError<E>) -> AttemptError<E> {
        kept
    }

    fn wait(&self) -> Option<RateAcquire<'a, M>> {
        Some(RateLimiter::acquire(self))
    }
}

// The operation, hooks and timer are never pinned; the attempt is on the
// heap, and the grant's wait is `Unpin`.
impl<Op, Fut: RetryOutput, P, H, T: Timer, G: AttemptGate> Unpin for Retry<Op, Fut, P, H, T, G> {}

impl<Op, Fut: RetryOutput, P, H, T: Timer> Retry<Op, Fut, P, H, T, ()> {
    /// Takes one grant of `limiter` before **every** attempt — the first
    /// and each retry, after its backoff — so that the attempts themselves,
    /// not only the first calls, keep to the limiter's quota.
    ///
    /// The wait for the grant is **not** part of the attempt: the
    /// [per-attempt timeout](RetryPolicy::attempt_timeout) starts once the
    /// grant came, so an attempt is never cut off (and retried, or lost)
    /// because it queued behind others for the limiter. The
    /// [total timeout](RetryPolicy::total_timeout) does count the wait: if
    /// it passes while an attempt waits for its grant, the retry gives up
    /// ([`GaveUp::DeadlineReached`], with the last attempt's failure, or
    /// [`AttemptError::TimedOut`] if none ran yet).
    ///
    /// Compare wrapping the operation's future in
    /// [`RateLimiter::limit`]: there the grant is waited for *inside* the
    /// attempt, and the attempt timeout counts the queueing too.
    ///
    /// # Cancel safety
    ///
    /// Dropping the retry while it waits for a grant gives its place back
    /// to the limiter's next waiter.
    ///
    /// # Panics
    ///
    /// If the retry has already been polled.
    ///
    /// # Examples
    ///
    /// Five items in a batch, each retried, with every attempt (not only
    /// each item's first) under one limiter of 20 per second:
    ///
    /// ```
    /// use awaitkit::{Backoff, RateLimiter, RetryPolicy};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(20, Duration::from_secs(1));
    /// let policy = RetryPolicy::new(3)
    ///     .backoff(Backoff::none())
    ///     .attempt_timeout(Duration::from_millis(500)); // the call's own time only
    /// let calls = AtomicU32::new(0);
    /// let fetch = |item: u32| {
    ///     let calls = &calls;
    ///     let mut tries = 0;
    ///     policy
    ///         .retry(move || {
    ///             calls.fetch_add(1, Ordering::Relaxed);
    ///             tries += 1;
    ///             let ok = tries > 1; // every item fails once
    ///             async move { if ok { Ok(item) } else { Err("busy") } }
    ///         })
    ///         .rate_limit(&limiter)
    /// };
    /// let out = awaitkit::process_batch(0..5, 5, fetch).await;
    /// assert!(out.iter().all(Result::is_ok));
    /// assert_eq!(calls.load(Ordering::Relaxed), 10); // each attempt took a grant
    /// # });
    /// ```
    #[track_caller]
    pub fn rate_limit<M: Timer>(
        mut self,
        limiter: &RateLimiter<M>,
    ) -> Retry<Op, Fut, P, H, T, &RateLimiter<M>> {
        assert!(
            self.state == State::Start,
            "`Retry::rate_limit` after the retry started"
        );
        Retry {
            operation: self.operation.take(),
            policy: self.policy,
            retry_if: self.retry_if.take(),
            on_retry: self.on_retry.take(),
            deadline: self.deadline.take(),
            attempt: self.attempt.take(),
            attempts: self.attempts,
            total_deadline: self.total_deadline,
            state: self.state,
            gate: limiter,
            grant: None,
            last: None,
            poisoned: self.poisoned,
            rng: self.rng,
        }
    }
}

impl<Op, Fut: RetryOutput, P, H, T: Timer, G: AttemptGate> Retry<Op, Fut, P, H, T, G> {
    /// Retries only errors for which `retryable` returns `true`; any other
    /// error ends the retry at once ([`GaveUp::NotRetryable`]). Timed-out
    /// attempts are always retried. By default every error is retried.
    ///
    /// # Examples
    ///
    /// See [`Retry`].
    pub fn retry_if<P2>(self, retryable: P2) -> Retry<Op, Fut, P2, H, T, G>
    where
        P2: FnMut(&Fut::Error) -> bool,
    {
        self.map_parts(|old, on_retry, deadline| {
            let dispose = move |panics: &mut Panics| panics.catch(move || drop(old));
            ((retryable, on_retry, deadline), dispose)
        })
    }

    /// Calls `hook` after each failed attempt that will be retried, before
    /// waiting — for logging and metrics.
    ///
    /// # Examples
    ///
    /// See [`RetryEvent`].
    pub fn on_retry<H2>(self, hook: H2) -> Retry<Op, Fut, P, H2, T, G>
    where
        H2: FnMut(&RetryEvent<'_, Fut::Error>),
    {
        self.map_parts(|retry_if, old, deadline| {
            let dispose = move |panics: &mut Panics| panics.catch(move || drop(old));
            ((retry_if, hook, deadline), dispose)
        })
    }

    /// Waits (backoff, time limits) on another [`Timer`].
    ///
    /// # Panics
    ///
    /// If the retry has already been polled.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{RetryPolicy, time::FuturesTimer};
    /// # futures::executor::block_on(async {
    /// let out = RetryPolicy::new(1).retry(|| async { Ok::<_, ()>(()) }).with_timer(FuturesTimer).await;
    /// assert!(out.is_ok());
    /// # });
    /// ```
    #[track_caller]
    pub fn with_timer<U: Timer>(self, timer: U) -> Retry<Op, Fut, P, H, U, G> {
        assert!(
            self.state == State::Start,
            "`Retry::with_timer` after the retry started"
        );
        self.map_parts(|retry_if, on_retry, mut old| {
            let deadline = old.with_timer(timer);
            let dispose = move |panics: &mut Panics| old.release(panics);
            ((retry_if, on_retry, deadline), dispose)
        })
    }

    /// Rebuilds the future with other hooks or another timer: `f` maps the
    /// parts and says how to dispose of the one it replaced, which is
    /// dropped once the new future is built (if its destructor panics, the
    /// new future is dropped before that panic propagates: neither is
    /// leaked, nor dropped during the unwind).
    fn map_parts<P2, H2, U: Timer, D: FnOnce(&mut Panics)>(
        mut self,
        f: impl FnOnce(P, H, BoxedDeadline<T>) -> ((P2, H2, BoxedDeadline<U>), D),
    ) -> Retry<Op, Fut, P2, H2, U, G> {
        let (retry_if, on_retry) = (self.retry_if.take(), self.on_retry.take());
        let ((retry_if, on_retry, deadline), dispose) = f(
            retry_if.expect(PARTS),
            on_retry.expect(PARTS),
            self.deadline.take(),
        );
        let next = Retry {
            operation: self.operation.take(),
            policy: self.policy,
            retry_if: Some(retry_if),
            on_retry: Some(on_retry),
            deadline,
            attempt: self.attempt.take(),
            attempts: self.attempts,
            total_deadline: self.total_deadline,
            state: self.state,
            gate: self.gate,
            grant: self.grant.take(),
            last: self.last.take(),
            poisoned: self.poisoned,
            rng: self.rng,
        };
        crate::unwind::after_dropping(next, dispose)
    }

    /// Seeds the jitter's random numbers, making the delays reproducible
    /// (by default each `Retry` is seeded from the OS's hash randomness).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RetryPolicy;
    /// let retry = RetryPolicy::new(3).retry(|| async { Ok::<_, ()>(()) }).jitter_seed(42);
    /// # drop(retry);
    /// ```
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.rng = Rng::new(seed);
        self
    }

    /// How many attempts have started so far: futures the operation
    /// returned (a call of the operation that panicked is not counted).
    ///
    /// # Examples
    ///
    /// ```
    /// let retry = awaitkit::RetryPolicy::new(3).retry(|| async { Ok::<_, ()>(()) });
    /// assert_eq!(retry.attempts(), 0);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl<Op, Fut, P, H, T, G> Future for Retry<Op, Fut, P, H, T, G>
where
    Op: FnMut() -> Fut,
    Fut: RetryOutput,
    P: FnMut(&Fut::Error) -> bool,
    H: FnMut(&RetryEvent<'_, Fut::Error>),
    T: Timer,
    G: AttemptGate,
{
    type Output = Result<Fut::Ok, RetryError<Fut::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // A panic may have left the state half-updated (an attempt dropped
        // or not, a deadline restarted or not): refuse, as an `async fn`
        // does. Checked first, since the panic may have come after the
        // output was decided (the destructor of a successful attempt).
        crate::poison::assert_live(this.poisoned, this.state == State::Done, "Retry");
        this.poisoned = true;
        let out = this.poll_attempts(cx);
        this.poisoned = false;
        out
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<Op, Fut, P, H, T, G> futures_core::FusedFuture for Retry<Op, Fut, P, H, T, G>
where
    Op: FnMut() -> Fut,
    Fut: RetryOutput,
    P: FnMut(&Fut::Error) -> bool,
    H: FnMut(&RetryEvent<'_, Fut::Error>),
    T: Timer,
    G: AttemptGate,
{
    fn is_terminated(&self) -> bool {
        self.state == State::Done && !self.poisoned
    }
}

impl<Op, Fut, P, H, T, G> Retry<Op, Fut, P, H, T, G>
where
    Op: FnMut() -> Fut,
    Fut: RetryOutput,
    P: FnMut(&Fut::Error) -> bool,
    H: FnMut(&RetryEvent<'_, Fut::Error>),
    T: Timer,
    G: AttemptGate,
{
    /// The state machine of [`Retry::poll`] (which refuses polls after a
    /// panic and after completion).
    fn poll_attempts(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Fut::Ok, RetryError<Fut::Error>>> {
        let this = self;
        loop {
            match this.state {
                State::Start => {
                    if let Some(total) = this.policy.total_timeout {
                        let now = this.deadline.timer().now();
                        this.total_deadline =
                            Some(now.checked_add(total).map_or(When::Never, When::At));
                    }
                    this.state = State::Next;
                }
                State::Next => {
                    this.state = State::Launch;
                    if let Some(wait) = this.gate.wait() {
                        // The grant wait counts against the total limit
                        // only, never against the attempt's.
                        this.grant = Some(wait);
                        this.state = State::Gate;
                        this.deadline.restart(this.total_deadline);
                    }
                }
                State::Gate => {
                    let grant = this.grant.as_mut().expect("waiting for a grant");
                    match Pin::new(grant).poll(cx) {
                        Poll::Ready(()) => {
                            this.grant = None;
                            this.state = State::Launch;
                        }
                        Poll::Pending => match this.deadline.poll(cx) {
                            Poll::Ready(()) => {
                                // Out of time before the attempt could start:
                                // the place in the limiter's queue goes back.
                                this.grant = None;
                                this.state = State::Done;
                                let last = match this.last.take() {
                                    Some(kept) => G::kept(kept),
                                    None => AttemptError::TimedOut(Elapsed::new()),
                                };
                                return Poll::Ready(Err(RetryError {
                                    attempts: this.attempts,
                                    last,
                                    reason: GaveUp::DeadlineReached,
                                }));
                            }
                            Poll::Pending => return Poll::Pending,
                        },
                    }
                }
                State::Launch => {
                    this.last = None;
                    // Counted once the operation has returned its future:
                    // an operation that panics starts no attempt.
                    let operation = this.operation.as_mut().expect(PARTS);
                    let attempt = operation();
                    let slot = this.attempt.get_or_insert_with(|| Box::pin(None));
                    slot.set(Some(attempt));
                    this.attempts += 1;
                    this.state = State::Attempt;
                    this.deadline.restart(this.attempt_deadline());
                }
                State::Attempt => {
                    let slot = this.attempt.as_mut().expect("attempt running");
                    let attempt = slot.as_mut().as_pin_mut().expect("attempt running");
                    let failure = match attempt.poll(cx) {
                        Poll::Ready(Ok(value)) => {
                            // The attempt's destructor may panic: the value
                            // is then dropped outside that unwind.
                            let value = drop_attempt(slot.as_mut(), value);
                            this.state = State::Done;
                            return Poll::Ready(Ok(value));
                        }
                        Poll::Ready(Err(e)) => AttemptError::Failed(e),
                        Poll::Pending => match this.deadline.poll(cx) {
                            Poll::Ready(()) => AttemptError::TimedOut(Elapsed::new()),
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    // Cancel a timed-out attempt before anything else runs
                    // (its error is dropped outside a panic of its
                    // destructor).
                    let failure = drop_attempt(slot.as_mut(), failure);
                    if let Some(gave_up) = this.after_failure(failure) {
                        this.state = State::Done;
                        return Poll::Ready(Err(gave_up));
                    }
                    if this.state == State::Next {
                        // No delay: still let the executor run others.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                State::Backoff => match this.deadline.poll(cx) {
                    Poll::Ready(()) => this.state = State::Next,
                    Poll::Pending => return Poll::Pending,
                },
                State::Done => unreachable!("checked in `poll`"),
            }
        }
    }
}

impl<Op, Fut, P, H, T, G> Retry<Op, Fut, P, H, T, G>
where
    Fut: RetryOutput,
    P: FnMut(&Fut::Error) -> bool,
    H: FnMut(&RetryEvent<'_, Fut::Error>),
    T: Timer,
    G: AttemptGate,
{
    /// The deadline of the attempt about to start: the per-attempt limit,
    /// capped by the total one.
    fn attempt_deadline(&self) -> Option<When> {
        let per_attempt = self.policy.attempt_timeout.map(|limit| {
            let now = self.deadline.timer().now();
            now.checked_add(limit).map_or(When::Never, When::At)
        });
        match (per_attempt, self.total_deadline) {
            (Some(When::At(a)), Some(When::At(b))) => Some(When::At(a.min(b))),
            (Some(When::At(a)), _) => Some(When::At(a)),
            (_, Some(When::At(b))) => Some(When::At(b)),
            (Some(w), _) | (None, Some(w)) => Some(w),
            (None, None) => None,
        }
    }

    /// Decides what follows a failed attempt: give up (the error), retry
    /// at once (`State::Next`) or after a backoff (`State::Backoff`).
    fn after_failure(
        &mut self,
        failure: AttemptError<Fut::Error>,
    ) -> Option<RetryError<Fut::Error>> {
        // The predicate, the clock and the hook are user code: if one
        // panics, the failure is dropped before that panic propagates, not
        // during its unwind.
        let (failure, verdict) = crate::unwind::keeping(failure, |failure| self.judge(failure));
        match verdict {
            Err(reason) => Some(RetryError {
                attempts: self.attempts,
                last: failure,
                reason,
            }),
            Ok(delay) => {
                self.last = G::keep(failure);
                if delay.is_zero() {
                    self.state = State::Next;
                } else {
                    self.deadline.restart(Some(When::After(delay)));
                    self.state = State::Backoff;
                }
                None
            }
        }
    }

    /// Whether to give up after `failure` (and why), or the delay before
    /// the next attempt (the hook told).
    fn judge(&mut self, failure: &AttemptError<Fut::Error>) -> Result<Duration, GaveUp> {
        if let AttemptError::Failed(e) = failure {
            if !(self.retry_if.as_mut().expect(PARTS))(e) {
                return Err(GaveUp::NotRetryable);
            }
        }
        let total = self.total_deadline.and_then(When::deadline);
        let now = total.map(|_| self.deadline.timer().now());
        if let (Some(total), Some(now)) = (total, now) {
            if now >= total {
                return Err(GaveUp::DeadlineReached);
            }
        }
        if self.attempts >= self.policy.max_attempts {
            return Err(GaveUp::AttemptsExhausted);
        }
        let delay = self
            .policy
            .backoff
            .delay_before(self.attempts, self.rng.next());
        if let (Some(total), Some(now)) = (total, now) {
            if now.checked_add(delay).is_none_or(|start| start >= total) {
                return Err(GaveUp::DeadlineReached);
            }
        }
        (self.on_retry.as_mut().expect(PARTS))(&RetryEvent {
            attempt: self.attempts,
            error: failure,
            delay,
        });
        Ok(delay)
    }
}

/// What `Retry`'s parts say when asked for after its drop (never).
const PARTS: &str = "a retry's parts are there until it is dropped";

/// Drops every part (the attempt, the rate grant, the last failure kept,
/// the operation, the predicate, the hook, the sleep and the timer), each
/// even if another's destructor panics (none of them during that panic's
/// unwind), then propagates the first panic.
impl<Op, Fut: Future, P, H, T: Timer, G: AttemptGate> Drop for Retry<Op, Fut, P, H, T, G>
where
    Fut: RetryOutput,
{
    fn drop(&mut self) {
        let mut panics = Panics::default();
        if let Some(mut attempt) = self.attempt.take() {
            panics.catch(|| attempt.set(None));
        }
        let grant = self.grant.take();
        panics.catch(move || drop(grant));
        let last = self.last.take();
        panics.catch(move || drop(last));
        let operation = self.operation.take();
        panics.catch(move || drop(operation));
        let retry_if = self.retry_if.take();
        panics.catch(move || drop(retry_if));
        let on_retry = self.on_retry.take();
        panics.catch(move || drop(on_retry));
        self.deadline.release(&mut panics);
        panics.resume();
    }
}

impl<Op, Fut: RetryOutput, P, H, T: Timer, G: AttemptGate> fmt::Debug
    for Retry<Op, Fut, P, H, T, G>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", &self.policy)
            .field("attempts", &self.attempts)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Drops the attempt in `attempt`, handing `outcome` (what it returned)
/// back; if its destructor panics, `outcome` is dropped first, outside that
/// panic's unwind, and the panic propagates (see
/// [`hand_back`](crate::unwind::hand_back)).
fn drop_attempt<A, V>(mut attempt: Pin<&mut Option<A>>, outcome: V) -> V {
    let mut panics = Panics::default();
    panics.catch(|| attempt.set(None));
    crate::unwind::hand_back(panics, outcome)
}

/// A small, fast generator for jitter (SplitMix64): statistical quality is
/// ample for spreading out delays; it is not for cryptography.
#[derive(Clone, Copy, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from std's per-process random hash keys, so two processes (and
    /// two retries) jitter differently without a `rand` dependency.
    fn from_entropy() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(&hasher as *const _ as usize);
        Rng(hasher.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_and_caps_without_overflow() {
        let b =
            Backoff::exponential(Duration::from_millis(3), Duration::from_secs(1)).without_jitter();
        let delays: Vec<_> = (1..=10)
            .map(|n| b.max_delay_before(n).as_millis())
            .collect();
        assert_eq!(delays, [3, 6, 12, 24, 48, 96, 192, 384, 768, 1000]);
        let huge = Backoff::exponential(Duration::from_secs(1), Duration::MAX).without_jitter();
        assert_eq!(huge.max_delay_before(33), Duration::from_secs(1 << 32));
        assert_eq!(huge.max_delay_before(u32::MAX), Duration::MAX);
        assert_eq!(huge.max_delay_before(0), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(100));
        let mut rng = Rng::new(7);
        let delays: Vec<_> = (0..1000).map(|_| b.delay_before(1, rng.next())).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        let below_half = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(50))
            .count();
        assert!(
            (350..650).contains(&below_half),
            "{below_half} of 1000 below half"
        );
        // The extremes of the random range map to the bounds.
        assert_eq!(b.delay_before(1, 0), Duration::ZERO);
        assert_eq!(b.delay_before(1, u64::MAX), Duration::from_millis(100));
    }

    #[test]
    #[should_panic(expected = "initial backoff (10s) is longer than the maximum (1s)")]
    fn inverted_bounds_panic() {
        let _ = Backoff::exponential(Duration::from_secs(10), Duration::from_secs(1));
    }

    #[test]
    #[should_panic(expected = "`max_attempts` must be at least 1")]
    fn zero_attempts_panic() {
        let _ = RetryPolicy::new(0);
    }
}
