#![cfg(feature = "test-util")]
//! Adversarial review of two changes:
//!
//! * 7d862ba — `Pass::visit` walks the rest of a level-0 word in an inner
//!   loop (differential trace against 7d862ba^, invariants: no double poll
//!   in one parent poll, no unwoken poll, no lost wake, panics in poll);
//! * ccc4b89 — Batch drop order / `Core` Drop, fail-fast `hand_back`,
//!   `FirstOk` Drop, `Retry::drop_attempt`, completion checks before the
//!   poison guard.

#[macro_use]
mod common;

use common::child::{is_child, run_in_child};

use awaitkit::{AsCompleted, first_ok, process_batch};
use futures_core::{FusedFuture, FusedStream, Stream};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<(String, bool)>>>;

fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

/// Records its drop (name, `thread::panicking()`), panics if `explode`.
struct Rec {
    name: String,
    log: Log,
    explode: bool,
}

impl Rec {
    fn new(name: impl Into<String>, log: &Log, explode: bool) -> Rec {
        Rec {
            name: name.into(),
            log: log.clone(),
            explode,
        }
    }
}

impl Drop for Rec {
    fn drop(&mut self) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.name.clone(), std::thread::panicking()));
        if self.explode {
            panic!("destructor of {}", self.name);
        }
    }
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rec({})", self.name)
    }
}

fn entries(log: &Log) -> Vec<(String, bool)> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A child: ready with `out` on its first poll (if `Some`), else pending
/// forever; holds `rec` (dropped with it).
struct Kid<O> {
    out: Option<O>,
    _rec: Option<Rec>,
}

impl<O> Unpin for Kid<O> {}

impl<O> Future for Kid<O> {
    type Output = O;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<O> {
        match self.out.take() {
            Some(o) => Poll::Ready(o),
            None => Poll::Pending,
        }
    }
}

fn noop_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn noop_poll_next<S: Stream + Unpin>(s: &mut S) -> Poll<Option<S::Item>> {
    let waker = futures::task::noop_waker();
    Pin::new(s).poll_next(&mut Context::from_waker(&waker))
}

fn msg(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string payload>".into()
    }
}

/// Runs `f` inside the destructor of a value dropped during an unwind
/// (`thread::panicking()` is true while `f` runs); returns what `f` gave.
fn during_unwind<R: Send + 'static>(f: impl FnOnce() -> R + 'static) -> Option<R> {
    struct OnDrop<G: FnOnce()>(Option<G>);
    impl<G: FnOnce()> Drop for OnDrop<G> {
        fn drop(&mut self) {
            assert!(std::thread::panicking());
            (self.0.take().unwrap())();
        }
    }
    let out: Arc<Mutex<Option<R>>> = Arc::new(Mutex::new(None));
    let out2 = out.clone();
    let r = catch_unwind(AssertUnwindSafe(move || {
        let _guard = OnDrop(Some(move || {
            let r = f();
            *out2.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }));
        panic!("outer panic");
    }));
    let payload = r.expect_err("the outer panic propagates");
    assert_eq!(
        msg(&payload),
        "outer panic",
        "the outer panic is the one that propagates"
    );
    out.lock().unwrap_or_else(|e| e.into_inner()).take()
}

// ===========================================================================
// Change 2 (ccc4b89): Batch drop order, Core's Drop.
// ===========================================================================

/// The changelog (0.x "A second panicking destructor …"): "each part is
/// dropped on its own, none of them during another's unwind
/// (`std::thread::panicking()` is `false` to them …) … The batch's parts
/// are dropped in this order: its pause, rate-limit grant and progress
/// callback, then the calls, the items not started, the outputs not handed
/// out and the function."  With the progress callback dropped *before*
/// `Core`, a callback whose destructor panics makes the calls, the items,
/// the outputs and `f` drop during that unwind (plain field drop glue).
#[test]
fn batch_calls_items_and_f_not_dropped_during_progress_callback_unwind() {
    let log = new_log();
    let progress_guard = Rec::new("progress callback", &log, true);
    let f_guard = Rec::new("f", &log, false);
    let items: Vec<Rec> = (0..3)
        .map(|i| Rec::new(format!("item {i}"), &log, false))
        .collect();
    let mut batch = process_batch(items, 1, move |item: Rec| {
        let _f = &f_guard;
        Kid::<()> {
            out: None,
            _rec: Some(item),
        }
    })
    .on_progress(move |_| {
        let _p = &progress_guard;
    });
    assert!(noop_poll(&mut batch).is_pending());
    let r = catch_unwind(AssertUnwindSafe(move || drop(batch)));
    let payload = r.expect_err("the callback's destructor panic propagates");
    assert_eq!(msg(&payload), "destructor of progress callback");
    let entries = entries(&log);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["item 0", "item 1", "item 2", "f"] {
        assert!(names.contains(&want), "{want} dropped (log {entries:?})");
    }
    let during: Vec<&(String, bool)> = entries
        .iter()
        .filter(|(n, p)| *p && n != "progress callback")
        .collect();
    assert!(
        during.is_empty(),
        "the calls / items / f were dropped during the progress callback's unwind \
         (thread::panicking() true for them): {during:?}; full drop log {entries:?}"
    );
}

