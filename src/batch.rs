//! `process_batch`: run an async function over many items with a
//! concurrency limit, results in input order, with progress reporting.

#![forbid(unsafe_code)]

use crate::RateLimiter;
use crate::engine::Engine;
use crate::rate_limiter::RateAcquire;
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::unwind::{Panics, after_dropping};
use futures_core::Stream;
use futures_core::stream::FusedStream;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs `f` over every item with at most `limit` calls in flight, and
/// resolves to their outputs **in input order** — a batch
/// processor: `asyncio.gather` of every item, each under
/// `async with semaphore:`.
///
/// * **Sliding window** (the default): a new item starts as soon as one
///   finishes, so `limit` calls are in flight while items remain.
///   [`fixed_batches`](Batch::fixed_batches) runs groups of `limit` items
///   instead, each only after the whole previous group has finished, with
///   an optional [pause](Batch::pause_between) between groups.
/// * **Lazy**: items are pulled from the iterator, and `f` is called, only
///   when a slot is free; never more than `limit` calls are alive.
/// * **Settled or fail-fast**: the output is every child's output (a
///   `Vec<Result<T, E>>` for fallible children: every result, settled);
///   [`fail_fast`](Batch::fail_fast) stops at the first `Err` instead.
/// * **Rate limit**: [`rate_limit`](Batch::rate_limit) takes one grant of a
///   [`RateLimiter`] right before each call starts.
/// * **Progress**: [`on_progress`](Batch::on_progress) is called with a
///   [`Progress`] (done, total, elapsed, rate, ETA) after each completion;
///   with the `indicatif` feature, `progress_bar` draws it like
///   `tqdm.asyncio`.
///
/// * **Streams**: [`process_batch_stream`] takes the items from a
///   [`Stream`] instead; [`ordered`](Batch::ordered) and
///   [`unordered`](Batch::unordered) hand the outputs out as a stream, as
///   they become available, instead of one `Vec` at the end.
///
/// Nothing is spawned: the calls run inside the returned [`Batch`], each
/// with its own waker, polled only when it woke. An empty input resolves to
/// an empty `Vec` on the first poll.
///
/// [`Batch::try_new`] returns an error instead of panicking for a zero
/// `limit`; `usize::MAX` means "no limit".
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Cancel safety
///
/// Dropping the [`Batch`] drops every call in flight, the outputs collected
/// so far and the items not yet started, and gives back a rate-limit grant
/// it was waiting for.
///
/// # Panics
///
/// If `limit` is zero (a batch that could never start anything). A panic in
/// `f`, in a call or in the progress callback propagates out of `poll`;
/// polling again after that panics, as for an `async fn` that panicked.
/// Polling after completion panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// async fn fetch(id: u32) -> String { format!("page {id}") }
///
/// // At most 10 fetches at a time; results in input order.
/// let pages = awaitkit::process_batch(1..=100, 10, fetch).await;
/// assert_eq!(pages.len(), 100);
/// assert_eq!(pages[41], "page 42");
/// # });
/// ```
#[track_caller]
pub fn process_batch<I, F, Fut>(items: I, limit: usize, f: F) -> Batch<'static, I::IntoIter, F, Fut>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    Batch::try_new(items, limit, f).unwrap_or_else(|e| panic!("process_batch: {e}"))
}

/// [`process_batch`] over the items of a [`Stream`]: runs `f` over every
/// item with at most `limit` calls in flight, pulling items **lazily** —
/// the stream is polled only when a call may start (a free slot, and the
/// rate-limit grant if there is a limiter), so no more items are pulled than
/// can start. Everything else is [`Batch`]'s: the builder methods
/// ([`fail_fast`](Batch::fail_fast), [`rate_limit`](Batch::rate_limit),
/// [`on_progress`](Batch::on_progress), [`fixed_batches`](Batch::fixed_batches),
/// …), and `.await` for a `Vec` in input order, or [`ordered`](Batch::ordered)
/// / [`unordered`](Batch::unordered) for a stream of the outputs.
///
/// The stream is polled with the batch's waker: a stream that has no item
/// yet (`Pending`) wakes the batch when it has one, and meanwhile the calls
/// in flight keep running and finished ones are reported. Once the stream
/// returned `None` it is never polled again. [`Progress::total`] is the
/// stream's size hint when it is exact, and otherwise unknown until the
/// stream ends.
///
/// [`Batch::try_from_stream`] returns an error instead of panicking for a
/// zero `limit`.
///
/// # Cancel safety
///
/// Dropping the batch drops the stream (with any item pulled and not yet
/// started), every call in flight and every output not handed out, each
/// once, and gives back a rate-limit grant it was waiting for.
///
/// # Panics
///
/// If `limit` is zero. A panic in the stream's `poll_next`, in `f`, in a
/// call or in the progress callback propagates out of `poll`; polling again
/// after that panics. Polling the `Batch` future after completion panics.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// // Ids arriving over time (a channel, a paginated API, a file's lines...).
/// let ids = futures::stream::iter(1..=20u32);
/// let names = awaitkit::process_batch_stream(ids, 4, |id| async move { format!("user {id}") })
///     .ordered() // outputs as they become available, in input order
///     .collect::<Vec<_>>()
///     .await;
/// assert_eq!(names.len(), 20);
/// assert_eq!(names[0], "user 1");
/// # });
/// ```
#[track_caller]
pub fn process_batch_stream<S, F, Fut>(
    stream: S,
    limit: usize,
    f: F,
) -> Batch<'static, StreamItems<S>, F, Fut>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    Batch::try_from_stream(stream, limit, f).unwrap_or_else(|e| panic!("process_batch_stream: {e}"))
}

/// A batch configuration that can never run, rejected at construction.
///
/// # Examples
///
/// ```
/// use awaitkit::{Batch, BatchConfigError};
/// let err = Batch::try_new([1, 2], 0, |i: i32| async move { i }).unwrap_err();
/// assert_eq!(err, BatchConfigError::ZeroLimit);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchConfigError {
    /// The concurrency limit was zero: nothing could ever start.
    ZeroLimit,
}

impl fmt::Display for BatchConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchConfigError::ZeroLimit => f.write_str("the concurrency limit must be at least 1"),
        }
    }
}

impl std::error::Error for BatchConfigError {}

/// How far a [`Batch`] has got, handed to its
/// [`on_progress`](Batch::on_progress) callback after each completion.
///
/// # Examples
///
/// ```
/// use awaitkit::Progress;
/// use std::sync::Mutex;
/// # futures::executor::block_on(async {
/// let seen = Mutex::new(Vec::new());
/// awaitkit::process_batch(0..4, 2, |i| async move { i })
///     .on_progress(|p: &Progress| seen.lock().unwrap().push((p.done, p.total)))
///     .await;
/// assert_eq!(seen.into_inner().unwrap(), [(1, Some(4)), (2, Some(4)), (3, Some(4)), (4, Some(4))]);
/// # });
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished so far.
    pub done: usize,
    /// How many items there are, when known: from the iterator's (or the
    /// stream's) size hint when it is exact (`Vec`, arrays, ranges, most
    /// adapters of those, `stream::iter` over them), otherwise — a filtered
    /// iterator, a channel — `None` until the source has run out, then the
    /// count. A batch that reports progress pulls the next item as soon as
    /// a slot its window counts frees, so the reports after the last item
    /// was pulled know the total.
    pub total: Option<usize>,
    /// Calls in flight right now.
    pub in_flight: usize,
    /// Time since the batch was first polled, on the batch's [`Timer`].
    pub elapsed: Duration,
    /// Items finished per second so far (`done / elapsed`); `None` while no
    /// time has passed on the batch's clock.
    pub rate: Option<f64>,
    /// Estimated time left at the rate so far
    /// (`elapsed × remaining / done`); `None` while the total is unknown.
    pub eta: Option<Duration>,
}

