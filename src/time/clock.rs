//! The crate's one clock source: the CPU's invariant time-stamp counter
//! where there is one, `Instant` elsewhere. Two readers share it (and its
//! one calibration):
//!
//! * [`watch`](crate::watch) reads raw ticks ([`ticks`]) twice per poll and
//!   converts them to time only when somebody looks ([`scale`]);
//! * the [`DefaultTimer`](super::DefaultTimer)'s clock ([`nanos`],
//!   [`now`]) maps ticks onto `Instant`, for the rate limiter's checks.
//!
//! # Ticks
//!
//! On x86-64 CPUs whose time-stamp counter is invariant (constant rate,
//! running in every power state; `cpuid` says so on modern CPUs, and in
//! virtual machines whose hypervisor passes the bit through) a tick is one
//! `rdtsc`, a few ns a read against `Instant::now`'s 15–40. Everywhere
//! else — and when the environment variable `AWAITKIT_CLOCK=instant` (or
//! the older `AWAITKIT_WATCH_CLOCK=instant`) is set at the first reading —
//! it is nanoseconds since a process-wide [`Instant`].
//!
//! # Calibration
//!
//! Ticks are converted to time against a calibration from the first reading
//! to now: each end pairs a counter reading with an `Instant` (bracketed by
//! two counter reads, retried if a preemption split them), so a span of `d`
//! measured after the first reading is off by about the pairing error (tens
//! of ns) times `d / span` ≤ the pairing error, however early it is
//! converted. The first calibration that spans between 100 ms and 1 s is
//! frozen (typically within 10⁻⁶): from then on a conversion gives the same
//! time for the same ticks, every time. One that spans longer, or whose rate
//! is not a plausible counter rate (a suspend that stopped `Instant` but not
//! the counter, a counter reset), is not trusted for freezing: calibration
//! starts again from that reading.
//!
//! The counters of different cores are assumed to agree (the kernel's own
//! clock relies on it wherever it uses the counter); a difference of two
//! readings on different cores is taken with `saturating_sub`.
//!
//! # The default timer's clock
//!
//! Nanoseconds since the first reading's `Instant` ([`nanos`]), as
//! `offset + ticks × rate`:
//!
//! * Until the calibration is frozen (the first 100 ms or so after the first
//!   reading), and wherever ticks are `Instant`'s, it **is** `Instant`.
//! * Then `rate` is the frozen calibration slowed by 2⁻¹⁰ (0.1 %, more than
//!   any NTP slew of `Instant`, at most 0.05 %), so between two
//!   re-synchronisations the clock runs a little slower than `Instant`. At
//!   least every [`SYNC_EVERY`] of counter time a reader re-synchronises:
//!   it reads `Instant`, then the counter, and raises `offset` (an atomic
//!   maximum) so the clock is never behind that `Instant`. The clock
//!   therefore never goes backwards (`offset` only grows, the rate is
//!   fixed), lags `Instant` by at most about 0.1 % of [`SYNC_EVERY`] plus a
//!   preemption between those two reads, and never leads it except by the
//!   pairing error of the switch from `Instant`.
//! * A sleep that completes re-synchronises (see [`resync`]): a waiter woken
//!   by a sleep on an `Instant`-based timer (futures-timer, tokio) then
//!   reads a time at or after its deadline, never a little before it.
//! * A clock found more than [`MAX_LEAD`] ahead of `Instant` at a
//!   re-synchronisation (a calibration off by more than 0.1 %, a counter
//!   that ran through a suspend) gives the counter up for good: from then on
//!   it is `Instant`, held at the highest time already given until `Instant`
//!   passes it.
//!
//! The only `unsafe` of the crate's clocks lives here: two CPU intrinsics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The first reading: the counter and `Instant` taken together.
struct Base {
    tsc: bool,
    ticks: u64,
    at: Instant,
}

static BASE: OnceLock<Base> = OnceLock::new();

/// The calibration, once one spans [`FREEZE_AFTER`] (and at most
/// [`REBASE_AFTER`]) at a plausible rate.
static FROZEN: OnceLock<Scale> = OnceLock::new();
/// Where calibration starts again after an untrusted one (`None`: at the
/// first reading).
static RESTART: Mutex<Option<(u64, Instant)>> = Mutex::new(None);
const FREEZE_AFTER: Duration = Duration::from_millis(100);
const REBASE_AFTER: Duration = Duration::from_secs(1);
/// Plausible counter rates, ticks per µs: 200 MHz to 10 GHz.
const RATE_PER_US: std::ops::RangeInclusive<u128> = 200..=10_000;

