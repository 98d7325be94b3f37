//! `task_group`: Python 3.11's `asyncio.TaskGroup` (a trio nursery) as one
//! future — a dynamic set of tasks running next to a body, without spawning.
//!
//! Layout: [`task_group`] / [`TaskGroup`] / [`TaskScope`] for `Send` tasks,
//! [`task_group_local`] / [`LocalTaskGroup`] / [`LocalTaskScope`] for any
//! tasks, and [`TaskHandle`] for both. The two families share one core
//! (`Core`, `Shared`), generic over the boxed task type (`SendTask` or
//! `LocalTask`); their public types are thin wrappers whose methods call the
//! core and whose trait impls come from one macro, `delegate_to_core!`.
//!
//! How the parts talk:
//!
//! * The **scope** and the group share `Shared`: a queue of tasks spawned
//!   since the group last looked, and a `Signal` holding the group task's
//!   waker. `spawn` boxes the task, queues it and wakes the group; the group
//!   moves queued tasks into its [`Engine`](crate::engine) on every poll, so
//!   tasks are polled only when woken, like every other combinator.
//! * The **body** is polled with its own waker (the `Signal`), and only when
//!   that waker fired.
//! * Each task is wrapped in a future that, when the task finishes, writes its
//!   output into a slot shared with its **handle** (`Arc<Mutex<TaskState>>`)
//!   and wakes whoever awaits the handle (the body, another task, anyone).
//!   Dropping the wrapper unfinished marks the slot cancelled.
//!
//! * Each task's future sits in a cell shared with its handle
//!   ([`cell`]), so [`TaskHandle::abort`] can drop it while the group owns
//!   it; the engine's child is a small [`Task`](cell::Task) pointing at the
//!   cell.
//!
//! No lock is ever held while user code runs (polls or destructors), so
//! spawning from the body, from a task, or from a task's destructor cannot
//! deadlock.

#![deny(unsafe_code)] // but in `cell` (one `unsafe impl`)

mod cell;
#[cfg(all(test, awaitkit_loom))]
mod loom_models;

use crate::engine::{Engine, ParentOwner, ParentWaker};
use crate::sync::{Mutex, MutexGuard};
use crate::unwind::Panics;
use cell::{Abort, LocalCell, Task, TaskCell};
use futures_core::FusedFuture;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// A task of a [`TaskGroup`], type-erased.
type SendTask<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;
/// A task of a [`LocalTaskGroup`], type-erased.
type LocalTask<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + 'a>>;
/// What the group needs of its engine's children ([`cell::Task`]) beyond
/// polling them.
trait Child: Unpin {
    /// See [`cell::Task::close_or_wait`].
    fn close_or_wait(&self, waker: &Waker) -> bool;
}

impl<A: cell::Close> Child for Task<A> {
    fn close_or_wait(&self, waker: &Waker) -> bool {
        Task::close_or_wait(self, waker)
    }
}

/// The engine's child in a [`TaskGroup`].
type SendChild<'a, E> = Task<TaskCell<SendTask<'a, E>>>;
/// The engine's child in a [`LocalTaskGroup`].
type LocalChild<'a, E> = Task<LocalCell<LocalTask<'a, E>>>;

/// Locks, ignoring poisoning: no lock here is held while user code runs, so
/// a poisoned lock only means a panic elsewhere, never a broken invariant.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

/// What wakes the group task: a spawn, or the body's waker.
#[derive(Debug)]
struct Signal {
    /// The task polling the group (registered by the group's poll only; a
    /// panicking waker never wedges it, unlike `futures`' `AtomicWaker`,
    /// which clones under its busy state).
    parent: Arc<ParentWaker>,
    /// The body's waker fired since the body was last polled.
    body_woken: AtomicBool,
    /// The error policy (see [`TaskGroup::keep_going`]).
    keep_going: AtomicBool,
}

/// The body's waker.
impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.body_woken.store(true, Ordering::Release);
        self.parent.wake();
    }
}

/// State shared by a group and its scopes.
struct Shared<C> {
    signal: Arc<Signal>,
    queue: Mutex<Queue<C>>,
}

struct Queue<C> {
    /// Tasks spawned since the group last moved them into its engine.
    incoming: Vec<C>,
    /// The group finished, failed or was dropped: nothing can be spawned.
    closed: bool,
}