impl Progress {
    fn new(done: usize, total: Option<usize>, in_flight: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let rate = (secs > 0.0).then(|| done as f64 / secs);
        let eta = total.map(|total| {
            let remaining = total.saturating_sub(done);
            if remaining == 0 {
                return Duration::ZERO;
            }
            // `done >= 1`: progress is reported after a completion.
            elapsed
                .as_nanos()
                .checked_mul(remaining as u128)
                .map_or(Duration::MAX, |n| nanos(n / done.max(1) as u128))
        });
        Progress {
            done,
            total,
            in_flight,
            elapsed,
            rate,
            eta,
        }
    }
}

/// A duration from a nanosecond count, saturating at [`Duration::MAX`].
fn nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(n / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (n % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// Where a [`Batch`] pulls its items from: any [`Iterator`] (what
/// [`process_batch`] takes), or a [`Stream`] wrapped in [`StreamItems`]
/// (what [`process_batch_stream`] takes). Sealed: implemented for exactly
/// those two.
///
/// # Examples
///
/// ```
/// fn is_source<S: awaitkit::BatchSource>(_: &S) {}
/// is_source(&(0..3));
/// is_source(&awaitkit::StreamItems::new(futures::stream::iter(0..3)));
/// ```
pub trait BatchSource: sealed::Sealed {
    /// The items handed to the batch's function.
    type Item;

    /// The next item: `Ready(None)` once there are no more, `Pending` (with
    /// `cx` registered) when a stream has none yet.
    #[doc(hidden)]
    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::Item>>;

    /// Bounds on the number of items left, as [`Iterator::size_hint`].
    #[doc(hidden)]
    fn items_hint(&self) -> (usize, Option<usize>);
}

mod sealed {
    pub trait Sealed {}
    impl<I: Iterator> Sealed for I {}
    impl<S: futures_core::Stream> Sealed for super::StreamItems<S> {}
}

impl<I: Iterator> BatchSource for I {
    type Item = I::Item;

    fn poll_next_item(&mut self, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.next())
    }

    fn items_hint(&self) -> (usize, Option<usize>) {
        self.size_hint()
    }
}

/// The items of a [`Stream`], as the input of a [`Batch`] (see
/// [`process_batch_stream`]). The stream is kept on the heap (one
/// allocation), so it need not be `Unpin`; it is polled only from the
/// batch's `poll`, with the batch's waker, and never again once it returned
/// `None`.
///
/// # Examples
///
/// ```
/// use awaitkit::{Batch, StreamItems};
/// # futures::executor::block_on(async {
/// let items = StreamItems::new(futures::stream::iter(["a", "b"]));
/// let batch: Batch<'_, StreamItems<_>, _, _> =
///     Batch::try_from_stream(items.into_inner(), 2, |s| async move { s.len() }).unwrap();
/// assert_eq!(batch.await, [1, 1]);
/// # });
/// ```
pub struct StreamItems<S> {
    stream: Pin<Box<S>>,
}

impl<S: Stream> StreamItems<S> {
    /// Wraps `stream` (boxing it).
    ///
    /// # Examples
    ///
    /// See [`StreamItems`].
    pub fn new(stream: S) -> Self {
        StreamItems {
            stream: Box::pin(stream),
        }
    }

    /// The stream back (still boxed, since it may have been polled).
    ///
    /// # Examples
    ///
    /// See [`StreamItems`].
    pub fn into_inner(self) -> Pin<Box<S>> {
        self.stream
    }
}

impl<S: Stream> BatchSource for StreamItems<S> {
    type Item = S::Item;

    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.stream.as_mut().poll_next(cx)
    }

    fn items_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

impl<S> fmt::Debug for StreamItems<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamItems").finish_non_exhaustive()
    }
}

/// Makes sure the next item is in `next`, pulling it from `items`:
/// `Ready(false)` (and the total known: `started`) once the source has run
/// out, `Pending` while a stream has no item yet (`cx` is registered).
fn poll_peek<I: BatchSource>(
    items: &mut Option<I>,
    next: &mut Option<I::Item>,
    total: &mut Option<usize>,
    started: usize,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    if next.is_some() {
        return Poll::Ready(true);
    }
    let Some(source) = items.as_mut() else {
        return Poll::Ready(false);
    };
    match source.poll_next_item(cx) {
        Poll::Ready(Some(item)) => {
            *next = Some(item);
            Poll::Ready(true)
        }
        Poll::Ready(None) => {
            // Never polled again: a stream that would yield after `None`
            // is not asked.
            *items = None;
            *total = Some(started);
            Poll::Ready(false)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// What a [`Batch`] does with the outputs: collects them (the future),
/// or hands them out in input order or in completion order (the streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Collect,
    Ordered,
    Unordered,
}

/// What one poll of a batch produced.
enum Event<O> {
    /// An output for a stream: its input index and value.
    Item(usize, O),
    /// The output that `failed` picked (fail-fast), everything else dropped.
    Failed(usize, O),
}

/// Fixed batches (with their pause) or a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sliding,
    Fixed { pause: Option<Duration> },
}

/// Future for the [`process_batch`] function: configure it with the builder
/// methods, then `.await` it.
///
/// Resolves to `Vec<Fut::Output>` in input order; after
/// [`fail_fast`](Batch::fail_fast) (a [`TryBatch`]) to `Result<Vec<T>, E>`.
///
/// `Unpin` whatever the calls are (they are pinned inside), `Send`/`Sync`
/// when the iterator, items, closures, calls and outputs are. The type
/// parameters after `Fut` are set by the builder methods: `P` by
/// [`on_progress`](Batch::on_progress), `T` by
/// [`with_timer`](Batch::with_timer), `'r` and `L` by
/// [`rate_limit`](Batch::rate_limit), `FAIL_FAST` by
/// [`fail_fast`](Batch::fail_fast).
///
/// # Cancel safety
///
/// Dropping it drops every call in flight, the outputs collected so far and
/// the items not yet started, and gives back a rate-limit grant it was
/// waiting for.
///
/// # Panics
///
/// A panic in `f`, in a call or in the progress callback propagates out of
/// `poll`; polling again after that panics. Polling after completion
/// panics.
///
/// # Examples
///
/// ```
/// use awaitkit::Batch;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let batch: Batch<'_, _, _, _> = awaitkit::process_batch(vec!["a", "b", "c"], 2, |s| async move {
///     s.to_uppercase()
/// });
/// // Groups of 2, 1 ms apart.
/// let out = batch.pause_between(Duration::from_millis(1)).await;
/// assert_eq!(out, ["A", "B", "C"]);
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Batch<
    'r,
    I,
    F,
    Fut,
    P = fn(&Progress),
    T = DefaultTimer,
    L = DefaultTimer,
    const FAIL_FAST: bool = false,
> where
    I: BatchSource,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    /// Everything that does not name `P`, `T`, `L` or `FAIL_FAST`.
    core: Core<I, F, Fut>,
    /// The pause between fixed batches, and the batch's clock (`.timer()`).
    pause: BoxedDeadline<T>,
    rate: Option<Rate<'r, L>>,
    on_progress: Option<P>,
}

/// Drops every part (the calls, the items not started, the outputs not
/// handed out, the function, the rate grant, the progress callback, the
/// pause's sleep and the timer), each even if another's destructor panics
/// (none of them during that panic's unwind), then propagates the first
/// panic.
impl<I, F, Fut, P, T, L, const FAIL_FAST: bool> Drop for Batch<'_, I, F, Fut, P, T, L, FAIL_FAST>
where
    I: BatchSource,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    fn drop(&mut self) {
        let mut panics = self.core.release();
        panics.catch(|| self.core.f = None);
        let rate = self.rate.take();
        panics.catch(move || drop(rate));
        let on_progress = self.on_progress.take();
        panics.catch(move || drop(on_progress));
        self.pause.release(&mut panics);
        panics.resume();
    }
}

