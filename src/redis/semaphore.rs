//! `redis::Semaphore`: a counting semaphore shared by processes, with
//! leases and a fair ticket queue, kept in Redis.

use super::rate_limiter::{duration_us, unique_tag};
use super::scripts::{self, Call, GiveBack, Lua, ScriptCall};
use super::{Error, FailurePolicy, guarded};
use crate::time::{DefaultTimer, Timer};
use crate::unwind::Panics;
use ::redis::Value;
use ::redis::aio::ConnectionLike;
use futures_core::FusedFuture;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

/// A counting semaphore whose permits are shared by every process that
/// uses the same name: at most `capacity` permits held at once, fleet-wide,
/// while holders renew their leases in time.
///
/// Each holder's permits are members of a Redis sorted set scored by their
/// lease expiry (on Redis's clock): a holder that crashes gives its permits
/// back when its lease runs out, and every script call first removes the
/// expired ones. Waiters ([`acquire`](Self::acquire)) take a ticket in a
/// second sorted set ordered by arrival, and are granted in that order.
/// See the [module docs](super) for the guarantees and their limits.
///
/// `C` is your connection, as for [`RateLimiter`](super::RateLimiter).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = redis::Client::open("redis://127.0.0.1/")?
///     .get_multiplexed_async_connection()
///     .await?;
/// // At most 10 connections to the database, across every replica.
/// let sem = awaitkit::redis::Semaphore::new(conn, "db-conns", 10, Duration::from_secs(30));
/// let permit = sem.acquire().await?;
/// // ... use the database ...
/// permit.release().await?;
/// let rows = sem.limit(async { 42 }).await?; // renews the lease while it runs
/// # let _ = rows;
/// # Ok(())
/// # }
/// ```
pub struct Semaphore<C, T: Timer = DefaultTimer> {
    conn: C,
    keys: [Vec<u8>; 3],
    capacity: usize,
    lease: Duration,
    poll_interval: Duration,
    timeout: Duration,
    timer: T,
    tag: String,
    seq: AtomicU64,
    // Releases of dropped permits and tickets of dropped waiters, carried
    // out before the next call of this handle.
    given_back: Arc<Mutex<GiveBack>>,
}

/// The most permits a [`Semaphore`] holds (its capacity is capped here):
/// each permit is one sorted-set member, and one script run adds a
/// holder's permits while Redis serves nobody else.
///
/// # Examples
///
/// ```no_run
/// use awaitkit::redis::{MAX_PERMITS, Semaphore};
/// use std::time::Duration;
/// # async fn demo(conn: redis::aio::MultiplexedConnection) {
/// let sem = Semaphore::new(conn, "s", usize::MAX, Duration::from_secs(10));
/// assert_eq!(sem.capacity(), MAX_PERMITS);
/// # }
/// ```
pub const MAX_PERMITS: usize = 10_000;

/// The longest [`Semaphore::with_poll_interval`].
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

impl<C> Semaphore<C> {
    /// A semaphore of `capacity` permits (at most [`MAX_PERMITS`]) named
    /// `name` (its Redis keys are `name` followed by `:holders`, `:queue`
    /// and `:beats`), whose permits are leased for `lease` (at least 1 ms)
    /// at a time, with a 1 s timeout per call to Redis, waiters polling
    /// every 25 ms, and the [`DefaultTimer`].
    ///
    /// Every process sharing the semaphore must use the same name,
    /// capacity and lease.
    ///
    /// On a Redis Cluster, one script call may only touch keys of one hash
    /// slot: give the name a hash tag, as in `"{jobs}"`, so that its three
    /// keys share the slot of `jobs` (without one, calls fail with Redis's
    /// `CROSSSLOT` error, as an [`Error::Redis`](crate::redis::Error::Redis)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "jobs", 4, Duration::from_secs(10));
    /// assert_eq!(sem.capacity(), 4);
    /// assert_eq!(sem.lease(), Duration::from_secs(10));
    /// # }
    /// ```
    pub fn new(conn: C, name: impl Into<Vec<u8>>, capacity: usize, lease: Duration) -> Self {
        let name = name.into();
        let key = |suffix: &[u8]| [name.as_slice(), suffix].concat();
        Semaphore {
            conn,
            keys: [key(b":holders"), key(b":queue"), key(b":beats")],
            capacity: capacity.min(MAX_PERMITS),
            lease: lease.max(Duration::from_millis(1)),
            poll_interval: Duration::from_millis(25),
            timeout: Duration::from_secs(1),
            timer: DefaultTimer,
            tag: unique_tag(),
            seq: AtomicU64::new(0),
            given_back: Arc::default(),
        }
    }
}

impl<C, T: Timer> Semaphore<C, T> {
    /// The same semaphore on another [`Timer`] (for the waits, renewals
    /// and timeouts).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 4, Duration::from_secs(10))
    ///     .with_timer(awaitkit::time::FuturesTimer);
    /// # }
    /// ```
    pub fn with_timer<U: Timer>(self, timer: U) -> Semaphore<C, U> {
        Semaphore {
            conn: self.conn,
            keys: self.keys,
            capacity: self.capacity,
            lease: self.lease,
            poll_interval: self.poll_interval,
            timeout: self.timeout,
            timer,
            tag: self.tag,
            seq: self.seq,
            given_back: self.given_back,
        }
    }

