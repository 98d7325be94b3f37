//! `redis::RateLimiter`: the local limiter's quota, kept in Redis.

use super::scripts::{self, GiveBack, Lua, MAX_SPAN_US, ScriptCall};
use super::{Error, FailurePolicy, Grant, guarded};
use crate::rate_limiter::Quota;
use crate::time::{DefaultTimer, Timer, When, poll_deadline};
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
use std::time::Duration;

/// A rate limiter whose state lives in Redis, shared by every process that
/// uses the same keys: the [`Quota`] of the local
/// [`RateLimiter`](crate::RateLimiter) (strict sliding window or GCRA), per
/// key.
///
/// Each check is one script call (`EVALSHA`) that reads Redis's clock;
/// waiting happens here, on the limiter's [`Timer`]. See the
/// [module docs](super) for the guarantees and their limits (failover,
/// precision, memory).
///
/// `C` is your connection: anything implementing redis-rs's
/// [`ConnectionLike`] that is `Clone` and `Send` (a
/// `MultiplexedConnection`, a `ConnectionManager`); each call works on a
/// clone, so concurrent checks share it as redis-rs allows (a multiplexed
/// connection pipelines them).
///
/// # Examples
///
/// ```no_run
/// use awaitkit::rate_limiter::Quota;
/// use std::time::Duration;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = redis::Client::open("redis://127.0.0.1/")?
///     .get_multiplexed_async_connection()
///     .await?;
/// let quota = Quota::gcra(50, Duration::from_secs(1), 5)?; // 50/s, bursts of 5
/// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota)
///     .with_timeout(Duration::from_millis(200));
/// match limiter.try_acquire("tenant-7").await {
///     Ok(_) => println!("go"),
///     Err(e) => println!("not now: {e}"), // a retry-after, or a Redis failure
/// }
/// # Ok(())
/// # }
/// ```
pub struct RateLimiter<C, T: Timer = DefaultTimer> {
    conn: C,
    prefix: Vec<u8>,
    quota: Quota,
    timeout: Duration,
    timer: T,
    // Unique grant members across processes: a random tag and a counter.
    tag: String,
    seq: AtomicU64,
    // Slots booked by waiters dropped before their time, given back before
    // the next check.
    given_back: Arc<Mutex<GiveBack>>,
}

impl<C> RateLimiter<C> {
    /// A limiter over `conn` that keeps key `k`'s state under
    /// `prefix` + `k`, with `quota` for every key, a 1 s timeout per call to
    /// Redis, and the [`DefaultTimer`].
    ///
    /// Processes that share a quota must use the same prefix and quota:
    /// the quota travels with every call, and a key checked with two
    /// different quotas is counted by whichever each call carries (a key
    /// checked both as a window and as GCRA fails with Redis's `WRONGTYPE`
    /// error, [`Error::Redis`]).
    ///
    /// A check touches one key, so any prefix works on a Redis Cluster;
    /// but the slots that dropped waiters booked are given back for
    /// several keys in one script call, which a Cluster refuses unless the
    /// keys share a hash slot (`CROSSSLOT`: those give-backs are lost, and
    /// their slots stay used until their window ends — under-use, never
    /// over-grant). Give the prefix a hash tag, as in `"{myapp:rl}:"`, to
    /// keep them (the limiter's keys then live on one shard).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "myapp:rl:", quota);
    /// assert_eq!(limiter.quota(), quota);
    /// # }
    /// ```
    pub fn new(conn: C, prefix: impl Into<Vec<u8>>, quota: Quota) -> Self {
        RateLimiter {
            conn,
            prefix: prefix.into(),
            quota,
            timeout: Duration::from_secs(1),
            timer: DefaultTimer,
            tag: unique_tag(),
            seq: AtomicU64::new(0),
            given_back: Arc::default(),
        }
    }
}

impl<C, T: Timer> RateLimiter<C, T> {
    /// The same limiter on another [`Timer`] (for the waits and the
    /// timeouts).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota)
    ///     .with_timer(awaitkit::time::FuturesTimer);
    /// # }
    /// ```
    pub fn with_timer<U: Timer>(self, timer: U) -> RateLimiter<C, U> {
        RateLimiter {
            conn: self.conn,
            prefix: self.prefix,
            quota: self.quota,
            timeout: self.timeout,
            timer,
            tag: self.tag,
            seq: self.seq,
            given_back: self.given_back,
        }
    }

