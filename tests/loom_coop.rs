//! Loom model of the early stop with two concurrent wakers targeting a child
//! that sits in the leftover snapshot (the existing model,
//! `early_stop_with_two_wakers_racing`, never wakes a child *after* the
//! stop kept it in the cursor: its second firing thread targets the child
//! that stalled, its other child fires once, before the stop).
//!
//! Run: RUSTFLAGS="--cfg awaitkit_loom" CARGO_TARGET_DIR=target-loom \
//!   cargo test --release --test loom_coop -- --test-threads=1
#![cfg(awaitkit_loom)]

use awaitkit::as_completed;
use futures::{Stream, StreamExt};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Gate {
    fired: AtomicUsize,
    polls: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn fire(&self) {
        self.fired.fetch_add(1, Ordering::Release);
        let waker = self.waker.lock().unwrap().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct WaitGate {
    gate: Arc<Gate>,
    need: usize,
    id: usize,
}

impl Future for WaitGate {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.gate.polls.fetch_add(1, Ordering::Relaxed);
        *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.gate.fired.load(Ordering::Acquire) >= self.need {
            Poll::Ready(self.id)
        } else {
            Poll::Pending
        }
    }
}

/// Wakes itself once, then finishes.
struct YieldOnce(bool, usize);

impl Future for YieldOnce {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.0 {
            return Poll::Ready(self.1);
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(loom::sync::Notify);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.notify();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.notify();
        }
    }
    let unpark = std::sync::Arc::new(Unpark(loom::sync::Notify::new()));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        unpark.0.wait();
    }
}

type Child = Pin<Box<dyn Future<Output = usize> + Send>>;

/// as_completed over [A (needs 2 fires), C (yields once), B (needs 2
/// fires)]: thread 1 fires A twice, thread 2 fires B twice. Under loom the
/// stall limit is 1, so a pass that meets A woken once stops and keeps C and
/// B in the cursor, while thread 2's fires of B land before, during or after
/// that, and on the continuation. No wake is lost (a deadlock), each gate
/// is polled at most wakes + 1 times.
#[test]
fn early_stop_leftover_child_woken_concurrently() {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(|| {
        let a = Arc::new(Gate::default());
        let b = Arc::new(Gate::default());
        let t1 = {
            let g = a.clone();
            thread::spawn(move || {
                g.fire();
                g.fire();
            })
        };
        let t2 = {
            let g = b.clone();
            thread::spawn(move || {
                g.fire();
                g.fire();
            })
        };
        let children: Vec<Child> = vec![
            Box::pin(WaitGate {
                gate: a.clone(),
                need: 2,
                id: 0,
            }),
            Box::pin(YieldOnce(false, 1)),
            Box::pin(WaitGate {
                gate: b.clone(),
                need: 2,
                id: 2,
            }),
        ];
        let set = as_completed(children);
        let mut out: Vec<usize> = block_on(set.collect::<Vec<_>>());
        out.sort();
        assert_eq!(out, [0, 1, 2]);
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(
            a.polls.load(Ordering::Relaxed) <= 3,
            "A polled {}",
            a.polls.load(Ordering::Relaxed)
        );
        assert!(
            b.polls.load(Ordering::Relaxed) <= 3,
            "B polled {}",
            b.polls.load(Ordering::Relaxed)
        );
    });
}

/// The gather is dropped right after a poll that may have stopped early,
/// while two threads fire the children through stored clones: no leak, no
/// use after free of a chunk (loom checks its `Arc`s/`Mutex`es; run under
/// ASan too).
#[test]
fn drop_after_early_stop_while_two_threads_fire() {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(|| {
        let a = Arc::new(Gate::default());
        let b = Arc::new(Gate::default());
        let children: Vec<Child> = vec![
            Box::pin(WaitGate {
                gate: a.clone(),
                need: 3,
                id: 0,
            }),
            Box::pin(WaitGate {
                gate: b.clone(),
                need: 3,
                id: 1,
            }),
        ];
        // Through the engine (the early stop is the engine's): an input of
        // no exact size (an exact size up to 16 goes to the small block).
        let mut g = awaitkit::gather(children.into_iter().filter(|_| true));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        let t1 = {
            let g = a.clone();
            thread::spawn(move || g.fire())
        };
        let t2 = {
            let g = b.clone();
            thread::spawn(move || g.fire())
        };
        // Second poll: armed; a woken child still Pending stops the pass.
        assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        drop(g);
        t1.join().unwrap();
        t2.join().unwrap();
        drop(a.waker.lock().unwrap().take());
        drop(b.waker.lock().unwrap().take());
    });
}

/// Reachability check for the model above: asserts that the early stop
/// NEVER happens (C, woken by itself in the first poll, always gets its
/// second poll in the same parent poll as A's first poll after a wake).
/// Loom must find an interleaving where it fails, showing the model really
/// drives the owner through an early stop with the firing threads live.
#[test]
#[should_panic(expected = "early stop reached")]
fn early_stop_is_reached_by_the_model() {
    use std::sync::atomic::AtomicUsize as StdUsize;
    struct Probe {
        inner: Child,
        epoch: std::sync::Arc<StdUsize>,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
        id: usize,
    }
    impl Future for Probe {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let e = self.epoch.load(std::sync::atomic::Ordering::Relaxed);
            let id = self.id;
            self.seen.lock().unwrap().push((id, e));
            self.inner.as_mut().poll(cx)
        }
    }
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(|| {
        let a = Arc::new(Gate::default());
        let t1 = {
            let g = a.clone();
            thread::spawn(move || g.fire())
        };
        let epoch = std::sync::Arc::new(StdUsize::new(0));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let probe = |inner: Child, id| -> Child {
            Box::pin(Probe {
                inner,
                epoch: epoch.clone(),
                seen: seen.clone(),
                id,
            })
        };
        let children: Vec<Child> = vec![
            probe(
                Box::pin(WaitGate {
                    gate: a.clone(),
                    need: 2,
                    id: 0,
                }),
                0,
            ),
            probe(Box::pin(YieldOnce(false, 1)), 1),
        ];
        let mut set = as_completed(children);
        // Poll until C (id 1) finished, bumping the epoch per parent poll.
        let ep = epoch.clone();
        let got = block_on(std::future::poll_fn(|cx| {
            ep.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut set).poll_next(cx)
        }));
        let _ = got;
        let seen = seen.lock().unwrap().clone();
        // A polled a second time (after its wake) in epoch e while C's second
        // poll is in a later epoch: the pass stopped at A.
        let a2 = seen.iter().filter(|(id, _)| *id == 0).nth(1).map(|x| x.1);
        let c2 = seen.iter().filter(|(id, _)| *id == 1).nth(1).map(|x| x.1);
        if let (Some(a2), Some(c2)) = (a2, c2) {
            assert!(c2 <= a2, "early stop reached: A@{a2}, C@{c2}");
        }
        drop(set);
        t1.join().unwrap();
        drop(a.waker.lock().unwrap().take());
    });
}
