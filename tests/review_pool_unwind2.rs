#![cfg(feature = "test-util")]
//! Adversarial review of 4ee204b (the `None` paths of `settle`, the
//! "polled during an unwind" branches, the stash, `detach`/`close`).
//! Every scenario runs in a child process (`common::child`).
//! On 4ee204b, 5 of 13 failed (named here as they are now): unwind_get_with_panicking_create_propagates_once,
//! unwind_get_with_wait_timeout_propagates_once (wedge; 786eeaa^ aborted),
//! unwind_create_panic_propagates_without_waking (abort; new branch),
//! nested_get_drop_keeps_recycle_future_drop_panic (lost panic; passes on
//! 786eeaa and 786eeaa^: regression of the stale-stash discard),
//! unwind_wait_with_panicking_waker_clone (abort; pre-existing on 786eeaa^).
//! Since the fix that followed, a panic of user code in a poll made during
//! an unwind propagates out of that poll, as any `async fn`'s would (no
//! retry loop, no wake of a panicking waker): the scenarios 1, 1b, 2 and 5
//! now check that it does, with the pool's counts right and nothing retried,
//! when the destructor catches it (not catching it aborts, as in any code).

#[macro_use]
mod common;

use common::child::expect_panic;

use awaitkit::pool::{Manager, Pool};
use futures_core::FusedFuture;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

#[path = "common/pool_script.rs"]
mod pool_script;
use pool_script::*;

// ---------------------------------------------------------------------------
// 1. The new "polled during an unwind" create branch: `Step::Start`, wake,
//    `Pending`. A `block_on(pool.get())` in a destructor during an unwind
//    with a manager whose create keeps panicking never ends: each poll
//    creates again (the manager here gives up panicking after 1000 calls so
//    the test ends and can count).
// ---------------------------------------------------------------------------
scenario!(unwind_get_with_panicking_create_propagates_once, {
    let pool = Pool::new(m(&[], B::PollPanic), 1);
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let r = catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(p2.get())));
        let p = r.expect_err("REVIEW the manager's panic propagates out of the poll");
        assert_eq!(common::child::payload_text(&p), "create poll");
    });
    assert_eq!(msg, "outer");
    let calls = CREATE_CALLS.load(Ordering::SeqCst);
    assert_eq!(
        calls, 1,
        "REVIEW a Get polled during an unwind does not retry a panicking create"
    );
    DISARMED.store(true, Ordering::SeqCst);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
});

// ---------------------------------------------------------------------------
// 2. Same branch, the Get's own waker panics in `wake_by_ref`: the branch
//    calls `cx.waker().wake_by_ref()` outside `catch_unwind` while the
//    thread is panicking: the second panic escapes the destructor: abort.
// ---------------------------------------------------------------------------
scenario!(unwind_create_panic_propagates_without_waking, {
    let pool = Pool::new(m(&[B::PollPanic], B::Ok), 1);
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let w = Waker::from(Arc::new(PanickyWake));
        let mut get = p2.get();
        let r = catch_unwind(AssertUnwindSafe(|| poll_with(&mut get, &w)));
        let p = r.expect_err("REVIEW the manager's panic propagates out of the poll");
        assert_eq!(common::child::payload_text(&p), "create poll");
        drop(get);
    });
    assert_eq!(msg, "outer");
    DISARMED.store(true, Ordering::SeqCst);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
});

