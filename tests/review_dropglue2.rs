#![cfg(feature = "test-util")]
//! Review round 4 (118dea5, 719de1f): breaking the panic-safety fixes where
//! tests/review_dropglue.rs and tests/review_timeout_drop.rs did not go.
//! Every scenario runs in a child process (`common::child`): an abort fails
//! the test. Probes count drops and drops made while `std::thread::panicking()`.
//!
//! 10 of 30 failed there (2 aborts), all places the fixes had missed: a
//! keyed acquire's full limiter kept across the clock and the key's `Eq`;
//! `StaggeredRace::with_timer` after the start and `wait(FirstError)`
//! panicking (the crate's own refusal) with the attempts, the timer or the
//! children still held; `Watch::is_terminated` true after its output was
//! lost to a hook's panic. Two more, about `WatchEach` dropped with futures
//! not yet taken, were removed: those are dropped by the iterator's own
//! drop (a `vec::IntoIter`'s drop glue drops the rest during one's panic,
//! as the `Vec` itself would), which `WatchEach`'s docs now say.

#[macro_use]
mod common;

use common::child::expect_panic;

#[path = "common/probes.rs"]
mod probes;
use probes::*;

// ---------------------------------------------------------------------------
// 1. Keyed: `full_in` (an acquire's first poll on a limited key) builds a
// full limiter (`fresh`: a clone of the timer, user value) with no lock held,
// then loops: the next clock read or the key's `Eq` panics with `fresh` on
// the stack; it is dropped during that unwind.
// ---------------------------------------------------------------------------

fn keyed_full_in_fault(eq: bool) {
    let clock = ManualClock::new();
    let limiter = probe_limiter(&clock);
    limiter.try_acquire(Key::new(1, false)).unwrap();
    let mut a = Box::pin(limiter.acquire(Key::new(1, false)));
    let clones0 = CLONES.load(Ordering::SeqCst);
    // check_in (1), full_in's first pass (2), its second pass (3).
    arm(if eq { &EQ_ARM } else { &NOW_ARM }, 3);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut a);
    });
    disarm(&EQ_ARM);
    disarm(&NOW_ARM);
    eprintln!(
        "REVIEW (info): timer clones made by the panicking first poll: {}",
        CLONES.load(Ordering::SeqCst) - clones0
    );
    assert!(msg.contains("(armed)"), "{msg}");
    assert_eq!(limiter.len(), 1, "REVIEW one key after the panic");
    assert_eq!(
        limiter.stats().waiting_keys,
        0,
        "REVIEW nobody waits after the panic"
    );
    assert_eq!(
        panicking_drops(),
        0,
        "REVIEW the full limiter built by `full_in` (a timer clone) was dropped during the \
         unwind of a panic of {} (log: {:?})",
        if eq { "the key's Eq" } else { "the clock" },
        log()
    );
    // The acquire is still unpolled: it waits now, then is granted.
    assert!(
        poll_once(&mut a).is_pending(),
        "REVIEW waits after the retry"
    );
    clock.advance(Duration::from_secs(2));
    let mut got = None;
    for _ in 0..4 {
        if let Poll::Ready(r) = poll_once(&mut a) {
            got = Some(r);
            break;
        }
    }
    assert!(
        matches!(got, Some(Ok(()))),
        "REVIEW granted after the period: {got:?}"
    );
    drop(a);
    assert_eq!(limiter.len(), 1, "REVIEW one key stored");
    drop(limiter);
    // keys: stored 1, acquire's 1; the timer; every clone and sleep once.
    check(3 + made());
}

scenario!(
    keyed_acquire_full_in_eq_panics_fresh_limiter_dropped_in_unwind,
    {
        keyed_full_in_fault(true);
    }
);

scenario!(
    keyed_acquire_full_in_clock_panics_fresh_limiter_dropped_in_unwind,
    {
        keyed_full_in_fault(false);
    }
);

// ---------------------------------------------------------------------------
// 2. Keyed: a key's `Eq` panics inside `try_acquire` (under the shard lock):
// the shard is usable, the key is not stored twice or lost, the bound and
// the stats count right, the key given is dropped once outside the unwind.
// ---------------------------------------------------------------------------

