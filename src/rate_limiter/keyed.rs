//! `KeyedRateLimiter`: one quota per key (per host, per user, per client
//! address), with compact per-key state, sharded checks, and an optional
//! bound on the keys tracked.
//!
//! # Design
//!
//! * The keys live in [`SHARDS`] hash tables, each behind its own mutex and
//!   on its own cache line; a key's shard comes from its hash (computed
//!   once, with no lock held, and kept in the table, so growing a table
//!   never hashes a key again). Threads checking different keys rarely
//!   meet on one lock.
//! * A key that is only checked keeps its compact state
//!   ([`compact`](super::compact)) in 8 bytes: GCRA's arrival time, or the
//!   window's one grant time and count inline (a boxed ring of stamps or a
//!   log beyond, the cell keeping its address). A check is a
//!   clock read, a lookup and that arithmetic, under the shard's lock.
//! * An acquire future holds its key and a handle to the map, and checks
//!   the key at its first poll as a check does: granted, the key stays
//!   compact. A key whose acquire must wait is *promoted* then: its state
//!   moves into a full limiter
//!   ([`Shared`](super::shared::Shared): FIFO queue, driver, timer) on the
//!   keyed limiter's own time origin, kept in the shard by id. Checks of a
//!   promoted key go through that limiter (so they never pass its
//!   waiters). Once nobody holds it but the shard and nobody waits, the
//!   next check or sweep *demotes* it: the state moves back, the limiter is
//!   dropped.

use super::compact::{GcraSlot, Params, Slot, WinCell};
use super::shared::{Acquisition, Shared, nanos};
use super::{Quota, QuotaError, RateLimitError};
use crate::time::{DefaultTimer, Timer};
use crate::unwind::{self, Panics};
use hashbrown::HashTable;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// Shards of the key map (a power of two).
const SHARDS: usize = 16;

/// Below this many keys a shard is not swept by the automatic sweep.
const MIN_SWEEP: usize = 4;

/// A bit of an entry's stored hash (one neither the tables' probing nor
/// the shard choice uses; cleared in every hash the tables see): the key
/// was used since the last sweep. A full limiter making room spares such a
/// key once even if it is idle (a second chance, as CLOCK approximates
/// LRU): the idle keys nobody used lately go first.
const USED: u64 = 1 << 56;

/// A bit of an entry's stored hash (cleared in every hash the tables see,
/// as [`USED`]): the key is promoted, and its slot holds its full
/// limiter's id (so a compact slot keeps every one of its bits for its
/// state: GCRA's arrival time is a whole `u64`).
const PROMOTED: u64 = 1 << 55;

/// The flag bits of a stored hash.
const FLAGS: u64 = USED | PROMOTED;

/// Which shard a key's hash goes to: bits the tables' own probing uses
/// least (the low bits pick a bucket, the top seven tag it).
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize & (SHARDS - 1)
}

/// A [`RateLimiter`](crate::RateLimiter) per key: every key gets the same
/// [`Quota`], counted separately — "5 requests per second *per host*".
///
/// Each key behaves exactly like its own `RateLimiter` (strict or GCRA,
/// FIFO, cancel-safe). Keys are created on first use.
///
/// # Memory
///
/// A key that is only checked ([`try_acquire`](Self::try_acquire)) holds
/// what its algorithm needs and no more, in eight bytes beside the key and
/// its hash (a key costs its own size plus 16 bytes in the table): with
/// GCRA its arrival time; with a strict window its grants of the last
/// period: their time and count while they are all at one instant (inline
/// up to 31 grants, within 2⁵⁶ ns — 2.28 years — of the limiter's first
/// use; past that, in a 16-byte allocation); with grants at several
/// times, a small allocation of four bytes a grant for quotas of up to 64
/// calls per period (rings of 4, 8, 16, 32 and 64 grants: a key holding 2
/// grants costs about 32 bytes more, 10 grants about 80), or the single
/// limiter's log for larger quotas. Those four-byte stamps count
/// time in steps of `2^k` ns, the smallest with the period within `2^31`
/// steps: exact nanoseconds for periods up to about 2.1 s; otherwise a
/// grant's time is rounded *up* to the next step (32 ns for a one-minute
/// period, 2 µs for an hour, always under `period / 2^30`), so a grant
/// leaves its window at most that much later than exactly — the limit is
/// never looser, and a call may be refused that much longer at worst.
/// A key that is [`acquire`](Self::acquire)d
/// costs the same when the grant is immediate (the future checks the key
/// at its first poll). Only a key with waiters holds a whole limiter
/// (queue, timer), while an acquire future waits on it; the next check or
/// sweep after the last one is gone turns it back into the compact form.
///
/// Keys are **evicted when idle** — nobody waits, no acquire future holds
/// the key, and no grant is still inside its window (GCRA: its arrival time
/// has passed) — so a fresh limiter would behave the same and eviction never
/// lets anything extra through. A shard of the map is swept when it has
/// doubled since its last sweep, at most once a period (amortised O(1) per
/// new key); [`evict_idle`](Self::evict_idle) sweeps on demand.
///
/// # A bound on the keys
///
/// Keys usually come from outside (a client's address, an API key), so
/// whoever sends the requests chooses how many there are. Within one
/// period nothing is idle, so without a bound memory grows with every
/// distinct key. [`with_max_keys`](Self::with_max_keys) caps the keys
/// tracked: when the limiter is full, a new key first makes room by
/// evicting idle keys — those not checked since the last sweep first (the
/// least recently used, approximately, as a CLOCK cache does), then the
/// others — and if none is idle it is **refused** with
/// [`RateLimitError::TooManyKeys`] (fail closed: it is neither let through
/// nor tracked). The keys already tracked keep their exact quotas. A key
/// that goes idle can be evicted, and is then a new key again: under a
/// flood that keeps the limiter full, it may be refused until some keys go
/// idle.
///
/// The key map's locks are held only to look keys up, check a compact key,
/// insert and remove keys: wakers, the timer, the keys' full limiters, and
/// the keys' `Hash` and `Drop` run with them released. Only the key type's
/// `Eq` runs under a lock, so it must not call back into the same
/// `KeyedRateLimiter`. The timer may call back, but not
/// [`set_quota`](KeyedRateLimiter::set_quota) with a *different* quota at
/// every reading of its clock: a key's first wait builds its full limiter
/// for the quota it read, and a quota changed meanwhile makes it build
/// again (the same quota set again changes nothing).
///
/// # Panics
///
/// A waiter's waker that panics never wedges a key's limiter, nor the
/// others (see [`RateLimiter`](crate::RateLimiter#panics)).
///
/// A key's `Hash` or `Eq` that panics propagates out of the call that was
/// given that key (for an acquire: `Hash` out of
/// [`acquire`](Self::acquire), `Eq` out of the future's first poll, which
/// stays to be done again), and leaves the map and every other key as they
/// were. A key's `Drop` that panics propagates out of the call that was
/// given the key, or out of an acquire's first poll (after everything is
/// settled: a grant it took stays taken — an acquire returns it at its next
/// poll — and the key's state is neither lost nor leaked), or out of
/// [`evict_idle`](Self::evict_idle) when it evicts the key (after every
/// evicted key is dropped); when an automatic sweep evicts the key, the
/// panic is reported by the panic hook and discarded, so it never reaches
/// an unrelated caller.
///
/// # Examples
///
/// ```
/// use awaitkit::KeyedRateLimiter;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let per_host = KeyedRateLimiter::new(1, Duration::from_secs(60));
/// per_host.acquire("a.example").await.unwrap();
/// per_host.acquire("b.example").await.unwrap(); // another key: its own quota
/// assert!(per_host.try_acquire("a.example").is_err());
/// assert_eq!(per_host.len(), 2);
/// # });
/// ```
pub struct KeyedRateLimiter<K, T: Timer = DefaultTimer> {
    /// Shared with the acquire futures, which reach the key map at their
    /// first poll.
    inner: Arc<Inner<K, T>>,
}

