//! Adversarial review of `awaitkit::redis::Semaphore`'s named futures
//! (`TryAcquirePermit`, `AcquirePermit`, `RenewPermit`, `ReleasePermit`,
//! `SemaphoreLimit`) against a real `redis-server`: every `Pending` must
//! have registered the waker of the poll that returned it (a fresh waker
//! per poll, polled again only when woken), spurious polls must not send
//! extra script calls, a `limit` driven on a manual clock renews at each
//! moved deadline and checks the lease before polling its future, a
//! panicking inner future gives its permit back at the panic, and a future
//! dropped at any point gives back only what it took.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol", feature = "test-util"))]

use crate::common;

use awaitkit::redis::{
    AcquirePermit, Error, FailurePolicy, ReleasePermit, RenewPermit, Semaphore, SemaphoreLimit,
    TryAcquirePermit,
};
use awaitkit::time::{ManualClock, Timer};
use common::redis_server::{RedisServer, connect, zcard};
use futures::FutureExt;
use futures::future::FusedFuture;
use redis::aio::MultiplexedConnection;
use std::future::{Future, IntoFuture, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Script calls Redis has run so far (`EVALSHA` and `EVAL`, from `INFO
/// commandstats`).
async fn script_calls(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

async fn sleep(ms: u64) {
    smol::Timer::after(Duration::from_millis(ms)).await;
}

fn sem(conn: MultiplexedConnection, cap: usize, lease_ms: u64) -> Semaphore<MultiplexedConnection> {
    Semaphore::new(conn, "s", cap, Duration::from_millis(lease_ms))
        .with_poll_interval(Duration::from_millis(5))
}

/// Loads the three scripts (acquire, renew, release) into Redis, so that
/// later calls are one `EVALSHA` each (no `NOSCRIPT` round).
async fn warm_up<C, T>(s: &Semaphore<C, T>)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
    T: Timer + Clone,
{
    let mut p = s.acquire().await.unwrap();
    p.renew().await.unwrap();
    p.release().await.unwrap();
}

/// A waker that counts its wakes and passes them on to the task waiting
/// for them.
#[derive(Default)]
struct Counter {
    wakes: AtomicUsize,
    parent: Mutex<Option<Waker>>,
}

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if let Some(w) = self.parent.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// Waits until `counter` was woken, failing after `patience`: a future
/// that returned `Pending` without registering the waker it was polled
/// with is never woken.
async fn woken(counter: &Counter, patience: Duration, what: &str) {
    let mut timer = pin!(smol::Timer::after(patience));
    poll_fn(|cx| {
        *counter.parent.lock().unwrap() = Some(cx.waker().clone());
        if counter.wakes.load(Ordering::SeqCst) > 0 {
            return Poll::Ready(());
        }
        if timer.as_mut().poll(cx).is_ready() {
            panic!("{what}: Pending, and its waker not woken within {patience:?}");
        }
        Poll::Pending
    })
    .await;
}

/// Drives `fut` polling it only when the waker of its last poll was woken
/// (a fresh one at every poll, so a stale registration is caught too).
/// Returns the output and the number of polls.
async fn strict<F: Future>(fut: F, what: &str) -> (F::Output, usize) {
    let mut fut = pin!(fut);
    let mut polls = 0;
    loop {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        polls += 1;
        if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            return (out, polls);
        }
        woken(&counter, Duration::from_secs(5), what).await;
    }
}

/// Returns `Pending` once, waking itself: lets the executor run the
/// connection's driver between two hand-made polls.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Polls `fut` with a waker that does nothing, as often as the executor
/// lets it, until it is ready: spurious polls.
async fn hammer<F: Future>(fut: F) -> (F::Output, usize) {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return (out, polls);
        }
        yield_now().await;
    }
}

/// Polls a `limit` on a manual clock (on wakes only) until its renewal
/// sleep is the clock's next deadline, one second from now.
async fn settle<F: Future>(limited: &mut Pin<&mut F>, clock: &ManualClock, what: &str)
where
    F::Output: std::fmt::Debug,
{
    for _ in 0..1000 {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        let out = limited.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(out.is_pending(), "{what}: {out:?}");
        if clock.next_deadline() == Some(clock.now() + Duration::from_secs(1)) {
            return;
        }
        woken(&counter, Duration::from_secs(5), what).await;
    }
    panic!("{what}: never settled");
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A future that panics when polled (and sets its flag when dropped: an
/// `async` block would drop its locals itself as the panic unwinds).
struct PanicsInPoll<'a>(#[allow(dead_code)] SetOnDrop<'a>);

impl Future for PanicsInPoll<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        panic!("user code");
    }
}

