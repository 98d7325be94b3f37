//! `as_completed` / `AsCompleted`: completion order, indices, the dynamic set
//! (`push`), fusing, stale wakers and slot reuse (SPEC §1, §3).

use crate::common;

use awaitkit::{AsCompleted, as_completed};
use common::*;
use futures::future::{BoxFuture, LocalBoxFuture, join};
use futures::stream::FusedStream;
use futures::{FutureExt, Stream, StreamExt};
use std::future::{Future, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Completes the parked children in `order` one per turn of the task while
/// another branch of the same `join` consumes the stream.
async fn as_completed_in_order(n: usize, order: Vec<usize>) {
    let tracker = Tracker::new();
    let (handles, counters, children) = parked_set(n, &tracker);
    let mut set = as_completed(children).indexed();
    let consume = async {
        let mut got = Vec::with_capacity(n);
        while let Some((i, v)) = set.next().await {
            assert_eq!(i, v, "index handed out is not the input index");
            got.push(i);
        }
        got
    };
    let fire = async {
        yield_now().await;
        for &i in &order {
            assert!(handles[i].complete(), "child {i} had no parked waker");
            yield_now().await;
            // One turn later the consumer has seen it (a second turn at most:
            // see `next_poll_after_an_item_picks_up_a_new_wake`).
            yield_now().await;
            assert_eq!(counters[i].get(), 2, "child {i}: first poll + one per wake");
        }
    };
    let (got, ()) = join(consume, fire).await;
    assert_eq!(got, order, "n = {n}: not in completion order");
    assert_eq!(total(&counters), 2 * n, "n = {n}: polls != wakes + N");
    assert_eq!(tracker.live(), 0);
    assert!(set.is_terminated());
}

/// Wakes itself through the borrowed waker, then finishes: leaves a stale
/// ready bit on its slot.
struct WakeThenReady;

impl Future for WakeThenReady {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        cx.waker().wake_by_ref();
        Poll::Ready(usize::MAX)
    }
}

