//! The cheap nanosecond counter of [`FuturesTimer`](super::FuturesTimer)
//! and [`DefaultTimer`](super::DefaultTimer) ([`Timer::counter_nanos`]):
//! the CPU's invariant time-stamp counter, converted to nanoseconds on
//! `Instant`'s timeline, where there is one.
//!
//! # The conversion
//!
//! A reading is `ticks × mult / 2³² + offset`, kept when it falls within
//! `W` (2²⁰ ns, about 1 ms) above a published `base`. `mult`, `offset`
//! and `base` are published together under a sequence number (a seqlock
//! whose only writer holds `slow`), so the hot path is a counter read
//! (`rdtsc`), five loads, a multiply and a range check.
//!
//! The counter is read without a fence (`lfence` first would cost ~1.5 ns
//! a reading): readings on one thread never go backwards, but readings
//! made on different threads may arrive out of order by a little (a few
//! hundred nanoseconds were seen), as any clock read before taking a lock
//! does when its thread is preempted in between. Every user is correct
//! with that: a rate limiter reads the clock before locking its state and
//! never lets its time go backwards under the lock (see
//! `tests/engine/review_timer3.rs`), and the slow path's own decisions are taken
//! under `slow`.
//!
//! A reading out of range takes `slow`, pairs the counter with an
//! `Instant` and re-anchors: `base` becomes the reading, and the next
//! `W` nanoseconds are read on the hot path again. This is where the
//! counter is checked against `Instant`:
//!
//! * **Calibration.** Until the counter has been measured against
//!   `Instant` over [`FREEZE_AFTER`] (and at most [`REBASE_AFTER`], at a
//!   plausible rate), every reading takes `slow` and is `Instant`'s own.
//!   The rate is measured again over twice the span each time (0.2 s,
//!   0.4 s, …, so the pairing error of well under a microsecond soon
//!   weighs under 10⁻⁸), and `mult` is rounded **down** by a further 2⁻²⁰
//!   (about 1 ppm): the counter runs slightly slow, which only makes a
//!   limiter stricter (a one-second window lasts about a microsecond
//!   longer).
//! * **Never faster than `Instant`.** A re-anchoring reading that is
//!   ahead of the previous anchor plus the `Instant` time since (`most`:
//!   the counter ran fast — a virtual machine moved to another host, a
//!   suspend the counter kept counting through) or below `base` (the
//!   counter was reset, or read backwards) is not believed: the counter
//!   goes on from `most`. So the counter gains on `Instant` only within
//!   one range: by its rate error over ~1 ms (nanoseconds) and, on an
//!   anomaly, by at most one range (~1 ms, [`ANOMALY_SLACK`]) once; it
//!   never keeps a gain past the next anchor.
//! * **Measured again.** After such an anomaly, after a range over which
//!   the counter ran far slower than `Instant` (by more than 2⁻¹⁰ and
//!   the pairing error), and when a later measurement of the rate
//!   disagrees with `mult` (a virtual machine moved to a host whose
//!   counter runs at another rate), the clock goes back to measuring:
//!   readings are `Instant`'s (less the lag below) for [`FREEZE_AFTER`],
//!   then the new rate is on the hot path. A rate change is not kept
//!   for the rest of the run.
//! * **One timeline with `Instant`.** The counter's timeline is behind
//!   `Instant`'s by `lag`: its rounding down (about a part per million),
//!   the pairing errors a re-anchoring never lets run ahead (they add up
//!   to microseconds a second when many threads read the counter), and
//!   whatever a slow anomaly left. [`Clock::instant_value`] maps an
//!   `Instant` onto the timeline less a given lag: `DefaultTimer` takes
//!   the clock of a tokio runtime once paused less the lag at the
//!   runtime's first paused reading, fixed, so one paused instant always
//!   maps to the same value (on real time it reads the counter itself).
//! * **Monotonic.** Everything read under the previous parameters was
//!   below `base + W`; after an anomaly the new `base` is at least that,
//!   and a reading below `base` (by less than `W`) is `base` itself: the
//!   counter holds until it has passed every value already handed out.
//!   (That hold is the ~1 ms an anomaly can put the counter ahead.)
//!
//! Where the CPU has no invariant counter, or `AWAITKIT_TIMER_CLOCK=instant`
//! is set at the first reading, there is no counter (`None`).

