//! `staggered_race` (asyncio's `staggered_race`): attempt i + 1 starts when
//! attempt i fails or `delay` after attempt i started, whichever is first —
//! with exact start times on the manual clock; the first `Ok` wins and the
//! rest are dropped at once; every error in start order; lazy factories;
//! `Duration::ZERO` / `Duration::MAX`; cancel at any point; panics in
//! factories, polls and destructors; only woken children polled.
//!
//! The tests without a timer run under every feature set; the ones on the
//! `ManualClock` need `test-util`.

use crate::common;

use awaitkit::{StaggeredRace, staggered_race};
use common::*;
use futures::future::{BoxFuture, FusedFuture};
use std::future::{Future, Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

type Outcome = Result<u32, String>;
type Attempt = Parked<Outcome>;
type Factory = Box<dyn FnOnce() -> Attempt + Send>;
type ReadyFactory = fn() -> Ready<Result<u8, u8>>;
type Replica = Box<dyn FnOnce() -> BoxFuture<'static, Result<&'static str, ()>> + Send>;

/// What the factories did: when each attempt started (by the clock it is
/// given), the handle that finishes it, polls of the attempts, attempts and
/// factories alive.
#[derive(Clone, Default)]
struct Log {
    starts: Arc<Mutex<Vec<Duration>>>,
    handles: Arc<Mutex<Vec<ParkHandle>>>,
    polls: Counter,
    /// Attempts alive (started, not dropped).
    attempts: Tracker,
    /// Factories alive (not called, not dropped).
    factories: Tracker,
}

impl Log {
    fn new() -> Self {
        Self::default()
    }

    /// `n` factories; attempt `i` parks until its handle completes it, then
    /// ends with `outcome(i)`. `now` is read when a factory is called.
    fn factories(
        &self,
        n: usize,
        now: impl Fn() -> Duration + Clone + Send + 'static,
        outcome: impl Fn(usize) -> Outcome,
    ) -> Vec<Factory> {
        let base = self.started();
        (0..n)
            .map(|i| {
                let log = self.clone();
                let now = now.clone();
                let out = outcome(i);
                let token = self.factories.token();
                Box::new(move || {
                    drop(token);
                    let (handle, child) = parked(out, &log.polls, &log.attempts);
                    let mut handles = log.handles.lock().unwrap();
                    assert_eq!(handles.len(), base + i, "factories are called in order");
                    handles.push(handle);
                    log.starts.lock().unwrap().push(now());
                    child
                }) as Factory
            })
            .collect()
    }

    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    fn starts(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }

    fn started(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    fn handle(&self, i: usize) -> ParkHandle {
        self.handles.lock().unwrap()[i].clone()
    }
}

fn no_clock() -> Duration {
    Duration::ZERO
}

/// Polls until a poll neither completes nor wakes the task itself (a race
/// that started an attempt wakes itself so that its next poll polls it).
fn drive<F: Future + Unpin>(race: &mut F, w: &CountingWaker) -> Poll<F::Output> {
    for _ in 0..10_000 {
        let before = w.wakes();
        let p = poll_once(race, w);
        if p.is_ready() || w.wakes() == before {
            return p;
        }
    }
    panic!("the race kept waking itself");
}

fn errors(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e{i}")).collect()
}

/// A future that panics when dropped (after its token is gone).
struct PanicOnDrop<F> {
    inner: F,
    msg: &'static str,
}

impl<F: Future + Unpin> Future for PanicOnDrop<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl<F> Drop for PanicOnDrop<F> {
    fn drop(&mut self) {
        panic!("{}", self.msg);
    }
}

// ---------------------------------------------------------------------------
// Without a timer: empty input, Duration::ZERO, Duration::MAX, laziness,
// panics, polls = wakes + N, auto traits
// ---------------------------------------------------------------------------

matrix! {
    /// No factories: `Err(vec![])` at the first poll.
    async fn empty_input_fails_at_once_with_no_errors() {
        let none: Vec<ReadyFactory> = Vec::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(none, Duration::from_secs(1));
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Err(vec![])));
        assert!(race.is_terminated());
        assert_eq!(w.wakes(), 0);
        let none: Vec<ReadyFactory> = Vec::new();
        assert_eq!(staggered_race(none, Duration::ZERO).await, Err(vec![]));
    }

    /// Attempts that fail at once: each failure starts the next one (one per
    /// poll), every error comes back in start order.
    async fn immediate_failures_start_the_next_and_all_errors_come_back_in_order() {
        let calls = Counter::new();
        let factories = (0..4).map(|i| {
            let calls = calls.clone();
            move || {
                calls.inc();
                ready(Err::<u8, _>(format!("e{i}")))
            }
        });
        let w = CountingWaker::new();
        let mut race = staggered_race(factories, Duration::MAX);
        for i in 1..4 {
            assert!(poll_once(&mut race, &w).is_pending());
            assert_eq!(calls.get(), i + 1, "the failure of {} started the next", i - 1);
            assert_eq!(w.wakes(), i, "the race woke itself to poll it");
        }
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Err(errors(0..4))));
        assert!(race.is_terminated());
    }

    /// An attempt that succeeds on its first poll wins in the poll that
    /// started it; later factories are never called.
    async fn an_attempt_ready_at_once_wins_in_the_poll_that_started_it() {
        let log = Log::new();
        let calls = Counter::new();
        let c = calls.clone();
        let first = move || {
            c.inc();
            ready(Ok::<u32, String>(7))
        };
        let rest: Vec<Box<dyn FnOnce() -> Ready<Outcome> + Send>> =
            vec![Box::new(first), Box::new(|| -> Ready<Outcome> { panic!("never called") })];
        let w = CountingWaker::new();
        let mut race = staggered_race(rest, Duration::ZERO);
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((0, 7))));
        assert_eq!(calls.get(), 1);
        assert_eq!(log.started(), 0);
    }

    /// `Duration::ZERO`: every attempt starts without any timer, one per
    /// poll of the race.
    async fn zero_delay_starts_one_attempt_per_poll() {
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(log.factories(4, no_clock, |i| Ok(i as u32)), Duration::ZERO);
        // Each poll polls the attempt started last and starts the next.
        for n in 1..=4 {
            assert!(poll_once(&mut race, &w).is_pending());
            assert_eq!(log.started(), (n + 1).min(4));
            assert_eq!(race.started(), (n + 1).min(4));
            assert_eq!(log.polls.get(), n);
        }
        assert_eq!(w.wakes(), 3, "woke itself after each start but the first");
        assert!(poll_once(&mut race, &w).is_pending());
        assert_eq!(w.wakes(), 3, "the iterator is exhausted: nothing more to start");
        assert_eq!(log.polls.get(), 4, "each attempt polled once");
        log.handle(2).complete();
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((2, 2))));
        assert_eq!(log.attempts.live(), 0);
    }

    /// `Duration::MAX`: no overflow, no timer; only a failure of the latest
    /// attempt starts the next — a sequential fallback.
    async fn max_delay_starts_only_on_failure() {
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(log.factories(3, no_clock, |i| Err(format!("e{i}"))), Duration::MAX);
        assert!(drive(&mut race, &w).is_pending());
        for _ in 0..5 {
            assert!(drive(&mut race, &w).is_pending());
        }
        assert_eq!(log.started(), 1);
        log.handle(0).complete();
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!(log.started(), 2);
        log.handle(1).complete();
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!(log.started(), 3);
        log.handle(2).complete();
        assert_eq!(drive(&mut race, &w), Poll::Ready(Err(errors(0..3))));
    }

    /// The first `Ok` wins; the other running attempts and the factories
    /// not yet called are dropped before the output is returned.
    async fn the_win_drops_everything_else_at_once() {
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(log.factories(6, no_clock, |i| if i == 1 { Err("e1".into()) } else { Ok(i as u32 * 10) }), Duration::ZERO);
        for _ in 0..3 {
            assert!(poll_once(&mut race, &w).is_pending());
        }
        assert_eq!((log.started(), log.attempts.live(), log.factories.live()), (4, 4, 2));
        log.handle(2).complete();
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((2, 20))));
        assert_eq!(log.attempts.live(), 0, "the others were dropped with the result");
        assert_eq!(log.factories.live(), 0, "so were the factories never called");
        assert_eq!(log.started(), 4);
        assert!(race.is_terminated());
    }

    /// Spurious wakes poll only the woken attempt; polls of the race with no
    /// wake at all poll nothing and start nothing (polls = wakes + N).
    async fn only_woken_attempts_are_polled() {
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(log.factories(3, no_clock, |i| Ok(i as u32)), Duration::ZERO);
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!(log.polls.get(), 3);
        let mut wakes = 0;
        for (i, n) in [(0, 3), (2, 2), (1, 1)] {
            for _ in 0..n {
                assert!(log.handle(i).wake());
                wakes += 1;
                assert!(poll_once(&mut race, &w).is_pending());
            }
        }
        for _ in 0..10 {
            assert!(poll_once(&mut race, &w).is_pending(), "spurious polls of the race");
        }
        assert_eq!(log.polls.get(), 3 + wakes, "polls = wakes + N");
        assert_eq!(log.started(), 3);
        log.handle(1).complete();
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((1, 1))));
        assert_eq!(log.polls.get(), 3 + wakes + 1);
    }

    /// One poll polls each attempt at most once, even when attempts wake
    /// themselves and a failure starts the next one in the same poll.
    async fn one_poll_polls_each_attempt_at_most_once() {
        let polls = Counter::new();
        let spin = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, p) = (spin.clone(), polls.clone());
        let factories: Vec<Box<dyn FnOnce() -> BoxFuture<'static, Outcome> + Send>> = vec![
            Box::new(move || Box::pin(async move {
                Spinner::new(&s, &p).await;
                Ok(0)
            })),
            Box::new(|| Box::pin(async { Err("e1".to_string()) })),
            Box::new(|| Box::pin(std::future::pending())),
        ];
        let w = CountingWaker::new();
        let mut race = staggered_race(factories, Duration::ZERO);
        for expected in 1..=6 {
            assert!(poll_once(&mut race, &w).is_pending());
            assert_eq!(polls.get(), expected, "the spinner is polled once per poll of the race");
        }
        assert_eq!(race.started(), 3);
        spin.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((0, 0))));
    }

    /// The factories are taken lazily: an endless iterator works, and is
    /// asked for exactly as many factories as attempts started.
    async fn an_endless_iterator_is_consumed_lazily() {
        let taken = Counter::new();
        let t = taken.clone();
        let mut i = 0u32;
        let factories = std::iter::from_fn(move || {
            t.inc();
            let n = i;
            i += 1;
            Some(move || async move { if n == 5 { Ok(n) } else { Err(n) } })
        });
        let won = staggered_race(factories, Duration::MAX).await;
        assert_eq!(won, Ok((5, 5)));
        assert_eq!(taken.get(), 6);
    }

    /// An iterator whose `size_hint` says it is empty while it is not: the
    /// race only uses the hint to skip a timer, and still starts them all.
    async fn a_lying_size_hint_loses_no_factory() {
        struct Liar(std::vec::IntoIter<Factory>);
        impl Iterator for Liar {
            type Item = Factory;
            fn next(&mut self) -> Option<Factory> {
                self.0.next()
            }
            fn size_hint(&self) -> (usize, Option<usize>) {
                (0, Some(0))
            }
        }
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(Liar(log.factories(3, no_clock, |i| Err(format!("e{i}"))).into_iter()), Duration::MAX);
        for i in 0..3 {
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.started(), i + 1);
            log.handle(i).complete();
        }
        assert_eq!(drive(&mut race, &w), Poll::Ready(Err(errors(0..3))));
    }

    /// Cancel = drop at any point: every started attempt dropped exactly
    /// once, the factories not called dropped and never called.
    async fn cancel_after_every_poll_without_a_timer() {
        for stop in 0..=6 {
            let log = Log::new();
            let w = CountingWaker::new();
            let mut race = staggered_race(log.factories(5, no_clock, |i| if i < 3 { Err(format!("e{i}")) } else { Ok(9) }), Duration::MAX);
            for step in 0..stop {
                if drive(&mut race, &w).is_ready() {
                    break;
                }
                log.handle(step).complete();
            }
            let started = log.started();
            drop(race);
            assert_eq!(log.attempts.live(), 0, "stop {stop}: every attempt dropped");
            assert_eq!(log.attempts.created(), started, "stop {stop}: none started by the drop");
            assert_eq!(log.factories.live(), 0, "stop {stop}: every factory dropped");
            assert_eq!(log.started(), started);
        }
    }

    /// A real executor, the default timer and a short delay: the hedge wins.
    async fn a_hedged_request_on_the_default_timer() {
        let started = std::time::Instant::now();
        let replicas: Vec<Replica> = vec![
            Box::new(|| Box::pin(std::future::pending())),
            Box::new(|| Box::pin(async { Ok("replica 1") })),
        ];
        let out = staggered_race(replicas, Duration::from_millis(5)).await;
        assert_eq!(out, Ok((1, "replica 1")));
        assert!(started.elapsed() >= Duration::from_millis(5), "never early");
    }
}