/// A timer whose destructor can panic (the batch's pause timer, dropped
/// first by the new order).
struct BombTimer {
    clock: awaitkit::time::ManualClock,
    _rec: Rec,
}

impl awaitkit::time::Timer for BombTimer {
    type Sleep = <awaitkit::time::ManualClock as awaitkit::time::Timer>::Sleep;
    fn now(&self) -> Instant {
        awaitkit::time::Timer::now(&self.clock)
    }
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        awaitkit::time::Timer::sleep_until(&self.clock, deadline)
    }
    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        awaitkit::time::Timer::reset(&self.clock, sleep, deadline)
    }
}

/// Same with the batch's timer (`with_timer`) panicking in its destructor:
/// everything in `Core` is dropped during that unwind.
#[test]
fn batch_calls_not_dropped_during_timer_destructor_unwind() {
    let log = new_log();
    let timer = BombTimer {
        clock: awaitkit::time::ManualClock::new(),
        _rec: Rec::new("timer", &log, true),
    };
    let log2 = log.clone();
    let mut batch = process_batch(0..3, 2, move |i| Kid::<()> {
        out: None,
        _rec: Some(Rec::new(format!("call {i}"), &log2, false)),
    })
    .with_timer(timer);
    assert!(noop_poll(&mut batch).is_pending());
    let r = catch_unwind(AssertUnwindSafe(move || drop(batch)));
    let payload = r.expect_err("the timer's destructor panic propagates");
    assert_eq!(msg(&payload), "destructor of timer");
    let entries = entries(&log);
    let during: Vec<&(String, bool)> = entries.iter().filter(|(n, p)| *p && n != "timer").collect();
    assert!(
        during.is_empty(),
        "calls dropped during the timer's unwind: {during:?}; full log {entries:?}"
    );
}

/// Two destructors panic at once: the progress callback's (dropped first by
/// the new order) and a call's. The process must not abort, and the call's
/// panic… is discarded (the callback's propagates).
#[test]
fn batch_progress_callback_and_call_destructors_both_panic_no_abort() {
    if !is_child() {
        return run_in_child("batch_progress_callback_and_call_destructors_both_panic_no_abort");
    }
    let log = new_log();
    let progress_guard = Rec::new("progress callback", &log, true);
    let log2 = log.clone();
    let mut batch = process_batch(0..3, 2, move |i| Kid::<Rec> {
        out: if i == 0 {
            Some(Rec::new("output 0", &log2, true))
        } else {
            None
        },
        _rec: Some(Rec::new(format!("call {i}"), &log2, i == 1)),
    })
    .on_progress(move |_| {
        let _p = &progress_guard;
    });
    let _ = noop_poll(&mut batch);
    let r = catch_unwind(AssertUnwindSafe(move || drop(batch)));
    assert!(r.is_err());
}

/// Observable drop order: the calls first (the callback outlives every
/// call, as before the drop was made panic-safe), then the progress
/// callback (the order `Batch`'s `Drop` documents).
#[test]
fn batch_drop_order_calls_before_progress_callback() {
    let log = new_log();
    let progress_guard = Rec::new("progress callback", &log, false);
    let log2 = log.clone();
    let mut batch = process_batch(0..2, 2, move |i| Kid::<()> {
        out: None,
        _rec: Some(Rec::new(format!("call {i}"), &log2, false)),
    })
    .on_progress(move |_| {
        let _p = &progress_guard;
    });
    let _ = noop_poll(&mut batch);
    drop(batch);
    let names: Vec<String> = entries(&log).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["call 0", "call 1", "progress callback"],
        "the documented order: the calls, then the progress callback"
    );
}

// --- fail-fast / hand_back --------------------------------------------------

/// A fail-fast batch polled from a destructor during an unwind: a sibling's
/// destructor panics while failing fast. `hand_back` discards the panic and
/// the failure comes out; nothing is dropped twice, no abort.
#[test]
fn try_batch_fail_fast_polled_during_unwind_hands_the_error_back() {
    if !is_child() {
        return run_in_child("try_batch_fail_fast_polled_during_unwind_hands_the_error_back");
    }
    let log = new_log();
    let log2 = log.clone();
    let out = during_unwind(move || {
        let log3 = log2.clone();
        let mut batch = process_batch(0..3, 3, move |i| Kid::<Result<(), Rec>> {
            out: if i == 1 {
                Some(Err(Rec::new("error 1", &log3, false)))
            } else {
                None
            },
            _rec: Some(Rec::new(format!("call {i}"), &log3, i == 0)),
        })
        .fail_fast();
        let r = noop_poll(&mut batch);
        let terminated = batch.is_terminated();
        drop(batch);
        (format!("{r:?}"), terminated)
    });
    let (r, terminated) = out.expect("ran");
    assert_eq!(r, "Ready(Err(Rec(error 1)))");
    assert!(
        terminated,
        "finished normally (the panic was discarded): terminated"
    );
    let entries = entries(&log);
    let count = |n: &str| entries.iter().filter(|(m, _)| m == n).count();
    for n in ["call 0", "call 1", "call 2", "error 1"] {
        assert_eq!(count(n), 1, "{n} dropped once: {entries:?}");
    }
}

