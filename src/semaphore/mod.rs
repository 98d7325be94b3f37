//! `Semaphore`: fair (strict FIFO), poll-based and cancel-safe, on any
//! executor — Python's `asyncio.Semaphore`, `async with sem:`.
//!
//! # Design
//!
//! One atomic word holds the available permits and two flags:
//!
//! * `CLOSED`: `close` was called.
//! * `SLOW`: someone is queued (or a shrink still owes permits). While it is
//!   set, no permit is taken without the queue's lock and every release goes
//!   through the lock, so permits are handed to the queue's head in order —
//!   no barging — and the available count in the word stays zero.
//!
//! Without `SLOW`, acquire and release are one compare-and-swap each. The
//! queue is a slab of waiter nodes linked in FIFO order (indices, no unsafe),
//! each with a ticket in arrival order. Permits are assigned to the head as
//! they come back (partially for a large `acquire_many`); a waiter that is
//! dropped returns what it was assigned.
//!
//! Grants happen in ticket order, so one atomic, `granted_below`, tells
//! every waiter whether it was granted: a granted waiter completes without
//! taking the lock, and its node is freed at the grant (a reused slot carries
//! a newer ticket, so an owner never mistakes it for its own). A close or a
//! capacity failure only marks the node, which its owner frees; while such
//! failed nodes exist (`failed_live`), waiters take the lock to look.
//!
//! Wakers are user code (their `clone`, `wake` and `drop` may panic or call
//! back into this semaphore), so none of them runs under the lock: a waiter
//! clones its new waker before taking the lock (and only when the stored one
//! would not wake its task, `Waker::will_wake`); every grant or failure is
//! settled under the lock and the wakers it collected are woken, and replaced
//! wakers dropped, after the lock is released, by a `WakeList` that wakes
//! them all even when one panics.

#![forbid(unsafe_code)]

#[cfg(all(test, awaitkit_loom))]
mod loom_models;

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Mutex, MutexGuard};
use crate::timeout::{Timeout, timeout};
use crate::wait_queue::WaitQueue;
use crate::wake_list::WakeList;
use futures_core::FusedFuture;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

const CLOSED: usize = 1;
const SLOW: usize = 2;
const SHIFT: u32 = 2;

/// A counting semaphore: at most `capacity` permits are held at once, and
/// waiters get them in strict FIFO order — Python's `asyncio.Semaphore`
/// (`async with sem:`), tokio's `Semaphore`, for any executor.
///
/// * **Fair**: while anyone waits, [`try_acquire`](Semaphore::try_acquire)
///   fails and later callers queue behind — also behind a large
///   [`acquire_many`](Semaphore::acquire_many) that is collecting its
///   permits.
/// * **Cancel-safe**: dropping a waiting acquire returns whatever it had been
///   assigned and wakes the next waiter. Two acquires of one task wait
///   independently.
/// * **Poll-based**: every acquire is a named future, and
///   [`PollSemaphore`] serves hand-written `poll` functions.
/// * **Resizable** at run time ([`set_capacity`](Semaphore::set_capacity)),
///   closable ([`close`](Semaphore::close)), observable
///   ([`stats`](Semaphore::stats)).
///
/// # Wakers that panic
///
/// Wakers are user code, and the semaphore never runs them while its lock is
/// held: a waker that calls back into the same semaphore from `clone`,
/// `wake` or `drop` works. If a waker panics:
///
/// * The semaphore stays usable and every permit stays accounted for: the
///   grants (or failures) are all settled before any waker runs.
/// * Every waiter granted or failed by the same call is still woken, in
///   order; a waker that panicked is not woken again, but its waiter holds
///   its permits and completes on its next poll (or returns them when
///   dropped).
/// * The first panic propagates from the call that woke: the drop of a
///   permit, [`add_permits`](Semaphore::add_permits),
///   [`set_capacity`](Semaphore::set_capacity), [`close`](Semaphore::close),
///   [`forget`](SemaphorePermit::forget), or the drop of a waiting acquire
///   that handed its permits on (later panics of that call are discarded).
///   If that call already runs during an unwind (a permit dropped by a
///   panicking task), the waker's panic is discarded instead of aborting.
/// * A panic while an acquire is polled — cloning the new waker, or
///   dropping the one it replaces — comes out of that `poll`; the acquire
///   keeps its place in the queue (with the old waker if the clone failed,
///   with the new one if the drop did), or is not queued yet on a first
///   poll.
///
/// # Examples
///
/// ```
/// use awaitkit::Semaphore;
/// # futures::executor::block_on(async {
/// let sem = Semaphore::new(3);
/// let permit = sem.acquire().await.unwrap(); // async with sem:
/// assert_eq!(sem.available_permits(), 2);
/// drop(permit);
/// assert_eq!(sem.available_permits(), 3);
///
/// // At most 3 of 10 calls at a time.
/// let calls = (0..10).map(|i| sem.limit(async move { i * 2 }));
/// let out = awaitkit::gather(calls).await;
/// assert_eq!(out[9], Ok(18));
/// # });
/// ```
pub struct Semaphore {
    state: AtomicUsize,
    /// Every waiter with a ticket below this was granted (its node already
    /// freed), unless it failed: a granted waiter sees its permits without
    /// taking the lock. Written under the lock.
    granted_below: AtomicU64,
    /// Failed waiters (closed, too large) whose owner has not looked yet:
    /// while any exist, `granted_below` alone cannot tell success.
    failed_live: AtomicUsize,
    queue: Mutex<Queue>,
}

/// The waiter queue and the counts that only change under its lock.
struct Queue {
    /// The waiters, in arrival (ticket) order.
    waiters: WaitQueue<Node>,
    /// Permits in existence: available + held + assigned to waiters.
    capacity: usize,
    /// Permits still to retire after a shrink (taken from releases first).
    debt: usize,
}

#[derive(Debug)]
struct Node {
    needed: usize,
    assigned: usize,
    waker: Option<Waker>,
    state: NodeState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Queued,
    Closed,
    TooLarge { capacity: usize },
    Vacant,
}

