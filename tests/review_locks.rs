#![cfg(feature = "test-util")]
//! Review 5: commit 108aeb1 (keyed `full_in` under catch_unwind) and SPEC
//! §1.14 "No user code under an internal lock or busy state". Every
//! scenario runs in a child process with a watchdog: a hang or an abort
//! fails the test.
//!
//! Five scenarios hung on 108aeb1: a `RateLimiter` whose clock (`now`) or
//! sleep (`poll`) set the quota it read while calls waited kept its driver
//! passing forever (each `set_quota` asked for one more pass, which read the
//! clock again), and a `KeyedRateLimiter` whose clock did so rebuilt a key's
//! full limiter forever (each call started a new generation). Setting the
//! quota already set now changes nothing. The two keyed scenarios whose key
//! `Eq` calls the same limiter deadlock as `KeyedRateLimiter`'s docs say
//! they do ("it must not call back into the same `KeyedRateLimiter`"): kept
//! as ignored reproductions of that documented limit (`-- --ignored`).

/// A scenario for a documented limit: ignored, run on purpose with
/// `--ignored`.
macro_rules! open_scenario {
    ($name:ident, $why:literal, $body:block) => {
        #[test]
        #[ignore = $why]
        fn $name() {
            if !crate::common::child::is_child() {
                return crate::common::child::run_in_child(stringify!($name));
            }
            $body
        }
    };
}

#[macro_use]
mod common;

#[path = "common/probes.rs"]
mod probes;
use probes::*;

use awaitkit::KeyedRateLimiter;
use std::cell::Cell as StdCell;
use std::sync::Arc;

/// In the child: exits the process (status 101, a `REVIEW` line) if the
/// scenario has not finished within `secs`.
fn watchdog(secs: u64, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        println!("REVIEW HANG: `{what}` did not finish within {secs}s (deadlock)");
        eprintln!("REVIEW HANG: `{what}` did not finish within {secs}s (deadlock)");
        std::process::exit(101);
    });
}

fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| common::panic_message(&*p))
}

// ---------------------------------------------------------------------------
// A timer on a ManualClock whose `clone` / `now` run a hook once (armed with
// a countdown), on another thread (joined) or on the calling thread.
// ---------------------------------------------------------------------------

type Hook = Box<dyn FnOnce() + Send>;
static CLONE_HOOK: Mutex<Option<(usize, bool, Hook)>> = Mutex::new(None);
static NOW_HOOK: Mutex<Option<(usize, bool, Hook)>> = Mutex::new(None);

/// Runs `hook` at the `skip+1`-th next call; `same_thread`: on the caller.
fn set_hook(slot: &Mutex<Option<(usize, bool, Hook)>>, skip: usize, same_thread: bool, hook: Hook) {
    *slot.lock().unwrap() = Some((skip, same_thread, hook));
}

fn fire(slot: &Mutex<Option<(usize, bool, Hook)>>) {
    let hook = {
        let mut g = slot.lock().unwrap();
        match g.as_mut() {
            Some((skip, _, _)) if *skip > 0 => {
                *skip -= 1;
                None
            }
            Some(_) => g.take(),
            None => None,
        }
    };
    if let Some((_, same, hook)) = hook {
        if same {
            hook();
        } else {
            std::thread::spawn(hook).join().expect("hook thread");
        }
    }
}

struct HookTimer {
    clock: ManualClock,
}

impl Clone for HookTimer {
    fn clone(&self) -> Self {
        fire(&CLONE_HOOK);
        HookTimer {
            clock: self.clock.clone(),
        }
    }
}

impl Timer for HookTimer {
    type Sleep = ManualSleep;
    fn now(&self) -> Instant {
        fire(&NOW_HOOK);
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ManualSleep {
        self.clock.sleep_until(deadline)
    }
    fn reset(&self, sleep: Pin<&mut ManualSleep>, deadline: Instant) {
        self.clock.reset(sleep, deadline)
    }
}

// A key hashed by `h`, compared by `id`. Its `Eq` panics at the n-th call
// on a thread marked `EQ_VICTIM` once `EQ_LEFT` is armed (a global, so a
// hook thread can arm it), and runs `EQ_HOOK` (thread-local) once.
static EQ_LEFT: AtomicIsize = AtomicIsize::new(0);
thread_local! {
    static EQ_VICTIM: StdCell<bool> = const { StdCell::new(false) };
    static EQ_HOOK: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) };
}

