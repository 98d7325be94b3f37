//! Rate limiter benchmarks: `awaitkit::RateLimiter` against governor and
//! leaky-bucket, side by side, as `/work/shared/BENCH.md` describes them.
//!
//! Functions (one per limiter in every group, same workload):
//!
//! * `awaitkit_strict`: `RateLimiter::new` (the strict sliding window: a
//!   log of the last period's grants under a mutex).
//! * `awaitkit_gcra`: `RateLimiter::gcra` (lock-free checks: a clock read
//!   and a compare-and-swap while nobody waits).
//! * `governor`: `governor::RateLimiter::direct` (GCRA on its default
//!   clock, quanta's TSC clock): `check()` / `until_ready()`.
//! * `leaky_bucket_fair` / `leaky_bucket_unfair`: `leaky_bucket::RateLimiter`
//!   with `fair(true)` (its default) / `fair(false)`: `try_acquire(1)` /
//!   `acquire_one()`. A fair leaky-bucket's `try_acquire` always takes its
//!   lock and reads the clock; an unfair one first tries one
//!   compare-and-swap on the token balance and reads no clock.
//!
//! Groups:
//!
//! * `rate_limiter_check` (criterion): non-waiting checks on a limiter whose
//!   quota never runs out, one criterion iteration = one check
//!   (`Bencher::iter_custom`: a tight loop of as many checks as criterion
//!   asks for, every result checked, the limiter behind `black_box`; BENCH.md's
//!   10⁶ is the order of one sample, and the untimed check runs exactly
//!   10⁶). The limiter is built once per function, outside the timed
//!   region, and used for the untimed check and all timed runs, so a
//!   window's log reaches its steady state (warm-up and measurement span
//!   more than one period). Quotas that never run out:
//!   - awaitkit strict: `RateLimiter::new(usize::MAX / 2, 1 s)`. Above 1 024
//!     calls per period the log merges grants closer than `period / 1024`
//!     into one entry, so it holds about 1 024 entries at most (one per
//!     ~1 ms here) and every check pays the expiry of the entries older than
//!     one period.
//!   - awaitkit GCRA: `RateLimiter::gcra(usize::MAX / 2, 1 s, usize::MAX / 2)`:
//!     an interval of 1 ns (rounded up), a burst that never runs out.
//!   - governor: `Quota::per_second(NonZeroU32::MAX)`: an interval of 1 ns
//!     (governor's minimum) and a burst of 2³² − 1, the same shape as the
//!     awaitkit GCRA quota.
//!   - leaky-bucket: `initial` = `max` = `usize::MAX` (capped at its
//!     `isize::MAX` balance), refill 1 per 100 ms (its defaults).
//!
//!   The untimed check (the first time criterion runs a function) asserts
//!   that all 10⁶ checks were granted. Memory: a counting global allocator
//!   tracks the bytes live on the heap; they are read after each timed
//!   sample (outside the timed region) and the growth from the first timed
//!   sample to the largest later reading is recorded: the timed runs span
//!   more than one period (1.2 s quick, 4 s full), so a log that kept a
//!   grant per check would grow by megabytes there, while the strict
//!   window's merged log settles at about 1 024 entries (16 B each, in a
//!   `VecDeque` that doubles: at most 32 KiB). The first function's growth
//!   also counts the log reaching that size; the others must show 0.
//!   Results: `<criterion dir>/rate_limiter_checks.csv` and stderr.
//! * `rate_limiter_accuracy` (not criterion: not a speed benchmark): 1 000
//!   calls per second, 2 000 awaited acquisitions in one task on a tokio
//!   current-thread runtime with time enabled (leaky-bucket sleeps on
//!   tokio's timer; the others bring their own: awaitkit's default timer and
//!   governor use futures-timer's helper thread). A timestamp
//!   (`Instant::now()`) is taken right after each await. Limiters:
//!   - `awaitkit_strict`: `RateLimiter::new(1000, 1 s)`;
//!   - `awaitkit_gcra`: `RateLimiter::gcra(1000, 1 s, 1000)`;
//!   - `governor`: `Quota::per_second(1000)` (burst 1 000), `until_ready()`;
//!   - `leaky_bucket`: `initial(1000).max(1000).refill(1).interval(1 ms)`,
//!     fair (the default), `acquire_one()`;
//!   - `awaitkit_strict_tokio` and `awaitkit_gcra_tokio`: the same quotas
//!     on `TokioTimer` (`RateLimiter::with_timer`).
//!
//!   Each run records the wall time from the first grant to the last (ideal:
//!   1 000 ms for every limiter — the 2 000th grant is due one period after
//!   the first, with a window / burst of 1 000) and the most grants in any
//!   half-open window `[t, t + 1 s)` of the timestamps (strict: at most
//!   1 000; GCRA, governor and leaky-bucket legitimately reach up to
//!   2 × 1 000 − 1: a full burst, then the steady rate). The timestamps are
//!   taken after the grant: a thread preempted between a grant and its
//!   timestamp shifts that timestamp later, which can only make a window
//!   look fuller than it was granted. Runs: 3 per limiter (1 in quick
//!   mode), interleaved (run 1 of every limiter, then run 2, …), each on a
//!   fresh runtime and limiter. Results: one row per run in
//!   `<criterion dir>/rate_limiter_accuracy.csv` (replacing the function's
//!   older rows) and stderr. The group runs after the criterion group; a
//!   criterion filter on the command line selects its functions too
//!   (substring match on `rate_limiter_accuracy/<function>`), `--list`
//!   and `--profile-time` skip it. In criterion's test mode (no `--bench`
//!   argument, e.g. `cargo test --benches`) both groups run once and
//!   neither CSV is written.
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 3 s; 3
//!   accuracy runs per limiter.
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 1 s; 1 accuracy run per limiter.
//!
//! A quick pass takes under half a minute, a full one under a minute (43 s with the
//! `TokioTimer` rows), plus the build.
//!
//! The run writes its own marker,
//! `<criterion dir>/awaitkit-bench-run-rate-limiter.txt`, so running this
//! bench does not mark the other benches' results stale (and vice versa).
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench rate_limiter && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use common::{Settings, current_thread_runtime_with_time, unexpected};
use criterion::{BenchmarkGroup, Throughput, measurement::WallTime};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `rate_limiter_check`: checks of the untimed check (BENCH.md's N).
const CHECKS: u64 = 1_000_000;

/// `rate_limiter_accuracy`: calls per period.
const RATE: usize = 1_000;
/// `rate_limiter_accuracy`: the period.
const PERIOD: Duration = Duration::from_secs(1);
/// `rate_limiter_accuracy`: awaited acquisitions per run.
const ACQUISITIONS: usize = 2_000;
/// The ideal time from the first grant to the last: the grants after the
/// first `RATE` come one period later (window), or one every
/// `PERIOD / RATE` with the last one due one period after the first (GCRA
/// and the token buckets with a burst of `RATE`).
const IDEAL: Duration = PERIOD;
const _: () = assert!(ACQUISITIONS == 2 * RATE);

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments
// unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (`ptr` came from this allocator, i.e.
        // from `System`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
            LIVE_BYTES.fetch_add(new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes live on the heap now.
fn live_bytes() -> usize {
    LIVE_BYTES.load(Relaxed)
}

// ---------------------------------------------------------------------------
// rate_limiter_check
// ---------------------------------------------------------------------------

/// One limiter's non-waiting check, on a quota that never runs out.
trait Checker {
    type Limiter;

    /// A limiter whose quota never runs out.
    fn build() -> Self::Limiter;

    /// One non-waiting check: granted or not.
    fn check(limiter: &Self::Limiter) -> bool;
}

/// awaitkit's `RateLimiter` on its default timer: the strict window
/// (`RateLimiter::new`) or GCRA (`RateLimiter::gcra`).
struct Awaitkit<const GCRA: bool>;
type AwaitkitStrict = Awaitkit<false>;
type AwaitkitGcra = Awaitkit<true>;
struct Governor;
/// `leaky_bucket::RateLimiter` with `fair(FAIR)`.
struct LeakyBucket<const FAIR: bool>;

impl<const GCRA: bool> Awaitkit<GCRA> {
    /// `max` calls per `period` (GCRA: with a burst of `max`).
    fn limiter(max: usize, period: Duration) -> awaitkit::RateLimiter {
        if GCRA {
            awaitkit::RateLimiter::gcra(max, period, max)
        } else {
            awaitkit::RateLimiter::new(max, period)
        }
    }
}

impl<const GCRA: bool> Checker for Awaitkit<GCRA> {
    type Limiter = awaitkit::RateLimiter;

    fn build() -> Self::Limiter {
        Self::limiter(usize::MAX / 2, Duration::from_secs(1))
    }

    #[inline(always)]
    fn check(limiter: &Self::Limiter) -> bool {
        limiter.try_acquire().is_ok()
    }
}

/// The awaitkit limiters on `QuantaTimer` (awaitkit's feature `quanta`): the same
/// clock as governor's default (quanta's time-stamp counter).
struct AwaitkitQuanta<const GCRA: bool>;

impl<const GCRA: bool> Checker for AwaitkitQuanta<GCRA> {
    type Limiter = awaitkit::RateLimiter<awaitkit::time::QuantaTimer>;

    fn build() -> Self::Limiter {
        let (max, period) = (usize::MAX / 2, Duration::from_secs(1));
        let quota = if GCRA {
            awaitkit::rate_limiter::Quota::gcra(max, period, max)
        } else {
            awaitkit::rate_limiter::Quota::window(max, period)
        };
        awaitkit::RateLimiter::with_quota(quota.unwrap())
            .with_timer(awaitkit::time::QuantaTimer::new())
    }

    #[inline(always)]
    fn check(limiter: &Self::Limiter) -> bool {
        limiter.try_acquire().is_ok()
    }
}

/// governor on `std::time::Instant` (its `MonotonicClock`): the clock
/// awaitkit's default timer reads.
struct GovernorStd;

impl Checker for GovernorStd {
    type Limiter = governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::MonotonicClock,
        governor::middleware::NoOpMiddleware<std::time::Instant>,
    >;

    fn build() -> Self::Limiter {
        let quota = governor::Quota::per_second(NonZeroU32::MAX);
        governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock)
    }

    #[inline(always)]
    fn check(limiter: &Self::Limiter) -> bool {
        limiter.check().is_ok()
    }
}

impl Checker for Governor {
    type Limiter = governor::DefaultDirectRateLimiter;

    fn build() -> Self::Limiter {
        governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX))
    }

    #[inline(always)]
    fn check(limiter: &Self::Limiter) -> bool {
        limiter.check().is_ok()
    }
}

