//! Break-it review #2 of 7a5435b: panic safety of `awaitkit::redis::{Semaphore,
//! RateLimiter}` (give-back re-queues, ScriptCall, SemaphoreLimit, Limit).
//! Each scenario runs in a child process.
//!
//! 14 of 27 failed on 7a5435b (two aborts): a grant whose finished call's
//! sleep panicked on drop leaked its permit (the guard was disarmed first);
//! `SemaphoreLimit` and `Limit` held their future's output, or the future,
//! on the stack while dropping their other parts (dropped during the unwind,
//! aborting when it panicked too); `Limit` had no drop of its own; a timer
//! clone panicking dropped the connection clone during its unwind; a GCRA
//! roll-back handed to a connection that sent it and then panicked was
//! queued again (sent twice: an over-grant).
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

#[macro_use]
mod common;

#[path = "common/redis_bomb.rs"]
mod redis_bomb;
use redis_bomb::*;

// ---------------------------------------------------------------- A: a panic after Redis granted

// A try_acquire granted by Redis; the drop of its call's deadline sleep (a
// user value: the timer's sleep) panics when the crate drops the finished
// call. The grant must not be lost (guard disarmed before the drop?).
scenario!(sem_grant_then_deadline_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "a1", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.try_acquire());
    });
    assert_eq!(msg, "sleep drop");
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: the permit Redis granted before the sleep's drop panicked is held until \
         its lease ends: {again:?} (ZCARD holders = {})",
        env.zcard(sem.holders_key())
    );
    no_drop_while_panicking();
});

// Same for a waiting acquire granted at once.
scenario!(sem_waiter_grant_then_deadline_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "a2", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "sleep drop");
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: the permit Redis granted is held until its lease ends: {again:?}"
    );
    no_drop_while_panicking();
});

// A waiter refused: the crate swaps the finished call for a sleep; the
// call's deadline sleep panics in its drop. The new sleep must not be
// dropped during that unwind; the ticket must be given back.
scenario!(sem_waiter_refused_then_deadline_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "a3", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let held = env.run(sem.acquire()).unwrap();
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "sleep drop");
    env.run(held.release()).unwrap();
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW wedge (ticket left queued): {again:?}"
    );
    no_drop_while_panicking();
});

// ---------------------------------------------------------------- B: SemaphoreLimit

// The future completes while the renewal sleep is armed; the crate drops
// that sleep, which panics. The output (a user value) must not be dropped
// during the unwind; the permit comes back.
scenario!(sem_limit_output_dropped_during_sleep_drop_unwind, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "b1", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let fut = UserFut {
        out: Some(Probe {
            what: "limit output",
            bomb: false,
        }),
        pending: false,
        held: None,
        drop_panics: false,
        on_poll: Some(Box::new(|| SLEEP_DROP_PANICS.store(true, SeqCst))),
    };
    let msg = expect_panic(|| {
        let _ = env.run(sem.limit(fut));
    });
    assert_eq!(msg, "sleep drop");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// Same, the output's own destructor panicking too: two user panics, the
// first must propagate, no abort.
scenario!(sem_limit_sleep_drop_then_output_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "b2", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let fut = UserFut {
        out: Some(Probe {
            what: "limit output",
            bomb: true,
        }),
        pending: false,
        held: None,
        drop_panics: false,
        on_poll: Some(Box::new(|| SLEEP_DROP_PANICS.store(true, SeqCst))),
    };
    let msg = expect_panic(|| {
        let _ = env.run(sem.limit(fut));
    });
    assert_eq!(msg, "sleep drop");
});

// The future is ready, and its destructor (after completion) panics when
// the crate drops it: the output must not be dropped during that unwind.
scenario!(sem_limit_future_drop_panics_after_ready, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb, "b3", 1, Duration::from_secs(60));
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
    let msg = expect_panic(|| {
        let _ = env.run(sem.limit(fut));
    });
    assert_eq!(msg, "future drop");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// Cancelled while releasing, the release's connection future panics in its
