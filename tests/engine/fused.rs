//! Every named future is a `FusedFuture` and every stream a `FusedStream`,
//! so `futures::select!` takes them as they are — no `.fuse()`.
//! `is_terminated` is `false` until the future has returned its output and
//! `true` from then on: `run_fused` polls in a `select!` loop that a lying
//! `is_terminated` would make poll again after completion (which panics).

use crate::common;

use awaitkit::pool::{Manager, Pool};
use awaitkit::{
    Backoff, KeyedRateLimiter, RateLimiter, RetryPolicy, ReturnWhen, Semaphore, TimeoutExt,
    as_completed, gather, gather_settled, process_batch, task_group, task_group_local, try_gather,
    try_wait, wait, wait_any,
};
use futures::StreamExt;
use futures::future::FusedFuture;
use futures::stream::FusedStream;
use std::future::{Future, pending, ready};
use std::sync::Arc;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

/// Drives `fut` to completion in a `select!` loop with a `complete` branch,
/// checking `is_terminated` before and after.
async fn run_fused<F: FusedFuture + Unpin>(mut fut: F) -> F::Output {
    assert!(!fut.is_terminated(), "terminated before it was polled");
    let mut out = None;
    loop {
        futures::select! {
            o = fut => {
                assert!(out.is_none(), "`select!` polled it after completion");
                out = Some(o);
            }
            complete => break,
        }
    }
    assert!(fut.is_terminated(), "not terminated after returning");
    out.expect("the future completed")
}

/// Races `fut` against a future that never finishes (an acquire on a
/// semaphore whose only permit is held: itself a fused awaitkit future).
async fn race_never<F: FusedFuture + Unpin>(mut fut: F) -> F::Output {
    let sem = Semaphore::new(1);
    let _held = sem.try_acquire().unwrap();
    let mut never = sem.acquire();
    assert!(!fut.is_terminated() && !never.is_terminated());
    let out = futures::select! {
        o = fut => o,
        _ = never => unreachable!("a semaphore granted a held permit"),
    };
    assert!(fut.is_terminated());
    assert!(!never.is_terminated());
    out
}

/// A child that is pending a few times (each time waking itself) before
/// it finishes, so `select!` sees `Pending` first.
async fn later<T>(value: T) -> T {
    common::yield_now().await;
    common::yield_now().await;
    value
}

fn later_boxed<T: Send + 'static>(value: T) -> futures::future::BoxFuture<'static, T> {
    Box::pin(later(value))
}

// (Named futures, not boxed ones: a `Batch` of boxed `dyn` futures trips
// the compiler's `Send` check of the test body.)
fn double(i: i32) -> common::YieldN<i32> {
    common::YieldN::new(2, i * 2, &common::Counter::new())
}

fn fail_at_3(i: i32) -> common::YieldN<Result<i32, i32>> {
    common::YieldN::new(
        2,
        if i == 3 { Err(i) } else { Ok(i) },
        &common::Counter::new(),
    )
}

struct Conns;

impl Manager for Conns {
    type Object = u32;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u32, std::io::Error> {
        later(7).await;
        Ok(7)
    }
}

