#![cfg(feature = "test-util")]
//! Adversarial review of batch, retry, first_ok, staggered_race, wait,
//! timeout and watch: panics injected at every call of user code, double
//! destructor panics (which aborted the process in batch, first_ok and
//! retry), values dropped during another panic's unwind, polls after
//! completion, and a watched future whose conversion panics.

#[macro_use]
mod common;

use common::child::{Kid, is_child, run_in_child};

use awaitkit::{first_ok, process_batch, staggered_race};
use common::faults::*;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// Helpers: a value whose destructor can panic and records whether it ran
// during an unwind; a child whose destructor can panic.
// ---------------------------------------------------------------------------

static BOMB_DROPS: AtomicUsize = AtomicUsize::new(0);
static BOMB_DROPPED_WHILE_PANICKING: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct Bomb {
    explode: bool,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        BOMB_DROPS.fetch_add(1, Ordering::SeqCst);
        if std::thread::panicking() {
            BOMB_DROPPED_WHILE_PANICKING.store(true, Ordering::SeqCst);
        }
        if self.explode {
            panic!("bomb output/item destructor");
        }
    }
}

fn noop_cx_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

// ---------------------------------------------------------------------------
// 1. Double destructor panics: the first panic propagates, no abort (each
//    case aborted the process before the fix).
// ---------------------------------------------------------------------------

/// `process_batch` dropped while one call is in flight (its destructor
/// panics) and one output is collected (its destructor panics too).
#[test]
fn batch_drop_with_panicking_child_and_panicking_output_does_not_abort() {
    if !is_child() {
        return run_in_child("batch_drop_with_panicking_child_and_panicking_output_does_not_abort");
    }
    let mut batch = process_batch(0..2, 2, |i| Kid {
        out: if i == 1 {
            Some(Bomb { explode: true })
        } else {
            None
        },
        panic_on_drop: i == 0,
    });
    assert!(noop_cx_poll(&mut batch).is_pending());
    assert_eq!(batch.completed(), 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(batch)));
    assert!(r.is_err(), "the first destructor panic propagates");
}

/// The same with items not yet started whose destructors panic (the item
/// iterator is dropped after the engine's panic, during the unwind).
#[test]
fn batch_drop_with_panicking_child_and_panicking_pending_item_does_not_abort() {
    if !is_child() {
        return run_in_child(
            "batch_drop_with_panicking_child_and_panicking_pending_item_does_not_abort",
        );
    }
    let items = vec![Bomb { explode: false }, Bomb { explode: true }];
    let mut batch = process_batch(items, 1, |b: Bomb| {
        common::forget_reachably(b);
        Kid::<()> {
            out: None,
            panic_on_drop: true,
        }
    });
    assert!(noop_cx_poll(&mut batch).is_pending());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(batch)));
    assert!(r.is_err(), "the first destructor panic propagates");
}

/// `first_ok` dropped while one child is pending (its destructor panics)
/// and one error is kept (its destructor panics).
#[test]
fn first_ok_drop_with_panicking_child_and_panicking_error_does_not_abort() {
    if !is_child() {
        return run_in_child(
            "first_ok_drop_with_panicking_child_and_panicking_error_does_not_abort",
        );
    }
    let kids = vec![
        Kid::<Result<(), Bomb>> {
            out: None,
            panic_on_drop: true,
        },
        Kid {
            out: Some(Err(Bomb { explode: true })),
            panic_on_drop: false,
        },
    ];
    let mut race = first_ok(kids);
    assert!(noop_cx_poll(&mut race).is_pending());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(race)));
    assert!(r.is_err(), "the first destructor panic propagates");
}

/// Non-aborting variant of the batch case: the collected outputs are dropped
/// *during* the unwind of the child's destructor panic, so to them
/// `thread::panicking()` is true. lib.rs: "The others are not dropped during
/// that panic's unwind: to them `std::thread::panicking()` is `false`".
#[test]
fn batch_outputs_are_not_dropped_during_the_childs_unwind() {
    // Own process state: run in a child process to keep the statics clean.
    if !is_child() {
        return run_in_child("batch_outputs_are_not_dropped_during_the_childs_unwind");
    }
    BOMB_DROPPED_WHILE_PANICKING.store(false, Ordering::SeqCst);
    let mut batch = process_batch(0..2, 2, |i| Kid {
        out: if i == 1 {
            Some(Bomb { explode: false })
        } else {
            None
        },
        panic_on_drop: i == 0,
    });
    assert!(noop_cx_poll(&mut batch).is_pending());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(batch)));
    assert!(r.is_err());
    assert!(
        !BOMB_DROPPED_WHILE_PANICKING.load(Ordering::SeqCst),
        "a collected output of the batch was dropped during the unwind of a call's destructor \
         panic (thread::panicking() was true for it)"
    );
}

