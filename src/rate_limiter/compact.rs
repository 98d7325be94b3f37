//! A keyed limiter's per-key state in its compact form: what a key that is
//! only checked needs of its algorithm, and nothing else — GCRA's one
//! arrival time, or the strict window's grants (one entry inline, a full
//! [`Log`] beyond). A key that must wait is *promoted*: its state moves
//! into a [`Shared`](super::shared::Shared) limiter (queue, driver, timer),
//! and the slot keeps only that limiter's id (the key map's entry says
//! which of the two a slot holds, in a bit of its stored hash). Times are nanoseconds since
//! the keyed limiter's epoch, which its promoted limiters share.

use super::shared::{Seed, gcra_interval, nanos};
use super::window::{self, Gcra, Log};
use super::{Mode, Quota};

/// The algorithm's parameters for a quota, as the compact states use them
/// (the same arithmetic as [`Shared`](super::shared::Shared)'s, so a key's
/// state means the same in both forms).
#[derive(Clone, Copy, Debug)]
pub(super) struct Params {
    pub(super) gcra: Gcra,
    /// The period in nanoseconds (both modes).
    pub(super) period: u64,
    pub(super) max_calls: u64,
    pub(super) quantum: u64,
}

impl Params {
    pub(super) fn of(quota: &Quota) -> Params {
        let period = nanos(quota.period);
        let max_calls = quota.max_calls as u64;
        let (interval, burst) = match quota.mode {
            Mode::Window => (1, 1),
            Mode::Gcra { burst } => (gcra_interval(quota).unwrap_or(1), burst as u64),
        };
        Params {
            gcra: Gcra {
                interval,
                burst,
                tolerance: interval.saturating_mul(burst),
            },
            period,
            max_calls,
            quantum: window::quantum(max_calls, period),
        }
    }
}

/// One key's state: compact, or the id of its promoted limiter (which of
/// the two is kept by the key map, beside the slot).
pub(super) trait Slot: Sized {
    /// A key nothing was granted to.
    fn fresh() -> Self;
    /// A key promoted to the limiter `id`.
    fn promoted(id: u64) -> Self;
    /// The promoted limiter's id. Promoted keys only.
    fn id(&self) -> u64;
    /// Takes `n` (at most the quota's maximum at once) at `now`, or says
    /// when they would be granted. Compact keys only.
    fn check(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64>;
    /// When the key becomes idle — a fresh limiter would behave the same —
    /// forgetting what no window at `now` can see (`<= now`: idle now).
    /// Compact keys only.
    fn idle_from(&mut self, p: &Params, now: u64) -> u64;
    /// When the key becomes idle, at the latest, without forgetting
    /// anything (a key just granted). Compact keys only.
    fn idle_hint(&self, p: &Params) -> u64;
    /// The state, for a promoted limiter. Compact keys only.
    fn into_seed(self) -> Seed;
    /// The state a demoted limiter gave back.
    fn from_seed(seed: Seed) -> Self;
    /// A GCRA quota change from `old` to `new` nanoseconds per call: the
    /// calls still owed are owed at the new rate (as the single limiter
    /// does). Compact keys only.
    fn rescale(&mut self, now: u64, old: u64, new: u64);
}

/// GCRA's compact state: the theoretical arrival time, all 64 bits of it
/// (`u64::MAX`: "never again", as for the single limiter), or the promoted
/// limiter's id. Eight bytes a key, as governor's.
#[derive(Clone, Copy, Debug)]
pub(super) struct GcraSlot(u64);

impl GcraSlot {
    #[inline]
    fn tat(self) -> u64 {
        self.0
    }

    #[inline]
    fn set_tat(&mut self, tat: u64) {
        self.0 = tat;
    }
}

impl Slot for GcraSlot {
    fn fresh() -> Self {
        GcraSlot(0)
    }

    fn promoted(id: u64) -> Self {
        GcraSlot(id)
    }

    #[inline]
    fn id(&self) -> u64 {
        self.0
    }

