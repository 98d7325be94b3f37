//! `awaitkit::redis::RateLimiter` against a real `redis-server` (started by
//! the test on a free loopback port), through redis-rs's tokio and smol
//! connections.
//!
//! Every grant carries its time on Redis's clock, so the strictness checks
//! count grants per window by Redis time, whatever the local clocks do.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

use crate::common;

use awaitkit::rate_limiter::Quota;
use awaitkit::redis::{Error, FailurePolicy, Grant, RateLimiter};
use common::redis_server::{RedisServer, connect, manager};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Redis's clock, in microseconds.
async fn redis_now(conn: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1_000_000 + us
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Grants sorted by Redis time: in every window of `period`, at most
/// `max` (stamp i and stamp i + max are at least a period apart).
#[track_caller]
fn assert_strict(grants: &[Grant], max: usize, period: Duration) {
    let mut stamps: Vec<u64> = grants.iter().map(|g| us(g.redis_time())).collect();
    stamps.sort_unstable();
    for (i, pair) in stamps.windows(max + 1).enumerate() {
        assert!(
            pair[max] - pair[0] >= us(period),
            "{} grants within {period:?} (grants {i}..={}: {:?})",
            max + 1,
            i + max,
            pair
        );
    }
}

// Auto traits: the limiter is shared across tasks and threads; its futures
// are Send (and Unpin on the default timer) so they can be spawned and
// stored.
const _: () = {
    fn send_sync<T: Send + Sync>() {}
    fn send_unpin<T: Send + Unpin>() {}
    let _ = send_sync::<RateLimiter<MultiplexedConnection>>;
    let _ = send_sync::<RateLimiter<ConnectionManager>>;
    let _ = send_unpin::<awaitkit::redis::Acquire<'static, MultiplexedConnection>>;
    let _ = send_unpin::<awaitkit::redis::TryAcquire<'static, MultiplexedConnection>>;
    let _ = send_unpin::<
        awaitkit::redis::Limit<'static, std::future::Ready<()>, MultiplexedConnection>,
    >;
    let _ = send_sync::<Error>;
};

/// An acquire polled until it sleeps for its booked slot (and Redis holds
/// the booking: the key's state changed), then returned still sleeping.
async fn book<'a>(
    limiter: &'a RateLimiter<MultiplexedConnection>,
    conn: &mut MultiplexedConnection,
    key: &str,
) -> std::pin::Pin<Box<awaitkit::redis::Acquire<'a, MultiplexedConnection>>> {
    async fn state(conn: &mut MultiplexedConnection, key: &str) -> String {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap();
        if kind == "zset" {
            let n: usize = redis::cmd("ZCARD")
                .arg(key)
                .query_async(conn)
                .await
                .unwrap();
            n.to_string()
        } else {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(conn)
                .await
                .unwrap()
                .unwrap_or_default()
        }
    }
    let start = state(conn, key).await;
    let mut waiting = Box::pin(limiter.acquire(key.split_once(':').unwrap().1));
    loop {
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "granted before its slot"
        );
        if format!("{waiting:?}").contains("sleeping") {
            assert_ne!(state(conn, key).await, start, "sleeping without a booking");
            return waiting;
        }
        smol::Timer::after(Duration::from_millis(1)).await;
    }
}

fn window(max: usize, period_ms: u64) -> Quota {
    Quota::window(max, Duration::from_millis(period_ms)).unwrap()
}

