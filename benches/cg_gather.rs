//! Callgrind harness (not a criterion bench): runs `gather` (`engine`: of
//! an iterator of no exact size, through the engine), futures'
//! `join_all` or futures-buffered's `join_all` over N self-waking children
//! (`gather_yield`'s children) with the benches' minimal driver, each
//! iteration inside an `#[inline(never)]` function to toggle collection on:
//!
//! ```text
//! cargo bench -p awaitkit-benches --bench cg_gather --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_*' \
//!   --dump-instr=yes --compress-pos=no --compress-strings=no \
//!   <bin> [awaitkit|engine|join_all|fb|tuple|join|join_boxed] [N = 10] [iterations = 1000]
//! python3 scripts/callgrind_locks.py callgrind.out.<pid> <iterations>
//! ```
//!
//! The script counts the locked instructions (`lock`-prefixed, `xchg` with
//! memory) executed per iteration, and where each comes from. Without
//! arguments (as `cargo test --benches` runs it) the binary runs
//! `gather` at N = 10 once and checks the output. `<bin> ratio [N] [batches]`
//! prints the wall-clock ratio of `gather` to futures' `join_all`, each the
//! fastest of `batches` alternating batches (robust to a loaded machine).

mod common;

use common::Driver;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};

struct YieldChild {
    index: usize,
    yielded: bool,
}

impl Future for YieldChild {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.yielded {
            return Poll::Ready(self.index);
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn kids(n: usize) -> impl ExactSizeIterator<Item = YieldChild> {
    (0..n).map(|index| YieldChild {
        index,
        yielded: false,
    })
}

#[inline(never)]
fn run_awaitkit(driver: &Driver, n: usize) -> usize {
    let out = driver.block_on(awaitkit::gather(kids(n)));
    out.len()
}

/// `gather` through the engine (an iterator of no exact size).
#[inline(never)]
fn run_engine(driver: &Driver, n: usize) -> usize {
    let out = driver.block_on(awaitkit::gather(kids(n).filter(|_| true)));
    out.len()
}

#[inline(never)]
fn run_join_all(driver: &Driver, n: usize) -> usize {
    let out = driver.block_on(futures::future::join_all(kids(n)));
    out.len()
}

#[inline(never)]
fn run_fb(driver: &Driver, n: usize) -> usize {
    let out = driver.block_on(futures_buffered::join_all(kids(n)));
    out.len()
}

/// `gather!` and the `join!` macros at N = 2 and 8 (`tuple`, `join`,
/// `join_boxed`: `join!` inside one `Box::pin`, an `Unpin` join).
macro_rules! tuple_runs {
    ($($n:literal => [$($i:tt)+]),+) => {
        #[inline(never)]
        fn run_tuple(driver: &Driver, n: usize) -> usize {
            match n {
                $($n => {
                    let out = driver.block_on(awaitkit::gather!($(YieldChild { index: $i, yielded: false }),+));
                    [$(out.$i),+].len()
                })+
                _ => panic!("tuples of 2 or 8"),
            }
        }

        #[inline(never)]
        fn run_join(driver: &Driver, n: usize) -> usize {
            match n {
                $($n => {
                    let out = driver.block_on(async { futures::join!($(YieldChild { index: $i, yielded: false }),+) });
                    [$(out.$i),+].len()
                })+
                _ => panic!("tuples of 2 or 8"),
            }
        }

        #[inline(never)]
        fn run_join_boxed(driver: &Driver, n: usize) -> usize {
            match n {
                $($n => {
                    let out = driver.block_on(Box::pin(async { futures::join!($(YieldChild { index: $i, yielded: false }),+) }));
                    [$(out.$i),+].len()
                })+
                _ => panic!("tuples of 2 or 8"),
            }
        }
    };
}

tuple_runs! {
    2 => [0 1],
    8 => [0 1 2 3 4 5 6 7]
}

fn main() {
    // Positional arguments only (cargo's own flags, such as `--bench`, are
    // skipped).
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let which = args.first().map_or("awaitkit", String::as_str);
    let n: usize = args.get(1).map_or(10, |s| s.parse().expect("N"));
    let iters: usize = args.get(2).map_or(1, |s| s.parse().expect("iterations"));
    let driver = Driver::new();
    if which == "ratio" {
        // Wall-clock ratio on a loaded machine (the fastest batch of each).
        let best = common::fastest_batches(
            iters,
            20_000,
            [
                &|| {
                    black_box(run_awaitkit(&driver, black_box(n)));
                },
                &|| {
                    black_box(run_join_all(&driver, black_box(n)));
                },
            ],
        );
        println!(
            "N = {n}: gather {:.1} ns, join_all {:.1} ns, ratio {:.2}",
            best[0],
            best[1],
            best[0] / best[1]
        );
        return;
    }
    let mut total = 0;
    for _ in 0..iters {
        total += match which {
            "awaitkit" => run_awaitkit(&driver, black_box(n)),
            "engine" => run_engine(&driver, black_box(n)),
            "join_all" => run_join_all(&driver, black_box(n)),
            "fb" => run_fb(&driver, black_box(n)),
            "tuple" => run_tuple(&driver, black_box(n)),
            "join" => run_join(&driver, black_box(n)),
            "join_boxed" => run_join_boxed(&driver, black_box(n)),
            _ => panic!("which"),
        };
    }
    assert_eq!(total, n * iters);
}
