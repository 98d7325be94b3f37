//! `first_ok`: the first success of several attempts — futures'
//! `select_ok`, with input indices and every error kept.

#![forbid(unsafe_code)]

use crate::as_completed::{AsCompleted, as_completed};
use crate::retry::RetryOutput;
use futures_core::FusedFuture;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs fallible futures concurrently and resolves to the **first `Ok`**,
/// with its input index, dropping every other future at once — futures'
/// `select_ok`. If every future fails, resolves to **every error, in input
/// order**. An empty input resolves to `Err(vec![])` at the first poll.
///
/// Errors do not stop the others: a failed future is set aside and the rest
/// keep running until one succeeds. Children are polled only when woken
/// (polls = wakes + N).
///
/// # Cancel safety
///
/// Dropping the [`FirstOk`] drops every child synchronously. On success the
/// others are dropped before the output is returned.
///
/// # Panics
///
/// A panic in a child propagates out of `poll`, and so does a panic in a
/// destructor of the children dropped on success (every other child is
/// still dropped first; the success is lost with the panic). Polling again
/// after a panic panics, as it does after completion.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// async fn mirror(i: u64) -> Result<String, String> {
///     futures_timer::Delay::new(Duration::from_millis(5 * i)).await;
///     if i == 0 { Err("mirror 0 is down".into()) } else { Ok(format!("mirror {i}")) }
/// }
/// let (index, body) = awaitkit::first_ok((0..3).map(mirror)).await.unwrap();
/// assert_eq!((index, body.as_str()), (1, "mirror 1")); // 0 failed first, 2 was cancelled
///
/// let all_down = awaitkit::first_ok([Err::<(), _>("a"), Err("b")].map(std::future::ready)).await;
/// assert_eq!(all_down, Err(vec!["a", "b"]));
/// # });
/// ```
pub fn first_ok<I, T, E>(futures: I) -> FirstOk<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture<Output = Result<T, E>>,
{
    FirstOk {
        set: Some(as_completed(futures)),
        errors: Vec::new(),
        poisoned: false,
    }
}

/// Future for the [`first_ok`] function, resolving to
/// `Result<(usize, T), Vec<E>>`.
///
/// `Unpin` whatever the children are, `Send`/`Sync` when they and their
/// outputs are. Polling it after it completed panics.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let first: awaitkit::FirstOk<_> = awaitkit::first_ok([std::future::ready(Ok::<_, ()>(7))]);
/// assert_eq!(first.await, Ok((0, 7)));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct FirstOk<F: RetryOutput> {
    // `None` once resolved.
    set: Option<AsCompleted<F>>,
    // The errors so far, with their input indices (in completion order).
    errors: Vec<(usize, F::Error)>,
    poisoned: bool,
}

// Nothing in it is ever pinned (the children live pinned in the set's own
// chunks); the errors are plain values.
impl<F: RetryOutput> Unpin for FirstOk<F> {}

impl<F: RetryOutput> Future for FirstOk<F> {
    type Output = Result<(usize, F::Ok), Vec<F::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        crate::poison::guarded(&mut this.poisoned, "FirstOk", || {
            let set = this
                .set
                .as_mut()
                .expect("`FirstOk` polled after completion");
            loop {
                match set.poll_next_indexed(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some((index, output))) => match output {
                        Ok(value) => {
                            // The others go now, before the output is handed
                            // out (a destructor's panic propagates from here).
                            this.set = None;
                            this.errors = Vec::new();
                            return Poll::Ready(Ok((index, value)));
                        }
                        Err(error) => this.errors.push((index, error)),
                    },
                    Poll::Ready(None) => {
                        this.set = None;
                        let mut errors = std::mem::take(&mut this.errors);
                        errors.sort_by_key(|&(index, _)| index);
                        return Poll::Ready(Err(errors.into_iter().map(|(_, e)| e).collect()));
                    }
                }
            }
        })
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<F: RetryOutput> FusedFuture for FirstOk<F> {
    fn is_terminated(&self) -> bool {
        self.set.is_none() && !self.poisoned
    }
}

impl<F: RetryOutput> fmt::Debug for FirstOk<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirstOk")
            .field("set", &self.set)
            .field("failed", &self.errors.len())
            .finish()
    }
}