#[derive(Debug)]
struct HK {
    id: u32,
    h: u32,
}
fn hk(id: u32, h: u32) -> HK {
    HK { id, h }
}
impl PartialEq for HK {
    fn eq(&self, other: &Self) -> bool {
        if let Some(hook) = EQ_HOOK.with(|c| c.borrow_mut().take()) {
            hook();
        }
        if EQ_VICTIM.with(|v| v.get()) {
            tick(&EQ_LEFT, "key eq (armed)");
        }
        self.id == other.id
    }
}
impl Eq for HK {}
impl Hash for HK {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.h.hash(state);
    }
}

type KL = KeyedRateLimiter<HK, HookTimer>;

static GCRA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn keyed(clock: &ManualClock, max_keys: Option<usize>) -> Arc<KL> {
    let base = if GCRA.load(Ordering::SeqCst) {
        KeyedRateLimiter::with_quota(awaitkit::Quota::gcra(1, Duration::from_secs(1), 1).unwrap())
    } else {
        KeyedRateLimiter::new(1, Duration::from_secs(1))
    };
    let l = base.with_timer(HookTimer {
        clock: clock.clone(),
    });
    Arc::new(match max_keys {
        Some(m) => l.with_max_keys(m),
        None => l,
    })
}

fn poll_n<F: Future + Unpin>(f: &mut F, n: usize) -> Poll<F::Output> {
    for _ in 0..n {
        if let Poll::Ready(r) = poll_once(f) {
            return Poll::Ready(r);
        }
    }
    Poll::Pending
}

// ---------------------------------------------------------------------------
// Part 1: 108aeb1, keyed `full_in`.
// ---------------------------------------------------------------------------

/// Key 1 exhausted; an acquire's first poll has its key's `Eq` panic at the
/// `n`-th comparison (1: check_in; 2: full_in's first pass; 3: its second),
/// while, between full_in's passes (the timer's clone, no lock held),
/// another thread's acquire of key 1 promotes it (if `other`).
fn full_in_eq_race(n: isize, other: bool) {
    watchdog(10, "full_in_eq_race");
    let clock = ManualClock::new();
    let l = keyed(&clock, None);
    l.try_acquire(hk(1, 1)).unwrap();
    let mut a = Box::pin(l.acquire(hk(1, 1)));
    let (tx, rx) = std::sync::mpsc::channel();
    if other {
        let l2 = Arc::clone(&l);
        set_hook(
            &CLONE_HOOK,
            0,
            false,
            Box::new(move || {
                let mut b = Box::pin(l2.acquire(hk(1, 1)));
                let p = poll_once(&mut b);
                assert!(p.is_pending(), "REVIEW the other acquire waits");
                tx.send(b).unwrap();
            }),
        );
    }
    EQ_VICTIM.with(|v| v.set(true));
    arm(&EQ_LEFT, n);
    let first = catch(|| poll_once(&mut a));
    disarm(&EQ_LEFT);
    eprintln!(
        "REVIEW (info) n={n} other={other}: first poll {:?}",
        first.as_ref().map(|p| p.is_pending())
    );
    if let Ok(p) = &first {
        assert!(
            p.is_pending(),
            "REVIEW key 1 is exhausted: the acquire waits"
        );
    } else {
        assert!(first.as_ref().unwrap_err().contains("(armed)"));
        assert!(
            poll_once(&mut a).is_pending(),
            "REVIEW the retried first poll waits"
        );
    }
    let mut b = if other {
        Some(rx.recv().expect("the hook ran"))
    } else {
        None
    };
    let st = l.stats();
    assert_eq!(st.keys, 1, "REVIEW one key");
    assert_eq!(
        st.waiting_keys, 1,
        "REVIEW key 1 has waiters (stats: {st:?})"
    );
    assert!(
        l.try_acquire(hk(1, 1)).is_err(),
        "REVIEW a check does not pass the waiters"
    );
    // One grant a second, in FIFO order, nothing over the quota.
    clock.advance(Duration::from_secs(1));
    let ra = poll_n(&mut a, 4).is_ready();
    let rb = b.as_mut().map(|b| poll_n(b, 4).is_ready()).unwrap_or(false);
    let grants1 = ra as u32 + rb as u32;
    assert!(
        l.try_acquire(hk(1, 1)).is_err(),
        "REVIEW over quota: a check granted at t=1s besides the waiter"
    );
    if other {
        assert_eq!(grants1, 1, "REVIEW one grant at t=1s (a: {ra}, b: {rb})");
        clock.advance(Duration::from_secs(1));
        let ra2 = ra || poll_n(&mut a, 4).is_ready();
        let rb2 = rb || poll_n(b.as_mut().unwrap(), 4).is_ready();
        assert!(
            ra2 && rb2,
            "REVIEW both granted by t=2s (a: {ra2}, b: {rb2})"
        );
        assert!(
            l.try_acquire(hk(1, 1)).is_err(),
            "REVIEW over quota at t=2s"
        );
    } else {
        assert_eq!(grants1, 1, "REVIEW a granted at t=1s");
    }
    assert_eq!(l.stats().waiting_keys, 0);
}

