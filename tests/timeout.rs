//! `timeout` / `timeout_at` / `Timeout` / `Elapsed` on the manual clock
//! (SPEC §5): never early; zero, past and unrepresentable deadlines; the
//! inner future polled first; no timer until the inner future waits; `reset`;
//! polling after completion; nothing leaks.

#![cfg(feature = "test-util")]

#[macro_use]
mod common;

use awaitkit::time::{ManualClock, ManualSleep};
use awaitkit::{Elapsed, Timeout, TimeoutExt, Timer, timeout, timeout_at};
use common::*;
use futures::future::join;
use std::future::{Future, Pending, pending, ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A manual clock that counts how often it is asked for the time, for a
/// sleep, and to move a sleep.
#[derive(Clone, Debug, Default)]
struct CountingTimer {
    clock: ManualClock,
    now: Counter,
    sleeps: Counter,
    resets: Counter,
}

impl Timer for CountingTimer {
    type Sleep = ManualSleep;
    fn now(&self) -> Instant {
        self.now.inc();
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ManualSleep {
        self.sleeps.inc();
        self.clock.sleep_until(deadline)
    }
    fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
        self.resets.inc();
        self.clock.reset(sleep, deadline);
    }
}

/// A pending inner future that counts its polls and holds a token.
fn counted_pending(polls: &Counter, tracker: &Tracker) -> impl Future<Output = ()> + Unpin + use<> {
    let (polls, token) = (polls.clone(), tracker.token());
    futures::future::poll_fn(move |_| {
        let _keep = &token;
        polls.inc();
        Poll::Pending
    })
}

fn manual_timeout(clock: &ManualClock, d: Duration) -> Timeout<Pending<()>, ManualClock> {
    timeout(d, pending()).with_timer(clock.clone())
}

guarded! {
    /// asyncio's `reschedule(None)`: a cleared deadline never fires, whatever
    /// the clock does, until `reset` sets one again; `expired` follows.
    fn clear_deadline_removes_the_limit_and_reset_sets_one_again() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 5 * SEC);
        assert!(!call.expired(), "no deadline before the first wait");
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(4 * SEC);
        Pin::new(&mut call).clear_deadline();
        assert_eq!(call.deadline(), None);
        // The running sleep was moved to now: one wake, whose poll drops it.
        assert_eq!(w.wakes(), 1);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(clock.sleepers(), 0, "no timer without a deadline");
        clock.advance(3600 * SEC);
        assert_eq!(w.wakes(), 1, "a cleared deadline woke the task");
        assert!(!call.expired());
        assert!(poll_once(&mut call, &w).is_pending());
        let at = clock.now() + SEC;
        Pin::new(&mut call).reset(at);
        assert_eq!(w.wakes(), 2, "reset wakes a timeout that had no timer");
        assert!(poll_once(&mut call, &w).is_pending(), "which arms one");
        assert!(!call.expired());
        clock.advance(SEC);
        assert_eq!(w.wakes(), 3, "the new deadline woke the task");
        assert!(call.expired(), "the deadline has passed; the next poll times out");
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert!(call.expired());
    }

    /// Clearing before the first poll: the timeout never starts a timer.
    fn clear_deadline_before_the_first_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, Duration::ZERO);
        Pin::new(&mut call).clear_deadline();
        assert!(poll_once(&mut call, &w).is_pending(), "a zero timeout without its deadline waits");
        clock.advance(3600 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        assert!(!call.expired());
    }

    /// A ready inner future wins at the deadline: `expired` stays false.
    fn expired_is_false_when_the_inner_future_won() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let at = clock.now();
        let mut call = timeout_at(at, std::future::ready(1)).with_timer(clock.clone());
        assert!(call.expired(), "the deadline has passed (the next poll decides)");
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(1)));
        assert!(!call.expired(), "the inner future won");
    }

    fn never_early_with_a_duration() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 5 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(Duration::from_millis(4999));
        assert_eq!(w.wakes(), 0, "woken before the deadline");
        assert!(poll_once(&mut call, &w).is_pending(), "elapsed after 4.999 s of 5 s");
        clock.advance(Duration::from_millis(1));
        assert_eq!(w.wakes(), 1, "not woken at the deadline");
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    }

    fn never_early_with_an_instant() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let at = clock.now() + 5 * SEC;
        let mut call = timeout_at(at, pending::<()>()).with_timer(clock.clone());
        assert_eq!(call.deadline(), Some(at));
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance_to(at - Duration::from_nanos(1));
        assert_eq!(w.wakes(), 0);
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance_to(at);
        assert_eq!(w.wakes(), 1);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert_eq!(clock.sleepers(), 0);
    }

    fn the_duration_counts_from_the_first_pending_poll() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 5 * SEC);
        assert_eq!(call.deadline(), None, "no deadline before the first poll");
        clock.advance(3 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(call.deadline(), Some(t0 + 8 * SEC));
        clock.advance(5 * SEC - Duration::from_nanos(1));
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(Duration::from_nanos(1));
        assert!(poll_once(&mut call, &w).is_ready());
    }

    fn zero_duration_elapses_in_the_first_pending_poll_without_a_wake() {
        let timer = CountingTimer::default();
        let w = CountingWaker::new();
        let mut call = timeout(Duration::ZERO, pending::<()>()).with_timer(timer.clone());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert_eq!(w.wakes(), 0, "no wake-up was needed");
        assert_eq!(w.live_clones(), 0, "no waker was stored");
        assert_eq!(timer.sleeps.get(), 0, "no sleep was created");
        assert_eq!(timer.clock.sleepers(), 0);
    }

    fn a_past_instant_elapses_in_the_first_pending_poll() {
        let timer = CountingTimer::default();
        let w = CountingWaker::new();
        let now = timer.clock.now();
        for at in [Some(now), now.checked_sub(SEC), now.checked_sub(1000 * YEAR)].into_iter().flatten() {
            let mut call = timeout_at(at, pending::<()>()).with_timer(timer.clone());
            assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        }
        assert_eq!((w.wakes(), w.live_clones(), timer.sleeps.get()), (0, 0, 0));
    }

    fn a_ready_future_wins_a_zero_or_past_deadline() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = timeout(Duration::ZERO, ready(1)).with_timer(clock.clone());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(1)));
        let mut call = timeout_at(clock.now() - SEC, ready(2)).with_timer(clock.clone());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(2)));
        let mut call = Box::pin(timeout_at(clock.now(), async { 3 }).with_timer(clock.clone()));
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(3)));
        assert_eq!((w.wakes(), clock.sleepers()), (0, 0));
    }

    fn duration_max_never_elapses() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        for d in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::new(u64::MAX, 999_999_999)] {
            let mut call = manual_timeout(&clock, d);
            assert!(poll_once(&mut call, &w).is_pending());
            assert_eq!(call.deadline(), None, "{d:?}: no representable deadline");
            for _ in 0..3 {
                clock.advance(100 * YEAR);
                assert!(poll_once(&mut call, &w).is_pending(), "{d:?} elapsed");
            }
            // No deadline, no sleep: nothing for paused time to jump to.
            assert_eq!(clock.sleepers(), 0, "no timer is armed without a deadline");
            assert_eq!(w.wakes(), 0);
            drop(call);
        }
    }

    fn duration_max_still_lets_the_inner_future_finish() {
        let clock = ManualClock::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let (handle, child) = parked(7, &polls, &tracker);
        let w = CountingWaker::new();
        let mut call = timeout(Duration::MAX, child).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(300 * YEAR);
        handle.complete();
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(7)));
    }

    fn a_far_instant_neither_overflows_nor_fires_early() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let Some(far) = clock.now().checked_add(1000 * YEAR) else {
            return; // not representable on this platform: nothing to check
        };
        let mut call = timeout_at(far, pending::<()>()).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(call.deadline(), Some(far));
        clock.advance(100 * YEAR);
        assert!(poll_once(&mut call, &w).is_pending());
        // The backend sleep is capped; it is re-armed up to the real deadline.
        clock.advance_to(far - Duration::from_nanos(1));
        assert!(poll_once(&mut call, &w).is_pending(), "elapsed before a far deadline");
        assert_eq!(clock.next_deadline(), Some(far));
        let wakes = w.wakes();
        clock.advance_to(far);
        assert_eq!(w.wakes(), wakes + 1);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));

        // A long duration that fits is an ordinary deadline.
        let mut call = manual_timeout(&clock, 1000 * YEAR);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(call.deadline(), clock.now().checked_add(1000 * YEAR));
    }

    fn inner_that_becomes_ready_at_the_deadline_wins() {
        // The inner future is the same sleep as the deadline.
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let at = clock.now() + SEC;
        let mut call = timeout_at(at, clock.sleep_until(at)).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(())));

        // The inner future only looks at the clock; the timeout's own sleep
        // is what wakes the task.
        let at = clock.now() + SEC;
        let looker = {
            let clock = clock.clone();
            futures::future::poll_fn(move |_| if clock.now() >= at { Poll::Ready("inner") } else { Poll::Pending })
        };
        let mut call = timeout(SEC, looker).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok("inner")));

        // Completed by the same step that passes the deadline.
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let (handle, child) = parked('x', &polls, &tracker);
        let mut call = timeout(SEC, child).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(2 * SEC);
        handle.complete();
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok('x')));
        drop(call);
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
    }

    fn inner_is_polled_first_on_every_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let mut call = timeout(SEC, counted_pending(&polls, &tracker)).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(polls.get(), 1);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(polls.get(), 2);
        clock.advance(SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert_eq!(polls.get(), 3, "the inner future is polled on the poll that times out too");
        drop(call);
        assert_eq!(tracker.live(), 0);
    }

    fn no_timer_and_no_clock_read_while_the_inner_future_is_ready() {
        let timer = CountingTimer::default();
        let w = CountingWaker::new();
        let mut call = timeout(SEC, ready(5)).with_timer(timer.clone());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(5)));
        assert_eq!(timer.now.get(), 0, "the clock was read on the ready path");
        assert_eq!(timer.sleeps.get(), 0, "a sleep was created for a ready future");
        assert_eq!(call.deadline(), None);
        let mut call = timeout_at(timer.clock.now() + SEC, ready(6)).with_timer(timer.clone());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(6)));
        assert_eq!((timer.now.get(), timer.sleeps.get(), timer.clock.sleepers()), (0, 0, 0));
    }

    fn the_timer_starts_at_the_first_pending_poll_and_is_created_once() {
        let timer = CountingTimer::default();
        let w = CountingWaker::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let (handle, child) = parked(9, &polls, &tracker);
        let mut call = timeout(5 * SEC, child).with_timer(timer.clone());
        assert_eq!(call.deadline(), None);
        assert_eq!(timer.clock.sleepers(), 0);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(call.deadline(), Some(timer.clock.now() + 5 * SEC));
        assert_eq!(timer.clock.sleepers(), 1);
        for _ in 0..10 {
            handle.wake();
            assert!(poll_once(&mut call, &w).is_pending());
        }
        assert_eq!(timer.sleeps.get(), 1, "one sleep for the whole wait");
        assert_eq!(timer.clock.sleepers(), 1);
        handle.complete();
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(9)));
        drop(call);
        assert_eq!(timer.clock.sleepers(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    fn dropping_a_pending_timeout_unregisters_and_drops_the_inner_future() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let mut call = timeout(SEC, counted_pending(&polls, &tracker)).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!((clock.sleepers(), tracker.live()), (1, 1));
        drop(call);
        assert_eq!((clock.sleepers(), tracker.live(), w.live_clones()), (0, 0, 0));
        clock.advance(SEC);
        assert_eq!(w.wakes(), 0);
    }

    fn into_inner_keeps_the_progress_and_releases_the_timer() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let (handle, child) = parked(4, &polls, &tracker);
        let mut call = timeout(SEC, child).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        let inner_ref: &Parked<i32> = call.get_ref().expect("still running");
        assert!(format!("{inner_ref:?}").contains("Parked"));
        let inner_mut: &mut Parked<i32> = call.get_mut().expect("still running");
        assert!(format!("{inner_mut:?}").contains("Parked"));
        let mut inner = call.into_inner().expect("still running");
        assert_eq!(clock.sleepers(), 0, "the timer went with the Timeout");
        clock.advance(2 * SEC);
        handle.complete();
        assert_eq!(poll_once(&mut inner, &w), Poll::Ready(4));
        assert_eq!(polls.get(), 2);
    }

    fn reset_earlier_wakes_the_task_without_a_re_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 10 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        let at = clock.now() + SEC;
        Pin::new(&mut call).reset(at);
        assert_eq!(call.deadline(), Some(at));
        assert_eq!(w.wakes(), 0, "moving the deadline later than now needs no wake yet");
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1, "not woken at the new, earlier deadline");
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert_eq!(clock.sleepers(), 0);
    }

    fn reset_later_does_not_fire_at_the_old_deadline() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 10 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        Pin::new(&mut call).reset(t0 + 20 * SEC);
        assert_eq!(call.deadline(), Some(t0 + 20 * SEC));
        clock.advance(10 * SEC);
        assert_eq!(w.wakes(), 0, "woken at the old deadline");
        assert!(poll_once(&mut call, &w).is_pending(), "elapsed at the old deadline");
        clock.advance(10 * SEC - Duration::from_nanos(1));
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(Duration::from_nanos(1));
        assert_eq!(w.wakes(), 1);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    }

    fn reset_into_the_past_elapses_at_the_next_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 10 * SEC);
        assert!(poll_once(&mut call, &w).is_pending());
        Pin::new(&mut call).reset(clock.now() - SEC);
        assert_eq!(w.wakes(), 1, "the task must come back to see the deadline passed");
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));

        // The inner future is still polled first.
        let mut call = timeout(10 * SEC, YieldN::new(1, 'r', &Counter::new())).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        Pin::new(&mut call).reset(clock.now());
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok('r')));
    }

    fn reset_before_the_first_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, 10 * SEC);
        let at = clock.now() + SEC;
        Pin::new(&mut call).reset(at);
        assert_eq!(call.deadline(), Some(at));
        assert_eq!(clock.sleepers(), 0);
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(clock.next_deadline(), Some(at));
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));

        let mut call = manual_timeout(&clock, 10 * SEC);
        Pin::new(&mut call).reset(clock.now() - SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        assert_eq!((w.wakes(), clock.sleepers()), (1, 0));
    }

    fn reset_a_timeout_without_a_limit() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, Duration::MAX);
        assert!(poll_once(&mut call, &w).is_pending());
        let at = clock.now() + SEC;
        Pin::new(&mut call).reset(at);
        assert_eq!(call.deadline(), Some(at));
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    }

    fn reset_many_times_uses_one_sleep() {
        let timer = CountingTimer::default();
        let w = CountingWaker::new();
        let t0 = timer.clock.now();
        let mut call = timeout(SEC, pending::<()>()).with_timer(timer.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        for i in 1..=100u32 {
            Pin::new(&mut call).reset(t0 + i * SEC);
        }
        assert_eq!((timer.sleeps.get(), timer.resets.get(), timer.clock.sleepers()), (1, 100, 1));
        timer.clock.advance(99 * SEC);
        assert_eq!(w.wakes(), 0);
        timer.clock.advance(SEC);
        assert_eq!(w.wakes(), 1);
        assert!(poll_once(&mut call, &w).is_ready());
    }

    fn a_panicking_inner_future_propagates() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let mut call = Box::pin(timeout(SEC, panic_after(1, "inner boom", tracker.token())).with_timer(clock.clone()));
        assert!(poll_once(&mut call, &w).is_pending());
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut call, &w)));
        assert_eq!(panic_message(&*caught.unwrap_err()), "inner boom");
        drop(call);
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
    }

    fn elapsed_is_a_small_clonable_error() {
        let e = Elapsed::new();
        assert_eq!(e, Elapsed::default());
        assert_eq!(e.clone(), e);
        assert_eq!(e.to_string(), "deadline has elapsed");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        assert!(boxed.source().is_none());
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        assert!(format!("{e:?}").contains("Elapsed"));
    }

    fn debug_shows_the_state() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut call = manual_timeout(&clock, SEC);
        assert!(format!("{call:?}").contains("Timeout"));
        assert!(poll_once(&mut call, &w).is_pending());
        let text = format!("{call:?}");
        assert!(text.contains("deadline: Some"), "{text}");
    }

    fn timeout_ext_uses_the_default_timer() {
        let w = CountingWaker::new();
        let mut call = ready(1).timeout(SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(1)));
        let mut call = ready(2).timeout_at(Instant::now() - SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(2)));
        let mut call = pending::<()>().timeout_at(Instant::now() - SEC);
        assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    }

    /// The memory of 100 000 pending-then-dropped timeouts comes back, and
    /// so do the clock's registrations.
    fn many_dropped_timeouts_leak_nothing() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let run = || {
            let mut calls: Vec<_> = (0..100_000u32)
                .map(|i| manual_timeout(&clock, SEC + i * Duration::from_nanos(1)))
                .collect();
            for call in &mut calls {
                assert!(poll_once(call, &w).is_pending());
            }
            assert_eq!(clock.sleepers(), 100_000);
            drop(calls);
            assert_eq!(clock.sleepers(), 0);
        };
        assert_no_leak("100 000 pending timeouts dropped", run);
        assert_eq!(w.live_clones(), 0);
        clock.advance(2 * SEC);
        assert_eq!(w.wakes(), 0);
    }

    /// The same, one at a time.
    fn many_timeouts_dropped_one_by_one_leak_nothing() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        assert_no_leak("100 000 timeouts created, polled, dropped", || {
            for _ in 0..100_000 {
                let mut call = manual_timeout(&clock, SEC);
                assert!(poll_once(&mut call, &w).is_pending());
            }
        });
        assert_eq!((clock.sleepers(), w.live_clones()), (0, 0));
    }
}

