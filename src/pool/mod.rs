//! `Pool`: an async pool of reusable objects (database connections, clients)
//! for any executor — an async database connection pool.
//!
//! A [`Manager`] says how to create an object and how to check one before
//! it is handed out again; the pool keeps at most `max_size` of them, hands
//! them out through [`Pool::get`] in FIFO order (a
//! [`Semaphore`] of `max_size` permits), and takes them
//! back when the [`Pooled`] guard drops.
//!
//! # Design
//!
//! * Every object in use holds one permit; idle objects hold none. A `get`
//!   first takes a permit, then reuses the most recently returned idle
//!   object (after [`Manager::recycle`]) or, when none is idle, creates one.
//!   A guard puts its object back on the idle list *before* its permit is
//!   released, so whoever takes the permit next sees the object: the pool
//!   never holds more than `max_size` objects.
//! * Lifetimes are checked when an object would be handed out (no
//!   background task): an object older than `max_lifetime`, or idle longer
//!   than `idle_timeout`, is dropped instead. Each `get` also drops the
//!   coldest idle object if it has timed out, so unused objects do not
//!   linger.
//! * Everything that fails or is cancelled frees its slot: a failed or
//!   dropped create, a failed or dropped recycle (the object is discarded),
//!   a guard dropped while its thread panics (the object may be half-used,
//!   so it is discarded). Dropping the permit wakes the next waiter.

#![forbid(unsafe_code)]

mod get;
mod object;

pub use get::Get;
pub use object::Pooled;

use crate::semaphore::Semaphore;
use crate::time::{DefaultTimer, Timer};
use crate::unwind::Panics;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Creates and checks the objects of a [`Pool`].
///
/// Write the methods as `async fn`s. Their futures must be `Send` (a pool is
/// shared between tasks and threads); to pool objects whose creation blocks
/// (SQLite, files), move the blocking call off the executor — for example
/// with the `blocking` crate's `unblock`, which works on every runtime.
///
/// # Examples
///
/// ```
/// use awaitkit::pool::Manager;
///
/// struct Connections;
///
/// impl Manager for Connections {
///     type Object = String;
///     type Error = std::io::Error;
///
///     async fn create(&self) -> Result<String, std::io::Error> {
///         Ok("a connection".to_owned())
///     }
///
///     async fn recycle(&self, conn: &mut String) -> Result<(), std::io::Error> {
///         conn.clear(); // reset its state before it is handed out again
///         conn.push_str("a connection");
///         Ok(())
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// What the pool holds.
    type Object: Send + 'static;
    /// Why creating or recycling failed.
    type Error: Send + 'static;

    /// Whether the pool calls [`recycle`](Manager::recycle) before handing
    /// an idle object out again. Set it to `false` when there is nothing to
    /// check: the pool then hands idle objects out directly (no future is
    /// allocated per `get`). Default `true`.
    const RECYCLE: bool = true;

    /// Creates a new object. An error is returned from
    /// [`Pool::get`] as [`PoolError::Create`].
    fn create(&self) -> impl Future<Output = Result<Self::Object, Self::Error>> + Send;

    /// Checks (and resets) an idle object before it is handed out again:
    /// a health check such as `SELECT 1`. On an error the object is
    /// dropped and the `get` moves on to the next idle object or creates a
    /// new one. The default accepts every object.
    fn recycle(
        &self,
        object: &mut Self::Object,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = object;
        async { Ok(()) }
    }
}

