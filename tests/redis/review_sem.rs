//! Adversarial review of `awaitkit::redis::Semaphore` against a real
//! `redis-server`: leases re-granted under an old holder, mixed
//! `acquire_many` sizes, dead tickets at the head of the queue, `limit`
//! with a renewal hanging past the lease or a panicking future, foreign
//! values under the semaphore's keys, zero and huge limits.
#![cfg(all(feature = "redis-tokio", feature = "redis-smol"))]

use crate::common;

use awaitkit::redis::{Error, FailurePolicy, Semaphore};
use common::redis_server::{RedisServer, connect, zcard};
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

async fn sleep(ms: u64) {
    smol::Timer::after(Duration::from_millis(ms)).await;
}

fn sem(conn: MultiplexedConnection, cap: usize, lease_ms: u64) -> Semaphore<MultiplexedConnection> {
    Semaphore::new(conn, "s", cap, Duration::from_millis(lease_ms))
        .with_poll_interval(Duration::from_millis(2))
}

redis_matrix! {
    // A permit whose lease ran out and whose slot was granted to another
    // handle: renewing it is refused (LeaseLost, nothing resurrected) and
    // releasing it does not release the new holder's permit.
    async fn expired_permit_neither_renews_nor_releases_the_new_holder() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 150);
        let other = sem(connect(&server).await, 1, 60_000);
        let third = sem(connect(&server).await, 1, 60_000);
        // renew()
        let mut old = s.acquire().await.unwrap();
        sleep(250).await;
        let new = other.try_acquire().await.unwrap();
        assert!(matches!(old.renew().await, Err(Error::LeaseLost)));
        assert_eq!(zcard(&mut probe, "s:holders").await, 1, "renew resurrected an expired permit");
        assert!(matches!(third.try_acquire().await, Err(Error::NoPermits)));
        new.release().await.unwrap();
        // release() (still believed held: no renewal told it otherwise)
        let old = s.acquire().await.unwrap();
        sleep(250).await;
        let new = other.try_acquire().await.unwrap();
        old.release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 1, "release removed the new holder");
        assert!(matches!(third.try_acquire().await, Err(Error::NoPermits)));
        // drop() of an expired permit, given back by the next call
        new.release().await.unwrap();
        let old = s.acquire().await.unwrap();
        sleep(250).await;
        let new = other.try_acquire().await.unwrap();
        drop(old);
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        new.release().await.unwrap();
    }

    // Mixed sizes (1, 2, 3 and the whole capacity) from three handles,
    // with try_acquire_many racing them: never more than the capacity held
    // (counted here, weighted by size), the large requests are not starved
    // (every acquire completes), and everything is back at the end.
    async fn mixed_acquire_many_never_exceeds_capacity() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let handles = [
            sem(connect(&server).await, 5, 60_000),
            sem(connect(&server).await, 5, 60_000),
            sem(connect(&server).await, 5, 60_000),
        ];
        let (live, max, tries) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
        let (live, max, tries) = (&live, &max, &tries);
        let mut tasks = Vec::new();
        for (i, n) in [1, 5, 2, 3, 1, 5, 2, 1, 3, 5, 1, 2].into_iter().enumerate() {
            let s = &handles[i % 3];
            tasks.push(
                async move {
                    let p = s.acquire_many(n).await.unwrap();
                    let now = live.fetch_add(n, Ordering::SeqCst) + n;
                    max.fetch_max(now, Ordering::SeqCst);
                    sleep(5).await;
                    live.fetch_sub(n, Ordering::SeqCst);
                    p.release().await.unwrap();
                }
                .boxed_local(),
            );
        }
        for (k, s) in handles.iter().enumerate() {
            tasks.push(
                async move {
                    for round in 0..20 {
                        let n = 1 + (round + k) % 3;
                        if let Ok(p) = s.try_acquire_many(n).await {
                            tries.fetch_add(1, Ordering::SeqCst);
                            let now = live.fetch_add(n, Ordering::SeqCst) + n;
                            max.fetch_max(now, Ordering::SeqCst);
                            sleep(3).await;
                            live.fetch_sub(n, Ordering::SeqCst);
                            p.release().await.unwrap();
                        }
                        sleep(2).await;
                    }
                }
                .boxed_local(),
            );
        }
        futures::future::join_all(tasks).await;
        assert!(max.load(Ordering::SeqCst) <= 5, "{} held at once", max.load(Ordering::SeqCst));
        assert_eq!(max.load(Ordering::SeqCst), 5, "the capacity was used");
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        assert_eq!(zcard(&mut probe, "s:beats").await, 0);
    }

    // A waiter that stops polling (a dead process: its ticket is never
    // given back) holds the head of the queue: try_acquire is refused
    // (the permit is owed to it), and a later waiter is granted once the
    // dead ticket's heartbeat expires; nothing wedges.
    async fn dead_ticket_at_head_expires() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let holder = sem(connect(&server).await, 1, 60_000);
        let late = sem(connect(&server).await, 1, 60_000);
        let held = holder.acquire().await.unwrap();
        let mut dead = Box::pin(s.acquire());
        let waker = common::CountingWaker::new();
        assert!(dead.as_mut().poll(&mut waker.context()).is_pending());
        // Wait until the ticket is in Redis, then the "process" dies.
        while zcard(&mut probe, "s:queue").await == 0 {
            assert!(dead.as_mut().poll(&mut waker.context()).is_pending());
            sleep(1).await;
        }
        std::mem::forget(dead);
        held.release().await.unwrap();
        assert!(matches!(late.try_acquire().await, Err(Error::NoPermits)), "took a permit owed to a waiter");
        let p = late.acquire().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        p.release().await.unwrap();
    }

    // A slow waiter (not polled for longer than its ticket's lifetime)
    // loses its place to a later one, but is queued again by its next
    // call and granted in turn: it does not wedge.
    async fn slow_waiter_requeued_not_wedged() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let slow = sem(connect(&server).await, 1, 60_000).with_timeout(Duration::from_millis(100));
        let holder = sem(connect(&server).await, 1, 60_000);
        let other = sem(connect(&server).await, 1, 60_000);
        let held = holder.acquire().await.unwrap();
        let mut waiting = Box::pin(slow.acquire());
        let waker = common::CountingWaker::new();
        while zcard(&mut probe, "s:queue").await == 0 {
            assert!(waiting.as_mut().poll(&mut waker.context()).is_pending());
            sleep(1).await;
        }
        sleep(400).await; // the ticket's lifetime is 106 ms
        futures::future::join(
            async {
                let p = other.acquire().await.unwrap();
                sleep(20).await;
                p.release().await.unwrap();
            },
            async {
                sleep(30).await;
                held.release().await.unwrap();
                let p = waiting.await.unwrap();
                p.release().await.unwrap();
            },
        )
        .await;
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit() whose renewal hangs (Redis paused) across the lease's end:
    // the future is cancelled once the lease may have run out by the local
    // timer, not when the hanging renewal times out (here 3 s later),
    // because another process may hold the permit by then.
    async fn limit_cancels_at_lease_end_while_a_renewal_hangs() {
        let server = RedisServer::start();
        // No response timeout of redis-rs's own (its default, 500 ms, would
        // end the hanging renewal first): awaitkit's timeout governs.
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .unwrap();
        let s = sem(conn, 1, 600).with_timeout(Duration::from_secs(3));
        let start = Instant::now();
        let late = AtomicUsize::new(0);
        let err = s
            .limit(async {
                server.pause();
                loop {
                    sleep(10).await;
                    // Generous margin over the lease: the inner future must
                    // not be polled once the lease may have ended.
                    if start.elapsed() >= Duration::from_millis(750) {
                        late.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            .await
            .unwrap_err();
        server.resume();
        assert!(matches!(err, Error::LeaseLost), "{err}");
        assert_eq!(late.load(Ordering::SeqCst), 0, "the future ran on after its lease may have ended");
    }

    // Redis paused across a renewal, then back before the lease ends:
    // the renewal in flight is answered, and limit runs its future to the
    // end (failing closed does not mean failing early).
    async fn limit_survives_a_pause_shorter_than_the_lease() {
        let server = RedisServer::start();
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .unwrap();
        let s = sem(conn, 1, 1_200).with_timeout(Duration::from_secs(5));
        let other = sem(connect(&server).await, 1, 1_200);
        let out = s
            .limit(async {
                server.pause();
                sleep(550).await; // the renewal at 400 ms waits
                server.resume();
                sleep(1_500).await;
                matches!(other.try_acquire().await, Err(Error::NoPermits))
            })
            .await
            .unwrap();
        assert!(out, "the permit was lost across the pause");
        other.try_acquire().await.unwrap().release().await.unwrap();
    }

    // An acquire that timed out while Redis was paused is carried out
    // when Redis resumes (the command was sent): the grant the client
    // never saw is given back by the handle's next call, exactly once.
    async fn timed_out_grant_given_back() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000).with_timeout(Duration::from_millis(100));
        let other = sem(connect(&server).await, 1, 60_000);
        // Redis knows the script (else the buffered EVALSHA is NOSCRIPT).
        s.try_acquire().await.unwrap().release().await.unwrap();
        server.pause();
        assert!(matches!(s.try_acquire().await, Err(Error::Timeout { .. })));
        server.resume();
        // The grant nobody saw lands once Redis reads the buffered call.
        while zcard(&mut probe, "s:holders").await == 0 {
            sleep(1).await;
        }
        assert!(matches!(other.try_acquire().await, Err(Error::NoPermits)));
        let p = s.try_acquire().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 1);
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        p.release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit() whose future panics: the panic propagates, and the permit
    // is given back by the handle's next call (not held for the 60 s lease).
    async fn limit_panicking_future_gives_the_permit_back() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let out = AssertUnwindSafe(s.limit(async {
            sleep(1).await;
            panic!("user code");
        }))
        .catch_unwind()
        .await;
        assert!(out.is_err());
        s.try_acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
    }

    // limit() dropped after each of its polls, with a renewal due almost
    // at once (lease 30 ms): whatever it took is back at the next call.
    async fn limit_cancelled_at_every_poll() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 30);
        for polls in 1..=12 {
            {
                let mut limited = pin!(s.limit(sleep(1_000)));
                let mut n = 0;
                std::future::poll_fn(|cx| {
                    n += 1;
                    match limited.as_mut().poll(cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending if n >= polls => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
            }
            s.try_acquire().await.unwrap().release().await.unwrap();
            assert_eq!(zcard(&mut probe, "s:holders").await, 0, "{polls} polls");
            assert_eq!(zcard(&mut probe, "s:queue").await, 0, "{polls} polls");
        }
    }

    // Duration::MAX everywhere a duration is taken: a poll interval of
    // Duration::MAX is capped (it used to overflow computing the ticket's
    // lifetime: a panic in acquire), and a Duration::MAX timeout works.
    async fn duration_max_poll_interval_and_timeout() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = Semaphore::new(connect(&server).await, "s", 1, Duration::from_secs(60))
            .with_poll_interval(Duration::MAX)
            .with_timeout(Duration::MAX);
        let p = s.acquire().await.unwrap();
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)));
        p.release().await.unwrap();
        assert_eq!(s.limit(async { 3 }).await.unwrap(), 3);
        assert_eq!(zcard(&mut probe, "s:holders").await, 0);
        assert!(s.poll_interval() <= Duration::from_secs(3600));
    }

    // release() dropped after each of its polls: the permit is given back
    // by the handle's next call, which is then granted at capacity 1.
    async fn release_cancelled_at_every_poll() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        for polls in 1..=4 {
            let p = s.acquire().await.unwrap();
            {
                let mut release = pin!(p.release());
                let mut n = 0;
                std::future::poll_fn(|cx| {
                    n += 1;
                    match release.as_mut().poll(cx) {
                        Poll::Ready(r) => {
                            r.unwrap();
                            Poll::Ready(())
                        }
                        Poll::Pending if n >= polls => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
            }
            s.try_acquire().await.unwrap().release().await.unwrap();
            assert_eq!(zcard(&mut probe, "s:holders").await, 0, "{polls} polls");
        }
    }

    // The lease taken away under a running limit (its members deleted:
    // the next renewal finds nothing): fail closed cancels the future with
    // LeaseLost; fail open runs it to the end.
    async fn lease_taken_away_closed_cancels_open_runs_on() {
        let server = RedisServer::start();
        let probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 300);
        let job = || {
            let mut probe = probe.clone();
            async move {
                let _: () = redis::cmd("DEL").arg("s:holders").query_async(&mut probe).await.unwrap();
                sleep(400).await;
                "ran"
            }
        };
        assert!(matches!(s.limit(job()).await, Err(Error::LeaseLost)));
        assert_eq!(s.limit_with(FailurePolicy::Open, job()).await.unwrap(), "ran");
        s.try_acquire().await.unwrap().release().await.unwrap();
    }

    // Foreign values under the semaphore's keys: errors, never panics.
    async fn foreign_values_are_errors() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 2, 60_000);
        let _: () = redis::cmd("SET").arg("s:holders").arg("x").query_async(&mut probe).await.unwrap();
        assert!(s.try_acquire().await.unwrap_err().is_failure());
        assert!(s.acquire().await.unwrap_err().is_failure());
        let _: () = redis::cmd("DEL").arg("s:holders").query_async(&mut probe).await.unwrap();
        let _: () = redis::cmd("ZADD").arg("s:queue").arg(0).arg("garbage").query_async(&mut probe).await.unwrap();
        let err = s.try_acquire().await.unwrap_err();
        assert!(err.is_failure(), "{err}");
        assert!(s.acquire().await.unwrap_err().is_failure());
        let _: () = redis::cmd("DEL").arg("s:queue").arg("s:beats").query_async(&mut probe).await.unwrap();
        s.acquire().await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
    }

    // A ticket queued without a heartbeat (its `beats` entry lost: the
    // key evicted under memory pressure, or deleted) can never be given
    // back and never expires by itself (every waiter refreshes the
    // queue's expiry): it is dead, and does not hold the permits up.
    async fn a_queued_ticket_without_a_heartbeat_is_dead() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let s = sem(connect(&server).await, 1, 60_000);
        let _: () = redis::cmd("ZADD").arg("s:queue").arg(0).arg("1/ghost").query_async(&mut probe).await.unwrap();
        s.try_acquire().await.expect("a dead ticket is owed nothing").release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
        // The same behind a live waiter, whose place is kept.
        let held = s.acquire().await.unwrap();
        let waiter = sem(connect(&server).await, 1, 60_000);
        let mut waiting = Box::pin(waiter.acquire());
        let waker = common::CountingWaker::new();
        while zcard(&mut probe, "s:queue").await == 0 {
            assert!(waiting.as_mut().poll(&mut waker.context()).is_pending());
            sleep(1).await;
        }
        let _: () = redis::cmd("ZADD").arg("s:queue").arg(0).arg("1/ghost").query_async(&mut probe).await.unwrap();
        held.release().await.unwrap();
        assert!(matches!(s.try_acquire().await, Err(Error::NoPermits)), "passed the live waiter");
        waiting.await.unwrap().release().await.unwrap();
        assert_eq!(zcard(&mut probe, "s:queue").await, 0);
    }

    // Zero and huge limits: capacity 0 refuses any permit (limit too,
    // even failing open), more than the capacity is an error not a wait,
    // zero permits are granted without Redis, and a Duration::MAX lease
    // works (held, renewed, released) without overflow.
    async fn zero_and_huge_limits() {
        let server = RedisServer::start();
        let mut probe = connect(&server).await;
        let zero = sem(connect(&server).await, 0, 1_000);
        assert!(matches!(zero.acquire().await, Err(Error::ExceedsCapacity { requested: 1, capacity: 0 })));
        assert!(matches!(zero.try_acquire().await, Err(Error::ExceedsCapacity { .. })));
        assert!(matches!(zero.limit_with(FailurePolicy::Open, async {}).await, Err(Error::ExceedsCapacity { .. })));
        let mut none = zero.acquire_many(0).await.unwrap();
        assert_eq!(none.permits(), 0);
        none.renew().await.unwrap();
        none.release().await.unwrap();
        let two = sem(connect(&server).await, 2, 1_000);
        assert!(matches!(two.acquire_many(3).await, Err(Error::ExceedsCapacity { requested: 3, capacity: 2 })));
        let huge = Semaphore::new(connect(&server).await, "h", 1, Duration::MAX);
        let mut p = huge.acquire().await.unwrap();
        p.renew().await.unwrap();
        assert!(matches!(huge.try_acquire().await, Err(Error::NoPermits)));
        p.release().await.unwrap();
        assert_eq!(huge.limit(async { 5 }).await.unwrap(), 5);
        assert_eq!(zcard(&mut probe, "h:holders").await, 0);
    }
}
