//! Keyed rate limiter benchmarks (issue 18): `awaitkit::KeyedRateLimiter`
//! (strict window and GCRA) against governor's keyed limiter
//! (`governor::RateLimiter::keyed`: a `DashMap` of GCRA arrival times), in
//! the same run.
//!
//! Limiters (keys are `u64`):
//!
//! * `awaitkit_window`: `KeyedRateLimiter::new(10, 60 s)`;
//! * `awaitkit_gcra`: `KeyedRateLimiter::with_quota(Quota::gcra(10, 60 s, 10))`;
//! * `governor`: `RateLimiter::keyed(Quota::per_minute(10))` (burst 10).
//!
//! Groups (criterion, one iteration = one check, `iter_custom`):
//!
//! * `keyed_new_key`: each check is of a key never seen before (a scan or
//!   a botnet), on a limiter built for the sample outside the timed region
//!   and dropped after it (untimed). Every check must be granted. The
//!   `_acquire` rows do the same through `acquire`, each future polled once
//!   (granted at once) and dropped.
//! * `keyed_hot_key`: 64 keys checked round-robin on a limiter whose quota
//!   never runs out (awaitkit: `usize::MAX / 2` per second, GCRA's burst
//!   the same; governor: `per_second(u32::MAX)`, its largest).
//! * `keyed_two_threads`: two threads, each checking its own 64 hot keys
//!   (the quotas of `keyed_hot_key`); the time per check is the sample's
//!   wall time over the checks of one thread.
//!
//! Memory (not criterion): in a child process per limiter (this binary, run
//! again with `AWAITKIT_KEYED_MEMORY=<limiter>`), the resident set
//! (`/proc/self/statm`) before and after checking 10⁶ distinct keys once
//! each, within one period; bytes per key = the growth / 10⁶. Results on
//! stderr and in `<criterion dir>/keyed_memory.csv`.
//!
//! The memory children also measure strict-window keys holding grants at
//! several times (`awaitkit_window_2`, `_5`, `_10`: every key checked 2, 5
//! or 10 times, in rounds, so at distinct instants), and keys acquired once
//! through `acquire` and granted at once (`awaitkit_window_acquire`,
//! `awaitkit_gcra_acquire`: the future polled once, then dropped).
//!
//! For instruction counts, run the binary under callgrind with
//! `AWAITKIT_KEYED_MEMORY=<limiter>` (10⁶ new keys; with an `_acquire`
//! limiter, 10⁶ new keys acquired) or `AWAITKIT_KEYED_HOT=<limiter>` (10⁶
//! checks of 64 hot keys).

mod common;

use awaitkit::KeyedRateLimiter;
use awaitkit::rate_limiter::Quota;
use common::Settings;
use criterion::{BenchmarkGroup, Criterion, Throughput, black_box, measurement::WallTime};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
const HOT_KEYS: u64 = 64;

trait Keyed: Sync + Sized {
    /// The limiter: 10 per minute.
    fn per_minute() -> Self;
    /// A quota that never runs out.
    fn unlimited() -> Self;
    fn check(&self, key: u64) -> bool;
    /// An `acquire` polled once: granted at once.
    fn acquire(&self, key: u64) -> bool {
        self.check(key)
    }
}

/// Polls a keyed acquire once: whether it was granted at once.
#[inline]
fn acquired<F: Future<Output = Result<(), awaitkit::rate_limiter::RateLimitError>>>(
    future: F,
) -> bool {
    let future = pin!(future);
    matches!(
        future.poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Ok(()))
    )
}

struct Window(KeyedRateLimiter<u64>);
struct Gcra(KeyedRateLimiter<u64>);
struct Governor(governor::DefaultKeyedRateLimiter<u64>);

impl Keyed for Window {
    fn per_minute() -> Self {
        Window(KeyedRateLimiter::new(10, MINUTE))
    }
    fn unlimited() -> Self {
        Window(KeyedRateLimiter::new(
            usize::MAX / 2,
            Duration::from_secs(1),
        ))
    }
    #[inline]
    fn check(&self, key: u64) -> bool {
        self.0.try_acquire(key).is_ok()
    }
    #[inline]
    fn acquire(&self, key: u64) -> bool {
        acquired(self.0.acquire(key))
    }
}