matrix! {
    /// `clear` cancels every future at once (each dropped exactly once,
    /// none polled again), and the set goes on with new ones.
    async fn clear_cancels_everything_and_the_set_goes_on() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut set = AsCompleted::new();
        let mut handles = Vec::new();
        for i in 0..4 {
            let (handle, child) = parked(i, &polls, &tracker);
            handles.push(handle);
            set.push(child);
        }
        assert!(futures::poll!(set.next()).is_pending());
        assert_eq!((tracker.live(), polls.get()), (4, 4));
        set.clear();
        assert_eq!(tracker.live(), 0, "every future dropped");
        assert!(set.is_empty());
        assert!(set.next().await.is_none());
        assert_eq!(polls.get(), 4, "nothing polled after the clear");
        let (handle, child) = parked(7, &polls, &tracker);
        assert_eq!(set.push(child), 4, "indices go on");
        handle.complete();
        assert_eq!(set.next().await, Some(7));
        assert_eq!(tracker.live(), 0);
    }

    async fn empty_input_yields_none_forever() {
        let mut set = as_completed(Vec::<Ready<u8>>::new());
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert_eq!(set.size_hint(), (0, Some(0)));
        for _ in 0..3 {
            assert_eq!(set.next().await, None);
            assert!(set.is_terminated());
        }
        let mut set = AsCompleted::<Ready<u8>>::new().indexed();
        assert_eq!(set.next().await, None);
        assert_eq!(set.next().await, None);
        assert!(set.is_terminated());
        let mut set = AsCompleted::<Ready<u8>>::default();
        assert_eq!(set.next().await, None);
    }

    async fn reverse_completion_order_at_every_size() {
        for n in SIZES {
            as_completed_in_order(n, (0..n).rev().collect()).await;
        }
    }

    async fn random_completion_order_at_every_size() {
        for (seed, n) in SIZES.into_iter().enumerate() {
            as_completed_in_order(n, shuffled(n, 100 + seed as u64)).await;
        }
    }

    async fn reverse_completion_order_100k() {
        let n = 100_000;
        as_completed_in_order(n, (0..n).rev().collect()).await;
    }

    async fn hundred_thousand_children_lean() {
        let n = 100_000;
        let polls = Counter::new();
        let mut seen = vec![false; n];
        let mut set = as_completed((0..n).map(|i| YieldN::new(i % 2, i, &polls))).indexed();
        let mut count = 0;
        let mut last_yields = 0;
        while let Some((i, v)) = set.next().await {
            assert_eq!(i, v);
            assert!(!std::mem::replace(&mut seen[i], true), "{i} yielded twice");
            // A child that yields once cannot finish before one that never yields.
            assert!(i % 2 >= last_yields, "completion order broken at {i}");
            last_yields = i % 2;
            count += 1;
        }
        assert_eq!(count, n);
        assert_eq!(polls.get(), n + n / 2, "polls != wakes + N");
    }

    async fn indexed_yields_input_indices_in_completion_order() {
        for n in SIZES {
            let polls = Counter::new();
            let yields = |i: usize| (i * 7 + 3) % 5;
            let set = as_completed((0..n).map(|i| YieldN::new(yields(i), i * 2, &polls)));
            assert_eq!(set.len(), n);
            let got: Vec<(usize, usize)> = set.indexed().collect().await;
            assert_eq!(got.len(), n);
            let mut seen: Vec<usize> = got.iter().map(|&(i, v)| { assert_eq!(v, i * 2); i }).collect();
            // Fewer yields finish in an earlier poll.
            assert!(got.windows(2).all(|w| yields(w[0].0) <= yields(w[1].0)), "n = {n}: {got:?}");
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
            assert_eq!(polls.get(), (0..n).map(yields).sum::<usize>() + n);
        }
    }

    async fn push_continues_indices_and_works_after_termination() {
        let mut set = as_completed([ready('a'), ready('b')]);
        assert_eq!(set.push(ready('c')), 2);
        assert_eq!(set.len(), 3);
        let mut got: Vec<char> = Vec::new();
        for _ in 0..3 {
            got.push(set.next().await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, ['a', 'b', 'c']);
        assert!(!set.is_terminated());
        assert_eq!(set.next().await, None);
        assert!(set.is_terminated());
        assert_eq!(set.next().await, None);
        assert!(set.is_terminated(), "None forever after termination");
        // Pushing revives the set.
        assert_eq!(set.push(ready('d')), 3);
        assert!(!set.is_terminated());
        assert_eq!(set.len(), 1);
        let mut set = set.indexed();
        assert_eq!(set.next().await, Some((3, 'd')));
        assert_eq!(set.next().await, None);
        assert!(set.is_terminated());
        assert_eq!(set.get_mut().push(ready('e')), 4);
        assert!(!set.is_terminated());
        let mut set = set.into_inner();
        assert_eq!(set.next().await, Some('e'));
        assert_eq!(set.next().await, None);
    }

    async fn new_set_is_a_dynamic_futures_unordered() {
        // Each finished child pushes two more until depth 9: 2^10 - 1 children.
        let polls = Counter::new();
        let mut set: AsCompleted<YieldN<(usize, u32)>> = AsCompleted::new();
        assert!(set.is_empty());
        assert_eq!(set.push(YieldN::new(1, (0, 0), &polls)), 0);
        let mut seen = 0;
        let mut next_index = 1;
        let mut set = set.indexed();
        while let Some((index, (id, depth))) = set.next().await {
            assert_eq!(index, id);
            seen += 1;
            if depth < 9 {
                for _ in 0..2 {
                    let pushed = set.get_mut().push(YieldN::new(id % 3, (next_index, depth + 1), &polls));
                    assert_eq!(pushed, next_index);
                    next_index += 1;
                }
            }
        }
        assert_eq!(seen, 1023);
        let wakes: usize = 1 + (1..1023).map(|id| ((id - 1) / 2) % 3).sum::<usize>();
        assert_eq!(polls.get(), wakes + 1023, "polls != wakes + N");
    }

    async fn len_and_size_hint_track_unfinished_children() {
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(5, &tracker);
        let mut set = as_completed(children);
        assert_eq!((set.len(), set.size_hint()), (5, (5, Some(5))));
        for (k, i) in [3, 0, 4, 1, 2].into_iter().enumerate() {
            let (v, ()) = join(set.next(), async {
                yield_now().await;
                handles[i].complete();
            })
            .await;
            assert_eq!(v, Some(i));
            assert_eq!(set.len(), 4 - k);
            assert_eq!(set.is_empty(), k == 4);
        }
    }

    async fn from_iterator_and_extend() {
        let mut set: AsCompleted<Ready<u8>> = (0..3).map(ready).collect();
        set.extend([ready(3), ready(4)]);
        assert_eq!(set.len(), 5);
        let mut got: Vec<(usize, u8)> = set.indexed().collect().await;
        got.sort_unstable();
        assert_eq!(got, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
    }

    async fn sibling_in_same_task_runs_while_children_spin() {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let set = as_completed((0..70).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>());
        let (n, ()) = join(set.count(), async { stop.store(true, Ordering::SeqCst) }).await;
        assert_eq!(n, 70);
        // The first snapshot is never split: 70 in the first poll, 70 after
        // the flag was set.
        assert_eq!(polls.get(), 140);
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        for round in 0..3 {
            let polls = Counter::new();
            let n = 10 + round * 30;
            let mut set = as_completed((0..n).map(|i| RemoteYield::new(40 + i % 6, i, &thread, &polls)));
            // Push more while the first ones run.
            let mut got = Vec::new();
            let mut pushed = false;
            while let Some(v) = set.next().await {
                got.push(v);
                if !pushed {
                    pushed = true;
                    for i in n..n + 20 {
                        assert_eq!(set.push(RemoteYield::new(30, i, &thread, &polls)), i);
                    }
                }
            }
            got.sort_unstable();
            assert_eq!(got, (0..n + 20).collect::<Vec<_>>());
        }
    }

    async fn child_panic_propagates_and_rest_is_dropped() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        let mut handles = Vec::new();
        for i in 0..40 {
            let (h, c) = parked(i, &polls, &tracker);
            handles.push(h);
            set.push(c.boxed());
        }
        set.push(panic_after(2, "stream child panicked", tracker.token()).boxed());
        let err = AssertUnwindSafe(set.next()).catch_unwind().await.expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "stream child panicked");
        // The parked children are still in the set until it is dropped.
        assert_eq!(tracker.live(), 40);
        drop(set);
        assert_eq!(tracker.live(), 0);
        assert!(handles.iter().all(|h| !h.has_waker()));
    }

    async fn pinned_children_never_move_across_growing_pushes() {
        let polls = Counter::new();
        let mut set = AsCompleted::new();
        let mut expected = 0;
        // Long-lived children pushed first, then many more that force new
        // chunks; the first ones keep being polled throughout.
        for i in 0..5 {
            set.push(NoMove::new(YieldN::new(400, i, &polls)));
            expected += 1;
        }
        // Finishes at once, so the growing pushes start right away.
        set.push(NoMove::new(YieldN::new(0, 5, &polls)));
        expected += 1;
        let mut got = 0;
        let mut next = 6;
        while let Some((_value, polls_seen)) = set.next().await {
            assert!(polls_seen >= 1);
            got += 1;
            if next < 3000 {
                for _ in 0..300 {
                    set.push(NoMove::new(YieldN::new(next % 4, next, &polls)));
                    next += 1;
                    expected += 1;
                }
            }
        }
        assert_eq!(got, expected);
        assert!(next >= 3000, "the set grew while the first children ran");
    }
}

