//! `as_completed` / [`AsCompleted`]: outputs in completion order, and the
//! dynamic set of futures behind `wait_any` and `wait`.

#![forbid(unsafe_code)]

use crate::engine::Engine;
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::unwind::Panics;
use futures_core::Stream;
use futures_core::stream::FusedStream;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs every future concurrently and yields their outputs **in completion
/// order** — Python's `asyncio.as_completed(aws)`.
///
/// The returned [`AsCompleted`] is a [`Stream`]; it is also a dynamic set
/// (futures can be [`push`](AsCompleted::push)ed while it runs), and
/// [`indexed`](AsCompleted::indexed) yields each output with the input index
/// of the future that produced it. An empty input yields `None` on the first
/// poll.
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Cancel safety
///
/// Dropping the stream drops every unfinished child synchronously. Outputs
/// are handed out as soon as a child finishes, so dropping the stream between
/// items loses nothing that was already yielded.
///
/// # Panics
///
/// A panic in a child (or in a child's destructor) propagates out of
/// `poll_next`. The set stays usable: a child that panicked while polled
/// stays in it (polled again only if it wakes), one that panicked while
/// dropped is gone.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use futures::channel::oneshot;
/// # futures::executor::block_on(async {
/// let (tx_a, rx_a) = oneshot::channel();
/// let (tx_b, rx_b) = oneshot::channel();
/// let mut done = awaitkit::as_completed([rx_a, rx_b]);
/// tx_b.send("b").unwrap();
/// assert_eq!(done.next().await, Some(Ok("b")));
/// tx_a.send("a").unwrap();
/// assert_eq!(done.next().await, Some(Ok("a")));
/// assert_eq!(done.next().await, None);
/// # });
/// ```
pub fn as_completed<I>(futures: I) -> AsCompleted<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    let engine = Engine::from_iter(futures);
    let next_index = engine.running();
    AsCompleted {
        engine,
        next_index,
        terminated: false,
    }
}

/// Stream for the [`as_completed`] function; also a dynamic set of futures
/// (a `FuturesUnordered` replacement).
///
/// Each future has an *index*: its position in the input of
/// [`as_completed`], continued by every [`push`](AsCompleted::push) (the
/// first future pushed into [`AsCompleted::new`] has index 0).
/// [`indexed`](AsCompleted::indexed) and
/// [`poll_next_indexed`](AsCompleted::poll_next_indexed) hand it out.
///
/// `AsCompleted` is [`Unpin`] whatever the futures are (they are pinned
/// inside), [`Send`]/[`Sync`] when they are, and a [`FusedStream`]: after
/// yielding `None` it keeps yielding `None` until a future is pushed.
///
/// Slots of finished futures are reused by later pushes, except those of the
/// initial batch given to [`as_completed`]: that batch is one allocation,
/// freed with the set.
///
/// # Examples
///
/// A dynamic set, fed while it runs:
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let mut tasks = awaitkit::AsCompleted::new();
/// tasks.push(std::future::ready(1));
/// let first = tasks.next().await;
/// tasks.push(std::future::ready(2));
/// assert_eq!((first, tasks.next().await, tasks.next().await), (Some(1), Some(2), None));
/// # });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct AsCompleted<F: Future> {
    pub(crate) engine: Engine<F>,
    next_index: usize,
    terminated: bool,
}

impl<F: Future> AsCompleted<F> {
    /// An empty set.
    ///
    /// # Examples
    ///
    /// ```
    /// let set = awaitkit::AsCompleted::<std::future::Ready<u8>>::new();
    /// assert!(set.is_empty());
    /// ```
    pub const fn new() -> Self {
        Self {
            engine: Engine::new(),
            next_index: 0,
            terminated: false,
        }
    }

