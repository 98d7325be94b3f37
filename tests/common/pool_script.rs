//! A scripted pool manager for the pool's panic reviews
//! (`tests/review_pool_unwind2.rs`, `tests/review_pool_unwind3.rs`): each
//! `create`/`recycle` future behaves as the script says (ready, panicking in
//! `poll`, pending first), objects that count their drops (and the ones
//! during an unwind), a waker that panics, and a runner inside a destructor
//! during an unwind. Included with `#[path]` by the files that use it.

#![allow(dead_code)]

use crate::common::child::expect_panic;
use awaitkit::pool::{Manager, Pool};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub(crate) static CREATE_CALLS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static DROPS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);
pub(crate) static DISARMED: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub(crate) struct Probe;
impl Drop for Probe {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if std::thread::panicking() {
            DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What the next `create` / `recycle` future does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum B {
    Ok,
    /// `poll` panics.
    PollPanic,
    /// Pending once, then `poll` panics.
    PendingThenPanic,
    /// Pending once, then ready.
    PendingOnce,
}

pub(crate) struct Fut {
    pub(crate) b: B,
    pub(crate) polls: usize,
    pub(crate) tag: &'static str,
}
impl Future for Fut {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls += 1;
        match self.b {
            B::Ok => Poll::Ready(()),
            B::PollPanic => panic!("{} poll", self.tag),
            B::PendingThenPanic if self.polls == 1 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            B::PendingThenPanic => panic!("{} poll", self.tag),
            B::PendingOnce if self.polls == 1 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            B::PendingOnce => Poll::Ready(()),
        }
    }
}

/// Scripted manager: each `create`/`recycle` takes the next behaviour;
/// once the script is empty, `dflt`. After `stop_after` create calls
/// every create succeeds (so a livelock ends and can be counted).
pub(crate) struct M {
    pub(crate) creates: Mutex<VecDeque<B>>,
    pub(crate) recycles: Mutex<VecDeque<B>>,
    pub(crate) dflt_create: B,
    pub(crate) stop_after: usize,
}
pub(crate) fn m(creates: &[B], dflt_create: B) -> M {
    M {
        creates: Mutex::new(creates.iter().copied().collect()),
        recycles: Mutex::new(VecDeque::new()),
        dflt_create,
        stop_after: 1000,
    }
}
impl Manager for M {
    type Object = Probe;
    type Error = ();
    fn create(&self) -> impl Future<Output = Result<Probe, ()>> + Send {
        let n = CREATE_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        let mut b = self
            .creates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(self.dflt_create);
        if n >= self.stop_after || DISARMED.load(Ordering::SeqCst) {
            b = B::Ok;
        }
        let f = Fut {
            b,
            polls: 0,
            tag: "create",
        };
        async move {
            f.await;
            Ok(Probe)
        }
    }
    fn recycle(&self, _o: &mut Probe) -> impl Future<Output = Result<(), ()>> + Send {
        let b = self
            .recycles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(B::Ok);
        let f = Fut {
            b,
            polls: 0,
            tag: "recycle",
        };
        async move {
            f.await;
            Ok(())
        }
    }
}

pub(crate) fn counts(pool: &Pool<M>) -> (usize, usize, usize, usize) {
    let s = pool.status();
    (s.size, s.idle, s.in_use, s.waiting)
}

pub(crate) fn poll_with<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}
pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    poll_with(f, Waker::noop())
}

pub(crate) struct PanickyWake;
impl Wake for PanickyWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !DISARMED.load(Ordering::SeqCst) {
            panic!("waker wake");
        }
    }
}

/// Runs `f` inside a destructor while the thread unwinds from "outer".
pub(crate) fn during_unwind(f: impl FnOnce()) -> String {
    struct OnDrop<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnDrop<F> {
        fn drop(&mut self) {
            assert!(std::thread::panicking());
            (self.0.take().unwrap())();
        }
    }
    expect_panic(move || {
        let _g = OnDrop(Some(f));
        panic!("outer");
    })
}
