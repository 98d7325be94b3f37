#![cfg(feature = "test-util")]
//! Adversarial review (third round): user values that a future, stream or
//! guard holds *besides its children* (collected outputs, a fail-fast error
//! held in a local, a retry's closures, a held stream item, the inner
//! stream, a finished child's output) dropped during the unwind of another
//! user destructor's panic.
//!
//! lib.rs, "Panic safety": "When destructors panic, every other child is
//! still dropped (all of them, even if several panic, as a Vec's elements
//! are), and then the first panic propagates. The others are not dropped
//! during that panic's unwind: to them `std::thread::panicking()` is
//! `false` ... One known limit: a pending Timeout whose inner future and
//! whose timer's sleep both panic when dropped aborts the process." (That
//! limit was lifted later: `tests/nested_panics.rs`.)
//!
//! The section comments below describe each bug as the review found it
//! (on dbadf29); every scenario passes since the fix.
//!
//! Every scenario runs in a child process (this test binary re-executed
//! with `--exact <name>` and `AWAITKIT_TEST_CHILD` set): a process abort
//! (SIGABRT) fails the parent test with the child's stderr tail.

#[macro_use]
mod common;

use common::child::{Kid, expect_panic, panicking_waker, payload_text, pending_bomb, ready_kid};

use futures_core::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Drops of every `Probe` (each scenario runs alone in its own process).
static DROPS: AtomicUsize = AtomicUsize::new(0);
/// Drops of a `Probe` that saw `std::thread::panicking() == true`.
static DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);

/// A user value: counts its drop, records whether it ran during an unwind,
/// panics when dropped if `explode`.
#[derive(Debug)]
struct Probe {
    name: &'static str,
    explode: bool,
}

impl Probe {
    fn quiet(name: &'static str) -> Self {
        Probe {
            name,
            explode: false,
        }
    }
    fn bomb(name: &'static str) -> Self {
        Probe {
            name,
            explode: true,
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if std::thread::panicking() {
            DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
            eprintln!("REVIEW: probe `{}` dropped during the unwind", self.name);
        }
        if self.explode {
            panic!("probe `{}` destructor", self.name);
        }
    }
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// The checks (b) and (c) after a scenario.
fn assert_probes(expected_drops: usize) {
    assert_eq!(
        DROPS_WHILE_PANICKING.load(Ordering::SeqCst),
        0,
        "a user value was dropped during the unwind of another destructor's panic \
         (lib.rs: \"The others are not dropped during that panic's unwind: to them \
         `std::thread::panicking()` is `false`\")"
    );
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        expected_drops,
        "every user value is dropped exactly once"
    );
}

// ---------------------------------------------------------------------------
// try_gather (Vec): the fail-fast error is held in a local while the
// siblings are dropped (`pass.engine().clear(); return Err(e)`).
// ---------------------------------------------------------------------------

// A sibling's destructor panics during fail-fast; the error's destructor
// panics too: the error was dropped during the sibling's unwind -> abort.
scenario!(
    try_gather_fail_fast_error_and_sibling_both_panic_no_abort,
    {
        let kids: Vec<Kid<Result<(), Probe>>> =
            vec![pending_bomb(), ready_kid(Err(Probe::bomb("error")))];
        let mut all = awaitkit::try_gather(kids);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut all);
        });
        assert_eq!(msg, "child destructor", "the first panic propagates");
        drop(all);
        assert_probes(1);
    }
);

// The same without a second panic: the error must not see
// `thread::panicking()`.
scenario!(
    try_gather_fail_fast_error_not_dropped_during_sibling_unwind,
    {
        let kids: Vec<Kid<Result<(), Probe>>> =
            vec![pending_bomb(), ready_kid(Err(Probe::quiet("error")))];
        let mut all = awaitkit::try_gather(kids);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut all);
        });
        assert_eq!(msg, "child destructor");
        drop(all);
        assert_probes(1);
    }
);

// ---------------------------------------------------------------------------
// try_gather! (tuple): the same fail-fast shape (`self.drop_slots();
// return Poll::Ready(Err(e))` in src/engine/tuple.rs).
// ---------------------------------------------------------------------------