scenario!(keyed_try_acquire_eq_panics_state_consistent, {
    let limiter = awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(60)).with_max_keys(2);
    limiter.try_acquire(Key::new(1, false)).unwrap();
    arm(&EQ_ARM, 1);
    let msg = expect_panic(|| {
        let _ = limiter.try_acquire(Key::new(1, false));
    });
    disarm(&EQ_ARM);
    assert!(msg.contains("key eq"), "{msg}");
    assert_eq!(
        panicking_drops(),
        0,
        "REVIEW key dropped in the unwind: {:?}",
        log()
    );
    assert_eq!(limiter.len(), 1, "REVIEW len after the Eq panic");
    assert_eq!(
        limiter.stats().keys,
        1,
        "REVIEW stats().keys after the Eq panic"
    );
    assert!(
        matches!(
            limiter.try_acquire(Key::new(1, false)),
            Err(awaitkit::RateLimitError::RateLimited { .. })
        ),
        "REVIEW the key's grant was kept"
    );
    limiter.try_acquire(Key::new(2, false)).unwrap();
    assert!(
        matches!(
            limiter.try_acquire(Key::new(3, false)),
            Err(awaitkit::RateLimitError::TooManyKeys { .. })
        ),
        "REVIEW the bound (2) still refuses a third key"
    );
    assert_eq!(limiter.len(), 2);
    assert_eq!(limiter.stats().refusals, 1);
    drop(limiter);
    check(5);
});

// The same through an acquire (the Eq panic at the first poll, in check_in),
// then the acquire polled again: granted once the period passes, one key.
scenario!(keyed_acquire_eq_panics_first_poll_retried, {
    let clock = ManualClock::new();
    let limiter = probe_limiter(&clock);
    limiter.try_acquire(Key::new(1, false)).unwrap();
    let mut a = Box::pin(limiter.acquire(Key::new(1, false)));
    arm(&EQ_ARM, 1);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut a);
    });
    disarm(&EQ_ARM);
    assert!(msg.contains("key eq"), "{msg}");
    assert!(poll_once(&mut a).is_pending());
    clock.advance(Duration::from_secs(2));
    assert!(matches!(poll_once(&mut a), Poll::Ready(Ok(()))));
    assert!(futures::future::FusedFuture::is_terminated(&*a));
    drop(a);
    assert_eq!(limiter.len(), 1);
    drop(limiter);
    check(3 + made());
});

// ---------------------------------------------------------------------------
// 3. Keyed drop glue during another panic's unwind, timer and key both
// panicking (combination): no abort, everything dropped once.
// ---------------------------------------------------------------------------

scenario!(keyed_dropped_during_unwind_key_and_timer_panic_no_abort, {
    let clock = ManualClock::new();
    let limiter = awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(
        ProbeTimer::new(&clock, Probe::bomb("timer"), TimerFaults::default()),
    );
    for id in 0..8 {
        limiter.try_acquire(Key::new(id, true)).unwrap();
    }
    let a = limiter.acquire(Key::new(100, true)); // unpolled: a handle and a key
    let msg = expect_panic(move || {
        let _l = limiter;
        let _a = a;
        panic!("outer");
    });
    assert_eq!(msg, "outer");
    assert_eq!(drops(), 10, "REVIEW every value dropped once: {:?}", log());
});

// An unpolled acquire that outlives its limiter, dropped during an unwind;
// its key and the stored keys panic.
scenario!(keyed_unpolled_last_handle_dropped_during_unwind_no_abort, {
    let limiter = awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1));
    limiter.try_acquire(Key::new(1, true)).unwrap();
    let a = limiter.acquire(Key::new(2, true));
    drop(limiter);
    let msg = expect_panic(move || {
        let _a = a;
        panic!("outer");
    });
    assert_eq!(msg, "outer");
    assert_eq!(drops(), 2, "REVIEW {:?}", log());
});

