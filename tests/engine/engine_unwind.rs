//! Regressions for the engine's behaviour under unwinding and racing wakes
//! (the reliability issue): destructors that panic never leave a pinned
//! child undropped in freed memory, a panicking parent waker never wedges a
//! set, and a finished child's destructor panic is an outcome of
//! `gather_settled`.

use crate::common;

use awaitkit::{
    AsCompleted, ReturnWhen, as_completed, gather, gather_settled, task_group, try_gather, wait,
    wait_any,
};
use common::panic_message;
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Live pinned children: each records its address at its first poll and
/// removes it when dropped, after checking it never moved.
#[derive(Clone, Default)]
struct Registry {
    live: Arc<Mutex<HashSet<usize>>>,
    drops: Arc<AtomicUsize>,
}

impl Registry {
    fn child(&self, panic_on_drop: bool) -> Pinned {
        Pinned {
            registry: self.clone(),
            at: None,
            panic_on_drop,
            ready: false,
        }
    }

    fn ready_child(&self, panic_on_drop: bool) -> Pinned {
        let mut child = self.child(panic_on_drop);
        child.ready = true;
        child
    }

    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }

    fn assert_all_dropped(&self, made: usize, what: &str) {
        assert_eq!(self.drops(), made, "{what}: every child dropped once");
        assert!(
            self.live.lock().unwrap().is_empty(),
            "{what}: a pinned child was freed without being dropped"
        );
    }
}

/// Pending forever (or ready at once), pinned, optionally panicking when
/// dropped.
struct Pinned {
    registry: Registry,
    at: Option<usize>,
    panic_on_drop: bool,
    ready: bool,
}

impl Future for Pinned {
    type Output = Result<u32, &'static str>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out; the address is only recorded.
        let this = unsafe { self.get_unchecked_mut() };
        let addr = this as *const Self as usize;
        match this.at {
            None => {
                this.at = Some(addr);
                this.registry.live.lock().unwrap().insert(addr);
            }
            Some(at) => assert_eq!(at, addr, "a pinned child moved"),
        }
        if this.ready {
            Poll::Ready(Ok(1))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(at) = self.at {
            assert_eq!(at, self as *const Self as usize, "a pinned child moved");
            self.registry.live.lock().unwrap().remove(&at);
        }
        self.registry.drops.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_drop {
            panic!("child destructor panics");
        }
    }
}

/// Five children, the second and fourth panicking when dropped.
fn five(registry: &Registry) -> Vec<Pinned> {
    (0..5).map(|i| registry.child(i % 2 == 1)).collect()
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Polls `f` once (all children pending), then drops it: the first
/// destructor panic propagates, after every child was dropped.
fn poll_then_drop<F: Future + Unpin>(mut f: F, registry: &Registry, what: &str) {
    assert!(Pin::new(&mut f).poll(&mut noop_cx()).is_pending());
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(f)));
    let payload = dropped.expect_err("the destructor's panic propagates");
    assert_eq!(panic_message(&*payload), "child destructor panics");
    registry.assert_all_dropped(5, what);
}

