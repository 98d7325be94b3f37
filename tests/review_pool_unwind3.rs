#![cfg(feature = "test-util")]
//! Third adversarial review (0144adf: propagate-during-unwind, nested stash
//! save/restore). Every scenario runs in a child process.
//! On 0144adf, 2 of 13 fail, both pre-existing (same code on 786eeaa^):
//! deadline_timer_drop_panic_in_poll_drops_sleep_while_panicking (drop
//! while panicking) and deadline_timer_and_sleep_drop_panic_in_poll_no_abort
//! (abort): `Get::poll` drops the settled Get's deadline with a plain
//! `drop(this.deadline.take())`, and `BoxedDeadline`'s drop glue drops its
//! timer clone, then its sleep, during the timer's panic. The other 11 hold
//! on 0144adf (on 786eeaa^, 7 of the first 9 fail: aborts, lost/wrong panics;
//! the two timeout_mid_create scenarios were not run there). Both deadline
//! scenarios pass since `BoxedDeadline`'s drop gives back its sleep and
//! timer each on its own.

#[macro_use]
mod common;

use common::child::expect_panic;

use awaitkit::pool::{Manager, Pool};
use futures_core::FusedFuture;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[path = "common/pool_script.rs"]
mod pool_script;
use pool_script::*;

// ---------------------------------------------------------------------------
// 1. The new "polled during an unwind" create branch: `Step::Start`, wake,
//    `Pending`. A `block_on(pool.get())` in a destructor during an unwind
//    with a manager whose create keeps panicking never ends: each poll
//    creates again (the manager here gives up panicking after 1000 calls so

