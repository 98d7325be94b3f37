//! `task_group` / `task_group_local`: Python 3.11's `asyncio.TaskGroup`
//! (SPEC §10) — tasks added while the group runs, results by handle or in
//! completion order, fail-fast (or keep-going) errors, cancellation by drop.

use crate::common;

use awaitkit::{TaskHandle, as_completed, task_group, task_group_local, try_gather};
use common::*;
use futures::StreamExt;
use futures::channel::oneshot;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls an `Unpin` future once with a no-op waker.
fn poll_noop<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A task that holds a token and never finishes.
fn forever(tracker: &Tracker) -> impl Future<Output = Result<(), &'static str>> + Send + use<> {
    let token = tracker.token();
    async move {
        let _token = token;
        futures::future::pending::<()>().await;
        Ok(())
    }
}

matrix! {
    /// asyncio's `create_task` pattern with real timers: two 100 ms tasks
    /// while the body does 100 ms of other work take about 100 ms, not 300.
    async fn seed_background_work_takes_the_longest_not_the_sum() {
        async fn long_running_task(n: u64) -> Result<u64, std::io::Error> {
            futures_timer::Delay::new(Duration::from_millis(100)).await;
            Ok(n * 10)
        }
        let start = Instant::now();
        let (r1, r2) = task_group(|tg| async move {
            let task1 = tg.spawn(long_running_task(1));
            let task2 = tg.spawn(long_running_task(2));
            futures_timer::Delay::new(Duration::from_millis(100)).await; // other work
            Ok((task1.await??, task2.await??))
        })
        .await
        .unwrap();
        let took = start.elapsed();
        assert_eq!((r1, r2), (10, 20));
        assert!(took >= Duration::from_millis(100), "{took:?}");
        // Sequential would be 300 ms; leave room for a loaded machine.
        assert!(took < Duration::from_millis(295), "took {took:?}: not concurrent");
    }

    async fn an_empty_group_resolves_to_the_body_output() {
        assert_eq!(task_group(|_| async { Ok::<_, ()>(7) }).await, Ok(7));
    }

    async fn tasks_added_while_running_from_the_body_and_from_tasks() {
        let polls = Counter::new();
        let out = task_group(|tg| {
            // Before the body first runs.
            let early = tg.spawn(async { Ok::<_, ()>(1) });
            async move {
                let first = early.await.unwrap()?;
                // After the body already waited once.
                YieldN::new(3, (), &polls).await;
                let second = tg.spawn(async { Ok(2) });
                // A task that spawns two more, and one of those spawns again.
                let scope = tg.clone();
                let nested = tg.spawn(async move {
                    let inner = scope.clone();
                    let a = scope.spawn(async move {
                        let deeper = inner.spawn(async { Ok(40) });
                        Ok(deeper.await.unwrap()? + 1)
                    });
                    let b = scope.spawn(async { Ok(100) });
                    Ok(a.await.unwrap()? + b.await.unwrap()?)
                });
                Ok(first + second.await.unwrap()? + nested.await.unwrap()?)
            }
        })
        .await;
        assert_eq!(out, Ok(1 + 2 + 141));
    }

    async fn results_by_handle_and_in_completion_order() {
        let tracker = Tracker::new();
        let (parks, counters, children) = parked_set(4, &tracker);
        let parks_for_body = parks.clone();
        let out = task_group(|tg| async move {
            let handles: Vec<TaskHandle<usize, ()>> = children
                .into_iter()
                .map(|c| tg.spawn(async move { Ok(c.await * 10) }))
                .collect();
            // Finish them in the order 2, 0, 3, 1, each after the previous
            // result arrived.
            let mut done = as_completed(handles).indexed();
            let mut order = Vec::new();
            for i in [2, 0, 3, 1] {
                yield_now().await; // every task has been polled and parked
                assert!(parks_for_body[i].complete());
                let (index, value) = done.next().await.unwrap();
                order.push((index, value.unwrap()?));
            }
            assert!(done.next().await.is_none());
            Ok(order)
        })
        .await;
        assert_eq!(out, Ok(vec![(2, 20), (0, 0), (3, 30), (1, 10)]));
        assert_eq!(tracker.live(), 0);
        // Polled once to start and once after their one wake.
        assert_eq!(total(&counters), 8);
        drop(parks);
    }

    async fn all_results_in_spawn_order_with_try_gather_over_handles() {
        let out = task_group(|tg| async move {
            let handles: Vec<_> = (0..50u64)
                .map(|i| {
                    tg.spawn(async move {
                        YieldN::new((i % 7) as usize, (), &Counter::new()).await;
                        Ok::<_, String>(i * i)
                    })
                })
                .collect();
            try_gather(handles.into_iter().map(|h| async { h.await.unwrap() })).await
        })
        .await;
        assert_eq!(out, Ok((0..50u64).map(|i| i * i).collect::<Vec<_>>()));
    }

    /// Fail-fast: every other task, and the body, are dropped before the
    /// group returns the error.
    async fn the_first_error_cancels_every_other_task_and_the_body() {
        let tracker = Tracker::new();
        let body_token = tracker.token();
        let t = tracker.clone();
        let out: Result<(), &str> = task_group(|tg| async move {
            let _body = body_token;
            for _ in 0..10 {
                tg.spawn(forever(&t));
            }
            tg.spawn(async {
                YieldN::new(2, (), &Counter::new()).await;
                Err::<(), _>("boom")
            });
            let also_forever = tg.spawn(forever(&t));
            also_forever.await.unwrap()?;
            unreachable!("the body is cancelled");
        })
        .await;
        assert_eq!(out, Err("boom"));
        assert_eq!(tracker.created(), 12);
        assert_eq!(tracker.live(), 0, "everything dropped before the group returned");
    }

    async fn the_bodys_error_cancels_every_task() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let out: Result<(), &str> = task_group(|tg| async move {
            tg.spawn(forever(&t));
            tg.spawn(forever(&t));
            yield_now().await;
            Err("body failed")
        })
        .await;
        assert_eq!(out, Err("body failed"));
        assert_eq!(tracker.live(), 0);
    }

    async fn keep_going_hands_errors_to_their_handles() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let out = task_group(|tg| async move {
            let slow = tg.spawn(async move {
                let _token = t.token();
                YieldN::new(5, (), &Counter::new()).await;
                Ok::<_, String>("slow")
            });
            let bad = tg.spawn(async { Err::<&str, _>("bad".to_owned()) });
            let bad = bad.await;
            assert_eq!(bad, Ok(Err("bad".to_owned())));
            // The error cancelled nothing.
            slow.await.unwrap()
        })
        .keep_going()
        .await;
        assert_eq!(out, Ok("slow"));
        assert_eq!((tracker.created(), tracker.live()), (1, 0));
    }

    async fn keep_going_fails_with_a_detached_tasks_error_after_everything_finished() {
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let out: Result<u8, &str> = task_group(|tg| async move {
            drop(tg.spawn(async { Err::<(), _>("first") }));
            drop(tg.spawn(async {
                yield_now().await;
                Err::<(), _>("second")
            }));
            tg.spawn(async move {
                YieldN::new(10, (), &Counter::new()).await;
                f.store(true, Ordering::SeqCst);
                Ok(())
            });
            Ok(1)
        })
        .keep_going()
        .await;
        assert_eq!(out, Err("first"));
        assert!(finished.load(Ordering::SeqCst), "the other task was not cancelled");
    }

    /// A dropped handle detaches its task: it still runs to the end.
    async fn detached_tasks_keep_running() {
        let (tx, rx) = oneshot::channel();
        let out = task_group(|tg| async move {
            drop(tg.spawn(async move {
                YieldN::new(3, (), &Counter::new()).await;
                tx.send(5).unwrap();
                Ok::<_, ()>(())
            }));
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert_eq!(rx.await, Ok(5));
    }

    async fn the_group_waits_for_every_task_after_the_body_returned() {
        let counter = Counter::new();
        let c = counter.clone();
        task_group(|tg| async move {
            for n in 0..20 {
                let c = c.clone();
                tg.spawn(async move {
                    YieldN::new(n, (), &Counter::new()).await;
                    c.inc();
                    Ok::<_, ()>(())
                });
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(counter.get(), 20);
    }

    /// Tasks may borrow from outside the group.
    async fn tasks_borrow_from_outside() {
        let names = vec!["ada".to_owned(), "grace".to_owned()];
        let mut lengths = vec![0; 2];
        {
            let (names, lengths) = (&names, &mut lengths);
            task_group(|tg| async move {
                let handles: Vec<_> = names
                    .iter()
                    .map(|n| tg.spawn(async move { Ok::<_, ()>(n.len()) }))
                    .collect();
                for (slot, h) in lengths.iter_mut().zip(handles) {
                    *slot = h.await.unwrap()?;
                }
                Ok(())
            })
            .await
            .unwrap();
        }
        assert_eq!(lengths, [3, 5]);
    }

    /// A task that keeps waking itself makes the group yield: the body (and
    /// sibling tasks of the executor) still run.
    async fn a_self_waking_task_does_not_starve_the_body() {
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Counter::new();
        let (s, sp) = (stop.clone(), spins.clone());
        let out = task_group(|tg| async move {
            tg.spawn(async move {
                Spinner::new(&s, &sp).await;
                Ok::<_, ()>(())
            });
            for _ in 0..5 {
                yield_now().await;
            }
            stop.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!(out, Ok(()));
        assert!(spins.get() >= 5 && spins.get() < 50, "{} spins", spins.get());
    }

    /// The scope is `Send`: a thread outside the group spawns into it while
    /// the body waits; the wake comes from that thread.
    async fn spawning_from_another_thread_wakes_the_group() {
        let out = task_group(|tg| async move {
            let (tx, rx) = oneshot::channel::<TaskHandle<u32, ()>>();
            let scope = tg.clone();
            let thread = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(scope.spawn(async { Ok(9) })).unwrap();
            });
            let handle = rx.await.unwrap();
            thread.join().unwrap();
            handle.await.unwrap()
        })
        .await;
        assert_eq!(out, Ok(9));
    }

    async fn many_tasks_spawned_one_by_one() {
        let out = task_group(|tg| async move {
            let mut done = awaitkit::AsCompleted::new();
            for i in 0..2000u64 {
                done.push(tg.spawn(async move { Ok::<_, ()>(i) }));
                if i % 100 == 0 {
                    yield_now().await;
                }
            }
            let mut sum = 0;
            while let Some(v) = done.next().await {
                sum += v.unwrap()?;
            }
            Ok(sum)
        })
        .await;
        assert_eq!(out, Ok((0..2000).sum()));
    }
}

matrix_local! {
    async fn an_empty_local_group_resolves_to_the_body_output() {
        assert_eq!(task_group_local(|_| async { Ok::<_, ()>("x") }).await, Ok("x"));
    }

    async fn local_tasks_may_hold_rc() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let out = task_group_local(|tg| async move {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let l = l.clone();
                    tg.spawn(async move {
                        YieldN::new(3 - i, (), &Counter::new()).await;
                        l.borrow_mut().push(i);
                        Ok::<_, ()>(Rc::new(i))
                    })
                })
                .collect();
            let mut sum = 0;
            for h in handles {
                sum += *h.await.unwrap()?;
            }
            Ok(sum)
        })
        .await;
        assert_eq!(out, Ok(3));
        assert_eq!(*log.borrow(), [2, 1, 0]);
    }

    async fn local_first_error_cancels_the_rest() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let out: Result<(), &str> = task_group_local(|tg| async move {
            let _rc = std::rc::Rc::new(());
            tg.spawn(forever(&t));
            tg.spawn(async { Err::<(), _>("local boom") });
            futures::future::pending::<()>().await;
            Ok(())
        })
        .await;
        assert_eq!(out, Err("local boom"));
        assert_eq!(tracker.live(), 0);
    }
}

