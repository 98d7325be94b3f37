//! Auto traits follow the children (SPEC §1.10): every combinator is `Send`
//! / `Sync` when its children (and outputs) are, not when they are not, and
//! always `Unpin`.
//!
//! Positive cases are also checked at compile time by generic functions;
//! negative cases use autoref specialization (a method found on `Probe<T>`
//! when `T: Trait`, and on `&Probe<T>` otherwise), which is decided at
//! compile time for concrete types and read at run time.

use crate::common;

use awaitkit::{
    AsCompleted, AsCompletedIndexed, Gather, GatherSettled, GatherTuple, Panicked, ReturnWhen,
    TryGather, TryGatherTuple, Wait, WaitAny, WaitOutcome, as_completed, gather, gather_settled,
    try_gather, try_wait, wait, wait_any,
};
use common::{Counter, NoMove, YieldN};
use std::cell::Cell;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::rc::Rc;

struct Probe<T>(PhantomData<T>);

fn probe<T>(_: &T) -> Probe<T> {
    Probe(PhantomData)
}

trait IsSend {
    fn is_send(&self) -> bool {
        true
    }
}
impl<T: Send> IsSend for Probe<T> {}
trait NotSend {
    fn is_send(&self) -> bool {
        false
    }
}
impl<T> NotSend for &Probe<T> {}

trait IsSync {
    fn is_sync(&self) -> bool {
        true
    }
}
impl<T: Sync> IsSync for Probe<T> {}
trait NotSync {
    fn is_sync(&self) -> bool {
        false
    }
}
impl<T> NotSync for &Probe<T> {}

trait IsUnpin {
    fn is_unpin(&self) -> bool {
        true
    }
}
impl<T: Unpin> IsUnpin for Probe<T> {}
trait NotUnpin {
    fn is_unpin(&self) -> bool {
        false
    }
}
impl<T> NotUnpin for &Probe<T> {}

/// `(send, sync, unpin)` of the value's type.
macro_rules! traits {
    ($value:expr) => {{
        let value = $value;
        let p = probe(&value);
        ((&p).is_send(), (&p).is_sync(), (&p).is_unpin())
    }};
}

fn send_sync_unpin<T: Send + Sync + Unpin + Debug>(value: T) -> T {
    let _ = format!("{value:?}");
    value
}

fn send_unpin<T: Send + Unpin + Debug>(value: T) -> T {
    let _ = format!("{value:?}");
    value
}

fn unpin<T: Unpin + Debug>(value: T) -> T {
    let _ = format!("{value:?}");
    value
}

const ALL: (bool, bool, bool) = (true, true, true);
const SEND_ONLY: (bool, bool, bool) = (true, false, true);
const NEITHER: (bool, bool, bool) = (false, false, true);

/// A `Send + Sync` but `!Unpin` child.
fn pinned_child() -> NoMove<YieldN<u8>> {
    NoMove::new(YieldN::new(1, 1, &Counter::new()))
}

type SendSync = Ready<u8>;
type SendNotSync = Ready<Cell<u8>>;
type NotSendNotSync = Ready<Rc<u8>>;

#[test]
fn probe_sanity() {
    assert_eq!(traits!(1u8), ALL);
    assert_eq!(traits!(Cell::new(1u8)), SEND_ONLY);
    assert_eq!(traits!(Rc::new(1u8)), NEITHER);
    assert!(!traits!(std::marker::PhantomPinned).2);
}

#[test]
fn gather_follows_children() {
    let g: Gather<SendSync> = send_sync_unpin(gather([ready(1u8)]));
    assert_eq!(traits!(g), ALL);
    assert_eq!(
        traits!(send_unpin(gather([ready(Cell::new(1u8))]))),
        SEND_ONLY
    );
    assert_eq!(traits!(unpin(gather([ready(Rc::new(1u8))]))), NEITHER);
    // `!Unpin` children: still `Unpin`, `Send` and `Sync`.
    assert_eq!(traits!(send_sync_unpin(gather([pinned_child()]))), ALL);
    assert!(traits!(gather([async { 1 }])).0);
    assert!(traits!(gather([async { 1 }])).2);
    // A `Send` child with a `!Send` output: the outputs are stored.
    assert!(!traits!(gather([async { Rc::new(1) }])).0);
}

#[test]
fn try_gather_follows_children() {
    let g: TryGather<Ready<Result<u8, ()>>> = send_sync_unpin(try_gather([ready(Ok::<u8, ()>(1))]));
    assert_eq!(traits!(g), ALL);
    assert_eq!(
        traits!(try_gather([ready(Ok::<_, ()>(Cell::new(1)))])),
        SEND_ONLY
    );
    assert_eq!(
        traits!(try_gather([ready(Ok::<_, ()>(Rc::new(1)))])),
        NEITHER
    );
    assert!(traits!(try_gather([async { Ok::<u8, ()>(1) }])).2);
}

