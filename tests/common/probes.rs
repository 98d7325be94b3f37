//! The drop-glue reviews' probes (`tests/review_dropglue.rs`,
//! `tests/review_dropglue2.rs`): values that count their drops (and those
//! during an unwind) and may panic there, a timer on a `ManualClock` whose
//! clones, sleeps, clock and drop carry probes and faults, keys hashed and
//! compared by id, and faults armed to fire at the n-th call. Included with
//! `#[path]` by the files that use it.

#![allow(dead_code, unused_imports)]

pub(crate) use awaitkit::time::{ManualClock, ManualSleep, Timer};
pub(crate) use std::future::Future;
pub(crate) use std::hash::{Hash, Hasher};
pub(crate) use std::pin::Pin;
pub(crate) use std::sync::Mutex;
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
pub(crate) use std::task::{Context, Poll, Waker};
pub(crate) use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

pub(crate) static DROPS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static DROPS_WHILE_PANICKING: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) name: &'static str,
    pub(crate) explode: bool,
}

impl Probe {
    pub(crate) fn quiet(name: &'static str) -> Self {
        Probe {
            name,
            explode: false,
        }
    }
    pub(crate) fn bomb(name: &'static str) -> Self {
        Probe {
            name,
            explode: true,
        }
    }
    pub(crate) fn new(name: &'static str, explode: bool) -> Self {
        Probe { name, explode }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        let p = std::thread::panicking();
        LOG.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
            "{}{}",
            self.name,
            if p { "!" } else { "" }
        ));
        if p && DROPS_WHILE_PANICKING.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("REVIEW: probe `{}` dropped during the unwind", self.name);
        }
        if self.explode {
            panic!("probe `{}` destructor", self.name);
        }
    }
}

pub(crate) fn log() -> Vec<String> {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(crate) fn drops() -> usize {
    DROPS.load(Ordering::SeqCst)
}

/// Every probe dropped `n` times in all, none during an unwind.
pub(crate) fn check(n: usize) {
    assert_eq!(
        DROPS_WHILE_PANICKING.load(Ordering::SeqCst),
        0,
        "REVIEW a user value was dropped during another panic's unwind (log: {:?})",
        log()
    );
    assert_eq!(
        drops(),
        n,
        "REVIEW every user value is dropped exactly once (log: {:?})",
        log()
    );
}

pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------
// A timer on a `ManualClock` carrying a probe
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
pub(crate) struct TimerFaults {
    /// `now` panics ("timer now").
    pub(crate) now_panics: bool,
    /// `clone` panics ("timer clone").
    pub(crate) clone_panics: bool,
    /// Its sleeps' destructors panic.
    pub(crate) sleep_bombs: bool,
    /// Its clones' destructors panic.
    pub(crate) clone_bombs: bool,
}

pub(crate) struct ProbeTimer {
    pub(crate) clock: ManualClock,
    pub(crate) _probe: Probe,
    pub(crate) faults: TimerFaults,
}

impl ProbeTimer {
    pub(crate) fn new(clock: &ManualClock, probe: Probe, faults: TimerFaults) -> Self {
        ProbeTimer {
            clock: clock.clone(),
            _probe: probe,
            faults,
        }
    }
}

impl Clone for ProbeTimer {
    fn clone(&self) -> Self {
        if self.faults.clone_panics {
            panic!("timer clone");
        }
        CLONES.fetch_add(1, Ordering::SeqCst);
        ProbeTimer {
            clock: self.clock.clone(),
            _probe: Probe::new("timer-clone", self.faults.clone_bombs),
            faults: self.faults,
        }
    }
}

pub(crate) struct ProbeSleep {
    pub(crate) inner: ManualSleep,
    pub(crate) _probe: Probe,
}

impl Future for ProbeSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl Timer for ProbeTimer {
    type Sleep = ProbeSleep;
    fn now(&self) -> Instant {
        if self.faults.now_panics {
            panic!("timer now");
        }
        tick(&NOW_ARM, "timer now (armed)");
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ProbeSleep {
        SLEEPS.fetch_add(1, Ordering::SeqCst);
        ProbeSleep {
            inner: self.clock.sleep_until(deadline),
            _probe: Probe::new("sleep", self.faults.sleep_bombs),
        }
    }
    fn reset(&self, sleep: Pin<&mut ProbeSleep>, deadline: Instant) {
        let s = Pin::into_inner(sleep);
        self.clock.reset(Pin::new(&mut s.inner), deadline);
    }
}

// A key carrying a probe; hashed and compared by `id` only.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) id: u32,
    pub(crate) _probe: Probe,
}

impl Key {
    pub(crate) fn new(id: u32, explode: bool) -> Self {
        Key {
            id,
            _probe: Probe::new("key", explode),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        tick(&EQ_ARM, "key eq (armed)");
        self.id == other.id
    }
}
impl Eq for Key {}
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

// ---------------------------------------------------------------------------
// Armed faults: `tick(&ARM, msg)` panics at the n-th call after `arm(&ARM, n)`
// ---------------------------------------------------------------------------

pub(crate) use std::sync::atomic::AtomicIsize;
pub(crate) static EQ_ARM: AtomicIsize = AtomicIsize::new(0);
pub(crate) static NOW_ARM: AtomicIsize = AtomicIsize::new(0);
pub(crate) static CLONES: AtomicUsize = AtomicUsize::new(0);
pub(crate) static SLEEPS: AtomicUsize = AtomicUsize::new(0);
pub(crate) fn made() -> usize {
    CLONES.load(Ordering::SeqCst) + SLEEPS.load(Ordering::SeqCst)
}

pub(crate) fn tick(arm: &AtomicIsize, msg: &str) {
    if arm.load(Ordering::SeqCst) > 0 && arm.fetch_sub(1, Ordering::SeqCst) == 1 {
        panic!("{msg}");
    }
}
pub(crate) fn arm(a: &AtomicIsize, n: isize) {
    a.store(n, Ordering::SeqCst);
}
pub(crate) fn disarm(a: &AtomicIsize) {
    a.store(0, Ordering::SeqCst);
}
pub(crate) fn panicking_drops() -> usize {
    DROPS_WHILE_PANICKING.load(Ordering::SeqCst)
}

pub(crate) fn probe_limiter(clock: &ManualClock) -> awaitkit::KeyedRateLimiter<Key, ProbeTimer> {
    awaitkit::KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(ProbeTimer::new(
        clock,
        Probe::quiet("timer"),
        TimerFaults::default(),
    ))
}