/// `Timeout` docs: "On `Elapsed` the inner future is dropped before the
/// output is returned."
#[test]
fn inner_future_is_dropped_when_it_times_out() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let (tracker, polls) = (Tracker::new(), Counter::new());
    let mut call = timeout(SEC, counted_pending(&polls, &tracker)).with_timer(clock.clone());
    assert!(poll_once(&mut call, &w).is_pending());
    clock.advance(SEC);
    assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    assert_eq!(tracker.live(), 0, "the inner future outlived its `Elapsed`");
    assert_eq!(clock.sleepers(), 0, "the timer outlived its `Elapsed`");
    assert!(call.get_ref().is_none() && call.into_inner().is_none());
}

#[test]
#[should_panic(expected = "polled after completion")]
fn polling_after_ok_panics() {
    let w = CountingWaker::new();
    let mut call = timeout(SEC, ready(1)).with_timer(ManualClock::new());
    assert_eq!(poll_once(&mut call, &w), Poll::Ready(Ok(1)));
    let _ = poll_once(&mut call, &w);
}

#[test]
#[should_panic(expected = "polled after completion")]
fn polling_after_elapsed_panics() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let mut call = manual_timeout(&clock, Duration::ZERO);
    assert!(poll_once(&mut call, &w).is_ready());
    let _ = poll_once(&mut call, &w);
}