    /// Bounds every call to Redis by `timeout` (1 s by default): a call
    /// that takes longer fails with [`Error::Timeout`].
    /// [`Duration::MAX`] means no bound; [`Duration::ZERO`] leaves Redis
    /// no time (expect [`Error::Timeout`]; a reply already there when the
    /// future is woken still wins).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota)
    ///     .with_timeout(Duration::from_millis(50));
    /// assert_eq!(limiter.timeout(), Duration::from_millis(50));
    /// # }
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound on each call to Redis.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// assert_eq!(limiter.timeout(), Duration::from_secs(1));
    /// # }
    /// ```
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The quota every key gets.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::gcra(10, Duration::from_secs(1), 2).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// assert_eq!(limiter.quota().burst(), Some(2));
    /// # }
    /// ```
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The Redis key that holds `key`'s state: the prefix, then `key`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// assert_eq!(limiter.redis_key("api"), b"rl:api");
    /// # }
    /// ```
    pub fn redis_key(&self, key: impl AsRef<[u8]>) -> Vec<u8> {
        let key = key.as_ref();
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    /// The SHA-1 of the Lua script this limiter's quota runs (one for every
    /// strict window, one for every GCRA quota): what `SCRIPT EXISTS`
    /// checks, for operators who preload scripts.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// assert_eq!(limiter.script_sha().len(), 40);
    /// # }
    /// ```
    pub fn script_sha(&self) -> &str {
        match self.quota.burst() {
            None => &scripts::WINDOW.sha,
            Some(_) => &scripts::GCRA.sha,
        }
    }

    /// The limiter's timer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let _now = awaitkit::Timer::now(limiter.timer());
    /// # }
    /// ```
    pub fn timer(&self) -> &T {
        &self.timer
    }
}

impl<C, T> RateLimiter<C, T>
where
    C: ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    /// One call for `key`, now or never: granted, or
    /// [`Error::RateLimited`] with the exact wait Redis computed (waiters
    /// that booked a slot with [`acquire`](Self::acquire) come first).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes may still leave the grant
    /// made in Redis (the call may have reached it): under-use only.
    ///
    /// # Errors
    ///
    /// [`Error::RateLimited`]; [`Error::Timeout`], [`Error::Redis`] or
    /// [`Error::Script`] when Redis fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::window(1, Duration::from_secs(60)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// limiter.try_acquire("k").await.unwrap();
    /// let err = limiter.try_acquire("k").await.unwrap_err();
    /// assert!(err.retry_after().unwrap() > Duration::from_secs(59));
    /// # }
    /// ```
    pub fn try_acquire(&self, key: impl AsRef<[u8]>) -> TryAcquire<'_, C, T> {
        self.try_acquire_n(key, 1)
    }

    /// [`try_acquire`](Self::try_acquire) for `n` calls at once (all or
    /// none). `n == 0` is granted without asking Redis.
    ///
    /// # Cancel safety
    ///
    /// As for [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// As for [`try_acquire`](Self::try_acquire), and
    /// [`Error::ExceedsQuota`] when `n` is more than
    /// [`Quota::max_at_once`] (or, for a strict window, more than
    /// [`MAX_WINDOW_AT_ONCE`](super::MAX_WINDOW_AT_ONCE)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use awaitkit::redis::Error;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::window(5, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// limiter.try_acquire_n("k", 5).await.unwrap();
    /// let err = limiter.try_acquire_n("k", 6).await.unwrap_err();
    /// assert!(matches!(err, Error::ExceedsQuota { requested: 6, max: 5 }));
    /// # }
    /// ```
    pub fn try_acquire_n(&self, key: impl AsRef<[u8]>, n: usize) -> TryAcquire<'_, C, T> {
        TryAcquire {
            check: self.check(key.as_ref(), n, false),
            _conn: std::marker::PhantomData,
        }
    }

    /// Waits for one call for `key`: when the quota is spent, the same
    /// script call books the earliest free slot, and the future sleeps
    /// until it on the limiter's timer. Waiters are served in the order
    /// their calls reached Redis, from every process.
    ///
    /// Only the call to Redis is bounded by the timeout; the wait for the
    /// booked slot is the quota's answer (wrap the future in
    /// [`timeout`](crate::timeout()) to bound it).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it sleeps queues its booked slot to be
    /// given back by this limiter's next check (nothing is spawned; a
    /// strict window frees the slot, GCRA only when nobody booked after
    /// it). Dropped while Redis is answering, it may leave a grant or a
    /// booking unused. Either way the quota is under-used, never
    /// over-used.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::Redis`] or [`Error::Script`] when Redis
    /// fails; never [`Error::RateLimited`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::gcra(100, Duration::from_secs(1), 1).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// for _ in 0..3 {
    ///     limiter.acquire("k").await.unwrap(); // 10 ms apart, fleet-wide
    /// }
    /// # }
    /// ```
    pub fn acquire(&self, key: impl AsRef<[u8]>) -> Acquire<'_, C, T> {
        self.acquire_n(key, 1)
    }

    /// [`acquire`](Self::acquire) for `n` calls at once. `n == 0` is
    /// granted without asking Redis.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), and [`Error::ExceedsQuota`] when
    /// `n` is more than [`Quota::max_at_once`] (or, for a strict window,
    /// more than [`MAX_WINDOW_AT_ONCE`](super::MAX_WINDOW_AT_ONCE)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// limiter.acquire_n("bulk", 4).await.unwrap(); // a batch of 4 calls
    /// # }
    /// ```
    pub fn acquire_n(&self, key: impl AsRef<[u8]>, n: usize) -> Acquire<'_, C, T> {
        Acquire {
            check: self.check(key.as_ref(), n, true),
            _conn: std::marker::PhantomData,
        }
    }

    /// Runs `future` once [`acquire`](Self::acquire) granted a call for
    /// `key`. Fails closed: when Redis fails the future is dropped unrun
    /// and the error returned; [`Limit::on_failure`] with
    /// [`FailurePolicy::Open`] runs it anyway.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire) while waiting; once the future
    /// runs, dropping `Limit` drops it.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire) (under [`FailurePolicy::Closed`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let body = limiter.limit("partner", async { "200 OK" }).await.unwrap();
    /// assert_eq!(body, "200 OK");
    /// # }
    /// ```
    pub fn limit<F: IntoFuture>(
        &self,
        key: impl AsRef<[u8]>,
        future: F,
    ) -> Limit<'_, F::IntoFuture, C, T> {
        // If the acquire panics (the connection's or the timer's `clone`),
        // the future is dropped before that panic propagates.
        let (future, acquire) = crate::unwind::keeping(future.into_future(), |_| self.acquire(key));
        Limit {
            acquire: Some(acquire),
            future: Some(future),
            policy: FailurePolicy::Closed,
            panicked: false,
        }
    }

    fn check(&self, key: &[u8], n: usize, reserve: bool) -> Check<'_, T> {
        let mut max = self.quota.max_at_once();
        if self.quota.burst().is_none() {
            // One sorted-set member per call, added by one script run.
            max = max.min(super::MAX_WINDOW_AT_ONCE);
        }
        if n > max {
            return Check::ready(&self.timer, Err(Error::ExceedsQuota { requested: n, max }));
        }
        if n == 0 {
            return Check::ready(
                &self.timer,
                Ok(Grant {
                    at_us: 0,
                    booked: Duration::ZERO,
                }),
            );
        }
        let period = duration_us(self.quota.period());
        let key = self.redis_key(key);
        let (lua, args, slot): (&'static Lua, [String; 5], Option<SlotKind>) =
            match self.quota.burst() {
                None => {
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    let members = format!("{}:{seq}", self.tag);
                    (
                        &scripts::WINDOW,
                        [
                            self.quota.max_calls().to_string(),
                            period.to_string(),
                            n.to_string(),
                            flag(reserve),
                            members.clone(),
                        ],
                        reserve.then_some(SlotKind::Window { members, n }),
                    )
                }
                Some(burst) => {
                    // The spacing, rounded up to a whole microsecond (never
                    // faster than asked), and a burst whose span fits the
                    // scripts' exact range.
                    let calls = self.quota.max_calls() as u64;
                    let interval = period.div_ceil(calls).max(1);
                    let burst = (burst as u64).min(MAX_SPAN_US / interval).max(1);
                    if n as u64 > burst {
                        // Only with periods beyond the scripts' range.
                        return Check::ready(
                            &self.timer,
                            Err(Error::ExceedsQuota {
                                requested: n,
                                max: burst as usize,
                            }),
                        );
                    }
                    (
                        &scripts::GCRA,
                        [
                            interval.to_string(),
                            burst.to_string(),
                            n.to_string(),
                            flag(reserve),
                            String::new(),
                        ],
                        reserve.then_some(SlotKind::Gcra {
                            burst_span: burst * interval,
                            span: n as u64 * interval,
                        }),
                    )
                }
            };
        let slot = slot.map(|kind| Slot {
            key: key.clone(),
            kind,
        });
        let back = self.given_back.clone();
        // Two clones of user values: if the second panics, the first is
        // dropped before that panic propagates, not during its unwind.
        let (timer, call) = crate::unwind::keeping(self.timer.clone(), |_| {
            scripts::invoke(
                &self.conn,
                scripts::Call {
                    lua,
                    keys: vec![key],
                    args: args.to_vec(),
                },
                move || scripts::take_back(&back, &scripts::GIVE_BACK, None, 3),
            )
        });
        Check {
            timer: &self.timer,
            timeout: self.timeout,
            given_back: Some(&self.given_back),
            slot,
            booked: None,
            step: Step::Call {
                call: ScriptCall::new(call, self.timeout, timer),
            },
        }
    }
}

