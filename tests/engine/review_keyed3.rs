#![cfg(feature = "test-util")]
//! Review of the keyed limiter's first-poll acquire (issue 18): attacks on
//! cancels and forgets at every point, barging, the gap between creation
//! and first poll, panicking user code, threads, and extreme quotas.
//!
//! The main weapon is a differential model: one key of a
//! `KeyedRateLimiter` driven through a random schedule of acquires (polled,
//! dropped, forgotten at any point), checks, quota changes, evictions and
//! clock steps, next to a lone `RateLimiter` driven the same way on the
//! same manual clock. A key must behave exactly like its own limiter.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedRateLimiter, RateLimiter};
use common::{CountingWaker, Rng};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn poll<F: Future + Unpin>(f: &mut F, waker: &CountingWaker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut waker.context())
}

type Keyed = KeyedRateLimiter<u32, ManualClock>;

/// One step of the model against both limiters: every outcome (poll
/// results, check results with their retry times) must be equal.
fn differential(seed: u64, quotas: &[Quota], steps: usize, with_other_keys: bool) {
    let clock = ManualClock::new();
    let keyed: Keyed = KeyedRateLimiter::with_quota(quotas[0])
        .with_timer(clock.clone())
        .with_max_keys(64);
    let lone = RateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
    // The keyed limiter's time origin is read at its first use: now, as the
    // lone one's (retry times that saturate would differ by the offset).
    keyed.evict_idle();
    let waker = CountingWaker::new();
    let mut rng = Rng(seed);
    let mut pairs: Vec<(
        awaitkit::KeyedAcquireN<u32, ManualClock>,
        awaitkit::RateAcquireN<'_, ManualClock>,
    )> = Vec::new();
    let max = quotas[0].max_at_once();
    if std::env::var("AWAITKIT_REVIEW_PROGRESS").is_ok() {
        eprintln!("seed {seed:#x} {quotas:?}");
    }
    let mut jumps = 0;
    let trace = std::env::var("AWAITKIT_REVIEW_TRACE").is_ok();
    for step in 0..steps {
        let ctx = || format!("seed {seed:#x} step {step}");
        if trace {
            eprintln!(
                "{step}: t={:?} pairs={} keys={}",
                clock.elapsed(),
                pairs.len(),
                keyed.len()
            );
        }
        match rng.below(12) {
            0..=2 => {
                let n = match rng.below(8) {
                    0 => 0,
                    1 => max.saturating_add(1),
                    2 => max,
                    _ => 1 + rng.below(max.min(3)),
                };
                if trace {
                    eprintln!("  new acquire_n({n}) as #{}", pairs.len());
                }
                pairs.push((keyed.acquire_n(0, n), lone.acquire_n(n)));
            }
            3..=5 if !pairs.is_empty() => {
                let i = rng.below(pairs.len());
                let (k, l) = &mut pairs[i];
                let a = poll(k, &waker);
                let b = poll(l, &waker);
                if trace {
                    eprintln!("  poll #{i}: {a:?} / {b:?}");
                }
                assert_eq!(a, b, "{}: poll of pair {i} ({quotas:?})", ctx());
                if a.is_ready() {
                    drop(pairs.remove(i));
                }
            }
            6 if !pairs.is_empty() => {
                let i = rng.below(pairs.len());
                let pair = pairs.remove(i);
                if trace {
                    eprintln!("  drop/forget #{i}");
                }
                if rng.below(4) == 0 {
                    common::forget_reachably(pair);
                } else {
                    drop(pair);
                }
            }
            7 => {
                let n = 1 + rng.below(max.min(3));
                let a = keyed.try_acquire_n(0, n);
                let b = lone.try_acquire_n(n);
                if trace {
                    eprintln!("  check {n}: {a:?} / {b:?}");
                }
                assert_eq!(a, b, "{}: check of {n} ({quotas:?})", ctx());
            }
            8 if jumps < 3 && rng.below(40) == 0 => {
                // Far ahead: internal times past 2^63 ns after two jumps.
                jumps += 1;
                if trace {
                    eprintln!("  jump");
                }
                clock.advance(Duration::from_nanos(1 << 62));
            }
            8 => {
                let by = match rng.below(4) {
                    0 => 0,
                    1 => 1 + rng.below_u64(3),
                    _ => rng.below_u64(60),
                };
                clock.advance(ms(by));
            }
            9 => {
                let gone = keyed.evict_idle();
                if trace {
                    eprintln!("  evict: {gone}");
                }
            }
            10 if quotas.len() > 1 && rng.below(4) == 0 => {
                let q = quotas[rng.below(quotas.len())];
                if trace {
                    eprintln!("  set_quota {q:?}");
                }
                keyed.set_quota(q).unwrap();
                lone.set_quota(q).unwrap();
            }
            11 if with_other_keys => {
                // Other keys in the same map (maybe the same shard).
                let other = 1 + rng.below(40) as u32;
                let _ = keyed.try_acquire(other);
                if rng.below(3) == 0 {
                    let mut f = keyed.acquire(other);
                    let _ = poll(&mut f, &waker);
                }
            }
            _ => {}
        }
    }
    // Drain: every remaining pair, in order of their first polls, gets the
    // same outcome.
    let normal = quotas
        .iter()
        .all(|q| q.period() < Duration::from_secs(1) && q.max_calls() < 100);
    for _ in 0..if normal { 2_000 } else { 20 } {
        if pairs.is_empty() {
            break;
        }
        let mut i = 0;
        while i < pairs.len() {
            let (k, l) = &mut pairs[i];
            let a = poll(k, &waker);
            let b = poll(l, &waker);
            assert_eq!(a, b, "seed {seed:#x}: drain of pair {i}");
            if a.is_ready() {
                drop(pairs.remove(i));
            } else {
                i += 1;
            }
        }
        clock.advance(ms(7));
    }
    // (At the extremes both may still wait for centuries: they agreed.)
    if normal {
        assert!(pairs.is_empty(), "seed {seed:#x}: the queue wedged");
    }
    drop(pairs);
    assert_eq!(
        keyed.try_acquire(0),
        lone.try_acquire(),
        "seed {seed:#x}: final"
    );
}

