//! `TaskHandle::abort`: cancelling one task of a task group (asyncio's
//! `task.cancel()`). The future is dropped at once — on the aborting thread
//! when the group is not polling that task, else before the group's poll
//! returns — the handle reports `TaskCancelled` (never a panic), and the
//! rest of the group goes on.

use crate::common;

use awaitkit::{TaskCancelled, TaskHandle, task_group, task_group_local};
use common::*;
use futures::channel::oneshot;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};

fn poll_noop<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A task that never finishes, holds a token and counts its polls.
fn stuck(
    tracker: &Tracker,
    polls: &Counter,
) -> impl Future<Output = Result<u32, &'static str>> + Send + use<> {
    let token = tracker.token();
    let polls = polls.clone();
    futures::future::poll_fn(move |_| {
        let _ = &token;
        polls.inc();
        Poll::Pending
    })
}

/// Records the thread it is dropped on.
struct DropsOn(Arc<Mutex<Vec<ThreadId>>>);

impl Drop for DropsOn {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(thread::current().id());
    }
}

fn aborted(out: Result<Result<u32, &'static str>, TaskCancelled>) -> bool {
    matches!(out, Err(c) if c.is_aborted())
}

matrix! {
    /// Aborting an idle task from the body drops it right there; its handle
    /// reports the abort; the group goes on and finishes with the body.
    async fn abort_from_the_body_drops_at_once() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (t, p) = (tracker.clone(), polls.clone());
        let out = task_group(|tg| async move {
            let victim = tg.spawn(stuck(&t, &p));
            let other = tg.spawn(async { Ok(7) });
            yield_now().await; // both started
            assert_eq!(p.get(), 1);
            assert_eq!(t.live(), 1);
            victim.abort();
            assert_eq!(t.live(), 0, "dropped inside `abort`");
            assert!(victim.is_finished());
            let err = victim.await.unwrap_err();
            assert!(err.is_aborted());
            assert_eq!(err.to_string(), "task was aborted");
            Ok(other.await.unwrap()? + 1)
        })
        .await;
        assert_eq!(out, Ok(8));
        assert_eq!(polls.get(), 1, "never polled again");
        assert_eq!(tracker.created(), 1);
    }

    /// A task aborted before its first poll is dropped without ever being
    /// polled.
    async fn abort_before_the_first_poll() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (t, p) = (tracker.clone(), polls.clone());
        let out = task_group(|tg| async move {
            let victim = tg.spawn(stuck(&t, &p));
            victim.abort();
            assert_eq!(t.live(), 0);
            assert!(aborted(victim.await));
            Ok::<_, &str>(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(polls.get(), 0);
    }

    /// One task aborts another; the group keeps running the rest.
    async fn a_task_aborts_a_sibling() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (t, p) = (tracker.clone(), polls.clone());
        let out = task_group(|tg| async move {
            let victim = tg.spawn(stuck(&t, &p));
            let killer = tg.spawn(async move {
                yield_now().await;
                victim.abort();
                Ok(victim.await.unwrap_err().is_aborted())
            });
            killer.await.unwrap()
        })
        .await;
        assert_eq!(out, Ok(true));
        assert_eq!(tracker.live(), 0);
    }

    /// A task that aborts itself (its handle reaches it through a channel)
    /// is dropped when its poll returns, before the group's poll returns;
    /// the poll itself runs to its end.
    async fn a_task_aborts_itself() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let ran_to_end = Counter::new();
        let r = ran_to_end.clone();
        let out = task_group(|tg| async move {
            let (tx, rx) = oneshot::channel::<TaskHandle<'_, u32, &str>>();
            let me = tg.spawn(async move {
                let _token = t.token();
                let me = rx.await.unwrap();
                me.abort(); // the group is polling this very task
                r.inc(); // still runs
                yield_now().await; // dropped here
                unreachable!("aborted");
            });
            tx.send(me).map_err(|_| "send").unwrap();
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(ran_to_end.get(), 1);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.created(), 1);
    }

    /// Aborting after the task finished changes nothing: the value stays.
    async fn abort_after_finishing_keeps_the_value() {
        let out = task_group(|tg| async move {
            let done = tg.spawn(async { Ok::<_, &str>(3) });
            yield_now().await;
            yield_now().await;
            assert!(done.is_finished());
            done.abort();
            done.abort();
            done.await.unwrap()
        })
        .await;
        assert_eq!(out, Ok(3));
    }

    /// Aborting twice is the same as once; an aborted task's error never
    /// reaches the group (fail-fast or keep-going).
    async fn aborted_tasks_are_not_group_errors() {
        for keep_going in [false, true] {
            let tracker = Tracker::new();
            let t = tracker.clone();
            let group = task_group(|tg| async move {
                let bad = tg.spawn(async move {
                    let _token = t.token();
                    yield_now().await;
                    yield_now().await;
                    Err::<(), _>("would fail the group")
                });
                yield_now().await;
                bad.abort();
                bad.abort();
                assert!(matches!(bad.await, Err(c) if c.is_aborted()));
                Ok(5)
            });
            let group = if keep_going { group.keep_going() } else { group };
            assert_eq!(group.await, Ok(5));
            assert_eq!(tracker.live(), 0);
        }
    }

    /// The body awaits a handle; a thread aborts the task meanwhile: the
    /// body is woken and sees the abort (no panic, no hang).
    async fn abort_from_another_thread_wakes_the_awaiting_body() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (t, p) = (tracker.clone(), polls.clone());
        let out = task_group(|tg| async move {
            let victim = Arc::new(Mutex::new(tg.spawn(stuck(&t, &p))));
            let remote = victim.clone();
            let thread = thread::spawn(move || {
                thread::sleep(std::time::Duration::from_millis(20));
                remote.lock().unwrap().abort();
            });
            // Await the handle (parked until the abort wakes the body).
            let out = futures::future::poll_fn(|cx| Pin::new(&mut *victim.lock().unwrap()).poll(cx)).await;
            thread.join().unwrap();
            Ok::<_, &str>(aborted(out))
        })
        .await;
        assert_eq!(out, Ok(true));
        assert_eq!(tracker.live(), 0);
        assert_eq!(polls.get(), 1);
    }
}

