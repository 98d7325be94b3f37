//! Pool benchmarks: `awaitkit::pool::Pool` against deadpool (managed and
//! unmanaged), side by side, as `/work/shared/BENCH.md` describes them.
//!
//! Functions (one per crate in every group, same workload, same runtime):
//!
//! * `awaitkit`: `awaitkit::pool::Pool::new(manager, 16)` with a trivial
//!   [`Manager`](awaitkit::pool::Manager) (`create` returns a small struct,
//!   `recycle` is the default `Ok(())`); `pool.get().await`.
//! * `deadpool_managed`: `deadpool::managed::Pool::builder(manager)
//!   .max_size(16).build()` (default config: FIFO queue mode, no timeouts,
//!   no hooks) with the same trivial manager (`recycle` returns `Ok(())`);
//!   `pool.get().await`.
//! * `deadpool_unmanaged`: `deadpool::unmanaged::Pool::from(vec of 16
//!   objects)` (no manager: the pool is filled up front); `pool.get().await`.
//!
//! Every object is returned by dropping its guard. Objects are created
//! lazily by the two managed pools (16 creates per iteration, against
//! 640 000 gets); the unmanaged pool is built from 16 ready objects.
//!
//! Groups (throughput = gets, so criterion's element rate is ns per get; the
//! report divides each median by the 640 000 gets of one iteration):
//!
//! * `pool_get_return` (the BENCH.md group): a tokio **current-thread**
//!   runtime; 64 tasks (`tokio::spawn`) sharing an `Arc` of a pool of 16,
//!   each 10 000 × (get, increment a counter in the object, **yield once
//!   holding it**, drop the guard): 640 000 gets per iteration. One
//!   iteration = `Runtime::block_on` of building the pool, spawning the 64
//!   tasks, awaiting their `JoinHandle`s and dropping the pool (all timed).
//!   The yield while holding is the realistic use (a connection is held
//!   across the query's await) and what makes tasks queue: without it a
//!   task on one thread gets and returns without ever letting another task
//!   run, so no get would ever wait and the group would measure only the
//!   uncontended fast path. With it, 16 tasks hold objects and 48 wait: on
//!   a FIFO pool almost every get waits (a returning task queues behind the
//!   waiters). The yield is a future that wakes its own waker and returns
//!   `Pending` once (the same for every crate; not `tokio::task::yield_now`,
//!   whose deferred wake-up depends on the runtime's driver).
//! * `pool_get_return_multithread` (**extra**, not a BENCH.md group): the
//!   same workload on a tokio multi-thread runtime with 2 workers (the 64
//!   tasks on the workers, the `block_on` thread only joins them). Noisy: 3
//!   threads on 2 cores, and every get moves the pool's cache lines between
//!   the cores.
//!
//! Each sample builds a fresh runtime, outside the timed region
//! (`iter_custom`), as `benches/semaphore.rs` does for its multi-thread
//! group.
//!
//! Sanity checks (untimed, once per function before its timed runs, with
//! instrumented tasks that are compiled out of the timed ones; atomic
//! counters, so the same checks serve both groups):
//!
//! * every task finished, exactly 640 000 gets, every get succeeded;
//! * at most 16 objects held at any time (a counter incremented when a get
//!   returns, decremented before the guard drops), and no object handed out
//!   twice at once (each object has an id < 64; a bit per id is set while
//!   it is held, and a get that finds its bit already set fails the check);
//! * at most 16 objects ever created (the managers count their creates);
//! * how many gets waited (their first poll returned `Pending`) — shown in
//!   the report: with FIFO waiting every get past the first 16 waits on
//!   one thread.
//!
//! The results (gets, most held, objects created, waited, the untimed run's
//! ns per get) go to `<criterion dir>/pool_checks.csv` and stderr.
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 8 s
//!   (current-thread) / 20 s (multithread).
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 2.5 s (current-thread) / 6 s (multithread).
//!
//! Both groups use flat sampling (one iteration takes tens to hundreds of
//! milliseconds).
//!
//! `AWAITKIT_POOL_BENCH_ONLY=awaitkit` (a comma-separated list of function
//! names) runs only those functions, for profiling one crate's path with
//! `perf`; the report needs a full run.
//!
//! The run writes its own marker, `<criterion dir>/awaitkit-bench-run-pool.txt`,
//! so running this bench does not mark the other benches' results stale (and
//! vice versa).
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench pool && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use common::{
    Settings, Tracker, bench_checked, current_thread_runtime, expect_ok, multi_thread_runtime,
    time_on_fresh_runtime, unexpected, yield_now,
};
use criterion::{SamplingMode, Throughput};
use std::future::Future;
use std::ops::DerefMut;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Objects in the pool.
const POOL_SIZE: usize = 16;
/// Tasks sharing the pool.
const TASKS: usize = 64;
/// Gets per task.
const ROUNDS: u64 = 10_000;
/// Gets per iteration.
const GETS: u64 = TASKS as u64 * ROUNDS;
/// Workers of `pool_get_return_multithread`.
const MT_WORKERS: usize = 2;