impl<C, T: Timer> fmt::Debug for RateLimiter<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("quota", &self.quota)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// A period in whole microseconds, rounded up, at least 1, at most
/// [`MAX_SPAN_US`].
pub(super) fn duration_us(d: Duration) -> u64 {
    let us = d.as_nanos().div_ceil(1_000);
    us.clamp(1, MAX_SPAN_US as u128) as u64
}

/// A tag unique to this limiter across processes and machines (with
/// overwhelming probability): std's randomly seeded hasher over the process
/// id, the time and a process-wide counter.
pub(super) fn unique_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let a = h.finish();
    h.write_u8(0x5a);
    format!("{a:016x}{:016x}", h.finish())
}

/// Reads the scripts' reply `{status, wait_us, at_us}`.
fn decide(reply: Value) -> Result<Decision, Error> {
    let ints = match &reply {
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0i64; 3];
            for (slot, item) in out.iter_mut().zip(items) {
                match item {
                    Value::Int(i) if *i >= 0 => *slot = *i,
                    _ => return Err(Error::Script(format!("{reply:?}"))),
                }
            }
            out
        }
        _ => return Err(Error::Script(format!("{reply:?}"))),
    };
    let wait = Duration::from_micros(ints[1] as u64);
    let at_us = ints[2] as u64;
    match ints[0] {
        1 => Ok(Decision::Granted(Grant {
            at_us,
            booked: Duration::ZERO,
        })),
        2 => Ok(Decision::Booked(Grant {
            at_us,
            booked: wait,
        })),
        0 => Ok(Decision::Refused(wait)),
        3 => Err(Error::Script(
            "the slot would fall beyond 2^53 us on Redis's clock, past the scripts' exact range \
             (bookings chained too far ahead)"
                .to_owned(),
        )),
        4 => Err(Error::Script(
            "the key holds a value that is not an arrival time (a key of another use under \
             the limiter's prefix?); left as it is"
                .to_owned(),
        )),
        _ => Err(Error::Script(format!("{reply:?}"))),
    }
}

