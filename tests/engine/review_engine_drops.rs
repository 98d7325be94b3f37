//! Review of `engine-merge` (the engine drop that skips its walk when
//! `running == 0 && kept == 0`, `fill`'s counting guard, `take_outputs`
//! into spare capacity): every child and every output is dropped exactly
//! once, whatever stops the combinator (panicking child poll, panicking
//! child destructor, panicking input iterator, lying size hints, cancel after
//! every poll, clear, pushes after completion), for slot types with drop
//! glue in the child only, in the output only, and in both, at sizes within
//! one bit-tree word and across levels / chunks.

use crate::common;

use awaitkit::{AsCompleted, as_completed, gather, gather_settled, try_gather};
use common::quiet;
use futures::Stream;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

const SIZES: &[usize] = &[1, 2, 63, 64, 65, 4095, 4096, 4097];

#[derive(Clone)]
struct Book {
    child_drops: Arc<Vec<AtomicUsize>>,
    out_drops: Arc<Vec<AtomicUsize>>,
    made: Arc<AtomicUsize>,
}

impl Book {
    fn new(n: usize) -> Self {
        Book {
            child_drops: Arc::new((0..n + 64).map(|_| AtomicUsize::new(0)).collect()),
            out_drops: Arc::new((0..n + 64).map(|_| AtomicUsize::new(0)).collect()),
            made: Arc::new(AtomicUsize::new(0)),
        }
    }
    /// Every child made was dropped once; each output produced (listed) once.
    #[track_caller]
    fn check(&self, what: &str, made: usize, outputs: &[usize]) {
        for i in 0..made {
            assert_eq!(
                self.child_drops[i].load(Ordering::SeqCst),
                1,
                "{what}: child {i} dropped != 1 time"
            );
        }
        for i in made..self.child_drops.len() {
            assert_eq!(
                self.child_drops[i].load(Ordering::SeqCst),
                0,
                "{what}: child {i}"
            );
        }
        for &i in outputs {
            assert_eq!(
                self.out_drops[i].load(Ordering::SeqCst),
                1,
                "{what}: output {i} dropped != 1 time"
            );
        }
        let listed: usize = self
            .out_drops
            .iter()
            .map(|d| d.load(Ordering::SeqCst))
            .sum();
        assert_eq!(listed, outputs.len(), "{what}: output drops total");
    }
}

/// An output with drop glue.
struct Out {
    id: usize,
    book: Book,
}
impl Drop for Out {
    fn drop(&mut self) {
        self.book.out_drops[self.id].fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Act {
    /// Ready after `n` self-wakes.
    Ready(usize),
    /// Panics in poll after `n` self-wakes.
    PanicPoll(usize),
    /// Ready after `n` self-wakes, and its destructor panics.
    ReadyPanicDrop(usize),
    /// Never finishes (parks nothing).
    Pending,
}

/// A child with drop glue, output with drop glue.
struct Child {
    id: usize,
    act: Act,
    polls: usize,
    book: Book,
}
impl Child {
    fn new(id: usize, act: Act, book: &Book) -> Self {
        book.made.fetch_add(1, Ordering::SeqCst);
        Child {
            id,
            act,
            polls: 0,
            book: book.clone(),
        }
    }
}
impl Future for Child {
    type Output = Out;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
        let polls = self.polls;
        self.polls += 1;
        let (n, panic) = match self.act {
            Act::Ready(n) | Act::ReadyPanicDrop(n) => (n, false),
            Act::PanicPoll(n) => (n, true),
            Act::Pending => return Poll::Pending,
        };
        if polls < n {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if panic {
            panic!("injected poll panic {}", self.id);
        }
        Poll::Ready(Out {
            id: self.id,
            book: self.book.clone(),
        })
    }
}
impl Drop for Child {
    fn drop(&mut self) {
        self.book.child_drops[self.id].fetch_add(1, Ordering::SeqCst);
        if let Act::ReadyPanicDrop(_) = self.act {
            if !std::thread::panicking() {
                panic!("injected drop panic {}", self.id);
            }
        }
    }
}

/// A child with drop glue whose output has none (`usize`).
struct PlainOut(Child);
impl Future for PlainOut {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        // SAFETY: structural pinning of the only field.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        inner.poll(cx).map(|o| {
            // Dropped here, uncounted: the output the engine keeps is a
            // plain `usize` (no drop glue).
            let id = o.id;
            o.book.out_drops[id].fetch_sub(1, Ordering::SeqCst);
            drop(o);
            id
        })
    }
}

