//! `RateLimiter` and `KeyedRateLimiter` (SPEC §7): exact grant times on the
//! manual clock, FIFO, cancellation and `mem::forget`, quota changes, a clock
//! that goes backwards, 16 threads, composition with the Semaphore, and
//! real-clock smoke tests through the executor matrix.
//! (Random sequences against a reference model: `rate_limiter_model.rs`.)

#![cfg(feature = "test-util")]

#[macro_use]
mod common;

use awaitkit::rate_limiter::{Quota, QuotaError, RateLimitError};
use awaitkit::time::{ManualClock, ManualSleep};
use awaitkit::{KeyedRateLimiter, RateLimiter, Semaphore, Timer};
use common::*;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn window(max_calls: usize, period: Duration) -> Quota {
    Quota::window(max_calls, period).unwrap()
}

fn manual(quota: Quota) -> (ManualClock, RateLimiter<ManualClock>) {
    let clock = ManualClock::new();
    let limiter = RateLimiter::with_quota(quota).with_timer(clock.clone());
    (clock, limiter)
}

/// Starts `n` acquires at once and moves the clock from one armed deadline
/// to the next; returns when each was granted (clock time since the start).
fn grant_times(clock: &ManualClock, limiter: &RateLimiter<ManualClock>, n: usize) -> Vec<Duration> {
    let t0 = clock.now();
    let w = CountingWaker::new();
    let mut acquires: Vec<_> = (0..n).map(|_| limiter.acquire()).collect();
    let mut granted = vec![None; n];
    loop {
        for (i, a) in acquires.iter_mut().enumerate() {
            if granted[i].is_none() && poll_once(a, &w).is_ready() {
                granted[i] = Some(clock.now() - t0);
            }
        }
        match clock.next_deadline() {
            Some(next) => clock.advance_to(next),
            None => break,
        }
    }
    granted
        .into_iter()
        .map(|t| t.expect("every acquire granted"))
        .collect()
}

fn limited(wait: Duration) -> Result<(), RateLimitError> {
    Err(RateLimitError::RateLimited { wait })
}

// ---------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------