enum Decision {
    Granted(Grant),
    Booked(Grant),
    Refused(Duration),
}

/// What a waiting acquire booked, to give back if it is dropped before
/// its time.
struct Slot {
    key: Vec<u8>,
    kind: SlotKind,
}

enum SlotKind {
    /// The members `{members}:1` to `{members}:{n}`.
    Window { members: String, n: usize },
    /// The booking moved the arrival time to its grant time plus
    /// `burst_span`, by `span`.
    Gcra { burst_span: u64, span: u64 },
}

pin_project! {
    #[project = StepProj]
    enum Step<T: Timer> {
        Call { call: ScriptCall<T> },
        // The sleep is re-armed when the timer completes it before
        // `when` (a capped or coarse backend; the `Timer` contract allows
        // it): the slot is never used early.
        Sleep { #[pin] sleep: Option<T::Sleep>, when: When },
        Ready { out: Option<Result<Grant, Error>> },
        Done,
        // Given up after a panic of user code (the connection, the timer).
        Panicked,
    }
}

pin_project! {
    /// The state shared by [`Acquire`] and [`TryAcquire`]: the script call
    /// under its timeout, then (for a booked slot) the sleep.
    #[project = CheckProj]
    struct Check<'a, T: Timer> {
        timer: &'a T,
        timeout: Duration,
        given_back: Option<&'a Mutex<GiveBack>>,
        // Set for an acquire: what its booking holds.
        slot: Option<Slot>,
        // The slot Redis booked, from its answer until the grant.
        booked: Option<Grant>,
        #[pin]
        step: Step<T>,
    }

    impl<'a, T: Timer> PinnedDrop for Check<'a, T> {
        // Dropped while waiting for a booked slot: queue the slot to be
        // given back before the limiter's next check (nothing is spawned;
        // only a `Vec` push under the limiter's lock).
        fn drop(this: Pin<&mut Self>) {
            this.project().give_back();
        }
    }
}

