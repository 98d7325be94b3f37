//! `wait` / `try_wait` / `ReturnWhen` / `WaitOutcome`: Python's
//! `asyncio.wait` (SPEC §1, §4).

use crate::common;

use awaitkit::{AsCompleted, ReturnWhen, WaitOutcome, as_completed, try_wait, wait};
use common::*;
use futures::future::{BoxFuture, LocalBoxFuture, join};
use futures::{FutureExt, StreamExt};
use std::future::{Future, Ready, pending, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Finishes a `WaitOutcome`'s pending half and returns `(index, output)`s.
async fn finish<F: Future>(pending: AsCompleted<F>) -> Vec<(usize, F::Output)> {
    pending.indexed().collect().await
}

matrix! {
    async fn empty_input_resolves_at_once_for_every_condition() {
        for when in [ReturnWhen::FirstCompleted, ReturnWhen::AllCompleted] {
            let out = wait(Vec::<Ready<u8>>::new(), when).await;
            assert!(out.done.is_empty(), "{when:?}");
            assert!(out.pending.is_empty(), "{when:?}");
        }
        for when in [ReturnWhen::FirstCompleted, ReturnWhen::FirstError, ReturnWhen::AllCompleted] {
            let out = try_wait(Vec::<Ready<Result<u8, ()>>>::new(), when).await;
            assert!(out.done.is_empty() && out.pending.is_empty(), "{when:?}");
            let out = AsCompleted::<Ready<Result<u8, ()>>>::new().try_wait(when).await;
            assert!(out.done.is_empty() && out.pending.is_empty(), "{when:?}");
        }
    }

    async fn first_completed_returns_every_child_that_finished_in_that_poll() {
        let children: Vec<BoxFuture<'static, u8>> =
            vec![ready(0).boxed(), pending().boxed(), ready(2).boxed(), pending().boxed(), ready(4).boxed()];
        let out = wait(children, ReturnWhen::FirstCompleted).await;
        assert_eq!(sorted(out.done), [(0, 0), (2, 2), (4, 4)]);
        assert_eq!(out.pending.len(), 2);
        let rest: Vec<usize> = out.pending.into_pending().into_iter().map(|(i, _)| i).collect();
        assert_eq!(rest, [1, 3]);
    }

    async fn first_completed_then_wait_again_on_pending() {
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(50, &tracker);
        let (out, ()) = join(wait(children, ReturnWhen::FirstCompleted), async {
            yield_now().await;
            handles[31].complete();
        })
        .await;
        assert_eq!(out.done, [(31, 31)]);
        assert_eq!(out.pending.len(), 49);
        let (again, ()) = join(out.pending.wait(ReturnWhen::FirstCompleted), async {
            yield_now().await;
            handles[7].complete();
            handles[8].complete();
        })
        .await;
        assert_eq!(sorted(again.done), [(7, 7), (8, 8)]);
        let (all, ()) = join(again.pending.wait(ReturnWhen::AllCompleted), async {
            for (i, h) in handles.iter().enumerate().rev() {
                if ![7, 8, 31].contains(&i) {
                    yield_now().await;
                    h.complete();
                }
            }
        })
        .await;
        assert_eq!(all.done.len(), 47);
        assert!(all.pending.is_empty());
        // Completion order = firing order (reverse).
        let indices: Vec<usize> = all.done.iter().map(|&(i, v)| { assert_eq!(i, v); i }).collect();
        assert_eq!(indices, (0..50).rev().filter(|i| ![7, 8, 31].contains(i)).collect::<Vec<_>>());
        assert_eq!(total(&counters), 100, "polls != wakes + N across the hand-overs");
        assert_eq!(tracker.live(), 0);
    }

    async fn all_completed_at_every_size() {
        for n in SIZES {
            let polls = Counter::new();
            let out = wait((0..n).map(|i| YieldN::new((i * 5) % 4, i, &polls)), ReturnWhen::AllCompleted).await;
            assert!(out.pending.is_empty());
            assert_eq!(out.done.len(), n);
            // Completion order: by number of yields.
            assert!(out.done.windows(2).all(|w| (w[0].0 * 5) % 4 <= (w[1].0 * 5) % 4), "n = {n}");
            assert!(out.done.iter().all(|&(i, v)| i == v));
            assert_eq!(sorted(out.done.iter().map(|&(i, _)| i).collect()), (0..n).collect::<Vec<_>>());
            assert_eq!(polls.get(), (0..n).map(|i| (i * 5) % 4).sum::<usize>() + n);
        }
    }

    async fn try_wait_first_error_stops_and_hands_back_runnable_pending() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut handles = Vec::new();
        let mut children = Vec::new();
        for i in 0..40 {
            let (h, c) = parked(if i == 25 { Err(format!("{i} failed")) } else { Ok(i) }, &polls, &tracker);
            handles.push(h);
            children.push(c);
        }
        let (out, ()) = join(try_wait(children, ReturnWhen::FirstError), async {
            yield_now().await;
            for i in [3, 9, 25, 30] {
                handles[i].complete();
                yield_now().await;
            }
        })
        .await;
        assert_eq!(out.done, [(3, Ok(3)), (9, Ok(9)), (25, Err("25 failed".to_owned()))]);
        assert_eq!(out.pending.len(), 37);
        // The pending ones still run (30 was already fired).
        let (rest, ()) = join(finish(out.pending), async {
            for (i, h) in handles.iter().enumerate() {
                if ![3, 9, 25, 30].contains(&i) {
                    h.complete();
                    yield_now().await;
                }
            }
        })
        .await;
        assert_eq!(sorted(rest.iter().map(|(i, _)| *i).collect()), (0..40).filter(|i| ![3, 9, 25].contains(i)).collect::<Vec<_>>());
        assert!(rest.iter().all(|(i, r)| r == &Ok(*i)));
        assert_eq!(polls.get(), 80);
        assert_eq!(tracker.live(), 0);
    }

    async fn try_wait_first_error_without_errors_waits_for_all() {
        let polls = Counter::new();
        let out = try_wait((0..33).map(|i| YieldN::new(i % 3, Ok::<_, ()>(i), &polls)), ReturnWhen::FirstError).await;
        assert_eq!(out.done.len(), 33);
        assert!(out.pending.is_empty());
    }

    async fn try_wait_other_conditions_do_not_stop_on_errors() {
        let children = (0..10).map(|i| YieldN::new(i, if i % 2 == 0 { Err(i) } else { Ok(i) }, &Counter::new()));
        let out = try_wait(children, ReturnWhen::AllCompleted).await;
        assert_eq!(out.done.len(), 10);
        assert_eq!(out.done.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        let children = (0..10).map(|i| YieldN::new(i, if i % 2 == 0 { Err(i) } else { Ok(i) }, &Counter::new()));
        let out = try_wait(children, ReturnWhen::FirstCompleted).await;
        assert_eq!(out.done, [(0, Err(0))]);
        assert_eq!(out.pending.len(), 9);
    }

    async fn pending_keeps_input_indices() {
        let children: Vec<BoxFuture<'static, char>> = vec![
            async { yield_now().await; 'a' }.boxed(),
            ready('b').boxed(),
            async { yield_now().await; yield_now().await; 'c' }.boxed(),
        ];
        let out = wait(children, ReturnWhen::FirstCompleted).await;
        assert_eq!(out.done, [(1, 'b')]);
        let mut pending = out.pending.indexed();
        assert_eq!(pending.next().await, Some((0, 'a')));
        assert_eq!(pending.next().await, Some((2, 'c')));
        assert_eq!(pending.next().await, None);
    }

    async fn dropping_pending_drops_children() {
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(40, &tracker);
        let (out, ()) = join(wait(children, ReturnWhen::FirstCompleted), async {
            yield_now().await;
            handles[0].complete();
        })
        .await;
        assert_eq!(tracker.live(), 39);
        let WaitOutcome { done, pending, .. } = out;
        assert_eq!(done, [(0, 0)]);
        drop(pending);
        assert_eq!(tracker.live(), 0);
        assert!(handles.iter().all(|h| !h.has_waker()));
    }

    async fn child_panic_propagates_and_rest_is_dropped() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut children: Vec<BoxFuture<'static, usize>> =
            (0..40).map(|i| YieldN::tracked(i % 3, i, &polls, &tracker).boxed()).collect();
        children[39] = panic_after(5, "wait child panicked", tracker.token()).boxed();
        let mut w = wait(children, ReturnWhen::AllCompleted);
        let err = AssertUnwindSafe(&mut w).catch_unwind().await.expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "wait child panicked");
        drop(w);
        assert_eq!(tracker.live(), 0);
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        let out = wait((0..40).map(|i| RemoteYield::new(25 + i % 4, i, &thread, &polls)), ReturnWhen::AllCompleted).await;
        assert_eq!(sorted(out.done), (0..40).map(|i| (i, i)).collect::<Vec<_>>());
        let out = try_wait((0..40).map(|i| RemoteYield::new(25 + i, if i == 3 { Err(i) } else { Ok(i) }, &thread, &polls)), ReturnWhen::FirstError).await;
        assert_eq!(out.done.last(), Some(&(3, Err(3))));
        assert_eq!(finish(out.pending).await.len(), 40 - out.done.len());
    }

    async fn sibling_in_same_task_runs_while_children_spin() {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let (out, ()) = join(wait((0..50).map(|_| Spinner::new(&stop, &polls)).collect::<Vec<_>>(), ReturnWhen::AllCompleted), async {
            stop.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(out.done.len(), 50);
        // The first snapshot is never split: 50 in the first poll, 50 after
        // the flag was set.
        assert_eq!(polls.get(), 100);
    }

    #[should_panic(expected = "`Wait` polled after completion")]
    async fn polling_after_completion_panics() {
        let mut w = wait([ready(1)], ReturnWhen::AllCompleted);
        assert_eq!((&mut w).await.done, [(0, 1)]);
        let _ = (&mut w).await;
    }

    #[should_panic(expected = "`Wait` polled after completion")]
    async fn polling_empty_after_completion_panics() {
        let mut w = try_wait(Vec::<Ready<Result<(), ()>>>::new(), ReturnWhen::FirstError);
        assert!((&mut w).await.done.is_empty());
        let _ = (&mut w).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let rc = Rc::new(1);
        let children: Vec<LocalBoxFuture<'_, Result<Rc<u8>, Rc<u8>>>> = vec![
            async { yield_now().await; Ok(Rc::new(0)) }.boxed_local(),
            async { yield_now().await; yield_now().await; Err(rc.clone()) }.boxed_local(),
            async { for _ in 0..5 { yield_now().await; } Ok(Rc::new(2)) }.boxed_local(),
        ];
        let out = try_wait(children, ReturnWhen::FirstError).await;
        assert_eq!(out.done.len(), 2);
        assert_eq!(out.done[1].0, 1);
        let rest = finish(out.pending).await;
        assert_eq!(*rest[0].1.as_ref().unwrap().as_ref(), 2);
        drop(out.done);
        assert_eq!(Rc::strong_count(&rc), 1);
    }
}

