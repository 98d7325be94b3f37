//! One rate limiter's shared state: the quota's algorithm, the FIFO queue of
//! waiters, and the driver that grants them when their time comes.
//!
//! # Design
//!
//! * **Strict window**: a [`Log`] of the last period's grants under the
//!   mutex. **GCRA**: one atomic theoretical arrival time, so a check with
//!   nobody waiting is a clock read and a compare-and-swap. Its parameters
//!   sit behind a sequence counter, so a check never mixes an old interval
//!   with a new burst.
//! * **Waiters** queue in a slab FIFO under the mutex. Only the head can be
//!   next, so only the head's time matters.
//! * **The driver** owns the limiter's one timer, armed for the head's time.
//!   When it fires, the driver's waker grants every waiter that is due, in
//!   order, on their behalf, re-arms for the new head, and wakes them. The
//!   waiting futures own no timer, so a future that is dropped costs nothing
//!   to the others, and one that is `mem::forget`-ten is granted (and its
//!   grant wasted) like any other: the queue never wedges. Whoever wants to
//!   drive while another thread drives leaves a note, and the driver makes
//!   one more pass (the protocol is in `driver.rs`, with its loom models).
//!
//! # User code
//!
//! Wakers (`clone`, `wake`, `drop`) are user code: they may panic or call
//! back into this limiter. None of them runs under the state lock or while
//! the driver's flag is busy: a waker is cloned before locking, a replaced
//! or released waker is taken out under the lock and dropped after it, and
//! the driver collects the granted waiters' wakers, settles its flag, and
//! only then wakes them all — every one of them, even when one panics.
//!
//! A panic in that user code propagates, once the limiter's state is
//! settled, to the user's own call that ran it (a poll, a drop, a
//! `set_quota`), or is discarded while the thread already unwinds. On the
//! timer's path (the driver's waker, run by the timer: futures-timer's
//! global helper thread by default, tokio's or async-io's driver, a
//! `ManualClock::advance`) every panic is caught and discarded after the
//! panic hook has reported it: there is no task of ours to hand the wake-up
//! to, and one bad waker must neither kill a thread the whole process shares
//! nor keep the other waiters from being woken.
//!
//! The timer itself is user code too (`TokioTimer` panics outside a tokio
//! runtime). A driver pass that panics leaves the driver *stalled*: nothing
//! armed, every waiter woken, and the next waiter to poll (or be dropped, or
//! `set_quota`) drives again from its own context.

use super::driver::{self, Pass, Ran};
use super::window::{self, Log};
use super::{Mode, Quota, QuotaError, RateLimitError};
use crate::time::{MAX_SLEEP, Timer};
use crate::unwind::{self, Panics, Payload};
use crate::wait_queue::WaitQueue;
use crate::wake_list::WakeList as Wakers;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// `ctl`: strict-window mode (every check takes the lock).
const WINDOW: u64 = 1;
/// `ctl`: someone waits (checks take the lock: FIFO, no barging).
const QUEUED: u64 = 2;
/// `ctl`: the low bit of the parameters' sequence number, set while they
/// are written.
const WRITING: u64 = 4;

/// Nanoseconds in `d`, saturating.
#[inline]
pub(super) fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

pub(crate) struct Shared<T: Timer> {
    timer: T,
    epoch: Instant,
    /// The timer's counter at the epoch ([`Timer::counter_nanos`]; 0 when
    /// it has none).
    counter_origin: u64,
    /// `WINDOW` and `QUEUED` flags and the sequence number of GCRA's
    /// parameters (odd — `WRITING` set — while they change), so the
    /// lock-free check reads one word to know it may go ahead.
    ctl: AtomicU64,
    /// GCRA's theoretical arrival time, in nanoseconds since the epoch
    /// (`u64::MAX`: never again).
    tat: AtomicU64,
    /// GCRA's parameters, written under the lock between two increments of
    /// the sequence number in `ctl`.
    interval: AtomicU64,
    burst: AtomicU64,
    tolerance: AtomicU64,
    state: Mutex<State>,
    driver: Driver<T::Sleep>,
}

struct State {
    quota: Quota,
    /// Window mode, in nanoseconds and calls.
    period: u64,
    max_calls: u64,
    quantum: u64,
    /// The latest time read (a clock that goes backwards is held here).
    last: u64,
    log: Log,
    queue: Queue,
    /// The generation of `quota` (a [`KeyedRateLimiter`]'s quota changes
    /// are numbered, so an older one never overwrites a newer one).
    ///
    /// [`KeyedRateLimiter`]: crate::KeyedRateLimiter
    generation: u64,
    /// Bumped by every quota change: a GCRA grant records it, and is given
    /// back only if the quota has not changed since (a change rescales the
    /// arrival time, so an equal value no longer means "nothing granted
    /// after it").
    quota_changes: u64,
}

