//! `wait_any`: the first child to finish, its input index, and the rest with
//! their progress (SPEC §1, §4).

use crate::common;

use awaitkit::{AsCompleted, wait_any};
use common::*;
use futures::channel::oneshot;
use futures::future::{BoxFuture, LocalBoxFuture, join};
use futures::stream::FusedStream;
use futures::{FutureExt, StreamExt};
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// Fires `winner` first, then the others in `rest_order`; checks indices,
/// outputs and exact poll counts.
async fn winner_then_rest(n: usize, winner: usize, rest_order: Vec<usize>) {
    let tracker = Tracker::new();
    let (handles, counters, children) = parked_set(n, &tracker);
    let (first, ()) = join(wait_any(children), async {
        yield_now().await;
        assert!(handles[winner].complete());
    })
    .await;
    let (index, value, rest) = first.expect("non-empty input");
    assert_eq!((index, value), (winner, winner), "n = {n}");
    assert_eq!(rest.len(), n - 1);
    // The others were polled once and keep their state.
    assert_eq!(total(&counters), n + 1);
    let mut rest = rest.indexed();
    let (got, ()) = join(
        async {
            let mut got = Vec::new();
            while let Some((i, v)) = rest.next().await {
                assert_eq!(i, v);
                got.push(i);
            }
            got
        },
        async {
            for &i in &rest_order {
                yield_now().await;
                assert!(handles[i].complete());
            }
        },
    )
    .await;
    assert_eq!(
        got, rest_order,
        "n = {n}: the rest yields original indices in completion order"
    );
    assert_eq!(
        total(&counters),
        2 * n,
        "n = {n}: the rest was re-polled from scratch or polled unwoken"
    );
    assert_eq!(tracker.live(), 0);
}

