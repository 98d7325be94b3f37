//! Break-it review of 25679f2: `Timeout`'s `PinnedDrop`, `with_timer`,
//! `into_inner`. Each scenario runs in a child process (an abort fails it).
//!
//! 7 of 20 failed there: `with_timer` and `into_inner` leaked the inner
//! future (and the new timer) when the old timer's or sleep's destructor
//! panicked (a value being returned is not dropped when a destructor in
//! the same scope panics, rust-lang/rust#47949; a permit held by the inner
//! future was lost for good); a timeout without a deadline whose leftover
//! sleep panicked on drop never kept the task's waker, so a later `reset`
//! woke nobody (older than 25679f2). A scenario expecting `is_terminated`
//! after a lost result now checks the crate's rule (never before the
//! output was returned).

#[macro_use]
mod common;

use awaitkit::Timer;
use common::child::expect_panic;
use futures::future::FusedFuture;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

/// Every user value dropped: (name, thread panicking at the time).
static DROPS: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

fn note(name: &str) {
    let p = std::thread::panicking();
    if p {
        eprintln!("REVIEW: {name} dropped while panicking");
    }
    DROPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_string(), p));
}
fn drops_of(name: &str) -> usize {
    DROPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n == name)
        .count()
}
fn dropped_panicking() -> Vec<String> {
    DROPS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| *p)
        .map(|(n, _)| n.clone())
        .collect()
}
fn quiet() {
    std::panic::set_hook(Box::new(|info| {
        let p = info.payload();
        let m = p
            .downcast_ref::<String>()
            .cloned()
            .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let injected = [
            "inner drop",
            "sleep drop",
            "timer drop",
            "old drop",
            "new drop",
            "out drop",
            "waker drop",
            "first",
            "`Timeout` polled after a panic in one of its futures",
            "`Timeout` polled after completion",
        ];
        if !injected.contains(&m.as_str()) {
            eprintln!("REVIEW-panic: {}", info.to_string().replace('\n', " | "));
        }
    }));
}

/// Inner future: pending `pending` polls, then ready with `()`.
struct Inner {
    name: &'static str,
    pending: usize,
    panic: bool,
}
impl Unpin for Inner {}
impl Future for Inner {
    type Output = Out;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Out> {
        if self.pending == 0 {
            return Poll::Ready(Out("output", false));
        }
        self.pending -= 1;
        Poll::Pending
    }
}
impl Drop for Inner {
    fn drop(&mut self) {
        note(self.name);
        if self.panic {
            panic!("{} drop", self.name);
        }
    }
}
fn inner(pending: usize, panic: bool) -> Inner {
    Inner {
        name: "inner",
        pending,
        panic,
    }
}

#[derive(Debug)]
struct Out(&'static str, bool);
impl Drop for Out {
    fn drop(&mut self) {
        note(self.0);
        if self.1 {
            panic!("{} drop", self.0);
        }
    }
}

struct PTimer {
    name: &'static str,
    panic: bool,
    sleep_panics: bool,
}
struct PSleep {
    at: Instant,
    panic: bool,
}
impl Future for PSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
impl Drop for PSleep {
    fn drop(&mut self) {
        note("sleep");
        if self.panic {
            panic!("sleep drop");
        }
    }
}
impl Drop for PTimer {
    fn drop(&mut self) {
        note(self.name);
        if self.panic {
            panic!("{} drop", self.name);
        }
    }
}
impl Timer for PTimer {
    type Sleep = PSleep;
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, at: Instant) -> PSleep {
        PSleep {
            at,
            panic: self.sleep_panics,
        }
    }
    fn reset(&self, mut s: Pin<&mut PSleep>, at: Instant) {
        s.at = at;
    }
}
fn ptimer(name: &'static str, panic: bool, sleep_panics: bool) -> PTimer {
    PTimer {
        name,
        panic,
        sleep_panics,
    }
}

