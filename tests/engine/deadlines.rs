//! Deadlines on `wait` / `try_wait` (`Wait::with_timeout`, `with_deadline`,
//! `WaitOutcome::timed_out`) and on `as_completed`
//! (`AsCompletedUntil`, `TimedOut`), on the manual clock (SPEC §4, §5).

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::time::ManualClock;
use awaitkit::{
    AsCompleted, AsCompletedIndexed, AsCompletedUntil, ReturnWhen, TimedOut, Timer, WaitOutcome,
    as_completed, try_wait, wait,
};
use common::*;
use futures::future::{BoxFuture, join};
use futures::stream::FusedStream;
use futures::{FutureExt, Stream, StreamExt};
use std::future::{pending, ready};
use std::task::Poll;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// A child that finishes with `value` when the clock reaches `after` from
/// now (a sleep on the same clock).
fn at_clock(clock: &ManualClock, after: Duration, value: u8) -> BoxFuture<'static, u8> {
    clock
        .sleep_until(clock.now() + after)
        .map(move |()| value)
        .boxed()
}

/// Drains a stream that must be ready now (the children were completed).
fn drain_now<S: Stream + Unpin>(s: &mut S) -> Vec<S::Item> {
    let w = CountingWaker::new();
    let mut out = Vec::new();
    loop {
        match poll_next_once(s, &w) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("stream not ready after {} items", out.len()),
        }
    }
}

// ---------------------------------------------------------------------------
// wait / try_wait
// ---------------------------------------------------------------------------

