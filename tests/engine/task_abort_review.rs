//! Adversarial review of `TaskHandle::abort` (commit cd40cdf).
//!
//! Tests named `defect_*` fail on cd40cdf and show a broken promise; the
//! others probe corners that held.

use crate::common;

use awaitkit::{TaskHandle, task_group, task_group_local};
use common::*;
use futures::channel::oneshot;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

/// Groups leaked on purpose (see `local_futures_never_leave_their_thread`).
static LEAKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn poll_noop<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A destructor that blocks (on the aborting thread) until released, and
/// says when it started and when it ended.
struct SlowDrop {
    entered: mpsc::Sender<()>,
    release: Mutex<mpsc::Receiver<()>>,
    done: Arc<AtomicBool>,
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        self.entered.send(()).unwrap();
        let _ = self.release.lock().unwrap().recv();
        self.done.store(true, Ordering::SeqCst);
    }
}

type Slot = Arc<Mutex<Option<TaskHandle<'static, (), &'static str>>>>;

/// Builds a group with a task holding a `SlowDrop` (its handle in `slot`)
/// and a task that fails when `fail` fires; polls it once.
fn slow_victim_setup(
    fail_rx: oneshot::Receiver<()>,
    slot: Slot,
    drop_parts: (mpsc::Sender<()>, mpsc::Receiver<()>, Arc<AtomicBool>),
) -> impl futures::future::FusedFuture<Output = Result<(), &'static str>> + Unpin + Send {
    let (entered, release, done) = drop_parts;
    let slow = SlowDrop {
        entered,
        release: Mutex::new(release),
        done,
    };
    let mut group = task_group(move |tg| {
        let victim = tg.spawn(async move {
            let _slow = slow;
            futures::future::pending::<()>().await;
            Ok::<(), &'static str>(())
        });
        *slot.lock().unwrap() = Some(victim);
        tg.spawn(async move {
            let _ = fail_rx.await;
            Err::<(), _>("boom")
        });
        futures::future::pending::<Result<(), &'static str>>()
    });
    assert!(poll_noop(&mut group).is_pending());
    group
}

/// The group fails (fail-fast) while another thread's `abort` is still
/// inside the aborted task's destructor: the group waits for that drop, is
/// woken when it ends, and only then resolves to its error.
#[test]
fn a_failing_group_waits_for_an_aborted_task_dropped_elsewhere() {
    watchdog("fail_fast_vs_dropping", || {
        let slot: Slot = Arc::default();
        let (fail_tx, fail_rx) = oneshot::channel();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let mut group = slow_victim_setup(
            fail_rx,
            slot.clone(),
            (entered_tx, release_rx, done.clone()),
        );
        let aborter = thread::spawn(move || slot.lock().unwrap().take().unwrap().abort());
        entered_rx.recv().unwrap(); // B is inside the victim's destructor
        fail_tx.send(()).unwrap();
        let waker = CountingWaker::new();
        assert!(
            poll_once(&mut group, &waker).is_pending(),
            "waits for the drop"
        );
        assert!(poll_once(&mut group, &waker).is_pending(), "still waiting");
        let wakes = waker.wakes();
        release_tx.send(()).unwrap();
        aborter.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(waker.wakes(), wakes + 1, "woken when the drop ended");
        assert_eq!(poll_once(&mut group, &waker), Poll::Ready(Err("boom")));
        assert!(futures::future::FusedFuture::is_terminated(&group));
    });
}

