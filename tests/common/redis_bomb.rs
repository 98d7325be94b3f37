//! The Redis panic reviews' scaffolding (`tests/review_redis_unwind.rs`,
//! `tests/review_redis_unwind2.rs`, `tests/review_redis_unwind3.rs`): a user
//! connection over a real one whose call, future (`poll`, `drop`), `clone`
//! and `drop` panic as a `Plan` says, a timer whose `now`, `clone` and sleeps
//! panic, values that count their drops (and those during an unwind), and a
//! Redis server per scenario. Included with `#[path]` by the files that use
//! it.

#![allow(dead_code, unused_imports)]
pub(crate) use crate::common::child::expect_panic;
pub(crate) use crate::common::redis_server::{RedisServer, connect};
pub(crate) use awaitkit::Timer;
pub(crate) use awaitkit::rate_limiter::Quota;
pub(crate) use awaitkit::redis::{Error, RateLimiter, Semaphore};
pub(crate) use awaitkit::time::DefaultTimer;
pub(crate) use redis::aio::{ConnectionLike, MultiplexedConnection};
pub(crate) use redis::{Cmd, Pipeline, RedisFuture, Value};
pub(crate) use std::future::Future;
pub(crate) use std::pin::Pin;
pub(crate) use std::sync::Arc;
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
pub(crate) use std::task::{Context, Poll, Waker};
pub(crate) use std::time::{Duration, Instant};

/// User values dropped while `std::thread::panicking()`.
pub(crate) static DROPPED_PANICKING: AtomicUsize = AtomicUsize::new(0);
pub(crate) static DROPPED: AtomicUsize = AtomicUsize::new(0);
pub(crate) static PROBE_DROPS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn note_drop(what: &str) {
    DROPPED.fetch_add(1, SeqCst);
    if std::thread::panicking() {
        eprintln!("REVIEW: {what} dropped while panicking");
        DROPPED_PANICKING.fetch_add(1, SeqCst);
    }
}

#[derive(Default)]
pub(crate) struct Plan {
    /// 0: off. 1: panic in `req_packed_command`; 2: panic in the future's
    /// poll; 3: panic in the future's drop (if not completed).
    pub(crate) mode: AtomicUsize,
    pub(crate) calls: AtomicUsize,
    /// Set when a command's reply has been returned.
    pub(crate) reply_seen: AtomicBool,
}

pub(crate) struct Bomb {
    pub(crate) inner: MultiplexedConnection,
    pub(crate) plan: Arc<Plan>,
}

/// A user value that a connection future in mode 7 drops in its own drop.
pub(crate) static NESTED: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);
pub(crate) static CONN_CLONE_PANICS: AtomicBool = AtomicBool::new(false);
pub(crate) static TIMER_CLONE_PANICS: AtomicBool = AtomicBool::new(false);

impl Clone for Bomb {
    fn clone(&self) -> Self {
        if CONN_CLONE_PANICS.swap(false, SeqCst) {
            panic!("conn clone");
        }
        Bomb {
            inner: self.inner.clone(),
            plan: self.plan.clone(),
        }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        note_drop("connection clone");
        if CONN_DROP_PANICS.swap(false, SeqCst) {
            panic!("conn clone drop");
        }
    }
}

pub(crate) struct BombFut<'a, O> {
    pub(crate) inner: RedisFuture<'a, O>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) mode: usize,
    pub(crate) done: bool,
    // Set after its first poll, which returns `Pending` (a round trip is
    // never answered within the poll that sends it): the call's deadline
    // sleep is then armed in every scenario, however fast the server.
    pub(crate) yielded: bool,
}

impl<O> Future for BombFut<'_, O> {
    type Output = redis::RedisResult<O>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.mode == 2 {
            panic!("conn poll");
        }
        if self.mode == 8 {
            // A failing Redis (fail-open path).
            self.done = true;
            return Poll::Ready(Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "review: injected failure",
            ))));
        }
        if self.mode == 6 || self.mode == 7 {
            // Never answered (a slow Redis): deterministic "in flight".
            return Poll::Pending;
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
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
        if (self.mode == 3 || self.mode == 6) && !self.done && !std::thread::panicking() {
            panic!("conn future drop");
        }
        if self.mode == 7 && !self.done && !std::thread::panicking() {
            // Drops a user value holding another Redis future.
            let nested = NESTED.lock().unwrap().take();
            drop(nested);
        }
        if self.mode != 2 {
            // (mode 2: this is the value that panicked)
            note_drop("connection future");
        }
    }
}

pub(crate) fn pre(plan: &Plan) -> usize {
    plan.calls.fetch_add(1, SeqCst);
    let mode = plan.mode.load(SeqCst);
    if mode == 1 {
        panic!("conn call");
    }
    mode
}