/// Why an acquire failed: the semaphore was closed, or the request is larger
/// than its capacity (it could never be granted).
///
/// # Examples
///
/// ```
/// use awaitkit::Semaphore;
/// # futures::executor::block_on(async {
/// let sem = Semaphore::new(2);
/// let err = sem.acquire_many(3).await.unwrap_err();
/// assert!(err.exceeds_capacity() && !err.is_closed());
/// sem.close();
/// assert!(sem.acquire().await.unwrap_err().is_closed());
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcquireError {
    kind: ErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ErrorKind {
    Closed,
    TooLarge { requested: usize, capacity: usize },
}

impl AcquireError {
    const CLOSED: AcquireError = AcquireError {
        kind: ErrorKind::Closed,
    };

    fn too_large(requested: usize, capacity: usize) -> AcquireError {
        AcquireError {
            kind: ErrorKind::TooLarge {
                requested,
                capacity,
            },
        }
    }

    /// The semaphore was closed.
    ///
    /// # Examples
    ///
    /// See [`AcquireError`].
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }

    /// More permits were asked for than the semaphore's capacity.
    ///
    /// # Examples
    ///
    /// See [`AcquireError`].
    pub fn exceeds_capacity(&self) -> bool {
        matches!(self.kind, ErrorKind::TooLarge { .. })
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Closed => f.write_str("semaphore closed"),
            ErrorKind::TooLarge {
                requested,
                capacity,
            } => write!(
                f,
                "asked for {requested} permits from a semaphore of capacity {capacity}"
            ),
        }
    }
}

impl std::error::Error for AcquireError {}

/// Why a `try_acquire*` failed.
///
/// # Examples
///
/// ```
/// use awaitkit::{Semaphore, TryAcquireError};
/// let sem = Semaphore::new(1);
/// let _held = sem.try_acquire().unwrap();
/// assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
/// sem.close();
/// assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::Closed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TryAcquireError {
    /// The semaphore was closed.
    Closed,
    /// Not enough permits are available now, someone is already waiting
    /// (strict FIFO: no barging), or more were asked for than the capacity.
    NoPermits,
}

impl fmt::Display for TryAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryAcquireError::Closed => "semaphore closed",
            TryAcquireError::NoPermits => "no permits available",
        })
    }
}

impl std::error::Error for TryAcquireError {}

/// A snapshot of a [`Semaphore`]'s counts.
///
/// # Examples
///
/// ```
/// let sem = awaitkit::Semaphore::new(4);
/// let _p = sem.try_acquire_many(3).unwrap();
/// let stats = sem.stats();
/// assert_eq!((stats.capacity, stats.available, stats.in_use, stats.waiters), (4, 1, 3, 0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SemaphoreStats {
    /// Permits in existence (changed by `add_permits`, `forget` and
    /// `set_capacity`).
    pub capacity: usize,
    /// Permits free to take now.
    pub available: usize,
    /// Permits held or assigned to waiters (after a shrink this can exceed
    /// the capacity until enough come back).
    pub in_use: usize,
    /// Acquires waiting in the queue.
    pub waiters: usize,
}

impl Semaphore {
    /// The most permits a semaphore can hold: `usize::MAX >> 3`.
    pub const MAX_PERMITS: usize = usize::MAX >> 3;

    /// A semaphore with `permits` permits.
    ///
    /// # Panics
    ///
    /// If `permits` exceeds [`MAX_PERMITS`](Semaphore::MAX_PERMITS).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(awaitkit::Semaphore::new(5).available_permits(), 5);
    /// ```
    #[track_caller]
    pub fn new(permits: usize) -> Semaphore {
        assert!(
            permits <= Self::MAX_PERMITS,
            "a semaphore holds at most {} permits, not {permits}",
            Self::MAX_PERMITS
        );
        Semaphore {
            state: AtomicUsize::new(permits << SHIFT),
            granted_below: AtomicU64::new(0),
            failed_live: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                waiters: WaitQueue::new(),
                capacity: permits,
                debt: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every update under the lock leaves the queue consistent before it
        // can panic (only the allocation of a node can), so poisoning is
        // ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Permits free to take right now (0 while anyone waits).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(2);
    /// let _p = sem.try_acquire().unwrap();
    /// assert_eq!(sem.available_permits(), 1);
    /// ```
    pub fn available_permits(&self) -> usize {
        self.state.load(Ordering::Acquire) >> SHIFT
    }

    /// Whether [`close`](Semaphore::close) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(1);
    /// sem.close();
    /// assert!(sem.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// The counts of this semaphore (taken under its lock, so they are
    /// consistent with each other).
    ///
    /// # Examples
    ///
    /// See [`SemaphoreStats`].
    pub fn stats(&self) -> SemaphoreStats {
        let q = self.lock();
        let available = self.available_permits();
        SemaphoreStats {
            capacity: q.capacity,
            available,
            in_use: q.capacity + q.debt - available,
            waiters: q.waiters.len(),
        }
    }

    /// Takes one permit now, or fails.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoPermits`] when none is free **or someone is
    /// waiting** (no barging); [`TryAcquireError::Closed`] after `close`.
    ///
    /// # Examples
    ///
    /// See [`TryAcquireError`].
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits now, or fails. `n = 0` always succeeds (unless
    /// closed).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Semaphore::try_acquire); also `NoPermits` when
    /// `n` exceeds the capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(3);
    /// let p = sem.try_acquire_many(2).unwrap();
    /// assert_eq!(p.num_permits(), 2);
    /// assert!(sem.try_acquire_many(2).is_err());
    /// ```
    pub fn try_acquire_many(&self, n: usize) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        self.try_take(n)?;
        Ok(SemaphorePermit {
            sem: self,
            permits: n,
        })
    }

    /// [`try_acquire`](Semaphore::try_acquire) for an `Arc<Semaphore>`,
    /// giving a `'static` permit.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Semaphore::try_acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let sem = Arc::new(awaitkit::Semaphore::new(1));
    /// let permit: awaitkit::OwnedSemaphorePermit = sem.clone().try_acquire_owned().unwrap();
    /// assert_eq!(permit.num_permits(), 1);
    /// ```
    pub fn try_acquire_owned(self: Arc<Self>) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        self.try_acquire_many_owned(1)
    }

    /// [`try_acquire_many`](Semaphore::try_acquire_many) for an
    /// `Arc<Semaphore>`.
    ///
    /// # Errors
    ///
    /// As [`try_acquire_many`](Semaphore::try_acquire_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let sem = Arc::new(awaitkit::Semaphore::new(4));
    /// assert_eq!(sem.clone().try_acquire_many_owned(4).unwrap().num_permits(), 4);
    /// ```
    pub fn try_acquire_many_owned(
        self: Arc<Self>,
        n: usize,
    ) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        self.try_take(n)?;
        Ok(OwnedSemaphorePermit {
            sem: self,
            permits: n,
        })
    }

