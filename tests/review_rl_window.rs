//! Review (review-rl): the rate limiter check rewrite (the window's common
//! case inlined after locking, the log split into closed entries and a
//! tail, GCRA's n = 1 shortcut).
//!
//! * Random operation sequences on a window limiter over a `ManualClock`
//!   (try_acquire_n, acquire_n with a drop at any point — including after
//!   the driver granted it and before it was polled, so the grant is taken
//!   back —, set_quota, clock jumps), checked against an exact sliding
//!   window model: the same grants, the same refusals, the exact
//!   retry-after, and the FIFO head never left waiting while it fits.
//! * The same with `mem::forget` and quotas above the exact-entry bound
//!   (grants merged), checked for strictness only.
//! * GCRA try_acquire_n (n = 1 with burst 1 included) and set_quota against
//!   the GCRA formula.
//! * A clock that goes backwards or jumps, and `Duration::MAX` periods.
//! * Threads hammering try_acquire_n on a window limiter (with and without
//!   a set_quota thread) while another thread moves the clock: grants are
//!   counted per window by the limiter's clock.

#![cfg(feature = "test-util")]

#[macro_use]
mod common;

use common::Rng;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{RateAcquireN, RateLimiter, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn now_of(clock: &ManualClock) -> u64 {
    u64::try_from(clock.elapsed().as_nanos()).unwrap()
}

// ---------------------------------------------------------------------------
// The exact window model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct WindowModel {
    max: u64,
    period: u64,
    /// Observed grants `(time, n)`.
    grants: Vec<(u64, u64)>,
}

impl WindowModel {
    fn in_window(&self, now: u64) -> u64 {
        self.grants
            .iter()
            .filter(|&&(at, _)| at.saturating_add(self.period) > now)
            .map(|&(_, n)| n)
            .sum()
    }

    /// The earliest time `n` more fit (`n <= max`).
    fn earliest(&self, now: u64, n: u64) -> u64 {
        let count = self.in_window(now);
        if count + n <= self.max {
            return now;
        }
        let over = count + n - self.max;
        let mut live: Vec<(u64, u64)> = self
            .grants
            .iter()
            .copied()
            .filter(|&(at, _)| at.saturating_add(self.period) > now)
            .collect();
        live.sort_by_key(|&(at, _)| at);
        let mut seen = 0;
        for (at, n) in live {
            seen += n;
            if seen >= over {
                return at.saturating_add(self.period).max(now);
            }
        }
        unreachable!("n <= max")
    }
}

type Acq<'a> = RateAcquireN<'a, ManualClock>;

struct Live<'a> {
    fut: Acq<'a>,
    n: u64,
}

/// Polls every live acquire in arrival order; a ready one is an observed
/// grant at `now`.
fn settle(live: &mut Vec<Live<'_>>, model: &mut WindowModel, now: u64, exact: bool) {
    let mut i = 0;
    while i < live.len() {
        match poll(&mut live[i].fut) {
            Poll::Ready(Ok(())) => {
                let n = live[i].n;
                if exact {
                    assert_eq!(i, 0, "a waiter was granted before the one ahead of it");
                    assert!(
                        model.in_window(now) + n <= model.max,
                        "the driver granted {n} at {now} over the window: {model:?}"
                    );
                }
                model.grants.push((now, n));
                live.remove(i);
            }
            // A quota change to fewer calls fails the waiters that ask for
            // more.
            Poll::Ready(Err(RateLimitError::ExceedsQuota { requested, max }))
                if requested as u64 == live[i].n
                    && max as u64 == model.max
                    && live[i].n > model.max =>
            {
                live.remove(i);
            }
            Poll::Ready(Err(e)) => panic!("a waiter failed: {e:?}"),
            Poll::Pending => i += 1,
        }
    }
    if exact {
        if let Some(head) = live.first() {
            let due = model.earliest(now, head.n);
            assert!(
                due > now,
                "the head ({} calls) fits at {now} but still waits: {model:?}",
                head.n
            );
        }
    }
}

