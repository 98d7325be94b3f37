//! Beyond one process: rate limits and concurrency caps shared by a fleet,
//! kept in Redis (feature `redis`).
//!
//! A quota is usually a property of something outside your program — a
//! partner API's 100 calls per second, a database's budget — shared by every
//! replica of a service. The local [`RateLimiter`](crate::RateLimiter) holds
//! its state in one process, so ten replicas allowed 100/s each send
//! 1 000/s. [`redis::RateLimiter`](RateLimiter) keeps the same
//! [`Quota`](crate::rate_limiter::Quota) in Redis instead: every process
//! that checks the same key draws from one budget. Likewise
//! [`redis::Semaphore`](Semaphore) caps how many holders run at once
//! across every process (a database's 20 connections shared by replicas),
//! with leases so a crashed holder's permits come back.
//!
//! * **Bring your own connection.** The limiter takes the connection you
//!   already have: anything implementing redis-rs's async
//!   [`ConnectionLike`](::redis::aio::ConnectionLike) that is `Clone`
//!   (a `MultiplexedConnection`, a `ConnectionManager`). awaitkit adds no
//!   executor: with redis-rs's `tokio-comp` (awaitkit's `redis-tokio`) it
//!   runs on tokio, with `smol-comp` (`redis-smol`) on smol. The feature
//!   `redis` alone enables redis-rs's `aio`, which uses tokio's `sync`
//!   module and tokio-util's codec as libraries, not tokio's runtime.
//! * **One script call per check.** Each check is one `EVALSHA` of a Lua
//!   script that reads Redis's own clock (`TIME`), so the clocks of the
//!   machines running your code never matter. A server that lost its
//!   script cache (restarted, `SCRIPT FLUSH`, a failover) answers
//!   `NOSCRIPT`, and the limiter sends the script itself (`EVAL`), which
//!   caches it again.
//! * **Failure is an answer, not a hang.** Every call to Redis is bounded
//!   by a timeout ([`RateLimiter::with_timeout`], 1 s by default, on the
//!   limiter's [`Timer`](crate::Timer)); an unreachable, slow or failing
//!   Redis gives an [`Error`], never a panic, and the next call works again
//!   once Redis is back. [`RateLimiter::limit`] fails closed unless told
//!   otherwise ([`FailurePolicy::Open`]).
//!
//! # Guarantees and their limits
//!
//! * **Strict window**: in every window of `period` (by Redis's clock), at
//!   most `max_calls` grants across all processes, as long as Redis keeps
//!   its writes (see failover below). Memory: one sorted-set member per
//!   grant still inside the window, so a window of a million calls costs a
//!   million members per key; use GCRA for large quotas. One check of a
//!   window adds its `n` members in one script run, during which Redis
//!   serves nobody else, so a window check asks for at most
//!   [`MAX_WINDOW_AT_ONCE`] calls (more is [`Error::ExceedsQuota`]).
//! * **GCRA**: one number per key. Over any window of one period up to
//!   `burst + max_calls - 1` grants, as for the local limiter.
//! * **Idle keys cost nothing**: every key carries an expiry (`PEXPIRE`,
//!   rounded up to the millisecond) no earlier than the moment its state
//!   stops mattering (the last stamp has left the window; the theoretical
//!   arrival time has passed).
//! * **Time**: Redis's `TIME` has microsecond resolution; periods are
//!   rounded up to whole microseconds, and the GCRA spacing
//!   (`period / max_calls`) too, so a quota is never looser than asked.
//!   Periods longer than 2^52 us (about 142 years) count as 142 years
//!   (and a GCRA burst is capped so that it spans no longer: asking for
//!   more at once is [`Error::ExceedsQuota`]). Lua numbers and sorted-set
//!   scores are doubles, exact up to 2^53 us (the year 2255): a check whose
//!   slot would fall past that (only reachable by chaining bookings
//!   centuries ahead) fails with [`Error::Script`] instead of rounding a
//!   stamp early.
//! * **Fair waiting**: [`RateLimiter::acquire`] books the earliest slot in
//!   the same script call that finds the quota spent, and then sleeps until
//!   it: waiters are served in the order their calls reached Redis, across
//!   all processes, and none starves (16 contenders in 4 processes on a
//!   window of 8 per 100 ms: every wait 199–204 ms, where sleeping for
//!   the retry-after and checking again left the slowest waiting 600–800
//!   ms; `tests/redis_multiprocess.rs`). A waiter dropped while it sleeps
//!   gives its slot back with the limiter's next check (one more round
//!   trip then; a strict window removes its stamps, GCRA rolls the arrival
//!   time back unless a later caller booked after it). Until that check,
//!   or when it never comes or fails, the slot stays booked: under-use,
//!   never over-use. So does the grant of a call dropped or timed out
//!   while Redis was carrying it out. A give-back whose call is dropped
//!   before Redis answered, or whose connection panics, is queued again
//!   for the next check — but not a GCRA roll-back once handed to the
//!   connection (sent twice, it could roll back a later booking).
//! * **Panics of your connection or timer** (`req_packed_command`, its
//!   future's `poll` or `drop`, the connection's `clone` or `drop`, the
//!   timer's `now`, its sleeps): the future that ran it drops its call
//!   and sleep and queues what it held (a booked slot, a waiter's ticket,
//!   a permit) to be given back, each on its own and outside the panic's
//!   unwind, and then the first panic propagates from its `poll` (or
//!   `drop`); polling it again panics. (One case stays taken until it
//!   expires, under-use only: a GCRA grant made at once, lost to a panic of
//!   the finished call's sleep or timer destructor; rolling it back needs
//!   a booking's exact arrival time.) Nothing else is dropped during that
//!   unwind, so a second panic (say, of the connection clone's destructor)
//!   is discarded instead of aborting the process.
//! * **Replicas and failover**: scripts run on the primary. Redis
//!   replicates asynchronously, so a failover can lose the latest grants,
//!   and the new primary then grants them again: over-use bounded by what
//!   the lost writes held. Use a single primary (or Redis's `WAIT`-based
//!   setups) when that matters. A primary restarted without persistence
//!   forgets every key in the same way.
//! * **Clock rate**: a waiter sleeps on its own timer for the wait Redis
//!   computed; it starts after the reply arrived, so it ends at or after
//!   the booked time unless the two clocks' rates differ (parts per million).
//!   A sleep the timer completes early (a backend that caps long sleeps) is
//!   armed again: the slot is never used before its time.
//!
//! # The semaphore's guarantees and their limits
//!
//! * **Never more than `capacity` holders** at once, by Redis's clock, as
//!   long as every holder renews its lease before it runs out. A holder
//!   that stops renewing (crashed, paused, partitioned from Redis) loses
//!   its permits when its lease ends, and they are granted again: a holder
//!   that is merely slow may then still be working while a new one starts.
//!   [`Semaphore::limit`] closes that gap on its side: it renews every
//!   third of the lease while its future runs, and when renewals fail it
//!   cancels (drops) the future once the lease may have ended by its own
//!   timer (measured from before the last successful renewal was sent, so
//!   never later than Redis's end, up to the two clocks' rate difference),
//!   with [`Error::LeaseLost`]. A [`Permit`] you hold yourself is renewed
//!   only by [`Permit::renew`].
//! * **Fairness**: waiters ([`Semaphore::acquire`]) take a ticket in a
//!   sorted set scored by the Redis time of their first call (ties: by
//!   ticket name), and a waiter is granted only when the permits held plus
//!   those asked for by every live ticket ahead of it leave room: first
//!   come, first served across processes, and a large request at the head
//!   holds the smaller ones behind it. [`Semaphore::try_acquire`] never
//!   takes a permit owed to a waiter. A waiter re-asks every
//!   [`poll_interval`](Semaphore::with_poll_interval) (25 ms by default),
//!   so a freed permit is taken within that interval plus a round trip
//!   (no pub/sub in this version). A waiter whose ticket is not refreshed
//!   within three poll intervals plus the timeout (at most 60 s, or two
//!   poll intervals plus the timeout if longer; a dead process) is dropped from the queue; if it was only slow, its next call
//!   queues it again, at the back.
//! * **Dropped permits and waiters** are given back by the handle's next
//!   call (one more round trip, before that call's own), and by the lease
//!   (permits) or the ticket's expiry (waiters) at the latest. Nothing is
//!   spawned. The same holds for an acquire dropped or timed out while
//!   Redis was granting it.
//! * **Cost**: each permit is one sorted-set member ([`MAX_PERMITS`] caps
//!   the capacity); a grant walks the queue only as far as the capacity
//!   allows. Keys expire once no lease or ticket in them can matter.
//! * Every process sharing a semaphore must use the same name, capacity
//!   and lease; failover loses the latest grants as for the rate limiter.
//!
//! # Examples
//!
//! ```no_run
//! use awaitkit::rate_limiter::Quota;
//! use std::time::Duration;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! let conn = client.get_multiplexed_async_connection().await?;
//! // 100 calls per second to the partner API, shared by every replica.
//! let quota = Quota::window(100, Duration::from_secs(1))?;
//! let limiter = awaitkit::redis::RateLimiter::new(conn, "ratelimit:", quota);
//!
//! limiter.acquire("partner-api").await?; // waits its turn, fleet-wide
//! let page = limiter.limit("partner-api", async { "response" }).await?;
//! # let _ = page;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod rate_limiter;
mod scripts;
mod semaphore;