#[test]
#[should_panic(expected = "try_wait")]
fn wait_with_first_error_panics_pointing_to_try_wait() {
    let _never_built = wait([ready(Ok::<u8, u8>(1))], ReturnWhen::FirstError);
}

#[test]
#[should_panic(expected = "try_wait")]
fn as_completed_wait_with_first_error_panics_pointing_to_try_wait() {
    let _never_built = as_completed([ready(1)]).wait(ReturnWhen::FirstError);
}

#[test]
#[should_panic(expected = "try_wait")]
fn wait_with_first_error_panics_even_on_empty_input() {
    let _never_built = wait(Vec::<Ready<u8>>::new(), ReturnWhen::FirstError);
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut f = wait(Vec::<Ready<u8>>::new(), ReturnWhen::AllCompleted);
        assert!(matches!(poll_once(&mut f, &w), Poll::Ready(o) if o.done.is_empty() && o.pending.is_empty()));
        let mut f = try_wait(Vec::<Ready<Result<u8, u8>>>::new(), ReturnWhen::FirstError);
        assert!(poll_once(&mut f, &w).is_ready());
    }

    fn first_completed_returns_exactly_the_children_woken_before_the_poll() {
        let w = CountingWaker::new();
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut f = wait(children, ReturnWhen::FirstCompleted);
        assert!(poll_once(&mut f, &w).is_pending());
        for i in [3, 17, 40, 99] {
            handles[i].complete();
        }
        let Poll::Ready(out) = poll_once(&mut f, &w) else { panic!("not ready") };
        assert_eq!(sorted(out.done), [(3, 3), (17, 17), (40, 40), (99, 99)]);
        assert_eq!(out.pending.len(), 96);
        assert_eq!(total(&counters), 104, "only the four woken children polled again");
    }

    /// With `FirstError`, children woken in the same poll after the `Err` are
    /// not polled; they are handed back and must still complete (their
    /// wakes were already consumed).
    fn first_error_hands_back_children_woken_in_the_same_poll() {
        let w = CountingWaker::new();
        let tracker = Tracker::new();
        let mut handles = Vec::new();
        let mut counters = Vec::new();
        let mut children = Vec::new();
        for i in 0..10 {
            let polls = Counter::new();
            let (h, c) = parked(if i == 4 { Err(i) } else { Ok(i) }, &polls, &tracker);
            handles.push(h);
            counters.push(polls);
            children.push(c);
        }
        let mut f = try_wait(children, ReturnWhen::FirstError);
        assert!(poll_once(&mut f, &w).is_pending());
        for h in &handles {
            h.complete();
        }
        let Poll::Ready(out) = poll_once(&mut f, &w) else { panic!("not ready") };
        assert_eq!(out.done.last(), Some(&(4, Err(4))), "stops at the first Err");
        assert!(out.done[..out.done.len() - 1].iter().all(|(i, r)| r == &Ok(*i)));
        let done = out.done.len();
        assert_eq!(out.pending.len(), 10 - done);
        // No new wakes: the hand-back must still poll them.
        let mut rest = out.pending.try_wait(ReturnWhen::AllCompleted);
        let b = CountingWaker::new();
        let mut result = None;
        for _ in 0..3 {
            if let Poll::Ready(r) = poll_once(&mut rest, &b) {
                result = Some(r);
                break;
            }
        }
        let rest = result.expect("children woken before the hand-over were lost");
        assert_eq!(rest.done.len(), 10 - done);
        assert!(rest.done.iter().all(|(i, r)| r == &Ok(*i)));
        assert_eq!(total(&counters), 20);
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        let w = CountingWaker::new();
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Counter> = (0..65).map(|_| Counter::new()).collect();
        let mut f = wait(counters.iter().map(|c| Spinner::new(&stop, c)).collect::<Vec<_>>(), ReturnWhen::AllCompleted);
        assert_spinner_rounds(&counters, &w, 3, || assert!(poll_once(&mut f, &w).is_pending()));
        stop.store(true, Ordering::SeqCst);
        assert!(poll_once(&mut f, &w).is_ready());
    }

    fn cancel_after_every_poll_drops_every_child() {
        for when in [ReturnWhen::FirstCompleted, ReturnWhen::FirstError, ReturnWhen::AllCompleted] {
            for k in 0..=6 {
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let polls = Counter::new();
                let mut f = try_wait(
                    (0..33).map(|i| YieldN::tracked(2 + i % 4, if i == 20 { Err(tracker.token()) } else { Ok(tracker.token()) }, &polls, &tracker)).collect::<Vec<_>>(),
                    when,
                );
                let mut out: Option<WaitOutcome<_>> = None;
                for _ in 0..k {
                    if let Poll::Ready(o) = poll_once(&mut f, &w) {
                        out = Some(o);
                        break;
                    }
                }
                drop(f);
                drop(out);
                assert_eq!(tracker.live(), 0, "{when:?}, k = {k}");
                assert_eq!(w.live_clones(), 0, "{when:?}, k = {k}: parent waker leaked");
            }
        }
    }
}