#[test]
#[should_panic(expected = "polled after completion")]
fn polling_after_a_timer_elapsed_panics() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let mut call = manual_timeout(&clock, SEC);
    assert!(poll_once(&mut call, &w).is_pending());
    clock.advance(SEC);
    assert!(poll_once(&mut call, &w).is_ready());
    let _ = poll_once(&mut call, &w);
}

matrix! {
    /// The task awaiting the timeout is woken by an advance made on another
    /// thread once the timeout has registered.
    async fn elapses_when_another_thread_advances_the_clock() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let tracker = Tracker::new();
        let handle = advance_from_thread(&clock, 1, 5 * SEC);
        let out = timeout(5 * SEC, counted_pending(&Counter::new(), &tracker)).with_timer(clock.clone()).await;
        assert_eq!(out, Err(Elapsed::new()));
        assert!(clock.now() >= t0 + 5 * SEC);
        handle.join().unwrap();
        assert_eq!((clock.sleepers(), tracker.live()), (0, 0));
    }

    /// Advancing in a sibling branch of the same task, step by step: pending
    /// right up to the deadline.
    async fn elapses_exactly_at_the_deadline_when_advanced_from_a_sibling() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let waiter = async {
            let out = timeout(5 * SEC, pending::<()>()).with_timer(clock.clone()).await;
            (out, clock.now())
        };
        let driver = async {
            sleepers_reach(&clock, 1).await;
            for _ in 0..10 {
                clock.advance(SEC / 2);
                yield_now().await;
                yield_now().await;
            }
        };
        let ((out, at), ()) = join(waiter, driver).await;
        assert_eq!(out, Err(Elapsed::new()));
        assert_eq!(at, t0 + 5 * SEC, "elapsed at the wrong step");
    }

    /// An inner future finished from another thread before the deadline wins;
    /// the timer is released.
    async fn inner_finished_from_another_thread_wins() {
        let clock = ManualClock::new();
        let (tracker, polls) = (Tracker::new(), Counter::new());
        let (handle, child) = parked(3, &polls, &tracker);
        let thread = {
            let (clock, handle) = (clock.clone(), handle.clone());
            std::thread::spawn(move || {
                while clock.sleepers() == 0 || !handle.has_waker() {
                    std::thread::yield_now();
                }
                clock.advance(SEC);
                handle.complete();
            })
        };
        let out = timeout(2 * SEC, child).with_timer(clock.clone()).await;
        assert_eq!(out, Ok(3));
        thread.join().unwrap();
        assert_eq!((clock.sleepers(), tracker.live()), (0, 0));
    }

    /// `reset` from a sibling branch while the timeout is awaited (it is not
    /// polled between the reset and the advance).
    async fn reset_while_awaited_from_a_sibling() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let call = std::sync::Mutex::new(Box::pin(timeout(3600 * SEC, pending::<()>()).with_timer(clock.clone())));
        let waiter = futures::future::poll_fn(|cx| call.lock().unwrap().as_mut().poll(cx));
        let driver = async {
            sleepers_reach(&clock, 1).await;
            call.lock().unwrap().as_mut().reset(t0 + SEC);
            clock.advance(SEC);
        };
        let (out, ()) = join(waiter, driver).await;
        assert_eq!(out, Err(Elapsed::new()));
        assert_eq!(clock.now(), t0 + SEC);
    }
}