// drop: the output is dropped outside the unwind, the permit comes back.
scenario!(sem_limit_cancel_while_releasing_conn_future_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "b4", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let p2 = plan.clone();
    let fut = UserFut {
        out: Some(Probe {
            what: "limit output",
            bomb: false,
        }),
        pending: false,
        held: None,
        drop_panics: false,
        on_poll: Some(Box::new(move || p2.mode.store(6, SeqCst))),
    };
    let mut lim = Box::pin(sem.limit(fut));
    let end = Instant::now() + Duration::from_secs(3);
    while !format!("{lim:?}").contains("releasing") {
        if let Poll::Ready(r) = poll_once(&env, lim.as_mut()) {
            panic!("completed: {:?}", r.err());
        }
        assert!(Instant::now() < end, "never released");
        std::thread::sleep(Duration::from_millis(2));
    }
    let msg = expect_panic(|| drop(lim));
    assert_eq!(msg, "conn future drop");
    plan.mode.store(0, SeqCst);
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// A renewal's connection future panics in poll while the user future
// pends: the panic propagates, the user future's field is dropped outside
// the unwind, the permit comes back, later polls refuse, and the future
// reports itself terminated (FusedFuture).
scenario!(sem_limit_renewal_conn_poll_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "b5", 1, Duration::from_millis(300)).with_timer(ptimer(&plan));
    let fut = UserFut {
        out: None,
        pending: true,
        held: Some(Probe {
            what: "future field",
            bomb: false,
        }),
        drop_panics: false,
        on_poll: None,
    };
    let mut lim = Box::pin(sem.limit(fut));
    let end = Instant::now() + Duration::from_secs(3);
    while !format!("{lim:?}").contains("\"running\"") {
        assert!(poll_once(&env, lim.as_mut()).is_pending());
        assert!(Instant::now() < end, "never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(150)); // a renewal is due (lease / 3)
    plan.mode.store(2, SeqCst);
    let msg = expect_panic(|| {
        let _ = poll_once(&env, lim.as_mut());
    });
    assert_eq!(msg, "conn poll");
    plan.mode.store(0, SeqCst);
    let dbg = format!("{lim:?}");
    assert!(dbg.contains("panicked"), "Debug after panic: {dbg}");
    let again_poll = expect_panic(|| {
        let _ = poll_once(&env, lim.as_mut());
    });
    assert!(again_poll.contains("after a panic"), "{again_poll}");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
    // The crate's rule: is_terminated turns true once the future returned its output, never before (src/lib.rs).
    assert!(!lim.is_terminated(), "{dbg}");
});

// ---------------------------------------------------------------- C: rate limiter Limit

fn window() -> Quota {
    Quota::window(1, Duration::from_secs(60)).unwrap()
}

fn gcra1() -> Quota {
    Quota::gcra(1, Duration::from_secs(60), 1).unwrap()
}

// `Limit` dropped while its acquire's call is in flight, whose connection
// future panics in its drop: the user's future must not be dropped during
// that panic's unwind.
scenario!(
    rl_limit_dropped_midcall_user_future_dropped_during_unwind,
    {
        let env = env();
        let bomb = env.bomb();
        let plan = bomb.plan.clone();
        let rl = RateLimiter::new(bomb, "c1:", window());
        let fut = UserFut {
            out: None,
            pending: true,
            held: Some(Probe {
                what: "user future",
                bomb: false,
            }),
            drop_panics: false,
            on_poll: None,
        };
        plan.mode.store(6, SeqCst);
        let mut lim = Box::pin(rl.limit("k", fut));
        assert!(poll_once(&env, lim.as_mut()).is_pending());
        let msg = expect_panic(|| drop(lim));
        assert_eq!(msg, "conn future drop");
        plan.mode.store(0, SeqCst);
        let again = env.run(rl.try_acquire("k2"));
        assert!(again.is_ok(), "REVIEW wedge: {again:?}");
        no_drop_while_panicking();
    }
);

// Same, the user's future's destructor panicking too: no abort.
scenario!(rl_limit_dropped_midcall_two_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "c2:", window());
    let fut = UserFut {
        out: None,
        pending: true,
        held: Some(Probe {
            what: "user future",
            bomb: true,
        }),
        drop_panics: false,
        on_poll: None,
    };
    plan.mode.store(6, SeqCst);
    let mut lim = Box::pin(rl.limit("k", fut));
    assert!(poll_once(&env, lim.as_mut()).is_pending());
    let msg = expect_panic(|| drop(lim));
    assert_eq!(msg, "conn future drop");
});