matrix_local! {
    /// `!Send` attempts (and factories) work; so does awaiting it.
    async fn not_send_attempts_work() {
        let shared = std::rc::Rc::new(std::cell::Cell::new(0));
        let factories = (0..3).map(|i| {
            let shared = shared.clone();
            move || async move {
                yield_now().await;
                shared.set(shared.get() + 1);
                if i == 2 { Ok(std::rc::Rc::new(i)) } else { Err(std::rc::Rc::new(i)) }
            }
        });
        let (index, value) = staggered_race(factories, Duration::ZERO).await.unwrap();
        assert_eq!((index, *value), (2, 2));
    }
}

// --- panics ----------------------------------------------------------------

type Boxed = BoxFuture<'static, Outcome>;
type BoxedFactory = Box<dyn FnOnce() -> Boxed + Send>;

async fn panics(msg: &'static str) -> Outcome {
    panic!("{msg}")
}

/// A parked attempt, boxed.
fn boxed(log: &Log, out: Outcome) -> BoxedFactory {
    let log = log.clone();
    Box::new(move || {
        let (handle, child) = parked(out, &log.polls, &log.attempts);
        log.handles.lock().unwrap().push(handle);
        Box::pin(child) as Boxed
    })
}

#[track_caller]
fn assert_refuses<F: Future + Unpin + FusedFuture>(race: &mut F, w: &CountingWaker) {
    assert!(!race.is_terminated());
    let Err(again) = catch_unwind(AssertUnwindSafe(|| poll_once(race, w).is_ready())) else {
        panic!("a poisoned race was polled");
    };
    let msg = panic_message(&*again);
    assert!(
        msg.contains("`StaggeredRace` polled after a panic"),
        "{msg}"
    );
}

