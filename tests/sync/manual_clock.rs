//! `ManualClock` (feature `test-util`): time moves only on `advance`, which
//! wakes exactly the due sleepers in deadline order (SPEC §5).

#![cfg(feature = "test-util")]

use crate::common;

use awaitkit::Timer;
use awaitkit::time::{ManualClock, ManualSleep};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn poll_with(sleep: &mut ManualSleep, waker: &Waker) -> Poll<()> {
    Pin::new(sleep).poll(&mut Context::from_waker(waker))
}

/// The hooks of a [`hooked`] waker.
struct Hooks {
    on_clone: Box<dyn Fn() + Send + Sync>,
    on_wake: Box<dyn Fn() + Send + Sync>,
    wakes: AtomicUsize,
}

static HOOKED_VTABLE: RawWakerVTable =
    RawWakerVTable::new(hk_clone, hk_wake, hk_wake_by_ref, hk_drop);

unsafe fn hk_clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live waker's `Arc<Hooks>`.
    (unsafe { &*data.cast::<Hooks>() }.on_clone)();
    // SAFETY: as above; the clone owns the new count (taken after the
    // hook, so a panicking hook leaks nothing).
    unsafe { Arc::increment_strong_count(data.cast::<Hooks>()) };
    RawWaker::new(data, &HOOKED_VTABLE)
}

unsafe fn hk_wake(data: *const ()) {
    // SAFETY: the consumed waker's count, given back when `hooks` drops
    // (also if the hook panics).
    let hooks = unsafe { Arc::from_raw(data.cast::<Hooks>()) };
    hooks.wakes.fetch_add(1, Ordering::SeqCst);
    (hooks.on_wake)();
}

unsafe fn hk_wake_by_ref(data: *const ()) {
    // SAFETY: the waker keeps its count.
    let hooks = unsafe { &*data.cast::<Hooks>() };
    hooks.wakes.fetch_add(1, Ordering::SeqCst);
    (hooks.on_wake)();
}

unsafe fn hk_drop(data: *const ()) {
    // SAFETY: the waker's own count.
    drop(unsafe { Arc::from_raw(data.cast::<Hooks>()) });
}

/// A waker running `on_clone` before every clone and `on_wake` at every
/// wake (either may panic or use the clock); the `Arc` counts its wakes.
fn hooked(
    on_clone: impl Fn() + Send + Sync + 'static,
    on_wake: impl Fn() + Send + Sync + 'static,
) -> (Arc<Hooks>, Waker) {
    let hooks = Arc::new(Hooks {
        on_clone: Box::new(on_clone),
        on_wake: Box::new(on_wake),
        wakes: AtomicUsize::new(0),
    });
    let data = Arc::into_raw(hooks.clone()).cast::<()>();
    // SAFETY: the vtable follows the `RawWaker` contract over one
    // `Arc<Hooks>` count per waker.
    let waker = unsafe { Waker::from_raw(RawWaker::new(data, &HOOKED_VTABLE)) };
    (hooks, waker)
}