    #[inline]
    fn check(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64> {
        let tat = p.gcra.check(self.tat(), now, n)?;
        self.set_tat(tat);
        Ok(())
    }

    fn idle_from(&mut self, _: &Params, _: u64) -> u64 {
        self.tat()
    }

    #[inline]
    fn idle_hint(&self, _: &Params) -> u64 {
        self.tat()
    }

    fn into_seed(self) -> Seed {
        Seed::Gcra(self.tat())
    }

    fn from_seed(seed: Seed) -> Self {
        let mut slot = GcraSlot::fresh();
        if let Seed::Gcra(tat) = seed {
            slot.set_tat(tat);
        }
        slot
    }

    fn rescale(&mut self, now: u64, old: u64, new: u64) {
        // As a lone limiter's `set_quota` does (a promoted key's limiter
        // does it there): "never again" (`u64::MAX`) too is time owed at the
        // old rate, so a faster quota lets the key through again.
        if let Some(owed) = self.tat().checked_sub(now) {
            let owed = (u128::from(owed) * u128::from(new)).div_ceil(u128::from(old.max(1)));
            self.set_tat(u64::try_from(u128::from(now) + owed).unwrap_or(u64::MAX));
        }
    }
}

/// The strict window's compact state: the grants of the last period.
#[derive(Debug)]
pub(super) enum WinSlot {
    /// `count` grants at `at` (none when `count` is 0): a key checked once,
    /// or only at one instant, within a period. (A `u32` count keeps the
    /// slot at 16 bytes; more grants at one instant take the log.)
    One { at: u64, count: u32 },
    /// More than one grant time: the single limiter's log (merged the same
    /// way above 1 024 calls per period).
    Log(Box<Log>),
    /// Promoted to the limiter with this id.
    Promoted(u64),
}

impl WinSlot {
    fn expire(&mut self, p: &Params, now: u64) {
        match self {
            WinSlot::One { at, count } => {
                if *count > 0 && at.saturating_add(p.period) <= now {
                    *count = 0;
                }
            }
            WinSlot::Log(log) => {
                log.expire(now, p.period);
                if let Some(one) = WinSlot::one_of(log) {
                    *self = one;
                }
            }
            WinSlot::Promoted(_) => {}
        }
    }
}

impl WinSlot {
    /// The inline form of `log`, if it holds at most one entry of at most
    /// `u32::MAX` grants.
    fn one_of(log: &Log) -> Option<WinSlot> {
        match (log.entries(), log.only()) {
            (0, _) => Some(WinSlot::fresh()),
            (_, Some((at, count))) => Some(WinSlot::One {
                at,
                count: u32::try_from(count).ok()?,
            }),
            _ => None,
        }
    }

    /// The log form of `count` grants at `at`, then `n` at `now`.
    fn log_of(at: u64, count: u64, now: u64, n: u64, quantum: u64) -> WinSlot {
        let mut log = Log::default();
        if count > 0 {
            log.record(at, count, 0);
        }
        log.record(now, n, quantum);
        WinSlot::Log(Box::new(log))
    }
}

impl Slot for WinSlot {
    fn fresh() -> Self {
        WinSlot::One { at: 0, count: 0 }
    }

    fn promoted(id: u64) -> Self {
        WinSlot::Promoted(id)
    }

    #[inline]
    fn id(&self) -> u64 {
        match self {
            WinSlot::Promoted(id) => *id,
            _ => unreachable!("only a promoted key has a limiter"),
        }
    }

