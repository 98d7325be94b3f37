//! Review of `g10` (the engine's one-word fast path: lazy registration of
//! the parent's waker, `POLLING` in the word during a pass, the plain-store
//! wake while no waker escaped, gather's in-place store).
//!
//! Attacks: a child's panic in the middle of an open pass (the parent's
//! waker not registered yet) followed by a wake through a clone that
//! escaped earlier in that pass; the parent's waker changing between polls
//! (task moved); clones that escape to non-scoped threads and wake or drop
//! at any moment; two scoped threads waking the borrowed waker at once while
//! a third clones it; a parent waker whose `clone` panics at the lazy
//! registration; a re-entrant parent waker; sets of exactly 63, 64 and 65
//! children (one word against the general path) through every engine user.

use crate::common;

use common::quiet;

use awaitkit::{AsCompleted, ReturnWhen, as_completed, gather, try_gather, wait, wait_any};
use common::CountingWaker;
use futures::{Stream, StreamExt};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

type Boxed = Pin<Box<dyn Future<Output = usize> + Send>>;

/// Where a [`park`] child keeps its latest waker clone; `fire` wakes it.
#[derive(Default)]
struct Slot {
    fired: AtomicBool,
    polls: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let waker = self.waker.lock().unwrap().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A child that parks a clone of its waker until fired, then yields `value`.
fn park(slot: &Arc<Slot>, value: usize) -> Boxed {
    let slot = slot.clone();
    Box::pin(std::future::poll_fn(move |cx| {
        slot.polls.fetch_add(1, Ordering::SeqCst);
        if slot.fired.load(Ordering::SeqCst) {
            return Poll::Ready(value);
        }
        *slot.waker.lock().unwrap() = Some(cx.waker().clone());
        if slot.fired.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }))
}

/// A child whose first poll panics.
fn boom() -> Boxed {
    Box::pin(std::future::poll_fn(|_| -> Poll<usize> {
        panic!("injected child poll panic")
    }))
}

/// A child that wakes itself `n` times, then yields `value`.
fn yielder(n: usize, value: usize) -> Boxed {
    let mut left = n;
    Box::pin(std::future::poll_fn(move |cx| {
        if left == 0 {
            return Poll::Ready(value);
        }
        left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }))
}

// ---------------------------------------------------------------------------
// A child's panic in an open pass
// ---------------------------------------------------------------------------

/// `as_completed` is not poisoned by a child's panic (it can be polled on).
/// First poll of a one-word set (no waker escaped yet, so the pass is open
/// and registers nothing until it ends): child 0 parks a clone of its waker
/// (it escapes), child 1 panics. The panic leaves the pass open: `POLLING`
/// in the word, the consumer's waker never registered. A consumer that
/// catches the panic and waits for a wake (as a supervisor would) then
/// waits forever: child 0's wake finds the word non-zero and wakes no one.
/// On `main` the pass registered the waker before polling anyone.
#[test]
fn review_as_completed_child_panic_in_open_pass_then_escaped_wake() {
    quiet();
    for n in [2usize, 63, 64] {
        let slot = Arc::new(Slot::default());
        let mut children: Vec<Boxed> = vec![park(&slot, 0), boom()];
        for i in 2..n {
            children.push(park(&Arc::new(Slot::default()), i));
        }
        let mut set = as_completed(children);
        let w = CountingWaker::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut set).poll_next(&mut w.context())
        }));
        assert!(r.is_err(), "n = {n}: the child's panic propagates");
        let before = w.wakes();
        slot.fire();
        assert!(
            w.wakes() > before,
            "n = {n}: the escaped clone's wake after a child's panic reached no one \
             (the consumer's waker was never registered)"
        );
        // And polling on hands out child 0 (after the rest of the
        // interrupted snapshot, which may take a poll or two).
        let mut got = None;
        for _ in 0..4 {
            if let Poll::Ready(v) = Pin::new(&mut set).poll_next(&mut w.context()) {
                got = v;
                break;
            }
        }
        assert_eq!(got, Some(0), "n = {n}");
    }
}