guarded! {
    /// One seed of the model, traced (`AWAITKIT_REVIEW_SEED`,
    /// `AWAITKIT_REVIEW_GCRA`): a debugging aid, a no-op by default.
    fn one_seed() {
        if let Ok(seed) = std::env::var("AWAITKIT_REVIEW_SEED") {
            let seed = u64::from_str_radix(seed.trim_start_matches("0x"), 16).unwrap();
            let quotas = match std::env::var("AWAITKIT_REVIEW_EXTREME") {
                Ok(i) => extreme_quotas()[i.parse::<usize>().unwrap()].clone(),
                Err(_) if std::env::var("AWAITKIT_REVIEW_GCRA").is_ok() => gcra_quotas(),
                Err(_) => window_quotas(),
            };
            differential(seed, &quotas, 400, std::env::var("AWAITKIT_REVIEW_OTHERS").is_ok());
        }
    }
}

/// One period for all: a lone limiter expires its log lazily, so after a
/// change to a *longer* period it may or may not still count a grant older
/// than the old period (as a keyed limiter may or may not have evicted the
/// key): the two are compared on changes of `max_calls` only.
/// The extremes: one call, a huge quota, the longest and shortest periods.
fn extreme_quotas() -> Vec<Vec<Quota>> {
    let huge = usize::MAX;
    vec![
        vec![Quota::window(1, Duration::MAX).unwrap()],
        vec![Quota::window(1, Duration::from_nanos(1)).unwrap()],
        vec![Quota::window(huge, ms(100)).unwrap()],
        vec![Quota::window(u32::MAX as usize + 2, Duration::MAX).unwrap()],
        vec![Quota::gcra(1, Duration::MAX, 1).unwrap()],
        vec![Quota::gcra(1, Duration::from_nanos(1), 1).unwrap()],
        vec![Quota::gcra(huge, ms(100), huge).unwrap()],
        vec![Quota::gcra(huge, Duration::MAX, 3).unwrap()],
        vec![Quota::gcra(3, Duration::from_secs(u64::MAX / 4), 2).unwrap()],
        vec![
            Quota::gcra(1, Duration::MAX, 2).unwrap(),
            Quota::gcra(huge, Duration::from_nanos(1), 2).unwrap(),
        ],
        vec![
            Quota::window(1, ms(100)).unwrap(),
            Quota::window(huge, ms(100)).unwrap(),
        ],
    ]
}