/// The state of a [`Batch`] that does not name its progress callback, timer,
/// rate limiter or fail-fast mode: the builder methods that change those
/// move it over in one piece.
struct Core<I: BatchSource, F, Fut: Future> {
    /// The calls in flight, keyed by input index.
    engine: Engine<Fut>,
    /// The items not yet pulled; `None` once the source ran out.
    items: Option<I>,
    /// An item pulled but not started yet (waiting for its rate grant, or
    /// pulled to learn whether another fixed batch follows).
    next_item: Option<I::Item>,
    /// The function making each call (`None` once dropped).
    f: Option<F>,
    /// What happens to the outputs.
    out: Out,
    /// One slot per item started and not yet handed out (from input index
    /// `base` on), filled as calls finish. Unused in completion order.
    results: VecDeque<Option<Fut::Output>>,
    /// The input index of `results[0]`.
    base: usize,
    /// How many items have started (the next input index).
    next_key: usize,
    limit: usize,
    mode: Mode,
    /// Fixed batches: how many items the current batch may still start.
    batch_left: usize,
    /// Fixed batches: how many batches have started.
    batches: usize,
    /// Waiting for the pause between fixed batches.
    pausing: bool,
    #[cfg(feature = "indicatif")]
    bar: Option<bar::Bar>,
    /// When the batch was first polled (read only if progress is reported).
    started: Option<Instant>,
    done: usize,
    total: Option<usize>,
    finished: bool,
    poisoned: bool,
}

/// A [`Batch`]'s rate limit: the limiter, and the grant being waited for.
struct Rate<'r, L: Timer> {
    limiter: &'r RateLimiter<L>,
    grant: Option<RateAcquire<'r, L>>,
}

/// [`Batch`] after [`fail_fast`](Batch::fail_fast): resolves to
/// `Result<Vec<T>, E>`, stopping at the first `Err`.
///
/// # Examples
///
/// ```
/// use awaitkit::TryBatch;
/// # futures::executor::block_on(async {
/// let parse: TryBatch<'_, _, _, _> =
///     awaitkit::process_batch(["1", "2"], 2, |s| async move { s.parse::<u8>() }).fail_fast();
/// assert_eq!(parse.await, Ok(vec![1, 2]));
/// # });
/// ```
pub type TryBatch<'r, I, F, Fut, P = fn(&Progress), T = DefaultTimer, L = DefaultTimer> =
    Batch<'r, I, F, Fut, P, T, L, true>;

// Nothing inside is ever pinned through the `Batch`: the calls live in the
// engine's heap chunks, the pause's sleep and the rate grant are boxed or
// `Unpin`, and the rest is plain data.
impl<I, F, Fut, P, T, L, const FF: bool> Unpin for Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: BatchSource,
    Fut: Future,
    T: Timer,
    L: Timer,
{
}

impl<I, F, Fut> Batch<'static, I, F, Fut>
where
    I: Iterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    /// [`process_batch`], returning an error instead of panicking for a
    /// zero `limit`.
    ///
    /// # Errors
    ///
    /// [`BatchConfigError::ZeroLimit`] if `limit` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Batch;
    /// # futures::executor::block_on(async {
    /// let double = |i: u32| async move { i * 2 };
    /// assert!(Batch::try_new(0..3, 0, double).is_err());
    /// assert_eq!(Batch::try_new(0..3, 1, double).unwrap().await, [0, 2, 4]);
    /// # });
    /// ```
    pub fn try_new(
        items: impl IntoIterator<IntoIter = I>,
        limit: usize,
        f: F,
    ) -> Result<Self, BatchConfigError> {
        if limit == 0 {
            return Err(BatchConfigError::ZeroLimit);
        }
        Ok(Batch::from_source(items.into_iter(), limit, f))
    }
}

impl<S, F, Fut> Batch<'static, StreamItems<S>, F, Fut>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    /// [`process_batch_stream`], returning an error instead of panicking
    /// for a zero `limit`.
    ///
    /// # Errors
    ///
    /// [`BatchConfigError::ZeroLimit`] if `limit` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::Batch;
    /// # futures::executor::block_on(async {
    /// let items = || futures::stream::iter(0..3u32);
    /// let double = |i: u32| async move { i * 2 };
    /// assert!(Batch::try_from_stream(items(), 0, double).is_err());
    /// assert_eq!(Batch::try_from_stream(items(), 2, double).unwrap().await, [0, 2, 4]);
    /// # });
    /// ```
    pub fn try_from_stream(stream: S, limit: usize, f: F) -> Result<Self, BatchConfigError> {
        if limit == 0 {
            return Err(BatchConfigError::ZeroLimit);
        }
        Ok(Batch::from_source(StreamItems::new(stream), limit, f))
    }
}

impl<I, F, Fut> Batch<'static, I, F, Fut>
where
    I: BatchSource,
    Fut: Future,
{
    /// A batch over `items` (`limit` already checked).
    fn from_source(items: I, limit: usize, f: F) -> Self {
        let (lower, upper) = items.items_hint();
        let total = (upper == Some(lower)).then_some(lower);
        // Room for every output up front, capped at 1 MiB: an endless
        // source (`0..`) hints `usize::MAX` and is only partly consumed.
        let budget = (1 << 20) / size_of::<Option<Fut::Output>>().max(1);
        Batch {
            core: Core {
                items: Some(items),
                f: Some(f),
                results: VecDeque::with_capacity(lower.min(budget)),
                limit,
                total,
                ..Core::empty()
            },
            pause: BoxedDeadline::new(DefaultTimer, None),
            rate: None,
            on_progress: None,
        }
    }
}

