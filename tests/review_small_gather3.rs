//! Break-it review 3 (d9e8c0d, 50cbc45): the *wide* small block of
//! `gather`/`try_gather` (17 to 63 children, head moved up to a multiple of
//! 64 inside a plain allocation, `WIDE_VTABLE`), the const-generic waker
//! functions and the restructured `tuple_waker_wake`.
//!
//! Every scenario compares the small path with the engine where it can
//! (`iter.filter(|_| true)` has no exact size). Scenarios marked FOUND would
//! fail on 50cbc45: none does (28 regression scenarios, also clean under
//! AddressSanitizer). Three checks are limited to the small path (n <= 63)
//! because the engine (n = 64, or `filter`) differs, outside this change:
//! it may need more gather polls for the same child wakes (n = 33 and 64
//! with self-waking children), and a stale child waker woken after the
//! gather finished still wakes the task.

#![allow(clippy::all)]

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use awaitkit::{gather, try_gather};
use futures::future::FusedFuture;
use std::future::Future;
use std::marker::PhantomPinned;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

use common::{CountingWaker, assert_no_leak, poll_once};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn quiet() {
    common::quiet_injected(&["child ", "iter ", "parent ", "drop "], false);
}

fn msg(p: &(dyn std::any::Any + Send)) -> String {
    common::panic_message(p)
}

const SIZES: &[usize] = &[1, 15, 16, 17, 18, 31, 32, 33, 62, 63, 64, 65];

/// Counts drops of children and outputs.
#[derive(Default)]
struct Tally {
    child_drops: Mutex<Vec<usize>>,
    out_drops: AtomicUsize,
    polls: AtomicUsize,
}