// ---------------------------------------------------------------------------
// Tagged holder pools: an object that holds anything (another pool's Get),
// a recycle future whose destructor panics with the pool's tag, and a
// create that can stay pending with a drop bomb.
// ---------------------------------------------------------------------------
type Anything = Box<dyn Send>;
struct Holder {
    inner: Mutex<Option<Anything>>,
}
impl Drop for Holder {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if std::thread::panicking() {
            DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
        }
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(g);
    }
}
struct TagBomb(&'static str);
impl Drop for TagBomb {
    fn drop(&mut self) {
        if !DISARMED.load(Ordering::SeqCst) {
            panic!("{}", self.0);
        }
    }
}
struct TM {
    create_tag: Option<&'static str>,
    recycle_tag: &'static str,
}
impl Manager for TM {
    type Object = Holder;
    type Error = ();
    fn create(&self) -> impl Future<Output = Result<Holder, ()>> + Send {
        let bomb = self.create_tag.map(TagBomb);
        async move {
            if let Some(b) = bomb {
                let _b = b;
                std::future::pending::<()>().await;
            }
            Ok(Holder {
                inner: Mutex::new(None),
            })
        }
    }
    fn recycle(&self, _o: &mut Holder) -> impl Future<Output = Result<(), ()>> + Send {
        let b = TagBomb(self.recycle_tag);
        async move {
            let _b = b;
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}
fn tcounts(pool: &Pool<TM>) -> (usize, usize, usize, usize) {
    let s = pool.status();
    (s.size, s.idle, s.in_use, s.waiting)
}
/// A pool whose one idle Holder holds `held`, and a Get of it polled once
/// (mid-recycle of that Holder).
fn recycling_get(tag: &'static str, held: Anything) -> (Pool<TM>, awaitkit::pool::Get<TM>) {
    let p = Pool::new(
        TM {
            create_tag: None,
            recycle_tag: tag,
        },
        1,
    );
    let guard = futures::executor::block_on(p.get()).unwrap();
    *guard.inner.lock().unwrap() = Some(held);
    drop(guard);
    let mut g = p.get();
    assert!(poll_once(&mut g).is_pending());
    (p, g)
}

// ---------------------------------------------------------------------------
// A. Three levels of nested drop_stashing, each level stashing its own
//    panic: P's cancelled recycle (stash "p recycle drop") drops Holder_P,
//    which drops Q's Get mid-recycle (stash "q recycle drop"), whose Holder_Q
//    drops R's Get mid-create (stash "r create drop"). The outermost panic
//    must propagate; every count back to zero; no drop while panicking.
// ---------------------------------------------------------------------------
scenario!(nested3_stash_keeps_outermost_panic, {
    let r = Pool::new(
        TM {
            create_tag: Some("r create drop"),
            recycle_tag: "r recycle drop",
        },
        1,
    );
    let mut rg = r.get();
    assert!(poll_once(&mut rg).is_pending());
    assert_eq!(tcounts(&r), (1, 0, 1, 0));
    let (q, qg) = recycling_get("q recycle drop", Box::new(rg));
    let (p, pg) = recycling_get("p recycle drop", Box::new(qg));
    let res = catch_unwind(AssertUnwindSafe(move || drop(pg)));
    let text = match &res {
        Err(e) => common::child::payload_text(e),
        Ok(()) => "<nothing>".into(),
    };
    assert_eq!(text, "p recycle drop", "REVIEW wrong/lost panic");
    assert_eq!(tcounts(&p), (0, 0, 0, 0), "REVIEW p counts");
    assert_eq!(tcounts(&q), (0, 0, 0, 0), "REVIEW q counts");
    assert_eq!(tcounts(&r), (0, 0, 0, 0), "REVIEW r counts");
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
    // Nothing stale left: an ordinary quiet cancel raises nothing.
    DISARMED.store(true, Ordering::SeqCst);
    let (_p2, g) = recycling_get("quiet", Box::new(()));
    assert!(
        catch_unwind(AssertUnwindSafe(move || drop(g))).is_ok(),
        "REVIEW stale stash"
    );
});

// A2. Two levels: Q's stash set aside while R's Get's drop runs, then restored.
scenario!(nested3_stash_innermost_only_propagates, {
    let r = Pool::new(
        TM {
            create_tag: Some("r create drop"),
            recycle_tag: "r recycle drop",
        },
        1,
    );
    let mut rg = r.get();
    assert!(poll_once(&mut rg).is_pending());
    let (q, qg) = recycling_get("q recycle drop", Box::new(rg));
    let res = catch_unwind(AssertUnwindSafe(move || drop(qg)));
    let text = match &res {
        Err(e) => common::child::payload_text(e),
        Ok(()) => "<nothing>".into(),
    };
    assert_eq!(text, "q recycle drop", "REVIEW wrong/lost panic");
    assert_eq!(tcounts(&q), (0, 0, 0, 0));
    assert_eq!(tcounts(&r), (0, 0, 0, 0));
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// B. The stash on another thread: Holder_P's destructor drops Q's Get on a
//    second thread (joined). Q's panic stays on that thread; P's own stash
//    propagates; nothing stale on either thread.
// ---------------------------------------------------------------------------
struct OnThread(Option<awaitkit::pool::Get<TM>>);
impl Drop for OnThread {
    fn drop(&mut self) {
        let g = self.0.take();
        let r = std::thread::spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(move || drop(g)));
            let t = match &r {
                Err(e) => common::child::payload_text(e),
                Ok(()) => "<nothing>".into(),
            };
            // a quiet cancel afterwards on that thread
            (t, std::thread::current().id())
        })
        .join()
        .unwrap();
        assert_eq!(
            r.0, "q recycle drop",
            "REVIEW lost panic on the other thread"
        );
    }
}
scenario!(stash_on_other_thread, {
    let (q, qg) = recycling_get("q recycle drop", Box::new(()));
    let (p, pg) = recycling_get("p recycle drop", Box::new(OnThread(Some(qg))));
    let msg = expect_panic(move || drop(pg));
    assert_eq!(msg, "p recycle drop");
    assert_eq!(tcounts(&p), (0, 0, 0, 0));
    assert_eq!(tcounts(&q), (0, 0, 0, 0));
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// C. A nested Get *polled* (not dropped) inside the enclosing drop_stashing:
//    Holder_P's destructor block_on's a get of pool M whose create panics:
//    the manager's panic comes out of Holder_P::drop (ordinary path) and
//    P's stash still wins; M's counts are right and M works after.
// ---------------------------------------------------------------------------
struct Poller(Pool<M>);
impl Drop for Poller {
    fn drop(&mut self) {
        let _ = futures::executor::block_on(self.0.get());
    }
}
scenario!(nested_poll_create_panic_inside_cancel, {
    let mp = Pool::new(m(&[B::PollPanic], B::Ok), 1);
    let (p, pg) = recycling_get("p recycle drop", Box::new(Poller(mp.clone())));
    let msg = expect_panic(move || drop(pg));
    assert_eq!(msg, "p recycle drop", "REVIEW wrong panic");
    assert_eq!(tcounts(&p), (0, 0, 0, 0));
    assert_eq!(counts(&mp), (0, 0, 0, 0), "REVIEW counts of the inner pool");
    let g = futures::executor::block_on(mp.get()).unwrap();
    drop(g);
    assert_eq!(counts(&mp), (1, 1, 0, 0));
});

// ---------------------------------------------------------------------------
// D. Propagate-during-unwind, caught by the destructor, with a queued
//    waiter whose waker panics: the manager's panic is the one caught, the
//    Get is poisoned (not terminated; polling again panics "polled after a
//    panic"), the waiter still gets the slot afterwards; counts right.
// ---------------------------------------------------------------------------
scenario!(unwind_create_panic_with_panicking_waiter_then_repoll, {
    let pool = Pool::new(m(&[B::PendingThenPanic], B::Ok), 1);
    let mut g1 = pool.get();
    assert!(poll_once(&mut g1).is_pending());
    let w = Waker::from(Arc::new(PanickyWake));
    let mut g2 = pool.get();
    assert!(poll_with(&mut g2, &w).is_pending());
    assert_eq!(counts(&pool), (1, 0, 1, 1));
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut g1).is_ready()));
        let e = r.expect_err("REVIEW the create panic propagates");
        assert_eq!(
            common::child::payload_text(&e),
            "create poll",
            "REVIEW wrong panic"
        );
        assert_eq!(p2.status().size, 0, "REVIEW slot not freed");
        assert!(!g1.is_terminated(), "REVIEW is_terminated after a panic");
        let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut g1).is_ready()));
        let e = r.expect_err("REVIEW polling again must panic");
        assert!(
            common::child::payload_text(&e).contains("polled after a panic"),
            "REVIEW wrong poisoning: {}",
            common::child::payload_text(&e)
        );
        drop(g1);
    });
    assert_eq!(msg, "outer");
    DISARMED.store(true, Ordering::SeqCst);
    let r = poll_once(&mut g2);
    assert!(
        matches!(r, Poll::Ready(Ok(_))),
        "REVIEW the waiter is wedged"
    );
    drop(r);
    assert_eq!(counts(&pool), (1, 1, 0, 0));
    assert_eq!(CREATE_CALLS.load(Ordering::SeqCst), 2);
});