scenario!(p1_full_in_eq1_race, { full_in_eq_race(1, true) });
scenario!(p1_full_in_eq2_race, { full_in_eq_race(2, true) });
scenario!(p1_full_in_eq3_race, { full_in_eq_race(3, true) });
scenario!(p1_full_in_eq2_alone, { full_in_eq_race(2, false) });
scenario!(p1_full_in_eq3_alone, { full_in_eq_race(3, false) });
scenario!(p1_gcra_full_in_eq2_race, {
    GCRA.store(true, Ordering::SeqCst);
    full_in_eq_race(2, true)
});
scenario!(p1_gcra_full_in_eq3_race, {
    GCRA.store(true, Ordering::SeqCst);
    full_in_eq_race(3, true)
});

/// The bound's reservation: max_keys = 2, key 9 collides with key 1 (same
/// hash) so `Eq` runs on it while key 1 is absent. Key 1 is evicted between
/// check_in and full_in (the clock's hook); full_in reserves room for it,
/// builds a limiter (the clone's hook arms `Eq`) and its second pass's `Eq`
/// (against key 9) panics. The reservation must be given back.
fn full_in_reservation(k9_back: bool) {
    watchdog(10, "full_in_reservation");
    let clock = ManualClock::new();
    let l = keyed(&clock, Some(2));
    l.try_acquire(hk(1, 1)).unwrap();
    l.try_acquire(hk(9, 1)).unwrap();
    let mut a = Box::pin(l.acquire(hk(1, 1)));
    let (l2, c2) = (Arc::clone(&l), clock.clone());
    // check_in's clock read is the 1st; full_in's first pass reads the 2nd.
    set_hook(
        &NOW_HOOK,
        1,
        false,
        Box::new(move || {
            c2.advance(Duration::from_secs(3));
            l2.evict_idle();
            l2.evict_idle();
            assert_eq!(l2.len(), 0, "REVIEW (setup) both keys evicted");
            if k9_back {
                l2.try_acquire(hk(9, 1)).unwrap();
            }
        }),
    );
    set_hook(&CLONE_HOOK, 0, false, Box::new(|| arm(&EQ_LEFT, 1)));
    EQ_VICTIM.with(|v| v.set(true));
    let first = catch(|| poll_once(&mut a));
    disarm(&EQ_LEFT);
    eprintln!(
        "REVIEW (info) first poll: {:?}",
        first.as_ref().map(|p| p.is_ready())
    );
    let expect_keys = k9_back as usize;
    if k9_back {
        assert!(
            first.is_err(),
            "REVIEW (setup) Eq against key 9 panicked in the second pass"
        );
        let st = l.stats();
        assert_eq!(st.keys, expect_keys, "REVIEW keys after the panic: {st:?}");
    }
    drop(a);
    // The count of keys against the bound is the true count: exactly
    // 2 - keys new keys fit.
    let mut admitted = 0;
    for id in 100..104 {
        if l.try_acquire(hk(id, id)).is_ok() {
            admitted += 1;
        }
    }
    let st = l.stats();
    assert_eq!(
        admitted + l.len() - admitted,
        2,
        "REVIEW the limiter fills to its bound of 2 (admitted {admitted}, stats {st:?})"
    );
    assert_eq!(
        l.len(),
        2,
        "REVIEW a reservation leaked by the panic keeps a new key out (admitted {admitted}, stats {st:?})"
    );
}

