//! A keyed limiter's per-key state in its compact form: what a key that is
//! only checked needs of its algorithm, and nothing else — GCRA's one
//! arrival time, or the strict window's grants (their one instant and
//! count inline, or boxed when they do not fit; [`Stamps`] of four bytes a
//! grant in a boxed [`Ring`] for small quotas, a full [`Log`] beyond),
//! eight bytes a key in the table either way ([`GcraSlot`], [`WinCell`]).
//! A key that must wait is *promoted*: its state moves into a
//! [`Shared`](super::shared::Shared) limiter (queue, driver, timer), and
//! the slot keeps only that limiter's id (the key map's entry says which
//! of the two a slot holds, in a bit of its stored hash). Times are
//! nanoseconds since the keyed limiter's epoch, which its promoted
//! limiters share.

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

/// A boxed stamp ring: its bookkeeping and room for `N` grants, in one
/// allocation sized to the allocator's classes (24, 40, 72, 136, 264
/// bytes). Aligned to eight bytes so a [`WinCell`] can keep a tag in the
/// low bits of its address.
#[derive(Debug)]
#[repr(C, align(8))]
pub(super) struct Ring<const N: usize> {
    stamps: Stamps,
    buf: [u32; N],
}

impl<const N: usize> Ring<N> {
    fn boxed(stamps: Stamps, low: &[u32]) -> Box<Ring<N>> {
        let mut ring = Box::new(Ring {
            stamps,
            buf: [0; N],
        });
        ring.buf[..low.len()].copy_from_slice(low);
        ring
    }
}

/// Runs `$body` with `$stamps` and `$buf` (a `[u32; N]`) bound to a stamp
/// ring's parts (through `mut` or `ref` references to a [`WinSlot`]), or
/// `$other` for the other forms.
macro_rules! rings {
    (mut $slot:expr, |$stamps:ident, $buf:ident| $body:expr, _ => $other:expr) => {
        rings!(@ $slot, [&mut], |$stamps, $buf| $body, _ => $other)
    };
    (ref $slot:expr, |$stamps:ident, $buf:ident| $body:expr, _ => $other:expr) => {
        rings!(@ $slot, [&], |$stamps, $buf| $body, _ => $other)
    };
    (@ $slot:expr, [$($r:tt)*], |$stamps:ident, $buf:ident| $body:expr, _ => $other:expr) => {
        match $slot {
            WinSlot::R4(ring) => {
                let Ring { stamps: $stamps, buf: $buf } = $($r)* **ring;
                $body
            }
            WinSlot::R8(ring) => {
                let Ring { stamps: $stamps, buf: $buf } = $($r)* **ring;
                $body
            }
            WinSlot::R16(ring) => {
                let Ring { stamps: $stamps, buf: $buf } = $($r)* **ring;
                $body
            }
            WinSlot::R32(ring) => {
                let Ring { stamps: $stamps, buf: $buf } = $($r)* **ring;
                $body
            }
            WinSlot::R64(ring) => {
                let Ring { stamps: $stamps, buf: $buf } = $($r)* **ring;
                $body
            }
            _ => $other,
        }
    };
}

/// The most grants the inline [`WinCell`] keeps at one instant.
const INLINE_COUNT: u64 = (1 << 5) - 1;

/// The latest instant the inline [`WinCell`] keeps (2⁵⁶ - 1 ns: 2.28
/// years after the keyed limiter's first use).
const INLINE_AT: u64 = u64::MAX >> 8;

/// Whether `count` grants at `at` fit the inline [`WinCell`].
#[inline]
fn fits_inline(at: u64, count: u64) -> bool {
    count <= INLINE_COUNT && at <= INLINE_AT
}