impl<T: Timer> CheckProj<'_, '_, T> {
    /// Queues the booked slot, if any, to be given back.
    fn give_back(&mut self) {
        let (Some(pending), Some(slot), Some(grant)) =
            (*self.given_back, self.slot.take(), self.booked.take())
        else {
            return;
        };
        let (kind, a, b) = match slot.kind {
            SlotKind::Window { members, n } => ("w", members, n.to_string()),
            SlotKind::Gcra { burst_span, span } => (
                "g",
                (grant.at_us + burst_span).to_string(),
                span.to_string(),
            ),
        };
        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.keys.push(slot.key);
        pending.args.extend([kind.to_owned(), a, b]);
    }
}

#[cold]
#[track_caller]
fn polled_after_completion() -> ! {
    panic!("a redis rate limiter future polled after completion")
}

impl<'a, T: Timer> Check<'a, T> {
    fn ready(timer: &'a T, out: Result<Grant, Error>) -> Self {
        Check {
            timer,
            timeout: Duration::ZERO,
            given_back: None,
            slot: None,
            booked: None,
            step: Step::Ready { out: Some(out) },
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.step, Step::Done)
    }

    /// After a panic of user code in its poll (the connection, the timer,
    /// its sleep): the call or the sleep goes, and a booked slot is queued
    /// to be given back.
    fn abandon(self: Pin<&mut Self>, panics: &mut Panics) {
        let mut this = self.project();
        this.give_back();
        panics.catch(|| this.step.set(Step::Panicked));
    }