impl<'r, I, F, Fut, P, T, L, const FF: bool> Batch<'r, I, F, Fut, P, T, L, FF>
where
    I: BatchSource,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    /// Runs fixed batches instead of a sliding window: `limit` items start,
    /// and the next `limit` start only once **all** of them have finished
    /// (`asyncio.gather` per chunk, in a loop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let log = Mutex::new(Vec::new());
    /// let log = &log;
    /// awaitkit::process_batch(0..4, 2, |i| async move {
    ///     log.lock().unwrap().push(format!("start {i}"));
    ///     futures_timer::Delay::new(Duration::from_millis(i)).await;
    ///     log.lock().unwrap().push(format!("end {i}"));
    /// })
    /// .fixed_batches()
    /// .await;
    /// // 2 and 3 start only after 0 and 1 both ended.
    /// let log = log.lock().unwrap();
    /// let (first, second) = log.split_at(4);
    /// assert!(first.iter().all(|e| e.ends_with('0') || e.ends_with('1')), "{log:?}");
    /// assert!(second.iter().all(|e| e.ends_with('2') || e.ends_with('3')), "{log:?}");
    /// # });
    /// ```
    pub fn fixed_batches(mut self) -> Self {
        if self.core.mode == Mode::Sliding {
            self.core.mode = Mode::Fixed { pause: None };
        }
        self
    }

    /// Runs fixed batches (see [`fixed_batches`](Batch::fixed_batches))
    /// and waits `pause` between the end of one batch and the start of the
    /// next (`await asyncio.sleep(delay)` between chunks), on the batch's
    /// [`Timer`]. There is no pause before the first batch or after the
    /// last. With a [stream](process_batch_stream) as the source, the pause
    /// starts once the batch has ended and the stream has handed over the
    /// next batch's first item: a stream that was idle meanwhile adds its
    /// wait to the pause.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let start = Instant::now();
    /// let out = awaitkit::process_batch(0..6, 2, |i| async move { i })
    ///     .pause_between(Duration::from_millis(5))
    ///     .await;
    /// assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    /// assert!(start.elapsed() >= Duration::from_millis(10)); // 3 batches, 2 pauses
    /// # });
    /// ```
    pub fn pause_between(mut self, pause: Duration) -> Self {
        self.core.mode = Mode::Fixed { pause: Some(pause) };
        self
    }

    /// Takes one grant of `limiter` right before each call starts: at most
    /// `limiter`'s quota of calls start per period, and at most `limit` run
    /// at a time. The item is pulled first, so no grant is taken for an
    /// item that does not exist (with a stream input, that one item waits
    /// for its grant pulled).
    ///
    /// This limits item **starts**, not the retries a call makes. To
    /// rate-limit every attempt, not only item starts, give the limiter to
    /// the retry inside `f` with [`Retry::rate_limit`](crate::Retry::rate_limit):
    /// each attempt then takes its own grant, and its
    /// [attempt timeout](crate::RetryPolicy::attempt_timeout) starts only
    /// once the grant came, so no attempt times out from queueing:
    ///
    /// ```
    /// use awaitkit::{Backoff, RateLimiter, RetryPolicy};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(50, Duration::from_secs(1));
    /// let policy = RetryPolicy::new(3)
    ///     .backoff(Backoff::none())
    ///     .attempt_timeout(Duration::from_millis(500));
    /// let out = awaitkit::process_batch(0..10u32, 4, |i| {
    ///     policy.retry(move || async move { Ok::<_, ()>(i) }).rate_limit(&limiter)
    /// })
    /// .await;
    /// assert_eq!(out.len(), 10);
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the batch while it waits for a grant gives its place back
    /// to the limiter's next waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use std::time::{Duration, Instant};
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(2, Duration::from_millis(20));
    /// let start = Instant::now();
    /// let out = awaitkit::process_batch(0..4, 10, |i| async move { i })
    ///     .rate_limit(&limiter)
    ///     .await;
    /// assert_eq!(out, [0, 1, 2, 3]);
    /// assert!(start.elapsed() >= Duration::from_millis(20)); // 2 now, 2 a period later
    /// # });
    /// ```
    pub fn rate_limit<'a, M: Timer>(
        mut self,
        limiter: &'a RateLimiter<M>,
    ) -> Batch<'a, I, F, Fut, P, T, M, FF> {
        let next = Batch {
            core: std::mem::replace(&mut self.core, Core::empty()),
            pause: self.pause.take(),
            rate: Some(Rate {
                limiter,
                grant: None,
            }),
            on_progress: self.on_progress.take(),
        };
        // A grant being waited for (if polled already) goes back.
        let old = self.rate.take();
        after_dropping(next, move |panics| panics.catch(move || drop(old)))
    }

    /// Calls `callback` with a [`Progress`] after each completion (once per
    /// item, `done` counting up by one each time), from inside the batch's
    /// `poll`. Not called for an empty input.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let mut last = None;
    /// awaitkit::process_batch(0..10, 3, |i| async move { i })
    ///     .on_progress(|p| {
    ///         last = Some((p.done, p.total, p.eta));
    ///     })
    ///     .await;
    /// assert_eq!(last, Some((10, Some(10), Some(std::time::Duration::ZERO))));
    /// # });
    /// ```
    pub fn on_progress<Q: FnMut(&Progress)>(
        mut self,
        callback: Q,
    ) -> Batch<'r, I, F, Fut, Q, T, L, FF> {
        let next = Batch {
            core: std::mem::replace(&mut self.core, Core::empty()),
            pause: self.pause.take(),
            rate: self.rate.take(),
            on_progress: Some(callback),
        };
        let old = self.on_progress.take();
        after_dropping(next, move |panics| panics.catch(move || drop(old)))
    }

    /// Uses `timer` for the pause between fixed batches and for the clock
    /// behind [`Progress::elapsed`], rate and ETA (the default is
    /// [`DefaultTimer`]). A rate limiter keeps its own timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::process_batch([1, 2], 1, |i| async move { i })
    ///     .pause_between(Duration::from_millis(1))
    ///     .with_timer(FuturesTimer)
    ///     .await;
    /// assert_eq!(out, [1, 2]);
    /// # });
    /// ```
    pub fn with_timer<U: Timer>(mut self, timer: U) -> Batch<'r, I, F, Fut, P, U, L, FF> {
        // A pause under way, and the elapsed time, start over on the new
        // clock.
        self.core.pausing = false;
        self.core.started = None;
        let next = Batch {
            core: std::mem::replace(&mut self.core, Core::empty()),
            pause: BoxedDeadline::new(timer, None),
            rate: self.rate.take(),
            on_progress: self.on_progress.take(),
        };
        after_dropping(next, |panics| self.pause.release(panics))
    }

    /// Draws the progress as a bar on the terminal, like `tqdm.asyncio`:
    /// `42%|████▌     | 42/100 [00:03<00:04, 12.51it/s]` (a counter when the
    /// total is unknown). Elapsed time, rate and ETA are read on the
    /// batch's [`Timer`]. Nothing is drawn when stderr is not a terminal.
    /// Works alongside [`on_progress`](Batch::on_progress).
    ///
    /// Available with the `indicatif` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::process_batch(0..50, 8, |i| async move { i * i })
    ///     .progress_bar()
    ///     .await;
    /// assert_eq!(out[7], 49);
    /// # });
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn progress_bar(mut self) -> Self {
        self.core.bar = Some(bar::Bar::styled(indicatif::ProgressBar::no_length()));
        self
    }

    /// Reports the progress into `bar`, an `indicatif` bar you styled or
    /// placed yourself (in a `MultiProgress`, hidden in tests, …): the batch
    /// sets its length (when known) and position, and finishes it at the
    /// end (abandons it on a fail-fast error). Its style is left alone, so
    /// its `{eta}` and `{per_sec}` use indicatif's own clock.
    ///
    /// Available with the `indicatif` feature. Name the bar's type through
    /// [`awaitkit::indicatif`](crate::indicatif), the version this crate
    /// uses, so a different `indicatif` in your own `Cargo.toml` cannot clash.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::indicatif::ProgressBar;
    /// # futures::executor::block_on(async {
    /// let bar = ProgressBar::hidden();
    /// awaitkit::process_batch(0..20, 4, |i| async move { i })
    ///     .with_progress_bar(bar.clone())
    ///     .await;
    /// assert_eq!((bar.position(), bar.length()), (20, Some(20)));
    /// assert!(bar.is_finished());
    /// # });
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress_bar(mut self, bar: indicatif::ProgressBar) -> Self {
        self.core.bar = Some(bar::Bar::custom(bar));
        self
    }

    /// The concurrency limit.
    ///
    /// # Examples
    ///
    /// ```
    /// let batch = awaitkit::process_batch(0..3, 2, |i| async move { i });
    /// assert_eq!(batch.limit(), 2);
    /// ```
    pub fn limit(&self) -> usize {
        self.core.limit
    }

    /// How many calls are in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// let mut batch = awaitkit::process_batch(0..5, 2, |_| futures::future::pending::<()>());
    /// assert_eq!(batch.in_flight(), 0); // nothing starts before the first poll
    /// assert!((&mut batch).now_or_never().is_none());
    /// assert_eq!(batch.in_flight(), 2);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.core.engine.running()
    }

    /// How many items have finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// let mut batch = awaitkit::process_batch([true, false], 2, |ready| async move {
    ///     if !ready { futures::future::pending::<()>().await }
    /// });
    /// assert!((&mut batch).now_or_never().is_none());
    /// assert_eq!(batch.completed(), 1);
    /// ```
    pub fn completed(&self) -> usize {
        self.core.done
    }

    /// Hands the outputs out as a [`Stream`], **in input order**, each as
    /// soon as it and every earlier one have finished — `buffered(limit)`
    /// over the calls, with the batch's limit, rate limit, progress and
    /// fail-fast.
    ///
    /// The window counts the outputs waiting for an earlier item too: at
    /// most `limit` items are between the oldest not yet handed out and the
    /// newest started (as `futures::StreamExt::buffered` bounds them), so
    /// memory stays `O(limit)` for any number of items and a slow consumer
    /// slows the batch down. With [`fixed_batches`](Batch::fixed_batches),
    /// the next group starts once the previous one was handed out.
    ///
    /// After [`fail_fast`](Batch::fail_fast) (the order of the two calls
    /// does not matter), the first `Err` — in completion order — ends the
    /// stream: every call in flight and every output waiting for an earlier
    /// item is dropped, the `Err` is yielded, and then `None`.
    ///
    /// Call it last, after the other builder methods.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream drops every call in flight, every output not
    /// handed out and the items not yet started, and gives back a
    /// rate-limit grant it was waiting for. An output is handed out exactly
    /// once: none is lost by dropping the stream between two `next`s.
    ///
    /// # Panics
    ///
    /// If the batch has already been polled. The stream's own polls panic
    /// as the batch's do (see [`BatchOrdered`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let slow_first = |i: u64| async move {
    ///     futures_timer::Delay::new(Duration::from_millis(if i == 0 { 20 } else { 1 })).await;
    ///     i * 10
    /// };
    /// let out: Vec<u64> = awaitkit::process_batch(0..5, 3, slow_first).ordered().collect().await;
    /// assert_eq!(out, [0, 10, 20, 30, 40]); // input order, although 0 finished last
    /// # });
    /// ```
    #[track_caller]
    pub fn ordered(self) -> BatchOrdered<'r, I, F, Fut, P, T, L, FF> {
        BatchOrdered {
            batch: self.into_stream(Out::Ordered, "ordered"),
        }
    }

    /// Hands the outputs out as a [`Stream`] of `(input index, output)`,
    /// **in completion order**, each as soon as it finished — aiometer's
    /// `amap`, or `buffer_unordered(limit)` with indices, with the batch's
    /// limit, rate limit, progress and fail-fast. A new item starts as soon
    /// as a call finishes.
    ///
    /// After [`fail_fast`](Batch::fail_fast), the first `(index, Err(e))`
    /// ends the stream: every call in flight is dropped, the error is
    /// yielded with its index, and then `None`.
    ///
    /// Call it last, after the other builder methods.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream drops every call in flight and the items not yet
    /// started, and gives back a rate-limit grant it was waiting for. Each
    /// output is handed out exactly once, by the `next` that saw its call
    /// finish.
    ///
    /// # Panics
    ///
    /// If the batch has already been polled. The stream's own polls panic
    /// as the batch's do (see [`BatchUnordered`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let mut done: Vec<(usize, char)> = awaitkit::process_batch("abc".chars(), 2, |c| async move {
    ///     c.to_ascii_uppercase()
    /// })
    /// .unordered()
    /// .collect()
    /// .await;
    /// done.sort();
    /// assert_eq!(done, [(0, 'A'), (1, 'B'), (2, 'C')]);
    /// # });
    /// ```
    #[track_caller]
    pub fn unordered(self) -> BatchUnordered<'r, I, F, Fut, P, T, L, FF> {
        BatchUnordered {
            batch: self.into_stream(Out::Unordered, "unordered"),
        }
    }

    /// Switches an unpolled batch to a stream output.
    #[track_caller]
    fn into_stream(mut self, out: Out, method: &str) -> Self {
        let core = &mut self.core;
        assert!(
            core.next_key == 0 && !core.finished && !core.poisoned,
            "`Batch::{method}` after the batch was polled"
        );
        core.out = out;
        // The stream forms hold at most `limit` outputs.
        core.results = VecDeque::new();
        self
    }
}

