//! A keyed limiter's per-key state in its compact form: what a key that is
//! only checked needs of its algorithm, and nothing else — GCRA's one
//! arrival time, or the strict window's grants (their one instant inline,
//! [`Stamps`] of four bytes a grant for small quotas, a full [`Log`]
//! beyond). A key that must wait is *promoted*: its state moves
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
    /// The grid of a strict window's [`Stamps`].
    pub(super) shift: u8,
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
            shift: grid_shift(period),
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
    /// The state, for a promoted limiter, with no grant after `now` (the
    /// latest time the keyed limiter used). Compact keys only.
    fn into_seed(self, now: u64) -> Seed;
    /// The state a demoted limiter gave back.
    fn from_seed(seed: Seed, p: &Params) -> Self;
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

    fn into_seed(self, _: u64) -> Seed {
        Seed::Gcra(self.tat())
    }

    fn from_seed(seed: Seed, _: &Params) -> Self {
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

/// Quotas of at most this many calls per period keep a strict-window key's
/// grants (past the first instant's) as [`Stamps`]: four bytes a grant.
/// Larger quotas keep the single limiter's [`Log`].
pub(super) const STAMPED_CALLS: u64 = 64;

/// The shift of the grid that stamps round grant times up to, for a
/// period: the smallest that puts the period within 2³¹ grid steps (so a
/// window's stamps fit `u32` differences). Zero — exact nanoseconds — for
/// periods up to 2³¹ ns (2.1 s); 5 (32 ns) for a minute.
fn grid_shift(period: u64) -> u8 {
    let bits = u64::BITS - period.saturating_sub(1).leading_zeros();
    bits.saturating_sub(31) as u8
}

/// A stamp ring's bookkeeping (byte-aligned, so it shares the slot's first
/// word with the enum's tag; the stamps themselves are `u32`s inline or
/// boxed).
///
/// A grant at `t` is stamped `ceil(t / 2^shift)` — at the next grid point,
/// so later than it was and never earlier: the window it is counted in
/// ends at most `2^shift - 1` ns late (stricter, never looser). A ring
/// keeps the low 32 bits of each stamp, oldest first, one per grant, and
/// the newest stamp's high bits: a window's stamps lie within 2³¹ + 1 grid
/// steps of each other, so each one's full value is the newest's less the
/// (wrapping) difference of their low bits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stamps {
    /// The newest stamp's high 32 bits.
    hi: [u8; 4],
    /// The grid the stamps are on (the quota's when they were taken).
    shift: u8,
    /// Grants held.
    len: u8,
    /// The oldest grant's position in the ring.
    head: u8,
}

impl Stamps {
    fn new(shift: u8) -> Stamps {
        Stamps {
            hi: [0; 4],
            shift,
            len: 0,
            head: 0,
        }
    }

    /// `t` on the grid, rounded up.
    #[inline]
    fn stamp_of(&self, t: u64) -> u64 {
        let mask = (1u64 << self.shift) - 1;
        (t >> self.shift) + u64::from(t & mask != 0)
    }

    /// The time a stamp stands for (at or after its grant's).
    #[inline]
    fn time(&self, stamp: u64) -> u64 {
        if stamp > u64::MAX >> self.shift {
            u64::MAX
        } else {
            stamp << self.shift
        }
    }

    #[inline]
    fn low(&self, buf: &[u32], i: usize) -> u32 {
        buf[(usize::from(self.head) + i) % buf.len()]
    }

    /// The newest stamp. Not empty.
    #[inline]
    fn newest(&self, buf: &[u32]) -> u64 {
        let low = self.low(buf, usize::from(self.len) - 1);
        u64::from(u32::from_ne_bytes(self.hi)) << 32 | u64::from(low)
    }

    /// The `i`-th oldest grant's stamp.
    #[inline]
    fn stamp(&self, buf: &[u32], i: usize) -> u64 {
        let newest = self.newest(buf);
        let low = self.low(buf, usize::from(self.len) - 1);
        newest - u64::from(low.wrapping_sub(self.low(buf, i)))
    }