    /// Adds a future; it is first polled on the next poll of the set. Returns
    /// the future's index. Futures already in the set never move.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut set = awaitkit::AsCompleted::new();
    /// assert_eq!(set.push(std::future::ready('a')), 0);
    /// assert_eq!(set.push(std::future::ready('b')), 1);
    /// assert_eq!(set.len(), 2);
    /// let mut got: Vec<char> = set.collect().await;
    /// got.sort();
    /// assert_eq!(got, ['a', 'b']);
    /// # });
    /// ```
    pub fn push(&mut self, future: F) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        self.engine.push(future, index);
        self.terminated = false;
        index
    }

    /// Number of futures that have not finished yet.
    ///
    /// # Examples
    ///
    /// ```
    /// let set = awaitkit::as_completed([1, 2].map(std::future::ready));
    /// assert_eq!(set.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.engine.running()
    }

    /// Whether every future has finished (or none was added).
    ///
    /// # Examples
    ///
    /// ```
    /// let set = awaitkit::as_completed(Vec::<std::future::Ready<()>>::new());
    /// assert!(set.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every future in the set, now, and the outputs not yet handed
    /// out — futures' `FuturesUnordered::clear`. The set stays usable: later
    /// [`push`](Self::push)es go on numbering from where it was, so an index
    /// is never given twice.
    ///
    /// # Panics
    ///
    /// If a future's destructor panics: every other future is still dropped
    /// first (as a `Vec` drops its elements), the set is left empty and
    /// usable, and the first panic propagates.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut set = awaitkit::as_completed([futures::future::pending::<u8>(), futures::future::pending()]);
    /// set.clear(); // both are cancelled
    /// assert!(set.is_empty());
    /// assert_eq!(set.push(futures::future::pending()), 2);
    /// ```
    pub fn clear(&mut self) {
        self.engine.clear();
    }

    /// The unfinished futures with their indices, in no particular order —
    /// futures' `FuturesUnordered::iter`. To look at them (their progress,
    /// which request each one is) without polling anything.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut set = awaitkit::as_completed([
    ///     futures::future::Either::Left(std::future::ready(1)),
    ///     futures::future::Either::Right(std::future::pending()),
    /// ]);
    /// assert_eq!(set.iter().len(), 2);
    /// assert_eq!(set.next().await, Some(1));
    /// let waiting: Vec<usize> = set.iter().map(|(index, _)| index).collect();
    /// assert_eq!(waiting, [1]);
    /// # });
    /// ```
    pub fn iter(&self) -> AsCompletedIter<'_, F> {
        AsCompletedIter {
            inner: self.engine.iter(),
        }
    }

    /// The unfinished futures with their indices, **pinned**, in no
    /// particular order — futures' `FuturesUnordered::iter_pin_mut`. The
    /// futures stay in the set (they never move): change their state through
    /// their own methods, e.g. a request's priority or a stream's buffer.
    /// Polling one directly is allowed but bypasses the set's wake-up
    /// bookkeeping: the set still polls it when its waker fires.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::Pin;
    /// # futures::executor::block_on(async {
    /// // Cancel-by-flag: tell every unfinished attempt to give up early.
    /// let mut set = awaitkit::as_completed((0..3).map(|_| futures::future::pending::<()>()));
    /// let mut seen = 0;
    /// for (index, fut) in set.iter_mut() {
    ///     let _: Pin<&mut futures::future::Pending<()>> = fut;
    ///     assert!(index < 3);
    ///     seen += 1;
    /// }
    /// assert_eq!(seen, 3);
    /// # });
    /// ```
    pub fn iter_mut(&mut self) -> AsCompletedIterMut<'_, F> {
        AsCompletedIterMut {
            inner: self.engine.iter_mut(),
        }
    }

    /// Polls for the next output together with the index of the future that
    /// produced it. `Ready(None)` when the set is empty.
    ///
    /// Each call polls every woken future at most once. On `Pending` the
    /// waker of `cx` is woken when any future in the set is woken; only the
    /// waker of the most recent call is kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::task::{Context, Poll, Waker};
    /// let mut set = awaitkit::as_completed([std::future::ready('x')]);
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert_eq!(set.poll_next_indexed(&mut cx), Poll::Ready(Some((0, 'x'))));
    /// assert_eq!(set.poll_next_indexed(&mut cx), Poll::Ready(None));
    /// ```
    pub fn poll_next_indexed(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, F::Output)>> {
        let mut pass = self.engine.pass(cx);
        if let Some(done) = pass.next() {
            pass.engine().release_slot(done.slot);
            return Poll::Ready(Some((done.key, done.output)));
        }
        if self.engine.running() > 0 {
            return Poll::Pending;
        }
        self.terminated = true;
        Poll::Ready(None)
    }

    /// A stream of `(index, output)` pairs over the same set.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut done = awaitkit::as_completed([async { "a" }]).indexed();
    /// assert_eq!(done.next().await, Some((0, "a")));
    /// # });
    /// ```
    pub fn indexed(self) -> AsCompletedIndexed<F> {
        AsCompletedIndexed { set: self }
    }

    /// Takes the unfinished futures out, in index order, with their indices.
    /// Their progress is kept: they can be awaited elsewhere.
    ///
    /// Only for `Unpin` futures, since it moves them (box `!Unpin` futures
    /// with `Box::pin` to use it, or keep polling the set instead).
    ///
    /// # Examples
    ///
    /// ```
    /// let set = awaitkit::as_completed([std::future::pending::<()>(), std::future::pending()]);
    /// let rest: Vec<usize> = set.into_pending().into_iter().map(|(i, _)| i).collect();
    /// assert_eq!(rest, [0, 1]);
    /// ```
    pub fn into_pending(mut self) -> Vec<(usize, F)>
    where
        F: Unpin,
    {
        let mut rest = self.engine.drain_running();
        rest.sort_by_key(|(i, _)| *i);
        rest
    }
}

