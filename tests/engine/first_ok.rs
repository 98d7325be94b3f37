//! `first_ok` (futures' `select_ok`): the first `Ok` with its input index,
//! the rest dropped at once; every error in input order when all fail; only
//! woken children polled; cancel = drop at any point; panics refuse later
//! polls. Every async test runs on every executor (`matrix!`).

use crate::common;

use awaitkit::{FirstOk, first_ok};
use common::*;
use futures::future::FusedFuture;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Poll;

type Child = Parked<Result<u32, String>>;

/// `n` parked children whose outputs are `outcome(i)`.
fn children(
    n: usize,
    outcome: impl Fn(usize) -> Result<u32, String>,
    polls: &Counter,
    tracker: &Tracker,
) -> (Vec<ParkHandle>, Vec<Child>) {
    (0..n).map(|i| parked(outcome(i), polls, tracker)).unzip()
}

matrix! {
    /// The first `Ok` to finish wins, with its index; errors before it are
    /// set aside; the others are dropped before the output is returned.
    async fn the_first_ok_wins_and_the_rest_are_dropped_at_once() {
        let (polls, tracker) = (Counter::new(), Tracker::new());
        let (handles, kids) = children(5, |i| if i == 3 { Err("no".into()) } else { Ok(i as u32 * 10) }, &polls, &tracker);
        let w = CountingWaker::new();
        let mut first = first_ok(kids);
        assert!(poll_once(&mut first, &w).is_pending());
        handles[3].complete(); // an error: set aside
        assert!(poll_once(&mut first, &w).is_pending());
        handles[2].complete();
        assert_eq!(poll_once(&mut first, &w), Poll::Ready(Ok((2, 20))));
        assert_eq!(tracker.live(), 0, "the others were dropped with the result");
        assert_eq!(polls.get(), 5 + 2, "polls = wakes + N");
        assert!(first.is_terminated());
    }

    /// All fail: every error, in input order, whatever order they came in.
    async fn all_errors_in_input_order() {
        let (polls, tracker) = (Counter::new(), Tracker::new());
        let (handles, kids) = children(4, |i| Err(format!("e{i}")), &polls, &tracker);
        let w = CountingWaker::new();
        let mut first = first_ok(kids);
        assert!(poll_once(&mut first, &w).is_pending());
        for i in [2, 0, 3] {
            handles[i].complete();
            assert!(poll_once(&mut first, &w).is_pending());
        }
        handles[1].complete();
        let errors = poll_once(&mut first, &w);
        assert_eq!(errors, Poll::Ready(Err(vec!["e0".into(), "e1".into(), "e2".into(), "e3".into()])));
        assert_eq!(tracker.live(), 0);
        assert_eq!(polls.get(), 4 + 4);
    }

    async fn empty_input_fails_at_once_with_no_errors() {
        let out = first_ok(Vec::<std::future::Ready<Result<u8, u8>>>::new()).await;
        assert_eq!(out, Err(vec![]));
    }

    /// Spurious wakes poll only the woken child (polls = wakes + N).
    async fn only_woken_children_are_polled() {
        let (polls, tracker) = (Counter::new(), Tracker::new());
        let (handles, kids) = children(6, |i| Ok(i as u32), &polls, &tracker);
        let w = CountingWaker::new();
        let mut first = first_ok(kids);
        assert!(poll_once(&mut first, &w).is_pending());
        for _ in 0..3 {
            handles[4].wake();
            assert!(poll_once(&mut first, &w).is_pending());
        }
        assert_eq!(polls.get(), 6 + 3);
        handles[5].complete();
        assert_eq!(first.await, Ok((5, 5)));
        assert_eq!(polls.get(), 6 + 4);
    }

    /// Cancel after every poll: dropping at any point drops every child once.
    async fn cancel_after_every_poll() {
        for stop in 0..=5 {
            let (polls, tracker) = (Counter::new(), Tracker::new());
            let (handles, kids) = children(5, |i| if i < 4 { Err(format!("e{i}")) } else { Ok(9) }, &polls, &tracker);
            let w = CountingWaker::new();
            let mut first = first_ok(kids);
            for handle in &handles[..stop] {
                if poll_once(&mut first, &w).is_ready() {
                    break;
                }
                handle.complete();
            }
            drop(first);
            assert_eq!(tracker.live(), 0, "stop {stop}: every child dropped");
        }
    }

    /// A child that panics: the panic propagates, the next poll refuses, and
    /// dropping it drops the rest.
    async fn a_panicking_child_poisons_it() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (_handle, parked_child) = parked(Ok::<u32, String>(1), &polls, &tracker);
        let kids: Vec<futures::future::BoxFuture<'static, Result<u32, String>>> = vec![
            Box::pin(parked_child),
            Box::pin(async { panic!("child panics") }),
        ];
        let w = CountingWaker::new();
        let mut first = first_ok(kids);
        let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut first, &w))).unwrap_err();
        assert_eq!(panic_message(&*err), "child panics");
        assert!(!first.is_terminated());
        let again = catch_unwind(AssertUnwindSafe(|| poll_once(&mut first, &w))).unwrap_err();
        assert!(panic_message(&*again).contains("polled after a panic"), "{}", panic_message(&*again));
        drop(first);
        assert_eq!(tracker.live(), 0);
    }
}