// ---------------------------------------------------------------------------
// The pooled object and the managers
// ---------------------------------------------------------------------------

/// What every pool holds: an id (for the exclusivity check) and a use count
/// (touched while held, like a connection's state).
#[derive(Debug)]
struct Conn {
    id: usize,
    uses: u64,
}

/// Creates counted by the managers (the check resets it).
static CREATED: AtomicUsize = AtomicUsize::new(0);

fn new_conn() -> Conn {
    Conn {
        id: CREATED.fetch_add(1, Relaxed),
        uses: 0,
    }
}

/// awaitkit's trivial manager: `recycle` is the default (`Ok(())`).
#[derive(Default)]
struct AwaitkitManager;

impl awaitkit::pool::Manager for AwaitkitManager {
    type Object = Conn;
    type Error = std::convert::Infallible;

    async fn create(&self) -> Result<Conn, Self::Error> {
        Ok(new_conn())
    }
}

/// awaitkit's manager without a recycle step (`Manager::RECYCLE = false`):
/// idle objects are handed out directly, like deadpool's unmanaged pool.
#[derive(Default)]
struct AwaitkitNoRecycle;

impl awaitkit::pool::Manager for AwaitkitNoRecycle {
    type Object = Conn;
    type Error = std::convert::Infallible;
    const RECYCLE: bool = false;

    async fn create(&self) -> Result<Conn, Self::Error> {
        Ok(new_conn())
    }
}

/// deadpool's trivial manager: `recycle` returns `Ok(())`.
struct DeadpoolManager;

impl deadpool::managed::Manager for DeadpoolManager {
    type Type = Conn;
    type Error = std::convert::Infallible;

    async fn create(&self) -> Result<Conn, Self::Error> {
        Ok(new_conn())
    }

    async fn recycle(
        &self,
        _conn: &mut Conn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Self::Error> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The crates
// ---------------------------------------------------------------------------

/// One pool implementation, used the same way in every group.
trait Peer: 'static {
    type Pool: Send + Sync + 'static;
    /// An object taken from the pool, returned when dropped.
    type Guard: DerefMut<Target = Conn> + Send;

    /// A pool of `POOL_SIZE` objects.
    fn new() -> Self::Pool;

    /// The crate's awaited get.
    fn get(pool: &Self::Pool) -> impl Future<Output = Self::Guard> + Send;
}

/// awaitkit's pool with manager `M`.
struct Awaitkit<M>(std::marker::PhantomData<M>);
struct DeadpoolManaged;
struct DeadpoolUnmanaged;

impl<M: awaitkit::pool::Manager<Object = Conn> + Default> Peer for Awaitkit<M> {
    type Pool = awaitkit::pool::Pool<M>;
    type Guard = awaitkit::pool::Pooled<M>;

    fn new() -> Self::Pool {
        awaitkit::pool::Pool::new(M::default(), POOL_SIZE)
    }

