//! asyncio's concurrency patterns as hand-written futures that run on **any
//! executor**.
//!
//! awaitkit gives Rust the tools Python developers reach for in `asyncio` —
//! `gather`, `as_completed`, `wait`, timeouts, retries, semaphores, rate
//! limiters — as named, `Unpin` futures and streams
//! that you can `.await`, store in a struct, or poll from your own `poll`
//! function. Nothing is spawned: children run inside the combinator, each
//! with its own waker, so a wake costs O(1) however many children there are.
//!
//! New here? The [`guide`] follows asyncio's patterns section by section,
//! every example a doctest.
//!
//! # Which combinator when
//!
//! | you want… | Python | awaitkit |
//! |---|---|---|
//! | all outputs, in input order | `asyncio.gather(*aws)` | [`gather()`], [`gather!`] |
//! | all `Ok` values, or the first `Err` (rest cancelled) | `TaskGroup` | [`try_gather()`], [`try_gather!`] |
//! | every outcome, panics captured as values | `gather(..., return_exceptions=True)` | [`gather_settled`] |
//! | outputs as they finish | `asyncio.as_completed(aws)` | [`as_completed`] ([`AsCompleted::indexed`] for input indices) |
//! | a dynamic set of futures | `asyncio.create_task` + a set | [`AsCompleted::new`] + [`AsCompleted::push`] |
//! | the first to finish, keep the rest | `asyncio.wait(..., FIRST_COMPLETED)` | [`wait_any`] |
//! | the first success, the others cancelled (every error if all fail) | futures' `select_ok` | [`first_ok`] |
//! | the first success, attempts started a delay apart or when the latest fails (Happy Eyeballs, hedged requests) | asyncio's `staggered_race` | [`staggered_race`] |
//! | done + pending on a condition | `asyncio.wait(aws, return_when=...)` | [`wait`], [`try_wait`] with [`ReturnWhen`] |
//! | …giving up after a while, keeping the pending | `asyncio.wait(aws, timeout=)` | [`Wait::with_timeout`] |
//! | outputs as they finish, until a deadline | `asyncio.as_completed(aws, timeout=)` | [`AsCompleted::with_timeout`] |
//! | a time limit on one future | `asyncio.wait_for`, `asyncio.timeout` | [`timeout()`], [`timeout_at`], [`TimeoutExt`] |
//! | retries with backoff | tenacity, `backoff` | [`RetryPolicy`], [`Backoff`] |
//! | at most N at a time | `asyncio.Semaphore`, `async with sem:` | [`Semaphore`], [`Semaphore::limit`] |
//! | at most N per period | `RateLimiter(max_calls, period)` | [`RateLimiter`], [`RateLimiter::limit`], [`RateLimiter::limit_stream`], [`KeyedRateLimiter`] |
//! | …shared by every replica of a service | a Redis-backed limiter | `redis::RateLimiter` (feature `redis`) |
//! | a pool of connections | `AsyncDatabasePool`, `async with pool.acquire()` | [`Pool`], [`pool::Manager`] |
//! | many items, at most N at a time, results in order, with progress | a semaphore-bounded `gather` over the items, `tqdm.asyncio` | [`process_batch`] |
//! | …items from a stream, results as they finish (in order, or with their index) | `async for` over a queue, aiometer's `amap` | [`process_batch_stream`], [`Batch::ordered`], [`Batch::unordered`] |
//! | tasks added while running, first error cancels the rest; background work | `asyncio.TaskGroup`, `create_task` | [`task_group`], [`task_group_local`]; one task cancelled with [`TaskHandle::abort`] |
//! | find the future that blocks the executor; per-child timings | asyncio debug mode (`slow_callback_duration`) | [`watch()`], [`WatchExt::watch`], [`watch::Report`] |
//!
//! ```
//! # futures::executor::block_on(async {
//! async fn fetch_user(id: u32) -> String { format!("user {id}") }
//! async fn fetch_posts(id: u32) -> Vec<String> { vec![format!("post by {id}")] }
//!
//! // Different types: the macro form.
//! let (user, posts) = awaitkit::gather!(fetch_user(1), fetch_posts(1)).await;
//! assert_eq!(user, "user 1");
//! assert_eq!(posts.len(), 1);
//!
//! // Many of one type: the function form, outputs in input order.
//! let users = awaitkit::gather((1..=3).map(fetch_user)).await;
//! assert_eq!(users, ["user 1", "user 2", "user 3"]);
//! # });
//! ```
//!
//! # Guarantees
//!
//! Every combinator follows the same rules:
//!
//! * **Only woken children are polled.** A child is polled for its first
//!   poll and then only after its own waker fired: total child polls are
//!   wakes + N, at any N.
//! * **Cooperative.** One poll of a combinator polls each child at most once;
//!   a child that keeps waking itself makes the combinator return `Pending`
//!   (after waking its task), so sibling tasks still run.
//! * **Cancellation is drop.** Dropping a combinator drops every unfinished
//!   child synchronously.
//! * **Empty input** completes on the first poll with the empty result.
//! * **Polling after completion** panics with a clear message for futures;
//!   streams are fused and keep returning `None`.
//! * **Fused.** Every named future is a
//!   [`FusedFuture`](futures_core::FusedFuture) (`is_terminated` turns true
//!   once it has returned its output, never before) and every stream a
//!   [`FusedStream`](futures_core::stream::FusedStream), so
//!   `futures::select!` takes them without `.fuse()`. [`Watch`] is fused
//!   when the future it watches is. The timers' sleeps are not: like
//!   tokio's `Sleep`, a sleep may be polled again after it fired (it stays
//!   ready) and [`Timer::reset`] re-arms it.
//! * **Panics** in children propagate out of `poll` (except in
//!   [`gather_settled`], which captures them). A future that a panic unwound
//!   through refuses further polls (it panics, like an `async fn` that
//!   panicked) rather than make up a result; [`AsCompleted`] stays usable.
//! * **Auto traits follow the children**: a combinator is `Send`/`Sync` when
//!   its children and outputs are, works with `!Send` children, and is always
//!   `Unpin`.
//!
//! ## Panic safety
//!
//! User code runs in many places: children's `poll` and `Drop`, the wakers
//! you poll with (`clone`, `wake`, `wake_by_ref`, `drop`), pool managers,
//! progress callbacks, watch hooks, retry predicates, timers. Any of it may
//! panic, and none of it can break the crate:
//!
//! * **No undefined behaviour, no pinned child freed undropped.** When
//!   destructors panic, every other child is still dropped (all of them,
//!   even if several panic, as a `Vec`'s elements are), and then the first
//!   panic propagates. The others are not dropped during that panic's
//!   unwind: to them `std::thread::panicking()` is `false`, so a pooled
//!   object or a mutex guard among them is returned or unlocked as usual.
//!   (During an unwind already under way a second panic would abort the
//!   process, so there the later panics are discarded.)
//! * **No user code under a lock.** Wakers are cloned, woken and dropped,
//!   and children polled and dropped, only after every internal lock is
//!   released, so a waker whose `drop` or `wake` calls back into the same
//!   semaphore, limiter or set cannot deadlock it.
//! * **Nothing wedges, no wake-up is lost.** A panicking waker leaves every
//!   primitive usable: the other waiters a release grants are all woken and
//!   the first panic propagates from the call that woke them; a combinator
//!   whose task's waker panicked on a wake re-arms at its next poll.
//! * **Shared threads never run user code that can kill them**: the default
//!   timer's helper thread (futures-timer's) only ever holds awaitkit's own
//!   waker, which wakes yours and discards its panic, and the rate limiter's
//!   driver discards waker panics on the timer's path. tokio's and async-io's
//!   drivers treat awaitkit's sleeps as their own (see
//!   `time::TokioTimer` and `time::AsyncIoTimer`).
//!
//! What the panic does to the thing it came from:
//!
//! | type | a child panics in `poll` | a destructor panics | the task's waker panics |
//! |---|---|---|---|
//! | [`gather()`], [`try_gather()`], [`gather!`], [`try_gather!`], [`wait`], [`wait_any`], [`first_ok`], [`staggered_race`] | propagates; the future then refuses polls | every child is dropped, then the panic propagates (from the drop, or from the fail-fast poll that dropped them) | from a wake on another thread: the next poll re-arms; from a child's own poll: as a child panic |
//! | [`gather_settled`] | captured as [`Panicked`] | a finished child's: captured as its outcome; dropping unfinished children: as above | as above |
//! | [`AsCompleted`] | propagates; the stream stays usable | as above; the slot is reused | as above |
//! | [`task_group`], [`task_group_local`] | propagates; the group refuses polls | every task and the body are dropped, then it propagates; an aborted task's: propagates from [`TaskHandle::abort`], the group goes on | as above |
//! | [`process_batch`] | propagates; the batch refuses polls | as above | as above |
//! | [`timeout()`], [`Timeout`] | propagates; the timeout stays usable | the inner future (and on `Elapsed` the sleep) is dropped, the first panic propagates, and the next poll refuses ("polled after a panic"); dropped, the inner future, the sleep, the timer and a kept waker go each on its own, then the first panic propagates | propagates from the inner future's poll |
//! | [`Semaphore`], [`RateLimiter`], [`KeyedRateLimiter`], [`Pool`] | — | a permit, grant or object is returned exactly once | every granted waiter is woken; the first panic propagates from the call that woke them; the primitive stays usable |
//! | [`RateLimitedStream`] | the inner stream's panic propagates, nothing held; the stream stays usable | the held item is dropped and its place or grant given back (the next waiter woken), then the first panic propagates | a grant's wake: contained on the timer's path, else as for [`RateLimiter`]; the item is yielded at the next poll |
//!
//! Callbacks (a pool [`Manager`](pool::Manager), a progress callback, a
//! [`watch`](mod@watch) hook, a retry predicate) are documented on their
//! types; their panics propagate to the caller of the operation that ran
//! them, after the state they touched is restored.
//!
//! # Time
//!
//! Everything that waits for time goes through the [`Timer`] trait (see the
//! [`time`] module). Unless told otherwise it is [`time::DefaultTimer`]:
//! futures-timer on any executor and, with the `tokio` feature, tokio's own
//! timer wherever the wait runs inside a tokio runtime with time enabled (so
//! tokio's paused time and `advance` move awaitkit's timeouts, limiters and
//! backoffs too). Every type that waits for time takes another timer the
//! same way, with `with_timer(timer)` — tokio's, async-io's, or the
//! `ManualClock` that makes timeouts, deadlines and retries testable without
//! sleeping.
//!
//! ```
//! use awaitkit::{Backoff, RetryPolicy, TimeoutExt};
//! use std::time::Duration;
//! # futures::executor::block_on(async {
//! async fn fetch() -> Result<&'static str, std::io::Error> { Ok("page") }
//!
//! // asyncio.wait_for(fetch(), 2)
//! let page = fetch().timeout(Duration::from_secs(2)).await;
//! assert_eq!(page.unwrap().unwrap(), "page");
//!
//! // Up to 3 attempts, 100 ms → 1 s exponential backoff with full jitter.
//! let policy = RetryPolicy::new(3).backoff(Backoff::exponential(
//!     Duration::from_millis(100),
//!     Duration::from_secs(1),
//! ));
//! assert_eq!(policy.retry(fetch).await.unwrap(), "page");
//! # });
//! ```
//!
//! # Runtime compatibility
//!
//! awaitkit depends on no executor: with default features
//! `cargo tree -e normal` lists only `futures-core`, `futures-util`,
//! `futures-timer` and `pin-project-lite`. Its tests run every case under
//! tokio (current-thread and multi-thread), smol, and `futures::executor`.
//!
//! # Feature flags
//!
//! All optional and additive; none changes a default.
//!
//! | feature | adds |
//! |---|---|
//! | `tokio` | `time::TokioTimer`: tokio's timer, honouring `tokio::time::pause` |
//! | `async-io` | `time::AsyncIoTimer`: the async-io (smol) reactor's timer |
//! | `test-util` | `time::ManualClock`: a clock that moves only when a test advances it |
//! | `indicatif` | `Batch::progress_bar`: batch progress drawn as a tqdm-style bar; `awaitkit::indicatif`, the `indicatif` crate (0.18) re-exported |
//! | `quanta` | `time::QuantaTimer`: the CPU's time-stamp counter as the clock (the cheapest [`RateLimiter`] checks) |
//! | `tracing` | slow polls seen by [`watch`](mod@watch) are also emitted as `tracing` warnings |
//! | `redis` | `awaitkit::redis::RateLimiter`: the same quotas shared by many processes through Redis, on your redis-rs connection (redis-rs's `aio`; pick its runtime with `redis-tokio` or `redis-smol`, or in your own redis-rs dependency) |
//! | `redis-tokio`, `redis-smol` | `redis` with redis-rs's `tokio-comp` / `smol-comp` |

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![warn(clippy::undocumented_unsafe_blocks)]
// docs.rs (`--cfg docsrs`) labels feature-gated items with their feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_op_in_unsafe_fn)]

