//! Loom models of the rate limiter's driver flag (`driver.rs`): the driver
//! and two notifiers racing it, with passes that finish, ask for another
//! pass, or fail (a panicking timer).
//!
//! Run with:
//! `RUSTFLAGS="--cfg awaitkit_loom" cargo test --release --lib rate_limiter::driver_loom -- --test-threads=1`
//!
//! Each party first makes a request (a counter standing for the limiter's
//! state: a new waiter, a cancelled head, a quota change, the timer firing),
//! then runs the driver. The properties: passes never overlap; when every
//! party has returned the flag is at rest (nobody is left `RUNNING` or
//! `NOTIFIED`, which would wedge every later request); and the last pass saw
//! every request — unless a pass failed, and then the flag says `STALLED`
//! and the next request drives and sees everything.

use super::driver::{Flag, Pass, Ran};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// The driver's flag, the requests made, and what the passes saw.
struct World {
    flag: Flag,
    requests: AtomicUsize,
    /// The requests the latest pass saw.
    seen: AtomicUsize,
    /// Passes running now (never more than one).
    running: AtomicUsize,
    /// Passes run so far.
    passes: AtomicUsize,
}

impl World {
    fn new() -> Arc<World> {
        Arc::new(World {
            flag: Flag::new(),
            requests: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            passes: AtomicUsize::new(0),
        })
    }

