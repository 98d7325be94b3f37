//! Error conventions (Rust API guidelines, C-GOOD-ERR): every public error
//! is `Error + Send + Sync + 'static` (checked in `auto_traits.rs`), and an
//! error either wraps its inner error (returns it from `source()`, and its
//! `Display` says only its own layer) or displays it — never both, so a
//! chain printed the way `anyhow`'s `{:#}` and `eyre`'s reports print it
//! shows each message once.

use awaitkit::pool::{BuildError, Manager, Pool, PoolError};
use awaitkit::{
    AcquireError, AttemptError, Backoff, BatchConfigError, Elapsed, GaveUp, Panicked, QuotaError,
    RateLimitError, RateLimiter, RetryConfigError, RetryError, RetryPolicy, Semaphore,
    TryAcquireError, as_completed, gather_settled,
};
use futures::StreamExt;
use futures::executor::block_on;
use std::error::Error;
use std::fmt;
use std::time::{Duration, Instant};

/// Each layer's own `Display`, outermost first.
fn layers(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        out.push(e.to_string());
        source = e.source();
    }
    out
}

/// The chain as `anyhow` prints `{:#}`: each layer joined by ": ". Checks
/// that no layer repeats the text of a layer below it.
#[track_caller]
fn chain(error: &(dyn Error + 'static)) -> String {
    let layers = layers(error);
    for (i, outer) in layers.iter().enumerate() {
        assert!(!outer.is_empty(), "layer {i} displays nothing");
        for inner in &layers[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its source {inner:?} (chain: {layers:?})"
            );
        }
    }
    layers.join(": ")
}

/// An application error with a source of its own, to see the whole chain.
#[derive(Debug)]
struct Fetch(std::io::Error);

impl fmt::Display for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fetching the page failed")
    }
}