/// Why [`Pool::get`] failed.
///
/// [`Create`](PoolError::Create) wraps the manager's error: its `Display`
/// says only "the manager failed to create an object", and
/// [`source`](std::error::Error::source) returns the manager's error, so an
/// error chain (`anyhow`'s `{:#}`, `eyre`'s report) prints each message
/// once. It is an [`Error`](std::error::Error) (and `Send + Sync + 'static`)
/// whenever the manager's error is.
///
/// # Examples
///
/// ```
/// use awaitkit::pool::PoolError;
/// use std::error::Error;
/// let err: PoolError<std::io::Error> = PoolError::Timeout;
/// assert_eq!(err.to_string(), "timed out waiting for a pooled object");
///
/// let err = PoolError::Create(std::io::Error::other("connection refused"));
/// assert_eq!(err.to_string(), "the manager failed to create an object");
/// assert_eq!(err.source().unwrap().to_string(), "connection refused");
/// ```
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// No object became available before the wait timeout.
    Timeout,
    /// The pool was closed ([`Pool::close`]).
    Closed,
    /// [`Manager::create`] failed. The slot is free again.
    Create(E),
}

impl<E> fmt::Display for PoolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolError::Timeout => "timed out waiting for a pooled object",
            PoolError::Closed => "the pool is closed",
            // This layer only: the manager's error is the `source`.
            PoolError::Create(_) => "the manager failed to create an object",
        })
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PoolError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Create(e) => Some(e),
            PoolError::Timeout | PoolError::Closed => None,
        }
    }
}

/// Why a [`PoolBuilder`] could not build a pool.
///
/// # Examples
///
/// ```
/// use awaitkit::pool::{BuildError, Manager, Pool};
/// # struct M;
/// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
/// let err = Pool::builder(M).max_size(0).build().unwrap_err();
/// assert_eq!(err, BuildError::ZeroMaxSize);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_size` was zero: every `get` would wait forever.
    ZeroMaxSize,
    /// `max_size` was more than [`Semaphore::MAX_PERMITS`].
    TooLarge,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildError::ZeroMaxSize => "a pool's max_size must be at least 1",
            BuildError::TooLarge => "a pool's max_size must be at most Semaphore::MAX_PERMITS",
        })
    }
}

impl std::error::Error for BuildError {}

/// A snapshot of a pool's counts ([`Pool::status`]).
///
/// # Examples
///
/// ```
/// # use awaitkit::pool::{Manager, Pool};
/// # struct M;
/// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
/// let pool = Pool::new(M, 4);
/// let status = pool.status();
/// assert_eq!((status.max_size, status.size, status.idle, status.in_use, status.waiting), (4, 0, 0, 0, 0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most objects the pool keeps.
    pub max_size: usize,
    /// Objects in existence: idle, in use, or being created or recycled.
    pub size: usize,
    /// Objects waiting on the idle list.
    pub idle: usize,
    /// Objects handed out, or being created or recycled for a `get`.
    pub in_use: usize,
    /// `get`s waiting for an object.
    pub waiting: usize,
}

/// An async pool of at most `max_size` reusable objects, shared by
/// cloning (a handle to the same pool).
///
/// * [`get`](Pool::get) waits in FIFO order (optionally up to a timeout)
///   and returns a [`Pooled`] guard that derefs to the object and returns it
///   on drop — or drops it, if its thread is panicking, the pool is closed,
///   or the pool was shrunk. [`Pooled::detach`] takes the object out for
///   good.
/// * `max_lifetime` and `idle_timeout` are checked when handing out.
/// * [`status`](Pool::status), [`close`](Pool::close),
///   [`resize`](Pool::resize).
///
/// # Examples
///
/// A database pool in use: three queries at once through a pool of three.
///
/// ```
/// use awaitkit::pool::{Manager, Pool};
///
/// struct Db;
/// impl Manager for Db {
///     type Object = Vec<&'static str>; // stands in for a connection
///     type Error = std::io::Error;
///     async fn create(&self) -> Result<Self::Object, Self::Error> {
///         Ok(vec!["alice", "bob"])
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let pool = Pool::new(Db, 3);
/// let queries = (0..3).map(|i| {
///     let pool = pool.clone();
///     async move {
///         let conn = pool.get().await.unwrap(); // async with pool.acquire() as conn:
///         conn[i % 2]
///     }
/// });
/// let rows = awaitkit::gather(queries).await;
/// assert_eq!(rows, ["alice", "bob", "alice"]);
/// assert_eq!(pool.status().in_use, 0); // every connection is back
/// # });
/// ```
pub struct Pool<M: Manager, T: Timer = DefaultTimer> {
    inner: Arc<Inner<M, T>>,
}