/// The unfinished futures of an [`AsCompleted`] with their indices
/// ([`AsCompleted::iter`]); exact size.
///
/// # Examples
///
/// ```
/// let set = awaitkit::as_completed([std::future::pending::<()>()]);
/// let iter: awaitkit::AsCompletedIter<'_, _> = set.iter();
/// assert_eq!(iter.map(|(i, _)| i).collect::<Vec<_>>(), [0]);
/// ```
pub struct AsCompletedIter<'a, F: Future> {
    inner: crate::engine::Children<'a, F>,
}

impl<'a, F: Future> Iterator for AsCompletedIter<'a, F> {
    type Item = (usize, &'a F);

    fn next(&mut self) -> Option<(usize, &'a F)> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<F: Future> ExactSizeIterator for AsCompletedIter<'_, F> {}
impl<F: Future> std::iter::FusedIterator for AsCompletedIter<'_, F> {}

impl<F: Future> fmt::Debug for AsCompletedIter<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompletedIter")
            .field("left", &self.inner.len())
            .finish()
    }
}

/// The unfinished futures of an [`AsCompleted`] with their indices, pinned
/// ([`AsCompleted::iter_mut`]); exact size.
///
/// # Examples
///
/// ```
/// let mut set = awaitkit::as_completed([std::future::pending::<()>()]);
/// let iter: awaitkit::AsCompletedIterMut<'_, _> = set.iter_mut();
/// assert_eq!(iter.len(), 1);
/// ```
pub struct AsCompletedIterMut<'a, F: Future> {
    inner: crate::engine::ChildrenMut<'a, F>,
}