fn window_quotas() -> Vec<Quota> {
    vec![
        Quota::window(3, ms(100)).unwrap(),
        Quota::window(1, ms(100)).unwrap(),
        Quota::window(5, ms(100)).unwrap(),
    ]
}

fn gcra_quotas() -> Vec<Quota> {
    vec![
        Quota::gcra(3, ms(100), 2).unwrap(),
        Quota::gcra(1, ms(50), 1).unwrap(),
        Quota::gcra(10, ms(100), 4).unwrap(),
    ]
}

guarded! {
    /// Acquires created, polled, dropped and forgotten at random points
    /// (before the first poll, queued, granted but unseen), interleaved with
    /// checks, clock steps, evictions: a key is its own lone limiter.
    fn a_key_matches_a_lone_limiter_through_cancels_and_forgets() {
        for seed in 0..seeds() {
            let seed = seed * 2 + 1;
            differential(seed, &window_quotas()[..1], 400, false);
            differential(seed, &gcra_quotas()[..1], 400, false);
        }
    }

    /// The same with quota changes between creation and first poll.
    fn a_key_matches_a_lone_limiter_through_quota_changes() {
        for seed in 0..seeds() {
            let seed = seed * 2 + 0x1001;
            differential(seed, &window_quotas(), 400, false);
            differential(seed, &gcra_quotas(), 400, false);
        }
    }

    /// Extreme quotas (one call, `usize::MAX` calls, `Duration::MAX` and
    /// 1 ns periods) and times past 2^63 ns: still a lone limiter.
    fn a_key_matches_a_lone_limiter_at_the_extremes() {
        for seed in 0..seeds() {
            let seed = seed * 2 + 0x3001;
            for quotas in extreme_quotas() {
                differential(seed, &quotas, 300, seed % 4 == 1);
            }
        }
    }

    /// The same with other keys of the map checked, acquired and swept
    /// meanwhile.
    fn a_key_matches_a_lone_limiter_among_other_keys() {
        for seed in 0..seeds() {
            let seed = seed * 2 + 0x2001;
            differential(seed, &window_quotas(), 400, true);
            differential(seed, &gcra_quotas(), 400, true);
        }
    }
}