matrix! {
    async fn empty_input_resolves_to_none() {
        assert!(wait_any(Vec::<Ready<u8>>::new()).await.is_none());
        assert!(wait_any(std::iter::empty::<Ready<u8>>()).await.is_none());
    }

    async fn winner_index_and_rest_at_every_size() {
        for (seed, n) in SIZES.into_iter().enumerate().filter(|&(_, n)| n > 0) {
            let winner = shuffled(n, seed as u64)[0];
            let mut rest: Vec<usize> = (0..n).filter(|&i| i != winner).collect();
            if seed % 2 == 0 {
                rest.reverse();
            } else {
                let order = shuffled(rest.len(), seed as u64 + 50);
                rest = order.into_iter().map(|k| rest[k]).collect();
            }
            winner_then_rest(n, winner, rest).await;
        }
    }

    async fn rest_keeps_progress() {
        // Child i needs 10 - i wakes: child 9 wins; the others must not start over.
        let counters: Vec<Counter> = (0..10).map(|_| Counter::new()).collect();
        let children: Vec<_> = (0..10).map(|i| YieldN::new(10 - i, i, &counters[i])).collect();
        let (index, value, rest) = wait_any(children).await.unwrap();
        assert_eq!((index, value), (9, 9));
        assert_eq!(counters[9].get(), 2);
        let polls_at_handover: Vec<usize> = counters.iter().map(Counter::get).collect();
        assert!(polls_at_handover[..9].iter().all(|&p| p == 2));
        let got: Vec<(usize, usize)> = rest.indexed().collect().await;
        assert_eq!(got, (0..9).rev().map(|i| (i, i)).collect::<Vec<_>>());
        for (i, c) in counters.iter().enumerate() {
            assert_eq!(c.get(), 10 - i + 1, "child {i}: polls != its wakes + 1");
        }
    }

    async fn several_ready_at_once_the_rest_yields_them_without_new_wakes() {
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(200, &tracker);
        let fired: Vec<usize> = shuffled(200, 11).into_iter().take(50).collect();
        let (first, ()) = join(wait_any(children), async {
            yield_now().await;
            for &i in &fired {
                handles[i].complete();
            }
        })
        .await;
        let (index, _, mut rest) = first.unwrap();
        assert!(fired.contains(&index));
        // The others fired in the same batch were woken before the hand-over.
        let mut got = vec![index];
        for _ in 0..49 {
            got.push(rest.next().await.unwrap());
        }
        got.sort_unstable();
        let mut expected = fired.clone();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(rest.len(), 150);
        assert_eq!(total(&counters), 250, "each fired child polled once more, nobody else");
    }

    async fn dropping_rest_drops_children() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (senders, children): (Vec<_>, Vec<_>) = (0..40).map(|_| gated::<u8>(&tracker, &polls)).unzip();
        let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
        let (first, ()) = join(wait_any(children), async {
            yield_now().await;
            senders[13].take().unwrap().send(13).unwrap();
        })
        .await;
        let (index, value, rest) = first.unwrap();
        assert_eq!((index, value), (13, Some(13)));
        assert_eq!(tracker.live(), 39);
        assert!(senders.iter().flatten().all(|s| !s.is_canceled()));
        drop(rest);
        assert_eq!(tracker.live(), 0);
        assert!(senders.iter().flatten().all(oneshot::Sender::is_canceled));
    }

    async fn rest_accepts_pushes_with_continuing_indices() {
        let (first, ()) = join(wait_any([ready(0), ready(1), ready(2)]), async {}).await;
        let (index, _, mut rest) = first.unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest.push(ready(3)), 3);
        let mut got: Vec<(usize, i32)> = rest.indexed().collect().await;
        got.sort_unstable();
        let mut expected: Vec<(usize, i32)> = (0..4).filter(|&i| i != index).map(|i| (i, i as i32)).collect();
        expected.sort_unstable();
        assert_eq!(got, expected);
    }

    async fn rest_is_a_fused_stream() {
        let (_, _, mut rest) = wait_any([ready('a'), ready('b')]).await.unwrap();
        assert!(rest.next().await.is_some());
        assert_eq!(rest.next().await, None);
        assert!(rest.is_terminated());
        assert_eq!(rest.next().await, None);
    }

    async fn child_panic_propagates_and_rest_is_dropped() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, usize>> =
            (0..40).map(|i| YieldN::tracked(10, i, &polls, &tracker).boxed()).collect();
        children[22] = panic_after(3, "wait_any child panicked", tracker.token()).boxed();
        let mut w = wait_any(children);
        let err = AssertUnwindSafe(&mut w).catch_unwind().await.expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "wait_any child panicked");
        drop(w);
        assert_eq!(tracker.live(), 0);
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        for _ in 0..5 {
            let (index, value, rest) =
                wait_any((0..30).map(|i| RemoteYield::new(20 + i, i, &thread, &polls))).await.unwrap();
            // Wakes arrive whenever the other thread gets to them: the order
            // is not fixed, only that nothing is lost or mislabelled.
            assert_eq!(index, value);
            let mut got: Vec<(usize, usize)> = rest.indexed().collect().await;
            got.push((index, value));
            got.sort_unstable();
            assert_eq!(got, (0..30).map(|i| (i, i)).collect::<Vec<_>>());
        }
    }

    async fn sibling_in_same_task_runs_while_children_spin() {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let (first, ()) = join(wait_any((0..50).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>()), async {
            stop.store(true, Ordering::SeqCst);
        })
        .await;
        let (_, (), rest) = first.unwrap();
        assert_eq!(rest.len(), 49);
    }

    #[should_panic(expected = "`WaitAny` polled after completion")]
    async fn polling_after_completion_panics() {
        let mut w = wait_any([ready(1)]);
        assert!((&mut w).await.is_some());
        let _ = (&mut w).await;
    }

    #[should_panic(expected = "`WaitAny` polled after completion")]
    async fn polling_empty_after_completion_panics() {
        let mut w = wait_any(Vec::<Ready<u8>>::new());
        assert!((&mut w).await.is_none());
        let _ = (&mut w).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let rc = Rc::new(4);
        let children: Vec<LocalBoxFuture<'_, Rc<usize>>> = (0..5usize)
            .map(|i| {
                let rc = rc.clone();
                async move {
                    for _ in 0..(5 - i) {
                        yield_now().await;
                    }
                    Rc::new(*rc + i)
                }
                .boxed_local()
            })
            .collect();
        let (index, value, rest) = wait_any(children).await.unwrap();
        assert_eq!((index, *value), (4, 8));
        let got: Vec<usize> = rest.map(|v| *v).collect().await;
        assert_eq!(got, [7, 6, 5, 4]);
        assert_eq!(Rc::strong_count(&rc), 1);
    }
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut f = wait_any(Vec::<Ready<u8>>::new());
        assert!(matches!(poll_once(&mut f, &w), Poll::Ready(None)));
    }

    fn exact_polls_and_one_poll_per_child_per_poll() {
        let w = CountingWaker::new();
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(1000, &tracker);
        let mut f = wait_any(children);
        assert!(poll_once(&mut f, &w).is_pending());
        assert_eq!(total(&counters), 1000);
        for i in [5, 600, 999] {
            assert!(handles[i].wake());
            assert!(poll_once(&mut f, &w).is_pending());
            assert_eq!(counters[i].get(), 2);
        }
        assert_eq!(total(&counters), 1003, "only woken children polled");
        handles[321].complete();
        let Poll::Ready(Some((index, value, rest))) = poll_once(&mut f, &w) else { panic!("not ready") };
        assert_eq!((index, value), (321, 321));
        assert_eq!(total(&counters), 1004);
        drop(f);
        assert_eq!(rest.len(), 999);
        assert_eq!(tracker.live(), 999);
        drop(rest);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0, "parent waker leaked");
    }

    /// The rest may be polled from another task (another waker) while a
    /// snapshot of woken children is still open: no child may be lost.
    fn rest_polled_with_another_waker_yields_pending_snapshot() {
        let (a, b) = (CountingWaker::new(), CountingWaker::new());
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut f = wait_any(children);
        assert!(poll_once(&mut f, &a).is_pending());
        for i in (0..100).step_by(10) {
            handles[i].complete();
        }
        let Poll::Ready(Some((first, _, mut rest))) = poll_once(&mut f, &a) else { panic!("not ready") };
        let mut got = vec![first];
        for _ in 0..20 {
            match rest.poll_next_indexed(&mut b.context()) {
                Poll::Ready(Some((i, _))) => got.push(i),
                Poll::Ready(None) => panic!("rest ended early"),
                Poll::Pending => {}
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..100).step_by(10).collect::<Vec<_>>());
        assert_eq!(total(&counters), 110);
        // Later wakes reach the new waker.
        let wakes = b.wakes();
        handles[55].complete();
        assert!(b.wakes() > wakes);
        let mut next = None;
        for _ in 0..2 {
            if let Poll::Ready(item) = rest.poll_next_indexed(&mut b.context()) {
                next = item;
                break;
            }
        }
        assert_eq!(next, Some((55, 55)));
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        let w = CountingWaker::new();
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Counter> = (0..65).map(|_| Counter::new()).collect();
        let mut f = wait_any(counters.iter().map(|c| Spinner::new(&stop, c)).collect::<Vec<_>>());
        assert_spinner_rounds(&counters, &w, 3, || assert!(poll_once(&mut f, &w).is_pending()));
    }

    fn cancel_after_every_poll_drops_every_child() {
        for k in 0..=6 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut f = wait_any((0..33).map(|i| YieldN::tracked(5 + i % 3, i, &polls, &tracker)).collect::<Vec<_>>());
            let mut rest: Option<AsCompleted<_>> = None;
            for _ in 0..k {
                if let Poll::Ready(r) = poll_once(&mut f, &w) {
                    rest = r.map(|(_, _, rest)| rest);
                    break;
                }
            }
            drop(f);
            assert_eq!(tracker.live(), rest.as_ref().map_or(0, AsCompleted::len), "k = {k}");
            drop(rest);
            assert_eq!(tracker.live(), 0, "k = {k}");
            assert_eq!(w.live_clones(), 0, "k = {k}: parent waker leaked");
        }
    }
}
