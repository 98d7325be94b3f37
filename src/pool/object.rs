//! `Pooled`: the guard of an object taken from a pool.

use super::{Entry, Manager, Pool};
use crate::semaphore::OwnedSemaphorePermit;
use crate::time::{DefaultTimer, Timer};
use crate::unwind::Panics;
use std::fmt;
use std::ops::{Deref, DerefMut};

/// An object taken from a [`Pool`]: derefs to it, and gives it back when
/// dropped (the next waiter is woken).
///
/// The object is dropped instead of given back when the guard is dropped
/// while its thread panics (it may be left half-used), when the pool was
/// closed, or when the pool was shrunk below its size.
/// [`detach`](Pooled::detach) takes it out of the pool for good.
///
/// # Panics
///
/// Dropping it runs user code: the timer (stamping the object's return,
/// when the pool has an idle timeout), the object's destructor if it is
/// dropped, the next waiter's waker as the permit goes back, and the pool's
/// own destructor (its manager, timer and idle objects) when the guard held
/// the last handle. Each runs even if an earlier one panics (none during
/// that panic's unwind), and the first panic then propagates out of the
/// drop; the object is back in the pool or dropped with its slot freed, and
/// the permit is returned, either way.
///
/// # Examples
///
/// ```
/// # use awaitkit::pool::{Manager, Pool};
/// # struct M;
/// # impl Manager for M { type Object = String; type Error = (); async fn create(&self) -> Result<String, ()> { Ok("conn".into()) } }
/// # futures::executor::block_on(async {
/// let pool = Pool::new(M, 1);
/// let conn = pool.get().await.unwrap();
/// assert_eq!(conn.len(), 4); // Deref to the object
/// # });
/// ```
#[must_use = "dropping the guard gives the object back to the pool at once"]
pub struct Pooled<M: Manager, T: Timer = DefaultTimer> {
    entry: Option<Entry<M::Object>>,
    /// `None` only once dropped.
    pool: Option<Pool<M, T>>,
    /// Released after the object is back on the idle list.
    permit: Option<OwnedSemaphorePermit>,
}

impl<M: Manager, T: Timer> Pooled<M, T> {
    pub(super) fn new(
        pool: Pool<M, T>,
        entry: Entry<M::Object>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Pooled {
            entry: Some(entry),
            pool: Some(pool),
            permit: Some(permit),
        }
    }

    /// Takes the object out of the pool for good: its slot is freed, so the
    /// pool may create another.
    ///
    /// # Panics
    ///
    /// If the next waiter's waker (as the permit goes back) or the pool's
    /// destructor (when this guard held the last handle) panics: the object
    /// is dropped, then the first panic propagates.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = String; type Error = (); async fn create(&self) -> Result<String, ()> { Ok("conn".into()) } }
    /// use awaitkit::pool::Pooled;
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 1);
    /// let conn: String = Pooled::detach(pool.get().await.unwrap());
    /// assert_eq!(conn, "conn");
    /// assert_eq!(pool.status().size, 0);
    /// # });
    /// ```
    pub fn detach(mut this: Self) -> M::Object {
        let entry = this
            .entry
            .take()
            .expect("a guard holds its object until dropped");
        Pooled::pool(&this)
            .inner
            .size
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        // The permit (the next waiter's waker) and the pool handle (the
        // pool itself, if it was the last) go before the object is handed
        // back: if one panics, the object is dropped, then the panic
        // propagates (a value being returned is leaked when a destructor in
        // the same scope panics, rust-lang/rust#47949).
        let mut panics = Panics::default();
        panics.drop_all(this.permit.take());
        panics.drop_all(this.pool.take());
        crate::unwind::hand_back(panics, entry.object)
    }

    /// The pool the object belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use awaitkit::pool::{Manager, Pool};
    /// # struct M;
    /// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
    /// use awaitkit::pool::Pooled;
    /// # futures::executor::block_on(async {
    /// let pool = Pool::new(M, 1);
    /// let conn = pool.get().await.unwrap();
    /// assert_eq!(Pooled::pool(&conn).status().in_use, 1);
    /// # });
    /// ```
    pub fn pool(this: &Self) -> &Pool<M, T> {
        this.pool
            .as_ref()
            .expect("a guard holds its pool handle until dropped")
    }

    fn entry(&self) -> &Entry<M::Object> {
        self.entry
            .as_ref()
            .expect("a guard holds its object until dropped")
    }
}

impl<M: Manager, T: Timer> Deref for Pooled<M, T> {
    type Target = M::Object;

    fn deref(&self) -> &M::Object {
        &self.entry().object
    }
}

impl<M: Manager, T: Timer> DerefMut for Pooled<M, T> {
    fn deref_mut(&mut self) -> &mut M::Object {
        &mut self
            .entry
            .as_mut()
            .expect("a guard holds its object until dropped")
            .object
    }
}

/// The object goes back (or is dropped), then the permit, then the pool
/// handle, each even if an earlier part panics; the first panic propagates.
impl<M: Manager, T: Timer> Drop for Pooled<M, T> {
    fn drop(&mut self) {
        let mut panics = Panics::default();
        if let (Some(entry), Some(pool)) = (self.entry.take(), &self.pool) {
            if std::thread::panicking() {
                // Possibly half-used: dropped (a panic of its destructor is
                // discarded below: this thread is already unwinding).
                panics.catch(|| pool.discard(entry));
            } else {
                pool.put_back(entry, &mut panics);
            }
        }
        panics.drop_all(self.permit.take());
        panics.drop_all(self.pool.take());
        panics.resume();
    }
}

impl<M: Manager, T: Timer> fmt::Debug for Pooled<M, T>
where
    M::Object: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&self.entry().object).finish()
    }
}