/// `Timeout` is `Unpin` here, so it polls without pinning; a `!Unpin` inner
/// future needs a pin (compile-time check).
#[test]
fn timeout_over_a_pinned_inner_future() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let mut call = std::pin::pin!(
        timeout(SEC, async {
            std::future::pending::<()>().await;
        })
        .with_timer(clock.clone())
    );
    assert!(call.as_mut().poll(&mut w.context()).is_pending());
    clock.advance(SEC);
    assert_eq!(
        call.as_mut().poll(&mut Context::from_waker(w.waker())),
        Poll::Ready(Err(Elapsed::new()))
    );
}

// ---------------------------------------------------------------------------
// Panics in the timer and in destructors (SPEC §1.13)
// ---------------------------------------------------------------------------

/// A manual clock whose `now`, `reset` and sleeps' `drop` panic while the
/// matching flag is set.
#[derive(Clone, Debug, Default)]
struct FlakyTimer {
    clock: ManualClock,
    now_panics: Arc<AtomicBool>,
    reset_panics: Arc<AtomicBool>,
    sleep_drop_panics: Arc<AtomicBool>,
}

/// The sleep of a [`FlakyTimer`].
struct FlakySleep {
    sleep: ManualSleep,
    drop_panics: Arc<AtomicBool>,
}

