//! Children out of a runtime's cooperative budget: tokio's leaf futures
//! spend a per-task budget of 128 polls, then return `Pending` after waking
//! themselves. A combinator that keeps polling the other woken children in
//! the same poll, and starts over on the next, re-polls each child dozens of
//! times at N = 10 000 (issue 17, item 6). The engine stops a pass after a
//! run of self-wakes with no completion and resumes there on the next poll:
//! polls per child stay below 3.

use crate::common;

use awaitkit::{as_completed, gather, gather_settled};
use common::{
    Counter, CountingWaker, ParkHandle, STALL_LIMIT, Tracker, WakeLog, WakerStash, panic_message,
    parked_set, poll_next_once, poll_once, total,
};
use futures::{Stream, StreamExt};
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The budget a task poll starts with (tokio's).
const BUDGET: usize = 128;
const N: usize = 10_000;

/// A simulated cooperative budget: refilled on each poll of the parent
/// ([`Budgeted`]), spent by each leaf that completes ([`leaf`]).
#[derive(Default)]
struct World {
    budget: AtomicUsize,
    polls: AtomicUsize,
    fired: AtomicBool,
    /// Wakers parked by the leaves' first polls, fired together by a thread.
    parked: Mutex<Vec<Waker>>,
}

/// Refills the budget on every poll of `inner`, as tokio does per task poll.
struct Budgeted<F> {
    world: Arc<World>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Budgeted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.world.budget.store(BUDGET, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// Waits until the world is fired (parking its waker on the first poll),
/// then completes if budget is left, or wakes itself and returns `Pending`
/// (tokio's `coop::poll_proceed`).
fn leaf(world: &Arc<World>, i: usize) -> impl Future<Output = usize> + Send + use<> {
    let world = world.clone();
    poll_fn(move |cx| {
        world.polls.fetch_add(1, Ordering::Relaxed);
        if !world.fired.load(Ordering::Acquire) {
            world.parked.lock().unwrap().push(cx.waker().clone());
            return Poll::Pending;
        }
        let left = world.budget.load(Ordering::Relaxed);
        if left == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        world.budget.store(left - 1, Ordering::Relaxed);
        Poll::Ready(i)
    })
}

/// Fires every leaf from another thread once all `n` have parked a waker.
fn fire_when_parked(world: &Arc<World>, n: usize) {
    let world = world.clone();
    std::thread::spawn(move || {
        loop {
            let mut parked = world.parked.lock().unwrap();
            if parked.len() == n {
                world.fired.store(true, Ordering::Release);
                let wakers = std::mem::take(&mut *parked);
                drop(parked);
                wakers.into_iter().for_each(Waker::wake);
                return;
            }
            drop(parked);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    });
}

fn polls_per_child(world: &World) -> f64 {
    world.polls.load(Ordering::Relaxed) as f64 / N as f64
}

matrix! {
    async fn gather_out_of_budget_polls_each_child_at_most_three_times() {
        let world = Arc::new(World::default());
        fire_when_parked(&world, N);
        let all = gather((0..N).map(|i| leaf(&world, i)));
        let out = Budgeted { world: world.clone(), inner: Box::pin(all) }.await;
        assert_eq!(out, (0..N).collect::<Vec<_>>());
        let ratio = polls_per_child(&world);
        assert!(ratio <= 3.0, "polls/N = {ratio}");
    }

    async fn as_completed_out_of_budget_polls_each_child_at_most_three_times() {
        let world = Arc::new(World::default());
        fire_when_parked(&world, N);
        let mut set = as_completed((0..N).map(|i| leaf(&world, i)));
        let drain = async move {
            let mut seen = 0;
            while set.next().await.is_some() {
                seen += 1;
            }
            seen
        };
        let seen = Budgeted { world: world.clone(), inner: Box::pin(drain) }.await;
        assert_eq!(seen, N);
        let ratio = polls_per_child(&world);
        assert!(ratio <= 3.0, "polls/N = {ratio}");
    }
}

/// The real thing: tokio oneshot receivers fired from another thread, on a
/// current-thread and a 2-worker runtime. Each receiver is wrapped to count
/// its polls.
fn tokio_oneshots(runtime: tokio::runtime::Runtime) -> f64 {
    let polls = Arc::new(AtomicUsize::new(0));
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..N).map(|_| tokio::sync::oneshot::channel()).unzip();
    let children = receivers.into_iter().map(|mut rx| {
        let polls = polls.clone();
        poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut rx).poll(cx).map(Result::unwrap)
        })
    });
    let all = gather(children);
    let task = runtime.spawn(all);
    let firing = std::thread::spawn(move || {
        for (i, tx) in senders.into_iter().enumerate() {
            tx.send(i).unwrap();
        }
    });
    let out = runtime.block_on(task).unwrap();
    firing.join().unwrap();
    assert_eq!(out, (0..N).collect::<Vec<_>>());
    polls.load(Ordering::Relaxed) as f64 / N as f64
}

