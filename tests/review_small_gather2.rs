//! Break-it review 2 (2beba1a..91209cd): `try_gather`'s small block
//! (`SmallSet::poll_split`), the start-of-pass registration (`Head::registered`)
//! and `TupleSlot::retire` in `gather!`/`try_gather!`. Sizes 1..=63 run in the
//! small block (17..=63 in a 64-byte aligned one), 64 in the engine: every
//! scenario compares both where it can.
//!
//! Scenarios marked FOUND fail on 91209cd.

#![allow(clippy::all)]

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use awaitkit::{gather, try_gather};
use futures::future::FusedFuture;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn quiet() {
    common::quiet_injected(
        &["child ", "err drop", "val drop", "parent ", "outer"],
        true,
    );
}

fn msg(p: &(dyn std::any::Any + Send)) -> String {
    common::panic_message(p)
}

/// Shared event log: drops of children, values and errors, in order.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<String>>,
    child_drops: AtomicUsize,
    vals_made: AtomicUsize,
    val_drops: AtomicUsize,
    err_drops: AtomicUsize,
}
impl Log {
    fn ev(&self, s: String) {
        self.events.lock().unwrap().push(s);
    }
    fn cd(&self) -> usize {
        self.child_drops.load(Ordering::SeqCst)
    }
    fn vm(&self) -> usize {
        self.vals_made.load(Ordering::SeqCst)
    }
    fn vd(&self) -> usize {
        self.val_drops.load(Ordering::SeqCst)
    }
    fn ed(&self) -> usize {
        self.err_drops.load(Ordering::SeqCst)
    }
}

struct Val(usize, Arc<Log>, bool);
impl Drop for Val {
    fn drop(&mut self) {
        self.1.val_drops.fetch_add(1, Ordering::SeqCst);
        self.1.ev(format!("val {}", self.0));
        if self.2 {
            panic!("val drop {}", self.0);
        }
    }
}

struct Er(usize, Arc<Log>, bool);
impl Drop for Er {
    fn drop(&mut self) {
        self.1.err_drops.fetch_add(1, Ordering::SeqCst);
        self.1.ev(format!("err {}", self.0));
        if self.2 {
            panic!("err drop {}", self.0);
        }
    }
}
impl std::fmt::Debug for Er {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Er({})", self.0)
    }
}
impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Val({})", self.0)
    }
}

/// A child: pending (self-waking) for `after` polls, then `Ok(Val)` or
/// `Err(Er)`; its destructor may panic.
struct Kid {
    id: usize,
    after: usize,
    err: bool,
    log: Arc<Log>,
    drop_panics: bool,
    err_drop_panics: bool,
    polls: usize,
    self_wake: bool,
}
impl Kid {
    fn new(id: usize, after: usize, err: bool, log: &Arc<Log>) -> Kid {
        Kid {
            id,
            after,
            err,
            log: log.clone(),
            drop_panics: false,
            err_drop_panics: false,
            polls: 0,
            self_wake: true,
        }
    }
}
impl Drop for Kid {
    fn drop(&mut self) {
        self.log.child_drops.fetch_add(1, Ordering::SeqCst);
        self.log.ev(format!("child {}", self.id));
        if self.drop_panics {
            panic!("child drop {}", self.id);
        }
    }
}
impl Future for Kid {
    type Output = Result<Val, Er>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let n = self.polls;
        self.polls += 1;
        if n < self.after {
            if self.self_wake {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        if self.err {
            Poll::Ready(Err(Er(self.id, self.log.clone(), self.err_drop_panics)))
        } else {
            self.log.vals_made.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(Val(self.id, self.log.clone(), false)))
        }
    }
}
impl Unpin for Kid {}

#[derive(Default)]
struct CountWake {
    wakes: AtomicUsize,
}
impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}
fn counting() -> (Arc<CountWake>, Waker) {
    let c = Arc::new(CountWake::default());
    (c.clone(), Waker::from(c))
}

fn poll_once<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| msg(&*p))
}

const SIZES: [usize; 9] = [1, 2, 5, 15, 16, 17, 40, 63, 64];

// ---------------------------------------------------------------------------
// try_gather fail-fast, small vs engine
// ---------------------------------------------------------------------------

/// Fail-fast at every position and in every poll (0..3), children finishing
/// Ok at various polls: the Err comes from the very poll in which the child
/// yields it, with every child and every kept Ok value dropped before it is
/// returned; then "polled after completion", `is_terminated`.
#[test]
fn fail_fast_every_position_every_poll() {
    quiet();
    common::watchdog("ff", || {
        for n in SIZES {
            for pos in 0..n {
                for k in 0..3 {
                    let log = Arc::new(Log::default());
                    let kids: Vec<Kid> = (0..n)
                        .map(|i| {
                            if i == pos {
                                Kid::new(i, k, true, &log)
                            } else {
                                Kid::new(i, (i * 7 + k) % 4, false, &log)
                            }
                        })
                        .collect();
                    let mut g = try_gather(kids);
                    let (_c, w) = counting();
                    let mut polls = 0;
                    let e = loop {
                        polls += 1;
                        match poll_once(&mut g, &w) {
                            Poll::Pending => assert!(
                                polls <= k,
                                "n={n} pos={pos} k={k}: Err not returned in poll {}",
                                k + 1
                            ),
                            Poll::Ready(Ok(_)) => panic!("Ok"),
                            Poll::Ready(Err(e)) => break e,
                        }
                    };
                    assert_eq!(polls, k + 1, "n={n} pos={pos} k={k}");
                    assert_eq!(e.0, pos);
                    // Everything dropped before the Err was handed out.
                    assert_eq!(log.cd(), n, "n={n} pos={pos} k={k}: children dropped");
                    assert_eq!(
                        log.vm(),
                        log.vd(),
                        "n={n} pos={pos} k={k}: kept values dropped"
                    );
                    assert_eq!(log.ed(), 0);
                    assert!(g.is_terminated());
                    let r = catch(|| poll_once(&mut g, &w));
                    assert!(r.unwrap_err().contains("polled after completion"));
                    drop(g);
                    drop(e);
                    assert_eq!(log.cd(), n);
                    assert_eq!(log.ed(), 1);
                }
            }
        }
    });
}

