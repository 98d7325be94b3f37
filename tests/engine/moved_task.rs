//! A set that moves to another task lets the old task's waker go once no
//! child's waker lives outside its poll (the engine's one-word sets
//! register the parent's waker lazily, only while a child's waker escaped;
//! a waker registered then would otherwise stay until the set is dropped,
//! keeping a task the set left alive).

use crate::common;

use awaitkit::{as_completed, gather, wait_any};
use common::{CountingWaker, poll_next_once, poll_once};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Parks a clone of its waker in `slot` at every poll (the escape that
/// makes the set register its task's waker); never finishes.
struct Parker(Arc<Mutex<Option<Waker>>>);

impl Future for Parker {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        *self.0.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Polls the set with `poll` under task 1 (a child's waker escapes: task
/// 1's waker is registered), drops the escaped clone without waking it,
/// then polls under task 2: task 1's waker must be let go (and task 2's is
/// not registered while nothing can wake it).
fn scenario<S>(name: &str, mut set: S, mut poll: impl FnMut(&mut S, &CountingWaker) -> bool)
where
    S: Unpin,
{
    let slot = SLOT.with(Clone::clone);
    let (task1, task2) = (CountingWaker::new(), CountingWaker::new());
    assert!(!poll(&mut set, &task1), "{name}: finished");
    assert_eq!(task1.live_clones(), 1, "{name}: task 1's waker registered");
    drop(slot.lock().unwrap().take());
    // A wake through a clone made earlier would have been recorded; none
    // lives now. Another poll (a spurious wake of task 2) polls nothing.
    assert!(!poll(&mut set, &task2), "{name}: finished");
    assert_eq!(
        task1.live_clones(),
        0,
        "{name}: the waker of the task the set left is still held"
    );
    assert_eq!(
        task2.live_clones(),
        0,
        "{name}: task 2's waker registered for nothing"
    );
    assert_eq!(task1.wakes() + task2.wakes(), 0, "{name}: woken");
    drop(set);
}

thread_local! {
    static SLOT: Arc<Mutex<Option<Waker>>> = Arc::default();
}

fn children(n: usize) -> impl Iterator<Item = Parker> {
    let slot = SLOT.with(Clone::clone);
    // (No exact size: the engine, not the small block.)
    (0..n).map(move |_| Parker(slot.clone())).filter(|_| true)
}

#[test]
fn every_one_word_engine_user_lets_a_left_tasks_waker_go() {
    for n in [1, 2, 63] {
        scenario(&format!("gather {n}"), gather(children(n)), |s, w| {
            poll_once(s, w).is_ready()
        });
        scenario(
            &format!("as_completed {n}"),
            as_completed(children(n)),
            |s, w| poll_next_once(s, w).is_ready(),
        );
        scenario(&format!("wait_any {n}"), wait_any(children(n)), |s, w| {
            poll_once(s, w).is_ready()
        });
    }
}

/// The let-go task waker's `drop` panics: the panic propagates out of that
/// poll, the waker is dropped once (not again at the next poll or the set's
/// drop), and the gather is poisoned as after any panic out of its poll.
#[test]
fn a_let_go_waker_whose_drop_panics() {
    use std::cell::Cell;
    use std::task::{RawWaker, RawWakerVTable};
    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }
    static VT: RawWakerVTable = RawWakerVTable::new(
        |d| {
            LIVE.with(|l| l.set(l.get() + 1));
            RawWaker::new(d, &VT)
        },
        |_| {},
        |_| {},
        |_| {
            LIVE.with(|l| l.set(l.get() - 1));
            if ARMED.with(|a| a.replace(false)) {
                panic!("injected: task waker drop");
            }
        },
    );
    common::quiet();
    let slot = SLOT.with(Clone::clone);
    for n in [1, 5, 63] {
        // SAFETY: the vtable ignores the data pointer and counts clones
        // and drops (the original is dropped too: counted from -1).
        let task1 = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) };
        LIVE.with(|l| l.set(1));
        let task2 = CountingWaker::new();
        let mut set = gather(children(n));
        fn pending<S: Future + Unpin>(set: &mut S, waker: &Waker) -> bool {
            Pin::new(set)
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        }
        assert!(pending(&mut set, &task1));
        assert_eq!(LIVE.with(Cell::get), 2, "n = {n}: task 1 registered");
        drop(slot.lock().unwrap().take());
        ARMED.with(|a| a.set(true));
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pending(&mut set, task2.waker())
        }));
        let message = common::panic_message(&*out.expect_err("the drop's panic propagates"));
        assert!(message.contains("injected: task waker drop"), "{message}");
        assert_eq!(LIVE.with(Cell::get), 1, "n = {n}: let go once");
        // A gather whose poll panicked is poisoned (its rule for every
        // panic out of a poll): a clear panic again, nothing dropped twice.
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pending(&mut set, task2.waker())
        }));
        let message = common::panic_message(&*again.expect_err("poisoned"));
        assert!(message.contains("polled after a panic"), "{message}");
        drop(set);
        drop(task1);
        assert_eq!(LIVE.with(Cell::get), 0, "n = {n}: every clone dropped once");
        assert_eq!(task2.live_clones(), 0);
    }
}
