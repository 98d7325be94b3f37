//! Realistic variants of the groups an independent harness disagreed with
//! (issue 17, item 5): every operation is awaited inside an `async` block
//! driven by `futures::executor::block_on`, as users write them, and leaves
//! clone the waker each time they park and are woken by value
//! (`Waker::wake`). The peers are the ones of the existing groups
//! (`semaphore.rs`, `combinators.rs`, `rate_limiter.rs`).
//!
//! One `block_on` per criterion iteration batch (`Bencher::iter_custom`):
//! the timed region is `block_on(async { for _ in 0..iters { … } })`, so
//! block_on's own set-up is spread over the batch, as in a user's loop.
//!
//! Groups (criterion's element rate is per operation; the report divides by
//! the operations of one iteration):
//!
//! * `realistic_semaphore_uncontended`: permits = 1; one iteration is
//!   `let permit = sem.acquire().await` (`.unwrap()` where the crate returns a
//!   `Result`) and `drop(permit)`. awaitkit, tokio, async-lock,
//!   futures-intrusive fair (`Semaphore::new(true, 1)`).
//! * `realistic_gather_shuffled` / `realistic_as_completed_shuffled`, N =
//!   10 and 1 000: one iteration builds N leaves and awaits the combinator
//!   joined (`futures::join!`) with a firer: an `async` block that, for each
//!   index of a seeded shuffle of `0..N`, wakes that leaf's parked waker by
//!   value and yields once (wakes block_on's waker by reference, returns
//!   `Pending` once). A leaf that is polled before it was fired stores
//!   `cx.waker().clone()` in its slot (dropping what was there: no
//!   `will_wake` reuse), so a combinator that polls every leaf on every
//!   wake pays one clone and one drop per leaf per poll. Peers: gather:
//!   futures-buffered `join_all`, futures `join_all`; as_completed:
//!   futures-buffered `FuturesUnordered` and `FuturesUnorderedBounded`,
//!   futures `FuturesUnordered`.
//! * `realistic_rate_limiter_check`: `limiter.try_acquire()` (governor:
//!   `check()`) in the `async` block, result checked, on a quota that never
//!   runs out (the shapes of `rate_limiter_check`). awaitkit strict / GCRA on
//!   the default timer and on `QuantaTimer`; governor on its default clock
//!   (quanta) and on `MonotonicClock` (`Instant`). Then the same checks
//!   inside a spawned task of a tokio runtime, multi-thread (2 workers,
//!   `tokio_mt_task_*`) and current-thread (`tokio_ct_task_*`): awaitkit on
//!   the default timer and on `FuturesTimer`, governor on its default clock.
//!
//! Every function runs once untimed first and checks its outputs (gather:
//! input order; as_completed: every leaf once; semaphore / limiter: every
//! acquisition granted).
//!
//! Modes: as the other benches (`AWAITKIT_BENCH_QUICK=1`: sample size 10,
//! warm-up 200 ms, measurement 1 s).
//!
//! Run: `AWAITKIT_BENCH_QUICK=1 cargo bench -p awaitkit-benches --bench realistic`

mod common;

use common::Settings;
use criterion::{BenchmarkId, Criterion, Throughput, black_box};
use futures::StreamExt;
use futures::executor::block_on;
use futures::stream::Stream;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use std::cell::Cell;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Leaves and the firer
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

struct Ctx {
    n: usize,
    slots: Vec<Slot>,
    order: Vec<usize>,
}

impl Ctx {
    fn shuffled(n: usize) -> Self {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(0x5eed_0000 ^ n as u64));
        Ctx {
            n,
            slots: (0..n).map(|_| Slot::default()).collect(),
            order,
        }
    }
}

/// A user-style leaf: parks a clone of the waker, is woken by value.
struct Leaf<'a> {
    slot: &'a Slot,
    index: usize,
}

impl Future for Leaf<'_> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.slot.fired.replace(false) {
            return Poll::Ready(self.index);
        }
        self.slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

fn leaves(ctx: &Ctx) -> impl ExactSizeIterator<Item = Leaf<'_>> {
    ctx.slots
        .iter()
        .enumerate()
        .map(|(index, slot)| Leaf { slot, index })
}

/// Fires the leaves in `ctx.order`, one per poll, waking each by value.
async fn firer(ctx: &Ctx) {
    for &index in &ctx.order {
        let slot = &ctx.slots[index];
        slot.fired.set(true);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        common::yield_now().await;
    }
}

async fn gather_with<F: Future<Output = Vec<usize>>>(ctx: &Ctx, fut: F) -> Vec<usize> {
    let (out, ()) = futures::join!(fut, firer(ctx));
    out
}

async fn drain<S: Stream<Item = usize>>(stream: S) -> Vec<usize> {
    let mut stream = pin!(stream);
    let mut out = Vec::new();
    while let Some(i) = stream.next().await {
        out.push(i);
    }
    out
}

async fn as_completed_with<S: Stream<Item = usize>>(ctx: &Ctx, stream: S) -> Vec<usize> {
    let (out, ()) = futures::join!(drain(stream), firer(ctx));
    out
}

