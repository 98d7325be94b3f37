#![cfg(feature = "test-util")]
//! Adversarial review of the strict window's four-byte stamps (issue 18
//! memory): periods that are not a whole number of nanoseconds on the grid
//! (a minute, 2³¹ + 1 ns, an hour, `u64::MAX` ns), quotas around the 64
//! calls kept as stamps, `try_acquire_n` filling the rings several grants
//! at a time, waiters (promotion and demotion), evictions and quota
//! changes.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedAcquireN, KeyedRateLimiter, RateAcquireN, RateLimiter};
use common::CountingWaker;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// The grid step stamps round to for `period` nanoseconds: the smallest
/// power of two putting the period within 2^31 steps.
fn step_of(period: u64) -> u64 {
    let bits = u64::BITS - period.saturating_sub(1).leading_zeros();
    1 << bits.saturating_sub(31)
}

const PERIODS: [u64; 5] = [
    60_000_000_000,
    (1 << 31) + 1,
    3_600_000_000_000,
    (1 << 40) + 1,
    u64::MAX,
];

/// On the grid (every clock reading a multiple of the step since the
/// limiter's first use), rounding up changes nothing: one key answers
/// exactly as a lone limiter does, through checks of up to the whole quota
/// at once, waiters (a promotion, then a demotion), evictions and quota
/// changes across 64 calls.
#[test]
fn on_the_grid_a_stamped_key_is_exactly_a_lone_limiter() {
    for period in PERIODS {
        let step = step_of(period);
        let period_d = Duration::from_nanos(period);
        for maxes in [[2, 3], [63, 64], [64, 65], [3, 64]] {
            for seed in 1..=40u64 {
                let quotas = maxes.map(|m| Quota::window(m, period_d).unwrap());
                let clock = ManualClock::new();
                let limiter = KeyedRateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
                let single = RateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
                let waker = CountingWaker::new();
                let mut rng = common::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mut max = maxes[0];
                type Pair<'a> = (
                    Pin<Box<KeyedAcquireN<&'static str, ManualClock>>>,
                    Pin<Box<RateAcquireN<'a, ManualClock>>>,
                );
                let mut live: Vec<Pair<'_>> = Vec::new();
                // The first use fixes both epochs at the clock's start.
                assert_eq!(limiter.try_acquire_n("k", 1), single.try_acquire_n(1));
                let mut elapsed: u128 = 0;
                for i in 0..250 {
                    let what = format!("period {period} maxes {maxes:?} seed {seed} op {i}");
                    match rng.below(10) {
                        0..=2 => {
                            let n = match rng.below(3) {
                                0 => 1 + rng.below(max),
                                _ => 1,
                            };
                            assert_eq!(
                                limiter.try_acquire_n("k", n),
                                single.try_acquire_n(n),
                                "{what} n {n}"
                            );
                        }
                        3 if live.len() < 3 => {
                            let n = 1 + rng.below(max.min(3));
                            live.push((
                                Box::pin(limiter.acquire_n("k", n)),
                                Box::pin(single.acquire_n(n)),
                            ));
                        }
                        4 if !live.is_empty() => {
                            let i = rng.below(live.len());
                            drop(live.remove(i));
                        }
                        5 => {
                            limiter.evict_idle();
                        }
                        6 if rng.below(3) == 0 => {
                            let j = rng.below(2);
                            max = maxes[j];
                            limiter.set_quota(quotas[j]).unwrap();
                            single.set_quota(quotas[j]).unwrap();
                        }
                        _ => {
                            // Some steps, up to a fraction of the period, or
                            // exactly to a window's edge and one step either side.
                            let steps = match rng.below(4) {
                                0 => rng.below_u64(8),
                                1 => rng.below_u64(period / step / 4),
                                2 => period / step,
                                _ => (period / step).saturating_sub(1),
                            };
                            let by = steps * step;
                            if elapsed + u128::from(by) > u128::from(u64::MAX / 4) {
                                continue;
                            }
                            elapsed += u128::from(by);
                            clock.advance(Duration::from_nanos(by));
                        }
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
            }
        }
    }
}

/// Off the grid (any nanosecond): never more than the quota in any window
/// of the real clock, and a refusal's wait ends no earlier than the exact
/// window allows and less than one step later.
#[test]
fn off_the_grid_a_stamped_key_is_strict_and_at_most_a_step_late() {
    off_the_grid(0, u64::MAX / 4);
}

/// The same far from the limiter's epoch: past 2^63 ns, and within 2^45 ns
/// of 2^64 (the low 32 bits of the stamps wrap many times, and the high
/// bits are all ones).
#[test]
fn far_from_the_epoch_a_stamped_key_is_strict_and_at_most_a_step_late() {
    off_the_grid((1 << 63) - (1 << 40), (1 << 63) + (1 << 50));
    off_the_grid(u64::MAX - (1 << 45), u64::MAX);
}

fn off_the_grid(start: u64, end: u64) {
    for period in PERIODS {
        let step = step_of(period);
        let period_d = Duration::from_nanos(period);
        for maxes in [[2, 3], [63, 64], [64, 65], [1, 64]] {
            for seed in 1..=40u64 {
                let quotas = maxes.map(|m| Quota::window(m, period_d).unwrap());
                let clock = ManualClock::new();
                let limiter = KeyedRateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
                let mut rng = common::Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
                let mut max = maxes[0];
                // The epoch, then `start` later.
                assert!(limiter.try_acquire_n("epoch", 1).is_ok());
                let mut now: u64 = start.saturating_sub(rng.below_u64(1 << 20));
                clock.advance(Duration::from_nanos(now));
                let mut granted: Vec<u64> = Vec::new();
                for i in 0..300 {
                    let what = format!("period {period} maxes {maxes:?} seed {seed} op {i}");
                    match rng.below(8) {
                        0..=2 => {
                            let n = match rng.below(3) {
                                0 => 1 + rng.below(max),
                                _ => 1,
                            };
                            let live: Vec<u64> = granted
                                .iter()
                                .copied()
                                .filter(|&t| t.saturating_add(period) > now)
                                .collect();
                            let exact = match (live.len() + n).checked_sub(max) {
                                Some(over @ 1..) => live[over - 1].saturating_add(period),
                                _ => now,
                            };
                            match limiter.try_acquire_n("k", n) {
                                Ok(()) => {
                                    assert!(exact <= now, "{what}: {n} granted over the quota");
                                    granted.extend(std::iter::repeat_n(now, n));
                                }
                                Err(RateLimitError::RateLimited { wait }) => {
                                    let at = now as u128 + wait.as_nanos();
                                    assert!(at > now as u128, "{what}: refused, wait 0");
                                    assert!(
                                        at >= exact as u128,
                                        "{what}: retry {at} before {exact}"
                                    );
                                    // (`u64::MAX`: a window past the end
                                    // of time, "never", as a lone limiter says.)
                                    assert!(
                                        exact == u64::MAX || at < exact as u128 + step as u128,
                                        "{what}: retry {at} a step or more after {exact}"
                                    );
                                }
                                Err(e) => panic!("{what}: {e:?}"),
                            }
                        }
                        3 => {
                            limiter.evict_idle();
                        }
                        4 if rng.below(3) == 0 => {
                            let j = rng.below(2);
                            max = maxes[j];
                            limiter.set_quota(quotas[j]).unwrap();
                        }
                        _ => {
                            let by = match rng.below(5) {
                                0 => rng.below_u64(3 * step),
                                1 => rng.below_u64(period / 4),
                                2 => period.saturating_sub(rng.below_u64(2 * step)),
                                3 => period.saturating_add(rng.below_u64(2 * step)).min(period),
                                _ => rng.below_u64(1 << 20),
                            };
                            if now.checked_add(by).is_none_or(|t| t > end) {
                                continue;
                            }
                            now += by;
                            clock.advance(Duration::from_nanos(by));
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Granted {
    key: u32,
    before: u64,
    after: u64,
}

/// A sound check on grants known only within `[before, after]`: those
/// surely inside `[a, a + window)` for an anchor grant's `before = a` are
/// never more than `max`.
fn assert_at_most(grants: &[Granted], max: usize, window: u64) {
    let mut keys: Vec<u32> = grants.iter().map(|g| g.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let mut mine: Vec<_> = grants.iter().filter(|g| g.key == key).copied().collect();
        mine.sort_by_key(|g| g.before);
        for (i, anchor) in mine.iter().enumerate() {
            let inside = mine[i..]
                .iter()
                .filter(|g| g.after < anchor.before.saturating_add(window))
                .count();
            assert!(
                inside <= max,
                "key {key}: {inside} grants within {window} ns after {}",
                anchor.before
            );
        }
    }
}

/// Four threads check (one to three calls at once) and wait on one hot key
/// and its neighbours while a fifth moves the clock off the grid (2 ns steps
/// for a period of 2^31 + 1 ns) and sweeps: rings grow, shrink, are
/// promoted and demoted concurrently, and no window of the real clock ever
/// holds more than the quota of a key.
#[test]
fn threads_hammering_stamped_keys_stay_strict() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    common::watchdog("stamps_threads", || {
        for max in [5, 64] {
            let period = (1u64 << 31) + 1;
            let clock = ManualClock::new();
            let limiter = Arc::new(
                KeyedRateLimiter::with_quota(
                    Quota::window(max, Duration::from_nanos(period)).unwrap(),
                )
                .with_timer(clock.clone()),
            );
            let epoch = {
                use awaitkit::Timer;
                assert!(limiter.try_acquire(u32::MAX).is_ok());
                clock.now()
            };
            let at = {
                let clock = clock.clone();
                move || {
                    use awaitkit::Timer;
                    clock.now().duration_since(epoch).as_nanos() as u64
                }
            };
            let grants = Arc::new(Mutex::new(Vec::new()));
            let done = Arc::new(AtomicBool::new(false));
            let workers: Vec<_> = (0..4u64)
                .map(|t| {
                    let (limiter, grants, at) = (limiter.clone(), grants.clone(), at.clone());
                    std::thread::spawn(move || {
                        let mut rng = common::Rng((t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        for _ in 0..3_000 {
                            let key = if rng.below(2) == 0 {
                                0
                            } else {
                                rng.below(6) as u32
                            };
                            let n = 1 + rng.below(3);
                            let before = at();
                            let ok = if rng.below(50) == 0 {
                                futures::executor::block_on(limiter.acquire_n(key, n)).is_ok()
                            } else {
                                limiter.try_acquire_n(key, n).is_ok()
                            };
                            let after = at();
                            if ok {
                                let mut g = grants.lock().unwrap();
                                g.extend(std::iter::repeat_n(Granted { key, before, after }, n));
                            }
                        }
                    })
                })
                .collect();
            let mover = {
                let (clock, limiter, done) = (clock.clone(), limiter.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = common::Rng(0x1234_5678_9ABC_DEF1);
                    while !done.load(Ordering::Relaxed) {
                        let by = match rng.below(3) {
                            0 => rng.below_u64(7),
                            1 => period / 16 + rng.below_u64(1 << 10),
                            _ => 1 + 2 * rng.below_u64(1 << 20),
                        };
                        clock.advance(Duration::from_nanos(by));
                        if rng.below(16) == 0 {
                            limiter.evict_idle();
                        }
                        std::thread::yield_now();
                    }
                })
            };
            for w in workers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            mover.join().unwrap();
            let grants = grants.lock().unwrap();
            assert!(
                grants.len() > 3 * max,
                "{max}: only {} grants",
                grants.len()
            );
            assert_at_most(&grants, max, period);
        }
    });
}

/// Fills `keys` keys of `limiter` with `per_key` grants each at distinct
/// times (rings of every size up to 64), advancing `clock` 1 ns a grant.
fn fill(
    limiter: &KeyedRateLimiter<u32, ManualClock>,
    clock: &ManualClock,
    keys: u32,
    per_key: usize,
) {
    for _ in 0..per_key {
        for key in 0..keys {
            limiter.try_acquire(key).unwrap();
        }
        clock.advance(Duration::from_nanos(1));
    }
}

/// The boxed rings are given back: when their grants expire (the key back
/// inline), when their keys are evicted, and through a promotion and a
/// demotion, a quota change to a log and the limiter's drop.
#[test]
fn stamp_rings_never_leak() {
    let minute = Duration::from_secs(60);
    // (Past the stamps' rounding up too.)
    let later = minute + Duration::from_micros(1);
    for per_key in [3, 6, 7, 14, 23, 46, 64] {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(Quota::window(64, minute).unwrap())
            .with_timer(clock.clone());
        // The keys (and the table) first, one grant each: inline.
        fill(&limiter, &clock, 40, 1);
        clock.advance(later);
        let grown = common::net_alloc(|| fill(&limiter, &clock, 40, per_key));
        assert!(grown > 0, "{per_key}: no ring allocated");
        // Expired and checked again: a fresh inline key each.
        let back = common::net_alloc(|| {
            clock.advance(later);
            fill(&limiter, &clock, 40, 1);
        });
        assert_eq!(
            grown + back,
            0,
            "{per_key}: {grown} grown, {back} given back"
        );
        // Evicted with a ring.
        clock.advance(later);
        let grown = common::net_alloc(|| fill(&limiter, &clock, 40, per_key));
        let back = common::net_alloc(|| {
            clock.advance(later);
            limiter.evict_idle();
        });
        assert_eq!(limiter.len(), 0);
        assert!(
            grown + back <= 0,
            "{per_key}: {grown} grown, {back} given back"
        );
    }
    common::assert_no_leak("rings through promotion, demotion, set_quota, drop", || {
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::with_quota(Quota::window(64, minute).unwrap())
            .with_timer(clock.clone());
        let waker = CountingWaker::new();
        fill(&limiter, &clock, 4, 64);
        // A waiter on a full ring: promoted, served, demoted.
        let mut waiter = Box::pin(limiter.acquire(0));
        assert!(waiter.as_mut().poll(&mut waker.context()).is_pending());
        clock.advance(later);
        assert!(waiter.as_mut().poll(&mut waker.context()).is_ready());
        drop(waiter);
        fill(&limiter, &clock, 4, 10);
        // Above 64 calls: the rings become logs at their next check.
        limiter
            .set_quota(Quota::window(65, minute).unwrap())
            .unwrap();
        fill(&limiter, &clock, 4, 1);
        limiter
            .set_quota(Quota::window(3, minute).unwrap())
            .unwrap();
        drop(limiter);
    });
}

/// Quota changes across grid steps (2^31 ns exact against 2^31 + 1 ns on a
/// 2 ns grid, a minute against an hour) and across 64 calls, with stamps
/// held: under the quota in force, every grant leaves at most its calls in
/// the period before it, and a refusal's wait is no earlier than exact and
/// less than the larger step later. (No sweeps: they may forget grants the
/// longer period would still see, as documented.)
#[test]
fn quota_changes_across_grid_steps_keep_stamped_keys_strict() {
    let pairs: [[(usize, u64); 2]; 4] = [
        [(3, 1 << 31), (3, (1 << 31) + 1)],
        [(64, 60_000_000_000), (5, 3_600_000_000_000)],
        [(2, (1 << 31) + 1), (65, 60_000_000_000)],
        [(64, 3_600_000_000_000), (64, 1 << 20)],
    ];
    for pair in pairs {
        let step = pair.iter().map(|&(_, p)| step_of(p)).max().unwrap();
        for seed in 1..=60u64 {
            let quotas = pair.map(|(m, p)| Quota::window(m, Duration::from_nanos(p)).unwrap());
            let clock = ManualClock::new();
            let limiter = KeyedRateLimiter::with_quota(quotas[0]).with_timer(clock.clone());
            let mut rng = common::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let (mut max, mut period) = pair[0];
            let mut now: u64 = 0;
            let mut granted: Vec<u64> = Vec::new();
            for i in 0..400 {
                let what = format!("{pair:?} seed {seed} op {i}");
                match rng.below(8) {
                    0..=3 => {
                        let n = match rng.below(3) {
                            0 => 1 + rng.below(max),
                            _ => 1,
                        };
                        // (A check forgets what its window no longer
                        // sees, as a lone limiter's does: a longer period
                        // later does not bring it back.)
                        granted.retain(|&t| t.saturating_add(period) > now);
                        let live = granted.clone();
                        let exact = match (live.len() + n).checked_sub(max) {
                            Some(over @ 1..) => live[over - 1].saturating_add(period),
                            _ => now,
                        };
                        match limiter.try_acquire_n("k", n) {
                            Ok(()) => {
                                assert!(exact <= now, "{what}: {n} granted over the quota");
                                granted.extend(std::iter::repeat_n(now, n));
                            }
                            Err(RateLimitError::RateLimited { wait }) => {
                                let at = now as u128 + wait.as_nanos();
                                assert!(at > now as u128, "{what}: refused, wait 0");
                                assert!(at >= exact as u128, "{what}: retry {at} before {exact}");
                                assert!(
                                    at < exact as u128 + step as u128,
                                    "{what}: retry {at} a step or more after {exact}"
                                );
                            }
                            Err(e) => panic!("{what}: {e:?}"),
                        }
                    }
                    4 if rng.below(2) == 0 => {
                        let j = rng.below(2);
                        (max, period) = pair[j];
                        limiter.set_quota(quotas[j]).unwrap();
                    }
                    _ => {
                        let by = match rng.below(4) {
                            0 => rng.below_u64(3 * step),
                            1 => rng.below_u64(period / 4),
                            2 => period.saturating_sub(rng.below_u64(2 * step)),
                            _ => rng.below_u64(1 << 20),
                        };
                        now += by;
                        clock.advance(Duration::from_nanos(by));
                    }
                }
            }
        }
    }
}

/// A key whose `Drop` panics (once armed).
struct Bomb(u32, bool);

impl std::hash::Hash for Bomb {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Bomb {
    fn eq(&self, other: &Bomb) -> bool {
        self.0 == other.0
    }
}

impl Eq for Bomb {}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.1 && !std::thread::panicking() {
            std::panic::panic_any("injected: a key's drop");
        }
    }
}

/// Keys holding rings are evicted and dropped with the limiter while their
/// `Drop` panics: every ring is still given back, and the limiter is
/// usable (with no key left behind) after the panic.
#[test]
fn stamp_rings_are_freed_even_when_their_keys_drop_panics() {
    common::quiet();
    // (A first panic fills the panic machinery's lazy caches: not counted.)
    for _ in 0..2 {
        let _ = std::panic::catch_unwind(|| drop(Bomb(u32::MAX, true)));
    }
    let minute = Duration::from_secs(60);
    let later = minute + Duration::from_micros(1);
    let clock = ManualClock::new();
    let limiter =
        KeyedRateLimiter::with_quota(Quota::window(64, minute).unwrap()).with_timer(clock.clone());
    let fill = |per_key: usize| {
        for _ in 0..per_key {
            for key in 0..8 {
                // Only the stored key (the first one) is armed; the
                // probes are not.
                let _ = limiter.try_acquire(Bomb(key, false));
            }
            clock.advance(Duration::from_nanos(1));
        }
    };
    // The keys are stored armed, one grant each.
    for key in 0..8 {
        limiter.try_acquire(Bomb(key, true)).unwrap();
    }
    let grown = common::net_alloc(|| fill(30));
    assert!(grown > 0);
    let back = common::net_alloc(|| {
        clock.advance(later);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| limiter.evict_idle()))
                .is_err();
        assert!(panicked, "an armed key was not dropped");
    });
    assert_eq!(limiter.len(), 0);
    assert!(grown + back <= 0, "{grown} grown, {back} given back");
    // Usable again; then dropped with rings and panicking keys.
    for key in 0..8 {
        limiter.try_acquire(Bomb(key, true)).unwrap();
    }
    let grown = common::net_alloc(|| fill(30));
    let back = common::net_alloc(|| {
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(limiter))).is_err();
        assert!(panicked, "an armed key was not dropped");
    });
    // As much as dropping the same limiter whose keys never had rings.
    let base = {
        let limiter = KeyedRateLimiter::with_quota(Quota::window(64, minute).unwrap())
            .with_timer(clock.clone());
        for key in 0..8 {
            limiter.try_acquire(Bomb(key, true)).unwrap();
        }
        common::net_alloc(|| {
            let panicked =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(limiter))).is_err();
            assert!(panicked);
        })
    };
    assert!(base < 0);
    // As much as that, within 512 bytes: the two sides differ run to run by
    // a few hundred bytes either way under CI (RUST_BACKTRACE=1, other
    // tests panicking on other threads), while the eight rings grown above
    // (`grown`, about 1.5 KiB) would all be missing if rings leaked.
    assert!(grown > 1024, "the rings grew {grown} bytes");
    assert!(
        grown + back <= base + 512,
        "{grown} grown, {back} given back, {base} for no rings"
    );
}

/// `Duration::MAX` as the period (past `u64::MAX` ns): stamps on the
/// longest grid answer as a lone limiter does, on the grid and off it.
#[test]
fn a_period_of_duration_max_matches_a_lone_limiter() {
    for max in [2, 3, 63, 64, 65] {
        for offset in [0, 1, (1 << 33) - 1] {
            let quota = Quota::window(max, Duration::MAX).unwrap();
            let clock = ManualClock::new();
            let limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
            let single = RateLimiter::with_quota(quota).with_timer(clock.clone());
            assert_eq!(limiter.try_acquire(1), single.try_acquire());
            let mut rng = common::Rng(0x9E37_79B9_7F4A_7C15 ^ offset);
            for i in 0..200 {
                let n = 1 + rng.below(3).min(max - 1);
                let (got, want) = (limiter.try_acquire_n(1, n), single.try_acquire_n(n));
                match (&got, &want) {
                    // Off the grid, a refusal may end up to a step later.
                    (
                        Err(RateLimitError::RateLimited { wait: a }),
                        Err(RateLimitError::RateLimited { wait: b }),
                    ) => {
                        assert!(
                            a >= b && *a - *b < Duration::from_nanos(1 << 33),
                            "{max} {i}: {got:?} {want:?}"
                        );
                    }
                    _ => assert_eq!(got, want, "{max} {i}"),
                }
                clock.advance(Duration::from_nanos(
                    ((1 << 33) * rng.below_u64(1 << 20)) + offset,
                ));
            }
        }
    }
}

// A clock whose next read, on this thread, runs a hook right after reading
// (a thread preempted between reading the clock and taking the lock).
thread_local! {
    static AFTER_READ: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

#[derive(Clone)]
struct Preempted(ManualClock);

impl awaitkit::Timer for Preempted {
    type Sleep = <ManualClock as awaitkit::Timer>::Sleep;

    fn now(&self) -> std::time::Instant {
        let now = self.0.now();
        if let Some(hook) = AFTER_READ.with(|h| h.borrow_mut().take()) {
            hook();
        }
        now
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.0.sleep_until(deadline)
    }

    fn sleep_until_shared(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.0.sleep_until_shared(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: std::time::Instant) {
        self.0.reset(sleep, deadline)
    }
}

/// A minute's window of 3 (32 ns grid), grants at 1, 2 and 3 ns (one
/// ring), then a waiter (promoted with them). A check reads the clock at a
/// minute and 2 ns; before it locks, the waiter is granted and leaves. The
/// check demotes the key back to stamps (behind the waiter's grant): the
/// key then takes exactly the quota from the waiter's grant on (a step of
/// rounding aside), and a sweep before those leave keeps it full.
#[test]
fn a_stale_read_racing_the_demotion_of_a_stamped_key_stays_strict() {
    common::watchdog("stale_stamps", || {
        let minute = Duration::from_secs(60);
        let ns = Duration::from_nanos(1);
        let clock = ManualClock::new();
        let limiter = KeyedRateLimiter::new(3, minute).with_timer(Preempted(clock.clone()));
        let waker = CountingWaker::new();
        clock.advance(ns);
        assert_eq!(limiter.try_acquire("k"), Ok(()));
        for _ in 0..2 {
            clock.advance(ns);
            assert_eq!(limiter.try_acquire("k"), Ok(()));
        }
        let mut waiter = Box::pin(limiter.acquire("k"));
        assert!(waiter.as_mut().poll(&mut waker.context()).is_pending());
        clock.advance(minute - ns); // a minute and 2 ns
        let hook_clock = clock.clone();
        AFTER_READ.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                hook_clock.advance(ns);
                let w = CountingWaker::new();
                assert!(waiter.as_mut().poll(&mut w.context()).is_ready());
                drop(waiter);
            }))
        });
        // Exactly, the grant at 2 ns has left and one more fits; its stamp
        // (32 ns) may still hold the room, for less than a step.
        let mut taken = 1;
        match limiter.try_acquire("k") {
            Ok(()) => taken += 1,
            Err(RateLimitError::RateLimited { wait }) => assert!(wait < 32 * ns, "{wait:?}"),
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(limiter.stats().waiting_keys, 0);
        clock.advance(40 * ns);
        while limiter.try_acquire("k").is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 3, "the waiter's grant and the calls after it");
        // All three are at a minute or later: until two minutes, a sweep
        // keeps the key and nothing fits.
        clock.advance(minute - 100 * ns);
        limiter.evict_idle();
        assert!(limiter.try_acquire("k").is_err());
    });
}

