//! `gather`, `try_gather` and `gather_settled`: run many futures at once and
//! collect their outputs in input order.

#![forbid(unsafe_code)]

use crate::engine::Engine;
use crate::engine::tuple::{SMALL_MAX, SmallSet};
use futures_core::FusedFuture;
use std::any::Any;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

/// Runs every future concurrently and resolves to their outputs in **input
/// order** — Python's `asyncio.gather(*aws)`.
///
/// The children run inside the returned future (nothing is spawned), each
/// with its own waker: a child is polled only when it woke, so the cost per
/// wake does not grow with the number of children.
///
/// An empty input resolves to an empty `Vec` on the first poll.
///
/// An input of 1 to 63 futures whose iterator knows its exact length (an
/// array, a `Vec`, a `map` over a range or a slice) is kept in one small
/// allocation, laid out as [`gather!`](crate::gather!)'s; any other input in
/// the engine's sets, which grow to any size. Both follow the same rules.
///
/// For the outputs one by one, in input order as they become available
/// (futures' `FuturesOrdered`), stream them from a batch:
/// `process_batch(futures, limit, |f| f).ordered()` (see
/// [`Batch::ordered`](crate::Batch::ordered)); in completion order, use
/// [`as_completed`](crate::as_completed()).
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Cancel safety
///
/// Dropping the [`Gather`] drops every unfinished child and every output
/// collected so far, synchronously.
///
/// # Panics
///
/// A panic in a child (or in a child's destructor) propagates out of
/// [`Gather`]'s `poll`; the other children are dropped when the `Gather` is,
/// and polling it again panics, as for an `async fn` that panicked. Use
/// [`gather_settled`] to capture panics as values instead. Polling the
/// `Gather` again after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let sizes = awaitkit::gather((1..=3).map(|n| async move { n * 10 })).await;
/// assert_eq!(sizes, [10, 20, 30]);
/// # });
/// ```
pub fn gather<I>(futures: I) -> Gather<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    Gather {
        children: Children::from_iter(futures),
        finished: false,
        poisoned: false,
    }
}

/// Future for the [`gather()`] function.
///
/// `Unpin` whatever the children are (they are pinned inside), `Send`/`Sync`
/// when they and their outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// Store it, name it, poll it from your own code:
///
/// ```
/// use std::future::Ready;
/// use std::task::{Context, Poll, Waker};
///
/// let mut all: awaitkit::Gather<Ready<u8>> = awaitkit::gather([1, 2].map(std::future::ready));
/// let mut cx = Context::from_waker(Waker::noop());
/// assert_eq!(std::pin::Pin::new(&mut all).poll(&mut cx), Poll::Ready(vec![1, 2]));
/// # use std::future::Future;
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Gather<F: Future> {
    children: Children<F>,
    finished: bool,
    poisoned: bool,
}

/// Where a [`Gather`]'s children live: an input of a known size up to
/// [`SMALL_MAX`] in one small block (the tuple's, as `gather!` has), any
/// other in the engine. Both poll only the children that woke, each at most
/// once per poll.
enum Children<F: Future> {
    /// An empty input: done at the first poll, nothing allocated.
    Empty,
    Small(SmallSet<F>),
    /// Boxed: the engine's cursor makes it a few hundred bytes, which every
    /// move of a small `Gather` (into `.await`, into a task) would copy.
    Engine(Box<Engine<F>>),
}

impl<F: Future> Children<F> {
    #[inline]
    fn from_iter<I>(futures: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoFuture<IntoFuture = F>,
    {
        let mut futures = futures.into_iter().map(IntoFuture::into_future);
        match futures.size_hint() {
            (n, Some(upper)) if n == upper && n > 0 && n <= SMALL_MAX => {
                let small = SmallSet::new(n, &mut futures);
                match futures.next() {
                    None => Self::Small(small),
                    // An iterator that yields more than it said: the engine
                    // takes them all, in order (none was polled yet).
                    Some(more) => Self::Engine(Box::new(Engine::from_iter(
                        small
                            .into_futures()
                            .into_iter()
                            .chain(std::iter::once(more))
                            .chain(futures),
                    ))),
                }
            }
            (0, Some(0)) => match futures.next() {
                None => Self::Empty,
                // It said none and gives some: all to the engine.
                Some(first) => Self::Engine(Box::new(Engine::from_iter(
                    std::iter::once(first).chain(futures),
                ))),
            },
            _ => Self::Engine(Box::new(Engine::from_iter(futures))),
        }
    }

    fn running(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Small(small) => small.remaining(),
            Self::Engine(engine) => engine.running(),
        }
    }
}

