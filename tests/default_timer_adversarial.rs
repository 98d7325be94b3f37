//! Adversarial cases for the `DefaultTimer` on tokio, each failing on its
//! first version (df3119a): limiter waiters whose timer was armed on an idle
//! current-thread runtime, wakers that panic on tokio's driver thread, the
//! time-driver probe inside a panic hook, sleeps polled after their runtime
//! shut down or first polled elsewhere, clocks of two runtimes mixed.

#![cfg(feature = "tokio")]
#![allow(clippy::async_yields_async)]

mod common;

use awaitkit::time::{DefaultTimer, FuturesTimer, Timer};
use awaitkit::{RateLimiter, TimeoutExt};
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(100);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// 1. The limiter's driver sleep stays on a runtime nobody drives
// ---------------------------------------------------------------------------

/// A waiter armed in runtime `first` (which is kept alive, but no longer
/// driven: its `block_on` returned) then awaited in another runtime or on
/// `futures::executor`. A queued waiter never drives, and the limiter's
/// driver sleep stays on `first`'s tokio timer, which nobody turns: the
/// waiter hangs. Same test with `with_timer(FuturesTimer)` passes.
fn waiter_outlives_driving_of(elsewhere: &'static str, explicit_futures_timer: bool) {
    common::watchdog_for(elsewhere, Duration::from_secs(5), move || {
        if explicit_futures_timer {
            body(
                elsewhere,
                RateLimiter::new(1, PERIOD).with_timer(FuturesTimer),
            );
        } else {
            body(elsewhere, RateLimiter::new(1, PERIOD));
        }
    });
}

fn body<T>(elsewhere: &str, limiter: RateLimiter<T>)
where
    T: Timer + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    {
        {
            let first = current_thread();
            let mut waiter = first.block_on(async {
                limiter.acquire().await;
                let mut waiter = Box::pin(limiter.acquire());
                assert!(futures::poll!(waiter.as_mut()).is_pending());
                waiter
            });
            // `first` stays alive (not dropped), as a runtime kept for
            // `block_on` calls does.
            let start = Instant::now();
            if elsewhere == "no runtime" {
                futures::executor::block_on(waiter.as_mut());
            } else {
                current_thread().block_on(waiter.as_mut());
            }
            assert!(start.elapsed() < Duration::from_secs(2));
            drop(first);
        }
    }
}

#[test]
fn limiter_waiter_is_served_when_the_arming_runtime_is_idle_other_runtime() {
    waiter_outlives_driving_of("another runtime", false);
}

#[test]
fn limiter_waiter_is_served_when_the_arming_runtime_is_idle_no_runtime() {
    waiter_outlives_driving_of("no runtime", false);
}

#[test]
fn control_limiter_waiter_with_futures_timer() {
    waiter_outlives_driving_of("another runtime", true);
    waiter_outlives_driving_of("no runtime", true);
}

/// Two threads, each with its own current-thread runtime calling
/// `block_on` per request (the "sync wrapper" pattern), share a limiter.
/// Thread Y's waiter is the head and arms the driver on Y's runtime; X's
/// waiter queues behind it. When Y is granted, the driver re-arms for X's
/// waiter *on Y's runtime* (reset + poll on Y's thread) and Y's `block_on`
/// returns: X waits forever.
#[test]
fn limiter_shared_by_two_block_on_threads_serves_both() {
    common::watchdog_for("two threads", Duration::from_secs(5), || {
        let limiter = std::sync::Arc::new(RateLimiter::new(1, PERIOD));
        let (queued_tx, queued_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let y = {
            let limiter = limiter.clone();
            std::thread::spawn(move || {
                let rt = current_thread();
                rt.block_on(async {
                    limiter.acquire().await; // granted at once
                    let mut w = Box::pin(limiter.acquire());
                    assert!(futures::poll!(w.as_mut()).is_pending()); // head: arms on rt
                    queued_tx.send(()).unwrap();
                    w.await;
                });
                // Y keeps its runtime for its next request.
                let _ = done_rx.recv();
                drop(rt);
            })
        };
        queued_rx.recv().unwrap();
        let x = current_thread();
        let start = Instant::now();
        x.block_on(limiter.acquire());
        let waited = start.elapsed();
        done_tx.send(()).unwrap();
        y.join().unwrap();
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    });
}

// ---------------------------------------------------------------------------
// 2. Tokio sleeps polled after their runtime shut down
// ---------------------------------------------------------------------------

/// A sleep armed on a runtime, fired at its deadline, and polled again
/// after that runtime shut down, from a thread still in its context
/// (a blocking task after `shutdown_background`): `is_elapsed` is true and
/// `now >= deadline`, so `DefaultSleep::poll` polls tokio's sleep of the
/// dead runtime, which panics.
#[test]
fn elapsed_sleep_polled_after_shutdown_does_not_panic() {
    common::watchdog_for("elapsed after shutdown", Duration::from_secs(10), || {
        let rt = current_thread();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (armed_tx, armed_rx) = mpsc::channel::<()>();
        let (out_tx, out_rx) = mpsc::channel();
        rt.spawn_blocking(move || {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let mut sleep =
                DefaultTimer.sleep_until(DefaultTimer.now() + Duration::from_millis(20));
            assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
            assert!(format!("{sleep:?}").contains("tokio"), "{sleep:?}");
            armed_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Pin::new(&mut sleep).poll(&mut cx)
            }));
            out_tx.send(out.is_ok()).unwrap();
        });
        // Drive the runtime past the deadline so the sleep fires normally.
        armed_rx.recv().unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(60)).await });
        rt.shutdown_background();
        go_tx.send(()).unwrap();
        assert!(out_rx.recv().unwrap(), "poll of a fired sleep panicked");
    });
}