/// Contract: "an aborted task is never an error of the group". A task
/// aborted while it is being polled (self-abort here; the same happens when
/// another thread aborts it during the group's poll, or for a local task
/// aborted from another thread) and returning `Err` in that same poll must
/// not fail the group; its handle says "aborted".
#[test]
fn an_aborted_tasks_error_never_fails_the_group() {
    watchdog("aborted_error_fails_group", || {
        let handle_seen = Arc::new(Mutex::new(None));
        let seen = handle_seen.clone();
        let out = futures::executor::block_on(task_group(|tg| async move {
            let slot: Arc<Mutex<Option<TaskHandle<'_, (), &str>>>> = Arc::default();
            let me = slot.clone();
            let (go_tx, go_rx) = oneshot::channel::<()>();
            let handle = tg.spawn(async move {
                let _ = go_rx.await;
                me.lock().unwrap().as_ref().unwrap().abort();
                Err::<(), _>("error of an aborted task")
            });
            *slot.lock().unwrap() = Some(handle);
            go_tx.send(()).unwrap();
            // Keep the body alive a little so the task runs first.
            yield_now().await;
            yield_now().await;
            let h = slot.lock().unwrap().take().unwrap();
            *seen.lock().unwrap() = Some(h.await.map_err(|c| c.is_aborted()));
            Ok(())
        }));
        let seen = handle_seen.lock().unwrap().take();
        assert_eq!(
            out,
            Ok(()),
            "group failed with an aborted task's error (handle saw {seen:?})"
        );
    });
}

// ---------------------------------------------------------------------------
// Probes that held
// ---------------------------------------------------------------------------

/// Records the thread it is dropped on (a `!Send` payload rides along).
#[allow(dead_code)]
struct DropsOn(Arc<Mutex<Vec<ThreadId>>>, std::rc::Rc<()>);

impl Drop for DropsOn {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(thread::current().id());
    }
}

/// Local tasks: handles sent to other threads and aborted / dropped there in
/// a tight loop against the group's polls; group dropped with handles alive
/// on other threads; a leaked group with handles dropped elsewhere. Every
/// drop happens on the group's thread.
#[test]
fn local_futures_never_leave_their_thread() {
    watchdog("local_thread", || {
        let me = thread::current().id();
        for round in 0..200 {
            let drops = Arc::new(Mutex::new(Vec::new()));
            let d = drops.clone();
            let handles = Arc::new(Mutex::new(Vec::new()));
            let hs = handles.clone();
            let mut group = task_group_local(move |tg| {
                for _ in 0..4 {
                    let payload = DropsOn(d.clone(), std::rc::Rc::new(()));
                    let h = tg.spawn(async move {
                        let _p = payload;
                        loop {
                            yield_now().await;
                        }
                        #[allow(unreachable_code)]
                        Ok::<(), ()>(())
                    });
                    hs.lock().unwrap().push(h);
                }
                futures::future::pending::<Result<(), ()>>()
            });
            if round % 3 != 0 {
                let _ = poll_noop(&mut group);
            }
            let hs: Vec<_> = std::mem::take(&mut *handles.lock().unwrap());
            let t = thread::spawn(move || {
                for (i, h) in hs.into_iter().enumerate() {
                    if i % 2 == 0 {
                        h.abort();
                    }
                    drop(h);
                }
            });
            for _ in 0..(round % 7) {
                let _ = poll_noop(&mut group);
            }
            if round % 5 == 0 {
                t.join().unwrap();
                // Leaked: nothing may be dropped elsewhere. (Its address is
                // kept in a static so LeakSanitizer sees it as reachable.)
                LEAKED
                    .lock()
                    .unwrap()
                    .push(Box::into_raw(Box::new(group)) as usize);
            } else {
                drop(group);
                t.join().unwrap();
            }
            for id in drops.lock().unwrap().iter() {
                assert_eq!(*id, me, "a local task was dropped on another thread");
            }
        }
    });
}