// The model-checking build has no process-wide clock (its models build
// their own): the rest is used by its tests only.
#![cfg_attr(awaitkit_loom, allow(dead_code))]

use crate::sync::atomic::{AtomicU64, Ordering, fence};
use crate::sync::{Mutex, MutexGuard};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The range of the hot path above `base`, in nanoseconds (~1 ms): how
/// often the counter is checked against `Instant`, how far a small forward
/// jump of the counter can go unseen, and how far ahead an anomaly can put
/// it, once.
pub(crate) const W: u64 = 1 << 20;
/// The error of pairing a counter reading with an `Instant`, at most
/// (a pairing's reads are at most 2 000 ticks apart).
const PAIRING: u64 = 2_000;
/// The most an anomaly (a reset, a jump, a fast run) moves the counter
/// ahead of `Instant`, once, to stay monotonic: one range.
#[cfg(test)]
pub(crate) const ANOMALY_SLACK: u64 = W;
/// Calibration spans: the first trusted one is at least this long…
pub(crate) const FREEZE_AFTER: Duration = Duration::from_millis(100);
/// …and at most this long (a longer one may hide a suspend).
pub(crate) const REBASE_AFTER: Duration = Duration::from_secs(1);
/// Plausible counter rates, ticks per µs: 200 MHz to 10 GHz.
const RATE_PER_US: std::ops::RangeInclusive<u128> = 200..=10_000;
/// A later measurement replaces the rate only within this fraction
/// (2⁻¹⁰) of it; a larger change means the span hides a suspend or a
/// migration: measuring starts again there.
const RECAL_AGREE_SHIFT: u32 = 10;
/// The rounding down of the rate (2⁻²⁰, about 1 ppm).
const SLOW_SHIFT: u32 = 20;
/// The counter's values start here (2⁶² ns, 146 years), so `Instant`s
/// before the first reading (a paused tokio clock) stay representable.
pub(crate) const START: u64 = 1 << 62;

/// Where a [`Clock`] reads ticks and `Instant`s (the CPU, or a test's).
pub(crate) trait Source {
    /// Whether there is a counter at all (asked once, at the first reading).
    fn available(&self) -> bool;
    /// The counter now.
    fn ticks(&self) -> u64;
    /// The counter and an `Instant`, taken together.
    fn paired(&self) -> (u64, Instant);
}

/// The CPU's counter (see [`crate::tsc`]).
pub(crate) struct Tsc;

impl Source for Tsc {
    fn available(&self) -> bool {
        let forced = std::env::var_os("AWAITKIT_TIMER_CLOCK").is_some_and(|v| v == "instant");
        !forced && crate::tsc::invariant()
    }

    #[inline(always)]
    fn ticks(&self) -> u64 {
        crate::tsc::rdtsc()
    }

    fn paired(&self) -> (u64, Instant) {
        crate::tsc::paired_reading()
    }
}

/// A counter converted to nanoseconds (see the module's docs).
pub(crate) struct Clock<S> {
    /// Even when `mult`, `offset` and `base` are consistent.
    seq: AtomicU64,
    mult: AtomicU64,
    offset: AtomicU64,
    base: AtomicU64,
    /// A copy of [`Slow::lag`], for [`instant_value`](Clock::instant_value).
    lag: AtomicU64,
    slow: Mutex<Slow>,
    /// The `Instant` whose value is [`START`] (the first reading's).
    origin: OnceLock<Instant>,
    pub(super) source: S,
}