    /// For `Debug`: asking Redis, sleeping for a booked slot, or done.
    fn state(&self) -> &'static str {
        match self.step {
            Step::Call { .. } => "asking Redis",
            Step::Sleep { .. } => "sleeping for its booked slot",
            Step::Ready { .. } => "ready",
            Step::Done => "done",
            Step::Panicked => "panicked",
        }
    }

    fn poll_check(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        wait: bool,
    ) -> Poll<Result<Grant, Error>> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Call { call } => {
                    let out = match ready!(call.poll(cx)) {
                        Err(e) => Err(e),
                        Ok(v) => match decide(v) {
                            Err(e) => Err(e),
                            Ok(Decision::Granted(g)) => {
                                // A strict window's stamps are given back if
                                // the call's drop below panics (a GCRA
                                // roll-back needs a booking's exact time).
                                if matches!(
                                    this.slot,
                                    Some(Slot {
                                        kind: SlotKind::Window { .. },
                                        ..
                                    })
                                ) {
                                    *this.booked = Some(g);
                                }
                                Ok(g)
                            }
                            Ok(Decision::Refused(w)) => Err(Error::RateLimited { retry_after: w }),
                            Ok(Decision::Booked(g)) if wait => {
                                // Kept first: given back if the timer
                                // panics, or the call's drop does.
                                *this.booked = Some(g);
                                this.step.set(Step::Done);
                                // Beyond the clock's range: never (no
                                // sleep armed, as for `Duration::MAX`).
                                let when = match this.timer.now().checked_add(g.booked) {
                                    Some(deadline) => When::At(deadline),
                                    None => When::Never,
                                };
                                this.step.set(Step::Sleep { sleep: None, when });
                                continue;
                            }
                            Ok(Decision::Booked(g)) => Err(Error::Script(format!(
                                "a slot booked for a check that does not wait ({g:?})"
                            ))),
                        },
                    };
                    this.step.set(Step::Done);
                    *this.booked = None;
                    return Poll::Ready(out);
                }
                StepProj::Sleep { sleep, when } => {
                    ready!(poll_deadline(*this.timer, when, sleep, cx));
                    this.step.set(Step::Done);
                    let Some(g) = this.booked.take() else {
                        unreachable!("kept while sleeping");
                    };
                    return Poll::Ready(Ok(g));
                }
                StepProj::Ready { out } => {
                    let out = out.take().expect("checked above");
                    this.step.set(Step::Done);
                    return Poll::Ready(out);
                }
                StepProj::Done => polled_after_completion(),
                StepProj::Panicked => panic!(
                    "a redis rate limiter future polled after a panic of its connection or timer"
                ),
            }
        }
    }
}

pin_project! {
    /// Future for [`RateLimiter::try_acquire`] and
    /// [`RateLimiter::try_acquire_n`].
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let check: awaitkit::redis::TryAcquire<'_, _> = limiter.try_acquire("k");
    /// let _ = check.await;
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct TryAcquire<'a, C, T: Timer = DefaultTimer> {
        #[pin]
        check: Check<'a, T>,
        _conn: std::marker::PhantomData<fn() -> C>,
    }
}

pin_project! {
    /// Future for [`RateLimiter::acquire`] and [`RateLimiter::acquire_n`].
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let wait: awaitkit::redis::Acquire<'_, _> = limiter.acquire("k");
    /// let grant = wait.await.unwrap();
    /// # let _ = grant;
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Acquire<'a, C, T: Timer = DefaultTimer> {
        #[pin]
        check: Check<'a, T>,
        _conn: std::marker::PhantomData<fn() -> C>,
    }
}

impl<C, T: Timer> Future for TryAcquire<'_, C, T> {
    type Output = Result<Grant, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished check stays terminated.
        if self.check.is_done() {
            polled_after_completion();
        }
        guarded(
            self.project().check,
            |c| c.poll_check(cx, false),
            Check::abandon,
        )
    }
}

impl<C, T: Timer> FusedFuture for TryAcquire<'_, C, T> {
    fn is_terminated(&self) -> bool {
        self.check.is_done()
    }
}

impl<C, T: Timer> Future for Acquire<'_, C, T> {
    type Output = Result<Grant, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Refused outside `guarded`: a finished check stays terminated.
        if self.check.is_done() {
            polled_after_completion();
        }
        guarded(
            self.project().check,
            |c| c.poll_check(cx, true),
            Check::abandon,
        )
    }
}

impl<C, T: Timer> FusedFuture for Acquire<'_, C, T> {
    fn is_terminated(&self) -> bool {
        self.check.is_done()
    }
}

impl<C, T: Timer> fmt::Debug for TryAcquire<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryAcquire")
            .field("state", &self.check.state())
            .finish_non_exhaustive()
    }
}