matrix_local! {
    async fn not_send_children_and_pushes() {
        let rc = Rc::new(10);
        let mut set: AsCompleted<LocalBoxFuture<'_, Rc<usize>>> = as_completed((0..20).map(|i| {
            let rc = rc.clone();
            async move {
                for _ in 0..i % 3 {
                    yield_now().await;
                }
                Rc::new(*rc + i)
            }
            .boxed_local()
        }));
        let mut got = Vec::new();
        while let Some(v) = set.next().await {
            got.push(*v);
            if got.len() == 1 {
                let rc = rc.clone();
                set.push(async move { Rc::new(*rc * 100) }.boxed_local());
            }
        }
        got.sort_unstable();
        let mut expected: Vec<usize> = (10..30).collect();
        expected.push(1000);
        assert_eq!(got, expected);
        drop(set);
        assert_eq!(Rc::strong_count(&rc), 1);
    }
}

/// Polls `set` until it yields, at most twice (see
/// `next_poll_after_an_item_picks_up_a_new_wake`).
fn next_within_two_polls<F: Future>(
    set: &mut AsCompleted<F>,
    w: &CountingWaker,
) -> Option<(usize, F::Output)> {
    for _ in 0..2 {
        if let Poll::Ready(item) = set.poll_next_indexed(&mut w.context()) {
            return item;
        }
    }
    panic!("a woken child's output was not yielded within two polls");
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut set = as_completed(Vec::<Ready<u8>>::new());
        assert!(!set.is_terminated() || set.is_empty());
        assert_eq!(poll_next_once(&mut set, &w), Poll::Ready(None));
        assert!(set.is_terminated());
        assert_eq!(poll_next_once(&mut set, &w), Poll::Ready(None));
        assert_eq!(w.wakes(), 0);
    }

    fn exact_polls_in_reverse_and_random_order_manual() {
        for n in SIZES.into_iter().chain([100_000]) {
            for (name, order) in [("reverse", (0..n).rev().collect::<Vec<_>>()), ("random", shuffled(n, n as u64 + 1))] {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let (handles, counters, children) = parked_set(n, &tracker);
                let mut set = as_completed(children);
                if n == 0 {
                    assert_eq!(set.poll_next_indexed(&mut w.context()), Poll::Ready(None));
                    continue;
                }
                assert!(set.poll_next_indexed(&mut w.context()).is_pending());
                assert_eq!(total(&counters), n, "{name} n = {n}");
                for (k, &i) in order.iter().enumerate() {
                    let wakes = w.wakes();
                    assert!(handles[i].complete());
                    assert!(w.wakes() > wakes, "{name} n = {n}: a child's wake must wake the parent");
                    assert_eq!(next_within_two_polls(&mut set, &w), Some((i, i)), "{name} n = {n}: not in completion order");
                    assert_eq!(counters[i].get(), 2, "{name} n = {n}: child {i}");
                    assert_eq!(set.len(), n - k - 1);
                }
                assert_eq!(set.poll_next_indexed(&mut w.context()), Poll::Ready(None));
                assert!(set.is_terminated());
                assert_eq!(total(&counters), 2 * n, "{name} n = {n}: polls != wakes + N");
                assert_eq!(tracker.live(), 0);
                drop(set);
                assert_eq!(w.live_clones(), 0, "parent waker leaked");
            }
        }
    }

    fn several_wakes_before_one_poll_each_poll_their_child_once() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(1000, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        let fired: Vec<usize> = shuffled(1000, 5).into_iter().take(300).collect();
        for &i in &fired {
            handles[i].complete();
        }
        let mut got = Vec::new();
        let mut polls_of_set = 0;
        while got.len() < 300 {
            polls_of_set += 1;
            assert!(polls_of_set < 1000, "stuck");
            if let Poll::Ready(Some((i, _))) = set.poll_next_indexed(&mut w.context()) {
                got.push(i);
            }
        }
        got.sort_unstable();
        let mut expected = fired.clone();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(total(&counters), 1300, "only the woken children were polled, once each");
        assert!(set.poll_next_indexed(&mut w.context()).is_pending());
        assert!(set.poll_next_indexed(&mut w.context()).is_pending());
        assert_eq!(total(&counters), 1300);
    }

    /// The stream's doc: "only the waker of the most recent call is kept".
    fn only_the_most_recent_waker_is_woken() {
        let tracker = Tracker::new();
        let (a, b) = (CountingWaker::new(), CountingWaker::new());
        let (handles, _counters, children) = parked_set(3, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &a).is_pending());
        assert!(poll_next_once(&mut set, &b).is_pending());
        handles[1].complete();
        assert_eq!((a.wakes(), b.wakes()), (0, 1));
        assert_eq!(next_within_two_polls(&mut set, &b), Some((1, 1)));
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        for n in [1, 64, 65, 1000] {
            let w = CountingWaker::new();
            let stop = Arc::new(AtomicBool::new(false));
            let counters: Vec<Counter> = (0..n).map(|_| Counter::new()).collect();
            let mut set = as_completed(counters.iter().map(|c| Spinner::new(&stop, c)).collect::<Vec<_>>());
            assert_spinner_rounds(&counters, &w, 3, || assert!(poll_next_once(&mut set, &w).is_pending()));
            stop.store(true, Ordering::SeqCst);
            let mut done = 0;
            while let Poll::Ready(Some(())) = poll_next_once(&mut set, &w) {
                done += 1;
            }
            assert_eq!(done, n);
            assert!(counters.iter().all(|c| c.get() == 4));
        }
    }

    fn sibling_task_runs_on_current_thread_tokio() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let polls = Counter::new();
            let flag = stop.clone();
            let sibling = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let set = as_completed((0..50).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>());
            assert_eq!(set.count().await, 50);
            sibling.await.unwrap();
        });
    }

    /// A child finishes while a clone of its waker lives on; new children
    /// pushed later must never be polled because of that stale waker.
    fn stale_waker_never_polls_new_children() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stash = WakerStash::default();
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        assert_eq!(set.push(Stasher::new(&stash, 0).boxed()), 0);
        assert_eq!(poll_next_once(&mut set, &w), Poll::Ready(Some(0)));
        assert_eq!(stash.len(), 1);
        // New children, possibly in the slot the stale waker points at.
        let mut handles = Vec::new();
        let mut counters = Vec::new();
        for round in 0..4 {
            for i in 0..40 {
                let polls = Counter::new();
                let (h, c) = parked(round * 100 + i, &polls, &tracker);
                set.push(c.boxed());
                handles.push(h);
                counters.push(polls);
            }
            // The first poll after an item may only close the previous
            // snapshot (see `next_poll_after_an_item_picks_up_a_new_wake`).
            assert!(poll_next_once(&mut set, &w).is_pending());
            assert!(poll_next_once(&mut set, &w).is_pending());
            assert!(counters.iter().all(|c| c.get() == 1), "round {round}: first polls");
            for _ in 0..3 {
                stash.wake_all_by_ref();
                assert!(poll_next_once(&mut set, &w).is_pending());
                assert!(poll_next_once(&mut set, &w).is_pending());
                assert!(counters.iter().all(|c| c.get() == 1), "round {round}: the stale waker polled a new child");
            }
        }
        for (k, h) in handles.iter().enumerate() {
            h.complete();
            assert!(next_within_two_polls(&mut set, &w).is_some());
            assert_eq!(counters[k].get(), 2);
        }
        assert_eq!(total(&counters), 2 * 160);
        stash.wake_all_by_ref();
        assert_eq!(poll_next_once(&mut set, &w), Poll::Ready(None));
        stash.clear();
    }

    /// Once the stale waker is gone, its slot may be reused; its leftover
    /// ready bit must not cost the next occupant an extra poll.
    fn reused_slot_after_stale_wake_polls_new_child_once() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stash = WakerStash::default();
        // Slots are reused in chunks added by `push`; fill the first one (32
        // slots) so the next pushes must reuse them or grow.
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        for i in 0..32 {
            set.push(Stasher::new(&stash, i).boxed());
        }
        while poll_next_once(&mut set, &w) != Poll::Ready(None) {}
        // Stale wakes on every slot, then the clones die: the slots may be
        // reused, each with a leftover ready bit.
        stash.wake_all_by_ref();
        stash.clear();
        let (handles, counters, children) = parked_set(32, &tracker);
        for c in children {
            set.push(c.boxed());
        }
        for _ in 0..4 {
            assert!(poll_next_once(&mut set, &w).is_pending());
        }
        assert!(counters.iter().all(|c| c.get() == 1), "a stale bit polled a new occupant again");
        for (k, h) in handles.iter().enumerate() {
            h.complete();
            assert_eq!(next_within_two_polls(&mut set, &w), Some((32 + k, k)));
            assert_eq!(counters[k].get(), 2);
        }
        // The same with children that woke themselves through the borrowed
        // waker right before finishing (no clone: their slots are free at once).
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        for _ in 0..32 {
            set.push(WakeThenReady.boxed());
        }
        while poll_next_once(&mut set, &w) != Poll::Ready(None) {}
        let (handles, counters, children) = parked_set(32, &tracker);
        for c in children {
            set.push(c.boxed());
        }
        for _ in 0..4 {
            assert!(poll_next_once(&mut set, &w).is_pending());
        }
        assert!(counters.iter().all(|c| c.get() == 1), "a stale self-wake polled a new occupant again");
        for h in &handles {
            h.complete();
            assert!(next_within_two_polls(&mut set, &w).is_some());
        }
        assert_eq!(total(&counters), 64);
    }

    /// A stale ready bit already taken into the current snapshot must be
    /// forgotten when its slot is reused mid-snapshot.
    fn stale_bit_in_current_snapshot_does_not_poll_next_occupant_twice() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let pa = Counter::new();
        let pc = Counter::new();
        let (ha, a) = parked(0, &pa, &tracker);
        let (_hc, c) = parked(2, &pc, &tracker);
        // Pushed (not collected) so the slots are reusable: A, B, C in slots 0, 1, 2.
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        set.push(a.boxed());
        set.push(WakeThenReady.boxed());
        set.push(c.boxed());
        // A parks, B wakes itself and finishes (stale bit on slot 1).
        assert_eq!(set.poll_next_indexed(&mut w.context()), Poll::Ready(Some((1, usize::MAX))));
        assert!(set.poll_next_indexed(&mut w.context()).is_pending());
        assert_eq!((pa.get(), pc.get()), (1, 1));
        // A finishes: the snapshot taking A's bit also takes B's stale one.
        ha.complete();
        assert_eq!(next_within_two_polls(&mut set, &w), Some((0, 0)));
        // Two pushes reuse slots 0 and 1 while that snapshot is still open.
        let (px, py) = (Counter::new(), Counter::new());
        let (_hx, x) = parked(3, &px, &tracker);
        let (_hy, y) = parked(4, &py, &tracker);
        assert_eq!(set.push(x.boxed()), 3);
        assert_eq!(set.push(y.boxed()), 4);
        for _ in 0..4 {
            assert!(set.poll_next_indexed(&mut w.context()).is_pending());
        }
        assert_eq!((px.get(), py.get(), pc.get()), (1, 1, 1), "each new child polled exactly once");
    }

    fn stale_wakers_fired_from_other_threads_while_pushing() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stash = WakerStash::default();
        let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
        for i in 0..50 {
            set.push(Stasher::new(&stash, i).boxed());
        }
        while let Poll::Ready(Some(_)) = poll_next_once(&mut set, &w) {}
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let waker_thread = {
            let stash = stash.clone();
            let (stop, started) = (stop.clone(), started.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    stash.wake_all_by_ref();
                    started.store(true, Ordering::SeqCst);
                }
            })
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let mut counters = Vec::new();
        let mut handles = Vec::new();
        for round in 0..50 {
            for i in 0..20 {
                let polls = Counter::new();
                let (h, c) = parked(round * 20 + i, &polls, &tracker);
                set.push(c.boxed());
                counters.push(polls);
                handles.push(h);
            }
            for _ in 0..3 {
                // From this thread too, so the check does not depend on timing.
                stash.wake_all_by_ref();
                let _ = poll_next_once(&mut set, &w);
            }
            assert!(counters.iter().all(|c| c.get() == 1), "round {round}: a stale waker polled a new child");
        }
        stop.store(true, Ordering::SeqCst);
        waker_thread.join().unwrap();
        for h in &handles {
            h.complete();
        }
        let mut n = 0;
        loop {
            match poll_next_once(&mut set, &w) {
                Poll::Ready(Some(_)) => n += 1,
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }
        assert_eq!(n, 1000);
        assert_eq!(total(&counters), 2000);
    }

    /// A finished child's waker clone dropped on another thread while the
    /// set files the child's slot as free or cooling. `release_slot` reads
    /// the clone count twice; when the clone dies in between, the slot is
    /// linked into the cooling list but made the head of the free list, and
    /// the free/cooling lists get corrupted: `push` then panics with "free
    /// list points at an occupied slot" / "cooling list points at an occupied
    /// slot" (or children share a slot).
    fn waker_clone_dropped_on_another_thread_while_slot_is_released() {
        let dropper = WakerDropper::spawn(false);
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let mut set: AsCompleted<futures::future::Either<HandOff, Parked<()>>> = AsCompleted::new();
        let mut handles = Vec::new();
        for i in 0..300_000u32 {
            if i % 1000 == 0 {
                // Long-lived children, so a corrupted slot list can overwrite one.
                let (h, c) = parked((), &Counter::new(), &tracker);
                set.push(futures::future::Either::Right(c));
                handles.push(h);
            }
            set.push(futures::future::Either::Left(dropper.hand_off(i % 7)));
            loop {
                match set.poll_next_indexed(&mut w.context()) {
                    Poll::Ready(Some(_)) => break,
                    Poll::Ready(None) => panic!("iteration {i}: the set lost its children"),
                    Poll::Pending => {}
                }
            }
            assert_eq!(set.len(), handles.len(), "iteration {i}");
            assert_eq!(tracker.live(), handles.len(), "iteration {i}: a child was dropped without finishing");
        }
    }

    fn cancel_after_every_poll_drops_every_child() {
        for k in 0..=8 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut set = as_completed((0..65).map(|i| YieldN::tracked(i % 5, i, &polls, &tracker)).collect::<Vec<_>>());
            for step in 0..k {
                if step == 2 {
                    for i in 0..40 {
                        set.push(YieldN::tracked(i % 3, i, &polls, &tracker));
                    }
                }
                if poll_next_once(&mut set, &w) == Poll::Ready(None) {
                    break;
                }
            }
            drop(set);
            assert_eq!(tracker.live(), 0, "k = {k}");
            assert_eq!(w.live_clones(), 0, "k = {k}: parent waker leaked");
        }
    }

    fn no_memory_leak_with_stale_wakers_cooling_and_growth() {
        assert_no_leak("AsCompleted with stale wakers, reuse and growth", || {
            let w = CountingWaker::new();
            let stash = WakerStash::default();
            let polls = Counter::new();
            let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
            for round in 0..6 {
                for i in 0..50 {
                    if i % 4 == 0 {
                        set.push(Stasher::new(&stash, i).boxed());
                    } else {
                        set.push(YieldN::new(i % 3, i, &polls).boxed());
                    }
                }
                for _ in 0..2 {
                    let _ = poll_next_once(&mut set, &w);
                }
                if round % 2 == 1 {
                    stash.wake_all_by_ref();
                    stash.clear();
                }
            }
            drop(set);
            stash.wake_all_by_ref();
            stash.clear();
        });
        assert_no_leak("AsCompleted drained", || {
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut set = as_completed((0..3000).map(|i| YieldN::new(i % 3, i, &polls)));
            while poll_next_once(&mut set, &w) != Poll::Ready(None) {}
        });
    }

    fn into_pending_returns_unfinished_children_with_progress() {
        let w = CountingWaker::new();
        let counters: Vec<Counter> = (0..6).map(|_| Counter::new()).collect();
        let mut set = as_completed((0..6).map(|i| YieldN::new(i * 2, i, &counters[i])));
        // Three polls: children 0 and 1 finish.
        let mut got = Vec::new();
        for _ in 0..4 {
            if let Poll::Ready(Some(v)) = poll_next_once(&mut set, &w) {
                got.push(v);
            }
        }
        assert_eq!(got, [0, 1]);
        let rest = set.into_pending();
        assert_eq!(rest.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3, 4, 5]);
        for (i, fut) in rest {
            assert_eq!(futures::executor::block_on(fut), i);
            assert_eq!(counters[i].get(), 2 * i + 1, "child {i} restarted instead of keeping its progress");
        }
    }

    /// After an item, a child woken next must be picked up by the next poll,
    /// not one poll later (that costs every consumer an extra round trip
    /// through the executor per item).
    fn next_poll_after_an_item_picks_up_a_new_wake() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, _counters, children) = parked_set(3, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        handles[0].complete();
        assert_eq!(set.poll_next_indexed(&mut w.context()), Poll::Ready(Some((0, 0))));
        handles[2].complete();
        let wakes = w.wakes();
        assert_eq!(set.poll_next_indexed(&mut w.context()), Poll::Ready(Some((2, 2))));
        assert_eq!(w.wakes(), wakes, "no self-wake needed");
    }
}