/// Fail-fast with a sibling destructor panic (not unwinding): the failure is
/// dropped before the panic propagates, outside the unwind, once; the batch
/// is then poisoned: the next poll says "after a panic", `is_terminated`
/// is false; dropping it drops nothing twice.
#[test]
fn try_batch_fail_fast_sibling_panic_failure_dropped_once_outside_unwind() {
    let log = new_log();
    let log2 = log.clone();
    let mut batch = process_batch(0..3, 3, move |i| Kid::<Result<(), Rec>> {
        out: if i == 1 {
            Some(Err(Rec::new("error 1", &log2, false)))
        } else {
            None
        },
        _rec: Some(Rec::new(format!("call {i}"), &log2, i == 2)),
    })
    .fail_fast();
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut batch)));
    assert_eq!(msg(&r.expect_err("propagates")), "destructor of call 2");
    assert!(!batch.is_terminated());
    let again = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut batch)));
    let m = msg(&again.expect_err("poisoned"));
    assert!(m.contains("after a panic"), "message: {m}");
    drop(batch);
    let entries = entries(&log);
    let count = |n: &str| entries.iter().filter(|(m, _)| m == n).count();
    for n in ["call 0", "call 1", "call 2", "error 1"] {
        assert_eq!(count(n), 1, "{n} dropped once: {entries:?}");
    }
    let e = entries.iter().find(|(n, _)| n == "error 1").unwrap();
    assert!(!e.1, "the failure was dropped during the unwind");
}

/// Fail-fast unordered stream: after the failure is yielded the stream
/// returns `None` forever and is terminated.
#[test]
fn try_batch_unordered_after_failure_is_fused() {
    let mut s = process_batch(0..4, 4, |i| Kid::<Result<usize, usize>> {
        out: Some(if i == 2 { Err(i) } else { Ok(i) }),
        _rec: None,
    })
    .fail_fast()
    .unordered();
    let mut got = Vec::new();
    loop {
        match noop_poll_next(&mut s) {
            Poll::Ready(Some(x)) => got.push(x),
            Poll::Ready(None) => break,
            Poll::Pending => panic!("pending with everything ready"),
        }
        assert!(got.len() < 10);
    }
    assert!(got.iter().any(|x| x.1.is_err()), "{got:?}");
    assert!(s.is_terminated());
    assert!(matches!(noop_poll_next(&mut s), Poll::Ready(None)));
    assert!(s.is_terminated());
}

// --- poll after completion --------------------------------------------------

fn poll_ready<F: Future + Unpin>(f: &mut F) -> bool {
    (0..10).any(|_| noop_poll(f).is_ready())
}

fn assert_refused<F: Future + Unpin + FusedFuture>(mut f: F, what: &str)
where
    F::Output: std::fmt::Debug,
{
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut f)));
    let m = msg(&r.expect_err("a poll after completion panics"));
    assert!(
        m.contains(&format!("`{what}` polled after completion")),
        "{what}: message {m:?}"
    );
    assert!(
        f.is_terminated(),
        "{what}: still terminated after the refused poll"
    );
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut f)));
    let m = msg(&r.expect_err("again"));
    assert!(
        m.contains("after completion"),
        "{what}: second refusal message {m:?}"
    );
}

#[test]
fn poll_after_completion_every_changed_type() {
    // WaitAny
    let mut w = awaitkit::wait_any([std::future::ready(1), std::future::ready(2)]);
    assert!(noop_poll(&mut w).is_ready());
    assert!(w.is_terminated());
    assert_refused(w, "WaitAny");
    // Wait
    let mut w = awaitkit::wait([std::future::ready(1)], awaitkit::ReturnWhen::AllCompleted);
    assert!(noop_poll(&mut w).is_ready());
    assert!(w.is_terminated());
    assert_refused(w, "Wait");
    // FirstOk, success and all-failed
    let mut f = first_ok([std::future::ready(Ok::<u8, u8>(1))]);
    assert!(noop_poll(&mut f).is_ready());
    assert!(f.is_terminated());
    assert_refused(f, "FirstOk");
    let mut f = first_ok([std::future::ready(Err::<u8, u8>(1))]);
    assert!(noop_poll(&mut f).is_ready());
    assert_refused(f, "FirstOk");
    let mut f = first_ok(Vec::<std::future::Ready<Result<u8, u8>>>::new());
    assert_eq!(noop_poll(&mut f), Poll::Ready(Err(vec![])));
    assert_refused(f, "FirstOk");
    // Retry
    let mut r = awaitkit::RetryPolicy::new(2).retry(|| std::future::ready(Ok::<u8, u8>(3)));
    assert!(noop_poll(&mut r).is_ready());
    assert_refused(r, "Retry");
    // Batch and TryBatch
    let mut b = process_batch(0..3, 2, std::future::ready);
    assert!(poll_ready(&mut b));
    assert_refused(b, "Batch");
    let mut b = process_batch(0..3, 2, |i| {
        std::future::ready(if i == 1 { Err(i) } else { Ok(i) })
    })
    .fail_fast();
    assert!(poll_ready(&mut b));
    assert!(b.is_terminated());
    // The fail-fast batch's type is `TryBatch`: which name does the message give?
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut b)));
    let m = msg(&r.expect_err("refused"));
    assert!(m.contains("polled after completion"), "TryBatch: {m}");
    assert!(b.is_terminated());
}