// The user's future is ready and its destructor panics when `Limit` drops
// it: the output must not be dropped during that unwind.
scenario!(rl_limit_future_drop_panics_after_ready, {
    let env = env();
    let bomb = env.bomb();
    let rl = RateLimiter::new(bomb, "c3:", window());
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
    let msg = expect_panic(|| {
        let _ = env.run(rl.limit("k", fut));
    });
    assert_eq!(msg, "future drop");
    no_drop_while_panicking();
});

// The user's future panics in poll while it holds a probe: the probe is
// dropped outside the unwind, later polls refuse, is_terminated.
scenario!(rl_limit_future_poll_panics, {
    let env = env();
    let bomb = env.bomb();
    let rl = RateLimiter::new(bomb, "c4:", window());
    let fut = UserFut {
        out: None,
        pending: true,
        held: Some(Probe {
            what: "user future",
            bomb: false,
        }),
        drop_panics: false,
        on_poll: Some(Box::new(|| panic!("user poll"))),
    };
    let mut lim = Box::pin(rl.limit("k", fut));
    let msg = expect_panic(|| {
        let _ = env.run(lim.as_mut());
    });
    assert_eq!(msg, "user poll");
    assert!(!lim.is_terminated(), "no output returned");
    let m2 = expect_panic(|| {
        let _ = poll_once(&env, lim.as_mut());
    });
    assert!(m2.contains("after a panic"), "{m2}");
    no_drop_while_panicking();
});

// ---------------------------------------------------------------- D: give-backs re-queued

// GCRA: a dropped booking's roll-back is queued. The next call's connection
// sends it (Redis runs it) and then panics in `req_packed_command`. The
// roll-back is re-queued as "never handed"; meanwhile another process books
// the same arrival time; the stale roll-back then undoes that booking.
scenario!(rl_gcra_roll_back_sent_twice_after_send_then_panic, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "d1:", gcra1());
    let other = RateLimiter::new(env.conn(), "d1:", gcra1());
    // Warm the GIVE_BACK script's cache (EVALSHA must hit).
    env.run(rl.acquire("w")).unwrap();
    let mut warm = Box::pin(rl.acquire("w"));
    poll_until(&env, &mut warm, |f| format!("{f:?}").contains("sleeping"));
    drop(warm);
    env.run(rl.try_acquire("warm2")).unwrap();
    // The scenario.
    env.run(rl.acquire("k")).unwrap();
    let mut booked = Box::pin(rl.acquire("k"));
    poll_until(&env, &mut booked, |f| format!("{f:?}").contains("sleeping"));
    drop(booked); // queues the roll-back
    plan.mode.store(4, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.try_acquire("x"));
    });
    assert_eq!(msg, "conn sent then panicked");
    plan.mode.store(0, SeqCst);
    // Another process books the next slot (the arrival time moves to the
    // value the roll-back compares with).
    let mut live = Box::pin(other.acquire("k"));
    poll_until(&env, &mut live, |f| format!("{f:?}").contains("sleeping"));
    let get = |env: &Env| -> Option<String> {
        let mut c = env.conn();
        env.rt
            .block_on(redis::cmd("GET").arg(rl.redis_key("k")).query_async(&mut c))
            .unwrap()
    };
    let before = get(&env);
    let _ = env.run(rl.try_acquire("y")); // sends whatever is queued
    let after = get(&env);
    assert_eq!(
        before, after,
        "REVIEW over-grant: a GCRA roll-back that had reached Redis was sent again and rolled \
         back another process's live booking"
    );
    drop(live);
});

