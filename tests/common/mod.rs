//! Shared helpers for the integration tests.
//!
//! * [`matrix!`] / [`matrix_local!`]: one async test body, one `#[test]` per
//!   executor, each under a watchdog so a hang fails instead of blocking CI.
//! * [`watchdog`]: the same guard for plain (manual-poll) tests.
//! * Counters: [`Tracker`] (live instances), [`Counter`] (polls),
//!   [`CountingWaker`] (wakes, clones, drops), [`net_alloc`] (bytes still
//!   allocated by this thread: leak checks).
//! * Children: [`parked`] (waker parked in a slot the test fires in any
//!   order), [`YieldN`] (self-waking), [`Spinner`] (self-waking until a flag
//!   is set), [`NoMove`] (asserts it never moves), [`RemoteYield`] (woken from
//!   another thread), [`Stasher`] (keeps a waker clone alive after finishing),
//!   [`yield_now`], [`panic_after`], [`gated`] (oneshot).

#![allow(dead_code, unused_macros)]

#[macro_use]
pub(crate) mod child;
pub(crate) mod faults;
#[cfg(feature = "redis")]
pub(crate) mod redis_server;

use futures::channel::oneshot;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomPinned;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Watchdog and executor matrix
// ---------------------------------------------------------------------------

/// How long one test may run before the watchdog fails it
/// (`AWAITKIT_TEST_WATCHDOG_SECS` overrides).
pub(crate) fn watchdog_limit() -> Duration {
    let secs = std::env::var("AWAITKIT_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Runs `f` on its own thread and fails with a clear message if it does not
/// finish within [`watchdog_limit`]. A panic in `f` is re-raised with its
/// original payload (so `#[should_panic(expected = ...)]` still works).
#[track_caller]
pub(crate) fn watchdog<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(16 << 20)
        .spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        })
        .expect("spawn test thread");
    let limit = watchdog_limit();
    match rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "watchdog: `{name}` did not finish within {limit:?} \
             (a hang: lost wakeup, starvation or an endless loop)"
        ),
    }
}

/// Re-raises a task's panic with its original payload.
fn join_tokio<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

pub(crate) fn run_tokio_current<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + 'static,
{
    watchdog(name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio current-thread runtime");
        rt.block_on(body());
    })
}

pub(crate) fn run_tokio_multi<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    watchdog(name, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("tokio multi-thread runtime");
        // The body runs on a worker, not inside `block_on`.
        rt.block_on(async move { join_tokio(tokio::spawn(body()).await) });
    })
}

pub(crate) fn run_smol<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    watchdog(name, move || {
        let ex = smol::Executor::new();
        let task = ex.spawn(body());
        smol::block_on(ex.run(task));
    })
}

pub(crate) fn run_futures<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + 'static,
{
    watchdog(name, move || futures::executor::block_on(body()))
}

pub(crate) fn run_tokio_local<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + 'static,
{
    watchdog(name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio current-thread runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            join_tokio(tokio::task::spawn_local(body()).await)
        });
    })
}