scenario!(
    try_gather_tuple_fail_fast_error_and_sibling_both_panic_no_abort,
    {
        let a: Kid<Result<u8, Probe>> = pending_bomb();
        let b: Kid<Result<u16, Probe>> = ready_kid(Err(Probe::bomb("error")));
        let mut both = awaitkit::try_gather!(a, b);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut both);
        });
        assert_eq!(msg, "child destructor", "the first panic propagates");
        drop(both);
        assert_probes(1);
    }
);

scenario!(
    try_gather_tuple_fail_fast_error_not_dropped_during_sibling_unwind,
    {
        let a: Kid<Result<u8, Probe>> = pending_bomb();
        let b: Kid<Result<u16, Probe>> = ready_kid(Err(Probe::quiet("error")));
        let mut both = awaitkit::try_gather!(a, b);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut both);
        });
        assert_eq!(msg, "child destructor");
        drop(both);
        assert_probes(1);
    }
);

// ---------------------------------------------------------------------------
// Wait: no Drop impl; `set` (children) is dropped before `done` (collected
// outputs, a DropEach) and `deadline` by the drop glue.
// ---------------------------------------------------------------------------

scenario!(
    wait_drop_collected_output_not_dropped_during_child_unwind,
    {
        let kids: Vec<Kid<Probe>> = vec![pending_bomb(), ready_kid(Probe::quiet("output"))];
        let mut w = awaitkit::wait(kids, awaitkit::ReturnWhen::AllCompleted);
        assert!(poll_once(&mut w).is_pending(), "child 0 is still pending");
        let msg = expect_panic(move || drop(w));
        assert_eq!(msg, "child destructor");
        assert_probes(1);
    }
);

// Both panic: `DropEach` discards the second during the unwind (no abort),
// but the output still runs its destructor during the first's unwind.
scenario!(wait_drop_collected_output_and_child_both_panic, {
    let kids: Vec<Kid<Probe>> = vec![pending_bomb(), ready_kid(Probe::bomb("output"))];
    let mut w = awaitkit::wait(kids, awaitkit::ReturnWhen::AllCompleted);
    assert!(poll_once(&mut w).is_pending());
    let msg = expect_panic(move || drop(w));
    assert_eq!(msg, "child destructor");
    assert_probes(1);
});

// ---------------------------------------------------------------------------
// Retry: no Drop impl. Fields drop in declaration order: `operation`,
// `policy`, `retry_if`, `on_retry`, `deadline`, `attempt`, ... `grant`,
// `last`.
// ---------------------------------------------------------------------------

// The operation closure's capture panics when dropped; the running attempt
// panics when dropped too: the attempt is dropped during the capture's
// unwind -> abort.
scenario!(
    retry_drop_operation_capture_and_pending_attempt_both_panic_no_abort,
    {
        let capture = Probe::bomb("operation capture");
        let mut r = awaitkit::RetryPolicy::new(3).retry(move || {
            let _keep = &capture;
            pending_bomb::<Result<(), ()>>()
        });
        assert!(poll_once(&mut r).is_pending(), "the attempt runs");
        let msg = expect_panic(move || drop(r));
        // The attempt is dropped first, then the operation (each on its
        // own): the attempt's panic is the first.
        assert_eq!(msg, "child destructor", "the first panic propagates");
        assert_probes(1);
    }
);

// The operation's capture panics; the predicate's and the hook's captures
// are dropped during that unwind.
scenario!(
    retry_drop_predicate_capture_not_dropped_during_operation_capture_unwind,
    {
        let capture = Probe::bomb("operation capture");
        let pred = Probe::quiet("retry_if capture");
        let hook = Probe::quiet("on_retry capture");
        let mut r = awaitkit::RetryPolicy::new(3)
            .retry(move || {
                let _keep = &capture;
                Kid::<Result<(), ()>> {
                    out: None,
                    panic_on_drop: false,
                }
            })
            .retry_if(move |_: &()| {
                let _keep = &pred;
                true
            })
            .on_retry(move |_: &awaitkit::RetryEvent<'_, ()>| {
                let _keep = &hook;
            });
        assert!(poll_once(&mut r).is_pending());
        let msg = expect_panic(move || drop(r));
        assert_eq!(msg, "probe `operation capture` destructor");
        assert_probes(3);
    }
);

