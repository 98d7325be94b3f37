//! `gather!` and `try_gather!`: heterogeneous children, 0 to 16 of them, with
//! the same rules as the functions (SPEC §1, §2).

use crate::common;

use awaitkit::{gather, try_gather};
use common::*;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, join};
use std::future::{IntoFuture, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// The fields of a tuple as an array (tuples above 12 have no `PartialEq`).
macro_rules! fields {
    ($t:expr; $($i:tt)*) => {{
        let t = $t;
        [$(t.$i),*]
    }};
}

/// Sixteen parked children with values `0..16`.
fn sixteen(tracker: &Tracker) -> (Vec<ParkHandle>, Vec<Counter>, [Parked<usize>; 16]) {
    let (h, c, children) = parked_set(16, tracker);
    (h, c, children.try_into().unwrap_or_else(|_| unreachable!()))
}

matrix! {
    async fn zero_children() {
        let () = gather!().await;
        let r: Result<(), std::convert::Infallible> = try_gather!().await;
        assert_eq!(r, Ok(()));
    }

    async fn one_child() {
        assert_eq!(gather!(async { 7 }).await, (7,));
        assert_eq!(gather!(ready('x'),).await, ('x',));
        assert_eq!(try_gather!(async { Ok::<_, ()>(7) }).await, Ok((7,)));
        assert_eq!(try_gather!(async { Err::<u8, _>("no") }).await, Err("no"));
    }

    async fn two_heterogeneous_children() {
        let polls = Counter::new();
        let (n, s) = gather!(YieldN::new(3, 1u64, &polls), async { yield_now().await; String::from("two") }).await;
        assert_eq!((n, s.as_str()), (1, "two"));
        assert_eq!(polls.get(), 4);
        let r = try_gather!(async { Ok::<_, String>(1u8) }, async { Ok(vec!['a']) }).await;
        assert_eq!(r, Ok((1, vec!['a'])));
    }

    async fn every_arity_from_0_to_16() {
        let () = gather!().await;
        assert_eq!(gather!(ready(0)).await, (0,));
        assert_eq!(gather!(ready(0), ready(1)).await, (0, 1));
        assert_eq!(gather!(ready(0), ready(1), ready(2)).await, (0, 1, 2));
        assert_eq!(gather!(ready(0), ready(1), ready(2), ready(3)).await, (0, 1, 2, 3));
        assert_eq!(gather!(ready(0), ready(1), ready(2), ready(3), ready(4)).await, (0, 1, 2, 3, 4));
        assert_eq!(gather!(ready(0), ready(1), ready(2), ready(3), ready(4), ready(5)).await, (0, 1, 2, 3, 4, 5));
        assert_eq!(
            gather!(ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6)).await,
            (0, 1, 2, 3, 4, 5, 6)
        );
        assert_eq!(
            gather!(ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7)).await,
            (0, 1, 2, 3, 4, 5, 6, 7)
        );
        assert_eq!(
            gather!(ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8)).await,
            (0, 1, 2, 3, 4, 5, 6, 7, 8)
        );
        assert_eq!(
            gather!(ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9))
                .await,
            (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
        );
        assert_eq!(
            gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10)
            )
            .await,
            (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
        );
        assert_eq!(
            gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10), ready(11)
            )
            .await,
            (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
        );
        assert_eq!(
            fields!(
                gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10), ready(11), ready(12)
            )
            .await; 0 1 2 3 4 5 6 7 8 9 10 11 12),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
        assert_eq!(
            fields!(
                gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10), ready(11), ready(12), ready(13)
            )
            .await; 0 1 2 3 4 5 6 7 8 9 10 11 12 13),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
        );
        assert_eq!(
            fields!(
                gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10), ready(11), ready(12), ready(13), ready(14)
            )
            .await; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
        );
        assert_eq!(
            fields!(
                gather!(
                ready(0), ready(1), ready(2), ready(3), ready(4), ready(5), ready(6), ready(7), ready(8), ready(9),
                ready(10), ready(11), ready(12), ready(13), ready(14), ready(15),
            )
            .await; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    async fn sixteen_heterogeneous_children() {
        let polls = Counter::new();
        let thread = WakerThread::spawn();
        let (tx, rx) = oneshot::channel::<i64>();
        let out = gather!(
            ready(1u8),
            async { "two" },
            YieldN::new(3, String::from("three"), &polls),
            NoMove::new(YieldN::new(5, 4u16, &polls)),
            // Child 4 wakes child 5 through a channel.
            async move {
                yield_now().await;
                tx.send(-5).unwrap();
                '4'
            },
            rx,
            async { vec![6u8; 6] },
            RemoteYield::new(7, Some(7u32), &thread, &polls),
            async { true },
            async {},
            async { 10.5f64 },
            async { yield_now().await; (11u8, 'b') },
            ready(Box::<str>::from("twelve")),
            async { [13u8; 2] },
            YieldN::new(1, Ok::<u8, ()>(14), &polls),
            async { 15i128 },
        )
        .await;
        assert_eq!(out.0, 1);
        assert_eq!(out.1, "two");
        assert_eq!(out.2, "three");
        assert_eq!(out.3, (4, 6));
        assert_eq!(out.4, '4');
        assert_eq!(out.5, Ok(-5));
        assert_eq!(out.6, vec![6; 6]);
        assert_eq!(out.7, Some(7));
        assert!(out.8);
        assert_eq!(out.9, ());
        assert_eq!(out.10, 10.5);
        assert_eq!(out.11, (11, 'b'));
        assert_eq!(&*out.12, "twelve");
        assert_eq!(out.13, [13, 13]);
        assert_eq!(out.14, Ok(14));
        assert_eq!(out.15, 15);
        // 4 + 6 + 8 + 2 polls: each yield is one wake.
        assert_eq!(polls.get(), 20);
    }

    async fn sixteen_heterogeneous_try_children_all_ok() {
        let polls = Counter::new();
        let r = try_gather!(
            async { Ok::<_, String>(0u8) },
            async { Ok("1") },
            YieldN::new(2, Ok(2u16), &polls),
            async { yield_now().await; Ok(3u32) },
            async { Ok(4u64) },
            async { Ok('5') },
            async { Ok(vec![6]) },
            async { Ok(Some(7)) },
            async { Ok(()) },
            async { Ok(9i8) },
            async { Ok(true) },
            async { Ok((11, 11)) },
            async { Ok(12usize) },
            NoMove::new(YieldN::new(4, Ok::<_, String>(13u8), &polls)).map(|(v, _)| v),
            async { Ok(String::from("14")) },
            async { Ok(15i16) },
        )
        .await;
        let v = r.unwrap();
        assert_eq!((v.0, v.1, v.2, v.3, v.4, v.5), (0, "1", 2, 3, 4, '5'));
        assert_eq!((v.6, v.7, v.8, v.9, v.10, v.11), (vec![6], Some(7), (), 9, true, (11, 11)));
        assert_eq!((v.12, v.13, v.14.as_str(), v.15), (12, 13, "14", 15));
        assert_eq!(polls.get(), 8);
    }

    async fn try_gather_fail_fast_does_not_wait_for_pending_children() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (h1, p1) = parked(Ok::<u8, String>(1), &polls, &tracker);
        let (h2, p2) = parked(Ok::<&str, String>("2"), &polls, &tracker);
        let (h3, p3) = parked(Ok::<char, String>('3'), &polls, &tracker);
        let token = tracker.token();
        let r = try_gather!(
            p1,
            async move {
                yield_now().await;
                drop(token);
                Err::<(), _>("bad".to_owned())
            },
            p2,
            p3,
            YieldN::tracked(1000, Ok(5u64), &polls, &tracker),
        )
        .await;
        assert_eq!(r, Err("bad".to_owned()));
        assert_eq!(tracker.live(), 0, "fail-fast drops every other child");
        assert!(!h1.has_waker() && !h2.has_waker() && !h3.has_waker());
    }

    async fn child_panic_propagates_and_rest_is_dropped() {
        let tracker = Tracker::new();
        let polls = Counter::new();
        let (h, p) = parked(1u8, &polls, &tracker);
        let mut g = gather!(p, panic_after(2, "macro child panicked", tracker.token()), YieldN::tracked(9, 'c', &polls, &tracker));
        let err = AssertUnwindSafe(&mut g).catch_unwind().await.expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "macro child panicked");
        drop(g);
        assert_eq!(tracker.live(), 0);
        assert!(!h.has_waker());
    }

    async fn into_future_arguments() {
        struct Deferred(u8);
        impl IntoFuture for Deferred {
            type Output = u8;
            type IntoFuture = Ready<u8>;
            fn into_future(self) -> Ready<u8> {
                ready(self.0 * 2)
            }
        }
        assert_eq!(gather!(Deferred(1), async { 'z' }, Deferred(3)).await, (2, 'z', 6));
    }

    async fn wakes_from_other_threads_are_never_lost() {
        let thread = WakerThread::spawn();
        let polls = Counter::new();
        let y = |n: usize| RemoteYield::new(n, n, &thread, &polls);
        for _ in 0..10 {
            let out = gather!(y(30), y(31), y(32), y(33), y(34), y(35), y(36), y(37), y(38), y(39), y(40), y(41)).await;
            assert_eq!(out, (30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41));
        }
    }

    async fn sibling_in_same_task_runs_while_children_spin() {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Counter::new();
        let s = || Spinner::new(&stop, &polls);
        let (out, ()) = join(gather!(s(), s(), s(), s(), s(), s(), s(), s(), s(), s(), s(), s(), s()), async {
            stop.store(true, Ordering::SeqCst);
        })
        .await;
        assert_eq!(out.12, ());
        assert_eq!(polls.get(), 26);
    }

    #[should_panic(expected = "`gather!` polled after completion")]
    async fn gather_polled_after_completion_panics() {
        let mut g = gather!(ready(1), async { 2 });
        assert_eq!((&mut g).await, (1, 2));
        let _ = (&mut g).await;
    }

    #[should_panic(expected = "`gather!` polled after completion")]
    async fn empty_gather_polled_after_completion_panics() {
        let mut g = gather!();
        (&mut g).await;
        (&mut g).await;
    }

    #[should_panic(expected = "`try_gather!` polled after completion")]
    async fn try_gather_polled_after_ok_panics() {
        let mut g = try_gather!(async { Ok::<_, ()>(1) }, async { Ok(2) });
        assert_eq!((&mut g).await, Ok((1, 2)));
        let _ = (&mut g).await;
    }

    #[should_panic(expected = "`try_gather!` polled after completion")]
    async fn try_gather_polled_after_err_panics() {
        let mut g = try_gather!(std::future::pending::<Result<u8, u8>>(), async { Err::<u16, _>(2) });
        assert_eq!((&mut g).await, Err(2));
        let _ = (&mut g).await;
    }
}