impl<const FAIR: bool> Checker for LeakyBucket<FAIR> {
    type Limiter = leaky_bucket::RateLimiter;

    fn build() -> Self::Limiter {
        leaky_bucket::RateLimiter::builder()
            .initial(usize::MAX)
            .max(usize::MAX)
            .fair(FAIR)
            .build()
    }

    #[inline(always)]
    fn check(limiter: &Self::Limiter) -> bool {
        limiter.try_acquire(1)
    }
}

/// `iters` checks in a tight loop, every result checked.
#[inline(never)]
fn check_loop<C: Checker>(limiter: &C::Limiter, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        if !C::check(black_box(limiter)) {
            unexpected("a check was refused (the quota never runs out)");
        }
    }
    start.elapsed()
}

/// The outcome of the untimed check and the memory readings of a
/// `rate_limiter_check` function.
struct CheckRun {
    ns_per_check: f64,
    /// Live heap bytes after the first timed sample.
    heap_first: Option<usize>,
    /// The most live heap bytes after any later timed sample.
    heap_max: usize,
    /// Timed samples (criterion calls of the routine, warm-up included).
    samples: u64,
    /// Checks in the timed samples.
    timed_checks: u64,
    /// Time from the first timed sample to the last.
    timed_span: Duration,
}

impl CheckRun {
    fn heap_growth(&self) -> usize {
        self.heap_first
            .map_or(0, |first| self.heap_max.saturating_sub(first))
    }
}