// ---------------------------------------------------------------------------
// E. During an unwind, every idle object's recycle panics, then the create
//    panics: only the create's panic comes out (the recycle panics are
//    discarded, inconsistently with "a panic in poll propagates even when
//    polled during an unwind"); counts right; poisoned.
// ---------------------------------------------------------------------------
scenario!(unwind_recycles_then_create_panic, {
    let pool = Pool::new(m(&[], B::Ok), 2);
    let a = futures::executor::block_on(pool.get()).unwrap();
    let b = futures::executor::block_on(pool.get()).unwrap();
    drop((a, b));
    {
        let mut r = pool.manager().recycles.lock().unwrap();
        r.push_back(B::PollPanic);
        r.push_back(B::PollPanic);
    }
    pool.manager()
        .creates
        .lock()
        .unwrap()
        .push_back(B::PollPanic);
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let mut g = p2.get();
        let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut g).is_ready()));
        let e = r.expect_err("REVIEW the create panic propagates");
        assert_eq!(common::child::payload_text(&e), "create poll");
        assert!(!g.is_terminated());
        assert_eq!(p2.status().size, 0);
        drop(g);
    });
    assert_eq!(msg, "outer");
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    let a = futures::executor::block_on(pool.get()).unwrap();
    let b = futures::executor::block_on(pool.get()).unwrap();
    assert_eq!(counts(&pool), (2, 0, 2, 0));
    drop((a, b));
});