/// The strict window's state for one key, worked on: the grants of the
/// last period. A key keeps it as a [`WinCell`] (eight bytes).
///
/// A key checked at one instant keeps its grants' exact time and count
/// ([`One`](WinSlot::One), inline in the cell while they fit: at most
/// [`INLINE_COUNT`] grants, within [`INLINE_AT`] ns of the epoch; in a
/// 16-byte box beyond); with
/// grants at several times, a quota of at most [`STAMPED_CALLS`] calls
/// keeps them as [`Stamps`] in a boxed [`Ring`] of 4, 8, 16, 32 or 64, a
/// larger one the single limiter's [`Log`].
#[derive(Debug)]
pub(super) enum WinSlot {
    /// `count` grants at `at` (none when `count` is 0): a key checked once,
    /// or only at one instant, within a period.
    One { at: u64, count: u32 },
    /// Promoted to the limiter with this id.
    Promoted(u64),
    /// Up to 4 grants' stamps (24 bytes).
    R4(Box<Ring<4>>),
    /// Up to 8 (40 bytes).
    R8(Box<Ring<8>>),
    /// Up to 16 (72 bytes).
    R16(Box<Ring<16>>),
    /// Up to 32 (136 bytes).
    R32(Box<Ring<32>>),
    /// Up to 64 (264 bytes).
    R64(Box<Ring<64>>),
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
    /// a fresh slot, one a quarter full or less moves to a smaller ring.
    fn expire_stamps(&mut self, p: &Params, now: u64) {
        let (len, room) = rings!(mut self, |stamps, buf| {
            stamps.expire(&buf[..], p.period, now);
            (usize::from(stamps.len), buf.len())
        }, _ => return);
        if len == 0 {
            *self = WinSlot::fresh();
        } else if room > 4 && len * 4 <= room {
            self.regrow(len);
        }
    }

    /// An empty ring with room for `need` grants (at most
    /// [`STAMPED_CALLS`]), stamping on `stamps`' grid, holding `low` (the
    /// low bits, oldest first).
    fn ring(stamps: Stamps, need: usize, low: &[u32]) -> WinSlot {
        let stamps = Stamps {
            head: 0,
            len: low.len() as u8,
            ..stamps
        };
        match need.max(low.len()) {
            0..=4 => WinSlot::R4(Ring::boxed(stamps, low)),
            5..=8 => WinSlot::R8(Ring::boxed(stamps, low)),
            9..=16 => WinSlot::R16(Ring::boxed(stamps, low)),
            17..=32 => WinSlot::R32(Ring::boxed(stamps, low)),
            _ => WinSlot::R64(Ring::boxed(stamps, low)),
        }
    }

    /// The same stamps in the smallest ring with room for `need` grants
    /// (at most [`STAMPED_CALLS`]). A stamp ring only.
    fn regrow(&mut self, need: usize) {
        let mut low = [0; STAMPED_CALLS as usize];
        let (stamps, len) = rings!(ref &*self, |stamps, buf| (*stamps, stamps.linear(&buf[..], &mut low)),
            _ => unreachable!("only a stamp ring regrows"));
        *self = WinSlot::ring(stamps, need, &low[..len]);
    }

