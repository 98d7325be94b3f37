//! Loom models of `TaskHandle::abort` against the group: an abort from
//! another thread races the group's poll of the task (take the future out,
//! poll it, put it back), a wake of the task from a third thread, and the
//! handle being awaited. Every model checks the task's future is dropped
//! exactly once, the group finishes (a lost wake-up is a deadlock loom
//! reports) and the handle reports the value or the abort.
//!
//! Run with:
//! `RUSTFLAGS="--cfg awaitkit_loom" cargo test --release --lib task_group::loom_models -- --test-threads=1`

use crate::engine::loom_models::block_on;
use crate::{task_group, task_group_local};
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// A task's future: finishes once `open` is set, keeps its latest waker for
/// the opening thread, counts its drops.
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
    drops: AtomicUsize,
    /// Set at the end of the future's destructor.
    dropped: AtomicBool,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicBool::new(false),
            waker: Mutex::new(None),
            drops: AtomicUsize::new(0),
            dropped: AtomicBool::new(false),
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct WaitGate(Arc<Gate>);

impl Future for WaitGate {
    type Output = Result<u8, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<u8, ()>> {
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.open.load(Ordering::Acquire) {
            Poll::Ready(Ok(1))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for WaitGate {
    fn drop(&mut self) {
        self.0.drops.fetch_add(1, Ordering::Relaxed);
        drop(self.0.waker.lock().unwrap().take());
        self.0.dropped.store(true, Ordering::Release);
    }
}

/// Abort (thread A) vs the task's own wake (thread B) vs the group's polls
/// (the owner, whose body awaits the handle).
#[test]
fn abort_races_a_wake_and_the_group() {
    model(|| {
        let gate = Gate::new();
        let handle_out = Arc::new(Mutex::new(None));
        let (g, out) = (gate.clone(), handle_out.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let group = task_group(move |tg| {
            let handle = Arc::new(Mutex::new(tg.spawn(WaitGate(g))));
            tx.send(handle.clone()).unwrap();
            async move {
                let got =
                    std::future::poll_fn(|cx| Pin::new(&mut *handle.lock().unwrap()).poll(cx))
                        .await;
                *out.lock().unwrap() = Some(got);
                Ok::<_, ()>(())
            }
        });
        let handle = rx.recv().unwrap();
        let aborter = thread::spawn(move || handle.lock().unwrap().abort());
        let g = gate.clone();
        let opener = thread::spawn(move || g.open());
        assert_eq!(block_on(group), Ok(()));
        aborter.join().unwrap();
        opener.join().unwrap();
        assert_eq!(gate.drops.load(Ordering::Relaxed), 1);
        match handle_out
            .lock()
            .unwrap()
            .take()
            .expect("the body awaited it")
        {
            Ok(Ok(1)) => {}
            Err(c) => assert!(c.is_aborted()),
            other => panic!("{other:?}"),
        }
    });
}

/// Two aborts of one task from two threads while the group polls it:
/// dropped once, the group finishes.
#[test]
fn two_aborts_race_the_group() {
    model(|| {
        let gate = Gate::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let g = gate.clone();
        let group = task_group(move |tg| {
            tx.send(Arc::new(tg.spawn(WaitGate(g)))).unwrap();
            async { Ok::<_, ()>(()) }
        });
        let handle = rx.recv().unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let h = handle.clone();
                thread::spawn(move || h.abort())
            })
            .collect();
        assert_eq!(block_on(group), Ok(()));
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.drops.load(Ordering::Relaxed), 1);
        assert!(handle.is_finished());
    });
}

/// A local group's task aborted from another thread (a request the group
/// carries out on its own thread) while a third thread wakes the task.
#[test]
fn local_abort_from_another_thread() {
    model(|| {
        let gate = Gate::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let g = gate.clone();
        let group = task_group_local(move |tg| {
            tx.send(tg.spawn(WaitGate(g))).unwrap();
            async { Ok::<_, ()>(()) }
        });
        let handle = rx.recv().unwrap();
        let aborter = thread::spawn(move || {
            handle.abort();
            handle
        });
        let g = gate.clone();
        let opener = thread::spawn(move || g.open());
        assert_eq!(block_on(group), Ok(()));
        let handle = aborter.join().unwrap();
        opener.join().unwrap();
        assert_eq!(gate.drops.load(Ordering::Relaxed), 1);
        assert!(handle.is_finished());
    });
}

/// A failing group (fail-fast) vs an abort dropping another task on another
/// thread: the group resolves to its error only once that drop is over.
#[test]
fn a_failing_group_waits_for_an_abort_dropping_elsewhere() {
    model(|| {
        let (victim, failer) = (Gate::new(), Gate::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let (v, f) = (victim.clone(), failer.clone());
        let group = task_group(move |tg| {
            tx.send(tg.spawn(WaitGate(v))).unwrap();
            let fail = WaitGate(f);
            tg.spawn(async move {
                let _ = fail.await;
                Err::<(), ()>(())
            });
            async { Ok::<_, ()>(()) }
        });
        let handle = rx.recv().unwrap();
        let aborter = thread::spawn(move || handle.abort());
        let f = failer.clone();
        let opener = thread::spawn(move || f.open());
        assert_eq!(block_on(group), Err(()));
        assert!(
            victim.dropped.load(Ordering::Acquire),
            "resolved before the drop ended (drops {})",
            victim.drops.load(Ordering::Relaxed)
        );
        aborter.join().unwrap();
        opener.join().unwrap();
        assert_eq!(victim.drops.load(Ordering::Relaxed), 1);
    });
}