guarded! {
    /// A factory that panics: the panic propagates, the attempts already
    /// started keep their state until the race is dropped, and the race
    /// refuses further polls.
    fn a_panicking_factory_propagates_and_poisons() {
        let log = Log::new();
        let w = CountingWaker::new();
        let factories: Vec<BoxedFactory> = vec![
            boxed(&log, Err("e0".into())),
            Box::new(|| -> Boxed { panic!("factory 1 panics") }),
            boxed(&log, Ok(2)),
        ];
        let mut race = staggered_race(factories, Duration::MAX);
        assert!(drive(&mut race, &w).is_pending());
        log.handle(0).complete();
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut race, &w))).unwrap_err();
        assert_eq!(panic_message(&*err), "factory 1 panics");
        assert_refuses(&mut race, &w);
        assert_eq!(log.started(), 1, "the factory after it was never called");
        drop(race);
        assert_eq!(log.attempts.live(), 0);
    }

    /// The first factory panics: nothing started, nothing leaks.
    fn a_panicking_first_factory() {
        let w = CountingWaker::new();
        let factories: Vec<fn() -> Ready<Outcome>> = vec![|| -> Ready<Outcome> { panic!("first") }];
        let mut race = staggered_race(factories, Duration::ZERO);
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut race, &w))).unwrap_err();
        assert_eq!(panic_message(&*err), "first");
        assert_refuses(&mut race, &w);
    }

    /// An attempt that panics in `poll`: propagates; every attempt is still
    /// dropped exactly once, when the race is.
    fn a_panicking_attempt_propagates_and_poisons() {
        let log = Log::new();
        let w = CountingWaker::new();
        let factories: Vec<BoxedFactory> = vec![
            boxed(&log, Ok(0)),
            Box::new(|| Box::pin(panics("attempt 1 panics")) as Boxed),
            boxed(&log, Ok(2)),
        ];
        let mut race = staggered_race(factories, Duration::ZERO);
        assert!(poll_once(&mut race, &w).is_pending());
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut race, &w))).unwrap_err();
        assert_eq!(panic_message(&*err), "attempt 1 panics");
        assert_refuses(&mut race, &w);
        assert_eq!(log.attempts.live(), 1);
        drop(race);
        assert_eq!(log.attempts.live(), 0);
        assert_eq!(log.attempts.created(), 1, "the third was never started");
    }

    /// An attempt dropped on the win panics in its destructor: the others
    /// are still dropped, the panic propagates (the win is lost with it),
    /// and the race refuses further polls.
    fn a_panicking_destructor_at_the_win() {
        let log = Log::new();
        let w = CountingWaker::new();
        let (l0, l2) = (log.clone(), log.clone());
        let factories: Vec<BoxedFactory> = vec![
            boxed(&log, Ok(0)),
            Box::new(move || {
                let (handle, child) = parked(Ok(1), &l0.polls, &l0.attempts);
                l0.handles.lock().unwrap().push(handle);
                Box::pin(PanicOnDrop { inner: child, msg: "attempt 1 drop panics" })
            }),
            Box::new(move || {
                let (handle, child) = parked(Ok(2), &l2.polls, &l2.attempts);
                l2.handles.lock().unwrap().push(handle);
                Box::pin(child)
            }),
            boxed(&log, Ok(3)),
        ];
        let mut race = staggered_race(factories, Duration::ZERO);
        for _ in 0..4 {
            assert!(poll_once(&mut race, &w).is_pending());
        }
        assert_eq!(log.attempts.live(), 4);
        log.handle(3).complete();
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut race, &w))).unwrap_err();
        assert_eq!(panic_message(&*err), "attempt 1 drop panics");
        assert_eq!(log.attempts.live(), 0, "every other attempt dropped once");
        assert_refuses(&mut race, &w);
        drop(race);
        assert_eq!(log.attempts.live(), 0);
    }

    /// Dropping the race while an attempt's destructor panics: the others
    /// are still dropped and the panic propagates from the drop.
    fn a_panicking_destructor_at_cancel() {
        let log = Log::new();
        let w = CountingWaker::new();
        let l = log.clone();
        let factories: Vec<BoxedFactory> = vec![
            boxed(&log, Ok(0)),
            Box::new(move || {
                let (handle, child) = parked(Ok(1), &l.polls, &l.attempts);
                l.handles.lock().unwrap().push(handle);
                Box::pin(PanicOnDrop { inner: child, msg: "drop panics" })
            }),
            boxed(&log, Ok(2)),
        ];
        let mut race = staggered_race(factories, Duration::ZERO);
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!(log.attempts.live(), 3);
        let err = catch_unwind(AssertUnwindSafe(move || drop(race))).unwrap_err();
        assert_eq!(panic_message(&*err), "drop panics");
        assert_eq!(log.attempts.live(), 0);
    }
}