// --- FirstOk ---------------------------------------------------------------

/// A winner while a loser's destructor panics: the value is dropped once,
/// outside that unwind; the future is poisoned (not terminated), the next
/// poll says so, and dropping it drops nothing twice.
#[test]
fn first_ok_win_with_panicking_loser() {
    let log = new_log();
    let kids: Vec<Kid<Result<Rec, Rec>>> = vec![
        Kid {
            out: None,
            _rec: Some(Rec::new("loser 0", &log, true)),
        },
        Kid {
            out: Some(Err(Rec::new("error 1", &log, false))),
            _rec: Some(Rec::new("kid 1", &log, false)),
        },
        Kid {
            out: Some(Ok(Rec::new("value 2", &log, false))),
            _rec: Some(Rec::new("kid 2", &log, false)),
        },
        Kid {
            out: None,
            _rec: Some(Rec::new("loser 3", &log, true)),
        },
    ];
    let mut f = first_ok(kids);
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut f)));
    assert_eq!(
        msg(&r.expect_err("a loser's panic propagates")),
        "destructor of loser 0"
    );
    assert!(!f.is_terminated());
    let r = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut f)));
    assert!(msg(&r.expect_err("poisoned")).contains("after a panic"));
    drop(f);
    let entries = entries(&log);
    let count = |n: &str| entries.iter().filter(|(m, _)| m == n).count();
    for n in ["loser 0", "error 1", "kid 1", "value 2", "kid 2", "loser 3"] {
        assert_eq!(count(n), 1, "{n} dropped once: {entries:?}");
    }
    let during: Vec<_> = entries.iter().filter(|(_, p)| *p).collect();
    assert!(during.is_empty(), "dropped during an unwind: {during:?}");
}

/// FirstOk polled from a destructor during an unwind, a loser's destructor
/// panics: the winner is handed back, nothing aborts.
#[test]
fn first_ok_win_during_unwind_hands_back() {
    if !is_child() {
        return run_in_child("first_ok_win_during_unwind_hands_back");
    }
    let log = new_log();
    let log2 = log.clone();
    let out = during_unwind(move || {
        let kids: Vec<Kid<Result<u32, Rec>>> = vec![
            Kid {
                out: None,
                _rec: Some(Rec::new("loser 0", &log2, true)),
            },
            Kid {
                out: Some(Err(Rec::new("error 1", &log2, true))),
                _rec: None,
            },
            Kid {
                out: Some(Ok(7)),
                _rec: None,
            },
        ];
        let mut f = first_ok(kids);
        let r = noop_poll(&mut f);
        let t = f.is_terminated();
        drop(f);
        (format!("{r:?}"), t)
    });
    assert_eq!(out.expect("ran"), ("Ready(Ok((2, 7)))".to_string(), true));
    let entries = entries(&log);
    assert_eq!(entries.len(), 2, "{entries:?}");
}

/// FirstOk dropped mid-way with a panicking child and a panicking kept error
/// *during an unwind* (its new Drop runs with `thread::panicking()`): no abort.
#[test]
fn first_ok_dropped_during_unwind_with_two_panicking_parts() {
    if !is_child() {
        return run_in_child("first_ok_dropped_during_unwind_with_two_panicking_parts");
    }
    let log = new_log();
    let kids: Vec<Kid<Result<u32, Rec>>> = vec![
        Kid {
            out: None,
            _rec: Some(Rec::new("kid 0", &log, true)),
        },
        Kid {
            out: Some(Err(Rec::new("error 1", &log, true))),
            _rec: None,
        },
        Kid {
            out: None,
            _rec: Some(Rec::new("kid 2", &log, true)),
        },
    ];
    let mut f = first_ok(kids);
    assert!(noop_poll(&mut f).is_pending());
    let f = Mutex::new(Some(f));
    let _ = during_unwind(move || drop(f));
    assert_eq!(entries(&log).len(), 3);
}

// --- Retry ---------------------------------------------------------------

/// A child attempt: pending, or ready with `out`; holds `rec`.
fn attempt<O>(out: Option<O>, rec: Rec) -> Kid<O> {
    Kid {
        out,
        _rec: Some(rec),
    }
}

