//! `Get`: the future of `Pool::get`.

use super::{Entry, Manager, Pool, PoolError, Pooled};
use crate::semaphore::{AcquireOwned, OwnedSemaphorePermit};
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::unwind::{Panics, settle};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxFuture<O> = Pin<Box<dyn Future<Output = O> + Send>>;
/// What a create future gives back: the manager's result (`None`: the
/// manager panicked, that panic first in the `Panics`), and a panic of the
/// manager's future's destructor (see [`settle`](crate::unwind::settle)).
type Created<M> = (
    Option<Result<<M as Manager>::Object, <M as Manager>::Error>>,
    Panics,
);
/// What a recycle future gives back: the object, the check's result
/// (`None`: the manager panicked), and the panics caught.
type Recycled<M> = (
    Entry<<M as Manager>::Object>,
    Option<Result<(), <M as Manager>::Error>>,
    Panics,
);

/// The future of [`Pool::get`]: an object from the pool, in FIFO order.
///
/// # Cancel safety
///
/// Dropping it at any point loses nothing: a wait leaves the queue, and a
/// create or recycle in progress is dropped with its object, freeing the
/// slot and waking the next waiter.
///
/// # Errors
///
/// [`PoolError::Timeout`], [`PoolError::Closed`] or [`PoolError::Create`].
///
/// # Panics
///
/// Polling after completion panics. A panic in the manager (`create`,
/// `recycle`, their futures), the timer, an object's destructor or a waker
/// propagates out of `poll` (or `drop`) once every other part has been
/// given back: nothing leaks, and no user value is dropped during that
/// panic's unwind (an object or slot the `Get` held, and its permit, go
/// back first). A panic in `poll` propagates even when the `Get` is polled
/// inside a destructor during another panic's unwind, as any future's
/// would (catch it there, or the process aborts); a `create` that panicked
/// is never retried. (A `recycle` check that panics during an unwind, or an
/// expired idle object whose destructor does, counts as a failed check
/// there: the panic is discarded and the get moves on to the next idle
/// object, or creates one.) Then:
///
/// * If the panic came after the result was decided — the destructor of
///   the manager's finished future, the timer's sleep or a waker dropped
///   as the `Get` finishes, or the waker of *another* waiter woken as a
///   failed `Get` hands its permit on (see the semaphore's
///   [wakers that panic](crate::Semaphore#wakers-that-panic)) — the result
///   is kept: the next poll returns it (and dropping the `Get` instead puts
///   the object back in the pool).
/// * Otherwise polling again panics ("polled after a panic"); drop it.
///
/// # Examples
///
/// ```
/// # use awaitkit::pool::{Manager, Pool};
/// # struct M;
/// # impl Manager for M { type Object = (); type Error = (); async fn create(&self) -> Result<(), ()> { Ok(()) } }
/// use awaitkit::pool::Get;
/// # futures::executor::block_on(async {
/// let pool = Pool::new(M, 1);
/// let get: Get<M> = pool.get();
/// assert!(get.await.is_ok());
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Get<M: Manager, T: Timer = DefaultTimer> {
    /// Moved into the guard on success (`None` once done).
    pool: Option<Pool<M, T>>,
    step: Step<M>,
    deadline: Option<BoxedDeadline<T>>,
    /// Set while a poll runs: a panic that unwinds out of it leaves it set,
    /// and the next poll refuses unless the result was already decided.
    poisoned: bool,
}

enum Step<M: Manager> {
    Start,
    Wait(AcquireOwned),
    /// The result, an object: handed out by the next `poll_steps` (an idle
    /// object of a manager that does not recycle, or one created or
    /// recycled, kept here while what came before is dropped).
    Ready(Entry<M::Object>, OwnedSemaphorePermit),
    /// Checking an idle object; the object's slot stays counted.
    Recycle(OwnedSemaphorePermit, BoxFuture<Recycled<M>>),
    /// Creating an object; its slot counts from the start (see `next_step`).
    Create(OwnedSemaphorePermit, BoxFuture<Created<M>>),
    /// The result, an error (the permit is already gone).
    Failed(PoolError<M::Error>),
    Done,
}

