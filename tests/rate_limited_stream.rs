//! `RateLimiter::limit_stream` / `RateLimitedStream`: a stream whose items
//! each wait for one grant before they are yielded. Exact times on the
//! manual clock (window and GCRA), no grant for the end of the stream, FIFO
//! with other streams and plain acquires on one limiter, cancellation after
//! every poll, `Pending` between items, panics of the inner stream and of
//! wakers, quota changes while items wait, wakes from other threads, and
//! real-clock smoke tests on every executor.

#[macro_use]
mod common;

use awaitkit::RateLimiter;
use futures::{StreamExt, stream};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Real clocks, every executor
// ---------------------------------------------------------------------------

matrix! {
    /// Two grants per 40 ms: five items take at least two more periods.
    async fn real_clock_stream_is_never_early() {
        let limiter = RateLimiter::new(2, Duration::from_millis(40));
        let start = Instant::now();
        let items: Vec<u32> = limiter.limit_stream(stream::iter(0..5)).collect().await;
        assert_eq!(items, [0, 1, 2, 3, 4]);
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
    }

    /// Two streams on one limiter share its quota: six items at two per
    /// 40 ms take at least two more periods, and each stream keeps its order.
    async fn real_clock_two_streams_share_the_quota() {
        let limiter = RateLimiter::new(2, Duration::from_millis(40));
        let start = Instant::now();
        let a = limiter.limit_stream(stream::iter(0..3)).collect::<Vec<u32>>();
        let b = limiter.limit_stream(stream::iter(10..13)).collect::<Vec<u32>>();
        let (a, b) = awaitkit::gather!(a, b).await;
        assert_eq!((a, b), (vec![0, 1, 2], vec![10, 11, 12]));
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
    }

    /// The empty stream ends at once, taking nothing.
    async fn real_clock_empty_stream_ends_at_once() {
        let limiter = RateLimiter::new(1, Duration::from_secs(3600));
        let mut s = limiter.limit_stream(stream::empty::<u8>());
        assert_eq!(s.next().await, None);
        assert_eq!(s.next().await, None);
        assert!(limiter.try_acquire().is_ok());
    }
}

#[cfg(feature = "test-util")]
mod manual {
    use super::*;
    use awaitkit::RateAcquire;
    use awaitkit::rate_limiter::Quota;
    use awaitkit::time::ManualClock;
    use common::{CountingWaker, Token, Tracker, panic_message, poll_next_once, poll_once};
    use futures::Stream;
    use futures::stream::FusedStream;
    use std::collections::VecDeque;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn window(max_calls: usize, period: Duration) -> Quota {
        Quota::window(max_calls, period).unwrap()
    }

    fn gcra(max_calls: usize, period: Duration, burst: usize) -> Quota {
        Quota::gcra(max_calls, period, burst).unwrap()
    }