// `retry_if` panics while the failed attempt's error is held in the local
// `failure` of `after_failure`: the error is dropped during the predicate's
// unwind; an error whose destructor panics aborts the process.
scenario!(retry_predicate_panic_with_panicking_error_no_abort, {
    let mut r = awaitkit::RetryPolicy::new(3)
        .retry(|| ready_kid(Err::<(), Probe>(Probe::bomb("error"))))
        .retry_if(|_: &Probe| panic!("retry_if predicate"));
    let msg = expect_panic(|| {
        let _ = poll_once(&mut r);
    });
    assert_eq!(msg, "retry_if predicate", "the first panic propagates");
    drop(r);
    assert_probes(1);
});

scenario!(retry_predicate_panic_error_not_dropped_during_unwind, {
    let mut r = awaitkit::RetryPolicy::new(3)
        .retry(|| ready_kid(Err::<(), Probe>(Probe::quiet("error"))))
        .retry_if(|_: &Probe| panic!("retry_if predicate"));
    let msg = expect_panic(|| {
        let _ = poll_once(&mut r);
    });
    assert_eq!(msg, "retry_if predicate");
    drop(r);
    assert_probes(1);
});

// The same through the `on_retry` hook (it borrows `failure`).
scenario!(retry_hook_panic_with_panicking_error_no_abort, {
    let mut r = awaitkit::RetryPolicy::new(3)
        .retry(|| ready_kid(Err::<(), Probe>(Probe::bomb("error"))))
        .on_retry(|_: &awaitkit::RetryEvent<'_, Probe>| panic!("on_retry hook"));
    let msg = expect_panic(|| {
        let _ = poll_once(&mut r);
    });
    assert_eq!(msg, "on_retry hook", "the first panic propagates");
    drop(r);
    assert_probes(1);
});

// ---------------------------------------------------------------------------
// RateLimitedStream: no Drop impl; `held` (the item waiting for its grant)
// is dropped before the inner `stream` by the drop glue.
// ---------------------------------------------------------------------------

/// A stream of `Probe`s (the first `bombs` of which panic when dropped)
/// that itself panics when dropped if `panic_on_drop`, and holds a probe.
struct ProbeStream {
    next: usize,
    bombs: usize,
    panic_on_drop: bool,
    _own: Option<Probe>,
}

impl Stream for ProbeStream {
    type Item = Probe;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Probe>> {
        let i = self.next;
        self.next += 1;
        Poll::Ready(Some(Probe {
            name: "item",
            explode: i < self.bombs,
        }))
    }
}

impl Drop for ProbeStream {
    fn drop(&mut self) {
        if self.panic_on_drop {
            panic!("inner stream destructor");
        }
    }
}

fn poll_next_once<S: Stream + Unpin>(s: &mut S) -> Poll<Option<S::Item>> {
    Pin::new(s).poll_next(&mut Context::from_waker(Waker::noop()))
}

// The held item's destructor panics; the inner stream's does too -> abort.
scenario!(
    rate_limited_stream_drop_held_item_and_stream_both_panic_no_abort,
    {
        let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(3600));
        let mut paced = limiter.limit_stream(ProbeStream {
            next: 0,
            bombs: usize::MAX,
            panic_on_drop: true,
            // (Nothing of its own: what the stream owns is dropped in its own
            // destructor's unwind, by its drop glue.)
            _own: None,
        });
        // Item 0 takes the one grant; item 1 waits for its grant.
        let Poll::Ready(Some(first)) = poll_next_once(&mut paced) else {
            panic!("item 0 is granted at once")
        };
        common::forget_reachably(first);
        DROPS.store(0, Ordering::SeqCst);
        assert!(poll_next_once(&mut paced).is_pending());
        assert!(paced.is_waiting());
        let msg = expect_panic(move || drop(paced));
        assert_eq!(msg, "probe `item` destructor", "the first panic propagates");
        assert_probes(1);
    }
);

