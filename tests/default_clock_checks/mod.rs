//! The default timer's clock (the CPU's time-stamp counter mapped onto
//! `Instant`, `src/time/clock.rs`), checked the same way by three test
//! binaries, each with its own calibration skew (the skew is process-wide
//! and taken when the clock is set up, about 100 ms after its first
//! reading):
//!
//! * `default_clock`: +500 ppm, the most an NTP slew moves `Instant`: the
//!   clock must stay on the counter;
//! * `default_clock_slow`: −20 %: a clock that runs slow between
//!   re-synchronisations must still never over-grant, and a waiter woken by
//!   a sleep on an `Instant`-based timer must find its grant ready;
//! * `default_clock_fast`: +20 %: a clock that runs ahead of `Instant` must
//!   give the counter up (and never lead `Instant` by more than a little).
//!
//! With `AWAITKIT_CLOCK=instant` (CI runs `default_clock` that way too) the
//! clock is `Instant` throughout and the same checks hold.

use crate::common::Counter;
use awaitkit::RateLimiter;
use awaitkit::time::{DefaultTimer, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long the threaded checks read the clock: past the set-up (about
/// 100 ms after the first reading) and many re-synchronisations.
pub(crate) const SPAN: Duration = Duration::from_millis(300);

/// A lead over `Instant` no working clock shows (the give-up threshold is
/// 50 µs, plus one 64 µs re-synchronisation interval at +20 %).
const MAX_LEAD: Duration = Duration::from_millis(1);
/// A lag behind `Instant` no working clock shows (64 µs at −20 % is 13 µs;
/// this leaves room for a thread preempted between its two reads).
const MAX_LAG: Duration = Duration::from_millis(20);

/// Whether the process can use the counter at all (an invariant TSC, and
/// no `AWAITKIT_CLOCK=instant`).
pub(crate) fn has_counter() -> bool {
    awaitkit::watch::uses_cpu_counter()
}

/// On a few threads at once for [`SPAN`]: every thread's readings of
/// `now()` and `counter_nanos()` never go backwards, the two advance
/// together, and `now()` stays within [`MAX_LEAD`] / [`MAX_LAG`] of the
/// `Instant`s read around it.
pub(crate) fn readings_stay_monotonic_and_near_instant() {
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let start = Instant::now();
                let mut last = DefaultTimer.now();
                let mut last_counter = DefaultTimer.counter_nanos().expect("a counter");
                let mut last_after = DefaultTimer.now();
                let mut reads = 0u64;
                while start.elapsed() < SPAN {
                    let before = Instant::now();
                    let now = DefaultTimer.now();
                    let counter = DefaultTimer.counter_nanos().expect("a counter");
                    let after_now = DefaultTimer.now();
                    let after = Instant::now();
                    assert!(now >= last, "now() went back by {:?}", last - now);
                    assert!(after_now >= now, "now() went back by {:?}", now - after_now);
                    assert!(
                        counter >= last_counter,
                        "counter_nanos() went back by {} ns",
                        last_counter - counter
                    );
                    assert!(
                        after_now <= after + MAX_LEAD,
                        "now() is {:?} ahead of Instant",
                        after_now - after
                    );
                    assert!(
                        now + MAX_LAG >= before,
                        "now() is {:?} behind Instant",
                        before - now
                    );
                    // The counter moves with `now()`: between two counter
                    // readings, no less than between the `now()`s read just
                    // after the first and just before the second, and no
                    // more than between those read just before the first
                    // and just after the second.
                    let moved = Duration::from_nanos(counter - last_counter);
                    let (least, most) = (
                        now.saturating_duration_since(last_after),
                        after_now.duration_since(last),
                    );
                    let slack = Duration::from_micros(1);
                    assert!(
                        moved + slack >= least && moved <= most + slack,
                        "counter_nanos() moved {moved:?}, now() between {least:?} and {most:?}"
                    );
                    last = now;
                    last_counter = counter;
                    last_after = after_now;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("reader thread") > 0);
    }
}

/// A strict window of `max` calls per `period` hammered by a few threads
/// for [`SPAN`] (across the clock's set-up and its re-synchronisations):
/// no `max + 1` grants ever fit in less than `period` on the limiter's own
/// clock. Each grant happened between the default timer's readings taken
/// just before and just after its `try_acquire`, so `max + 1` grants whose
/// readings all lie within less than a period are certainly too many.
pub(crate) fn a_strict_window_never_over_grants() {
    const MAX: usize = 3;
    let period = Duration::from_micros(700);
    let limiter = Arc::new(RateLimiter::new(MAX, period));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let limiter = limiter.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut grants = Vec::new();
                while start.elapsed() < SPAN {
                    let before = DefaultTimer.now();
                    let granted = limiter.try_acquire().is_ok();
                    let after = DefaultTimer.now();
                    if granted {
                        grants.push((before, after));
                    }
                }
                grants
            })
        })
        .collect();
    let mut grants: Vec<(Instant, Instant)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("checking thread"))
        .collect();
    grants.sort();
    assert!(grants.len() > MAX, "only {} grants", grants.len());
    for (i, window) in grants.windows(MAX + 1).enumerate() {
        let first_before = window[0].0;
        let last_after = window.iter().map(|g| g.1).max().expect("not empty");
        assert!(
            last_after.duration_since(first_before) >= period,
            "grants {i}..={}: {} within {:?} < {period:?}",
            i + MAX,
            MAX + 1,
            last_after.duration_since(first_before)
        );
    }
}

