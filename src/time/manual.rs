//! `ManualClock`: a timer whose time moves only when a test says so.

use super::Timer;
use crate::wake_list::WakeList;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A [`Timer`] for tests: its time stands still until you call
/// [`advance`](ManualClock::advance), which wakes exactly the sleepers whose
/// deadline has passed, in deadline order. Deterministic on any executor, and
/// no test ever sleeps.
///
/// Cloning gives another handle to the same clock. Available with the
/// `test-util` feature.
///
/// # Examples
///
/// ```
/// use awaitkit::time::ManualClock;
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let clock = ManualClock::new();
/// let mut call = awaitkit::timeout(Duration::from_secs(5), futures::future::pending::<()>()).with_timer(clock.clone());
///
/// assert!(futures::poll!(&mut call).is_pending());
/// clock.advance(Duration::from_secs(4));
/// assert!(futures::poll!(&mut call).is_pending()); // never early
/// clock.advance(Duration::from_secs(1));
/// assert!(call.await.is_err()); // 5 s have passed on this clock
/// # });
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Clone)]
pub struct ManualClock {
    shared: Arc<Shared>,
}

struct Shared {
    start: Instant,
    state: Mutex<State>,
}

struct State {
    now: Instant,
    next_id: u64,
    /// Registered sleeps, in deadline order (ties in creation order).
    sleepers: BTreeMap<(Instant, u64), Waker>,
}