/// A waker that aborts a task when woken: the awaiter of `a` is a waker
/// that aborts `b`, whose destructor aborts `a` again; nothing deadlocks,
/// each future is dropped once.
#[test]
fn reentrant_aborts_from_wakers_and_destructors() {
    watchdog("reentrant", || {
        struct AbortOnWake(Mutex<Option<TaskHandle<'static, (), ()>>>);
        impl Wake for AbortOnWake {
            fn wake(self: Arc<Self>) {
                if let Some(h) = self.0.lock().unwrap().as_ref() {
                    h.abort();
                }
            }
        }
        struct AbortOnDrop(Arc<Mutex<Option<TaskHandle<'static, (), ()>>>>, Tracker);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                if let Some(h) = self.0.lock().unwrap().as_ref() {
                    h.abort();
                }
                assert!(self.1.live() <= 2);
            }
        }
        let tracker = Tracker::new();
        let a_slot: Arc<Mutex<Option<TaskHandle<'static, (), ()>>>> = Arc::default();
        let wake_b = Arc::new(AbortOnWake(Mutex::new(None)));
        let (t, asl, wb) = (tracker.clone(), a_slot.clone(), wake_b.clone());
        let mut group = task_group(move |tg| {
            let tok = t.token();
            let a = tg.spawn(async move {
                let _t = tok;
                futures::future::pending::<()>().await;
                Ok(())
            });
            let guard = AbortOnDrop(asl.clone(), t.clone());
            let b = tg.spawn(async move {
                let _g = guard;
                futures::future::pending::<()>().await;
                Ok(())
            });
            *wb.0.lock().unwrap() = Some(b);
            let waker = Waker::from(wb);
            async move {
                // Await `a` with the aborting waker, then abort `a`.
                let mut a = a;
                let mut cx = Context::from_waker(&waker);
                assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
                a.abort(); // drops a → wakes our waker → aborts b → b's drop aborts a again
                *asl.lock().unwrap() = None;
                Ok::<_, ()>(a)
            }
        });
        let mut out = Poll::Pending;
        for _ in 0..10 {
            out = poll_noop(&mut group);
            if out.is_ready() {
                break;
            }
        }
        let Poll::Ready(Ok(mut a)) = out else {
            panic!("group: {out:?}")
        };
        assert!(matches!(poll_noop(&mut a), Poll::Ready(Err(c)) if c.is_aborted()));
        assert_eq!(tracker.live(), 0);
        drop(wake_b);
    });
}