    /// The one-instant form of `log`: fresh if it is empty, `One` if it
    /// holds one entry of at most `u32::MAX` grants.
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
        let mut slot = WinSlot::ring(Stamps::new(p.shift), (count + n) as usize, &[]);
        rings!(mut &mut slot, |stamps, buf| {
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
        let mut slot = WinSlot::ring(Stamps::new(p.shift), total as usize, &[]);
        rings!(mut &mut slot, |stamps, buf| {
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
        let (shift, len) = rings!(ref &*self, |stamps, _buf| (stamps.shift, u64::from(stamps.len)),
            _ => unreachable!());
        if shift != p.shift || p.max_calls > STAMPED_CALLS {
            // The quota changed since the stamps were taken: the log
            // takes over.
            let log =
                rings!(ref &*self, |stamps, buf| stamps.log(&buf[..], now), _ => unreachable!());
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
                Err(rings!(ref &*self, |stamps, buf| {
                    stamps.time(stamps.stamp(&buf[..], i)).saturating_add(p.period).max(now)
                }, _ => unreachable!()))
            }
            _ => {
                let need = (len + n) as usize;
                let room = rings!(ref &*self, |_stamps, buf| buf.len(), _ => unreachable!());
                if need > room {
                    self.regrow(need);
                }
                rings!(mut self, |stamps, buf| stamps.push(&mut buf[..], now, n), _ => unreachable!());
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
                // A smaller form when the grants allow it: one instant
                // (none left, or all at `now`), or stamps for a small
                // quota (a log that took over when the grid changed). A
                // larger quota's log of an older instant stays: back at
                // one instant, the check would box a log again.
                let smaller = match log.only() {
                    _ if log.entries() == 0 => Some(WinSlot::fresh()),
                    Some((at, _)) if at == now => WinSlot::one_of(log),
                    _ if p.max_calls <= STAMPED_CALLS => WinSlot::stamps_from(log, p),
                    _ => None,
                };
                if let Some(smaller) = smaller {
                    *self = smaller;
                    return self.check(p, now, n);
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
            _ => rings!(ref self, |stamps, buf| match stamps.len {
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
            _ => rings!(ref &self, |stamps, buf| stamps.log(&buf[..], now), _ => unreachable!()),
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

/// A [`WinSlot`] in eight bytes, as a key keeps it in the table (so a
/// window key costs what a GCRA key does while its grants are at one
/// instant). The low three bits say which form it holds:
///
/// * [`ONE`](WinCell::ONE): `One { at, count }` inline: `at` in the top 56
///   bits, `count` (1 to 31) in the next five; with a count of 0, a fresh
///   slot (the word 0) or `Promoted(id)` (`id + 1` in the top 56 bits);
/// * [`WIDE`](WinCell::WIDE): the address of a boxed [`Wide`], a `One`
///   that does not fit inline;
/// * the others: the address of the boxed [`Log`] or [`Ring`] the cell
///   owns, and which one it is.
///
/// Every box is aligned to eight bytes, so its address leaves the tag's
/// bits clear. The cell owns what its address points to: it frees it when
/// dropped.
pub(super) struct WinCell(u64);

/// A `One` that does not fit a [`WinCell`] inline (more than
/// [`INLINE_COUNT`] grants at one instant, or an instant after
/// [`INLINE_AT`]): 16 bytes, boxed.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub(super) struct Wide {
    at: u64,
    count: u32,
}

/// A `Box`'s address as a cell's word (its low three bits clear), exposed
/// so that [`WinCell::decode`] may make a pointer of it again.
#[inline]
fn address_of<T>(boxed: Box<T>, tag: u64) -> u64 {
    const { assert!(std::mem::align_of::<T>() >= 8) };
    Box::into_raw(boxed).expose_provenance() as u64 | tag
}

#[allow(unsafe_code)]
impl WinCell {
    const TAG: u64 = 0b111;
    const ONE: u64 = 0;
    const WIDE: u64 = 1;
    const LOG: u64 = 2;
    const R4: u64 = 3;
    const R8: u64 = 4;
    const R16: u64 = 5;
    const R32: u64 = 6;
    const R64: u64 = 7;

    /// `slot` in eight bytes.
    #[inline]
    fn encode(slot: WinSlot) -> WinCell {
        WinCell(match slot {
            WinSlot::One { at, count } if fits_inline(at, u64::from(count)) => {
                Self::one(at, count.into())
            }
            WinSlot::One { at, count } => address_of(Box::new(Wide { at, count }), Self::WIDE),
            WinSlot::Promoted(id) => {
                assert!(id < INLINE_AT, "promoted limiters' ids stay under 2^56 - 1");
                (id + 1) << 8 | Self::ONE
            }
            WinSlot::Log(log) => address_of(log, Self::LOG),
            WinSlot::R4(ring) => address_of(ring, Self::R4),
            WinSlot::R8(ring) => address_of(ring, Self::R8),
            WinSlot::R16(ring) => address_of(ring, Self::R16),
            WinSlot::R32(ring) => address_of(ring, Self::R32),
            WinSlot::R64(ring) => address_of(ring, Self::R64),
        })
    }

    /// The pointer a word made by [`encode`](WinCell::encode) keeps the
    /// address of (the tag's bits cleared).
    #[inline]
    fn pointer<T>(word: u64) -> *mut T {
        std::ptr::with_exposed_provenance_mut::<T>((word & !WinCell::TAG) as usize)
    }

    /// The slot a word made by [`encode`](WinCell::encode) holds. A
    /// [`WIDE`](WinCell::WIDE) word's box is read, not taken: it stays the
    /// word's.
    ///
    /// # Safety
    ///
    /// `word` is a cell's, its box (if any) is live, and a [`Log`] or
    /// [`Ring`] box is owned by nobody else while the slot returned lives:
    /// the caller took the word out of its cell, or never drops, moves out
    /// of or mutates the slot (and lets it go before the cell changes).
    #[inline]
    unsafe fn decode(word: u64) -> WinSlot {
        /// The box at the word's address.
        ///
        /// # Safety
        ///
        /// As for `decode`, and the word's tag says the box is a `T`.
        #[inline]
        unsafe fn boxed<T>(word: u64) -> Box<T> {
            // SAFETY: the address is that of a `Box<T>` turned into a raw
            // pointer by `address_of` (which exposed its provenance), whose
            // only owner is the word (the caller's contract).
            unsafe { Box::from_raw(WinCell::pointer(word)) }
        }
        match word & Self::TAG {
            Self::ONE => match (word >> 3 & INLINE_COUNT, word >> 8) {
                (0, 0) => WinSlot::fresh(),
                (0, id) => WinSlot::Promoted(id - 1),
                (count, at) => WinSlot::One {
                    at,
                    count: count as u32,
                },
            },
            Self::WIDE => {
                // SAFETY: a live `Wide` (the tag `encode` put beside its
                // address; the caller's contract), copied out.
                let Wide { at, count } = unsafe { *Self::pointer::<Wide>(word) };
                WinSlot::One { at, count }
            }
            tag => {
                // SAFETY: for every `boxed` here, the tag is the one
                // `encode` put beside that type's address; ownership is the
                // caller's contract.
                unsafe {
                    match tag {
                        Self::LOG => WinSlot::Log(boxed(word)),
                        Self::R4 => WinSlot::R4(boxed(word)),
                        Self::R8 => WinSlot::R8(boxed(word)),
                        Self::R16 => WinSlot::R16(boxed(word)),
                        Self::R32 => WinSlot::R32(boxed(word)),
                        _ => WinSlot::R64(boxed(word)),
                    }
                }
            }
        }
    }

    /// The inline form's word for `count` grants at `at` (which fit).
    #[inline]
    fn one(at: u64, count: u64) -> u64 {
        match count {
            0 => Self::ONE,
            _ => at << 8 | count << 3 | Self::ONE,
        }
    }

    /// The inline form's instant and count, if the cell holds it (a
    /// fresh cell: `(0, 0)`; a promoted one, which also has a count of 0,
    /// is not inline).
    #[inline]
    fn inline(&self) -> Option<(u64, u64)> {
        let (at, count) = (self.0 >> 8, self.0 >> 3 & INLINE_COUNT);
        (self.0 & Self::TAG == Self::ONE && (count > 0 || at == 0)).then_some((at, count))
    }

    /// The slot, taken out (the cell is left fresh).
    #[inline]
    fn take(&mut self) -> WinSlot {
        let word = std::mem::replace(&mut self.0, Self::ONE);
        if word & Self::TAG == Self::WIDE {
            // SAFETY: the word left the cell: its `Wide` box is nobody
            // else's, and goes here.
            let wide = unsafe { Box::from_raw(Self::pointer::<Wide>(word)) };
            return WinSlot::One {
                at: wide.at,
                count: wide.count,
            };
        }
        // SAFETY: the word left the cell (which now holds no box): the
        // slot is its box's only owner.
        unsafe { Self::decode(word) }
    }

    /// `f` on the slot, which goes back into the cell afterwards. (The
    /// slot's logic runs no user code and does not panic; if it did, the
    /// key would be left fresh and its state dropped.)
    #[inline]
    fn with_mut<R>(&mut self, f: impl FnOnce(&mut WinSlot) -> R) -> R {
        if self.0 & Self::TAG == Self::WIDE {
            return self.with_wide(f);
        }
        let mut slot = self.take();
        let out = f(&mut slot);
        *self = WinCell::encode(slot);
        out
    }

    /// [`with_mut`](WinCell::with_mut) of a [`WIDE`](WinCell::WIDE) cell:
    /// its box is kept while the slot stays a `One` too large to fit
    /// inline (a key refused, or granted more at the same instant,
    /// allocates nothing).
    #[inline(never)]
    fn with_wide<R>(&mut self, f: impl FnOnce(&mut WinSlot) -> R) -> R {
        let wide = Self::pointer::<Wide>(self.0);
        // SAFETY: the cell owns the live `Wide` at its address (the tag
        // says so), and nothing else reads it while `self` is borrowed.
        let Wide { at, count } = unsafe { *wide };
        let mut slot = WinSlot::One { at, count };
        // (If `f` panics, the cell keeps its box unchanged.)
        let out = f(&mut slot);
        match slot {
            WinSlot::One { at, count } if count > 0 && !fits_inline(at, u64::from(count)) => {
                // SAFETY: as above; written in place.
                unsafe { *wide = Wide { at, count } }
            }
            // The old cell, dropped by the assignment, frees the box.
            slot => *self = WinCell::encode(slot),
        }
        out
    }

    /// `f` on a view of the slot, left in the cell.
    #[inline]
    fn with_ref<R>(&self, f: impl FnOnce(&WinSlot) -> R) -> R {
        // SAFETY: the view is never dropped (`ManuallyDrop`, which a panic
        // in `f` does not drop either), moved out of or mutated (`f` gets
        // a shared reference), and it goes before `&self` does: the cell
        // stays the box's only owner.
        let slot = std::mem::ManuallyDrop::new(unsafe { Self::decode(self.0) });
        f(&slot)
    }
}

impl Drop for WinCell {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl std::fmt::Debug for WinCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_ref(|slot| slot.fmt(f))
    }
}

impl Slot for WinCell {
    #[inline]
    fn fresh() -> Self {
        WinCell(Self::ONE)
    }

    fn promoted(id: u64) -> Self {
        WinCell::encode(WinSlot::Promoted(id))
    }

    #[inline]
    fn id(&self) -> u64 {
        match (self.0 & (Self::TAG | INLINE_COUNT << 3), self.0 >> 8) {
            (Self::ONE, id @ 1..) => id - 1,
            _ => unreachable!("only a promoted key has a limiter"),
        }
    }

    #[inline]
    fn check(&mut self, p: &Params, now: u64, n: u64) -> Result<(), u64> {
        if let Some((at, count)) = self.inline() {
            // `WinSlot::check`'s `One` case on the word itself (a new key's
            // check, and most checks of keys checked once a period).
            let held = match count > 0 && at.saturating_add(p.period) <= now {
                true => 0,
                false => count,
            };
            let Some(total) = held.checked_add(n).filter(|&t| t <= p.max_calls) else {
                return Err(at.saturating_add(p.period).max(now));
            };
            if (held == 0 || at == now) && fits_inline(now, total) {
                // (Inline before and after: no box to free or make.)
                self.0 = Self::one(now, total);
                return Ok(());
            }
        }
        self.with_mut(|slot| slot.check(p, now, n))
    }

    fn idle_from(&mut self, p: &Params, now: u64) -> u64 {
        self.with_mut(|slot| slot.idle_from(p, now))
    }

    #[inline]
    fn idle_hint(&self, p: &Params) -> u64 {
        match self.inline() {
            Some((_, 0)) => 0,
            Some((at, _)) => at.saturating_add(p.period),
            None => self.with_ref(|slot| slot.idle_hint(p)),
        }
    }

    fn into_seed(mut self, now: u64) -> Seed {
        self.take().into_seed(now)
    }

    fn from_seed(seed: Seed, p: &Params) -> Self {
        WinCell::encode(WinSlot::from_seed(seed, p))
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
        // (The cell a key keeps: every step goes through its encoding.)
        let mut slot = WinCell::fresh();
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
            slot.with_ref(|slot| match slot {
                WinSlot::R4(..) => stamped += 1,
                WinSlot::Log(_) => logged += 1,
                WinSlot::One { .. } | WinSlot::Promoted(_) => {}
                _ => boxed += 1,
            });
            if (seed >> 40) % 16 == 0 {
                let seed = slot.into_seed(now);
                // A promoted limiter's log: in order, nothing after `now`
                // (the limiter records its next grants after them).
                if let Seed::Window(log) = &seed {
                    assert_eq!(log.total(), log.iter().map(|(_, count)| count).sum::<u64>());
                    assert!(log.iter().all(|(at, _)| at <= now), "{m} at {now}");
                }
                slot = WinCell::from_seed(seed, &p);
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
            let size = rings!(ref &slot, |_stamps, buf| buf.len(), _ => 1);
            if sizes.last() != Some(&size) {
                sizes.push(size);
            }
        }
        assert_eq!(sizes, [1, 4, 8, 16, 32, 64]);
        assert_eq!(slot.check(&p, 100, 1), Err(1_000));
        assert_eq!(slot.check(&p, 1_000, 1), Ok(()));
        assert_eq!(slot.check(&p, 1_000, 1), Err(1_001));
        assert!(matches!(slot, WinSlot::R64(..)));
        // Down to a quarter: a smaller ring; then none: fresh.
        assert_eq!(slot.idle_from(&p, 1_047), 2_000);
        assert!(matches!(slot, WinSlot::R64(..)));
        assert_eq!(slot.idle_from(&p, 1_048), 2_000);
        assert!(matches!(slot, WinSlot::R16(..)));
        assert_eq!(slot.idle_from(&p, 1_063), 2_000);
        assert!(matches!(slot, WinSlot::R4(..)));
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
        assert!(matches!(slot, WinSlot::R4(..)));
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
        assert_eq!(std::mem::size_of::<WinCell>(), 8);
        assert_eq!(std::mem::size_of::<WinSlot>(), 16);
        // The rings fill the allocator's size classes.
        assert_eq!(std::mem::size_of::<Ring<4>>(), 24);
        assert_eq!(std::mem::size_of::<Ring<8>>(), 40);
        assert_eq!(std::mem::size_of::<Ring<16>>(), 72);
        assert_eq!(std::mem::size_of::<Ring<64>>(), 264);
        assert_eq!(std::mem::size_of::<Wide>(), 16);
    }

    #[test]
    fn the_cell_keeps_every_form_in_eight_bytes() {
        fn round_trip(slot: WinSlot) -> (u64, String) {
            let before = format!("{slot:?}");
            let mut cell = WinCell::encode(slot);
            let word = cell.0;
            assert_eq!(
                format!("{cell:?}"),
                cell.with_ref(|slot| format!("{slot:?}"))
            );
            let after = format!("{:?}", cell.take());
            assert_eq!(cell.0, WinCell::ONE, "taking leaves the cell fresh");
            assert_eq!(before, after);
            (word, after)
        }
        // Inline: fresh is zero; the largest inline instant and count.
        assert_eq!(round_trip(WinSlot::fresh()).0, 0);
        let (word, _) = round_trip(WinSlot::One {
            at: INLINE_AT,
            count: INLINE_COUNT as u32,
        });
        assert_eq!(word & WinCell::TAG, WinCell::ONE);
        // Past them, boxed (with the same grants); checked in place.
        let p = window(usize::MAX, 100);
        for (at, count) in [
            (INLINE_AT + 1, 1),
            (5, INLINE_COUNT + 1),
            (u64::MAX, u32::MAX.into()),
        ] {
            let (word, _) = round_trip(WinSlot::One {
                at,
                count: count as u32,
            });
            assert_eq!(word & WinCell::TAG, WinCell::WIDE);
            let mut cell = WinCell::encode(WinSlot::One {
                at,
                count: count as u32,
            });
            let word = cell.0;
            cell.with_ref(|slot| match slot {
                WinSlot::One { at: a, count: c } => assert_eq!((*a, u64::from(*c)), (at, count)),
                other => panic!("{other:?}"),
            });
            if count < u32::MAX.into() {
                cell.check(&p, at, 1).unwrap();
                assert_eq!(cell.0, word, "the same box, updated");
                cell.with_ref(|slot| match slot {
                    WinSlot::One { at: a, count: c } => {
                        assert_eq!((*a, u64::from(*c)), (at, count + 1))
                    }
                    other => panic!("{other:?}"),
                });
            }
            // Expired and checked again at an instant that fits inline:
            // back inline (the box freed).
            if at < INLINE_AT {
                cell.check(&p, at + 100, 1).unwrap();
                assert_eq!(cell.0 & WinCell::TAG, WinCell::ONE);
            }
            drop(cell);
        }
        for id in [0, 1, INLINE_AT - 1] {
            assert_eq!(WinCell::promoted(id).id(), id);
            let (word, _) = round_trip(WinSlot::Promoted(id));
            assert_eq!(word & WinCell::TAG, WinCell::ONE);
        }
        // Every ring (a few stamps in each), and a log; dropping a cell
        // frees its box (the address sanitizer's leak check sees it).
        let p = window(STAMPED_CALLS as usize, 1_000);
        for need in [2, 5, 9, 17, 33, 64] {
            let mut slot = WinSlot::fresh();
            for t in 0..need {
                slot.check(&p, t, 1).unwrap();
            }
            let (word, text) = round_trip(slot);
            assert_ne!(word & WinCell::TAG, WinCell::ONE, "{need}: {text}");
            let mut cell = WinCell::fresh();
            for t in 0..need {
                cell.check(&p, t, 1).unwrap();
            }
            assert_eq!(cell.idle_hint(&p), need - 1 + 1_000);
            drop(cell);
        }
        let mut log = Log::default();
        log.record(1, 2, 0);
        log.record(3, 4, 0);
        round_trip(WinSlot::Log(Box::new(log)));
    }

    #[test]
    fn stamps_taken_on_another_grid_come_back_as_stamps() {
        let coarse = window(10, 3_000_000_000);
        let fine = window(10, 2_000_000_000);
        assert_ne!(coarse.shift, fine.shift);
        let mut slot = WinSlot::fresh();
        for t in [1, 2, 3] {
            slot.check(&coarse, t, 1).unwrap();
        }
        assert!(matches!(slot, WinSlot::R4(_)));
        slot.check(&fine, 5, 1).unwrap();
        match &slot {
            WinSlot::R4(ring) => assert_eq!((ring.stamps.shift, ring.stamps.len), (0, 4)),
            other => panic!("{other:?}"),
        }
        // A larger quota's log of two instants stays a log.
        let p = window(100, 100);
        let mut slot = WinSlot::fresh();
        slot.check(&p, 1, 1).unwrap();
        slot.check(&p, 2, 1).unwrap();
        slot.check(&p, 101, 1).unwrap();
        assert!(matches!(slot, WinSlot::Log(_)));
        slot.check(&p, 300, 1).unwrap();
        assert!(matches!(slot, WinSlot::One { at: 300, count: 1 }));
    }

    #[test]
    fn many_grants_at_one_instant_stay_one_instant() {
        let p = window(usize::MAX, 100);
        let mut slot = WinSlot::fresh();
        slot.check(&p, 5, INLINE_COUNT).unwrap();
        slot.check(&p, 5, 1).unwrap();
        assert!(matches!(slot, WinSlot::One { at: 5, count: 32 }));
        slot.check(&p, 5, u64::from(u32::MAX) - 32).unwrap();
        assert!(matches!(slot, WinSlot::One { .. }));
        // More than a `u32` counts at one instant, or a second instant:
        // the log.
        slot.check(&p, 5, 1).unwrap();
        assert!(matches!(slot, WinSlot::Log(_)));
        assert_eq!(slot.idle_from(&p, 50), 105);
        let back = WinSlot::from_seed(slot.into_seed(50), &p);
        assert!(matches!(back, WinSlot::Log(_)));
        let mut slot = WinSlot::fresh();
        slot.check(&p, 5, 40).unwrap();
        slot.check(&p, 6, 1).unwrap();
        assert!(matches!(slot, WinSlot::Log(_)));
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
