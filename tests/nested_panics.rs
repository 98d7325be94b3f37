//! Nested panics and panicking task wakers, found by an adversarial review:
//! two destructors that panic in one drop (a child and its output, a set and
//! its collected outputs, a group's tasks and body, a set and its deadline's
//! sleep, a task waker dropped twice) never abort the process, and a child
//! woken while the task's waker is panicking still reaches the task.
//!
//! Each test that could abort runs in a child process (an abort would kill
//! the whole test binary).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// A child that parks its waker and finishes when `done` is set.
#[derive(Clone, Default)]
struct Parked {
    waker: Arc<Mutex<Option<Waker>>>,
    done: Arc<AtomicBool>,
}

impl Parked {
    fn future(&self) -> impl Future<Output = ()> + Unpin + Send + 'static {
        let me = self.clone();
        std::future::poll_fn(move |cx| {
            if me.done.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *me.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        })
    }
    fn wake(&self) {
        let w = self.waker.lock().unwrap().clone().expect("polled once");
        w.wake();
    }
}

/// Task waker whose first `wake_by_ref` blocks until told to go, then panics.
struct FirstWakePanics {
    calls: AtomicUsize,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Wake for FirstWakePanics {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            let entered = self.entered.lock().unwrap().take().unwrap();
            let go = self.go.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            go.recv().unwrap();
            panic!("first parent wake panics");
        }
    }
}

fn quiet_panics() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.to_string();
        if msg.contains("panics") || msg.contains("boom") {
            return;
        }
        prev(info);
    }));
}

/// Thread A's child wake holds the parent waker's WAKING bit while the
/// parent's `wake_by_ref` runs (and will panic). Meanwhile the owner polls
/// (taking A's child) and then child B is woken: B's wake becomes a request
/// serviced by the holder. The holder's wake panics and its guard drops the
/// request: the task is never woken for B, although B's wake came after the
/// owner's last poll and the parent waker works again (it panics only once).
fn lost_wake_scenario<S>(mut set: S, a: Parked, b: Parked)
where
    S: Future + Unpin,
{
    quiet_panics();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let parent = Arc::new(FirstWakePanics {
        calls: AtomicUsize::new(0),
        entered: Mutex::new(Some(entered_tx)),
        go: Mutex::new(Some(go_rx)),
    });
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut set).poll(&mut cx).is_pending());

    // Thread A wakes child a: the parent's wake starts and blocks.
    let a2 = a.clone();
    let thread_a = std::thread::spawn(move || {
        let _ = catch_unwind(AssertUnwindSafe(|| a2.wake()));
    });
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The owner polls (as executors may poll at any time): it takes a's bit.
    assert!(Pin::new(&mut set).poll(&mut cx).is_pending());
    let calls_before_b = parent.calls.load(Ordering::SeqCst);

    // Child b is woken after that poll: the parent must be woken (again).
    b.wake();

    go_tx.send(()).unwrap();
    thread_a.join().unwrap();

    let calls = parent.calls.load(Ordering::SeqCst);
    assert!(
        calls > calls_before_b,
        "child b was woken after the owner's last poll, but the task's waker was \
         never called again ({calls} call(s) in all, the first one panicked): lost wake-up"
    );
}

#[test]
fn gather_keeps_a_concurrent_wake_when_the_parent_wake_panics() {
    let (a, b) = (Parked::default(), Parked::default());
    let set = awaitkit::gather([a.future(), b.future()]);
    lost_wake_scenario(set, a, b);
}

#[test]
fn as_completed_keeps_a_concurrent_wake_when_the_parent_wake_panics() {
    use futures::StreamExt;
    let (a, b) = (Parked::default(), Parked::default());
    let mut set = awaitkit::as_completed([a.future(), b.future()]);
    let fut = std::future::poll_fn(move |cx| set.poll_next_unpin(cx));
    lost_wake_scenario(Box::pin(fut), a, b);
}

// ---------------------------------------------------------------------------
// Two destructor panics: the crate promises "all of them, even if several
// panic" (lib.rs, Panic safety) and its own `Panics` helper avoids aborting;
// these run the scenario in a child process and report an abort.
// ---------------------------------------------------------------------------

