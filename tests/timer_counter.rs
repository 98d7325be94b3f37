//! The default timers' cheap counter (`Timer::counter_nanos`): the CPU's
//! invariant time-stamp counter where there is one, `None` elsewhere and
//! under `AWAITKIT_TIMER_CLOCK=instant`; with the `tokio` feature, tokio's
//! (possibly paused) clock inside a tokio runtime, as `DefaultTimer::now()`
//! is. The conversion itself (calibration, resets, jumps, fast and slow
//! counters against a strict window) is tested on fake readings in
//! `src/time/counter.rs`, and its concurrency in a loom model.

#[path = "common/paused_clock.rs"]
mod paused_clock;

use awaitkit::RateLimiter;
use awaitkit::time::{DefaultTimer, FuturesTimer, Timer};
use std::process::Command;
use std::time::Duration;

/// Whether this process runs with the counter switched off.
fn forced_off() -> bool {
    std::env::var_os("AWAITKIT_TIMER_CLOCK").is_some_and(|v| v == "instant")
}

#[test]
fn both_default_timers_offer_the_same_counter_or_none() {
    let futures = FuturesTimer.counter_nanos();
    let default = DefaultTimer.counter_nanos();
    assert_eq!(futures.is_some(), default.is_some());
    if forced_off() {
        assert_eq!(futures, None, "AWAITKIT_TIMER_CLOCK=instant: no counter");
        return;
    }
    if let (Some(a), Some(b)) = (futures, default) {
        // One clock: the second reading is not below the first.
        assert!(b >= a);
        for _ in 0..1_000 {
            assert!(FuturesTimer.counter_nanos().is_some(), "Some always");
        }
    }
}

#[test]
fn the_counter_follows_instant_over_a_sleep() {
    let Some(_) = FuturesTimer.counter_nanos() else {
        return;
    };
    // Past the calibration (the counter's first 100 ms are `Instant`'s).
    std::thread::sleep(Duration::from_millis(150));
    let _ = FuturesTimer.counter_nanos();
    let before = std::time::Instant::now();
    let a = FuturesTimer.counter_nanos().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let b = FuturesTimer.counter_nanos().unwrap();
    let elapsed = before.elapsed();
    // Never more than `Instant` saw (plus one range an anomaly may add, and
    // the pairing error); at least the sleep, less the part per million it
    // runs slow and the calibration error.
    let counted = Duration::from_nanos(b - a);
    assert!(
        counted <= elapsed + Duration::from_micros(1_100),
        "{counted:?} > {elapsed:?}"
    );
    assert!(counted >= Duration::from_micros(29_900), "{counted:?}");
}

/// The fallback: the same tests, re-run in a child process with
/// `AWAITKIT_TIMER_CLOCK=instant`, see no counter, and a rate limiter on
/// the default timer still works there (on `Instant`).
#[test]
fn the_environment_variable_switches_the_counter_off() {
    if forced_off() {
        assert_eq!(DefaultTimer.counter_nanos(), None);
        let limiter = RateLimiter::new(2, Duration::from_secs(3600));
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_err(), "a strict window on Instant");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env("AWAITKIT_TIMER_CLOCK", "instant")
        .args(["--exact", "--test-threads=1"])
        .args([
            "the_environment_variable_switches_the_counter_off",
            "both_default_timers_offer_the_same_counter_or_none",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 passed"), "{stdout}");
}

/// A current-thread runtime whose clock starts paused.
#[cfg(feature = "tokio")]
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// With the `tokio` feature, `DefaultTimer`'s counter inside a runtime
/// whose clock is paused moves exactly as tokio's `now()` does: an `advance`
/// of an hour is an hour of counter, and nothing passes otherwise — so a
/// rate limiter on the default timer keeps moving in paused-time tests.
#[cfg(feature = "tokio")]
#[test]
fn inside_a_paused_tokio_runtime_the_counter_is_tokios_clock() {
    let runtime = paused_runtime();
    runtime.block_on(async {
        let Some(a) = DefaultTimer.counter_nanos() else {
            return;
        };
        let now = DefaultTimer.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = DefaultTimer.counter_nanos().unwrap();
        assert_eq!(b, a, "paused: no time passes");
        tokio::time::advance(Duration::from_secs(3600)).await;
        let c = tokio::spawn(async { DefaultTimer.counter_nanos().unwrap() })
            .await
            .unwrap();
        assert_eq!(c, a + (DefaultTimer.now() - now).as_nanos() as u64);
        assert!(c > a + 3_599_000_000_000, "an hour passed");
        // A strict window on the default timer moves with it.
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            limiter.try_acquire().is_ok(),
            "a minute of paused time passed"
        );
        // FuturesTimer's clock is `Instant`'s, paused or not: its counter too.
        if let Some(f) = FuturesTimer.counter_nanos() {
            assert!(f < c, "the real clock is an hour behind the advanced one");
        }
    });
}

/// Checks, inside a runtime whose clock is paused, that the counter stands
/// still over a real sleep and moves by exactly an `advance`; returns the first reading.
#[cfg(feature = "tokio")]
async fn follows_the_paused_clock() -> u64 {
    let a = DefaultTimer.counter_nanos().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(DefaultTimer.counter_nanos().unwrap(), a, "paused");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(DefaultTimer.counter_nanos().unwrap(), a + 60_000_000_000);
    a
}

/// A task that reads the counter and then pauses its runtime's clock is
/// followed from then on: inside a current-thread runtime (the flavour whose
/// clock can be paused) the counter is always tokio's clock, also when the
/// thread remembers the task from a reading made before the pause.
#[cfg(feature = "tokio")]
#[test]
fn a_task_that_pauses_its_runtime_after_a_reading_is_followed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::spawn(async {
            let Some(before) = DefaultTimer.counter_nanos() else {
                return;
            };
            tokio::time::pause();
            assert!(follows_the_paused_clock().await >= before);
        })
        .await
        .unwrap();
    });
}