/// A keyed limiter's state: what its acquire futures hold a handle to.
struct Inner<K, T: Timer> {
    /// `None` only while the limiter is dropped (see its `Drop`).
    timer: Option<T>,
    /// Hashes the keys, with no lock held.
    hasher: RandomState,
    /// The timer's counter and `Instant` at the epoch: compact states and
    /// promoted limiters count time from it. Read at the first use, not
    /// when the limiter is built (the clock is user code, and building
    /// never ran it).
    origin: OnceLock<(u64, Instant)>,
    table: Table<K, T>,
    /// The quota and its generation (bumped by every `set_quota`).
    config: Mutex<(Quota, u64)>,
    /// `usize::MAX` when unbounded.
    max_keys: usize,
    counts: Counts,
}

impl<K, T: Timer> Drop for Inner<K, T> {
    /// The keys (shard by shard: a shard's drop propagates the first panic
    /// of its keys), then the timer, each on its own: a panic of one does
    /// not drop the others during its unwind; the first then propagates.
    fn drop(&mut self) {
        let mut panics = Panics::default();
        let table = std::mem::replace(&mut self.table, Table::Gcra(Box::default()));
        match table {
            Table::Gcra(cells) => panics.drop_all(cells.into_vec()),
            Table::Window(cells) => panics.drop_all(cells.into_vec()),
        }
        let timer = self.timer.take();
        panics.catch(move || drop(timer));
        panics.resume();
    }
}

/// The shards, by algorithm.
enum Table<K, T: Timer> {
    Gcra(Box<[Cell<K, GcraSlot, T>]>),
    Window(Box<[Cell<K, WinCell, T>]>),
}

/// Counters shared by the shards, on their own cache line.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    /// Keys reserved against the bound (bounded limiters only).
    keys: AtomicUsize,
    evictions: AtomicU64,
    refusals: AtomicU64,
}

/// One shard and the earliest time any of its keys may be idle (read
/// without the lock, to skip sweeps that could not free anything).
#[repr(align(128))]
struct Cell<K, S, T: Timer> {
    shard: Mutex<Shard<K, S, T>>,
    next_idle: AtomicU64,
}

struct Shard<K, S, T: Timer> {
    keys: HashTable<Entry<K, S>>,
    /// The promoted keys' limiters, by id.
    full: HashMap<u64, Arc<Shared<T>>>,
    next_id: u64,
    quota: Quota,
    params: Params,
    /// The quota's generation: an older `set_quota` arriving after a newer
    /// one is ignored.
    generation: u64,
    /// The latest time used (a clock that goes backwards is held here).
    last: u64,
    /// Keys at which the automatic sweep runs next.
    sweep_at: usize,
    /// New keys and refusals since the last sweep (a full limiter sweeps a
    /// shard at most once per an eighth of its keys in operations, or once
    /// per period).
    ops: usize,
    swept_at: u64,
}

struct Entry<K, S> {
    hash: u64,
    key: K,
    slot: S,
}

