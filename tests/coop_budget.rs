//! Children out of a runtime's cooperative budget: tokio's leaf futures
//! spend a per-task budget of 128 polls, then return `Pending` after waking
//! themselves. A combinator that keeps polling the other woken children in
//! the same poll, and starts over on the next, re-polls each child dozens of
//! times at N = 10 000 (issue 17, item 6). The engine stops a pass after a
//! run of self-wakes with no completion and resumes there on the next poll:
//! polls per child stay below 3.

#[macro_use]
mod common;

use awaitkit::{as_completed, gather};
use futures::StreamExt;
use std::future::{Future, poll_fn};
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