// Window: two keys' bookings dropped; the call carrying their give-back is
// cancelled (its connection future pending forever, its drop panics). Both
// must be re-queued, keys aligned, and given back by the next call.
scenario!(rl_window_requeue_two_keys_after_cancel, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "d2:", window());
    for k in ["k1", "k2"] {
        env.run(rl.acquire(k)).unwrap();
    }
    // Both booked before either is dropped (a call sends the queue first).
    let mut b1 = Box::pin(rl.acquire("k1"));
    poll_until(&env, &mut b1, |f| format!("{f:?}").contains("sleeping"));
    let mut b2 = Box::pin(rl.acquire("k2"));
    poll_until(&env, &mut b2, |f| format!("{f:?}").contains("sleeping"));
    drop(b1);
    drop(b2);
    assert_eq!(env.zcard(&rl.redis_key("k1")), 2);
    assert_eq!(env.zcard(&rl.redis_key("k2")), 2);
    plan.mode.store(6, SeqCst);
    let mut f = Box::pin(rl.try_acquire("x"));
    assert!(poll_once(&env, f.as_mut()).is_pending());
    let msg = expect_panic(|| drop(f));
    assert_eq!(msg, "conn future drop");
    plan.mode.store(0, SeqCst);
    let _ = env.run(rl.try_acquire("y"));
    assert_eq!(env.zcard(&rl.redis_key("k1")), 1, "REVIEW leak k1");
    assert_eq!(env.zcard(&rl.redis_key("k2")), 1, "REVIEW leak k2");
    no_drop_while_panicking();
});

// Semaphore: the give-back call (a dropped permit's release) times out
// (pending forever), its connection future's drop panics: the release is
// re-queued and sent by the next call.
scenario!(sem_give_back_timeout_conn_future_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "d3", 1, Duration::from_secs(60))
        .with_timer(ptimer(&plan))
        .with_timeout(Duration::from_millis(50));
    let p = env.run(sem.acquire()).unwrap();
    drop(p);
    plan.mode.store(6, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.try_acquire());
    });
    assert_eq!(msg, "conn future drop");
    plan.mode.store(0, SeqCst);
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// ---------------------------------------------------------------- E: stash

// A user value dropped inside the connection future's drop (here: another
// semaphore's in-flight try_acquire whose own connection future panics in
// its drop). The inner panic must propagate from the outer drop, and no
// stashed panic may leak into a later, clean drop.
scenario!(stash_nested_redis_future_in_conn_future_drop, {
    let env = env();
    let ibomb = env.bomb();
    let iplan = ibomb.plan.clone();
    let isem: &'static Semaphore<Bomb> = Box::leak(Box::new(Semaphore::new(
        ibomb,
        "e1",
        1,
        Duration::from_secs(60),
    )));
    iplan.mode.store(6, SeqCst);
    let mut ifut = Box::pin(isem.try_acquire());
    let r = poll_once(&env, ifut.as_mut());
    assert!(r.is_pending(), "first poll: {r:?}");
    *NESTED.lock().unwrap() = Some(Box::new(ifut));
    let obomb = env.bomb();
    let oplan = obomb.plan.clone();
    let sem = Semaphore::new(obomb, "e2", 1, Duration::from_secs(60));
    oplan.mode.store(7, SeqCst);
    let mut ofut = Box::pin(sem.try_acquire());
    assert!(poll_once(&env, ofut.as_mut()).is_pending());
    let msg = expect_panic(move || drop(ofut));
    assert_eq!(msg, "conn future drop");
    assert!(
        NESTED.lock().unwrap().is_none(),
        "the nested future was dropped"
    );
    iplan.mode.store(0, SeqCst);
    oplan.mode.store(0, SeqCst);
    // A later clean drop of an in-flight call must not panic with a
    // leftover stashed payload.
    let clean = loop {
        let mut clean = Box::pin(sem.try_acquire());
        if poll_once(&env, clean.as_mut()).is_pending() {
            break clean;
        } // (answered within the first poll under load: try again)
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(clean)));
    assert!(
        r.is_ok(),
        "REVIEW: a stashed panic leaked into an unrelated drop"
    );
    let again = env.run(isem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak (inner): {again:?}");
    no_drop_while_panicking();
});