#[test]
#[should_panic(expected = "`StaggeredRace` polled after completion")]
fn polling_after_completion_panics() {
    let w = CountingWaker::new();
    let mut race: StaggeredRace<_, _> = staggered_race([|| ready(Ok::<u8, u8>(1))], Duration::ZERO);
    assert_eq!(poll_once(&mut race, &w), Poll::Ready(Ok((0, 1))));
    assert!(race.is_terminated());
    let _ = poll_once(&mut race, &w);
}

#[test]
#[should_panic(expected = "`StaggeredRace::with_timer` after the race started")]
fn with_timer_after_the_first_poll_panics() {
    let w = CountingWaker::new();
    let mut race = staggered_race(
        [|| std::future::pending::<Result<u8, u8>>()],
        Duration::ZERO,
    );
    assert!(poll_once(&mut race, &w).is_pending());
    drop(race.with_timer(awaitkit::time::FuturesTimer));
}

#[test]
fn debug_names_the_race() {
    let race = staggered_race([|| ready(Ok::<u8, u8>(1))], Duration::from_millis(3));
    let s = format!("{race:?}");
    assert!(s.starts_with("StaggeredRace"), "{s}");
    assert!(s.contains("delay: 3ms"), "{s}");
}

#[test]
fn auto_traits() {
    fn send_sync_unpin<T: Send + Sync + Unpin>(_: &T) {}
    fn unpin<T: Unpin>(_: &T) {}
    let race = staggered_race([|| ready(Ok::<u8, String>(1))], Duration::ZERO);
    send_sync_unpin(&race);
    // `!Unpin` attempts: still `Unpin` (they are pinned inside).
    let pinned = staggered_race([|| async { Ok::<u8, u8>(1) }], Duration::ZERO);
    unpin(&pinned);
    let rc = std::rc::Rc::new(1);
    let not_send = staggered_race([move || ready(Ok::<_, u8>(rc))], Duration::ZERO);
    unpin(&not_send);
}