/// An `IntoFuture` that counts its conversions (a builder whose
/// `into_future` starts something: a clock, a request).
struct Job<'a>(&'a AtomicUsize);

impl IntoFuture for Job<'_> {
    type Output = u32;
    type IntoFuture = std::future::Ready<u32>;
    fn into_future(self) -> Self::IntoFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(7)
    }
}

/// A future that counts its polls and never completes on its own.
struct Forever<'a>(&'a AtomicUsize);

impl Future for Forever<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    }
}

// Compile-time: every named future is Send with a multiplexed connection
// and a Send inner future, even one that is not Unpin; Unpin with an Unpin
// inner future; and FusedFuture.
#[allow(dead_code)]
fn auto_traits() {
    fn send<T: Send>() {}
    fn unpin<T: Unpin>() {}
    fn fused<T: FusedFuture>() {}
    type C = MultiplexedConnection;
    type NotUnpin = std::future::Ready<std::marker::PhantomPinned>;
    send::<TryAcquirePermit<'static, C>>();
    send::<AcquirePermit<'static, C>>();
    send::<RenewPermit<'static, 'static, C>>();
    send::<ReleasePermit<'static, C>>();
    send::<SemaphoreLimit<'static, NotUnpin, C>>();
    send::<SemaphoreLimit<'static, Pin<Box<dyn Future<Output = ()> + Send>>, C, ManualClock>>();
    unpin::<TryAcquirePermit<'static, C>>();
    unpin::<AcquirePermit<'static, C>>();
    unpin::<RenewPermit<'static, 'static, C>>();
    unpin::<ReleasePermit<'static, C>>();
    unpin::<SemaphoreLimit<'static, std::future::Ready<()>, C>>();
    fused::<TryAcquirePermit<'static, C>>();
    fused::<AcquirePermit<'static, C>>();
    fused::<RenewPermit<'static, 'static, C>>();
    fused::<ReleasePermit<'static, C>>();
    fused::<SemaphoreLimit<'static, NotUnpin, C>>();
}

