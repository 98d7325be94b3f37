//! Adversarial review of the engine's early stop (cooperative budget,
//! `STALL_LIMIT`): fairness, huge N, N below the limit, first polls of
//! pushed children, clear/push/slot reuse with a leftover snapshot, drop with
//! wakers alive on other threads.

use crate::common;

use awaitkit::{AsCompleted, as_completed, gather, task_group};
use common::{
    Counter, CountingWaker, STALL_LIMIT, Spinner, Tracker, parked_set, poll_next_once, poll_once,
    total,
};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

/// A child that wakes itself `left` times, then finishes, and panics if it
/// is polled twice in one poll of the parent (`epoch` is bumped by the test
/// before each parent poll).
struct EpochYield {
    left: usize,
    last: usize,
    epoch: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
}

impl Future for EpochYield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = self.epoch.load(Ordering::Relaxed);
        assert_ne!(self.last, now, "a child polled twice in one parent poll");
        self.last = now;
        self.polls.fetch_add(1, Ordering::Relaxed);
        if self.left == 0 {
            return Poll::Ready(());
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

guarded! {
    /// Fairness: 40 children that wake themselves forever ahead (in input
    /// order) of one real child woken once. Every pass stops after 32
    /// spinners, but the next poll resumes the snapshot, so the real child is
    /// reached within two polls of its wake. PASSES (no starvation).
    fn real_child_behind_40_spinners_is_not_starved() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stop = Arc::new(AtomicBool::new(false));
        let spin: Vec<Counter> = (0..40).map(|_| Counter::new()).collect();
        let (handles, counters, mut parked) = parked_set(1, &tracker);
        let real = parked.pop().unwrap();
        let mut children: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = spin
            .iter()
            .map(|c| Box::pin(Spinner::new(&stop, c)) as Pin<Box<dyn Future<Output = ()> + Send>>)
            .collect();
        children.push(Box::pin(async move {
            real.await;
        }));
        let mut g = gather(children);
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(counters[0].get(), 1);
        for round in 0..50 {
            // Fire the real child at different phases of the spinners' rounds.
            if round % 7 == 3 {
                assert!(handles[0].wake());
                let before = counters[0].get();
                let mut reached = false;
                for _ in 0..3 {
                    assert!(poll_once(&mut g, &w).is_pending());
                    if counters[0].get() > before {
                        reached = true;
                        break;
                    }
                }
                assert!(reached, "round {round}: real child starved behind spinners");
            } else {
                assert!(poll_once(&mut g, &w).is_pending());
            }
        }
        handles[0].complete();
        stop.store(true, Ordering::SeqCst);
        let mut done = false;
        for _ in 0..10 {
            if poll_once(&mut g, &w).is_ready() {
                done = true;
                break;
            }
        }
        assert!(done, "gather never finished once every child could");
        drop(g);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// Huge N: 100 000 children that each wake themselves 3 times. No child
    /// is polled twice in a parent poll, polls = wakes + N exactly, the
    /// parent is woken on every `Pending`, and each parent poll after the
    /// first polls at most `STALL_LIMIT` stalled children plus completions.
    /// PASSES.
    fn huge_n_every_child_stalling() {
        const N: usize = 100_000;
        let epoch = Arc::new(AtomicUsize::new(1));
        let polls = Arc::new(AtomicUsize::new(0));
        let children = (0..N).map(|_| EpochYield {
            left: 3,
            last: 0,
            epoch: epoch.clone(),
            polls: polls.clone(),
        });
        let mut g = gather(children);
        let w = CountingWaker::new();
        let mut parent_polls = 0usize;
        let start = std::time::Instant::now();
        loop {
            epoch.fetch_add(1, Ordering::Relaxed);
            let before = polls.load(Ordering::Relaxed);
            let wakes = w.wakes();
            parent_polls += 1;
            match poll_once(&mut g, &w) {
                Poll::Ready(out) => {
                    assert_eq!(out.len(), N);
                    break;
                }
                Poll::Pending => {
                    assert!(w.wakes() > wakes, "Pending without a wake (hang)");
                    let polled = polls.load(Ordering::Relaxed) - before;
                    if parent_polls > 1 {
                        assert!(polled <= STALL_LIMIT, "poll {parent_polls} polled {polled}");
                    }
                }
            }
            assert!(parent_polls < 4 * N, "no progress");
        }
        assert_eq!(polls.load(Ordering::Relaxed), 4 * N, "polls != wakes + N");
        eprintln!(
            "N = {N}: {parent_polls} parent polls, {:?}",
            start.elapsed()
        );
        // 3 rounds of N stalls at 32 per poll, plus the first snapshot.
        assert!(parent_polls <= 1 + 3 * N.div_ceil(STALL_LIMIT) + 3, "{parent_polls}");
    }

    /// N < STALL_LIMIT: a set of 31 spinners never stops early: each poll
    /// polls every spinner once. PASSES.
    fn fewer_children_than_the_stall_limit_never_stop() {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Counter> = (0..STALL_LIMIT - 1).map(|_| Counter::new()).collect();
        let mut g = gather(counters.iter().map(|c| Spinner::new(&stop, c)));
        let w = CountingWaker::new();
        for round in 1..=10 {
            let wakes = w.wakes();
            assert!(poll_once(&mut g, &w).is_pending());
            assert!(counters.iter().all(|c| c.get() == round), "round {round}");
            assert!(w.wakes() > wakes);
        }
        stop.store(true, Ordering::SeqCst);
        assert!(poll_once(&mut g, &w).is_ready());
    }

    /// DOCS: docs/guide.md says "The first round of polls over children that
    /// all wait is never cut short", but a set whose (empty) first snapshot
    /// is done is armed for good: children pushed later have their *first*
    /// polls counted as stalls and cut short `STALL_LIMIT` at a time, with no
    /// completion anywhere. Here a task group whose body spawns 100 waiting
    /// tasks after one await: the poll that spawns them first-polls only 32.
    fn first_round_of_pushed_children_is_cut_short() {
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let kids = children;
        let mut yielded = false;
        let mut group = Box::pin(task_group(move |tg| {
            async move {
                // One await first: the group's first (empty) snapshot ends.
                poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                let tasks: Vec<_> = kids
                    .into_iter()
                    .map(|k| tg.spawn(async move { Ok::<_, ()>(k.await) }))
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap()?);
                }
                Ok::<_, ()>(out)
            }
        }));
        let w = CountingWaker::new();
        assert!(group.as_mut().poll(&mut w.context()).is_pending());
        assert!(group.as_mut().poll(&mut w.context()).is_pending());
        let first_polled = counters.iter().filter(|c| c.get() == 1).count();
        eprintln!("first poll of the spawning round reached {first_polled} of 100 tasks");
        // The rest are first-polled over the next polls (never lost).
        for _ in 0..10 {
            let _ = group.as_mut().poll(&mut w.context());
        }
        assert!(counters.iter().all(|c| c.get() == 1), "a task never first-polled");
        for h in &handles {
            h.complete();
        }
        let mut out = None;
        for _ in 0..20 {
            if let Poll::Ready(r) = group.as_mut().poll(&mut w.context()) {
                out = Some(r);
                break;
            }
        }
        assert_eq!(out, Some(Ok((0..100).collect::<Vec<_>>())));
        drop(group);
        assert_eq!(tracker.live(), 0);
        assert_eq!(
            first_polled, 100,
            "guide: 'the first round of polls over children that all wait is never cut short'"
        );
    }

    /// `AsCompleted::clear` after an early stop drops the leftover snapshot
    /// with the children; children pushed afterwards are polled once each,
    /// and not again without a wake. PASSES.
    fn clear_after_an_early_stop_then_push() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut set = as_completed(children);
        assert!(poll_next_once(&mut set, &w).is_pending());
        for h in &handles {
            assert!(h.wake());
        }
        assert!(poll_next_once(&mut set, &w).is_pending());
        assert_eq!(total(&counters), 100 + STALL_LIMIT);
        set.clear();
        assert_eq!(tracker.live(), 0);
        let (h2, c2, more) = parked_set(50, &tracker);
        for c in more {
            set.push(c);
        }
        for _ in 0..3 {
            let _ = poll_next_once(&mut set, &w);
        }
        assert!(c2.iter().all(|c| c.get() == 1), "{:?}", c2.iter().map(Counter::get).collect::<Vec<_>>());
        assert_eq!(total(&counters), 100 + STALL_LIMIT, "a cleared child polled");
        for h in &h2 {
            h.complete();
        }
        let mut n = 0;
        for _ in 0..200 {
            match poll_next_once(&mut set, &w) {
                Poll::Ready(Some(_)) => n += 1,
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }
        assert_eq!(n, 50);
        drop(set);
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// Slot reuse while an early stop left a stale bit of the previous
    /// occupant in the cursor's current word: the newcomer must get exactly
    /// one (first) poll, not one from the stale leftover bit and another from
    /// its own. PASSES (`Cursor::forget`).
    fn push_reusing_a_slot_whose_stale_bit_is_in_the_leftover() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut set: AsCompleted<Pin<Box<dyn Future<Output = usize> + Send>>> = AsCompleted::new();
        // Chunk 0: 32 parked children (never woken).
        let (_h0, _c0, parked0) = parked_set(32, &tracker);
        for p in parked0 {
            set.push(Box::pin(p));
        }
        // Chunk 1 (64 slots, one word): 33 spinners at 0..=32, X at 40
        // (finishes on its second poll, leaving a stashed clone of its waker),
        // parked children elsewhere.
        let spin: Vec<Counter> = (0..33).map(|_| Counter::new()).collect();
        let stash: Arc<std::sync::Mutex<Option<Waker>>> = Default::default();
        let (_h1, _c1, mut parked1) = parked_set(64, &tracker);
        #[allow(clippy::needless_range_loop)] // i also picks the kind of child
        for i in 0..64 {
            let p = parked1.remove(0);
            if i <= 32 {
                let s = Spinner::new(&stop, &spin[i]);
                set.push(Box::pin(async move {
                    s.await;
                    drop(p);
                    0
                }));
            } else if i == 40 {
                let stash = stash.clone();
                let mut polled = false;
                drop(p);
                set.push(Box::pin(poll_fn(move |cx| {
                    if polled {
                        return Poll::Ready(40);
                    }
                    polled = true;
                    *stash.lock().unwrap() = Some(cx.waker().clone());
                    cx.waker().wake_by_ref();
                    Poll::Pending
                })));
            } else {
                set.push(Box::pin(p));
            }
        }
        // First snapshot: everyone once.
        assert!(poll_next_once(&mut set, &w).is_pending());
        // X finishes (its clone alive: the slot cools).
        let mut got_x = false;
        for _ in 0..5 {
            if let Poll::Ready(Some(40)) = poll_next_once(&mut set, &w) {
                got_x = true;
                break;
            }
        }
        assert!(got_x);
        // Finish the current snapshot.
        for _ in 0..5 {
            let _ = poll_next_once(&mut set, &w);
        }
        // Stale wake of X, then the clone goes: the slot is idle.
        let stale = stash.lock().unwrap().take().unwrap();
        stale.wake();
        // Make sure the next poll takes a fresh snapshot: poll until the
        // spinners' round restarts at 0.
        let base = spin[0].get();
        let mut fresh = false;
        for _ in 0..10 {
            let _ = poll_next_once(&mut set, &w);
            if spin[0].get() > base {
                fresh = true;
                break;
            }
        }
        assert!(fresh);
        // That poll stopped after 32 spinner stalls: spinner 32 and X's stale
        // bit (40) are left in the cursor.
        assert_eq!(spin[31].get(), spin[0].get());
        assert_eq!(spin[32].get() + 1, spin[0].get(), "early stop not where expected");
        let y = Counter::new();
        let yc = y.clone();
        set.push(Box::pin(poll_fn(move |_| {
            yc.inc();
            Poll::Pending
        })));
        for _ in 0..6 {
            let _ = poll_next_once(&mut set, &w);
        }
        assert_eq!(y.get(), 1, "the newcomer polled without a wake");
        stop.store(true, Ordering::SeqCst);
        drop(set);
        assert_eq!(tracker.live(), 0);
    }

    /// Drop after an early stop while two other threads keep waking the
    /// children left in the snapshot (and already visited ones) through
    /// clones: every child dropped once, no waker leak; run under ASan.
    /// PASSES.
    fn drop_after_early_stop_with_remote_wakers() {
        for _ in 0..50 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (handles, _counters, children) = parked_set(200, &tracker);
            let mut g = gather(children);
            assert!(poll_once(&mut g, &w).is_pending());
            let wakers: Vec<Waker> = handles.iter().map(|h| h.waker().unwrap()).collect();
            for h in &handles {
                assert!(h.wake());
            }
            assert!(poll_once(&mut g, &w).is_pending());
            let go = Arc::new(AtomicBool::new(false));
            let (a, b): (Vec<Waker>, Vec<Waker>) =
                wakers.into_iter().enumerate().partition(|(i, _)| i % 2 == 0).into_iter_pair();
            let spawn = |ws: Vec<Waker>, go: Arc<AtomicBool>| {
                std::thread::spawn(move || {
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    for _ in 0..3 {
                        for w in &ws {
                            w.wake_by_ref();
                        }
                    }
                    drop(ws);
                })
            };
            let t1 = spawn(a, go.clone());
            let t2 = spawn(b, go.clone());
            go.store(true, Ordering::Release);
            drop(g);
            t1.join().unwrap();
            t2.join().unwrap();
            assert_eq!(tracker.live(), 0);
            assert_eq!(w.live_clones(), 0);
        }
    }
}