redis_matrix! {
    // Many concurrent acquires and a busy try_acquire loop on one key:
    // never more than max_calls in any window of the period, by Redis time.
    async fn window_never_over_max_in_any_window() {
        let server = RedisServer::start();
        let limiter = Arc::new(RateLimiter::new(connect(&server).await, "t:", window(3, 150)));
        let waits = (0..12).map(|_| limiter.acquire("k"));
        let mut grants: Vec<Grant> = awaitkit::gather(waits).await.into_iter().map(Result::unwrap).collect();
        assert!(grants.iter().filter(|g| g.waited() > Duration::ZERO).count() >= 9, "the quota was spent after 3");
        // try_acquire in a loop until 6 more: the refusals interleave.
        let mut refused = 0;
        while grants.len() < 18 {
            match limiter.try_acquire("k").await {
                Ok(g) => grants.push(g),
                Err(Error::RateLimited { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0);
        assert_strict(&grants, 3, Duration::from_millis(150));
    }

    // acquire_n: a batch takes n places in the window.
    async fn window_acquire_n_counts_every_call() {
        let server = RedisServer::start();
        let limiter = RateLimiter::new(connect(&server).await, "t:", window(4, 120));
        let mut grants = Vec::new();
        for n in [3, 2, 4, 1, 3] {
            let g = limiter.acquire_n("k", n).await.unwrap();
            grants.extend(std::iter::repeat_n(g, n));
        }
        assert_strict(&grants, 4, Duration::from_millis(120));
        assert!(matches!(
            limiter.try_acquire_n("k", 5).await,
            Err(Error::ExceedsQuota { requested: 5, max: 4 })
        ));
    }

    // GCRA: after the burst, grants are at least one interval apart.
    async fn gcra_spacing() {
        let server = RedisServer::start();
        let quota = Quota::gcra(50, Duration::from_secs(1), 2).unwrap(); // 20 ms apart
        let limiter = RateLimiter::new(connect(&server).await, "t:", quota);
        let mut stamps = Vec::new();
        for _ in 0..10 {
            stamps.push(us(limiter.acquire("k").await.unwrap().redis_time()));
        }
        for k in 2..stamps.len() {
            assert!(
                stamps[k] >= stamps[0] + (k as u64 - 1) * 20_000,
                "grant {k} came early: {stamps:?}"
            );
        }
        // A burst of 3 is more than the quota ever grants at once.
        assert!(matches!(limiter.acquire_n("k", 3).await, Err(Error::ExceedsQuota { requested: 3, max: 2 })));
    }

    // The retry-after is exact: the refusal's wait ends exactly when the
    // blocking grant leaves the window (window) or the arrival time comes
    // (GCRA), on Redis's clock.
    async fn exact_retry_after() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        let limiter = RateLimiter::new(conn.clone(), "w:", window(1, 60_000));
        let first = us(limiter.try_acquire("k").await.unwrap().redis_time());
        let before = redis_now(&mut conn).await;
        let err = limiter.try_acquire("k").await.unwrap_err();
        let after = redis_now(&mut conn).await;
        let free = first + 60_000_000;
        let wait = us(err.retry_after().expect("rate limited"));
        assert!(free - after <= wait && wait <= free - before, "{wait} not in [{}, {}]", free - after, free - before);

        let gcra = RateLimiter::new(conn.clone(), "g:", Quota::gcra(1, Duration::from_secs(10), 1).unwrap());
        let first = us(gcra.try_acquire("k").await.unwrap().redis_time());
        let before = redis_now(&mut conn).await;
        let wait = us(gcra.try_acquire("k").await.unwrap_err().retry_after().unwrap());
        let after = redis_now(&mut conn).await;
        let free = first + 10_000_000;
        assert!(free - after <= wait && wait <= free - before, "{wait} not in [{}, {}]", free - after, free - before);
    }

    // acquire books the earliest slot and returns no earlier than it (by
    // Redis's clock); later try_acquires see the booking (waiters first).
    async fn acquire_waits_for_its_booked_slot() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        for (prefix, quota) in [("w:", window(2, 100)), ("g:", Quota::gcra(20, Duration::from_secs(1), 2).unwrap())] {
            let limiter = RateLimiter::new(conn.clone(), prefix, quota);
            let mut grants = Vec::new();
            for _ in 0..6 {
                let g = limiter.acquire("k").await.unwrap();
                let now = redis_now(&mut conn).await;
                assert!(now >= us(g.redis_time()), "returned before its slot: {now} < {g:?}");
                grants.push(g);
            }
            // Sequential: each spent quota makes the next acquire book a
            // slot (and the one after may then find a place at once).
            assert!(grants[2..].iter().filter(|g| g.waited() > Duration::ZERO).count() >= 2, "{grants:?}");
            if quota.burst().is_none() {
                assert_strict(&grants, 2, Duration::from_millis(100));
            }
            // The last waiter's grant is still in the window / spacing.
            let err = limiter.try_acquire("k").await.unwrap_err();
            assert!(err.retry_after().unwrap() > Duration::ZERO, "{err}");
        }
    }

    // Dropping an acquire while it sleeps for its booked slot: the slot is
    // given back with the limiter's next check (the retry-after is exactly
    // the one before the booking), never handed out twice. GCRA gives back
    // only while nothing was booked after it.
    async fn cancel_mid_wait_gives_the_slot_back() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        for (prefix, quota) in [("w:", window(1, 60_000)), ("g:", Quota::gcra(1, Duration::from_secs(60), 1).unwrap())] {
            let limiter = RateLimiter::new(conn.clone(), prefix, quota);
            let key = format!("{prefix}k");
            let g1 = us(limiter.acquire("k").await.unwrap().redis_time());
            let free = g1 + 60_000_000;
            let a = book(&limiter, &mut conn, &key).await;
            drop(a);
            // The next check gives the slot back first: the wait is to the
            // end of g1's period again, not one period later.
            let before = redis_now(&mut conn).await;
            let wait = us(limiter.try_acquire("k").await.unwrap_err().retry_after().unwrap());
            let after = redis_now(&mut conn).await;
            assert!(free - after <= wait && wait <= free - before, "{prefix}: {wait} not in [{}, {}]", free - after, free - before);
            // Twice: a booking after the dropped one (GCRA keeps the
            // dropped one, as rolling it back would shift the later one).
            if prefix == "g:" {
                let a = book(&limiter, &mut conn, &key).await; // g1 + 60 s
                let b = book(&limiter, &mut conn, &key).await; // g1 + 120 s
                drop(a);
                let wait = us(limiter.try_acquire("k").await.unwrap_err().retry_after().unwrap());
                let now = redis_now(&mut conn).await;
                assert!(wait + now >= g1 + 180_000_000, "a slot with a booking after it was rolled back");
                drop(b);
                let wait = us(limiter.try_acquire("k").await.unwrap_err().retry_after().unwrap());
                let now = redis_now(&mut conn).await;
                assert!(wait + now < g1 + 180_000_000 && wait + now >= g1 + 120_000_000, "the last booking was not given back");
            }
        }
    }

    // Zero calls ask Redis nothing; too many fail before Redis (even a dead
    // one) is asked; Duration::MAX and usize::MAX quotas work.
    async fn edges_zero_too_many_and_huge() {
        let mut server = RedisServer::start();
        let conn = connect(&server).await;
        let forever = Quota::window(1, Duration::MAX).unwrap();
        let limiter = RateLimiter::new(conn.clone(), "t:", forever);
        limiter.try_acquire("k").await.unwrap();
        let wait = limiter.try_acquire("k").await.unwrap_err().retry_after().unwrap();
        assert!(wait > Duration::from_secs(100 * 365 * 24 * 3600), "{wait:?}");
        // A sleeper for a century, dropped.
        let mut century = Box::pin(limiter.acquire("k"));
        let _ = futures::poll!(century.as_mut());
        drop(century);
        let gcra = RateLimiter::new(conn.clone(), "g:", Quota::gcra(1, Duration::MAX, usize::MAX).unwrap());
        gcra.try_acquire("k").await.unwrap();
        // Its burst spans at most the scripts' range: one call at a time.
        assert!(matches!(
            gcra.acquire_n("k", 2).await,
            Err(Error::ExceedsQuota { requested: 2, max: 1 })
        ));
        let many = RateLimiter::new(conn.clone(), "m:", Quota::window(usize::MAX, Duration::from_secs(1)).unwrap());
        many.try_acquire_n("k", 3).await.unwrap();

        // No bound at all, and a zero bound (a call to Redis is never ready
        // at once: always a timeout, never a hang or a panic).
        let unbounded = RateLimiter::new(conn.clone(), "u:", window(5, 1000)).with_timeout(Duration::MAX);
        unbounded.try_acquire("k").await.unwrap();
        let zero = RateLimiter::new(conn.clone(), "z:", window(5, 1000)).with_timeout(Duration::ZERO);
        match zero.try_acquire("k").await {
            Ok(_) | Err(Error::Timeout { after: Duration::ZERO }) => {}
            Err(e) => panic!("{e}"),
        }

        server.kill();
        assert_eq!(limiter.try_acquire_n("k", 0).await.unwrap().waited(), Duration::ZERO);
        assert!(matches!(limiter.acquire_n("k", 2).await, Err(Error::ExceedsQuota { requested: 2, max: 1 })));
    }

    // Every key expires no earlier than its state matters, and not much
    // later: idle keys cost nothing.
    async fn keys_expire_when_idle() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        for (prefix, quota) in [("w:", window(2, 300)), ("g:", Quota::gcra(10, Duration::from_secs(1), 2).unwrap())] {
            let limiter = RateLimiter::new(conn.clone(), prefix, quota);
            let mut last = None;
            for _ in 0..4 {
                last = Some(limiter.acquire("k").await.unwrap());
            }
            let last = us(last.unwrap().redis_time());
            let pttl: i64 = redis::cmd("PTTL").arg(format!("{prefix}k")).query_async(&mut conn).await.unwrap();
            let now = redis_now(&mut conn).await;
            assert!(pttl > 0, "{prefix}: no expiry ({pttl})");
            // The state lives until the newest grant leaves the window
            // (window) or the next arrival time (GCRA: last + 100 ms).
            let needed = last + if prefix == "w:" { 300_000 } else { 100_000 };
            assert!(now + pttl as u64 * 1000 + 1000 >= needed, "{prefix}: expires too soon");
            assert!(now + (pttl as u64) * 1000 <= needed + 400_000, "{prefix}: lingers");
        }
    }

    // limit: fails closed by default (the future is not run), fails open
    // when asked; a granted limit runs the future.
    async fn limit_fail_closed_and_open() {
        let mut server = RedisServer::start();
        let limiter = RateLimiter::new(connect(&server).await, "t:", window(5, 1000))
            .with_timeout(Duration::from_millis(300));
        let ran = Arc::new(AtomicUsize::new(0));
        let run = |ran: Arc<AtomicUsize>| async move {
            ran.fetch_add(1, Ordering::SeqCst);
            7
        };
        assert_eq!(limiter.limit("k", run(ran.clone())).await.unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        server.kill();
        let err = limiter.limit("k", run(ran.clone())).await.unwrap_err();
        assert!(err.is_failure(), "{err}");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "fail closed ran the future");
        let out = limiter.limit("k", run(ran.clone())).on_failure(FailurePolicy::Open).await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        // Open is for failures only: the quota's own answer still holds.
        let _ = FailurePolicy::default();
    }

    // A panic in the limited future propagates, and `Limit` refuses to
    // poll it again; the limiter goes on.
    async fn limit_after_a_panic_refuses() {
        let server = RedisServer::start();
        let limiter = RateLimiter::new(connect(&server).await, "t:", window(5, 1000));
        let mut limited = Box::pin(limiter.limit("k", async { panic!("user code") }));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let first = loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| limited.as_mut().poll(&mut cx)));
            match r {
                Ok(std::task::Poll::Pending) => smol::Timer::after(Duration::from_millis(1)).await,
                Ok(std::task::Poll::Ready(_)) => panic!("completed"),
                Err(payload) => break payload,
            };
        };
        assert_eq!(first.downcast_ref::<&str>(), Some(&"user code"));
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| limited.as_mut().poll(&mut cx)));
        let msg = again.unwrap_err();
        assert!(msg.downcast_ref::<&str>().is_some_and(|m| m.contains("polled after a panic in its future")));
        drop(limited);
        limiter.try_acquire("k").await.unwrap();
    }

    // A killed Redis: an error (not a hang, not a panic) from every
    // operation, and a paused one (SIGSTOP): Timeout.
    async fn killed_and_paused_redis_answer_with_errors() {
        let mut server = RedisServer::start();
        let limiter = RateLimiter::new(connect(&server).await, "t:", window(5, 1000))
            .with_timeout(Duration::from_millis(200));
        limiter.try_acquire("k").await.unwrap();
        server.pause();
        let err = limiter.try_acquire("k").await.unwrap_err();
        assert!(matches!(err, Error::Timeout { after } if after == Duration::from_millis(200)), "{err}");
        let err = limiter.acquire("k").await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        server.resume();
        // The multiplexed connection catches up: the next call is served.
        limiter.try_acquire("k").await.unwrap();
        server.kill();
        for _ in 0..3 {
            assert!(limiter.try_acquire("k").await.unwrap_err().is_failure());
            assert!(limiter.acquire("k").await.unwrap_err().is_failure());
        }
    }

    // A restarted Redis has no script cache: the limiter answers errors
    // while it is down, then reloads the script (NOSCRIPT -> EVAL) and
    // recovers, through a reconnecting ConnectionManager.
    async fn restarted_redis_reloads_the_script() {
        let mut server = RedisServer::start();
        let limiter = RateLimiter::new(manager(&server).await, "t:", window(2, 100))
            .with_timeout(Duration::from_millis(500));
        limiter.acquire("k").await.unwrap();
        server.kill();
        assert!(limiter.try_acquire("k").await.unwrap_err().is_failure());
        server.restart();
        let mut probe = connect(&server).await;
        let sha = limiter.script_sha().to_owned();
        let cached: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut probe).await.unwrap();
        assert_eq!(cached, [false]);
        let mut grants = Vec::new();
        let mut failures = 0;
        while grants.len() < 6 {
            match limiter.acquire("k").await {
                Ok(g) => grants.push(g),
                Err(e) if e.is_failure() && failures < 200 => {
                    failures += 1;
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("no recovery: {e}"),
            }
        }
        let cached: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut probe).await.unwrap();
        assert_eq!(cached, [true], "EVAL cached the script again");
        assert_strict(&grants, 2, Duration::from_millis(100));
    }

    // One key under a window and a GCRA quota: a clear Redis error
    // (WRONGTYPE), not a panic and not a wrong count.
    async fn one_key_two_algorithms_is_an_error() {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let w = RateLimiter::new(conn.clone(), "t:", window(2, 1000));
        let g = RateLimiter::new(conn.clone(), "t:", Quota::gcra(2, Duration::from_secs(1), 1).unwrap());
        w.try_acquire("k").await.unwrap();
        let err = g.try_acquire("k").await.unwrap_err();
        assert!(matches!(&err, Error::Redis(e) if e.to_string().contains("WRONGTYPE")), "{err}");
        w.try_acquire("k").await.unwrap();
    }

    // SCRIPT FLUSH under a live connection: the next check reloads.
    async fn script_flush_recovers() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        let limiter = RateLimiter::new(conn.clone(), "t:", window(100, 1000));
        limiter.try_acquire("k").await.unwrap();
        let sha = limiter.script_sha().to_owned();
        for _ in 0..3 {
            let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
            let cached: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut conn).await.unwrap();
            assert_eq!(cached, [false]);
            limiter.try_acquire("k").await.unwrap();
            let cached: Vec<bool> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query_async(&mut conn).await.unwrap();
            assert_eq!(cached, [true]);
        }
    }
}