/// Seeds per model run (`AWAITKIT_REVIEW_SEEDS` raises it for a long hunt).
fn seeds() -> u64 {
    std::env::var("AWAITKIT_REVIEW_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

// ---------------------------------------------------------------------------
// GCRA past 2^63 ns
// ---------------------------------------------------------------------------

guarded! {
    /// GCRA at one call per 2^63 ns (`Quota::gcra(2, Duration::MAX, 1)`):
    /// a call at 2^62 ns makes the next one due at 3 * 2^62 ns, a time whose
    /// arithmetic (arrival time plus one interval) passes `u64::MAX` on the
    /// way. Checked at 2^63 ns, the refusal must say "2^62 ns from now" —
    /// not "now" (a retry loop would spin), and an acquire must wait for it
    /// instead of its limiter's driver finding the head due again and again
    /// (a livelock inside `ManualClock::advance` or the timer's thread).
    fn gcra_retry_times_past_2_pow_63_ns_are_exact_and_never_now() {
        let quota = Quota::gcra(2, Duration::MAX, 1).unwrap();
        let step = Duration::from_nanos(1 << 62);
        // The lone limiter.
        let clock = ManualClock::new();
        let lone = RateLimiter::with_quota(quota).with_timer(clock.clone());
        clock.advance(step);
        assert_eq!(lone.try_acquire(), Ok(()));
        clock.advance(step);
        assert_eq!(
            lone.try_acquire(),
            Err(RateLimitError::RateLimited { wait: step }),
            "lone limiter"
        );
        let waker = CountingWaker::new();
        let mut waiting = lone.acquire();
        assert!(poll(&mut waiting, &waker).is_pending());
        clock.advance(step - Duration::from_nanos(1));
        assert!(poll(&mut waiting, &waker).is_pending());
        // (A driver's sleep is capped at 30 years; one that completes at
        // the cap is taken for an early timer and re-armed a microsecond
        // past the time: a millisecond more.)
        clock.advance(ms(1));
        assert_eq!(poll(&mut waiting, &waker), Poll::Ready(()));
        drop(waiting);
        // A key, compact then promoted.
        let clock = ManualClock::new();
        let keyed: Keyed = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
        keyed.evict_idle(); // the time origin: now
        clock.advance(step);
        assert_eq!(keyed.try_acquire(7), Ok(()));
        clock.advance(step);
        assert_eq!(
            keyed.try_acquire(7),
            Err(RateLimitError::RateLimited { wait: step }),
            "a compact key"
        );
        let mut waiting = keyed.acquire(7);
        assert!(poll(&mut waiting, &waker).is_pending());
        // Past the waiter's turn: 5 * 2^62 ns, beyond `u64::MAX` ns of the
        // limiter's clock ("never" until a quota change).
        assert!(
            matches!(
                keyed.try_acquire(7),
                Err(RateLimitError::RateLimited { wait }) if wait > step * 2
            ),
            "a promoted key: after its waiter"
        );
        clock.advance(step - Duration::from_nanos(1));
        assert!(poll(&mut waiting, &waker).is_pending());
        // (A driver's sleep is capped at 30 years; one that completes at
        // the cap is taken for an early timer and re-armed a microsecond
        // past the time: a millisecond more.)
        clock.advance(ms(1));
        assert_eq!(poll(&mut waiting, &waker), Poll::Ready(Ok(())));
    }
}

guarded! {
    /// A GCRA key whose arrival time saturated to "never" (two calls at
    /// once at one call per `Duration::MAX`) and a quota change to a fast
    /// rate: a lone limiter rescales the time still owed and grants again
    /// within a millisecond; a key must too, compact or promoted — not stay
    /// refused (and never idle, so never evicted: a slot of the bound
    /// taken for good).
    fn a_never_again_gcra_key_is_rescaled_by_a_quota_change_like_a_lone_limiter() {
        let slow = Quota::gcra(1, Duration::MAX, 2).unwrap();
        let fast = Quota::gcra(1_000, Duration::from_secs(1), 2).unwrap();
        for promoted in [false, true] {
            let clock = ManualClock::new();
            let lone = RateLimiter::with_quota(slow).with_timer(clock.clone());
            let keyed: Keyed = KeyedRateLimiter::with_quota(slow)
                .with_timer(clock.clone())
                .with_max_keys(1);
            keyed.evict_idle(); // the time origin: now
            let waker = CountingWaker::new();
            assert_eq!(lone.try_acquire_n(2), Ok(()));
            assert_eq!(keyed.try_acquire_n(7, 2), Ok(()));
            assert_eq!(
                keyed.try_acquire(7),
                Err(RateLimitError::RateLimited { wait: Duration::MAX })
            );
            // A waiter holds the key promoted through the change.
            let mut waiting = keyed.acquire(7);
            let mut lone_waiting = lone.acquire_n(1);
            if promoted {
                assert!(poll(&mut waiting, &waker).is_pending());
                assert!(poll(&mut lone_waiting, &waker).is_pending());
            }
            clock.advance(ms(5));
            lone.set_quota(fast).unwrap();
            keyed.set_quota(fast).unwrap();
            clock.advance(ms(5));
            let (a, b) = (poll(&mut waiting, &waker), poll(&mut lone_waiting, &waker));
            assert_eq!(a, b, "promoted: {promoted}");
            assert_eq!(a, Poll::Ready(Ok(())), "promoted: {promoted}");
            drop((waiting, lone_waiting));
            clock.advance(ms(5));
            assert_eq!(keyed.try_acquire(7), lone.try_acquire(), "promoted: {promoted}");
            clock.advance(ms(100));
            assert_eq!(keyed.evict_idle(), 1, "the key idles: promoted: {promoted}");
            assert_eq!(keyed.try_acquire(8), Ok(()), "its room is free again");
        }
    }
}

// ---------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------

/// A waker that unparks a thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread until it is ready, parking between polls
/// (never timing out: a lost wake hangs, and the watchdog fails the test);
/// `polled` is counted once, after the first poll.
fn park_on<F: Future + Unpin>(mut f: F, polled: &std::sync::atomic::AtomicUsize) -> F::Output {
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut first = true;
    loop {
        if let Poll::Ready(out) = Pin::new(&mut f).poll(&mut cx) {
            if first {
                polled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            return out;
        }
        if first {
            first = false;
            polled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        std::thread::park();
    }
}

guarded! {
    /// 16 threads first-poll acquires of one hot key at once, 24 more of 8
    /// other keys (some in the same shard), while 2 threads check the hot
    /// key in a loop; the clock moves one period at a time. Every round
    /// grants exactly the quota per key (never more, the checks never
    /// barging past the waiters), and every waiter is woken in its turn (a
    /// lost wake hangs).
    fn threads_first_polling_one_key_get_exactly_the_quota_per_window() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        for quota in [
            Quota::window(2, ms(100)).unwrap(),
            Quota::gcra(2, ms(100), 2).unwrap(),
        ] {
            let clock = ManualClock::new();
            let keyed: Arc<Keyed> = Arc::new(
                KeyedRateLimiter::with_quota(quota)
                    .with_timer(clock.clone())
                    .with_max_keys(16),
            );
            const HOT: usize = 16;
            const OTHERS: u32 = 8;
            let polled = Arc::new(AtomicUsize::new(0));
            let granted: Arc<Vec<AtomicUsize>> =
                Arc::new((0..=OTHERS).map(|_| AtomicUsize::new(0)).collect());
            let checked = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let mut threads = Vec::new();
            let jobs = (0..HOT as u32).map(|_| 0).chain((1..=OTHERS).flat_map(|k| [k, k, k]));
            for key in jobs {
                let (keyed, polled, granted) = (keyed.clone(), polled.clone(), granted.clone());
                threads.push(std::thread::spawn(move || {
                    assert_eq!(park_on(keyed.acquire(key), &polled), Ok(()));
                    granted[key as usize].fetch_add(1, SeqCst);
                }));
            }
            let total = HOT + 3 * OTHERS as usize;
            while polled.load(SeqCst) < total {
                std::thread::yield_now();
            }
            let mut checkers = Vec::new();
            for _ in 0..2 {
                let (keyed, checked, stop) = (keyed.clone(), checked.clone(), stop.clone());
                checkers.push(std::thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        if keyed.try_acquire(0).is_ok() {
                            checked.fetch_add(1, SeqCst);
                        }
                        std::thread::yield_now();
                    }
                }));
            }
            // Everyone has polled at time 0: the quota is taken, the rest
            // wait (the hot key's checks find waiters or no room).
            let rounds = HOT / 2;
            for round in 0..rounds {
                let want = 2 * (round + 1);
                while granted[0].load(SeqCst) < want {
                    std::thread::yield_now();
                }
                for k in 1..=OTHERS as usize {
                    let want = want.min(3);
                    while granted[k].load(SeqCst) < want {
                        std::thread::yield_now();
                    }
                }
                std::thread::sleep(ms(2)); // room for an extra grant to show
                assert_eq!(granted[0].load(SeqCst), want, "{quota:?}: round {round}");
                assert_eq!(checked.load(SeqCst), 0, "{quota:?}: a check barged");
                for k in 1..=OTHERS as usize {
                    assert_eq!(granted[k].load(SeqCst), want.min(3), "{quota:?}: key {k}");
                }
                clock.advance(ms(100));
            }
            for t in threads {
                t.join().unwrap();
            }
            // No waiter left: the checks get the next window's quota, no more.
            std::thread::sleep(ms(2));
            assert!(checked.load(SeqCst) <= 2, "{quota:?}");
            stop.store(true, SeqCst);
            for t in checkers {
                t.join().unwrap();
            }
            assert_eq!(keyed.stats().waiting_keys, 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Panicking user code: wakers and keys
// ---------------------------------------------------------------------------

/// What an [`evil`] waker does: panic on clone, wake or drop.
#[derive(Default)]
struct Evil {
    clone: std::sync::atomic::AtomicBool,
    wake: std::sync::atomic::AtomicBool,
    drop: std::sync::atomic::AtomicBool,
    wakes: std::sync::atomic::AtomicUsize,
    live: std::sync::atomic::AtomicIsize,
}

static EVIL_VTABLE: std::task::RawWakerVTable =
    std::task::RawWakerVTable::new(evil_clone, evil_wake, evil_wake_by_ref, evil_drop);

fn evil_of(data: *const ()) -> &'static Evil {
    // SAFETY: `data` is the `Evil` of an `evil` waker, leaked for the
    // whole test run (`keep_alive`).
    unsafe { &*data.cast::<Evil>() }
}

unsafe fn evil_clone(data: *const ()) -> std::task::RawWaker {
    let evil = evil_of(data);
    if evil.clone.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("injected: waker clone");
    }
    evil.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::task::RawWaker::new(data, &EVIL_VTABLE)
}

unsafe fn evil_wake(data: *const ()) {
    // The waker is consumed even if the wake panics (the memory is the
    // waker's own business): released first.
    let evil = evil_of(data);
    evil.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    evil.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if evil.wake.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("injected: waker wake");
    }
}

unsafe fn evil_wake_by_ref(data: *const ()) {
    let evil = evil_of(data);
    evil.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if evil.wake.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("injected: waker wake");
    }
}