trait IntoIterPair {
    fn into_iter_pair(self) -> (Vec<Waker>, Vec<Waker>);
}

impl IntoIterPair for (Vec<(usize, Waker)>, Vec<(usize, Waker)>) {
    fn into_iter_pair(self) -> (Vec<Waker>, Vec<Waker>) {
        (
            self.0.into_iter().map(|(_, w)| w).collect(),
            self.1.into_iter().map(|(_, w)| w).collect(),
        )
    }
}

guarded! {
    /// The task group's parent waker panics when the early stop wakes it
    /// (SPEC §1.13): the panic propagates, the group refuses further polls,
    /// and dropping it drops every task once and releases the panicking
    /// waker registered for the snapshot. PASSES.
    fn task_group_parent_waker_panicking_on_the_early_stop() {
        use common::WakeLog;
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut group = Box::pin(task_group(move |tg| async move {
            for k in children {
                tg.spawn(async move { Ok::<_, ()>(k.await) });
            }
            std::future::pending::<()>().await;
            Ok::<_, ()>(())
        }));
        let w = CountingWaker::new();
        assert!(group.as_mut().poll(&mut w.context()).is_pending());
        assert_eq!(total(&counters), 100);
        for h in &handles {
            assert!(h.wake());
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let boom = WakeLog::new().waker_with(
            0,
            Some(Box::new(|| panic!("parent waker"))),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.as_mut().poll(&mut Context::from_waker(&boom))
        }));
        assert!(r.is_err(), "the early stop did not wake the parent");
        assert_eq!(total(&counters), 100 + STALL_LIMIT);
        drop(boom);
        drop(group);
        assert!(dropped.load(Ordering::SeqCst), "the panicking waker leaked");
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }

    /// The same for `process_batch` (a stream over the engine, refilled by
    /// `push`). PASSES.
    fn batch_parent_waker_panicking_on_the_early_stop() {
        use common::WakeLog;
        let tracker = Tracker::new();
        let (handles, counters, children) = parked_set(100, &tracker);
        let mut batch = Box::pin(awaitkit::process_batch(children, 100, |k| k));
        let w = CountingWaker::new();
        assert!(batch.as_mut().poll(&mut w.context()).is_pending());
        assert_eq!(total(&counters), 100);
        for h in &handles {
            assert!(h.wake());
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let boom = WakeLog::new().waker_with(
            0,
            Some(Box::new(|| panic!("parent waker"))),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.as_mut().poll(&mut Context::from_waker(&boom))
        }));
        assert!(r.is_err());
        assert_eq!(total(&counters), 100 + STALL_LIMIT);
        drop(boom);
        drop(batch);
        assert!(dropped.load(Ordering::SeqCst), "the panicking waker leaked");
        assert_eq!(tracker.live(), 0);
        assert_eq!(w.live_clones(), 0);
    }
}