/// Waker counting clones, drops and wakes; its drop panics while armed.
static W_CLONES: AtomicUsize = AtomicUsize::new(0);
static W_DROPS: AtomicUsize = AtomicUsize::new(0);
static W_WAKES: AtomicUsize = AtomicUsize::new(0);
static W_DROP_PANICS: AtomicBool = AtomicBool::new(false);
static VT: RawWakerVTable = RawWakerVTable::new(
    |_| {
        W_CLONES.fetch_add(1, SeqCst);
        RawWaker::new(std::ptr::null(), &VT)
    },
    |_| {
        W_WAKES.fetch_add(1, SeqCst);
        W_DROPS.fetch_add(1, SeqCst);
    },
    |_| {
        W_WAKES.fetch_add(1, SeqCst);
    },
    |_| {
        W_DROPS.fetch_add(1, SeqCst);
        if std::thread::panicking() {
            eprintln!("REVIEW: waker dropped while panicking");
        }
        if W_DROP_PANICS.load(SeqCst) {
            panic!("waker drop");
        }
    },
);
fn cwaker() -> Waker {
    // SAFETY: the vtable ignores the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) }
}

fn poll<F: Future>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(w))
}

// ---------------------------------------------------------------- drop

scenario!(t01_drop_before_poll_inner_and_timer_panic, {
    quiet();
    let t = awaitkit::timeout(Duration::from_secs(60), inner(9, true))
        .with_timer(ptimer("timer", true, true));
    let m = expect_panic(|| drop(t));
    assert_eq!(m, "inner drop");
    assert_eq!(
        (drops_of("inner"), drops_of("timer"), drops_of("sleep")),
        (1, 1, 0)
    );
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(t02_drop_pending_inner_sleep_timer_all_panic, {
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(60), inner(9, true))
            .with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), Waker::noop()).is_pending());
    let m = expect_panic(|| drop(t));
    assert_eq!(m, "inner drop");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (1, 1, 1)
    );
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(t03_drop_pending_no_deadline_idle_waker_panics_too, {
    quiet();
    let w = cwaker();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::MAX, inner(9, true)).with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), &w).is_pending());
    assert_eq!(W_CLONES.load(SeqCst), 1, "idle waker kept");
    W_DROP_PANICS.store(true, SeqCst);
    let before = W_DROPS.load(SeqCst);
    let m = expect_panic(|| drop(t));
    W_DROP_PANICS.store(false, SeqCst);
    assert_eq!(m, "inner drop");
    assert_eq!(W_DROPS.load(SeqCst) - before, 1, "kept waker dropped once");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (1, 0, 1)
    );
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(t04_drop_pending_only_waker_panics, {
    quiet();
    let w = cwaker();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::MAX, inner(9, false)).with_timer(ptimer("timer", false, false)),
    );
    assert!(poll(t.as_mut(), &w).is_pending());
    W_DROP_PANICS.store(true, SeqCst);
    let m = expect_panic(|| drop(t));
    W_DROP_PANICS.store(false, SeqCst);
    assert_eq!(m, "waker drop");
    assert_eq!((drops_of("inner"), drops_of("timer")), (1, 1));
});

