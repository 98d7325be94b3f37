//! Real-clock smoke tests of every timer backend (SPEC §5): the default
//! `FuturesTimer` on every executor, `TokioTimer` (feature `tokio`, including
//! paused time and tokio's cooperative budget) and `AsyncIoTimer` (feature
//! `async-io`). Each real sleep is short; correctness of the deadline logic
//! itself is covered on the manual clock in `tests/timeout.rs`.

#[macro_use]
mod common;

use awaitkit::time::{DefaultTimer, FuturesTimer};
use awaitkit::{Elapsed, Timeout, Timer, timeout, timeout_at};
use common::*;
use std::future::{Future, pending, ready};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const SHORT: Duration = Duration::from_millis(20);
/// Generous: a short timeout must fire well within this, even on a loaded
/// CI machine.
const LATE: Duration = Duration::from_secs(2);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Awaits a pending timeout of `SHORT` on `timer` and checks it elapsed at
/// or after its deadline (read after the first poll), and not absurdly late.
async fn elapses_never_early<T: Timer>(timer: T) {
    let start = Instant::now();
    let mut call = pin!(timeout(SHORT, pending::<()>()).with_timer(timer));
    assert!(futures::poll!(call.as_mut()).is_pending());
    let deadline = call.deadline().expect("known after the first pending poll");
    assert!(deadline >= start + SHORT);
    assert_eq!(call.await, Err(Elapsed::new()));
    let now = Instant::now();
    assert!(now >= deadline, "elapsed {:?} early", deadline - now);
    assert!(now - start < LATE, "elapsed {:?} after start", now - start);
}

/// The same with an absolute deadline.
async fn elapses_never_early_at<T: Timer>(timer: T) {
    let deadline = Instant::now() + SHORT;
    let out = timeout_at(deadline, pending::<()>())
        .with_timer(timer)
        .await;
    assert_eq!(out, Err(Elapsed::new()));
    assert!(Instant::now() >= deadline, "elapsed before its deadline");
}

/// An inner future that finishes first wins, on a real clock.
async fn inner_wins<T: Timer + Clone>(timer: T) {
    let soon = timer.sleep_until(timer.now() + 2 * MS);
    assert_eq!(
        timeout(Duration::from_secs(10), soon)
            .with_timer(timer.clone())
            .await,
        Ok(())
    );
    assert_eq!(
        timeout(Duration::ZERO, ready(1)).with_timer(timer).await,
        Ok(1)
    );
}

/// Zero and past deadlines elapse in the first poll, without a wake; an
/// unrepresentable or far deadline neither panics nor fires.
fn edge_deadlines<T: Timer + Clone>(timer: T)
where
    T::Sleep: Unpin,
{
    let w = CountingWaker::new();
    let mut call = timeout(Duration::ZERO, pending::<()>()).with_timer(timer.clone());
    assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    let mut call = timeout_at(timer.now() - MS, pending::<()>()).with_timer(timer.clone());
    assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    assert_eq!(
        (w.wakes(), w.live_clones()),
        (0, 0),
        "zero and past deadlines need no wake"
    );

    let mut call = timeout(Duration::MAX, pending::<()>()).with_timer(timer.clone());
    assert!(poll_once(&mut call, &w).is_pending());
    assert_eq!(call.deadline(), None);
    drop(call);
    if let Some(far) = timer.now().checked_add(1000 * YEAR) {
        let mut call = timeout_at(far, pending::<()>()).with_timer(timer.clone());
        assert!(poll_once(&mut call, &w).is_pending());
        assert_eq!(call.deadline(), Some(far));
    }
    let mut call = timeout(1000 * YEAR, pending::<()>()).with_timer(timer);
    assert!(poll_once(&mut call, &w).is_pending());
    drop(call);
    assert_eq!(w.wakes(), 0, "a far deadline fired");
}

