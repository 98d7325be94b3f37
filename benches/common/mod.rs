//! What every bench shares: quick/full mode, the criterion directory, the
//! run marker and the CSV files the report script reads
//! (`scripts/bench_table.py`), the minimal single-threaded driver, the
//! tokio runtimes, and the untimed-check-then-timed-runs registration.

#![allow(dead_code)]

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, BenchmarkId, Criterion};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Mode and output directory of a bench run.
pub struct Settings {
    /// `AWAITKIT_BENCH_QUICK=1`: fewer samples, shorter runs.
    pub quick: bool,
    /// criterion's output directory.
    pub out_dir: PathBuf,
}

impl Settings {
    /// Reads the mode and where criterion writes (`$CRITERION_HOME`, else
    /// `$CARGO_TARGET_DIR/criterion`, else the workspace's
    /// `target/criterion`).
    pub fn from_env() -> Self {
        let quick = std::env::var("AWAITKIT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let out_dir = if let Some(home) = std::env::var_os("CRITERION_HOME") {
            PathBuf::from(home)
        } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            PathBuf::from(target).join("criterion")
        } else {
            // This crate is `benches/` in the awaitkit workspace.
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("criterion")
        };
        Settings { quick, out_dir }
    }

    /// criterion configured for the mode.
    pub fn criterion(&self) -> Criterion {
        let c = Criterion::default().output_directory(&self.out_dir);
        if self.quick {
            c.sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(1))
        } else {
            c.sample_size(30)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3))
        }
    }

    /// Writes this bench's run marker (`file` in the criterion directory):
    /// results older than it are stale for the report.
    pub fn write_run_marker(&self, file: &str) {
        std::fs::create_dir_all(&self.out_dir).expect("create criterion dir");
        let mode = if self.quick {
            "quick (AWAITKIT_BENCH_QUICK=1): sample size 10, warm-up 200 ms, measurement 1 s"
        } else {
            "full: sample size 30, warm-up 1 s, measurement 3 s"
        };
        std::fs::write(self.out_dir.join(file), format!("{mode}\n")).expect("write run marker");
    }
}

impl Settings {
    /// Writes `row` under `key` (`group,function,` …) in the CSV `file` of
    /// the criterion directory, replacing an older row with the same key.
    pub fn upsert_csv(&self, file: &str, header: &str, key: &str, row: &str) {
        self.replace_csv_rows(file, header, key, &[row.to_owned()]);
    }
}

/// The benches' top-level wake flag: `wake` is one relaxed store (BENCH.md's
/// minimal driver).
pub struct Flag(pub AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Settings {
    /// Replaces every row under `key` (`group,function,` …) in the CSV
    /// `file` of the criterion directory with `rows` (each without the key):
    /// for results of several rows per function (e.g. one per run), so a
    /// run with fewer rows leaves none of an older run's behind.
    pub fn replace_csv_rows(&self, file: &str, header: &str, key: &str, rows: &[String]) {
        std::fs::create_dir_all(&self.out_dir).expect("create criterion dir");
        let path = self.out_dir.join(file);
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("group,") && !l.starts_with(key))
            .map(str::to_owned)
            .collect();
        lines.extend(rows.iter().map(|row| format!("{key}{row}")));
        let mut out = format!("{header}\n");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(&path, out).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
}

/// The minimal single-threaded driver (BENCH.md): a top-level waker whose
/// `wake` is one relaxed store to a flag, built outside the timed region;
/// the future is polled again only after that flag was set.
pub struct Driver {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Driver {
    pub fn new() -> Self {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        Driver { flag, waker }
    }

    /// Polls `fut` to completion, again only after its waker set the flag;
    /// while the flag is not set after a `Pending`, calls `idle` (which must
    /// make something wake the future, or panic). Returns the output and the
    /// number of polls.
    #[inline]
    pub fn block_on_with<F: Future>(&self, fut: F, mut idle: impl FnMut()) -> (F::Output, u32) {
        let mut fut = pin!(fut);
        let mut cx = Context::from_waker(&self.waker);
        let mut polls = 0;
        // A future may wake its task in the poll that completes it: a stale
        // flag from the previous run must not count.
        self.flag.0.store(false, Ordering::Relaxed);
        loop {
            polls += 1;
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return (out, polls);
            }
            while !self.flag.0.load(Ordering::Relaxed) {
                idle();
            }
            self.flag.0.store(false, Ordering::Relaxed);
        }
    }

    /// Polls `fut` to completion; a `Pending` without a wake is a deadlock
    /// (panics).
    #[inline]
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.block_on_with(fut, || {
            panic!("deadlock: the future is pending and its waker was not woken")
        })
        .0
    }
}

/// Panics with "unexpected: `what`" (kept out of the hot path).
#[cold]
#[inline(never)]
pub fn unexpected(what: &str) -> ! {
    panic!("unexpected: {what}")
}

/// The `Ok` value, or [`unexpected`]`(what)`.
#[inline]
pub fn expect_ok<T, E>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(_) => unexpected(what),
    }
}