    #[inline]
    fn try_take(&self, n: usize) -> Result<(), TryAcquireError> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & CLOSED != 0 {
                return Err(TryAcquireError::Closed);
            }
            if n == 0 {
                return Ok(());
            }
            if s & SLOW != 0 || (s >> SHIFT) < n {
                return Err(TryAcquireError::NoPermits);
            }
            match self.state.compare_exchange_weak(
                s,
                s - (n << SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => s = actual,
            }
        }
    }

    /// Waits for one permit, in FIFO order.
    ///
    /// # Cancel safety
    ///
    /// Dropping the [`Acquire`] while it waits gives back any permits it
    /// was assigned and wakes the next waiter: nothing is lost.
    ///
    /// # Errors
    ///
    /// [`AcquireError`] when the semaphore is closed (before or while
    /// waiting), or at once when its capacity is 0 (see
    /// [`acquire_many`](Semaphore::acquire_many)).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(1);
    /// let permit = sem.acquire().await.unwrap();
    /// assert_eq!(permit.num_permits(), 1);
    /// # });
    /// ```
    pub fn acquire(&self) -> Acquire<'_> {
        self.acquire_many(1)
    }

    /// Waits for `n` permits at once, in FIFO order: while it collects them,
    /// later (smaller) requests wait behind it. `n = 0` is ready at once
    /// (even while others wait), unless the semaphore is closed.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Semaphore::acquire): permits assigned so far go back.
    ///
    /// # Errors
    ///
    /// [`AcquireError`] when the semaphore is closed, or at once when `n`
    /// exceeds the capacity (it could never be granted; also if a shrink
    /// makes it so while waiting). So a semaphore of capacity 0 fails every
    /// acquire until [`add_permits`](Semaphore::add_permits) gives it some.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(5);
    /// let three = sem.acquire_many(3).await.unwrap();
    /// assert_eq!(sem.available_permits(), 2);
    /// # drop(three);
    /// # });
    /// ```
    pub fn acquire_many(&self, n: usize) -> Acquire<'_> {
        Acquire {
            sem: self,
            waiter: Waiter::new(n),
        }
    }

    /// [`acquire`](Semaphore::acquire) through an `Arc`, giving a `'static`
    /// permit (to move into a spawned task).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Semaphore::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Semaphore::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let sem = Arc::new(awaitkit::Semaphore::new(1));
    /// let permit = sem.clone().acquire_owned().await.unwrap();
    /// std::thread::spawn(move || drop(permit)).join().unwrap();
    /// assert_eq!(sem.available_permits(), 1);
    /// # });
    /// ```
    pub fn acquire_owned(self: Arc<Self>) -> AcquireOwned {
        self.acquire_many_owned(1)
    }

    /// [`acquire_many`](Semaphore::acquire_many) through an `Arc`.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Semaphore::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire_many`](Semaphore::acquire_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// # futures::executor::block_on(async {
    /// let sem = Arc::new(awaitkit::Semaphore::new(2));
    /// assert_eq!(sem.clone().acquire_many_owned(2).await.unwrap().num_permits(), 2);
    /// # });
    /// ```
    pub fn acquire_many_owned(self: Arc<Self>, n: usize) -> AcquireOwned {
        AcquireOwned {
            sem: Some(self),
            waiter: Waiter::new(n),
        }
    }

    /// [`acquire`](Semaphore::acquire) with a time limit (on the default
    /// timer): `Err(Elapsed)` if no permit came in time, and the waiter is
    /// removed from the queue.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Semaphore::acquire).
    ///
    /// # Errors
    ///
    /// `Err(Elapsed)` on time out; `Ok(Err(AcquireError))` when closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(1);
    /// let _held = sem.acquire().await.unwrap();
    /// let late = sem.acquire_timeout(Duration::from_millis(5)).await;
    /// assert!(late.is_err());
    /// assert_eq!(sem.stats().waiters, 0); // the timed-out waiter left the queue
    ///
    /// // On another timer, as everywhere: `with_timer`.
    /// let late = sem.acquire_timeout(Duration::from_millis(5)).with_timer(awaitkit::time::FuturesTimer);
    /// assert!(late.await.is_err());
    /// # });
    /// ```
    pub fn acquire_timeout(&self, limit: Duration) -> Timeout<Acquire<'_>> {
        timeout(limit, self.acquire())
    }

    /// Runs `future` while holding one permit — Python's
    /// `async with sem: await future`. The permit is released when the
    /// future finishes or is dropped.
    ///
    /// It resolves to `Result<F::Output, AcquireError>` because a semaphore
    /// can be [closed](Semaphore::close), and then no permit ever comes.
    /// [`RateLimiter::limit`](crate::RateLimiter::limit), its rate-limiting
    /// twin, resolves to the future's output itself: a rate limiter cannot
    /// be closed, and one call always fits its quota.
    ///
    /// # Cancel safety
    ///
    /// Dropping the [`Limit`] drops the future and then releases (or stops
    /// waiting for) the permit: the future's destructor runs while the
    /// permit is still held.
    ///
    /// # Errors
    ///
    /// `Err(AcquireError)` (without running `future`) when the semaphore is
    /// closed.
    ///
    /// # Panics
    ///
    /// Polling after completion panics; a panic of `future` propagates (the
    /// permit is released when the [`Limit`] is dropped).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(1);
    /// assert_eq!(sem.limit(async { 7 }).await, Ok(7));
    /// # });
    /// ```
    pub fn limit<F: IntoFuture>(&self, future: F) -> Limit<'_, F::IntoFuture> {
        Limit {
            acquire: Some(self.acquire()),
            permit: None,
            future: future.into_future(),
        }
    }

    /// Adds `n` permits (the capacity grows by `n`), waking waiters they
    /// satisfy.
    ///
    /// # Panics
    ///
    /// If the capacity would exceed [`MAX_PERMITS`](Semaphore::MAX_PERMITS);
    /// nothing changes then. A waiter's waker that panics when woken: the
    /// permits were added and every waiter woken first (see
    /// [wakers that panic](Semaphore#wakers-that-panic)).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(0);
    /// sem.add_permits(2);
    /// assert_eq!(sem.available_permits(), 2);
    /// ```
    #[track_caller]
    pub fn add_permits(&self, n: usize) {
        // Declared before the guard: on any unwind it wakes after unlocking.
        let mut wake = WakeList::default();
        {
            let mut q = self.lock();
            assert!(
                n <= Self::MAX_PERMITS - q.capacity,
                "adding {n} permits to a semaphore of capacity {} exceeds MAX_PERMITS ({})",
                q.capacity,
                Self::MAX_PERMITS
            );
            q.capacity += n;
            self.release_locked(&mut q, n, &mut wake);
        }
        wake.wake_all();
    }

    /// Takes up to `n` of the permits available now out of circulation for
    /// good — tokio's `forget_permits`: the capacity shrinks by what was
    /// taken, and the count taken is returned. Held permits are never
    /// touched (to retire those as they come back, use
    /// [`set_capacity`](Semaphore::set_capacity)), and neither are permits
    /// a waiter has already collected: free permits go to the first waiter
    /// as they come, so while anyone waits none are available and none are
    /// taken. Works on a closed semaphore too.
    ///
    /// # Panics
    ///
    /// A waiter's waker that panics when woken: the permits were taken and
    /// every waiter woken first (see
    /// [wakers that panic](Semaphore#wakers-that-panic)).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(5);
    /// let held = sem.try_acquire_many(2).unwrap();
    /// assert_eq!(sem.forget_permits(4), 3); // only 3 were free
    /// assert_eq!(sem.available_permits(), 0);
    /// drop(held); // held permits come back as usual
    /// assert_eq!(sem.available_permits(), 2);
    /// assert_eq!(sem.stats().capacity, 2);
    /// ```
    pub fn forget_permits(&self, n: usize) -> usize {
        let mut wake = WakeList::default();
        let mut taken = 0;
        {
            let mut q = self.lock();
            let _ = self
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    taken = (s >> SHIFT).min(n);
                    Some(s - (taken << SHIFT))
                });
            q.capacity -= taken;
            let returned = q.fail_too_large(&mut wake, &self.failed_live);
            self.release_locked(&mut q, returned, &mut wake);
        }
        wake.wake_all();
        taken
    }

    /// Changes the capacity. Growing adds permits at once; shrinking takes
    /// free permits at once and retires the rest as held permits come back —
    /// permits already held are never revoked. Waiters that ask for more
    /// than the new capacity fail with [`AcquireError`].
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`MAX_PERMITS`](Semaphore::MAX_PERMITS);
    /// nothing changes then. A waiter's waker that panics when woken: the
    /// capacity was changed and every waiter woken first (see
    /// [wakers that panic](Semaphore#wakers-that-panic)).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(4);
    /// let held = sem.try_acquire_many(3).unwrap();
    /// sem.set_capacity(2);
    /// assert_eq!(sem.available_permits(), 0);
    /// drop(held); // one of the three retires... and one more
    /// assert_eq!(sem.stats().capacity, 2);
    /// assert_eq!(sem.available_permits(), 2);
    /// ```
    #[track_caller]
    pub fn set_capacity(&self, capacity: usize) {
        assert!(
            capacity <= Self::MAX_PERMITS,
            "a semaphore holds at most {} permits, not {capacity}",
            Self::MAX_PERMITS
        );
        let mut wake = WakeList::default();
        {
            let mut q = self.lock();
            if capacity >= q.capacity {
                let grow = capacity - q.capacity;
                q.capacity = capacity;
                self.release_locked(&mut q, grow, &mut wake);
            } else {
                let k = q.capacity - capacity;
                self.shrink_locked(&mut q, k, &mut wake);
            }
        }
        wake.wake_all();
    }

    /// The capacity drops by `k`: free permits go at once, the rest become
    /// debt paid by the next releases; waiters that no longer fit fail.
    fn shrink_locked(&self, q: &mut Queue, k: usize, wake: &mut WakeList) {
        q.capacity -= k;
        let mut taken = 0;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                taken = (s >> SHIFT).min(k);
                let mut next = s - (taken << SHIFT);
                if taken < k {
                    next |= SLOW;
                }
                Some(next)
            });
        q.debt += k - taken;
        let returned = q.fail_too_large(wake, &self.failed_live);
        self.release_locked(q, returned, wake);
    }

    /// Closes the semaphore: every waiter fails with [`AcquireError`] and
    /// later acquires fail at once. Held permits stay valid; releasing them
    /// still counts.
    ///
    /// # Panics
    ///
    /// When a waiter's waker panics as it is woken, after the semaphore was
    /// closed and every waiter woken (see
    /// [wakers that panic](Semaphore#wakers-that-panic)).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(1);
    /// let held = sem.acquire().await.unwrap();
    /// sem.close();
    /// drop(held);
    /// assert_eq!(sem.available_permits(), 1);
    /// assert!(sem.acquire().await.is_err());
    /// # });
    /// ```
    pub fn close(&self) {
        let mut wake = WakeList::default();
        {
            let mut q = self.lock();
            self.state.fetch_or(CLOSED, Ordering::AcqRel);
            let mut returned = 0;
            while let Some(i) = q.waiters.head() {
                returned += q.waiters[i].assigned;
                q.waiters.unlink(i);
                let node = &mut q.waiters[i];
                node.assigned = 0;
                node.state = NodeState::Closed;
                wake.push(node.waker.take());
                self.failed_live.fetch_add(1, Ordering::AcqRel);
            }
            self.release_locked(&mut q, returned, &mut wake);
        }
        wake.wake_all();
    }

    /// Gives `n` permits back.
    #[inline]
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.state.load(Ordering::Acquire);
        while s & SLOW == 0 {
            match self.state.compare_exchange_weak(
                s,
                s + (n << SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => s = actual,
            }
        }
        self.release_slow(n);
    }

    /// [`Semaphore::release`] while waiters (or a shrink) are pending: under
    /// the lock. Out of line, so the fast path above stays small.
    ///
    /// The usual case, all `n` permits going to the queue's head (completing
    /// its request or bringing it closer), is handled here with at most one
    /// waker to wake; the rest (a shrink owed, permits beyond the head's
    /// need) by [`release_general`](Semaphore::release_general).
    #[inline(never)]
    fn release_slow(&self, n: usize) {
        let mut q = self.lock();
        if q.debt == 0 {
            if let Some(i) = q.waiters.head() {
                let node = &mut q.waiters[i];
                let missing = node.needed - node.assigned;
                if n < missing {
                    node.assigned += n;
                    return;
                }
                if n == missing {
                    let granted = self.grant_head(&mut q, i);
                    drop(q);
                    if let Some(waker) = granted {
                        wake_granted(waker);
                    }
                    return;
                }
            }
        }
        self.release_general(q, n);
    }

    /// The head waiter (node `i`) has all its permits: it leaves the queue,
    /// and its owner learns it from `granted_below` (without the lock); its
    /// node is freed now. Returns its waker, to wake after unlocking.
    #[inline]
    fn grant_head(&self, q: &mut Queue, i: usize) -> Option<Waker> {
        let head = q.waiters.unlink_head();
        debug_assert_eq!(head, Some(i));
        let waker = q.free(i);
        self.granted_below
            .store(q.waiters.first_ticket(), Ordering::Release);
        if q.waiters.is_empty() && q.debt == 0 {
            // Nobody waits and nothing is owed: the fast paths resume.
            self.state.fetch_and(!SLOW, Ordering::AcqRel);
        }
        waker
    }

    /// [`Semaphore::release_slow`]'s general case, with the lock it holds.
    #[inline(never)]
    fn release_general(&self, q: MutexGuard<'_, Queue>, n: usize) {
        // Declared before the guard's new binding: on any unwind it wakes
        // after unlocking.
        let mut wake = WakeList::default();
        {
            let mut q = q;
            self.release_locked(&mut q, n, &mut wake);
        }
        wake.wake_all();
    }

    /// Hands `n` permits out under the lock: the shrink debt first, then the
    /// queue's head in order, then the free count (clearing `SLOW` once
    /// nobody waits and nothing is owed).
    fn release_locked(&self, q: &mut Queue, mut n: usize, wake: &mut WakeList) {
        let paid = n.min(q.debt);
        q.debt -= paid;
        n -= paid;
        while n > 0 {
            let Some(i) = q.waiters.head() else { break };
            let node = &mut q.waiters[i];
            let give = n.min(node.needed - node.assigned);
            node.assigned += give;
            n -= give;
            if node.assigned == node.needed {
                // Granted: its owner learns it from `granted_below`; the node
                // is freed now.
                q.waiters.unlink(i);
                wake.push(q.free(i));
            }
        }
        let below = q.waiters.first_ticket();
        if self.granted_below.load(Ordering::Relaxed) != below {
            self.granted_below.store(below, Ordering::Release);
        }
        let idle = q.waiters.is_empty() && q.debt == 0;
        if n == 0 && (self.state.load(Ordering::Acquire) & SLOW == 0) == idle {
            return; // nothing to add, the flag is already right
        }
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let s = s + (n << SHIFT);
                Some(if idle { s & !SLOW } else { s | SLOW })
            });
    }

    /// Permits leave the semaphore for good (a forgotten permit).
    fn retire(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut wake = WakeList::default();
        {
            let mut q = self.lock();
            // They were held, so no free permit is taken: only the capacity
            // drops, and waiters that no longer fit fail.
            // A forgotten permit first settles what a shrink still owes.
            let paid = n.min(q.debt);
            q.debt -= paid;
            q.capacity -= n - paid;
            let returned = q.fail_too_large(&mut wake, &self.failed_live);
            self.release_locked(&mut q, returned, &mut wake);
        }
        wake.wake_all();
    }
}