impl Future for FlakySleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.sleep).poll(cx)
    }
}

impl Drop for FlakySleep {
    fn drop(&mut self) {
        assert!(!self.drop_panics.load(SeqCst), "sleep drop boom");
    }
}

impl Timer for FlakyTimer {
    type Sleep = FlakySleep;
    fn now(&self) -> Instant {
        assert!(!self.now_panics.load(SeqCst), "timer now boom");
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> FlakySleep {
        FlakySleep {
            sleep: self.clock.sleep_until(deadline),
            drop_panics: self.sleep_drop_panics.clone(),
        }
    }
    fn reset(&self, mut sleep: Pin<&mut FlakySleep>, deadline: Instant) {
        assert!(!self.reset_panics.load(SeqCst), "timer reset boom");
        self.clock.reset(Pin::new(&mut sleep.sleep), deadline);
    }
}

/// A future whose `drop` panics (once its `armed` flag is set), holding a
/// token; ready with a token of its own when `ready`.
struct DropPanics {
    ready: bool,
    tracker: Tracker,
    _token: Token,
    armed: Arc<AtomicBool>,
}

impl DropPanics {
    fn new(ready: bool, tracker: &Tracker) -> (Self, Arc<AtomicBool>) {
        let armed = Arc::new(AtomicBool::new(true));
        let fut = DropPanics {
            ready,
            tracker: tracker.clone(),
            _token: tracker.token(),
            armed: armed.clone(),
        };
        (fut, armed)
    }
}

impl Future for DropPanics {
    type Output = Token;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Token> {
        if self.ready {
            Poll::Ready(self.tracker.token())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        assert!(!self.armed.swap(false, SeqCst), "inner drop boom");
    }
}

/// Polls once, expecting a panic; returns its message.
fn poll_panics<F: Future + Unpin>(call: &mut F, w: &CountingWaker) -> String {
    let payload = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(call, w).map(drop)))
        .expect_err("the poll should have panicked");
    panic_message(&*payload)
}

