//! Engine stress with real threads: three threads fire children's wakers while
//! the owner polls with alternating parent wakers (re-registering every
//! poll) and sometimes drops the set mid-way. A wake that never reaches the
//! parent shows up as a park that times out with a fired child unfinished:
//! the count of such lost wake-ups must be zero.
//!
//! Runs for `AWAITKIT_STRESS_SECS` seconds (default 2; CI sets 10), also
//! under AddressSanitizer in CI.

use awaitkit::{AsCompleted, gather};
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// A child that finishes once fired; it parks a clone of its latest waker.
#[derive(Default)]
struct Flag {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Flag {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct WaitFlag(Arc<Flag>);

impl Future for WaitFlag {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Unparks the owner thread.
struct Unpark {
    thread: thread::Thread,
    woken: AtomicBool,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
        // A slow executor: the owner polls (and takes the woken children)
        // while this wake is still in progress, so more wake requests pile
        // up during one hold of the parent waker.
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(3) {
            std::hint::spin_loop();
        }
    }
}

/// How long a park may last with every child fired before it counts as a
/// lost wake-up (generous: the firing threads may be descheduled).
const LOST_AFTER: Duration = Duration::from_millis(500);

/// Drives `set` to completion with two parent wakers used in turn; returns
/// how many times the owner had to give up waiting with every child fired.
fn drive<F: Future + Unpin>(mut set: F, all_fired: &AtomicBool, drop_early: bool) -> usize {
    let wakers: Vec<(Arc<Unpark>, Waker)> = (0..2)
        .map(|_| {
            let unpark = Arc::new(Unpark {
                thread: thread::current(),
                woken: AtomicBool::new(false),
            });
            let waker = Waker::from(unpark.clone());
            (unpark, waker)
        })
        .collect();
    let mut lost = 0;
    let mut turn = 0;
    loop {
        let (unpark, waker) = &wakers[turn % 2];
        turn += 1;
        if Pin::new(&mut set)
            .poll(&mut Context::from_waker(waker))
            .is_ready()
        {
            return lost;
        }
        if drop_early && turn == 3 {
            // Dropping races the firing threads' wakes and clone drops.
            drop(set);
            return lost;
        }
        // Wait for any registered waker: the latest one is the one that
        // must be woken, but a wake of the previous one is not an error.
        let start = Instant::now();
        loop {
            if wakers
                .iter()
                .any(|(u, _)| u.woken.swap(false, Ordering::AcqRel))
            {
                break;
            }
            if start.elapsed() > LOST_AFTER && all_fired.load(Ordering::Acquire) {
                // Every child was fired long ago and nobody woke us.
                lost += 1;
                break;
            }
            thread::park_timeout(Duration::from_millis(50));
        }
        let _ = unpark;
    }
}

/// Threads firing children, besides the owner.
const FIRERS: usize = 3;

fn stress_seconds() -> f64 {
    std::env::var("AWAITKIT_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

/// One round: `n` children, fired from three threads in interleaved order.
fn round(
    n: usize,
    seed: usize,
    build: impl Fn(Vec<WaitFlag>) -> Box<dyn FnOnce(&AtomicBool, bool) -> usize>,
) -> usize {
    let flags: Vec<Arc<Flag>> = (0..n).map(|_| Arc::default()).collect();
    let set = build(flags.iter().map(|f| WaitFlag(f.clone())).collect());
    let all_fired = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let firers: Vec<_> = (0..FIRERS)
        .map(|t| {
            let flags = flags.clone();
            let (all_fired, done) = (all_fired.clone(), done.clone());
            thread::spawn(move || {
                for (i, flag) in flags.iter().enumerate() {
                    if (i + seed) % FIRERS == t {
                        flag.fire();
                        if i % 7 == 0 {
                            thread::yield_now();
                        }
                    }
                }
                if done.fetch_add(1, Ordering::AcqRel) == FIRERS - 1 {
                    all_fired.store(true, Ordering::Release);
                }
            })
        })
        .collect();
    let lost = set(&all_fired, seed % 5 == 0);
    for t in firers {
        t.join().unwrap();
    }
    lost
}

fn run(what: &str, build: impl Fn(Vec<WaitFlag>) -> Box<dyn FnOnce(&AtomicBool, bool) -> usize>) {
    let deadline = Instant::now() + Duration::from_secs_f64(stress_seconds() / 2.0);
    let (mut rounds, mut lost) = (0, 0);
    while Instant::now() < deadline {
        let n = [1, 2, 3, 8, 33, 65, 130][rounds % 7];
        lost += round(n, rounds, &build);
        rounds += 1;
    }
    assert_eq!(lost, 0, "{what}: {lost} lost wake-ups in {rounds} rounds");
    assert!(rounds > 0);
}

#[test]
fn no_wake_up_is_lost_in_gather() {
    run("gather", |children| {
        let set = gather(children);
        Box::new(move |all_fired, drop_early| drive(set, all_fired, drop_early))
    });
}

#[test]
fn no_wake_up_is_lost_in_as_completed() {
    // Grown by `push`: chunks that count clones and reuse slots.
    run("as_completed", |children| {
        let mut set = AsCompleted::new();
        for child in children {
            set.push(child);
        }
        let all = set.collect::<Vec<()>>();
        Box::new(move |all_fired, drop_early| drive(all, all_fired, drop_early))
    });
}
