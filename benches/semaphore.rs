//! Semaphore benchmarks: `awaitkit::Semaphore` against its peers, side by
//! side, as `/work/shared/BENCH.md` describes them.
//!
//! Functions (one per crate in every group, same workload, same driver):
//! `awaitkit` (`awaitkit::Semaphore`, strict FIFO), `tokio`
//! (`tokio::sync::Semaphore`, FIFO), `async_lock` (`async_lock::Semaphore`,
//! unfair: a releasing task can take the permit straight back),
//! `futures_intrusive_fair` (`futures_intrusive::sync::Semaphore::new(true,
//! n)`, BENCH.md's reference) and, as an extra column,
//! `futures_intrusive_unfair` (`new(false, n)`). Every acquire is the crate's
//! awaited `acquire` future (borrowed permits: `acquire()`, or `acquire(1)`
//! for futures-intrusive), and the permit is released by dropping it.
//!
//! Groups (throughput = acquisitions, so criterion's element rate is ns per
//! acquisition; the report divides each median by the acquisitions of one
//! iteration):
//!
//! * `semaphore_uncontended`: permits = 1, one task (an `async` block) that
//!   loops acquire + release. `Bencher::iter_custom` hands it the iteration
//!   count, so one criterion iteration = one acquire + release and the task
//!   runs as many as criterion's sampling asks for (BENCH.md's 10⁶ is the
//!   order of one sample; the untimed check runs exactly 10⁶). Driver: the
//!   task is pinned on the stack and polled with a waker whose `wake` is one
//!   relaxed store, re-polled only when that flag was set — it never is: no
//!   acquire ever waits here. The semaphore is built outside the timed loop.
//! * `semaphore_contended_local`: `futures::executor::LocalPool`, permits =
//!   10, 1 000 tasks (`spawn_local`), each 100 × (acquire, yield once holding
//!   the permit, release): 10⁵ acquisitions per iteration. Building the
//!   semaphore and the pool, spawning the tasks, `LocalPool::run` and
//!   dropping everything are timed. The yield is a future that wakes its own
//!   waker and returns `Pending` once (the same for every crate).
//! * `semaphore_multithread`: a tokio multi-thread runtime with 2 workers,
//!   permits = 8, 64 tasks sharing an `Arc` of the semaphore, each 3 125 ×
//!   (acquire, yield once holding it, release): 200 000 acquisitions per
//!   iteration. One iteration = `Runtime::block_on` of spawning the 64 tasks
//!   and awaiting their `JoinHandle`s (all timed). The yield while holding is
//!   what makes tasks queue: without it, 2 workers hold at most 2 of the 8
//!   permits at once and no acquire ever waits (the group would only measure
//!   cache-line ping-pong). Each sample builds a fresh runtime (outside the
//!   timed region, `iter_custom`): with one runtime for the whole process, a
//!   whole run once settled in an unrepresentative regime (every crate
//!   several times faster than usual, one several times slower; cause not
//!   established); a runtime per sample spreads such regimes over the
//!   samples, where the median absorbs them. Still the noisiest group: 3
//!   threads (2 workers + the `block_on` thread) on 2 cores, and every
//!   acquisition moves the semaphore's cache lines between the cores.
//!
//! Sanity checks (untimed, once per function before its timed runs, with
//! instrumented tasks that are compiled out of the timed ones):
//!
//! * uncontended: exactly 10⁶ acquisitions, the task completes in one poll
//!   (no acquire waits), `try_acquire` fails while the permit is held and
//!   succeeds after the loop.
//! * contended_local: every task finishes, 10⁵ acquisitions, at most 10
//!   holders at any time; each acquire that returned `Pending` on its first
//!   poll gets a ticket, and a waiter granted while an older ticket is still
//!   waiting counts as out of order. awaitkit must be strictly FIFO (0 out of
//!   order) and must make every acquisition beyond the first 10 wait (no
//!   barging: a releasing task queues behind the waiters).
//! * multithread: every task finishes, 200 000 acquisitions, at most 8
//!   holders at any time (atomic counters).
//!
//! The results (acquisitions, most holders, how many acquires waited, out of
//! order grants, the untimed run's ns per acquisition) go to
//! `<criterion dir>/semaphore_checks.csv` and stderr; the report shows the
//! share of acquisitions that waited: an unfair semaphore lets the releasing
//! task take its permit straight back, so almost nobody waits there, which is
//! why async-lock is the bar in `semaphore_contended_local`.
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 3 s.
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 1 s.
//!
//! The two contended groups use flat sampling (one iteration takes
//! milliseconds); `semaphore_multithread` measures for 2.5 s (quick) / 8 s
//! (full) so that every sample fits. A quick pass of the whole bench takes
//! about 40 s, a full one under 2 minutes (plus the build).
//!
//! The run writes its own marker,
//! `<criterion dir>/awaitkit-bench-run-semaphore.txt`, so running this bench
//! does not mark the other benches' results stale (and vice versa).
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench semaphore && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use common::{
    Driver, Settings, Tracker, bench_checked, expect_ok, multi_thread_runtime,
    time_on_fresh_runtime, unexpected, yield_now,
};
use criterion::{SamplingMode, Throughput};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// `semaphore_uncontended`: acquisitions of the untimed check (BENCH.md's N).
const UNCONTENDED_CHECK: u64 = 1_000_000;