/// Waits (really) until `w` has been woken, at most `LATE`.
fn wait_for_wake(w: &CountingWaker) -> Duration {
    let start = Instant::now();
    while w.wakes() == 0 {
        assert!(start.elapsed() < LATE, "never woken");
        std::thread::sleep(MS);
    }
    start.elapsed()
}

/// Polls once, moves the deadline from an hour to a few ms away, and checks
/// the task is woken without polling again (the timer keeps its waker).
fn reset_wakes_without_a_re_poll<T: Timer>(timer: T)
where
    T::Sleep: Unpin,
{
    let w = CountingWaker::new();
    let mut call = timeout(Duration::from_secs(3600), pending::<()>()).with_timer(timer);
    assert!(poll_once(&mut call, &w).is_pending());
    let at = Instant::now() + 5 * MS;
    Pin::new(&mut call).reset(at);
    wait_for_wake(&w);
    assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
    assert!(Instant::now() >= at);
}

/// `clear_deadline` on a real timer: the running sleep is moved out of the
/// way, and the inner future, slower than the old limit, wins.
fn clear_deadline_lets_a_slow_future_finish<T: Timer>(timer: T)
where
    T::Sleep: Unpin,
{
    let w = CountingWaker::new();
    let slow = futures_timer::Delay::new(40 * MS);
    let mut call = timeout(5 * MS, slow).with_timer(timer);
    assert!(poll_once(&mut call, &w).is_pending());
    Pin::new(&mut call).clear_deadline();
    let start = Instant::now();
    loop {
        match poll_once(&mut call, &w) {
            Poll::Ready(out) => {
                assert_eq!(out, Ok(()));
                break;
            }
            Poll::Pending => {
                assert!(start.elapsed() < Duration::from_secs(10), "never finished");
                std::thread::sleep(MS);
            }
        }
    }
    assert!(!call.expired());
}

/// [`clear_deadline_lets_a_slow_future_finish`] for timers whose sleep is
/// not `Unpin` (tokio's).
#[cfg(feature = "tokio")]
fn clear_deadline_lets_a_slow_future_finish_boxed<T: Timer>(timer: T) {
    let w = CountingWaker::new();
    let slow = futures_timer::Delay::new(40 * MS);
    let mut call = Box::pin(timeout(5 * MS, slow).with_timer(timer));
    assert!(poll_once(&mut call, &w).is_pending());
    call.as_mut().clear_deadline();
    let start = Instant::now();
    while poll_once(&mut call, &w).is_pending() {
        assert!(start.elapsed() < Duration::from_secs(10), "never finished");
        std::thread::sleep(MS);
    }
    assert!(!call.expired());
}

/// Issue 14, item 9: a deadline moved into the past (or to now) elapses at
/// the very next poll, as `Timeout::reset` documents, without waiting for
/// the backend to fire the moved sleep (futures-timer's helper thread, a
/// timer wheel's next tick). So does a deadline moved ahead that has passed
/// by the next poll (`pass` moves `timer`'s clock forward by at least the
/// given duration). Each case is repeated: a helper thread that happens to
/// fire in time must not hide a miss.
fn reset_into_the_past_elapses_at_the_next_poll<T: Timer + Clone>(
    timer: T,
    pass: impl Fn(Duration),
) {
    for round in 0..20 {
        let w = CountingWaker::new();
        let mut call = pin!(timeout(YEAR, pending::<()>()).with_timer(timer.clone()));
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
        call.as_mut().reset(timer.now() - MS);
        assert_eq!(
            poll_once_pinned(call.as_mut(), &w),
            Poll::Ready(Err(Elapsed::new())),
            "round {round}: a past deadline did not elapse at the next poll"
        );

        let mut call = pin!(timeout(YEAR, pending::<()>()).with_timer(timer.clone()));
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
        call.as_mut().reset(timer.now());
        assert_eq!(
            poll_once_pinned(call.as_mut(), &w),
            Poll::Ready(Err(Elapsed::new())),
            "round {round}: a deadline moved to now did not elapse at the next poll"
        );

        // Moved ahead a little; by the next poll it has passed.
        let mut call = pin!(timeout(YEAR, pending::<()>()).with_timer(timer.clone()));
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
        let at = timer.now() + MS;
        call.as_mut().reset(at);
        pass(2 * MS);
        assert!(timer.now() >= at);
        assert_eq!(
            poll_once_pinned(call.as_mut(), &w),
            Poll::Ready(Err(Elapsed::new())),
            "round {round}: a moved deadline that has passed did not elapse at the next poll"
        );

        // The inner future is still polled first.
        let mut call =
            pin!(timeout(YEAR, YieldN::new(1, 'r', &Counter::new())).with_timer(timer.clone()));
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
        call.as_mut().reset(timer.now() - MS);
        assert_eq!(poll_once_pinned(call.as_mut(), &w), Poll::Ready(Ok('r')));

        // A deadline moved ahead that has not passed: still pending. (20 ms
        // at first: 1 ms could expire before the first poll under load.)
        let mut call = pin!(timeout(20 * MS, pending::<()>()).with_timer(timer.clone()));
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
        call.as_mut().reset(timer.now() + YEAR);
        pass(40 * MS);
        assert!(poll_once_pinned(call.as_mut(), &w).is_pending());
    }
}