/// Same for first_ok's kept errors.
#[test]
fn first_ok_errors_are_not_dropped_during_the_childs_unwind() {
    if !is_child() {
        return run_in_child("first_ok_errors_are_not_dropped_during_the_childs_unwind");
    }
    BOMB_DROPPED_WHILE_PANICKING.store(false, Ordering::SeqCst);
    let kids = vec![
        Kid::<Result<(), Bomb>> {
            out: None,
            panic_on_drop: true,
        },
        Kid {
            out: Some(Err(Bomb { explode: false })),
            panic_on_drop: false,
        },
    ];
    let mut race = first_ok(kids);
    assert!(noop_cx_poll(&mut race).is_pending());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(race)));
    assert!(r.is_err());
    assert!(
        !BOMB_DROPPED_WHILE_PANICKING.load(Ordering::SeqCst),
        "a kept error of first_ok was dropped during the unwind of a child's destructor panic"
    );
}

// ---------------------------------------------------------------------------
// 2. Panic injection at every call of user code (combinators the existing
//    panic_injection.rs does not explore).
// ---------------------------------------------------------------------------

#[test]
fn pi_first_ok() {
    explore("first_ok", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| {
            if i == 0 {
                Err(i)
            } else {
                Ok::<usize, usize>(i)
            }
        });
        let mut run =
            Run::new(ctx, "first_ok", OnPanic::Poisons, first_ok(children)).with_triggers(triggers);
        run.play("P F0 P N2 P F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("first_ok's output", out, Ok((1, 1)))
        });
    });
}

#[test]
fn pi_first_ok_all_fail() {
    explore("first_ok_all_fail", |ctx| {
        let (children, triggers) = ctx.parked_n(3, Err::<usize, usize>);
        let mut run =
            Run::new(ctx, "first_ok", OnPanic::Poisons, first_ok(children)).with_triggers(triggers);
        run.play("P F2 P F0 P F1 P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("first_ok's output", out, Err(vec![0, 1, 2]))
        });
    });
}

#[test]
fn pi_first_ok_cancelled() {
    explore("first_ok_cancelled", |ctx| {
        let (children, triggers) = ctx.parked_n(3, |i| {
            if i == 0 {
                Err(i)
            } else {
                Ok::<usize, usize>(i)
            }
        });
        let mut run =
            Run::new(ctx, "first_ok", OnPanic::Poisons, first_ok(children)).with_triggers(triggers);
        run.play("P F0 P X");
        run.finish(false, |_, _| {});
    });
}

fn staggered_scenario(ctx: &Ctx, script: &str, want: Result<(usize, usize), Vec<usize>>) {
    let (a0, t0) = ctx.parked("child 0", Err::<usize, usize>(0));
    let (a1, t1) = ctx.parked("child 1", Ok(1));
    let (a2, t2) = ctx.parked("child 2", Err(2));
    let plan = ctx.plan.clone();
    let factories = vec![a0, a1, a2].into_iter().enumerate().map(move |(i, a)| {
        plan.hit(|| format!("iterator next ({i})"));
        let plan = plan.clone();
        move || {
            plan.hit(|| format!("factory {i}"));
            a
        }
    });
    let race = staggered_race(factories, 100 * MS).with_timer(ctx.timer());
    // `Continues`: documented to refuse after most panics, and to go on
    // after the task's waker panicked in the self-wake; a refusal with a
    // clear message is accepted either way.
    let mut run =
        Run::new(ctx, "staggered_race", OnPanic::Continues, race).with_triggers(vec![t0, t1, t2]);
    run.play(script);
    run.finish(true, |ctx, out| {
        ctx.check_eq("staggered_race's output", out, want)
    });
}

#[test]
fn pi_staggered_race_delay_then_win() {
    explore("staggered_race_delay_then_win", |ctx| {
        staggered_scenario(ctx, "P A100 E P P F0 P F1 P", Ok((1, 1)))
    });
}