struct Out(usize, Arc<Tally>);
impl Drop for Out {
    fn drop(&mut self) {
        self.1.out_drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pending (self-waking, or by a stashed waker) for `left` polls, then
/// `Out(id)`. Records the waker it was polled with.
struct Kid {
    id: usize,
    left: usize,
    tally: Arc<Tally>,
    seen: Arc<Mutex<Vec<Option<(usize, usize)>>>>,
    panic_poll: bool,
    panic_drop: bool,
}
impl Kid {
    fn new(
        id: usize,
        left: usize,
        tally: &Arc<Tally>,
        seen: &Arc<Mutex<Vec<Option<(usize, usize)>>>>,
    ) -> Kid {
        Kid {
            id,
            left,
            tally: tally.clone(),
            seen: seen.clone(),
            panic_poll: false,
            panic_drop: false,
        }
    }
}
impl Future for Kid {
    type Output = Out;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
        self.tally.polls.fetch_add(1, Ordering::SeqCst);
        {
            let w = cx.waker();
            let mut seen = self.seen.lock().unwrap();
            if seen.len() <= self.id {
                seen.resize(self.id + 1, None);
            }
            seen[self.id] = Some((w.data().addr(), ptr_of(w.vtable())));
        }
        if self.panic_poll {
            panic!("child {} poll", self.id);
        }
        if self.left == 0 {
            return Poll::Ready(Out(self.id, self.tally.clone()));
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
impl Drop for Kid {
    fn drop(&mut self) {
        self.tally.child_drops.lock().unwrap().push(self.id);
        if self.panic_drop {
            panic!("drop {}", self.id);
        }
    }
}

fn ptr_of(v: &'static RawWakerVTable) -> usize {
    (v as *const RawWakerVTable).addr()
}

type Seen = Arc<Mutex<Vec<Option<(usize, usize)>>>>;

fn kids(n: usize, left: usize, tally: &Arc<Tally>, seen: &Seen) -> Vec<Kid> {
    (0..n).map(|i| Kid::new(i, left, tally, seen)).collect()
}

/// Drives a `Gather`/`TryGather` on this thread with a counting waker,
/// polling again whenever woken (or every round if nothing woke it but it is
/// still pending, as a sanity bound), returning (output, polls of the gather).
fn drive<F: Future + Unpin>(mut f: F) -> (F::Output, usize) {
    let w = CountingWaker::new();
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(polls < 10_000, "endless");
        if let Poll::Ready(v) = poll_once(&mut f, &w) {
            return (v, polls);
        }
    }
}

/// An iterator with an exact (lying) size hint `hint` that yields `items`.
struct Liar<T> {
    items: std::vec::IntoIter<T>,
    hint: usize,
    panic_at: Option<usize>,
    taken: usize,
}
impl<T> Iterator for Liar<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if Some(self.taken) == self.panic_at {
            panic!("iter {}", self.taken);
        }
        self.taken += 1;
        self.items.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let h = self.hint.saturating_sub(self.taken);
        (h, Some(h))
    }
}

/// Path markers: the vtable of a child's waker, by what it was polled with.
fn vtables_for(n: usize) -> Vec<usize> {
    let tally = Arc::new(Tally::default());
    let seen: Seen = Default::default();
    let (out, _) = drive(gather(kids(n, 0, &tally, &seen)));
    assert_eq!(out.len(), n);
    let s = seen.lock().unwrap();
    s.iter().map(|x| x.unwrap().1).collect()
}

// ---------------------------------------------------------------------------
// Sizes, paths, lying iterators
// ---------------------------------------------------------------------------

#[test]
fn sizes_outputs_in_order_every_child_dropped_once_no_leak() {
    for &n in SIZES {
        for left in [0, 1, 3] {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            {
                let (out, polls) = drive(gather(kids(n, left, &tally, &seen)));
                let ids: Vec<usize> = out.iter().map(|o| o.0).collect();
                assert_eq!(ids, (0..n).collect::<Vec<_>>(), "n = {n}");
                if n <= 63 {
                    assert_eq!(polls, left + 1, "n = {n}: gather polls");
                }
                // polls = wakes + N
                assert_eq!(tally.polls.load(Ordering::SeqCst), n * (left + 1));
            }
            let mut d = tally.child_drops.lock().unwrap().clone();
            d.sort();
            assert_eq!(
                d,
                (0..n).collect::<Vec<_>>(),
                "n = {n}: each child dropped once"
            );
            assert_eq!(tally.out_drops.load(Ordering::SeqCst), n);
        }
        assert_no_leak("gather sizes", || {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            let _ = drive(gather(kids(n, 2, &tally, &seen)));
            let _ = drive(try_gather((0..n).map(|i| async move { Ok::<_, ()>(i) })));
        });
    }
}

#[test]
fn path_chosen_by_size_and_waker_data_is_head_plus_index() {
    // Same vtable for 1..=16 (the tuple's), another for 17..=63 (wide), a
    // third for 64+ (engine).
    let narrow = vtables_for(16)[0];
    let wide = vtables_for(17)[0];
    let engine = vtables_for(64)[0];
    assert_ne!(narrow, wide);
    assert_ne!(wide, engine);
    assert_ne!(narrow, engine);
    for &n in SIZES {
        let tally = Arc::new(Tally::default());
        let seen: Seen = Default::default();
        let _ = drive(gather(kids(n, 1, &tally, &seen)));
        let s = seen.lock().unwrap();
        let want = if n <= 16 {
            narrow
        } else if n <= 63 {
            wide
        } else {
            engine
        };
        let head = s[0].unwrap().0;
        for (i, e) in s.iter().enumerate() {
            let (data, vt) = e.unwrap();
            assert_eq!(vt, want, "n = {n}, child {i}: vtable");
            if n <= 63 {
                assert_eq!(data, head + i, "n = {n}: data = head + index");
                let a = if n <= 16 { 16 } else { 64 };
                assert_eq!(head % a, 0, "n = {n}: head at a multiple of {a}");
            }
        }
    }
}

#[test]
fn lying_iterators_across_16_17_and_63_64() {
    // (hint, yielded, expected vtable class: 0 narrow, 1 wide, 2 engine)
    let narrow = vtables_for(16)[0];
    let wide = vtables_for(17)[0];
    let engine = vtables_for(64)[0];
    let cases = [
        (17, 16, wide),
        (17, 18, engine),
        (16, 17, engine),
        (63, 64, engine),
        (63, 1, wide),
        (63, 62, wide),
        (63, 0, usize::MAX),
        (16, 1, narrow),
        (64, 63, engine),
        (62, 63, engine),
    ];
    for (hint, k, want) in cases {
        let tally = Arc::new(Tally::default());
        let seen: Seen = Default::default();
        {
            let it = Liar {
                items: kids(k, 1, &tally, &seen).into_iter(),
                hint,
                panic_at: None,
                taken: 0,
            };
            let (out, _) = drive(gather(it));
            let ids: Vec<usize> = out.iter().map(|o| o.0).collect();
            assert_eq!(ids, (0..k).collect::<Vec<_>>(), "hint {hint} yields {k}");
            if want != usize::MAX {
                let s = seen.lock().unwrap();
                for e in s.iter() {
                    assert_eq!(e.unwrap().1, want, "hint {hint} yields {k}: path");
                }
            }
        }
        let mut d = tally.child_drops.lock().unwrap().clone();
        d.sort();
        assert_eq!(d, (0..k).collect::<Vec<_>>());
        assert_eq!(tally.out_drops.load(Ordering::SeqCst), k);
        assert_no_leak("liar", || {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            let it = Liar {
                items: kids(k, 1, &tally, &seen).into_iter(),
                hint,
                panic_at: None,
                taken: 0,
            };
            let _ = drive(gather(it));
            let it = Liar {
                items: (0..k)
                    .map(|i| std::future::ready(Ok::<_, ()>(i)))
                    .collect::<Vec<_>>()
                    .into_iter(),
                hint,
                panic_at: None,
                taken: 0,
            };
            assert_eq!(drive(try_gather(it)).0, Ok((0..k).collect::<Vec<_>>()));
        });
    }
}

#[test]
fn iterator_panics_at_items_16_to_63_drop_what_was_taken() {
    quiet();
    for n in [17, 33, 63] {
        for at in [16, 17, 31, 32, 62] {
            if at >= n {
                continue;
            }
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            let it = Liar {
                items: kids(n, 1, &tally, &seen).into_iter(),
                hint: n,
                panic_at: Some(at),
                taken: 0,
            };
            let r = catch_unwind(AssertUnwindSafe(move || gather(it)));
            let e = r.err().expect("the iterator's panic");
            assert_eq!(msg(&*e), format!("iter {at}"));
            // `at` children taken and dropped; the rest dropped with the
            // iterator.
            let mut d = tally.child_drops.lock().unwrap().clone();
            d.sort();
            assert_eq!(d, (0..n).collect::<Vec<_>>(), "n {n} at {at}");
        }
        assert_no_leak("iter panic", || {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            let it = Liar {
                items: kids(n, 1, &tally, &seen).into_iter(),
                hint: n,
                panic_at: Some(n - 1),
                taken: 0,
            };
            let _ = catch_unwind(AssertUnwindSafe(move || gather(it)));
        });
    }
}

// ---------------------------------------------------------------------------
// Alignment, ZST, huge, !Unpin
// ---------------------------------------------------------------------------

macro_rules! aligned_case {
    ($name:ident, $align:literal) => {
        #[test]
        fn $name() {
            #[repr(align($align))]
            #[derive(Default)]
            struct Big([u8; 3]);
            #[repr(align($align))]
            struct AOut(usize, #[allow(dead_code)] Big);
            struct AFut {
                id: usize,
                left: usize,
                _pad: Big,
                addrs: Arc<Mutex<Vec<(usize, usize)>>>,
            }
            impl Future for AFut {
                type Output = AOut;
                fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AOut> {
                    let me = (&*self as *const AFut).addr();
                    assert_eq!(me % $align, 0, "child {} misaligned", self.id);
                    self.addrs
                        .lock()
                        .unwrap()
                        .push((me, cx.waker().data().addr()));
                    // Scribble over the whole future: ASan catches a slot
                    // outside the allocation.
                    self._pad.0 = [0xAA; 3];
                    if self.left == 0 {
                        return Poll::Ready(AOut(self.id, Big::default()));
                    }
                    self.left -= 1;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
            for n in [16usize, 17, 18, 31, 32, 33, 62, 63] {
                for _ in 0..8 {
                    let addrs = Arc::new(Mutex::new(Vec::new()));
                    let fs: Vec<AFut> = (0..n)
                        .map(|id| AFut {
                            id,
                            left: 1,
                            _pad: Big::default(),
                            addrs: addrs.clone(),
                        })
                        .collect();
                    let (out, _) = drive(gather(fs));
                    for (i, o) in out.iter().enumerate() {
                        assert_eq!(o.0, i);
                        assert_eq!((o as *const AOut).addr() % $align, 0);
                    }
                    let a = addrs.lock().unwrap();
                    let head = a[0].1;
                    if n > 16 {
                        assert_eq!(head % 64, 0, "n {n} align {}: head", $align);
                    }
                    // Every slot after the head, distinct, inside one block.
                    for &(me, data) in a.iter() {
                        assert!(me > head, "slot before head");
                        assert!(me - head < (1 << 22), "slot far from head");
                        assert!(data >= head && data < head + n);
                    }
                    drop(a);
                    let fs: Vec<_> = (0..n)
                        .map(|id| AFut {
                            id,
                            left: 0,
                            _pad: Big::default(),
                            addrs: addrs.clone(),
                        })
                        .map(|f| async move { Ok::<_, ()>(f.await.0) })
                        .collect();
                    assert_eq!(drive(try_gather(fs)).0, Ok((0..n).collect::<Vec<_>>()));
                }
                assert_no_leak("aligned", || {
                    let addrs = Arc::new(Mutex::new(Vec::new()));
                    let fs: Vec<AFut> = (0..n)
                        .map(|id| AFut {
                            id,
                            left: 1,
                            _pad: Big::default(),
                            addrs: addrs.clone(),
                        })
                        .collect();
                    let _ = drive(gather(fs));
                });
            }
        }
    };
}
aligned_case!(align_32_wide, 32);
aligned_case!(align_64_wide, 64);
aligned_case!(align_128_wide, 128);
aligned_case!(align_4096_wide, 4096);

#[test]
fn zst_children_and_outputs_at_wide_sizes() {
    struct Zst;
    impl Future for Zst {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }
    for &n in SIZES {
        let (out, _) = drive(gather((0..n).map(|_| Zst)));
        assert_eq!(out.len(), n);
        let (out, _) = drive(gather((0..n).map(|_| std::future::ready(()))));
        assert_eq!(out.len(), n);
        let (out, _) = drive(try_gather(
            (0..n).map(|_| std::future::ready(Ok::<(), ()>(()))),
        ));
        assert_eq!(out.unwrap().len(), n);
        assert_no_leak("zst", || {
            let _ = drive(gather((0..n).map(|_| Zst)));
        });
    }
}

#[test]
fn huge_and_not_unpin_children_at_wide_sizes() {
    for &n in SIZES {
        let (out, _) = drive(gather((0..n).map(|i| async move {
            let buf = [i as u8; 8192];
            let _pin = PhantomPinned;
            common::yield_now().await;
            let addr = (&buf as *const [u8; 8192]).addr();
            common::yield_now().await;
            // The future did not move between polls.
            assert_eq!((&buf as *const [u8; 8192]).addr(), addr);
            buf.iter().map(|&b| b as usize).sum::<usize>()
        })));
        assert_eq!(
            out,
            (0..n)
                .map(|i| (i as u8) as usize * 8192)
                .collect::<Vec<_>>()
        );
        assert_no_leak("huge", || {
            let _ = drive(gather((0..n).map(|i| async move {
                let buf = [i as u8; 4096];
                common::yield_now().await;
                buf[17]
            })));
        });
    }
}

// ---------------------------------------------------------------------------
// Wakers of a wide block
// ---------------------------------------------------------------------------

/// A child that stashes its waker (clones) and waits for a flag.
struct Stasher {
    id: usize,
    stash: Arc<Mutex<Vec<Option<Waker>>>>,
    go: Arc<Vec<std::sync::atomic::AtomicBool>>,
    polls: Arc<AtomicUsize>,
}
impl Future for Stasher {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        if self.go[self.id].load(Ordering::SeqCst) {
            return Poll::Ready(self.id);
        }
        self.stash.lock().unwrap()[self.id] = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn stashers(
    n: usize,
) -> (
    Vec<Stasher>,
    Arc<Mutex<Vec<Option<Waker>>>>,
    Arc<Vec<std::sync::atomic::AtomicBool>>,
    Arc<AtomicUsize>,
) {
    let stash = Arc::new(Mutex::new(vec![None; n]));
    let go = Arc::new(
        (0..n)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect::<Vec<_>>(),
    );
    let polls = Arc::new(AtomicUsize::new(0));
    let v = (0..n)
        .map(|id| Stasher {
            id,
            stash: stash.clone(),
            go: go.clone(),
            polls: polls.clone(),
        })
        .collect();
    (v, stash, go, polls)
}

#[test]
fn wide_wakers_from_other_threads_clone_wake_by_ref_drop() {
    for n in [17, 18, 31, 32, 33, 62, 63, 64] {
        for round in 0..20 {
            let (kids, stash, go, polls) = stashers(n);
            let mut g = gather(kids);
            let w = CountingWaker::new();
            assert!(poll_once(&mut g, &w).is_pending());
            let wakers: Vec<Waker> = stash
                .lock()
                .unwrap()
                .iter()
                .map(|w| w.clone().unwrap())
                .collect();
            let mut handles = Vec::new();
            for (i, wk) in wakers.into_iter().enumerate() {
                let go = go.clone();
                handles.push(std::thread::spawn(move || {
                    go[i].store(true, Ordering::SeqCst);
                    let c = wk.clone();
                    match (i + round) % 3 {
                        0 => wk.wake(),
                        1 => {
                            wk.wake_by_ref();
                            drop(wk)
                        }
                        _ => {
                            c.wake_by_ref();
                            drop(wk)
                        }
                    }
                    drop(c);
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
            assert!(w.wakes() >= 1, "n {n}: the task was woken");
            let out = match poll_once(&mut g, &w) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("n {n}: every child woke, still pending"),
            };
            assert_eq!(out, (0..n).collect::<Vec<_>>());
            assert_eq!(polls.load(Ordering::SeqCst), 2 * n, "polls = wakes + N");
            let before = w.wakes();
            // Stale stash wakers (the first poll's) woken after the end.
            for wk in stash.lock().unwrap().drain(..).flatten() {
                wk.wake();
            }
            if n <= 63 {
                assert_eq!(
                    w.wakes(),
                    before,
                    "n {n}: a wake after the end woke the task"
                );
            }
            drop(g);
            assert_eq!(w.live_clones(), 0, "n {n}: parent waker clones leaked");
        }
    }
}

#[test]
fn clones_outlive_the_gather_and_free_the_block_on_another_thread() {
    // The last clone frees the block: `tuple_free` with a non-zero offset
    // (ASan checks the pointer given back to the allocator).
    for n in [17, 33, 62, 63] {
        for _ in 0..32 {
            let (kids, stash, go, _) = stashers(n);
            let mut g = gather(kids);
            let w = CountingWaker::new();
            assert!(poll_once(&mut g, &w).is_pending());
            let clones: Vec<Waker> = stash
                .lock()
                .unwrap()
                .iter()
                .map(|w| w.clone().unwrap())
                .collect();
            for g in go.iter() {
                g.store(true, Ordering::SeqCst);
            }
            for wk in stash.lock().unwrap().drain(..).flatten() {
                wk.wake();
            }
            assert_eq!(
                poll_once(&mut g, &w),
                Poll::Ready((0..n).collect::<Vec<_>>())
            );
            let woken = w.wakes();
            drop(g);
            std::thread::spawn(move || {
                for c in &clones {
                    c.wake_by_ref();
                }
                drop(clones);
            })
            .join()
            .unwrap();
            assert_eq!(w.wakes(), woken);
            assert_eq!(w.live_clones(), 0);
        }
        // Also: the gather dropped while pending, clones alive.
        let (kids, stash, _, _) = stashers(n);
        let mut g = gather(kids);
        let w = CountingWaker::new();
        assert!(poll_once(&mut g, &w).is_pending());
        let clones: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
        drop(g);
        assert_eq!(w.live_clones(), 0, "parent waker released with the gather");
        std::thread::spawn(move || {
            for c in clones {
                c.wake();
            }
        })
        .join()
        .unwrap();
        assert_eq!(w.wakes(), 0);
    }
}

#[test]
fn will_wake_between_clones_of_the_same_wide_child() {
    for n in [16, 17, 63] {
        let (kids, stash, _, _) = stashers(n);
        let mut g = gather(kids);
        let w = CountingWaker::new();
        assert!(poll_once(&mut g, &w).is_pending());
        let s = stash.lock().unwrap();
        for i in 0..n {
            let a = s[i].clone().unwrap();
            let b = a.clone();
            assert!(a.will_wake(&b), "n {n}: clones of child {i}");
            assert_eq!(
                a.data().addr() % 64 % if n > 16 { 64 } else { 16 },
                i % if n > 16 { 64 } else { 16 }
            );
            if i > 0 {
                assert!(
                    !a.will_wake(s[i - 1].as_ref().unwrap()),
                    "n {n}: children {i} and {}",
                    i - 1
                );
            }
        }
    }
    // The borrowed waker and its clone: will_wake (a child that keeps the
    // clone only when `!will_wake` does not re-clone each poll).
    struct Keeper(Option<Waker>, usize, Arc<AtomicUsize>);
    impl Future for Keeper {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            match &self.0 {
                Some(k) if k.will_wake(cx.waker()) => {}
                _ => {
                    self.2.fetch_add(1, Ordering::SeqCst);
                    self.0 = Some(cx.waker().clone());
                }
            }
            if self.1 == 0 {
                return Poll::Ready(());
            }
            self.1 -= 1;
            self.0.as_ref().unwrap().wake_by_ref();
            Poll::Pending
        }
    }
    for n in [17, 63] {
        let reclones = Arc::new(AtomicUsize::new(0));
        let _ = drive(gather((0..n).map(|_| Keeper(None, 3, reclones.clone()))));
        assert_eq!(
            reclones.load(Ordering::SeqCst),
            n,
            "n {n}: will_wake failed between polls"
        );
    }
}

#[test]
fn waker_of_index_62_from_another_thread() {
    for n in [63usize, 62, 33] {
        let last = n - 1;
        for _ in 0..50 {
            let (kids, stash, go, polls) = stashers(n);
            for i in 0..n {
                if i != last {
                    go[i].store(true, Ordering::SeqCst);
                }
            }
            let mut g = gather(kids);
            let w = CountingWaker::new();
            assert!(poll_once(&mut g, &w).is_pending());
            let wk = stash.lock().unwrap()[last].take().unwrap();
            assert_eq!(wk.data().addr() % 64, last);
            let go2 = go.clone();
            std::thread::spawn(move || {
                go2[last].store(true, Ordering::SeqCst);
                wk.wake();
            })
            .join()
            .unwrap();
            assert_eq!(w.wakes(), 1);
            assert_eq!(
                poll_once(&mut g, &w),
                Poll::Ready((0..n).collect::<Vec<_>>())
            );
            assert_eq!(
                polls.load(Ordering::SeqCst),
                n + 1,
                "only child {last} polled again"
            );
        }
    }
}

/// A parent waker whose operations can panic.
struct Evil {
    wake_panics: bool,
    clone_panics: bool,
    drop_panics: bool,
    wakes: AtomicUsize,
    live: AtomicUsize,
}
static EVIL_VT: RawWakerVTable = RawWakerVTable::new(ev_clone, ev_wake, ev_wake_by_ref, ev_drop);
unsafe fn ev_clone(d: *const ()) -> RawWaker {
    // SAFETY: `d` is a leaked `Evil` (static lifetime).
    let e = unsafe { &*d.cast::<Evil>() };
    if e.clone_panics {
        panic!("parent clone");
    }
    e.live.fetch_add(1, Ordering::SeqCst);
    RawWaker::new(d, &EVIL_VT)
}
unsafe fn ev_wake(d: *const ()) {
    // SAFETY: forwarded.
    unsafe {
        struct D(*const ());
        impl Drop for D {
            fn drop(&mut self) {
                // SAFETY: as above.
                unsafe { ev_drop(self.0) }
            }
        }
        let _d = D(d);
        ev_wake_by_ref(d);
    }
}
unsafe fn ev_wake_by_ref(d: *const ()) {
    // SAFETY: leaked `Evil`.
    let e = unsafe { &*d.cast::<Evil>() };
    e.wakes.fetch_add(1, Ordering::SeqCst);
    if e.wake_panics {
        panic!("parent wake");
    }
}
unsafe fn ev_drop(d: *const ()) {
    // SAFETY: leaked `Evil`.
    let e = unsafe { &*d.cast::<Evil>() };
    e.live.fetch_sub(1, Ordering::SeqCst);
    if e.drop_panics && !std::thread::panicking() {
        panic!("parent drop");
    }
}
fn evil(wake_panics: bool, clone_panics: bool, drop_panics: bool) -> (&'static Evil, Waker) {
    let e: &'static Evil = Box::leak(Box::new(Evil {
        wake_panics,
        clone_panics,
        drop_panics,
        wakes: AtomicUsize::new(0),
        live: AtomicUsize::new(1),
    }));
    // Kept reachable from a static: not a leak for LeakSanitizer.
    static KEEP: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    KEEP.lock().unwrap().push((e as *const Evil).addr());
    // SAFETY: the vtable follows the RawWaker contract over a leaked `Evil`.
    let w = unsafe { Waker::from_raw(RawWaker::new((e as *const Evil).cast(), &EVIL_VT)) };
    (e, w)
}

#[test]
fn panicking_parent_waker_wake_from_wide_child_waker_no_leak() {
    quiet();
    for n in [17, 63] {
        let (e, pw) = evil(true, false, false);
        let (kids, stash, go, _) = stashers(n);
        let mut g = gather(kids);
        let mut cx = Context::from_waker(&pw);
        assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        for x in go.iter() {
            x.store(true, Ordering::SeqCst);
        }
        let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
        let mut it = ws.into_iter();
        // The first wake reaches the parent, which panics: the consumed
        // waker's reference is given back on unwind.
        let first = it.next().unwrap();
        let r = std::thread::spawn(move || catch_unwind(AssertUnwindSafe(move || first.wake())))
            .join()
            .unwrap();
        assert_eq!(msg(&*r.err().expect("parent wake panic")), "parent wake");
        for wk in it {
            wk.wake();
        }
        assert_eq!(e.wakes.load(Ordering::SeqCst), 1);
        match Pin::new(&mut g).poll(&mut cx) {
            Poll::Ready(v) => assert_eq!(v, (0..n).collect::<Vec<_>>()),
            Poll::Pending => panic!("pending after every child woke"),
        }
        drop(g);
        assert_eq!(e.live.load(Ordering::SeqCst), 1, "parent clones released");
    }
    // And the leak check proper (one thread).
    for n in [17, 63] {
        let (_e, pw0) = evil(true, false, false);
        assert_no_leak("evil wake", || {
            let pw = pw0.clone();
            let (kids, stash, go, _) = stashers(n);
            let mut g = gather(kids);
            let mut cx = Context::from_waker(&pw);
            assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
            let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
            // Owner dropped first: the wakers hold the block.
            for x in go.iter() {
                x.store(true, Ordering::SeqCst);
            }
            let mut it = ws.into_iter();
            let first = it.next().unwrap();
            let _ = catch_unwind(AssertUnwindSafe(move || first.wake()));
            drop(g);
            drop(it);
            std::mem::forget(pw);
        });
    }
}

#[test]
fn panicking_parent_waker_clone_and_drop_wide() {
    quiet();
    for n in [17, 63] {
        // Clone panics at registration: the poll panics, the gather is
        // poisoned, dropping it drops every child and frees the block.
        let (_e, pw) = evil(false, true, false);
        let (kids, stash, _, _) = stashers(n);
        let mut g = gather(kids);
        let mut cx = Context::from_waker(&pw);
        let r = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut g).poll(&mut cx)));
        assert_eq!(msg(&*r.err().expect("clone panic")), "parent clone");
        let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
        drop(g);
        std::thread::spawn(move || ws.into_iter().for_each(Waker::wake))
            .join()
            .unwrap();

        // Drop panics when the last clone frees the block on another thread.
        let (e, pw) = evil(false, false, true);
        let (kids, stash, _, _) = stashers(n);
        let mut g = gather(kids);
        let mut cx = Context::from_waker(&pw);
        assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
        let r = catch_unwind(AssertUnwindSafe(|| drop(g)));
        // (Dropped with the gather or with the last clone.)
        let _ = r;
        let r = std::thread::spawn(move || catch_unwind(AssertUnwindSafe(move || drop(ws))))
            .join()
            .unwrap();
        let _ = r;
        assert_eq!(
            e.live.load(Ordering::SeqCst),
            1,
            "parent waker clone leaked"
        );
        std::mem::forget(pw);
    }
}

// ---------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------

fn panicking_set(
    n: usize,
    poll_at: &[usize],
    drop_at: &[usize],
    tally: &Arc<Tally>,
    seen: &Seen,
) -> Vec<Kid> {
    let mut v = kids(n, 1, tally, seen);
    for &i in poll_at {
        v[i].panic_poll = true;
    }
    for &i in drop_at {
        v[i].panic_drop = true;
    }
    v
}

/// (message of the poll's panic, Debug after it, child drops, message of the
/// drop's panic) on the small path or on the engine.
fn panic_run(
    n: usize,
    poll_at: &[usize],
    drop_at: &[usize],
    engine: bool,
) -> (String, String, Vec<usize>, Option<String>, bool) {
    let tally = Arc::new(Tally::default());
    let seen: Seen = Default::default();
    let v = panicking_set(n, poll_at, drop_at, &tally, &seen);
    let mut g: Box<dyn FusedFutureDebug<Output = Vec<Out>>> = if engine {
        Box::new(gather(v.into_iter().filter(|_| true)))
    } else {
        Box::new(gather(v))
    };
    let w = CountingWaker::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        Pin::new(&mut *g).poll(&mut w.context())
    }));
    let m = match r {
        Err(e) => msg(&*e),
        Ok(Poll::Pending) => "pending".into(),
        Ok(Poll::Ready(_)) => "ready".into(),
    };
    let dbg = format!("{:?}", g);
    let term = g.is_terminated();
    let r = catch_unwind(AssertUnwindSafe(move || drop(g)));
    let dm = r.err().map(|e| msg(&*e));
    let mut d = tally.child_drops.lock().unwrap().clone();
    d.sort();
    (m, dbg, d, dm, term)
}

