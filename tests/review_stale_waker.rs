//! Break-it review of 84db0f0: a one-word engine set (up to 63 children:
//! `gather`/`try_gather`/`gather_settled` of an iterator without an exact
//! size, `as_completed`, `wait`, `wait_any`, task groups, batches) that moved
//! to another task lets the previous task's waker go at its next pass once no
//! child's waker lives outside its poll (`ParentWaker::take_stale` in
//! `ReadySet::open`).
//!
//! Scenario names: `s1_*` lost wake-ups with clones on other threads, `s2_*`
//! borrowed wakers lent to scoped threads, `s3_*` panics and re-entrance,
//! `s4_*` retention per engine user, `s5_*` the rest.
//!
//! Failing on 84db0f0 (each asserts the correct behaviour; all four fixed
//! since: the let-go or replaced waker's panicking drop wakes the current
//! task before the panic goes on, `ReadySet::let_go_stale` / `let_go` and
//! `ParentWaker::register_new`; a set with no child running lets a left
//! task's waker go at its next poll, `Engine::pass`):
//!
//! * `s3a_as_completed_stale_drop_panics_with_a_child_ready` (this change):
//!   the let-go waker's drop panics out of `ReadySet::open` before the word
//!   is read, with a child's bit set and no waker registered: a consumer of
//!   `as_completed` (never poisoned) that catches the panic is never woken.
//! * `s3a_general_path_register_drop_panics_with_a_child_ready` (older, the
//!   same defect in `register_new` on the general path).
//! * `s4_retention_as_completed_exhausted`,
//!   `s4_retention_task_group_no_task_running` (older, not covered by the
//!   change: `open` only runs while a child runs, so a set with none keeps a
//!   left task's waker until dropped; a task group's running tasks always
//!   hold a clone of their engine waker, so for task groups `take_stale` is
//!   never reached at all).

#[macro_use]
mod common;

use awaitkit::{
    AsCompleted, ReturnWhen, as_completed, gather, gather_settled, process_batch, task_group,
    try_gather, wait, wait_any,
};
use common::{CountingWaker, Tracker, poll_next_once, poll_once};
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn quiet() {
    common::quiet_injected(&["injected"], true);
}

use common::WaitTask as Task;

/// Runs `fut` to completion, polling it in a new task (a new waker) at most
/// polls (`p_new`), and after each `Pending` waiting for a wake of the task
/// it was polled in: a wake that reaches an older task only is lost (the
/// test fails). Returns the output, and checks every task's waker was
/// released once `fut` is dropped and `settle` ran (it joins the threads
/// that may still hold a child's waker, in the middle of a wake).
fn run_moving<F: Future + Unpin>(
    name: &str,
    mut fut: F,
    rng: &mut SmallRng,
    p_new: f64,
    settle: impl FnOnce(),
) -> F::Output {
    let mut tasks: Vec<Arc<Task>> = vec![Arc::default()];
    let out = loop {
        if rng.gen_bool(p_new) {
            tasks.push(Arc::default());
        }
        let task = tasks.last().unwrap().clone();
        task.reset();
        let waker = Waker::from(task.clone());
        let polled = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
        drop(waker);
        if let Poll::Ready(out) = polled {
            break out;
        }
        assert!(
            task.wait(Duration::from_secs(10)),
            "{name}: lost wake-up: the task the set was last polled in was never woken"
        );
    };
    drop(fut);
    settle();
    for (i, t) in tasks.iter().enumerate() {
        // One reference in `tasks` (the clone above was dropped).
        assert_eq!(
            Arc::strong_count(t),
            1,
            "{name}: task {i}'s waker still held after the set was dropped"
        );
    }
    out
}

// A child woken from another thread parks a clone of its waker in its gate
// at every poll and finishes once the gate says so.
use common::RemoteGate as Gate;

struct Remote {
    gate: Arc<Gate>,
    value: usize,
    _token: common::Token,
}

impl Future for Remote {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.gate.poll_child(self.value, cx)
    }
}

/// Fires a gate `rounds` times (spurious wakes, then a completing one),
/// each time taking the parked waker and waking it one of several ways at
/// a random moment, sometimes holding it a little first (so that owner
/// polls see `refs > 1`) and sometimes dropping it right after a wake (the
/// last clone's drop racing the owner's next pass).
fn fire(gate: Arc<Gate>, rounds: usize, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = SmallRng::seed_from_u64(seed);
        for round in 0..rounds {
            let last = round + 1 == rounds;
            let waker = gate.take_parked(last);
            if rng.gen_bool(0.3) {
                for _ in 0..rng.gen_range(0..200) {
                    std::hint::spin_loop();
                }
            }
            match rng.gen_range(0..4) {
                0 => waker.wake(),
                1 => {
                    waker.wake_by_ref();
                    drop(waker);
                }
                2 => {
                    let c = waker.clone();
                    drop(waker);
                    c.wake();
                }
                _ => {
                    // Wake, keep the clone a little longer (owner polls
                    // meanwhile see it), then drop it.
                    waker.wake_by_ref();
                    std::thread::yield_now();
                    drop(waker);
                }
            }
        }
    })
}

