//! Adversarial tests of `gather!`/`try_gather!`, written by the second
//! review of a one-word variant of the tuple protocol (the ready bits, the
//! block's references and the task waker's slot state in one `AtomicU64`;
//! not landed: it found a livelock there, and the gain did not pay for a
//! second hand-rolled waker protocol). Every attack holds on the landed
//! protocol (a ready word plus `ParentWaker`), so they stay as tests.
//!
//! Attacks: wakes that come while a waker holds the task waker's slot
//! (re-entrant from the task's own wake, and concurrent from other threads)
//! when they bring no news; thousands of clones made and dropped on other
//! threads while the owner polls, moves between task wakers and drops (the
//! reference count inside the word, the free exactly once: ASan); panics at
//! every call of the task waker (clone, wake, wake_by_ref, drop) with
//! concurrent wakes; stale clones racing the drop; try_gather!'s fail-fast
//! with hammered clones; N = 1..=16.

#[macro_use]
mod common;

use awaitkit::{gather, try_gather};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A child that keeps a clone of its latest waker in a shared slot (it is
/// never taken: a `wake_by_ref` through it can repeat, as with a waker
/// stored by a channel that wakes by reference) and finishes once `done` is
/// set. Counts its polls.
#[derive(Clone, Default)]
struct Keeper {
    waker: Arc<Mutex<Option<Waker>>>,
    done: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
}

impl Keeper {
    fn child<T: Unpin>(&self, out: T) -> KeeperChild<T> {
        KeeperChild {
            k: self.clone(),
            out: Some(out),
        }
    }
    fn clone_waker(&self) -> Waker {
        self.waker.lock().unwrap().clone().expect("parked")
    }
    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }
}

struct KeeperChild<T> {
    k: Keeper,
    out: Option<T>,
}
impl<T: Unpin> Future for KeeperChild<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.k.polls.fetch_add(1, Ordering::SeqCst);
        if self.k.done.load(Ordering::SeqCst) {
            return Poll::Ready(self.out.take().expect("polled after Ready"));
        }
        *self.k.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A task waker whose every wake wakes (by reference) a stored child waker
/// again, up to `cap` times (without the cap, a defect here is an endless
/// loop on the waking thread).
struct Rewaker {
    wakes: AtomicUsize,
    cap: usize,
    child: Mutex<Option<Waker>>,
}
impl Wake for Rewaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let n = self.wakes.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.cap {
            // Cloned out first: the lock is not held while the child's waker
            // runs.
            let child = self.child.lock().unwrap().clone();
            if let Some(w) = child {
                w.wake_by_ref();
            }
        }
    }
}

/// DEFECT (one-word tuple): a task waker that, when woken, wakes a child's
/// stored waker by reference (a re-entrant wake that brings no news: that
/// child's bit is already set, or another bit is, since the owner last took
/// them). `tuple_wake` counts a REQUEST for every wake that finds the slot
/// held, news or not (tuple.rs, the `cur & BUSY != 0 && cur & CLOSED == 0`
/// branch), so the holder wakes the task again, whose wake wakes the child
/// again, which counts another request...: the waking thread never returns
/// (an endless loop, capped here at 1000 task wakes). On main a wake that
/// finds the ready word non-zero leaves the task alone (`fetch_or(..) == 0`
/// before `ParentWaker::wake`): one task wake. One wake of a child must wake
/// the task at most twice, and the next poll polls the woken children once.
#[test]
fn reentrant_task_wake_that_rewakes_a_child_does_not_loop() {
    watchdog("reentrant_task_wake_that_rewakes_a_child", || {
        for same_child in [false, true] {
            let (a, b) = (Keeper::default(), Keeper::default());
            let mut fut = gather!(a.child(1u8), b.child('b'));
            let task = Arc::new(Rewaker {
                wakes: AtomicUsize::new(0),
                cap: 1000,
                child: Mutex::new(None),
            });
            let waker = Waker::from(task.clone());
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
            assert_eq!(task.wakes.load(Ordering::SeqCst), 0);
            // The task's wake re-wakes child b (or a itself).
            *task.child.lock().unwrap() = Some(if same_child {
                a.clone_waker()
            } else {
                b.clone_waker()
            });
            // One wake of child a, from this thread (not in a pass).
            a.clone_waker().wake_by_ref();
            let wakes = task.wakes.load(Ordering::SeqCst);
            // Stop the re-wakes before polling (the registration may clone
            // and wake the task's waker).
            let child = task.child.lock().unwrap().take();
            drop(child);
            assert!(
                wakes <= 2,
                "same_child = {same_child}: one wake of a child woke the task {wakes} times: \
                 the task's wake re-woke a child whose bit was already set, which counted a \
                 request during the hold, served by waking the task again, and so on (an \
                 endless loop without the cap of 1000)"
            );
            a.done.store(true, Ordering::SeqCst);
            b.done.store(true, Ordering::SeqCst);
            if same_child {
                // Only a was woken so far.
                b.clone_waker().wake();
            }
            assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready((1, 'b')));
            assert_eq!(a.polls(), 2);
            assert_eq!(b.polls(), 2);
        }
    });
}

/// A task waker that counts its wakes; each of its first 50 wakes waits
/// (the first up to 1 s, the others up to 5 ms) until `landed` grows: another thread's wake landed while
/// this one holds the slot (a loaded 2-core machine may deschedule that
/// thread for a while).
#[derive(Default)]
struct SlowWaker {
    wakes: AtomicUsize,
    landed: Arc<AtomicUsize>,
}
impl Wake for SlowWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let n = self.wakes.fetch_add(1, Ordering::SeqCst);
        if n >= 50 {
            return;
        }
        let seen = self.landed.load(Ordering::SeqCst);
        let start = Instant::now();
        let limit = Duration::from_millis(if n == 0 { 1000 } else { 5 });
        while self.landed.load(Ordering::SeqCst) == seen && start.elapsed() < limit {
            std::hint::spin_loop();
        }
    }
}