/// Counts the polls of a future.
pub(crate) struct Polls<F> {
    pub(crate) future: Pin<Box<F>>,
    pub(crate) polls: Counter,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.inc();
        self.future.as_mut().poll(cx)
    }
}

pub(crate) fn polls<F: Future>(future: F) -> (Polls<F>, Counter) {
    let polls = Counter::new();
    (
        Polls {
            future: Box::pin(future),
            polls: polls.clone(),
        },
        polls,
    )
}

/// Most polls a waiter needs: the first, the wake at its time, and one
/// spare (an executor may poll once more). A waiter that spun or re-slept
/// because the clock read a little before its deadline would be polled
/// far more often.
const MOST_POLLS: usize = 4;

/// A rate-limit waiter and a timeout, each woken by a sleep on an
/// `Instant`-based timer (futures-timer, or tokio's inside tokio), find
/// their time come at the first poll after the wake; and the waits are not
/// shorter than asked on `Instant` (lower bounds only: a grant is never
/// early by more than the clock's largest lag).
pub(crate) async fn waiters_find_their_time_at_the_wake() {
    // Past the clock's set-up (about 100 ms after its first reading, from a
    // reading outside tokio's current-thread runtimes), so the waits below
    // run on the counter where there is one.
    for _ in 0..40 {
        if !has_counter() || DefaultTimer::uses_cpu_counter() {
            break;
        }
        let _ = std::thread::spawn(|| DefaultTimer.now()).join();
        let nap = Instant::now() + Duration::from_millis(10);
        awaitkit::time::FuturesTimer.sleep_until(nap).await;
    }
    let period = Duration::from_millis(3);
    let limiter = RateLimiter::new(1, period);
    let start = Instant::now();
    limiter.acquire().await; // granted at once
    for i in 1..=4u32 {
        let (acquire, polled) = polls(limiter.acquire());
        acquire.await;
        assert!(
            polled.get() <= MOST_POLLS,
            "acquire {i} was polled {} times",
            polled.get()
        );
        let waited = start.elapsed();
        assert!(
            waited + MAX_LAG_FOR_WAITS >= period * i,
            "grant {i} after {waited:?} < {:?}",
            period * i
        );
    }
    let before = Instant::now();
    let (deadline, polled) = polls(awaitkit::timeout(
        Duration::from_millis(5),
        std::future::pending::<()>(),
    ));
    assert!(deadline.await.is_err());
    assert!(
        polled.get() <= MOST_POLLS,
        "the timeout was polled {} times",
        polled.get()
    );
    assert!(before.elapsed() + MAX_LAG_FOR_WAITS >= Duration::from_millis(5));
}

/// How much earlier than asked (on `Instant`) a wait may end: the clock's
/// lag behind `Instant` (13 µs at −20 %), with room.
const MAX_LAG_FOR_WAITS: Duration = Duration::from_micros(500);