impl<C> Shared<C> {
    fn new(parent: Arc<ParentWaker>) -> Self {
        Self {
            signal: Arc::new(Signal {
                parent,
                body_woken: AtomicBool::new(true),
                keep_going: AtomicBool::new(false),
            }),
            queue: Mutex::new(Queue {
                incoming: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Queues a task and wakes the group (once per batch: the group takes
    /// the whole queue at once).
    #[track_caller]
    fn push(&self, task: C) {
        let mut queue = lock(&self.queue);
        if queue.closed {
            drop(queue);
            drop(task);
            panic!("`TaskScope::spawn` called after its task group finished or was dropped");
        }
        let first = queue.incoming.is_empty();
        queue.incoming.push(task);
        drop(queue);
        if first {
            self.signal.parent.wake();
        }
    }

    /// Takes the queued tasks.
    fn take(&self) -> Vec<C> {
        std::mem::take(&mut lock(&self.queue).incoming)
    }

    /// Closes the group to new tasks and takes the queued ones (for the
    /// caller to drop, outside the lock).
    fn close(&self) -> Vec<C> {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        std::mem::take(&mut queue.incoming)
    }
}

// ---------------------------------------------------------------------------
// Task slots and handles
// ---------------------------------------------------------------------------

struct TaskState<T, E> {
    outcome: Outcome<T, E>,
    /// The waker of whoever awaits the handle.
    waker: Option<Waker>,
    /// The handle was dropped.
    detached: bool,
    /// [`TaskHandle::abort`] was called while the task ran.
    aborted: bool,
}

enum Outcome<T, E> {
    Running,
    Done(Result<T, E>),
    Taken,
    Cancelled,
}

type Slot<T, E> = Arc<Mutex<TaskState<T, E>>>;

/// The task's side of its slot: delivers the output, or marks the task
/// cancelled when dropped unfinished.
struct Completer<T, E> {
    slot: Slot<T, E>,
    signal: Arc<Signal>,
}

impl<T, E> Completer<T, E> {
    /// Hands the task's output to its handle. Returns `Err` when the error
    /// is for the group instead: always in fail-fast mode, and in keep-going
    /// mode when nobody holds the handle.
    fn finish(self, output: Result<T, E>) -> Result<(), E> {
        let keep_going = self.signal.keep_going.load(Ordering::Relaxed);
        let mut state = lock(&self.slot);
        let to_handle = !state.aborted && !state.detached && (output.is_ok() || keep_going);
        if !to_handle {
            // The output goes nowhere: `abort` came first (while the group
            // was polling the task it could only leave a request: the output,
            // an error too, is dropped, never the group's), or nobody holds
            // the handle, or the error is for the group (fail-fast). The
            // handle, if any, reports a cancellation — decided here, under the
            // lock, so an `abort` from now on finds the task over.
            let aborted = state.aborted;
            state.outcome = Outcome::Cancelled;
            let waker = state.waker.take();
            drop(state);
            // Whoever awaits the handle is woken even if dropping the value
            // panics (and the other way round); the first panic propagates.
            let mut panics = Panics::default();
            let (kept, rest) = match output {
                Err(e) if !aborted => (Some(e), None),
                other => (None, Some(other)),
            };
            panics.catch(move || drop(rest));
            panics.catch(move || {
                if let Some(waker) = waker {
                    waker.wake();
                }
            });
            // The error for the group is dropped (outside the unwind) if
            // one of those panicked, before that panic propagates.
            return crate::unwind::hand_back(panics, kept.map_or(Ok(()), Err));
        }
        state.outcome = Outcome::Done(output);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T, E> Drop for Completer<T, E> {
    fn drop(&mut self) {
        let mut state = lock(&self.slot);
        if let Outcome::Running = state.outcome {
            state.outcome = Outcome::Cancelled;
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// Wraps a task so it reports to its handle.
fn task<F, T, E>(future: F, signal: &Arc<Signal>) -> (Reporting<F, T, E>, Slot<T, E>)
where
    F: Future<Output = Result<T, E>>,
{
    let slot = Arc::new(Mutex::new(TaskState {
        outcome: Outcome::Running,
        waker: None,
        detached: false,
        aborted: false,
    }));
    let completer = Completer {
        slot: slot.clone(),
        signal: signal.clone(),
    };
    let wrapped = Reporting {
        future,
        completer: Some(completer),
    };
    (wrapped, slot)
}

pin_project_lite::pin_project! {
    /// A task and its side of the handle's slot. Written by hand, not as an
    /// `async` block: when the task's poll panics, nothing is dropped during
    /// the unwind (an `async` block drops its locals there, and a second
    /// panic from the task's destructor would abort the process); the task
    /// stays in its cell, to be dropped with the group.
    struct Reporting<F, T, E> {
        // Dropped before the completer: the handle hears of the
        // cancellation once the future is gone.
        #[pin]
        future: F,
        completer: Option<Completer<T, E>>,
    }
}

impl<F, T, E> Future for Reporting<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let this = self.project();
        let output = std::task::ready!(this.future.poll(cx));
        let completer = this
            .completer
            .take()
            .expect("a task is not polled after it finished");
        Poll::Ready(completer.finish(output))
    }
}

/// A handle to a task of a task group: a future resolving to the task's
/// output — Python's `await task` — and the way to cancel that one task
/// ([`abort`](TaskHandle::abort), Python's `task.cancel()`).
///
/// Returned by [`TaskScope::spawn`] and [`LocalTaskScope::spawn`]. Await it
/// anywhere: in the group's body, in another task of the group, or outside
/// the group. It resolves to `Ok(output)` with the task's own `Result`, or
/// to `Err(`[`TaskCancelled`]`)` if the task was dropped before it finished:
/// aborted, or cancelled with its group (tokio's `JoinHandle` and futures'
/// `Abortable` have the same shape). So `handle.await??` gives the task's
/// value where the error type converts from [`TaskCancelled`] (`io::Error`,
/// `String`, `Box<dyn Error + Send + Sync>`, `anyhow::Error`, or your own
/// error with a `From` impl); elsewhere match it, or `.expect()` it where
/// nothing aborts the task.
///
/// Handles of one output type can go into
/// [`as_completed`](crate::as_completed) (results in completion order, with
/// [`indexed`](crate::AsCompleted::indexed) for which task it was) or
/// [`gather`](crate::gather()) (all results, in spawn order).
///
/// Dropping the handle **detaches** the task: it keeps running in its group,
/// and its value is dropped when it finishes. (Its error still counts: see
/// [`TaskGroup::keep_going`].) So the handle is deliberately not
/// `#[must_use]`: `scope.spawn(work);` without keeping the handle is
/// Python's fire-and-forget `create_task`, and loses nothing but the value.
///
/// The lifetime `'a` is the group's: the handle can leave the group, but not
/// outlive what its task borrows. `Unpin`; `Send`/`Sync` when `T` and `E`
/// are `Send`.
///
/// # Cancel safety
///
/// Awaiting a handle is cancel safe: dropping the await (the handle itself
/// or a future polling it) never affects the task, and an output not yet
/// taken stays in the handle.
///
/// # Panics
///
/// Polling the handle after it returned (the output or
/// [`TaskCancelled`]) panics.
///
/// # Errors
///
/// [`TaskCancelled`] if the task was aborted, or dropped because its group
/// failed or was dropped (the latter only seen from outside the group: a
/// failing group drops its body too). Otherwise the task's own `Result`
/// comes back inside `Ok`. In the default fail-fast mode a task's `Err`
/// fails the whole group before anyone in it can see it, so inside the group
/// a handle only ever yields `Ok(Err(_))` in
/// [`keep_going`](TaskGroup::keep_going) mode.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let lengths = awaitkit::task_group(|scope| async move {
///     let handles = ["a", "bbb", "cc"].map(|s| scope.spawn(async move { Ok::<_, ()>(s.len()) }));
///     // Results in completion order, with the index of each handle.
///     let mut done = awaitkit::as_completed(handles).indexed();
///     let mut lengths = [0; 3];
///     while let Some((i, len)) = done.next().await {
///         lengths[i] = len.expect("nothing aborts these")?;
///     }
///     Ok(lengths)
/// })
/// .await;
/// assert_eq!(lengths, Ok([1, 3, 2]));
/// # });
/// ```
pub struct TaskHandle<'a, T, E> {
    slot: Slot<T, E>,
    cell: Arc<dyn Abort + Send + Sync + 'a>,
}

impl<T, E> TaskHandle<'_, T, E> {
    /// Whether the task is over: it finished and its output waits in the
    /// handle, or it was cancelled — either way the next poll returns at
    /// once.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// awaitkit::task_group(|scope| async move {
    ///     let handle = scope.spawn(async { Ok::<_, ()>(7) });
    ///     assert!(!handle.is_finished()); // not even started
    ///     assert_eq!(handle.await, Ok(Ok(7)));
    ///     Ok(())
    /// })
    /// .await
    /// .unwrap();
    /// # });
    /// ```
    pub fn is_finished(&self) -> bool {
        matches!(
            lock(&self.slot).outcome,
            Outcome::Done(_) | Outcome::Cancelled
        )
    }

    /// Cancels this task — Python's `task.cancel()`, tokio's
    /// `JoinHandle::abort`: its future is dropped, and awaiting the handle
    /// returns `Err(TaskCancelled)` (with
    /// [`is_aborted`](TaskCancelled::is_aborted)). The rest of the group goes
    /// on: an aborted task is not an error of the group.
    ///
    /// The future is dropped **at once**: right here, on this thread, unless
    /// the group is polling that very task at this moment (the task aborts
    /// itself, or the group runs on another thread) — then the group drops it
    /// as soon as that poll of the task returns, before the group's own poll
    /// returns. (For a [`LocalTaskGroup`], an abort from a thread other than
    /// the group's also leaves the drop to the group's next poll: its tasks
    /// are not `Send`.)
    ///
    /// Once `abort` was called on a running task, its handle reports the
    /// abort even if the task's last poll finished it (its output, an error
    /// too, is dropped: an aborted task never fails its group). Does nothing
    /// if the task already finished (its output stays in the handle) or was
    /// already cancelled.
    ///
    /// While an `abort` runs the task's destructor on one thread, the group
    /// does not resolve — neither finishing nor failing — until that
    /// destructor is over (it waits, and that `abort` wakes it). Two limits,
    /// both when another thread is involved: a second `abort` of the same
    /// task coming meanwhile returns at once; and a group *dropped*
    /// meanwhile does not block to wait (the destructor runs to its end
    /// inside the first `abort`, whose handle borrows everything the task
    /// borrows).
    ///
    /// # Panics
    ///
    /// If the task's destructor panics when `abort` drops it, the panic
    /// propagates out of `abort` (the task is dropped all the same, and its
    /// group goes on). When the group drops it instead (it was polling the
    /// task), the panic comes out of the group's poll, like any task's
    /// panic, and the group refuses further polls.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::task_group(|tg| async move {
    ///     let stuck = tg.spawn(futures::future::pending::<Result<(), ()>>());
    ///     let quick = tg.spawn(async { Ok(2) });
    ///     stuck.abort(); // dropped here
    ///     let cancelled = stuck.await.unwrap_err();
    ///     assert!(cancelled.is_aborted());
    ///     quick.await.unwrap() // the group went on
    /// })
    /// .await;
    /// assert_eq!(out, Ok(2));
    /// # });
    /// ```
    pub fn abort(&self) {
        let mut state = lock(&self.slot);
        if !matches!(state.outcome, Outcome::Running) {
            return;
        }
        state.aborted = true;
        drop(state);
        self.cell.abort();
    }
}

/// Terminated once it has returned (polling it again panics).
impl<T, E> FusedFuture for TaskHandle<'_, T, E> {
    fn is_terminated(&self) -> bool {
        matches!(lock(&self.slot).outcome, Outcome::Taken)
    }
}

impl<T, E> Future for TaskHandle<'_, T, E> {
    type Output = Result<Result<T, E>, TaskCancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot);
        match std::mem::replace(&mut state.outcome, Outcome::Taken) {
            Outcome::Done(output) => Poll::Ready(Ok(output)),
            Outcome::Cancelled => Poll::Ready(Err(TaskCancelled {
                aborted: state.aborted,
            })),
            Outcome::Running => {
                state.outcome = Outcome::Running;
                if state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    return Poll::Pending;
                }
                // Waker clone and drop are user code: never under the lock.
                drop(state);
                let new = cx.waker().clone();
                let mut state = lock(&self.slot);
                let old = state.waker.replace(new);
                let running = matches!(state.outcome, Outcome::Running);
                drop(state);
                drop(old);
                if !running {
                    // It finished (or was cancelled) while the lock was free
                    // and woke the waker it found: look again.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Outcome::Taken => {
                drop(state);
                panic!("`TaskHandle` polled after completion")
            }
        }
    }
}

impl<T, E> Drop for TaskHandle<'_, T, E> {
    fn drop(&mut self) {
        let mut state = lock(&self.slot);
        state.detached = true;
        let waker = state.waker.take();
        drop(state);
        drop(waker);
    }
}

impl<T, E> fmt::Debug for TaskHandle<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.slot);
        let state = match state.outcome {
            Outcome::Running if state.aborted => "aborting",
            Outcome::Running => "running",
            Outcome::Done(_) => "finished",
            Outcome::Taken => "taken",
            Outcome::Cancelled if state.aborted => "aborted",
            Outcome::Cancelled => "cancelled",
        };
        f.debug_struct("TaskHandle").field("state", &state).finish()
    }
}