    /// Bounds every call to Redis by `timeout` (1 s by default): a call
    /// that takes longer fails with [`Error::Timeout`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 4, Duration::from_secs(10))
    ///     .with_timeout(Duration::from_millis(100));
    /// assert_eq!(sem.timeout(), Duration::from_millis(100));
    /// # }
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often a waiting [`acquire`](Self::acquire) asks Redis again
    /// (25 ms by default, at least 1 ms, at most 1 hour): a permit freed
    /// elsewhere is taken by the head waiter within this interval plus a
    /// round trip.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 4, Duration::from_secs(10))
    ///     .with_poll_interval(Duration::from_millis(5));
    /// assert_eq!(sem.poll_interval(), Duration::from_millis(5));
    /// # }
    /// ```
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.clamp(Duration::from_millis(1), MAX_POLL_INTERVAL);
        self
    }

    /// The bound on each call to Redis.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 4, Duration::from_secs(10));
    /// assert_eq!(sem.timeout(), Duration::from_secs(1));
    /// # }
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often a waiter asks Redis again.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 4, Duration::from_secs(10));
    /// assert_eq!(sem.poll_interval(), Duration::from_millis(25));
    /// # }
    /// ```
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The most permits held at once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 3, Duration::from_secs(10));
    /// assert_eq!(sem.capacity(), 3);
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a grant or a renewal keeps permits held.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 3, Duration::from_secs(10));
    /// assert_eq!(sem.lease(), Duration::from_secs(10));
    /// # }
    /// ```
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The sorted set of held permits (member per permit, scored by lease
    /// expiry in microseconds on Redis's clock): for monitoring.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 3, Duration::from_secs(10));
    /// assert_eq!(sem.holders_key(), b"s:holders");
    /// # }
    /// ```
    pub fn holders_key(&self) -> &[u8] {
        &self.keys[0]
    }

    /// The semaphore's timer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 3, Duration::from_secs(10));
    /// let _now = awaitkit::Timer::now(sem.timer());
    /// # }
    /// ```
    pub fn timer(&self) -> &T {
        &self.timer
    }

    fn queue_back(&self, kind: &str, what: String) {
        let mut back = self
            .given_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        back.args.push(kind.to_owned());
        back.args.push(what);
    }

    /// A ticket's lifetime without a heartbeat: three poll intervals and a
    /// timeout (at most 30 s of it), capped at 60 s, or at two poll
    /// intervals and the timeout when those are longer: a live waiter
    /// renews it in time, whatever its interval.
    fn ticket_ttl(&self) -> Duration {
        let t = self.timeout.min(Duration::from_secs(30));
        let beats = self.poll_interval.saturating_mul(3).saturating_add(t);
        let cap =
            Duration::from_secs(60).max(self.poll_interval.saturating_mul(2).saturating_add(t));
        beats.min(cap)
    }
}

/// Queues, on drop, the removal of a grant that may have been made (and
/// of a waiting ticket) unless disarmed: a call dropped or failed while
/// Redis was carrying it out gives back what it took at the next call.
struct Guard<'a, C, T: Timer> {
    sem: &'a Semaphore<C, T>,
    id: String,
    n: usize,
    ticket: bool,
    armed: bool,
}

impl<C, T: Timer> Drop for Guard<'_, C, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.ticket {
            self.sem.queue_back("t", format!("{}/{}", self.n, self.id));
        }
        self.sem.queue_back("p", format!("{}/{}", self.id, self.n));
    }
}

