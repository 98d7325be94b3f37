//! Loom models of a keyed limiter's promotion and demotion: how it decides
//! that a promoted key's full limiter is unused and takes its GCRA state
//! back (`keyed.rs`: `Arc::strong_count(shared) == 1`, then
//! `Shared::take_seed` reads `tat`; from the review), an acquire's first
//! poll racing a check and a sweep of the same key, and the driver's waker
//! (a handle taken with no lock of the map) racing a waiter leaving, a
//! check and a sweep (below).
//!
//! A checker holding a clone of the key's `Arc<Shared>` (taken under the
//! shard's lock) grants through the lock-free GCRA path — a
//! compare-and-swap of `tat` — and then drops its clone (a `Release`
//! decrement of the strong count). The shard, under its lock, reads the
//! strong count (`Arc::strong_count` loads it `Relaxed`) and, seeing 1,
//! reads `tat` (`Acquire`). Nothing orders the checker's swap before that
//! read: the checker took the shard's lock *before* its swap, and never
//! takes the limiter's own lock. So the shard may demote the key with the
//! arrival time from before the grant — the grant is forgotten, and one
//! more than the quota allows is granted later.
//!
//! The model stands for the two sides with loom's atomics (std's `Arc`
//! counts are not visible to loom): `strong` is the strong count, `tat` the
//! arrival time. `stale_seed_after_relaxed_count` expects the stale read to
//! be possible (it asserts that loom finds it); `fenced_count_sees_the_grant`
//! adds an `Acquire` fence after the count reads 1, the fix, and asserts the
//! grant is always seen.
//!
//! Run with:
//! `RUSTFLAGS="--cfg awaitkit_loom" cargo test --release --lib rate_limiter::keyed_loom -- --test-threads=1`

use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// One run: a checker clones the key's limiter under the shard's lock,
/// grants through it (tat 0 -> 10) and drops its clone, while the shard,
/// under its lock, decides whether the limiter is unused and reads its
/// state. Returns what the demotion read, if the shard demoted *after* the
/// checker had cloned (before that, the checker would not have found the
/// limiter).
fn run(fenced: bool) -> Option<u64> {
    let strong = Arc::new(AtomicUsize::new(1)); // the shard's own handle
    let tat = Arc::new(AtomicU64::new(0));
    let shard = Arc::new(Mutex::new(false)); // "the checker has cloned"
    let checker = {
        let (strong, tat, shard) = (strong.clone(), tat.clone(), shard.clone());
        thread::spawn(move || {
            {
                let mut cloned = shard.lock().unwrap();
                strong.fetch_add(1, Ordering::Relaxed); // `Arc::clone`
                *cloned = true;
            }
            // The lock-free GCRA grant, then the clone dropped.
            tat.compare_exchange(0, 10, Ordering::AcqRel, Ordering::Acquire)
                .unwrap();
            strong.fetch_sub(1, Ordering::Release);
        })
    };
    let seen = {
        let cloned = shard.lock().unwrap();
        if *cloned && strong.load(Ordering::Relaxed) == 1 {
            if fenced {
                fence(Ordering::Acquire);
            }
            Some(tat.load(Ordering::Acquire))
        } else {
            None
        }
    };
    checker.join().unwrap();
    seen
}