#[test]
fn gather_settled_follows_children() {
    let g: GatherSettled<SendSync> = send_sync_unpin(gather_settled([ready(1u8)]));
    // `Panicked` is `Sync` (its payload is never shared), so the vector of
    // settled outcomes is too.
    assert_eq!(traits!(g), ALL);
    assert_eq!(traits!(gather_settled([ready(Cell::new(1u8))])), SEND_ONLY);
    assert_eq!(traits!(gather_settled([ready(Rc::new(1u8))])), NEITHER);
    assert!(traits!(gather_settled([pinned_child()])).2);
}

#[test]
fn panicked_is_send_sync_and_unpin() {
    let p: Panicked = futures::executor::block_on(gather_settled([async { panic!("x") }]))
        .pop()
        .unwrap()
        .unwrap_err();
    let p = send_sync_unpin(p);
    assert_eq!(traits!(p), ALL);
}

#[test]
fn return_when_is_plain_data() {
    let w = send_sync_unpin(ReturnWhen::FirstCompleted);
    let copy = w;
    assert_eq!(w, copy);
}

#[test]
fn gather_tuple_follows_children() {
    let g: GatherTuple<(Ready<u8>, Ready<char>)> =
        send_sync_unpin(awaitkit::gather!(ready(1u8), ready('a')));
    assert_eq!(traits!(g), ALL);
    assert_eq!(
        traits!(awaitkit::gather!(ready(1u8), ready(Cell::new(1u8)))),
        SEND_ONLY
    );
    assert_eq!(
        traits!(awaitkit::gather!(ready(1u8), ready(Rc::new(1u8)))),
        NEITHER
    );
    assert_eq!(
        traits!(send_sync_unpin(awaitkit::gather!(
            pinned_child(),
            pinned_child()
        ))),
        ALL
    );
    assert_eq!(traits!(awaitkit::gather!()), ALL);
    assert!(traits!(awaitkit::gather!(async { 1 }, async { 'a' })).2);
}

#[test]
fn try_gather_tuple_follows_children() {
    let g: TryGatherTuple<(Ready<Result<u8, ()>>,)> =
        send_sync_unpin(awaitkit::try_gather!(ready(Ok::<u8, ()>(1))));
    assert_eq!(traits!(g), ALL);
    assert_eq!(
        traits!(awaitkit::try_gather!(ready(Ok::<_, ()>(Cell::new(1))))),
        SEND_ONLY
    );
    assert_eq!(
        traits!(awaitkit::try_gather!(ready(Ok::<_, ()>(Rc::new(1))))),
        NEITHER
    );
    assert!(traits!(awaitkit::try_gather!(async { Ok::<u8, ()>(1) })).2);
}

#[test]
fn as_completed_follows_children() {
    let s: AsCompleted<SendSync> = send_sync_unpin(as_completed([ready(1u8)]));
    assert_eq!(traits!(s), ALL);
    let s: AsCompletedIndexed<SendSync> = send_sync_unpin(as_completed([ready(1u8)]).indexed());
    assert_eq!(traits!(s), ALL);
    assert_eq!(traits!(AsCompleted::<SendNotSync>::new()), SEND_ONLY);
    assert_eq!(
        traits!(AsCompleted::<SendNotSync>::new().indexed()),
        SEND_ONLY
    );
    assert_eq!(traits!(AsCompleted::<NotSendNotSync>::new()), NEITHER);
    assert_eq!(
        traits!(AsCompleted::<NotSendNotSync>::new().indexed()),
        NEITHER
    );
    assert_eq!(
        traits!(send_sync_unpin(as_completed([pinned_child()]))),
        ALL
    );
    assert_eq!(
        traits!(send_sync_unpin(as_completed([pinned_child()]).indexed())),
        ALL
    );
}

#[test]
fn wait_any_follows_children() {
    let f: WaitAny<SendSync> = send_sync_unpin(wait_any([ready(1u8)]));
    assert_eq!(traits!(f), ALL);
    assert_eq!(traits!(wait_any([ready(Cell::new(1u8))])), SEND_ONLY);
    assert_eq!(traits!(wait_any([ready(Rc::new(1u8))])), NEITHER);
    assert_eq!(traits!(send_sync_unpin(wait_any([pinned_child()]))), ALL);
}

