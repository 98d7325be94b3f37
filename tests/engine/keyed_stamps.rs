#![cfg(feature = "test-util")]
//! A strict-window `KeyedRateLimiter` key with grants at several times
//! keeps them as stamps (small quotas): exact nanoseconds for periods up to
//! 2³¹ ns, and rounded up to a grid step beyond (32 ns for a minute) — at
//! most one step stricter than the exact window, never looser, through
//! checks, promotion to a full limiter (a waiter) and demotion back.

use crate::common;

use awaitkit::KeyedRateLimiter;
use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use common::*;
use std::task::Poll;
use std::time::Duration;

const NS: Duration = Duration::from_nanos(1);
const MINUTE: Duration = Duration::from_secs(60);

fn limited(wait: Duration) -> Result<(), RateLimitError> {
    Err(RateLimitError::RateLimited { wait })
}

guarded! {
    fn stamps_are_exact_up_to_two_seconds() {
        // 2 s < 2^31 ns: every grant's own nanosecond.
        let period = Duration::from_secs(2);
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(3, period).with_timer(clock.clone());
        for _ in 0..3 {
            limiter.try_acquire(7).unwrap();
            clock.advance(NS);
        }
        // Grants at 0, 1 and 2 ns: the one at 0 leaves at `period`.
        clock.advance(period - 4 * NS);
        assert_eq!(limiter.try_acquire(7), limited(NS));
        clock.advance(NS);
        assert_eq!(limiter.try_acquire(7), Ok(()));
        assert_eq!(limiter.try_acquire(7), limited(NS));
        clock.advance(NS);
        assert_eq!(limiter.try_acquire(7), Ok(()));
    }

    fn a_minute_rounds_grants_up_by_less_than_32_ns() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(2, MINUTE).with_timer(clock.clone());
        // Grants at 0 and 1 ns (stamped 32 ns).
        limiter.try_acquire(7).unwrap();
        clock.advance(NS);
        limiter.try_acquire(7).unwrap();
        assert_eq!(limiter.try_acquire(7), limited(MINUTE - NS));
        clock.advance(MINUTE - NS);
        // The grant at 0 has left: one more (at a minute, on the grid).
        assert_eq!(limiter.try_acquire(7), Ok(()));
        // Exactly, the grant at 1 ns would leave at a minute and 1 ns; its
        // stamp leaves at a minute and 32 ns: 31 ns stricter, no more.
        clock.advance(NS);
        assert_eq!(limiter.try_acquire(7), limited(31 * NS));
        clock.advance(31 * NS);
        assert_eq!(limiter.try_acquire(7), Ok(()));
        assert!(limiter.try_acquire(7).is_err());
    }

    fn a_waiter_on_stamps_is_served_no_earlier_than_the_window_allows() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(3, MINUTE).with_timer(clock.clone());
        let w = CountingWaker::new();
        // Grants at 0, 1 and 2 ns (stamps of a minute's grid), then a
        // waiter: the key is promoted with its grants, none after now.
        for _ in 0..3 {
            limiter.try_acquire("k").unwrap();
            clock.advance(NS);
        }
        let mut waiter = limiter.acquire("k");
        assert!(poll_once(&mut waiter, &w).is_pending());
        assert_eq!(limiter.stats().waiting_keys, 1);
        clock.advance(MINUTE - 4 * NS);
        assert!(poll_once(&mut waiter, &w).is_pending());
        // A minute after the first grant, its room is the waiter's.
        clock.advance(NS);
        assert_eq!(poll_once(&mut waiter, &w), Poll::Ready(Ok(())));
        drop(waiter);
        // Demoted back to stamps by the next check: the grants at 1 and
        // 2 ns (and the waiter's) still fill the window.
        assert!(limiter.try_acquire("k").is_err());
        assert_eq!(limiter.stats().waiting_keys, 0);
        clock.advance(MINUTE);
        for _ in 0..3 {
            limiter.try_acquire("k").unwrap();
        }
        assert!(limiter.try_acquire("k").is_err());
    }

    fn keys_with_many_grants_keep_their_exact_quota() {
        // 64 calls (the largest quota kept as stamps) and 65 (the log),
        // each grant at its own time: the quota, then nothing until the
        // first grant leaves.
        for max in [10, 64, 65] {
            let clock = ManualClock::new();
            let limiter =
                KeyedRateLimiter::with_quota(Quota::window(max, MINUTE).unwrap())
                    .with_timer(clock.clone());
            for key in 0..3_u32 {
                for _ in 0..max {
                    limiter.try_acquire(key).unwrap();
                    clock.advance(Duration::from_millis(1));
                }
                assert!(limiter.try_acquire(key).is_err(), "{max}");
            }
            // The first key's first grant left at a minute.
            clock.advance(MINUTE - Duration::from_millis(3 * max as u64));
            assert_eq!(limiter.try_acquire(0), Ok(()), "{max}");
            assert!(limiter.try_acquire(0).is_err(), "{max}");
            assert!(limiter.try_acquire(1).is_err(), "{max}");
        }
    }
}