/// A child without drop glue whose output has drop glue.
struct NoGlue {
    id: usize,
    ready_after: usize,
    polls: usize,
    book: *const Book,
}
impl Future for NoGlue {
    type Output = Out;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
        if self.polls < self.ready_after {
            self.polls += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // SAFETY: the book outlives every use in these tests.
        let book = unsafe { &*self.book };
        Poll::Ready(Out {
            id: self.id,
            book: book.clone(),
        })
    }
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> std::thread::Result<Poll<F::Output>> {
    let mut cx = noop_cx();
    catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *f).poll(&mut cx)))
}

/// Polls `f` until a poll panics (`true`), it is ready or `max` polls
/// passed (`false`).
fn panics_within<F: Future + Unpin>(f: &mut F, max: usize) -> bool {
    for _ in 0..max {
        match poll_once(f) {
            Err(_) => return true,
            Ok(Poll::Ready(_)) => return false,
            Ok(Poll::Pending) => {}
        }
    }
    false
}

/// Outputs stored, then a child panics in poll (the gather is dropped
/// afterwards): every child and stored output dropped once.
#[test]
fn gather_outputs_stored_then_child_poll_panics() {
    quiet();
    for &n in SIZES {
        for victim in [0, n / 2, n - 1] {
            let book = Book::new(n);
            let acts = |i: usize| {
                if i == victim {
                    Act::PanicPoll(2)
                } else {
                    Act::Ready(i % 3)
                }
            };
            let mut g = gather(
                (0..n)
                    .map(|i| Child::new(i, acts(i), &book))
                    .collect::<Vec<_>>(),
            );
            let panicked = panics_within(&mut g, 5);
            assert!(panicked);
            drop(g);
            let outs: Vec<usize> = (0..n).filter(|&i| i != victim && i % 3 <= 2).collect();
            // Outputs produced by the time of the panic: every child with
            // i % 3 < 2 (finished by poll 2) plus some with 2: count the drops
            // instead (each produced output once at most).
            for i in 0..n {
                assert!(
                    book.out_drops[i].load(Ordering::SeqCst) <= 1,
                    "n={n} output {i} twice"
                );
            }
            let _ = outs;
            book.check(
                &format!("n={n} victim={victim}"),
                n,
                &(0..n)
                    .filter(|&i| book.out_drops[i].load(Ordering::SeqCst) == 1)
                    .collect::<Vec<_>>(),
            );
            // Every child that finished before the panic has its output
            // dropped: those with i % 3 < 2 were done by the second poll.
            for i in (0..n).filter(|&i| i != victim && i % 3 < 2) {
                assert_eq!(
                    book.out_drops[i].load(Ordering::SeqCst),
                    1,
                    "n={n} output {i} leaked"
                );
            }
        }
    }
}