/// Every grant, with the window of `period` ending at it, holds at most
/// `max` (the observed grants are a subset of the real ones).
fn assert_strict(grants: &[(u64, u64)], max: u64, period: u64) {
    let mut sorted = grants.to_vec();
    sorted.sort_by_key(|&(at, _)| at);
    for (i, &(t, _)) in sorted.iter().enumerate() {
        let count: u64 = sorted[..=i]
            .iter()
            .rev()
            .take_while(|&&(at, _)| at.saturating_add(period) > t)
            .map(|&(_, n)| n)
            .sum();
        let count = count
            + sorted[i + 1..]
                .iter()
                .take_while(|&&(at, _)| at == t)
                .map(|&(_, n)| n)
                .sum::<u64>();
        assert!(
            count <= max,
            "{count} calls granted in the window ending at {t} (period {period}, max {max})"
        );
    }
}

/// One random run. `exact`: compare every outcome with the model (no
/// forget, quotas within the exact-entry bound, periods never growing).
fn window_run(seed: u64, exact: bool, big: bool) {
    let mut rng = Rng(seed | 1);
    let clock = ManualClock::new();
    let mut max = if big {
        1025 + rng.below_u64(1500)
    } else {
        1 + rng.below_u64(6)
    };
    let span = if rng.below_u64(4) == 0 { 5 } else { 120 };
    let mut period = 1 + rng.below_u64(span);
    let limiter = RateLimiter::with_quota(Quota::window(max as usize, ns(period)).unwrap())
        .with_timer(clock.clone());
    let mut model = WindowModel {
        max,
        period,
        grants: Vec::new(),
    };
    // For the strict check across quota changes: the smallest period and
    // the largest max ever used bound every window.
    let (mut min_period, mut max_max) = (period, max);
    let mut live: Vec<Live<'_>> = Vec::new();
    let n_of = |rng: &mut Rng, max: u64| -> u64 {
        match rng.below_u64(10) {
            0 => 0,
            1 => max + 1 + rng.below_u64(3),
            2 => max,
            _ => 1 + rng.below_u64(max.min(3)),
        }
    };
    for _step in 0..400 {
        let now = now_of(&clock);
        match rng.below_u64(12) {
            // The clock moves (to the next deadline, or by any amount), then
            // some acquires are dropped before they are polled: a grant the
            // driver made for them is taken back.
            0..=2 => {
                match (rng.below_u64(3), clock.next_deadline()) {
                    (0, Some(next)) => clock.advance_to(next),
                    _ => clock.advance(ns(rng.below_u64(period * 2 + 2))),
                }
                let now = now_of(&clock);
                let mut i = 0;
                while i < live.len() {
                    if rng.below_u64(4) == 0 {
                        drop(live.remove(i));
                    } else {
                        i += 1;
                    }
                }
                settle(&mut live, &mut model, now, exact);
            }
            3..=5 => {
                let n = n_of(&mut rng, max);
                let got = limiter.try_acquire_n(n as usize);
                let before = model.clone();
                if n == 0 {
                    assert_eq!(got, Ok(()));
                } else if n > max {
                    assert_eq!(
                        got,
                        Err(RateLimitError::ExceedsQuota {
                            requested: n as usize,
                            max: max as usize
                        })
                    );
                } else if !live.is_empty() {
                    assert!(
                        got.is_err(),
                        "try_acquire barged past {} waiters",
                        live.len()
                    );
                } else if exact {
                    let due = model.earliest(now, n);
                    let want = if due == now {
                        Ok(())
                    } else {
                        Err(RateLimitError::RateLimited {
                            wait: ns(due - now),
                        })
                    };
                    assert_eq!(got, want, "try_acquire_n({n}) at {now}: {before:?}");
                }
                if got.is_ok() {
                    model.grants.push((now, n));
                }
            }
            6..=7 => {
                let n = n_of(&mut rng, max);
                let mut fut = limiter.acquire_n(n as usize);
                match poll(&mut fut) {
                    Poll::Ready(Ok(())) => {
                        assert!(n == 0 || live.is_empty(), "acquire barged");
                        if exact && n > 0 {
                            assert_eq!(model.earliest(now, n), now, "granted early");
                        }
                        if n > 0 {
                            model.grants.push((now, n));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        assert!(n > max, "acquire_n({n}) failed: {e:?}");
                    }
                    Poll::Pending => {
                        assert!(n > 0 && n <= max);
                        if exact && live.is_empty() {
                            assert!(model.earliest(now, n) > now, "refused while it fit");
                        }
                        live.push(Live { fut, n });
                    }
                }
                settle(&mut live, &mut model, now, exact);
            }
            8 if !live.is_empty() => {
                let i = rng.below_u64(live.len() as u64) as usize;
                drop(live.remove(i));
                settle(&mut live, &mut model, now, exact);
            }
            9 => {
                let new_max = if big {
                    1025 + rng.below_u64(1500)
                } else {
                    1 + rng.below_u64(6)
                };
                let new_period = if exact {
                    1 + rng.below_u64(period)
                } else {
                    1 + rng.below_u64(200)
                };
                limiter
                    .set_quota(Quota::window(new_max as usize, ns(new_period)).unwrap())
                    .unwrap();
                max = new_max;
                period = new_period;
                model.max = max;
                model.period = period;
                min_period = min_period.min(period);
                max_max = max_max.max(max);
                settle(&mut live, &mut model, now, exact);
            }
            10 if !exact && !live.is_empty() => {
                let i = rng.below_u64(live.len() as u64) as usize;
                std::mem::forget(live.remove(i).fut);
                settle(&mut live, &mut model, now, exact);
            }
            _ => {
                // A snapshot takes nothing, and agrees with the model.
                let snap = limiter.snapshot();
                assert_eq!(limiter.snapshot(), snap);
                if exact {
                    assert_eq!(snap.waiting, live.len());
                } else {
                    assert!(snap.waiting >= live.len(), "forgotten acquires still wait");
                }
                if exact && live.is_empty() {
                    let remaining = max.saturating_sub(model.in_window(now));
                    assert_eq!(snap.remaining as u64, remaining, "at {now}: {model:?}");
                    let next = model.earliest(now, 1) - now;
                    assert_eq!(snap.next_in, Some(ns(next)), "at {now}: {model:?}");
                }
            }
        }
    }
    // Everyone left is granted in the end: nothing wedges.
    let mut rounds = 0;
    while !live.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "{} waiters never granted", live.len());
        match clock.next_deadline() {
            Some(next) => clock.advance_to(next),
            None => clock.advance(ns(period)),
        }
        let now = now_of(&clock);
        settle(&mut live, &mut model, now, exact);
    }
    assert_strict(&model.grants, max_max, min_period);
}