/// Tight loop: another thread aborts while the (Send) group is polled on
/// this thread; the future is dropped exactly once, the group always
/// finishes and never with the aborted task's error.
#[test]
fn send_abort_storm() {
    watchdog("send_storm", || {
        for i in 0..2000 {
            let drops = Arc::new(AtomicUsize::new(0));
            struct Count(Arc<AtomicUsize>);
            impl Drop for Count {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let slot: Arc<Mutex<Option<TaskHandle<'static, u32, ()>>>> = Arc::default();
            let (s, d) = (slot.clone(), drops.clone());
            let mut group = task_group(move |tg| {
                let c = Count(d);
                *s.lock().unwrap() = Some(tg.spawn(async move {
                    let _c = c;
                    for _ in 0..(i % 5) {
                        yield_now().await;
                    }
                    futures::future::pending::<()>().await;
                    Ok(1)
                }));
                async { Ok::<_, ()>(()) }
            });
            let s = slot.clone();
            let t = thread::spawn(move || {
                let h = loop {
                    if let Some(h) = s.lock().unwrap().take() {
                        break h;
                    }
                    thread::yield_now();
                };
                h.abort();
                h
            });
            let out = loop {
                if let Poll::Ready(out) = poll_noop(&mut group) {
                    break out;
                }
                thread::yield_now();
            };
            let h = t.join().unwrap();
            assert_eq!(out, Ok(()));
            assert_eq!(drops.load(Ordering::SeqCst), 1);
            assert!(h.is_finished());
        }
    });
}

/// Leak check: abort in every order relative to the group's polls and
/// drop, including a task that holds its own handle (cell → future →
/// handle → cell).
#[test]
fn no_leaks_with_self_referencing_tasks() {
    for mode in 0..4 {
        assert_no_leak(&format!("mode {mode}"), || {
            let slot: Arc<Mutex<Option<TaskHandle<'static, (), ()>>>> = Arc::default();
            let s = slot.clone();
            let mut group = task_group(move |tg| {
                let me = s.clone();
                let h = tg.spawn(async move {
                    let _me = me; // the task keeps its own handle alive
                    futures::future::pending::<()>().await;
                    Ok(())
                });
                *s.lock().unwrap() = Some(h);
                futures::future::pending::<Result<(), ()>>()
            });
            if mode & 1 == 1 {
                let _ = poll_noop(&mut group);
            }
            if mode & 2 == 2 {
                slot.lock().unwrap().as_ref().unwrap().abort();
            }
            drop(group);
            drop(slot.lock().unwrap().take());
        });
    }
}

/// D2 from another thread, deterministic: thread B's `abort()` returns while
/// the group (on this thread) is polling the task; that poll then returns
/// `Err`, and the group fails with the error of a task whose `abort()` had
/// already returned.
#[test]
fn an_abort_left_during_the_poll_keeps_the_tasks_error_from_the_group() {
    watchdog("aborted_error_cross_thread", || {
        let slot: Arc<Mutex<Option<TaskHandle<'static, (), &'static str>>>> = Arc::default();
        let (in_poll_tx, in_poll_rx) = mpsc::channel::<()>();
        let (aborted_tx, aborted_rx) = mpsc::channel::<()>();
        let s = slot.clone();
        let mut group = task_group(move |tg| {
            let rx = Mutex::new(aborted_rx);
            *s.lock().unwrap() = Some(tg.spawn(futures::future::poll_fn(move |_| {
                in_poll_tx.send(()).unwrap();
                rx.lock().unwrap().recv().unwrap(); // B's abort() has returned
                Poll::Ready(Err::<(), _>("error of an aborted task"))
            })));
            async { Ok::<_, &'static str>(()) }
        });
        let s = slot.clone();
        let b = thread::spawn(move || {
            in_poll_rx.recv().unwrap();
            s.lock().unwrap().as_ref().unwrap().abort();
            aborted_tx.send(()).unwrap();
        });
        let out = loop {
            if let Poll::Ready(out) = poll_noop(&mut group) {
                break out;
            }
        };
        b.join().unwrap();
        assert_eq!(
            out,
            Ok(()),
            "abort() had returned before the task's error reached the group"
        );
    });
}

/// The task's poll panics after it aborted itself (request left, `Polling`):
/// the future is put back and dropped once, with the group; the handle
/// reports the abort; nothing wedges or leaks.
#[test]
fn panic_in_poll_after_self_abort() {
    watchdog("panic_after_abort", || {
        let tracker = Tracker::new();
        let slot: Arc<Mutex<Option<TaskHandle<'static, (), ()>>>> = Arc::default();
        let (t, s) = (tracker.clone(), slot.clone());
        let mut group = task_group(move |tg| {
            let tok = t.token();
            let me = s.clone();
            // A poll_fn: its captures survive a panicking poll (an async
            // block's locals would be dropped by the unwind itself).
            let mut first = true;
            *s.lock().unwrap() = Some(tg.spawn(futures::future::poll_fn(move |cx| {
                let _ = &tok;
                if first {
                    first = false;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                me.lock().unwrap().as_ref().unwrap().abort();
                panic!("task panics after aborting itself");
            })));
            futures::future::pending::<Result<(), ()>>()
        });
        let r = catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..5 {
                let _ = poll_noop(&mut group);
            }
        }));
        assert!(r.is_err());
        // Kept in its cell by the unwind (not dropped during it).
        assert_eq!(tracker.live(), 1);
        let h = slot.lock().unwrap().take().unwrap();
        // Aborting again from another thread while the group is poisoned:
        let h = thread::spawn(move || {
            h.abort();
            h
        })
        .join()
        .unwrap();
        assert_eq!(tracker.live(), 0);
        drop(group);
        assert_eq!(tracker.created(), 1);
        let mut h = h;
        assert!(matches!(poll_noop(&mut h), Poll::Ready(Err(c)) if c.is_aborted()));
    });
}

/// Pre-existing (the wrapper predates cd40cdf) but makes `PutBack` moot: a
/// task whose poll panics is dropped *during the unwind* by the `async move`
/// wrapper in `task()`, so a task whose destructor also panics aborts the
/// process (panic while panicking) instead of the destructor panic being
/// caught when the group is dropped. Ignored because it kills the test
/// binary: run with `--ignored defect_poll_panic_plus_drop_panic` and see
/// SIGABRT.
#[test]
fn a_poll_panic_then_a_drop_panic_does_not_abort_the_process() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("destructor");
        }
    }
    let p = PanicOnDrop;
    let mut group = task_group(move |tg| {
        tg.spawn(futures::future::poll_fn(move |_| -> Poll<Result<(), ()>> {
            let _ = &p;
            panic!("poll");
        }));
        futures::future::pending::<Result<(), ()>>()
    });
    let r = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut group)));
    assert!(r.is_err());
    let r = catch_unwind(AssertUnwindSafe(|| drop(group)));
    assert!(
        r.is_err(),
        "the destructor's panic comes out of the group's drop"
    );
}