matrix_local! {
    async fn not_send_children() {
        let rc = Rc::new(3);
        let (a, b, c) = gather!(
            async { let r = Rc::clone(&rc); yield_now().await; *r },
            async { Rc::new('b') },
            ready(Rc::clone(&rc)),
        )
        .await;
        assert_eq!((a, *b, *c), (3, 'b', 3));
        let r = try_gather!(async { Ok::<_, Rc<u8>>(Rc::new(1)) }, async { yield_now().await; Err::<(), _>(Rc::new(2)) }).await;
        assert_eq!(*r.unwrap_err(), 2);
    }
}

guarded! {
    fn empty_is_ready_on_first_poll() {
        let w = CountingWaker::new();
        assert_eq!(poll_once(&mut gather!(), &w), Poll::Ready(()));
        assert_eq!(poll_once(&mut try_gather!(), &w), Poll::Ready(Ok(())));
        assert_eq!(w.wakes(), 0);
    }

    fn exact_polls_in_reverse_and_random_order() {
        for (name, order) in [("reverse", (0..16).rev().collect::<Vec<_>>()), ("random", shuffled(16, 3)), ("random2", shuffled(16, 4))] {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let (handles, counters, [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15]) = sixteen(&tracker);
            let mut g = gather!(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15);
            assert!(poll_once(&mut g, &w).is_pending());
            assert_eq!(total(&counters), 16);
            for (k, &i) in order.iter().enumerate() {
                let wakes = w.wakes();
                assert!(handles[i].complete());
                assert!(w.wakes() > wakes, "{name}: the child's wake must wake the parent");
                let r = poll_once(&mut g, &w);
                assert_eq!(counters[i].get(), 2, "{name}: child {i}");
                assert_eq!(total(&counters), 17 + k, "{name}: only the woken child is polled");
                if k < 15 {
                    assert!(r.is_pending());
                } else {
                    let Poll::Ready(out) = r else { panic!("{name}: not ready after the last wake") };
                    assert_eq!(fields!(out; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
                }
            }
            assert_eq!(tracker.live(), 0);
            drop(g);
            assert_eq!(w.live_clones(), 0, "parent waker leaked");
        }
    }

    fn try_gather_fail_fast_error_returned_in_same_poll_with_everything_dropped() {
        for fail in [0, 7, 15] {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let mk = |i: usize| parked(if i == fail { Err(i) } else { Ok(tracker.token()) }, &polls, &tracker);
            let (handles, [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15]): (Vec<_>, [_; 16]) = {
                let (h, c): (Vec<_>, Vec<_>) = (0..16).map(mk).unzip();
                (h, c.try_into().unwrap_or_else(|_| unreachable!()))
            };
            let mut g = try_gather!(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15);
            assert!(poll_once(&mut g, &w).is_pending());
            for i in [3, 9, 12].into_iter().filter(|&i| i != fail) {
                handles[i].complete();
                assert!(poll_once(&mut g, &w).is_pending());
            }
            handles[fail].complete();
            let r = poll_once(&mut g, &w);
            let live = tracker.live();
            assert!(matches!(r, Poll::Ready(Err(i)) if i == fail), "fail = {fail}");
            assert_eq!(live, 0, "fail = {fail}: children or `Ok` outputs alive when the Err was returned");
            assert!(handles.iter().all(|h| !h.has_waker()));
        }
    }

    fn one_poll_polls_each_self_waking_child_at_most_once() {
        let w = CountingWaker::new();
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<Counter> = (0..12).map(|_| Counter::new()).collect();
        let s = |i: usize| Spinner::new(&stop, &counters[i]);
        let mut g = gather!(s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7), s(8), s(9), s(10), s(11));
        for round in 1..=4 {
            let wakes = w.wakes();
            assert!(poll_once(&mut g, &w).is_pending());
            assert!(counters.iter().all(|c| c.get() == round), "round {round}");
            assert!(w.wakes() > wakes, "Pending without waking itself");
        }
        stop.store(true, Ordering::SeqCst);
        assert!(poll_once(&mut g, &w).is_ready());
    }

    fn stale_waker_of_finished_child_polls_nobody() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let stash = WakerStash::default();
        let polls = Counter::new();
        let (h1, p1) = parked('a', &polls, &tracker);
        let (h2, p2) = parked('b', &polls, &tracker);
        let mut g = gather!(p1, Stasher::new(&stash, 0u8), p2);
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(polls.get(), 2);
        stash.wake_all_by_ref();
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(polls.get(), 2, "a stale waker polled a child");
        h1.complete();
        h2.complete();
        assert_eq!(poll_once(&mut g, &w), Poll::Ready(('a', 0, 'b')));
        assert_eq!(polls.get(), 4);
    }

    fn cancel_after_every_poll_drops_every_child() {
        for k in 0..=7 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let (h, p) = parked(0u8, &polls, &tracker);
            let y = |n: usize| YieldN::tracked(n, n, &polls, &tracker);
            let mut g = gather!(p, y(0), y(1), y(2), y(3), y(4), y(5), y(6), async { 'x' });
            for i in 0..k {
                if i == 3 {
                    h.complete();
                }
                if poll_once(&mut g, &w).is_ready() {
                    break;
                }
            }
            drop(g);
            assert_eq!(tracker.live(), 0, "k = {k}");
            assert_eq!(w.live_clones(), 0, "k = {k}: parent waker leaked");
        }
        for k in 0..=3 {
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let polls = Counter::new();
            let y = |n: usize| YieldN::tracked(n, Ok::<_, ()>(n), &polls, &tracker);
            let mut g = try_gather!(y(0), y(1), y(2), async { Ok('x') });
            for _ in 0..k {
                let _ = poll_once(&mut g, &w);
            }
            drop(g);
            assert_eq!(tracker.live(), 0, "try k = {k}");
        }
    }

    fn panic_propagates_out_of_poll_manual() {
        let tracker = Tracker::new();
        let w = CountingWaker::new();
        let polls = Counter::new();
        let boom: BoxFuture<'static, usize> = panic_after(0, "first poll boom", tracker.token()).boxed();
        let mut g = try_gather!(YieldN::tracked(2, Ok::<_, ()>(1), &polls, &tracker), boom.map(Ok));
        let err = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))).expect_err("panic propagates");
        assert_eq!(panic_message(&*err), "first poll boom");
        drop(g);
        assert_eq!(tracker.live(), 0);
    }

    fn pinned_children_never_move() {
        let w = CountingWaker::new();
        let polls = Counter::new();
        let mut g = gather!(
            NoMove::new(YieldN::new(20, 'a', &polls)),
            NoMove::new(YieldN::new(3, 1u8, &polls)),
            NoMove::new(YieldN::new(50, "c", &polls)),
        );
        let mut n = 0;
        let out = loop {
            n += 1;
            if let Poll::Ready(out) = poll_once(&mut g, &w) {
                break out;
            }
        };
        assert_eq!(out, (('a', 21), (1, 4), ("c", 51)));
        assert_eq!(n, 51);
    }
}