struct Inner<M: Manager, T> {
    /// `None` only in the drop (see `Inner`'s `Drop`).
    manager: Option<M>,
    /// `None` only in the drop.
    timer: Option<T>,
    semaphore: Arc<Semaphore>,
    idle: Mutex<VecDeque<Entry<M::Object>>>,
    size: AtomicUsize,
    max_size: AtomicUsize,
    closed: AtomicBool,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    wait_timeout: Option<Duration>,
}

/// Drops the idle objects, then the manager, then the timer, each even if
/// another's destructor panics (none of them during that panic's unwind),
/// then propagates the first panic.
impl<M: Manager, T> Drop for Inner<M, T> {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        let mut panics = Panics::default();
        panics.drop_all(idle);
        let manager = self.manager.take();
        panics.catch(move || drop(manager));
        let timer = self.timer.take();
        panics.catch(move || drop(timer));
        panics.resume();
    }
}

impl<M: Manager, T> Inner<M, T> {
    fn manager(&self) -> &M {
        self.manager.as_ref().expect(DROPPED)
    }

    fn timer(&self) -> &T {
        self.timer.as_ref().expect(DROPPED)
    }
}

const DROPPED: &str = "a pool's manager and timer are there until it is dropped";

/// A pooled object with its timestamps (read from the clock only when a
/// lifetime is configured).
struct Entry<O> {
    object: O,
    created: Option<Instant>,
    returned: Option<Instant>,
}

impl<M: Manager> Pool<M> {
    /// A pool of at most `max_size` objects made by `manager`, on the
    /// default timer, with no lifetimes and no wait timeout (see
    /// [`builder`](Pool::builder) for those).
    ///
    /// # Panics
    ///
    /// If `max_size` is zero or more than [`Semaphore::MAX_PERMITS`]
    /// (the builder returns the error instead).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = u8; type Error = (); async fn create(&self) -> Result<u8, ()> { Ok(7) } }
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 2);
    /// assert_eq!(*pool.get().await.unwrap(), 7);
    /// # });
    /// ```
    #[track_caller]
    pub fn new(manager: M, max_size: usize) -> Self {
        Self::builder(manager)
            .max_size(max_size)
            .build()
            .unwrap_or_else(|e| panic!("Pool::new: {e}"))
    }

    /// A builder for a pool of `manager`'s objects (default `max_size`:
    /// twice the available parallelism, at least 4).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// use std::time::Duration;
    /// let pool = Pool::builder(M)
    ///     .max_size(16)
    ///     .max_lifetime(Duration::from_secs(30 * 60))
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .wait_timeout(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.status().max_size, 16);
    /// ```
    pub fn builder(manager: M) -> PoolBuilder<M> {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        PoolBuilder {
            manager,
            timer: DefaultTimer,
            max_size: (parallelism * 2).max(4),
            max_lifetime: None,
            idle_timeout: None,
            wait_timeout: None,
        }
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Pool<M, T> {
    /// Waits for an object, in FIFO order, up to the pool's wait timeout if
    /// it has one ([`PoolBuilder::wait_timeout`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point loses nothing: a wait leaves the
    /// queue (the next waiter moves up), a create or recycle in progress is
    /// dropped and its slot freed (a half-recycled object is discarded).
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`], [`PoolError::Closed`], or
    /// [`PoolError::Create`] when the manager could not create an object.
    ///
    /// # Panics
    ///
    /// Polling after completion panics. A panic in the manager, the timer,
    /// an object's destructor or a waker propagates, and nothing leaks (see
    /// [`Get`]'s `# Panics`: a result decided before the panic is returned
    /// by the next poll; otherwise polling again panics).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = Vec<u8>; type Error = (); async fn create(&self) -> Result<Vec<u8>, ()> { Ok(vec![]) } }
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 1);
    /// let mut buf = pool.get().await.unwrap();
    /// buf.push(1); // DerefMut to the object
    /// drop(buf); // back to the pool
    /// assert_eq!(*pool.get().await.unwrap(), [1]);
    /// # });
    /// ```
    pub fn get(&self) -> Get<M, T> {
        Get::new(self.clone(), self.inner.wait_timeout)
    }

    /// [`get`](Pool::get) with this wait timeout instead of the pool's.
    ///
    /// # Cancel safety
    ///
    /// As for [`get`](Pool::get).
    ///
    /// # Errors
    ///
    /// As for [`get`](Pool::get).
    ///
    /// # Panics
    ///
    /// As for [`get`](Pool::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool, PoolError};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 1);
    /// let held = pool.get().await.unwrap();
    /// let err = pool.get_timeout(Duration::from_millis(5)).await.unwrap_err();
    /// assert_eq!(err, PoolError::Timeout);
    /// # drop(held);
    /// # });
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Get<M, T> {
        Get::new(self.clone(), Some(timeout))
    }
}