guarded! {
    fn wait_all_with_timeout_hands_back_done_and_pending() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(5, &tracker);
        let w = CountingWaker::new();
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(5 * SEC)
            .with_timer(clock.clone());
        assert_eq!(waiting.deadline(), None, "a duration starts at the first poll that waits");
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!(waiting.deadline(), Some(clock.now() + 5 * SEC));
        assert_eq!(clock.sleepers(), 1);

        handles[1].complete();
        handles[3].complete();
        clock.advance(4 * SEC);
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(SEC - Duration::from_nanos(1));
        assert!(poll_once(&mut waiting, &w).is_pending(), "timed out early");
        let wakes = w.wakes();
        clock.advance(Duration::from_nanos(1));
        assert_eq!(w.wakes(), wakes + 1, "not woken at the deadline");
        let Poll::Ready(WaitOutcome { done, pending, timed_out }) = poll_once(&mut waiting, &w) else {
            panic!("not ready at the deadline");
        };
        assert!(timed_out);
        assert_eq!(sorted(done), [(1, 1), (3, 3)]);
        assert_eq!(pending.len(), 3);
        assert_eq!(tracker.live(), 3, "pending children are handed back, not dropped");

        // They kept their progress: fire them and finish the wait.
        for i in [0, 2, 4] {
            handles[i].complete();
        }
        let rest = futures::executor::block_on(pending.wait(ReturnWhen::AllCompleted));
        assert!(!rest.timed_out);
        assert_eq!(sorted(rest.done), [(0, 0), (2, 2), (4, 4)]);
        assert_eq!(total(&counters), 10, "each child: first poll + one per wake");
        assert_eq!(tracker.live(), 0);
        drop(waiting);
        assert_eq!(clock.sleepers(), 0);
    }

    fn wait_all_finishing_first_is_not_timed_out() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(3, &tracker);
        let w = CountingWaker::new();
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(5 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(4 * SEC);
        for h in &handles {
            h.complete();
        }
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!("not done") };
        assert!(!out.timed_out);
        assert_eq!(sorted(out.done), [(0, 0), (1, 1), (2, 2)]);
        assert!(out.pending.is_empty());
        drop(waiting);
        assert_eq!(clock.sleepers(), 0, "no sleeper remains");
        let wakes = w.wakes();
        clock.advance(10 * SEC);
        assert_eq!(w.wakes(), wakes);
    }

    fn wait_ready_at_once_never_starts_a_timer() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut waiting = wait([ready(1), ready(2)], ReturnWhen::AllCompleted)
            .with_timeout(SEC)
            .with_timer(clock.clone());
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out);
        assert_eq!(waiting.deadline(), None);
        assert_eq!(clock.sleepers(), 0);
        // Empty input, with a deadline that has passed.
        let mut waiting = wait(Vec::<BoxFuture<'static, u8>>::new(), ReturnWhen::FirstCompleted)
            .with_deadline(clock.now() - SEC)
            .with_timer(clock.clone());
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out && out.done.is_empty() && out.pending.is_empty());
        assert_eq!((w.wakes(), clock.sleepers()), (0, 0));
    }

    fn wait_zero_timeout_returns_what_is_ready_in_one_poll() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let children: Vec<BoxFuture<'static, u8>> =
            vec![ready(0).boxed(), pending().boxed(), ready(2).boxed(), YieldN::new(1, 3, &Counter::new()).boxed()];
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(Duration::ZERO)
            .with_timer(clock.clone());
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!("a zero timeout waits") };
        assert!(out.timed_out);
        assert_eq!(sorted(out.done), [(0, 0), (2, 2)]);
        let rest: Vec<usize> = out.pending.into_pending().into_iter().map(|(i, _)| i).collect();
        assert_eq!(rest, [1, 3]);
        assert_eq!(clock.sleepers(), 0, "a zero timeout needs no sleep");
    }

    fn wait_past_deadline_still_polls_the_children_once() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let children: Vec<BoxFuture<'static, u8>> = vec![pending().boxed(), ready(1).boxed()];
        let mut waiting = wait(children, ReturnWhen::FirstCompleted)
            .with_deadline(clock.now() - SEC)
            .with_timer(clock.clone());
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out, "FirstCompleted was met in that poll");
        assert_eq!(out.done, [(1, 1)]);

        let mut waiting = wait([pending::<u8>(), pending()], ReturnWhen::FirstCompleted)
            .with_deadline(clock.now())
            .with_timer(clock.clone());
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(out.timed_out && out.done.is_empty());
        assert_eq!(out.pending.len(), 2);
    }

    fn wait_first_completed_with_a_deadline() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let w = CountingWaker::new();

        // Nothing finishes: timed out with nothing done.
        let (_handles, _counters, children) = parked_set(4, &tracker);
        let mut waiting = wait(children, ReturnWhen::FirstCompleted)
            .with_timeout(2 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(2 * SEC);
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(out.timed_out && out.done.is_empty());
        assert_eq!(out.pending.len(), 4);
        drop((out, waiting));
        assert_eq!(tracker.live(), 0);

        // One finishes first.
        let (handles, _counters, children) = parked_set(4, &tracker);
        let mut waiting = wait(children, ReturnWhen::FirstCompleted)
            .with_timeout(2 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(SEC);
        handles[2].complete();
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out);
        assert_eq!(out.done, [(2, 2)]);
        assert_eq!(out.pending.len(), 3);
    }

    fn try_wait_first_error_with_a_deadline() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let make = |tracker: &Tracker| {
            let mut handles = Vec::new();
            let mut children = Vec::new();
            for i in 0..4u8 {
                let value: Result<u8, String> = if i == 3 { Err(format!("child {i} failed")) } else { Ok(i) };
                let (h, c) = parked(value, &Counter::new(), tracker);
                handles.push(h);
                children.push(c);
            }
            (handles, children)
        };

        // Only successes before the deadline: timed out, successes done.
        let (handles, children) = make(&tracker);
        let mut waiting = try_wait(children, ReturnWhen::FirstError)
            .with_timeout(5 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        handles[0].complete();
        handles[1].complete();
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(5 * SEC);
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(out.timed_out);
        assert_eq!(sorted(out.done), [(0, Ok(0)), (1, Ok(1))]);
        assert_eq!(out.pending.len(), 2);
        drop((out.pending, waiting));

        // An error before the deadline ends the wait, not timed out.
        let (handles, children) = make(&tracker);
        let mut waiting = try_wait(children, ReturnWhen::FirstError)
            .with_timeout(5 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(4 * SEC);
        handles[3].complete();
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out);
        assert_eq!(out.done, [(3, Err("child 3 failed".to_owned()))]);
        drop((out, waiting));
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
    }

    fn wait_child_finishing_at_the_deadline_counts_as_done() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let children = vec![at_clock(&clock, 2 * SEC, 0), at_clock(&clock, 3 * SEC, 1), at_clock(&clock, 2 * SEC, 2)];
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(2 * SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!(clock.sleepers(), 4);
        clock.advance(2 * SEC);
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(out.timed_out);
        assert_eq!(sorted(out.done), [(0, 0), (2, 2)], "children are polled before the deadline check");
        assert_eq!(out.pending.len(), 1);

        // Everything finishes at the deadline: not timed out.
        let children = vec![at_clock(&clock, SEC, 7)];
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        clock.advance(SEC);
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out);
        assert_eq!(out.done, [(0, 7)]);
    }

    fn wait_duration_max_never_times_out() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(2, &tracker);
        let w = CountingWaker::new();
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(Duration::MAX)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!(waiting.deadline(), None);
        for _ in 0..3 {
            clock.advance(100 * YEAR);
            assert!(poll_once(&mut waiting, &w).is_pending());
        }
        handles[0].complete();
        handles[1].complete();
        let Poll::Ready(out) = poll_once(&mut waiting, &w) else { panic!() };
        assert!(!out.timed_out);
        assert_eq!(out.done.len(), 2);
    }

    fn dropping_a_timed_wait_drops_every_child_and_its_timer() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(10, &tracker);
        let w = CountingWaker::new();
        let mut waiting = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(SEC)
            .with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        handles[4].complete();
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!((tracker.live(), clock.sleepers()), (9, 1));
        drop(waiting);
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
        assert!(handles.iter().all(|h| !h.has_waker()));
    }

    fn wait_builder_order_does_not_matter() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let at = clock.now() + 3 * SEC;
        let a = wait([pending::<()>()], ReturnWhen::AllCompleted).with_deadline(at).with_timer(clock.clone());
        let b = wait([pending::<()>()], ReturnWhen::AllCompleted).with_timer(clock.clone()).with_deadline(at);
        let c = wait([pending::<()>()], ReturnWhen::AllCompleted)
            .with_timer(clock.clone())
            .with_timeout(3 * SEC);
        let d = wait([pending::<()>()], ReturnWhen::AllCompleted)
            .with_timeout(SEC) // replaced by the next call
            .with_timer(clock.clone())
            .with_timeout(3 * SEC);
        let mut all = [a, b, c, d];
        assert_eq!(all[0].deadline(), Some(at));
        assert_eq!(all[1].deadline(), Some(at));
        for waiting in &mut all {
            assert!(poll_once(waiting, &w).is_pending());
            assert_eq!(waiting.deadline(), Some(at));
        }
        assert_eq!(clock.sleepers(), 4);
        clock.advance(3 * SEC - Duration::from_nanos(1));
        assert!(all.iter_mut().all(|waiting| poll_once(waiting, &w).is_pending()));
        clock.advance(Duration::from_nanos(1));
        for waiting in &mut all {
            let Poll::Ready(out) = poll_once(waiting, &w) else { panic!() };
            assert!(out.timed_out);
        }
        assert!(format!("{:?}", all[0]).contains("Wait"));
    }

    fn a_plain_wait_is_never_timed_out() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut waiting = wait([pending::<()>()], ReturnWhen::FirstCompleted).with_timer(clock.clone());
        assert!(poll_once(&mut waiting, &w).is_pending());
        assert_eq!((waiting.deadline(), clock.sleepers()), (None, 0));
        clock.advance(100 * YEAR);
        assert!(poll_once(&mut waiting, &w).is_pending());
    }
}