impl Keyed for Gcra {
    fn per_minute() -> Self {
        Gcra(KeyedRateLimiter::with_quota(
            Quota::gcra(10, MINUTE, 10).unwrap(),
        ))
    }
    fn unlimited() -> Self {
        let quota = Quota::gcra(usize::MAX / 2, Duration::from_secs(1), usize::MAX / 2).unwrap();
        Gcra(KeyedRateLimiter::with_quota(quota))
    }
    #[inline]
    fn check(&self, key: u64) -> bool {
        self.0.try_acquire(key).is_ok()
    }
    #[inline]
    fn acquire(&self, key: u64) -> bool {
        acquired(self.0.acquire(key))
    }
}

impl Keyed for Governor {
    fn per_minute() -> Self {
        let quota = governor::Quota::per_minute(NonZeroU32::new(10).unwrap());
        Governor(governor::RateLimiter::keyed(quota))
    }
    fn unlimited() -> Self {
        Governor(governor::RateLimiter::keyed(governor::Quota::per_second(
            NonZeroU32::MAX,
        )))
    }
    #[inline]
    fn check(&self, key: u64) -> bool {
        self.0.check_key(&key).is_ok()
    }
}

fn new_key<L: Keyed>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, acquire: bool) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let limiter = L::per_minute();
            let start = Instant::now();
            for key in 0..iters {
                let key = black_box(key);
                let granted = if acquire {
                    limiter.acquire(key)
                } else {
                    limiter.check(key)
                };
                if !granted {
                    common::unexpected("a new key was refused");
                }
            }
            let elapsed = start.elapsed();
            drop(limiter);
            elapsed
        });
    });
}

fn hot_key<L: Keyed>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str) {
    let limiter = L::unlimited();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let limiter = black_box(&limiter);
            let start = Instant::now();
            for i in 0..iters {
                if !limiter.check(i % HOT_KEYS) {
                    common::unexpected("a hot key was refused");
                }
            }
            start.elapsed()
        });
    });
}

fn two_threads<L: Keyed>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str) {
    let limiter = L::unlimited();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let limiter = &limiter;
            let start = Instant::now();
            std::thread::scope(|s| {
                for thread in 0..2u64 {
                    s.spawn(move || {
                        let base = thread * HOT_KEYS;
                        for i in 0..iters {
                            if !limiter.check(base + i % HOT_KEYS) {
                                common::unexpected("a hot key was refused");
                            }
                        }
                    });
                }
            });
            start.elapsed()
        });
    });
}

/// Resident bytes of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const MEMORY_KEYS: u64 = 1_000_000;

/// In the child: RSS growth for 10⁶ distinct keys, each checked `rounds`
/// times (in rounds: at distinct instants) or acquired once, and the time
/// per check.
fn memory_child(which: &str) {
    fn run<L: Keyed>(rounds: u64, acquire: bool) -> (u64, Duration) {
        let before = rss();
        let limiter = L::per_minute();
        let start = Instant::now();
        for _ in 0..rounds {
            for key in 0..MEMORY_KEYS {
                let granted = if acquire {
                    limiter.acquire(key)
                } else {
                    limiter.check(key)
                };
                assert!(granted, "a key within its quota was refused");
            }
        }
        let elapsed = start.elapsed() / rounds as u32;
        let grown = rss().saturating_sub(before);
        black_box(&limiter);
        (grown, elapsed)
    }
    let (bytes, elapsed) = match which {
        "awaitkit_window" => run::<Window>(1, false),
        "awaitkit_window_2" => run::<Window>(2, false),
        "awaitkit_window_5" => run::<Window>(5, false),
        "awaitkit_window_10" => run::<Window>(10, false),
        "awaitkit_window_acquire" => run::<Window>(1, true),
        "awaitkit_gcra" => run::<Gcra>(1, false),
        "awaitkit_gcra_acquire" => run::<Gcra>(1, true),
        "governor" => run::<Governor>(1, false),
        other => panic!("unknown limiter {other}"),
    };
    println!("{bytes} {}", elapsed.as_nanos());
}