// Without a second panic: the inner stream (and what it owns) must not be
// dropped during the held item's unwind.
scenario!(
    rate_limited_stream_drop_stream_not_dropped_during_item_unwind,
    {
        let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(3600));
        let mut paced = limiter.limit_stream(ProbeStream {
            next: 0,
            bombs: usize::MAX,
            panic_on_drop: false,
            _own: Some(Probe::quiet("stream's own")),
        });
        let Poll::Ready(Some(first)) = poll_next_once(&mut paced) else {
            panic!("item 0 is granted at once")
        };
        common::forget_reachably(first);
        DROPS.store(0, Ordering::SeqCst);
        assert!(poll_next_once(&mut paced).is_pending());
        let msg = expect_panic(move || drop(paced));
        assert_eq!(msg, "probe `item` destructor");
        assert_probes(2);
    }
);

// `into_inner` drops the held item ("If the held item's destructor panics
// ... [it panics]"): the stream being handed back is dropped during that
// unwind.
scenario!(
    rate_limited_stream_into_inner_stream_not_dropped_during_item_unwind,
    {
        let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(3600));
        let mut paced = limiter.limit_stream(ProbeStream {
            next: 0,
            bombs: usize::MAX,
            panic_on_drop: false,
            _own: Some(Probe::quiet("stream's own")),
        });
        let Poll::Ready(Some(first)) = poll_next_once(&mut paced) else {
            panic!("item 0 is granted at once")
        };
        common::forget_reachably(first);
        DROPS.store(0, Ordering::SeqCst);
        assert!(poll_next_once(&mut paced).is_pending());
        let msg = expect_panic(move || drop(paced.into_inner()));
        assert_eq!(msg, "probe `item` destructor");
        assert_probes(2);
    }
);

// ---------------------------------------------------------------------------
// Semaphore::limit: `*this.permit = None` (waking the next waiter, whose
// waker may panic) while the output is held in a local; and the drop glue
// (`permit` before `future`).
// ---------------------------------------------------------------------------

scenario!(semaphore_limit_output_not_dropped_during_waker_unwind, {
    let sem = awaitkit::Semaphore::new(1);
    let feed = std::rc::Rc::new(std::cell::RefCell::new(None));
    let mut job = Box::pin(sem.limit(Fed(feed.clone())));
    assert!(
        poll_once(&mut job).is_pending(),
        "permit taken, job pending"
    );
    // A waiter whose waker panics when the permit is handed on.
    let mut other = Box::pin(sem.acquire());
    let bad = panicking_waker();
    assert!(
        other
            .as_mut()
            .poll(&mut Context::from_waker(&bad))
            .is_pending()
    );
    // The job finishes with an output; releasing its permit wakes `other`.
    *feed.borrow_mut() = Some(Probe::bomb("output"));
    let msg = expect_panic(|| {
        let _ = poll_once(&mut job);
    });
    assert_eq!(msg, "waker wake", "the first panic propagates");
    drop(job);
    drop(other);
    assert_probes(1);
});

scenario!(
    semaphore_limit_drop_future_not_dropped_during_waker_unwind,
    {
        let sem = awaitkit::Semaphore::new(1);
        let mut job = sem.limit(pending_bomb::<()>());
        assert!(
            poll_once(&mut job).is_pending(),
            "permit taken, job pending"
        );
        let mut other = Box::pin(sem.acquire());
        let bad = panicking_waker();
        assert!(
            other
                .as_mut()
                .poll(&mut Context::from_waker(&bad))
                .is_pending()
        );
        // Dropping the job drops the future first (its destructor panics), then
        // releases the permit: the waiter is still granted (its waker's panic,
        // during that unwind, is contained).
        let msg = expect_panic(move || drop(job));
        assert_eq!(msg, "child destructor", "the first panic propagates");
        assert!(
            other
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready(),
            "the permit was handed on"
        );
    }
);

/// A child that finishes with whatever is put in its shared slot.
struct Fed(std::rc::Rc<std::cell::RefCell<Option<Probe>>>);

