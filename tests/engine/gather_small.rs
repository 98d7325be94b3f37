//! `gather` and `try_gather` of an input with an exact size of 1 to 63
//! children, which lives in one small block (the tuple's; from 17 on aligned
//! to 64 bytes, with its own waker vtable), and the edges of that path: the
//! sizes around 16 and 63, iterators whose size hint lies, iterators that
//! panic while the block is filled, wakes from other threads and clones that
//! outlive it.

use crate::common;

use awaitkit::gather;
use common::*;
use futures::future::join;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

/// An iterator over `items` whose size hint says `claimed` (exactly).
struct Liar<I> {
    items: I,
    claimed: usize,
}

impl<I: Iterator> Iterator for Liar<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.claimed = self.claimed.saturating_sub(1);
        self.items.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.claimed, Some(self.claimed))
    }
}

/// Children that yield `i % 3` times each, tracked, with their poll counter.
fn yielders(n: usize, tracker: &Tracker) -> (Counter, Vec<YieldN<usize>>) {
    let polls = Counter::new();
    let children = (0..n)
        .map(|i| YieldN::tracked(i % 3, i, &polls, tracker))
        .collect();
    (polls, children)
}

matrix! {
    async fn every_size_around_the_small_limit_keeps_order_and_polls_wakes_plus_n() {
        for n in (1..=18).chain([31, 62, 63, 64, 65]) {
            let tracker = Tracker::new();
            let (polls, children) = yielders(n, &tracker);
            let out = gather(children).await;
            assert_eq!(out, (0..n).collect::<Vec<_>>(), "n = {n}");
            let wakes: usize = (0..n).map(|i| i % 3).sum();
            assert_eq!(polls.get(), wakes + n, "n = {n}: child polls != wakes + N");
            assert_eq!(tracker.live(), 0, "n = {n}");
        }
    }

    async fn parked_children_fired_in_any_order_at_every_small_size() {
        for n in [1, 2, 3, 5, 8, 10, 15, 16, 17, 40, 63, 64] {
            let tracker = Tracker::new();
            let (handles, counters, children) = parked_set(n, &tracker);
            let order = shuffled(n, n as u64);
            let (out, ()) = join(gather(children), async {
                yield_now().await;
                for &i in &order {
                    assert!(handles[i].complete(), "n = {n}: child {i} not parked");
                    yield_now().await;
                }
            })
            .await;
            assert_eq!(out, (0..n).collect::<Vec<_>>(), "n = {n}");
            assert_eq!(total(&counters), 2 * n, "n = {n}: child polls != wakes + N");
            assert_eq!(tracker.live(), 0, "n = {n}");
        }
    }

    async fn an_iterator_that_lies_about_its_exact_size_gathers_what_it_gave() {
        // More than claimed (the block hands its futures to the engine),
        // then fewer (the block holds what came).
        let lies = [
            (0, 1), (0, 70), (1, 2), (3, 5), (16, 17), (16, 40), (2, 3), (17, 18), (63, 64), (63, 200),
            (1, 0), (3, 0), (5, 3), (16, 15), (16, 1), (17, 16), (63, 62), (40, 2),
        ];
        for (claimed, actual) in lies {
            let tracker = Tracker::new();
            let (polls, children) = yielders(actual, &tracker);
            let liar = Liar { items: children.into_iter(), claimed };
            let out = gather(liar).await;
            assert_eq!(out, (0..actual).collect::<Vec<_>>(), "{claimed} claimed, {actual} given");
            let wakes: usize = (0..actual).map(|i| i % 3).sum();
            assert_eq!(polls.get(), wakes + actual);
            assert_eq!(tracker.live(), 0);
        }
    }

    async fn wakes_from_other_threads_and_clones_that_outlive_the_gather() {
        let thread = WakerThread::spawn();
        for n in [1, 4, 16, 17, 63] {
            for round in 0..20 {
                let polls = Counter::new();
                let stash = WakerStash::default();
                let children: Vec<futures::future::BoxFuture<'static, usize>> = (0..n)
                    .map(|i| {
                        use futures::FutureExt;
                        if i % 4 == 3 {
                            // Finishes at once, keeping a clone of its waker.
                            Stasher::new(&stash, i).boxed()
                        } else {
                            RemoteYield::new(1 + (i + round) % 3, i, &thread, &polls).boxed()
                        }
                    })
                    .collect();
                let out = gather(children).await;
                assert_eq!(out, (0..n).collect::<Vec<_>>(), "n = {n}");
                let remote: usize = (0..n).filter(|i| i % 4 != 3).map(|i| 2 + (i + round) % 3).sum();
                assert_eq!(polls.get(), remote, "n = {n}: child polls != wakes + N");
                // Clones outlive the gather; waking them reaches nobody.
                stash.wake_all_by_ref();
                stash.clear();
            }
        }
    }
}

