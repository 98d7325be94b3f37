//! Combinator benchmarks: awaitkit against its peers, side by side, as
//! `/work/shared/BENCH.md` describes them.
//!
//! Groups (one criterion group each, one function per crate, parameter = N):
//!
//! * `gather_yield`, `gather_shuffled`: outputs collected in input order.
//! * `gather_tuple_yield`, `gather_tuple_shuffled`: the same children, N = 2,
//!   3, 5, 8 of them in a tuple: `awaitkit::gather!` against `futures::join!`,
//!   `tokio::join!` and futures-concurrency's tuple `join` (one fixed-arity
//!   function per N, each awaited inside an `async` block). For reference
//!   (not a peer): `futures::join!` inside one `Box::pin`, the way a caller
//!   gets an `Unpin` join (SPEC §1.10 makes every awaitkit combinator
//!   `Unpin`, which costs `gather!` the same one allocation).
//! * `as_completed_yield`, `as_completed_shuffled`: the same children consumed
//!   as a stream in completion order.
//! * `wait_any`: N pending children, the last one fires, winner + rest are
//!   returned and the rest dropped.
//! * `first_ok`: the `wait_any` children and fire order, each mapped to
//!   `Ok(index)`: the first `Ok` wins, the rest are dropped (futures'
//!   `select_ok`); `awaitkit::wait_any` on the same children for reference.
//!
//! Children:
//!
//! * *yield*: the first poll wakes its own waker and returns `Pending`, the
//!   second returns `Ready(index)`.
//! * *parked*: the child parks a clone of its waker in its own slot of a shared
//!   table; the driver fires the slots one at a time in a fixed order (a
//!   seeded shuffle computed outside the timed region) and polls the
//!   combinator after each fire. A child polled after its slot was fired
//!   returns `Ready(index)`; a child polled without being fired re-parks (it
//!   clones the waker only when it changed, like a well-behaved leaf future);
//!   a dropped child clears its slot (drops the parked waker).
//!
//! Driver: single-threaded `block_on` whose top-level waker's `wake` is one
//! relaxed store to an `AtomicBool`; the future is polled again only when the
//! flag was set. When it was not, the driver fires the next slot of the order
//! (shuffled / wait_any / first_ok groups) — then polls only if that set the flag.
//! Building the N children, building the combinator, driving it, and dropping
//! the output (and, for `wait_any` / `first_ok`, the rest) are all inside the timed region,
//! for every crate alike.
//!
//! Child polls: before the timed runs of each (group, crate, N), one untimed
//! run with counting children (a thread-local counter, compiled out of the
//! timed children) also checks the results (order, winner) and records
//! polls / N in `<criterion dir>/polls.csv` (and on stderr).
//!
//! Modes:
//!
//! * full (default): sample size 30, warm-up 1 s, measurement 3 s.
//! * quick: `AWAITKIT_BENCH_QUICK=1`: sample size 10, warm-up 200 ms,
//!   measurement 1 s, and N = 100 000 only in `gather_shuffled` (where the
//!   flatness bar needs it).
//!
//! futures-concurrency's `Vec::join` and `FutureGroup` scan every child on
//! each wake, so the shuffled groups are quadratic for them: they are capped at
//! N = 10 000 there (one iteration at 10 000 already takes ~0.5 s), and every
//! N >= 10 000 uses flat sampling with 10 samples.
//!
//! Regenerate the report:
//! `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench combinators && python3 scripts/bench_table.py > docs/benchmarks.md`

mod common;

use common::{Driver, Settings, bench_checked_id};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use futures::stream::Stream;
use futures_concurrency::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

/// One parked child's slot: its parked waker and whether the driver fired it.
#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// Everything an iteration needs, built outside the timed region.
struct Ctx {
    n: usize,
    /// One slot per child (parked children only).
    slots: Vec<Slot>,
    /// Fire order: a seeded shuffle of `0..n` (shuffled groups) or `[n - 1]`
    /// (`wait_any`, `first_ok`); empty for yield children.
    order: Vec<usize>,
    driver: Driver,
}