guarded! {
    /// The snapshot takes nothing and tells exactly what a window allows:
    /// the calls left now, and when the next one is due.
    fn snapshot_of_a_window_on_the_manual_clock() {
        let (clock, limiter) = manual(window(3, 10 * SEC));
        let s = limiter.snapshot();
        assert_eq!((s.remaining, s.next_in, s.waiting), (3, Some(Duration::ZERO), 0));
        limiter.try_acquire().unwrap();
        clock.advance(2 * SEC);
        limiter.try_acquire_n(2).unwrap();
        for _ in 0..3 {
            let s = limiter.snapshot(); // taking nothing: the same each time
            assert_eq!((s.remaining, s.next_in), (0, Some(8 * SEC)), "the first grant leaves at 10 s");
        }
        // A waiter queues: it comes first, so one more is due only after it.
        let w = CountingWaker::new();
        let mut waiter = limiter.acquire();
        assert!(poll_once(&mut waiter, &w).is_pending());
        let s = limiter.snapshot();
        assert_eq!((s.remaining, s.next_in, s.waiting), (0, Some(10 * SEC), 1));
        clock.advance(8 * SEC);
        assert_eq!(poll_once(&mut waiter, &w), Poll::Ready(()));
        let s = limiter.snapshot();
        assert_eq!((s.remaining, s.next_in, s.waiting), (0, Some(2 * SEC), 0));
        clock.advance(2 * SEC);
        assert_eq!(limiter.snapshot().remaining, 2);
        assert!(limiter.try_acquire_n(2).is_ok(), "the snapshot's count is what fits");
    }

    /// GCRA: the burst at first, then one per interval.
    fn snapshot_of_gcra_on_the_manual_clock() {
        let (clock, limiter) = manual(Quota::gcra(10, SEC, 3).unwrap()); // one per 100 ms
        assert_eq!(limiter.snapshot().remaining, 3);
        limiter.try_acquire_n(3).unwrap();
        let s = limiter.snapshot();
        assert_eq!((s.remaining, s.next_in), (0, Some(100 * MS)));
        clock.advance(250 * MS);
        let s = limiter.snapshot();
        assert_eq!((s.remaining, s.next_in), (2, Some(Duration::ZERO)));
        assert!(limiter.try_acquire_n(2).is_ok());
        assert!(limiter.try_acquire().is_err());
    }

    fn zero_quotas_are_rejected() {
        assert_eq!(RateLimiter::try_new(0, SEC).unwrap_err(), QuotaError::ZeroCalls);
        assert_eq!(RateLimiter::try_new(1, Duration::ZERO).unwrap_err(), QuotaError::ZeroPeriod);
        assert_eq!(RateLimiter::try_gcra(0, SEC, 1).unwrap_err(), QuotaError::ZeroCalls);
        assert_eq!(RateLimiter::try_gcra(1, Duration::ZERO, 1).unwrap_err(), QuotaError::ZeroPeriod);
        assert_eq!(RateLimiter::try_gcra(1, SEC, 0).unwrap_err(), QuotaError::ZeroBurst);
        for e in [QuotaError::ZeroCalls, QuotaError::ZeroPeriod, QuotaError::ZeroBurst, QuotaError::ModeChange] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[should_panic(expected = "RateLimiter::new: a rate limit must allow at least one call per period")]
    fn new_panics_on_zero_calls() {
        let _ = RateLimiter::new(0, SEC);
    }

    #[should_panic(expected = "RateLimiter::new: a rate limit's period must be longer than zero")]
    fn new_panics_on_zero_period() {
        let _ = RateLimiter::new(3, Duration::ZERO);
    }

    #[should_panic(expected = "RateLimiter::gcra: a GCRA rate limit must allow a burst")]
    fn gcra_panics_on_zero_burst() {
        let _ = RateLimiter::gcra(3, SEC, 0);
    }

    fn sub_millisecond_and_one_nanosecond_periods() {
        let (clock, limiter) = manual(window(2, Duration::from_micros(300)));
        assert_eq!(limiter.try_acquire_n(2), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(Duration::from_micros(300)));
        clock.advance(Duration::from_micros(300));
        assert_eq!(limiter.try_acquire(), Ok(()));

        let (clock, limiter) = manual(window(1, Duration::from_nanos(1)));
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(limiter.try_acquire(), Ok(()));

        // GCRA faster than one per nanosecond is held at one per nanosecond.
        let (clock, limiter) = manual(Quota::gcra(10, Duration::from_nanos(3), 1).unwrap());
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(limiter.try_acquire(), Ok(()));
    }

    fn duration_max_period_grants_max_calls_then_never() {
        for quota in [window(2, Duration::MAX), Quota::gcra(1, Duration::MAX, 2).unwrap()] {
            let (clock, limiter) = manual(quota);
            assert_eq!(limiter.try_acquire_n(2), Ok(()), "{quota:?}");
            let wait = limiter.try_acquire().unwrap_err().wait().unwrap();
            assert!(wait > Duration::from_secs(70 * 365 * 86_400), "{quota:?}: {wait:?}");
            let w = CountingWaker::new();
            let mut acquire = limiter.acquire();
            assert!(poll_once(&mut acquire, &w).is_pending());
            clock.advance(Duration::from_secs(100 * 365 * 86_400));
            assert!(poll_once(&mut acquire, &w).is_pending(), "{quota:?}");
            drop(acquire);
            assert_eq!(limiter.waiting(), 0);
            assert_eq!(clock.sleepers(), 0);
        }
    }

    fn huge_max_calls_stays_bounded() {
        // 200 000 grants at distinct times within one period (the log keeps
        // about 1 024 entries), then the rest of the quota at once.
        let (clock, limiter) = manual(window(usize::MAX, SEC));
        for _ in 0..200_000 {
            assert_eq!(limiter.try_acquire(), Ok(()));
            clock.advance(Duration::from_nanos(3_500));
        }
        assert_eq!(limiter.try_acquire_n(usize::MAX - 200_000), Ok(()));
        let wait = limiter.try_acquire().unwrap_err().wait().unwrap();
        // The first grants leave the window 1 s after they were made (give
        // or take the merging quantum of 1 s / 1 024).
        assert!(wait > MS * 290 && wait <= MS * 302, "{wait:?}");
    }
}

// ---------------------------------------------------------------------------
// Exact times, FIFO, n at once
// ---------------------------------------------------------------------------

guarded! {
    fn strict_window_grant_times_are_exact() {
        // "5 per second" over 12 calls: 5 at 0 s, 5 at 1 s, 2 at 2 s.
        let (clock, limiter) = manual(window(5, SEC));
        let granted = grant_times(&clock, &limiter, 12);
        let expect: Vec<_> = (0..12).map(|i| SEC * (i / 5)).collect();
        assert_eq!(granted, expect);
    }

    fn a_sliding_window_is_not_a_calendar_window() {
        // 3 per second: grants at 0.0, 0.9, 0.9 — a fourth must wait until
        // 1.0 s (when the grant at 0.0 leaves), the fifth until 1.9 s.
        let (clock, limiter) = manual(window(3, SEC));
        limiter.try_acquire().unwrap();
        clock.advance(MS * 900);
        limiter.try_acquire_n(2).unwrap();
        clock.advance(MS * 100);
        assert_eq!(limiter.try_acquire(), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(MS * 900));
        clock.advance(MS * 899);
        assert_eq!(limiter.try_acquire(), limited(MS));
    }

    fn waiters_are_served_in_fifo_order_no_barging() {
        let (clock, limiter) = manual(window(3, SEC));
        limiter.try_acquire_n(3).unwrap();
        let w = CountingWaker::new();
        let mut big = limiter.acquire_n(3);
        let mut small = limiter.acquire();
        assert!(poll_once(&mut big, &w).is_pending());
        assert!(poll_once(&mut small, &w).is_pending());
        assert_eq!(limiter.waiting(), 2);
        // While anyone waits, try_acquire fails — with the exact wait behind
        // the queue (the big one at 1 s, then this one at 2 s).
        assert_eq!(limiter.try_acquire(), limited(SEC * 2));
        clock.advance(SEC);
        assert_eq!(poll_once(&mut big, &w), Poll::Ready(Ok(())));
        assert!(poll_once(&mut small, &w).is_pending());
        clock.advance(SEC);
        assert_eq!(poll_once(&mut small, &w), Poll::Ready(()));
        assert_eq!(limiter.waiting(), 0);
    }

    fn grants_wake_exactly_the_granted_waiters_most_recent_waker() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let (old, new, other) = (CountingWaker::new(), CountingWaker::new(), CountingWaker::new());
        let mut first = limiter.acquire();
        let mut second = limiter.acquire();
        assert!(poll_once(&mut first, &old).is_pending());
        assert!(poll_once(&mut first, &new).is_pending());
        assert!(poll_once(&mut second, &other).is_pending());
        clock.advance(SEC);
        assert_eq!((old.wakes(), new.wakes(), other.wakes()), (0, 1, 0));
        assert_eq!(poll_once(&mut first, &new), Poll::Ready(()));
        // Spurious polls change nothing.
        for _ in 0..3 {
            assert!(poll_once(&mut second, &other).is_pending());
        }
        clock.advance(SEC);
        assert_eq!(other.wakes(), 1);
        assert_eq!(poll_once(&mut second, &other), Poll::Ready(()));
        assert_eq!(old.live_clones() + new.live_clones() + other.live_clones(), 0);
    }

    fn n_at_once_zero_and_too_many() {
        let (_clock, limiter) = manual(window(4, SEC));
        let w = CountingWaker::new();
        assert_eq!(poll_once(&mut limiter.acquire_n(0), &w), Poll::Ready(Ok(())));
        let err = RateLimitError::ExceedsQuota { requested: 5, max: 4 };
        assert_eq!(poll_once(&mut limiter.acquire_n(5), &w), Poll::Ready(Err(err)));
        assert_eq!(limiter.try_acquire_n(5), Err(err));
        assert_eq!(err.wait(), None);
        assert!(err.to_string().contains("5 calls at once"));
        assert_eq!(limiter.try_acquire_n(0), Ok(()));
        limiter.try_acquire_n(4).unwrap();
        // Zero is ready at once even with the window full and a waiter queued.
        let mut waiting = limiter.acquire();
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!(poll_once(&mut limiter.acquire_n(0), &w), Poll::Ready(Ok(())));
        let gcra = RateLimiter::gcra(10, SEC, 3);
        assert_eq!(
            gcra.try_acquire_n(4),
            Err(RateLimitError::ExceedsQuota { requested: 4, max: 3 })
        );
    }

    fn gcra_spaces_grants_after_the_burst() {
        let (clock, limiter) = manual(Quota::gcra(10, SEC, 3).unwrap());
        let granted = grant_times(&clock, &limiter, 6);
        let ms = |m| MS * m;
        assert_eq!(granted, [ms(0), ms(0), ms(0), ms(100), ms(200), ms(300)]);
        // Idle for a second: the burst is back, and no more.
        clock.advance(SEC);
        assert_eq!(limiter.try_acquire_n(3), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(MS * 100));
    }

    #[should_panic(expected = "polled after it completed")]
    fn polling_after_completion_panics() {
        let limiter = RateLimiter::new(1, SEC);
        let w = CountingWaker::new();
        let mut acquire = limiter.acquire();
        assert!(poll_once(&mut acquire, &w).is_ready());
        let _ = poll_once(&mut acquire, &w);
    }
}