/// Polls a pinned future once with `waker`.
fn poll_once_pinned<F: std::future::Future>(
    f: Pin<&mut F>,
    waker: &CountingWaker,
) -> Poll<F::Output> {
    f.poll(&mut waker.context())
}

/// Moves a real clock forward: sleeps.
fn real_sleep(d: Duration) {
    std::thread::sleep(d);
}

// ---------------------------------------------------------------------------
// FuturesTimer (the default)
// ---------------------------------------------------------------------------

matrix! {
    async fn default_timer_never_early() {
        elapses_never_early(DefaultTimer).await;
        elapses_never_early_at(FuturesTimer).await;
        // The plain functions use it.
        let start = Instant::now();
        assert_eq!(timeout(SHORT, pending::<()>()).await, Err(Elapsed::new()));
        assert!(start.elapsed() >= SHORT);
        let at = Instant::now() + SHORT;
        assert_eq!(timeout_at(at, pending::<()>()).await, Err(Elapsed::new()));
        assert!(Instant::now() >= at);
    }

    async fn default_timer_inner_wins() {
        inner_wins(FuturesTimer).await;
    }

    /// An inner future that keeps waking itself still times out.
    async fn default_timer_times_out_a_self_waking_future() {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let start = Instant::now();
        let out = timeout(SHORT, Spinner::new(&stop, &polls)).await;
        assert_eq!(out, Err(Elapsed::new()));
        assert!(start.elapsed() >= SHORT);
        assert!(polls.get() > 1);
    }
}

guarded! {
    fn default_timer_edge_deadlines() {
        edge_deadlines(FuturesTimer);
    }

    fn default_timer_reset_wakes_without_a_re_poll() {
        reset_wakes_without_a_re_poll(FuturesTimer);
    }

    fn clear_deadline_on_futures_timer_and_the_default_timer() {
        clear_deadline_lets_a_slow_future_finish(FuturesTimer);
        clear_deadline_lets_a_slow_future_finish(DefaultTimer);
    }

    fn default_timer_reset_into_the_past_elapses_at_the_next_poll() {
        reset_into_the_past_elapses_at_the_next_poll(FuturesTimer, real_sleep);
        reset_into_the_past_elapses_at_the_next_poll(DefaultTimer, real_sleep);
    }

    /// 100 000 timeouts created, polled once and dropped do not clog the
    /// timer thread: a short timeout afterwards still fires on time.
    fn default_timer_after_many_dropped_timeouts() {
        let w = CountingWaker::new();
        for _ in 0..100_000 {
            let mut call = timeout(Duration::from_secs(3600), pending::<()>());
            assert!(poll_once(&mut call, &w).is_pending());
        }
        let mut held: Vec<Timeout<std::future::Pending<()>>> =
            (0..1000).map(|_| timeout(Duration::from_secs(3600), pending())).collect();
        for call in &mut held {
            assert!(poll_once(call, &w).is_pending());
        }
        drop(held);
        let start = Instant::now();
        let out = futures::executor::block_on(timeout(SHORT, pending::<()>()));
        assert_eq!(out, Err(Elapsed::new()));
        let took = start.elapsed();
        assert!(took >= SHORT && took < LATE, "took {took:?}");
        assert_eq!(w.wakes(), 0, "a dropped timeout woke its task");
    }
}

