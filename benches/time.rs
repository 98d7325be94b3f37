//! Timer benchmarks: awaitkit's `timeout` against the runtimes' own timers,
//! side by side, as `/work/shared/BENCH.md` describes them.
//!
//! Groups (one criterion group each, one function per crate, no parameter;
//! throughput = 1 element, so the numbers are ns per timeout):
//!
//! * `timeout_ready`: one iteration wraps an immediately ready future
//!   (`std::future::ready(black_box(42u64))`, the same for every function) in
//!   a 1 h timeout, polls it to completion and consumes the output. Functions:
//!   `awaitkit` (`awaitkit::timeout`, default timer), `awaitkit_tokio`
//!   (`timeout(..).with_timer(TokioTimer)`), `awaitkit_async_io`
//!   (`.with_timer(AsyncIoTimer)`), `tokio` (`tokio::time::timeout`),
//!   `futures_timer` (`select(ready, Delay::new(1 h))`), `async_io`
//!   (`select(ready, Timer::after(1 h))`) and `bare` (the inner future alone,
//!   no timeout: the reference of the ≤ 1.2 × goal).
//! * `timer_register_drop`: one iteration wraps `std::future::pending::<()>()`
//!   in a 1 h timeout, polls it once (so the timer is registered with its
//!   backend) and drops it (so it is deregistered). Each awaitkit backend
//!   runs next to that backend's native timer used directly:
//!   `awaitkit_futures_timer` (`.with_timer(FuturesTimer)`) / `futures_timer`
//!   (`select(pending, Delay::new(1 h))`), `awaitkit` (the plain `timeout`:
//!   inside the entered tokio runtime the default timer is tokio's) and
//!   `awaitkit_tokio` (`.with_timer(TokioTimer)`) / `tokio`
//!   (`tokio::time::timeout`), `awaitkit_async_io` / `async_io`
//!   (`select(pending, Timer::after(1 h))`).
//!
//! BENCH.md says 10⁶ (ready) and 10⁵ (register/drop) iterations; criterion
//! picks the iteration counts here (`Bencher::iter`), which is the same
//! workload repeated as often as its sampling needs.
//!
//! Driver: every future is pinned on the stack (`std::pin::pin!`) and polled
//! once with `Context::from_waker(Waker::noop())` — the inner future is ready
//! at once (or pending forever), so nothing ever needs a wake-up. The
//! duration (`black_box(1 h)`), building the timeout, polling it, consuming
//! the output and dropping everything (timers included) are inside the timed
//! region, for every function alike.
//!
//! Runtimes: a tokio current-thread runtime with `enable_time()` is built
//! once and entered (`Runtime::enter`) for the whole run, so tokio's `Sleep`
//! finds its time driver; it is never driven (nothing here needs to fire).
//! futures-timer keeps time on its global helper thread, async-io on its
//! `async-io` reactor thread: both are started by the first registration (in
//! the warm-up / the untimed check) and compete with the bench thread for the
//! two cores of this machine while a group runs.
//!
//! Noise: in `timeout_ready` the awaitkit functions compile to the bare
//! future plus two stack stores (the timeout is optimized away; LLVM even
//! merges the three awaitkit functions into one body), so their differences
//! from `bare` (~1 ns) are measurement noise of a few tenths of a ns. In
//! `timer_register_drop` the futures-timer and async-io rows are bimodal from
//! run to run: it depends on where the scheduler puts their helper thread
//! (a helper that lags behind batches registrations and never heaps a `Delay`
//! that was dropped before it looked, which makes registration cheaper).
//!
//! Memory: the first time criterion runs a `timer_register_drop` function,
//! an untimed check registers and drops 10⁵ timers twice before the timed
//! runs; the process RSS before, after each round and after the timed runs
//! goes to `<criterion dir>/time_rss.csv` (and stderr), with the untimed
//! ns per iteration of the second round: dropped registrations must not
//! accumulate in any backend (flat RSS from round 1 on).
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 3 s.
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 1 s.
//!
//! The run writes its own marker, `<criterion dir>/awaitkit-bench-run-time.txt`
//! (the combinators bench writes `awaitkit-bench-run.txt`), so running one
//! bench does not mark the other's results stale.
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench time && python3 scripts/bench_table.py > docs/benchmarks.md`

use awaitkit::time::{AsyncIoTimer, FuturesTimer, TokioTimer};
mod common;

use common::{Settings, current_thread_runtime_with_time};
use criterion::Throughput;
use futures::future::{Either, select};
use std::future::{Future, pending, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The timeout of every iteration: far enough that it never fires.
const HOUR: Duration = Duration::from_secs(3600);

/// The value of the ready inner future.
const VALUE: u64 = 42;

/// Iterations of each round of the untimed memory check (BENCH.md's N).
const CHECK_ITERS: u32 = 100_000;

/// Polls `fut` once, pinned on the stack, with a no-op waker.
#[inline(always)]
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let fut = pin!(fut);
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[cold]
#[inline(never)]
fn unexpected(what: &str) -> ! {
    panic!("unexpected poll result: {what}")
}

/// The output of a future that must be ready at its first poll.
#[inline(always)]
fn ready_now<F: Future>(fut: F) -> F::Output {
    match poll_once(fut) {
        Poll::Ready(out) => out,
        Poll::Pending => unexpected("pending (the inner future is ready)"),
    }
}

/// Polls a future once that must stay pending, then drops it.
#[inline(always)]
fn register_drop<F: Future>(fut: F) {
    if poll_once(fut).is_ready() {
        unexpected("ready (the inner future never is, the timeout is 1 h)");
    }
}

/// The inner future of `timeout_ready`.
#[inline(always)]
fn inner_ready() -> std::future::Ready<u64> {
    ready(black_box(VALUE))
}

// ---------------------------------------------------------------------------
// timeout_ready
// ---------------------------------------------------------------------------

fn ready_bare() -> u64 {
    ready_now(inner_ready())
}

fn ready_awaitkit() -> u64 {
    match ready_now(awaitkit::timeout(black_box(HOUR), inner_ready())) {
        Ok(v) => v,
        Err(_) => unexpected("elapsed"),
    }
}

fn ready_awaitkit_tokio() -> u64 {
    match ready_now(awaitkit::timeout(black_box(HOUR), inner_ready()).with_timer(TokioTimer)) {
        Ok(v) => v,
        Err(_) => unexpected("elapsed"),
    }
}

fn ready_awaitkit_async_io() -> u64 {
    match ready_now(awaitkit::timeout(black_box(HOUR), inner_ready()).with_timer(AsyncIoTimer)) {
        Ok(v) => v,
        Err(_) => unexpected("elapsed"),
    }
}

fn ready_tokio() -> u64 {
    match ready_now(tokio::time::timeout(black_box(HOUR), inner_ready())) {
        Ok(v) => v,
        Err(_) => unexpected("elapsed"),
    }
}

fn ready_futures_timer() -> u64 {
    let delay = futures_timer::Delay::new(black_box(HOUR));
    match ready_now(select(inner_ready(), delay)) {
        Either::Left((v, delay)) => {
            drop(delay);
            v
        }
        Either::Right(_) => unexpected("timer fired"),
    }
}

fn ready_async_io() -> u64 {
    let timer = async_io::Timer::after(black_box(HOUR));
    match ready_now(select(inner_ready(), timer)) {
        Either::Left((v, timer)) => {
            drop(timer);
            v
        }
        Either::Right(_) => unexpected("timer fired"),
    }
}

// ---------------------------------------------------------------------------
// timer_register_drop
// ---------------------------------------------------------------------------

fn register_awaitkit() {
    register_drop(awaitkit::timeout(black_box(HOUR), pending::<()>()));
}

fn register_awaitkit_futures_timer() {
    register_drop(awaitkit::timeout(black_box(HOUR), pending::<()>()).with_timer(FuturesTimer));
}

fn register_awaitkit_tokio() {
    register_drop(awaitkit::timeout(black_box(HOUR), pending::<()>()).with_timer(TokioTimer));
}

fn register_awaitkit_async_io() {
    register_drop(awaitkit::timeout(black_box(HOUR), pending::<()>()).with_timer(AsyncIoTimer));
}

fn register_tokio() {
    register_drop(tokio::time::timeout(black_box(HOUR), pending::<()>()));
}

fn register_futures_timer() {
    let delay = futures_timer::Delay::new(black_box(HOUR));
    register_drop(select(pending::<()>(), delay));
}

fn register_async_io() {
    let timer = async_io::Timer::after(black_box(HOUR));
    register_drop(select(pending::<()>(), timer));
}

// ---------------------------------------------------------------------------
// Settings, memory check, registration
// ---------------------------------------------------------------------------

/// One bench function: criterion id and the timed iteration.
type Entry<T> = (&'static str, fn() -> T);

impl Settings {
    /// Records a memory check in `time_rss.csv` (replacing an older row for
    /// the same function) and on stderr.
    fn record_rss(&self, group: &str, name: &str, check: &MemCheck) {
        let kib = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let row = format!(
            "{},{},{},{},{},{:.1}",
            kib(check.start),
            kib(check.round1),
            kib(check.round2),
            kib(check.after_bench),
            CHECK_ITERS,
            check.ns_per_iter,
        );
        eprintln!(
            "rss {group}/{name}: start {} KiB, after 1st {CHECK_ITERS} {} KiB, after 2nd {} KiB, \
             after the timed runs {} KiB (untimed check: {:.1} ns/iter)",
            kib(check.start),
            kib(check.round1),
            kib(check.round2),
            kib(check.after_bench),
            check.ns_per_iter,
        );
        self.upsert_csv(
            "time_rss.csv",
            "group,function,rss_start_kib,rss_round1_kib,rss_round2_kib,rss_after_bench_kib,check_iters,check_ns_per_iter",
            &format!("{group},{name},"),
            &row,
        );
    }
}

/// The process' resident set size, KiB (Linux; `None` elsewhere).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RSS around two untimed rounds of [`CHECK_ITERS`] registrations and the
/// timed runs.
struct MemCheck {
    start: Option<u64>,
    round1: Option<u64>,
    round2: Option<u64>,
    after_bench: Option<u64>,
    ns_per_iter: f64,
}

impl MemCheck {
    fn run(f: fn()) -> Self {
        let start = rss_kib();
        for _ in 0..CHECK_ITERS {
            f();
        }
        let round1 = rss_kib();
        let t = Instant::now();
        for _ in 0..CHECK_ITERS {
            f();
        }
        let ns_per_iter = t.elapsed().as_nanos() as f64 / f64::from(CHECK_ITERS);
        let round2 = rss_kib();
        MemCheck {
            start,
            round1,
            round2,
            after_bench: None,
            ns_per_iter,
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-time.txt");

    // tokio's timers (the peer and `TokioTimer`) need a runtime with time
    // enabled in context; it is never driven.
    let rt = current_thread_runtime_with_time();
    let _guard = rt.enter();

    let timeout_ready: [Entry<u64>; 7] = [
        ("awaitkit", ready_awaitkit),
        ("awaitkit_tokio", ready_awaitkit_tokio),
        ("awaitkit_async_io", ready_awaitkit_async_io),
        ("tokio", ready_tokio),
        ("futures_timer", ready_futures_timer),
        ("async_io", ready_async_io),
        ("bare", ready_bare),
    ];
    let mut group = c.benchmark_group("timeout_ready");
    group.throughput(Throughput::Elements(1));
    for (name, f) in timeout_ready {
        group.bench_function(name, |b| {
            assert_eq!(f(), VALUE, "{name}: wrong output");
            b.iter(f);
        });
    }
    group.finish();

    // Each awaitkit backend right next to its native timer.
    let timer_register_drop: [Entry<()>; 7] = [
        ("awaitkit_futures_timer", register_awaitkit_futures_timer),
        ("futures_timer", register_futures_timer),
        ("awaitkit", register_awaitkit),
        ("awaitkit_tokio", register_awaitkit_tokio),
        ("tokio", register_tokio),
        ("awaitkit_async_io", register_awaitkit_async_io),
        ("async_io", register_async_io),
    ];
    let group_name = "timer_register_drop";
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    for (name, f) in timer_register_drop {
        // The check runs only when criterion runs this function (filters).
        let mut check = None;
        group.bench_function(name, |b| {
            if check.is_none() {
                check = Some(MemCheck::run(f));
            }
            b.iter(f);
        });
        if let Some(mut check) = check {
            check.after_bench = rss_kib();
            settings.record_rss(group_name, name, &check);
        }
    }
    group.finish();

    c.final_summary();
}