/// One key's room against the bound, while its limiter is built.
struct Reservation<'a> {
    /// The bound's count (`None`: unbounded).
    keys: Option<&'a AtomicUsize>,
    held: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let (true, Some(keys)) = (self.held, self.keys) {
            keys.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a sweep took out, to drop with the lock released.
struct Evicted<K, S, T: Timer> {
    entries: Vec<Entry<K, S>>,
    limiters: Vec<Arc<Shared<T>>>,
}

impl<K, S, T: Timer> Default for Evicted<K, S, T> {
    fn default() -> Self {
        Evicted {
            entries: Vec::new(),
            limiters: Vec::new(),
        }
    }
}

impl<K, S, T: Timer> Evicted<K, S, T> {
    /// Drops everything, each piece of user code under `catch_unwind`: a
    /// panic is reported by the hook and discarded (an automatic sweep's
    /// caller is unrelated to the keys it evicts).
    #[inline]
    fn contain(self) {
        if !self.entries.is_empty() || !self.limiters.is_empty() {
            self.contain_all();
        }
    }

    #[cold]
    #[inline(never)]
    fn contain_all(self) {
        for entry in self.entries {
            unwind::contain(move || drop(entry));
        }
        for limiter in self.limiters {
            unwind::contain(move || drop(limiter));
        }
    }
}

impl<K, S, T: Timer> Cell<K, S, T> {
    fn new(quota: Quota) -> Self {
        Cell {
            shard: Mutex::new(Shard {
                keys: HashTable::new(),
                full: HashMap::new(),
                next_id: 0,
                quota,
                params: Params::of(&quota),
                generation: 0,
                last: 0,
                sweep_at: MIN_SWEEP,
                ops: 0,
                swept_at: 0,
            }),
            next_idle: AtomicU64::new(u64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shard<K, S, T>> {
        // Every update leaves the shard consistent before anything that can
        // panic (a key's `Eq`): poisoning is ignored.
        self.shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lowers the shard's earliest idle time to `at`.
    fn idle_by(&self, at: u64) {
        if at < self.next_idle.load(Ordering::Relaxed) {
            self.next_idle.store(at, Ordering::Relaxed);
        }
    }
}

impl<K, S, T: Timer> Drop for Shard<K, S, T> {
    /// Drops every key and limiter even if some destructors panic (the
    /// table's own drop would stop at the first); the first panic
    /// propagates afterwards (discarded while already unwinding).
    fn drop(&mut self) {
        let mut panics = Panics::default();
        for entry in self.keys.drain() {
            panics.catch(move || drop(entry));
        }
        for (_, limiter) in self.full.drain() {
            panics.catch(move || drop(limiter));
        }
        panics.resume();
    }
}

impl<K: Eq, S: Slot, T: Timer> Shard<K, S, T> {
    /// `raw`, read before locking, never behind a time already used.
    #[inline]
    fn hold(&mut self, raw: u64) -> u64 {
        self.last = self.last.max(raw);
        self.last
    }

    /// Whether a sweep for room may run now: something may be idle, and
    /// enough has happened since the last one (sweeps stay amortised O(1)
    /// per operation even while a flood of new keys meets a full limiter).
    fn may_sweep(&self, next_idle: u64, now: u64) -> bool {
        next_idle <= now
            && (self.ops.saturating_mul(8) >= self.keys.len()
                || now >= self.swept_at.saturating_add(self.params.period))
    }

    /// Takes the idle keys out (into `evicted`) and demotes the promoted
    /// keys nobody uses any more; returns how many keys went and the
    /// earliest time one of the others may be idle. Runs no user code: no
    /// key is hashed, compared or dropped, no limiter dropped.
    ///
    /// An idle key used since the last sweep is spared once, unless
    /// `force`; the count of those spared is returned too.
    fn sweep(
        &mut self,
        now: u64,
        force: bool,
        evicted: &mut Evicted<K, S, T>,
    ) -> (usize, u64, usize) {
        let params = self.params;
        let (full, last) = (&mut self.full, &mut self.last);
        let mut next_idle = u64::MAX;
        let mut spared = 0;
        let before = evicted.entries.len();
        evicted.entries.extend(self.keys.extract_if(|entry| {
            let used = entry.hash & USED != 0;
            entry.hash &= !USED;
            if entry.hash & PROMOTED != 0 {
                let id = entry.slot.id();
                let seed = full
                    .get(&id)
                    .filter(|shared| unused(shared))
                    .and_then(|shared| shared.take_seed());
                let Some((seed, used)) = seed else {
                    // In use: it holds the sweep's time too (every key
                    // does: a compact key's is the shard's), and is looked
                    // at again a period later at the soonest.
                    if let Some(shared) = full.get(&id) {
                        shared.hold(now);
                    }
                    next_idle = next_idle.min(now.saturating_add(params.period));
                    return false;
                };
                evicted.limiters.extend(full.remove(&id));
                entry.slot = S::from_seed(seed, &params);
                entry.hash &= !PROMOTED;
                // Its grants may be later than `now` (read before locking):
                // the shard's time never goes behind them.
                *last = (*last).max(used);
            }
            let idle = entry.slot.idle_from(&params, now);
            if idle <= now && (force || !used) {
                return true;
            }
            if idle <= now {
                spared += 1;
            }
            next_idle = next_idle.min(idle);
            false
        }));
        self.ops = 0;
        self.swept_at = now;
        self.sweep_at = (self.keys.len() * 2).max(MIN_SWEEP);
        (evicted.entries.len() - before, next_idle, spared)
    }

    /// A sweep to make room: the idle keys not used since the last sweep
    /// go; if there are none, the idle ones used since then go too.
    fn sweep_for_room(&mut self, now: u64, evicted: &mut Evicted<K, S, T>) -> (usize, u64) {
        match self.sweep(now, false, evicted) {
            (0, _, spared) if spared > 0 => {
                let (gone, next_idle, _) = self.sweep(now, true, evicted);
                (gone, next_idle)
            }
            (gone, next_idle, _) => (gone, next_idle),
        }
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
        Self::build(quota, DefaultTimer, usize::MAX)
    }
}

impl<K: Eq + Hash, T: Timer> KeyedRateLimiter<K, T> {
    /// The same limiter (its quota and key bound) on another timer, cloned
    /// for every key that waits — the one way, as on every awaitkit type
    /// that waits for time, to choose the timer (see [`time`](crate::time)).
    /// Call it as you build the limiter: the keys granted through `self`
    /// are not carried over.
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
        // The old limiter goes once the new one is built: if its drop (a
        // key's, its timer's) panics, the new one is dropped before that
        // panic propagates, not leaked.
        unwind::rebuild(self, |old| {
            KeyedRateLimiter::<K, U>::build(old.quota(), timer, old.inner.max_keys)
        })
    }

    /// The same limiter (its quota and timer) tracking at most `max_keys`
    /// keys: when it is full, a new key evicts idle keys to make room, or
    /// is refused with [`RateLimitError::TooManyKeys`] when none is idle
    /// (see [A bound on the keys](KeyedRateLimiter#a-bound-on-the-keys)).
    /// Call it as you build the limiter: the keys granted through `self`
    /// are not carried over.
    ///
    /// Idle keys are looked for in amortised sweeps (a shard at most once
    /// per an eighth of its keys in new keys and refusals, or once per
    /// period), so a key that has just gone idle may be kept, and a new key
    /// refused, a little longer than strictly needed — never the other way
    /// round.
    ///
    /// # Panics
    ///
    /// If `max_keys` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use awaitkit::rate_limiter::RateLimitError;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(60)).with_max_keys(2);
    /// limiter.try_acquire("a").unwrap();
    /// limiter.try_acquire("b").unwrap();
    /// assert_eq!(limiter.try_acquire("c"), Err(RateLimitError::TooManyKeys { max_keys: 2 }));
    /// assert_eq!(limiter.stats().refusals, 1);
    /// ```
    #[track_caller]
    pub fn with_max_keys(self, max_keys: usize) -> Self
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        assert!(
            max_keys > 0,
            "KeyedRateLimiter::with_max_keys: the bound must be at least one key"
        );
        // As in `with_timer`: the timer's `clone` (user code) runs with the
        // old limiter at hand, dropped outside a panic's unwind.
        unwind::rebuild(self, |old| {
            Self::build(old.quota(), old.inner.timer().clone(), max_keys)
        })
    }

    fn build(quota: Quota, timer: T, max_keys: usize) -> Self {
        let table = match quota.burst() {
            Some(_) => Table::Gcra((0..SHARDS).map(|_| Cell::new(quota)).collect()),
            None => Table::Window((0..SHARDS).map(|_| Cell::new(quota)).collect()),
        };
        let inner = Inner {
            timer: Some(timer),
            hasher: RandomState::new(),
            origin: OnceLock::new(),
            table,
            config: Mutex::new((quota, 0)),
            max_keys,
            counts: Counts::default(),
        };
        KeyedRateLimiter {
            inner: Arc::new(inner),
        }
    }

    /// Waits for one call's grant for `key`, in FIFO order among that key's
    /// waiters.
    ///
    /// The future holds `key` and a handle to the limiter, and does
    /// everything at its first poll: it checks the key as
    /// [`try_acquire`](Self::try_acquire) does, and if the grant is not
    /// immediate, promotes the key to a full limiter and waits on it (see
    /// [`KeyedAcquire`]). Only `key`'s `Hash` runs here.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::TooManyKeys`] if the limiter is bounded
    /// ([`with_max_keys`](Self::with_max_keys)), full, and `key` is new at
    /// the first poll.
    ///
    /// # Cancel safety
    ///
    /// As for [`RateLimiter::acquire`](crate::RateLimiter::acquire).
    /// Dropping the future, or `mem::forget`-ting it, before its first poll
    /// takes nothing (a forgotten one keeps the limiter's memory allocated,
    /// not a key or room against the bound). A *waiting* future that is
    /// forgotten is granted its turn, and the grant wasted, as for
    /// `RateLimiter`; but its key stays promoted (a whole limiter) and
    /// counted against the bound for as long as the keyed limiter lives.
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
    /// limiter.acquire("api.example").await.unwrap();
    /// # });
    /// ```
    pub fn acquire(&self, key: K) -> KeyedAcquire<K, T>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        KeyedAcquire {
            inner: Pending::new(&self.inner, key, 1),
        }
    }

    /// Waits for `n` calls' grants at once for `key`.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::ExceedsQuota`] if `n` is more than
    /// [`Quota::max_at_once`]; [`RateLimitError::TooManyKeys`] as for
    /// [`acquire`](Self::acquire). Both at the first poll.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire).
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
    pub fn acquire_n(&self, key: K, n: usize) -> KeyedAcquireN<K, T>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        KeyedAcquireN {
            inner: Pending::new(&self.inner, key, n),
        }
    }

    /// Takes one call's grant for `key` if its quota allows it now and
    /// nobody waits on that key.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`] with how long to wait;
    /// [`RateLimitError::TooManyKeys`] as for [`acquire`](Self::acquire).
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
        self.inner.check(key, 1)
    }

    /// Takes `n` calls' grants for `key` if its quota allows it now and
    /// nobody waits on that key.
    ///
    /// # Errors
    ///
    /// [`RateLimitError::RateLimited`], [`RateLimitError::ExceedsQuota`],
    /// or [`RateLimitError::TooManyKeys`] as for [`acquire`](Self::acquire).
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
        if n == 0 {
            drop(key);
            return Ok(());
        }
        self.inner.check(key, n as u64)
    }

    /// Keys currently tracked (idle ones included until a sweep).
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
        match &self.inner.table {
            Table::Gcra(cells) => keys_in(cells),
            Table::Window(cells) => keys_in(cells),
        }
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
        self.len() == 0
    }

    /// A snapshot of the key map: keys tracked, keys with waiters, and the
    /// evictions and refusals so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::KeyedRateLimiter;
    /// use std::time::Duration;
    /// let limiter = KeyedRateLimiter::new(3, Duration::from_secs(1)).with_max_keys(100);
    /// limiter.try_acquire("a").unwrap();
    /// let stats = limiter.stats();
    /// assert_eq!((stats.keys, stats.waiting_keys, stats.max_keys), (1, 0, Some(100)));
    /// ```
    pub fn stats(&self) -> KeyedStats {
        fn count<K, S, T: Timer>(cells: &[Cell<K, S, T>]) -> (usize, usize) {
            lock_all(cells)
                .iter()
                .fold((0, 0), |(keys, waiting), shard| {
                    let busy = shard.full.values().filter(|s| s.waiting() > 0).count();
                    (keys + shard.keys.len(), waiting + busy)
                })
        }
        let (keys, waiting_keys) = match &self.inner.table {
            Table::Gcra(cells) => count(cells),
            Table::Window(cells) => count(cells),
        };
        KeyedStats {
            keys,
            waiting_keys,
            max_keys: (self.inner.max_keys != usize::MAX).then_some(self.inner.max_keys),
            evictions: self.inner.counts.evictions.load(Ordering::Relaxed),
            refusals: self.inner.counts.refusals.load(Ordering::Relaxed),
        }
    }

    /// Drops every idle key now (see the [type docs](KeyedRateLimiter)) and
    /// returns how many went.
    ///
    /// # Panics
    ///
    /// If an evicted key's destructor panics (or a demoted limiter's: its
    /// timer's sleep), once every evicted key is dropped and the map's
    /// locks released; the first such panic propagates. The keys are
    /// evicted all the same.
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
        fn sweep_all<K: Eq + Hash, S: Slot, T: Timer>(
            limiter: &Inner<K, T>,
            cells: &[Cell<K, S, T>],
            raw: u64,
        ) -> usize {
            let mut panics = Panics::default();
            let mut gone = 0;
            for cell in cells {
                let mut evicted = Evicted::default();
                {
                    let mut shard = cell.lock();
                    let now = shard.hold(raw);
                    let (went, next_idle, _) = shard.sweep(now, true, &mut evicted);
                    cell.next_idle.store(next_idle, Ordering::Relaxed);
                    limiter.evicted(went);
                    gone += went;
                }
                // The lock is released: each key is dropped, even if one
                // panics.
                panics.drop_all(evicted.entries);
                panics.drop_all(evicted.limiters);
            }
            panics.resume();
            gone
        }
        let raw = self.inner.now_raw(); // user code: unlocked
        match &self.inner.table {
            Table::Gcra(cells) => sweep_all(&self.inner, cells, raw),
            Table::Window(cells) => sweep_all(&self.inner, cells, raw),
        }
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
        self.inner.config().0
    }

    /// Changes the quota of every key, present and future (see
    /// [`RateLimiter::set_quota`](crate::RateLimiter::set_quota)).
    ///
    /// The waiters it lets through are woken with the key map's locks
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
        fn apply<K, S: Slot, T: Timer>(
            cells: &[Cell<K, S, T>],
            quota: Quota,
            generation: u64,
            raw: u64,
            limiters: &mut Vec<Arc<Shared<T>>>,
        ) {
            for cell in cells {
                let mut shard = cell.lock();
                // The time read is held for every key, and every promoted
                // key's limiter (below), even where the quota is current
                // already (the same quota set again).
                shard.last = shard.last.max(raw);
                limiters.extend(shard.full.values().cloned());
                if shard.generation >= generation {
                    continue;
                }
                let now = shard.last;
                let (old, new) = (shard.params, Params::of(&quota));
                if quota.burst().is_some() {
                    for entry in shard.keys.iter_mut() {
                        if entry.hash & PROMOTED == 0 {
                            entry
                                .slot
                                .rescale(now, old.gcra.interval, new.gcra.interval);
                        }
                    }
                }
                shard.quota = quota;
                shard.params = new;
                shard.generation = generation;
                // A shorter period may idle keys sooner.
                cell.next_idle.store(0, Ordering::Relaxed);
            }
        }
        let generation = {
            let mut config = self.inner.config();
            if quota.burst().is_some() != config.0.burst().is_some() {
                return Err(QuotaError::ModeChange);
            }
            // The same quota again keeps its generation: the shards behind
            // it (a concurrent change still applying) are brought up to it,
            // and a key's full limiter built for it stays current (a clock
            // that sets the quota it reads would otherwise have a key's
            // first wait build its limiter again forever).
            if config.0 != quota {
                config.1 += 1;
                config.0 = quota;
            }
            config.1
        };
        // GCRA rescales at the current time: the clock (user code) is read
        // before locking.
        let raw = self.inner.now_raw();
        let mut limiters = Vec::new();
        match &self.inner.table {
            Table::Gcra(cells) => apply(cells, quota, generation, raw, &mut limiters),
            Table::Window(cells) => apply(cells, quota, generation, raw, &mut limiters),
        }
        // With the locks released: a key's waiters may be woken.
        let mut panics = Panics::default();
        for shared in &limiters {
            panics.catch(|| {
                // The time read for every key is a promoted key's too.
                shared.hold(raw);
                let _same_mode = shared.set_quota_at(quota, Some(generation));
            });
        }
        panics.catch(|| drop(limiters));
        panics.resume();
        Ok(())
    }
}