// ---------------------------------------------------------------------------
// A user's waker never kills the default timer's thread (SPEC §1.13)
// ---------------------------------------------------------------------------

/// A user's waker that panics when woken, or (`wake: false`) when its last
/// handle is dropped.
struct Bomb {
    wake: bool,
}

impl std::task::Wake for Bomb {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        assert!(!self.wake, "a user's waker panicked in wake");
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        assert!(self.wake, "a user's waker panicked in drop");
    }
}

/// Polls two timeouts of `timer` with wakers that panic: one woken when its
/// 1 ms deadline passes, on the backend's thread; one dropped (its last
/// handle) when its timeout is dropped, which futures-timer's helper thread
/// did when it held the waker. Then gives the backend time to do both.
fn plant_panicking_wakers<T: Timer>(timer: &T) {
    let fires = Waker::from(Arc::new(Bomb { wake: true }));
    // 20 ms: long enough that a descheduled thread does not see it expired
    // at its first poll (1 ms did, once, under load), short enough to fire
    // during the 100 ms below.
    let mut fired = Box::pin(timeout(20 * MS, pending::<()>()).with_timer(timer));
    assert!(
        fired
            .as_mut()
            .poll(&mut Context::from_waker(&fires))
            .is_pending()
    );
    let drops = Waker::from(Arc::new(Bomb { wake: false }));
    let mut dropped =
        Box::pin(timeout(Duration::from_secs(3600), pending::<()>()).with_timer(timer));
    assert!(
        dropped
            .as_mut()
            .poll(&mut Context::from_waker(&drops))
            .is_pending()
    );
    drop(drops); // the backend holds the last handle
    real_sleep(50 * MS);
    drop(dropped);
    real_sleep(50 * MS);
    drop(fired);
}