guarded! {
    fn window_random_operations_match_the_exact_model() {
        for seed in 0..1500u64 {
            window_run(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D), true, false);
        }
    }

    fn window_random_operations_with_forget_and_any_quota_change_stay_strict() {
        for seed in 0..800u64 {
            window_run(0xD1B5_4A32_D192_ED03 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D), false, false);
        }
    }

    fn window_above_the_exact_entry_bound_stays_strict() {
        for seed in 0..150u64 {
            window_run(0xA076_1D64_78BD_642F ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D), false, true);
        }
    }

    /// The author's named risk: a grant taken back at the boundary (its
    /// index == the number of older entries) after the tail expired and a
    /// new tail opened must not eat the new tail's grants.
    fn a_stale_tail_grant_taken_back_after_the_tail_expired_leaves_the_new_tail_alone() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(Quota::window(2, ns(100)).unwrap())
            .with_timer(clock.clone());
        limiter.try_acquire_n(2).unwrap();
        // A waiter, granted by the driver at 100 (the tail, index 1), not
        // polled yet.
        let mut a = limiter.acquire_n(1);
        assert!(poll(&mut a).is_pending());
        clock.advance(ns(100));
        // Let the tail expire and a new one open: the old entry at 0 and the
        // waiter's entry at 100 go at 200, a new grant opens a tail at 200.
        clock.advance(ns(100));
        limiter.try_acquire_n(2).unwrap();
        // Now take the stale grant back.
        drop(a);
        // The window still holds the two calls granted at 200.
        assert!(limiter.try_acquire().is_err());
        assert_eq!(limiter.snapshot().remaining, 0);
        clock.advance(ns(99));
        assert!(limiter.try_acquire().is_err());
        clock.advance(ns(1));
        limiter.try_acquire_n(2).unwrap();
    }

    /// The same, with the stale grant's entry the only one before a new
    /// closed entry: index == base + closed.len() at the time of the grant.
    fn a_grant_taken_back_from_a_closed_entry_hits_that_entry() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(Quota::window(3, ns(100)).unwrap())
            .with_timer(clock.clone());
        limiter.try_acquire_n(3).unwrap(); // entry 0 at 0
        let mut a = limiter.acquire_n(1);
        assert!(poll(&mut a).is_pending());
        clock.advance(ns(100)); // a granted at 100: entry 1 (the tail)
        clock.advance(ns(10));
        limiter.try_acquire_n(2).unwrap(); // entry 2 at 110: entry 1 closed
        drop(a); // takes back entry 1 (now closed)
        // Room for exactly one more at 110 (entries at 110: 2).
        assert!(limiter.try_acquire_n(2).is_err());
        limiter.try_acquire_n(1).unwrap();
        assert!(limiter.try_acquire().is_err());
    }
}