/// `semaphore_contended_local`.
const LOCAL_PERMITS: usize = 10;
const LOCAL_TASKS: usize = 1_000;
const LOCAL_ROUNDS: usize = 100;
const LOCAL_ACQUISITIONS: u64 = (LOCAL_TASKS * LOCAL_ROUNDS) as u64;

/// `semaphore_multithread`.
const MT_WORKERS: usize = 2;
const MT_PERMITS: usize = 8;
const MT_TASKS: usize = 64;
const MT_ACQUISITIONS: u64 = 200_000;
const MT_ROUNDS: u64 = MT_ACQUISITIONS / MT_TASKS as u64;
const _: () = assert!(MT_ROUNDS * MT_TASKS as u64 == MT_ACQUISITIONS);

// ---------------------------------------------------------------------------
// The crates
// ---------------------------------------------------------------------------

/// One semaphore implementation, used the same way in every group.
trait Peer: 'static {
    type Sem: Send + Sync + 'static;
    /// One permit, released when dropped.
    type Permit<'a>: Send;

    /// A semaphore with `permits` permits.
    fn new(permits: usize) -> Self::Sem;

    /// The crate's awaited acquire of one permit.
    fn acquire(sem: &Self::Sem) -> impl Future<Output = Self::Permit<'_>> + Send;

    /// One permit now, or `None` (sanity checks only).
    fn try_acquire(sem: &Self::Sem) -> Option<Self::Permit<'_>>;
}

struct Awaitkit;
struct Tokio;
struct AsyncLock;
/// `futures_intrusive::sync::Semaphore::new(FAIR, n)`.
struct FuturesIntrusive<const FAIR: bool>;

impl Peer for Awaitkit {
    type Sem = awaitkit::Semaphore;
    type Permit<'a> = awaitkit::SemaphorePermit<'a>;

    fn new(permits: usize) -> Self::Sem {
        awaitkit::Semaphore::new(permits)
    }

    async fn acquire(sem: &Self::Sem) -> Self::Permit<'_> {
        expect_ok(sem.acquire().await, "awaitkit acquire failed")
    }

    fn try_acquire(sem: &Self::Sem) -> Option<Self::Permit<'_>> {
        sem.try_acquire().ok()
    }
}

impl Peer for Tokio {
    type Sem = tokio::sync::Semaphore;
    type Permit<'a> = tokio::sync::SemaphorePermit<'a>;