    fn check(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64> {
        self.expire(p, now);
        match self {
            WinSlot::One { at, count } => {
                let (at, count) = (*at, u64::from(*count));
                if let Some(total) = count.checked_add(n).filter(|&t| t <= p.max_calls) {
                    *self = match u32::try_from(total) {
                        Ok(total) if count == 0 || at == now => WinSlot::One {
                            at: now,
                            count: total,
                        },
                        _ => WinSlot::log_of(at, count, now, n, p.quantum),
                    };
                    return Ok(());
                }
                // The window is full: the grants at `at` must leave it
                // (`n` fits the quota, so then it has room).
                Err(at.saturating_add(p.period).max(now))
            }
            WinSlot::Log(log) => {
                let at = log.earliest(now, n, p.max_calls, p.period);
                if at > now {
                    return Err(at);
                }
                log.record(now, n, p.quantum);
                Ok(())
            }
            WinSlot::Promoted(_) => unreachable!("a promoted key is checked by its limiter"),
        }
    }

    fn idle_from(&mut self, p: &Params, now: u64) -> u64 {
        self.expire(p, now);
        self.idle_hint(p)
    }

    #[inline]
    fn idle_hint(&self, p: &Params) -> u64 {
        match self {
            WinSlot::One { count: 0, .. } => 0,
            WinSlot::One { at, .. } => at.saturating_add(p.period),
            WinSlot::Log(log) => log
                .newest()
                .map_or(0, |newest| newest.saturating_add(p.period)),
            WinSlot::Promoted(_) => u64::MAX,
        }
    }

    fn into_seed(self) -> Seed {
        Seed::Window(match self {
            WinSlot::One { at, count } => {
                let mut log = Log::default();
                if count > 0 {
                    log.record(at, u64::from(count), 0);
                }
                log
            }
            WinSlot::Log(log) => *log,
            WinSlot::Promoted(_) => unreachable!("only a compact key is promoted"),
        })
    }

    fn from_seed(seed: Seed) -> Self {
        match seed {
            Seed::Window(log) => WinSlot::one_of(&log).unwrap_or(WinSlot::Log(Box::new(log))),
            Seed::Gcra(_) => WinSlot::fresh(),
        }
    }

    fn rescale(&mut self, _: u64, _: u64, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window(max_calls: usize, period: u64) -> Params {
        Params::of(&Quota::window(max_calls, Duration::from_nanos(period)).unwrap())
    }

    #[test]
    fn the_window_slot_is_the_log_in_few_bytes() {
        // The slot sometimes goes through a seed and back (a promotion and
        // a demotion).
        for (max_calls, step) in [(3, 40), (32, 8), (2_000, 1)] {
            let p = window(max_calls, 100);
            let mut slot = WinSlot::fresh();
            let mut log = Log::default();
            let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
            let mut now = 0;
            for _ in 0..20_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                now += seed % step;
                let n = 1 + (seed >> 20) % 3;
                log.expire(now, p.period);
                let expected = log.earliest(now, n, p.max_calls, p.period);
                let got = slot.check(&p, now, n);
                if expected <= now {
                    log.record(now, n, p.quantum);
                    assert_eq!(got, Ok(()), "{max_calls} at {now}");
                } else {
                    assert_eq!(got, Err(expected), "{max_calls} at {now}");
                }
                if (seed >> 40) % 16 == 0 {
                    slot = WinSlot::from_seed(slot.into_seed());
                }
                let idle = slot.idle_from(&p, now);
                assert_eq!(idle <= now, log.total() == 0);
                if let Some(newest) = log.newest().filter(|_| log.total() > 0) {
                    assert_eq!(idle, newest + p.period, "{max_calls} at {now}");
                }
            }
        }
    }

    #[test]
    fn slots_are_small() {
        // A key's table entry is its hash, the key and the slot.
        assert_eq!(std::mem::size_of::<GcraSlot>(), 8);
        assert_eq!(std::mem::size_of::<WinSlot>(), 16);
    }

    #[test]
    fn many_grants_at_one_instant_take_the_log() {
        let p = window(usize::MAX, 100);
        let mut slot = WinSlot::fresh();
        slot.check(&p, 5, u64::from(u32::MAX)).unwrap();
        assert!(matches!(slot, WinSlot::One { .. }));
        slot.check(&p, 5, 2).unwrap();
        assert!(matches!(slot, WinSlot::Log(_)));
        assert_eq!(slot.idle_from(&p, 50), 105);
        let back = WinSlot::from_seed(slot.into_seed());
        assert!(matches!(back, WinSlot::Log(_)));
    }

    #[test]
    fn a_window_slot_round_trips_through_a_seed() {
        let p = window(3, 100);
        let mut slot = WinSlot::fresh();
        slot.check(&p, 10, 1).unwrap();
        slot.check(&p, 20, 2).unwrap();
        let mut back = WinSlot::from_seed(slot.into_seed());
        assert_eq!(back.check(&p, 50, 1), Err(110));
        assert_eq!(back.check(&p, 110, 1), Ok(()));
        assert_eq!(back.idle_from(&p, 110), 210);
    }

    #[test]
    fn the_gcra_slot_keeps_every_arrival_time() {
        let quota = Quota::gcra(10, Duration::from_nanos(100), 2).unwrap();
        let p = Params::of(&quota);
        let mut slot = GcraSlot::fresh();
        assert_eq!(slot.check(&p, 1_000, 2), Ok(()));
        assert_eq!(slot.check(&p, 1_000, 1), Err(1_010));
        for tat in [1 << 63, (1 << 63) + 1, u64::MAX - 1, u64::MAX] {
            slot.set_tat(tat);
            assert_eq!(slot.tat(), tat);
        }
        // An interval past 2^63 ns (292 years) is "then", not "never".
        let long = Quota::gcra(1, Duration::from_secs(300 * 365 * 86_400), 1).unwrap();
        let p = Params::of(&long);
        let mut slot = GcraSlot::fresh();
        assert_eq!(slot.check(&p, 5, 1), Ok(()));
        assert_eq!(slot.tat(), 5 + p.gcra.interval);
        // (The retry time saturates as in the single limiter: `tat + cost`
        // passes `u64::MAX`.)
        assert!(slot.check(&p, 6, 1).is_err());
        assert!(slot.check(&p, 4 + p.gcra.interval, 1).is_err());
        assert_eq!(slot.check(&p, 5 + p.gcra.interval, 1), Ok(()));
        assert_eq!(GcraSlot::promoted(7).id(), 7);
        let mut owed = GcraSlot::fresh();
        owed.set_tat(1_100);
        owed.rescale(1_000, 10, 20);
        assert_eq!(owed.tat(), 1_200);
    }
}