/// The error of awaiting a [`TaskHandle`] whose task was dropped before it
/// finished: it was [aborted](TaskHandle::abort), or its group failed or
/// was dropped — Python's `CancelledError` from `await task`.
///
/// An `std::error::Error`; converts into `std::io::Error` (kind `Other`) and
/// into `String` (its message), so `handle.await??` works in a group whose
/// error type is `io::Error`, `String`, `Box<dyn Error + Send + Sync>` or
/// `anyhow::Error`.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let out = awaitkit::task_group(|tg| async move {
///     let task = tg.spawn(futures::future::pending::<std::io::Result<()>>());
///     task.abort();
///     let err: awaitkit::TaskCancelled = task.await.unwrap_err();
///     assert!(err.is_aborted());
///     assert_eq!(err.to_string(), "task was aborted");
///     let io: std::io::Error = err.into();
///     Err::<(), _>(io)
/// })
/// .await;
/// assert_eq!(out.unwrap_err().to_string(), "task was aborted");
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCancelled {
    aborted: bool,
}

impl TaskCancelled {
    /// `true` when [`TaskHandle::abort`] cancelled the task; `false` when
    /// its group failed or was dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let mut outside = None;
    /// let group = awaitkit::task_group(|tg| {
    ///     outside = Some(tg.spawn(futures::future::pending::<Result<(), ()>>()));
    ///     futures::future::pending::<Result<(), ()>>()
    /// });
    /// drop(group); // cancels every task
    /// let err = outside.unwrap().await.unwrap_err();
    /// assert!(!err.is_aborted());
    /// # });
    /// ```
    pub fn is_aborted(&self) -> bool {
        self.aborted
    }
}

