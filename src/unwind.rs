//! Running several pieces of user code (destructors, wakers) when any of them
//! may panic: every piece runs, and the first panic propagates afterwards.
//!
//! This is what a `Vec`'s drop glue does for one panic; `Panics` also keeps
//! going past a second one (instead of aborting), which matters for
//! destructors of children and for wake lists, where one bad piece of user
//! code must not leave the others undropped or un-woken.

#![forbid(unsafe_code)]

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::task::Poll;

/// A caught panic's payload.
pub(crate) type Payload = Box<dyn Any + Send>;

/// The first panic caught so far.
#[derive(Default)]
pub(crate) struct Panics(Option<Payload>);

impl std::fmt::Debug for Panics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Panics").field(&self.0.is_some()).finish()
    }
}

impl Panics {
    /// Runs `f`; if it panics, keeps the payload when it is the first one.
    #[inline]
    pub(crate) fn catch(&mut self, f: impl FnOnce()) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            self.keep(Some(payload));
        }
    }

    /// Whether a panic was caught.
    pub(crate) fn caught(&self) -> bool {
        self.0.is_some()
    }

    /// Drops every item, each under [`Panics::catch`] (a `Vec`'s own drop
    /// aborts the process on a second panic).
    pub(crate) fn drop_all<T>(&mut self, items: impl IntoIterator<Item = T>) {
        for item in items {
            self.catch(move || drop(item));
        }
    }

    /// Drops `value` under [`Panics::catch`], keeping first a panic that a
    /// part of it [`stash`]ed meanwhile (that one came first).
    pub(crate) fn drop_stashing<T>(&mut self, value: T) {
        self.catch_stashing(move || drop(value));
    }

    /// Runs `f` (a drop) under [`Panics::catch`], keeping first a panic
    /// that a part of what it drops [`stash`]ed meanwhile (that one came
    /// first).
    pub(crate) fn catch_stashing(&mut self, f: impl FnOnce()) {
        // One may run inside another's drop (a destructor cancelling
        // another pool's `get`): the enclosing one's stash is set aside,
        // then put back.
        let enclosing = take_stashed();
        let mut own = Panics::default();
        own.catch(f);
        self.keep(take_stashed());
        self.keep(own.0);
        stash(enclosing);
    }

    /// Keeps `payload` (a panic caught elsewhere) if it is the first one;
    /// discards it otherwise.
    #[cold]
    pub(crate) fn keep(&mut self, payload: Option<Payload>) {
        let Some(payload) = payload else { return };
        if self.0.is_none() {
            self.0 = Some(payload);
        } else {
            discard(payload);
        }
    }

    /// The first panic, for the caller to propagate or discard later.
    pub(crate) fn take(self) -> Option<Payload> {
        self.0
    }

    /// Propagates the first panic caught, if any (see [`resume`]).
    #[inline]
    pub(crate) fn resume(self) {
        resume(self.0);
    }
}

thread_local! {
    /// A panic [`stash`]ed by a destructor that ran inside drop glue the
    /// crate does not write, until [`Panics::drop_stashing`] takes it.
    static STASHED: std::cell::Cell<Option<Payload>> = const { std::cell::Cell::new(None) };
}

/// Keeps a panic caught in a destructor that runs inside drop glue the
/// crate does not write (an `async` block's locals: a panic escaping there
/// would drop the block's other locals during its unwind), for the
/// [`Panics::drop_stashing`] that dropped the outer value on this thread.
/// The first one stashed wins; a later one is discarded.
pub(crate) fn stash(payload: Option<Payload>) {
    let Some(payload) = payload else { return };
    let rejected = STASHED.try_with(move |slot| match slot.take() {
        None => {
            slot.set(Some(payload));
            None
        }
        Some(first) => {
            slot.set(Some(first));
            Some(payload)
        }
    });
    if let Ok(Some(payload)) = rejected {
        discard(payload);
    }
}

fn take_stashed() -> Option<Payload> {
    STASHED.try_with(std::cell::Cell::take).ok().flatten()
}