guarded! {
    /// Regression: `reset` stored the new deadline before asking the timer,
    /// so a panic in `Timer::now` or `Timer::reset` left `deadline()`
    /// reporting a deadline the sleep never got (no wake-up at it).
    fn a_timer_panic_in_reset_keeps_the_old_deadline() {
        for which in ["now", "reset"] {
            let timer = FlakyTimer::default();
            let t0 = timer.clock.now();
            let w = CountingWaker::new();
            let mut call = timeout(10 * SEC, pending::<()>()).with_timer(timer.clone());
            assert!(poll_once(&mut call, &w).is_pending());
            let flag = if which == "now" { &timer.now_panics } else { &timer.reset_panics };
            flag.store(true, SeqCst);
            let reset = std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut call).reset(t0 + SEC)));
            flag.store(false, SeqCst);
            assert!(reset.is_err(), "{which}: the timer's panic propagates");
            assert_eq!(call.deadline(), Some(t0 + 10 * SEC), "{which}: the deadline moved without the sleep");
            timer.clock.advance(SEC);
            assert_eq!(w.wakes(), 0, "{which}: woken at the deadline that was not set");
            assert!(poll_once(&mut call, &w).is_pending());
            timer.clock.advance(9 * SEC);
            assert_eq!(w.wakes(), 1, "{which}: not woken at the deadline it reports");
            assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
            // A later reset works.
            let mut call = timeout(10 * SEC, pending::<()>()).with_timer(timer.clone());
            assert!(poll_once(&mut call, &w).is_pending());
            Pin::new(&mut call).reset(timer.clock.now() + SEC);
            timer.clock.advance(SEC);
            assert_eq!(w.wakes(), 2);
            assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
        }
    }

    /// Regression: the inner future was ready but its destructor panicked:
    /// the output was lost and the next poll said "polled after
    /// completion" although the timeout never completed.
    fn a_panicking_inner_drop_after_ready_refuses_the_next_poll_clearly() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (inner, _armed) = DropPanics::new(true, &tracker);
        let mut call = timeout(SEC, inner).with_timer(clock.clone());
        assert_eq!(poll_panics(&mut call, &w), "inner drop boom");
        assert_eq!(tracker.live(), 0, "the inner future and the lost output are dropped");
        let refusal = poll_panics(&mut call, &w);
        assert!(refusal.contains("polled after a panic"), "{refusal}");
        assert!(call.get_ref().is_none());
    }

    /// Regression: the same when the deadline passed and the inner future's
    /// destructor panicked; the sleep is still dropped.
    fn a_panicking_inner_drop_at_the_deadline_refuses_the_next_poll_clearly() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (inner, _armed) = DropPanics::new(false, &tracker);
        let mut call = timeout(SEC, inner).with_timer(clock.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        clock.advance(SEC);
        assert_eq!(poll_panics(&mut call, &w), "inner drop boom");
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0), "the inner future or the sleep was kept");
        let refusal = poll_panics(&mut call, &w);
        assert!(refusal.contains("polled after a panic"), "{refusal}");
    }

    /// Regression: the same when the timer's sleep panics as it is dropped
    /// at the deadline; the inner future is dropped all the same, and with
    /// both destructors panicking the first panic propagates.
    fn a_panicking_sleep_drop_at_the_deadline_refuses_the_next_poll_clearly() {
        for inner_panics in [false, true] {
            let timer = FlakyTimer::default();
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (inner, armed) = DropPanics::new(false, &tracker);
            armed.store(inner_panics, SeqCst);
            let mut call = timeout(SEC, inner).with_timer(timer.clone());
            assert!(poll_once(&mut call, &w).is_pending());
            timer.clock.advance(SEC);
            timer.sleep_drop_panics.store(true, SeqCst);
            let first = if inner_panics { "inner drop boom" } else { "sleep drop boom" };
            assert_eq!(poll_panics(&mut call, &w), first);
            timer.sleep_drop_panics.store(false, SeqCst);
            assert_eq!((tracker.live(), timer.clock.sleepers()), (0, 0));
            let refusal = poll_panics(&mut call, &w);
            assert!(refusal.contains("polled after a panic"), "{refusal}");
        }
    }
}