impl<M: Manager, T: Timer> Pool<M, T> {
    fn lock_idle(&self) -> MutexGuard<'_, VecDeque<Entry<M::Object>>> {
        // Idle-list updates are single pushes and pops: poisoning is ignored.
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's counts right now.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 2);
    /// let a = pool.get().await.unwrap();
    /// let status = pool.status();
    /// assert_eq!((status.size, status.in_use, status.idle), (1, 1, 0));
    /// drop(a);
    /// assert_eq!(pool.status().idle, 1);
    /// # });
    /// ```
    pub fn status(&self) -> PoolStatus {
        let idle = self.lock_idle().len();
        let size = self.inner.size.load(Ordering::Acquire);
        PoolStatus {
            max_size: self.inner.max_size.load(Ordering::Acquire),
            size,
            idle,
            in_use: size.saturating_sub(idle),
            waiting: self.inner.semaphore.stats().waiters,
        }
    }

    /// Closes the pool: waiting and later `get`s fail with
    /// [`PoolError::Closed`], idle objects are dropped now, and objects in
    /// use are dropped when their guards are.
    ///
    /// # Panics
    ///
    /// With the first panic of the waiters' wakers (woken to fail) and the
    /// idle objects' destructors, once every waiter is woken and every idle
    /// object dropped (the pool is closed either way).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool, PoolError};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 2);
    /// pool.close();
    /// assert!(pool.is_closed());
    /// assert_eq!(pool.get().await.unwrap_err(), PoolError::Closed);
    /// # });
    /// ```
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // The waiters' wakers are user code: the idle objects go even if
        // one panics.
        let mut panics = Panics::default();
        panics.catch(|| self.inner.semaphore.close());
        let idle = std::mem::take(&mut *self.lock_idle());
        self.inner.size.fetch_sub(idle.len(), Ordering::AcqRel);
        // Each object on its own (a second panicking destructor would abort
        // the process in the queue's own drop).
        panics.drop_all(idle);
        panics.resume();
    }

    /// Whether [`close`](Pool::close) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// assert!(!Pool::new(M, 1).is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Changes `max_size`. Growing lets waiters through at once; shrinking
    /// drops idle objects above the new size now and objects in use as
    /// they come back — it never takes an object from its holder.
    ///
    /// # Panics
    ///
    /// If `max_size` is zero or more than [`Semaphore::MAX_PERMITS`]; and
    /// with the first panic of the idle objects' destructors, once every
    /// object to drop has been dropped (the pool is resized either way).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 2);
    /// let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    /// drop((a, b));
    /// pool.resize(1);
    /// assert_eq!((pool.status().size, pool.status().max_size), (1, 1));
    /// # });
    /// ```
    #[track_caller]
    pub fn resize(&self, max_size: usize) {
        assert!(
            max_size > 0 && max_size <= Semaphore::MAX_PERMITS,
            "Pool::resize: max_size must be between 1 and Semaphore::MAX_PERMITS, not {max_size}"
        );
        self.inner.max_size.store(max_size, Ordering::Release);
        self.inner.semaphore.set_capacity(max_size);
        let mut dropped = Vec::new();
        {
            let mut idle = self.lock_idle();
            while self.inner.size.load(Ordering::Acquire) > max_size {
                let Some(entry) = idle.pop_front() else { break };
                self.inner.size.fetch_sub(1, Ordering::AcqRel);
                dropped.push(entry);
            }
        }
        // Outside the lock, each on its own (a `Vec`'s drop would abort on a
        // second panicking destructor); the first panic propagates.
        let mut panics = Panics::default();
        panics.drop_all(dropped);
        panics.resume();
    }

    /// The manager.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M(u8);
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// assert_eq!(Pool::new(M(3), 1).manager().0, 3);
    /// ```
    pub fn manager(&self) -> &M {
        self.inner.manager()
    }

    /// An idle object to hand out, dropping the ones that have timed out
    /// (and, each time, the coldest idle object if it has).
    fn pop_idle(&self) -> Option<Entry<M::Object>> {
        let inner = &self.inner;
        if inner.max_lifetime.is_none() && inner.idle_timeout.is_none() {
            return self.lock_idle().pop_back(); // no clock read
        }
        let now = inner.timer().now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.lock_idle();
            if idle.front().is_some_and(|e| self.expired(e, now)) {
                expired.extend(idle.pop_front());
            }
            loop {
                match idle.pop_back() {
                    Some(e) if self.expired(&e, now) => expired.push(e),
                    other => break other,
                }
            }
        };
        if !expired.is_empty() {
            inner.size.fetch_sub(expired.len(), Ordering::AcqRel);
            // Outside the lock. The destructors are user code: if one
            // panics, the rest are still dropped (a `Vec`'s drop), and the
            // object found goes back to the idle list rather than being
            // dropped with its slot still counted.
            let mut panics = Panics::default();
            panics.drop_all(expired);
            if panics.caught() {
                if let Some(entry) = found {
                    self.restore(entry, &mut panics);
                }
                panics.resume();
                return None;
            }
        }
        found
    }

    fn expired(&self, entry: &Entry<M::Object>, now: Instant) -> bool {
        let over = |since: Option<Instant>, limit: Option<Duration>| match (since, limit) {
            (Some(since), Some(limit)) => now.saturating_duration_since(since) >= limit,
            _ => false,
        };
        over(entry.created, self.inner.max_lifetime)
            || over(entry.returned, self.inner.idle_timeout)
    }

    /// The time for an entry's timestamp, read only if `limit` is set.
    fn stamp(&self, limit: Option<Duration>) -> Option<Instant> {
        limit.map(|_| self.inner.timer().now())
    }

    /// Puts a returned object back (or drops it when the pool is closed or
    /// over its size). Called before the holder's permit is released. The
    /// timer and the object's destructor are user code: a panic is kept in
    /// `panics` (the object dropped, its slot freed, after the timer's
    /// panic is caught, not during its unwind).
    fn put_back(&self, mut entry: Entry<M::Object>, panics: &mut Panics) {
        let inner = &self.inner;
        if self.is_closed()
            || inner.size.load(Ordering::Acquire) > inner.max_size.load(Ordering::Acquire)
        {
            return panics.catch(|| self.discard(entry));
        }
        if inner.idle_timeout.is_some() {
            let mut returned = None;
            panics.catch(|| returned = Some(self.stamp(inner.idle_timeout)));
            match returned {
                Some(at) => entry.returned = at,
                None => return panics.catch(|| self.discard(entry)),
            }
        }
        self.restore(entry, panics);
    }

    /// Puts an idle object on the idle list as it is (or drops it when the
    /// pool is closed: its destructor's panic kept in `panics`).
    fn restore(&self, entry: Entry<M::Object>, panics: &mut Panics) {
        {
            let mut idle = self.lock_idle();
            // `close` may have emptied the list meanwhile: check under the
            // lock it takes.
            if !self.is_closed() {
                idle.push_back(entry);
                return;
            }
        }
        panics.catch(|| self.discard(entry));
    }

    /// Drops an object for good, freeing its slot.
    fn discard(&self, entry: Entry<M::Object>) {
        self.inner.size.fetch_sub(1, Ordering::AcqRel);
        drop(entry);
    }
}