// ---------------------------------------------------------------------------
// 3. Holds? create's poll panics (ordinary path): slot and permit back, the
//    Get poisoned, not terminated, later gets work up to max_size.
// ---------------------------------------------------------------------------
scenario!(create_poll_panic_poisons_and_frees, {
    let pool = Pool::new(m(&[B::PollPanic], B::Ok), 2);
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "create poll");
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    assert!(!get.is_terminated());
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert!(
        msg.contains("polled after a panic"),
        "REVIEW wrong poisoning: {msg}"
    );
    drop(get);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    let a = futures::executor::block_on(pool.get()).unwrap();
    let b = futures::executor::block_on(pool.get()).unwrap();
    assert_eq!(counts(&pool), (2, 0, 2, 0));
    drop((a, b));
    assert_eq!(counts(&pool), (2, 2, 0, 0));
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// 4. Recycle poll panics (ordinary path, with max_lifetime+idle_timeout):
//    object dropped once, not while panicking; Get poisoned; counts right.
// ---------------------------------------------------------------------------
scenario!(recycle_poll_panic_with_timeouts_poisons_and_frees, {
    let pool = Pool::builder(m(&[], B::Ok))
        .max_size(1)
        .max_lifetime(std::time::Duration::from_secs(3600))
        .idle_timeout(std::time::Duration::from_secs(3600))
        .wait_timeout(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    drop(futures::executor::block_on(pool.get()).unwrap());
    pool.manager()
        .recycles
        .lock()
        .unwrap()
        .push_back(B::PollPanic);
    let mut get = pool.get();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert_eq!(msg, "recycle poll");
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
    assert!(!get.is_terminated());
    let msg = expect_panic(|| {
        let _ = poll_once(&mut get);
    });
    assert!(
        msg.contains("polled after a panic"),
        "REVIEW wrong poisoning: {msg}"
    );
    drop(get);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (0, 0, 0, 0));
    let g = futures::executor::block_on(pool.get()).unwrap();
    drop(g);
});

// ---------------------------------------------------------------------------
// 5. A create that panics on its second poll while a waiter with a
//    panicking waker is queued: the first panic propagates, the waiter gets
//    the permit, counts are right.
// ---------------------------------------------------------------------------
scenario!(create_panic_with_queued_panicking_waiter, {
    let pool = Pool::new(m(&[B::PendingThenPanic], B::Ok), 1);
    let mut g1 = pool.get();
    assert!(poll_once(&mut g1).is_pending());
    let w = Waker::from(Arc::new(PanickyWake));
    let mut g2 = pool.get();
    assert!(poll_with(&mut g2, &w).is_pending());
    assert_eq!(counts(&pool), (1, 0, 1, 1));
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g1);
    });
    assert_eq!(msg, "create poll", "REVIEW wrong panic");
    assert_eq!(counts(&pool).0, 0);
    drop(g1);
    let r = poll_once(&mut g2);
    assert!(
        matches!(r, Poll::Ready(Ok(_))),
        "REVIEW the waiter is wedged"
    );
    drop(r);
    assert_eq!(counts(&pool), (1, 1, 0, 0));
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// 6. The create panics while the pool is closed meanwhile / resized.
// ---------------------------------------------------------------------------
scenario!(create_panic_after_close_and_resize, {
    let pool = Pool::new(m(&[B::PendingThenPanic, B::PendingThenPanic], B::Ok), 2);
    let mut g1 = pool.get();
    let mut g2 = pool.get();
    assert!(poll_once(&mut g1).is_pending());
    assert!(poll_once(&mut g2).is_pending());
    pool.resize(1);
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g1);
    });
    assert_eq!(msg, "create poll");
    pool.close();
    let msg = expect_panic(|| {
        let _ = poll_once(&mut g2);
    });
    assert_eq!(msg, "create poll");
    drop((g1, g2));
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    assert!(pool.is_closed());
    assert_eq!(DROPS_WHILE_PANICKING.load(Ordering::SeqCst), 0);
});

// ---------------------------------------------------------------------------
// 7. During an unwind, a Get whose recycle panics goes on with the next
//    idle object, then creates: it ends with an object; counts right after.
// ---------------------------------------------------------------------------
scenario!(unwind_recycle_panic_moves_on, {
    let pool = Pool::new(m(&[], B::Ok), 2);
    let a = futures::executor::block_on(pool.get()).unwrap();
    let b = futures::executor::block_on(pool.get()).unwrap();
    drop((a, b));
    {
        let mut r = pool.manager().recycles.lock().unwrap();
        r.push_back(B::PollPanic);
        r.push_back(B::PollPanic);
    }
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let g = futures::executor::block_on(p2.get());
        assert!(g.is_ok());
        std::mem::forget(g); // keep it out of the unwind's drop accounting
    });
    assert_eq!(msg, "outer");
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    assert_eq!(counts(&pool), (1, 0, 1, 0));
});

