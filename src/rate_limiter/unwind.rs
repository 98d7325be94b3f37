//! User code the limiter runs (wakers' `wake`, `clone` and `drop`, the
//! timer) may panic. These helpers run every piece anyway and keep the first
//! panic for later: the limiter settles its own state first, then either
//! propagates it (when the caller is the user's own code: a poll, a drop, a
//! `set_quota`) or discards it (on the timer's thread, which must survive).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::task::Waker;

/// A caught panic's payload.
pub(super) type Payload = Box<dyn Any + Send>;

/// The first panic caught so far.
#[derive(Default)]
pub(super) struct Panics(Option<Payload>);

impl Panics {
    /// Runs `f`, keeping its panic if it is the first.
    #[inline]
    pub(super) fn catch(&mut self, f: impl FnOnce()) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            self.keep(Some(payload));
        }
    }

    /// Keeps `payload` if it is the first panic; drops it otherwise.
    #[cold]
    pub(super) fn keep(&mut self, payload: Option<Payload>) {
        let Some(payload) = payload else { return };
        if self.0.is_none() {
            self.0 = Some(payload);
        } else {
            discard(payload);
        }
    }

    /// The first panic, if any.
    pub(super) fn take(self) -> Option<Payload> {
        self.0
    }

    /// Propagates the first panic. While the thread is already unwinding
    /// (a drop during another panic), a second panic would abort the
    /// process: it is discarded instead and the panic under way goes on.
    #[inline]
    pub(super) fn resume(self) {
        resume(self.0);
    }
}

/// Propagates `payload` (see [`Panics::resume`]).
#[inline]
pub(super) fn resume(payload: Option<Payload>) {
    if let Some(payload) = payload {
        if std::thread::panicking() {
            discard(payload);
        } else {
            resume_unwind(payload);
        }
    }
}

/// Drops a payload nobody will see; one whose own destructor panics is
/// leaked instead.
#[cold]
pub(super) fn discard(payload: Payload) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
        std::mem::forget(again);
    }
}

/// Wakers collected under a lock, to wake once every lock is released and
/// the driver's flag is settled. The first is stored inline: most passes
/// wake one.
#[derive(Debug, Default)]
pub(super) struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    pub(super) fn push(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }

    /// Wakes every waker, even when some panic; the first panic is kept in
    /// `panics`. (A waker that panics in `wake` is not dropped again: `wake`
    /// consumed it.)
    pub(super) fn wake_all(self, panics: &mut Panics) {
        let Wakers { first, rest } = self;
        if let Some(first) = first {
            panics.catch(|| first.wake());
        }
        let mut rest = rest.into_iter();
        // A panic leaves the iterator past the waker that panicked: the
        // loop resumes with the next one.
        while rest.len() != 0 {
            panics.catch(|| rest.by_ref().for_each(Waker::wake));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct W {
        id: usize,
        woken: Arc<AtomicUsize>,
        panics: bool,
    }

    impl Wake for W {
        fn wake(self: Arc<Self>) {
            self.woken.fetch_add(1 << self.id, Ordering::SeqCst);
            assert!(!self.panics, "waker {}", self.id);
        }
    }

    #[test]
    fn every_waker_is_woken_and_the_first_panic_is_kept() {
        let woken = Arc::new(AtomicUsize::new(0));
        let mut wakers = Wakers::default();
        for id in 0..5 {
            let panics = id % 2 == 0;
            wakers.push(Some(Waker::from(Arc::new(W {
                id,
                woken: woken.clone(),
                panics,
            }))));
        }
        let mut panics = Panics::default();
        wakers.wake_all(&mut panics);
        assert_eq!(woken.load(Ordering::SeqCst), 0b11111);
        let payload = panics.take().expect("a panic was kept");
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "waker 0");
    }
}
