//! Adversarial cases for `awaitkit::redis::RateLimiter` against a real
//! `redis-server`: the edges of the scripts' exact range and the cost of one
//! call, each through tokio (current-thread and multi-thread) and smol.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

use crate::common;

use awaitkit::Timer;
use awaitkit::rate_limiter::Quota;
use awaitkit::redis::{Error, RateLimiter};
use awaitkit::time::DefaultTimer;
use common::redis_server::{RedisServer, connect};
use redis::aio::MultiplexedConnection;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// 2^53: the first whole number a Lua (double) number cannot follow by one.
const EXACT: u64 = 1 << 53;
/// The longest period the scripts compute with (2^52 us).
const SPAN: u64 = 1 << 52;

/// The scores of a window key, ascending.
async fn stamps(conn: &mut MultiplexedConnection, key: &str) -> Vec<u64> {
    let raw: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .unwrap();
    raw.iter().map(|(_, s)| s.parse::<u64>().unwrap()).collect()
}

/// A timer that caps every sleep at 2 ms, as a backend that caps long
/// sleeps does: the `Timer` contract lets a sleep complete before its
/// deadline, and awaitkit must check the clock and sleep again.
#[derive(Clone, Copy, Debug, Default)]
struct CappedTimer;

const CAP: Duration = Duration::from_millis(2);

impl Timer for CappedTimer {
    type Sleep = Pin<Box<<DefaultTimer as Timer>::Sleep>>;

    fn now(&self) -> Instant {
        DefaultTimer.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        Box::pin(DefaultTimer.sleep_until(deadline.min(Instant::now() + CAP)))
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        DefaultTimer.reset(sleep.get_mut().as_mut(), deadline.min(Instant::now() + CAP));
    }
}