impl<F: Future> Future for Gather<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        crate::poison::assert_live(this.poisoned, this.finished, "Gather");
        let outputs =
            crate::poison::guarded(&mut this.poisoned, "Gather", || match &mut this.children {
                Children::Empty => Poll::Ready(Vec::new()),
                Children::Small(small) => small.poll(cx),
                Children::Engine(engine) => {
                    engine.pass(cx).store_all();
                    if engine.running() > 0 {
                        return Poll::Pending;
                    }
                    Poll::Ready(engine.take_outputs())
                }
            });
        if outputs.is_ready() {
            this.finished = true;
        }
        outputs
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future> FusedFuture for Gather<F> {
    fn is_terminated(&self) -> bool {
        self.finished && !self.poisoned
    }
}

impl<F: Future> fmt::Debug for Gather<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather")
            .field("running", &self.children.running())
            .finish_non_exhaustive()
    }
}

/// Runs fallible futures concurrently and resolves to all their `Ok` values
/// in input order, or to the **first** `Err` — `asyncio.gather` without
/// `return_exceptions`, but cancelling the rest as a `TaskGroup` would.
///
/// Fail-fast at any size: the first error is returned from the very poll in
/// which a child produced it, after every other unfinished child (and every
/// value collected so far) has been dropped.
///
/// Like [`gather()`], an input of 1 to 63 futures of known exact length is
/// kept in one small allocation, any other in the engine's sets.
///
/// # Cancel safety
///
/// Dropping the [`TryGather`] drops every unfinished child synchronously.
///
/// # Errors
///
/// Resolves to the first `Err` produced by a child, in completion order.
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
/// # futures::executor::block_on(async {
/// let parse = |s: &'static str| async move { s.parse::<u32>() };
/// let ok = awaitkit::try_gather([parse("1"), parse("2")]).await;
/// assert_eq!(ok, Ok(vec![1, 2]));
///
/// let err = awaitkit::try_gather([parse("1"), parse("x")]).await;
/// assert!(err.is_err());
/// # });
/// ```
pub fn try_gather<I, T, E>(futures: I) -> TryGather<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture<Output = Result<T, E>>,
{
    TryGather {
        children: Children::from_iter(futures),
        finished: false,
        poisoned: false,
    }
}

/// Future for the [`try_gather()`] function.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they and their
/// outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let calls: awaitkit::TryGather<_> =
///     awaitkit::try_gather([Ok::<u8, String>(1), Ok(2)].map(std::future::ready));
/// assert_eq!(calls.await, Ok(vec![1, 2]));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct TryGather<F: Future> {
    children: Children<F>,
    finished: bool,
    poisoned: bool,
}

impl<F, T, E> Future for TryGather<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<Vec<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        crate::poison::assert_live(this.poisoned, this.finished, "TryGather");
        crate::poison::guarded(&mut this.poisoned, "TryGather", || {
            let engine = match &mut this.children {
                Children::Empty => {
                    this.finished = true;
                    return Poll::Ready(Ok(Vec::new()));
                }
                Children::Small(small) => {
                    let outputs = small.poll_split(cx, |output| match output {
                        Ok(value) => Ok(Ok(value)),
                        Err(e) => Err(e),
                    });
                    let Poll::Ready(outputs) = outputs else {
                        return Poll::Pending;
                    };
                    // Finished, or failed fast with everything else dropped.
                    this.finished = true;
                    return Poll::Ready(outputs.map(|values| {
                        values
                            .into_iter()
                            .map(|r| r.unwrap_or_else(|_| unreachable!()))
                            .collect()
                    }));
                }
                Children::Engine(engine) => engine,
            };
            let mut pass = engine.pass(cx);
            while let Some(done) = pass.next() {
                if let Err(e) = done.output {
                    // Fail fast: drop everything else before handing out the
                    // error (finished first: a destructor may panic).
                    this.finished = true;
                    let mut panics = crate::unwind::Panics::default();
                    panics.catch(|| pass.engine().clear());
                    // The error is dropped outside a sibling's panic.
                    return Poll::Ready(Err(crate::unwind::hand_back(panics, e)));
                }
                pass.engine().store(done.slot, done.output);
            }
            if engine.running() > 0 {
                return Poll::Pending;
            }
            this.finished = true;
            let values = engine.take_outputs().into_iter();
            Poll::Ready(Ok(values
                .map(|r| r.unwrap_or_else(|_| unreachable!()))
                .collect()))
        })
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F, T, E> FusedFuture for TryGather<F>
where
    F: Future<Output = Result<T, E>>,
{
    fn is_terminated(&self) -> bool {
        self.finished && !self.poisoned
    }
}