// ---------------------------------------------------------------------------
// E2. Ordinary path version of E: the first recycle panic propagates, and
//     the Get does NOT move on. (Documents the during-unwind asymmetry.)
// ---------------------------------------------------------------------------
scenario!(ordinary_recycle_panic_propagates_first, {
    let pool = Pool::new(m(&[], B::Ok), 2);
    let a = futures::executor::block_on(pool.get()).unwrap();
    let b = futures::executor::block_on(pool.get()).unwrap();
    drop((a, b));
    pool.manager()
        .recycles
        .lock()
        .unwrap()
        .push_back(B::PollPanic);
    let mut g = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g);
    });
    assert_eq!(msg, "recycle poll");
    assert_eq!(counts(&pool), (1, 1, 0, 0));
    drop(g);
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// F. Propagate-during-unwind while the pool is closed and resized in
//    between the Pending and the panicking poll, with wait_timeout.
// ---------------------------------------------------------------------------
scenario!(unwind_create_panic_after_close_resize_timeout, {
    let pool = Pool::builder(m(&[B::PendingThenPanic], B::Ok))
        .max_size(2)
        .wait_timeout(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    pool.resize(1);
    pool.close();
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let r = catch_unwind(AssertUnwindSafe(|| poll_once(&mut g).is_ready()));
        let e = r.expect_err("REVIEW the create panic propagates");
        assert_eq!(common::child::payload_text(&e), "create poll");
        assert!(!g.is_terminated());
        drop(g);
        let _ = p2;
    });
    assert_eq!(msg, "outer");
    assert_eq!(counts(&pool), (0, 0, 0, 0));
});

// ---------------------------------------------------------------------------
// G. The deadline dropped in `poll` once the result is decided
//    (`drop(this.deadline.take())`) is a plain drop: `BoxedDeadline`'s drop
//    glue drops its timer clone, then its sleep. If the timer clone's
//    destructor panics, the sleep is dropped during that unwind (and if the
//    sleep panics too: abort). Get::drop uses `release` (each caught), poll
//    does not.
// ---------------------------------------------------------------------------
static TIMER_DROP_ARMED: AtomicBool = AtomicBool::new(false);
static SLEEP_DROP_ARMED: AtomicBool = AtomicBool::new(false);
static SLEEP_DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);
static SLEEPS: AtomicUsize = AtomicUsize::new(0);
#[derive(Clone)]
struct PT;
impl Drop for PT {
    fn drop(&mut self) {
        if TIMER_DROP_ARMED.swap(false, Ordering::SeqCst) {
            panic!("timer drop");
        }
    }
}
struct PSleep;
impl Future for PSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}
impl Drop for PSleep {
    fn drop(&mut self) {
        if std::thread::panicking() {
            SLEEP_DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
        }
        if SLEEP_DROP_ARMED.load(Ordering::SeqCst) {
            panic!("sleep drop");
        }
    }
}
impl awaitkit::time::Timer for PT {
    type Sleep = PSleep;
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn sleep_until(&self, _d: std::time::Instant) -> PSleep {
        SLEEPS.fetch_add(1, Ordering::SeqCst);
        PSleep
    }
    fn reset(&self, _s: Pin<&mut PSleep>, _d: std::time::Instant) {}
}
fn timed_pool() -> Pool<M, PT> {
    Pool::builder(m(&[B::PendingOnce], B::Ok))
        .max_size(1)
        .wait_timeout(std::time::Duration::from_secs(3600))
        .with_timer(PT)
        .build()
        .unwrap()
}

scenario!(
    deadline_timer_drop_panic_in_poll_drops_sleep_while_panicking,
    {
        let pool = timed_pool();
        let mut g = pool.get();
        assert!(poll_once(&mut g).is_pending()); // create pending, the sleep made
        assert_eq!(SLEEPS.load(Ordering::SeqCst), 1);
        TIMER_DROP_ARMED.store(true, Ordering::SeqCst);
        let msg = expect_panic(|| {
            let _ = poll_once(&mut g);
        });
        assert_eq!(msg, "timer drop");
        assert_eq!(
            SLEEP_DROPS_WHILE_PANICKING.load(Ordering::SeqCst),
            0,
            "REVIEW the sleep was dropped during the timer's panic"
        );
        // The result was decided: the next poll returns it.
        let r = poll_once(&mut g);
        assert!(matches!(r, Poll::Ready(Ok(_))));
        drop(r);
        assert_eq!(pool.status().size, 1);
    }
);