matrix! {
    /// `gather`: two of five destructors panic when the gather is dropped.
    async fn dropping_gather_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        poll_then_drop(gather(five(&registry)), &registry, "gather");
    }

    async fn dropping_try_gather_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        poll_then_drop(try_gather(five(&registry)), &registry, "try_gather");
    }

    async fn dropping_gather_settled_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        poll_then_drop(gather_settled(five(&registry)), &registry, "gather_settled");
    }

    async fn dropping_wait_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        poll_then_drop(wait(five(&registry), ReturnWhen::AllCompleted), &registry, "wait");
        let registry = Registry::default();
        poll_then_drop(wait_any(five(&registry)), &registry, "wait_any");
    }

    async fn dropping_as_completed_drops_every_child_when_destructors_panic() {
        // Built from a batch (the fixed first chunk) and grown by `push`
        // (chunks that reuse slots).
        let registry = Registry::default();
        let mut set = as_completed(five(&registry));
        assert!(set.poll_next_unpin(&mut noop_cx()).is_pending());
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(set)));
        assert!(dropped.is_err());
        registry.assert_all_dropped(5, "as_completed");

        let registry = Registry::default();
        let mut set = AsCompleted::new();
        for child in five(&registry) {
            set.push(child);
        }
        assert!(set.poll_next_unpin(&mut noop_cx()).is_pending());
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(set)));
        assert!(dropped.is_err());
        registry.assert_all_dropped(5, "AsCompleted::push");
    }

    /// `AsCompleted::clear` with destructors that panic: every child is
    /// dropped once, the first panic propagates, and the set is empty and
    /// usable (indices go on from where they were).
    async fn clearing_as_completed_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        let mut set = as_completed(five(&registry));
        assert!(set.poll_next_unpin(&mut noop_cx()).is_pending());
        let cleared = catch_unwind(AssertUnwindSafe(|| set.clear()));
        assert_eq!(panic_message(&*cleared.unwrap_err()), "child destructor panics");
        registry.assert_all_dropped(5, "AsCompleted::clear");
        assert!(set.is_empty());
        assert_eq!(set.push(registry.ready_child(false)), 5);
        assert!(matches!(set.next().await, Some(Ok(1))));
        assert!(set.next().await.is_none());
        registry.assert_all_dropped(6, "AsCompleted after clear");
    }

    /// Fail-fast clears the set from inside a poll: a destructor panic there
    /// still drops every other child before it propagates.
    async fn try_gather_fail_fast_drops_every_child_when_destructors_panic() {
        let registry = Registry::default();
        let failing = Box::pin(async { Err::<u32, _>("boom") })
            as Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;
        let children: Vec<Pin<Box<dyn Future<Output = _> + Send>>> = five(&registry)
            .into_iter()
            .map(|c| Box::pin(c) as Pin<Box<dyn Future<Output = _> + Send>>)
            .chain([failing])
            .collect();
        let mut all = try_gather(children);
        let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut all).poll(&mut noop_cx())));
        assert!(polled.is_err(), "the destructor's panic propagates from the failing poll");
        registry.assert_all_dropped(5, "try_gather fail-fast");
        drop(all);
        registry.assert_all_dropped(5, "try_gather fail-fast, then dropped");
    }

    /// A task group failing fast drops its tasks even when their guards
    /// panic while being dropped.
    async fn failing_task_group_drops_every_task_when_destructors_panic() {
        let registry = Registry::default();
        let tasks = five(&registry);
        let mut group = Box::pin(task_group(move |scope| async move {
            for child in tasks {
                scope.spawn(async move { child.await.map(drop) });
            }
            common::yield_now().await;
            Err::<(), _>("the body fails")
        }));
        let mut outcome = None;
        for _ in 0..4 {
            match catch_unwind(AssertUnwindSafe(|| group.as_mut().poll(&mut noop_cx()))) {
                Ok(Poll::Pending) => continue,
                other => {
                    outcome = Some(other);
                    break;
                }
            }
        }
        let outcome = outcome.expect("the group fails fast");
        assert!(outcome.is_err(), "the first destructor panic propagates");
        registry.assert_all_dropped(5, "task_group fail-fast");
    }

    /// tokio's `Notified`, once enabled, links its pinned address into the
    /// `Notify`: freeing it undropped and then notifying writes into freed
    /// memory (AddressSanitizer's heap-use-after-free before the fix).
    async fn enabled_notified_children_are_unlinked_before_their_memory_is_freed() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let registry = Registry::default();
        let children = (0..4).map(|i| {
            let notify = notify.clone();
            let guard = registry.child(i == 0);
            Box::pin(async move {
                let _guard = guard;
                let notified = notify.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                notified.await;
            }) as Pin<Box<dyn Future<Output = ()> + Send>>
        });
        // Not boxed by the engine: put them in place.
        let children: Vec<_> = children.collect();
        let mut all = gather(children.into_iter().map(Unboxed::new));
        assert!(Pin::new(&mut all).poll(&mut noop_cx()).is_pending());
        assert!(catch_unwind(AssertUnwindSafe(|| drop(all))).is_err());
        notify.notify_waiters();
        assert_eq!(registry.drops(), 4);
    }
}

/// Runs a boxed future's body inline (so the `Notified` state lives in the
/// engine's chunk, not in a separate box).
struct Unboxed<F>(Option<F>);

impl<F> Unboxed<F> {
    fn new(f: F) -> Self {
        Self(Some(f))
    }
}

impl<F: Future + Unpin> Future for Unboxed<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(self.0.as_mut().expect("polled after completion")).poll(cx)
    }
}

/// A parent waker whose first `wake` panics (an executor whose queue is
/// full), counting the wakes after it.
#[derive(Default)]
struct PanicsOnce {
    calls: AtomicUsize,
}

impl Wake for PanicsOnce {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the executor's queue is full");
        }
    }
}