// ---------------------------------------------------------------- F: poll during another unwind

struct PollOnDrop<'a> {
    env: &'a Env,
    sem: &'a Semaphore<Bomb, PTimer>,
    plan: Arc<Plan>,
    caught: &'a Mutex<Option<String>>,
}

impl Drop for PollOnDrop<'_> {
    fn drop(&mut self) {
        self.plan.mode.store(2, SeqCst);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = self.env.run(self.sem.try_acquire());
        }));
        *self.caught.lock().unwrap() = Some(match r {
            Ok(()) => "no panic".to_owned(),
            Err(p) => common::child::payload_text(&p),
        });
        self.plan.mode.store(0, SeqCst);
    }
}

// A try_acquire polled (in catch_unwind) inside a destructor running during
// another panic's unwind; its connection panics in poll. Policy: the panic
// propagates from the poll (caught there), no abort, nothing wedged.
scenario!(sem_poll_in_drop_during_unwind_conn_poll_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "f1", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let caught = Mutex::new(None);
    let msg = expect_panic(|| {
        let _d = PollOnDrop {
            env: &env,
            sem: &sem,
            plan: plan.clone(),
            caught: &caught,
        };
        panic!("outer");
    });
    assert_eq!(msg, "outer");
    assert_eq!(caught.lock().unwrap().as_deref(), Some("conn poll"));
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
});

// ---------------------------------------------------------------- G: ScriptCall timeouts

// Zero timeout: every call times out (the command is sent first); what a
// call may have taken is given back by the next call of a longer timeout.
scenario!(sem_zero_timeout, {
    let env = env();
    let sem =
        Semaphore::new(env.conn(), "g1", 1, Duration::from_secs(60)).with_timeout(Duration::ZERO);
    let r = env.run(sem.try_acquire());
    // (A reply already there at the first poll wins: possible under load.)
    assert!(matches!(r, Err(Error::Timeout { .. }) | Ok(_)), "{r:?}");
    drop(r);
    let sem = sem.with_timeout(Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(100));
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: zero-timeout grant never given back: {again:?}"
    );
});

// Duration::MAX timeout: no overflow, calls work.
scenario!(max_timeout, {
    let env = env();
    let sem =
        Semaphore::new(env.conn(), "g2", 1, Duration::from_secs(60)).with_timeout(Duration::MAX);
    let p = env.run(sem.try_acquire());
    assert!(p.is_ok(), "{p:?}");
    let rl = RateLimiter::new(env.conn(), "g2:", window()).with_timeout(Duration::MAX);
    let g = env.run(rl.try_acquire("k"));
    assert!(g.is_ok(), "{g:?}");
});

/// A timer whose sleeps complete at once (allowed by the `Timer` contract).
#[derive(Clone)]
struct EarlyTimer;
impl Timer for EarlyTimer {
    type Sleep = std::future::Ready<()>;
    fn now(&self) -> Instant {
        DefaultTimer.now()
    }
    fn sleep_until(&self, _deadline: Instant) -> Self::Sleep {
        std::future::ready(())
    }
    fn reset(&self, _sleep: Pin<&mut Self::Sleep>, _deadline: Instant) {}
}

// A timer whose sleep completes early: a call must not time out early, a
// booked slot must not be used early.
scenario!(early_timer_no_early_timeout, {
    let env = env();
    let sem = Semaphore::new(env.conn(), "g3", 1, Duration::from_secs(60)).with_timer(EarlyTimer);
    for _ in 0..20 {
        let p = env.run(sem.try_acquire());
        assert!(p.is_ok(), "REVIEW early timeout: {p:?}");
        env.run(p.unwrap().release()).unwrap();
    }
    let rl = RateLimiter::new(
        env.conn(),
        "g3:",
        Quota::window(1, Duration::from_millis(300)).unwrap(),
    )
    .with_timer(EarlyTimer);
    env.run(rl.acquire("k")).unwrap();
    let t = Instant::now();
    env.run(rl.acquire("k")).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "REVIEW early grant: {:?}",
        t.elapsed()
    );
});