fn memory_group(settings: &Settings, passes: usize) {
    let exe = std::env::current_exe().expect("this bench's path");
    let mut rows = Vec::new();
    for name in [
        "awaitkit_window",
        "awaitkit_window_2",
        "awaitkit_window_5",
        "awaitkit_window_10",
        "awaitkit_window_acquire",
        "awaitkit_gcra",
        "awaitkit_gcra_acquire",
        "governor",
    ] {
        // Each pass is one shot in a fresh process (a cold table, the
        // page faults of its growth): the median of `passes`, so one pass
        // slowed by the machine does not decide the verdict.
        let mut runs: Vec<(u64, u64)> = (0..passes)
            .map(|_| {
                let out = std::process::Command::new(&exe)
                    .env("AWAITKIT_KEYED_MEMORY", name)
                    .output()
                    .expect("run the memory child");
                assert!(
                    out.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8(out.stdout).unwrap();
                let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
                (fields.next().unwrap(), fields.next().unwrap())
            })
            .collect();
        runs.sort_by_key(|&(_, nanos)| nanos);
        let (bytes, nanos) = runs[runs.len() / 2];
        let per_key = bytes as f64 / MEMORY_KEYS as f64;
        let per_check = nanos as f64 / MEMORY_KEYS as f64;
        eprintln!(
            "keyed_memory/{name}: +{:.1} MiB for {MEMORY_KEYS} keys = {per_key:.1} B/key; \
             {per_check:.0} ns per new-key check",
            bytes as f64 / (1 << 20) as f64
        );
        rows.push((name, per_key, per_check));
    }
    for (name, per_key, per_check) in rows {
        settings.upsert_csv(
            "keyed_memory.csv",
            "group,function,bytes_per_key,ns_per_new_key",
            &format!("keyed_memory,{name},"),
            &format!("{per_key:.1},{per_check:.0}"),
        );
    }
}

/// For instruction counts (`valgrind --tool=callgrind`): 10⁶ checks of 64
/// hot keys on the limiter named by `AWAITKIT_KEYED_HOT`.
fn hot_child(which: &str) {
    fn run<L: Keyed>() {
        let limiter = L::unlimited();
        for i in 0..MEMORY_KEYS {
            assert!(
                limiter.check(black_box(i % HOT_KEYS)),
                "a hot key was refused"
            );
        }
    }
    match which {
        "awaitkit_window" => run::<Window>(),
        "awaitkit_gcra" => run::<Gcra>(),
        "governor" => run::<Governor>(),
        other => panic!("unknown limiter {other}"),
    }
}

fn main() {
    if let Ok(which) = std::env::var("AWAITKIT_KEYED_MEMORY") {
        memory_child(&which);
        return;
    }
    if let Ok(which) = std::env::var("AWAITKIT_KEYED_HOT") {
        hot_child(&which);
        return;
    }
    let settings = Settings::from_env();
    let mut c: Criterion = settings.criterion().configure_from_args();
    // `cargo bench` passes `--bench`; criterion's test mode (`cargo test
    // --benches`, as CI runs it) does not.
    let test_mode = !std::env::args().any(|a| a == "--bench");
    settings.write_run_marker("awaitkit-bench-run-keyed.txt");

    let mut group = c.benchmark_group("keyed_new_key");
    group.throughput(Throughput::Elements(1));
    new_key::<Window>(&mut group, "awaitkit_window", false);
    new_key::<Gcra>(&mut group, "awaitkit_gcra", false);
    new_key::<Governor>(&mut group, "governor", false);
    // The same through `acquire`, each future polled once (granted at once).
    new_key::<Window>(&mut group, "awaitkit_window_acquire", true);
    new_key::<Gcra>(&mut group, "awaitkit_gcra_acquire", true);
    group.finish();

    let mut group = c.benchmark_group("keyed_hot_key");
    group.throughput(Throughput::Elements(1));
    hot_key::<Window>(&mut group, "awaitkit_window");
    hot_key::<Gcra>(&mut group, "awaitkit_gcra");
    hot_key::<Governor>(&mut group, "governor");
    group.finish();

    let mut group = c.benchmark_group("keyed_two_threads");
    group.throughput(Throughput::Elements(1));
    two_threads::<Window>(&mut group, "awaitkit_window");
    two_threads::<Gcra>(&mut group, "awaitkit_gcra");
    two_threads::<Governor>(&mut group, "governor");
    group.finish();

    c.final_summary();
    // (In test mode one pass a limiter: its checks still run.)
    memory_group(&settings, if test_mode { 1 } else { 3 });
}