/// Runs `scenario` in a child process (this test binary, filtered to `name`);
/// fails if the child did not exit normally (an abort shows as SIGABRT).
fn isolated(name: &str, scenario: impl FnOnce()) {
    if std::env::var("REVIEW_CHILD").as_deref() == Ok(name) {
        if std::env::var_os("REVIEW_LOUD").is_none() {
            quiet_panics();
        }
        scenario();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env("REVIEW_CHILD", name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || stdout.contains("1 passed"),
        "the child process ran no scenario named {name}"
    );
    assert!(
        out.status.success(),
        "the scenario did not finish: {:?}\n{}",
        out.status,
        stderr
            .lines()
            .filter(|l| l.contains("panic") || l.contains("abort"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

struct Bomb(&'static str);
impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("boom: {}", self.0);
    }
}

/// Ready at once with `output`; its own destructor panics.
struct ReadyBomb<T> {
    output: Option<T>,
    _bomb: Bomb,
}
impl<T: Unpin> Future for ReadyBomb<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
        Poll::Ready(self.output.take().unwrap())
    }
}

/// Pending forever; its destructor panics.
struct PendingBomb(#[allow(dead_code)] Bomb);
impl Future for PendingBomb {
    type Output = Bomb;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Bomb> {
        Poll::Pending
    }
}

/// A child finishes with an output whose destructor panics, and the child's
/// own destructor panics: `Pass::next_with` unwinds from the child's drop
/// with the output still a live local, which is then dropped during the
/// unwind: second panic, process abort.
#[test]
fn gather_child_and_its_output_both_panic_on_drop_does_not_abort() {
    isolated(
        "gather_child_and_its_output_both_panic_on_drop_does_not_abort",
        || {
            let child = ReadyBomb {
                output: Some(Bomb("output")),
                _bomb: Bomb("child"),
            };
            let mut g = awaitkit::gather([child]);
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = Pin::new(&mut g).poll(&mut Context::from_waker(Waker::noop()));
            }));
            assert!(r.is_err());
            drop(g);
        },
    );
}

/// Same through `AsCompleted` (which stays usable after such a panic).
#[test]
fn as_completed_child_and_its_output_both_panic_on_drop_does_not_abort() {
    isolated(
        "as_completed_child_and_its_output_both_panic_on_drop_does_not_abort",
        || {
            use futures::StreamExt;
            let child = ReadyBomb {
                output: Some(Bomb("output")),
                _bomb: Bomb("child"),
            };
            let mut s = awaitkit::as_completed([child]);
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = s.poll_next_unpin(&mut Context::from_waker(Waker::noop()));
            }));
            assert!(r.is_err());
        },
    );
}