impl<'r, I, F, Fut, P, T, L, V, E> Batch<'r, I, F, Fut, P, T, L, false>
where
    I: BatchSource,
    Fut: Future<Output = Result<V, E>>,
    T: Timer,
    L: Timer,
{
    /// Stops at the first `Err`: the batch resolves to `Ok` with every value
    /// in input order, or to the first error (in completion order), returned
    /// from the very poll in which it appeared, after every other call in
    /// flight has been dropped and without starting any more items.
    ///
    /// Without it, a batch of fallible calls is *settled*: it runs every
    /// item and resolves to every `Result`.
    ///
    /// # Errors
    ///
    /// The first `Err` a call produced.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let check = |i: u32| async move { if i == 3 { Err(format!("item {i} failed")) } else { Ok(i) } };
    ///
    /// let first_error = awaitkit::process_batch(0..100, 4, check).fail_fast().await;
    /// assert_eq!(first_error, Err("item 3 failed".to_string()));
    ///
    /// let settled = awaitkit::process_batch(0..5, 4, check).await;
    /// assert_eq!(settled.iter().filter(|r| r.is_err()).count(), 1);
    /// # });
    /// ```
    pub fn fail_fast(mut self) -> TryBatch<'r, I, F, Fut, P, T, L> {
        Batch {
            core: std::mem::replace(&mut self.core, Core::empty()),
            pause: self.pause.take(),
            rate: self.rate.take(),
            on_progress: self.on_progress.take(),
        }
    }
}

impl<I: BatchSource, F, Fut: Future> Core<I, F, Fut> {
    /// A core with nothing to run (what a builder leaves behind in the
    /// batch it turns into another).
    fn empty() -> Self {
        Core {
            engine: Engine::new(),
            items: None,
            next_item: None,
            f: None,
            out: Out::Collect,
            results: VecDeque::new(),
            base: 0,
            next_key: 0,
            limit: 0,
            mode: Mode::Sliding,
            batch_left: 0,
            batches: 0,
            pausing: false,
            #[cfg(feature = "indicatif")]
            bar: None,
            started: None,
            done: 0,
            total: None,
            finished: false,
            poisoned: false,
        }
    }

    /// Makes sure the next item is in `next_item`: `Ready(false)` once the
    /// source has run out, `Pending` while a stream has none yet.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        poll_peek(
            &mut self.items,
            &mut self.next_item,
            &mut self.total,
            self.next_key,
            cx,
        )
    }

    /// The slots the window counts: calls in flight, plus (in input order)
    /// outputs waiting for an earlier item to be handed out.
    fn occupied(&self) -> usize {
        match self.out {
            Out::Ordered => self.results.len(),
            Out::Collect | Out::Unordered => self.engine.running(),
        }
    }

    /// Drops the calls, the items not started and the outputs not handed
    /// out, each even if another's destructor panics (none of them during
    /// that panic's unwind); returns the first panic.
    fn release(&mut self) -> Panics {
        let mut panics = Panics::default();
        panics.catch(|| self.engine.clear());
        panics.catch(|| self.next_item = None);
        panics.catch(|| self.items = None);
        panics.drop_all(std::mem::take(&mut self.results));
        panics
    }

    /// In input order: the next output, if it has finished.
    fn pop_head(&mut self) -> Option<(usize, Fut::Output)> {
        if self.out != Out::Ordered || !matches!(self.results.front(), Some(Some(_))) {
            return None;
        }
        let output = self.results.pop_front().flatten()?;
        let key = self.base;
        self.base += 1;
        Some((key, output))
    }

    /// Whether nothing is left: no call in flight, no item pulled or to
    /// pull, no output to hand out.
    fn exhausted(&self) -> bool {
        self.engine.running() == 0
            && self.next_item.is_none()
            && self.items.is_none()
            && (self.out == Out::Collect || self.results.is_empty())
    }

    /// The outputs, in input order.
    fn take_results(&mut self) -> std::collections::vec_deque::IntoIter<Option<Fut::Output>> {
        std::mem::take(&mut self.results).into_iter()
    }

    /// Items left to hand out by a stream: bounds, as
    /// [`Stream::size_hint`]; `fail_fast` streams may stop early.
    fn remaining_hint(&self, fail_fast: bool) -> (usize, Option<usize>) {
        if self.finished {
            return (0, Some(0));
        }
        let started = match self.out {
            Out::Ordered => self.results.len(),
            Out::Collect | Out::Unordered => self.engine.running(),
        };
        let known = started + usize::from(self.next_item.is_some());
        let (lower, upper) = match self.items.as_ref() {
            Some(items) => items.items_hint(),
            None => (0, Some(0)),
        };
        let upper = upper.and_then(|u| u.checked_add(known));
        if fail_fast {
            return (0, upper);
        }
        (lower.saturating_add(known), upper)
    }
}