// with_timer: the old limiter's key panics AND the new timer's destructor
// panics (the new limiter is dropped by `hand_back`): no abort, first panic.
scenario!(keyed_with_timer_old_key_and_new_timer_panic, {
    let clock = ManualClock::new();
    let limiter = awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1));
    limiter.try_acquire(Key::new(1, true)).unwrap();
    let new = ProbeTimer::new(&clock, Probe::bomb("new-timer"), TimerFaults::default());
    let msg = expect_panic(move || drop(limiter.with_timer(new)));
    assert!(msg.contains("key"), "{msg}");
    check(2);
});

// with_max_keys on a limiter whose timer clone's destructor panics and whose
// key panics: the new limiter (the clone) is dropped after the old one's panic.
scenario!(keyed_with_max_keys_old_key_and_clone_panic, {
    let clock = ManualClock::new();
    let limiter =
        awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(ProbeTimer::new(
            &clock,
            Probe::quiet("timer"),
            TimerFaults {
                clone_bombs: true,
                ..TimerFaults::default()
            },
        ));
    limiter.try_acquire(Key::new(1, true)).unwrap();
    let msg = expect_panic(move || drop(limiter.with_max_keys(4)));
    assert!(msg.contains("key"), "{msg}");
    check(3); // key, timer, clone
});

// ---------------------------------------------------------------------------
// 4. Crate-raised panics with user values live
// ---------------------------------------------------------------------------