impl Future for Fed {
    type Output = Probe;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Probe> {
        match self.0.borrow_mut().take() {
            Some(p) => Poll::Ready(p),
            None => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------
// The engine (gather, as_completed, wait, first_ok, staggered_race, batch):
// a finished child whose destructor panics has its output dropped during
// that unwind (`OutputOnUnwind`), unlike retry's `drop_attempt` and
// `hand_back`, which drop it outside the unwind.
// ---------------------------------------------------------------------------

scenario!(
    gather_finished_child_output_not_dropped_during_its_destructor_unwind,
    {
        let kids = vec![Kid {
            out: Some(Probe::quiet("output")),
            panic_on_drop: true,
        }];
        let mut all = awaitkit::gather(kids);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut all);
        });
        assert_eq!(msg, "child destructor");
        drop(all);
        assert_probes(1);
    }
);

scenario!(
    as_completed_finished_child_output_not_dropped_during_its_destructor_unwind,
    {
        let kids = vec![Kid {
            out: Some(Probe::quiet("output")),
            panic_on_drop: true,
        }];
        let mut set = awaitkit::as_completed(kids);
        let msg = expect_panic(|| {
            let _ = poll_next_once(&mut set);
        });
        assert_eq!(msg, "child destructor");
        drop(set);
        assert_probes(1);
    }
);

// ---------------------------------------------------------------------------
// Pool: `Inner` has no Drop impl and `close` drops the idle list with a
// plain `drop(VecDeque)`: one idle object's panic drops the others during
// its unwind (a second panic aborts).
// ---------------------------------------------------------------------------

/// Creates objects holding a `Probe` that panics when dropped if `bombs`;
/// the manager itself holds `own`.
struct ProbeManager {
    bombs: bool,
    _own: Probe,
}

impl awaitkit::pool::Manager for ProbeManager {
    type Object = Probe;
    type Error = ();
    const RECYCLE: bool = false;
    async fn create(&self) -> Result<Probe, ()> {
        Ok(Probe {
            name: "pooled object",
            explode: self.bombs,
        })
    }
}

/// A pool with two idle objects.
fn pool_with_two_idle(bombs: bool, manager_bomb: bool) -> awaitkit::Pool<ProbeManager> {
    let pool = awaitkit::Pool::new(
        ProbeManager {
            bombs,
            _own: Probe {
                name: "manager",
                explode: manager_bomb,
            },
        },
        2,
    );
    futures::executor::block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        drop(a);
        drop(b);
    });
    assert_eq!(pool.status().idle, 2);
    pool
}

scenario!(pool_close_two_idle_objects_both_panic_no_abort, {
    let pool = pool_with_two_idle(true, false);
    let msg = expect_panic(|| pool.close());
    assert_eq!(
        msg, "probe `pooled object` destructor",
        "the first panic propagates"
    );
    drop(pool);
    assert_probes(3);
});

scenario!(pool_drop_two_idle_objects_both_panic_no_abort, {
    let pool = pool_with_two_idle(true, false);
    let msg = expect_panic(move || drop(pool));
    assert_eq!(
        msg, "probe `pooled object` destructor",
        "the first panic propagates"
    );
    assert_probes(3);
});

// The manager's destructor panics: the idle objects are dropped during its
// unwind (`Inner`'s drop glue: `manager` before `idle`).
scenario!(pool_drop_idle_objects_not_dropped_during_manager_unwind, {
    let pool = pool_with_two_idle(false, true);
    let msg = expect_panic(move || drop(pool));
    assert_eq!(msg, "probe `manager` destructor");
    assert_probes(3);
});

// ---------------------------------------------------------------------------
// Watch: the future is dropped (drop glue after `PinnedDrop`) before
// `meta`, whose `on_slow` hook may hold the last reference to a closure.
// ---------------------------------------------------------------------------