#[inline]
fn base() -> &'static Base {
    BASE.get_or_init(|| {
        let forced = ["AWAITKIT_CLOCK", "AWAITKIT_WATCH_CLOCK"]
            .iter()
            .any(|var| std::env::var_os(var).is_some_and(|v| v == "instant"));
        if !forced && invariant_tsc() {
            let (ticks, at) = paired_reading();
            Base {
                tsc: true,
                ticks,
                at,
            }
        } else {
            Base {
                tsc: false,
                ticks: 0,
                at: Instant::now(),
            }
        }
    })
}

/// A counter reading and an `Instant` taken together: the `Instant` is
/// bracketed by two counter reads and paired with their midpoint. A pair
/// whose reads are more than 2 000 ticks apart (under a microsecond at any
/// plausible rate; the thread was preempted between them) is taken again,
/// a few times.
fn paired_reading() -> (u64, Instant) {
    let mut best = None;
    for _ in 0..8 {
        let before = rdtsc();
        let at = Instant::now();
        let after = rdtsc();
        let gap = after.saturating_sub(before);
        let pair = (before + gap / 2, at);
        if gap <= 2_000 {
            return pair;
        }
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, pair));
        }
    }
    best.map_or_else(|| (rdtsc(), Instant::now()), |(_, pair)| pair)
}

/// The counter now, in ticks (never decreasing on one thread; differences
/// between readings are taken with `saturating_sub`).
#[inline]
pub(crate) fn ticks() -> u64 {
    let base = base();
    if base.tsc {
        rdtsc()
    } else {
        duration_nanos(base.at.elapsed())
    }
}

/// Whether the counter is the CPU's time-stamp counter.
pub(crate) fn is_tsc() -> bool {
    base().tsc
}

/// The conversion from ticks to time as of now: one `Scale` converts a
/// set of readings consistently (more ticks never give less time).
#[derive(Clone, Copy)]
pub(crate) struct Scale {
    /// Ticks counted over `span` (0 for the `Instant` fallback, where a
    /// tick is a nanosecond).
    ticks: u64,
    span: Duration,
}

/// The current [`Scale`] (the frozen one, once there is one).
pub(crate) fn scale() -> Scale {
    if let Some(frozen) = FROZEN.get() {
        return *frozen;
    }
    let base = base();
    if !base.tsc {
        return Scale {
            ticks: 0,
            span: Duration::ZERO,
        };
    }
    let mut restart = RESTART.lock().unwrap_or_else(|e| e.into_inner());
    let (start_ticks, start) = restart.unwrap_or((base.ticks, base.at));
    let (ticks, at) = paired_reading();
    let scale = Scale {
        ticks: ticks.saturating_sub(start_ticks),
        span: at.saturating_duration_since(start),
    };
    if scale.span >= FREEZE_AFTER {
        if scale.span <= REBASE_AFTER && scale.plausible() {
            drop(restart);
            return *FROZEN.get_or_init(|| scale);
        }
        // Too long to trust (it may hide a suspend), or implausible: use
        // it this once, and calibrate again from here.
        *restart = Some((ticks, at));
    }
    scale
}

impl Scale {
    fn plausible(self) -> bool {
        let micros = self.span.as_micros();
        micros > 0 && RATE_PER_US.contains(&(u128::from(self.ticks) / micros))
    }
}