impl<K, T: Timer> Inner<K, T> {
    /// The timer (there until the limiter is dropped).
    #[inline]
    fn timer(&self) -> &T {
        self.timer
            .as_ref()
            .expect("a keyed limiter's timer is there until it is dropped")
    }
}

impl<K: Eq + Hash, T: Timer> Inner<K, T> {
    fn config(&self) -> MutexGuard<'_, (Quota, u64)> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock, in nanoseconds since the epoch (user code: read with no
    /// lock held).
    #[inline]
    fn now_raw(&self) -> u64 {
        let (counter_origin, epoch) = self.origin();
        match self.timer().counter_nanos() {
            Some(counter) => counter.saturating_sub(counter_origin),
            None => nanos(self.timer().now().saturating_duration_since(epoch)),
        }
    }

    /// The time origin, read at the first use (user code: with no lock
    /// held, and outside the `OnceLock`'s initialisation, so a clock that
    /// calls back into this limiter does not re-enter it; if it panics, the
    /// next use reads it again; the first reading stored is kept).
    #[inline]
    fn origin(&self) -> (u64, Instant) {
        if let Some(origin) = self.origin.get() {
            return *origin;
        }
        self.first_origin()
    }

    #[inline(never)]
    fn first_origin(&self) -> (u64, Instant) {
        // The counter first: an epoch read after it never maps a deadline
        // early (as a single limiter does).
        let counter = self.timer().counter_nanos().unwrap_or(0);
        let reading = (counter, self.timer().now());
        *self.origin.get_or_init(|| reading)
    }