/// Wakes the waker of the waiter a release granted, after the lock was
/// released (a [`WakeList`] of one, without its set-up): a panic propagates,
/// unless this thread is already unwinding (a permit dropped by a panicking
/// task), where a second panic would abort the process: then it is
/// discarded.
#[inline]
fn wake_granted(waker: Waker) {
    if std::thread::panicking() {
        crate::unwind::contain(move || waker.wake());
    } else {
        waker.wake();
    }
}

impl Queue {
    /// After the capacity dropped: waiters that can never be granted fail.
    /// Returns the permits they had been assigned.
    fn fail_too_large(&mut self, wake: &mut WakeList, failed_live: &AtomicUsize) -> usize {
        let capacity = self.capacity;
        let too_large: Vec<usize> = self
            .waiters
            .iter()
            .filter(|&i| self.waiters[i].needed > capacity)
            .collect();
        let mut returned = 0;
        for i in too_large {
            self.waiters.unlink(i);
            let node = &mut self.waiters[i];
            returned += node.assigned;
            node.assigned = 0;
            node.state = NodeState::TooLarge { capacity };
            wake.push(node.waker.take());
            failed_live.fetch_add(1, Ordering::AcqRel);
        }
        returned
    }

    /// The state of a waiter's node, or `None` if it was granted (granted
    /// nodes are freed at once, so the slot is vacant or holds a newer
    /// ticket).
    fn owned_state(&self, i: usize, ticket: u64) -> Option<NodeState> {
        let state = self.waiters[i].state;
        (self.waiters.ticket(i) == ticket && state != NodeState::Vacant).then_some(state)
    }

