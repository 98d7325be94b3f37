//! Review of the lean `gather!`/`try_gather!` block (src/engine/tuple.rs):
//! the refs == 1 plain load/store pass, the owner-thread `local` word, the
//! lazy registration of the task's waker, the owner's RMW-free free, and the
//! panic paths. Manual polls with a counting waker, each test under the
//! watchdog; run under ASan too.

use crate::common;

use awaitkit::{gather, try_gather};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Waker};

/// Counts drops of a value.
#[derive(Debug)]
struct DropCount(Arc<AtomicUsize>, bool);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if self.1 {
            panic!("drop panics");
        }
    }
}

/// A child that, in its first poll, clones its waker and hands the clone to
/// a thread which wakes it (by value) at a moment chosen by `spin` — before
/// the child's poll returns, or racing the owner's end of the pass — and
/// finishes on its second poll.
struct SendClone {
    polls: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
    wait_for_wake: bool,
    spin: usize,
}
impl Future for SendClone {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        if n > 0 {
            return Poll::Ready(n);
        }
        let clone = cx.waker().clone();
        let (tx, rx) = mpsc::channel();
        let spin = self.spin;
        self.handle = Some(std::thread::spawn(move || {
            for _ in 0..spin {
                std::hint::spin_loop();
            }
            clone.wake();
            let _ = tx.send(());
        }));
        if self.wait_for_wake {
            // Woken (and the clone dropped) before this poll returns: the
            // owner then reads refs == 1 at the end of the pass.
            rx.recv().unwrap();
        }
        Poll::Pending
    }
}

/// (4): a clone made during a pass (after the owner read refs == 1 and did a
/// plain store over the ready word) is sent to a thread that wakes it, before
/// the child's poll returns or racing the end of the pass. The wake must
/// reach the task (a counting waker) and the next poll must poll the child.
#[test]
fn clone_escaping_during_a_refs_one_pass_is_never_lost() {
    watchdog("clone_escaping_during_a_refs_one_pass", || {
        for round in 0..4000 {
            let polls = Arc::new(AtomicUsize::new(0));
            let child = SendClone {
                polls: polls.clone(),
                handle: None,
                wait_for_wake: round % 2 == 0,
                spin: (round / 2) % 200,
            };
            let w = CountingWaker::new();
            let mut fut = gather!(child, async { 1u8 });
            assert!(poll_once(&mut fut, &w).is_pending());
            // Wait until the thread has woken.
            // (Yielding: on a busy machine the waking thread may need this
            // core.)
            while polls.load(Ordering::SeqCst) == 1 && w.wakes() == 0 {
                std::thread::yield_now();
            }
            assert!(
                w.wakes() >= 1,
                "round {round}: the clone's wake never reached the task"
            );
            match poll_once(&mut fut, &w) {
                Poll::Ready((n, 1)) => assert_eq!(n, 1),
                other => panic!("round {round}: {:?}", other.is_ready()),
            }
        }
    });
}

/// (4): a clone created and dropped within the pass (never woken), and a
/// clone created, woken by reference and dropped within the pass: refs is 1
/// again at the end; a self-wake still gets the child polled.
#[test]
fn clone_created_and_dropped_within_the_pass() {
    struct CloneDrop(usize, bool);
    impl Future for CloneDrop {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.0 += 1;
            if self.0 == 3 {
                return Poll::Ready(self.0);
            }
            let c = cx.waker().clone();
            if self.1 {
                c.wake_by_ref();
            } else {
                cx.waker().wake_by_ref();
            }
            drop(c);
            Poll::Pending
        }
    }
    watchdog("clone_created_and_dropped_within_the_pass", || {
        for by_clone in [false, true] {
            let w = CountingWaker::new();
            let mut fut = gather!(CloneDrop(0, by_clone), async { 2u8 });
            assert!(poll_once(&mut fut, &w).is_pending());
            assert_eq!(w.wakes(), 1);
            assert!(poll_once(&mut fut, &w).is_pending());
            assert_eq!(w.wakes(), 2);
            assert_eq!(poll_once(&mut fut, &w), Poll::Ready((3, 2)));
            assert_eq!(w.live_clones(), 0);
        }
    });
}