impl Settings {
    /// Records a check in `rate_limiter_checks.csv` (replacing an older row
    /// for the same function) and on stderr.
    fn record_check(&self, group: &str, name: &str, run: &CheckRun) {
        eprintln!(
            "check {group}/{name}: {CHECKS} checks granted, untimed {:.1} ns/check; heap growth \
             over the timed runs ({} samples, {} checks, {:.2} s) {} B",
            run.ns_per_check,
            run.samples,
            run.timed_checks,
            run.timed_span.as_secs_f64(),
            run.heap_growth(),
        );
        self.upsert_csv(
            "rate_limiter_checks.csv",
            "group,function,checks,check_ns_per_check,timed_samples,timed_checks,timed_span_s,heap_growth_bytes",
            &format!("{group},{name},"),
            &format!(
                "{CHECKS},{:.2},{},{},{:.2},{}",
                run.ns_per_check,
                run.samples,
                run.timed_checks,
                run.timed_span.as_secs_f64(),
                run.heap_growth(),
            ),
        );
    }
}

/// Registers one `rate_limiter_check` function: the untimed check the first
/// time criterion runs it, then the timed runs on the same limiter.
fn bench_check<C: Checker>(
    settings: &Settings,
    cli: &Cli,
    group: &mut BenchmarkGroup<'_, WallTime>,
    group_name: &str,
    name: &str,
) {
    let limiter = C::build();
    let mut run: Option<CheckRun> = None;
    let mut first_sample: Option<Instant> = None;
    group.bench_function(name, |b| {
        if run.is_none() {
            let elapsed = check_loop::<C>(&limiter, CHECKS);
            run = Some(CheckRun {
                ns_per_check: elapsed.as_nanos() as f64 / CHECKS as f64,
                heap_first: None,
                heap_max: 0,
                samples: 0,
                timed_checks: 0,
                timed_span: Duration::ZERO,
            });
        }
        let run = run.as_mut().expect("set above");
        b.iter_custom(|iters| {
            let elapsed = check_loop::<C>(&limiter, iters);
            // Outside the timed region.
            let heap = live_bytes();
            let now = Instant::now();
            let first = *first_sample.get_or_insert(now);
            if run.heap_first.is_none() {
                run.heap_first = Some(heap);
            }
            run.heap_max = run.heap_max.max(heap);
            run.samples += 1;
            run.timed_checks += iters;
            run.timed_span = now - first;
            elapsed
        });
    });
    if let Some(run) = run {
        assert!(C::check(&limiter), "{name}: the quota ran out");
        if cli.test_mode {
            eprintln!(
                "check {group_name}/{name}: {CHECKS} checks granted (test mode: not recorded)"
            );
        } else {
            settings.record_check(group_name, name, &run);
        }
    }
}

