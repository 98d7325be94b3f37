//! Where a task's future lives, so that its handle can drop it
//! ([`TaskHandle::abort`](super::TaskHandle::abort)) while the group owns it.
//!
//! The group's engine holds a [`Task`], which points at a [`TaskCell`]; the
//! task's handle points at the same cell. The future sits in the cell while
//! nobody polls it:
//!
//! * **The group** polls a task by taking its future out of the cell (the
//!   cell is then `Polling`), polling it with no lock held, and putting it
//!   back — unless an abort came in meanwhile, in which case it drops the
//!   future there, before its own poll returns.
//! * **An abort** that finds the future in the cell takes it and drops it
//!   right away, on the aborting thread, then wakes the task's waker so the
//!   group's engine counts the task as done (until then the group sees the
//!   task as still running: a group never finishes while one of its tasks
//!   is being dropped on another thread). One that finds the cell `Polling`
//!   only leaves the request.
//!
//! So a future is dropped exactly once, by whoever takes it out last, and
//! never under the cell's lock. The cell's lock guards only that hand-over
//! (and the task's waker): it is never held while user code runs.
//!
//! Tasks of a local group are not `Send`: their cell ([`LocalCell`]) can be
//! reached from any thread through a (`Send`) handle, but only the group's
//! own thread ever touches the future in it. An abort from another thread
//! leaves a request, as if the group were polling, and the group drops the
//! future at its next poll. This is the one `unsafe` of the task group.

#![allow(unsafe_code)]

use crate::sync::{Mutex, MutexGuard};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cell's future (`C` is a boxed, type-erased task).
enum Held<C> {
    /// In the cell: neither polled nor dropped right now.
    Idle(C),
    /// Taken out by the group, which is polling it.
    Polling,
    /// Taken out by an abort, which is dropping it: the group waits (the
    /// abort wakes the task when the drop is over), so it never finishes
    /// while one of its tasks is still being dropped elsewhere.
    Dropping,
    /// Finished, aborted or dropped with the group.
    Gone,
}

struct State<C> {
    future: Held<C>,
    /// An abort came in while the future was out (or, for a local task,
    /// from another thread): whoever holds the future next drops it.
    abort: bool,
    /// The task's waker in the group's engine (a clone of the waker of its
    /// latest poll): an abort wakes it, so the engine polls the task once
    /// more, finds it gone and counts it as done.
    waker: Option<Waker>,
}

/// A task's future, shared by the group (through [`Task`]) and the task's
/// handle.
pub(super) struct TaskCell<C> {
    state: Mutex<State<C>>,
}

impl<C> TaskCell<C> {
    pub(super) fn new(future: C) -> Self {
        Self {
            state: Mutex::new(State {
                future: Held::Idle(future),
                abort: false,
                waker: None,
            }),
        }
    }

    /// Drops the future now if it is in the cell; if the group is polling
    /// it, leaves the request for the group. Wakes the task's waker when it
    /// dropped the future (also if the destructor panics, which then
    /// propagates).
    fn abort_here(&self) {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut state.future, Held::Dropping) {
            Held::Idle(future) => {
                drop(state);
                let dropped = catch_unwind(AssertUnwindSafe(move || drop(future)));
                let mut state = lock(&self.state);
                state.future = Held::Gone;
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                if let Err(panic) = dropped {
                    resume_unwind(panic);
                }
            }
            Held::Polling => {
                state.future = Held::Polling;
                state.abort = true;
            }
            other @ (Held::Gone | Held::Dropping) => state.future = other,
        }
    }

    /// Leaves an abort request and wakes the task, so the group drops the
    /// future at its next poll (for a local task aborted from another
    /// thread: the future itself is never touched here).
    fn request_abort(&self) {
        let mut state = lock(&self.state);
        if matches!(state.future, Held::Gone | Held::Dropping) {
            return;
        }
        state.abort = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Drops the future if it is still here (an abort dropping it on
    /// another thread goes on). Runs on the group's thread.
    fn close_here(&self) {
        let mut state = lock(&self.state);
        let future = match std::mem::replace(&mut state.future, Held::Gone) {
            Held::Dropping => {
                state.future = Held::Dropping;
                None
            }
            other => Some(other),
        };
        drop(state);
        drop(future);
    }

    /// For a failing group: drops the future here if it is in the cell and
    /// returns `false`; if an abort is dropping it on another thread, stores
    /// `waker` (cloned outside the lock) to be woken when that drop is over
    /// and returns `true`. One step under the lock, so an abort cannot take
    /// the future between the look and the drop.
    fn close_or_wait(&self, waker: &Waker) -> bool {
        let mut new: Option<Waker> = None;
        loop {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut state.future, Held::Gone) {
                Held::Idle(future) => {
                    let old = state.waker.take();
                    drop(state);
                    drop(future);
                    drop(old);
                    drop(new);
                    return false;
                }
                Held::Dropping => {
                    state.future = Held::Dropping;
                    if state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                        drop(state);
                        drop(new);
                        return true;
                    }
                    if let Some(new) = new.take() {
                        let old = state.waker.replace(new);
                        drop(state);
                        drop(old);
                        return true;
                    }
                    drop(state);
                    new = Some(waker.clone());
                }
                other => {
                    state.future = other;
                    drop(state);
                    drop(new);
                    return false;
                }
            }
        }
    }

    /// While an abort drops the future on another thread: stores `waker`
    /// (cloned outside the lock) to be woken when that drop is over, and
    /// returns `true`; `false` once it is over.
    fn wait_for_drop(&self, waker: &Waker) -> bool {
        let state = lock(&self.state);
        if !matches!(state.future, Held::Dropping) {
            return false;
        }
        if state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return true;
        }
        drop(state);
        let new = waker.clone();
        let mut state = lock(&self.state);
        if !matches!(state.future, Held::Dropping) {
            drop(state);
            drop(new);
            return false;
        }
        let old = state.waker.replace(new);
        drop(state);
        drop(old);
        true
    }
}