impl<C, T: Timer> fmt::Debug for Acquire<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("state", &self.check.state())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Future for [`RateLimiter::limit`]: acquires, then runs the future.
    ///
    /// # Panics
    ///
    /// Polling it after it completed panics; a panic of the inner future
    /// (or of the connection or the timer) propagates once the future and
    /// the acquire are dropped (each on its own, outside the panic's
    /// unwind; a booked slot is queued to be given back), and polling
    /// `Limit` again after that panics too (it does not poll a future that
    /// panicked).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// use awaitkit::redis::FailurePolicy;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let out = limiter.limit("k", async { 1 }).on_failure(FailurePolicy::Open).await;
    /// assert_eq!(out.unwrap(), 1);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Limit<'a, F, C, T: Timer = DefaultTimer> {
        #[pin]
        acquire: Option<Acquire<'a, C, T>>,
        #[pin]
        future: Option<F>,
        policy: FailurePolicy,
        // Set when user code panicked in a poll: `Limit` refuses later
        // polls rather than poll a future that panicked.
        panicked: bool,
    }

    impl<'a, F, C, T: Timer> PinnedDrop for Limit<'a, F, C, T> {
        fn drop(this: Pin<&mut Self>) {
            let mut panics = Panics::default();
            this.dismantle(&mut panics);
            panics.resume();
        }
    }
}

impl<F, C, T: Timer> Limit<'_, F, C, T> {
    /// Drops the acquire (a booked slot is queued to be given back) and the
    /// future, each on its own (user code: the first panic is kept).
    fn dismantle(self: Pin<&mut Self>, panics: &mut Panics) {
        let mut this = self.project();
        panics.catch(|| this.acquire.set(None));
        panics.catch(|| this.future.set(None));
    }
}

impl<F, C, T: Timer> Limit<'_, F, C, T> {
    /// What to do when Redis fails: [`FailurePolicy::Closed`] (the default)
    /// returns the error, [`FailurePolicy::Open`] runs the future anyway.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use awaitkit::rate_limiter::Quota;
    /// # use std::time::Duration;
    /// use awaitkit::redis::FailurePolicy;
    /// # async fn demo(conn: redis::aio::MultiplexedConnection) {
    /// # let quota = Quota::window(10, Duration::from_secs(1)).unwrap();
    /// let limiter = awaitkit::redis::RateLimiter::new(conn, "rl:", quota);
    /// let out = limiter.limit("k", async { 1 }).on_failure(FailurePolicy::Closed).await;
    /// # let _ = out;
    /// # }
    /// ```
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl<F: Future, C, T: Timer> Future for Limit<'_, F, C, T> {
    type Output = Result<F::Output, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(
            !self.panicked,
            "a redis rate limiter's `Limit` polled after a panic in its future, its timer or its \
             connection"
        );
        // Refused outside `guarded`: a finished `Limit` stays terminated.
        if self.acquire.is_none() && self.future.is_none() {
            panic!("a redis rate limiter's `Limit` polled after completion");
        }
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

impl<F: Future, C, T: Timer> Limit<'_, F, C, T> {
    fn poll_limit(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<F::Output, Error>> {
        let mut this = self.project();
        if let Some(acquire) = this.acquire.as_mut().as_pin_mut() {
            let out = ready!(acquire.poll(cx));
            this.acquire.set(None);
            match out {
                Ok(_) => {}
                Err(e) if e.is_failure() && *this.policy == FailurePolicy::Open => {}
                Err(e) => {
                    this.future.set(None);
                    return Poll::Ready(Err(e));
                }
            }
        }
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            panic!("a redis rate limiter's `Limit` polled after completion");
        };
        let out = ready!(future.poll(cx));
        // A panic of the future's destructor: the output is dropped before
        // it propagates, not during its unwind.
        let out = crate::unwind::after_dropping(out, |panics| {
            panics.catch(|| this.future.set(None));
        });
        Poll::Ready(Ok(out))
    }
}

impl<F: Future, C, T: Timer> FusedFuture for Limit<'_, F, C, T> {
    fn is_terminated(&self) -> bool {
        // Not after a panic: it returned no output (polling panics).
        !self.panicked && self.acquire.is_none() && self.future.is_none()
    }
}

impl<F, C, T: Timer> fmt::Debug for Limit<'_, F, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("waiting", &self.acquire.is_some())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