/// As above, with the wake arriving from another thread while the consumer
/// (after catching the panic) is parked: a hang on the branch.
#[test]
fn review_as_completed_child_panic_then_remote_wake_does_not_hang() {
    quiet();
    common::watchdog("child_panic_then_remote_wake", || {
        let slot = Arc::new(Slot::default());
        let children: Vec<Boxed> = vec![park(&slot, 0), boom(), yielder(0, 2)];
        let mut set = as_completed(children);
        let got = futures::executor::block_on(std::future::poll_fn(|cx| {
            loop {
                match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut set).poll_next(cx))) {
                    Err(_) => {
                        // Fire child 0 from another thread once we are parked.
                        let slot = slot.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            slot.fire();
                        });
                        return Poll::Pending;
                    }
                    Ok(Poll::Ready(Some(0))) => return Poll::Ready(0),
                    Ok(Poll::Ready(Some(_))) => continue,
                    Ok(Poll::Ready(None)) => unreachable!("child 0 is pending"),
                    Ok(Poll::Pending) => return Poll::Pending,
                }
            }
        }));
        assert_eq!(got, 0);
    });
}

/// The same panic, but the consumer polls on right away (the usual way):
/// the open pass is closed by the next poll and nothing is lost.
#[test]
fn review_as_completed_child_panic_then_poll_on() {
    quiet();
    let slot = Arc::new(Slot::default());
    let children: Vec<Boxed> = vec![park(&slot, 0), boom(), yielder(1, 2)];
    let mut set = as_completed(children);
    let w = CountingWaker::new();
    assert!(
        catch_unwind(AssertUnwindSafe(
            || Pin::new(&mut set).poll_next(&mut w.context())
        ))
        .is_err()
    );
    let w2 = CountingWaker::new();
    let mut got = Vec::new();
    for _ in 0..10 {
        match Pin::new(&mut set).poll_next(&mut w2.context()) {
            Poll::Ready(Some(v)) => got.push(v),
            Poll::Ready(None) => unreachable!(),
            Poll::Pending => break,
        }
    }
    // The yielder finishes after its self-wake (a later poll).
    while let Poll::Ready(Some(v)) = Pin::new(&mut set).poll_next(&mut w2.context()) {
        got.push(v);
    }
    assert_eq!(got, [2]);
    let before = w2.wakes();
    slot.fire();
    assert!(w2.wakes() > before, "the latest waker is woken");
    assert_eq!(
        Pin::new(&mut set).poll_next(&mut w2.context()),
        Poll::Ready(Some(0))
    );
    assert_eq!(set.len(), 1, "the panicked child stays until dropped");
}

// ---------------------------------------------------------------------------
// The parent's waker changing between polls
// ---------------------------------------------------------------------------

/// Each poll uses a new waker (the task moved between executors); children
/// park clones and are fired at random moments, by the test or by the
/// children themselves (self-wakes), with passes that end with no waker
/// escaped (no registration) between them. After every `Pending`, firing a
/// parked child must wake the waker of that last poll, never an older one.
#[test]
fn review_moving_task_latest_waker_is_woken() {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for n in [1usize, 2, 5, 63, 64, 65] {
        for _round in 0..20 {
            let slots: Vec<Arc<Slot>> = (0..n).map(|_| Arc::new(Slot::default())).collect();
            let children: Vec<Boxed> = slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if next() % 3 == 0 {
                        yielder((next() % 3) as usize, i)
                    } else {
                        park(s, i)
                    }
                })
                .collect();
            let mut set = as_completed(children);
            let mut done = Vec::new();
            let mut guard = 0;
            while !set.is_empty() {
                guard += 1;
                assert!(guard < 100_000, "no progress");
                let w = CountingWaker::new();
                let mut pending = false;
                loop {
                    match Pin::new(&mut set).poll_next(&mut w.context()) {
                        Poll::Ready(Some(v)) => done.push(v),
                        Poll::Ready(None) => break,
                        Poll::Pending => {
                            pending = true;
                            break;
                        }
                    }
                    if next() % 4 == 0 {
                        break; // stop early (the pass stays open)
                    }
                }
                if !pending {
                    continue;
                }
                // Self-woken children: the waker was woken already.
                if w.wakes() > 0 {
                    continue;
                }
                // Fire one parked child: the last poll's waker must hear it.
                let parked: Vec<&Arc<Slot>> = slots
                    .iter()
                    .filter(|s| s.waker.lock().unwrap().is_some())
                    .collect();
                assert!(!parked.is_empty(), "Pending with nothing to wake it");
                let s = parked[(next() as usize) % parked.len()];
                s.fire();
                assert_eq!(w.wakes(), 1, "n = {n}: the last poll's waker was not woken");
            }
            done.sort_unstable();
            assert_eq!(done, (0..n).collect::<Vec<_>>());
        }
    }
}

// ---------------------------------------------------------------------------
// Clones escaping to non-scoped threads; borrowed wakers lent to scoped ones
// ---------------------------------------------------------------------------

