//! Review (review-sem): the RateLimiter on the changed wait queue (u32 links,
//! free list threaded through freed slots, LIFO slot reuse): FIFO grants with
//! cancellations in the middle and newcomers reusing the freed slots, and
//! cancellations while the clock advances. Passes.

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::RateLimiter;
use awaitkit::rate_limiter::Quota;
use awaitkit::time::ManualClock;
use common::*;
use std::time::Duration;

guarded! {
    fn fifo_with_holes_reused_slots_and_cancels_while_advancing() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(Quota::window(1, Duration::from_secs(1)).unwrap())
            .with_timer(clock.clone());
        limiter.try_acquire().unwrap();
        let w = CountingWaker::new();
        // (label, acquire): labels give the expected FIFO order.
        let mut line: Vec<(usize, Option<_>)> = (0..30).map(|k| (k, Some(limiter.acquire()))).collect();
        for (_, a) in line.iter_mut() {
            assert!(poll_once(a.as_mut().unwrap(), &w).is_pending());
        }
        for k in (0..30).step_by(3) {
            line[k].1 = None; // cancelled: slot freed
        }
        for k in 30..40 {
            let mut a = limiter.acquire();
            assert!(poll_once(&mut a, &w).is_pending()); // reuses a freed slot
            line.push((k, Some(a)));
        }
        assert_eq!(limiter.waiting(), 30);
        let mut order = Vec::new();
        let mut step = 0usize;
        loop {
            for (label, slot) in line.iter_mut() {
                if let Some(a) = slot {
                    if poll_once(a, &w).is_ready() {
                        order.push(*label);
                        *slot = None;
                    }
                }
            }
            // Cancel one pending waiter every other step (from the middle).
            step += 1;
            if step % 2 == 0 {
                let pending: Vec<usize> = (0..line.len()).filter(|&i| line[i].1.is_some()).collect();
                if pending.len() > 2 {
                    line[pending[pending.len() / 2]].1 = None;
                }
            }
            match clock.next_deadline() {
                Some(next) => clock.advance_to(next),
                None => break,
            }
        }
        assert!(line.iter().all(|(_, a)| a.is_none()), "every waiter granted or cancelled");
        assert!(order.windows(2).all(|p| p[0] < p[1]), "grants out of FIFO order: {order:?}");
        assert!(order.len() >= 10, "{order:?}");
        assert_eq!(limiter.waiting(), 0);
    }
}
