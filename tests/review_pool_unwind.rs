#![cfg(feature = "test-util")]
//! Adversarial review of 786eeaa (Pool: guard / Get / resize give back
//! each part under `catch_unwind`; `unwind::stash` for the manager future's
//! destructor). Every scenario runs in a child process (`common::child`).
//! The "Actual:" comments say what the findings did on 786eeaa (9 of these
//! failed there: an abort, an object dropped during an unwind, a stale
//! stashed panic raised by an unrelated drop, the wrong panic propagated,
//! `detach` leaking its object, `close` leaving idle objects); all pass since
//! the fix that followed.

#[macro_use]
mod common;

use common::child::{expect_panic, panicking_waker, payload_text};

use awaitkit::pool::{Manager, Pool};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

static CREATED: AtomicUsize = AtomicUsize::new(0);
static DROPS: AtomicUsize = AtomicUsize::new(0);
static DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);
/// Once set, no probe explodes (cleanup at the end of a scenario).
static DISARMED: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Probe {
    name: &'static str,
    explode: bool,
}

impl Probe {
    fn new(name: &'static str, explode: bool) -> Self {
        Probe { name, explode }
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
        if self.explode && !DISARMED.load(Ordering::SeqCst) {
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
        "REVIEW a user value was dropped during the unwind of another panic (log: {:?})",
        log()
    );
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// How a manager future behaves.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// `poll` panics with "<tag> poll".
    poll_panics: bool,
    /// Pending forever.
    pending: bool,
    /// Its destructor panics with "<tag> drop".
    drop_panics: bool,
    /// For `recycle`: the check fails.
    fails: bool,
}

const OK: Mode = Mode {
    poll_panics: false,
    pending: false,
    drop_panics: false,
    fails: false,
};

struct Fut<O> {
    tag: &'static str,
    mode: Mode,
    /// Makes the output (lazily: the future holds no user value that its
    /// own panicking destructor's glue would drop during that unwind).
    out: Option<Box<dyn FnOnce() -> O + Send>>,
}

impl<O> Unpin for Fut<O> {}

impl<O> Future for Fut<O> {
    type Output = O;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<O> {
        if self.mode.poll_panics {
            panic!("{} poll", self.tag);
        }
        if self.mode.pending {
            return Poll::Pending;
        }
        Poll::Ready((self.out.take().expect("polled once"))())
    }
}

impl<O> Drop for Fut<O> {
    fn drop(&mut self) {
        if self.mode.drop_panics && !DISARMED.load(Ordering::SeqCst) {
            panic!("{} drop", self.tag);
        }
    }
}

/// A manager of `Probe`s named `obj` (exploding if `obj_bomb`).
struct M {
    tag: &'static str,
    create: Mode,
    recycle: Mode,
    obj_bomb: bool,
}

impl Manager for M {
    type Object = Probe;
    type Error = ();
    fn create(&self) -> impl Future<Output = Result<Probe, ()>> + Send {
        Fut {
            tag: match self.tag {
                "A" => "A create",
                "D" => "D create",
                _ => "B create",
            },
            mode: self.create,
            out: Some({
                let bomb = self.obj_bomb;
                Box::new(move || {
                    CREATED.fetch_add(1, Ordering::SeqCst);
                    Ok(Probe::new("obj", bomb))
                })
            }),
        }
    }
    fn recycle(&self, _object: &mut Probe) -> impl Future<Output = Result<(), ()>> + Send {
        Fut {
            tag: if self.tag == "A" {
                "A recycle"
            } else {
                "B recycle"
            },
            mode: self.recycle,
            out: Some({
                let fails = self.recycle.fails;
                Box::new(move || if fails { Err(()) } else { Ok(()) })
            }),
        }
    }
}

impl Drop for M {
    fn drop(&mut self) {
        if self.tag == "D" && !DISARMED.load(Ordering::SeqCst) {
            panic!("manager drop");
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

fn counts<T: awaitkit::time::Timer>(pool: &Pool<M, T>) -> (usize, usize, usize, usize) {
    let s = pool.status();
    (s.size, s.idle, s.in_use, s.waiting)
}

// ---------------------------------------------------------------------------
// 1. The recycle future panics in `poll`: the `async` block in `next_step`
//    (`settle(recycle(&mut entry.object))`, then `(entry, ..)`) is unwound
//    through, and its local `entry` — the idle object being checked — is
//    dropped during that unwind. An object whose destructor panics then
//    aborts the process.
// ---------------------------------------------------------------------------

scenario!(recycle_poll_panic_with_panicking_object_no_abort, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: Mode {
                poll_panics: true,
                ..OK
            },
            obj_bomb: true,
        },
        1,
    );
    let guard = block_on(pool.get()).unwrap();
    drop(guard); // back on the idle list (not dropped)
    let mut get = pool.get();
    // Expected: "A recycle poll" propagates; the object is dropped after
    // (its own panic discarded or kept), not during the unwind. Actual: the
    // object's destructor panics during the unwind: abort.
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "A recycle poll");
    let _ = catch_unwind(AssertUnwindSafe(move || drop(get)));
    assert_none_while_panicking();
    DISARMED.store(true, Ordering::SeqCst);
});

