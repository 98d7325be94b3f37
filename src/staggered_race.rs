//! `staggered_race`: asyncio's `staggered_race` — attempts started one after
//! another, a fixed delay apart or as soon as the latest one fails; the first
//! success wins (Happy Eyeballs, hedged requests).

#![forbid(unsafe_code)]

use crate::as_completed::AsCompleted;
use crate::retry::RetryOutput;
use crate::time::{BoxedDeadline, DefaultTimer, Timer, When};
use crate::unwind::Panics;
use futures_core::FusedFuture;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::iter::Peekable;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Starts attempts one after another — the next one `delay` after the latest
/// one started, or as soon as the latest one fails, whichever comes first —
/// and resolves to the **first `Ok`**, with the attempt's index, dropping
/// every other attempt at once. This is asyncio's `staggered_race`, the
/// core of Happy Eyeballs (RFC 8305) and of hedged requests: a slow replica
/// or a black-holed address costs `delay`, not a whole timeout, and the
/// replicas are not all hit at once as with [`first_ok`](crate::first_ok).
///
/// `factories` yields closures, each starting one attempt when called
/// (`FnOnce() -> impl IntoFuture<Output = Result<T, E>>`). The iterator is
/// consumed **lazily**: the next factory is taken, and called, only when its
/// attempt starts, so it may be long, expensive or endless, and the
/// factories left when the race is decided are never called. (An endless
/// iterator whose attempts never succeed starts attempts without end, one
/// per `delay`, as in asyncio.)
///
/// # The schedule
///
/// Attempt 0 starts at the first poll. Attempt *i + 1* starts at the
/// earlier of:
///
/// * `delay` after attempt *i* started, and
/// * the moment attempt *i* fails (returns `Err`).
///
/// This is asyncio's rule exactly: only the **latest** attempt's failure
/// starts the next one early. An older attempt that fails while a newer
/// one runs just has its error recorded; the newer one's delay keeps
/// counting from its own start. Attempts that have started keep running
/// until one succeeds or all have failed: a new start cancels nothing.
///
/// * The first `Ok` wins: `Ok((index, value))`, `index` counting attempts
///   in start order (which is the iterator's order). Every other running
///   attempt, and the factories not yet taken, are dropped before the
///   output is returned.
/// * When every attempt has failed and the iterator is exhausted:
///   `Err(errors)`, every error in start order.
/// * An empty iterator resolves to `Err(vec![])` at the first poll, reading
///   no clock and arming no timer.
/// * A result and an expired delay seen in the same poll: the result counts
///   first (a success wins without starting anything; a failure of the
///   latest attempt starts exactly one next attempt).
/// * `Duration::ZERO` starts every attempt without waiting for any timer:
///   attempt 0 and attempt 1 in the first poll, then one more in each
///   poll (the race wakes itself in between). `Duration::MAX` (or any
///   delay past what [`Instant`](std::time::Instant) can hold) never
///   overflows and arms no timer: the next attempt starts only when the
///   latest one fails — a sequential fallback.
/// * Attempt 0 is first polled in the poll that starts it; a later attempt
///   is first polled on the race's next poll (the race wakes its task at
///   once), so that one poll never polls an attempt twice. Attempts are
///   polled only when woken (attempt polls = wakes + attempts started).
/// * The delay is measured on the race's [`Timer`]:
///   [`DefaultTimer`] unless [`StaggeredRace::with_timer`] gives another.
///   The clock is read when an attempt starts, when its sleep is armed
///   and when the sleep fires — not on polls where only attempts woke.
///   A sleep exists only while
///   a next attempt can start: none after the iterator is exhausted (when
///   its `size_hint` says it has nothing left, as a slice's, a `Vec`'s or a
///   range's does, the race checks right after the last start, so no
///   sleep is armed after it).
///
/// # Cancel safety
///
/// Dropping the [`StaggeredRace`] drops every running attempt synchronously,
/// its sleep, and the factories not yet taken; no factory is called after
/// that. On success the other attempts are dropped before the output is
/// returned.
///
/// # Panics
///
/// A panic in the iterator, in a factory, in an attempt's `poll` or in the
/// timer propagates out of `poll`. So does a panic in the destructor of an
/// attempt dropped on success, or of a factory never called (every other
/// attempt is still dropped first; the success is lost with the panic).
/// Every attempt that was started is dropped exactly once: the remaining
/// ones when the race is dropped. When several destructors panic (attempts,
/// factories, kept errors, the winning value), all of them still run and
/// the first panic propagates, as a `Vec`'s elements are dropped. Polling
/// again after any of these panics panics, as does polling after
/// completion.
///
/// The one exception: a waker that panics when the race wakes its task to
/// poll an attempt it just started. The race's state is settled by then:
/// the panic propagates and the next poll goes on (polling that attempt).
///
/// # Examples
///
/// Happy Eyeballs: the first address is a black hole; the second one is
/// tried 5 ms later and wins.
///
/// ```
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// async fn connect(addr: &str) -> Result<String, String> {
///     if addr.starts_with('[') {
///         std::future::pending::<()>().await; // IPv6 black hole: never answers
///     }
///     Ok(format!("connected to {addr}"))
/// }
/// let addrs = ["[2001:db8::1]:443", "192.0.2.1:443", "192.0.2.2:443"];
/// let race = awaitkit::staggered_race(addrs.map(|a| move || connect(a)), Duration::from_millis(5));
/// let (index, conn) = race.await.unwrap();
/// assert_eq!((index, conn.as_str()), (1, "connected to 192.0.2.1:443")); // the third never started
///
/// // A failure starts the next attempt at once; all failed: every error, in order.
/// let down = (0..3).map(|i| move || async move { Err::<(), _>(format!("replica {i} down")) });
/// let errors = awaitkit::staggered_race(down, Duration::from_secs(3600)).await.unwrap_err();
/// assert_eq!(errors, ["replica 0 down", "replica 1 down", "replica 2 down"]);
/// # });
/// ```
pub fn staggered_race<I, G, Fut, T, E>(
    factories: I,
    delay: Duration,
) -> StaggeredRace<I::IntoIter, Fut::IntoFuture>
where
    I: IntoIterator<Item = G>,
    G: FnOnce() -> Fut,
    Fut: IntoFuture<Output = Result<T, E>>,
{
    StaggeredRace {
        factories: Some(factories.into_iter().peekable()),
        set: AsCompleted::new(),
        errors: Vec::new(),
        started: 0,
        leader: None,
        delay,
        deadline: BoxedDeadline::new(DefaultTimer, None),
        begun: false,
        done: false,
        poisoned: false,
    }
}