// ---------------------------------------------------------------------------
// 8. The stash: a Get cancelled during an unwind mid-create whose create
//    future panics when dropped (discarded), then an unrelated ordinary
//    cancel must not raise anything.
// ---------------------------------------------------------------------------
scenario!(no_stale_stash_after_unwind_cancel, {
    struct DropBomb;
    impl Drop for DropBomb {
        fn drop(&mut self) {
            if !DISARMED.load(Ordering::SeqCst) {
                panic!("create drop");
            }
        }
    }
    struct PM(AtomicBool);
    impl Manager for PM {
        type Object = Probe;
        type Error = ();
        fn create(&self) -> impl Future<Output = Result<Probe, ()>> + Send {
            let bomb = self.0.load(Ordering::SeqCst);
            async move {
                let _b = if bomb { Some(DropBomb) } else { None };
                std::future::pending::<()>().await;
                Ok(Probe)
            }
        }
    }
    let pool = Pool::new(PM(AtomicBool::new(true)), 1);
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    eprintln!("STEP cancel during unwind");
    let msg = during_unwind(move || drop(g));
    eprintln!("STEP after unwind: {msg}");
    assert_eq!(msg, "outer");
    pool.manager().0.store(false, Ordering::SeqCst);
    let mut g = pool.get();
    assert!(poll_once(&mut g).is_pending());
    let r = catch_unwind(AssertUnwindSafe(move || drop(g)));
    assert!(r.is_ok(), "REVIEW a stale stash propagated");
    assert_eq!(pool.status().size, 0);
});

// ---------------------------------------------------------------------------
// 9. detach on the ordinary path and during an unwind.
// ---------------------------------------------------------------------------
scenario!(detach_ordinary_and_during_unwind, {
    let pool = Pool::new(m(&[], B::Ok), 1);
    let g = futures::executor::block_on(pool.get()).unwrap();
    let o = awaitkit::pool::Pooled::detach(g);
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    drop(o);
    let g = futures::executor::block_on(pool.get()).unwrap();
    let msg = during_unwind(move || {
        let o = awaitkit::pool::Pooled::detach(g);
        std::mem::forget(o);
    });
    assert_eq!(msg, "outer");
    assert_eq!(counts(&pool), (0, 0, 0, 0));
    let g = futures::executor::block_on(pool.get()).unwrap();
    drop(g);
});

// ---------------------------------------------------------------------------
// 10. The stash: `drop_stashing` now discards whatever is stashed on entry
//     as "stale". But drop_stashing calls nest: a cancelled Get mid-recycle
//     drops its recycle `async` block: first `settle`'s frame (the manager's
//     future's destructor panics: stashed), then the block's captured
//     `entry` — the object being checked. If that object's destructor drops
//     a pending `Get` of another pool, that inner Get's `drop_stashing`
//     discards the outer, legitimate, stash as "stale": the panic of the
//     recycle future's destructor is lost (nothing propagates).
// ---------------------------------------------------------------------------
struct QM;
impl Manager for QM {
    type Object = ();
    type Error = ();
    async fn create(&self) -> Result<(), ()> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

struct Holder {
    inner: Mutex<Option<awaitkit::pool::Get<QM>>>,
}
impl Drop for Holder {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if std::thread::panicking() {
            DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst);
        }
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(g); // a quiet cancel of another pool's Get
    }
}

struct RecycleDropBomb;
impl Drop for RecycleDropBomb {
    fn drop(&mut self) {
        if !DISARMED.load(Ordering::SeqCst) {
            panic!("recycle drop");
        }
    }
}

