//! Break-it review #3 of the Redis types (f48e0f8): fail-open
//! `SemaphoreLimit`, `IntoFuture` panics, lost leases and renewals whose
//! call's sleep panics on drop, give-backs that must not remove another
//! holder's permit, cancels at every poll. Each scenario runs in a child
//! process. All 8 kept scenarios passed on f48e0f8 (a ninth, a GCRA grant
//! made at once and lost to a sleep's panic, stays booked until it expires:
//! documented under-use, in `awaitkit::redis`'s guarantees); two of them
//! now check the crate's `is_terminated` rule (never before the output was
//! returned) instead of the reviewer's reading.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

#[macro_use]
mod common;

#[path = "common/redis_bomb.rs"]
mod redis_bomb;
use redis_bomb::*;

// ---------------------------------------------------------------- A: a panic after Redis granted

// A try_acquire granted by Redis; the drop of its call's deadline sleep (a
// user value: the timer's sleep) panics when the crate drops the finished

// ---------------------------------------------------------------- review 3

use awaitkit::redis::FailurePolicy;

/// An `IntoFuture` whose conversion panics ("into_future"); records its
/// drop.
struct PanicInto(Probe);
impl std::future::IntoFuture for PanicInto {
    type Output = Probe;
    type IntoFuture = UserFut;
    fn into_future(self) -> UserFut {
        let PanicInto(probe) = self;
        drop(probe);
        panic!("into_future");
    }
}

