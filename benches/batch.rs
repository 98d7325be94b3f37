//! Batch benchmark: `awaitkit::process_batch` against the stream adaptors
//! that run a function over many items with a concurrency limit, side by
//! side, as `/work/shared/BENCH.md` describes them.
//!
//! Group `batch` (one function per crate, parameter = N = 10 000 items,
//! limit 64). Every crate gets the items `0..N` and the same function
//! `f(i)` = a child that wakes its own waker and returns `Pending` once,
//! then `Ready(i)`:
//!
//! * `awaitkit`: `awaitkit::process_batch(0..N, 64, f)` (sliding window,
//!   outputs in input order);
//! * `futures_buffered`: `stream::iter(0..N).map(f).buffered(64)
//!   .collect::<Vec<_>>()` (ordered);
//! * `fb_buffered_ordered`: futures-buffered
//!   `BufferedStreamExt::buffered_ordered(64)` + collect (ordered);
//! * `futures_buffer_unordered`: `...buffer_unordered(64)` + collect
//!   (**unordered**: a reference, not an ordered peer — the bar compares
//!   against the fastest ordered peer);
//! * `fb_buffered_unordered`: futures-buffered `buffered_unordered(64)` +
//!   collect (**extra** unordered reference, not in BENCH.md).
//!
//! Driver: the same minimal single-threaded driver as
//! `benches/combinators.rs`: the top-level waker's `wake` is one relaxed
//! store to an `AtomicBool`, and the future is polled again only when that
//! flag was set. Building the children (lazily, as each crate pulls its
//! items), driving the batch, and dropping the output `Vec` are all inside
//! the timed region, for every crate alike.
//!
//! Untimed checks: before the timed runs of each function, one run with
//! instrumented children (compiled out of the timed ones: a separate child
//! type with thread-local counters and a `Drop`) checks
//!
//! * the outputs: exactly `0..N` in input order for the ordered crates, the
//!   set `0..N` for the unordered references (panics otherwise);
//! * the concurrency limit: a gauge incremented when a child is built and
//!   decremented when it is dropped, whose maximum must be ≤ 64 (panics
//!   otherwise) — the maximum is recorded too (a sliding window reaches 64);
//! * every child dropped by the end (the gauge is back to 0);
//! * child polls / N (2.00 is the minimum: each child is polled once to
//!   yield and once to finish).
//!
//! The results go to `<criterion dir>/batch_checks.csv` (columns `group,
//! function,n,polls_per_n,max_alive,order`) and stderr.
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 3 s.
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 1 s. N is 10 000 in both modes.
//!
//! The run writes its own marker, `<criterion dir>/awaitkit-bench-run-batch.txt`.
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench batch && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use common::{Driver, Settings, bench_checked_id};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use futures_buffered::BufferedStreamExt;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Items per iteration.
const N: usize = 10_000;
/// Concurrency limit.
const LIMIT: usize = 64;
const GROUP: &str = "batch";

// ---------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------

/// Wakes itself and returns `Pending` once, then `Ready(index)` (timed).
struct YieldChild {
    index: usize,
    yielded: bool,
}