/// Propagates `payload`, if any. While the thread is already unwinding (the
/// user code ran in a destructor called during another panic), a second
/// panic would abort the process: the payload is discarded instead and the
/// panic under way goes on.
#[inline]
pub(crate) fn resume(payload: Option<Payload>) {
    if let Some(payload) = payload {
        if std::thread::panicking() {
            discard(payload);
        } else {
            resume_unwind(payload);
        }
    }
}

/// Makes a future of user code with `make` (a pool manager's create or
/// recycle, a Redis connection's call) and awaits it, then drops it
/// *before* returning its output, catching a panic of its destructor for
/// the caller to propagate.
///
/// Dropping it at the end of the `async` block instead would lose the
/// output when the destructor panics: Rust does not drop a value being
/// returned when a destructor in the same scope panics
/// (rust-lang/rust#47949), so a freshly created object would be leaked, its
/// slot counted forever. A panic of `make` or of the future's `poll` is
/// caught too, and the output is then `None`: the `async` block calling
/// this returns normally, its object in hand, instead of dropping it
/// during that panic's unwind.
///
/// Dropped before it completes (the pool's `Get` or the Redis call
/// cancelled), the user's future goes first, and a panic of its destructor
/// is [`stash`]ed for the owner's [`Panics::drop_stashing`] rather than
/// escaping into the `async` block's drop glue (which would drop the
/// block's other values, an object or a connection, during that panic's
/// unwind).
pub(crate) async fn settle<F: Future>(make: impl FnOnce() -> F) -> (Option<F::Output>, Panics) {
    let mut panics = Panics::default();
    let mut made = None;
    panics.catch(|| made = Some(make()));
    let Some(future) = made else {
        return (None, panics);
    };
    let mut settling = std::pin::pin!(Settling {
        future: Some(future)
    });
    let out = std::future::poll_fn(|cx| {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            settling
                .as_mut()
                .project()
                .future
                .as_pin_mut()
                .expect("polled until it completes")
                .poll(cx)
        }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Some(out)),
            Err(payload) => {
                panics.keep(Some(payload));
                Poll::Ready(None)
            }
        }
    })
    .await;
    panics.catch(|| settling.as_mut().project().future.set(None));
    (out, panics)
}

pin_project_lite::pin_project! {
    /// The user's future in [`settle`], dropped under `catch_unwind`
    /// wherever it goes.
    struct Settling<F> {
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Settling<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut panics = Panics::default();
            panics.catch(|| this.project().future.set(None));
            match panics.take() {
                // Dropped during an unwind (a panic elsewhere in the
                // `async` block): nobody could receive a second panic.
                Some(payload) if std::thread::panicking() => {
                    crate::unwind::discard(payload)
                }
                payload => stash(payload),
            }
        }
    }
}

/// A `Vec` of user values whose drop drops each on its own: every element
/// is dropped even if several destructors panic, then the first panic
/// propagates (or is discarded while another one unwinds). A plain `Vec`
/// aborts the process on a second panic.
#[derive(Debug)]
pub(crate) struct DropEach<T>(pub(crate) Vec<T>);

impl<T> Default for DropEach<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Drop for DropEach<T> {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let mut panics = Panics::default();
            panics.drop_all(std::mem::take(&mut self.0));
            panics.resume();
        }
    }
}

/// Drops `value`, user code whose destructor may panic: the panic
/// propagates, unless this thread is already unwinding (a second panic
/// escaping a destructor then would abort the process): then it is
/// discarded. The same as [`Panics::catch`] then [`Panics::resume`] for one
/// value, without a `catch_unwind` on the usual path.
#[inline]
pub(crate) fn drop_user<T>(value: T) {
    if std::thread::panicking() {
        contain(move || drop(value));
    } else {
        drop(value);
    }
}