/// A failed attempt whose destructor panics: the error is dropped once,
/// outside the unwind; the on_retry hook is not called; the next poll says
/// "after a panic"; not terminated; the operation is not called again.
#[test]
fn retry_failed_attempt_destructor_panics() {
    let log = new_log();
    let log2 = log.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let hooks = Arc::new(AtomicUsize::new(0));
    let h2 = hooks.clone();
    let mut r = awaitkit::RetryPolicy::new(3)
        .backoff(awaitkit::Backoff::none())
        .retry(move || {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            attempt::<Result<u32, Rec>>(
                Some(Err(Rec::new(format!("error {n}"), &log2, false))),
                Rec::new(format!("attempt {n}"), &log2, n == 0),
            )
        })
        .on_retry(move |_| {
            h2.fetch_add(1, Ordering::SeqCst);
        });
    let p = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut r)));
    assert_eq!(msg(&p.expect_err("propagates")), "destructor of attempt 0");
    assert!(!r.is_terminated());
    let p = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut r)));
    assert!(msg(&p.expect_err("poisoned")).contains("after a panic"));
    drop(r);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.load(Ordering::SeqCst), 0);
    let entries = entries(&log);
    assert_eq!(
        entries,
        [
            ("attempt 0".to_string(), false),
            ("error 0".to_string(), false)
        ],
        "attempt then its error, once each, outside any unwind"
    );
}

/// A timed-out attempt whose destructor panics (manual clock).
#[test]
fn retry_timed_out_attempt_destructor_panics() {
    let log = new_log();
    let log2 = log.clone();
    let clock = awaitkit::time::ManualClock::new();
    let mut r = awaitkit::RetryPolicy::new(3)
        .attempt_timeout(Duration::from_millis(10))
        .backoff(awaitkit::Backoff::none())
        .retry(move || attempt::<Result<u32, u32>>(None, Rec::new("attempt", &log2, true)))
        .with_timer(clock.clone());
    assert!(noop_poll(&mut r).is_pending());
    clock.advance(Duration::from_millis(20));
    let p = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut r)));
    assert_eq!(msg(&p.expect_err("propagates")), "destructor of attempt");
    assert!(!r.is_terminated());
    let p = catch_unwind(AssertUnwindSafe(|| noop_poll(&mut r)));
    assert!(msg(&p.expect_err("poisoned")).contains("after a panic"));
    drop(r);
    assert_eq!(entries(&log).len(), 1, "{:?}", entries(&log));
}

/// A retry polled during an unwind whose successful attempt's destructor
/// panics: the value is handed back, the retry is done (terminated).
#[test]
fn retry_success_during_unwind_hands_back() {
    if !is_child() {
        return run_in_child("retry_success_during_unwind_hands_back");
    }
    let log = new_log();
    let log2 = log.clone();
    let out = during_unwind(move || {
        let log3 = log2.clone();
        let mut r = awaitkit::RetryPolicy::new(3).retry(move || {
            attempt::<Result<u32, u32>>(Some(Ok(5)), Rec::new("attempt", &log3, true))
        });
        let p = noop_poll(&mut r);
        (format!("{p:?}"), r.is_terminated())
    });
    assert_eq!(out.expect("ran"), ("Ready(Ok(5))".to_string(), true));
    assert_eq!(entries(&log).len(), 1);
}

/// A retry polled during an unwind whose *failed* attempt's destructor
/// panics: the panic is discarded and the retry goes on with the next
/// attempt (the first attempt's error is then seen by the hook).
#[test]
fn retry_failure_during_unwind_goes_on() {
    if !is_child() {
        return run_in_child("retry_failure_during_unwind_goes_on");
    }
    let log = new_log();
    let log2 = log.clone();
    let out = during_unwind(move || {
        let log3 = log2.clone();
        let n = Arc::new(AtomicUsize::new(0));
        let mut r = awaitkit::RetryPolicy::new(3)
            .backoff(awaitkit::Backoff::none())
            .retry(move || {
                let i = n.fetch_add(1, Ordering::SeqCst);
                attempt::<Result<usize, usize>>(
                    Some(if i == 0 { Err(i) } else { Ok(i) }),
                    Rec::new(format!("attempt {i}"), &log3, i == 0),
                )
            });
        let mut polls = Vec::new();
        for _ in 0..5 {
            let p = noop_poll(&mut r);
            polls.push(format!("{p:?}"));
            if p.is_ready() {
                break;
            }
        }
        polls
    });
    let polls = out.expect("ran");
    assert_eq!(polls.last().unwrap(), "Ready(Ok(1))", "{polls:?}");
    assert_eq!(entries(&log).len(), 2);
}

// --- watch::Report ------------------------------------------------------------

/// `register` now converts before `counter::scale()` and the lock; a
/// conversion that panics leaves the report able to watch the next one.
#[test]
fn report_after_panicking_conversion_still_watches() {
    struct Panicky;
    impl std::future::IntoFuture for Panicky {
        type Output = ();
        type IntoFuture = std::future::Ready<()>;
        fn into_future(self) -> Self::IntoFuture {
            panic!("into_future");
        }
    }
    let report = awaitkit::watch::Report::new();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _w = report.watch("ghost", Panicky);
    }));
    let mut w = report.watch("real", std::future::ready(1));
    assert_eq!(noop_poll(&mut w), Poll::Ready(1));
    let children = report.children();
    assert_eq!(children.len(), 1, "{children:?}");
    assert_eq!(children[0].label(), "real");
}

// ===========================================================================
// Change 1 (7d862ba): the inner loop over a level-0 word.
// ===========================================================================

