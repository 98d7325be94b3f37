//! The default timer's clock with the most an NTP slew moves `Instant` (0.05 %): the clock stays on the counter
//! (the checks: `default_clock_checks`).

#![cfg(feature = "test-util")]

#[macro_use]
mod common;
#[path = "default_clock_checks/mod.rs"]
mod checks;

use awaitkit::time::{DefaultTimer, test_clock};
use checks::*;

/// The skew, set before anything reads the clock (each test calls it
/// first; the clock takes it when it is set up).
fn skewed() {
    test_clock::skew_calibration(500);
}

guarded! {
    fn readings_stay_monotonic_and_near_instant_on_threads() {
        skewed();
        readings_stay_monotonic_and_near_instant();
    if has_counter() {
        assert!(!test_clock::gave_up(), "a 500 ppm skew must not give the counter up");
        assert!(DefaultTimer::uses_cpu_counter());
    }
    }

    fn a_strict_window_never_over_grants_on_its_own_clock() {
        skewed();
        a_strict_window_never_over_grants();
    }
}

matrix! {
    async fn waiters_find_their_time_at_the_first_poll_after_the_wake() {
        skewed();
        waiters_find_their_time_at_the_wake().await;
    }
}