scenario!(t05_drop_after_ready_sleep_and_timer_panic, {
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(60), inner(1, false))
            .with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), Waker::noop()).is_pending());
    let out = match poll(t.as_mut(), Waker::noop()) {
        Poll::Ready(Ok(o)) => o,
        other => panic!("expected Ready(Ok), got {other:?}"),
    };
    assert_eq!(drops_of("inner"), 1);
    assert!(t.is_terminated());
    let m = expect_panic(|| drop(t));
    assert_eq!(m, "sleep drop");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (1, 1, 1)
    );
    drop(out);
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(t06_elapsed_inner_and_sleep_panic_then_drop_timer_panics, {
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_millis(1), inner(99, true))
            .with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), Waker::noop()).is_pending());
    std::thread::sleep(Duration::from_millis(5));
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    assert_eq!(m, "inner drop");
    assert!(t.expired());
    assert_eq!((drops_of("inner"), drops_of("sleep")), (1, 1));
    // lost result: the next poll refuses "after a panic"
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    assert!(m.contains("after a panic"), "{m}");
    let m = expect_panic(|| drop(t));
    assert_eq!(m, "timer drop");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (1, 1, 1)
    );
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(t07_fused_is_terminated_after_result_lost, {
    // The inner future was ready but its destructor panicked: the result
    // is lost and polling again panics, loudly. The crate's rule:
    // is_terminated turns true once the future returned its output, never before (src/lib.rs);
    // a `select!` that polls it again gets that panic, not a made-up value.
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(60), inner(0, true))
            .with_timer(ptimer("timer", false, false)),
    );
    let _ = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    let term = t.is_terminated();
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    assert!(m.contains("after a panic"), "{m}");
    assert!(!term, "terminated without returning an output ({m})");
});

scenario!(t08_poll_during_unwind_elapsed_inner_drop_panics, {
    quiet();
    struct PollOnDrop(Option<Pin<Box<awaitkit::Timeout<Inner, PTimer>>>>);
    impl Drop for PollOnDrop {
        fn drop(&mut self) {
            let mut t = self.0.take().unwrap();
            let r = poll(t.as_mut(), Waker::noop());
            assert!(matches!(r, Poll::Ready(Err(_))), "{r:?}");
            assert!(t.is_terminated());
            drop(t);
        }
    }
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_millis(1), inner(99, true))
            .with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), Waker::noop()).is_pending());
    std::thread::sleep(Duration::from_millis(5));
    let m = expect_panic(|| {
        let _g = PollOnDrop(Some(t));
        panic!("first");
    });
    assert_eq!(m, "first");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (1, 1, 1)
    );
});

scenario!(t09_drop_during_unwind_everything_panics_no_abort, {
    quiet();
    let w = cwaker();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::MAX, inner(9, true)).with_timer(ptimer("timer", true, true)),
    );
    assert!(poll(t.as_mut(), &w).is_pending());
    W_DROP_PANICS.store(true, SeqCst);
    let m = expect_panic(|| {
        let _t = t;
        panic!("first");
    });
    W_DROP_PANICS.store(false, SeqCst);
    assert_eq!(m, "first");
    assert_eq!((drops_of("inner"), drops_of("timer")), (1, 1));
});

// ------------------------------------------------------- with_timer / into_inner

scenario!(t10_with_timer_old_timer_drop_panics, {
    // The old timer's destructor panics inside `with_timer`: the panic
    // propagates, so the inner future must be dropped, once, and not
    // during that panic's unwind (the crate holds it and could drop it
    // first); the new timer likewise.
    quiet();
    let t = awaitkit::timeout(Duration::from_secs(60), inner(9, false))
        .with_timer(ptimer("old", true, false));
    let m = expect_panic(|| {
        let _t2 = t.with_timer(ptimer("new", false, false));
    });
    assert_eq!(m, "old drop");
    assert_eq!(
        (drops_of("inner"), drops_of("old"), drops_of("new")),
        (1, 1, 1)
    );
    assert!(
        dropped_panicking().is_empty(),
        "dropped during the unwind: {:?}",
        dropped_panicking()
    );
});

scenario!(
    t11_with_timer_after_poll_old_sleep_drop_panics_inner_panics_too,
    {
        quiet();
        let mut t = Box::pin(
            awaitkit::timeout(Duration::from_secs(60), inner(9, true))
                .with_timer(ptimer("old", false, true)),
        );
        assert!(poll(t.as_mut(), Waker::noop()).is_pending());
        let t = *Pin::into_inner(t);
        let m = expect_panic(|| {
            let _t2 = t.with_timer(ptimer("new", false, false));
        });
        assert_eq!(m, "sleep drop");
        assert_eq!(
            (
                drops_of("inner"),
                drops_of("sleep"),
                drops_of("old"),
                drops_of("new")
            ),
            (1, 1, 1, 1)
        );
        assert!(
            dropped_panicking().is_empty(),
            "dropped during the unwind: {:?}",
            dropped_panicking()
        );
    }
);