fn timed_combinator<F, Fut>(iters: u64, go: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<usize>>,
{
    let start = Instant::now();
    block_on(async {
        for _ in 0..iters {
            black_box(go().await);
        }
    });
    start.elapsed()
}

fn bench_combinators(c: &mut Criterion, sizes: &[usize]) {
    macro_rules! entry {
        ($group:expr, $name:expr, $n:expr, |$ctx:ident| $body:expr, $gather:expr) => {{
            let owned = Ctx::shuffled($n);
            let $ctx = &owned;
            let go = || $body;
            let ctx = &owned;
            let out = block_on(go());
            if $gather {
                assert!(
                    out.iter().copied().eq(0..ctx.n),
                    "{}: not in input order",
                    $name
                );
            } else {
                // A leaf fired before its first poll completes when first
                // polled: a set that polls its new leaves lazily
                // (futures-buffered) may yield those out of fire order.
                let mut sorted = out.clone();
                sorted.sort_unstable();
                assert!(
                    sorted.into_iter().eq(0..ctx.n),
                    "{}: not every leaf once",
                    $name
                );
            }
            $group.bench_function(BenchmarkId::new($name, $n), |b| {
                b.iter_custom(|iters| timed_combinator(iters, go))
            });
        }};
    }

    let mut g = c.benchmark_group("realistic_gather_shuffled");
    for &n in sizes {
        g.throughput(Throughput::Elements(n as u64));
        entry!(
            g,
            "awaitkit",
            n,
            |ctx| gather_with(ctx, awaitkit::gather(leaves(ctx))),
            true
        );
        entry!(
            g,
            "fb_join_all",
            n,
            |ctx| gather_with(ctx, futures_buffered::join_all(leaves(ctx))),
            true
        );
        entry!(
            g,
            "futures_join_all",
            n,
            |ctx| gather_with(ctx, futures::future::join_all(leaves(ctx))),
            true
        );
    }
    g.finish();

    let mut g = c.benchmark_group("realistic_as_completed_shuffled");
    for &n in sizes {
        g.throughput(Throughput::Elements(n as u64));
        entry!(
            g,
            "awaitkit",
            n,
            |ctx| as_completed_with(ctx, awaitkit::as_completed(leaves(ctx))),
            false
        );
        entry!(
            g,
            "fb_FuturesUnordered",
            n,
            |ctx| as_completed_with(
                ctx,
                leaves(ctx).collect::<futures_buffered::FuturesUnordered<_>>()
            ),
            false
        );
        entry!(
            g,
            "fb_FuturesUnorderedBounded",
            n,
            |ctx| as_completed_with(
                ctx,
                leaves(ctx).collect::<futures_buffered::FuturesUnorderedBounded<_>>()
            ),
            false
        );
        entry!(
            g,
            "futures_FuturesUnordered",
            n,
            |ctx| as_completed_with(
                ctx,
                leaves(ctx).collect::<futures::stream::FuturesUnordered<_>>()
            ),
            false
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Semaphore
// ---------------------------------------------------------------------------

fn bench_semaphore(c: &mut Criterion) {
    let mut g = c.benchmark_group("realistic_semaphore_uncontended");
    g.throughput(Throughput::Elements(1));

    macro_rules! entry {
        ($name:expr, $new:expr, |$sem:ident| $acquire:expr, |$s2:ident| $try_acquire:expr) => {{
            let run = |iters: u64| {
                let $sem = $new;
                let start = Instant::now();
                block_on(async {
                    for _ in 0..iters {
                        let permit = $acquire;
                        drop(permit);
                    }
                });
                let elapsed = start.elapsed();
                let $s2 = &$sem;
                assert!($try_acquire, "{}: the permit did not come back", $name);
                elapsed
            };
            run(1_000);
            g.bench_function($name, |b| b.iter_custom(run));
        }};
    }

    entry!(
        "awaitkit",
        awaitkit::Semaphore::new(1),
        |sem| sem.acquire().await.unwrap(),
        |s| s.try_acquire().is_ok()
    );
    entry!(
        "tokio",
        tokio::sync::Semaphore::new(1),
        |sem| sem.acquire().await.unwrap(),
        |s| s.try_acquire().is_ok()
    );
    entry!(
        "async_lock",
        async_lock::Semaphore::new(1),
        |sem| sem.acquire().await,
        |s| s.try_acquire().is_some()
    );
    entry!(
        "futures_intrusive_fair",
        futures_intrusive::sync::Semaphore::new(true, 1),
        |sem| sem.acquire(1).await,
        |s| s.try_acquire(1).is_some()
    );
    g.finish();
}

// ---------------------------------------------------------------------------
// Rate limiter
// ---------------------------------------------------------------------------

fn bench_rate_limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("realistic_rate_limiter_check");
    g.throughput(Throughput::Elements(1));
    let (max, period) = (usize::MAX / 2, Duration::from_secs(1));

    macro_rules! entry {
        ($name:expr, $limiter:expr, |$l:ident| $check:expr) => {{
            let $l = $limiter;
            let run = |iters: u64| {
                let start = Instant::now();
                block_on(async {
                    for _ in 0..iters {
                        if !$check {
                            panic!("{}: a check was refused", $name);
                        }
                    }
                });
                start.elapsed()
            };
            run(1_000);
            g.bench_function($name, |b| b.iter_custom(run));
        }};
    }

    entry!(
        "awaitkit_strict",
        awaitkit::RateLimiter::new(max, period),
        |l| l.try_acquire().is_ok()
    );
    entry!(
        "awaitkit_gcra",
        awaitkit::RateLimiter::gcra(max, period, max),
        |l| l.try_acquire().is_ok()
    );
    // What `RateLimiter::new` reads without the `tokio` feature (the
    // default timer is then `FuturesTimer` under another name): no check
    // for a tokio runtime whose clock may be paused.
    entry!(
        "awaitkit_strict_futures_timer",
        awaitkit::RateLimiter::with_quota(
            awaitkit::rate_limiter::Quota::window(max, period).unwrap()
        )
        .with_timer(awaitkit::time::FuturesTimer),
        |l| l.try_acquire().is_ok()
    );
    entry!(
        "awaitkit_gcra_futures_timer",
        awaitkit::RateLimiter::with_quota(
            awaitkit::rate_limiter::Quota::gcra(max, period, max).unwrap()
        )
        .with_timer(awaitkit::time::FuturesTimer),
        |l| l.try_acquire().is_ok()
    );
    entry!(
        "awaitkit_strict_quanta",
        awaitkit::RateLimiter::with_quota(
            awaitkit::rate_limiter::Quota::window(max, period).unwrap()
        )
        .with_timer(awaitkit::time::QuantaTimer::new()),
        |l| l.try_acquire().is_ok()
    );
    entry!(
        "awaitkit_gcra_quanta",
        awaitkit::RateLimiter::with_quota(
            awaitkit::rate_limiter::Quota::gcra(max, period, max).unwrap()
        )
        .with_timer(awaitkit::time::QuantaTimer::new()),
        |l| l.try_acquire().is_ok()
    );
    entry!(
        "governor",
        governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX)),
        |l| l.check().is_ok()
    );
    entry!(
        "governor_std",
        governor::RateLimiter::direct_with_clock(
            governor::Quota::per_second(NonZeroU32::MAX),
            governor::clock::MonotonicClock
        ),
        |l| l.check().is_ok()
    );

    // The same checks inside a task of a tokio runtime, as a tokio service
    // makes them: multi-thread (2 workers; its clock is never paused, so the
    // default timer reads the cheap counter) and current-thread (its clock
    // may be paused: the default timer reads tokio's clock there).
    // `FuturesTimer` reads the counter everywhere.
    let runtimes = [
        (
            "tokio_mt",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("a tokio runtime"),
        ),
        (
            "tokio_ct",
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio runtime"),
        ),
    ];
    for (flavour, rt) in &runtimes {
        macro_rules! entry_tokio {
            ($name:expr, $limiter:expr, |$l:ident| $check:expr) => {{
                let name = format!("{flavour}_task_{}", $name);
                let limiter = std::sync::Arc::new($limiter);
                let run = |iters: u64| {
                    let limiter = limiter.clone();
                    rt.block_on(async move {
                        tokio::spawn(async move {
                            let $l = &*limiter;
                            let start = Instant::now();
                            for _ in 0..iters {
                                if !$check {
                                    panic!("{}: a check was refused", $name);
                                }
                            }
                            start.elapsed()
                        })
                        .await
                        .expect("the task")
                    })
                };
                run(1_000);
                g.bench_function(name, |b| b.iter_custom(run));
            }};
        }
        entry_tokio!(
            "awaitkit_strict",
            awaitkit::RateLimiter::new(max, period),
            |l| l.try_acquire().is_ok()
        );
        entry_tokio!(
            "awaitkit_gcra",
            awaitkit::RateLimiter::gcra(max, period, max),
            |l| l.try_acquire().is_ok()
        );
        entry_tokio!(
            "awaitkit_strict_futures_timer",
            awaitkit::RateLimiter::with_quota(
                awaitkit::rate_limiter::Quota::window(max, period).unwrap()
            )
            .with_timer(awaitkit::time::FuturesTimer),
            |l| l.try_acquire().is_ok()
        );
        entry_tokio!(
            "awaitkit_gcra_futures_timer",
            awaitkit::RateLimiter::with_quota(
                awaitkit::rate_limiter::Quota::gcra(max, period, max).unwrap()
            )
            .with_timer(awaitkit::time::FuturesTimer),
            |l| l.try_acquire().is_ok()
        );
        entry_tokio!(
            "governor",
            governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX)),
            |l| l.check().is_ok()
        );
    }
    g.finish();
}

fn main() {
    let settings = Settings::from_env();
    let mut c = settings.criterion().configure_from_args();
    settings.write_run_marker("awaitkit-bench-run-realistic.txt");
    bench_semaphore(&mut c);
    bench_combinators(&mut c, &[10, 1_000]);
    bench_rate_limiter(&mut c);
    c.final_summary();
}