unsafe fn evil_drop(data: *const ()) {
    let evil = evil_of(data);
    evil.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    if evil.drop.load(std::sync::atomic::Ordering::SeqCst) && !std::thread::panicking() {
        panic!("injected: waker drop");
    }
}

/// A waker (the original, counted as one live clone) whose clone, wake and
/// drop panic while the returned flags say so.
fn evil() -> (std::task::Waker, &'static Evil) {
    let evil: &'static Evil = common::keep_alive(Box::new(Evil::default()));
    evil.live.store(1, std::sync::atomic::Ordering::SeqCst);
    let raw = std::task::RawWaker::new(std::ptr::from_ref(evil).cast(), &EVIL_VTABLE);
    // SAFETY: the vtable's functions keep the `RawWaker` contract over a
    // `&'static Evil`.
    (unsafe { std::task::Waker::from_raw(raw) }, evil)
}

fn panicked<R>(f: impl FnOnce() -> R) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
}

fn poll_with<F: Future + Unpin>(f: &mut F, waker: &std::task::Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut std::task::Context::from_waker(waker))
}

/// A key counting its instances, whose `Drop` panics while `panics` says
/// so.
struct Key {
    id: u32,
    book: std::sync::Arc<KeyBook>,
}

#[derive(Default)]
struct KeyBook {
    live: std::sync::atomic::AtomicIsize,
    panics: std::sync::atomic::AtomicBool,
}