/// Wakes its own waker and returns `Pending` once, then `Ready(())` (the
/// same yield for every crate; not `tokio::task::yield_now`, whose deferred
/// wake-up depends on the runtime's driver).
pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

/// A tokio current-thread runtime without drivers.
pub fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// A tokio current-thread runtime with time enabled.
pub fn current_thread_runtime_with_time() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// A tokio multi-thread runtime with `workers` worker threads.
pub fn multi_thread_runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("tokio runtime")
}

/// `iters` calls of `run` on one fresh runtime from `runtime`, which is
/// built and dropped outside the timed region: the time of the calls.
pub fn time_on_fresh_runtime(
    iters: u64,
    runtime: impl FnOnce() -> Runtime,
    run: impl Fn(&Runtime),
) -> Duration {
    let rt = runtime();
    let start = Instant::now();
    for _ in 0..iters {
        run(&rt);
    }
    let elapsed = start.elapsed();
    drop(rt);
    elapsed
}

/// Registers `name` in `group`: the first time criterion runs it, `check`
/// runs once (untimed) before `timed` gets the bencher. Returns the check's
/// outcome, or `None` when criterion skipped the function (filtered out).
pub fn bench_checked<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    check: impl FnOnce() -> T,
    timed: impl FnMut(&mut Bencher<'_>),
) -> Option<T> {
    checked(check, timed, |f| {
        group.bench_function(name, f);
    })
}

/// [`bench_checked`] for a parameterised function (`id`: function / N).
pub fn bench_checked_id<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    check: impl FnOnce() -> T,
    timed: impl FnMut(&mut Bencher<'_>),
) -> Option<T> {
    checked(check, timed, |f| {
        group.bench_function(id, f);
    })
}

fn checked<T>(
    check: impl FnOnce() -> T,
    mut timed: impl FnMut(&mut Bencher<'_>),
    register: impl FnOnce(&mut dyn FnMut(&mut Bencher<'_>)),
) -> Option<T> {
    let mut check = Some(check);
    let mut outcome = None;
    register(&mut |b| {
        if let Some(check) = check.take() {
            outcome = Some(check());
        }
        timed(b);
    });
    outcome
}

/// What instrumented tasks on any thread observe of a shared resource
/// (permits, pooled objects): how many are held now and at most, how many
/// were obtained, how many of those waited, how many tasks finished.
pub struct Tracker {
    pub held: AtomicUsize,
    pub max_held: AtomicUsize,
    pub got: AtomicU64,
    /// Obtained by a future whose first poll returned `Pending`.
    pub waited: AtomicU64,
    pub tasks_done: AtomicUsize,
}

impl Tracker {
    pub const fn new() -> Self {
        Tracker {
            held: AtomicUsize::new(0),
            max_held: AtomicUsize::new(0),
            got: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            tasks_done: AtomicUsize::new(0),
        }
    }

    pub fn reset(&self) {
        for counter in [&self.held, &self.max_held, &self.tasks_done] {
            counter.store(0, Ordering::Relaxed);
        }
        self.got.store(0, Ordering::Relaxed);
        self.waited.store(0, Ordering::Relaxed);
    }

    /// `fut` (an acquire / get), recording when it completes whether it
    /// waited, and one more held.
    pub fn track<F: Future + Unpin>(&'static self, fut: F) -> Tracked<F> {
        Tracked {
            fut,
            waited: false,
            tracker: self,
        }
    }

    /// The tracked resource was released.
    pub fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn task_done(&self) {
        self.tasks_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A future tracked by a [`Tracker`].
pub struct Tracked<F> {
    fut: F,
    waited: bool,
    tracker: &'static Tracker,
}

impl<F: Future + Unpin> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = Pin::new(&mut self.fut).poll(cx);
        match out {
            Poll::Pending => self.waited = true,
            Poll::Ready(_) => {
                let t = self.tracker;
                if self.waited {
                    t.waited.fetch_add(1, Ordering::Relaxed);
                }
                t.got.fetch_add(1, Ordering::Relaxed);
                let held = t.held.fetch_add(1, Ordering::Relaxed) + 1;
                t.max_held.fetch_max(held, Ordering::Relaxed);
            }
        }
        out
    }
}

/// Wall-clock time per call of each of `runs` on a loaded machine: `batches`
/// rounds in which every run is called `per` times in turn, keeping each
/// run's fastest batch (the least disturbed), in ns per call.
#[allow(dead_code)]
pub fn fastest_batches<const K: usize>(
    batches: usize,
    per: usize,
    runs: [&dyn Fn(); K],
) -> [f64; K] {
    let mut best = [f64::MAX; K];
    for _ in 0..batches.max(1) {
        for (k, run) in runs.iter().enumerate() {
            let start = std::time::Instant::now();
            for _ in 0..per {
                run();
            }
            best[k] = best[k].min(start.elapsed().as_nanos() as f64 / per as f64);
        }
    }
    best
}