// ---------------------------------------------------------------------------
// On the manual clock: exact start times
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod clock {
    use super::*;
    use awaitkit::Timer;
    use awaitkit::time::{ManualClock, ManualSleep};
    use std::time::Instant;

    /// The delay: divisible by 3, so `D / 3` is exact.
    const D: Duration = Duration::from_millis(300);

    fn at(clock: &ManualClock) -> impl Fn() -> Duration + Clone + Send + 'static {
        let clock = clock.clone();
        move || clock.elapsed()
    }

    type Race = StaggeredRace<std::vec::IntoIter<Factory>, Attempt, ManualClock>;

    fn race(log: &Log, clock: &ManualClock, n: usize, outcome: impl Fn(usize) -> Outcome) -> Race {
        staggered_race(log.factories(n, at(clock), outcome), D).with_timer(clock.clone())
    }

    /// The manual clock, counting its reads.
    #[derive(Clone)]
    struct Reads {
        clock: ManualClock,
        reads: Counter,
    }

    impl Timer for Reads {
        type Sleep = ManualSleep;
        fn now(&self) -> Instant {
            self.reads.inc();
            self.clock.now()
        }
        fn sleep_until(&self, deadline: Instant) -> ManualSleep {
            self.clock.sleep_until(deadline)
        }
        fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
            self.clock.reset(sleep, deadline)
        }
    }

    matrix! {
        /// Every attempt hangs: they start at 0, d, 2d; after the last one
        /// no timer is left (the iterator says it is empty).
        async fn hanging_attempts_start_a_delay_apart() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let t0 = clock.now();
            let mut race = race(&log, &clock, 3, |i| Ok(i as u32));
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO]);
            assert_eq!((clock.sleepers(), clock.next_deadline()), (1, Some(t0 + D)));
            clock.advance(D - Duration::from_nanos(1));
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.started(), 1, "never early");
            clock.advance(Duration::from_nanos(1));
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D]);
            assert_eq!((clock.sleepers(), clock.next_deadline()), (1, Some(t0 + 2 * D)));
            clock.advance(D);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D]);
            assert_eq!(clock.sleepers(), 0, "nothing left to start: no timer");
            clock.advance(100 * D);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.started(), 3);
            assert_eq!(log.polls.get(), 3, "nothing was woken after the first polls");
            drop(race);
            assert_eq!(log.attempts.live(), 0);
        }

        /// Attempt 0 fails at d/3: attempt 1 starts then, attempt 2 a delay
        /// after attempt 1 (d/3 + d).
        async fn a_failure_of_the_latest_starts_the_next_at_once() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let t0 = clock.now();
            let mut race = race(&log, &clock, 3, |i| Err(format!("e{i}")));
            assert!(drive(&mut race, &w).is_pending());
            clock.advance(D / 3);
            log.handle(0).complete();
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D / 3]);
            assert_eq!(clock.next_deadline(), Some(t0 + D / 3 + D), "the delay counts from attempt 1's start");
            assert_eq!(clock.sleepers(), 1, "the old sleep was dropped");
            clock.advance(D - D / 3);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.started(), 2, "not at d: attempt 0's schedule is gone");
            clock.advance(D / 3);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D / 3, D / 3 + D]);
            log.handle(2).complete();
            log.handle(1).complete();
            assert_eq!(drive(&mut race, &w), Poll::Ready(Err(errors(0..3))));
            assert_eq!(clock.sleepers(), 0);
        }

        /// asyncio's rule: an *older* attempt failing while a newer one runs
        /// starts nothing; the newer one's delay keeps counting.
        async fn a_failure_of_an_older_attempt_starts_nothing() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let mut race = race(&log, &clock, 4, |i| Err(format!("e{i}")));
            assert!(drive(&mut race, &w).is_pending());
            clock.advance(D);
            assert!(drive(&mut race, &w).is_pending());
            clock.advance(D / 3);
            log.handle(0).complete(); // older than attempt 1
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D]);
            clock.advance(D - D / 3);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D]);
            clock.advance(D / 3);
            log.handle(2).complete(); // the latest: attempt 3 at once
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D, 2 * D + D / 3]);
            assert_eq!(clock.sleepers(), 0, "the iterator is exhausted");
            log.handle(3).complete();
            assert!(drive(&mut race, &w).is_pending(), "attempt 1 still runs");
            log.handle(1).complete();
            assert_eq!(drive(&mut race, &w), Poll::Ready(Err(errors(0..4))));
        }

        /// The latest attempt fails at the very instant its delay ends: one
        /// next attempt starts, not two; the schedule goes on from there.
        async fn a_failure_and_the_delay_at_the_same_instant_start_one_attempt() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let mut race = race(&log, &clock, 4, |i| Err(format!("e{i}")));
            assert!(drive(&mut race, &w).is_pending());
            clock.advance(D); // the timer wakes the race...
            log.handle(0).complete(); // ...and attempt 0 fails, before the race's poll
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D]);
            clock.advance(D);
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D]);
            assert_eq!(clock.sleepers(), 1);
        }

        /// A success at the very instant the delay ends wins without starting
        /// (or calling) the next attempt.
        async fn a_success_and_the_delay_at_the_same_instant() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let mut race = race(&log, &clock, 3, |i| Ok(i as u32));
            assert!(drive(&mut race, &w).is_pending());
            clock.advance(D);
            log.handle(0).complete();
            assert_eq!(drive(&mut race, &w), Poll::Ready(Ok((0, 0))));
            assert_eq!(log.started(), 1);
            assert_eq!((log.attempts.live(), log.factories.live(), clock.sleepers()), (0, 0, 0));
        }

        /// The win drops every other attempt and the sleep before returning;
        /// factories not yet called never are.
        async fn the_win_drops_the_rest_and_the_timer() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let mut race = race(&log, &clock, 5, |i| Ok(i as u32 * 10));
            assert!(drive(&mut race, &w).is_pending());
            for _ in 0..2 {
                clock.advance(D);
                assert!(drive(&mut race, &w).is_pending());
            }
            assert_eq!((log.attempts.live(), clock.sleepers()), (3, 1));
            clock.advance(D / 3);
            log.handle(1).complete();
            assert_eq!(drive(&mut race, &w), Poll::Ready(Ok((1, 10))));
            assert_eq!(log.attempts.live(), 0, "dropped before the output was returned");
            assert_eq!(log.factories.live(), 0);
            assert_eq!(clock.sleepers(), 0, "no timer left");
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D]);
            clock.advance(10 * D);
            assert_eq!(log.started(), 3);
        }

        /// No factories: `Err(vec![])` at the first poll, the clock never
        /// read, no timer armed.
        async fn empty_input_reads_no_clock_and_arms_no_timer() {
            let clock = ManualClock::new();
            let timer = Reads { clock: clock.clone(), reads: Counter::new() };
            let none: Vec<fn() -> Ready<Outcome>> = Vec::new();
            let w = CountingWaker::new();
            let mut race = staggered_race(none, D).with_timer(timer.clone());
            assert_eq!(poll_once(&mut race, &w), Poll::Ready(Err(vec![])));
            assert_eq!((timer.reads.get(), clock.sleepers(), w.wakes()), (0, 0, 0));
        }

        /// The clock is read once per attempt started (and when the timer
        /// checks a sleep), never by polls that start nothing.
        async fn the_clock_is_read_once_per_start() {
            let clock = ManualClock::new();
            let timer = Reads { clock: clock.clone(), reads: Counter::new() };
            let log = Log::new();
            let w = CountingWaker::new();
            let mut race = staggered_race(log.factories(3, at(&clock), |i| Ok(i as u32)), D).with_timer(timer.clone());
            assert!(drive(&mut race, &w).is_pending());
            let after_first = timer.reads.get();
            for _ in 0..5 {
                assert!(poll_once(&mut race, &w).is_pending());
            }
            assert_eq!(timer.reads.get(), after_first, "spurious polls read no clock");
            log.handle(0).wake();
            assert!(drive(&mut race, &w).is_pending());
            assert_eq!(timer.reads.get(), after_first, "a child's wake reads no clock");
        }

        /// `Duration::MAX` on the manual clock: no timer ever, no overflow
        /// however far the clock moves; failures alone start the next.
        async fn max_delay_arms_no_timer() {
            let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
            let year = Duration::from_secs(365 * 86_400);
            for delay in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::MAX - Duration::from_nanos(1)] {
                let mut race = staggered_race(log.factories(2, at(&clock), |i| Err(format!("e{i}"))), delay).with_timer(clock.clone());
                let base = log.started();
                assert!(drive(&mut race, &w).is_pending());
                assert_eq!(clock.sleepers(), 0);
                clock.advance(100 * year);
                assert!(drive(&mut race, &w).is_pending());
                assert_eq!(log.started(), base + 1);
                log.handle(base).complete();
                assert!(drive(&mut race, &w).is_pending());
                assert_eq!(log.started(), base + 2);
                assert_eq!(log.starts()[base + 1], log.starts()[base] + 100 * year);
                log.handle(base + 1).complete();
                assert_eq!(drive(&mut race, &w), Poll::Ready(Err(errors(0..2))));
            }
        }

        /// Cancel = drop after every step of a schedule: every started attempt
        /// dropped exactly once, no factory called by the drop, and no timer
        /// left registered.
        async fn cancel_after_every_poll_leaves_no_timer() {
            // Step k: what happens before the k-th drive.
            fn step(k: usize, clock: &ManualClock, log: &Log) {
                match k {
                    0 => {}
                    1 => clock.advance(D),                           // attempt 1 (delay)
                    2 => { log.handle(0).complete(); }               // older failure
                    3 => { clock.advance(D / 3); log.handle(1).complete(); } // attempt 2 (failure)
                    4 => clock.advance(D),                           // attempt 3 (delay)
                    5 => { log.handle(3).complete(); }               // the win
                    _ => unreachable!(),
                }
            }
            for stop in 0..=6 {
                let (clock, log, w) = (ManualClock::new(), Log::new(), CountingWaker::new());
                let mut race = race(&log, &clock, 6, |i| if i < 3 { Err(format!("e{i}")) } else { Ok(i as u32) });
                for k in 0..stop {
                    step(k, &clock, &log);
                    if drive(&mut race, &w).is_ready() {
                        assert_eq!(k, 5);
                    }
                }
                let started = log.started();
                assert_eq!(started, [0, 1, 2, 2, 3, 4, 4][stop]);
                drop(race);
                assert_eq!(log.attempts.live(), 0, "stop {stop}: every attempt dropped");
                assert_eq!(log.attempts.created(), started, "stop {stop}");
                assert_eq!(log.factories.live(), 0, "stop {stop}: the rest of the factories dropped");
                assert_eq!(clock.sleepers(), 0, "stop {stop}: no timer left registered");
                clock.advance(10 * D);
                assert_eq!(log.started(), started, "stop {stop}: nothing starts after the drop");
            }
        }

        /// Awaited on a real executor while another thread moves the clock:
        /// the timer's wakes come from that thread.
        async fn awaited_with_the_clock_moved_from_another_thread() {
            let clock = ManualClock::new();
            let t0 = clock.now();
            let log = Log::new();
            let mut factories = log.factories(2, at(&clock), |i| Ok(i as u32));
            factories.push(Box::new({
                let log = log.clone();
                let clock = clock.clone();
                move || {
                    let (handle, child) = parked(Ok(2), &log.polls, &log.attempts);
                    handle.complete();
                    log.handles.lock().unwrap().push(handle);
                    log.starts.lock().unwrap().push(clock.elapsed());
                    child
                }
            }));
            let mover = {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    for k in 1..=2u32 {
                        let due = t0 + k * D;
                        let start = std::time::Instant::now();
                        while clock.next_deadline() != Some(due) {
                            assert!(start.elapsed() < Duration::from_secs(20), "no sleep until {k}d");
                            std::thread::yield_now();
                        }
                        clock.advance(D);
                    }
                })
            };
            let out = staggered_race(factories, D).with_timer(clock.clone()).await;
            mover.join().unwrap();
            assert_eq!(out, Ok((2, 2)));
            assert_eq!(log.starts(), [Duration::ZERO, D, 2 * D]);
            assert_eq!((log.attempts.live(), clock.sleepers()), (0, 0));
        }
    }
}

