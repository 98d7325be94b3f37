#![cfg(feature = "test-util")]
//! Adversarial review of the compact, bounded `KeyedRateLimiter` (issue 18):
//! strictness across the compact -> promoted -> demoted -> evicted
//! transitions (with a clock read that goes stale, as a preempted thread's
//! does), the key bound under concurrency, hot keys under a flood of new
//! keys, keys whose `Hash`, `Eq` or `Drop` panic, forgotten and cancelled
//! acquires, and the memory a key costs.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedRateLimiter, RateLimiter, Timer};
use common::CountingWaker;
use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

use common::poll_once as poll;

// ---------------------------------------------------------------------------
// A clock whose next read, on this thread, runs a hook right after reading:
// the thread is "preempted" between reading the clock and taking the lock,
// while time moves on and other parties use the limiter.
// ---------------------------------------------------------------------------

thread_local! {
    static AFTER_READ: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Runs `hook` right after this thread's next clock read.
fn after_next_read(hook: impl FnOnce() + 'static) {
    AFTER_READ.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

#[derive(Clone)]
struct Preempted(ManualClock);

impl Timer for Preempted {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        let now = self.0.now();
        if let Some(hook) = AFTER_READ.with(|h| h.borrow_mut().take()) {
            hook();
        }
        now
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }

    fn sleep_until_shared(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until_shared(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// Window of 2 per 100 ms. A key's waiter is granted at 100 by its promoted
/// limiter; a `try_acquire` of the same key read the clock at 99, just
/// before (a preempted thread), and takes the shard's lock after the waiter
/// is gone: it demotes the key and checks it at 99, behind the waiter's
/// grant at 100. Were its grant logged at 99 after the one at 100, the
/// log's newest entry would be 99 and a sweep at 199 would evict the key
/// with the grant at 100 still in its window (then 4 grants within 100 ms).
/// Holds: the log merges a grant older than its newest entry into that
/// entry (at the later time), and since 8da5801 the shard's time also never
/// goes behind the demoted limiter's.
#[test]
fn a_stale_clock_read_racing_a_demotion_never_lets_a_key_exceed_its_window() {
    common::watchdog("stale_demotion", || {
        let clock = ManualClock::new();
        let limiter =
            Arc::new(KeyedRateLimiter::new(2, ms(100)).with_timer(Preempted(clock.clone())));
        let waker = CountingWaker::new();
        // t = 0: the key's window is full; an acquire waits (the key is
        // promoted).
        limiter.try_acquire_n("k", 2).unwrap();
        let mut waiter = limiter.acquire("k");
        assert!(poll(&mut waiter, &waker).is_pending());
        clock.advance(ms(99));
        // A check reads the clock at 99; before it locks, time reaches 100,
        // the waiter is granted there, completes and is dropped.
        let (hook_clock, hook_waker) = (clock.clone(), CountingWaker::new());
        after_next_read(move || {
            hook_clock.advance(ms(1));
            assert_eq!(poll(&mut waiter, &hook_waker), Poll::Ready(Ok(())));
            drop(waiter);
        });
        // The window at 100 holds the waiter's grant only: one more fits.
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        // Two grants at 100 (the waiter's, and this one, made after it):
        // no more until 200.
        clock.advance(ms(99)); // 199
        limiter.evict_idle();
        assert!(
            limiter.try_acquire("k").is_err(),
            "a third grant within 100 ms for a quota of 2 per 100 ms (the key was evicted at 199 \
             with a grant made at 100 still in its window)"
        );
    });
}

/// The same race without an eviction: the out-of-order log still refuses
/// until 200 (the check itself looks at every entry). Holds on the branch.
#[test]
fn a_stale_clock_read_racing_a_demotion_still_checks_every_grant() {
    common::watchdog("stale_demotion_check", || {
        let clock = ManualClock::new();
        let limiter =
            Arc::new(KeyedRateLimiter::new(2, ms(100)).with_timer(Preempted(clock.clone())));
        let waker = CountingWaker::new();
        limiter.try_acquire_n("k", 2).unwrap();
        let mut waiter = limiter.acquire("k");
        assert!(poll(&mut waiter, &waker).is_pending());
        clock.advance(ms(99));
        let (hook_clock, hook_waker) = (clock.clone(), CountingWaker::new());
        after_next_read(move || {
            hook_clock.advance(ms(1));
            assert_eq!(poll(&mut waiter, &hook_waker), Poll::Ready(Ok(())));
            drop(waiter);
        });
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        clock.advance(ms(99)); // 199
        assert!(limiter.try_acquire("k").is_err());
        clock.advance(ms(1)); // 200
        assert_eq!(limiter.try_acquire_n("k", 2), Ok(()));
    });
}

/// GCRA under the same race: the arrival time only moves forward, so a
/// stale `now` is merely conservative. Holds.
#[test]
fn gcra_under_a_stale_clock_read_racing_a_demotion_stays_within_its_allowance() {
    common::watchdog("stale_demotion_gcra", || {
        let clock = ManualClock::new();
        let quota = Quota::gcra(2, ms(100), 2).unwrap(); // one per 50 ms, burst 2
        let limiter =
            Arc::new(KeyedRateLimiter::with_quota(quota).with_timer(Preempted(clock.clone())));
        let waker = CountingWaker::new();
        limiter.try_acquire_n("k", 2).unwrap(); // tat = 100
        let mut waiter = limiter.acquire("k"); // granted at 50 (tat 150)
        assert!(poll(&mut waiter, &waker).is_pending());
        clock.advance(ms(49));
        let (hook_clock, hook_waker) = (clock.clone(), CountingWaker::new());
        after_next_read(move || {
            hook_clock.advance(ms(1));
            assert_eq!(poll(&mut waiter, &hook_waker), Poll::Ready(Ok(())));
            drop(waiter);
        });
        assert!(limiter.try_acquire("k").is_err()); // next one at 100
        clock.advance(ms(50)); // 100
        limiter.evict_idle();
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        assert!(limiter.try_acquire("k").is_err());
    });
}

// ---------------------------------------------------------------------------
// The bound
// ---------------------------------------------------------------------------

/// Eight threads insert distinct keys (checks and acquires) into a limiter
/// bounded at 500 while a ninth samples `len()` and `stats()`: the bound is
/// never passed, exactly 500 keys are admitted (nothing is idle: the clock
/// stands still), every other one is refused with an error.
#[test]
fn the_bound_holds_with_eight_threads_inserting_distinct_keys() {
    for quota in [
        Quota::window(3, ms(100)).unwrap(),
        Quota::gcra(3, ms(100), 3).unwrap(),
    ] {
        common::watchdog("bound_threads", move || {
            let clock = ManualClock::new();
            let limiter = Arc::new(
                KeyedRateLimiter::with_quota(quota)
                    .with_timer(clock.clone())
                    .with_max_keys(500),
            );
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (limiter, stop) = (limiter.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seen = seen.max(limiter.len()).max(limiter.stats().keys);
                    }
                    seen
                })
            };
            let barrier = Arc::new(Barrier::new(8));
            let workers: Vec<_> = (0..8u64)
                .map(|t| {
                    let (limiter, barrier) = (limiter.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let waker = CountingWaker::new();
                        let (mut ok, mut refused) = (0, 0);
                        for i in 0..1_000u64 {
                            let key = t * 1_000_000 + i;
                            let outcome = if i % 2 == 0 {
                                limiter.try_acquire(key)
                            } else {
                                let mut acquire = limiter.acquire(key);
                                match poll(&mut acquire, &waker) {
                                    Poll::Ready(outcome) => outcome,
                                    Poll::Pending => panic!("a new key waited"),
                                }
                            };
                            match outcome {
                                Ok(()) => ok += 1,
                                Err(RateLimitError::TooManyKeys { max_keys: 500 }) => refused += 1,
                                Err(other) => panic!("unexpected {other:?}"),
                            }
                        }
                        (ok, refused)
                    })
                })
                .collect();
            let (mut ok, mut refused) = (0, 0);
            for worker in workers {
                let (o, r) = worker.join().unwrap();
                ok += o;
                refused += r;
            }
            stop.store(true, Ordering::Relaxed);
            let seen = sampler.join().unwrap();
            assert_eq!((ok, refused), (500, 7_500));
            assert!(seen <= 500, "len() reported {seen} keys for a bound of 500");
            let stats = limiter.stats();
            assert_eq!((stats.keys, stats.refusals), (500, 7_500));
            assert_eq!(limiter.len(), 500);
        });
    }
}