#[test]
fn wait_and_outcome_follow_children() {
    let f: Wait<SendSync> = send_sync_unpin(wait([ready(1u8)], ReturnWhen::AllCompleted));
    assert_eq!(traits!(f), ALL);
    let f = send_sync_unpin(try_wait([ready(Ok::<u8, ()>(1))], ReturnWhen::FirstError));
    assert_eq!(traits!(f), ALL);
    assert_eq!(
        traits!(wait([ready(Cell::new(1u8))], ReturnWhen::AllCompleted)),
        SEND_ONLY
    );
    assert_eq!(
        traits!(wait([ready(Rc::new(1u8))], ReturnWhen::AllCompleted)),
        NEITHER
    );
    assert_eq!(
        traits!(send_sync_unpin(wait(
            [pinned_child()],
            ReturnWhen::AllCompleted
        ))),
        ALL
    );

    let out: WaitOutcome<SendSync> =
        futures::executor::block_on(wait([ready(1u8)], ReturnWhen::AllCompleted));
    let out = send_sync_unpin(out);
    assert_eq!(traits!(out), ALL);
    let out = futures::executor::block_on(wait([ready(Cell::new(1u8))], ReturnWhen::AllCompleted));
    assert_eq!(traits!(out), SEND_ONLY);
    let out = futures::executor::block_on(wait([ready(Rc::new(1u8))], ReturnWhen::AllCompleted));
    assert_eq!(traits!(out), NEITHER);
    let out = futures::executor::block_on(wait([pinned_child()], ReturnWhen::AllCompleted));
    assert_eq!(traits!(send_sync_unpin(out)), ALL);
}

// ---------------------------------------------------------------------------
// Time: `Timeout`, `Elapsed`, deadlines, timers
// ---------------------------------------------------------------------------

mod time {
    use super::*;
    use awaitkit::time::{FuturesSleep, FuturesTimer};
    use awaitkit::{AsCompletedUntil, Elapsed, TimedOut, Timeout, Timer, timeout};
    use std::pin::Pin;
    use std::time::{Duration, Instant};

    const SEC: Duration = Duration::from_secs(1);

    /// A timer that is neither `Send` nor `Sync` (its sleep is).
    #[derive(Clone, Debug, Default)]
    struct LocalTimer(PhantomData<Rc<()>>);

    impl Timer for LocalTimer {
        type Sleep = FuturesSleep;
        fn now(&self) -> Instant {
            FuturesTimer.now()
        }
        fn sleep_until(&self, deadline: Instant) -> FuturesSleep {
            FuturesTimer.sleep_until(deadline)
        }
        fn reset(&self, sleep: Pin<&mut FuturesSleep>, deadline: Instant) {
            FuturesTimer.reset(sleep, deadline)
        }
    }

    /// A `Send + Sync` timer whose sleep is neither.
    #[derive(Clone, Copy, Debug, Default)]
    struct LocalSleepTimer;

    struct LocalSleep(FuturesSleep, PhantomData<Rc<()>>);

