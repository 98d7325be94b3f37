//! A tiny shim so the engine's atomics and cells can be swapped for loom's in
//! the model-checking build (`RUSTFLAGS="--cfg awaitkit_loom"`).
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
pub(crate) mod cell {
    /// `std::cell::UnsafeCell` with loom's closure-based access API.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(awaitkit_loom)]
pub(crate) mod cell {
    pub(crate) use loom::cell::UnsafeCell;
}

/// A spin-wait hint: lets the thread that holds a contended slot finish
/// (under loom, a yield, so models explore that thread's progress).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(awaitkit_loom))]
    std::hint::spin_loop();
    #[cfg(awaitkit_loom)]
    loom::thread::yield_now();
}

#[cfg(not(awaitkit_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(awaitkit_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
