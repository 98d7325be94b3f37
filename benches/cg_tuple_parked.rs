//! Callgrind harness (review tool, not a criterion bench): `gather!` and
//! `futures::join!` over N = 2 or 8 *parked* children (each parks a clone of
//! its waker, re-using it while it would wake the same task), fired one at
//! a time in a seeded shuffled order by value with the benches' minimal
//! driver (`gather_tuple_shuffled`'s children), each iteration inside an
//! `#[inline(never)]` function to toggle collection on:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_*' \
//!   --dump-instr=yes --compress-pos=no --compress-strings=no \
//!   <bin> [tuple|join] [N = 2] [iterations = 1000]
//! python3 scripts/callgrind_locks.py callgrind.out.<pid> <iterations>
//! ```

mod common;

use common::Driver;
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

struct Parked<'a> {
    slot: &'a Slot,
    index: usize,
}

impl Future for Parked<'_> {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
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

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        drop(self.slot.waker.take());
    }
}

struct Ctx {
    slots: Vec<Slot>,
    order: Vec<usize>,
    driver: Driver,
}

impl Ctx {
    fn new(n: usize) -> Self {
        // A fixed shuffle (xorshift Fisher-Yates).
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = 0x5eed_0000u64 ^ n as u64 | 1;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        Ctx {
            slots: (0..n).map(|_| Slot::default()).collect(),
            order,
            driver: Driver::new(),
        }
    }
    fn p(&self, i: usize) -> Parked<'_> {
        Parked {
            slot: &self.slots[i],
            index: i,
        }
    }
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let mut next = 0;
        let fire_next = || {
            let i = self.order[next];
            next += 1;
            let slot = &self.slots[i];
            slot.fired.set(true);
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        };
        self.driver.block_on_with(fut, fire_next).0
    }
}

#[inline(never)]
fn run_tuple(c: &Ctx, n: usize) -> usize {
    match n {
        2 => {
            let o = c.block_on(awaitkit::gather!(c.p(0), c.p(1)));
            o.0 + o.1
        }
        8 => {
            let o = c.block_on(awaitkit::gather!(
                c.p(0),
                c.p(1),
                c.p(2),
                c.p(3),
                c.p(4),
                c.p(5),
                c.p(6),
                c.p(7)
            ));
            o.0 + o.1 + o.2 + o.3 + o.4 + o.5 + o.6 + o.7
        }
        _ => panic!("2 or 8"),
    }
}

#[inline(never)]
fn run_join(c: &Ctx, n: usize) -> usize {
    match n {
        2 => {
            let o = c.block_on(async { futures::join!(c.p(0), c.p(1)) });
            o.0 + o.1
        }
        8 => {
            let o = c.block_on(async {
                futures::join!(
                    c.p(0),
                    c.p(1),
                    c.p(2),
                    c.p(3),
                    c.p(4),
                    c.p(5),
                    c.p(6),
                    c.p(7)
                )
            });
            o.0 + o.1 + o.2 + o.3 + o.4 + o.5 + o.6 + o.7
        }
        _ => panic!("2 or 8"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let which = args.first().map_or("tuple", String::as_str);
    let n: usize = args.get(1).map_or(2, |s| s.parse().expect("N"));
    let iters: usize = args.get(2).map_or(1, |s| s.parse().expect("iterations"));
    let c = Ctx::new(n);
    if which == "ratio" {
        // Wall-clock ratio on a loaded machine (the fastest batch of each).
        let best = common::fastest_batches(
            iters,
            20_000,
            [
                &|| {
                    black_box(run_tuple(&c, black_box(n)));
                },
                &|| {
                    black_box(run_join(&c, black_box(n)));
                },
            ],
        );
        println!(
            "N = {n}: gather! {:.1} ns, join! {:.1} ns, ratio {:.3}",
            best[0],
            best[1],
            best[0] / best[1]
        );
        return;
    }
    let mut total = 0;
    for _ in 0..iters {
        total += match which {
            "tuple" => run_tuple(&c, black_box(n)),
            "join" => run_join(&c, black_box(n)),
            _ => panic!("which"),
        };
    }
    assert_eq!(total, n * (n - 1) / 2 * iters);
}