redis_matrix! {
    // A booked slot is used no earlier than its time on Redis's clock, even
    // on a timer whose sleeps complete early (allowed by the `Timer`
    // contract: a capped backend). The acquire used to take the first
    // completion of its sleep as the slot's time: here 2 ms into a 300 ms
    // wait, a grant inside the window of the one before it.
    async fn acquire_on_an_early_timer_waits_for_its_slot() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        for quota in [
            Quota::window(1, Duration::from_millis(300)).unwrap(),
            Quota::gcra(1, Duration::from_millis(300), 1).unwrap(),
        ] {
            let limiter = RateLimiter::new(conn.clone(), "t:", quota).with_timer(CappedTimer);
            let key = format!("{quota:?}");
            let first = limiter.acquire(&key).await.unwrap();
            let second = limiter.acquire(&key).await.unwrap();
            let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let redis_now = Duration::from_micros(s * 1_000_000 + us);
            assert!(second.waited() > Duration::ZERO, "{quota:?}: not booked");
            assert!(
                second.redis_time() >= first.redis_time() + Duration::from_millis(300),
                "{quota:?}: slots too close"
            );
            assert!(
                redis_now >= second.redis_time(),
                "{quota:?}: granted {:?} before its slot (Redis time)",
                second.redis_time() - redis_now
            );
        }
    }

    // A strict window stores one sorted-set member per call unit, all added
    // by one script run: `acquire_n` of a huge `n` (a quota of usize::MAX
    // allows it) made Redis loop for hours (no other client served: the
    // whole fleet's Redis wedged, `SCRIPT KILL` refused once it wrote).
    // One call's work must stay bounded: refused before Redis is asked.
    async fn window_huge_n_is_refused_before_redis() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        let quota = Quota::window(usize::MAX, Duration::from_secs(1)).unwrap();
        let limiter = RateLimiter::new(conn.clone(), "t:", quota)
            .with_timeout(Duration::from_millis(100));
        for n in [1usize << 32, usize::MAX] {
            match limiter.try_acquire_n("k", n).await {
                Err(Error::ExceedsQuota { requested, max }) => {
                    assert_eq!(requested, n);
                    assert!(max < n);
                }
                other => panic!("acquire_n({n}) on a usize::MAX window: {other:?}"),
            }
            match limiter.acquire_n("k", n).await {
                Err(Error::ExceedsQuota { requested, .. }) => assert_eq!(requested, n),
                other => panic!("acquire_n({n}) on a usize::MAX window: {other:?}"),
            }
        }
        // Redis is free, nothing was written, and the limit is usable.
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
        assert!(stamps(&mut conn, "t:k").await.is_empty());
        let max = awaitkit::redis::MAX_WINDOW_AT_ONCE;
        limiter.try_acquire_n("k", max).await.unwrap();
        assert_eq!(stamps(&mut conn, "t:k").await.len(), max);
    }

    // Bookings chain a period apart: the next booking after a stamp just
    // above 2^52 falls just above 2^53, where doubles (Lua's numbers and
    // Redis's scores) hold only even numbers. 2^52 + 1 + 2^52 rounds down
    // to 2^53: a stamp 1 us less than a period after the previous one (two
    // grants in one window of a 1-call quota). Beyond the exact range the
    // limiter must refuse to book, not round.
    async fn window_booking_past_2_pow_53_is_refused_not_rounded() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        let quota = Quota::window(1, Duration::from_micros(SPAN)).unwrap();
        let limiter = RateLimiter::new(conn.clone(), "t:", quota);
        // What an earlier booking a little over 2^52 us (far ahead) left.
        let _: () = redis::cmd("ZADD")
            .arg("t:k")
            .arg(SPAN + 1)
            .arg("earlier:1")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut waiting = Box::pin(limiter.acquire("k"));
        let out = loop {
            match futures::poll!(waiting.as_mut()) {
                std::task::Poll::Ready(out) => break Some(out),
                std::task::Poll::Pending if format!("{waiting:?}").contains("sleeping") => break None,
                std::task::Poll::Pending => {
                    smol::Timer::after(Duration::from_millis(1)).await;
                }
            }
        };
        let booked = stamps(&mut conn, "t:k").await;
        assert!(
            booked.windows(2).all(|w| w[1] - w[0] >= SPAN),
            "two stamps within one period: {booked:?}"
        );
        assert!(booked.iter().all(|&s| s <= EXACT), "{booked:?}");
        match out {
            Some(Err(Error::Script(msg))) => assert!(msg.contains("2^53"), "{msg}"),
            other => panic!("a booking past 2^53 us: {other:?}"),
        }
        std::mem::forget(waiting);
    }

    // GCRA: the arrival time a little under 2^53 (far-ahead bookings):
    // adding the span rounds; the script must refuse instead.
    async fn gcra_booking_past_2_pow_53_is_refused_not_rounded() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        // One call per 2^52 us, burst 1: interval 2^52.
        let quota = Quota::gcra(1, Duration::from_micros(SPAN), 1).unwrap();
        let limiter = RateLimiter::new(conn.clone(), "t:", quota);
        let tat = SPAN + 1; // what a far-ahead booking left
        let _: () = redis::cmd("SET")
            .arg("t:k")
            .arg(tat)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut waiting = Box::pin(limiter.acquire("k"));
        let out = loop {
            match futures::poll!(waiting.as_mut()) {
                std::task::Poll::Ready(out) => break Some(out),
                std::task::Poll::Pending if format!("{waiting:?}").contains("sleeping") => break None,
                std::task::Poll::Pending => {
                    smol::Timer::after(Duration::from_millis(1)).await;
                }
            }
        };
        let stored: String = redis::cmd("GET").arg("t:k").query_async(&mut conn).await.unwrap();
        assert_eq!(stored, tat.to_string(), "the arrival time moved past the exact range");
        match out {
            Some(Err(Error::Script(msg))) => assert!(msg.contains("2^53"), "{msg}"),
            other => panic!("a booking past 2^53 us: {other:?}"),
        }
        std::mem::forget(waiting);
    }

    // A key of the user's under the prefix that holds no arrival time (a
    // word, NaN, infinity, a fraction, a negative number) is an error for
    // GCRA, and the value stays: the script used to read it as "no state",
    // grant, and overwrite the user's data (or store "nan").
    async fn gcra_foreign_value_is_an_error_not_overwritten() {
        let server = RedisServer::start();
        let mut conn = connect(&server).await;
        let quota = Quota::gcra(10, Duration::from_secs(1), 2).unwrap();
        let limiter = RateLimiter::new(conn.clone(), "t:", quota);
        for value in ["hello", "nan", "inf", "-inf", "12.5", "-3", ""] {
            let _: () = redis::cmd("SET").arg("t:k").arg(value).query_async(&mut conn).await.unwrap();
            for reserve in [false, true] {
                let out = if reserve {
                    limiter.acquire("k").await
                } else {
                    limiter.try_acquire("k").await
                };
                assert!(
                    matches!(out, Err(Error::Script(_) | Error::Redis(_))),
                    "{value:?}: {out:?}"
                );
                let kept: String = redis::cmd("GET").arg("t:k").query_async(&mut conn).await.unwrap();
                assert_eq!(kept, value);
            }
        }
        // A window key holding a string: Redis's WRONGTYPE, the value kept.
        let window = RateLimiter::new(conn.clone(), "t:", Quota::window(3, Duration::from_secs(1)).unwrap());
        assert!(matches!(window.try_acquire("k").await, Err(Error::Redis(_))));
        // And a key the limiter wrote works as before.
        limiter.try_acquire("fresh").await.unwrap();
    }

    // Three limiters (three connections, as three processes would have)
    // on one window key: acquire_n of mixed n, a third of them dropped
    // while they sleep (their slots given back by later checks, racing
    // new bookings from the other limiters), interleaved with try_acquire.
    // Every grant that was handed out, counted n times, by Redis time: never
    // more than max_calls in a window of the period.
    async fn window_mixed_n_with_give_backs_stays_strict() {
        let server = RedisServer::start();
        let quota = Quota::window(5, Duration::from_millis(60)).unwrap();
        let mut limiters = Vec::new();
        for _ in 0..3 {
            limiters.push(RateLimiter::new(connect(&server).await, "t:", quota));
        }
        let calls = (0..36usize).map(|i| {
            let limiter = &limiters[i % 3];
            let n = 1 + (i * 7) % 5;
            async move {
                let mut grants = Vec::new();
                for round in 0..3usize {
                    let cancel_after = Duration::from_millis(((i + round) % 4) as u64 * 25);
                    let out = if (i + round) % 3 == 0 {
                        match awaitkit::timeout(cancel_after, limiter.acquire_n("k", n)).await {
                            Ok(out) => out.map(Some),
                            Err(_) => Ok(None), // dropped while asking or sleeping
                        }
                    } else if (i + round) % 5 == 1 {
                        match limiter.try_acquire_n("k", n).await {
                            Err(Error::RateLimited { .. }) => Ok(None),
                            out => out.map(Some),
                        }
                    } else {
                        limiter.acquire_n("k", n).await.map(Some)
                    };
                    if let Some(g) = out.unwrap() {
                        grants.extend(std::iter::repeat_n(g.redis_time(), n));
                    }
                }
                grants
            }
        });
        let mut stamps: Vec<Duration> = awaitkit::gather(calls).await.into_iter().flatten().collect();
        stamps.sort_unstable();
        assert!(stamps.len() > 60, "{} grants", stamps.len());
        for w in stamps.windows(6) {
            assert!(w[5] - w[0] >= Duration::from_millis(60), "6 grants within 60 ms: {w:?}");
        }
    }
}