/// DEFECT (one-word tuple): two threads wake two children by reference, in
/// a loop for 100 ms, while the owner does not poll (its task is queued: it was woken
/// by the first of these wakes). Every wake after the first brings no news
/// (bits are set and not yet taken), yet each one that lands while the other
/// thread holds the slot counts a REQUEST: the holder wakes the task again
/// and again, and does not return from its `wake_by_ref` while the other
/// thread keeps waking (it serves the other thread's requests for as long
/// as they come). On main, the first wake turns the ready word non-zero and
/// wakes the task; every later one finds it non-zero and leaves the task
/// alone: exactly one task wake until the owner polls.
#[test]
fn concurrent_wakes_without_news_do_not_rewake_the_task() {
    watchdog("concurrent_wakes_without_news", || {
        let (a, b) = (Keeper::default(), Keeper::default());
        let mut fut = gather!(a.child(1u8), b.child(2u16));
        let task = Arc::new(SlowWaker::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        let go = Arc::new(Barrier::new(2));
        let hammers: Vec<_> = [a.clone_waker(), b.clone_waker()]
            .into_iter()
            .map(|w| {
                let (go, landed) = (go.clone(), task.landed.clone());
                std::thread::spawn(move || {
                    go.wait();
                    // For 100 ms (a holder may be serving for all of it).
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_millis(100) {
                        w.wake_by_ref();
                        landed.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in hammers {
            h.join().unwrap();
        }
        let wakes = task.wakes.load(Ordering::SeqCst);
        assert_eq!(
            wakes, 1,
            "100 ms of wakes of two children without a poll in between woke the task {wakes} \
             times (each wake during the other thread's hold counted a request although the \
             bits were already set)"
        );
        a.done.store(true, Ordering::SeqCst);
        b.done.store(true, Ordering::SeqCst);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready((1, 2)));
        assert_eq!(a.polls(), 2);
        assert_eq!(b.polls(), 2);
    });
}

// ---------------------------------------------------------------------------
// Clone storms: the reference count inside the word
// ---------------------------------------------------------------------------

/// The shared side of a [`Fired`] child: its latest waker (a clone, kept
/// until replaced or taken), whether it may finish, its polls.
#[derive(Default)]
struct Slot {
    waker: Mutex<Option<Waker>>,
    done: AtomicBool,
    polls: AtomicUsize,
}

impl Slot {
    /// A clone of the parked waker (the lock is not held while it is used).
    fn clone_waker(&self) -> Option<Waker> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Lets the child finish and wakes it (through a clone, by value).
    fn fire(&self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(w) = self.clone_waker() {
            w.wake();
        }
    }
    fn take_waker(&self) -> Option<Waker> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Parks a clone of its waker in its slot at every pending poll; finishes
/// with `out` once fired. Holds a token (dropped exactly once or the
/// tracker says so).
struct Fired<T> {
    slot: Arc<Slot>,
    out: Option<T>,
    _token: Token,
}
impl<T: Unpin> Future for Fired<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.slot.polls.fetch_add(1, Ordering::SeqCst);
        if self.slot.done.load(Ordering::SeqCst) {
            return Poll::Ready(self.out.take().expect("polled after Ready"));
        }
        let old = self
            .slot
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(cx.waker().clone());
        drop(old);
        if self.slot.done.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

fn fired<T>(slots: &[Arc<Slot>], i: usize, tracker: &Tracker, out: T) -> Fired<T> {
    Fired {
        slot: slots[i].clone(),
        out: Some(out),
        _token: tracker.token(),
    }
}

/// `gather!` of 16 [`Fired`] children of 16 output types (values `0..16`).
macro_rules! gather16 {
    ($slots:expr, $tracker:expr) => {{
        let (s, t) = (&$slots, &$tracker);
        gather!(
            fired(s, 0, t, 0u8),
            fired(s, 1, t, 1u16),
            fired(s, 2, t, 2u32),
            fired(s, 3, t, 3u64),
            fired(s, 4, t, 4u128),
            fired(s, 5, t, 5usize),
            fired(s, 6, t, 6i8),
            fired(s, 7, t, 7i16),
            fired(s, 8, t, 8i32),
            fired(s, 9, t, 9i64),
            fired(s, 10, t, 10i128),
            fired(s, 11, t, 11isize),
            fired(s, 12, t, '\u{c}'),
            fired(s, 13, t, String::from("13")),
            fired(s, 14, t, vec![14u8]),
            fired(s, 15, t, Some(15u8))
        )
    }};
}

/// Runs `f`, swallowing a panic (a task waker's injected one, surfacing on
/// the thread that woke or dropped a child's waker).
fn caught(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// One thread of a clone storm: `rounds` times, takes a clone of a random
/// child's parked waker and makes up to 1 500 more, then wakes (by value, or
/// by reference then drops), drops, or keeps each (kept ones are dropped in
/// bulk later, some after the thread's fires); finally fires its share of
/// the children (`i % threads == t`). Every call that can reach the task's
/// waker (a wake, or the drop that frees the block) is made under
/// `catch_unwind`.
fn storm_thread(
    slots: Vec<Arc<Slot>>,
    t: u64,
    threads: u64,
    rounds: usize,
    seed: u64,
    go: Arc<Barrier>,
) {
    let mut rng = Rng(seed * 31 + t + 1);
    let mut keep: Vec<Waker> = Vec::new();
    go.wait();
    for _ in 0..rounds {
        let i = rng.below_u64(slots.len() as u64) as usize;
        let Some(w) = slots[i].clone_waker() else {
            continue;
        };
        let n = rng.below_u64(1500) as usize;
        let mut clones: Vec<Waker> = (0..n).map(|_| w.clone()).collect();
        clones.push(w);
        for c in clones {
            match rng.below_u64(6) {
                0 => caught(|| c.wake()),
                1 => caught(|| {
                    c.wake_by_ref();
                    drop(c);
                }),
                2 | 3 => caught(|| drop(c)),
                _ => keep.push(c),
            }
        }
        if keep.len() > 4000 {
            caught(|| keep.clear());
            keep.clear();
        }
        spin(rng.below_u64(500));
    }
    for (i, s) in slots.iter().enumerate() {
        if i as u64 % threads == t {
            caught(|| s.fire());
        }
    }
    // The kept clones outlive the fires: some are dropped after the gather
    // completed (CLOSED) or was dropped, racing the owner.
    let mut tail = keep.split_off(keep.len() / 2);
    caught(|| keep.clear());
    keep.clear();
    while let Some(c) = tail.pop() {
        if rng.below_u64(2) == 0 {
            caught(|| c.wake_by_ref());
        }
        caught(|| drop(c));
    }
}

/// Thousands of clones of the 16 children's wakers made, woken and dropped
/// on three threads while the owner polls (with a new task waker at every
/// poll in odd rounds: a task moved between executors), waiting for its
/// latest task waker to be woken each time (a lost wake-up times out), or
/// drops the gather part-way (on its own thread or another) in every third
/// round. Every child is dropped exactly once, outputs come in order, the
/// task's wakers are all released once the last clone is gone (the block
/// was freed, exactly once: run under ASan).
#[test]
fn clone_storm_with_16_children_while_the_owner_polls_moves_and_drops() {
    watchdog("clone_storm_with_16_children", || {
        for round in 0..40u64 {
            let slots: Vec<Arc<Slot>> = (0..16).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let mut fut = Some(gather16!(slots, tracker));
            let mut task_wakers = vec![CountingWaker::new()];
            // The first poll parks every child's waker (an escape).
            assert!(poll_once(fut.as_mut().unwrap(), &task_wakers[0]).is_pending());
            let go = Arc::new(Barrier::new(4));
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let (slots, go) = (slots.clone(), go.clone());
                    std::thread::spawn(move || storm_thread(slots, t, 3, 60, round, go))
                })
                .collect();
            go.wait();
            let mut rng = Rng(round + 77);
            let drop_after = if round % 3 == 2 {
                Some(1 + rng.below_u64(20))
            } else {
                None
            };
            let mut polls = 1u64;
            loop {
                if drop_after == Some(polls) {
                    let f = fut.take().unwrap();
                    if rng.below_u64(2) == 0 {
                        drop(f);
                    } else {
                        std::thread::spawn(move || drop(f)).join().unwrap();
                    }
                    break;
                }
                if round % 2 == 1 {
                    task_wakers.push(CountingWaker::new());
                }
                let w = task_wakers.last().unwrap();
                let before = w.wakes();
                match poll_once(fut.as_mut().unwrap(), w) {
                    Poll::Ready(out) => {
                        let (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) = out;
                        assert_eq!((a, b, c, d, e, f, g, h), (0, 1, 2, 3, 4, 5, 6, 7));
                        assert_eq!((i, j, k, l), (8, 9, 10, 11));
                        assert_eq!((m, n, o, p), ('\u{c}', "13".into(), vec![14], Some(15)));
                        break;
                    }
                    Poll::Pending => {
                        polls += 1;
                        assert!(polls < 100_000, "round {round}: too many polls");
                        let start = Instant::now();
                        while w.wakes() == before {
                            assert!(
                                start.elapsed() < Duration::from_secs(10),
                                "round {round}, poll {polls}: the latest task waker was never \
                                 woken (lost wake-up)"
                            );
                            std::thread::yield_now();
                        }
                    }
                }
            }
            for t in threads {
                t.join().unwrap();
            }
            for s in &slots {
                drop(s.take_waker());
            }
            drop(fut);
            assert_eq!(tracker.created(), 16);
            assert_eq!(tracker.live(), 0, "round {round}: a child was not dropped");
            for (k, w) in task_wakers.iter().enumerate() {
                assert_eq!(
                    w.live_clones(),
                    0,
                    "round {round}: task waker {k} still held (the block was not freed)"
                );
            }
            for (i, s) in slots.iter().enumerate() {
                // SPEC §1.3: polls <= wakes + 1 cannot be counted exactly
                // here (wakes are made by many clones); a bound against
                // runaway polling:
                assert!(s.polls.load(Ordering::SeqCst) <= 100_000, "child {i}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// A task waker that panics at random calls, with concurrent wakers
// ---------------------------------------------------------------------------

mod panicky {
    //! A task waker (user code) whose `clone`, `wake`, `wake_by_ref` and
    //! `drop` each panic at pseudo-random calls (about one in `rate`), with
    //! an [`Injected`] payload (silenced by the harness's hook). Calls of
    //! `wake`/`wake_by_ref` are counted before they can panic (a wake that
    //! panics was made: the executor's failure), and live handles are
    //! counted (a leaked block keeps one).
    use super::common::faults::Injected;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
    use std::task::{RawWaker, RawWakerVTable, Waker};

    pub(crate) struct State {
        pub(crate) handles: AtomicIsize,
        pub(crate) wakes: AtomicUsize,
        pub(crate) panics: AtomicUsize,
        calls: AtomicU64,
        pub(crate) armed: AtomicBool,
        rate: u64,
        seed: u64,
        /// Never panics on this thread (the owner's), if set.
        spare: Option<std::thread::ThreadId>,
    }

    impl State {
        fn maybe_panic(&self, site: &'static str) {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.seed;
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 32;
            if self.armed.load(Ordering::SeqCst)
                && x % self.rate == 0
                && self.spare != Some(std::thread::current().id())
            {
                self.panics.fetch_add(1, Ordering::SeqCst);
                std::panic::panic_any(Injected {
                    k: n as usize,
                    site: site.into(),
                });
            }
        }
    }

    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

    unsafe fn clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` is an `Arc<State>` kept alive by the cloned waker.
        let s = unsafe { &*data.cast::<State>() };
        s.maybe_panic("task waker clone"); // nothing cloned if it panics
        s.handles.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the new handle owns the new strong count.
        unsafe { Arc::increment_strong_count(data.cast::<State>()) };
        RawWaker::new(data, &VTABLE)
    }

    unsafe fn wake(data: *const ()) {
        // SAFETY: the consumed waker's strong count, given back when `s`
        // drops (also while unwinding).
        let s = unsafe { Arc::from_raw(data.cast::<State>()) };
        s.handles.fetch_sub(1, Ordering::SeqCst);
        s.wakes.fetch_add(1, Ordering::SeqCst);
        s.maybe_panic("task waker wake");
    }

    unsafe fn wake_by_ref(data: *const ()) {
        // SAFETY: the waker keeps its strong count.
        let s = unsafe { &*data.cast::<State>() };
        s.wakes.fetch_add(1, Ordering::SeqCst);
        s.maybe_panic("task waker wake_by_ref");
    }

    unsafe fn drop_waker(data: *const ()) {
        // SAFETY: the dropped waker's strong count, given back when `s`
        // drops (also while unwinding).
        let s = unsafe { Arc::from_raw(data.cast::<State>()) };
        s.handles.fetch_sub(1, Ordering::SeqCst);
        s.maybe_panic("task waker drop");
    }

    /// A new waker (its creation is not a call) and its state.
    pub(crate) fn new(
        rate: u64,
        seed: u64,
        spare: Option<std::thread::ThreadId>,
    ) -> (Waker, Arc<State>) {
        let s = Arc::new(State {
            handles: AtomicIsize::new(1),
            wakes: AtomicUsize::new(0),
            panics: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            armed: AtomicBool::new(true),
            rate,
            seed,
            spare,
        });
        let data = Arc::into_raw(s.clone()).cast::<()>();
        // SAFETY: the vtable follows the `RawWaker` contract over one strong
        // count of an `Arc<State>` per handle.
        (unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }, s)
    }
}

/// The clone storm of [`clone_storm_with_16_children_while_the_owner_polls_moves_and_drops`]
/// with task wakers that panic at about one call in three (clone: during the
/// owner's registration; wake / wake_by_ref: under WAKING on the storm
/// threads, or the owner's own wake after a pass; drop: in the
/// registration, the owner's drop, or the block's free on whichever thread
/// drops the last clone). The owner gets a new task waker at every poll,
/// waits for it to be called (a wake that panicked was made), and drops the
/// poisoned gather after a panic out of its poll. No abort (a second panic
/// while unwinding), no hang, every child dropped exactly once, every task
/// waker handle released (no block leaked: ASan checks the frees).
#[test]
fn clone_storm_with_task_wakers_that_panic_at_random_calls() {
    let _quiet = common::faults::QuietHook::install();
    watchdog("clone_storm_with_panicking_task_wakers", || {
        let (mut panics, mut poisoned) = (0, 0);
        for round in 0..150u64 {
            let slots: Vec<Arc<Slot>> = (0..16).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let run =
                drive_storm_counted(round, 3, &slots, &tracker, gather16!(slots, tracker), None);
            if let Some(out) = run.output {
                assert_eq!(out.0, 0);
                assert_eq!(out.13, "13");
                assert_eq!(out.15, Some(15));
            }
            assert_eq!(tracker.created(), 16);
            panics += run.panics;
            poisoned += usize::from(run.poisoned);
        }
        eprintln!("{panics} injected task waker panics, {poisoned} poisoned gathers");
        assert!(panics > 0 && poisoned > 0);
    });
}

// ---------------------------------------------------------------------------
// Nested tuples and try_gather! under the storm
// ---------------------------------------------------------------------------

/// `gather!` of two `gather!`s of 8 [`Fired`] children each: the inner
/// tuples' task wakers are clones of the outer's child wakers (escapes of
/// the outer), so a wake from a storm thread goes through two words and two
/// holds, and a panicking outermost task waker unwinds through both serves.
macro_rules! nested16 {
    ($slots:expr, $tracker:expr) => {{
        let (s, t) = (&$slots, &$tracker);
        gather!(
            gather!(
                fired(s, 0, t, 0u8),
                fired(s, 1, t, 1u16),
                fired(s, 2, t, 2u32),
                fired(s, 3, t, 3u64),
                fired(s, 4, t, 4u128),
                fired(s, 5, t, 5usize),
                fired(s, 6, t, 6i8),
                fired(s, 7, t, 7i16)
            ),
            gather!(
                fired(s, 8, t, 8i32),
                fired(s, 9, t, 9i64),
                fired(s, 10, t, 10i128),
                fired(s, 11, t, 11isize),
                fired(s, 12, t, '\u{c}'),
                fired(s, 13, t, String::from("13")),
                fired(s, 14, t, vec![14u8]),
                fired(s, 15, t, Some(15u8))
            )
        )
    }};
}

/// `try_gather!` of 16 [`Fired`] children with `Result` outputs of mixed
/// `Ok` types; child `fail` (if below 16) finishes with `Err(fail)`.
macro_rules! try16 {
    ($slots:expr, $tracker:expr, $fail:expr) => {{
        let (s, t, fail) = (&$slots, &$tracker, $fail);
        let r = |i: usize, v| if i == fail { Err(i as u32) } else { Ok(v) };
        try_gather!(
            fired(s, 0, t, r(0, 0u8)),
            fired(s, 1, t, r(1, 1u8).map(u16::from)),
            fired(s, 2, t, r(2, 2u8).map(u32::from)),
            fired(s, 3, t, r(3, 3u8).map(u64::from)),
            fired(s, 4, t, r(4, 4u8).map(|v| v as char)),
            fired(s, 5, t, r(5, 5u8).map(|v| vec![v])),
            fired(s, 6, t, r(6, 6u8).map(|v| v.to_string())),
            fired(s, 7, t, r(7, 7u8).map(i8::try_from).map(Result::unwrap)),
            fired(s, 8, t, r(8, 8u8)),
            fired(s, 9, t, r(9, 9u8)),
            fired(s, 10, t, r(10, 10u8)),
            fired(s, 11, t, r(11, 11u8)),
            fired(s, 12, t, r(12, 12u8)),
            fired(s, 13, t, r(13, 13u8)),
            fired(s, 14, t, r(14, 14u8)),
            fired(s, 15, t, r(15, 15u8).map(Some))
        )
    }};
}

/// Drives `fut` (any of the storm's gathers) with a new panicking-or-not
/// task waker at each poll while three storm threads run, until it is
/// ready, poisoned or dropped at `drop_after` polls; returns the output if
/// it completed. Checks that every child is dropped exactly once and every
/// task waker handle released once the storm is over.
fn drive_storm<F: Future + Unpin + Send + 'static>(
    round: u64,
    rate: u64,
    slots: &[Arc<Slot>],
    tracker: &Tracker,
    fut: F,
    drop_after: Option<u64>,
) -> Option<F::Output> {
    drive_storm_counted(round, rate, slots, tracker, fut, drop_after).output
}

/// What [`drive_storm_counted`] saw.
struct StormRun<O> {
    output: Option<O>,
    /// Task waker panics injected.
    panics: usize,
    /// Whether a poll panicked (the gather was dropped poisoned).
    poisoned: bool,
}

/// [`drive_storm`], also counting the injected panics and whether the
/// gather was poisoned.
fn drive_storm_counted<F: Future + Unpin + Send + 'static>(
    round: u64,
    rate: u64,
    slots: &[Arc<Slot>],
    tracker: &Tracker,
    fut: F,
    drop_after: Option<u64>,
) -> StormRun<F::Output> {
    let mut poisoned = false;
    let mut fut = Some(fut);
    let mut states = Vec::new();
    let (w0, s0) = panicky::new(1_000_000_007, round, None);
    s0.armed.store(false, Ordering::SeqCst);
    assert!(
        Pin::new(fut.as_mut().unwrap())
            .poll(&mut Context::from_waker(&w0))
            .is_pending()
    );
    s0.armed.store(true, Ordering::SeqCst);
    states.push(s0);
    caught(|| drop(w0));
    let go = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (slots, go) = (slots.to_vec(), go.clone());
            std::thread::spawn(move || storm_thread(slots, t, 3, 40, round, go))
        })
        .collect();
    go.wait();
    let mut out = None;
    let mut polls = 1u64;
    let mut rng = Rng(round * 7 + 3);
    while let Some(f) = fut.as_mut() {
        if drop_after == Some(polls) {
            let f = fut.take().unwrap();
            if rng.below_u64(2) == 0 {
                caught(|| drop(f));
            } else {
                std::thread::spawn(move || caught(|| drop(f)))
                    .join()
                    .unwrap();
            }
            break;
        }
        let spare = (round % 2 == 1).then(|| std::thread::current().id());
        let (w, s) = panicky::new(rate, round * 1000 + polls, spare);
        let before = s.wakes.load(Ordering::SeqCst);
        let r = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut *f).poll(&mut Context::from_waker(&w))
        }));
        match r {
            Ok(Poll::Ready(o)) => {
                out = Some(o);
                caught(|| drop(fut.take()));
            }
            Ok(Poll::Pending) => {
                polls += 1;
                assert!(polls < 100_000, "round {round}: too many polls");
                let start = Instant::now();
                while s.wakes.load(Ordering::SeqCst) == before {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "round {round}, poll {polls}: the latest task waker was never called \
                         (lost wake-up)"
                    );
                    std::thread::yield_now();
                }
            }
            Err(_) => {
                poisoned = true;
                caught(|| drop(fut.take()));
            }
        }
        caught(|| drop(w));
        states.push(s);
    }
    for t in threads {
        t.join().unwrap();
    }
    for sl in slots {
        caught(|| drop(sl.take_waker()));
    }
    assert_eq!(tracker.live(), 0, "round {round}: a child was not dropped");
    for (k, s) in states.iter().enumerate() {
        assert_eq!(
            s.handles.load(Ordering::SeqCst),
            0,
            "round {round}: task waker {k} still held (a block was not freed)"
        );
    }
    StormRun {
        output: out,
        panics: states.iter().map(|s| s.panics.load(Ordering::SeqCst)).sum(),
        poisoned,
    }
}

/// The storm over nested tuples, with and without panicking task wakers,
/// some dropped part-way (on the owner's thread or another).
#[test]
fn clone_storm_over_nested_tuples() {
    let _quiet = common::faults::QuietHook::install();
    watchdog("clone_storm_over_nested_tuples", || {
        for round in 0..90u64 {
            let slots: Vec<Arc<Slot>> = (0..16).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let rate = if round % 3 == 0 { u64::MAX } else { 3 };
            let drop_after = (round % 5 == 4).then_some(1 + round % 7);
            let fut = nested16!(slots, tracker);
            if let Some((inner0, inner1)) =
                drive_storm(round, rate, &slots, &tracker, fut, drop_after)
            {
                assert_eq!(inner0.0, 0);
                assert_eq!(inner0.7, 7);
                assert_eq!(inner1.5, "13");
                assert_eq!(inner1.7, Some(15));
            } else {
                assert!(rate != u64::MAX || drop_after.is_some(), "round {round}");
            }
        }
    });
}

/// `try_gather!` over 16 children under the storm, the failing child at
/// every index (or none): the error (or the outputs in order) comes out,
/// every child dropped once, every task waker released; stale clones keep
/// being woken and dropped after the fail-fast.
#[test]
fn try_gather_16_fail_fast_at_every_index_under_the_storm() {
    let _quiet = common::faults::QuietHook::install();
    watchdog("try_gather_16_fail_fast_under_the_storm", || {
        for round in 0..68u64 {
            let fail = (round % 17) as usize;
            let slots: Vec<Arc<Slot>> = (0..16).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let rate = if round < 34 { u64::MAX } else { 4 };
            let fut = try16!(slots, tracker, fail);
            match drive_storm(round, rate, &slots, &tracker, fut, None) {
                Some(Err(e)) => assert_eq!(e as usize, fail, "round {round}"),
                Some(Ok(v)) => {
                    assert_eq!(fail, 16, "round {round}: no error");
                    assert_eq!(v.0, 0);
                    assert_eq!(v.6, "6");
                    assert_eq!(v.15, Some(15));
                }
                None => assert_ne!(rate, u64::MAX, "round {round}"),
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Re-entrancy: a task waker that drops the gather, or clones / wakes /
// drops child wakers, inside its own calls
// ---------------------------------------------------------------------------

type Shelf<F> = Arc<Mutex<Option<F>>>;

/// A task waker whose `wake_by_ref` drops the gather it wakes (taken from a
/// shelf, if no poll holds the shelf) and the child waker clones it keeps,
/// and wakes one of them by value first; counts its wakes.
struct DropsTheGather<F> {
    shelf: Shelf<F>,
    clones: Mutex<Vec<Waker>>,
    wakes: AtomicUsize,
}
impl<F: Send + 'static> Wake for DropsTheGather<F> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let clones = std::mem::take(&mut *self.clones.lock().unwrap());
        let mut clones = clones.into_iter();
        if let Some(c) = clones.next() {
            c.wake();
        }
        let taken = match self.shelf.try_lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        drop(taken);
        drop(clones);
    }
}

/// Under a hold (the task's wake, run by a wake of a child's clone from
/// another thread, by value or by reference), the task's waker drops the
/// gather (the owner's `close_and_release` finds WAKING held: the waker is
/// left in the slot for the free) and the clones it kept, waking one of
/// them first (no news: its bit, or another, is set). Whoever gives the
/// last reference up frees the block once (ASan), the task's waker is
/// released, every child dropped once; meanwhile a third thread wakes and
/// drops the other clones.
#[test]
fn task_waker_drops_the_gather_inside_its_wake() {
    watchdog("task_waker_drops_the_gather_inside_its_wake", || {
        for round in 0..400u64 {
            let mut rng = Rng(round + 5);
            let slots: Vec<Arc<Slot>> = (0..4).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let fut = gather!(
                fired(&slots, 0, &tracker, 0u8),
                fired(&slots, 1, &tracker, "1"),
                fired(&slots, 2, &tracker, 2u64),
                fired(&slots, 3, &tracker, '3')
            );
            let shelf: Shelf<_> = Arc::new(Mutex::new(Some(fut)));
            let task = Arc::new(DropsTheGather {
                shelf: shelf.clone(),
                clones: Mutex::new(Vec::new()),
                wakes: AtomicUsize::new(0),
            });
            let waker = Waker::from(task.clone());
            {
                let mut g = shelf.lock().unwrap();
                let f = g.as_mut().unwrap();
                assert!(
                    Pin::new(f)
                        .poll(&mut Context::from_waker(&waker))
                        .is_pending()
                );
            }
            // The task's waker keeps clones of two children's wakers.
            *task.clones.lock().unwrap() = vec![
                slots[1].clone_waker().unwrap(),
                slots[2].clone_waker().unwrap(),
            ];
            let first = slots[0].clone_waker().unwrap();
            let others: Vec<Waker> = (0..4).map(|i| slots[i].clone_waker().unwrap()).collect();
            for s in &slots {
                drop(s.take_waker());
            }
            let by_value = rng.below_u64(2) == 0;
            let go = Arc::new(Barrier::new(2));
            let g2 = go.clone();
            let a = std::thread::spawn(move || {
                g2.wait();
                if by_value {
                    first.wake();
                } else {
                    first.wake_by_ref();
                    drop(first);
                }
            });
            let delay = rng.below_u64(300);
            let b = std::thread::spawn(move || {
                go.wait();
                spin(delay);
                for (k, c) in others.into_iter().enumerate() {
                    if k % 2 == 0 {
                        c.wake();
                    } else {
                        c.wake_by_ref();
                    }
                }
            });
            a.join().unwrap();
            b.join().unwrap();
            assert!(task.wakes.load(Ordering::SeqCst) >= 1);
            // The gather was dropped inside the task's wake (or is still on
            // the shelf if a poll... none runs here).
            assert!(shelf.lock().unwrap().is_none(), "round {round}");
            assert_eq!(tracker.live(), 0, "round {round}: a child was not dropped");
            drop(waker);
            assert_eq!(
                Arc::strong_count(&task),
                1,
                "round {round}: the block kept the task's waker (not freed)"
            );
        }
    });
}

/// A task waker that wakes children's wakers from its `clone` and `drop`.
struct Meddler {
    wakes: AtomicUsize,
    on_clone: Mutex<Vec<Waker>>,
    on_drop: Mutex<Vec<Waker>>,
}
mod vt {
    use super::Meddler;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::task::{RawWaker, RawWakerVTable};
    pub(super) static VT: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);
    unsafe fn clone(d: *const ()) -> RawWaker {
        // SAFETY: an `Arc<Meddler>` kept alive by the cloned waker.
        let m = unsafe { &*d.cast::<Meddler>() };
        let mut ws = std::mem::take(&mut *m.on_clone.lock().unwrap()).into_iter();
        if let Some(w) = ws.next() {
            w.wake_by_ref();
        }
        std::mem::drop(ws);
        // SAFETY: the new handle owns a new strong count.
        unsafe { Arc::increment_strong_count(d.cast::<Meddler>()) };
        RawWaker::new(d, &VT)
    }
    unsafe fn wake(d: *const ()) {
        // SAFETY: as `wake_by_ref`, then the handle's count is dropped.
        unsafe {
            wake_by_ref(d);
            drop(d);
        }
    }
    unsafe fn wake_by_ref(d: *const ()) {
        // SAFETY: the waker keeps its count.
        unsafe { &*d.cast::<Meddler>() }
            .wakes
            .fetch_add(1, Ordering::SeqCst);
    }
    unsafe fn drop(d: *const ()) {
        // SAFETY: the handle's strong count.
        let m = unsafe { Arc::from_raw(d.cast::<Meddler>()) };
        let ws = std::mem::take(&mut *m.on_drop.lock().unwrap());
        for w in ws {
            w.wake();
        }
    }
}
fn meddler() -> (Arc<Meddler>, Waker) {
    let m = Arc::new(Meddler {
        wakes: AtomicUsize::new(0),
        on_clone: Mutex::new(Vec::new()),
        on_drop: Mutex::new(Vec::new()),
    });
    let d = Arc::into_raw(m.clone()).cast::<()>();
    // SAFETY: `VT` follows the `RawWaker` contract over an `Arc<Meddler>`.
    (m, unsafe {
        Waker::from_raw(std::task::RawWaker::new(d, &vt::VT))
    })
}

/// A task waker whose `clone` (run by the owner's registration, before it
/// takes the slot) wakes a child's clone by reference and drops another,
/// and whose `drop` (of the old waker, after the registration let go) wakes
/// a child by value: they go through the word from the owner's thread
/// outside a pass (a hold of their own, waking the older registered waker).
/// No wake is lost: the owner takes the word after registering (and polls
/// those children), or reads it after registering and wakes its new waker;
/// every child polled at most wakes + 1 times; all released.
#[test]
fn task_waker_clone_and_drop_wake_children_during_the_registration() {
    watchdog("task_waker_clone_and_drop_wake_children", || {
        let slots: Vec<Arc<Slot>> = (0..3).map(|_| Arc::default()).collect();
        let tracker = Tracker::new();
        let mut fut = gather!(
            fired(&slots, 0, &tracker, 0u8),
            fired(&slots, 1, &tracker, 1u16),
            fired(&slots, 2, &tracker, 2u32)
        );
        let (m1, w1) = meddler();
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&w1))
                .is_pending()
        );
        assert_eq!(
            Arc::strong_count(&m1),
            3,
            "registered (a clone in the slot)"
        );
        // The next registration (a new task waker): its clone wakes child 0
        // and drops a clone of child 1; the old waker's drop wakes child 2.
        let (m2, w2) = meddler();
        *m2.on_clone.lock().unwrap() = vec![
            slots[0].clone_waker().unwrap(),
            slots[1].clone_waker().unwrap(),
        ];
        *m1.on_drop.lock().unwrap() = vec![slots[2].clone_waker().unwrap()];
        slots[0].done.store(true, Ordering::SeqCst);
        slots[2].done.store(true, Ordering::SeqCst);
        // Child 1 is woken (no wake from the registration yet): a pass with
        // the new waker, registering it at the end.
        slots[1].clone_waker().unwrap().wake();
        let before2 = m2.wakes.load(Ordering::SeqCst);
        assert!(
            Pin::new(&mut fut)
                .poll(&mut Context::from_waker(&w2))
                .is_pending()
        );
        // The registration runs before the pass takes the woken children
        // (since the review of the small block): children 0 and 2, woken by
        // its user code, are then polled by this very pass. Either that, or
        // the new waker is woken for them.
        let polled_since = slots[0].polls.load(Ordering::SeqCst) == 2
            && slots[2].polls.load(Ordering::SeqCst) == 2;
        assert!(
            m2.wakes.load(Ordering::SeqCst) > before2 || polled_since,
            "children 0 and 2 were woken during the registration of the new task waker, \
             neither polled since nor the new waker woken: lost wake-up"
        );
        slots[1].fire();
        let mut polls = 0;
        let out = loop {
            polls += 1;
            assert!(polls < 10);
            match Pin::new(&mut fut).poll(&mut Context::from_waker(&w2)) {
                Poll::Ready(out) => break out,
                Poll::Pending => {}
            }
        };
        assert_eq!(out, (0, 1, 2));
        assert_eq!(slots[0].polls.load(Ordering::SeqCst), 2);
        assert_eq!(slots[1].polls.load(Ordering::SeqCst), 3);
        assert_eq!(slots[2].polls.load(Ordering::SeqCst), 2);
        for s in &slots {
            drop(s.take_waker());
        }
        drop(fut);
        assert_eq!(tracker.live(), 0);
        drop((w1, w2));
        assert_eq!(Arc::strong_count(&m1), 1);
        assert_eq!(Arc::strong_count(&m2), 1);
    });
}

// ---------------------------------------------------------------------------
// Children that panic in poll or drop while clones are woken elsewhere
// ---------------------------------------------------------------------------

/// Wraps a child: panics (an [`Injected`](common::faults::Injected)
/// payload) at its `poll_panic_at`-th poll, and in its destructor if
/// `drop_panics`.
struct Bomb<F> {
    inner: F,
    polls: usize,
    poll_panic_at: Option<usize>,
    drop_panics: bool,
}
impl<F: Future + Unpin> Future for Bomb<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls += 1;
        if Some(self.polls) == self.poll_panic_at {
            std::panic::panic_any(common::faults::Injected {
                k: self.polls,
                site: "child poll".into(),
            });
        }
        Pin::new(&mut self.inner).poll(cx)
    }
}
impl<F> Drop for Bomb<F> {
    fn drop(&mut self) {
        if self.drop_panics && !std::thread::panicking() {
            std::panic::panic_any(common::faults::Injected {
                k: 0,
                site: "child drop".into(),
            });
        }
    }
}

/// Polls `fut` once (it parks), starts three storm threads on `slots`, and
/// polls until it is ready or a poll panics (`Err`).
fn storm_and_drive<F: Future + Unpin>(
    fut: &mut F,
    w: &CountingWaker,
    slots: &[Arc<Slot>],
    go: &Arc<Barrier>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
    round: u64,
) -> Result<(), ()> {
    assert!(poll_once(fut, w).is_pending());
    for t in 0..3 {
        let (slots, go) = (slots.to_vec(), go.clone());
        threads.push(std::thread::spawn(move || {
            storm_thread(slots, t, 3, 30, round, go)
        }));
    }
    go.wait();
    for _ in 0..100_000 {
        match catch_unwind(AssertUnwindSafe(|| poll_once(fut, w))) {
            Ok(Poll::Pending) => std::thread::yield_now(),
            Ok(Poll::Ready(_)) => return Ok(()),
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Three storm threads wake, clone and drop the children's wakers while
/// the owner polls a `gather!` (or a `try_gather!` whose failing child's
/// sibling panics when the fail-fast drops it) whose children panic in
/// their poll (at a random poll) or destructor (two of them: the first
/// panic propagates after every other child was dropped). The poll or the
/// drop panics; the block is still released (the task's wakers all
/// dropped once the last clone goes, ASan for the free), every child
/// dropped exactly once.
#[test]
fn children_panicking_in_poll_and_drop_during_a_clone_storm() {
    let _quiet = common::faults::QuietHook::install();
    watchdog("children_panicking_in_poll_and_drop", || {
        for round in 0..120u64 {
            let mut rng = Rng(round * 13 + 1);
            let slots: Vec<Arc<Slot>> = (0..6).map(|_| Arc::default()).collect();
            let tracker = Tracker::new();
            let bomb = |i: usize, rng: &mut Rng| Bomb {
                inner: fired(&slots, i, &tracker, i as u32),
                polls: 0,
                poll_panic_at: (rng.below_u64(3) == 0).then(|| 2 + rng.below_u64(3) as usize),
                drop_panics: rng.below_u64(3) == 0,
            };
            let (b0, b1, b2, b3) = (
                bomb(0, &mut rng),
                bomb(1, &mut rng),
                bomb(2, &mut rng),
                bomb(3, &mut rng),
            );
            let w = CountingWaker::new();
            let go = Arc::new(Barrier::new(4));
            let mut threads = Vec::new();
            let try_variant = round % 2 == 1;
            let r: Result<(), ()> = if try_variant {
                // Child 5 fails when fired; child 4 (its sibling) panics
                // when the fail-fast drops it.
                let mut fut = try_gather!(
                    async move { Ok::<u32, u32>(b0.await) },
                    async move { Ok(b1.await) },
                    async move { Ok(b2.await) },
                    async move { Ok(b3.await) },
                    Bomb {
                        inner: fired(&slots, 4, &tracker, Ok::<u8, u32>(4)),
                        polls: 0,
                        poll_panic_at: None,
                        drop_panics: true,
                    },
                    fired(&slots, 5, &tracker, Err::<char, u32>(5))
                );
                let res = storm_and_drive(&mut fut, &w, &slots, &go, &mut threads, round);
                caught(|| drop(fut));
                res
            } else {
                let mut fut = gather!(
                    b0,
                    b1,
                    b2,
                    b3,
                    fired(&slots, 4, &tracker, "4"),
                    fired(&slots, 5, &tracker, 5u8)
                );
                let res = storm_and_drive(&mut fut, &w, &slots, &go, &mut threads, round);
                // A destructor panic propagates out of the drop (after
                // every child was dropped and the block released).
                caught(|| drop(fut));
                res
            };
            let _ = r;
            for t in threads {
                t.join().unwrap();
            }
            for s in &slots {
                caught(|| drop(s.take_waker()));
            }
            assert_eq!(tracker.created(), 6);
            assert_eq!(tracker.live(), 0, "round {round}: a child was not dropped");
            assert_eq!(
                w.live_clones(),
                0,
                "round {round}: the task's waker is still held (the block was not freed)"
            );
        }
    });
}

/// N = 1 (the smallest word: one ready bit) and N = 2 under the storm, with
/// and without panicking task wakers, `gather!` and `try_gather!` (failing
/// or not), some dropped part-way.
#[test]
fn one_and_two_children_under_the_storm() {
    let _quiet = common::faults::QuietHook::install();
    watchdog("one_and_two_children_under_the_storm", || {
        for round in 0..80u64 {
            let rate = if round % 2 == 0 { u64::MAX } else { 3 };
            let drop_after = (round % 4 == 3).then_some(1 + round % 5);
            let tracker = Tracker::new();
            let one: Vec<Arc<Slot>> = vec![Arc::default()];
            let fut = gather!(fired(&one, 0, &tracker, 7u8));
            if let Some(out) = drive_storm(round, rate, &one, &tracker, fut, drop_after) {
                assert_eq!(out, (7,));
            }
            let fut = try_gather!(fired(&one_again(&one), 0, &tracker, Err::<u8, u8>(1)));
            if let Some(out) = drive_storm(round, rate, &one, &tracker, fut, drop_after) {
                assert_eq!(out, Err(1));
            }
            let two: Vec<Arc<Slot>> = vec![Arc::default(), Arc::default()];
            let fut = try_gather!(
                fired(&two, 0, &tracker, Ok::<u8, u8>(1)),
                fired(&two, 1, &tracker, Ok::<String, u8>("2".into()))
            );
            if let Some(out) = drive_storm(round, rate, &two, &tracker, fut, drop_after) {
                assert_eq!(out, Ok((1, "2".to_owned())));
            }
        }
    });
}

/// The same slots, reset for another gather (not fired, no waker).
fn one_again(slots: &[Arc<Slot>]) -> Vec<Arc<Slot>> {
    for s in slots {
        s.done.store(false, Ordering::SeqCst);
        drop(s.take_waker());
    }
    slots.to_vec()
}
