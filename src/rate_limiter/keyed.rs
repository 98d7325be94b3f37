//! `KeyedRateLimiter`: one quota per key (per host, per user), with idle
//! keys evicted so memory follows the keys in use.

use super::shared::{Acquisition, Reading, Shared};
use super::{Quota, QuotaError, RateLimitError};
use crate::time::{DefaultTimer, Timer};
use crate::unwind::{self, Panics};
use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Below this many keys the map is never swept.
const MIN_SWEEP: usize = 64;

/// A [`RateLimiter`](crate::RateLimiter) per key: every key gets the same
/// [`Quota`], counted separately — "5 requests per second *per host*".
///
/// Each key behaves exactly like its own `RateLimiter` (strict or GCRA,
/// FIFO, cancel-safe). Keys are created on first use and **evicted when
/// idle** — nobody waits, no acquire future holds the key, and no grant is
/// still inside its window, so a fresh limiter would behave the same and
/// eviction never lets anything extra through. The map is swept whenever it
/// has doubled since the last sweep (amortised O(1) per new key), so memory
/// stays within about twice the keys in recent use;
/// [`evict_idle`](KeyedRateLimiter::evict_idle) sweeps on demand.
///
/// The key map's lock is held only to look keys up, insert and remove them:
/// wakers, the timer, the keys' limiters, and the keys' `Hash` and `Drop`
/// run with it released (a key is hashed once, before locking; the map
/// keeps that hash, so growing it never hashes a key again). Only the key
/// type's `Eq` runs under it, so it must not call back into the same
/// `KeyedRateLimiter`.
///
/// # Panics
///
/// A waiter's waker that panics never wedges a key's limiter, nor the
/// others (see [`RateLimiter`](crate::RateLimiter#panics)).
///
/// A key's `Hash` or `Eq` that panics propagates out of the call that was
/// given that key, and leaves the map and every other key as they were. A
/// key's `Drop` that panics propagates out of the call that was given the
/// key (after everything is settled; the key's limiter is neither lost nor
/// leaked), or out of [`evict_idle`](KeyedRateLimiter::evict_idle) when it
/// evicts the key (after every evicted key is dropped); when an automatic
/// sweep evicts the key, the panic is reported by the panic hook and
/// discarded, so it never reaches an unrelated caller.
///
/// # Examples
///
/// ```
/// use awaitkit::KeyedRateLimiter;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let per_host = KeyedRateLimiter::new(1, Duration::from_secs(60));
/// per_host.acquire("a.example").await;
/// per_host.acquire("b.example").await; // another key: its own quota
/// assert!(per_host.try_acquire("a.example").is_err());
/// assert_eq!(per_host.len(), 2);
/// # });
/// ```
pub struct KeyedRateLimiter<K, T: Timer = DefaultTimer> {
    timer: T,
    /// Hashes the keys, with the map's lock released.
    hasher: RandomState,
    inner: Mutex<Keys<K, T>>,
}

struct Keys<K, T: Timer> {
    quota: Quota,
    /// Bumped by every `set_quota`, which applies the quota to the keys
    /// with this lock released: a key's limiter ignores an older change
    /// arriving after a newer one.
    generation: u64,
    /// The keys by their hash (computed with the lock released): the map
    /// itself never runs the keys' `Hash`, so a key whose `Hash` panics can
    /// never abort a rehash half way (std's table drops the entries it has
    /// not moved yet) nor keep the map from growing.
    map: HashMap<u64, Bucket<K, Arc<Shared<T>>>, BuildHasherDefault<PassThrough>>,
    /// Keys in the map.
    len: usize,
    sweep_at: usize,
}

impl<K: Eq, T: Timer> Keys<K, T> {
    /// The limiter of `key`, whose hash is `hash` (runs the key's `Eq`).
    fn get(&self, hash: u64, key: &K) -> Option<&Arc<Shared<T>>> {
        self.map.get(&hash)?.get(key)
    }