redis_matrix! {
    // Every future, each Pending answered by a wake of the waker it was
    // polled with (a fresh one per poll): try_acquire granted and refused,
    // acquire waiting across several sleeps for a permit freed elsewhere,
    // renew, release, limit waiting then renewing a 300 ms lease across a
    // 700 ms future.
    async fn every_pending_wakes_the_current_waker() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 300);
        let other = sem(connect(&server).await, 1, 60_000);
        warm_up(&s).await;

        // (One poll now and then on a multi-threaded runtime: Redis answers
        // within it.)
        let (p, _) = strict(s.try_acquire(), "try_acquire").await;
        let mut p = p.unwrap();
        let (refused, _) = strict(other.try_acquire(), "try_acquire refused").await;
        assert!(matches!(refused, Err(Error::NoPermits)));
        let (renewed, _) = strict(p.renew(), "renew").await;
        renewed.unwrap();
        let (released, _) = strict(p.release(), "release").await;
        released.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);

        // acquire: the other handle holds the permit for 100 ms.
        let held = other.try_acquire().await.unwrap();
        let (got, ()) = futures::join!(
            strict(s.acquire(), "acquire waiting"),
            async {
                sleep(100).await;
                held.release().await.unwrap();
            }
        );
        let (p, polls) = got;
        assert!(polls >= 4, "acquire did not sleep between asks ({polls} polls)");
        p.unwrap().release().await.unwrap();

        // limit: waits for the permit, then renews every 100 ms.
        let held = other.try_acquire().await.unwrap();
        let before = script_calls(&mut probe).await;
        let (out, ()) = futures::join!(
            strict(s.limit(sleep(700)), "limit"),
            async {
                sleep(50).await;
                held.release().await.unwrap();
            }
        );
        let (out, _) = out;
        out.unwrap();
        let calls = script_calls(&mut probe).await - before;
        // 1 release (other), >= 1 ask, >= 5 renewals, 1 release.
        assert!(calls >= 8, "the lease was not renewed across the future ({calls} calls)");
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
    }

    // Spurious polls (a noop waker, polled as often as the executor
    // allows) send nothing more than the awaited futures send: one call
    // for try_acquire, one per poll interval for a waiting acquire, and
    // for a limit whose future runs 200 ms of a 3 s lease only its
    // acquire and its release.
    async fn spurious_polls_send_no_extra_calls() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 3_000).with_poll_interval(Duration::from_millis(50));
        let other = sem(connect(&server).await, 1, 60_000);
        warm_up(&s).await;

        let before = script_calls(&mut probe).await;
        let (p, polls) = hammer(s.try_acquire()).await;
        assert_eq!(script_calls(&mut probe).await - before, 1, "try_acquire ({polls} polls)");
        p.unwrap().release().await.unwrap();

        let held = other.try_acquire().await.unwrap();
        let before = script_calls(&mut probe).await;
        let (got, ()) = futures::join!(hammer(s.acquire()), async {
            sleep(300).await;
            held.release().await.unwrap();
        });
        let (p, polls) = got;
        let calls = script_calls(&mut probe).await - before;
        assert!(polls > 50, "not hammered: {polls} polls");
        // About 300 / 50 asks, the other's release, the granting ask.
        assert!(calls <= 12, "{calls} calls for a 300 ms wait at a 50 ms interval ({polls} polls)");
        p.unwrap().release().await.unwrap();

        let before = script_calls(&mut probe).await;
        let start = Instant::now();
        let inner = AtomicUsize::new(0);
        let (out, polls) = hammer(s.limit(poll_fn(|_| {
            inner.fetch_add(1, Ordering::SeqCst);
            if start.elapsed() >= Duration::from_millis(200) {
                Poll::Ready(7)
            } else {
                Poll::Pending
            }
        })))
        .await;
        assert_eq!(out.unwrap(), 7);
        assert!(polls > 50, "not hammered: {polls} polls");
        assert_eq!(
            script_calls(&mut probe).await - before,
            2,
            "limit: an acquire and a release, no renewal before a third of the lease"
        );
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit on a manual clock (lease 3 s): each renewal moves the next
    // deadline, and the sleep follows it (woken at each new deadline, five
    // renewals carry the permit past the first lease); then the clock
    // jumps past the lease's end: the future is not polled again, and
    // the permit is given back by the next call.
    async fn limit_follows_moving_deadlines_and_checks_the_lease_first() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let clock = ManualClock::new();
        let s = Semaphore::new(connect(&server).await, "s", 1, Duration::from_secs(3))
            .with_timer(clock.clone())
            .with_timeout(Duration::from_secs(3600));
        let other = sem(connect(&server).await, 1, 60_000);
        warm_up(&s).await;
        let before = script_calls(&mut probe).await;
        let inner = AtomicUsize::new(0);
        let mut limited = pin!(s.limit(Forever(&inner)));

        let second = Duration::from_secs(1);
        settle(&mut limited, &clock, "acquire").await;
        assert_eq!(inner.load(Ordering::SeqCst), 1);
        assert_eq!(script_calls(&mut probe).await - before, 1);
        for round in 1..=5u64 {
            let calls = script_calls(&mut probe).await;
            // Exactly at the renewal's deadline: the sleep must fire.
            let counter = Arc::new(Counter::default());
            let waker = Waker::from(counter.clone());
            assert!(limited.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            clock.advance(second);
            woken(&counter, Duration::from_secs(5), "renewal deadline").await;
            settle(&mut limited, &clock, "renewal").await;
            assert_eq!(script_calls(&mut probe).await - calls, 1, "round {round}: one renewal");
            assert!(matches!(other.try_acquire().await, Err(Error::NoPermits)), "round {round}");
        }
        assert!(format!("{limited:?}").contains("running"), "{limited:?}");
        // Past the lease's end at once (the renewal is due too): lost,
        // before the future or a renewal is polled.
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(counter.clone());
        assert!(limited.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        let polled = inner.load(Ordering::SeqCst);
        let calls = script_calls(&mut probe).await;
        clock.advance(Duration::from_secs(3));
        woken(&counter, Duration::from_secs(5), "lease end").await;
        let out = limited.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(out, Poll::Ready(Err(Error::LeaseLost))), "{out:?}");
        assert_eq!(inner.load(Ordering::SeqCst), polled, "polled past the lease's end");
        assert_eq!(script_calls(&mut probe).await, calls, "renewed past the lease's end");
        assert!(limited.is_terminated());
        assert_eq!(clock.sleepers(), 0, "a sleep left registered");
        // The permit, dropped unreleased, is given back by the next call.
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        s.try_acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit's future panics while the SemaphoreLimit is kept (the caller
    // caught the panic around a poll): as with an async fn, the future is
    // dropped and the permit queued for release at the panic, not when the
    // SemaphoreLimit is dropped; later polls refuse; dropping it then
    // releases nothing more (not the next holder's permit).
    async fn limit_panic_gives_the_permit_back_at_the_panic() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        let dropped = AtomicBool::new(false);
        let mut limited = Box::pin(s.limit(PanicsInPoll(SetOnDrop(&dropped))));
        let out = AssertUnwindSafe(poll_fn(|cx| limited.as_mut().poll(cx)))
            .catch_unwind()
            .await;
        assert!(out.is_err());
        assert!(dropped.load(Ordering::SeqCst), "the panicked future is kept alive");
        // The SemaphoreLimit still exists: its permit is back at the next call.
        let p = s.try_acquire().await.expect("the permit is held until the SemaphoreLimit drops");
        p.release().await.unwrap();
        let theirs = other.try_acquire().await.unwrap();
        let again = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = limited.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }));
        assert!(again.is_err(), "polled again after its future panicked");
        assert!(!limited.is_terminated());
        assert!(format!("{limited:?}").contains("panicked"), "{limited:?}");
        drop(limited);
        // A call of `s`: whatever it gives back, not the other's permit.
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        theirs.release().await.unwrap();
    }

    // The same failing open: no permit (Redis refused the acquire with a
    // script error), the future runs; its panic drops it at once as well.
    async fn limit_open_without_permit_panic_drops_the_future() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        // A foreign value under the holders key: every acquire is an error.
        let _: () = redis::cmd("SET").arg("s:holders").arg("x").query_async(&mut probe).await.unwrap();
        let s = sem(connect(&server).await, 1, 60_000);
        let dropped = AtomicBool::new(false);
        let ran = AtomicBool::new(false);
        let mut limited = pin!(s.limit_with(
            FailurePolicy::Open,
            async {
                ran.store(true, Ordering::SeqCst);
            }
            .then(|()| PanicsInPoll(SetOnDrop(&dropped)))
        ));
        let out = AssertUnwindSafe(poll_fn(|cx| limited.as_mut().poll(cx)))
            .catch_unwind()
            .await;
        assert!(out.is_err());
        assert!(ran.load(Ordering::SeqCst));
        assert!(dropped.load(Ordering::SeqCst), "the panicked future is kept alive");
    }

    // A future that panics and whose destructor panics too (dropped while
    // the first panic unwinds): the first panic propagates, the process
    // does not abort, and the permit is back at the next call.
    async fn limit_future_panicking_in_its_drop_while_unwinding() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        // Panics in its poll, then in its destructor.
        struct Bad;
        impl Future for Bad {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                panic!("user code");
            }
        }
        impl Drop for Bad {
            fn drop(&mut self) {
                panic!("destructor");
            }
        }
        let mut limited = Box::pin(s.limit(Bad));
        let out = AssertUnwindSafe(poll_fn(|cx| limited.as_mut().poll(cx)))
            .catch_unwind()
            .await;
        let payload = out.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"user code"));
        // Nothing left to drop (a destructor panic here means the future
        // was kept past its panic).
        drop(limited);
        s.try_acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit takes an IntoFuture and, as `.await` in the async fn it
    // replaced, converts it once the permit is held: not when limit is
    // called, not while waiting, never when the acquire fails closed;
    // failing open, after the acquire failed.
    async fn limit_converts_its_into_future_once_the_permit_is_held() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        let converted = AtomicUsize::new(0);
        let theirs = other.try_acquire().await.unwrap();
        let mut limited = pin!(s.limit(Job(&converted)));
        assert_eq!(converted.load(Ordering::SeqCst), 0, "converted by limit()");
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            assert!(limited.as_mut().poll(cx).is_pending());
            if polls < 5 { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
        assert_eq!(converted.load(Ordering::SeqCst), 0, "converted while waiting for the permit");
        theirs.release().await.unwrap();
        assert_eq!(limited.await.unwrap(), 7);
        assert_eq!(converted.load(Ordering::SeqCst), 1);
        // A foreign value under the holders key: every acquire is an error.
        let _: () = redis::cmd("SET").arg("s:holders").arg("x").query_async(&mut probe).await.unwrap();
        assert!(matches!(s.limit(Job(&converted)).await, Err(Error::Redis(_))));
        assert_eq!(converted.load(Ordering::SeqCst), 1, "converted though the acquire failed closed");
        let open = s.limit_with(FailurePolicy::Open, Job(&converted)).await;
        assert_eq!(open.unwrap(), 7);
        assert_eq!(converted.load(Ordering::SeqCst), 2);
    }

    // An acquire waiting behind another handle's permit, dropped after
    // each of its polls (asks in flight and sleeps between them): its
    // ticket is gone after the handle's next call, and that call never
    // releases the other handle's permit.
    async fn acquire_dropped_at_every_poll_gives_back_only_its_own() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        let theirs = other.try_acquire().await.unwrap();
        for polls in 1..=10 {
            {
                let mut waiting = pin!(s.acquire());
                let mut n = 0;
                poll_fn(|cx| {
                    n += 1;
                    match waiting.as_mut().poll(cx) {
                        Poll::Ready(out) => panic!("granted while held elsewhere: {out:?}"),
                        Poll::Pending if n >= polls => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                assert!(!waiting.is_terminated());
            }
            assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)), "{polls} polls");
            assert_eq!(zcard(&mut probe, "s:queue").await, 0, "{polls} polls: ticket left");
            assert_eq!(zcard(&mut probe, "s:holders").await, 1, "{polls} polls");
        }
        theirs.release().await.unwrap();
        // Dropped with its first ask in flight (or granted, then dropped).
        for polls in 1..=3 {
            {
                let mut asking = pin!(s.acquire());
                let mut n = 0;
                poll_fn(|cx| {
                    n += 1;
                    match asking.as_mut().poll(cx) {
                        Poll::Ready(out) => {
                            drop(out.unwrap());
                            Poll::Ready(())
                        }
                        Poll::Pending if n >= polls => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
            }
            // Whether or not the dropped call reached Redis (redis-rs does
            // not send a request whose caller is gone), `s`'s next call
            // leaves nothing behind.
            s.try_acquire().await.unwrap().release().await.unwrap();
            assert_eq!(zcard(&mut probe, "s:holders").await, 0, "{polls} polls");
            assert_eq!(zcard(&mut probe, "s:queue").await, 0, "{polls} polls");
        }
    }

    // renew: dropped in flight, it queues nothing (the permit stays held);
    // after LeaseLost, renewing again and releasing make no call at all.
    async fn renew_dropped_or_lost_sends_nothing_more() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 150);
        let other = sem(connect(&server).await, 1, 60_000);
        warm_up(&s).await;
        let mut p = s.try_acquire().await.unwrap();
        // Dropped after one poll (answered within it now and then on a
        // multi-threaded runtime: then again).
        let mut in_flight = 0;
        for _ in 0..50 {
            let mut renewal = pin!(p.renew());
            if poll_fn(|cx| Poll::Ready(renewal.as_mut().poll(cx))).await.is_pending() {
                assert!(!renewal.is_terminated());
                in_flight += 1;
            }
        }
        assert!(in_flight > 0, "never in flight");
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)), "a dropped renewal released");
        sleep(300).await; // the lease runs out
        let theirs = other.try_acquire().await.unwrap();
        assert!(matches!(p.renew().await, Err(Error::LeaseLost)));
        let before = script_calls(&mut probe).await;
        let mut again = p.renew();
        assert!(format!("{again:?}").contains("not started"), "{again:?}");
        assert!(matches!((&mut again).await, Err(Error::LeaseLost)));
        assert!(again.is_terminated());
        drop(again);
        let mut release = p.release();
        assert!(!release.is_terminated());
        (&mut release).await.unwrap();
        assert!(release.is_terminated());
        drop(release);
        assert_eq!(script_calls(&mut probe).await, before, "calls for a permit known lost");
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        theirs.release().await.unwrap();
    }

    // The futures send nothing before their first poll: built and dropped
    // unpolled, no call, no permit, nothing queued (a later call is one
    // script call: no give-back round before it).
    async fn unpolled_futures_send_and_queue_nothing() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        warm_up(&s).await;
        let before = script_calls(&mut probe).await;
        drop(s.try_acquire());
        drop(s.acquire_many(1));
        drop(s.limit(async {}));
        drop(s.limit_with(FailurePolicy::Open, async {}));
        assert_eq!(script_calls(&mut probe).await, before);
        let p = s.try_acquire().await.unwrap();
        assert_eq!(script_calls(&mut probe).await, before + 1, "a give-back was queued");
        // A release built and dropped unpolled queues the permit's release.
        drop(p.release());
        s.try_acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }
}