impl Ctx {
    fn new(n: usize, slots: bool, order: Vec<usize>) -> Self {
        let slots = if slots {
            (0..n).map(|_| Slot::default()).collect()
        } else {
            Vec::new()
        };
        Ctx {
            n,
            slots,
            order,
            driver: Driver::new(),
        }
    }

    fn yielding(n: usize) -> Self {
        Self::new(n, false, Vec::new())
    }

    fn shuffled(n: usize) -> Self {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(0x5eed_0000 ^ n as u64));
        Self::new(n, true, order)
    }

    fn fire_last(n: usize) -> Self {
        Self::new(n, true, vec![n - 1])
    }

    fn fire(&self, index: usize) {
        let slot = &self.slots[index];
        slot.fired.set(true);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }

    /// Polls `fut` to completion; polls again only after the flag was set,
    /// firing the next slot of `order` while it is not.
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let mut next = 0;
        let fire_next = || {
            let index = *self
                .order
                .get(next)
                .expect("deadlock: the future is pending, its waker was not woken and nothing is left to fire");
            next += 1;
            self.fire(index);
        };
        self.driver.block_on_with(fut, fire_next).0
    }

    /// Every slot is back to its initial state (checked after counting runs).
    fn assert_clean(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            assert!(!slot.fired.get(), "slot {i} still fired");
            let waker = slot.waker.take();
            assert!(waker.is_none(), "slot {i} still holds a waker");
        }
    }
}

// ---------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------

thread_local! {
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

fn count_poll<const C: bool>() {
    if C {
        POLLS.with(|p| p.set(p.get() + 1));
    }
}

/// Wakes itself and returns `Pending` once, then `Ready(index)`.
struct YieldChild<const C: bool> {
    index: usize,
    yielded: bool,
}

impl<const C: bool> Future for YieldChild<C> {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        count_poll::<C>();
        if self.yielded {
            return Poll::Ready(self.index);
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Parks its waker in its slot until the driver fires it.
struct ParkedChild<'a, const C: bool> {
    slot: &'a Slot,
    index: usize,
}

impl<const C: bool> Future for ParkedChild<'_, C> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        count_poll::<C>();
        let slot = self.slot;
        if slot.fired.get() {
            slot.fired.set(false);
            return Poll::Ready(self.index);
        }
        let waker = match slot.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        slot.waker.set(Some(waker));
        Poll::Pending
    }
}

impl<const C: bool> Drop for ParkedChild<'_, C> {
    fn drop(&mut self) {
        drop(self.slot.waker.take());
    }
}

/// A kind of child, with or without poll counting (`COUNT`).
trait Kind {
    const COUNT: bool;
    const PARKED: bool;
    type Child<'a>: Future<Output = usize> + Unpin + 'a;
    fn child(ctx: &Ctx, index: usize) -> Self::Child<'_>;
}

struct Yield<const C: bool>;
struct Parked<const C: bool>;

impl<const C: bool> Kind for Yield<C> {
    const COUNT: bool = C;
    const PARKED: bool = false;
    type Child<'a> = YieldChild<C>;
    fn child(_: &Ctx, index: usize) -> YieldChild<C> {
        YieldChild {
            index,
            yielded: false,
        }
    }
}

impl<const C: bool> Kind for Parked<C> {
    const COUNT: bool = C;
    const PARKED: bool = true;
    type Child<'a> = ParkedChild<'a, C>;
    fn child(ctx: &Ctx, index: usize) -> ParkedChild<'_, C> {
        ParkedChild {
            slot: &ctx.slots[index],
            index,
        }
    }
}

/// The N children, built lazily (inside the timed region).
fn kids<K: Kind>(ctx: &Ctx) -> impl ExactSizeIterator<Item = K::Child<'_>> {
    (0..ctx.n).map(move |i| K::child(ctx, i))
}