impl<M: Manager> Step<M> {
    /// Whether the result is decided (and held here).
    fn is_settled(&self) -> bool {
        matches!(self, Step::Ready(..) | Step::Failed(_))
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Get<M, T> {
    pub(super) fn new(pool: Pool<M, T>, timeout: Option<Duration>) -> Self {
        let deadline = timeout.map(|d| {
            let when = if d == Duration::MAX {
                When::Never
            } else {
                When::After(d)
            };
            BoxedDeadline::new(pool.inner.timer().clone(), Some(when))
        });
        Get {
            pool: Some(pool),
            step: Step::Start,
            deadline,
            poisoned: false,
        }
    }

    fn pool(&self) -> &Pool<M, T> {
        self.pool
            .as_ref()
            .expect("a get holds its pool until it completes")
    }

    /// With a permit: the next idle object to recycle (or, for a manager
    /// that does not recycle, to hand out), or a new one. `Err` gives the
    /// permit back when the pool is closed.
    fn next_step(&self, permit: OwnedSemaphorePermit) -> Result<Step<M>, OwnedSemaphorePermit> {
        let pool = self.pool();
        if pool.is_closed() {
            return Err(permit);
        }
        // (Dropping timed-out idle objects is user code: if it panics, the
        // permit goes back, then the panic propagates.)
        let mut popped = None;
        let mut panics = Panics::default();
        panics.catch(|| popped = pool.pop_idle());
        if panics.caught() && !std::thread::panicking() {
            panics.drop_all(Some(permit));
            panics.resume();
            unreachable!("a caught panic propagates");
        }
        // (Polled during an unwind: the panic is discarded.)
        panics.resume();
        if let Some(mut entry) = popped {
            if !M::RECYCLE {
                return Ok(Step::Ready(entry, permit));
            }
            let inner = Arc::clone(&pool.inner);
            return Ok(Step::Recycle(
                permit,
                Box::pin(async move {
                    let (result, panics) =
                        settle(|| inner.manager().recycle(&mut entry.object)).await;
                    (entry, result, panics)
                }),
            ));
        }
        // A new object: its slot counts from now (dropping the create frees
        // it, see `release`).
        let inner = Arc::clone(&pool.inner);
        inner.size.fetch_add(1, Ordering::AcqRel);
        Ok(Step::Create(
            permit,
            Box::pin(async move { settle(|| inner.manager().create()).await }),
        ))
    }

    /// Moves on to `step`, then drops the step it replaces (a finished
    /// acquire: dropping it may drop a waker, user code). If that panics,
    /// the new step is already in place.
    fn advance(&mut self, step: Step<M>) {
        let old = std::mem::replace(&mut self.step, step);
        drop(old);
    }

    /// Ends the get with `error`: the error is kept first, then the step it
    /// replaces is released and `permit` (if any) goes back — user code (a
    /// destructor; the next waiter's waker) that may panic, after which the
    /// next poll still returns the error.
    fn fail(&mut self, error: PoolError<M::Error>, permit: Option<OwnedSemaphorePermit>) {
        let old = std::mem::replace(&mut self.step, Step::Failed(error));
        let mut panics = Panics::default();
        self.release(old, &mut panics);
        panics.drop_all(permit);
        panics.resume();
    }

    /// The decided result: the guard takes the pool handle.
    fn take_result(&mut self) -> Result<Pooled<M, T>, PoolError<M::Error>> {
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Ready(entry, permit) => {
                let pool = self
                    .pool
                    .take()
                    .expect("a get holds its pool until it completes");
                Ok(Pooled::new(pool, entry, permit))
            }
            Step::Failed(error) => Err(error),
            _ => unreachable!("called with a settled step"),
        }
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Future for Get<M, T> {
    type Output = Result<Pooled<M, T>, PoolError<M::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // After a panic: a decided result is returned; anything else may be
        // half-done, so refuse (as an `async fn` does).
        crate::poison::assert_live(
            this.poisoned && !this.step.is_settled(),
            matches!(this.step, Step::Done),
            "Get",
        );
        this.poisoned = true;
        if this.poll_steps(cx).is_pending() {
            this.poisoned = false;
            return Poll::Pending;
        }
        // Settled. The deadline's sleep goes now (its timer goes at once);
        // dropping it is user code: if that panics, the result stays for
        // the next poll.
        drop(this.deadline.take());
        this.poisoned = false;
        Poll::Ready(this.take_result())
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> futures_core::FusedFuture for Get<M, T> {
    fn is_terminated(&self) -> bool {
        // `Done` mid-poll (a step being replaced) has `poisoned` set.
        matches!(self.step, Step::Done) && !self.poisoned
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Get<M, T> {
    /// Runs the steps until the result is decided (`Ready`: held in
    /// `self.step`) or something has to wait.
    fn poll_steps(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let this = self;
        loop {
            match &mut this.step {
                Step::Start => {
                    let pool = this.pool();
                    if pool.is_closed() {
                        this.fail(PoolError::Closed, None);
                        return Poll::Ready(());
                    }
                    let acquire = Arc::clone(&pool.inner.semaphore).acquire_owned();
                    this.step = Step::Wait(acquire);
                }
                Step::Wait(acquire) => match Pin::new(acquire).poll(cx) {
                    Poll::Ready(Ok(permit)) => match this.next_step(permit) {
                        Ok(step) => this.advance(step),
                        Err(permit) => {
                            this.fail(PoolError::Closed, Some(permit));
                            return Poll::Ready(());
                        }
                    },
                    Poll::Ready(Err(_closed)) => {
                        this.fail(PoolError::Closed, None);
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                },
                Step::Ready(..) | Step::Failed(_) => return Poll::Ready(()),
                Step::Recycle(_, recycle) => {
                    let Poll::Ready((entry, result, mut panics)) = recycle.as_mut().poll(cx) else {
                        break;
                    };
                    // The finished future goes (nothing left in it to run).
                    let Step::Recycle(permit, _) = std::mem::replace(&mut this.step, Step::Done)
                    else {
                        unreachable!("matched above")
                    };
                    if matches!(result, Some(Ok(()))) {
                        // Kept before the panic of the manager's future's
                        // destructor (if any) propagates: the next poll
                        // returns it.
                        this.step = Step::Ready(entry, permit);
                        panics.resume();
                        return Poll::Ready(());
                    }
                    // A failed check (or the manager panicked: `None`): drop
                    // the object (freeing its slot) and try the next. If
                    // its destructor panics, or the manager or its future
                    // did, the permit goes back first (not during that
                    // panic's unwind), then the panic propagates.
                    panics.drop_all(Some(result)); // the manager's error
                    panics.catch(|| this.pool().discard(entry));
                    if panics.caught() && !std::thread::panicking() {
                        panics.drop_all(Some(permit));
                        panics.resume();
                        unreachable!("a caught panic propagates");
                    }
                    // (Polled during an unwind: the panic is discarded.)
                    panics.resume();
                    match this.next_step(permit) {
                        Ok(step) => this.step = step,
                        Err(permit) => {
                            this.fail(PoolError::Closed, Some(permit));
                            return Poll::Ready(());
                        }
                    }
                }
                Step::Create(_, create) => {
                    let Poll::Ready((result, mut panics)) = create.as_mut().poll(cx) else {
                        break;
                    };
                    // The object, stamped with its creation time (the timer
                    // is user code: if it panics, the object is dropped
                    // once that panic is caught).
                    let made = match result {
                        Some(Ok(object)) => {
                            let pool = this.pool();
                            let mut created = None;
                            panics.catch(|| created = Some(pool.stamp(pool.inner.max_lifetime)));
                            match created {
                                Some(created) => Some(Ok(Entry {
                                    object,
                                    created,
                                    returned: None,
                                })),
                                None => {
                                    panics.drop_all(Some(object));
                                    None
                                }
                            }
                        }
                        Some(Err(e)) => Some(Err(e)),
                        None => None,
                    };
                    let Step::Create(permit, _) = std::mem::replace(&mut this.step, Step::Done)
                    else {
                        unreachable!("matched above")
                    };
                    match made {
                        Some(Ok(entry)) => this.step = Step::Ready(entry, permit),
                        Some(Err(e)) => {
                            this.pool().inner.size.fetch_sub(1, Ordering::AcqRel);
                            this.step = Step::Failed(PoolError::Create(e));
                            panics.drop_all(Some(permit));
                        }
                        None => {
                            // The manager (`create`, its future's `poll`) or
                            // the timer panicked: the slot and the permit go
                            // back, then the panic propagates (polling again
                            // panics: the get had not settled). It does even
                            // when this poll runs during an unwind, as a
                            // panic in any `async fn`'s callee would: the
                            // get cannot go on without an object (retrying
                            // could go on forever).
                            this.pool().inner.size.fetch_sub(1, Ordering::AcqRel);
                            this.step = Step::Start;
                            panics.drop_all(Some(permit));
                            let payload = panics.take().expect("a panic was caught");
                            std::panic::resume_unwind(payload);
                        }
                    }
                    // The result is kept: the next poll returns it.
                    panics.resume();
                    return Poll::Ready(());
                }
                Step::Done => unreachable!("checked in `poll`"),
            }
        }
        // Waiting: give up at the deadline.
        if let Some(deadline) = &mut this.deadline {
            if deadline.poll(cx).is_ready() {
                this.fail(PoolError::Timeout, None);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl<M: Manager, T: Timer> Get<M, T> {
    /// Releases what `step` holds: a create or recycle in progress is
    /// dropped and its slot freed (before the permit goes, so the next
    /// waiter sees the count); an object not handed out goes back.
    ///
    /// Each piece of user code (destructors, the next waiter's waker) may
    /// panic: the ones after it still run (not during its unwind), the
    /// first panic kept in `panics`.
    fn release(&self, step: Step<M>, panics: &mut Panics) {
        let Some(pool) = &self.pool else {
            return panics.drop_all(Some(step));
        };
        match step {
            Step::Recycle(permit, recycle) => {
                pool.inner.size.fetch_sub(1, Ordering::AcqRel);
                panics.drop_stashing(recycle);
                panics.drop_all(Some(permit));
            }
            Step::Create(permit, create) => {
                pool.inner.size.fetch_sub(1, Ordering::AcqRel);
                panics.drop_stashing(create);
                panics.drop_all(Some(permit));
            }
            Step::Ready(entry, permit) => {
                pool.put_back(entry, panics);
                panics.drop_all(Some(permit));
            }
            other @ (Step::Start | Step::Wait(_) | Step::Failed(_) | Step::Done) => {
                panics.drop_all(Some(other));
            }
        }
    }
}

// No field is structurally pinned (the timer's sleep is boxed).
impl<M: Manager, T: Timer> Unpin for Get<M, T> {}

/// Gives the step back (a permit, an object, a create or recycle future),
/// then drops the deadline and the pool handle, each even if another's
/// destructor panics (none of them during that panic's unwind); the first
/// panic propagates.
impl<M: Manager, T: Timer> Drop for Get<M, T> {
    fn drop(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Done);
        let mut panics = Panics::default();
        self.release(step, &mut panics);
        if let Some(mut deadline) = self.deadline.take() {
            deadline.release(&mut panics);
        }
        let pool = self.pool.take();
        panics.catch(move || drop(pool));
        panics.resume();
    }
}

impl<M: Manager, T: Timer> fmt::Debug for Get<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Start => "start",
            Step::Wait(_) => "waiting",
            Step::Recycle(..) => "recycling",
            Step::Create(..) => "creating",
            Step::Ready(..) => "ready",
            Step::Failed(_) => "failed",
            Step::Done => "done",
        };
        f.debug_struct("Get")
            .field("step", &step)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}