    async fn get(pool: &Self::Pool) -> Self::Guard {
        expect_ok(pool.get().await, "awaitkit get failed")
    }
}

impl Peer for DeadpoolManaged {
    type Pool = deadpool::managed::Pool<DeadpoolManager>;
    type Guard = deadpool::managed::Object<DeadpoolManager>;

    fn new() -> Self::Pool {
        expect_ok(
            deadpool::managed::Pool::builder(DeadpoolManager)
                .max_size(POOL_SIZE)
                .build(),
            "deadpool managed build failed",
        )
    }

    async fn get(pool: &Self::Pool) -> Self::Guard {
        expect_ok(pool.get().await, "deadpool managed get failed")
    }
}

impl Peer for DeadpoolUnmanaged {
    type Pool = deadpool::unmanaged::Pool<Conn>;
    type Guard = deadpool::unmanaged::Object<Conn>;

    fn new() -> Self::Pool {
        deadpool::unmanaged::Pool::from((0..POOL_SIZE).map(|_| new_conn()).collect::<Vec<_>>())
    }

    async fn get(pool: &Self::Pool) -> Self::Guard {
        expect_ok(pool.get().await, "deadpool unmanaged get failed")
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// What the instrumented tasks observe (atomics: shared by both groups):
/// objects held, gets, gets that waited, tasks finished.
static TRACK: Tracker = Tracker::new();
/// One bit per object id while it is held.
static HELD_IDS: AtomicU64 = AtomicU64::new(0);
static DOUBLE_HANDOUTS: AtomicU64 = AtomicU64::new(0);

fn object_bit(conn: &Conn) -> u64 {
    if conn.id >= 64 {
        unexpected("more than 64 objects created");
    }
    1 << conn.id
}

async fn task<P: Peer, const C: bool>(pool: Arc<P::Pool>) {
    for _ in 0..ROUNDS {
        let mut conn = if C {
            let conn = TRACK.track(pin!(P::get(&pool))).await;
            let bit = object_bit(&conn);
            if HELD_IDS.fetch_or(bit, Relaxed) & bit != 0 {
                DOUBLE_HANDOUTS.fetch_add(1, Relaxed);
            }
            conn
        } else {
            P::get(&pool).await
        };
        conn.uses += 1;
        yield_now().await;
        if C {
            HELD_IDS.fetch_and(!object_bit(&conn), Relaxed);
            TRACK.release();
        }
        drop(conn);
    }
    if C {
        TRACK.task_done();
    }
}

/// One iteration: build the pool, run the 64 tasks to completion, drop it.
fn run<P: Peer, const C: bool>(rt: &Runtime) {
    rt.block_on(async {
        let pool = Arc::new(P::new());
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| tokio::spawn(task::<P, C>(pool.clone())))
            .collect();
        for task in tasks {
            if task.await.is_err() {
                unexpected("a task panicked");
            }
        }
        drop(pool);
    });
}

fn multithread_runtime() -> Runtime {
    multi_thread_runtime(MT_WORKERS)
}

// ---------------------------------------------------------------------------
// Checks, settings, registration
// ---------------------------------------------------------------------------

/// The outcome of an untimed sanity check.
struct Check {
    gets: u64,
    max_held: usize,
    created: usize,
    /// Gets whose first poll returned `Pending`.
    waited: u64,
    ns_per_get: f64,
}

fn check<P: Peer>(rt: &Runtime) -> Check {
    TRACK.reset();
    CREATED.store(0, Relaxed);
    for counter in [&HELD_IDS, &DOUBLE_HANDOUTS] {
        counter.store(0, Relaxed);
    }
    let start = Instant::now();
    run::<P, true>(rt);
    let elapsed = start.elapsed();
    assert_eq!(
        TRACK.tasks_done.load(Relaxed),
        TASKS,
        "not every task finished"
    );
    assert_eq!(TRACK.got.load(Relaxed), GETS, "wrong number of gets");
    assert_eq!(TRACK.held.load(Relaxed), 0);
    assert_eq!(HELD_IDS.load(Relaxed), 0);
    assert_eq!(
        DOUBLE_HANDOUTS.load(Relaxed),
        0,
        "an object was handed out twice at once"
    );
    let max_held = TRACK.max_held.load(Relaxed);
    assert!(
        max_held <= POOL_SIZE,
        "{max_held} objects held at once in a pool of {POOL_SIZE}"
    );
    let created = CREATED.load(Relaxed);
    assert!(
        created <= POOL_SIZE,
        "{created} objects created for a pool of {POOL_SIZE}"
    );
    Check {
        gets: GETS,
        max_held,
        created,
        waited: TRACK.waited.load(Relaxed),
        ns_per_get: elapsed.as_nanos() as f64 / GETS as f64,
    }
}

impl Settings {
    fn pool_measurement(&self, multithread: bool) -> Duration {
        match (self.quick, multithread) {
            (true, false) => Duration::from_millis(2500),
            (true, true) => Duration::from_secs(6),
            (false, false) => Duration::from_secs(8),
            (false, true) => Duration::from_secs(20),
        }
    }