impl<'a, F: Future> Iterator for AsCompletedIterMut<'a, F> {
    type Item = (usize, Pin<&'a mut F>);

    fn next(&mut self) -> Option<(usize, Pin<&'a mut F>)> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<F: Future> ExactSizeIterator for AsCompletedIterMut<'_, F> {}
impl<F: Future> std::iter::FusedIterator for AsCompletedIterMut<'_, F> {}

impl<F: Future> fmt::Debug for AsCompletedIterMut<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompletedIterMut")
            .field("left", &self.inner.len())
            .finish()
    }
}

impl<F: Future> Default for AsCompleted<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Future> Stream for AsCompleted<F> {
    type Item = F::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        self.get_mut()
            .poll_next_indexed(cx)
            .map(|o| o.map(|(_, v)| v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

impl<F: Future> FusedStream for AsCompleted<F> {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl<F: Future> FromIterator<F> for AsCompleted<F> {
    fn from_iter<I: IntoIterator<Item = F>>(iter: I) -> Self {
        as_completed(iter)
    }
}

impl<F: Future> Extend<F> for AsCompleted<F> {
    fn extend<I: IntoIterator<Item = F>>(&mut self, iter: I) {
        for future in iter {
            self.push(future);
        }
    }
}

impl<F: Future> fmt::Debug for AsCompleted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Stream for [`AsCompleted::indexed`]: `(index, output)` in completion
/// order.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let done: awaitkit::AsCompletedIndexed<_> = awaitkit::as_completed(['a', 'b'].map(std::future::ready)).indexed();
/// let mut got: Vec<(usize, char)> = done.collect().await;
/// got.sort();
/// assert_eq!(got, [(0, 'a'), (1, 'b')]);
/// # });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct AsCompletedIndexed<F: Future> {
    set: AsCompleted<F>,
}

impl<F: Future> AsCompletedIndexed<F> {
    /// The underlying set, e.g. to [`push`](AsCompleted::push) more futures.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut done = awaitkit::as_completed(Vec::<std::future::Ready<u8>>::new()).indexed();
    /// assert_eq!(done.get_mut().push(std::future::ready(1)), 0);
    /// ```
    pub fn get_mut(&mut self) -> &mut AsCompleted<F> {
        &mut self.set
    }

    /// Back to the plain stream of outputs.
    ///
    /// # Examples
    ///
    /// ```
    /// let done = awaitkit::as_completed([async { 1 }]).indexed();
    /// assert_eq!(done.into_inner().len(), 1);
    /// ```
    pub fn into_inner(self) -> AsCompleted<F> {
        self.set
    }
}

impl<F: Future> Stream for AsCompletedIndexed<F> {
    type Item = (usize, F::Output);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().set.poll_next_indexed(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.set.size_hint()
    }
}

impl<F: Future> FusedStream for AsCompletedIndexed<F> {
    fn is_terminated(&self) -> bool {
        self.set.is_terminated()
    }
}

impl<F: Future> fmt::Debug for AsCompletedIndexed<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsCompletedIndexed")
            .field(&self.set)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// An overall deadline: Python's `as_completed(timeout=)`
// ---------------------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
}

/// The sets an [`AsCompletedUntil`] can wrap: [`AsCompleted`] and
/// [`AsCompletedIndexed`]. Sealed.
pub trait CompletionSet: Stream + FusedStream + Unpin + Default + sealed::Sealed {
    /// How many futures are still unfinished.
    fn unfinished(&self) -> usize;
}

impl<F: Future> sealed::Sealed for AsCompleted<F> {}
impl<F: Future> CompletionSet for AsCompleted<F> {
    fn unfinished(&self) -> usize {
        self.len()
    }
}

impl<F: Future> sealed::Sealed for AsCompletedIndexed<F> {}
impl<F: Future> CompletionSet for AsCompletedIndexed<F> {
    fn unfinished(&self) -> usize {
        self.set.len()
    }
}

impl<F: Future> Default for AsCompletedIndexed<F> {
    fn default() -> Self {
        AsCompleted::new().indexed()
    }
}

impl<F: Future> AsCompleted<F> {
    /// Ends the stream after `duration` — Python's `as_completed(timeout=)`.
    /// Items become `Ok(output)`; if the time runs out with futures still
    /// unfinished, the stream yields one `Err(`[`TimedOut`]`)` holding them
    /// (with their progress and indices), then ends. Nothing is dropped
    /// silently.
    ///
    /// The duration counts from the first poll that waits; children are
    /// always polled before the deadline is checked.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let calls = [Duration::from_millis(1), Duration::from_secs(60)].map(futures_timer::Delay::new);
    /// let mut done = awaitkit::as_completed(calls).with_timeout(Duration::from_millis(50));
    /// assert!(matches!(done.next().await, Some(Ok(()))));
    /// let Some(Err(timed_out)) = done.next().await else { panic!("expected the deadline") };
    /// assert_eq!(timed_out.pending.len(), 1); // the slow call, still running
    /// assert!(done.next().await.is_none());
    /// # });
    /// ```
    pub fn with_timeout(self, duration: Duration) -> AsCompletedUntil<Self> {
        AsCompletedUntil::new(self, When::After(duration))
    }

    /// Ends the stream at `deadline`; see
    /// [`with_timeout`](AsCompleted::with_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut done = awaitkit::as_completed([futures::future::pending::<()>()])
    ///     .with_deadline(std::time::Instant::now());
    /// assert!(matches!(done.next().await, Some(Err(_))));
    /// # });
    /// ```
    pub fn with_deadline(self, deadline: Instant) -> AsCompletedUntil<Self> {
        AsCompletedUntil::new(self, When::At(deadline))
    }
}

impl<F: Future> AsCompletedIndexed<F> {
    /// [`AsCompleted::with_timeout`] for the indexed stream: items are
    /// `Ok((index, output))`.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let mut done = awaitkit::as_completed([async { 'a' }]).indexed().with_timeout(Duration::from_secs(1));
    /// assert_eq!(done.next().await.map(Result::ok), Some(Some((0, 'a'))));
    /// assert!(done.next().await.is_none());
    /// # });
    /// ```
    pub fn with_timeout(self, duration: Duration) -> AsCompletedUntil<Self> {
        AsCompletedUntil::new(self, When::After(duration))
    }

    /// [`AsCompleted::with_deadline`] for the indexed stream.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut done = awaitkit::as_completed([futures::future::pending::<()>()])
    ///     .indexed()
    ///     .with_deadline(std::time::Instant::now());
    /// let Some(Err(rest)) = done.next().await else { panic!() };
    /// assert_eq!(rest.pending.into_inner().len(), 1);
    /// # });
    /// ```
    pub fn with_deadline(self, deadline: Instant) -> AsCompletedUntil<Self> {
        AsCompletedUntil::new(self, When::At(deadline))
    }
}

/// Stream for [`AsCompleted::with_timeout`] and friends: the set's items as
/// `Ok`, then — if the deadline passes first — one `Err(`[`TimedOut`]`)`
/// handing back the unfinished futures, then `None`.
///
/// `Unpin`; fused. Dropping it drops every unfinished child.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let done: awaitkit::AsCompletedUntil<awaitkit::AsCompleted<_>> =
///     awaitkit::as_completed([1, 2].map(std::future::ready)).with_timeout(Duration::from_secs(1));
/// let all: Vec<_> = done.collect().await;
/// assert_eq!(all.len(), 2);
/// # });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct AsCompletedUntil<S, T: Timer = DefaultTimer> {
    set: Option<S>,
    deadline: BoxedDeadline<T>,
}

/// Drops the set, the sleep and the timer, each even if another's
/// destructor panics (none of them during that panic's unwind), then
/// propagates the first panic.
impl<S, T: Timer> Drop for AsCompletedUntil<S, T> {
    fn drop(&mut self) {
        let mut panics = Panics::default();
        let set = self.set.take();
        panics.catch(move || drop(set));
        self.deadline.release(&mut panics);
        panics.resume();
    }
}

impl<S: CompletionSet> AsCompletedUntil<S> {
    fn new(set: S, when: When) -> Self {
        AsCompletedUntil {
            set: Some(set),
            deadline: BoxedDeadline::new(DefaultTimer, Some(when)),
        }
    }
}

impl<S: CompletionSet, T: Timer> AsCompletedUntil<S, T> {
    /// Measures the deadline with another [`Timer`].
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// let done = awaitkit::as_completed([async { 1 }])
    ///     .with_timeout(Duration::from_secs(1))
    ///     .with_timer(FuturesTimer);
    /// # drop(done);
    /// ```
    pub fn with_timer<U: Timer>(mut self, timer: U) -> AsCompletedUntil<S, U> {
        let next = AsCompletedUntil {
            set: self.set.take(),
            deadline: self.deadline.with_timer(timer),
        };
        crate::unwind::after_dropping(next, |panics| self.deadline.release(panics))
    }