/// The same with evictions: the clock moves on while the threads insert,
/// so keys go idle and are evicted to make room. The bound is never passed
/// (checked after every insert by the inserting thread, and at the end).
#[test]
fn the_bound_holds_while_keys_are_evicted_concurrently() {
    common::watchdog("bound_evictions", || {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            KeyedRateLimiter::new(2, ms(10))
                .with_timer(clock.clone())
                .with_max_keys(64),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (clock, stop) = (clock.clone(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    clock.advance(ms(1));
                    std::thread::sleep(Duration::from_micros(200));
                }
                stop.store(true, Ordering::Relaxed);
            })
        };
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (limiter, stop) = (limiter.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut refused) = (0u64, 0u64);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        match limiter.try_acquire(t << 32 | i) {
                            Ok(()) => ok += 1,
                            Err(RateLimitError::TooManyKeys { .. }) => refused += 1,
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        ticker.join().unwrap();
        let mut ok = 0;
        for worker in workers {
            ok += worker.join().unwrap().0;
        }
        eprintln!("clock {:?} stats {:?}", clock.elapsed(), limiter.stats());
        assert!(limiter.len() <= 64);
        let stats = limiter.stats();
        assert!(stats.keys <= 64);
        // Every admitted key is either still tracked or was evicted.
        assert_eq!(ok, stats.evictions + stats.keys as u64);
        assert!(ok > 64, "keys went idle and new ones were admitted ({ok})");
    });
}

/// `len()` and `stats().keys` read the shards one after the other, so
/// while keys are evicted from one shard and inserted into another they
/// can report more keys than the bound (a count that was never true), even
/// though the limiter never tracks more than its bound (its reservation
/// counter says so). A monitor alerting on `keys > max_keys` would fire.
#[test]
fn len_never_reports_more_keys_than_the_bound() {
    common::watchdog("len_overshoot", || {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            KeyedRateLimiter::new(2, ms(10))
                .with_timer(clock.clone())
                .with_max_keys(64),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (clock, stop) = (clock.clone(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    clock.advance(ms(1));
                    std::thread::sleep(Duration::from_micros(200));
                }
                stop.store(true, Ordering::Relaxed);
            })
        };
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                let (limiter, stop) = (limiter.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let _ = limiter.try_acquire(t << 32 | i);
                    }
                })
            })
            .collect();
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            most = most.max(limiter.len()).max(limiter.stats().keys);
        }
        ticker.join().unwrap();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(most <= 64, "len() reported {most} keys for a bound of 64");
    });
}

/// A refused key is admitted once a key goes idle (a period later), for a
/// bound of one key; the refusal is an error value, counted.
#[test]
fn a_refused_key_is_admitted_once_room_frees_up() {
    for quota in [
        Quota::window(1, ms(100)).unwrap(),
        Quota::gcra(1, ms(100), 1).unwrap(),
    ] {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(quota)
            .with_timer(clock.clone())
            .with_max_keys(1);
        assert_eq!(limiter.try_acquire("a"), Ok(()));
        for _ in 0..100 {
            assert_eq!(
                limiter.try_acquire("b"),
                Err(RateLimitError::TooManyKeys { max_keys: 1 })
            );
        }
        let waker = CountingWaker::new();
        let mut refused = limiter.acquire("b");
        assert_eq!(
            poll(&mut refused, &waker),
            Poll::Ready(Err(RateLimitError::TooManyKeys { max_keys: 1 }))
        );
        clock.advance(ms(99));
        assert_eq!(
            limiter.try_acquire("b"),
            Err(RateLimitError::TooManyKeys { max_keys: 1 })
        );
        clock.advance(ms(1));
        assert_eq!(limiter.try_acquire("b"), Ok(()));
        assert_eq!(limiter.len(), 1);
        // "a" is gone: a fresh limiter for it, but no room now ("b" is busy).
        assert_eq!(
            limiter.try_acquire("a"),
            Err(RateLimitError::TooManyKeys { max_keys: 1 })
        );
        let stats = limiter.stats();
        assert_eq!((stats.evictions, stats.refusals), (1, 103));
    }
}

/// `with_max_keys(usize::MAX)` is accepted; `with_max_keys(0)` panics as
/// documented (at build time, not at the first key).
#[test]
fn extreme_bounds() {
    let limiter = KeyedRateLimiter::new(1, ms(100)).with_max_keys(usize::MAX);
    for i in 0..1_000u32 {
        assert_eq!(limiter.try_acquire(i), Ok(()));
    }
    assert_eq!(limiter.len(), 1_000);
    let zero = catch_unwind(|| KeyedRateLimiter::<u32>::new(1, ms(100)).with_max_keys(0));
    assert!(zero.is_err());
}