impl<C, T> Semaphore<C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    /// One script call under the timeout, after the queued give-backs
    /// (nothing is sent before its first poll).
    fn call(&self, lua: &'static Lua, keys: Vec<Vec<u8>>, args: Vec<String>) -> ScriptCall<T> {
        let back = self.given_back.clone();
        let all = self.keys.to_vec();
        // Two clones of user values: if the second panics, the first is
        // dropped before that panic propagates, not during its unwind.
        let (timer, fut) = crate::unwind::keeping(self.timer.clone(), |_| {
            scripts::invoke(&self.conn, Call { lua, keys, args }, move || {
                scripts::take_back(&back, &scripts::SEM_RELEASE, Some(&all), 2)
            })
        });
        ScriptCall::new(fut, self.timeout, timer)
    }

    fn start(&self, n: usize) -> Result<Option<String>, Error> {
        if n > self.capacity {
            return Err(Error::ExceedsCapacity {
                requested: n,
                capacity: self.capacity,
            });
        }
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(format!(
            "{}:{}",
            self.tag,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// The acquire call (its reply read by [`grant`]).
    fn ask(&self, id: &str, n: usize, wait: bool) -> ScriptCall<T> {
        let args = vec![
            self.capacity.to_string(),
            duration_us(self.lease).to_string(),
            n.to_string(),
            if wait { "w" } else { "t" }.to_owned(),
            id.to_owned(),
            duration_us(self.ticket_ttl()).to_string(),
        ];
        self.call(&scripts::SEM_ACQUIRE, self.keys.to_vec(), args)
    }

    /// The renewal call (its reply read by [`grant`]: `Some(expiry)`
    /// renewed, `None` when the lease had already run out).
    fn renew_call(&self, id: &str, n: usize) -> ScriptCall<T> {
        let args = vec![
            id.to_owned(),
            n.to_string(),
            duration_us(self.lease).to_string(),
            duration_us(self.lease.max(self.ticket_ttl())).to_string(),
        ];
        self.call(&scripts::SEM_RENEW, vec![self.keys[0].clone()], args)
    }

    fn permit(&self, id: String, n: usize, expiry_us: u64, sent: Instant) -> Permit<'_, C, T> {
        Permit {
            sem: self,
            id,
            n,
            expiry_us,
            local_expiry: sent.checked_add(self.lease),
            held: n > 0,
        }
    }

    /// One permit now or never: granted when a permit is free and no
    /// waiter is queued for it, else [`Error::NoPermits`]. One script call.
    ///
    /// # Cancel safety
    ///
    /// Dropped while Redis answers (or failed with a timeout), a grant it
    /// may have made is released by this handle's next call, and by the
    /// lease's expiry at the latest.
    ///
    /// # Errors
    ///
    /// [`Error::NoPermits`]; [`Error::Timeout`], [`Error::Redis`] or
    /// [`Error::Script`] when Redis fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::Error;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 1, Duration::from_secs(10));
    /// let held = sem.try_acquire().await.unwrap();
    /// assert!(matches!(sem.try_acquire().await, Err(Error::NoPermits)));
    /// held.release().await.unwrap();
    /// # }
    /// ```
    pub fn try_acquire(&self) -> TryAcquirePermit<'_, C, T> {
        self.try_acquire_many(1)
    }

    /// [`try_acquire`](Self::try_acquire) for `n` permits at once (all or
    /// none). `n == 0` is granted without asking Redis.
    ///
    /// # Cancel safety
    ///
    /// As for [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// As for [`try_acquire`](Self::try_acquire), and
    /// [`Error::ExceedsCapacity`] when `n` is more than the capacity.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 3, Duration::from_secs(10));
    /// let two = sem.try_acquire_many(2).await.unwrap();
    /// assert_eq!(two.permits(), 2);
    /// assert!(sem.try_acquire_many(2).await.is_err());
    /// # }
    /// ```
    pub fn try_acquire_many(&self, n: usize) -> TryAcquirePermit<'_, C, T> {
        TryAcquirePermit {
            ask: Ask::new(self, n, false),
        }
    }

    /// Waits for one permit, in arrival order: the first call takes a
    /// ticket in Redis's queue (scored by Redis's clock), and each call
    /// after it (every [`poll_interval`](Self::poll_interval)) renews the
    /// ticket's heartbeat and is granted once the permits held, plus those
    /// asked for by every ticket ahead of it, leave room.
    ///
    /// Only each call to Redis is bounded by the timeout; wrap the future
    /// in [`timeout`](crate::timeout()) to bound the wait.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point queues its ticket's removal (and
    /// the release of a grant a call in flight may have made) for this
    /// handle's next call; the ticket's heartbeat expiry (three poll
    /// intervals and the timeout, at most 60 s) and the lease bound them
    /// when no call comes. Until then the waiters behind it wait longer
    /// (never more than capacity held).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Redis`] or [`Error::Script`] when a call
    /// to Redis fails (the ticket is given back); never
    /// [`Error::NoPermits`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let permit = sem.acquire().await.unwrap(); // waits its turn, fleet-wide
    /// drop(permit); // released by this handle's next call, or the lease's end
    /// # }
    /// ```
    pub fn acquire(&self) -> AcquirePermit<'_, C, T> {
        self.acquire_many(1)
    }

    /// [`acquire`](Self::acquire) for `n` permits at once. A large request
    /// at the head of the queue holds back the smaller ones behind it
    /// (first come, first served).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), and [`Error::ExceedsCapacity`]
    /// when `n` is more than the capacity.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 8, Duration::from_secs(10));
    /// let batch = sem.acquire_many(3).await.unwrap();
    /// assert_eq!(batch.permits(), 3);
    /// # }
    /// ```
    pub fn acquire_many(&self, n: usize) -> AcquirePermit<'_, C, T> {
        AcquirePermit {
            ask: Ask::new(self, n, true),
        }
    }

    /// Runs `future` holding one permit: acquires it, polls the future
    /// while renewing the lease every third of it (a short script call
    /// polled beside the future, inside the same future: nothing is
    /// spawned), and releases the permit with an awaited call when the
    /// future ends. Fails closed: when Redis fails, the future is dropped
    /// unrun and the error returned; see [`limit_with`](Self::limit_with).
    ///
    /// If the lease cannot be renewed (Redis unreachable, or the lease
    /// already gone), the future is **cancelled** (dropped) once the lease
    /// may have run out by the local timer (measured from before the last
    /// successful call was sent), and [`Error::LeaseLost`] is returned:
    /// the future never runs without a permit it holds.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire) while waiting; dropped while the
    /// future runs, the permit is released by this handle's next call (or
    /// the lease's end).
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), and [`Error::LeaseLost`]. A
    /// failed release at the end does not turn the output into an error:
    /// it is queued for the next call, and the lease bounds it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(3));
    /// let out = sem.limit(async { "long job" }).await.unwrap();
    /// assert_eq!(out, "long job");
    /// # }
    /// ```
    pub fn limit<F: IntoFuture>(&self, future: F) -> SemaphoreLimit<'_, F, C, T> {
        self.limit_with(FailurePolicy::Closed, future)
    }

    /// [`limit`](Self::limit) with a [`FailurePolicy`]:
    /// [`FailurePolicy::Open`] runs the future without a permit when the
    /// acquire fails because Redis failed, and keeps it running (renewing
    /// when it can) when renewals fail or the lease is lost.
    ///
    /// # Cancel safety
    ///
    /// As for [`limit`](Self::limit).
    ///
    /// # Errors
    ///
    /// As for [`limit`](Self::limit) under [`FailurePolicy::Closed`];
    /// under [`FailurePolicy::Open`] only [`Error::ExceedsCapacity`]
    /// (never, for one permit, unless the capacity is zero).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::FailurePolicy;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(3));
    /// let out = sem.limit_with(FailurePolicy::Open, async { 7 }).await;
    /// assert_eq!(out.unwrap(), 7);
    /// # }
    /// ```
    pub fn limit_with<F: IntoFuture>(
        &self,
        policy: FailurePolicy,
        future: F,
    ) -> SemaphoreLimit<'_, F, C, T> {
        SemaphoreLimit {
            sem: self,
            open: policy == FailurePolicy::Open,
            acquire: Some(self.acquire()),
            given: Some(future),
            future: None,
            permit: None,
            next: None,
            renewal: None,
            renewal_sent: None,
            sleep: None,
            sleep_at: None,
            release: None,
            output: None,
            panicked: false,
            done: false,
        }
    }
}

