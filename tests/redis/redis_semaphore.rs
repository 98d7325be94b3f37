//! `awaitkit::redis::Semaphore` against a real `redis-server` (started by
//! the test on a free loopback port), through redis-rs's tokio and smol
//! connections.
//!
//! Holders are counted by the test itself (a shared counter raised while a
//! permit is held) and by Redis (the holders set), so "never more than
//! capacity" is checked from both sides.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

use crate::common;

use awaitkit::redis::{
    AcquirePermit, Error, FailurePolicy, Permit, ReleasePermit, RenewPermit, Semaphore,
    SemaphoreLimit, TryAcquirePermit,
};
use common::redis_server::{RedisServer, connect, manager, zcard};
use futures::future::FusedFuture;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use std::future::{Future, Ready};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The scripts in Redis's cache (`INFO memory`).
async fn cached_scripts(conn: &mut MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
        .expect("INFO memory lists number_of_cached_scripts")
        .trim()
        .parse()
        .unwrap()
}

async fn sleep(ms: u64) {
    smol::Timer::after(Duration::from_millis(ms)).await;
}

fn sem(conn: MultiplexedConnection, cap: usize, lease_ms: u64) -> Semaphore<MultiplexedConnection> {
    Semaphore::new(conn, "s", cap, Duration::from_millis(lease_ms))
        .with_poll_interval(Duration::from_millis(2))
}

// Auto traits: the semaphore is shared across tasks and threads.
const _: () = {
    fn send_sync<T: Send + Sync>() {}
    let _ = send_sync::<Semaphore<MultiplexedConnection>>;
    let _ = send_sync::<Semaphore<ConnectionManager>>;
    let _ = send_sync::<awaitkit::redis::Permit<'static, MultiplexedConnection>>;
};

// The named futures are Send on a Send connection (spawnable on tokio's
// multi-thread runtime), with the user's future and output Send.
const _: () = {
    fn send<T: Send>() {}
    type M = MultiplexedConnection;
    let _ = send::<TryAcquirePermit<'static, M>>;
    let _ = send::<AcquirePermit<'static, M>>;
    let _ = send::<RenewPermit<'static, 'static, M>>;
    let _ = send::<ReleasePermit<'static, M>>;
    let _ = send::<SemaphoreLimit<'static, Ready<String>, M>>;
    let _ = send::<SemaphoreLimit<'static, Ready<String>, ConnectionManager>>;
    let _ = send::<AcquirePermit<'static, ConnectionManager, awaitkit::time::FuturesTimer>>;
};

type Granted<'a> = Result<Permit<'a, MultiplexedConnection>, Error>;

/// A caller's own future that keeps one of each of the semaphore's futures
/// in a field, by its name, and drives them all from its hand-written
/// `poll` (a join that skips the terminated ones).
struct Every<'p, 'a> {
    try_acquire: TryAcquirePermit<'a, MultiplexedConnection>,
    acquire: AcquirePermit<'a, MultiplexedConnection>,
    renew: RenewPermit<'p, 'a, MultiplexedConnection>,
    release: ReleasePermit<'a, MultiplexedConnection>,
    limit: SemaphoreLimit<'a, Ready<u32>, MultiplexedConnection>,
    tried: Option<Granted<'a>>,
    acquired: Option<Granted<'a>>,
    renewed: Option<Result<(), Error>>,
    released: Option<Result<(), Error>>,
    limited: Option<Result<u32, Error>>,
    polls: usize,
}

impl<'a> Every<'_, 'a> {
    fn terminated(&self) -> [bool; 5] {
        [
            self.try_acquire.is_terminated(),
            self.acquire.is_terminated(),
            self.renew.is_terminated(),
            self.release.is_terminated(),
            self.limit.is_terminated(),
        ]
    }
}

/// Polls `fut` unless it has terminated, keeping its output in `slot`.
fn drive<F: Future + FusedFuture + Unpin>(
    fut: &mut F,
    slot: &mut Option<F::Output>,
    cx: &mut Context<'_>,
) {
    if fut.is_terminated() {
        return;
    }
    if let Poll::Ready(out) = Pin::new(fut).poll(cx) {
        assert!(slot.replace(out).is_none(), "one output each");
    }
}