impl<M: Manager, T: Timer> Clone for Pool<M, T> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Manager, T: Timer> fmt::Debug for Pool<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`] ([`Pool::builder`]).
///
/// # Examples
///
/// ```
/// # use awaitkit::pool::{Manager, Pool};
/// # struct M;
/// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
/// let pool = Pool::builder(M).max_size(8).build().unwrap();
/// assert_eq!(pool.status().max_size, 8);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder<M: Manager, T: Timer = DefaultTimer> {
    manager: M,
    timer: T,
    max_size: usize,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    wait_timeout: Option<Duration>,
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> PoolBuilder<M, T> {
    /// The most objects the pool keeps (in use and idle together).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// assert_eq!(Pool::builder(M).max_size(3).build().unwrap().status().max_size, 3);
    /// ```
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// Objects older than this are dropped instead of handed out.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// let pool = Pool::builder(M).max_lifetime(std::time::Duration::from_secs(1800)).build();
    /// assert!(pool.is_ok());
    /// ```
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = Some(max_lifetime);
        self
    }

    /// Objects idle longer than this are dropped instead of handed out.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// let pool = Pool::builder(M).idle_timeout(std::time::Duration::from_secs(60)).build();
    /// assert!(pool.is_ok());
    /// ```
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = Some(idle_timeout);
        self
    }

    /// How long [`Pool::get`] waits before failing with
    /// [`PoolError::Timeout`] (default: no limit). The time counts from the
    /// first poll that has to wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// let pool = Pool::builder(M).wait_timeout(std::time::Duration::from_secs(5)).build();
    /// assert!(pool.is_ok());
    /// ```
    pub fn wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = Some(wait_timeout);
        self
    }

    /// The clock for lifetimes and the timer for wait timeouts (see
    /// [`time`](crate::time); `ManualClock` makes them testable).
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// use awaitkit::time::FuturesTimer;
    /// let pool = Pool::builder(M).with_timer(FuturesTimer).build();
    /// assert!(pool.is_ok());
    /// ```
    pub fn with_timer<U: Timer + Clone + Send + Sync + 'static>(
        self,
        timer: U,
    ) -> PoolBuilder<M, U> {
        PoolBuilder {
            manager: self.manager,
            timer,
            max_size: self.max_size,
            max_lifetime: self.max_lifetime,
            idle_timeout: self.idle_timeout,
            wait_timeout: self.wait_timeout,
        }
    }

    /// The pool.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroMaxSize`] or [`BuildError::TooLarge`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// assert!(Pool::builder(M).max_size(0).build().is_err());
    /// ```
    pub fn build(self) -> Result<Pool<M, T>, BuildError> {
        if self.max_size == 0 {
            return Err(BuildError::ZeroMaxSize);
        }
        if self.max_size > Semaphore::MAX_PERMITS {
            return Err(BuildError::TooLarge);
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                manager: Some(self.manager),
                timer: Some(self.timer),
                semaphore: Arc::new(Semaphore::new(self.max_size)),
                idle: Mutex::new(VecDeque::new()),
                size: AtomicUsize::new(0),
                max_size: AtomicUsize::new(self.max_size),
                closed: AtomicBool::new(false),
                max_lifetime: self.max_lifetime,
                idle_timeout: self.idle_timeout,
                wait_timeout: self.wait_timeout,
            }),
        })
    }
}

impl<M: Manager, T: Timer> fmt::Debug for PoolBuilder<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("max_size", &self.max_size)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}