#[test]
fn pi_staggered_race_failure_starts_next() {
    explore("staggered_race_failure_starts_next", |ctx| {
        staggered_scenario(ctx, "P F0 P P A100 E P P F2 P F1 P", Ok((1, 1)))
    });
}

#[test]
fn pi_staggered_race_cancelled() {
    explore("staggered_race_cancelled", |ctx| {
        staggered_scenario_cancel(ctx)
    });
}

fn staggered_scenario_cancel(ctx: &Ctx) {
    let (a0, t0) = ctx.parked("child 0", Err::<usize, usize>(0));
    let (a1, t1) = ctx.parked("child 1", Ok(1));
    let plan = ctx.plan.clone();
    let factories = vec![a0, a1].into_iter().enumerate().map(move |(i, a)| {
        let plan = plan.clone();
        move || {
            plan.hit(|| format!("factory {i}"));
            a
        }
    });
    let race = staggered_race(factories, 100 * MS).with_timer(ctx.timer());
    let mut run =
        Run::new(ctx, "staggered_race", OnPanic::Continues, race).with_triggers(vec![t0, t1]);
    run.play("P A100 E P P X");
    run.finish(false, |_, _| {});
}

/// `Retry`: the attempt succeeded, its destructor panics as the retry drops
/// it, and the success value's destructor panics as that unwind drops it.
#[test]
fn retry_success_value_dropped_during_attempt_destructor_unwind_does_not_abort() {
    if !is_child() {
        return run_in_child(
            "retry_success_value_dropped_during_attempt_destructor_unwind_does_not_abort",
        );
    }
    let mut retry = awaitkit::RetryPolicy::new(3).retry(|| Kid::<Result<Bomb, ()>> {
        out: Some(Ok(Bomb { explode: true })),
        panic_on_drop: true,
    });
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| noop_cx_poll(&mut retry)));
    assert!(r.is_err(), "the attempt's destructor panic propagates");
    drop(retry);
}

/// Fail-fast `process_batch`: call 1 fails with an error whose destructor
/// panics; dropping call 0 (in flight) panics too, while the error is held.
#[test]
fn try_batch_fail_fast_with_panicking_error_and_panicking_sibling_does_not_abort() {
    if !is_child() {
        return run_in_child(
            "try_batch_fail_fast_with_panicking_error_and_panicking_sibling_does_not_abort",
        );
    }
    let mut batch = process_batch(0..2, 2, |i| Kid::<Result<(), Bomb>> {
        out: if i == 1 {
            Some(Err(Bomb { explode: true }))
        } else {
            None
        },
        panic_on_drop: i == 0,
    })
    .fail_fast();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| noop_cx_poll(&mut batch)));
    assert!(r.is_err(), "the sibling's destructor panic propagates");
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(batch)));
}

// ---------------------------------------------------------------------------
// 3. watch::Report: a future whose `into_future` panics registers nothing
//    (it left a phantom child `Running` forever).
// ---------------------------------------------------------------------------

struct PanickyIntoFuture;

impl std::future::IntoFuture for PanickyIntoFuture {
    type Output = ();
    type IntoFuture = std::future::Ready<()>;
    fn into_future(self) -> Self::IntoFuture {
        panic!("into_future panics");
    }
}

#[test]
fn report_watch_with_panicking_into_future_registers_nothing() {
    let report = awaitkit::watch::Report::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _w = report.watch("ghost", PanickyIntoFuture);
    }));
    assert!(r.is_err());
    let children = report.children();
    assert!(
        children.is_empty(),
        "a future that was never created is reported: {:?} (len {}); it stays `Running` forever",
        children,
        report.len()
    );
}

// ---------------------------------------------------------------------------
// 4. Panic injection on the batch *streams* (ordered / unordered / stream
//    source), which tests/panic_injection.rs does not explore.
// ---------------------------------------------------------------------------

fn batch_parts_local<O: 'static, G: Fn(usize) -> O>(
    ctx: &Ctx,
    n: usize,
    out: G,
) -> (impl FnMut(usize) -> Child<O> + use<O, G>, Vec<Trigger>) {
    let (children, triggers) = ctx.parked_n(n, out);
    let mut slots: Vec<Option<Child<O>>> = children.into_iter().map(Some).collect();
    let plan = ctx.plan.clone();
    let f = move |i: usize| {
        plan.hit(|| format!("batch function f({i})"));
        slots[i].take().expect("each item is started once")
    };
    (f, triggers)
}