    /// Reserves room for one more key against the bound.
    #[inline]
    fn reserve(&self) -> bool {
        if self.max_keys == usize::MAX {
            return true;
        }
        self.counts
            .keys
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |keys| {
                (keys < self.max_keys).then_some(keys + 1)
            })
            .is_ok()
    }

    /// Books `gone` evicted keys.
    fn evicted(&self, gone: usize) {
        if gone == 0 {
            return;
        }
        if self.max_keys != usize::MAX {
            self.counts.keys.fetch_sub(gone, Ordering::AcqRel);
        }
        self.counts
            .evictions
            .fetch_add(gone as u64, Ordering::Relaxed);
    }

    /// Room for one more key in `cell`'s shard (locked) once the bound is
    /// reached: this shard swept for it when that may help, then a
    /// reservation again.
    fn room<S: Slot>(
        &self,
        cell: &Cell<K, S, T>,
        shard: &mut Shard<K, S, T>,
        now: u64,
        evicted: &mut Evicted<K, S, T>,
    ) -> bool {
        if shard.may_sweep(cell.next_idle.load(Ordering::Relaxed), now) {
            let (gone, next_idle) = shard.sweep_for_room(now, evicted);
            cell.next_idle.store(next_idle, Ordering::Relaxed);
            self.evicted(gone);
            if gone > 0 && self.reserve() {
                return true;
            }
        }
        shard.ops += 1;
        false
    }

    /// A full limiter found no room in the new key's shard: sweeps the
    /// other shards that may have idle keys (each under its own lock, none
    /// held here). Returns how many keys went.
    fn sweep_others<S: Slot>(&self, cells: &[Cell<K, S, T>], skip: usize, now: u64) -> usize {
        let mut gone = 0;
        for (i, cell) in cells.iter().enumerate() {
            if i == skip || cell.next_idle.load(Ordering::Relaxed) > now {
                continue;
            }
            let mut evicted = Evicted::default();
            {
                let mut shard = cell.lock();
                // Its keys are judged at `now`: the shard holds it (a key
                // evicted here is never stamped at an older reading later).
                let now = shard.hold(now);
                if shard.may_sweep(cell.next_idle.load(Ordering::Relaxed), now) {
                    let (went, next_idle) = shard.sweep_for_room(now, &mut evicted);
                    cell.next_idle.store(next_idle, Ordering::Relaxed);
                    self.evicted(went);
                    gone += went;
                }
            }
            evicted.contain();
            if gone > 0 {
                break;
            }
        }
        gone
    }

    /// The automatic sweep of a shard that has doubled since its last one,
    /// at most once a period (amortised O(1) per new key).
    fn auto_sweep<S: Slot>(
        &self,
        cell: &Cell<K, S, T>,
        shard: &mut Shard<K, S, T>,
        now: u64,
        evicted: &mut Evicted<K, S, T>,
    ) {
        // Nothing can be idle before `next_idle`: the sweep waits for it,
        // and for a period since the last one (keys whose quota makes them
        // idle right after each grant are not evicted and created again at
        // every doubling).
        if shard.keys.len() >= shard.sweep_at
            && cell.next_idle.load(Ordering::Relaxed) <= now
            && now >= shard.swept_at.saturating_add(shard.params.period)
        {
            let (gone, next_idle, _) = shard.sweep(now, true, evicted);
            cell.next_idle.store(next_idle, Ordering::Relaxed);
            self.evicted(gone);
        }
    }

    fn refused(&self) -> RateLimitError {
        self.counts.refusals.fetch_add(1, Ordering::Relaxed);
        RateLimitError::TooManyKeys {
            max_keys: self.max_keys,
        }
    }

    /// Room for a new key in `cells[index]`'s shard, locked as `shard`: a
    /// reservation against the bound, sweeping this shard and then (with
    /// its lock released, once per call: `swept_others`) the others for
    /// it. `Ok` gives the lock back (what its sweep took out is in
    /// `evicted`, to drop once it is released); `Err(None)`: the lock was
    /// released and a sweep elsewhere made room, look again; `Err(Some)`:
    /// refused for the bound (counted).
    #[inline]
    fn room_in<'a, S: Slot>(
        &self,
        cells: &'a [Cell<K, S, T>],
        index: usize,
        shard: MutexGuard<'a, Shard<K, S, T>>,
        now: u64,
        evicted: &mut Evicted<K, S, T>,
        swept_others: &mut bool,
    ) -> Result<MutexGuard<'a, Shard<K, S, T>>, Option<RateLimitError>> {
        if self.reserve() {
            return Ok(shard);
        }
        self.room_or_refuse(cells, index, shard, now, evicted, swept_others)
    }

    /// [`room_in`](Self::room_in) when the bound is reached.
    #[cold]
    #[inline(never)]
    fn room_or_refuse<'a, S: Slot>(
        &self,
        cells: &'a [Cell<K, S, T>],
        index: usize,
        mut shard: MutexGuard<'a, Shard<K, S, T>>,
        now: u64,
        evicted: &mut Evicted<K, S, T>,
        swept_others: &mut bool,
    ) -> Result<MutexGuard<'a, Shard<K, S, T>>, Option<RateLimitError>> {
        let cell = &cells[index];
        if self.room(cell, &mut shard, now, evicted) {
            return Ok(shard);
        }
        drop(shard);
        std::mem::take(evicted).contain();
        if !*swept_others {
            *swept_others = true;
            if self.sweep_others(cells, index, now) > 0 {
                return Err(None);
            }
        }
        Err(Some(self.refused()))
    }

    /// A check of `n` calls for the key in `key` (hashed to `hash`): what
    /// [`try_acquire_n`](KeyedRateLimiter::try_acquire_n) does, and an
    /// acquire's first poll (`WAIT`), which returns `None` instead of
    /// refusing when it must wait on the key's full limiter — the compact
    /// check refused, or the key is promoted and in use (by waiters, whom
    /// it must not pass).
    ///
    /// A new key granted is moved out of `key` into the map; whatever is
    /// left there is the caller's to drop, once this has returned with no
    /// lock held (explicitly, never as an argument: a panic in an
    /// argument's destructor leaks the return value, rust-lang/rust#47949).
    #[inline]
    fn check_in<S: Slot, const WAIT: bool>(
        &self,
        cells: &[Cell<K, S, T>],
        hash: u64,
        key: &mut Option<K>,
        n: u64,
    ) -> Option<Result<(), RateLimitError>>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        let index = shard_of(hash);
        let cell = &cells[index];
        let mut swept_others = false;
        loop {
            // The clock (user code) is read before locking.
            let raw = self.now_raw();
            let mut shard = cell.lock();
            let now = shard.hold(raw);
            // Every quota allows one call at once: only more need the check.
            if n > 1 && n > shard.quota.max_at_once() as u64 {
                let error = exceeds(shard.quota.max_at_once() as u64, n);
                drop(shard);
                return Some(Err(error));
            }
            let shard_ref = &mut *shard;
            let wanted = key.as_ref().expect("the key is given until it is stored");
            if let Some(entry) = shard_ref
                .keys
                .find_mut(hash, |e| e.hash & !FLAGS == hash && e.key == *wanted)
            {
                entry.hash |= USED;
                if entry.hash & PROMOTED == 0 {
                    // The common case: a compact key, checked in place.
                    let outcome = entry.slot.check(&shard_ref.params, now, n);
                    drop(shard);
                    return match outcome {
                        Ok(()) => Some(Ok(())),
                        Err(_) if WAIT => None,
                        Err(at) => Some(Err(limited(now, at))),
                    };
                }
                let id = entry.slot.id();
                let params = shard_ref.params;
                let shared = &shard_ref.full[&id];
                let seed = unused(shared).then(|| shared.take_seed()).flatten();
                let Some((seed, used)) = seed else {
                    // In use: its limiter decides (never passing a waiter),
                    // not before the time read for the key.
                    if WAIT {
                        return None;
                    }
                    let shared = Arc::clone(shared);
                    drop(shard);
                    shared.hold(now);
                    return Some(shared.try_acquire(n));
                };
                // Nobody uses the full limiter any more: back to the
                // compact form, then checked as such — not before the
                // limiter's last grant (the clock was read before locking;
                // another thread may have read it later, granted and let go
                // meanwhile).
                entry.slot = S::from_seed(seed, &params);
                entry.hash &= !PROMOTED;
                shard_ref.last = shard_ref.last.max(used);
                let now = shard_ref.last;
                let outcome = entry.slot.check(&params, now, n);
                let demoted = shard_ref.full.remove(&id);
                drop(shard);
                // Its timer (user code) is this key's: a panic dropping it
                // is reported and discarded.
                if let Some(shared) = demoted {
                    unwind::contain(move || drop(shared));
                }
                return match outcome {
                    Ok(()) => Some(Ok(())),
                    Err(_) if WAIT => None,
                    Err(at) => Some(Err(limited(now, at))),
                };
            }
            // A new key: a fresh limiter grants any `n` it allows at once.
            let params = shard.params;
            let mut slot = S::fresh();
            if let Err(at) = slot.check(&params, now, n) {
                drop(shard);
                return if WAIT {
                    None
                } else {
                    Some(Err(limited(now, at)))
                };
            }
            let mut evicted = Evicted::default();
            let mut shard =
                match self.room_in(cells, index, shard, now, &mut evicted, &mut swept_others) {
                    Ok(shard) => shard,
                    Err(None) => continue,
                    Err(Some(error)) => return Some(Err(error)),
                };
            cell.idle_by(slot.idle_hint(&params));
            shard.ops += 1;
            let key = key.take().expect("the key is given until it is stored");
            shard.keys.insert_unique(
                hash,
                Entry {
                    hash: hash | USED,
                    key,
                    slot,
                },
                |e| e.hash & !FLAGS,
            );
            self.auto_sweep(cell, &mut shard, now, &mut evicted);
            drop(shard);
            evicted.contain();
            return Some(Ok(()));
        }
    }

    /// The full limiter of the key in `key` (hashed to `hash`), promoting
    /// the key (or creating it) if needed; an error if `n` never fits or
    /// the key is refused for the bound. A limiter is built (the timer's
    /// `clone`, user code) with no lock held; a quota change meanwhile
    /// makes it build another. A new key is moved out of `key` into the
    /// map, with nothing after that can panic; whatever is left is the
    /// caller's to drop (as for `check_in`).
    fn full_in<S: Slot>(
        &self,
        cells: &[Cell<K, S, T>],
        hash: u64,
        key: &mut Option<K>,
        n: u64,
    ) -> Result<Arc<Shared<T>>, RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        // A limiter built for the key (its timer a clone of the user's) is
        // kept across user code (the clock, the key's `Eq`): if that
        // panics, it is dropped before the panic propagates.
        let (fresh, out) =
            unwind::keeping_mut(None, |fresh| self.full_in_with(cells, hash, key, n, fresh));
        drop(fresh);
        out
    }

    /// [`full_in`](Self::full_in), with the limiter built so far in
    /// `fresh`.
    fn full_in_with<S: Slot>(
        &self,
        cells: &[Cell<K, S, T>],
        hash: u64,
        key: &mut Option<K>,
        n: u64,
        fresh: &mut Option<(Arc<Shared<T>>, u64)>,
    ) -> Result<Arc<Shared<T>>, RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        let index = shard_of(hash);
        let cell = &cells[index];
        let mut swept_others = false;
        // Room reserved for the key against the bound, given back unless
        // the key is inserted (even if the timer's `clone` panics).
        let mut reservation = Reservation {
            keys: (self.max_keys != usize::MAX).then_some(&self.counts.keys),
            held: false,
        };
        loop {
            let raw = self.now_raw();
            let mut shard = cell.lock();
            let now = shard.hold(raw);
            let max = shard.quota.max_at_once() as u64;
            if n > max {
                let error = exceeds(max, n);
                drop(shard);
                drop(fresh.take());
                return Err(error);
            }
            let generation = shard.generation;
            let usable = fresh.as_ref().is_some_and(|(_, g)| *g == generation);
            let shard_ref = &mut *shard;
            let found = shard_ref.keys.find_mut(hash, |e| {
                e.hash & !FLAGS == hash && Some(&e.key) == key.as_ref()
            });
            match found {
                Some(entry) => {
                    entry.hash |= USED;
                    if entry.hash & PROMOTED != 0 {
                        let shared = Arc::clone(&shard_ref.full[&entry.slot.id()]);
                        drop(shard);
                        drop(fresh.take());
                        // The time read for the key is its limiter's too.
                        shared.hold(now);
                        return Ok(shared);
                    }
                    if usable {
                        let (shared, _) = fresh.take().expect("usable");
                        let id = shard_ref.next_id;
                        shard_ref.next_id += 1;
                        let compact = std::mem::replace(&mut entry.slot, S::promoted(id));
                        entry.hash |= PROMOTED;
                        shared.seed(compact.into_seed(now), now);
                        shard_ref.full.insert(id, Arc::clone(&shared));
                        drop(shard);
                        return Ok(shared);
                    }
                }
                None => {
                    // Room first (a refused key costs no limiter), then the
                    // limiter, built with the lock released.
                    let mut evicted = Evicted::default();
                    if !reservation.held {
                        shard = match self.room_in(
                            cells,
                            index,
                            shard,
                            now,
                            &mut evicted,
                            &mut swept_others,
                        ) {
                            Ok(shard) => shard,
                            Err(None) => continue,
                            Err(Some(error)) => {
                                drop(fresh.take());
                                return Err(error);
                            }
                        };
                        reservation.held = true;
                    }
                    if usable {
                        let (shared, _) = fresh.take().expect("usable");
                        // Not before the shard's time (a key evicted at it
                        // may come back here with an older reading).
                        shared.hold(now);
                        let id = shard.next_id;
                        shard.next_id += 1;
                        shard.full.insert(id, Arc::clone(&shared));
                        shard.ops += 1;
                        let key = key.take().expect("the key is given until it is stored");
                        shard.keys.insert_unique(
                            hash,
                            Entry {
                                hash: hash | USED | PROMOTED,
                                key,
                                slot: S::promoted(id),
                            },
                            |e| e.hash & !FLAGS,
                        );
                        reservation.held = false;
                        cell.idle_by(now.saturating_add(shard.params.period));
                        self.auto_sweep(cell, &mut shard, now, &mut evicted);
                        drop(shard);
                        evicted.contain();
                        return Ok(shared);
                    }
                    if !evicted.entries.is_empty() || !evicted.limiters.is_empty() {
                        drop(shard);
                        evicted.contain();
                        continue;
                    }
                }
            }
            let quota = shard.quota;
            drop(shard);
            // A limiter built for an older quota is dropped (user code: its
            // timer) and built again.
            drop(fresh.take());
            let shared =
                Shared::with_origin(quota, self.timer().clone(), generation, self.origin());
            *fresh = Some((shared, generation));
        }
    }

    /// A check of `n` calls for `key`, dispatched on the algorithm.
    #[inline]
    fn check(&self, key: K, n: u64) -> Result<(), RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        // The key's `Hash` and `Eq` and the clock are user code: if one
        // panics, the key (unless the map took it) is dropped before that
        // panic propagates, not during its unwind.
        let (key, outcome) = unwind::keeping_mut(Some(key), |key| {
            let Some(k) = key.as_ref() else {
                unreachable!("taken only by the map")
            };
            let hash = self.hasher.hash_one(k) & !FLAGS;
            match &self.table {
                Table::Gcra(cells) => self.check_in::<_, false>(cells, hash, key, n),
                Table::Window(cells) => self.check_in::<_, false>(cells, hash, key, n),
            }
        });
        // With no lock held, and not as an argument (see `check_in`).
        drop(key);
        outcome.unwrap_or_else(|| unreachable!("a check never waits"))
    }

    /// An acquire's first poll for the key in `key` (hashed to `hash`):
    /// the check of a key that is only checked, granted in place if it can
    /// be (`Ok(None)`: the key stays compact); else the key's full limiter
    /// to wait on, the key promoted (or created) for it. Whatever is left
    /// of `key` is the caller's to drop.
    fn first_poll(
        &self,
        hash: u64,
        key: &mut Option<K>,
        n: u64,
    ) -> Result<Option<Arc<Shared<T>>>, RateLimitError>
    where
        T: Clone + Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        fn run<K: Eq + Hash, S: Slot, T>(
            inner: &Inner<K, T>,
            cells: &[Cell<K, S, T>],
            hash: u64,
            key: &mut Option<K>,
            n: u64,
        ) -> Result<Option<Arc<Shared<T>>>, RateLimitError>
        where
            T: Timer + Clone + Send + Sync + 'static,
            T::Sleep: Send + 'static,
        {
            match inner.check_in::<S, true>(cells, hash, key, n) {
                Some(outcome) => outcome.map(|()| None),
                None => inner.full_in(cells, hash, key, n).map(Some),
            }
        }
        match &self.table {
            Table::Gcra(cells) => run(self, cells, hash, key, n),
            Table::Window(cells) => run(self, cells, hash, key, n),
        }
    }
}

