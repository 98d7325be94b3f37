//! Break-it review: panic safety of `awaitkit::redis::{Semaphore, RateLimiter}`
//! with a user connection / timer that panics. Each scenario in a child process.
//!
//! Review of a4c340d (2026-12-05): all 13 scenarios failed there — two
//! aborted the process (a timer's `now` panicking while a waiter's timeout
//! was in flight whose sleep panics on drop; a connection future panicking
//! in `poll` whose connection clone panics on drop), three left a
//! give-back or a booked slot taken until it expired, and the rest dropped
//! the connection clone, the timeout's sleep or timer clone during the
//! first panic's unwind.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

#[macro_use]
mod common;

#[path = "common/redis_bomb.rs"]
mod redis_bomb;
use redis_bomb::*;

// ---------------------------------------------------------------- semaphore

// A dropped permit's release is queued; the next call's give-back is sent
// first, on the user connection, which panics there. Is the release lost?
scenario!(sem_give_back_survives_conn_call_panic, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "s1", 1, Duration::from_secs(60));
    let p = env.run(sem.acquire()).unwrap();
    drop(p); // queues its release
    plan.mode.store(1, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.try_acquire());
    });
    assert_eq!(msg, "conn call");
    plan.mode.store(0, SeqCst);
    // The give-back must still be sent: the one permit is free again.
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: permit released before the panic is still held: {again:?}"
    );
    no_drop_while_panicking();
});

// Same, but the connection's future panics in poll (of the give-back).
scenario!(sem_give_back_survives_conn_poll_panic, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "s2", 1, Duration::from_secs(60));
    let p = env.run(sem.acquire()).unwrap();
    drop(p);
    plan.mode.store(2, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.try_acquire());
    });
    assert_eq!(msg, "conn poll");
    plan.mode.store(0, SeqCst);
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW leak: permit released before the panic is still held: {again:?}"
    );
    no_drop_while_panicking();
});

// A try_acquire whose connection future panics in poll (no give-back
// queued): other user values (the connection clone, the timer clone, the
// timeout's sleep) must not be dropped during the unwind.
scenario!(sem_conn_poll_panic_drops, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "s3", 1, Duration::from_secs(60)).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: Arc::new(AtomicBool::new(false)),
    });
    plan.mode.store(2, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.try_acquire());
    });
    assert_eq!(msg, "conn poll");
    plan.mode.store(0, SeqCst);
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
    no_drop_while_panicking();
});

// An acquire dropped mid-call whose connection future's destructor panics.
scenario!(sem_drop_midcall_conn_future_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "s4", 1, Duration::from_secs(60)).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: Arc::new(AtomicBool::new(false)),
    });
    plan.mode.store(3, SeqCst);
    let mut fut = Box::pin(sem.acquire());
    {
        let _g = env.rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    let msg = expect_panic(|| drop(fut));
    assert_eq!(msg, "conn future drop");
    plan.mode.store(0, SeqCst);
    // Whatever that call took is given back: the permit is free.
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak/wedge: {again:?}");
    no_drop_while_panicking();
});

// A waiting acquire whose timer `now` panics right after a refusal.
scenario!(sem_waiter_timer_now_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let armed = Arc::new(AtomicBool::new(false));
    let sem = Semaphore::new(bomb, "s5", 1, Duration::from_secs(60)).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: armed.clone(),
    });
    let held = env.run(sem.acquire()).unwrap();
    plan.reply_seen.store(false, SeqCst);
    armed.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "timer now");
    env.run(held.release()).unwrap();
    // The ticket the waiter queued must be gone: a try_acquire is granted.
    let again = env.run(sem.try_acquire());
    assert!(
        again.is_ok(),
        "REVIEW wedge (ticket left queued): {again:?}"
    );
    no_drop_while_panicking();
});

// ---------------------------------------------------------------- limiter

fn window() -> Quota {
    Quota::window(1, Duration::from_secs(60)).unwrap()
}

// A booked acquire dropped while sleeping queues its slot's give-back; the
// next call's connection panics on that give-back. Is the slot lost?
scenario!(rl_give_back_survives_conn_call_panic, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "r1:", window());
    env.run(rl.acquire("k")).unwrap();
    let mut booked = Box::pin(rl.acquire("k"));
    poll_until(&env, &mut booked, |f| format!("{f:?}").contains("sleeping"));
    assert_eq!(env.zcard(&rl.redis_key("k")), 2);
    drop(booked); // queues the give-back
    plan.mode.store(1, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.try_acquire("other"));
    });
    assert_eq!(msg, "conn call");
    plan.mode.store(0, SeqCst);
    let _ = env.run(rl.try_acquire("other2"));
    assert_eq!(
        env.zcard(&rl.redis_key("k")),
        1,
        "REVIEW leak: the dropped booking's slot was never given back"
    );
    no_drop_while_panicking();
});