// ---------------------------------------------------------------------------
// Wakers that stay borrowed and wakers that escape (a clone outlives the
// child's poll): `gather!` registers the parent's waker only once a clone
// exists, and sees the wakes of borrowed wakers itself.
// ---------------------------------------------------------------------------

/// Returns `Pending` `left` times; each time, a scoped thread wakes it during
/// its own poll: through the borrowed `&Waker` (`by_value == false`) or
/// through a clone woken by value (dropped before the poll returns).
struct ScopedWake {
    left: usize,
    by_value: bool,
    polls: Counter,
}

impl ScopedWake {
    fn new(left: usize, by_value: bool, polls: &Counter) -> Self {
        Self {
            left,
            by_value,
            polls: polls.clone(),
        }
    }
}

impl std::future::Future for ScopedWake {
    type Output = usize;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
        self.polls.inc();
        if self.left == 0 {
            return Poll::Ready(7);
        }
        self.left -= 1;
        let waker = cx.waker();
        let by_value = self.by_value;
        std::thread::scope(|s| {
            s.spawn(move || {
                if by_value {
                    // On purpose: a clone that comes and goes within the poll.
                    #[allow(clippy::waker_clone_wake)]
                    waker.clone().wake();
                } else {
                    waker.wake_by_ref();
                }
            });
        });
        Poll::Pending
    }
}