// ---------------------------------------------------------------------------
// rate_limiter_accuracy
// ---------------------------------------------------------------------------

/// One limiter's awaited acquisition, at `RATE` per `PERIOD`.
trait Awaited {
    type Limiter;

    /// A fresh limiter for one run (built inside the runtime).
    fn build() -> Self::Limiter;

    /// Waits for one call's grant.
    fn acquire(limiter: &Self::Limiter) -> impl Future<Output = ()>;
}

impl<const GCRA: bool> Awaited for Awaitkit<GCRA> {
    type Limiter = awaitkit::RateLimiter;

    fn build() -> Self::Limiter {
        Self::limiter(RATE, PERIOD)
    }

    fn acquire(limiter: &Self::Limiter) -> impl Future<Output = ()> {
        limiter.acquire()
    }
}

/// awaitkit on `TokioTimer` (`RateLimiter::with_timer`), window or GCRA.
struct AwaitkitTokio<const GCRA: bool>;

impl<const GCRA: bool> Awaited for AwaitkitTokio<GCRA> {
    type Limiter = awaitkit::RateLimiter<awaitkit::time::TokioTimer>;

    fn build() -> Self::Limiter {
        let quota = if GCRA {
            awaitkit::rate_limiter::Quota::gcra(RATE, PERIOD, RATE)
        } else {
            awaitkit::rate_limiter::Quota::window(RATE, PERIOD)
        };
        let quota = quota.unwrap_or_else(|e| unexpected(&e.to_string()));
        awaitkit::RateLimiter::with_quota(quota).with_timer(awaitkit::time::TokioTimer)
    }