impl<F: Future> fmt::Debug for TryGather<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryGather")
            .field("running", &self.children.running())
            .finish_non_exhaustive()
    }
}

/// A child's panic, captured as a value by [`gather_settled`].
///
/// Python's `gather(..., return_exceptions=True)` hands exceptions back as
/// values; in Rust errors already are values, and a panic is the exception.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let out = awaitkit::gather_settled([async { panic!("lost connection") }]).await;
/// let panicked: &awaitkit::Panicked = out[0].as_ref().unwrap_err();
/// assert_eq!(panicked.to_string(), "future panicked: lost connection");
/// # });
/// ```
///
/// `Send + Sync + 'static` and an [`Error`](std::error::Error), so it goes
/// into `anyhow::Error` or `Box<dyn Error + Send + Sync>` with `?`.
pub struct Panicked {
    payload: Payload,
}

/// A panic payload, kept so that `Panicked` is `Sync`: the string payloads
/// of `panic!` (the ones [`Panicked::message`] reads) as themselves, any
/// other behind a mutex (only ever taken out by value).
enum Payload {
    Static(&'static str),
    String(String),
    Other(Mutex<Box<dyn Any + Send>>),
}

impl Panicked {
    pub(crate) fn new(payload: Box<dyn Any + Send>) -> Panicked {
        let payload = match payload.downcast::<&'static str>() {
            Ok(s) => Payload::Static(*s),
            Err(payload) => match payload.downcast::<String>() {
                Ok(s) => Payload::String(*s),
                Err(payload) => Payload::Other(Mutex::new(payload)),
            },
        };
        Panicked { payload }
    }

    /// The panic message, when the payload is a string (as it is for
    /// `panic!("...")`).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::gather_settled([async { panic!("boom") }]).await;
    /// assert_eq!(out[0].as_ref().unwrap_err().message(), Some("boom"));
    /// # });
    /// ```
    pub fn message(&self) -> Option<&str> {
        match &self.payload {
            Payload::Static(s) => Some(s),
            Payload::String(s) => Some(s),
            Payload::Other(_) => None,
        }
    }

    /// The raw payload, as `std::panic::catch_unwind` would return it.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let mut out = awaitkit::gather_settled([async { std::panic::panic_any(7u8) }]).await;
    /// let payload = out.pop().unwrap().unwrap_err().into_payload();
    /// assert_eq!(payload.downcast_ref::<u8>(), Some(&7));
    /// # });
    /// ```
    pub fn into_payload(self) -> Box<dyn Any + Send> {
        match self.payload {
            Payload::Static(s) => Box::new(s),
            Payload::String(s) => Box::new(s),
            // Never poisoned: nothing runs while it is locked.
            Payload::Other(payload) => payload.into_inner().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Resumes unwinding with the original payload.
    ///
    /// # Panics
    ///
    /// Always: that is what it is for.
    ///
    /// # Examples
    ///
    /// ```should_panic
    /// # futures::executor::block_on(async {
    /// let mut out = awaitkit::gather_settled([async { panic!("boom") }]).await;
    /// out.pop().unwrap().unwrap_err().resume();
    /// # });
    /// ```
    pub fn resume(self) -> ! {
        std::panic::resume_unwind(self.into_payload())
    }
}

impl fmt::Debug for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Panicked")
            .field(&self.message().unwrap_or("<non-string payload>"))
            .finish()
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(m) => write!(f, "future panicked: {m}"),
            None => f.write_str("future panicked"),
        }
    }
}

impl std::error::Error for Panicked {}