/// Several Errs in one pass: exactly one is returned (the first in input
/// order, the same for small and engine), the others' children dropped
/// without ever producing theirs; every error value produced dropped once.
#[test]
fn several_errs_in_one_pass() {
    quiet();
    let mut firsts = Vec::new();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n)
            .map(|i| Kid::new(i, 1, i % 2 == 1 || i == n - 1, &log))
            .collect();
        let mut g = try_gather(kids);
        let (_c, w) = counting();
        assert!(poll_once(&mut g, &w).is_pending());
        let Poll::Ready(Err(e)) = poll_once(&mut g, &w) else {
            panic!("n={n}: not Err in poll 2")
        };
        assert_eq!(log.cd(), n);
        assert_eq!(
            log.ed(),
            0,
            "n={n}: no other error was produced (fail fast stops the pass)"
        );
        firsts.push(e.0);
        drop(e);
        drop(g);
        assert_eq!(log.ed(), 1);
    }
    assert_eq!(firsts, vec![1; 5], "first Err in input order");
}

/// Debug's `running` after fail-fast: the engine says 0 (every child was
/// dropped); the small block must say the same.
/// FOUND: small keeps `remaining` (children dropped by fail-fast are still
/// counted as running).
#[test]
fn debug_running_after_fail_fast_small_vs_engine() {
    quiet();
    let mut out = Vec::new();
    for n in [16usize, 64] {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n)
            .map(|i| Kid::new(i, if i == 3 { 0 } else { 5 }, i == 3, &log))
            .collect();
        let mut g = try_gather(kids);
        let (_c, w) = counting();
        let Poll::Ready(Err(_e)) = poll_once(&mut g, &w) else {
            panic!()
        };
        assert_eq!(log.cd(), n);
        out.push(format!("{g:?}"));
    }
    assert_eq!(
        out[1], "TryGather { running: 0, .. }",
        "engine after fail-fast"
    );
    assert_eq!(
        out[0], out[1],
        "Debug after fail-fast: small {} vs engine {} (all {} children dropped)",
        out[0], out[1], 16
    );
}

/// The same for `try_gather!`: after fail-fast, Debug's `remaining` should be 0.
/// FOUND (tuple shares the small block's pass).
#[test]
fn debug_remaining_after_fail_fast_tuple() {
    quiet();
    let log = Arc::new(Log::default());
    let mut g = awaitkit::try_gather!(
        Kid::new(0, 5, false, &log),
        Kid::new(1, 0, true, &log),
        Kid::new(2, 5, false, &log)
    );
    let (_c, w) = counting();
    let Poll::Ready(Err(_e)) = poll_once(&mut g, &w) else {
        panic!()
    };
    assert_eq!(log.cd(), 3);
    assert_eq!(format!("{g:?}"), "TryGatherTuple { remaining: 0, .. }");
}

/// An Err from a child whose destructor panics: the child's panic
/// propagates, the error is dropped exactly once (at once), the siblings
/// stay until the gather is dropped (then exactly once); polled again:
/// "polled after a panic"; not terminated. Small and engine alike.
#[test]
fn err_child_with_panicking_destructor() {
    quiet();
    for n in SIZES {
        for pos in 0..n.min(4) {
            let log = Arc::new(Log::default());
            let kids: Vec<Kid> = (0..n)
                .map(|i| {
                    let mut k = Kid::new(i, if i == pos { 1 } else { 3 }, i == pos, &log);
                    k.drop_panics = i == pos;
                    k
                })
                .collect();
            let mut g = try_gather(kids);
            let (_c, w) = counting();
            assert!(poll_once(&mut g, &w).is_pending());
            let r = catch(|| poll_once(&mut g, &w));
            assert_eq!(
                r.err().as_deref(),
                Some(&*format!("child drop {pos}")),
                "n={n}"
            );
            assert_eq!(log.ed(), 1, "n={n}: the error dropped once, at once");
            assert_eq!(log.cd(), 1, "n={n}");
            assert!(!g.is_terminated());
            let r = catch(|| poll_once(&mut g, &w));
            assert!(r.unwrap_err().contains("polled after a panic"), "n={n}");
            drop(g);
            assert_eq!(log.cd(), n, "n={n}");
            assert_eq!(log.ed(), 1);
            assert_eq!(log.vm(), log.vd());
        }
    }
}