/// The state of the slow path (times in nanoseconds on the timeline).
struct Slow {
    state: Calibration,
    /// The latest value handed out before calibration.
    last: u64,
    /// How far the counter's timeline is behind `Instant`'s (wrapping):
    /// the counter runs slow, and an anomaly leaves it where it was. While
    /// measuring, readings are `Instant`'s less this.
    lag: u64,
    /// The counter's value and `Instant`'s at the latest anchor.
    anchor: (u64, u64),
    /// Where the rate is measured from (ticks, `Instant`), and the span of
    /// the next measurement.
    measure: (u64, u64),
    next_span: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Calibration {
    /// Nobody has read it yet.
    Unread,
    /// No counter: `None`.
    Absent,
    /// Measuring: readings are `Instant`'s.
    Measuring,
    /// On the hot path.
    Calibrated,
}

/// Ticks to nanoseconds at `mult` (ns per tick × 2³²), wrapping.
#[inline(always)]
pub(crate) fn convert(ticks: u64, mult: u64) -> u64 {
    ((u128::from(ticks) * u128::from(mult)) >> 32) as u64
}

fn plausible(ticks: u64, span: u64) -> bool {
    let micros = u128::from(span / 1_000);
    micros > 0 && RATE_PER_US.contains(&(u128::from(ticks) / micros))
}

/// ns per tick × 2³² over a measurement, rounded down (see the module's
/// docs).
pub(crate) fn mult_of(ticks: u64, span: u64) -> u64 {
    let exact = (u128::from(span) << 32) / u128::from(ticks.max(1));
    let exact = u64::try_from(exact).unwrap_or(u64::MAX);
    exact.saturating_sub(exact >> SLOW_SHIFT).saturating_sub(1)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A [`Clock`] on `$source` that has not been read yet.
macro_rules! clock_unread {
    ($source:expr) => {
        Clock {
            seq: AtomicU64::new(0),
            mult: AtomicU64::new(0),
            // Out of every range: the first readings take the slow path.
            offset: AtomicU64::new(1 << 63),
            base: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            slow: Mutex::new(Slow::UNREAD),
            origin: OnceLock::new(),
            source: $source,
        }
    };
}

impl<S: Source> Clock<S> {
    /// A clock on `source` that has not been read yet (`const` but under
    /// loom, whose atomics are not).
    #[cfg(not(awaitkit_loom))]
    pub(crate) const fn new(source: S) -> Self {
        clock_unread!(source)
    }

    /// A clock on `source` that has not been read yet.
    #[cfg(awaitkit_loom)]
    pub(crate) fn new(source: S) -> Self {
        clock_unread!(source)
    }

    /// Nanoseconds on `Instant`'s timeline ([`START`] at the first
    /// reading), or `None` if there is no counter.
    #[inline]
    pub(crate) fn now(&self) -> Option<u64> {
        let seq = self.seq.load(Ordering::Acquire);
        let mult = self.mult.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        let base = self.base.load(Ordering::Relaxed);
        let value = convert(self.source.ticks(), mult).wrapping_add(offset);
        fence(Ordering::Acquire);
        // (An odd `seq`: a writer is halfway through.)
        if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
            let above = value.wrapping_sub(base);
            if above < W {
                return Some(value);
            }
            if above > u64::MAX - W {
                // Just below `base`: hold there.
                return Some(base);
            }
        }
        self.slow_now()
    }

    fn lock(&self) -> MutexGuard<'_, Slow> {
        // Nothing under the lock panics halfway through an update.
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes new parameters (under `slow`: the only writer).
    fn publish(&self, mult: u64, offset: u64, base: u64) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.mult.store(mult, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// `at` on the timeline.
    fn value_of(origin: Instant, at: Instant) -> u64 {
        match at.checked_duration_since(origin) {
            Some(after) => START.saturating_add(nanos(after)),
            None => START.saturating_sub(nanos(origin.saturating_duration_since(at))),
        }
    }

    /// The value of `at` on `Instant`'s timeline less `lag` (for another
    /// clock that must agree with this one: tokio's, taken less at least
    /// [`lag`](Clock::lag)), if the clock has been read.
    #[cfg(feature = "tokio")]
    #[inline]
    pub(crate) fn instant_value(&self, at: Instant, lag: u64) -> Option<u64> {
        let value = Self::value_of(*self.origin.get()?, at);
        Some(value.wrapping_sub(lag))
    }

    /// How far the counter's timeline is behind `Instant`'s now (wrapping):
    /// its drift and the pairing errors it never lets run ahead, which grow
    /// by microseconds a second in a busy process, and what anomalies left.
    #[cfg(feature = "tokio")]
    #[inline]
    pub(crate) fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    fn slow_now(&self) -> Option<u64> {
        let mut slow = self.lock();
        match slow.state {
            Calibration::Absent => return None,
            Calibration::Unread => {
                if !self.source.available() {
                    slow.state = Calibration::Absent;
                    return None;
                }
                let (ticks, at) = self.source.paired();
                let origin = *self.origin.get_or_init(|| at);
                let value = Self::value_of(origin, at);
                slow.measure = (ticks, value);
                slow.state = Calibration::Measuring;
                slow.last = value;
                return Some(value);
            }
            Calibration::Measuring | Calibration::Calibrated => {}
        }
        let (ticks, at) = self.source.paired();
        // The pairing's ticks are a midpoint: a value handed out is read
        // afresh, after every reading other threads have made before.
        let latest = self.source.ticks();
        let instant = Self::value_of(*self.origin.get().expect("set at the first reading"), at);
        if slow.state == Calibration::Measuring {
            let (start_ticks, start) = slow.measure;
            let span = instant.saturating_sub(start);
            let counted = ticks.wrapping_sub(start_ticks);
            let value = instant.wrapping_sub(slow.lag).max(slow.last);
            if span >= nanos(FREEZE_AFTER) {
                if span <= nanos(REBASE_AFTER) && plausible(counted, span) {
                    let mult = mult_of(counted, span);
                    let offset = value.wrapping_sub(convert(ticks, mult));
                    self.publish(mult, offset, value);
                    slow.anchor = (value, instant);
                    self.set_lag(&mut slow, instant.wrapping_sub(value));
                    slow.next_span = span.saturating_mul(2);
                    slow.state = Calibration::Calibrated;
                    return Some(Self::at_least(
                        value,
                        convert(latest, mult).wrapping_add(offset),
                    ));
                }
                // Too long to trust, or implausible: measure from here.
                slow.measure = (ticks, instant);
            }
            slow.last = value;
            return Some(value);
        }
        // Calibrated: a reading out of range (or a writer was seen).
        let mult = self.mult.load(Ordering::Relaxed);
        let offset = self.offset.load(Ordering::Relaxed);
        let base = self.base.load(Ordering::Relaxed);
        let fresh = convert(latest, mult).wrapping_add(offset);
        let above = fresh.wrapping_sub(base);
        if above < W {
            return Some(fresh);
        }
        if above > u64::MAX - W {
            return Some(base);
        }
        let value = convert(ticks, mult).wrapping_add(offset);
        // Re-anchor, believing the counter only as far as `Instant` goes.
        let (anchor_value, anchor_instant) = slow.anchor;
        let most = anchor_value.saturating_add(instant.saturating_sub(anchor_instant));
        let elapsed = instant.saturating_sub(anchor_instant);
        let honest = value >= base && value <= most;
        let tolerance = PAIRING + (elapsed >> RECAL_AGREE_SHIFT);
        // Everything handed out so far is below `base + W` (a counter that
        // jumped ahead within its range handed out values up to there).
        let handed_out = base.saturating_add(W);
        let mut mult = mult;
        let value = if honest {
            if value.saturating_add(tolerance) < most {
                // Far slower than `Instant` over this range: the rate
                // changed (a virtual machine moved to another host), or the
                // counter stopped while `Instant` went on. It goes on from
                // where it is (catching up would be faster than `Instant`).
                return Some(self.measure_again(&mut slow, (ticks, instant), value, base));
            }
            let (measure_ticks, measure_instant) = slow.measure;
            let span = instant.saturating_sub(measure_instant);
            if span >= slow.next_span {
                let counted = ticks.wrapping_sub(measure_ticks);
                let measured = mult_of(counted, span);
                if plausible(counted, span) && measured.abs_diff(mult) <= mult >> RECAL_AGREE_SHIFT
                {
                    mult = measured;
                    slow.next_span = span.saturating_mul(2);
                } else {
                    // A different rate: measured again from here, on
                    // `Instant`'s readings meanwhile (a measurement compared
                    // with the old rate would never agree).
                    return Some(self.measure_again(&mut slow, (ticks, instant), value, base));
                }
            }
            value
        } else {
            // Reset, backwards, or faster than `Instant`: go on from the
            // time `Instant` says has passed. Measure the rate again (on
            // `Instant`'s readings meanwhile), unless it was only a little
            // fast (the pairing of a reading with an `Instant` is good to
            // tens of nanoseconds, over ~1 ms).
            if value < base || value - most > tolerance {
                return Some(self.measure_again(&mut slow, (ticks, instant), most, base));
            }
            most.max(base)
        };
        let floor = value.max(handed_out);
        let offset = value.wrapping_sub(convert(ticks, mult));
        self.publish(mult, offset, floor);
        slow.anchor = (value, instant);
        self.set_lag(&mut slow, instant.wrapping_sub(value));
        Some(Self::at_least(
            floor,
            convert(latest, mult).wrapping_add(offset),
        ))
    }

    /// Back to measuring the rate (an anomaly, or a rate change), going on
    /// from `from` (the counter's value now on its timeline; never ahead of
    /// the time `Instant` says has passed since the last anchor): readings
    /// are `Instant`'s less the lag that leaves, and at least `base + W`
    /// (every value handed out), until the counter has been measured again
    /// over [`FREEZE_AFTER`]. Returns the reading now.
    fn measure_again(
        &self,
        slow: &mut Slow,
        (ticks, instant): (u64, u64),
        from: u64,
        base: u64,
    ) -> u64 {
        // The hot path's range is empty from here: every reading is slow.
        self.publish(0, 1 << 63, 0);
        slow.state = Calibration::Measuring;
        slow.measure = (ticks, instant);
        self.set_lag(slow, instant.wrapping_sub(from));
        let floor = from.max(base.saturating_add(W));
        slow.last = floor;
        floor
    }

    /// Sets `lag` (and its copy for [`instant_value`](Clock::instant_value)).
    fn set_lag(&self, slow: &mut Slow, lag: u64) {
        slow.lag = lag;
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// `value` read after `floor` was published: `floor` if below it (by
    /// less than `W`, a counter read a little backwards), else `value`.
    fn at_least(floor: u64, value: u64) -> u64 {
        if value.wrapping_sub(floor) < W {
            value
        } else {
            floor
        }
    }
}

impl Slow {
    const UNREAD: Slow = Slow {
        state: Calibration::Unread,
        last: 0,
        lag: 0,
        anchor: (0, 0),
        measure: (0, 0),
        next_span: 0,
    };
}

/// The CPU's counter, for every [`FuturesTimer`](super::FuturesTimer) and
/// [`DefaultTimer`](super::DefaultTimer).
#[cfg(not(awaitkit_loom))]
pub(crate) static CLOCK: Clock<Tsc> = Clock::new(Tsc);

/// [`CLOCK`]'s reading (`None`: no invariant counter, or
/// `AWAITKIT_TIMER_CLOCK=instant`).
#[inline]
pub(crate) fn cheap() -> Option<u64> {
    #[cfg(not(awaitkit_loom))]
    {
        CLOCK.now()
    }
    #[cfg(awaitkit_loom)]
    {
        None
    }
}

/// `at` on `Instant`'s timeline less `lag` (at least [`lag`]`()` keeps it
/// at or below [`CLOCK`]'s readings; `None` until it has been read).
#[cfg(feature = "tokio")]
#[inline]
pub(crate) fn instant_value(at: Instant, lag: u64) -> Option<u64> {
    #[cfg(not(awaitkit_loom))]
    {
        CLOCK.instant_value(at, lag)
    }
    #[cfg(awaitkit_loom)]
    {
        let _ = (at, lag);
        None
    }
}

/// [`CLOCK`]'s lag behind `Instant` now (see [`Clock::lag`]).
#[cfg(feature = "tokio")]
#[inline]
pub(crate) fn lag() -> u64 {
    #[cfg(not(awaitkit_loom))]
    {
        CLOCK.lag()
    }
    #[cfg(awaitkit_loom)]
    {
        0
    }
}

#[cfg(all(test, not(awaitkit_loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A counter and an `Instant` the test moves by hand.
    pub(super) struct Fake {
        pub(super) ticks: Cell<u64>,
        pub(super) at: Cell<u64>,
        origin: Instant,
        present: bool,
        /// The next pairing panics (a test's source; the CPU's cannot).
        pub(super) panic_pairing: Cell<bool>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                ticks: Cell::new(1_000_000),
                at: Cell::new(0),
                origin: Instant::now(),
                present: true,
                panic_pairing: Cell::new(false),
            }
        }
    }

