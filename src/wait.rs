//! `wait_any` and `wait`: Python's `asyncio.wait`, handing back what is done
//! and what is still pending.

#![forbid(unsafe_code)]

use crate::as_completed::{AsCompleted, as_completed};
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::unwind::{DropEach, Panics};
use futures_core::FusedFuture;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Waits for the **first** future to finish and returns its input index, its
/// output, and the rest — still running, with their progress, as an
/// [`AsCompleted`] you can keep polling or drop to cancel.
///
/// Resolves to `None` for an empty input, on the first poll.
///
/// # Cancel safety
///
/// Dropping the [`WaitAny`] drops every child synchronously.
///
/// # Panics
///
/// A panic in a child (or in a child's destructor) propagates out of
/// `poll`; polling again after that panics, as for an `async fn` that
/// panicked. Polling after completion panics.
///
/// # Examples
///
/// ```
/// use futures::channel::oneshot;
/// # futures::executor::block_on(async {
/// let (tx_a, rx_a) = oneshot::channel::<&str>();
/// let (tx_b, rx_b) = oneshot::channel();
/// tx_b.send("fast").unwrap();
/// let (index, output, rest) = awaitkit::wait_any([rx_a, rx_b]).await.unwrap();
/// assert_eq!((index, output), (1, Ok("fast")));
/// assert_eq!(rest.len(), 1);
/// drop(rest); // cancels the slow one
/// assert!(tx_a.is_canceled());
/// # });
/// ```
pub fn wait_any<I>(futures: I) -> WaitAny<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    WaitAny {
        set: Some(as_completed(futures)),
        poisoned: false,
    }
}

/// Future for the [`wait_any`] function.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they and their
/// outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let first: awaitkit::WaitAny<_> = awaitkit::wait_any([std::future::ready(7)]);
/// let (index, value, rest) = first.await.unwrap();
/// assert_eq!((index, value, rest.len()), (0, 7, 0));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct WaitAny<F: Future> {
    set: Option<AsCompleted<F>>,
    poisoned: bool,
}

impl<F: Future> Future for WaitAny<F> {
    type Output = Option<(usize, F::Output, AsCompleted<F>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Checked before the guard: a refused poll leaves the future as it
        // was (terminated).
        crate::poison::assert_live(this.poisoned, this.set.is_none(), "WaitAny");
        crate::poison::guarded(&mut this.poisoned, "WaitAny", || {
            let set = this.set.as_mut().expect("checked above");
            match set.poll_next_indexed(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.set = None;
                    Poll::Ready(None)
                }
                Poll::Ready(Some((index, output))) => {
                    let rest = this.set.take().expect("checked above");
                    Poll::Ready(Some((index, output, rest)))
                }
            }
        })
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future> FusedFuture for WaitAny<F> {
    fn is_terminated(&self) -> bool {
        self.set.is_none() && !self.poisoned
    }
}

impl<F: Future> fmt::Debug for WaitAny<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitAny").field("set", &self.set).finish()
    }
}

/// When [`wait`] returns — Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`.
///
/// # Examples
///
/// ```
/// use awaitkit::ReturnWhen;
/// # futures::executor::block_on(async {
/// let outcome = awaitkit::wait([1, 2].map(std::future::ready), ReturnWhen::AllCompleted).await;
/// assert_eq!(outcome.done.len(), 2);
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReturnWhen {
    /// As soon as at least one future finished. Every future that finished
    /// in the same poll is returned too.
    FirstCompleted,
    /// As soon as one future finished with an `Err` (only [`try_wait`] can
    /// tell errors apart); like `AllCompleted` if none does.
    FirstError,
    /// When every future finished.
    AllCompleted,
}