/// Every shard locked at once, in index order: a consistent snapshot.
/// (Counted one shard after the other, a key evicted from a shard already
/// counted to make room for one inserted into a shard not yet counted
/// would be counted twice, past the bound.) No other path holds two shard
/// locks, so this cannot deadlock.
fn lock_all<K, S, T: Timer>(cells: &[Cell<K, S, T>]) -> Vec<MutexGuard<'_, Shard<K, S, T>>> {
    cells.iter().map(Cell::lock).collect()
}

/// The keys tracked, in one consistent snapshot.
fn keys_in<K, S, T: Timer>(cells: &[Cell<K, S, T>]) -> usize {
    lock_all(cells).iter().map(|shard| shard.keys.len()).sum()
}

/// Whether a promoted key's limiter is used by nobody but its shard (whose
/// lock the caller holds: other handles are cloned only under it), so its
/// state may be taken back.
///
/// `Arc::strong_count` reads the count `Relaxed`: seeing the last other
/// handle's (`Release`) drop does not, by itself, make that holder's writes
/// visible — a GCRA grant through the lock-free path swaps the arrival
/// time without the limiter's lock, after the shard's lock was released —
/// so the state read next could be from before that grant, and the grant
/// forgotten. The `Acquire` fence synchronizes with that drop (see
/// `keyed_loom.rs`).
#[inline]
fn unused<T: Timer>(shared: &Arc<Shared<T>>) -> bool {
    let unused = Arc::strong_count(shared) == 1;
    if unused {
        fence(Ordering::Acquire);
    }
    unused
}