mod as_completed;
mod batch;
mod engine;
mod first_ok;
mod gather;
mod poison;
pub mod pool;
pub mod rate_limiter;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod retry;
mod semaphore;
mod staggered_race;
mod sync;
mod task_group;
pub mod time;
mod timeout;
mod tsc;
mod unwind;
mod wait;
mod wait_queue;
mod wake_list;
pub mod watch;

pub use as_completed::{
    AsCompleted, AsCompletedIndexed, AsCompletedIter, AsCompletedIterMut, AsCompletedUntil,
    CompletionSet, TimedOut, as_completed,
};
pub use batch::{
    Batch, BatchConfigError, BatchOrdered, BatchSource, BatchUnordered, Progress, StreamItems,
    TryBatch, process_batch, process_batch_stream,
};
pub use engine::tuple::{GatherTuple, TryGatherTuple};
pub use first_ok::{FirstOk, first_ok};
pub use gather::{Gather, GatherSettled, Panicked, TryGather, gather, gather_settled, try_gather};
#[doc(inline)]
pub use pool::{Pool, PoolError, Pooled};
#[doc(inline)]
pub use rate_limiter::{
    KeyedAcquire, KeyedAcquireN, KeyedRateLimiter, Quota, QuotaError, RateAcquire, RateAcquireN,
    RateLimit, RateLimitError, RateLimitedStream, RateLimiter, RateSnapshot,
};
pub use retry::{
    AttemptError, AttemptGate, Backoff, GaveUp, Retry, RetryConfigError, RetryError, RetryEvent,
    RetryOutput, RetryPolicy,
};
pub use semaphore::{
    Acquire, AcquireError, AcquireOwned, Limit, OwnedSemaphorePermit, PollSemaphore, Semaphore,
    SemaphorePermit, SemaphoreStats, TryAcquireError,
};
pub use staggered_race::{StaggeredRace, staggered_race};
pub use task_group::{
    LocalTaskGroup, LocalTaskScope, TaskCancelled, TaskGroup, TaskHandle, TaskScope, task_group,
    task_group_local,
};
#[doc(inline)]
pub use time::Timer;
pub use timeout::{Elapsed, Timeout, TimeoutExt, timeout, timeout_at};
pub use wait::{ReturnWhen, Wait, WaitAny, WaitOutcome, try_wait, wait, wait_any};
#[doc(inline)]
pub use watch::{Watch, WatchExt, watch};