impl<T: Timer> Shared<T> {
    /// A limiter for `quota` on `timer`. The bounds are those of the
    /// driver's waker, which may run on any thread.
    pub(crate) fn new(quota: Quota, timer: T) -> Arc<Self>
    where
        T: Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        Self::with_generation(quota, timer, 0)
    }

    /// [`new`](Shared::new), with the quota's generation (see
    /// [`set_quota_at`](Shared::set_quota_at)).
    pub(crate) fn with_generation(quota: Quota, timer: T, generation: u64) -> Arc<Self>
    where
        T: Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        // The counter first: an epoch read after it never maps a deadline
        // early.
        // (User code: if the clock panics, the timer is dropped before that
        // panic propagates, not during its unwind.)
        let (timer, origin) =
            crate::unwind::keeping(timer, |t| (t.counter_nanos().unwrap_or(0), t.now()));
        Self::with_origin(quota, timer, generation, origin)
    }

    /// [`with_generation`](Shared::with_generation) on a given time origin
    /// (the timer's counter and `Instant` at the epoch): a keyed limiter
    /// gives its own, so a key's state moves between its compact form and
    /// a `Shared` without converting times.
    pub(super) fn with_origin(
        quota: Quota,
        timer: T,
        generation: u64,
        (counter_origin, epoch): (u64, Instant),
    ) -> Arc<Self>
    where
        T: Send + Sync + 'static,
        T::Sleep: Send + 'static,
    {
        Arc::new_cyclic(|weak: &Weak<Self>| {
            let waker = Waker::from(Arc::new(DriverWaker(weak.clone())));
            let shared = Shared {
                timer,
                epoch,
                counter_origin,
                ctl: AtomicU64::new(if quota.burst().is_none() { WINDOW } else { 0 }),
                tat: AtomicU64::new(0),
                interval: AtomicU64::new(0),
                burst: AtomicU64::new(0),
                tolerance: AtomicU64::new(0),
                state: Mutex::new(State {
                    quota,
                    period: 0,
                    max_calls: 0,
                    quantum: 0,
                    last: 0,
                    log: Log::default(),
                    queue: WaitQueue::new(),
                    generation,
                    quota_changes: 0,
                }),
                driver: Driver {
                    flag: driver::Flag::new(),
                    armed: Mutex::new(Armed {
                        at: None,
                        slack: 0,
                        sleep: Box::pin(None),
                    }),
                    waker,
                },
            };
            let mut state = shared.lock();
            shared.apply(&mut state, quota);
            drop(state);
            shared
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock leaves the state consistent before
        // anything that can panic (allocation, a user's clock), so poisoning
        // is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock, in nanoseconds since the epoch.
    #[inline(always)]
    fn now_raw(&self) -> u64 {
        match self.timer.counter_nanos() {
            Some(counter) => counter.saturating_sub(self.counter_origin),
            None => nanos(self.timer.now().saturating_duration_since(self.epoch)),
        }
    }

    /// `raw`, read before taking the lock, never behind a time already used.
    #[inline]
    fn held(state: &mut State, raw: u64) -> u64 {
        let now = raw.max(state.last);
        state.last = now;
        now
    }

    pub(crate) fn timer(&self) -> &T {
        &self.timer
    }

    /// Sets the quota's parameters (under the lock).
    fn apply(&self, state: &mut State, quota: Quota) {
        state.quota = quota;
        match quota.mode {
            Mode::Window => {
                state.period = nanos(quota.period);
                state.max_calls = quota.max_calls as u64;
                state.quantum = window::quantum(state.max_calls, state.period);
            }
            Mode::Gcra { burst } => {
                let interval = gcra_interval(&quota).unwrap_or(1);
                // A seqlock write (the lock makes this the only writer).
                self.ctl.fetch_add(WRITING, Ordering::Relaxed);
                fence(Ordering::Release);
                self.interval.store(interval, Ordering::Relaxed);
                self.burst.store(burst as u64, Ordering::Relaxed);
                let tolerance = interval.saturating_mul(burst as u64);
                self.tolerance.store(tolerance, Ordering::Relaxed);
                self.ctl.fetch_add(WRITING, Ordering::Release);
            }
        }
    }

    /// GCRA's parameters as one consistent set (under the lock, or when
    /// `ctl` was seen without `WRITING` before and unchanged after).
    fn gcra_params_relaxed(&self) -> window::Gcra {
        window::Gcra {
            interval: self.interval.load(Ordering::Relaxed),
            burst: self.burst.load(Ordering::Relaxed),
            tolerance: self.tolerance.load(Ordering::Relaxed),
        }
    }

    /// GCRA's parameters, read as one consistent set from any thread.
    fn gcra_params(&self) -> window::Gcra {
        loop {
            let ctl = self.ctl.load(Ordering::Acquire);
            if ctl & WRITING == 0 {
                let params = self.gcra_params_relaxed();
                fence(Ordering::Acquire);
                if self.ctl.load(Ordering::Relaxed) & !QUEUED == ctl & !QUEUED {
                    return params;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// The lock-free GCRA check, when nobody waits (see [`Fast`]).
    ///
    /// Inlined into every caller's check: its outcome is a register pair,
    /// and building the error is left to the caller's out-of-line slow
    /// path.
    #[inline(always)]
    fn gcra_fast(&self, n: u64) -> Fast {
        let ctl = self.ctl.load(Ordering::Acquire);
        if ctl & (WINDOW | QUEUED | WRITING) != 0 {
            return Fast::Locked;
        }
        let params = self.gcra_params_relaxed();
        fence(Ordering::Acquire);
        // Every quota allows one call at once (`burst >= 1`): only more
        // need the burst.
        if self.ctl.load(Ordering::Relaxed) != ctl || (n > 1 && n > params.burst) {
            return Fast::Locked;
        }
        let now = self.now_raw();
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            match params.check(current, now, n) {
                Ok(tat) => match self.tat.compare_exchange_weak(
                    current,
                    tat,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Fast::Granted,
                    Err(actual) => current = actual,
                },
                Err(at) => return Fast::Limited { now, at },
            }
        }
    }

    /// Grants `n` at `now` if the quota allows (under the lock; `n` fits
    /// the quota), or says when it would.
    #[inline(always)]
    fn grant(&self, state: &mut State, now: u64, n: u64) -> Result<Grant, u64> {
        match state.quota.mode {
            Mode::Window => {
                state.log.expire(now, state.period);
                let at = state.log.earliest(now, n, state.max_calls, state.period);
                if at > now {
                    return Err(at);
                }
                Ok(Grant::Window(state.log.record(now, n, state.quantum)))
            }
            Mode::Gcra { .. } => {
                let params = self.gcra_params();
                let mut before = self.tat.load(Ordering::Acquire);
                loop {
                    let after = params.check(before, now, n)?;
                    match self.tat.compare_exchange_weak(
                        before,
                        after,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            return Ok(Grant::Gcra {
                                before,
                                after,
                                quota_changes: state.quota_changes,
                            });
                        }
                        Err(actual) => before = actual,
                    }
                }
            }
        }
    }

    /// Takes back a grant nobody observed (its acquire was dropped between
    /// the grant and its next poll). A window grant leaves the log; a GCRA
    /// grant only if nothing was granted after it and the quota has not
    /// changed since (a change rescales the arrival time: a later grant may
    /// then end at the very value this one wrote).
    fn unrecord(&self, state: &mut State, grant: Grant, n: u64) {
        match grant {
            Grant::Window(index) => state.log.unrecord(index, n),
            Grant::Gcra {
                before,
                after,
                quota_changes,
            } => {
                if quota_changes == state.quota_changes {
                    let _taken_back = self.tat.compare_exchange(
                        after,
                        before,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
        }
    }

    /// When `n` more would be granted, after everyone already waiting.
    fn estimate(&self, state: &State, now: u64, n: u64) -> u64 {
        let max = state.quota.max_at_once() as u64;
        let queue = &state.queue;
        let waiting = queue.iter().map(|i| queue[i].n).filter(|&m| m <= max);
        match state.quota.mode {
            Mode::Window => {
                let (period, max_calls) = (state.period, state.max_calls);
                let mut log = state.log.clone();
                let mut t = now;
                for m in waiting.chain([n]) {
                    log.expire(t, period);
                    t = log.earliest(t, m, max_calls, period);
                    if t == u64::MAX {
                        break;
                    }
                    log.expire(t, period);
                    log.record(t, m, state.quantum);
                }
                t
            }
            Mode::Gcra { .. } => {
                let params = self.gcra_params();
                let mut tat = self.tat.load(Ordering::Acquire);
                let mut t = now;
                for m in waiting.chain([n]) {
                    if let Err(at) = params.check(tat, t, m) {
                        t = at;
                    }
                    match params.check(tat, t, m) {
                        Ok(next) => tat = next,
                        Err(_) => return u64::MAX,
                    }
                }
                t
            }
        }
    }

    // -----------------------------------------------------------------------
    // The public operations
    // -----------------------------------------------------------------------

    /// A non-waiting check, inlined into the caller: with nobody waiting,
    /// GCRA's is lock-free, down to the compare-and-swap; the window's
    /// common case is decided right after locking; everything else (a
    /// refusal's error, waiters, more than the quota) is out of line.
    #[inline(always)]
    pub(crate) fn try_acquire(&self, n: u64) -> Result<(), RateLimitError> {
        if n == 0 {
            return Ok(());
        }
        match self.gcra_fast(n) {
            Fast::Granted => Ok(()),
            Fast::Limited { now, at } => Err(limited(now, at)),
            Fast::Locked => self.try_acquire_under_lock(n),
        }
    }

    /// [`try_acquire`](Shared::try_acquire) under the lock. The window's
    /// common case — nobody waits, `n` fits the quota — is decided here;
    /// anything else is left to
    /// [`try_acquire_locked`](Shared::try_acquire_locked).
    #[inline(always)]
    fn try_acquire_under_lock(&self, n: u64) -> Result<(), RateLimitError> {
        // The clock (user code) is read before locking.
        let raw = self.now_raw();
        let mut state = self.lock();
        let now = Self::held(&mut state, raw);
        if matches!(state.quota.mode, Mode::Window)
            && state.queue.is_empty()
            && n <= state.max_calls
        {
            let state = &mut *state;
            state.log.expire(now, state.period);
            let at = state.log.earliest(now, n, state.max_calls, state.period);
            if at <= now {
                state.log.record(now, n, state.quantum);
                return Ok(());
            }
            return Err(limited(now, at));
        }
        self.try_acquire_locked(state, now, n)
    }

    /// The check under the lock, at `now` (read before taking it).
    #[inline(never)]
    fn try_acquire_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        now: u64,
        n: u64,
    ) -> Result<(), RateLimitError> {
        check_fits(&state.quota, n)?;
        if !state.queue.is_empty() {
            let error = limited(now, self.estimate(&state, now, n));
            drop(state);
            if self.driver.flag.is_stalled() {
                // A timer panic stalled the driver and the waiters may never
                // poll again (a forgotten acquire): recover here.
                unwind::resume(self.drive());
            }
            return Err(error);
        }
        match self.grant(&mut state, now, n) {
            Ok(_) => Ok(()),
            Err(at) => Err(limited(now, at)),
        }
    }

    /// Polls an acquisition of `waiter.n` calls (see [`Waiter`]).
    fn poll_acquire(
        &self,
        waiter: &mut Waiter,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RateLimitError>> {
        assert!(
            !waiter.done,
            "a rate limiter acquire was polled after it completed"
        );
        if waiter.unseen.is_some() {
            return waiter.finish();
        }
        if let Some((i, ticket)) = waiter.slot {
            return self.poll_queued(waiter, i, ticket, cx);
        }
        let n = waiter.n;
        if n == 0 {
            waiter.done = true;
            return Poll::Ready(Ok(()));
        }
        if let Fast::Granted = self.gcra_fast(n) {
            waiter.done = true;
            return Poll::Ready(Ok(()));
        }
        // A waker is cloned only to wait, with the lock released; then the
        // lock is taken again and everything is looked at afresh.
        let mut fresh: Option<Waker> = None;
        let first = loop {
            // The clock (user code) is read before locking.
            let raw = self.now_raw();
            let mut state = self.lock();
            let now = Self::held(&mut state, raw);
            let first = state.queue.is_empty();
            let settled = match check_fits(&state.quota, n) {
                Err(error) => Some(NodeState::Failed(error)),
                Ok(()) if first => self.grant(&mut state, now, n).ok().map(NodeState::Granted),
                Ok(()) => None,
            };
            if let Some(settled) = settled {
                drop(state);
                waiter.unseen = Some(settled);
                // User code: if it panics, the next poll still returns the
                // outcome, and a drop gives the grant back.
                drop(fresh);
                return waiter.finish();
            }
            let Some(waker) = fresh.take() else {
                drop(state);
                fresh = Some(cx.waker().clone());
                continue;
            };
            waiter.slot = Some(state.queue.push(Node {
                n,
                waker: Some(waker),
                state: NodeState::Queued,
            }));
            if first {
                self.ctl.fetch_or(QUEUED, Ordering::AcqRel);
            }
            break first;
        };
        if first || self.driver.flag.is_stalled() {
            // The new head: arm the timer for it (or recover a stalled
            // driver).
            unwind::resume(self.drive());
        }
        Poll::Pending
    }

    /// Polls a waiter that is in the queue, or was settled there.
    fn poll_queued(
        &self,
        waiter: &mut Waiter,
        i: usize,
        ticket: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), RateLimitError>> {
        // A new waker is cloned with the lock released, then the lock is
        // taken again (the waiter may have been granted meanwhile).
        let mut fresh: Option<Waker> = None;
        loop {
            let mut state = self.lock();
            let settled = match state.queue.owned_state(i, ticket) {
                NodeState::Queued => {
                    let node = &mut state.queue[i];
                    if node.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        drop(state);
                    } else if let Some(new) = fresh.take() {
                        let old = node.waker.replace(new);
                        drop(state);
                        drop(old); // user code: after unlocking
                    } else {
                        drop(state);
                        fresh = Some(cx.waker().clone());
                        continue;
                    }
                    if self.driver.flag.is_stalled() {
                        unwind::resume(self.drive());
                    }
                    return Poll::Pending;
                }
                NodeState::Vacant => unreachable!("a waiter's node is freed only by its owner"),
                settled => settled,
            };
            let stale = state.queue.vacate(i);
            drop(state);
            waiter.slot = None;
            waiter.unseen = Some(settled);
            // User code: if it panics, the next poll still returns the
            // outcome, and a drop gives the grant back.
            drop((stale, fresh));
            return waiter.finish();
        }
    }

    /// A waiter's drop: leaves the queue (the next waiter moves up at once),
    /// or gives back a grant it never saw.
    ///
    /// A panic of the user code this runs (its own waker's drop, the wakers
    /// of the waiters it lets through) propagates after everything is
    /// settled — or is discarded if the thread is already unwinding.
    fn cancel(&self, waiter: &mut Waiter) {
        if let Some(NodeState::Granted(grant)) = waiter.unseen.take() {
            // Settled out of the queue, never returned: give it back.
            let mut state = self.lock();
            self.unrecord(&mut state, grant, waiter.n);
            let redrive = !state.queue.is_empty();
            drop(state);
            if redrive || self.driver.flag.is_stalled() {
                unwind::resume(self.drive());
            }
            return;
        }
        let Some((i, ticket)) = waiter.slot.take() else {
            return;
        };
        let mut state = self.lock();
        let redrive = match state.queue.owned_state(i, ticket) {
            NodeState::Vacant => return,
            NodeState::Queued => {
                let was_head = state.queue.head() == Some(i);
                state.queue.unlink(i);
                if state.queue.is_empty() {
                    self.ctl.fetch_and(!QUEUED, Ordering::AcqRel);
                }
                was_head
            }
            NodeState::Granted(grant) => {
                let n = state.queue[i].n;
                self.unrecord(&mut state, grant, n);
                !state.queue.is_empty()
            }
            NodeState::Failed(_) => false,
        };
        let waker = state.queue.vacate(i);
        drop(state);
        let mut panics = Panics::default();
        if redrive || self.driver.flag.is_stalled() {
            panics.keep(self.drive());
        }
        panics.catch(|| drop(waker));
        panics.resume();
    }

    pub(crate) fn quota(&self) -> Quota {
        self.lock().quota
    }

    pub(crate) fn set_quota(&self, quota: Quota) -> Result<(), QuotaError> {
        self.set_quota_at(quota, None)
    }

    /// Sets the quota, unless `generation` is given and not newer than the
    /// quota's: a keyed limiter numbers its changes, and applies them with
    /// no lock of its own held, so two changes may arrive out of order.
    pub(crate) fn set_quota_at(
        &self,
        quota: Quota,
        generation: Option<u64>,
    ) -> Result<(), QuotaError> {
        // GCRA rescales at the current time: the clock (user code) is read
        // before locking.
        let raw = match self.ctl.load(Ordering::Relaxed) & WINDOW {
            0 => self.now_raw(),
            _ => 0,
        };
        let mut state = self.lock();
        if std::mem::discriminant(&quota.mode) != std::mem::discriminant(&state.quota.mode) {
            return Err(QuotaError::ModeChange);
        }
        if let Some(generation) = generation {
            if generation <= state.generation {
                return Ok(());
            }
            state.generation = generation;
        }
        if quota == state.quota {
            // Nothing changes, so no pass is asked of the driver (a clock
            // or a sleep that sets the quota it reads, from the driver's own
            // pass, would otherwise ask for passes forever); a stalled
            // driver is still driven again, as by any call. The time read
            // is held, as a change holds it.
            if let Mode::Gcra { .. } = quota.mode {
                Self::held(&mut state, raw);
            }
            drop(state);
            if self.driver.flag.is_stalled() {
                unwind::resume(self.drive());
            }
            return Ok(());
        }
        let old = state.quota;
        self.apply(&mut state, quota);
        state.quota_changes = state.quota_changes.wrapping_add(1);
        if let (Mode::Gcra { .. }, Some(old_interval)) = (quota.mode, gcra_interval(&old)) {
            // The calls still owed are owed at the new rate.
            let now = Self::held(&mut state, raw);
            let interval = self.gcra_params().interval;
            let _rescaled = self
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    let owed = u128::from(tat.checked_sub(now)?);
                    let owed = (owed * u128::from(interval)).div_ceil(u128::from(old_interval));
                    Some(u64::try_from(u128::from(now) + owed).unwrap_or(u64::MAX))
                });
        }
        let waiting = !state.queue.is_empty();
        drop(state);
        if waiting || self.driver.flag.is_stalled() {
            unwind::resume(self.drive());
        }
        Ok(())
    }

    pub(crate) fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// `(calls that would be granted now, when one more would be granted in
    /// nanoseconds from now — `u64::MAX` for never —, waiters)`, taking
    /// nothing. The clock is read before locking; no user code runs under
    /// the lock.
    pub(crate) fn snapshot(&self) -> (u64, u64, usize) {
        let raw = self.now_raw();
        let mut state = self.lock();
        let now = Self::held(&mut state, raw);
        let waiting = state.queue.len();
        let remaining = if waiting > 0 {
            0 // the waiters come first
        } else {
            match state.quota.mode {
                Mode::Window => {
                    let mut log = state.log.clone();
                    log.expire(now, state.period);
                    state.max_calls.saturating_sub(log.total())
                }
                Mode::Gcra { .. } => {
                    let params = self.gcra_params();
                    let tat = self.tat.load(Ordering::Acquire);
                    if tat == u64::MAX {
                        0
                    } else {
                        let ahead = u128::from(tat.saturating_sub(now));
                        let room = (u128::from(params.burst) * u128::from(params.interval))
                            .saturating_sub(ahead);
                        let calls = room / u128::from(params.interval.max(1));
                        u64::try_from(calls).unwrap_or(u64::MAX).min(params.burst)
                    }
                }
            }
        };
        let next = if remaining > 0 {
            0
        } else {
            match self.estimate(&state, now, 1) {
                u64::MAX => u64::MAX,
                at => at.saturating_sub(now),
            }
        };
        (remaining, next, waiting)
    }

    /// Gives a limiter built by [`with_origin`](Shared::with_origin), that
    /// nobody has used yet, a key's algorithm state (a keyed limiter
    /// promoting a key from its compact form). `now` is the latest time the
    /// keyed limiter used. Runs no user code.
    pub(super) fn seed(&self, seed: Seed, now: u64) {
        let mut state = self.lock();
        state.last = state.last.max(now);
        match seed {
            Seed::Gcra(tat) => self.tat.store(tat, Ordering::Release),
            Seed::Window(log) => state.log = log,
        }
    }

    /// Holds `now` (a time the keyed limiter owning this key read for it:
    /// a sweep's, a check's, a quota change's): no later grant is earlier.
    /// Runs no user code.
    pub(super) fn hold(&self, now: u64) {
        let mut state = self.lock();
        Self::held(&mut state, now);
    }

    /// Takes the algorithm state out of a limiter that nobody waits on and
    /// nobody else holds (a keyed limiter demoting a key to its compact
    /// form), with the latest time it used (no grant is later); `None`
    /// while anyone waits. Runs no user code.
    pub(super) fn take_seed(&self) -> Option<(Seed, u64)> {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            return None;
        }
        let seed = match state.quota.mode {
            Mode::Window => Seed::Window(std::mem::take(&mut state.log)),
            Mode::Gcra { .. } => Seed::Gcra(self.tat.load(Ordering::Acquire)),
        };
        Some((seed, state.last))
    }

    // -----------------------------------------------------------------------
    // The driver
    // -----------------------------------------------------------------------

    /// Grants every waiter that is due and arms the timer for the new head;
    /// then, with the flag settled and no lock held, wakes the granted
    /// waiters. Runs on one thread at a time; a call while it runs makes it
    /// pass once more.
    ///
    /// Never unwinds: the first panic of the user code it ran (a waker, the
    /// timer) is returned, for the caller to propagate or discard. A pass
    /// that panics stalls the driver and wakes every waiter (see the module
    /// docs).
    #[must_use = "the caller propagates or discards the panic"]
    fn drive(&self) -> Option<Payload> {
        let mut wakers = Wakers::default();
        let mut panics = Panics::default();
        let ran = self.driver.flag.run(|| {
            let outcome = match catch_unwind(AssertUnwindSafe(|| self.pass(&mut wakers))) {
                Ok(outcome) => outcome,
                Err(payload) => {
                    panics.keep(Some(payload));
                    Pass::Failed
                }
            };
            if outcome == Pass::Failed {
                // Still the driver: drop whatever was half armed, so the
                // next driver starts from a clean timer.
                panics.catch(|| self.disarm());
            }
            outcome
        });
        if ran == Ran::Stalled {
            // Nothing is armed: every waiter polls again, and the first to
            // do so drives from its own task.
            let mut state = self.lock();
            let waiting: Vec<usize> = state.queue.iter().collect();
            for i in waiting {
                wakers.push(state.queue[i].waker.take());
            }
        }
        wakers.wake_all_into(&mut panics);
        panics.take()
    }

    /// One pass of the driver: grants the waiters that are due (collecting
    /// their wakers) and arms the timer (see [`arm`](Shared::arm)).
    fn pass(&self, wakers: &mut Wakers) -> Pass {
        // The clock (user code) is read before locking.
        let raw = self.now_raw();
        let next = {
            let mut state = self.lock();
            let now = Self::held(&mut state, raw);
            self.process(&mut state, now, wakers)
        };
        self.arm(next)
    }

    /// Grants the waiters that are due at `now`, in order, moving their
    /// wakers to `wakers`. Returns the head's time, if anyone is left.
    fn process(&self, state: &mut State, now: u64, wakers: &mut Wakers) -> Option<u64> {
        let max = state.quota.max_at_once() as u64;
        while let Some(i) = state.queue.head() {
            let n = state.queue[i].n;
            let settled = if n > max {
                NodeState::Failed(exceeds(&state.quota, n))
            } else {
                match self.grant(state, now, n) {
                    Ok(grant) => NodeState::Granted(grant),
                    Err(at) => return Some(at),
                }
            };
            state.queue.unlink(i);
            let node = &mut state.queue[i];
            node.state = settled;
            wakers.push(node.waker.take());
        }
        self.ctl.fetch_and(!QUEUED, Ordering::AcqRel);
        None
    }

    /// Forgets the armed timer (after a failed pass).
    fn disarm(&self) {
        let mut armed = self.driver.armed.lock().unwrap_or_else(|p| p.into_inner());
        armed.at = None;
        armed.slack = 0;
        armed.sleep.set(None);
    }

    /// Arms the timer for the head's time `next` (drops it when nobody
    /// waits, or when the head can never be granted: only a quota change,
    /// which drives, can change that).
    ///
    /// `Again` when that time has already come. A sleep that completes
    /// before it (a coarse timer rounding deadlines down; the [`Timer`]
    /// contract allows it) is replaced by one a little later — `slack`
    /// doubles from a microsecond with every early completion — and polled
    /// at once, in this pass: the driver never wakes itself to "yield"
    /// (nothing would poll it later but itself: a busy loop until the
    /// deadline). A timer whose sleeps keep completing early however late
    /// they are set is given up on: `Failed` stalls the driver without a
    /// panic, and the waiters drive from their own tasks.
    fn arm(&self, next: Option<u64>) -> Pass {
        /// Early completions in one pass before giving up on the timer
        /// (the slack is then about 12 days).
        const MAX_EARLY: u32 = 40;
        let mut armed = self.driver.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Armed {
            at: armed_at,
            slack,
            sleep,
        } = &mut *armed;
        let deadline = next.and_then(|at| {
            let instant = self.epoch.checked_add(Duration::from_nanos(at))?;
            (at != u64::MAX).then_some((at, instant))
        });
        let Some((at, mut deadline)) = deadline else {
            *armed_at = None;
            *slack = 0;
            sleep.set(None);
            return Pass::Done;
        };
        let mut cx = Context::from_waker(&self.driver.waker);
        for _ in 0..MAX_EARLY {
            let now = self.now_raw();
            if now >= at {
                *armed_at = None;
                *slack = 0;
                sleep.set(None);
                return Pass::Again;
            }
            if *armed_at != Some(at) || sleep.is_none() {
                deadline = self.deadline_of(at, now, deadline);
            }
            if *armed_at != Some(at) {
                // A new time: the timer's earliness is learned afresh (the
                // slack delays the grant), and the sleep, if any, moves (the
                // new time is taken only once `reset` returned).
                *slack = 0;
                if let Some(pending) = sleep.as_mut().as_pin_mut() {
                    *armed_at = None;
                    self.timer
                        .reset(pending, self.sleep_target(deadline, 0, now));
                }
                *armed_at = Some(at);
            }
            if sleep.is_none() {
                let target = self.sleep_target(deadline, *slack, now);
                sleep.set(Some(self.timer.sleep_until_shared(target)));
            }
            let pending = sleep.as_mut().as_pin_mut().expect("set above");
            if pending.poll(&mut cx).is_pending() {
                return Pass::Done;
            }
            // Completed: never polled again. Early if the time has not come.
            sleep.set(None);
            *slack = (*slack).saturating_mul(2).max(1_000);
        }
        *armed_at = None;
        *slack = 0;
        Pass::Failed
    }

    /// The `Instant` of time `at` (read `now`): `epoch_deadline` (the
    /// epoch plus `at`) on a timer without a counter; on one with a
    /// counter, [`Timer::now`] plus the time left, as the counter goes: a
    /// counter drifts from `now()` over a long run (the default timers'
    /// runs slow by about a part per million), and a deadline mapped from
    /// the epoch would come early by the drift since.
    fn deadline_of(&self, at: u64, now: u64, epoch_deadline: Instant) -> Instant {
        if self.timer.counter_nanos().is_none() {
            return epoch_deadline;
        }
        self.timer
            .now()
            .checked_add(Duration::from_nanos(at.saturating_sub(now)))
            .unwrap_or(epoch_deadline)
    }

    /// What the driver's sleep for `deadline` sleeps until: `slack`
    /// nanoseconds later, capped at [`MAX_SLEEP`] from `now` (a backend
    /// may not take a longer sleep; a capped one completes early and is
    /// replaced).
    fn sleep_target(&self, deadline: Instant, slack: u64, now: u64) -> Instant {
        let target = deadline
            .checked_add(Duration::from_nanos(slack))
            .unwrap_or(deadline);
        let cap = self
            .epoch
            .checked_add(Duration::from_nanos(now))
            .and_then(|now| now.checked_add(MAX_SLEEP));
        match cap {
            Some(cap) if cap < target => cap,
            _ => target,
        }
    }
}

/// A key's algorithm state, moved between a keyed limiter's compact form
/// and a [`Shared`] (see [`Shared::seed`]).
pub(super) enum Seed {
    /// GCRA's theoretical arrival time.
    Gcra(u64),
    /// The strict window's log.
    Window(Log),
}

/// GCRA's nanoseconds per call for `quota` (`None` for a window).
pub(super) fn gcra_interval(quota: &Quota) -> Option<u64> {
    match quota.mode {
        Mode::Window => None,
        Mode::Gcra { .. } => Some(nanos(quota.period).div_ceil(quota.max_calls as u64).max(1)),
    }
}

#[cold]
fn limited(now: u64, at: u64) -> RateLimitError {
    RateLimitError::RateLimited {
        wait: match at {
            u64::MAX => Duration::MAX,
            at => Duration::from_nanos(at.saturating_sub(now)),
        },
    }
}

fn exceeds(quota: &Quota, n: u64) -> RateLimitError {
    RateLimitError::ExceedsQuota {
        requested: usize::try_from(n).unwrap_or(usize::MAX),
        max: quota.max_at_once(),
    }
}

fn check_fits(quota: &Quota, n: u64) -> Result<(), RateLimitError> {
    if n > quota.max_at_once() as u64 {
        return Err(exceeds(quota, n));
    }
    Ok(())
}

impl<T: Timer> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Read, then write with the lock released: the formatter's writer
        // is user code.
        let (quota, waiting) = {
            let state = self.lock();
            (state.quota, state.queue.len())
        };
        f.debug_struct("RateLimiter")
            .field("quota", &quota)
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// The driver's timer and waker
// ---------------------------------------------------------------------------

struct Driver<S> {
    flag: driver::Flag,
    /// Touched only by the running driver: the mutex is never contended,
    /// and timer code run under it that calls back into the limiter finds
    /// the flag busy and only leaves a note, so it never waits for it.
    armed: Mutex<Armed<S>>,
    /// Runs the driver; holds the limiter weakly, so an armed timer never
    /// keeps a dropped limiter alive.
    waker: Waker,
}

struct Armed<S> {
    /// The head's time the sleep is for.
    at: Option<u64>,
    /// How much later than `at` the sleep is set: the timer completed
    /// sleeps early for this `at` (see [`Shared::arm`]).
    slack: u64,
    sleep: Pin<Box<Option<S>>>,
}

struct DriverWaker<T: Timer>(Weak<Shared<T>>);

impl<T> Wake for DriverWaker<T>
where
    T: Timer + Send + Sync + 'static,
    T::Sleep: Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Run by the timer, on the timer's thread: every panic is caught and
    /// discarded here (see the module docs), so the thread survives and the
    /// limiter keeps serving.
    fn wake_by_ref(self: &Arc<Self>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // The last handle may go here, with whatever its queue holds.
            if let Some(shared) = self.0.upgrade() {
                if let Some(payload) = shared.drive() {
                    unwind::discard(payload);
                }
            }
        }));
        if let Err(payload) = outcome {
            unwind::discard(payload);
        }
    }
}