// A future pending forever, holding a probe.
struct Pend(#[allow(dead_code)] Probe);
impl Future for Pend {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl Unpin for Pend {}

// A future pending forever with a `Result` output, holding a probe.
struct PendR(#[allow(dead_code)] Probe);
impl Future for PendR {
    type Output = Result<(), ()>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Pending
    }
}
impl Unpin for PendR {}

fn started_race(
    attempt_explodes: bool,
) -> awaitkit::StaggeredRace<impl Iterator<Item = impl FnOnce() -> PendR>, PendR> {
    let mut race = awaitkit::staggered_race(
        (0..2).map(move |_| move || PendR(Probe::new("attempt", attempt_explodes))),
        Duration::from_secs(3600),
    );
    assert!(poll_once(&mut race).is_pending());
    assert_eq!(race.started(), 1);
    race
}

// `with_timer` asserts "not begun" with `self` (a running attempt) and the
// timer argument alive: both are dropped during the assertion's unwind.
scenario!(staggered_with_timer_after_start_values_dropped_in_unwind, {
    let race = started_race(false);
    let clock = ManualClock::new();
    let timer = ProbeTimer::new(&clock, Probe::quiet("new-timer"), TimerFaults::default());
    let msg = expect_panic(move || drop(race.with_timer(timer)));
    assert!(msg.contains("after the race started"), "{msg}");
    check(2);
});

// Same, the attempt's and the new timer's destructors panic: the timer is a
// plain argument dropped during the unwind: abort?
scenario!(staggered_with_timer_after_start_bombs_no_abort, {
    let race = started_race(true);
    let clock = ManualClock::new();
    let timer = ProbeTimer::new(&clock, Probe::bomb("new-timer"), TimerFaults::default());
    let msg = expect_panic(move || drop(race.with_timer(timer)));
    assert!(msg.contains("after the race started"), "{msg}");
    check(2);
});

// `AsCompleted::wait(FirstError)` asserts with the set (user futures) alive.
scenario!(as_completed_wait_first_error_children_dropped_in_unwind, {
    let set = awaitkit::as_completed([Pend(Probe::quiet("child")), Pend(Probe::quiet("child"))]);
    let msg = expect_panic(move || drop(set.wait(awaitkit::ReturnWhen::FirstError)));
    assert!(msg.contains("try_wait"), "{msg}");
    check(2);
});

scenario!(as_completed_wait_first_error_bomb_children_no_abort, {
    let set = awaitkit::as_completed([Pend(Probe::bomb("child")), Pend(Probe::bomb("child"))]);
    let msg = expect_panic(move || drop(set.wait(awaitkit::ReturnWhen::FirstError)));
    assert!(msg.contains("try_wait"), "{msg}");
    check(2);
});

// A future pending forever with a `Result` output, Send, holding a probe.
struct TaskFut(#[allow(dead_code)] Probe);
impl Future for TaskFut {
    type Output = Result<(), ()>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Pending
    }
}

fn closed_scope() -> awaitkit::TaskScope<'static, ()> {
    let keep = std::sync::Arc::new(Mutex::new(None));
    let k2 = keep.clone();
    let group = awaitkit::task_group(move |tg| {
        *k2.lock().unwrap() = Some(tg);
        async { Ok::<(), ()>(()) }
    });
    futures::executor::block_on(group).unwrap();
    keep.lock().unwrap().take().unwrap()
}

// `TaskScope::spawn` after the group finished: `push` drops its `Task`, but
// `spawn` still holds the cell (`cell`, the user future) and the slot: the
// future is dropped during the unwind of the crate's panic.
scenario!(task_scope_spawn_after_close_future_dropped_in_unwind, {
    let scope = closed_scope();
    let msg = expect_panic(|| {
        drop(scope.spawn(TaskFut(Probe::quiet("task"))));
    });
    assert!(msg.contains("after its task group finished"), "{msg}");
    check(1);
});

// (The future is dropped inside `push`, before the crate's panic: its own
// panic is then the first one and propagates.)
scenario!(task_scope_spawn_after_close_bomb_future_no_abort, {
    let scope = closed_scope();
    let msg = expect_panic(|| {
        drop(scope.spawn(TaskFut(Probe::bomb("task"))));
    });
    eprintln!("REVIEW (info): spawn after close with a bomb future raised: {msg}");
    assert!(
        msg.contains("after its task group finished") || msg.contains("task"),
        "{msg}"
    );
    check(1);
});

// ---------------------------------------------------------------------------
// 5. Watch after a hook panic
// ---------------------------------------------------------------------------

use awaitkit::WatchExt;
use futures::future::{FusedFuture, FutureExt};

// The inner future (fused) completed, the hook panicked, the output was
// dropped: the `Watch` says it is terminated although its output was never
// returned (the crate's rule, 118dea5: is_terminated only once returned).
scenario!(watch_fused_hook_panic_is_terminated_without_output, {
    let mut w = Box::pin(
        std::future::ready(Probe::quiet("output"))
            .fuse()
            .watch("w")
            .threshold(Duration::ZERO)
            .on_slow_poll(|_| panic!("slow-poll hook")),
    );
    let msg = expect_panic(|| drop(poll_once(&mut w)));
    assert!(msg.contains("slow-poll hook"), "{msg}");
    check(1);
    assert!(
        !w.is_terminated(),
        "REVIEW Watch::is_terminated is true although its output was dropped, never returned"
    );
});

// A Report's child: hook panics in the completing poll; the report must say
// Panicked (documented) and the Watch refuses the next poll; stats completed.
scenario!(watch_report_hook_panic_completing_outcome, {
    let report = awaitkit::watch::Report::new()
        .threshold(Duration::ZERO)
        .on_slow_poll(|_| panic!("slow-poll hook"));
    let mut w = Box::pin(report.watch("c", std::future::ready(Probe::quiet("output"))));
    let msg = expect_panic(|| drop(poll_once(&mut w)));
    assert!(msg.contains("slow-poll hook"), "{msg}");
    check(1);
    let again = expect_panic(|| drop(poll_once(&mut w)));
    assert!(again.contains("slow-poll hook"), "REVIEW refusal: {again}");
    drop(w);
    let children = report.children();
    assert_eq!(children.len(), 1);
    assert_eq!(
        children[0].outcome,
        awaitkit::watch::Outcome::Panicked,
        "REVIEW the report's outcome after a hook panic"
    );
});

// ---------------------------------------------------------------------------
// 6. Batch after a progress-callback panic the consumer caught
// ---------------------------------------------------------------------------

fn poll_next_once<S: futures::Stream + Unpin>(s: &mut S) -> Poll<Option<S::Item>> {
    Pin::new(s).poll_next(&mut Context::from_waker(Waker::noop()))
}

scenario!(batch_ordered_progress_panic_then_keep_polling, {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let mut s = awaitkit::process_batch(0..4u32, 2, |i| {
        std::future::ready((i, Probe::quiet("output")))
    })
    .on_progress(move |_: &awaitkit::Progress| {
        if c2.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("progress callback");
        }
    })
    .ordered();
    let mut got = Vec::new();
    let mut panicked = 0;
    for _ in 0..8 {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_next_once(&mut s))) {
            Ok(Poll::Ready(Some(out))) => got.push(out),
            Ok(Poll::Ready(None)) => break,
            Ok(Poll::Pending) => {}
            Err(p) => {
                panicked += 1;
                let m = common::child::payload_text(&p);
                if panicked > 1 {
                    assert!(m.contains("polled after a panic"), "REVIEW refusal: {m}");
                    break;
                }
            }
        }
    }
    let keys: Vec<u32> = got.iter().map(|(i, _)| *i).collect();
    eprintln!("REVIEW (info): handed out {keys:?}, panics {panicked}");
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "REVIEW order: {keys:?}"
    );
    assert_eq!(panicking_drops(), 0, "REVIEW {:?}", log());
    drop(got);
    drop(s);
    assert!(drops() <= 4, "REVIEW an output dropped twice: {:?}", log());
    eprintln!("REVIEW (info): outputs dropped: {}", drops());
});

