#![cfg(feature = "test-util")]
//! Random interleavings of checks, acquires, cancels, forgets, evictions and
//! clock moves on a `KeyedRateLimiter` (compact keys, promoted keys, a key
//! bound) driven by a `ManualClock`, checked against the quota's promise
//! per key (proptest).
//!
//! Every live acquire is polled after every step, so a grant is seen at the
//! time it was made. Then, per key:
//!
//! * **Window**: in every window `(t - period, t]`, at most `max_calls`
//!   grants.
//! * **GCRA**: replaying the key's grants in order through GCRA's
//!   conformance test (interval `T = ceil(period / max_calls)`, tolerance
//!   `burst * T`) never fails: no grant comes before GCRA allows it.
//! * **FIFO**: a key's acquires complete in arrival order, and a
//!   `try_acquire` never succeeds while an acquire of the same key waits.
//! * **Bound**: the limiter never tracks more keys than its bound; a key is
//!   refused (`TooManyKeys`) only when the limiter is full.
//! * **Liveness**: at the end every acquire still alive completes once the
//!   clock has moved far enough.
//! * **Exactness**: a check, or an acquire's first poll, of a key nobody
//!   waits on is granted whenever the grants seen so far leave room for it
//!   (so nothing took a grant unseen: an acquire takes nothing before its
//!   first poll, even one cancelled or forgotten unpolled; only a forgotten
//!   *waiting* acquire may waste a grant, and its key is left out).
//!
//! Acquires are first polled at once (`Acquire`: granted at the first poll,
//! or queued) or later (`AcquireLater`, then `FirstPoll`, `CancelUnpolled`
//! or `ForgetUnpolled`): FIFO order is the order of first polls.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{KeyedAcquireN, KeyedRateLimiter, Timer};
use common::CountingWaker;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Try { key: u8, n: u8 },
    Acquire { key: u8, n: u8 },
    Cancel(usize),
    Forget(usize),
    Evict,
    AcquireLater { key: u8, n: u8 },
    FirstPoll(usize),
    CancelUnpolled(usize),
    ForgetUnpolled(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..40u64).prop_map(Op::Advance),
        4 => (0..6u8, 1..4u8).prop_map(|(key, n)| Op::Try { key, n }),
        3 => (0..6u8, 1..4u8).prop_map(|(key, n)| Op::Acquire { key, n }),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Forget),
        1 => Just(Op::Evict),
        2 => (0..6u8, 1..4u8).prop_map(|(key, n)| Op::AcquireLater { key, n }),
        2 => any::<usize>().prop_map(Op::FirstPoll),
        1 => any::<usize>().prop_map(Op::CancelUnpolled),
        1 => any::<usize>().prop_map(Op::ForgetUnpolled),
    ]
}

struct Live {
    key: u8,
    n: u64,
    seq: usize,
    /// Polled at least once (else its first poll is next).
    polled: bool,
    future: Pin<Box<KeyedAcquireN<u8, ManualClock>>>,
}

struct Run {
    clock: ManualClock,
    t0: Instant,
    limiter: KeyedRateLimiter<u8, ManualClock>,
    max_keys: Option<usize>,
    waker: CountingWaker,
    live: Vec<Live>,
    /// Forgotten acquires: never polled nor dropped again (until the end of
    /// the case, so the test itself leaks nothing).
    parked: Vec<Live>,
    /// Acquires made and not polled yet.
    unpolled: Vec<Live>,
    /// Keys with a forgotten acquire that was polled (its turn may take a
    /// grant nobody sees).
    tainted: HashSet<u8>,
    quota: Quota,
    grants: HashMap<u8, Vec<(u64, u64)>>,
    /// The arrival number of the last completed acquire, per key.
    served: HashMap<u8, usize>,
    seq: usize,
}

impl Run {
    fn now(&self) -> u64 {
        u64::try_from(self.clock.now().duration_since(self.t0).as_nanos()).unwrap()
    }

