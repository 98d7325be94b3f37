//! Adversarial review of `gather!`/`try_gather!` without the POLLING bit
//! (branch `tup`): the owner takes the ready word's bits at the start of a
//! pass (swap, or load + store while nothing escaped, or nothing when only
//! owner-thread bits are set), reads the word again after the children and
//! the lazy registration, and stores CLOSED once finished.
//!
//! Attacks: escaped clones made on scoped threads and used later from an
//! unrelated thread, wakes racing the end of the pass and the lazy
//! registration with a new task waker at every poll, stale clones after
//! completion / fail-fast / drop (no wake of the task, block freed once, also
//! when the last clone drops on another thread concurrently with the drop),
//! a panicking task waker, N = 1..16 mixed children. Run under ASan too.

use crate::common;

use awaitkit::{gather, try_gather};
use common::*;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Waits until `w` was woken at least `n` times; `false` on timeout.
fn woken_within(w: &CountingWaker, n: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while w.wakes() < n {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// A child finished once it was fired `need` times; it keeps a clone of its
/// latest waker (under the same lock as the count, so a fire is never
/// missed) and counts its polls.
#[derive(Default)]
struct GateState {
    fired: usize,
    wakes: usize,
    waker: Option<Waker>,
}

#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, AtomicUsize)>);

impl Gate {
    /// Counts a fire and wakes the stored waker (taking it: one wake per
    /// stored clone, as a oneshot would).
    fn fire(&self) {
        let w = {
            let mut s = self.0.0.lock().unwrap();
            s.fired += 1;
            let w = s.waker.take();
            if w.is_some() {
                s.wakes += 1;
            }
            w
        };
        if let Some(w) = w {
            w.wake();
        }
    }
    fn polls(&self) -> usize {
        self.0.1.load(Ordering::SeqCst)
    }
    fn wakes(&self) -> usize {
        self.0.0.lock().unwrap().wakes
    }
    fn child<T>(&self, need: usize, out: T) -> GateChild<T> {
        GateChild {
            gate: self.clone(),
            need,
            out: Some(out),
        }
    }
}

struct GateChild<T> {
    gate: Gate,
    need: usize,
    out: Option<T>,
}
impl<T> Unpin for GateChild<T> {}
impl<T> Future for GateChild<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.gate.0.1.fetch_add(1, Ordering::SeqCst);
        let mut s = self.gate.0.0.lock().unwrap();
        if s.fired >= self.need {
            drop(s);
            return Poll::Ready(self.out.take().expect("polled after Ready"));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The "global" a clone is moved into by a scoped thread during a child's
/// poll, and a long-lived unrelated thread that takes it out and wakes it
/// after a random spin (racing the owner's end of pass, its lazy
/// registration, or landing after `Pending`).
#[derive(Default)]
struct Stash {
    slot: Mutex<Option<Waker>>,
    stop: AtomicBool,
    by_value: AtomicBool,
    delay: AtomicUsize,
}

/// A child whose `escape_at`-th poll spawns a scoped thread that clones the
/// borrowed waker into the stash (the scoped thread is joined before the
/// poll returns, the clone lives on); it is ready at the next poll. Before
/// that it wakes itself (owner-thread bits only).
struct ScopedEscape {
    stash: Arc<Stash>,
    polls: usize,
    escape_at: usize,
}
impl Future for ScopedEscape {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls += 1;
        if self.polls > self.escape_at {
            return Poll::Ready(self.polls);
        }
        if self.polls < self.escape_at {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let waker = cx.waker();
        let stash = &self.stash;
        std::thread::scope(|s| {
            s.spawn(|| {
                *stash.slot.lock().unwrap() = Some(waker.clone());
            });
        });
        Poll::Pending
    }
}

/// A clone made on a scoped thread during a child's poll (first, or a later
/// pass after self-wakes), moved into a global and woken later from an
/// unrelated thread at random moments, while the task's waker changes at
/// every poll. The wake must reach the latest task waker (a lost one times
/// out), and each child is polled exactly wakes + 1 times.
#[test]
fn scoped_thread_clone_in_a_global_woken_by_an_unrelated_thread() {
    watchdog("scoped_thread_clone_in_a_global", || {
        let stash = Arc::new(Stash::default());
        let s2 = stash.clone();
        let waker_thread = std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            while !s2.stop.load(Ordering::SeqCst) {
                let w = s2.slot.lock().unwrap().take();
                if let Some(w) = w {
                    spin(s2.delay.load(Ordering::SeqCst) as u64 + rng.below_u64(64));
                    if s2.by_value.load(Ordering::SeqCst) {
                        w.wake();
                    } else {
                        w.wake_by_ref();
                        spin(rng.below_u64(32));
                        drop(w);
                    }
                } else {
                    // Idle: yield (on a busy machine the owner may need
                    // this core).
                    std::thread::yield_now();
                }
            }
        });
        let mut rng = Rng(12345);
        for round in 0..3000 {
            stash
                .by_value
                .store(rng.below_u64(2) == 0, Ordering::SeqCst);
            stash
                .delay
                .store(rng.below_u64(400) as usize, Ordering::SeqCst);
            let escape_at = 1 + (round % 3);
            let sib = Gate::default();
            let mut fut = gather!(
                ScopedEscape {
                    stash: stash.clone(),
                    polls: 0,
                    escape_at,
                },
                async { 'x' },
                sib.child(0, 5u8)
            );
            let mut polls = 0;
            let out = loop {
                polls += 1;
                assert!(polls < 100, "round {round}: too many polls");
                let w = CountingWaker::new();
                match poll_once(&mut fut, &w) {
                    Poll::Ready(out) => break out,
                    Poll::Pending => {
                        assert!(
                            woken_within(&w, 1, Duration::from_secs(5)),
                            "round {round}, poll {polls}: the task's latest waker was never \
                             woken (lost wake-up)"
                        );
                    }
                }
            };
            assert_eq!(out, (escape_at + 1, 'x', 5u8), "round {round}");
            assert_eq!(polls, escape_at + 1, "round {round}");
        }
        stash.stop.store(true, Ordering::SeqCst);
        waker_thread.join().unwrap();
    });
}

/// Eight parked children, each needing three fires, fired at random
/// moments by three threads while the owner polls with a new task waker
/// every time (a task moved between executors at every poll) and only polls
/// again once that latest waker was woken. A wake that lands between the
/// owner's load and store of the word, during the pass, or during the lazy
/// registration must reach the latest waker; every child is polled at most
/// wakes + 1 times.
#[test]
fn fire_storm_with_a_new_task_waker_at_every_poll() {
    watchdog("fire_storm_with_a_new_task_waker", || {
        for round in 0..300u64 {
            let gates: Vec<Gate> = (0..8).map(|_| Gate::default()).collect();
            let mut fut = gather!(
                gates[0].child(3, 0u8),
                gates[1].child(3, 1u16),
                gates[2].child(3, 2u32),
                gates[3].child(3, 3u64),
                gates[4].child(3, "4"),
                gates[5].child(3, '5'),
                gates[6].child(3, 6i8),
                gates[7].child(3, 7usize)
            );
            // The children park their wakers in the first poll, before the
            // firing starts (a fire before that is fine too, but then the
            // count of wakes is not the count of fires).
            let w0 = CountingWaker::new();
            assert!(poll_once(&mut fut, &w0).is_pending());
            let go = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let gates = gates.clone();
                    let go = go.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(round * 7 + t + 1);
                        while !go.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        // Thread t fires its share: 24 fires in all.
                        for k in 0..8 {
                            spin(rng.below_u64(2000));
                            gates[((t * 8 + k) % 8) as usize].fire();
                        }
                    })
                })
                .collect();
            go.store(true, Ordering::Release);
            let mut polls = 1;
            let out = loop {
                let w = CountingWaker::new();
                match poll_once(&mut fut, &w) {
                    Poll::Ready(out) => break out,
                    Poll::Pending => {
                        polls += 1;
                        assert!(polls < 10_000, "round {round}: too many polls");
                        if !woken_within(&w, 1, Duration::from_secs(5)) {
                            let fired: Vec<_> =
                                gates.iter().map(|g| g.0.0.lock().unwrap().fired).collect();
                            panic!(
                                "round {round}, poll {polls}: latest task waker never woken \
                                 (lost wake-up); fires per child {fired:?}"
                            );
                        }
                    }
                }
            };
            assert_eq!(out, (0, 1, 2, 3, "4", '5', 6, 7), "round {round}");
            for t in threads {
                t.join().unwrap();
            }
            for (i, g) in gates.iter().enumerate() {
                assert!(
                    g.polls() <= g.wakes() + 1,
                    "round {round}: child {i} polled {} times for {} wakes",
                    g.polls(),
                    g.wakes()
                );
            }
        }
    });
}