impl<I, F, Fut, P, T, L, const FF: bool> Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: BatchSource,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    /// Whether anything reports progress (and so needs the clock).
    fn reports(&self) -> bool {
        #[cfg(feature = "indicatif")]
        if self.core.bar.is_some() {
            return true;
        }
        self.on_progress.is_some()
    }

    /// Starts calls while the mode allows, a grant is at hand and items
    /// remain. Returns how many started. When it stops for an item (a
    /// stream's), a grant or a pause, `cx` is registered to be woken.
    fn start(&mut self, cx: &mut Context<'_>) -> usize {
        let Batch {
            core,
            pause: deadline,
            rate,
            ..
        } = self;
        let mut started = 0;
        if core.finished {
            return 0;
        }
        loop {
            match core.mode {
                Mode::Sliding => {
                    if core.occupied() >= core.limit {
                        break;
                    }
                }
                Mode::Fixed { pause } => {
                    if core.batch_left == 0 {
                        // The next batch starts when the whole previous one
                        // has finished, an item exists, and the pause is over.
                        if core.occupied() > 0 || core.poll_peek(cx) != Poll::Ready(true) {
                            break;
                        }
                        if let (Some(pause), true) = (pause, core.batches > 0) {
                            if !core.pausing {
                                deadline.restart(Some(When::After(pause)));
                                core.pausing = true;
                            }
                            if deadline.poll(cx).is_pending() {
                                break;
                            }
                            core.pausing = false;
                        }
                        core.batches += 1;
                        core.batch_left = core.limit;
                    }
                }
            }
            if core.poll_peek(cx) != Poll::Ready(true) {
                break;
            }
            if let Some(rate) = rate.as_mut() {
                let limiter = rate.limiter;
                let grant = rate.grant.get_or_insert_with(|| limiter.acquire());
                if Pin::new(grant).poll(cx).is_pending() {
                    break;
                }
                rate.grant = None;
            }
            let item = core.next_item.take().expect("peeked above");
            let f = core.f.as_mut().expect("`f` is dropped only with the batch");
            let call = f(item);
            let key = core.next_key;
            core.next_key += 1;
            if core.out != Out::Unordered {
                core.results.push_back(None);
            }
            core.engine.push(call, key);
            if let Mode::Fixed { .. } = core.mode {
                core.batch_left -= 1;
            }
            started += 1;
        }
        started
    }

    /// Drops everything still running or waiting (fail-fast): the calls,
    /// the items and the outputs, then the grant, each even if another's
    /// destructor panics; returns the first panic.
    fn abort(&mut self) -> Panics {
        self.core.finished = true;
        let mut panics = self.core.release();
        if let Some(rate) = self.rate.as_mut() {
            panics.catch(|| rate.grant = None);
        }
        #[cfg(feature = "indicatif")]
        if let Some(bar) = self.core.bar.as_ref() {
            bar.abandon();
        }
        panics
    }

    /// One poll: start what may start, poll the woken calls once each,
    /// start more in the freed slots.
    ///
    /// * `Ready(None)`: every item is done (and, for the streams, handed
    ///   out).
    /// * `Ready(Some(Event::Failed(..)))`: an output `failed` picked
    ///   (fail-fast), after everything else was dropped.
    /// * `Ready(Some(Event::Item(..)))` (streams only): the next output in
    ///   the stream's order. The pass stops there; the woken calls it did
    ///   not reach are polled in the next poll.
    fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        failed: fn(&Fut::Output) -> bool,
    ) -> Poll<Option<Event<Fut::Output>>> {
        if self.core.started.is_none() && self.reports() {
            self.core.started = Some(self.pause.timer().now());
            #[cfg(feature = "indicatif")]
            if let Some(bar) = self.core.bar.as_mut() {
                bar.begin(self.core.total);
            }
        }
        // In input order, an output may be waiting from an earlier pass:
        // hand it out without polling anything (its slot frees for a start).
        if let Some(head) = self.core.pop_head() {
            // Starting runs user code (the source, `f`, the timer): if it
            // panics, the output is dropped before that panic propagates.
            let ((key, output), _) = crate::unwind::keeping(head, |_| self.start(cx));
            return Poll::Ready(Some(Event::Item(key, output)));
        }
        self.start(cx);
        let reports = self.reports();
        let Batch {
            core,
            pause,
            on_progress,
            ..
        } = self;
        let mut finished_any = false;
        let mut item = None;
        let mut failure = None;
        let mut pass = core.engine.pass(cx);
        while let Some(done) = pass.next() {
            pass.engine().release_slot(done.slot);
            if failed(&done.output) {
                failure = Some((done.key, done.output));
                break;
            }
            core.done += 1;
            finished_any = true;
            let stop = match core.out {
                Out::Collect => {
                    core.results[done.key - core.base] = Some(done.output);
                    false
                }
                Out::Ordered => {
                    core.results[done.key - core.base] = Some(done.output);
                    done.key == core.base
                }
                Out::Unordered => {
                    item = Some((done.key, done.output));
                    true
                }
            };
            if reports {
                // (User code runs here, the source and the progress
                // callback: if it panics, the output held for the stream
                // is dropped before that panic propagates.)
                let (held, ()) = crate::unwind::keeping(item.take(), |_| {
                    // A slot is free: learn whether items remain, so that the
                    // last reports know the total of a source without an exact
                    // size.
                    // Only when an item could start now: a slot the window
                    // counts must be free (in input order, an output waiting
                    // for an earlier item still holds its slot).
                    let in_flight = pass.engine().running();
                    let occupied = match core.out {
                        Out::Ordered => core.results.len(),
                        Out::Collect | Out::Unordered => in_flight,
                    };
                    let free = match core.mode {
                        Mode::Sliding => occupied < core.limit,
                        Mode::Fixed { .. } => occupied == 0,
                    };
                    if core.total.is_none() && free {
                        let _ = poll_peek(
                            &mut core.items,
                            &mut core.next_item,
                            &mut core.total,
                            core.next_key,
                            pass.cx(),
                        );
                    }
                    let elapsed = match core.started {
                        Some(start) => pause.timer().now().saturating_duration_since(start),
                        None => Duration::ZERO,
                    };
                    let progress = Progress::new(core.done, core.total, in_flight, elapsed);
                    #[cfg(feature = "indicatif")]
                    if let Some(bar) = core.bar.as_mut() {
                        bar.update(&progress);
                    }
                    if let Some(callback) = on_progress.as_mut() {
                        callback(&progress);
                    }
                });
                item = held;
            }
            if stop {
                break;
            }
        }
        // (The pass ends here.)
        if let Some((key, output)) = failure {
            // Fail fast: drop everything else first (if a destructor
            // panics, the failure is dropped outside that unwind, and the
            // panic propagates).
            let failure = crate::unwind::hand_back(self.abort(), (key, output));
            return Poll::Ready(Some(Event::Failed(failure.0, failure.1)));
        }
        let out = item.or_else(|| self.core.pop_head());
        if let Some(out) = out {
            // Calls started now are first polled on the next poll, which
            // the stream's consumer makes. (If starting panics, the output
            // is dropped before that panic propagates.)
            let ((key, output), _) = crate::unwind::keeping(out, |_| self.start(cx));
            return Poll::Ready(Some(Event::Item(key, output)));
        }
        // Calls started now are first polled on the next poll, this one has
        // polled its share: ask for it.
        if finished_any && self.start(cx) > 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let core = &mut self.core;
        if core.exhausted() {
            core.finished = true;
            #[cfg(feature = "indicatif")]
            if let Some(bar) = core.bar.as_ref() {
                bar.finish();
            }
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Runs [`poll_batch`](Self::poll_batch) under the completion and
    /// poison checks (a finished stream keeps returning `None`).
    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
        failed: fn(&Fut::Output) -> bool,
    ) -> Poll<Option<Event<Fut::Output>>> {
        // The panic check first: a destructor run after completion was
        // recorded (fail-fast) may be what unwound.
        let what = match self.core.out {
            Out::Collect => "Batch",
            Out::Ordered => "BatchOrdered",
            Out::Unordered => "BatchUnordered",
        };
        assert!(
            !self.core.poisoned,
            "`{what}` polled after a panic in one of its futures or callbacks"
        );
        if self.core.finished {
            assert!(
                self.core.out != Out::Collect,
                "`Batch` polled after completion"
            );
            return Poll::Ready(None);
        }
        self.core.poisoned = true;
        let out = self.poll_batch(cx, failed);
        self.core.poisoned = false;
        out
    }
}

