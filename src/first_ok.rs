//! `first_ok`: the first success of several attempts — futures'
//! `select_ok`, with input indices and every error kept.

#![forbid(unsafe_code)]

use crate::as_completed::{AsCompleted, as_completed};
use crate::retry::RetryOutput;
use crate::unwind::Panics;
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
        let FirstOk {
            set: slot,
            errors,
            poisoned,
        } = self.get_mut();
        // Checked before the guard: a refused poll leaves the future as it
        // was (terminated).
        crate::poison::assert_live(*poisoned, slot.is_none(), "FirstOk");
        crate::poison::guarded(poisoned, "FirstOk", || {
            let set = slot.as_mut().expect("checked above");
            // One pass over the woken children: each is polled at most once
            // per poll of `FirstOk`, even when errors keep coming.
            let mut pass = set.engine.pass(cx);
            while let Some(done) = pass.next() {
                pass.engine().release_slot(done.slot);
                match done.output {
                    Ok(value) => return Poll::Ready(Ok(win(slot, errors, done.key, value))),
                    Err(error) => errors.push((done.key, error)),
                }
            }
            if set.engine.running() > 0 {
                return Poll::Pending;
            }
            *slot = None;
            let mut errors = std::mem::take(errors);
            errors.sort_by_key(|&(index, _)| index);
            Poll::Ready(Err(errors.into_iter().map(|(_, e)| e).collect()))
        })
    }
}

/// Drops every other child and the errors kept, before the winner is handed
/// out. Each goes on its own: if a destructor panics, the rest (the winning
/// value included) are still dropped, outside the unwind, and the first panic
/// propagates (discarded if this thread is already unwinding: the value is
/// returned then).
fn win<F: RetryOutput>(
    set: &mut Option<AsCompleted<F>>,
    errors: &mut Vec<(usize, F::Error)>,
    index: usize,
    value: F::Ok,
) -> (usize, F::Ok) {
    crate::unwind::hand_back(release(set, errors), (index, value))
}

/// Drops the children left and the errors kept, each on its own (see
/// [`Panics`]); returns the first panic.
fn release<F: RetryOutput>(
    set: &mut Option<AsCompleted<F>>,
    errors: &mut Vec<(usize, F::Error)>,
) -> Panics {
    let mut panics = Panics::default();
    let set = set.take();
    panics.catch(move || drop(set));
    panics.drop_all(std::mem::take(errors));
    panics
}

/// Drops the children left and the errors kept, each even if another's
/// destructor panics (none of them during that panic's unwind), then
/// propagates the first panic.
impl<F: RetryOutput> Drop for FirstOk<F> {
    fn drop(&mut self) {
        release(&mut self.set, &mut self.errors).resume();
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