/// Hands `value` back unless `panics` caught one: then `value` is dropped
/// (outside any unwind, a panic of its own discarded) and the first panic
/// propagates — or, while this thread is already unwinding (a second panic
/// would abort the process), the panic is discarded and `value` handed back.
/// For an output decided before the user code that panicked ran (a finished
/// child's destructor, the siblings dropped for a winner).
pub(crate) fn hand_back<V>(panics: Panics, value: V) -> V {
    match panics.take() {
        None => value,
        Some(payload) if std::thread::panicking() => {
            discard(payload);
            value
        }
        Some(payload) => {
            contain(move || drop(value));
            resume_unwind(payload)
        }
    }
}

/// Hands `value` (a builder's result) back once `dispose` has dropped what
/// it replaced (user code, its panics kept in the `Panics` given): if that
/// panics, `value` is dropped too before the panic propagates — neither
/// leaked (as a return value is when a local's destructor panics,
/// rust-lang/rust#47949) nor dropped during the unwind (see [`hand_back`]).
pub(crate) fn after_dropping<V>(value: V, dispose: impl FnOnce(&mut Panics)) -> V {
    let mut panics = Panics::default();
    dispose(&mut panics);
    hand_back(panics, value)
}

/// Runs `f` (user code) with `value` at hand and hands both back; if `f`
/// panics, `value` is dropped first (outside that panic's unwind, a panic
/// of its own discarded), then the panic propagates.
pub(crate) fn keeping<V, R>(value: V, f: impl FnOnce(&V) -> R) -> (V, R) {
    match catch_unwind(AssertUnwindSafe(|| f(&value))) {
        Ok(out) => (value, out),
        Err(payload) => {
            contain(move || drop(value));
            resume_unwind(payload)
        }
    }
}

/// [`keeping`], for `f` that changes `value` (takes from it, fills it).
pub(crate) fn keeping_mut<V, R>(value: V, f: impl FnOnce(&mut V) -> R) -> (V, R) {
    let mut value = value;
    match catch_unwind(AssertUnwindSafe(|| f(&mut value))) {
        Ok(out) => (value, out),
        Err(payload) => {
            contain(move || drop(value));
            resume_unwind(payload)
        }
    }
}

/// A builder's result made from `old` (the value it replaces, whose parts
/// `build` reads: user code may run, a timer's clock or `clone`), then
/// `old` dropped. If `build` panics, `old` is dropped before that panic
/// propagates; if dropping `old` panics, the new value is dropped too
/// before it does (not leaked with the return value, rust-lang/rust#47949).
pub(crate) fn rebuild<V, N>(old: V, build: impl FnOnce(&V) -> N) -> N {
    let (old, new) = keeping(old, build);
    after_dropping(new, move |panics| panics.catch(move || drop(old)))
}

/// Runs `f`; a panic in it is discarded (for user code whose panic nobody
/// could receive, such as dropping an output that was replaced by a panic).
pub(crate) fn contain(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        discard(payload);
    }
}

/// Drops a panic payload nobody will see. A payload whose own destructor
/// panics is dropped through that second panic's payload in turn (usually a
/// plain message); a chain that keeps panicking is leaked after a few rounds
/// rather than aborting the process.
#[cold]
pub(crate) fn discard(payload: Payload) {
    let mut payload = payload;
    for _ in 0..4 {
        match catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(again) => payload = again,
        }
    }
    std::mem::forget(payload);
}

#[cfg(test)]
mod tests {
    use super::Panics;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn every_piece_runs_and_the_first_panic_propagates() {
        let mut ran = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut panics = Panics::default();
            for i in 0..4 {
                panics.catch(|| {
                    ran.push(i);
                    assert!(i % 2 == 0, "piece {i}");
                });
            }
            panics.resume();
        }));
        assert_eq!(ran, [0, 1, 2, 3]);
        let payload = result.expect_err("the first panic propagates");
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "piece 1");
    }

    #[test]
    fn a_payload_that_panics_when_dropped_is_not_fatal() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("payload drop");
            }
        }
        let mut panics = Panics::default();
        panics.catch(|| panic!("first"));
        panics.catch(|| std::panic::panic_any(Bomb));
        let payload = catch_unwind(AssertUnwindSafe(|| panics.resume())).unwrap_err();
        assert_eq!(*payload.downcast_ref::<&str>().unwrap(), "first");
    }
}