pub use rate_limiter::{Acquire, Limit, RateLimiter, TryAcquire};
pub use semaphore::{
    AcquirePermit, MAX_PERMITS, Permit, ReleasePermit, RenewPermit, Semaphore, SemaphoreLimit,
    TryAcquirePermit,
};

/// The most calls one check of a strict-window quota asks for
/// (`acquire_n`, `try_acquire_n`), whatever the quota's `max_calls`: the
/// script adds one sorted-set member per call, and Redis serves no other
/// client while it runs (a few milliseconds at this size; an `n` in the
/// billions, which a quota of `usize::MAX` allows, would hold the shared
/// server for hours). Asking for more is [`Error::ExceedsQuota`] with this
/// `max`, before Redis is asked. GCRA quotas have no such bound (one number
/// per key).
///
/// # Examples
///
/// ```no_run
/// use awaitkit::rate_limiter::Quota;
/// use awaitkit::redis::{Error, MAX_WINDOW_AT_ONCE};
/// use std::time::Duration;
/// # async fn demo(conn: redis::aio::MultiplexedConnection) {
/// let quota = Quota::window(usize::MAX, Duration::from_secs(1)).unwrap();
/// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
/// let err = limiter.try_acquire_n("k", MAX_WINDOW_AT_ONCE + 1).await.unwrap_err();
/// assert!(matches!(err, Error::ExceedsQuota { max: MAX_WINDOW_AT_ONCE, .. }));
/// # }
/// ```
pub const MAX_WINDOW_AT_ONCE: usize = 10_000;