impl<I, F, Fut, P, T, L> Future for Batch<'_, I, F, Fut, P, T, L, false>
where
    I: BatchSource,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    type Output = Vec<Fut::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_guarded(cx, |_| false) {
            Poll::Ready(_) => Poll::Ready(
                this.core
                    .take_results()
                    .map(|o| o.expect("every item finished"))
                    .collect(),
            ),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I, F, Fut, P, T, L, V, E> Future for Batch<'_, I, F, Fut, P, T, L, true>
where
    I: BatchSource,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<V, E>>,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    type Output = Result<Vec<V>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.poll_guarded(cx, Result::is_err) {
            Poll::Ready(Some(Event::Failed(_, Err(e)))) => Poll::Ready(Err(e)),
            Poll::Ready(_) => Poll::Ready(Ok(this
                .core
                .take_results()
                .map(|o| match o {
                    Some(Ok(v)) => v,
                    _ => unreachable!("every item finished, and errors stop the batch"),
                })
                .collect())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<I, F, Fut, P, T, L> futures_core::FusedFuture for Batch<'_, I, F, Fut, P, T, L, false>
where
    I: BatchSource,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    fn is_terminated(&self) -> bool {
        self.core.finished && !self.core.poisoned
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<I, F, Fut, P, T, L, V, E> futures_core::FusedFuture for Batch<'_, I, F, Fut, P, T, L, true>
where
    I: BatchSource,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<V, E>>,
    P: FnMut(&Progress),
    T: Timer,
    L: Timer,
{
    fn is_terminated(&self) -> bool {
        self.core.finished && !self.core.poisoned
    }
}

impl<O> Event<O> {
    fn into_parts(self) -> (usize, O) {
        match self {
            Event::Item(key, output) | Event::Failed(key, output) => (key, output),
        }
    }
}

/// Defines a batch stream type: the struct, its accessors, `Stream` (settled
/// and fail-fast), `FusedStream` and `Debug`.
macro_rules! batch_stream {
    (
        $(#[$doc:meta])*
        $name:ident, $method:literal, $item:ty, |$key:ident, $output:ident| $map:expr
    ) => {
        $(#[$doc])*
        #[must_use = "streams do nothing unless polled"]
        pub struct $name<
            'r,
            I,
            F,
            Fut,
            P = fn(&Progress),
            T = DefaultTimer,
            L = DefaultTimer,
            const FAIL_FAST: bool = false,
        > where
            I: BatchSource,
            Fut: Future,
            T: Timer,
            L: Timer,
        {
            batch: Batch<'r, I, F, Fut, P, T, L, FAIL_FAST>,
        }

        impl<I, F, Fut, P, T, L, const FF: bool> $name<'_, I, F, Fut, P, T, L, FF>
        where
            I: BatchSource,
            Fut: Future,
            T: Timer,
            L: Timer,
        {
            /// The concurrency limit.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("let s = awaitkit::process_batch(0..3, 2, |i| async move { i }).", $method, "();")]
            /// assert_eq!(s.limit(), 2);
            /// ```
            pub fn limit(&self) -> usize {
                self.batch.limit()
            }

            /// How many calls are in flight.
            ///
            /// # Examples
            ///
            /// ```
            /// use futures::StreamExt;
            #[doc = concat!("let mut s = awaitkit::process_batch(0..5, 2, |_| futures::future::pending::<()>()).", $method, "();")]
            /// assert!(s.next().now_or_never().is_none());
            /// assert_eq!(s.in_flight(), 2);
            /// # use futures::FutureExt;
            /// ```
            pub fn in_flight(&self) -> usize {
                self.batch.in_flight()
            }

            /// How many calls have finished (handed out or not).
            ///
            /// # Examples
            ///
            /// ```
            /// use futures::StreamExt;
            /// # futures::executor::block_on(async {
            #[doc = concat!("let mut s = awaitkit::process_batch(0..5, 2, |i| async move { i }).", $method, "();")]
            /// s.next().await;
            /// assert!(s.completed() >= 1);
            /// # });
            /// ```
            pub fn completed(&self) -> usize {
                self.batch.completed()
            }
        }

        impl<I, F, Fut, P, T, L> Stream for $name<'_, I, F, Fut, P, T, L, false>
        where
            I: BatchSource,
            F: FnMut(I::Item) -> Fut,
            Fut: Future,
            P: FnMut(&Progress),
            T: Timer,
            L: Timer,
        {
            type Item = $item;

            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                self.get_mut()
                    .batch
                    .poll_guarded(cx, |_| false)
                    .map(|event| {
                        event.map(|event| {
                            let ($key, $output) = event.into_parts();
                            $map
                        })
                    })
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.batch.core.remaining_hint(false)
            }
        }

        impl<I, F, Fut, P, T, L, V, E> Stream for $name<'_, I, F, Fut, P, T, L, true>
        where
            I: BatchSource,
            F: FnMut(I::Item) -> Fut,
            Fut: Future<Output = Result<V, E>>,
            P: FnMut(&Progress),
            T: Timer,
            L: Timer,
        {
            type Item = $item;

            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                self.get_mut()
                    .batch
                    .poll_guarded(cx, Result::is_err)
                    .map(|event| {
                        event.map(|event| {
                            let ($key, $output) = event.into_parts();
                            $map
                        })
                    })
            }

            fn size_hint(&self) -> (usize, Option<usize>) {
                self.batch.core.remaining_hint(true)
            }
        }

        impl<I, F, Fut, P, T, L, const FF: bool> FusedStream for $name<'_, I, F, Fut, P, T, L, FF>
        where
            Self: Stream,
            I: BatchSource,
            Fut: Future,
            T: Timer,
            L: Timer,
        {
            fn is_terminated(&self) -> bool {
                // As the batch future: not after a panic (polling panics).
                self.batch.core.finished && !self.batch.core.poisoned
            }
        }

        impl<I, F, Fut, P, T, L, const FF: bool> fmt::Debug for $name<'_, I, F, Fut, P, T, L, FF>
        where
            I: BatchSource,
            Fut: Future,
            T: Timer,
            L: Timer,
        {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.batch).finish()
            }
        }
    };
}

batch_stream! {
    /// Stream for [`Batch::ordered`]: the outputs in input order, each as
    /// soon as it and every earlier one have finished.
    ///
    /// `Unpin`, a [`FusedStream`] (`None` forever once done), `Send`/`Sync`
    /// when the source, items, closures, calls and outputs are. The type
    /// parameters are [`Batch`]'s; `FAIL_FAST` is set by
    /// [`fail_fast`](Batch::fail_fast): the first `Err` (in completion
    /// order) is yielded, after every other call and every buffered output
    /// was dropped, and ends the stream.
    ///
    /// Like the [`Batch`] future, it polls a call only after that call's
    /// waker fired (or for its first poll) and each woken call at most once
    /// per poll. A `next` that finds the next output already finished hands
    /// it out without polling anything; otherwise it polls the woken calls
    /// until the next output in order finishes (those it did not reach are
    /// polled by the following `next`).
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops every call in flight (each exactly once), every
    /// output not yet handed out and the items not yet started, and gives
    /// back a rate-limit grant it was waiting for.
    ///
    /// # Panics
    ///
    /// A panic in the source (an iterator's `next`, a stream's
    /// `poll_next`), in `f`, in a call or in the progress callback
    /// propagates out of `poll_next`; polling again after that panics, and
    /// `is_terminated` stays `false`. An output that finished in the poll
    /// that panicked is dropped with the panic, not handed out. Dropping it
    /// then drops what is left, each once.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::BatchOrdered;
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let parse = |s: &'static str| async move { s.parse::<u8>() };
    /// let mut stream: BatchOrdered<'_, _, _, _, _, _, _, true> =
    ///     awaitkit::process_batch(["1", "2", "x", "4"], 1, parse).fail_fast().ordered();
    /// assert_eq!(stream.next().await, Some(Ok(1)));
    /// assert_eq!(stream.next().await, Some(Ok(2)));
    /// assert!(matches!(stream.next().await, Some(Err(_))));
    /// assert_eq!(stream.next().await, None); // "4" never started
    /// # });
    /// ```
    BatchOrdered, "ordered", Fut::Output, |_key, output| output
}

batch_stream! {
    /// Stream for [`Batch::unordered`]: `(input index, output)` in
    /// completion order, each as soon as its call finished.
    ///
    /// `Unpin`, a [`FusedStream`] (`None` forever once done), `Send`/`Sync`
    /// when the source, items, closures, calls and outputs are. The type
    /// parameters are [`Batch`]'s; `FAIL_FAST` is set by
    /// [`fail_fast`](Batch::fail_fast): the first `(index, Err(e))` is
    /// yielded, after every other call was dropped, and ends the stream.
    ///
    /// Like the [`Batch`] future, it polls a call only after that call's
    /// waker fired (or for its first poll) and each woken call at most once
    /// per poll; a `next` stops at the first call that finishes, and the
    /// woken calls it did not reach are polled by the following `next`.
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops every call in flight (each exactly once) and the
    /// items not yet started, and gives back a rate-limit grant it was
    /// waiting for.
    ///
    /// # Panics
    ///
    /// A panic in the source (an iterator's `next`, a stream's
    /// `poll_next`), in `f`, in a call or in the progress callback
    /// propagates out of `poll_next`; polling again after that panics, and
    /// `is_terminated` stays `false`. An output that finished in the poll
    /// that panicked is dropped with the panic, not handed out. Dropping it
    /// then drops what is left, each once.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::BatchUnordered;
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let items = futures::stream::iter(vec![3u64, 1, 2]);
    /// let stream: BatchUnordered<'_, _, _, _> =
    ///     awaitkit::process_batch_stream(items, 3, |n| async move { n * n }).unordered();
    /// let mut got: Vec<(usize, u64)> = stream.collect().await;
    /// got.sort();
    /// assert_eq!(got, [(0, 9), (1, 1), (2, 4)]);
    /// # });
    /// ```
    BatchUnordered, "unordered", (usize, Fut::Output), |key, output| (key, output)
}

impl<I, F, Fut, P, T, L, const FF: bool> fmt::Debug for Batch<'_, I, F, Fut, P, T, L, FF>
where
    I: BatchSource,
    Fut: Future,
    T: Timer,
    L: Timer,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if FF { "TryBatch" } else { "Batch" })
            .field("limit", &self.core.limit)
            .field("in_flight", &self.core.engine.running())
            .field("done", &self.core.done)
            .field("total", &self.core.total)
            .field(
                "fixed_batches",
                &matches!(self.core.mode, Mode::Fixed { .. }),
            )
            .field("rate_limited", &self.rate.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "indicatif")]