impl fmt::Display for TaskCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.aborted {
            "task was aborted"
        } else {
            "task was cancelled: its task group failed or was dropped"
        })
    }
}

impl std::error::Error for TaskCancelled {}

impl From<TaskCancelled> for std::io::Error {
    fn from(cancelled: TaskCancelled) -> Self {
        std::io::Error::other(cancelled)
    }
}

/// The message, for tasks whose errors are `String`s.
impl From<TaskCancelled> for String {
    fn from(cancelled: TaskCancelled) -> Self {
        cancelled.to_string()
    }
}

// ---------------------------------------------------------------------------
// The group's core, shared by both families
// ---------------------------------------------------------------------------

struct Core<Fut: Future, E, C: Future<Output = Result<(), E>>> {
    /// `None` once the body finished (or was cancelled).
    body: Option<Pin<Box<Fut>>>,
    /// The body's `Ok` output, kept until every task finished.
    output: Option<Fut::Output>,
    tasks: Engine<C>,
    shared: Arc<Shared<C>>,
    /// Registers the task polling the group (`shared.signal.parent`).
    parent: ParentOwner,
    body_waker: Waker,
    /// Keep-going mode: the first error nobody took.
    first_error: Option<E>,
    /// Fail-fast: the error the group fails with, held while `draining`.
    failed: Option<E>,
    /// Tasks an `abort` on another thread is still dropping when the group
    /// failed: the group returns its error once they are gone.
    draining: Vec<C>,
    next_key: usize,
    finished: bool,
    poisoned: bool,
}