scenario!(p1_full_in_reservation_eq_panic, {
    full_in_reservation(true)
});
scenario!(p1_full_in_new_key_no_panic, { full_in_reservation(false) });
scenario!(p1_gcra_full_in_reservation_eq_panic, {
    GCRA.store(true, Ordering::SeqCst);
    full_in_reservation(true)
});

// ---------------------------------------------------------------------------
// Part 2: SPEC §1.14, user code re-entering the primitive that runs it.
// ---------------------------------------------------------------------------

thread_local! {
    static IN_HOOK: StdCell<bool> = const { StdCell::new(false) };
}
static HOOK_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs `f(event)` unless this thread is already inside a hook.
fn guarded(f: &(dyn Fn(&'static str) + Send + Sync), event: &'static str) {
    if IN_HOOK.with(|h| h.replace(true)) {
        return;
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_HOOK.with(|h| h.set(false));
        }
    }
    let _r = Reset;
    HOOK_CALLS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(event.to_owned());
    f(event);
}

struct RW {
    f: Box<dyn Fn(&'static str) + Send + Sync>,
}

/// A waker whose `clone`, `wake`, `wake_by_ref` and `drop` run `f` (with
/// "clone", "wake", "drop") before doing their job.
fn rewaker(f: impl Fn(&'static str) + Send + Sync + 'static) -> Waker {
    use std::task::{RawWaker, RawWakerVTable};
    unsafe fn clone(p: *const ()) -> RawWaker {
        // SAFETY: `p` is an `Arc<RW>` pointer this waker holds a count on.
        let rw = unsafe { &*(p as *const RW) };
        guarded(&*rw.f, "clone");
        // SAFETY: as above; the clone takes a count of its own.
        unsafe { Arc::increment_strong_count(p as *const RW) };
        RawWaker::new(p, &VTABLE)
    }
    unsafe fn wake(p: *const ()) {
        // SAFETY: `wake` consumes the waker's count on the `Arc<RW>`.
        let rw = unsafe { Arc::from_raw(p as *const RW) };
        guarded(&*rw.f, "wake");
        guarded(&*rw.f, "drop");
    }
    unsafe fn wake_by_ref(p: *const ()) {
        // SAFETY: `p` is an `Arc<RW>` pointer this waker holds a count on.
        let rw = unsafe { &*(p as *const RW) };
        guarded(&*rw.f, "wake");
    }
    unsafe fn drop_w(p: *const ()) {
        // SAFETY: `drop` gives back the waker's count on the `Arc<RW>`.
        let rw = unsafe { Arc::from_raw(p as *const RW) };
        guarded(&*rw.f, "drop");
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_w);
    let arc = Arc::new(RW { f: Box::new(f) });
    // SAFETY: the vtable's functions keep the `Arc`'s counts as a waker's.
    unsafe { Waker::from_raw(RawWaker::new(Arc::into_raw(arc) as *const (), &VTABLE)) }
}

fn poll_with<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

fn hook_events() -> Vec<String> {
    HOOK_CALLS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// --- Keyed limiter: the key's `Eq` re-entering the same shard (documented
// as "must not"): what happens?

fn keyed_eq_reenters(what: &'static str) {
    watchdog(5, "keyed_eq_reenters");
    let clock = ManualClock::new();
    let l = keyed(&clock, None);
    l.try_acquire(hk(1, 1)).unwrap();
    let l2 = Arc::clone(&l);
    EQ_HOOK.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            eprintln!("REVIEW (info) Eq hook: calling {what} on the same limiter");
            match what {
                "try_acquire same shard" => {
                    let _ = l2.try_acquire(hk(7, 1));
                }
                "len" => {
                    let _ = l2.len();
                }
                _ => unreachable!(),
            }
            eprintln!("REVIEW (info) Eq hook: {what} returned");
        }))
    });
    let r = catch(|| l.try_acquire(hk(1, 1)));
    panic!("REVIEW (info) the re-entrant Eq returned: {r:?} (no hang)");
}