impl Key {
    fn new(id: u32, book: &std::sync::Arc<KeyBook>) -> Key {
        book.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Key {
            id,
            book: book.clone(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.id == other.id
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let live = self
            .book
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        assert!(live > 0, "a key dropped twice");
        if self.book.panics.load(std::sync::atomic::Ordering::SeqCst) && !std::thread::panicking() {
            panic!("injected: key drop");
        }
    }
}

guarded! {
    /// A waiting acquire's waker panics on clone (at the first poll, which
    /// promotes the key), on wake (the driver grants it from the clock's
    /// advance), on drop (replaced at a later poll, or dropped with the
    /// future); and a key's `Drop` panics at a first poll that must wait.
    /// Each panic surfaces where documented (or is discarded on the timer's
    /// path); the key's other waiters are served in order, the key demotes
    /// once nobody waits, no waker clone or key instance leaks or is dropped
    /// twice.
    fn panicking_wakers_and_keys_at_the_first_poll_wedge_nothing() {
        use std::sync::atomic::Ordering::SeqCst;
        common::quiet();
        for quota in [
            Quota::window(1, ms(100)).unwrap(),
            Quota::gcra(1, ms(100), 1).unwrap(),
        ] {
            let book = std::sync::Arc::new(KeyBook::default());
            let clock = ManualClock::new();
            let keyed = KeyedRateLimiter::with_quota(quota)
                .with_timer(clock.clone())
                .with_max_keys(4);
            let good = CountingWaker::new();
            let (bad, evil) = evil();
            assert_eq!(keyed.try_acquire(Key::new(1, &book)), Ok(()));

            // Clone panics at the first poll, which must wait.
            evil.clone.store(true, SeqCst);
            let mut a = keyed.acquire(Key::new(1, &book));
            assert!(panicked(|| poll_with(&mut a, &bad)), "{quota:?}");
            evil.clone.store(false, SeqCst);
            let mut b = keyed.acquire(Key::new(1, &book));
            assert!(poll(&mut b, &good).is_pending());
            // `a` polls again: behind `b` now (its first poll had queued
            // nothing).
            assert!(poll_with(&mut a, &bad).is_pending());
            assert_eq!(keyed.stats().waiting_keys, 1);

            // Wake panics: the driver grants `b` and then `a` from the
            // clock's advance; the panic never leaves the advance.
            evil.wake.store(true, SeqCst);
            clock.advance(ms(100));
            assert!(good.wakes() >= 1, "{quota:?}: b woken");
            assert_eq!(poll(&mut b, &good), Poll::Ready(Ok(())));
            assert!(poll_with(&mut a, &bad).is_pending(), "{quota:?}: a after b");
            clock.advance(ms(100));
            assert!(evil.wakes.load(SeqCst) >= 1, "{quota:?}: a woken (and panicked)");
            evil.wake.store(false, SeqCst);
            assert_eq!(poll(&mut a, &good), Poll::Ready(Ok(())));
            drop((a, b));

            // Drop panics: a waiter's waker replaced at its next poll, then
            // a waiter dropped with its waker.
            let mut c = keyed.acquire(Key::new(1, &book));
            assert!(poll_with(&mut c, &bad).is_pending(), "{quota:?}");
            evil.drop.store(true, SeqCst);
            assert!(panicked(|| poll(&mut c, &good)), "{quota:?}: the old waker's drop");
            let mut d = keyed.acquire(Key::new(1, &book));
            assert!(poll_with(&mut d, &bad).is_pending());
            assert!(panicked(move || drop(d)), "{quota:?}: d's waker's drop");
            evil.drop.store(false, SeqCst);
            clock.advance(ms(100));
            assert_eq!(poll(&mut c, &good), Poll::Ready(Ok(())), "{quota:?}");
            drop(c);

            // A key whose Drop panics at a first poll that must wait: the
            // future waits all the same at its next poll.
            book.panics.store(true, SeqCst);
            let mut e = keyed.acquire(Key::new(1, &book));
            assert!(panicked(|| poll(&mut e, &good)), "{quota:?}: the key's drop");
            book.panics.store(false, SeqCst);
            assert!(poll(&mut e, &good).is_pending(), "{quota:?}");
            assert!(keyed.try_acquire(Key::new(1, &book)).is_err(), "no barging");
            clock.advance(ms(100));
            assert_eq!(poll(&mut e, &good), Poll::Ready(Ok(())));
            drop(e);

            // Nobody waits: the next check demotes the key, which is then
            // evicted once idle; every waker clone and key instance is gone.
            clock.advance(ms(100));
            assert_eq!(keyed.try_acquire(Key::new(1, &book)), Ok(()), "{quota:?}");
            assert_eq!(keyed.stats().waiting_keys, 0);
            clock.advance(ms(100));
            assert_eq!(keyed.evict_idle(), 1, "{quota:?}");
            assert_eq!(evil.live.load(SeqCst), 1, "{quota:?}: waker clones leaked");
            assert_eq!(book.live.load(SeqCst), 0, "{quota:?}: keys leaked");
            drop(keyed);
        }
    }
}

// ---------------------------------------------------------------------------
// The gap between creation and first poll
// ---------------------------------------------------------------------------

guarded! {
    /// The bound is decided at the first poll, whatever it was at creation:
    /// created while there was room and polled once the limiter is full, an
    /// acquire of a new key is refused (and reserves nothing); created while
    /// full and polled once a key was evicted, it is admitted. A key
    /// promoted for its waiter holds its room until the waiter is gone and
    /// the key idle; an acquire created for a key that is evicted and
    /// created again before the first poll sees only the new key.
    fn the_bound_and_the_key_are_looked_at_at_the_first_poll_only() {
        for quota in [
            Quota::window(1, ms(100)).unwrap(),
            Quota::gcra(1, ms(100), 1).unwrap(),
        ] {
            let clock = ManualClock::new();
            let keyed: Keyed = KeyedRateLimiter::with_quota(quota)
                .with_timer(clock.clone())
                .with_max_keys(2);
            let waker = CountingWaker::new();
            let mut early = keyed.acquire(3); // room now
            assert_eq!(keyed.try_acquire(1), Ok(()));
            assert_eq!(keyed.try_acquire(2), Ok(()));
            let mut late = keyed.acquire(4); // full now
            assert_eq!(
                poll(&mut early, &waker),
                Poll::Ready(Err(RateLimitError::TooManyKeys { max_keys: 2 })),
                "{quota:?}"
            );
            // Key 1 waits (promoted), key 2 goes idle and is evicted.
            let mut waiting = keyed.acquire(1);
            assert!(poll(&mut waiting, &waker).is_pending());
            assert_eq!(keyed.stats().waiting_keys, 1);
            clock.advance(ms(100));
            assert_eq!(keyed.evict_idle(), 1, "{quota:?}: key 2 only");
            assert_eq!(poll(&mut late, &waker), Poll::Ready(Ok(())), "{quota:?}");
            assert_eq!(keyed.len(), 2);
            // Key 1's waiter, granted but not polled yet, keeps it
            // promoted and its room taken.
            assert_eq!(keyed.try_acquire(5), Err(RateLimitError::TooManyKeys { max_keys: 2 }));
            assert_eq!(poll(&mut waiting, &waker), Poll::Ready(Ok(())));
            drop(waiting);
            // An acquire of key 4, created now; key 4 evicted and created
            // again (with a fresh grant) before its first poll.
            let mut stale = keyed.acquire(4);
            clock.advance(ms(100));
            assert_eq!(keyed.evict_idle(), 2, "{quota:?}: both idle, key 1 demoted");
            assert_eq!(keyed.try_acquire(4), Ok(()));
            assert!(poll(&mut stale, &waker).is_pending(), "{quota:?}: the new key's quota");
            assert!(keyed.try_acquire(4).is_err(), "{quota:?}: no barging");
            clock.advance(ms(100));
            assert_eq!(poll(&mut stale, &waker), Poll::Ready(Ok(())));
            drop(stale);
            assert_eq!(keyed.stats().refusals, 2);
        }
    }
}