/// Items yielded must be a prefix of `want` (then only `None`s): nothing
/// handed out twice, out of order or made up.
fn check_stream_items<T: PartialEq + std::fmt::Debug>(
    ctx: &Ctx,
    what: &str,
    got: &[Option<T>],
    want: &[Option<T>],
) {
    let n = got.iter().take_while(|x| x.is_some()).count();
    let ok_prefix = n <= want.len() && got[..n] == want[..n];
    let ok_tail = got[n..].iter().all(Option::is_none);
    ctx.check(ok_prefix && ok_tail, || {
        format!("{what}: yielded {got:?}, expected a prefix of {want:?}")
    });
    if ctx.fired().is_none() {
        ctx.check(
            got.len() >= want.len() && got[..want.len()] == *want,
            || format!("{what} (no fault): yielded {got:?}, expected {want:?}"),
        );
    }
}

#[test]
fn pi_batch_ordered_with_progress() {
    explore("batch_ordered_with_progress", |ctx| {
        let (f, triggers) = batch_parts_local(ctx, 4, |i| i);
        let plan = ctx.plan.clone();
        let stream = process_batch(0..4, 2, f)
            .on_progress(move |p| plan.hit(|| format!("progress callback ({} done)", p.done)))
            .ordered();
        let mut run = Run::stream(ctx, "batch ordered", NextOf(stream)).with_triggers(triggers);
        run.play("P F1 P F0 P P P F2 F3 P P P P");
        let items = run.take_items();
        check_stream_items(
            ctx,
            "ordered",
            &items,
            &[Some(0), Some(1), Some(2), Some(3), None],
        );
        run.finish(false, |_, _| {});
    });
}

#[test]
fn pi_batch_unordered_fail_fast() {
    explore("batch_unordered_fail_fast", |ctx| {
        let (f, triggers) = batch_parts_local(ctx, 4, |i| {
            if i == 1 {
                Err(i)
            } else {
                Ok::<usize, usize>(i)
            }
        });
        let stream = process_batch(0..4, 3, f).fail_fast().unordered();
        let mut run =
            Run::stream(ctx, "batch unordered ff", NextOf(stream)).with_triggers(triggers);
        run.play("P F0 P P F1 P P P");
        let items = run.take_items();
        check_stream_items(
            ctx,
            "unordered fail-fast",
            &items,
            &[Some((0, Ok(0))), Some((1, Err(1))), None],
        );
        run.finish(false, |_, _| {});
    });
}

#[test]
fn pi_batch_stream_source_ordered_fixed() {
    explore("batch_stream_source_ordered_fixed", |ctx| {
        let (f, triggers) = batch_parts_local(ctx, 4, |i| i);
        let plan = ctx.plan.clone();
        let mut next = 0usize;
        let source = futures::stream::poll_fn(move |_cx| {
            plan.hit(|| format!("source poll_next ({next})"));
            if next < 4 {
                next += 1;
                Poll::Ready(Some(next - 1))
            } else {
                Poll::Ready(None)
            }
        });
        let plan = ctx.plan.clone();
        let stream = awaitkit::process_batch_stream(source, 2, f)
            .fixed_batches()
            .on_progress(move |p| plan.hit(|| format!("progress callback ({} done)", p.done)))
            .ordered();
        let mut run =
            Run::stream(ctx, "batch stream ordered fixed", NextOf(stream)).with_triggers(triggers);
        run.play("P F1 P F0 P P P F3 P F2 P P P P");
        let items = run.take_items();
        check_stream_items(
            ctx,
            "stream-source ordered fixed",
            &items,
            &[Some(0), Some(1), Some(2), Some(3), None],
        );
        run.finish(false, |_, _| {});
    });
}

/// The source iterator is user code too: with an unknown total and progress
/// reporting, the batch pulls the next item *inside* the pass over the calls.
#[test]
fn pi_batch_iterator_pulled_inside_the_pass() {
    explore("batch_iterator_pulled_inside_the_pass", |ctx| {
        let (f, triggers) = batch_parts_local(ctx, 4, |i| i);
        let plan = ctx.plan.clone();
        let items = (0..4usize).filter(move |i| {
            plan.hit(|| format!("iterator next ({i})"));
            true
        });
        let plan = ctx.plan.clone();
        let batch = process_batch(items, 2, f).on_progress(move |p| {
            plan.hit(|| format!("progress ({} done, total {:?})", p.done, p.total))
        });
        let mut run = Run::new(ctx, "batch", OnPanic::Poisons, batch).with_triggers(triggers);
        run.play("P F1 P P F0 P P F3 P F2 P P");
        run.finish(true, |ctx, out| {
            ctx.check_eq("batch output", out, vec![0, 1, 2, 3])
        });
    });
}