    impl std::future::Future for LocalSleep {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            Pin::new(&mut self.0).poll(cx)
        }
    }

    impl Timer for LocalSleepTimer {
        type Sleep = LocalSleep;
        fn now(&self) -> Instant {
            FuturesTimer.now()
        }
        fn sleep_until(&self, deadline: Instant) -> LocalSleep {
            LocalSleep(FuturesTimer.sleep_until(deadline), PhantomData)
        }
        fn reset(&self, mut sleep: Pin<&mut LocalSleep>, deadline: Instant) {
            FuturesTimer.reset(Pin::new(&mut sleep.0), deadline)
        }
    }

    fn error_traits<E: std::error::Error + Clone + PartialEq + Send + Sync + Unpin + 'static>(
        e: E,
    ) -> E {
        e
    }

    #[test]
    fn timeout_follows_inner_timer_and_sleep() {
        let t: Timeout<SendSync> = send_sync_unpin(timeout(SEC, ready(1u8)));
        assert_eq!(traits!(t), ALL);
        let t: Timeout<SendSync, FuturesTimer> =
            send_sync_unpin(timeout(SEC, ready(1u8)).with_timer(FuturesTimer));
        assert_eq!(traits!(t), ALL);
        assert_eq!(traits!(timeout(SEC, ready(Cell::new(1u8)))), SEND_ONLY);
        assert_eq!(traits!(timeout(SEC, ready(Rc::new(1u8)))), NEITHER);
        // `Unpin` only with an `Unpin` inner future (it is pinned in place).
        assert_eq!(traits!(timeout(SEC, pinned_child())), (true, true, false));
        assert_eq!(traits!(timeout(SEC, async { 1 })), (true, true, false));
        // The timer and its sleep count too.
        assert_eq!(
            traits!(timeout(SEC, ready(1u8)).with_timer(LocalTimer::default())),
            NEITHER
        );
        assert_eq!(
            traits!(timeout(SEC, ready(1u8)).with_timer(LocalSleepTimer)),
            NEITHER
        );
    }

    #[test]
    fn elapsed_is_a_plain_error() {
        let e = send_sync_unpin(error_traits(Elapsed::new()));
        assert_eq!(traits!(e), ALL);
        let copy = e;
        assert_eq!(copy, e);
    }

    #[test]
    fn timers_are_plain_handles() {
        assert_eq!(traits!(send_sync_unpin(FuturesTimer)), ALL);
        assert_eq!(traits!(FuturesTimer.sleep_until(Instant::now())), ALL);
    }

    #[test]
    fn timed_wait_is_always_unpin_and_follows_children() {
        let w: Wait<SendSync> =
            send_sync_unpin(wait([ready(1u8)], ReturnWhen::AllCompleted).with_timeout(SEC));
        assert_eq!(traits!(w), ALL);
        assert_eq!(
            traits!(send_sync_unpin(
                wait([pinned_child()], ReturnWhen::AllCompleted).with_timeout(SEC)
            )),
            ALL
        );
        assert_eq!(
            traits!(wait([ready(Cell::new(1u8))], ReturnWhen::AllCompleted).with_timeout(SEC)),
            SEND_ONLY
        );
        // A `!Send` timer or sleep: still `Unpin` (the sleep is boxed).
        assert_eq!(
            traits!(unpin(
                wait([ready(1u8)], ReturnWhen::AllCompleted).with_timer(LocalTimer::default())
            )),
            NEITHER
        );
        assert_eq!(
            traits!(unpin(
                wait([pinned_child()], ReturnWhen::AllCompleted).with_timer(LocalSleepTimer)
            )),
            NEITHER
        );
    }

    #[test]
    fn as_completed_until_is_always_unpin_and_follows_children() {
        let s: AsCompletedUntil<AsCompleted<SendSync>> =
            send_sync_unpin(as_completed([ready(1u8)]).with_timeout(SEC));
        assert_eq!(traits!(s), ALL);
        assert_eq!(
            traits!(send_sync_unpin(
                as_completed([pinned_child()]).indexed().with_timeout(SEC)
            )),
            ALL
        );
        assert_eq!(
            traits!(AsCompleted::<SendNotSync>::new().with_timeout(SEC)),
            SEND_ONLY
        );
        assert_eq!(
            traits!(AsCompleted::<NotSendNotSync>::new().with_timeout(SEC)),
            NEITHER
        );
        assert_eq!(
            traits!(unpin(
                as_completed([pinned_child()])
                    .with_timeout(SEC)
                    .with_timer(LocalSleepTimer)
            )),
            NEITHER
        );
        let marker: TimedOut<AsCompleted<SendSync>> = TimedOut {
            pending: as_completed([ready(1u8)]),
        };
        assert_eq!(traits!(send_sync_unpin(marker)), ALL);
        let marker = TimedOut {
            pending: AsCompleted::<NotSendNotSync>::new(),
        };
        assert_eq!(traits!(marker), NEITHER);
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn manual_clock_is_a_shared_handle() {
        use awaitkit::time::ManualClock;
        let clock = send_sync_unpin(ManualClock::new());
        let other = clock.clone();
        assert_eq!(traits!(other), ALL);
        assert_eq!(
            traits!(send_sync_unpin(clock.sleep_until(clock.now()))),
            ALL
        );
        assert_eq!(
            traits!(send_sync_unpin(
                timeout(SEC, ready(1u8)).with_timer(clock.clone())
            )),
            ALL
        );
        assert_eq!(
            traits!(send_sync_unpin(
                wait([pinned_child()], ReturnWhen::AllCompleted).with_timer(clock.clone())
            )),
            ALL
        );
        assert_eq!(
            traits!(send_sync_unpin(
                as_completed([ready(1u8)])
                    .with_timeout(SEC)
                    .with_timer(clock)
            )),
            ALL
        );
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn tokio_timer_sleep_is_pinned_but_deadlines_stay_unpin() {
        use awaitkit::time::TokioTimer;
        assert_eq!(traits!(send_sync_unpin(TokioTimer)), ALL);
        // tokio's `Sleep` is `!Unpin`, so a `Timeout` on it is too...
        assert_eq!(
            traits!(timeout(SEC, ready(1u8)).with_timer(TokioTimer)),
            (true, true, false)
        );
        // ...but the deadline combinators box their sleep.
        assert_eq!(
            traits!(send_sync_unpin(
                wait([ready(1u8)], ReturnWhen::AllCompleted).with_timer(TokioTimer)
            )),
            ALL
        );
        assert_eq!(
            traits!(send_sync_unpin(
                as_completed([pinned_child()])
                    .with_timeout(SEC)
                    .with_timer(TokioTimer)
            )),
            ALL
        );
    }

    #[cfg(feature = "async-io")]
    #[test]
    fn async_io_timer_is_send_sync_unpin() {
        use awaitkit::time::AsyncIoTimer;
        assert_eq!(traits!(send_sync_unpin(AsyncIoTimer)), ALL);
        assert_eq!(
            traits!(send_sync_unpin(
                timeout(SEC, ready(1u8)).with_timer(AsyncIoTimer)
            )),
            ALL
        );
    }
}

mod retry {
    use super::*;
    use awaitkit::{AttemptError, Backoff, RetryConfigError, RetryError, RetryPolicy};

    #[test]
    fn retry_is_always_unpin_and_send_sync_follow_its_parts() {
        let policy = RetryPolicy::new(2).backoff(Backoff::none());
        let r = send_sync_unpin(policy.retry(|| ready(Ok::<u8, ()>(1))));
        assert_eq!(traits!(r), ALL);
        // `!Unpin` attempts are kept on the heap: the retry stays `Unpin`.
        assert_eq!(traits!(policy.retry(|| async { Ok::<u8, ()>(1) })), ALL);
        // `!Send` attempts make a `!Send` retry (it keeps one alive).
        let r = policy.retry(|| ready(Ok::<_, ()>(Rc::new(1u8))));
        assert_eq!(traits!(r), NEITHER);
        // A `!Send` error that the attempt does not hold: the retry keeps
        // no error between attempts unless it is rate-limited.
        let r = policy.retry(|| async { Err::<u8, _>(Rc::new(1u8)) });
        assert_eq!(traits!(r), ALL);
        let limiter = awaitkit::RateLimiter::new(1, std::time::Duration::from_secs(1));
        let r = policy.retry(|| ready(Ok::<u8, ()>(1))).rate_limit(&limiter);
        assert_eq!(traits!(send_sync_unpin(r)), ALL);
        let r = policy
            .retry(|| ready(Err::<u8, u8>(1)))
            .retry_if(|_| true)
            .on_retry(|_| {});
        assert_eq!(traits!(send_sync_unpin(r)), ALL);
    }

    #[test]
    fn retry_values_are_send_sync_unpin() {
        send_sync_unpin(RetryPolicy::new(1));
        send_sync_unpin(Backoff::default());
        send_sync_unpin(RetryConfigError::ZeroAttempts);
        send_sync_unpin(AttemptError::Failed(1u8));
        fn error<E: std::error::Error + Send + Sync + Unpin + 'static>() {}
        error::<RetryError<std::io::Error>>();
        error::<RetryConfigError>();
    }
}

mod staggered_race {
    use super::*;
    use awaitkit::{StaggeredRace, staggered_race};
    use std::time::Duration;

    const D: Duration = Duration::from_millis(1);

    /// A `!Send` factory (defined out of line: a closure's captures are
    /// only known once its function is checked).
    fn rc_factory() -> impl FnOnce() -> Ready<Result<u8, ()>> {
        let rc = Rc::new(1u8);
        move || ready(Ok(*rc))
    }

    #[test]
    fn staggered_race_is_always_unpin_and_send_sync_follow_its_parts() {
        let r: StaggeredRace<_, Ready<Result<u8, ()>>> =
            send_sync_unpin(staggered_race([|| ready(Ok::<u8, ()>(1))], D));
        assert_eq!(traits!(r), ALL);
        // `!Unpin` attempts are pinned inside: still `Unpin`.
        assert_eq!(
            traits!(send_sync_unpin(staggered_race(
                [|| async { Ok::<u8, ()>(1) }],
                D
            ))),
            ALL
        );
        assert_eq!(
            traits!(send_sync_unpin(staggered_race(
                [|| async { Ok::<u8, ()>(pinned_child().await.0) }],
                D
            ))),
            ALL
        );
        // The errors are kept: a `Send`, `!Sync` error makes it `!Sync`.
        assert_eq!(
            traits!(send_unpin(staggered_race(
                [|| ready(Err::<u8, _>(Cell::new(1u8)))],
                D
            ))),
            SEND_ONLY
        );
        // `!Send` attempts, or `!Send` factories: `!Send`, still `Unpin`.
        assert_eq!(
            traits!(unpin(staggered_race(
                [|| ready(Ok::<_, ()>(Rc::new(1u8)))],
                D
            ))),
            NEITHER
        );
        assert_eq!(traits!(unpin(staggered_race([rc_factory()], D))), NEITHER);
    }

    #[cfg(feature = "test-util")]
    #[test]
    fn staggered_race_on_the_manual_clock() {
        let clock = awaitkit::time::ManualClock::new();
        let r = staggered_race([|| async { Ok::<u8, ()>(1) }], D).with_timer(clock);
        assert_eq!(traits!(send_sync_unpin(r)), ALL);
    }
}

mod semaphore {
    use super::*;
    use awaitkit::{AcquireError, PollSemaphore, Semaphore, TryAcquireError};
    use std::sync::Arc;

    #[test]
    fn semaphore_types_are_send_sync_unpin() {
        let sem = send_sync_unpin(Semaphore::new(2));
        drop(send_sync_unpin(sem.acquire()));
        let _ = send_sync_unpin(sem.try_acquire().unwrap());
        let sem = Arc::new(Semaphore::new(2));
        drop(send_sync_unpin(sem.clone().acquire_owned()));
        let _ = send_sync_unpin(sem.clone().try_acquire_owned().unwrap());
        send_sync_unpin(PollSemaphore::new(sem.clone()));
        send_sync_unpin(sem.stats());
        fn error<E: std::error::Error + Clone + PartialEq + Send + Sync + Unpin + 'static>() {}
        error::<AcquireError>();
        error::<TryAcquireError>();
    }

    #[test]
    fn limit_follows_its_future() {
        let sem = Semaphore::new(1);
        assert_eq!(traits!(send_sync_unpin(sem.limit(ready(1u8)))), ALL);
        assert_eq!(traits!(sem.limit(ready(Cell::new(1u8)))), SEND_ONLY);
        assert_eq!(traits!(sem.limit(ready(Rc::new(1u8)))), NEITHER);
        assert_eq!(traits!(sem.limit(pinned_child())), (true, true, false));
    }
}

mod rate_limiter {
    use super::*;
    use awaitkit::rate_limiter::{Quota, QuotaError, RateLimitError};
    use awaitkit::{KeyedRateLimiter, RateLimiter};
    use std::time::Duration;

    #[test]
    fn rate_limiter_types_are_send_sync_unpin() {
        let limiter = send_sync_unpin(RateLimiter::new(2, Duration::from_secs(1)));
        drop(send_sync_unpin(limiter.acquire()));
        drop(send_sync_unpin(limiter.acquire_n(2)));
        let keyed = send_sync_unpin(KeyedRateLimiter::new(2, Duration::from_secs(1)));
        drop(send_sync_unpin(keyed.acquire("k")));
        drop(send_sync_unpin(keyed.acquire_n("k", 2)));
        send_sync_unpin(Quota::window(1, Duration::from_secs(1)).unwrap());
        fn error<E: std::error::Error + Copy + PartialEq + Send + Sync + Unpin + 'static>() {}
        error::<QuotaError>();
        error::<RateLimitError>();
    }

    #[test]
    fn rate_limit_follows_its_future() {
        let limiter = RateLimiter::new(1, Duration::from_secs(1));
        assert_eq!(traits!(send_sync_unpin(limiter.limit(ready(1u8)))), ALL);
        assert_eq!(traits!(limiter.limit(ready(Cell::new(1u8)))), SEND_ONLY);
        assert_eq!(traits!(limiter.limit(ready(Rc::new(1u8)))), NEITHER);
        assert_eq!(traits!(limiter.limit(pinned_child())), (true, true, false));
    }

    #[test]
    fn rate_limited_stream_follows_its_stream() {
        use futures::stream;
        let limiter = RateLimiter::new(1, Duration::from_secs(1));
        let s = send_sync_unpin(limiter.limit_stream(stream::iter([1u8])));
        assert_eq!(traits!(s), ALL);
        let s = send_unpin(limiter.limit_stream(stream::iter([Cell::new(1u8)])));
        assert_eq!(traits!(s), SEND_ONLY);
        let s = unpin(limiter.limit_stream(stream::iter([Rc::new(1u8)])));
        assert_eq!(traits!(s), NEITHER);
        // `Unpin` follows the stream: a `!Unpin` one is pinned in place.
        let s = limiter.limit_stream(stream::once(pinned_child()));
        assert_eq!(traits!(s), (true, true, false));
    }
}

mod task_group {
    use super::*;
    use awaitkit::{
        LocalTaskGroup, LocalTaskScope, TaskGroup, TaskHandle, TaskScope, task_group,
        task_group_local,
    };

    /// A group's body holding an `Rc` across an await.
    async fn rc_body() -> Result<u8, ()> {
        let rc = Rc::new(1);
        ready(()).await;
        Ok(*rc)
    }

    #[test]
    fn task_group_is_send_and_unpin_when_its_body_is_never_sync() {
        let g = send_unpin(task_group(|tg| async move {
            tg.spawn(async { Ok::<_, ()>(1u8) }).await.unwrap()
        }));
        // The tasks are type-erased as `Send` only, so the group is not `Sync`.
        assert_eq!(traits!(g), SEND_ONLY);
        let g: TaskGroup<'_, _, ()> = unpin(task_group(|_| rc_body()));
        assert_eq!(traits!(g), NEITHER);
        // A `!Unpin` body (any `async` block): the group is still `Unpin`.
        assert!(traits!(task_group(|_| async { Ok::<_, ()>(()) })).2);
    }

    #[test]
    fn local_task_group_is_unpin_only() {
        let g: LocalTaskGroup<'_, _, ()> = unpin(task_group_local(|tg| async move {
            tg.spawn(async { Ok(Rc::new(1u8)) }).await.unwrap()
        }));
        assert_eq!(traits!(g), NEITHER);
        assert_eq!(
            traits!(task_group_local(|_| async { Ok::<_, ()>(()) })),
            NEITHER
        );
    }

    #[test]
    fn scopes_and_handles() {
        let mut scope: Option<TaskScope<'static, ()>> = None;
        let mut local: Option<LocalTaskScope<'static, ()>> = None;
        let mut handles = None;
        drop(task_group(|tg| {
            let h: TaskHandle<u8, ()> = tg.spawn(async { Ok(1u8) });
            let c: TaskHandle<Cell<u8>, ()> = tg.spawn(async { Ok(Cell::new(1u8)) });
            handles = Some((h, c));
            scope = Some(tg);
            async { Ok::<_, ()>(()) }
        }));
        let mut rc_handle = None;
        drop(task_group_local(|tg| {
            let h: TaskHandle<Rc<u8>, ()> = tg.spawn(async { Ok(Rc::new(1u8)) });
            rc_handle = Some(h);
            local = Some(tg);
            async { Ok::<_, ()>(()) }
        }));
        assert_eq!(traits!(send_sync_unpin(scope.unwrap())), ALL);
        assert_eq!(traits!(unpin(local.unwrap())), NEITHER);
        let (h, c) = handles.unwrap();
        assert_eq!(traits!(send_sync_unpin(h)), ALL);
        // The output sits behind a mutex: `Send` is enough for `Sync`.
        assert_eq!(traits!(send_sync_unpin(c)), ALL);
        assert_eq!(traits!(unpin(rc_handle.unwrap())), NEITHER);
    }
}