    /// Forgets the grants no window containing `now` sees.
    #[inline]
    fn expire(&mut self, buf: &[u32], period: u64, now: u64) {
        while self.len > 0 && self.time(self.stamp(buf, 0)).saturating_add(period) <= now {
            self.head = ((usize::from(self.head) + 1) % buf.len()) as u8;
            self.len -= 1;
        }
    }

    /// Adds `n` grants at `now` (not before any held; room for them).
    #[inline]
    fn push(&mut self, buf: &mut [u32], now: u64, n: u64) {
        let stamp = self.stamp_of(now);
        for _ in 0..n {
            let at = (usize::from(self.head) + usize::from(self.len)) % buf.len();
            buf[at] = stamp as u32;
            self.len += 1;
        }
        self.hi = ((stamp >> 32) as u32).to_ne_bytes();
    }

    /// The low bits, oldest first, into `out`; how many.
    fn linear(&self, buf: &[u32], out: &mut [u32; STAMPED_CALLS as usize]) -> usize {
        let len = usize::from(self.len);
        for (i, slot) in out.iter_mut().enumerate().take(len) {
            *slot = self.low(buf, i);
        }
        len
    }

    /// The grants as a log, each at its stamp's time but none after `now`
    /// (`now` is not before any grant, so still at or after each one's).
    fn log(&self, buf: &[u32], now: u64) -> Log {
        let mut log = Log::default();
        for i in 0..usize::from(self.len) {
            log.record(self.time(self.stamp(buf, i)).min(now), 1, 0);
        }
        log
    }
}

/// Runs `$body` with `$stamps` and `$buf` (a `[u32]`) bound to a stamp
/// ring's parts, or `$other` for the other forms.
macro_rules! rings {
    ($slot:expr, |$stamps:ident, $buf:ident| $body:expr, _ => $other:expr) => {
        match $slot {
            WinSlot::Two($stamps, $buf) => $body,
            WinSlot::R6($stamps, $buf) => $body,
            WinSlot::R10($stamps, $buf) => $body,
            WinSlot::R14($stamps, $buf) => $body,
            WinSlot::R22($stamps, $buf) => $body,
            WinSlot::R30($stamps, $buf) => $body,
            WinSlot::R46($stamps, $buf) => $body,
            WinSlot::R64($stamps, $buf) => $body,
            _ => $other,
        }
    };
}