/// `DefaultTimer.sleep_until` in a runtime, first polled elsewhere: `fresh`
/// skips the "is it here?" check, so the first poll goes to the creating
/// runtime's tokio sleep. With that runtime dropped: panic.
#[test]
fn unpolled_default_sleep_is_armed_where_first_polled_after_its_runtime_dropped() {
    let rt = current_thread();
    let sleep = rt.block_on(async {
        DefaultTimer.sleep_until(DefaultTimer.now() + Duration::from_millis(20))
    });
    drop(rt);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(sleep)
    }));
    assert!(out.is_ok(), "first poll outside the runtime panicked");
}

/// The same, with the creating runtime alive but idle: the first poll
/// registers with that runtime's timer, which nobody drives: hang.
#[test]
fn unpolled_default_sleep_is_armed_where_first_polled_while_its_runtime_is_idle() {
    common::watchdog_for("fresh idle", Duration::from_secs(5), || {
        let rt = current_thread();
        let sleep = rt.block_on(async {
            DefaultTimer.sleep_until(DefaultTimer.now() + Duration::from_millis(20))
        });
        futures::executor::block_on(sleep);
        drop(rt);
    });
}

// ---------------------------------------------------------------------------
// 3. A false "timer shut down" poisons a live runtime for the process
// ---------------------------------------------------------------------------

/// Polls `inner` with another runtime's context entered (what
/// `tokio_util::context::TokioContext` does on every poll).
struct InContext<F> {
    handle: tokio::runtime::Handle,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _guard = self.handle.enter();
        self.inner.as_mut().poll(cx)
    }
}

/// A paused runtime A's task arms a sleep for "A's now + 1h"; auto-advance
/// fires it. The task's next poll happens with another (real-time)
/// runtime's context entered: the task id still matches, so the sleep is
/// "here", it is elapsed, and `now` (read on the *other* runtime's clock)
/// is before the deadline: runtime A is recorded as having a dead timer,
/// globally and for good. From then on every sleep armed in A is on
/// futures-timer and paused time no longer applies in A: a one-hour
/// timeout in A takes an hour.
#[test]
fn clock_mismatch_does_not_mark_a_live_paused_runtime_as_dead() {
    common::watchdog_for("poisoned", Duration::from_secs(10), || {
        let other = current_thread();
        let handle = other.handle().clone();
        let a = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        a.block_on(async move {
            tokio::spawn(async move {
                // Advance A's clock well ahead of the real clock.
                tokio::time::sleep(Duration::from_secs(7200)).await;
                let mut sleep =
                    DefaultTimer.sleep_until(DefaultTimer.now() + Duration::from_secs(60));
                // Registers in A.
                assert!(futures::poll!(&mut sleep).is_pending());
                // Auto-advance fires it.
                tokio::time::sleep(Duration::from_secs(120)).await;
                // Polled from this same task, inside the other runtime's context.
                let mut in_other = InContext {
                    handle,
                    inner: Box::pin(async move {
                        let waker = futures::task::noop_waker();
                        let _ = Pin::new(&mut sleep).poll(&mut Context::from_waker(&waker));
                    }),
                };
                eprintln!("before in_other");
                (&mut in_other).await;
                eprintln!("after in_other");
                // A is alive and paused: a one-hour timeout must elapse at once.
                let wall = Instant::now();
                let out = pending::<()>().timeout(Duration::from_secs(1)).await;
                assert!(out.is_err());
                assert!(
                    wall.elapsed() < Duration::from_millis(500),
                    "paused time no longer applies in A: a 1s timeout took {:?} of wall time",
                    wall.elapsed()
                );
            })
            .await
            .unwrap()
        });
    });
}

// ---------------------------------------------------------------------------
// 4. The `catch_unwind` probe and the process's panic hook
// ---------------------------------------------------------------------------

const CHILD: &str = "AWAITKIT_REVIEW_CHILD";

/// Runs this test binary again, only test `name`, with `CHILD=scenario`.
fn run_child(name: &str, scenario: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .output()
        .unwrap()
}