open_scenario!(
    p2_keyed_eq_reenters_same_shard,
    "documented: a key's Eq must not call back into its limiter",
    { keyed_eq_reenters("try_acquire same shard") }
);
open_scenario!(
    p2_keyed_eq_calls_len,
    "documented: a key's Eq must not call back into its limiter",
    { keyed_eq_reenters("len") }
);

// --- A timer whose every call (now, clone, sleep_until, reset, its sleeps'
// polls and drops) runs a global hook.

type TimerFn = Arc<dyn Fn(&'static str) + Send + Sync>;
static TIMER_FN: Mutex<Option<TimerFn>> = Mutex::new(None);
fn timer_hook(event: &'static str) {
    let f = TIMER_FN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(f) = f {
        guarded(&*f, event);
    }
}
fn set_timer_fn(f: impl Fn(&'static str) + Send + Sync + 'static) {
    *TIMER_FN.lock().unwrap() = Some(Arc::new(f));
}
fn clear_timer_fn() {
    let old = TIMER_FN.lock().unwrap().take();
    drop(old);
}

struct ReTimer {
    clock: ManualClock,
}
impl Clone for ReTimer {
    fn clone(&self) -> Self {
        timer_hook("timer clone");
        ReTimer {
            clock: self.clock.clone(),
        }
    }
}
impl Drop for ReTimer {
    fn drop(&mut self) {
        timer_hook("timer drop");
    }
}
struct ReSleep {
    inner: ManualSleep,
}
impl Future for ReSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        timer_hook("sleep poll");
        Pin::new(&mut self.inner).poll(cx)
    }
}
impl Drop for ReSleep {
    fn drop(&mut self) {
        timer_hook("sleep drop");
    }
}
impl Timer for ReTimer {
    type Sleep = ReSleep;
    fn now(&self) -> Instant {
        timer_hook("now");
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> ReSleep {
        timer_hook("sleep_until");
        ReSleep {
            inner: self.clock.sleep_until(deadline),
        }
    }
    fn reset(&self, sleep: Pin<&mut ReSleep>, deadline: Instant) {
        timer_hook("reset");
        let s = Pin::into_inner(sleep);
        self.clock.reset(Pin::new(&mut s.inner), deadline)
    }
}

// --- Semaphore

scenario!(p2_semaphore_waker_reenters, {
    watchdog(5, "semaphore");
    let sem = Arc::new(awaitkit::Semaphore::new(1));
    let p0 = sem.try_acquire().unwrap();
    let s2 = Arc::clone(&sem);
    let hook = move |_e: &'static str| {
        let _ = s2.stats();
        let _ = s2.available_permits();
        drop(s2.try_acquire());
    };
    let (w1, w2) = (rewaker(hook.clone()), rewaker(hook.clone()));
    let mut a = Box::pin(sem.acquire());
    let p = poll_with(&mut a, &w1);
    assert!(p.is_pending(), "REVIEW waits: {p:?}");
    assert!(poll_with(&mut a, &w2).is_pending()); // replaces w1's clone
    let mut b = Box::pin(sem.acquire());
    assert!(poll_with(&mut b, &w1).is_pending());
    drop(p0); // grants a: wakes w2's clone
    let pa = match poll_with(&mut a, &w2) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("REVIEW a granted: {other:?}"),
    };
    drop(pa); // grants b
    let pb = match poll_with(&mut b, &w2) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("REVIEW b granted: {other:?}"),
    };
    let mut c = Box::pin(sem.acquire());
    assert!(poll_with(&mut c, &w1).is_pending());
    sem.close();
    assert!(matches!(poll_with(&mut c, &w1), Poll::Ready(Err(_))));
    drop((c, pb));
    eprintln!("REVIEW (info) events: {:?}", hook_events());
});