/// Future for the [`staggered_race`] function, resolving to
/// `Result<(usize, T), Vec<E>>`.
///
/// `I` is the iterator of factories, `F` the future of one attempt and `T`
/// the [`Timer`] measuring the delay. `Unpin` whatever they are (the
/// attempts are pinned inside, the sleep is boxed), `Send`/`Sync` when the
/// iterator, the attempts, their outputs and the timer are. Polling it after
/// it completed panics.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # futures::executor::block_on(async {
/// let race: awaitkit::StaggeredRace<_, _> =
///     awaitkit::staggered_race([|| async { Ok::<_, ()>(7) }], Duration::from_millis(250));
/// assert_eq!(race.started(), 0); // nothing runs before the first poll
/// assert_eq!(race.await, Ok((0, 7)));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct StaggeredRace<I: Iterator, F: RetryOutput, T: Timer = DefaultTimer> {
    // The factories not yet taken; `None` once exhausted, or once the race
    // is decided (they are dropped then). Peeked only when the iterator
    // says it is empty (see `start_next`).
    factories: Option<Peekable<I>>,
    // The running attempts, keyed by start index (`push` numbers them).
    set: AsCompleted<F>,
    // The errors so far, with their start indices (in completion order).
    errors: Vec<(usize, F::Error)>,
    // Attempts started so far.
    started: usize,
    // The latest attempt while it runs and a next one may start: its
    // failure starts the next one, and so does the end of `deadline`.
    // `None` before the first poll and once the iterator is exhausted.
    leader: Option<usize>,
    delay: Duration,
    // `delay` after the leader started; no deadline without a leader.
    deadline: BoxedDeadline<T>,
    begun: bool,
    done: bool,
    // Set while a poll runs: a panic that unwinds out of it leaves it set,
    // and the next poll refuses.
    poisoned: bool,
}

// Nothing in it is ever pinned: the attempts live pinned in the set's own
// chunks, the sleep in its own box; the iterator, the timer and the errors
// are only used through `&mut`/`&`.
impl<I: Iterator, F: RetryOutput, T: Timer> Unpin for StaggeredRace<I, F, T> {}