impl<Fut: Future, E, C: Future<Output = Result<(), E>>> Core<Fut, E, C> {
    /// Starts a group: `body` receives the state its scope wraps and returns
    /// the body's future.
    fn new(body: impl FnOnce(Arc<Shared<C>>) -> Fut) -> Self {
        let parent = ParentOwner::new();
        let shared = Arc::new(Shared::new(parent.shared()));
        let body = body(shared.clone());
        Self {
            body: Some(Box::pin(body)),
            output: None,
            tasks: Engine::new(),
            body_waker: Waker::from(shared.signal.clone()),
            shared,
            parent,
            first_error: None,
            failed: None,
            draining: Vec::new(),
            next_key: 0,
            finished: false,
            poisoned: false,
        }
    }

    /// Moves the queued tasks into the engine; each is polled in the next
    /// pass.
    fn drain(&mut self) {
        for task in self.shared.take() {
            self.tasks.push(task, self.next_key);
            self.next_key = self.next_key.wrapping_add(1);
        }
    }

    /// See [`TaskGroup::keep_going`].
    fn keep_going(&self) {
        self.shared.signal.keep_going.store(true, Ordering::Relaxed);
    }

    fn running(&self) -> usize {
        self.tasks.running()
    }
}

impl<Fut, R, E, C> Core<Fut, E, C>
where
    Fut: Future<Output = Result<R, E>>,
    C: Future<Output = Result<(), E>> + Child,
{
    /// Fail-fast: drops the body and every task now (all of them, even if
    /// destructors panic; the first panic propagates afterwards), and
    /// resolves to `e` — once no aborted task is still being dropped on
    /// another thread (until then it waits, woken by those drops).
    fn fail(&mut self, e: E, waker: &Waker) -> Poll<Result<R, E>> {
        self.finished = true;
        let queued = self.shared.close();
        let mut panics = Panics::default();
        let body = self.body.take();
        panics.catch(|| drop(body));
        // The tasks are `Unpin` (`cell::Task`): they can leave the engine.
        let tasks = self.tasks.drain_running();
        let mut draining = Vec::new();
        for (_, task) in tasks {
            panics.catch(|| {
                if task.close_or_wait(waker) {
                    draining.push(task);
                } else {
                    drop(task);
                }
            });
        }
        panics.drop_all(queued);
        if draining.is_empty() {
            // The error is dropped outside a task's panic.
            return Poll::Ready(Err(crate::unwind::hand_back(panics, e)));
        }
        self.draining = draining;
        self.failed = Some(e);
        self.finished = false;
        panics.resume();
        Poll::Pending
    }

    fn poll(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<Result<R, E>> {
        // `crate::poison::guarded`, inlined to borrow the rest of `self`.
        crate::poison::assert_live(self.poisoned, self.finished, what);
        self.poisoned = true;
        let out = self.poll_once(cx);
        self.poisoned = false;
        out
    }

    fn poll_once(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, E>> {
        if self.failed.is_some() {
            // Failed; waiting for aborted tasks still dropped elsewhere.
            let waker = cx.waker();
            self.draining.retain(|task| task.close_or_wait(waker));
            if !self.draining.is_empty() {
                return Poll::Pending;
            }
            self.finished = true;
            return Poll::Ready(Err(self.failed.take().expect("checked above")));
        }
        // Registered first: a spawn or a body wake from now on re-polls us.
        self.parent.register(cx.waker());

        // The body, if its waker fired.
        if self.body.is_some() && self.shared.signal.body_woken.swap(false, Ordering::AcqRel) {
            let body = self.body.as_mut().expect("checked above");
            match body
                .as_mut()
                .poll(&mut Context::from_waker(&self.body_waker))
            {
                Poll::Ready(Ok(value)) => {
                    self.output = Some(Ok(value));
                    drop(self.body.take());
                }
                Poll::Ready(Err(e)) => return self.fail(e, cx.waker()),
                Poll::Pending => {}
            }
        }

        // The tasks: those just spawned, and those whose waker fired.
        self.drain();
        let keep_going = self.shared.signal.keep_going.load(Ordering::Relaxed);
        let mut pass = self.tasks.pass(cx);
        while let Some(done) = pass.next() {
            pass.engine().release_slot(done.slot);
            if let Err(e) = done.output {
                if !keep_going {
                    return self.fail(e, cx.waker());
                }
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }

        if self.body.is_none() && self.tasks.running() == 0 {
            // Tasks spawned during the pass have woken us through `push`;
            // checking the queue and closing it is one step, so a spawn from
            // another thread either lands before (and we go on) or panics.
            let mut queue = lock(&self.shared.queue);
            if queue.incoming.is_empty() {
                queue.closed = true;
                drop(queue);
                self.finished = true;
                return Poll::Ready(match self.first_error.take() {
                    Some(e) => Err(e),
                    None => self.output.take().expect("the body's output is stored"),
                });
            }
        }
        Poll::Pending
    }
}

impl<Fut: Future, E, C: Future<Output = Result<(), E>>> Drop for Core<Fut, E, C> {
    fn drop(&mut self) {
        // The queue lives in `Shared`, which scopes (held by escaped tasks or
        // bodies) may keep alive: drop its tasks now, with the rest.
        // Everything the group holds is user code to drop: each goes on its
        // own, so one panicking destructor leaves none of the others (a
        // second panic while the first unwinds would abort).
        let mut panics = Panics::default();
        panics.drop_all(self.shared.close());
        let body = self.body.take();
        panics.catch(move || drop(body));
        panics.catch(|| self.tasks.clear());
        let output = self.output.take();
        panics.catch(move || drop(output));
        let error = self.first_error.take();
        panics.catch(move || drop(error));
        let failed = self.failed.take();
        panics.catch(move || drop(failed));
        panics.resume();
    }
}

impl<Fut: Future, E, C: Future<Output = Result<(), E>>> fmt::Debug for Core<Fut, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskGroup")
            .field("body_running", &self.body.is_some())
            .field("tasks", &self.running())
            .field(
                "keep_going",
                &self.shared.signal.keep_going.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Trait impls of the public wrappers, written once for both families
// ---------------------------------------------------------------------------

/// Implements the traits of a family's group and scope types, which only
/// delegate to `Core` and `Shared`: `Future`, `Unpin` and `Debug` for the
/// group, `Clone` and `Debug` for the scope. (The inherent methods carry
/// each family's own docs, so they are written out.)
macro_rules! delegate_to_core {
    ($group:ident, $scope:ident) => {
        impl<Fut, R, E> Future for $group<'_, Fut, E>
        where
            Fut: Future<Output = Result<R, E>>,
        {
            type Output = Result<R, E>;

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R, E>> {
                self.get_mut().core.poll(cx, stringify!($group))
            }
        }

        /// Terminated once it has returned its output (polling it again
        /// panics).
        impl<Fut, R, E> FusedFuture for $group<'_, Fut, E>
        where
            Fut: Future<Output = Result<R, E>>,
        {
            fn is_terminated(&self) -> bool {
                self.core.finished && !self.core.poisoned
            }
        }

        // The body is boxed and the tasks live in the engine's chunks;
        // outputs are never pinned.
        impl<Fut: Future, E> Unpin for $group<'_, Fut, E> {}

        impl<Fut: Future, E> fmt::Debug for $group<'_, Fut, E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.core.fmt(f)
            }
        }

        impl<E> Clone for $scope<'_, E> {
            fn clone(&self) -> Self {
                Self {
                    shared: self.shared.clone(),
                }
            }
        }

        impl<E> fmt::Debug for $scope<'_, E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($scope)).finish_non_exhaustive()
            }
        }
    };
}