impl<C, T: Timer> fmt::Debug for Semaphore<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &String::from_utf8_lossy(&self.keys[0]))
            .field("capacity", &self.capacity)
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Permits held from a [`Semaphore`], leased until
/// [`lease_expiry`](Self::lease_expiry) unless renewed.
///
/// Dropping it queues the release for the semaphore handle's next call;
/// the lease's expiry returns the permits at the latest (so a permit
/// dropped by a process that makes no further call is back within one
/// lease). Call [`release`](Self::release) to give them back at once.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(conn: redis::aio::MultiplexedConnection) {
/// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
/// let mut permit = sem.acquire().await.unwrap();
/// permit.renew().await.unwrap(); // another 10 s
/// permit.release().await.unwrap();
/// # }
/// ```
#[must_use = "a permit dropped at once is released by the next call"]
pub struct Permit<'a, C, T: Timer = DefaultTimer> {
    sem: &'a Semaphore<C, T>,
    id: String,
    n: usize,
    expiry_us: u64,
    // The lease's end by the local timer, measured from before the call
    // that set it was sent: never later than Redis's.
    local_expiry: Option<Instant>,
    held: bool,
}

impl<C, T: Timer> Permit<'_, C, T> {
    /// How many permits this holds.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// assert_eq!(sem.acquire().await.unwrap().permits(), 1);
    /// # }
    /// ```
    pub fn permits(&self) -> usize {
        self.n
    }

    /// When the lease runs out, on Redis's clock, since the Unix epoch
    /// (zero for zero permits).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let p = sem.acquire().await.unwrap();
    /// assert!(p.lease_expiry() > Duration::from_secs(1_600_000_000));
    /// # }
    /// ```
    pub fn lease_expiry(&self) -> Duration {
        Duration::from_micros(self.expiry_us)
    }

    /// The permit's members in the holders set are `{id}:1` to `{id}:{n}`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let p = sem.acquire().await.unwrap();
    /// assert!(!p.id().is_empty());
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<'a, C, T> Permit<'a, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    /// Extends the lease to a full lease from now (Redis's clock).
    ///
    /// # Cancel safety
    ///
    /// Dropping it leaves the lease as Redis last set it.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease had already run out (the
    /// permits are gone: renewing again answers the same without asking
    /// Redis, and releasing does nothing); [`Error::Timeout`],
    /// [`Error::Redis`] or [`Error::Script`] when Redis fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let mut p = sem.acquire().await.unwrap();
    /// let before = p.lease_expiry();
    /// p.renew().await.unwrap();
    /// assert!(p.lease_expiry() >= before);
    /// # }
    /// ```
    pub fn renew(&mut self) -> RenewPermit<'_, 'a, C, T> {
        RenewPermit {
            permit: self,
            sent: None,
            step: Step::Start,
        }
    }

    /// Gives the permits back now: one awaited script call.
    ///
    /// # Cancel safety
    ///
    /// Dropped before Redis answered, or failed, the release is queued for
    /// the semaphore handle's next call (and the lease bounds it).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Redis`] or [`Error::Script`] when Redis
    /// fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = awaitkit::redis::Semaphore::new(conn, "s", 1, Duration::from_secs(10));
    /// sem.acquire().await.unwrap().release().await.unwrap();
    /// sem.try_acquire().await.unwrap(); // free again
    /// # }
    /// ```
    pub fn release(self) -> ReleasePermit<'a, C, T> {
        ReleasePermit {
            permit: Some(self),
            step: Step::Start,
        }
    }
}

impl<C, T: Timer> Drop for Permit<'_, C, T> {
    fn drop(&mut self) {
        if self.held {
            self.sem.queue_back("p", format!("{}/{}", self.id, self.n));
        }
    }
}

impl<C, T: Timer> fmt::Debug for Permit<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("permits", &self.n)
            .field("lease_expiry", &self.lease_expiry())
            .finish_non_exhaustive()
    }
}

/// Reads an acquire's or a renewal's reply: `Some(expiry)` granted (or
/// renewed), `None` refused (or the lease already gone).
fn grant(reply: &Value) -> Result<Option<u64>, Error> {
    match ints(reply) {
        Some([1, expiry, _]) => Ok(Some(expiry as u64)),
        Some([0, _, _]) => Ok(None),
        _ => Err(Error::Script(format!("{reply:?}"))),
    }
}

pin_project! {
    /// Where a semaphore future stands: not started (nothing sent before
    /// the first poll), a script call in flight, a waiter's sleep before
    /// it asks again, done, or given up after a panic of user code.
    #[project = StepProj]
    enum Step<T: Timer> {
        Start,
        Call { call: ScriptCall<T> },
        Sleep { #[pin] sleep: T::Sleep },
        Done,
        Panicked,
    }
}

impl<T: Timer> Step<T> {
    fn state(&self) -> &'static str {
        match self {
            Step::Start => "not started",
            Step::Call { .. } => "asking Redis",
            Step::Sleep { .. } => "waiting to ask again",
            Step::Done => "done",
            Step::Panicked => "panicked",
        }
    }
}

#[cold]
#[track_caller]
fn polled_after_completion() -> ! {
    panic!("a redis semaphore future polled after completion")
}

#[cold]
#[track_caller]
fn polled_after_panic() -> ! {
    panic!("a redis semaphore future polled after a panic of its connection or timer")
}

pin_project! {
    /// The state shared by [`TryAcquirePermit`] and [`AcquirePermit`].
    struct Ask<'a, C, T: Timer> {
        sem: &'a Semaphore<C, T>,
        n: usize,
        wait: bool,
        // When the call in flight was sent: the local lease starts there.
        sent: Option<Instant>,
        #[pin]
        step: Step<T>,
        // Set once the first call is made: gives back, on drop, what a
        // call in flight (or a failed one) may have taken.
        guard: Option<Guard<'a, C, T>>,
    }
}

impl<'a, C, T: Timer> Ask<'a, C, T> {
    fn new(sem: &'a Semaphore<C, T>, n: usize, wait: bool) -> Self {
        Ask {
            sem,
            n,
            wait,
            sent: None,
            step: Step::Start,
            guard: None,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.step, Step::Done)
    }