#[test]
#[should_panic(expected = "polled after completion")]
fn polling_after_completion_panics() {
    let w = CountingWaker::new();
    let mut first: FirstOk<_> = first_ok([std::future::ready(Ok::<u8, u8>(1))]);
    assert_eq!(poll_once(&mut first, &w), Poll::Ready(Ok((0, 1))));
    let _ = poll_once(&mut first, &w);
}

#[test]
fn auto_traits() {
    fn send_sync_unpin<T: Send + Sync + Unpin>(_: &T) {}
    let first = first_ok([std::future::ready(Ok::<u8, String>(1))]);
    send_sync_unpin(&first);
    // `!Unpin` children: still `Unpin` (they are pinned inside).
    let pinned = first_ok([async { Ok::<u8, u8>(1) }]);
    fn unpin<T: Unpin>(_: &T) {}
    unpin(&pinned);
}

/// A child that fails after waking itself `left` times; counts its polls.
struct FailAfter {
    left: usize,
    polls: Counter,
}

impl std::future::Future for FailAfter {
    type Output = Result<u32, String>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<u32, String>> {
        self.polls.inc();
        if self.left == 0 {
            return Poll::Ready(Err("failed".into()));
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Errors keep coming while other children wake themselves: one poll of
/// `first_ok` still polls each child at most once (SPEC §1.4), and in total
/// polls = wakes + N.
#[test]
fn one_poll_polls_each_child_at_most_once_while_errors_come() {
    let counters: Vec<Counter> = (0..6).map(|_| Counter::new()).collect();
    let kids: Vec<FailAfter> = counters
        .iter()
        .enumerate()
        .map(|(i, c)| FailAfter {
            left: i,
            polls: c.clone(),
        })
        .collect();
    let mut first = first_ok(kids);
    let w = CountingWaker::new();
    for round in 1..=6 {
        let out = poll_once(&mut first, &w);
        let total: usize = counters.iter().map(Counter::get).sum();
        // Round r polls every child still running once: 6 + 5 + ... .
        let want: usize = (0..round).map(|r| 6 - r).sum();
        assert_eq!(total, want, "round {round}");
        if round < 6 {
            assert!(out.is_pending(), "round {round}");
        } else {
            assert_eq!(out, Poll::Ready(Err(vec!["failed".to_owned(); 6])));
        }
    }
    // wakes = 0 + 1 + ... + 5 = 15, N = 6.
    assert_eq!(counters.iter().map(Counter::get).sum::<usize>(), 15 + 6);
}

/// Several destructors panic as the winner is chosen — a loser's and the
/// winning value's: no abort, every one is dropped once, the first panic
/// (a loser's) propagates.
#[test]
fn panicking_destructors_at_the_win_do_not_abort() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Debug)]
    struct Bomb(&'static str, Arc<AtomicUsize>);
    impl Drop for Bomb {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
            panic!("{}", self.0);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let (d1, d2, d3) = (drops.clone(), drops.clone(), drops.clone());
    let kids: Vec<futures::future::BoxFuture<'static, Result<Bomb, Bomb>>> = vec![
        Box::pin(async move {
            let _loser = Bomb("loser", d1);
            futures::future::pending::<()>().await;
            unreachable!()
        }),
        Box::pin(async move { Err(Bomb("error", d2)) }),
        Box::pin(async move { Ok(Bomb("winner", d3)) }),
    ];
    let w = CountingWaker::new();
    let mut first = first_ok(kids);
    let err = catch_unwind(AssertUnwindSafe(|| poll_once(&mut first, &w))).unwrap_err();
    assert_eq!(panic_message(&*err), "loser");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        3,
        "loser, kept error, winning value"
    );
    drop(first);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}