// ---------------------------------------------------------------------------
// Waiters and their queue
// ---------------------------------------------------------------------------

/// One acquisition and the limiter it waits on (`&Shared` or
/// `Arc<Shared>`): the body of every acquire future. Dropping it cancels.
pub(crate) struct Acquisition<T: Timer, S: Deref<Target = Shared<T>>> {
    shared: S,
    waiter: Waiter,
}

impl<T: Timer, S: Deref<Target = Shared<T>>> Acquisition<T, S> {
    pub(crate) fn new(shared: S, n: usize) -> Self {
        Acquisition {
            shared,
            waiter: Waiter::new(n),
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RateLimitError>> {
        self.shared.poll_acquire(&mut self.waiter, cx)
    }

    /// Whether the outcome was returned (polling again panics).
    pub(crate) fn is_terminated(&self) -> bool {
        self.waiter.done
    }
}

impl<T: Timer, S: Deref<Target = Shared<T>>> Drop for Acquisition<T, S> {
    fn drop(&mut self) {
        self.shared.cancel(&mut self.waiter);
    }
}

impl<T: Timer, S: Deref<Target = Shared<T>>> fmt::Debug for Acquisition<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquisition")
            .field("calls", &self.waiter.n)
            .field("queued", &self.waiter.slot.is_some())
            .field("done", &self.waiter.done)
            .finish()
    }
}

