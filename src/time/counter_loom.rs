//! Loom models of the default timers' counter (`counter.rs`): readers on
//! the hot path racing the re-anchoring of the parameters (a seqlock whose
//! writer holds the slow path's lock), after the counter jumped ahead of
//! `Instant` within its range, so re-anchoring moves the offset back.
//!
//! Run with:
//! `RUSTFLAGS="--cfg awaitkit_loom" cargo test --release --lib time::counter_loom -- --test-threads=1`
//!
//! The properties: a reading is never below one that happened before it
//! (on its thread or, published, on another), and never ahead of the
//! model's `Instant` by more than the jump (unseen within one range) plus
//! `ANOMALY_SLACK`.

use super::counter::{ANOMALY_SLACK, Clock, START, Source, W};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use std::time::{Duration, Instant};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// 3 ticks a nanosecond of the model's `Instant`, and a forward jump of
/// `gained` ticks (a virtual machine moved to a host whose counter is
/// ahead): `Instant` is `(ticks - gained) / 3` nanoseconds.
struct Fake {
    ticks: AtomicU64,
    origin: Instant,
    gained: AtomicU64,
}

/// Ticks per reading (every `ticks()` moves the counter on: readings are
/// distinct and ordered).
///
/// A microsecond, under the small jump: after the small re-anchoring the
/// next readings on the new parameters fall below the published `base`
/// (and are held there), and a torn read of the old `base` with the new
/// `offset` would hand out a value below what the re-anchoring returned.
const STEP: u64 = 3 * 1_000;
/// A jump of half a range: an anomaly (the clock goes back to measuring).
const ANOMALY: u64 = 3 * W / 2;
/// A jump of 2 µs: within the pairing tolerance, so re-anchoring keeps the
/// rate and moves the offset back a little (the hot path stays on: a torn
/// read of the old `base` with the new `offset` would go backwards).
const SMALL: u64 = 3 * 2_000;

impl Fake {
    fn instant_of(&self, ticks: u64) -> Instant {
        let gained = self.gained.load(Ordering::SeqCst);
        self.origin + Duration::from_nanos(ticks.saturating_sub(gained) / 3)
    }

    /// The model's `Instant` now, in nanoseconds on the clock's timeline.
    fn instant_value(&self) -> u64 {
        let ticks = self.ticks.load(Ordering::SeqCst);
        START + (ticks - self.gained.load(Ordering::SeqCst)) / 3
    }
}

impl Source for Fake {
    fn available(&self) -> bool {
        true
    }
    fn ticks(&self) -> u64 {
        self.ticks.fetch_add(STEP, Ordering::SeqCst) + STEP
    }
    fn paired(&self) -> (u64, Instant) {
        let ticks = self.ticks();
        (ticks, self.instant_of(ticks))
    }
}

struct World {
    clock: Clock<Fake>,
    /// The largest reading published so far.
    latest: AtomicU64,
    /// The jump, in ticks.
    jump: u64,
}

impl World {
    /// A clock calibrated at 3 GHz, its next reading near the end of its
    /// range, its counter running fast from there.
    fn new(jump: u64) -> Arc<World> {
        let clock = Clock::new(Fake {
            ticks: AtomicU64::new(1_000_000),
            origin: Instant::now(),
            gained: AtomicU64::new(0),
        });
        let first = clock.now().expect("a counter");
        // Past the calibration span: the next reading calibrates.
        clock
            .source
            .ticks
            .fetch_add(3 * 120_000_000, Ordering::SeqCst);
        let calibrated = clock.now().expect("a counter");
        assert!(calibrated > first);
        // The counter jumps half a range ahead of `Instant`, to two
        // readings short of the end of the range (unseen until then):
        // re-anchoring will move the offset back.
        clock
            .source
            .ticks
            .fetch_add(3 * W - 2 * STEP, Ordering::SeqCst);
        clock.source.gained.fetch_add(jump, Ordering::SeqCst);
        Arc::new(World {
            clock,
            latest: AtomicU64::new(calibrated),
            jump,
        })
    }

    /// Reads `n` times, checking every property.
    fn read(&self, n: usize) {
        let mut mine = 0;
        for _ in 0..n {
            let seen = self.latest.load(Ordering::SeqCst);
            let now = self.clock.now().expect("a counter");
            assert!(
                now >= seen,
                "below a reading published before: {now} < {seen}"
            );
            assert!(now >= mine, "below this thread's last reading");
            let instant = self.clock.source.instant_value();
            let allowed = instant + self.jump / 3 + ANOMALY_SLACK + STEP / 3;
            assert!(now <= allowed, "ahead of Instant: {now} > {allowed}");
            self.latest.fetch_max(now, Ordering::SeqCst);
            mine = now;
        }
    }
}

fn readers_race(jump: u64) {
    model(move || {
        let world = World::new(jump);
        let others: Vec<_> = (0..2)
            .map(|_| {
                let world = world.clone();
                thread::spawn(move || world.read(2))
            })
            .collect();
        world.read(1);
        for other in others {
            other.join().unwrap();
        }
    });
}

/// An anomaly: the re-anchoring reader sends the clock back to measuring
/// while two others read.
#[test]
fn loom_counter_readers_race_re_anchoring() {
    readers_race(ANOMALY);
}

/// A small jump: the re-anchoring moves the offset back by 2 µs with the
/// hot path on, while two others read (the seqlock's re-check is what
/// keeps a reader from mixing the old `base` with the new `offset`).
#[test]
fn loom_counter_readers_race_a_small_re_anchoring() {
    readers_race(SMALL);
}