/// Wakes from another thread during every poll, cancel after every poll:
/// first_ok and staggered_race drop every child exactly once.
#[test]
fn cancel_after_every_poll_with_remote_wakes() {
    common::watchdog("cancel_after_every_poll_with_remote_wakes", || {
        use common::{Counter, RemoteYield, Tracker, WakerThread};
        let thread = WakerThread::spawn();
        for stop in 0..12 {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let kids: Vec<_> = (0..6)
                .map(|i| {
                    let tok = tracker.token();
                    let fut = RemoteYield::new(i % 3 + 1, i, &thread, &polls);
                    async move {
                        let _tok = tok;
                        let v = fut.await;
                        if v == 5 { Ok(v) } else { Err(v) }
                    }
                })
                .collect();
            let mut race = first_ok(kids);
            let w = common::CountingWaker::new();
            for _ in 0..stop {
                if common::poll_once(&mut race, &w).is_ready() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(race);
            assert_eq!(
                tracker.live(),
                0,
                "first_ok: children alive after drop (stop {stop})"
            );

            let tracker2 = Tracker::new();
            let factories: Vec<_> = (0..6)
                .map(|i| {
                    let tok = tracker2.token();
                    let t = &thread;
                    let fut = RemoteYield::new(i % 3 + 1, i, t, &polls);
                    move || async move {
                        let _tok = tok;
                        let v = fut.await;
                        if v == 5 { Ok(v) } else { Err(v) }
                    }
                })
                .collect();
            let mut race = staggered_race(factories, Duration::ZERO);
            for _ in 0..stop {
                if common::poll_once(&mut race, &w).is_ready() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(race);
            assert_eq!(
                tracker2.live(),
                0,
                "staggered_race: children alive after drop (stop {stop})"
            );
            assert_eq!(
                w.live_clones(),
                0,
                "parent waker clones leaked (stop {stop})"
            );
        }
    });
}

/// Polling after completion panics (documented) — and must not turn a
/// terminated future back into a non-terminated one, nor change the next
/// refusal into "polled after a panic in one of its futures".
#[test]
fn poll_after_completion_keeps_the_future_terminated() {
    use futures::future::FusedFuture;
    fn check<F: Future + Unpin + FusedFuture>(name: &str, mut f: F) -> Vec<String> {
        let mut bad = Vec::new();
        assert!(noop_cx_poll(&mut f).is_ready(), "{name}: completes at once");
        assert!(f.is_terminated(), "{name}: terminated after its output");
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = noop_cx_poll(&mut f);
        }))
        .expect_err("poll after completion panics");
        let first = common::panic_message(&*first);
        if !f.is_terminated() {
            bad.push(format!(
                "{name}: is_terminated() turned false after a poll-after-completion panic \
                 (first refusal: {first:?})"
            ));
        }
        let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = noop_cx_poll(&mut f);
        }))
        .expect_err("poll after completion panics");
        let second = common::panic_message(&*second);
        if !second.contains("after completion") {
            bad.push(format!(
                "{name}: the second poll after completion says {second:?} (it completed; no \
                 future of it panicked)"
            ));
        }
        bad
    }
    let mut bad = Vec::new();
    bad.extend(check(
        "FirstOk",
        first_ok([std::future::ready(Ok::<u8, u8>(1))]),
    ));
    bad.extend(check(
        "WaitAny",
        awaitkit::wait_any([std::future::ready(1u8)]),
    ));
    bad.extend(check(
        "Wait",
        awaitkit::wait(
            [std::future::ready(1u8)],
            awaitkit::ReturnWhen::AllCompleted,
        ),
    ));
    bad.extend(check(
        "StaggeredRace",
        staggered_race([|| std::future::ready(Ok::<u8, u8>(1))], Duration::ZERO),
    ));
    bad.extend(check(
        "Retry",
        awaitkit::RetryPolicy::new(1).retry(|| std::future::ready(Ok::<u8, u8>(1))),
    ));
    bad.extend(check("Batch", process_batch(0..1, 1, std::future::ready)));
    bad.extend(check(
        "Timeout",
        awaitkit::timeout(Duration::from_secs(1), std::future::ready(1u8)),
    ));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
