//! Adversarial review 2: AsCompleted::iter/iter_mut, staggered_race,
//! RateLimiter::limit_stream.

use awaitkit::{AsCompleted, staggered_race};
use futures::future::{BoxFuture, FutureExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

fn keys<F: Future>(set: &AsCompleted<F>) -> Vec<usize> {
    let mut k: Vec<usize> = set.iter().map(|(i, _)| i).collect();
    k.sort();
    k
}

fn keys_mut<F: Future>(set: &mut AsCompleted<F>) -> Vec<usize> {
    let mut k: Vec<usize> = set.iter_mut().map(|(i, _)| i).collect();
    k.sort();
    k
}

#[test]
fn iter_keys_after_slot_reuse_and_clear() {
    let mut set: AsCompleted<BoxFuture<'static, usize>> = AsCompleted::new();
    for i in 0..5 {
        if i % 2 == 1 {
            set.push(async move { i }.boxed());
        } else {
            set.push(futures::future::pending().boxed());
        }
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = vec![];
    while let Poll::Ready(Some((k, v))) = set.poll_next_indexed(&mut cx) {
        assert_eq!(k, v);
        got.push(k);
    }
    got.sort();
    assert_eq!(got, [1, 3]);
    assert_eq!(keys(&set), [0, 2, 4]);
    // Reuse freed slots.
    for _ in 0..4 {
        set.push(futures::future::pending().boxed());
    }
    assert_eq!(keys(&set), [0, 2, 4, 5, 6, 7, 8]);
    assert_eq!(keys_mut(&mut set), [0, 2, 4, 5, 6, 7, 8]);
    let mut it = set.iter();
    for left in (0..7).rev() {
        assert!(it.next().is_some());
        assert_eq!(it.len(), left);
        assert_eq!(it.size_hint(), (left, Some(left)));
    }
    assert!(it.next().is_none());
    assert!(it.next().is_none());
    set.clear();
    assert_eq!(set.iter().len(), 0);
    assert_eq!(set.iter().count(), 0);
    assert_eq!(set.iter_mut().count(), 0);
    assert_eq!(set.push(futures::future::pending().boxed()), 9);
    assert_eq!(keys(&set), [9]);
}

/// A child whose poll panics stays in the set (not dropped): iter must agree with len.
#[test]
fn iter_after_child_poll_panic_agrees_with_len() {
    let mut set: AsCompleted<BoxFuture<'static, ()>> = AsCompleted::new();
    set.push(async { panic!("boom") }.boxed());
    set.push(futures::future::pending().boxed());
    let mut cx = Context::from_waker(Waker::noop());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        set.poll_next_indexed(&mut cx)
    }));
    assert!(r.is_err());
    assert_eq!(set.iter().count(), set.len());
    assert_eq!(set.iter_mut().count(), set.len());
}

/// Lying exact size hints on construction.
#[test]
fn iter_keys_with_lying_size_hint() {
    struct Lie(std::ops::Range<usize>, usize);
    impl Iterator for Lie {
        type Item = futures::future::Pending<()>;
        fn next(&mut self) -> Option<Self::Item> {
            self.0.next().map(|_| futures::future::pending())
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.1, Some(self.1))
        }
    }
    for (real, claimed) in [(5, 2), (2, 5), (3, 0), (0, 3)] {
        let mut set = awaitkit::as_completed(Lie(0..real, claimed));
        assert_eq!(set.len(), real);
        assert_eq!(keys(&set), (0..real).collect::<Vec<_>>());
        assert_eq!(set.iter().len(), real);
        assert_eq!(set.push(futures::future::pending()), real);
        assert_eq!(keys_mut(&mut set), (0..=real).collect::<Vec<_>>());
    }
}

// ---------------- staggered_race ----------------

struct Lying<I>(I, (usize, Option<usize>));
impl<I: Iterator> Iterator for Lying<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.1
    }
}

fn run<F: Future + Unpin>(f: &mut F, max: usize) -> (Option<F::Output>, usize) {
    let mut cx = Context::from_waker(Waker::noop());
    for n in 1..=max {
        if let Poll::Ready(v) = Pin::new(&mut *f).poll(&mut cx) {
            return (Some(v), n);
        }
    }
    (None, max)
}

#[test]
fn staggered_lying_size_hint_zero_still_runs_all() {
    let fs = (0..3u8).map(|i| move || std::future::ready(Err::<u8, u8>(i)));
    let mut race = staggered_race(Lying(fs, (0, Some(0))), Duration::MAX);
    let (out, _) = run(&mut race, 100);
    assert_eq!(out, Some(Err(vec![0, 1, 2])));
}