scenario!(watch_drop_hook_capture_and_future_both_panic_no_abort, {
    let capture = Probe::bomb("hook capture");
    let mut w = Box::pin(
        awaitkit::watch(pending_bomb::<()>()).on_slow_poll(move |_| {
            let _keep = &capture;
        }),
    );
    assert!(
        w.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    let msg = expect_panic(move || drop(w));
    assert_eq!(msg, "child destructor", "the first panic propagates");
    assert_probes(1);
});

scenario!(watch_drop_hook_capture_not_dropped_during_future_unwind, {
    let capture = Probe::quiet("hook capture");
    let mut w = Box::pin(
        awaitkit::watch(pending_bomb::<()>()).on_slow_poll(move |_| {
            let _keep = &capture;
        }),
    );
    assert!(
        w.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    let msg = expect_panic(move || drop(w));
    assert_eq!(msg, "child destructor");
    assert_probes(1);
});

// ---------------------------------------------------------------------------
// RateLimiter::limit: `acquire` (giving the place back may wake the next
// waiter) is dropped before `future` by the drop glue.
// ---------------------------------------------------------------------------

scenario!(held_rate_limit_drop_while_waiting_wakes_nobody, {
    let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(3600));
    limiter.try_acquire().expect("the one grant");
    let mut job = Box::pin(limiter.limit(Kid::<()> {
        out: None,
        panic_on_drop: false,
    }));
    assert!(
        job.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    );
    let mut other = Box::pin(limiter.acquire());
    let bad = panicking_waker();
    assert!(
        other
            .as_mut()
            .poll(&mut Context::from_waker(&bad))
            .is_pending()
    );
    // Either dropping the job's place wakes `other` (its waker panics) or
    // nothing panics: both fine as long as no abort and no unwind drop.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(job)));
    eprintln!("REVIEW-INFO: dropping the job panicked: {}", r.is_err());
    common::forget_reachably(other);
});

// ---------------------------------------------------------------------------
// A user Timer value held by Wait / AsCompletedUntil / Retry (inside
// `BoxedDeadline`, whose Drop only contains the *sleep*'s panic).
// ---------------------------------------------------------------------------

/// The default timer's clock, holding a probe.
struct ProbeTimer(#[allow(dead_code)] Probe);

impl awaitkit::Timer for ProbeTimer {
    type Sleep = std::future::Pending<()>;
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn sleep_until(&self, _deadline: std::time::Instant) -> Self::Sleep {
        std::future::pending()
    }
    fn reset(&self, _sleep: Pin<&mut Self::Sleep>, _deadline: std::time::Instant) {}
}

scenario!(wait_drop_timer_and_child_both_panic_no_abort, {
    let kids: Vec<Kid<()>> = vec![pending_bomb()];
    let mut w = awaitkit::wait(kids, awaitkit::ReturnWhen::AllCompleted)
        .with_timeout(Duration::from_secs(3600))
        .with_timer(ProbeTimer(Probe::bomb("timer")));
    assert!(poll_once(&mut w).is_pending());
    let msg = expect_panic(move || drop(w));
    assert_eq!(msg, "child destructor", "the first panic propagates");
    assert_probes(1);
});

scenario!(
    as_completed_until_drop_timer_not_dropped_during_child_unwind,
    {
        let kids: Vec<Kid<()>> = vec![pending_bomb()];
        let mut s = awaitkit::as_completed(kids)
            .with_timeout(Duration::from_secs(3600))
            .with_timer(ProbeTimer(Probe::quiet("timer")));
        assert!(poll_next_once(&mut s).is_pending());
        let msg = expect_panic(move || drop(s));
        assert_eq!(msg, "child destructor");
        assert_probes(1);
    }
);

// ---------------------------------------------------------------------------
// task_group: `fail(e)` drops the body and the tasks, then
// `panics.resume(); return Poll::Ready(Err(e))`: the error `e` (a
// parameter) is dropped during the resumed panic's unwind.
// ---------------------------------------------------------------------------

/// A pending task whose destructor panics ("child destructor").
struct PendingBombTask;

impl Future for PendingBombTask {
    type Output = Result<(), Probe>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for PendingBombTask {
    fn drop(&mut self) {
        panic!("child destructor");
    }
}

/// A task that fails at its first poll with `error`.
struct FailingTask(Option<Probe>);

impl Future for FailingTask {
    type Output = Result<(), Probe>;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(self.0.take().expect("polled once")))
    }
}

fn task_group_fail_fast(error: Probe) {
    let error = std::sync::Mutex::new(Some(error));
    let mut group = Box::pin(awaitkit::task_group(|tg| {
        let error = error.lock().unwrap().take();
        async move {
            let _a = tg.spawn(PendingBombTask);
            let _b = tg.spawn(FailingTask(error));
            futures::future::pending::<Result<(), Probe>>().await
        }
    }));
    let mut polls = 0;
    let msg = expect_panic(|| {
        loop {
            polls += 1;
            assert!(polls < 10, "the group never failed");
            if group
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
            {
                break;
            }
        }
    });
    assert_eq!(msg, "child destructor", "the first panic propagates");
    drop(group);
}

scenario!(task_group_fail_fast_error_and_task_both_panic_no_abort, {
    task_group_fail_fast(Probe::bomb("task error"));
    assert_probes(1);
});

scenario!(task_group_fail_fast_error_not_dropped_during_task_unwind, {
    task_group_fail_fast(Probe::quiet("task error"));
    assert_probes(1);
});

// ---------------------------------------------------------------------------
// What held (kept as regression checks).
// ---------------------------------------------------------------------------

// first_ok: the winner is handed back through `hand_back` (ccc4b89).
scenario!(held_first_ok_winner_with_panicking_sibling, {
    let kids: Vec<Kid<Result<Probe, ()>>> =
        vec![pending_bomb(), ready_kid(Ok(Probe::bomb("winner")))];
    let mut f = awaitkit::first_ok(kids);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut f);
    });
    assert_eq!(msg, "child destructor");
    drop(f);
    assert_probes(1);
});