// ---------------------------------------------------------------------------
// Attacks: wakers that panic, wakes from other threads, stale wakers, paused
// tokio time
// ---------------------------------------------------------------------------

/// A waker whose `wake` panics.
struct PanickyWake;

impl std::task::Wake for PanickyWake {
    fn wake(self: Arc<Self>) {
        panic!("wake panics");
    }
}

guarded! {
    /// The task's waker panics when the race wakes itself after starting an
    /// attempt: the panic propagates, but the race's state was settled, so
    /// the next poll goes on and polls the new attempt.
    fn a_waker_panicking_on_the_self_wake_leaves_the_race_usable() {
        let log = Log::new();
        let mut race = staggered_race(log.factories(3, no_clock, |i| Ok(i as u32)), Duration::ZERO);
        let bad = std::task::Waker::from(Arc::new(PanickyWake));
        let err = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut race).poll(&mut Context::from_waker(&bad)).is_ready()
        }))
        .unwrap_err();
        assert_eq!(panic_message(&*err), "wake panics");
        assert_eq!((log.started(), log.polls.get()), (2, 1));
        assert!(!race.is_terminated());
        let w = CountingWaker::new();
        assert!(drive(&mut race, &w).is_pending(), "not refused");
        assert_eq!((log.started(), log.polls.get()), (3, 3), "attempt 1 was polled, then 2");
        log.handle(1).complete();
        assert_eq!(drive(&mut race, &w), Poll::Ready(Ok((1, 1))));
        assert_eq!(log.attempts.live(), 0);
    }

    /// A finished attempt's waker, kept and woken later, polls nothing: the
    /// next attempt (which may have taken its slot) is not polled by it.
    fn a_stale_waker_of_a_failed_attempt_polls_no_newcomer() {
        let stash = WakerStash::default();
        let log = Log::new();
        let s = stash.clone();
        let mut later = log.factories(1, no_clock, |_| Ok(1)).into_iter();
        let parked_one = later.next().unwrap();
        let factories: Vec<BoxedFactory> = vec![
            Box::new(move || Box::pin(Stasher::new(&s, Err::<u32, String>("e0".into()))) as Boxed),
            Box::new(move || Box::pin(parked_one()) as Boxed),
        ];
        let w = CountingWaker::new();
        let mut race = staggered_race(factories, Duration::MAX);
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!((stash.len(), log.started(), log.polls.get()), (1, 1, 1));
        for _ in 0..5 {
            stash.wake_all_by_ref();
            assert!(drive(&mut race, &w).is_pending());
        }
        assert_eq!(log.polls.get(), 1, "stale wakes polled nobody");
        log.handle(0).complete();
        assert_eq!(drive(&mut race, &w), Poll::Ready(Ok((1, 1))));
    }
}