/// Runs the test at `path` (`module_path!()` and its name) again in a child
/// process, where it runs `check`: a backend thread killed by a user's waker
/// would break every later timer of the process running the other tests.
/// Fails with the child's output if the child fails.
fn in_child_process(path: &str, check: impl FnOnce()) {
    const CHILD: &str = "AWAITKIT_TIMERS_CHILD";
    let name = path.split_once("::").map_or(path, |(_, test)| test);
    if std::env::var(CHILD).is_ok_and(|test| test == name) {
        check();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("AWAITKIT_TEST_WATCHDOG_SECS", "10")
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

/// Later timeouts on `timer`, on every executor of the matrix.
fn still_fires_on_every_executor<T: Timer + Clone + Send + 'static>(timer: &T)
where
    T::Sleep: Send,
{
    let t = timer.clone();
    run_tokio_current("after: tokio current-thread", move || {
        elapses_never_early(t)
    });
    let t = timer.clone();
    run_tokio_multi("after: tokio multi-thread", move || elapses_never_early(t));
    let t = timer.clone();
    run_smol("after: smol", move || elapses_never_early(t));
    let t = timer.clone();
    run_futures("after: futures", move || elapses_never_early(t));
}

/// Regression: futures-timer's helper thread called the user's waker
/// directly; one panicking waker killed it, and every later timeout in the
/// process panicked with "timer has gone away".
#[test]
fn default_timer_thread_survives_panicking_wakers() {
    in_child_process(
        concat!(
            module_path!(),
            "::default_timer_thread_survives_panicking_wakers"
        ),
        || {
            plant_panicking_wakers(&FuturesTimer);
            #[cfg(feature = "quanta")]
            plant_panicking_wakers(&awaitkit::time::QuantaTimer::new());
            still_fires_on_every_executor(&FuturesTimer);
        },
    );
}

// ---------------------------------------------------------------------------
// TokioTimer
// ---------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod tokio_timer {
    use super::*;
    use awaitkit::time::TokioTimer;

    fn current() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn multi() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    /// An inner future that spends tokio's whole cooperative budget on every
    /// poll (as a busy channel receiver does) and never finishes.
    async fn budget_hog(polls: Counter) {
        loop {
            polls.inc();
            tokio::task::coop::consume_budget().await;
        }
    }

    guarded! {
        fn never_early_on_both_runtimes() {
            current().block_on(async {
                elapses_never_early(TokioTimer).await;
                elapses_never_early_at(TokioTimer).await;
                inner_wins(TokioTimer).await;
            });
            multi().block_on(async {
                tokio::spawn(async {
                    elapses_never_early(TokioTimer).await;
                    elapses_never_early_at(TokioTimer).await;
                })
                .await
                .unwrap();
            });
        }

        fn edge_deadlines_need_no_wake() {
            // `tokio::time::Sleep` is `!Unpin`: box the timeouts.
            current().block_on(async {
                let w = CountingWaker::new();
                let mut call = Box::pin(timeout(Duration::ZERO, pending::<()>()).with_timer(TokioTimer));
                assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
                let mut call = Box::pin(timeout_at(TokioTimer.now() - MS, pending::<()>()).with_timer(TokioTimer));
                assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
                assert_eq!(w.wakes(), 0);
                let mut call = Box::pin(timeout(Duration::MAX, pending::<()>()).with_timer(TokioTimer));
                assert!(poll_once(&mut call, &w).is_pending());
                assert_eq!(call.deadline(), None);
                if let Some(far) = TokioTimer.now().checked_add(1000 * YEAR) {
                    let mut call = Box::pin(timeout_at(far, pending::<()>()).with_timer(TokioTimer));
                    assert!(poll_once(&mut call, &w).is_pending());
                }
                let mut call = Box::pin(timeout(1000 * YEAR, pending::<()>()).with_timer(TokioTimer));
                assert!(poll_once(&mut call, &w).is_pending());
                tokio::time::sleep(2 * MS).await;
                assert_eq!(w.wakes(), 0);
            });
        }

        /// `tokio::time::pause` moves awaitkit's timeouts: an hour passes
        /// with no real waiting.
        fn paused_time_auto_advances() {
            let real = Instant::now();
            paused().block_on(async {
                let start = tokio::time::Instant::now();
                let out = timeout(Duration::from_secs(3600), pending::<()>()).with_timer(TokioTimer).await;
                assert_eq!(out, Err(Elapsed::new()));
                assert!(start.elapsed() >= Duration::from_secs(3600));
            });
            assert!(real.elapsed() < Duration::from_secs(1));
        }

        fn paused_time_advance_is_never_early() {
            paused().block_on(async {
                let hour = Duration::from_secs(3600);
                let mut call = pin!(timeout(hour, pending::<()>()).with_timer(TokioTimer));
                assert!(futures::poll!(call.as_mut()).is_pending());
                let deadline = call.deadline().unwrap();
                assert_eq!(deadline, TokioTimer.now() + hour);
                tokio::time::advance(hour - MS).await;
                assert!(futures::poll!(call.as_mut()).is_pending(), "elapsed before the hour");
                tokio::time::advance(MS).await;
                assert_eq!(futures::poll!(call.as_mut()), Poll::Ready(Err(Elapsed::new())));
                assert!(TokioTimer.now() >= deadline);
            });
        }

        /// A reset deadline wakes the task that last polled, without a re-poll.
        fn clear_deadline_tokio() {
            // A multi-thread runtime's workers drive its timer while this
            // thread polls: the old 5 ms deadline would fire if it were
            // still armed.
            let rt = multi();
            let _inside = rt.enter();
            super::clear_deadline_lets_a_slow_future_finish_boxed(TokioTimer);
        }

        fn paused_time_reset_wakes_without_a_re_poll() {
            paused().block_on(async {
                let w = CountingWaker::new();
                let mut call = Box::pin(timeout(Duration::from_secs(3600), pending::<()>()).with_timer(TokioTimer));
                assert!(poll_once(&mut call, &w).is_pending());
                let at = TokioTimer.now() + Duration::from_secs(1);
                call.as_mut().reset(at);
                assert_eq!(call.deadline(), Some(at));
                tokio::time::advance(Duration::from_millis(999)).await;
                assert_eq!(w.wakes(), 0, "woken before the new deadline");
                tokio::time::advance(MS).await;
                assert_eq!(w.wakes(), 1, "not woken at the new deadline");
                assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));

                // Later: not at the old deadline.
                let mut call = Box::pin(timeout(Duration::from_secs(10), pending::<()>()).with_timer(TokioTimer));
                assert!(poll_once(&mut call, &w).is_pending());
                call.as_mut().reset(TokioTimer.now() + Duration::from_secs(20));
                tokio::time::advance(Duration::from_secs(10)).await;
                assert_eq!(w.wakes(), 1, "woken at the old deadline");
                assert!(poll_once(&mut call, &w).is_pending());
                tokio::time::advance(Duration::from_secs(10)).await;
                assert_eq!(w.wakes(), 2);
                assert_eq!(poll_once(&mut call, &w), Poll::Ready(Err(Elapsed::new())));
            });
        }

        fn reset_into_the_past_elapses_at_the_next_poll_on_tokio() {
            // Real time, the runtime entered but not driving: only the
            // deadline check of the poll can see the deadline has passed.
            let rt = current();
            let _entered = rt.enter();
            reset_into_the_past_elapses_at_the_next_poll(TokioTimer, real_sleep);
            drop(_entered);
            // Paused time, moved by `advance` (from a helper runtime: the
            // check runs outside `block_on`).
            let rt = paused();
            let _entered = rt.enter();
            let pass = |d: Duration| {
                futures::executor::block_on(tokio::time::advance(d));
            };
            reset_into_the_past_elapses_at_the_next_poll(TokioTimer, pass);
        }

        fn a_self_waking_inner_future_times_out() {
            current().block_on(async {
                let stop = Arc::new(AtomicBool::new(false));
                let out = timeout(SHORT, Spinner::new(&stop, &Counter::new())).with_timer(TokioTimer).await;
                assert_eq!(out, Err(Elapsed::new()));
            });
        }

        /// The default timer is not subject to tokio's budget: a hog times out.
        fn a_budget_exhausting_inner_future_times_out_on_the_default_timer() {
            let polls = Counter::new();
            let out = watchdog_for("default timer vs budget hog", Duration::from_secs(5), {
                let polls = polls.clone();
                move || current().block_on(timeout(SHORT, budget_hog(polls)))
            });
            assert_eq!(out, Err(Elapsed::new()));
            assert!(polls.get() > 128, "the hog never exhausted the budget");
        }
    }

    /// tokio's own `tokio::time::timeout` polls its sleep outside the budget
    /// when the inner future spent it; a `TokioTimer` timeout must time out
    /// too, or an always-busy inner future is never cancelled.
    #[test]
    fn a_budget_exhausting_inner_future_times_out_on_the_tokio_timer() {
        let polls = Counter::new();
        let out = watchdog_for(
            "TokioTimer vs budget hog (current-thread)",
            Duration::from_secs(5),
            {
                let polls = polls.clone();
                move || current().block_on(timeout(SHORT, budget_hog(polls)).with_timer(TokioTimer))
            },
        );
        assert_eq!(out, Err(Elapsed::new()));
        eprintln!("hog polls: {}", polls.get());
        assert!(polls.get() > 128, "the hog never exhausted the budget");
        let out = watchdog_for(
            "TokioTimer vs budget hog (multi-thread)",
            Duration::from_secs(5),
            || {
                multi().block_on(async {
                    tokio::spawn(timeout(SHORT, budget_hog(Counter::new())).with_timer(TokioTimer))
                        .await
                        .unwrap()
                })
            },
        );
        assert_eq!(out, Err(Elapsed::new()));
    }

    /// Reference: tokio's own timeout handles the hog (so the hog is a fair
    /// test, not an impossible one).
    #[test]
    fn tokio_own_timeout_handles_the_budget_hog() {
        let out = watchdog_for(
            "tokio::time::timeout vs budget hog",
            Duration::from_secs(5),
            || {
                current().block_on(async {
                    tokio::time::timeout(SHORT, budget_hog(Counter::new())).await
                })
            },
        );
        assert!(out.is_err());
    }
}