/// What [`wait`] resolves to: the finished outputs with their input indices
/// (in completion order), the futures still pending, and whether the
/// deadline (if any) cut the wait short.
///
/// # Examples
///
/// ```
/// use awaitkit::{ReturnWhen, WaitOutcome};
/// # futures::executor::block_on(async {
/// let WaitOutcome { done, pending, timed_out } =
///     awaitkit::wait([std::future::ready('a')], ReturnWhen::FirstCompleted).await;
/// assert_eq!((done, pending.len(), timed_out), (vec![(0, 'a')], 0, false));
/// # });
/// ```
pub struct WaitOutcome<F: Future> {
    /// `(input index, output)` of every future that finished, in completion
    /// order.
    pub done: Vec<(usize, F::Output)>,
    /// The futures still running, with their progress and input indices:
    /// poll them as a stream, [`wait`](AsCompleted::wait) on them again, or
    /// drop them to cancel.
    pub pending: AsCompleted<F>,
    /// `true` when the wait ended because its deadline
    /// ([`Wait::with_timeout`], [`Wait::with_deadline`]) passed before the
    /// [`ReturnWhen`] condition was met.
    pub timed_out: bool,
}

impl<F: Future> fmt::Debug for WaitOutcome<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitOutcome")
            .field("done", &self.done.len())
            .field("pending", &self.pending.len())
            .field("timed_out", &self.timed_out)
            .finish()
    }
}

/// Runs the futures until `when` is met, then returns the finished ones (with
/// their input indices) and the pending ones — Python's `asyncio.wait`.
///
/// Nothing is cancelled: pending futures are handed back in
/// [`WaitOutcome::pending`], still holding their progress. An empty input
/// resolves at once with nothing done and nothing pending.
///
/// Add a time limit with [`Wait::with_timeout`] or [`Wait::with_deadline`]
/// (Python's `asyncio.wait(timeout=)`): when it passes, the wait resolves
/// with what is done so far, the rest pending, and
/// [`timed_out`](WaitOutcome::timed_out) set.
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Panics
///
/// `ReturnWhen::FirstError` needs outputs that can be errors: it panics here,
/// at construction, pointing to [`try_wait`]. A panic in a child propagates
/// out of `poll`; polling after completion panics.
///
/// # Cancel safety
///
/// Dropping the [`Wait`] drops every child synchronously.
///
/// # Examples
///
/// ```
/// use awaitkit::ReturnWhen;
/// use futures::channel::oneshot;
/// # futures::executor::block_on(async {
/// let (tx, rx) = oneshot::channel::<u8>();
/// let quick = async { Ok(1) };
/// let slow = async { rx.await };
/// let futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = _>>>> =
///     vec![Box::pin(slow), Box::pin(quick)];
/// let outcome = awaitkit::wait(futures, ReturnWhen::FirstCompleted).await;
/// assert_eq!(outcome.done, [(1, Ok(1))]);
/// assert_eq!(outcome.pending.len(), 1);
/// tx.send(2).unwrap();
/// let rest = outcome.pending.wait(ReturnWhen::AllCompleted).await;
/// assert_eq!(rest.done, [(0, Ok(2))]);
/// # });
/// ```
#[track_caller]
pub fn wait<I>(futures: I, when: ReturnWhen) -> Wait<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    as_completed(futures).wait(when)
}

/// [`wait`] for futures with `Result` outputs, where
/// [`ReturnWhen::FirstError`] returns as soon as one of them fails.
///
/// # Cancel safety
///
/// Dropping the [`Wait`] drops every child synchronously.
///
/// # Panics
///
/// A panic in a child (or in a child's destructor) propagates out of
/// `poll`; polling again after that panics, as for an `async fn` that
/// panicked. Polling after completion panics.
///
/// # Examples
///
/// ```
/// use awaitkit::ReturnWhen;
/// # futures::executor::block_on(async {
/// let calls = [Ok(1), Err("boom"), Ok(3)].map(|r| async move { r });
/// let outcome = awaitkit::try_wait(calls, ReturnWhen::FirstError).await;
/// assert!(outcome.done.iter().any(|(i, r)| *i == 1 && r.is_err()));
/// # });
/// ```
pub fn try_wait<I, T, E>(futures: I, when: ReturnWhen) -> Wait<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture<Output = Result<T, E>>,
{
    as_completed(futures).try_wait(when)
}