impl Scale {
    /// `ticks` as time.
    pub(crate) fn to_duration(self, ticks: u64) -> Duration {
        if self.ticks == 0 {
            return if self.span.is_zero() {
                Duration::from_nanos(ticks)
            } else {
                Duration::ZERO
            };
        }
        let nanos = u128::from(ticks) * self.span.as_nanos() / u128::from(self.ticks);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// `ticks` as time (one conversion; use a [`Scale`] for several).
pub(crate) fn to_duration(ticks: u64) -> Duration {
    scale().to_duration(ticks)
}

/// A tick count that only spans shorter than `d` stay under: a poll of
/// fewer ticks is certainly shorter than `d` (the caller confirms the
/// others with [`to_duration`]).
pub(crate) fn lower_bound(d: Duration) -> u64 {
    let nanos = duration_nanos(d);
    let base = base();
    if !base.tsc {
        return nanos;
    }
    let scale = scale();
    let Scale {
        ticks: span_ticks,
        span,
    } = scale;
    if span >= Duration::from_millis(1) && scale.plausible() {
        // Half the measured rate: the rate over a millisecond or more is
        // good to far better than a factor of two.
        let ticks = u128::from(nanos) * u128::from(span_ticks) / span.as_nanos() / 2;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    } else {
        // Not calibrated yet: assume no less than 125 MHz (invariant
        // counters tick at the CPU's nominal rate, over 1 GHz).
        nanos / 8
    }
}

// ---------------------------------------------------------------------------
// The default timer's clock: ticks mapped onto `Instant`
// ---------------------------------------------------------------------------

/// How often, in counter time, a reader re-synchronises with `Instant`.
pub(crate) const SYNC_EVERY: Duration = Duration::from_micros(64);
/// How far ahead of `Instant` the clock may be found before the counter is
/// given up (see the module docs).
pub(crate) const MAX_LEAD: Duration = Duration::from_micros(50);

/// The mapping, set up once the calibration is frozen. `rate` 0: not (yet)
/// on the counter; [`nanos`] reads `Instant`.
struct Mapping {
    /// Nanoseconds per tick × 2³² (slowed: see the module docs).
    rate: AtomicU64,
    /// The counter at the base (ticks below it count as 0).
    origin: AtomicU64,
    /// Ticks between re-synchronisations.
    every: AtomicU64,
    /// The counter at the latest re-synchronisation.
    synced: AtomicU64,
    /// Nanoseconds since the base at `origin`: only ever raised.
    offset: AtomicI64,
    /// The counter was given up: `Instant`, held at `floor`.
    gave_up: AtomicBool,
    floor: AtomicU64,
    /// `Instant` nanoseconds before which no freeze is tried again.
    next_try: AtomicU64,
}

static MAP: Mapping = Mapping {
    rate: AtomicU64::new(0),
    origin: AtomicU64::new(0),
    every: AtomicU64::new(u64::MAX),
    synced: AtomicU64::new(0),
    offset: AtomicI64::new(0),
    gave_up: AtomicBool::new(false),
    floor: AtomicU64::new(0),
    next_try: AtomicU64::new(0),
};

/// A skew applied to the calibration when the mapping is set up, in parts
/// per million (tests only: see [`skew_calibration`]).
static SKEW_PPM: AtomicI64 = AtomicI64::new(0);

/// `ticks` after `origin`, as nanoseconds at `rate`.
#[inline(always)]
fn scaled(tick: u64, origin: u64, rate: u64) -> i64 {
    let delta = u128::from(tick.saturating_sub(origin));
    i64::try_from((delta * u128::from(rate)) >> 32).unwrap_or(i64::MAX)
}

/// The default timer's clock: nanoseconds since the base [`Instant`]
/// ([`base_instant`]). Never goes backwards; within a fraction of a
/// microsecond of `Instant` (see the module docs).
#[inline]
pub(crate) fn nanos() -> u64 {
    let rate = MAP.rate.load(Ordering::Acquire);
    if rate != 0 {
        let tick = rdtsc();
        let synced = MAP.synced.load(Ordering::Relaxed);
        // `wrapping_sub`: a counter behind the last re-synchronisation (one
        // reset by a suspend) re-synchronises too.
        if tick.wrapping_sub(synced) <= MAP.every.load(Ordering::Relaxed) {
            let offset = MAP.offset.load(Ordering::Relaxed);
            let origin = MAP.origin.load(Ordering::Relaxed);
            return clamp(offset.saturating_add(scaled(tick, origin, rate)));
        }
    }
    nanos_slow()
}

fn clamp(nanos: i64) -> u64 {
    u64::try_from(nanos).unwrap_or(0)
}

/// The base of [`nanos`]: the first reading's `Instant`.
#[cfg(feature = "tokio")]
#[inline]
pub(crate) fn base_instant() -> Instant {
    base().at
}

/// The default timer's clock as an `Instant` (`Instant::now()` itself while
/// the clock is `Instant`).
#[inline]
pub(crate) fn now() -> Instant {
    if MAP.rate.load(Ordering::Relaxed) == 0 && !MAP.gave_up.load(Ordering::Relaxed) {
        // Before the mapping (or without a counter): `Instant`, and a
        // freeze tried now and then.
        let now = Instant::now();
        if base().tsc {
            try_freeze(duration_nanos(now.saturating_duration_since(base().at)));
        }
        return now;
    }
    base().at + Duration::from_nanos(nanos())
}

/// Whether the default timer's clock reads the counter (the calibration is
/// frozen and the counter was not given up).
pub(crate) fn on_counter() -> bool {
    MAP.rate.load(Ordering::Relaxed) != 0
}

#[cold]
#[inline(never)]
fn nanos_slow() -> u64 {
    let base = base();
    if MAP.gave_up.load(Ordering::Acquire) {
        let now = duration_nanos(base.at.elapsed());
        return now.max(MAP.floor.load(Ordering::Relaxed));
    }
    let rate = MAP.rate.load(Ordering::Acquire);
    if rate == 0 {
        let now = duration_nanos(base.at.elapsed());
        if base.tsc {
            try_freeze(now);
        }
        return now;
    }
    sync(base, rate)
}

/// Re-synchronises with `Instant` (if the clock is on the counter): after
/// this, [`nanos`] is at or after the `Instant` read here. A completed
/// sleep calls it, so its waiter never sees its deadline a little ahead.
pub(crate) fn resync() {
    let rate = MAP.rate.load(Ordering::Acquire);
    if rate != 0 {
        sync(base(), rate);
    }
}

/// `Instant` first, then the counter: the offset taken from them puts the
/// clock at or behind that `Instant` (a preemption between the two reads
/// only makes it lag more), never ahead.
fn sync(base: &Base, rate: u64) -> u64 {
    let before = rdtsc();
    let at = Instant::now();
    let tick = rdtsc();
    // Split by a preemption, the pair says little about a lead (it only
    // makes the clock lag, which is safe): no verdict from it.
    let clean = tick.saturating_sub(before) <= 2_000;
    let origin = MAP.origin.load(Ordering::Relaxed);
    let real =
        i64::try_from(duration_nanos(at.saturating_duration_since(base.at))).unwrap_or(i64::MAX);
    let candidate = real.saturating_sub(scaled(tick, origin, rate));
    let previous = MAP.offset.fetch_max(candidate, Ordering::Relaxed);
    MAP.synced.store(tick, Ordering::Relaxed);
    let offset = previous.max(candidate);
    let now = offset.saturating_add(scaled(tick, origin, rate));
    if clean && previous.saturating_sub(candidate) > duration_nanos(MAX_LEAD) as i64 {
        give_up(now, rate);
    }
    clamp(now)
}

/// The clock ran ahead of `Instant`: `Instant` from now on, held at a floor
/// above anything a reader racing with this one can have been given.
#[cold]
fn give_up(now: i64, rate: u64) {
    let every = MAP.every.load(Ordering::Relaxed);
    let margin = scaled(every.saturating_mul(2), 0, rate);
    MAP.floor
        .fetch_max(clamp(now.saturating_add(margin)), Ordering::Relaxed);
    MAP.gave_up.store(true, Ordering::Release);
    MAP.rate.store(0, Ordering::Release);
}

/// Sets the mapping up once the calibration is frozen (tried at most every
/// 10 ms of `Instant`, from [`FREEZE_AFTER`] on; `now` is `Instant`
/// nanoseconds since the base).
fn try_freeze(now: u64) {
    const RETRY: u64 = 10_000_000;
    let next = MAP.next_try.load(Ordering::Relaxed);
    if now < next.max(duration_nanos(FREEZE_AFTER)) {
        return;
    }
    if MAP
        .next_try
        .compare_exchange(next, now + RETRY, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return; // another thread is trying
    }
    let _ = scale();
    if let Some(frozen) = FROZEN.get() {
        static SETTING_UP: Mutex<()> = Mutex::new(());
        if let Ok(_only) = SETTING_UP.try_lock() {
            if MAP.rate.load(Ordering::Relaxed) == 0 {
                set_up(*frozen);
            }
        }
    }
}

/// The mapping from the frozen calibration. Its first offset pairs an
/// `Instant` with the counter read just before it: the clock starts at or
/// just after `Instant` (by the pairing gap), so it never gives a time
/// below one `Instant` gave before the switch.
fn set_up(frozen: Scale) {
    if frozen.ticks == 0 || MAP.gave_up.load(Ordering::Relaxed) {
        return;
    }
    let base = base();
    let span = frozen.span.as_nanos();
    let ticks = u128::from(frozen.ticks);
    let mut rate = (span << 32) / ticks;
    rate -= rate >> 10;
    let skew = i128::from(SKEW_PPM.load(Ordering::Relaxed));
    rate =
        u128::try_from(i128::try_from(rate).unwrap_or(i128::MAX) * (1_000_000 + skew) / 1_000_000)
            .unwrap_or(1)
            .max(1);
    let Ok(rate) = u64::try_from(rate) else {
        return;
    };
    let every = u64::try_from(u128::from(duration_nanos(SYNC_EVERY)) * ticks / span.max(1))
        .unwrap_or(u64::MAX);
    let origin = base.ticks;
    // A pair not split by a preemption, or no mapping this time (the next
    // try is 10 ms later).
    let Some((tick, at)) = (0..16).find_map(|_| {
        let before = rdtsc();
        let at = Instant::now();
        (rdtsc().saturating_sub(before) <= 2_000).then_some((before, at))
    }) else {
        return;
    };
    let real =
        i64::try_from(duration_nanos(at.saturating_duration_since(base.at))).unwrap_or(i64::MAX);
    MAP.origin.store(origin, Ordering::Relaxed);
    MAP.every.store(every, Ordering::Relaxed);
    MAP.synced.store(tick, Ordering::Relaxed);
    MAP.offset.store(
        real.saturating_sub(scaled(tick, origin, rate)),
        Ordering::Relaxed,
    );
    MAP.rate.store(rate, Ordering::Release);
}

/// Skews the default timer's calibration by `ppm` parts per million (a
/// positive skew makes the clock run fast), if the mapping is not set up
/// yet: it takes effect when it is. For tests of what a bad calibration
/// does.
#[cfg(feature = "test-util")]
pub(crate) fn skew_calibration(ppm: i64) {
    SKEW_PPM.store(ppm, Ordering::Relaxed);
}

/// Whether the counter was given up (the clock ran ahead of `Instant`).
#[cfg(feature = "test-util")]
pub(crate) fn gave_up() -> bool {
    MAP.gave_up.load(Ordering::Relaxed)
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(all(target_arch = "x86_64", not(target_env = "sgx")))]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU, reads a register and has
    // no other effect. (The intrinsic is safe from Rust 1.87; our MSRV
    // still needs the block.)
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(all(target_arch = "x86_64", not(target_env = "sgx"))))]
fn rdtsc() -> u64 {
    0
}