// staggered_race: `win` drops the value under its own catch.
scenario!(held_staggered_race_winner_with_panicking_sibling, {
    let made = std::cell::Cell::new(0);
    let factories = (0..2).map(|i| {
        let made = &made;
        move || {
            made.set(made.get() + 1);
            if i == 0 {
                pending_bomb::<Result<Probe, ()>>()
            } else {
                ready_kid(Ok(Probe::bomb("winner")))
            }
        }
    });
    let mut race = awaitkit::staggered_race(factories, Duration::ZERO);
    let mut result = None;
    for _ in 0..10 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_once(&mut race)));
        match r {
            Ok(Poll::Pending) => continue,
            Ok(Poll::Ready(_)) => panic!("the sibling's destructor panic must propagate"),
            Err(p) => {
                result = Some(payload_text(&p));
                break;
            }
        }
    }
    assert_eq!(result.as_deref(), Some("child destructor"));
    drop(race);
    assert_probes(1);
});

// gather_settled: `Drop` drops the engine then each outcome on its own.
scenario!(held_gather_settled_drop_outcome_and_child, {
    let kids: Vec<Kid<Probe>> = vec![pending_bomb(), ready_kid(Probe::bomb("outcome"))];
    let mut s = awaitkit::gather_settled(kids);
    assert!(poll_once(&mut s).is_pending());
    let msg = expect_panic(move || drop(s));
    assert_eq!(msg, "child destructor");
    assert_probes(1);
});

// gather (Vec): outputs stored in the engine's slots, dropped slot by slot.
scenario!(held_gather_drop_stored_output_and_child, {
    let kids: Vec<Kid<Probe>> = vec![pending_bomb(), ready_kid(Probe::bomb("output"))];
    let mut g = awaitkit::gather(kids);
    assert!(poll_once(&mut g).is_pending());
    let msg = expect_panic(move || drop(g));
    assert_eq!(msg, "child destructor");
    assert_probes(1);
});

// gather! (tuple): each slot under its own catch.
scenario!(held_gather_tuple_drop_stored_output_and_child, {
    let a: Kid<Probe> = pending_bomb();
    let b: Kid<Probe> = ready_kid(Probe::bomb("output"));
    let mut g = awaitkit::gather!(a, b);
    assert!(poll_once(&mut g).is_pending());
    let msg = expect_panic(move || drop(g));
    assert_eq!(msg, "child destructor");
    assert_probes(1);
});