mod batch {
    use super::*;
    use awaitkit::{Batch, BatchConfigError, Progress, RateLimiter, TryBatch, process_batch};
    use std::time::Duration;

    #[test]
    fn batch_follows_its_calls() {
        let b: Batch<'_, _, _, SendSync> = process_batch(0..3u8, 2, ready);
        assert_eq!(traits!(send_sync_unpin(b)), ALL);
        let b = process_batch(0..3u8, 2, |i| ready(Cell::new(i)));
        assert_eq!(traits!(send_unpin(b)), SEND_ONLY);
        let b = process_batch(0..3u8, 2, |i| ready(Rc::new(i)));
        assert_eq!(traits!(unpin(b)), NEITHER);
        // `!Unpin` calls: still `Unpin`, `Send` and `Sync`.
        let b = process_batch(0..3u8, 2, |_| pinned_child());
        assert_eq!(traits!(send_sync_unpin(b)), ALL);
        assert!(traits!(process_batch(0..3u8, 2, |i| async move { i })).2);
        // `!Send` items make it `!Send`.
        assert!(!traits!(process_batch([Rc::new(1u8)], 1, |i| ready(*i))).0);
    }

    #[test]
    fn every_option_keeps_the_auto_traits() {
        let limiter = RateLimiter::new(2, Duration::from_secs(1));
        let b: TryBatch<'_, _, _, _, _, awaitkit::time::FuturesTimer> =
            process_batch(0..3u8, 2, |i| ready(Ok::<u8, String>(i)))
                .fixed_batches()
                .pause_between(Duration::from_millis(1))
                .rate_limit(&limiter)
                .on_progress(|_: &Progress| {})
                .with_timer(awaitkit::time::FuturesTimer)
                .fail_fast();
        assert_eq!(traits!(send_sync_unpin(b)), ALL);
        let b = process_batch(0..3u8, 2, |i| ready(Cell::new(i))).on_progress(|_: &Progress| {});
        assert_eq!(traits!(send_unpin(b)), SEND_ONLY);
    }