#[test]
fn stale_seed_after_relaxed_count() {
    let stale = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let found = stale.clone();
    loom::model(move || {
        if run(false) == Some(0) {
            found.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        stale.load(std::sync::atomic::Ordering::SeqCst),
        "loom found no execution where the demotion reads the arrival time from before the grant"
    );
}

#[test]
fn fenced_count_sees_the_grant() {
    loom::model(|| {
        if let Some(seen) = run(true) {
            assert_eq!(seen, 10, "the demotion forgot a grant");
        }
    });
}

// ---------------------------------------------------------------------------
// An acquire's first poll against a check and a sweep of the same key
// ---------------------------------------------------------------------------
//
// The first poll (`keyed.rs`: `Pending::first_poll`) checks the compact key
// under the shard's lock; refused, it releases the lock, takes it again to
// promote the key (or find it promoted) and clones the key's limiter under
// it (`full_in`), and then, with no lock of the map, joins the limiter's
// queue. Meanwhile a check of the same key may grant in place, or go
// through the promoted limiter (a clone, the lock-free GCRA swap, the clone
// dropped), or demote it; a sweep may demote it. The model: one grant is
// allowed at the frozen time (arrival time 0, one call's cost 10), so
// exactly one of the acquire and the check is granted; whoever demotes must
// never take the state from under the acquire's waiter (the waiter's
// limiter stays the key's, with the waiter in its queue), and no grant is
// forgotten by a demotion.

/// The key in the shard: compact (its arrival time) or promoted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Compact(u64),
    Promoted,
}

/// The key's full limiter, modeled: its strong count (1: the shard's own
/// handle), its arrival time, and its queue (under its own lock).
struct Full {
    strong: AtomicUsize,
    tat: AtomicU64,
    queue: Mutex<usize>,
}

const COST: u64 = 10;

/// Under the shard's lock: if the key is promoted and nobody else holds its
/// limiter, takes its state back (with the fix's fence) unless someone
/// waits. Returns whether the key is compact afterwards.
fn demote(slot: &mut Slot, full: &Full) -> bool {
    if *slot == Slot::Promoted && full.strong.load(Ordering::Relaxed) == 1 {
        fence(Ordering::Acquire);
        let queue = full.queue.lock().unwrap();
        if *queue == 0 {
            *slot = Slot::Compact(full.tat.load(Ordering::Acquire));
        }
    }
    matches!(slot, Slot::Compact(_))
}

/// The compact check at time 0: granted if the arrival time allows it.
fn check_compact(slot: &mut Slot) -> bool {
    match slot {
        Slot::Compact(tat) if *tat == 0 => {
            *tat = COST;
            true
        }
        _ => false,
    }
}

/// One run from a key with arrival time `initial` (0: one grant left;
/// `COST`: none). `split` is the broken variant: the acquire promotes the
/// key and clones its limiter under two acquisitions of the lock (a sweep
/// between them demotes the key from under the waiter to come). Returns
/// (acquire granted at its first poll, check granted), or what went wrong.
fn first_poll_run(initial: u64, split: bool) -> Result<(bool, bool), &'static str> {
    let shard = Arc::new(Mutex::new(Slot::Compact(initial)));
    let full = Arc::new(Full {
        strong: AtomicUsize::new(1),
        tat: AtomicU64::new(0),
        queue: Mutex::new(0),
    });
    // The acquire's first poll.
    let acquire = {
        let (shard, full) = (shard.clone(), full.clone());
        thread::spawn(move || {
            {
                let mut slot = shard.lock().unwrap();
                if demote(&mut slot, &full) && check_compact(&mut slot) {
                    return true;
                }
            }
            // Refused: promote (or find promoted) and clone, under the lock.
            {
                let mut slot = shard.lock().unwrap();
                if let Slot::Compact(tat) = *slot {
                    full.tat.store(tat, Ordering::Release);
                    *slot = Slot::Promoted;
                }
                if split {
                    drop(slot);
                    let _relocked = shard.lock().unwrap();
                    full.strong.fetch_add(1, Ordering::Relaxed);
                } else {
                    full.strong.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Joins the queue with no lock of the map (it must wait: the
            // one grant is taken). The clone is kept: the future waits.
            *full.queue.lock().unwrap() += 1;
            false
        })
    };
    // A check of the same key.
    let check = {
        let (shard, full) = (shard.clone(), full.clone());
        thread::spawn(move || {
            let mut slot = shard.lock().unwrap();
            if demote(&mut slot, &full) {
                return check_compact(&mut slot);
            }
            full.strong.fetch_add(1, Ordering::Relaxed);
            drop(slot);
            // Through the full limiter: refused while anyone waits, else
            // the lock-free swap.
            let granted = *full.queue.lock().unwrap() == 0
                && full
                    .tat
                    .compare_exchange(0, COST, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            full.strong.fetch_sub(1, Ordering::Release);
            granted
        })
    };
    // A sweep (the owner): demotes the key if it can.
    {
        let mut slot = shard.lock().unwrap();
        demote(&mut slot, &full);
    }
    let acquired = acquire.join().unwrap();
    let checked = check.join().unwrap();
    // Whatever the interleaving: the acquire's waiter is on the key's
    // limiter, and no grant was forgotten or made twice.
    let slot = *shard.lock().unwrap();
    if !acquired && (slot != Slot::Promoted || *full.queue.lock().unwrap() != 1) {
        return Err("the key was demoted from under its waiter");
    }
    let tat = match slot {
        Slot::Compact(tat) => tat,
        Slot::Promoted => full.tat.load(Ordering::Acquire),
    };
    if tat != COST {
        return Err("a grant was forgotten");
    }
    let grants = usize::from(acquired) + usize::from(checked);
    if grants != usize::from(initial == 0) {
        return Err("not exactly the grants the quota allows");
    }
    Ok((acquired, checked))
}

#[test]
fn first_poll_against_a_check_and_a_sweep() {
    for initial in [0, COST] {
        loom::model(move || {
            if let Err(error) = first_poll_run(initial, false) {
                panic!("from arrival time {initial}: {error}");
            }
        });
    }
}

/// The model finds the bug it is for: promoting and cloning under two
/// acquisitions of the lock lets a sweep demote the key in between.
#[test]
fn first_poll_split_promotion_is_caught() {
    let found = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = found.clone();
    loom::model(move || {
        if first_poll_run(COST, true).is_err() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        found.load(std::sync::atomic::Ordering::SeqCst),
        "loom found no demotion between the promotion and the clone"
    );
}

// ---------------------------------------------------------------------------
// The driver's waker against a waiter leaving, a check and a sweep
// ---------------------------------------------------------------------------
//
// A promoted key's limiter is also reached *without* the shard's lock: its
// driver's waker holds it weakly and upgrades that handle on the timer's
// thread (`shared.rs`: `DriverWaker::wake_by_ref`), then grants the queue's
// head. "Nobody but the shard holds it" (`unused`, a strong count of 1) may
// thus be read while the timer is about to take a handle of its own. The
// model: one waiter queued (its handle: strong count 2), one grant allowed
// (arrival time 0, cost 10). The driver upgrades and grants the head if it
// is still queued; the waiter leaves (taking its grant if `observe`, else
// giving an unseen grant back: the arrival time restored if nothing was
// granted since); a check demotes the key if it is unused, else goes
// through the limiter (refused while anyone is queued); the owner sweeps
// (demotes if it can). Whatever the interleaving: at most the one grant is
// kept, and the key's arrival time (compact or full) says exactly whether
// it was — never a grant forgotten by a demotion or given back twice.

/// The waiter's node in the full limiter's queue.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Queued,
    /// Granted by the driver, not seen by its owner yet.
    Granted,
    Vacant,
}

/// The full limiter: strong count (the shard's handle and the waiter's),
/// arrival time, the waiter's node under the limiter's lock.
struct Driven {
    strong: AtomicUsize,
    tat: AtomicU64,
    node: Mutex<Node>,
}

/// `Weak::upgrade`: a handle only while a strong one exists.
fn upgrade(full: &Driven) -> bool {
    let mut n = full.strong.load(Ordering::Relaxed);
    loop {
        if n == 0 {
            return false;
        }
        match full
            .strong
            .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(actual) => n = actual,
        }
    }
}

/// Under the shard's lock: demotes the key if nobody else holds its limiter
/// and nobody is queued (`unused` then `take_seed`); the shard's handle is
/// dropped with the limiter.
fn demote_driven(slot: &mut Slot, full: &Driven) {
    if *slot == Slot::Promoted && full.strong.load(Ordering::Relaxed) == 1 {
        fence(Ordering::Acquire);
        let node = full.node.lock().unwrap();
        if *node != Node::Queued {
            *slot = Slot::Compact(full.tat.load(Ordering::Acquire));
            drop(node);
            full.strong.fetch_sub(1, Ordering::Release);
        }
    }
}

/// One run; returns the grants kept (the waiter's observed one and the
/// check's) or what went wrong. `early` is the broken variant: the waiter
/// lets go of its handle before settling its node, so a demotion may take
/// the state while an unseen grant is still to be given back.
fn driven_run(observe: bool, early: bool) -> Result<usize, &'static str> {
    let shard = Arc::new(Mutex::new(Slot::Promoted));
    let full = Arc::new(Driven {
        strong: AtomicUsize::new(2),
        tat: AtomicU64::new(0),
        node: Mutex::new(Node::Queued),
    });
    // The timer's thread: the driver's waker.
    let driver = {
        let full = full.clone();
        thread::spawn(move || {
            if !upgrade(&full) {
                return;
            }
            {
                let mut node = full.node.lock().unwrap();
                if *node == Node::Queued
                    && full
                        .tat
                        .compare_exchange(0, COST, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    *node = Node::Granted;
                }
            }
            full.strong.fetch_sub(1, Ordering::Release);
        })
    };
    // The waiter leaves: its grant observed (kept) or not (given back).
    let waiter = {
        let full = full.clone();
        thread::spawn(move || {
            if early {
                full.strong.fetch_sub(1, Ordering::Release);
            }
            let kept = {
                let mut node = full.node.lock().unwrap();
                let kept = match *node {
                    Node::Granted if observe => true,
                    Node::Granted => {
                        // `unrecord`: only if nothing was granted since.
                        let _ =
                            full.tat
                                .compare_exchange(COST, 0, Ordering::AcqRel, Ordering::Acquire);
                        false
                    }
                    _ => false,
                };
                *node = Node::Vacant;
                kept
            };
            if !early {
                full.strong.fetch_sub(1, Ordering::Release);
            }
            kept
        })
    };
    // A check of the key.
    let check = {
        let (shard, full) = (shard.clone(), full.clone());
        thread::spawn(move || {
            let mut slot = shard.lock().unwrap();
            demote_driven(&mut slot, &full);
            if let Slot::Compact(tat) = &mut *slot {
                return if *tat == 0 {
                    *tat = COST;
                    true
                } else {
                    false
                };
            }
            full.strong.fetch_add(1, Ordering::Relaxed);
            drop(slot);
            let granted = *full.node.lock().unwrap() != Node::Queued
                && full
                    .tat
                    .compare_exchange(0, COST, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            full.strong.fetch_sub(1, Ordering::Release);
            granted
        })
    };
    // The owner: a sweep.
    demote_driven(&mut shard.lock().unwrap(), &full);
    driver.join().unwrap();
    let kept = usize::from(waiter.join().unwrap()) + usize::from(check.join().unwrap());
    if kept > 1 {
        return Err("more grants kept than the quota allows");
    }
    let tat = match *shard.lock().unwrap() {
        Slot::Compact(tat) => tat,
        Slot::Promoted => full.tat.load(Ordering::Acquire),
    };
    if tat != COST * kept as u64 {
        return Err("the key's arrival time disagrees with the grants kept");
    }
    Ok(kept)
}

#[test]
fn driver_wake_against_a_leaving_waiter_a_check_and_a_sweep() {
    // Four parties: bounded (every interleaving with at most three
    // preemptions), as the full space takes hours.
    for observe in [false, true] {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            if let Err(error) = driven_run(observe, false) {
                panic!("observe {observe}: {error}");
            }
        });
    }
}

/// The model finds the bug it is for: a waiter that lets go of its handle
/// before giving its unseen grant back lets a demotion take the state with
/// that grant in it (a grant nobody has, kept for good).
#[test]
fn driver_wake_early_release_is_caught() {
    let found = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = found.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(move || {
        if driven_run(false, true).is_err() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        found.load(std::sync::atomic::Ordering::SeqCst),
        "loom found no demotion taking a grant about to be given back"
    );
}