/// A child that parks two clones of its waker in a shared stash, wakes
/// itself, and finishes at its second poll: its clones outlive it.
struct TwoClones {
    stash: Arc<Mutex<Vec<Waker>>>,
    polled: bool,
    out: usize,
}
impl Future for TwoClones {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.polled {
            return Poll::Ready(self.out);
        }
        self.polled = true;
        let mut stash = self.stash.lock().unwrap();
        stash.push(cx.waker().clone());
        stash.push(cx.waker().clone());
        drop(stash);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `gather!` of the given indices of [`TwoClones`] children.
macro_rules! gather_clones {
    ($stash:expr; $($i:literal)*) => {
        gather!($(TwoClones { stash: $stash.clone(), polled: false, out: $i }),*)
    };
}

/// After completion (CLOSED), stale clones of every child of tuples of
/// 1..=16 children are woken (by reference and by value) on several threads
/// while the owner drops the future concurrently: the task is never woken
/// again, its waker is released, and the block is freed once, by whoever
/// drops last (ASan).
#[test]
fn stale_clones_after_completion_for_1_to_16_children() {
    fn run<F>(
        round: usize,
        mut fut: F,
        stash: &Arc<Mutex<Vec<Waker>>>,
        check: impl FnOnce(F::Output) -> String,
        expect: &str,
    ) where
        F: Future + Unpin + Send + 'static,
    {
        let w = CountingWaker::new();
        assert!(poll_once(&mut fut, &w).is_pending());
        assert_eq!(w.wakes(), 1, "the self-wakes wake the task once");
        let out = match poll_once(&mut fut, &w) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("not ready"),
        };
        assert_eq!(check(out), expect, "outputs in input order");
        let after = w.wakes();
        let mut clones = std::mem::take(&mut *stash.lock().unwrap());
        let go = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..2 {
            let mine: Vec<Waker> = clones.split_off(if t == 0 { clones.len() / 2 } else { 0 });
            let go = go.clone();
            threads.push(std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for (k, c) in mine.into_iter().enumerate() {
                    if k % 2 == 0 {
                        c.wake();
                    } else {
                        c.wake_by_ref();
                        drop(c);
                    }
                }
            }));
        }
        assert!(clones.is_empty());
        go.store(true, Ordering::Release);
        if round % 2 == 0 {
            drop(fut);
        } else {
            // Dropped on yet another thread.
            std::thread::spawn(move || drop(fut)).join().unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.wakes(), after, "a stale clone woke the finished task");
        assert_eq!(w.live_clones(), 0, "the task's waker outlived the gather");
    }
    fn dbg<T: std::fmt::Debug>(t: T) -> String {
        format!("{t:?}")
    }
    watchdog("stale_clones_after_completion", || {
        for round in 0..200 {
            let stash: Arc<Mutex<Vec<Waker>>> = Arc::default();
            run(round, gather_clones!(stash; 0), &stash, dbg, "(0,)");
            run(round, gather_clones!(stash; 0 1), &stash, dbg, "(0, 1)");
            run(
                round,
                gather_clones!(stash; 0 1 2),
                &stash,
                dbg,
                "(0, 1, 2)",
            );
            run(
                round,
                gather_clones!(stash; 0 1 2 3 4),
                &stash,
                dbg,
                "(0, 1, 2, 3, 4)",
            );
            run(
                round,
                gather_clones!(stash; 0 1 2 3 4 5 6 7),
                &stash,
                dbg,
                "(0, 1, 2, 3, 4, 5, 6, 7)",
            );
            run(
                round,
                gather_clones!(stash; 0 1 2 3 4 5 6 7 8 9 10 11),
                &stash,
                dbg,
                "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)",
            );
            run(
                round,
                gather_clones!(stash; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
                &stash,
                |(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)| {
                    format!("{:?}", (a, b, c, d, e, f, g, h, (i, j, k, l, m, n, o, p)))
                },
                "(0, 1, 2, 3, 4, 5, 6, 7, (8, 9, 10, 11, 12, 13, 14, 15))",
            );
        }
    });
}