/// Ten hot keys checked twice every quarter period keep exactly the quota a
/// lone `RateLimiter` on the same clock gives them, while 2 000 new keys a
/// step flood a limiter bounded at 64 keys.
#[test]
fn hot_keys_keep_their_exact_quota_under_a_flood_of_new_keys() {
    for quota in [
        Quota::window(4, ms(100)).unwrap(),
        Quota::gcra(4, ms(100), 2).unwrap(),
    ] {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(quota)
            .with_timer(clock.clone())
            .with_max_keys(64);
        let alone: Vec<_> = (0..10)
            .map(|_| RateLimiter::with_quota(quota).with_timer(clock.clone()))
            .collect();
        let mut attacker = 1_000_000u64;
        let mut refusals = 0u64;
        for step in 0..80 {
            for (hot, single) in alone.iter().enumerate() {
                for _ in 0..2 {
                    let got = limiter.try_acquire(hot as u64);
                    let want = single.try_acquire();
                    assert_eq!(got, want, "hot key {hot} at step {step} ({quota:?})");
                }
            }
            for _ in 0..2_000 {
                attacker += 1;
                if let Err(error) = limiter.try_acquire(attacker) {
                    assert!(matches!(error, RateLimitError::TooManyKeys { .. }));
                    refusals += 1;
                }
            }
            assert!(limiter.len() <= 64);
            clock.advance(ms(25));
        }
        assert!(refusals > 0);
    }
}

// ---------------------------------------------------------------------------
// Keys whose Hash, Eq or Drop panic
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Book {
    made: AtomicUsize,
    dropped: AtomicUsize,
    /// Ids whose `Drop` panics.
    drop_panics: std::sync::Mutex<HashSet<u32>>,
    /// Ids whose `Eq` panics.
    eq_panics: std::sync::Mutex<HashSet<u32>>,
    hash_panics: std::sync::Mutex<HashSet<u32>>,
}

struct Key {
    id: u32,
    book: Arc<Book>,
}