#[test]
#[should_panic(expected = "polled after completion")]
fn timed_out_wait_polled_again_panics() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let mut waiting = wait([pending::<()>()], ReturnWhen::AllCompleted)
        .with_timeout(Duration::ZERO)
        .with_timer(clock);
    assert!(poll_once(&mut waiting, &w).is_ready());
    let _ = poll_once(&mut waiting, &w);
}

// ---------------------------------------------------------------------------
// as_completed(...).with_timeout / with_deadline
// ---------------------------------------------------------------------------

/// The next item of a stream that must be ready now.
#[track_caller]
fn next_now<S: Stream + Unpin>(s: &mut S, w: &CountingWaker) -> Option<S::Item> {
    match poll_next_once(s, w) {
        Poll::Ready(item) => item,
        Poll::Pending => panic!("stream not ready"),
    }
}

/// The next item, which must be `Ok`.
#[track_caller]
fn ok_now<S, T, P>(s: &mut S, w: &CountingWaker) -> T
where
    S: Stream<Item = Result<T, TimedOut<P>>> + Unpin,
{
    match next_now(s, w) {
        Some(Ok(v)) => v,
        Some(Err(_)) => panic!("timed out instead of yielding an item"),
        None => panic!("ended instead of yielding an item"),
    }
}

/// The next item, which must be the `TimedOut` marker.
#[track_caller]
fn timed_out_now<S, T, P>(s: &mut S, w: &CountingWaker) -> P
where
    S: Stream<Item = Result<T, TimedOut<P>>> + Unpin,
{
    match next_now(s, w) {
        Some(Err(TimedOut { pending })) => pending,
        Some(Ok(_)) => panic!("an item instead of the deadline"),
        None => panic!("ended instead of the deadline"),
    }
}

