//! Macro benchmark: a fan-out of N children on a tokio multi-thread runtime
//! with 2 workers (issue 17, item 6), where tokio's cooperative budget is in
//! play.
//!
//! Variants (each child returns its index):
//!
//! * `io`: each child awaits a `tokio::sync::oneshot` receiver; a separate
//!   (persistent) thread fires the senders in order as soon as it gets them.
//! * `timers`: each child is a `tokio::time::sleep` of 0–1 ms (spread evenly).
//! * `cpu`: each child does about 1 µs of work (a spin loop calibrated at
//!   start-up) and finishes on its first poll; `cpu10` and `cpu100` (N =
//!   1 000 only): 10 µs and 100 µs of work, to see where spawning the
//!   children on the 2 workers starts to pay.
//!
//! Peers, each run inside one task spawned on the runtime (the result is
//! awaited through its `JoinHandle`): awaitkit `gather`, the same under
//! `tokio::task::coop::unconstrained` (for reference), futures-buffered
//! `join_all`, futures `join_all`, tokio `JoinSet` (every child spawned) and
//! spawn + join (every child spawned, handles awaited in order). Building the
//! children (and channels) and the combinator is inside the timed region, for
//! every peer alike.
//!
//! Recorded per (variant, peer, N), in `<criterion dir>/fanout.csv` and on
//! stderr: wall time per run (criterion's, and the mean over every timed
//! run), the process's CPU time per run (user + system of every thread, from
//! `/proc/self/stat`; 10 ms ticks, averaged over every timed run; it counts
//! the tokio workers, the firing thread and idle spinning alike), and child
//! polls / N (one untimed run with counting children, which also checks the
//! outputs). For the spawning peers, "polls" are the polls of the spawned
//! children.
//!
//! Modes: full (default) and quick (`AWAITKIT_BENCH_QUICK=1`), see
//! `common::Settings`.
//!
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench fanout`

mod common;

use common::{Settings, bench_checked_id};
use criterion::BenchmarkId;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Whether children count their polls (the untimed check run only).
static COUNTING: AtomicBool = AtomicBool::new(false);
static POLLS: AtomicUsize = AtomicUsize::new(0);
/// Spin-loop rounds for about 1 µs of work (calibrated in `main`).
static SPIN: AtomicUsize = AtomicUsize::new(100);

#[derive(Clone, Copy, Debug)]
enum Variant {
    Io,
    Timers,
    /// Microseconds of work per child.
    Cpu(usize),
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Io => "io",
            Variant::Timers => "timers",
            Variant::Cpu(1) => "cpu",
            Variant::Cpu(10) => "cpu10",
            Variant::Cpu(100) => "cpu100",
            Variant::Cpu(_) => "cpu_other",
        }
    }
}

/// One child of any variant (one type, so every peer takes the same).
enum Leaf {
    Io(oneshot::Receiver<usize>),
    Timer(Pin<Box<tokio::time::Sleep>>, usize),
    Cpu(usize, usize),
}

impl Future for Leaf {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if COUNTING.load(Ordering::Relaxed) {
            POLLS.fetch_add(1, Ordering::Relaxed);
        }
        match &mut *self {
            Leaf::Io(rx) => Pin::new(rx).poll(cx).map(|r| r.expect("sender dropped")),
            Leaf::Timer(sleep, i) => sleep.as_mut().poll(cx).map(|()| *i),
            Leaf::Cpu(i, micros) => {
                spin(SPIN.load(Ordering::Relaxed) * *micros);
                Poll::Ready(*i)
            }
        }
    }
}

/// About `rounds` × a few ns of work the optimiser cannot remove.
fn spin(rounds: usize) -> u64 {
    let mut x = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).rotate_left(17));
    }
    x
}

/// Picks the spin rounds for about 1 µs.
fn calibrate() {
    let rounds = 100_000;
    let start = Instant::now();
    spin(rounds);
    let per_round = start.elapsed().as_nanos() as f64 / rounds as f64;
    SPIN.store(((1000.0 / per_round) as usize).max(1), Ordering::Relaxed);
}

/// Fires batches of oneshot senders, in order, from its own thread.
struct Firer {
    tx: Mutex<mpsc::Sender<Vec<oneshot::Sender<usize>>>>,
}

impl Firer {
    fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Vec<oneshot::Sender<usize>>>();
        std::thread::Builder::new()
            .name("fanout-firer".into())
            .spawn(move || {
                for batch in rx {
                    for (i, tx) in batch.into_iter().enumerate() {
                        let _ = tx.send(i);
                    }
                }
            })
            .expect("spawn firing thread");
        Firer { tx: Mutex::new(tx) }
    }
}

/// The N children of a run; for `io`, their senders go to the firing
/// thread right away.
fn leaves(variant: Variant, n: usize, firer: &Firer) -> Vec<Leaf> {
    match variant {
        Variant::Io => {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
            firer.tx.lock().unwrap().send(txs).expect("firing thread");
            rxs.into_iter().map(Leaf::Io).collect()
        }
        Variant::Timers => (0..n)
            .map(|i| {
                let micros = (i * 1000 / n.max(1)) as u64;
                Leaf::Timer(
                    Box::pin(tokio::time::sleep(Duration::from_micros(micros))),
                    i,
                )
            })
            .collect(),
        Variant::Cpu(micros) => (0..n).map(|i| Leaf::Cpu(i, micros)).collect(),
    }
}

type Peer = fn(Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>>;

fn sum(out: impl IntoIterator<Item = usize>) -> u64 {
    out.into_iter().map(|i| i as u64).sum()
}

fn awaitkit_gather(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { sum(awaitkit::gather(leaves).await) })
}

fn awaitkit_unconstrained(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { sum(tokio::task::coop::unconstrained(awaitkit::gather(leaves)).await) })
}

fn fb_join_all(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { sum(futures_buffered::join_all(leaves).await) })
}

fn futures_join_all(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move { sum(futures::future::join_all(leaves).await) })
}

fn tokio_join_set(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move {
        let mut set = tokio::task::JoinSet::new();
        for leaf in leaves {
            set.spawn(leaf);
        }
        let mut total = 0;
        while let Some(done) = set.join_next().await {
            total += done.expect("child task") as u64;
        }
        total
    })
}

fn spawn_join(leaves: Vec<Leaf>) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(async move {
        let handles: Vec<_> = leaves.into_iter().map(tokio::spawn).collect();
        let mut total = 0;
        for handle in handles {
            total += handle.await.expect("child task") as u64;
        }
        total
    })
}

const PEERS: [(&str, Peer); 6] = [
    ("awaitkit_gather", awaitkit_gather),
    ("awaitkit_gather_unconstrained", awaitkit_unconstrained),
    ("fb_join_all", fb_join_all),
    ("futures_join_all", futures_join_all),
    ("tokio_JoinSet", tokio_join_set),
    ("spawn_join", spawn_join),
];

/// One run: build the children, run the peer in a task on the runtime, check
/// the sum of the outputs.
fn run(rt: &Runtime, firer: &Firer, variant: Variant, n: usize, peer: Peer) {
    // Timers need the runtime's context when they are created.
    let _context = rt.enter();
    let leaves = leaves(variant, n, firer);
    let total = rt.block_on(rt.spawn(peer(leaves))).expect("peer task");
    assert_eq!(total, (n * n.saturating_sub(1) / 2) as u64);
}

/// The process's CPU time (user + system, every thread) from
/// `/proc/self/stat`, or `None` where there is no such file.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux build.
    Some(Duration::from_millis(ticks * 10))
}

#[derive(Default)]
struct Totals {
    iters: u64,
    wall: Duration,
    cpu: Option<Duration>,
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-fanout-run.txt");
    calibrate();
    let firer = Firer::spawn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio runtime");

    let mut table = Vec::new();
    let variants = [
        Variant::Io,
        Variant::Timers,
        Variant::Cpu(1),
        Variant::Cpu(10),
        Variant::Cpu(100),
    ];
    for variant in variants {
        let mut group = c.benchmark_group(format!("fanout_{}", variant.name()));
        let sizes: &[usize] = match variant {
            Variant::Cpu(micros) if micros > 1 => &[1_000],
            _ => &[1_000, 10_000],
        };
        for &n in sizes {
            for (name, peer) in PEERS {
                let totals = Arc::new(Mutex::new(Totals {
                    cpu: Some(Duration::ZERO),
                    ..Totals::default()
                }));
                let check = || {
                    COUNTING.store(true, Ordering::Relaxed);
                    POLLS.store(0, Ordering::Relaxed);
                    run(&rt, &firer, variant, n, peer);
                    COUNTING.store(false, Ordering::Relaxed);
                    POLLS.load(Ordering::Relaxed) as f64 / n as f64
                };
                let polls = bench_checked_id(&mut group, BenchmarkId::new(name, n), check, |b| {
                    b.iter_custom(|iters| {
                        let cpu0 = cpu_time();
                        let start = Instant::now();
                        for _ in 0..iters {
                            run(&rt, &firer, variant, n, peer);
                        }
                        let wall = start.elapsed();
                        let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
                        let mut t = totals.lock().unwrap();
                        t.iters += iters;
                        t.wall += wall;
                        t.cpu = t.cpu.zip(cpu).map(|(t, c)| t + c);
                        wall
                    })
                });
                let t = totals.lock().unwrap();
                if let Some(polls) = polls {
                    let per = |d: Duration| d.as_secs_f64() * 1e6 / t.iters.max(1) as f64;
                    let cpu = t.cpu.map_or("n/a".to_owned(), |c| format!("{:.1}", per(c)));
                    eprintln!(
                        "fanout {:>6} {:>30} N={:>6}: wall {:>9.1} µs, cpu {:>9} µs, polls/N {:.2}",
                        variant.name(),
                        name,
                        n,
                        per(t.wall),
                        cpu,
                        polls
                    );
                    table.push((
                        format!("fanout_{},{name},{n},", variant.name()),
                        format!("{:.1},{cpu},{polls:.3}", per(t.wall)),
                    ));
                }
            }
        }
        group.finish();
    }
    for (key, row) in table {
        settings.upsert_csv(
            "fanout.csv",
            "group,function,n,wall_us,cpu_us,polls_per_child",
            &key,
            &row,
        );
    }
}
