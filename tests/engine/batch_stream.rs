//! Batches that compose like streams: `process_batch_stream` (a `Stream` as
//! the input, pulled lazily) and `.ordered()` / `.unordered()` (the outputs
//! as a stream), with the batch's limit, rate limit, progress and fail-fast,
//! the engine's polling rules and cancellation by drop at any point. Every
//! test body runs on all four executors of `matrix!`.

use crate::common;

use awaitkit::{BatchOrdered, BatchUnordered, Progress, process_batch, process_batch_stream};
use common::{
    Counter, CountingWaker, Gauge, Handles, RemoteYield, Token, Tracker, WakerThread, YieldN,
    parked_children, poll_next_once, poll_once, shuffled,
};
use futures::{Stream, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A stream the test feeds by hand (or from another thread): `Pending`
/// while empty and open. Counts the items it handed out and the polls it
/// got after it returned `None`; holds a token while alive.
#[derive(Clone, Debug, Default)]
struct Feed(Arc<Mutex<FeedState>>);

#[derive(Debug, Default)]
struct FeedState {
    items: VecDeque<usize>,
    closed: bool,
    ended: bool,
    waker: Option<Waker>,
    pulled: usize,
    polls_after_end: usize,
    /// After `None`, yield this (a misbehaving stream).
    zombie: Option<usize>,
    /// Panic in the poll that would hand out this item.
    panic_at: Option<usize>,
}

impl Feed {
    fn push(&self, item: usize) {
        let waker = {
            let mut s = self.0.lock().unwrap();
            s.items.push_back(item);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
    fn extend(&self, items: impl IntoIterator<Item = usize>) {
        for i in items {
            self.push(i);
        }
    }
    fn close(&self) {
        let waker = {
            let mut s = self.0.lock().unwrap();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
    fn pulled(&self) -> usize {
        self.0.lock().unwrap().pulled
    }
    fn polls_after_end(&self) -> usize {
        self.0.lock().unwrap().polls_after_end
    }
    fn stream(&self, tracker: &Tracker) -> FeedStream {
        FeedStream {
            feed: self.clone(),
            _token: tracker.token(),
        }
    }
}

#[derive(Debug)]
struct FeedStream {
    feed: Feed,
    _token: Token,
}

impl Stream for FeedStream {
    type Item = usize;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<usize>> {
        let mut s = self.feed.0.lock().unwrap();
        if s.ended {
            s.polls_after_end += 1;
            return Poll::Ready(s.zombie.take());
        }
        if let Some(&item) = s.items.front() {
            if s.panic_at == Some(item) {
                drop(s);
                panic!("stream failed at {item}");
            }
            s.items.pop_front();
            s.pulled += 1;
            return Poll::Ready(Some(item));
        }
        if s.closed {
            s.ended = true;
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A stream over `0..n` that counts its pulls (exact size hint).
fn counted(n: usize, pulls: &Counter) -> impl Stream<Item = usize> + Send + Unpin + use<> {
    let pulls = pulls.clone();
    futures::stream::iter(0..n).inspect(move |_| pulls.inc())
}

/// Polls a stream to its end on a manual clock, moving the clock to its
/// next deadline whenever the stream is pending.
#[cfg(feature = "test-util")]
fn drain_on_clock<S: Stream + Unpin>(
    stream: &mut S,
    clock: &awaitkit::time::ManualClock,
) -> Vec<S::Item> {
    let waker = CountingWaker::new();
    let mut out = Vec::new();
    loop {
        match poll_next_once(stream, &waker) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) => return out,
            Poll::Pending => {
                if let Some(at) = clock.next_deadline() {
                    clock.advance_to(at);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Order, limit, laziness
// ---------------------------------------------------------------------------

matrix! {
    /// Later items finish first: `ordered` still yields them in input
    /// order, `unordered` yields each with its input index, and the
    /// future collects in input order, from a stream input.
    async fn ordered_keeps_input_order_and_unordered_keeps_indices() {
        let n = 60;
        let child = move |i: usize| YieldN::new(n - i, i * 3, &Counter::new());
        let out: Vec<usize> = process_batch_stream(futures::stream::iter(0..n), 7, child).ordered().collect().await;
        assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>());

        let out: Vec<(usize, usize)> = process_batch_stream(futures::stream::iter(0..n), 7, child).unordered().collect().await;
        assert!(out.iter().all(|&(i, v)| v == i * 3), "each output with its own index");
        let indices: BTreeSet<usize> = out.iter().map(|&(i, _)| i).collect();
        assert_eq!(indices.len(), n, "each index once");
        assert_ne!(out.iter().map(|&(i, _)| i).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "completion order, not input order");

        let out = process_batch_stream(futures::stream::iter(0..n), 7, child).await;
        assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>());
    }

    /// Never more than `limit` children alive, and exactly `limit` at the
    /// peak, for both stream outputs, with children woken from another
    /// thread.
    async fn the_limit_is_never_exceeded_and_is_reached() {
        let thread = WakerThread::spawn();
        for limit in [1, 2, 3, 8, 64] {
            for ordered in [true, false] {
                let gauge = Gauge::default();
                let (g, t) = (gauge.clone(), thread.clone());
                let f = move |i: usize| {
                    let alive = g.enter();
                    let (polls, t) = (Counter::new(), t.clone());
                    async move {
                        let v = RemoteYield::new(i % 4 + 1, i, &t, &polls).await;
                        drop(alive);
                        v
                    }
                };
                let batch = process_batch_stream(futures::stream::iter(0..200), limit, f);
                let mut out: Vec<usize> = if ordered {
                    batch.ordered().collect().await
                } else {
                    batch.unordered().map(|(i, v)| { assert_eq!(i, v); v }).collect().await
                };
                if !ordered {
                    out.sort_unstable();
                }
                assert_eq!(out, (0..200).collect::<Vec<_>>());
                assert_eq!(gauge.max(), limit, "limit {limit}, ordered {ordered}: most alive at once");
                assert_eq!(gauge.now(), 0);
            }
        }
    }

    /// Limit 1 runs the items one after the other, in input order.
    async fn limit_one_is_sequential() {
        let gauge = Gauge::default();
        let g = gauge.clone();
        let out: Vec<(usize, usize)> = process_batch_stream(futures::stream::iter(0..20), 1, move |i| {
            let alive = g.enter();
            async move {
                YieldN::new(20 - i, (), &Counter::new()).await;
                drop(alive);
                i
            }
        })
        .unordered()
        .collect()
        .await;
        assert_eq!(out, (0..20).map(|i| (i, i)).collect::<Vec<_>>());
        assert_eq!(gauge.max(), 1);
    }

    /// `usize::MAX` means no limit: every item starts on the first poll.
    async fn a_huge_limit_starts_everything_at_once() {
        let gauge = Gauge::default();
        let g = gauge.clone();
        let out: Vec<usize> = process_batch_stream(futures::stream::iter(0..50), usize::MAX, move |i| {
            let alive = g.enter();
            async move {
                YieldN::new(1, (), &Counter::new()).await;
                drop(alive);
                i
            }
        })
        .ordered()
        .collect()
        .await;
        assert_eq!(out, (0..50).collect::<Vec<_>>());
        assert_eq!(gauge.max(), 50);
    }

    /// An empty stream: every form is done on its first poll and `f` is
    /// never called; the streams stay done (`FusedStream`).
    async fn an_empty_stream_is_done_at_once() {
        use futures::stream::FusedStream;
        let calls = Counter::new();
        let f = |c: Counter| move |i: u8| { c.inc(); async move { i } };
        let waker = CountingWaker::new();
        let mut s = process_batch_stream(futures::stream::empty(), 4, f(calls.clone())).ordered();
        assert!(!s.is_terminated());
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
        assert!(s.is_terminated());
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None), "fused");
        let mut s = process_batch_stream(futures::stream::empty(), 4, f(calls.clone())).unordered();
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None), "fused");
        let mut b = process_batch_stream(futures::stream::empty(), 4, f(calls.clone()));
        assert_eq!(poll_once(&mut b, &waker), Poll::Ready(vec![]));
        let mut s = process_batch(Vec::<u8>::new(), 4, f(calls.clone())).unordered();
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
        assert_eq!(calls.get(), 0);
    }

    /// Items are pulled only when a child may start: with parked children,
    /// after every poll the stream has handed out exactly as many items as
    /// have started (no item waits pulled), for both outputs.
    async fn items_are_pulled_lazily() {
        for ordered in [true, false] {
            let (handles, polls, tracker, pulls) = (Handles::default(), Counter::new(), Tracker::new(), Counter::new());
            let batch = process_batch_stream(counted(10, &pulls), 3, parked_children(&handles, &polls, &tracker));
            let waker = CountingWaker::new();
            let mut got = Vec::new();
            let mut s: Box<dyn Stream<Item = usize> + Send + Unpin> = if ordered {
                Box::new(batch.ordered())
            } else {
                Box::new(batch.unordered().map(|(i, v)| { assert_eq!(i, v); v }))
            };
            assert_eq!(pulls.get(), 0, "nothing is pulled before the first poll");
            assert!(poll_next_once(&mut s, &waker).is_pending());
            assert_eq!((pulls.get(), handles.len(), tracker.live()), (3, 3, 3));
            // Finish in reverse order of start, one per round.
            for round in 0..100 {
                let live: Vec<usize> = (0..handles.len()).filter(|&i| handles.get(i).has_waker()).collect();
                if let Some(&last) = live.last() {
                    handles.get(last).complete();
                }
                loop {
                    match poll_next_once(&mut s, &waker) {
                        Poll::Ready(Some(v)) => got.push(v),
                        Poll::Ready(None) => break,
                        Poll::Pending => break,
                    }
                    assert_eq!(pulls.get(), handles.len(), "round {round}: pulled = started");
                }
                assert_eq!(pulls.get(), handles.len(), "round {round}: pulled = started");
                assert!(tracker.live() <= 3);
                if got.len() == 10 {
                    break;
                }
            }
            if !ordered {
                got.sort_unstable();
            }
            assert_eq!(got, (0..10).collect::<Vec<_>>());
            assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
            assert_eq!((pulls.get(), tracker.live()), (10, 0));
        }
    }

    /// `ordered` counts outputs waiting for an earlier item against the
    /// window (like `buffered`): with the head item stuck, exactly `limit`
    /// items are started, however many of the others finished.
    /// Progress reports (which pull ahead to learn an unknown total) do not
    /// pull an item the window has no room for.
    async fn ordered_holds_at_most_limit_outputs() {
        for progress in [false, true] {
            let (handles, polls, tracker, pulls) = (Handles::default(), Counter::new(), Tracker::new(), Counter::new());
            let reports = Counter::new();
            let r = reports.clone();
            // No exact size: the total is unknown, so reports try to learn it.
            let items = counted(100, &pulls).filter(|_| std::future::ready(true));
            let batch = process_batch_stream(items, 4, parked_children(&handles, &polls, &tracker));
            let mut s: Box<dyn Stream<Item = usize> + Send + Unpin> = if progress {
                Box::new(batch.on_progress(move |_| r.inc()).ordered())
            } else {
                Box::new(batch.ordered())
            };
            let waker = CountingWaker::new();
            assert!(poll_next_once(&mut s, &waker).is_pending());
            for i in 1..4 {
                handles.get(i).complete();
            }
            assert!(poll_next_once(&mut s, &waker).is_pending());
            assert!(poll_next_once(&mut s, &waker).is_pending());
            assert_eq!((handles.len(), pulls.get(), tracker.live()), (4, 4, 1), "progress {progress}");
            // The head finishes: it and the three waiting behind it come out,
            // one per `next`, and four new items start.
            handles.get(0).complete();
            for i in 0..4 {
                assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(Some(i)));
            }
            assert_eq!((handles.len(), pulls.get()), (8, 8));
            drop(s);
            assert_eq!(tracker.live(), 0);
            assert_eq!(reports.get(), if progress { 4 } else { 0 });
        }
    }

    /// Unordered: children completed one at a time in a shuffled order are
    /// each yielded by the next `next`, with their own index.
    async fn unordered_yields_in_completion_order_with_indices() {
        let (handles, polls, tracker) = (Handles::default(), Counter::new(), Tracker::new());
        let n = 40;
        let mut s = process_batch(0..n, n, parked_children(&handles, &polls, &tracker)).unordered();
        let waker = CountingWaker::new();
        assert!(poll_next_once(&mut s, &waker).is_pending());
        for (k, i) in shuffled(n, 7).into_iter().enumerate() {
            handles.get(i).complete();
            assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(Some((i, i))), "completion {k}");
            assert!(poll_next_once(&mut s, &waker).is_pending() || k + 1 == n);
        }
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
        assert_eq!(tracker.live(), 0);
    }
}

// ---------------------------------------------------------------------------
// The engine's rules: polls = wakes + N, one poll per child per poll
// ---------------------------------------------------------------------------

matrix! {
    /// Polls per child = wakes + 1, children woken in a shuffled order
    /// (every third spuriously), for both outputs, from a stream input.
    async fn polls_are_wakes_plus_n() {
        for ordered in [true, false] {
            let (handles, polls, tracker) = (Handles::default(), Counter::new(), Tracker::new());
            let n = 50;
            let batch = process_batch_stream(futures::stream::iter(0..n), 8, parked_children(&handles, &polls, &tracker));
            let mut s: Box<dyn Stream<Item = usize> + Send + Unpin> = if ordered {
                Box::new(batch.ordered())
            } else {
                Box::new(batch.unordered().map(|(_, v)| v))
            };
            let waker = CountingWaker::new();
            let mut wakes = 0;
            let mut got = Vec::new();
            for round in 0..10_000u64 {
                match poll_next_once(&mut s, &waker) {
                    Poll::Ready(Some(v)) => { got.push(v); continue; }
                    Poll::Ready(None) => break,
                    Poll::Pending => {}
                }
                let live: Vec<usize> = (0..handles.len()).filter(|&i| handles.get(i).has_waker()).collect();
                for (k, &j) in shuffled(live.len(), round).iter().enumerate() {
                    let h = handles.get(live[j]);
                    if (k + round as usize) % 3 == 0 {
                        assert!(h.wake());
                    } else {
                        assert!(h.complete());
                    }
                    wakes += 1;
                }
            }
            if !ordered {
                got.sort_unstable();
            }
            assert_eq!(got, (0..n).collect::<Vec<_>>());
            assert_eq!(polls.get(), wakes + n, "ordered {ordered}: polls = wakes + N");
            assert_eq!(tracker.live(), 0);
        }
    }

    /// One `next` polls each child at most once; children that keep waking
    /// themselves make the stream return `Pending` after waking its task.
    async fn one_poll_polls_each_child_at_most_once() {
        for ordered in [true, false] {
            let counters: Vec<Counter> = (0..6).map(|_| Counter::new()).collect();
            let c = counters.clone();
            let batch = process_batch_stream(futures::stream::iter(0..6), 3, move |i| YieldN::new(3, i, &c[i]));
            let mut s: Box<dyn Stream<Item = usize> + Send + Unpin> = if ordered {
                Box::new(batch.ordered())
            } else {
                Box::new(batch.unordered().map(|(_, v)| v))
            };
            let waker = CountingWaker::new();
            let mut got = Vec::new();
            loop {
                let before: Vec<usize> = counters.iter().map(Counter::get).collect();
                let wakes = waker.wakes();
                let out = poll_next_once(&mut s, &waker);
                for (i, c) in counters.iter().enumerate() {
                    assert!(c.get() - before[i] <= 1, "child {i} polled twice in one poll");
                }
                match out {
                    Poll::Ready(Some(v)) => got.push(v),
                    Poll::Ready(None) => break,
                    Poll::Pending => assert!(waker.wakes() > wakes, "a pending stream with self-waking children woke its task"),
                }
            }
            got.sort_unstable();
            assert_eq!(got, [0, 1, 2, 3, 4, 5]);
            assert_eq!(common::total(&counters), 6 * 4, "polls = wakes + N");
        }
    }
}

// ---------------------------------------------------------------------------
// Cancellation: drop after every poll
// ---------------------------------------------------------------------------

/// Children that yield a varying number of times, record their completion,
/// hold a token, and count in a gauge.
fn recording_children(
    tracker: &Tracker,
    gauge: &Gauge,
    finished: &Arc<Mutex<Vec<usize>>>,
) -> impl FnMut(usize) -> futures::future::BoxFuture<'static, usize> + Send + use<> {
    let (tracker, gauge, finished) = (tracker.clone(), gauge.clone(), finished.clone());
    move |i| {
        let (token, alive, finished) = (tracker.token(), gauge.enter(), finished.clone());
        Box::pin(async move {
            YieldN::new((i * 7) % 5, (), &Counter::new()).await;
            finished.lock().unwrap().push(i);
            drop((token, alive));
            i
        })
    }
}

matrix! {
    /// Dropping after poll k, for every k: every child and the source are
    /// dropped exactly once (a double drop fails the tracker), nothing is
    /// left alive, no output comes out twice, `ordered` yields a prefix of
    /// the input, and `unordered` loses no output (every child that
    /// finished was yielded, by the very poll that saw it finish).
    async fn drop_after_every_poll_drops_everything_once() {
        for ordered in [true, false] {
            for stop in 0..40 {
                let (tracker, gauge) = (Tracker::new(), Gauge::default());
                let finished = Arc::new(Mutex::new(Vec::new()));
                let feed = Feed::default();
                feed.extend(0..30);
                feed.close();
                let batch = process_batch_stream(feed.stream(&tracker), 4, recording_children(&tracker, &gauge, &finished));
                let waker = CountingWaker::new();
                let mut got = Vec::new();
                let mut ended = false;
                if ordered {
                    let mut s = batch.ordered();
                    for _ in 0..stop {
                        match poll_next_once(&mut s, &waker) {
                            Poll::Ready(Some(v)) => got.push(v),
                            Poll::Ready(None) => { ended = true; break; }
                            Poll::Pending => {}
                        }
                    }
                    drop(s);
                    assert_eq!(got, (0..got.len()).collect::<Vec<_>>(), "stop {stop}: a prefix, in order");
                } else {
                    let mut s = batch.unordered();
                    for _ in 0..stop {
                        match poll_next_once(&mut s, &waker) {
                            Poll::Ready(Some((i, v))) => { assert_eq!(i, v); got.push(v) }
                            Poll::Ready(None) => { ended = true; break; }
                            Poll::Pending => {}
                        }
                    }
                    drop(s);
                    let mut f = finished.lock().unwrap().clone();
                    f.sort_unstable();
                    let mut g = got.clone();
                    g.sort_unstable();
                    assert_eq!(g, f, "stop {stop}: every finished child was yielded, once");
                }
                let unique: BTreeSet<usize> = got.iter().copied().collect();
                assert_eq!(unique.len(), got.len(), "stop {stop}: no output twice");
                assert_eq!((tracker.live(), gauge.now()), (0, 0), "stop {stop}: everything dropped");
                assert!(gauge.max() <= 4);
                if ended {
                    assert_eq!(got.len(), 30);
                }
            }
        }
    }

    /// Dropping while the source stream is pending (mid-pull) with children
    /// in flight drops the stream and every child once.
    async fn drop_while_the_stream_is_pending() {
        let (tracker, polls, handles) = (Tracker::new(), Counter::new(), Handles::default());
        let feed = Feed::default();
        feed.extend(0..2);
        let mut s = process_batch_stream(feed.stream(&tracker), 4, parked_children(&handles, &polls, &tracker)).unordered();
        let waker = CountingWaker::new();
        assert!(poll_next_once(&mut s, &waker).is_pending());
        assert_eq!((handles.len(), tracker.live()), (2, 3), "two children and the stream");
        drop(s);
        assert_eq!(tracker.live(), 0);
        assert_eq!(feed.pulled(), 2);
    }
}

// ---------------------------------------------------------------------------
// A source that is pending between items, misbehaves or panics
// ---------------------------------------------------------------------------

matrix! {
    /// Items arrive from another thread, with `Pending` in between: the
    /// stream's wake reaches the batch, and finished children are reported
    /// while the source has nothing (the source is never polled after its
    /// `None`, and children woken after it ended still finish).
    async fn a_stream_fed_from_another_thread() {
        let tracker = Tracker::new();
        let feed = Feed::default();
        let thread = WakerThread::spawn();
        let f2 = feed.clone();
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let producer = std::thread::spawn(move || {
            // Feed the next item once the previous one came out.
            for i in 0..20 {
                f2.push(i);
                if i % 5 == 4 {
                    let _ = rx.recv_timeout(Duration::from_secs(20));
                }
            }
            f2.close();
        });
        let t = thread.clone();
        let mut s = process_batch_stream(feed.stream(&tracker), 3, move |i| {
            RemoteYield::new(i % 3 + 1, i, &t, &Counter::new())
        })
        .ordered();
        let mut got = Vec::new();
        while let Some(v) = s.next().await {
            got.push(v);
            let _ = tx.send(v);
        }
        producer.join().unwrap();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert_eq!(feed.polls_after_end(), 0, "never polled after `None`");
        drop(s);
        assert_eq!(tracker.live(), 0);
    }

    /// A child finishes while the source is pending: it is reported at
    /// once, not held back until the next item arrives.
    async fn a_pending_source_does_not_hold_back_outputs() {
        let (tracker, polls, handles) = (Tracker::new(), Counter::new(), Handles::default());
        let feed = Feed::default();
        feed.push(0);
        let mut s = process_batch_stream(feed.stream(&tracker), 4, parked_children(&handles, &polls, &tracker)).unordered();
        let waker = CountingWaker::new();
        assert!(poll_next_once(&mut s, &waker).is_pending());
        let wakes = waker.wakes();
        handles.get(0).complete();
        assert!(waker.wakes() > wakes, "the child's wake reached the task");
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(Some((0, 0))));
        assert!(poll_next_once(&mut s, &waker).is_pending(), "the source has nothing yet");
        let wakes = waker.wakes();
        feed.push(1);
        assert!(waker.wakes() > wakes, "the stream's wake reached the task");
        assert!(poll_next_once(&mut s, &waker).is_pending());
        assert_eq!(handles.len(), 2);
        feed.close();
        handles.get(1).complete();
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(Some((1, 1))));
        assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
        assert_eq!(tracker.live(), 0);
    }

    /// A stream that yields again after `None` is never asked: the batch
    /// ends with what came before.
    async fn a_stream_that_yields_after_none_is_not_polled_again() {
        let tracker = Tracker::new();
        let feed = Feed::default();
        feed.extend(0..3);
        feed.close();
        feed.0.lock().unwrap().zombie = Some(99);
        let out = process_batch_stream(feed.stream(&tracker), 2, |i| YieldN::new(i, i, &Counter::new()))
            .on_progress(|_| {})
            .await;
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(feed.polls_after_end(), 0);
    }

    /// A stream that panics in `poll_next`: the panic propagates, the
    /// batch refuses further polls, and dropping it drops every child and
    /// the stream once.
    async fn a_stream_that_panics_in_poll_next() {
        let (tracker, polls, handles) = (Tracker::new(), Counter::new(), Handles::default());
        let feed = Feed::default();
        feed.extend(0..10);
        feed.0.lock().unwrap().panic_at = Some(3);
        let mut s = process_batch_stream(feed.stream(&tracker), 8, parked_children(&handles, &polls, &tracker)).ordered();
        let waker = CountingWaker::new();
        let err = catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut s, &waker))).unwrap_err();
        assert_eq!(common::panic_message(&*err), "stream failed at 3");
        assert_eq!(handles.len(), 3);
        let again = catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut s, &waker))).unwrap_err();
        assert!(common::panic_message(&*again).contains("polled after a panic"), "{}", common::panic_message(&*again));
        // Not terminated, as the batch future after a panic: polling panics.
        assert!(!futures::stream::FusedStream::is_terminated(&s));
        drop(s);
        assert_eq!(tracker.live(), 0);
    }

    /// A child that panics (SPEC §1.13): the panic propagates out of
    /// `next`, the stream refuses further polls, dropping it drops every
    /// other child once, and the rate limiter it used is not wedged.
    async fn a_panicking_child() {
        use awaitkit::RateLimiter;
        let limiter = RateLimiter::new(1000, Duration::from_secs(1));
        let tracker = Tracker::new();
        let t = tracker.clone();
        let mut s = process_batch_stream(futures::stream::iter(0..20), 5, move |i| {
            let token = t.token();
            async move {
                YieldN::new(i % 3, (), &Counter::new()).await;
                let _token = token;
                assert!(i != 6, "child 6 failed");
                i
            }
        })
        .rate_limit(&limiter)
        .unordered();
        let mut got = Vec::new();
        let waker = CountingWaker::new();
        let err = loop {
            match catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut s, &waker))) {
                Ok(Poll::Ready(Some((i, _)))) => got.push(i),
                Ok(Poll::Ready(None)) => panic!("the panic never came"),
                Ok(Poll::Pending) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(common::panic_message(&*err), "child 6 failed");
        assert!(catch_unwind(AssertUnwindSafe(|| poll_next_once(&mut s, &waker))).is_err());
        drop(s);
        assert_eq!(tracker.live(), 0, "every other child dropped once");
        assert_eq!(limiter.waiting(), 0);
        let out: Vec<usize> = process_batch(0..3, 2, |i| async move { i }).rate_limit(&limiter).ordered().collect().await;
        assert_eq!(out, [0, 1, 2], "the limiter still serves");
    }
}