// Siblings whose destructors panic during fail-fast (one, two), with the
// error's own destructor panicking or not, and kept Ok values: no abort,
// the first sibling panic propagates, the error dropped once, every child
// and kept value dropped once; then "polled after a panic". Child process.
scenario!(siblings_panic_during_fail_fast, {
    quiet();
    for n in SIZES {
        // Past 32 children the engine stops a pass after 32 stalls (its
        // cooperative early stop), so the error comes in a later poll than
        // this scenario checks: it runs the small block's sizes.
        if n > 63 {
            continue;
        }
        if n < 3 {
            continue;
        }
        for panickers in [1usize, 2] {
            for err_panics in [false, true] {
                let log = Arc::new(Log::default());
                let pos = n - 1;
                let kids: Vec<Kid> = (0..n)
                    .map(|i| {
                        // child 0 finishes Ok first (a kept value), the error
                        // child at poll 1, siblings 1..=panickers panic on drop.
                        let mut k = Kid::new(
                            i,
                            if i == 0 {
                                0
                            } else if i == pos {
                                1
                            } else {
                                5
                            },
                            i == pos,
                            &log,
                        );
                        k.drop_panics = i >= 1 && i <= panickers;
                        k.err_drop_panics = i == pos && err_panics;
                        k
                    })
                    .collect();
                let mut g = try_gather(kids);
                let (_c, w) = counting();
                assert!(poll_once(&mut g, &w).is_pending());
                let r = catch(|| poll_once(&mut g, &w));
                assert_eq!(
                    r.err().as_deref(),
                    Some("child drop 1"),
                    "n={n} p={panickers} ep={err_panics}"
                );
                assert_eq!(log.cd(), n, "n={n}: all children dropped");
                assert_eq!(log.ed(), 1, "n={n}: error dropped once");
                assert_eq!(
                    (log.vm(), log.vd()),
                    (1, 1),
                    "n={n}: kept value dropped once"
                );
                let r = catch(|| poll_once(&mut g, &w));
                assert!(r.unwrap_err().contains("polled after a panic"));
                assert!(!g.is_terminated());
                drop(g);
                assert_eq!(log.cd(), n);
            }
        }
    }
});

// A kept Ok value whose destructor panics during fail-fast: no abort, its
// panic propagates, the Err dropped once, all children dropped.
scenario!(kept_value_panics_during_fail_fast, {
    quiet();
    for n in [3usize, 16, 17, 63, 64] {
        // Past 32 children the engine stops a pass after 32 stalls (its
        // cooperative early stop), so the error comes in a later poll than
        // this scenario checks: it runs the small block's sizes.
        if n > 63 {
            continue;
        }
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n)
            .map(|i| {
                Kid::new(
                    i,
                    if i == 1 {
                        1
                    } else if i == 0 {
                        0
                    } else {
                        4
                    },
                    i == 1,
                    &log,
                )
            })
            .collect();
        // child 0 yields a value whose drop panics: wrap through map
        let mut g = try_gather(kids.into_iter().map(|k| {
            let first = k.id == 0;
            futures::FutureExt::map(k, move |r| {
                r.map(|mut v| {
                    v.2 = first;
                    v
                })
            })
        }));
        let (_c, w) = counting();
        assert!(poll_once(&mut g, &w).is_pending());
        let r = catch(|| poll_once(&mut g, &w));
        assert_eq!(r.err().as_deref(), Some("val drop 0"), "n={n}");
        assert_eq!(log.cd(), n);
        assert_eq!(log.ed(), 1);
        assert_eq!(log.vd(), 1);
    }
});

/// Cancel after every poll (some children done, some Err pending): every
/// child and every kept value dropped exactly once.
#[test]
fn cancel_after_every_poll() {
    quiet();
    for n in SIZES {
        for stop in 0..5 {
            let log = Arc::new(Log::default());
            let kids: Vec<Kid> = (0..n)
                .map(|i| Kid::new(i, i % 5, i == n / 2 && n > 1 && false, &log))
                .collect();
            let mut g = try_gather(kids);
            let (_c, w) = counting();
            let mut done = false;
            for _ in 0..stop {
                if poll_once(&mut g, &w).is_ready() {
                    done = true;
                    break;
                }
            }
            let _ = done;
            drop(g);
            assert_eq!(log.cd(), n, "n={n} stop={stop}");
            assert_eq!(log.vm(), log.vd(), "n={n} stop={stop}");
        }
    }
}

/// Polled after Ready(Ok): panics "polled after completion"; outputs
/// dropped once by the user only.
#[test]
fn polled_after_ok() {
    quiet();
    for n in SIZES {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n).map(|i| Kid::new(i, 0, false, &log)).collect();
        let mut g = try_gather(kids);
        let (_c, w) = counting();
        let Poll::Ready(Ok(v)) = poll_once(&mut g, &w) else {
            panic!()
        };
        assert_eq!(v.len(), n);
        assert!(g.is_terminated());
        let r = catch(|| poll_once(&mut g, &w));
        assert!(r.unwrap_err().contains("polled after completion"));
        assert_eq!(log.vd(), 0);
        drop(v);
        drop(g);
        assert_eq!(log.vd(), n);
        assert_eq!(log.cd(), n);
    }
}

// ---------------------------------------------------------------------------
// Parent wakers that panic
// ---------------------------------------------------------------------------

/// A parent waker whose `clone`, `wake_by_ref` or `drop` may panic (flags).
struct Evil {
    clone_panics: AtomicBool,
    wake_panics: AtomicBool,
    drop_panics: AtomicBool,
    wakes: AtomicUsize,
    clones: AtomicUsize,
    drops: AtomicUsize,
}
impl Evil {
    fn new() -> Arc<Evil> {
        Arc::new(Evil {
            clone_panics: AtomicBool::new(false),
            wake_panics: AtomicBool::new(false),
            drop_panics: AtomicBool::new(false),
            wakes: AtomicUsize::new(0),
            clones: AtomicUsize::new(0),
            drops: AtomicUsize::new(0),
        })
    }
    fn waker(self: &Arc<Self>) -> Waker {
        use std::task::{RawWaker, RawWakerVTable};
        // Every `p` below is an `Arc<Evil>` pointer a live waker holds a
        // strong count of.
        unsafe fn clone(p: *const ()) -> RawWaker {
            // SAFETY: see above.
            let e = unsafe { &*(p as *const Evil) };
            if e.clone_panics.load(Ordering::SeqCst) {
                panic!("parent clone");
            }
            e.clones.fetch_add(1, Ordering::SeqCst);
            // SAFETY: see above.
            unsafe { Arc::increment_strong_count(p as *const Evil) };
            RawWaker::new(p, &VT)
        }
        unsafe fn wake(p: *const ()) {
            // SAFETY: see above (this waker's count is given up by `drop_`).
            unsafe { wake_by_ref(p) };
            // SAFETY: as above.
            unsafe { drop_(p) };
        }
        unsafe fn wake_by_ref(p: *const ()) {
            // SAFETY: see above.
            let e = unsafe { &*(p as *const Evil) };
            e.wakes.fetch_add(1, Ordering::SeqCst);
            if e.wake_panics.load(Ordering::SeqCst) {
                panic!("parent wake");
            }
        }
        unsafe fn drop_(p: *const ()) {
            // SAFETY: see above: the waker's count is taken back.
            let e = unsafe { Arc::from_raw(p as *const Evil) };
            e.drops.fetch_add(1, Ordering::SeqCst);
            let panics = e.drop_panics.load(Ordering::SeqCst);
            drop(e);
            if panics && !std::thread::panicking() {
                panic!("parent drop");
            }
        }
        static VT: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_);
        let p = Arc::into_raw(self.clone()) as *const ();
        // SAFETY: `p` holds one strong count; `VT` follows the contract.
        unsafe { Waker::from_raw(RawWaker::new(p, &VT)) }
    }
}