scenario!(t12_with_timer_ok_then_drop_counts, {
    quiet();
    let t = awaitkit::timeout(Duration::from_secs(60), inner(9, false))
        .with_timer(ptimer("old", false, false));
    let t2 = t.with_timer(ptimer("new", true, false));
    assert_eq!(
        (drops_of("inner"), drops_of("old"), drops_of("new")),
        (0, 1, 0)
    );
    let m = expect_panic(|| drop(t2));
    assert_eq!(m, "new drop");
    assert_eq!(
        (drops_of("inner"), drops_of("old"), drops_of("new")),
        (1, 1, 1)
    );
});

scenario!(t13_into_inner_timer_drop_panics, {
    // The timer's destructor panics in `into_inner`: the inner future is
    // either handed back or dropped once outside the unwind.
    quiet();
    let t = awaitkit::timeout(Duration::from_secs(60), inner(9, false))
        .with_timer(ptimer("timer", true, false));
    let m = expect_panic(|| {
        let _f = t.into_inner();
    });
    assert_eq!(m, "timer drop");
    assert_eq!((drops_of("inner"), drops_of("timer")), (1, 1));
    assert!(
        dropped_panicking().is_empty(),
        "dropped during the unwind: {:?}",
        dropped_panicking()
    );
});

scenario!(t14_into_inner_after_poll_idle_waker_and_timer_panic, {
    quiet();
    let w = cwaker();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::MAX, inner(9, true)).with_timer(ptimer("timer", true, false)),
    );
    assert!(poll(t.as_mut(), &w).is_pending());
    let t = *Pin::into_inner(t);
    W_DROP_PANICS.store(true, SeqCst);
    let before = W_DROPS.load(SeqCst);
    let m = expect_panic(|| {
        let _f = t.into_inner();
    });
    W_DROP_PANICS.store(false, SeqCst);
    assert_eq!(m, "timer drop");
    assert_eq!(W_DROPS.load(SeqCst) - before, 1);
    assert_eq!((drops_of("inner"), drops_of("timer")), (1, 1));
    assert!(
        dropped_panicking().is_empty(),
        "dropped during the unwind: {:?}",
        dropped_panicking()
    );
});

scenario!(t15_into_inner_no_panic_returns_inner_once, {
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(60), inner(9, false))
            .with_timer(ptimer("timer", false, false)),
    );
    assert!(poll(t.as_mut(), Waker::noop()).is_pending());
    let f = (*Pin::into_inner(t)).into_inner().expect("still running");
    assert_eq!(
        (drops_of("inner"), drops_of("sleep"), drops_of("timer")),
        (0, 1, 1)
    );
    drop(f);
    assert_eq!(drops_of("inner"), 1);
});

// ------------------------------------------------------- reset / clear_deadline

scenario!(
    t16_clear_deadline_then_poll_sleep_drop_panics_reset_still_wakes,
    {
        // clear_deadline, then a poll drops the sleep (its drop panics): the
        // poll propagates it. A later reset must still wake the task (the
        // waker of that poll must be kept as `idle`), else the deadline never
        // fires unless something else polls.
        quiet();
        let w = cwaker();
        let mut t = Box::pin(
            awaitkit::timeout(Duration::from_secs(60), inner(99, false))
                .with_timer(ptimer("timer", false, true)),
        );
        assert!(poll(t.as_mut(), &w).is_pending());
        t.as_mut().clear_deadline();
        let m = expect_panic(|| {
            let _ = poll(t.as_mut(), &w);
        });
        assert_eq!(m, "sleep drop");
        assert_eq!(drops_of("sleep"), 1);
        let wakes = W_WAKES.load(SeqCst);
        t.as_mut().reset(Instant::now() + Duration::from_millis(1));
        assert!(
            W_WAKES.load(SeqCst) > wakes,
            "reset after the sleep-drop panic woke nobody: no sleep, no kept waker (lost wake-up)"
        );
    }
);