guarded! {
    fn tokio_oneshot_fanout_polls_each_child_at_most_three_times() {
        for workers in [0, 2] {
            let runtime = if workers == 0 {
                tokio::runtime::Builder::new_current_thread().build().unwrap()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .build()
                    .unwrap()
            };
            let ratio = tokio_oneshots(runtime);
            eprintln!("tokio oneshots, {workers} workers: polls/N = {ratio:.2}");
            assert!(ratio <= 3.0, "{workers} workers: polls/N = {ratio}");
        }
    }
}

// ---------------------------------------------------------------------------
// The early stop, poll by poll
// ---------------------------------------------------------------------------

/// Children woken once and still `Pending` without waking themselves (what
/// tokio's leaves do out of budget: their wake is deferred past the task
/// poll): once the first snapshot is done, each poll polls the next
/// [`STALL_LIMIT`] of them in input order and wakes the parent exactly once
/// (the early stop's own wake, or the one asking for a fresh snapshot).
fn assert_stops_every_stall_limit(
    counters: &[Counter],
    w: &CountingWaker,
    mut poll_pending: impl FnMut(),
) {
    let n = counters.len();
    let mut start = 0;
    while start < n {
        let end = (start + STALL_LIMIT).min(n);
        let wakes = w.wakes();
        poll_pending();
        for (i, c) in counters.iter().enumerate() {
            let expected = if (start..end).contains(&i) || i < start {
                2
            } else {
                1
            };
            assert_eq!(c.get(), expected, "poll of {start}..{end}: child {i}");
        }
        assert_eq!(
            w.wakes(),
            wakes + 1,
            "poll of {start}..{end}: the parent woken once"
        );
        start = end;
    }
    // The snapshot is done: a fresh one holds nobody.
    let wakes = w.wakes();
    poll_pending();
    assert_eq!(
        total(counters),
        2 * n,
        "a poll with nothing woken polled a child"
    );
    assert_eq!(w.wakes(), wakes);
}

/// A child that parks its waker on its first poll and panics on its second.
fn panics_on_second_poll(
    polls: &Counter,
    tracker: &Tracker,
    stash: &WakerStash,
) -> Pin<Box<dyn Future<Output = usize> + Send>> {
    let (polls, token, stash) = (polls.clone(), tracker.token(), stash.clone());
    Box::pin(poll_fn(move |cx| {
        let _token = &token;
        polls.inc();
        if polls.get() == 2 {
            panic!("second poll");
        }
        stash.push(cx.waker().clone());
        Poll::Pending
    }))
}

/// `n` parked children (boxed), child `panicking` replaced by one that
/// panics on its second poll; returns their handles (`None` for that one),
/// per-child poll counters and the stash holding the panicking child's
/// waker.
#[allow(clippy::type_complexity)]
fn parked_with_panic(
    n: usize,
    panicking: usize,
    tracker: &Tracker,
) -> (
    Vec<Option<ParkHandle>>,
    Vec<Counter>,
    WakerStash,
    Vec<Pin<Box<dyn Future<Output = usize> + Send>>>,
) {
    let stash = WakerStash::default();
    let (handles, counters, children) = parked_set(n, tracker);
    let mut boxed: Vec<Pin<Box<dyn Future<Output = usize> + Send>>> = Vec::new();
    let mut kept = Vec::new();
    for (i, (h, c)) in handles.into_iter().zip(children).enumerate() {
        if i == panicking {
            boxed.push(panics_on_second_poll(&counters[i], tracker, &stash));
            kept.push(None);
        } else {
            boxed.push(Box::pin(c));
            kept.push(Some(h));
        }
    }
    (kept, counters, stash, boxed)
}