// ---------------------------------------------------------------------------
// 7. Timeout / RateLimit / Wait combinations
// ---------------------------------------------------------------------------

// Timeout::with_timer: the old timer panics, the inner future and the new
// timer panic too (dropped by `hand_back`'s contain): no abort, first panic.
scenario!(timeout_with_timer_old_new_inner_all_panic, {
    let clock = ManualClock::new();
    let t = awaitkit::timeout(Duration::from_secs(1), Pend(Probe::bomb("inner"))).with_timer(
        ProbeTimer::new(&clock, Probe::bomb("old-timer"), TimerFaults::default()),
    );
    let new = ProbeTimer::new(&clock, Probe::bomb("new-timer"), TimerFaults::default());
    let msg = expect_panic(move || drop(t.with_timer(new)));
    assert!(msg.contains("old-timer"), "{msg}");
    check(3);
});

// Timeout polled (sleep armed, its destructor panics), then into_inner with
// the old timer panicking too: the inner future (a bomb) is dropped once,
// outside the unwind; the first panic (the sleep's) propagates.
scenario!(timeout_into_inner_sleep_timer_inner_all_panic, {
    let clock = ManualClock::new();
    let mut t = awaitkit::timeout(Duration::from_secs(1), Pend(Probe::bomb("inner"))).with_timer(
        ProbeTimer::new(
            &clock,
            Probe::bomb("timer"),
            TimerFaults {
                sleep_bombs: true,
                ..TimerFaults::default()
            },
        ),
    );
    assert!(poll_once(&mut t).is_pending());
    let msg = expect_panic(move || drop(t.into_inner()));
    assert!(msg.contains("sleep") || msg.contains("timer"), "{msg}");
    check(3);
});

// RateLimit completed (its grant taken, its future done), then dropped with a
// future whose destructor panics: propagates once; is_terminated stays true.
scenario!(rate_limit_after_completion_future_panics_on_drop, {
    let clock = ManualClock::new();
    let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(
        ProbeTimer::new(&clock, Probe::quiet("timer"), TimerFaults::default()),
    );
    struct ReadyBomb(#[allow(dead_code)] Probe);
    impl Future for ReadyBomb {
        type Output = u8;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
            Poll::Ready(7)
        }
    }
    let mut l = Box::pin(limiter.limit(ReadyBomb(Probe::bomb("future"))));
    assert_eq!(poll_once(&mut l), Poll::Ready(7));
    assert!(l.is_terminated());
    let again = expect_panic(|| {
        let _ = poll_once(&mut l);
    });
    assert!(again.contains("after completion"), "{again}");
    let msg = expect_panic(move || drop(l));
    assert!(msg.contains("future"), "{msg}");
    // the grant is used: the next is refused until the period passes
    assert!(limiter.try_acquire().is_err());
    drop(limiter);
    check(2);
});