    /// After a panic of user code in its poll: the call or sleep goes,
    /// then the guard queues the give-back of what the call may have taken
    /// (a waiter's ticket too).
    fn abandon(self: Pin<&mut Self>, panics: &mut Panics) {
        let mut this = self.project();
        panics.catch(|| this.step.set(Step::Panicked));
        *this.guard = None;
    }
}

impl<'a, C, T> Ask<'a, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn poll_ask(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit<'a, C, T>, Error>> {
        let mut this = self.project();
        let (sem, n, wait) = (*this.sem, *this.n, *this.wait);
        loop {
            match this.step.as_mut().project() {
                StepProj::Start => {
                    let id = match sem.start(n) {
                        Ok(Some(id)) => id,
                        Ok(None) => {
                            this.step.set(Step::Done);
                            let now = sem.timer.now();
                            return Poll::Ready(Ok(sem.permit(String::new(), 0, 0, now)));
                        }
                        Err(e) => {
                            this.step.set(Step::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    *this.guard = Some(Guard {
                        sem,
                        id,
                        n,
                        ticket: wait,
                        armed: true,
                    });
                }
                StepProj::Call { call } => {
                    let out = ready!(call.poll(cx)).and_then(|reply| grant(&reply));
                    // The finished call goes first (its deadline's sleep
                    // and timer are user code): if a destructor panics
                    // there, the guard is still armed and gives back what
                    // the call took.
                    this.step.set(Step::Done);
                    let Some(guard) = this.guard.as_mut() else {
                        unreachable!("armed before the first call");
                    };
                    match out {
                        Ok(Some(expiry)) => {
                            guard.armed = false;
                            let id = std::mem::take(&mut guard.id);
                            *this.guard = None;
                            let Some(sent) = *this.sent else {
                                unreachable!("set with the call");
                            };
                            return Poll::Ready(Ok(sem.permit(id, n, expiry, sent)));
                        }
                        Ok(None) if !wait => {
                            // Refused: nothing was taken.
                            guard.armed = false;
                            *this.guard = None;
                            return Poll::Ready(Err(Error::NoPermits));
                        }
                        Ok(None) => {
                            if let Some(at) = sem.timer.now().checked_add(sem.poll_interval) {
                                this.step.set(Step::Sleep {
                                    sleep: sem.timer.sleep_until(at),
                                });
                                continue;
                            }
                        }
                        Err(e) => {
                            // The guard, still armed, queues the give-back.
                            *this.guard = None;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StepProj::Sleep { sleep } => ready!(sleep.poll(cx)),
                StepProj::Done => polled_after_completion(),
                StepProj::Panicked => polled_after_panic(),
            }
            // Ask (again): after the first poll, or a waiter's sleep.
            let Some(guard) = this.guard.as_ref() else {
                unreachable!("armed before the first call");
            };
            *this.sent = Some(sem.timer.now());
            this.step.set(Step::Call {
                call: sem.ask(&guard.id, n, wait),
            });
        }
    }
}

pin_project! {
    /// Future for [`Semaphore::try_acquire`] and
    /// [`Semaphore::try_acquire_many`]: one script call, then the
    /// [`Permit`] or [`Error::NoPermits`].
    ///
    /// Nothing is sent to Redis before its first poll. Dropped while its
    /// call is in flight, the grant the call may have made is given back
    /// by the semaphore handle's next call.
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::{Semaphore, TryAcquirePermit};
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = Semaphore::new(conn, "s", 1, Duration::from_secs(10));
    /// let now_or_never: TryAcquirePermit<'_, _> = sem.try_acquire();
    /// if let Ok(permit) = now_or_never.await {
    ///     permit.release().await.unwrap();
    /// }
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct TryAcquirePermit<'a, C, T: Timer = DefaultTimer> {
        #[pin]
        ask: Ask<'a, C, T>,
    }
}

pin_project! {
    /// Future for [`Semaphore::acquire`] and [`Semaphore::acquire_many`]:
    /// takes a ticket in the semaphore's queue and asks again every
    /// [`poll_interval`](Semaphore::poll_interval) until the [`Permit`] is
    /// granted.
    ///
    /// Nothing is sent to Redis before its first poll. Dropped at any
    /// point, it queues the removal of its ticket (and of a grant a call
    /// in flight may have made) for the semaphore handle's next call.
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::{AcquirePermit, Semaphore};
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let wait: AcquirePermit<'_, _> = sem.acquire_many(2);
    /// let permit = wait.await.unwrap();
    /// assert_eq!(permit.permits(), 2);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct AcquirePermit<'a, C, T: Timer = DefaultTimer> {
        #[pin]
        ask: Ask<'a, C, T>,
    }
}

impl<'a, C, T> Future for TryAcquirePermit<'a, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    type Output = Result<Permit<'a, C, T>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished acquire stays terminated.
        if self.ask.is_done() {
            polled_after_completion();
        }
        guarded(self.project().ask, |ask| ask.poll_ask(cx), Ask::abandon)
    }
}

impl<C, T> FusedFuture for TryAcquirePermit<'_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn is_terminated(&self) -> bool {
        self.ask.is_done()
    }
}

impl<'a, C, T> Future for AcquirePermit<'a, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    type Output = Result<Permit<'a, C, T>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished acquire stays terminated.
        if self.ask.is_done() {
            polled_after_completion();
        }
        guarded(self.project().ask, |ask| ask.poll_ask(cx), Ask::abandon)
    }
}

impl<C, T> FusedFuture for AcquirePermit<'_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn is_terminated(&self) -> bool {
        self.ask.is_done()
    }
}

