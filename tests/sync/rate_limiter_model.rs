#![cfg(feature = "test-util")]
//! Random quotas and request patterns on a `RateLimiter` driven by a
//! `ManualClock`, checked against a sequential reference model (proptest).
//!
//! The model is written from the quota's promise, not from the crate's code:
//!
//! * **Window** (`Quota::window(max_calls, period)`): every grant is a
//!   `(time, n)` pair; `n` more calls fit at `t` when the calls granted in
//!   `(t - period, t]` plus `n` are at most `max_calls`. The earliest time is
//!   found by trying `now` and every `grant + period` in order.
//! * **GCRA** (`Quota::gcra(max_calls, period, burst)`): interval
//!   `T = ceil(period / max_calls)`, tolerance `burst * T`; `n` calls at `t`
//!   are allowed iff `max(tat, t) + n*T - tolerance <= t`, then
//!   `tat = max(tat, t) + n*T`. A fresh limiter is idle (`tat = 0`).
//! * **FIFO**: a waiter is granted at the earliest time, not before its
//!   arrival nor before the previous waiter's grant, at which its `n` fits.
//!   A cancelled waiter just leaves the queue; a `mem::forget`-ten one stays
//!   and is granted (its grant counts) at its turn.
//!
//! Time moves event by event: the next event is the earliest of the next
//! arrival, cancel or forget, the model's next grant and the clock's next
//! deadline. After every `advance_to` and every action, every live future is
//! polled in arrival order and must be ready exactly when the model granted
//! it (so one nanosecond early or late, or out of order, fails), and
//! `waiting()` and the clock's one armed deadline (the head's due time) must
//! match the model. `try_acquire_n` must succeed exactly when the model says
//! so, or report exactly the model's wait behind the current waiters.

use crate::common;

use awaitkit::rate_limiter::{Quota, RateLimitError};
use awaitkit::time::ManualClock;
use awaitkit::{RateAcquire, RateAcquireN, RateLimit, RateLimiter, Timer};
use common::CountingWaker;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The quota and the request pattern
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Window,
    Gcra { burst: u64 },
}

/// A quota, in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Spec {
    mode: Mode,
    max_calls: u64,
    period: u64,
}

impl Spec {
    fn quota(self) -> Quota {
        let period = Duration::from_nanos(self.period);
        match self.mode {
            Mode::Window => Quota::window(self.max_calls as usize, period).unwrap(),
            Mode::Gcra { burst } => {
                Quota::gcra(self.max_calls as usize, period, burst as usize).unwrap()
            }
        }
    }

    fn max_at_once(self) -> u64 {
        match self.mode {
            Mode::Window => self.max_calls,
            Mode::Gcra { burst } => burst,
        }
    }

    /// GCRA's emission interval (whole nanoseconds, rounded up).
    fn interval(self) -> u64 {
        self.period.div_ceil(self.max_calls)
    }
}

/// A delay, relative to the quota so that boundaries are hit exactly.
#[derive(Clone, Copy, Debug)]
enum Gap {
    Zero,
    Nanos(u64),
    /// `mult * (period or interval) + delta`, at least zero.
    Scaled {
        of_period: bool,
        mult: u64,
        delta: i64,
    },
    /// `frac / 65536` of two periods.
    Frac(u64),
}

impl Gap {
    fn nanos(self, spec: Spec) -> u64 {
        match self {
            Gap::Zero => 0,
            Gap::Nanos(k) => k,
            Gap::Scaled {
                of_period,
                mult,
                delta,
            } => {
                let scale = if of_period {
                    spec.period
                } else {
                    spec.interval()
                };
                (scale * mult).saturating_add_signed(delta)
            }
            Gap::Frac(frac) => ((u128::from(spec.period) * 2 * u128::from(frac)) >> 16) as u64,
        }
    }
}

/// What happens to a waiting acquire that has not been granted yet.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Waits until granted.
    Wait,
    /// Dropped this long after its arrival (at once for zero).
    Cancel(Gap),
    /// `mem::forget`-ten this long after its arrival.
    Forget(Gap),
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Acquire(Fate),
    Try,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    /// Since the previous request's arrival (the first: since the start).
    gap: Gap,
    /// `n = raw % (max_at_once + 2)`: `0..=max_at_once + 1`.
    raw_n: u64,
    call: Call,
}