/// A child that stashes a clone of its waker (escaped) and is pending until
/// `go` is set; its waker is then fired from the stash by the test.
struct Stash {
    slot: Arc<Mutex<Option<Waker>>>,
    go: Arc<AtomicBool>,
    log: Arc<Log>,
}
impl Future for Stash {
    type Output = Result<Val, Er>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.go.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(Val(99, self.log.clone(), false)));
        }
        *self.slot.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}
type Boxed = Pin<Box<dyn Future<Output = Result<Val, Er>> + Send>>;

/// A parent waker whose `clone` panics on the start-of-pass registration
/// (a clone escaped before, waker changed): the panic propagates, the
/// gather is poisoned ("polled after a panic"), every child dropped once on
/// drop, no parent waker clone leaked. Small and engine alike.
#[test]
fn parent_clone_panics_at_start_of_pass_registration() {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let slot = Arc::new(Mutex::new(None));
        let go = Arc::new(AtomicBool::new(false));
        let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
            slot: slot.clone(),
            go: go.clone(),
            log: log.clone(),
        })];
        for i in 1..n {
            let mut k = Kid::new(i, 100, false, &log);
            k.self_wake = false;
            kids.push(Box::pin(k));
        }
        let mut g = try_gather(kids);
        let a = Evil::new();
        let wa = a.waker();
        assert!(poll_once(&mut g, &wa).is_pending());
        let p = Evil::new();
        p.clone_panics.store(true, Ordering::SeqCst);
        let wp = p.waker();
        // Wake child 0 from the stash: its bit is set, A woken.
        slot.lock().unwrap().take().unwrap().wake();
        let r = catch(|| poll_once(&mut g, &wp));
        eprintln!(
            "clone-panic n={n}: {:?}",
            r.as_ref().map(|p| p.is_pending())
        );
        // Small and engine should behave alike; record what happens.
        match r {
            Err(m) => {
                assert_eq!(m, "parent clone", "n={n}");
                let r = catch(|| poll_once(&mut g, &wa));
                assert!(r.unwrap_err().contains("polled after a panic"), "n={n}");
            }
            Ok(p) => assert!(p.is_pending(), "n={n}"),
        }
        drop(g);
        assert_eq!(log.cd(), n - 1, "n={n}");
        assert_eq!(
            a.clones.load(Ordering::SeqCst),
            a.drops.load(Ordering::SeqCst),
            "n={n}: A clones all dropped"
        );
        drop(wp);
        drop(wa);
    }
}

/// Registration after every clone was dropped again: a gather that was
/// registered once (a clone escaped, then the clone was dropped) and is then
/// polled with a waker whose `clone` panics. Before 91209cd nothing was
/// cloned (no escaped clone); the engine (17) still does not clone. Small
/// vs engine parity.
#[test]
fn parent_clone_panics_after_clones_gone_small_vs_engine() {
    quiet();
    let mut res = Vec::new();
    for n in [16usize, 64] {
        let log = Arc::new(Log::default());
        let slot = Arc::new(Mutex::new(None));
        let go = Arc::new(AtomicBool::new(false));
        let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
            slot: slot.clone(),
            go: go.clone(),
            log: log.clone(),
        })];
        for i in 1..n {
            kids.push(Box::pin(Kid::new(i, 3, false, &log)));
        }
        let mut g = try_gather(kids);
        let a = Evil::new();
        let wa = a.waker();
        assert!(poll_once(&mut g, &wa).is_pending());
        // The clone goes away with a wake (stash emptied).
        go.store(true, Ordering::SeqCst);
        slot.lock().unwrap().take().unwrap().wake();
        let p = Evil::new();
        p.clone_panics.store(true, Ordering::SeqCst);
        let wp = p.waker();
        let mut outcome = String::new();
        for _ in 0..6 {
            match catch(|| poll_once(&mut g, &wp)) {
                Err(m) => {
                    outcome = format!("panic: {m}");
                    break;
                }
                Ok(Poll::Ready(r)) => {
                    outcome = format!("ready ok={}", r.is_ok());
                    break;
                }
                Ok(Poll::Pending) => {}
            }
        }
        eprintln!("n={n}: {outcome}");
        res.push(outcome);
        drop(g);
        assert_eq!(log.cd(), n - 1);
    }
    // Kept as is (a difference, not a fault): once a parent waker was
    // registered, the small block registers each poll's waker before its
    // pass (so a wake never reaches a task the future left), and a `clone`
    // that panics there propagates and poisons it, as it does wherever a
    // registration clones (the engine's general pass, at 64 children, too).
    // The engine's one-word pass registers only while a clone lives.
    assert_eq!(res[0], "panic: parent clone", "small (16)");
    assert_eq!(res[1], "panic: parent clone", "engine, general pass (64)");
}

