#![cfg(feature = "test-util")]
//! A keyed acquire takes nothing until its first poll, and a grant that is
//! immediate there leaves its key compact (issue 18, review defect 1): no
//! full limiter is built (the timer is cloned only to build one), nothing
//! is reserved against the bound by a future that is not polled, dropped
//! or forgotten, FIFO order is the order of first polls, and the future
//! works after the limiter is gone.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedAcquire, KeyedAcquireN, KeyedRateLimiter, Timer};
use common::CountingWaker;
use std::marker::PhantomPinned;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

use common::poll_once as poll;

/// The manual clock, counting its clones: a keyed limiter clones its timer
/// only to build a key's full limiter (a promotion).
#[derive(Debug)]
struct Counted(ManualClock, Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.1.fetch_add(1, Ordering::SeqCst);
        Counted(self.0.clone(), self.1.clone())
    }
}

impl Timer for Counted {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }

    fn sleep_until_shared(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until_shared(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// A limiter on a counted manual clock, and its clone count from now on.
fn counted(
    quota: Quota,
) -> (
    KeyedRateLimiter<u32, Counted>,
    ManualClock,
    Arc<AtomicUsize>,
) {
    let clock = ManualClock::new();
    let clones = Arc::new(AtomicUsize::new(0));
    let limiter = KeyedRateLimiter::with_quota(quota)
        .with_timer(Counted(clock.clone(), clones.clone()))
        .with_max_keys(4);
    clones.store(0, Ordering::SeqCst);
    (limiter, clock, clones)
}

fn quotas() -> [Quota; 2] {
    [
        Quota::window(2, ms(100)).unwrap(),
        Quota::gcra(2, ms(100), 2).unwrap(),
    ]
}

#[test]
fn the_futures_are_unpin_send_and_sync() {
    fn unpin_send_sync<F: Unpin + Send + Sync>() {}
    fn unpin<F: Unpin>() {}
    unpin_send_sync::<KeyedAcquire<String>>();
    unpin_send_sync::<KeyedAcquire<&'static str, ManualClock>>();
    unpin_send_sync::<KeyedAcquireN<u64>>();
    unpin_send_sync::<KeyedAcquireN<(u32, String), ManualClock>>();
    // Whatever the key: it is never pinned.
    unpin::<KeyedAcquire<PhantomPinned>>();
    unpin::<KeyedAcquireN<PhantomPinned>>();
}

#[test]
fn a_grant_at_the_first_poll_builds_no_limiter() {
    for quota in quotas() {
        let (limiter, clock, clones) = counted(quota);
        let waker = CountingWaker::new();
        // A new key, then a known one: granted in place.
        for _ in 0..2 {
            let mut acquire = limiter.acquire(1);
            assert_eq!(poll(&mut acquire, &waker), Poll::Ready(Ok(())));
        }
        assert_eq!(clones.load(Ordering::SeqCst), 0, "{quota:?}: promoted");
        assert_eq!(limiter.stats().waiting_keys, 0);
        // The quota is spent: the next acquire promotes the key and waits.
        let mut waiting = limiter.acquire(1);
        assert!(poll(&mut waiting, &waker).is_pending());
        assert_eq!(clones.load(Ordering::SeqCst), 1, "{quota:?}");
        assert_eq!(limiter.stats().waiting_keys, 1);
        assert!(limiter.try_acquire(1).is_err(), "a check never passes it");
        clock.advance(ms(100));
        assert_eq!(poll(&mut waiting, &waker), Poll::Ready(Ok(())));
        drop(waiting);
        // Nobody uses the key's limiter: the next acquire demotes the key,
        // and is granted in the compact form.
        let mut again = limiter.acquire(1);
        assert_eq!(poll(&mut again, &waker), Poll::Ready(Ok(())));
        assert_eq!(clones.load(Ordering::SeqCst), 1, "{quota:?}");
        assert_eq!(limiter.len(), 1);
    }
}

#[test]
fn an_unpolled_acquire_takes_nothing_dropped_or_forgotten() {
    for quota in quotas() {
        let (limiter, _clock, clones) = counted(quota);
        // Made and dropped, made and forgotten: of more keys than the
        // bound, and of the same key more often than its quota.
        for key in 0..16 {
            drop(limiter.acquire(key));
            common::forget_reachably(limiter.acquire(key));
            common::forget_reachably(limiter.acquire_n(7, 2));
        }
        assert_eq!(limiter.len(), 0, "{quota:?}: keys tracked");
        assert_eq!(clones.load(Ordering::SeqCst), 0);
        let stats = limiter.stats();
        assert_eq!((stats.keys, stats.refusals), (0, 0));
        // Every key has its whole quota, and the bound its whole room.
        for key in [7, 1, 2, 3] {
            assert_eq!(
                limiter.try_acquire_n(key, 2),
                Ok(()),
                "{quota:?}: key {key}"
            );
        }
        assert_eq!(
            limiter.try_acquire(4),
            Err(RateLimitError::TooManyKeys { max_keys: 4 })
        );
    }
}

#[test]
fn refusals_come_at_the_first_poll() {
    let (limiter, clock, _) = counted(Quota::window(2, ms(100)).unwrap());
    let waker = CountingWaker::new();
    let mut too_many = limiter.acquire_n(1, 3);
    let mut new_key = limiter.acquire(9);
    for key in 0..4 {
        limiter.try_acquire(key).unwrap();
    }
    assert_eq!(
        poll(&mut too_many, &waker),
        Poll::Ready(Err(RateLimitError::ExceedsQuota {
            requested: 3,
            max: 2
        }))
    );
    assert_eq!(
        poll(&mut new_key, &waker),
        Poll::Ready(Err(RateLimitError::TooManyKeys { max_keys: 4 }))
    );
    // Made while the limiter was full, polled once a key went idle.
    let mut later = limiter.acquire(9);
    clock.advance(ms(100));
    assert_eq!(limiter.evict_idle(), 4);
    assert_eq!(poll(&mut later, &waker), Poll::Ready(Ok(())));
}

#[test]
fn fifo_is_the_order_of_first_polls() {
    for quota in [
        Quota::window(1, ms(100)).unwrap(),
        Quota::gcra(1, ms(100), 1).unwrap(),
    ] {
        let (limiter, clock, _) = counted(quota);
        let waker = CountingWaker::new();
        let mut made_first = limiter.acquire(1);
        let mut polled_first = limiter.acquire(1);
        assert_eq!(poll(&mut polled_first, &waker), Poll::Ready(Ok(())));
        let mut second = limiter.acquire(1);
        assert!(poll(&mut second, &waker).is_pending());
        assert!(poll(&mut made_first, &waker).is_pending(), "{quota:?}");
        clock.advance(ms(100));
        assert_eq!(poll(&mut made_first, &waker), Poll::Pending);
        assert_eq!(poll(&mut second, &waker), Poll::Ready(Ok(())));
        clock.advance(ms(100));
        assert_eq!(poll(&mut made_first, &waker), Poll::Ready(Ok(())));
    }
}

#[test]
fn an_acquire_outlives_its_limiter() {
    let clock = ManualClock::new();
    let limiter = KeyedRateLimiter::new(1, ms(100)).with_timer(clock.clone());
    let waker = CountingWaker::new();
    let mut unpolled = limiter.acquire("a");
    limiter.try_acquire("b").unwrap();
    let mut waiting = limiter.acquire("b");
    assert!(poll(&mut waiting, &waker).is_pending());
    drop(limiter);
    assert_eq!(poll(&mut unpolled, &waker), Poll::Ready(Ok(())));
    clock.advance(ms(100));
    assert_eq!(poll(&mut waiting, &waker), Poll::Ready(Ok(())));
}