    #[test]
    fn batch_values_are_send_sync_unpin() {
        fn error<E: std::error::Error + Copy + PartialEq + Send + Sync + Unpin + 'static>() {}
        error::<BatchConfigError>();
        fn value<T: Copy + PartialEq + Debug + Send + Sync + Unpin + 'static>() {}
        value::<Progress>();
    }
}

mod pool {
    use super::*;
    use awaitkit::pool::{BuildError, Manager, PoolError};
    use awaitkit::{Pool, Pooled};

    struct M;
    impl Manager for M {
        type Object = Vec<u8>;
        type Error = std::io::Error;
        async fn create(&self) -> Result<Vec<u8>, std::io::Error> {
            Ok(Vec::new())
        }
    }

    struct LocalObjects;
    impl Manager for LocalObjects {
        type Object = Cell<u8>; // Send, not Sync
        type Error = ();
        async fn create(&self) -> Result<Cell<u8>, ()> {
            Ok(Cell::new(0))
        }
    }

    #[test]
    fn pool_types_are_send_sync_unpin() {
        let pool = send_sync_unpin(Pool::new(M, 2));
        let get = send_unpin(pool.get());
        let obj: Pooled<M> = send_sync_unpin(futures::executor::block_on(get).unwrap());
        drop(obj);
        send_sync_unpin(pool.status());
        fn error<E: std::error::Error + Send + Sync + Unpin + 'static>() {}
        error::<PoolError<std::io::Error>>();
        error::<BuildError>();
    }