    fn new(permits: usize) -> Self::Sem {
        tokio::sync::Semaphore::new(permits)
    }

    async fn acquire(sem: &Self::Sem) -> Self::Permit<'_> {
        expect_ok(sem.acquire().await, "tokio acquire failed")
    }

    fn try_acquire(sem: &Self::Sem) -> Option<Self::Permit<'_>> {
        sem.try_acquire().ok()
    }
}

impl Peer for AsyncLock {
    type Sem = async_lock::Semaphore;
    type Permit<'a> = async_lock::SemaphoreGuard<'a>;

    fn new(permits: usize) -> Self::Sem {
        async_lock::Semaphore::new(permits)
    }

    async fn acquire(sem: &Self::Sem) -> Self::Permit<'_> {
        sem.acquire().await
    }

    fn try_acquire(sem: &Self::Sem) -> Option<Self::Permit<'_>> {
        sem.try_acquire()
    }
}

impl<const FAIR: bool> Peer for FuturesIntrusive<FAIR> {
    type Sem = futures_intrusive::sync::Semaphore;
    type Permit<'a> = futures_intrusive::sync::SemaphoreReleaser<'a>;

    fn new(permits: usize) -> Self::Sem {
        futures_intrusive::sync::Semaphore::new(FAIR, permits)
    }

    async fn acquire(sem: &Self::Sem) -> Self::Permit<'_> {
        sem.acquire(1).await
    }

    fn try_acquire(sem: &Self::Sem) -> Option<Self::Permit<'_>> {
        sem.try_acquire(1)
    }
}

// ---------------------------------------------------------------------------
// semaphore_uncontended
// ---------------------------------------------------------------------------

/// Polls `fut` to completion on `driver`, again only after its waker set
/// the flag. Returns the output and the number of polls.
fn block_on<F: Future>(driver: &Driver, fut: F) -> (F::Output, u32) {
    driver.block_on_with(fut, || unexpected("deadlock: pending and not woken"))
}

/// One task: `iters` × (acquire, release) on a semaphore with one permit.
async fn uncontended_task<P: Peer, const C: bool>(sem: &P::Sem, iters: u64) {
    for _ in 0..iters {
        let permit = P::acquire(sem).await;
        if C && P::try_acquire(sem).is_some() {
            unexpected("try_acquire succeeded while the only permit is held");
        }
        drop(permit);
    }
}

fn uncontended_timed<P: Peer>(iters: u64) -> Duration {
    let driver = Driver::new();
    let sem = P::new(1);
    let start = Instant::now();
    block_on(&driver, uncontended_task::<P, false>(&sem, iters));
    start.elapsed()
}

fn uncontended_check<P: Peer>() -> Check {
    let driver = Driver::new();
    let sem = P::new(1);
    let start = Instant::now();
    let ((), polls) = block_on(
        &driver,
        uncontended_task::<P, true>(&sem, UNCONTENDED_CHECK),
    );
    let elapsed = start.elapsed();
    assert_eq!(polls, 1, "an uncontended acquire waited");
    assert!(
        P::try_acquire(&sem).is_some(),
        "the permit did not come back"
    );
    Check {
        acquisitions: UNCONTENDED_CHECK,
        max_holders: 1,
        waited: 0,
        out_of_order: Some(0),
        ns_per_acquisition: elapsed.as_nanos() as f64 / UNCONTENDED_CHECK as f64,
    }
}

// ---------------------------------------------------------------------------
// semaphore_contended_local
// ---------------------------------------------------------------------------

/// What the instrumented local tasks observe (one thread: plain cells).
#[derive(Default)]
struct LocalTrack {
    holders: Cell<usize>,
    max_holders: Cell<usize>,
    acquisitions: Cell<u64>,
    tasks_done: Cell<usize>,
    waited: Cell<u64>,
    next_ticket: Cell<u64>,
    /// Tickets of the acquires that are waiting.
    waiting: RefCell<BTreeSet<u64>>,
    out_of_order: Cell<u64>,
}