/// Wakes itself through the borrowed waker `quiet` times, then hands a clone
/// to a new thread that wakes it (the first clone in a later pass), then
/// finishes.
struct LateEscape {
    quiet: usize,
    escaped: bool,
    polls: Counter,
}

impl LateEscape {
    fn new(quiet: usize, polls: &Counter) -> Self {
        Self {
            quiet,
            escaped: false,
            polls: polls.clone(),
        }
    }
}

impl std::future::Future for LateEscape {
    type Output = char;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<char> {
        self.polls.inc();
        if self.quiet > 0 {
            self.quiet -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.escaped {
            return Poll::Ready('e');
        }
        self.escaped = true;
        let waker = cx.waker().clone();
        std::thread::spawn(move || waker.wake());
        Poll::Pending
    }
}

/// Clones its waker into `stash` (it outlives the child), then panics.
struct CloneThenPanic {
    stash: Arc<std::sync::Mutex<Vec<std::task::Waker>>>,
    _token: Token,
}

impl std::future::Future for CloneThenPanic {
    type Output = u8;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<u8> {
        self.stash.lock().unwrap().push(cx.waker().clone());
        panic!("clone then panic");
    }
}

matrix! {
    async fn scoped_threads_wake_children_during_their_own_poll() {
        let polls = [Counter::new(), Counter::new(), Counter::new()];
        let out = gather!(
            ScopedWake::new(3, false, &polls[0]),
            ScopedWake::new(4, true, &polls[1]),
            YieldN::new(2, 'y', &polls[2]),
        )
        .await;
        assert_eq!(out, (7, 7, 'y'));
        assert_eq!(polls.iter().map(Counter::get).collect::<Vec<_>>(), [4, 5, 3], "wakes + 1 polls each");
        let r = try_gather!(ScopedWake::new(2, true, &polls[0]).map(Ok::<_, ()>), async { Ok('t') }).await;
        assert_eq!(r, Ok((7, 't')));
    }

    async fn cloning_and_non_cloning_children_together() {
        let thread = WakerThread::spawn();
        let polls = [Counter::new(), Counter::new(), Counter::new(), Counter::new()];
        for _ in 0..20 {
            let out = gather!(
                YieldN::new(3, 1u8, &polls[0]),
                RemoteYield::new(3, 'r', &thread, &polls[1]),
                LateEscape::new(2, &polls[2]),
                ScopedWake::new(2, false, &polls[3]),
            )
            .await;
            assert_eq!(out, (1, 'r', 'e', 7));
        }
        assert_eq!(polls.iter().map(Counter::get).collect::<Vec<_>>(), [80, 80, 80, 60], "wakes + 1 polls each");
    }

    async fn first_clone_in_a_later_pass_still_wakes_the_task() {
        // Only one child: nothing else wakes the task when the clone fires.
        let polls = Counter::new();
        for quiet in 0..4 {
            assert_eq!(gather!(LateEscape::new(quiet, &polls)).await, ('e',));
            let r = try_gather!(LateEscape::new(quiet, &polls).map(Ok::<_, ()>), async { Ok(1) }).await;
            assert_eq!(r, Ok(('e', 1)));
        }
    }
}

guarded! {
    fn children_that_never_clone_never_clone_the_parent_waker() {
        let w = CountingWaker::new();
        let polls = Counter::new();
        let mut g = gather!(YieldN::new(2, 'a', &polls), YieldN::new(4, 'b', &polls), ScopedWake::new(1, false, &polls));
        let mut n = 0;
        let out = loop {
            n += 1;
            if let Poll::Ready(out) = poll_once(&mut g, &w) {
                break out;
            }
            assert_eq!(w.wakes(), n, "every Pending pass wakes the task once");
        };
        assert_eq!(out, ('a', 'b', 7));
        assert_eq!(n, 5);
        assert_eq!(polls.get(), 3 + 5 + 2);
        assert_eq!(w.clones(), 0, "no child waker escaped: the parent's need not be kept");
    }

    fn the_first_clone_registers_the_parent_waker() {
        let w = CountingWaker::new();
        let stash = Arc::new(std::sync::Mutex::new(Vec::<std::task::Waker>::new()));
        let polls = Counter::new();
        let tracker = Tracker::new();
        let (h, p) = parked(5u8, &polls, &tracker);
        let mut g = gather!(YieldN::new(1, 'a', &polls), p);
        // The parked child clones its waker: registered in this very pass.
        assert!(poll_once(&mut g, &w).is_pending());
        assert_eq!(w.live_clones(), 1);
        assert_eq!(w.wakes(), 1, "the yield child's self-wake");
        assert!(poll_once(&mut g, &w).is_pending());
        let clone = h.waker().expect("parked");
        stash.lock().unwrap().push(clone);
        let wakes = w.wakes();
        h.complete();
        assert_eq!(w.wakes(), wakes + 1, "a clone's wake reaches the task");
        assert_eq!(poll_once(&mut g, &w), Poll::Ready(('a', 5)));
        // A stale clone woken after completion does not wake the task.
        let wakes = w.wakes();
        for waker in stash.lock().unwrap().iter() {
            waker.wake_by_ref();
        }
        assert_eq!(w.wakes(), wakes);
        drop(g);
        assert_eq!(w.live_clones(), 0, "parent waker kept after the gather was dropped");
        stash.lock().unwrap().clear();
        assert_eq!(tracker.live(), 0);
    }

    fn a_new_task_waker_is_registered_once_a_clone_exists() {
        let w1 = CountingWaker::new();
        let w2 = CountingWaker::new();
        let polls = Counter::new();
        let tracker = Tracker::new();
        let (h, p) = parked(1u8, &polls, &tracker);
        let mut g = gather!(p, YieldN::new(1, 2u8, &polls));
        assert!(poll_once(&mut g, &w1).is_pending());
        // Moved to another task: a pass with no woken child registers it.
        assert!(poll_once(&mut g, &w2).is_pending());
        assert!(poll_once(&mut g, &w2).is_pending());
        h.complete();
        assert_eq!(w2.wakes(), 1, "woken through the new task's waker");
        assert_eq!(w1.wakes(), 1, "only the yield child's self-wake");
        assert_eq!(poll_once(&mut g, &w2), Poll::Ready((1, 2)));
        drop(g);
        assert_eq!(w1.live_clones() + w2.live_clones(), 0);
    }

    fn clone_then_panic_then_the_clone_is_woken_and_dropped_later() {
        for by_value in [false, true] {
            let w = CountingWaker::new();
            let tracker = Tracker::new();
            let polls = Counter::new();
            let stash = Arc::new(std::sync::Mutex::new(Vec::<std::task::Waker>::new()));
            let (h, p) = parked('p', &polls, &tracker);
            let boom = CloneThenPanic { stash: stash.clone(), _token: tracker.token() };
            let mut g = gather!(p, boom, YieldN::tracked(3, 0u8, &polls, &tracker));
            let err = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut g, &w))).expect_err("panic propagates");
            assert_eq!(panic_message(&*err), "clone then panic");
            drop(g);
            assert_eq!(tracker.live(), 0, "every child dropped once");
            assert!(!h.has_waker());
            assert_eq!(w.live_clones(), 0);
            // The block outlives the gather while the clone lives.
            let clones: Vec<_> = std::mem::take(&mut *stash.lock().unwrap());
            assert_eq!(clones.len(), 1);
            for waker in clones {
                waker.wake_by_ref();
                let again = waker.clone();
                if by_value {
                    std::thread::spawn(move || again.wake()).join().unwrap();
                    waker.wake();
                } else {
                    drop(again);
                    drop(waker);
                }
            }
            assert_eq!(w.wakes(), 0, "no wake after the gather is gone");
        }
    }

    fn drop_while_clones_live_then_they_are_woken_elsewhere() {
        for round in 0..50 {
            let w = CountingWaker::new();
            let tracker = Tracker::new();
            let polls = Counter::new();
            let stash = WakerStash::default();
            let (h, p) = parked(0u8, &polls, &tracker);
            let mut g = gather!(p, Stasher::new(&stash, 1u8), YieldN::tracked(2, 2u8, &polls, &tracker));
            assert!(poll_once(&mut g, &w).is_pending());
            let clone = h.waker().expect("parked");
            let waker_thread = std::thread::spawn(move || {
                for _ in 0..(round % 7) {
                    clone.wake_by_ref();
                    std::thread::yield_now();
                }
                clone.wake();
            });
            drop(g);
            assert_eq!(tracker.live(), 0);
            assert_eq!(w.live_clones(), 0, "parent waker kept after the gather was dropped");
            waker_thread.join().unwrap();
            stash.wake_all_by_ref();
            stash.clear();
        }
    }
}
