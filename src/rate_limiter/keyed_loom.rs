//! Loom model (review) of how a keyed limiter decides that a promoted
//! key's full limiter is unused and takes its GCRA state back
//! (`keyed.rs`: `Arc::strong_count(shared) == 1`, then
//! `Shared::take_seed` reads `tat`).
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