    /// The deadline, once known (a duration starts counting at the first
    /// poll that waits).
    ///
    /// # Examples
    ///
    /// ```
    /// let at = std::time::Instant::now();
    /// let done = awaitkit::as_completed([async { 1 }]).with_deadline(at);
    /// assert_eq!(done.deadline(), Some(at));
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.deadline()
    }

    /// The wrapped set, e.g. to push more futures. `None` once the stream
    /// has handed it back in [`TimedOut`] or finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut done = awaitkit::AsCompleted::new().with_timeout(Duration::from_secs(1));
    /// done.get_mut().unwrap().push(std::future::ready(1));
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut S> {
        self.set.as_mut()
    }

    /// Takes the set back, deadline or not (`None` once handed back in
    /// [`TimedOut`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let done = awaitkit::as_completed([async { 1 }]).with_timeout(Duration::from_secs(1));
    /// assert_eq!(done.into_inner().unwrap().len(), 1);
    /// ```
    pub fn into_inner(mut self) -> Option<S> {
        let set = self.set.take();
        // The sleep and the timer go first: if one panics, the set is
        // dropped (not leaked) before the panic propagates.
        let mut panics = Panics::default();
        self.deadline.release(&mut panics);
        crate::unwind::hand_back(panics, set)
    }
}

impl<S: CompletionSet, T: Timer> Stream for AsCompletedUntil<S, T> {
    type Item = Result<S::Item, TimedOut<S>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(set) = this.set.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *set).poll_next(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) => {
                // Everything finished in time: release the timer now.
                this.deadline.restart(None);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Children first: one finishing at the deadline is yielded as done.
        match this.deadline.poll(cx) {
            Poll::Ready(()) => {
                let pending = this.set.take().expect("checked above");
                Poll::Ready(Some(Err(TimedOut { pending })))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.set {
            // Every unfinished future, plus perhaps the deadline marker.
            Some(set) if !set.is_terminated() => (0, Some(set.unfinished() + 1)),
            _ => (0, Some(0)),
        }
    }
}

impl<S: CompletionSet, T: Timer> FusedStream for AsCompletedUntil<S, T> {
    fn is_terminated(&self) -> bool {
        self.set.as_ref().is_none_or(FusedStream::is_terminated)
    }
}

// The timer is never pinned; the set is `Unpin` and the sleep is boxed.
impl<S: Unpin, T: Timer> Unpin for AsCompletedUntil<S, T> {}

impl<S: fmt::Debug, T: Timer> fmt::Debug for AsCompletedUntil<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompletedUntil")
            .field("set", &self.set)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The last item of an [`AsCompletedUntil`] whose deadline passed: the
/// futures that had not finished, still running and with their indices.
/// Await them elsewhere, wait on them again, or drop them to cancel.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let mut done = awaitkit::as_completed([futures::future::pending::<u8>()])
///     .with_deadline(std::time::Instant::now());
/// let Some(Err(timed_out)) = done.next().await else { panic!() };
/// assert_eq!(timed_out.to_string(), "deadline has elapsed with 1 future(s) unfinished");
/// drop(timed_out.pending); // cancels them
/// # });
/// ```
pub struct TimedOut<S> {
    /// The unfinished futures.
    pub pending: S,
}

impl<S: CompletionSet> fmt::Display for TimedOut<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deadline has elapsed with {} future(s) unfinished",
            self.pending.unfinished()
        )
    }
}

impl<S: CompletionSet + fmt::Debug> fmt::Debug for TimedOut<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedOut")
            .field("pending", &self.pending)
            .finish()
    }
}

impl<S: CompletionSet + fmt::Debug> std::error::Error for TimedOut<S> {}
