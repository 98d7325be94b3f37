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
