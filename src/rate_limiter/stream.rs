//! [`RateLimitedStream`]: a stream whose items each wait for one grant of a
//! [`RateLimiter`] before they are yielded ([`RateLimiter::limit_stream`]).
//!
//! The adapter holds at most one item: it polls the inner stream only when
//! it holds none, and an item it holds waits in the limiter's FIFO queue
//! through an ordinary [`RateAcquire`] — so queueing, cancellation and the
//! limiter's panic guarantees are exactly those of `acquire()`.

#![forbid(unsafe_code)]

use super::{RateAcquire, RateLimiter};
use crate::time::{DefaultTimer, Timer};
use crate::unwind::Panics;
use futures_core::Stream;
use futures_core::stream::FusedStream;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    /// The stream of [`RateLimiter::limit_stream`]: the inner stream's
    /// items, each yielded only once it has one grant of the limiter.
    ///
    /// An item the inner stream produces waits for its grant in the
    /// limiter's FIFO queue, behind every acquisition that arrived before it
    /// (other adapters' items, plain [`acquire`](RateLimiter::acquire)
    /// calls), and is then yielded. One grant per item; the end of the
    /// stream takes none. While an item waits, the inner stream is not
    /// polled: at most one item is held.
    ///
    /// It is a [`FusedStream`]: once the inner stream has ended it returns
    /// `None` forever without polling the inner stream again. It is `Unpin`
    /// when the inner stream is, `Send`/`Sync` when the inner stream and its
    /// items are, and its `size_hint` is the inner stream's plus the item it
    /// holds.
    ///
    /// # Cancel safety
    ///
    /// Dropping it while an item waits for its grant drops that item and
    /// hands its place in the queue to the next waiter at once (or gives the
    /// grant back if it was granted but not yet seen), as dropping a
    /// [`RateAcquire`] does: no grant is lost. An item that was yielded has
    /// used its grant.
    ///
    /// # Panics
    ///
    /// A panic of the inner stream's `poll_next` propagates; no item is
    /// held then, and the next poll polls the inner stream again. A panic of
    /// the user code the grant's wait runs (the wakers of other waiters it
    /// lets through, the limiter's timer) propagates as for
    /// [`RateAcquire`]; the held item keeps its place (or its grant), and
    /// the next poll goes on waiting for it. Either way the adapter and the
    /// limiter stay usable and no grant is lost.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::{RateLimitedStream, RateLimiter};
    /// use futures::{StreamExt, stream};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(2, Duration::from_secs(1));
    /// let paced: RateLimitedStream<'_, _> = limiter.limit_stream(stream::iter(["a", "b"]));
    /// assert_eq!(paced.collect::<Vec<_>>().await, ["a", "b"]);
    /// assert!(limiter.try_acquire().is_err()); // both grants of this second were used
    /// # });
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct RateLimitedStream<'a, S: Stream, T: Timer = DefaultTimer> {
        limiter: &'a RateLimiter<T>,
        // The item waiting for its grant. Dropped before the inner stream.
        held: Option<Held<'a, S::Item, T>>,
        done: bool,
        // `None` only once dropped or given up (`into_inner`).
        #[pin]
        stream: Option<S>,
    }

    /// Drops the held item (its place or grant given back) and the inner
    /// stream, each even if the other's destructor panics (neither during
    /// the other's unwind), then propagates the first panic.
    impl<'a, S: Stream, T: Timer> PinnedDrop for RateLimitedStream<'a, S, T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut panics = Held::release(this.held.take());
            let mut stream = this.stream;
            panics.catch(|| stream.set(None));
            panics.resume();
        }
    }
}

const GIVEN_UP: &str = "the inner stream is there until the adapter is dropped";

/// An item and the acquisition of its grant. Fields drop in order: the
/// reservation goes back (and the next waiter is woken) before the item's
/// destructor, user code, runs.
struct Held<'a, I, T: Timer> {
    acquire: RateAcquire<'a, T>,
    item: I,
}

impl<I, T: Timer> Held<'_, I, T> {
    /// Gives the place back (waking the next waiter), then drops the item,
    /// each even if the other panics; returns the first panic.
    fn release(held: Option<Self>) -> Panics {
        let mut panics = Panics::default();
        if let Some(Held { acquire, item }) = held {
            panics.catch(move || drop(acquire));
            panics.catch(move || drop(item));
        }
        panics
    }
}