struct HM;
impl Manager for HM {
    type Object = Holder;
    type Error = ();
    async fn create(&self) -> Result<Holder, ()> {
        Ok(Holder {
            inner: Mutex::new(None),
        })
    }
    fn recycle(&self, _o: &mut Holder) -> impl Future<Output = Result<(), ()>> + Send {
        let b = RecycleDropBomb;
        async move {
            let _b = b;
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

scenario!(nested_get_drop_keeps_recycle_future_drop_panic, {
    let q = Pool::new(QM, 1);
    let mut qg = q.get();
    assert!(poll_once(&mut qg).is_pending()); // mid-create: drop_stashing on cancel
    let p = Pool::new(HM, 1);
    let guard = futures::executor::block_on(p.get()).unwrap();
    *guard.inner.lock().unwrap() = Some(qg);
    drop(guard); // idle
    let mut g = p.get();
    assert!(poll_once(&mut g).is_pending()); // recycling the Holder
    let r = catch_unwind(AssertUnwindSafe(move || drop(g)));
    let s = p.status();
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (0, 0, 0, 0));
    assert_eq!(q.status().size, 0);
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    match r {
        Err(p) => assert_eq!(common::child::payload_text(&p), "recycle drop"),
        Ok(()) => panic!(
            "REVIEW lost panic: the recycle future's destructor panicked (\"recycle drop\") but \
             dropping the cancelled Get returned normally: the inner Get's drop_stashing \
             discarded it as stale"
        ),
    }
});

// Control for 10: the same without the nested Get propagates "recycle drop".
scenario!(recycle_future_drop_panic_propagates_without_nesting, {
    let p = Pool::new(HM, 1);
    drop(futures::executor::block_on(p.get()).unwrap());
    let mut g = p.get();
    assert!(poll_once(&mut g).is_pending());
    let msg = expect_panic(move || drop(g));
    assert_eq!(msg, "recycle drop");
    assert_eq!(p.status().size, 0);
});

// ---------------------------------------------------------------------------
// 11. During an unwind, a Get that has to wait (pool exhausted), polled
//     with a waker whose clone panics.
// ---------------------------------------------------------------------------
scenario!(unwind_wait_with_panicking_waker_clone, {
    use std::task::{RawWaker, RawWakerVTable};
    fn clone(_: *const ()) -> RawWaker {
        if !DISARMED.load(Ordering::SeqCst) {
            panic!("waker clone");
        }
        RawWaker::new(std::ptr::null(), &VT)
    }
    fn noop(_: *const ()) {}
    static VT: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable's functions ignore the data pointer.
    let w = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) };
    let pool = Pool::new(m(&[], B::Ok), 1);
    let held = futures::executor::block_on(pool.get()).unwrap();
    let p2 = pool.clone();
    let msg = during_unwind(move || {
        let mut g = p2.get();
        let r = catch_unwind(AssertUnwindSafe(|| poll_with(&mut g, &w)));
        let p = r.expect_err("REVIEW the waker's panic propagates out of the poll");
        assert_eq!(common::child::payload_text(&p), "waker clone");
        drop(g);
    });
    assert_eq!(msg, "outer");
    DISARMED.store(true, Ordering::SeqCst);
    drop(held);
    assert_eq!(counts(&pool), (1, 1, 0, 0));
});

// 1b. As 1, with a `wait_timeout` of 20 ms and a create call that takes
//     1 ms: the timeout never ends the retry loop (the create branch
//     returns `Pending` before the deadline is polled).
struct SlowPanicky(AtomicUsize);
impl Manager for SlowPanicky {
    type Object = Probe;
    type Error = ();
    fn create(&self) -> impl Future<Output = Result<Probe, ()>> + Send {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = if n >= 300 { B::Ok } else { B::PollPanic };
        let f = Fut {
            b,
            polls: 0,
            tag: "create",
        };
        async move {
            f.await;
            Ok(Probe)
        }
    }
}
scenario!(unwind_get_with_wait_timeout_propagates_once, {
    let pool = Pool::builder(SlowPanicky(AtomicUsize::new(0)))
        .max_size(1)
        .wait_timeout(std::time::Duration::from_millis(20))
        .build()
        .unwrap();
    let p2 = pool.clone();
    let t0 = std::time::Instant::now();
    let msg = during_unwind(move || {
        let r = catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(p2.get())));
        assert!(
            r.is_err(),
            "REVIEW the manager's panic propagates out of the poll"
        );
    });
    assert_eq!(msg, "outer");
    let calls = pool.manager().0.load(Ordering::SeqCst);
    assert!(
        calls < 30,
        "REVIEW wedge: with wait_timeout 20ms the Get polled during an unwind retried a \
         panicking create {calls} times over {:?} (ended only because the manager stops at 300)",
        t0.elapsed()
    );
});