matrix! {
    async fn gather_family_is_fused() {
        assert_eq!(run_fused(gather((0..3).map(later_boxed))).await, [0, 1, 2]);
        assert_eq!(race_never(gather((0..3).map(later_boxed))).await, [0, 1, 2]);
        let ok = run_fused(try_gather((0..3).map(|i| later_boxed(Ok::<_, ()>(i))))).await;
        assert_eq!(ok, Ok(vec![0, 1, 2]));
        let err = run_fused(try_gather([later_boxed(Ok(1)), later_boxed(Err(9))])).await;
        assert_eq!(err, Err(9));
        let settled = run_fused(gather_settled((0..2).map(later_boxed))).await;
        assert_eq!(settled.len(), 2);
        let tuple = run_fused(awaitkit::gather!(later_boxed(1), later_boxed('a'))).await;
        assert_eq!(tuple, (1, 'a'));
        let tuple = run_fused(awaitkit::try_gather!(later_boxed(Ok::<_, ()>(1)), later_boxed(Ok('a')))).await;
        assert_eq!(tuple, Ok((1, 'a')));
        // Empty input: ready at the first poll, terminated after it.
        assert!(run_fused(gather(Vec::<std::future::Ready<u8>>::new())).await.is_empty());
        assert_eq!(run_fused(awaitkit::gather!()).await, ());
    }

    async fn wait_family_is_fused() {
        let (index, value, rest) = run_fused(wait_any([later_boxed(1), later_boxed(2)]))
            .await
            .unwrap();
        assert!(index < 2 && value == index + 1);
        assert_eq!(rest.len(), 1);
        assert!(run_fused(wait_any(Vec::<std::future::Ready<u8>>::new())).await.is_none());
        let outcome = run_fused(wait((0..3).map(later_boxed), ReturnWhen::AllCompleted)).await;
        assert_eq!(outcome.done.len(), 3);
        let outcome = run_fused(
            wait([later_boxed(1), Box::pin(pending())], ReturnWhen::AllCompleted)
                .with_timeout(10 * MS),
        )
        .await;
        assert!(outcome.timed_out);
        let outcome = run_fused(try_wait(
            [later_boxed(Ok(1)), later_boxed(Err(()))],
            ReturnWhen::FirstError,
        ))
        .await;
        assert!(!outcome.done.is_empty());
    }

    async fn timeout_is_fused() {
        assert_eq!(run_fused(later_boxed(5).timeout(Duration::from_secs(60))).await, Ok(5));
        assert!(run_fused(pending::<()>().timeout(MS)).await.is_err());
        assert!(race_never(pending::<()>().timeout(MS)).await.is_err());
    }

    async fn semaphore_futures_are_fused() {
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.try_acquire().unwrap();
        let mut waiting = sem.acquire();
        // Pending (queued) first: not terminated.
        assert!(futures::poll!(&mut waiting).is_pending());
        assert!(!waiting.is_terminated());
        drop(held);
        let permit = run_fused(waiting).await.unwrap();
        drop(permit);
        let owned = run_fused(sem.clone().acquire_many_owned(1)).await.unwrap();
        drop(owned);
        assert_eq!(run_fused(sem.limit(ready(3))).await, Ok(3));
        assert_eq!(run_fused(sem.limit(later_boxed(4))).await, Ok(4));
        // An error is an output too: terminated after it.
        assert!(run_fused(sem.acquire_many(2)).await.is_err());
        sem.close();
        assert!(run_fused(sem.limit(ready(5))).await.is_err());
    }

    async fn rate_limiter_futures_are_fused() {
        let limiter = RateLimiter::new(1, 5 * MS);
        run_fused(limiter.acquire()).await;
        run_fused(limiter.acquire()).await; // waits out the window
        assert_eq!(run_fused(limiter.acquire_n(1)).await, Ok(()));
        assert!(run_fused(limiter.acquire_n(2)).await.is_err());
        assert_eq!(run_fused(limiter.limit(later_boxed(6))).await, 6);
        assert_eq!(race_never(limiter.limit(ready(7))).await, 7);
        let keyed = KeyedRateLimiter::new(1, 5 * MS);
        assert_eq!(run_fused(keyed.acquire("a")).await, Ok(()));
        assert_eq!(run_fused(keyed.acquire("a")).await, Ok(()));
        assert_eq!(run_fused(keyed.acquire_n("b", 1)).await, Ok(()));
    }

    async fn pool_get_is_fused() {
        let pool = Pool::new(Conns, 1);
        let conn = run_fused(pool.get()).await.unwrap();
        assert_eq!(*conn, 7);
        let mut second = pool.get();
        assert!(futures::poll!(&mut second).is_pending()); // waits for `conn`
        assert!(!second.is_terminated());
        drop(conn);
        drop(run_fused(second).await.unwrap());
        pool.close();
        assert!(run_fused(pool.get()).await.is_err());
    }

    async fn retry_is_fused() {
        let mut calls = 0;
        let out = run_fused(RetryPolicy::new(3).backoff(Backoff::constant(MS)).retry(|| {
            calls += 1;
            ready(if calls < 3 { Err(0u8) } else { Ok(calls) })
        }))
        .await;
        assert_eq!(out, Ok(3));
        let gave_up = race_never(
            RetryPolicy::new(2).backoff(Backoff::none()).retry(|| ready(Err::<(), _>(1u8))),
        )
        .await;
        assert!(gave_up.is_err());
    }

    async fn batch_is_fused() {
        let out = run_fused(process_batch(0..5, 2, double)).await;
        assert_eq!(out, [0, 2, 4, 6, 8]);
        let failed = run_fused(process_batch(0..5, 2, fail_at_3).fail_fast()).await;
        assert_eq!(failed, Err(3));
    }

    async fn task_group_and_handles_are_fused() {
        let out = run_fused(task_group(|tg| async move {
            let handle = tg.spawn(later_boxed(Ok::<_, ()>(2)));
            // A handle in `select!`, inside the group.
            let two = run_fused(handle).await.expect("not cancelled")?;
            Ok(two + 1)
        }))
        .await;
        assert_eq!(out, Ok(3));
        let failed: Result<(), u8> = run_fused(task_group(|tg| async move {
            tg.spawn(async { Err::<(), _>(1) });
            pending().await
        }))
        .await;
        assert_eq!(failed, Err(1));
    }

    async fn streams_are_fused() {
        // `set.next()` is a `FusedFuture` only because the set is a
        // `FusedStream`.
        let mut set = as_completed((0..3).map(later_boxed));
        let mut got = Vec::new();
        loop {
            futures::select! {
                item = set.next() => match item {
                    Some(v) => got.push(v),
                    None => break,
                },
            }
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        assert!(set.is_terminated());
        assert_eq!(set.next().await, None);

        let mut indexed = as_completed((0..2).map(later_boxed)).indexed();
        let mut seen = 0;
        loop {
            futures::select! {
                (i, v) = indexed.select_next_some() => { assert_eq!(i, v); seen += 1; }
                complete => break,
            }
        }
        assert_eq!(seen, 2);
        assert!(indexed.is_terminated());

        let mut until = as_completed([later_boxed(1), Box::pin(pending())]).with_timeout(10 * MS);
        let mut items = Vec::new();
        loop {
            futures::select! {
                item = until.select_next_some() => items.push(item.is_ok()),
                complete => break,
            }
        }
        assert_eq!(items, [true, false]); // one value, then the timeout
        assert!(until.is_terminated());
    }
}

matrix_local! {
    async fn local_task_group_is_fused() {
        let out = run_fused(task_group_local(|tg| async move {
            let handle = tg.spawn(later(Ok::<_, ()>(std::rc::Rc::new(4))));
            Ok(*run_fused(handle).await.expect("not cancelled")?)
        }))
        .await;
        assert_eq!(out, Ok(4));
    }
}

/// A future a panic unwound through has not returned: not terminated
/// (polling it again panics, saying so).
#[test]
fn a_panicked_future_is_not_terminated() {
    let mut all = gather([async { panic!("child") }]);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(&mut all)
    }));
    assert!(caught.is_err());
    assert!(!all.is_terminated());
}

/// `RateLimit` refuses a poll after completion, as `Semaphore::limit`'s
/// `Limit` does (it used to poll the finished inner future again).
#[test]
#[should_panic(expected = "`RateLimit` polled after completion")]
fn rate_limit_polled_after_completion_panics() {
    let limiter = RateLimiter::new(1, Duration::from_secs(1));
    let mut call = limiter.limit(ready(1));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert_eq!(
        std::pin::Pin::new(&mut call).poll(&mut cx),
        std::task::Poll::Ready(1)
    );
    let _ = std::pin::Pin::new(&mut call).poll(&mut cx);
}