/// Mode 4: the command reaches Redis (run to its reply on another thread),
/// then `req_packed_command` panics.
pub(crate) fn send_then_panic(inner: &MultiplexedConnection, cmd: &Cmd) -> ! {
    let mut c = inner.clone();
    let cmd = cmd.clone();
    let h = tokio::runtime::Handle::current();
    let reply =
        std::thread::spawn(move || h.block_on(async move { c.req_packed_command(&cmd).await }))
            .join()
            .unwrap();
    eprintln!("mode 4 reply: {reply:?}");
    panic!("conn sent then panicked");
}

pub(crate) fn wrap<'a, O: Send + 'a>(
    plan: Arc<Plan>,
    mode: usize,
    inner: RedisFuture<'a, O>,
) -> RedisFuture<'a, O> {
    Box::pin(BombFut {
        inner,
        plan,
        mode,
        done: false,
        yielded: false,
    })
}

impl ConnectionLike for Bomb {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let plan = self.plan.clone();
        let mode = pre(&plan);
        if mode == 4 {
            send_then_panic(&self.inner, cmd);
        }
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
pub(crate) struct PTimer {
    pub(crate) plan: Arc<Plan>,
    pub(crate) now_armed: Arc<AtomicBool>,
}

impl Clone for PTimer {
    fn clone(&self) -> Self {
        if TIMER_CLONE_PANICS.swap(false, SeqCst) {
            panic!("timer clone");
        }
        PTimer {
            plan: self.plan.clone(),
            now_armed: self.now_armed.clone(),
        }
    }
}

impl Drop for PTimer {
    fn drop(&mut self) {
        note_drop("timer clone");
    }
}

pub(crate) struct PSleep(pub(crate) Pin<Box<<DefaultTimer as Timer>::Sleep>>);
impl Future for PSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
pub(crate) static SLEEP_DROP_PANICS: AtomicBool = AtomicBool::new(false);
pub(crate) static CONN_DROP_PANICS: AtomicBool = AtomicBool::new(false);

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

pub(crate) struct Env {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) server: RedisServer,
}

pub(crate) fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    Env { rt, server }
}

impl Env {
    pub(crate) fn conn(&self) -> MultiplexedConnection {
        self.rt.block_on(connect(&self.server))
    }
    pub(crate) fn bomb(&self) -> Bomb {
        Bomb {
            inner: self.conn(),
            plan: Arc::new(Plan::default()),
        }
    }
    /// Runs `f` to completion on this thread (the connection's driver runs
    /// on the runtime's workers).
    pub(crate) fn run<F: Future>(&self, f: F) -> F::Output {
        let _g = self.rt.enter();
        futures::executor::block_on(f)
    }
    pub(crate) fn zcard(&self, key: &[u8]) -> i64 {
        let mut c = self.conn();
        self.rt
            .block_on(redis::cmd("ZCARD").arg(key).query_async(&mut c))
            .unwrap()
    }
}

/// Polls `f` with a no-op waker until `done(f)` or 3 s.
pub(crate) fn poll_until<F: Future + Unpin>(env: &Env, f: &mut F, done: impl Fn(&F) -> bool) {
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

pub(crate) fn no_drop_while_panicking() {
    assert_eq!(
        DROPPED_PANICKING.load(SeqCst),
        0,
        "REVIEW: user values dropped while panicking"
    );
}

// ---------------------------------------------------------------- helpers

pub(crate) use futures::future::FusedFuture;
pub(crate) use std::sync::Mutex;

pub(crate) fn ptimer(plan: &Arc<Plan>) -> PTimer {
    PTimer {
        plan: plan.clone(),
        now_armed: Arc::new(AtomicBool::new(false)),
    }
}

/// A user value (an output, a future's field) whose drop is recorded, and
/// panics ("probe drop") when `bomb`.
pub(crate) struct Probe {
    pub(crate) what: &'static str,
    pub(crate) bomb: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        note_drop(self.what);
        PROBE_DROPS.fetch_add(1, SeqCst);
        if self.bomb {
            panic!("probe drop");
        }
    }
}

/// A user future: ready with `out` on its first poll (pending forever if
/// `None`); holds `held` (a probe); its destructor panics ("future drop")
/// when `drop_panics`.
pub(crate) struct UserFut {
    pub(crate) out: Option<Probe>,
    pub(crate) pending: bool,
    #[allow(dead_code)] // dropped with the future
    pub(crate) held: Option<Probe>,
    pub(crate) drop_panics: bool,
    pub(crate) on_poll: Option<Box<dyn FnMut() + Send>>,
}

impl Unpin for UserFut {}

impl Future for UserFut {
    type Output = Probe;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Probe> {
        if let Some(f) = self.on_poll.as_mut() {
            f();
        }
        if self.pending {
            return Poll::Pending;
        }
        Poll::Ready(self.out.take().expect("polled once"))
    }
}

impl Drop for UserFut {
    fn drop(&mut self) {
        if self.drop_panics && !std::thread::panicking() {
            panic!("future drop");
        }
    }
}

pub(crate) fn poll_once<F: Future + ?Sized>(env: &Env, f: Pin<&mut F>) -> Poll<F::Output> {
    let _g = env.rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    f.poll(&mut cx)
}