impl Key {
    fn new(id: u32, book: &Arc<Book>) -> Key {
        book.made.fetch_add(1, Ordering::SeqCst);
        Key {
            id,
            book: book.clone(),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.book.hash_panics.lock().unwrap().contains(&self.id) {
            panic!("injected: Hash of key {}", self.id);
        }
        self.id.hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        if self.book.eq_panics.lock().unwrap().contains(&self.id) {
            panic!("injected: Eq of key {}", self.id);
        }
        self.id == other.id
    }
}

impl Eq for Key {}

impl Drop for Key {
    fn drop(&mut self) {
        self.book.dropped.fetch_add(1, Ordering::SeqCst);
        if self.book.drop_panics.lock().unwrap().contains(&self.id) && !std::thread::panicking() {
            panic!("injected: Drop of key {}", self.id);
        }
    }
}

fn panicked<R>(f: impl FnOnce() -> R) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

/// Every call with a panicking `Drop`, `Eq` or `Hash`: the panic propagates
/// from the call that was given the key (or is contained in an automatic
/// sweep), no shard is wedged, the grant a call took stays taken, and every
/// key instance is dropped exactly once by the end.
#[test]
fn keys_whose_hash_eq_or_drop_panic_are_dropped_once_and_wedge_nothing() {
    common::quiet();
    for quota in [
        Quota::window(2, ms(100)).unwrap(),
        Quota::gcra(2, ms(100), 2).unwrap(),
    ] {
        common::watchdog("panicking_keys", move || {
            let book = Arc::new(Book::default());
            let clock = ManualClock::new();
            let limiter = KeyedRateLimiter::with_quota(quota)
                .with_timer(clock.clone())
                .with_max_keys(200);
            let waker = CountingWaker::new();
            for id in 0..100 {
                limiter.try_acquire(Key::new(id, &book)).unwrap();
            }
            // Drop panics: on an existing key's check (the grant stays).
            book.drop_panics.lock().unwrap().extend([3, 4, 5, 6, 7]);
            assert!(panicked(|| limiter.try_acquire(Key::new(3, &book))));
            // Key 3 took its second grant through the panicking call: a
            // third is refused.
            book.drop_panics.lock().unwrap().remove(&3);
            assert!(limiter.try_acquire(Key::new(3, &book)).is_err());
            // On an acquire of an existing key, granted at its first poll
            // (the grant stays: the outcome is kept for the next poll).
            let mut acquire = limiter.acquire(Key::new(4, &book));
            assert!(panicked(|| poll(&mut acquire, &waker)));
            assert_eq!(poll(&mut acquire, &waker), Poll::Ready(Ok(())));
            drop(acquire);
            book.drop_panics.lock().unwrap().remove(&4);
            assert!(limiter.try_acquire(Key::new(4, &book)).is_err());
            // On a refusal (ExceedsQuota) of an existing key.
            assert!(panicked(|| limiter.try_acquire_n(Key::new(5, &book), 3)));
            // Eq panics under the shard lock: the shard is not wedged.
            book.eq_panics.lock().unwrap().insert(8);
            assert!(panicked(|| limiter.try_acquire(Key::new(8, &book))));
            // At an acquire's first poll: it stays unpolled, and the next
            // poll looks again.
            let mut acquire = limiter.acquire(Key::new(8, &book));
            assert!(panicked(|| poll(&mut acquire, &waker)));
            book.eq_panics.lock().unwrap().remove(&8);
            assert_eq!(poll(&mut acquire, &waker), Poll::Ready(Ok(())));
            drop(acquire);
            assert!(limiter.try_acquire(Key::new(8, &book)).is_err());
            // Hash panics: nothing touched.
            book.hash_panics.lock().unwrap().insert(9);
            assert!(panicked(|| limiter.try_acquire(Key::new(9, &book))));
            book.hash_panics.lock().unwrap().remove(&9);
            assert_eq!(limiter.try_acquire(Key::new(9, &book)), Ok(()));
            // A waiter on a promoted key, then its demotion by a check.
            let mut waiting = limiter.acquire(Key::new(10, &book));
            assert_eq!(poll(&mut waiting, &waker), Poll::Ready(Ok(())));
            drop(waiting);
            // Eviction by evict_idle: keys 6 and 7 panic; all idle keys go.
            clock.advance(ms(500));
            assert!(panicked(|| limiter.evict_idle()));
            assert_eq!(
                limiter.len(),
                0,
                "every idle key is evicted even if drops panic"
            );
            // Automatic sweeps (a full limiter making room) contain the
            // panic: fill, let the keys idle, then insert new keys.
            for id in 0..200 {
                limiter.try_acquire(Key::new(id, &book)).unwrap();
            }
            assert_eq!(
                limiter.try_acquire(Key::new(1_000, &book)),
                Err(RateLimitError::TooManyKeys { max_keys: 200 })
            );
            clock.advance(ms(500));
            for id in 1_000..1_200 {
                assert_eq!(limiter.try_acquire(Key::new(id, &book)), Ok(()), "key {id}");
            }
            assert_eq!(limiter.len(), 200);
            assert!(limiter.try_acquire(Key::new(1_200, &book)).is_err());
            // Every instance not held by the limiter was dropped, once.
            let (made, dropped) = (
                book.made.load(Ordering::SeqCst),
                book.dropped.load(Ordering::SeqCst),
            );
            assert_eq!(
                made - dropped,
                limiter.len(),
                "key instances dropped exactly once"
            );
            drop(limiter);
            assert_eq!(
                book.made.load(Ordering::SeqCst),
                book.dropped.load(Ordering::SeqCst)
            );
        });
    }
}

/// Dropping the limiter with keys whose `Drop` panics: the first panic
/// propagates; are the other keys dropped? (The tables are hashbrown's,
/// which stop dropping elements at the first panic.)
#[test]
fn dropping_the_limiter_drops_every_key_even_if_one_drop_panics() {
    common::quiet();
    let book = Arc::new(Book::default());
    let limiter = KeyedRateLimiter::new(2, ms(100));
    for id in 0..1_000 {
        limiter.try_acquire(Key::new(id, &book)).unwrap();
    }
    book.drop_panics.lock().unwrap().insert(500);
    assert!(panicked(move || drop(limiter)));
    assert_eq!(
        book.dropped.load(Ordering::SeqCst),
        book.made.load(Ordering::SeqCst),
        "keys leaked when one key's Drop panicked during the limiter's drop"
    );
}

// ---------------------------------------------------------------------------
// Wakers, cancels, forgets
// ---------------------------------------------------------------------------

struct PanicOnWake;

impl Wake for PanicOnWake {
    fn wake(self: Arc<Self>) {
        panic!("injected: waker");
    }
    fn wake_by_ref(self: &Arc<Self>) {
        panic!("injected: waker");
    }
}

/// `set_quota` lets waiters of two keys through; the waker of one panics:
/// the other key's waiter is still woken and granted, the panic propagates
/// from `set_quota`, and both keys keep working.
#[test]
fn a_panicking_waker_woken_by_set_quota_wedges_no_key() {
    common::quiet();
    common::watchdog("set_quota_waker", || {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(1, ms(100)).with_timer(clock.clone());
        limiter.try_acquire("a").unwrap();
        limiter.try_acquire("b").unwrap();
        let panicky = Waker::from(Arc::new(PanicOnWake));
        let good = CountingWaker::new();
        let mut a = limiter.acquire("a");
        let mut b = limiter.acquire("b");
        assert!(
            Pin::new(&mut a)
                .poll(&mut std::task::Context::from_waker(&panicky))
                .is_pending()
        );
        assert!(poll(&mut b, &good).is_pending());
        let raised = panicked(|| limiter.set_quota(Quota::window(2, ms(100)).unwrap()));
        assert!(raised, "the waker's panic propagates from set_quota");
        assert!(good.wakes() >= 1);
        assert_eq!(poll(&mut b, &good), Poll::Ready(Ok(())));
        assert_eq!(poll(&mut a, &good), Poll::Ready(Ok(())));
        assert!(limiter.try_acquire("a").is_err());
        clock.advance(ms(100));
        assert_eq!(limiter.try_acquire_n("a", 2), Ok(()));
        assert_eq!(limiter.try_acquire_n("b", 2), Ok(()));
    });
}

/// A forgotten waiting acquire: the key's other waiters and checks go on
/// (the forgotten one is served in turn, its grant lost), the key stays
/// tracked (its limiter is leaked with the future), and nothing hangs.
#[test]
fn a_forgotten_waiting_acquire_never_wedges_its_key() {
    common::watchdog("forget", || {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(1, ms(100)).with_timer(clock.clone());
        let waker = CountingWaker::new();
        limiter.try_acquire("k").unwrap();
        let mut forgotten = limiter.acquire("k");
        assert!(poll(&mut forgotten, &waker).is_pending());
        let mut next = limiter.acquire("k");
        assert!(poll(&mut next, &waker).is_pending());
        common::forget_reachably(forgotten);
        clock.advance(ms(100)); // the forgotten waiter's turn
        assert!(poll(&mut next, &waker).is_pending());
        assert!(limiter.try_acquire("k").is_err(), "no barging past `next`");
        clock.advance(ms(100));
        assert_eq!(poll(&mut next, &waker), Poll::Ready(Ok(())));
        drop(next);
        clock.advance(ms(100));
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        clock.advance(ms(1_000));
        // The forgotten future holds the key's limiter: never evicted.
        assert_eq!(limiter.evict_idle(), 0);
        assert_eq!(limiter.len(), 1);
    });
}

/// An acquire dropped at every poll while a check of the same key runs on
/// the same clock: a cancelled waiter gives its place (and any unseen
/// grant) back, so the checks get exactly what a lone limiter would give.
#[test]
fn acquires_cancelled_at_every_poll_match_a_lone_limiter() {
    for quota in [
        Quota::window(3, ms(100)).unwrap(),
        Quota::gcra(3, ms(100), 2).unwrap(),
    ] {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
        let single = RateLimiter::with_quota(quota).with_timer(clock.clone());
        let waker = CountingWaker::new();
        let mut rng = common::Rng(0x9E37_79B9_7F4A_7C15);
        for step in 0..400 {
            let polls = rng.below(3);
            let mut keyed = limiter.acquire("k");
            let mut lone = single.acquire();
            for _ in 0..polls {
                let k = poll(&mut keyed, &waker).map(|r| r.is_ok());
                let s = poll(&mut lone, &waker).map(|_| true);
                assert_eq!(k, s, "step {step}");
                if k.is_ready() {
                    break;
                }
            }
            drop((keyed, lone));
            // The outcome, retry-after included.
            assert_eq!(
                limiter.try_acquire("k"),
                single.try_acquire(),
                "step {step} ({quota:?})"
            );
            clock.advance(ms(rng.below_u64(30)));
        }
    }
}

// ---------------------------------------------------------------------------
// Retry-after and the extremes of time
// ---------------------------------------------------------------------------

/// GCRA with an interval past 2^63 ns (a 300-year period, one call): the
/// compact slot stores arrival times in 63 bits and turns this one into
/// "never again", where a lone limiter says "in 300 years" and grants then.
/// (Fixed: the promotion flag moved to the entry's stored hash, and the
/// slot keeps all 64 bits.)
#[test]
fn a_gcra_key_with_a_very_long_interval_matches_a_lone_limiter() {
    let period = Duration::from_secs(300 * 365 * 86_400);
    let quota = Quota::gcra(1, period, 1).unwrap();
    let clock = ManualClock::new();
    let limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
    let single = RateLimiter::with_quota(quota).with_timer(clock.clone());
    assert_eq!(limiter.try_acquire("k"), single.try_acquire());
    clock.advance(period);
    assert_eq!(
        limiter.try_acquire("k"),
        single.try_acquire(),
        "300 years later, a lone limiter grants again"
    );
    let wait = |r: Result<(), RateLimitError>| r.unwrap_err().wait().unwrap();
    assert_eq!(wait(limiter.try_acquire("k")), wait(single.try_acquire()));
}

/// Window quotas of `Duration::MAX` and `usize::MAX` calls: no overflow, no
/// panic; a key never idles.
#[test]
fn extreme_window_quotas() {
    let clock = ManualClock::new();
    let limiter = KeyedRateLimiter::with_quota(Quota::window(2, Duration::MAX).unwrap())
        .with_timer(clock.clone())
        .with_max_keys(1);
    assert_eq!(limiter.try_acquire_n("k", 2), Ok(()));
    assert_eq!(
        limiter.try_acquire("k"),
        Err(RateLimitError::RateLimited {
            wait: Duration::MAX
        })
    );
    // (Past 584 years the clock's nanoseconds saturate, for every limiter.)
    clock.advance(Duration::from_secs(100 * 365 * 86_400));
    assert_eq!(limiter.evict_idle(), 0);
    assert!(limiter.try_acquire("k").is_err());
    let many = KeyedRateLimiter::new(usize::MAX, ms(1)).with_timer(clock.clone());
    assert_eq!(many.try_acquire_n("k", usize::MAX), Ok(()));
    assert!(many.try_acquire("k").is_err());
    clock.advance(ms(1));
    assert_eq!(many.try_acquire_n("k", usize::MAX), Ok(()));
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// Bytes a key costs: checked only, or acquired once (granted at once, the
/// future dropped). Issue 18: "the wait queue, driver and timer exist only
/// for keys that have waiters, and go away when the last waiter leaves".
/// Every acquire promotes its key (even one granted at once), and the key
/// stays promoted until its next check or a sweep; since 9eee609 the
/// automatic sweep waits until some key may be idle (a period), so every
/// key acquired within a period keeps a whole limiter: measured 530 bytes a
/// key against 54 for a checked key (149 before 9eee609; main: 502). In
/// release, 10^6 distinct keys acquired once (never waiting) grow the
/// resident set by 557 MiB (window) and 541 MiB (GCRA), against 66 and 50
/// MiB checked — the table for main was 537 and 461. The guide's
/// "Only keys with waiters hold a queue and a timer" and "a bound of a
/// million keys is tens of MiB" do not hold for keys that come through
/// `acquire`. (Fixed: an acquire checks its key at its first poll, and a
/// grant there leaves the key compact; 54.1 bytes a key both ways.)
#[test]
fn a_key_acquired_without_waiting_costs_no_more_than_a_checked_key() {
    const KEYS: u64 = 20_000;
    let clock = ManualClock::new();
    let per_key = |acquire: bool| {
        let limiter = KeyedRateLimiter::new(10, Duration::from_secs(60)).with_timer(clock.clone());
        let waker = CountingWaker::new();
        let bytes = common::net_alloc(|| {
            for key in 0..KEYS {
                if acquire {
                    let mut a = limiter.acquire(key);
                    assert_eq!(poll(&mut a, &waker), Poll::Ready(Ok(())));
                } else {
                    limiter.try_acquire(key).unwrap();
                }
            }
        });
        drop(limiter);
        bytes as f64 / KEYS as f64
    };
    let _ = per_key(false); // lazy statics
    let checked = per_key(false);
    let acquired = per_key(true);
    eprintln!("bytes per key: checked {checked:.1}, acquired {acquired:.1}");
    assert!(
        acquired <= 2.0 * checked,
        "a key acquired once (never waiting) costs {acquired:.0} bytes, a checked one {checked:.0}"
    );
}

// ---------------------------------------------------------------------------
// Threads: checks, acquires, quota changes and sweeps racing
// ---------------------------------------------------------------------------

/// A grant made between two clock readings (nanoseconds since the start).
#[derive(Clone, Copy, Debug)]
struct Granted {
    key: u8,
    before: u64,
    after: u64,
}

/// A sound strictness check on grants known only within `[before, after]`:
/// the grants that surely fall in `[a, a + window)` for some grant's
/// `before = a` are never more than `max`.
fn assert_at_most(grants: &[Granted], max: usize, window: u64) {
    for key in grants.iter().map(|g| g.key).collect::<HashSet<_>>() {
        let mut mine: Vec<_> = grants.iter().filter(|g| g.key == key).copied().collect();
        mine.sort_by_key(|g| g.before);
        for (i, anchor) in mine.iter().enumerate() {
            let inside: Vec<_> = mine[i..]
                .iter()
                .filter(|g| g.after < anchor.before + window)
                .collect();
            assert!(
                inside.len() <= max,
                "key {key}: {} grants within {window} ns: {inside:?}",
                inside.len()
            );
        }
    }
}

/// Two threads check and two acquire three keys of a bounded limiter
/// (window of 3 calls) while a fifth floods it with new keys, a sixth
/// flips the period between 20 and 10 ms, a seventh sweeps, and the clock
/// moves in 1 ms steps: keys are promoted, demoted, evicted and re-created
/// all the time. Whatever the quota in force, every grant leaves at most 3
/// in the 10 ms before it, so no 10 ms holds more than 3 grants of a key.
#[test]
fn threads_racing_promotions_demotions_evictions_and_quota_changes_stay_strict() {
    common::watchdog("threads_strict", || {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            KeyedRateLimiter::new(3, ms(20))
                .with_timer(clock.clone())
                .with_max_keys(8),
        );
        let elapsed = {
            let clock = clock.clone();
            move || clock.elapsed().as_nanos() as u64
        };
        let stop = Arc::new(AtomicBool::new(false));
        let acquirers_done = Arc::new(AtomicUsize::new(0));
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for t in 0..2u8 {
            let (limiter, stop, grants, elapsed) = (
                limiter.clone(),
                stop.clone(),
                grants.clone(),
                elapsed.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut i = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    let key = i.wrapping_add(t) % 3;
                    let before = elapsed();
                    match limiter.try_acquire(key) {
                        Ok(()) => grants.lock().unwrap().push(Granted {
                            key,
                            before,
                            after: elapsed(),
                        }),
                        Err(RateLimitError::RateLimited { .. })
                        | Err(RateLimitError::TooManyKeys { .. }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }));
        }
        for t in 0..2u8 {
            let (limiter, stop, grants, elapsed, done) = (
                limiter.clone(),
                stop.clone(),
                grants.clone(),
                elapsed.clone(),
                acquirers_done.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut i = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    let key = i.wrapping_add(t) % 3;
                    let before = elapsed();
                    match futures::executor::block_on(limiter.acquire(key)) {
                        Ok(()) => grants.lock().unwrap().push(Granted {
                            key,
                            before,
                            after: elapsed(),
                        }),
                        Err(RateLimitError::TooManyKeys { .. }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        {
            let (limiter, stop) = (limiter.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut key = 100u8;
                while !stop.load(Ordering::Relaxed) {
                    key = key.wrapping_add(1).max(100);
                    let _ = limiter.try_acquire(key);
                }
            }));
        }
        {
            let (limiter, stop) = (limiter.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    flip = !flip;
                    let period = if flip { ms(10) } else { ms(20) };
                    limiter
                        .set_quota(Quota::window(3, period).unwrap())
                        .unwrap();
                    std::thread::sleep(Duration::from_micros(300));
                }
            }));
        }
        {
            let (limiter, stop) = (limiter.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    limiter.evict_idle();
                    std::thread::sleep(Duration::from_micros(100));
                }
            }));
        }
        for _ in 0..600 {
            clock.advance(Duration::from_micros(500));
            std::thread::sleep(Duration::from_micros(300));
        }
        stop.store(true, Ordering::Relaxed);
        // The acquirers' last waits end as time goes on.
        while acquirers_done.load(Ordering::SeqCst) < 2 {
            clock.advance(ms(1));
            std::thread::sleep(Duration::from_micros(100));
        }
        for thread in threads {
            thread.join().unwrap();
        }
        let grants = grants.lock().unwrap();
        assert!(grants.len() > 50, "{} grants", grants.len());
        assert_at_most(&grants, 3, 10_000_000);
        eprintln!("{} grants, stats {:?}", grants.len(), limiter.stats());
    });
}