thread_local! {
    static LOCAL: LocalTrack = LocalTrack::default();
}

/// An acquire future that records whether and in which order it waited.
struct LocalTracked<F> {
    fut: F,
    ticket: Option<u64>,
}

impl<F: Future + Unpin> Future for LocalTracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = Pin::new(&mut self.fut).poll(cx);
        LOCAL.with(|t| match out {
            Poll::Pending => {
                if self.ticket.is_none() {
                    let ticket = t.next_ticket.get();
                    t.next_ticket.set(ticket + 1);
                    t.waiting.borrow_mut().insert(ticket);
                    self.ticket = Some(ticket);
                }
            }
            Poll::Ready(_) => {
                if let Some(ticket) = self.ticket {
                    let mut waiting = t.waiting.borrow_mut();
                    if waiting.first() != Some(&ticket) {
                        t.out_of_order.set(t.out_of_order.get() + 1);
                    }
                    waiting.remove(&ticket);
                    t.waited.set(t.waited.get() + 1);
                }
                t.acquisitions.set(t.acquisitions.get() + 1);
                t.holders.set(t.holders.get() + 1);
                t.max_holders.set(t.max_holders.get().max(t.holders.get()));
            }
        });
        out
    }
}

async fn local_task<P: Peer, const C: bool>(sem: Rc<P::Sem>) {
    for _ in 0..LOCAL_ROUNDS {
        let permit = if C {
            let fut = pin!(P::acquire(&sem));
            LocalTracked { fut, ticket: None }.await
        } else {
            P::acquire(&sem).await
        };
        yield_now().await;
        if C {
            LOCAL.with(|t| t.holders.set(t.holders.get() - 1));
        }
        drop(permit);
    }
    if C {
        LOCAL.with(|t| t.tasks_done.set(t.tasks_done.get() + 1));
    }
}

fn local_run<P: Peer, const C: bool>() {
    let sem = Rc::new(P::new(LOCAL_PERMITS));
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    for _ in 0..LOCAL_TASKS {
        if spawner
            .spawn_local(local_task::<P, C>(sem.clone()))
            .is_err()
        {
            unexpected("spawn_local failed");
        }
    }
    pool.run();
}

fn local_check<P: Peer>() -> Check {
    LOCAL.with(|t| {
        t.holders.set(0);
        t.max_holders.set(0);
        t.acquisitions.set(0);
        t.tasks_done.set(0);
        t.waited.set(0);
        t.next_ticket.set(0);
        t.waiting.borrow_mut().clear();
        t.out_of_order.set(0);
    });
    let start = Instant::now();
    local_run::<P, true>();
    let elapsed = start.elapsed();
    LOCAL.with(|t| {
        assert_eq!(t.tasks_done.get(), LOCAL_TASKS, "not every task finished");
        assert_eq!(t.acquisitions.get(), LOCAL_ACQUISITIONS);
        assert_eq!(t.holders.get(), 0);
        assert!(t.waiting.borrow().is_empty(), "acquires still waiting");
        assert!(
            t.max_holders.get() <= LOCAL_PERMITS,
            "{} holders at once with {LOCAL_PERMITS} permits",
            t.max_holders.get()
        );
        Check {
            acquisitions: t.acquisitions.get(),
            max_holders: t.max_holders.get(),
            waited: t.waited.get(),
            out_of_order: Some(t.out_of_order.get()),
            ns_per_acquisition: elapsed.as_nanos() as f64 / LOCAL_ACQUISITIONS as f64,
        }
    })
}

// ---------------------------------------------------------------------------
// semaphore_multithread
// ---------------------------------------------------------------------------

/// What the instrumented multithread tasks observe (atomics).
static MT: Tracker = Tracker::new();