impl ManualClock {
    /// A clock standing at the current real instant, with no sleepers.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{ManualClock, Timer};
    /// let clock = ManualClock::new();
    /// let t = clock.now();
    /// std::thread::sleep(std::time::Duration::from_millis(2));
    /// assert_eq!(clock.now(), t); // real time does not move it
    /// ```
    pub fn new() -> Self {
        let start = Instant::now();
        ManualClock {
            shared: Arc::new(Shared {
                start,
                state: Mutex::new(State {
                    now: start,
                    next_id: 0,
                    sleepers: BTreeMap::new(),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poisoning is ignored.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Moves time forward by `by` and wakes every sleeper whose deadline is
    /// now due, earliest first. The wakers run after the clock's lock is
    /// released, so they may use the clock.
    ///
    /// # Panics
    ///
    /// If the new time cannot be represented by [`Instant`] (for example
    /// `advance(Duration::MAX)`); the clock is unchanged then. If a due
    /// sleeper's waker panics, the time has moved and every other due
    /// sleeper is still woken; then the first such panic propagates.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{ManualClock, Timer};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let t0 = clock.now();
    /// clock.advance(Duration::from_millis(1500));
    /// assert_eq!(clock.elapsed(), Duration::from_millis(1500));
    /// assert_eq!(clock.now(), t0 + Duration::from_millis(1500));
    /// ```
    #[track_caller]
    pub fn advance(&self, by: Duration) {
        let target = {
            let state = self.lock();
            state.now.checked_add(by)
        };
        let target = target.unwrap_or_else(|| {
            panic!("ManualClock::advance({by:?}): the time would overflow `std::time::Instant`")
        });
        self.advance_to(target);
    }

    /// Moves time forward to `instant` (no change if it is not later than
    /// [`now`](Timer::now)) and wakes the sleepers now due, earliest first.
    ///
    /// # Panics
    ///
    /// If a due sleeper's waker panics, as [`advance`](ManualClock::advance).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{ManualClock, Timer};
    /// use std::time::Duration;
    /// let clock = ManualClock::new();
    /// let later = clock.now() + Duration::from_secs(3);
    /// clock.advance_to(later);
    /// clock.advance_to(later - Duration::from_secs(1)); // never backwards
    /// assert_eq!(clock.now(), later);
    /// ```
    pub fn advance_to(&self, instant: Instant) {
        let due = {
            let mut state = self.lock();
            if instant > state.now {
                state.now = instant;
            }
            let now = state.now;
            let later = state.sleepers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut state.sleepers, later)
        };
        // Every due sleeper is woken even if one waker panics (the first
        // panic propagates afterwards).
        let mut wake = WakeList::default();
        for waker in due.into_values() {
            wake.push(Some(waker));
        }
        wake.wake_all();
    }

    /// How far this clock has been advanced since it was created.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::ManualClock;
    /// let clock = ManualClock::new();
    /// clock.advance(std::time::Duration::from_secs(2));
    /// assert_eq!(clock.elapsed().as_secs(), 2);
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.lock().now - self.shared.start
    }

    /// How many sleeps are registered (polled, pending, not yet due). Useful
    /// to wait until the code under test has reached its sleep before
    /// advancing.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::{ManualClock, Timer};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let clock = ManualClock::new();
    /// let mut sleep = clock.sleep_until(clock.now() + Duration::from_secs(1));
    /// assert_eq!(clock.sleepers(), 0); // registered on its first poll
    /// assert!(futures::poll!(&mut sleep).is_pending());
    /// assert_eq!(clock.sleepers(), 1);
    /// drop(sleep);
    /// assert_eq!(clock.sleepers(), 0);
    /// # });
    /// ```
    pub fn sleepers(&self) -> usize {
        self.lock().sleepers.len()
    }

    /// The earliest deadline among the registered sleeps.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::ManualClock;
    /// assert_eq!(ManualClock::new().next_deadline(), None);
    /// ```
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().sleepers.keys().next().map(|&(at, _)| at)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("ManualClock")
            .field("elapsed", &(state.now - self.shared.start))
            .field("sleepers", &state.sleepers.len())
            .finish()
    }
}

impl Timer for ManualClock {
    type Sleep = ManualSleep;

    fn now(&self) -> Instant {
        self.lock().now
    }

    fn sleep_until(&self, deadline: Instant) -> ManualSleep {
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            state.next_id
        };
        ManualSleep {
            clock: self.clone(),
            deadline,
            id,
            registered: false,
        }
    }

    fn reset(&self, mut sleep: Pin<&mut ManualSleep>, deadline: Instant) {
        let sleep = &mut *sleep;
        let due = {
            let mut state = sleep.clock.lock();
            let waker = if sleep.registered {
                state.sleepers.remove(&(sleep.deadline, sleep.id))
            } else {
                None
            };
            sleep.deadline = deadline;
            match waker {
                Some(waker) if deadline <= state.now => {
                    sleep.registered = false;
                    Some(waker)
                }
                Some(waker) => {
                    state.sleepers.insert((deadline, sleep.id), waker);
                    None
                }
                None => None,
            }
        };
        // Moved into the past: its task must come back and see it done.
        if let Some(waker) = due {
            waker.wake();
        }
    }
}

/// The sleep future of [`ManualClock`]: completes once the clock has been
/// advanced to its deadline.
///
/// # Examples
///
/// ```
/// use awaitkit::time::{ManualClock, Timer};
/// # futures::executor::block_on(async {
/// let clock = ManualClock::new();
/// let sleep: awaitkit::time::ManualSleep = clock.sleep_until(clock.now());
/// sleep.await; // already due
/// # });
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ManualSleep {
    clock: ManualClock,
    deadline: Instant,
    id: u64,
    registered: bool,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let key = (this.deadline, this.id);
        // A clone of the task's waker, made outside the lock and only when
        // the registered one would not wake the task (a clone is user code:
        // it may use this clock). Declared before the guard, so every return
        // drops it after unlocking.
        let mut fresh: Option<Waker> = None;
        loop {
            let mut state = this.clock.lock();
            if state.now >= this.deadline {
                let stale = if this.registered {
                    this.registered = false;
                    state.sleepers.remove(&key)
                } else {
                    None
                };
                drop(state);
                drop(stale); // outside the lock
                return Poll::Ready(());
            }
            let current = state.sleepers.get(&key);
            if current.is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            let Some(waker) = fresh.take() else {
                drop(state);
                fresh = Some(cx.waker().clone());
                continue; // look again: time may have moved meanwhile
            };
            let replaced = state.sleepers.insert(key, waker);
            this.registered = true;
            drop(state);
            drop(replaced); // outside the lock: a waker's drop may use the clock
            return Poll::Pending;
        }
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        if self.registered {
            let waker = self.clock.lock().sleepers.remove(&(self.deadline, self.id));
            drop(waker); // outside the lock: a waker's drop may use the clock
        }
    }
}

impl fmt::Debug for ManualSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSleep")
            .field("deadline", &self.deadline)
            .field("registered", &self.registered)
            .finish()
    }
}
