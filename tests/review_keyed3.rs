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

#[macro_use]
mod common;

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
