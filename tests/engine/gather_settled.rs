//! `gather_settled` and `Panicked`: every outcome in input order, panics
//! captured as values, never short-circuiting (SPEC §2).

use crate::common;

use awaitkit::{Panicked, gather_settled};
use common::*;
use futures::FutureExt;
use futures::future::{BoxFuture, LocalBoxFuture, join};
use std::future::{Ready, ready};
use std::rc::Rc;
use std::task::Poll;

fn ok_values<T: Clone>(out: &[Result<T, Panicked>]) -> Vec<Option<T>> {
    out.iter().map(|r| r.as_ref().ok().cloned()).collect()
}

matrix! {
    async fn empty_input_resolves_to_empty_vec() {
        let out = gather_settled(Vec::<Ready<u8>>::new()).await;
        assert!(out.is_empty());
    }

    async fn outputs_in_input_order_at_every_size() {
        for n in SIZES {
            let polls = Counter::new();
            let out = gather_settled((0..n).map(|i| YieldN::new((n - i) % 6, i, &polls))).await;
            assert_eq!(ok_values(&out), (0..n).map(Some).collect::<Vec<_>>(), "n = {n}");
            let wakes: usize = (0..n).map(|i| (n - i) % 6).sum();
            assert_eq!(polls.get(), wakes + n, "n = {n}: polls != wakes + N");
        }
    }

    async fn panics_are_captured_with_message_and_others_keep_running() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let mut handles = Vec::new();
        let mut children: Vec<BoxFuture<'static, usize>> = Vec::new();
        for i in 0..40 {
            match i % 10 {
                3 => children.push(panic_after(i % 4, "static message", tracker.token()).boxed()),
                7 => {
                    let token = tracker.token();
                    children.push(async move {
                        yield_now().await;
                        let _token = token;
                        panic!("formatted message {i}");
                    }.boxed());
                }
                9 => children.push(async { std::panic::panic_any(99u32) }.boxed()),
                _ => {
                    let (h, c) = parked(i, &polls, &tracker);
                    handles.push(h);
                    children.push(c.boxed());
                }
            }
        }
        let (out, ()) = join(gather_settled(children), async {
            // The parked children only finish after every panic happened.
            for _ in 0..5 {
                yield_now().await;
            }
            for h in handles.iter().rev() {
                assert!(h.complete());
                yield_now().await;
            }
        })
        .await;
        assert_eq!(out.len(), 40);
        for (i, r) in out.iter().enumerate() {
            match i % 10 {
                3 => assert_eq!(r.as_ref().unwrap_err().message(), Some("static message"), "child {i}"),
                7 => assert_eq!(r.as_ref().unwrap_err().message(), Some(format!("formatted message {i}").as_str())),
                9 => assert_eq!(r.as_ref().unwrap_err().message(), None),
                _ => assert_eq!(r.as_ref().ok(), Some(&i), "child {i}"),
            }
        }
        assert_eq!(polls.get(), 2 * 28, "parked children: first poll + one per wake");
        assert_eq!(tracker.live(), 0);
    }

    async fn panicked_value_api() {
        let mut out = gather_settled([
            async { std::panic::panic_any(7u8) }.boxed(),
            async { panic!("boom") }.boxed(),
            async { 5 }.boxed(),
        ])
        .await;
        assert_eq!(*out[2].as_ref().unwrap(), 5);
        let boom = out.remove(1).unwrap_err();
        assert_eq!(boom.message(), Some("boom"));
        assert_eq!(boom.to_string(), "future panicked: boom");
        assert_eq!(format!("{boom:?}"), "Panicked(\"boom\")");
        let as_error: &dyn std::error::Error = &boom;
        assert!(as_error.source().is_none());
        let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| boom.resume())).unwrap_err();
        assert_eq!(panic_message(&*resumed), "boom");
        let seven = out.remove(0).unwrap_err();
        assert_eq!(seven.message(), None);
        assert_eq!(seven.to_string(), "future panicked");
        assert_eq!(format!("{seven:?}"), "Panicked(\"<non-string payload>\")");
        assert_eq!(seven.into_payload().downcast_ref::<u8>(), Some(&7));
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        let out = gather_settled((0..40).map(|i| RemoteYield::new(30 + i % 3, i, &thread, &polls))).await;
        assert_eq!(ok_values(&out), (0..40).map(Some).collect::<Vec<_>>());
    }

    async fn pinned_children_never_move() {
        let polls = Counter::new();
        let out = gather_settled((0..70).map(|i| NoMove::new(YieldN::new(i % 11, i, &polls)))).await;
        assert_eq!(ok_values(&out), (0..70).map(|i| Some((i, i % 11 + 1))).collect::<Vec<_>>());
    }

    #[should_panic(expected = "`GatherSettled` polled after completion")]
    async fn polling_after_completion_panics() {
        let mut g = gather_settled([ready(1)]);
        assert_eq!((&mut g).await.len(), 1);
        let _ = (&mut g).await;
    }

    #[should_panic(expected = "`GatherSettled` polled after completion")]
    async fn polling_empty_after_completion_panics() {
        let mut g = gather_settled(Vec::<Ready<u8>>::new());
        assert!((&mut g).await.is_empty());
        let _ = (&mut g).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let rc = Rc::new(2);
        let children: Vec<LocalBoxFuture<'_, Rc<u8>>> = vec![
            async { yield_now().await; Rc::new(1) }.boxed_local(),
            async { let r = rc.clone(); yield_now().await; panic!("rc child {r}") }.boxed_local(),
            async { Rc::clone(&rc) }.boxed_local(),
        ];
        let out = gather_settled(children).await;
        assert_eq!(**out[0].as_ref().unwrap(), 1);
        assert_eq!(out[1].as_ref().unwrap_err().message(), Some("rc child 2"));
        assert_eq!(**out[2].as_ref().unwrap(), 2);
        drop(out);
        assert_eq!(Rc::strong_count(&rc), 1);
    }
}