// ---------------------------------------------------------------------------
// `Send` family
// ---------------------------------------------------------------------------

/// Runs `body` together with every task it spawns, inside one future —
/// Python 3.11's `async with asyncio.TaskGroup() as tg:` (a trio nursery),
/// without spawning anything on the executor.
///
/// `body` receives a [`TaskScope`]; [`TaskScope::spawn`] adds a task while
/// the group runs (from the body, from a task, or before the body first
/// runs) and returns a [`TaskHandle`] that resolves to the task's output.
/// Tasks may borrow from outside the group (they live no longer than the
/// [`TaskGroup`] future), though not from the body's own locals (the body
/// may finish before them): like `std::thread::scope`, borrow what lives
/// outside and move references in. The group resolves once the body **and** every
/// task have finished, to the body's output.
///
/// Errors: the body and every task return `Result<_, E>` with the same `E`.
/// By default the **first `Err`** — from a task or from the body — drops the
/// body and every other task at once (before the group returns) and the
/// group resolves to that error. [`keep_going`](TaskGroup::keep_going)
/// changes that for task errors.
///
/// Tasks must be `Send` (so the group can be); use [`task_group_local`] for
/// `!Send` tasks.
///
/// Tasks are polled only when their own waker fired (plus their first
/// poll), and the body only when its waker fired, so each wake costs O(1)
/// however many tasks run. One poll of the group polls the body and each
/// task at most once.
///
/// To see which child was slow, or which one blocked the executor, watch the
/// children with a [`watch::Report`](crate::watch::Report).
///
/// # Cancel safety
///
/// Dropping the [`TaskGroup`] drops the body and every unfinished task
/// synchronously (Python's group cancellation). Handles held outside the
/// group then report the cancellation (see [`TaskHandle`]).
///
/// # Panics
///
/// A panic in the body or a task (or in one of their destructors) propagates
/// out of `poll`; the rest are dropped when the group is dropped, and
/// polling the group again panics, as for an `async fn` that panicked.
/// Polling the group after it completed panics.
///
/// # Errors
///
/// The first `Err` of the body or of a task (see above and
/// [`keep_going`](TaskGroup::keep_going)).
///
/// # Examples
///
/// Background work: two long tasks run while the body does
/// other work, so the whole takes about as long as the longest, not the sum.
///
/// ```
/// use futures_timer::Delay;
/// use std::time::{Duration, Instant};
///
/// async fn long_running_task(n: u64) -> Result<u64, std::io::Error> {
///     Delay::new(Duration::from_millis(50)).await;
///     Ok(n * 10)
/// }
/// # futures::executor::block_on(async {
/// let start = Instant::now();
/// let (r1, r2) = awaitkit::task_group(|tg| async move {
///     let task1 = tg.spawn(long_running_task(1)); // asyncio.create_task(...)
///     let task2 = tg.spawn(long_running_task(2));
///     Delay::new(Duration::from_millis(50)).await; // do other work
///     Ok((task1.await??, task2.await??))
/// })
/// .await?;
/// assert_eq!((r1, r2), (10, 20));
/// assert!(start.elapsed() < Duration::from_millis(140)); // ≈ 50 ms, not 150
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
///
/// The first error cancels the rest:
///
/// ```
/// # futures::executor::block_on(async {
/// let result: Result<(), &str> = awaitkit::task_group(|tg| async move {
///     tg.spawn(futures::future::pending::<Result<(), &str>>()); // cancelled
///     tg.spawn(async { Err::<(), _>("boom") });
///     Ok(())
/// })
/// .await;
/// assert_eq!(result, Err("boom"));
/// # });
/// ```
pub fn task_group<'a, B, Fut, R, E>(body: B) -> TaskGroup<'a, Fut, E>
where
    B: FnOnce(TaskScope<'a, E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    TaskGroup {
        core: Core::new(|shared| body(TaskScope { shared })),
    }
}