impl Future for YieldChild {
    type Output = usize;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.yielded {
            return Poll::Ready(self.index);
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

thread_local! {
    static POLLS: Cell<u64> = const { Cell::new(0) };
    static ALIVE: Cell<usize> = const { Cell::new(0) };
    static MAX_ALIVE: Cell<usize> = const { Cell::new(0) };
}

/// [`YieldChild`] with counters (untimed checks only): polls, and a gauge
/// of children alive (built and not yet dropped).
struct CountedChild(YieldChild);

impl CountedChild {
    fn new(index: usize) -> Self {
        let alive = ALIVE.with(|a| {
            a.set(a.get() + 1);
            a.get()
        });
        MAX_ALIVE.with(|m| m.set(m.get().max(alive)));
        CountedChild(YieldChild {
            index,
            yielded: false,
        })
    }
}

impl Future for CountedChild {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        POLLS.with(|p| p.set(p.get() + 1));
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for CountedChild {
    fn drop(&mut self) {
        ALIVE.with(|a| a.set(a.get() - 1));
    }
}

/// A kind of child: timed (`YieldChild`) or counted (`CountedChild`).
trait Kind {
    const COUNT: bool;
    type Child: Future<Output = usize> + Unpin;
    fn child(index: usize) -> Self::Child;
}

struct Timed;
struct Counted;

impl Kind for Timed {
    const COUNT: bool = false;
    type Child = YieldChild;
    #[inline]
    fn child(index: usize) -> YieldChild {
        YieldChild {
            index,
            yielded: false,
        }
    }
}

impl Kind for Counted {
    const COUNT: bool = true;
    type Child = CountedChild;
    fn child(index: usize) -> CountedChild {
        CountedChild::new(index)
    }
}

// ---------------------------------------------------------------------------
// One function per crate
// ---------------------------------------------------------------------------

/// Counting runs check the order (ordered crates) and hand the output back
/// for the set check (unordered ones); timed runs return only its length.
fn finish<K: Kind>(out: Vec<usize>, ordered: bool) -> usize {
    assert_eq!(out.len(), N, "not every item produced an output");
    if K::COUNT {
        if ordered {
            assert!(out.iter().copied().eq(0..N), "outputs not in input order");
        } else {
            let mut sorted = out.clone();
            sorted.sort_unstable();
            assert!(
                sorted.iter().copied().eq(0..N),
                "outputs are not the set 0..N"
            );
        }
    }
    out.len()
}

fn awaitkit<K: Kind>(d: &Driver) -> usize {
    let out = d.block_on(awaitkit::process_batch(0..N, LIMIT, K::child));
    finish::<K>(out, true)
}

/// `$name`: the items as a stream of children through the adaptor
/// `$adaptor(LIMIT)`, collected into a `Vec`.
macro_rules! stream_adaptor {
    ($name:ident, $adaptor:ident, ordered: $ordered:expr) => {
        fn $name<K: Kind>(d: &Driver) -> usize {
            let out: Vec<usize> = d.block_on(
                futures::stream::iter(0..N)
                    .map(K::child)
                    .$adaptor(LIMIT)
                    .collect(),
            );
            finish::<K>(out, $ordered)
        }
    };
}

stream_adaptor!(futures_buffered, buffered, ordered: true);
stream_adaptor!(fb_buffered_ordered, buffered_ordered, ordered: true);
stream_adaptor!(futures_buffer_unordered, buffer_unordered, ordered: false);
stream_adaptor!(fb_buffered_unordered, buffered_unordered, ordered: false);

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

type Run = fn(&Driver) -> usize;

struct Entry {
    name: &'static str,
    timed: Run,
    counted: Run,
    ordered: bool,
}

macro_rules! entry {
    ($name:literal, $f:ident, $ordered:expr) => {
        Entry {
            name: $name,
            timed: $f::<Timed>,
            counted: $f::<Counted>,
            ordered: $ordered,
        }
    };
}

/// The untimed check: runs `entry` once with counted children, asserts the
/// order and the limit, records polls / N and the most children alive.
fn check(settings: &Settings, driver: &Driver, entry: &Entry) {
    POLLS.with(|p| p.set(0));
    ALIVE.with(|a| a.set(0));
    MAX_ALIVE.with(|m| m.set(0));
    let done = (entry.counted)(driver);
    assert_eq!(done, N);
    let polls = POLLS.with(Cell::get);
    let alive = ALIVE.with(Cell::get);
    let max_alive = MAX_ALIVE.with(Cell::get);
    assert_eq!(alive, 0, "{}: {alive} children not dropped", entry.name);
    assert!(
        max_alive <= LIMIT,
        "{}: {max_alive} children alive at once (limit {LIMIT})",
        entry.name
    );
    let polls_per_n = polls as f64 / N as f64;
    let order = if entry.ordered { "input" } else { "set" };
    eprintln!(
        "check {GROUP}/{}/{N}: polls/N {polls_per_n:.2}, most alive {max_alive}, order ok ({order})",
        entry.name
    );
    settings.upsert_csv(
        "batch_checks.csv",
        "group,function,n,polls_per_n,max_alive,order",
        &format!("{GROUP},{},{N},", entry.name),
        &format!("{polls_per_n:.4},{max_alive},{order}"),
    );
}

fn main() {
    let settings = Settings::from_env();
    let mut c: Criterion = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-batch.txt");

    let entries = [
        entry!("awaitkit", awaitkit, true),
        entry!("futures_buffered", futures_buffered, true),
        entry!("fb_buffered_ordered", fb_buffered_ordered, true),
        entry!("futures_buffer_unordered", futures_buffer_unordered, false),
        entry!("fb_buffered_unordered", fb_buffered_unordered, false),
    ];

    let driver = Driver::new();
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(N as u64));
    for entry in &entries {
        bench_checked_id(
            &mut group,
            BenchmarkId::new(entry.name, N),
            || check(&settings, &driver, entry),
            |b| b.iter(|| (entry.timed)(&driver)),
        );
    }
    group.finish();
    c.final_summary();
}