    /// Frees a node (granted, or its owner is done with it). Returns its
    /// waker, to be woken or dropped after the lock is released.
    #[must_use = "a waker is woken or dropped only after the lock is released"]
    fn free(&mut self, i: usize) -> Option<Waker> {
        let node = &mut self.waiters[i];
        node.state = NodeState::Vacant;
        let waker = node.waker.take();
        self.waiters.free(i);
        waker
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Acquire);
        f.debug_struct("Semaphore")
            .field("available", &(s >> SHIFT))
            .field("closed", &(s & CLOSED != 0))
            .field("waiting", &(s & SLOW != 0))
            .finish()
    }
}

// ---------------------------------------------------------------------------
// The waiter: one queue entry, owned by an acquire future
// ---------------------------------------------------------------------------

/// [`Waiter::slot`] before the first poll (and after a cancel).
const UNQUEUED: usize = usize::MAX;
/// [`Waiter::slot`] once the acquire returned its output.
const DONE: usize = usize::MAX - 1;

#[derive(Debug)]
struct Waiter {
    needed: usize,
    ticket: u64,
    /// The waiter's node while it is queued, else [`UNQUEUED`] or [`DONE`]
    /// (slab indices stay below `u32::MAX - 1`, so below both sentinels
    /// even where `usize` is 32 bits). One word instead of an
    /// `Option` and a flag: the acquire futures stay small.
    slot: usize,
}

impl Waiter {
    fn new(needed: usize) -> Waiter {
        Waiter {
            needed,
            ticket: 0,
            slot: UNQUEUED,
        }
    }

    /// Whether the acquire returned its output.
    fn is_done(&self) -> bool {
        self.slot == DONE
    }

    /// Ready once the permits are ours (the caller wraps them in a permit).
    #[inline]
    fn poll(&mut self, sem: &Semaphore, cx: &mut Context<'_>) -> Poll<Result<(), AcquireError>> {
        let out = match self.slot {
            UNQUEUED => self.first_poll(sem, cx),
            DONE => panic!("semaphore acquire polled after completion"),
            // The usual end of a wait, seen without the lock: granted.
            _ if self.ticket < sem.granted_below.load(Ordering::Acquire)
                && sem.failed_live.load(Ordering::Acquire) == 0 =>
            {
                Poll::Ready(Ok(()))
            }
            i => self.poll_queued(sem, i, cx),
        };
        if out.is_ready() {
            self.slot = DONE;
        }
        out
    }