/// A child that wakes itself on its first polls, the remaining `left`.
struct SelfWake(usize, Arc<AtomicUsize>);
impl Future for SelfWake {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.1.fetch_add(1, Ordering::SeqCst);
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// (5): the gather is polled on one thread, moved (Send) to another between
/// polls, while a third thread keeps waking a stored clone; a self-waking
/// child sets the owner-only word on each thread. Polls == wakes + N.
#[test]
fn gather_moved_between_threads_with_local_and_remote_wakes() {
    watchdog("gather_moved_between_threads", || {
        for _ in 0..300 {
            let polls = Arc::new(AtomicUsize::new(0));
            let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
            let fired = Arc::new(AtomicUsize::new(0));
            let (s2, f2) = (stored.clone(), fired.clone());
            let remote = std::future::poll_fn(move |cx| {
                if f2.load(Ordering::SeqCst) >= 3 {
                    return Poll::Ready(());
                }
                *s2.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            });
            let fut = gather!(SelfWake(5, polls.clone()), remote);
            let (s3, fi3) = (stored.clone(), fired.clone());
            let waker_thread = std::thread::spawn(move || {
                while fi3.load(Ordering::SeqCst) < 3 {
                    if let Some(w) = s3.lock().unwrap().take() {
                        fi3.fetch_add(1, Ordering::SeqCst);
                        w.wake();
                    }
                    std::thread::yield_now();
                }
            });
            let w = Arc::new(CountingWaker::new());
            let mut fut = Some(fut);
            let mut rounds = 0;
            loop {
                let mut f = fut.take().unwrap();
                let w2 = w.clone();
                // Each poll on a fresh thread (the TLS marker of an exited
                // thread may be reused by the next).
                let (f, done) = std::thread::spawn(move || {
                    let r = poll_once(&mut f, &w2).is_ready();
                    (f, r)
                })
                .join()
                .unwrap();
                if done {
                    break;
                }
                fut = Some(f);
                rounds += 1;
                assert!(rounds < 1_000_000, "hang");
                std::thread::yield_now();
            }
            waker_thread.join().unwrap();
            assert_eq!(polls.load(Ordering::SeqCst), 6);
        }
    });
}

/// (5): nested gathers on one thread, both with self-waking children and the
/// inner one's child woken from the outer's sibling during the outer pass.
#[test]
fn nested_gathers_on_one_thread() {
    watchdog("nested_gathers_on_one_thread", || {
        let (p1, p2, p3) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
        let fired = Arc::new(AtomicBool::new(false));
        let (s1, f1) = (stored.clone(), fired.clone());
        let parked = std::future::poll_fn(move |cx| {
            if f1.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *s1.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        let (s2, f2) = (stored.clone(), fired.clone());
        let mut n = 0;
        let waker_of_inner = std::future::poll_fn(move |cx| {
            n += 1;
            if n == 3 {
                // Wake the inner gather's child during the outer's pass, on
                // the owner's thread, but outside the inner's pass.
                f2.store(true, Ordering::SeqCst);
                if let Some(w) = s2.lock().unwrap().take() {
                    w.wake();
                }
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        let inner = gather!(SelfWake(2, p1.clone()), parked);
        let mut fut = gather!(
            inner,
            SelfWake(3, p2.clone()),
            waker_of_inner,
            SelfWake(1, p3.clone())
        );
        let w = CountingWaker::new();
        let mut polls = 0;
        loop {
            polls += 1;
            assert!(polls < 100, "hang");
            if poll_once(&mut fut, &w).is_ready() {
                break;
            }
            assert!(w.wakes() >= polls, "poll {polls}: not woken, would hang");
        }
        assert_eq!(
            (
                p1.load(Ordering::SeqCst),
                p2.load(Ordering::SeqCst),
                p3.load(Ordering::SeqCst)
            ),
            (3, 4, 2)
        );
    });
}

/// (5) on unwind: a child wakes itself (owner-only word set), its sibling
/// panics in the same pass. The next poll panics "after a panic"; dropping
/// drops each child exactly once; no leak.
#[test]
fn panic_after_a_self_wake_in_the_same_pass() {
    watchdog("panic_after_a_self_wake", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let (d1, d2) = (
            DropCount(drops.clone(), false),
            DropCount(drops.clone(), false),
        );
        let polls = Arc::new(AtomicUsize::new(0));
        let a = {
            let p = polls.clone();
            let mut s = SelfWake(5, p);
            std::future::poll_fn(move |cx| {
                let _ = &d1;
                Pin::new(&mut s).poll(cx)
            })
        };
        let b = std::future::poll_fn(move |_| -> Poll<()> {
            let _ = &d2;
            panic!("child panics")
        });
        let w = CountingWaker::new();
        let mut fut = gather!(a, b);
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut fut, &w))).is_err());
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut fut, &w))).unwrap_err();
        let msg = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        assert!(msg.contains("after a panic"), "{msg}");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        drop(fut);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    });
}