matrix! {
    /// The refusal after a destructor's panic, awaited on every executor.
    async fn a_panicking_destructor_while_resolving_is_refused_when_awaited_again() {
        use futures::FutureExt;
        let tracker = Tracker::new();
        let (inner, _armed) = DropPanics::new(false, &tracker);
        let mut call = timeout(Duration::ZERO, inner).with_timer(ManualClock::new());
        let first = AssertUnwindSafe(&mut call).catch_unwind().await.map(drop).expect_err("the destructor's panic");
        assert_eq!(panic_message(&*first), "inner drop boom");
        let again = AssertUnwindSafe(&mut call).catch_unwind().await.map(drop).expect_err("a refusal");
        let again = panic_message(&*again);
        assert!(again.contains("`Timeout` polled after a panic"), "{again}");
        assert_eq!(tracker.live(), 0);
    }
}

/// Runs the test at `path` (`module_path!()` and its name) again in a child
/// process, where it runs `check`: an abort (a panic while unwinding) would
/// take down the process running the other tests. Fails with the child's
/// output if the child fails.
fn in_child_process(path: &str, check: impl FnOnce()) {
    const CHILD: &str = "AWAITKIT_TIMEOUT_CHILD";
    let name = path.split_once("::").map_or(path, |(_, test)| test);
    if std::env::var(CHILD).is_ok_and(|test| test == name) {
        check();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .output()
        .expect("run the test binary as a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "`{name}` failed in its child process ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
    );
}

/// Regression: dropping a pending `wait` with a deadline (any combinator
/// holding one) whose child and deadline sleep both panic as they are
/// dropped aborted the process: the set is dropped first, and the sleep's
/// panic came during that unwind. The sleep's is discarded, the child's
/// propagates.
#[test]
fn dropping_a_wait_whose_child_and_deadline_sleep_both_panic() {
    in_child_process(
        concat!(
            module_path!(),
            "::dropping_a_wait_whose_child_and_deadline_sleep_both_panic"
        ),
        || {
            let timer = FlakyTimer::default();
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (child, _armed) = DropPanics::new(false, &tracker);
            let mut call = awaitkit::wait([child], awaitkit::ReturnWhen::AllCompleted)
                .with_timeout(SEC)
                .with_timer(timer.clone());
            assert!(poll_once(&mut call, &w).is_pending());
            assert_eq!(timer.clock.sleepers(), 1);
            timer.sleep_drop_panics.store(true, SeqCst);
            let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(call)));
            timer.sleep_drop_panics.store(false, SeqCst);
            let payload = dropped.expect_err("the child's panic propagates");
            assert_eq!(panic_message(&*payload), "inner drop boom");
            assert_eq!((tracker.live(), timer.clock.sleepers()), (0, 0));
        },
    );
}