mod bar {
    //! The `indicatif` progress bar of a [`Batch`](super::Batch).

    use super::Progress;
    use indicatif::{ProgressBar, ProgressStyle};
    use std::fmt::Write as _;
    use std::time::Duration;

    /// tqdm's layout; `{msg}` carries elapsed, ETA and rate on the batch's
    /// clock.
    const BAR: &str = "{percent:>3}%|{wide_bar}| {pos}/{len} [{msg}]";
    /// For an unknown total.
    const COUNTER: &str = "{spinner} {pos} [{msg}]";

    pub(super) struct Bar {
        bar: ProgressBar,
        /// Ours to style (and to write the message of).
        styled: bool,
    }

    impl Bar {
        pub(super) fn styled(bar: ProgressBar) -> Self {
            Bar { bar, styled: true }
        }

        pub(super) fn custom(bar: ProgressBar) -> Self {
            Bar { bar, styled: false }
        }

        /// At the first poll.
        pub(super) fn begin(&mut self, total: Option<usize>) {
            if let Some(total) = total {
                self.bar.set_length(total as u64);
            }
            if self.styled {
                let template = if total.is_some() { BAR } else { COUNTER };
                let style = ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ ");
                self.bar.set_style(style);
                self.bar
                    .set_message(message(&Progress::new(0, total, 0, Duration::ZERO)));
            }
        }

        pub(super) fn update(&mut self, progress: &Progress) {
            if let Some(total) = progress.total {
                if self.bar.length() != Some(total as u64) {
                    self.bar.set_length(total as u64);
                }
            }
            if self.styled {
                self.bar.set_message(message(progress));
            }
            self.bar.set_position(progress.done as u64);
        }

        pub(super) fn finish(&self) {
            self.bar.finish();
        }

        pub(super) fn abandon(&self) {
            self.bar.abandon();
        }
    }

    /// `00:03<00:04, 12.51it/s`, as tqdm writes it.
    fn message(progress: &Progress) -> String {
        let mut out = String::new();
        clock(&mut out, Some(progress.elapsed));
        out.push('<');
        clock(&mut out, progress.eta);
        match progress.rate {
            Some(rate) => {
                let _ = write!(out, ", {rate:.2}it/s");
            }
            None => out.push_str(", ?it/s"),
        }
        out
    }

    /// `mm:ss`, or `h:mm:ss` past an hour; `?` when unknown.
    fn clock(out: &mut String, duration: Option<Duration>) {
        let Some(duration) = duration else {
            out.push('?');
            return;
        };
        let secs = duration.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let _ = if h > 0 {
            write!(out, "{h}:{m:02}:{s:02}")
        } else {
            write!(out, "{m:02}:{s:02}")
        };
    }

    #[cfg(test)]
    mod tests {
        use super::{Progress, message};
        use std::time::Duration;

        #[test]
        fn the_message_reads_like_tqdm() {
            let p = Progress::new(42, Some(100), 8, Duration::from_secs(3));
            assert_eq!(message(&p), "00:03<00:04, 14.00it/s");
            let p = Progress::new(1, None, 0, Duration::ZERO);
            assert_eq!(message(&p), "00:00<?, ?it/s");
            let p = Progress::new(1, Some(2), 0, Duration::from_secs(3 * 3600 + 61));
            assert_eq!(message(&p), "3:01:01<3:01:01, 0.00it/s");
        }
    }
}