/// `try_gather!` fail-fast while two threads hammer the parked siblings'
/// clones (wake by reference, in a loop) across the failing poll: the error
/// comes out, the siblings are dropped once before it is returned; once the
/// hammers are joined (their in-flight wakes done), the clones woken again
/// from other threads never wake the task, and they drop last, racing the
/// future's drop on the owner's thread (ASan: the block freed once).
#[test]
fn try_gather_fail_fast_while_clones_are_hammered() {
    watchdog("try_gather_fail_fast_while_clones_are_hammered", || {
        for round in 0..500u64 {
            let drops = Arc::new(AtomicUsize::new(0));
            let stash: Arc<Mutex<Vec<Waker>>> = Arc::default();
            let parked = |d: Arc<AtomicUsize>| {
                let stash = stash.clone();
                let guard = DropCounter(d);
                std::future::poll_fn(move |cx| {
                    let _ = &guard;
                    stash.lock().unwrap().push(cx.waker().clone());
                    Poll::<Result<u8, &'static str>>::Pending
                })
            };
            let fail_gate = Gate::default();
            let ok_gate = Gate::default();
            let mut fut = try_gather!(
                parked(drops.clone()),
                fail_gate.child(1, Err::<u16, &'static str>("bad")),
                parked(drops.clone()),
                ok_gate.child(0, Ok::<char, &'static str>('c'))
            );
            let w = CountingWaker::new();
            assert!(poll_once(&mut fut, &w).is_pending());
            let clones = std::mem::take(&mut *stash.lock().unwrap());
            assert_eq!(clones.len(), 2);
            let stop = Arc::new(AtomicBool::new(false));
            let hammers: Vec<_> = clones
                .into_iter()
                .enumerate()
                .map(|(k, c)| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(round * 3 + k as u64 + 1);
                        while !stop.load(Ordering::Acquire) {
                            c.wake_by_ref();
                            spin(rng.below_u64(100));
                        }
                        c
                    })
                })
                .collect();
            let mut rng = Rng(round + 99);
            let fire_at = 1 + rng.below_u64(6);
            let mut polls = 0u64;
            let err = loop {
                polls += 1;
                assert!(polls < 100_000, "round {round}: hang");
                if polls == fire_at {
                    fail_gate.fire();
                }
                match poll_once(&mut fut, &w) {
                    Poll::Ready(r) => break r,
                    Poll::Pending => {
                        assert!(
                            polls < fire_at || woken_within(&w, 1, Duration::from_secs(5)),
                            "round {round}: the failing child's wake was lost"
                        );
                    }
                }
            };
            assert_eq!(err, Err("bad"), "round {round}");
            assert_eq!(
                drops.load(Ordering::SeqCst),
                2,
                "round {round}: siblings dropped before the error"
            );
            stop.store(true, Ordering::Release);
            let clones: Vec<Waker> = hammers.into_iter().map(|h| h.join().unwrap()).collect();
            let after = w.wakes();
            let go = Arc::new(AtomicBool::new(false));
            let late: Vec<_> = clones
                .into_iter()
                .map(|c| {
                    let go = go.clone();
                    std::thread::spawn(move || {
                        while !go.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        c.wake_by_ref();
                        c.wake();
                    })
                })
                .collect();
            go.store(true, Ordering::Release);
            drop(fut);
            for t in late {
                t.join().unwrap();
            }
            assert_eq!(
                w.wakes(),
                after,
                "round {round}: a stale clone woke the task"
            );
            assert_eq!(w.live_clones(), 0, "round {round}");
        }
    });
}