// R1: fail open, the permit granted, the `IntoFuture` conversion panics:
// the panic propagates, the permit comes back, later polls refuse and
// the future is terminated.
scenario!(r3_sem_limit_open_into_future_panics, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb, "r1", 1, Duration::from_secs(60));
    let mut lim = Box::pin(sem.limit_with(
        FailurePolicy::Open,
        PanicInto(Probe {
            what: "given",
            bomb: false,
        }),
    ));
    let msg = expect_panic(|| {
        loop {
            if poll_once(&env, lim.as_mut()).is_ready() {
                panic!("REVIEW: completed although into_future panics");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert_eq!(msg, "into_future");
    // The crate's rule: is_terminated turns true once the future returned its output, never before (src/lib.rs).
    assert!(!lim.is_terminated(), "no output returned");
    let m = expect_panic(|| {
        let _ = poll_once(&env, lim.as_mut());
    });
    assert!(m.contains("after a panic"), "{m}");
    drop(lim);
    assert_eq!(PROBE_DROPS.load(SeqCst), 1, "the given value dropped once");
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: {again:?} (ZCARD {})",
        env.zcard(sem.holders_key())
    );
    no_drop_while_panicking();
});

// R2: Redis fails (fail open: the future runs without a permit), the
// future is ready and its destructor panics: the output is dropped once,
// outside the unwind; nothing is held in Redis afterwards.
scenario!(
    r3_sem_limit_open_failing_redis_future_drop_panics_after_ready,
    {
        let env = env();
        let bomb = env.bomb();
        let plan = bomb.plan.clone();
        let sem = Semaphore::new(bomb, "r2", 1, Duration::from_secs(60));
        plan.mode.store(8, SeqCst);
        let fut = UserFut {
            out: Some(Probe {
                what: "limit output",
                bomb: false,
            }),
            pending: false,
            held: None,
            drop_panics: true,
            on_poll: None,
        };
        let mut lim = Box::pin(sem.limit_with(FailurePolicy::Open, fut));
        let msg = expect_panic(|| {
            loop {
                if let Poll::Ready(r) = poll_once(&env, lim.as_mut()) {
                    panic!("REVIEW: completed {:?}", r.map(|_| ()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        assert_eq!(msg, "future drop");
        assert_eq!(PROBE_DROPS.load(SeqCst), 1, "output dropped once");
        assert!(!lim.is_terminated(), "the output was lost to the panic");
        drop(lim);
        plan.mode.store(0, SeqCst);
        let again = env.run(sem.try_acquire());
        assert!(again.is_ok(), "REVIEW: {again:?}");
        no_drop_while_panicking();
    }
);

// R3: fail open, the lease lost while the future pends (not polled for
// longer than the lease), another holder takes the only permit, the
// renewal finds ours gone and runs on; at the end our release must not
// remove the other holder's permit, and the renewal must not have put
// ours back (over-grant).
scenario!(r3_sem_limit_open_lease_lost_other_holder_kept, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb, "r3", 1, Duration::from_millis(600));
    let other = Semaphore::new(env.conn(), "r3", 1, Duration::from_secs(60));
    let go = Arc::new(AtomicBool::new(false));
    let g2 = go.clone();
    let fut = std::future::poll_fn(move |_| {
        if g2.load(SeqCst) {
            Poll::Ready(5)
        } else {
            Poll::Pending
        }
    });
    let mut lim = Box::pin(sem.limit_with(FailurePolicy::Open, fut));
    poll_until(&env, &mut lim, |l| format!("{l:?}").contains("running"));
    std::thread::sleep(Duration::from_millis(900));
    let held = env
        .run(other.try_acquire())
        .expect("ours expired: the other gets it");
    // the renewal runs and finds ours gone
    for _ in 0..50 {
        assert!(poll_once(&env, lim.as_mut()).is_pending());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        env.zcard(sem.holders_key()) <= 1,
        "REVIEW over-grant: {} holders of 1",
        env.zcard(sem.holders_key())
    );
    go.store(true, SeqCst);
    let out = loop {
        if let Poll::Ready(r) = poll_once(&env, lim.as_mut()) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(out.unwrap(), 5);
    assert_eq!(
        env.zcard(sem.holders_key()),
        1,
        "REVIEW: the other holder's permit removed by our release"
    );
    assert!(
        env.run(sem.try_acquire()).is_err(),
        "REVIEW: a second permit of 1 granted"
    );
    env.run(held.release()).unwrap();
});

// R4: the permit's renewal finds the lease lost while the renewal call's
// deadline sleep panics on drop: the panic propagates; the permit must
// not be left claiming a lease extended beyond Redis's.
scenario!(r3_sem_renew_lost_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "r4", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let mut p = env.run(sem.acquire()).unwrap();
    let before = p.lease_expiry();
    // Redis loses it.
    let mut c = env.conn();
    let _: () = env
        .rt
        .block_on(redis::cmd("DEL").arg(sem.holders_key()).query_async(&mut c))
        .unwrap();
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(p.renew());
    });
    assert_eq!(msg, "sleep drop");
    assert!(
        p.lease_expiry() <= before,
        "REVIEW: local lease extended after a lost renewal"
    );
    // renewing again says lost (not a fresh grant over capacity)
    let r = env.run(p.renew());
    assert!(r.is_err(), "REVIEW: renewed a lost lease: {r:?}");
    let q = env.run(sem.try_acquire());
    assert!(q.is_ok(), "{q:?}");
    assert_eq!(env.zcard(sem.holders_key()), 1, "REVIEW over-grant");
    drop(p);
});

// R5: renewal granted while its call's sleep panics on drop: local lease
// not extended beyond Redis (it is not extended at all: conservative).
scenario!(r3_sem_renew_granted_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "r5", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let mut p = env.run(sem.acquire()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before = p.lease_expiry();
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(p.renew());
    });
    assert_eq!(msg, "sleep drop");
    assert!(
        p.lease_expiry() <= before,
        "REVIEW: extended: {before:?} -> {:?}",
        p.lease_expiry()
    );
    env.run(p.renew()).unwrap();
    env.run(p.release()).unwrap();
    assert_eq!(env.zcard(sem.holders_key()), 0);
});

// R7: window immediate grant for `acquire`, its call's sleep panics on
// drop: given back (the caller never got it), and exactly once: a later
// grant is not removed.
scenario!(r3_rl_window_grant_given_back_once, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(
        bomb,
        "r7:",
        Quota::window(2, Duration::from_secs(60)).unwrap(),
    )
    .with_timer(ptimer(&plan));
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.acquire("k"));
    });
    assert_eq!(msg, "sleep drop");
    // two grants now (the first call's given back with the first check)
    let a = env.run(rl.try_acquire("k"));
    let b = env.run(rl.try_acquire("k"));
    assert!(
        a.is_ok() && b.is_ok(),
        "REVIEW leak: {:?} {:?}",
        a.map(|_| ()),
        b.map(|_| ())
    );
    // and no third: the give-back was not applied twice
    let c = env.run(rl.try_acquire("k"));
    assert!(c.is_err(), "REVIEW over-grant: third slot of 2");
});