// Wait timed out with FirstCompleted: the sleep's destructor panics while a
// finished output (a bomb) is in `done` and a pending child (a bomb) remains:
// no abort, each dropped once, none in the unwind; the Wait then refuses
// polls and is not terminated.
scenario!(wait_timed_out_sleep_output_child_all_panic, {
    let clock = ManualClock::new();
    let mut w = awaitkit::wait(
        [Pend(Probe::bomb("child")), Pend(Probe::bomb("child2"))],
        awaitkit::ReturnWhen::AllCompleted,
    )
    .with_timeout(Duration::from_secs(1))
    .with_timer(ProbeTimer::new(
        &clock,
        Probe::quiet("timer"),
        TimerFaults {
            sleep_bombs: true,
            ..TimerFaults::default()
        },
    ));
    assert!(poll_once(&mut w).is_pending());
    clock.advance(Duration::from_secs(2));
    let msg = expect_panic(|| drop(poll_once(&mut w)));
    assert!(msg.contains("sleep"), "{msg}");
    assert!(
        !w.is_terminated(),
        "REVIEW terminated without returning its output"
    );
    let again = expect_panic(|| drop(poll_once(&mut w)));
    assert!(again.contains("Wait"), "{again}");
    drop(w);
    check(4);
});

// Batch (ordered): the progress callback panics while an output whose
// destructor panics is held: no abort, each output dropped once, the
// callback's panic propagates, the batch then refuses polls.
scenario!(batch_ordered_progress_and_output_both_panic, {
    let mut s = awaitkit::process_batch(0..3u32, 1, |_| std::future::ready(Probe::bomb("output")))
        .on_progress(|_: &awaitkit::Progress| panic!("progress callback"))
        .ordered();
    let msg = expect_panic(|| drop(poll_next_once(&mut s)));
    assert!(msg.contains("progress callback"), "{msg}");
    let again = expect_panic(|| drop(poll_next_once(&mut s)));
    assert!(again.contains("polled after a panic"), "{again}");
    // The ordered output waits in the batch (not on the stack): dropped with
    // it, its panic propagating from the drop.
    let m = expect_panic(move || drop(s));
    assert!(m.contains("output"), "{m}");
    check(1);
});

// RateLimiter::with_timer: the new timer's clock panics and the old timer's
// destructor panics: no abort, the clock's panic propagates, both dropped
// once, none in the unwind.
scenario!(rl_with_timer_new_now_and_old_drop_panic, {
    let clock = ManualClock::new();
    let old = awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(ProbeTimer::new(
        &clock,
        Probe::bomb("old-timer"),
        TimerFaults::default(),
    ));
    let new = ProbeTimer::new(
        &clock,
        Probe::bomb("new-timer"),
        TimerFaults {
            now_panics: true,
            ..TimerFaults::default()
        },
    );
    let msg = expect_panic(move || drop(old.with_timer(new)));
    assert!(msg.contains("timer now"), "{msg}");
    check(2);
});

// A keyed acquire waiting on a promoted key is dropped (cancel) while the
// limiter's sleep destructor panics and the stored key panics on the
// limiter's drop afterwards: counts and stats stay right.
scenario!(keyed_waiting_acquire_cancel_then_stats, {
    let clock = ManualClock::new();
    let limiter =
        awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(ProbeTimer::new(
            &clock,
            Probe::quiet("timer"),
            TimerFaults {
                sleep_bombs: true,
                ..TimerFaults::default()
            },
        ));
    limiter.try_acquire(Key::new(1, true)).unwrap();
    let mut a = Box::pin(limiter.acquire(Key::new(1, false)));
    assert!(poll_once(&mut a).is_pending());
    assert_eq!(limiter.stats().waiting_keys, 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(a)));
    eprintln!("REVIEW (info): cancel panicked: {}", r.is_err());
    assert_eq!(
        limiter.stats().waiting_keys,
        0,
        "REVIEW waiter gone after cancel"
    );
    clock.advance(Duration::from_secs(2));
    limiter
        .try_acquire(Key::new(1, false))
        .expect("REVIEW granted after the period");
    assert_eq!(limiter.len(), 1);
    let msg = expect_panic(move || drop(limiter));
    assert!(msg.contains("key"), "{msg}");
    assert_eq!(panicking_drops(), 0, "REVIEW {:?}", log());
    check(4 + made());
});

