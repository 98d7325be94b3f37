//! `gather`: SPEC §1 rules and §2, under every executor.

use crate::common;

use awaitkit::{Gather, gather};
use common::*;
use futures::FutureExt;
use futures::future::{BoxFuture, join};
use std::future::{Future, IntoFuture, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// Completes the parked children in `order`, one per turn of the task, and
/// checks each was polled exactly twice (first poll + its one wake) by the
/// time the firing side runs again. Runs beside the gather in one `join`.
async fn fire_in_order(handles: &[ParkHandle], counters: &[Counter], order: &[usize]) {
    for &i in order {
        assert!(
            handles[i].complete(),
            "child {i} had no parked waker: not polled yet?"
        );
        yield_now().await;
        assert_eq!(
            counters[i].get(),
            2,
            "child {i}: one first poll + one poll for its one wake"
        );
    }
}

async fn gather_in_order(n: usize, order: Vec<usize>) {
    let tracker = Tracker::new();
    let (handles, counters, children) = parked_set(n, &tracker);
    let (out, ()) = join(gather(children), async {
        yield_now().await;
        fire_in_order(&handles, &counters, &order).await;
    })
    .await;
    assert_eq!(
        out,
        (0..n).collect::<Vec<_>>(),
        "n = {n}: outputs not in input order"
    );
    // Only woken children are polled: wakes (n) + first polls (n).
    assert_eq!(total(&counters), 2 * n, "n = {n}: child polls != wakes + N");
    assert_eq!(tracker.live(), 0);
}

matrix! {
    async fn empty_input_resolves_to_empty_vec() {
        let out: Vec<u8> = gather(Vec::<Ready<u8>>::new()).await;
        assert!(out.is_empty());
        let out: Vec<()> = gather(std::iter::empty::<Ready<()>>()).await;
        assert!(out.is_empty());
    }

    async fn outputs_in_input_order_at_every_size() {
        for n in SIZES {
            let polls = Counter::new();
            // Child i yields (n - i) % 7 times: later inputs often finish first.
            let yields: Vec<usize> = (0..n).map(|i| (n - i) % 7).collect();
            let children = (0..n).map(|i| YieldN::new(yields[i], i * 3, &polls));
            let out = gather(children).await;
            assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>(), "n = {n}");
            // Each yield is exactly one self-wake.
            assert_eq!(polls.get(), yields.iter().sum::<usize>() + n, "n = {n}: polls != wakes + N");
        }
    }

    async fn outputs_and_children_with_destructors_within_one_word_and_beyond() {
        for n in [1, 2, 10, 63, 64, 65, 130] {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let children = (0..n).map(|i| {
                let out = tracker.clone();
                YieldN::tracked(i % 3, i, &polls, &tracker).map(move |i| (i, out.token()))
            });
            let out = gather(children.collect::<Vec<_>>()).await;
            assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "n = {n}");
            assert_eq!(tracker.live(), n, "n = {n}: children not dropped, or outputs dropped");
            drop(out);
            assert_eq!(tracker.live(), 0, "n = {n}");
            assert_eq!(polls.get(), n + (0..n).map(|i| i % 3).sum::<usize>(), "n = {n}: polls != wakes + N");
        }
    }

    async fn hundred_thousand_children_lean() {
        let n = 100_000;
        let polls = Counter::new();
        let out = gather((0..n).map(|i| YieldN::new(i % 2, i as u32, &polls))).await;
        assert_eq!(out.len(), n);
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as u32), "outputs not in input order");
        assert_eq!(polls.get(), n + n / 2, "polls != wakes + N");
    }

    async fn reverse_wake_order_polls_only_woken_children() {
        for n in SIZES {
            gather_in_order(n, (0..n).rev().collect()).await;
        }
    }

    async fn random_wake_order_polls_only_woken_children() {
        for (seed, n) in SIZES.into_iter().enumerate() {
            gather_in_order(n, shuffled(n, seed as u64)).await;
        }
    }

    async fn reverse_wake_order_100k() {
        let n = 100_000;
        gather_in_order(n, (0..n).rev().collect()).await;
    }

    async fn oneshot_gated_children_finish_in_any_order() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (senders, children): (Vec<_>, Vec<_>) = (0..33).map(|_| gated::<usize>(&tracker, &polls)).unzip();
        let order = shuffled(33, 7);
        let (out, ()) = join(gather(children), async move {
            yield_now().await;
            let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
            for i in order {
                senders[i].take().unwrap().send(i * 10).unwrap();
                yield_now().await;
            }
        })
        .await;
        assert_eq!(out, (0..33).map(|i| Some(i * 10)).collect::<Vec<_>>());
        assert_eq!(polls.get(), 66);
        assert_eq!(tracker.live(), 0);
    }

    async fn into_future_items_are_accepted() {
        struct Deferred(u8);
        impl IntoFuture for Deferred {
            type Output = u8;
            type IntoFuture = Ready<u8>;
            fn into_future(self) -> Ready<u8> {
                ready(self.0 + 1)
            }
        }
        assert_eq!(gather([Deferred(1), Deferred(2)]).await, [2, 3]);
    }

    async fn sibling_in_same_task_runs_while_children_spin() {
        // `join` polls the gather, then the sibling: if one poll of the gather
        // never returned while its children keep re-waking, the sibling would
        // never set the flag and the spinners would spin forever.
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let spinners: Vec<Spinner> = (0..40).map(|_| Spinner::new(&stop, &polls)).collect();
        let sibling = async {
            stop.store(true, Ordering::SeqCst);
        };
        let (out, ()) = join(gather(spinners), sibling).await;
        assert_eq!(out.len(), 40);
        // First poll (40: the first snapshot is never split), then the poll
        // after the flag was set (40).
        assert_eq!(polls.get(), 80, "each child polled once per gather poll");
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        for round in 0..4 {
            let polls = Counter::new();
            let n = 8 + round * 25;
            let children = (0..n).map(|i| RemoteYield::new(50 + i % 5, i, &thread, &polls));
            let out = gather(children).await;
            assert_eq!(out, (0..n).collect::<Vec<_>>());
            // Each pending poll handed out exactly one waker; the thread may
            // wake it twice, and a second wake may cost one more poll.
            let pendings: usize = (0..n).map(|i| 50 + i % 5).sum();
            assert!(polls.get() >= pendings + n);
            assert!(polls.get() <= 2 * pendings + n, "more polls than wakes + N");
        }
    }

    async fn child_panic_propagates_and_rest_is_dropped_with_the_gather() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, usize>> = Vec::new();
        let mut handles = Vec::new();
        for i in 0..40 {
            if i == 17 {
                children.push(panic_after(3, "child 17 exploded", tracker.token()).boxed());
            } else {
                let (h, c) = parked(i, &polls, &tracker);
                handles.push(h);
                children.push(c.boxed());
            }
        }
        let mut g = gather(children);
        let err = AssertUnwindSafe(&mut g).catch_unwind().await.expect_err("the panic must propagate");
        assert_eq!(panic_message(&*err), "child 17 exploded");
        drop(g);
        assert_eq!(tracker.live(), 0, "every child dropped with the gather");
        assert!(handles.iter().all(|h| !h.has_waker()));
    }

    async fn pinned_children_never_move() {
        let polls = Counter::new();
        let children: Vec<_> = (0..200).map(|i| NoMove::new(YieldN::new(i % 13, i, &polls))).collect();
        let out = gather(children).await;
        assert_eq!(out, (0..200).map(|i| (i, i % 13 + 1)).collect::<Vec<_>>());
    }

    #[should_panic(expected = "`Gather` polled after completion")]
    async fn polling_after_completion_panics() {
        let mut g = gather([ready(1), ready(2)]);
        assert_eq!((&mut g).await, [1, 2]);
        let _ = (&mut g).await;
    }

    #[should_panic(expected = "`Gather` polled after completion")]
    async fn polling_empty_after_completion_panics() {
        let mut g = gather(Vec::<Ready<u8>>::new());
        assert!((&mut g).await.is_empty());
        let _ = (&mut g).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let shared = Rc::new(5);
        let children = (0..33).map(|i| {
            let shared = Rc::clone(&shared);
            async move {
                for _ in 0..i % 4 {
                    yield_now().await;
                }
                *shared + i
            }
        });
        let out = gather(children).await;
        assert_eq!(out, (0..33).map(|i| 5 + i).collect::<Vec<_>>());
        assert_eq!(Rc::strong_count(&shared), 1, "every child dropped");
        // `!Send` outputs too.
        let out = gather((0..3).map(|i| async move { Rc::new(i) })).await;
        assert_eq!(out.iter().map(|r| **r).collect::<Vec<_>>(), [0, 1, 2]);
    }
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut g = gather(Vec::<Ready<u8>>::new());
        assert_eq!(poll_once(&mut g, &w), Poll::Ready(vec![]));
        assert_eq!(w.wakes(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    fn exact_polls_in_reverse_and_random_order_manual() {
        for n in SIZES.into_iter().chain([100_000]) {
            for (name, order) in [("reverse", (0..n).rev().collect::<Vec<_>>()), ("random", shuffled(n, n as u64))] {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let (handles, counters, children) = parked_set(n, &tracker);
                let mut g = gather(children);
                if n == 0 {
                    assert_eq!(poll_once(&mut g, &w), Poll::Ready(vec![]));
                    continue;
                }
                assert!(poll_once(&mut g, &w).is_pending());
                assert_eq!(total(&counters), n, "{name} n = {n}: first poll polls every child once");
                for (k, &i) in order.iter().enumerate() {
                    let wakes_before = w.wakes();
                    assert!(handles[i].complete());
                    assert!(w.wakes() > wakes_before, "{name} n = {n}: a child's wake must wake the parent");
                    let r = poll_once(&mut g, &w);
                    assert_eq!(counters[i].get(), 2, "{name} n = {n}: child {i}");
                    if k + 1 < n {
                        assert!(r.is_pending(), "{name} n = {n}: ready after {} of {n}", k + 1);
                    } else {
                        assert_eq!(r, Poll::Ready((0..n).collect::<Vec<_>>()), "{name} n = {n}");
                    }
                }
                assert_eq!(total(&counters), 2 * n, "{name} n = {n}: polls != wakes + N");
                assert_eq!(tracker.live(), 0);
                drop(g);
                assert_eq!(w.live_clones(), 0, "{name} n = {n}: parent waker leaked");
            }
        }
    }

    fn spurious_wakes_poll_only_the_woken_child() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        for round in 1..=5 {
            assert!(handles[42].wake());
            assert!(handles[7].wake());
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!(counters[42].get(), 1 + round);
            assert_eq!(counters[7].get(), 1 + round);
            assert_eq!(total(&counters), 100 + 2 * round, "only the two woken children polled");
        }
        // A poll with nothing woken polls nobody.
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(total(&counters), 110);
        // Two wakes before one poll coalesce into one poll.
        let waker = handles[3].waker().unwrap();
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(counters[3].get(), 2);
        assert_eq!(total(&counters), 111);
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        for n in [1, 3, 64, 65, 1000] {
            let w = CountingWaker::new();
            let stop = Arc::new(AtomicBool::new(false));
            let counters: Vec<Counter> = (0..n).map(|_| Counter::new()).collect();
            let mut g = gather(counters.iter().map(|c| Spinner::new(&stop, c)).collect::<Vec<_>>());
            assert_spinner_rounds(&counters, &w, 3, || assert!(poll_once(&mut g, &w).is_pending()));
            stop.store(true, Ordering::SeqCst);
            assert_eq!(poll_once(&mut g, &w), Poll::Ready(vec![(); n]));
        }
    }

    fn sibling_task_runs_on_current_thread_tokio() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let polls = Counter::new();
            let flag = stop.clone();
            let sibling = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let g = gather((0..50).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>());
            assert_eq!(g.await.len(), 50);
            sibling.await.unwrap();
        });
        // The same inside a `LocalSet`, sibling spawned locally.
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let stop = Arc::new(AtomicBool::new(false));
            let polls = Counter::new();
            let flag = stop.clone();
            let sibling = tokio::task::spawn_local(async move { flag.store(true, Ordering::SeqCst) });
            assert_eq!(gather((0..50).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>()).await.len(), 50);
            sibling.await.unwrap();
        });
    }

    fn stale_waker_of_finished_child_polls_nobody() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stash = WakerStash::default();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, usize>> = vec![Stasher::new(&stash, 0).boxed()];
        let mut handles = Vec::new();
        for i in 1..70 {
            let (h, c) = parked(i, &polls, &tracker);
            handles.push(h);
            children.push(c.boxed());
        }
        let mut g = gather(children);
        // The first child finishes at once, which arms the stall limit: the
        // 32 parked after it stop the pass, and each poll goes on where the
        // last one stopped (32, 32, then the last 5), each waking the parent.
        for parked_polls in [STALL_LIMIT, 2 * STALL_LIMIT, 69] {
            let wakes = w.wakes();
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!((stash.len(), polls.get()), (1, parked_polls));
            assert_eq!(w.wakes(), wakes + 1, "woken once: to go on, or for a fresh snapshot");
        }
        // Nothing woken: a fresh snapshot polls nobody.
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!((stash.len(), polls.get()), (1, 69));
        for _ in 0..3 {
            stash.wake_all_by_ref();
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!(polls.get(), 69, "a stale waker polled a child");
        }
        for h in &handles {
            h.complete();
        }
        assert_eq!(poll_once(&mut g, &w), Poll::Ready((0..70).collect::<Vec<_>>()));
        assert_eq!(polls.get(), 138);
        // The stale waker outlives the gather and still does nothing harmful.
        drop(g);
        stash.wake_all_by_ref();
        stash.clear();
        assert_eq!(w.live_clones(), 0, "parent waker leaked");
    }

    fn cancel_after_every_poll_drops_every_child() {
        for n in [1, 31, 33, 65] {
            // Child i yields i % 9 times: the gather needs 9 polls.
            for k in 0..=9 {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let polls = Counter::new();
                let mut g = gather((0..n).map(|i| YieldN::tracked(i % 9, i, &polls, &tracker)).collect::<Vec<_>>());
                let mut done = false;
                for _ in 0..k {
                    if poll_once(&mut g, &w).is_ready() {
                        done = true;
                        break;
                    }
                }
                // Child i finishes on poll i % 9 + 1.
                assert_eq!(done, k > (n - 1).min(8), "n = {n}, k = {k}");
                drop(g);
                assert_eq!(tracker.live(), 0, "n = {n}: child leaked after cancelling at poll {k}");
                assert_eq!(tracker.created(), n);
                assert_eq!(w.live_clones(), 0, "n = {n}, k = {k}: parent waker leaked");
            }
        }
    }

    fn cancel_drops_children_holding_registered_wakers() {
        for n in [1, 40, 1000] {
            for k in 0..4 {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let (handles, _counters, children) = parked_set(n, &tracker);
                let mut g = gather(children);
                for step in 0..k {
                    // Complete a few children between polls.
                    if let Some(h) = handles.get(step * 7) {
                        h.complete();
                    }
                    if poll_once(&mut g, &w).is_ready() {
                        break;
                    }
                }
                drop(g);
                assert_eq!(tracker.live(), 0, "n = {n}, k = {k}");
                assert!(handles.iter().all(|h| !h.has_waker()), "a child outlived the gather");
                assert_eq!(w.live_clones(), 0, "parent waker leaked");
            }
        }
    }

    fn no_memory_leak_when_dropped_with_outstanding_child_wakers() {
        assert_no_leak("gather dropped mid-way, then stale wakers fired and dropped", || {
            let w = CountingWaker::new();
            let stash = WakerStash::default();
            let polls = Counter::new();
            let tracker = Tracker::new();
            let mut children: Vec<BoxFuture<'static, usize>> = Vec::new();
            for i in 0..200 {
                if i % 3 == 0 {
                    children.push(Stasher::new(&stash, i).boxed());
                } else {
                    children.push(YieldN::tracked(i % 5, i, &polls, &tracker).boxed());
                }
            }
            let mut g = gather(children);
            let _ = poll_once(&mut g, &w);
            let _ = poll_once(&mut g, &w);
            drop(g);
            stash.wake_all_by_ref();
            stash.clear();
            assert_eq!(tracker.live(), 0);
        });
        assert_no_leak("gather run to completion", || {
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut g = gather((0..5000).map(|i| YieldN::new(i % 3, i, &polls)).collect::<Vec<_>>());
            while poll_once(&mut g, &w).is_pending() {}
        });
    }

    /// Outputs and children with destructors, at sizes within one bit-tree
    /// word and beyond: cancelling after any poll drops every unfinished
    /// child and every output kept so far exactly once; completing hands
    /// every output out (none dropped by the gather), the children all
    /// dropped, and dropping the finished gather drops nothing twice.
    fn outputs_and_children_with_destructors_dropped_once_at_every_stop() {
        for n in [1, 2, 10, 63, 64, 65, 200] {
            for k in 0..=6 {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let polls = Counter::new();
                // Child i yields i % 5 times, then outputs a token.
                let children: Vec<_> = (0..n)
                    .map(|i| {
                        let out = tracker.clone();
                        YieldN::tracked(i % 5, (), &polls, &tracker).map(move |()| out.token())
                    })
                    .collect();
                let mut g = gather(children);
                let mut out = None;
                for _ in 0..k {
                    if let Poll::Ready(v) = poll_once(&mut g, &w) {
                        out = Some(v);
                        break;
                    }
                }
                match out {
                    None => {
                        drop(g);
                        assert_eq!(tracker.live(), 0, "n = {n}, k = {k}: a child or output leaked");
                    }
                    Some(v) => {
                        assert_eq!(v.len(), n);
                        assert_eq!(tracker.live(), n, "n = {n}: only the outputs are alive");
                        drop(g);
                        assert_eq!(tracker.live(), n, "n = {n}: the finished gather dropped an output");
                        drop(v);
                        assert_eq!(tracker.live(), 0);
                    }
                }
                // Children first polls, then one poll per self-wake: wakes + N.
                assert!(polls.get() <= n + (0..n).map(|i| i % 5).sum::<usize>());
                assert_eq!(w.live_clones(), 0, "n = {n}, k = {k}: parent waker leaked");
            }
        }
    }

    /// The last child to finish panics in its destructor, after every other
    /// output was stored: the panic propagates, and dropping the gather then
    /// (no child left running) still drops every stored output once.
    fn stored_outputs_dropped_when_the_last_childs_destructor_panics() {
        /// Panics when dropped (after it finished, here).
        struct BoomOnDrop<F>(F);
        impl<F: Future + Unpin> Future for BoomOnDrop<F> {
            type Output = F::Output;
            fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
                std::pin::Pin::new(&mut self.0).poll(cx)
            }
        }
        impl<F> Drop for BoomOnDrop<F> {
            fn drop(&mut self) {
                panic!("boom on drop");
            }
        }
        for n in [1, 2, 10, 64, 65] {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let children: Vec<BoxFuture<'static, Token>> = (0..n)
                .map(|i| {
                    let out = tracker.clone();
                    let child = YieldN::tracked(if i == n / 2 { 2 } else { i % 2 }, (), &polls, &tracker)
                        .map(move |()| out.token());
                    if i == n / 2 {
                        // Finishes last (on the third poll).
                        BoomOnDrop(child).boxed()
                    } else {
                        child.boxed()
                    }
                })
                .collect();
            let mut g = gather(children);
            let mut caught = None;
            for _ in 0..3 {
                match std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))) {
                    Ok(p) => assert!(p.is_pending(), "n = {n}: finished despite the panic"),
                    Err(payload) => {
                        caught = Some(payload);
                        break;
                    }
                }
            }
            let payload = caught.expect("the destructor's panic propagates");
            assert_eq!(panic_message(&*payload), "boom on drop");
            // The other n - 1 outputs are kept in the gather; nothing runs.
            assert_eq!(tracker.live(), n - 1, "n = {n}");
            drop(g);
            assert_eq!(tracker.live(), 0, "n = {n}: a stored output leaked");
            assert_eq!(w.live_clones(), 0);
        }
    }

    fn child_panic_propagates_out_of_poll_manual() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, usize>> = (0..10).map(|i| YieldN::tracked(2, i, &polls, &tracker).boxed()).collect();
        children.push(panic_after(1, "late boom", tracker.token()).boxed());
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        let err = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))).expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "late boom");
        drop(g);
        assert_eq!(tracker.live(), 0);
    }
}

/// `Gather` is a named, `Unpin` future that can be stored and polled from a
/// hand-written `poll` (SPEC §1.2).
#[test]
fn gather_is_a_nameable_unpin_future() {
    struct Holder {
        inner: Gather<Ready<u8>>,
    }
    impl Future for Holder {
        type Output = usize;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<usize> {
            std::pin::Pin::new(&mut self.inner)
                .poll(cx)
                .map(|v| v.len())
        }
    }
    let h = Holder {
        inner: gather([ready(1), ready(2), ready(3)]),
    };
    assert_eq!(futures::executor::block_on(h), 3);
}