trait FusedFutureDebug: Future + FusedFuture + std::fmt::Debug + Unpin {}
impl<T: Future + FusedFuture + std::fmt::Debug + Unpin> FusedFutureDebug for T {}

#[test]
fn child_poll_and_drop_panics_at_index_62_and_63_match_the_engine() {
    quiet();
    let cases: &[(usize, &[usize], &[usize])] = &[
        (63, &[62], &[]),
        (63, &[62], &[62]),
        (63, &[], &[62]),
        (63, &[], &[61, 62]),
        (63, &[0, 62], &[]),
        (64, &[63], &[63]),
        (17, &[16], &[16]),
        (33, &[], &[0, 32]),
    ];
    for &(n, poll_at, drop_at) in cases {
        let small = panic_run(n, poll_at, drop_at, false);
        let eng = panic_run(n, poll_at, drop_at, true);
        assert_eq!(
            small.0, eng.0,
            "n {n} poll {poll_at:?} drop {drop_at:?}: poll panic"
        );
        assert_eq!(
            small.1.replace("Gather", ""),
            eng.1.replace("Gather", ""),
            "n {n}: Debug after panic"
        );
        assert_eq!(
            small.2,
            (0..n).collect::<Vec<_>>(),
            "n {n}: every child dropped once"
        );
        assert_eq!(eng.2, (0..n).collect::<Vec<_>>());
        assert_eq!(small.3, eng.3, "n {n}: drop panic");
        assert_eq!(small.4, eng.4, "n {n}: is_terminated");
    }
    for n in [17, 63] {
        assert_no_leak("panics", || {
            let _ = panic_run(n, &[n - 1], &[n - 1, 0], false);
        });
    }
}