// G2. Same, the sleep's destructor panics too: the process must not abort.
scenario!(deadline_timer_and_sleep_drop_panic_in_poll_no_abort, {
    let pool = timed_pool();
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    TIMER_DROP_ARMED.store(true, Ordering::SeqCst);
    SLEEP_DROP_ARMED.store(true, Ordering::SeqCst);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g);
    });
    SLEEP_DROP_ARMED.store(false, Ordering::SeqCst);
    // The deadline gives back its sleep, then its timer: the sleep's panic
    // is the first.
    assert_eq!(msg, "sleep drop");
    assert_eq!(SLEEP_DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
    let r = poll_once(&mut g);
    assert!(matches!(r, Poll::Ready(Ok(_))));
    drop(r);
});

// G3. Control: the same Get dropped instead of polled (Get::drop releases
//     the deadline piece by piece): no abort, first panic out.
scenario!(deadline_timer_and_sleep_drop_panic_in_get_drop_control, {
    let pool = timed_pool();
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    TIMER_DROP_ARMED.store(true, Ordering::SeqCst);
    SLEEP_DROP_ARMED.store(true, Ordering::SeqCst);
    let msg = expect_panic(move || drop(g));
    SLEEP_DROP_ARMED.store(false, Ordering::SeqCst);
    assert!(msg == "sleep drop" || msg == "timer drop", "{msg}");
    assert_eq!(SLEEP_DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
    assert_eq!(pool.status().size, 0);
});

// ---------------------------------------------------------------------------
// H. The wait_timeout firing while the Get is mid-create: `fail(Timeout)`
//    releases the create (its future's destructor panics: stashed, then
//    propagated); the result (Timeout) is kept for the next poll; counts
//    right; the same during an unwind returns the Timeout quietly.
// ---------------------------------------------------------------------------
static FIRE: AtomicBool = AtomicBool::new(false);
#[derive(Clone)]
struct FT;
struct FSleep;
impl Future for FSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if FIRE.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
impl awaitkit::time::Timer for FT {
    type Sleep = FSleep;
    fn now(&self) -> std::time::Instant {
        let t = std::time::Instant::now();
        if FIRE.load(Ordering::SeqCst) {
            t + std::time::Duration::from_secs(7200)
        } else {
            t
        }
    }
    fn sleep_until(&self, _d: std::time::Instant) -> FSleep {
        FSleep
    }
    fn reset(&self, _s: Pin<&mut FSleep>, _d: std::time::Instant) {}
}
fn fire_pool() -> Pool<TM, FT> {
    Pool::builder(TM {
        create_tag: Some("create drop"),
        recycle_tag: "recycle drop",
    })
    .max_size(1)
    .wait_timeout(std::time::Duration::from_secs(3600))
    .with_timer(FT)
    .build()
    .unwrap()
}
scenario!(timeout_mid_create_with_create_drop_panic, {
    let pool = fire_pool();
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    FIRE.store(true, Ordering::SeqCst);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g);
    });
    assert_eq!(msg, "create drop");
    assert_eq!(pool.status().size, 0);
    assert!(!g.is_terminated());
    let r = poll_once(&mut g);
    assert!(
        matches!(r, Poll::Ready(Err(awaitkit::pool::PoolError::Timeout))),
        "REVIEW the decided Timeout is lost"
    );
    assert!(g.is_terminated());
    drop(g);
    FIRE.store(false, Ordering::SeqCst);
    DISARMED.store(true, Ordering::SeqCst);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (0, 0, 0, 0));
});
scenario!(unwind_timeout_mid_create_with_create_drop_panic, {
    let pool = fire_pool();
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let mut g = p2.get();
        assert!(poll_once(&mut g).is_pending());
        FIRE.store(true, Ordering::SeqCst);
        let r = catch_unwind(AssertUnwindSafe(|| {
            matches!(
                poll_once(&mut g),
                Poll::Ready(Err(awaitkit::pool::PoolError::Timeout))
            )
        }));
        assert!(
            matches!(r, Ok(true)),
            "REVIEW during an unwind the Timeout comes back"
        );
        drop(g);
    });
    assert_eq!(msg, "outer");
    DISARMED.store(true, Ordering::SeqCst);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (0, 0, 0, 0));
});