fn wake_all(handles: &[Option<ParkHandle>], stash: &WakerStash) {
    for h in handles.iter().flatten() {
        assert!(h.wake());
    }
    stash.wake_all_by_ref();
}

guarded! {
    fn gather_of_woken_children_still_pending_stops_every_stall_limit() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut g = gather(children);
        // The first snapshot is never split, and wakes nobody.
        assert!(poll_once(&mut g, &w).is_pending());
        assert!(counters.iter().all(|c| c.get() == 1));
        assert_eq!(w.wakes(), 0);
        for h in &handles {
            assert!(h.wake());
        }
        assert_stops_every_stall_limit(&counters, &w, || assert!(poll_once(&mut g, &w).is_pending()));
        for h in &handles {
            assert!(h.complete());
        }
        assert_eq!(poll_once(&mut g, &w), Poll::Ready((0..100).collect::<Vec<_>>()));
        // Polls = wakes + N: two wakes each.
        assert!(counters.iter().all(|c| c.get() == 3));
        drop(g);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    fn as_completed_of_woken_children_still_pending_stops_every_stall_limit() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        assert!(counters.iter().all(|c| c.get() == 1));
        assert_eq!(w.wakes(), 0);
        for h in &handles {
            assert!(h.wake());
        }
        assert_stops_every_stall_limit(&counters, &w, || assert!(poll_next_once(&mut set, &w).is_pending()));
        for h in &handles {
            assert!(h.complete());
        }
        let mut out = Vec::new();
        while let Poll::Ready(Some(v)) = poll_next_once(&mut set, &w) {
            out.push(v);
        }
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert!(counters.iter().all(|c| c.get() == 3));
        drop(set);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// A completion resets the count: a child finishing in the middle of a
    /// run of stalls lets the pass go on for another `STALL_LIMIT`.
    fn a_completion_resets_the_stall_count() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        for (i, h) in handles.iter().enumerate() {
            if i == 20 {
                h.complete();
            } else {
                assert!(h.wake());
            }
        }
        // Poll: 0..=19 stall, 20 finishes, then 21..=52 stall: stop.
        let wakes = w.wakes();
        assert!(poll_once(&mut g, &w).is_pending());
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), if i <= 20 + STALL_LIMIT { 2 } else { 1 }, "child {i}");
        }
        assert_eq!(w.wakes(), wakes + 1);
    }

    /// A child panicking in a pass that is going on after an early stop: the
    /// panic propagates from that poll (the children after it not polled),
    /// the gather refuses further polls, and dropping it drops every child
    /// once and releases the parent waker.
    fn gather_child_panicking_after_an_early_stop() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, stash, children) = parked_with_panic(100, 40, &tracker);
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        wake_all(&handles, &stash);
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(total(&counters), 100 + STALL_LIMIT);
        let payload = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))).unwrap_err();
        assert_eq!(panic_message(&*payload), "second poll");
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), if i <= 40 { 2 } else { 1 }, "child {i}");
        }
        let again = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))).unwrap_err();
        assert!(panic_message(&*again).contains("polled after a panic"));
        drop(g);
        stash.clear();
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// The same in `gather_settled`: the panic settles that child, which is
    /// a completion, so the pass goes on for another `STALL_LIMIT` stalls.
    fn gather_settled_child_panicking_after_an_early_stop() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, stash, children) = parked_with_panic(100, 40, &tracker);
        let mut g = gather_settled(children);
        assert!(poll_once(&mut g, &w).is_pending());
        wake_all(&handles, &stash);
        assert!(poll_once(&mut g, &w).is_pending());
        let wakes = w.wakes();
        assert!(poll_once(&mut g, &w).is_pending());
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), if i <= 40 + STALL_LIMIT { 2 } else { 1 }, "child {i}");
        }
        assert_eq!(w.wakes(), wakes + 1);
        for h in handles.iter().flatten() {
            h.complete();
        }
        let mut out = Poll::Pending;
        for _ in 0..10 {
            out = poll_once(&mut g, &w);
            if out.is_ready() {
                break;
            }
        }
        let Poll::Ready(out) = out else { panic!("gather_settled never finished") };
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i),
                Err(p) => {
                    assert_eq!(i, 40);
                    assert_eq!(p.message(), Some("second poll"));
                }
            }
        }
        assert!(out[40].is_err());
        drop(g);
        stash.clear();
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// `as_completed` stays usable after a child's panic: the next poll goes
    /// on with the rest of the snapshot (the panicking child not polled
    /// again), `STALL_LIMIT` at a time.
    fn as_completed_child_panicking_after_an_early_stop() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, stash, children) = parked_with_panic(100, 40, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        wake_all(&handles, &stash);
        assert!(poll_next_once(&mut set, &w).is_pending());
        let payload = std::panic::catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut set, &w))).unwrap_err();
        assert_eq!(panic_message(&*payload), "second poll");
        let wakes = w.wakes();
        assert!(poll_next_once(&mut set, &w).is_pending());
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), if i <= 40 + STALL_LIMIT { 2 } else { 1 }, "child {i}");
        }
        assert_eq!(w.wakes(), wakes + 1);
        assert!(poll_next_once(&mut set, &w).is_pending());
        assert!(counters.iter().all(|c| c.get() == 2));
        drop(set);
        stash.clear();
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// The parent waker panics when the early stop wakes it: the panic
    /// propagates from that poll, after the stop kept the rest of the
    /// snapshot; `as_completed` then goes on exactly where it stopped, and
    /// the panicking waker is released once a fresh snapshot registers
    /// another.
    fn parent_waker_panicking_on_the_early_stop() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        for h in &handles {
            assert!(h.wake());
        }
        let log = WakeLog::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let boom = log.waker_with(
            7,
            Some(Box::new(|| panic!("parent waker"))),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        let payload = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut set).poll_next(&mut Context::from_waker(&boom))
        }))
        .unwrap_err();
        assert_eq!(panic_message(&*payload), "parent waker");
        assert_eq!(log.get(), [7], "woken once, by the early stop");
        drop(boom);
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), if i < STALL_LIMIT { 2 } else { 1 }, "child {i}");
        }
        // Registered for the snapshot: still alive.
        assert!(!dropped.load(Ordering::SeqCst));
        // Goes on from child STALL_LIMIT, a stall limit at a time.
        let n = counters.len();
        let mut start = STALL_LIMIT;
        while start < n {
            let end = (start + STALL_LIMIT).min(n);
            let wakes = w.wakes();
            assert!(poll_next_once(&mut set, &w).is_pending());
            for (i, c) in counters.iter().enumerate() {
                assert_eq!(c.get(), if i < end { 2 } else { 1 }, "poll of {start}..{end}: child {i}");
            }
            assert_eq!(w.wakes(), wakes + 1);
            start = end;
        }
        // A fresh snapshot registers `w`, releasing the panicking waker.
        assert!(poll_next_once(&mut set, &w).is_pending());
        assert!(dropped.load(Ordering::SeqCst));
        for h in &handles {
            assert!(h.complete());
        }
        let mut out = Vec::new();
        while let Poll::Ready(Some(v)) = poll_next_once(&mut set, &w) {
            out.push(v);
        }
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert!(counters.iter().all(|c| c.get() == 3));
        drop(set);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// The same in `gather`: the panic poisons it; dropping it drops every
    /// child once and releases both wakers.
    fn gather_parent_waker_panicking_on_the_early_stop() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        for h in &handles {
            assert!(h.wake());
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let boom = WakeLog::new().waker_with(
            0,
            Some(Box::new(|| panic!("parent waker"))),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        let payload = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut g).poll(&mut Context::from_waker(&boom))
        }))
        .unwrap_err();
        assert_eq!(panic_message(&*payload), "parent waker");
        assert_eq!(total(&counters), 100 + STALL_LIMIT);
        drop(boom);
        drop(g);
        assert!(dropped.load(Ordering::SeqCst), "the registered panicking waker leaked");
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }
}