/// A child whose future's destructor panics right when it completes (the
/// drop inside the pass, `*slot = Done(output)`): the output is dropped
/// exactly once, the future exactly once.
#[test]
fn destructor_panics_when_the_child_completes() {
    struct ReadyThenPanicDrop(Arc<AtomicUsize>, Option<DropCount>);
    impl Future for ReadyThenPanicDrop {
        type Output = DropCount;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<DropCount> {
            Poll::Ready(self.1.take().unwrap())
        }
    }
    impl Drop for ReadyThenPanicDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("future's drop panics");
        }
    }
    watchdog("destructor_panics_when_the_child_completes", || {
        let fut_drops = Arc::new(AtomicUsize::new(0));
        let out_drops = Arc::new(AtomicUsize::new(0));
        let sib = Arc::new(AtomicUsize::new(0));
        let w = CountingWaker::new();
        let mut fut = gather!(
            ReadyThenPanicDrop(fut_drops.clone(), Some(DropCount(out_drops.clone(), false))),
            SelfWake(3, sib.clone())
        );
        assert!(catch_unwind(AssertUnwindSafe(|| poll_once(&mut fut, &w))).is_err());
        drop(fut);
        assert_eq!(fut_drops.load(Ordering::SeqCst), 1);
        assert_eq!(out_drops.load(Ordering::SeqCst), 1);
    });
}

/// try_gather! fail fast: one child errs, a sibling's destructor panics, a
/// third sibling and the finished Ok output must still be dropped once; the
/// error is dropped once; a re-poll says "after a panic".
#[test]
fn try_gather_fail_fast_with_a_panicking_drop() {
    watchdog("try_gather_fail_fast_with_a_panicking_drop", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let err_drops = Arc::new(AtomicUsize::new(0));
        let ok_out = DropCount(drops.clone(), false);
        let (pd, d3) = (
            DropCount(drops.clone(), true),
            DropCount(drops.clone(), false),
        );
        let e = DropCount(err_drops.clone(), false);
        let a = async move { Ok::<_, DropCount>(ok_out) };
        let b = std::future::poll_fn(move |_| -> Poll<Result<(), DropCount>> {
            let _ = &pd;
            Poll::Pending
        });
        let mut e = Some(e);
        let c = std::future::poll_fn(move |_| Poll::Ready(Err::<(), _>(e.take().unwrap())));
        let d = std::future::poll_fn(move |_| -> Poll<Result<(), DropCount>> {
            let _ = &d3;
            Poll::Pending
        });
        let w = CountingWaker::new();
        let mut fut = try_gather!(a, b, c, d);
        let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut fut, &w)));
        assert!(r.is_err(), "the destructor's panic propagates");
        assert_eq!(
            drops.load(Ordering::SeqCst),
            3,
            "ok output, b and d dropped once each"
        );
        assert_eq!(
            err_drops.load(Ordering::SeqCst),
            1,
            "the error dropped once"
        );
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut fut, &w))).unwrap_err();
        let msg = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        assert!(msg.contains("after a panic"), "{msg}");
        drop(fut);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    });
}

