//! `try_gather`: all `Ok` values in input order, or the first `Err` with
//! every other child already dropped (SPEC §2), under every executor.

use crate::common;

use awaitkit::try_gather;
use common::*;
use futures::FutureExt;
use futures::future::{BoxFuture, join};
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::Poll;

pub(crate) type Out = Result<(usize, Token), String>;

/// `n` parked children; child `i` finishes with `Ok((i, token))`, or with
/// `Err` when `i == fail`. The `Ok` values hold tokens too, so stored outputs
/// count as live.
pub(crate) fn fallible_set(
    n: usize,
    fail: usize,
    tracker: &Tracker,
) -> (Vec<ParkHandle>, Vec<Counter>, Vec<Parked<Out>>) {
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    let mut children = Vec::new();
    for i in 0..n {
        let polls = Counter::new();
        let value = if i == fail {
            Err(format!("child {i} failed"))
        } else {
            Ok((i, tracker.token()))
        };
        let (h, c) = parked(value, &polls, tracker);
        handles.push(h);
        counters.push(polls);
        children.push(c);
    }
    (handles, counters, children)
}

matrix! {
    async fn empty_input_resolves_to_ok_empty_vec() {
        let out: Result<Vec<u8>, ()> = try_gather(Vec::<Ready<Result<u8, ()>>>::new()).await;
        assert_eq!(out, Ok(vec![]));
    }

    async fn all_ok_in_input_order_at_every_size() {
        for n in SIZES {
            let polls = Counter::new();
            let children = (0..n).map(|i| YieldN::new((n - i) % 5, Ok::<_, String>(i), &polls));
            assert_eq!(try_gather(children).await, Ok((0..n).collect::<Vec<_>>()), "n = {n}");
            let wakes: usize = (0..n).map(|i| (n - i) % 5).sum();
            assert_eq!(polls.get(), wakes + n, "n = {n}");
        }
    }

    async fn all_ok_100k_lean() {
        let n = 100_000;
        let polls = Counter::new();
        let out = try_gather((0..n).map(|i| YieldN::new(i % 2, Ok::<u32, ()>(i as u32), &polls))).await.unwrap();
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as u32));
        assert_eq!(polls.get(), n + n / 2);
    }

    async fn fail_fast_does_not_wait_for_pending_children() {
        // 999 children that never finish: only fail-fast can end this.
        for n in [40, 1000] {
            let tracker = Tracker::new();
            let polls = Counter::new();
            let mut handles = Vec::new();
            let mut children: Vec<BoxFuture<'static, Result<usize, String>>> = Vec::new();
            for i in 0..n - 1 {
                let (h, c) = parked(Ok(i), &polls, &tracker);
                handles.push(h);
                children.push(c.boxed());
            }
            let token = tracker.token();
            children.insert(n / 2, async move {
                yield_now().await;
                yield_now().await;
                drop(token);
                Err("late failure".to_owned())
            }.boxed());
            assert_eq!(try_gather(children).await, Err("late failure".to_owned()), "n = {n}");
            assert_eq!(tracker.live(), 0, "n = {n}");
            assert!(handles.iter().all(|h| !h.has_waker()), "n = {n}: a child outlived the error");
        }
    }

    async fn first_error_in_completion_order_wins() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut handles = Vec::new();
        let mut children = Vec::new();
        for i in 0..33 {
            let (h, c) = parked(if i % 10 == 3 { Err(i) } else { Ok(i) }, &polls, &tracker);
            handles.push(h);
            children.push(c);
        }
        let (out, ()) = join(try_gather(children), async {
            yield_now().await;
            // 23 fails first, then 3 and 13 would.
            for i in [0, 1, 23, 3, 13] {
                handles[i].complete();
                yield_now().await;
            }
        })
        .await;
        assert_eq!(out, Err(23));
        assert_eq!(tracker.live(), 0);
    }

    async fn child_panic_propagates_and_rest_is_dropped() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, Result<usize, ()>>> =
            (0..40).map(|i| YieldN::tracked(5, Ok(i), &polls, &tracker).boxed()).collect();
        children[9] = panic_after(2, "try child panicked", tracker.token()).map(Ok).boxed();
        let mut g = try_gather(children);
        let err = AssertUnwindSafe(&mut g).catch_unwind().await.expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "try child panicked");
        drop(g);
        assert_eq!(tracker.live(), 0);
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        let children = (0..50).map(|i| RemoteYield::new(40 + i % 7, Ok::<_, ()>(i), &thread, &polls));
        assert_eq!(try_gather(children).await, Ok((0..50).collect::<Vec<_>>()));
    }

    #[should_panic(expected = "`TryGather` polled after completion")]
    async fn polling_after_ok_panics() {
        let mut g = try_gather([ready(Ok::<u8, ()>(1))]);
        assert_eq!((&mut g).await, Ok(vec![1]));
        let _ = (&mut g).await;
    }

    #[should_panic(expected = "`TryGather` polled after completion")]
    async fn polling_after_err_panics() {
        let mut g = try_gather([ready(Ok::<u8, u8>(1)), ready(Err(2))]);
        assert_eq!((&mut g).await, Err(2));
        let _ = (&mut g).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let shared = Rc::new(1);
        let children = (0..10).map(|i| {
            let shared = shared.clone();
            async move {
                yield_now().await;
                if i == 7 { Err(Rc::clone(&shared)) } else { Ok(*shared + i) }
            }
        });
        let err = try_gather(children).await.unwrap_err();
        assert_eq!(*err, 1);
        drop(err);
        assert_eq!(Rc::strong_count(&shared), 1);
    }
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut g = try_gather(Vec::<Ready<Result<u8, ()>>>::new());
        assert_eq!(poll_once(&mut g, &w), Poll::Ready(Ok(vec![])));
    }

    /// SPEC §2: "the first `Err` is returned from the very poll in which it
    /// appears, after every other unfinished child has been dropped".
    fn fail_fast_error_returned_in_same_poll_with_everything_dropped() {
        for n in [40, 1000] {
            for (seed, fail) in [(1, 0), (2, n / 2), (3, n - 1)] {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let (handles, counters, children) = fallible_set(n, fail, &tracker);
                let mut g = try_gather(children);
                assert!(poll_once(&mut g, &w).is_pending());
                assert_eq!(total(&counters), n);
                // Half of the others finish with `Ok` first (their outputs are kept).
                let order: Vec<usize> = shuffled(n, seed).into_iter().filter(|&i| i != fail).take(n / 2).collect();
                for &i in &order {
                    handles[i].complete();
                    assert!(poll_once(&mut g, &w).is_pending(), "n = {n}: finished early");
                    assert_eq!(counters[i].get(), 2);
                }
                // n children + (n - 1) `Ok` values, minus the children that finished
                // (their values are stored, still alive).
                assert_eq!(tracker.live(), 2 * n - 1 - order.len(), "n = {n}: children + outputs");
                handles[fail].complete();
                let r = poll_once(&mut g, &w);
                // Checked while the `TryGather` is still alive.
                let live = tracker.live();
                assert_eq!(r.map(|r| r.map(|v| v.len())), Poll::Ready(Err(format!("child {fail} failed"))), "n = {n}");
                assert_eq!(live, 0, "n = {n}, fail = {fail}: children or outputs alive when the Err was returned");
                assert!(handles.iter().all(|h| !h.has_waker()));
                assert_eq!(total(&counters), n + order.len() + 1, "n = {n}: polls != wakes + N");
                drop(g);
                assert_eq!(w.live_clones(), 0, "parent waker leaked");
            }
        }
    }

    fn fail_fast_on_the_first_poll_drops_unpolled_children() {
        for n in [40, 1000] {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut children: Vec<BoxFuture<'static, Result<(), usize>>> = Vec::new();
            for i in 0..n {
                if i == 5 {
                    children.push(ready(Err(5)).boxed());
                } else {
                    children.push(YieldN::tracked(3, Ok(()), &polls, &tracker).boxed());
                }
            }
            let mut g = try_gather(children);
            let r = poll_once(&mut g, &w);
            let live = tracker.live();
            assert_eq!(r, Poll::Ready(Err(5)));
            assert_eq!(live, 0, "n = {n}");
        }
    }

    fn several_errors_in_one_poll_return_one_and_drop_the_rest() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, _counters, children) = {
            let mut hs = Vec::new();
            let mut cs = Vec::new();
            let mut ps = Vec::new();
            for i in 0..100 {
                let polls = Counter::new();
                let (h, c) = parked(if i % 2 == 0 { Err(i) } else { Ok(tracker.token()) }, &polls, &tracker);
                hs.push(h);
                cs.push(c);
                ps.push(polls);
            }
            (hs, ps, cs)
        };
        let mut g = try_gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        for i in [10, 20, 30, 11] {
            handles[i].complete();
        }
        match poll_once(&mut g, &w) {
            Poll::Ready(Err(i)) => assert!([10, 20, 30].contains(&i), "error {i} was not fired"),
            other => panic!("expected an error, got {:?}", other.map(|r| r.map(|v| v.len()))),
        }
        assert_eq!(tracker.live(), 0);
    }

    fn cancel_after_every_poll_drops_every_child() {
        for n in [1, 33, 65] {
            for k in 0..=6 {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let polls = Counter::new();
                let mut g = try_gather((0..n).map(|i| YieldN::tracked(i % 6, Ok::<_, ()>(tracker.token()), &polls, &tracker)).collect::<Vec<_>>());
                for _ in 0..k {
                    if poll_once(&mut g, &w).is_ready() {
                        break;
                    }
                }
                drop(g);
                assert_eq!(tracker.live(), 0, "n = {n}, k = {k}");
                assert_eq!(w.live_clones(), 0, "n = {n}, k = {k}: parent waker leaked");
            }
        }
    }

    fn no_memory_leak_on_fail_fast_with_outstanding_wakers() {
        assert_no_leak("try_gather failing while children's wakers are parked", || {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (handles, _counters, children) = fallible_set(300, 123, &tracker);
            let mut g = try_gather(children);
            assert!(poll_once(&mut g, &w).is_pending());
            let stale: Vec<_> = handles.iter().filter_map(ParkHandle::waker).collect();
            handles[123].complete();
            assert!(poll_once(&mut g, &w).is_ready());
            drop(g);
            for s in stale {
                s.wake();
            }
            drop(handles);
        });
    }
}