guarded! {
    fn empty_input_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        let mut g = gather_settled(Vec::<Ready<u8>>::new());
        assert!(matches!(poll_once(&mut g, &w), Poll::Ready(v) if v.is_empty()));
    }

    fn panicking_child_is_dropped_at_once_and_others_are_not_polled_again() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(20, &tracker);
        let mut children: Vec<BoxFuture<'static, usize>> = children.into_iter().map(FutureExt::boxed).collect();
        children.insert(10, panic_after(1, "mid", tracker.token()).boxed());
        let mut g = gather_settled(children);
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(tracker.live(), 21);
        // The panicking child woke itself: the next poll polls only it.
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(tracker.live(), 20, "the panicked child is dropped when its panic is captured");
        assert_eq!(total(&counters), 20, "no other child polled");
        for (k, i) in shuffled(20, 9).into_iter().enumerate() {
            handles[i].complete();
            let r = poll_once(&mut g, &w);
            assert_eq!(counters[i].get(), 2);
            assert_eq!(r.is_ready(), k == 19);
            if let Poll::Ready(out) = r {
                let msgs: Vec<Option<&str>> = out.iter().map(|r| r.as_ref().err().and_then(Panicked::message)).collect();
                assert_eq!(msgs.iter().filter(|m| m.is_some()).count(), 1);
                assert_eq!(msgs[10], Some("mid"));
                let oks: Vec<usize> = out.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
                assert_eq!(oks, (0..20).collect::<Vec<_>>());
            }
        }
        assert_eq!(total(&counters), 40);
        assert_eq!(tracker.live(), 0);
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        let w = CountingWaker::new();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counters: Vec<Counter> = (0..65).map(|_| Counter::new()).collect();
        let mut g = gather_settled(counters.iter().map(|c| Spinner::new(&stop, c)).collect::<Vec<_>>());
        assert_spinner_rounds(&counters, &w, 3, || assert!(poll_once(&mut g, &w).is_pending()));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(poll_once(&mut g, &w).is_ready());
    }

    fn cancel_after_every_poll_drops_every_child() {
        for k in 0..=6 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mut children: Vec<BoxFuture<'static, usize>> =
                (0..40).map(|i| YieldN::tracked(i % 6, i, &polls, &tracker).boxed()).collect();
            children[4] = panic_after(2, "cancelled", tracker.token()).boxed();
            let mut g = gather_settled(children);
            for _ in 0..k {
                if poll_once(&mut g, &w).is_ready() {
                    break;
                }
            }
            drop(g);
            assert_eq!(tracker.live(), 0, "k = {k}");
            assert_eq!(w.live_clones(), 0, "k = {k}: parent waker leaked");
        }
    }
}