    /// Whether the grants seen so far leave room for `n` more of `key` at
    /// `now`, when nobody waits on the key and none of its grants may have
    /// gone unseen (`None` when that cannot be told).
    fn room_for(&self, key: u8, n: u64, now: u64, skip: Option<usize>) -> Option<bool> {
        let waiting = self
            .live
            .iter()
            .enumerate()
            .any(|(i, l)| Some(i) != skip && l.key == key && l.polled);
        if waiting || self.tainted.contains(&key) {
            return None;
        }
        let no_grants = Vec::new();
        let g = self.grants.get(&key).unwrap_or(&no_grants);
        let period = u64::try_from(self.quota.period().as_nanos()).unwrap();
        let max_calls = self.quota.max_calls() as u64;
        Some(match self.quota.burst() {
            None => {
                let inside: u64 = g
                    .iter()
                    .filter(|&&(s, _)| s + period > now)
                    .map(|&(_, n)| n)
                    .sum();
                inside + n <= max_calls
            }
            Some(burst) => {
                let interval = period.div_ceil(max_calls);
                let tolerance = interval * burst as u64;
                let tat = g
                    .iter()
                    .fold(0u64, |tat, &(t, n)| tat.max(t) + n * interval);
                tat.max(now) + n * interval <= now + tolerance
            }
        })
    }

    fn poll_all(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        let mut i = 0;
        while i < self.live.len() {
            let first = !self.live[i].polled;
            let room = if first {
                self.room_for(self.live[i].key, self.live[i].n, now, Some(i))
            } else {
                None
            };
            let live = &mut self.live[i];
            live.polled = true;
            let outcome = live.future.as_mut().poll(&mut self.waker.context());
            if room == Some(true) {
                prop_assert!(
                    !matches!(
                        outcome,
                        Poll::Pending | Poll::Ready(Err(RateLimitError::RateLimited { .. }))
                    ),
                    "key {}: {} not granted at the first poll with room: {:?}",
                    live.key,
                    live.n,
                    outcome
                );
            }
            match outcome {
                Poll::Pending => i += 1,
                Poll::Ready(Err(RateLimitError::TooManyKeys { max_keys })) => {
                    // Refused when it was made (just before this first poll).
                    self.live.remove(i);
                    prop_assert_eq!(Some(max_keys), self.max_keys);
                    prop_assert_eq!(self.limiter.len(), max_keys, "refused below the bound");
                }
                Poll::Ready(outcome) => {
                    let live = self.live.remove(i);
                    prop_assert_eq!(outcome, Ok(()), "key {} acquire", live.key);
                    let last = self.served.insert(live.key, live.seq);
                    prop_assert!(
                        last.is_none_or(|last| last < live.seq),
                        "key {}: acquire {} completed after {:?}",
                        live.key,
                        live.seq,
                        last
                    );
                    self.grants.entry(live.key).or_default().push((now, live.n));
                }
            }
        }
        Ok(())
    }

    fn check_bound(&self) -> Result<(), TestCaseError> {
        if let Some(max) = self.max_keys {
            prop_assert!(
                self.limiter.len() <= max,
                "{} keys > {max}",
                self.limiter.len()
            );
        }
        Ok(())
    }
}

fn check_grants(quota: Quota, grants: &HashMap<u8, Vec<(u64, u64)>>) -> Result<(), TestCaseError> {
    let period = u64::try_from(quota.period().as_nanos()).unwrap();
    let max_calls = quota.max_calls() as u64;
    for (key, g) in grants {
        match quota.burst() {
            None => {
                for (i, &(t, _)) in g.iter().enumerate() {
                    let inside: u64 = g[..=i]
                        .iter()
                        .filter(|&&(s, _)| s + period > t)
                        .map(|&(_, n)| n)
                        .sum();
                    prop_assert!(
                        inside <= max_calls,
                        "key {key}: {inside} grants in the window ending at {t}: {g:?}"
                    );
                }
            }
            Some(burst) => {
                let interval = period.div_ceil(max_calls);
                let tolerance = interval * burst as u64;
                let mut tat = 0u64;
                for &(t, n) in g {
                    let start = tat.max(t);
                    prop_assert!(
                        start + n * interval <= t + tolerance,
                        "key {key}: {n} at {t} beyond GCRA (tat {tat}): {g:?}"
                    );
                    tat = start + n * interval;
                }
            }
        }
    }
    Ok(())
}