    impl Source for Fake {
        fn available(&self) -> bool {
            self.present
        }
        fn ticks(&self) -> u64 {
            self.ticks.get()
        }
        fn paired(&self) -> (u64, Instant) {
            assert!(!self.panic_pairing.replace(false), "a pairing panics");
            (
                self.ticks.get(),
                self.origin + Duration::from_nanos(self.at.get()),
            )
        }
    }

    /// A run: `Instant` moves by `step` ns at a time; the counter by
    /// `step × rate` ticks (3 ticks a nanosecond, times `skew`), except
    /// where `jump` says otherwise. Returns (Instant ns, counter ns) pairs.
    pub(super) fn run(
        clock: &Clock<Fake>,
        steps: u64,
        step: u64,
        skew: f64,
        mut jump: impl FnMut(u64, u64) -> u64,
    ) -> Vec<(u64, u64)> {
        let fake = &clock.source;
        let mut out = Vec::new();
        for i in 0..steps {
            fake.at.set(fake.at.get() + step);
            let ticks = fake.ticks.get() + (step as f64 * 3.0 * skew) as u64;
            fake.ticks.set(jump(i, ticks));
            out.push((fake.at.get(), clock.now().expect("a counter")));
        }
        out
    }

    /// Calibrated at an exact 3 GHz: `FREEZE_AFTER` and a bit.
    pub(super) fn calibrated() -> Clock<Fake> {
        let clock = Clock::new(Fake::new());
        assert_eq!(clock.now(), Some(START), "the first reading is the origin");
        run(&clock, 120, 1_000_000, 1.0, |_, t| t);
        assert_eq!(clock.lock().state, Calibration::Calibrated);
        clock
    }

