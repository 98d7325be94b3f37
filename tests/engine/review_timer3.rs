#![cfg(feature = "test-util")]
//! Adversarial review of the default timers' counter (issue 17 item 5):
//! a rate limiter stays strict when its counter's readings from different
//! threads arrive out of order (a counter read without a fence, as the
//! default timers' is: monotonic per thread only), keyed limiters too; and
//! a waiter's wake-up deadline on a counter that runs slower than `now()`
//! (the default timers' runs about a part per million slow).

use crate::common;

use awaitkit::rate_limiter::Quota;
use awaitkit::time::ManualClock;
use awaitkit::{KeyedRateLimiter, RateLimiter, Timer};
use common::CountingWaker;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

thread_local! {
    /// How far behind this thread's counter reads (ns).
    static BEHIND: Cell<u64> = const { Cell::new(0) };
}

/// A manual clock whose counter runs at `num / den` of its `now()` and
/// reads `BEHIND` nanoseconds behind on this thread: two threads' readings
/// arrive out of order, as the counter of two cores read without a fence
/// can.
#[derive(Clone)]
struct Skewed {
    clock: ManualClock,
    origin: Instant,
    num: u64,
    den: u64,
}

impl Skewed {
    fn new() -> Skewed {
        let clock = ManualClock::new();
        // The counter's origin is far enough back that readings behind it
        // stay positive.
        clock.advance(Duration::from_secs(1));
        let origin = clock.now() - Duration::from_secs(1);
        Skewed {
            clock,
            origin,
            num: 1,
            den: 1,
        }
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
        let scaled = u128::from(self.true_nanos()) * u128::from(self.num) / u128::from(self.den);
        Some(scaled as u64 - BEHIND.with(Cell::get))
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
                (j as u64) < 2 + (b - a) / 500,
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

/// A waiter on a limiter whose counter runs at `num / den` of `now()`
/// (1 call per `period`, the second call waits): the sleeps it takes
/// (each woken by the manual clock reaching the next deadline) and when
/// it is granted, after the first call, on `now()`'s clock.
fn wait_on_scaled(num: u64, den: u64, period: Duration) -> (usize, Duration) {
    let clock = ManualClock::new();
    let timer = Skewed {
        origin: clock.now(),
        clock: clock.clone(),
        num,
        den,
    };
    let limiter = RateLimiter::with_quota(Quota::window(1, period).unwrap()).with_timer(timer);
    clock.advance(Duration::from_millis(1));
    limiter.try_acquire().unwrap();
    let start = clock.now();
    let waker = CountingWaker::new();
    let mut acquire = Box::pin(limiter.acquire());
    let mut sleeps = 0;
    while acquire.as_mut().poll(&mut waker.context()).is_pending() {
        let next = clock
            .next_deadline()
            .expect("a pending waiter has a sleep armed");
        assert!(
            next > clock.now() || sleeps == 0,
            "a sleep already due: a busy loop"
        );
        clock.advance_to(next);
        sleeps += 1;
        assert!(sleeps <= 64, "{sleeps} sleeps for one grant");
    }
    (sleeps, clock.now() - start)
}

/// A counter a part per million slow (the default timers'): a waiter for
/// an hour sleeps a handful of times and is granted within a few
/// microseconds of the time the counter reaches its grant.
#[test]
fn a_waiter_on_a_slightly_slow_counter_sleeps_a_few_times_and_not_late() {
    let hour = Duration::from_secs(3_600);
    let (sleeps, waited) = wait_on_scaled(999_999, 1_000_000, hour);
    // The counter reaches the grant at an hour / (1 - 10⁻⁶) of `now()`.
    let due = Duration::from_nanos((3_600_000_000_000u128 * 1_000_000 / 999_999) as u64);
    assert!(
        waited + Duration::from_nanos(2) >= due,
        "early: {waited:?} < {due:?}"
    );
    assert!(
        waited <= due + Duration::from_micros(10),
        "late: {waited:?} > {due:?}"
    );
    assert!(sleeps <= 4, "{sleeps} sleeps");
}

/// A counter at half the rate of `now()` (a broken backend; the default
/// timers' is measured again within ~100 ms): no busy loop, and the grant
/// comes within a few milliseconds of the time the counter reaches it.
#[test]
fn a_waiter_on_a_half_rate_counter_is_not_busy_nor_much_late() {
    let (sleeps, waited) = wait_on_scaled(1, 2, Duration::from_secs(1));
    assert!(waited >= Duration::from_secs(2), "early: {waited:?}");
    assert!(
        waited <= Duration::from_millis(2_005),
        "late: {waited:?} ({sleeps} sleeps)"
    );
    assert!(sleeps <= 16, "{sleeps} sleeps");
}

/// A period of `Duration::MAX` on a counter: the waiter's deadline is
/// beyond `Instant`'s range; nothing is armed that would come due (no
/// busy loop), and the waiter stays pending.
#[test]
fn a_waiter_for_a_duration_max_period_arms_nothing_due() {
    let clock = ManualClock::new();
    let timer = Skewed {
        origin: clock.now(),
        clock: clock.clone(),
        num: 1,
        den: 1,
    };
    let limiter =
        RateLimiter::with_quota(Quota::window(1, Duration::MAX).unwrap()).with_timer(timer);
    limiter.try_acquire().unwrap();
    let waker = CountingWaker::new();
    let mut acquire = Box::pin(limiter.acquire());
    for _ in 0..3 {
        assert!(acquire.as_mut().poll(&mut waker.context()).is_pending());
        if let Some(next) = clock.next_deadline() {
            assert!(next > clock.now(), "a sleep already due");
            clock.advance_to(next);
        }
    }
    assert_eq!(waker.wakes(), 0, "no wake for a grant that never comes");
}