fn run(quota: Quota, max_keys: Option<usize>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let mut limiter = KeyedRateLimiter::with_quota(quota).with_timer(clock.clone());
    if let Some(max) = max_keys {
        limiter = limiter.with_max_keys(max);
    }
    let mut r = Run {
        t0: clock.now(),
        clock,
        limiter,
        max_keys,
        waker: CountingWaker::new(),
        live: Vec::new(),
        parked: Vec::new(),
        unpolled: Vec::new(),
        tainted: HashSet::new(),
        quota,
        grants: HashMap::new(),
        served: HashMap::new(),
        seq: 0,
    };
    let period = u64::try_from(quota.period().as_nanos()).unwrap();
    for op in ops {
        match op {
            Op::Advance(d) => {
                r.clock.advance(Duration::from_nanos(d * period / 16));
            }
            Op::Try { key, n } => {
                let n = u64::from(n).min(quota.max_at_once() as u64);
                // (A forgotten acquire may have been granted, its grant
                // wasted: only the live ones surely wait.)
                let waiting = r.live.iter().any(|l| l.key == key);
                let room = r.room_for(key, n, r.now(), None);
                let outcome = r.limiter.try_acquire_n(key, n as usize);
                if room == Some(true) {
                    prop_assert!(
                        !matches!(outcome, Err(RateLimitError::RateLimited { .. })),
                        "key {key}: {n} refused with room"
                    );
                }
                match outcome {
                    Ok(()) => {
                        prop_assert!(!waiting, "key {key}: a check passed its waiters");
                        let now = r.now();
                        r.grants.entry(key).or_default().push((now, n));
                    }
                    Err(RateLimitError::RateLimited { .. }) => {}
                    Err(RateLimitError::TooManyKeys { max_keys: max }) => {
                        prop_assert_eq!(Some(max), max_keys);
                        prop_assert_eq!(r.limiter.len(), max, "refused below the bound");
                    }
                    Err(e) => prop_assert!(false, "key {key}: unexpected {e}"),
                }
            }
            Op::Acquire { key, n } => {
                let n = u64::from(n).min(quota.max_at_once() as u64);
                r.seq += 1;
                let live = Live {
                    key,
                    n,
                    seq: r.seq,
                    polled: false,
                    future: Box::pin(r.limiter.acquire_n(key, n as usize)),
                };
                // Polled below with the others: it is granted, refused, or
                // joins the key's queue now.
                r.live.push(live);
            }
            Op::AcquireLater { key, n } => {
                let n = u64::from(n).min(quota.max_at_once() as u64);
                r.unpolled.push(Live {
                    key,
                    n,
                    seq: 0,
                    polled: false,
                    future: Box::pin(r.limiter.acquire_n(key, n as usize)),
                });
            }
            Op::FirstPoll(i) if !r.unpolled.is_empty() => {
                // Its place in the key's line is taken now.
                let mut live = r.unpolled.remove(i % r.unpolled.len());
                r.seq += 1;
                live.seq = r.seq;
                r.live.push(live);
            }
            Op::CancelUnpolled(i) if !r.unpolled.is_empty() => {
                let i = i % r.unpolled.len();
                drop(r.unpolled.remove(i));
            }
            Op::ForgetUnpolled(i) if !r.unpolled.is_empty() => {
                // Never polled: it must take nothing (not tainted).
                let i = i % r.unpolled.len();
                let live = r.unpolled.remove(i);
                r.parked.push(live);
            }
            Op::FirstPoll(_) | Op::CancelUnpolled(_) | Op::ForgetUnpolled(_) => {}
            Op::Cancel(i) if !r.live.is_empty() => {
                let i = i % r.live.len();
                drop(r.live.remove(i));
            }
            Op::Forget(i) if !r.live.is_empty() => {
                let i = i % r.live.len();
                let live = r.live.remove(i);
                r.tainted.insert(live.key);
                r.parked.push(live);
            }
            Op::Evict => {
                r.limiter.evict_idle();
            }
            Op::Cancel(_) | Op::Forget(_) => {}
        }
        r.poll_all()?;
        r.check_bound()?;
    }
    // Liveness: everything still waiting is served (the forgotten ones'
    // turns pass, wasted), the acquires not polled yet too.
    for mut live in std::mem::take(&mut r.unpolled) {
        r.seq += 1;
        live.seq = r.seq;
        r.live.push(live);
    }
    r.poll_all()?;
    for _ in 0..64 {
        if r.live.is_empty() {
            break;
        }
        r.clock.advance(Duration::from_nanos(period));
        r.poll_all()?;
    }
    prop_assert!(r.live.is_empty(), "{} acquires never served", r.live.len());
    check_grants(quota, &r.grants)?;
    drop(r.parked);
    Ok(())
}

fn quota() -> impl Strategy<Value = Quota> {
    let period = (4..64u64).prop_map(|p| Duration::from_nanos(p * MS));
    prop_oneof![
        (1..5usize, period.clone()).prop_map(|(max, period)| Quota::window(max, period).unwrap()),
        (1..5usize, period, 1..4usize)
            .prop_map(|(max, period, burst)| Quota::gcra(max, period, burst).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 600,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn keyed_grants_never_exceed_the_quota(
        quota in quota(),
        max_keys in prop_oneof![Just(None), (1..5usize).prop_map(Some)],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(quota, max_keys, ops)?;
    }
}