    /// Every pair of readings: the counter advanced no more than `Instant`
    /// (plus `excess`), and never went backwards.
    fn never_faster(readings: &[(u64, u64)], excess: u64) {
        for (i, &(at_a, c_a)) in readings.iter().enumerate() {
            for &(at_b, c_b) in &readings[i + 1..] {
                assert!(c_b >= c_a, "backwards: {c_a} then {c_b}");
                assert!(
                    c_b - c_a <= at_b - at_a + excess,
                    "faster than Instant: {} ns of counter over {} ns",
                    c_b - c_a,
                    at_b - at_a
                );
            }
        }
    }

    /// A strict window of `max` calls per `period` on the counter, a call
    /// at every reading: never more than `max` grants within `period` of
    /// `Instant` time (less `slack`).
    fn strict_window_holds(readings: &[(u64, u64)], max: usize, period: u64, slack: u64) {
        let mut granted: Vec<(u64, u64)> = Vec::new();
        for &(at, c) in readings {
            let recent = granted.iter().filter(|&&(_, g)| c - g < period).count();
            if recent < max {
                granted.push((at, c));
            }
        }
        assert!(
            granted.len() > max,
            "the window granted more than one quota"
        );
        for pair in granted.windows(max + 1) {
            assert!(
                pair[max].0 - pair[0].0 + slack >= period,
                "{} grants within {} ns of Instant time",
                max + 1,
                pair[max].0 - pair[0].0
            );
        }
    }