/// An iterator that panics at its `k`-th item: the children taken before
/// are dropped once, nothing leaks, and the panic propagates from `gather`.
#[test]
fn an_iterator_that_panics_while_the_block_fills_drops_what_it_gave() {
    for n in [1, 2, 9, 16, 17, 63] {
        for k in 0..=n {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let given = AtomicUsize::new(0);
            let items = (0..n).map(|i| {
                if i == k {
                    panic!("iterator boom");
                }
                given.fetch_add(1, Ordering::SeqCst);
                YieldN::tracked(1, i, &polls, &tracker)
            });
            let liar = Liar { items, claimed: n };
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let g = gather(liar);
                futures::executor::block_on(g)
            }));
            if k < n {
                let payload = r.expect_err("the iterator's panic propagates");
                assert_eq!(panic_message(&*payload), "iterator boom");
                assert_eq!(given.load(Ordering::SeqCst), k);
            } else {
                assert_eq!(r.expect("no panic"), (0..n).collect::<Vec<_>>());
            }
            assert_eq!(tracker.live(), 0, "n = {n}, k = {k}: a child leaked");
            assert_eq!(polls.get(), if k < n { 0 } else { 2 * n });
        }
    }
}

/// The item after the claimed size panics (the check for more): the
/// children already in the block are dropped once.
#[test]
fn a_panic_in_the_check_for_more_drops_the_block() {
    for n in [1, 3, 16, 17, 63] {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let items = (0..=n).map(|i| {
            if i == n {
                panic!("one too many");
            }
            YieldN::tracked(1, i, &polls, &tracker)
        });
        let liar = Liar { items, claimed: n };
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| drop(gather(liar))));
        assert_eq!(panic_message(&*r.expect_err("propagates")), "one too many");
        assert_eq!(tracker.live(), 0, "n = {n}");
        assert_eq!(polls.get(), 0);
    }
}

/// Dropped at every point of its life (before the first poll, after each
/// poll), with children parked or yielding: every child and every stored
/// output is dropped once, and no waker clone is left behind.
#[test]
fn cancelled_after_every_poll_drops_everything_once() {
    for n in [1, 2, 7, 16, 17, 63] {
        for stop in 0..4 {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let w = CountingWaker::new();
            let children: Vec<_> = (0..n)
                .map(|i| YieldN::tracked(i % 4, tracker.token(), &polls, &tracker))
                .collect();
            let mut g = gather(children);
            for _ in 0..stop {
                if let Poll::Ready(out) = poll_once(&mut g, &w) {
                    assert_eq!(out.len(), n);
                    break;
                }
            }
            drop(g);
            assert_eq!(tracker.live(), 0, "n = {n}, stop = {stop}");
            assert_eq!(w.live_clones(), 0, "n = {n}, stop = {stop}");
        }
    }
}

/// A waker clone kept by a finished child's output outlives the gather;
/// waking it later does nothing (the block stays alive for it, closed).
#[test]
fn a_clone_outliving_the_gather_wakes_nobody() {
    let w = CountingWaker::new();
    let kept: Arc<std::sync::Mutex<Vec<std::task::Waker>>> = Arc::default();
    let children: Vec<_> = (0..5)
        .map(|i| {
            let kept = kept.clone();
            std::future::poll_fn(move |cx| {
                kept.lock().unwrap().push(cx.waker().clone());
                Poll::Ready(i)
            })
        })
        .collect();
    let mut g = gather(children);
    assert_eq!(poll_once(&mut g, &w), Poll::Ready(vec![0, 1, 2, 3, 4]));
    drop(g);
    let wakes = w.wakes();
    for waker in kept.lock().unwrap().drain(..) {
        waker.wake();
    }
    assert_eq!(w.wakes(), wakes, "a stale clone woke the task");
    assert_eq!(w.live_clones(), 0);
}