// --- RateLimiter: waker hooks and timer hooks calling the limiter

scenario!(p2_rate_limiter_waker_reenters, {
    watchdog(5, "rate limiter waker");
    let clock = ManualClock::new();
    let l =
        Arc::new(awaitkit::RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone()));
    l.try_acquire().unwrap();
    let l2 = Arc::clone(&l);
    let hook = move |_e: &'static str| {
        let _ = l2.waiting();
        let _ = l2.snapshot();
        let _ = l2.try_acquire();
        let _ = l2.set_quota(l2.quota());
    };
    let (w1, w2) = (rewaker(hook.clone()), rewaker(hook.clone()));
    let mut a = Box::pin(l.acquire());
    assert!(poll_with(&mut a, &w1).is_pending());
    assert!(poll_with(&mut a, &w2).is_pending());
    let mut b = Box::pin(l.acquire());
    assert!(poll_with(&mut b, &w1).is_pending());
    clock.advance(Duration::from_secs(1));
    let mut got = 0;
    for _ in 0..4 {
        if poll_with(&mut a, &w2).is_ready() {
            got += 1;
            break;
        }
    }
    drop(b); // cancel a waiter (its waker dropped)
    assert_eq!(got, 1, "REVIEW a granted after 1s");
    eprintln!("REVIEW (info) events: {:?}", hook_events());
});

fn rate_limiter_timer_reenters(gcra: bool) {
    rate_limiter_timer_reenters_with(
        gcra,
        &[
            "now",
            "sleep poll",
            "sleep_until",
            "reset",
            "sleep drop",
            "timer clone",
            "timer drop",
        ],
        true,
    )
}

/// The timer's calls named in `events` run the hook: observers and a
/// try_acquire, and a `set_quota` (same quota) if `set_quota`.
fn rate_limiter_timer_reenters_with(gcra: bool, events: &'static [&'static str], set_quota: bool) {
    watchdog(5, "rate limiter timer");
    let clock = ManualClock::new();
    let base = if gcra {
        awaitkit::RateLimiter::gcra(1, Duration::from_secs(1), 1)
    } else {
        awaitkit::RateLimiter::new(1, Duration::from_secs(1))
    };
    let l = Arc::new(base.with_timer(ReTimer {
        clock: clock.clone(),
    }));
    let w = Arc::downgrade(&l);
    set_timer_fn(move |e| {
        if !events.contains(&e) {
            return;
        }
        if let Some(l2) = w.upgrade() {
            let _ = l2.waiting();
            let _ = l2.snapshot();
            let _ = l2.try_acquire();
            if set_quota {
                let _ = l2.set_quota(l2.quota());
            }
        }
    });
    l.try_acquire().ok();
    let mut a = Box::pin(l.acquire());
    let mut b = Box::pin(l.acquire());
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    clock.advance(Duration::from_secs(1));
    let ra = poll_n(&mut a, 4);
    clock.advance(Duration::from_secs(1));
    let rb = poll_n(&mut b, 4);
    eprintln!(
        "REVIEW (info) a {ra:?} b {rb:?} events: {:?}",
        hook_events().len()
    );
    drop((a, b));
    clear_timer_fn();
    drop(l);
}

scenario!(p2_rate_limiter_timer_reenters_window, {
    rate_limiter_timer_reenters(false)
});
scenario!(p2_rate_limiter_timer_reenters_gcra, {
    rate_limiter_timer_reenters(true)
});
scenario!(p2_rl_timer_observers_only, {
    rate_limiter_timer_reenters_with(
        false,
        &["now", "sleep poll", "sleep_until", "reset", "sleep drop"],
        false,
    )
});
scenario!(p2_rl_timer_now_set_quota, {
    rate_limiter_timer_reenters_with(false, &["now"], true)
});
scenario!(p2_rl_timer_sleep_poll_set_quota, {
    rate_limiter_timer_reenters_with(false, &["sleep poll"], true)
});
scenario!(p2_rl_timer_sleep_until_set_quota, {
    rate_limiter_timer_reenters_with(false, &["sleep_until"], true)
});