async fn mt_task<P: Peer, const C: bool>(sem: Arc<P::Sem>) {
    for _ in 0..MT_ROUNDS {
        let permit = if C {
            MT.track(pin!(P::acquire(&sem))).await
        } else {
            P::acquire(&sem).await
        };
        yield_now().await;
        if C {
            MT.release();
        }
        drop(permit);
    }
    if C {
        MT.task_done();
    }
}

/// The runtime of `semaphore_multithread`: built (and dropped) outside the
/// timed region, one per sample.
fn mt_runtime() -> Runtime {
    multi_thread_runtime(MT_WORKERS)
}

fn mt_run<P: Peer, const C: bool>(rt: &Runtime) {
    let sem = Arc::new(P::new(MT_PERMITS));
    rt.block_on(async {
        let tasks: Vec<_> = (0..MT_TASKS)
            .map(|_| rt.spawn(mt_task::<P, C>(sem.clone())))
            .collect();
        for task in tasks {
            if task.await.is_err() {
                unexpected("a task panicked");
            }
        }
    });
}

fn mt_check<P: Peer>(rt: &Runtime) -> Check {
    MT.reset();
    let start = Instant::now();
    mt_run::<P, true>(rt);
    let elapsed = start.elapsed();
    assert_eq!(
        MT.tasks_done.load(Relaxed),
        MT_TASKS,
        "not every task finished"
    );
    assert_eq!(MT.got.load(Relaxed), MT_ACQUISITIONS);
    assert_eq!(MT.held.load(Relaxed), 0);
    let max_holders = MT.max_held.load(Relaxed);
    assert!(
        max_holders <= MT_PERMITS,
        "{max_holders} holders at once with {MT_PERMITS} permits"
    );
    Check {
        acquisitions: MT_ACQUISITIONS,
        max_holders,
        waited: MT.waited.load(Relaxed),
        // Grant order is not observable across threads.
        out_of_order: None,
        ns_per_acquisition: elapsed.as_nanos() as f64 / MT_ACQUISITIONS as f64,
    }
}

// ---------------------------------------------------------------------------
// Settings, checks, registration
// ---------------------------------------------------------------------------

/// The outcome of an untimed sanity check.
struct Check {
    acquisitions: u64,
    max_holders: usize,
    /// Acquires whose first poll returned `Pending`.
    waited: u64,
    /// Waiters granted while an older waiter still waited (`None`: not
    /// observable).
    out_of_order: Option<u64>,
    ns_per_acquisition: f64,
}

impl Settings {
    /// One multithread iteration takes 70–250 ms: room for every sample.
    fn multithread_measurement(&self) -> Duration {
        if self.quick {
            Duration::from_millis(2500)
        } else {
            Duration::from_secs(8)
        }
    }

    /// Records a sanity check in `semaphore_checks.csv` (replacing an older
    /// row for the same function) and on stderr.
    fn record_check(&self, group: &str, name: &str, check: &Check) {
        let out_of_order = check
            .out_of_order
            .map_or_else(|| "n/a".to_owned(), |v| v.to_string());
        eprintln!(
            "check {group}/{name}: {} acquisitions, at most {} holders, {} waited ({:.1} %), \
             {out_of_order} out of order, untimed {:.1} ns/acquisition",
            check.acquisitions,
            check.max_holders,
            check.waited,
            100.0 * check.waited as f64 / check.acquisitions as f64,
            check.ns_per_acquisition,
        );
        let row = format!(
            "{},{},{},{},{:.1}",
            check.acquisitions,
            check.max_holders,
            check.waited,
            check
                .out_of_order
                .map_or_else(String::new, |v| v.to_string()),
            check.ns_per_acquisition,
        );
        self.upsert_csv(
            "semaphore_checks.csv",
            "group,function,acquisitions,max_holders,waited,out_of_order,check_ns_per_acquisition",
            &format!("{group},{name},"),
            &row,
        );
    }
}

type UncontendedFn = fn(u64) -> Duration;
type CheckFn = fn() -> Check;
type MtFn = fn(&Runtime);
type MtCheckFn = fn(&Runtime) -> Check;