// ---------------------------------------------------------------------------
// Cancellation, forget, the driver
// ---------------------------------------------------------------------------

guarded! {
    fn a_dropped_head_hands_its_place_to_the_next_at_once() {
        let (clock, limiter) = manual(window(3, SEC));
        limiter.try_acquire_n(2).unwrap();
        let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
        let mut big = limiter.acquire_n(3);
        let mut small = limiter.acquire();
        assert!(poll_once(&mut big, &wa).is_pending());
        assert!(poll_once(&mut small, &wb).is_pending());
        drop(big);
        // No time passed: the small one fits now and is granted by the drop.
        assert_eq!(wb.wakes(), 1);
        assert_eq!(poll_once(&mut small, &wb), Poll::Ready(()));
        assert_eq!(clock.sleepers(), 0);
    }

    fn cancel_after_every_number_of_polls_loses_nothing() {
        for polls in 0..5 {
            let (clock, limiter) = manual(window(2, SEC));
            limiter.try_acquire_n(2).unwrap();
            let w = CountingWaker::new();
            let mut doomed = limiter.acquire();
            for _ in 0..polls {
                assert!(poll_once(&mut doomed, &w).is_pending());
                clock.advance(MS * 100);
            }
            drop(doomed);
            assert_eq!(limiter.waiting(), 0);
            assert_eq!(clock.sleepers(), 0, "polls = {polls}");
            // Exactly as if it had never been there.
            let elapsed = MS * 100 * polls;
            assert_eq!(limiter.try_acquire(), limited(SEC - elapsed));
            clock.advance(SEC - elapsed);
            assert_eq!(limiter.try_acquire_n(2), Ok(()));
        }
    }

    fn a_grant_nobody_saw_is_given_back() {
        for quota in [window(1, SEC), Quota::gcra(1, SEC, 1).unwrap()] {
            let (clock, limiter) = manual(quota);
            limiter.try_acquire().unwrap();
            let w = CountingWaker::new();
            let mut acquire = limiter.acquire();
            assert!(poll_once(&mut acquire, &w).is_pending());
            clock.advance(SEC); // granted by the driver, not yet seen
            assert_eq!(w.wakes(), 1);
            drop(acquire);
            assert_eq!(limiter.try_acquire(), Ok(()), "{quota:?}");
            assert_eq!(limiter.try_acquire(), limited(SEC), "{quota:?}");
        }
    }

    fn a_forgotten_waiter_never_wedges_the_limiter() {
        for quota in [window(1, SEC), Quota::gcra(1, SEC, 1).unwrap()] {
            let (clock, limiter) = manual(quota);
            limiter.try_acquire().unwrap();
            let w = CountingWaker::new();
            let mut forgotten = limiter.acquire();
            assert!(poll_once(&mut forgotten, &w).is_pending());
            std::mem::forget(forgotten);
            let mut next = limiter.acquire();
            assert!(poll_once(&mut next, &w).is_pending());
            // The forgotten one's turn (1 s) is granted and wasted; the next
            // is granted at 2 s, on time.
            clock.advance(SEC);
            assert!(poll_once(&mut next, &w).is_pending());
            clock.advance(SEC);
            assert_eq!(poll_once(&mut next, &w), Poll::Ready(()), "{quota:?}");
            assert_eq!(clock.sleepers(), 0);
        }
    }

    fn one_timer_per_limiter_however_many_wait() {
        let (clock, limiter) = manual(window(1, SEC));
        limiter.try_acquire().unwrap();
        let w = CountingWaker::new();
        let mut waiting: Vec<_> = (0..100).map(|_| limiter.acquire()).collect();
        for a in &mut waiting {
            assert!(poll_once(a, &w).is_pending());
        }
        assert_eq!(clock.sleepers(), 1);
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1, "one grant, one wake");
        drop(waiting);
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    fn dropping_the_limiter_with_its_timer_armed_frees_everything() {
        let clock = ManualClock::new();
        let keyed = KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock.clone());
        keyed.try_acquire("k").unwrap();
        let w = CountingWaker::new();
        let mut acquire = keyed.acquire("k");
        assert!(poll_once(&mut acquire, &w).is_pending());
        assert_eq!(clock.sleepers(), 1);
        drop(keyed); // the future still holds the key's limiter
        clock.advance(SEC);
        assert_eq!(poll_once(&mut acquire, &w), Poll::Ready(Ok(())));
        drop(acquire);
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(w.live_clones(), 0);
    }
}