    /// A later poll of a queued waiter that [`Waiter::poll`] did not see
    /// granted without the lock: granted, failed, or still waiting (then the
    /// stored waker is replaced if it would not wake this task).
    #[inline(never)]
    fn poll_queued(
        &mut self,
        sem: &Semaphore,
        i: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), AcquireError>> {
        // A clone of the new waker, made only when the stored one would not
        // wake this task, and outside the lock (a clone is user code: it may
        // panic or call back into this semaphore). Declared before the guard,
        // so every return drops it after unlocking.
        let mut fresh: Option<Waker> = None;
        loop {
            let mut q = sem.lock();
            match q.owned_state(i, self.ticket) {
                None => return Poll::Ready(Ok(())), // granted; its node is gone
                Some(NodeState::Queued) => {
                    let slot = &mut q.waiters[i].waker;
                    if slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        return Poll::Pending;
                    }
                    let Some(waker) = fresh.take() else {
                        drop(q);
                        fresh = Some(cx.waker().clone());
                        continue; // look again: it may have been granted meanwhile
                    };
                    let replaced = slot.replace(waker);
                    drop(q);
                    drop(replaced); // outside the lock: a waker's drop may call back
                    return Poll::Pending;
                }
                Some(failed) => {
                    let stale = q.free(i); // `None`: taken when it failed
                    sem.failed_live.fetch_sub(1, Ordering::AcqRel);
                    drop(q);
                    drop(stale);
                    return Poll::Ready(Err(match failed {
                        NodeState::TooLarge { capacity } => {
                            AcquireError::too_large(self.needed, capacity)
                        }
                        _ => AcquireError::CLOSED,
                    }));
                }
            }
        }
    }

    #[inline]
    fn first_poll(
        &mut self,
        sem: &Semaphore,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), AcquireError>> {
        let n = self.needed;
        // Fast path: nobody waits and enough is free (or `n` is 0). A
        // closed semaphore fails every acquire, of 0 permits too.
        match sem.try_take(n) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(TryAcquireError::Closed) => return Poll::Ready(Err(AcquireError::CLOSED)),
            Err(TryAcquireError::NoPermits) => {}
        }
        self.enqueue(sem, cx)
    }

    /// The first poll of a waiter that found too few free permits (or
    /// others waiting): takes what it can under the lock and queues up. Out
    /// of line, so the fast path above stays small.
    #[inline(never)]
    fn enqueue(&mut self, sem: &Semaphore, cx: &mut Context<'_>) -> Poll<Result<(), AcquireError>> {
        let n = self.needed;
        // Cloned before locking, to keep the critical section short (and
        // declared before the guard, so an early return drops it unlocked).
        let waker = cx.waker().clone();
        let mut q = sem.lock();
        if n > q.capacity {
            return Poll::Ready(Err(AcquireError::too_large(n, q.capacity)));
        }
        let assigned = if !q.waiters.is_empty() {
            // Someone is ahead (so `SLOW` is set and nothing is free): queue
            // up behind them; only `close` can still change the outcome.
            if sem.is_closed() {
                return Poll::Ready(Err(AcquireError::CLOSED));
            }
            0
        } else {
            // Nobody is ahead: take what is free under the lock.
            let mut assigned = 0;
            let mut result = None;
            let _ = sem
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    if s & CLOSED != 0 {
                        result = Some(Err(AcquireError::CLOSED));
                        return None;
                    }
                    let free = s >> SHIFT;
                    if s & SLOW == 0 && free >= n {
                        result = Some(Ok(()));
                        return Some(s - (n << SHIFT));
                    }
                    result = None;
                    // Queue up first in line: everything free goes to us.
                    assigned = free;
                    Some((s - (assigned << SHIFT)) | SLOW)
                });
            if let Some(result) = result {
                return Poll::Ready(result);
            }
            assigned
        };
        let (i, ticket) = q.waiters.push(Node {
            needed: n,
            assigned,
            waker: Some(waker),
            state: NodeState::Queued,
        });
        self.slot = i;
        self.ticket = ticket;
        Poll::Pending
    }

    /// Leaves the queue (a dropped acquire): what was assigned or granted
    /// goes to the next waiters. Inline: a completed or never-polled acquire
    /// (every uncontended one) only checks that it holds no node.
    #[inline]
    fn cancel(&mut self, sem: &Semaphore) {
        let i = self.slot;
        if i < DONE {
            self.slot = UNQUEUED;
            self.cancel_queued(sem, i);
        }
    }

    /// [`Waiter::cancel`] of a queued waiter (node `i`), out of line.
    #[inline(never)]
    fn cancel_queued(&mut self, sem: &Semaphore, i: usize) {
        // Declared before the guard: wakes (and drops this waiter's own
        // waker) only after unlocking, and still wakes the next waiters if
        // that drop panics.
        let mut wake = WakeList::default();
        {
            let mut q = sem.lock();
            let giving_back = match q.owned_state(i, self.ticket) {
                None => self.needed, // granted but never taken
                Some(state) => {
                    let back = if state == NodeState::Queued {
                        q.waiters.unlink(i);
                        q.waiters[i].assigned
                    } else {
                        sem.failed_live.fetch_sub(1, Ordering::AcqRel);
                        0
                    };
                    wake.discard(q.free(i));
                    back
                }
            };
            // Also clears `SLOW` when this was the last waiter.
            sem.release_locked(&mut q, giving_back, &mut wake);
        }
        wake.wake_all();
    }
}

// ---------------------------------------------------------------------------
// Futures and permits
// ---------------------------------------------------------------------------

/// Future for [`Semaphore::acquire`] and [`Semaphore::acquire_many`].
///
/// `Unpin`, `Send` and `Sync`. Polling it after completion panics.
///
/// # Cancel safety
///
/// Dropping it while it waits gives back what it was assigned (or granted
/// but not yet taken) and wakes the next waiter.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let sem = awaitkit::Semaphore::new(1);
/// let acquire: awaitkit::Acquire<'_> = sem.acquire();
/// let permit = acquire.await.unwrap();
/// # drop(permit);
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
#[derive(Debug)]
pub struct Acquire<'a> {
    sem: &'a Semaphore,
    waiter: Waiter,
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<SemaphorePermit<'a>, AcquireError>;

    // Always inlined: a few checks around the two out-of-line slow paths.
    // With a plain `#[inline]`, LLVM kept it out of line inside an `async fn`
    // wrapper (a call and a frame per poll: 30 instructions of 780 per
    // contended acquisition).
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.waiter.poll(this.sem, cx).map_ok(|()| SemaphorePermit {
            sem: this.sem,
            permits: this.waiter.needed,
        })
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl FusedFuture for Acquire<'_> {
    fn is_terminated(&self) -> bool {
        self.waiter.is_done()
    }
}

impl Drop for Acquire<'_> {
    #[inline]
    fn drop(&mut self) {
        self.waiter.cancel(self.sem);
    }
}