    fn manual(quota: Quota) -> (ManualClock, RateLimiter<ManualClock>) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::with_quota(quota).with_timer(clock.clone());
        (clock, limiter)
    }

    /// Drains `s`, moving the clock from one armed deadline to the next
    /// whenever it is pending; returns each item with the clock time it was
    /// yielded at. Checks the wake contract: a `Pending` is followed by a
    /// wake before the item comes.
    fn pace<S: Stream + Unpin>(clock: &ManualClock, s: &mut S) -> Vec<(S::Item, Duration)> {
        let w = CountingWaker::new();
        let mut out = Vec::new();
        let mut wakes = None;
        for _ in 0..10_000 {
            match poll_next_once(s, &w) {
                Poll::Ready(Some(item)) => {
                    if let Some(before) = wakes {
                        assert!(w.wakes() > before, "Pending, then an item without a wake");
                    }
                    wakes = None;
                    out.push((item, clock.elapsed()));
                }
                Poll::Ready(None) => return out,
                Poll::Pending => {
                    wakes = Some(w.wakes());
                    let next = clock.next_deadline().expect("pending with no timer armed");
                    clock.advance_to(next);
                }
            }
        }
        panic!("the stream never ended");
    }

    fn times<I>(paced: &[(I, Duration)]) -> Vec<Duration> {
        paced.iter().map(|(_, t)| *t).collect()
    }

    /// A stream the test feeds by hand: `Pending` while empty and open.
    /// Counts its polls; panics in its next poll when told to.
    #[derive(Clone, Default)]
    struct Feed<I>(Arc<Mutex<FeedState<I>>>);

    struct FeedState<I> {
        items: VecDeque<I>,
        closed: bool,
        waker: Option<Waker>,
        polls: usize,
        panic_next: bool,
    }

    impl<I> Default for FeedState<I> {
        fn default() -> Self {
            FeedState {
                items: VecDeque::new(),
                closed: false,
                waker: None,
                polls: 0,
                panic_next: false,
            }
        }
    }

    impl<I> Feed<I> {
        fn new() -> Self {
            Feed(Arc::new(Mutex::new(FeedState::default())))
        }
        fn push(&self, item: I) {
            let waker = {
                let mut s = self.0.lock().unwrap();
                s.items.push_back(item);
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
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
        fn polls(&self) -> usize {
            self.0.lock().unwrap().polls
        }
        fn panic_next(&self) {
            self.0.lock().unwrap().panic_next = true;
        }
    }

    impl<I> Stream for Feed<I> {
        type Item = I;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<I>> {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            s.polls += 1;
            if std::mem::take(&mut s.panic_next) {
                drop(s);
                panic!("the inner stream panicked");
            }
            if let Some(item) = s.items.pop_front() {
                return Poll::Ready(Some(item));
            }
            if s.closed {
                return Poll::Ready(None);
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A waker that panics in `wake` (the task is not woken).
    struct Bomb(AtomicUsize);

    impl Wake for Bomb {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("a waker that panics");
        }
    }

    fn bomb() -> (Arc<Bomb>, Waker) {
        let bomb = Arc::new(Bomb(AtomicUsize::new(0)));
        (bomb.clone(), Waker::from(bomb))
    }

    fn panic_of(f: impl FnOnce()) -> Option<String> {
        catch_unwind(AssertUnwindSafe(f))
            .err()
            .map(|p| panic_message(&*p))
    }

    // -----------------------------------------------------------------------
    // Pace, end of stream, empty, fused
    // -----------------------------------------------------------------------

    guarded! {
        /// A ready stream through a strict window of 2 per second: two items
        /// at once, then two at every second, exactly.
        fn window_pace_is_exact() {
            let (clock, limiter) = manual(window(2, SEC));
            let mut s = limiter.limit_stream(stream::iter(0..7));
            let paced = pace(&clock, &mut s);
            assert_eq!(paced.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
            assert_eq!(times(&paced), [0, 0, 1, 1, 2, 2, 3].map(|s| s * SEC));
            assert!(s.is_terminated());
        }

        /// GCRA, 10 per second with bursts of 3: the burst at once, then one
        /// every 100 ms, exactly.
        fn gcra_pace_is_exact() {
            let (clock, limiter) = manual(gcra(10, SEC, 3));
            let mut s = limiter.limit_stream(stream::iter(0..7));
            let paced = pace(&clock, &mut s);
            assert_eq!(times(&paced), [0, 0, 0, 100, 200, 300, 400].map(|m| m * MS));
        }

        /// The end of the stream takes no grant: with 3 per minute, two
        /// items leave one call; with three, the end comes at once although
        /// the quota is spent, and nobody waits.
        fn end_of_stream_takes_no_grant() {
            for quota in [window(3, 60 * SEC), gcra(3, 60 * SEC, 3)] {
                let (clock, limiter) = manual(quota);
                let mut s = limiter.limit_stream(stream::iter(0..2));
                assert_eq!(times(&pace(&clock, &mut s)), [Duration::ZERO; 2]);
                assert_eq!(limiter.snapshot().remaining, 1);
                assert!(limiter.try_acquire().is_ok());
                assert_eq!(limiter.snapshot().remaining, 0);

                let (clock, limiter) = manual(quota);
                let w = CountingWaker::new();
                let mut s = limiter.limit_stream(stream::iter(0..3));
                for i in 0..3 {
                    assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(i)));
                }
                assert_eq!(limiter.snapshot().remaining, 0);
                assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None), "the end waits for nothing");
                assert_eq!((limiter.waiting(), clock.sleepers()), (0, 0));
            }
        }

        /// An empty stream ends at the first poll, takes nothing, arms no
        /// timer, and is `None` forever without polling the inner stream
        /// again.
        fn empty_stream() {
            let (clock, limiter) = manual(window(3, SEC));
            let feed = Feed::<u8>::new();
            feed.close();
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(feed.clone());
            assert!(!s.is_terminated());
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
            assert!(s.is_terminated());
            for _ in 0..3 {
                assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
            }
            assert_eq!(feed.polls(), 1, "the inner stream is not polled after its end");
            assert_eq!(limiter.snapshot().remaining, 3);
            assert_eq!((limiter.waiting(), clock.sleepers()), (0, 0));
            assert_eq!(s.size_hint(), (0, Some(0)));
        }

        /// `FusedStream` and `size_hint`: the inner stream's hint plus the
        /// item held; `(0, Some(0))` and `None` forever after the end.
        fn fused_and_size_hint() {
            let (clock, limiter) = manual(window(1, SEC));
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter(0..3));
            assert_eq!(s.size_hint(), (3, Some(3)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(0)));
            assert_eq!(s.size_hint(), (2, Some(2)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            assert!(s.is_waiting());
            assert_eq!(s.size_hint(), (2, Some(2)), "one held, one in the inner stream");
            assert!(!s.is_terminated());
            clock.advance(2 * SEC);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending, "item 2 is due at 3 s");
            clock.advance(2 * SEC);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(2)));
            assert!(!s.is_terminated());
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
            assert!(s.is_terminated());
            assert_eq!(s.size_hint(), (0, Some(0)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
            // A hint that overflows with the held item stays sound.
            let (_clock, limiter) = manual(window(1, SEC));
            let mut s = limiter.limit_stream(stream::repeat(7u8));
            assert_eq!(s.size_hint(), (usize::MAX, None));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(7)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            assert_eq!(s.size_hint(), (usize::MAX, None));
            let debug = format!("{s:?}");
            assert!(debug.starts_with("RateLimitedStream") && debug.contains("waiting: true"), "{debug}");
        }

        /// A stream that is `Pending` between items: no grant is taken while
        /// it has nothing, an item that comes while the quota allows goes at
        /// once, one that comes early waits for its time — and the inner
        /// stream is not polled while an item waits.
        fn pending_between_items() {
            let (clock, limiter) = manual(window(1, SEC));
            let feed = Feed::new();
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(feed.clone());
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            assert_eq!((limiter.waiting(), limiter.snapshot().remaining), (0, 1), "no item, no grant");
            clock.advance(500 * MS);
            feed.push(1);
            assert_eq!(w.wakes(), 1);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
            clock.advance(100 * MS);
            feed.push(2);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            assert_eq!(limiter.waiting(), 1);
            let polls = feed.polls();
            feed.push(3);
            for _ in 0..5 {
                assert_eq!(poll_next_once(&mut s, &w), Poll::Pending, "spurious polls");
            }
            assert_eq!(feed.polls(), polls, "the inner stream waits while an item does");
            assert_eq!(limiter.waiting(), 1, "one request for the held item, however often polled");
            let next = clock.next_deadline().unwrap();
            clock.advance_to(next);
            assert_eq!(clock.elapsed(), 1500 * MS, "a second after the first grant");
            assert!(w.wakes() >= 2);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(2)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            clock.advance(SEC);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(3)));
            feed.close();
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
            assert_eq!(limiter.snapshot().remaining, 0, "item 3's grant, at 2.5 s");
            clock.advance(SEC);
            assert_eq!(limiter.snapshot().remaining, 1);
        }
    }

    // -----------------------------------------------------------------------
    // FIFO across adapters and acquires
    // -----------------------------------------------------------------------

    guarded! {
        /// Two streams and a plain `acquire` on one limiter of 1 per second
        /// are served in the order their requests arrived: a stream's next
        /// item queues behind those already waiting.
        fn two_streams_and_an_acquire_are_served_fifo() {
            for quota in [window(1, SEC), gcra(1, SEC, 1)] {
                let (clock, limiter) = manual(quota);
                limiter.try_acquire().unwrap(); // the quota of 0 s is spent
                let w = CountingWaker::new();
                let mut a = limiter.limit_stream(stream::iter(["a0", "a1"]));
                let mut x = Some(limiter.acquire());
                let mut b = limiter.limit_stream(stream::iter(["b0", "b1"]));
                let mut log: Vec<(&str, Duration)> = Vec::new();
                let mut ended = (false, false);
                for _ in 0..20 {
                    while let Poll::Ready(Some(item)) = poll_next_once(&mut a, &w) {
                        log.push((item, clock.elapsed()));
                    }
                    ended.0 |= a.is_terminated();
                    if let Some(acquire) = x.as_mut() {
                        if poll_once(acquire, &w).is_ready() {
                            log.push(("x", clock.elapsed()));
                            x = None;
                        }
                    }
                    while let Poll::Ready(Some(item)) = poll_next_once(&mut b, &w) {
                        log.push((item, clock.elapsed()));
                    }
                    ended.1 |= b.is_terminated();
                    match clock.next_deadline() {
                        Some(next) => clock.advance_to(next),
                        None => break,
                    }
                }
                assert_eq!(
                    log,
                    [("a0", SEC), ("x", 2 * SEC), ("b0", 3 * SEC), ("a1", 4 * SEC), ("b1", 5 * SEC)],
                    "{quota:?}"
                );
                assert_eq!(ended, (true, true));
                assert_eq!(limiter.waiting(), 0);
            }
        }

        /// `try_acquire` does not barge ahead of a waiting item.
        fn a_waiting_item_is_not_overtaken_by_try_acquire() {
            let (clock, limiter) = manual(window(1, SEC));
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter(0..2));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(0)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            clock.advance(SEC - MS);
            assert!(limiter.try_acquire().is_err());
            clock.advance(MS);
            assert!(limiter.try_acquire().is_err(), "the item was granted first");
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
        }
    }

    // -----------------------------------------------------------------------
    // Cancellation
    // -----------------------------------------------------------------------

    /// One scenario of `cancel_after_every_step`: a stream of tokens behind
    /// a limiter of 1 per second (its 0 s grant already used) and a plain
    /// acquire queued behind the stream's first item; the stream is dropped
    /// after `k` steps (polls of the stream alternating with clock moves).
    /// Returns the grant times used by the stream's yielded items and by
    /// the acquire.
    fn cancel_after(quota: Quota, k: usize, tracker: &Tracker) -> (Vec<Duration>, Duration) {
        let (clock, limiter) = manual(quota);
        limiter.try_acquire().unwrap();
        let w = CountingWaker::new();
        let mut s = limiter.limit_stream(stream::iter((0..4).map(|_| tracker.token())));
        let mut acquire = limiter.acquire();
        let mut acquired = None;
        let mut yielded = Vec::new();
        let poll_acquire = |acquire: &mut RateAcquire<'_, ManualClock>,
                            acquired: &mut Option<Duration>| {
            if acquired.is_none() && poll_once(acquire, &w).is_ready() {
                *acquired = Some(clock.elapsed());
            }
        };
        if k == 0 {
            poll_acquire(&mut acquire, &mut acquired);
        }
        for step in 0..k {
            if step % 2 == 0 {
                if let Poll::Ready(Some(token)) = poll_next_once(&mut s, &w) {
                    yielded.push(clock.elapsed());
                    drop::<Token>(token);
                }
                if step == 0 {
                    poll_acquire(&mut acquire, &mut acquired); // behind the first item
                }
            } else {
                if let Some(next) = clock.next_deadline() {
                    clock.advance_to(next);
                }
                poll_acquire(&mut acquire, &mut acquired);
            }
        }
        drop(s);
        for _ in 0..10 {
            poll_acquire(&mut acquire, &mut acquired);
            if acquired.is_some() {
                break;
            }
            let next = clock
                .next_deadline()
                .expect("the acquire waits for a timer");
            clock.advance_to(next);
        }
        assert_eq!(limiter.waiting(), 0);
        (yielded, acquired.expect("the acquire was granted"))
    }

    guarded! {
        /// Dropping the stream after any number of steps loses no grant:
        /// the grants used (the 0 s one, the yielded items', the acquire's)
        /// are exactly one per second with no gap, so a reservation or an
        /// unseen grant of the dropped stream went to the acquire; and every
        /// item is dropped exactly once.
        fn cancel_after_every_step_loses_nothing() {
            for quota in [window(1, SEC), gcra(1, SEC, 1)] {
                for k in 0..12 {
                    let tracker = Tracker::new();
                    let (yielded, acquired) = cancel_after(quota, k, &tracker);
                    let mut used: Vec<Duration> = vec![Duration::ZERO];
                    used.extend(&yielded);
                    used.push(acquired);
                    used.sort();
                    let expected: Vec<Duration> = (0..used.len() as u32).map(|i| i * SEC).collect();
                    assert_eq!(used, expected, "{quota:?}, dropped after {k} steps");
                    assert_eq!(tracker.live(), 0, "every item dropped (exactly once), k = {k}");
                    assert!(tracker.created() <= yielded.len() + 1, "at most one item held");
                }
            }
        }

        /// A grant made to the held item but not yet seen goes back when the
        /// stream is dropped (or turned back into its inner stream): the next
        /// waiter is granted at once, at the same instant.
        fn an_unseen_grant_is_given_back() {
            for into_inner in [false, true] {
                let (clock, limiter) = manual(window(1, SEC));
                let tracker = Tracker::new();
                let w = CountingWaker::new();
                let mut s = limiter.limit_stream(stream::iter((0..3).map(|_| tracker.token())));
                assert!(poll_next_once(&mut s, &w).is_ready());
                assert!(poll_next_once(&mut s, &w).is_pending());
                let mut next = limiter.acquire();
                assert!(poll_once(&mut next, &w).is_pending());
                clock.advance(SEC); // the held item is granted; its task not yet polled
                assert_eq!(tracker.live(), 1);
                if into_inner {
                    let mut inner = s.into_inner();
                    assert_eq!(tracker.live(), 0, "the held item is dropped");
                    assert_eq!(futures::executor::block_on(inner.next()).map(drop), Some(()));
                } else {
                    drop(s);
                }
                assert_eq!(tracker.live(), 0);
                assert_eq!(poll_once(&mut next, &w), Poll::Ready(()), "at 1 s, with the given-back grant");
                assert_eq!(clock.elapsed(), SEC);
            }
        }
    }

    // -----------------------------------------------------------------------
    // Panics
    // -----------------------------------------------------------------------

    guarded! {
        /// A panic in the inner stream's poll propagates, holds nothing and
        /// takes no grant; the next poll polls the inner stream again and
        /// the pace goes on.
        fn a_panic_in_the_inner_stream() {
            let (clock, limiter) = manual(window(1, SEC));
            let feed = Feed::new();
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(feed.clone());
            feed.push(0);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(0)));
            feed.panic_next();
            let msg = panic_of(|| {
                let _ = poll_next_once(&mut s, &w);
            });
            assert_eq!(msg.as_deref(), Some("the inner stream panicked"));
            assert!(!s.is_waiting());
            assert_eq!(limiter.waiting(), 0);
            assert!(!s.is_terminated());
            feed.push(1);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            clock.advance(SEC);
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
            feed.close();
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(None));
        }

        /// The held item's grant is made on the timer's path (here
        /// `ManualClock::advance`) and the stream's waker panics there: the
        /// panic stays there, and the item is yielded at the next poll.
        fn a_waker_that_panics_when_the_grant_comes() {
            for quota in [window(1, SEC), gcra(1, SEC, 1)] {
                let (clock, limiter) = manual(quota);
                let (bomb, waker) = bomb();
                let mut cx = Context::from_waker(&waker);
                let w = CountingWaker::new();
                let mut s = limiter.limit_stream(stream::iter(0..3));
                assert_eq!(Pin::new(&mut s).poll_next(&mut cx), Poll::Ready(Some(0)));
                assert_eq!(Pin::new(&mut s).poll_next(&mut cx), Poll::Pending);
                let mut later = limiter.acquire();
                assert!(poll_once(&mut later, &w).is_pending());
                clock.advance(SEC); // contained on the timer path
                assert_eq!(bomb.0.load(Ordering::SeqCst), 1);
                assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
                clock.advance(SEC);
                assert_eq!(poll_once(&mut later, &w), Poll::Ready(()), "served at 2 s");
                assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
                clock.advance(SEC);
                assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(2)));
            }
        }

        /// Dropping the stream hands its unseen grant to the next waiter,
        /// whose waker panics: the panic propagates from the drop, the held
        /// item is still dropped exactly once, and the waiter has its grant.
        fn a_drop_that_wakes_a_panicking_waker() {
            let (clock, limiter) = manual(window(1, SEC));
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter((0..3).map(|_| tracker.token())));
            assert!(poll_next_once(&mut s, &w).is_ready());
            assert!(poll_next_once(&mut s, &w).is_pending());
            let (bomb, bomb_waker) = bomb();
            let mut next = limiter.acquire();
            assert!(Pin::new(&mut next).poll(&mut Context::from_waker(&bomb_waker)).is_pending());
            clock.advance(SEC); // the held item is granted, unseen
            let msg = panic_of(|| drop(s));
            assert_eq!(msg.as_deref(), Some("a waker that panics"));
            assert_eq!(bomb.0.load(Ordering::SeqCst), 1);
            assert_eq!(tracker.live(), 0, "the held item was dropped");
            assert_eq!(poll_once(&mut next, &w), Poll::Ready(()));
            assert_eq!(clock.elapsed(), SEC);
            clock.advance(SEC);
            assert!(limiter.try_acquire().is_ok(), "the limiter is whole");
        }

        /// The held item's destructor panics as the stream is dropped: its
        /// place in the queue was handed on first, so the next waiter moves
        /// up at once, and the panic propagates.
        fn a_held_item_whose_drop_panics() {
            struct Grenade;
            impl Drop for Grenade {
                fn drop(&mut self) {
                    panic!("an item's destructor panicked");
                }
            }
            let (clock, limiter) = manual(window(1, SEC));
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter([0, 1]).map(|i| (i, Grenade)));
            let first = poll_next_once(&mut s, &w);
            std::mem::forget(first); // item 0, yielded
            assert!(poll_next_once(&mut s, &w).is_pending());
            let mut next = limiter.acquire();
            assert!(poll_once(&mut next, &w).is_pending());
            assert_eq!(limiter.waiting(), 2);
            let msg = panic_of(|| drop(s));
            assert_eq!(msg.as_deref(), Some("an item's destructor panicked"));
            assert_eq!(limiter.waiting(), 1, "the held item's place was given up");
            clock.advance(SEC);
            assert_eq!(poll_once(&mut next, &w), Poll::Ready(()), "the next waiter has its time");
        }

        /// A waker whose `clone` panics, as the held item joins the queue:
        /// the panic propagates, the item stays held and unqueued, and the
        /// next poll queues it.
        fn a_waker_that_panics_on_clone() {
            use std::task::{RawWaker, RawWakerVTable};
            static VTABLE: RawWakerVTable = RawWakerVTable::new(
                |_| panic!("a waker clone that panics"),
                |_| {},
                |_| {},
                |_| {},
            );
            // SAFETY: the vtable's functions ignore the data pointer.
            let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
            let (clock, limiter) = manual(window(1, SEC));
            let tracker = Tracker::new();
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter((0..2).map(|_| tracker.token())));
            assert!(poll_next_once(&mut s, &w).is_ready());
            let msg = panic_of(|| {
                let _ = Pin::new(&mut s).poll_next(&mut Context::from_waker(&waker));
            });
            assert_eq!(msg.as_deref(), Some("a waker clone that panics"));
            assert!(s.is_waiting());
            assert_eq!(tracker.live(), 1, "the held item is kept");
            assert!(poll_next_once(&mut s, &w).is_pending());
            assert_eq!(limiter.waiting(), 1);
            clock.advance(SEC);
            assert!(poll_next_once(&mut s, &w).is_ready());
            assert!(matches!(poll_next_once(&mut s, &w), Poll::Ready(None)));
            assert_eq!(tracker.live(), 0);
        }

        /// `set_quota` lets waiting items through and their task's waker
        /// panics: the panic propagates from `set_quota` after every waiter
        /// was granted, and the items are yielded at the next polls.
        fn set_quota_with_a_panicking_waker() {
            let (clock, limiter) = manual(window(1, 10 * SEC));
            let (_bomb, waker) = bomb();
            let mut cx = Context::from_waker(&waker);
            let mut a = limiter.limit_stream(stream::iter(["a0", "a1"]));
            let mut b = limiter.limit_stream(stream::iter(["b0"]));
            assert_eq!(Pin::new(&mut a).poll_next(&mut cx), Poll::Ready(Some("a0")));
            assert_eq!(Pin::new(&mut a).poll_next(&mut cx), Poll::Pending);
            assert_eq!(Pin::new(&mut b).poll_next(&mut cx), Poll::Pending);
            assert_eq!(limiter.waiting(), 2);
            let msg = panic_of(|| limiter.set_quota(window(3, 10 * SEC)).unwrap());
            assert_eq!(msg.as_deref(), Some("a waker that panics"));
            assert_eq!(limiter.waiting(), 0, "both granted");
            let w = CountingWaker::new();
            assert_eq!(poll_next_once(&mut a, &w), Poll::Ready(Some("a1")));
            assert_eq!(poll_next_once(&mut b, &w), Poll::Ready(Some("b0")));
            assert_eq!(clock.elapsed(), Duration::ZERO);
            assert!(limiter.try_acquire().is_err(), "3 of 3 used");
        }
    }

    // -----------------------------------------------------------------------
    // Quota changes, wakers, threads
    // -----------------------------------------------------------------------

    guarded! {
        /// Quota changes while items wait apply at once: raising a window
        /// grants the waiting items now; a GCRA rate change re-paces them.
        fn set_quota_while_items_wait() {
            let (clock, limiter) = manual(window(1, 10 * SEC));
            let w = CountingWaker::new();
            let mut s = limiter.limit_stream(stream::iter(0..4));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(0)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            limiter.set_quota(window(2, 10 * SEC)).unwrap();
            assert_eq!(w.wakes(), 1, "the held item was granted and its task woken");
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(1)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            limiter.set_quota(window(1, SEC)).unwrap(); // shorter window: item 2 goes at 1 s
            let paced = pace(&clock, &mut s);
            assert_eq!(paced, [(2, SEC), (3, 2 * SEC)]);

            let (clock, limiter) = manual(gcra(1, SEC, 1));
            let mut s = limiter.limit_stream(stream::iter(0..4));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Ready(Some(0)));
            assert_eq!(poll_next_once(&mut s, &w), Poll::Pending);
            limiter.set_quota(gcra(10, SEC, 1)).unwrap(); // 100 ms apart from now on
            let paced = pace(&clock, &mut s);
            assert_eq!(times(&paced), [100 * MS, 200 * MS, 300 * MS]);
        }

        /// Polled with a new waker each time while its item waits: only the
        /// latest is woken, the replaced clones are released, and the item
        /// still has one place in the queue.
        fn only_the_latest_waker_is_woken() {
            let (clock, limiter) = manual(window(1, SEC));
            let (w1, w2) = (CountingWaker::new(), CountingWaker::new());
            let mut s = limiter.limit_stream(stream::iter(0..2));
            assert!(poll_next_once(&mut s, &w1).is_ready());
            assert!(poll_next_once(&mut s, &w1).is_pending());
            assert!(poll_next_once(&mut s, &w2).is_pending());
            assert_eq!(w1.live_clones(), 0);
            assert_eq!(limiter.waiting(), 1);
            clock.advance(SEC);
            assert_eq!((w1.wakes(), w2.wakes()), (0, 1));
            assert_eq!(poll_next_once(&mut s, &w2), Poll::Ready(Some(1)));
            assert_eq!(w2.live_clones(), 0);
        }

        /// The grant comes from another thread (the clock moved there) while
        /// the stream's task blocks in an executor on this one.
        fn woken_from_another_thread() {
            let (clock, limiter) = manual(window(2, SEC));
            let mut s = limiter.limit_stream(stream::iter(0..6));
            std::thread::scope(|scope| {
                let mover = clock.clone();
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stop = done.clone();
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                        if let Some(next) = mover.next_deadline() {
                            mover.advance_to(next);
                        }
                    }
                });
                let mut got = Vec::new();
                futures::executor::block_on(async {
                    while let Some(i) = s.next().await {
                        got.push((i, clock.elapsed()));
                    }
                });
                done.store(true, Ordering::SeqCst);
                assert_eq!(times(&got), [0, 0, 1, 1, 2, 2].map(|s| s * SEC));
            });
        }
    }
}