impl Future for Every<'_, '_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Unpin with the default timer and an `Unpin` user future.
        let this = self.get_mut();
        this.polls += 1;
        drive(&mut this.try_acquire, &mut this.tried, cx);
        drive(&mut this.acquire, &mut this.acquired, cx);
        drive(&mut this.renew, &mut this.renewed, cx);
        drive(&mut this.release, &mut this.released, cx);
        drive(&mut this.limit, &mut this.limited, cx);
        if this.terminated().iter().all(|&t| t) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Raises `live` while held, and records the highest value seen.
async fn hold(live: &AtomicUsize, max: &AtomicUsize, ms: u64) {
    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(now, Ordering::SeqCst);
    sleep(ms).await;
    live.fetch_sub(1, Ordering::SeqCst);
}

redis_matrix! {
    // 12 contenders on two handles, capacity 3: never more than 3 holders
    // at once (counted here), all 3 used, every permit back at the end
    // (counted by Redis), and nobody left in the queue.
    async fn never_more_than_capacity() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let a = sem(connect(&server).await, 3, 10_000);
        let b = sem(connect(&server).await, 3, 10_000);
        let (live, max) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let tasks = (0..12).map(|i| {
            let (s, live, max) = (if i % 2 == 0 { &a } else { &b }, &live, &max);
            async move {
                let permit = s.acquire().await.unwrap();
                hold(live, max, 5).await;
                permit.release().await.unwrap();
            }
        });
        futures::future::join_all(tasks).await;
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        // The same with `limit`, and with `acquire_many(2)` mixed in.
        let (live2, max2) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let tasks = (0..8).map(|i| {
            let (s, live, max) = (if i % 2 == 0 { &a } else { &b }, &live2, &max2);
            async move {
                if i % 3 == 0 {
                    let permit = s.acquire_many(2).await.unwrap();
                    live.fetch_add(1, Ordering::SeqCst);
                    hold(live, max, 5).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    permit.release().await.unwrap();
                } else {
                    s.limit(hold(live, max, 5)).await.unwrap();
                }
            }
        });
        futures::future::join_all(tasks).await;
        assert!(max2.load(Ordering::SeqCst) <= 3);
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // try_acquire refuses at capacity (and past it: ExceedsCapacity before
    // Redis is asked), grants zero permits without Redis, and takes a
    // released permit.
    async fn try_acquire_refuses_at_capacity() {
        let server = RedisServer::start();
        let s = sem(connect(&server).await, 2, 10_000);
        let p1 = s.try_acquire().await.unwrap();
        let p2 = s.try_acquire().await.unwrap();
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        assert!(matches!(
            s.try_acquire_many(3).await,
            Err(Error::ExceedsCapacity { requested: 3, capacity: 2 })
        ));
        assert!(matches!(
            s.acquire_many(3).await,
            Err(Error::ExceedsCapacity { requested: 3, capacity: 2 })
        ));
        assert_eq!(s.try_acquire_many(0).await.unwrap().permits(), 0);
        p1.release().await.unwrap();
        let p3 = s.try_acquire().await.unwrap();
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        p2.release().await.unwrap();
        p3.release().await.unwrap();
        assert_eq!(s.try_acquire_many(2).await.unwrap().permits(), 2);
    }

    // Waiters are granted in arrival order, across handles: a holder keeps
    // the only permit while five waiters queue (each in Redis before the
    // next starts), then each takes it in turn.
    async fn fifo_across_handles() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let handles: Vec<_> = futures::future::join_all((0..3).map(|_| async {
            sem(connect(&server).await, 1, 10_000)
        }))
        .await;
        let holder = handles[0].acquire().await.unwrap();
        let order = Mutex::new(Vec::new());
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (s, order) = (&handles[i % 3], &order);
            let mut w = Box::pin(async move {
                let p = s.acquire().await.unwrap();
                order.lock().unwrap().push(i);
                sleep(3).await;
                p.release().await.unwrap();
            });
            // Poll it until its ticket is in Redis's queue.
            while zcard(&mut probe, "s:queue").await < i + 1 {
                futures::future::select(w.as_mut(), pin!(sleep(1))).await;
            }
            waiters.push(w);
        }
        holder.release().await.unwrap();
        futures::future::join_all(waiters).await;
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }

    // A free permit owed to a queued waiter is not taken by try_acquire
    // (nor by a later acquire) before the waiter's next poll.
    async fn try_acquire_does_not_jump_the_queue() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let slow = sem(connect(&server).await, 1, 60_000).with_poll_interval(Duration::from_secs(600));
        let holder = s.acquire().await.unwrap();
        let mut waiter = Box::pin(slow.acquire());
        while zcard(&mut probe, "s:queue").await < 1 {
            futures::future::select(waiter.as_mut(), pin!(sleep(1))).await;
        }
        holder.release().await.unwrap();
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        // The waiter is still first when a later acquire has queued too.
        let late = s.acquire();
        let (first, late) = futures::future::join(
            async {
                // Let `late` poll a few times before the waiter polls again.
                sleep(20).await;
                drop(waiter);
                slow.try_acquire().await.map(|p| p.permits())
            },
            late,
        )
        .await;
        // Dropped, the waiter's ticket left at `slow`'s next call: that
        // call (a try_acquire behind `late`'s ticket) is refused, and
        // `late` got the permit.
        assert!(matches!(first, Err(Error::NoPermits)), "{first:?}");
        assert_eq!(late.unwrap().permits(), 1);
    }

    // Edges: capacity zero grants nothing but zero permits (and limit
    // refuses even when failing open); capacity past MAX_PERMITS is capped;
    // a lease of Duration::MAX (capped at 2^52 us) and of zero (1 ms) work.
    async fn edges_zero_capacity_and_extreme_leases() {
        let server = RedisServer::start();
        let zero = sem(connect(&server).await, 0, 1000);
        assert_eq!(zero.try_acquire_many(0).await.unwrap().permits(), 0);
        assert!(matches!(zero.acquire().await, Err(Error::ExceedsCapacity { requested: 1, capacity: 0 })));
        let open = zero.limit_with(FailurePolicy::Open, async {}).await;
        assert!(matches!(open, Err(Error::ExceedsCapacity { .. })));
        let huge = Semaphore::new(connect(&server).await, "h", usize::MAX, Duration::MAX);
        assert_eq!(huge.capacity(), awaitkit::redis::MAX_PERMITS);
        let mut p = huge.acquire_many(3).await.unwrap();
        p.renew().await.unwrap();
        assert!(p.lease_expiry() > Duration::from_secs(100 * 365 * 86_400));
        assert_eq!(huge.limit(async { 5 }).await.unwrap(), 5);
        p.release().await.unwrap();
        let tiny = Semaphore::new(connect(&server).await, "t", 1, Duration::ZERO);
        assert_eq!(tiny.lease(), Duration::from_millis(1));
        std::mem::forget(tiny.acquire().await.unwrap());
        sleep(5).await;
        tiny.try_acquire().await.unwrap().release().await.unwrap();
    }

    // The futures are Send (tokio::spawn-able) on a multiplexed connection,
    // and a `limit` dropped while its future runs gives its permit back at
    // the handle's next call (its inner future dropped with it).
    async fn limit_dropped_mid_way_and_futures_are_send() {
        fn send<F: Send>(f: F) -> F {
            f
        }
        let server = RedisServer::start();
        let s = sem(connect(&server).await, 1, 60_000);
        let tracker = common::Tracker::new();
        let token = tracker.token();
        {
            let mut limited = Box::pin(send(s.limit(async move {
                let _token = token;
                std::future::pending::<()>().await
            })));
            // Runs once the permit is granted (the inner future is polled).
            let mut probe = connect(&server).await;
            while zcard(&mut probe, "s:holders").await == 0 {
                futures::future::select(limited.as_mut(), pin!(sleep(1))).await;
            }
            assert_eq!(tracker.live(), 1);
        }
        assert_eq!(tracker.live(), 0, "the inner future dropped with limit");
        let p = send(s.try_acquire()).await.unwrap();
        send(p.release()).await.unwrap();
        let mut p = send(s.acquire_many(1)).await.unwrap();
        send(p.renew()).await.unwrap();
        send(p.release()).await.unwrap();
    }

    // A dropped permit stays held in Redis until the handle's next call,
    // which releases it first: that call is granted at capacity 1.
    async fn dropped_permit_returned_at_next_call() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        drop(s.acquire().await.unwrap());
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        assert!(matches!(other.try_acquire().await, Err(Error::NoPermits)));
        s.try_acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // A crashed holder (its permit forgotten: no release, no renewal)
    // keeps the permit until its lease runs out, then it is back.
    async fn lease_expiry_returns_a_crashed_holders_permits() {
        let server = RedisServer::start();
        let crashed = sem(connect(&server).await, 2, 300);
        let other = sem(connect(&server).await, 2, 300);
        std::mem::forget(crashed.acquire_many(2).await.unwrap());
        assert!(matches!(other.try_acquire().await, Err(Error::NoPermits)));
        sleep(450).await;
        assert_eq!(other.try_acquire_many(2).await.unwrap().permits(), 2);
    }

    // `limit` renews the lease while its future runs: four leases later,
    // the permit is still held (another handle is refused), and it is
    // released when the future ends. Permit::renew extends by hand.
    async fn limit_renews_past_several_leases() {
        let server = RedisServer::start();
        let s = sem(connect(&server).await, 1, 200);
        let other = sem(connect(&server).await, 1, 200);
        let out = s
            .limit(async {
                sleep(800).await;
                matches!(other.try_acquire().await, Err(Error::NoPermits))
            })
            .await
            .unwrap();
        assert!(out, "the permit was lost while limit ran");
        other.try_acquire().await.unwrap().release().await.unwrap();
        let mut p = s.acquire().await.unwrap();
        for _ in 0..4 {
            sleep(100).await;
            p.renew().await.unwrap();
        }
        assert!(matches!(other.try_acquire().await, Err(Error::NoPermits)));
        sleep(300).await;
        assert!(matches!(p.renew().await, Err(Error::LeaseLost)));
    }

    // A killed or paused Redis: errors within the timeout, never a hang;
    // `limit` fails closed (future unrun) unless told to fail open;
    // a running `limit` whose renewals fail cancels its future once the
    // lease may be over (fail closed), and the semaphore works again after.
    async fn killed_and_paused_redis_answer_with_errors() {
        let mut server = RedisServer::start();
        let s = sem(connect(&server).await, 1, 300).with_timeout(Duration::from_millis(100));
        s.try_acquire().await.unwrap().release().await.unwrap();
        server.pause();
        let err = s.try_acquire().await.unwrap_err();
        assert!(matches!(err, Error::Timeout { after } if after == Duration::from_millis(100)), "{err}");
        assert!(matches!(s.acquire().await, Err(Error::Timeout { .. })));
        let ran = AtomicUsize::new(0);
        assert!(s.limit(async { ran.fetch_add(1, Ordering::SeqCst) }).await.unwrap_err().is_failure());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        s.limit_with(FailurePolicy::Open, async { ran.fetch_add(1, Ordering::SeqCst) }).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        server.resume();
        // Paused mid-limit: renewals time out, the future is dropped
        // (cancelled) and LeaseLost returned.
        let tracker = common::Tracker::new();
        let guard = tracker.token();
        let limited = s.limit(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        let err = futures::future::join(limited, async {
            sleep(50).await;
            server.pause();
        })
        .await
        .0
        .unwrap_err();
        assert!(matches!(err, Error::LeaseLost), "{err}");
        assert_eq!(tracker.live(), 0, "the inner future was dropped");
        server.resume();
        sleep(400).await;
        s.try_acquire().await.unwrap().release().await.unwrap();
        server.kill();
        for _ in 0..3 {
            assert!(s.try_acquire().await.unwrap_err().is_failure());
            assert!(s.acquire().await.unwrap_err().is_failure());
        }
    }

    // A restarted Redis has no script cache: errors while it is down, then
    // NOSCRIPT -> EVAL and recovery through a reconnecting manager.
    async fn restarted_redis_reloads_the_scripts() {
        let mut server = RedisServer::start();
        let s = Semaphore::new(manager(&server).await, "s", 1, Duration::from_secs(5))
            .with_timeout(Duration::from_millis(300));
        s.acquire().await.unwrap().release().await.unwrap();
        server.kill();
        assert!(s.try_acquire().await.unwrap_err().is_failure());
        server.restart();
        // The new server knows no script: EVALSHA answers NOSCRIPT and
        // the semaphore sends each script again (EVAL).
        let mut probe = connect(&server).await;
        assert_eq!(cached_scripts(&mut probe).await, 0);
        let mut failures = 0;
        let permit = loop {
            match s.acquire().await {
                Ok(p) => break p,
                Err(e) if e.is_failure() && failures < 200 => {
                    failures += 1;
                    sleep(10).await;
                }
                Err(e) => panic!("no recovery: {e}"),
            }
        };
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        assert!(cached_scripts(&mut probe).await >= 2, "EVAL cached the scripts again");
        permit.release().await.unwrap();
        s.try_acquire().await.unwrap().release().await.unwrap();
    }

    // Cancel safety: an acquire dropped after each of its polls, while the
    // permit is held elsewhere (its ticket must leave the queue) and while
    // it is free (a grant in flight must come back): the handle's next
    // call gives back whatever it took, so the queue empties and the full
    // capacity is granted.
    async fn acquire_cancelled_at_every_poll() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        for held in [true, false] {
            for polls in 1..=8 {
                let holder = if held { Some(other.acquire().await.unwrap()) } else { None };
                {
                    let mut acquire = pin!(s.acquire());
                    let mut n = 0;
                    std::future::poll_fn(|cx| {
                        n += 1;
                        match acquire.as_mut().poll(cx) {
                            Poll::Ready(p) => {
                                drop(p);
                                Poll::Ready(())
                            }
                            Poll::Pending if n >= polls => Poll::Ready(()),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                    .await;
                }
                if let Some(h) = holder {
                    h.release().await.unwrap();
                }
                // The next call of `s` gives back first: granted.
                s.try_acquire().await.unwrap().release().await.unwrap();
                assert_eq!(zcard(&mut probe, "s:queue").await, 0, "held {held}, {polls} polls");
                assert_eq!(zcard(&mut probe, "s:holders").await, 0, "held {held}, {polls} polls");
            }
        }
    }

    // Each future stored by its name in a caller's struct and driven from
    // its hand-written `poll`: all five complete, are terminated then (and
    // not before), do what their methods say, and panic if polled again.
    async fn named_futures_stored_and_polled_by_hand() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 5, 60_000);
        let mut held = s.acquire().await.unwrap();
        let before = held.lease_expiry();
        let other = s.try_acquire().await.unwrap();
        let mut every = Every {
            try_acquire: s.try_acquire(),
            acquire: s.acquire_many(2),
            renew: held.renew(),
            release: other.release(),
            limit: s.limit(std::future::ready(7)),
            tried: None,
            acquired: None,
            renewed: None,
            released: None,
            limited: None,
            polls: 0,
        };
        assert_eq!(every.terminated(), [false; 5], "nothing done before the first poll");
        let debug = format!("{:?}", every.acquire);
        assert!(debug.starts_with("AcquirePermit") && debug.contains("not started"), "{debug}");
        (&mut every).await;
        assert!(every.polls >= 1);
        assert_eq!(every.terminated(), [true; 5]);
        for debug in [format!("{:?}", every.renew), format!("{:?}", every.limit)] {
            assert!(debug.contains("done"), "{debug}");
        }
        // Polling a completed one panics (and they all say they are done).
        let waker = futures::task::noop_waker();
        let polled_again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut every.try_acquire).poll(&mut Context::from_waker(&waker));
        }));
        assert!(polled_again.is_err(), "polling a completed future panics");
        let tried = every.tried.take().unwrap().unwrap();
        let acquired = every.acquired.take().unwrap().unwrap();
        assert_eq!((tried.permits(), acquired.permits()), (1, 2));
        every.renewed.take().unwrap().unwrap();
        every.released.take().unwrap().unwrap();
        assert_eq!(every.limited.take().unwrap().unwrap(), 7);
        drop(every);
        assert!(held.lease_expiry() >= before, "renewed in place");
        // Held now: `held`, `tried` and `acquired`'s two (`other` and the
        // limit's permit were given back).
        assert_eq!(zcard(&mut probe, "s:holders").await, 4);
        for p in [held, tried, acquired] {
            p.release().await.unwrap();
        }
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }
}