// --- Keyed limiter: a waiter's waker and the timer calling the limiter

scenario!(p2_keyed_waker_reenters, {
    watchdog(5, "keyed waker");
    let clock = ManualClock::new();
    let l = keyed(&clock, Some(8));
    l.try_acquire(hk(1, 1)).unwrap();
    let l2 = Arc::clone(&l);
    let hook = move |_e: &'static str| {
        let _ = l2.stats();
        let _ = l2.len();
        let _ = l2.try_acquire(hk(1, 1));
        let _ = l2.try_acquire(hk(2, 1));
        let _ = l2.set_quota(l2.quota());
        let _ = l2.evict_idle();
    };
    let (w1, w2) = (rewaker(hook.clone()), rewaker(hook.clone()));
    let mut a = Box::pin(l.acquire(hk(1, 1)));
    assert!(poll_with(&mut a, &w1).is_pending());
    assert!(poll_with(&mut a, &w2).is_pending());
    let mut b = Box::pin(l.acquire(hk(1, 1)));
    assert!(poll_with(&mut b, &w1).is_pending());
    clock.advance(Duration::from_secs(1));
    let _ = poll_n(&mut a, 4);
    drop(b);
    clock.advance(Duration::from_secs(5));
    drop(a);
    let _ = l.evict_idle();
    eprintln!("REVIEW (info) events: {:?}", hook_events());
});

scenario!(p2_keyed_timer_reenters, {
    watchdog(5, "keyed timer");
    let clock = ManualClock::new();
    let l = Arc::new(
        KeyedRateLimiter::new(1, Duration::from_secs(1))
            .with_timer(ReTimer {
                clock: clock.clone(),
            })
            .with_max_keys(4),
    );
    let w = Arc::downgrade(&l);
    set_timer_fn(move |_e| {
        if let Some(l2) = w.upgrade() {
            let _ = l2.stats();
            let _ = l2.len();
            let _ = l2.try_acquire(hk(3, 1));
            let _ = l2.evict_idle();
        }
    });
    l.try_acquire(hk(1, 1)).unwrap();
    let mut a = Box::pin(l.acquire(hk(1, 1)));
    let mut b = Box::pin(l.acquire(hk(1, 1)));
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    clock.advance(Duration::from_secs(1));
    let _ = poll_n(&mut a, 4);
    drop(b);
    clock.advance(Duration::from_secs(5));
    drop(a);
    let _ = l.evict_idle();
    let _ = l.set_quota(awaitkit::Quota::window(2, Duration::from_secs(1)).unwrap());
    eprintln!("REVIEW (info) events: {}", hook_events().len());
    clear_timer_fn();
    drop(l);
});

scenario!(p2_keyed_timer_now_set_quota, {
    watchdog(5, "keyed timer set_quota");
    let clock = ManualClock::new();
    let l = Arc::new(
        KeyedRateLimiter::new(1, Duration::from_secs(1)).with_timer(ReTimer {
            clock: clock.clone(),
        }),
    );
    let w = Arc::downgrade(&l);
    set_timer_fn(move |e| {
        if e != "now" {
            return;
        }
        if let Some(l2) = w.upgrade() {
            let _ = l2.set_quota(l2.quota());
        }
    });
    l.try_acquire(hk(1, 1)).unwrap();
    let mut a = Box::pin(l.acquire(hk(1, 1)));
    let mut b = Box::pin(l.acquire(hk(1, 1)));
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    clock.advance(Duration::from_secs(1));
    assert!(poll_n(&mut a, 4).is_ready(), "REVIEW a granted at 1s");
    drop((a, b));
    clear_timer_fn();
    drop(l);
});

// --- Pool: a waiter's waker calling the pool

struct Mgr;
impl awaitkit::pool::Manager for Mgr {
    type Object = u32;
    type Error = ();
    async fn create(&self) -> Result<u32, ()> {
        Ok(1)
    }
}