/// Counts drops.
struct DropCounter(Arc<AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A task waker that counts its calls and panics at the first one after it
/// was armed (an executor whose queue is full).
#[derive(Default)]
struct PanicsWhenArmed {
    calls: AtomicUsize,
    armed: AtomicBool,
}
impl Wake for PanicsWhenArmed {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the task waker panics");
        }
    }
}

/// The task's waker is registered (a clone escaped) and panics at its next
/// wake. During a pass, a scoped thread wakes the sibling's escaped clone:
/// the word is zero (the owner took it), so that wake goes to the task's
/// waker, whose panic unwinds on the scoped thread (on main the owner's
/// POLLING mark kept it from the task's waker). The owner must still see the
/// bit after the pass and wake its task (the wake is not lost), and the
/// sibling is polled at the next poll.
#[test]
fn wake_during_the_pass_whose_task_wake_panics_is_not_lost() {
    watchdog("wake_during_the_pass_whose_task_wake_panics", || {
        let sib = Gate::default();
        let s2 = sib.clone();
        let mut n = 0;
        let waker_of_sibling = std::future::poll_fn(move |cx| {
            n += 1;
            if n == 2 {
                // Second pass: fire the sibling from a scoped thread; a
                // panic of the task's waker is caught there.
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let _ = catch_unwind(AssertUnwindSafe(|| s2.fire()));
                    });
                });
                return Poll::Ready(n);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        let mut fut = gather!(sib.child(1, 's'), waker_of_sibling);
        let parent = Arc::new(PanicsWhenArmed::default());
        let waker = Waker::from(parent.clone());
        let mut cx = Context::from_waker(&waker);
        // Pass 1: the sibling parks a clone (an escape: the waker is
        // registered), the other child wakes itself: the task is woken.
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(parent.calls.load(Ordering::SeqCst), 1);
        // Pass 2: the next call of the task's waker panics, wherever it is
        // made (on main: the owner's own wake after the pass; here: the
        // scoped thread's wake during the pass).
        parent.armed.store(true, Ordering::SeqCst);
        let r = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(&mut cx)));
        match r {
            Ok(p) => {
                assert!(p.is_pending());
                assert!(
                    !parent.armed.load(Ordering::SeqCst),
                    "the sibling's wake never reached the task's waker"
                );
                assert!(
                    parent.calls.load(Ordering::SeqCst) >= 3,
                    "the sibling's wake during the pass went to the panicking task waker and \
                     the owner did not wake the task after the pass: lost wake-up"
                );
                assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(('s', 2)));
                assert_eq!(sib.polls(), 2);
            }
            Err(_) => {
                // The owner's own wake took the panic (as on main): the
                // future is poisoned, and dropping it is clean.
                assert!(
                    catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(&mut cx))).is_err()
                );
                drop(fut);
            }
        }
    });
}