    #[test]
    fn a_guard_is_sync_only_when_its_object_is() {
        let pool = Pool::new(LocalObjects, 1);
        let obj = futures::executor::block_on(pool.get()).unwrap();
        assert_eq!(traits!(obj), SEND_ONLY);
        assert_eq!(traits!(pool), ALL);
    }
}

mod watch {
    use super::*;
    use awaitkit::watch::{
        ChildReport, Outcome, Report, SlowPoll, Watch, WatchEach, WatchStats, watch,
    };
    use awaitkit::{WatchExt, gather};
    use std::fmt::Display;
    use std::hash::Hash;

    #[test]
    fn watch_follows_its_future() {
        let w: Watch<SendSync> = send_sync_unpin(watch(ready(1u8)));
        assert_eq!(traits!(w), ALL);
        // A name, a threshold and a hook change nothing.
        let w = ready(1u8)
            .watch("named")
            .threshold(std::time::Duration::ZERO)
            .on_slow_poll(|_| {});
        assert_eq!(traits!(send_sync_unpin(w)), ALL);
        assert_eq!(traits!(send_unpin(watch(ready(Cell::new(1u8))))), SEND_ONLY);
        assert_eq!(traits!(unpin(watch(ready(Rc::new(1u8))))), NEITHER);
        // `Unpin` exactly when the inner future is (it is pinned in place).
        assert_eq!(traits!(watch(pinned_child())), (true, true, false));
        assert_eq!(traits!(watch(async { 1 })), (true, true, false));
    }

