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

use awaitkit::Timer;
use awaitkit::rate_limiter::Quota;
use awaitkit::redis::{Error, RateLimiter, Semaphore};
use awaitkit::time::DefaultTimer;
use common::child::expect_panic;
use common::redis_server::{RedisServer, connect};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// User values dropped while `std::thread::panicking()`.
static DROPPED_PANICKING: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

fn note_drop(what: &str) {
    DROPPED.fetch_add(1, SeqCst);
    if std::thread::panicking() {
        eprintln!("REVIEW: {what} dropped while panicking");
        DROPPED_PANICKING.fetch_add(1, SeqCst);
    }
}

#[derive(Default)]
struct Plan {
    /// 0: off. 1: panic in `req_packed_command`; 2: panic in the future's
    /// poll; 3: panic in the future's drop (if not completed).
    mode: AtomicUsize,
    calls: AtomicUsize,
    /// Set when a command's reply has been returned.
    reply_seen: AtomicBool,
}

#[derive(Clone)]
struct Bomb {
    inner: MultiplexedConnection,
    plan: Arc<Plan>,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        note_drop("connection clone");
        if CONN_DROP_PANICS.swap(false, SeqCst) {
            panic!("conn clone drop");
        }
    }
}

struct BombFut<'a, O> {
    inner: RedisFuture<'a, O>,
    plan: Arc<Plan>,
    mode: usize,
    done: bool,
}

impl<O> Future for BombFut<'_, O> {
    type Output = redis::RedisResult<O>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.mode == 2 {
            panic!("conn poll");
        }
        let out = self.inner.as_mut().poll(cx);
        if out.is_ready() {
            self.done = true;
            self.plan.reply_seen.store(true, SeqCst);
        }
        out
    }
}

impl<O> Drop for BombFut<'_, O> {
    fn drop(&mut self) {
        if self.mode == 3 && !self.done && !std::thread::panicking() {
            panic!("conn future drop");
        }
        if self.mode != 2 {
            // (mode 2: this is the value that panicked)
            note_drop("connection future");
        }
    }
}

fn pre(plan: &Plan) -> usize {
    plan.calls.fetch_add(1, SeqCst);
    let mode = plan.mode.load(SeqCst);
    if mode == 1 {
        panic!("conn call");
    }
    mode
}

fn wrap<'a, O: Send + 'a>(
    plan: Arc<Plan>,
    mode: usize,
    inner: RedisFuture<'a, O>,
) -> RedisFuture<'a, O> {
    Box::pin(BombFut {
        inner,
        plan,
        mode,
        done: false,
    })
}

impl ConnectionLike for Bomb {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let plan = self.plan.clone();
        let mode = pre(&plan);
        wrap(plan, mode, self.inner.req_packed_command(cmd))
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let plan = self.plan.clone();
        let mode = pre(&plan);
        wrap(
            plan,
            mode,
            self.inner.req_packed_commands(cmd, offset, count),
        )
    }
    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// A timer over the default one whose `now` panics once armed and a reply
/// has been seen; its clones and sleeps are probes.
#[derive(Clone)]
struct PTimer {
    plan: Arc<Plan>,
    now_armed: Arc<AtomicBool>,
}

impl Drop for PTimer {
    fn drop(&mut self) {
        note_drop("timer clone");
    }
}

struct PSleep(Pin<Box<<DefaultTimer as Timer>::Sleep>>);
impl Future for PSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
static SLEEP_DROP_PANICS: AtomicBool = AtomicBool::new(false);
static CONN_DROP_PANICS: AtomicBool = AtomicBool::new(false);

impl Drop for PSleep {
    fn drop(&mut self) {
        note_drop("sleep");
        if SLEEP_DROP_PANICS.swap(false, SeqCst) {
            panic!("sleep drop");
        }
    }
}

impl Timer for PTimer {
    type Sleep = PSleep;
    fn now(&self) -> Instant {
        if self.now_armed.load(SeqCst) && self.plan.reply_seen.load(SeqCst) {
            self.now_armed.store(false, SeqCst);
            panic!("timer now");
        }
        DefaultTimer.now()
    }
    fn sleep_until(&self, deadline: Instant) -> PSleep {
        PSleep(Box::pin(DefaultTimer.sleep_until(deadline)))
    }
    fn reset(&self, sleep: Pin<&mut PSleep>, deadline: Instant) {
        DefaultTimer.reset(sleep.get_mut().0.as_mut(), deadline);
    }
}

struct Env {
    rt: tokio::runtime::Runtime,
    server: RedisServer,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    Env { rt, server }
}

impl Env {
    fn conn(&self) -> MultiplexedConnection {
        self.rt.block_on(connect(&self.server))
    }
    fn bomb(&self) -> Bomb {
        Bomb {
            inner: self.conn(),
            plan: Arc::new(Plan::default()),
        }
    }
    /// Runs `f` to completion on this thread (the connection's driver runs
    /// on the runtime's workers).
    fn run<F: Future>(&self, f: F) -> F::Output {
        let _g = self.rt.enter();
        futures::executor::block_on(f)
    }
    fn zcard(&self, key: &[u8]) -> i64 {
        let mut c = self.conn();
        self.rt
            .block_on(redis::cmd("ZCARD").arg(key).query_async(&mut c))
            .unwrap()
    }
}

/// Polls `f` with a no-op waker until `done(f)` or 3 s.
fn poll_until<F: Future + Unpin>(env: &Env, f: &mut F, done: impl Fn(&F) -> bool) {
    let _g = env.rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(
            Pin::new(&mut *f).poll(&mut cx).is_pending(),
            "completed early"
        );
        if done(f) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("never reached the wanted state");
}

fn no_drop_while_panicking() {
    assert_eq!(
        DROPPED_PANICKING.load(SeqCst),
        0,
        "REVIEW: user values dropped while panicking"
    );
}

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