/// A child driven by a shared script. Each poll records (parent poll, id),
/// checks it was woken since its last poll, and runs a scripted action
/// drawn from a seeded RNG: complete, panic, wake itself, wake siblings
/// (earlier / later in the same word, other words, other chunks), or wait.
struct Shared {
    rng: Mutex<common::Rng>,
    wakers: Mutex<Vec<Option<Waker>>>,
    /// Wakes since the last poll (per id).
    pending_wakes: Mutex<Vec<usize>>,
    /// (wakes, polls) per id, counted from the first poll.
    total: Mutex<Vec<(usize, usize)>>,
    /// Whether polled in the current parent poll.
    polled_now: Mutex<Vec<bool>>,
    trace: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    polls: AtomicUsize,
    wakes: AtomicUsize,
    generation: AtomicUsize,
    n_total: AtomicUsize,
    /// Woken children left without a parent wake after a caught panic.
    after_panic_lost: AtomicUsize,
    /// Probability (per mille) of each action.
    p_done: u64,
    p_panic: u64,
    p_self: u64,
    p_sib: u64,
}

impl Shared {
    fn err(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }
    fn wake(&self, id: usize) {
        let w = self.wakers.lock().unwrap().get(id).cloned().flatten();
        if let Some(w) = w {
            self.pending_wakes.lock().unwrap()[id] += 1;
            self.total.lock().unwrap()[id].0 += 1;
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.trace.lock().unwrap().push(format!("w{id}"));
            w.wake();
        }
    }
}

struct Child {
    id: usize,
    first: bool,
    sh: Arc<Shared>,
    done: bool,
}