// ---------------------------------------------------------------------------
// 8. Timeout without a deadline: waker + sleep faults together (keep_waker)
// ---------------------------------------------------------------------------

static GOOD_WAKES: AtomicUsize = AtomicUsize::new(0);
struct CountWake;
impl std::task::Wake for CountWake {
    fn wake(self: std::sync::Arc<Self>) {
        GOOD_WAKES.fetch_add(1, Ordering::SeqCst);
    }
}
fn clone_panicking_waker() -> Waker {
    use std::task::{RawWaker, RawWakerVTable};
    const VTABLE: RawWakerVTable =
        RawWakerVTable::new(|_| panic!("waker clone"), |_| {}, |_| {}, |_| {});
    // SAFETY: the vtable's functions ignore the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

// A deadline, polled (sleep armed; its drop panics), then cleared. The next
// poll's waker panics in `clone` (keep_waker runs first now): that panic
// propagates; the poll after, with a good waker, drops the sleep (its panic
// propagates); then `reset` must wake the good waker, and the deadline fires.
scenario!(timeout_cleared_deadline_waker_clone_and_sleep_panic, {
    let clock = ManualClock::new();
    let mut t = Box::pin(
        awaitkit::timeout(Duration::from_secs(60), Pend(Probe::quiet("inner"))).with_timer(
            ProbeTimer::new(
                &clock,
                Probe::quiet("timer"),
                TimerFaults {
                    sleep_bombs: true,
                    ..TimerFaults::default()
                },
            ),
        ),
    );
    assert!(poll_once(&mut t).is_pending());
    t.as_mut().clear_deadline();
    let bad = clone_panicking_waker();
    let m1 = expect_panic(|| {
        let _ = t.as_mut().poll(&mut Context::from_waker(&bad));
    });
    let good = Waker::from(std::sync::Arc::new(CountWake));
    let m2 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = t.as_mut().poll(&mut Context::from_waker(&good));
    }));
    let m2 = match m2 {
        Ok(()) => "no panic".to_string(),
        Err(p) => common::child::payload_text(&p),
    };
    eprintln!("REVIEW (info): first poll: {m1}; second poll: {m2}");
    assert!(m1.contains("waker clone") || m1.contains("sleep"), "{m1}");
    let w0 = GOOD_WAKES.load(Ordering::SeqCst);
    t.as_mut().reset(clock.now() + Duration::from_secs(1));
    assert!(
        GOOD_WAKES.load(Ordering::SeqCst) > w0,
        "REVIEW reset woke nobody after the waker-clone and sleep-drop panics (lost wake-up)"
    );
    clock.advance(Duration::from_secs(2));
    let mut r = None;
    for _ in 0..3 {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.as_mut().poll(&mut Context::from_waker(&good))
        })) {
            Ok(Poll::Ready(x)) => {
                r = Some(x.is_err());
                break;
            }
            Ok(Poll::Pending) => {}
            Err(p) => eprintln!(
                "REVIEW (info): poll panicked: {}",
                common::child::payload_text(&p)
            ),
        }
    }
    assert_eq!(r, Some(true), "REVIEW the reset deadline fires (Elapsed)");
    drop(t);
    assert_eq!(panicking_drops(), 0, "REVIEW {:?}", log());
    check(2 + made()); // inner, timer, every sleep
});