// A parent waker whose `wake_by_ref` panics when the registration wakes it
// (a wake requested while registering) or at the end-of-pass self-wake.
// The gather panics clearly and is poisoned; no abort; children dropped.
scenario!(parent_wake_panics, {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n).map(|i| Kid::new(i, 3, false, &log)).collect();
        let mut g = try_gather(kids);
        let p = Evil::new();
        p.wake_panics.store(true, Ordering::SeqCst);
        let wp = p.waker();
        let r = catch(|| poll_once(&mut g, &wp));
        assert_eq!(
            r.err().as_deref(),
            Some("parent wake"),
            "n={n}: self-wake panics"
        );
        let r = catch(|| poll_once(&mut g, &wp));
        assert!(r.unwrap_err().contains("polled after a panic"));
        drop(g);
        assert_eq!(log.cd(), n);
        assert_eq!(
            p.clones.load(Ordering::SeqCst) + 1,
            p.drops.load(Ordering::SeqCst) + Arc::strong_count(&p) - 1 - 0
        );
    }
});

// A parent waker whose `drop` panics, replaced at the start of a pass
// (waker changed, a clone escaped): the old waker's drop panics there.
// The gather is poisoned; dropping it drops every child once; no abort.
scenario!(parent_drop_panics_on_replace, {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let slot = Arc::new(Mutex::new(None));
        let go = Arc::new(AtomicBool::new(false));
        let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
            slot: slot.clone(),
            go: go.clone(),
            log: log.clone(),
        })];
        for i in 1..n {
            let mut k = Kid::new(i, 100, false, &log);
            k.self_wake = false;
            kids.push(Box::pin(k));
        }
        let mut g = try_gather(kids);
        let a = Evil::new();
        let wa = a.waker();
        assert!(poll_once(&mut g, &wa).is_pending());
        a.drop_panics.store(true, Ordering::SeqCst);
        let (_c, wb) = counting();
        slot.lock().unwrap().take().unwrap().wake_by_ref();
        let r = catch(|| poll_once(&mut g, &wb));
        eprintln!("drop-panic n={n}: {:?}", r.as_ref().map(|p| p.is_pending()));
        if let Err(m) = &r {
            assert_eq!(m, "parent drop");
            let r = catch(|| poll_once(&mut g, &wb));
            assert!(r.unwrap_err().contains("polled after a panic"));
        }
        a.drop_panics.store(false, Ordering::SeqCst);
        drop(g);
        assert_eq!(log.cd(), n - 1);
        drop(wa);
    }
});

// ---------------------------------------------------------------------------
// Registration: tasks, threads, wakes during a pass
// ---------------------------------------------------------------------------

/// A child that, during its poll, lends its borrowed waker to a scoped
/// thread that wakes it (once per `wake_polls` polls), then pends.
struct Lender {
    polls: usize,
    wake_polls: usize,
    done_after: usize,
}
impl Future for Lender {
    type Output = Result<usize, ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        if self.polls > self.done_after {
            return Poll::Ready(Ok(self.polls));
        }
        if self.polls <= self.wake_polls {
            let w = cx.waker();
            std::thread::scope(|s| {
                s.spawn(|| w.wake_by_ref());
            });
        }
        Poll::Pending
    }
}

/// The future moves between "tasks" (wakers A, B, C, ...) between polls;
/// once a clone escaped (registered), a wake from a scoped thread during a
/// pass must reach the current task (or the task wakes itself), never only
/// an older one. Small and engine.
#[test]
fn moved_between_tasks_scoped_wake_reaches_current_task() {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let slot = Arc::new(Mutex::new(None));
        let go = Arc::new(AtomicBool::new(false));
        let mut kids: Vec<Pin<Box<dyn Future<Output = Result<usize, ()>> + Send>>> = Vec::new();
        {
            let (slot, go, log) = (slot.clone(), go.clone(), log.clone());
            kids.push(Box::pin(futures::FutureExt::map(
                Stash { slot, go, log },
                |r| r.map(|_| 0).map_err(|_| ()),
            )));
        }
        for _ in 1..n {
            kids.push(Box::pin(Lender {
                polls: 0,
                wake_polls: 1000,
                done_after: 20,
            }));
        }
        let mut g = try_gather(kids);
        let mut tasks = Vec::new();
        for round in 0..30 {
            let (c, w) = counting();
            tasks.push(c.clone());
            if round == 5 {
                // The stash clone goes away: no escaped clone, but registered.
                go.store(true, Ordering::SeqCst);
                if let Some(s) = slot.lock().unwrap().take() {
                    s.wake();
                }
            }
            let old_before: usize = tasks[..tasks.len() - 1]
                .iter()
                .map(|t| t.wakes.load(Ordering::SeqCst))
                .sum();
            let p = poll_once(&mut g, &w);
            let old_after: usize = tasks[..tasks.len() - 1]
                .iter()
                .map(|t| t.wakes.load(Ordering::SeqCst))
                .sum();
            assert_eq!(
                old_before, old_after,
                "n={n} round={round}: a wake of the pass reached a task the future left"
            );
            match p {
                Poll::Ready(r) => {
                    assert!(r.is_ok());
                    break;
                }
                Poll::Pending => {
                    assert!(
                        c.wakes.load(Ordering::SeqCst) >= 1,
                        "n={n} round={round}: current task not woken (lost wake)"
                    );
                }
            }
        }
        drop(g);
    }
}

