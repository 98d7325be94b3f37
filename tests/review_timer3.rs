#![cfg(feature = "test-util")]
//! Adversarial review of the default timers' counter (issue 17 item 5):
//! a rate limiter stays strict when its counter's readings from different
//! threads arrive out of order (a counter read without a fence, as the
//! default timers' is: monotonic per thread only), keyed limiters too.

use awaitkit::rate_limiter::Quota;
use awaitkit::time::ManualClock;
use awaitkit::{KeyedRateLimiter, RateLimiter, Timer};
use std::cell::Cell;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

thread_local! {
    /// How far behind this thread's counter reads (ns).
    static BEHIND: Cell<u64> = const { Cell::new(0) };
}

/// A manual clock whose counter reads `BEHIND` nanoseconds behind on this
/// thread: two threads' readings arrive out of order, as the counter of
/// two cores read without a fence can.
#[derive(Clone)]
struct Skewed {
    clock: ManualClock,
    origin: Instant,
}

impl Skewed {
    fn new() -> Skewed {
        let clock = ManualClock::new();
        // The counter's origin is far enough back that readings behind it
        // stay positive.
        clock.advance(Duration::from_secs(1));
        let origin = clock.now() - Duration::from_secs(1);
        Skewed { clock, origin }
    }

    /// True time, in nanoseconds since the origin.
    fn true_nanos(&self) -> u64 {
        (self.clock.now() - self.origin).as_nanos() as u64
    }
}

impl Timer for Skewed {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.clock.sleep_until(deadline)
    }

    fn sleep_until_shared(&self, deadline: Instant) -> Self::Sleep {
        self.clock.sleep_until_shared(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.clock.reset(sleep, deadline)
    }

    fn counter_nanos(&self) -> Option<u64> {
        Some(self.true_nanos() - BEHIND.with(Cell::get))
    }
}

/// Two threads take turns (a barrier between turns, time moving 100 ns a
/// turn); the second's counter reads `behind` ns behind the first's.
/// Returns the true times of the grants.
fn alternate(
    timer: &Skewed,
    behind: u64,
    turns: usize,
    check: impl Fn() -> bool + Sync,
) -> Vec<u64> {
    let granted = Mutex::new(Vec::new());
    let turn = Mutex::new(0usize);
    let cv = std::sync::Condvar::new();
    std::thread::scope(|s| {
        for me in 0..2usize {
            let (timer, granted, turn, cv, check) = (&timer, &granted, &turn, &cv, &check);
            s.spawn(move || {
                BEHIND.with(|b| b.set(if me == 1 { behind } else { 0 }));
                loop {
                    let mut t = turn.lock().unwrap();
                    while *t < turns && *t % 2 != me {
                        t = cv.wait(t).unwrap();
                    }
                    if *t >= turns {
                        return;
                    }
                    timer.clock.advance(Duration::from_nanos(100));
                    if check() {
                        granted.lock().unwrap().push(timer.true_nanos());
                    }
                    *t += 1;
                    cv.notify_all();
                }
            });
        }
    });
    granted.into_inner().unwrap()
}

fn strict_within(granted: &[u64], max: usize, period: u64) {
    assert!(
        granted.len() > 2 * max,
        "the test granted too little: {granted:?}"
    );
    for w in granted.windows(max + 1) {
        assert!(
            w[max] - w[0] >= period,
            "{} grants within {} ns of true time (period {period})",
            max + 1,
            w[max] - w[0]
        );
    }
}

/// Window of 3 calls per µs; one thread's counter reads 600 ns behind the
/// other's: never 4 grants within a µs of true time.
#[test]
fn a_strict_window_stays_strict_with_readings_out_of_order_across_threads() {
    let limiter = RateLimiter::with_quota(Quota::window(3, Duration::from_nanos(1_000)).unwrap())
        .with_timer(Skewed::new());
    let granted = alternate(limiter.timer(), 600, 400, || limiter.try_acquire().is_ok());
    strict_within(&granted, 3, 1_000);
}

/// GCRA of 1 call per 500 ns with a burst of 2: over any span of true
/// time, at most 2 + span / 500 grants, though one thread's counter reads
/// 600 ns behind the other's.
#[test]
fn gcra_stays_within_its_rate_with_readings_out_of_order_across_threads() {
    let limiter = RateLimiter::with_quota(Quota::gcra(2, Duration::from_nanos(1_000), 2).unwrap())
        .with_timer(Skewed::new());
    let granted = alternate(limiter.timer(), 600, 400, || limiter.try_acquire().is_ok());
    assert!(granted.len() > 10, "{granted:?}");
    for (i, &a) in granted.iter().enumerate() {
        for (j, &b) in granted[i..].iter().enumerate() {
            assert!(
                j as u64 + 1 <= 2 + (b - a) / 500,
                "{} grants in {} ns",
                j + 1,
                b - a
            );
        }
    }
}

/// A keyed strict window (3 calls per µs per key), the same out-of-order
/// readings: strict per key.
#[test]
fn a_keyed_strict_window_stays_strict_with_readings_out_of_order_across_threads() {
    let timer = Skewed::new();
    let limiter =
        KeyedRateLimiter::<u32>::with_quota(Quota::window(3, Duration::from_nanos(1_000)).unwrap())
            .with_timer(timer.clone());
    let granted = alternate(&timer, 600, 400, || limiter.try_acquire(7).is_ok());
    strict_within(&granted, 3, 1_000);
}