/// The last running child's destructor panics (running becomes 0) with
/// outputs kept; child drop glue with and without output drop glue.
#[test]
fn gather_last_childs_destructor_panics_outputs_kept() {
    quiet();
    for &n in SIZES {
        // Output with glue.
        let book = Book::new(n);
        let mut g = gather(
            (0..n)
                .map(|i| {
                    Child::new(
                        i,
                        if i == n / 2 {
                            Act::ReadyPanicDrop(3)
                        } else {
                            Act::Ready(i % 2)
                        },
                        &book,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let panicked = panics_within(&mut g, 6);
        assert!(panicked, "n={n}");
        drop(g);
        let outs: Vec<usize> = (0..n).collect();
        book.check(&format!("glue n={n}"), n, &outs);

        // Output without glue: `kept` must still count the slots.
        let book = Book::new(n);
        let mut g = gather(
            (0..n)
                .map(|i| {
                    PlainOut(Child::new(
                        i,
                        if i == n - 1 {
                            Act::ReadyPanicDrop(3)
                        } else {
                            Act::Ready(i % 2)
                        },
                        &book,
                    ))
                })
                .collect::<Vec<_>>(),
        );
        let panicked = panics_within(&mut g, 6);
        assert!(panicked, "n={n}");
        drop(g);
        book.check(&format!("plain n={n}"), n, &[]);
    }
}

/// A child without drop glue and outputs with drop glue: kept outputs at
/// every cancel point are dropped once; completed outputs handed out are
/// dropped once by the caller.
#[test]
fn gather_no_child_glue_output_glue_cancel_after_every_poll() {
    for &n in SIZES {
        for stop in 0..5 {
            let book = Book::new(n);
            let bp: *const Book = &book;
            let mut g = gather(
                (0..n)
                    .map(|i| NoGlue {
                        id: i,
                        ready_after: i % 4,
                        polls: 0,
                        book: bp,
                    })
                    .collect::<Vec<_>>(),
            );
            let mut done = false;
            for _ in 0..stop {
                if let Poll::Ready(v) = poll_once(&mut g).unwrap() {
                    assert_eq!(v.len(), n);
                    for (i, o) in v.iter().enumerate() {
                        assert_eq!(o.id, i);
                    }
                    drop(v);
                    done = true;
                    break;
                }
            }
            drop(g);
            // Outputs produced by `stop` polls: i % 4 < stop.
            let produced: Vec<usize> = (0..n).filter(|&i| done || i % 4 < stop).collect();
            for i in 0..n {
                let want = usize::from(produced.contains(&i));
                assert_eq!(
                    book.out_drops[i].load(Ordering::SeqCst),
                    want,
                    "n={n} stop={stop} output {i}"
                );
            }
        }
    }
}

/// Cancel after every poll, children and outputs with glue.
#[test]
fn gather_cancel_after_every_poll() {
    for &n in SIZES {
        for stop in 0..6 {
            let book = Book::new(n);
            let mut g = gather(
                (0..n)
                    .map(|i| Child::new(i, Act::Ready(i % 5), &book))
                    .collect::<Vec<_>>(),
            );
            let mut done = false;
            for _ in 0..stop {
                if let Poll::Ready(v) = poll_once(&mut g).unwrap() {
                    assert!(v.iter().enumerate().all(|(i, o)| o.id == i));
                    drop(v);
                    done = true;
                    break;
                }
            }
            drop(g);
            let produced: Vec<usize> = (0..n).filter(|&i| done || i % 5 < stop).collect();
            book.check(&format!("n={n} stop={stop}"), n, &produced);
        }
    }
}

/// An exact-size iterator that panics after `k` items: the children made
/// so far are dropped once (the engine drop must not skip them).
struct PanicIter {
    i: usize,
    n: usize,
    k: usize,
    book: Book,
}
impl Iterator for PanicIter {
    type Item = Child;
    fn next(&mut self) -> Option<Child> {
        if self.i == self.k {
            panic!("injected iterator panic");
        }
        if self.i == self.n {
            return None;
        }
        self.i += 1;
        Some(Child::new(self.i - 1, Act::Pending, &self.book))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n - self.i, Some(self.n - self.i))
    }
}

#[test]
fn from_iter_panicking_iterator_drops_made_children() {
    quiet();
    for &n in SIZES {
        for k in [0, 1, n / 2, n.saturating_sub(1)] {
            // Each combinator builds from an iterator that panics after `k`
            // children: the `k` made so far are dropped, nothing else.
            type Build = fn(PanicIter);
            let cases: [(&str, Build); 3] = [
                ("gather", |it| drop(gather(it))),
                ("as_completed", |it| drop(as_completed(it))),
                ("settled", |it| drop(gather_settled(it))),
            ];
            for (name, build) in cases {
                let book = Book::new(n);
                let it = PanicIter {
                    i: 0,
                    n,
                    k,
                    book: book.clone(),
                };
                let r = catch_unwind(AssertUnwindSafe(|| build(it)));
                assert!(r.is_err(), "{name} n={n} k={k}");
                book.check(&format!("{name} n={n} k={k}"), k, &[]);
            }
        }
    }
}

/// Size hints that lie: too high (fewer items), too low (more items pushed
/// afterwards, then a panic while pushing).
struct Liar {
    i: usize,
    real: usize,
    claim: usize,
    panic_at: Option<usize>,
    book: Book,
}
impl Iterator for Liar {
    type Item = Child;
    fn next(&mut self) -> Option<Child> {
        if Some(self.i) == self.panic_at {
            panic!("injected liar panic");
        }
        if self.i == self.real {
            return None;
        }
        self.i += 1;
        Some(Child::new(self.i - 1, Act::Ready(self.i % 3), &self.book))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let c = self.claim.saturating_sub(self.i);
        (c, Some(c))
    }
}

#[test]
fn from_iter_lying_size_hints() {
    quiet();
    for &n in SIZES {
        for (real, claim) in [(n, n + 5), (n + 5, n), (n, 0), (n.saturating_sub(1), n)] {
            // Run to completion.
            let book = Book::new(n);
            let mut g = gather(Liar {
                i: 0,
                real,
                claim,
                panic_at: None,
                book: book.clone(),
            });
            let out = loop {
                if let Poll::Ready(v) = poll_once(&mut g).unwrap() {
                    break v;
                }
            };
            assert_eq!(out.len(), real);
            assert!(out.iter().enumerate().all(|(i, o)| o.id == i), "order");
            drop(out);
            drop(g);
            book.check(
                &format!("n={n} real={real} claim={claim}"),
                real,
                &(0..real).collect::<Vec<_>>(),
            );
            // Cancel after one poll.
            let book = Book::new(n);
            let mut g = gather(Liar {
                i: 0,
                real,
                claim,
                panic_at: None,
                book: book.clone(),
            });
            let _ = poll_once(&mut g).unwrap();
            drop(g);
            let produced: Vec<usize> = (0..real).filter(|&i| (i + 1) % 3 == 0).collect();
            book.check(
                &format!("cancel n={n} real={real} claim={claim}"),
                real,
                &produced,
            );
        }
        // Panic in the push phase (iterator longer than its hint).
        let book = Book::new(n);
        let r = catch_unwind(AssertUnwindSafe(|| {
            gather(Liar {
                i: 0,
                real: n + 5,
                claim: n,
                panic_at: Some(n + 2),
                book: book.clone(),
            })
        }));
        assert!(r.is_err());
        book.check(&format!("push-phase panic n={n}"), n + 2, &[]);
    }
}

/// `try_gather` fail-fast with outputs stored, at every position.
#[test]
fn try_gather_fail_fast_drops_everything_once() {
    struct T(Child, bool);
    impl Future for T {
        type Output = Result<Out, usize>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            // SAFETY: structural pinning.
            let this = unsafe { self.get_unchecked_mut() };
            let fail = this.1;
            // SAFETY: `this.0` is never moved out of the pinned `T`.
            let inner = unsafe { Pin::new_unchecked(&mut this.0) };
            inner.poll(cx).map(|o| {
                if fail {
                    let id = o.id;
                    drop(o);
                    Err(id)
                } else {
                    Ok(o)
                }
            })
        }
    }
    for &n in SIZES {
        let book = Book::new(n);
        let bad = n / 2;
        let mut g = try_gather(
            (0..n)
                .map(|i| {
                    T(
                        Child::new(i, Act::Ready(if i == bad { 2 } else { i % 2 }), &book),
                        i == bad,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let r = loop {
            if let Poll::Ready(r) = poll_once(&mut g).unwrap() {
                break r;
            }
        };
        assert_eq!(r.err(), Some(bad));
        drop(g);
        // Every child finished by then produced an output (dropped once).
        let produced: Vec<usize> = (0..n)
            .filter(|&i| i == bad || i % 2 <= 1 || i % 2 == 2)
            .collect();
        book.check(&format!("n={n}"), n, &produced);
    }
}

/// `gather_settled`: panicking polls and panicking destructors, cancelled
/// after every poll and run to completion.
#[test]
fn gather_settled_panicking_children_every_stop() {
    quiet();
    for &n in SIZES {
        for stop in [0, 1, 2, 3, 100] {
            let book = Book::new(n);
            let act = |i: usize| match i % 4 {
                0 => Act::Ready(i % 3),
                1 => Act::PanicPoll(i % 3),
                2 => Act::ReadyPanicDrop(i % 3),
                _ => Act::Ready(1),
            };
            let mut g = gather_settled(
                (0..n)
                    .map(|i| Child::new(i, act(i), &book))
                    .collect::<Vec<_>>(),
            );
            let mut result = None;
            for _ in 0..stop {
                if let Poll::Ready(v) = poll_once(&mut g).unwrap() {
                    result = Some(v);
                    break;
                }
            }
            let finished = result.is_some();
            if let Some(v) = result {
                assert_eq!(v.len(), n);
                for (i, r) in v.iter().enumerate() {
                    match i % 4 {
                        0 | 3 => assert_eq!(r.as_ref().map(|o| o.id).ok(), Some(i)),
                        _ => assert!(r.is_err(), "i={i}"),
                    }
                }
                drop(v);
            }
            let r = catch_unwind(AssertUnwindSafe(|| drop(g)));
            let _ = r;
            // Outputs produced: kind 0, 3 and 2 (dropped by settle_drop).
            let produced: Vec<usize> = (0..n)
                .filter(|&i| i % 4 != 1)
                .filter(|&i| {
                    finished || {
                        let k = match i % 4 {
                            0 | 2 => i % 3,
                            _ => 1,
                        };
                        k < stop
                    }
                })
                .collect();
            book.check(&format!("n={n} stop={stop}"), n, &produced);
        }
    }
}

/// `as_completed`: drained, then pushes after completion (grown chunks),
/// some completed, then dropped — and `clear` with a panicking destructor,
/// pushes after the clear.
#[test]
fn as_completed_pushes_after_completion_and_clear() {
    quiet();
    for &n in SIZES {
        let book = Book::new(3 * n + 70);
        let mut set = as_completed(
            (0..n)
                .map(|i| Child::new(i, Act::Ready(i % 2), &book))
                .collect::<Vec<_>>(),
        );
        let mut cx = noop_cx();
        let mut got = Vec::new();
        loop {
            match Pin::new(&mut set).poll_next(&mut cx) {
                Poll::Ready(Some(o)) => {
                    got.push(o.id);
                    drop(o)
                }
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }
        assert_eq!(got.len(), n);
        // The engine now has running == 0 and nothing kept; push more.
        for i in n..2 * n {
            let act = if i % 3 == 0 {
                Act::Pending
            } else {
                Act::Ready(i % 2)
            };
            set.push(Child::new(i, act, &book));
        }
        // One poll: a few finish.
        let mut more = 0;
        for _ in 0..3 {
            if let Poll::Ready(Some(o)) = Pin::new(&mut set).poll_next(&mut cx) {
                got.push(o.id);
                drop(o);
                more += 1;
            }
        }
        assert!(more > 0);
        // Clear with a panicking destructor among the pending ones.
        set.push(Child::new(2 * n, Act::ReadyPanicDrop(usize::MAX), &book));
        let r = catch_unwind(AssertUnwindSafe(|| set.clear()));
        assert!(r.is_err());
        assert!(set.is_empty());
        // Pushes after the clear, then drop with some running.
        for i in 2 * n + 1..3 * n + 1 {
            set.push(Child::new(i, Act::Pending, &book));
        }
        drop(set);
        book.check(&format!("n={n}"), 3 * n + 1, &got);
    }
}

/// `AsCompleted::new` grown by push past several chunks (chunk growth
/// 32, 64, ...: N = 20 000 reaches a 3-level chunk), half finished, dropped.
#[test]
fn as_completed_grown_chunks_dropped_midway() {
    for n in [31, 32, 33, 96, 97, 4097, 20_000] {
        let book = Book::new(n);
        let mut set = AsCompleted::new();
        for i in 0..n {
            set.push(Child::new(
                i,
                if i % 2 == 0 {
                    Act::Ready(i % 3)
                } else {
                    Act::Pending
                },
                &book,
            ));
        }
        let mut cx = noop_cx();
        let mut got = Vec::new();
        for _ in 0..(n + 10) {
            match Pin::new(&mut set).poll_next(&mut cx) {
                Poll::Ready(Some(o)) => {
                    got.push(o.id);
                    drop(o);
                }
                Poll::Ready(None) => unreachable!(),
                Poll::Pending => {}
            }
            if got.len() == n.div_ceil(2) {
                break;
            }
        }
        assert_eq!(got.len(), n.div_ceil(2), "n={n}");
        drop(set);
        book.check(&format!("n={n}"), n, &got);
    }
}

/// Child adapted to `Result<Out, ()>` for the fallible combinators.
struct Res(Child);
impl Future for Res {
    type Output = Result<Out, ()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field.
        unsafe { self.map_unchecked_mut(|s| &mut s.0) }
            .poll(cx)
            .map(Ok)
    }
}

/// `wait_any`, then the rest polled to the end through the returned set
/// (pushes after completion), and `wait(FirstCompleted)` with its pending
/// set dropped: every child and output dropped once.
#[test]
fn wait_any_and_wait_rest_dropped_once() {
    for &n in SIZES {
        let book = Book::new(2 * n);
        let mut w = awaitkit::wait_any(
            (0..n)
                .map(|i| Child::new(i, Act::Ready(1 + i % 3), &book))
                .collect::<Vec<_>>(),
        );
        let (i, out, mut rest) = loop {
            if let Poll::Ready(r) = poll_once(&mut w).unwrap() {
                break r.expect("non-empty");
            }
        };
        let mut got = vec![i];
        drop(out);
        drop(w);
        let mut cx = noop_cx();
        loop {
            match Pin::new(&mut rest).poll_next(&mut cx) {
                Poll::Ready(Some(o)) => got.push(o.id),
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }
        for j in n..2 * n {
            rest.push(Child::new(j, Act::Ready(j % 2), &book));
        }
        let _ = Pin::new(&mut rest)
            .poll_next(&mut cx)
            .map(|o| o.map(|o| got.push(o.id)));
        drop(rest);
        book.check(&format!("wait_any n={n}"), 2 * n, &got);

        let book = Book::new(n);
        let mut w = awaitkit::wait(
            (0..n)
                .map(|i| {
                    Child::new(
                        i,
                        if i % 2 == 0 {
                            Act::Ready(1)
                        } else {
                            Act::Pending
                        },
                        &book,
                    )
                })
                .collect::<Vec<_>>(),
            awaitkit::ReturnWhen::FirstCompleted,
        );
        let outcome = loop {
            if let Poll::Ready(r) = poll_once(&mut w).unwrap() {
                break r;
            }
        };
        let got: Vec<usize> = outcome.done.iter().map(|(_, o)| o.id).collect();
        drop(outcome);
        drop(w);
        book.check(&format!("wait n={n}"), n, &got);
    }
}

/// `first_ok`: all fail but one, cancelled at every poll.
#[test]
fn first_ok_cancel_after_every_poll() {
    for &n in SIZES {
        for stop in 0..4 {
            let book = Book::new(n);
            let mut f = awaitkit::first_ok(
                (0..n)
                    .map(|i| {
                        Res(Child::new(
                            i,
                            Act::Ready(if i == n - 1 { 2 } else { 5 }),
                            &book,
                        ))
                    })
                    .collect::<Vec<_>>(),
            );
            let mut produced = Vec::new();
            for _ in 0..stop {
                if let Poll::Ready(r) = poll_once(&mut f).unwrap() {
                    let Ok((_, o)) = r else { panic!("ok") };
                    produced.push(o.id);
                    break;
                }
            }
            drop(f);
            book.check(&format!("first_ok n={n} stop={stop}"), n, &produced);
        }
    }
}

/// `process_batch`: cancelled after every poll, and a panic in `f`.
#[test]
fn process_batch_cancel_and_panicking_f() {
    quiet();
    for &n in &[1usize, 63, 64, 65, 300] {
        for stop in [0, 1, 2, 5, 1000] {
            let book = Book::new(n);
            let b2 = book.clone();
            let mut b =
                awaitkit::process_batch(0..n, 40, move |i| Child::new(i, Act::Ready(i % 3), &b2));
            let mut produced = Vec::new();
            for _ in 0..stop {
                if let Poll::Ready(v) = poll_once(&mut b).unwrap() {
                    produced = v.iter().map(|o: &Out| o.id).collect();
                    break;
                }
            }
            let made = book.made.load(Ordering::SeqCst);
            drop(b);
            // Outputs stored so far are dropped too: each produced output
            // once at most, every child once.
            for i in 0..n {
                assert!(book.out_drops[i].load(Ordering::SeqCst) <= 1);
            }
            let all: Vec<usize> = (0..n)
                .filter(|&i| book.out_drops[i].load(Ordering::SeqCst) == 1)
                .collect();
            if !produced.is_empty() {
                assert_eq!(all.len(), n);
            }
            book.check(&format!("batch n={n} stop={stop}"), made, &all);
        }
        let book = Book::new(n);
        let b2 = book.clone();
        let mut b = awaitkit::process_batch(0..n, 40, move |i| {
            if i == n / 2 {
                panic!("injected f panic");
            }
            Child::new(i, Act::Ready(i % 3), &b2)
        });
        let panicked = panics_within(&mut b, 1000);
        assert!(panicked);
        let made = book.made.load(Ordering::SeqCst);
        drop(b);
        let all: Vec<usize> = (0..n)
            .filter(|&i| book.out_drops[i].load(Ordering::SeqCst) == 1)
            .collect();
        book.check(&format!("batch panic n={n}"), made, &all);
    }
}

/// A task group whose tasks finish at different polls, dropped after every
/// poll; and one with a task whose destructor panics.
#[test]
fn task_group_dropped_after_every_poll() {
    quiet();
    for &n in &[1usize, 31, 32, 33, 64, 65, 200] {
        for stop in 0..5 {
            let book = Book::new(n);
            let b2 = book.clone();
            let mut g = awaitkit::task_group(move |tg| async move {
                for i in 0..n {
                    let c = Res(Child::new(i, Act::Ready(i % 4), &b2));
                    drop(tg.spawn(async move { c.await.map(drop) }));
                }
                Ok::<(), ()>(())
            });
            for _ in 0..stop {
                if let Poll::Ready(r) = poll_once(&mut g).unwrap() {
                    assert_eq!(r, Ok(()));
                    break;
                }
            }
            drop(g);
            let made = book.made.load(Ordering::SeqCst);
            let all: Vec<usize> = (0..n)
                .filter(|&i| book.out_drops[i].load(Ordering::SeqCst) == 1)
                .collect();
            book.check(&format!("task_group n={n} stop={stop}"), made, &all);
        }
    }
}