/// A live acquire: the future, its key, its calls, its last poll's time.
type Live = (Pin<Box<KeyedAcquireN<u32, ManualClock>>>, u32, usize, u64);

/// Waiters off the grid: checks and acquires of up to three calls, each
/// acquire polled after every step and cancelled at random, sweeps and the
/// clock moving any number of nanoseconds. Every grant (a waiter's known
/// between its last two polls) is within the quota on the real clock.
#[test]
fn waiters_off_the_grid_keep_stamped_keys_strict() {
    for period in [60_000_000_000, (1u64 << 31) + 1, 3_600_000_000_000] {
        let step = step_of(period);
        for max in [2, 3, 63, 64, 65] {
            for seed in 1..=30u64 {
                let clock = ManualClock::new();
                let limiter = KeyedRateLimiter::with_quota(
                    Quota::window(max, Duration::from_nanos(period)).unwrap(),
                )
                .with_timer(clock.clone());
                let waker = CountingWaker::new();
                let mut rng = common::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mut now = 0u64;
                let mut grants = Vec::new();
                // (key, calls, last poll) of each live acquire.
                let mut live: Vec<Live> = Vec::new();
                assert!(limiter.try_acquire(u32::MAX).is_ok());
                for _ in 0..300 {
                    match rng.below(8) {
                        0 | 1 => {
                            let key = rng.below(2) as u32;
                            let n = 1 + rng.below(3.min(max));
                            if limiter.try_acquire_n(key, n).is_ok() {
                                grants.extend(std::iter::repeat_n(
                                    Granted {
                                        key,
                                        before: now,
                                        after: now,
                                    },
                                    n,
                                ));
                            }
                        }
                        2 if live.len() < 4 => {
                            let key = rng.below(2) as u32;
                            let n = 1 + rng.below(3.min(max));
                            live.push((Box::pin(limiter.acquire_n(key, n)), key, n, now));
                        }
                        3 if !live.is_empty() => {
                            let i = rng.below(live.len());
                            drop(live.remove(i));
                        }
                        4 => {
                            limiter.evict_idle();
                        }
                        _ => {
                            let by = match rng.below(3) {
                                0 => rng.below_u64(3 * step),
                                1 => rng.below_u64(period / 3),
                                _ => period.saturating_sub(rng.below_u64(2 * step)),
                            };
                            now += by;
                            clock.advance(Duration::from_nanos(by));
                        }
                    }
                    let mut i = 0;
                    while i < live.len() {
                        let (fut, key, n, last) = &mut live[i];
                        match fut.as_mut().poll(&mut waker.context()) {
                            Poll::Ready(r) => {
                                r.unwrap();
                                let g = Granted {
                                    key: *key,
                                    before: *last,
                                    after: now,
                                };
                                grants.extend(std::iter::repeat_n(g, *n));
                                drop(live.remove(i));
                            }
                            Poll::Pending => {
                                *last = now;
                                i += 1;
                            }
                        }
                    }
                }
                drop(live);
                assert_at_most(&grants, max, period);
            }
        }
    }
}