use crate::unwind::Panics;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// Polls a Redis future's state with `poll`. When user code panics in it
/// (the connection, the timer or its sleep, a limited future), `teardown`
/// first drops the future's parts and queues what they held to be given
/// back (outside that panic's unwind, each part on its own, the first
/// panic kept), then the panic propagates: from this poll, even one made
/// during another panic's unwind, as any future's panic would.
fn guarded<S: ?Sized, R>(
    mut state: Pin<&mut S>,
    poll: impl FnOnce(Pin<&mut S>) -> Poll<R>,
    teardown: impl FnOnce(Pin<&mut S>, &mut Panics),
) -> Poll<R> {
    match catch_unwind(AssertUnwindSafe(|| poll(state.as_mut()))) {
        Ok(out) => out,
        Err(payload) => {
            let mut panics = Panics::default();
            panics.keep(Some(payload));
            teardown(state, &mut panics);
            resume_unwind(panics.take().expect("kept above"))
        }
    }
}

/// Why a Redis-backed operation did not grant.
///
/// # Examples
///
/// ```
/// use awaitkit::redis::Error;
/// use std::time::Duration;
///
/// let err = Error::RateLimited { retry_after: Duration::from_millis(40) };
/// assert_eq!(err.retry_after(), Some(Duration::from_millis(40)));
/// assert!(!err.is_failure()); // an answer from the quota, not a failure of Redis
/// assert!(Error::Timeout { after: Duration::from_secs(1) }.is_failure());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Not now: the same request would be granted after `retry_after`
    /// (computed by the script on Redis's clock), if nobody else asks
    /// first.
    RateLimited {
        /// How long until the request would be granted.
        retry_after: Duration,
    },
    /// More calls at once than the quota ever allows
    /// ([`Quota::max_at_once`](crate::rate_limiter::Quota::max_at_once)),
    /// or than one window check asks for ([`MAX_WINDOW_AT_ONCE`]).
    /// Checked before Redis is asked.
    ExceedsQuota {
        /// The calls asked for.
        requested: usize,
        /// The most the quota grants at once.
        max: usize,
    },
    /// Redis did not answer within the limiter's timeout
    /// ([`RateLimiter::with_timeout`]). The call may still have been
    /// carried out: a grant it made is lost (under-use).
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// Redis or the connection failed (refused, dropped, an error reply).
    Redis(::redis::RedisError),
    /// [`Semaphore::try_acquire`]: no permit free now (or waiters queued
    /// for the free ones).
    NoPermits,
    /// More permits at once than the [`Semaphore`]'s capacity. Checked
    /// before Redis is asked.
    ExceedsCapacity {
        /// The permits asked for.
        requested: usize,
        /// The semaphore's capacity.
        capacity: usize,
    },
    /// A [`Permit`]'s lease ran out before it was renewed: its permits
    /// may be held by someone else now ([`Permit::renew`], and
    /// [`Semaphore::limit`], which cancels its future then).
    LeaseLost,
    /// Redis answered something the script never returns (a different
    /// script under the same hash, a proxy in between), or the script
    /// refused: the key holds a value of another use under the prefix, or
    /// the slot would fall past 2^53 us (see the module docs).
    Script(String),
}