impl Error for Fetch {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

fn refused() -> Fetch {
    Fetch(std::io::Error::other("connection refused"))
}

fn retry_error(
    policy: RetryPolicy,
    mut op: impl FnMut(u32) -> Result<(), Fetch>,
    retry_if: fn(&Fetch) -> bool,
) -> RetryError<Fetch> {
    let mut n = 0;
    block_on(
        policy
            .backoff(Backoff::none())
            .retry(|| {
                n += 1;
                std::future::ready(op(n))
            })
            .retry_if(retry_if),
    )
    .unwrap_err()
}

#[test]
fn retry_error_wraps_the_last_error() {
    let err = retry_error(RetryPolicy::new(3), |_| Err(refused()), |_| true);
    assert_eq!(err.reason(), GaveUp::AttemptsExhausted);
    assert_eq!(
        chain(&err),
        "all 3 attempts failed: fetching the page failed: connection refused"
    );
    // The source is the operation's error itself: downcasting finds it.
    assert!(err.source().unwrap().downcast_ref::<Fetch>().is_some());

    let once = retry_error(RetryPolicy::new(1), |_| Err(refused()), |_| true);
    assert_eq!(
        chain(&once),
        "the only attempt failed: fetching the page failed: connection refused"
    );

    let final_error = retry_error(RetryPolicy::new(5), |_| Err(refused()), |_| false);
    assert_eq!(final_error.reason(), GaveUp::NotRetryable);
    assert_eq!(
        chain(&final_error),
        "attempt 1 failed with a non-retryable error: fetching the page failed: connection refused"
    );
}

#[test]
fn retry_error_of_a_timed_out_attempt() {
    let err = block_on(
        RetryPolicy::new(2)
            .backoff(Backoff::none())
            .attempt_timeout(Duration::ZERO)
            .retry(futures::future::pending::<Result<(), Fetch>>),
    )
    .unwrap_err();
    assert!(matches!(err.last(), AttemptError::TimedOut(_)));
    assert_eq!(
        chain(&err),
        "all 2 attempts failed (the last one timed out): deadline has elapsed"
    );
    assert!(err.source().unwrap().downcast_ref::<Elapsed>().is_some());
}

#[test]
fn retry_error_at_the_total_deadline() {
    let err = block_on(
        RetryPolicy::new(5)
            .backoff(Backoff::none())
            .total_timeout(Duration::ZERO)
            .retry(futures::future::pending::<Result<(), Fetch>>),
    )
    .unwrap_err();
    assert_eq!(err.reason(), GaveUp::DeadlineReached);
    assert_eq!(
        chain(&err),
        "the total time limit passed after 1 attempt (the last one timed out): \
         deadline has elapsed"
    );
}

#[test]
fn attempt_error_is_transparent_for_the_operation_error() {
    let failed: AttemptError<Fetch> = AttemptError::Failed(refused());
    assert_eq!(
        chain(&failed),
        "fetching the page failed: connection refused"
    );
    let timed_out: AttemptError<Fetch> = AttemptError::TimedOut(Elapsed::new());
    assert_eq!(
        chain(&timed_out),
        "the attempt timed out: deadline has elapsed"
    );
}

struct Failing;

impl Manager for Failing {
    type Object = ();
    type Error = Fetch;
    async fn create(&self) -> Result<(), Fetch> {
        Err(refused())
    }
}

#[test]
fn pool_error_wraps_the_manager_error() {
    let pool = Pool::new(Failing, 1);
    let err = block_on(pool.get()).unwrap_err();
    assert!(matches!(err, PoolError::Create(_)));
    assert_eq!(
        chain(&err),
        "the manager failed to create an object: fetching the page failed: connection refused"
    );
    assert!(err.source().unwrap().downcast_ref::<Fetch>().is_some());
    pool.close();
    assert_eq!(
        chain(&block_on(pool.get()).unwrap_err()),
        "the pool is closed"
    );
    assert_eq!(
        chain(&PoolError::<Fetch>::Timeout),
        "timed out waiting for a pooled object"
    );
}

/// The leaf errors display their whole story and have no source.
#[test]
fn leaf_errors_have_no_source() {
    let sem = Semaphore::new(1);
    let too_large: AcquireError = block_on(sem.acquire_many(2)).unwrap_err();
    let _held = sem.try_acquire().unwrap();
    let no_permits: TryAcquireError = sem.try_acquire().unwrap_err();
    sem.close();
    let closed: AcquireError = block_on(sem.acquire()).unwrap_err();
    let limiter = RateLimiter::new(1, Duration::from_secs(60));
    limiter.try_acquire().unwrap();
    let limited: RateLimitError = limiter.try_acquire().unwrap_err();
    let panicked: Panicked = block_on(gather_settled([async { panic!("lost connection") }]))
        .pop()
        .unwrap()
        .unwrap_err();
    let mut set = as_completed([futures::future::pending::<()>()]).with_deadline(Instant::now());
    let timed_out = block_on(set.next()).unwrap().unwrap_err();
    let leaves: Vec<Box<dyn Error + Send + Sync>> = vec![
        Box::new(Elapsed::new()),
        Box::new(too_large),
        Box::new(closed),
        Box::new(no_permits),
        Box::new(limited),
        Box::new(RateLimiter::try_new(0, Duration::from_secs(1)).unwrap_err()),
        Box::new(RetryPolicy::try_new(0).unwrap_err()),
        Box::new(awaitkit::Batch::try_new(0..1, 0, |i| async move { i }).unwrap_err()),
        Box::new(Pool::builder(Failing).max_size(0).build().unwrap_err()),
        Box::new(panicked),
        Box::new(timed_out),
    ];
    for e in &leaves {
        assert!(e.source().is_none(), "{e}: unexpected source");
        assert_eq!(chain(&**e), e.to_string());
    }
    let _: Option<(QuotaError, RetryConfigError, BatchConfigError, BuildError)> = None;
}

/// The errors go into the boxed error every application uses, with `?`.
#[test]
fn errors_convert_into_boxed_errors() {
    fn run() -> Result<(), Box<dyn Error + Send + Sync + 'static>> {
        let err = retry_error(RetryPolicy::new(2), |_| Err(refused()), |_| true);
        Err(err)?
    }
    let boxed = run().unwrap_err();
    assert_eq!(
        chain(&*boxed),
        "all 2 attempts failed: fetching the page failed: connection refused"
    );
    assert!(boxed.downcast_ref::<RetryError<Fetch>>().is_some());
}