#[cold]
fn limited(now: u64, at: u64) -> RateLimitError {
    RateLimitError::RateLimited {
        wait: match at {
            u64::MAX => std::time::Duration::MAX,
            at => std::time::Duration::from_nanos(at.saturating_sub(now)),
        },
    }
}

#[cold]
fn exceeds(max: u64, n: u64) -> RateLimitError {
    RateLimitError::ExceedsQuota {
        requested: usize::try_from(n).unwrap_or(usize::MAX),
        max: usize::try_from(max).unwrap_or(usize::MAX),
    }
}

impl<K, T: Timer> fmt::Debug for KeyedRateLimiter<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Read, then write with the locks released (the writer is user
        // code).
        let quota = self
            .inner
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let len = match &self.inner.table {
            Table::Gcra(cells) => keys_in(cells),
            Table::Window(cells) => keys_in(cells),
        };
        let mut f = f.debug_struct("KeyedRateLimiter");
        f.field("quota", &quota).field("keys", &len);
        if self.inner.max_keys != usize::MAX {
            f.field("max_keys", &self.inner.max_keys);
        }
        f.finish_non_exhaustive()
    }
}

/// What [`KeyedRateLimiter::stats`] saw.
///
/// # Examples
///
/// ```
/// use awaitkit::KeyedRateLimiter;
/// use std::time::Duration;
/// let limiter = KeyedRateLimiter::<u32>::new(3, Duration::from_secs(1));
/// assert_eq!(limiter.stats().keys, 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedStats {
    /// Keys tracked (idle ones included until a sweep).
    pub keys: usize,
    /// Keys with acquisitions waiting.
    pub waiting_keys: usize,
    /// The bound, if any ([`KeyedRateLimiter::with_max_keys`]).
    pub max_keys: Option<usize>,
    /// Idle keys evicted so far.
    pub evictions: u64,
    /// New keys refused so far because the limiter was full
    /// ([`RateLimitError::TooManyKeys`]).
    pub refusals: u64,
}

/// An acquisition of a key: not polled yet, waiting on the key's full
/// limiter, or settled (granted at its first poll, refused for the bound,
/// more than the quota, or zero calls).
enum Pending<K, T: Timer> {
    /// Nothing taken, reserved or stored yet: the key and a handle to the
    /// map, for the first poll.
    Unpolled {
        /// Always `Some` (taken only by the drop).
        inner: Option<Arc<Inner<K, T>>>,
        /// Always `Some` (taken only as the map stores it, when the first
        /// poll settles or waits).
        key: Option<K>,
        hash: u64,
        n: usize,
    },
    Waiting(Acquisition<T, Arc<Shared<T>>>),
    /// The outcome, until it is returned.
    Settled(Option<Result<(), RateLimitError>>),
}