// ---------------------------------------------------------------------------
// try_gather fail-fast at wide sizes
// ---------------------------------------------------------------------------

struct TKid {
    id: usize,
    fail_on: Option<usize>,
    polls: usize,
    tally: Arc<Tally>,
    drops_at_err: Arc<Mutex<Option<usize>>>,
}
#[allow(dead_code)]
struct TErr(usize, Arc<Tally>, Arc<Mutex<Option<usize>>>);
impl std::fmt::Debug for TErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TErr({})", self.0)
    }
}
impl Future for TKid {
    type Output = Result<usize, TErr>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        if Some(self.polls) == self.fail_on {
            return Poll::Ready(Err(TErr(
                self.id,
                self.tally.clone(),
                self.drops_at_err.clone(),
            )));
        }
        if self.polls >= 5 {
            return Poll::Ready(Ok(self.id));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
impl Drop for TKid {
    fn drop(&mut self) {
        self.tally.child_drops.lock().unwrap().push(self.id);
    }
}

#[test]
fn try_gather_fail_fast_at_wide_sizes_matches_the_engine() {
    for n in [17, 18, 31, 32, 33, 62, 63, 64] {
        for (bad, on) in [(n - 1, 2), (0, 1), (n / 2, 3)] {
            let mut results = Vec::new();
            for engine in [false, true] {
                let tally = Arc::new(Tally::default());
                let d = Arc::new(Mutex::new(None));
                let v: Vec<TKid> = (0..n)
                    .map(|id| TKid {
                        id,
                        fail_on: (id == bad).then_some(on),
                        polls: 0,
                        tally: tally.clone(),
                        drops_at_err: d.clone(),
                    })
                    .collect();
                let w = CountingWaker::new();
                let mut polls = 0;
                let r = if engine {
                    let mut g = try_gather(v.into_iter().filter(|_| true));
                    loop {
                        polls += 1;
                        if let Poll::Ready(r) = poll_once(&mut g, &w) {
                            assert!(g.is_terminated());
                            assert!(format!("{g:?}").contains("running: 0"), "{g:?}");
                            break r;
                        }
                    }
                } else {
                    let mut g = try_gather(v);
                    loop {
                        polls += 1;
                        if let Poll::Ready(r) = poll_once(&mut g, &w) {
                            assert!(g.is_terminated());
                            assert!(format!("{g:?}").contains("running: 0"), "{g:?}");
                            break r;
                        }
                    }
                };
                let e = r.expect_err("fail fast");
                assert_eq!(e.0, bad);
                // Everything dropped by the time the error is handed out.
                assert_eq!(
                    tally.child_drops.lock().unwrap().len(),
                    n,
                    "n {n}: dropped before the error"
                );
                results.push((polls, e.0));
            }
            // The engine's pass polls at most a chunk's worth per poll (see
            // the report): only the error's identity is compared.
            assert_eq!(
                results[0].1, results[1].1,
                "n {n} bad {bad} on {on}: small vs engine"
            );
            if n <= 63 {
                assert_eq!(results[0].0, on, "n {n}: error in the poll it appears in");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Parity with the engine
// ---------------------------------------------------------------------------

#[test]
fn parity_with_engine_outputs_polls_debug_terminated() {
    for n in [16, 17, 18, 31, 32, 33, 62, 63] {
        let mut res = Vec::new();
        for engine in [false, true] {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            // Staggered: child i pends i % 5 times.
            let v: Vec<Kid> = (0..n).map(|i| Kid::new(i, i % 5, &tally, &seen)).collect();
            let w = CountingWaker::new();
            let mut debugs = Vec::new();
            let out: Vec<usize>;
            let mut g: Box<dyn FusedFutureDebug<Output = Vec<Out>>> = if engine {
                Box::new(gather(v.into_iter().filter(|_| true)))
            } else {
                Box::new(gather(v))
            };
            loop {
                debugs.push(format!("{:?}", g).replace("Gather", ""));
                assert!(!g.is_terminated());
                if let Poll::Ready(o) = Pin::new(&mut *g).poll(&mut w.context()) {
                    out = o.iter().map(|o| o.0).collect();
                    break;
                }
            }
            assert!(g.is_terminated());
            debugs.push(format!("{:?}", g).replace("Gather", ""));
            let r = catch_unwind(AssertUnwindSafe(|| {
                Pin::new(&mut *g).poll(&mut w.context())
            }));
            let pm = msg(&*r.err().expect("poll after completion panics"));
            res.push((
                out,
                tally.polls.load(Ordering::SeqCst),
                w.wakes(),
                debugs,
                pm,
            ));
        }
        assert_eq!(res[0], res[1], "n {n}: small vs engine");
    }
}

#[test]
fn cooperative_self_wakers_at_wide_sizes() {
    // A child that always wakes itself: one poll polls each child once and
    // returns Pending after waking the task.
    struct Spin(Arc<AtomicUsize>);
    impl Future for Spin {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    for n in [17, 63] {
        let c = Arc::new(AtomicUsize::new(0));
        let mut g = gather((0..n).map(|_| Spin(c.clone())));
        let w = CountingWaker::new();
        for k in 1..=5 {
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!(c.load(Ordering::SeqCst), n * k);
            assert_eq!(w.wakes(), k);
        }
    }
}

// ---------------------------------------------------------------------------
// Stress on real runtimes (a lost wake hangs: watchdog)
// ---------------------------------------------------------------------------

async fn stress_body(rounds: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for r in 0..rounds {
        let n = [17, 18, 31, 32, 33, 62, 63][r % 7];
        let delays: Vec<u64> = (0..n).map(|_| rng.gen_range(0..3)).collect();
        let fs = delays.into_iter().enumerate().map(|(i, d)| async move {
            // Woken from another thread (a plain thread, not the runtime).
            let (tx, rx) = futures::channel::oneshot::channel::<usize>();
            std::thread::spawn(move || {
                if d > 0 {
                    std::thread::sleep(Duration::from_micros(d * 50));
                }
                let _ = tx.send(i);
            });
            let v = rx.await.unwrap();
            common::yield_now().await;
            v
        });
        let out = gather(fs).await;
        assert_eq!(out, (0..n).collect::<Vec<_>>());
        let fs = (0..n).map(|i| async move {
            let (tx, rx) = futures::channel::oneshot::channel::<usize>();
            std::thread::spawn(move || {
                let _ = tx.send(i);
            });
            let v = rx.await.unwrap();
            if i == n - 1 && r % 2 == 0 {
                Err(v)
            } else {
                Ok(v)
            }
        });
        let out = try_gather(fs).await;
        if r % 2 == 0 {
            assert_eq!(out, Err(n - 1));
        } else {
            assert_eq!(out, Ok((0..n).collect::<Vec<_>>()));
        }
    }
}

#[test]
fn stress_tokio_multi_wide() {
    common::run_tokio_multi("stress_tokio_multi_wide", || stress_body(120));
}

#[test]
fn stress_smol_wide() {
    common::run_smol("stress_smol_wide", || stress_body(120));
}

#[test]
fn stress_tokio_multi_moving_task_wide() {
    // The gather moves between tasks (select-polled from two tasks in turn).
    common::run_tokio_multi("stress_moving", || async {
        for r in 0..100 {
            let n = 17 + r % 47;
            let mut g = gather((0..n).map(|i| async move {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_micros((i % 3) as u64 * 30)).await;
                i
            }));
            // Poll once here, then finish it in a spawned task.
            let _ = futures::poll!(&mut g);
            let out = tokio::spawn(async move { g.await }).await.unwrap();
            assert_eq!(out, (0..n).collect::<Vec<_>>());
        }
    });
}

// ---------------------------------------------------------------------------
// Tuples after the generic waker change
// ---------------------------------------------------------------------------

#[test]
fn tuples_regression_after_generic_wakers() {
    // Wakers of a tuple: data = head + index, head 16-aligned, same vtable
    // as a narrow small set.
    let narrow = vtables_for(16)[0];
    let tally = Arc::new(Tally::default());
    let seen: Seen = Default::default();
    let k = |i| Kid::new(i, 2, &tally, &seen);
    let (out, polls) = drive(awaitkit::gather!(
        k(0),
        k(1),
        k(2),
        k(3),
        k(4),
        k(5),
        k(6),
        k(7),
        k(8),
        k(9),
        k(10),
        k(11),
        k(12),
        k(13),
        k(14),
        k(15)
    ));
    assert_eq!(out.15.0, 15);
    assert_eq!(polls, 3);
    let s = seen.lock().unwrap().clone();
    let head = s[0].unwrap().0;
    assert_eq!(head % 16, 0);
    for (i, e) in s.iter().enumerate() {
        assert_eq!(e.unwrap(), (head + i, narrow));
    }
    assert_eq!(tally.child_drops.lock().unwrap().len(), 16);

    // Cross-thread wakes and a clone outliving the tuple.
    common::run_tokio_multi("tuple_threads", || async {
        for _ in 0..200 {
            let (tx, rx) = futures::channel::oneshot::channel::<u8>();
            let (tx2, rx2) = futures::channel::oneshot::channel::<u16>();
            std::thread::spawn(move || {
                let _ = tx.send(1);
                let _ = tx2.send(2);
            });
            let r = awaitkit::gather!(
                async { rx.await.unwrap() },
                async { rx2.await.unwrap() },
                async { 3u32 }
            );
            assert_eq!(r.await, (1, 2, 3));
            let r = awaitkit::try_gather!(
                async { Ok::<u8, &str>(1) },
                async {
                    tokio::task::yield_now().await;
                    Err::<u8, &str>("x")
                },
                std::future::pending::<Result<(), &str>>()
            );
            assert_eq!(r.await, Err("x"));
        }
    });

    // A tuple child's waker woken after the tuple finished.
    let (kids, stash, go, _) = stashers(2);
    let mut it = kids.into_iter();
    let (a, b) = (it.next().unwrap(), it.next().unwrap());
    let mut t = awaitkit::gather!(a, b);
    let w = CountingWaker::new();
    assert!(poll_once(&mut t, &w).is_pending());
    let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
    go[0].store(true, Ordering::SeqCst);
    go[1].store(true, Ordering::SeqCst);
    ws[0].wake_by_ref();
    assert_eq!(w.wakes(), 1);
    ws[1].wake_by_ref();
    assert_eq!(poll_once(&mut t, &w), Poll::Ready((0, 1)));
    drop(t);
    std::thread::spawn(move || ws.into_iter().for_each(Waker::wake))
        .join()
        .unwrap();
    assert_eq!(w.wakes(), 1);
    assert_eq!(w.live_clones(), 0);
}

// ---------------------------------------------------------------------------
// More: cancel, races on the last reference, lent borrowed wakers
// ---------------------------------------------------------------------------

#[test]
fn iterator_panics_on_the_extra_item_after_a_full_wide_block() {
    quiet();
    for n in [16usize, 17, 63] {
        let tally = Arc::new(Tally::default());
        let seen: Seen = Default::default();
        let it = Liar {
            items: kids(n + 1, 1, &tally, &seen).into_iter(),
            hint: n,
            panic_at: Some(n),
            taken: 0,
        };
        let r = catch_unwind(AssertUnwindSafe(move || gather(it)));
        assert_eq!(msg(&*r.err().expect("iterator panic")), format!("iter {n}"));
        let mut d = tally.child_drops.lock().unwrap().clone();
        d.sort();
        assert_eq!(d, (0..n + 1).collect::<Vec<_>>(), "n {n}");
        assert_no_leak("extra item panic", || {
            let tally = Arc::new(Tally::default());
            let seen: Seen = Default::default();
            let it = Liar {
                items: kids(n + 1, 1, &tally, &seen).into_iter(),
                hint: n,
                panic_at: Some(n),
                taken: 0,
            };
            let _ = catch_unwind(AssertUnwindSafe(move || gather(it)));
        });
    }
}

#[test]
fn cancel_wide_gather_mid_flight_children_waking_siblings_from_drop() {
    // Each child's destructor wakes a stashed clone of a sibling's waker
    // (the block is being torn down) and drops it.
    struct K {
        id: usize,
        mine: Arc<Mutex<Vec<Option<Waker>>>>,
        drops: Arc<AtomicUsize>,
    }
    impl Future for K {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.mine.lock().unwrap()[self.id] = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    impl Drop for K {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
            let n = self.mine.lock().unwrap().len();
            let w = self.mine.lock().unwrap()[(self.id + 1) % n].take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }
    for n in [17, 33, 63] {
        let run = || {
            let mine = Arc::new(Mutex::new(vec![None; n]));
            let drops = Arc::new(AtomicUsize::new(0));
            let mut g = gather((0..n).map(|id| K {
                id,
                mine: mine.clone(),
                drops: drops.clone(),
            }));
            let w = CountingWaker::new();
            assert!(poll_once(&mut g, &w).is_pending());
            drop(g);
            assert_eq!(drops.load(Ordering::SeqCst), n);
            assert_eq!(w.live_clones(), 0, "n {n}: parent waker kept");
            mine.lock().unwrap().clear();
        };
        run();
        assert_no_leak("cancel wide", run);
    }
}

#[test]
fn race_last_reference_owner_drop_vs_clone_drop_wide() {
    // The owner drops the gather while other threads drop/wake the last
    // clones: exactly one frees the block (with the head's offset).
    for n in [17, 63] {
        for _ in 0..300 {
            let (kids, stash, _, _) = stashers(n);
            let mut g = gather(kids);
            let w = CountingWaker::new();
            assert!(poll_once(&mut g, &w).is_pending());
            let ws: Vec<Waker> = stash.lock().unwrap().drain(..).flatten().collect();
            let (a, b): (Vec<_>, Vec<_>) =
                ws.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            let barrier = Arc::new(std::sync::Barrier::new(3));
            let b1 = barrier.clone();
            let t1 = std::thread::spawn(move || {
                b1.wait();
                for (_, w) in a {
                    w.wake();
                }
            });
            let b2 = barrier.clone();
            let t2 = std::thread::spawn(move || {
                b2.wait();
                drop(b);
            });
            barrier.wait();
            drop(g);
            t1.join().unwrap();
            t2.join().unwrap();
            assert_eq!(w.live_clones(), 0);
        }
    }
}

#[test]
fn borrowed_waker_lent_to_a_scoped_thread_wide() {
    // A child wakes its borrowed waker from a scoped thread during its poll
    // (joined before the poll returns): no clone, the owner sees the bit.
    struct Lend(usize, Arc<AtomicUsize>);
    impl Future for Lend {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.1.fetch_add(1, Ordering::SeqCst);
            if self.0 == 0 {
                return Poll::Ready(());
            }
            self.0 -= 1;
            let w = cx.waker();
            std::thread::scope(|s| {
                s.spawn(|| w.wake_by_ref());
            });
            Poll::Pending
        }
    }
    for n in [17, 62, 63] {
        for engine in [false, true] {
            let c = Arc::new(AtomicUsize::new(0));
            let v: Vec<Lend> = (0..n).map(|i| Lend(i % 3, c.clone())).collect();
            let w = CountingWaker::new();
            let mut polls = 0;
            let wakes_seen;
            if engine {
                let mut g = gather(v.into_iter().filter(|_| true));
                loop {
                    polls += 1;
                    assert!(polls < 100);
                    if poll_once(&mut g, &w).is_ready() {
                        break;
                    }
                    assert!(w.wakes() >= polls, "n {n}: pending without a wake (engine)");
                }
                wakes_seen = w.wakes();
            } else {
                let mut g = gather(v);
                loop {
                    polls += 1;
                    assert!(polls < 100);
                    if poll_once(&mut g, &w).is_ready() {
                        break;
                    }
                    assert!(
                        w.wakes() >= polls,
                        "n {n}: pending without a wake (lost wake)"
                    );
                }
                wakes_seen = w.wakes();
            }
            let child_wakes: usize = (0..n).map(|i| i % 3).sum();
            assert_eq!(
                c.load(Ordering::SeqCst),
                child_wakes + n,
                "n {n} engine {engine}: polls = wakes + N"
            );
            let _ = wakes_seen;
        }
    }
}
