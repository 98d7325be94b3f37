//! Helpers of the paused-clock tests (`review_offset.rs`,
//! `review_twice.rs`, `review_third.rs`, `timer_counter.rs`): runtimes, busy
//! counter readers that grow the counter's lag, CPU hogs, and probes of
//! that lag.
#![allow(dead_code)]

use awaitkit::time::{DefaultTimer, FuturesTimer, Timer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One test at a time in this file: they fill the table of paused
/// runtimes' offsets and grow the counter's lag, which others would see.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn counter_off() -> bool {
    FuturesTimer.counter_nanos().is_none()
}

/// Past the counter's calibration (its first ~100 ms of readings are
/// `Instant`'s own).
pub fn calibrated() {
    let _ = FuturesTimer.counter_nanos();
    std::thread::sleep(Duration::from_millis(150));
    for _ in 0..3 {
        let _ = FuturesTimer.counter_nanos();
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn current_thread(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(paused)
        .build()
        .unwrap()
}

/// Threads running a loop until dropped.
pub struct Busy(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);
impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// `threads` threads running `step` over and over until dropped.
fn looping(threads: usize, step: fn(Duration), pause: Duration) -> Busy {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    step(pause);
                }
            })
        })
        .collect();
    Busy(stop, handles)
}

/// `threads` threads reading the counter with `pause` between reads (each
/// read out of range re-anchors it, which grows its lag) until dropped.
pub fn busy(threads: usize, pause: Duration) -> Busy {
    looping(
        threads,
        |pause| {
            let _ = FuturesTimer.counter_nanos();
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        },
        pause,
    )
}

/// `threads` threads spinning (more than the cores: the readers under test
/// are preempted) until dropped.
pub fn hogs(threads: usize) -> Busy {
    looping(threads, |_| std::hint::spin_loop(), Duration::ZERO)
}

/// A probe of the counter's lag (up to a constant): a fresh paused runtime
/// reads `value(I) - lag` at its paused instant `I` (on 754f038, less a
/// constant headroom too), so for two
/// probes `lag2 - lag1 = (I2 - I1) - (r2 - r1)`. (Each probe is a new
/// runtime: it takes a slot of the offset table.)
pub fn lag_probe() -> (Instant, u64) {
    current_thread(true).block_on(async {
        (
            tokio::time::Instant::now().into_std(),
            DefaultTimer.counter_nanos().unwrap(),
        )
    })
}
pub fn lag_growth(a: (Instant, u64), b: (Instant, u64)) -> i64 {
    b.0.duration_since(a.0).as_nanos() as i64 - (b.1 as i64 - a.1 as i64)
}

/// Grows the counter's lag by at least `min_ns` (busy readers until the
/// probes show it), for at most `limit`; returns the growth seen. Runs on
/// another thread (the probes' runtimes would evict this thread's copies).
pub fn grow_lag(min_ns: i64, limit: Duration) -> i64 {
    std::thread::spawn(move || grow_lag_here(min_ns, limit))
        .join()
        .unwrap()
}
pub fn grow_lag_here(min_ns: i64, limit: Duration) -> i64 {
    let _busy = busy(4, Duration::from_micros(900));
    let start = Instant::now();
    let first = lag_probe();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let g = lag_growth(first, lag_probe());
        if g >= min_ns || start.elapsed() > limit {
            return g;
        }
    }
}
