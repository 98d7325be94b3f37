//! Adversarial review of df3119a: allocations of the default timer's tokio
//! path (a separate binary: it needs its own global allocator).

#![cfg(feature = "tokio")]

use awaitkit::TimeoutExt;
use awaitkit::time::{DefaultTimer, Timer, TokioTimer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::{Future, pending};
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`; the bookkeeping never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// The commit says the tokio sleep's box is "recycled through a
/// thread-local spare". `TokioBox::drop` replaces its box with a fresh
/// `Box::pin(None)` to hand the old one to the spare, so every sleep still
/// allocates once (at drop instead of at creation): the spare saves nothing.
#[test]
fn default_sleep_on_tokio_reuses_the_spare_box() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cx = Context::from_waker(Waker::noop());
        let mut one = |timer_default: bool| {
            allocs(|| {
                if timer_default {
                    let mut s = DefaultTimer.sleep_until(DefaultTimer.now() + Duration::from_secs(3600));
                    let _ = Pin::new(&mut s).poll(&mut cx);
                    drop(s);
                } else {
                    let mut s = Box::pin(TokioTimer.sleep_until(TokioTimer.now() + Duration::from_secs(3600)));
                    let _ = s.as_mut().poll(&mut cx);
                    drop(s);
                }
            })
        };
        // Warm up (probe, spare, tokio's wheel levels).
        for _ in 0..3 {
            one(true);
            one(false);
        }
        let default = one(true);
        let boxed_tokio = one(false);
        println!("DefaultSleep on tokio: {default} allocs; Box::pin(TokioSleep): {boxed_tokio}");
        assert!(
            default < boxed_tokio,
            "the spare saves nothing: DefaultSleep {default} allocs per sleep, a plain Box::pin(TokioSleep) {boxed_tokio}"
        );
        // A timeout that waits once, through the plain API.
        for _ in 0..3 {
            let _ = allocs(|| {
                let mut t = Box::pin(pending::<()>().timeout(Duration::from_secs(3600)));
                let _ = t.as_mut().poll(&mut cx);
            });
        }
        let t = allocs(|| {
            let mut t = Box::pin(pending::<()>().timeout(Duration::from_secs(3600)));
            let _ = t.as_mut().poll(&mut cx);
        });
        println!("Box::pin(timeout) that waits once: {t} allocs (1 is the test's own box)");
    });
}