// ---------------------------------------------------------------------------
// Fail-fast
// ---------------------------------------------------------------------------

matrix! {
    /// Fail-fast streams: the first `Err` comes out once, after every other
    /// child was dropped; then `None` forever; nothing more is pulled.
    async fn fail_fast_yields_the_error_once_and_ends() {
        use futures::stream::FusedStream;
        for ordered in [true, false] {
            let (tracker, pulls) = (Tracker::new(), Counter::new());
            let t = tracker.clone();
            let f = move |i: usize| {
                let token = t.token();
                async move {
                    let _token = token;
                    YieldN::new(if i == 5 { 1 } else { 3 + i % 4 }, (), &Counter::new()).await;
                    if i == 5 { Err(format!("item {i}")) } else { Ok(i) }
                }
            };
            let batch = process_batch_stream(counted(100, &pulls), 8, f).fail_fast();
            let waker = CountingWaker::new();
            let mut items = Vec::new();
            let (pulled, live_at_err) = if ordered {
                let mut s: BatchOrdered<'_, _, _, _, _, _, _, true> = batch.ordered();
                loop {
                    match poll_next_once(&mut s, &waker) {
                        Poll::Ready(Some(item)) => {
                            let err = item.is_err();
                            items.push(item);
                            if err { break; }
                        }
                        Poll::Ready(None) => break,
                        Poll::Pending => {}
                    }
                }
                let at_err = (pulls.get(), tracker.live());
                assert!(s.is_terminated());
                assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
                assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
                at_err
            } else {
                let mut s: BatchUnordered<'_, _, _, _, _, _, _, true> = batch.unordered();
                loop {
                    match poll_next_once(&mut s, &waker) {
                        Poll::Ready(Some((i, item))) => {
                            let err = item.is_err();
                            assert_eq!(item.clone().unwrap_or(5), i);
                            items.push(item);
                            if err { break; }
                        }
                        Poll::Ready(None) => break,
                        Poll::Pending => {}
                    }
                }
                let at_err = (pulls.get(), tracker.live());
                assert_eq!(poll_next_once(&mut s, &waker), Poll::Ready(None));
                at_err
            };
            assert_eq!(items.last(), Some(&Err("item 5".to_string())), "ordered {ordered}");
            assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1);
            assert_eq!(live_at_err, 0, "every other child dropped before the error came out");
            assert_eq!(pulls.get(), pulled, "nothing pulled after the error");
            assert!(pulled < 100);
            if ordered {
                let oks: Vec<usize> = items.iter().filter_map(|r| r.clone().ok()).collect();
                assert_eq!(oks, (0..oks.len()).collect::<Vec<_>>(), "the values before it, in order");
            }
        }
    }

    /// An `Ok` and an `Err` finishing in the same poll: each stream still
    /// yields the error exactly once and then ends; nothing is left alive.
    async fn fail_fast_racing_a_completion() {
        for ordered in [true, false] {
            let tracker = Tracker::new();
            let t = tracker.clone();
            let f = move |i: usize| {
                let token = t.token();
                async move {
                    let _token = token;
                    YieldN::new(1, (), &Counter::new()).await;
                    if i == 2 { Err(i) } else { Ok(i) }
                }
            };
            let batch = process_batch(0..6, 6, f).fail_fast();
            let items: Vec<Result<usize, usize>> = if ordered {
                batch.ordered().collect().await
            } else {
                batch.unordered().map(|(_, r)| r).collect().await
            };
            assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1, "ordered {ordered}: {items:?}");
            assert_eq!(items.last(), Some(&Err(2)));
            assert_eq!(tracker.live(), 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

matrix! {
    /// A stream with an exact size hint reports its total from the start;
    /// one without reports `None` until it ends, then the count.
    async fn progress_totals_from_the_streams_size_hint() {
        let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
        let s = seen.clone();
        let out: Vec<usize> = process_batch_stream(futures::stream::iter(0..12), 3, |i| YieldN::new(i % 2, i, &Counter::new()))
            .on_progress(move |p| s.lock().unwrap().push(*p))
            .ordered()
            .collect()
            .await;
        assert_eq!(out.len(), 12);
        let got: Vec<(usize, Option<usize>)> = seen.lock().unwrap().iter().map(|p| (p.done, p.total)).collect();
        assert_eq!(got, (1..=12).map(|d| (d, Some(12))).collect::<Vec<_>>());

        let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
        let s = seen.clone();
        let items = futures::stream::iter(0..24).filter(|i| std::future::ready(i % 2 == 0));
        let out: Vec<(usize, usize)> = process_batch_stream(items, 3, |i| YieldN::new(1, i, &Counter::new()))
            .on_progress(move |p| s.lock().unwrap().push(*p))
            .unordered()
            .collect()
            .await;
        assert_eq!(out.len(), 12);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 12);
        assert!(seen.iter().enumerate().all(|(k, p)| p.done == k + 1 && p.in_flight <= 3));
        assert_eq!((seen[0].total, seen[0].eta), (None, None), "unknown at first");
        assert_eq!(seen.last().unwrap().total, Some(12), "known once the stream ended");
    }
}

// ---------------------------------------------------------------------------
// The manual clock: rate limits, pauses
// ---------------------------------------------------------------------------

#[cfg(feature = "test-util")]
mod manual_clock {
    use super::*;
    use awaitkit::RateLimiter;
    use awaitkit::rate_limiter::Quota;
    use awaitkit::time::{ManualClock, Timer};
    use std::time::Instant;

    const SEC: Duration = Duration::from_secs(1);

    /// Start times of the children, on the manual clock.
    #[derive(Clone)]
    struct Starts {
        clock: ManualClock,
        t0: Instant,
        log: Arc<Mutex<Vec<Duration>>>,
    }

    impl Starts {
        fn new(clock: &ManualClock) -> Self {
            Starts {
                clock: clock.clone(),
                t0: clock.now(),
                log: Arc::default(),
            }
        }
        fn record(&self) {
            self.log.lock().unwrap().push(self.clock.now() - self.t0);
        }
        fn get(&self) -> Vec<Duration> {
            self.log.lock().unwrap().clone()
        }
    }

    matrix! {
        /// The rate limit applies to the stream forms: two starts per
        /// second, in both outputs, from a stream input.
        async fn rate_limited_streams_respect_the_quota() {
            for ordered in [true, false] {
                let clock = ManualClock::new();
                let limiter = RateLimiter::with_quota(Quota::window(2, SEC).unwrap()).with_timer(clock.clone());
                let starts = Starts::new(&clock);
                let s = starts.clone();
                let batch = process_batch_stream(futures::stream::iter(0..7), 10, move |i| {
                    let s = s.clone();
                    async move {
                        s.record();
                        i
                    }
                })
                .rate_limit(&limiter);
                let mut out: Vec<usize> = if ordered {
                    drain_on_clock(&mut batch.ordered(), &clock)
                } else {
                    drain_on_clock(&mut batch.unordered(), &clock).into_iter().map(|(_, v)| v).collect()
                };
                out.sort_unstable();
                assert_eq!(out, (0..7).collect::<Vec<_>>());
                assert_eq!(starts.get(), [0, 0, 1, 1, 2, 2, 3].map(|s| s * SEC));
            }
        }

        /// Fixed batches with a pause, as an ordered stream: the next group
        /// starts after the pause, once the previous one was handed out.
        async fn fixed_batches_with_a_pause_as_a_stream() {
            let clock = ManualClock::new();
            let starts = Starts::new(&clock);
            let s = starts.clone();
            let mut stream = process_batch_stream(futures::stream::iter(0..5), 2, move |i| {
                s.record();
                async move { i }
            })
            .pause_between(10 * SEC)
            .with_timer(clock.clone())
            .ordered();
            assert_eq!(drain_on_clock(&mut stream, &clock), [0, 1, 2, 3, 4]);
            assert_eq!(starts.get(), [0, 0, 10, 10, 20].map(|s| s * SEC));
        }
    }
}

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

#[test]
fn the_stream_types_are_send_unpin_fused_and_debug() {
    fn check<S: Stream + futures::stream::FusedStream + Send + Unpin + std::fmt::Debug>(_: &S) {}
    let ordered =
        process_batch_stream(futures::stream::iter(0..3), 2, |i| async move { i }).ordered();
    check(&ordered);
    assert!(
        format!("{ordered:?}").starts_with("BatchOrdered(Batch {"),
        "{ordered:?}"
    );
    let unordered = process_batch(0..3, 2, |i| async move { Ok::<_, ()>(i) })
        .fail_fast()
        .unordered();
    check(&unordered);
    assert!(
        format!("{unordered:?}").starts_with("BatchUnordered(TryBatch {"),
        "{unordered:?}"
    );
}

#[test]
#[should_panic(expected = "`Batch::ordered` after the batch was polled")]
fn ordered_after_a_poll_panics() {
    let mut batch = process_batch(0..3, 1, |_| std::future::pending::<()>());
    let _ = poll_once(&mut batch, &CountingWaker::new());
    let _ = batch.ordered();
}

#[test]
#[should_panic(expected = "process_batch_stream: the concurrency limit must be at least 1")]
fn a_zero_limit_panics() {
    drop(process_batch_stream(
        futures::stream::iter(0..3),
        0,
        |i| async move { i },
    ));
}