scenario!(recycle_poll_panic_object_not_dropped_while_panicking, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: Mode {
                poll_panics: true,
                ..OK
            },
            obj_bomb: false,
        },
        1,
    );
    let guard = block_on(pool.get()).unwrap();
    drop(guard);
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "A recycle poll");
    drop(get);
    // The slot and the permit came back (this part holds).
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    assert_eq!(DROPS.load(Ordering::SeqCst), 1, "log {:?}", log());
    // The object was dropped during the recycle panic's unwind.
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// 2. The thread-local stash. A manager future that panics in `poll` *and*
//    in its destructor: `Settling` is dropped during the poll panic's
//    unwind (the `settle` coroutine's locals), catches the destructor's
//    panic and stashes it. Nobody takes it: it stays in the thread-local
//    slot until an unrelated `drop_stashing` picks it up.
// ---------------------------------------------------------------------------

fn bad_pool_a() -> Pool<M> {
    Pool::new(
        M {
            tag: "A",
            create: Mode {
                poll_panics: true,
                drop_panics: true,
                ..OK
            },
            recycle: OK,
            obj_bomb: false,
        },
        1,
    )
}

fn pending_pool_b(drop_panics: bool) -> Pool<M> {
    Pool::new(
        M {
            tag: "B",
            create: Mode {
                pending: true,
                drop_panics,
                ..OK
            },
            recycle: OK,
            obj_bomb: false,
        },
        1,
    )
}

scenario!(no_stale_stash_in_an_unrelated_cancelled_get, {
    let pa = bad_pool_a();
    let mut ga = pa.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut ga);
    });
    assert_eq!(msg, "A create poll");
    // A's `Get` is kept (or forgotten): nothing of A runs again.
    std::mem::forget(ga);

    // An unrelated pool, a quiet manager: a get cancelled mid-create.
    let pb = pending_pool_b(false);
    let mut gb = pb.get();
    assert!(poll_once(&mut gb).is_pending());
    // Expected: dropping it runs no panicking code: no panic. Actual: it
    // panics with A's stale "A create drop".
    let r = catch_unwind(AssertUnwindSafe(move || drop(gb)));
    if let Err(p) = r {
        panic!(
            "REVIEW a cancelled Get of a quiet pool panicked with `{}` (a stale stash)",
            payload_text(&p)
        );
    }
    assert_eq!(counts(&pb), (0, 0, 0, 0));
});