/// One acquisition's progress.
#[derive(Debug)]
struct Waiter {
    n: u64,
    slot: Option<(usize, u64)>,
    /// Settled, but not yet returned: the poll that settled it still had a
    /// waker to drop, and that drop panicked. The next poll returns it; a
    /// drop gives the grant back.
    unseen: Option<NodeState>,
    done: bool,
}

impl Waiter {
    fn new(n: usize) -> Waiter {
        Waiter {
            n: n as u64,
            slot: None,
            unseen: None,
            done: false,
        }
    }

    /// Returns the settled outcome kept in `unseen`.
    fn finish(&mut self) -> Poll<Result<(), RateLimitError>> {
        let outcome = match self.unseen.take() {
            Some(NodeState::Granted(_)) => Ok(()),
            Some(NodeState::Failed(error)) => Err(error),
            _ => unreachable!("finish follows a settled outcome"),
        };
        self.done = true;
        Poll::Ready(outcome)
    }
}

/// The outcome of the lock-free GCRA check.
#[derive(Clone, Copy, Debug)]
enum Fast {
    Granted,
    /// Refused: `n` would be granted at `at` (both in nanoseconds since
    /// the epoch).
    Limited {
        now: u64,
        at: u64,
    },
    /// Take the lock: window mode, waiters, a quota change under way, or
    /// more than the burst.
    Locked,
}