/// Abort on one thread races dropping the (Send) group on another, and
/// polls before it: each future is dropped exactly once, nothing panics.
#[test]
fn abort_races_group_drop() {
    watchdog("abort_vs_drop", || {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for i in 0..3000 {
            let drops = Arc::new(AtomicUsize::new(0));
            let handles: Arc<Mutex<Vec<TaskHandle<'static, (), ()>>>> = Arc::default();
            let (h2, d) = (handles.clone(), drops.clone());
            let mut group = task_group(move |tg| {
                for _ in 0..3 {
                    let c = Count(d.clone());
                    h2.lock().unwrap().push(tg.spawn(async move {
                        let _c = c;
                        futures::future::pending::<()>().await;
                        Ok(())
                    }));
                }
                futures::future::pending::<Result<(), ()>>()
            });
            if i % 2 == 0 {
                let _ = poll_noop(&mut group);
            }
            let hs = std::mem::take(&mut *handles.lock().unwrap());
            let b = thread::spawn(move || {
                for h in &hs {
                    h.abort();
                }
                hs
            });
            if i % 3 == 0 {
                thread::yield_now();
            }
            drop(group);
            let hs = b.join().unwrap();
            assert_eq!(drops.load(Ordering::SeqCst), 3);
            for mut h in hs {
                assert!(matches!(poll_noop(&mut h), Poll::Ready(Err(_))));
            }
        }
    });
}

/// While the group drops (or fail-fast clears) its engine, a task's
/// destructor aborts a sibling that the clear has not reached yet: the
/// sibling is dropped inside `abort`, whose wake of the sibling's engine
/// waker hits an engine being torn down. Each dropped once; run under ASan.
#[test]
fn destructor_aborts_a_sibling_during_engine_teardown() {
    watchdog("teardown_abort", || {
        struct AbortOnDrop(
            Arc<Mutex<Vec<TaskHandle<'static, (), &'static str>>>>,
            #[allow(dead_code)] Token,
        );
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for h in self.0.lock().unwrap().iter() {
                    h.abort();
                }
            }
        }
        for fail in [false, true] {
            for order in 0..2 {
                let tracker = Tracker::new();
                let t = tracker.clone();
                let (fail_tx, fail_rx) = oneshot::channel::<()>();
                let mut group = task_group(move |tg| {
                    let handles: Arc<Mutex<Vec<TaskHandle<'static, (), &'static str>>>> =
                        Arc::default();
                    let spawn_victim = |tg: &awaitkit::TaskScope<'static, &'static str>| {
                        let tok = t.token();
                        let h = tg.spawn(async move {
                            let _t = tok;
                            futures::future::pending::<()>().await;
                            Ok(())
                        });
                        handles.lock().unwrap().push(h);
                    };
                    if order == 1 {
                        spawn_victim(&tg);
                    }
                    let guard = AbortOnDrop(handles.clone(), t.token());
                    tg.spawn(async move {
                        let _g = guard;
                        futures::future::pending::<()>().await;
                        Ok(())
                    });
                    if order == 0 {
                        spawn_victim(&tg);
                    }
                    spawn_victim(&tg);
                    tg.spawn(async move {
                        let _ = fail_rx.await;
                        Err::<(), _>("fail")
                    });
                    futures::future::pending::<Result<(), &'static str>>()
                });
                assert!(poll_noop(&mut group).is_pending());
                if fail {
                    fail_tx.send(()).unwrap();
                    assert_eq!(poll_noop(&mut group), Poll::Ready(Err("fail")));
                    assert_eq!(tracker.live(), 0);
                } else {
                    drop(fail_tx);
                    drop(group);
                    assert_eq!(tracker.live(), 0);
                }
                assert_eq!(tracker.created(), 3);
            }
        }
    });
}