// R8: capacity 2, another holder has one; our acquire is granted and its
// call's sleep panics on drop: ours is given back, the other's stays.
scenario!(r3_sem_grant_given_back_other_holder_kept, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "r8", 2, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let other = Semaphore::new(env.conn(), "r8", 2, Duration::from_secs(60));
    let held = env.run(other.try_acquire()).unwrap();
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "sleep drop");
    let a = env.run(sem.try_acquire()).expect("ours given back");
    assert_eq!(
        env.zcard(sem.holders_key()),
        2,
        "REVIEW: other's permit removed or ours kept"
    );
    assert!(env.run(sem.try_acquire()).is_err(), "REVIEW over-grant");
    env.run(a.release()).unwrap();
    env.run(held.release()).unwrap();
    assert_eq!(env.zcard(sem.holders_key()), 0);
});

// R9: SemaphoreLimit (both policies) cancelled after every number of polls
// (future ready on its 3rd poll, output a probe): each output dropped at
// most once, none while panicking, every permit back at the end.
scenario!(r3_sem_limit_cancel_at_every_poll, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb, "r9", 1, Duration::from_secs(60));
    for open in [false, true] {
        for k in 0..40 {
            let mut n = 0;
            let fut = std::future::poll_fn(move |cx| {
                n += 1;
                if n >= 3 {
                    Poll::Ready(Probe {
                        what: "out",
                        bomb: false,
                    })
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            });
            let policy = if open {
                FailurePolicy::Open
            } else {
                FailurePolicy::Closed
            };
            let mut lim = Box::pin(sem.limit_with(policy, fut));
            let before = PROBE_DROPS.load(SeqCst);
            let mut got = None;
            for _ in 0..k {
                if let Poll::Ready(r) = poll_once(&env, lim.as_mut()) {
                    got = Some(r.unwrap());
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let finished = got.is_some();
            drop(lim);
            drop(got);
            assert!(PROBE_DROPS.load(SeqCst) - before <= 1, "open={open} k={k}");
            if finished {
                assert_eq!(PROBE_DROPS.load(SeqCst) - before, 1);
            }
        }
    }
    let p = env.run(sem.try_acquire());
    assert!(p.is_ok(), "REVIEW leak after cancels: {:?}", p.err());
    env.run(p.unwrap().release()).unwrap();
    assert_eq!(env.zcard(sem.holders_key()), 0);
    no_drop_while_panicking();
});

// A finished future polled again refuses ("after completion") and stays
// terminated, however often it is polled (the refusal is the crate's own
// panic, not user code's: it must not put the future in its after-a-panic
// state).
scenario!(finished_futures_stay_terminated_when_polled_again, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb.clone(), "r9", 1, Duration::from_secs(60));
    let rl = RateLimiter::new(
        bomb,
        "r9:",
        Quota::window(5, Duration::from_secs(60)).unwrap(),
    );
    let mut try_acq = Box::pin(sem.try_acquire());
    let permit = env.run(try_acq.as_mut()).unwrap();
    let mut check = Box::pin(rl.try_acquire("k"));
    env.run(check.as_mut()).unwrap();
    let mut limited = Box::pin(rl.limit("k2", async { 1 }));
    assert_eq!(env.run(limited.as_mut()).unwrap(), 1);
    for _ in 0..2 {
        let m = expect_panic(|| {
            let _ = poll_once(&env, try_acq.as_mut());
        });
        assert!(m.contains("after completion"), "{m}");
        assert!(try_acq.is_terminated());
        let m = expect_panic(|| {
            let _ = poll_once(&env, check.as_mut());
        });
        assert!(m.contains("after completion"), "{m}");
        assert!(check.is_terminated());
        let m = expect_panic(|| {
            let _ = poll_once(&env, limited.as_mut());
        });
        assert!(m.contains("after completion"), "{m}");
        assert!(limited.is_terminated());
    }
    let mut release = Box::pin(permit.release());
    env.run(release.as_mut()).unwrap();
    let m = expect_panic(|| {
        let _ = poll_once(&env, release.as_mut());
    });
    assert!(m.contains("after completion"), "{m}");
    assert!(release.is_terminated());
});