matrix_local! {
    /// A local group's task aborted on the group's thread is dropped at
    /// once, on that thread.
    async fn local_abort_on_the_group_thread_is_synchronous() {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let d = drops.clone();
        let out = task_group_local(|tg| async move {
            let marker = DropsOn(d.clone());
            let rc = std::rc::Rc::new(1); // a `!Send` task
            let victim = tg.spawn(async move {
                let _m = marker;
                let _rc = rc;
                futures::future::pending::<Result<u8, ()>>().await
            });
            yield_now().await;
            victim.abort();
            assert_eq!(d.lock().unwrap().len(), 1);
            Ok(victim.await.unwrap_err().is_aborted())
        })
        .await;
        assert_eq!(out, Ok(true));
        assert_eq!(*drops.lock().unwrap(), [thread::current().id()]);
    }

    /// Aborted from another thread, a local task is dropped by the group on
    /// the group's own thread, at the group's next poll.
    async fn local_abort_from_another_thread_drops_on_the_group_thread() {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let d = drops.clone();
        let here = thread::current().id();
        let out = task_group_local(|tg| async move {
            let marker = DropsOn(d.clone());
            let rc = std::rc::Rc::new(1);
            let victim = tg.spawn(async move {
                let _m = marker;
                let _rc = rc;
                futures::future::pending::<Result<u8, ()>>().await
            });
            yield_now().await;
            let remote = thread::spawn(move || {
                victim.abort();
                victim // awaited back here
            });
            let victim = remote.join().unwrap();
            Ok(victim.await.unwrap_err().is_aborted())
        })
        .await;
        assert_eq!(out, Ok(true));
        assert_eq!(*drops.lock().unwrap(), [here]);
    }
}