// ---------------------------------------------------------------------------
// gather_* : outputs in input order
// ---------------------------------------------------------------------------

fn check_gathered<K: Kind>(ctx: &Ctx, out: &[usize]) -> usize {
    if K::COUNT {
        assert!(
            out.iter().copied().eq(0..ctx.n),
            "gather output not in input order"
        );
    }
    out.len()
}

fn gather_awaitkit<K: Kind>(ctx: &Ctx) -> usize {
    let out = ctx.block_on(awaitkit::gather(kids::<K>(ctx)));
    check_gathered::<K>(ctx, &out)
}

fn gather_futures_join_all<K: Kind>(ctx: &Ctx) -> usize {
    let out = ctx.block_on(futures::future::join_all(kids::<K>(ctx)));
    check_gathered::<K>(ctx, &out)
}

fn gather_futures_ordered<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures::stream::FuturesOrdered<_> = kids::<K>(ctx).collect();
    let out: Vec<usize> = ctx.block_on(set.collect());
    check_gathered::<K>(ctx, &out)
}

fn gather_fc_vec_join<K: Kind>(ctx: &Ctx) -> usize {
    let children: Vec<_> = kids::<K>(ctx).collect();
    let out = ctx.block_on(children.join());
    check_gathered::<K>(ctx, &out)
}

fn gather_fb_join_all<K: Kind>(ctx: &Ctx) -> usize {
    let out = ctx.block_on(futures_buffered::join_all(kids::<K>(ctx)));
    check_gathered::<K>(ctx, &out)
}

fn gather_fb_ordered<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures_buffered::FuturesOrdered<_> = kids::<K>(ctx).collect();
    let out: Vec<usize> = ctx.block_on(set.collect());
    check_gathered::<K>(ctx, &out)
}

// ---------------------------------------------------------------------------
// gather_tuple_* : N = 2, 3, 5, 8 children of one type in a tuple
// ---------------------------------------------------------------------------

/// The sizes `gather_tuple_fns!` generates.
const TUPLE_SIZES: [usize; 4] = [2, 3, 5, 8];

/// One function per crate that dispatches on `ctx.n` to a fixed-arity tuple
/// (the macros need one): children `K::child(ctx, 0..n)`, awaited inside an
/// `async` block for every crate alike, outputs checked in input order.
macro_rules! gather_tuple_fns {
    ($($n:literal => [$($i:tt)+]),+ $(,)?) => {
        fn gather_tuple_awaitkit<K: Kind>(ctx: &Ctx) -> usize {
            match ctx.n {
                $($n => {
                    let out = ctx.block_on(async {
                        awaitkit::gather!($(K::child(ctx, $i)),+).await
                    });
                    check_gathered::<K>(ctx, &[$(out.$i),+])
                })+
                n => unreachable!("no tuple of {n}"),
            }
        }

        fn gather_tuple_futures_join<K: Kind>(ctx: &Ctx) -> usize {
            match ctx.n {
                $($n => {
                    let out = ctx.block_on(async { futures::join!($(K::child(ctx, $i)),+) });
                    check_gathered::<K>(ctx, &[$(out.$i),+])
                })+
                n => unreachable!("no tuple of {n}"),
            }
        }

        /// Reference, not a peer: `futures::join!` made `Unpin` the only
        /// way a caller can (one `Box::pin`), as SPEC §1.10 has every
        /// awaitkit combinator be; `gather!` pays that allocation too.
        fn gather_tuple_futures_join_boxed<K: Kind>(ctx: &Ctx) -> usize {
            match ctx.n {
                $($n => {
                    let out = ctx.block_on(async {
                        Box::pin(async { futures::join!($(K::child(ctx, $i)),+) }).await
                    });
                    check_gathered::<K>(ctx, &[$(out.$i),+])
                })+
                n => unreachable!("no tuple of {n}"),
            }
        }

        fn gather_tuple_tokio_join<K: Kind>(ctx: &Ctx) -> usize {
            match ctx.n {
                $($n => {
                    let out = ctx.block_on(async { tokio::join!($(K::child(ctx, $i)),+) });
                    check_gathered::<K>(ctx, &[$(out.$i),+])
                })+
                n => unreachable!("no tuple of {n}"),
            }
        }

        fn gather_tuple_fc_join<K: Kind>(ctx: &Ctx) -> usize {
            match ctx.n {
                $($n => {
                    let out = ctx.block_on(async { ($(K::child(ctx, $i),)+).join().await });
                    check_gathered::<K>(ctx, &[$(out.$i),+])
                })+
                n => unreachable!("no tuple of {n}"),
            }
        }
    };
}