#[cfg(feature = "test-util")]
mod manual_clock {
    use super::*;
    use awaitkit::Timer;
    use awaitkit::time::ManualClock;

    const SEC: Duration = Duration::from_secs(1);

    matrix! {
        /// Background work (asyncio's `create_task`) on the manual clock: two 1 s tasks and
        /// 1 s of other work finish after one advance of 1 s (sequential
        /// would need three, and hang).
        async fn seed_background_work_needs_one_second_not_three() {
            let clock = ManualClock::new();
            let advance = advance_from_thread(&clock, 3, SEC);
            let c = clock.clone();
            let long_running_task = move |n: u64| {
                let sleep = c.sleep_until(c.now() + SEC);
                async move {
                    sleep.await;
                    Ok::<_, std::io::Error>(n * 10)
                }
            };
            let other = clock.sleep_until(clock.now() + SEC);
            let out = task_group(|tg| async move {
                let task1 = tg.spawn(long_running_task(1));
                let task2 = tg.spawn(long_running_task(2));
                other.await; // do other work
                Ok((task1.await??, task2.await??))
            })
            .await
            .unwrap();
            advance.join().unwrap();
            assert_eq!(out, (10, 20));
            assert_eq!(clock.elapsed(), SEC);
        }
    }
}

guarded! {
    fn an_empty_group_completes_on_the_first_poll() {
        let mut group = task_group(|_| async { Ok::<_, ()>(()) });
        assert!(group.is_empty());
        assert_eq!(poll_noop(&mut group), Poll::Ready(Ok(())));
    }

    fn polling_after_completion_panics() {
        let mut group = task_group(|_| async { Ok::<_, ()>(()) });
        assert!(poll_noop(&mut group).is_ready());
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut group))).unwrap_err();
        assert_eq!(panic_message(&*err), "`TaskGroup` polled after completion");
    }

    /// Dropping the group after any number of polls drops the body and every
    /// task, queued or running, synchronously.
    fn dropping_the_group_at_any_point_drops_everything() {
        for stop_after in 0..12 {
            let tracker = Tracker::new();
            let (parks, _counters, children) = parked_set(6, &tracker);
            let mut children = children.into_iter();
            let body_token = tracker.token();
            let t = tracker.clone();
            let mut group = task_group(move |tg| {
                // Two queued before the body runs.
                for _ in 0..2 {
                    let child = children.next().unwrap();
                    tg.spawn(async move { Ok(child.await) });
                }
                async move {
                    let _body = body_token;
                    for child in children {
                        let scope = tg.clone();
                        let t = t.clone();
                        // A task that spawns another one.
                        tg.spawn(async move {
                            let _token = t.token();
                            yield_now().await;
                            let h = scope.spawn(async move { Ok(child.await) });
                            h.await.unwrap()
                        });
                        yield_now().await;
                    }
                    futures::future::pending::<()>().await;
                    Ok::<_, ()>(())
                }
            });
            for step in 0..stop_after {
                assert!(poll_noop(&mut group).is_pending());
                // Let some of the parked children finish along the way.
                if step % 3 == 1 {
                    parks[step % 6].complete();
                }
            }
            assert!(tracker.live() > 0);
            drop(group);
            assert_eq!(tracker.live(), 0, "after {stop_after} polls");
        }
    }

    /// A panicking task propagates out of the group's poll; the others stay
    /// alive until the group is dropped, and the group refuses further polls.
    fn a_panicking_task_propagates_and_the_rest_drop_with_the_group() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let token = tracker.token();
        let mut group = task_group(move |tg| async move {
            tg.spawn(forever(&t));
            tg.spawn(forever(&t));
            tg.spawn(async move {
                panic_after(2, "task panicked", token).await;
                Ok(())
            });
            futures::future::pending::<()>().await;
            Ok(())
        });
        let err = loop {
            match catch_unwind(AssertUnwindSafe(|| poll_noop(&mut group))) {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(out)) => panic!("finished: {out:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(panic_message(&*err), "task panicked");
        assert_eq!(tracker.live(), 2, "the panicking task's token unwound; the others live");
        let again = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut group))).unwrap_err();
        assert_eq!(
            panic_message(&*again),
            "`TaskGroup` polled after a panic in one of its futures"
        );
        drop(group);
        assert_eq!(tracker.live(), 0);
    }

    fn a_panicking_body_propagates() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let mut group = task_group(move |tg| async move {
            tg.spawn(forever(&t));
            yield_now().await;
            panic!("body panicked");
            #[allow(unreachable_code)]
            Ok::<_, &str>(())
        });
        assert!(poll_noop(&mut group).is_pending());
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut group))).unwrap_err();
        assert_eq!(panic_message(&*err), "body panicked");
        assert_eq!(tracker.live(), 1);
        drop(group);
        assert_eq!(tracker.live(), 0);
    }

    /// SPEC §1.3: each task is polled once to start and once per wake; the
    /// body only when its own waker fired.
    fn only_woken_tasks_and_the_body_are_polled() {
        for n in [1, 33, 100] {
            let tracker = Tracker::new();
            let (parks, counters, children) = parked_set(n, &tracker);
            let body_polls = Counter::new();
            let bp = body_polls.clone();
            let (tx, rx) = oneshot::channel::<()>();
            let mut rx = Some(rx);
            let mut group = task_group(move |tg| {
                for c in children {
                    tg.spawn(async move { Ok::<_, ()>(c.await) });
                }
                futures::future::poll_fn(move |cx| {
                    bp.inc();
                    match Pin::new(rx.as_mut().unwrap()).poll(cx) {
                        Poll::Ready(_) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                })
            });
            let waker = CountingWaker::new();
            assert!(poll_once(&mut group, &waker).is_pending());
            assert_eq!(group.len(), n);
            assert_eq!(total(&counters), n);
            assert_eq!(body_polls.get(), 1);
            // Spurious wakes of every other child, then completions in a
            // shuffled order; the group is polled after each.
            for (i, park) in parks.iter().enumerate().step_by(2) {
                assert!(park.wake(), "child {i} parked a waker");
                assert!(poll_once(&mut group, &waker).is_pending());
            }
            let spurious = n.div_ceil(2);
            assert_eq!(total(&counters), n + spurious);
            for i in shuffled(n, n as u64) {
                parks[i].complete();
                assert!(poll_once(&mut group, &waker).is_pending());
            }
            assert_eq!(total(&counters), n + spurious + n, "polls = wakes + n");
            assert_eq!(body_polls.get(), 1, "the body was never woken");
            assert!(group.is_empty());
            tx.send(()).unwrap();
            assert_eq!(poll_once(&mut group, &waker), Poll::Ready(Ok(())));
            assert_eq!(body_polls.get(), 2);
            assert_eq!(tracker.live(), 0);
        }
    }

    /// SPEC §1.4: one poll polls each task at most once; a self-waking task
    /// makes the group return `Pending` after waking its own task.
    fn one_poll_polls_each_task_at_most_once() {
        let polls = Counter::new();
        let p = polls.clone();
        let mut group = task_group(move |tg| {
            for _ in 0..10 {
                let p = p.clone();
                tg.spawn(async move {
                    YieldN::new(3, (), &p).await;
                    Ok::<_, ()>(())
                });
            }
            async { Ok(()) }
        });
        let waker = CountingWaker::new();
        for round in 1..=3 {
            assert!(poll_once(&mut group, &waker).is_pending());
            assert_eq!(polls.get(), 10 * round);
            assert!(waker.wakes() >= round, "the group asked to be polled again");
        }
        assert_eq!(poll_once(&mut group, &waker), Poll::Ready(Ok(())));
        assert_eq!(polls.get(), 40);
    }

    /// A handle that outlived its (dropped) group reports the cancellation
    /// instead of hanging; one whose task finished still has the value.
    fn escaped_handles_see_values_and_cancellation() {
        let mut finished: Option<TaskHandle<u8, ()>> = None;
        let mut cancelled: Option<TaskHandle<u8, ()>> = None;
        {
            let (f, c) = (&mut finished, &mut cancelled);
            let mut group = task_group(move |tg| async move {
                *f = Some(tg.spawn(async { Ok(1) }));
                *c = Some(tg.spawn(futures::future::pending()));
                futures::future::pending::<()>().await;
                Ok::<_, ()>(())
            });
            assert!(poll_noop(&mut group).is_pending());
            assert!(poll_noop(&mut group).is_pending());
        }
        let mut finished = finished.unwrap();
        let mut cancelled = cancelled.unwrap();
        assert!(finished.is_finished());
        assert!(cancelled.is_finished());
        assert_eq!(poll_noop(&mut finished), Poll::Ready(Ok(Ok(1))));
        let err = catch_unwind(AssertUnwindSafe(|| poll_noop(&mut finished))).unwrap_err();
        assert_eq!(panic_message(&*err), "`TaskHandle` polled after completion");
        let out = poll_noop(&mut cancelled);
        assert!(matches!(out, Poll::Ready(Err(c)) if !c.is_aborted()), "{out:?}");
    }

    fn a_handle_awaited_outside_a_running_group_is_woken() {
        let (tx, rx) = oneshot::channel::<u8>();
        let escaped = Arc::new(std::sync::Mutex::new(None::<TaskHandle<u8, ()>>));
        let e = escaped.clone();
        let mut group = task_group(move |tg| async move {
            *e.lock().unwrap() = Some(tg.spawn(async move { Ok(rx.await.unwrap()) }));
            Ok::<_, ()>(())
        });
        assert!(poll_noop(&mut group).is_pending());
        let mut handle = escaped.lock().unwrap().take().unwrap();
        let outside = CountingWaker::new();
        assert!(poll_once(&mut handle, &outside).is_pending());
        tx.send(4).unwrap();
        assert_eq!(poll_noop(&mut group), Poll::Ready(Ok(())));
        assert_eq!(outside.wakes(), 1);
        assert_eq!(poll_once(&mut handle, &outside), Poll::Ready(Ok(Ok(4))));
    }

    fn spawning_after_the_group_finished_panics() {
        let mut scope = None;
        let s = &mut scope;
        let group = task_group(move |tg| {
            *s = Some(tg);
            async { Ok::<_, ()>(()) }
        });
        assert_eq!(futures::executor::block_on(group), Ok(()));
        let scope = scope.unwrap();
        let err = catch_unwind(AssertUnwindSafe(|| {
            drop(scope.spawn(async { Ok(()) }));
        }))
        .unwrap_err();
        assert!(panic_message(&*err).contains("after its task group finished"));
    }

    /// Tasks queued through a scope that outlives the group are dropped with
    /// the group, not kept alive by the scope.
    fn queued_tasks_drop_with_the_group_even_if_a_scope_survives() {
        let tracker = Tracker::new();
        let mut scope = None;
        let s = &mut scope;
        let t = tracker.clone();
        let group = task_group(move |tg| {
            tg.spawn(forever(&t));
            *s = Some(tg);
            async { Ok::<_, &str>(()) }
        });
        assert_eq!(tracker.live(), 1);
        drop(group);
        assert_eq!(tracker.live(), 0);
        drop(scope);
    }

    fn nothing_leaks() {
        assert_no_leak("task group", || {
            let tracker = Tracker::new();
            let t = tracker.clone();
            let mut group = task_group(move |tg| async move {
                let a = tg.spawn(async { Ok::<_, &str>(vec![1u8; 100]) });
                tg.spawn(forever(&t));
                drop(tg.spawn(async { Ok(Box::new(5)) }));
                let _ = a.await;
                futures::future::pending::<()>().await;
                Ok(())
            });
            for _ in 0..3 {
                assert!(poll_noop(&mut group).is_pending());
            }
            drop(group);
            assert_eq!(tracker.live(), 0);
        });
    }

    fn the_group_is_debug() {
        let group = task_group(|_| async { Ok::<_, ()>(()) });
        assert!(format!("{group:?}").contains("TaskGroup"));
        let group = task_group(|tg| {
            let h = tg.spawn(async { Ok(1) });
            assert!(format!("{h:?}").contains("running"));
            assert!(format!("{tg:?}").contains("TaskScope"));
            async { Ok::<_, ()>(()) }
        });
        drop(group);
    }
}

#[allow(dead_code)]
fn boxed_tasks_of_different_types_share_one_group() -> Boxed<'static, Result<(), ()>> {
    // Compile-time: the group future is `Send` and `'static` when its tasks
    // and body are, so it can be spawned on a multi-thread executor.
    Box::pin(async {
        task_group(|tg| async move {
            let a = tg.spawn(async { Ok(1u8) });
            let b = tg.spawn(async { Ok("two") });
            let (a, b) = (a.await.unwrap()?, b.await.unwrap()?);
            assert_eq!((a, b), (1, "two"));
            Ok(())
        })
        .await
    })
}