guarded! {
    fn as_completed_yields_until_the_deadline_then_one_timed_out() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(5, &tracker);
        let w = CountingWaker::new();
        let mut stream = as_completed(children).with_timeout(5 * SEC).with_timer(clock.clone());
        assert_eq!(stream.deadline(), None);
        assert!(!stream.is_terminated());
        assert!(poll_next_once(&mut stream, &w).is_pending());
        assert_eq!(stream.deadline(), Some(clock.now() + 5 * SEC));
        assert_eq!(stream.size_hint(), (0, Some(6)));

        handles[3].complete();
        assert_eq!(ok_now(&mut stream, &w), 3);
        clock.advance(SEC);
        handles[0].complete();
        assert_eq!(ok_now(&mut stream, &w), 0);
        assert!(poll_next_once(&mut stream, &w).is_pending());
        clock.advance(4 * SEC - Duration::from_nanos(1));
        assert!(poll_next_once(&mut stream, &w).is_pending(), "timed out early");
        let wakes = w.wakes();
        clock.advance(Duration::from_nanos(1));
        assert_eq!(w.wakes(), wakes + 1, "not woken at the deadline");

        let mut pending = timed_out_now(&mut stream, &w);
        assert_eq!(pending.len(), 3);
        assert!(stream.is_terminated());
        for _ in 0..3 {
            assert!(next_now(&mut stream, &w).is_none(), "None forever after the deadline");
        }
        assert_eq!(stream.size_hint(), (0, Some(0)));
        assert!(stream.get_mut().is_none());
        assert_eq!(tracker.live(), 3, "unfinished children are handed back alive");

        // Still completable, with their progress.
        for i in [1, 2, 4] {
            handles[i].complete();
        }
        let mut rest = drain_now(&mut pending);
        rest.sort();
        assert_eq!(rest, [1, 2, 4]);
        assert_eq!(total(&counters), 10, "first poll + one per wake each");
        assert_eq!(tracker.live(), 0);
        drop(stream);
        assert_eq!(clock.sleepers(), 0);
    }

    fn as_completed_all_finishing_first_never_times_out() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(3, &tracker);
        let w = CountingWaker::new();
        let mut stream = as_completed(children).with_timeout(5 * SEC).with_timer(clock.clone());
        assert!(poll_next_once(&mut stream, &w).is_pending());
        let mut got = Vec::new();
        for h in handles.iter().rev() {
            h.complete();
            got.push(ok_now(&mut stream, &w));
        }
        assert_eq!(got, [2, 1, 0]);
        assert!(next_now(&mut stream, &w).is_none());
        assert!(stream.is_terminated());
        clock.advance(10 * SEC);
        assert!(next_now(&mut stream, &w).is_none(), "no late TimedOut after the end");
        drop(stream);
        assert_eq!(clock.sleepers(), 0);
    }

    fn as_completed_indexed_with_a_deadline() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(4, &tracker);
        let w = CountingWaker::new();
        let at = clock.now() + 2 * SEC;
        let mut stream: AsCompletedUntil<AsCompletedIndexed<Parked<usize>>, ManualClock> =
            as_completed(children).indexed().with_deadline(at).with_timer(clock.clone());
        assert_eq!(stream.deadline(), Some(at));
        assert!(poll_next_once(&mut stream, &w).is_pending());
        handles[2].complete();
        assert_eq!(ok_now(&mut stream, &w), (2, 2));
        clock.advance_to(at);
        let mut pending = timed_out_now(&mut stream, &w);
        assert_eq!(pending.get_mut().len(), 3);
        handles[1].complete();
        assert_eq!(next_now(&mut pending, &w), Some((1, 1)), "indices survive the hand-back");
        drop(pending);
        assert_eq!(tracker.live(), 0);
        assert!(next_now(&mut stream, &w).is_none());
    }

    fn timed_out_displays_the_unfinished_count() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut stream = as_completed([pending::<u8>(), pending(), pending()])
            .with_deadline(clock.now())
            .with_timer(clock.clone());
        let Some(Err(timed_out)) = next_now(&mut stream, &w) else { panic!() };
        assert_eq!(timed_out.to_string(), "deadline has elapsed with 3 future(s) unfinished");
        let err: &dyn std::error::Error = &timed_out;
        assert!(err.source().is_none());
        assert!(format!("{timed_out:?}").contains("TimedOut"));

        let mut stream = as_completed([pending::<u8>()]).indexed().with_timeout(Duration::ZERO).with_timer(clock.clone());
        let Some(Err(timed_out)) = next_now(&mut stream, &w) else { panic!() };
        assert_eq!(timed_out.to_string(), "deadline has elapsed with 1 future(s) unfinished");
    }

    fn as_completed_empty_set_ends_at_once_without_a_timer() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut stream = as_completed(Vec::<BoxFuture<'static, u8>>::new())
            .with_timeout(SEC)
            .with_timer(clock.clone());
        assert!(next_now(&mut stream, &w).is_none());
        assert!(stream.is_terminated());
        assert!(next_now(&mut stream, &w).is_none());
        let mut stream = AsCompleted::<BoxFuture<'static, u8>>::new()
            .indexed()
            .with_deadline(clock.now() - SEC)
            .with_timer(clock.clone());
        assert!(next_now(&mut stream, &w).is_none(), "empty: None, not TimedOut, even past the deadline");
        assert_eq!((clock.sleepers(), w.wakes()), (0, 0));
    }

    fn as_completed_ready_children_come_before_a_past_deadline() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let children: Vec<BoxFuture<'static, u8>> = vec![pending().boxed(), ready(1).boxed(), ready(2).boxed()];
        let mut stream = as_completed(children).with_deadline(clock.now() - SEC).with_timer(clock.clone());
        let mut first = vec![ok_now(&mut stream, &w), ok_now(&mut stream, &w)];
        first.sort();
        assert_eq!(first, [1, 2]);
        assert_eq!(timed_out_now(&mut stream, &w).len(), 1);
        assert!(next_now(&mut stream, &w).is_none());
        assert_eq!(clock.sleepers(), 0);
    }

    fn as_completed_child_finishing_at_the_deadline_is_yielded_first() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let children = vec![at_clock(&clock, 2 * SEC, 0), at_clock(&clock, 3 * SEC, 1)];
        let mut stream = as_completed(children).with_timeout(2 * SEC).with_timer(clock.clone());
        assert!(poll_next_once(&mut stream, &w).is_pending());
        clock.advance(2 * SEC);
        assert_eq!(ok_now(&mut stream, &w), 0, "the child due at the deadline is done");
        let pending = timed_out_now(&mut stream, &w);
        assert_eq!(pending.len(), 1);
    }

    fn as_completed_duration_max_never_times_out() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(1, &tracker);
        let w = CountingWaker::new();
        let mut stream = as_completed(children).with_timeout(Duration::MAX).with_timer(clock.clone());
        assert!(poll_next_once(&mut stream, &w).is_pending());
        assert_eq!(stream.deadline(), None);
        for _ in 0..3 {
            clock.advance(100 * YEAR);
            assert!(poll_next_once(&mut stream, &w).is_pending());
        }
        handles[0].complete();
        assert_eq!(ok_now(&mut stream, &w), 0);
        assert!(next_now(&mut stream, &w).is_none());
    }

    fn dropping_a_timed_stream_drops_every_child_and_its_timer() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(8, &tracker);
        let w = CountingWaker::new();
        let mut stream = as_completed(children).indexed().with_timeout(SEC).with_timer(clock.clone());
        assert!(poll_next_once(&mut stream, &w).is_pending());
        handles[5].complete();
        assert_eq!(ok_now(&mut stream, &w), (5, 5));
        assert_eq!((tracker.live(), clock.sleepers()), (7, 1));
        drop(stream);
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
        clock.advance(SEC);
        assert_eq!(w.live_clones(), 0);
    }

    fn the_wrapped_set_can_grow_and_be_taken_back() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut stream = AsCompleted::new().with_timeout(SEC).with_timer(clock.clone());
        assert_eq!(stream.get_mut().unwrap().push(ready(1u8).boxed()), 0);
        assert_eq!(stream.get_mut().unwrap().push(pending().boxed()), 1);
        assert_eq!(ok_now(&mut stream, &w), 1);
        assert!(poll_next_once(&mut stream, &w).is_pending());
        assert!(format!("{stream:?}").contains("AsCompletedUntil"));
        let set = stream.into_inner().expect("not handed back yet");
        assert_eq!(set.len(), 1);
        drop(set);
        assert_eq!(clock.sleepers(), 0);
    }
}