/// The `indicatif` crate, re-exported: the version [`Batch::with_progress_bar`]
/// takes its bars from, so `awaitkit::indicatif::ProgressBar` always matches
/// (no "multiple versions of crate `indicatif`" when yours differs).
///
/// # Examples
///
/// ```
/// use awaitkit::indicatif::ProgressBar;
/// # futures::executor::block_on(async {
/// let bar = ProgressBar::hidden();
/// awaitkit::process_batch(0..3, 2, |i| async move { i })
///     .with_progress_bar(bar.clone())
///     .await;
/// assert_eq!(bar.position(), 3);
/// # });
/// ```
#[cfg(feature = "indicatif")]
#[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
pub use indicatif;

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;

#[doc(hidden)]
pub mod __private {
    pub use crate::engine::tuple::{TryTupleFutures, TupleFutures, TupleSlot};
    pub use std::future::IntoFuture;
}

/// Runs futures of different types concurrently and resolves to a tuple of
/// their outputs — `asyncio.gather(a, b, c)` for heterogeneous awaitables.
///
/// Takes 0 to 16 expressions implementing [`IntoFuture`](std::future::IntoFuture).
/// Like [`gather()`], each child gets its own waker and is polled only when it
/// woke; nothing is spawned. With no arguments it resolves to `()` on the
/// first poll.
///
/// # Cancel safety
///
/// Dropping the future drops every unfinished child synchronously.
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
/// let (n, s, v) = awaitkit::gather!(async { 1 }, async { "two" }, async { vec![3] }).await;
/// assert_eq!((n, s, v), (1, "two", vec![3]));
/// # });
/// ```
#[macro_export]
macro_rules! gather {
    ($($future:expr),* $(,)?) => {
        $crate::GatherTuple::new(($($crate::__private::IntoFuture::into_future($future),)*))
    };
}

/// Runs fallible futures of different types concurrently and resolves to a
/// tuple of their `Ok` values, or to the **first** `Err`.
///
/// Every child's output is `Result<Tᵢ, E>` with the same `E`. Fail-fast: the
/// first error is returned from the poll in which it appeared, after every
/// other unfinished child has been dropped.
///
/// # Cancel safety
///
/// Dropping the future drops every unfinished child synchronously.
///
/// # Errors
///
/// The first `Err` any child produced.
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
/// let ok = awaitkit::try_gather!(async { Ok::<_, String>(1) }, async { Ok("two") }).await;
/// assert_eq!(ok, Ok((1, "two")));
///
/// let err = awaitkit::try_gather!(async { Ok::<u8, _>(1) }, async { Err::<(), _>("bad") }).await;
/// assert_eq!(err, Err("bad"));
/// # });
/// ```
#[macro_export]
macro_rules! try_gather {
    ($($future:expr),* $(,)?) => {
        $crate::TryGatherTuple::new(($($crate::__private::IntoFuture::into_future($future),)*))
    };
}