/// Future for [`Semaphore::acquire_owned`] and
/// [`Semaphore::acquire_many_owned`].
///
/// `Unpin`, `Send` and `Sync`. Polling it after completion panics.
///
/// # Cancel safety
///
/// As [`Acquire`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// # futures::executor::block_on(async {
/// let sem = Arc::new(awaitkit::Semaphore::new(1));
/// let acquire: awaitkit::AcquireOwned = sem.acquire_owned();
/// assert!(acquire.await.is_ok());
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
#[derive(Debug)]
pub struct AcquireOwned {
    sem: Option<Arc<Semaphore>>,
    waiter: Waiter,
}

impl Future for AcquireOwned {
    type Output = Result<OwnedSemaphorePermit, AcquireError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let sem = this
            .sem
            .as_ref()
            .expect("semaphore acquire polled after completion");
        let out = ready!(this.waiter.poll(sem, cx));
        let sem = this.sem.take().expect("checked above");
        Poll::Ready(out.map(|()| OwnedSemaphorePermit {
            sem,
            permits: this.waiter.needed,
        }))
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl FusedFuture for AcquireOwned {
    fn is_terminated(&self) -> bool {
        self.waiter.is_done()
    }
}

impl Drop for AcquireOwned {
    #[inline]
    fn drop(&mut self) {
        if let Some(sem) = &self.sem {
            self.waiter.cancel(sem);
        }
    }
}

/// Permits borrowed from a [`Semaphore`]; released when dropped.
///
/// Dropping it wakes the waiters the permits go to; if one of their wakers
/// panics, the panic comes out of the drop (see
/// [wakers that panic](Semaphore#wakers-that-panic)).
///
/// # Examples
///
/// ```
/// let sem = awaitkit::Semaphore::new(3);
/// let mut permit = sem.try_acquire_many(3).unwrap();
/// let one = permit.split(1).unwrap();
/// assert_eq!((permit.num_permits(), one.num_permits()), (2, 1));
/// drop(one);
/// assert_eq!(sem.available_permits(), 1);
/// permit.forget(); // these two leave the semaphore for good
/// assert_eq!(sem.stats().capacity, 1);
/// ```
#[must_use = "dropping a permit releases it at once"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
    permits: usize,
}

impl<'a> SemaphorePermit<'a> {
    /// How many permits this holds.
    ///
    /// # Examples
    ///
    /// See [`SemaphorePermit`].
    pub fn num_permits(&self) -> usize {
        self.permits
    }

    /// Drops the permits without releasing them: the semaphore's capacity
    /// shrinks by that many.
    ///
    /// # Panics
    ///
    /// When the waker of a waiter that no longer fits panics as it is woken
    /// (see [wakers that panic](Semaphore#wakers-that-panic)).
    ///
    /// # Examples
    ///
    /// See [`SemaphorePermit`].
    pub fn forget(mut self) {
        let n = std::mem::take(&mut self.permits);
        self.sem.retire(n);
    }

    /// Moves `n` of these permits into a new permit; `None` if this holds
    /// fewer than `n`.
    ///
    /// # Examples
    ///
    /// See [`SemaphorePermit`].
    pub fn split(&mut self, n: usize) -> Option<SemaphorePermit<'a>> {
        if n > self.permits {
            return None;
        }
        self.permits -= n;
        Some(SemaphorePermit {
            sem: self.sem,
            permits: n,
        })
    }

    /// Takes over `other`'s permits.
    ///
    /// # Panics
    ///
    /// If `other` comes from another semaphore.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = awaitkit::Semaphore::new(2);
    /// let mut a = sem.try_acquire().unwrap();
    /// a.merge(sem.try_acquire().unwrap());
    /// assert_eq!(a.num_permits(), 2);
    /// ```
    #[track_caller]
    pub fn merge(&mut self, mut other: SemaphorePermit<'a>) {
        assert!(
            std::ptr::eq(self.sem, other.sem),
            "merging permits of different semaphores"
        );
        self.permits += std::mem::take(&mut other.permits);
    }
}

impl Drop for SemaphorePermit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.sem.release(self.permits);
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

/// Permits of an `Arc<Semaphore>`, `'static`; released when dropped.
///
/// Dropping it wakes the waiters the permits go to; if one of their wakers
/// panics, the panic comes out of the drop (see
/// [wakers that panic](Semaphore#wakers-that-panic)).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// let sem = Arc::new(awaitkit::Semaphore::new(2));
/// let mut permit = sem.clone().try_acquire_many_owned(2).unwrap();
/// let half = permit.split(1).unwrap();
/// assert_eq!(half.num_permits(), 1);
/// permit.merge(half);
/// assert_eq!(permit.num_permits(), 2);
/// assert!(Arc::ptr_eq(permit.semaphore(), &sem));
/// ```
#[must_use = "dropping a permit releases it at once"]
pub struct OwnedSemaphorePermit {
    sem: Arc<Semaphore>,
    permits: usize,
}

impl OwnedSemaphorePermit {
    /// How many permits this holds.
    ///
    /// # Examples
    ///
    /// See [`OwnedSemaphorePermit`].
    pub fn num_permits(&self) -> usize {
        self.permits
    }

    /// The semaphore these permits belong to.
    ///
    /// # Examples
    ///
    /// See [`OwnedSemaphorePermit`].
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.sem
    }

    /// Drops the permits without releasing them: the capacity shrinks.
    ///
    /// # Panics
    ///
    /// As [`SemaphorePermit::forget`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let sem = Arc::new(awaitkit::Semaphore::new(2));
    /// sem.clone().try_acquire_owned().unwrap().forget();
    /// assert_eq!(sem.stats().capacity, 1);
    /// ```
    pub fn forget(mut self) {
        let n = std::mem::take(&mut self.permits);
        self.sem.retire(n);
    }

    /// Moves `n` of these permits into a new permit; `None` if this holds
    /// fewer than `n`.
    ///
    /// # Examples
    ///
    /// See [`OwnedSemaphorePermit`].
    pub fn split(&mut self, n: usize) -> Option<OwnedSemaphorePermit> {
        if n > self.permits {
            return None;
        }
        self.permits -= n;
        Some(OwnedSemaphorePermit {
            sem: self.sem.clone(),
            permits: n,
        })
    }

    /// Takes over `other`'s permits.
    ///
    /// # Panics
    ///
    /// If `other` comes from another semaphore.
    ///
    /// # Examples
    ///
    /// See [`OwnedSemaphorePermit`].
    #[track_caller]
    pub fn merge(&mut self, mut other: OwnedSemaphorePermit) {
        assert!(
            Arc::ptr_eq(&self.sem, &other.sem),
            "merging permits of different semaphores"
        );
        self.permits += std::mem::take(&mut other.permits);
    }
}