/// `n` remote children and their firing threads.
fn remotes(
    n: usize,
    rounds: usize,
    seed: u64,
    tracker: &Tracker,
) -> (Vec<Remote>, Vec<std::thread::JoinHandle<()>>) {
    let mut children = Vec::new();
    let mut threads = Vec::new();
    for i in 0..n {
        let gate = Arc::new(Gate::default());
        threads.push(fire(gate.clone(), rounds, seed * 1000 + i as u64));
        children.push(Remote {
            gate,
            value: i,
            _token: tracker.token(),
        });
    }
    (children, threads)
}

fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    for t in threads {
        t.join().unwrap();
    }
}

/// A child that parks a clone of its waker in a shared slot at each poll
/// and finishes once told.
#[derive(Default)]
struct Slot(Mutex<Option<Waker>>, AtomicBool);

impl Slot {
    fn take(&self) -> Option<Waker> {
        self.0.lock().unwrap().take()
    }
    fn complete(&self) {
        self.1.store(true, Ordering::SeqCst);
        if let Some(w) = self.take() {
            w.wake();
        }
    }
}

struct Parker(Arc<Slot>, usize);

impl Future for Parker {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.0.1.load(Ordering::SeqCst) {
            return Poll::Ready(self.1);
        }
        let old = self.0.0.lock().unwrap().replace(cx.waker().clone());
        drop(old);
        Poll::Pending
    }
}

fn parkers(n: usize) -> (Vec<Arc<Slot>>, impl Iterator<Item = Parker>) {
    let slots: Vec<Arc<Slot>> = (0..n).map(|_| Arc::default()).collect();
    let it = slots
        .clone()
        .into_iter()
        .enumerate()
        .map(|(i, s)| Parker(s, i))
        .collect::<Vec<_>>()
        .into_iter()
        // No exact size: the engine, not the small block.
        .filter(|_| true);
    (slots, it)
}

use common::BombWaker as Bomb;

fn poll_with<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

fn next_with<S: futures::Stream + Unpin>(s: &mut S, w: &Waker) -> Poll<Option<S::Item>> {
    Pin::new(s).poll_next(&mut Context::from_waker(w))
}

// ---------------------------------------------------------------------------
// s1: lost wake-ups, clones on other threads, the task changing
// ---------------------------------------------------------------------------

const SIZES: [usize; 4] = [1, 2, 5, 63];

fn rounds_for(n: usize) -> usize {
    if n > 8 { 2 } else { 6 }
}