gather_tuple_fns! {
    2 => [0 1],
    3 => [0 1 2],
    5 => [0 1 2 3 4],
    8 => [0 1 2 3 4 5 6 7],
}

// ---------------------------------------------------------------------------
// as_completed_* : consumed as a stream in completion order
// ---------------------------------------------------------------------------

/// Consumes the stream; counting runs also check the completion order
/// (the fire order for parked children, a permutation of `0..n` otherwise).
async fn drain<K: Kind, S: Stream<Item = usize>>(ctx: &Ctx, stream: S) -> usize {
    let mut stream = pin!(stream);
    let mut count = 0;
    let mut seen = Vec::new();
    while let Some(index) = stream.next().await {
        count += 1;
        if K::COUNT {
            seen.push(index);
        }
    }
    if K::COUNT {
        if K::PARKED {
            assert_eq!(seen, ctx.order, "completion order differs from fire order");
        } else {
            seen.sort_unstable();
            assert!(
                seen.iter().copied().eq(0..ctx.n),
                "not every child completed once"
            );
        }
    }
    count
}

fn as_completed_awaitkit<K: Kind>(ctx: &Ctx) -> usize {
    ctx.block_on(drain::<K, _>(ctx, awaitkit::as_completed(kids::<K>(ctx))))
}

fn as_completed_futures_unordered<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures::stream::FuturesUnordered<_> = kids::<K>(ctx).collect();
    ctx.block_on(drain::<K, _>(ctx, set))
}

fn as_completed_fc_future_group<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures_concurrency::future::FutureGroup<_> = kids::<K>(ctx).collect();
    ctx.block_on(drain::<K, _>(ctx, set))
}

fn as_completed_fb_unordered<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures_buffered::FuturesUnordered<_> = kids::<K>(ctx).collect();
    ctx.block_on(drain::<K, _>(ctx, set))
}

fn as_completed_fb_unordered_bounded<K: Kind>(ctx: &Ctx) -> usize {
    let set: futures_buffered::FuturesUnorderedBounded<_> = kids::<K>(ctx).collect();
    ctx.block_on(drain::<K, _>(ctx, set))
}

// ---------------------------------------------------------------------------
// wait_any : first of N pending children (the last one fires), drop the rest
// ---------------------------------------------------------------------------

fn check_winner<K: Kind>(ctx: &Ctx, winner: usize) -> usize {
    if K::COUNT {
        assert_eq!(winner, ctx.n - 1, "wrong winner");
    }
    winner
}

fn wait_any_awaitkit<K: Kind>(ctx: &Ctx) -> usize {
    let (index, winner, rest) = ctx
        .block_on(awaitkit::wait_any(kids::<K>(ctx)))
        .expect("non-empty");
    if K::COUNT {
        assert_eq!(index, winner);
        assert_eq!(rest.len(), ctx.n - 1);
    }
    drop(rest);
    check_winner::<K>(ctx, winner)
}

fn wait_any_futures_select_all<K: Kind>(ctx: &Ctx) -> usize {
    let (winner, index, rest) = ctx.block_on(futures::future::select_all(kids::<K>(ctx)));
    if K::COUNT {
        assert_eq!(index, winner);
        assert_eq!(rest.len(), ctx.n - 1);
    }
    drop(rest);
    check_winner::<K>(ctx, winner)
}