scenario!(p2_pool_waker_reenters, {
    watchdog(5, "pool waker");
    let pool = Arc::new(awaitkit::Pool::new(Mgr, 1));
    let p2 = Arc::clone(&pool);
    let hook = move |_e: &'static str| {
        let _ = p2.status();
        let _ = p2.is_closed();
        let mut g = Box::pin(p2.get());
        let _ = poll_once(&mut g); // may take the object, dropped at once
    };
    let (w1, w2) = (rewaker(hook.clone()), rewaker(hook.clone()));
    let mut g0 = Box::pin(pool.get());
    let held = match poll_n(&mut g0, 4) {
        Poll::Ready(Ok(o)) => o,
        _ => panic!("REVIEW first get"),
    };
    let mut g1 = Box::pin(pool.get());
    assert!(poll_with(&mut g1, &w1).is_pending());
    assert!(poll_with(&mut g1, &w2).is_pending());
    drop(held); // wakes w2
    let got = poll_with(&mut g1, &w2);
    assert!(matches!(got, Poll::Ready(Ok(_))), "REVIEW g1 served");
    drop(got);
    let mut g2 = Box::pin(pool.get());
    let _ = poll_with(&mut g2, &w1);
    let mut g3 = Box::pin(pool.get());
    let _ = poll_with(&mut g3, &w1);
    pool.close();
    drop((g2, g3));
    eprintln!("REVIEW (info) events: {:?}", hook_events().len());
});

// --- watch::Report: the hook calling the report

scenario!(p2_report_hook_reenters, {
    watchdog(5, "report hook");
    let report = awaitkit::watch::Report::new().threshold(Duration::from_millis(1));
    let r2 = report.clone();
    let report = report.on_slow_poll(move |_slow| {
        let _ = r2.children();
        let _ = r2.len();
        let _ = r2.blocking();
        let _ = format!("{r2}");
        drop(r2.watch("from hook", async {}));
        let _ = r2.clone().threshold(Duration::from_millis(1));
    });
    let mut f = Box::pin(report.watch("slow", async {
        std::thread::sleep(Duration::from_millis(3));
        7
    }));
    assert!(matches!(poll_once(&mut f), Poll::Ready(7)));
    let mut g = Box::pin(report.watch(
        "slow2",
        std::future::poll_fn(|_| {
            std::thread::sleep(Duration::from_millis(3));
            Poll::<()>::Pending
        }),
    ));
    assert!(poll_once(&mut g).is_pending());
    drop(g);
    assert!(report.blocking().len() >= 2, "REVIEW {report}");
});

// --- A task handle's waker calling the handle's group / the handle

scenario!(p2_task_group_wakers_reenter, {
    watchdog(5, "task group");
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let slot: Arc<Mutex<Option<awaitkit::TaskScope<'static, ()>>>> = Arc::new(Mutex::new(None));
    let s2 = Arc::clone(&slot);
    let hook = move |_e: &'static str| {
        let scope = s2.lock().unwrap().clone();
        if let Some(scope) = scope {
            // A spawn from the parent's waker (wake, clone, drop).
            let h = scope.spawn(async { Ok::<_, ()>(1) });
            let _ = h.is_finished();
            drop(h);
        }
    };
    let s3 = Arc::clone(&slot);
    let mut group = Box::pin(awaitkit::task_group(
        move |scope: awaitkit::TaskScope<'static, ()>| {
            *s3.lock().unwrap() = Some(scope.clone());
            async move {
                let h = scope.spawn(async move {
                    let _ = rx.await;
                    Ok::<_, ()>(2)
                });
                let v = h.await.map_err(|_| ())??;
                Ok::<_, ()>(v)
            }
        },
    ));
    let (w1, w2) = (rewaker(hook.clone()), rewaker(hook.clone()));
    assert!(poll_with(&mut group, &w1).is_pending());
    assert!(poll_with(&mut group, &w2).is_pending());
    tx.send(()).unwrap(); // wakes the task: the parent's waker w2
    slot.lock().unwrap().take();
    let mut out = None;
    for _ in 0..8 {
        if let Poll::Ready(r) = poll_with(&mut group, &w2) {
            out = Some(r);
            break;
        }
    }
    assert_eq!(out, Some(Ok(2)), "REVIEW the group finishes");
    drop(group);
    eprintln!("REVIEW (info) events: {:?}", hook_events().len());
});