    fn acquire(limiter: &Self::Limiter) -> impl Future<Output = ()> {
        limiter.acquire()
    }
}

impl Awaited for Governor {
    type Limiter = governor::DefaultDirectRateLimiter;

    fn build() -> Self::Limiter {
        let rate = NonZeroU32::new(RATE as u32).unwrap_or_else(|| unexpected("zero rate"));
        governor::RateLimiter::direct(governor::Quota::per_second(rate))
    }

    fn acquire(limiter: &Self::Limiter) -> impl Future<Output = ()> {
        limiter.until_ready()
    }
}

impl<const FAIR: bool> Awaited for LeakyBucket<FAIR> {
    type Limiter = leaky_bucket::RateLimiter;

    fn build() -> Self::Limiter {
        leaky_bucket::RateLimiter::builder()
            .initial(RATE)
            .max(RATE)
            .refill(1)
            .interval(PERIOD / RATE as u32)
            .fair(FAIR)
            .build()
    }

    fn acquire(limiter: &Self::Limiter) -> impl Future<Output = ()> {
        limiter.acquire_one()
    }
}

/// One accuracy run: the timestamps right after each of the
/// `ACQUISITIONS` awaited acquisitions, on a fresh current-thread runtime
/// with time enabled and a fresh limiter.
fn accuracy_run<A: Awaited>() -> Vec<Instant> {
    let rt = current_thread_runtime_with_time();
    rt.block_on(async {
        let limiter = A::build();
        let mut stamps = Vec::with_capacity(ACQUISITIONS);
        for _ in 0..ACQUISITIONS {
            A::acquire(&limiter).await;
            stamps.push(Instant::now());
        }
        stamps
    })
}

/// The most timestamps in any half-open window `[t, t + period)` (`stamps`
/// in ascending order; a window starting at a timestamp is the fullest).
fn max_in_window(stamps: &[Instant], period: Duration) -> usize {
    let mut end = 0;
    let mut max = 0;
    for (start, &t) in stamps.iter().enumerate() {
        while end < stamps.len() && stamps[end] - t < period {
            end += 1;
        }
        max = max.max(end - start);
    }
    max
}

/// What one accuracy run measured.
struct AccuracyRun {
    wall: Duration,
    max_in_window: usize,
}

impl AccuracyRun {
    fn from_stamps(stamps: &[Instant]) -> Self {
        assert_eq!(stamps.len(), ACQUISITIONS);
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "timestamps out of order"
        );
        AccuracyRun {
            wall: stamps[ACQUISITIONS - 1] - stamps[0],
            max_in_window: max_in_window(stamps, PERIOD),
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    fn ratio(&self) -> f64 {
        self.wall.as_secs_f64() / IDEAL.as_secs_f64()
    }
}

impl Settings {
    /// Replaces the function's rows in `rate_limiter_accuracy.csv` with
    /// this run's (one per run) and prints them on stderr.
    fn record_accuracy(&self, group: &str, name: &str, runs: &[AccuracyRun]) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let rows: Vec<String> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                format!(
                    "{},{:.3},{:.3},{:.5},{},{RATE},{ACQUISITIONS},{unix}",
                    i + 1,
                    AccuracyRun::ms(run.wall),
                    AccuracyRun::ms(IDEAL),
                    run.ratio(),
                    run.max_in_window,
                )
            })
            .collect();
        self.replace_csv_rows(
            "rate_limiter_accuracy.csv",
            "group,function,run,wall_ms,ideal_ms,wall_over_ideal,max_in_window,n,acquisitions,unix_time",
            &format!("{group},{name},"),
            &rows,
        );
    }
}

/// What criterion's command line asks of this bench beyond criterion's own
/// groups.
struct Cli {
    /// `--list`, `--profile-time`: nothing to run.
    skip: bool,
    /// Test mode (no `--bench`): one run, nothing written.
    test_mode: bool,
    filter: Option<String>,
    exact: bool,
}