    #[test]
    fn report_children_follow_their_futures() {
        let report = Report::new();
        let w: Watch<SendSync> = send_sync_unpin(report.watch("a", ready(1u8)));
        assert_eq!(traits!(w), ALL);
        assert_eq!(traits!(report.watch("b", ready(Cell::new(1u8)))), SEND_ONLY);
        assert_eq!(traits!(report.watch("c", ready(Rc::new(1u8)))), NEITHER);
        assert_eq!(
            traits!(report.watch("d", pinned_child())),
            (true, true, false)
        );
        // A combinator over watched children keeps its own rules.
        assert_eq!(
            traits!(send_sync_unpin(gather(report.watch_each([pinned_child()])))),
            ALL
        );
        // `watch_each` follows its iterator.
        let each: WatchEach<std::vec::IntoIter<SendSync>> =
            send_sync_unpin(report.watch_each(vec![ready(1u8)]));
        assert_eq!(traits!(each), ALL);
        assert_eq!(
            traits!(report.watch_each(vec![ready(Rc::new(1u8))])),
            NEITHER
        );
    }

    #[test]
    fn report_is_a_shared_handle() {
        fn handle<T: Clone + Default + Send + Sync + Unpin + Debug + Display + 'static>(t: T) -> T {
            t
        }
        let report = handle(Report::new());
        assert_eq!(traits!(report.clone()), ALL);
    }

    #[test]
    fn watch_is_as_unwind_safe_as_its_future() {
        use std::panic::{RefUnwindSafe, UnwindSafe};
        fn unwind_safe<T: UnwindSafe + RefUnwindSafe>(_: &T) {}
        unwind_safe(&watch(ready(1u8)));
        unwind_safe(&Report::new().watch("a", ready(1u8)));
    }

    #[test]
    fn watch_values_are_plain_data() {
        fn stats<T: Copy + Default + Eq + Debug + Send + Sync + Unpin + 'static>() {}
        stats::<WatchStats>();
        fn outcome<T: Copy + Eq + Hash + Debug + Send + Sync + Unpin + 'static>() {}
        outcome::<Outcome>();
        fn child<T: Clone + Eq + Debug + Display + Send + Sync + Unpin + 'static>() {}
        child::<ChildReport>();
        fn slow<'a, T: Copy + Debug + Display + Send + Sync + Unpin + 'a>() {}
        slow::<SlowPoll<'_>>();
    }
}

// ---------------------------------------------------------------------------
// Errors: `std::error::Error + Send + Sync + 'static` (checked at compile
// time), the generic ones whenever their inner error is
// ---------------------------------------------------------------------------

fn is_error<E: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn every_error_is_error_send_sync_static() {
    use awaitkit::pool::{BuildError, PoolError};
    use awaitkit::{
        AcquireError, AttemptError, BatchConfigError, Elapsed, QuotaError, RateLimitError,
        RetryConfigError, RetryError, TimedOut, TryAcquireError,
    };
    is_error::<Elapsed>();
    is_error::<AcquireError>();
    is_error::<TryAcquireError>();
    is_error::<Panicked>();
    is_error::<QuotaError>();
    is_error::<RateLimitError>();
    is_error::<RetryConfigError>();
    is_error::<BatchConfigError>();
    is_error::<BuildError>();
    // The unfinished futures handed back with a deadline's error.
    is_error::<TimedOut<AsCompleted<Ready<u8>>>>();
    is_error::<TimedOut<AsCompletedIndexed<Ready<u8>>>>();
    // Generic over the inner error: an error whenever it is.
    is_error::<AttemptError<std::io::Error>>();
    is_error::<RetryError<std::io::Error>>();
    is_error::<PoolError<std::io::Error>>();
    is_error::<RetryError<AcquireError>>();
}