scenario!(no_stale_stash_replaces_the_right_panic, {
    let pa = bad_pool_a();
    let mut ga = pa.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut ga);
    });
    assert_eq!(msg, "A create poll");
    std::mem::forget(ga);

    // B's create future panics when cancelled: that panic must propagate.
    let pb = pending_pool_b(true);
    let mut gb = pb.get();
    assert!(poll_once(&mut gb).is_pending());
    let msg = expect_panic(move || drop(gb));
    assert_eq!(msg, "B create drop", "REVIEW the wrong panic propagated");
    assert_eq!(counts(&pb), (0, 0, 0, 0));
});

// The ordinary user sequence on one Get: `catch_unwind(poll)` (or
// `FutureExt::catch_unwind`), then drop the Get. The create future's
// destructor panicked *during* the poll panic's unwind (where a panic is
// discarded, `unwind::resume`); the stash keeps it and the Get's drop raises
// it afterwards: a second panic out of a drop, after the first was already
// delivered.
scenario!(poisoned_get_drop_raises_no_second_panic, {
    let pa = bad_pool_a();
    let mut ga = pa.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut ga);
    });
    assert_eq!(msg, "A create poll");
    // Expected: the destructor's panic happened during the unwind of "A
    // create poll" and is discarded with it; dropping the poisoned Get
    // later raises nothing new. Actual: "A create drop" comes out of the drop.
    let r = catch_unwind(AssertUnwindSafe(move || drop(ga)));
    if let Err(p) = r {
        panic!(
            "REVIEW dropping a Get whose poll already panicked raised a second panic `{}` \
             (stashed during the first panic's unwind)",
            payload_text(&p)
        );
    }
    assert_eq!(counts(&pa), (0, 0, 0, 0));
});

// Holds: the poisoned Get dropped *during* the poll panic's unwind
// (`block_on`'s frame) takes the stash and discards it; a later cancel of
// an unrelated quiet get raises nothing.
scenario!(stash_taken_when_poisoned_get_dropped_during_unwind, {
    let pa = bad_pool_a();
    let _ = catch_unwind(AssertUnwindSafe(|| block_on(pa.get())));
    // `block_on`'s frame dropped the Get during the unwind: `drop_stashing`
    // took the stash then (discarded). Holds?
    let pb = pending_pool_b(false);
    let r = catch_unwind(AssertUnwindSafe(|| {
        block_on(async {
            let mut gb = pb.get();
            let _ = futures::poll!(&mut gb);
            drop(gb);
        })
    }));
    if let Err(p) = r {
        panic!("REVIEW stale stash: `{}`", payload_text(&p));
    }
});

// ---------------------------------------------------------------------------
// 3. Paths that hold (kept as coverage).
// ---------------------------------------------------------------------------

// Cancel mid-recycle: the recycle future's destructor and the object's both
// panic. The first (the future's) propagates, nothing during an unwind.
scenario!(cancel_mid_recycle_future_and_object_panic, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: Mode {
                pending: true,
                drop_panics: true,
                ..OK
            },
            obj_bomb: true,
        },
        1,
    );
    let guard = block_on(pool.get()).unwrap();
    drop(guard);
    let mut get = pool.get();
    assert!(poll_once(&mut get).is_pending());
    let msg = expect_panic(move || drop(get));
    assert_eq!(msg, "A recycle drop");
    assert_none_while_panicking();
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    DISARMED.store(true, Ordering::SeqCst);
    let g = block_on(pool.get()).unwrap();
    drop(g);
});

// A failed recycle whose object panics on drop: the permit goes back, the
// panic propagates, a later get succeeds.
scenario!(failed_recycle_object_panics, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: Mode { fails: true, ..OK },
            obj_bomb: true,
        },
        1,
    );
    let guard = block_on(pool.get()).unwrap();
    drop(guard);
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "probe `obj` destructor");
    drop(get);
    assert_none_while_panicking();
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    DISARMED.store(true, Ordering::SeqCst);
    drop(block_on(pool.get()).unwrap());
});