/// Future for the [`task_group`] function.
///
/// `Unpin`; `Send` when the body, its output and `E` are (the tasks are
/// `Send` by construction); never `Sync` (the tasks are type-erased as
/// `Send` only — a future never needs `Sync` to be awaited or spawned).
///
/// # Examples
///
/// Store it, name it, poll it from your own code:
///
/// ```
/// use std::future::Future;
/// use std::task::{Context, Poll, Wake, Waker};
///
/// let mut group = awaitkit::task_group(|tg| async move {
///     let task = tg.spawn(async { Ok::<_, ()>(2) });
///     Ok(task.await.unwrap()? * 21)
/// });
/// let mut cx = Context::from_waker(Waker::noop());
/// let out = loop {
///     if let Poll::Ready(out) = std::pin::Pin::new(&mut group).poll(&mut cx) {
///         break out;
///     }
/// };
/// assert_eq!(out, Ok(42));
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct TaskGroup<'a, Fut: Future, E> {
    core: Core<Fut, E, SendChild<'a, E>>,
}

impl<Fut: Future, E> TaskGroup<'_, Fut, E> {
    /// Task errors no longer cancel anything: each `Err` goes to the task's
    /// [`TaskHandle`] like any output, and the other tasks and the body keep
    /// running. The error of a task whose handle was dropped (a detached
    /// task) is kept instead, and the group resolves to the first such error
    /// once everything finished. An `Err` from the **body** still cancels
    /// every task at once.
    ///
    /// Set it before the group is first polled.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::task_group(|tg| async move {
    ///     let bad = tg.spawn(async { Err::<u8, _>("bad input") });
    ///     let good = tg.spawn(async { Ok(2) });
    ///     // The failure is a value here; `good` was not cancelled.
    ///     let bad = bad.await.expect("not aborted"); // the task's own result
    ///     Ok((bad.unwrap_or(0), good.await.expect("not aborted")?))
    /// })
    /// .keep_going()
    /// .await;
    /// assert_eq!(out, Ok((0, 2)));
    ///
    /// // A detached task's error still fails the group, at the end.
    /// let out: Result<(), &str> = awaitkit::task_group(|tg| async move {
    ///     drop(tg.spawn(async { Err::<(), _>("lost?") }));
    ///     Ok(())
    /// })
    /// .keep_going()
    /// .await;
    /// assert_eq!(out, Err("lost?"));
    /// # });
    /// ```
    pub fn keep_going(self) -> Self {
        self.core.keep_going();
        self
    }

    /// Number of tasks the group is running (queued spawns not counted until
    /// the group's next poll).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = awaitkit::task_group(|tg| {
    ///     drop(tg.spawn(async { Ok::<_, ()>(()) }));
    ///     async { Ok(()) }
    /// });
    /// assert_eq!(group.len(), 0); // queued until first polled
    /// ```
    pub fn len(&self) -> usize {
        self.core.running()
    }

    /// Whether no task is running (see [`len`](TaskGroup::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = awaitkit::task_group(|_| async { Ok::<_, ()>(()) });
    /// assert!(group.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Spawns tasks into a [`TaskGroup`] — the `tg` of Python's
/// `async with TaskGroup() as tg:`.
///
/// Cheap to clone: move clones into tasks so they can spawn too.
/// `Send` and `Sync`.
///
/// # Examples
///
/// A task that spawns more tasks:
///
/// ```
/// # futures::executor::block_on(async {
/// let total = awaitkit::task_group(|tg| async move {
///     let inner = tg.clone();
///     let outer = tg.spawn(async move {
///         let a = inner.spawn(async { Ok::<_, ()>(1) });
///         let b = inner.spawn(async { Ok(2) });
///         Ok(a.await.unwrap()? + b.await.unwrap()?)
///     });
///     outer.await.unwrap()
/// })
/// .await;
/// assert_eq!(total, Ok(3));
/// # });
/// ```
pub struct TaskScope<'a, E> {
    shared: Arc<Shared<SendChild<'a, E>>>,
}