/// A task waker whose first `wake_by_ref` blocks until told to go, then
/// panics.
struct BlockThenPanic {
    calls: AtomicUsize,
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}
impl Wake for BlockThenPanic {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let entered = self.entered.lock().unwrap().take().unwrap();
            let go = self.go.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            go.recv().unwrap();
            panic!("first task wake panics");
        }
    }
}

/// Thread A's wake of child a holds the parent waker's WAKING bit (its
/// task wake blocks, then panics). Meanwhile the owner polls: it takes a's
/// bit, polls a, and re-registers (the same waker: no write) and reads the
/// word; then child b is woken from the test thread, finds the word zero and
/// asks the busy holder for a wake. The holder's wake panics; its guard must
/// still serve b's request: the task's waker is called again.
#[test]
fn wake_after_the_pass_while_a_panicking_task_wake_holds_the_slot() {
    watchdog("wake_after_the_pass_while_a_panicking_task_wake", || {
        let (a, b) = (Gate::default(), Gate::default());
        let mut fut = gather!(a.child(2, 1u8), b.child(1, 2u16));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let parent = Arc::new(BlockThenPanic {
            calls: AtomicUsize::new(0),
            entered: Mutex::new(Some(entered_tx)),
            go: Mutex::new(Some(go_rx)),
        });
        let waker = Waker::from(parent.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        let a2 = a.clone();
        let thread_a = std::thread::spawn(move || {
            assert!(catch_unwind(AssertUnwindSafe(|| a2.fire())).is_err());
        });
        entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(a.polls(), 2);
        let before = parent.calls.load(Ordering::SeqCst);
        b.fire();
        go_tx.send(()).unwrap();
        thread_a.join().unwrap();
        assert!(
            parent.calls.load(Ordering::SeqCst) > before,
            "child b was woken after the owner's last poll but the task's waker was never \
             called again: lost wake-up"
        );
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        assert_eq!(b.polls(), 2);
        a.fire();
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready((1, 2)));
    });
}

/// A task waker (static state, null data) whose first `wake_by_ref` blocks
/// until told to go, and whose first drop after `ARMED` panics.
mod blocking_then_panicking_drop {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{RawWaker, RawWakerVTable, Waker};