// Resize down with two idle objects that both panic: no abort, both
// dropped, size 1... (one kept in use).
scenario!(resize_two_panicking_idle, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: true,
        },
        3,
    );
    let a = block_on(pool.get()).unwrap();
    let b = block_on(pool.get()).unwrap();
    let c = block_on(pool.get()).unwrap();
    drop(a);
    drop(b);
    let msg = expect_panic(|| pool.resize(1));
    assert_eq!(msg, "probe `obj` destructor");
    assert_eq!(counts(&pool), (1, 0, 1, 0));
    assert_none_while_panicking();
    DISARMED.store(true, Ordering::SeqCst);
    drop(c);
    assert_eq!(counts(&pool), (1, 1, 0, 0));
});

// Guard outliving the pool handle on a closed pool: the object is dropped
// (panics), the permit and the last handle still go.
scenario!(guard_outlives_closed_pool, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: true,
        },
        1,
    );
    let g = block_on(pool.get()).unwrap();
    pool.close();
    drop(pool);
    let msg = expect_panic(move || drop(g));
    assert_eq!(msg, "probe `obj` destructor");
    assert_none_while_panicking();
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
});

// Concurrency: gets, returns, cancels, resize and close racing.
scenario!(racing_returns_cancels_resize_close, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: false,
        },
        4,
    );
    let mut threads = Vec::new();
    for t in 0..4 {
        let pool = pool.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..2000 {
                let mut g = pool.get();
                match poll_once(&mut g) {
                    Poll::Ready(Ok(o)) => drop(o),
                    Poll::Ready(Err(_)) => {}
                    Poll::Pending => {
                        if (i + t) % 2 == 0 {
                            drop(g);
                        } else if let Ok(o) = block_on(g) {
                            drop(o);
                        }
                    }
                }
                if t == 0 && i % 100 == 0 {
                    pool.resize(1 + (i / 100) % 4);
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.status();
    assert_eq!(s.size, s.idle, "{s:?}");
    assert!(s.size <= s.max_size, "{s:?}");
    assert_eq!(s.waiting, 0);
    pool.resize(4);
    let gs: Vec<_> = (0..4).map(|_| block_on(pool.get()).unwrap()).collect();
    assert_eq!(pool.status().size, 4);
    drop(gs);
    pool.close();
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    let created = DROPS.load(Ordering::SeqCst);
    assert!(created >= 4);
    assert_none_while_panicking();
});

// ---------------------------------------------------------------------------
// 4. The create path's timestamp (`keeping(object, stamp)`): the create
//    future's destructor panicked first (caught by `settle`, returned in
//    `panics`), then the timer's `now` panics stamping the new object. The
//    timer's panic — the second — propagates; the first is dropped with the
//    `panics` local during that unwind (never `discard`ed).
// ---------------------------------------------------------------------------

static NOW_CALLS: AtomicUsize = AtomicUsize::new(0);
/// `now` panics on this call (1-based; 0: never).
static NOW_PANICS_AT: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone)]
struct NowBomb(awaitkit::time::ManualClock);

impl awaitkit::time::Timer for NowBomb {
    type Sleep = awaitkit::time::ManualSleep;
    fn now(&self) -> std::time::Instant {
        let n = NOW_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if n == NOW_PANICS_AT.load(Ordering::SeqCst) {
            panic!("timer now");
        }
        self.0.now()
    }
    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }
    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: std::time::Instant) {
        self.0.reset(sleep, deadline)
    }
}