impl<C, T: Timer> fmt::Debug for TryAcquirePermit<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryAcquirePermit")
            .field("permits", &self.ask.n)
            .field("state", &self.ask.step.state())
            .finish_non_exhaustive()
    }
}

impl<C, T: Timer> fmt::Debug for AcquirePermit<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquirePermit")
            .field("permits", &self.ask.n)
            .field("state", &self.ask.step.state())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Future for [`Permit::renew`]: one script call that extends the
    /// permit's lease.
    ///
    /// Nothing is sent to Redis before its first poll; dropped before
    /// Redis answered, it leaves the lease as Redis last set it.
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::{RenewPermit, Semaphore};
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let mut permit = sem.acquire().await.unwrap();
    /// let renew: RenewPermit<'_, '_, _> = permit.renew();
    /// renew.await.unwrap();
    /// permit.release().await.unwrap();
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct RenewPermit<'p, 'a, C, T: Timer = DefaultTimer> {
        permit: &'p mut Permit<'a, C, T>,
        // When the call was sent: the local lease starts there.
        sent: Option<Instant>,
        #[pin]
        step: Step<T>,
    }
}

impl<C, T> Future for RenewPermit<'_, '_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    type Output = Result<(), Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished renewal stays terminated.
        if matches!(self.step, Step::Done) {
            polled_after_completion();
        }
        guarded(
            self,
            |this| this.poll_renew(cx),
            |this, panics| {
                let mut step = this.project().step;
                panics.catch(|| step.set(Step::Panicked));
            },
        )
    }
}

impl<C, T> RenewPermit<'_, '_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn poll_renew(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut this = self.project();
        let permit = &mut **this.permit;
        loop {
            match this.step.as_mut().project() {
                StepProj::Start => {
                    if !permit.held {
                        this.step.set(Step::Done);
                        return Poll::Ready(if permit.n == 0 {
                            Ok(())
                        } else {
                            Err(Error::LeaseLost)
                        });
                    }
                    *this.sent = Some(permit.sem.timer.now());
                    this.step.set(Step::Call {
                        call: permit.sem.renew_call(&permit.id, permit.n),
                    });
                }
                StepProj::Call { call } => {
                    let out = ready!(call.poll(cx)).and_then(|reply| grant(&reply));
                    this.step.set(Step::Done);
                    return Poll::Ready(match out {
                        Ok(Some(expiry)) => {
                            let Some(sent) = *this.sent else {
                                unreachable!("set with the call");
                            };
                            permit.expiry_us = expiry;
                            permit.local_expiry = sent.checked_add(permit.sem.lease);
                            Ok(())
                        }
                        Ok(None) => {
                            permit.held = false;
                            Err(Error::LeaseLost)
                        }
                        Err(e) => Err(e),
                    });
                }
                StepProj::Sleep { .. } => unreachable!("a renewal does not sleep"),
                StepProj::Done => polled_after_completion(),
                StepProj::Panicked => polled_after_panic(),
            }
        }
    }
}

impl<C, T> FusedFuture for RenewPermit<'_, '_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn is_terminated(&self) -> bool {
        matches!(self.step, Step::Done)
    }
}

impl<C, T: Timer> fmt::Debug for RenewPermit<'_, '_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewPermit")
            .field("permit", &self.permit)
            .field("state", &self.step.state())
            .finish()
    }
}

pin_project! {
    /// Future for [`Permit::release`]: one script call that gives the
    /// permits back.
    ///
    /// Nothing is sent to Redis before its first poll. Dropped before
    /// Redis answered (or failed), the release is queued for the
    /// semaphore handle's next call, and the lease bounds it.
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::{ReleasePermit, Semaphore};
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = Semaphore::new(conn, "s", 2, Duration::from_secs(10));
    /// let permit = sem.acquire().await.unwrap();
    /// let release: ReleasePermit<'_, _> = permit.release();
    /// release.await.unwrap();
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ReleasePermit<'a, C, T: Timer = DefaultTimer> {
        #[pin]
        step: Step<T>,
        // Held (its drop queues the release) until Redis answered.
        permit: Option<Permit<'a, C, T>>,
    }
}

impl<C, T> Future for ReleasePermit<'_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    type Output = Result<(), Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished release stays terminated.
        if matches!(self.step, Step::Done) {
            polled_after_completion();
        }
        // After a panic, the permit's drop queues the release.
        guarded(
            self,
            |this| this.poll_release(cx),
            |this, panics| {
                let mut this = this.project();
                panics.catch(|| this.step.set(Step::Panicked));
                *this.permit = None;
            },
        )
    }
}

impl<C, T> ReleasePermit<'_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn poll_release(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Start => {
                    let Some(permit) = this.permit.as_ref() else {
                        unreachable!("taken when done");
                    };
                    if !permit.held {
                        *this.permit = None;
                        this.step.set(Step::Done);
                        return Poll::Ready(Ok(()));
                    }
                    let args = vec!["p".to_owned(), format!("{}/{}", permit.id, permit.n)];
                    let sem = permit.sem;
                    this.step.set(Step::Call {
                        call: sem.call(&scripts::SEM_RELEASE, sem.keys.to_vec(), args),
                    });
                }
                StepProj::Call { call } => {
                    let out = ready!(call.poll(cx));
                    if out.is_ok() {
                        if let Some(permit) = this.permit.as_mut() {
                            permit.held = false;
                        }
                    }
                    // Failed, the permit's drop queues the release.
                    *this.permit = None;
                    this.step.set(Step::Done);
                    return Poll::Ready(out.map(drop));
                }
                StepProj::Sleep { .. } => unreachable!("a release does not sleep"),
                StepProj::Done => polled_after_completion(),
                StepProj::Panicked => polled_after_panic(),
            }
        }
    }
}

impl<C, T> FusedFuture for ReleasePermit<'_, C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn is_terminated(&self) -> bool {
        matches!(self.step, Step::Done)
    }
}