/// A child whose poll lends its borrowed waker to two scoped threads that
/// wake it by reference at once, while a third scoped thread clones it and
/// hands the clone to a non-scoped thread, which wakes it (and drops it)
/// whenever it gets to run: during later polls of siblings, during the
/// owner's take of the word, during the set's drop. Finishes after `rounds`
/// polls.
fn lender(
    rounds: usize,
    value: usize,
    escaped: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
) -> Boxed {
    let mut left = rounds;
    Box::pin(std::future::poll_fn(move |cx| {
        if left == 0 {
            return Poll::Ready(value);
        }
        left -= 1;
        let waker = cx.waker();
        std::thread::scope(|s| {
            s.spawn(|| waker.wake_by_ref());
            s.spawn(|| waker.wake_by_ref());
            s.spawn(|| {
                let clone = waker.clone();
                let t = std::thread::spawn(move || {
                    for _ in 0..3 {
                        std::thread::yield_now();
                        clone.wake_by_ref();
                    }
                    drop(clone);
                });
                escaped.lock().unwrap().push(t);
            });
        });
        Poll::Pending
    }))
}

/// A child that clones its waker and wakes it from a non-scoped thread after
/// a short, varying delay (escaped, racing the owner's next steps).
fn escaper(
    rounds: usize,
    value: usize,
    escaped: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
) -> Boxed {
    let mut left = rounds;
    Box::pin(std::future::poll_fn(move |cx| {
        if left == 0 {
            return Poll::Ready(value);
        }
        left -= 1;
        let clone = cx.waker().clone();
        let spins = value % 7 * 50;
        let t = std::thread::spawn(move || {
            for _ in 0..spins {
                std::hint::spin_loop();
            }
            clone.wake();
        });
        escaped.lock().unwrap().push(t);
        Poll::Pending
    }))
}

fn mixed(n: usize, escaped: &Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>) -> Vec<Boxed> {
    (0..n)
        .map(|i| match i % 3 {
            0 => lender(2, i, escaped.clone()),
            1 => escaper(2, i, escaped.clone()),
            _ => yielder(2, i),
        })
        .collect()
}

fn join_all_threads(escaped: &Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>) {
    for t in std::mem::take(&mut *escaped.lock().unwrap()) {
        t.join().unwrap();
    }
}

/// Every engine user over 1, 2, 63, 64 and 65 such children, on a
/// multi-thread runtime: each finishes (a lost wake trips the watchdog) with
/// its outputs in order.
#[test]
fn review_every_engine_user_with_escaping_and_lent_wakers() {
    common::watchdog("every_engine_user", || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        for n in [1usize, 2, 63, 64, 65] {
            for _ in 0..3 {
                let escaped = Arc::new(Mutex::new(Vec::new()));
                let e = escaped.clone();
                rt.block_on(async move {
                    let out = tokio::spawn(gather(mixed(n, &e))).await.unwrap();
                    assert_eq!(out, (0..n).collect::<Vec<_>>());

                    let ok = try_gather(
                        mixed(n, &e)
                            .into_iter()
                            .map(|f| async move { Ok::<_, ()>(f.await) }),
                    )
                    .await;
                    assert_eq!(ok, Ok((0..n).collect::<Vec<_>>()));

                    let mut all: Vec<usize> = as_completed(mixed(n, &e)).collect().await;
                    all.sort_unstable();
                    assert_eq!(all, (0..n).collect::<Vec<_>>());

                    let (i, v, rest) = wait_any(mixed(n, &e)).await.expect("non-empty");
                    assert_eq!(i, v);
                    let mut rest: Vec<usize> = rest.collect().await;
                    rest.push(v);
                    rest.sort_unstable();
                    assert_eq!(rest, (0..n).collect::<Vec<_>>());

                    let outcome = wait(mixed(n, &e), ReturnWhen::FirstCompleted).await;
                    let mut seen: Vec<usize> = outcome.done.iter().map(|(_, v)| *v).collect();
                    let more: Vec<usize> = outcome.pending.collect().await;
                    seen.extend(more);
                    seen.sort_unstable();
                    assert_eq!(seen, (0..n).collect::<Vec<_>>());

                    // Dropped mid-way: clones still racing in their threads.
                    let mut half = as_completed(mixed(n, &e));
                    let _ = half.next().await;
                    drop(half);
                });
                join_all_threads(&escaped);
            }
        }
    });
}