// ---------------------------------------------------------------------------
// The reservation an acquire of a new key holds while it builds a limiter
// ---------------------------------------------------------------------------

thread_local! {
    static ON_CLONE: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Runs `hook` in this thread's next clone of a [`CloneHook`] timer (the
/// keyed limiter clones its timer, with no lock held, to build a key's
/// full limiter).
fn on_next_clone(hook: impl FnOnce() + 'static) {
    ON_CLONE.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

struct CloneHook(ManualClock);

impl Clone for CloneHook {
    fn clone(&self) -> Self {
        if let Some(hook) = ON_CLONE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        CloneHook(self.0.clone())
    }
}

impl Timer for CloneHook {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }

    fn sleep_until_shared(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until_shared(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// Room in a bound of `max` is exactly `room` keys: after every key goes
/// idle and is evicted, `max` new keys are admitted and the next refused.
fn assert_room_is_exact(
    limiter: &KeyedRateLimiter<Key, CloneHook>,
    clock: &ManualClock,
    book: &Arc<Book>,
    max: usize,
) {
    clock.advance(Duration::from_secs(3_600));
    limiter.evict_idle();
    assert_eq!(limiter.len(), 0);
    for id in 0..max as u32 {
        assert_eq!(
            limiter.try_acquire(Key::new(10_000 + id, book)),
            Ok(()),
            "key {id}"
        );
    }
    assert_eq!(
        limiter.try_acquire(Key::new(20_000, book)),
        Err(RateLimitError::TooManyKeys { max_keys: max })
    );
}

/// An acquire that must wait promotes its key at its first poll, building
/// the key's limiter with the lock released (cloning the timer: user code).
/// If the key went meanwhile (evicted), the acquire reserves room for it
/// again, and gives the room back on every path that does not insert the
/// key: the timer's clone panics; another caller inserts the same key
/// meanwhile (it took its own room); then the key's `Eq` panics when the
/// acquire looks again. A panic leaves the acquire unpolled: nothing taken.
#[test]
fn an_acquires_reservation_is_given_back_on_every_path() {
    common::quiet();
    common::watchdog("reservation", || {
        let book = Arc::new(Book::default());
        let clock = ManualClock::new();
        let limiter = Rc::new(
            KeyedRateLimiter::new(1, ms(100))
                .with_timer(CloneHook(clock.clone()))
                .with_max_keys(3),
        );
        let waker = CountingWaker::new();
        // The key is at its quota: the first poll promotes it, and the
        // timer's clone panics.
        assert_eq!(limiter.try_acquire(Key::new(1, &book)), Ok(()));
        on_next_clone(|| panic!("injected: timer clone"));
        let mut acquire = limiter.acquire(Key::new(1, &book));
        assert!(panicked(|| poll(&mut acquire, &waker)));
        assert_eq!(limiter.len(), 1);
        assert!(poll(&mut acquire, &waker).is_pending(), "it looks again");
        assert_eq!(limiter.stats().waiting_keys, 1);
        drop(acquire);
        assert_room_is_exact(&limiter, &clock, &book, 3);
        // While its limiter is built, the key is evicted and the quota
        // changes (the limiter is built again, for a key that is new now:
        // room reserved), and that second clone panics.
        clock.advance(Duration::from_secs(3_600));
        limiter.evict_idle();
        let evict_then = |then: Box<dyn FnOnce()>| {
            let (limiter2, clock2) = (limiter.clone(), clock.clone());
            on_next_clone(move || {
                clock2.advance(Duration::from_secs(3_600));
                assert_eq!(limiter2.evict_idle(), 1);
                // A change (and back: the same quota set again changes
                // nothing): the limiter being built is for an old quota.
                let quota = limiter2.quota();
                let other = awaitkit::rate_limiter::Quota::window(2, ms(100)).unwrap();
                limiter2.set_quota(other).unwrap();
                limiter2.set_quota(quota).unwrap();
                on_next_clone(then);
            });
        };
        assert_eq!(limiter.try_acquire(Key::new(2, &book)), Ok(()));
        evict_then(Box::new(|| panic!("injected: timer clone")));
        let mut acquire = limiter.acquire(Key::new(2, &book));
        assert!(panicked(|| poll(&mut acquire, &waker)));
        drop(acquire);
        assert_room_is_exact(&limiter, &clock, &book, 3);
        // The same, and another caller inserts the key while its limiter is
        // built again.
        clock.advance(Duration::from_secs(3_600));
        limiter.evict_idle();
        assert_eq!(limiter.try_acquire(Key::new(3, &book)), Ok(()));
        {
            let (limiter2, book2) = (limiter.clone(), book.clone());
            evict_then(Box::new(move || {
                assert_eq!(limiter2.try_acquire(Key::new(3, &book2)), Ok(()));
            }));
        }
        let mut acquire = limiter.acquire(Key::new(3, &book));
        assert!(
            poll(&mut acquire, &waker).is_pending(),
            "the other caller took the grant"
        );
        drop(acquire);
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.try_acquire(Key::new(4, &book)), Ok(()));
        assert_eq!(limiter.try_acquire(Key::new(5, &book)), Ok(()));
        assert_eq!(
            limiter.try_acquire(Key::new(7, &book)),
            Err(RateLimitError::TooManyKeys { max_keys: 3 })
        );
        // The same, and then the key's Eq panics when the acquire looks
        // again.
        clock.advance(Duration::from_secs(3_600));
        limiter.evict_idle();
        assert_eq!(limiter.try_acquire(Key::new(6, &book)), Ok(()));
        {
            let (limiter2, book2) = (limiter.clone(), book.clone());
            evict_then(Box::new(move || {
                assert_eq!(limiter2.try_acquire(Key::new(6, &book2)), Ok(()));
                book2.eq_panics.lock().unwrap().insert(6);
            }));
        }
        let mut acquire = limiter.acquire(Key::new(6, &book));
        assert!(panicked(|| poll(&mut acquire, &waker)));
        book.eq_panics.lock().unwrap().clear();
        drop(acquire);
        assert_eq!(limiter.len(), 1);
        assert_room_is_exact(&limiter, &clock, &book, 3);
        drop(limiter);
        assert_eq!(
            book.made.load(Ordering::SeqCst),
            book.dropped.load(Ordering::SeqCst)
        );
    });
}

/// A waker that, when woken, uses the limiter that woke it: checks the
/// same key, sweeps, reads stats and changes the quota — from inside a
/// clock advance (the key's driver) and from inside `set_quota`. No lock
/// of the key map is held while wakers run, so nothing deadlocks.
#[test]
fn a_waker_that_calls_back_into_the_limiter_never_deadlocks() {
    struct Reentrant {
        limiter: Arc<KeyedRateLimiter<&'static str, ManualClock>>,
        wakes: AtomicUsize,
    }
    impl Wake for Reentrant {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let depth = self.wakes.fetch_add(1, Ordering::SeqCst);
            let _ = self.limiter.try_acquire("k");
            let _ = self.limiter.try_acquire("other");
            let _ = self.limiter.stats();
            let _ = self.limiter.evict_idle();
            if depth == 0 {
                let _ = self.limiter.set_quota(Quota::window(3, ms(100)).unwrap());
            }
        }
    }
    common::watchdog("reentrant_waker", || {
        let clock = ManualClock::new();
        let limiter = Arc::new(KeyedRateLimiter::new(1, ms(100)).with_timer(clock.clone()));
        let reentrant = Arc::new(Reentrant {
            limiter: limiter.clone(),
            wakes: AtomicUsize::new(0),
        });
        let waker = Waker::from(reentrant.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        limiter.try_acquire("k").unwrap();
        let mut first = limiter.acquire("k");
        let mut second = limiter.acquire("k");
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        // set_quota lets `first` through and wakes it; its waker changes
        // the quota again (re-entrant set_quota) and checks the key.
        limiter
            .set_quota(Quota::window(2, ms(100)).unwrap())
            .unwrap();
        assert!(reentrant.wakes.load(Ordering::SeqCst) >= 1);
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Ready(Ok(())));
        clock.advance(ms(500));
        assert_eq!(Pin::new(&mut second).poll(&mut cx), Poll::Ready(Ok(())));
        drop((first, second));
        clock.advance(ms(500));
        assert_eq!(limiter.try_acquire_n("k", 3), Ok(()));
    });
}

/// The threads test for GCRA (4 per 20 ms, burst 2), its rate flipping
/// between 4 and 2 per 20 ms: the grants of a key in any 20 ms are never
/// more than the burst plus what the faster rate earns in 20 ms (2 + 4).
#[test]
fn gcra_threads_racing_promotions_demotions_and_rate_changes_stay_within_the_allowance() {
    common::watchdog("threads_gcra", || {
        let clock = ManualClock::new();
        let fast = Quota::gcra(4, ms(20), 2).unwrap();
        let slow = Quota::gcra(2, ms(20), 2).unwrap();
        let limiter = Arc::new(
            KeyedRateLimiter::with_quota(fast)
                .with_timer(clock.clone())
                .with_max_keys(8),
        );
        let elapsed = {
            let clock = clock.clone();
            move || clock.elapsed().as_nanos() as u64
        };
        let stop = Arc::new(AtomicBool::new(false));
        let acquirers_done = Arc::new(AtomicUsize::new(0));
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for t in 0..4u8 {
            let (limiter, stop, grants, elapsed, done) = (
                limiter.clone(),
                stop.clone(),
                grants.clone(),
                elapsed.clone(),
                acquirers_done.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut i = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_add(1);
                    let key = i.wrapping_add(t) % 2;
                    let before = elapsed();
                    let outcome = if t < 2 {
                        limiter.try_acquire(key)
                    } else {
                        futures::executor::block_on(limiter.acquire(key))
                    };
                    match outcome {
                        Ok(()) => grants.lock().unwrap().push(Granted {
                            key,
                            before,
                            after: elapsed(),
                        }),
                        Err(RateLimitError::RateLimited { .. }) if t < 2 => {}
                        Err(RateLimitError::TooManyKeys { .. }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
                if t >= 2 {
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        {
            let (limiter, stop) = (limiter.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    flip = !flip;
                    limiter.set_quota(if flip { slow } else { fast }).unwrap();
                    let _ = limiter.evict_idle();
                    std::thread::sleep(Duration::from_micros(300));
                }
            }));
        }
        for _ in 0..600 {
            clock.advance(Duration::from_micros(500));
            std::thread::sleep(Duration::from_micros(300));
        }
        stop.store(true, Ordering::Relaxed);
        while acquirers_done.load(Ordering::SeqCst) < 2 {
            clock.advance(ms(1));
            std::thread::sleep(Duration::from_micros(100));
        }
        for thread in threads {
            thread.join().unwrap();
        }
        let grants = grants.lock().unwrap();
        assert!(grants.len() > 50, "{} grants", grants.len());
        assert_at_most(&grants, 6, 20_000_000);
    });
}

/// Differential: one key of a keyed limiter against a lone `RateLimiter`
/// on the same clock, through random checks, acquires (kept, polled,
/// cancelled, forgotten), sweeps, quota changes and clock moves. The key
/// moves between its compact and promoted forms and is evicted; every
/// outcome (retry-after included) and every acquire's readiness must be
/// the lone limiter's.
///
/// (The window's quotas share their period: after a period *increase* the
/// two differ by design — a grant that has left the old window still counts
/// in a lone limiter until its next check expires it, while the keyed
/// limiter's sweeps may have forgotten it already; neither is stricter than
/// "the grants still in the window when the quota changes count".)
#[test]
fn one_key_behaves_exactly_like_a_lone_limiter() {
    use awaitkit::{KeyedAcquireN, RateAcquireN};
    for (seed, quotas) in (1..=300u64).flat_map(|seed| {
        [
            (
                seed,
                [
                    Quota::window(3, ms(50)).unwrap(),
                    Quota::window(5, ms(50)).unwrap(),
                ],
            ),
            (
                seed,
                [
                    Quota::gcra(3, ms(50), 2).unwrap(),
                    Quota::gcra(6, ms(50), 3).unwrap(),
                ],
            ),
            // More than 1 024 calls a period: the log merges grants.
            (
                seed,
                [
                    Quota::window(2_000, ms(50)).unwrap(),
                    Quota::window(3_000, ms(50)).unwrap(),
                ],
            ),
        ]
    }) {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
        let single = RateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
        let waker = CountingWaker::new();
        let mut rng = common::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        type Pair<'a> = (
            Pin<Box<KeyedAcquireN<&'static str, ManualClock>>>,
            Pin<Box<RateAcquireN<'a, ManualClock>>>,
        );
        let mut live: Vec<Pair<'_>> = Vec::new();
        let mut forgotten = Vec::new();
        let scale = if quotas[0].max_calls() > 1_000 {
            700
        } else {
            1
        };
        for step in 0..300 {
            let what = format!("seed {seed} step {step} ({:?})", quotas[0].burst());
            match rng.below(9) {
                0 | 1 => {
                    let n = 1 + rng.below(3 * scale);
                    assert_eq!(
                        limiter.try_acquire_n("k", n),
                        single.try_acquire_n(n),
                        "{what}"
                    );
                }
                2 | 3 if live.len() < 3 => {
                    let n = 1 + rng.below(2 * scale);
                    live.push((
                        Box::pin(limiter.acquire_n("k", n)),
                        Box::pin(single.acquire_n(n)),
                    ));
                }
                4 if !live.is_empty() => {
                    let i = rng.below(live.len());
                    drop(live.remove(i));
                }
                5 if !live.is_empty() && rng.below(4) == 0 => {
                    let i = rng.below(live.len());
                    forgotten.push(live.remove(i));
                }
                6 => {
                    limiter.evict_idle();
                }
                7 if rng.below(3) == 0 => {
                    let quota = quotas[rng.below(2)];
                    limiter.set_quota(quota).unwrap();
                    single.set_quota(quota).unwrap();
                }
                _ => clock.advance(ms(rng.below_u64(25))),
            }
            let mut i = 0;
            while i < live.len() {
                let (k, s) = &mut live[i];
                let got = k.as_mut().poll(&mut waker.context());
                let want = s.as_mut().poll(&mut waker.context());
                assert_eq!(got, want, "{what}: acquire {i}");
                if got.is_ready() {
                    drop(live.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        // The forgotten acquires stay alive until here (never polled
        // again), as `mem::forget` would leave them.
        drop(live);
        common::forget_reachably(forgotten);
    }
}

/// A waiter of a promoted key whose waker panics when the key's driver
/// wakes it (from the clock's advance): the panic goes no further than
/// the driver, the waiter is still granted, the key is demoted and evicted
/// afterwards, and the other key's waiter is unaffected.
#[test]
fn a_waiters_panicking_waker_wedges_neither_its_key_nor_the_others() {
    common::quiet();
    common::watchdog("waker_panics_driver", || {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(1, ms(100)).with_timer(clock.clone());
        let good = CountingWaker::new();
        let panicky = Waker::from(Arc::new(PanicOnWake));
        limiter.try_acquire("a").unwrap();
        limiter.try_acquire("b").unwrap();
        let mut a = limiter.acquire("a");
        let mut b = limiter.acquire("b");
        assert!(
            Pin::new(&mut a)
                .poll(&mut std::task::Context::from_waker(&panicky))
                .is_pending()
        );
        assert!(poll(&mut b, &good).is_pending());
        let _ = panicked(|| clock.advance(ms(100)));
        assert_eq!(poll(&mut b, &good), Poll::Ready(Ok(())));
        assert_eq!(poll(&mut a, &good), Poll::Ready(Ok(())));
        drop((a, b));
        assert!(limiter.try_acquire("a").is_err());
        clock.advance(ms(100));
        assert_eq!(limiter.evict_idle(), 2);
        assert_eq!(limiter.try_acquire("a"), Ok(()));
        assert_eq!(limiter.stats().waiting_keys, 0);
    });
}

/// A clock that can be set back (a wall clock corrected by NTP, a VM
/// migrated): `now()` is the manual clock minus `back`.
#[derive(Clone)]
struct Backwards(ManualClock, Arc<std::sync::atomic::AtomicU64>);

impl Timer for Backwards {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        self.0.now() - Duration::from_nanos(self.1.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// The differential test on a clock that jumps backwards and forwards: the
/// keyed limiter never grants a key what a lone limiter on the same clock
/// refuses, nor finishes an acquire before it. (One key after the warm-up:
/// a shard holds the latest reading of any of its keys, so with other keys
/// in its shard a key may be checked at a later time than a lone limiter
/// would be, which lets its old grants go sooner.) (Retry-afters may differ:
/// the key's compact form holds the clock per shard, its promoted limiter
/// on its own.)
#[test]
fn on_a_clock_that_goes_backwards_a_key_never_grants_more_than_a_lone_limiter() {
    let mut diverged = Vec::new();
    for (seed, past_origin) in (1..=200u64).flat_map(|seed| [(seed, false), (seed, true)]) {
        // (Window only: a lone GCRA limiter's lock-free check uses the raw
        // reading, not the held one, so on a clock going backwards it is
        // more conservative than its own locked path and than the keyed
        // limiter's compact keys, which hold the clock per shard.)
        for quota in [Quota::window(3, ms(50)).unwrap()] {
            let clock = ManualClock::new();
            clock.advance(Duration::from_secs(1)); // room to go back
            let back = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let timer = Backwards(clock.clone(), back.clone());
            let limiter = KeyedRateLimiter::with_quota(quota).with_timer(timer.clone());
            let single = RateLimiter::with_quota(quota).with_timer(timer);
            // The keyed limiter reads its time origin at its first use, the
            // lone one when built: the same reading for both (a reading
            // before the origin counts as the origin, in both).
            limiter.try_acquire("warm-up").unwrap();
            if past_origin {
                // Readings going back stay after the origin (not clamped to
                // it): a sweep's reading must be held by a key waiting on
                // its full limiter, as a lone limiter's snapshot holds it.
                clock.advance(Duration::from_secs(1));
            }
            let waker = CountingWaker::new();
            let mut rng = common::Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let mut live = Vec::new();
            for step in 0..200 {
                match rng.below(7) {
                    0 | 1 => {
                        let n = 1 + rng.below(2);
                        let (got, want) = (limiter.try_acquire_n("k", n), single.try_acquire_n(n));
                        assert!(
                            got.is_err() || want.is_ok(),
                            "seed {seed} past {past_origin} step {step} ({quota:?}): keyed granted, lone refused {want:?}"
                        );
                        if got != want {
                            diverged.push(format!("seed {seed} step {step}: {got:?} vs {want:?}"));
                        }
                    }
                    2 if live.len() < 2 => live.push((
                        Some(Box::pin(limiter.acquire("k"))),
                        Some(Box::pin(single.acquire())),
                    )),
                    3 => {
                        // A sweep reads (and holds) the clock: so does a
                        // snapshot of the lone limiter.
                        limiter.evict_idle();
                        let _ = single.snapshot();
                    }
                    4 => back.store(rng.below_u64(40) * 1_000_000, Ordering::SeqCst),
                    _ => clock.advance(ms(rng.below_u64(20))),
                }
                // Each side is polled until it is ready (a keyed acquire
                // may finish later than the lone one: never earlier).
                live.retain_mut(|(k, s)| {
                    if s.as_mut()
                        .is_some_and(|s| s.as_mut().poll(&mut waker.context()).is_ready())
                    {
                        *s = None;
                    }
                    if k.as_mut()
                        .is_some_and(|k| k.as_mut().poll(&mut waker.context()).is_ready())
                    {
                        assert!(
                            s.is_none(),
                            "seed {seed} past {past_origin} step {step}: a keyed acquire finished before the lone one"
                        );
                        *k = None;
                    }
                    k.is_some() || s.is_some()
                });
            }
        }
    }
    eprintln!(
        "{} outcomes differed (retry-after or grant): {:?}",
        diverged.len(),
        diverged.iter().take(5).collect::<Vec<_>>()
    );
}