impl<C, T: Timer> fmt::Debug for ReleasePermit<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasePermit")
            .field("permit", &self.permit)
            .field("state", &self.step.state())
            .finish()
    }
}

pin_project! {
    /// Future for [`Semaphore::limit`] and [`Semaphore::limit_with`]:
    /// acquires one permit, runs the future while renewing the lease, and
    /// releases the permit when the future ends.
    ///
    /// The renewals are script calls polled beside the future, inside this
    /// future (nothing is spawned); its output waits for the release's
    /// answer. Nothing is sent to Redis before its first poll. `F` is what
    /// was passed to `limit`: a future, or an [`IntoFuture`] converted
    /// once the permit is held (never when the acquire fails closed).
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics; a panic of the inner future
    /// (or of the connection or the timer) propagates, and polling
    /// `SemaphoreLimit` again after that panics too (it does not poll a
    /// future that panicked). Before the panic propagates, the future, the
    /// renewal and the sleep are dropped (each on its own, outside the
    /// panic's unwind) and the permit's release is queued for the
    /// semaphore handle's next call, as for a dropped [`Permit`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use awaitkit::redis::{Semaphore, SemaphoreLimit};
    /// use std::future::Ready;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let sem = Semaphore::new(conn, "s", 2, Duration::from_secs(3));
    /// let job: SemaphoreLimit<'_, Ready<u32>, _> = sem.limit(std::future::ready(7));
    /// assert_eq!(job.await.unwrap(), 7);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct SemaphoreLimit<'a, F: IntoFuture, C, T: Timer = DefaultTimer> {
        sem: &'a Semaphore<C, T>,
        open: bool,
        #[pin]
        acquire: Option<AcquirePermit<'a, C, T>>,
        // The future as given, converted once the permit is held (or the
        // acquire failed, failing open), as `.await` converts it.
        given: Option<F>,
        #[pin]
        future: Option<F::IntoFuture>,
        // Held while the future runs (`None` when it runs without one,
        // failing open).
        permit: Option<Permit<'a, C, T>>,
        // When the next renewal is due (`None`: never).
        next: Option<Instant>,
        renewal: Option<ScriptCall<T>>,
        renewal_sent: Option<Instant>,
        // Wakes this future for the next renewal and (failing closed) at
        // the lease's end.
        #[pin]
        sleep: Option<T::Sleep>,
        sleep_at: Option<Instant>,
        #[pin]
        release: Option<ReleasePermit<'a, C, T>>,
        // The future's output, while the release is awaited.
        output: Option<F::Output>,
        // Set when user code panicked in a poll (the future, the timer, the
        // connection): `SemaphoreLimit` refuses later polls rather than
        // poll a future that panicked.
        panicked: bool,
        done: bool,
    }

    impl<'a, F: IntoFuture, C, T: Timer> PinnedDrop for SemaphoreLimit<'a, F, C, T> {
        fn drop(this: Pin<&mut Self>) {
            let mut panics = Panics::default();
            this.dismantle(&mut panics);
            panics.resume();
        }
    }
}

impl<F: IntoFuture, C, T: Timer> SemaphoreLimit<'_, F, C, T> {
    /// Drops every part, each on its own (user code: the first panic is
    /// kept), the future before the permit, whose drop queues its release.
    fn dismantle(self: Pin<&mut Self>, panics: &mut Panics) {
        let mut this = self.project();
        panics.catch(|| this.acquire.set(None));
        panics.catch(|| this.future.set(None));
        panics.catch(|| drop(this.given.take()));
        panics.catch(|| drop(this.renewal.take()));
        panics.catch(|| this.sleep.set(None));
        *this.sleep_at = None;
        panics.catch(|| this.release.set(None));
        panics.catch(|| drop(this.output.take()));
        *this.permit = None;
    }
}

impl<F, C, T> Future for SemaphoreLimit<'_, F, C, T>
where
    F: IntoFuture,
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    type Output = Result<F::Output, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            polled_after_completion();
        }
        assert!(
            !self.panicked,
            "a redis semaphore's `SemaphoreLimit` polled after a panic in its future, its timer \
             or its connection"
        );
        guarded(
            self,
            |this| this.poll_limit(cx),
            |mut this, panics| {
                this.as_mut().dismantle(panics);
                *this.project().panicked = true;
            },
        )
    }
}

