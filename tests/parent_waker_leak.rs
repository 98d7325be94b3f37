//! Memory kept after a panicking task-waker drop (found by an adversarial
//! review): a set whose task waker panics when dropped frees every chunk.
//! A counting global allocator measures what a set leaves allocated.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
// SAFETY: forwards to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract for `alloc`, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        // SAFETY: `p` came from `alloc` above with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

/// One test at a time (the counter is global).
static SERIAL: Mutex<()> = Mutex::new(());

static ARMED: AtomicBool = AtomicBool::new(false);
static VT: RawWakerVTable = RawWakerVTable::new(
    |d| RawWaker::new(d, &VT),
    |_| {},
    |_| {},
    |_| {
        if ARMED.swap(false, Ordering::SeqCst) {
            panic!("boom: parent waker drop");
        }
    },
);

fn waker() -> Waker {
    // SAFETY: the vtable ignores the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VT)) }
}

struct Pending;
impl Future for Pending {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

fn quiet() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |i| {
        if !i.to_string().contains("boom") {
            prev(i)
        }
    }));
}

/// Returns the bytes still allocated after making, polling and dropping
/// the set (its parent waker's drop panics when `armed`).
fn residue<S: Future + Unpin>(make: impl FnOnce() -> S, armed: bool) -> isize {
    let w = waker();
    let before = LIVE.load(Ordering::SeqCst);
    let mut set = make();
    assert!(
        Pin::new(&mut set)
            .poll(&mut Context::from_waker(&w))
            .is_pending()
    );
    ARMED.store(armed, Ordering::SeqCst);
    let mid = LIVE.load(Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| drop(set)));
    let _ = mid;
    assert_eq!(r.is_err(), armed);
    drop(r);
    ARMED.store(false, Ordering::SeqCst);
    LIVE.load(Ordering::SeqCst) - before
}

/// (Held after 7112c16; failed before it.) A set whose registered task waker
/// panics when dropped used to never free its
/// chunks: `Chunk::destroy` unwinds out of `drop_in_place(header)` before
/// `dealloc` (single-chunk sets), and `ReadySet::drop` unwinds out of the
/// parent waker's drop before its `release` loop (sets with several chunks
/// or a live child waker clone), leaking every chunk.
/// One test (the harness's own allocations on other threads would blur a
/// global count if several ran at once).
#[test]
fn panicking_parent_waker_drop_frees_the_sets_chunks() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    grown_set_scenario();
    quiet();
    let make = || awaitkit::gather((0..100).map(|_| Pending));
    // Warm-up (lazy statics, hooks), then the baseline must be ~0.
    let _ = residue(make, false);
    let _ = residue(make, true); // the panic machinery's lazy allocations
    let clean = residue(make, false);
    assert_eq!(clean, 0, "baseline");
    let leaked = residue(make, true);
    assert_eq!(
        leaked, 0,
        "a panicking parent-waker drop leaked {leaked} bytes (gather of 100)"
    );
}

fn grown_set_scenario() {
    quiet();
    let make = || {
        let mut s = awaitkit::AsCompleted::new();
        for _ in 0..500 {
            s.push(Pending);
        }
        let f = futures::StreamExt::into_future(s);
        Box::pin(async move {
            let _ = f.await;
        })
    };
    let _ = residue(make, false);
    let _ = residue(make, true); // the panic machinery's lazy allocations
    let clean = residue(make, false);
    assert_eq!(clean, 0, "baseline");
    let leaked = residue(make, true);
    assert_eq!(
        leaked, 0,
        "a panicking parent-waker drop leaked {leaked} bytes (500 pushed)"
    );
}
