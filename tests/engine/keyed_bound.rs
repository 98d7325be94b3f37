#![cfg(feature = "test-util")]
//! `KeyedRateLimiter` with a key bound (`with_max_keys`), and its compact
//! keys: promotion to a full limiter for acquires, demotion when unused,
//! eviction of idle keys to make room, refusal (fail closed) otherwise.

use crate::common;

use awaitkit::KeyedRateLimiter;
use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use common::*;
use std::task::Poll;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn window(max: usize, period: Duration) -> Quota {
    Quota::window(max, period).unwrap()
}

fn refused(max_keys: usize) -> Result<(), RateLimitError> {
    Err(RateLimitError::TooManyKeys { max_keys })
}

guarded! {
    fn a_full_limiter_refuses_new_keys_and_serves_the_old_ones() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(2, SEC))
            .with_timer(clock.clone())
            .with_max_keys(3);
        for key in 0..3 {
            limiter.try_acquire(key).unwrap();
        }
        assert_eq!(limiter.try_acquire(3), refused(3));
        assert_eq!(limiter.try_acquire_n(4, 2), refused(3));
        // The keys tracked keep their exact quotas.
        assert_eq!(limiter.try_acquire(0), Ok(()));
        assert!(matches!(limiter.try_acquire(0), Err(RateLimitError::RateLimited { .. })));
        let stats = limiter.stats();
        assert_eq!((stats.keys, stats.refusals, stats.evictions), (3, 2, 0));
        assert_eq!(stats.max_keys, Some(3));
        assert_eq!(limiter.len(), 3);
        let e = RateLimitError::TooManyKeys { max_keys: 3 };
        assert_eq!(e.wait(), None);
        assert!(e.to_string().contains("maximum of 3 keys"), "{e}");
    }

    fn a_full_limiter_evicts_idle_keys_to_make_room() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(1, SEC))
            .with_timer(clock.clone())
            .with_max_keys(4);
        for key in 0..4 {
            limiter.try_acquire(key).unwrap();
        }
        assert_eq!(limiter.try_acquire(10), refused(4));
        clock.advance(SEC / 2);
        limiter.try_acquire(0).ok(); // key 0 stays busy: refused, its grant at 0
        clock.advance(SEC / 2);
        // Every grant of keys 0..4 left its window: they are idle, and a new
        // key evicts them.
        assert_eq!(limiter.try_acquire(10), Ok(()));
        assert!(limiter.len() <= 4);
        assert!(limiter.stats().evictions >= 1);
        // An evicted key is as fresh: exactly its quota.
        assert_eq!(limiter.try_acquire(1), Ok(()));
        assert!(limiter.try_acquire(1).is_err());
    }

    fn keys_with_waiters_are_never_evicted() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(1, SEC))
            .with_timer(clock.clone())
            .with_max_keys(2);
        limiter.try_acquire("a").unwrap();
        let w = CountingWaker::new();
        let mut waiting = limiter.acquire("a");
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!(limiter.stats().waiting_keys, 1);
        limiter.try_acquire("b").unwrap();
        clock.advance(SEC * 10);
        // "a"'s waiter was granted when the clock passed its time; "b" is
        // idle, "a" is held by its acquire.
        assert_eq!(poll_once(&mut waiting, &w), Poll::Ready(Ok(())));
        assert_eq!(limiter.try_acquire("c"), Ok(()));
        assert_eq!(limiter.len(), 2);
        // "a" is still there, with its grant.
        assert!(limiter.try_acquire("a").is_err());
    }

    fn an_acquired_key_goes_back_to_the_compact_form() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(2, SEC)).with_timer(clock.clone());
        let w = CountingWaker::new();
        limiter.try_acquire("k").unwrap();
        let mut first = limiter.acquire("k");
        assert_eq!(poll_once(&mut first, &w), Poll::Ready(Ok(())));
        let mut second = limiter.acquire("k");
        assert!(poll_once(&mut second, &w).is_pending());
        assert_eq!(limiter.stats().waiting_keys, 1);
        // No barging: the check fails while "k" has a waiter.
        assert!(limiter.try_acquire("k").is_err());
        clock.advance(SEC);
        assert_eq!(poll_once(&mut second, &w), Poll::Ready(Ok(())));
        drop((first, second));
        assert_eq!(limiter.stats().waiting_keys, 0);
        // The next check demotes the key, its log carried over: the two
        // grants at 0 have left the window, the acquire's at 1 s has not,
        // so exactly one more fits now.
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        assert!(limiter.try_acquire("k").is_err());
        clock.advance(SEC);
        assert_eq!(limiter.evict_idle(), 1);
        assert!(limiter.is_empty());
    }

    fn gcra_keys_carry_their_arrival_time_through_promotion() {
        let clock = ManualClock::new();
        let quota = Quota::gcra(10, SEC, 2).unwrap();
        let limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
        let w = CountingWaker::new();
        limiter.try_acquire_n(1, 2).unwrap();
        let mut a = limiter.acquire(1);
        assert!(poll_once(&mut a, &w).is_pending());
        clock.advance(SEC / 10);
        assert_eq!(poll_once(&mut a, &w), Poll::Ready(Ok(())));
        drop(a);
        // Back to compact: the next call is 100 ms after that grant.
        assert_eq!(
            limiter.try_acquire(1),
            Err(RateLimitError::RateLimited { wait: SEC / 10 })
        );
        clock.advance(SEC / 10);
        assert_eq!(limiter.try_acquire(1), Ok(()));
    }

    fn a_bounded_acquire_is_refused_as_a_value() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(1, SEC))
            .with_timer(clock.clone())
            .with_max_keys(1);
        let w = CountingWaker::new();
        limiter.try_acquire("a").unwrap();
        let mut b = limiter.acquire("b");
        assert_eq!(poll_once(&mut b, &w), Poll::Ready(refused(1)));
        let mut b2 = limiter.acquire_n("b", 1);
        assert_eq!(poll_once(&mut b2, &w), Poll::Ready(refused(1)));
        assert_eq!(limiter.stats().refusals, 2);
        clock.advance(SEC);
        let mut b3 = limiter.acquire("b");
        assert_eq!(poll_once(&mut b3, &w), Poll::Ready(Ok(())));
    }

    fn quota_changes_reach_compact_and_promoted_keys() {
        let clock = ManualClock::new();
        let quota = Quota::gcra(1, SEC, 1).unwrap();
        let limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
        let w = CountingWaker::new();
        limiter.try_acquire("compact").unwrap();
        limiter.try_acquire("promoted").unwrap();
        let mut waiting = limiter.acquire("promoted");
        assert!(poll_once(&mut waiting, &w).is_pending());
        // Twice the rate: what is owed is owed at the new rate.
        limiter.set_quota(Quota::gcra(2, SEC, 1).unwrap()).unwrap();
        assert_eq!(
            limiter.try_acquire("compact"),
            Err(RateLimitError::RateLimited { wait: SEC / 2 })
        );
        clock.advance(SEC / 2);
        assert_eq!(poll_once(&mut waiting, &w), Poll::Ready(Ok(())));
        assert_eq!(limiter.try_acquire("compact"), Ok(()));
    }
}