/// (1): the first escape happens in a later pass, and the task's waker
/// changes between polls (another executor/task): the clone's wake must
/// reach the *latest* waker.
#[test]
fn first_escape_in_a_later_pass_with_a_new_task_waker() {
    watchdog("first_escape_in_a_later_pass", || {
        let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
        let s = stored.clone();
        let mut n = 0;
        let child = std::future::poll_fn(move |cx| {
            n += 1;
            match n {
                1 | 2 => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                3 => {
                    *s.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(n),
            }
        });
        let mut fut = gather!(child, async { 0u8 });
        let ws: Vec<CountingWaker> = (0..4).map(|_| CountingWaker::new()).collect();
        assert!(poll_once(&mut fut, &ws[0]).is_pending());
        assert_eq!(ws[0].wakes(), 1);
        assert!(poll_once(&mut fut, &ws[1]).is_pending());
        assert_eq!(ws[1].wakes(), 1);
        assert!(poll_once(&mut fut, &ws[2]).is_pending());
        assert_eq!(ws[2].wakes(), 0);
        // A spurious poll with yet another waker, before the wake.
        assert!(poll_once(&mut fut, &ws[3]).is_pending());
        let waker = stored.lock().unwrap().take().unwrap();
        std::thread::spawn(move || waker.wake()).join().unwrap();
        assert_eq!(ws[3].wakes(), 1, "the wake went to the latest task waker");
        assert_eq!(ws[2].wakes(), 0);
        assert_eq!(poll_once(&mut fut, &ws[3]), Poll::Ready((4, 0)));
        drop(fut);
        for w in &ws {
            assert_eq!(w.live_clones(), 0);
        }
    });
}

/// (3): the owner drops the future while another thread drops (or wakes by
/// value) the last clone, racing the owner's `refs == 1` check: freed exactly
/// once (ASan), the parent's waker clone released.
#[test]
fn owner_drop_races_the_last_clone() {
    watchdog("owner_drop_races_the_last_clone", || {
        for round in 0..20000 {
            let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
            let s = stored.clone();
            let child = std::future::poll_fn(move |cx| -> Poll<()> {
                *s.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            });
            let w = CountingWaker::new();
            let mut fut = gather!(child, std::future::pending::<()>());
            assert!(poll_once(&mut fut, &w).is_pending());
            let clone = stored.lock().unwrap().take().unwrap();
            let go = Arc::new(AtomicBool::new(false));
            let g = go.clone();
            let t = std::thread::spawn(move || {
                while !g.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                if round % 2 == 0 {
                    drop(clone)
                } else {
                    clone.wake()
                }
            });
            go.store(true, Ordering::Release);
            drop(fut);
            t.join().unwrap();
            assert_eq!(w.live_clones(), 0, "round {round}");
        }
    });
}

/// (1) and SPEC §1.13: the task waker's clone panics during the end-of-pass
/// registration (the first escape). The poll panics; the clone's later wake
/// from another thread and the drops are clean (ASan), nothing leaks.
#[test]
fn parent_waker_clone_panics_at_the_lazy_registration() {
    use std::task::{RawWaker, RawWakerVTable};
    static PANIC_CLONE: AtomicBool = AtomicBool::new(true);
    unsafe fn clone(_: *const ()) -> RawWaker {
        if PANIC_CLONE.swap(false, Ordering::SeqCst) {
            panic!("parent clone panics");
        }
        RawWaker::new(std::ptr::null(), &VT)
    }
    unsafe fn noop(_: *const ()) {}
    static VT: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    watchdog("parent_waker_clone_panics", || {
        // SAFETY: the vtable's functions do nothing with the data pointer.
        let parent = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) };
        let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
        let s = stored.clone();
        let child = std::future::poll_fn(move |cx| -> Poll<()> {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        let mut fut = gather!(child, std::future::pending::<()>());
        let mut cx = Context::from_waker(&parent);
        assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(&mut cx))).is_err());
        let clone = stored.lock().unwrap().take().unwrap();
        std::thread::spawn(move || clone.wake()).join().unwrap();
        drop(fut);
    });
}

