//! Callgrind harness (not a criterion bench): instructions per non-waiting
//! rate limiter check on the default timers (`rate_limiter_check`'s
//! workload: a quota that never runs out), each batch of checks inside an
//! `#[inline(never)]` function to toggle collection on:
//!
//! ```text
//! cargo bench -p awaitkit-benches --bench cg_rate_limiter --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_*' \
//!   <bin> [strict|gcra|governor] [checks = 100000]
//! ```
//!
//! Instructions per check = the collected total / (1.1 × checks): a
//! tenth as many checks warm each limiter up first, collected too. Without
//! arguments (as `cargo test --benches` runs it) the binary runs 1 000
//! checks of each and checks they were all granted.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

#[inline(never)]
fn run_awaitkit(limiter: &awaitkit::RateLimiter, checks: u64) -> u64 {
    let mut granted = 0;
    for _ in 0..checks {
        granted += u64::from(black_box(limiter).try_acquire().is_ok());
    }
    granted
}

#[inline(never)]
fn run_governor(limiter: &governor::DefaultDirectRateLimiter, checks: u64) -> u64 {
    let mut granted = 0;
    for _ in 0..checks {
        granted += u64::from(black_box(limiter).check().is_ok());
    }
    granted
}

fn one(which: &str, checks: u64) {
    let (max, period) = (usize::MAX / 2, Duration::from_secs(1));
    // Past the default timers' calibration of their counter (its first
    // 100 ms read `Instant`), as any process that checks for long is.
    let _ = awaitkit::RateLimiter::new(1, period).try_acquire();
    std::thread::sleep(Duration::from_millis(150));
    let granted = match which {
        "strict" => {
            let limiter = awaitkit::RateLimiter::new(max, period);
            run_awaitkit(&limiter, checks / 10);
            run_awaitkit(&limiter, checks)
        }
        "gcra" => {
            let limiter = awaitkit::RateLimiter::gcra(max, period, max);
            run_awaitkit(&limiter, checks / 10);
            run_awaitkit(&limiter, checks)
        }
        "governor" => {
            let limiter =
                governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
            run_governor(&limiter, checks / 10);
            run_governor(&limiter, checks)
        }
        other => panic!("unknown limiter {other:?}: strict, gcra or governor"),
    };
    assert_eq!(granted, checks, "{which}: every check granted");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first() {
        None => {
            for which in ["strict", "gcra", "governor"] {
                one(which, 1_000);
            }
        }
        Some(which) => {
            let checks = args
                .get(1)
                .map_or(100_000, |n| n.parse().expect("a number of checks"));
            one(which, checks);
        }
    }
}