/// A parent waker whose `will_wake` is always false (a new waker each
/// poll) with an escaped clone woken from another thread between polls:
/// the latest waker is woken each time, every clone of every parent waker
/// dropped once the gather and the stash are gone.
#[test]
fn new_parent_waker_every_poll_no_leak_no_loss() {
    quiet();
    for n in [3usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let slot = Arc::new(Mutex::new(None));
        let go = Arc::new(AtomicBool::new(false));
        let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
            slot: slot.clone(),
            go: go.clone(),
            log: log.clone(),
        })];
        for i in 1..n {
            let mut k = Kid::new(i, 1000, false, &log);
            k.self_wake = false;
            kids.push(Box::pin(k));
        }
        let mut g = try_gather(kids);
        let mut evils = Vec::new();
        for round in 0..20 {
            let e = Evil::new();
            let w = e.waker();
            assert!(poll_once(&mut g, &w).is_pending());
            let s = slot.lock().unwrap().take().expect("stash");
            std::thread::scope(|sc| {
                sc.spawn(move || s.wake());
            });
            assert_eq!(
                e.wakes.load(Ordering::SeqCst),
                1,
                "n={n} round={round}: latest waker woken once"
            );
            drop(w);
            evils.push(e);
        }
        drop(g);
        for e in &evils {
            assert_eq!(
                Arc::strong_count(e),
                1,
                "n={n}: a parent waker clone leaked"
            );
        }
    }
}

/// A clone's wake on another thread holds the parent slot (its wake_by_ref
/// blocks) while the owner, moved to task B, registers at the start of the
/// pass (the registration finds the slot busy): B must be woken, and a
/// later poll of B must register B.
#[test]
fn registration_races_a_blocked_wake() {
    quiet();
    struct Blocking {
        entered: Barrier,
        release: Barrier,
        block: AtomicBool,
    }
    impl Wake for Blocking {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if self.block.swap(false, Ordering::SeqCst) {
                self.entered.wait();
                self.release.wait();
            }
        }
    }
    for n in [2usize, 16, 17, 63, 64] {
        common::watchdog("race", move || {
            let log = Arc::new(Log::default());
            let slot = Arc::new(Mutex::new(None));
            let go = Arc::new(AtomicBool::new(false));
            let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
                slot: slot.clone(),
                go: go.clone(),
                log: log.clone(),
            })];
            for i in 1..n {
                let mut k = Kid::new(i, 1000, false, &log);
                k.self_wake = false;
                kids.push(Box::pin(k));
            }
            let mut g = try_gather(kids);
            let a = Arc::new(Blocking {
                entered: Barrier::new(2),
                release: Barrier::new(2),
                block: AtomicBool::new(true),
            });
            let wa = Waker::from(a.clone());
            assert!(poll_once(&mut g, &wa).is_pending());
            let s = slot.lock().unwrap().take().unwrap();
            let t = std::thread::spawn(move || s.wake());
            a.entered.wait();
            let (b, wb) = counting();
            let r = poll_once(&mut g, &wb);
            assert!(r.is_pending());
            a.release.wait();
            t.join().unwrap();
            assert!(b.wakes.load(Ordering::SeqCst) >= 1, "n={n}: B not woken");
            // Now B polls again and must be the registered waker.
            assert!(poll_once(&mut g, &wb).is_pending());
            let before = b.wakes.load(Ordering::SeqCst);
            let s = slot.lock().unwrap().take().unwrap();
            std::thread::spawn(move || s.wake()).join().unwrap();
            assert_eq!(
                b.wakes.load(Ordering::SeqCst),
                before + 1,
                "n={n}: B registered"
            );
            drop(g);
        });
    }
}

/// Tokio multi-thread stress: many try_gathers of 1..=17 children woken from
/// other threads (std threads after short sleeps), some failing late; each
/// run under a timeout: a hang is a lost wake.
#[test]
fn tokio_multithread_stress() {
    quiet();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..200usize {
            handles.push(tokio::spawn(async move {
                let n = 1 + t % 17;
                let kids: Vec<_> = (0..n)
                    .map(|i| {
                        let (tx, rx) = futures::channel::oneshot::channel::<Result<usize, usize>>();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_micros(
                                ((i * 37 + t * 11) % 300) as u64,
                            ));
                            let _ = tx.send(if t % 5 == 0 && i == n / 2 {
                                Err(i)
                            } else {
                                Ok(i)
                            });
                        });
                        futures::FutureExt::map(rx, |r| r.unwrap_or(Err(usize::MAX)))
                    })
                    .collect();
                let r = tokio::time::timeout(Duration::from_secs(20), try_gather(kids)).await;
                (t, n, r)
            }));
        }
        for h in handles {
            let (t, n, r) = h.await.unwrap();
            let r = r.unwrap_or_else(|_| panic!("task {t} (n={n}) hung: lost wake"));
            if t % 5 == 0 {
                assert_eq!(r, Err(n / 2));
            } else {
                assert_eq!(r, Ok((0..n).collect::<Vec<_>>()));
            }
        }
    });
}

// ---------------------------------------------------------------------------
// gather!/try_gather! after retire
// ---------------------------------------------------------------------------

/// A finished tuple child's destructor panics: the panic propagates, its
/// output dropped once, at once; the others on drop; polled again: "after a
/// panic".
#[test]
fn tuple_finished_child_destructor_panics() {
    quiet();
    let log = Arc::new(Log::default());
    let mut k0 = Kid::new(0, 0, false, &log);
    k0.drop_panics = true;
    let mut g = awaitkit::gather!(k0, Kid::new(1, 3, false, &log));
    let (_c, w) = counting();
    let r = catch(|| poll_once(&mut g, &w));
    assert_eq!(r.err().as_deref(), Some("child drop 0"));
    assert_eq!((log.vm(), log.vd()), (1, 1), "output dropped at once");
    assert_eq!(log.cd(), 1);
    let r = catch(|| poll_once(&mut g, &w));
    assert!(r.unwrap_err().contains("polled after a panic"));
    drop(g);
    assert_eq!(log.cd(), 2);
    assert_eq!(log.vd(), 1);
}