impl<C, E> TaskCell<C>
where
    C: Future<Output = Result<(), E>> + Unpin,
{
    /// The group polls the task. An aborted task counts as finished, with
    /// nothing to report (`Ok(())`).
    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let mut state = lock(&self.state);
        let future = match std::mem::replace(&mut state.future, Held::Polling) {
            Held::Idle(future) if !state.abort => future,
            Held::Idle(future) => {
                state.future = Held::Gone;
                drop(state);
                drop(future);
                return Poll::Ready(Ok(()));
            }
            Held::Gone => {
                state.future = Held::Gone;
                return Poll::Ready(Ok(()));
            }
            Held::Dropping => {
                // An abort is dropping it on another thread; it wakes the
                // task's waker when done.
                state.future = Held::Dropping;
                drop(state);
                return if self.wait_for_drop(cx.waker()) {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            Held::Polling => unreachable!("a task is polled by its group only"),
        };
        // The engine's waker of a slot stays the same while its task runs;
        // it is cloned once (no user code: the engine's own waker).
        let new_waker = match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => Some(cx.waker().clone()),
        };
        drop(state);

        // If the task's poll panics, its future goes back into the cell, to
        // be dropped with the group (as any child of a combinator that
        // panicked), not by the unwind.
        let mut back = PutBack {
            cell: self,
            future: Some(future),
        };
        let polled = Pin::new(back.future.as_mut().expect("just put")).poll(cx);
        let future = back.future.take().expect("still there");

        let mut state = lock(&self.state);
        let old_waker = new_waker.and_then(|w| state.waker.replace(w));
        let (out, dropped) = match polled {
            Poll::Ready(out) => {
                state.future = Held::Gone;
                (Poll::Ready(out), Some(future))
            }
            Poll::Pending if state.abort => {
                state.future = Held::Gone;
                (Poll::Ready(Ok(())), Some(future))
            }
            Poll::Pending => {
                state.future = Held::Idle(future);
                (Poll::Pending, None)
            }
        };
        drop(state);
        drop(old_waker);
        drop(dropped);
        out
    }
}

/// Puts a task's future back into its cell if the task's poll unwinds.
struct PutBack<'c, C> {
    cell: &'c TaskCell<C>,
    future: Option<C>,
}

impl<C> Drop for PutBack<'_, C> {
    fn drop(&mut self) {
        // `future` is still here only when the task's poll unwound.
        if let Some(future) = self.future.take() {
            lock(&self.cell.state).future = Held::Idle(future);
        }
    }
}

/// What a handle needs of its task's cell, whatever the task's type.
pub(super) trait Abort {
    fn abort(&self);
}

impl<C> Abort for TaskCell<C> {
    fn abort(&self) {
        self.abort_here();
    }
}

/// The cell of a task of a local group: the task is not `Send`, the handle
/// is (when the output is), so the cell is `Send` and `Sync` and checks the
/// thread itself.
pub(super) struct LocalCell<C> {
    cell: TaskCell<C>,
    /// The group's thread: a local group is not `Send`, so it never leaves
    /// the thread that built it, and neither do its tasks.
    owner: ThreadId,
}