    #[test]
    fn before_calibration_readings_are_instants() {
        let clock = Clock::new(Fake::new());
        assert_eq!(clock.now(), Some(START));
        let readings = run(&clock, 50, 1_000_000, 1.0, |_, t| t);
        for (at, c) in readings {
            assert_eq!(c, START + at);
        }
        assert_eq!(clock.lock().state, Calibration::Measuring);
    }

    #[test]
    fn no_counter_is_none_always() {
        let mut fake = Fake::new();
        fake.present = false;
        let clock = Clock::new(fake);
        assert_eq!(clock.now(), None);
        assert_eq!(clock.now(), None);
    }

    #[test]
    fn an_implausible_or_long_calibration_is_not_trusted() {
        let clock = Clock::new(Fake::new());
        clock.now();
        // 2 s at 1 tick per µs: implausible (and too long).
        run(&clock, 2, 1_000_000_000, 1.0 / 3_000.0, |_, t| t);
        assert_eq!(clock.lock().state, Calibration::Measuring);
        // Then 3 GHz from there: trusted.
        run(&clock, 120, 1_000_000, 1.0, |_, t| t);
        assert_eq!(clock.lock().state, Calibration::Calibrated);
    }

    #[test]
    fn an_exact_counter_runs_slow_by_about_a_part_per_million() {
        let clock = calibrated();
        let readings = run(&clock, 20_000, 500_000, 1.0, |_, t| t);
        never_faster(&readings[..2_000], 0);
        let (first, last) = (readings[0], readings[readings.len() - 1]);
        let (instant, counter) = (last.0 - first.0, last.1 - first.1);
        // 10 s: slow by 2⁻²⁰ (~9.5 µs) at most, plus rounding.
        assert!(counter <= instant, "{counter} > {instant}");
        assert!(instant - counter <= 10_000 + 100, "{counter} vs {instant}");
        strict_window_holds(&readings, 5, 7_000_000, 0);
    }