impl<I: Iterator, F: RetryOutput, T: Timer> StaggeredRace<I, F, T> {
    /// Measures the delay on another [`Timer`] — the one way, as on every
    /// type in awaitkit that waits for time, to choose the timer (a
    /// `ManualClock` in tests, `TokioTimer`, `AsyncIoTimer`, your own).
    ///
    /// # Panics
    ///
    /// If the race has already been polled.
    ///
    /// # Examples
    ///
    /// ```
    /// use awaitkit::time::FuturesTimer;
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let race = awaitkit::staggered_race([|| async { Ok::<_, ()>(1) }], Duration::from_millis(10))
    ///     .with_timer(FuturesTimer);
    /// assert_eq!(race.await, Ok((0, 1)));
    /// # });
    /// ```
    #[track_caller]
    pub fn with_timer<U: Timer>(mut self, timer: U) -> StaggeredRace<I, F, U> {
        if self.begun {
            // The running attempts and the timer (user code) are dropped
            // first, each on its own, not during this panic's unwind.
            crate::unwind::contain(move || drop(self));
            crate::unwind::contain(move || drop(timer));
            panic!("`StaggeredRace::with_timer` after the race started");
        }
        // Before the first poll nothing runs and no deadline is set.
        let next = StaggeredRace {
            factories: self.factories.take(),
            set: AsCompleted::new(),
            errors: Vec::new(),
            started: 0,
            leader: None,
            delay: self.delay,
            deadline: BoxedDeadline::new(timer, None),
            begun: false,
            done: false,
            poisoned: false,
        };
        crate::unwind::after_dropping(next, |panics| self.deadline.release(panics))
    }

    /// How many attempts have started so far: factories called, whose
    /// attempt was added to the race (a factory that panicked is not
    /// counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # futures::executor::block_on(async {
    /// let mut race = awaitkit::staggered_race(
    ///     [|| futures::future::pending::<Result<(), ()>>(), || futures::future::pending()],
    ///     Duration::from_secs(3600),
    /// );
    /// assert!(futures::poll!(&mut race).is_pending());
    /// assert_eq!(race.started(), 1); // the second waits for an hour, or for a failure
    /// # });
    /// ```
    pub fn started(&self) -> usize {
        self.started
    }

    /// Drops the attempts, the factories left, the errors kept and the
    /// sleep: each even if another's destructor panics; returns the first
    /// panic.
    fn release(&mut self) -> Panics {
        self.leader = None;
        let mut panics = Panics::default();
        panics.catch(|| self.set.clear());
        panics.catch(|| self.factories = None);
        panics.drop_all(std::mem::take(&mut self.errors));
        panics.catch(|| self.deadline.restart(None));
        panics
    }