#[test]
fn staggered_lying_size_hint_big_ends() {
    let fs = (0..1u8).map(|i| move || std::future::ready(Err::<u8, u8>(i)));
    let mut race = staggered_race(Lying(fs, (9, Some(9))), Duration::MAX);
    let (out, _) = run(&mut race, 100);
    assert_eq!(out, Some(Err(vec![0])));
    let fs = (0..1u8).map(|_| move || futures::future::pending::<Result<u8, u8>>());
    let mut race = staggered_race(Lying(fs, (9, Some(9))), Duration::ZERO);
    let (out, _) = run(&mut race, 100);
    assert_eq!(out, None);
    assert_eq!(race.started(), 1);
}

struct Tracked(Arc<AtomicUsize>);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn staggered_drop_midway_drops_each_started_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let made = Arc::new(AtomicUsize::new(0));
    let fs: Vec<_> = (0..10)
        .map(|_| {
            let (drops, made) = (drops.clone(), made.clone());
            move || {
                made.fetch_add(1, SeqCst);
                let t = Tracked(drops);
                async move {
                    let _t = t;
                    futures::future::pending::<Result<(), ()>>().await
                }
                .boxed()
            }
        })
        .collect();
    let mut race = staggered_race(fs, Duration::ZERO);
    let _ = run(&mut race, 4);
    let started = race.started();
    assert!(started >= 2);
    assert_eq!(made.load(SeqCst), started);
    drop(race);
    assert_eq!(drops.load(SeqCst), started);
}

#[test]
fn staggered_factory_panic_then_drop() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    #[allow(clippy::type_complexity)]
    let fs: Vec<Box<dyn FnOnce() -> BoxFuture<'static, Result<(), ()>>>> = vec![
        Box::new(move || {
            let t = Tracked(d);
            async move {
                let _t = t;
                futures::future::pending().await
            }
            .boxed()
        }),
        Box::new(|| panic!("factory")),
    ];
    let mut race = staggered_race(fs, Duration::ZERO);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut race, 5)));
    assert!(r.is_err());
    drop(race);
    assert_eq!(drops.load(SeqCst), 1);
}

// ---------------- limit_stream ----------------

#[cfg(feature = "test-util")]
mod stream {
    use awaitkit::RateLimiter;
    use awaitkit::time::ManualClock;
    use futures::{Stream, StreamExt, stream};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    fn pn<S: Stream + Unpin>(s: &mut S) -> Poll<Option<S::Item>> {
        Pin::new(s).poll_next(&mut Context::from_waker(Waker::noop()))
    }
    fn pf<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn fifo_with_plain_acquire_and_no_lost_grant_on_drop() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone());
        let mut s = limiter.limit_stream(stream::iter(0..3));
        assert_eq!(pn(&mut s), Poll::Ready(Some(0)));
        assert_eq!(pn(&mut s), Poll::Pending);
        assert!(s.is_waiting());
        let mut a = Box::pin(limiter.acquire());
        assert!(pf(&mut a).is_pending());
        clock.advance(Duration::from_secs(1));
        // FIFO: the stream's held item was first.
        assert!(pf(&mut a).is_pending());
        assert_eq!(pn(&mut s), Poll::Ready(Some(1)));
        assert_eq!(pn(&mut s), Poll::Pending);
        clock.advance(Duration::from_secs(1));
        // The plain acquire is ahead of item 2.
        assert_eq!(pn(&mut s), Poll::Pending);
        assert!(pf(&mut a).is_ready());
        let mut b = Box::pin(limiter.acquire());
        assert!(pf(&mut b).is_pending());
        clock.advance(Duration::from_secs(1));
        // Item 2 is granted (not yet polled); drop the stream: b must get it.
        drop(s);
        assert!(pf(&mut b).is_ready());
    }

    #[test]
    fn panicking_waker_leaves_stream_usable() {
        use std::sync::Arc;
        use std::task::Wake;
        struct Boom;
        impl Wake for Boom {
            fn wake(self: Arc<Self>) {
                panic!("waker");
            }
        }
        let clock = ManualClock::new();
        let limiter = RateLimiter::new(1, Duration::from_secs(1)).with_timer(clock.clone());
        let mut a = Box::pin(limiter.acquire());
        assert!(pf(&mut a).is_ready());
        let mut b = Box::pin(limiter.acquire());
        let boom = Waker::from(Arc::new(Boom));
        assert!(
            b.as_mut()
                .poll(&mut Context::from_waker(&boom))
                .is_pending()
        );
        let mut s = limiter.limit_stream(stream::iter(0..2));
        assert_eq!(pn(&mut s), Poll::Pending);
        clock.advance(Duration::from_secs(1));
        // Dropping b hands its place on (the stream is next).
        drop(b);
        let mut got = vec![];
        if let Ok(Poll::Ready(Some(x))) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pn(&mut s)))
        {
            got.push(x);
        }
        for _ in 0..5 {
            if let Poll::Ready(Some(x)) = pn(&mut s) {
                got.push(x);
            }
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(got, [0, 1]);
        drop(s.next());
    }
}