    #[test]
    fn a_fast_counter_is_held_back_at_every_anchor() {
        let clock = calibrated();
        // 1 % fast from now on.
        let readings = run(&clock, 20_000, 100_000, 1.01, |_, t| t);
        // It gains at most its rate error over one range, and keeps none
        // of it: the counter never gets further ahead than that.
        let start = readings[0];
        for &(at, c) in &readings {
            assert!(
                c - start.1 <= at - start.0 + W / 100 + ANOMALY_SLACK,
                "ahead by {} ns",
                (c - start.1) - (at - start.0)
            );
        }
        never_faster(&readings[..3_000], W / 100 + ANOMALY_SLACK);
    }

    #[test]
    fn a_slow_counter_stays_behind() {
        let clock = calibrated();
        let readings = run(&clock, 5_000, 100_000, 0.99, |_, t| t);
        never_faster(&readings[..3_000], 0);
        strict_window_holds(&readings, 3, 5_000_000, 0);
    }

    #[test]
    fn a_reset_goes_on_from_instant_and_stays_monotonic() {
        let clock = calibrated();
        // The counter restarts from 0 (a resume, a migration) at step 100,
        // and reads a little backwards at 300.
        let readings = run(&clock, 2_000, 100_000, 1.0, |i, t| match i {
            100 => 5,
            300 => t - 30_000,
            _ => t,
        });
        // Ahead of `Instant` by `ANOMALY_SLACK` at most, once per anomaly.
        never_faster(&readings, 2 * ANOMALY_SLACK);
        strict_window_holds(&readings, 4, 3_000_000, 2 * ANOMALY_SLACK);
        // Still counting, at the right rate, after the reset.
        let (a, b) = (readings[500], readings[1_999]);
        let diff = (b.1 - a.1).abs_diff(b.0 - a.0);
        assert!(diff <= ANOMALY_SLACK, "{diff}");
    }

    #[test]
    fn a_forward_jump_is_not_believed() {
        let clock = calibrated();
        // The counter jumps 10 s ahead (a suspend it counted through).
        let readings = run(&clock, 2_000, 100_000, 1.0, |i, t| {
            if i == 100 { t + 30_000_000_000 } else { t }
        });
        never_faster(&readings, ANOMALY_SLACK);
        strict_window_holds(&readings, 4, 3_000_000, ANOMALY_SLACK);
    }

    #[test]
    fn readings_between_anchors_hold_at_base() {
        let clock = calibrated();
        run(&clock, 100, 1_000_000, 1.0, |_, t| t);
        let fake = &clock.source;
        let now = clock.now().unwrap();
        // A reading a little behind (another core's counter): held, not
        // backwards, and no re-anchoring.
        let seq = clock.seq.load(Ordering::Relaxed);
        fake.ticks.set(fake.ticks.get() - 3_000);
        let held = clock.now().unwrap();
        assert!(held <= now && held >= clock.base.load(Ordering::Relaxed));
        assert_eq!(clock.seq.load(Ordering::Relaxed), seq, "no re-anchoring");
    }

    #[test]
    fn the_cpu_counter_is_monotonic_on_each_thread() {
        let Some(_) = cheap() else { return };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut last = cheap().expect("Some always");
                    for _ in 0..200_000 {
                        let now = cheap().expect("Some always");
                        assert!(now >= last, "{now} < {last}");
                        last = now;
                    }
                });
            }
        });
    }

    #[test]
    fn the_cpu_counter_agrees_with_instant() {
        let Some(_) = cheap() else { return };
        // Past calibration (the first reading in this process may have been
        // just now).
        std::thread::sleep(FREEZE_AFTER + Duration::from_millis(20));
        cheap();
        std::thread::sleep(Duration::from_millis(20));
        // Each counter reading bracketed by two `Instant`s.
        let before_start = Instant::now();
        let start = cheap().unwrap();
        let after_start = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let before_end = Instant::now();
        let end = cheap().unwrap();
        let after_end = Instant::now();
        let counted = end - start;
        let shortest = nanos(before_end - after_start);
        let longest = nanos(after_end - before_start);
        // Never more than `Instant` (within the pairing error and one
        // range's rate error); slow by at most a part per million plus the
        // calibration error (a 100 ms calibration: 2 × 1 µs / 100 ms).
        assert!(
            counted <= longest + 2 * PAIRING,
            "{counted} ns > {longest} ns"
        );
        assert!(
            counted + shortest / 20_000 + 2 * PAIRING >= shortest,
            "{counted} ns < {shortest} ns"
        );
    }
}