matrix! {
    /// Attempts woken from another thread, often while the race polls.
    async fn attempts_woken_from_another_thread() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        for round in 0..20 {
            let (t, p) = (thread.clone(), polls.clone());
            let factories = (0..4).map(move |i| {
                let (t, p) = (t.clone(), p.clone());
                move || RemoteYield::new(3 - i % 3, if i == 2 { Ok(i) } else { Err(i) }, &t, &p)
            });
            let before = polls.get();
            let out = staggered_race(factories, Duration::ZERO).await;
            assert_eq!(out, Ok((2, 2)), "round {round}");
            // Each poll but the last hands out a waker and counts one down:
            // attempt i is polled at most `3 - i % 3 + 1` times.
            assert!(polls.get() - before <= 4 + 3 + 2 + 4, "round {round}");
        }
    }
}

#[cfg(feature = "test-util")]
guarded! {
    /// `Duration::ZERO` on the manual clock: no sleep is ever registered.
    fn zero_delay_registers_no_sleep() {
        let clock = awaitkit::time::ManualClock::new();
        let log = Log::new();
        let w = CountingWaker::new();
        let mut race = staggered_race(log.factories(5, no_clock, |i| Ok(i as u32)), Duration::ZERO)
            .with_timer(clock.clone());
        for _ in 0..6 {
            assert!(poll_once(&mut race, &w).is_pending());
            assert_eq!(clock.sleepers(), 0);
        }
        assert_eq!(log.started(), 5);
    }
}

