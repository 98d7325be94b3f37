//! The clock a [`Watch`](super::Watch) reads twice per poll.
//!
//! On x86-64 CPUs whose time-stamp counter is invariant (constant rate,
//! running in every power state; `cpuid` says so on modern CPUs, and in
//! virtual machines whose hypervisor passes the bit through) it is
//! `rdtsc`, about 7 ns a read against `Instant::now`'s 15–20. Everywhere
//! else — and when the environment variable `AWAITKIT_WATCH_CLOCK=instant`
//! is set at the first reading — it is nanoseconds since a process-wide
//! [`Instant`].
//!
//! Ticks are converted to time only when somebody looks (a report, a slow
//! poll), against a calibration from the first reading to now: each end
//! pairs a counter reading with an `Instant` (bracketed by two counter
//! reads, retried if a preemption split them), so a span of `d` measured
//! after the first reading is off by about the pairing error (tens of ns)
//! times `d / span` ≤ the pairing error, however early it is converted.
//! The first calibration that spans between 100 ms and 1 s is frozen
//! (typically within 10⁻⁶): from then on a conversion gives the same time
//! for the same ticks, every time. One that spans longer, or whose rate is
//! not a plausible counter rate (a suspend that stopped `Instant` but not
//! the counter, a counter reset), is not trusted for freezing: calibration
//! starts again from that reading.
//!
//! The counters of different cores are assumed to agree (the kernel's own
//! clock relies on it wherever it uses the counter); a difference of two
//! readings on different cores is taken with `saturating_sub`.
//!
//! The counter's intrinsics live in `crate::tsc`, shared with the default
//! timers' cheap counter.

use crate::tsc::{invariant as invariant_tsc, paired_reading, rdtsc};
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
        let forced = std::env::var_os("AWAITKIT_WATCH_CLOCK").is_some_and(|v| v == "instant");
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

/// The counter now, in ticks (never decreasing on one thread; differences
/// between readings are taken with `saturating_sub`).
#[inline]
pub(crate) fn now() -> u64 {
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

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_the_time_that_passed() {
        // Each counter reading is bracketed by two `Instant`s, so the test
        // holds however the thread is preempted between the reads.
        let before_start = Instant::now();
        let start = now();
        let after_start = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let before_end = Instant::now();
        let end = now();
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
        let _ = now();
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
    fn readings_never_go_backwards_on_one_thread() {
        let mut last = now();
        for _ in 0..10_000 {
            let t = now();
            assert!(t >= last);
            last = t;
        }
    }
}