/// Panic injection: every call into user code — the inner streams' polls,
/// the items' destructors, every waker's `clone`/`wake`/`drop`, the timer's
/// `now`/`sleep_until`/`reset` and its sleeps — panics in turn (one run per
/// call), while two streams and a plain acquire share one limiter. After
/// each run: every item made is dropped exactly once, nothing waits, no
/// wake-up was lost, every waker handle is released, and the limiter is
/// whole (exactly its quota passes after an idle period).
#[cfg(feature = "test-util")]
mod injected {
    use super::*;
    use awaitkit::rate_limiter::Quota;
    use common::faults::{Ctx, NextOf, Plan, Step, Waiter, explore};
    use futures::Stream;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    const MS: Duration = Duration::from_millis(1);

    /// Drop counts of every item made, by item.
    type Drops = Arc<Mutex<Vec<usize>>>;

    struct Item {
        id: usize,
        drops: Drops,
        plan: Plan,
        label: String,
    }

    impl Drop for Item {
        fn drop(&mut self) {
            self.drops.lock().unwrap()[self.id] += 1;
            self.plan.hit(|| format!("{} drop", self.label));
        }
    }

    /// A ready stream of `left` items whose every poll is a call of the plan.
    struct Source {
        label: &'static str,
        left: usize,
        drops: Drops,
        plan: Plan,
    }