// The timer's `now` panics just after Redis booked a slot for an acquire
// (before the acquire records its sleep): the booking must be given back.
scenario!(rl_timer_now_panics_after_booking, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let armed = Arc::new(AtomicBool::new(false));
    let rl = RateLimiter::new(bomb, "r2:", window()).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: armed.clone(),
    });
    env.run(rl.acquire("k")).unwrap();
    plan.reply_seen.store(false, SeqCst);
    armed.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.acquire("k"));
    });
    assert_eq!(msg, "timer now");
    let _ = env.run(rl.try_acquire("flush"));
    assert_eq!(
        env.zcard(&rl.redis_key("k")),
        1,
        "REVIEW leak: the slot booked before the timer panicked is kept"
    );
    no_drop_while_panicking();
});

// The connection future panics in poll during a limiter check: no other
// user value dropped during the unwind; a later check works.
scenario!(rl_conn_poll_panic_drops, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "r3:", window()).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: Arc::new(AtomicBool::new(false)),
    });
    plan.mode.store(2, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.try_acquire("k"));
    });
    assert_eq!(msg, "conn poll");
    plan.mode.store(0, SeqCst);
    let again = env.run(rl.try_acquire("k"));
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
    no_drop_while_panicking();
});

// A limiter acquire dropped mid-call whose connection future's drop panics.
scenario!(rl_drop_midcall_conn_future_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "r4:", window()).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: Arc::new(AtomicBool::new(false)),
    });
    plan.mode.store(3, SeqCst);
    let mut fut = Box::pin(rl.acquire("k"));
    {
        let _g = env.rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    let msg = expect_panic(|| drop(fut));
    assert_eq!(msg, "conn future drop");
    plan.mode.store(0, SeqCst);
    let again = env.run(rl.try_acquire("k2"));
    assert!(again.is_ok(), "REVIEW wedge: {again:?}");
    no_drop_while_panicking();
    let _ = Error::NoPermits;
});

// A permit's release whose connection future panics in poll: the release
// must still happen (queued), and the first panic propagates.
scenario!(sem_release_conn_poll_panic, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let sem = Semaphore::new(bomb, "s6", 1, Duration::from_secs(60));
    let p = env.run(sem.acquire()).unwrap();
    plan.mode.store(2, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(p.release());
    });
    assert_eq!(msg, "conn poll");
    plan.mode.store(0, SeqCst);
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// `limit` whose user future panics while a lease renewal is in flight /
// its renewal sleep is armed: the permit is released, other user values
// (the renewal's connection clone, the sleep, the timer clones) dropped
// not while panicking.
scenario!(sem_limit_future_panics, {
    let env = env();
    let bomb = env.bomb();
    let sem = Semaphore::new(bomb, "s7", 1, Duration::from_secs(60)).with_timer(PTimer {
        plan: Arc::new(Plan::default()),
        now_armed: Arc::new(AtomicBool::new(false)),
    });
    let msg = expect_panic(|| {
        let _ = env.run(sem.limit(async { panic!("user future") }));
    });
    assert_eq!(msg, "user future");
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "REVIEW leak: {again:?}");
    no_drop_while_panicking();
});

// Two user panics: the timer's `now` panics after a refusal, and the
// timeout's sleep panics when dropped. The first must propagate, no abort.
// (Since the review's fixes the finished call, with its sleep, is dropped
// before the clock is read for the next ask: the sleep's panic comes
// first, and the ticket is given back.)
scenario!(sem_waiter_timer_now_then_sleep_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let armed = Arc::new(AtomicBool::new(false));
    let sem = Semaphore::new(bomb, "s8", 1, Duration::from_secs(60)).with_timer(PTimer {
        plan: plan.clone(),
        now_armed: armed.clone(),
    });
    let held = env.run(sem.acquire()).unwrap();
    plan.reply_seen.store(false, SeqCst);
    armed.store(true, SeqCst);
    SLEEP_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(sem.acquire());
    });
    assert_eq!(msg, "sleep drop");
    armed.store(false, SeqCst);
    env.run(held.release()).unwrap();
    let again = env.run(sem.try_acquire());
    assert!(again.is_ok(), "ticket left queued: {again:?}");
});

// Two user panics: the connection future panics in poll, and the
// connection clone's destructor panics. First propagates, no abort.
scenario!(rl_conn_poll_then_conn_clone_drop_panics, {
    let env = env();
    let bomb = env.bomb();
    let plan = bomb.plan.clone();
    let rl = RateLimiter::new(bomb, "r5:", window());
    plan.mode.store(2, SeqCst);
    CONN_DROP_PANICS.store(true, SeqCst);
    let msg = expect_panic(|| {
        let _ = env.run(rl.try_acquire("k"));
    });
    assert_eq!(msg, "conn poll");
});