    pub(super) static BLOCK_ONCE: AtomicBool = AtomicBool::new(false);
    pub(super) static ENTERED: AtomicBool = AtomicBool::new(false);
    pub(super) static GO: AtomicBool = AtomicBool::new(false);
    pub(super) static ARMED: AtomicBool = AtomicBool::new(false);
    /// The blocked wake panics once let go.
    pub(super) static PANIC_WAKE: AtomicBool = AtomicBool::new(false);
    /// Serialises the tests sharing this state.
    pub(super) static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    unsafe fn clone(_: *const ()) -> RawWaker {
        RawWaker::new(std::ptr::null(), &VT)
    }
    unsafe fn wake_by_ref(_: *const ()) {
        if BLOCK_ONCE.swap(false, Ordering::SeqCst) {
            ENTERED.store(true, Ordering::SeqCst);
            while !GO.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            if PANIC_WAKE.swap(false, Ordering::SeqCst) {
                panic!("the task waker's wake panics");
            }
        }
    }
    unsafe fn wake(p: *const ()) {
        // SAFETY: forwarded.
        unsafe {
            wake_by_ref(p);
            drop(p);
        }
    }
    unsafe fn drop(_: *const ()) {
        if ARMED.swap(false, Ordering::SeqCst) {
            panic!("the task waker's drop panics");
        }
    }
    static VT: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);

    pub(super) fn waker() -> Waker {
        // SAFETY: the vtable ignores the data pointer.
        unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) }
    }
}

/// DEFECT (tup edc2552, src/engine/tuple.rs `tuple_serve`/`tuple_let_go`):
/// the last clone of a child's waker is woken by value on thread B and
/// becomes the slot's holder (`WAKING`, its reference to be given back when
/// it lets go); the task's `wake_by_ref` runs (blocks here) while the owner
/// drops the gather (`close_and_release` sees `WAKING`: it leaves the task's
/// waker in the slot and gives up its reference). B's `tuple_let_go` then
/// gives up the last reference and frees the block (`tuple_free`), whose
/// drop of the task's waker panics: the panic unwinds into `tuple_serve`,
/// whose `LetGo` guard is still armed (it is forgotten only after the loop)
/// and runs `tuple_let_go_after_panic` on the freed block: a use-after-free
/// (and a second release / free) from safe code. ASan reports it; without
/// ASan the test checks that the panic reached B and nothing else happened.
#[test]
fn last_clone_wake_frees_the_block_and_the_task_wakers_drop_panics() {
    last_clone_wake_races_the_owner_drop(false);
}

/// The same race, but the blocked task wake itself panics once let go: the
/// guard's let-go frees the block (the task waker's drop then runs while
/// unwinding: contained), exactly once (ASan).
#[test]
fn last_clone_wake_panics_while_the_owner_drops() {
    last_clone_wake_races_the_owner_drop(true);
}

fn last_clone_wake_races_the_owner_drop(panic_wake: bool) {
    use blocking_then_panicking_drop as w;
    let _serial = w::LOCK.lock().unwrap_or_else(|p| p.into_inner());
    w::ENTERED.store(false, Ordering::SeqCst);
    w::GO.store(false, Ordering::SeqCst);
    w::PANIC_WAKE.store(panic_wake, Ordering::SeqCst);
    watchdog("last_clone_wake_frees_the_block", || {
        let stored: Arc<Mutex<Option<Waker>>> = Arc::default();
        let s = stored.clone();
        let child = std::future::poll_fn(move |cx| -> Poll<()> {
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        let mut fut = gather!(child, std::future::pending::<()>());
        let task = w::waker();
        let mut cx = Context::from_waker(&task);
        // The child's clone escaped: the task's waker (a clone) is
        // registered in the block's slot.
        assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
        let clone = stored.lock().unwrap().take().expect("parked");
        w::BLOCK_ONCE.store(true, Ordering::SeqCst);
        let b = std::thread::spawn(move || {
            // The last clone, by value: the wake holds the slot.
            catch_unwind(AssertUnwindSafe(|| clone.wake())).is_err()
        });
        while !w::ENTERED.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        // The owner goes away while the wake holds the slot.
        drop(fut);
        w::ARMED.store(true, Ordering::SeqCst);
        w::GO.store(true, Ordering::SeqCst);
        let panicked = b.join().expect("thread B");
        assert!(
            panicked,
            "the task waker's drop panic reached the waking thread"
        );
        drop(task);
    });
}