/// Review tests (issue 17 item 5): rate changes mid-run and the timeline
/// shared with tokio's clock.
#[cfg(all(test, not(awaitkit_loom)))]
mod review_tests {
    use super::tests::{calibrated, run};
    use super::*;

    /// A virtual machine moved to a host whose counter runs at half the
    /// rate: within a second or so the counter is measured again and
    /// follows `Instant` (a limiter on it is not left granting at half its
    /// quota, its waiters sleeping twice as long, for the rest of the run).
    #[test]
    fn a_rate_change_to_slower_is_measured_again() {
        let clock = calibrated();
        let readings = run(&clock, 3_000, 1_000_000, 0.5, |_, t| t);
        let (a, b) = (readings[2_000], readings[2_999]);
        let (instant, counter) = (b.0 - a.0, b.1 - a.1);
        assert!(
            counter + instant / 1_000 >= instant,
            "{counter} ns of counter over {instant} ns of Instant"
        );
    }

    /// A counter that went twice as fast (the other way): measured again
    /// too, so it does not sit up to a range ahead of `Instant` for the
    /// rest of the run (the slack a strict window sees stays "once").
    #[test]
    fn a_rate_change_to_faster_is_measured_again() {
        let clock = calibrated();
        let readings = run(&clock, 3_000, 100_000, 2.0, |_, t| t);
        let late = &readings[2_000..];
        for (i, &(at_a, c_a)) in late.iter().enumerate() {
            for &(at_b, c_b) in &late[i + 1..] {
                assert!(
                    c_b - c_a <= at_b - at_a + W / 64,
                    "{} ns of counter over {} ns of Instant, long after the change",
                    c_b - c_a,
                    at_b - at_a
                );
            }
        }
    }

    /// The value of an `Instant` on the clock's timeline (what
    /// `DefaultTimer::counter_nanos` returns inside a tokio runtime) agrees
    /// with the counter read at that moment, however long the process has
    /// run: a limiter read outside and then inside a runtime must not see
    /// the clock jump ahead by the drift (a part per million of the
    /// uptime: 86 ms a day, granting that much early).
    #[cfg(feature = "tokio")]
    #[test]
    fn an_instant_on_the_timeline_agrees_with_the_counter_after_a_long_run() {
        let clock = calibrated();
        run(&clock, 1_000, 10_000_000, 1.0, |_, t| t);
        let counter = clock.now().unwrap();
        let (_, at) = clock.source.paired();
        let value = clock.instant_value(at, clock.lag()).unwrap();
        assert!(
            value <= counter + 100,
            "the Instant is {} ns ahead of the counter on one timeline",
            value - counter
        );
    }

    /// A source that panics in the slow path (at a re-anchoring, with the
    /// lock held): the lock is poisoned, the parameters were not touched,
    /// and the next readings go on, monotonic and on time.
    #[test]
    fn a_panic_in_the_slow_path_leaves_the_clock_working() {
        let clock = calibrated();
        let before = run(&clock, 10, 100_000, 1.0, |_, t| t);
        let fake = &clock.source;
        fake.at.set(fake.at.get() + 2_000_000);
        fake.ticks.set(fake.ticks.get() + 6_000_000);
        fake.panic_pairing.set(true);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clock.now()));
        assert!(panicked.is_err(), "the re-anchoring paired the counter");
        assert!(clock.slow.is_poisoned());
        let after = run(&clock, 100, 100_000, 1.0, |_, t| t);
        let last = before[before.len() - 1].1;
        assert!(after[0].1 >= last);
        assert_eq!(clock.lock().state, Calibration::Calibrated);
        let (a, b) = (after[0], after[99]);
        assert!((b.1 - a.1).abs_diff(b.0 - a.0) <= 100, "{a:?} {b:?}");
    }
}