#[cfg(all(target_arch = "x86_64", not(target_env = "sgx")))]
fn invariant_tsc() -> bool {
    use core::arch::x86_64::__cpuid;
    // SAFETY: `cpuid` exists on every x86-64 CPU (outside SGX enclaves,
    // excluded above) and only reads identification registers.
    #[allow(unused_unsafe)]
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0007 {
        return false;
    }
    // SAFETY: as above; leaf 0x8000_0007 exists (checked just before).
    #[allow(unused_unsafe)]
    let power = unsafe { __cpuid(0x8000_0007) };
    // EDX bit 8: "invariant TSC".
    power.edx & (1 << 8) != 0
}

#[cfg(not(all(target_arch = "x86_64", not(target_env = "sgx"))))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_the_time_that_passed() {
        // Each counter reading is bracketed by two `Instant`s, so the test
        // holds however the thread is preempted between the reads.
        let before_start = Instant::now();
        let start = ticks();
        let after_start = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let before_end = Instant::now();
        let end = ticks();
        let after_end = Instant::now();
        let measured = to_duration(end.saturating_sub(start));
        let shortest = before_end - after_start;
        let longest = after_end - before_start;
        let slack = Duration::from_micros(50);
        assert!(
            measured + slack >= shortest && measured <= longest + slack,
            "measured {measured:?}, real between {shortest:?} and {longest:?}"
        );
    }

    #[test]
    fn the_calibration_freezes_at_a_plausible_rate() {
        let _ = ticks();
        // Twice: if the first calibration spans over a second (this
        // process started long ago), calibration restarts there and the
        // second one freezes.
        for _ in 0..2 {
            std::thread::sleep(FREEZE_AFTER + Duration::from_millis(10));
            let _ = scale();
        }
        let a = scale();
        let b = scale();
        assert_eq!(
            (a.ticks, a.span),
            (b.ticks, b.span),
            "frozen: the same scale every time"
        );
        if is_tsc() {
            assert!(a.plausible());
        }
        assert_eq!(a.to_duration(1_000_000), b.to_duration(1_000_000));
    }

    #[test]
    fn the_lower_bound_is_never_above_the_span() {
        for ms in [0, 1, 10, 100, 10_000] {
            let d = Duration::from_millis(ms);
            assert!(to_duration(lower_bound(d)) <= d, "{d:?}");
        }
        assert!(lower_bound(Duration::MAX) > 0);
    }

    #[test]
    fn after_a_resync_the_clock_is_not_behind_instant() {
        // Past the set-up where there is a counter (on `Instant` the
        // property holds trivially, and is checked all the same).
        for _ in 0..50 {
            if on_counter() || !is_tsc() || MAP.gave_up.load(Ordering::Relaxed) {
                break;
            }
            let _ = now();
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..10_000 {
            let before = Instant::now();
            resync();
            let now = now();
            assert!(now >= before, "{:?} behind", before - now);
        }
    }

    #[test]
    fn readings_never_go_backwards_on_one_thread() {
        let mut last = ticks();
        for _ in 0..10_000 {
            let t = ticks();
            assert!(t >= last);
            last = t;
        }
    }
}