impl<C> LocalCell<C> {
    pub(super) fn new(future: C) -> Self {
        Self {
            cell: TaskCell::new(future),
            owner: thread::current().id(),
        }
    }
}

impl<C> Abort for LocalCell<C> {
    fn abort(&self) {
        if thread::current().id() == self.owner {
            self.cell.abort_here();
        } else {
            self.cell.request_abort();
        }
    }
}

// SAFETY: the only `!Send` part of a `LocalCell` is the task's future `C`.
// It is created on the owner thread (`LocalScope::spawn`) and is moved,
// polled and dropped only on it: by the group (which is `!Send`, so it runs
// on the owner thread: `poll`, `close`), and by `abort` only after checking
// the thread. From any other thread, `request_abort` locks the state but
// touches only `abort` and `waker` (both `Send`), and reads whether the
// future is `Gone` (a discriminant read under the lock, not an access to the
// future). The cell itself is dropped where its last `Arc` goes, maybe on
// another thread; by then the future is `Gone`: the group's `Task` holds an
// `Arc` until it has emptied the cell (`Task::drop` → `close`), and a leaked
// group leaks that `Arc` too, so the cell is never dropped with a future in
// it. (`Drop for LocalCell` below makes sure of it anyway.)
unsafe impl<C> Send for LocalCell<C> {}
// SAFETY: as for `Send`: shared access from other threads never reaches the
// future.
unsafe impl<C> Sync for LocalCell<C> {}

impl<C> Drop for LocalCell<C> {
    fn drop(&mut self) {
        let state = self
            .cell
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Held::Idle(_) = state.future {
            if thread::current().id() != self.owner {
                // Unreachable (see the `Send` impl); leak rather than drop a
                // `!Send` future on the wrong thread.
                std::mem::forget(std::mem::replace(&mut state.future, Held::Gone));
            }
        }
    }
}

/// The group's side of a task: the engine's child.
pub(super) struct Task<A: Close> {
    cell: Arc<A>,
    /// The group holds the task's future (in the cell): it is `Send` and
    /// `Sync` exactly when the future is (a `LocalCell` is `Send` for the
    /// handle's sake, but a local group must never leave its thread).
    _future: PhantomData<A::Future>,
}

// Only an `Arc` to the cell: nothing of a `Task` is ever pinned.
impl<A: Close> Unpin for Task<A> {}

impl<A: Close> Task<A> {
    pub(super) fn new(cell: Arc<A>) -> Self {
        Self {
            cell,
            _future: PhantomData,
        }
    }
}

/// A cell the group can poll: [`TaskCell`] or [`LocalCell`].
pub(super) trait Polled: Close {
    /// The task's output (`Result<(), E>`).
    type Output;
    fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Self::Output>;
}

impl<C, E> Polled for TaskCell<C>
where
    C: Future<Output = Result<(), E>> + Unpin,
{
    type Output = Result<(), E>;

    fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.poll(cx)
    }
}

impl<C, E> Polled for LocalCell<C>
where
    C: Future<Output = Result<(), E>> + Unpin,
{
    type Output = Result<(), E>;

    fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.cell.poll(cx)
    }
}

impl<A: Polled> Future for Task<A> {
    type Output = A::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        self.cell.poll_task(cx)
    }
}

impl<A: Close> Task<A> {
    /// Drops the task's future now, unless an abort is dropping it on
    /// another thread: then returns `true`, and `waker` is woken when that
    /// drop is over.
    pub(super) fn close_or_wait(&self, waker: &Waker) -> bool {
        self.cell.close_or_wait(waker)
    }
}

impl<A: Close> Drop for Task<A> {
    fn drop(&mut self) {
        self.cell.close();
    }
}

/// The group drops a task (fail-fast, or the group itself is dropped).
pub(super) trait Close {
    /// The task's future.
    type Future;
    fn close(&self);
    /// See [`TaskCell::close_or_wait`].
    fn close_or_wait(&self, waker: &Waker) -> bool;
}

impl<C> Close for TaskCell<C> {
    type Future = C;

    fn close(&self) {
        self.close_here();
    }

    fn close_or_wait(&self, waker: &Waker) -> bool {
        TaskCell::close_or_wait(self, waker)
    }
}

impl<C> Close for LocalCell<C> {
    type Future = C;

    fn close(&self) {
        self.cell.close_here();
    }

    fn close_or_wait(&self, waker: &Waker) -> bool {
        self.cell.close_or_wait(waker)
    }
}