impl<'a, S: Stream, T: Timer> RateLimitedStream<'a, S, T> {
    pub(super) fn new(limiter: &'a RateLimiter<T>, stream: S) -> Self {
        RateLimitedStream {
            limiter,
            held: None,
            done: false,
            stream: Some(stream),
        }
    }

    /// The inner stream.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::stream;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let paced = limiter.limit_stream(stream::iter(1..4));
    /// assert_eq!(futures::Stream::size_hint(paced.get_ref()), (3, Some(3)));
    /// ```
    pub fn get_ref(&self) -> &S {
        self.stream.as_ref().expect(GIVEN_UP)
    }

    /// The inner stream, mutably. Polling it directly skips the limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::stream;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let mut paced = limiter.limit_stream(stream::iter(1..4));
    /// let _inner: &mut stream::Iter<_> = paced.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        self.stream.as_mut().expect(GIVEN_UP)
    }

    /// The pinned inner stream. Polling it directly skips the limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::stream;
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let mut paced = pin!(limiter.limit_stream(stream::iter(1..4)));
    /// let _inner = paced.as_mut().get_pin_mut();
    /// ```
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().stream.as_pin_mut().expect(GIVEN_UP)
    }

    /// The inner stream, giving the adapter up. An item waiting for its
    /// grant is dropped and its place in the queue handed on, as when the
    /// adapter is dropped.
    ///
    /// # Panics
    ///
    /// If the held item's destructor panics, or a waker of the next waiter
    /// woken by giving its place back does (as for dropping a
    /// [`RateAcquire`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::{StreamExt, stream};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(1, Duration::from_secs(1));
    /// let mut paced = limiter.limit_stream(stream::iter(1..4));
    /// assert_eq!(paced.next().await, Some(1));
    /// let rest: Vec<_> = paced.into_inner().collect().await; // no longer limited
    /// assert_eq!(rest, [2, 3]);
    /// # });
    /// ```
    pub fn into_inner(mut self) -> S {
        let held = self.held.take();
        let stream = self.stream.take().expect(GIVEN_UP);
        // If the item's destructor panics, the stream is dropped (not
        // leaked) before the panic propagates.
        crate::unwind::hand_back(Held::release(held), stream)
    }

    /// Whether an item is waiting for its grant.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::RateLimiter;
    /// use futures::{FutureExt, StreamExt, stream};
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let limiter = RateLimiter::new(1, Duration::from_secs(60));
    /// let mut paced = limiter.limit_stream(stream::iter(1..4));
    /// assert_eq!(paced.next().await, Some(1));
    /// assert!(paced.next().now_or_never().is_none()); // item 2 waits a minute
    /// assert!(paced.is_waiting());
    /// assert_eq!(limiter.waiting(), 1);
    /// # });
    /// ```
    pub fn is_waiting(&self) -> bool {
        self.held.is_some()
    }
}

impl<S: Stream, T: Timer> Stream for RateLimitedStream<'_, S, T> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if this.held.is_none() {
            // A panic here leaves nothing held: the next poll polls again.
            let stream = this.stream.as_pin_mut().expect(GIVEN_UP);
            match ready!(stream.poll_next(cx)) {
                Some(item) => {
                    *this.held = Some(Held {
                        acquire: this.limiter.acquire(),
                        item,
                    });
                }
                None => {
                    *this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
        let held = this.held.as_mut().expect("an item is held here");
        // Joins the FIFO queue at the first poll. A panic here (another
        // waiter's waker, the timer) leaves the acquisition in place, queued
        // or granted: the next poll goes on with it, a drop gives it back.
        ready!(Pin::new(&mut held.acquire).poll(cx));
        let Held { acquire, item } = this.held.take().expect("an item is held here");
        // Completed: dropping it runs no user code.
        drop(acquire);
        Poll::Ready(Some(item))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let held = usize::from(self.held.is_some());
        let (low, high) = self.get_ref().size_hint();
        (
            low.saturating_add(held),
            high.and_then(|h| h.checked_add(held)),
        )
    }
}

/// Terminated once the inner stream has ended: it then returns `None`
/// forever, without polling the inner stream again.
impl<S: Stream, T: Timer> FusedStream for RateLimitedStream<'_, S, T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<S: Stream, T: Timer> fmt::Debug for RateLimitedStream<'_, S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitedStream")
            .field("waiting", &self.held.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