/// Runs every future to the end and collects each outcome in input order,
/// capturing panics as [`Panicked`] values — Python's
/// `gather(..., return_exceptions=True)`, without spawning anything.
///
/// It never short-circuits: a panicking child is dropped and recorded, and
/// the others keep running.
///
/// # Cancel safety
///
/// Dropping the [`GatherSettled`] drops every unfinished child synchronously.
///
/// # Panics
///
/// Panics while polling children are captured, and so are panics raised
/// while dropping a finished child (right after it completed or panicked):
/// that child's outcome is then a [`Panicked`] (the first of its panics),
/// and every other outcome is kept. Only dropping the [`GatherSettled`]
/// itself before it completes lets a destructor's panic propagate (after
/// every unfinished child was dropped). Polling after completion panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let out = awaitkit::gather_settled([
///     Box::pin(async { 1 }) as std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>,
///     Box::pin(async { panic!("boom") }),
/// ])
/// .await;
/// assert_eq!(*out[0].as_ref().unwrap(), 1);
/// assert_eq!(out[1].as_ref().unwrap_err().message(), Some("boom"));
/// # });
/// ```
pub fn gather_settled<I>(futures: I) -> GatherSettled<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    GatherSettled {
        engine: Engine::from_iter(futures),
        outputs: Vec::new(),
        finished: false,
        poisoned: false,
    }
}

/// Future for the [`gather_settled`] function.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they and their
/// outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let settled: awaitkit::GatherSettled<_> = awaitkit::gather_settled([std::future::ready(1)]);
/// assert_eq!(settled.await.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [1]);
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct GatherSettled<F: Future> {
    engine: Engine<F>,
    /// Outcomes by input index; filled as children finish.
    outputs: Vec<Option<Result<F::Output, Panicked>>>,
    finished: bool,
    poisoned: bool,
}

// Outputs are never pinned; children are pinned inside the engine.
impl<F: Future> Unpin for GatherSettled<F> {}

impl<F: Future> Future for GatherSettled<F> {
    type Output = Vec<Result<F::Output, Panicked>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        crate::poison::assert_live(this.poisoned, this.finished, "GatherSettled");
        crate::poison::guarded(&mut this.poisoned, "GatherSettled", || {
            if this.outputs.is_empty() {
                this.outputs.resize_with(this.engine.running(), || None);
            }
            let mut pass = this.engine.pass(cx);
            let settle = |fut: Pin<&mut F>, cx: &mut Context<'_>| match catch_unwind(
                AssertUnwindSafe(|| fut.poll(cx)),
            ) {
                Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => Poll::Ready(Err(Panicked::new(payload))),
            };
            while let Some(done) = pass.next_with(settle, Some(settle_drop::<F::Output>)) {
                this.outputs[done.key] = Some(done.output);
            }
            if this.engine.running() > 0 {
                return Poll::Pending;
            }
            this.finished = true;
            let outputs = std::mem::take(&mut this.outputs);
            Poll::Ready(
                outputs
                    .into_iter()
                    .map(|o| o.expect("every child settled"))
                    .collect(),
            )
        })
    }
}

impl<F: Future> Drop for GatherSettled<F> {
    fn drop(&mut self) {
        // Children and collected outcomes are all user code to drop: each
        // on its own (a second panic while the first unwinds would abort).
        let mut panics = crate::unwind::Panics::default();
        panics.catch(|| self.engine.clear());
        panics.drop_all(std::mem::take(&mut self.outputs));
        panics.resume();
    }
}

/// The outcome of a settled child whose destructor panicked after it
/// finished: the first panic wins (a panic in `poll` stays; otherwise the
/// destructor's replaces the output, which is dropped, its own panic
/// discarded).
fn settle_drop<T>(
    outcome: Result<T, Panicked>,
    payload: Box<dyn std::any::Any + Send>,
) -> Result<T, Panicked> {
    match outcome {
        Ok(output) => {
            crate::unwind::contain(|| drop(output));
            Err(Panicked::new(payload))
        }
        Err(first) => {
            crate::unwind::discard(payload);
            Err(first)
        }
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: Future> FusedFuture for GatherSettled<F> {
    fn is_terminated(&self) -> bool {
        self.finished && !self.poisoned
    }
}

impl<F: Future> fmt::Debug for GatherSettled<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatherSettled")
            .field("running", &self.engine.running())
            .finish_non_exhaustive()
    }
}