// ---------------------------------------------------------------------------
// Quota changes and clocks
// ---------------------------------------------------------------------------

guarded! {
    fn raising_the_quota_grants_waiters_at_once_and_lowering_fails_the_too_large() {
        let (_clock, limiter) = manual(window(2, SEC));
        limiter.try_acquire_n(2).unwrap();
        let (wa, wb) = (CountingWaker::new(), CountingWaker::new());
        let mut one = limiter.acquire();
        let mut two = limiter.acquire_n(2);
        assert!(poll_once(&mut one, &wa).is_pending());
        assert!(poll_once(&mut two, &wb).is_pending());
        limiter.set_quota(window(3, SEC)).unwrap();
        assert_eq!(poll_once(&mut one, &wa), Poll::Ready(()));
        assert!(poll_once(&mut two, &wb).is_pending());
        limiter.set_quota(window(1, SEC)).unwrap();
        assert_eq!(
            poll_once(&mut two, &wb),
            Poll::Ready(Err(RateLimitError::ExceedsQuota { requested: 2, max: 1 }))
        );
        assert_eq!(limiter.quota(), window(1, SEC));
        assert_eq!(
            limiter.set_quota(Quota::gcra(1, SEC, 1).unwrap()),
            Err(QuotaError::ModeChange)
        );
    }

    fn gcra_quota_changes_take_effect_at_once() {
        let (clock, limiter) = manual(Quota::gcra(1, SEC, 1).unwrap());
        limiter.try_acquire().unwrap();
        assert_eq!(limiter.try_acquire(), limited(SEC));
        limiter.set_quota(Quota::gcra(1, SEC, 3).unwrap()).unwrap();
        // Two more fit in the larger burst, at once.
        assert_eq!(limiter.try_acquire_n(2), Ok(()));
        assert_eq!(limiter.try_acquire(), limited(SEC));
        limiter.set_quota(Quota::gcra(4, SEC, 3).unwrap()).unwrap();
        assert_eq!(limiter.try_acquire(), limited(MS * 250));
        clock.advance(MS * 250);
        assert_eq!(limiter.try_acquire(), Ok(()));
    }

    fn a_clock_that_goes_backwards_never_grants_extra() {
        /// A manual clock whose reading can be pulled back (breaking the
        /// `Timer` contract on purpose).
        #[derive(Clone)]
        struct Wobbly {
            clock: ManualClock,
            back: Arc<AtomicU64>,
        }
        impl Timer for Wobbly {
            type Sleep = ManualSleep;
            fn now(&self) -> Instant {
                self.clock.now() - Duration::from_nanos(self.back.load(Ordering::SeqCst))
            }
            fn sleep_until(&self, deadline: Instant) -> ManualSleep {
                self.clock.sleep_until(deadline)
            }
            fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
                self.clock.reset(sleep, deadline)
            }
        }
        for quota in [window(2, SEC), Quota::gcra(2, SEC, 2).unwrap()] {
            let clock = ManualClock::new();
            clock.advance(SEC * 10);
            let back = Arc::new(AtomicU64::new(0));
            let timer = Wobbly { clock: clock.clone(), back: back.clone() };
            let limiter = RateLimiter::with_quota(quota).with_timer(timer);
            limiter.try_acquire_n(2).unwrap();
            // Half a second on, the clock jumps back 5 s: nothing more.
            clock.advance(MS * 500);
            back.store(5_000_000_000, Ordering::SeqCst);
            assert!(limiter.try_acquire().is_err(), "{quota:?}");
            // It comes back: exactly what a steady clock allows. The window
            // frees both grants 1 s after they were made; GCRA one per 500 ms.
            back.store(0, Ordering::SeqCst);
            if quota.burst().is_some() {
                assert_eq!(limiter.try_acquire(), Ok(()));
            }
            assert!(limiter.try_acquire().is_err(), "{quota:?}");
            clock.advance(MS * 500);
            let next = if quota.burst().is_some() { 1 } else { 2 };
            assert_eq!(limiter.try_acquire_n(next), Ok(()), "{quota:?}");
            assert!(limiter.try_acquire().is_err(), "{quota:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Keyed
// ---------------------------------------------------------------------------

guarded! {
    fn keys_are_limited_independently() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(2, SEC)).with_timer(clock.clone());
        assert!(limiter.is_empty());
        limiter.try_acquire_n("a", 2).unwrap();
        assert_eq!(limiter.try_acquire("a"), limited(SEC));
        assert_eq!(limiter.try_acquire_n("b", 2), Ok(()));
        let w = CountingWaker::new();
        let mut a = limiter.acquire("a");
        assert!(poll_once(&mut a, &w).is_pending());
        assert_eq!(limiter.try_acquire_n("c", 3), Err(RateLimitError::ExceedsQuota { requested: 3, max: 2 }));
        clock.advance(SEC);
        assert_eq!(poll_once(&mut a, &w), Poll::Ready(Ok(())));
        // "c" asked for more than any quota allows: it was never tracked.
        assert_eq!(limiter.len(), 2);
        assert!(format!("{limiter:?}").contains("keys: 2"));
    }

    fn idle_keys_are_evicted_and_memory_stays_bounded() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(1, MS * 10)).with_timer(clock.clone());
        let mut most = 0;
        for round in 0..100u64 {
            for k in 0..100u64 {
                limiter.try_acquire(round * 100 + k).unwrap();
            }
            most = most.max(limiter.len());
            clock.advance(MS * 10);
        }
        // 10 000 keys went through; only about two rounds are ever held.
        assert!(most <= 400, "{most} keys held");
        assert!(limiter.evict_idle() > 0);
        assert!(limiter.is_empty());
    }

    fn eviction_never_lets_anything_extra_through() {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(window(1, SEC)).with_timer(clock.clone());
        limiter.try_acquire("busy").unwrap();
        let w = CountingWaker::new();
        let mut held = limiter.acquire("waiting");
        assert_eq!(poll_once(&mut held, &w), Poll::Ready(Ok(())));
        // Neither key is idle: one has a grant in its window, the other a
        // live future (and a grant).
        assert_eq!(limiter.evict_idle(), 0);
        assert!(limiter.try_acquire("busy").is_err());
        drop(held);
        clock.advance(SEC);
        assert_eq!(limiter.evict_idle(), 2);
        assert_eq!(limiter.try_acquire("busy"), Ok(()));
    }

    fn keyed_quota_changes_reach_every_key() {
        let limiter = KeyedRateLimiter::new(1, SEC * 60);
        limiter.try_acquire(1).unwrap();
        limiter.set_quota(window(2, SEC * 60)).unwrap();
        assert_eq!(limiter.try_acquire(1), Ok(()));
        assert_eq!(limiter.try_acquire_n(2, 2), Ok(()));
        assert_eq!(limiter.quota(), window(2, SEC * 60));
        assert_eq!(limiter.set_quota(Quota::gcra(1, SEC, 1).unwrap()), Err(QuotaError::ModeChange));
    }
}