    /// Records a sanity check in `pool_checks.csv` (replacing an older row
    /// for the same function) and on stderr.
    fn record_check(&self, group: &str, name: &str, check: &Check) {
        eprintln!(
            "check {group}/{name}: {} gets, at most {} held, {} created, {} waited ({:.1} %), \
             untimed {:.1} ns/get",
            check.gets,
            check.max_held,
            check.created,
            check.waited,
            100.0 * check.waited as f64 / check.gets as f64,
            check.ns_per_get,
        );
        let row = format!(
            "{},{},{},{},{:.1}",
            check.gets, check.max_held, check.created, check.waited, check.ns_per_get,
        );
        self.upsert_csv(
            "pool_checks.csv",
            "group,function,gets,max_held,created,waited,check_ns_per_get",
            &format!("{group},{name},"),
            &row,
        );
    }
}

type RuntimeFn = fn() -> Runtime;

/// One bench function per crate: criterion id, timed run, sanity check.
struct Entry {
    name: &'static str,
    timed: fn(&Runtime),
    check: fn(&Runtime) -> Check,
}

fn entries() -> [Entry; 4] {
    [
        Entry {
            name: "awaitkit",
            timed: run::<Awaitkit<AwaitkitManager>, false>,
            check: check::<Awaitkit<AwaitkitManager>>,
        },
        Entry {
            name: "awaitkit_no_recycle",
            timed: run::<Awaitkit<AwaitkitNoRecycle>, false>,
            check: check::<Awaitkit<AwaitkitNoRecycle>>,
        },
        Entry {
            name: "deadpool_managed",
            timed: run::<DeadpoolManaged, false>,
            check: check::<DeadpoolManaged>,
        },
        Entry {
            name: "deadpool_unmanaged",
            timed: run::<DeadpoolUnmanaged, false>,
            check: check::<DeadpoolUnmanaged>,
        },
    ]
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-pool.txt");
    let only = std::env::var("AWAITKIT_POOL_BENCH_ONLY").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|n| n.trim() == name))
    };

    // (group, runtime per sample, multithread)
    let groups: [(&str, RuntimeFn, bool); 2] = [
        ("pool_get_return", current_thread_runtime, false),
        ("pool_get_return_multithread", multithread_runtime, true),
    ];
    for (group_name, runtime, multithread) in groups {
        let mut group = c.benchmark_group(group_name);
        group
            .throughput(Throughput::Elements(GETS))
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(settings.pool_measurement(multithread));
        for entry in entries().iter().filter(|e| selected(e.name)) {
            let check = bench_checked(
                &mut group,
                entry.name,
                || (entry.check)(&runtime()),
                |b| b.iter_custom(|iters| time_on_fresh_runtime(iters, runtime, entry.timed)),
            );
            if let Some(check) = check {
                settings.record_check(group_name, entry.name, &check);
            }
        }
        group.finish();
    }

    c.final_summary();
}