#[test]
#[should_panic(expected = "at least one key")]
fn a_bound_of_zero_is_rejected() {
    let _ = KeyedRateLimiter::<u8>::new(1, SEC).with_max_keys(0);
}

/// Four threads check and acquire (an acquire not granted at once is
/// dropped: a cancel) 32 keys of a limiter bounded at 16 keys, while the
/// main thread moves the clock one period between phases and sweeps: no key
/// ever gets more than its quota in a phase (a window of one period), the
/// bound holds, and refusals are `TooManyKeys` values only.
#[test]
fn threads_on_a_bounded_limiter_never_exceed_a_quota() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    const THREADS: usize = 4;
    const KEYS: usize = 32;
    const PHASES: usize = 20;
    let max_calls = 3;
    let clock = ManualClock::new();
    let limiter = Arc::new(
        KeyedRateLimiter::with_quota(window(max_calls, SEC))
            .with_timer(clock.clone())
            .with_max_keys(16),
    );
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let grants: Arc<Vec<AtomicU64>> =
        Arc::new((0..KEYS * PHASES).map(|_| AtomicU64::new(0)).collect());
    let refusals = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (limiter, barrier, grants, refusals) = (
                limiter.clone(),
                barrier.clone(),
                grants.clone(),
                refusals.clone(),
            );
            std::thread::spawn(move || {
                let w = CountingWaker::new();
                let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ t as u64;
                for phase in 0..PHASES {
                    barrier.wait();
                    for _ in 0..400 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let key = (seed % KEYS as u64) as usize;
                        let outcome = if seed & (1 << 40) == 0 {
                            limiter.try_acquire(key)
                        } else {
                            let mut acquire = limiter.acquire(key);
                            match poll_once(&mut acquire, &w) {
                                Poll::Ready(outcome) => outcome,
                                Poll::Pending => Err(RateLimitError::RateLimited { wait: SEC }),
                            }
                        };
                        match outcome {
                            Ok(()) => {
                                grants[phase * KEYS + key].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(RateLimitError::RateLimited { .. }) => {}
                            Err(RateLimitError::TooManyKeys { max_keys: 16 }) => {
                                refusals.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                        assert!(limiter.len() <= 16);
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for phase in 0..PHASES {
        barrier.wait();
        barrier.wait();
        assert!(limiter.len() <= 16);
        if phase % 3 == 0 {
            limiter.evict_idle();
        }
        clock.advance(SEC);
    }
    for t in threads {
        t.join().unwrap();
    }
    for (i, g) in grants.iter().enumerate() {
        let g = g.load(Ordering::Relaxed);
        assert!(
            g <= max_calls as u64,
            "key {} in phase {}: {g} grants",
            i % KEYS,
            i / KEYS
        );
    }
    let granted: u64 = grants.iter().map(|g| g.load(Ordering::Relaxed)).sum();
    assert!(granted > 0 && refusals.load(Ordering::Relaxed) > 0);
    assert_eq!(limiter.stats().refusals, refusals.load(Ordering::Relaxed));
}