/// The strict window's compact state: the grants of the last period.
///
/// A key checked at one instant keeps its grants' exact time inline
/// ([`One`](WinSlot::One)); with grants at several times, a quota of at
/// most [`STAMPED_CALLS`] calls keeps them as [`Stamps`] (two inline, then
/// a boxed ring sized to the allocator's size classes: 24, 40, 56, ...
/// bytes), a larger one the single limiter's [`Log`].
#[derive(Debug)]
pub(super) enum WinSlot {
    /// `count` grants at `at` (none when `count` is 0): a key checked once,
    /// or only at one instant, within a period. (A `u32` count keeps the
    /// slot at 16 bytes; more grants at one instant take the log.)
    One { at: u64, count: u32 },
    /// Up to two grants' stamps, inline.
    Two(Stamps, [u32; 2]),
    /// Promoted to the limiter with this id.
    Promoted(u64),
    /// Up to 6 grants' stamps (24 bytes).
    R6(Stamps, Box<[u32; 6]>),
    /// Up to 10 (40 bytes).
    R10(Stamps, Box<[u32; 10]>),
    /// Up to 14 (56 bytes).
    R14(Stamps, Box<[u32; 14]>),
    /// Up to 22 (88 bytes).
    R22(Stamps, Box<[u32; 22]>),
    /// Up to 30 (120 bytes).
    R30(Stamps, Box<[u32; 30]>),
    /// Up to 46 (184 bytes).
    R46(Stamps, Box<[u32; 46]>),
    /// Up to 64 (256 bytes).
    R64(Stamps, Box<[u32; 64]>),
    /// Grants at several times of a larger quota (or given back by a
    /// demoted limiter): the single limiter's log (merged the same way
    /// above 1 024 calls per period).
    Log(Box<Log>),
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
            _ => self.expire_stamps(p, now),
        }
    }

    /// [`expire`](WinSlot::expire) for a stamp ring: an empty one becomes
    /// a fresh slot, a boxed one down to one grant goes inline.
    fn expire_stamps(&mut self, p: &Params, now: u64) {
        let (len, boxed) = rings!(self, |stamps, buf| {
            stamps.expire(&buf[..], p.period, now);
            (stamps.len, buf.len() > 2)
        }, _ => return);
        if len == 0 {
            *self = WinSlot::fresh();
        } else if len == 1 && boxed {
            self.regrow(1);
        }
    }

    /// The same stamps in the smallest ring with room for `need` grants
    /// (at most [`STAMPED_CALLS`]). A stamp ring only.
    fn regrow(&mut self, need: usize) {
        fn boxed<const N: usize>(low: &[u32]) -> Box<[u32; N]> {
            let mut buf = Box::new([0; N]);
            buf[..low.len()].copy_from_slice(low);
            buf
        }
        let mut low = [0; STAMPED_CALLS as usize];
        let (stamps, len) = rings!(&*self, |stamps, buf| (*stamps, stamps.linear(&buf[..], &mut low)),
            _ => unreachable!("only a stamp ring regrows"));
        let low = &low[..len];
        let stamps = Stamps { head: 0, ..stamps };
        *self = match need.max(len) {
            0..=2 => {
                let mut buf = [0; 2];
                buf[..len].copy_from_slice(low);
                WinSlot::Two(stamps, buf)
            }
            3..=6 => WinSlot::R6(stamps, boxed(low)),
            7..=10 => WinSlot::R10(stamps, boxed(low)),
            11..=14 => WinSlot::R14(stamps, boxed(low)),
            15..=22 => WinSlot::R22(stamps, boxed(low)),
            23..=30 => WinSlot::R30(stamps, boxed(low)),
            31..=46 => WinSlot::R46(stamps, boxed(low)),
            _ => WinSlot::R64(stamps, boxed(low)),
        };
    }

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
    #[inline(never)]
    fn log_of(at: u64, count: u64, now: u64, n: u64, quantum: u64) -> WinSlot {
        let mut log = Log::default();
        if count > 0 {
            log.record(at, count, 0);
        }
        log.record(now, n, quantum);
        WinSlot::Log(Box::new(log))
    }

    /// The stamp form of `count` grants at `at`, then `n` at `now` (at
    /// most [`STAMPED_CALLS`] in all).
    #[inline(never)]
    fn stamps_of(p: &Params, at: u64, count: u64, now: u64, n: u64) -> WinSlot {
        let mut slot = WinSlot::Two(Stamps::new(p.shift), [0; 2]);
        slot.regrow((count + n) as usize);
        rings!(&mut slot, |stamps, buf| {
            stamps.push(&mut buf[..], at, count);
            stamps.push(&mut buf[..], now, n);
        }, _ => unreachable!());
        slot
    }

    /// The stamp form of `log`'s grants, if the quota keeps stamps and
    /// they fit. The grants a period or more before the newest are left
    /// out: no window from the newest on sees them (and the others lie
    /// within a period of each other, as stamps must).
    fn stamps_from(log: &Log, p: &Params) -> Option<WinSlot> {
        let newest = log.newest()?;
        let live = || {
            log.iter()
                .filter(|&(at, _)| at.saturating_add(p.period) > newest)
        };
        let total: u64 = live().map(|(_, count)| count).sum();
        if p.max_calls > STAMPED_CALLS || total > STAMPED_CALLS {
            return None;
        }
        let mut slot = WinSlot::Two(Stamps::new(p.shift), [0; 2]);
        slot.regrow(total as usize);
        rings!(&mut slot, |stamps, buf| {
            for (at, count) in live() {
                stamps.push(&mut buf[..], at, count);
            }
        }, _ => unreachable!());
        Some(slot)
    }

    /// [`check`](Slot::check) of a stamp ring.
    #[inline(never)]
    fn check_stamps(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64> {
        self.expire_stamps(p, now);
        if let WinSlot::One { .. } = self {
            return self.check(p, now, n);
        }
        let (shift, len) = rings!(&*self, |stamps, _buf| (stamps.shift, u64::from(stamps.len)),
            _ => unreachable!());
        if shift != p.shift || p.max_calls > STAMPED_CALLS {
            // The quota changed since the stamps were taken: the log
            // takes over.
            let log = rings!(&*self, |stamps, buf| stamps.log(&buf[..], now), _ => unreachable!());
            *self = WinSlot::Log(Box::new(log));
            return self.check(p, now, n);
        }
        match (len + n).checked_sub(p.max_calls) {
            Some(over @ 1..) => {
                // The window is full: the `over`-th oldest grant must
                // leave it first.
                if over > len {
                    return Err(u64::MAX);
                }
                let i = (over - 1) as usize;
                Err(rings!(&*self, |stamps, buf| {
                    stamps.time(stamps.stamp(&buf[..], i)).saturating_add(p.period).max(now)
                }, _ => unreachable!()))
            }
            _ => {
                let need = (len + n) as usize;
                let room = rings!(&*self, |_stamps, buf| buf.len(), _ => unreachable!());
                if need > room {
                    self.regrow(need);
                }
                rings!(self, |stamps, buf| stamps.push(&mut buf[..], now, n), _ => unreachable!());
                Ok(())
            }
        }
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

    #[inline]
    fn check(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64> {
        match self {
            WinSlot::One { at, count } => {
                // Expired as `expire` does, inline (a new key's check).
                let held = match *count > 0 && at.saturating_add(p.period) <= now {
                    true => 0,
                    false => u64::from(*count),
                };
                let Some(total) = held.checked_add(n).filter(|&t| t <= p.max_calls) else {
                    // The window is full: the grants at `at` must leave it
                    // (`n` fits the quota, so then it has room).
                    return Err(at.saturating_add(p.period).max(now));
                };
                match u32::try_from(total) {
                    Ok(total) if held == 0 || *at == now => {
                        (*at, *count) = (now, total);
                    }
                    _ => {
                        let at = *at;
                        *self = match p.max_calls <= STAMPED_CALLS {
                            true => WinSlot::stamps_of(p, at, held, now, n),
                            false => WinSlot::log_of(at, held, now, n, p.quantum),
                        };
                    }
                }
                Ok(())
            }
            WinSlot::Log(log) => {
                log.expire(now, p.period);
                if log.entries() <= 1 {
                    if let Some(one) = WinSlot::one_of(log) {
                        *self = one;
                        return self.check(p, now, n);
                    }
                }
                let at = log.earliest(now, n, p.max_calls, p.period);
                if at > now {
                    return Err(at);
                }
                log.record(now, n, p.quantum);
                Ok(())
            }
            WinSlot::Promoted(_) => unreachable!("a promoted key is checked by its limiter"),
            _ => self.check_stamps(p, now, n),
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
            _ => rings!(self, |stamps, buf| match stamps.len {
                0 => 0,
                _ => stamps.time(stamps.newest(&buf[..])).saturating_add(p.period),
            }, _ => unreachable!()),
        }
    }

    fn into_seed(self, now: u64) -> Seed {
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
            _ => rings!(&self, |stamps, buf| stamps.log(&buf[..], now), _ => unreachable!()),
        })
    }

    fn from_seed(seed: Seed, p: &Params) -> Self {
        match seed {
            Seed::Window(log) => WinSlot::one_of(&log)
                .or_else(|| WinSlot::stamps_from(&log, p))
                .unwrap_or(WinSlot::Log(Box::new(log))),
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

    /// The window slot against the single limiter's log of the same
    /// grants, on random checks: the same answers, except that a stamp's
    /// time may be rounded up by less than one grid step (`tolerance + 1`
    /// ns): a refusal then comes at most that much later, and never earlier
    /// than the log's. The slot sometimes goes through a seed and back (a
    /// promotion and a demotion), and sometimes has its quota's period
    /// changed (a `set_quota`: another grid). Never more than the quota in
    /// any window, checked on the grant times themselves (since the last
    /// quota change).
    ///
    /// Returns how many checks left the slot as stamps, and as a log.
    fn compare_with_the_log(
        quotas: [Params; 2],
        steps: [u64; 2],
        start: u64,
        rounds: usize,
    ) -> (usize, usize) {
        let mut slot = WinSlot::fresh();
        let mut log = Log::default();
        let mut granted = std::collections::VecDeque::new();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut now = start;
        let mut p = quotas[0];
        let (mut stamped, mut boxed, mut logged) = (0, 0, 0);
        // (Stamps taken under either quota may be in the slot.)
        let tolerance = quotas
            .iter()
            .filter(|q| q.max_calls <= STAMPED_CALLS)
            .map(|q| (1 << q.shift) - 1)
            .max()
            .unwrap_or(0);
        for _ in 0..rounds {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += seed % steps[(seed >> 60) as usize % 2];
            if (seed >> 32) % 128 == 0 {
                p = quotas[(seed >> 50) as usize % 2];
                // (The quota is the new one's from here on, as for the
                // single limiter: the windows before do not count.)
                granted.clear();
            }
            let m = p.max_calls;
            let n = 1 + (seed >> 20) % 3.min(m);
            log.expire(now, p.period);
            let expected = log.earliest(now, n, p.max_calls, p.period);
            match slot.check(&p, now, n) {
                Ok(()) => {
                    assert!(expected <= now, "{m} at {now}: the log has no room");
                    log.record(now, n, p.quantum);
                    granted.extend(std::iter::repeat_n(now, n as usize));
                    while granted
                        .front()
                        .is_some_and(|&t| t.saturating_add(p.period) <= now)
                    {
                        granted.pop_front();
                    }
                    assert!(granted.len() as u64 <= m, "{m} at {now}: over the quota");
                }
                Err(at) => {
                    assert!(at > now, "{m} at {now}: refused, retry at {at}");
                    assert!(at >= expected, "{m} at {now}: {at} before {expected}");
                    if expected != u64::MAX {
                        let late = at - expected.max(now);
                        assert!(late <= tolerance, "{m} at {now}: {at} is {late} late");
                    }
                }
            }
            match slot {
                WinSlot::Two(..) => stamped += 1,
                WinSlot::Log(_) => logged += 1,
                WinSlot::One { .. } | WinSlot::Promoted(_) => {}
                _ => boxed += 1,
            }
            if (seed >> 40) % 16 == 0 {
                let seed = slot.into_seed(now);
                // A promoted limiter's log: in order, nothing after `now`
                // (the limiter records its next grants after them).
                if let Seed::Window(log) = &seed {
                    assert_eq!(log.total(), log.iter().map(|(_, count)| count).sum::<u64>());
                    assert!(log.iter().all(|(at, _)| at <= now), "{m} at {now}");
                }
                slot = WinSlot::from_seed(seed, &p);
            }
            let idle = slot.idle_from(&p, now);
            match log.newest().filter(|_| log.total() > 0) {
                Some(newest) => {
                    let exact = newest.saturating_add(p.period);
                    assert!(
                        (exact..=exact.saturating_add(tolerance)).contains(&idle),
                        "{m} at {now}: idle at {idle}, not {exact}"
                    );
                }
                None => assert!(idle <= now + tolerance, "{m} at {now}: idle at {idle}"),
            }
        }
        (stamped + boxed, logged)
    }

    #[test]
    fn the_window_slot_is_the_log_in_few_bytes() {
        // Exact (periods up to 2^31 ns): the log's very answers.
        for (max_calls, step) in [(3, 40), (10, 12), (32, 8), (64, 3), (65, 3), (2_000, 2)] {
            let p = window(max_calls, 100);
            let (stamped, logged) = compare_with_the_log([p, p], [step, step], 0, 20_000);
            // Up to 64 calls, stamps (and a log only for the grants of a
            // demoted limiter that do not fit): beyond, the log.
            assert!(stamped > 10_000 || max_calls > 64, "{max_calls}: {stamped}");
            assert!(logged > 10_000 || max_calls <= 64, "{max_calls}: {logged}");
            // A shorter period: more expire at once.
            compare_with_the_log([p, window(max_calls, 37)], [step, step], 0, 20_000);
        }
    }

    #[test]
    fn stamps_round_long_periods_up_by_less_than_a_grid_step() {
        let minute = 60_000_000_000;
        for max_calls in [3, 10, 64, 65] {
            // A minute (32 ns steps), and 2^31 ns (exact) against 2^31 + 1
            // (2 ns steps): a period change moves the stamps to the log.
            let p = window(max_calls, minute);
            assert_eq!(p.shift, 5);
            let (stamped, _) = compare_with_the_log([p, p], [100, minute / 4], 0, 20_000);
            assert!(stamped > 0 || max_calls > 64);
            let (exact, rounded) = (window(max_calls, 1 << 31), window(max_calls, (1 << 31) + 1));
            assert_eq!((exact.shift, rounded.shift), (0, 1));
            compare_with_the_log([exact, rounded], [3, 1 << 29], 7, 20_000);
            // The longest period (2^33 ns steps), near the end of time.
            let p = window(max_calls, u64::MAX);
            assert_eq!(p.shift, 33);
            compare_with_the_log([p, p], [1 << 32, 1 << 40], u64::MAX / 2, 10_000);
            compare_with_the_log([p, p], [1, 1 << 20], u64::MAX - (1 << 34), 10_000);
        }
    }

    #[test]
    fn stamps_grow_and_shrink_through_the_rings() {
        let p = window(STAMPED_CALLS as usize, 1_000);
        let mut slot = WinSlot::fresh();
        let mut sizes = Vec::new();
        for t in 0..STAMPED_CALLS {
            slot.check(&p, t, 1).unwrap();
            let size = rings!(&slot, |_stamps, buf| buf.len(), _ => 1);
            if sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        assert_eq!(sizes, [1, 2, 6, 10, 14, 22, 30, 46, 64]);
        assert_eq!(slot.check(&p, 100, 1), Err(1_000));
        assert_eq!(slot.check(&p, 1_000, 1), Ok(()));
        assert_eq!(slot.check(&p, 1_000, 1), Err(1_001));
        assert!(matches!(slot, WinSlot::R64(..)));
        // Down to one grant: inline again; then none: fresh.
        assert_eq!(slot.idle_from(&p, 1_063), 2_000);
        assert!(matches!(slot, WinSlot::Two(..)));
        assert_eq!(slot.idle_from(&p, 2_000), 0);
        assert!(matches!(slot, WinSlot::One { count: 0, .. }));
    }

    #[test]
    fn a_demoted_log_becomes_stamps_without_its_expired_grants() {
        // A promoted limiter's log may still hold grants long expired (it
        // forgets them at its next check); stamps only keep a period's.
        let p = window(2, 100);
        let mut log = Log::default();
        // (Its low 32 bits are 50 ns before the newest's.)
        log.record(10_000_000_000_000 - (1_000 << 32) - 50, 1, 0);
        log.record(10_000_000_000_000, 1, 0);
        let mut slot = WinSlot::from_seed(Seed::Window(log), &p);
        assert!(matches!(slot, WinSlot::Two(..)));
        assert_eq!(slot.check(&p, 10_000_000_000_001, 1), Ok(()));
        assert_eq!(
            slot.check(&p, 10_000_000_000_002, 1),
            Err(10_000_000_000_100)
        );
        // Too many for stamps: the log stays.
        let mut log = Log::default();
        for t in 0..3 {
            log.record(t, 1, 0);
        }
        let p = window(STAMPED_CALLS as usize + 1, 100);
        assert!(matches!(
            WinSlot::from_seed(Seed::Window(log), &p),
            WinSlot::Log(_)
        ));
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
        let back = WinSlot::from_seed(slot.into_seed(50), &p);
        assert!(matches!(back, WinSlot::Log(_)));
    }

    #[test]
    fn a_window_slot_round_trips_through_a_seed() {
        let p = window(3, 100);
        let mut slot = WinSlot::fresh();
        slot.check(&p, 10, 1).unwrap();
        slot.check(&p, 20, 2).unwrap();
        let mut back = WinSlot::from_seed(slot.into_seed(20), &p);
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