/// A child that parks a clone of its waker and finishes once released.
#[derive(Clone, Default)]
struct Latch(Arc<Mutex<(bool, Option<Waker>)>>);

impl Latch {
    fn release(&self) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.0 = true;
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Future for Latch {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock().unwrap();
        if state.0 {
            return Poll::Ready(());
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Fires `latch` from outside the poll, the way an I/O or timer thread
/// would: the parent's panicking wake propagates to the firing code.
fn fire(latch: &Latch) -> bool {
    catch_unwind(AssertUnwindSafe(|| latch.release())).is_err()
}

/// Once the parent waker panicked, the next poll with the same waker must
/// re-arm the set: later child wakes reach the parent again.
fn recovers_after_a_panicking_parent_wake<F: Future + Unpin>(
    mut set: F,
    latches: &[Latch; 2],
    what: &str,
) {
    let parent = Arc::new(PanicsOnce::default());
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    // The first poll (which may wake itself, e.g. a task group spawning)
    // with a harmless waker; then the panicking one is registered.
    assert!(Pin::new(&mut set).poll(&mut noop_cx()).is_pending());
    assert!(Pin::new(&mut set).poll(&mut cx).is_pending());
    assert!(fire(&latches[0]), "{what}: the parent's first wake panics");
    assert!(Pin::new(&mut set).poll(&mut cx).is_pending());
    let before = parent.calls.load(Ordering::SeqCst);
    assert!(!fire(&latches[1]));
    assert_eq!(
        parent.calls.load(Ordering::SeqCst),
        before + 1,
        "{what}: a child wake after the panic never reached the parent (wedged)"
    );
    assert!(Pin::new(&mut set).poll(&mut cx).is_ready(), "{what}");
}

guarded! {
    fn a_panicking_parent_waker_does_not_wedge_gather() {
        let latches = [Latch::default(), Latch::default()];
        recovers_after_a_panicking_parent_wake(gather(latches.clone()), &latches, "gather");
    }

    fn a_panicking_parent_waker_does_not_wedge_gather_macro() {
        let latches = [Latch::default(), Latch::default()];
        recovers_after_a_panicking_parent_wake(
            awaitkit::gather!(latches[0].clone(), latches[1].clone()),
            &latches,
            "gather!",
        );
    }

    fn a_panicking_parent_waker_does_not_wedge_as_completed() {
        let latches = [Latch::default(), Latch::default()];
        let set = as_completed(latches.clone()).collect::<Vec<()>>();
        recovers_after_a_panicking_parent_wake(set, &latches, "as_completed");
    }

    fn a_panicking_parent_waker_does_not_wedge_a_task_group() {
        let latches = [Latch::default(), Latch::default()];
        let inner = latches.clone();
        let group = Box::pin(task_group(move |scope| async move {
            for latch in inner {
                scope.spawn(async move {
                    latch.await;
                    Ok::<_, ()>(())
                });
            }
            Ok(())
        }));
        recovers_after_a_panicking_parent_wake(group, &latches, "task_group");
    }

    /// A child that finished normally and panics in its destructor: its
    /// outcome is that panic, and every other outcome is kept.
    fn gather_settled_captures_a_finished_childs_destructor_panic() {
        let registry = Registry::default();
        let children = vec![
            registry.ready_child(false),
            registry.ready_child(true),
            registry.ready_child(false),
        ];
        let mut all = gather_settled(children);
        let Poll::Ready(out) = Pin::new(&mut all).poll(&mut noop_cx()) else {
            panic!("every child is ready");
        };
        assert_eq!(out.len(), 3);
        assert_eq!(*out[0].as_ref().unwrap(), Ok(1));
        assert_eq!(
            out[1].as_ref().unwrap_err().message(),
            Some("child destructor panics")
        );
        assert_eq!(*out[2].as_ref().unwrap(), Ok(1));
        registry.assert_all_dropped(3, "gather_settled");
    }
}

/// The sealed tuple trait, and many destructor panics in one `gather!`.
#[test]
fn gather_macro_drops_every_element_when_several_destructors_panic() {
    let registry = Registry::default();
    let mut all = awaitkit::gather!(
        registry.child(true),
        registry.child(false),
        registry.child(true),
        registry.child(false),
    );
    assert!(Pin::new(&mut all).poll(&mut noop_cx()).is_pending());
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(all)));
    assert!(dropped.is_err());
    registry.assert_all_dropped(4, "gather!");
}