impl<F: Future> AsCompleted<F> {
    /// [`wait`] on the futures of this set (for example the `pending` half of
    /// an earlier [`WaitOutcome`]).
    ///
    /// # Panics
    ///
    /// With `ReturnWhen::FirstError`, see [`wait`]; use
    /// [`try_wait`](AsCompleted::try_wait) for `Result` outputs.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::ReturnWhen;
    /// # futures::executor::block_on(async {
    /// let set = awaitkit::as_completed(['a', 'b'].map(std::future::ready));
    /// let outcome = set.wait(ReturnWhen::AllCompleted).await;
    /// assert_eq!(outcome.done.len(), 2);
    /// assert!(outcome.pending.is_empty());
    /// # });
    /// ```
    #[track_caller]
    pub fn wait(self, when: ReturnWhen) -> Wait<F> {
        if when == ReturnWhen::FirstError {
            // The children (user code) are dropped first, not during this
            // panic's unwind.
            crate::unwind::contain(move || drop(self));
            panic!("`ReturnWhen::FirstError` needs `Result` outputs: use `awaitkit::try_wait`");
        }
        Wait {
            set: Some(self),
            when,
            is_error: |_| false,
            done: DropEach::default(),
            deadline: BoxedDeadline::new(DefaultTimer, None),
            poisoned: false,
        }
    }

    /// [`try_wait`] on the futures of this set.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::ReturnWhen;
    /// # futures::executor::block_on(async {
    /// let set = awaitkit::as_completed([async { Err::<u8, _>("no") }]);
    /// let outcome = set.try_wait(ReturnWhen::FirstError).await;
    /// assert_eq!(outcome.done, [(0, Err("no"))]);
    /// # });
    /// ```
    pub fn try_wait<T, E>(self, when: ReturnWhen) -> Wait<F>
    where
        F: Future<Output = Result<T, E>>,
    {
        Wait {
            set: Some(self),
            when,
            is_error: Result::is_err,
            done: DropEach::default(),
            deadline: BoxedDeadline::new(DefaultTimer, None),
            poisoned: false,
        }
    }
}

/// Future for the [`wait`] and [`try_wait`] functions.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they, their outputs
/// and the timer are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// use awaitkit::ReturnWhen;
/// # futures::executor::block_on(async {
/// let waiting: awaitkit::Wait<_> = awaitkit::wait([std::future::ready(())], ReturnWhen::AllCompleted);
/// assert!(waiting.await.pending.is_empty());
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Wait<F: Future, T: Timer = DefaultTimer> {
    set: Option<AsCompleted<F>>,
    when: ReturnWhen,
    is_error: fn(&F::Output) -> bool,
    /// Dropped one by one: see [`DropEach`].
    done: DropEach<(usize, F::Output)>,
    deadline: BoxedDeadline<T>,
    poisoned: bool,
}

/// Drops the children, the outputs collected, the sleep and the timer, each
/// even if another's destructor panics (none of them during that panic's
/// unwind), then propagates the first panic.
impl<F: Future, T: Timer> Drop for Wait<F, T> {
    fn drop(&mut self) {
        let mut panics = Panics::default();
        let set = self.set.take();
        panics.catch(move || drop(set));
        panics.drop_all(std::mem::take(&mut self.done.0));
        self.deadline.release(&mut panics);
        panics.resume();
    }
}

// Outputs and the timer are never pinned; children are pinned inside the
// engine and the timer's sleep on the heap.
impl<F: Future, T: Timer> Unpin for Wait<F, T> {}

impl<F: Future, T: Timer> Wait<F, T> {
    /// Gives up waiting after `duration` — Python's `asyncio.wait(timeout=)`.
    /// The outcome then holds what finished so far, the rest in
    /// [`pending`](WaitOutcome::pending), and
    /// [`timed_out`](WaitOutcome::timed_out) set. Nothing is cancelled.
    ///
    /// The duration counts from the first poll that waits; children are
    /// always polled before the deadline is checked, so a child that
    /// finishes at the deadline counts as done. `Duration::MAX` means no
    /// limit; `Duration::ZERO` returns what finishes in one poll.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::ReturnWhen;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let calls = [Duration::from_millis(1), Duration::from_secs(60)].map(futures_timer::Delay::new);
    /// let outcome = awaitkit::wait(calls, ReturnWhen::AllCompleted)
    ///     .with_timeout(Duration::from_millis(50))
    ///     .await;
    /// assert!(outcome.timed_out);
    /// assert_eq!(outcome.done.len(), 1);
    /// assert_eq!(outcome.pending.len(), 1); // still running: await it, or drop it to cancel
    /// # });
    /// ```
    pub fn with_timeout(mut self, duration: Duration) -> Self {
        self.deadline.restart(Some(When::After(duration)));
        self
    }