// ---------------------------------------------------------------------------
// Threads, composition
// ---------------------------------------------------------------------------

guarded! {
    fn sixteen_threads_get_exactly_the_quota_per_period() {
        sixteen_threads(window(7, SEC));
    }

    fn sixteen_threads_on_gcra() {
        // 8 per second: a whole number of nanoseconds per call (GCRA rounds
        // the spacing up, so 7 per second would grant 6 at each step).
        sixteen_threads(Quota::gcra(8, SEC, 8).unwrap());
    }
}

/// 16 threads, each acquiring 10 times; the clock moves a period at a time
/// once exactly the quota's calls of that period have completed.
fn sixteen_threads(quota: Quota) {
    {
        const THREADS: usize = 16;
        const EACH: usize = 10;
        let n = quota.max_calls();
        let clock = ManualClock::new();
        let t0 = clock.now();
        let limiter = Arc::new(RateLimiter::with_quota(quota).with_timer(clock.clone()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (limiter, clock, times, done) =
                    (limiter.clone(), clock.clone(), times.clone(), done.clone());
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        futures::executor::block_on(limiter.acquire());
                        times.lock().unwrap().push(clock.now() - t0);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // Every second exactly n more complete (demand always exceeds n).
        let total = THREADS * EACH;
        for period in 0.. {
            let expect = (n * (period + 1)).min(total);
            while done.load(Ordering::SeqCst) < expect {
                std::thread::yield_now();
            }
            std::thread::sleep(MS * 5);
            assert_eq!(done.load(Ordering::SeqCst), expect, "period {period}");
            if expect == total {
                break;
            }
            clock.advance(SEC);
        }
        for t in threads {
            t.join().unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        for (i, t) in times.iter().enumerate() {
            assert_eq!(*t, SEC * (i / n) as u32);
        }
        assert_eq!(limiter.waiting(), 0);
    }
}

guarded! {
    fn rate_and_concurrency_together() {
        // The seed: at most 5 calls per second and at most 2 at a time, each
        // call taking 300 ms.
        use futures::task::LocalSpawnExt;
        let clock = ManualClock::new();
        let t0 = clock.now();
        let rate = Rc::new(RateLimiter::with_quota(window(5, SEC)).with_timer(clock.clone()));
        let concurrency = Rc::new(Semaphore::new(2));
        let log = Rc::new(RefCell::new(Vec::new()));
        let running = Rc::new(Cell::new(0usize));
        let mut pool = futures::executor::LocalPool::new();
        for i in 0..12 {
            let (rate, concurrency, log, running, clock) =
                (rate.clone(), concurrency.clone(), log.clone(), running.clone(), clock.clone());
            pool.spawner()
                .spawn_local(async move {
                    let call = async {
                        running.set(running.get() + 1);
                        assert!(running.get() <= 2);
                        log.borrow_mut().push((i, clock.now() - t0));
                        clock.sleep_until(clock.now() + MS * 300).await;
                        running.set(running.get() - 1);
                    };
                    concurrency.limit(rate.limit(call)).await.unwrap();
                })
                .unwrap();
        }
        loop {
            pool.run_until_stalled();
            match clock.next_deadline() {
                Some(next) => clock.advance_to(next),
                None => break,
            }
        }
        let starts: Vec<Duration> = log.borrow().iter().map(|&(_, t)| t).collect();
        assert_eq!(starts.len(), 12);
        for (k, s) in starts.iter().enumerate() {
            let in_window = starts.iter().filter(|t| **t >= *s && **t < *s + SEC).count();
            assert!(in_window <= 5, "call {k} at {s:?}: {in_window} calls in its window");
        }
        // Pairs every 300 ms, held back by the rate after five.
        let ms = |m: u64| MS * m as u32;
        assert_eq!(
            starts,
            [ms(0), ms(0), ms(300), ms(300), ms(600), ms(1000), ms(1000), ms(1300), ms(1300), ms(1600), ms(2000), ms(2000)]
        );
    }
}

use std::cell::{Cell, RefCell};
use std::rc::Rc;

// ---------------------------------------------------------------------------
// Real clocks, every executor
// ---------------------------------------------------------------------------

matrix! {
    async fn real_clock_window_is_never_early() {
        let limiter = RateLimiter::new(3, MS * 40);
        let start = Instant::now();
        for _ in 0..9 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() >= MS * 80, "{:?}", start.elapsed());
        assert!(start.elapsed() < SEC * 5);
    }

    async fn real_clock_concurrent_acquires_finish_in_order() {
        let limiter = RateLimiter::new(2, MS * 30);
        let order = Mutex::new(Vec::new());
        let start = Instant::now();
        awaitkit::gather((0..6).map(|i| {
            let (limiter, order) = (&limiter, &order);
            async move {
                limiter.acquire().await;
                order.lock().unwrap().push(i);
            }
        }))
        .await;
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
        assert!(start.elapsed() >= MS * 60);
    }

    async fn real_clock_gcra_and_keyed() {
        let limiter = RateLimiter::gcra(100, SEC, 2);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire_n(1).await.unwrap();
        }
        assert!(start.elapsed() >= MS * 30, "{:?}", start.elapsed());
        let keyed = KeyedRateLimiter::new(1, MS * 20);
        let start = Instant::now();
        for _ in 0..3 {
            keyed.acquire("k").await.unwrap();
            keyed.acquire_n("j", 1).await.unwrap();
        }
        assert!(start.elapsed() >= MS * 40);
    }

    async fn real_clock_cancelled_waiters_by_timeout() {
        let limiter = RateLimiter::new(1, MS * 50);
        limiter.acquire().await;
        // Timeouts cancel waiters all the time; nothing is lost.
        for _ in 0..5 {
            assert!(awaitkit::timeout(MS, limiter.acquire()).await.is_err());
        }
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() < MS * 50);
        assert_eq!(limiter.waiting(), 0);
    }
}

#[cfg(feature = "quanta")]
matrix! {
    async fn quanta_timer_drives_waiters_on_its_own_clock() {
        use awaitkit::time::QuantaTimer;
        let timer = QuantaTimer::new();
        assert!(timer.counter_nanos().is_some());
        let (t0, c0) = (timer.now(), timer.counter_nanos().unwrap());
        for quota in [window(2, MS * 20), Quota::gcra(2, MS * 20, 2).unwrap()] {
            let limiter = RateLimiter::with_quota(quota).with_timer(timer.clone());
            let (start, real) = (timer.now(), Instant::now());
            for _ in 0..6 {
                limiter.acquire().await;
            }
            // Never early on the timer's clock, and close to the real one.
            assert!(timer.now() - start >= MS * 40, "{quota:?}: {:?}", timer.now() - start);
            assert!(real.elapsed() >= MS * 39, "{:?}", real.elapsed());
        }
        // The counter and `now` advance together.
        let (t1, c1) = (timer.now(), timer.counter_nanos().unwrap());
        let by_now = (t1 - t0).as_nanos() as i128;
        let by_counter = i128::from(c1 - c0);
        assert!((by_now - by_counter).abs() < 1_000_000, "{by_now} vs {by_counter}");
    }
}