scenario!(create_future_drop_then_stamp_panic_first_panic_wins, {
    let pool = Pool::builder(M {
        tag: "A",
        create: Mode {
            drop_panics: true,
            ..OK
        },
        recycle: OK,
        obj_bomb: false,
    })
    .max_size(1)
    .max_lifetime(std::time::Duration::from_secs(60))
    .with_timer(NowBomb(awaitkit::time::ManualClock::new()))
    .build()
    .unwrap();
    // Call 1: `pop_idle`'s reading; call 2: the new object's timestamp.
    NOW_PANICS_AT.store(2, Ordering::SeqCst);
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(NOW_CALLS.load(Ordering::SeqCst), 2, "the stamp was read");
    drop(get);
    assert_eq!(pool.status().size, 0);
    assert_none_while_panicking();
    // The create future's destructor panicked first (inside `settle`).
    assert_eq!(msg, "A create drop", "REVIEW the first panic propagates");
});

// ---------------------------------------------------------------------------
// 5. `Pooled::detach`: the object is moved out into the return value, then
//    the guard (`this`) is dropped at the end of the function: its permit
//    goes back (the next waiter's waker) and the pool handle. If that
//    panics, the return value is neither returned nor dropped
//    (rust-lang/rust#47949): the object leaks.
// ---------------------------------------------------------------------------

scenario!(detach_with_panicking_waiter_drops_object, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: false,
        },
        1,
    );
    let guard = block_on(pool.get()).unwrap();
    let mut waiter = pool.get();
    let waker = panicking_waker();
    assert!(
        Pin::new(&mut waiter)
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let msg = expect_panic(move || {
        let obj = awaitkit::pool::Pooled::detach(guard);
        drop(obj);
    });
    assert_eq!(msg, "waker wake");
    drop(waiter);
    assert_none_while_panicking();
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        1,
        "REVIEW the detached object was leaked (log: {:?})",
        log()
    );
    assert_eq!(counts(&pool), (0, 0, 0, 0));
});

scenario!(detach_last_handle_idle_bomb_drops_object, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: true,
        },
        2,
    );
    // (All objects are bombs here: the idle one panics in the pool's
    // destructor; the detached one is disarmed before the caller drops it.)
    let a = block_on(pool.get()).unwrap();
    let b = block_on(pool.get()).unwrap();
    drop(a); // idle: a bomb
    drop(pool); // `b` holds the last handle
    let before = 0;
    let msg = expect_panic(move || {
        let obj = awaitkit::pool::Pooled::detach(b);
        DISARMED.store(true, Ordering::SeqCst);
        drop(obj);
    });
    assert_eq!(msg, "probe `obj` destructor");
    assert_none_while_panicking();
    assert_eq!(
        DROPS.load(Ordering::SeqCst) - before,
        2,
        "REVIEW the idle object and the detached one are both dropped (log: {:?})",
        log()
    );
});

// ---------------------------------------------------------------------------
// 6. Holds: last handles.
// ---------------------------------------------------------------------------

// The guard holds the last pool handle; its own object goes back to the
// idle list, then the pool's destructor drops two idle bombs and the
// manager: one panic, nothing during an unwind, every object once.
scenario!(guard_last_handle_two_idle_bombs, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: true,
        },
        3,
    );
    let a = block_on(pool.get()).unwrap();
    let b = block_on(pool.get()).unwrap();
    let c = block_on(pool.get()).unwrap();
    drop(a);
    drop(b);
    drop(pool);
    let msg = expect_panic(move || drop(c));
    assert_eq!(msg, "probe `obj` destructor");
    assert_none_while_panicking();
    assert_eq!(DROPS.load(Ordering::SeqCst), 3, "log {:?}", log());
});

// A get cancelled mid-create holds the last handle: the create future's
// destructor panics, then the manager's (in the pool's destructor). The
// first propagates.
scenario!(get_last_handle_create_and_manager_panic, {
    let pool = Pool::new(
        M {
            tag: "D",
            create: Mode {
                pending: true,
                drop_panics: true,
                ..OK
            },
            recycle: OK,
            obj_bomb: false,
        },
        1,
    );
    let mut get = pool.get();
    assert!(poll_once(&mut get).is_pending());
    drop(pool);
    let msg = expect_panic(move || drop(get));
    assert_eq!(msg, "D create drop");
    assert_none_while_panicking();
    DISARMED.store(true, Ordering::SeqCst);
});