    /// Gives up waiting at `deadline` (on the timer's clock); see
    /// [`with_timeout`](Wait::with_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::ReturnWhen;
    /// use std::time::Instant;
    /// # futures::executor::block_on(async {
    /// let outcome = awaitkit::wait([futures::future::pending::<()>()], ReturnWhen::FirstCompleted)
    ///     .with_deadline(Instant::now())
    ///     .await;
    /// assert!(outcome.timed_out && outcome.done.is_empty());
    /// # });
    /// ```
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline.restart(Some(When::At(deadline)));
        self
    }

    /// Measures the deadline with another [`Timer`] (tokio's, async-io's, a
    /// `ManualClock` in tests).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{ReturnWhen, time::FuturesTimer};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let outcome = awaitkit::wait([async { 1 }], ReturnWhen::AllCompleted)
    ///     .with_timeout(Duration::from_secs(1))
    ///     .with_timer(FuturesTimer)
    ///     .await;
    /// assert_eq!(outcome.done, [(0, 1)]);
    /// # });
    /// ```
    pub fn with_timer<U: Timer>(mut self, timer: U) -> Wait<F, U> {
        let next = Wait {
            set: self.set.take(),
            when: self.when,
            is_error: self.is_error,
            done: std::mem::take(&mut self.done),
            deadline: self.deadline.with_timer(timer),
            poisoned: self.poisoned,
        };
        crate::unwind::after_dropping(next, |panics| self.deadline.release(panics))
    }

    /// The deadline, once known (a [`with_timeout`](Wait::with_timeout)
    /// duration starts counting at the first poll that waits).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::ReturnWhen;
    /// use std::time::Instant;
    /// let at = Instant::now();
    /// let waiting = awaitkit::wait([async {}], ReturnWhen::AllCompleted).with_deadline(at);
    /// assert_eq!(waiting.deadline(), Some(at));
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.deadline()
    }
}

impl<F: Future, T: Timer> Future for Wait<F, T> {
    type Output = WaitOutcome<F>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitOutcome<F>> {
        let this = self.get_mut();
        // Checked before the guard: a refused poll leaves the future as it
        // was (terminated).
        crate::poison::assert_live(this.poisoned, this.set.is_none(), "Wait");
        crate::poison::guarded(&mut this.poisoned, "Wait", || {
            let set = this.set.as_mut().expect("checked above");
            let mut failed = false;
            let mut pass = set.engine.pass(cx);
            while let Some(done) = pass.next() {
                pass.engine().release_slot(done.slot);
                failed = this.when == ReturnWhen::FirstError && (this.is_error)(&done.output);
                this.done.0.push((done.key, done.output));
                if failed {
                    break;
                }
            }
            let ready = set.is_empty()
                || failed
                || (this.when == ReturnWhen::FirstCompleted && !this.done.0.is_empty());
            // Children first: one finishing at the deadline counts as done.
            let timed_out = !ready && this.deadline.poll(cx).is_ready();
            if !ready && !timed_out {
                return Poll::Pending;
            }
            // Release the timer now (its sleep is user code): before the
            // outcome is taken out, so that if the sleep's drop panics the
            // outcome (children, outputs) is dropped before that panic
            // propagates, not during its unwind.
            let mut panics = crate::unwind::Panics::default();
            panics.catch(|| this.deadline.restart(None));
            let pending = this.set.take().expect("checked above");
            let outcome = WaitOutcome {
                done: std::mem::take(&mut this.done.0),
                pending,
                timed_out,
            };
            Poll::Ready(crate::unwind::hand_back(panics, outcome))
        })
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future, T: Timer> FusedFuture for Wait<F, T> {
    fn is_terminated(&self) -> bool {
        self.set.is_none() && !self.poisoned
    }
}

impl<F: Future, T: Timer> fmt::Debug for Wait<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("when", &self.when)
            .field("done", &self.done.0.len())
            .field("set", &self.set)
            .field("deadline", &self.deadline)
            .finish()
    }
}