    /// One pass: `script` says what the k-th pass (from 0) returns.
    fn pass(&self, script: fn(usize) -> Pass) -> Pass {
        assert_eq!(
            self.running.fetch_add(1, Ordering::SeqCst),
            0,
            "two passes at once"
        );
        let k = self.passes.fetch_add(1, Ordering::Relaxed);
        let outcome = script(k);
        if outcome != Pass::Failed {
            self.seen
                .store(self.requests.load(Ordering::Acquire), Ordering::Relaxed);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    /// A party: one request, then drive (or leave a note).
    fn request(&self, script: fn(usize) -> Pass) -> Ran {
        self.requests.fetch_add(1, Ordering::Release);
        self.flag.run(|| self.pass(script))
    }
}

/// The driver (this thread) and two notifiers, under `script`; checks the
/// properties above.
fn race(script: fn(usize) -> Pass) {
    model(move || {
        let world = World::new();
        let notifiers: Vec<_> = (0..2)
            .map(|_| {
                let world = world.clone();
                thread::spawn(move || world.request(script))
            })
            .collect();
        let mut runs = vec![world.request(script)];
        runs.extend(notifiers.into_iter().map(|t| t.join().unwrap()));
        assert_eq!(world.flag.at_rest(), Ok(()), "the flag is left busy");
        if world.flag.is_stalled() {
            assert!(runs.contains(&Ran::Stalled));
            // The stalled driver woke every waiter; the first to poll
            // drives again, and that pass sees everything.
            assert_eq!(world.flag.run(|| world.pass(|_| Pass::Done)), Ran::Settled);
        }
        assert_eq!(world.seen.load(Ordering::Relaxed), 3, "a request was lost");
        assert_eq!(world.flag.at_rest(), Ok(()));
        assert!(!world.flag.is_stalled());
    });
}

/// Two notifiers race the running driver, whose passes all finish.
#[test]
fn two_notifiers_race_the_driver() {
    race(|_| Pass::Done);
}

/// The first pass asks for another at once (the timer was already due)
/// while two notifiers race it.
#[test]
fn two_notifiers_race_a_driver_passing_again() {
    race(|k| if k == 0 { Pass::Again } else { Pass::Done });
}

/// The first pass fails (the timer panicked) while two notifiers race it:
/// the flag ends stalled, never busy, and the next request recovers.
#[test]
fn two_notifiers_race_a_failing_pass() {
    race(|k| if k == 0 { Pass::Failed } else { Pass::Done });
}

/// Every pass fails: still never busy once everyone returned.
#[test]
fn two_notifiers_race_failing_passes() {
    model(|| {
        let world = World::new();
        let notifier = {
            let world = world.clone();
            thread::spawn(move || world.request(|_| Pass::Failed))
        };
        let other = {
            let world = world.clone();
            thread::spawn(move || world.request(|_| Pass::Failed))
        };
        let mine = world.request(|_| Pass::Failed);
        let runs = [mine, notifier.join().unwrap(), other.join().unwrap()];
        assert_eq!(world.flag.at_rest(), Ok(()));
        assert!(world.flag.is_stalled());
        assert!(runs.contains(&Ran::Stalled));
        assert_eq!(world.flag.run(|| world.pass(|_| Pass::Done)), Ran::Settled);
        assert_eq!(world.seen.load(Ordering::Relaxed), 3);
    });
}

// ---------------------------------------------------------------------------
// The stall path (`Shared::drive`) and recovery from it
// ---------------------------------------------------------------------------

/// One waiter's waker slot (the queue node, under the state lock) and what
/// the driver did about it.
#[derive(Debug)]
struct Slot {
    /// The waker version the waiter registered last.
    latest: u32,
    /// The registered waker, until a stalled driver takes it to wake it.
    waker: Option<u32>,
    /// The version a stalled driver woke.
    woken: Option<u32>,
}

/// The flag, one queued waiter, and whether a pass ran after the failure.
struct Stall {
    flag: Flag,
    slot: loom::sync::Mutex<Slot>,
    running: AtomicUsize,
    /// A pass has failed.
    failed: loom::sync::atomic::AtomicBool,
    /// A pass succeeded after one failed: it armed the timer for the queue
    /// (or granted it), so the waiter is served whatever waker it holds.
    recovered: loom::sync::atomic::AtomicBool,
}

impl Stall {
    fn new() -> Arc<Stall> {
        Arc::new(Stall {
            flag: Flag::new(),
            slot: loom::sync::Mutex::new(Slot {
                latest: 1,
                waker: Some(1),
                woken: None,
            }),
            running: AtomicUsize::new(0),
            failed: loom::sync::atomic::AtomicBool::new(false),
            recovered: loom::sync::atomic::AtomicBool::new(false),
        })
    }

    fn pass(&self, fail: bool) -> Pass {
        assert_eq!(
            self.running.fetch_add(1, Ordering::SeqCst),
            0,
            "two passes at once"
        );
        let outcome = if fail {
            self.failed.store(true, Ordering::Relaxed);
            Pass::Failed
        } else {
            if self.failed.load(Ordering::Relaxed) {
                self.recovered.store(true, Ordering::Relaxed);
            }
            Pass::Done
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    /// `Shared::drive`: run the flag; once it says `Stalled` (the flag is
    /// already `STALLED`), take every queued waker under the state lock,
    /// and wake it.
    fn drive(&self, fail: bool) -> Ran {
        let ran = self.flag.run(|| self.pass(fail));
        if ran == Ran::Stalled {
            let mut slot = self.slot.lock().unwrap();
            if let Some(version) = slot.waker.take() {
                slot.woken = Some(version);
            }
        }
        ran
    }

    /// `Shared::poll_queued`: replace the waker under the lock, then drive
    /// if the driver is stalled.
    fn repoll(&self) {
        {
            let mut slot = self.slot.lock().unwrap();
            slot.latest = 2;
            slot.waker = Some(2);
        }
        if self.flag.is_stalled() {
            self.drive(false);
        }
    }

    /// Nobody is left without a wake-up: no pass failed (the driver's
    /// request was a note, and the notifier's passes served the queue), or
    /// the waiter's latest waker was woken, or a pass after the failure
    /// served the queue.
    fn check(&self) {
        assert_eq!(self.flag.at_rest(), Ok(()), "the flag is left busy");
        let slot = self.slot.lock().unwrap();
        assert!(
            !self.failed.load(Ordering::Relaxed)
                || slot.woken == Some(slot.latest)
                || self.recovered.load(Ordering::Relaxed),
            "a lost wake-up: {slot:?}, stalled: {}",
            self.flag.is_stalled()
        );
    }
}

/// The driver's pass fails (its timer panicked) while a queued waiter
/// re-registers its waker and then checks `is_stalled`, and a notifier
/// (the timer firing, a cancel) leaves a note. The stalled driver must set
/// `STALLED` before it collects the wakers: the other way round, a waker
/// registered in between is neither woken nor sees the stall.
#[test]
fn a_stall_races_a_waiter_reregistering_and_a_notifier() {
    model(|| {
        let world = Stall::new();
        let waiter = {
            let world = world.clone();
            thread::spawn(move || world.repoll())
        };
        let notifier = {
            let world = world.clone();
            thread::spawn(move || world.drive(false))
        };
        world.drive(true);
        waiter.join().unwrap();
        notifier.join().unwrap();
        world.check();
    });
}

/// From a stalled flag (whose failed pass missed a request: the queue), a
/// waiter recovering (it saw `is_stalled`; its waker is re-registered under
/// the state lock, which every pass takes, so it is no request of its own)
/// races a notifier's new request: one of them drives, a pass sees both
/// requests, and the flag ends idle — or stalled again if the recovering
/// pass failed too, and then the next call recovers.
fn recovery_race(first_recovery_fails: bool) {
    model(move || {
        let world = World::new();
        world.requests.fetch_add(1, Ordering::Release);
        assert_eq!(world.flag.run(|| Pass::Failed), Ran::Stalled);
        let script: fn(usize) -> Pass = if first_recovery_fails {
            |k| if k == 0 { Pass::Failed } else { Pass::Done }
        } else {
            |_| Pass::Done
        };
        let recovering = {
            let world = world.clone();
            thread::spawn(move || {
                if world.flag.is_stalled() {
                    world.flag.run(|| world.pass(script));
                }
            })
        };
        let notifier = {
            let world = world.clone();
            thread::spawn(move || world.request(script))
        };
        recovering.join().unwrap();
        notifier.join().unwrap();
        assert_eq!(world.flag.at_rest(), Ok(()), "the flag is left busy");
        if world.flag.is_stalled() {
            assert!(first_recovery_fails, "stalled, though no pass failed");
            assert_eq!(world.flag.run(|| world.pass(|_| Pass::Done)), Ran::Settled);
        }
        assert_eq!(world.seen.load(Ordering::Relaxed), 2, "a request was lost");
    });
}

#[test]
fn recovery_from_a_stall_races_a_new_note() {
    recovery_race(false);
}

#[test]
fn a_failing_recovery_from_a_stall_races_a_new_note() {
    recovery_race(true);
}