impl Future for Child {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let sh = self.sh.clone();
        let id = self.id;
        assert!(!self.done, "child {id} polled after completion");
        sh.polls.fetch_add(1, Ordering::SeqCst);
        let generation = sh.generation.load(Ordering::SeqCst);
        sh.trace.lock().unwrap().push(format!("p{id}@{generation}"));
        {
            let mut now = sh.polled_now.lock().unwrap();
            if now[id] {
                sh.err(format!(
                    "child {id} polled twice in parent poll {generation}"
                ));
            }
            now[id] = true;
        }
        {
            // polls ≤ wakes + 1 per child (a wake that lands after the
            // snapshot but before the child's poll in that pass earns a
            // second poll next pass: still one poll per wake).
            let mut pw = sh.pending_wakes.lock().unwrap();
            let mut tw = sh.total.lock().unwrap();
            tw[id].1 += 1;
            if tw[id].1 > tw[id].0 + 1 {
                sh.err(format!(
                    "child {id}: {} polls for {} wakes (parent poll {generation})",
                    tw[id].1, tw[id].0
                ));
            }
            pw[id] = 0;
        }
        self.first = false;
        sh.wakers.lock().unwrap()[id] = Some(cx.waker().clone());
        let roll = sh.rng.lock().unwrap().below(1000) as u64;
        let (d, p, s, b) = (sh.p_done, sh.p_panic, sh.p_self, sh.p_sib);
        if roll < d {
            self.done = true;
            sh.wakers.lock().unwrap()[id] = None;
            return Poll::Ready(id);
        }
        if roll < d + p {
            // Stays woken-able: its waker is registered; a later wake polls it.
            panic!("child {id} panics in poll");
        }
        if roll < d + p + s {
            sh.wake(id);
            return Poll::Pending;
        }
        if roll < d + p + s + b {
            let n = sh.n_total.load(Ordering::SeqCst);
            let k = 1 + sh.rng.lock().unwrap().below(3);
            for _ in 0..k {
                let r = sh.rng.lock().unwrap().below(100);
                let target = if r < 60 {
                    // Same word, nearby (both sides).
                    let lo = id - id % 64;
                    lo + sh.rng.lock().unwrap().below(64)
                } else {
                    sh.rng.lock().unwrap().below(n)
                };
                if target < n {
                    sh.wake(target);
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let id = self.id;
        if let Ok(mut w) = self.sh.wakers.lock() {
            if let Some(slot) = w.get_mut(id) {
                *slot = None;
            }
        }
    }
}

struct CountWake(AtomicUsize);
impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Drives one scenario; returns the trace's hash and the outputs in order.
fn scenario(
    seed: u64,
    n0: usize,
    pushes: usize,
    p: (u64, u64, u64, u64),
    panics_ok: bool,
) -> (u64, Vec<String>, usize) {
    let sh = Arc::new(Shared {
        rng: Mutex::new(common::Rng(seed.wrapping_mul(2).wrapping_add(1))),
        wakers: Mutex::new(Vec::new()),
        pending_wakes: Mutex::new(Vec::new()),
        polled_now: Mutex::new(Vec::new()),
        total: Mutex::new(Vec::new()),
        trace: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        polls: AtomicUsize::new(0),
        wakes: AtomicUsize::new(0),
        generation: AtomicUsize::new(0),
        n_total: AtomicUsize::new(0),
        after_panic_lost: AtomicUsize::new(0),
        p_done: p.0,
        p_panic: if panics_ok { p.1 } else { 0 },
        p_self: p.2,
        p_sib: p.3,
    });
    let add = |sh: &Arc<Shared>| {
        let id = sh.n_total.fetch_add(1, Ordering::SeqCst);
        sh.wakers.lock().unwrap().push(None);
        sh.pending_wakes.lock().unwrap().push(0);
        sh.polled_now.lock().unwrap().push(false);
        sh.total.lock().unwrap().push((0, 0));
        Child {
            id,
            first: true,
            sh: sh.clone(),
            done: false,
        }
    };
    let kids: Vec<Child> = (0..n0).map(|_| add(&sh)).collect();
    let mut set: AsCompleted<Child> = awaitkit::as_completed(kids);
    let parent = Arc::new(CountWake(AtomicUsize::new(0)));
    let waker = Waker::from(parent.clone());
    let mut outputs = Vec::new();
    let mut pushed = 0;
    let mut idle_rounds = 0;
    let mut parent_polls = 0usize;
    loop {
        parent_polls += 1;
        assert!(parent_polls < 200_000, "seed {seed}: no end");
        // A parent poll: one poll_next of the stream.
        let g = sh.generation.fetch_add(1, Ordering::SeqCst) + 1;
        for x in sh.polled_now.lock().unwrap().iter_mut() {
            *x = false;
        }
        sh.trace.lock().unwrap().push(format!("P{g}"));
        let before = parent.0.load(Ordering::SeqCst);
        let mut cx = Context::from_waker(&waker);
        let r = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut set).poll_next(&mut cx)));
        let kind = match &r {
            Err(_) => 2,
            Ok(Poll::Pending) => 1,
            Ok(_) => 0,
        };
        match r {
            Err(_) => {
                sh.trace.lock().unwrap().push("panic".into());
                // Still usable as a stream: go on.
            }
            Ok(Poll::Ready(Some(id))) => {
                outputs.push(format!("{id}"));
                sh.trace.lock().unwrap().push(format!("o{id}"));
            }
            Ok(Poll::Ready(None)) => {
                if pushed >= pushes {
                    break;
                }
            }
            Ok(Poll::Pending) => {}
        }
        // Between parent polls: sometimes push, sometimes wake random ones.
        let roll = sh.rng.lock().unwrap().below(100);
        if pushed < pushes && roll < 30 {
            let k = 1 + sh.rng.lock().unwrap().below(40);
            for _ in 0..k.min(pushes - pushed) {
                let c = add(&sh);
                let _ = set.push(c);
                pushed += 1;
            }
        } else if roll < 60 {
            let n = sh.n_total.load(Ordering::SeqCst);
            let k = 1 + sh.rng.lock().unwrap().below(8);
            for _ in 0..k {
                let t = sh.rng.lock().unwrap().below(n);
                sh.wake(t);
            }
        }
        let woke_parent = parent.0.load(Ordering::SeqCst) != before;
        if !woke_parent && !set.is_empty() && kind != 0 {
            // Nobody woke the parent after a `Pending` (or a caught panic):
            // every live child must be un-woken (a woken child left behind
            // would hang).
            let pw = sh.pending_wakes.lock().unwrap();
            let w = sh.wakers.lock().unwrap();
            for (id, &k) in pw.iter().enumerate() {
                if k > 0 && w[id].is_some() {
                    if kind == 1 {
                        sh.err(format!(
                            "seed {seed}: child {id} woken ({k}) but the parent was not woken after a Pending parent poll {g}"
                        ));
                    } else {
                        sh.after_panic_lost.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            drop((pw, w));
            idle_rounds += 1;
            if idle_rounds > 3 {
                // Quiescent: wake everyone still alive to make progress.
                let n = sh.n_total.load(Ordering::SeqCst);
                for id in 0..n {
                    sh.wake(id);
                }
                idle_rounds = 0;
            }
        } else {
            idle_rounds = 0;
        }
        if set.is_empty() && pushed >= pushes {
            // One more poll to see the end.
            continue;
        }
    }
    let errors = sh.errors.lock().unwrap().clone();
    if !errors.is_empty() && std::env::var_os("REVIEW_DUMP").is_some() {
        let t = sh.trace.lock().unwrap().join(" ");
        std::fs::write(format!("/tmp/review_changes_seed{seed}.trace"), t).unwrap();
    }
    assert!(errors.is_empty(), "seed {seed}: {errors:#?}");
    let trace = sh.trace.lock().unwrap().join(" ");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in trace.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let lost = sh.after_panic_lost.load(Ordering::SeqCst);
    if lost > 0 {
        eprintln!("seed {seed}: {lost} woken children without a parent wake after a caught panic");
    }
    (
        h,
        outputs,
        sh.polls.load(Ordering::SeqCst) * 1_000_000 + lost,
    )
}

fn differential(panics_ok: bool) {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.ends_with("panics in poll"));
            if !quiet {
                prev(info);
            }
        }));
    });
    let mut out = String::new();
    let sizes = [1usize, 3, 63, 64, 65, 130, 700, 4100];
    let mix = [
        (50u64, 0u64, 100u64, 300u64),
        (20, 30, 300, 400),
        (5, 10, 600, 300),
        (300, 50, 100, 100),
    ];
    let mut seed = 1u64;
    for &n in &sizes {
        for (m, &p) in mix.iter().enumerate() {
            for pushes in [0usize, 100] {
                // (The large sets, several words and levels, with one mix:
                // the test stays a few seconds long.)
                if n >= 700 && (pushes > 0 || m > 0) {
                    continue;
                }
                let (h, outs, polls) = scenario(seed, n, pushes, p, panics_ok);
                out.push_str(&format!("seed {seed} n {n} pushes {pushes} mix {p:?}: hash {h:016x} outputs {} polls {polls}\n", outs.len()));
                seed += 1;
            }
        }
    }
    // With `REVIEW_TRACE_OUT=<dir>`, the traces' summary is written there,
    // to compare two commits (every scenario's invariants are asserted
    // either way).
    if let Ok(dir) = std::env::var("REVIEW_TRACE_OUT") {
        let name = if panics_ok { "panics" } else { "plain" };
        let path = format!("{dir}/review_changes_trace_{name}.txt");
        std::fs::write(&path, &out).unwrap();
        eprintln!("trace summary written to {path}");
    }
}