guarded! {
    /// Not polled by anyone: an abort from another thread drops the task on
    /// that thread, synchronously, and wakes the group so it can finish.
    fn abort_while_the_group_is_idle_drops_on_the_aborting_thread() {
        let drops = Arc::new(Mutex::new(Vec::new()));
        let d = drops.clone();
        let mut handle = None;
        let h = &mut handle;
        let mut group = task_group(move |tg| {
            let marker = DropsOn(d);
            *h = Some(tg.spawn(async move {
                let _m = marker;
                futures::future::pending::<Result<u8, ()>>().await
            }));
            async { Ok::<_, ()>(()) }
        });
        let waker = CountingWaker::new();
        assert!(poll_once(&mut group, &waker).is_pending());
        let handle = handle.unwrap();
        let wakes = waker.wakes();
        let remote = thread::spawn(move || {
            handle.abort();
            (thread::current().id(), handle)
        });
        let (remote_id, mut handle) = remote.join().unwrap();
        assert_eq!(*drops.lock().unwrap(), [remote_id]);
        assert_eq!(waker.wakes(), wakes + 1, "the group was woken");
        assert_eq!(group.len(), 1, "counted done at the group's next poll");
        assert_eq!(poll_once(&mut group, &waker), Poll::Ready(Ok(())));
        assert!(matches!(poll_noop(&mut handle), Poll::Ready(Err(c)) if c.is_aborted()));
        // Polling again: after completion.
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut handle))).unwrap_err();
        assert_eq!(panic_message(&*err), "`TaskHandle` polled after completion");
        assert!(futures::future::FusedFuture::is_terminated(&handle));
    }

    /// A handle outliving its dropped group: abort is a no-op, the handle
    /// says "cancelled", not "aborted".
    fn abort_after_the_group_was_dropped() {
        let mut handle = None;
        let h = &mut handle;
        let mut group = task_group(move |tg| {
            *h = Some(tg.spawn(futures::future::pending::<Result<u8, ()>>()));
            futures::future::pending::<Result<(), ()>>()
        });
        assert!(poll_noop(&mut group).is_pending());
        drop(group);
        let mut handle = handle.unwrap();
        handle.abort();
        match poll_noop(&mut handle) {
            Poll::Ready(Err(c)) => {
                assert!(!c.is_aborted());
                assert!(c.to_string().contains("group failed or was dropped"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The aborted task's destructor panics: `abort` propagates it, the task
    /// is gone (dropped once), the group is woken and finishes normally.
    fn a_panicking_destructor_propagates_out_of_abort() {
        struct Bomb(Arc<AtomicUsize>);
        impl Drop for Bomb {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
                panic!("bomb");
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let mut handle = None;
        let h = &mut handle;
        let mut group = task_group(move |tg| {
            let bomb = Bomb(d);
            *h = Some(tg.spawn(async move {
                let _b = bomb;
                futures::future::pending::<Result<u8, ()>>().await
            }));
            async { Ok::<_, ()>(()) }
        });
        let waker = CountingWaker::new();
        assert!(poll_once(&mut group, &waker).is_pending());
        let mut handle = handle.unwrap();
        let wakes = waker.wakes();
        let err = catch_unwind(AssertUnwindSafe(|| handle.abort())).unwrap_err();
        assert_eq!(panic_message(&*err), "bomb");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(waker.wakes(), wakes + 1, "woken despite the panic");
        assert_eq!(poll_once(&mut group, &waker), Poll::Ready(Ok(())));
        assert!(matches!(poll_noop(&mut handle), Poll::Ready(Err(c)) if c.is_aborted()));
        drop(group);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    /// The aborting task's own waker — the body awaiting the handle — panics
    /// when the abort wakes it: the panic comes out of `abort`, and nothing
    /// is lost: the task is gone, the handle reports the abort.
    fn a_panicking_waker_of_the_awaiter() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut handle = None;
        let h = &mut handle;
        let (t, p) = (tracker.clone(), polls.clone());
        let mut group = task_group(move |tg| {
            *h = Some(tg.spawn(stuck(&t, &p)));
            async { Ok::<_, &str>(()) }
        });
        assert!(poll_noop(&mut group).is_pending());
        let mut handle = handle.unwrap();
        let bad = PanickyWaker::waker();
        assert!(Pin::new(&mut handle).poll(&mut Context::from_waker(&bad)).is_pending());
        let err = catch_unwind(AssertUnwindSafe(|| handle.abort())).unwrap_err();
        assert_eq!(panic_message(&*err), "waker panics");
        assert_eq!(tracker.live(), 0);
        assert!(aborted(match poll_noop(&mut handle) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("pending after abort"),
        }));
        assert_eq!(poll_noop(&mut group), Poll::Ready(Ok(())));
    }

    /// Aborts racing the group's polls on another thread, many times: every
    /// task dropped exactly once, the group always finishes, every handle
    /// reports either its value or the abort.
    fn aborts_race_group_polls() {
        for round in 0..300 {
            let tracker = Tracker::new();
            let handles: Arc<Mutex<Vec<TaskHandle<'static, usize, ()>>>> = Arc::default();
            let hs = handles.clone();
            let t = tracker.clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let group = task_group(move |tg| {
                for i in 0..8 {
                    let token = t.token();
                    hs.lock().unwrap().push(tg.spawn(async move {
                        let _token = token;
                        YieldN::new(i % 4, (), &Counter::new()).await;
                        Ok(i)
                    }));
                }
                async move {
                    let _ = stop_rx.await;
                    Ok(())
                }
            });
            let list = std::mem::take(&mut *handles.lock().unwrap());
            let aborter = thread::spawn(move || {
                for (i, h) in list.iter().enumerate() {
                    if (i + round) % 2 == 0 {
                        h.abort();
                    }
                    thread::yield_now();
                }
                list
            });
            let poller = thread::spawn(move || {
                let out = futures::executor::block_on(async move {
                    let stop = async move {
                        yield_now().await;
                        let _ = stop_tx.send(());
                    };
                    let (out, ()) = futures::join!(group, stop);
                    out
                });
                assert_eq!(out, Ok(()));
            });
            let list = aborter.join().unwrap();
            poller.join().unwrap();
            assert_eq!(tracker.live(), 0);
            assert_eq!(tracker.created(), 8);
            for (i, h) in list.into_iter().enumerate() {
                match futures::executor::block_on(h) {
                    Ok(Ok(v)) => assert_eq!(v, i),
                    Err(c) => assert!(c.is_aborted(), "round {round}: {c}"),
                    Ok(Err(())) => unreachable!(),
                }
            }
        }
    }

    /// Cancel after every poll with an abort in the middle: drop the group
    /// after k polls for each k; every task dropped exactly once.
    fn drop_after_every_poll_with_an_abort() {
        for stop_after in 0..8 {
            let tracker = Tracker::new();
            let t = tracker.clone();
            let mut handles = Vec::new();
            let hs = &mut handles;
            let mut group = task_group(move |tg| {
                for i in 0..4 {
                    let token = t.token();
                    hs.push(tg.spawn(async move {
                        let _token = token;
                        YieldN::new(2 * i, (), &Counter::new()).await;
                        Ok::<_, ()>(i)
                    }));
                }
                async { Ok::<_, ()>(()) }
            });
            for step in 0..stop_after {
                if step == 2 {
                    handles[3].abort();
                }
                if poll_noop(&mut group).is_ready() {
                    break;
                }
            }
            drop(group);
            assert_eq!(tracker.live(), 0, "stop after {stop_after}");
            for h in handles {
                // Never a panic: a value, the abort, or the group's drop.
                let _ = futures::executor::block_on(h);
            }
        }
    }
}

/// A waker whose `wake` panics (and whose clones do too).
struct PanickyWaker;

impl std::task::Wake for PanickyWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker panics");
    }
}

impl PanickyWaker {
    fn waker() -> Waker {
        Waker::from(Arc::new(PanickyWaker))
    }
}