/// A panic hook that flushes something with a plain `timeout` (as crash
/// reporters do: "flush, but at most 2 s"), on a thread inside a tokio
/// runtime without time: the probe panics *inside the hook*, and the
/// process aborts ("panicked while processing panic").
#[test]
fn probe_inside_a_panic_hook_does_not_abort() {
    if let Ok(scenario) = std::env::var(CHILD) {
        if scenario == "timeout-in-hook" {
            std::panic::set_hook(Box::new(|_| {
                let out = futures::executor::block_on(
                    std::future::ready(()).timeout(Duration::from_secs(2)),
                );
                let _ = out;
                let out =
                    futures::executor::block_on(pending::<()>().timeout(Duration::from_millis(1)));
                eprintln!("flushed: {out:?}");
            }));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let _inside = rt.enter();
            let caught = std::panic::catch_unwind(|| panic!("user panic"));
            assert!(caught.is_err());
            eprintln!("child finished");
        }
        return;
    }
    let out = run_child(
        "probe_inside_a_panic_hook_does_not_abort",
        "timeout-in-hook",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child died: {:?}\n{stderr}",
        out.status
    );
}

// ---------------------------------------------------------------------------
// 5. Paused time: one limiter, two paused runtimes
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 6. A panicking waker handed to tokio's driver by a plain `timeout`
// ---------------------------------------------------------------------------

struct PanicOnWake;
impl std::task::Wake for PanicOnWake {
    fn wake(self: std::sync::Arc<Self>) {
        panic!("waker panics");
    }
}

/// Polls `inner` once with a waker that panics when woken, then parks.
struct PollWithPanickyWaker<F>(Pin<Box<F>>, bool);
impl<F: Future> Future for PollWithPanickyWaker<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.1 {
            self.1 = true;
            let waker = std::task::Waker::from(std::sync::Arc::new(PanicOnWake));
            let _ = self.0.as_mut().poll(&mut Context::from_waker(&waker));
            // Wake ourselves later by other means.
            let w = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                w.wake();
            });
            return Poll::Pending;
        }
        Poll::Ready(())
    }
}

fn panicky_waker_mt<T>(timer: T)
where
    T: Timer + Clone + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let victim = rt.spawn(PollWithPanickyWaker(
        Box::pin(
            pending::<()>()
                .timeout(Duration::from_millis(10))
                .with_timer(timer.clone()),
        ),
        false,
    ));
    let _ = rt.block_on(victim);
    // Later, other users of the same runtime.
    for _ in 0..3 {
        let timer = timer.clone();
        let out = rt.block_on(async move {
            tokio::spawn(
                pending::<()>()
                    .timeout(Duration::from_millis(20))
                    .with_timer(timer),
            )
            .await
            .unwrap()
        });
        assert!(out.is_err());
    }
    println!("runtime still serving");
}

/// SPEC §1.13: a panic in a waker never kills a shared thread and never
/// wedges. On a multi-thread runtime, a plain `timeout` polled with a
/// waker that panics hands that waker to tokio's driver; when it fires, the
/// panic unwinds out of the worker's park and tokio aborts the process
/// ("worker thread panicking; aborting process"). With `FuturesTimer` (the
/// default before this change) the panic is contained.
#[test]
fn panicking_waker_in_plain_timeout_does_not_abort_a_multi_thread_runtime() {
    if let Ok(scenario) = std::env::var(CHILD) {
        match scenario.as_str() {
            "default" => panicky_waker_mt(DefaultTimer),
            "futures" => panicky_waker_mt(FuturesTimer),
            _ => {}
        }
        return;
    }
    let name = "panicking_waker_in_plain_timeout_does_not_abort_a_multi_thread_runtime";
    let control = run_child(name, "futures");
    assert!(
        control.status.success()
            && String::from_utf8_lossy(&control.stdout).contains("still serving"),
        "control (FuturesTimer) failed: {control:?}"
    );
    let out = run_child(name, "default");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("still serving"),
        "default timer: child died: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same on a current-thread runtime: the panic unwinds out of
/// `block_on`; the next `block_on` of the same runtime.
#[test]
fn panicking_waker_in_plain_timeout_on_current_thread_runtime() {
    common::watchdog_for("panicky waker ct", Duration::from_secs(10), || {
        let rt = current_thread();
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(PollWithPanickyWaker(
                Box::pin(pending::<()>().timeout(Duration::from_millis(10))),
                false,
            ))
        }));
        eprintln!("first block_on: {:?}", first.is_ok());
        let out = rt.block_on(pending::<()>().timeout(Duration::from_millis(20)));
        assert!(out.is_err());
    });
}

/// Control: the same with `FuturesTimer` (the default before the change).
#[test]
fn control_panicking_waker_with_futures_timer_on_current_thread_runtime() {
    common::watchdog_for("panicky waker ct control", Duration::from_secs(10), || {
        let rt = current_thread();
        rt.block_on(PollWithPanickyWaker(
            Box::pin(
                pending::<()>()
                    .timeout(Duration::from_millis(10))
                    .with_timer(FuturesTimer),
            ),
            false,
        ));
        let out = rt.block_on(pending::<()>().timeout(Duration::from_millis(20)));
        assert!(out.is_err());
    });
}