pub(crate) fn run_smol_local<Fut>(name: &str, body: impl FnOnce() -> Fut + Send + 'static)
where
    Fut: Future<Output = ()> + 'static,
{
    watchdog(name, move || {
        let ex = smol::LocalExecutor::new();
        let task = ex.spawn(body());
        smol::block_on(ex.run(task));
    })
}

/// One async body, one `#[test]` per executor:
///
/// ```ignore
/// matrix! {
///     /// docs and attributes (e.g. `#[should_panic]`) apply to every variant
///     async fn gather_empty() { assert!(gather(Vec::<Ready<()>>::new()).await.is_empty()); }
/// }
/// ```
///
/// generates module `gather_empty` with `tokio_current`, `tokio_multi` (the
/// body spawned on a 2-worker runtime, so it must be `Send`), `smol` (an
/// `async_executor::Executor` task) and `futures` (`futures::executor`).
macro_rules! matrix {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[test]
            $(#[$meta])*
            fn tokio_current() {
                crate::common::run_tokio_current(concat!(module_path!(), "::tokio_current"), body)
            }

            #[test]
            $(#[$meta])*
            fn tokio_multi() {
                crate::common::run_tokio_multi(concat!(module_path!(), "::tokio_multi"), body)
            }

            #[test]
            $(#[$meta])*
            fn smol() {
                crate::common::run_smol(concat!(module_path!(), "::smol"), body)
            }

            #[test]
            $(#[$meta])*
            fn futures() {
                crate::common::run_futures(concat!(module_path!(), "::futures"), body)
            }
        }
    )*};
}

/// [`matrix!`] for `!Send` bodies: tokio current-thread with a `LocalSet`
/// (`spawn_local`), smol's `LocalExecutor`, and `futures::executor`.
macro_rules! matrix_local {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[test]
            $(#[$meta])*
            fn tokio_local() {
                crate::common::run_tokio_local(concat!(module_path!(), "::tokio_local"), body)
            }

            #[test]
            $(#[$meta])*
            fn smol_local() {
                crate::common::run_smol_local(concat!(module_path!(), "::smol_local"), body)
            }

            #[test]
            $(#[$meta])*
            fn futures() {
                crate::common::run_futures(concat!(module_path!(), "::futures"), body)
            }
        }
    )*};
}

/// A plain `#[test]` under the watchdog (for manual-poll tests).
macro_rules! guarded {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {$(
        #[test]
        $(#[$meta])*
        fn $name() {
            crate::common::watchdog(concat!(module_path!(), "::", stringify!($name)), || $body)
        }
    )*};
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// A shared counter (polls, events).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts live instances of [`Token`]: a child holding a token is alive until
/// it is dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    live: AtomicIsize,
    created: AtomicUsize,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn token(&self) -> Token {
        self.0.live.fetch_add(1, Ordering::SeqCst);
        self.0.created.fetch_add(1, Ordering::SeqCst);
        Token(self.clone())
    }
    /// Tokens alive now.
    pub(crate) fn live(&self) -> usize {
        let live = self.0.live.load(Ordering::SeqCst);
        assert!(live >= 0, "a token was dropped twice");
        live as usize
    }
    pub(crate) fn created(&self) -> usize {
        self.0.created.load(Ordering::SeqCst)
    }
}

/// Decrements its [`Tracker`] when dropped.
#[derive(Debug)]
pub(crate) struct Token(Tracker);

impl Drop for Token {
    fn drop(&mut self) {
        (self.0).0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A waker that counts wakes, clones and drops (of its clones).
#[derive(Debug)]
pub(crate) struct CountingWaker {
    counts: Arc<WakeCounts>,
    waker: Waker,
}

#[derive(Debug, Default)]
pub(crate) struct WakeCounts {
    wakes: AtomicUsize,
    clones: AtomicUsize,
    drops: AtomicUsize,
}

static COUNTING_VTABLE: RawWakerVTable =
    RawWakerVTable::new(cw_clone, cw_wake, cw_wake_by_ref, cw_drop);

unsafe fn cw_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` came from `Arc::into_raw` and the waker being cloned
    // holds one strong count.
    unsafe { Arc::increment_strong_count(data.cast::<WakeCounts>()) };
    // SAFETY: as above: the count is alive.
    unsafe { &*data.cast::<WakeCounts>() }
        .clones
        .fetch_add(1, Ordering::SeqCst);
    RawWaker::new(data, &COUNTING_VTABLE)
}

unsafe fn cw_wake(data: *const ()) {
    // SAFETY: forwarded: `data` is a live waker's.
    unsafe {
        cw_wake_by_ref(data);
        cw_drop(data);
    }
}

unsafe fn cw_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps its strong count.
    unsafe { &*data.cast::<WakeCounts>() }
        .wakes
        .fetch_add(1, Ordering::SeqCst);
}

unsafe fn cw_drop(data: *const ()) {
    // SAFETY: the waker owns one strong count, given back here.
    let counts = unsafe { Arc::from_raw(data.cast::<WakeCounts>()) };
    counts.drops.fetch_add(1, Ordering::SeqCst);
}

impl CountingWaker {
    pub(crate) fn new() -> Self {
        let counts = Arc::new(WakeCounts::default());
        let data = Arc::into_raw(counts.clone()).cast::<()>();
        // SAFETY: the vtable functions follow the `RawWaker` contract over an
        // `Arc<WakeCounts>` strong count.
        let waker = unsafe { Waker::from_raw(RawWaker::new(data, &COUNTING_VTABLE)) };
        Self { counts, waker }
    }
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
    pub(crate) fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }
    pub(crate) fn wakes(&self) -> usize {
        self.counts.wakes.load(Ordering::SeqCst)
    }
    pub(crate) fn clones(&self) -> usize {
        self.counts.clones.load(Ordering::SeqCst)
    }
    /// Clones not yet dropped (the original waker is not counted).
    pub(crate) fn live_clones(&self) -> usize {
        self.clones() - self.counts.drops.load(Ordering::SeqCst)
    }
}

/// Polls an `Unpin` future once with `waker`.
pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F, waker: &CountingWaker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut waker.context())
}

/// Polls an `Unpin` stream once with `waker`.
pub(crate) fn poll_next_once<S>(s: &mut S, waker: &CountingWaker) -> Poll<Option<S::Item>>
where
    S: futures::Stream + Unpin,
{
    Pin::new(s).poll_next(&mut waker.context())
}

// ---------------------------------------------------------------------------
// Allocation accounting (leak checks)
// ---------------------------------------------------------------------------

/// Counts bytes allocated minus bytes freed, per thread.
struct CountingAlloc;

thread_local! {
    static NET_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = NET_BYTES.try_with(|n| n.set(n.get() + delta));
}

// SAFETY: forwards to `System` and only adds thread-local bookkeeping that
// never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded caller contract.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes that `f` allocated on this thread and did not free. Run it once
/// before measuring if `f` may initialise lazy globals.
pub(crate) fn net_alloc(f: impl FnOnce()) -> isize {
    let before = NET_BYTES.with(Cell::get);
    f();
    NET_BYTES.with(Cell::get) - before
}

/// Asserts that `f` (run twice; the first run warms lazy statics up) frees
/// everything it allocates on this thread.
#[track_caller]
pub(crate) fn assert_no_leak(what: &str, f: impl Fn()) {
    f();
    let leaked = net_alloc(&f);
    assert_eq!(leaked, 0, "{what}: {leaked} bytes still allocated");
}

// ---------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------

/// Shared slot of a [`Parked`] child.
#[derive(Debug, Default)]
pub(crate) struct ParkSlot {
    waker: Mutex<Option<Waker>>,
    complete: AtomicBool,
}

/// The test's side of a [`Parked`] child.
#[derive(Clone, Debug)]
pub(crate) struct ParkHandle(Arc<ParkSlot>);

impl ParkHandle {
    /// Lets the child finish and wakes it. Returns whether a waker was
    /// parked (it always is once the child was polled and not finished).
    pub(crate) fn complete(&self) -> bool {
        self.0.complete.store(true, Ordering::SeqCst);
        self.wake()
    }
    /// Wakes the child without letting it finish (a spurious wake).
    pub(crate) fn wake(&self) -> bool {
        let waker = self.0.waker.lock().unwrap().take();
        match waker {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }
    /// A clone of the parked waker, if any.
    pub(crate) fn waker(&self) -> Option<Waker> {
        self.0.waker.lock().unwrap().clone()
    }
    pub(crate) fn has_waker(&self) -> bool {
        self.0.waker.lock().unwrap().is_some()
    }
}

/// A child that parks its waker in a shared slot and finishes with `value`
/// once [`ParkHandle::complete`] was called. Counts its polls; holds a
/// [`Token`]; clears the slot when dropped (like a well-behaved receiver).
#[derive(Debug)]
pub(crate) struct Parked<T> {
    slot: Arc<ParkSlot>,
    value: Option<T>,
    polls: Counter,
    _token: Token,
}

impl<T> Unpin for Parked<T> {}

pub(crate) fn parked<T>(value: T, polls: &Counter, tracker: &Tracker) -> (ParkHandle, Parked<T>) {
    let slot = Arc::new(ParkSlot::default());
    let child = Parked {
        slot: slot.clone(),
        value: Some(value),
        polls: polls.clone(),
        _token: tracker.token(),
    };
    (ParkHandle(slot), child)
}

impl<T> Future for Parked<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.polls.inc();
        if self.slot.complete.load(Ordering::SeqCst) {
            let v = self
                .value
                .take()
                .expect("Parked child polled after it returned Ready");
            return Poll::Ready(v);
        }
        *self.slot.waker.lock().unwrap() = Some(cx.waker().clone());
        // A completion racing with the store above must not be lost.
        if self.slot.complete.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<T> Drop for Parked<T> {
    fn drop(&mut self) {
        let waker = self.slot.waker.lock().map(|mut w| w.take()).unwrap_or(None);
        drop(waker);
    }
}

/// `n` parked children with values `0..n`, one poll counter each.
pub(crate) fn parked_set(
    n: usize,
    tracker: &Tracker,
) -> (Vec<ParkHandle>, Vec<Counter>, Vec<Parked<usize>>) {
    let mut handles = Vec::with_capacity(n);
    let mut counters = Vec::with_capacity(n);
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let polls = Counter::new();
        let (h, c) = parked(i, &polls, tracker);
        handles.push(h);
        counters.push(polls);
        children.push(c);
    }
    (handles, counters, children)
}

/// Sum of the counters.
pub(crate) fn total(counters: &[Counter]) -> usize {
    counters.iter().map(Counter::get).sum()
}

/// A child that wakes itself and returns `Pending` `left` times, then
/// returns `value`.
#[derive(Debug)]
pub(crate) struct YieldN<T> {
    left: usize,
    value: Option<T>,
    polls: Counter,
    _token: Option<Token>,
}

impl<T> Unpin for YieldN<T> {}

impl<T> YieldN<T> {
    pub(crate) fn new(left: usize, value: T, polls: &Counter) -> Self {
        Self {
            left,
            value: Some(value),
            polls: polls.clone(),
            _token: None,
        }
    }
    pub(crate) fn tracked(left: usize, value: T, polls: &Counter, tracker: &Tracker) -> Self {
        Self {
            left,
            value: Some(value),
            polls: polls.clone(),
            _token: Some(tracker.token()),
        }
    }
}

impl<T> Future for YieldN<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.polls.inc();
        if self.left == 0 {
            return Poll::Ready(
                self.value
                    .take()
                    .expect("YieldN polled after it returned Ready"),
            );
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Wakes itself and returns `Pending` once.
pub(crate) fn yield_now() -> YieldN<()> {
    YieldN {
        left: 1,
        value: Some(()),
        polls: Counter::new(),
        _token: None,
    }
}

/// A child that wakes itself and returns `Pending` until `stop` is set.
#[derive(Debug)]
pub(crate) struct Spinner {
    stop: Arc<AtomicBool>,
    polls: Counter,
}

impl Spinner {
    pub(crate) fn new(stop: &Arc<AtomicBool>, polls: &Counter) -> Self {
        Self {
            stop: stop.clone(),
            polls: polls.clone(),
        }
    }
}

impl Future for Spinner {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.inc();
        if self.stop.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The engine's stall limit (`STALL_LIMIT` in `src/engine/mod.rs`): once a
/// set has seen a completion or finished its first snapshot, a pass stops
/// after this many children in a row return `Pending` with none completing,
/// wakes the parent, and the next poll goes on with the rest of the
/// snapshot (SPEC §1.3–§1.4).
pub(crate) const STALL_LIMIT: usize = 32;

/// Checks, poll by poll, the cooperative schedule of a set built from
/// [`Spinner`]s (`counters[i]` counts child `i`'s polls; none may finish)
/// over `rounds` rounds, `poll` polling the set once (it must return
/// `Pending`):
///
/// * round 1 is the first snapshot, never split: one poll polls every child
///   once;
/// * every later round is a snapshot of every child (each woke itself),
///   polled in input order [`STALL_LIMIT`] at a time: each poll polls exactly
///   the next `STALL_LIMIT` children (the rest of the round in its last poll)
///   and nobody else;
/// * every poll wakes the parent (the children's wakes, the early stop's, or
///   the one that asks for a fresh snapshot).
///
/// So polls = wakes + N, and no child is polled twice in one poll.
pub(crate) fn assert_spinner_rounds(
    counters: &[Counter],
    w: &CountingWaker,
    rounds: usize,
    mut poll: impl FnMut(),
) {
    let n = counters.len();
    for round in 1..=rounds {
        let step = if round == 1 { n } else { STALL_LIMIT };
        let mut start = 0;
        while start < n {
            let end = (start + step).min(n);
            let wakes = w.wakes();
            poll();
            for (i, c) in counters.iter().enumerate() {
                let expected = if i < end { round } else { round - 1 };
                assert_eq!(
                    c.get(),
                    expected,
                    "n = {n}, round {round}, poll of {start}..{end}: child {i}"
                );
            }
            assert!(
                w.wakes() > wakes,
                "n = {n}, round {round}, poll of {start}..{end}: Pending without a wake"
            );
            start = end;
        }
    }
}

/// Wraps a child and asserts, on every poll, that it is still at the
/// address of its first poll (it is `!Unpin`, so the `Pin` contract promises
/// exactly that). Panics with "pinned child moved" otherwise.
#[derive(Debug)]
pub(crate) struct NoMove<F> {
    inner: F,
    first: usize,
    polls: usize,
    _pin: PhantomPinned,
}

impl<F> NoMove<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            first: 0,
            polls: 0,
            _pin: PhantomPinned,
        }
    }
}

impl<F: Future + Unpin> Future for NoMove<F> {
    type Output = (F::Output, usize);
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out; `inner` is `Unpin`.
        let this = unsafe { self.get_unchecked_mut() };
        let here = std::ptr::from_mut(this) as usize;
        if this.first == 0 {
            this.first = here;
        }
        assert_eq!(
            this.first, here,
            "pinned child moved: first polled at {:#x}, now at {here:#x} (poll {})",
            this.first, this.polls
        );
        this.polls += 1;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(v) => Poll::Ready((v, this.polls)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Hands wakers to a background thread that wakes them at once, racing with
/// the combinator's poll.
#[derive(Clone, Debug)]
pub(crate) struct WakerThread {
    tx: mpsc::Sender<Waker>,
}

impl WakerThread {
    pub(crate) fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Waker>();
        std::thread::spawn(move || {
            for (i, w) in rx.into_iter().enumerate() {
                if i % 3 == 0 {
                    w.wake_by_ref();
                }
                w.wake();
            }
        });
        Self { tx }
    }
}

/// Returns `Pending` `left` times, each time handing a clone of its waker to
/// a [`WakerThread`] (so the wake comes from another thread, often while the
/// combinator is still polling), then returns `value`.
#[derive(Debug)]
pub(crate) struct RemoteYield<T> {
    left: usize,
    value: Option<T>,
    thread: WakerThread,
    polls: Counter,
}

impl<T> Unpin for RemoteYield<T> {}

impl<T> RemoteYield<T> {
    pub(crate) fn new(left: usize, value: T, thread: &WakerThread, polls: &Counter) -> Self {
        Self {
            left,
            value: Some(value),
            thread: thread.clone(),
            polls: polls.clone(),
        }
    }
}

impl<T> Future for RemoteYield<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.polls.inc();
        if self.left == 0 {
            return Poll::Ready(self.value.take().expect("RemoteYield polled after Ready"));
        }
        self.left -= 1;
        self.thread
            .tx
            .send(cx.waker().clone())
            .expect("waker thread alive");
        Poll::Pending
    }
}

/// Keeps clones of children's wakers alive after they finished.
#[derive(Clone, Debug, Default)]
pub(crate) struct WakerStash(Arc<Mutex<Vec<Waker>>>);

impl WakerStash {
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub(crate) fn push(&self, waker: Waker) {
        self.0.lock().unwrap().push(waker);
    }
    pub(crate) fn wake_all_by_ref(&self) {
        for w in self.0.lock().unwrap().iter() {
            w.wake_by_ref();
        }
    }
    pub(crate) fn clear(&self) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap());
        drop(wakers);
    }
}

/// Stashes a clone of its waker and finishes on its first poll.
#[derive(Debug)]
pub(crate) struct Stasher<T> {
    stash: WakerStash,
    value: Option<T>,
}

impl<T> Unpin for Stasher<T> {}

impl<T> Stasher<T> {
    pub(crate) fn new(stash: &WakerStash, value: T) -> Self {
        Self {
            stash: stash.clone(),
            value: Some(value),
        }
    }
}

impl<T> Future for Stasher<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.stash.0.lock().unwrap().push(cx.waker().clone());
        Poll::Ready(self.value.take().expect("Stasher polled after Ready"))
    }
}

/// Yields (self-waking) `n` times, then panics with `msg`. Holds a token.
pub(crate) async fn panic_after(n: usize, msg: &'static str, token: Token) -> usize {
    YieldN::new(n, (), &Counter::new()).await;
    let _token = token;
    panic!("{msg}");
}

/// A child gated by a oneshot: finishes with what is sent (or `None` when
/// the sender is dropped). Holds a token; counts polls.
pub(crate) fn gated<T>(
    tracker: &Tracker,
    polls: &Counter,
) -> (
    oneshot::Sender<T>,
    impl Future<Output = Option<T>> + Unpin + use<T>,
) {
    let (tx, rx) = oneshot::channel();
    let token = tracker.token();
    let polls = polls.clone();
    let mut rx = Some(rx);
    let fut = futures::future::poll_fn(move |cx| {
        let _keep = &token;
        polls.inc();
        let r = rx.as_mut().expect("gated child polled after Ready");
        match Pin::new(r).poll(cx) {
            Poll::Ready(v) => {
                rx = None;
                Poll::Ready(v.ok())
            }
            Poll::Pending => Poll::Pending,
        }
    });
    (tx, fut)
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string payload>".to_owned()
    }
}

/// A seeded shuffle (the seed is part of the assertion messages).
pub(crate) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    order
}

/// The sizes every rule is checked at: empty, one, either side of a word and
/// of the first growth chunk, several words, several levels of the bit tree.
pub(crate) const SIZES: [usize; 8] = [0, 1, 31, 33, 64, 65, 1000, 4097];

/// A background thread that drops each waker clone handed to it as soon as
/// it sees it, racing with whatever the owner of the waker's child is doing.
#[derive(Debug)]
pub(crate) struct WakerDropper {
    cell: Arc<std::sync::atomic::AtomicPtr<Waker>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn take_boxed_waker(cell: &std::sync::atomic::AtomicPtr<Waker>) -> Option<Waker> {
    let p = cell.swap(std::ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: every non-null pointer in the cell came from `Box::into_raw`
    // and is taken out exactly once by this swap.
    (!p.is_null()).then(|| *unsafe { Box::from_raw(p) })
}

impl WakerDropper {
    /// `wake`: wake each clone before dropping it.
    pub(crate) fn spawn(wake: bool) -> Self {
        let cell = Arc::new(std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cell, stop) = (cell.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(w) = take_boxed_waker(&cell) {
                        if wake {
                            w.wake();
                        }
                    }
                }
            })
        };
        Self {
            cell,
            stop,
            thread: Some(thread),
        }
    }

    /// A child that hands a clone of its waker to this thread and finishes
    /// (after spinning `spin` times, to vary the timing).
    pub(crate) fn hand_off(&self, spin: u32) -> HandOff {
        HandOff {
            cell: self.cell.clone(),
            spin,
        }
    }
}

impl Drop for WakerDropper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(take_boxed_waker(&self.cell));
    }
}

/// See [`WakerDropper::hand_off`].
#[derive(Debug)]
pub(crate) struct HandOff {
    cell: Arc<std::sync::atomic::AtomicPtr<Waker>>,
    spin: u32,
}

impl Future for HandOff {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let fresh = Box::into_raw(Box::new(cx.waker().clone()));
        let old = self.cell.swap(fresh, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: from `Box::into_raw`, taken out once by the swap.
            drop(unsafe { Box::from_raw(old) });
        }
        for _ in 0..self.spin {
            std::hint::spin_loop();
        }
        Poll::Ready(())
    }
}

// ---------------------------------------------------------------------------
// Time (timeouts, deadlines, the manual clock)
// ---------------------------------------------------------------------------

/// [`watchdog`] with an explicit limit, for tests whose failure mode is a
/// spin (a timeout that never fires) and should fail fast.
#[track_caller]
pub(crate) fn watchdog_for<R: Send + 'static>(
    name: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: `{name}` did not finish within {limit:?} (the timeout never fired)")
        }
    }
}

/// Shared log of the ids of [`RecordingWaker`]s, in wake order.
#[derive(Clone, Debug, Default)]
pub(crate) struct WakeLog(Arc<Mutex<Vec<usize>>>);

impl WakeLog {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    /// A waker that appends `id` to this log each time it is woken.
    pub(crate) fn waker(&self, id: usize) -> Waker {
        Waker::from(Arc::new(RecordingWaker {
            id,
            log: self.clone(),
            on_wake: None,
            on_drop: None,
        }))
    }
    /// A waker that runs `on_wake` (after logging `id`) each time it is woken
    /// and `on_drop` when its last clone is dropped.
    pub(crate) fn waker_with(
        &self,
        id: usize,
        on_wake: Option<Box<dyn Fn() + Send + Sync>>,
        on_drop: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Waker {
        Waker::from(Arc::new(RecordingWaker {
            id,
            log: self.clone(),
            on_wake,
            on_drop,
        }))
    }
    pub(crate) fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub(crate) fn get(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

/// See [`WakeLog::waker`].
pub(crate) struct RecordingWaker {
    id: usize,
    log: WakeLog,
    on_wake: Option<Box<dyn Fn() + Send + Sync>>,
    on_drop: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::task::Wake for RecordingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.log.0.lock().unwrap().push(self.id);
        if let Some(f) = &self.on_wake {
            f();
        }
    }
}

impl Drop for RecordingWaker {
    fn drop(&mut self) {
        if let Some(f) = &self.on_drop {
            f();
        }
    }
}

/// Yields (self-waking) until `clock` has at least `n` registered sleepers:
/// the code under test, running in another branch or task, has reached its
/// sleep. Panics after a generous number of turns.
#[cfg(feature = "test-util")]
pub(crate) async fn sleepers_reach(clock: &awaitkit::time::ManualClock, n: usize) {
    for _ in 0..1_000_000 {
        if clock.sleepers() >= n {
            return;
        }
        yield_now().await;
    }
    panic!(
        "the clock never reached {n} sleeper(s) (has {})",
        clock.sleepers()
    );
}

/// A plain thread that waits until `clock` has at least `n` sleepers, then
/// advances it by `by`: the wakes arrive from another thread.
#[cfg(feature = "test-util")]
pub(crate) fn advance_from_thread(
    clock: &awaitkit::time::ManualClock,
    n: usize,
    by: Duration,
) -> std::thread::JoinHandle<()> {
    let clock = clock.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while clock.sleepers() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the clock never reached {n} sleeper(s)"
            );
            std::thread::yield_now();
        }
        clock.advance(by);
    })
}

// ---------------------------------------------------------------------------
// Batch helpers (tests/engine/batch.rs, tests/engine/batch_stream.rs)
// ---------------------------------------------------------------------------

/// Counts children alive right now (created by `f`, not yet dropped) and the
/// most ever alive at once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gauge(Arc<(AtomicUsize, AtomicUsize)>);

impl Gauge {
    pub(crate) fn enter(&self) -> Alive {
        let now = self.0.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.1.fetch_max(now, Ordering::SeqCst);
        Alive(self.clone())
    }
    pub(crate) fn now(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }
    pub(crate) fn max(&self) -> usize {
        self.0.1.load(Ordering::SeqCst)
    }
}

/// One live child of a [`Gauge`].
#[derive(Debug)]
pub(crate) struct Alive(Gauge);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Parked children by item, recorded as `f` creates them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Handles(Arc<Mutex<Vec<ParkHandle>>>);

impl Handles {
    pub(crate) fn get(&self, i: usize) -> ParkHandle {
        self.0.lock().unwrap()[i].clone()
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// `f` for parked children: item `i` is parked child `i` with value `i`.
pub(crate) fn parked_children(
    handles: &Handles,
    polls: &Counter,
    tracker: &Tracker,
) -> impl FnMut(usize) -> Parked<usize> + Send + use<> {
    let (handles, polls, tracker) = (handles.clone(), polls.clone(), tracker.clone());
    move |i| {
        let (handle, child) = parked(i, &polls, &tracker);
        let mut all = handles.0.lock().unwrap();
        assert_eq!(all.len(), i, "items start in input order");
        all.push(handle);
        child
    }
}

/// A tiny xorshift generator for randomised schedules (seed it with an odd
/// number and put the seed in every failure message).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `0..n` as a `u64` (`0` when `n` is 0).
    pub(crate) fn below_u64(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `mem::forget` for a test that leaks `value` on purpose (a forgotten
/// future must never run its destructor), keeping it reachable (see
/// [`keep_alive`]).
pub(crate) fn forget_reachably<T>(value: T) {
    keep_alive(Box::new(value));
}

/// Leaks `value` on purpose (it must outlive every waker and thread of a
/// test) but keeps its address in a static, so LeakSanitizer (the ASan run
/// in CI) sees it as reachable rather than as a leak.
pub(crate) fn keep_alive<'a, T>(value: Box<T>) -> &'a mut T {
    static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    let value = Box::leak(value);
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(std::ptr::from_mut(value).addr());
    value
}

/// Busy-waits `n` spin-loop hints (a randomised delay that keeps the
/// thread running, unlike a sleep).
pub(crate) fn spin(n: u64) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// Keeps the panic hook quiet for panics whose message starts with
/// "injected" (the tests' own, expected ones); every other panic is still
/// reported by the previous hook.
/// Keeps the panics a review injects on purpose (messages starting with
/// one of `injected`, or saying "polled after", when `polled_after`) out of
/// the output, unless `REVIEW_LOUD` is set; other panics print as usual.
/// Installed once per test binary (the first call's prefixes stay).
pub(crate) fn quiet_injected(injected: &'static [&'static str], polled_after: bool) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let m = panic_message(info.payload());
            let quiet = injected.iter().any(|p| m.starts_with(p))
                || (polled_after && m.contains("polled after"));
            if std::env::var_os("REVIEW_LOUD").is_some() || !quiet {
                prev(info)
            }
        }));
    });
}

pub(crate) fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(|s| s.as_str()))
                .unwrap_or("");
            if !msg.starts_with("injected") {
                prev(info);
            }
        }));
    });
}

/// For the Redis tests: one body per executor: tokio current-thread and multi-thread (with IO:
/// redis-rs's tokio connection needs it), and smol (redis-rs's smol
/// connection), each under the watchdog.
macro_rules! redis_matrix {
    ($(async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[test]
            fn tokio_current() {
                common::watchdog(concat!(module_path!(), "::tokio_current"), || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(body())
                })
            }

            #[test]
            fn tokio_multi() {
                common::watchdog(concat!(module_path!(), "::tokio_multi"), || {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(body())
                })
            }

            #[test]
            fn smol() {
                common::watchdog(concat!(module_path!(), "::smol"), || smol::block_on(body()))
            }
        }
    )*};
}

/// A task's waker: records wakes, lets the test thread wait for one.
#[derive(Default)]
pub(crate) struct WaitTask {
    woken: Mutex<bool>,
    cv: std::sync::Condvar,
    pub(crate) wakes: AtomicUsize,
}

impl std::task::Wake for WaitTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        *self.woken.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl WaitTask {
    pub(crate) fn reset(&self) {
        *self.woken.lock().unwrap() = false;
    }
    /// Waits for a wake of this task; false on timeout.
    pub(crate) fn wait(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut woken = self.woken.lock().unwrap();
        while !*woken {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            woken = self.cv.wait_timeout(woken, deadline - now).unwrap().0;
        }
        true
    }
}

/// A child's gate for the stale-waker reviews: the child parks a clone of
/// its waker here at every poll ([`RemoteGate::poll_child`]) and finishes
/// once the gate is done (`state.0`).
#[derive(Default)]
pub(crate) struct RemoteGate {
    pub(crate) state: Mutex<(bool, Option<Waker>)>,
    pub(crate) polls: AtomicUsize,
}

impl RemoteGate {
    pub(crate) fn parked(&self) -> Option<Waker> {
        self.state.lock().unwrap().1.clone()
    }
    pub(crate) fn take(&self) -> Option<Waker> {
        self.state.lock().unwrap().1.take()
    }
    /// Marks the gate done and wakes the parked waker (if any).
    pub(crate) fn complete(&self) {
        let w = {
            let mut st = self.state.lock().unwrap();
            st.0 = true;
            st.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
    /// A poll of the gate's child: counted; `Ready(value)` once done, else
    /// parks a clone of the waker (the previous one dropped outside the
    /// lock).
    pub(crate) fn poll_child(&self, value: usize, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let old = {
            let mut st = self.state.lock().unwrap();
            if st.0 {
                return Poll::Ready(value);
            }
            st.1.replace(cx.waker().clone())
        };
        drop(old);
        Poll::Pending
    }
    /// Waits (20 s at most) for the child to park a waker and takes it;
    /// with `last`, marks the gate done under the same lock.
    pub(crate) fn take_parked(&self, last: bool) -> Waker {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut st = self.state.lock().unwrap();
            if let Some(w) = st.1.take() {
                if last {
                    st.0 = true;
                }
                return w;
            }
            drop(st);
            assert!(
                std::time::Instant::now() < deadline,
                "the child was never polled again"
            );
            std::thread::yield_now();
        }
    }
}

/// A raw task waker for the stale-waker reviews whose drop and/or wake
/// panic once armed (`drop_armed`, `wake_armed`), counting live clones and
/// wakes; `on_drop` runs in its drop. Leaked (its wakers may outlive any
/// scope).
pub(crate) struct BombWaker {
    pub(crate) live: AtomicIsize,
    pub(crate) wakes: AtomicUsize,
    pub(crate) drop_armed: AtomicBool,
    pub(crate) wake_armed: AtomicBool,
    /// Run in its drop (after the counting).
    pub(crate) on_drop: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

static BOMB_WAKER_VT: RawWakerVTable = RawWakerVTable::new(
    bomb_waker_clone,
    bomb_waker_wake,
    bomb_waker_wake_by_ref,
    bomb_waker_drop,
);

unsafe fn bomb_waker_clone(d: *const ()) -> RawWaker {
    // SAFETY: `d` is a leaked `BombWaker` (see `BombWaker::new`), never freed.
    let b = unsafe { &*d.cast::<BombWaker>() };
    b.live.fetch_add(1, Ordering::SeqCst);
    RawWaker::new(d, &BOMB_WAKER_VT)
}
unsafe fn bomb_waker_wake(d: *const ()) {
    // SAFETY: forwarded: a live waker of a leaked `BombWaker`. The drop runs even
    // if the wake panics (as for a by-value wake that unwinds, the waker is
    // consumed).
    struct DropAfter(*const ());
    impl Drop for DropAfter {
        fn drop(&mut self) {
            // SAFETY: a live waker of a leaked `BombWaker`, consumed here once.
            unsafe { bomb_waker_drop(self.0) };
        }
    }
    let _after = DropAfter(d);
    // SAFETY: as above.
    unsafe { bomb_waker_wake_by_ref(d) };
}
unsafe fn bomb_waker_wake_by_ref(d: *const ()) {
    // SAFETY: `d` is a leaked `BombWaker`, never freed.
    let b = unsafe { &*d.cast::<BombWaker>() };
    b.wakes.fetch_add(1, Ordering::SeqCst);
    if b.wake_armed.swap(false, Ordering::SeqCst) {
        panic!("injected: task waker wake");
    }
}
unsafe fn bomb_waker_drop(d: *const ()) {
    // SAFETY: `d` is a leaked `BombWaker`, never freed.
    let b = unsafe { &*d.cast::<BombWaker>() };
    b.live.fetch_sub(1, Ordering::SeqCst);
    let hook = b.on_drop.lock().unwrap().take();
    if let Some(hook) = hook {
        hook();
    }
    if b.drop_armed.swap(false, Ordering::SeqCst) {
        panic!("injected: stale task waker drop");
    }
}

impl BombWaker {
    /// Leaked on purpose (its wakers may outlive any scope), and kept
    /// reachable from a static so LeakSanitizer does not report it.
    pub(crate) fn new() -> &'static BombWaker {
        static ALL: Mutex<Vec<&'static BombWaker>> = Mutex::new(Vec::new());
        let bomb = Box::leak(Box::new(BombWaker {
            live: AtomicIsize::new(0),
            wakes: AtomicUsize::new(0),
            drop_armed: AtomicBool::new(false),
            wake_armed: AtomicBool::new(false),
            on_drop: Mutex::new(None),
        }));
        ALL.lock().unwrap().push(bomb);
        bomb
    }
    pub(crate) fn waker(&'static self) -> Waker {
        self.live.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the vtable counts clones and drops of a `BombWaker` that is
        // leaked (lives for the whole program).
        unsafe {
            Waker::from_raw(RawWaker::new(
                (self as *const BombWaker).cast(),
                &BOMB_WAKER_VT,
            ))
        }
    }
    pub(crate) fn live(&self) -> isize {
        self.live.load(Ordering::SeqCst)
    }
    pub(crate) fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}