fn wait_any_futures_unordered_next<K: Kind>(ctx: &Ctx) -> usize {
    let mut rest: futures::stream::FuturesUnordered<_> = kids::<K>(ctx).collect();
    let winner = ctx.block_on(rest.next()).expect("non-empty");
    drop(rest);
    check_winner::<K>(ctx, winner)
}

fn wait_any_fc_race<K: Kind>(ctx: &Ctx) -> usize {
    let children: Vec<_> = kids::<K>(ctx).collect();
    let winner = ctx.block_on(children.race());
    check_winner::<K>(ctx, winner)
}

fn wait_any_fb_unordered_next<K: Kind>(ctx: &Ctx) -> usize {
    let mut rest: futures_buffered::FuturesUnordered<_> = kids::<K>(ctx).collect();
    let winner = ctx.block_on(rest.next()).expect("non-empty");
    drop(rest);
    check_winner::<K>(ctx, winner)
}

fn wait_any_fb_unordered_bounded_next<K: Kind>(ctx: &Ctx) -> usize {
    let mut rest: futures_buffered::FuturesUnorderedBounded<_> = kids::<K>(ctx).collect();
    let winner = ctx.block_on(rest.next()).expect("non-empty");
    drop(rest);
    check_winner::<K>(ctx, winner)
}

// ---------------------------------------------------------------------------
// first_ok : the wait_any children as `Ok(index)`, first `Ok` wins
// ---------------------------------------------------------------------------

/// The N children mapped to `Ok(index)` (still `Unpin`, as `select_ok` needs).
fn ok_kids<K: Kind>(
    ctx: &Ctx,
) -> impl ExactSizeIterator<Item = impl Future<Output = Result<usize, ()>> + Unpin + '_> {
    kids::<K>(ctx).map(|child| futures::FutureExt::map(child, Ok::<usize, ()>))
}

fn first_ok_awaitkit<K: Kind>(ctx: &Ctx) -> usize {
    let (index, winner) = ctx
        .block_on(awaitkit::first_ok(ok_kids::<K>(ctx)))
        .expect("every child succeeds");
    if K::COUNT {
        assert_eq!(index, winner);
    }
    check_winner::<K>(ctx, winner)
}

fn first_ok_futures_select_ok<K: Kind>(ctx: &Ctx) -> usize {
    let (winner, rest) = ctx
        .block_on(futures::future::select_ok(ok_kids::<K>(ctx)))
        .expect("every child succeeds");
    if K::COUNT {
        assert_eq!(rest.len(), ctx.n - 1);
    }
    drop(rest);
    check_winner::<K>(ctx, winner)
}

