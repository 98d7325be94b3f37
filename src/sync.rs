//! A tiny shim so the engine's atomics can be swapped for loom's in the
//! model-checking build (`RUSTFLAGS="--cfg awaitkit_loom"`).
//!
//! The cfg name is crate-specific on purpose: a global `--cfg loom` would also
//! change event-listener (and so smol and async-lock) in the dev-dependency
//! graph.

#[cfg(not(awaitkit_loom))]
pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
}

#[cfg(awaitkit_loom)]
pub(crate) mod atomic {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
}

#[cfg(not(awaitkit_loom))]
pub(crate) use futures_util::task::AtomicWaker;

#[cfg(awaitkit_loom)]
pub(crate) use loom_waker::AtomicWaker;

#[cfg(awaitkit_loom)]
mod loom_waker {
    use loom::sync::Mutex;
    use std::task::Waker;

    /// A lock-based stand-in for `futures::task::AtomicWaker` that loom can
    /// see. It has the same contract: `wake` wakes the last registered waker,
    /// and a wake that races with `register` is never lost.
    #[derive(Debug, Default)]
    pub(crate) struct AtomicWaker {
        waker: Mutex<Option<Waker>>,
    }

    impl AtomicWaker {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn register(&self, waker: &Waker) {
            let mut slot = self.waker.lock().unwrap();
            match &*slot {
                Some(old) if old.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }

        pub(crate) fn take(&self) -> Option<Waker> {
            self.waker.lock().unwrap().take()
        }

        pub(crate) fn wake(&self) {
            let waker = self.waker.lock().unwrap().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}
