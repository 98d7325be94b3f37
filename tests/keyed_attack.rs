#![cfg(all(feature = "test-util", target_os = "linux"))]
//! An attack on a bounded `KeyedRateLimiter` (issue 18): 10⁶ distinct keys
//! within one period, as a scan or a botnet sends them, while a few
//! legitimate hot keys use the limiter.
//!
//! * The resident set (`/proc/self/statm`) grows by no more than the
//!   bound's budget (without the bound, the keys alone would take tens of
//!   MiB).
//! * Every refusal is an error value: `TooManyKeys` for a new key when the
//!   limiter is full, `RateLimited` for a key over its quota; nothing else.
//! * The hot keys get exactly their quota throughout: `max_calls` grants in
//!   the period, then refusals, then `max_calls` again in the next period.
//!
//! Then the same through `acquire`, with waiters on the hot keys: their
//! waiters are served exactly at the end of the period.
//!
//! One test per file (its own process): the resident set is not shared
//! with other tests running at the same time. `AWAITKIT_ATTACK_KEYS` sets
//! the number of attacking keys (default 10⁶).

#[macro_use]
mod common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedRateLimiter, Timer};
use common::*;
use std::task::Poll;
use std::time::Duration;

const PERIOD: Duration = Duration::from_secs(60);
const MAX_KEYS: usize = 10_000;
const HOT: [u64; 3] = [u64::MAX, u64::MAX - 1, u64::MAX - 2];
/// The budget: the bound's keys at a generous 1 KiB each (a key that was
/// acquired holds a whole limiter until its next check or sweep), plus
/// slack for the allocator and the test harness.
const BUDGET: u64 = MAX_KEYS as u64 * 1024 + (8 << 20);

fn attacking_keys() -> u64 {
    std::env::var("AWAITKIT_ATTACK_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Resident bytes of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn is_refusal(result: Result<(), RateLimitError>) -> bool {
    match result {
        Ok(()) => false,
        Err(RateLimitError::TooManyKeys { max_keys }) => {
            assert_eq!(max_keys, MAX_KEYS);
            true
        }
        Err(e) => panic!("an attacking key's first call failed with {e:?}"),
    }
}

/// Checks every hot key once; returns how many were granted.
fn check_hot(limiter: &KeyedRateLimiter<u64, ManualClock>) -> [u32; 3] {
    HOT.map(|key| match limiter.try_acquire(key) {
        Ok(()) => 1,
        Err(RateLimitError::RateLimited { .. }) => 0,
        Err(e) => panic!("hot key {key}: {e:?}"),
    })
}

guarded! {
    fn a_million_keys_in_one_period_against_a_bounded_limiter() {
        // One after the other: each measures the resident set.
        through_try_acquire();
        through_acquire_with_waiters_on_the_hot_keys();
    }
}

fn through_try_acquire() {
    {
        let keys = attacking_keys();
        let max_calls = 5;
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(Quota::window(max_calls, PERIOD).unwrap())
            .with_timer(clock.clone())
            .with_max_keys(MAX_KEYS);
        let before = rss();
        let mut hot = [0u32; 3];
        let (mut admitted, mut refusals) = (0u64, 0u64);
        for key in 0..keys {
            if key % 1_000 == 0 {
                for (total, got) in hot.iter_mut().zip(check_hot(&limiter)) {
                    *total += got;
                }
                // The whole flood stays within one period.
                clock.advance(PERIOD / 2 / (keys / 1_000 + 1) as u32);
            }
            if is_refusal(limiter.try_acquire(key)) {
                refusals += 1;
            } else {
                admitted += 1;
            }
        }
        let grown = rss().saturating_sub(before);
        assert!(
            grown <= BUDGET,
            "the resident set grew by {grown} bytes (budget {BUDGET})"
        );
        assert_eq!(
            hot, [max_calls as u32; 3],
            "the hot keys' grants in the period"
        );
        assert!(limiter.len() <= MAX_KEYS);
        let stats = limiter.stats();
        assert_eq!(stats.refusals, refusals);
        assert_eq!(admitted + refusals, keys);
        assert_eq!(
            admitted,
            (MAX_KEYS - HOT.len()) as u64,
            "nothing was idle within the period"
        );
        // The next period: the attackers' keys go idle and are evicted to
        // make room; the hot keys get their quota again, exactly.
        clock.advance(PERIOD);
        let mut hot = [0u32; 3];
        for key in keys..keys + 100_000.min(keys) {
            if key % 1_000 == 0 {
                for (total, got) in hot.iter_mut().zip(check_hot(&limiter)) {
                    *total += got;
                }
            }
            is_refusal(limiter.try_acquire(key));
        }
        assert_eq!(
            hot, [max_calls as u32; 3],
            "the hot keys' grants in the next period"
        );
        assert!(limiter.stats().evictions > 0);
        assert!(limiter.len() <= MAX_KEYS);
    }
}

fn through_acquire_with_waiters_on_the_hot_keys() {
    {
        let keys = attacking_keys();
        let clock = ManualClock::new();
        let t0 = clock.now();
        let limiter = KeyedRateLimiter::with_quota(Quota::window(1, PERIOD).unwrap())
            .with_timer(clock.clone())
            .with_max_keys(MAX_KEYS);
        let w = CountingWaker::new();
        // Each hot key: one grant now, one waiter for the next period.
        let mut waiters: Vec<_> = HOT
            .iter()
            .map(|&key| {
                let mut first = limiter.acquire(key);
                assert_eq!(poll_once(&mut first, &w), Poll::Ready(Ok(())));
                let mut next = limiter.acquire(key);
                assert!(poll_once(&mut next, &w).is_pending());
                next
            })
            .collect();
        let before = rss();
        let mut refusals = 0u64;
        for key in 0..keys {
            let mut acquire = limiter.acquire(key);
            match poll_once(&mut acquire, &w) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(RateLimitError::TooManyKeys { max_keys })) => {
                    assert_eq!(max_keys, MAX_KEYS);
                    refusals += 1;
                }
                other => panic!("an attacking key's acquire: {other:?}"),
            }
            if key % 10_000 == 0 {
                clock.advance(PERIOD / 2 / (keys / 10_000 + 1) as u32);
                assert_eq!(limiter.stats().waiting_keys, HOT.len());
                for waiter in &mut waiters {
                    assert!(
                        poll_once(waiter, &w).is_pending(),
                        "a hot waiter served early"
                    );
                }
            }
        }
        // The attackers' limiters turn compact again at the next sweep.
        limiter.evict_idle();
        let grown = rss().saturating_sub(before);
        assert!(
            grown <= BUDGET,
            "the resident set grew by {grown} bytes (budget {BUDGET})"
        );
        assert_eq!(refusals, keys - (MAX_KEYS - HOT.len()) as u64);
        assert!(limiter.len() <= MAX_KEYS);
        // The hot waiters are served when their period comes, not before.
        let elapsed = clock.now().duration_since(t0);
        clock.advance(PERIOD - elapsed - Duration::from_nanos(1));
        for waiter in &mut waiters {
            assert!(
                poll_once(waiter, &w).is_pending(),
                "a hot waiter served early"
            );
        }
        clock.advance(Duration::from_nanos(1));
        for waiter in &mut waiters {
            assert_eq!(poll_once(waiter, &w), Poll::Ready(Ok(())));
        }
    }
}