// ---------------------------------------------------------------------------
// 9. Keyed re-entrancy: a key whose destructor calls back into the limiter
// that is dropping it (eviction, an unpolled acquire's drop, a check that
// found the key stored). Each runs on a helper thread: a deadlock fails.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct RKey {
    id: u32,
    reenter: bool,
}
impl PartialEq for RKey {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}
impl Eq for RKey {}
impl Hash for RKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}
static RLIM: std::sync::OnceLock<awaitkit::KeyedRateLimiter<RKey, ManualClock>> =
    std::sync::OnceLock::new();
static REENTERED: AtomicUsize = AtomicUsize::new(0);
impl Drop for RKey {
    fn drop(&mut self) {
        if self.reenter {
            let l = RLIM.get().unwrap();
            let _ = l.try_acquire(RKey {
                id: 1000 + self.id,
                reenter: false,
            });
            let _ = l.len();
            let _ = l.stats();
            REENTERED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("REVIEW a key's destructor calling back into its limiter deadlocked");
}

scenario!(keyed_reentrant_key_drop_no_deadlock, {
    let clock = ManualClock::new();
    let c2 = clock.clone();
    RLIM.set(awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(clock))
        .ok()
        .unwrap();
    within(10, move || {
        let l = RLIM.get().unwrap();
        // stored key 1 (re-entering); a check of key 1 drops the given key
        l.try_acquire(RKey {
            id: 1,
            reenter: true,
        })
        .unwrap();
        let _ = l.try_acquire(RKey {
            id: 1,
            reenter: true,
        });
        // unpolled acquire dropped
        drop(l.acquire(RKey {
            id: 2,
            reenter: true,
        }));
        // a polled acquire that waits (promoted), then cancelled
        let mut a = Box::pin(l.acquire(RKey {
            id: 1,
            reenter: true,
        }));
        let _ = poll_once(&mut a);
        drop(a);
        // eviction of re-entering keys
        c2.advance(Duration::from_secs(10));
        let gone = l.evict_idle();
        eprintln!(
            "REVIEW (info): evicted {gone}, re-entered {}",
            REENTERED.load(Ordering::SeqCst)
        );
    });
    assert!(REENTERED.load(Ordering::SeqCst) >= 4);
});

// Watch in a Report: the hook panics at a pending (slow) poll, the consumer
// catches it and polls on: the output is returned, stats and the report's
// outcome say Completed (not Panicked), the slow poll counted once per hook call.
scenario!(watch_hook_panic_on_pending_poll_then_completes, {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let report = awaitkit::watch::Report::new()
        .threshold(Duration::ZERO)
        .on_slow_poll(move |_| {
            if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("slow-poll hook");
            }
        });
    struct Later2(u32, Option<Probe>);
    impl Unpin for Later2 {}
    impl Future for Later2 {
        type Output = Probe;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Probe> {
            if self.0 > 0 {
                self.0 -= 1;
                return Poll::Pending;
            }
            Poll::Ready(self.1.take().unwrap())
        }
    }
    let mut w = Box::pin(report.watch("c", Later2(1, Some(Probe::quiet("output")))));
    let m = expect_panic(|| drop(poll_once(&mut w)));
    assert!(m.contains("slow-poll hook"), "{m}");
    let out = match poll_once(&mut w) {
        Poll::Ready(o) => o,
        Poll::Pending => panic!("REVIEW the second poll completes"),
    };
    let stats = w.stats();
    assert_eq!(stats.polls, 2, "REVIEW polls counted: {stats:?}");
    drop(w);
    drop(out);
    let c = report.children();
    assert_eq!(
        c[0].outcome,
        awaitkit::watch::Outcome::Completed,
        "REVIEW {:?}",
        c[0]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    check(1);
});

// The free `wait(.., FirstError)`: the input futures are collected, then the
// assertion panics with them alive.
scenario!(wait_fn_first_error_children_dropped_in_unwind, {
    let msg = expect_panic(|| {
        drop(awaitkit::wait(
            [Pend(Probe::quiet("child")), Pend(Probe::quiet("child"))],
            awaitkit::ReturnWhen::FirstError,
        ))
    });
    assert!(msg.contains("try_wait"), "{msg}");
    check(2);
});