// ---------------------------------------------------------------- H: clones panicking

// `RateLimiter::limit` whose connection's `clone` panics (documented as a
// user panic the crate handles): the user's future passed in must not be
// dropped during that panic's unwind.
scenario!(
    rl_limit_conn_clone_panics_drops_user_future_during_unwind,
    {
        let env = env();
        let bomb = env.bomb();
        let rl = RateLimiter::new(bomb, "h1:", window());
        let fut = UserFut {
            out: None,
            pending: true,
            held: Some(Probe {
                what: "user future",
                bomb: false,
            }),
            drop_panics: false,
            on_poll: None,
        };
        CONN_CLONE_PANICS.store(true, SeqCst);
        let msg = expect_panic(|| {
            drop(rl.limit("k", fut));
        });
        assert_eq!(msg, "conn clone");
        no_drop_while_panicking();
    }
);

// A rate limiter check whose timer's `clone` panics: the connection clone
// already made must not be dropped during that unwind.
scenario!(rl_timer_clone_panics_drops_conn_clone_during_unwind, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "h2:", window()).with_timer(ptimer(&plan));
    TIMER_CLONE_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        drop(rl.try_acquire("k"));
    });
    assert_eq!(msg, "timer clone");
    no_drop_while_panicking();
});

// A semaphore acquire whose connection's `clone` panics in poll: no leak,
// nothing dropped during the unwind.
scenario!(sem_conn_clone_panics_in_poll, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "h3", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    CONN_CLONE_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "conn clone");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
    no_drop_while_panicking();
});

// A semaphore acquire whose timer's `clone` panics in poll (after the
// connection clone was made).
scenario!(sem_timer_clone_panics_in_poll, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "h4", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    TIMER_CLONE_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "timer clone");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
    no_drop_while_panicking();
});

// A release granted by Redis whose call's deadline sleep panics when
// dropped: released once (the permit marked released before), first panic.
scenario!(sem_release_then_deadline_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "h5", 1, Duration::from_secs(60)).with_timer(ptimer(&plan));
    let p = env.run(sem.acquire()).unwrap();
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(p.release());
    });
    assert_eq!(msg, "sleep drop");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// A booked rate-limiter slot whose sleep panics when dropped at its time:
// first panic propagates, nothing dropped during the unwind.
scenario!(rl_booked_sleep_drop_panics_at_its_time, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(
        bomb,
        "h6:",
        Quota::window(1, Duration::from_millis(200)).unwrap(),
    )
    .with_timer(ptimer(&plan));
    env.run(rl.acquire("k")).unwrap();
    let mut b = Box::pin(rl.acquire("k"));
    poll_until(&env, &mut b, |f| format!("{f:?}").contains("sleeping"));
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(b.as_mut());
    });
    assert_eq!(msg, "sleep drop");
    assert!(!b.is_terminated(), "no output returned");
    no_drop_while_panicking();
});

// (Debatable: under-use only.) An acquire granted at once by Redis whose
// call's deadline sleep panics when the crate drops the finished call: the
// caller never gets the grant; is the slot given back (the acquire knows
// its members)? Expected by analogy with the semaphore's guard.
scenario!(rl_acquire_granted_then_deadline_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "i1:", window()).with_timer(ptimer(&plan));
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.acquire("k"));
    });
    assert_eq!(msg, "sleep drop");
    let _ = env.run(rl.try_acquire("flush"));
    assert_eq!(
        env.zcard(&rl.redis_key("k")),
        0,
        "REVIEW (under-use): a slot granted to an acquire that panicked before returning it \
         stays taken for the whole period"
    );
    no_drop_while_panicking();
});
