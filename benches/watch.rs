//! Watch benchmark: what `awaitkit::watch` costs per poll, against the bare
//! future in the same run.
//!
//! Group `watch_per_poll` (parameter = P = 1 000 polls): one future that
//! returns `Pending` P − 1 times and then `Ready`, polled P times in a loop
//! with a no-op waker (nothing else is timed: the bare loop is the floor).
//!
//! * `bare`: the future itself;
//! * `watch`: `awaitkit::watch(fut)` with the default threshold and clock;
//! * `report_child`: `report.watch("child", fut)` on a fresh `Report` (the
//!   registration, and the delivery at completion, amortised over P polls);
//! * `naive_instant`: a wrapper written the obvious way — `Instant::now()`
//!   before and after each poll, busy and longest poll accumulated — for
//!   reference: what the same bookkeeping costs on the standard clock.
//!
//! Group `watch_gather` (parameter = N = 1 000 children): `gather` over N
//! children that each wake themselves and return `Pending` once, bare
//! against every child watched by one `Report` (`report.watch_each`):
//! what a per-child report costs in a real combinator, per child (2 polls,
//! one registration and one delivery each).
//!
//! Untimed checks before the timed runs: the watched future's output and
//! poll count (P), no slow poll, and for the gather group that the report
//! has N completed children with 2 polls each. Results go to
//! `<criterion dir>/watch_checks.csv` and stderr.
//!
//! Modes as the other benches (`AWAITKIT_BENCH_QUICK=1` for the quick one);
//! marker `<criterion dir>/awaitkit-bench-run-watch.txt`.
//!
//! Regenerate the report section:
//! `cargo bench -p awaitkit-benches --bench watch && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use awaitkit::watch::{Outcome, Report, watch};
use common::{Driver, Settings, bench_checked_id};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Polls per iteration of `watch_per_poll`.
const P: u64 = 1_000;
/// Children per iteration of `watch_gather`.
const N: usize = 1_000;
const CHECKS: &str = "watch_checks.csv";
const CHECKS_HEADER: &str = "group,function,n,polls,slow_polls,outcome";

/// `Pending` until polled `left` times, then `Ready(left)` (no wake: the
/// loop polls it again).
struct Countdown {
    left: u64,
}

impl Future for Countdown {
    type Output = u64;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<u64> {
        // `black_box`: the loop must really poll P times, not be folded
        // into one subtraction.
        self.left = black_box(self.left - 1);
        if self.left == 0 {
            Poll::Ready(self.left)
        } else {
            Poll::Pending
        }
    }
}

fn countdown() -> Countdown {
    Countdown { left: black_box(P) }
}

/// Polls `fut` until it is ready; returns the output and the polls.
#[inline]
fn spin<F: Future>(fut: F) -> (F::Output, u64) {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return (out, polls);
        }
    }
}

/// The obvious wrapper: `Instant::now()` around every poll.
struct NaiveInstant<F> {
    inner: F,
    polls: u64,
    busy: Duration,
    longest: Duration,
}

impl<F: Future + Unpin> Future for NaiveInstant<F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = Instant::now();
        let out = Pin::new(&mut self.inner).poll(cx);
        let took = start.elapsed();
        self.polls += 1;
        self.busy += took;
        self.longest = self.longest.max(took);
        out
    }
}

/// Wakes itself and returns `Pending` once, then `Ready(())`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn record(
    settings: &Settings,
    group: &str,
    function: &str,
    n: u64,
    polls: u64,
    slow: u64,
    outcome: &str,
) {
    let key = format!("{group},{function},");
    let row = format!("{n},{polls},{slow},{outcome}");
    eprintln!("check {key}{row}");
    settings.upsert_csv(CHECKS, CHECKS_HEADER, &key, &row);
}