impl<K: Eq + Hash, T> Pending<K, T>
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    /// An acquisition of `n` calls for `key` from `inner`: the key hashed
    /// (user code: a panic propagates, nothing else done), nothing more.
    fn new(inner: &Arc<Inner<K, T>>, key: K, n: usize) -> Self {
        if n == 0 {
            drop(key);
            return Pending::Settled(Some(Ok(())));
        }
        // The key's `Hash` is user code: if it panics, the key is dropped
        // before that panic propagates.
        let (key, hash) = unwind::keeping(key, |key| inner.hasher.hash_one(key) & !FLAGS);
        Pending::Unpolled {
            inner: Some(Arc::clone(inner)),
            key: Some(key),
            hash,
            n,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RateLimitError>> {
        if let Pending::Unpolled { .. } = self {
            self.first_poll();
        }
        match self {
            Pending::Waiting(acquisition) => acquisition.poll(cx),
            Pending::Settled(outcome) => Poll::Ready(
                outcome
                    .take()
                    .expect("a rate limiter acquire was polled after it completed"),
            ),
            Pending::Unpolled { .. } => unreachable!("the first poll settles or waits"),
        }
    }

    /// The check at the first poll: granted at once, the key stays in its
    /// compact form; otherwise the key is promoted and the acquisition
    /// waits on its full limiter, behind the key's waiters. If it panics
    /// (the key's `Eq`, a timer), nothing was taken or stored and the
    /// acquisition is still unpolled: the next poll tries again.
    fn first_poll(&mut self) {
        let Pending::Unpolled {
            inner,
            key,
            hash,
            n,
        } = self
        else {
            return;
        };
        let Some(inner) = inner.as_ref() else {
            unreachable!("taken only by the drop");
        };
        let next = match inner.first_poll(*hash, key, *n as u64) {
            Ok(None) => Pending::Settled(Some(Ok(()))),
            Ok(Some(shared)) => Pending::Waiting(Acquisition::new(shared, *n)),
            Err(error) => Pending::Settled(Some(Err(error))),
        };
        // The outcome is kept first: if the key's `Drop` panics (or, the
        // limiter being gone, the map's), the next poll returns it.
        drop(std::mem::replace(self, next));
    }
}

impl<K, T: Timer> Drop for Pending<K, T> {
    /// Not polled yet: the key, then the limiter's handle (the last one
    /// drops the limiter's keys), each on its own.
    fn drop(&mut self) {
        if let Pending::Unpolled { inner, key, .. } = self {
            let mut panics = Panics::default();
            panics.drop_all(key.take());
            panics.drop_all(inner.take());
            panics.resume();
        }
    }
}

impl<K, T: Timer> Pending<K, T> {
    fn is_terminated(&self) -> bool {
        match self {
            Pending::Unpolled { .. } => false,
            Pending::Waiting(acquisition) => acquisition.is_terminated(),
            Pending::Settled(outcome) => outcome.is_none(),
        }
    }
}

impl<K, T: Timer> fmt::Debug for Pending<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::Unpolled { n, .. } => f.debug_struct("Unpolled").field("calls", n).finish(),
            Pending::Waiting(acquisition) => acquisition.fmt(f),
            Pending::Settled(outcome) => f.debug_tuple("Settled").field(outcome).finish(),
        }
    }
}

/// The future of [`KeyedRateLimiter::acquire`]: one call's grant for a key.
///
/// It holds the key and a handle to the limiter (no borrow of it: the
/// future may outlive it, and the limiter's keys are dropped when the last
/// of the limiter and its futures is) and takes nothing before its first
/// poll. Its
/// first poll checks the key as [`try_acquire`](KeyedRateLimiter::try_acquire)
/// would, with the key's waiters first: granted at once, the key stays in
/// its compact form; otherwise the key is promoted to a full limiter and
/// the future waits on it, in FIFO order among the key's waiters.
///
/// It is `Unpin` whatever `K` is, and `Send` and `Sync` when the limiter
/// and `K` are.
///
/// # Errors
///
/// [`RateLimitError::TooManyKeys`] if a bounded limiter refused the key (at
/// the first poll).
///
/// # Cancel safety
///
/// As for [`RateAcquire`](crate::RateAcquire). Dropping it before its first
/// poll changes nothing in the limiter.
///
/// # Panics
///
/// Polling after completion panics; a key's `Eq` or `Drop` that panics
/// propagates out of the first poll (see
/// [`KeyedRateLimiter`](KeyedRateLimiter#panics)); other panics as for
/// [`RateAcquire`](crate::RateAcquire).
///
/// # Examples
///
/// ```
/// use awaitkit::{KeyedAcquire, KeyedRateLimiter};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = KeyedRateLimiter::new(1, Duration::from_secs(1));
/// let acquire: KeyedAcquire<&str> = limiter.acquire("k");
/// assert_eq!(acquire.await, Ok(()));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct KeyedAcquire<K, T: Timer = DefaultTimer> {
    inner: Pending<K, T>,
}

/// The key is never pinned (the future only moves it into the map).
impl<K, T: Timer> Unpin for KeyedAcquire<K, T> {}

impl<K: Eq + Hash, T> Future for KeyedAcquire<K, T>
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    type Output = Result<(), RateLimitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll(cx)
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<K: Eq + Hash, T> futures_core::FusedFuture for KeyedAcquire<K, T>
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<K, T: Timer> fmt::Debug for KeyedAcquire<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedAcquire").field(&self.inner).finish()
    }
}

/// The future of [`KeyedRateLimiter::acquire_n`]: `n` calls' grants for a
/// key (taken at its first poll as for [`KeyedAcquire`]).
///
/// It is `Unpin` whatever `K` is, and `Send` and `Sync` when the limiter
/// and `K` are.
///
/// # Errors
///
/// [`RateLimitError::ExceedsQuota`] if `n` is more than the quota grants at
/// once; [`RateLimitError::TooManyKeys`] if a bounded limiter refused the
/// key (both at the first poll).
///
/// # Cancel safety
///
/// As for [`RateAcquire`](crate::RateAcquire). Dropping it before its first
/// poll changes nothing in the limiter.
///
/// # Panics
///
/// As for [`KeyedAcquire`].
///
/// # Examples
///
/// ```
/// use awaitkit::{KeyedAcquireN, KeyedRateLimiter};
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let limiter = KeyedRateLimiter::new(2, Duration::from_secs(1));
/// let acquire: KeyedAcquireN<&str> = limiter.acquire_n("k", 2);
/// assert_eq!(acquire.await, Ok(()));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct KeyedAcquireN<K, T: Timer = DefaultTimer> {
    inner: Pending<K, T>,
}

/// The key is never pinned (the future only moves it into the map).
impl<K, T: Timer> Unpin for KeyedAcquireN<K, T> {}

impl<K: Eq + Hash, T> Future for KeyedAcquireN<K, T>
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    type Output = Result<(), RateLimitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll(cx)
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<K: Eq + Hash, T> futures_core::FusedFuture for KeyedAcquireN<K, T>
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<K, T: Timer> fmt::Debug for KeyedAcquireN<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedAcquireN").field(&self.inner).finish()
    }
}