impl Cli {
    fn from_args() -> Self {
        // criterion's options that take a value (as a separate argument).
        const WITH_VALUE: &[&str] = &[
            "--save-baseline",
            "-s",
            "--baseline",
            "-b",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--plotting-backend",
            "--output-format",
            "--format",
            "--color",
            "-c",
        ];
        let mut cli = Cli {
            skip: false,
            test_mode: true,
            filter: None,
            exact: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => cli.test_mode = false,
                "--list" => cli.skip = true,
                "--exact" => cli.exact = true,
                a if a.starts_with("--profile-time") => {
                    cli.skip = true;
                    if !a.contains('=') {
                        args.next();
                    }
                }
                a if WITH_VALUE.contains(&a) => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                _ => cli.filter = Some(arg),
            }
        }
        cli
    }

    fn selects(&self, id: &str) -> bool {
        match &self.filter {
            None => true,
            Some(f) if self.exact => id == f,
            Some(f) => id.contains(f.as_str()),
        }
    }
}

type AccuracyFn = fn() -> Vec<Instant>;

/// The accuracy group's functions: criterion-style id and one run.
fn accuracy_entries() -> Vec<(&'static str, AccuracyFn)> {
    vec![
        ("awaitkit_strict", accuracy_run::<AwaitkitStrict>),
        ("awaitkit_gcra", accuracy_run::<AwaitkitGcra>),
        ("governor", accuracy_run::<Governor>),
        ("leaky_bucket", accuracy_run::<LeakyBucket<true>>),
        (
            "awaitkit_strict_tokio",
            accuracy_run::<AwaitkitTokio<false>>,
        ),
        ("awaitkit_gcra_tokio", accuracy_run::<AwaitkitTokio<true>>),
    ]
}

fn accuracy_group(settings: &Settings, cli: &Cli) {
    let group = "rate_limiter_accuracy";
    if cli.skip {
        return;
    }
    let entries: Vec<_> = accuracy_entries()
        .into_iter()
        .filter(|(name, _)| cli.selects(&format!("{group}/{name}")))
        .collect();
    if entries.is_empty() {
        return;
    }
    let runs = if settings.quick || cli.test_mode {
        1
    } else {
        3
    };
    let mut results: Vec<Vec<AccuracyRun>> = entries.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for ((name, f), out) in entries.iter().zip(&mut results) {
            let result = AccuracyRun::from_stamps(&f());
            eprintln!(
                "{group}/{name} run {run}/{runs}: wall {:.3} ms (ideal {:.0} ms, {:.4} ×), \
                 most in one period {} (N = {RATE})",
                AccuracyRun::ms(result.wall),
                AccuracyRun::ms(IDEAL),
                result.ratio(),
                result.max_in_window,
            );
            out.push(result);
        }
    }
    if cli.test_mode {
        return;
    }
    for ((name, _), out) in entries.iter().zip(&results) {
        settings.record_accuracy(group, name, out);
    }
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let settings = Settings::from_env();
    let cli = Cli::from_args();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-rate-limiter.txt");

    // rate_limiter_check: one criterion iteration = one check.
    let group_name = "rate_limiter_check";
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    let g = &mut group;
    bench_check::<AwaitkitStrict>(&settings, &cli, g, group_name, "awaitkit_strict");
    bench_check::<AwaitkitGcra>(&settings, &cli, g, group_name, "awaitkit_gcra");
    let name = "awaitkit_strict_quanta";
    bench_check::<AwaitkitQuanta<false>>(&settings, &cli, g, group_name, name);
    let name = "awaitkit_gcra_quanta";
    bench_check::<AwaitkitQuanta<true>>(&settings, &cli, g, group_name, name);
    bench_check::<Governor>(&settings, &cli, g, group_name, "governor");
    bench_check::<GovernorStd>(&settings, &cli, g, group_name, "governor_std");
    bench_check::<LeakyBucket<true>>(&settings, &cli, g, group_name, "leaky_bucket_fair");
    bench_check::<LeakyBucket<false>>(&settings, &cli, g, group_name, "leaky_bucket_unfair");
    group.finish();

    c.final_summary();

    // rate_limiter_accuracy: wall time and the fullest window, not speed.
    accuracy_group(&settings, &cli);
}
