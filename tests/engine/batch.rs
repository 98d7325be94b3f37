//! `process_batch` / `Batch`: input order, the concurrency limit (never
//! exceeded, actually reached), lazy pulling, fixed batches and their pause,
//! fail-fast and settled, progress, rate-limit composition, cancellation,
//! and the engine's polling rules.

use crate::common;

use awaitkit::{Batch, BatchConfigError, Progress, process_batch};
use common::{
    Counter, CountingWaker, Gauge, Handles, ParkHandle, RemoteYield, Tracker, WakerThread, YieldN,
    parked, parked_children, poll_once, shuffled,
};
use futures::FutureExt;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// A counting iterator over `0..n` (its size hint stays exact).
fn counted(n: usize, pulls: &Counter) -> impl Iterator<Item = usize> + use<> {
    let pulls = pulls.clone();
    (0..n).inspect(move |_| pulls.inc())
}

// ---------------------------------------------------------------------------
// Order, limit, laziness (on every executor)
// ---------------------------------------------------------------------------

matrix! {
    /// Later items finish first; the outputs still come in input order.
    async fn outputs_come_in_input_order() {
        let n = 100;
        let out = process_batch(0..n, 7, |i| YieldN::new(n - i, i * 3, &Counter::new())).await;
        assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>());
    }

    /// Sliding window: never more than `limit` alive, and exactly `limit` at
    /// the peak, at several limits and with woken-from-another-thread calls.
    async fn the_limit_is_never_exceeded_and_is_reached() {
        let thread = WakerThread::spawn();
        for limit in [1, 2, 3, 8, 64] {
            let gauge = Gauge::default();
            let (g, t) = (gauge.clone(), thread.clone());
            let out = process_batch(0..200, limit, move |i| {
                let alive = g.enter();
                let (polls, t) = (Counter::new(), t.clone());
                async move {
                    let v = RemoteYield::new(i % 4 + 1, i, &t, &polls).await;
                    drop(alive);
                    v
                }
            })
            .await;
            assert_eq!(out, (0..200).collect::<Vec<_>>());
            assert_eq!(gauge.max(), limit, "limit {limit}: most calls alive at once");
            assert_eq!(gauge.now(), 0);
        }
    }

    /// Fixed batches never exceed the limit either, and reach it.
    async fn fixed_batches_respect_and_reach_the_limit() {
        for limit in [1, 3, 10] {
            let gauge = Gauge::default();
            let g = gauge.clone();
            let out = process_batch(0..25, limit, move |i| {
                let alive = g.enter();
                async move {
                    YieldN::new(i % 3, (), &Counter::new()).await;
                    drop(alive);
                    i
                }
            })
            .fixed_batches()
            .await;
            assert_eq!(out, (0..25).collect::<Vec<_>>());
            assert_eq!(gauge.max(), limit);
        }
    }

    /// A settled batch of fallible calls runs every item and keeps every
    /// result.
    async fn settled_returns_every_result() {
        let out = process_batch(0..10, 3, |i: u32| async move {
            YieldN::new(i as usize % 3, (), &Counter::new()).await;
            if i % 4 == 1 { Err(i) } else { Ok(i * 10) }
        })
        .await;
        let expected: Vec<Result<u32, u32>> =
            (0..10).map(|i| if i % 4 == 1 { Err(i) } else { Ok(i * 10) }).collect();
        assert_eq!(out, expected);
    }

    async fn fail_fast_returns_ok_values_in_order_when_nothing_fails() {
        let out = process_batch(0..50, 4, |i: usize| async move {
            YieldN::new(50 - i, (), &Counter::new()).await;
            Ok::<_, String>(i)
        })
        .fail_fast()
        .await;
        assert_eq!(out, Ok((0..50).collect()));
    }

    async fn empty_input_is_done_at_once() {
        let calls = Counter::new();
        let c = calls.clone();
        let out = process_batch(Vec::<u8>::new(), 4, move |i| {
            c.inc();
            async move { i }
        })
        .await;
        assert!(out.is_empty());
        assert_eq!(calls.get(), 0);
    }

    /// `usize::MAX` means no limit: everything starts on the first poll.
    async fn a_huge_limit_runs_everything_at_once() {
        let gauge = Gauge::default();
        let g = gauge.clone();
        let out = process_batch(0..5, usize::MAX, move |i| {
            let alive = g.enter();
            async move {
                YieldN::new(1, (), &Counter::new()).await;
                drop(alive);
                i
            }
        })
        .await;
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert_eq!(gauge.max(), 5);
        let out = process_batch(0..5, usize::MAX, |i| async move { i }).fixed_batches().await;
        assert_eq!(out, [0, 1, 2, 3, 4]);
    }

    /// A real pause between fixed batches, on the default timer.
    async fn the_pause_between_batches_is_waited_for() {
        let pause = std::time::Duration::from_millis(20);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let s = starts.clone();
        process_batch(0..4, 2, move |_| {
            s.lock().unwrap().push(std::time::Instant::now());
            async {}
        })
        .pause_between(pause)
        .await;
        let starts = starts.lock().unwrap();
        assert!(starts[2] - starts[1] >= pause);
        assert!(starts[1] - starts[0] < pause);
    }

    #[should_panic(expected = "call 3 failed")]
    async fn a_panicking_call_propagates() {
        process_batch(0..10, 4, |i| async move {
            YieldN::new(2, (), &Counter::new()).await;
            assert!(i != 3, "call 3 failed");
            i
        })
        .await;
    }
}