/// A stream that ended (every child finished before the deadline) should not
/// keep a timer registered until the deadline: with a real timer that is a
/// live timer entry and a spurious wake-up of the task much later.
#[test]
fn a_finished_stream_releases_its_timer() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let tracker = Tracker::new();
    let (handles, _counters, children) = parked_set(1, &tracker);
    let mut stream = as_completed(children)
        .with_timeout(3600 * SEC)
        .with_timer(clock.clone());
    assert!(poll_next_once(&mut stream, &w).is_pending());
    handles[0].complete();
    assert_eq!(ok_now(&mut stream, &w), 0);
    assert!(next_now(&mut stream, &w).is_none());
    assert!(stream.is_terminated());
    let wakes = w.wakes();
    clock.advance(3600 * SEC);
    assert_eq!(
        w.wakes(),
        wakes,
        "a terminated stream woke its task at the old deadline"
    );
}

// ---------------------------------------------------------------------------
// Across tasks and threads
// ---------------------------------------------------------------------------

matrix! {
    /// Children finished from another thread, then the deadline passed from
    /// that thread too: whatever the interleaving, the finished children are
    /// done (they are polled before the deadline is checked) and the others
    /// pending.
    async fn wait_with_a_deadline_woken_from_another_thread() {
        let clock = ManualClock::new();
        let tracker = Tracker::new();
        let (handles, _counters, children) = parked_set(4, &tracker);
        let thread = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                while clock.sleepers() == 0 || !handles.iter().all(ParkHandle::has_waker) {
                    std::thread::yield_now();
                }
                handles[1].complete();
                handles[2].complete();
                clock.advance(5 * SEC);
                handles
            })
        };
        let out = wait(children, ReturnWhen::AllCompleted)
            .with_timeout(5 * SEC)
            .with_timer(clock.clone())
            .await;
        assert!(out.timed_out);
        assert_eq!(sorted(out.done), [(1, 1), (2, 2)]);
        assert_eq!(out.pending.len(), 2);
        let handles = thread.join().unwrap();
        handles[0].complete();
        handles[3].complete();
        let rest = out.pending.wait(ReturnWhen::AllCompleted).await;
        assert_eq!(sorted(rest.done), [(0, 0), (3, 3)]);
        assert_eq!((tracker.live(), clock.sleepers()), (0, 0));
    }

    /// A stream consumed in one branch while a sibling advances the clock.
    async fn as_completed_deadline_advanced_from_a_sibling() {
        let clock = ManualClock::new();
        let children = vec![at_clock(&clock, SEC, 1), at_clock(&clock, 3 * SEC, 3), at_clock(&clock, 2 * SEC, 2)];
        let consume = async {
            let mut stream = as_completed(children).with_timeout(5 * SEC / 2).with_timer(clock.clone());
            let mut got = Vec::new();
            let mut unfinished = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(v) => got.push(v),
                    Err(TimedOut { pending }) => unfinished = Some(pending),
                }
            }
            (got, unfinished.expect("the deadline passed"))
        };
        let drive = async {
            sleepers_reach(&clock, 4).await;
            for _ in 0..6 {
                clock.advance(SEC / 2);
                for _ in 0..3 {
                    yield_now().await;
                }
            }
        };
        let ((got, mut pending), ()) = join(consume, drive).await;
        assert_eq!(got, [1, 2]);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.next().await, Some(3), "already due: finishes at once");
        assert_eq!(clock.sleepers(), 0);
    }

    /// The real-clock default timer on a wait, briefly.
    async fn wait_with_a_real_deadline() {
        let start = std::time::Instant::now();
        let children: Vec<BoxFuture<'static, u8>> = vec![ready(0).boxed(), pending().boxed()];
        let out = wait(children, ReturnWhen::AllCompleted).with_timeout(Duration::from_millis(20)).await;
        assert!(out.timed_out);
        assert_eq!(out.done, [(0, 0)]);
        assert!(start.elapsed() >= Duration::from_millis(20));
        let mut stream = as_completed([pending::<()>()]).with_timeout(Duration::from_millis(20));
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(stream.next().await.is_none());
    }
}

/// `Timer` is used through `&T` and `Arc<T>` too.
#[test]
fn deadlines_through_borrowed_and_shared_timers() {
    let clock = ManualClock::new();
    let w = CountingWaker::new();
    let mut waiting = wait([pending::<()>()], ReturnWhen::AllCompleted)
        .with_timeout(SEC)
        .with_timer(&clock);
    assert!(poll_once(&mut waiting, &w).is_pending());
    let shared = std::sync::Arc::new(clock.clone());
    let mut stream = as_completed([pending::<()>()])
        .with_timeout(SEC)
        .with_timer(shared.clone());
    assert!(poll_next_once(&mut stream, &w).is_pending());
    assert_eq!(clock.sleepers(), 2);
    assert_eq!(shared.now(), clock.now());
    clock.advance(SEC);
    assert!(matches!(poll_once(&mut waiting, &w), Poll::Ready(out) if out.timed_out));
    assert!(matches!(next_now(&mut stream, &w), Some(Err(_))));
}