/// `gather` of remote children (each woken spuriously several times, then
/// completed, from its own thread) polled in a new task most polls.
#[test]
fn s1_gather_remote_wakes_new_task_each_poll() {
    common::watchdog("s1_gather", || {
        let mut rng = SmallRng::seed_from_u64(1);
        for iter in 0..60u64 {
            for n in SIZES {
                let tracker = Tracker::new();
                let (children, threads) = remotes(n, rounds_for(n), iter, &tracker);
                let p_new = [1.0, 0.7, 0.3][iter as usize % 3];
                let out = run_moving(
                    &format!("gather n = {n} iter {iter}"),
                    gather(children.into_iter().filter(|_| true)),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                assert_eq!(out, (0..n).collect::<Vec<_>>());
                assert_eq!(tracker.live(), 0, "every child dropped");
            }
        }
    });
}

/// Every other one-word engine user, the same way.
#[test]
fn s1_every_engine_user_remote_wakes_new_task_each_poll() {
    common::watchdog("s1_every", || {
        let mut rng = SmallRng::seed_from_u64(2);
        for iter in 0..25u64 {
            for n in [1usize, 3, 40] {
                let rounds = rounds_for(n);
                let p_new = [1.0, 0.5][iter as usize % 2];
                let all: Vec<usize> = (0..n).collect();
                // as_completed
                let tracker = Tracker::new();
                let (children, threads) = remotes(n, rounds, iter, &tracker);
                let mut out = run_moving(
                    &format!("as_completed n = {n}"),
                    as_completed(children).collect::<Vec<_>>(),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                out.sort();
                assert_eq!(out, all);
                assert_eq!(tracker.live(), 0);
                // try_gather
                let (children, threads) = remotes(n, rounds, iter + 100, &tracker);
                let out = run_moving(
                    &format!("try_gather n = {n}"),
                    try_gather(
                        children
                            .into_iter()
                            .map(|c| futures::FutureExt::map(c, Ok::<usize, ()>))
                            .filter(|_| true),
                    ),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                assert_eq!(out, Ok(all.clone()));
                assert_eq!(tracker.live(), 0);
                // gather_settled
                let (children, threads) = remotes(n, rounds, iter + 200, &tracker);
                let out = run_moving(
                    &format!("gather_settled n = {n}"),
                    gather_settled(children.into_iter().filter(|_| true)),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                assert_eq!(out.into_iter().map(Result::unwrap).collect::<Vec<_>>(), all);
                assert_eq!(tracker.live(), 0);
                // wait(AllCompleted)
                let (children, threads) = remotes(n, rounds, iter + 300, &tracker);
                // (The outcome's `pending` set, empty, would hold the last
                // task's registration: dropped with the future.)
                let done = run_moving(
                    &format!("wait n = {n}"),
                    Box::pin(async move { wait(children, ReturnWhen::AllCompleted).await.done }),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                let mut got: Vec<usize> = done.into_iter().map(|(_, v)| v).collect();
                got.sort();
                assert_eq!(got, all);
                assert_eq!(tracker.live(), 0);
                // wait_any, then the rest as a stream, in other tasks
                let (children, threads) = remotes(n, rounds, iter + 400, &tracker);
                let mut got = run_moving(
                    &format!("wait_any n = {n}"),
                    Box::pin(async move {
                        let (i, v, rest) = wait_any(children).await.unwrap();
                        assert_eq!(i, v);
                        let mut got = rest.collect::<Vec<_>>().await;
                        got.push(v);
                        got
                    }),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                got.sort();
                assert_eq!(got, all);
                assert_eq!(tracker.live(), 0);
                // process_batch (limit below n: pushes into a reused slot)
                let (children, threads) = remotes(n, rounds, iter + 500, &tracker);
                let cells: Vec<Mutex<Option<Remote>>> =
                    children.into_iter().map(|c| Mutex::new(Some(c))).collect();
                let out = run_moving(
                    &format!("process_batch n = {n}"),
                    Box::pin(process_batch(0..n, n.div_ceil(2), |i| {
                        cells[i].lock().unwrap().take().unwrap()
                    })),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                assert_eq!(out, all);
                drop(cells);
                assert_eq!(tracker.live(), 0);
                // task group
                let (children, threads) = remotes(n, rounds, iter + 600, &tracker);
                let group = task_group(|tg| async move {
                    let handles: Vec<_> = children
                        .into_iter()
                        .map(|c| tg.spawn(async move { Ok::<usize, ()>(c.await) }))
                        .collect();
                    let mut out = Vec::new();
                    for h in handles {
                        out.push(h.await.unwrap().unwrap());
                    }
                    Ok::<Vec<usize>, ()>(out)
                });
                let out = run_moving(
                    &format!("task_group n = {n}"),
                    Box::pin(group),
                    &mut rng,
                    p_new,
                    || join(threads),
                );
                assert_eq!(out, Ok(all.clone()));
                assert_eq!(tracker.live(), 0);
            }
        }
    });
}

/// `as_completed` growing by `push` past 64 children (the general path,
/// several chunks) while remote wakes race the owner's polls in new tasks.
#[test]
fn s1_as_completed_push_past_64() {
    common::watchdog("s1_push", || {
        let mut rng = SmallRng::seed_from_u64(3);
        for iter in 0..4u64 {
            let tracker = Tracker::new();
            let (children, threads) = remotes(70, 2, iter + 700, &tracker);
            let mut set = AsCompleted::new();
            let mut children = children.into_iter();
            let mut got = Vec::new();
            // Start with 10, poll (one word), then push the rest a few at a
            // time between polls.
            for c in children.by_ref().take(10) {
                set.push(c);
            }
            let mut tasks: Vec<Arc<Task>> = Vec::new();
            loop {
                for c in children.by_ref().take(rng.gen_range(0..8)) {
                    set.push(c);
                }
                if tasks.is_empty() || rng.gen_bool(0.7) {
                    tasks.push(Arc::default());
                }
                let task = tasks.last().unwrap().clone();
                task.reset();
                let waker = Waker::from(task.clone());
                let r = next_with(&mut set, &waker);
                drop(waker);
                match r {
                    Poll::Ready(Some(v)) => got.push(v),
                    Poll::Ready(None) => {
                        if children.len() == 0 {
                            break;
                        }
                    }
                    Poll::Pending => {
                        if children.len() == 0 {
                            assert!(
                                task.wait(Duration::from_secs(10)),
                                "push past 64: lost wake-up"
                            );
                        } else {
                            std::thread::yield_now();
                        }
                    }
                }
            }
            got.sort();
            assert_eq!(got, (0..70).collect::<Vec<_>>());
            drop(set);
            join(threads);
            assert_eq!(tracker.live(), 0);
            for t in &tasks {
                assert_eq!(Arc::strong_count(t), 1, "a task's waker still held");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// s2: borrowed wakers lent to scoped threads while the task changes
// ---------------------------------------------------------------------------

/// A child that lends `cx.waker()` (a reference) to a scoped thread at each
/// poll: the thread clones it and, by `mode`, drops the clone, wakes it,
/// wakes the borrowed one, or sends the clone to a detached thread that
/// wakes it later. Finishes after `left` polls.
struct Lender {
    left: usize,
    seed: u64,
    detached: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Future for Lender {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.left == 0 {
            return Poll::Ready(0);
        }
        self.left -= 1;
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mode = (self.seed >> 33) % 4;
        let waker = cx.waker();
        let mut escaped = None;
        std::thread::scope(|s| {
            let h = s.spawn(|| match mode {
                0 => {
                    let c = waker.clone();
                    c.wake();
                    None
                }
                1 => {
                    waker.wake_by_ref();
                    let c = waker.clone();
                    drop(c);
                    None
                }
                2 => Some(waker.clone()),
                _ => {
                    let c = waker.clone();
                    std::thread::yield_now();
                    c.wake_by_ref();
                    drop(c);
                    None
                }
            });
            escaped = h.join().unwrap();
        });
        if let Some(c) = escaped {
            // Woken later from a detached thread.
            let h = std::thread::spawn(move || {
                std::thread::yield_now();
                c.wake();
            });
            self.detached.lock().unwrap().push(h);
        }
        Poll::Pending
    }
}

#[test]
fn s2_lent_borrowed_waker_task_changes() {
    common::watchdog("s2_lent", || {
        let mut rng = SmallRng::seed_from_u64(4);
        for iter in 0..40u64 {
            for n in [1usize, 2, 7] {
                let detached = Arc::new(Mutex::new(Vec::new()));
                let children: Vec<Lender> = (0..n)
                    .map(|i| Lender {
                        left: 3 + i % 3,
                        seed: iter * 31 + i as u64,
                        detached: detached.clone(),
                    })
                    .collect();
                let name = format!("lender gather n = {n} iter {iter}");
                let settle = || join(std::mem::take(&mut *detached.lock().unwrap()));
                let out = run_moving(
                    &name,
                    gather(children.into_iter().filter(|_| true)),
                    &mut rng,
                    0.8,
                    settle,
                );
                assert_eq!(out, vec![0; n]);
                let children: Vec<Lender> = (0..n)
                    .map(|i| Lender {
                        left: 2 + i % 4,
                        seed: iter * 17 + i as u64,
                        detached: detached.clone(),
                    })
                    .collect();
                let name = format!("lender as_completed n = {n} iter {iter}");
                let settle = || join(std::mem::take(&mut *detached.lock().unwrap()));
                let out = run_moving(
                    &name,
                    as_completed(children).collect::<Vec<_>>(),
                    &mut rng,
                    0.8,
                    settle,
                );
                assert_eq!(out, vec![0; n]);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// s3: panics and re-entrance
// ---------------------------------------------------------------------------

/// Task 1 registered (a clone escaped), the clone woken (a bit set, task 1
/// woken) and dropped; `as_completed` (never poisoned) polled in task 2:
/// task 1's waker is let go and its drop panics. A consumer that catches the
/// panic and waits for a wake (as `review_one_word` expects of a child's
/// panic) must be woken: child 0 is ready and nobody else will.
#[test]
fn s3a_as_completed_stale_drop_panics_with_a_child_ready() {
    quiet();
    for n in [1usize, 2, 63] {
        let (slots, children) = parkers(n);
        let mut set = as_completed(children);
        let bomb = Bomb::new();
        let w1 = bomb.waker();
        assert!(next_with(&mut set, &w1).is_pending());
        assert_eq!(bomb.live(), 2, "n = {n}: task 1 registered");
        // The escaped clone wakes (task 1 is woken) and is dropped; the
        // other children's clones are dropped unwoken: none lives.
        slots[0].complete();
        for s in &slots[1..] {
            drop(s.take());
        }
        assert_eq!(bomb.wakes.load(Ordering::SeqCst), 1);
        bomb.drop_armed.store(true, Ordering::SeqCst);
        let task2 = CountingWaker::new();
        let r = catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut set, &task2)));
        let msg = common::panic_message(&*r.expect_err("the drop's panic propagates"));
        assert!(msg.contains("injected"), "{msg}");
        assert_eq!(bomb.live(), 1, "n = {n}: let go once");
        // The consumer returns Pending and waits.
        assert!(
            task2.wakes() > 0,
            "n = {n}: after the let-go waker's panic, child 0 is ready but task 2 \
             (where the set now runs) is never woken"
        );
        // Polling on still hands it out.
        assert_eq!(poll_next_once(&mut set, &task2), Poll::Ready(Some(0)));
        drop(set);
        drop(w1);
        assert_eq!(bomb.live(), 0);
        assert_eq!(task2.live_clones(), 0);
    }
}

/// The same on the general path (older code): the set registers task 2 over
/// task 1 (`register_new`) while another child's clone is alive, and task
/// 1's drop panics there. Classifies s3a.
#[test]
fn s3a_general_path_register_drop_panics_with_a_child_ready() {
    quiet();
    for n in [2usize, 63] {
        let (slots, children) = parkers(n);
        let mut set = as_completed(children);
        let bomb = Bomb::new();
        let w1 = bomb.waker();
        assert!(next_with(&mut set, &w1).is_pending());
        slots[0].complete();
        // Child 1's clone stays alive: refs > 1, the general path.
        assert!(slots[1].0.lock().unwrap().is_some());
        bomb.drop_armed.store(true, Ordering::SeqCst);
        let task2 = CountingWaker::new();
        let r = catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut set, &task2)));
        assert!(r.is_err(), "n = {n}: the drop's panic propagates");
        assert!(
            task2.wakes() > 0,
            "n = {n} (general path, older code): after the replaced waker's panic, \
             child 0 is ready but task 2 is never woken"
        );
        assert_eq!(poll_next_once(&mut set, &task2), Poll::Ready(Some(0)));
        drop(set);
        drop(w1);
        for s in &slots {
            drop(s.take());
        }
        assert_eq!(bomb.live(), 0);
    }
}

/// `gather` (poisoned by a panic out of its poll), `wait_any`, `wait`,
/// `try_gather`, `gather_settled`: the let-go waker's drop panics; the
/// combinator is poisoned, every child dropped exactly once, the stale waker
/// dropped once, nothing leaked, no abort.
#[test]
fn s3b_poisoned_users_stale_drop_panics() {
    quiet();
    fn check<S: Future + Unpin>(name: &str, make: impl Fn(Vec<Parker>) -> S) {
        for n in [1usize, 5, 63] {
            let (slots, children) = parkers(n);
            let mut set = (make(children.collect()),);
            let bomb = Bomb::new();
            let w1 = bomb.waker();
            assert!(poll_with(&mut set.0, &w1).is_pending());
            assert_eq!(bomb.live(), 2, "{name} n = {n}: registered");
            for s in &slots {
                drop(s.take());
            }
            bomb.drop_armed.store(true, Ordering::SeqCst);
            let task2 = CountingWaker::new();
            let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut set.0, &task2)));
            assert!(r.is_err(), "{name} n = {n}: propagates");
            assert_eq!(bomb.live(), 1, "{name} n = {n}: dropped once");
            let again = catch_unwind(AssertUnwindSafe(|| poll_once(&mut set.0, &task2)));
            let Err(payload) = again else {
                panic!("{name} n = {n}: not poisoned")
            };
            let msg = common::panic_message(&*payload);
            assert!(msg.contains("polled after"), "{name}: {msg}");
            drop(set);
            drop(w1);
            assert_eq!(bomb.live(), 0, "{name} n = {n}");
            assert_eq!(task2.live_clones(), 0, "{name} n = {n}");
            for s in &slots {
                assert!(
                    s.take().is_none(),
                    "{name} n = {n}: a child waker outlived the set"
                );
            }
        }
    }
    check("gather", |c| gather(c.into_iter().filter(|_| true)));
    check("try_gather", |c| {
        try_gather(
            c.into_iter()
                .map(|p| futures::FutureExt::map(p, Ok::<usize, ()>))
                .filter(|_| true),
        )
    });
    check("gather_settled", |c| {
        gather_settled(c.into_iter().filter(|_| true))
    });
    check("wait_any", wait_any);
    check("wait", |c| wait(c, ReturnWhen::AllCompleted));
}

/// Children that count their drops: each is dropped exactly once, after a
/// stale-drop panic and the combinator's drop; the chunk is freed (checked
/// by the allocation counter).
#[test]
fn s3b_children_dropped_once_and_chunk_freed() {
    quiet();
    struct Counted(Parker, Arc<AtomicUsize>);
    impl Future for Counted {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            Pin::new(&mut self.0).poll(cx)
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    let bomb = Bomb::new();
    // Warm up lazy statics (panic machinery, thread locals).
    let run = |n: usize| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (slots, children) = parkers(n);
        let children: Vec<Counted> = children.map(|p| Counted(p, drops.clone())).collect();
        let mut set = gather(children.into_iter().filter(|_| true));
        let w1 = bomb.waker();
        assert!(poll_with(&mut set, &w1).is_pending());
        for s in &slots {
            drop(s.take());
        }
        bomb.drop_armed.store(true, Ordering::SeqCst);
        let task2 = Waker::noop();
        assert!(catch_unwind(AssertUnwindSafe(|| poll_with(&mut set, task2))).is_err());
        drop(set);
        drop(w1);
        assert_eq!(drops.load(Ordering::SeqCst), n, "every child dropped once");
        for s in &slots {
            drop(s.take());
        }
        drop(slots);
    };
    run(3);
    for n in [1usize, 3, 63] {
        let leaked = common::net_alloc(|| run(n));
        assert_eq!(leaked, 0, "n = {n}: {leaked} bytes still allocated");
    }
    assert_eq!(bomb.live(), 0);
}

/// The let-go waker's drop re-enters: it wakes the task the set runs in now
/// (a clone of it, dropped there), and it pushes a wake through a clone of a
/// child waker of *another* set stashed in it. Nothing breaks: the pass goes
/// on, the ready child is handed out, counts balance.
#[test]
fn s3c_stale_drop_reenters() {
    for n in [1usize, 2, 63] {
        let (slots, children) = parkers(n);
        let mut set = as_completed(children);
        let (other_slots, other_children) = parkers(2);
        let mut other = as_completed(other_children);
        let bomb = Bomb::new();
        let w1 = bomb.waker();
        let task2 = CountingWaker::new();
        let other_task = CountingWaker::new();
        assert!(poll_next_once(&mut other, &other_task).is_pending());
        assert!(next_with(&mut set, &w1).is_pending());
        slots[0].complete();
        for s in &slots[1..] {
            drop(s.take());
        }
        let t2 = task2.waker().clone();
        let other_clone = other_slots[0].take();
        *bomb.on_drop.lock().unwrap() = Some(Box::new(move || {
            t2.wake_by_ref();
            drop(t2);
            if let Some(c) = other_clone {
                c.wake();
            }
        }));
        // The hook runs at the first drop: of `w1` here unless the set
        // drops its registration first; drop the registration by polling.
        assert_eq!(poll_next_once(&mut set, &task2), Poll::Ready(Some(0)));
        assert_eq!(bomb.live(), 1, "n = {n}: let go at that pass");
        assert!(task2.wakes() >= 1);
        assert!(other_task.wakes() >= 1, "the other set's child woke it");
        drop(w1);
        drop(set);
        drop(other);
        for s in slots.iter().chain(&other_slots) {
            drop(s.take());
        }
        assert_eq!(bomb.live(), 0);
        assert_eq!(task2.live_clones(), 0);
        assert_eq!(other_task.live_clones(), 0);
    }
}

/// A combinator polled from a `Drop` while another panic unwinds: the
/// let-go waker's drop panics too; that panic is discarded (no abort), the
/// waker is dropped once, and the poll goes on (hands out the ready child).
#[test]
fn s3d_stale_drop_panics_during_unwind() {
    quiet();
    struct PollOnDrop {
        set: Option<AsCompleted<Parker>>,
        waker: Waker,
        got: Arc<Mutex<Option<Poll<Option<usize>>>>>,
    }
    impl Drop for PollOnDrop {
        fn drop(&mut self) {
            let mut set = self.set.take().unwrap();
            let r = next_with(&mut set, &self.waker);
            *self.got.lock().unwrap() = Some(r);
        }
    }
    for n in [1usize, 2, 63] {
        let (slots, children) = parkers(n);
        let mut set = as_completed(children);
        let bomb = Bomb::new();
        let w1 = bomb.waker();
        assert!(next_with(&mut set, &w1).is_pending());
        slots[0].complete();
        for s in &slots[1..] {
            drop(s.take());
        }
        bomb.drop_armed.store(true, Ordering::SeqCst);
        let task2 = CountingWaker::new();
        let got = Arc::new(Mutex::new(None));
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _g = PollOnDrop {
                set: Some(set),
                waker: task2.waker().clone(),
                got: got.clone(),
            };
            panic!("injected: outer panic");
        }));
        let msg = common::panic_message(&*r.expect_err("outer"));
        assert_eq!(msg, "injected: outer panic", "n = {n}");
        assert_eq!(*got.lock().unwrap(), Some(Poll::Ready(Some(0))), "n = {n}");
        assert_eq!(bomb.live(), 1, "n = {n}: let go once");
        assert!(
            !bomb.drop_armed.load(Ordering::SeqCst),
            "n = {n}: its drop ran"
        );
        drop(w1);
        for s in &slots {
            drop(s.take());
        }
        assert_eq!(bomb.live(), 0);
        assert_eq!(task2.live_clones(), 0);
    }
}

/// The new task's waker `clone` panics when the set registers it at the end
/// of a pass in which a child's waker escaped, right after the stale one
/// was let go at its start. The panic propagates; the pass is closed on
/// the way out; the escaped clone still reaches a later task.
#[test]
fn s3e_new_waker_clone_panics_after_let_go() {
    quiet();
    thread_local! {
        static CLONES: Cell<isize> = const { Cell::new(0) };
        static BOOM: Cell<bool> = const { Cell::new(false) };
    }
    static VT: RawWakerVTable = RawWakerVTable::new(
        |d| {
            if BOOM.with(|b| b.replace(false)) {
                panic!("injected: task waker clone");
            }
            CLONES.with(|c| c.set(c.get() + 1));
            RawWaker::new(d, &VT)
        },
        |_| CLONES.with(|c| c.set(c.get() - 1)),
        |_| {},
        |_| CLONES.with(|c| c.set(c.get() - 1)),
    );
    for n in [1usize, 2, 63] {
        let (slots, children) = parkers(n);
        let mut set = as_completed(children);
        let task1 = CountingWaker::new();
        assert!(poll_next_once(&mut set, &task1).is_pending());
        assert_eq!(task1.live_clones(), 1);
        // All escaped clones woken (every child re-polled in the next pass,
        // parking new clones) and dropped.
        for s in &slots {
            if let Some(w) = s.take() {
                w.wake();
            }
        }
        // SAFETY: the vtable ignores the data pointer; it counts clones in
        // a thread local (the original is not counted).
        let task2 = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) };
        CLONES.with(|c| c.set(0));
        BOOM.with(|b| b.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| next_with(&mut set, &task2)));
        assert!(r.is_err(), "n = {n}: the clone's panic propagates");
        assert_eq!(task1.live_clones(), 0, "n = {n}: task 1 let go");
        // The clones parked in that pass reach the next task.
        let task3 = CountingWaker::new();
        assert!(poll_next_once(&mut set, &task3).is_pending());
        slots[n - 1].complete();
        assert!(task3.wakes() > 0, "n = {n}: the escaped clone woke nobody");
        assert_eq!(poll_next_once(&mut set, &task3), Poll::Ready(Some(n - 1)));
        drop(set);
        for s in &slots {
            drop(s.take());
        }
        assert_eq!(CLONES.with(Cell::get), 0, "n = {n}");
        assert_eq!(task3.live_clones(), 0);
    }
}

// ---------------------------------------------------------------------------
// s4: retention per engine user
// ---------------------------------------------------------------------------

/// Task 1 registered (a clone escaped), the clone dropped, the set polled in
/// task 2: task 1's waker must be released there, task 2's not registered,
/// and every clone of both is dropped once with the set.
fn retention<S: Unpin>(
    name: &str,
    general: bool,
    slots: &[Arc<Slot>],
    mut set: S,
    mut poll: impl FnMut(&mut S, &CountingWaker) -> bool,
) {
    let (t1, t2) = (CountingWaker::new(), CountingWaker::new());
    assert!(!poll(&mut set, &t1), "{name}: finished");
    assert_eq!(t1.live_clones(), 1, "{name}: task 1 registered");
    for s in slots {
        drop(s.take());
    }
    assert!(!poll(&mut set, &t2), "{name}: finished");
    assert_eq!(
        t1.live_clones(),
        0,
        "{name}: the waker of the task the set left is still held"
    );
    if general {
        // The general path registers at every poll (not lazily).
        assert!(!poll(&mut set, &t1), "{name}: finished");
        assert_eq!(t2.live_clones(), 0, "{name}: task 2 let go");
    } else {
        assert_eq!(
            t2.live_clones(),
            0,
            "{name}: task 2's waker registered for nothing"
        );
        // Polled again in task 1 (the waker registered before): nothing
        // registered either.
        assert!(!poll(&mut set, &t1), "{name}: finished");
        assert_eq!(t1.live_clones(), 0, "{name}");
    }
    drop(set);
    assert_eq!(t1.live_clones() + t2.live_clones(), 0, "{name}");
    assert_eq!(t1.wakes() + t2.wakes(), 0, "{name}: woken");
}

#[test]
fn s4_retention_every_user() {
    for n in [1usize, 2, 31, 63] {
        let (slots, c) = parkers(n);
        retention(
            &format!("try_gather {n}"),
            false,
            &slots,
            try_gather(c.map(|p| futures::FutureExt::map(p, Ok::<usize, ()>))),
            |s, w| poll_once(s, w).is_ready(),
        );
        let (slots, c) = parkers(n);
        retention(
            &format!("gather_settled {n}"),
            false,
            &slots,
            gather_settled(c),
            |s, w| poll_once(s, w).is_ready(),
        );
        let (slots, c) = parkers(n);
        retention(
            &format!("wait {n}"),
            false,
            &slots,
            wait(c, ReturnWhen::FirstCompleted),
            |s, w| poll_once(s, w).is_ready(),
        );
        // as_completed filled by push (a counting chunk of 32, one word
        // below 32 children).
        if n < 32 {
            let (slots, c) = parkers(n);
            let mut set = AsCompleted::new();
            for p in c {
                set.push(p);
            }
            retention(
                &format!("as_completed pushed {n}"),
                n >= 32,
                &slots,
                set,
                |s, w| poll_next_once(s, w).is_ready(),
            );
            // process_batch with a limit of n (children pushed).
            let (slots, c) = parkers(n);
            let cells: Vec<Mutex<Option<Parker>>> = c.map(|p| Mutex::new(Some(p))).collect();
            let batch = Box::pin(process_batch(0..n, n, |i| {
                cells[i].lock().unwrap().take().unwrap()
            }));
            retention(
                &format!("process_batch {n}"),
                false,
                &slots,
                batch,
                |s, w| poll_once(s, w).is_ready(),
            );
        }
    }
}

/// Past 64 children (general path) the registration is replaced at every
/// poll: task 1's waker is let go too.
#[test]
fn s4_retention_as_completed_past_64() {
    for n in [64usize, 70, 130] {
        let (slots, c) = parkers(n);
        let mut set = AsCompleted::new();
        for p in c {
            set.push(p);
        }
        retention(
            &format!("as_completed pushed {n}"),
            n >= 32,
            &slots,
            set,
            |s, w| poll_next_once(s, w).is_ready(),
        );
    }
}

/// A task group whose tasks' wakers escaped (task 1 registered in the
/// engine) and were dropped: polled in task 2, task 1's waker is let go.
#[test]
fn s4_retention_task_group_running_tasks() {
    for n in [1usize, 5] {
        let (slots, c) = parkers(n);
        let children: Vec<Parker> = c.collect();
        let group = task_group(|tg| async move {
            for p in children {
                tg.spawn(async move { Ok::<usize, ()>(p.await) });
            }
            Ok::<(), ()>(())
        });
        let (t1, t2) = (CountingWaker::new(), CountingWaker::new());
        let mut group = Box::pin(group);
        assert!(poll_once(&mut group, &t1).is_pending());
        // Task 1: in the group's own signal and in the engine's parent.
        let held_by_group = t1.live_clones();
        assert!(held_by_group >= 1);
        for s in &slots {
            drop(s.take());
        }
        assert!(poll_once(&mut group, &t2).is_pending());
        assert_eq!(
            t1.live_clones(),
            0,
            "task group n = {n}: task 1's waker still held (was {held_by_group})"
        );
        drop(group);
        assert_eq!(t1.live_clones() + t2.live_clones(), 0);
    }
}

/// A task group whose tasks all finished while a clone of one task's waker
/// was alive (task 1 registered in the engine), the body still running,
/// the clone dropped, the group then polled in task 2 (no task running):
/// task 1's waker should be let go as well.
#[test]
fn s4_retention_task_group_no_task_running() {
    let slot = Arc::new(Slot::default());
    let body_slot = Arc::new(Slot::default());
    let (s1, s2) = (slot.clone(), body_slot.clone());
    let group = task_group(move |tg| async move {
        tg.spawn(async move { Ok::<usize, ()>(Parker(s1, 7).await) });
        // The body waits.
        Parker(s2, 0).await;
        Ok::<(), ()>(())
    });
    let (t1, t2) = (CountingWaker::new(), CountingWaker::new());
    let mut group = Box::pin(group);
    assert!(poll_once(&mut group, &t1).is_pending());
    // The task finishes, but a clone of its waker lives on a moment.
    let stale_clone = slot.0.lock().unwrap().clone();
    slot.complete();
    assert!(poll_once(&mut group, &t1).is_pending());
    drop(stale_clone);
    drop(body_slot.take());
    assert!(poll_once(&mut group, &t2).is_pending());
    assert_eq!(
        t1.live_clones(),
        0,
        "task group, no task running: the waker of the task the group left is still held"
    );
    drop(group);
    assert_eq!(t1.live_clones() + t2.live_clones(), 0);
}

/// `as_completed` that handed out its last child while a clone of another
/// child's waker was alive (task 1 registered), then returns `None` in task
/// 2 after the clone is gone: task 1's waker should not be kept.
#[test]
fn s4_retention_as_completed_exhausted() {
    let (slots, c) = parkers(2);
    let mut set = as_completed(c);
    let t1 = CountingWaker::new();
    assert!(poll_next_once(&mut set, &t1).is_pending());
    let keep = slots[1].0.lock().unwrap().clone();
    slots[0].complete();
    slots[1].complete();
    let mut got = Vec::new();
    while let Poll::Ready(Some(v)) = poll_next_once(&mut set, &t1) {
        got.push(v);
    }
    assert_eq!(got.len(), 2);
    drop(keep);
    let t2 = CountingWaker::new();
    assert_eq!(poll_next_once(&mut set, &t2), Poll::Ready(None));
    assert_eq!(
        t1.live_clones(),
        0,
        "as_completed exhausted: the waker of the task it left is still held"
    );
    drop(set);
}

/// A pass that handed out an output before its snapshot was done (two
/// children ready at once) leaves the rest in the cursor; the next poll,
/// in task 2, finishes that snapshot without `open`: is task 1 let go?
#[test]
fn s4_retention_leftover_snapshot() {
    let (slots, c) = parkers(3);
    let mut set = as_completed(c);
    let t1 = CountingWaker::new();
    assert!(poll_next_once(&mut set, &t1).is_pending());
    // Every escaped clone woken (children 0 and 1 finish) and dropped.
    slots[0].complete();
    slots[1].complete();
    drop(slots[2].take());
    assert!(matches!(
        poll_next_once(&mut set, &t1),
        Poll::Ready(Some(_))
    ));
    // Child 2 was not woken: its waker (parked in the first poll) is gone,
    // so nothing outside lives.
    let t2 = CountingWaker::new();
    assert!(matches!(
        poll_next_once(&mut set, &t2),
        Poll::Ready(Some(_))
    ));
    assert!(poll_next_once(&mut set, &t2).is_pending());
    assert_eq!(
        t1.live_clones(),
        0,
        "leftover snapshot: task 1's waker still held after polls in task 2"
    );
    drop(set);
}

// ---------------------------------------------------------------------------
// s5: the rest
// ---------------------------------------------------------------------------

/// A waker that `will_wake` the registered one but is another `Waker` value
/// (a clone of task 1's): nothing is let go or replaced.
#[test]
fn s5_same_task_other_clone_kept() {
    let (slots, c) = parkers(3);
    let mut set = gather(c);
    let t1 = CountingWaker::new();
    assert!(poll_once(&mut set, &t1).is_pending());
    for s in &slots {
        drop(s.take());
    }
    let clone = t1.waker().clone();
    assert!(poll_with(&mut set, &clone).is_pending());
    // Registration (1) + our clone (1).
    assert_eq!(
        t1.live_clones(),
        2,
        "the same task's registration was let go"
    );
    drop(clone);
    drop(set);
    assert_eq!(t1.live_clones(), 0);
}

/// A stale registration let go, then a clone escapes again in task 2: the
/// clone's wake reaches task 2 (registered at the end of that pass), and a
/// wake arriving from another thread right as the set moves back to task 1
/// reaches task 1.
#[test]
fn s5_let_go_then_escape_again() {
    for n in [1usize, 2, 63] {
        let (slots, c) = parkers(n);
        let mut set = as_completed(c);
        let t1 = CountingWaker::new();
        let t2 = CountingWaker::new();
        assert!(poll_next_once(&mut set, &t1).is_pending());
        // Wake child 0 spuriously (it re-parks in the next pass).
        slots[0].take().unwrap().wake();
        for s in &slots[1..] {
            drop(s.take());
        }
        assert!(poll_next_once(&mut set, &t2).is_pending());
        assert_eq!(t1.live_clones(), 0, "n = {n}: task 1 let go");
        assert_eq!(
            t2.live_clones(),
            1,
            "n = {n}: task 2 registered (child 0 escaped)"
        );
        let c0 = slots[0].take().unwrap();
        let h = std::thread::spawn(move || c0.wake());
        h.join().unwrap();
        assert_eq!(t2.wakes(), 1, "n = {n}");
        assert!(poll_next_once(&mut set, &t1).is_pending());
        assert_eq!(t2.live_clones(), 0, "n = {n}: task 2 let go");
        assert_eq!(t1.live_clones(), 1, "n = {n}: task 1 registered again");
        let before = t1.wakes();
        slots[0].complete();
        assert_eq!(t1.wakes(), before + 1, "n = {n}");
        assert_eq!(poll_next_once(&mut set, &t1), Poll::Ready(Some(0)));
        drop(set);
        for s in &slots {
            drop(s.take());
        }
        assert_eq!(t1.live_clones() + t2.live_clones(), 0);
    }
}