/// The same on a current-thread executor, with the set dropped at every
/// step while escaped clones still wake (and drop) from their threads.
#[test]
fn review_drop_at_every_step_with_escaped_clones() {
    common::watchdog("drop_at_every_step", || {
        for n in [2usize, 63, 64, 65] {
            for stop in 0..6 {
                let escaped = Arc::new(Mutex::new(Vec::new()));
                let mut set = as_completed(mixed(n, &escaped));
                let w = CountingWaker::new();
                for _ in 0..stop {
                    let _ = Pin::new(&mut set).poll_next(&mut w.context());
                }
                drop(set);
                join_all_threads(&escaped);
                let escaped = Arc::new(Mutex::new(Vec::new()));
                let mut all = gather(mixed(n, &escaped));
                for _ in 0..stop {
                    if Pin::new(&mut all).poll(&mut w.context()).is_ready() {
                        break;
                    }
                }
                drop(all);
                join_all_threads(&escaped);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The parent's waker is user code
// ---------------------------------------------------------------------------

/// A waker whose `clone` panics while `armed`.
struct PanicClone {
    armed: AtomicBool,
    wakes: AtomicUsize,
}

static PANIC_CLONE_VTABLE: RawWakerVTable = RawWakerVTable::new(
    |data| {
        // SAFETY: `data` is a leaked `PanicClone`.
        let me = unsafe { &*data.cast::<PanicClone>() };
        if me.armed.swap(false, Ordering::SeqCst) {
            panic!("injected waker clone panic");
        }
        RawWaker::new(data, &PANIC_CLONE_VTABLE)
    },
    |data| {
        // SAFETY: as above.
        unsafe { &*data.cast::<PanicClone>() }
            .wakes
            .fetch_add(1, Ordering::SeqCst);
    },
    |data| {
        // SAFETY: as above.
        unsafe { &*data.cast::<PanicClone>() }
            .wakes
            .fetch_add(1, Ordering::SeqCst);
    },
    |_| {},
);

/// The state and a waker pointing into it: the caller keeps the box alive
/// until every clone of the waker is gone (declared before the set).
fn panic_clone_waker() -> (Box<PanicClone>, Waker) {
    let state = Box::new(PanicClone {
        armed: AtomicBool::new(true),
        wakes: AtomicUsize::new(0),
    });
    // SAFETY: the vtable treats `data` as a `PanicClone`, which the caller
    // keeps alive (boxed: it does not move) while the waker or a clone lives.
    let waker = unsafe {
        Waker::from_raw(RawWaker::new(
            std::ptr::from_ref(&*state).cast(),
            &PANIC_CLONE_VTABLE,
        ))
    };
    (state, waker)
}

/// The lazy registration (at the end of an open pass in which a clone
/// escaped) runs the parent waker's `clone`: if it panics, `POLLING` must
/// not stay in the word, the set must go on with the next poll, and a wake
/// after that poll must reach its waker.
#[test]
fn review_panicking_parent_clone_at_lazy_registration() {
    quiet();
    for n in [2usize, 63] {
        let (state, waker) = panic_clone_waker();
        let slot = Arc::new(Slot::default());
        let mut children: Vec<Boxed> = vec![park(&slot, 0)];
        for i in 1..n {
            children.push(yielder(0, i));
        }
        let mut set = as_completed(children);
        let mut got = Vec::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            while let Poll::Ready(Some(v)) =
                Pin::new(&mut set).poll_next(&mut Context::from_waker(&waker))
            {
                got.push(v);
            }
        }));
        assert!(r.is_err(), "the registration's clone panicked");
        assert!(!state.armed.load(Ordering::SeqCst));
        // Poll on with a working waker.
        let w = CountingWaker::new();
        while let Poll::Ready(Some(v)) = Pin::new(&mut set).poll_next(&mut w.context()) {
            got.push(v);
        }
        got.sort_unstable();
        assert_eq!(got, (1..n).collect::<Vec<_>>());
        let before = w.wakes();
        slot.fire();
        assert!(
            w.wakes() > before,
            "n = {n}: the wake after the panic was lost"
        );
        assert_eq!(
            Pin::new(&mut set).poll_next(&mut w.context()),
            Poll::Ready(Some(0))
        );
        assert_eq!(
            Pin::new(&mut set).poll_next(&mut w.context()),
            Poll::Ready(None)
        );
    }
}

/// `gather` with the same panicking registration: the panic propagates,
/// the gather is poisoned, every child and stored output is dropped once
/// when it goes (no leak, nothing freed twice: run under ASan too).
#[test]
fn review_gather_panicking_parent_clone_then_drop() {
    quiet();
    let slot = Arc::new(Slot::default());
    let live = Arc::new(AtomicUsize::new(0));
    struct Out(Arc<AtomicUsize>);
    impl Drop for Out {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let mk = |park_it: bool| {
        let slot = slot.clone();
        let live = live.clone();
        async move {
            if park_it {
                park(&slot, 0).await;
            }
            live.fetch_add(1, Ordering::SeqCst);
            Out(live)
        }
    };
    let (_state, waker) = panic_clone_waker();
    let mut all = gather([mk(true), mk(false), mk(false)]);
    assert!(
        catch_unwind(AssertUnwindSafe(
            || Pin::new(&mut all).poll(&mut Context::from_waker(&waker))
        ))
        .is_err()
    );
    // Two outputs stored on the branch (the registration runs at the end of
    // the pass); none on `main` (it runs first).
    assert!(live.load(Ordering::SeqCst) <= 2);
    let t = {
        let slot = slot.clone();
        std::thread::spawn(move || slot.fire())
    };
    drop(all);
    t.join().unwrap();
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "every stored output dropped"
    );
}

/// A parent waker whose wake re-enters: it polls the set (through a mutex,
/// `try_lock`: from the thread that fires, or not at all if the owner is
/// polling). No wake is lost and nothing deadlocks.
#[test]
fn review_reentrant_parent_waker() {
    common::watchdog("reentrant_parent_waker", || {
        for n in [2usize, 63, 64] {
            let slots: Vec<Arc<Slot>> = (0..n).map(|_| Arc::new(Slot::default())).collect();
            let set = Arc::new(Mutex::new(as_completed(
                slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| park(s, i))
                    .collect::<Vec<_>>(),
            )));
            let got = Arc::new(Mutex::new(Vec::new()));
            let missed = Arc::new(AtomicUsize::new(0));
            struct Reenter {
                set: Arc<Mutex<AsCompleted<Boxed>>>,
                got: Arc<Mutex<Vec<usize>>>,
                missed: Arc<AtomicUsize>,
            }
            impl std::task::Wake for Reenter {
                fn wake(self: Arc<Self>) {
                    self.wake_by_ref();
                }
                fn wake_by_ref(self: &Arc<Self>) {
                    let Ok(mut set) = self.set.try_lock() else {
                        self.missed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let waker = Waker::from(self.clone());
                    let mut cx = Context::from_waker(&waker);
                    while let Poll::Ready(Some(v)) = Pin::new(&mut *set).poll_next(&mut cx) {
                        self.got.lock().unwrap().push(v);
                    }
                }
            }
            let reenter = Arc::new(Reenter {
                set: set.clone(),
                got: got.clone(),
                missed: missed.clone(),
            });
            std::task::Wake::wake_by_ref(&reenter);
            for s in &slots {
                s.fire();
            }
            let mut seen = got.lock().unwrap().clone();
            if seen.len() < n {
                // Any wake that found the set busy must have been followed
                // by a poll of the owner that saw its bit.
                std::task::Wake::wake_by_ref(&reenter);
                seen = got.lock().unwrap().clone();
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
            // The set holds `reenter` (its registered waker), which holds
            // the set: break the cycle.
            drop(std::mem::take(&mut *set.lock().unwrap()));
        }
    });
}

/// The same with a finished child whose destructor panics (the output is
/// dropped, the panic propagates out of `poll_next`) in an open pass in
/// which a sibling's clone escaped: its later wake must reach the consumer.
#[test]
fn review_as_completed_child_drop_panic_in_open_pass_then_escaped_wake() {
    quiet();
    struct PanicDrop;
    impl Drop for PanicDrop {
        fn drop(&mut self) {
            panic!("injected child destructor panic");
        }
    }
    for n in [2usize, 63] {
        let slot = Arc::new(Slot::default());
        let mut children: Vec<Boxed> = vec![park(&slot, 0), {
            let guard = PanicDrop;
            Box::pin(std::future::poll_fn(move |_| {
                let _keep = &guard;
                Poll::Ready(1)
            }))
        }];
        for i in 2..n {
            children.push(park(&Arc::new(Slot::default()), i));
        }
        let mut set = as_completed(children);
        let w = CountingWaker::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut set).poll_next(&mut w.context())
        }));
        assert!(r.is_err(), "n = {n}: the destructor's panic propagates");
        let before = w.wakes();
        slot.fire();
        assert!(
            w.wakes() > before,
            "n = {n}: the escaped clone's wake after a destructor's panic reached no one"
        );
        let mut got = None;
        for _ in 0..4 {
            if let Poll::Ready(v) = Pin::new(&mut set).poll_next(&mut w.context()) {
                got = v;
                break;
            }
        }
        assert_eq!(got, Some(0), "n = {n}");
    }
}