/// Inside a multi-thread runtime (whose clock tokio never pauses) the
/// counter is the cheap one; what a thread remembers of its last task never
/// carries over to another: a worker that runs a paused current-thread
/// runtime inside `block_in_place` follows the paused clock in that
/// runtime's tasks, and the real clock again in its own task afterwards.
#[cfg(feature = "tokio")]
#[test]
fn a_paused_runtime_inside_a_multi_thread_worker_is_followed_in_its_tasks() {
    let outer = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    outer.block_on(async {
        tokio::spawn(async {
            let Some(first) = DefaultTimer.counter_nanos() else {
                return;
            };
            // The cheap counter itself: the same reading as `FuturesTimer`'s.
            let futures = FuturesTimer.counter_nanos().unwrap();
            let second = DefaultTimer.counter_nanos().unwrap();
            assert!(first <= futures && futures <= second);
            tokio::task::block_in_place(|| {
                let inner = paused_runtime();
                inner.block_on(async {
                    tokio::spawn(follows_the_paused_clock()).await.unwrap();
                });
            });
            let x = DefaultTimer.counter_nanos().unwrap();
            std::thread::sleep(Duration::from_millis(2));
            let y = DefaultTimer.counter_nanos().unwrap();
            assert!(y - x >= 2_000_000, "real time again: {} ns", y - x);
        })
        .await
        .unwrap();
    });
}

/// Another thread reading the cheap counter (re-anchoring it about every
/// millisecond, as a busy process does, which makes its lag behind
/// `Instant` grow) until the returned guard is dropped.
#[cfg(feature = "tokio")]
fn busy_counter() -> impl Drop {
    paused_clock::busy(1, Duration::from_micros(300))
}

/// One paused instant reads the same through the counter wherever the
/// runtime's clock is read — the `block_on` body, its tasks, a blocking
/// task on another thread — and for as long as the test runs, while
/// another thread keeps re-anchoring the counter (its lag behind `Instant`
/// grows meanwhile): the runtime's offset is fixed, so a limiter advanced
/// by exactly one period always grants.
#[cfg(feature = "tokio")]
#[test]
fn one_paused_instant_reads_the_same_everywhere_in_its_runtime() {
    let _busy = busy_counter();
    let runtime = paused_runtime();
    runtime.block_on(async {
        let Some(first) = DefaultTimer.counter_nanos() else {
            return;
        };
        let limiter = RateLimiter::new(1, Duration::from_millis(10));
        for round in 0..50u64 {
            assert!(limiter.try_acquire().is_ok(), "round {round}: refused");
            let expected = first + round * 10_000_000;
            let body = DefaultTimer.counter_nanos().unwrap();
            let task = tokio::spawn(async { DefaultTimer.counter_nanos().unwrap() });
            let blocking = tokio::task::spawn_blocking(|| DefaultTimer.counter_nanos().unwrap());
            let (task, blocking) = (task.await.unwrap(), blocking.await.unwrap());
            assert_eq!(
                (body, task, blocking),
                (expected, expected, expected),
                "round {round}"
            );
            std::thread::sleep(Duration::from_millis(2));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    });
}

/// In a current-thread runtime on real time, the counter is the counter
/// itself, as outside any runtime: a reading there falls between the
/// counter's readings just before and just after on the same thread (a
/// limiter used inside and outside the runtime reads one clock, never
/// going back), while another thread keeps re-anchoring the counter.
#[cfg(feature = "tokio")]
#[test]
fn a_real_time_runtime_reads_the_counter_itself() {
    let _busy = busy_counter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        if DefaultTimer.counter_nanos().is_none() {
            return;
        }
        for _ in 0..200 {
            let before = FuturesTimer.counter_nanos().unwrap();
            let inside = DefaultTimer.counter_nanos().unwrap();
            let after = FuturesTimer.counter_nanos().unwrap();
            assert!(
                before <= inside && inside <= after,
                "{before} <= {inside} <= {after}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    });
}

/// A thread preempted between its readings of the counter and of tokio's
/// clock (more busy threads than cores here) still takes a real-time
/// runtime's clock for real time: every reading falls between the
/// counter's readings around it, and the runtime never moves off the
/// counter (a reading taken for a paused or resumed clock would put the
/// runtime on a timeline of its own, drifting ahead of the counter).
#[cfg(feature = "tokio")]
#[test]
fn a_real_time_runtime_read_under_preemption_stays_on_the_counter() {
    if DefaultTimer.counter_nanos().is_none() {
        return;
    }
    let hogs = paused_clock::hogs(4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let outside = runtime.block_on(async {
        let mut outside = 0;
        for _ in 0..200_000 {
            let before = FuturesTimer.counter_nanos().unwrap();
            let inside = DefaultTimer.counter_nanos().unwrap();
            let after = FuturesTimer.counter_nanos().unwrap();
            outside += usize::from(!(before <= inside && inside <= after));
        }
        outside
    });
    drop(hogs);
    assert_eq!(outside, 0, "readings off the counter (of 200 000)");
}