/// try_gather!: fail-fast ordering (every child and kept value dropped
/// before the Err is handed out), at every position.
#[test]
fn tuple_fail_fast_ordering() {
    quiet();
    for pos in 0..4 {
        let log = Arc::new(Log::default());
        let k = |i: usize| {
            Kid::new(
                i,
                if i == pos {
                    1
                } else if i % 2 == 0 {
                    0
                } else {
                    4
                },
                i == pos,
                &log,
            )
        };
        let mut g = awaitkit::try_gather!(k(0), k(1), k(2), k(3));
        let (_c, w) = counting();
        assert!(poll_once(&mut g, &w).is_pending());
        let Poll::Ready(Err(e)) = poll_once(&mut g, &w) else {
            panic!("pos={pos}")
        };
        assert_eq!(e.0, pos);
        assert_eq!(log.cd(), 4);
        assert_eq!(log.vm(), log.vd());
        assert!(g.is_terminated());
        let r = catch(|| poll_once(&mut g, &w));
        assert!(r.unwrap_err().contains("polled after completion"));
    }
}

// Polled during another unwind (from a destructor while a panic unwinds):
// a finished child's panicking destructor must not abort; its panic is
// discarded, the output kept/dropped once. Tuple and small block.
scenario!(polled_during_unwind_no_abort, {
    quiet();
    struct PollOnDrop<F: Future + Unpin>(Option<F>, Arc<AtomicUsize>);
    impl<F: Future + Unpin> Drop for PollOnDrop<F> {
        fn drop(&mut self) {
            let (_c, w) = counting();
            let mut f = self.0.take().unwrap();
            if poll_once(&mut f, &w).is_ready() {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    // gather!
    let log = Arc::new(Log::default());
    let mut k0 = Kid::new(0, 0, false, &log);
    k0.drop_panics = true;
    let g = awaitkit::gather!(k0, Kid::new(1, 0, false, &log));
    let readies = Arc::new(AtomicUsize::new(0));
    let r = catch(|| {
        let _p = PollOnDrop(Some(g), readies.clone());
        panic!("outer");
    });
    assert_eq!(r.err().as_deref(), Some("outer"));
    assert_eq!(log.cd(), 2);
    assert_eq!(log.vm(), log.vd());
    // small try_gather
    let log = Arc::new(Log::default());
    let kids: Vec<Kid> = (0..4)
        .map(|i| {
            let mut k = Kid::new(i, 0, i == 2, &log);
            k.drop_panics = i != 2;
            k
        })
        .collect();
    let g = try_gather(kids);
    let r = catch(|| {
        let _p = PollOnDrop(Some(g), readies.clone());
        panic!("outer");
    });
    assert_eq!(r.err().as_deref(), Some("outer"));
    assert_eq!(log.cd(), 4);
    assert_eq!(log.vm(), log.vd());
    assert_eq!(log.ed(), 1);
    // plain gather small with panicking finished child
    let log = Arc::new(Log::default());
    let kids: Vec<Kid> = (0..3)
        .map(|i| {
            let mut k = Kid::new(i, 0, false, &log);
            k.drop_panics = true;
            k
        })
        .collect();
    let g = gather(kids);
    let r = catch(|| {
        let _p = PollOnDrop(Some(g), readies.clone());
        panic!("outer");
    });
    assert_eq!(r.err().as_deref(), Some("outer"));
    assert_eq!(log.cd(), 3);
    assert_eq!(log.vm(), log.vd());
});

/// A child woken from elsewhere on every poll: alternately by a clone handed
/// to a std thread (escaped, woken after a short sleep) and by its borrowed
/// waker lent to a scoped thread during the poll; `Err` at the end if `err`.
struct Remote {
    i: usize,
    polls: usize,
    until: usize,
    err: bool,
}
impl Future for Remote {
    type Output = Result<usize, usize>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        if self.polls > self.until {
            return Poll::Ready(if self.err { Err(self.i) } else { Ok(self.i) });
        }
        if (self.polls + self.i) % 2 == 0 {
            let w = cx.waker().clone();
            let us = ((self.i * 13 + self.polls * 7) % 50) as u64;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(us));
                w.wake();
            });
        } else {
            let w = cx.waker();
            std::thread::scope(|s| {
                s.spawn(|| w.wake_by_ref());
            });
        }
        Poll::Pending
    }
}

/// Tokio multi-thread: the gather hops to a new task every few polls (the
/// old task's waker left registered), children woken by escaped clones and by
/// borrowed wakers lent to scoped threads during passes. A hop that loses a
/// wake hangs: 20 s timeout per gather.
#[test]
fn tokio_gather_hops_between_tasks() {
    quiet();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..120usize {
            handles.push(tokio::spawn(async move {
                let n = [1usize, 2, 7, 16, 17][t % 5];
                let err_at = if t % 3 == 0 { Some(t % n) } else { None };
                let kids: Vec<Remote> = (0..n)
                    .map(|i| Remote {
                        i,
                        polls: 0,
                        until: 3 + (i + t) % 5,
                        err: err_at == Some(i),
                    })
                    .collect();
                let mut g = Some(try_gather(kids));
                let fut = async move {
                    loop {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let mut gg = g.take().unwrap();
                        tokio::spawn(async move {
                            let mut polls = 0;
                            let r = std::future::poll_fn(|cx| {
                                polls += 1;
                                if polls > 2 {
                                    return Poll::Ready(None);
                                }
                                Pin::new(&mut gg).poll(cx).map(Some)
                            })
                            .await;
                            let _ = tx.send((gg, r));
                        });
                        let (gg, r) = rx.await.unwrap();
                        if let Some(r) = r {
                            return r;
                        }
                        g = Some(gg);
                    }
                };
                let r = tokio::time::timeout(Duration::from_secs(20), fut).await;
                (t, n, err_at, r)
            }));
        }
        for h in handles {
            let (t, n, err_at, r) = h.await.unwrap();
            let r = r.unwrap_or_else(|_| panic!("gather {t} (n={n}) hung after hops: lost wake"));
            match err_at {
                Some(i) => assert_eq!(r, Err(i)),
                None => assert_eq!(r, Ok((0..n).collect::<Vec<_>>())),
            }
        }
    });
}