fn main() {
    let settings = Settings::from_env();
    let mut c: Criterion = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-watch.txt");
    eprintln!(
        "watch clock: {}",
        if awaitkit::watch::uses_cpu_counter() {
            "CPU time-stamp counter"
        } else {
            "Instant"
        }
    );

    let mut group = c.benchmark_group("watch_per_poll");
    group.throughput(Throughput::Elements(P));
    bench_checked_id(
        &mut group,
        BenchmarkId::new("bare", P),
        || {
            let (out, polls) = spin(countdown());
            assert_eq!((out, polls), (0, P));
            record(&settings, "watch_per_poll", "bare", P, polls, 0, "ok");
        },
        |b| b.iter(|| spin(countdown())),
    );
    bench_checked_id(
        &mut group,
        BenchmarkId::new("watch", P),
        || {
            let mut fut = pin!(watch(countdown()));
            let (out, polls) = spin(fut.as_mut());
            let stats = fut.stats();
            assert_eq!((out, polls, stats.polls), (0, P, P));
            assert!(stats.completed && stats.busy <= stats.wall);
            record(
                &settings,
                "watch_per_poll",
                "watch",
                P,
                stats.polls,
                stats.slow_polls,
                "ok",
            );
        },
        |b| b.iter(|| spin(watch(countdown()))),
    );
    bench_checked_id(
        &mut group,
        BenchmarkId::new("report_child", P),
        || {
            let report = Report::new();
            let (out, _) = spin(report.watch("child", countdown()));
            let child = &report.children()[0];
            assert_eq!(
                (out, child.stats.polls, child.outcome),
                (0, P, Outcome::Completed)
            );
            record(
                &settings,
                "watch_per_poll",
                "report_child",
                P,
                child.stats.polls,
                child.stats.slow_polls,
                "completed",
            );
        },
        |b| {
            b.iter(|| {
                let report = Report::new();
                spin(report.watch("child", countdown()))
            })
        },
    );
    bench_checked_id(
        &mut group,
        BenchmarkId::new("naive_instant", P),
        || {
            let mut fut = NaiveInstant {
                inner: countdown(),
                polls: 0,
                busy: Duration::ZERO,
                longest: Duration::ZERO,
            };
            let (out, polls) = spin(&mut fut);
            assert_eq!((out, polls, fut.polls), (0, P, P));
            record(
                &settings,
                "watch_per_poll",
                "naive_instant",
                P,
                fut.polls,
                0,
                "ok",
            );
        },
        |b| {
            b.iter(|| {
                spin(NaiveInstant {
                    inner: countdown(),
                    polls: 0,
                    busy: Duration::ZERO,
                    longest: Duration::ZERO,
                })
            })
        },
    );
    group.finish();

    let driver = Driver::new();
    let mut group = c.benchmark_group("watch_gather");
    group.throughput(Throughput::Elements(N as u64));
    bench_checked_id(
        &mut group,
        BenchmarkId::new("gather_bare", N),
        || {
            let out = driver.block_on(awaitkit::gather((0..N).map(|_| YieldOnce(false))));
            assert_eq!(out.len(), N);
            record(
                &settings,
                "watch_gather",
                "gather_bare",
                N as u64,
                2 * N as u64,
                0,
                "ok",
            );
        },
        |b| b.iter(|| driver.block_on(awaitkit::gather((0..N).map(|_| YieldOnce(false))))),
    );
    bench_checked_id(
        &mut group,
        BenchmarkId::new("gather_report", N),
        || {
            let report = Report::new();
            let out = driver.block_on(awaitkit::gather(
                report.watch_each((0..N).map(|_| YieldOnce(false))),
            ));
            assert_eq!(out.len(), N);
            let children = report.children();
            assert_eq!(children.len(), N);
            assert!(
                children
                    .iter()
                    .all(|c| c.outcome == Outcome::Completed && c.stats.polls == 2)
            );
            let polls: u64 = children.iter().map(|c| c.stats.polls).sum();
            let slow: u64 = children.iter().map(|c| c.stats.slow_polls).sum();
            record(
                &settings,
                "watch_gather",
                "gather_report",
                N as u64,
                polls,
                slow,
                "completed",
            );
        },
        |b| {
            b.iter(|| {
                let report = Report::new();
                driver.block_on(awaitkit::gather(
                    report.watch_each((0..N).map(|_| YieldOnce(false))),
                ))
            })
        },
    );
    group.finish();
    c.final_summary();
}
