#![cfg(feature = "test-util")]
//! Adversarial review (rev5) of ccc4b89 / dbadf29 / 2ec9c43: user values
//! dropped during another destructor's unwind, aborts, the wrong panic
//! propagated, leaks/double drops (every finding fixed since, in 2ec9c43's
//! successors). Every scenario runs in a child process
//! (`common::child`).

#[macro_use]
mod common;

use common::child::{expect_panic, panicking_waker, payload_text};

use awaitkit::time::{ManualClock, ManualSleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

static DROPS: AtomicUsize = AtomicUsize::new(0);
static DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);
/// Once set, every `timer-clone` probe panics when dropped.
static ARM_CLONES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

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
        let p = std::thread::panicking();
        LOG.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
            "{}{}",
            self.name,
            if p { "!" } else { "" }
        ));
        if p {
            DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
            eprintln!("REVIEW: probe `{}` dropped during the unwind", self.name);
        }
        if self.explode || (self.name == "timer-clone" && ARM_CLONES.load(Ordering::SeqCst)) {
            panic!("probe `{}` destructor", self.name);
        }
    }
}

fn log() -> Vec<String> {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn assert_none_while_panicking() {
    assert_eq!(
        DROPS_WHILE_PANICKING.load(Ordering::SeqCst),
        0,
        "REVIEW a user value was dropped during the unwind of another destructor's panic (log: {:?})",
        log()
    );
}

fn assert_drops(n: usize) {
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        n,
        "REVIEW every user value is dropped exactly once (log: {:?})",
        log()
    );
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn poll_pinned<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

// A timer on a `ManualClock` carrying a probe (a clone carries a quiet
// probe named `<name>-clone`, or a bomb if `clones_explode`).
struct ProbeTimer {
    clock: ManualClock,
    #[allow(dead_code)]
    probe: Probe,
    clones_explode: bool,
}

impl ProbeTimer {
    fn new(clock: &ManualClock, probe: Probe) -> Self {
        ProbeTimer {
            clock: clock.clone(),
            probe,
            clones_explode: false,
        }
    }
}

impl Clone for ProbeTimer {
    fn clone(&self) -> Self {
        ProbeTimer {
            clock: self.clock.clone(),
            probe: Probe {
                name: "timer-clone",
                explode: self.clones_explode,
            },
            clones_explode: self.clones_explode,
        }
    }
}

struct ProbeSleep {
    inner: ManualSleep,
    _probe: Probe,
}

impl Future for ProbeSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl Timer for ProbeTimer {
    type Sleep = ProbeSleep;
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ProbeSleep {
        ProbeSleep {
            inner: self.clock.sleep_until(deadline),
            _probe: Probe::quiet("sleep"),
        }
    }
    fn reset(&self, sleep: Pin<&mut ProbeSleep>, deadline: Instant) {
        // ProbeSleep is Unpin (ManualSleep and Probe are).
        let s = Pin::into_inner(sleep);
        self.clock.reset(Pin::new(&mut s.inner), deadline);
    }
}

// A future: pending forever, holds a probe.
struct Pend(#[allow(dead_code)] Probe);
impl Future for Pend {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl Unpin for Pend {}

// ---------------------------------------------------------------------------
// Pool: `Inner`'s Drop drops the idle objects, defers their panic; the drop
// glue then drops the manager and the timer.
// ---------------------------------------------------------------------------

struct ProbeManager {
    _probe: Probe,
    object_explodes: bool,
}

impl awaitkit::pool::Manager for ProbeManager {
    type Object = Probe;
    type Error = ();
    const RECYCLE: bool = false;
    fn create(&self) -> impl Future<Output = Result<Probe, ()>> + Send {
        let explode = self.object_explodes;
        async move {
            Ok(Probe {
                name: "object",
                explode,
            })
        }
    }
}

// The idle object panics first, then the manager: the first panic (the
// object's) must propagate. (Inner's doc: "the first panic propagates".)
scenario!(pool_idle_object_then_manager_first_panic_wins, {
    let pool = awaitkit::Pool::new(
        ProbeManager {
            _probe: Probe::bomb("manager"),
            object_explodes: true,
        },
        1,
    );
    let guard = futures::executor::block_on(pool.get()).unwrap();
    drop(guard); // back on the idle list
    let msg = expect_panic(|| drop(pool));
    assert_drops(2);
    assert_none_while_panicking();
    assert_eq!(
        msg,
        "probe `object` destructor",
        "REVIEW the first panic (the idle object's) must propagate, not the manager's (log: {:?})",
        log()
    );
});

// The manager panics: the timer (a later field) must not be dropped
// during that unwind ("then the manager and the timer (none of them
// during another's unwind)").
scenario!(pool_manager_panic_timer_not_dropped_during_unwind, {
    let clock = ManualClock::new();
    let pool = awaitkit::Pool::builder(ProbeManager {
        _probe: Probe::bomb("manager"),
        object_explodes: false,
    })
    .max_size(1)
    .with_timer(ProbeTimer::new(&clock, Probe::quiet("timer")))
    .build()
    .unwrap();
    let msg = expect_panic(|| drop(pool));
    assert_eq!(msg, "probe `manager` destructor");
    assert_none_while_panicking();
});

// The manager and the timer both panic: abort?
scenario!(pool_manager_and_timer_both_panic_no_abort, {
    let clock = ManualClock::new();
    let pool = awaitkit::Pool::builder(ProbeManager {
        _probe: Probe::bomb("manager"),
        object_explodes: false,
    })
    .max_size(1)
    .with_timer(ProbeTimer::new(&clock, Probe::bomb("timer")))
    .build()
    .unwrap();
    let msg = expect_panic(|| drop(pool));
    assert_eq!(msg, "probe `manager` destructor");
});

// The pool handle is dropped while a guard is out; the guard's return is
// the last reference: the idle object's (now the returned one) panic
// propagates out of the guard's drop, every value dropped once.
scenario!(pool_guard_outlives_pool_object_panics_on_last_return, {
    let pool = awaitkit::Pool::new(
        ProbeManager {
            _probe: Probe::quiet("manager"),
            object_explodes: true,
        },
        2,
    );
    let guard = futures::executor::block_on(pool.get()).unwrap();
    drop(pool);
    let msg = expect_panic(|| drop(guard));
    assert_eq!(msg, "probe `object` destructor");
    assert_drops(2);
    assert_none_while_panicking();
});

/// A pool of `size` objects on a quiet manager, every object taken out.
fn pool_all_out(
    object_explodes: bool,
    size: usize,
) -> (
    awaitkit::Pool<ProbeManager>,
    Vec<awaitkit::Pooled<ProbeManager>>,
) {
    let pool = awaitkit::Pool::new(
        ProbeManager {
            _probe: Probe::quiet("manager"),
            object_explodes,
        },
        size,
    );
    let guards = (0..size)
        .map(|_| futures::executor::block_on(pool.get()).unwrap())
        .collect();
    (pool, guards)
}

// close() racing with returns from other threads: every object dropped
// exactly once, none leaked.
scenario!(pool_close_races_returns, {
    for _ in 0..200 {
        DROPS.store(0, Ordering::SeqCst);
        let (pool, guards) = pool_all_out(false, 4);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(5));
        let mut hs = Vec::new();
        for g in guards {
            let b = barrier.clone();
            hs.push(std::thread::spawn(move || {
                b.wait();
                drop(g);
            }));
        }
        barrier.wait();
        pool.close();
        for h in hs {
            h.join().unwrap();
        }
        let status_after = pool.status();
        drop(pool);
        assert_eq!(
            DROPS.load(Ordering::SeqCst),
            5,
            "REVIEW 4 objects + the manager, each dropped once (status after close: {status_after:?})"
        );
    }
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// Pool, continued (session of 2026-12-05): a returned guard, a cancelled
// `get`, each with several parts that panic.
// ---------------------------------------------------------------------------

static ARM_NOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A timer on a `ManualClock` whose `now` panics once armed.
#[derive(Clone)]
struct NowBomb(ManualClock);

impl Timer for NowBomb {
    type Sleep = ManualSleep;
    fn now(&self) -> Instant {
        if ARM_NOW.load(Ordering::SeqCst) {
            panic!("timer now");
        }
        self.0.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ManualSleep {
        self.0.sleep_until(deadline)
    }
    fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// A manager whose recycle check never finishes and panics when dropped.
struct RecycleBombManager;

impl awaitkit::pool::Manager for RecycleBombManager {
    type Object = Probe;
    type Error = ();
    async fn create(&self) -> Result<Probe, ()> {
        Ok(Probe::bomb("object"))
    }
    fn recycle(&self, _: &mut Probe) -> impl Future<Output = Result<(), ()>> + Send {
        let probe = Probe::bomb("recycle");
        async move {
            let _probe = probe;
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

// A guard comes back to a pool with an idle timeout: the timer panics
// stamping its return; the object (dropped instead, its slot freed)
// panics too, and so does the waker of the waiter its permit goes to. The
// timer's panic propagates; nothing is dropped during its unwind (the object
// and the permit were, and the waker panicked inside that unwind: abort).
scenario!(
    pool_return_timer_object_and_next_waker_all_panic_no_abort,
    {
        let pool = awaitkit::Pool::builder(ProbeManager {
            _probe: Probe::quiet("manager"),
            object_explodes: true,
        })
        .max_size(1)
        .idle_timeout(Duration::from_secs(60))
        .with_timer(NowBomb(ManualClock::new()))
        .build()
        .unwrap();
        let guard = futures::executor::block_on(pool.get()).unwrap();
        let mut waiter = pool.get();
        let waker = panicking_waker();
        assert!(
            Pin::new(&mut waiter)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        ARM_NOW.store(true, Ordering::SeqCst);
        let msg = expect_panic(|| drop(guard));
        ARM_NOW.store(false, Ordering::SeqCst);
        assert_eq!(
            msg,
            "timer now",
            "REVIEW the first panic propagates (log: {:?})",
            log()
        );
        assert_none_while_panicking();
        assert_eq!(log(), ["object"], "REVIEW the object is dropped once");
        assert_eq!(pool.status().size, 0, "REVIEW its slot is freed");
        drop(waiter);
        drop(pool);
        assert_drops(2);
    }
);

// The last pool handle is a guard's, and the pool is closed: the object
// (dropped on its return) panics, then the pool goes with the guard's
// handle and its manager panics too. The object's panic propagates; the
// manager is not dropped during its unwind (it was: abort).
scenario!(
    pool_closed_last_handle_object_and_manager_both_panic_no_abort,
    {
        let pool = awaitkit::Pool::new(
            ProbeManager {
                _probe: Probe::bomb("manager"),
                object_explodes: true,
            },
            1,
        );
        let guard = futures::executor::block_on(pool.get()).unwrap();
        pool.close();
        drop(pool);
        let msg = expect_panic(|| drop(guard));
        assert_eq!(
            msg,
            "probe `object` destructor",
            "REVIEW the first panic propagates (log: {:?})",
            log()
        );
        assert_none_while_panicking();
        assert_drops(2);
    }
);

// A `get` is cancelled while the manager checks an idle object: the check's
// future panics when dropped, then the object, then the waker of the waiter
// the permit goes to. The check's panic propagates; the object is not
// dropped during its unwind (it was, inside the `async` block's drop glue:
// abort).
scenario!(
    pool_get_cancelled_in_recycle_check_object_and_next_waker_panic_no_abort,
    {
        let pool = awaitkit::Pool::new(RecycleBombManager, 1);
        let guard = futures::executor::block_on(pool.get()).unwrap();
        drop(guard); // idle
        let mut checking = pool.get();
        assert!(
            poll_once(&mut checking).is_pending(),
            "the check never finishes"
        );
        let mut waiter = pool.get();
        let waker = panicking_waker();
        assert!(
            Pin::new(&mut waiter)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let msg = expect_panic(|| drop(checking));
        assert_eq!(
            msg,
            "probe `recycle` destructor",
            "REVIEW the first panic propagates (log: {:?})",
            log()
        );
        assert_none_while_panicking();
        assert_eq!(
            log(),
            ["recycle", "object"],
            "REVIEW each dropped once, the check first"
        );
        assert_eq!(pool.status().size, 0, "REVIEW the object's slot is freed");
        // The permit went to the waiter: it creates an object.
        let got = poll_once(&mut waiter);
        assert!(
            matches!(got, Poll::Ready(Ok(_))),
            "REVIEW the waiter is served"
        );
        drop(got); // back on the idle list
        drop(waiter);
        let msg = expect_panic(move || drop(pool));
        assert_eq!(msg, "probe `object` destructor");
        assert_none_while_panicking();
    }
);

// Shrinking drops idle objects above the new size: two of them panic. The
// first panic propagates once both are dropped (a `Vec`'s drop aborted on
// the second).
scenario!(pool_resize_two_idle_objects_panic_no_abort, {
    let (pool, guards) = pool_all_out(true, 3);
    drop(guards); // three idle objects
    let msg = expect_panic(|| pool.resize(1));
    assert_eq!(msg, "probe `object` destructor");
    assert_none_while_panicking();
    assert_drops(2);
    let status = pool.status();
    assert_eq!(
        (status.max_size, status.size, status.idle),
        (1, 1, 1),
        "{status:?}"
    );
    let msg = expect_panic(move || drop(pool));
    assert_eq!(msg, "probe `object` destructor");
    assert_drops(4);
});

// ---------------------------------------------------------------------------
// Watch: the future is dropped first, then the hook, each on its own.
// ---------------------------------------------------------------------------

// Both destructors panic: the future's (dropped first) propagates, the
// hook's is discarded, neither is dropped during the other's unwind.
scenario!(watch_future_then_hook_first_panic_wins, {
    let hook_probe = Probe::bomb("hook");
    let w = awaitkit::watch(Pend(Probe::bomb("future"))).on_slow_poll(move |_| {
        let _ = &hook_probe;
    });
    let msg = expect_panic(|| drop(w));
    assert_drops(2);
    assert_none_while_panicking();
    assert_eq!(
        msg,
        "probe `future` destructor",
        "the first panic (the future's, dropped first) propagates (log: {:?})",
        log()
    );
});

// ---------------------------------------------------------------------------
// Semaphore::limit: the future is now dropped before the permit.
// ---------------------------------------------------------------------------

// The future's destructor panics while it holds the permit; a waiter's
// waker panics when the permit's release wakes it (during the unwind).
scenario!(limit_future_bomb_and_waiter_waker_bomb_no_abort, {
    let sem = awaitkit::Semaphore::new(1);
    let mut lim = Box::pin(sem.limit(Pend(Probe::bomb("future"))));
    assert!(poll_pinned(lim.as_mut()).is_pending());
    assert_eq!(sem.available_permits(), 0);
    let mut acq = Box::pin(sem.acquire());
    let w = panicking_waker();
    assert!(acq.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
    let msg = expect_panic(|| drop(lim));
    assert_eq!(msg, "probe `future` destructor");
    assert!(
        poll_pinned(acq.as_mut()).is_ready(),
        "the permit went to the waiter"
    );
    assert_drops(1);
});

// What the future's destructor sees of the semaphore: before the change the
// permit was released first (1 available in the future's drop), now 0.
// A user whose future's Drop takes a permit of the same semaphore
// (`try_acquire`) — e.g. to run a synchronous cleanup under the limit —
// now fails where it succeeded.
static SEEN_AVAILABLE: AtomicUsize = AtomicUsize::new(usize::MAX);
struct SeesSem<'a>(&'a awaitkit::Semaphore);
impl Future for SeesSem<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl Drop for SeesSem<'_> {
    fn drop(&mut self) {
        SEEN_AVAILABLE.store(self.0.available_permits(), Ordering::SeqCst);
    }
}
/// `Semaphore::limit`'s documented drop order: the future's destructor runs
/// while the permit is still held.
#[test]
fn limit_drop_order_observable_by_future_destructor() {
    let sem = awaitkit::Semaphore::new(1);
    let sem2 = awaitkit::Semaphore::new(1);
    let _ = &sem2;
    let mut lim = Box::pin(sem.limit(SeesSem(&sem)));
    assert!(poll_pinned(lim.as_mut()).is_pending());
    drop(lim);
    assert_eq!(
        SEEN_AVAILABLE.load(Ordering::SeqCst),
        0,
        "the cancelled future's destructor runs while its permit is held"
    );
}

// The output is ready, the release's wake panics: the output is dropped
// (not during an unwind), the waker's panic propagates.
scenario!(limit_ready_output_with_waiter_waker_bomb, {
    let sem = awaitkit::Semaphore::new(1);
    let mut lim = Box::pin(sem.limit(async { Probe::quiet("output") }));
    // Take the permit first so that limit waits, then queue a panicking waiter.
    let p = sem.try_acquire().unwrap();
    assert!(poll_pinned(lim.as_mut()).is_pending());
    let mut acq = Box::pin(sem.acquire());
    let w = panicking_waker();
    assert!(acq.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
    drop(p); // limit's acquire is first in line (queued before acq)
    let msg = expect_panic(|| {
        let _ = poll_pinned(lim.as_mut());
    });
    assert_eq!(msg, "waker wake");
    drop(lim);
    drop(acq);
    assert_drops(1);
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// Builders: a replaced part's destructor panics while the rebuilt value is
// already built (the return value, the rest of `self`).
// ---------------------------------------------------------------------------

// `Batch::with_timer` twice, the first timer's destructor panics: the
// rebuilt batch (function, items, new timer) must not be dropped during
// that unwind.
scenario!(batch_with_timer_twice_old_timer_panics, {
    let clock = ManualClock::new();
    let f_probe = Probe::quiet("f");
    let msg = expect_panic(|| {
        let b = awaitkit::process_batch(vec![1, 2], 1, move |i: i32| {
            let _ = &f_probe;
            async move { i }
        })
        .with_timer(ProbeTimer::new(&clock, Probe::bomb("old-timer")))
        .with_timer(ProbeTimer::new(&clock, Probe::quiet("new-timer")));
        drop(b);
    });
    assert_eq!(msg, "probe `old-timer` destructor");
    assert_drops(3);
    assert_none_while_panicking();
});

// `Retry::retry_if` twice, the first predicate's capture panics when
// dropped: the operation and the new predicate must not be dropped during
// that unwind.
scenario!(retry_retry_if_twice_old_predicate_panics, {
    let op_probe = Probe::quiet("op");
    let p1 = Probe::bomb("pred1");
    let p2 = Probe::quiet("pred2");
    let msg = expect_panic(|| {
        let r = awaitkit::RetryPolicy::new(3)
            .retry(move || {
                let _ = &op_probe;
                async { Err::<(), ()>(()) }
            })
            .retry_if(move |_: &()| {
                let _ = &p1;
                true
            })
            .retry_if(move |_: &()| {
                let _ = &p2;
                true
            });
        drop(r);
    });
    assert_eq!(msg, "probe `pred1` destructor");
    assert_drops(3);
    assert_none_while_panicking();
});

// `Retry::with_timer` twice, the first timer panics when dropped.
scenario!(retry_with_timer_twice_old_timer_panics, {
    let clock = ManualClock::new();
    let op_probe = Probe::quiet("op");
    let msg = expect_panic(|| {
        let r = awaitkit::RetryPolicy::new(3)
            .retry(move || {
                let _ = &op_probe;
                async { Err::<(), ()>(()) }
            })
            .with_timer(ProbeTimer::new(&clock, Probe::bomb("old-timer")))
            .with_timer(ProbeTimer::new(&clock, Probe::quiet("new-timer")));
        drop(r);
    });
    assert_eq!(msg, "probe `old-timer` destructor");
    assert_drops(3);
    assert_none_while_panicking();
});

// `Wait::with_timer` twice, the first timer panics when dropped.
scenario!(wait_with_timer_twice_old_timer_panics, {
    let clock = ManualClock::new();
    let msg = expect_panic(|| {
        let w = awaitkit::wait(
            vec![Pend(Probe::quiet("child"))],
            awaitkit::ReturnWhen::AllCompleted,
        )
        .with_timeout(Duration::from_secs(1))
        .with_timer(ProbeTimer::new(&clock, Probe::bomb("old-timer")))
        .with_timer(ProbeTimer::new(&clock, Probe::quiet("new-timer")));
        drop(w);
    });
    assert_eq!(msg, "probe `old-timer` destructor");
    assert_drops(3);
    assert_none_while_panicking();
});

// `AsCompletedUntil::with_timer` twice, the first timer panics when dropped.
scenario!(as_completed_until_with_timer_twice_old_timer_panics, {
    let clock = ManualClock::new();
    let msg = expect_panic(|| {
        let s = awaitkit::as_completed(vec![Pend(Probe::quiet("child"))])
            .with_timeout(Duration::from_secs(1))
            .with_timer(ProbeTimer::new(&clock, Probe::bomb("old-timer")))
            .with_timer(ProbeTimer::new(&clock, Probe::quiet("new-timer")));
        drop(s);
    });
    assert_eq!(msg, "probe `old-timer` destructor");
    assert_drops(3);
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// Retry: callbacks panicking in after_failure.
// ---------------------------------------------------------------------------

// The predicate panics; the failure's error panics when dropped too: the
// predicate's panic propagates, the error is dropped once.
scenario!(retry_predicate_and_error_both_panic, {
    let mut r = Box::pin(
        awaitkit::RetryPolicy::new(3)
            .retry(|| async { Err::<(), Probe>(Probe::bomb("err")) })
            .retry_if(|_: &Probe| panic!("predicate")),
    );
    let msg = expect_panic(|| {
        let _ = poll_pinned(r.as_mut());
    });
    assert_eq!(msg, "predicate");
    assert_drops(1);
    drop(r);
    assert_drops(1);
    assert_none_while_panicking();
});

// The hook panics after a timed-out attempt: attempt dropped, no double drop.
scenario!(retry_hook_panics_after_failure_counts, {
    let mut r = Box::pin(
        awaitkit::RetryPolicy::new(3)
            .retry(|| async { Err::<(), Probe>(Probe::quiet("err")) })
            .on_retry(|_: &awaitkit::RetryEvent<'_, Probe>| panic!("hook")),
    );
    let msg = expect_panic(|| {
        let _ = poll_pinned(r.as_mut());
    });
    assert_eq!(msg, "hook");
    assert_drops(1);
    let msg2 = expect_panic(|| {
        let _ = poll_pinned(r.as_mut());
    });
    let _ = msg2; // poisoned
    drop(r);
    assert_drops(1);
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// Behaviour of the refactored builders: prints a transcript (compared
// between this commit and ccc4b89^ by the reviewer: `diff` of the stdout).
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Transcripts: each test collects lines describing what the builders and
// accessors did, checked against the lines ccc4b89^ gave (the reviewer's
// diff, kept as the expected values; `TRANSCRIPT_PRINT=1` prints them).
// ---------------------------------------------------------------------------

thread_local! {
    static TRANSCRIPT: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn transcript(line: String) {
    TRANSCRIPT.with(|t| t.borrow_mut().push(line));
}

fn check_transcript(expected: &[&str]) {
    let got = TRANSCRIPT.with(|t| std::mem::take(&mut *t.borrow_mut()));
    if std::env::var_os("TRANSCRIPT_PRINT").is_some() {
        for line in &got {
            println!("{line:?},");
        }
    }
    assert_eq!(got, expected, "the same as before the change (ccc4b89^)");
}

fn drive<F: Future + Unpin>(clock: &ManualClock, f: &mut F) -> (F::Output, usize) {
    for round in 0..10_000 {
        if let Poll::Ready(v) = poll_once(f) {
            return (v, round);
        }
        clock.advance(Duration::from_millis(7));
    }
    panic!("REVIEW did not finish");
}

#[test]
fn transcript_batch_builders() {
    use std::sync::Arc;
    for variant in 0..8 {
        let clock = ManualClock::new();
        let lim =
            awaitkit::RateLimiter::new(2, Duration::from_millis(50)).with_timer(clock.clone());
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let cb = move |p: &awaitkit::Progress| ev.lock().unwrap().push(format!("{p:?}"));
        let f = |i: u32| async move { i * 10 };
        let items = 0..7u32;
        let res = match variant {
            0 => {
                let mut b = awaitkit::process_batch(items, 2, f)
                    .rate_limit(&lim)
                    .on_progress(cb)
                    .with_timer(clock.clone());
                format!("{:?}", drive(&clock, &mut b))
            }
            1 => {
                let mut b = awaitkit::process_batch(items, 2, f)
                    .with_timer(clock.clone())
                    .on_progress(cb)
                    .rate_limit(&lim);
                format!("{:?}", drive(&clock, &mut b))
            }
            2 => {
                let mut b = awaitkit::process_batch(items, 3, f).with_timer(clock.clone());
                let _ = poll_once(&mut b);
                let mut b = b.rate_limit(&lim);
                let _ = poll_once(&mut b);
                let mut b = b.on_progress(cb);
                format!("{:?}", drive(&clock, &mut b))
            }
            3 => {
                let g = |i: u32| async move { if i == 4 { Err(i) } else { Ok(i) } };
                let mut b = awaitkit::process_batch(items, 2, g)
                    .with_timer(clock.clone())
                    .fail_fast()
                    .on_progress(cb)
                    .rate_limit(&lim);
                format!("{:?}", drive(&clock, &mut b))
            }
            4 => {
                let g = |i: u32| async move { if i == 4 { Err(i) } else { Ok(i) } };
                let mut b = awaitkit::process_batch(items, 2, g)
                    .rate_limit(&lim)
                    .with_timer(clock.clone());
                let _ = poll_once(&mut b);
                let mut b = b.fail_fast();
                let _ = poll_once(&mut b);
                let mut b = b.on_progress(cb);
                format!("{:?}", drive(&clock, &mut b))
            }
            5 => {
                let mut b = awaitkit::process_batch(items, 2, f)
                    .on_progress(cb)
                    .with_timer(clock.clone())
                    .rate_limit(&lim);
                let _ = poll_once(&mut b);
                let mut b = b.with_timer(clock.clone());
                format!("{:?}", drive(&clock, &mut b))
            }
            6 => {
                let g = |i: u32| async move { if i % 3 == 2 { Err(i) } else { Ok(i) } };
                let mut b = awaitkit::process_batch(items, 2, g)
                    .with_timer(clock.clone())
                    .rate_limit(&lim)
                    .on_progress(cb);
                format!("{:?}", drive(&clock, &mut b))
            }
            _ => {
                let mut b = awaitkit::process_batch(items, 1, f).with_timer(clock.clone());
                let _ = poll_once(&mut b);
                let mut b = b.on_progress(cb).rate_limit(&lim);
                let _ = poll_once(&mut b);
                let mut b = b.with_timer(clock.clone());
                format!("{:?}", drive(&clock, &mut b))
            }
        };
        let line = format!(
            "batch variant {variant}: {res} elapsed={:?} events={:?}",
            clock.elapsed(),
            events.lock().unwrap()
        );
        transcript(line);
    }
    check_transcript(&[
        "batch variant 0: ([0, 10, 20, 30, 40, 50, 60], 24) elapsed=168ms events=[\"Progress { done: 1, total: Some(7), in_flight: 1, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\", \"Progress { done: 6, total: Some(7), in_flight: 0, elapsed: 112ms, rate: Some(53.57142857142857), eta: Some(18.666666ms) }\", \"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 168ms, rate: Some(41.666666666666664), eta: Some(0ns) }\"]",
        "batch variant 1: ([0, 10, 20, 30, 40, 50, 60], 24) elapsed=168ms events=[\"Progress { done: 1, total: Some(7), in_flight: 1, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\", \"Progress { done: 6, total: Some(7), in_flight: 0, elapsed: 112ms, rate: Some(53.57142857142857), eta: Some(18.666666ms) }\", \"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 168ms, rate: Some(41.666666666666664), eta: Some(0ns) }\"]",
        "batch variant 2: ([0, 10, 20, 30, 40, 50, 60], 0) elapsed=0ns events=[\"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\"]",
        "batch variant 3: (Err(4), 16) elapsed=112ms events=[\"Progress { done: 1, total: Some(7), in_flight: 1, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\"]",
        "batch variant 4: (Err(4), 16) elapsed=112ms events=[\"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\"]",
        "batch variant 5: ([0, 10, 20, 30, 40, 50, 60], 24) elapsed=168ms events=[\"Progress { done: 1, total: Some(7), in_flight: 1, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\", \"Progress { done: 6, total: Some(7), in_flight: 0, elapsed: 112ms, rate: Some(53.57142857142857), eta: Some(18.666666ms) }\", \"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 168ms, rate: Some(41.666666666666664), eta: Some(0ns) }\"]",
        "batch variant 6: ([Ok(0), Ok(1), Err(2), Ok(3), Ok(4), Err(5), Ok(6)], 24) elapsed=168ms events=[\"Progress { done: 1, total: Some(7), in_flight: 1, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 1, elapsed: 56ms, rate: Some(53.57142857142857), eta: Some(74.666666ms) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(71.42857142857143), eta: Some(42ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 1, elapsed: 112ms, rate: Some(44.64285714285714), eta: Some(44.8ms) }\", \"Progress { done: 6, total: Some(7), in_flight: 0, elapsed: 112ms, rate: Some(53.57142857142857), eta: Some(18.666666ms) }\", \"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 168ms, rate: Some(41.666666666666664), eta: Some(0ns) }\"]",
        "batch variant 7: ([0, 10, 20, 30, 40, 50, 60], 16) elapsed=112ms events=[\"Progress { done: 2, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 3, total: Some(7), in_flight: 0, elapsed: 0ns, rate: None, eta: Some(0ns) }\", \"Progress { done: 4, total: Some(7), in_flight: 0, elapsed: 7ms, rate: Some(571.4285714285714), eta: Some(5.25ms) }\", \"Progress { done: 5, total: Some(7), in_flight: 0, elapsed: 56ms, rate: Some(89.28571428571428), eta: Some(22.4ms) }\", \"Progress { done: 6, total: Some(7), in_flight: 0, elapsed: 63ms, rate: Some(95.23809523809524), eta: Some(10.5ms) }\", \"Progress { done: 7, total: Some(7), in_flight: 0, elapsed: 112ms, rate: Some(62.5), eta: Some(0ns) }\"]",
    ]);
}

#[test]
fn transcript_retry_builders() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    for variant in 0..8 {
        let clock = ManualClock::new();
        let lim =
            awaitkit::RateLimiter::new(1, Duration::from_millis(40)).with_timer(clock.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let l2 = live.clone();
        // Attempt n: 1 -> pends forever (timed out), 2 -> Err(2), 3 -> Err(3), 4 -> Ok(4)
        let op = move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let l3 = l2.clone();
            l3.fetch_add(1, Ordering::SeqCst);
            struct G(Arc<AtomicUsize>);
            impl Drop for G {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let g = G(l3);
            async move {
                let _g = g;
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                if n < 4 { Err(n) } else { Ok(n) }
            }
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let hook =
            move |e: &awaitkit::RetryEvent<'_, u32>| ev.lock().unwrap().push(format!("{e:?}"));
        let policy = awaitkit::RetryPolicy::new(5)
            .backoff(awaitkit::Backoff::constant(Duration::from_millis(20)))
            .attempt_timeout(Duration::from_millis(30))
            .total_timeout(Duration::from_millis(if variant == 7 { 60 } else { 1000 }));
        let res = match variant {
            0 => {
                let mut r = policy
                    .retry(op)
                    .rate_limit(&lim)
                    .retry_if(|e: &u32| *e != 99)
                    .on_retry(hook)
                    .with_timer(clock.clone());
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
            1 => {
                let mut r = policy
                    .retry(op)
                    .with_timer(clock.clone())
                    .on_retry(hook)
                    .retry_if(|e: &u32| *e != 99)
                    .rate_limit(&lim);
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
            2 => {
                let mut r = policy.retry(op).with_timer(clock.clone());
                let _ = poll_once(&mut r);
                let mut r = r.on_retry(hook);
                let _ = poll_once(&mut r);
                let mut r = r.retry_if(|e: &u32| *e != 3);
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
            3 => {
                let mut r = policy.retry(op).with_timer(clock.clone()).rate_limit(&lim);
                let _ = poll_once(&mut r);
                clock.advance(Duration::from_millis(31));
                let _ = poll_once(&mut r);
                let mut r = r.on_retry(hook);
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
            4 => {
                let mut r = policy
                    .retry(op)
                    .with_timer(clock.clone())
                    .retry_if(|e: &u32| *e != 2)
                    .on_retry(hook);
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
            5 => {
                let r = policy.retry(op).on_retry(hook).with_timer(clock.clone());
                let before = r.attempts();
                drop(r);
                format!("dropped unpolled attempts={before}")
            }
            6 => {
                let mut r = policy.retry(op).with_timer(clock.clone()).on_retry(hook);
                let _ = poll_once(&mut r);
                let a = r.attempts();
                drop(r);
                format!("dropped after one poll attempts={a}")
            }
            _ => {
                let mut r = policy
                    .retry(op)
                    .rate_limit(&lim)
                    .with_timer(clock.clone())
                    .on_retry(hook);
                let (v, rounds) = drive(&clock, &mut r);
                format!("{v:?} rounds={rounds} attempts={}", r.attempts())
            }
        };
        let line = format!(
            "retry variant {variant}: {res} calls={} live={} elapsed={:?} events={:?}",
            calls.load(Ordering::SeqCst),
            live.load(Ordering::SeqCst),
            clock.elapsed(),
            events.lock().unwrap()
        );
        transcript(line);
    }
    check_transcript(&[
        "retry variant 0: Ok(4) rounds=20 attempts=4 calls=4 live=0 elapsed=140ms events=[\"RetryEvent { attempt: 1, error: TimedOut(Elapsed(())), delay: 20ms }\", \"RetryEvent { attempt: 2, error: Failed(2), delay: 20ms }\", \"RetryEvent { attempt: 3, error: Failed(3), delay: 20ms }\"]",
        "retry variant 1: Ok(4) rounds=20 attempts=4 calls=4 live=0 elapsed=140ms events=[\"RetryEvent { attempt: 1, error: TimedOut(Elapsed(())), delay: 20ms }\", \"RetryEvent { attempt: 2, error: Failed(2), delay: 20ms }\", \"RetryEvent { attempt: 3, error: Failed(3), delay: 20ms }\"]",
        "retry variant 2: Err(RetryError { attempts: 3, last: Failed(3), reason: NotRetryable }) rounds=11 attempts=3 calls=3 live=0 elapsed=77ms events=[\"RetryEvent { attempt: 1, error: TimedOut(Elapsed(())), delay: 20ms }\", \"RetryEvent { attempt: 2, error: Failed(2), delay: 20ms }\"]",
        "retry variant 3: Ok(4) rounds=15 attempts=4 calls=4 live=0 elapsed=136ms events=[\"RetryEvent { attempt: 2, error: Failed(2), delay: 20ms }\", \"RetryEvent { attempt: 3, error: Failed(3), delay: 20ms }\"]",
        "retry variant 4: Err(RetryError { attempts: 2, last: Failed(2), reason: NotRetryable }) rounds=8 attempts=2 calls=2 live=0 elapsed=56ms events=[\"RetryEvent { attempt: 1, error: TimedOut(Elapsed(())), delay: 20ms }\"]",
        "retry variant 5: dropped unpolled attempts=0 calls=0 live=0 elapsed=0ns events=[]",
        "retry variant 6: dropped after one poll attempts=1 calls=1 live=0 elapsed=0ns events=[]",
        "retry variant 7: Err(RetryError { attempts: 2, last: Failed(2), reason: DeadlineReached }) rounds=8 attempts=2 calls=2 live=0 elapsed=56ms events=[\"RetryEvent { attempt: 1, error: TimedOut(Elapsed(())), delay: 20ms }\"]",
    ]);
}

#[test]
fn transcript_wait_and_as_completed_with_timer() {
    use futures::StreamExt;
    let clock = ManualClock::new();
    let c2 = clock.clone();
    let futs: Vec<std::pin::Pin<Box<dyn Future<Output = u32>>>> = vec![
        Box::pin(async { 1 }),
        Box::pin(async move {
            c2.sleep_until(c2.now() + Duration::from_millis(100)).await;
            2
        }),
        Box::pin(std::future::pending()),
    ];
    let mut w = awaitkit::wait(futs, awaitkit::ReturnWhen::AllCompleted)
        .with_timeout(Duration::from_millis(150))
        .with_timer(clock.clone());
    let (o, rounds) = drive(&clock, &mut w);
    transcript(format!(
        "wait: done={:?} pending={} rounds={rounds} elapsed={:?}",
        o.done,
        o.pending.len(),
        clock.elapsed()
    ));

    let clock = ManualClock::new();
    let c2 = clock.clone();
    let futs: Vec<std::pin::Pin<Box<dyn Future<Output = u32>>>> = vec![
        Box::pin(async { 1 }),
        Box::pin(async move {
            c2.sleep_until(c2.now() + Duration::from_millis(100)).await;
            2
        }),
        Box::pin(std::future::pending()),
    ];
    let mut s = awaitkit::as_completed(futs)
        .with_timeout(Duration::from_millis(150))
        .with_timer(clock.clone());
    let mut got = Vec::new();
    for _ in 0..1000 {
        match poll_once(&mut s.next()) {
            Poll::Ready(Some(v)) => got.push(format!("{v:?}")),
            Poll::Ready(None) => break,
            Poll::Pending => clock.advance(Duration::from_millis(7)),
        }
    }
    let rest = s.into_inner().map(|set| set.len());
    transcript(format!(
        "as_completed_until: {got:?} into_inner={rest:?} elapsed={:?}",
        clock.elapsed()
    ));
    check_transcript(&[
        "wait: done=[(0, 1), (1, 2)] pending=1 rounds=22 elapsed=154ms",
        "as_completed_until: [\"Ok(1)\", \"Ok(2)\", \"Err(TimedOut { pending: AsCompleted { len: 1, .. } })\"] into_inner=None elapsed=154ms",
    ]);
}

#[test]
fn transcript_rate_limited_stream_accessors() {
    use futures::StreamExt;
    let clock = ManualClock::new();
    let lim = awaitkit::RateLimiter::new(1, Duration::from_millis(50)).with_timer(clock.clone());
    let mut paced = Box::pin(lim.limit_stream(futures::stream::iter(0..5u32)));
    let mut got = Vec::new();
    for _ in 0..3 {
        if let Poll::Ready(v) = poll_once(&mut paced.next()) {
            got.push(v);
        }
    }
    let hint = futures::Stream::size_hint(paced.as_ref().get_ref().get_ref());
    let held = paced.is_waiting();
    let _ = paced.as_mut().get_pin_mut();
    let rest: Vec<u32> = futures::executor::block_on(
        std::pin::Pin::into_inner(paced)
            .into_inner()
            .collect::<Vec<_>>(),
    );
    transcript(format!(
        "rls: got={got:?} hint={hint:?} held={held} rest={rest:?}"
    ));
    check_transcript(&["rls: got=[Some(0)] hint=(3, Some(3)) held=true rest=[2, 3, 4]"]);
}

// ---------------------------------------------------------------------------
// Auto traits of the changed public types (printed; diffed against ccc4b89^).
// ---------------------------------------------------------------------------

macro_rules! impls {
    ($t:ty: $($tr:tt)+) => {{
        struct W<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        trait No { fn v(&self) -> bool { false } }
        impl<T: ?Sized> No for W<T> {}
        #[allow(dead_code)]
        impl<T: ?Sized + $($tr)+> W<T> { fn v(&self) -> bool { true } }
        W::<$t>(std::marker::PhantomData).v()
    }};
}

macro_rules! traits_of {
    ($name:expr, $t:ty) => {{
        transcript(format!("traits {}: Send={} Sync={} Unpin={} UnwindSafe={} RefUnwindSafe={}",
            $name,
            impls!($t: Send),
            impls!($t: Sync),
            impls!($t: Unpin),
            impls!($t: std::panic::UnwindSafe),
            impls!($t: std::panic::RefUnwindSafe)
        ));
    }};
}

struct Pinned(std::marker::PhantomPinned);
impl Future for Pinned {
    type Output = Result<u32, u32>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}
type BoxFut = std::future::Ready<Result<u32, u32>>;
fn mk_op() -> BoxFut {
    std::future::ready(Ok(1))
}
fn mk_f(i: u32) -> BoxFut {
    std::future::ready(Ok(i))
}

#[test]
fn transcript_auto_traits() {
    traits_of!("Retry", awaitkit::Retry<fn() -> BoxFut, BoxFut>);
    traits_of!(
        "Retry<PhantomPinned fut>",
        awaitkit::Retry<fn() -> Pinned, Pinned>
    );
    traits_of!(
        "Batch",
        awaitkit::Batch<'static, std::vec::IntoIter<u32>, fn(u32) -> BoxFut, BoxFut>
    );
    traits_of!(
        "TryBatch",
        awaitkit::TryBatch<
            'static,
            std::vec::IntoIter<u32>,
            fn(u32) -> BoxFut,
            BoxFut,
            fn(&awaitkit::Progress),
            awaitkit::time::DefaultTimer,
            awaitkit::time::DefaultTimer,
        >
    );
    traits_of!("Wait", awaitkit::Wait<BoxFut>);
    traits_of!(
        "AsCompletedUntil",
        awaitkit::AsCompletedUntil<awaitkit::AsCompleted<BoxFut>>
    );
    traits_of!("FirstOk", awaitkit::FirstOk<BoxFut>);
    traits_of!(
        "RateLimitedStream",
        awaitkit::RateLimitedStream<'static, futures::stream::Iter<std::vec::IntoIter<u32>>>
    );
    traits_of!(
        "RateLimitedStream<!Unpin>",
        awaitkit::RateLimitedStream<'static, futures::stream::Once<Pinned>>
    );
    traits_of!("Pool", awaitkit::Pool<ProbeManager>);
    traits_of!("Pooled", awaitkit::Pooled<ProbeManager>);
    traits_of!("Get", awaitkit::pool::Get<ProbeManager>);
    traits_of!("Watch", awaitkit::Watch<BoxFut>);
    traits_of!("Watch<!Unpin>", awaitkit::Watch<Pinned>);
    traits_of!("Limit", awaitkit::Limit<'static, BoxFut>);
    traits_of!("Limit<!Unpin>", awaitkit::Limit<'static, Pinned>);
    traits_of!(
        "StaggeredRace",
        awaitkit::StaggeredRace<std::vec::IntoIter<fn() -> BoxFut>, BoxFut>
    );
    traits_of!("TryGather", awaitkit::TryGather<BoxFut>);
    let _ = (mk_op, mk_f);
    check_transcript(&[
        "traits Retry: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits Retry<PhantomPinned fut>: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits Batch: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits TryBatch: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits Wait: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits AsCompletedUntil: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits FirstOk: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits RateLimitedStream: Send=true Sync=true Unpin=true UnwindSafe=true RefUnwindSafe=true",
        "traits RateLimitedStream<!Unpin>: Send=true Sync=true Unpin=false UnwindSafe=true RefUnwindSafe=true",
        "traits Pool: Send=true Sync=true Unpin=true UnwindSafe=true RefUnwindSafe=true",
        "traits Pooled: Send=true Sync=true Unpin=true UnwindSafe=true RefUnwindSafe=true",
        "traits Get: Send=true Sync=false Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits Watch: Send=true Sync=true Unpin=true UnwindSafe=true RefUnwindSafe=true",
        "traits Watch<!Unpin>: Send=true Sync=true Unpin=false UnwindSafe=true RefUnwindSafe=true",
        "traits Limit: Send=true Sync=true Unpin=true UnwindSafe=true RefUnwindSafe=true",
        "traits Limit<!Unpin>: Send=true Sync=true Unpin=false UnwindSafe=true RefUnwindSafe=true",
        "traits StaggeredRace: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
        "traits TryGather: Send=true Sync=true Unpin=true UnwindSafe=false RefUnwindSafe=false",
    ]);
}

// ---------------------------------------------------------------------------
// Pool: a `Get` holds the last reference; the idle objects' deferred panic
// propagates out of its `pool` field, before its deadline (timer clone and
// sleep) is dropped by the glue.
// ---------------------------------------------------------------------------

fn pool_with_waiting_get(clones_explode: bool) -> awaitkit::pool::Get<ProbeManager, ProbeTimer> {
    let clock = ManualClock::new();
    let timer = ProbeTimer::new(&clock, Probe::quiet("timer"));
    let pool = awaitkit::Pool::builder(ProbeManager {
        _probe: Probe::quiet("manager"),
        object_explodes: true,
    })
    .max_size(1)
    .wait_timeout(Duration::from_secs(5))
    .with_timer(timer)
    .build()
    .unwrap();
    let guard = futures::executor::block_on(pool.get()).unwrap();
    let mut get = pool.get();
    assert!(poll_once(&mut get).is_pending(), "waits for the one object");
    // From here on clones of the timer explode (the Get's clone was made).
    if clones_explode {
        ARM_CLONES.store(true, Ordering::SeqCst);
    }
    drop(pool);
    drop(guard); // back on the idle list; the Get holds the last reference
    get
}

scenario!(
    pool_get_last_reference_deadline_not_dropped_during_unwind,
    {
        let get = pool_with_waiting_get(false);
        // Dropping the waiting Get: it gives its place back; the last Arc goes
        // with its `pool` field; the idle object's panic propagates from there.
        let msg = expect_panic(|| drop(get));
        assert_eq!(msg, "probe `object` destructor");
        assert_none_while_panicking();
    }
);

// ---------------------------------------------------------------------------
// RateLimitedStream: held item and inner stream both panic when dropped.
// ---------------------------------------------------------------------------

struct BombStream(#[allow(dead_code)] Option<Probe>, u32);
impl futures_core::Stream for BombStream {
    type Item = Probe;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Probe>> {
        self.1 += 1;
        Poll::Ready(Some(Probe::bomb("item")))
    }
}
impl Unpin for BombStream {}

scenario!(rate_limited_stream_item_and_stream_both_panic, {
    use futures::StreamExt;
    let clock = ManualClock::new();
    let lim = awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone());
    let mut paced = lim.limit_stream(BombStream(Some(Probe::bomb("stream")), 0));
    // The first item passes; the second waits for its grant (held).
    let first = poll_once(&mut paced.next());
    assert!(matches!(first, Poll::Ready(Some(_))));
    common::forget_reachably(first); // its bomb is not under test
    assert!(poll_once(&mut paced.next()).is_pending());
    assert!(paced.is_waiting());
    let msg = expect_panic(|| drop(paced));
    assert_eq!(
        msg, "probe `item` destructor",
        "the first panic (the held item's) wins"
    );
    assert_drops(2);
    assert_none_while_panicking();
});

scenario!(rate_limited_stream_into_inner_item_panics_stream_dropped, {
    use futures::StreamExt;
    let clock = ManualClock::new();
    let lim = awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone());
    let mut paced = lim.limit_stream(BombStream(Some(Probe::quiet("stream")), 0));
    let first = poll_once(&mut paced.next());
    common::forget_reachably(first);
    assert!(poll_once(&mut paced.next()).is_pending());
    let msg = expect_panic(|| {
        let s = paced.into_inner();
        common::forget_reachably(s);
        panic!("REVIEW into_inner returned though the held item panicked");
    });
    assert_eq!(msg, "probe `item` destructor");
    assert_drops(2);
    assert_none_while_panicking();
    // The grant of the dropped held item went back: the limiter is free at 1s.
    clock.advance(Duration::from_secs(1));
    assert!(
        lim.try_acquire().is_ok(),
        "REVIEW the held item's place was given back"
    );
});

// The same, and the Get's timer clone panics too when dropped: it is dropped
// during the idle object's unwind -> abort.
scenario!(pool_get_last_reference_timer_clone_bomb_no_abort, {
    let get = pool_with_waiting_get(true);
    let msg = expect_panic(|| drop(get));
    // `Get`'s drop order: its step, its deadline (the sleep, then the timer
    // clone), then the pool handle (the idle object): the timer clone's
    // panic is the first.
    assert_eq!(msg, "probe `timer-clone` destructor");
});

// `Batch::on_progress` twice, the first callback's capture panics when
// dropped (it stays in the consumed batch, dropped after the new one is
// built): the rebuilt batch must be dropped, and not during the unwind.
scenario!(batch_on_progress_twice_old_callback_panics, {
    let f_probe = Probe::quiet("f");
    let cb1 = Probe::bomb("cb1");
    let msg = expect_panic(|| {
        let b = awaitkit::process_batch(vec![1, 2], 1, move |i: i32| {
            let _ = &f_probe;
            async move { i }
        })
        .on_progress(move |_: &awaitkit::Progress| {
            let _ = &cb1;
        })
        .on_progress(|_: &awaitkit::Progress| {});
        drop(b);
    });
    assert_eq!(msg, "probe `cb1` destructor");
    assert_drops(2);
    assert_none_while_panicking();
});

// try_gather polled inside a destructor during another panic's unwind: a
// sibling's destructor panics on fail-fast (hand_back while panicking):
// no abort, the error is handed back.
struct PollsDuringUnwind;
impl Drop for PollsDuringUnwind {
    fn drop(&mut self) {
        assert!(std::thread::panicking());
        struct Kid(Option<Result<(), u32>>, bool);
        impl Future for Kid {
            type Output = Result<(), u32>;
            fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), u32>> {
                match self.0.take() {
                    Some(o) => Poll::Ready(o),
                    None => Poll::Pending,
                }
            }
        }
        impl Drop for Kid {
            fn drop(&mut self) {
                if self.1 {
                    panic!("sibling destructor");
                }
            }
        }
        impl Unpin for Kid {}
        let mut all = awaitkit::try_gather(vec![Kid(None, true), Kid(Some(Err(7)), false)]);
        let out = poll_once(&mut all);
        assert!(
            matches!(out, Poll::Ready(Err(7))),
            "REVIEW the error is handed back during an unwind"
        );
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push("handed-back".into());
    }
}
scenario!(try_gather_fail_fast_during_unwind_hand_back, {
    let r = std::panic::catch_unwind(|| {
        let _g = PollsDuringUnwind;
        panic!("outer");
    });
    assert_eq!(payload_text(&r.unwrap_err()), "outer");
    assert_eq!(log(), ["handed-back"]);
});

// A guard dropped while its thread unwinds drops its object (possibly
// half-used): a panic of the object's destructor there is discarded, not a
// second panic escaping the unwind (an abort).
scenario!(
    pool_guard_dropped_during_an_unwind_object_panics_no_abort,
    {
        let (pool, mut guards) = pool_all_out(true, 1);
        let guard = guards.pop().unwrap();
        let msg = expect_panic(move || {
            let _guard = guard;
            panic!("outer");
        });
        assert_eq!(msg, "outer");
        assert_eq!(
            pool.status().size,
            0,
            "the object is dropped, its slot freed"
        );
        assert_drops(1);
        let again = futures::executor::block_on(pool.get());
        assert!(again.is_ok(), "the pool still hands out objects");
        common::forget_reachably(again);
    }
);