    /// Adds a key that is not in the map (runs no user code).
    fn insert(&mut self, hash: u64, key: K, shared: Arc<Shared<T>>) {
        match self.map.entry(hash) {
            Entry::Occupied(mut bucket) => bucket.get_mut().push(key, shared),
            Entry::Vacant(slot) => {
                slot.insert(Bucket::One(key, shared));
            }
        }
        self.len += 1;
    }

    /// Every key's limiter.
    fn limiters(&self) -> impl Iterator<Item = &Arc<Shared<T>>> {
        self.map.values().flat_map(Bucket::values)
    }
}

/// The keys sharing one hash: almost always one.
enum Bucket<K, V> {
    One(K, V),
    Many(Vec<(K, V)>),
}

impl<K: Eq, V> Bucket<K, V> {
    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Bucket::One(k, v) => (k == key).then_some(v),
            Bucket::Many(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    fn push(&mut self, key: K, value: V) {
        match self {
            Bucket::Many(entries) => entries.push((key, value)),
            Bucket::One(..) => {
                let Bucket::One(k, v) = std::mem::replace(self, Bucket::Many(Vec::new())) else {
                    unreachable!("matched above")
                };
                *self = Bucket::Many(vec![(k, v), (key, value)]);
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        let (one, many) = match self {
            Bucket::One(_, v) => (Some(v), &[][..]),
            Bucket::Many(entries) => (None, &entries[..]),
        };
        one.into_iter().chain(many.iter().map(|(_, v)| v))
    }

    /// Moves the entries `evict` picks to `evicted` (no key is dropped:
    /// the caller drops them with the lock released). `false` when the
    /// bucket is left empty.
    fn evict(&mut self, mut evict: impl FnMut(&V) -> bool, evicted: &mut Vec<(K, V)>) -> bool {
        match self {
            Bucket::One(_, v) => {
                if !evict(v) {
                    return true;
                }
                let Bucket::One(k, v) = std::mem::replace(self, Bucket::Many(Vec::new())) else {
                    unreachable!("matched above")
                };
                evicted.push((k, v));
                false
            }
            Bucket::Many(entries) => {
                let mut i = 0;
                while i < entries.len() {
                    if evict(&entries[i].1) {
                        evicted.push(entries.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                !entries.is_empty()
            }
        }
    }
}

/// The map's hasher: a key's hash is computed once, with the limiter's
/// [`RandomState`], and the map hashes that `u64` as itself.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

impl<K: Eq + Hash> KeyedRateLimiter<K, DefaultTimer> {
    /// A strict sliding window per key: at most `max_calls` grants per key
    /// in every window of length `period`.
    ///
    /// # Panics
    ///
    /// If `max_calls` or `period` is zero (build a [`Quota`] and use
    /// [`with_quota`](KeyedRateLimiter::with_quota) to handle the error).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(2, Duration::from_secs(1));
    /// assert!(limiter.try_acquire(7_u32).is_ok());
    /// ```
    #[track_caller]
    pub fn new(max_calls: usize, period: std::time::Duration) -> Self {
        let quota = Quota::window(max_calls, period)
            .unwrap_or_else(|e| panic!("KeyedRateLimiter::new: {e}"));
        Self::with_quota(quota)
    }

    /// A limiter per key for `quota` on the default timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use awaitkit::rate_limiter::Quota;
    /// use std::time::Duration;
    /// let quota = Quota::gcra(10, Duration::from_secs(1), 2).unwrap();
    /// let limiter = KeyedRateLimiter::with_quota(quota);
    /// assert!(limiter.try_acquire_n("k", 2).is_ok());
    /// ```
    pub fn with_quota(quota: Quota) -> Self {
        Self::build(quota, DefaultTimer)
    }
}

impl<K: Eq + Hash, T: Timer> KeyedRateLimiter<K, T> {
    /// The same limiter (its quota) on another timer, cloned for every key
    /// — the one way, as on every awaitkit type that waits for time, to
    /// choose the timer (see [`time`](crate::time)). Call it as you build the
    /// limiter: the keys granted through `self` are not carried over.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(FuturesTimer);
    /// assert!(limiter.try_acquire('x').is_ok());
    /// ```
    pub fn with_timer<U>(self, timer: U) -> KeyedRateLimiter<K, U>
    where
        U: Timer + Clone + Send + Sync + 'static,
        U::Sleep: Send + 'static,
    {
        KeyedRateLimiter::build(self.quota(), timer)
    }

    fn build(quota: Quota, timer: T) -> Self
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        KeyedRateLimiter {
            timer,
            hasher: RandomState::new(),
            inner: Mutex::new(Keys {
                quota,
                generation: 0,
                map: HashMap::default(),
                len: 0,
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Keys<K, T>> {
        // Map updates are single inserts and removes: poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limiter of `key`, created on first use (sweeping idle keys when
    /// the map has doubled). The key is hashed, a new limiter is built, and
    /// evicted keys and limiters are dropped, with the map's lock released
    /// (the key's `Hash` and `Drop`, the timer's `clone` and a limiter's
    /// drop are user code).
    ///
    /// The key is dropped explicitly before returning, never as the
    /// function's argument: a panic in an argument's destructor leaks the
    /// return value (rust-lang/rust#47949), and here that would be a handle
    /// to the key's limiter, which would never be evicted.
    fn limiter(&self, key: K) -> Arc<Shared<T>>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        let hash = self.hasher.hash_one(&key);
        let (quota, generation, sweep) = {
            let keys = self.lock();
            if let Some(shared) = keys.get(hash, &key) {
                let shared = Arc::clone(shared);
                drop(keys);
                // If it panics, `shared` is dropped as a local.
                drop(key);
                return shared;
            }
            (keys.quota, keys.generation, keys.len >= keys.sweep_at)
        };
        let fresh = Shared::with_generation(quota, self.timer.clone(), generation);
        // A sweep needs the time: the clock (user code) is read unlocked.
        let reading = sweep.then(|| Reading::of(&self.timer));
        let mut keys = self.lock();
        if let Some(shared) = keys.get(hash, &key) {
            // Another thread created it meanwhile.
            let shared = Arc::clone(shared);
            drop(keys);
            drop((key, fresh));
            return shared;
        }
        let mut evicted = Vec::new();
        if let Some(reading) = reading.filter(|_| keys.len >= keys.sweep_at) {
            Self::sweep(&mut keys, reading, &mut evicted);
        }
        let latest = (keys.quota, keys.generation);
        keys.insert(hash, key, Arc::clone(&fresh));
        drop(keys);
        // An unrelated caller: a panic of an evicted key's or limiter's
        // destructor is the panic hook's to report, not this call's.
        for entry in evicted {
            unwind::contain(move || drop(entry));
        }
        if latest.1 != generation {
            // A quota change meanwhile missed `fresh`: apply the latest
            // (later ones reach it through the map). A waiter queued on it
            // since has its own task: a panic of its waker is not ours.
            unwind::contain(|| {
                let _same_mode = fresh.set_quota_at(latest.0, Some(latest.1));
            });
        }
        fresh
    }

    /// Takes the idle keys out of the map, with their limiters, into
    /// `evicted` (to drop once the lock is released). Runs no user code:
    /// idleness is judged at `reading`, taken before locking, and no key is
    /// hashed or dropped.
    fn sweep(
        keys: &mut Keys<K, T>,
        reading: Reading,
        evicted: &mut Vec<(K, Arc<Shared<T>>)>,
    ) -> usize {
        let before = evicted.len();
        keys.map.retain(|_, bucket| {
            bucket.evict(
                |shared| Arc::strong_count(shared) == 1 && shared.is_idle_at(reading),
                evicted,
            )
        });
        let gone = evicted.len() - before;
        keys.len -= gone;
        keys.sweep_at = (keys.len * 2).max(MIN_SWEEP);
        gone
    }

    /// Waits for one call's grant for `key`, in FIFO order among that key's
    /// waiters.
    ///
    /// # Cancel safety
    ///
    /// As for [`RateLimiter::acquire`](crate::RateLimiter::acquire).
    ///
    /// # Panics
    ///
    /// Polling after completion panics; other panics as for
    /// [`RateLimiter::acquire`](crate::RateLimiter::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = KeyedRateLimiter::new(5, Duration::from_secs(1));
    /// limiter.acquire("api.example").await;
    /// # });
    /// ```
    pub fn acquire(&self, key: K) -> KeyedAcquire<T>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        KeyedAcquire {
            inner: Acquisition::new(self.limiter(key), 1),
        }
    }

    /// Waits for `n` calls' grants at once for `key`.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::ExceedsQuota`] if `n` is more than
    /// [`Quota::max_at_once`].
    ///
    /// # Cancel safety
    ///
    /// As for [`RateLimiter::acquire`](crate::RateLimiter::acquire).
    ///
    /// # Panics
    ///
    /// Polling after completion panics; other panics as for
    /// [`RateLimiter::acquire`](crate::RateLimiter::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = KeyedRateLimiter::new(5, Duration::from_secs(1));
    /// assert_eq!(limiter.acquire_n("k", 5).await, Ok(()));
    /// # });
    /// ```
    pub fn acquire_n(&self, key: K, n: usize) -> KeyedAcquireN<T>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        KeyedAcquireN {
            inner: Acquisition::new(self.limiter(key), n),
        }
    }

    /// Takes one call's grant for `key` if its quota allows it now and
    /// nobody waits on that key.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with how long to wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(1));
    /// assert!(limiter.try_acquire(1).is_ok());
    /// assert!(limiter.try_acquire(1).is_err());
    /// assert!(limiter.try_acquire(2).is_ok());
    /// ```
    pub fn try_acquire(&self, key: K) -> Result<(), RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        self.limiter(key).try_acquire(1)
    }

    /// Takes `n` calls' grants for `key` if its quota allows it now and
    /// nobody waits on that key.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] or [`RateLimitError::ExceedsQuota`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(3, Duration::from_secs(1));
    /// assert!(limiter.try_acquire_n("k", 4).is_err());
    /// ```
    pub fn try_acquire_n(&self, key: K, n: usize) -> Result<(), RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        self.limiter(key).try_acquire(n as u64)
    }

    /// Keys currently tracked (idle ones included until the next sweep).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(3, Duration::from_secs(1));
    /// limiter.try_acquire("a").unwrap();
    /// assert_eq!(limiter.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// No key is tracked.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// assert!(KeyedRateLimiter::<&str>::new(3, Duration::from_secs(1)).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.lock().len == 0
    }

    /// Drops every idle key now (see the [type docs](KeyedRateLimiter)) and
    /// returns how many went.
    ///
    /// # Panics
    ///
    /// If an evicted key's destructor panics (or its limiter's: its
    /// timer's sleep), once every evicted key is dropped and the map's lock
    /// released; the first such panic propagates. The keys are evicted all
    /// the same.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(3, Duration::from_nanos(1));
    /// limiter.try_acquire("a").unwrap();
    /// std::thread::sleep(Duration::from_millis(1)); // the grant leaves its window
    /// assert_eq!(limiter.evict_idle(), 1);
    /// assert!(limiter.is_empty());
    /// ```
    pub fn evict_idle(&self) -> usize {
        let reading = Reading::of(&self.timer); // user code: unlocked
        let mut evicted = Vec::new();
        let gone = Self::sweep(&mut self.lock(), reading, &mut evicted);
        // The lock is released: each key is dropped, even if one panics.
        let mut panics = Panics::default();
        panics.drop_all(evicted);
        panics.resume();
        gone
    }

    /// The quota every key gets.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::<u64>::new(3, Duration::from_secs(1));
    /// assert_eq!(limiter.quota().max_calls(), 3);
    /// ```
    pub fn quota(&self) -> Quota {
        self.lock().quota
    }

    /// Changes the quota of every key, present and future (see
    /// [`RateLimiter::set_quota`](crate::RateLimiter::set_quota)).
    ///
    /// The waiters it lets through are woken with the key map's lock
    /// released, so their wakers may use this limiter. Concurrent changes
    /// end with the last one everywhere.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ModeChange`] when `quota` uses the other algorithm.
    ///
    /// # Panics
    ///
    /// If a waker of a waiter it lets through panics, every key still gets
    /// the new quota and every other waiter is woken; then the first such
    /// panic propagates.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use awaitkit::rate_limiter::Quota;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(60));
    /// limiter.try_acquire("a").unwrap();
    /// limiter.set_quota(Quota::window(2, Duration::from_secs(60)).unwrap()).unwrap();
    /// assert!(limiter.try_acquire("a").is_ok());
    /// ```
    pub fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        let (generation, limiters) = {
            let mut keys = self.lock();
            if quota.burst().is_some() != keys.quota.burst().is_some() {
                return Err(QuotaError::ModeChange);
            }
            keys.quota = quota;
            keys.generation += 1;
            let limiters: Vec<Arc<Shared<T>>> = keys.limiters().cloned().collect();
            (keys.generation, limiters)
        };
        // With the lock released: a key's waiters may be woken.
        let mut panics = Panics::default();
        for shared in &limiters {
            panics.catch(|| {
                let _same_mode = shared.set_quota_at(quota, Some(generation));
            });
        }
        panics.catch(|| drop(limiters));
        panics.resume();
        Ok(())
    }
}

impl<K, T: Timer> fmt::Debug for KeyedRateLimiter<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Read, then write with the lock released (the writer is user code).
        let (quota, len) = {
            let keys = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            (keys.quota, keys.len)
        };
        f.debug_struct("KeyedRateLimiter")
            .field("quota", &quota)
            .field("keys", &len)
            .finish_non_exhaustive()
    }
}

/// The future of [`KeyedRateLimiter::acquire`]: one call's grant for a key.
/// It owns a handle to the key's limiter (no borrow of the map).
///
/// # Cancel safety
///
/// As for [`RateAcquire`](crate::RateAcquire).
///
/// # Panics
///
/// Polling after completion panics; other panics as for
/// [`RateAcquire`](crate::RateAcquire).
///
/// # Examples
///
/// ```
/// use awaitkit::{KeyedAcquire, KeyedRateLimiter};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(1));
/// let acquire: KeyedAcquire = limiter.acquire("k");
/// acquire.await;
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct KeyedAcquire<T: Timer = DefaultTimer> {
    inner: Acquisition<T, Arc<Shared<T>>>,
}

impl<T: Timer> Future for KeyedAcquire<T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // One call always fits a quota.
        self.inner.poll(cx).map(|_| ())
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: Timer> futures_core::FusedFuture for KeyedAcquire<T> {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<T: Timer> fmt::Debug for KeyedAcquire<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedAcquire").field(&self.inner).finish()
    }
}

/// The future of [`KeyedRateLimiter::acquire_n`]: `n` calls' grants for a
/// key.
///
/// # Errors
///
/// [`RateLimitError::ExceedsQuota`] if `n` is more than the quota grants at
/// once.
///
/// # Cancel safety
///
/// As for [`RateAcquire`](crate::RateAcquire).
///
/// # Panics
///
/// Polling after completion panics; other panics as for
/// [`RateAcquire`](crate::RateAcquire).
///
/// # Examples
///
/// ```
/// use awaitkit::{KeyedAcquireN, KeyedRateLimiter};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = KeyedRateLimiter::new(2, Duration::from_secs(1));
/// let acquire: KeyedAcquireN = limiter.acquire_n("k", 2);
/// assert_eq!(acquire.await, Ok(()));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct KeyedAcquireN<T: Timer = DefaultTimer> {
    inner: Acquisition<T, Arc<Shared<T>>>,
}

impl<T: Timer> Future for KeyedAcquireN<T> {
    type Output = Result<(), RateLimitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll(cx)
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<T: Timer> futures_core::FusedFuture for KeyedAcquireN<T> {
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<T: Timer> fmt::Debug for KeyedAcquireN<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedAcquireN").field(&self.inner).finish()
    }
}