/// `GatherSettled` keeps finished outputs in a `Vec` beside the engine: when
/// it is dropped, the engine's drop (an unfinished child's destructor
/// panics) propagates first, then the `Vec` of outputs is dropped during
/// that unwind and a panicking output destructor aborts.
#[test]
fn gather_settled_drop_unfinished_child_and_stored_output_both_panic_does_not_abort() {
    isolated(
        "gather_settled_drop_unfinished_child_and_stored_output_both_panic_does_not_abort",
        || {
            type Child = Pin<Box<dyn Future<Output = Bomb>>>;
            let done: Child = Box::pin(async { Bomb("stored output") });
            let pending: Child = Box::pin(PendingBomb(Bomb("unfinished child")));
            let mut g = awaitkit::gather_settled(vec![done, pending]);
            assert!(
                Pin::new(&mut g)
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            let r = catch_unwind(AssertUnwindSafe(|| drop(g)));
            assert!(r.is_err());
        },
    );
}

/// `Wait` keeps done outputs in a `Vec` beside its set: same abort.
#[test]
fn wait_drop_unfinished_child_and_done_output_both_panic_does_not_abort() {
    isolated(
        "wait_drop_unfinished_child_and_done_output_both_panic_does_not_abort",
        || {
            type Child = Pin<Box<dyn Future<Output = Bomb>>>;
            let done: Child = Box::pin(async { Bomb("done output") });
            let pending: Child = Box::pin(PendingBomb(Bomb("unfinished child")));
            let mut w = awaitkit::wait(vec![done, pending], awaitkit::ReturnWhen::AllCompleted);
            assert!(
                Pin::new(&mut w)
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            let r = catch_unwind(AssertUnwindSafe(|| drop(w)));
            assert!(r.is_err());
        },
    );
}

/// A task group dropped with a queued (not yet drained) task whose
/// destructor panics, and a body whose destructor panics: `Core::drop`
/// propagates the task's panic, then the `body` field is dropped during that
/// unwind: abort. (`Core::cancel` catches both; `Drop` does not.)
#[test]
fn task_group_drop_queued_task_and_body_both_panic_does_not_abort() {
    isolated(
        "task_group_drop_queued_task_and_body_both_panic_does_not_abort",
        || {
            let group = awaitkit::task_group(|scope: awaitkit::TaskScope<'_, ()>| {
                let bomb = Bomb("queued task");
                // The handle is dropped: the task is detached.
                drop(scope.spawn(async move {
                    let _keep = &bomb;
                    Ok::<(), ()>(())
                }));
                let body_bomb = Bomb("body");
                async move {
                    let _keep = &body_bomb;
                    Ok::<(), ()>(())
                }
            });
            let r = catch_unwind(AssertUnwindSafe(|| drop(group)));
            assert!(r.is_err());
        },
    );
}

/// The task group shares the same `ParentWaker`: a spawn from another
/// thread during a (panicking) parent wake is a request that is dropped,
/// so the spawned task is never started (the group's task is never woken).
#[test]
fn task_group_keeps_a_concurrent_spawn_when_the_parent_wake_panics() {
    let (a, b) = (Parked::default(), Parked::default());
    let escaped: Arc<Mutex<Option<awaitkit::TaskScope<'static, ()>>>> = Arc::default();
    let (a2, esc) = (a.clone(), escaped.clone());
    let group = awaitkit::task_group(move |scope: awaitkit::TaskScope<'static, ()>| {
        *esc.lock().unwrap() = Some(scope.clone());
        async move {
            a2.future().await;
            Ok::<(), ()>(())
        }
    });
    // `b` stands for "a task spawned from elsewhere": waking b = spawning.
    struct SpawnOnWake(Arc<Mutex<Option<awaitkit::TaskScope<'static, ()>>>>, Parked);
    let spawner = SpawnOnWake(escaped, b.clone());
    // Run the same scenario; "waking b" is replaced by a spawn.
    quiet_panics();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let parent = Arc::new(FirstWakePanics {
        calls: AtomicUsize::new(0),
        entered: Mutex::new(Some(entered_tx)),
        go: Mutex::new(Some(go_rx)),
    });
    let waker = Waker::from(parent.clone());
    let mut cx = Context::from_waker(&waker);
    let mut group = group;
    assert!(Pin::new(&mut group).poll(&mut cx).is_pending());
    let a3 = a.clone();
    let thread_a = std::thread::spawn(move || {
        let _ = catch_unwind(AssertUnwindSafe(|| a3.wake()));
    });
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(Pin::new(&mut group).poll(&mut cx).is_pending());
    let before = parent.calls.load(Ordering::SeqCst);
    let scope = spawner.0.lock().unwrap().clone().unwrap();
    let _handle = scope.spawn(spawner.1.future().map_ok());
    go_tx.send(()).unwrap();
    thread_a.join().unwrap();
    assert!(
        parent.calls.load(Ordering::SeqCst) > before,
        "a task was spawned after the group's last poll, but the group's task was never woken: lost wake-up"
    );
}

trait MapOk: Future<Output = ()> + Sized {
    fn map_ok(self) -> impl Future<Output = Result<(), ()>> {
        async move {
            self.await;
            Ok(())
        }
    }
}
impl<F: Future<Output = ()>> MapOk for F {}

/// Contrast (holds): `Gather` keeps outputs in its slots, so an unfinished
/// child's and a stored output's panicking destructors are both caught.
#[test]
fn gather_drop_unfinished_child_and_stored_output_both_panic_is_fine() {
    isolated(
        "gather_drop_unfinished_child_and_stored_output_both_panic_is_fine",
        || {
            type Child = Pin<Box<dyn Future<Output = Bomb>>>;
            let done: Child = Box::pin(async { Bomb("stored output") });
            let pending: Child = Box::pin(PendingBomb(Bomb("unfinished child")));
            let mut g = awaitkit::gather(vec![done, pending]);
            assert!(
                Pin::new(&mut g)
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            let r = catch_unwind(AssertUnwindSafe(|| drop(g)));
            assert!(r.is_err());
        },
    );
}

// ---------------------------------------------------------------------------
// Residual instances of the same class after 26da223: two user destructors
// in one owner whose drop glue runs the second during the first's unwind.
// ---------------------------------------------------------------------------

/// A timer whose sleep panics when dropped.
#[derive(Clone, Copy, Debug, Default)]
struct BombTimer;
struct BombSleep;
impl Drop for BombSleep {
    fn drop(&mut self) {
        panic!("boom: timer sleep drop");
    }
}
impl Future for BombSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl awaitkit::Timer for BombTimer {
    type Sleep = BombSleep;
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn sleep_until(&self, _: std::time::Instant) -> BombSleep {
        BombSleep
    }
    fn reset(&self, _: Pin<&mut BombSleep>, _: std::time::Instant) {}
}

/// `Wait` with a deadline: its set (an unfinished child panics when dropped)
/// is dropped first, then the deadline's sleep (the timer's destructor
/// panics) during that unwind: abort.
#[test]
fn wait_drop_unfinished_child_and_timer_sleep_both_panic_does_not_abort() {
    isolated(
        "wait_drop_unfinished_child_and_timer_sleep_both_panic_does_not_abort",
        || {
            let mut w = awaitkit::wait(
                [PendingBomb(Bomb("unfinished child"))],
                awaitkit::ReturnWhen::AllCompleted,
            )
            .with_timer(BombTimer)
            .with_timeout(Duration::from_secs(60));
            assert!(
                Pin::new(&mut w)
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            let r = catch_unwind(AssertUnwindSafe(|| drop(w)));
            assert!(r.is_err());
        },
    );
}

/// A pending `Timeout`: its inner future and its timer's sleep both panic
/// when dropped (the two used to be dropped by the drop glue, the sleep
/// during the inner future's unwind: abort). Each is dropped on its own, and
/// the first panic propagates.
#[test]
fn timeout_drop_pending_inner_and_sleep_both_panic_does_not_abort() {
    isolated(
        "timeout_drop_pending_inner_and_sleep_both_panic_does_not_abort",
        || {
            let mut t = Box::pin(
                awaitkit::timeout(Duration::from_secs(60), PendingBomb(Bomb("pending inner")))
                    .with_timer(BombTimer),
            );
            assert!(
                t.as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()))
                    .is_pending()
            );
            let r = catch_unwind(AssertUnwindSafe(|| drop(t)));
            let payload = r.expect_err("the first panic propagates");
            assert_eq!(
                payload.downcast_ref::<String>().map(String::as_str),
                Some("boom: pending inner")
            );
        },
    );
}

/// A task waker (RawWaker) whose drop panics while `DROP_ARMED` is set.
static DROP_ARMED: AtomicBool = AtomicBool::new(false);
static DROP_VT: std::task::RawWakerVTable = std::task::RawWakerVTable::new(
    |d| std::task::RawWaker::new(d, &DROP_VT),
    |_| {
        if DROP_ARMED.load(Ordering::SeqCst) {
            panic!("boom: task waker drop");
        }
    },
    |_| {},
    |_| {
        if DROP_ARMED.load(Ordering::SeqCst) {
            panic!("boom: task waker drop");
        }
    },
);

/// A task group polled with a waker whose drop panics: the group keeps two
/// clones (its tasks engine's parent slot and its own `ParentOwner`).
/// `Core::drop` catches the engine's and resumes it; the `ParentOwner`'s is
/// then dropped by the field drop glue during that unwind: abort.
#[test]
fn task_group_drop_with_a_panicking_task_waker_drop_does_not_abort() {
    isolated(
        "task_group_drop_with_a_panicking_task_waker_drop_does_not_abort",
        || {
            // SAFETY: the vtable ignores the data pointer.
            let waker =
                unsafe { Waker::from_raw(std::task::RawWaker::new(std::ptr::null(), &DROP_VT)) };
            let never = Parked::default();
            let mut group = awaitkit::task_group(move |scope: awaitkit::TaskScope<'static, ()>| {
                drop(scope.spawn(never.future().map_ok()));
                std::future::pending::<Result<(), ()>>()
            });
            assert!(
                Pin::new(&mut group)
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            DROP_ARMED.store(true, Ordering::SeqCst);
            let r = catch_unwind(AssertUnwindSafe(|| drop(group)));
            DROP_ARMED.store(false, Ordering::SeqCst);
            assert!(r.is_err());
        },
    );
}