guarded! {
    fn time_stands_still_until_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), t0);
        assert_eq!(clock.elapsed(), Duration::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), t0 + Duration::from_millis(1500));
        assert_eq!(clock.elapsed(), Duration::from_millis(1500));
        // Clones share the clock.
        let other = clock.clone();
        other.advance(SEC);
        assert_eq!(clock.now(), t0 + Duration::from_millis(2500));
        assert_eq!(ManualClock::default().elapsed(), Duration::ZERO);
        assert!(format!("{clock:?}").contains("ManualClock"));
    }

    fn advance_wakes_exactly_the_due_sleepers_in_deadline_order() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let log = WakeLog::new();
        // Created (and polled) out of deadline order; 3 and 4 tie.
        let offsets = [3, 1, 2, 5, 2, 4];
        let mut sleeps: Vec<ManualSleep> =
            offsets.iter().map(|&s| clock.sleep_until(t0 + s * SEC)).collect();
        for (id, sleep) in sleeps.iter_mut().enumerate() {
            assert!(poll_with(sleep, &log.waker(id)).is_pending(), "sleep {id}");
        }
        assert_eq!(clock.sleepers(), 6);
        assert_eq!(clock.next_deadline(), Some(t0 + SEC));

        clock.advance(Duration::from_millis(999));
        assert_eq!(log.take(), Vec::<usize>::new(), "nothing is due before 1 s");
        clock.advance(Duration::from_millis(1501)); // now t0 + 2.5 s
        // 1 s, then the two 2 s sleepers in creation order.
        assert_eq!(log.take(), [1, 2, 4]);
        assert_eq!(clock.sleepers(), 3);
        assert_eq!(clock.next_deadline(), Some(t0 + 3 * SEC));

        clock.advance_to(t0 + 4 * SEC); // exactly the 3 s and 4 s deadlines
        assert_eq!(log.take(), [0, 5]);
        assert_eq!(clock.next_deadline(), Some(t0 + 5 * SEC));

        // The woken sleeps are done; the others are not.
        for (id, sleep) in sleeps.iter_mut().enumerate() {
            let expect_ready = offsets[id] <= 4;
            assert_eq!(poll_with(sleep, &log.waker(id)).is_ready(), expect_ready, "sleep {id}");
        }
        assert_eq!(clock.sleepers(), 1);
        clock.advance(SEC);
        assert_eq!(log.take(), [3]);
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(clock.next_deadline(), None);
    }

    fn a_sleep_registers_on_its_first_poll_and_is_ready_at_its_deadline() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert_eq!(clock.sleepers(), 0, "creating a sleep registers nothing");
        assert_eq!(clock.next_deadline(), None);
        assert!(poll_once(&mut sleep, &w).is_pending());
        assert_eq!(clock.sleepers(), 1);
        // Re-polling with the same waker keeps one registration.
        assert!(poll_once(&mut sleep, &w).is_pending());
        assert_eq!(clock.sleepers(), 1);
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1);
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(poll_once(&mut sleep, &w), Poll::Ready(()));
        // Due at once: never registers.
        let mut due = clock.sleep_until(clock.now());
        assert_eq!(poll_once(&mut due, &w), Poll::Ready(()));
        let mut past = clock.sleep_until(clock.now() - SEC);
        assert_eq!(poll_once(&mut past, &w), Poll::Ready(()));
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(w.wakes(), 1);
        assert_eq!(w.live_clones(), 0);
    }

    fn advance_to_backwards_is_a_no_op() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w = CountingWaker::new();
        let mut sleep = clock.sleep_until(t0 + 2 * SEC);
        assert!(poll_once(&mut sleep, &w).is_pending());
        clock.advance_to(t0 + SEC);
        clock.advance_to(t0);
        clock.advance_to(t0 - SEC);
        assert_eq!(clock.now(), t0 + SEC);
        assert_eq!(clock.elapsed(), SEC);
        assert_eq!(w.wakes(), 0);
        assert_eq!(clock.sleepers(), 1);
        clock.advance_to(t0 + SEC); // same instant: nothing
        assert_eq!(w.wakes(), 0);
        clock.advance(Duration::ZERO);
        assert_eq!((clock.now(), w.wakes()), (t0 + SEC, 0));
    }

    fn dropping_a_registered_sleep_unregisters_it_and_its_waker() {
        let clock = ManualClock::new();
        let w = CountingWaker::new();
        let mut a = clock.sleep_until(clock.now() + SEC);
        let mut b = clock.sleep_until(clock.now() + 2 * SEC);
        assert!(poll_once(&mut a, &w).is_pending());
        assert!(poll_once(&mut b, &w).is_pending());
        assert_eq!(clock.sleepers(), 2);
        assert_eq!(w.live_clones(), 2);
        drop(a);
        assert_eq!(clock.sleepers(), 1);
        assert_eq!(clock.next_deadline(), Some(clock.now() + 2 * SEC));
        assert_eq!(w.live_clones(), 1, "the dropped sleep's waker is released");
        clock.advance(SEC);
        assert_eq!(w.wakes(), 0, "a dropped sleep is never woken");
        drop(b);
        assert_eq!((clock.sleepers(), clock.next_deadline(), w.live_clones()), (0, None, 0));
        // Dropping an unpolled or finished sleep is fine too.
        drop(clock.sleep_until(clock.now() + SEC));
        let mut done = clock.sleep_until(clock.now());
        assert!(poll_once(&mut done, &w).is_ready());
        drop(done);
        assert_eq!(clock.sleepers(), 0);
    }

    fn re_polling_with_another_waker_replaces_it() {
        let clock = ManualClock::new();
        let first = CountingWaker::new();
        let second = CountingWaker::new();
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert!(poll_once(&mut sleep, &first).is_pending());
        assert!(poll_once(&mut sleep, &second).is_pending());
        assert_eq!(clock.sleepers(), 1);
        assert_eq!(first.live_clones(), 0, "the replaced waker is dropped");
        assert_eq!(second.live_clones(), 1);
        clock.advance(SEC);
        assert_eq!((first.wakes(), second.wakes()), (0, 1), "only the newest waker is woken");
        assert_eq!(second.live_clones(), 0);
    }

    fn reset_keeps_the_waker_and_moves_the_deadline() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w = CountingWaker::new();
        let mut sleep = clock.sleep_until(t0 + 10 * SEC);
        assert!(poll_once(&mut sleep, &w).is_pending());
        // Earlier, without polling again.
        clock.reset(Pin::new(&mut sleep), t0 + SEC);
        assert_eq!(clock.next_deadline(), Some(t0 + SEC));
        clock.advance(SEC);
        assert_eq!(w.wakes(), 1, "woken at the new deadline without a re-poll");
        assert!(poll_once(&mut sleep, &w).is_ready());

        // Later.
        let mut sleep = clock.sleep_until(t0 + 2 * SEC);
        assert!(poll_once(&mut sleep, &w).is_pending());
        clock.reset(Pin::new(&mut sleep), t0 + 5 * SEC);
        clock.advance_to(t0 + 4 * SEC);
        assert_eq!(w.wakes(), 1, "not woken at the old deadline");
        assert!(poll_once(&mut sleep, &w).is_pending());
        clock.advance_to(t0 + 5 * SEC);
        assert_eq!(w.wakes(), 2);
        assert!(poll_once(&mut sleep, &w).is_ready());

        // Into the past: woken at once.
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert!(poll_once(&mut sleep, &w).is_pending());
        clock.reset(Pin::new(&mut sleep), t0);
        assert_eq!(w.wakes(), 3);
        assert_eq!(clock.sleepers(), 0);
        assert!(poll_once(&mut sleep, &w).is_ready());

        // Before the first poll: registers at the new deadline.
        let mut sleep = clock.sleep_until(clock.now() + 100 * SEC);
        clock.reset(Pin::new(&mut sleep), clock.now() + SEC);
        assert_eq!(clock.sleepers(), 0);
        assert!(poll_once(&mut sleep, &w).is_pending());
        assert_eq!(clock.next_deadline(), Some(clock.now() + SEC));
        clock.advance(SEC);
        assert_eq!(w.wakes(), 4);
        assert!(poll_once(&mut sleep, &w).is_ready());
        assert_eq!(w.live_clones(), 0);
    }

    fn wakers_may_call_back_into_the_clock() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let log = WakeLog::new();
        let seen = Arc::new(AtomicUsize::new(0));
        let reentrant = |clock: &ManualClock, seen: &Arc<AtomicUsize>| -> Box<dyn Fn() + Send + Sync> {
            let (clock, seen) = (clock.clone(), seen.clone());
            Box::new(move || {
                // Every method that takes the clock's lock.
                let _ = clock.now();
                let _ = clock.elapsed();
                let _ = clock.next_deadline();
                seen.fetch_add(clock.sleepers() + 1, Ordering::SeqCst);
                let _ = format!("{clock:?}");
                clock.advance(Duration::ZERO);
            })
        };
        // Woken by `advance`: the waker reads the clock and advances it again.
        let mut a = clock.sleep_until(t0 + SEC);
        let mut b = clock.sleep_until(t0 + 2 * SEC);
        assert!(poll_with(&mut a, &log.waker_with(0, Some(reentrant(&clock, &seen)), None)).is_pending());
        assert!(poll_with(&mut b, &log.waker(1)).is_pending());
        clock.advance(SEC);
        assert_eq!(log.take(), [0]);
        assert_eq!(seen.load(Ordering::SeqCst), 2, "the waker saw the other sleeper");

        // A waker dropped while being replaced, unregistered or reset.
        let dropper = |id| log.waker_with(id, None, Some(reentrant(&clock, &seen)));
        assert!(poll_with(&mut b, &dropper(2)).is_pending()); // replaces 1
        assert!(poll_with(&mut b, &log.waker(3)).is_pending()); // drops 2
        assert!(poll_with(&mut b, &dropper(4)).is_pending());
        clock.reset(Pin::new(&mut b), t0 + 3 * SEC);
        drop(b); // drops 4 while unregistering
        let mut c = clock.sleep_until(t0 + 5 * SEC);
        assert!(poll_with(&mut c, &log.waker_with(5, Some(reentrant(&clock, &seen)), Some(reentrant(&clock, &seen)))).is_pending());
        clock.reset(Pin::new(&mut c), t0); // woken (and dropped) by reset
        assert_eq!(log.take(), [5]);
        assert_eq!(seen.load(Ordering::SeqCst), 2 + 2 + 1 + 1 + 1);
        assert_eq!(clock.sleepers(), 0);
    }

    /// Issue 14, item 6 (the manual clock's part): re-polling a sleep with
    /// another waker clones it, which used to happen under the clock's lock;
    /// a clone that uses the clock deadlocked.
    fn a_waker_whose_clone_uses_the_clock_cannot_deadlock() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let old = CountingWaker::new();
        let mut sleep = clock.sleep_until(t0 + SEC);
        assert!(poll_once(&mut sleep, &old).is_pending());
        let c = clock.clone();
        let (hooks, waker) = hooked(
            move || {
                let _ = c.now();
                let _ = c.sleepers();
                let _ = c.next_deadline();
                c.advance(Duration::ZERO);
            },
            || {},
        );
        assert!(poll_with(&mut sleep, &waker).is_pending());
        assert_eq!(old.live_clones(), 0, "the replaced waker was dropped");
        clock.advance(SEC);
        assert_eq!((hooks.wakes.load(Ordering::SeqCst), old.wakes()), (1, 0));
        assert!(poll_with(&mut sleep, &waker).is_ready());

        // A clone that moves the clock past the deadline: the same poll
        // sees the sleep done.
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert!(poll_once(&mut sleep, &old).is_pending());
        let c = clock.clone();
        let (_hooks, waker) = hooked(move || c.advance(SEC), || {});
        assert!(poll_with(&mut sleep, &waker).is_ready());
        assert_eq!(old.wakes(), 1, "woken by the advance inside the clone");
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(old.live_clones(), 0);
    }

    /// A clone that panics leaves the registration as it was.
    fn a_panicking_clone_keeps_the_old_registration() {
        let clock = ManualClock::new();
        let old = CountingWaker::new();
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert!(poll_once(&mut sleep, &old).is_pending());
        let (_hooks, bad) = hooked(|| panic!("clone panics"), || {});
        let out = catch_unwind(AssertUnwindSafe(|| poll_with(&mut sleep, &bad)));
        assert!(out.is_err());
        assert_eq!(clock.sleepers(), 1);
        clock.advance(SEC);
        assert_eq!(old.wakes(), 1);
        assert!(poll_once(&mut sleep, &old).is_ready());
        // On a first poll: nothing registered.
        let mut sleep = clock.sleep_until(clock.now() + SEC);
        assert!(catch_unwind(AssertUnwindSafe(|| poll_with(&mut sleep, &bad))).is_err());
        assert_eq!(clock.sleepers(), 0);
        assert!(poll_once(&mut sleep, &old).is_pending());
        assert_eq!(clock.sleepers(), 1);
    }

    /// Issue 14, item 7 (the manual clock's part): a waker that panics when
    /// `advance` wakes it no longer keeps the other due sleepers asleep.
    fn a_panicking_waker_does_not_keep_other_due_sleepers_asleep() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let (bad_hooks, bad) = hooked(|| {}, || panic!("wake panics"));
        let (w1, w2) = (CountingWaker::new(), CountingWaker::new());
        let mut a = clock.sleep_until(t0 + SEC);
        let mut b = clock.sleep_until(t0 + SEC);
        let mut c = clock.sleep_until(t0 + 2 * SEC);
        let mut later = clock.sleep_until(t0 + 3 * SEC);
        assert!(poll_with(&mut a, &bad).is_pending()); // woken first
        assert!(poll_once(&mut b, &w1).is_pending());
        assert!(poll_once(&mut c, &w2).is_pending());
        assert!(poll_once(&mut later, &w2).is_pending());
        let out = catch_unwind(AssertUnwindSafe(|| clock.advance(2 * SEC)));
        assert_eq!(panic_message(&*out.unwrap_err()), "wake panics");
        assert_eq!(bad_hooks.wakes.load(Ordering::SeqCst), 1);
        assert_eq!((w1.wakes(), w2.wakes()), (1, 1), "a due sleeper was left asleep");
        assert_eq!(clock.elapsed(), 2 * SEC);
        assert_eq!(clock.sleepers(), 1);
        assert!(poll_with(&mut a, &bad).is_ready());
        assert!(poll_once(&mut b, &w1).is_ready());
        assert!(poll_once(&mut c, &w2).is_ready());
        assert!(poll_once(&mut later, &w2).is_pending());
        clock.advance(SEC);
        assert!(poll_once(&mut later, &w2).is_ready());
    }

    fn a_waker_may_register_a_new_sleep_while_being_woken() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let log = WakeLog::new();
        let created = Arc::new(std::sync::Mutex::new(Vec::new()));
        let on_wake: Box<dyn Fn() + Send + Sync> = {
            let (clock, created) = (clock.clone(), created.clone());
            Box::new(move || {
                let mut next = clock.sleep_until(clock.now() + SEC);
                let w = CountingWaker::new();
                assert!(poll_once(&mut next, &w).is_pending());
                created.lock().unwrap().push(next);
            })
        };
        let mut s = clock.sleep_until(t0 + SEC);
        assert!(poll_with(&mut s, &log.waker_with(0, Some(on_wake), None)).is_pending());
        clock.advance(SEC);
        assert_eq!(log.take(), [0]);
        assert_eq!(clock.sleepers(), 1, "registered from inside the wake");
        assert_eq!(clock.next_deadline(), Some(t0 + 2 * SEC));
        created.lock().unwrap().clear();
        assert_eq!(clock.sleepers(), 0);
    }

    fn a_long_jump_wakes_everything_due_once() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let w = CountingWaker::new();
        let mut sleeps: Vec<ManualSleep> = (1..=1000).map(|i| clock.sleep_until(t0 + i * SEC)).collect();
        for s in &mut sleeps {
            assert!(poll_once(s, &w).is_pending());
        }
        clock.advance(Duration::from_secs(100 * 365 * 86_400)); // 100 years
        assert_eq!(w.wakes(), 1000);
        assert_eq!(clock.sleepers(), 0);
        assert!(sleeps.iter_mut().all(|s| poll_once(s, &w).is_ready()));
    }

    fn sleeps_work_across_threads() {
        let clock = ManualClock::new();
        let handle = advance_from_thread(&clock, 1, SEC);
        futures::executor::block_on(clock.sleep_until(clock.now() + SEC));
        handle.join().unwrap();
        assert_eq!(clock.elapsed(), SEC);
    }
}