/// A delay; `crowded` favours zero and a few nanoseconds (arrivals pile up).
fn gap(crowded: bool) -> impl Strategy<Value = Gap> {
    let (zero, nanos) = if crowded { (8, 4) } else { (3, 2) };
    prop_oneof![
        zero => Just(Gap::Zero),
        nanos => (1u64..=3).prop_map(Gap::Nanos),
        4 => (any::<bool>(), 0u64..=2, -1i64..=1).prop_map(|(of_period, mult, delta)| {
            Gap::Scaled { of_period, mult, delta }
        }),
        3 => (0u64..65_536).prop_map(Gap::Frac),
    ]
}

/// A request; `crowded` also favours cancels (places handed on).
fn req(crowded: bool) -> impl Strategy<Value = Req> {
    let (wait, cancel) = if crowded { (2, 4) } else { (3, 2) };
    let fate = prop_oneof![
        wait => Just(Fate::Wait),
        cancel => gap(crowded).prop_map(Fate::Cancel),
        1 => gap(crowded).prop_map(Fate::Forget),
    ];
    let call = prop_oneof![
        4 => fate.prop_map(Call::Acquire),
        1 => Just(Call::Try),
    ];
    (gap(crowded), 0u64..8, call).prop_map(|(gap, raw_n, call)| Req { gap, raw_n, call })
}

/// Periods from one nanosecond to three seconds, sub-millisecond included.
fn period() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(1u64),
        2 => 2u64..=20,
        3 => 20u64..1_000_000,
        3 => 1_000_000u64..=3_000_000_000,
    ]
}

fn window_spec() -> impl Strategy<Value = Spec> {
    (1u64..=5, period()).prop_map(|(max_calls, period)| Spec {
        mode: Mode::Window,
        max_calls,
        period,
    })
}