// ---------------------------------------------------------------------------
// AsyncIoTimer
// ---------------------------------------------------------------------------

#[cfg(feature = "async-io")]
mod async_io_timer {
    use super::*;
    use awaitkit::time::AsyncIoTimer;

    matrix! {
        /// async-io drives its own reactor, so the timer works everywhere.
        async fn never_early_on_every_executor() {
            elapses_never_early(AsyncIoTimer).await;
            elapses_never_early_at(AsyncIoTimer).await;
            inner_wins(AsyncIoTimer).await;
        }
    }

    guarded! {
        fn edge_deadlines_need_no_wake() {
            edge_deadlines(AsyncIoTimer);
        }

        fn reset_wakes_without_a_re_poll_async_io() {
            reset_wakes_without_a_re_poll(AsyncIoTimer);
        }

        fn clear_deadline_async_io() {
            clear_deadline_lets_a_slow_future_finish(AsyncIoTimer);
        }

        fn reset_into_the_past_elapses_at_the_next_poll_async_io() {
            reset_into_the_past_elapses_at_the_next_poll(AsyncIoTimer, real_sleep);
        }

        fn a_self_waking_inner_future_times_out() {
            let stop = Arc::new(AtomicBool::new(false));
            let out = smol::block_on(timeout(SHORT, Spinner::new(&stop, &Counter::new())).with_timer(AsyncIoTimer));
            assert_eq!(out, Err(Elapsed::new()));
        }
    }
}