/// With the `tokio` feature the default timer is tokio's inside a runtime:
/// under paused time the schedule is exact, and `Duration::MAX` arms no
/// timer for auto-advance to jump to.
#[cfg(feature = "tokio")]
#[test]
fn paused_tokio_time_gives_the_exact_schedule() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let factories = (0..4u64).map(|i| {
            let starts = starts.clone();
            move || {
                starts.lock().unwrap().push(t0.elapsed());
                async move {
                    // Attempt 0 hangs; 1 (at 1 s) fails 300 ms later, which
                    // starts 2 at once; 3 starts a delay after 2 (2.3 s);
                    // 2 wins at 3.3 s, cancelling 0 and 3.
                    match i {
                        0 => std::future::pending().await,
                        1 => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Err(i)
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(2000)).await;
                            Ok(i)
                        }
                    }
                }
            }
        });
        let out = staggered_race(factories, Duration::from_secs(1)).await;
        assert_eq!(out, Ok((2, 2)));
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            *starts.lock().unwrap(),
            [ms(0), ms(1000), ms(1300), ms(2300)]
        );
        assert_eq!(t0.elapsed(), ms(3300));

        // Only failures start the next attempt, however far time jumps.
        let t1 = tokio::time::Instant::now();
        let sequential = (0..3u64).map(|i| {
            move || async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                if i == 2 { Ok(i) } else { Err(i) }
            }
        });
        assert_eq!(staggered_race(sequential, Duration::MAX).await, Ok((2, 2)));
        assert_eq!(t1.elapsed(), Duration::from_secs(3 * 3600));
    });
}

/// A value whose destructor panics with its message (after its token is
/// released, as fields drop during the unwind).
struct Bomb(&'static str, #[allow(dead_code)] Token);

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

guarded! {
    /// At the win, an attempt, a factory never called, a stored error and
    /// the winning value itself all panic when dropped: each is dropped
    /// once (no second panic while unwinding, which would abort), and the
    /// first panic propagates.
    fn every_destructor_at_the_win_may_panic() {
        let tracker = Tracker::new();
        let log = Log::new();
        type BombFactory = Box<dyn FnOnce() -> BoxFuture<'static, Result<Bomb, Bomb>> + Send>;
        let (t0, t2, t3) = (tracker.clone(), tracker.clone(), tracker.token());
        let l = log.clone();
        let factories: Vec<BombFactory> = vec![
            Box::new(move || Box::pin(async move { Err(Bomb("error drop panics", t0.token())) })),
            Box::new(move || {
                let (handle, child) = parked((), &l.polls, &l.attempts);
                l.handles.lock().unwrap().push(handle);
                Box::pin(PanicOnDrop {
                    inner: Box::pin(async move {
                        child.await;
                        Err(Bomb("unreachable", Tracker::new().token()))
                    }),
                    msg: "attempt drop panics",
                })
            }),
            Box::new(move || Box::pin(async move { Ok(Bomb("value drop panics", t2.token())) })),
            {
                let bomb = Bomb("factory drop panics", t3);
                Box::new(move || {
                    drop(bomb);
                    unreachable!("never called")
                })
            },
        ];
        let w = CountingWaker::new();
        let mut race = staggered_race(factories, Duration::ZERO);
        assert!(poll_once(&mut race, &w).is_pending()); // 0 fails: 1 starts
        assert!(poll_once(&mut race, &w).is_pending()); // 1 runs; 2 starts
        assert_eq!(tracker.live(), 2, "the stored error, the factory's bomb");
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut race, &w).is_ready())).unwrap_err();
        assert_eq!(panic_message(&*err), "attempt drop panics");
        assert_eq!(tracker.live(), 0, "error, factory and value all dropped");
        assert_eq!(log.attempts.live(), 0);
        assert_refuses(&mut race, &w);
    }
}

guarded! {
    /// Dropping the race while an attempt, a factory never called and a
    /// stored error all panic when dropped: each is dropped once, no abort,
    /// the first panic (the attempt's) propagates from the drop.
    fn every_destructor_at_cancel_may_panic() {
        let tracker = Tracker::new();
        let log = Log::new();
        type BombFactory = Box<dyn FnOnce() -> BoxFuture<'static, Result<u8, Bomb>> + Send>;
        let t0 = tracker.clone();
        let l = log.clone();
        let factories: Vec<BombFactory> = vec![
            Box::new(move || Box::pin(async move { Err(Bomb("error drop panics", t0.token())) })),
            Box::new(move || {
                let (handle, child) = parked(Ok(1), &l.polls, &l.attempts);
                l.handles.lock().unwrap().push(handle);
                Box::pin(PanicOnDrop { inner: child, msg: "attempt drop panics" })
            }),
            {
                let bomb = Bomb("factory drop panics", tracker.token());
                Box::new(move || {
                    drop(bomb);
                    unreachable!("never called")
                })
            },
        ];
        let w = CountingWaker::new();
        let mut race = staggered_race(factories, Duration::MAX);
        assert!(drive(&mut race, &w).is_pending());
        assert_eq!((log.attempts.live(), tracker.live()), (1, 2));
        let err = catch_unwind(AssertUnwindSafe(move || drop(race))).unwrap_err();
        assert_eq!(panic_message(&*err), "attempt drop panics");
        assert_eq!((log.attempts.live(), tracker.live()), (0, 0));
    }
}