/// Wakes from a clone racing the start-of-pass registration: a thread wakes a
/// child's escaped clone in a loop while the owner polls with a new waker
/// every round (so every pass re-registers, sometimes finding the slot
/// busy). After each poll returns, once the racer woke twice more, the
/// round's waker must have been woken (else the wake went only to an older
/// task: lost).
#[test]
fn clone_wakes_race_start_of_pass_registration() {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        common::watchdog("race2", move || {
            let log = Arc::new(Log::default());
            let slot = Arc::new(Mutex::new(None));
            let go = Arc::new(AtomicBool::new(false));
            let mut kids: Vec<Boxed> = vec![Box::pin(Stash {
                slot: slot.clone(),
                go: go.clone(),
                log: log.clone(),
            })];
            for i in 1..n {
                let mut k = Kid::new(i, 1_000_000, false, &log);
                k.self_wake = false;
                kids.push(Box::pin(k));
            }
            let mut g = try_gather(kids);
            let (_c0, w0) = counting();
            assert!(poll_once(&mut g, &w0).is_pending());
            let clone = slot.lock().unwrap().clone().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let fired = Arc::new(AtomicUsize::new(0));
            let racer = {
                let (stop, fired) = (stop.clone(), fired.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        clone.wake_by_ref();
                        fired.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            for round in 0..3000 {
                let (c, w) = counting();
                assert!(poll_once(&mut g, &w).is_pending());
                let f = fired.load(Ordering::SeqCst);
                while fired.load(Ordering::SeqCst) < f + 2 {
                    std::hint::spin_loop();
                }
                assert!(
                    c.wakes.load(Ordering::SeqCst) >= 1,
                    "n={n} round={round}: this round's task never woken"
                );
            }
            stop.store(true, Ordering::SeqCst);
            racer.join().unwrap();
            drop(g);
        });
    }
}

// An Err from a child whose destructor panics AND whose error value's
// destructor panics too (small, engine, try_gather!): no abort, the child's
// panic propagates, the error dropped once; siblings dropped once on drop.
scenario!(err_child_and_error_both_panic_on_drop, {
    quiet();
    for n in [1usize, 2, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n)
            .map(|i| {
                let mut k = Kid::new(i, if i == 0 { 0 } else { 3 }, i == 0, &log);
                k.drop_panics = i == 0;
                k.err_drop_panics = i == 0;
                k
            })
            .collect();
        let mut g = try_gather(kids);
        let (_c, w) = counting();
        let r = catch(|| poll_once(&mut g, &w));
        assert_eq!(r.err().as_deref(), Some("child drop 0"), "n={n}");
        assert_eq!(log.ed(), 1, "n={n}");
        drop(g);
        assert_eq!(log.cd(), n, "n={n}");
    }
    let log = Arc::new(Log::default());
    let mut k0 = Kid::new(0, 0, true, &log);
    k0.drop_panics = true;
    k0.err_drop_panics = true;
    let mut g = awaitkit::try_gather!(k0, Kid::new(1, 3, false, &log));
    let (_c, w) = counting();
    let r = catch(|| poll_once(&mut g, &w));
    assert_eq!(r.err().as_deref(), Some("child drop 0"));
    assert_eq!(log.ed(), 1);
    drop(g);
    assert_eq!(log.cd(), 2);
});

// A sibling panics on drop during fail-fast and the error's destructor
// panics too: the error is dropped under `contain` (no abort), the
// sibling's panic propagates. Small, engine, try_gather!.
scenario!(sibling_and_error_both_panic_on_drop, {
    quiet();
    for n in [2usize, 16, 17, 63, 64] {
        let log = Arc::new(Log::default());
        let kids: Vec<Kid> = (0..n)
            .map(|i| {
                let mut k = Kid::new(i, if i == 0 { 0 } else { 3 }, i == 0, &log);
                k.drop_panics = i == 1;
                k.err_drop_panics = i == 0;
                k
            })
            .collect();
        let mut g = try_gather(kids);
        let (_c, w) = counting();
        let r = catch(|| poll_once(&mut g, &w));
        assert_eq!(r.err().as_deref(), Some("child drop 1"), "n={n}");
        assert_eq!(log.ed(), 1, "n={n}");
        assert_eq!(log.cd(), n, "n={n}");
    }
    let log = Arc::new(Log::default());
    let mut k0 = Kid::new(0, 0, true, &log);
    k0.err_drop_panics = true;
    let mut k1 = Kid::new(1, 3, false, &log);
    k1.drop_panics = true;
    let mut g = awaitkit::try_gather!(k0, k1);
    let (_c, w) = counting();
    let r = catch(|| poll_once(&mut g, &w));
    assert_eq!(r.err().as_deref(), Some("child drop 1"));
    assert_eq!(log.ed(), 1);
    assert_eq!(log.cd(), 2);
});