    impl Stream for Source {
        type Item = Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
            self.plan.hit(|| format!("{} poll", self.label));
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            let mut drops = self.drops.lock().unwrap();
            drops.push(0);
            let id = drops.len() - 1;
            Poll::Ready(Some(Item {
                id,
                drops: self.drops.clone(),
                plan: self.plan.clone(),
                label: format!("{} item {id}", self.label),
            }))
        }
    }

    type Next<'l> =
        Waiter<'l, NextOf<awaitkit::RateLimitedStream<'l, Source, common::faults::FaultTimer>>>;

    /// Polls a stream's waiter; on an item, drops it and starts a waiter
    /// for the next one at once (so its request queues now).
    fn pump<'l>(ctx: &'l Ctx, w: &mut Next<'l>, name: &str) {
        for _ in 0..4 {
            if w.poll() != Some(true) {
                return;
            }
            match w.take() {
                Some(Some(item)) => {
                    let _ = ctx.drop_step(&format!("drop an item of {name}"), item);
                }
                Some(None) | None => return, // the end: keep the waiter done
            }
            let Some(fut) = w.fut.take() else { return };
            *w = Waiter::new(ctx, name.to_owned(), fut);
        }
    }

    fn scenario(ctx: &Ctx, quota: Quota) {
        let timer = ctx.timer();
        let Some(limiter) = ctx
            .step("RateLimiter::with_timer", || {
                RateLimiter::with_quota(quota).with_timer(timer)
            })
            .done()
        else {
            return;
        };
        let drops = Drops::default();
        let source = |label, left| Source {
            label,
            left,
            drops: drops.clone(),
            plan: ctx.plan.clone(),
        };
        let _ = ctx.step("try_acquire", || limiter.try_acquire());
        let mut a: Next<'_> = Waiter::new(
            ctx,
            "stream A",
            NextOf(limiter.limit_stream(source("stream A", 3))),
        );
        let mut x = Waiter::new(ctx, "acquire X", limiter.acquire());
        let mut b: Next<'_> = Waiter::new(
            ctx,
            "stream B",
            NextOf(limiter.limit_stream(source("stream B", 3))),
        );
        pump(ctx, &mut a, "stream A");
        x.poll();
        pump(ctx, &mut b, "stream B");
        for round in 0..10 {
            let _ = ctx.advance(1000 * MS);
            pump(ctx, &mut a, "stream A");
            if x.is_pending() {
                x.poll();
            }
            pump(ctx, &mut b, "stream B");
            if round == 2 {
                // Cancel B mid-way (an item waiting, or granted unseen).
                b.drop_all();
            }
        }
        drop((a, x, b));
        ctx.check_eq("waiting at the end", limiter.waiting(), 0);
        for (id, n) in drops.lock().unwrap().iter().enumerate() {
            ctx.check(*n == 1, || format!("item {id} dropped {n} times"));
        }
        let _ = ctx.advance(10_000 * MS);
        match ctx.step("try_acquire after an idle period", || limiter.try_acquire()) {
            Step::Done(Ok(())) => {
                if let Step::Done(Ok(())) =
                    ctx.step("try_acquire past the quota", || limiter.try_acquire())
                {
                    ctx.fail("more calls than the quota passed");
                }
            }
            Step::Done(Err(e)) => ctx.fail(format!("a fresh quota was refused: {e}")),
            Step::Injected | Step::Failed(_) => {}
        }
    }

    #[test]
    fn rate_limited_stream_window() {
        explore("rate_limited_stream_window", |ctx| {
            scenario(ctx, Quota::window(1, 1000 * MS).unwrap());
        });
    }

    #[test]
    fn rate_limited_stream_gcra() {
        explore("rate_limited_stream_gcra", |ctx| {
            scenario(ctx, Quota::gcra(1, 1000 * MS, 1).unwrap());
        });
    }
}
