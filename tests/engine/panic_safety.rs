//! Panics while polling or dropping children: every combinator stays
//! consistent. Futures refuse to be polled again after a panic unwound
//! through them (like an `async fn`), instead of making up a result; the
//! `AsCompleted` stream stays usable. (Regressions found in review.)

use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Ready on its first poll; its destructor panics the first time it runs.
struct ReadyThenPanicOnDrop {
    drops: Rc<Cell<usize>>,
}

impl Future for ReadyThenPanicOnDrop {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
        Poll::Ready(7)
    }
}

impl Drop for ReadyThenPanicOnDrop {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
        if self.drops.get() == 1 {
            panic!("drop panics");
        }
    }
}

/// Pending forever; its destructor panics.
struct PendingPanicOnDrop;

impl Future for PendingPanicOnDrop {
    type Output = Result<u32, &'static str>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for PendingPanicOnDrop {
    fn drop(&mut self) {
        panic!("drop panics");
    }
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn panic_message(err: &(dyn std::any::Any + Send)) -> String {
    err.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn a_destructor_panic_at_completion_keeps_as_completed_counting_right() {
    let drops = Rc::new(Cell::new(0));
    let mut set = awaitkit::as_completed(vec![ReadyThenPanicOnDrop {
        drops: drops.clone(),
    }]);
    let err = catch_unwind(AssertUnwindSafe(|| set.poll_next_indexed(&mut cx()))).unwrap_err();
    assert_eq!(panic_message(&*err), "drop panics");
    assert_eq!(drops.get(), 1, "dropped exactly once");
    assert_eq!(set.len(), 0, "the finished child is no longer counted");
    assert_eq!(
        set.poll_next_indexed(&mut cx()),
        Poll::Ready(None),
        "the stream ends instead of hanging"
    );
}

#[test]
fn gather_refuses_to_make_up_a_result_after_a_destructor_panic() {
    let drops = Rc::new(Cell::new(0));
    let mut all = awaitkit::gather(vec![ReadyThenPanicOnDrop {
        drops: drops.clone(),
    }]);
    assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut all).poll(&mut cx()))).is_err());
    let err = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut all).poll(&mut cx()))).unwrap_err();
    assert!(
        panic_message(&*err).contains("polled after a panic"),
        "{}",
        panic_message(&*err)
    );
    drop(all);
    assert_eq!(drops.get(), 1);
}

#[test]
fn try_gather_never_resolves_ok_after_its_fail_fast_drop_panicked() {
    enum Child {
        Stuck(PendingPanicOnDrop),
        Fails(std::future::Ready<Result<u32, &'static str>>),
    }
    impl Future for Child {
        type Output = Result<u32, &'static str>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.get_mut() {
                Child::Stuck(p) => Pin::new(p).poll(cx),
                Child::Fails(r) => Pin::new(r).poll(cx),
            }
        }
    }
    let mut all = awaitkit::try_gather(vec![
        Child::Stuck(PendingPanicOnDrop),
        Child::Fails(std::future::ready(Err("boom"))),
    ]);
    assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut all).poll(&mut cx()))).is_err());
    let again = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut all).poll(&mut cx())));
    assert!(again.is_err(), "a second poll must panic, not resolve");
}

#[test]
fn gather_macro_refuses_to_hang_after_a_sibling_panicked_in_poll() {
    let polled = Rc::new(Cell::new(0));
    let first = Rc::new(Cell::new(true));
    let f = first.clone();
    let a = std::future::poll_fn(move |_| {
        assert!(!f.replace(false), "first poll panics");
        Poll::Ready(1)
    });
    let p = polled.clone();
    let b = std::future::poll_fn(move |_| {
        p.set(p.get() + 1);
        Poll::Ready(2)
    });
    let mut g = awaitkit::gather!(a, b);
    assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut g).poll(&mut cx()))).is_err());
    let err = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut g).poll(&mut cx()))).unwrap_err();
    assert!(
        panic_message(&*err).contains("polled after a panic"),
        "{}",
        panic_message(&*err)
    );
}

#[test]
fn gather_macro_drops_a_child_whose_destructor_panics_exactly_once() {
    let drops = Rc::new(Cell::new(0));
    let mut g = awaitkit::gather!(
        ReadyThenPanicOnDrop {
            drops: drops.clone()
        },
        std::future::pending::<()>()
    );
    assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut g).poll(&mut cx()))).is_err());
    drop(g);
    assert_eq!(drops.get(), 1);
}

#[test]
fn wait_refuses_to_be_polled_after_a_child_panicked() {
    let mut w = awaitkit::wait(
        [std::future::poll_fn(|_| -> Poll<u8> {
            panic!("child panics")
        })],
        awaitkit::ReturnWhen::AllCompleted,
    );
    assert!(catch_unwind(AssertUnwindSafe(|| Pin::new(&mut w).poll(&mut cx()))).is_err());
    let err = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut w).poll(&mut cx()))).unwrap_err();
    assert!(
        panic_message(&*err).contains("polled after a panic"),
        "{}",
        panic_message(&*err)
    );
}