impl<'a, E: 'a> TaskScope<'a, E> {
    /// Adds a task to the group — Python's `tg.create_task(coro)`. It is
    /// first polled in the group's next poll, and runs until it finishes, the
    /// group fails, or the group is dropped, whether or not its handle is
    /// kept.
    ///
    /// # Panics
    ///
    /// Panics if the group already finished, failed or was dropped (only
    /// possible through a scope kept outside the group).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let greeting = String::from("hello");
    /// let greeting = &greeting; // tasks may borrow from outside the group
    /// let out = awaitkit::task_group(|tg| async move {
    ///     let len = tg.spawn(async move { Ok::<_, ()>(greeting.len()) });
    ///     len.await.unwrap()
    /// })
    /// .await;
    /// assert_eq!(out, Ok(5));
    /// # });
    /// ```
    #[track_caller]
    pub fn spawn<F, T>(&self, future: F) -> TaskHandle<'a, T, E>
    where
        F: IntoFuture<Output = Result<T, E>>,
        F::IntoFuture: Send + 'a,
        T: Send + 'a,
        E: Send,
    {
        let (task, slot) = task(future.into_future(), &self.shared.signal);
        let cell = Arc::new(TaskCell::new(Box::pin(task) as SendTask<'a, E>));
        self.shared.push(Task::new(cell.clone()));
        TaskHandle { slot, cell }
    }
}

delegate_to_core!(TaskGroup, TaskScope);

// ---------------------------------------------------------------------------
// Local family
// ---------------------------------------------------------------------------

/// [`task_group`] for tasks that are not `Send` (holding an `Rc`, a
/// `RefCell` borrow, …). Same semantics; the [`LocalTaskGroup`] is never
/// `Send`.
///
/// # Cancel safety
///
/// Dropping the [`LocalTaskGroup`] drops the body and every unfinished task
/// synchronously.
///
/// # Panics
///
/// As for [`task_group`]: panics in the body or a task propagate out of
/// `poll`; polling after completion panics.
///
/// # Errors
///
/// The first `Err` of the body or of a task (see
/// [`keep_going`](LocalTaskGroup::keep_going)).
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// # futures::executor::block_on(async {
/// let log = Rc::new(RefCell::new(Vec::new()));
/// let out = awaitkit::task_group_local(|tg| async move {
///     for i in 0..3 {
///         let log = log.clone();
///         tg.spawn(async move {
///             log.borrow_mut().push(i);
///             Ok::<_, ()>(())
///         });
///     }
///     Ok(log)
/// })
/// .await
/// .unwrap();
/// assert_eq!(out.borrow().len(), 3);
/// # });
/// ```
pub fn task_group_local<'a, B, Fut, R, E>(body: B) -> LocalTaskGroup<'a, Fut, E>
where
    B: FnOnce(LocalTaskScope<'a, E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    LocalTaskGroup {
        core: Core::new(|shared| body(LocalTaskScope { shared })),
    }
}

/// Future for the [`task_group_local`] function.
///
/// `Unpin`; neither `Send` nor `Sync`.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let group: awaitkit::LocalTaskGroup<_, ()> = awaitkit::task_group_local(|tg| async move {
///     let rc = std::rc::Rc::new(5);
///     tg.spawn(async move { Ok(*rc) }).await.unwrap()
/// });
/// assert_eq!(group.await, Ok(5));
/// # });
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct LocalTaskGroup<'a, Fut: Future, E> {
    core: Core<Fut, E, LocalChild<'a, E>>,
}

impl<Fut: Future, E> LocalTaskGroup<'_, Fut, E> {
    /// [`TaskGroup::keep_going`]: task errors go to their handles instead of
    /// cancelling the group.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::task_group_local(|tg| async move {
    ///     let bad = tg.spawn(async { Err::<u8, _>("bad") });
    ///     Ok(bad.await.unwrap().is_err())
    /// })
    /// .keep_going()
    /// .await;
    /// assert_eq!(out, Ok(true));
    /// # });
    /// ```
    pub fn keep_going(self) -> Self {
        self.core.keep_going();
        self
    }

    /// Number of tasks the group is running (queued spawns not counted until
    /// the group's next poll).
    ///
    /// # Examples
    ///
    /// ```
    /// let group = awaitkit::task_group_local(|_| async { Ok::<_, ()>(()) });
    /// assert_eq!(group.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.core.running()
    }

    /// Whether no task is running.
    ///
    /// # Examples
    ///
    /// ```
    /// let group = awaitkit::task_group_local(|_| async { Ok::<_, ()>(()) });
    /// assert!(group.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Spawns tasks into a [`LocalTaskGroup`]; like [`TaskScope`] without the
/// `Send` requirement. Neither `Send` nor `Sync`.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let out = awaitkit::task_group_local(|tg| async move {
///     let scope: awaitkit::LocalTaskScope<'_, ()> = tg.clone();
///     scope.spawn(async { Ok(std::rc::Rc::new(1)) }).await.unwrap()
/// })
/// .await;
/// assert_eq!(out.map(|rc| *rc), Ok(1));
/// # });
/// ```
pub struct LocalTaskScope<'a, E> {
    shared: Arc<Shared<LocalChild<'a, E>>>,
}

impl<'a, E: 'a> LocalTaskScope<'a, E> {
    /// Adds a task to the group; see [`TaskScope::spawn`].
    ///
    /// # Panics
    ///
    /// Panics if the group already finished, failed or was dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let out = awaitkit::task_group_local(|tg| async move {
    ///     let rc = std::rc::Rc::new(2);
    ///     tg.spawn(async move { Ok::<_, ()>(*rc * 2) }).await.unwrap()
    /// })
    /// .await;
    /// assert_eq!(out, Ok(4));
    /// # });
    /// ```
    #[track_caller]
    pub fn spawn<F, T>(&self, future: F) -> TaskHandle<'a, T, E>
    where
        F: IntoFuture<Output = Result<T, E>>,
        F::IntoFuture: 'a,
        T: 'a,
    {
        let (task, slot) = task(future.into_future(), &self.shared.signal);
        let cell = Arc::new(LocalCell::new(Box::pin(task) as LocalTask<'a, E>));
        self.shared.push(Task::new(cell.clone()));
        TaskHandle { slot, cell }
    }
}

delegate_to_core!(LocalTaskGroup, LocalTaskScope);
