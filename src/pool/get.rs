//! `Get`: the future of `Pool::get`.

use super::{Entry, Manager, Pool, PoolError, Pooled};
use crate::semaphore::{AcquireOwned, OwnedSemaphorePermit};
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxFuture<O> = Pin<Box<dyn Future<Output = O> + Send>>;
type Recycled<M> = (
    Entry<<M as Manager>::Object>,
    Result<(), <M as Manager>::Error>,
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
/// Polling after completion panics.
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
}

enum Step<M: Manager> {
    Start,
    Wait(AcquireOwned),
    /// An idle object for a manager that does not recycle.
    Ready(Entry<M::Object>, OwnedSemaphorePermit),
    Recycle(Option<OwnedSemaphorePermit>, BoxFuture<Recycled<M>>),
    Create(
        Option<OwnedSemaphorePermit>,
        BoxFuture<Result<M::Object, M::Error>>,
    ),
    Done,
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Get<M, T> {
    pub(super) fn new(pool: Pool<M, T>, timeout: Option<Duration>) -> Self {
        let deadline = timeout.map(|d| {
            let when = if d == Duration::MAX {
                When::Never
            } else {
                When::After(d)
            };
            BoxedDeadline::new(pool.inner.timer.clone(), Some(when))
        });
        Get {
            pool: Some(pool),
            step: Step::Start,
            deadline,
        }
    }

    fn pool(&self) -> &Pool<M, T> {
        self.pool
            .as_ref()
            .expect("a get holds its pool until it completes")
    }

    /// With a permit: the next idle object to recycle (or, for a manager
    /// that does not recycle, to hand out), or a new one.
    fn next_step(&mut self, permit: OwnedSemaphorePermit) -> Result<Step<M>, PoolError<M::Error>> {
        let pool = self.pool();
        if pool.is_closed() {
            return Err(PoolError::Closed);
        }
        if let Some(mut entry) = pool.pop_idle() {
            if !M::RECYCLE {
                return Ok(Step::Ready(entry, permit));
            }
            let inner = Arc::clone(&pool.inner);
            return Ok(Step::Recycle(
                Some(permit),
                Box::pin(async move {
                    let result = inner.manager.recycle(&mut entry.object).await;
                    (entry, result)
                }),
            ));
        }
        // A new object: its slot counts from now (dropping the create frees
        // it, see `finish`).
        let inner = Arc::clone(&pool.inner);
        inner.size.fetch_add(1, Ordering::AcqRel);
        Ok(Step::Create(
            Some(permit),
            Box::pin(async move { inner.manager.create().await }),
        ))
    }

    /// Success: the guard takes the pool handle.
    fn hand_out(&mut self, entry: Entry<M::Object>, permit: OwnedSemaphorePermit) -> Pooled<M, T> {
        self.step = Step::Done;
        let pool = self
            .pool
            .take()
            .expect("a get holds its pool until it completes");
        Pooled::new(pool, entry, permit)
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Future for Get<M, T> {
    type Output = Result<Pooled<M, T>, PoolError<M::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = self.poll_steps(cx);
        if out.is_ready() {
            self.deadline = None; // its timer goes at once
        }
        out
    }
}

impl<M: Manager, T: Timer + Clone + Send + Sync + 'static> Get<M, T> {
    fn poll_steps(&mut self, cx: &mut Context<'_>) -> Poll<<Self as Future>::Output> {
        let this = self;
        loop {
            let next = match &mut this.step {
                Step::Start => {
                    let pool = this.pool();
                    if pool.is_closed() {
                        Err(PoolError::Closed)
                    } else {
                        Ok(Step::Wait(
                            Arc::clone(&pool.inner.semaphore).acquire_owned(),
                        ))
                    }
                }
                Step::Wait(acquire) => match Pin::new(acquire).poll(cx) {
                    Poll::Ready(Ok(permit)) => this.next_step(permit),
                    Poll::Ready(Err(_closed)) => Err(PoolError::Closed),
                    Poll::Pending => break,
                },
                Step::Ready(..) => {
                    let Step::Ready(entry, permit) = std::mem::replace(&mut this.step, Step::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Poll::Ready(Ok(this.hand_out(entry, permit)));
                }
                Step::Recycle(permit, recycle) => match recycle.as_mut().poll(cx) {
                    Poll::Ready((entry, Ok(()))) => {
                        let permit = permit.take().expect("held until the step ends");
                        return Poll::Ready(Ok(this.hand_out(entry, permit)));
                    }
                    Poll::Ready((entry, Err(_))) => {
                        // A failed check: drop the object, try the next.
                        let permit = permit.take().expect("held until the step ends");
                        this.step = Step::Done;
                        this.pool().discard(entry);
                        this.next_step(permit)
                    }
                    Poll::Pending => break,
                },
                Step::Create(permit, create) => match create.as_mut().poll(cx) {
                    Poll::Ready(Ok(object)) => {
                        let permit = permit.take().expect("held until the step ends");
                        let pool = this.pool();
                        let entry = Entry {
                            object,
                            created: pool.stamp(pool.inner.max_lifetime),
                            returned: None,
                        };
                        return Poll::Ready(Ok(this.hand_out(entry, permit)));
                    }
                    Poll::Ready(Err(e)) => {
                        this.pool().inner.size.fetch_sub(1, Ordering::AcqRel);
                        this.step = Step::Done;
                        Err(PoolError::Create(e))
                    }
                    Poll::Pending => break,
                },
                Step::Done => panic!("`Get` polled after completion"),
            };
            match next {
                Ok(step) => this.step = step,
                Err(error) => {
                    this.finish();
                    return Poll::Ready(Err(error));
                }
            }
        }
        // Waiting: give up at the deadline.
        if let Some(deadline) = &mut this.deadline {
            if deadline.poll(cx).is_ready() {
                this.finish();
                return Poll::Ready(Err(PoolError::Timeout));
            }
        }
        Poll::Pending
    }
}

impl<M: Manager, T: Timer> Get<M, T> {
    /// Ends the get: a create or recycle in progress is dropped and its slot
    /// freed (before the permit goes, so the next waiter sees the count).
    fn finish(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Done);
        let Some(pool) = &self.pool else { return };
        match step {
            Step::Recycle(permit, recycle) => {
                pool.inner.size.fetch_sub(1, Ordering::AcqRel);
                drop(recycle);
                drop(permit);
            }
            Step::Create(permit, create) => {
                pool.inner.size.fetch_sub(1, Ordering::AcqRel);
                drop(create);
                drop(permit);
            }
            Step::Ready(entry, permit) => {
                pool.put_back(entry);
                drop(permit);
            }
            Step::Start | Step::Wait(_) | Step::Done => {}
        }
    }
}

// No field is structurally pinned (the timer's sleep is boxed).
impl<M: Manager, T: Timer> Unpin for Get<M, T> {}

impl<M: Manager, T: Timer> Drop for Get<M, T> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<M: Manager, T: Timer> fmt::Debug for Get<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Start => "start",
            Step::Wait(_) => "waiting",
            Step::Ready(..) | Step::Recycle(..) => "recycling",
            Step::Create(..) => "creating",
            Step::Done => "done",
        };
        f.debug_struct("Get")
            .field("step", &step)
            .finish_non_exhaustive()
    }
}