/// The same fallible children through `wait_any` (no error bookkeeping).
fn first_ok_awaitkit_wait_any<K: Kind>(ctx: &Ctx) -> usize {
    let (index, winner, rest) = ctx
        .block_on(awaitkit::wait_any(ok_kids::<K>(ctx)))
        .expect("non-empty");
    let winner = winner.expect("every child succeeds");
    if K::COUNT {
        assert_eq!(index, winner);
        assert_eq!(rest.len(), ctx.n - 1);
    }
    drop(rest);
    check_winner::<K>(ctx, winner)
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

type Run = fn(&Ctx) -> usize;

/// One bench function: criterion id, timed run, counting run, largest N it
/// runs at (quadratic peers are capped).
struct Entry {
    name: &'static str,
    timed: Run,
    counted: Run,
    max_n: usize,
}

macro_rules! entry {
    ($name:literal, $f:ident, $kind:ident) => {
        entry!($name, $f, $kind, usize::MAX)
    };
    ($name:literal, $f:ident, $kind:ident, $max_n:expr) => {
        Entry {
            name: $name,
            timed: $f::<$kind<false>>,
            counted: $f::<$kind<true>>,
            max_n: $max_n,
        }
    };
}

/// futures-concurrency is quadratic when children wake one at a time.
const QUADRATIC_CAP: usize = 10_000;

impl Settings {
    /// Quick mode keeps N = 100 000 in `gather_shuffled` only.
    fn sizes(&self, group: &str, sizes: &[usize]) -> Vec<usize> {
        sizes
            .iter()
            .copied()
            .filter(|&n| !self.quick || n < 100_000 || group == "gather_shuffled")
            .collect()
    }

    /// Records polls / N in `polls.csv` (replacing an older row for the same
    /// bench) and on stderr.
    fn record_polls(&self, group: &str, name: &str, n: usize, polls_per_child: f64) {
        eprintln!("polls/N {group}/{name}/{n}: {polls_per_child:.2}");
        self.upsert_csv(
            "polls.csv",
            "group,function,n,polls_per_n",
            &format!("{group},{name},{n},"),
            &format!("{polls_per_child:.4}"),
        );
    }
}

fn bench_group(
    c: &mut Criterion,
    settings: &Settings,
    group_name: &str,
    sizes: &[usize],
    make_ctx: fn(usize) -> Ctx,
    entries: &[Entry],
) {
    let sizes = settings.sizes(group_name, sizes);
    let mut group = c.benchmark_group(group_name);
    let default_samples = if settings.quick { 10 } else { 30 };
    for &n in &sizes {
        let ctx = make_ctx(n);
        group.throughput(Throughput::Elements(n as u64));
        for entry in entries.iter().filter(|e| n <= e.max_n) {
            if n >= 10_000 {
                group.sampling_mode(SamplingMode::Flat).sample_size(10);
            } else {
                group
                    .sampling_mode(SamplingMode::Auto)
                    .sample_size(default_samples);
            }
            let count = || {
                POLLS.with(|p| p.set(0));
                let done = (entry.counted)(&ctx);
                let polls = POLLS.with(Cell::get);
                ctx.assert_clean();
                if group_name.starts_with("wait_any") || group_name.starts_with("first_ok") {
                    assert_eq!(done, n - 1);
                } else {
                    assert_eq!(done, n);
                }
                settings.record_polls(group_name, entry.name, n, polls as f64 / n as f64);
            };
            bench_checked_id(&mut group, BenchmarkId::new(entry.name, n), count, |b| {
                b.iter(|| (entry.timed)(&ctx))
            });
        }
    }
    group.finish();
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run.txt");

    let gather_yield = [
        entry!("awaitkit", gather_awaitkit, Yield),
        entry!("futures_join_all", gather_futures_join_all, Yield),
        entry!("futures_FuturesOrdered", gather_futures_ordered, Yield),
        entry!("fc_Vec_join", gather_fc_vec_join, Yield),
        entry!("fb_join_all", gather_fb_join_all, Yield),
        entry!("fb_FuturesOrdered", gather_fb_ordered, Yield),
    ];
    let gather_shuffled = [
        entry!("awaitkit", gather_awaitkit, Parked),
        entry!("futures_join_all", gather_futures_join_all, Parked),
        entry!("futures_FuturesOrdered", gather_futures_ordered, Parked),
        entry!("fc_Vec_join", gather_fc_vec_join, Parked, QUADRATIC_CAP),
        entry!("fb_join_all", gather_fb_join_all, Parked),
        entry!("fb_FuturesOrdered", gather_fb_ordered, Parked),
    ];
    let gather_tuple_yield = [
        entry!("awaitkit", gather_tuple_awaitkit, Yield),
        entry!("futures_join", gather_tuple_futures_join, Yield),
        entry!("tokio_join", gather_tuple_tokio_join, Yield),
        entry!("fc_tuple_join", gather_tuple_fc_join, Yield),
        entry!("futures_join_boxed", gather_tuple_futures_join_boxed, Yield),
    ];
    let gather_tuple_shuffled = [
        entry!("awaitkit", gather_tuple_awaitkit, Parked),
        entry!("futures_join", gather_tuple_futures_join, Parked),
        entry!("tokio_join", gather_tuple_tokio_join, Parked),
        entry!("fc_tuple_join", gather_tuple_fc_join, Parked),
        entry!(
            "futures_join_boxed",
            gather_tuple_futures_join_boxed,
            Parked
        ),
    ];
    let as_completed_yield = [
        entry!("awaitkit", as_completed_awaitkit, Yield),
        entry!(
            "futures_FuturesUnordered",
            as_completed_futures_unordered,
            Yield
        ),
        entry!("fc_FutureGroup", as_completed_fc_future_group, Yield),
        entry!("fb_FuturesUnordered", as_completed_fb_unordered, Yield),
        entry!(
            "fb_FuturesUnorderedBounded",
            as_completed_fb_unordered_bounded,
            Yield
        ),
    ];
    let as_completed_shuffled = [
        entry!("awaitkit", as_completed_awaitkit, Parked),
        entry!(
            "futures_FuturesUnordered",
            as_completed_futures_unordered,
            Parked
        ),
        entry!(
            "fc_FutureGroup",
            as_completed_fc_future_group,
            Parked,
            QUADRATIC_CAP
        ),
        entry!("fb_FuturesUnordered", as_completed_fb_unordered, Parked),
        entry!(
            "fb_FuturesUnorderedBounded",
            as_completed_fb_unordered_bounded,
            Parked
        ),
    ];
    let wait_any = [
        entry!("awaitkit", wait_any_awaitkit, Parked),
        entry!("futures_select_all", wait_any_futures_select_all, Parked),
        entry!(
            "futures_FuturesUnordered_next",
            wait_any_futures_unordered_next,
            Parked
        ),
        entry!("fc_race", wait_any_fc_race, Parked),
        entry!(
            "fb_FuturesUnordered_next",
            wait_any_fb_unordered_next,
            Parked
        ),
        entry!(
            "fb_FuturesUnorderedBounded_next",
            wait_any_fb_unordered_bounded_next,
            Parked
        ),
    ];
    // select_ok polls every child on each wake, but only one child fires
    // here: 2 polls / N, linear, so no cap.
    let first_ok = [
        entry!("awaitkit", first_ok_awaitkit, Parked),
        entry!("futures_select_ok", first_ok_futures_select_ok, Parked),
        entry!("awaitkit_wait_any", first_ok_awaitkit_wait_any, Parked),
    ];

    let yield_sizes = [10, 100, 1_000, 100_000];
    let shuffled_sizes = [10, 1_000, 10_000, 100_000];
    bench_group(
        &mut c,
        &settings,
        "gather_yield",
        &yield_sizes,
        Ctx::yielding,
        &gather_yield,
    );
    bench_group(
        &mut c,
        &settings,
        "gather_shuffled",
        &shuffled_sizes,
        Ctx::shuffled,
        &gather_shuffled,
    );
    bench_group(
        &mut c,
        &settings,
        "gather_tuple_yield",
        &TUPLE_SIZES,
        Ctx::yielding,
        &gather_tuple_yield,
    );
    bench_group(
        &mut c,
        &settings,
        "gather_tuple_shuffled",
        &TUPLE_SIZES,
        Ctx::shuffled,
        &gather_tuple_shuffled,
    );
    bench_group(
        &mut c,
        &settings,
        "as_completed_yield",
        &yield_sizes,
        Ctx::yielding,
        &as_completed_yield,
    );
    bench_group(
        &mut c,
        &settings,
        "as_completed_shuffled",
        &shuffled_sizes,
        Ctx::shuffled,
        &as_completed_shuffled,
    );
    bench_group(
        &mut c,
        &settings,
        "wait_any",
        &[10, 1_000, 100_000],
        Ctx::fire_last,
        &wait_any,
    );
    bench_group(
        &mut c,
        &settings,
        "first_ok",
        &[10, 1_000, 100_000],
        Ctx::fire_last,
        &first_ok,
    );

    c.final_summary();
}