#[test]
fn engine_differential_trace_plain() {
    differential(false);
}

#[test]
fn engine_differential_trace_with_panics() {
    differential(true);
}

/// A child panics in its first poll while its siblings' first polls are
/// still in the pass's snapshot (taken into the cursor). The panic is
/// caught and the set stays usable: the parent is woken for the siblings
/// still to be polled (before, nothing woke it: a consumer that returned
/// `Pending` after catching the panic was never polled again).
#[test]
fn as_completed_caught_panic_wakes_the_parent_for_the_rest_of_the_snapshot() {
    struct P(usize, Arc<AtomicUsize>);
    impl Future for P {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            self.1.fetch_add(1, Ordering::SeqCst);
            if self.0 == 0 {
                panic!("child 0 panics in poll");
            }
            Poll::Pending
        }
    }
    for n in [3usize, 100] {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut set = awaitkit::as_completed((0..n).map(|i| P(i, polls.clone())));
        let parent = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(parent.clone());
        let r = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut set).poll_next(&mut Context::from_waker(&waker))
        }));
        assert!(r.is_err());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "only child 0 polled so far"
        );
        assert!(
            parent.0.load(Ordering::SeqCst) > 0,
            "n = {n}: {} children never polled once, and the parent was not woken after the caught \
             panic: a consumer returning Pending hangs",
            n - 1
        );
    }
}

/// The batch's grant is now dropped before its calls; calls that wait on
/// the same limiter (queued behind the batch's grant) are dropped after it.
/// An outside waiter queued behind both must still be served.
#[test]
fn batch_with_calls_waiting_on_its_own_limiter_dropped_leaves_limiter_usable() {
    let clock = awaitkit::time::ManualClock::new();
    let limiter = awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone());
    let lim = &limiter;
    let mut batch = process_batch(0..3, 3, move |_| Box::pin(lim.acquire())).rate_limit(&limiter);
    for _ in 0..3 {
        let _ = noop_poll(&mut batch);
    }
    let parent = Arc::new(CountWake(AtomicUsize::new(0)));
    let waker = Waker::from(parent.clone());
    let mut ext = Box::pin(limiter.acquire());
    assert!(
        ext.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(batch);
    for _ in 0..4 {
        clock.advance(Duration::from_secs(1));
        if ext
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            return;
        }
    }
    panic!(
        "an outside waiter is never served after the batch (grant dropped before its calls) was \
         dropped; woken {} times",
        parent.0.load(Ordering::SeqCst)
    );
}

/// Fail-fast *ordered* stream polled during an unwind with a sibling whose
/// destructor panics: the failure comes out (hand_back), then `None`.
#[test]
fn try_batch_ordered_fail_fast_during_unwind() {
    if !is_child() {
        return run_in_child("try_batch_ordered_fail_fast_during_unwind");
    }
    let log = new_log();
    let log2 = log.clone();
    let out = during_unwind(move || {
        let log3 = log2.clone();
        let mut s = process_batch(0..3, 3, move |i| Kid::<Result<usize, Rec>> {
            out: if i == 1 {
                Some(Err(Rec::new("error 1", &log3, false)))
            } else {
                None
            },
            _rec: Some(Rec::new(format!("call {i}"), &log3, i == 2)),
        })
        .fail_fast()
        .ordered();
        let mut got = Vec::new();
        for _ in 0..5 {
            match noop_poll_next(&mut s) {
                Poll::Ready(Some(x)) => got.push(format!("{x:?}")),
                Poll::Ready(None) => {
                    got.push("None".into());
                    break;
                }
                Poll::Pending => got.push("Pending".into()),
            }
        }
        (got, s.is_terminated())
    });
    let (got, t) = out.expect("ran");
    assert!(got.iter().any(|g| g.contains("error 1")), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("None"), "{got:?}");
    assert!(t);
    let entries = entries(&log);
    let count = |n: &str| entries.iter().filter(|(m, _)| m == n).count();
    for n in ["call 0", "call 1", "call 2", "error 1"] {
        assert_eq!(count(n), 1, "{n} dropped once: {entries:?}");
    }
}