fn gcra_spec() -> impl Strategy<Value = Spec> {
    (1u64..=5, period(), 1u64..=5).prop_map(|(max_calls, period, burst)| Spec {
        mode: Mode::Gcra { burst },
        max_calls,
        period,
    })
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Model {
    spec: Spec,
    /// Every grant so far: (time, calls).
    grants: Vec<(u64, u64)>,
    /// GCRA's theoretical arrival time.
    tat: u64,
    /// Waiting acquires, FIFO: (id, calls).
    queue: VecDeque<(usize, u64)>,
    /// When each id was granted.
    granted_at: Vec<Option<u64>>,
}

impl Model {
    fn new(spec: Spec, ids: usize) -> Model {
        Model {
            spec,
            grants: Vec::new(),
            tat: 0,
            queue: VecDeque::new(),
            granted_at: vec![None; ids],
        }
    }

    /// Calls granted in `(t - period, t]` (every grant is at or before `t`).
    fn in_window_ending_at(&self, t: u64) -> u64 {
        self.grants
            .iter()
            .filter(|&&(g, _)| g + self.spec.period > t)
            .map(|&(_, n)| n)
            .sum()
    }

    /// The earliest time, not before `now`, at which `n` (at most
    /// `max_at_once`) more calls fit, granted calls all being at or before
    /// `now`.
    fn due(&self, n: u64, now: u64) -> u64 {
        assert!(0 < n && n <= self.spec.max_at_once());
        match self.spec.mode {
            Mode::Window => {
                let mut candidates: Vec<u64> = self
                    .grants
                    .iter()
                    .map(|&(g, _)| g + self.spec.period)
                    .filter(|&t| t > now)
                    .collect();
                candidates.push(now);
                candidates.sort_unstable();
                candidates
                    .into_iter()
                    .find(|&t| self.in_window_ending_at(t) + n <= self.spec.max_calls)
                    .expect("the window empties eventually")
            }
            Mode::Gcra { burst } => {
                let t = self.spec.interval();
                (self.tat + n * t).saturating_sub(burst * t).max(now)
            }
        }
    }

    fn record(&mut self, at: u64, n: u64) {
        self.grants.push((at, n));
        if let Mode::Gcra { .. } = self.spec.mode {
            self.tat = self.tat.max(at) + n * self.spec.interval();
        }
    }

    /// Grants the waiters due at `now`, in order.
    fn process(&mut self, now: u64) {
        while let Some(&(id, n)) = self.queue.front() {
            if self.due(n, now) > now {
                return;
            }
            self.queue.pop_front();
            self.record(now, n);
            self.granted_at[id] = Some(now);
        }
    }

    /// The head waiter's grant time (after `process(now)`).
    fn next_due(&self, now: u64) -> Option<u64> {
        self.queue.front().map(|&(_, n)| self.due(n, now))
    }

    /// When `n` would be granted if it queued now, behind the waiters.
    fn estimate(&self, now: u64, n: u64) -> u64 {
        let mut sim = self.clone();
        let mut t = now;
        for &(_, m) in &self.queue {
            t = sim.due(m, t);
            sim.record(t, m);
        }
        sim.due(n, t)
    }

    fn exceeds(&self, n: u64) -> RateLimitError {
        RateLimitError::ExceedsQuota {
            requested: n as usize,
            max: self.spec.max_at_once() as usize,
        }
    }

    fn try_acquire(&mut self, now: u64, n: u64) -> Result<(), RateLimitError> {
        if n == 0 {
            return Ok(());
        }
        if n > self.spec.max_at_once() {
            return Err(self.exceeds(n));
        }
        let at = if self.queue.is_empty() {
            self.due(n, now)
        } else {
            self.estimate(now, n)
        };
        if at == now {
            self.record(now, n);
            return Ok(());
        }
        Err(RateLimitError::RateLimited {
            wait: Duration::from_nanos(at - now),
        })
    }

    /// An acquire's first poll: `Some(result)` if it completes at once.
    fn acquire(&mut self, id: usize, now: u64, n: u64) -> Option<Result<(), RateLimitError>> {
        if n == 0 {
            return Some(Ok(()));
        }
        if n > self.spec.max_at_once() {
            return Some(Err(self.exceeds(n)));
        }
        if self.queue.is_empty() && self.due(n, now) == now {
            self.record(now, n);
            self.granted_at[id] = Some(now);
            return Some(Ok(()));
        }
        self.queue.push_back((id, n));
        None
    }

    fn cancel(&mut self, id: usize) {
        let pos = self.queue.iter().position(|&(i, _)| i == id);
        self.queue
            .remove(pos.expect("only waiting acquires are cancelled"));
    }
}

/// The most calls in any half-open window `[s, s + len)` of `grants`.
fn busiest_window(grants: &[(u64, u64)], len: u64) -> (u64, u64) {
    grants
        .iter()
        .map(|&(s, _)| {
            let calls = grants
                .iter()
                .filter(|&&(g, _)| s <= g && g < s + len)
                .map(|&(_, n)| n)
                .sum();
            (s, calls)
        })
        .max_by_key(|&(_, calls)| calls)
        .unwrap_or((0, 0))
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

type Clock = ManualClock;

/// The three acquire futures (`RateAcquire` and `RateLimit` for one call).
enum Fut<'a> {
    One(RateAcquire<'a, Clock>),
    Limit(RateLimit<'a, Ready<()>, Clock>),
    N(RateAcquireN<'a, Clock>),
}

impl Fut<'_> {
    fn poll(&mut self, waker: &CountingWaker) -> Poll<Result<(), RateLimitError>> {
        let mut cx = waker.context();
        match self {
            Fut::One(f) => Pin::new(f).poll(&mut cx).map(Ok),
            Fut::Limit(f) => Pin::new(f).poll(&mut cx).map(Ok),
            Fut::N(f) => Pin::new(f).poll(&mut cx),
        }
    }
}

struct Live<'a> {
    id: usize,
    n: u64,
    fut: Fut<'a>,
    waker: CountingWaker,
    /// Wakes seen at the last poll.
    wakes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    // Cancels and forgets at a time run before the arrivals at that time.
    Cancel(usize),
    Forget(usize),
    Arrive(usize),
}

struct Harness<'a> {
    spec: Spec,
    clock: &'a Clock,
    t0: Instant,
    limiter: &'a RateLimiter<Clock>,
    model: Model,
    live: Vec<Live<'a>>,
    /// Grants seen (immediate, `try_acquire_n`, and waiters' polls).
    observed: Vec<(u64, u64)>,
    /// Forgotten acquires: (id, calls).
    forgotten: Vec<(usize, u64)>,
    /// Every acquire's waker, to check that none is leaked.
    wakers: Vec<CountingWaker>,
    now: u64,
}

impl<'a> Harness<'a> {
    fn at(&self, t: u64) -> Instant {
        self.t0 + Duration::from_nanos(t)
    }

    fn clock_deadline(&self) -> Option<u64> {
        self.clock
            .next_deadline()
            .map(|d| d.saturating_duration_since(self.t0).as_nanos() as u64)
    }

    /// Polls every live future in arrival order, then checks the limiter's
    /// visible state against the model.
    fn poll_all(&mut self) -> Result<(), TestCaseError> {
        let now = self.now;
        let mut still = Vec::with_capacity(self.live.len());
        for mut w in std::mem::take(&mut self.live) {
            let expected = self.model.granted_at[w.id];
            let woken = w.waker.wakes() > w.wakes;
            match w.fut.poll(&w.waker) {
                Poll::Pending => {
                    prop_assert_eq!(
                        expected,
                        None,
                        "acquire {} (n = {}) still pending at {} ns",
                        w.id,
                        w.n,
                        now
                    );
                    w.wakes = w.waker.wakes();
                    still.push(w);
                }
                Poll::Ready(Ok(())) => {
                    prop_assert_eq!(
                        expected,
                        Some(now),
                        "acquire {} (n = {}) granted at {} ns",
                        w.id,
                        w.n,
                        now
                    );
                    prop_assert!(woken, "acquire {} granted without a wake", w.id);
                    self.observed.push((now, w.n));
                    self.wakers.push(w.waker);
                }
                Poll::Ready(Err(e)) => {
                    return Err(TestCaseError::fail(format!(
                        "waiting acquire {} (n = {}) failed at {} ns: {e:?}",
                        w.id, w.n, now
                    )));
                }
            }
        }
        self.live = still;
        prop_assert_eq!(
            self.limiter.waiting(),
            self.model.queue.len(),
            "waiting() at {} ns",
            now
        );
        // One timer, armed for the head waiter's due time; none when idle.
        prop_assert_eq!(
            self.clock_deadline(),
            self.model.next_due(now),
            "the clock's next deadline at {} ns",
            now
        );
        Ok(())
    }

    fn arrive(&mut self, id: usize, req: Req) -> Result<(), TestCaseError> {
        let now = self.now;
        let n = req.raw_n % (self.spec.max_at_once() + 2);
        match req.call {
            Call::Try => {
                let got = self.limiter.try_acquire_n(n as usize);
                let expected = self.model.try_acquire(now, n);
                prop_assert_eq!(got, expected, "try_acquire_n({}) at {} ns", n, now);
                if got.is_ok() && n > 0 {
                    self.observed.push((now, n));
                }
            }
            Call::Acquire(fate) => {
                let mut fut = match (n, id % 3) {
                    (1, 0) => Fut::One(self.limiter.acquire()),
                    (1, 1) => Fut::Limit(self.limiter.limit(ready(()))),
                    _ => Fut::N(self.limiter.acquire_n(n as usize)),
                };
                let waker = CountingWaker::new();
                let got = fut.poll(&waker);
                let expected = self.model.acquire(id, now, n);
                match (got, expected) {
                    (Poll::Pending, None) => {
                        let live = Live {
                            id,
                            n,
                            fut,
                            wakes: waker.wakes(),
                            waker,
                        };
                        match fate {
                            Fate::Cancel(d) if d.nanos(self.spec) == 0 => {
                                self.model.cancel(id);
                                drop(live.fut);
                                self.wakers.push(live.waker);
                            }
                            Fate::Forget(d) if d.nanos(self.spec) == 0 => {
                                std::mem::forget(live.fut);
                                self.forgotten.push((id, n));
                                self.wakers.push(live.waker);
                            }
                            _ => self.live.push(live),
                        }
                    }
                    (Poll::Ready(got), Some(expected)) => {
                        prop_assert_eq!(got, expected, "acquire_n({}) at {} ns", n, now);
                        if got.is_ok() && n > 0 {
                            self.observed.push((now, n));
                        }
                        self.wakers.push(waker);
                    }
                    (got, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "acquire {id} (n = {n}) at {now} ns: first poll {got:?}, \
                             the model expects {expected:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops (or forgets) acquire `id` if it still waits.
    fn give_up(&mut self, id: usize, forget: bool) {
        let Some(pos) = self.live.iter().position(|w| w.id == id) else {
            return; // already granted
        };
        let w = self.live.remove(pos);
        if forget {
            std::mem::forget(w.fut);
            self.forgotten.push((id, w.n));
        } else {
            self.model.cancel(id);
            drop(w.fut);
        }
        self.wakers.push(w.waker);
    }
}

fn run(spec: Spec, reqs: Vec<Req>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let limiter = RateLimiter::with_quota(spec.quota()).with_timer(clock.clone());

    // The schedule: arrivals, then cancels and forgets after them.
    let mut actions = Vec::new();
    let mut arrival = 0;
    for (i, r) in reqs.iter().enumerate() {
        arrival += r.gap.nanos(spec);
        actions.push((arrival, Action::Arrive(i)));
        match r.call {
            Call::Acquire(Fate::Cancel(d)) if d.nanos(spec) > 0 => {
                actions.push((arrival + d.nanos(spec), Action::Cancel(i)));
            }
            Call::Acquire(Fate::Forget(d)) if d.nanos(spec) > 0 => {
                actions.push((arrival + d.nanos(spec), Action::Forget(i)));
            }
            _ => {}
        }
    }
    actions.sort();

    let mut h = Harness {
        spec,
        clock: &clock,
        t0,
        limiter: &limiter,
        model: Model::new(spec, reqs.len()),
        live: Vec::new(),
        observed: Vec::new(),
        forgotten: Vec::new(),
        wakers: Vec::new(),
        now: 0,
    };
    let mut next_action = 0;
    let mut steps = 0;
    loop {
        let next = [
            actions.get(next_action).map(|&(t, _)| t),
            h.model.next_due(h.now),
            h.clock_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next else { break };
        steps += 1;
        prop_assert!(steps < 10_000, "no progress at {} ns", h.now);
        prop_assert!(t >= h.now, "an event at {} ns, before {} ns", t, h.now);
        clock.advance_to(h.at(t));
        h.now = t;
        h.model.process(t);
        h.poll_all()?;
        while let Some(&(at, action)) = actions.get(next_action) {
            if at != t {
                break;
            }
            next_action += 1;
            match action {
                Action::Arrive(i) => h.arrive(i, reqs[i])?,
                Action::Cancel(i) => h.give_up(i, false),
                Action::Forget(i) => h.give_up(i, true),
            }
            h.model.process(t);
            h.poll_all()?;
        }
    }

    // Everyone who waited was granted; nobody waits; no timer is armed.
    prop_assert!(h.live.is_empty());
    prop_assert!(h.model.queue.is_empty());
    prop_assert_eq!(limiter.waiting(), 0);
    prop_assert_eq!(clock.sleepers(), 0);
    for &(id, n) in &h.forgotten {
        let at = h.model.granted_at[id].expect("a forgotten acquire's turn comes");
        h.observed.push((at, n));
    }
    // The grants seen are the model's grants.
    let mut seen = h.observed.clone();
    let mut modelled = h.model.grants.clone();
    seen.sort_unstable();
    modelled.sort_unstable();
    prop_assert_eq!(&seen, &modelled);

    // The quota's promise over every window of one period.
    let (start, calls) = busiest_window(&seen, spec.period);
    let most = match spec.mode {
        Mode::Window => spec.max_calls,
        Mode::Gcra { burst } => burst + spec.max_calls - 1,
    };
    prop_assert!(
        calls <= most,
        "{} calls in [{} ns, +{} ns), at most {} allowed",
        calls,
        start,
        spec.period,
        most
    );

    // At rest, and after dropping everything, nothing is left behind.
    let wakers = std::mem::take(&mut h.wakers);
    drop(h);
    drop(limiter);
    prop_assert_eq!(clock.sleepers(), 0);
    for (i, w) in wakers.iter().enumerate() {
        prop_assert_eq!(w.live_clones(), 0, "waker {} still held", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        // Shrunk failures are kept next to this file and replayed first.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn window_grants_match_the_reference_model(
        spec in window_spec(),
        reqs in proptest::collection::vec(req(false), 1..40),
    ) {
        run(spec, reqs)?;
    }

    #[test]
    fn gcra_grants_match_the_reference_model(
        spec in gcra_spec(),
        reqs in proptest::collection::vec(req(false), 1..40),
    ) {
        run(spec, reqs)?;
    }

    /// Arrivals piled up at the same few instants, most of them cancelled:
    /// places handed on, and `try_acquire_n` behind long queues.
    #[test]
    fn crowded_cancels_match_the_reference_model(
        spec in prop_oneof![window_spec(), gcra_spec()],
        reqs in proptest::collection::vec(req(true), 1..60),
    ) {
        run(spec, reqs)?;
    }
}

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

const NS: Duration = Duration::from_nanos(1);

fn pending<F: Future + Unpin>(f: &mut F, waker: &CountingWaker) -> bool {
    Pin::new(f).poll(&mut waker.context()).is_pending()
}

guarded! {
    /// A polled waiting acquire that is `mem::forget`-ten keeps its place:
    /// its turn is granted (and counts) at its due time, and the waiters
    /// behind it are granted on time, not earlier and not later.
    fn forgotten_waiting_acquires_take_their_turn_and_the_rest_are_on_time() {
        for quota in [
            Quota::window(1, 100 * NS).unwrap(),
            Quota::gcra(1, 100 * NS, 1).unwrap(),
        ] {
            let clock = ManualClock::new();
            let t0 = clock.now();
            let limiter = RateLimiter::with_quota(quota).with_timer(clock.clone());
            let at = |ns: u64| t0 + Duration::from_nanos(ns);
            let waker = CountingWaker::new();
            clock.advance_to(at(1_000));
            assert_eq!(limiter.try_acquire(), Ok(()), "{quota:?}");

            // Due at 1100 (forgotten), 1200, 1300 (forgotten), 1400.
            let mut b = limiter.acquire();
            let mut c = limiter.acquire_n(1);
            let mut d = limiter.acquire();
            let mut e = limiter.acquire();
            assert!(pending(&mut b, &waker));
            assert!(pending(&mut c, &waker));
            assert!(pending(&mut d, &waker));
            assert!(pending(&mut e, &waker));
            std::mem::forget(b);
            std::mem::forget(d);
            assert_eq!(limiter.waiting(), 4);
            assert_eq!(clock.next_deadline(), Some(at(1_100)));

            clock.advance_to(at(1_100)); // the forgotten head's turn
            assert_eq!(limiter.waiting(), 3);
            assert_eq!(clock.next_deadline(), Some(at(1_200)));
            clock.advance_to(at(1_199));
            assert!(pending(&mut c, &waker), "{quota:?}: one nanosecond early");
            clock.advance_to(at(1_200));
            assert!(!pending(&mut c, &waker), "{quota:?}: not granted at 1200 ns");

            clock.advance_to(at(1_300)); // the second forgotten one's turn
            assert_eq!(limiter.waiting(), 1);
            clock.advance_to(at(1_399));
            assert!(pending(&mut e, &waker), "{quota:?}: one nanosecond early");
            clock.advance_to(at(1_400));
            assert!(!pending(&mut e, &waker), "{quota:?}: not granted at 1400 ns");

            // The forgotten turns were real grants: the next is at 1500.
            assert_eq!(limiter.waiting(), 0);
            assert_eq!(clock.sleepers(), 0);
            assert_eq!(
                limiter.try_acquire(),
                Err(RateLimitError::RateLimited { wait: 100 * NS }),
                "{quota:?}"
            );
            drop((c, e));
            drop(limiter);
            assert_eq!(clock.sleepers(), 0);
        }
    }

    /// GCRA allows a full burst "after an idle spell", and a fresh limiter
    /// is idle: at its very first instant too.
    fn a_fresh_gcra_limiter_grants_a_full_burst_at_its_first_instant() {
        let clock = ManualClock::new();
        let quota = Quota::gcra(1, Duration::from_secs(1), 2).unwrap();
        let limiter = RateLimiter::with_quota(quota).with_timer(clock.clone());
        assert_eq!(limiter.try_acquire_n(2), Ok(()));
    }
}