#[test]
#[should_panic(expected = "would overflow")]
fn advance_by_duration_max_panics_clearly() {
    ManualClock::new().advance(Duration::MAX);
}

#[test]
fn advance_by_duration_max_leaves_the_clock_usable() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let caught = std::panic::catch_unwind(|| clock.advance(Duration::MAX));
    let msg = panic_message(&*caught.expect_err("advance(Duration::MAX) must panic"));
    assert!(msg.contains("ManualClock::advance"), "{msg}");
    assert_eq!(clock.now(), t0, "a failed advance does not move time");
    clock.advance(SEC);
    assert_eq!(clock.elapsed(), SEC);
}

matrix! {
    /// A task sleeping on the clock is woken by an advance from another
    /// thread (on the multi-thread runtime, the task may run anywhere).
    async fn sleep_woken_by_advance_from_another_thread() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let handle = advance_from_thread(&clock, 1, 3 * SEC);
        clock.sleep_until(t0 + 3 * SEC).await;
        assert_eq!(clock.now(), t0 + 3 * SEC);
        handle.join().unwrap();
        assert_eq!(clock.sleepers(), 0);
    }

    /// Many sleeps awaited concurrently in one task finish in deadline order
    /// as the clock moves one step at a time.
    async fn concurrent_sleeps_finish_in_deadline_order() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sleeps = [4u32, 1, 3, 2].map(|s| {
            let (clock, order) = (clock.clone(), order.clone());
            async move {
                clock.sleep_until(t0 + s * SEC).await;
                order.lock().unwrap().push(s);
            }
        });
        let drive = async {
            sleepers_reach(&clock, 4).await;
            for _ in 0..4 {
                clock.advance(SEC);
                for _ in 0..4 {
                    yield_now().await;
                }
            }
        };
        futures::future::join(futures::future::join_all(sleeps), drive).await;
        assert_eq!(*order.lock().unwrap(), [1, 2, 3, 4]);
    }
}