// ---------------------------------------------------------------------------
// QuantaTimer
// ---------------------------------------------------------------------------

#[cfg(feature = "quanta")]
mod quanta_timer {
    use super::*;
    use awaitkit::time::QuantaTimer;

    matrix! {
        async fn never_early_on_every_executor() {
            elapses_never_early(QuantaTimer::new()).await;
            inner_wins(QuantaTimer::new()).await;
        }
    }

    guarded! {
        fn edge_deadlines_need_no_wake() {
            edge_deadlines(QuantaTimer::new());
        }

        fn reset_wakes_without_a_re_poll_quanta() {
            reset_wakes_without_a_re_poll(QuantaTimer::new());
        }

        fn clear_deadline_quanta() {
            clear_deadline_lets_a_slow_future_finish(QuantaTimer::new());
        }

        fn reset_into_the_past_elapses_at_the_next_poll_quanta() {
            reset_into_the_past_elapses_at_the_next_poll(QuantaTimer::new(), real_sleep);
        }
    }
}

// ---------------------------------------------------------------------------
// ManualClock
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod manual_clock {
    use super::*;
    use awaitkit::time::ManualClock;

    guarded! {
        fn reset_into_the_past_elapses_at_the_next_poll_manual() {
            let clock = ManualClock::new();
            let c = clock.clone();
            reset_into_the_past_elapses_at_the_next_poll(clock, move |d| c.advance(d));
        }
    }
}