// ---------------------------------------------------------------------------
// GCRA: try_acquire_n against the formula, with quota changes
// ---------------------------------------------------------------------------

guarded! {
    fn gcra_try_acquire_and_set_quota_match_the_formula() {
        for seed in 0..600u64 {
            let mut rng = Rng(0xC2B2_AE3D_27D4_EB4F ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let clock = ManualClock::new();
            let quota = |rng: &mut Rng| {
                let max = 1 + rng.below_u64(5);
                let period = 1 + rng.below_u64(200);
                let burst = if rng.below_u64(2) == 0 { 1 } else { 1 + rng.below_u64(4) };
                (max, period, burst)
            };
            let (mut max, mut period, mut burst) = quota(&mut rng);
            let limiter = RateLimiter::with_quota(
                Quota::gcra(max as usize, ns(period), burst as usize).unwrap(),
            )
            .with_timer(clock.clone());
            let mut interval = period.div_ceil(max);
            let mut tat: u64 = 0;
            for _ in 0..300 {
                let now = now_of(&clock);
                match rng.below_u64(8) {
                    0 | 1 => clock.advance(ns(rng.below_u64(interval * 3 + 1))),
                    2 => {
                        let (m, p, b) = quota(&mut rng);
                        limiter
                            .set_quota(Quota::gcra(m as usize, ns(p), b as usize).unwrap())
                            .unwrap();
                        let new_interval = p.div_ceil(m);
                        if tat > now {
                            let owed = (tat - now) * new_interval;
                            tat = now + owed.div_ceil(interval);
                        }
                        (max, period, burst, interval) = (m, p, b, new_interval);
                    }
                    _ => {
                        let n = match rng.below_u64(6) {
                            0 => 0,
                            1 => burst + 1,
                            2 => burst,
                            _ => 1,
                        };
                        let got = limiter.try_acquire_n(n as usize);
                        let want = if n == 0 {
                            Ok(())
                        } else if n > burst {
                            Err(RateLimitError::ExceedsQuota {
                                requested: n as usize,
                                max: burst as usize,
                            })
                        } else {
                            let new = tat.max(now) + n * interval;
                            let allowed = new.saturating_sub(burst * interval);
                            if allowed <= now {
                                tat = new;
                                Ok(())
                            } else {
                                Err(RateLimitError::RateLimited { wait: ns(allowed - now) })
                            }
                        };
                        assert_eq!(
                            got, want,
                            "seed {seed}: try_acquire_n({n}) at {now}, quota {max}/{period} burst {burst}"
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Clocks that go backwards or jump; Duration::MAX
// ---------------------------------------------------------------------------

/// A `ManualClock` whose reading can be moved back by `back`.
#[derive(Clone)]
struct Wobbly {
    clock: ManualClock,
    back: Arc<AtomicU64>,
}

impl Timer for Wobbly {
    type Sleep = <ManualClock as Timer>::Sleep;

    fn now(&self) -> Instant {
        self.clock.now() - ns(self.back.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.clock.sleep_until(deadline)
    }

    fn reset(&self, sleep: Pin<&mut Self::Sleep>, deadline: Instant) {
        self.clock.reset(sleep, deadline);
    }
}

guarded! {
    fn a_clock_that_goes_back_never_reopens_the_window() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(10));
        let back = Arc::new(AtomicU64::new(0));
        let timer = Wobbly { clock: clock.clone(), back: back.clone() };
        let limiter = RateLimiter::with_quota(Quota::window(3, Duration::from_secs(1)).unwrap())
            .with_timer(timer);
        clock.advance(Duration::from_secs(5));
        limiter.try_acquire_n(3).unwrap();
        // Back by 4 s: the limiter holds its clock where it was.
        back.store(4_000_000_000, Ordering::SeqCst);
        let err = limiter.try_acquire().unwrap_err();
        assert_eq!(err.wait(), Some(Duration::from_secs(1)));
        // The reading moves forward 2 s (still 2 s behind the held time).
        clock.advance(Duration::from_secs(2));
        assert!(limiter.try_acquire().is_err());
        clock.advance(Duration::from_secs(3)); // reading = held + 1 s
        limiter.try_acquire_n(3).unwrap();
        assert!(limiter.try_acquire().is_err());
        // A big jump forward: everything expires.
        back.store(0, Ordering::SeqCst);
        clock.advance(Duration::from_secs(3600));
        limiter.try_acquire_n(3).unwrap();
        assert!(limiter.try_acquire().is_err());
    }

    fn duration_max_periods_never_expire_and_never_hang() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(Quota::window(2, Duration::MAX).unwrap())
            .with_timer(clock.clone());
        limiter.try_acquire().unwrap();
        limiter.try_acquire().unwrap();
        let err = limiter.try_acquire().unwrap_err();
        assert!(err.wait().unwrap() >= Duration::from_secs(1 << 40), "{err:?}");
        let mut a = limiter.acquire();
        assert!(poll(&mut a).is_pending());
        clock.advance(Duration::from_secs(1 << 30));
        assert!(poll(&mut a).is_pending());
        assert!(limiter.try_acquire().is_err());
        drop(a);
        assert_eq!(limiter.waiting(), 0);
        assert!(limiter.try_acquire().is_err());
        assert!(limiter.try_acquire_n(usize::MAX).is_err());
        assert!(limiter.try_acquire_n(0).is_ok());

        let g = RateLimiter::with_quota(Quota::gcra(1, Duration::MAX, 1).unwrap())
            .with_timer(clock.clone());
        g.try_acquire().unwrap();
        assert!(g.try_acquire().is_err());
        assert!(g.try_acquire_n(usize::MAX).is_err());
        clock.advance(Duration::from_secs(1 << 30));
        assert!(g.try_acquire().is_err());
    }

    fn huge_quotas_and_n() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(Quota::window(usize::MAX, ns(1)).unwrap())
            .with_timer(clock.clone());
        limiter.try_acquire_n(usize::MAX).unwrap();
        assert!(limiter.try_acquire().is_err());
        assert!(limiter.try_acquire_n(usize::MAX).is_err());
        clock.advance(ns(1));
        limiter.try_acquire_n(usize::MAX - 1).unwrap();
        limiter.try_acquire().unwrap();
        assert!(limiter.try_acquire().is_err());
    }
}

// ---------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------

/// Grants `(read before, read after, n)` on the limiter's clock. A grant
/// whose two readings agree happened at that time; the others somewhere
/// between them.
fn hammer(threads: usize, max: u64, period: u64, requota: bool, seed: u64) -> Vec<(u64, u64, u64)> {
    let quotas = [
        Quota::window(max as usize, ns(period)).unwrap(),
        Quota::window((max - 1).max(1) as usize, ns(period)).unwrap(),
    ];
    hammer_quotas(threads, quotas, requota, seed)
}

/// [`hammer`] on any quota; `requota` switches between the two.
fn hammer_quotas(
    threads: usize,
    quotas: [Quota; 2],
    requota: bool,
    seed: u64,
) -> Vec<(u64, u64, u64)> {
    hammer_inner(threads, quotas, requota, seed, false)
}

/// [`hammer_quotas`]; with `acquirers`, the odd threads use `acquire_n`
/// instead, polled in a loop and dropped after a random number of polls
/// (a waiter leaving the queue, or a grant the driver made taken back).
fn hammer_inner(
    threads: usize,
    quotas: [Quota; 2],
    requota: bool,
    seed: u64,
    acquirers: bool,
) -> Vec<(u64, u64, u64)> {
    let period = u64::try_from(quotas[0].period().as_nanos()).unwrap();
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::with_quota(quotas[0]).with_timer(clock.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    // Grants made by try_acquire_n (their times are mostly known exactly).
    let granted = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 2));
    let workers: Vec<_> = (0..threads)
        .map(|k| {
            let (limiter, clock, stop, start, attempts, granted) = (
                limiter.clone(),
                clock.clone(),
                stop.clone(),
                start.clone(),
                attempts.clone(),
                granted.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut grants = Vec::new();
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let n = 1 + rng.below_u64(quotas[1].max_at_once().min(2) as u64);
                    let before = now_of(&clock);
                    if acquirers && k % 2 == 1 {
                        let mut fut = limiter.acquire_n(n as usize);
                        let limit = rng.below_u64(60);
                        let mut polls = 0;
                        loop {
                            match poll(&mut fut) {
                                Poll::Ready(Ok(())) => {
                                    grants.push((before, now_of(&clock), n));
                                    break;
                                }
                                Poll::Ready(Err(_)) => break,
                                Poll::Pending => {
                                    polls += 1;
                                    if polls > limit || stop.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    std::thread::yield_now();
                                }
                            }
                        }
                        drop(fut);
                        attempts.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let got = limiter.try_acquire_n(n as usize);
                    let after = now_of(&clock);
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match got {
                        Ok(()) => {
                            granted.fetch_add(1, Ordering::Relaxed);
                            grants.push((before, after, n));
                        }
                        Err(e) if std::env::var_os("RL_DEBUG").is_some() => eprintln!("{e:?}"),
                        Err(_) => {}
                    }
                }
                grants
            })
        })
        .collect();
    let requoter = {
        let (limiter, stop, start) = (limiter.clone(), stop.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if requota {
                    limiter.set_quota(quotas[(k % 2) as usize]).unwrap();
                    k += 1;
                }
                std::thread::yield_now();
            }
        })
    };
    start.wait();
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut steps = 0;
    // Enough of everything, or (on a loaded machine) enough wall time.
    let began = Instant::now();
    while (steps < 2000
        || attempts.load(Ordering::Relaxed) < 50_000
        || granted.load(Ordering::Relaxed) < 1_000)
        && began.elapsed() < Duration::from_secs(4)
    {
        steps += 1;
        clock.advance(ns(1 + rng.below_u64(period / 4 + 1)));
        for _ in 0..rng.below_u64(40) {
            std::hint::spin_loop();
        }
        if rng.below_u64(8) == 0 {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    requoter.join().unwrap();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

/// No window of `period` (on the limiter's clock) surely holds more than
/// `max` grants: for every `t`, the grants that surely happened in
/// `(t - period, t]`.
fn assert_surely_strict(grants: &mut [(u64, u64, u64)], max: u64, period: u64) {
    grants.sort_by_key(|&(before, _, _)| before);
    let exact = grants.iter().filter(|g| g.0 == g.1).count();
    assert!(
        exact >= 50,
        "too few grants with a known time: {exact} of {}",
        grants.len()
    );
    for &(_, t, _) in grants.iter() {
        let lo = grants.partition_point(|&(before, _, _)| before.saturating_add(period) <= t);
        let hi = grants.partition_point(|&(before, _, _)| before <= t);
        let count: u64 = grants[lo..hi]
            .iter()
            .filter(|&&(_, after, _)| after <= t)
            .map(|&(_, _, n)| n)
            .sum();
        assert!(
            count <= max,
            "{count} calls surely granted in the window ending at {t} (max {max}, period {period})"
        );
    }
}

guarded! {
    fn window_try_acquire_from_threads_stays_strict() {
        for (threads, max, period, seed) in [(2, 3, 40, 1u64), (3, 5, 100, 2), (4, 2, 16, 3), (4, 7, 400, 4)] {
            let mut grants = hammer(threads, max, period, false, seed);
            assert!(!grants.is_empty());
            assert_surely_strict(&mut grants, max, period);
        }
    }

    fn window_try_acquire_from_threads_racing_set_quota_stays_strict() {
        for (threads, max, period, seed) in [(2, 3, 40, 5u64), (3, 4, 100, 6), (4, 2, 16, 7)] {
            let mut grants = hammer(threads, max, period, true, seed);
            assert!(!grants.is_empty());
            assert_surely_strict(&mut grants, max, period);
        }
    }
}

guarded! {
    /// GCRA's lock-free check (n = 1 skips the burst comparison) from
    /// threads, with a thread re-applying the quota (the sequence counter
    /// changes under the checks): at most `burst + max_calls - 1` in any
    /// period. With bursts switching between 1 and 3 (the same rate, so no
    /// rescale), the larger burst bounds every window.
    fn gcra_try_acquire_from_threads_racing_set_quota_stays_within_the_burst() {
        for (threads, requota, seed) in [(3, false, 11u64), (3, true, 12), (4, true, 13), (2, true, 14)] {
            let max = 4;
            let period = 400;
            let quotas = [
                Quota::gcra(max, ns(period), 1).unwrap(),
                Quota::gcra(max, ns(period), 3).unwrap(),
            ];
            let quotas = if requota { quotas } else { [quotas[0], quotas[0]] };
            let mut grants = hammer_quotas(threads, quotas, requota, seed);
            assert!(!grants.is_empty());
            let burst = if requota { 3 } else { 1 };
            assert_surely_strict(&mut grants, burst + max as u64 - 1, period);
        }
    }
}

guarded! {
    /// Window quota changes racing the checks, periods included: every
    /// window of the smallest period holds at most the largest max (the log
    /// forgets a grant only once the period in force then has passed it).
    /// The second case crosses the exact-entry bound (merged grants).
    fn window_try_acquire_from_threads_racing_period_changes_stays_strict() {
        let cases = [
            (3, [(3, 40), (2, 80)], 21u64),
            (4, [(2, 16), (1, 64)], 22),
            (3, [(1500, 3000), (1100, 2000)], 23),
        ];
        for (threads, [(m0, p0), (m1, p1)], seed) in cases {
            let quotas = [
                Quota::window(m0, ns(p0)).unwrap(),
                Quota::window(m1, ns(p1)).unwrap(),
            ];
            let mut grants = hammer_quotas(threads, quotas, true, seed);
            assert!(!grants.is_empty());
            assert_surely_strict(&mut grants, m0.max(m1) as u64, p0.min(p1));
        }
    }
}

guarded! {
    /// Threads acquiring (polled in a loop, dropped at any point: a queued
    /// waiter leaves, a grant the driver made is taken back) against
    /// threads calling try_acquire_n, with and without quota changes.
    fn window_acquire_and_try_acquire_from_threads_with_take_backs_stay_strict() {
        let cases = [
            (4, [(3, 40), (3, 40)], false, 31u64),
            (4, [(2, 100), (2, 100)], false, 32),
            (4, [(3, 40), (2, 80)], true, 33),
            (3, [(4, 200), (3, 100)], true, 34),
        ];
        for (threads, [(m0, p0), (m1, p1)], requota, seed) in cases {
            let quotas = [
                Quota::window(m0, ns(p0)).unwrap(),
                Quota::window(m1, ns(p1)).unwrap(),
            ];
            let mut grants = hammer_inner(threads, quotas, requota, seed, true);
            assert_surely_strict(&mut grants, m0.max(m1) as u64, p0.min(p1));
        }
    }
}