/// What a grant recorded, to take it back if nobody sees it.
#[derive(Clone, Copy, Debug)]
enum Grant {
    Window(u64),
    Gcra {
        before: u64,
        after: u64,
        /// The limiter's quota changes when it was granted.
        quota_changes: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum NodeState {
    Queued,
    Granted(Grant),
    Failed(RateLimitError),
    Vacant,
}

#[derive(Debug)]
struct Node {
    n: u64,
    waker: Option<Waker>,
    state: NodeState,
}

/// The waiters in arrival order. A settled node leaves the line but keeps
/// its slot until its owner has seen it.
type Queue = WaitQueue<Node>;

trait QueueExt {
    fn owned_state(&self, i: usize, ticket: u64) -> NodeState;
    fn vacate(&mut self, i: usize) -> Option<Waker>;
}

impl QueueExt for Queue {
    /// The state of an owner's node (`Vacant` if the slot is not its own).
    fn owned_state(&self, i: usize, ticket: u64) -> NodeState {
        if self.ticket(i) == ticket {
            self[i].state
        } else {
            NodeState::Vacant
        }
    }

    /// Frees an unlinked node's slot. Returns its waker, for the caller to
    /// drop once the lock is released.
    fn vacate(&mut self, i: usize) -> Option<Waker> {
        self[i].state = NodeState::Vacant;
        self.free(i);
        self[i].waker.take()
    }
}