matrix_local! {
    /// `!Send` calls and outputs work (on local executors).
    async fn not_send_calls_work() {
        let shared = Rc::new(RefCell::new(Vec::new()));
        let s = shared.clone();
        let out = process_batch(0..6, 2, move |i| {
            let s = s.clone();
            async move {
                YieldN::new(i % 2, (), &Counter::new()).await;
                s.borrow_mut().push(i);
                Rc::new(i)
            }
        })
        .await;
        assert_eq!(out.iter().map(|r| **r).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(shared.borrow().len(), 6);
    }
}

// ---------------------------------------------------------------------------
// Manual polls: laziness, fixed batches, fail-fast, cancellation, polls
// ---------------------------------------------------------------------------

guarded! {
    /// Items are pulled (and `f` called) only when a slot frees.
    fn items_are_pulled_lazily() {
        let (handles, polls, tracker, pulls) = (Handles::default(), Counter::new(), Tracker::new(), Counter::new());
        let mut batch = process_batch(counted(10, &pulls), 3, parked_children(&handles, &polls, &tracker));
        let waker = CountingWaker::new();
        assert_eq!(pulls.get(), 0, "nothing is pulled before the first poll");
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((pulls.get(), tracker.live(), batch.in_flight()), (3, 3, 3));
        // One finishes: exactly one more is pulled, started, and polled.
        handles.get(1).complete();
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((pulls.get(), tracker.live(), batch.completed()), (4, 3, 1));
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert!(handles.get(3).has_waker(), "the new call was polled");
        // Finish everything, in reverse.
        while batch.completed() < 10 {
            for i in (0..handles.len()).rev() {
                handles.get(i).complete();
            }
            if let Poll::Ready(out) = poll_once(&mut batch, &waker) {
                assert_eq!(out, (0..10).collect::<Vec<_>>());
                break;
            }
            assert!(pulls.get() <= batch.completed() + 3);
        }
        assert_eq!(pulls.get(), 10);
        assert_eq!(tracker.live(), 0);
    }

    /// The next fixed batch starts only when the whole previous one has
    /// finished.
    fn a_fixed_batch_waits_for_the_whole_previous_batch() {
        let (handles, polls, tracker, pulls) = (Handles::default(), Counter::new(), Tracker::new(), Counter::new());
        let mut batch = process_batch(counted(7, &pulls), 3, parked_children(&handles, &polls, &tracker)).fixed_batches();
        let waker = CountingWaker::new();
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((handles.len(), batch.in_flight()), (3, 3));
        handles.get(0).complete();
        handles.get(2).complete();
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((handles.len(), batch.in_flight(), pulls.get()), (3, 1, 3), "no new start yet");
        handles.get(1).complete();
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((handles.len(), batch.in_flight()), (6, 3), "the second batch started");
        for i in 3..6 {
            handles.get(i).complete();
        }
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!((handles.len(), batch.in_flight()), (7, 1), "a short last batch");
        handles.get(6).complete();
        assert_eq!(poll_once(&mut batch, &waker), Poll::Ready((0..7).collect()));
    }

    /// Fail-fast: the first error comes back from the poll it appeared in,
    /// every other call is dropped first, and nothing more is pulled.
    fn fail_fast_drops_the_rest_and_returns_the_first_error() {
        let (tracker, pulls) = (Tracker::new(), Counter::new());
        let fails = Arc::new(Mutex::new(Vec::<ParkHandle>::new()));
        let (t, f) = (tracker.clone(), fails.clone());
        let mut batch = process_batch(counted(100, &pulls), 4, move |i| {
            let (handle, child) = parked((), &Counter::new(), &t);
            f.lock().unwrap().push(handle);
            child.map(move |()| if i % 2 == 1 { Err(format!("item {i}")) } else { Ok(i) })
        })
        .fail_fast();
        let waker = CountingWaker::new();
        assert!(poll_once(&mut batch, &waker).is_pending());
        assert_eq!(tracker.live(), 4);
        // 0 succeeds; 3 and then 1 fail in the same poll: 3 came first.
        let handle = |i: usize| fails.lock().unwrap()[i].clone();
        handle(0).complete();
        assert!(poll_once(&mut batch, &waker).is_pending());
        let pulled = pulls.get();
        handle(3).complete();
        handle(1).complete();
        let out = poll_once(&mut batch, &waker);
        assert!(
            out == Poll::Ready(Err("item 3".into())) || out == Poll::Ready(Err("item 1".into())),
            "{out:?}"
        );
        assert_eq!(tracker.live(), 0, "every other call was dropped before the error came back");
        assert_eq!(pulls.get(), pulled, "nothing more was pulled");
        assert!(format!("{batch:?}").starts_with("TryBatch"));
    }

    /// Zero is rejected by the fallible constructor…
    fn a_zero_limit_is_rejected() {
        let err = Batch::try_new(0..3, 0, |i| async move { i }).unwrap_err();
        assert_eq!(err, BatchConfigError::ZeroLimit);
        assert_eq!(err.to_string(), "the concurrency limit must be at least 1");
        assert!(Batch::try_new(0..3, 1, |i| async move { i }).is_ok());
    }

    /// …and makes the plain constructor panic.
    #[should_panic(expected = "process_batch: the concurrency limit must be at least 1")]
    fn a_zero_limit_panics() {
        drop(process_batch(0..3, 0, |i| async move { i }));
    }

    /// Empty input completes on the first poll, whatever the options.
    fn empty_input_completes_on_the_first_poll() {
        let waker = CountingWaker::new();
        let limiter = awaitkit::RateLimiter::new(1, std::time::Duration::from_secs(3600));
        limiter.try_acquire().unwrap(); // a grant would have to wait an hour
        let mut batch = process_batch(std::iter::empty::<u8>(), 2, |i| async move { i })
            .pause_between(std::time::Duration::from_secs(3600))
            .rate_limit(&limiter)
            .on_progress(|_| panic!("no progress for no items"));
        assert_eq!(poll_once(&mut batch, &waker), Poll::Ready(vec![]));
        assert_eq!(limiter.waiting(), 0);
        let mut batch = process_batch(Vec::<u8>::new(), 2, |i| async move { Ok::<_, ()>(i) }).fail_fast();
        assert_eq!(poll_once(&mut batch, &waker), Poll::Ready(Ok(vec![])));
    }

    #[should_panic(expected = "`Batch` polled after completion")]
    fn polling_after_completion_panics() {
        let mut batch = process_batch([1], 1, |i| async move { i });
        let waker = CountingWaker::new();
        assert_eq!(poll_once(&mut batch, &waker), Poll::Ready(vec![1]));
        let _ = poll_once(&mut batch, &waker);
    }

    /// After a panic, the batch refuses further polls; dropping it drops
    /// the other calls.
    fn a_batch_a_panic_went_through_refuses_polls_and_drops_the_rest() {
        let tracker = Tracker::new();
        let t = tracker.clone();
        let mut batch = process_batch(0..10, 4, move |i| {
            let token = t.token();
            async move {
                let _token = token;
                YieldN::new(i, (), &Counter::new()).await;
                assert!(i != 1, "call 1 failed");
                i
            }
        });
        let waker = CountingWaker::new();
        let err = catch_unwind(AssertUnwindSafe(|| loop {
            if poll_once(&mut batch, &waker).is_ready() {
                break;
            }
        }))
        .unwrap_err();
        assert_eq!(common::panic_message(&*err), "call 1 failed");
        let again = catch_unwind(AssertUnwindSafe(|| poll_once(&mut batch, &waker))).unwrap_err();
        assert!(common::panic_message(&*again).contains("polled after a panic"));
        drop(batch);
        assert_eq!(tracker.live(), 0);
    }

    /// Dropping after any number of polls drops every call, leaks nothing
    /// and leaves the gauge at zero.
    fn cancelling_after_every_poll_leaks_nothing() {
        for stop in 0..40 {
            for fixed in [false, true] {
                let gauge = Gauge::default();
                let tracker = Tracker::new();
                let (g, t) = (gauge.clone(), tracker.clone());
                common::assert_no_leak("cancelled batch", || {
                    let (g, t) = (g.clone(), t.clone());
                    let batch = process_batch(0..30, 4, move |i| {
                        let alive = g.enter();
                        YieldN::tracked(i % 5, alive, &Counter::new(), &t)
                    });
                    let mut batch = if fixed { batch.fixed_batches() } else { batch };
                    let waker = CountingWaker::new();
                    for _ in 0..stop {
                        if poll_once(&mut batch, &waker).is_ready() {
                            return;
                        }
                    }
                    drop(batch);
                });
                assert_eq!((gauge.now(), tracker.live()), (0, 0), "stop after {stop} polls");
            }
        }
    }

    /// Polls per call = wakes + 1, with calls woken in a shuffled order,
    /// spurious wakes included.
    fn polls_per_call_are_wakes_plus_one() {
        let (handles, polls, tracker) = (Handles::default(), Counter::new(), Tracker::new());
        let n = 50;
        let mut batch = process_batch(0..n, 8, parked_children(&handles, &polls, &tracker));
        let waker = CountingWaker::new();
        let mut wakes = 0;
        let mut done = None;
        for round in 0..1000u64 {
            if let Poll::Ready(out) = poll_once(&mut batch, &waker) {
                done = Some(out);
                break;
            }
            // Wake the live calls in a shuffled order: every third spuriously.
            let live: Vec<usize> = (0..handles.len()).filter(|&i| handles.get(i).has_waker()).collect();
            for (k, &j) in shuffled(live.len(), round).iter().enumerate() {
                let h = handles.get(live[j]);
                if (k + round as usize) % 3 == 0 {
                    assert!(h.wake());
                } else {
                    assert!(h.complete());
                }
                wakes += 1;
            }
        }
        assert_eq!(done, Some((0..n).collect()));
        assert_eq!(polls.get(), wakes + n, "polls = wakes + N");
    }

    /// One poll of the batch polls each call at most once, and a call that
    /// keeps waking itself makes the batch yield (having woken its task).
    fn one_poll_polls_each_call_at_most_once() {
        let counters: Vec<Counter> = (0..6).map(|_| Counter::new()).collect();
        let c = counters.clone();
        let mut batch = process_batch(0..6, 3, move |i| YieldN::new(3, i, &c[i]));
        let waker = CountingWaker::new();
        let mut polls = 0;
        loop {
            let before: Vec<usize> = counters.iter().map(Counter::get).collect();
            let wakes = waker.wakes();
            let out = poll_once(&mut batch, &waker);
            polls += 1;
            for (i, c) in counters.iter().enumerate() {
                assert!(c.get() - before[i] <= 1, "call {i} polled twice in one poll");
            }
            if let Poll::Ready(out) = out {
                assert_eq!(out, [0, 1, 2, 3, 4, 5]);
                break;
            }
            assert!(waker.wakes() > wakes, "a pending batch with self-waking calls woke its task");
        }
        assert_eq!(common::total(&counters), 6 * 4);
        assert!(polls >= 8, "two waves of four polls each, at least");
    }
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

matrix! {
    /// Once per item, `done` counting up by one, a known total, and at most
    /// `limit` in flight.
    async fn progress_is_reported_once_per_item() {
        let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
        let s = seen.clone();
        let out = process_batch(0..30, 4, |i| YieldN::new(i % 3, i, &Counter::new()))
            .on_progress(move |p| s.lock().unwrap().push(*p))
            .await;
        assert_eq!(out.len(), 30);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 30);
        for (k, p) in seen.iter().enumerate() {
            assert_eq!(p.done, k + 1);
            assert_eq!(p.total, Some(30));
            assert!(p.in_flight <= 4);
            if let Some(rate) = p.rate {
                assert!(rate.is_finite() && rate > 0.0);
            }
            assert!(p.eta.is_some());
        }
        assert_eq!(seen.last().unwrap().eta, Some(std::time::Duration::ZERO));
        assert!(seen.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
    }

    /// An iterator without an exact size: the total is unknown until the
    /// iterator runs out, then known.
    async fn an_unknown_total_becomes_known_when_the_items_run_out() {
        let mut left = 12;
        let items = std::iter::from_fn(move || {
            left -= 1;
            (left >= 0).then_some(left)
        });
        let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
        let s = seen.clone();
        process_batch(items, 3, |i| YieldN::new(1, i, &Counter::new()))
            .on_progress(move |p| s.lock().unwrap().push(*p))
            .await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 12);
        assert_eq!(seen[0].total, None);
        assert_eq!(seen[0].eta, None);
        assert_eq!(seen.last().unwrap().total, Some(12));
    }
}

// ---------------------------------------------------------------------------
// The manual clock: pauses, elapsed/rate/ETA, the rate limiter
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod manual_clock {
    use super::*;
    use awaitkit::RateLimiter;
    use awaitkit::rate_limiter::Quota;
    use awaitkit::time::{ManualClock, Timer};
    use std::time::{Duration, Instant};

    const SEC: Duration = Duration::from_secs(1);

    /// When calls start, on a manual clock, counted from the log's creation.
    #[derive(Clone)]
    struct Starts {
        clock: ManualClock,
        t0: Instant,
        log: Arc<Mutex<Vec<Duration>>>,
    }

    impl Starts {
        fn new(clock: &ManualClock) -> Self {
            Starts {
                clock: clock.clone(),
                t0: clock.now(),
                log: Arc::default(),
            }
        }
        /// Records a start now.
        fn record(&self) {
            self.log.lock().unwrap().push(self.clock.now() - self.t0);
        }
        fn get(&self) -> Vec<Duration> {
            self.log.lock().unwrap().clone()
        }
    }

    /// Polls `batch` to completion, moving `clock` to its next deadline
    /// between polls.
    fn run_on_clock<B: Future + Unpin>(batch: &mut B, clock: &ManualClock) -> B::Output {
        let waker = CountingWaker::new();
        loop {
            if let Poll::Ready(out) = poll_once(batch, &waker) {
                return out;
            }
            // No deadline: a refill woke the batch; just poll again.
            if let Some(at) = clock.next_deadline() {
                clock.advance_to(at);
            }
        }
    }

    guarded! {
        /// The pause runs from the end of one batch to the start of the
        /// next, on the batch's clock, never early.
        fn the_pause_is_honoured_exactly() {
            let clock = ManualClock::new();
            let starts = Starts::new(&clock);
            let s = starts.clone();
            let mut batch = process_batch(0..5, 2, move |i| {
                s.record();
                async move { i }
            })
            .pause_between(10 * SEC)
            .with_timer(clock.clone());
            let waker = CountingWaker::new();
            assert!(poll_once(&mut batch, &waker).is_pending());
            assert_eq!(starts.get().len(), 2);
            assert_eq!(clock.sleepers(), 1, "pausing");
            clock.advance(9 * SEC);
            assert!(poll_once(&mut batch, &waker).is_pending());
            assert_eq!(starts.get().len(), 2, "never early");
            let wakes = waker.wakes();
            clock.advance(SEC);
            assert!(waker.wakes() > wakes, "the pause's end wakes the batch");
            assert!(poll_once(&mut batch, &waker).is_pending());
            assert_eq!(starts.get().len(), 4);
            clock.advance(10 * SEC);
            assert_eq!(poll_once(&mut batch, &waker), Poll::Ready(vec![0, 1, 2, 3, 4]));
            assert_eq!(starts.get(), [Duration::ZERO, Duration::ZERO, 10 * SEC, 10 * SEC, 20 * SEC]);
            assert_eq!(clock.sleepers(), 0, "no pause after the last batch");
        }

        /// Elapsed, rate and ETA on the batch's clock: one item per second.
        fn elapsed_rate_and_eta_follow_the_clock() {
            let clock = ManualClock::new();
            let (handles, polls, tracker) = (Handles::default(), Counter::new(), Tracker::new());
            let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
            let s = seen.clone();
            let mut batch = process_batch(0..4, 2, parked_children(&handles, &polls, &tracker))
                .with_timer(clock.clone())
                .on_progress(move |p| s.lock().unwrap().push(*p));
            let waker = CountingWaker::new();
            assert!(poll_once(&mut batch, &waker).is_pending());
            for i in 0..4 {
                clock.advance(SEC);
                handles.get(i).complete();
                if poll_once(&mut batch, &waker).is_pending() {
                    let _ = poll_once(&mut batch, &waker);
                }
            }
            let seen = seen.lock().unwrap();
            let got: Vec<_> = seen.iter().map(|p| (p.done, p.elapsed, p.rate, p.eta)).collect();
            assert_eq!(
                got,
                [
                    (1, SEC, Some(1.0), Some(3 * SEC)),
                    (2, 2 * SEC, Some(1.0), Some(2 * SEC)),
                    (3, 3 * SEC, Some(1.0), Some(SEC)),
                    (4, 4 * SEC, Some(1.0), Some(Duration::ZERO)),
                ]
            );
            assert_eq!(seen[0].in_flight, 1, "the freed slot refills after the report");
        }

        /// No time on the clock: no rate yet, and an ETA of zero.
        fn no_elapsed_time_means_no_rate() {
            let clock = ManualClock::new();
            let mut last = None;
            let out = process_batch(0..3, 3, |i| async move { i })
                .with_timer(clock)
                .on_progress(|p| last = Some(*p))
                .now_or_never();
            assert_eq!(out, Some(vec![0, 1, 2]));
            let last = last.unwrap();
            assert_eq!((last.rate, last.eta, last.elapsed), (None, Some(Duration::ZERO), Duration::ZERO));
        }

        /// With a rate limit, starts respect the quota in every window, and
        /// each grant is taken only when its call can start.
        fn rate_limited_starts_respect_the_quota() {
            let clock = ManualClock::new();
            let limiter = RateLimiter::with_quota(Quota::window(2, SEC).unwrap()).with_timer(clock.clone());
            let starts = Starts::new(&clock);
            let s = starts.clone();
            let mut batch = process_batch(0..7, 10, move |i| {
                let s = s.clone();
                async move {
                    s.record(); // the call's first poll
                    i
                }
            })
            .rate_limit(&limiter);
            assert_eq!(run_on_clock(&mut batch, &clock), (0..7).collect::<Vec<_>>());
            assert_eq!(starts.get(), [Duration::ZERO, Duration::ZERO, SEC, SEC, 2 * SEC, 2 * SEC, 3 * SEC]);
        }

        /// With limit 1, a grant is taken only when the slot is free: the
        /// limiter sees exactly one grant while the first call runs.
        fn a_grant_is_taken_only_when_a_call_can_start() {
            let clock = ManualClock::new();
            let limiter = RateLimiter::with_quota(Quota::window(3, SEC).unwrap()).with_timer(clock.clone());
            let (handles, polls, tracker) = (Handles::default(), Counter::new(), Tracker::new());
            let mut batch = process_batch(0..3, 1, parked_children(&handles, &polls, &tracker)).rate_limit(&limiter);
            let waker = CountingWaker::new();
            assert!(poll_once(&mut batch, &waker).is_pending());
            assert_eq!(limiter.waiting(), 0);
            assert!(limiter.try_acquire_n(2).is_ok(), "only one of three grants used");
            assert!(limiter.try_acquire().is_err());
            // The next call waits for the window; dropping the batch while
            // it waits gives its place back.
            handles.get(0).complete();
            assert!(poll_once(&mut batch, &waker).is_pending());
            assert_eq!((limiter.waiting(), batch.in_flight(), handles.len()), (1, 0, 1));
            drop(batch);
            assert_eq!(limiter.waiting(), 0);
            assert_eq!(tracker.live(), 0);
        }

        /// Fixed batches, a pause and a rate limit together, on one clock.
        fn fixed_batches_with_pause_and_rate_limit() {
            let clock = ManualClock::new();
            let limiter = RateLimiter::with_quota(Quota::window(3, SEC).unwrap()).with_timer(clock.clone());
            let starts = Starts::new(&clock);
            let s = starts.clone();
            let mut batch = process_batch(0..6, 2, move |i| {
                s.record();
                async move { i }
            })
            .pause_between(SEC / 2)
            .with_timer(clock.clone())
            .rate_limit(&limiter);
            assert_eq!(run_on_clock(&mut batch, &clock), (0..6).collect::<Vec<_>>());
            // Batch 1 at 0 s. Pause to 0.5 s: one grant left in the window,
            // the next when the 0 s grants expire, at 1 s. Pause to 1.5 s:
            // the 0.5 s grant has expired, only the 1 s one counts.
            assert_eq!(
                starts.get(),
                [Duration::ZERO, Duration::ZERO, SEC / 2, SEC, SEC * 3 / 2, SEC * 3 / 2]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The indicatif progress bar
// ---------------------------------------------------------------------------

#[cfg(feature = "indicatif")]
mod progress_bar {
    use super::*;
    // Through the re-export: always the version the batch takes.
    use awaitkit::indicatif::ProgressBar;

    guarded! {
        fn the_bar_follows_the_batch_and_finishes() {
            let bar = ProgressBar::hidden();
            let out = futures::executor::block_on(
                process_batch(0..25, 4, |i| YieldN::new(i % 2, i, &Counter::new()))
                    .with_progress_bar(bar.clone()),
            );
            assert_eq!(out.len(), 25);
            assert_eq!((bar.position(), bar.length()), (25, Some(25)));
            assert!(bar.is_finished());
        }

        fn the_bar_is_abandoned_on_a_fail_fast_error() {
            let bar = ProgressBar::hidden();
            let out = futures::executor::block_on(
                process_batch(0..25, 4, |i| async move { if i == 10 { Err(i) } else { Ok(i) } })
                    .with_progress_bar(bar.clone())
                    .fail_fast(),
            );
            assert_eq!(out, Err(10));
            assert!(bar.is_finished());
            assert!(bar.position() < 25);
        }

        fn the_default_bar_works_with_an_unknown_total() {
            let out = futures::executor::block_on(
                process_batch((0..10).filter(|i| i % 2 == 0), 3, |i| async move { i })
                    .progress_bar()
                    .on_progress(|_| {}),
            );
            assert_eq!(out, [0, 2, 4, 6, 8]);
        }
    }
}