impl Drop for OwnedSemaphorePermit {
    #[inline]
    fn drop(&mut self) {
        self.sem.release(self.permits);
    }
}

impl fmt::Debug for OwnedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedSemaphorePermit")
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// Future for [`Semaphore::limit`]: waits for a permit, then runs the
    /// future holding it.
    ///
    /// `Unpin` when the future is.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let sem = awaitkit::Semaphore::new(2);
    /// let job: awaitkit::Limit<'_, _> = sem.limit(async { "done" });
    /// assert_eq!(job.await, Ok("done"));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Limit<'a, F> {
        // Dropped first, then the permit: a waiter woken by its release
        // whose waker panics cannot make the future drop in that unwind.
        #[pin]
        future: F,
        acquire: Option<Acquire<'a>>,
        permit: Option<SemaphorePermit<'a>>,
    }
}

impl<F: Future> Future for Limit<'_, F> {
    type Output = Result<F::Output, AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(acquire) = this.acquire {
            let permit = ready!(Pin::new(acquire).poll(cx));
            *this.acquire = None;
            *this.permit = Some(permit?);
        }
        assert!(this.permit.is_some(), "`Limit` polled after completion");
        let output = ready!(this.future.poll(cx));
        // Released before returning: a woken waiter's panicking waker
        // propagates from here, the output dropped first (not in its
        // unwind).
        let mut panics = crate::unwind::Panics::default();
        panics.catch(|| *this.permit = None);
        Poll::Ready(Ok(crate::unwind::hand_back(panics, output)))
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future> FusedFuture for Limit<'_, F> {
    fn is_terminated(&self) -> bool {
        self.acquire.is_none() && self.permit.is_none()
    }
}

impl<F> fmt::Debug for Limit<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("waiting", &self.acquire.is_some())
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

/// A [`Semaphore`] for hand-written `poll` functions (tower's
/// `poll_ready`): [`poll_acquire`](PollSemaphore::poll_acquire) takes a
/// permit or registers the task, without any future to store.
///
/// **Wake contract:** while `poll_acquire` returns `Pending`, this handle
/// holds one place in the FIFO queue; the waker of its **most recent** call
/// is woken (once) when the permit is granted or the semaphore closes. Drop
/// the handle (or call [`cancel`](PollSemaphore::cancel)) to give the place
/// up.
///
/// # Examples
///
/// ```
/// use awaitkit::{PollSemaphore, Semaphore};
/// use std::sync::Arc;
/// use std::task::{Context, Poll, Waker};
///
/// let sem = Arc::new(Semaphore::new(1));
/// let mut a = PollSemaphore::new(sem.clone());
/// let mut b = PollSemaphore::new(sem.clone());
/// let mut cx = Context::from_waker(Waker::noop());
/// let Poll::Ready(Some(permit)) = a.poll_acquire(&mut cx) else { panic!() };
/// assert!(b.poll_acquire(&mut cx).is_pending()); // queued
/// drop(permit); // granted to b
/// assert!(matches!(b.poll_acquire(&mut cx), Poll::Ready(Some(_))));
/// ```
#[derive(Debug)]
pub struct PollSemaphore {
    sem: Arc<Semaphore>,
    waiter: Option<Waiter>,
}

impl PollSemaphore {
    /// A poll handle on `sem`.
    ///
    /// # Examples
    ///
    /// See [`PollSemaphore`].
    pub fn new(sem: Arc<Semaphore>) -> PollSemaphore {
        PollSemaphore { sem, waiter: None }
    }

    /// One permit, or `Pending` with this task registered in FIFO order
    /// (see the wake contract above); `Ready(None)` once the semaphore is
    /// closed. The waker is cloned (never under the semaphore's lock) only
    /// when this handle has no registered waker that wakes the same task.
    ///
    /// # Examples
    ///
    /// See [`PollSemaphore`].
    pub fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<Option<OwnedSemaphorePermit>> {
        self.poll_acquire_many(cx, 1)
    }

    /// `n` permits, like [`poll_acquire`](PollSemaphore::poll_acquire).
    /// A pending request keeps its `n` until it completes or is cancelled.
    /// `Ready(None)` once the semaphore is closed (for `n = 0` too), and
    /// when `n` exceeds the capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Waker};
    /// let mut handle = awaitkit::PollSemaphore::new(Arc::new(awaitkit::Semaphore::new(3)));
    /// let mut cx = Context::from_waker(Waker::noop());
    /// let Poll::Ready(Some(p)) = handle.poll_acquire_many(&mut cx, 3) else { panic!() };
    /// assert_eq!(p.num_permits(), 3);
    /// ```
    pub fn poll_acquire_many(
        &mut self,
        cx: &mut Context<'_>,
        n: usize,
    ) -> Poll<Option<OwnedSemaphorePermit>> {
        let waiter = self.waiter.get_or_insert_with(|| Waiter::new(n));
        let out = ready!(waiter.poll(&self.sem, cx));
        let needed = waiter.needed;
        self.waiter = None;
        Poll::Ready(out.ok().map(|()| OwnedSemaphorePermit {
            sem: self.sem.clone(),
            permits: needed,
        }))
    }

    /// Gives up a pending request (its place and any permits assigned to
    /// it go to the next waiters).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::task::{Context, Waker};
    /// let sem = Arc::new(awaitkit::Semaphore::new(1));
    /// let _held = sem.try_acquire().unwrap();
    /// let mut handle = awaitkit::PollSemaphore::new(sem.clone());
    /// assert!(handle.poll_acquire(&mut Context::from_waker(Waker::noop())).is_pending());
    /// assert_eq!(sem.stats().waiters, 1);
    /// handle.cancel();
    /// assert_eq!(sem.stats().waiters, 0);
    /// ```
    pub fn cancel(&mut self) {
        if let Some(mut waiter) = self.waiter.take() {
            waiter.cancel(&self.sem);
        }
    }

    /// The semaphore.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// let sem = Arc::new(awaitkit::Semaphore::new(1));
    /// assert!(Arc::ptr_eq(awaitkit::PollSemaphore::new(sem.clone()).semaphore(), &sem));
    /// ```
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.sem
    }
}

impl Clone for PollSemaphore {
    /// Another handle on the same semaphore, with its own place in line.
    fn clone(&self) -> Self {
        PollSemaphore::new(self.sem.clone())
    }
}

impl Drop for PollSemaphore {
    fn drop(&mut self) {
        self.cancel();
    }
}