impl<F, C, T> SemaphoreLimit<'_, F, C, T>
where
    F: IntoFuture,
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn poll_limit(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<F::Output, Error>> {
        let mut this = self.project();
        let sem = *this.sem;
        if let Some(acquire) = this.acquire.as_mut().as_pin_mut() {
            let out = ready!(acquire.poll(cx));
            this.acquire.set(None);
            match out {
                Ok(permit) => {
                    let third = sem.lease / 3;
                    *this.next = permit
                        .local_expiry
                        .and_then(|e| e.checked_sub(sem.lease - third));
                    *this.permit = Some(permit);
                }
                // Fail open: run the future without a permit.
                Err(e) if e.is_failure() && *this.open => {}
                Err(e) => {
                    *this.given = None;
                    *this.done = true;
                    return Poll::Ready(Err(e));
                }
            }
            this.future
                .set(this.given.take().map(IntoFuture::into_future));
        }
        if let Some(release) = this.release.as_mut().as_pin_mut() {
            // Errors are ignored: a failed release is queued for the next
            // call, and the lease bounds it.
            let _ = ready!(release.poll(cx));
            this.release.set(None);
            *this.done = true;
            let Some(out) = this.output.take() else {
                unreachable!("kept while releasing");
            };
            return Poll::Ready(Ok(out));
        }
        let mut lost = false;
        if let Some(permit) = this.permit.as_mut() {
            // The bookkeeping first: the inner future is polled only while
            // the lease is still ours by the local timer (fail closed),
            // including while a renewal is in flight.
            let open = *this.open;
            let third = sem.lease / 3;
            loop {
                let done = match this.renewal.as_mut() {
                    Some(call) => match call.poll(cx) {
                        Poll::Ready(done) => Some(done.and_then(|reply| grant(&reply))),
                        Poll::Pending => None,
                    },
                    None => None,
                };
                if let Some(out) = done {
                    *this.renewal = None;
                    let Some(sent) = this.renewal_sent.take() else {
                        unreachable!("set with the renewal");
                    };
                    match out {
                        Ok(Some(expiry)) => {
                            permit.expiry_us = expiry;
                            permit.local_expiry = sent.checked_add(sem.lease);
                            *this.next = sent.checked_add(third);
                        }
                        Ok(None) if !open => {
                            lost = true;
                            break;
                        }
                        // Fail open: the permits are gone; run on without.
                        Ok(None) => *this.next = None,
                        // Try again soon (until the lease may be over).
                        Err(_) => *this.next = sem.timer.now().checked_add(third / 2),
                    }
                }
                let now = sem.timer.now();
                let lease_end = if open { None } else { permit.local_expiry };
                if lease_end.is_some_and(|e| now >= e) {
                    lost = true;
                    break;
                }
                let due = if this.renewal.is_none() {
                    *this.next
                } else {
                    None
                };
                if due.is_some_and(|d| now >= d) {
                    *this.renewal_sent = Some(now);
                    *this.renewal = Some(sem.renew_call(&permit.id, permit.n));
                    continue;
                }
                // Wake for the next renewal, and (failing closed) at the
                // lease's end even while a renewal hangs.
                let wake = match (due, lease_end) {
                    (Some(d), Some(e)) => Some(d.min(e)),
                    (d, e) => d.or(e),
                };
                let Some(at) = wake else { break };
                if *this.sleep_at != Some(at) {
                    this.sleep.set(Some(sem.timer.sleep_until(at)));
                    *this.sleep_at = Some(at);
                }
                let Some(sleep) = this.sleep.as_mut().as_pin_mut() else {
                    unreachable!("armed above");
                };
                if sleep.poll(cx).is_pending() {
                    break;
                }
                // Fired (or completed early by a capped backend: the loop
                // checks the time again and re-arms).
                this.sleep.set(None);
                *this.sleep_at = None;
            }
        }
        if lost {
            // Cancel the future, then drop the permit (its drop queues the
            // release for the handle's next call).
            this.future.set(None);
            *this.renewal = None;
            this.sleep.set(None);
            *this.sleep_at = None;
            *this.permit = None;
            *this.done = true;
            return Poll::Ready(Err(Error::LeaseLost));
        }
        // A panic of the future propagates once the future, the renewal,
        // the sleep and the permit (its drop queues the release) are
        // dropped (see `guarded`); later polls refuse.
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            unreachable!("the future runs until done");
        };
        // The output is kept first: if a destructor below panics, it is
        // dropped with the rest (see `dismantle`), not during the unwind.
        *this.output = Some(ready!(future.poll(cx)));
        this.future.set(None);
        *this.renewal = None;
        this.sleep.set(None);
        *this.sleep_at = None;
        let Some(permit) = this.permit.take() else {
            // Ran without a permit (failing open): nothing to give back.
            *this.done = true;
            let Some(out) = this.output.take() else {
                unreachable!("set above");
            };
            return Poll::Ready(Ok(out));
        };
        this.release.set(Some(permit.release()));
        let Some(release) = this.release.as_mut().as_pin_mut() else {
            unreachable!("set above");
        };
        let _ = ready!(release.poll(cx));
        this.release.set(None);
        *this.done = true;
        let Some(out) = this.output.take() else {
            unreachable!("set above");
        };
        Poll::Ready(Ok(out))
    }
}

impl<F, C, T> FusedFuture for SemaphoreLimit<'_, F, C, T>
where
    F: IntoFuture,
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<F: IntoFuture, C, T: Timer> fmt::Debug for SemaphoreLimit<'_, F, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.done {
            "done"
        } else if self.panicked {
            "panicked"
        } else if self.acquire.is_some() {
            "acquiring"
        } else if self.release.is_some() {
            "releasing"
        } else if self.permit.is_some() {
            "running"
        } else {
            "running without a permit"
        };
        f.debug_struct("SemaphoreLimit")
            .field("state", &state)
            .field(
                "policy",
                &if self.open {
                    FailurePolicy::Open
                } else {
                    FailurePolicy::Closed
                },
            )
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

/// A reply of two or three non-negative integers (missing ones are zero).
fn ints(reply: &Value) -> Option<[i64; 3]> {
    let Value::Array(items) = reply else {
        return None;
    };
    if !(2..=3).contains(&items.len()) {
        return None;
    }
    let mut out = [0i64; 3];
    for (slot, item) in out.iter_mut().zip(items) {
        match item {
            Value::Int(i) if *i >= 0 => *slot = *i,
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A waiter re-asks every poll interval: its ticket must outlive that
    // interval, however long (the 60 s cap used to fall below it).
    #[test]
    fn ticket_outlives_the_poll_interval() {
        for secs in [0, 1, 20, 30, 59, 61, 600, 3600, u64::MAX] {
            let poll = Duration::from_secs(secs);
            for timeout in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
                let sem = Semaphore::new((), "s", 1, Duration::from_secs(1))
                    .with_poll_interval(poll)
                    .with_timeout(timeout);
                assert!(sem.poll_interval() <= MAX_POLL_INTERVAL);
                assert!(
                    sem.ticket_ttl() > sem.poll_interval(),
                    "poll {poll:?}, timeout {timeout:?}"
                );
            }
        }
        let sem = Semaphore::new((), "s", 1, Duration::from_secs(1));
        assert_eq!(sem.ticket_ttl(), Duration::from_millis(1075));
    }
}