    /// The delay between two starts, as given.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let race = awaitkit::staggered_race([|| async { Ok::<(), ()>(()) }], Duration::from_millis(250));
    /// assert_eq!(race.delay(), Duration::from_millis(250));
    /// ```
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl<I, F, T, Fut> Future for StaggeredRace<I, F, T>
where
    I: Iterator,
    I::Item: FnOnce() -> Fut,
    Fut: IntoFuture<IntoFuture = F>,
    F: RetryOutput,
    T: Timer,
{
    type Output = Result<(usize, F::Ok), Vec<F::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Checked first: the panic may have come after the output was
        // decided (the destructor of an attempt dropped on success).
        crate::poison::assert_live(this.poisoned, this.done, "StaggeredRace");
        this.poisoned = true;
        let out = this.poll_race(cx);
        this.poisoned = false;
        match out {
            Step::Done(output) => Poll::Ready(output),
            Step::Waiting => Poll::Pending,
            Step::Started => {
                // An attempt was started in this poll and is first polled in
                // the next one: ask for it now. The state is settled, so a
                // waker that panics here leaves the race usable.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// What one poll of the race came to.
enum Step<O> {
    Done(O),
    Waiting,
    /// An attempt started, to be polled on the next poll.
    Started,
}

impl<I, F, T, Fut> StaggeredRace<I, F, T>
where
    I: Iterator,
    I::Item: FnOnce() -> Fut,
    Fut: IntoFuture<IntoFuture = F>,
    F: RetryOutput,
    T: Timer,
{
    /// One poll (refusals are checked by [`StaggeredRace::poll`]).
    fn poll_race(&mut self, cx: &mut Context<'_>) -> Step<<Self as Future>::Output> {
        if !self.begun {
            self.begun = true;
            // Attempt 0: polled in the pass below.
            self.start_next();
        }
        // One pass over the woken attempts (each polled at most once).
        let mut start = false;
        let mut won = None;
        {
            let mut pass = self.set.engine.pass(cx);
            while let Some(done) = pass.next() {
                pass.engine().release_slot(done.slot);
                match done.output {
                    Ok(value) => {
                        won = Some((done.key, value));
                        break;
                    }
                    Err(error) => {
                        self.errors.push((done.key, error));
                        // Only the latest attempt's failure starts the next.
                        if self.leader == Some(done.key) {
                            self.leader = None;
                            start = true;
                        }
                    }
                }
            }
        }
        if let Some((index, value)) = won {
            return Step::Done(Ok(self.win(index, value)));
        }
        if !start && self.leader.is_some() && self.deadline.poll(cx).is_ready() {
            // `delay` has passed since the leader started (and it has not
            // finished: a result seen in the pass above counts first).
            start = true;
        }
        if start && self.start_next() {
            // Its first poll is on the next poll of the race: a second pass
            // now could poll a child that woke itself during the first.
            return Step::Started;
        }
        if self.set.is_empty() && self.leader.is_none() {
            // Nothing runs and nothing can start: every attempt failed.
            self.done = true;
            let mut errors = std::mem::take(&mut self.errors);
            errors.sort_by_key(|&(index, _)| index);
            return Step::Done(Err(errors.into_iter().map(|(_, e)| e).collect()));
        }
        Step::Waiting
    }

    /// Starts the next attempt, making it the leader with a deadline
    /// `delay` from now (without one once the iterator is known to be
    /// exhausted); `false` if there was none to start.
    fn start_next(&mut self) -> bool {
        self.leader = None;
        let Some(factory) = self.factories.as_mut().and_then(Iterator::next) else {
            self.exhausted();
            return false;
        };
        let index = self.set.push(factory().into_future());
        self.started = index + 1;
        let factories = self.factories.as_mut().expect("a factory was just taken");
        // Nothing left, says the iterator: confirm it (a factory yielded
        // anyway stays in the `Peekable` for the next start) and arm no
        // timer for a start that cannot happen.
        if factories.size_hint().1 == Some(0) && factories.peek().is_none() {
            self.exhausted();
            return true;
        }
        self.leader = Some(index);
        // An unrepresentable deadline (`Duration::MAX`): no timer at all.
        let now = self.deadline.timer().now();
        self.deadline
            .restart(now.checked_add(self.delay).map(When::At));
        true
    }

    /// No attempt will start any more: the factories and the sleep go.
    fn exhausted(&mut self) {
        self.factories = None;
        self.deadline.restart(None);
    }

    /// Attempt `index` succeeded: everything else is dropped, now, before
    /// the output is returned — every part even if a destructor panics;
    /// then the first panic propagates (the value is dropped with it, never
    /// while unwinding, where a second panic would abort).
    fn win(&mut self, index: usize, value: F::Ok) -> (usize, F::Ok) {
        // (While this thread is already unwinding, the panic is discarded
        // and the value handed out.)
        let out = crate::unwind::hand_back(self.release(), (index, value));
        self.done = true;
        out
    }
}

/// Drops every part even if a destructor panics (the attempts, the
/// factories not yet called, the errors kept, the sleep, the timer), then
/// propagates the first panic — or discards it while a panic is already
/// unwinding, where a second one would abort the process.
impl<I: Iterator, F: RetryOutput, T: Timer> Drop for StaggeredRace<I, F, T> {
    fn drop(&mut self) {
        let mut panics = self.release();
        self.deadline.release(&mut panics);
        panics.resume();
    }
}

/// Terminated once it has returned its output (polling it again panics).
impl<I, F, T, Fut> FusedFuture for StaggeredRace<I, F, T>
where
    I: Iterator,
    I::Item: FnOnce() -> Fut,
    Fut: IntoFuture<IntoFuture = F>,
    F: RetryOutput,
    T: Timer,
{
    fn is_terminated(&self) -> bool {
        self.done && !self.poisoned
    }
}

impl<I: Iterator, F: RetryOutput, T: Timer> fmt::Debug for StaggeredRace<I, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaggeredRace")
            .field("delay", &self.delay)
            .field("started", &self.started)
            .field("running", &self.set.len())
            .field("failed", &self.errors.len())
            .field("leader", &self.leader)
            .field("exhausted", &(self.begun && self.factories.is_none()))
            .field("deadline", &self.deadline)
            .finish()
    }
}
