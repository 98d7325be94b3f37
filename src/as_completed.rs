//! `as_completed` / [`AsCompleted`]: outputs in completion order, and the
//! dynamic set of futures behind `wait_any` and `wait`.

#![forbid(unsafe_code)]

use crate::engine::Engine;
use futures_core::Stream;
use futures_core::stream::FusedStream;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs every future concurrently and yields their outputs **in completion
/// order** — Python's `asyncio.as_completed(aws)`.
///
/// The returned [`AsCompleted`] is a [`Stream`]; it is also a dynamic set
/// (futures can be [`push`](AsCompleted::push)ed while it runs), and
/// [`indexed`](AsCompleted::indexed) yields each output with the input index
/// of the future that produced it. An empty input yields `None` on the first
/// poll.
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