// Holds: gets, returns, detaches, cancels and resizes racing a `close` on
// four threads: afterwards nothing is idle or counted, every object created
// was dropped once, and waiting gets ended.
scenario!(racing_close_drops_everything_once, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: false,
        },
        3,
    );
    let mut threads = Vec::new();
    for t in 0..4usize {
        let pool = pool.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..3000usize {
                if t == 3 && i == 1500 {
                    pool.close();
                }
                if t == 2 && i % 50 == 0 {
                    pool.resize(1 + (i / 50) % 3);
                }
                let mut g = pool.get();
                match poll_once(&mut g) {
                    Poll::Ready(Ok(o)) => {
                        if i % 7 == 0 {
                            drop(awaitkit::pool::Pooled::detach(o));
                        } else {
                            drop(o);
                        }
                    }
                    Poll::Ready(Err(_)) => {}
                    Poll::Pending => {
                        if (i + t) % 2 == 0 {
                            drop(g);
                        } else if let Ok(o) = block_on(g) {
                            drop(o);
                        }
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(pool.is_closed());
    assert_eq!(counts(&pool), (0, 0, 0, 0), "{:?}", pool.status());
    assert_eq!(DROPS.load(Ordering::SeqCst), CREATED.load(Ordering::SeqCst));
    assert_none_while_panicking();
});

// `close` with an idle object and a queued waiter whose waker panics: the
// semaphore's close wakes the waiter (panics); the idle objects must still
// be dropped and their slots freed.
scenario!(close_waker_panic_still_drops_idle, {
    let pool = Pool::new(
        M {
            tag: "A",
            create: OK,
            recycle: OK,
            obj_bomb: false,
        },
        2,
    );
    let a = block_on(pool.get()).unwrap();
    let b = block_on(pool.get()).unwrap();
    let mut w1 = pool.get();
    assert!(poll_once(&mut w1).is_pending());
    let mut w2 = pool.get();
    let waker = panicking_waker();
    assert!(
        Pin::new(&mut w2)
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    drop(a); // idle; its permit goes to w1 (a quiet waker)
    assert_eq!(pool.status().idle, 1);
    let msg = expect_panic(|| pool.close());
    assert_eq!(msg, "waker wake");
    assert_eq!(
        pool.status().idle,
        0,
        "REVIEW close left the idle object on a closed pool ({:?})",
        pool.status()
    );
    drop(b);
    drop(w1);
    drop(w2);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
});

// Holds: `next_step`'s expiry of idle objects. Three idle objects, all
// timed out, two of them panicking when dropped: every one is dropped once,
// none during an unwind, the first panic propagates, the permit goes back
// and a later get creates a new object.
scenario!(expired_idle_two_bombs_then_get_works, {
    let clock = awaitkit::time::ManualClock::new();
    let pool = Pool::builder(M {
        tag: "A",
        create: OK,
        recycle: OK,
        obj_bomb: true,
    })
    .max_size(3)
    .idle_timeout(std::time::Duration::from_secs(1))
    .with_timer(NowBomb(clock.clone()))
    .build()
    .unwrap();
    let a = block_on(pool.get()).unwrap();
    let b = block_on(pool.get()).unwrap();
    let c = block_on(pool.get()).unwrap();
    drop(a);
    drop(b);
    drop(c);
    assert_eq!(pool.status().idle, 3);
    clock.advance(std::time::Duration::from_secs(2));
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "probe `obj` destructor");
    drop(get);
    assert_none_while_panicking();
    assert_eq!(DROPS.load(Ordering::SeqCst), 3, "log {:?}", log());
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    DISARMED.store(true, Ordering::SeqCst);
    drop(block_on(pool.get()).unwrap());
    assert_eq!(counts(&pool), (1, 1, 0, 0));
});