scenario!(t17_clear_deadline_idle_waker_replaced_drop_panics, {
    // No deadline: a poll with another waker replaces the kept one, whose
    // drop panics: the poll propagates; the new waker is kept, the old
    // dropped once; reset wakes the new one.
    quiet();
    let w = cwaker();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::MAX, inner(99, false))
            .with_timer(ptimer("timer", false, false)),
    );
    assert!(poll(t.as_mut(), &w).is_pending());
    W_DROP_PANICS.store(true, SeqCst);
    let d0 = W_DROPS.load(SeqCst);
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    W_DROP_PANICS.store(false, SeqCst);
    assert_eq!(m, "waker drop");
    assert_eq!(W_DROPS.load(SeqCst) - d0, 1);
    // kept one is now the noop: reset must not wake the old (dropped) one
    let wakes = W_WAKES.load(SeqCst);
    t.as_mut().reset(Instant::now());
    assert_eq!(W_WAKES.load(SeqCst), wakes);
    assert!(matches!(
        poll(t.as_mut(), Waker::noop()),
        Poll::Ready(Err(_))
    ));
    drop(t);
    assert_eq!((drops_of("inner"), drops_of("timer")), (1, 1));
});

scenario!(t18_poll_after_completion_message, {
    quiet();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(1), inner(0, false))
            .with_timer(ptimer("timer", false, false)),
    );
    assert!(matches!(
        poll(t.as_mut(), Waker::noop()),
        Poll::Ready(Ok(_))
    ));
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    assert!(m.contains("after completion"), "{m}");
});

scenario!(t19_ready_output_and_inner_drop_both_panic, {
    // Inner ready; its drop panics; the output (dropped by output_lost)
    // panics too: no abort, output dropped once and not during the unwind.
    quiet();
    // The second field is held for its destructor (it panics).
    struct R(Option<Out>, #[allow(dead_code)] Inner);
    impl Unpin for R {}
    impl Future for R {
        type Output = Out;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Out> {
            Poll::Ready(self.0.take().unwrap())
        }
    }
    let mut t = Box::pin(
        awaitkit::timeout(
            Duration::from_secs(1),
            R(Some(Out("out", true)), inner(0, true)),
        )
        .with_timer(ptimer("timer", true, false)),
    );
    let m = expect_panic(|| {
        let _ = poll(t.as_mut(), Waker::noop());
    });
    assert_eq!(m, "inner drop");
    assert_eq!((drops_of("inner"), drops_of("out")), (1, 1));
    let m = expect_panic(|| drop(t));
    assert_eq!(m, "timer drop");
    assert!(dropped_panicking().is_empty(), "{:?}", dropped_panicking());
});

scenario!(
    t20_with_timer_old_timer_panic_leaks_inner_semaphore_permit,
    {
        // Consequence of t10: the inner future holds a semaphore permit; the old
        // timer's drop panics in `with_timer`: the inner future is never dropped,
        // the permit never comes back.
        quiet();
        let sem = std::sync::Arc::new(awaitkit::Semaphore::new(1));
        let s2 = sem.clone();
        let fut = async move {
            let _p = s2.acquire().await;
            std::future::pending::<()>().await
        };
        let mut t = Box::pin(
            awaitkit::timeout(Duration::from_secs(60), Box::pin(fut))
                .with_timer(ptimer("old", true, false)),
        );
        assert!(poll(t.as_mut(), Waker::noop()).is_pending());
        assert_eq!(sem.available_permits(), 0);
        let t = *Pin::into_inner(t);
        let m = expect_panic(|| {
            let _t2 = t.with_timer(ptimer("new", false, false));
        });
        assert_eq!(m, "old drop");
        assert_eq!(
            sem.available_permits(),
            1,
            "permit leaked: the inner future was never dropped"
        );
    }
);