/// One bench function per crate: criterion id, timed run, sanity check.
struct Entry<T, K> {
    name: &'static str,
    timed: T,
    check: K,
    /// Whether the check must see strict FIFO grants.
    fifo: bool,
}

macro_rules! entries {
    ($timed:ident, $check:ident) => {
        [
            Entry {
                name: "awaitkit",
                timed: $timed::<Awaitkit>,
                check: $check::<Awaitkit>,
                fifo: true,
            },
            Entry {
                name: "tokio",
                timed: $timed::<Tokio>,
                check: $check::<Tokio>,
                fifo: false,
            },
            Entry {
                name: "async_lock",
                timed: $timed::<AsyncLock>,
                check: $check::<AsyncLock>,
                fifo: false,
            },
            Entry {
                name: "futures_intrusive_fair",
                timed: $timed::<FuturesIntrusive<true>>,
                check: $check::<FuturesIntrusive<true>>,
                fifo: false,
            },
            Entry {
                name: "futures_intrusive_unfair",
                timed: $timed::<FuturesIntrusive<false>>,
                check: $check::<FuturesIntrusive<false>>,
                fifo: false,
            },
        ]
    };
}

fn local_timed<P: Peer>() {
    local_run::<P, false>();
}

fn mt_timed<P: Peer>(rt: &Runtime) {
    mt_run::<P, false>(rt);
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-semaphore.txt");

    // semaphore_uncontended: one criterion iteration = one acquire + release.
    let group_name = "semaphore_uncontended";
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    let uncontended: [Entry<UncontendedFn, CheckFn>; 5] =
        entries!(uncontended_timed, uncontended_check);
    for entry in &uncontended {
        let check = bench_checked(&mut group, entry.name, entry.check, |b| {
            b.iter_custom(entry.timed)
        });
        if let Some(check) = check {
            settings.record_check(group_name, entry.name, &check);
        }
    }
    group.finish();

    // semaphore_contended_local: one iteration = 10⁵ acquisitions.
    let group_name = "semaphore_contended_local";
    let mut group = c.benchmark_group(group_name);
    group
        .throughput(Throughput::Elements(LOCAL_ACQUISITIONS))
        .sampling_mode(SamplingMode::Flat);
    let local: [Entry<fn(), CheckFn>; 5] = entries!(local_timed, local_check);
    for entry in &local {
        let fifo_check = || {
            let result = (entry.check)();
            if entry.fifo {
                assert_eq!(
                    result.out_of_order,
                    Some(0),
                    "{}: grants not in FIFO order",
                    entry.name
                );
                assert_eq!(
                    result.waited,
                    LOCAL_ACQUISITIONS - LOCAL_PERMITS as u64,
                    "{}: an acquire barged past the queue",
                    entry.name
                );
            }
            result
        };
        let check = bench_checked(&mut group, entry.name, fifo_check, |b| b.iter(entry.timed));
        if let Some(check) = check {
            settings.record_check(group_name, entry.name, &check);
        }
    }
    group.finish();

    // semaphore_multithread: one iteration = 200 000 acquisitions, a fresh
    // runtime per sample.
    let group_name = "semaphore_multithread";
    let mut group = c.benchmark_group(group_name);
    group
        .throughput(Throughput::Elements(MT_ACQUISITIONS))
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(settings.multithread_measurement());
    let mt: [Entry<MtFn, MtCheckFn>; 5] = entries!(mt_timed, mt_check);
    for entry in &mt {
        let check = bench_checked(
            &mut group,
            entry.name,
            || (entry.check)(&mt_runtime()),
            |b| b.iter_custom(|iters| time_on_fresh_runtime(iters, mt_runtime, entry.timed)),
        );
        if let Some(check) = check {
            settings.record_check(group_name, entry.name, &check);
        }
    }
    group.finish();

    c.final_summary();
}