/// `try_gather` in the small block: the first `Err` comes from the very
/// poll in which it appears, every other child and kept value already
/// dropped; `Ok` values in input order otherwise (SPEC §2).
#[test]
fn try_gather_fails_fast_in_the_small_block() {
    use awaitkit::try_gather;
    for n in [1, 2, 5, 16, 17, 63, 64] {
        for fail in [0, n / 2, n - 1] {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (handles, counters, children) = super::try_gather::fallible_set(n, fail, &tracker);
            let mut g = try_gather(children);
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!(total(&counters), n);
            let order: Vec<usize> = shuffled(n, n as u64)
                .into_iter()
                .filter(|&i| i != fail)
                .take(n / 2)
                .collect();
            for &i in &order {
                handles[i].complete();
                assert!(
                    poll_once(&mut g, &w).is_pending(),
                    "n = {n}: finished early"
                );
                assert_eq!(counters[i].get(), 2);
            }
            assert_eq!(
                tracker.live(),
                2 * n - 1 - order.len(),
                "n = {n}: children + values"
            );
            handles[fail].complete();
            let r = poll_once(&mut g, &w);
            let live = tracker.live();
            assert_eq!(
                r.map(|r| r.map(|v| v.len())),
                Poll::Ready(Err(format!("child {fail} failed"))),
                "n = {n}"
            );
            assert_eq!(
                live, 0,
                "n = {n}, fail = {fail}: alive when the Err was returned"
            );
            assert!(handles.iter().all(|h| !h.has_waker()));
            assert_eq!(
                total(&counters),
                n + order.len() + 1,
                "n = {n}: polls != wakes + N"
            );
            let again = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w)));
            assert!(
                panic_message(&*again.expect_err("polled after completion"))
                    .contains("after completion")
            );
            drop(g);
            assert_eq!(w.live_clones(), 0, "parent waker leaked");
        }
        // Every child `Ok`: the values in input order.
        let tracker = Tracker::new();
        let polls = Counter::new();
        let children: Vec<_> = (0..n)
            .map(|i| YieldN::tracked(i % 3, Ok::<usize, String>(i), &polls, &tracker))
            .collect();
        let out = futures::executor::block_on(try_gather(children));
        assert_eq!(out, Ok((0..n).collect::<Vec<_>>()));
        assert_eq!(tracker.live(), 0);
    }
}

/// A sibling whose destructor panics while `try_gather` fails fast: every
/// other child is still dropped, the error is dropped (not leaked, not
/// returned), the panic propagates, and a later poll refuses.
#[test]
fn try_gather_fail_fast_with_a_panicking_sibling_destructor() {
    use awaitkit::try_gather;
    use futures::FutureExt;
    use futures::future::BoxFuture;
    struct BoomOnDrop(#[allow(dead_code)] Token);
    impl Drop for BoomOnDrop {
        fn drop(&mut self) {
            panic!("sibling boom");
        }
    }
    for n in [2, 3, 16, 17, 63] {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let polls = Counter::new();
        let children: Vec<BoxFuture<'static, Result<(), Token>>> = (0..n)
            .map(|i| {
                if i == 0 {
                    let err = tracker.token();
                    async move {
                        yield_now().await;
                        Err(err)
                    }
                    .boxed()
                } else if i == 1 {
                    let boom = BoomOnDrop(tracker.token());
                    async move {
                        let _boom = boom;
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                    .boxed()
                } else {
                    YieldN::tracked(100, Ok(()), &polls, &tracker).boxed()
                }
            })
            .collect();
        let mut g = try_gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w)));
        assert_eq!(
            panic_message(&*r.expect_err("the sibling's panic propagates")),
            "sibling boom"
        );
        assert_eq!(tracker.live(), 0, "n = {n}: a child or the error leaked");
        let again = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w)));
        assert!(panic_message(&*again.expect_err("refuses")).contains("after a panic"));
        drop(g);
        assert_eq!(w.live_clones(), 0);
    }
}

/// `try_gather` in the small block dropped after every poll: every child and
/// kept value dropped once.
#[test]
fn try_gather_cancelled_after_every_poll() {
    use awaitkit::try_gather;
    for n in [1, 4, 16, 17, 63] {
        for k in 0..=5 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut g = try_gather(
                (0..n)
                    .map(|i| YieldN::tracked(i % 5, Ok::<_, ()>(tracker.token()), &polls, &tracker))
                    .collect::<Vec<_>>(),
            );
            for _ in 0..k {
                if poll_once(&mut g, &w).is_ready() {
                    break;
                }
            }
            drop(g);
            assert_eq!(tracker.live(), 0, "n = {n}, k = {k}");
            assert_eq!(w.live_clones(), 0, "n = {n}, k = {k}");
        }
    }
}