// ---------------------------------------------------------------------------
// iter / iter_mut: access to the unfinished futures
// ---------------------------------------------------------------------------

/// A `!Unpin` future with a knob changed through `Pin<&mut Self>`; it
/// records its address at every poll and every knob change, and finishes
/// once the knob was turned and it was woken.
struct Knob {
    turned: bool,
    addresses: Arc<std::sync::Mutex<Vec<usize>>>,
    _pin: std::marker::PhantomPinned,
}

impl Knob {
    fn new(addresses: &Arc<std::sync::Mutex<Vec<usize>>>) -> Self {
        Self {
            turned: false,
            addresses: addresses.clone(),
            _pin: std::marker::PhantomPinned,
        }
    }

    fn turn(self: Pin<&mut Self>) {
        // SAFETY: nothing is moved out.
        let this = unsafe { self.get_unchecked_mut() };
        let here = std::ptr::from_mut(this) as usize;
        this.addresses.lock().unwrap().push(here);
        this.turned = true;
    }
}

impl Future for Knob {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        // SAFETY: nothing is moved out.
        let this = unsafe { self.get_unchecked_mut() };
        let here = std::ptr::from_mut(this) as usize;
        this.addresses.lock().unwrap().push(here);
        if this.turned {
            Poll::Ready(true)
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

matrix! {
    /// `iter` lists exactly the unfinished futures with their indices, as
    /// the set finishes some, reuses slots for `push`es, and is cleared.
    async fn iter_lists_the_unfinished_futures() {
        let tracker = Tracker::new();
        let (parks, _counters, children) = parked_set(5, &tracker);
        let mut set: AsCompleted<_> = children.into_iter().collect();
        let indices = |set: &AsCompleted<Parked<usize>>| {
            let mut v: Vec<usize> = set.iter().map(|(i, _)| i).collect();
            v.sort();
            v
        };
        assert_eq!(set.iter().len(), 5);
        assert_eq!(indices(&set), [0, 1, 2, 3, 4]);
        assert!(poll_next_once(&mut set, &CountingWaker::new()).is_pending());
        parks[1].complete();
        parks[3].complete();
        assert_eq!(set.next().await.map(|v| v % 2), Some(1));
        assert_eq!(set.next().await.map(|v| v % 2), Some(1));
        assert_eq!(indices(&set), [0, 2, 4]);
        // Pushed futures (in reused or new slots) appear with their index.
        let (more_parks, _c, more) = parked_set(3, &tracker);
        for child in more {
            set.push(child);
        }
        assert_eq!(indices(&set), [0, 2, 4, 5, 6, 7]);
        assert_eq!(set.iter().len(), set.len());
        more_parks[1].complete();
        assert_eq!(set.next().await, Some(1));
        assert_eq!(indices(&set), [0, 2, 4, 5, 7]);
        // `iter_mut` sees the same ones.
        let mut mutable: Vec<usize> = set.iter_mut().map(|(i, _)| i).collect();
        mutable.sort();
        assert_eq!(mutable, [0, 2, 4, 5, 7]);
        set.clear();
        assert_eq!(set.iter().len(), 0);
        assert_eq!(set.iter_mut().count(), 0);
        assert_eq!(tracker.live(), 0);
        drop((parks, more_parks));
    }

    /// Empty sets, and a set whose futures all finished.
    async fn iter_on_empty_and_finished_sets() {
        let mut empty = AsCompleted::<Ready<u8>>::new();
        assert_eq!(empty.iter().count(), 0);
        assert_eq!(empty.iter_mut().len(), 0);
        let mut done = as_completed([ready(1), ready(2)]);
        assert_eq!(done.by_ref().count().await, 2);
        assert_eq!(done.iter().count(), 0);
        assert!(done.iter().next().is_none());
    }

    /// `iter_mut` hands out pinned futures at the address they are polled
    /// at; changing them through the pin is seen by their next poll.
    async fn iter_mut_gives_pinned_access_in_place() {
        let addresses = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut set = as_completed((0..3).map(|_| Knob::new(&addresses)));
        assert!(poll_next_once(&mut set, &CountingWaker::new()).is_pending());
        let first_polls: Vec<usize> = std::mem::take(&mut *addresses.lock().unwrap());
        assert_eq!(first_polls.len(), 3);
        let mut turned = Vec::new();
        for (index, knob) in set.iter_mut() {
            if index != 1 {
                knob.turn();
                turned.push(index);
            }
        }
        let turns: Vec<usize> = std::mem::take(&mut *addresses.lock().unwrap());
        for at in &turns {
            assert!(first_polls.contains(at), "a future moved");
        }
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(set.next().await);
        }
        assert_eq!(got, [Some(true), Some(true)]);
        let left: Vec<usize> = set.iter().map(|(i, _)| i).collect();
        assert_eq!(left, [1]);
        for at in addresses.lock().unwrap().iter() {
            assert!(first_polls.contains(at), "a future moved");
        }
    }
}

guarded! {
    /// After a child's poll panicked, the set can still be inspected and
    /// cleared; the panicking child is still listed (it never finished).
    fn iter_after_a_child_panicked() {
        let mut set: AsCompleted<BoxFuture<'static, u8>> = AsCompleted::new();
        set.push(futures::future::pending().boxed());
        set.push(async { panic!("child panics") }.boxed());
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            poll_next_once(&mut set, &CountingWaker::new())
        }));
        assert!(caught.is_err());
        let mut listed: Vec<usize> = set.iter().map(|(i, _)| i).collect();
        listed.sort();
        assert_eq!(listed, [0, 1]);
        assert_eq!(set.iter_mut().len(), 2);
        set.clear();
        assert_eq!(set.iter().len(), 0);
    }
}