impl Error {
    /// How long to wait before retrying, for [`Error::RateLimited`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::redis::Error;
    /// let err = Error::ExceedsQuota { requested: 5, max: 2 };
    /// assert_eq!(err.retry_after(), None); // never, under this quota
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// `true` when Redis failed ([`Error::Timeout`], [`Error::Redis`],
    /// [`Error::Script`]) rather than the quota answering: the errors
    /// [`FailurePolicy::Open`] lets through.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::redis::Error;
    /// assert!(Error::Script("unexpected".into()).is_failure());
    /// assert!(!Error::ExceedsQuota { requested: 5, max: 2 }.is_failure());
    /// ```
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Redis(_) | Error::Script(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RateLimited { retry_after } => {
                write!(f, "rate limit reached; retry after {retry_after:?}")
            }
            Error::ExceedsQuota { requested, max } => write!(
                f,
                "{requested} calls at once exceed the rate limit's maximum of {max}"
            ),
            Error::Timeout { after } => write!(f, "Redis did not answer within {after:?}"),
            Error::Redis(e) => write!(f, "Redis failed: {e}"),
            Error::NoPermits => write!(f, "no permit free in the Redis semaphore"),
            Error::ExceedsCapacity {
                requested,
                capacity,
            } => write!(
                f,
                "{requested} permits at once exceed the semaphore's capacity of {capacity}"
            ),
            Error::LeaseLost => write!(f, "the semaphore lease ran out before it was renewed"),
            Error::Script(reply) => {
                write!(f, "unexpected reply from an awaitkit Redis script: {reply}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<::redis::RedisError> for Error {
    fn from(e: ::redis::RedisError) -> Self {
        Error::Redis(e)
    }
}

/// What [`RateLimiter::limit`] and [`Semaphore::limit_with`] do when Redis fails (a timeout, a
/// connection error, an unexpected reply).
///
/// # Examples
///
/// ```no_run
/// use awaitkit::redis::FailurePolicy;
/// # async fn demo(limiter: awaitkit::redis::RateLimiter<redis::aio::MultiplexedConnection>) {
/// // Better a few calls over the quota than an outage when Redis is down.
/// let out = limiter.limit("search", async { 42 }).on_failure(FailurePolicy::Open).await;
/// assert_eq!(out.unwrap(), 42);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailurePolicy {
    /// Fail closed (the default): the future is not run, the error is
    /// returned.
    #[default]
    Closed,
    /// Fail open: run the future as if granted (no limit while Redis is
    /// failing).
    Open,
}

/// A grant: when Redis granted it, and how long the caller waited for a
/// booked slot.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(limiter: awaitkit::redis::RateLimiter<redis::aio::MultiplexedConnection>) {
/// let grant = limiter.acquire("key").await.unwrap();
/// println!("granted at {:?} after the epoch (Redis's clock)", grant.redis_time());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    at_us: u64,
    booked: Duration,
}

impl Grant {
    /// The grant's time on Redis's clock, since the Unix epoch (for
    /// `n == 0`, which asks Redis nothing: zero).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(limiter: awaitkit::redis::RateLimiter<redis::aio::MultiplexedConnection>) {
    /// let a = limiter.acquire("k").await.unwrap();
    /// let b = limiter.acquire("k").await.unwrap();
    /// assert!(b.redis_time() >= a.redis_time());
    /// # }
    /// ```
    pub fn redis_time(&self) -> Duration {
        Duration::from_micros(self.at_us)
    }

    /// How long after the check the booked slot was (zero when granted at
    /// once): the wait the script computed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(limiter: awaitkit::redis::RateLimiter<redis::aio::MultiplexedConnection>) {
    /// let grant = limiter.try_acquire("k").await.unwrap();
    /// assert_eq!(grant.waited(), std::time::Duration::ZERO); // try_acquire never books
    /// # }
    /// ```
    pub fn waited(&self) -> Duration {
        self.booked
    }
}