/// A fail-fast `try_gather!` whose pending sibling parked a clone of its
/// waker: once the error is out, waking that clone (here and from another
/// thread) never wakes the task, and dropping it last frees the block.
#[test]
fn try_gather_fail_fast_then_a_stale_clone_wakes_nobody() {
    watchdog("try_gather_fail_fast_then_a_stale_clone", || {
        let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
        let s = stored.clone();
        let parked = std::future::poll_fn(move |cx| {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::<Result<u8, &str>>::Pending
        });
        let mut n = 0;
        let failing = std::future::poll_fn(move |cx| {
            n += 1;
            if n == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Err::<u16, _>("bad"))
        });
        let mut fut = try_gather!(parked, failing);
        let w = CountingWaker::new();
        assert!(poll_once(&mut fut, &w).is_pending());
        assert_eq!(w.wakes(), 1, "the failing child's self-wake");
        assert_eq!(poll_once(&mut fut, &w), Poll::Ready(Err("bad")));
        let stale = stored.lock().unwrap().take().expect("parked a clone");
        stale.wake_by_ref();
        let other = stale.clone();
        std::thread::spawn(move || other.wake()).join().unwrap();
        assert_eq!(w.wakes(), 1, "a stale clone woke the task after the error");
        drop(fut);
        assert_eq!(w.live_clones(), 0, "the task's waker outlived the gather");
        stale.wake();
        assert_eq!(w.wakes(), 1);
    });
}

/// A task waker that, in its first wake, wakes a sibling's parked clone
/// (re-entering the gather while the first wake holds the task waker's
/// slot): that wake brings no news (the first child's bit is set and not
/// taken yet), so it asks for no second task wake, and it is not lost: the
/// next poll polls both children.
#[test]
fn a_wake_from_inside_the_task_wake_is_served() {
    struct Reenter {
        wakes: AtomicUsize,
        sibling: Mutex<Option<Waker>>,
    }
    impl std::task::Wake for Reenter {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            let sibling = self.sibling.lock().unwrap().take();
            if let Some(waker) = sibling {
                waker.wake();
            }
        }
    }
    watchdog("a_wake_from_inside_the_task_wake_is_served", || {
        let polls = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let stored: [Arc<Mutex<Option<Waker>>>; 2] = Default::default();
        let child = |i: usize| {
            let (polls, stored) = (polls[i].clone(), stored[i].clone());
            std::future::poll_fn(move |cx| {
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    *stored.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(i)
                }
            })
        };
        let mut fut = gather!(child(0), child(1));
        let task = Arc::new(Reenter {
            wakes: AtomicUsize::new(0),
            sibling: Mutex::new(None),
        });
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(task.wakes.load(Ordering::SeqCst), 0);
        *task.sibling.lock().unwrap() = stored[1].lock().unwrap().take();
        let first = stored[0].lock().unwrap().take().expect("parked");
        first.wake();
        assert_eq!(
            task.wakes.load(Ordering::SeqCst),
            1,
            "the sibling's wake during the task's wake brought no news but woke the task again"
        );
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready((0, 1)));
        assert_eq!(polls[0].load(Ordering::SeqCst), 2);
        assert_eq!(polls[1].load(Ordering::SeqCst), 2);
    });
}
